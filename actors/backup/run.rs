//! One backup run, from the moment it holds the backup lock to its manifest: the order of the
//! steps is the contract with the next run and with an operator reading the storage.
//!
//! 1. **Clean up** what interrupted runs left (`.partial` files, backups without a manifest),
//!    under the lock, so nothing else is writing.
//! 2. **Probe and estimate**: each database store is waited for and asked for its facts and
//!    size ([`databases`](super::databases)); a store whose backend is not there has failed
//!    already. The estimate adds the volumes' usage (their file bytes plus tar's headers) and
//!    the databases' sizes, as if nothing compressed; on fs the run is refused when it does not
//!    fit the free space or the `backups` volume's quota, naming both numbers; then it is
//!    reserved ([`ReserveQuota`]), so the writer is stopped at the reservation rather than
//!    filling the disk.
//! 3. **Keys**: passphrase mode seals a fresh identity as `key.age`, written first.
//! 4. **Artifacts**, each through the streaming pipeline: `lucid-db/config.toml` (the effective
//!    configuration, secrets redacted) and `lucid-db/mongodb-schemas.tar`; then the stores —
//!    MongoDB, Redis, Elasticsearch, the volumes (one tar each, zstd multithreaded) — one
//!    after another, or all at once with `backup.parallel_stores`. A store (or a volume) whose
//!    export fails is that store's failure, recorded with its code and message, and the
//!    others go on; a storage failure ends the run.
//! 5. **The manifest**, last — only when something usable was written. A run where every store
//!    failed writes none and removes what it wrote: it is never listed.
//!
//! The run reaches the stores only through their actors' messages; its CPU work
//! (compression, encryption, hashing, scrypt, tar of the schema files) runs on blocking
//! threads, never on the backup actor's event loop.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{FutureExt, Stream, StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::Map;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::databases;
use super::id::BackupId;
use super::keys::BackupKey;
use super::lock::RunLock;
use super::manifest::{ArtifactRecord, Encryption, Manifest, Outcome, StoreRecord, Trigger};
use super::pipeline::{self, Codec, PipelineError};
use super::select::Plan;
use super::storage::{Cleanup, KEY, MANIFEST, Storage};
use super::{BackupError, Shared};
use crate::config::BackupStorage;
use crate::events::{
    self, BackupCleanedUp, BackupCompleted, BackupFailed, BackupPartial, BackupProgress,
    BackupStarted,
};
use crate::volume::{
    ExportVolume, ListVolumes, MeasureUsage, ReserveQuota, VolumeError, VolumeHandle, VolumeName,
};

/// The manifest's name for the store that holds lucid-db's own files.
pub const LUCID_DB: &str = "lucid-db";
/// Bytes a tar stream spends per entry beyond its data, at most (a header, padding, and a
/// long name's extra header).
const TAR_PER_ENTRY: u64 = 1536;
/// Room kept for the configuration, the schema files, key.age and the manifest.
const SMALL_FILES: u64 = 4 << 20;
/// How often a run may emit `backup.progress`.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How a backup ended, over all its stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupOutcome {
    /// Every selected store is complete.
    Complete,
    /// Some selected stores (or volumes) failed; the rest is complete and usable.
    Partial,
    /// Nothing usable was backed up.
    Failed,
}

impl BackupOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupOutcome::Complete => "complete",
            BackupOutcome::Partial => "partial",
            BackupOutcome::Failed => "failed",
        }
    }
}

/// The outcome a manifest's stores add up to: failed when no store holds an artifact of data
/// (lucid-db's own files do not count: a backup of nothing but the configuration restores
/// nothing), partial when some store failed (lucid-db's own files too: a restore on a new
/// machine would miss them), complete otherwise. Skipped stores count for nothing.
pub fn outcome_of(stores: &BTreeMap<String, StoreRecord>) -> BackupOutcome {
    let usable = stores
        .iter()
        .any(|(name, s)| name != LUCID_DB && !s.artifacts.is_empty());
    let failed = stores
        .values()
        .any(|s| matches!(s.outcome, Outcome::Failed { .. }));
    match (usable, failed) {
        (false, _) => BackupOutcome::Failed,
        (true, true) => BackupOutcome::Partial,
        (true, false) => BackupOutcome::Complete,
    }
}

