//! The volume actor: the named volumes under `volumes.root` — their quotas, usage and
//! thresholds, health, integrity manifests, and their data as tar streams for backups.
//!
//! A volume is a directory `root/{name}` (or, after a migration, the path its metadata names)
//! with its metadata beside it in `root/{name}.volume.json`, its integrity manifest in
//! `root/{name}.manifest.json` and a lock file `root/.{name}.lock`. Quotas are advisory on a
//! plain filesystem (nothing stops a database server from writing past one): they are
//! measured, warned about, and enforced on the daemon's own writes (`WriteFile`, `Import`).
//!
//! The files on disk are the truth: every operation re-reads the volume's metadata under the
//! volume's lock file (exclusive to replace or move data, shared to read it or add to it), so
//! the CLI and the daemon never act on each other's stale view. A volume's directory must be
//! a real directory, never a symlink, and a migration target never lies inside the data root
//! or another volume.
//!
//! Every filesystem operation runs on a blocking thread, never on the actor's event loop, so a
//! walk over 100,000 files does not hold up other messages. Usage is cached for
//! `volumes.usage_max_age` and adjusted by the actor's own writes, so a large volume is not
//! re-walked on every probe.
//!
//! Files: [`fsops`] (paths that cannot escape, atomic writes, statvfs, walks, the lock),
//! [`integrity`] (manifests), [`archive`] (tar streams).

pub mod archive;
pub mod fsops;
pub mod integrity;
pub mod maintain;
pub mod reserve;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::prelude::*;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{ByteSize, ConfigError, SupervisorConfig, VolumesConfig};
use crate::events::{
    self, VolumeCreated, VolumeDeleted, VolumeMigrated, VolumeThresholdCleared,
    VolumeThresholdCrossed,
};
use crate::supervisor::feed::{Feed, feed};
use crate::threads::ActorThread;
use crate::transfer::{self, Admission, Skip, Source, TargetState};
use fsops::{FsStats, Tally};
pub use integrity::VerifyReport;
pub use maintain::{Maintain, MaintenanceFailure, MaintenanceReport};
pub use reserve::{Reservation, ReserveQuota, ReservedWriter};

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
    /// Data that does not check out: a copy that differs from its original, a manifest that
    /// does not parse.
    #[error("{what}")]
    Corrupt { what: String },
    #[error("stream idle for {} ms: {what}", .after.as_millis())]
    StreamIdle { what: &'static str, after: Duration },
    /// The import's source failed mid-stream: the import is a failure, never a silently
    /// partial restore, and says how far it got (entries unpacked into the staging directory,
    /// which goes again: the volume is left as it was).
    #[error("the import source failed after {written} entries were unpacked: {reason}")]
    ImportSource { written: u64, reason: String },
    #[error("the volume actor did not take the request: {reason}")]
    NotDelivered { reason: &'static str },
    /// A short call ([`VolumeOp::LONG`] false) got no answer within `supervisor.call_deadline`:
    /// the actor's loop is wedged, or the work took longer. The operation may still finish.
    #[error("the volume actor did not answer within {}", humantime::format_duration(*.after))]
    DeadlineExceeded { after: Duration },
    /// A writer went past the bytes it reserved ([`ReserveQuota`]): it is stopped there, so
    /// no writer can take more of a quota than it was promised.
    #[error(
        "a writer on volume {volume} went past its reservation: {reserved} bytes reserved, \
         {wanted} needed"
    )]
    OverReservation {
        volume: String,
        reserved: u64,
        wanted: u64,
    },
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
            VolumeError::Corrupt { .. } => "corrupt",
            VolumeError::StreamIdle { .. } => "stream_idle",
            VolumeError::ImportSource { .. } => "import_source_failed",
            VolumeError::NotDelivered { .. } => "not_delivered",
            VolumeError::DeadlineExceeded { .. } => "deadline_exceeded",
            VolumeError::OverReservation { .. } => "over_reservation",
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

/// An import's target (the volume, created when missing) and rule (see [`ImportVolume`]).
pub type ImportOptions = transfer::ImportOptions<VolumeName>;

/// What only a volume import reports, beside the shared counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportDetails {
    /// Bytes of tar read.
    pub stream_bytes: u64,
    /// The volume's content after the import.
    pub usage: Tally,
}

/// What an import did: tar entries read, unpacked (`written`), and skipped as `unsafe_path`
/// (a name that would leave the volume).
pub type ImportSummary = transfer::ImportSummary<ImportDetails>;

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

/// Streams a volume as tar, in chunks: a feed that ends after the last chunk or with one `Err`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Feed<Vec<u8>, VolumeError>, VolumeError>")]
pub struct ExportVolume {
    pub name: VolumeName,
}

/// Restores a tar stream into a volume (created if missing), under the one import contract
/// of every store ([`crate::transfer`]). A volume that holds files is refused unless the
/// import replaces it; an empty one counts as empty (every default volume starts so) unless
/// the options refuse any existing target. The content is replaced only once the whole stream
/// is unpacked, flushed to disk and found to end properly; the old manifest goes (the content
/// changed: verify seals a new one). An `Err` item from the source fails the import
/// ([`VolumeError::ImportSource`]) and leaves the volume as it was.
#[derive(Message)]
#[rtype(result = "Result<ImportSummary, VolumeError>")]
pub struct ImportVolume {
    pub options: ImportOptions,
    /// Chunks of tar, as [`ExportVolume`] produces them.
    pub source: Source<Vec<u8>>,
}

impl fmt::Debug for ImportVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportVolume")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Moves a volume's data to `to` (absolute, not existing yet, outside the data root and every
/// volume): copy, verify, flush, then switch the metadata. An interruption before the switch
/// leaves the original as it was (and the partial copy is removed). Stop the servers using the
/// volume first: what they write during the copy would stay behind.
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
// Config

