//! The volume actor: the named volumes under `volumes.root` — their quotas, usage and
//! thresholds, health, integrity manifests, and their data as tar streams for backups.
//!
//! A volume is a directory `root/{name}` (or, after a migration, the path its metadata names)
//! with its metadata beside it in `root/{name}.volume.json`, its integrity manifest in
//! `root/{name}.manifest.json` and a lock file `root/.{name}.lock`. Quotas are advisory on a
//! plain filesystem (nothing stops a database server from writing past one): they are
//! measured, warned about, and enforced on the daemon's own writes (`WriteFile`, `Import`).
//!
//! Every filesystem operation runs on a blocking thread, never on the actor's event loop, so a
//! walk over 100,000 files does not hold up other messages. Usage is cached for
//! `volumes.usage_max_age` and adjusted by the actor's own writes, so a large volume is not
//! re-walked on every probe. Operations that must not overlap on one volume (migrate, import,
//! delete, verify --update) take the volume's lock file, shared with the CLI.
//!
//! Files: [`fsops`] (paths that cannot escape, atomic writes, statvfs, walks, the lock),
//! [`integrity`] (manifests), [`archive`] (tar streams).

pub mod archive;
pub mod fsops;
pub mod integrity;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{ByteSize, VolumesConfig};
use crate::events::{
    self, VolumeCreated, VolumeDeleted, VolumeMigrated, VolumeThresholdCleared,
    VolumeThresholdCrossed,
};
use fsops::{FsStats, Tally};
pub use integrity::VerifyReport;

/// The volumes every Lucid node has.
pub const DEFAULT_VOLUMES: [&str; 9] = [
    "mongodb",
    "redis",
    "elasticsearch",
    "sessions",
    "chunks",
    "merkle",
    "blocks",
    "logs",
    "backups",
];

/// No quota may exceed this (the seed's maximum volume size).
pub const HARD_MAX_QUOTA: u64 = 100 << 30;

// ---------------------------------------------------------------------------------------------
// Names

/// A volume name: 1–63 of `a-z 0-9 - _`, so never a path, never `..`, never hidden.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeName(String);

