//! `lucid-db volumes …`: the CLI's parts (stores, volumes, backup — never the scheduler) run in
//! this process, on the same data root, state directory and lock files as the daemon (two
//! exclusive operations on one volume never overlap). Changes made here reach a running
//! daemon's view of the volumes when it restarts.
//!
//! Before anything is started, the state directory, the data root and the named volume must
//! belong to the user this runs as: files a root CLI wrote there could not be opened by the
//! daemon (`User=lucid`) later.
//!
//! Beside a running daemon, the commands that change a volume (all but `ls`, `inspect` and
//! `stats`, which only read) go through its API instead ([`crate::client`]; the routes are
//! docs/http.md's Volumes): the daemon's answer is the `--json` form as is, and the table
//! reads it as the same type the actor answers here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::http::Method;

use lucid_actors::config::ByteSize;
use lucid_actors::state::{self, StateError};
use lucid_actors::volume::{
    CheckThresholds, CleanupReport, CleanupVolume, CreateVolume, DeleteVolume, InspectVolume,
    ListVolumes, MeasureUsage, MigrateVolume, ResizeVolume, Verify, VerifyReport, VolumeError,
    VolumeHandle, VolumeInfo, VolumeName, check_root,
};
use lucid_actors::volume::{
    DeleteSnapshot, IoStats, ListSnapshots, RestoreSnapshot, SnapshotInfo, TakeSnapshot,
    VerifySnapshot, VolumeStats,
};
use lucid_actors::{Config, Roles, StateDir};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cli::VolumesCommand;
use crate::client::{self, Api};
use crate::exit;
use crate::http::API;

pub async fn run(
    config: &Config,
    command: VolumesCommand,
    json: bool,
    token_file: Option<&Path>,
) -> u8 {
    let reads = matches!(
        command,
        VolumesCommand::Ls | VolumesCommand::Inspect { .. } | VolumesCommand::Stats { .. }
    );
    if !reads {
        match client::connect(config, token_file, "lucid-db volumes").await {
            Ok(Some(api)) => return remote(&api, command, json).await,
            Ok(None) => {}
            Err(code) => return code,
        }
    }
    if let Err(code) = prepare(config, &command) {
        return code;
    }
    let handles = lucid_actors::start(config, Roles::CLI);
    let Some(volumes) = handles.volumes.clone() else {
        eprintln!("lucid-db volumes: the volume actor did not start");
        return exit::FAILED;
    };
    let code = match execute(&volumes, command, json).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lucid-db volumes: {e}");
            exit_for_code(e.code())
        }
    };
    // The answer is printed; a store actor slow to close its connection holds nothing back.
    handles
        .shutdown(config.supervisor.call_deadline.min(Duration::from_secs(1)))
        .await;
    code
}

/// Refuses directories owned by someone else and an unusable data root, then creates the state
/// directory: nothing is written before all three checks passed.
fn prepare(config: &Config, command: &VolumesCommand) -> Result<(), u8> {
    let state_error = |e: StateError| {
        eprintln!("lucid-db volumes: {e}");
        match e {
            StateError::ForeignOwner { .. } => exit::NOPERM,
            StateError::Unusable { .. } => exit::CONFIG,
        }
    };
    let mut mine: Vec<PathBuf> = vec![config.state_dir.clone(), config.volumes.root.clone()];
    if let Some(n) = command.volume() {
        // A name that is not a volume name is refused later, with its own error.
        if VolumeName::new(n).is_ok() {
            mine.push(config.volumes.root.join(n));
        }
    }
    for path in &mine {
        state::check_owner(path).map_err(state_error)?;
    }
    if let Err(e) = check_root(&config.volumes.root) {
        eprintln!("lucid-db volumes: {e}");
        return Err(exit::CONFIG);
    }
    StateDir::new(&config.state_dir)
        .ensure()
        .map_err(state_error)
}