/// The checks of `[volumes]` that need this module: each extra name is a [`VolumeName`], no
/// quota above [`HARD_MAX_QUOTA`], and cleanup patterns that cannot match every file. The
/// config module checks the rest of the section; `lucid_actors::load_config` runs both.
pub fn check_config(cfg: &VolumesConfig, errors: &mut Vec<ConfigError>) {
    for name in &cfg.extra {
        if let Err(e) = VolumeName::new(name) {
            errors.push(ConfigError::new("volumes.extra", e.to_string()));
        }
    }
    if cfg.max_quota > ByteSize(HARD_MAX_QUOTA) {
        errors.push(ConfigError::new(
            "volumes.max_quota",
            format!("must be at most {}", ByteSize(HARD_MAX_QUOTA)),
        ));
    }
    for pattern in &cfg.cleanup_patterns {
        if crate::glob::only_wildcards(pattern) || pattern.contains('/') {
            errors.push(ConfigError::new(
                "volumes.cleanup_patterns",
                format!(
                    "{pattern:?} must be a file-name pattern with at least one literal character, not a path"
                ),
            ));
        }
    }
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

/// A measured usage and what the actor's own writes have added since.
#[derive(Debug, Clone, Copy)]
struct Measured {
    usage: Usage,
    /// When the volume was last walked (adjustments do not move this).
    walked_at: Instant,
}

/// See the module doc.
pub struct VolumeActor {
    settings: Arc<Settings>,
    /// Why the data root is unusable, if it is.
    root_error: Option<String>,
    volumes: BTreeMap<VolumeName, VolumeMeta>,
    usage: HashMap<VolumeName, Measured>,
    /// Bytes promised to writes in progress, so concurrent writes cannot all pass one quota.
    /// Bytes promised to writers in flight ([`WriteFile`], [`reserve::Reservation`]), shared
    /// so a reservation gives back what it did not use the moment it is dropped.
    reserved: reserve::Book,
    /// Names being created, so two creates of one name cannot both succeed.
    creating: BTreeSet<VolumeName>,
    /// Volumes above their warning threshold.
    above: BTreeSet<VolumeName>,
    mailbox_capacity: usize,
}

/// A volume message, and how long its caller waits for the answer.
pub trait VolumeOp: Message<Result = Result<Self::Output, VolumeError>> + Send + 'static {
    type Output: Send + 'static;

    /// A long operation moves, hashes or removes a volume's data (import, migrate, verify,
    /// cleanup, delete, a write, a walk of every volume): its caller waits as long as it
    /// makes progress, which each bounds with `supervisor.stream_idle_timeout` where it
    /// streams. Every other call is short and answers within `supervisor.call_deadline` —
    /// an export too, whose call answers the stream at once.
    const LONG: bool;
}

macro_rules! volume_ops {
    ($($msg:ty => $out:ty, $long:expr;)*) => {$(
        impl VolumeOp for $msg {
            type Output = $out;
            const LONG: bool = $long;
        }
    )*};
}

volume_ops! {
    ListVolumes => Vec<VolumeInfo>, false;
    InspectVolume => VolumeInfo, false;
    CreateVolume => VolumeInfo, false;
    ResizeVolume => VolumeInfo, false;
    CheckHealth => VolumeHealth, false;
    ExportVolume => Feed<Vec<u8>, VolumeError>, false;
    DeleteVolume => (), true;
    MeasureUsage => Usage, true;
    CheckThresholds => Vec<VolumeName>, true;
    Verify => VerifyReport, true;
    ImportVolume => ImportSummary, true;
    MigrateVolume => VolumeInfo, true;
    CleanupVolume => CleanupReport, true;
    WriteFile => (), true;
    ReserveQuota => Reservation, true;
}

/// What callers hold.
#[derive(Clone)]
pub struct VolumeHandle {
    addr: Addr<VolumeActor>,
    /// `supervisor.call_deadline`, for short calls.
    deadline: Duration,
}

impl VolumeHandle {
    pub fn addr(&self) -> &Addr<VolumeActor> {
        &self.addr
    }

    /// Sends a message and waits for its answer: a short call at most
    /// `supervisor.call_deadline` (then `deadline_exceeded`, so a wedged actor never hangs
    /// its caller), a long operation as long as it makes progress ([`VolumeOp::LONG`]).
    pub async fn call<M>(&self, msg: M) -> Result<M::Output, VolumeError>
    where
        M: VolumeOp,
        VolumeActor: Handler<M>,
    {
        let answer = if M::LONG {
            self.addr.send(msg).await
        } else {
            match self.addr.send(msg).timeout(self.deadline).await {
                Err(MailboxError::Timeout) => {
                    return Err(VolumeError::DeadlineExceeded {
                        after: self.deadline,
                    });
                }
                answer => answer,
            }
        };
        match answer {
            Ok(res) => res,
            Err(_) => Err(VolumeError::NotDelivered {
                reason: "the volume actor has stopped",
            }),
        }
    }

    /// Streams a volume as tar ([`ExportVolume`]).
    pub async fn export(
        &self,
        name: VolumeName,
    ) -> Result<Feed<Vec<u8>, VolumeError>, VolumeError> {
        self.call(ExportVolume { name }).await
    }

