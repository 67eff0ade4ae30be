//! Backups: the backup actor ([`BackupActor`]) and the format, keys, pipeline, storage and
//! catalogue it orchestrates. Every artifact is a standard format (tar, mongodump's BSON, RESP,
//! `_bulk` NDJSON) inside zstd (or gzip) inside age, in a layout an operator can restore from
//! with stock tools (docs/backup.md; the layout is BACKUP.md's).
//!
//! # Layers, bottom up
//!
//! - [`id`] — [`BackupId`]: one run's time-sortable name, `20261130T020000Z-3f9a`.
//! - [`manifest`] — `manifest.json` (format 1: written last, its presence means complete) and
//!   `verify.json` (latest result per verification level; what a backup counts as).
//! - [`keys`] — age keys: recipients from config, identity files, `keygen`, and passphrase
//!   mode's per-backup key sealed as `key.age`.
//! - [`storage`] — opendal over a directory (the `backups` volume, `.partial` names renamed
//!   when complete, bytes charged to a quota reservation) or an S3 bucket (multipart, final
//!   names, the manifest alone decides completeness); listing, deleting, cleanup.
//! - `uploads` — S3's open multipart uploads, which opendal cannot list: listed and aborted
//!   by the next run's cleanup (SigV4 through reqsign, opendal's own signer).
//! - [`pipeline`] — one artifact's bytes: any byte stream → compress → encrypt → hash →
//!   storage on a blocking thread behind bounded channels (memory flat whatever the size), and
//!   back: checksum, decrypt, decompress, parse.
//! - [`catalogue`] — the local cache of manifests and verification results under
//!   `state_dir/backup/catalogue/`, rebuilt from storage when missing or stale.
//! - [`formats`] — the database stores' artifact formats, both ways: mongodump's `.bson` and
//!   `.metadata.json`, RESP `RESTORE` commands, the `_bulk` NDJSON and its create body.
//! - [`select`] — which stores a run takes ([`StoreSelector`], `backup.volumes`).
//! - [`lock`] — the cross-process backup lock (`state_dir/locks/backup.lock`).
//! - [`readers`] — who reads a backup (a verify, restore or drill), so nothing deletes it
//!   under them.
//! - [`run`] — one run, from the lock to the manifest.
//! - `databases` — MongoDB, Redis and Elasticsearch in a run: probe, facts, export.
//! - [`restore`] — a backup back into the stores: checksums and targets checked before
//!   anything is written, then each artifact streamed into its store's import.
//! - [`retention`] — the retention plan, a pure function; [`prune`] applies it, deletes by
//!   hand and pins.
//! - [`verify`] — `checksummed` and `decoded` verification, recorded in `verify.json`;
//!   [`drill`] — `drilled`: restored into scratch targets, compared, removed.
//!
//! # The actor
//!
//! [`BackupActor`] (part `backup`: the daemon and the CLI's backup commands run it, an
//! embedding sibling never does) runs on a thread of its own, `lucid-backup`. It reaches the
//! stores only through their handles ([`StoreHandles`]: their stats and exports) and never
//! opens a connection of its own. [`StartBackup`] answers
//! the new [`BackupId`] as soon as the run holds the backup lock — a second run, from this
//! process or another (the daemon, the scheduler, a CLI), is refused `busy` — and the run goes
//! on on the actor's thread; its outcome follows in events and through [`BackupStatus`].
//! [`ListBackups`] and [`ShowBackup`] read the catalogue; [`VerifyBackup`] reads storage.
//! Nothing touches the disk until the first message: starting the actor writes nothing.
//!
//! Below the run nothing knows a store: sources are streams of bytes (the [`formats`] turn
//! each store's export items into them), and what each store exports is the store's
//! business. The checks of the `[backup]` section that need the age
//! format or volume names are [`check_config`]; [`config_warnings`] is what `config check`
//! warns about.

pub mod catalogue;
mod databases;
pub mod drill;
pub mod formats;
pub mod id;
pub mod keys;
pub mod lock;
pub mod manifest;
pub mod pipeline;
pub mod prune;
pub mod readers;
pub mod restore;
pub mod retention;
pub mod run;
pub mod select;
pub mod specs;
pub mod storage;
mod uploads;
pub mod verify;

pub use catalogue::{Catalogue, CatalogueError, Entry, SyncReport};
pub use id::BackupId;
pub use keys::{BackupKey, Identities, KeyError, Recipients, keygen};
pub use lock::{LockError, RunLock};
pub use manifest::{
    ArtifactCheck, ArtifactRecord, Encryption, Level, LevelResult, Manifest, ManifestError,
    Outcome, Pin, PinRecord, StoreRecord, Trigger, VerifyRecord,
};
pub use pipeline::{Codec, Decoding, PipelineError, TarSummary, walk_tar};
pub use prune::{DeleteReport, Planned, PruneReport};
pub use restore::{RestoreProgress, RestoreReport, Restored, Targets};
pub use retention::{Reason, Refusal};
pub use run::{BackupOutcome, Progress, RunReport, outcome_of};
pub use select::{Indices, Plan, SelectionError, StoreSelector};
pub use storage::{S3Settings, Storage, StorageError};
pub use verify::VerifyReport;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::prelude::*;
use chrono::{DateTime, Utc};

use crate::config::{BackupConfig, BackupStorage, Config, ConfigError};
use crate::health::HealthRegistry;
use crate::mongo::MongoHandle;
use crate::redis::RedisHandle;
use crate::search::SearchHandle;
use crate::state::{StateDir, StateError};
use crate::threads::ActorThread;
use crate::volume::{ListVolumes, VolumeError, VolumeHandle, VolumeName};

