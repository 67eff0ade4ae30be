//! `lucid-db backup …`: the CLI's parts (stores, volumes, backup — never the scheduler) run in
//! this process, with the daemon's settings, state directory and lock files: a backup here and
//! one in the daemon never overlap (the second is refused, exit 75).
//!
//! Beside a running daemon, `now`, `verify` and `restore` go through its HTTP API instead
//! ([`crate::client`]): the same progress, output and exit codes, the work done by the daemon.
//!
//! `now` waits for the outcome and shows progress on stderr: a progress bar (indicatif) when
//! stderr is a terminal, plain lines at most one a second otherwise (a pipe, a file, the
//! journal: a bar's redraws would be noise there). The result goes to stdout, as text or
//! `--json`. Exit codes: docs/cli.md.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::http::Method;

use chrono::Utc;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lucid_actors::backup::{
    BackupError, BackupHandle, BackupId, BackupOutcome, BackupStatus, DeleteBackup, Entry,
    Identities, KeyError, Level, ListBackups, Outcome, PinBackup, Progress, PruneBackups,
    PruneReport, Reason, RestoreBackup, RestoreProgress, RestoreReport, RestoreStatus, RunReport,
    RunStatus, ShowBackup, StartBackup, StoreRecord, Targets, Trigger, UnpinBackup, VerifyBackup,
    VerifyReport, keygen,
};
use lucid_actors::config::BackupStorage;
use lucid_actors::state::{self, DaemonLock, StateError};
use lucid_actors::volume::check_root;
use lucid_actors::{Config, Roles, StateDir};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::{BackupCommand, VerifyLevel};
use crate::client::{self, Api, Failure};
use crate::exit;
use crate::http::API;
use crate::volumes_cmd::human;

/// How often `now` asks for the run's status; progress lines go out at most once a second.
const POLL: Duration = Duration::from_millis(200);
/// The same through the daemon's API: every request counts against the token's rate limit
/// (`http.rate_limit`, 600 a minute by default), and lines go out once a second anyway.
const REMOTE_POLL: Duration = Duration::from_secs(1);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

pub async fn run(
    config: &Config,
    command: BackupCommand,
    json: bool,
    token_file: Option<&Path>,
) -> u8 {
    if let BackupCommand::Keygen { out } = &command {
        return keygen_cmd(out, json);
    }
    let through_api = match &command {
        BackupCommand::Now { .. } => Some("lucid-db backup now"),
        BackupCommand::Verify { .. } => Some("lucid-db backup verify"),
        BackupCommand::Restore { .. } => Some("lucid-db backup restore"),
        _ => None,
    };
    if let Some(what) = through_api {
        match client::connect(config, token_file, what).await {
            Ok(Some(api)) => return remote(&api, command, json).await,
            Ok(None) => {}
            Err(code) => return code,
        }
    }
    if let Err(code) = prepare(config, "lucid-db backup") {
        return code;
    }
    if matches!(command, BackupCommand::Restore { .. }) {
        // The daemon started since `connect` looked: a restore must not write into the
        // stores it serves from here.
        match DaemonLock::held(&StateDir::new(&config.state_dir)) {
            Ok(false) => {}
            Ok(true) => {
                eprintln!(
                    "lucid-db backup restore: the lucid-db daemon started meanwhile: run the \
                     restore again, it then goes through the daemon's API"
                );
                return exit::TEMPFAIL;
            }
            Err(e) => {
                eprintln!("lucid-db backup: {e}");
                return exit::CONFIG;
            }
        }
    }
    let handles = lucid_actors::start(config, Roles::CLI);
    let Some(backup) = handles.backup.clone() else {
        eprintln!("lucid-db backup: the backup actor did not start");
        return exit::FAILED;
    };
    let code = match execute(&backup, command, json).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lucid-db backup: {e} ({})", e.code());
            exit_for(&e)
        }
    };
    handles
        .shutdown(config.supervisor.call_deadline.min(Duration::from_secs(1)))
        .await;
    code
}

/// The exit code for an error (docs/cli.md).
fn exit_for(e: &BackupError) -> u8 {
    if e.code() == "busy" || matches!(e, BackupError::Retention(_)) {
        exit::TEMPFAIL
    } else if e.is_corrupt() {
        exit::DATAERR
    } else if e.is_unavailable() {
        exit::UNAVAILABLE
    } else if e.is_config() {
        exit::CONFIG
    } else if matches!(
        e.code(),
        "not_supported" | "not_found" | "not_in_backup" | "bad_request"
    ) && !matches!(e, BackupError::Volume(_))
    {
        exit::USAGE
    } else {
        exit::FAILED
    }
}

