//! The volume actor's vocabulary: the names it accepts ([`VolumeName`]), the one error enum
//! every volume operation answers ([`VolumeError`]), what it stores and reports about a volume
//! (metadata, usage, health, the reports of cleanup and import), and the checks of `[volumes]`
//! only this module can make. Plain data: nothing here touches the disk or the actor.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::fsops::{FsStats, Tally};
use crate::config::{ByteSize, ConfigError, VolumesConfig};
use crate::transfer;

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
    /// A short call ([`super::VolumeOp::LONG`] false) got no answer within `supervisor.call_deadline`:
    /// the actor's loop is wedged, or the work took longer. The operation may still finish.
    #[error("the volume actor did not answer within {}", humantime::format_duration(*.after))]
    DeadlineExceeded { after: Duration },
    /// A writer went past the bytes it reserved ([`super::ReserveQuota`]): it is stopped there, so
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
    #[error("volume {volume} has no snapshot {snapshot}")]
    NoSnapshot { volume: String, snapshot: String },
    #[error("volume {volume} has a snapshot {snapshot} already")]
    SnapshotExists { volume: String, snapshot: String },
    /// A snapshot or restore of a live database volume without being told it is safe: its
    /// server writes across files, which a file-by-file copy does not capture consistently.
    #[error(
        "volume {volume} holds a live database ({kind}); its snapshot is consistent file by \
         file only (stop the server, then use {flag})"
    )]
    Live {
        volume: String,
        kind: String,
        flag: &'static str,
    },
    /// A plain copy that would not fit: refused before it starts.
    #[error(
        "a copy of volume {volume} needs {needed} bytes; its filesystem has {free} free \
         (keeping volumes.min_free)"
    )]
    NoSpace {
        volume: String,
        needed: u64,
        free: u64,
    },
}

/// Short calls to the volume actor time out through the one helper every actor uses.
impl crate::supervisor::DeadlineError for VolumeError {
    fn deadline_exceeded(after: Duration) -> Self {
        VolumeError::DeadlineExceeded { after }
    }
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
            VolumeError::NoSnapshot { .. } => "snapshot_not_found",
            VolumeError::SnapshotExists { .. } => "snapshot_exists",
            VolumeError::Live { .. } => "live_volume",
            VolumeError::NoSpace { .. } => "no_space",
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
    /// Space the volume's snapshots take (allocated, as `du` counts it: a reflinked file's
    /// shared blocks count in full). Apart from `tally`: the quota counts the data only.
    #[serde(default)]
    pub snapshot_bytes: u64,
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
    /// When it is full at the rate of the last 7 days (with usage only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<super::Forecast>,
}

/// What a cleanup removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    pub removed_files: u64,
    pub removed_bytes: u64,
    /// Leftovers of interrupted imports and migrations beside the volume.
    pub removed_leftovers: u64,
}

/// An import's target (the volume, created when missing) and rule (see
/// [`super::ImportVolume`]).
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
    for name in &cfg.verify_on_maintenance {
        if let Err(e) = VolumeName::new(name) {
            errors.push(ConfigError::new(
                "volumes.verify_on_maintenance",
                e.to_string(),
            ));
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