/// The `[backup]` checks that need this module: every recipient parses as an age X25519
/// public key (named by index, never echoed), the identity parses, the volume names are
/// volume names.
pub fn check_config(cfg: &BackupConfig, errors: &mut Vec<ConfigError>) {
    if let Err(e) = Recipients::parse("backup.recipients", &cfg.recipients) {
        let reason = match &e {
            KeyError::Recipient { index, reason, .. } => {
                format!("entry {index} is not an age X25519 recipient (age1…): {reason}")
            }
            other => other.to_string(),
        };
        errors.push(ConfigError::new("backup.recipients", reason));
    }
    if let Some(identity) = &cfg.identity
        && let Err(e) = Identities::parse(identity.origin(), identity.expose())
    {
        errors.push(ConfigError::new("backup.identity_file", e.to_string()));
    }
    for (key, names) in [
        ("backup.volumes.include", &cfg.volumes.include),
        ("backup.volumes.exclude", &cfg.volumes.exclude),
    ] {
        for name in names {
            if let Err(e) = VolumeName::new(name) {
                errors.push(ConfigError::new(key, e.to_string()));
            }
        }
    }
}

/// What `config check` warns about (the configuration works, but probably not as meant).
pub fn config_warnings(cfg: &BackupConfig) -> Vec<ConfigError> {
    let mut warnings = Vec::new();
    if cfg.recipients.is_empty() && cfg.passphrase.is_none() {
        warnings.push(ConfigError::new(
            "backup.recipients",
            "no recipient and no passphrase: backups will be written UNENCRYPTED \
             (run `lucid-db backup keygen --out FILE` and put its public key here)",
        ));
    }
    warnings
}