/// The exit code of a volume error, by its code: the same in process and from the daemon's
/// API (whose volume errors carry the actor's code; its own checks of a body are usage errors).
fn exit_for_code(code: &str) -> u8 {
    match code {
        "invalid_name" | "invalid" | "live_volume" | "invalid_body" | "invalid_json"
        | "invalid_query" | "invalid_path" => exit::USAGE,
        "root_unavailable" => exit::CONFIG,
        "busy" => exit::TEMPFAIL,
        _ => exit::FAILED,
    }
}

fn name(n: &str) -> Result<VolumeName, VolumeError> {
    VolumeName::new(n)
}

/// A snapshot's name as a path segment: checked here so that it cannot name another route
/// (the daemon's volume actor checks it as in process).
fn segment(snapshot: &str) -> Result<&str, VolumeError> {
    if snapshot.is_empty()
        || snapshot == "."
        || snapshot == ".."
        || snapshot.contains(['/', '?', '#', '%'])
    {
        return Err(VolumeError::Invalid {
            field: "snapshot",
            reason: format!("{snapshot:?} is not a snapshot name"),
        });
    }
    Ok(snapshot)
}

/// A command that changes a volume, through the daemon's API (docs/http.md, Volumes): the same
/// checks of the arguments first, then the request; the answer printed as in process.
async fn remote(api: &Api, command: VolumesCommand, json: bool) -> u8 {
    match remote_call(api, command, json).await {
        Ok(code) => code,
        Err(Remote::Local(e)) => {
            eprintln!("lucid-db volumes: {e}");
            exit_for_code(e.code())
        }
        Err(Remote::Api(f)) => f.report(&api.what, exit_for_code),
    }
}

enum Remote {
    Local(VolumeError),
    Api(client::Failure),
}

impl From<VolumeError> for Remote {
    fn from(e: VolumeError) -> Self {
        Remote::Local(e)
    }
}

impl From<client::Failure> for Remote {
    fn from(f: client::Failure) -> Self {
        Remote::Api(f)
    }
}

/// Prints the daemon's answer: as is with `--json` (it is the in-process `--json` form), else
/// read as `T` and shown by `show`.
fn answer<T: DeserializeOwned>(
    value: Value,
    json: bool,
    show: impl FnOnce(&T),
) -> Result<T, Remote> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| {
        Remote::Api(client::Failure {
            status: 0,
            code: "bad_answer".to_owned(),
            message: format!(
                "the daemon's answer does not read as expected ({e}): is it another version?"
            ),
            retry_after: None,
        })
    })?;
    print(json, &value, || show(&typed));
    Ok(typed)
}

