//! `lucid-db search …`: one-shot Elasticsearch tools, as messages to an Elasticsearch actor
//! started here with the daemon's settings and templates (`stores`).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use lucid_actors::search::{
    Action, ApplyLifecycle, BootstrapReport, GetStats, LifecycleReport, PlanLifecycle,
    RunBootstrap, SearchError, SearchStats,
};
use lucid_actors::{Backend, Config};
use serde::Serialize;

use crate::cli::SearchCommand;
use crate::exit;
use crate::stores::{self, WHOLE_RUN};

/// One line of a plan, for text and JSON.
#[derive(Debug, Serialize)]
struct PlanRow {
    action: &'static str,
    index: String,
    detail: String,
}

fn row(a: &Action) -> PlanRow {
    let detail = match a {
        Action::MoveWriteAlias { entity, from, .. } => {
            let from = if from.is_empty() {
                "nowhere".to_owned()
            } else {
                from.join(", ")
            };
            format!("{} from {from}", entity.write_alias())
        }
        Action::Cold {
            replicas, priority, ..
        } => format!("priority {priority}, {replicas} replicas"),
        Action::Warm { .. } => "force-merge to 1 segment, block writes".to_owned(),
        Action::Keep { reason, .. } => format!("kept: {}", reason.code()),
        Action::Unparseable { reason, .. } => format!("not touched: {reason}"),
        Action::Create { .. } | Action::Delete { .. } => String::new(),
    };
    PlanRow {
        action: a.name(),
        index: a.index(),
        detail,
    }
}

pub async fn run(config: &Config, command: SearchCommand, json: bool) -> u8 {
    // Parse what can be wrong on the command line before connecting.
    let at = match &command {
        SearchCommand::Lifecycle { at: Some(t), .. } => match DateTime::parse_from_rfc3339(t) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => {
                eprintln!("lucid-db search: --at {t:?}: not an RFC 3339 time: {e}");
                return exit::USAGE;
            }
        },
        _ => None,
    };
    let handles = match stores::connect(config, Backend::Elasticsearch, "search").await {
        Ok(handles) => handles,
        Err(code) => return code,
    };
    let Some(search) = handles.search.clone() else {
        return exit::CONFIG;
    };
    // The time the plan is printed for: the one the actor plans at (its clock is the system's).
    let now = at.unwrap_or_else(Utc::now);
    let res: Result<u8, SearchError> = match command {
        SearchCommand::Bootstrap => search.call_within(RunBootstrap, WHOLE_RUN).await.map(|r| {
            print(json, &r, || bootstrap_text(&r));
            exit::OK
        }),
        SearchCommand::Lifecycle {
            apply: false,
            backed_up,
            ..
        } => {
            let backed_up: BTreeSet<String> = backed_up.into_iter().collect();
            search
                .call(PlanLifecycle {
                    backed_up,
                    at: Some(now),
                })
                .await
                .map(|actions| {
                    let rows: Vec<PlanRow> = actions.iter().map(row).collect();
                    print(json, &rows, || plan_text(&rows, now));
                    exit::OK
                })
        }
        SearchCommand::Lifecycle {
            apply: true,
            backed_up,
            ..
        } => {
            let backed_up: BTreeSet<String> = backed_up.into_iter().collect();
            let apply = ApplyLifecycle {
                backed_up,
                at: Some(now),
            };
            search.call_within(apply, WHOLE_RUN).await.map(|report| {
                print(json, &report, || applied_text(&report, now));
                if report.failed > 0 {
                    exit::FAILED
                } else {
                    exit::OK
                }
            })
        }
        SearchCommand::Stats => search.call(GetStats).await.map(|s| {
            print(json, &s, || stats_text(&s));
            exit::OK
        }),
    };
    handles.shutdown(config.supervisor.call_deadline).await;
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lucid-db search: {e}");
            match e {
                SearchError::Connection { .. } | SearchError::Call(_) => exit::UNAVAILABLE,
                _ => exit::FAILED,
            }
        }
    }
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("lucid-db search: cannot render JSON: {e}"),
        }
    } else {
        print!("{}", text());
    }
}

fn bootstrap_text(r: &BootstrapReport) -> String {
    if !r.changed() {
        return "nothing to do: templates, indices and aliases are in place\n".to_owned();
    }
    format!(
        "templates put: {}, indices created: {}, write aliases moved: {}\n",
        r.templates_put, r.indices_created, r.aliases_moved
    )
}

fn plan_text(rows: &[PlanRow], now: DateTime<Utc>) -> String {
    let mut out = format!("lifecycle at {}\n", now.to_rfc3339());
    if rows.is_empty() {
        out.push_str("nothing to do\n");
        return out;
    }
    out.push_str(&format!(
        "would apply {} actions ({} reported only):\n",
        rows.iter()
            .filter(|r| !matches!(r.action, "keep" | "unparseable"))
            .count(),
        rows.iter()
            .filter(|r| matches!(r.action, "keep" | "unparseable"))
            .count()
    ));
    for r in rows {
        out.push_str(&format!(
            "  {:<16} {:<32} {}\n",
            r.action, r.index, r.detail
        ));
    }
    out
}

fn applied_text(r: &LifecycleReport, now: DateTime<Utc>) -> String {
    let mut out = format!(
        "lifecycle at {}: {} applied, {} failed, {} kept, {} unparseable\n",
        now.to_rfc3339(),
        r.applied,
        r.failed,
        r.kept,
        r.unparseable
    );
    for (action, index, error) in &r.actions {
        match error {
            Some(e) => out.push_str(&format!("  FAILED {action:<16} {index}: {e}\n")),
            None => out.push_str(&format!("  {action:<23} {index}\n")),
        }
    }
    out
}

fn stats_text(s: &SearchStats) -> String {
    let mut out = format!(
        "cluster {}: {} nodes, {} active shards, {} unassigned\n",
        s.status, s.nodes, s.active_shards, s.unassigned_shards
    );
    out.push_str(&format!(
        "{:<32} {:>10} {:>12} {:>7} {}\n",
        "INDEX", "DOCUMENTS", "BYTES", "PHASE", "WRITE"
    ));
    for i in &s.indices {
        out.push_str(&format!(
            "{:<32} {:>10} {:>12} {:>7} {}\n",
            i.index,
            i.docs,
            i.bytes,
            i.phase.unwrap_or("?"),
            if i.write_index { "yes" } else { "" }
        ));
    }
    out
}