/// The storage `cfg` names: the directory `backups_dir` (the `backups` volume's) for `fs`, the
/// bucket for `s3`. `io_timeout` bounds every wait for progress.
pub fn storage_for(
    cfg: &BackupConfig,
    backups_dir: &std::path::Path,
    io_timeout: std::time::Duration,
) -> Result<Storage, StorageError> {
    match cfg.storage {
        BackupStorage::Fs => Storage::fs(backups_dir, io_timeout),
        BackupStorage::S3 => {
            let missing = |key: &'static str| StorageError::Config {
                key,
                reason: "not set".to_owned(),
            };
            let s3 = &cfg.s3;
            Storage::s3(
                &S3Settings {
                    endpoint: s3.endpoint.clone(),
                    bucket: s3.bucket.clone(),
                    prefix: s3.prefix.clone(),
                    region: s3.region.clone(),
                    access_key_id: s3
                        .access_key_id
                        .clone()
                        .ok_or_else(|| missing("backup.s3.access_key_id_file"))?,
                    secret_access_key: s3
                        .secret_access_key
                        .clone()
                        .ok_or_else(|| missing("backup.s3.secret_access_key_file"))?,
                },
                io_timeout,
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Starts a backup of `stores` (empty: every store that runs; see [`select`]). Answers the new
/// id once the run holds the backup lock; the run goes on, and [`BackupStatus`] follows it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<BackupId, BackupError>")]
pub struct StartBackup {
    pub stores: Vec<StoreSelector>,
    pub trigger: Trigger,
}

/// A run's progress while it runs, its outcome once it ended (in this process), or what the
/// catalogue says of a backup another process made.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<RunStatus, BackupError>")]
pub struct BackupStatus {
    pub id: BackupId,
}

/// Every complete (listed) backup, oldest first, with its verification results, from the
/// catalogue — refreshed from storage first, so a backup another process wrote is listed too.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Vec<Entry>, BackupError>")]
pub struct ListBackups;

/// One backup's manifest and verification results, from the catalogue.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Entry, BackupError>")]
pub struct ShowBackup {
    pub id: BackupId,
}

/// Verifies a backup at `level` against what storage holds now; see [`verify`]. `identity`
/// adds to the keys the configuration gives (for `decoded`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VerifyReport, BackupError>")]
pub struct VerifyBackup {
    pub id: BackupId,
    pub level: Level,
    pub identity: Option<Identities>,
}

/// Applies the retention plan (`backup.retention_days`, `keep_*`, `min_level`; see
/// [`retention`]): deletes every backup no rule keeps, or with `dry_run` only says which.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<PruneReport, BackupError>")]
pub struct PruneBackups {
    pub dry_run: bool,
}

/// Deletes one backup. Without `force`, refused (`guarded`) when it is pinned or the newest
/// good copy of something; never while it is being read (`busy`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<DeleteReport, BackupError>")]
pub struct DeleteBackup {
    pub id: BackupId,
    pub force: bool,
}

/// Pins a backup (retention keeps it); answers the backup with its pins.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Entry, BackupError>")]
pub struct PinBackup {
    pub id: BackupId,
    pub reason: Option<String>,
}

/// Removes every pin of a backup.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Entry, BackupError>")]
pub struct UnpinBackup {
    pub id: BackupId,
}

/// Restores backup `id` (see [`restore`]): `stores` empty means every store the backup holds
/// complete; `force` replaces non-empty targets. Holds the backup lock: `busy` while a backup,
/// prune or another restore runs.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<RestoreReport, BackupError>")]
pub struct RestoreBackup {
    pub id: BackupId,
    pub stores: Vec<StoreSelector>,
    pub identity: Option<Identities>,
    pub targets: Targets,
    pub force: bool,
}

/// The backup run under way in this process, else the latest one that ran here (any
/// trigger: the scheduler's, the API's, the CLI's); `None` before the first. What the API's
/// `GET /backup/status` follows.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Option<BackupId>, BackupError>")]
pub struct LatestRun;

/// Where the restore that runs in this process is, if one runs: the CLI follows it with this
/// while its [`RestoreBackup`] is under way.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Option<RestoreProgress>, BackupError>")]
pub struct RestoreStatus;

/// The lifecycle's deletion gate: the indices a good copy holds, exported while
/// write-blocked ([`retention::backed_up_indices`]); `min_level` `None`: `backup.min_level`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<std::collections::BTreeSet<String>, BackupError>")]
pub struct BackedUpIndices {
    pub min_level: Option<Level>,
}

/// Where a run is.
#[derive(Debug, Clone)]
pub enum RunStatus {
    Running {
        id: BackupId,
        trigger: Trigger,
        started: DateTime<Utc>,
        progress: Progress,
    },
    Finished(RunReport),
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Everything a backup message can answer instead of a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackupError {
    /// Another backup or restore runs (here or in another process).
    #[error("{reason}")]
    Busy { reason: String },
    #[error("no backup {id}")]
    NotFound { id: String },
    #[error(transparent)]
    Selection(#[from] SelectionError),
    #[error("not supported: {what}")]
    NotSupported { what: String },
    /// A part the operation needs does not run, or did not answer.
    #[error("{what} is unavailable: {reason}")]
    Unavailable { what: String, reason: String },
    /// The estimate does not fit: both numbers, and which limit.
    #[error(
        "the backup needs about {needed} bytes, and {limit} leaves {available}: free space or \
         raise the quota (docs/backup.md, Sizing the backups volume)"
    )]
    NoRoom {
        needed: u64,
        available: u64,
        limit: String,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    /// The manifest in storage cannot be used.
    #[error(transparent)]
    Manifest(ManifestError),
    #[error(transparent)]
    Pipeline(PipelineError),
    #[error(transparent)]
    Key(KeyError),
    /// Passphrase mode's key.age does not open with the configured passphrase.
    #[error(
        "key.age does not open with the configured passphrase (backup.passphrase_file): the \
         passphrase is wrong or key.age is damaged ({reason})"
    )]
    KeyAge { reason: String },
    #[error(
        "the backup is encrypted and no identity is at hand: give --identity FILE, or set \
         backup.identity_file (or the backup_identity credential)"
    )]
    IdentityRequired,
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    State(#[from] StateError),
    /// Every selected store failed: there is no usable backup (and no manifest).
    #[error("nothing was backed up: {}", describe_failures(.failures))]
    NothingBackedUp {
        /// (store or `volumes:NAME`, code, message)
        failures: Vec<(String, String, String)>,
    },
    /// The run stopped as a crash would (a fail point; a task that died): what it wrote is
    /// left for the next run's cleanup.
    #[error("the run was interrupted: {reason}")]
    Interrupted { reason: String },
    #[error("the backup actor did not take the request: it has stopped")]
    NotDelivered,
    /// Retention refused to plan: the clock cannot be trusted yet.
    #[error(transparent)]
    Retention(Refusal),
    /// A drill restored an artifact and what came back differs from it.
    #[error("drill of {artifact}: {reason}")]
    DrillMismatch { artifact: String, reason: String },
    /// A database store failed or refused a restore's import (the artifact decoded: this is
    /// the store's own error, with its code).
    #[error("{store}: {message}")]
    Store {
        store: &'static str,
        code: &'static str,
        message: String,
    },
    /// A restore's target holds data, and `--force` was not given.
    #[error("{target} is not empty ({holds}): give --force to replace it")]
    TargetNotEmpty { target: String, holds: String },
    /// The selection names something the backup does not hold (complete).
    #[error("backup {id} holds no {what}")]
    NotInBackup { what: String, id: String },
    /// Arguments that do not go together.
    #[error("{what}")]
    BadRequest { what: String },
    /// `backup delete` without `--force` of a backup that is pinned or a newest good copy.
    #[error("backup {id} is kept: {reasons}; give --force to delete it all the same")]
    Guarded { id: String, reasons: String },
}

fn describe_failures(failures: &[(String, String, String)]) -> String {
    failures
        .iter()
        .map(|(what, code, message)| format!("{what} ({code}): {message}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Codes that mean a store's backend could not be reached, rather than that it failed.
const UNAVAILABLE_CODES: [&str; 9] = [
    "unavailable",
    "disabled",
    "not_delivered",
    "root_unavailable",
    "storage_unreachable",
    "deadline_exceeded",
    "connection_refused",
    "connection_dropped",
    "timeout",
];

impl BackupError {
    /// Low-cardinality code for logs, events and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            BackupError::Busy { .. } => "busy",
            BackupError::NotFound { .. } => "not_found",
            BackupError::Selection(e) => e.code(),
            BackupError::NotSupported { .. } => "not_supported",
            BackupError::Unavailable { .. } => "unavailable",
            BackupError::NoRoom { .. } => "no_room",
            BackupError::Storage(e) => e.code(),
            BackupError::Catalogue(e) => e.code(),
            BackupError::Manifest(e) => e.code(),
            BackupError::Pipeline(e) => e.code(),
            BackupError::Key(e) => e.code(),
            BackupError::KeyAge { .. } => "wrong_passphrase",
            BackupError::IdentityRequired => "identity_required",
            BackupError::Volume(e) => e.code(),
            BackupError::State(e) => e.code(),
            BackupError::NothingBackedUp { .. } => "nothing_backed_up",
            BackupError::Interrupted { .. } => "interrupted",
            BackupError::NotDelivered => "not_delivered",
            BackupError::Retention(r) => r.code(),
            BackupError::Guarded { .. } => "guarded",
            BackupError::TargetNotEmpty { .. } => "target_not_empty",
            BackupError::Store { code, .. } => code,
            BackupError::DrillMismatch { .. } => "drill_mismatch",
            BackupError::NotInBackup { .. } => "not_in_backup",
            BackupError::BadRequest { .. } => "bad_request",
        }
    }

    /// A backup that is bad or cannot be verified with what was given: a manifest that does
    /// not parse, an artifact or `key.age` that is missing, cut, changed or does not open.
    pub fn is_corrupt(&self) -> bool {
        match self {
            BackupError::Manifest(_)
            | BackupError::KeyAge { .. }
            | BackupError::DrillMismatch { .. } => true,
            BackupError::Pipeline(e) => e.is_corrupt(),
            _ => false,
        }
    }

    /// Nothing was done because what the operation needs could not be reached: the storage's
    /// endpoint, or every selected store's backend.
    pub fn is_unavailable(&self) -> bool {
        match self {
            BackupError::Unavailable { .. } | BackupError::NotDelivered => true,
            BackupError::Store { code, .. } => UNAVAILABLE_CODES.contains(code),
            BackupError::Storage(e) | BackupError::Catalogue(CatalogueError::Storage(e)) => {
                matches!(e, StorageError::Unreachable { .. })
            }
            BackupError::Pipeline(PipelineError::Storage { source, .. }) => {
                matches!(source, StorageError::Unreachable { .. })
            }
            BackupError::Selection(e) => matches!(e, SelectionError::Unavailable { .. }),
            BackupError::NothingBackedUp { failures } => {
                !failures.is_empty()
                    && failures
                        .iter()
                        .all(|(_, code, _)| UNAVAILABLE_CODES.contains(&code.as_str()))
            }
            _ => false,
        }
    }

    /// The configuration is what is wrong: storage settings or keys the storage refuses, a
    /// missing bucket, keys that do not parse, a selection the configuration empties.
    pub fn is_config(&self) -> bool {
        match self {
            BackupError::Storage(e) | BackupError::Catalogue(CatalogueError::Storage(e)) => {
                matches!(
                    e,
                    StorageError::NoBucket { .. }
                        | StorageError::Config { .. }
                        | StorageError::Denied { .. }
                )
            }
            BackupError::Key(e) => !matches!(e, KeyError::Passphrase { .. }),
            BackupError::IdentityRequired | BackupError::State(StateError::Unusable { .. }) => true,
            BackupError::Selection(
                SelectionError::Nothing { .. } | SelectionError::Disabled { .. },
            ) => true,
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handle

/// What callers hold; `Send + Sync + Clone`.
#[derive(Clone)]
pub struct BackupHandle {
    addr: Addr<BackupActor>,
}

impl BackupHandle {
    pub fn addr(&self) -> &Addr<BackupActor> {
        &self.addr
    }

    /// Sends a message and waits for its answer (a verification reads every artifact: it
    /// takes as long as that takes; each read bounds its own progress with the I/O timeout).
    pub async fn call<M, T>(&self, msg: M) -> Result<T, BackupError>
    where
        M: Message<Result = Result<T, BackupError>> + Send + 'static,
        T: Send + 'static,
        BackupActor: Handler<M>,
    {
        self.addr
            .send(msg)
            .await
            .unwrap_or(Err(BackupError::NotDelivered))
    }
}

// ---------------------------------------------------------------------------------------------
// State

/// The stores a backup reaches, through their handles: each `None` when its actor does not
/// run in this process.
#[derive(Clone, Default)]
pub struct StoreHandles {
    pub volumes: Option<VolumeHandle>,
    pub mongo: Option<MongoHandle>,
    pub redis: Option<RedisHandle>,
    pub search: Option<SearchHandle>,
    /// Where a run waits for a backend that is still connecting (a CLI's actors have only just
    /// started); `None`: it does not wait.
    pub registry: Option<HealthRegistry>,
}

impl StoreHandles {
    /// The database stores whose actor runs, by their manifest names.
    fn databases(&self) -> Vec<&'static str> {
        [
            (self.mongo.is_some(), "mongodb"),
            (self.redis.is_some(), "redis"),
            (self.search.is_some(), "elasticsearch"),
        ]
        .into_iter()
        .filter_map(|(runs, name)| runs.then_some(name))
        .collect()
    }
}

/// What the actor and its runs share (the runs outlive a message).
struct Shared {
    config: Config,
    /// `config show`'s text: what every backup carries as `lucid-db/config.toml`.
    redacted_config: String,
    /// `backup.recipients`, parsed. The configuration check refuses bad ones; should one get
    /// here anyway, every run fails on it rather than writing unencrypted by mistake.
    recipients: Result<Recipients, KeyError>,
    stores: StoreHandles,
    state: StateDir,
    io_timeout: Duration,
    /// Opened on first use: starting the actor touches no disk.
    catalogue: tokio::sync::Mutex<Option<Catalogue>>,
    /// The restore under way in this process, for [`RestoreStatus`].
    restoring: std::sync::Mutex<Option<restore::Tracker>>,
}

impl Shared {
    fn encrypts(&self) -> bool {
        self.recipients.as_ref().map_or(true, |r| !r.is_empty())
            || self.config.backup.passphrase.is_some()
    }

    /// Whether the configuration enables the database store `store` (its actor may still not
    /// run: a sibling's roles, schema files that did not load).
    fn store_enabled(&self, store: &str) -> bool {
        match store {
            "mongodb" => self.config.mongodb.enabled,
            "redis" => self.config.redis.enabled,
            "elasticsearch" => self.config.elasticsearch.enabled,
            _ => false,
        }
    }

    /// The storage the configuration names; for fs, the `backups` volume's directory as the
    /// volume actor has it (or under `volumes.root` when it does not run here).
    async fn storage(&self) -> Result<Storage, BackupError> {
        let dir = match (&self.config.backup.storage, &self.stores.volumes) {
            (BackupStorage::Fs, Some(volumes)) => volumes
                .call(ListVolumes)
                .await?
                .into_iter()
                .find(|v| v.meta.name.as_str() == "backups")
                .map(|v| v.data_dir)
                .ok_or_else(|| {
                    BackupError::Volume(VolumeError::NotFound {
                        volume: "backups".to_owned(),
                    })
                })?,
            _ => self.config.volumes.root.join("backups"),
        };
        Ok(storage_for(&self.config.backup, &dir, self.io_timeout)?)
    }

    /// The volume actor's handle; `what` names what needed it when it does not run here.
    fn volumes(&self, what: &str) -> Result<&VolumeHandle, BackupError> {
        self.stores
            .volumes
            .as_ref()
            .ok_or_else(|| BackupError::Unavailable {
                what: what.to_owned(),
                reason: "the volume actor does not run in this process".to_owned(),
            })
    }

    /// Marks backup `id` as being read (a verify, restore or drill) until the answer is
    /// dropped: retention and `backup delete` keep it meanwhile ([`readers`]).
    async fn reading(&self, id: BackupId) -> Result<readers::ReadLock, BackupError> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            state.ensure()?;
            readers::ReadLock::shared(&state, &id)
        })
        .await
        .map_err(|e| BackupError::Interrupted {
            reason: format!("marking the backup as read: {e}"),
        })?
        .map_err(BackupError::from)
    }

    /// Takes the backup lock (`busy` when another run, restore or prune holds it).
    async fn lock(&self) -> Result<RunLock, BackupError> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            state.ensure()?;
            RunLock::try_acquire(&state.lock_file("backup")).map_err(|e| match e {
                LockError::Busy { .. } => BackupError::Busy {
                    reason: e.to_string(),
                },
                LockError::Io { path, reason } => {
                    BackupError::State(StateError::Unusable { path, reason })
                }
            })
        })
        .await
        .map_err(|e| BackupError::Interrupted {
            reason: format!("taking the backup lock: {e}"),
        })?
    }

    /// What runs here, for the store selection.
    async fn available(&self) -> Result<select::Available, BackupError> {
        let volumes = match &self.stores.volumes {
            Some(v) => Some(
                v.call(ListVolumes)
                    .await?
                    .into_iter()
                    .map(|info| info.meta.name)
                    .collect(),
            ),
            None => None,
        };
        Ok(select::Available {
            volumes,
            databases: self.stores.databases(),
            disabled: select::DATABASES
                .into_iter()
                .filter(|d| !self.store_enabled(d))
                .collect(),
        })
    }

    /// The catalogue, opened (and brought in step with storage) on first use; `refresh`
    /// re-reads storage's listing when it was open already.
    async fn catalogue(
        &self,
        storage: &Storage,
        refresh: bool,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, Catalogue>, BackupError> {
        let mut guard = self.catalogue.lock().await;
        match guard.as_mut() {
            Some(cat) if refresh => {
                cat.refresh(storage).await?;
            }
            Some(_) => {}
            None => {
                let state = self.state.clone();
                tokio::task::spawn_blocking(move || state.ensure())
                    .await
                    .map_err(|e| BackupError::Interrupted {
                        reason: format!("creating the state directory: {e}"),
                    })??;
                let (cat, report) =
                    Catalogue::open(&self.state.backup_catalogue(), storage).await?;
                for (id, code, message) in &report.unreadable {
                    tracing::warn!(%id, code, %message, "a backup in storage cannot be read; not listed");
                }
                *guard = Some(cat);
            }
        }
        Ok(tokio::sync::MutexGuard::map(guard, |c| {
            c.as_mut()
                .unwrap_or_else(|| unreachable!("opened just above"))
        }))
    }

    async fn catalogue_insert(
        &self,
        storage: &Storage,
        manifest: Manifest,
    ) -> Result<(), BackupError> {
        let was_open = self.catalogue.lock().await.is_some();
        let mut cat = self.catalogue(storage, false).await?;
        // Opened just now: its refresh read the new manifest from storage already.
        if was_open {
            cat.insert(Entry {
                manifest,
                verify: None,
                pins: None,
            })
            .await?;
        }
        Ok(())
    }

    async fn catalogue_verify(
        &self,
        storage: &Storage,
        record: VerifyRecord,
    ) -> Result<(), BackupError> {
        let mut cat = self.catalogue(storage, false).await?;
        if cat.get(&record.id).is_none() {
            cat.refresh(storage).await?;
        }
        cat.set_verify(record).await?;
        Ok(())
    }
}