    /// Restores a tar stream into a volume ([`ImportVolume`]). `source` may be any stream of
    /// chunks — another volume's export too; one that yields nothing for
    /// `supervisor.stream_idle_timeout` fails the import, one that yields an `Err` fails it
    /// with the count unpacked.
    pub async fn import<S, E>(
        &self,
        options: ImportOptions,
        source: S,
    ) -> Result<ImportSummary, VolumeError>
    where
        S: Stream<Item = Result<Vec<u8>, E>> + Send + 'static,
        E: fmt::Display,
    {
        self.call(ImportVolume {
            options,
            source: transfer::source(source),
        })
        .await
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
    let probe = root.join(format!(
        "{}probe-{:016x}",
        fsops::TRANSIENT_PREFIX,
        rand::random::<u64>()
    ));
    fsops::write_atomic(&probe, b"probe", 0o600).map_err(|e| err(format!("not writable ({e})")))?;
    std::fs::remove_file(&probe).map_err(|e| err(format!("cannot remove a probe file: {e}")))
}

impl VolumeActor {
    /// Starts the actor on a thread of its own (`lucid-volume`, tied to the current arbiter:
    /// see `actors/threads.rs`; its filesystem work runs on that thread's blocking pool). It
    /// loads the volumes found under the root, finishes or undoes operations a crash
    /// interrupted, and creates missing default and extra volumes before it takes any message.
    pub fn start_with(cfg: &VolumesConfig, sup: &SupervisorConfig) -> VolumeHandle {
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
                stream_idle: sup.stream_idle_timeout,
            }),
            root_error: None,
            volumes: BTreeMap::new(),
            usage: HashMap::new(),
            reserved: reserve::Book::default(),
            creating: BTreeSet::new(),
            above: BTreeSet::new(),
            mailbox_capacity: sup.mailbox_capacity,
        };
        VolumeHandle {
            addr: ActorThread::start("lucid-volume").start_actor(move |_| actor),
            deadline: sup.call_deadline,
        }
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings.clone()
    }

    fn root_ok(&self) -> Result<(), VolumeError> {
        match &self.root_error {
            Some(reason) => Err(VolumeError::Root {
                path: self.settings.root.display().to_string(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn known(&self, name: &VolumeName) -> Result<(), VolumeError> {
        self.root_ok()?;
        if self.volumes.contains_key(name) {
            Ok(())
        } else {
            Err(VolumeError::NotFound {
                volume: name.to_string(),
            })
        }
    }

    fn check_quota(&self, quota: u64) -> Result<(), VolumeError> {
        if quota == 0 || quota > self.settings.max_quota {
            return Err(VolumeError::Invalid {
                field: "quota",
                reason: format!(
                    "must be between 1 byte and volumes.max_quota ({})",
                    ByteSize(self.settings.max_quota)
                ),
            });
        }
        Ok(())
    }

    /// Usage measured within `volumes.usage_max_age` (with the actor's own writes since).
    fn fresh_usage(&self, name: &VolumeName) -> Option<Usage> {
        let m = self.usage.get(name)?;
        let age = m.walked_at.elapsed();
        (age <= self.settings.usage_max_age).then_some(Usage {
            age_ms: age.as_millis() as u64,
            ..m.usage
        })
    }

    /// Records a walk's result and emits the threshold events it implies.
    fn record_walk(&mut self, name: &VolumeName, usage: Usage) {
        self.usage.insert(
            name.clone(),
            Measured {
                usage,
                walked_at: Instant::now(),
            },
        );
        self.check_threshold(name, usage.percent);
    }

    fn check_threshold(&mut self, name: &VolumeName, percent: f64) {
        let above = self.above.contains(name);
        match threshold_step(above, percent, self.settings.warn, self.settings.clear) {
            Some(ThresholdChange::Crossed) => {
                self.above.insert(name.clone());
                events::emit(VolumeThresholdCrossed {
                    volume: name.to_string(),
                    percent: percent.round() as u64,
                    warn_percent: u64::from(self.settings.warn),
                });
            }
            Some(ThresholdChange::Cleared) => {
                self.above.remove(name);
                events::emit(VolumeThresholdCleared {
                    volume: name.to_string(),
                    percent: percent.round() as u64,
                });
            }
            None => {}
        }
    }

    /// Adds the daemon's own writes to the measured usage. Incremental: the walk is not
    /// repeated for them, and the walk's time stays that of the walk, so outside changes are
    /// still picked up.
    fn add_usage(&mut self, name: &VolumeName, bytes: i64, apparent: i64, files: i64) {
        if let Some(m) = self.usage.get_mut(name) {
            let t = &mut m.usage.tally;
            t.bytes = t.bytes.saturating_add_signed(bytes);
            t.apparent_bytes = t.apparent_bytes.saturating_add_signed(apparent);
            t.files = t.files.saturating_add_signed(files);
            m.usage.percent = percent(t.bytes, m.usage.quota_bytes);
            let p = m.usage.percent;
            self.check_threshold(name, p);
        }
    }

    /// Takes in what a write's quota check ([`make_room`]) found on disk.
    fn take_in(&mut self, name: &VolumeName, found: Found) {
        self.remember(&found.meta);
        if found.walked {
            self.record_walk(name, found.usage);
        }
    }

    /// Keeps the map in step with what an operation found on disk.
    fn remember(&mut self, meta: &VolumeMeta) {
        if self.volumes.get(&meta.name) != Some(meta) {
            self.usage.remove(&meta.name);
        }
        self.volumes.insert(meta.name.clone(), meta.clone());
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
        ctx.wait(blocking(move || load(&settings)).into_actor(self).map(|res, act, _| match res {
            Ok(volumes) => act.volumes = volumes,
            // The daemon checks the root before it starts (exit 78); an embedding sibling gets
            // `Root` errors from every call instead.
            Err(e) => {
                tracing::warn!(root = %act.settings.root.display(), error = %e, "volume root unusable");
                act.root_error = Some(match e {
                    VolumeError::Root { reason, .. } => reason,
                    other => other.to_string(),
                });
            }
        }));
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

/// Beside the data directory (same filesystem, so a rename swaps it): staging, replaced,
/// migrated and deleted copies, named after the volume.
fn beside(root: &Path, meta: &VolumeMeta, what: &str) -> PathBuf {
    let dir = data_dir(root, meta);
    let parent = dir.parent().unwrap_or(root).to_path_buf();
    parent.join(format!(
        ".{}.{what}-{:016x}",
        meta.name,
        rand::random::<u64>()
    ))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn percent(bytes: u64, quota: u64) -> f64 {
    if quota == 0 {
        100.0
    } else {
        bytes as f64 * 100.0 / quota as f64
    }
}

/// The volume's metadata as on disk now, checked: the CLI and the daemon share these files.
fn fresh_meta(s: &Settings, name: &VolumeName) -> Result<VolumeMeta, VolumeError> {
    let meta = read_meta(&meta_path(&s.root, name)).map_err(|e| match e {
        VolumeError::Io { op: "read", .. } => VolumeError::NotFound {
            volume: name.to_string(),
        },
        other => other,
    })?;
    if meta.name != *name {
        return Err(VolumeError::Corrupt {
            what: format!(
                "{} names volume {}",
                meta_path(&s.root, name).display(),
                meta.name
            ),
        });
    }
    if let Some(path) = &meta.path
        && (!path.is_absolute() || path.parent().is_none())
    {
        return Err(VolumeError::Corrupt {
            what: format!(
                "volume {name}: path {} in its metadata is not a directory lucid-db could own",
                path.display()
            ),
        });
    }
    Ok(meta)
}

/// Loads every `*.volume.json` under the root, undoes or finishes what a crash interrupted,
/// and creates the default volumes that are missing.
fn load(s: &Settings) -> Result<BTreeMap<VolumeName, VolumeMeta>, VolumeError> {
    check_root(&s.root)?;
    let mut volumes = BTreeMap::new();
    let mut unreadable = BTreeSet::new();
    let entries =
        std::fs::read_dir(&s.root).map_err(|e| VolumeError::io("read_dir", &s.root, &e))?;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file
            .strip_suffix(".volume.json")
            .and_then(|n| VolumeName::new(n).ok())
        else {
            continue;
        };
        match fresh_meta(s, &name) {
            Ok(meta) => {
                recover(s, &meta);
                volumes.insert(name, meta);
            }
            // Never overwritten with a new default: its data may be elsewhere (a migration).
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), error = %e, "volume metadata unreadable; volume skipped");
                unreadable.insert(name);
            }
        }
    }
    for name in &s.defaults {
        if !volumes.contains_key(name) && !unreadable.contains(name) {
            let meta = create(
                s,
                name,
                s.default_quota,
                name.to_string(),
                BTreeMap::new(),
                true,
            )?;
            events::emit(VolumeCreated {
                volume: name.to_string(),
                quota_bytes: meta.quota_bytes,
            });
            volumes.insert(name.clone(), meta);
        }
    }
    Ok(volumes)
}

/// After a crash: an import that had moved the old data aside but not its replacement in gets
/// the old data back; half-done staging, deleted and migrated copies go.
fn recover(s: &Settings, meta: &VolumeMeta) {
    let dir = data_dir(&s.root, meta);
    let parent = dir.parent().unwrap_or(&s.root).to_path_buf();
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    let prefix = |what: &str| format!(".{}.{what}-", meta.name);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(&prefix("replaced")) && !dir.exists() {
            match std::fs::rename(&path, &dir) {
                Ok(()) => {
                    tracing::warn!(volume = %meta.name, "an interrupted import was undone: the previous data is back")
                }
                Err(e) => {
                    tracing::error!(volume = %meta.name, error = %e, "cannot restore the data an interrupted import moved aside")
                }
            }
        } else if ["import", "deleted", "migrated", "replaced"]
            .iter()
            .any(|w| name.starts_with(&prefix(w)))
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn read_meta(path: &Path) -> Result<VolumeMeta, VolumeError> {
    let bytes = std::fs::read(path).map_err(|e| VolumeError::io("read", path, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| VolumeError::Corrupt {
        what: format!("{}: {e}", path.display()),
    })
}

fn write_meta(root: &Path, meta: &VolumeMeta) -> Result<(), VolumeError> {
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| VolumeError::Corrupt {
        what: format!("cannot encode the metadata of {}: {e}", meta.name),
    })?;
    fsops::write_atomic(&meta_path(root, &meta.name), &bytes, 0o640)
}

/// Creates a volume's directory and metadata. `adopt`: an existing real directory (data a
/// server wrote before lucid-db managed it) is taken over; otherwise it must not exist.
fn create(
    s: &Settings,
    name: &VolumeName,
    quota: u64,
    kind: String,
    labels: BTreeMap<String, String>,
    adopt: bool,
) -> Result<VolumeMeta, VolumeError> {
    let dir = s.root.join(name.as_str());
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && adopt => {
            fsops::check_data_dir(&dir)?
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(VolumeError::Exists {
                volume: name.to_string(),
            });
        }
        Err(e) => return Err(VolumeError::io("mkdir", &dir, &e)),
    }
    // A manifest left by an earlier volume of this name describes other data.
    let _ = std::fs::remove_file(manifest_path(&s.root, name));
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
    fsops::check_data_dir(&dir)?;
    let tally = fsops::tally(&dir)?;
    let fs = fsops::statvfs(&dir)?;
    Ok(Usage {
        percent: percent(tally.bytes, meta.quota_bytes),
        quota_bytes: meta.quota_bytes,
        tally,
        fs,
        age_ms: 0,
    })
}

fn health(s: &Settings, meta: &VolumeMeta) -> VolumeHealth {
    let dir = data_dir(&s.root, meta);
    let mut h = VolumeHealth::default();
    if let Err(e) = fsops::check_data_dir(&dir) {
        h.problems.push(e.to_string());
        return h;
    }
    h.exists = true;
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
    let probe = dir.join(format!(
        "{}probe-{:016x}",
        fsops::TRANSIENT_PREFIX,
        rand::random::<u64>()
    ));
    match fsops::write_atomic(&probe, b"probe", 0o600).and_then(|()| {
        std::fs::remove_file(&probe).map_err(|e| VolumeError::io("remove", &probe, &e))
    }) {
        Ok(()) => h.writable = true,
        Err(e) => h.problems.push(format!("not writable: {e}")),
    }
    match fresh_meta(s, &meta.name) {
        Ok(stored) if stored.quota_bytes <= s.max_quota => h.metadata_ok = true,
        Ok(_) => h
            .problems
            .push("its quota is above volumes.max_quota".to_owned()),
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
        self.root_ok()?;
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
        // A wedged actor, for the test that its callers still get an answer in time.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("volume-inspect-wedged");
        if let Err(e) = self.known(&msg.name) {
            return ready(Err(e));
        }
        let s = self.settings();
        let cached = self.fresh_usage(&msg.name);
        let name = msg.name.clone();
        let work = blocking(move || {
            let meta = fresh_meta(&s, &name)?;
            let usage = match cached {
                Some(usage) => (usage, false),
                None => (measure(&s, &meta)?, true),
            };
            let health = health(&s, &meta);
            Ok((meta, usage, health))
        });
        Box::pin(work.into_actor(self).map(move |res, act, _| {
            let (meta, (usage, walked), health) = res?;
            act.remember(&meta);
            if walked {
                act.record_walk(&meta.name, usage);
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
        if let Err(e) = self.root_ok() {
            return ready(Err(e));
        }
        if self.volumes.contains_key(&msg.name) || !self.creating.insert(msg.name.clone()) {
            return ready(Err(VolumeError::Exists {
                volume: msg.name.to_string(),
            }));
        }
        let quota = msg.quota.map_or(self.settings.default_quota, |q| q.0);
        if let Err(e) = self.check_quota(quota) {
            self.creating.remove(&msg.name);
            return ready(Err(e));
        }
        let s = self.settings();
        let name = msg.name.clone();
        let kind = msg.kind.unwrap_or_else(|| "data".to_owned());
        let work = blocking(move || {
            if meta_path(&s.root, &name).exists() {
                return Err(VolumeError::Exists {
                    volume: name.to_string(),
                });
            }
            create(&s, &name, quota, kind, msg.labels, false)
        });
        let name = msg.name;
        Box::pin(work.into_actor(self).map(move |res, act, _| {
            act.creating.remove(&name);
            let meta = res?;
            events::emit(VolumeCreated {
                volume: meta.name.to_string(),
                quota_bytes: meta.quota_bytes,
            });
            act.remember(&meta);
            Ok(act.info(meta))
        }))
    }
}

impl Handler<DeleteVolume> for VolumeActor {
    type Result = Reply<()>;

    fn handle(&mut self, msg: DeleteVolume, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.known(&msg.name) {
            return ready(Err(e));
        }
        let s = self.settings();
        let name = msg.name.clone();
        let work = blocking(move || {
            let _lock = fsops::lock(&lock_path(&s.root, &name), name.as_str(), "delete", true)?;
            let meta = fresh_meta(&s, &name)?;
            let dir = data_dir(&s.root, &meta);
            fsops::check_data_dir(&dir)?;
            if !msg.force && !fsops::is_empty_dir(&dir)? {
                return Err(VolumeError::NotEmpty {
                    volume: name.to_string(),
                });
            }
            // The data goes out of the way in one step first; then the metadata; then the
            // copy. Interrupted, what is left is a `.deleted-` directory, removed at start.
            let doomed = beside(&s.root, &meta, "deleted");
            std::fs::rename(&dir, &doomed).map_err(|e| VolumeError::io("rename", &dir, &e))?;
            let remove = |p: &Path| match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(VolumeError::io("remove", p, &e))
                }
                _ => Ok(()),
            };
            remove(&meta_path(&s.root, &name))?;
            remove(&manifest_path(&s.root, &name))?;
            fsops::sync_dir(&s.root)?;
            std::fs::remove_dir_all(&doomed).map_err(|e| VolumeError::io("remove", &doomed, &e))
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
        let quota = msg.quota.0;
        if let Err(e) = self.known(&msg.name).and_then(|()| self.check_quota(quota)) {
            return ready(Err(e));
        }
        let s = self.settings();
        let name = msg.name.clone();
        let work = blocking(move || {
            let _lock = fsops::lock(&lock_path(&s.root, &name), name.as_str(), "resize", true)?;
            let mut meta = fresh_meta(&s, &name)?;
            // Always measured: a stale figure could let the quota drop below real use.
            let usage = measure(&s, &meta)?;
            if quota < usage.tally.bytes {
                return Err(VolumeError::QuotaBelowUsage {
                    volume: name.to_string(),
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
            act.remember(&meta);
            let usage = Usage {
                quota_bytes: meta.quota_bytes,
                percent: percent(usage.tally.bytes, meta.quota_bytes),
                ..usage
            };
            act.record_walk(&meta.name, usage);
            Ok(act.info(meta))
        }))
    }
}

impl Handler<MeasureUsage> for VolumeActor {
    type Result = Reply<Usage>;

    fn handle(&mut self, msg: MeasureUsage, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.known(&msg.name) {
            return ready(Err(e));
        }
        let s = self.settings();
        let name = msg.name.clone();
        let work = blocking(move || {
            let meta = fresh_meta(&s, &name)?;
            let usage = measure(&s, &meta)?;
            Ok((meta, usage))
        });
        Box::pin(work.into_actor(self).map(move |res, act, _| {
            let (meta, usage) = res?;
            act.remember(&meta);
            act.record_walk(&msg.name, usage);
            Ok(usage)
        }))
    }
}

impl Handler<CheckThresholds> for VolumeActor {
    type Result = Reply<Vec<VolumeName>>;

    fn handle(&mut self, _: CheckThresholds, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.root_ok() {
            return ready(Err(e));
        }
        let stale: Vec<VolumeName> = self
            .volumes
            .keys()
            .filter(|n| self.fresh_usage(n).is_none())
            .cloned()
            .collect();
        let s = self.settings();
        let work = blocking(move || {
            Ok(stale
                .into_iter()
                .map(|name| {
                    let measured =
                        fresh_meta(&s, &name).and_then(|meta| Ok((measure(&s, &meta)?, meta)));
                    (name, measured)
                })
                .collect::<Vec<_>>())
        });
        Box::pin(work.into_actor(self).map(|res, act, _| {
            for (name, measured) in res? {
                match measured {
                    Ok((usage, meta)) => {
                        act.remember(&meta);
                        act.record_walk(&name, usage);
                    }
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
        if let Err(e) = self.known(&msg.name) {
            return ready(Err(e));
        }
        let s = self.settings();
        Box::pin(blocking(move || Ok(health(&s, &fresh_meta(&s, &msg.name)?))).into_actor(self))
    }
}

impl Handler<Verify> for VolumeActor {
    type Result = Reply<VerifyReport>;

    fn handle(&mut self, msg: Verify, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.known(&msg.name) {
            return ready(Err(e));
        }
        let s = self.settings();
        let work = blocking(move || verify(&s, &msg.name, msg.update));
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

fn verify(s: &Settings, name: &VolumeName, update: bool) -> Result<VerifyReport, VolumeError> {
    // Exclusive when it may write the manifest; shared otherwise (the data must not be
    // replaced or moved while it is read).
    let sealing = update || !manifest_path(&s.root, name).exists();
    let _lock = fsops::lock(&lock_path(&s.root, name), name.as_str(), "verify", sealing)?;
    let meta = fresh_meta(s, name)?;
    let dir = data_dir(&s.root, &meta);
    fsops::check_data_dir(&dir)?;
    let manifest_file = manifest_path(&s.root, name);
    let now = integrity::build(&dir)?;
    let seal = |m: &integrity::Manifest| -> Result<(), VolumeError> {
        let bytes = serde_json::to_vec(m).map_err(|e| VolumeError::Corrupt {
            what: format!("cannot encode the manifest of {name}: {e}"),
        })?;
        fsops::write_atomic(&manifest_file, &bytes, 0o640)
    };
    let sealed: integrity::Manifest = match std::fs::read(&manifest_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| VolumeError::Corrupt {
            what: format!("{}: {e}", manifest_file.display()),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            seal(&now)?;
            return Ok(VerifyReport {
                volume: name.to_string(),
                sealed: true,
                entries: now.entries.len() as u64,
                ..VerifyReport::default()
            });
        }
        Err(e) => return Err(VolumeError::io("read", &manifest_file, &e)),
    };
    let mut report = integrity::compare(name.as_str(), &sealed, &now);
    if update && !report.clean() {
        seal(&now)?;
        report.updated = true;
    }
    Ok(report)
}

impl Handler<ExportVolume> for VolumeActor {
    type Result = Result<Feed<Vec<u8>, VolumeError>, VolumeError>;

    fn handle(&mut self, msg: ExportVolume, _: &mut Context<Self>) -> Self::Result {
        self.known(&msg.name)?;
        let s = self.settings();
        let (feeder, chunks) = feed(archive::EXPORT_BUFFER, s.stream_idle);
        tokio::task::spawn_blocking(move || {
            let exported = (|| {
                // Shared: nothing replaces or moves the data while it is read.
                let _lock = fsops::lock(
                    &lock_path(&s.root, &msg.name),
                    msg.name.as_str(),
                    "export",
                    false,
                )?;
                let meta = fresh_meta(&s, &msg.name)?;
                let dir = data_dir(&s.root, &meta);
                fsops::check_data_dir(&dir)?;
                archive::export(&dir, &feeder)
            })();
            if let Err(e) = exported {
                feeder.fail(e);
            }
        });
        Ok(chunks)
    }
}

impl Handler<ImportVolume> for VolumeActor {
    type Result = Reply<ImportSummary>;

    fn handle(&mut self, msg: ImportVolume, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.root_ok() {
            return ready(Err(e));
        }
        let s = self.settings();
        // The source is polled here, on the actor's arbiter; the tar reader drains the channel
        // on a blocking thread.
        let (tx, rx) = mpsc::channel(16);
        actix_rt::spawn(forward(msg.source, tx));
        let options = msg.options;
        let work = blocking(move || import(&s, &options, rx));
        Box::pin(work.into_actor(self).map(|res, act, _| {
            let (meta, summary, created) = res?;
            if created {
                events::emit(VolumeCreated {
                    volume: meta.name.to_string(),
                    quota_bytes: meta.quota_bytes,
                });
            }
            act.usage.remove(&meta.name);
            act.remember(&meta);
            Ok(summary)
        }))
    }
}

/// Hands an import's source to the tar reader, until the source ends or fails or the reader
/// is done (finished, or failed: then the source is dropped unread).
async fn forward(mut source: Source<Vec<u8>>, tx: mpsc::Sender<Result<Vec<u8>, String>>) {
    loop {
        let next = tokio::select! {
            next = source.next() => next,
            () = tx.closed() => return,
        };
        let Some(item) = next else {
            return;
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

fn import(
    s: &Settings,
    options: &ImportOptions,
    source: archive::Chunks,
) -> Result<(VolumeMeta, ImportSummary, bool), VolumeError> {
    let started = std::time::Instant::now();
    let name = &options.target;
    let _lock = fsops::lock(&lock_path(&s.root, name), name.as_str(), "import", true)?;
    let (meta, created) = match fresh_meta(s, name) {
        Ok(meta) => (meta, false),
        Err(VolumeError::NotFound { .. }) => (
            create(
                s,
                name,
                s.default_quota,
                name.to_string(),
                BTreeMap::new(),
                false,
            )?,
            true,
        ),
        Err(e) => return Err(e),
    };
    let undo_create = || {
        if created {
            let _ = std::fs::remove_file(meta_path(&s.root, name));
            let _ = std::fs::remove_dir_all(data_dir(&s.root, &meta));
        }
    };
    let dir = data_dir(&s.root, &meta);
    let found = match fsops::check_data_dir(&dir).and_then(|()| fsops::is_empty_dir(&dir)) {
        Ok(_) if created => TargetState::Missing,
        Ok(true) => TargetState::Empty,
        Ok(false) => TargetState::Holding,
        Err(e) => {
            undo_create();
            return Err(e);
        }
    };
    match options.existing.admit(found) {
        Admission::Into | Admission::Replace => {}
        Admission::NotEmpty => {
            return Err(VolumeError::NotEmpty {
                volume: name.to_string(),
            });
        }
        Admission::Exists => {
            return Err(VolumeError::Exists {
                volume: name.to_string(),
            });
        }
    }
    // Unpacked beside the volume (same filesystem), flushed, and swapped in only when the
    // whole stream is there.
    let staging = beside(&s.root, &meta, "import");
    let unpacked = std::fs::create_dir(&staging)
        .map_err(|e| VolumeError::io("mkdir", &staging, &e))
        .and_then(|()| {
            archive::import(
                &staging,
                source,
                name.as_str(),
                meta.quota_bytes,
                s.stream_idle,
            )
        })
        .and_then(|unpacked| {
            fsops::sync_filesystem(&staging)?;
            Ok((unpacked, fsops::tally(&staging)?))
        });
    let (unpacked, usage) = match unpacked {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            undo_create();
            return Err(e);
        }
    };
    let old = beside(&s.root, &meta, "replaced");
    std::fs::rename(&dir, &old).map_err(|e| VolumeError::io("rename", &dir, &e))?;
    if let Err(e) = std::fs::rename(&staging, &dir) {
        // Put the old data back; a crash right here is undone at the next start.
        let _ = std::fs::rename(&old, &dir);
        let _ = std::fs::remove_dir_all(&staging);
        return Err(VolumeError::io("rename", &staging, &e));
    }
    fsops::sync_dir(dir.parent().unwrap_or(&s.root))?;
    // The content changed: the old manifest no longer describes it.
    let _ = std::fs::remove_file(manifest_path(&s.root, name));
    let _ = std::fs::remove_dir_all(&old);
    let mut summary = ImportSummary::new(ImportDetails {
        stream_bytes: unpacked.stream_bytes,
        usage,
    });
    summary.read = unpacked.entries;
    summary.written = unpacked.unpacked;
    for _ in 0..unpacked.unsafe_paths {
        summary.skip(Skip::UnsafePath);
    }
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok((meta, summary, created))
}

impl Handler<MigrateVolume> for VolumeActor {
    type Result = Reply<VolumeInfo>;

    fn handle(&mut self, msg: MigrateVolume, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.known(&msg.name) {
            return ready(Err(e));
        }
        let s = self.settings();
        let others: Vec<PathBuf> = self
            .volumes
            .values()
            .filter(|m| m.name != msg.name)
            .map(|m| data_dir(&s.root, m))
            .collect();
        let work = blocking(move || migrate(&s, &msg.name, &msg.to, &others));
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
            act.remember(&meta);
            Ok(act.info(meta))
        }))
    }
}

/// Where a migration may go: a new directory (not existing yet) whose real parent is outside
/// the data root and outside every volume.
fn check_target(s: &Settings, to: &Path, others: &[PathBuf]) -> Result<PathBuf, VolumeError> {
    let bad = |reason: String| VolumeError::Invalid {
        field: "to",
        reason,
    };
    if !to.is_absolute() {
        return Err(bad("must be an absolute path".to_owned()));
    }
    let (Some(parent), Some(leaf)) = (to.parent(), to.file_name()) else {
        return Err(bad("must name a new directory".to_owned()));
    };
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(bad(format!("{} exists; migrate creates it", to.display())));
    }
    let parent = parent
        .canonicalize()
        .map_err(|e| bad(format!("its parent {}: {e}", parent.display())))?;
    let target = parent.join(leaf);
    let root = s
        .root
        .canonicalize()
        .map_err(|e| bad(format!("the data root: {e}")))?;
    if target.starts_with(&root) {
        return Err(bad(format!("{} is inside the data root", target.display())));
    }
    for other in others {
        if let Ok(other) = other.canonicalize()
            && (target.starts_with(&other) || other.starts_with(&target))
        {
            return Err(bad(format!(
                "{} overlaps volume data at {}",
                target.display(),
                other.display()
            )));
        }
    }
    Ok(target)
}

/// Copy, verify, flush, switch: the original stays complete until the metadata names the copy.
fn migrate(
    s: &Settings,
    name: &VolumeName,
    to: &Path,
    others: &[PathBuf],
) -> Result<VolumeMeta, VolumeError> {
    let _lock = fsops::lock(&lock_path(&s.root, name), name.as_str(), "migrate", true)?;
    let mut meta = fresh_meta(s, name)?;
    let from = data_dir(&s.root, &meta);
    fsops::check_data_dir(&from)?;
    let target = check_target(s, to, others)?;
    if let Ok(real) = from.canonicalize()
        && (target.starts_with(&real) || real.starts_with(&target))
    {
        return Err(VolumeError::Invalid {
            field: "to",
            reason: "must not be the volume itself or inside it".to_owned(),
        });
    }
    let copied = (|| {
        fsops::copy_tree(&from, &target)?;
        let (source, copy) = (integrity::build(&from)?, integrity::build(&target)?);
        let report = integrity::compare(name.as_str(), &source, &copy);
        if !report.clean() {
            return Err(VolumeError::Corrupt {
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
        Ok(())
    })();
    if let Err(e) = copied {
        // The original was never touched; the partial copy goes.
        let _ = std::fs::remove_dir_all(&target);
        return Err(e);
    }
    meta.path = Some(target);
    write_meta(&s.root, &meta)?;
    fsops::sync_dir(&s.root)?;
    // Switched. The old copy is renamed out of the way first (one step), then removed; if
    // that is interrupted, the next start removes the leftover.
    let old = from
        .parent()
        .unwrap_or(&s.root)
        .join(format!(".{name}.migrated-{:016x}", rand::random::<u64>()));
    match std::fs::rename(&from, &old) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&old);
        }
        Err(e) => {
            tracing::warn!(volume = %name, path = %from.display(), error = %e, "migrated; the old copy is left in place")
        }
    }
    Ok(meta)
}

impl Handler<CleanupVolume> for VolumeActor {
    type Result = Reply<CleanupReport>;

    fn handle(&mut self, msg: CleanupVolume, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.known(&msg.name) {
            return ready(Err(e));
        }
        let s = self.settings();
        let name = msg.name.clone();
        let work = blocking(move || {
            let _lock = fsops::lock(&lock_path(&s.root, &name), name.as_str(), "cleanup", true)?;
            cleanup(&s, &fresh_meta(&s, &name)?)
        });
        Box::pin(work.into_actor(self).map(move |res, act, _| {
            act.usage.remove(&msg.name);
            res
        }))
    }
}

fn cleanup(s: &Settings, meta: &VolumeMeta) -> Result<CleanupReport, VolumeError> {
    let mut report = CleanupReport::default();
    let cutoff = SystemTime::now()
        .checked_sub(s.cleanup_age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let old_enough = |m: &std::fs::Metadata| m.modified().is_ok_and(|t| t <= cutoff);
    let dir = data_dir(&s.root, meta);
    fsops::check_data_dir(&dir)?;
    for entry in walkdir::WalkDir::new(&dir).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| fsops::walk_error(&dir, e))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        let matches = fsops::is_transient(entry.file_name())
            || s.cleanup_patterns
                .iter()
                .any(|p| fsops::name_matches(p, &name));
        if !matches {
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
    // Leftovers of interrupted operations on this volume, beside it. A `.replaced-` copy is
    // the only copy while the volume's own directory is missing: never removed then.
    let parent = dir.parent().unwrap_or(&s.root).to_path_buf();
    let prefix = |what: &str| format!(".{}.{what}-", meta.name);
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let leftover = ["import", "deleted", "migrated"]
                .iter()
                .any(|w| name.starts_with(&prefix(w)))
                || (name.starts_with(&prefix("replaced")) && dir.is_dir());
            if leftover
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
        if let Err(e) = self.known(&msg.name) {
            return ready(Err(e));
        }
        let needed = msg.data.len() as u64;
        // Reserve now: writes in flight together cannot all pass one quota.
        let reserved = self.reserved.add(&msg.name, needed);
        let s = self.settings();
        let cached = self.fresh_usage(&msg.name);
        let name = msg.name.clone();
        let work = blocking(move || {
            let room = make_room(&s, &name, "write", cached, reserved, needed)?;
            let path = fsops::safe_join(&room.dir, &msg.path)?;
            // Replacing a file keeps its mode, and only the difference counts.
            let before = std::fs::symlink_metadata(&path).ok();
            let mode = before.as_ref().map_or(0o640, |m| {
                std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777
            });
            fsops::write_atomic(&path, &msg.data, mode)?;
            let after =
                std::fs::symlink_metadata(&path).map_err(|e| VolumeError::io("stat", &path, &e))?;
            let old_blocks = before
                .as_ref()
                .map_or(0, |m| std::os::unix::fs::MetadataExt::blocks(m) * 512);
            let old_len = before.as_ref().map_or(0, std::fs::Metadata::len);
            let delta = Delta {
                bytes: (std::os::unix::fs::MetadataExt::blocks(&after) * 512) as i64
                    - old_blocks as i64,
                apparent: after.len() as i64 - old_len as i64,
                files: i64::from(before.is_none()),
            };
            // The room, and with it the lock, ends here: the write is done.
            Ok((room.found, delta))
        });
        let name = msg.name;
        Box::pin(work.into_actor(self).map(move |res, act, _| {
            act.reserved.sub(&name, needed);
            let (room, delta) = res?;
            act.take_in(&name, room);
            act.add_usage(&name, delta.bytes, delta.apparent, delta.files);
            Ok(())
        }))
    }
}

/// What [`make_room`] found, held while the writer writes.
struct Room {
    /// The volume's lock, shared: a migrate, import or delete (exclusive) cannot move the data
    /// away under the writer.
    lock: fsops::LockFile,
    found: Found,
    dir: PathBuf,
}

/// The metadata and usage a [`Room`] found, for the actor to take in ([`VolumeActor::take_in`]).
struct Found {
    meta: VolumeMeta,
    usage: Usage,
    /// Whether `usage` was measured now (not the cached figure).
    walked: bool,
}

/// The quota check of every write the daemon makes itself ([`WriteFile`], a
/// [`reserve::Reservation`]), on a blocking thread: the volume's lock shared, its metadata
/// re-read, its usage (`cached` while it is for the same quota, else measured now), and room
/// for `needed` bytes beside the `promised` ones of other writers in flight.
fn make_room(
    s: &Settings,
    name: &VolumeName,
    operation: &'static str,
    cached: Option<Usage>,
    promised: u64,
    needed: u64,
) -> Result<Room, VolumeError> {
    let lock = fsops::lock(&lock_path(&s.root, name), name.as_str(), operation, false)?;
    let meta = fresh_meta(s, name)?;
    let (usage, walked) = match cached {
        Some(u) if u.quota_bytes == meta.quota_bytes => (u, false),
        _ => (measure(s, &meta)?, true),
    };
    if usage.tally.bytes + promised + needed > meta.quota_bytes {
        return Err(VolumeError::OverQuota {
            volume: name.to_string(),
            used: usage.tally.bytes + promised,
            quota: meta.quota_bytes,
            needed,
        });
    }
    let dir = data_dir(&s.root, &meta);
    fsops::check_data_dir(&dir)?;
    Ok(Room {
        lock,
        found: Found {
            meta,
            usage,
            walked,
        },
        dir,
    })
}

/// What one write changed in a volume's usage.
#[derive(Debug, Clone, Copy)]
struct Delta {
    bytes: i64,
    apparent: i64,
    files: i64,
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