/// The exit code an API error's `code` has (the in-process [`exit_for`] of the same error:
/// a unit test keeps the two together).
pub(crate) fn exit_for_code(code: &str) -> u8 {
    match code {
        "busy" | "clock_unsynchronised" | "clock_behind" => exit::TEMPFAIL,
        // A bad backup: a manifest, an artifact or key.age that does not check out.
        "unknown_format" | "bad_manifest" | "wrong_passphrase" | "drill_mismatch" | "missing"
        | "truncated" | "checksum_mismatch" | "wrong_identity" | "bad_format"
        | "count_mismatch" => exit::DATAERR,
        "unavailable"
        | "disabled"
        | "not_delivered"
        | "storage_unreachable"
        | "root_unavailable"
        | "deadline_exceeded"
        | "connection_refused"
        | "connection_dropped"
        | "timeout" => exit::UNAVAILABLE,
        "no_bucket" | "invalid_config" | "storage_denied" | "bad_recipient" | "bad_identity"
        | "identity_required" | "state_dir_unusable" | "nothing_selected" => exit::CONFIG,
        // The request itself: what the in-process command refuses as a usage error (and the
        // API's own checks of the same arguments).
        "not_supported" | "not_found" | "not_in_backup" | "bad_request" | "invalid_id"
        | "invalid_store" | "invalid_argument" | "invalid_body" => exit::USAGE,
        _ => exit::FAILED,
    }
}

/// Refuses directories another user owns and an unusable data root, then creates the state
/// directory: nothing is written before every check passed. `what` starts the messages
/// (`lucid-db backup`, `lucid-db schedule`).
pub(crate) fn prepare(config: &Config, what: &str) -> Result<(), u8> {
    let state_error = |e: StateError| {
        eprintln!("{what}: {e}");
        match e {
            StateError::ForeignOwner { .. } => exit::NOPERM,
            StateError::Unusable { .. } => exit::CONFIG,
        }
    };
    let mut mine = vec![config.state_dir.clone(), config.volumes.root.clone()];
    if config.backup.storage == BackupStorage::Fs {
        mine.push(config.volumes.root.join("backups"));
    }
    for path in &mine {
        state::check_owner(path).map_err(state_error)?;
    }
    if let Err(e) = check_root(&config.volumes.root) {
        eprintln!("{what}: {e}");
        return Err(exit::CONFIG);
    }
    StateDir::new(&config.state_dir)
        .ensure()
        .map_err(state_error)
}