/// How many finished runs the actor remembers for [`BackupStatus`] (older ones are answered
/// from the catalogue).
const REMEMBERED_RUNS: usize = 32;

enum RunState {
    Running {
        trigger: Trigger,
        started: DateTime<Utc>,
        progress: Arc<Mutex<Progress>>,
    },
    Finished(Box<RunReport>),
}

/// See the module doc.
pub struct BackupActor {
    shared: Arc<Shared>,
    /// The run this process has in progress (the lock file keeps other processes out).
    running: Option<BackupId>,
    runs: BTreeMap<BackupId, RunState>,
    mailbox_capacity: usize,
}

impl BackupActor {
    /// Starts the actor on a thread of its own (`lucid-backup`, tied to the current arbiter,
    /// as the store actors are), reaching the `stores` that run here. Touches no disk.
    pub fn start_with(config: &Config, stores: StoreHandles) -> BackupHandle {
        let shared = Shared {
            config: config.clone(),
            redacted_config: config.to_redacted_toml(),
            recipients: Recipients::parse("backup.recipients", &config.backup.recipients),
            stores,
            state: StateDir::new(&config.state_dir),
            io_timeout: config.supervisor.stream_idle_timeout,
            catalogue: tokio::sync::Mutex::new(None),
            restoring: std::sync::Mutex::new(None),
        };
        let actor = BackupActor {
            shared: Arc::new(shared),
            running: None,
            runs: BTreeMap::new(),
            mailbox_capacity: config.supervisor.mailbox_capacity,
        };
        BackupHandle {
            addr: ActorThread::start("lucid-backup").start_actor(move |_| actor),
        }
    }