async fn remote_call(api: &Api, command: VolumesCommand, json: bool) -> Result<u8, Remote> {
    let base = format!("{API}/volumes");
    match command {
        VolumesCommand::Create {
            name: n,
            quota,
            kind,
            labels,
        } => {
            let n = name(&n)?;
            if let Some(q) = &quota {
                size("quota", q)?;
            }
            let map = parse_labels(labels)?;
            let mut body = json!({ "name": n.as_str() });
            if let Some(q) = quota {
                body["quota"] = json!(q);
            }
            if let Some(k) = kind {
                body["kind"] = json!(k);
            }
            if !map.is_empty() {
                body["labels"] = json!(map);
            }
            let v = api.call(Method::POST, &base, Some(&body), true).await?;
            answer::<VolumeInfo>(v, json, show_created)?;
        }
        VolumesCommand::Delete { name: n, force } => {
            let n = name(&n)?;
            let force = if force { "?force=true" } else { "" };
            let v = api
                .call(Method::DELETE, &format!("{base}/{n}{force}"), None, true)
                .await?;
            print(json, &v, || println!("deleted {n}"));
        }
        VolumesCommand::Resize { name: n, quota } => {
            let n = name(&n)?;
            size("quota", &quota)?;
            let body = json!({ "quota": quota });
            let v = api
                .call(Method::PUT, &format!("{base}/{n}/quota"), Some(&body), true)
                .await?;
            answer::<VolumeInfo>(v, json, show_quota)?;
        }
        VolumesCommand::Verify {
            name: n,
            update,
            snapshot,
        } => {
            let n = name(&n)?;
            let mut body = json!({});
            if update {
                body["update"] = json!(true);
            }
            if let Some(s) = &snapshot {
                body["snapshot"] = json!(segment(s)?);
            }
            let v = api
                .call(
                    Method::POST,
                    &format!("{base}/{n}/verify"),
                    Some(&body),
                    true,
                )
                .await?;
            let report = answer::<VerifyReport>(v, json, show_verify)?;
            return Ok(verify_exit(&report));
        }
        VolumesCommand::Cleanup { name: n } => {
            let n = name(&n)?;
            let v = api
                .call(Method::POST, &format!("{base}/{n}/cleanup"), None, true)
                .await?;
            answer::<CleanupReport>(v, json, |r| show_cleanup(n.as_str(), r))?;
        }
        VolumesCommand::Migrate { name: n, to } => {
            let n = name(&n)?;
            let body = json!({ "to": to });
            let v = api
                .call(
                    Method::POST,
                    &format!("{base}/{n}/migrate"),
                    Some(&body),
                    true,
                )
                .await?;
            answer::<VolumeInfo>(v, json, show_migrated)?;
        }
        VolumesCommand::Snapshot {
            name: n,
            snapshot,
            label,
            allow_live,
        } => {
            let n = name(&n)?;
            let mut body = json!({});
            if let Some(s) = &snapshot {
                body["name"] = json!(segment(s)?);
            }
            if let Some(l) = label {
                body["label"] = json!(l);
            }
            if allow_live {
                body["allow_live"] = json!(true);
            }
            let v = api
                .call(
                    Method::POST,
                    &format!("{base}/{n}/snapshots"),
                    Some(&body),
                    true,
                )
                .await?;
            answer::<SnapshotInfo>(v, json, |s| println!("{}", s.name))?;
        }
        VolumesCommand::Snapshots { name: n } => {
            let n = name(&n)?;
            let v = api
                .call(Method::GET, &format!("{base}/{n}/snapshots"), None, false)
                .await?;
            answer::<Vec<SnapshotInfo>>(v, json, |list| snapshots(list))?;
        }
        VolumesCommand::RestoreSnapshot {
            name: n,
            snapshot,
            force,
        } => {
            let n = name(&n)?;
            let s = segment(&snapshot)?;
            let body = json!({ "force": force });
            let v = api
                .call(
                    Method::POST,
                    &format!("{base}/{n}/snapshots/{s}/restore"),
                    Some(&body),
                    true,
                )
                .await?;
            answer::<SnapshotInfo>(v, json, |info| show_restored_snapshot(n.as_str(), info))?;
        }
        VolumesCommand::DeleteSnapshot { name: n, snapshot } => {
            let n = name(&n)?;
            let s = segment(&snapshot)?;
            let v = api
                .call(
                    Method::DELETE,
                    &format!("{base}/{n}/snapshots/{s}"),
                    None,
                    true,
                )
                .await?;
            print(json, &v, || println!("{n}: deleted snapshot {snapshot}"));
        }
        // Reads stay in process (`run`).
        VolumesCommand::Ls | VolumesCommand::Inspect { .. } | VolumesCommand::Stats { .. } => {
            return Ok(exit::USAGE);
        }
    }
    Ok(exit::OK)
}

/// `--label KEY=VALUE`, repeated.
fn parse_labels(labels: Vec<String>) -> Result<BTreeMap<String, String>, VolumeError> {
    labels
        .into_iter()
        .map(|label| match label.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => Err(VolumeError::Invalid {
                field: "label",
                reason: format!("{label:?} is not KEY=VALUE"),
            }),
        })
        .collect()
}

