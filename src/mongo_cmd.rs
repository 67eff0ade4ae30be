//! `lucid-db mongo …`: one-shot MongoDB tools on a connection of their own, with the same
//! driver settings and schema files as the daemon.

use lucid_actors::Config;
use lucid_actors::mongo::bootstrap::{Bootstrap, BootstrapReport};
use lucid_actors::mongo::bson;
use lucid_actors::mongo::{Catalog, MongoError, MongoStats, Settings, connect_direct};
use serde::Serialize;

use crate::cli::MongoCommand;
use crate::exit;

pub async fn run(config: &Config, command: MongoCommand, json: bool) -> u8 {
    let catalog = match Catalog::load(&config.mongodb) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lucid-db mongo: schema files: {e}");
            return exit::CONFIG;
        }
    };
    let deadline = config.supervisor.call_deadline;
    let conn = match connect_direct(&config.mongodb, deadline).await {
        Ok((conn, _)) => conn,
        Err(e) => {
            eprintln!("lucid-db mongo: cannot reach MongoDB: {e}");
            return exit::UNAVAILABLE;
        }
    };
    let settings = Settings::from_config(&config.mongodb, &config.supervisor);
    let res = match command {
        MongoCommand::Bootstrap { dry_run } => Bootstrap::new(&conn, &catalog, &settings)
            .run(dry_run)
            .await
            .map(|report| print(json, &report, || bootstrap_text(&report))),
        MongoCommand::Stats => lucid_actors::mongo::stats::collect(&conn, &settings)
            .await
            .map(|stats| print(json, &stats, || stats_text(&stats))),
    };
    match res {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("lucid-db mongo: {e}");
            match e {
                MongoError::Connection { .. } | MongoError::Call(_) => exit::UNAVAILABLE,
                _ => exit::FAILED,
            }
        }
    }
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("lucid-db mongo: cannot render JSON: {e}"),
        }
    } else {
        print!("{}", text());
    }
}

fn bootstrap_text(r: &BootstrapReport) -> String {
    let mut out = String::new();
    let caps = &r.capabilities;
    out.push_str(&format!(
        "database {} on a {} server ({}validators stored, {}index directions kept, {}index options reported)\n",
        r.database,
        r.topology.label(),
        if caps.stores_validators { "" } else { "no " },
        if caps.keeps_key_directions { "" } else { "no " },
        if caps.reports_index_options { "" } else { "no " },
    ));
    if r.plan.steps.is_empty() {
        out.push_str("nothing to do: every collection, validator and index is in place\n");
    } else {
        let verb = if r.dry_run { "would run" } else { "ran" };
        out.push_str(&format!("{verb} {} commands:\n", r.plan.steps.len()));
        for step in &r.plan.steps {
            let db = if step.database.is_empty() {
                r.database.as_str()
            } else {
                step.database.as_str()
            };
            let command = mongodb_json(&step.command);
            out.push_str(&format!(
                "  {} {} (db {db}): {command}\n",
                step.action, step.collection
            ));
        }
    }
    for d in &r.plan.drift {
        out.push_str(&format!(
            "drift {} {}: {}\n",
            d.code, d.collection, d.detail
        ));
    }
    out
}

fn mongodb_json(d: &bson::Document) -> String {
    bson::Bson::Document(d.clone())
        .into_relaxed_extjson()
        .to_string()
}

fn stats_text(s: &MongoStats) -> String {
    let mut out = format!(
        "database {}: {} topology, {} collections, {} documents, {} bytes of data, {} indexes\n",
        s.database,
        s.hello.topology.label(),
        s.db.collections,
        s.db.objects,
        s.db.data_size,
        s.db.indexes
    );
    out.push_str(&format!(
        "{:<18} {:>10} {:>12} {:>12}\n",
        "COLLECTION", "DOCUMENTS", "BYTES", "INDEX BYTES"
    ));
    for c in &s.collections {
        if c.exists {
            out.push_str(&format!(
                "{:<18} {:>10} {:>12} {:>12}\n",
                c.collection.name(),
                c.count,
                c.size,
                c.total_index_size
            ));
        } else {
            out.push_str(&format!("{:<18} {:>10}\n", c.collection.name(), "missing"));
        }
    }
    out
}
