//! `lucid-db backup …`: the CLI's parts (stores, volumes, backup — never the scheduler) run in
//! this process, with the daemon's settings, state directory and lock files: a backup here and
//! one in the daemon never overlap (the second is refused, exit 75).
//!
//! `now` waits for the outcome and shows progress on stderr: a progress bar (indicatif) when
//! stderr is a terminal, plain lines at most one a second otherwise (a pipe, a file, the
//! journal: a bar's redraws would be noise there). The result goes to stdout, as text or
//! `--json`. Exit codes: docs/cli.md.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lucid_actors::backup::{
    BackupError, BackupHandle, BackupId, BackupOutcome, BackupStatus, DeleteBackup, Entry,
    Identities, KeyError, Level, ListBackups, Outcome, PinBackup, Progress, PruneBackups,
    PruneReport, Reason, RestoreBackup, RestoreReport, RestoreStatus, RunReport, RunStatus,
    ShowBackup, StartBackup, Targets, Trigger, UnpinBackup, VerifyBackup, VerifyReport, keygen,
};
use lucid_actors::config::BackupStorage;
use lucid_actors::state::{self, DaemonLock, StateError};
use lucid_actors::volume::check_root;
use lucid_actors::{Config, Roles, StateDir};
use serde_json::json;

use crate::cli::{BackupCommand, VerifyLevel};
use crate::exit;
use crate::volumes_cmd::human;

/// How often `now` asks for the run's status; progress lines go out at most once a second.
const POLL: Duration = Duration::from_millis(200);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

pub async fn run(config: &Config, command: BackupCommand, json: bool) -> u8 {
    if let BackupCommand::Keygen { out } = &command {
        return keygen_cmd(out, json);
    }
    if let Err(code) = prepare(config) {
        return code;
    }
    if matches!(command, BackupCommand::Restore { .. }) {
        match DaemonLock::held(&StateDir::new(&config.state_dir)) {
            Ok(false) => {}
            Ok(true) => {
                eprintln!(
                    "lucid-db backup restore: the lucid-db daemon runs with this state directory: \
                     a restore must not write into the stores it serves. Ask the daemon to \
                     restore (POST /api/v1/database/backup/ID/restore with an admin token; \
                     docs/http.md), or stop it (systemctl stop lucid-db), restore, then start \
                     it again"
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

/// Refuses directories another user owns and an unusable data root, then creates the state
/// directory: nothing is written before every check passed.
fn prepare(config: &Config) -> Result<(), u8> {
    let state_error = |e: StateError| {
        eprintln!("lucid-db backup: {e}");
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
        eprintln!("lucid-db backup: {e}");
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
            let report = follow(b, id).await?;
            print_report(&report, json);
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
            let level = match level {
                VerifyLevel::Checksummed => Level::Checksummed,
                VerifyLevel::Decoded => Level::Decoded,
                VerifyLevel::Drilled => Level::Drilled,
            };
            let report = b
                .call(VerifyBackup {
                    id,
                    level,
                    identity,
                })
                .await?;
            print_verify(&report, json);
            Ok(if report.passed() {
                exit::OK
            } else {
                exit::DATAERR
            })
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
            let report = follow_restore(b, id, restore).await?;
            if json {
                print_json(&report);
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

/// Waits for run `id` to end, showing its progress on stderr (see the module doc).
async fn follow(b: &BackupHandle, id: BackupId) -> Result<RunReport, BackupError> {
    let mut shown = Shown::new(std::io::stderr().is_terminal());
    let mut ticks = tokio::time::interval(POLL);
    loop {
        ticks.tick().await;
        match b.call(BackupStatus { id }).await {
            Ok(RunStatus::Finished(report)) => {
                shown.finish();
                return Ok(report);
            }
            Ok(RunStatus::Running { progress, .. }) => shown.update(id, &progress),
            Err(e) => {
                shown.finish();
                return Err(e);
            }
        }
    }
}

/// Waits for a restore, showing its progress on stderr like `follow` (the restore's own
/// [`RestoreStatus`], asked every [`POLL`]): on a terminal a bar of artifacts restored, with
/// the one under way and its items read; elsewhere a line at most once a second.
async fn follow_restore(
    b: &BackupHandle,
    id: BackupId,
    restore: impl std::future::Future<Output = Result<RestoreReport, BackupError>>,
) -> Result<RestoreReport, BackupError> {
    tokio::pin!(restore);
    let mut shown = Shown::new(std::io::stderr().is_terminal());
    if let Shown::Bar(bar) = &shown {
        // Nothing is read yet while the artifacts' checksums are checked.
        bar.set_style(style("{spinner} {wide_msg}"));
    }
    let mut ticks = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            report = &mut restore => {
                shown.finish();
                return report;
            }
            _ = ticks.tick() => {}
        }
        let Ok(Some(p)) = b.call(RestoreStatus).await else {
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

fn report_json(r: &RunReport) -> serde_json::Value {
    json!({
        "id": r.id,
        "outcome": r.outcome,
        "trigger": r.trigger,
        "started": r.started.to_rfc3339(),
        "ended": r.ended.to_rfc3339(),
        "encrypted": r.encrypted,
        "listed": r.listed,
        "bytes_in": r.bytes_in,
        "bytes_stored": r.bytes_stored,
        "stores": r.stores,
        "cleaned_up": {
            "partials": r.cleaned.partials,
            "incomplete": r.cleaned.incomplete,
            "uploads": r.cleaned.uploads,
        },
        "error": r.error.as_ref().map(|e| json!({"code": e.code(), "message": e.to_string()})),
    })
}

fn print_report(r: &RunReport, json: bool) {
    if json {
        print_json(&report_json(r));
        return;
    }
    let removed = r.cleaned.partials.len() + r.cleaned.incomplete.len() + r.cleaned.uploads.len();
    if removed > 0 {
        eprintln!(
            "lucid-db backup: removed what interrupted runs left: {} partial files, {} \
             incomplete backups, {} open uploads",
            r.cleaned.partials.len(),
            r.cleaned.incomplete.len(),
            r.cleaned.uploads.len()
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
        println!("error ({}): {e}", e.code());
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

fn print_verify(r: &VerifyReport, json: bool) {
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
        return;
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
}