    /// `busy` while this process has a backup run in progress (the lock file says the same
    /// for other processes; this says it with the run's id).
    fn idle(&self) -> Result<(), BackupError> {
        match self.running {
            Some(id) => Err(BackupError::Busy {
                reason: format!("backup {id} is running in this process"),
            }),
            None => Ok(()),
        }
    }

    /// Runs `work` holding the backup lock: one backup, restore, prune or delete at a time,
    /// here or in another process.
    fn exclusive<T, F, Fut>(&self, work: F) -> Reply<T>
    where
        T: 'static,
        F: FnOnce(Arc<Shared>, RunLock) -> Fut + 'static,
        Fut: std::future::Future<Output = Result<T, BackupError>> + 'static,
    {
        if let Err(e) = self.idle() {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        let shared = self.shared.clone();
        Box::pin(
            async move {
                let lock = shared.lock().await?;
                work(shared, lock).await
            }
            .into_actor(self),
        )
    }

    fn finished(&mut self, report: RunReport) {
        self.running = None;
        self.runs
            .insert(report.id, RunState::Finished(Box::new(report)));
        while self.runs.len() > REMEMBERED_RUNS {
            let oldest = self
                .runs
                .iter()
                .find(|(_, s)| matches!(s, RunState::Finished(_)))
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => {
                    self.runs.remove(&id);
                }
                None => break,
            }
        }
    }
}