fn keygen_cmd(out: &PathBuf, json: bool) -> u8 {
    match keygen(out, Utc::now()) {
        Ok(recipient) => {
            if json {
                print_json(&json!({
                    "identity_file": out,
                    "recipient": recipient.to_string(),
                }));
            } else {
                eprintln!(
                    "lucid-db backup: wrote {} (mode 0600): keep it off the Pi; put this public \
                     key into backup.recipients:",
                    out.display()
                );
                println!("{recipient}");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("lucid-db backup keygen: {e}");
            match e {
                KeyError::Exists { .. } => exit::FAILED,
                _ => exit::CONFIG,
            }
        }
    }
}

fn parse_id(text: &str) -> Result<BackupId, u8> {
    text.parse().map_err(|e| {
        eprintln!("lucid-db backup: {e}");
        exit::USAGE
    })
}

async fn execute(b: &BackupHandle, command: BackupCommand, json: bool) -> Result<u8, BackupError> {
    match command {
        BackupCommand::Now { stores } => {
            let id = b
                .call(StartBackup {
                    stores,
                    trigger: Trigger::Cli,
                })
                .await?;
            eprintln!("lucid-db backup: {id} started");
            let report = follow(id, POLL, || async move {
                Ok::<_, BackupError>(match b.call(BackupStatus { id }).await? {
                    RunStatus::Finished(report) => Polled::Finished(report),
                    RunStatus::Running { progress, .. } => Polled::Running(progress),
                })
            })
            .await?;
            print_report(&ReportView::from(&report), json);
            Ok(match report.outcome {
                BackupOutcome::Complete => exit::OK,
                BackupOutcome::Partial => exit::PARTIAL,
                BackupOutcome::Failed => report.error.as_ref().map_or(exit::FAILED, exit_for),
            })
        }
        BackupCommand::List => {
            let entries = b.call(ListBackups).await?;
            if json {
                print_json(&entries.iter().map(entry_json).collect::<Vec<_>>());
            } else {
                list_table(&entries);
            }
            Ok(exit::OK)
        }
        BackupCommand::Show { id } => {
            let id = match parse_id(&id) {
                Ok(id) => id,
                Err(code) => return Ok(code),
            };
            let entry = b.call(ShowBackup { id }).await?;
            if json {
                print_json(&entry_json(&entry));
            } else {
                show(&entry);
            }
            Ok(exit::OK)
        }
        BackupCommand::Verify {
            id,
            level,
            identity,
        } => {
            let id = match parse_id(&id) {
                Ok(id) => id,
                Err(code) => return Ok(code),
            };
            let identity = match identity.map(|path| Identities::load(&path)).transpose() {
                Ok(ids) => ids,
                Err(e) => {
                    // Names the file and line, never the key.
                    eprintln!("lucid-db backup verify: --identity: {e}");
                    return Ok(exit::CONFIG);
                }
            };
            let report = b
                .call(VerifyBackup {
                    id,
                    level: level_of(level),
                    identity,
                })
                .await?;
            Ok(print_verify(&report, json))
        }
        BackupCommand::Restore {
            id,
            stores,
            identity,
            to_volume,
            to_db,
            to_redis_db,
            index_prefix,
            force,
        } => {
            let id = match parse_id(&id) {
                Ok(id) => id,
                Err(code) => return Ok(code),
            };
            let identity = match identity.map(|path| Identities::load(&path)).transpose() {
                Ok(ids) => ids,
                Err(e) => {
                    eprintln!("lucid-db backup restore: --identity: {e}");
                    return Ok(exit::CONFIG);
                }
            };
            eprintln!("lucid-db backup: restoring {id}: checking every artifact first");
            let restore = b.call(RestoreBackup {
                id,
                stores,
                identity,
                targets: Targets {
                    to_volume,
                    to_db,
                    to_redis_db,
                    index_prefix,
                },
                force,
            });
            let report = follow_restore(id, restore, POLL, || async move {
                b.call(RestoreStatus).await.ok().flatten()
            })
            .await?;
            print_restore(&report, json);
            Ok(exit::OK)
        }
        BackupCommand::Prune { dry_run } => {
            let report = b.call(PruneBackups { dry_run }).await?;
            print_prune(&report, json);
            Ok(exit::OK)
        }
        BackupCommand::Pin { id, reason } => {
            let id = match parse_id(&id) {
                Ok(id) => id,
                Err(code) => return Ok(code),
            };
            let entry = b.call(PinBackup { id, reason }).await?;
            print_entry(&entry, json);
            Ok(exit::OK)
        }
        BackupCommand::Unpin { id } => {
            let id = match parse_id(&id) {
                Ok(id) => id,
                Err(code) => return Ok(code),
            };
            let entry = b.call(UnpinBackup { id }).await?;
            print_entry(&entry, json);
            Ok(exit::OK)
        }
        BackupCommand::Delete { id, force } => {
            let id = match parse_id(&id) {
                Ok(id) => id,
                Err(code) => return Ok(code),
            };
            let report = b.call(DeleteBackup { id, force }).await?;
            if json {
                print_json(&report);
            } else {
                println!(
                    "deleted {} ({} stored){}",
                    report.id,
                    human(report.bytes_stored),
                    if report.overrode.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; --force overrode: {}",
                            report
                                .overrode
                                .iter()
                                .map(Reason::rule)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
            }
            Ok(exit::OK)
        }
        BackupCommand::Keygen { .. } => Ok(exit::USAGE),
    }
}

fn level_of(level: VerifyLevel) -> Level {
    match level {
        VerifyLevel::Checksummed => Level::Checksummed,
        VerifyLevel::Decoded => Level::Decoded,
        VerifyLevel::Drilled => Level::Drilled,
    }
}

/// `now`, `verify` and `restore` through the daemon's API: the same requests the in-process
/// [`execute`] sends the actor, as HTTP calls; the same progress, output and exit codes.
async fn remote(api: &Api, command: BackupCommand, json: bool) -> u8 {
    let what = api.what.as_str();
    let failed = |f: Failure| f.report(what, exit_for_code);
    match command {
        BackupCommand::Now { stores } => {
            let body =
                json!({ "stores": stores.iter().map(ToString::to_string).collect::<Vec<_>>() });
            #[derive(Deserialize)]
            struct Started {
                id: BackupId,
            }
            let started: Started = match api
                .call_as(
                    Method::POST,
                    &format!("{API}/backup/create"),
                    Some(&body),
                    false,
                )
                .await
            {
                Ok(s) => s,
                Err(f) => return failed(f),
            };
            let id = started.id;
            eprintln!("lucid-db backup: {id} started (in the daemon)");
            let path = format!("{API}/backup/status/{id}");
            let report = follow(id, REMOTE_POLL, || async {
                let v = match api.call(Method::GET, &path, None, false).await {
                    Ok(v) => v,
                    // The run goes on in the daemon: ask again rather than give up on it.
                    Err(f) if matches!(f.status, 429 | 503) => return Ok(Polled::NoNews),
                    Err(f) => return Err(f),
                };
                if v["state"] == "running" {
                    let progress =
                        serde_json::from_value(v["progress"].clone()).unwrap_or_default();
                    return Ok(Polled::Running(progress));
                }
                serde_json::from_value::<ReportView>(v)
                    .map(Polled::Finished)
                    .map_err(|e| Failure {
                        status: 0,
                        code: "bad_answer".to_owned(),
                        message: format!("the daemon's status does not read as expected: {e}"),
                        retry_after: None,
                    })
            })
            .await;
            let report = match report {
                Ok(r) => r,
                Err(f) => return failed(f),
            };
            print_report(&report, json);
            match report.outcome {
                BackupOutcome::Complete => exit::OK,
                BackupOutcome::Partial => exit::PARTIAL,
                BackupOutcome::Failed => report
                    .error
                    .as_ref()
                    .map_or(exit::FAILED, |e| exit_for_code(&e.code)),
            }
        }
        BackupCommand::Verify {
            id,
            level,
            identity,
        } => {
            if identity.is_some() {
                return identity_refused(what);
            }
            let id = match parse_id(&id) {
                Ok(id) => id,
                Err(code) => return code,
            };
            #[derive(Deserialize)]
            struct Verified {
                report: VerifyReport,
            }
            let body = json!({ "level": level_of(level) });
            match api
                .call_as::<Verified>(
                    Method::POST,
                    &format!("{API}/backup/{id}/verify"),
                    Some(&body),
                    true,
                )
                .await
            {
                Ok(v) => print_verify(&v.report, json),
                Err(f) => failed(f),
            }
        }
        BackupCommand::Restore {
            id,
            stores,
            identity,
            to_volume,
            to_db,
            to_redis_db,
            index_prefix,
            force,
        } => {
            if identity.is_some() {
                return identity_refused(what);
            }
            let id = match parse_id(&id) {
                Ok(id) => id,
                Err(code) => return code,
            };
            let body = json!({
                "stores": stores.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "force": force,
                "to_volume": to_volume.as_ref().map(|v| v.as_str()),
                "to_db": to_db,
                "to_redis_db": to_redis_db,
                "index_prefix": index_prefix,
            });
            eprintln!(
                "lucid-db backup: restoring {id} (in the daemon): checking every artifact first"
            );
            let path = format!("{API}/backup/{id}/restore");
            let restore = api.call_as::<RestoreReport>(Method::POST, &path, Some(&body), true);
            let status = format!("{API}/backup/restore/status");
            let report = follow_restore(id, restore, REMOTE_POLL, || async {
                let v = api.call(Method::GET, &status, None, false).await.ok()?;
                serde_json::from_value::<Option<RestoreProgress>>(v["progress"].clone())
                    .ok()
                    .flatten()
            })
            .await;
            match report {
                Ok(report) => {
                    print_restore(&report, json);
                    exit::OK
                }
                Err(f) => failed(f),
            }
        }
        // `run` sends only these here.
        _ => exit::USAGE,
    }
}

/// An identity file is a secret key: it is not sent to the daemon.
fn identity_refused(what: &str) -> u8 {
    eprintln!(
        "{what}: --identity cannot be used beside a running daemon: the key would have to go \
         over HTTP to it. Set backup.identity_file (or the backup_identity credential) in the \
         daemon's configuration, or stop the daemon and run this command again"
    );
    exit::USAGE
}

fn print_restore(report: &RestoreReport, json: bool) {
    if json {
        print_json(report);
    } else {
        for r in &report.restored {
            println!(
                "restored {:<44} -> {} {}: {} written{}",
                r.artifact,
                r.store,
                r.target,
                r.written,
                if r.skipped > 0 {
                    format!(", {} skipped", r.skipped)
                } else {
                    String::new()
                }
            );
        }
        println!(
            "backup {}: {} artifacts restored in {:.1}s",
            report.id,
            report.restored.len(),
            report.elapsed_ms as f64 / 1000.0
        );
    }
}

fn print_entry(entry: &Entry, json: bool) {
    if json {
        print_json(&entry_json(entry));
    } else {
        show(entry);
    }
}

/// `backup prune`: one line per backup, newest first, with the rules that decided.
fn print_prune(r: &PruneReport, json: bool) {
    if json {
        print_json(r);
        return;
    }
    println!(
        "{:<22} {:<8} {:>9} {:<12} RULES",
        "ID", "ACTION", "STORED", "VERIFIED"
    );
    for b in &r.backups {
        let action = match (b.keep, r.dry_run) {
            (true, _) => "keep",
            (false, true) => "would-delete",
            (false, false) => "deleted",
        };
        let rules: Vec<String> = b
            .reasons
            .iter()
            .map(|reason| match reason {
                Reason::NewestGoodCopy { of } => format!("newest_good_copy({})", of.join(",")),
                Reason::NoGoodCopy { of } => format!("no_good_copy({})", of.join(",")),
                Reason::Daily { day } => format!("daily({day})"),
                Reason::Weekly { week } => format!("weekly({week})"),
                Reason::Monthly { month } => format!("monthly({month})"),
                Reason::Recent { days } => format!("recent(<{days}d)"),
                Reason::Expired { age_days } => format!("expired({age_days}d old)"),
                other => other.rule().to_owned(),
            })
            .collect();
        println!(
            "{:<22} {:<8} {:>9} {:<12} {}",
            b.id.to_string(),
            action,
            human(b.bytes_stored),
            b.counts_as.map_or("-", |l| l.as_str()),
            rules.join(" ")
        );
    }
    println!(
        "{} {} backups, {} (good copies: verified to {})",
        if r.dry_run { "would delete" } else { "deleted" },
        r.deleted.len(),
        human(r.bytes_freed),
        r.min_level.as_str()
    );
}

/// What one look at a run found.
enum Polled<R> {
    Running(Progress),
    /// No answer this time, worth asking again (the daemon's rate limit said to wait).
    NoNews,
    Finished(R),
}

/// Waits for run `id` to end, asking `poll` every `every` (the actor in process, the daemon's
/// `GET …/backup/status/{id}` beside it) and showing its progress on stderr (see the module
/// doc).
async fn follow<R, E, F, Fut>(id: BackupId, every: Duration, mut poll: F) -> Result<R, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Polled<R>, E>>,
{
    let mut shown = Shown::new(std::io::stderr().is_terminal());
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        match poll().await {
            Ok(Polled::Finished(report)) => {
                shown.finish();
                return Ok(report);
            }
            Ok(Polled::Running(progress)) => shown.update(id, &progress),
            Ok(Polled::NoNews) => {}
            Err(e) => {
                shown.finish();
                return Err(e);
            }
        }
    }
}

/// Waits for a restore, showing its progress on stderr like `follow` (the restore's own
/// [`RestoreStatus`], asked every `every` through `status`): on a terminal a bar of artifacts
/// restored, with the one under way and its items read; elsewhere a line at most once a
/// second.
async fn follow_restore<E, F, Fut>(
    id: BackupId,
    restore: impl Future<Output = Result<RestoreReport, E>>,
    every: Duration,
    mut status: F,
) -> Result<RestoreReport, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<RestoreProgress>>,
{
    tokio::pin!(restore);
    let mut shown = Shown::new(std::io::stderr().is_terminal());
    if let Shown::Bar(bar) = &shown {
        // Nothing is read yet while the artifacts' checksums are checked.
        bar.set_style(style("{spinner} {wide_msg}"));
    }
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            report = &mut restore => {
                shown.finish();
                return report;
            }
            _ = ticks.tick() => {}
        }
        let Some(p) = status().await else {
            continue;
        };
        let current = p
            .current
            .as_deref()
            .map(|a| format!("restoring {a} ({} items read)", p.items_read))
            .unwrap_or_default();
        match &shown {
            Shown::Bar(bar) => {
                if bar.length().is_none() {
                    bar.set_style(style("[{bar:20}] {pos}/{len} artifacts, {wide_msg}"));
                }
                bar.set_length(p.artifacts_planned.max(p.artifacts_done));
                bar.set_position(p.artifacts_done);
                bar.set_message(current);
            }
            Shown::Lines { .. } => shown.line(format!(
                "lucid-db backup: restoring {id}: {}/{} artifacts{}",
                p.artifacts_done,
                p.artifacts_planned,
                if current.is_empty() {
                    String::new()
                } else {
                    format!(", {current}")
                }
            )),
        }
    }
}