impl VolumeName {
    pub fn new(name: &str) -> Result<VolumeName, VolumeError> {
        let bad = |reason: &str| VolumeError::InvalidName {
            name: name.escape_debug().to_string(),
            reason: reason.to_owned(),
        };
        if name.is_empty() || name.len() > 63 {
            return Err(bad("must be 1 to 63 characters"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "only a-z, 0-9, '-' and '_' (no '/', '.', upper case or NUL)",
            ));
        }
        Ok(VolumeName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VolumeName {
    type Error = VolumeError;
    fn try_from(s: String) -> Result<Self, VolumeError> {
        VolumeName::new(&s)
    }
}

impl From<VolumeName> for String {
    fn from(n: VolumeName) -> String {
        n.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Everything a volume operation can answer instead of a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("no volume {volume}")]
    NotFound { volume: String },
    #[error("volume {volume} exists already")]
    Exists { volume: String },
    #[error("volume {volume} is not empty (use force)")]
    NotEmpty { volume: String },
    #[error("volume {volume} is over its quota: {used} of {quota} bytes used, {needed} more asked")]
    OverQuota {
        volume: String,
        used: u64,
        quota: u64,
        needed: u64,
    },
    #[error("a quota of {quota} bytes for {volume} is below its current use ({used} bytes)")]
    QuotaBelowUsage {
        volume: String,
        quota: u64,
        used: u64,
    },
    #[error("path {path:?} refused: {reason}")]
    PathEscape { path: String, reason: String },
    #[error("volume {volume} is busy ({operation} in progress)")]
    Busy {
        volume: String,
        operation: &'static str,
    },
    #[error("the data root {path} is unusable: {reason}")]
    Root { path: String, reason: String },
    #[error("{op} {path}: {message}")]
    Io {
        op: &'static str,
        path: String,
        message: String,
    },
    #[error("interrupted: {what}")]
    Interrupted { what: String },
    #[error("stream idle for {} ms: {what}", .after.as_millis())]
    StreamIdle { what: &'static str, after: Duration },
    #[error("the volume actor did not take the request: {reason}")]
    NotDelivered { reason: &'static str },
}

impl VolumeError {
    /// Low-cardinality code for logs, events and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            VolumeError::InvalidName { .. } => "invalid_name",
            VolumeError::Invalid { .. } => "invalid",
            VolumeError::NotFound { .. } => "not_found",
            VolumeError::Exists { .. } => "exists",
            VolumeError::NotEmpty { .. } => "not_empty",
            VolumeError::OverQuota { .. } => "over_quota",
            VolumeError::QuotaBelowUsage { .. } => "quota_below_usage",
            VolumeError::PathEscape { .. } => "path_escape",
            VolumeError::Busy { .. } => "busy",
            VolumeError::Root { .. } => "root_unavailable",
            VolumeError::Io { .. } => "io",
            VolumeError::Interrupted { .. } => "interrupted",
            VolumeError::StreamIdle { .. } => "stream_idle",
            VolumeError::NotDelivered { .. } => "not_delivered",
        }
    }

    pub(crate) fn io(op: &'static str, path: &Path, e: &std::io::Error) -> Self {
        VolumeError::Io {
            op,
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data

/// What is stored beside each volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMeta {
    pub name: VolumeName,
    /// What the volume holds (`mongodb`, `chunks`, …; free text for extra volumes).
    pub kind: String,
    pub quota_bytes: u64,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the data lives when not at `root/{name}` (after a migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// A volume's measured usage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(flatten)]
    pub tally: Tally,
    pub quota_bytes: u64,
    /// `tally.bytes` as a percentage of the quota.
    pub percent: f64,
    pub fs: FsStats,
    /// How long ago it was measured, when it is reported.
    pub age_ms: u64,
}

/// A volume's health right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeHealth {
    pub exists: bool,
    /// A probe file was written, fsynced and removed.
    pub writable: bool,
    pub read_only_fs: bool,
    pub free_bytes: u64,
    pub free_inodes: u64,
    pub metadata_ok: bool,
    /// Everything that is wrong, in words; empty when healthy.
    pub problems: Vec<String>,
}

impl VolumeHealth {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A volume as `ls` and `inspect` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeInfo {
    #[serde(flatten)]
    pub meta: VolumeMeta,
    /// Where its data is.
    pub data_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<VolumeHealth>,
}

/// What a cleanup removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    pub removed_files: u64,
    pub removed_bytes: u64,
    /// Leftovers of interrupted imports and migrations beside the volume.
    pub removed_leftovers: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub stream_bytes: u64,
    pub usage: Tally,
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Every volume, with its usage if measured within `volumes.usage_max_age` (no walking).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<VolumeInfo>, VolumeError>")]
pub struct ListVolumes;

/// One volume with fresh-enough usage and its health.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VolumeInfo, VolumeError>")]
pub struct InspectVolume {
    pub name: VolumeName,
}

/// Creates a volume (quota `None`: `volumes.default_quota`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VolumeInfo, VolumeError>")]
pub struct CreateVolume {
    pub name: VolumeName,
    pub quota: Option<ByteSize>,
    pub kind: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Deletes a volume and its data; refused for a non-empty volume unless `force`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), VolumeError>")]
pub struct DeleteVolume {
    pub name: VolumeName,
    pub force: bool,
}

/// Sets a volume's quota: at most `volumes.max_quota`, never below its current use.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VolumeInfo, VolumeError>")]
pub struct ResizeVolume {
    pub name: VolumeName,
    pub quota: ByteSize,
}

/// Walks the volume now and answers its usage (also checking its threshold).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Usage, VolumeError>")]
pub struct MeasureUsage {
    pub name: VolumeName,
}

/// Measures every volume whose usage is stale and checks its threshold; the scheduler's
/// usage tick. Answers the volumes above their warning threshold.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<VolumeName>, VolumeError>")]
pub struct CheckThresholds;

/// Probes a volume's health (a real write, fsync and delete).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VolumeHealth, VolumeError>")]
pub struct CheckHealth {
    pub name: VolumeName,
}

/// Compares a volume with its integrity manifest (built if there is none); `update` re-seals.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VerifyReport, VolumeError>")]
pub struct Verify {
    pub name: VolumeName,
    pub update: bool,
}

/// Streams a volume as tar, in chunks; the stream ends after the last chunk or with one `Err`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<mpsc::Receiver<Result<Vec<u8>, VolumeError>>, VolumeError>")]
pub struct ExportVolume {
    pub name: VolumeName,
}

/// Restores a tar stream into a volume (created if missing). A non-empty volume is refused
/// unless `force`; its content is replaced only once the whole stream is unpacked.
#[derive(Debug, Message)]
#[rtype(result = "Result<ImportReport, VolumeError>")]
pub struct ImportVolume {
    pub name: VolumeName,
    pub source: mpsc::Receiver<Vec<u8>>,
    pub force: bool,
}

/// Moves a volume's data to `to` (absolute, missing or empty): copy, verify, then switch the
/// metadata. An interruption before the switch leaves the original as it was.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VolumeInfo, VolumeError>")]
pub struct MigrateVolume {
    pub name: VolumeName,
    pub to: PathBuf,
}

/// Removes files matching `volumes.cleanup_patterns` older than `volumes.cleanup_age`, and
/// leftovers of interrupted imports and migrations.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<CleanupReport, VolumeError>")]
pub struct CleanupVolume {
    pub name: VolumeName,
}

/// Writes a file inside a volume (atomically), refused when the volume is over its quota or
/// the path would leave the volume. The daemon's own writes go through here.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), VolumeError>")]
pub struct WriteFile {
    pub name: VolumeName,
    /// Relative to the volume, `/`-separated.
    pub path: String,
    pub data: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------
// Thresholds (pure)

/// A threshold change for one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdChange {
    Crossed,
    Cleared,
}

/// Whether usage at `percent` changes a volume's warning state: crossing up at `warn`, and
/// clearing only below `clear` (< `warn`), so usage hovering at the line raises one event, not
/// a flood.
pub fn threshold_step(above: bool, percent: f64, warn: u8, clear: u8) -> Option<ThresholdChange> {
    if !above && percent >= f64::from(warn) {
        Some(ThresholdChange::Crossed)
    } else if above && percent < f64::from(clear) {
        Some(ThresholdChange::Cleared)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// State

/// Settings fixed at start.
#[derive(Debug, Clone)]
struct Settings {
    root: PathBuf,
    defaults: Vec<VolumeName>,
    default_quota: u64,
    max_quota: u64,
    warn: u8,
    clear: u8,
    usage_max_age: Duration,
    cleanup_patterns: Vec<String>,
    cleanup_age: Duration,
    stream_idle: Duration,
}

/// See the module doc.
pub struct VolumeActor {
    settings: Arc<Settings>,
    /// Why the data root is unusable, if it is.
    root_error: Option<String>,
    volumes: BTreeMap<VolumeName, VolumeMeta>,
    usage: HashMap<VolumeName, (Usage, Instant)>,
    /// Volumes above their warning threshold.
    above: BTreeSet<VolumeName>,
    mailbox_capacity: usize,
}

/// What callers hold.
#[derive(Clone)]
pub struct VolumeHandle {
    addr: Addr<VolumeActor>,
}

impl VolumeHandle {
    pub fn addr(&self) -> &Addr<VolumeActor> {
        &self.addr
    }

    /// Sends a message and waits for its answer (volume operations can be long: an export, a
    /// migration; each keeps its own progress bound, the idle timeout).
    pub async fn call<M, T>(&self, msg: M) -> Result<T, VolumeError>
    where
        M: Message<Result = Result<T, VolumeError>> + Send + 'static,
        T: Send + 'static,
        VolumeActor: Handler<M>,
    {
        match self.addr.send(msg).await {
            Ok(res) => res,
            Err(_) => Err(VolumeError::NotDelivered {
                reason: "the volume actor has stopped",
            }),
        }
    }
}

/// Checks that the data root exists and is a writable directory (a probe file); the daemon
/// refuses to start otherwise (exit 78).
pub fn check_root(root: &Path) -> Result<(), VolumeError> {
    let err = |reason: String| VolumeError::Root {
        path: root.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(root).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".to_owned()));
    }
    let probe = root.join(format!(".lucid-probe-{:016x}", rand::random::<u64>()));
    fsops::write_atomic(&probe, b"probe").map_err(|e| err(format!("not writable ({e})")))?;
    std::fs::remove_file(&probe).map_err(|e| err(format!("cannot remove a probe file: {e}")))
}

impl VolumeActor {
    /// Starts the actor on the current arbiter. It loads the volumes found under the root and
    /// creates missing default and extra ones before it takes any message.
    pub fn start_with(
        cfg: &VolumesConfig,
        stream_idle: Duration,
        mailbox_capacity: usize,
    ) -> VolumeHandle {
        let mut defaults: Vec<VolumeName> = DEFAULT_VOLUMES
            .iter()
            .filter_map(|n| VolumeName::new(n).ok())
            .collect();
        defaults.extend(cfg.extra.iter().filter_map(|n| VolumeName::new(n).ok()));
        let actor = VolumeActor {
            settings: Arc::new(Settings {
                root: cfg.root.clone(),
                defaults,
                default_quota: cfg.default_quota.0,
                max_quota: cfg.max_quota.0,
                warn: cfg.warn_percent,
                clear: cfg.clear_percent,
                usage_max_age: cfg.usage_max_age,
                cleanup_patterns: cfg.cleanup_patterns.clone(),
                cleanup_age: cfg.cleanup_age,
                stream_idle,
            }),
            root_error: None,
            volumes: BTreeMap::new(),
            usage: HashMap::new(),
            above: BTreeSet::new(),
            mailbox_capacity,
        };
        VolumeHandle {
            addr: actor.start(),
        }
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings.clone()
    }

    fn meta(&self, name: &VolumeName) -> Result<VolumeMeta, VolumeError> {
        if let Some(reason) = &self.root_error {
            return Err(VolumeError::Root {
                path: self.settings.root.display().to_string(),
                reason: reason.clone(),
            });
        }
        self.volumes
            .get(name)
            .cloned()
            .ok_or_else(|| VolumeError::NotFound {
                volume: name.to_string(),
            })
    }

    fn fresh_usage(&self, name: &VolumeName) -> Option<Usage> {
        let (usage, at) = self.usage.get(name)?;
        let age = at.elapsed();
        (age <= self.settings.usage_max_age).then_some(Usage {
            age_ms: age.as_millis() as u64,
            ..*usage
        })
    }

    /// Records a measurement and emits the threshold events it implies.
    fn record_usage(&mut self, name: &VolumeName, usage: Usage) {
        let above = self.above.contains(name);
        match threshold_step(
            above,
            usage.percent,
            self.settings.warn,
            self.settings.clear,
        ) {
            Some(ThresholdChange::Crossed) => {
                self.above.insert(name.clone());
                events::emit(VolumeThresholdCrossed {
                    volume: name.to_string(),
                    percent: usage.percent.round() as u64,
                    warn_percent: u64::from(self.settings.warn),
                });
            }
            Some(ThresholdChange::Cleared) => {
                self.above.remove(name);
                events::emit(VolumeThresholdCleared {
                    volume: name.to_string(),
                    percent: usage.percent.round() as u64,
                });
            }
            None => {}
        }
        self.usage.insert(name.clone(), (usage, Instant::now()));
    }

    fn info(&self, meta: VolumeMeta) -> VolumeInfo {
        VolumeInfo {
            data_dir: data_dir(&self.settings.root, &meta),
            usage: self.fresh_usage(&meta.name),
            health: None,
            meta,
        }
    }
}

impl Actor for VolumeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        let settings = self.settings();
        // No message is handled before the volumes are loaded.
        ctx.wait(
            blocking(move || load(&settings))
                .into_actor(self)
                .map(|res, act, _| match res {
                    Ok(volumes) => act.volumes = volumes,
                    // The daemon checks the root before it starts (exit 78); an embedding
                    // sibling gets `Root` errors from every call instead.
                    Err(e) => {
                        tracing::warn!(root = %act.settings.root.display(), error = %e, "volume root unusable");
                        act.root_error = Some(match e {
                            VolumeError::Root { reason, .. } => reason,
                            other => other.to_string(),
                        });
                    }
                }),
        );
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, VolumeError>
where
    F: FnOnce() -> Result<T, VolumeError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VolumeError::Interrupted {
            what: format!("blocking task failed: {e}"),
        })?
}

fn data_dir(root: &Path, meta: &VolumeMeta) -> PathBuf {
    meta.path
        .clone()
        .unwrap_or_else(|| root.join(meta.name.as_str()))
}

fn meta_path(root: &Path, name: &VolumeName) -> PathBuf {
    root.join(format!("{name}.volume.json"))
}

fn manifest_path(root: &Path, name: &VolumeName) -> PathBuf {
    root.join(format!("{name}.manifest.json"))
}

fn lock_path(root: &Path, name: &VolumeName) -> PathBuf {
    root.join(format!(".{name}.lock"))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Loads every `*.volume.json` under the root and creates the default volumes that are missing.
fn load(s: &Settings) -> Result<BTreeMap<VolumeName, VolumeMeta>, VolumeError> {
    check_root(&s.root)?;
    let mut volumes = BTreeMap::new();
    let entries =
        std::fs::read_dir(&s.root).map_err(|e| VolumeError::io("read_dir", &s.root, &e))?;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".volume.json") else {
            continue;
        };
        let Ok(name) = VolumeName::new(name) else {
            continue;
        };
        match read_meta(&entry.path()) {
            Ok(meta) if meta.name == name => {
                volumes.insert(name, meta);
            }
            Ok(_) | Err(_) => {
                tracing::warn!(file = %entry.path().display(), "volume metadata unreadable or not matching its name; skipped")
            }
        }
    }
    for name in &s.defaults {
        if !volumes.contains_key(name) {
            let meta = create(s, name, s.default_quota, name.to_string(), BTreeMap::new())?;
            volumes.insert(name.clone(), meta);
        }
    }
    Ok(volumes)
}

fn read_meta(path: &Path) -> Result<VolumeMeta, VolumeError> {
    let bytes = std::fs::read(path).map_err(|e| VolumeError::io("read", path, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| VolumeError::Io {
        op: "parse",
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn write_meta(root: &Path, meta: &VolumeMeta) -> Result<(), VolumeError> {
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| VolumeError::Io {
        op: "encode",
        path: meta_path(root, &meta.name).display().to_string(),
        message: e.to_string(),
    })?;
    fsops::write_atomic(&meta_path(root, &meta.name), &bytes)
}

fn create(
    s: &Settings,
    name: &VolumeName,
    quota: u64,
    kind: String,
    labels: BTreeMap<String, String>,
) -> Result<VolumeMeta, VolumeError> {
    let dir = s.root.join(name.as_str());
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(VolumeError::io("mkdir", &dir, &e)),
    }
    let meta = VolumeMeta {
        name: name.clone(),
        kind,
        quota_bytes: quota,
        created: now_rfc3339(),
        labels,
        path: None,
    };
    write_meta(&s.root, &meta)?;
    Ok(meta)
}

fn measure(s: &Settings, meta: &VolumeMeta) -> Result<Usage, VolumeError> {
    let dir = data_dir(&s.root, meta);
    let tally = fsops::tally(&dir)?;
    let fs = fsops::statvfs(&dir)?;
    Ok(Usage {
        percent: if meta.quota_bytes == 0 {
            100.0
        } else {
            tally.bytes as f64 * 100.0 / meta.quota_bytes as f64
        },
        quota_bytes: meta.quota_bytes,
        tally,
        fs,
        age_ms: 0,
    })
}

fn health(s: &Settings, meta: &VolumeMeta) -> VolumeHealth {
    let dir = data_dir(&s.root, meta);
    let mut h = VolumeHealth {
        exists: dir.is_dir(),
        ..VolumeHealth::default()
    };
    if !h.exists {
        h.problems.push(format!("{} does not exist", dir.display()));
        return h;
    }
    match fsops::statvfs(&dir) {
        Ok(fs) => {
            h.read_only_fs = fs.read_only;
            h.free_bytes = fs.free_bytes;
            h.free_inodes = fs.free_inodes;
            if fs.read_only {
                h.problems
                    .push("the filesystem is mounted read-only".to_owned());
            }
            if fs.free_inodes == 0 && fs.total_inodes > 0 {
                h.problems.push("no free inodes".to_owned());
            }
        }
        Err(e) => h.problems.push(e.to_string()),
    }
    let probe = dir.join(format!(".lucid-probe-{:016x}", rand::random::<u64>()));
    match fsops::write_atomic(&probe, b"probe").and_then(|()| {
        std::fs::remove_file(&probe).map_err(|e| VolumeError::io("remove", &probe, &e))
    }) {
        Ok(()) => h.writable = true,
        Err(e) => h.problems.push(format!("not writable: {e}")),
    }
    match read_meta(&meta_path(&s.root, &meta.name)) {
        Ok(stored) if stored == *meta && meta.quota_bytes <= s.max_quota => h.metadata_ok = true,
        Ok(_) => h.problems.push(
            "metadata on disk differs from the loaded one, or its quota is above volumes.max_quota"
                .to_owned(),
        ),
        Err(e) => h.problems.push(format!("metadata: {e}")),
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Handlers

impl Handler<crate::supervisor::Heartbeat> for VolumeActor {
    type Result = ();

    fn handle(&mut self, _: crate::supervisor::Heartbeat, _: &mut Context<Self>) {}
}

impl Handler<crate::supervisor::Shutdown> for VolumeActor {
    type Result = ();

    /// Work already on blocking threads finishes there; its answer has nobody to go to.
    fn handle(&mut self, _: crate::supervisor::Shutdown, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

type Reply<T> = ResponseActFuture<VolumeActor, Result<T, VolumeError>>;

fn ready<T: 'static>(r: Result<T, VolumeError>) -> Reply<T> {
    Box::pin(actix::fut::ready(r))
}

impl Handler<ListVolumes> for VolumeActor {
    type Result = Result<Vec<VolumeInfo>, VolumeError>;

    fn handle(&mut self, _: ListVolumes, _: &mut Context<Self>) -> Self::Result {
        if let Some(reason) = &self.root_error {
            return Err(VolumeError::Root {
                path: self.settings.root.display().to_string(),
                reason: reason.clone(),
            });
        }
        Ok(self
            .volumes
            .values()
            .cloned()
            .map(|m| self.info(m))
            .collect())
    }
}

impl Handler<InspectVolume> for VolumeActor {
    type Result = Reply<VolumeInfo>;

    fn handle(&mut self, msg: InspectVolume, _: &mut Context<Self>) -> Self::Result {
        let meta = match self.meta(&msg.name) {
            Ok(meta) => meta,
            Err(e) => return ready(Err(e)),
        };
        let s = self.settings();
        let cached = self.fresh_usage(&msg.name);
        let work_meta = meta.clone();
        let work = blocking(move || {
            let usage = match cached {
                Some(usage) => (usage, false),
                None => (measure(&s, &work_meta)?, true),
            };
            Ok((usage, health(&s, &work_meta)))
        });
        Box::pin(work.into_actor(self).map(move |res, act, _| {
            let ((usage, measured), health) = res?;
            if measured {
                act.record_usage(&meta.name, usage);
            }
            let mut info = act.info(meta);
            info.usage = Some(usage);
            info.health = Some(health);
            Ok(info)
        }))
    }
}

impl Handler<CreateVolume> for VolumeActor {
    type Result = Reply<VolumeInfo>;

    fn handle(&mut self, msg: CreateVolume, _: &mut Context<Self>) -> Self::Result {
        if let Some(reason) = &self.root_error {
            return ready(Err(VolumeError::Root {
                path: self.settings.root.display().to_string(),
                reason: reason.clone(),
            }));
        }
        if self.volumes.contains_key(&msg.name) {
            return ready(Err(VolumeError::Exists {
                volume: msg.name.to_string(),
            }));
        }
        let quota = msg.quota.map_or(self.settings.default_quota, |q| q.0);
        if quota == 0 || quota > self.settings.max_quota {
            return ready(Err(VolumeError::Invalid {
                field: "quota",
                reason: format!(
                    "must be between 1 byte and volumes.max_quota ({})",
                    ByteSize(self.settings.max_quota)
                ),
            }));
        }
        let s = self.settings();
        let name = msg.name.clone();
        let kind = msg.kind.unwrap_or_else(|| "data".to_owned());
        let work = blocking(move || create(&s, &name, quota, kind, msg.labels));
        Box::pin(work.into_actor(self).map(|res, act, _| {
            let meta = res?;
            events::emit(VolumeCreated {
                volume: meta.name.to_string(),
                quota_bytes: meta.quota_bytes,
            });
            act.volumes.insert(meta.name.clone(), meta.clone());
            Ok(act.info(meta))
        }))
    }
}

impl Handler<DeleteVolume> for VolumeActor {
    type Result = Reply<()>;

    fn handle(&mut self, msg: DeleteVolume, _: &mut Context<Self>) -> Self::Result {
        let meta = match self.meta(&msg.name) {
            Ok(meta) => meta,
            Err(e) => return ready(Err(e)),
        };
        let s = self.settings();
        let work = blocking(move || {
            let _lock = fsops::lock(
                &lock_path(&s.root, &meta.name),
                meta.name.as_str(),
                "delete",
            )?;
            let dir = data_dir(&s.root, &meta);
            if !msg.force && !fsops::is_empty_dir(&dir)? {
                return Err(VolumeError::NotEmpty {
                    volume: meta.name.to_string(),
                });
            }
            // Metadata first: a crash half-way leaves data without metadata (found by cleanup),
            // never metadata pointing at half-deleted data.
            let remove = |p: &Path| match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(VolumeError::io("remove", p, &e))
                }
                _ => Ok(()),
            };
            remove(&meta_path(&s.root, &meta.name))?;
            remove(&manifest_path(&s.root, &meta.name))?;
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(VolumeError::io("remove", &dir, &e))
                }
                _ => Ok(()),
            }
        });
        let name = msg.name;
        Box::pin(work.into_actor(self).map(move |res, act, _| {
            res?;
            act.volumes.remove(&name);
            act.usage.remove(&name);
            act.above.remove(&name);
            events::emit(VolumeDeleted {
                volume: name.to_string(),
            });
            Ok(())
        }))
    }
}

impl Handler<ResizeVolume> for VolumeActor {
    type Result = Reply<VolumeInfo>;

    fn handle(&mut self, msg: ResizeVolume, _: &mut Context<Self>) -> Self::Result {
        let mut meta = match self.meta(&msg.name) {
            Ok(meta) => meta,
            Err(e) => return ready(Err(e)),
        };
        let quota = msg.quota.0;
        if quota == 0 || quota > self.settings.max_quota {
            return ready(Err(VolumeError::Invalid {
                field: "quota",
                reason: format!(
                    "must be between 1 byte and volumes.max_quota ({})",
                    ByteSize(self.settings.max_quota)
                ),
            }));
        }
        let s = self.settings();
        let work = blocking(move || {
            // Always measured: a stale figure could let the quota drop below real use.
            let usage = measure(&s, &meta)?;
            if quota < usage.tally.bytes {
                return Err(VolumeError::QuotaBelowUsage {
                    volume: meta.name.to_string(),
                    quota,
                    used: usage.tally.bytes,
                });
            }
            meta.quota_bytes = quota;
            write_meta(&s.root, &meta)?;
            Ok((meta, usage))
        });
        Box::pin(work.into_actor(self).map(|res, act, _| {
            let (meta, usage) = res?;
            act.volumes.insert(meta.name.clone(), meta.clone());
            let usage = Usage {
                quota_bytes: meta.quota_bytes,
                percent: usage.tally.bytes as f64 * 100.0 / meta.quota_bytes as f64,
                ..usage
            };
            act.record_usage(&meta.name, usage);
            Ok(act.info(meta))
        }))
    }
}

impl Handler<MeasureUsage> for VolumeActor {
    type Result = Reply<Usage>;

    fn handle(&mut self, msg: MeasureUsage, _: &mut Context<Self>) -> Self::Result {
        let meta = match self.meta(&msg.name) {
            Ok(meta) => meta,
            Err(e) => return ready(Err(e)),
        };
        let s = self.settings();
        Box::pin(
            blocking(move || measure(&s, &meta))
                .into_actor(self)
                .map(move |res, act, _| {
                    let usage = res?;
                    act.record_usage(&msg.name, usage);
                    Ok(usage)
                }),
        )
    }
}

impl Handler<CheckThresholds> for VolumeActor {
    type Result = Reply<Vec<VolumeName>>;

    fn handle(&mut self, _: CheckThresholds, _: &mut Context<Self>) -> Self::Result {
        let stale: Vec<VolumeMeta> = self
            .volumes
            .values()
            .filter(|m| self.fresh_usage(&m.name).is_none())
            .cloned()
            .collect();
        let s = self.settings();
        let work = blocking(move || {
            Ok(stale
                .into_iter()
                .map(|m| (m.name.clone(), measure(&s, &m)))
                .collect::<Vec<_>>())
        });
        Box::pin(work.into_actor(self).map(|res, act, _| {
            for (name, usage) in res? {
                match usage {
                    Ok(usage) => act.record_usage(&name, usage),
                    Err(e) => tracing::warn!(volume = %name, error = %e, "cannot measure volume"),
                }
            }
            Ok(act.above.iter().cloned().collect())
        }))
    }
}

impl Handler<CheckHealth> for VolumeActor {
    type Result = Reply<VolumeHealth>;

    fn handle(&mut self, msg: CheckHealth, _: &mut Context<Self>) -> Self::Result {
        let meta = match self.meta(&msg.name) {
            Ok(meta) => meta,
            Err(e) => return ready(Err(e)),
        };
        let s = self.settings();
        Box::pin(blocking(move || Ok(health(&s, &meta))).into_actor(self))
    }
}

impl Handler<Verify> for VolumeActor {
    type Result = Reply<VerifyReport>;

    fn handle(&mut self, msg: Verify, _: &mut Context<Self>) -> Self::Result {
        let meta = match self.meta(&msg.name) {
            Ok(meta) => meta,
            Err(e) => return ready(Err(e)),
        };
        let s = self.settings();
        let work = blocking(move || {
            let manifest_file = manifest_path(&s.root, &meta.name);
            let now = integrity::build(&data_dir(&s.root, &meta))?;
            let seal = |m: &integrity::Manifest| -> Result<(), VolumeError> {
                let _lock = fsops::lock(
                    &lock_path(&s.root, &meta.name),
                    meta.name.as_str(),
                    "verify --update",
                )?;
                let bytes = serde_json::to_vec(m).map_err(|e| VolumeError::Io {
                    op: "encode",
                    path: manifest_file.display().to_string(),
                    message: e.to_string(),
                })?;
                fsops::write_atomic(&manifest_file, &bytes)
            };
            let sealed: Option<integrity::Manifest> = match std::fs::read(&manifest_file) {
                Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| VolumeError::Io {
                    op: "parse",
                    path: manifest_file.display().to_string(),
                    message: e.to_string(),
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(VolumeError::io("read", &manifest_file, &e)),
            };
            let Some(sealed) = sealed else {
                seal(&now)?;
                return Ok(VerifyReport {
                    volume: meta.name.to_string(),
                    sealed: true,
                    entries: now.entries.len() as u64,
                    ..VerifyReport::default()
                });
            };
            let mut report = integrity::compare(meta.name.as_str(), &sealed, &now);
            if msg.update && !report.clean() {
                seal(&now)?;
                report.updated = true;
            }
            Ok(report)
        });
        Box::pin(work.into_actor(self).map(|res, _, _| {
            let report = res?;
            if !report.clean() {
                events::emit(events::VolumeIntegrityMismatch {
                    volume: report.volume.clone(),
                    added: report.added.len() as u64,
                    missing: report.missing.len() as u64,
                    changed: report.changed.len() as u64,
                });
            }
            Ok(report)
        }))
    }
}

impl Handler<ExportVolume> for VolumeActor {
    type Result = Result<mpsc::Receiver<Result<Vec<u8>, VolumeError>>, VolumeError>;

    fn handle(&mut self, msg: ExportVolume, _: &mut Context<Self>) -> Self::Result {
        let meta = self.meta(&msg.name)?;
        let s = self.settings();
        let (tx, rx) = mpsc::channel(16);
        let runtime = tokio::runtime::Handle::current();
        let dir = data_dir(&s.root, &meta);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = archive::export(&dir, tx.clone(), s.stream_idle, runtime.clone()) {
                // The reader may be gone; then there is nobody to tell.
                let _ = runtime
                    .block_on(async { tokio::time::timeout(s.stream_idle, tx.send(Err(e))).await });
            }
        });
        Ok(rx)
    }
}

impl Handler<ImportVolume> for VolumeActor {
    type Result = Reply<ImportReport>;

    fn handle(&mut self, msg: ImportVolume, _: &mut Context<Self>) -> Self::Result {
        if let Some(reason) = &self.root_error {
            return ready(Err(VolumeError::Root {
                path: self.settings.root.display().to_string(),
                reason: reason.clone(),
            }));
        }
        let existing = self.volumes.get(&msg.name).cloned();
        let s = self.settings();
        let runtime = tokio::runtime::Handle::current();
        let name = msg.name.clone();
        let work = blocking(move || {
            let _lock = fsops::lock(&lock_path(&s.root, &name), name.as_str(), "import")?;
            let meta = match existing {
                Some(meta) => meta,
                None => create(
                    &s,
                    &name,
                    s.default_quota,
                    name.to_string(),
                    BTreeMap::new(),
                )?,
            };
            let dir = data_dir(&s.root, &meta);
            if !msg.force && !fsops::is_empty_dir(&dir)? {
                return Err(VolumeError::NotEmpty {
                    volume: name.to_string(),
                });
            }
            // Unpacked beside the volume (same filesystem), swapped in only when complete.
            let parent = dir.parent().unwrap_or(&s.root).to_path_buf();
            let staging = parent.join(format!(".{name}.import-{:016x}", rand::random::<u64>()));
            std::fs::create_dir(&staging).map_err(|e| VolumeError::io("mkdir", &staging, &e))?;
            let unpacked = archive::import(
                &staging,
                msg.source,
                meta.quota_bytes,
                s.stream_idle,
                runtime,
            )
            .and_then(|bytes| Ok((bytes, fsops::tally(&staging)?)));
            let (stream_bytes, usage) = match unpacked {
                Ok(done) => done,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staging);
                    return Err(e);
                }
            };
            let old = parent.join(format!(".{name}.replaced-{:016x}", rand::random::<u64>()));
            if dir.exists() {
                std::fs::rename(&dir, &old).map_err(|e| VolumeError::io("rename", &dir, &e))?;
            }
            std::fs::rename(&staging, &dir).map_err(|e| VolumeError::io("rename", &staging, &e))?;
            let _ = std::fs::remove_dir_all(&old);
            Ok((
                meta,
                ImportReport {
                    stream_bytes,
                    usage,
                },
            ))
        });
        Box::pin(work.into_actor(self).map(|res, act, _| {
            let (meta, report) = res?;
            act.usage.remove(&meta.name);
            act.volumes.insert(meta.name.clone(), meta);
            Ok(report)
        }))
    }
}

impl Handler<MigrateVolume> for VolumeActor {
    type Result = Reply<VolumeInfo>;

    fn handle(&mut self, msg: MigrateVolume, _: &mut Context<Self>) -> Self::Result {
        let meta = match self.meta(&msg.name) {
            Ok(meta) => meta,
            Err(e) => return ready(Err(e)),
        };
        if !msg.to.is_absolute() {
            return ready(Err(VolumeError::Invalid {
                field: "to",
                reason: "must be an absolute path".to_owned(),
            }));
        }
        let s = self.settings();
        let work = blocking(move || migrate(&s, meta, &msg.to));
        Box::pin(work.into_actor(self).map(|res, act, _| {
            let meta = res?;
            events::emit(VolumeMigrated {
                volume: meta.name.to_string(),
                to: meta
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            });
            act.usage.remove(&meta.name);
            act.volumes.insert(meta.name.clone(), meta.clone());
            Ok(act.info(meta))
        }))
    }
}

/// Copy, verify, switch: the original stays complete until the metadata names the copy.
fn migrate(s: &Settings, mut meta: VolumeMeta, to: &Path) -> Result<VolumeMeta, VolumeError> {
    let _lock = fsops::lock(
        &lock_path(&s.root, &meta.name),
        meta.name.as_str(),
        "migrate",
    )?;
    let from = data_dir(&s.root, &meta);
    if to == from || to.starts_with(&from) {
        return Err(VolumeError::Invalid {
            field: "to",
            reason: "must not be the volume itself or inside it".to_owned(),
        });
    }
    if !fsops::is_empty_dir(to)? {
        return Err(VolumeError::Invalid {
            field: "to",
            reason: format!("{} exists and is not empty", to.display()),
        });
    }
    fsops::copy_tree(&from, to)?;
    let (source, copy) = (integrity::build(&from)?, integrity::build(to)?);
    let report = integrity::compare(meta.name.as_str(), &source, &copy);
    if !report.clean() {
        return Err(VolumeError::Interrupted {
            what: format!(
                "the copy differs from the original ({} added, {} missing, {} changed); the original is unchanged",
                report.added.len(),
                report.missing.len(),
                report.changed.len()
            ),
        });
    }
    #[cfg(feature = "failpoints")]
    fail::fail_point!("volume-migrate-before-switch", |_| Err(
        VolumeError::Interrupted {
            what: "fail point volume-migrate-before-switch".to_owned(),
        }
    ));
    meta.path = Some(to.to_path_buf());
    write_meta(&s.root, &meta)?;
    // Switched. The old copy is renamed out of the way first (one step), then removed; if
    // that is interrupted, cleanup removes the leftover.
    let parent = from.parent().unwrap_or(&s.root).to_path_buf();
    let old = parent.join(format!(
        ".{}.migrated-{:016x}",
        meta.name,
        rand::random::<u64>()
    ));
    if std::fs::rename(&from, &old).is_ok() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(meta)
}

impl Handler<CleanupVolume> for VolumeActor {
    type Result = Reply<CleanupReport>;

    fn handle(&mut self, msg: CleanupVolume, _: &mut Context<Self>) -> Self::Result {
        let meta = match self.meta(&msg.name) {
            Ok(meta) => meta,
            Err(e) => return ready(Err(e)),
        };
        let s = self.settings();
        let name = msg.name.clone();
        Box::pin(
            blocking(move || cleanup(&s, &meta))
                .into_actor(self)
                .map(move |res, act, _| {
                    act.usage.remove(&name);
                    res
                }),
        )
    }
}

fn cleanup(s: &Settings, meta: &VolumeMeta) -> Result<CleanupReport, VolumeError> {
    let mut report = CleanupReport::default();
    let cutoff = SystemTime::now()
        .checked_sub(s.cleanup_age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let old_enough = |m: &std::fs::Metadata| m.modified().is_ok_and(|t| t <= cutoff);
    let dir = data_dir(&s.root, meta);
    for entry in walkdir::WalkDir::new(&dir).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| fsops::walk_error(&dir, e))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        if !s
            .cleanup_patterns
            .iter()
            .any(|p| fsops::name_matches(p, &name))
        {
            continue;
        }
        let m = entry.metadata().map_err(|e| fsops::walk_error(&dir, e))?;
        if old_enough(&m) {
            std::fs::remove_file(entry.path())
                .map_err(|e| VolumeError::io("remove", entry.path(), &e))?;
            report.removed_files += 1;
            report.removed_bytes += m.len();
        }
    }
    // Leftovers of interrupted imports and migrations of this volume, beside it.
    let parent = dir.parent().unwrap_or(&s.root).to_path_buf();
    let prefixes = [
        format!(".{}.import-", meta.name),
        format!(".{}.replaced-", meta.name),
        format!(".{}.migrated-", meta.name),
    ];
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if prefixes.iter().any(|p| name.starts_with(p.as_str()))
                && entry.metadata().is_ok_and(|m| old_enough(&m))
                && std::fs::remove_dir_all(entry.path()).is_ok()
            {
                report.removed_leftovers += 1;
            }
        }
    }
    Ok(report)
}

