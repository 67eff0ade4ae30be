//! `lucid-db schedule …`: the scheduler's jobs, their recorded runs, and a run by hand.
//!
//! `ls` and `history` read what the daemon's scheduler wrote (`state_dir/scheduler/runs/`)
//! and the schedules from the configuration; they start no actor and write nothing.
//!
//! `run JOB` runs one job through the running daemon's API (`POST …/schedule/{job}/run`, an
//! admin token: [`crate::client`]), which runs it and records it in its history. With no daemon
//! running, it runs in this process — the CLI's parts (stores, volumes, backup) and a scheduler
//! with no triggers — taking the scheduler lock the daemon holds
//! (`state_dir/locks/scheduler.lock`): two processes never run jobs or write the records at
//! once (a daemon started meanwhile refuses it, exit 75).

use std::path::Path;
use std::time::Duration;

use actix_web::http::Method;

use chrono::{DateTime, SecondsFormat, Utc};
use lucid_actors::scheduler::{
    self, JobName, JobStatus, Options, Peers, RunOutcome, RunRecord, SchedulerActor,
    SchedulerError, records,
};
use lucid_actors::{Backend, Config, Roles, StateDir};

use crate::backup_cmd::prepare;
use crate::cli::ScheduleCommand;
use crate::client::{self, Api};
use crate::exit;
use crate::http::API;

pub async fn run(
    config: &Config,
    command: ScheduleCommand,
    json: bool,
    token_file: Option<&Path>,
) -> u8 {
    let dir = StateDir::new(&config.state_dir).scheduler_runs();
    match command {
        ScheduleCommand::Ls => ls(config, &dir, json),
        ScheduleCommand::History { job } => match parse_job(&job) {
            Ok(job) => history(&dir, job, json),
            Err(code) => code,
        },
        ScheduleCommand::Run { job } => match parse_job(&job) {
            Ok(job) => match client::connect(config, token_file, "lucid-db schedule run").await {
                Ok(Some(api)) => run_remote(&api, job, json).await,
                Ok(None) => run_now(config, job, json).await,
                Err(code) => code,
            },
            Err(code) => code,
        },
    }
}

fn parse_job(text: &str) -> Result<JobName, u8> {
    text.parse().map_err(|e| {
        eprintln!("lucid-db schedule: {e}");
        exit::USAGE
    })
}

/// A job's records, or none with a warning (the daemon sets an unreadable file aside at its
/// next start; this only reads).
fn read(dir: &std::path::Path, job: JobName) -> Vec<RunRecord> {
    records::read(dir, job).unwrap_or_else(|e| {
        eprintln!("lucid-db schedule: {job}: cannot read its run records: {e}");
        Vec::new()
    })
}

fn ls(config: &Config, dir: &std::path::Path, json: bool) -> u8 {
    let specs = match scheduler::job::specs(&config.scheduler) {
        Ok(specs) => specs,
        // `config check`'s own checks refused these already; this is the fallback.
        Err(errors) => {
            for e in errors {
                eprintln!("lucid-db schedule: {e}");
            }
            return exit::CONFIG;
        }
    };
    let list = scheduler::statuses(&specs, |job| read(dir, job).pop(), Utc::now());
    if json {
        print_json(&list);
    } else {
        ls_table(&list);
    }
    exit::OK
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".to_owned())
}

fn duration(r: &RunRecord) -> String {
    let ms = r.duration_ms();
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        humantime(Duration::from_secs(ms / 1000))
    }
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn outcome(r: &RunRecord) -> String {
    match &r.outcome {
        RunOutcome::Ok => "ok".to_owned(),
        RunOutcome::Failed { code, .. } => format!("failed ({code})"),
        RunOutcome::Skipped { why } => format!("skipped ({why})"),
    }
}

fn ls_table(list: &[JobStatus]) {
    println!(
        "{:<18} {:<13} {:<20} {:<20} {:<24} DURATION",
        "JOB", "SCHEDULE", "NEXT RUN", "LAST RUN", "OUTCOME"
    );
    for s in list {
        let (last, out, dur) = match &s.last {
            Some(r) => (time(Some(r.started)), outcome(r), duration(r)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<18} {:<13} {:<20} {:<20} {:<24} {}",
            s.job.as_str(),
            s.schedule.as_deref().unwrap_or("off"),
            time(s.next),
            last,
            out,
            dur
        );
    }
}