fn size(field: &'static str, text: &str) -> Result<ByteSize, VolumeError> {
    ByteSize::parse(text).map_err(|reason| VolumeError::Invalid { field, reason })
}

async fn execute(v: &VolumeHandle, command: VolumesCommand, json: bool) -> Result<u8, VolumeError> {
    match command {
        VolumesCommand::Ls => {
            // Measure what is not fresh, so the table has figures.
            v.call(CheckThresholds).await?;
            let list = v.call(ListVolumes).await?;
            print(json, &list, || table(&list));
        }
        VolumesCommand::Inspect { name: n } => {
            // Measured first, without the short calls' deadline (a large volume's walk may
            // take longer): the inspect then answers from the fresh figure. A measurement that
            // fails is not the answer: a volume whose directory is gone has nothing to walk,
            // and the inspect shows that in its health; any other failure the inspect meets
            // again, walking itself, and answers.
            let n = name(&n)?;
            let _ = v.call(MeasureUsage { name: n.clone() }).await;
            let info = v.call(InspectVolume { name: n }).await?;
            print(json, &info, || inspect(&info));
        }
        VolumesCommand::Create {
            name: n,
            quota,
            kind,
            labels,
        } => {
            let quota = quota.map(|q| size("quota", &q)).transpose()?;
            let map = parse_labels(labels)?;
            let info = v
                .call(CreateVolume {
                    name: name(&n)?,
                    quota,
                    kind,
                    labels: map,
                })
                .await?;
            print(json, &info, || show_created(&info));
        }
        VolumesCommand::Delete { name: n, force } => {
            v.call(DeleteVolume {
                name: name(&n)?,
                force,
            })
            .await?;
            print(json, &deleted_json(&n), || println!("deleted {n}"));
        }
        VolumesCommand::Resize { name: n, quota } => {
            let info = v
                .call(ResizeVolume {
                    name: name(&n)?,
                    quota: size("quota", &quota)?,
                })
                .await?;
            print(json, &info, || show_quota(&info));
        }
        VolumesCommand::Verify {
            name: n,
            update,
            snapshot,
        } => {
            let report = match snapshot {
                Some(snapshot) => {
                    v.call(VerifySnapshot {
                        name: name(&n)?,
                        snapshot,
                    })
                    .await?
                }
                None => {
                    v.call(Verify {
                        name: name(&n)?,
                        update,
                    })
                    .await?
                }
            };
            print(json, &report, || show_verify(&report));
            return Ok(verify_exit(&report));
        }
        VolumesCommand::Cleanup { name: n } => {
            let report = v.call(CleanupVolume { name: name(&n)? }).await?;
            print(json, &report, || show_cleanup(&n, &report));
        }
        VolumesCommand::Migrate { name: n, to } => {
            let info = v
                .call(MigrateVolume {
                    name: name(&n)?,
                    to,
                })
                .await?;
            print(json, &info, || show_migrated(&info));
        }
        VolumesCommand::Snapshot {
            name: n,
            snapshot,
            label,
            allow_live,
        } => {
            let info = v
                .call(TakeSnapshot {
                    name: name(&n)?,
                    snapshot,
                    label,
                    allow_live,
                })
                .await?;
            print(json, &info, || println!("{}", info.name));
        }
        VolumesCommand::Stats { name: n } => {
            let stats = v
                .call(VolumeStats {
                    name: n.as_deref().map(name).transpose()?,
                    interval: Duration::from_millis(250),
                })
                .await?;
            print(json, &stats, || io_table(&stats));
        }
        VolumesCommand::Snapshots { name: n } => {
            let list = v.call(ListSnapshots { name: name(&n)? }).await?;
            print(json, &list, || snapshots(&list));
        }
        VolumesCommand::RestoreSnapshot {
            name: n,
            snapshot,
            force,
        } => {
            let info = v
                .call(RestoreSnapshot {
                    name: name(&n)?,
                    snapshot,
                    force,
                })
                .await?;
            print(json, &info, || show_restored_snapshot(&n, &info));
        }
        VolumesCommand::DeleteSnapshot { name: n, snapshot } => {
            v.call(DeleteSnapshot {
                name: name(&n)?,
                snapshot: snapshot.clone(),
            })
            .await?;
            print(json, &snapshot_deleted_json(&n, &snapshot), || {
                println!("{n}: deleted snapshot {snapshot}")
            });
        }
    }
    Ok(exit::OK)
}