/// How `follow` and `follow_restore` show progress: a bar on a terminal, otherwise a line at
/// most once a second and only when it changed.
enum Shown {
    Bar(ProgressBar),
    Lines {
        last_line: Option<tokio::time::Instant>,
        last_text: String,
    },
}

impl Shown {
    fn new(terminal: bool) -> Shown {
        if !terminal {
            return Shown::Lines {
                last_line: None,
                last_text: String::new(),
            };
        }
        // A spinner until the work has its size, then a bar. Four redraws a second are plenty
        // and cost a Pi nothing; `wide_msg` cuts the message to the terminal's width, so a
        // long artifact name never wraps the line.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
        // The id is on the "started" line above; the bar leaves the width to the artifacts.
        bar.set_style(style("{spinner} {bytes} read, {wide_msg}"));
        bar.enable_steady_tick(Duration::from_millis(250));
        Shown::Bar(bar)
    }

    /// A backup run's progress.
    fn update(&mut self, id: BackupId, p: &Progress) {
        let artifacts = format!(
            "{}/{} artifacts",
            p.artifacts_done,
            p.artifacts_planned.max(p.artifacts_done)
        );
        let writing = p
            .current
            .as_deref()
            .map(|a| format!(", writing {a}"))
            .unwrap_or_default();
        match self {
            Shown::Bar(bar) => {
                if p.estimate_bytes > 0 && bar.length().is_none() {
                    bar.set_style(style(
                        "[{bar:20}] {bytes}/~{total_bytes} {binary_bytes_per_sec}, {wide_msg}",
                    ));
                }
                // The estimate may fall short of what is read (it is an estimate): the bar
                // then ends full rather than past its end.
                if p.estimate_bytes > 0 {
                    bar.set_length(p.estimate_bytes.max(p.bytes_in));
                }
                bar.set_position(p.bytes_in);
                bar.set_message(format!("{artifacts}{writing}"));
            }
            Shown::Lines { .. } => self.line(format!(
                "lucid-db backup: {id}: {artifacts}, {} read, {} stored{writing}",
                human(p.bytes_in),
                human(p.bytes_stored),
            )),
        }
    }