/// A running backup's progress, as [`super::BackupStatus`] answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub artifacts_planned: u64,
    pub artifacts_done: u64,
    /// The artifact being written.
    pub current: Option<String>,
    /// Source bytes read so far.
    pub bytes_in: u64,
    /// Bytes stored by the artifacts complete so far.
    pub bytes_stored: u64,
    /// The estimate the run reserved room for (0 until made).
    pub estimate_bytes: u64,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub id: BackupId,
    pub trigger: Trigger,
    pub started: DateTime<Utc>,
    pub ended: DateTime<Utc>,
    pub outcome: BackupOutcome,
    /// Per store, as the manifest has it (as far as the run got, when it failed).
    pub stores: BTreeMap<String, StoreRecord>,
    pub encrypted: bool,
    pub bytes_in: u64,
    pub bytes_stored: u64,
    /// Why the run failed as a whole (storage, room, keys, every store failing); `None` when
    /// it wrote its manifest.
    pub error: Option<BackupError>,
    /// What the run's cleanup removed first.
    pub cleaned: Cleanup,
    /// Whether its manifest was written: the backup is listed.
    pub listed: bool,
}

/// Allows one event per `every`; the first one at once. Driven by tokio's clock, so tests
/// advance paused time instead of sleeping.
#[derive(Debug, Clone)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle { every, last: None }
    }

    /// Whether an event may go out at `now` (and if so, `now` is the last one).
    pub fn ready(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// What a run needs, handed over by the actor once the lock is held.
pub(super) struct Job {
    pub shared: Arc<Shared>,
    pub id: BackupId,
    pub trigger: Trigger,
    pub plan: Plan,
    pub progress: Arc<Mutex<Progress>>,
    pub lock: RunLock,
}

/// What a run has done so far, kept across an early return.
#[derive(Default)]
struct Record {
    stores: BTreeMap<String, StoreRecord>,
    cleaned: Cleanup,
    /// Where it writes, once known: to remove what it wrote if it fails.
    storage: Option<Storage>,
}

/// Counts source bytes into the progress and emits `backup.progress` at most once a second.
/// Shared by the stores of a run (they may run at once).
pub(super) struct Meter {
    id: String,
    progress: Arc<Mutex<Progress>>,
    throttle: Mutex<Throttle>,
}

impl Meter {
    fn update(&self, f: impl FnOnce(&mut Progress)) {
        let mut p = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut p);
        let ready = self
            .throttle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ready(Instant::now());
        if ready {
            events::emit(BackupProgress {
                id: self.id.clone(),
                artifact: p.current.clone().unwrap_or_default(),
                artifacts_done: p.artifacts_done,
                bytes_in: p.bytes_in,
                bytes_stored: p.bytes_stored,
            });
        }
    }
}

/// The metrics of a run that wrote a manifest: the run's outcome, and each store's bytes,
/// time and (when complete) the time of its last success; a skipped store is not counted.
fn record_metrics(report: &RunReport) {
    crate::metrics::backup_run(report.outcome.as_str());
    for (store, r) in &report.stores {
        if r.outcome == Outcome::Skipped {
            continue;
        }
        let elapsed = r
            .started
            .zip(r.ended)
            .and_then(|(s, e)| (e - s).to_std().ok());
        let ended = r.ended.unwrap_or(report.ended);
        crate::metrics::backup_store(crate::metrics::StoreBackup {
            store,
            complete: r.outcome == Outcome::Complete,
            ended_unix: ended.timestamp_millis() as f64 / 1000.0,
            elapsed,
            source_bytes: r.artifacts.iter().map(|a| a.bytes_in).sum(),
            stored_bytes: r.artifacts.iter().map(|a| a.bytes_stored).sum(),
        });
    }
}