fn show_created(info: &VolumeInfo) {
    println!(
        "created {} ({} quota) at {}",
        info.meta.name,
        human(info.meta.quota_bytes),
        info.data_dir.display()
    )
}

fn show_quota(info: &VolumeInfo) {
    println!("{}: quota {}", info.meta.name, human(info.meta.quota_bytes))
}

fn show_verify(report: &VerifyReport) {
    let n = &report.volume;
    if report.sealed {
        println!("{n}: no manifest yet; sealed {} entries", report.entries);
    } else if report.clean() {
        println!("{n}: {} entries match the manifest", report.entries);
    } else {
        for p in &report.added {
            println!("added    {p}");
        }
        for p in &report.missing {
            println!("missing  {p}");
        }
        for c in &report.changed {
            println!("changed  {} ({})", c.path, c.what);
        }
        if report.updated {
            println!("{n}: manifest updated");
        }
    }
}

/// 65 for a volume that does not match its manifest (and was not re-sealed).
fn verify_exit(report: &VerifyReport) -> u8 {
    if !report.clean() && !report.updated {
        exit::DATAERR
    } else {
        exit::OK
    }
}

fn show_cleanup(n: &str, report: &CleanupReport) {
    println!(
        "{n}: removed {} files ({}), {} leftovers of interrupted operations",
        report.removed_files,
        human(report.removed_bytes),
        report.removed_leftovers
    )
}

fn show_migrated(info: &VolumeInfo) {
    println!("{} now at {}", info.meta.name, info.data_dir.display())
}

fn show_restored_snapshot(n: &str, info: &SnapshotInfo) {
    println!("{n}: restored snapshot {} ({})", info.name, info.created)
}

// ---------------------------------------------------------------------------------------------
// The JSON answers, shared with the HTTP API (`src/http/volumes.rs`): a route answers exactly
// what the command prints with `--json`. Every other command prints the volume actor's answer
// as it is (`VolumeInfo`, `VerifyReport`, `SnapshotInfo`, `CleanupReport`), so the route sends
// that same value; these two have no value of the actor's to print.

/// `volumes delete NAME --json`, and `DELETE /volumes/{name}`.
pub(crate) fn deleted_json(volume: &str) -> serde_json::Value {
    serde_json::json!({ "deleted": volume })
}

/// `volumes delete-snapshot NAME S --json`, and `DELETE /volumes/{name}/snapshots/{snapshot}`.
pub(crate) fn snapshot_deleted_json(volume: &str, snapshot: &str) -> serde_json::Value {
    serde_json::json!({ "volume": volume, "deleted": snapshot })
}

fn io_table(stats: &[IoStats]) {
    println!(
        "{:<16} {:<10} {:>9} {:>9} {:>7} {:>7} {:>6} {:>8} {:>8}",
        "VOLUME",
        "DEVICE",
        "READ/s",
        "WRITE/s",
        "RD op/s",
        "WR op/s",
        "BUSY%",
        "PROBE50",
        "PROBE99"
    );
    let rate = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |b| human(b as u64));
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"));
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1}ms"));
    for s in stats {
        let device = s.device.as_ref().map_or("-", |d| d.name.as_str());
        println!(
            "{:<16} {:<10} {:>9} {:>9} {:>7} {:>7} {:>6} {:>8} {:>8}",
            s.volume.as_str(),
            device,
            rate(s.read_bytes_per_s),
            rate(s.write_bytes_per_s),
            num(s.reads_per_s),
            num(s.writes_per_s),
            num(s.busy_percent),
            ms(s.probe_p50_ms),
            ms(s.probe_p99_ms)
        );
        if let Some(why) = &s.unavailable {
            println!("{:<16} device figures unavailable: {why}", "");
        }
    }
}