    /// Prints `text` as a plain line when one is due and it changed (not on a terminal).
    fn line(&mut self, text: String) {
        if let Shown::Lines {
            last_line,
            last_text,
        } = self
        {
            let due = last_line.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
            if due && text != *last_text {
                eprintln!("{text}");
                *last_line = Some(tokio::time::Instant::now());
                *last_text = text;
            }
        }
    }

    /// Removes the bar, so the report that follows starts on a clean line.
    fn finish(&self) {
        if let Shown::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// A progress style from a template; the templates are constants, so the fallback (the
/// default bar) is only there not to panic.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("lucid-db: cannot render JSON: {e}"),
    }
}

/// A finished run as `now` prints it: made from the actor's [`RunReport`] in process, read
/// from the daemon's `GET …/backup/status/{id}` beside it (which has the same fields; its
/// error has the code alone: the message, which may name internals, stays in its log).
#[derive(Serialize, Deserialize)]
struct ReportView {
    id: BackupId,
    outcome: BackupOutcome,
    trigger: Trigger,
    started: String,
    ended: String,
    encrypted: bool,
    listed: bool,
    bytes_in: u64,
    bytes_stored: u64,
    stores: BTreeMap<String, StoreRecord>,
    cleaned_up: CleanedView,
    error: Option<ErrorView>,
}