impl Handler<WriteFile> for VolumeActor {
    type Result = Reply<()>;

    fn handle(&mut self, msg: WriteFile, _: &mut Context<Self>) -> Self::Result {
        let meta = match self.meta(&msg.name) {
            Ok(meta) => meta,
            Err(e) => return ready(Err(e)),
        };
        let s = self.settings();
        let cached = self.fresh_usage(&msg.name);
        let needed = msg.data.len() as u64;
        let work = blocking(move || {
            let usage = match cached {
                Some(u) => u,
                None => measure(&s, &meta)?,
            };
            if usage.tally.bytes + needed > meta.quota_bytes {
                return Err(VolumeError::OverQuota {
                    volume: meta.name.to_string(),
                    used: usage.tally.bytes,
                    quota: meta.quota_bytes,
                    needed,
                });
            }
            let path = fsops::safe_join(&data_dir(&s.root, &meta), &msg.path, true)?;
            fsops::write_atomic(&path, &msg.data)?;
            Ok(usage)
        });
        let name = msg.name;
        Box::pin(work.into_actor(self).map(move |res, act, _| {
            let mut usage = res?;
            // Incremental: the walk is not repeated for the daemon's own writes.
            usage.tally.bytes += needed.div_ceil(4096) * 4096;
            usage.tally.apparent_bytes += needed;
            usage.tally.files += 1;
            usage.percent = usage.tally.bytes as f64 * 100.0 / usage.quota_bytes.max(1) as f64;
            act.record_usage(&name, usage);
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["mongodb", "chunks-2", "a_b", "x", &"a".repeat(63)] {
            assert!(VolumeName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "/abs",
            "Upper",
            "a\0b",
            "dot.name",
            ".hidden",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(VolumeName::new(bad), Err(VolumeError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn thresholds_cross_once_and_clear_with_hysteresis() {
        use ThresholdChange::*;
        let series = [50.0, 79.9, 80.0, 85.0, 79.0, 76.0, 80.5, 74.9, 74.0, 81.0];
        let mut above = false;
        let mut changes = Vec::new();
        for p in series {
            if let Some(c) = threshold_step(above, p, 80, 75) {
                above = c == Crossed;
                changes.push((p, c));
            }
        }
        assert_eq!(changes, [(80.0, Crossed), (74.9, Cleared), (81.0, Crossed)]);
    }
}
