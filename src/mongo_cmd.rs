//! `lucid-db mongo …`: one-shot MongoDB tools, as messages to a MongoDB actor started here
//! with the daemon's settings and schema files (`stores`).

use lucid_actors::mongo::{
    BootstrapReport, GetStats, MongoError, MongoStats, PlanBootstrap, RunBootstrap,
};
use lucid_actors::{Backend, Config};
use serde::Serialize;

use crate::cli::MongoCommand;
use crate::exit;
use crate::stores::{self, WHOLE_RUN};

pub async fn run(config: &Config, command: MongoCommand, json: bool) -> u8 {
    let handles = match stores::connect(config, Backend::Mongodb, "mongo").await {
        Ok(handles) => handles,
        Err(code) => return code,
    };
    let Some(mongo) = handles.mongo.clone() else {
        return exit::CONFIG;
    };
    let res = match command {
        MongoCommand::Bootstrap { dry_run: true } => mongo
            .call_within(PlanBootstrap, WHOLE_RUN)
            .await
            .map(|report| print(json, &report, || bootstrap_text(&report))),
        MongoCommand::Bootstrap { dry_run: false } => mongo
            .call_within(RunBootstrap, WHOLE_RUN)
            .await
            .map(|report| print(json, &report, || bootstrap_text(&report))),
        MongoCommand::Stats => mongo
            .call(GetStats)
            .await
            .map(|stats| print(json, &stats, || stats_text(&stats))),
    };
    handles.shutdown(config.supervisor.call_deadline).await;
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
            let command = step.command_json();
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