#[derive(Serialize, Deserialize)]
struct CleanedView {
    partials: Vec<String>,
    incomplete: Vec<BackupId>,
    uploads: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct ErrorView {
    code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl From<&RunReport> for ReportView {
    fn from(r: &RunReport) -> Self {
        ReportView {
            id: r.id,
            outcome: r.outcome,
            trigger: r.trigger,
            started: r.started.to_rfc3339(),
            ended: r.ended.to_rfc3339(),
            encrypted: r.encrypted,
            listed: r.listed,
            bytes_in: r.bytes_in,
            bytes_stored: r.bytes_stored,
            stores: r.stores.clone(),
            cleaned_up: CleanedView {
                partials: r.cleaned.partials.clone(),
                incomplete: r.cleaned.incomplete.clone(),
                uploads: r.cleaned.uploads.clone(),
            },
            error: r.error.as_ref().map(|e| ErrorView {
                code: e.code().to_owned(),
                message: Some(e.to_string()),
            }),
        }
    }
}

fn print_report(r: &ReportView, json: bool) {
    if json {
        // Through a `Value`: its keys in order, as every other `--json` here.
        match serde_json::to_value(r) {
            Ok(v) => print_json(&v),
            Err(e) => eprintln!("lucid-db: cannot render JSON: {e}"),
        }
        return;
    }
    let c = &r.cleaned_up;
    let removed = c.partials.len() + c.incomplete.len() + c.uploads.len();
    if removed > 0 {
        eprintln!(
            "lucid-db backup: removed what interrupted runs left: {} partial files, {} \
             incomplete backups, {} open uploads",
            c.partials.len(),
            c.incomplete.len(),
            c.uploads.len()
        );
    }
    println!(
        "backup {}: {} — {} read, {} stored{}",
        r.id,
        r.outcome.as_str(),
        human(r.bytes_in),
        human(r.bytes_stored),
        if r.encrypted { "" } else { ", NOT ENCRYPTED" }
    );
    stores(&r.stores);
    if let Some(e) = &r.error {
        println!(
            "error ({}): {}",
            e.code,
            e.message
                .as_deref()
                .unwrap_or("the daemon's log has the detail")
        );
    }
}

fn stores(stores: &std::collections::BTreeMap<String, lucid_actors::backup::StoreRecord>) {
    for (name, s) in stores {
        match &s.outcome {
            Outcome::Complete => println!("  {name}: complete"),
            Outcome::Skipped => println!("  {name}: skipped"),
            Outcome::Failed { code, message } => {
                println!("  {name}: FAILED ({code}): {message}")
            }
        }
        for a in &s.artifacts {
            println!(
                "    {:<48} {:>9} -> {:>9}  sha256 {}",
                a.name,
                human(a.bytes_in),
                human(a.bytes_stored),
                a.sha256
            );
        }
    }
}

fn entry_json(e: &Entry) -> serde_json::Value {
    json!({
        "id": e.manifest.id,
        "outcome": lucid_actors::backup::outcome_of(&e.manifest.stores),
        "counts_as": e.effective_level(),
        "manifest": e.manifest,
        "verify": e.verify,
        "pins": e.pins.as_ref().map(|p| &p.pins),
    })
}

fn list_table(entries: &[Entry]) {
    println!(
        "{:<22} {:<9} {:>9} {:>9} {:<12} STORES",
        "ID", "OUTCOME", "READ", "STORED", "VERIFIED"
    );
    for e in entries {
        let m = &e.manifest;
        let (read, stored) = m
            .artifacts()
            .fold((0, 0), |(i, s), a| (i + a.bytes_in, s + a.bytes_stored));
        println!(
            "{:<22} {:<9} {:>9} {:>9} {:<12} {}",
            m.id.to_string(),
            lucid_actors::backup::outcome_of(&m.stores).as_str(),
            human(read),
            human(stored),
            e.effective_level().map_or("-", |l| l.as_str()),
            m.stores.keys().cloned().collect::<Vec<_>>().join(",")
        );
    }
}

fn show(e: &Entry) {
    let m = &e.manifest;
    println!("backup       {}", m.id);
    println!(
        "outcome      {}",
        lucid_actors::backup::outcome_of(&m.stores).as_str()
    );
    println!("created      {}", m.created.to_rfc3339());
    println!("host         {}", m.host);
    println!("lucid-db     {}", m.lucid_db);
    println!("trigger      {}", m.trigger.as_str());
    println!(
        "encryption   {}",
        if !m.encryption.is_encrypted() {
            "NONE".to_owned()
        } else {
            let mut parts = m.encryption.recipients.clone();
            if m.encryption.passphrase {
                parts.push("passphrase (key.age)".to_owned());
            }
            parts.join(", ")
        }
    );
    println!(
        "compression  {}",
        json!(m.compression).as_str().unwrap_or("?")
    );
    println!(
        "counts as    {}",
        e.effective_level().map_or("unverified", |l| l.as_str())
    );
    if let Some(p) = &e.pins {
        for pin in &p.pins {
            println!(
                "pinned       at {}{}",
                pin.at.to_rfc3339(),
                pin.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(v) = &e.verify {
        for (level, r) in &v.levels {
            println!(
                "verified     {} at {}: {}",
                level.as_str(),
                r.at.to_rfc3339(),
                if r.passed { "passed" } else { "FAILED" }
            );
            for (store, d) in &r.stores {
                for what in &d.not_comparable {
                    println!("             {store}: not comparable on this server: {what}");
                }
            }
        }
    }
    println!("stores");
    stores(&m.stores);
}

/// Prints a verification's report; its exit code: 0 passed, 65 not.
fn print_verify(r: &VerifyReport, json: bool) -> u8 {
    let code = if r.passed() { exit::OK } else { exit::DATAERR };
    if json {
        print_json(&json!({
            "id": r.id,
            "level": r.level,
            "passed": r.passed(),
            "recorded": r.recorded,
            "counts_as": r.counts_as,
            "artifacts": r.result.artifacts,
            "stores": r.result.stores,
            "first_failure": r.first_failure.as_ref().map(|(artifact, code, message)| json!({
                "artifact": artifact, "code": code, "message": message,
            })),
        }));
        return code;
    }
    for (name, check) in &r.result.artifacts {
        match check {
            lucid_actors::backup::ArtifactCheck::Ok => println!("ok      {name}"),
            lucid_actors::backup::ArtifactCheck::Failed { code, message } => {
                println!("FAILED  {name} ({code}): {message}")
            }
        }
    }
    for (store, d) in &r.result.stores {
        println!(
            "{}  {store}: {} restored into scratch targets in {:.1}s{}{}",
            if d.passed { "ok    " } else { "FAILED" },
            d.restored,
            d.restore_ms as f64 / 1000.0,
            if d.compared > 0 {
                format!(", {} compared one by one with the backup", d.compared)
            } else {
                String::new()
            },
            if d.specs_compared > 0 {
                format!(
                    ", {} index specs, validators or mappings compared with its metadata",
                    d.specs_compared
                )
            } else {
                String::new()
            }
        );
        for what in &d.not_comparable {
            println!("        {store}: not comparable on this server: {what}");
        }
    }
    println!(
        "backup {}: {} {} ({} artifacts){}; counts as {}",
        r.id,
        r.level.as_str(),
        if r.passed() { "passed" } else { "FAILED" },
        r.result.artifacts.len(),
        if r.recorded {
            ""
        } else {
            " — not recorded: the failure is about the key, not the backup"
        },
        r.counts_as.map_or("unverified", |l| l.as_str())
    );
    code
}

#[cfg(test)]
mod tests {
    use lucid_actors::backup::{ManifestError, PipelineError, Refusal};

    use super::*;

    /// Beside a daemon the CLI has only the error's code: each code gives the exit code the
    /// same error gives in process.
    #[test]
    fn an_api_error_code_exits_as_the_same_error_does_in_process() {
        let s = |t: &str| t.to_owned();
        let errors = [
            BackupError::Busy { reason: s("r") },
            BackupError::NotFound { id: s("x") },
            BackupError::NotSupported { what: s("w") },
            BackupError::Unavailable {
                what: s("w"),
                reason: s("r"),
            },
            BackupError::NotDelivered,
            BackupError::IdentityRequired,
            BackupError::Retention(Refusal::ClockUnsynchronised),
            BackupError::Manifest(ManifestError::Malformed {
                file: "manifest.json",
                reason: s("r"),
            }),
            BackupError::Pipeline(PipelineError::ChecksumMismatch {
                artifact: s("a"),
                expected: s("e"),
                found: s("f"),
            }),
            BackupError::Pipeline(PipelineError::Truncated {
                artifact: s("a"),
                expected: 2,
                found: 1,
            }),
            BackupError::Pipeline(PipelineError::WrongIdentity { artifact: s("a") }),
            BackupError::DrillMismatch {
                artifact: s("a"),
                reason: s("r"),
            },
            BackupError::Store {
                store: "redis",
                code: "connection_refused",
                message: s("m"),
            },
            BackupError::Store {
                store: "redis",
                code: "rejected",
                message: s("m"),
            },
            BackupError::TargetNotEmpty {
                target: s("db0"),
                holds: s("3 keys"),
            },
            BackupError::NotInBackup {
                what: s("redis"),
                id: s("x"),
            },
            BackupError::BadRequest { what: s("w") },
            BackupError::Guarded {
                id: s("x"),
                reasons: s("pinned"),
            },
            BackupError::Interrupted { reason: s("r") },
        ];
        for e in &errors {
            assert_eq!(exit_for_code(e.code()), exit_for(e), "{e:?}");
        }
    }
}