/// Runs the job to its end; see the module doc.
pub(super) async fn run(job: Job) -> RunReport {
    let started = Utc::now();
    let clock = Instant::now();
    let encrypted = job.shared.encrypts();
    let stores = job.plan.store_names().join(",");
    events::emit(BackupStarted {
        id: job.id.to_string(),
        stores: stores.clone(),
        trigger: job.trigger.as_str(),
        encrypted,
    });
    let meter = Meter {
        id: job.id.to_string(),
        progress: job.progress.clone(),
        throttle: Mutex::new(Throttle::new(PROGRESS_EVERY)),
    };
    let mut record = Record::default();
    let result = execute(&job, &mut record, &meter).await;
    let duration_ms = clock.elapsed().as_millis() as u64;
    let (bytes_in, bytes_stored) = {
        let p = job.progress.lock().unwrap_or_else(PoisonError::into_inner);
        (p.bytes_in, p.bytes_stored)
    };
    let mut report = RunReport {
        id: job.id,
        trigger: job.trigger,
        started,
        ended: Utc::now(),
        outcome: BackupOutcome::Failed,
        stores: BTreeMap::new(),
        encrypted,
        bytes_in,
        bytes_stored,
        error: None,
        cleaned: std::mem::take(&mut record.cleaned),
        listed: false,
    };
    match result {
        Ok(manifest) => {
            report.outcome = outcome_of(&manifest.stores);
            report.stores = manifest.stores.clone();
            report.listed = true;
            if let Some(storage) = &record.storage
                && let Err(e) = job.shared.catalogue_insert(storage, manifest).await
            {
                // Storage is the truth: the next open of the catalogue picks the backup up.
                tracing::warn!(id = %job.id, error = %e, code = e.code(), "backup catalogue not updated");
            }
            record_metrics(&report);
            let failed: Vec<String> = failures(&report.stores)
                .into_iter()
                .map(|(what, _, _)| what)
                .collect();
            match report.outcome {
                BackupOutcome::Complete => events::emit(BackupCompleted {
                    id: job.id.to_string(),
                    stores,
                    bytes_in,
                    bytes_stored,
                    duration_ms,
                    encrypted,
                }),
                _ => events::emit(BackupPartial {
                    id: job.id.to_string(),
                    stores,
                    failed: failed.join(","),
                    code: failures(&report.stores)
                        .first()
                        .map_or("failed", |(_, code, _)| code),
                    bytes_in,
                    bytes_stored,
                    duration_ms,
                    encrypted,
                }),
            }
        }
        Err(e) => {
            report.stores = std::mem::take(&mut record.stores);
            // A run that stops on its own removes what it wrote; an interrupted one (a fail
            // point standing in for a crash) leaves it, as a crash would, to the next cleanup.
            if !matches!(e, BackupError::Interrupted { .. })
                && let Some(storage) = &record.storage
                && let Err(del) = storage.delete_backup(&job.id).await
            {
                tracing::warn!(id = %job.id, error = %del, "a failed backup's files were not removed; the next run will");
            }
            crate::metrics::backup_run(BackupOutcome::Failed.as_str());
            events::emit(BackupFailed {
                id: job.id.to_string(),
                stores,
                code: e.code(),
                error: e.to_string(),
                duration_ms,
                encrypted,
            });
            report.error = Some(e);
        }
    }
    // The storage (and with it the quota reservation) goes before the lock.
    drop(record);
    drop(job.lock);
    report
}

