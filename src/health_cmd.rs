//! `lucid-db health`: ask the running daemon's `/health`; when nothing answers there, start the
//! store actors here and report their first connect. Exit 0 when every required backend is
//! up, 69 otherwise.

use std::time::{Duration, Instant};

use lucid_actors::{Config, Roles};
use serde::Serialize;

use crate::exit;
use crate::http::HealthReport;

#[derive(Serialize)]
struct Output {
    /// `daemon` (its /health answered) or `probe` (checked directly from this process).
    source: &'static str,
    #[serde(flatten)]
    report: HealthReport,
}

pub async fn run(config: &Config, json: bool) -> u8 {
    let output = match crate::client::health(config.http.bind).await {
        Ok(report) => Output {
            source: "daemon",
            report,
        },
        Err(_) => Output {
            source: "probe",
            report: probe(config).await,
        },
    };
    if json {
        match serde_json::to_string_pretty(&output) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("lucid-db: cannot render the report: {e}"),
        }
    } else {
        print_table(&output);
    }
    if output.report.required_up() {
        exit::OK
    } else {
        exit::UNAVAILABLE
    }
}

/// The store actors only: a probe must change nothing on disk (no default volumes, no state
/// directory), whatever `volumes.root` and `state_dir` say.
async fn probe(config: &Config) -> HealthReport {
    let started = Instant::now();
    let handles = lucid_actors::start(config, Roles::SIBLING);
    handles
        .settled(config.supervisor.call_deadline + Duration::from_secs(1))
        .await;
    let report = HealthReport::new(&handles.registry, handles.roles, started.elapsed());
    handles.shutdown(config.supervisor.call_deadline).await;
    report
}

fn print_table(out: &Output) {
    let r = &out.report;
    let source = match out.source {
        "daemon" => "the running daemon",
        _ => "a direct probe (no daemon answered)",
    };
    println!("lucid-db {}: {} — from {source}", r.version, r.status);
    println!(
        "{:<14} {:<8} {:<11} {:<8} {:>9}  LAST ERROR",
        "BACKEND", "REQUIRED", "STATE", "ATTEMPT", "LATENCY"
    );
    for b in &r.backends {
        let latency = b
            .latency_ms
            .map_or("-".to_owned(), |ms| format!("{ms:.1}ms"));
        let error = match (&b.reason, &b.last_error) {
            (Some(reason), _) => reason.clone(),
            (None, Some(e)) if !b.is_up() => format!("{}: {}", e.code, e.message),
            _ => "-".to_owned(),
        };
        println!(
            "{:<14} {:<8} {:<11} {:<8} {:>9}  {}",
            b.backend.as_str(),
            if b.required { "yes" } else { "no" },
            b.state.to_string(),
            b.attempt,
            latency,
            error
        );
    }
    if r.backends.is_empty() {
        println!("(no backend enabled)");
    }
}