impl Actor for BackupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
    }
}

/// A finished run as the catalogue knows it (a backup made by another process, or earlier).
fn report_from(entry: &Entry) -> RunReport {
    let m = &entry.manifest;
    let (bytes_in, bytes_stored) = m
        .artifacts()
        .fold((0, 0), |(i, s), a| (i + a.bytes_in, s + a.bytes_stored));
    let ended = m
        .stores
        .values()
        .filter_map(|s| s.ended)
        .max()
        .unwrap_or(m.created);
    RunReport {
        id: m.id,
        trigger: m.trigger,
        started: m.created,
        ended,
        outcome: outcome_of(&m.stores),
        stores: m.stores.clone(),
        encrypted: m.encryption.is_encrypted(),
        bytes_in,
        bytes_stored,
        error: None,
        cleaned: storage::Cleanup::default(),
        listed: true,
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

type Reply<T> = ResponseActFuture<BackupActor, Result<T, BackupError>>;

impl Handler<crate::supervisor::Heartbeat> for BackupActor {
    type Result = ();

    fn handle(&mut self, _: crate::supervisor::Heartbeat, _: &mut Context<Self>) {}
}

impl Handler<crate::supervisor::Shutdown> for BackupActor {
    type Result = ();

    /// A run in progress stops where it is, as a crash would: its lock goes with it, and the
    /// next run removes what it wrote.
    fn handle(&mut self, _: crate::supervisor::Shutdown, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<StartBackup> for BackupActor {
    type Result = Reply<BackupId>;

    fn handle(&mut self, msg: StartBackup, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.idle() {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        if let Err(e) = &self.shared.recipients {
            return Box::pin(actix::fut::ready(Err(BackupError::Key(e.clone()))));
        }
        let shared = self.shared.clone();
        let prepare = async move {
            let available = shared.available().await?;
            let plan = select::resolve(&msg.stores, &available, &shared.config.backup.volumes)?;
            let lock = shared.lock().await?;
            Ok::<_, BackupError>((plan, lock, msg.trigger))
        };
        Box::pin(prepare.into_actor(self).map(|prepared, act, ctx| {
            let (plan, lock, trigger) = prepared?;
            if let Some(other) = act.running {
                return Err(BackupError::Busy {
                    reason: format!("backup {other} is running in this process"),
                });
            }
            let id = BackupId::new(Utc::now());
            let progress = Arc::new(Mutex::new(Progress::default()));
            act.running = Some(id);
            act.runs.insert(
                id,
                RunState::Running {
                    trigger,
                    started: Utc::now(),
                    progress: progress.clone(),
                },
            );
            let job = run::Job {
                shared: act.shared.clone(),
                id,
                trigger,
                plan,
                progress,
                lock,
            };
            ctx.spawn(
                run::run(job)
                    .into_actor(act)
                    .map(|report, act, _| act.finished(report)),
            );
            Ok(id)
        }))
    }
}

impl Handler<BackupStatus> for BackupActor {
    type Result = Reply<RunStatus>;

    fn handle(&mut self, msg: BackupStatus, _: &mut Context<Self>) -> Self::Result {
        let known = match self.runs.get(&msg.id) {
            Some(RunState::Running {
                trigger,
                started,
                progress,
            }) => Some(RunStatus::Running {
                id: msg.id,
                trigger: *trigger,
                started: *started,
                progress: progress
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            }),
            Some(RunState::Finished(report)) => Some(RunStatus::Finished((**report).clone())),
            None => None,
        };
        if let Some(status) = known {
            return Box::pin(actix::fut::ready(Ok(status)));
        }
        let shared = self.shared.clone();
        Box::pin(
            async move {
                let storage = shared.storage().await?;
                let entry = find(&shared, &storage, &msg.id).await?;
                Ok(RunStatus::Finished(report_from(&entry)))
            }
            .into_actor(self),
        )
    }
}

/// One backup from the catalogue, refreshed from storage when it is not known yet.
async fn find(shared: &Shared, storage: &Storage, id: &BackupId) -> Result<Entry, BackupError> {
    let mut cat = shared.catalogue(storage, false).await?;
    if cat.get(id).is_none() {
        cat.refresh(storage).await?;
    }
    cat.get(id)
        .cloned()
        .ok_or_else(|| BackupError::NotFound { id: id.to_string() })
}

impl Handler<ListBackups> for BackupActor {
    type Result = Reply<Vec<Entry>>;

    fn handle(&mut self, _: ListBackups, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        Box::pin(
            async move {
                let storage = shared.storage().await?;
                let cat = shared.catalogue(&storage, true).await?;
                let mut entries: Vec<Entry> = cat.entries().map(|(_, e)| e.clone()).collect();
                // Ids sort by their second, then a random suffix: two backups of one second
                // are listed in the order they were made.
                entries.sort_by_key(|e| (e.manifest.created, e.manifest.id));
                Ok(entries)
            }
            .into_actor(self),
        )
    }
}

impl Handler<ShowBackup> for BackupActor {
    type Result = Reply<Entry>;

    fn handle(&mut self, msg: ShowBackup, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        Box::pin(
            async move {
                let storage = shared.storage().await?;
                find(&shared, &storage, &msg.id).await
            }
            .into_actor(self),
        )
    }
}

impl Handler<VerifyBackup> for BackupActor {
    type Result = Reply<VerifyReport>;

    fn handle(&mut self, msg: VerifyBackup, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        Box::pin(
            async move {
                // Retention keeps the backup until the verify (or drill) ends.
                let _reader = shared.reading(msg.id).await?;
                if msg.level == Level::Drilled {
                    // A drill writes scratch targets: one heavy operation at a time.
                    let lock = shared.lock().await?;
                    return drill::drill(&shared, msg.id, msg.identity, &lock).await;
                }
                verify::verify(&shared, msg.id, msg.level, msg.identity).await
            }
            .into_actor(self),
        )
    }
}

impl Handler<PruneBackups> for BackupActor {
    type Result = Reply<PruneReport>;

    fn handle(&mut self, msg: PruneBackups, _: &mut Context<Self>) -> Self::Result {
        self.exclusive(move |shared, lock| async move {
            let storage = shared.storage().await?;
            prune::prune_locked(&shared, &storage, msg.dry_run, &lock).await
        })
    }
}

impl Handler<DeleteBackup> for BackupActor {
    type Result = Reply<DeleteReport>;

    fn handle(&mut self, msg: DeleteBackup, _: &mut Context<Self>) -> Self::Result {
        self.exclusive(move |shared, lock| async move {
            let storage = shared.storage().await?;
            prune::delete_locked(&shared, &storage, msg.id, msg.force, &lock).await
        })
    }
}

impl Handler<RestoreBackup> for BackupActor {
    type Result = Reply<RestoreReport>;

    fn handle(&mut self, msg: RestoreBackup, _: &mut Context<Self>) -> Self::Result {
        self.exclusive(move |shared, _lock| async move {
            restore::restore(
                &shared,
                msg.id,
                &msg.stores,
                msg.identity,
                &msg.targets,
                msg.force,
            )
            .await
        })
    }
}

impl Handler<LatestRun> for BackupActor {
    type Result = Reply<Option<BackupId>>;

    fn handle(&mut self, _: LatestRun, _: &mut Context<Self>) -> Self::Result {
        // Ids sort by their start time.
        let latest = self
            .running
            .or_else(|| self.runs.keys().next_back().copied());
        Box::pin(actix::fut::ready(Ok(latest)))
    }
}

impl Handler<RestoreStatus> for BackupActor {
    type Result = Reply<Option<RestoreProgress>>;

    fn handle(&mut self, _: RestoreStatus, _: &mut Context<Self>) -> Self::Result {
        Box::pin(actix::fut::ready(Ok(restore::progress(&self.shared))))
    }
}

impl Handler<BackedUpIndices> for BackupActor {
    type Result = Reply<std::collections::BTreeSet<String>>;

    fn handle(&mut self, msg: BackedUpIndices, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        Box::pin(
            async move {
                let storage = shared.storage().await?;
                let cat = shared.catalogue(&storage, true).await?;
                let level = msg
                    .min_level
                    .unwrap_or_else(|| prune::min_level(&shared.config.backup));
                Ok(retention::backed_up_indices(
                    cat.entries().map(|(_, e)| e),
                    level,
                ))
            }
            .into_actor(self),
        )
    }
}

impl BackupHandle {
    /// The lifecycle's deletion gate as the scheduler takes it: [`BackedUpIndices`] at
    /// `backup.min_level`, errors as text.
    pub fn backed_up_indices_gate(&self) -> crate::scheduler::BackedUpIndices {
        let handle = self.clone();
        std::sync::Arc::new(move || {
            let handle = handle.clone();
            Box::pin(async move {
                handle
                    .call(BackedUpIndices { min_level: None })
                    .await
                    .map_err(|e| format!("{} ({})", e, e.code()))
            })
        })
    }
}

impl Handler<PinBackup> for BackupActor {
    type Result = Reply<Entry>;

    fn handle(&mut self, msg: PinBackup, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        Box::pin(async move { prune::pin(&shared, msg.id, msg.reason).await }.into_actor(self))
    }
}

impl Handler<UnpinBackup> for BackupActor {
    type Result = Reply<Entry>;

    fn handle(&mut self, msg: UnpinBackup, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        Box::pin(async move { prune::unpin(&shared, msg.id).await }.into_actor(self))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::{ConfigErrors, LoadOptions, Loaded};

    fn load(pairs: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
        crate::load_config(&LoadOptions {
            file: None,
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        })
    }

    fn keys(e: &ConfigErrors) -> Vec<&str> {
        e.0.iter().map(|e| e.key.as_str()).collect()
    }

    const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    /// The actor against a real volume actor in temporary directories: a run answers its id
    /// at once, a second one meanwhile is busy, the first ends complete and is listed, and a
    /// checksum verification passes and is recorded.
    #[actix_rt::test]
    async fn a_run_is_answered_at_once_and_one_at_a_time() {
        use super::*;
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut c = Config::defaults().expect("defaults");
        c.volumes.root = tmp.path().join("volumes");
        c.state_dir = tmp.path().join("state");
        std::fs::create_dir_all(c.volumes.root.join("chunks/a")).expect("mkdir");
        std::fs::write(c.volumes.root.join("chunks/a/x"), vec![7u8; 300_000]).expect("write");
        let volumes = crate::volume::VolumeActor::start_with(&c.volumes, &c.supervisor);
        c.redis.enabled = false;
        let backup = BackupActor::start_with(
            &c,
            StoreHandles {
                volumes: Some(volumes),
                ..StoreHandles::default()
            },
        );
        assert!(!c.state_dir.exists(), "starting touches no disk");

        let start = || StartBackup {
            stores: vec![],
            trigger: Trigger::Api,
        };
        // Two at once: whichever takes the lock first runs, the other is refused.
        let (first, second) = tokio::join!(backup.call(start()), backup.call(start()));
        let (id, busy) = match (first, second) {
            (Ok(id), Err(busy)) | (Err(busy), Ok(id)) => (id, busy),
            other => panic!("one run, one refusal: {other:?}"),
        };
        assert_eq!(busy.code(), "busy", "{busy}");

        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let report = loop {
            match backup.call(BackupStatus { id }).await.expect("status") {
                RunStatus::Finished(report) => break report,
                RunStatus::Running { .. } => {
                    assert!(tokio::time::Instant::now() < deadline, "run never ended");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(
            report.outcome,
            BackupOutcome::Complete,
            "{:?}",
            report.error
        );
        assert!(report.listed && !report.encrypted);
        assert_eq!(report.stores["redis"].outcome, Outcome::Skipped);
        let names: Vec<String> = report
            .stores
            .values()
            .flat_map(|s| s.artifacts.iter().map(|a| a.name.clone()))
            .collect();
        assert!(
            names.contains(&"volumes/chunks.tar.zst".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"lucid-db/config.toml.zst".to_owned()),
            "{names:?}"
        );

        let listed = backup.call(ListBackups).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].manifest.id, id);
        let verified = backup
            .call(VerifyBackup {
                id,
                level: Level::Checksummed,
                identity: None,
            })
            .await
            .expect("verify");
        assert!(verified.passed() && verified.recorded);
        assert_eq!(verified.counts_as, Some(Level::Checksummed));
        let shown = backup.call(ShowBackup { id }).await.expect("show");
        assert_eq!(shown.effective_level(), Some(Level::Checksummed));
        // The lock is free again.
        let again = backup.call(start()).await.expect("a new run");
        assert_ne!(again, id);
    }

    #[test]
    fn each_backup_key_is_checked_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad_identity = dir.path().join("id.txt");
        std::fs::write(&bad_identity, "AGE-SECRET-KEY-1NOTAKEYATALL\n").expect("write");
        let bad_identity = bad_identity.to_str().expect("utf8");
        let recipients = format!("{RECIPIENT}, age1oops");
        for (env, key, needle) in [
            (
                vec![("LUCID_DB__BACKUP__RECIPIENTS", recipients.as_str())],
                vec!["backup.recipients"],
                "entry 1",
            ),
            (
                vec![("LUCID_DB__BACKUP__STORAGE", "s3")],
                vec![
                    "backup.s3.bucket",
                    "backup.s3.access_key_id_file",
                    "backup.s3.secret_access_key_file",
                ],
                "required with backup.storage",
            ),
            (
                vec![("LUCID_DB__BACKUP__IDENTITY_FILE", bad_identity)],
                vec!["backup.identity_file"],
                "line 1",
            ),
            (
                vec![("LUCID_DB__BACKUP__VOLUMES__EXCLUDE", "chunks, ../up")],
                vec!["backup.volumes.exclude"],
                "only a-z",
            ),
            (
                vec![("LUCID_DB__BACKUP__STORAGE", "tape")],
                vec!["backup.storage"],
                "tape",
            ),
        ] {
            let err = load(&env).expect_err(key[0]);
            assert_eq!(keys(&err), key, "{env:?}: {err}");
            assert!(err.to_string().contains(needle), "{env:?}: {err}");
            assert!(!err.to_string().contains("oops"), "echoed: {err}");
            assert!(!err.to_string().contains("NOTAKEY"), "echoed: {err}");
        }
    }

    #[test]
    fn s3_settings_are_checked_when_s3_is_chosen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = dir.path().join("id");
        let secret = dir.path().join("secret");
        std::fs::write(&id, "AKIDEXAMPLE\n").expect("write");
        std::fs::write(&secret, "hunter2hunter2\n").expect("write");
        let base = [
            ("LUCID_DB__BACKUP__STORAGE", "s3"),
            ("LUCID_DB__BACKUP__S3__BUCKET", "lucid-backups"),
            (
                "LUCID_DB__BACKUP__S3__ACCESS_KEY_ID_FILE",
                id.to_str().expect("utf8"),
            ),
            (
                "LUCID_DB__BACKUP__S3__SECRET_ACCESS_KEY_FILE",
                secret.to_str().expect("utf8"),
            ),
        ];
        let loaded = load(&base).expect("valid s3");
        let s3 = &loaded.config.backup.s3;
        assert_eq!(
            s3.access_key_id.as_ref().map(|s| s.expose()),
            Some("AKIDEXAMPLE")
        );
        let shown = loaded.config.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("# backup.s3.secret_access_key: set"),
            "{shown}"
        );

        for (extra, key) in [
            (
                ("LUCID_DB__BACKUP__S3__BUCKET", "Lucid_Backups"),
                "backup.s3.bucket",
            ),
            (
                (
                    "LUCID_DB__BACKUP__S3__ENDPOINT",
                    "https://AKID:hunter2@s3.example",
                ),
                "backup.s3.endpoint",
            ),
            (
                ("LUCID_DB__BACKUP__S3__ENDPOINT", "ftp://s3.example"),
                "backup.s3.endpoint",
            ),
            (
                ("LUCID_DB__BACKUP__S3__PREFIX", "a/../b"),
                "backup.s3.prefix",
            ),
            (("LUCID_DB__BACKUP__S3__REGION", " "), "backup.s3.region"),
        ] {
            let mut env = base.to_vec();
            env.push(extra);
            let err = load(&env).expect_err(key);
            assert_eq!(keys(&err), [key], "{err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        // The same settings under fs are not checked: they are not used.
        load(&[("LUCID_DB__BACKUP__S3__BUCKET", "Not_Checked")]).expect("fs ignores s3");
    }

    #[test]
    fn unencrypted_backups_are_warned_about() {
        let loaded = load(&[]).expect("defaults");
        let warnings = crate::config_warnings(&loaded.config);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].key, "backup.recipients");
        assert!(
            warnings[0].reason.contains("UNENCRYPTED"),
            "{}",
            warnings[0]
        );

        let loaded = load(&[("LUCID_DB__BACKUP__RECIPIENTS", RECIPIENT)]).expect("valid");
        assert!(crate::config_warnings(&loaded.config).is_empty());
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "a passphrase\n").expect("write");
        let loaded = load(&[(
            "LUCID_DB__BACKUP__PASSPHRASE_FILE",
            pass.to_str().expect("utf8"),
        )])
        .expect("valid");
        assert!(crate::config_warnings(&loaded.config).is_empty());
    }
}