/// Every failure in `stores`: (store or `volumes:NAME`, code, message).
pub fn failures(stores: &BTreeMap<String, StoreRecord>) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    for (name, s) in stores {
        if let Outcome::Failed { code, message } = &s.outcome {
            // Per volume when the store says which.
            let per_volume = s
                .source
                .get("volumes")
                .and_then(|v| v.as_object())
                .map(|vols| {
                    vols.iter()
                        .filter_map(|(vol, state)| {
                            let code = state.get("code")?.as_str()?;
                            let message = state.get("message").and_then(|m| m.as_str());
                            Some((
                                format!("{name}:{vol}"),
                                intern(code),
                                message.unwrap_or_default().to_owned(),
                            ))
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            if per_volume.is_empty() {
                out.push((name.clone(), intern(code), message.clone()));
            } else {
                out.extend(per_volume);
            }
        }
    }
    out
}

/// A code read back from a manifest as one of the known `&'static str` codes (events carry
/// static codes: a low-cardinality list), `failed` for anything else.
fn intern(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "not_found",
        "io",
        "path_escape",
        "busy",
        "corrupt",
        "stream_idle",
        "not_delivered",
        "root_unavailable",
        "interrupted",
        "source_failed",
        "unavailable",
        "over_reservation",
        "schema_files",
        "disabled",
        "deadline_exceeded",
        "connection_refused",
        "connection_dropped",
        "timeout",
        "server_error",
        "invalid",
        "codec",
    ];
    KNOWN
        .iter()
        .copied()
        .find(|k| *k == code)
        .unwrap_or("failed")
}

async fn execute(job: &Job, record: &mut Record, meter: &Meter) -> Result<Manifest, BackupError> {
    let shared = &job.shared;
    let base = shared.storage().await?;
    base.check().await?;
    let cleaned = base.cleanup(Some(&job.id)).await?;
    if !cleaned.partials.is_empty() || !cleaned.incomplete.is_empty() || !cleaned.uploads.is_empty()
    {
        events::emit(BackupCleanedUp {
            id: job.id.to_string(),
            partials: cleaned.partials.len() as u64,
            incomplete: cleaned.incomplete.len() as u64,
            uploads: cleaned.uploads.len() as u64,
        });
    }
    record.cleaned = cleaned;
    record.storage = Some(base.clone());

    // The estimate, per volume; a volume that cannot be measured has failed already.
    let mut failed: BTreeMap<VolumeName, (&'static str, String)> = BTreeMap::new();
    let mut raw = 0u64;
    let volumes = match &job.plan.volumes {
        Some(list) => {
            let handle = shared.volumes("volumes")?;
            for name in list {
                match usage_of(handle, name).await {
                    Ok(bytes) => raw = raw.saturating_add(bytes),
                    Err(e) => {
                        failed.insert(name.clone(), (e.code(), e.to_string()));
                    }
                }
            }
            Some((handle, list))
        }
        None => None,
    };
    // The database stores: waited for, their facts and sizes read; one that is not there has
    // failed before it started.
    let stores = &shared.stores;
    let mut db_failed: BTreeMap<&'static str, StoreRecord> = BTreeMap::new();
    let mut db_bytes = 0u64;
    let mut planned = 0u64;
    let mongo = match (&job.plan.mongodb, &stores.mongo) {
        (Some(collections), Some(handle)) => {
            match databases::probe_mongo(shared, handle, collections).await {
                Ok(probe) => {
                    db_bytes = db_bytes.saturating_add(probe.estimate);
                    planned += 2 * probe.take.len() as u64;
                    Some((handle, probe))
                }
                Err(f) => {
                    db_failed.insert("mongodb", databases::failed_record(&f, Map::new()));
                    None
                }
            }
        }
        _ => None,
    };
    let redis = match (job.plan.redis, &stores.redis) {
        (true, Some(handle)) => match databases::probe_redis(shared, handle).await {
            Ok(probe) => {
                db_bytes = db_bytes.saturating_add(probe.estimate);
                planned += 1;
                Some((handle, probe))
            }
            Err(f) => {
                db_failed.insert("redis", databases::failed_record(&f, Map::new()));
                None
            }
        },
        _ => None,
    };
    let search = match (&job.plan.elasticsearch, &stores.search) {
        (Some(indices), Some(handle)) => {
            match databases::probe_search(shared, handle, indices).await {
                Ok(probe) => {
                    db_bytes = db_bytes.saturating_add(probe.estimate);
                    planned += 2 * probe.take.len() as u64;
                    Some((handle, probe))
                }
                Err(f) => {
                    db_failed.insert("elasticsearch", databases::failed_record(&f, Map::new()));
                    None
                }
            }
        }
        _ => None,
    };
    let raw = raw.saturating_add(db_bytes);
    let estimate = raw.saturating_add(raw / 100).saturating_add(SMALL_FILES);
    planned += 2 + volumes.map_or(0, |(_, l)| (l.len() - failed.len()) as u64);
    meter.update(|p| {
        p.estimate_bytes = estimate;
        p.artifacts_planned = planned;
    });
    let storage = match shared.config.backup.storage {
        BackupStorage::Fs => {
            let reservation = match reserve(shared, estimate).await {
                Err(no_room @ BackupError::NoRoom { .. }) if shared.config.backup.prune_before => {
                    make_room(job, &base, estimate, no_room).await?
                }
                other => other?,
            };
            base.charged_to(Arc::new(reservation))
        }
        BackupStorage::S3 => base,
    };
    record.storage = Some(storage.clone());

    // Keys: recipients from the configuration, and passphrase mode's own key, sealed first.
    let configured = shared.recipients.clone().map_err(BackupError::Key)?;
    let mut recipients = configured.clone();
    if let Some(passphrase) = &shared.config.backup.passphrase {
        let key = BackupKey::generate();
        let pass = passphrase.clone();
        let at = job.id.time();
        let (key, sealed) = tokio::task::spawn_blocking(move || {
            let sealed = key.seal(&pass, at, None);
            (key, sealed)
        })
        .await
        .map_err(|e| BackupError::Interrupted {
            reason: format!("sealing key.age: {e}"),
        })?;
        storage
            .put_file(&job.id, KEY, sealed.map_err(BackupError::Key)?)
            .await?;
        recipients.push(key.recipient());
    }
    let encryption = Encryption {
        recipients: configured.to_strings(),
        passphrase: shared.config.backup.passphrase.is_some(),
    };
    let codec = Codec {
        compression: shared.config.backup.compression,
        zstd_workers: 0,
        recipients,
    };
    let mut manifest = Manifest::new(
        job.id,
        Utc::now(),
        hostname(),
        job.trigger,
        encryption,
        codec.compression,
    );

    // lucid-db's own files: small, first, so a restore on a new machine has them.
    let own = lucid_db_store(job, &storage, &codec, meter).await?;
    record.stores.insert(LUCID_DB.to_owned(), own);

    // The stores, one after another (a Pi's disk and CPU are not fought over) or at once.
    let (storage, codec) = (&storage, &codec);
    let mongo_run = async {
        match mongo {
            Some((handle, probe)) => {
                Some(databases::mongodb_store(job, handle, probe, storage, codec, meter).await)
            }
            None => None,
        }
    };
    let redis_run = async {
        match redis {
            Some((handle, probe)) => {
                Some(databases::redis_store(job, handle, probe, storage, codec, meter).await)
            }
            None => None,
        }
    };
    let search_run = async {
        match search {
            Some((handle, probe)) => {
                Some(databases::search_store(job, handle, probe, storage, codec, meter).await)
            }
            None => None,
        }
    };
    let volumes_run = async {
        match volumes {
            Some((handle, list)) => {
                let volume_codec = Codec {
                    zstd_workers: zstd_workers(),
                    ..codec.clone()
                };
                Some(volumes_store(job, handle, list, failed, storage, &volume_codec, meter).await)
            }
            None => None,
        }
    };
    let results = if shared.config.backup.parallel_stores {
        let (m, r, e, v) = tokio::join!(mongo_run, redis_run, search_run, volumes_run);
        vec![
            ("mongodb", m),
            ("redis", r),
            ("elasticsearch", e),
            ("volumes", v),
        ]
    } else {
        let runs = [
            ("mongodb", mongo_run.boxed_local()),
            ("redis", redis_run.boxed_local()),
            ("elasticsearch", search_run.boxed_local()),
            ("volumes", volumes_run.boxed_local()),
        ];
        let mut results = Vec::new();
        for (name, run) in runs {
            let result = run.await;
            // A failure that ends the run (storage): the stores after it are not started.
            let ends = matches!(result, Some(Err(_)));
            results.push((name, result));
            if ends {
                break;
            }
        }
        results
    };
    for (name, result) in results {
        if let Some(result) = result {
            record.stores.insert(name.to_owned(), result?);
        }
    }
    for (name, failed) in db_failed {
        record.stores.insert(name.to_owned(), failed);
    }
    for store in &job.plan.skipped {
        let mut source = serde_json::Map::new();
        let reason = if shared.store_enabled(store) {
            "its actor does not run in this process"
        } else {
            "disabled in the configuration"
        };
        source.insert("reason".to_owned(), reason.into());
        record.stores.insert(
            (*store).to_owned(),
            StoreRecord {
                outcome: Outcome::Skipped,
                started: None,
                ended: None,
                source,
                artifacts: Vec::new(),
            },
        );
    }
    manifest.stores = record.stores.clone();

    before_manifest()?;
    if outcome_of(&manifest.stores) == BackupOutcome::Failed {
        return Err(BackupError::NothingBackedUp {
            failures: failures(&manifest.stores)
                .into_iter()
                .map(|(what, code, message)| (what, code.to_owned(), message))
                .collect(),
        });
    }
    storage
        .put_file(&job.id, MANIFEST, manifest.to_json())
        .await?;
    Ok(manifest)
}

/// The fail point between the last artifact and the manifest (`failpoints` builds only): a
/// crash there must leave a backup that is never listed and that the next run removes.
fn before_manifest() -> Result<(), BackupError> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("backup-before-manifest", |_| Err(
        BackupError::Interrupted {
            reason: "fail point backup-before-manifest".to_owned(),
        }
    ));
    Ok(())
}

/// Bytes a volume's tar stream will hold, at most: its file bytes and a header's worth per
/// entry. Fresh usage from the actor's cache when it has one, else measured now.
async fn usage_of(handle: &VolumeHandle, name: &VolumeName) -> Result<u64, VolumeError> {
    let cached = handle
        .call(ListVolumes)
        .await?
        .into_iter()
        .find(|v| v.meta.name == *name)
        .and_then(|v| v.usage);
    let usage = match cached {
        Some(u) => u,
        None => handle.call(MeasureUsage { name: name.clone() }).await?,
    };
    let t = usage.tally;
    let entries = t.files + t.dirs + t.symlinks + 1;
    Ok(t.apparent_bytes
        .saturating_add(entries.saturating_mul(TAR_PER_ENTRY))
        .saturating_add(1024))
}

/// `backup.prune_before`: the estimate did not fit (`no_room`), so the retention plan runs
/// (under this run's lock) and the reservation is tried again, once. When retention cannot
/// run or frees too little, the run fails with the first `no_room` (its numbers are the ones
/// the operator needs), and the prune's own outcome is in its events.
async fn make_room(
    job: &Job,
    storage: &Storage,
    estimate: u64,
    no_room: BackupError,
) -> Result<crate::volume::Reservation, BackupError> {
    let shared = &job.shared;
    match super::prune::prune_locked(shared, storage, false, &job.lock).await {
        Ok(report) if !report.deleted.is_empty() => {
            tracing::info!(
                id = %job.id,
                deleted = report.deleted.len(),
                bytes_freed = report.bytes_freed,
                "the backup did not fit: retention deleted expired backups, trying again"
            );
            match reserve(shared, estimate).await {
                Err(BackupError::NoRoom { .. }) => Err(no_room),
                other => other,
            }
        }
        Ok(_) => Err(no_room),
        Err(e) => {
            tracing::warn!(id = %job.id, code = e.code(), error = %e, "the backup did not fit and retention could not run");
            Err(no_room)
        }
    }
}

/// Checks the estimate against the backups volume's free space and quota, then reserves it.
async fn reserve(
    shared: &Shared,
    estimate: u64,
) -> Result<crate::volume::Reservation, BackupError> {
    let handle = shared.volumes("the backups volume")?;
    let backups = VolumeName::new("backups").map_err(BackupError::Volume)?;
    let usage = handle
        .call(MeasureUsage {
            name: backups.clone(),
        })
        .await?;
    // The pre-flight also says when the backups volume is full at its current rate.
    if let Ok(info) = handle
        .call(crate::volume::InspectVolume {
            name: backups.clone(),
        })
        .await
        && let Some(forecast) = info.forecast
    {
        tracing::info!(forecast = %forecast.describe(), estimate, "backups volume: {} at the rate of the last 7 days", forecast.describe());
    }
    if estimate > usage.fs.free_bytes {
        return Err(BackupError::NoRoom {
            needed: estimate,
            available: usage.fs.free_bytes,
            limit: "free space on the backups volume's file system".to_owned(),
        });
    }
    let room = usage.quota_bytes.saturating_sub(usage.tally.bytes);
    if estimate > room {
        return Err(BackupError::NoRoom {
            needed: estimate,
            available: room,
            limit: format!(
                "the backups volume's quota ({} bytes, {} used)",
                usage.quota_bytes, usage.tally.bytes
            ),
        });
    }
    handle
        .call(ReserveQuota {
            name: backups,
            bytes: estimate,
        })
        .await
        .map_err(|e| match e {
            VolumeError::OverQuota {
                used,
                quota,
                needed,
                ..
            } => BackupError::NoRoom {
                needed,
                available: quota.saturating_sub(used),
                limit: format!("the backups volume's quota ({quota} bytes, {used} used)"),
            },
            other => BackupError::Volume(other),
        })
}

/// `lucid-db/config.toml` and `lucid-db/mongodb-schemas.tar`.
async fn lucid_db_store(
    job: &Job,
    storage: &Storage,
    codec: &Codec,
    meter: &Meter,
) -> Result<StoreRecord, BackupError> {
    let started = Utc::now();
    let mut artifacts = Vec::new();
    let mut failure = None;
    let config = Bytes::from(job.shared.redacted_config.clone().into_bytes());
    let name = format!("{LUCID_DB}/config.toml{}", codec.suffix());
    let record = write(
        job,
        storage,
        &name,
        "config.toml",
        codec,
        stream::iter([Ok::<_, String>(config)]),
        meter,
    )
    .await;
    match record {
        Ok(r) => artifacts.push(r),
        Err(e) => return Err(e),
    }
    let name = format!("{LUCID_DB}/mongodb-schemas.tar{}", codec.suffix());
    let schema_dir = job.shared.config.mongodb.schema_dir.clone();
    match write(
        job,
        storage,
        &name,
        "mongodb-schemas",
        codec,
        tar_schemas(schema_dir),
        meter,
    )
    .await
    {
        Ok(r) => artifacts.push(r),
        Err(BackupError::Pipeline(e @ PipelineError::Source { .. })) => {
            failure = Some(Outcome::Failed {
                code: "schema_files".to_owned(),
                message: e.to_string(),
            });
        }
        Err(e) => return Err(e),
    }
    Ok(StoreRecord {
        outcome: failure.unwrap_or(Outcome::Complete),
        started: Some(started),
        ended: Some(Utc::now()),
        source: serde_json::Map::new(),
        artifacts,
    })
}

/// One tar per volume; a volume's own failure is recorded and the next one goes on.
async fn volumes_store(
    job: &Job,
    handle: &VolumeHandle,
    list: &[VolumeName],
    mut failed: BTreeMap<VolumeName, (&'static str, String)>,
    storage: &Storage,
    codec: &Codec,
    meter: &Meter,
) -> Result<StoreRecord, BackupError> {
    let started = Utc::now();
    let mut artifacts = Vec::new();
    let mut per_volume = serde_json::Map::new();
    for name in list {
        if failed.contains_key(name) {
            continue;
        }
        let artifact = format!("volumes/{name}.tar{}", codec.suffix());
        let result = match handle.call(ExportVolume { name: name.clone() }).await {
            Ok(feed) => {
                let mut code: Option<&'static str> = None;
                let source = feed.inspect(|item| {
                    if let Err(e) = item {
                        code.get_or_insert(e.code());
                    }
                });
                match write(job, storage, &artifact, name.as_str(), codec, source, meter).await {
                    Ok(r) => Ok(r),
                    Err(BackupError::Pipeline(e @ PipelineError::Source { .. })) => {
                        Err((code.unwrap_or("source_failed"), e.to_string()))
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => Err((e.code(), e.to_string())),
        };
        match result {
            Ok(r) => {
                let mut state = serde_json::Map::new();
                state.insert("outcome".to_owned(), "complete".into());
                state.insert("bytes_in".to_owned(), r.bytes_in.into());
                per_volume.insert(name.to_string(), state.into());
                artifacts.push(r);
            }
            Err(f) => {
                failed.insert(name.clone(), f);
            }
        }
    }
    for (name, (code, message)) in &failed {
        let mut state = serde_json::Map::new();
        state.insert("outcome".to_owned(), "failed".into());
        state.insert("code".to_owned(), (*code).into());
        state.insert("message".to_owned(), message.clone().into());
        per_volume.insert(name.to_string(), state.into());
    }
    let outcome = match failed.first_key_value() {
        None => Outcome::Complete,
        Some((name, (code, message))) => Outcome::Failed {
            code: (*code).to_owned(),
            message: if failed.len() == 1 {
                format!("volume {name}: {message}")
            } else {
                format!(
                    "{} volumes failed ({}); volume {name}: {message}",
                    failed.len(),
                    failed
                        .keys()
                        .map(VolumeName::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        },
    };
    let mut source = serde_json::Map::new();
    source.insert("volumes".to_owned(), per_volume.into());
    Ok(StoreRecord {
        outcome,
        started: Some(started),
        ended: Some(Utc::now()),
        source,
        artifacts,
    })
}

/// One artifact through the pipeline, counted into the progress.
pub(super) async fn write<S, B, E>(
    job: &Job,
    storage: &Storage,
    name: &str,
    logical: &str,
    codec: &Codec,
    source: S,
    meter: &Meter,
) -> Result<ArtifactRecord, BackupError>
where
    S: Stream<Item = Result<B, E>>,
    B: Into<Bytes>,
    E: std::fmt::Display,
{
    meter.update(|p| p.current = Some(name.to_owned()));
    let counted = source.map(|item| {
        item.map(|chunk| {
            let chunk: Bytes = chunk.into();
            let n = chunk.len() as u64;
            meter.update(|p| p.bytes_in += n);
            chunk
        })
    });
    let record = pipeline::write_artifact(storage, &job.id, name, logical, codec, counted)
        .await
        .map_err(BackupError::Pipeline)?;
    meter.update(|p| {
        p.artifacts_done += 1;
        p.bytes_stored += record.bytes_stored;
        p.current = None;
    });
    Ok(record)
}

/// zstd workers for volumes: the cores, at most four (a Pi has four).
fn zstd_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4) as u32)
}

/// This machine's name, for the manifest.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and the read below stops at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The MongoDB schema files as a tar stream: the regular files of `mongodb.schema_dir`, or
/// the built-in ones when it is empty. Built on a blocking thread, sent in chunks.
fn tar_schemas(schema_dir: PathBuf) -> impl Stream<Item = Result<Bytes, String>> {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, String>>(4);
    tokio::task::spawn_blocking(move || {
        let writer = ChunkSender {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(e) = write_schemas(&schema_dir, writer) {
            let _ = tx.blocking_send(Err(e.to_string()));
        }
    });
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

const CHUNK: usize = 64 << 10;

fn write_schemas(dir: &Path, writer: ChunkSender) -> io::Result<()> {
    let mut builder = tar::Builder::new(writer);
    builder.mode(tar::HeaderMode::Deterministic);
    if dir.as_os_str().is_empty() {
        for c in crate::mongo::Collection::ALL {
            let text = c.builtin_schema().as_bytes();
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, format!("{}.json", c.name()), text)?;
        }
    } else {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for path in files {
            let name = path.file_name().map(PathBuf::from).unwrap_or_default();
            builder.append_path_with_name(&path, name)?;
        }
    }
    let mut writer = builder.into_inner()?;
    writer.flush()
}

/// Sends what is written in [`CHUNK`]-sized pieces, waiting while the channel is full.
struct ChunkSender {
    tx: mpsc::Sender<Result<Bytes, String>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::other("the reader stopped"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(outcome: Outcome, artifacts: usize) -> StoreRecord {
        StoreRecord {
            outcome,
            started: None,
            ended: None,
            source: serde_json::Map::new(),
            artifacts: (0..artifacts)
                .map(|i| ArtifactRecord {
                    name: format!("x/{i}"),
                    logical: "x".into(),
                    bytes_in: 1,
                    bytes_stored: 1,
                    sha256: "0".repeat(64),
                })
                .collect(),
        }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            code: "io".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn the_outcome_adds_up_the_stores() {
        use BackupOutcome::*;
        type Case<'a> = (&'a str, Vec<(&'a str, StoreRecord)>, BackupOutcome);
        let cases: Vec<Case> = vec![
            (
                "all complete",
                vec![
                    (LUCID_DB, store(Outcome::Complete, 2)),
                    ("volumes", store(Outcome::Complete, 3)),
                ],
                Complete,
            ),
            (
                "skipped stores count for nothing",
                vec![
                    ("volumes", store(Outcome::Complete, 1)),
                    ("redis", store(Outcome::Skipped, 0)),
                ],
                Complete,
            ),
            (
                "one volume failed, others written",
                vec![
                    (LUCID_DB, store(Outcome::Complete, 2)),
                    ("volumes", store(failed(), 2)),
                ],
                Partial,
            ),
            (
                "the schema files failed",
                vec![
                    (LUCID_DB, store(failed(), 1)),
                    ("volumes", store(Outcome::Complete, 2)),
                ],
                Partial,
            ),
            (
                "every volume failed: only lucid-db's own files",
                vec![
                    (LUCID_DB, store(Outcome::Complete, 2)),
                    ("volumes", store(failed(), 0)),
                ],
                Failed,
            ),
            ("nothing at all", vec![], Failed),
        ];
        for (case, stores, want) in cases {
            let map = stores.into_iter().map(|(n, s)| (n.to_owned(), s)).collect();
            assert_eq!(outcome_of(&map), want, "{case}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn progress_goes_out_at_most_once_a_second() {
        let mut t = Throttle::new(PROGRESS_EVERY);
        let mut fired = Vec::new();
        let start = Instant::now();
        // Ticks every 300 ms for 3.3 s of paused time: the first at once, then each that is a
        // whole second after the last one that went out.
        for _ in 0..12 {
            if t.ready(Instant::now()) {
                fired.push(Instant::now().duration_since(start).as_millis());
            }
            tokio::time::advance(Duration::from_millis(300)).await;
        }
        assert_eq!(fired, [0, 1200, 2400]);
    }

    #[test]
    fn failures_name_each_volume() {
        let mut volumes = store(
            Outcome::Failed {
                code: "io".into(),
                message: "2 volumes failed".into(),
            },
            1,
        );
        volumes.source.insert(
            "volumes".into(),
            serde_json::json!({
                "chunks": {"outcome": "complete", "bytes_in": 5},
                "logs": {"outcome": "failed", "code": "path_escape", "message": "a symlink"},
                "odd": {"outcome": "failed", "code": "made_up", "message": "?"},
            }),
        );
        let map = BTreeMap::from([("volumes".to_owned(), volumes)]);
        let got = failures(&map);
        assert_eq!(
            got,
            vec![
                (
                    "volumes:logs".to_owned(),
                    "path_escape",
                    "a symlink".to_owned()
                ),
                ("volumes:odd".to_owned(), "failed", "?".to_owned()),
            ]
        );
    }
}