fn snapshots(list: &[SnapshotInfo]) {
    println!(
        "{:<24} {:<24} {:<7} {:>8} {:>8}  LABEL",
        "SNAPSHOT", "CREATED", "METHOD", "FILES", "SIZE"
    );
    for s in list {
        println!(
            "{:<24} {:<24} {:<7} {:>8} {:>8}  {}",
            s.name,
            s.created,
            format!("{:?}", s.method).to_lowercase(),
            s.files,
            human(s.bytes),
            s.label.as_deref().unwrap_or("")
        );
    }
}

fn print<T: Serialize>(json: bool, value: &T, human_form: impl FnOnce()) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("lucid-db: cannot render JSON: {e}"),
        }
    } else {
        human_form();
    }
}

/// 1024-based, one decimal: 9.8G, 512.0K, 37B.
pub(crate) fn human(bytes: u64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "K", "M", "G", "T"] {
        if value < 1024.0 || unit == "T" {
            return if unit == "B" {
                format!("{bytes}B")
            } else {
                format!("{value:.1}{unit}")
            };
        }
        value /= 1024.0;
    }
    format!("{bytes}B")
}

fn table(list: &[VolumeInfo]) {
    println!(
        "{:<16} {:>8} {:>8} {:>6} {:>9} {:>8}  {:<18} PATH",
        "VOLUME", "QUOTA", "USED", "USE%", "FILES", "FS FREE", "FORECAST"
    );
    for info in list {
        let (used, pct, files, free) = match &info.usage {
            Some(u) => (
                human(u.tally.bytes),
                format!("{:.1}", u.percent),
                u.tally.files.to_string(),
                human(u.fs.free_bytes),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let forecast = info
            .forecast
            .map_or_else(|| "-".to_owned(), |f| f.describe());
        println!(
            "{:<16} {:>8} {:>8} {:>6} {:>9} {:>8}  {:<18} {}",
            info.meta.name.as_str(),
            human(info.meta.quota_bytes),
            used,
            pct,
            files,
            free,
            forecast,
            info.data_dir.display()
        );
    }
}

fn inspect(info: &VolumeInfo) {
    println!("volume   {}", info.meta.name);
    println!("kind     {}", info.meta.kind);
    println!("path     {}", info.data_dir.display());
    println!("created  {}", info.meta.created);
    println!("quota    {}", human(info.meta.quota_bytes));
    for (k, v) in &info.meta.labels {
        println!("label    {k}={v}");
    }
    if let Some(u) = &info.usage {
        println!(
            "used     {} ({:.1} %), {} files, {} directories, {} symlinks",
            human(u.tally.bytes),
            u.percent,
            u.tally.files,
            u.tally.dirs,
            u.tally.symlinks
        );
        println!(
            "snaps    {} (not counted in the quota)",
            human(u.snapshot_bytes)
        );
        if let Some(f) = &info.forecast {
            println!("forecast {} (trend of the last 7 days)", f.describe());
        }
        println!(
            "fs       {} free of {}, {} inodes free{}",
            human(u.fs.free_bytes),
            human(u.fs.total_bytes),
            u.fs.free_inodes,
            if u.fs.read_only { ", READ-ONLY" } else { "" }
        );
    }
    if info.usage.is_none() {
        println!("used     - (not measured)");
    }
    if let Some(h) = &info.health {
        if h.healthy() {
            println!("health   ok (writable, metadata consistent)");
        } else {
            for p in &h.problems {
                println!("health   {p}");
            }
        }
    }
}