fn history(dir: &std::path::Path, job: JobName, json: bool) -> u8 {
    let runs = read(dir, job);
    if json {
        print_json(&runs);
        return exit::OK;
    }
    println!(
        "{:<22} {:<9} {:<20} {:<20} {:>9}  OUTCOME",
        "RUN", "TRIGGER", "SLOT", "STARTED", "DURATION"
    );
    for r in &runs {
        let what = match &r.outcome {
            RunOutcome::Failed { error, .. } => format!("{}: {error}", outcome(r)),
            _ if r.detail.is_empty() => outcome(r),
            _ => format!("{}: {}", outcome(r), r.detail),
        };
        let missed = if r.missed > 0 {
            format!(" [+{} missed]", r.missed)
        } else {
            String::new()
        };
        println!(
            "{:<22} {:<9} {:<20} {:<20} {:>9}  {what}{missed}",
            r.run_id,
            r.trigger.as_str(),
            time(r.slot),
            time(Some(r.started)),
            duration(r)
        );
    }
    exit::OK
}

/// The job through the daemon's API: it runs there and is recorded in its history.
async fn run_remote(api: &Api, job: JobName, json: bool) -> u8 {
    let path = format!("{API}/schedule/{job}/run");
    match api
        .call_as::<RunRecord>(Method::POST, &path, None, true)
        .await
    {
        Ok(record) => print_record(job, &record, json),
        Err(f) => f.report(&api.what, |code| match code {
            "busy" => exit::TEMPFAIL,
            "not_delivered" | "disabled" => exit::UNAVAILABLE,
            "invalid_job" => exit::USAGE,
            "state_dir_unusable" | "foreign_owner" => exit::CONFIG,
            _ => exit::FAILED,
        }),
    }
}

/// Prints a run's record as `run` does; its exit code.
fn print_record(job: JobName, record: &RunRecord, json: bool) -> u8 {
    if json {
        print_json(record);
    } else {
        let tail = match &record.outcome {
            RunOutcome::Failed { error, .. } => format!(": {error}"),
            _ if record.detail.is_empty() => String::new(),
            _ => format!(": {}", record.detail),
        };
        println!("{job} {}{tail}", outcome(record));
    }
    exit_for(&record.outcome)
}

async fn run_now(config: &Config, job: JobName, json: bool) -> u8 {
    if let Err(code) = prepare(config, "lucid-db schedule") {
        return code;
    }
    let handles = lucid_actors::start(config, Roles::CLI);
    // The daemon gives its stores time to connect; a run by hand waits for its first try.
    let deadline = config.supervisor.call_deadline;
    if job == JobName::Lifecycle {
        handles
            .registry
            .wait_up(Backend::Elasticsearch, deadline)
            .await;
    } else {
        handles.settled(deadline).await;
    }
    let peers = Peers {
        registry: handles.registry.clone(),
        backup: handles.backup.clone(),
        search: handles.search.clone(),
        volumes: handles.volumes.clone(),
        // The lifecycle's deletion gate: the indices a verified backup holds, exported while
        // write-blocked.
        backed_up_indices: handles.backup.as_ref().map(|b| b.backed_up_indices_gate()),
    };
    let scheduler = SchedulerActor::start_with(config, peers, Options::manual());
    let result = scheduler.run(job).await;
    let _ = scheduler
        .addr()
        .send(lucid_actors::supervisor::Shutdown)
        .await;
    handles
        .shutdown(config.supervisor.call_deadline.min(Duration::from_secs(1)))
        .await;
    match result {
        Ok(record) => print_record(job, &record, json),
        Err(e @ SchedulerError::Elsewhere { .. }) => {
            eprintln!(
                "lucid-db schedule run: {e} ({}): the daemon started meanwhile; run the command \
                 again, it then goes through the daemon's API.",
                e.code()
            );
            exit::TEMPFAIL
        }
        Err(e) => {
            eprintln!("lucid-db schedule run: {e} ({})", e.code());
            match e {
                SchedulerError::Busy { .. } => exit::TEMPFAIL,
                SchedulerError::State(_) => exit::CONFIG,
                _ => exit::FAILED,
            }
        }
    }
}

/// The exit code for a run's outcome (docs/cli.md).
fn exit_for(outcome: &RunOutcome) -> u8 {
    match outcome {
        RunOutcome::Ok => exit::OK,
        RunOutcome::Failed { code, .. } => match code.as_str() {
            "busy" | "clock_unsynchronised" | "clock_behind" => exit::TEMPFAIL,
            "unavailable"
            | "disabled"
            | "not_delivered"
            | "deadline_exceeded"
            | "storage_unreachable"
            | "root_unavailable" => exit::UNAVAILABLE,
            "partial" => exit::PARTIAL,
            _ => exit::FAILED,
        },
        // What the job needs does not run here (Elasticsearch turned off).
        RunOutcome::Skipped { .. } => exit::UNAVAILABLE,
    }
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("lucid-db: cannot render JSON: {e}"),
    }
}
