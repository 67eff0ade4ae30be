//! Restoring a backup into the stores: `lucid-db backup restore ID [--stores …]`.
//!
//! A restore holds the backup lock (no backup, prune or second restore meanwhile, here or in
//! another process) and the backup's reader lock (retention keeps it). Then, in order:
//!
//! 1. **Selection**: the stores and artifacts the caller names, from the manifest in storage
//!    (not the catalogue: what storage holds now is what will be restored); by default every
//!    store in the backup that holds artifacts. A store that failed in the backup before it
//!    wrote anything cannot be restored from it (`not_in_backup`); the artifacts a failed store
//!    completed are whole and restore.
//! 2. **Checksums**: every selected artifact's stored bytes (the metadata files beside the data
//!    too) against the manifest's SHA-256, and each database artifact decoded to its end with
//!    its counts against the source facts (as `verify --level decoded`), before anything is
//!    written — a damaged or cut backup changes nothing (exit 65), not even a target `--force`
//!    would replace.
//! 3. **Targets**: each target is looked at, and a non-empty one refuses the whole restore
//!    unless `force` — before anything is written, so a refusal changes nothing. Non-empty
//!    means it holds a document, a `lucid:*` key or a file: the empty collections, indices and
//!    volumes lucid-db's own bootstrap creates do not count.
//! 4. **Import**, one artifact after another, through each store's import (the one contract,
//!    [`crate::transfer`]): the artifact is read from storage, hashed again, decrypted,
//!    decompressed and decoded by its format's reader ([`super::formats`]) on a blocking
//!    thread, and its items are streamed into the import through a bounded channel. The
//!    stream ends only once the artifact's digest matched again: a byte that changed since
//!    step 2, or an item the reader cannot decode (a BSON document, a RESP command or an
//!    NDJSON line cut or mangled), ends the stream with an error naming the artifact, so the
//!    store's import undoes what it wrote instead of finishing a restore from bad bytes.
//!
//! What each store's import adds over the stock tools (docs/backup.md): MongoDB recreates the
//! collection with its validator and indexes from `.metadata.json` (into `--to-db`); Redis
//! restores with the absolute expiry (never an expired key), skips `redis.not_restorable`
//! keys and raises fencing counters to max(current, restored) + margin (into `--to-redis-db`);
//! Elasticsearch creates the index from its create body, then `_bulk`-loads the documents,
//! the index and its aliases renamed under `--index-prefix`.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::formats::{bulk, mongodump, resp};
use super::id::BackupId;
use super::keys::Identities;
use super::manifest::{ArtifactRecord, Manifest, StoreRecord};
use super::pipeline::{self, Decoding, PipelineError};
use super::select::StoreSelector;
use super::storage::{MANIFEST, Storage};
use super::{BackupError, Shared};
use crate::Backend;
use crate::events::{self, BackupRestoreFailed, BackupRestored};
use crate::mongo::Collection;
use crate::transfer::{Existing, ImportOptions, TargetState};
use crate::volume::{InspectVolume, VolumeError, VolumeName};

/// Plain bytes an artifact's stream holds at most in flight (chunks of 64 KiB).
const IN_FLIGHT: usize = 16;
const CHUNK: usize = 64 << 10;
/// Decoded items (documents, keys) a stream holds at most in flight: enough for an import's
/// batch to be ready when it asks, few enough that large items stay bounded.
const ITEMS_IN_FLIGHT: usize = 128;

/// Where a restore writes, when not where the backup came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// The volume a single selected volume is restored into.
    pub to_volume: Option<VolumeName>,
    /// The MongoDB database collections are restored into (default: `mongodb.database`).
    pub to_db: Option<String>,
    /// The Redis database index keys are restored into (default: the one `redis.url` selects).
    pub to_redis_db: Option<u32>,
    /// Put before every restored Elasticsearch index and alias name (default: none).
    pub index_prefix: Option<String>,
}

/// What one artifact's import did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restored {
    pub store: String,
    pub artifact: String,
    /// The store's own name for the target (a volume, `lucid.users`, `db0`, an index).
    pub target: String,
    pub read: u64,
    pub written: u64,
    pub skipped: u64,
    /// Of `skipped`, the items the store refused alone (a Redis key whose payload it would
    /// not take): a restore goes on without them, a drill fails.
    pub refused: u64,
    pub elapsed_ms: u64,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreReport {
    pub id: BackupId,
    pub restored: Vec<Restored>,
    pub elapsed_ms: u64,
}

/// One artifact to restore, and where.
#[derive(Debug, Clone)]
pub(super) struct Step {
    pub store: &'static str,
    /// The data artifact (`.tar`, `.bson`, `.resp`, `.ndjson`).
    pub record: ArtifactRecord,
    pub target: Target,
}

#[derive(Debug, Clone)]
pub(super) enum Target {
    Volume(VolumeName),
    Collection {
        collection: Collection,
        /// The target database; `None` until resolved (`mongodb.database`).
        database: Option<String>,
        /// `.metadata.json`: the validator and indexes.
        metadata: ArtifactRecord,
        /// Documents the source facts say the collection held.
        documents: u64,
    },
    Redis {
        /// The target database index; `None` until resolved (the one `redis.url` selects).
        db: Option<u32>,
    },
    Index {
        index: String,
        prefix: String,
        /// `.meta.json`: the create body.
        metadata: ArtifactRecord,
        write_blocked: bool,
        documents: u64,
    },
}

impl Target {
    pub(super) fn describe(&self) -> String {
        match self {
            Target::Volume(name) => format!("volume {name}"),
            Target::Collection {
                collection,
                database,
                ..
            } => format!(
                "collection {}.{}",
                database.as_deref().unwrap_or("?"),
                collection.name()
            ),
            Target::Redis { db } => match db {
                Some(db) => format!("redis db {db}"),
                None => "redis".to_owned(),
            },
            Target::Index { index, prefix, .. } => format!("index {prefix}{index}"),
        }
    }

    /// The store's own name for the target, for the report.
    fn name(&self) -> String {
        match self {
            Target::Volume(name) => name.to_string(),
            Target::Collection {
                collection,
                database,
                ..
            } => format!(
                "{}.{}",
                database.as_deref().unwrap_or("?"),
                collection.name()
            ),
            Target::Redis { db } => format!("db{}", db.map_or(-1, i64::from)),
            Target::Index { index, prefix, .. } => format!("{prefix}{index}"),
        }
    }

    /// The target's name in its store's backup: a collection's or index's own name, without
    /// the scratch database or prefix (what a drill lists the targets of a finding by).
    pub(super) fn short_name(&self) -> String {
        match self {
            Target::Collection { collection, .. } => collection.name().to_owned(),
            Target::Index { index, .. } => index.clone(),
            other => other.name(),
        }
    }

    /// The metadata artifact restored with the data, where there is one.
    pub(super) fn metadata(&self) -> Option<&ArtifactRecord> {
        match self {
            Target::Collection { metadata, .. } | Target::Index { metadata, .. } => Some(metadata),
            Target::Volume(_) | Target::Redis { .. } => None,
        }
    }
}

/// Where a restore is, as [`super::RestoreStatus`] answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreProgress {
    pub id: BackupId,
    pub artifacts_planned: u64,
    pub artifacts_done: u64,
    /// The artifact being restored.
    pub current: Option<String>,
    /// Items (documents, keys, NDJSON documents, 64 KiB chunks of a tar) of the current
    /// artifact handed to its import so far.
    pub items_read: u64,
}

/// The restore under way: its progress, and the counter its item stream bumps.
pub(super) struct Tracker {
    progress: RestoreProgress,
    items: Arc<AtomicU64>,
}

/// The progress of the restore under way in this process, if one runs.
pub(super) fn progress(shared: &Shared) -> Option<RestoreProgress> {
    let slot = shared
        .restoring
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    slot.as_ref().map(|t| RestoreProgress {
        items_read: t.items.load(Ordering::Relaxed),
        ..t.progress.clone()
    })
}

fn track(shared: &Shared, change: impl FnOnce(&mut RestoreProgress)) {
    let mut slot = shared
        .restoring
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(t) = slot.as_mut() {
        change(&mut t.progress);
    }
}

/// Holds the progress of a restore from its plan to its end (also when it fails).
struct Tracking<'a>(&'a Shared);

impl<'a> Tracking<'a> {
    fn begin(shared: &'a Shared, id: BackupId, planned: u64, items: Arc<AtomicU64>) -> Self {
        *shared
            .restoring
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Tracker {
            progress: RestoreProgress {
                id,
                artifacts_planned: planned,
                artifacts_done: 0,
                current: None,
                items_read: 0,
            },
            items,
        });
        Tracking(shared)
    }
}

impl Drop for Tracking<'_> {
    fn drop(&mut self) {
        *self
            .0
            .restoring
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// The manifest of backup `id` as storage has it now.
pub(super) async fn stored_manifest(
    storage: &Storage,
    id: &BackupId,
) -> Result<Manifest, BackupError> {
    let bytes = storage
        .get_file(id, MANIFEST)
        .await?
        .ok_or_else(|| BackupError::NotFound { id: id.to_string() })?;
    let manifest = Manifest::parse(&bytes).map_err(BackupError::Manifest)?;
    if manifest.id != *id {
        return Err(BackupError::Manifest(
            super::manifest::ManifestError::Malformed {
                file: "manifest.json",
                reason: format!("it names backup {}", manifest.id),
            },
        ));
    }
    Ok(manifest)
}

/// Restores backup `id`; see the module doc. The caller holds the backup lock; where it is
/// meanwhile, [`super::RestoreStatus`] answers.
pub(super) async fn restore(
    shared: &Shared,
    id: BackupId,
    selection: &[StoreSelector],
    identity: Option<Identities>,
    targets: &Targets,
    force: bool,
) -> Result<RestoreReport, BackupError> {
    let clock = Instant::now();
    let _reader = shared.reading(id).await?;
    let outcome = run(shared, id, selection, identity, targets, force).await;
    match &outcome {
        Ok(report) => events::emit(BackupRestored {
            id: id.to_string(),
            artifacts: report.restored.len() as u64,
            written: report.restored.iter().map(|r| r.written).sum(),
            duration_ms: clock.elapsed().as_millis() as u64,
        }),
        Err(e) => events::emit(BackupRestoreFailed {
            id: id.to_string(),
            code: e.code(),
            error: crate::redact::text(&e.to_string()),
            duration_ms: clock.elapsed().as_millis() as u64,
        }),
    }
    outcome.map(|mut report| {
        report.elapsed_ms = clock.elapsed().as_millis() as u64;
        report
    })
}

async fn run(
    shared: &Shared,
    id: BackupId,
    selection: &[StoreSelector],
    identity: Option<Identities>,
    targets: &Targets,
    force: bool,
) -> Result<RestoreReport, BackupError> {
    let storage = shared.storage().await?;
    let manifest = stored_manifest(&storage, &id).await?;
    let mut steps = plan(&manifest, selection, targets)?;
    resolve(shared, &mut steps).await?;
    let items = Arc::new(AtomicU64::new(0));
    let _tracking = Tracking::begin(shared, id, steps.len() as u64, items.clone());

    // 2. Every checksum before anything is written; a database artifact is decoded to its
    //    end too (as `verify --level decoded` does, counts against the source facts): a cut
    //    document found half-way through an import would leave a replaced target empty.
    let decoding = Decoding::for_manifest(
        &manifest,
        super::verify::keys_for(shared, &storage, &manifest, identity).await?,
    );
    for step in &steps {
        for record in std::iter::once(&step.record).chain(step.target.metadata()) {
            check_artifact(&storage, &id, &manifest, step.store, record, &decoding).await?;
        }
    }

    // 3. Every target, before anything is written.
    let existing = if force {
        Existing::Replace
    } else {
        Existing::RefuseNonEmpty
    };
    if !force {
        for step in &steps {
            if let Some(what) = holding(shared, &step.target).await? {
                return Err(BackupError::TargetNotEmpty {
                    target: step.target.describe(),
                    holds: what,
                });
            }
        }
    }

    // 4. One artifact after another.
    let mut restored = Vec::new();
    for step in steps {
        track(shared, |p| p.current = Some(step.record.name.clone()));
        items.store(0, Ordering::Relaxed);
        let one = import_step(shared, &storage, id, &decoding, &step, existing, &items).await?;
        tracing::info!(%id, artifact = %step.record.name, target = %one.target, written = one.written, "restored");
        track(shared, |p| {
            p.artifacts_done += 1;
            p.current = None;
        });
        restored.push(one);
    }
    Ok(RestoreReport {
        id,
        restored,
        elapsed_ms: 0,
    })
}

/// Step 2 for one artifact (see [`run`]).
pub(super) async fn check_artifact(
    storage: &Storage,
    id: &BackupId,
    manifest: &Manifest,
    store: &str,
    record: &ArtifactRecord,
    decoding: &Decoding,
) -> Result<(), BackupError> {
    let facts = manifest.stores.get(store);
    match facts {
        Some(facts) if store != "volumes" => {
            let parse = super::verify::parser_for(&record.name);
            let found = pipeline::decode_artifact(storage, id, record, decoding, parse)
                .await
                .map_err(BackupError::Pipeline)?;
            super::verify::compare(store, facts, record, found).map_err(BackupError::Pipeline)
        }
        _ => pipeline::verify_checksum(storage, id, record)
            .await
            .map_err(BackupError::Pipeline),
    }
}

/// Fills in the targets the plan left to the stores' settings, and waits (at most the call
/// deadline) for each database store the restore writes to be up.
pub(super) async fn resolve(shared: &Shared, steps: &mut [Step]) -> Result<(), BackupError> {
    let mut waited = Vec::new();
    for step in steps.iter_mut() {
        let backend = match &mut step.target {
            Target::Volume(_) => continue,
            Target::Collection { database, .. } => {
                let mongo = store(shared.stores.mongo.as_ref(), "mongodb")?;
                database.get_or_insert_with(|| mongo.settings().database.clone());
                Backend::Mongodb
            }
            Target::Redis { db } => {
                let redis = store(shared.stores.redis.as_ref(), "redis")?;
                if db.is_none() {
                    *db = Some(u32::try_from(redis.database()).unwrap_or(0));
                }
                Backend::Redis
            }
            Target::Index { .. } => {
                store(shared.stores.search.as_ref(), "elasticsearch")?;
                Backend::Elasticsearch
            }
        };
        if !waited.contains(&backend) {
            waited.push(backend);
            super::databases::wait_up(shared, backend)
                .await
                .map_err(|(code, message)| BackupError::Unavailable {
                    what: backend.to_string(),
                    reason: format!("{message} ({code})"),
                })?;
        }
    }
    Ok(())
}

/// A database store's handle, or why there is none.
pub(super) fn store<'a, H>(handle: Option<&'a H>, what: &str) -> Result<&'a H, BackupError> {
    handle.ok_or_else(|| BackupError::Unavailable {
        what: what.to_owned(),
        reason: format!("{what} is disabled or does not run in this process"),
    })
}

/// Imports one step's artifact into its target under `existing`; see the module doc.
pub(super) async fn import_step(
    shared: &Shared,
    storage: &Storage,
    id: BackupId,
    decoding: &Decoding,
    step: &Step,
    existing: Existing,
    items: &Arc<AtomicU64>,
) -> Result<Restored, BackupError> {
    let started = Instant::now();
    let artifact = step.record.name.as_str();
    let open = Opener {
        storage,
        id,
        record: &step.record,
        decoding,
        items,
    };
    let mut refused = 0;
    let (read, written, skipped) = match &step.target {
        Target::Volume(name) => {
            let handle = shared.volumes("volumes")?;
            let plain = open.items(Box::new(read_chunks));
            let summary = handle
                .import(ImportOptions::new(name.clone()).existing(existing), plain)
                .await
                .map_err(|e| match e {
                    VolumeError::ImportSource { reason, .. } => undecodable(artifact, &reason),
                    other => BackupError::Volume(other),
                })?;
            (summary.read, summary.written, summary.skipped_total())
        }
        Target::Collection {
            collection,
            database,
            metadata,
            documents,
        } => {
            let mongo = store(shared.stores.mongo.as_ref(), "mongodb")?;
            let (database, export) = collection_metadata(
                mongo, storage, &id, decoding, database, metadata, *documents,
            )
            .await?;
            let items = open.items(Box::new(|r: &mut dyn Read, send: &mut Sender<'_, _>| {
                mongodump::BsonReader::new(r).try_for_each(|doc| send(doc?))
            }));
            let target = crate::mongo::ImportTarget {
                collection: *collection,
                database: Some(database),
                metadata: export,
            };
            let summary = mongo
                .import(ImportOptions::new(target).existing(existing), items)
                .await
                .map_err(|e| import_error("mongodb", artifact, &e))?;
            (summary.read, summary.written, summary.skipped_total())
        }
        Target::Redis { db } => {
            let redis = store(shared.stores.redis.as_ref(), "redis")?;
            let items = open.items(Box::new(|r: &mut dyn Read, send: &mut Sender<'_, _>| {
                resp::RespReader::new(r).try_for_each(|key| send(key?))
            }));
            let target = crate::redis::ImportTarget { db: *db };
            let summary = redis
                .import(ImportOptions::new(target).existing(existing), items)
                .await
                .map_err(|e| import_error("redis", artifact, &e))?;
            for (key, why) in &summary.details.failures {
                tracing::warn!(%key, reason = %why, "redis refused a key of the backup");
            }
            refused = summary
                .skipped
                .get(&crate::transfer::Skip::Refused)
                .copied()
                .unwrap_or(0);
            (summary.read, summary.written, summary.skipped_total())
        }
        Target::Index {
            index,
            prefix,
            metadata,
            write_blocked,
            documents,
        } => {
            let search = store(shared.stores.search.as_ref(), "elasticsearch")?;
            let items = open.items(Box::new(|r: &mut dyn Read, send: &mut Sender<'_, _>| {
                bulk::BulkReader::new(r).try_for_each(|doc| send(doc?))
            }));
            let target = crate::search::ImportTarget {
                metadata: index_metadata(
                    storage,
                    &id,
                    decoding,
                    index,
                    metadata,
                    *write_blocked,
                    *documents,
                )
                .await?,
                prefix: prefix.clone(),
            };
            let summary = search
                .import(ImportOptions::new(target).existing(existing), items)
                .await
                .map_err(|e| import_error("elasticsearch", artifact, &e))?;
            (summary.read, summary.written, summary.skipped_total())
        }
    };
    Ok(Restored {
        store: step.store.to_owned(),
        artifact: artifact.to_owned(),
        target: step.target.name(),
        read,
        written,
        skipped,
        refused,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// A collection step's database (`--to-db`, else `mongodb.database`) and the collection's
/// validator and indexes as its `.metadata.json` recorded them: what a restore recreates and
/// what a drill compares the restored collection with.
pub(super) async fn collection_metadata(
    mongo: &crate::mongo::MongoHandle,
    storage: &Storage,
    id: &BackupId,
    decoding: &Decoding,
    database: &Option<String>,
    metadata: &ArtifactRecord,
    documents: u64,
) -> Result<(String, crate::mongo::ExportMetadata), BackupError> {
    let database = database
        .clone()
        .unwrap_or_else(|| mongo.settings().database.clone());
    let meta = pipeline::decode_artifact(storage, id, metadata, decoding, |r| {
        mongodump::walk_metadata(r)
    })
    .await
    .map_err(BackupError::Pipeline)?;
    let export = meta.to_export(&database, documents, crate::mongo::bson::DateTime::now());
    Ok((database, export))
}

/// An index step's settings, mappings and aliases as its `.meta.json` recorded them: what a
/// restore recreates and what a drill compares the restored index with.
pub(super) async fn index_metadata(
    storage: &Storage,
    id: &BackupId,
    decoding: &Decoding,
    index: &str,
    metadata: &ArtifactRecord,
    write_blocked: bool,
    documents: u64,
) -> Result<crate::search::IndexMetadata, BackupError> {
    let body = pipeline::decode_artifact(storage, id, metadata, decoding, |r| {
        bulk::walk_index_body(r)
    })
    .await
    .map_err(BackupError::Pipeline)?;
    Ok(body.to_metadata(index, write_blocked, documents))
}

/// Opens a step's artifact as a stream of items, each counted for the progress.
struct Opener<'a> {
    storage: &'a Storage,
    id: BackupId,
    record: &'a ArtifactRecord,
    decoding: &'a Decoding,
    items: &'a Arc<AtomicU64>,
}

impl Opener<'_> {
    fn items<T: Send + 'static>(
        &self,
        decode: Decoder<T>,
    ) -> impl Stream<Item = Result<T, String>> + Send + 'static {
        let counted = self.items.clone();
        open_items(
            self.storage.clone(),
            self.id,
            self.record.clone(),
            self.decoding.clone(),
            decode,
        )
        .inspect(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        })
    }
}

/// An import whose source failed: the artifact did not decode (or changed since its
/// checksum). The source's text already names the artifact; it is said once.
fn undecodable(artifact: &str, reason: &str) -> BackupError {
    let reason = reason
        .strip_prefix(artifact)
        .and_then(|r| r.strip_prefix(": "))
        .map(|r| r.strip_prefix("does not decode: ").unwrap_or(r))
        .unwrap_or(reason);
    BackupError::Pipeline(PipelineError::Undecodable {
        artifact: artifact.to_owned(),
        reason: reason.to_owned(),
    })
}

/// An import's error: the artifact's when its reading failed, else the store's.
fn import_error(
    store: &'static str,
    artifact: &str,
    e: &impl super::databases::StoreErrorLike,
) -> BackupError {
    match e.import_source() {
        Some(reason) => undecodable(artifact, reason),
        None => store_error(store, e.code(), e),
    }
}

pub(super) fn store_error(
    store: &'static str,
    code: &'static str,
    e: &dyn std::fmt::Display,
) -> BackupError {
    BackupError::Store {
        store,
        code,
        message: crate::redact::text(&e.to_string()),
    }
}

/// What the target holds, when it holds something an import would write over.
pub(super) async fn holding(
    shared: &Shared,
    target: &Target,
) -> Result<Option<String>, BackupError> {
    let (state, count, what) = match target {
        Target::Volume(name) => {
            let Some(handle) = shared.stores.volumes.as_ref() else {
                return Ok(None);
            };
            return match handle.call(InspectVolume { name: name.clone() }).await {
                Ok(info) => Ok(info.usage.and_then(|u| {
                    let t = u.tally;
                    let entries = t.files + t.dirs + t.symlinks;
                    (entries > 0).then(|| {
                        format!(
                            "{} files, {} directories, {} symlinks",
                            t.files, t.dirs, t.symlinks
                        )
                    })
                })),
                Err(VolumeError::NotFound { .. }) => Ok(None),
                Err(e) => Err(BackupError::Volume(e)),
            };
        }
        _ => database_target(shared, target)
            .await?
            .unwrap_or((TargetState::Missing, 0, "")),
    };
    Ok((state == TargetState::Holding).then(|| format!("{count} {what}")))
}

/// What a database target holds (its state, and how many documents or keys: the unit's
/// name); `None` for a volume.
pub(super) async fn database_target(
    shared: &Shared,
    target: &Target,
) -> Result<Option<(TargetState, u64, &'static str)>, BackupError> {
    Ok(Some(match target {
        Target::Volume(_) => return Ok(None),
        Target::Collection {
            collection,
            database,
            ..
        } => {
            let mongo = store(shared.stores.mongo.as_ref(), "mongodb")?;
            let (state, n) = mongo
                .import_target(*collection, database.as_deref())
                .await
                .map_err(|e| store_error("mongodb", e.code(), &e))?;
            (state, n, "documents")
        }
        Target::Redis { db } => {
            let redis = store(shared.stores.redis.as_ref(), "redis")?;
            let (state, n) = redis
                .import_target(crate::redis::ImportTarget { db: *db })
                .await
                .map_err(|e| store_error("redis", e.code(), &e))?;
            (state, n, "keys")
        }
        Target::Index { index, prefix, .. } => {
            let search = store(shared.stores.search.as_ref(), "elasticsearch")?;
            let (state, n) = search
                .import_target(&format!("{prefix}{index}"))
                .await
                .map_err(|e| store_error("elasticsearch", e.code(), &e))?;
            (state, n, "documents")
        }
    }))
}

/// The stores a default selection restores, by the manifest's store names.
fn selector_of(store: &str) -> Option<StoreSelector> {
    match store {
        "volumes" => Some(StoreSelector::Volumes),
        "mongodb" => Some(StoreSelector::Mongodb),
        "redis" => Some(StoreSelector::Redis),
        "elasticsearch" => Some(StoreSelector::Elasticsearch),
        _ => None,
    }
}

/// The steps of a restore: the artifacts `selection` names in `manifest`, with their targets
/// (`None` where the store's settings decide: see [`resolve`]).
pub(super) fn plan(
    manifest: &Manifest,
    selection: &[StoreSelector],
    targets: &Targets,
) -> Result<Vec<Step>, BackupError> {
    let all: Vec<StoreSelector> = if selection.is_empty() {
        manifest
            .stores
            .iter()
            .filter(|(_, s)| !s.artifacts.is_empty())
            .filter_map(|(name, _)| selector_of(name))
            .collect()
    } else {
        selection.to_vec()
    };
    let not_in = |what: String| BackupError::NotInBackup {
        what,
        id: manifest.id.to_string(),
    };
    // A store restores from the artifacts it completed (each is whole).
    let artifacts_of = |store: &str| -> Result<&StoreRecord, BackupError> {
        match manifest.stores.get(store) {
            Some(s) if !s.artifacts.is_empty() => Ok(s),
            _ => Err(not_in(store.to_owned())),
        }
    };
    let mut steps = Vec::new();
    for selector in &all {
        match selector {
            StoreSelector::Volumes => {
                for record in &artifacts_of("volumes")?.artifacts {
                    steps.push(volume_step(record)?);
                }
            }
            StoreSelector::Volume(name) => {
                let record = artifacts_of("volumes")?
                    .artifacts
                    .iter()
                    .find(|a| a.logical == name.as_str())
                    .ok_or_else(|| not_in(format!("volumes:{name}")))?;
                steps.push(volume_step(record)?);
            }
            StoreSelector::Mongodb | StoreSelector::Collection(_) => {
                let only = match selector {
                    StoreSelector::Collection(c) => Some(*c),
                    _ => None,
                };
                let record = artifacts_of("mongodb")?;
                let found = mongo_steps(record, only, targets)?;
                if found.is_empty() {
                    return Err(not_in(selector.to_string()));
                }
                steps.extend(found);
            }
            StoreSelector::Redis => {
                for record in &artifacts_of("redis")?.artifacts {
                    steps.push(Step {
                        store: "redis",
                        record: record.clone(),
                        target: Target::Redis {
                            db: targets.to_redis_db,
                        },
                    });
                }
            }
            StoreSelector::Elasticsearch | StoreSelector::Index(_) => {
                let only = match selector {
                    StoreSelector::Index(i) => Some(i.as_str()),
                    _ => None,
                };
                let record = artifacts_of("elasticsearch")?;
                let found = index_steps(record, only, targets)?;
                if found.is_empty() {
                    return Err(not_in(selector.to_string()));
                }
                steps.extend(found);
            }
        }
    }
    if steps.is_empty() {
        return Err(not_in("anything restorable".to_owned()));
    }
    let mut seen = BTreeMap::new();
    steps.retain(|s| seen.insert(s.record.name.clone(), ()).is_none());
    let redis_steps = steps
        .iter()
        .filter(|s| matches!(s.target, Target::Redis { .. }))
        .count();
    if targets.to_redis_db.is_some() && redis_steps > 1 {
        return Err(BackupError::BadRequest {
            what: format!(
                "--to-redis-db restores one Redis database, and the backup holds {redis_steps}"
            ),
        });
    }
    if let Some(to) = &targets.to_volume {
        let volume_steps = steps
            .iter()
            .filter(|s| matches!(s.target, Target::Volume(_)))
            .count();
        if volume_steps != 1 {
            return Err(BackupError::BadRequest {
                what: format!(
                    "--to-volume restores one volume, and the selection has {volume_steps}: \
                     name it with --stores volumes:NAME"
                ),
            });
        }
        for step in &mut steps {
            if matches!(step.target, Target::Volume(_)) {
                step.target = Target::Volume(to.clone());
            }
        }
    }
    Ok(steps)
}

fn volume_step(record: &ArtifactRecord) -> Result<Step, BackupError> {
    let name = VolumeName::new(&record.logical).map_err(|e| BackupError::BadRequest {
        what: format!("artifact {}: {e}", record.name),
    })?;
    Ok(Step {
        store: "volumes",
        record: record.clone(),
        target: Target::Volume(name),
    })
}

/// The metadata artifact beside data artifact `data` (its logical name plus `suffix`).
fn beside<'a>(
    record: &'a StoreRecord,
    data: &ArtifactRecord,
    suffix: &str,
) -> Result<&'a ArtifactRecord, BackupError> {
    let logical = format!("{}{suffix}", data.logical);
    record
        .artifacts
        .iter()
        .find(|a| a.logical == logical)
        .ok_or_else(|| BackupError::BadRequest {
            what: format!(
                "{}: the backup holds no {logical} beside it, so it cannot be recreated",
                data.name
            ),
        })
}

/// A fact of the store record: `source[group][item][field]`.
fn fact<'a>(record: &'a StoreRecord, group: &str, item: &str, field: &str) -> Option<&'a Value> {
    record.source.get(group)?.get(item)?.get(field)
}

/// One step per `.bson` artifact (`mongodb/<db>/<coll>.bson…`, logical `<db>.<coll>`).
fn mongo_steps(
    record: &StoreRecord,
    only: Option<Collection>,
    targets: &Targets,
) -> Result<Vec<Step>, BackupError> {
    let mut steps = Vec::new();
    for data in &record.artifacts {
        if !data.name.contains(".bson") {
            continue;
        }
        let Some((_, name)) = data.logical.split_once('.') else {
            continue;
        };
        let collection = Collection::parse(name).map_err(|e| BackupError::BadRequest {
            what: format!("artifact {}: {e}", data.name),
        })?;
        if only.is_some_and(|c| c != collection) {
            continue;
        }
        steps.push(Step {
            store: "mongodb",
            record: data.clone(),
            target: Target::Collection {
                collection,
                database: targets.to_db.clone(),
                metadata: beside(record, data, ".metadata")?.clone(),
                documents: fact(record, "collections", name, "documents")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            },
        });
    }
    Ok(steps)
}

/// One step per `.ndjson` artifact (`elasticsearch/<index>.ndjson…`, logical `<index>`).
fn index_steps(
    record: &StoreRecord,
    only: Option<&str>,
    targets: &Targets,
) -> Result<Vec<Step>, BackupError> {
    let mut steps = Vec::new();
    for data in &record.artifacts {
        if !data.name.contains(".ndjson") || only.is_some_and(|i| i != data.logical) {
            continue;
        }
        let index = data.logical.clone();
        steps.push(Step {
            store: "elasticsearch",
            record: data.clone(),
            target: Target::Index {
                prefix: targets.index_prefix.clone().unwrap_or_default(),
                metadata: beside(record, data, ".meta")?.clone(),
                write_blocked: fact(record, "indices", &index, "write_blocked")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                documents: fact(record, "indices", &index, "documents")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                index,
            },
        });
    }
    Ok(steps)
}

/// The plain bytes of one artifact (decrypted, decompressed) as a stream, for an import. The
/// stream ends only after the artifact's size and SHA-256 matched the manifest; otherwise its
/// last item is the error (see the module doc).
pub fn open_artifact(
    storage: Storage,
    id: BackupId,
    record: ArtifactRecord,
    decoding: Decoding,
) -> impl Stream<Item = Result<Vec<u8>, String>> + Send + 'static {
    stream_of(
        storage,
        id,
        record,
        decoding,
        IN_FLIGHT,
        Box::new(read_chunks),
    )
}

/// Hands on the plain bytes in chunks of [`CHUNK`].
fn read_chunks(plain: &mut dyn Read, send: &mut Sender<'_, Vec<u8>>) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = plain.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        send(buf[..n].to_vec())?;
    }
}

/// Hands one decoded item to the import; fails once the import stopped reading.
pub type Sender<'a, T> = dyn FnMut(T) -> io::Result<()> + 'a;
/// Reads an artifact's plain bytes and hands each item it decodes to the sender.
pub type Decoder<T> =
    Box<dyn FnOnce(&mut dyn Read, &mut Sender<'_, T>) -> io::Result<()> + Send + 'static>;

/// The items `decode` reads from one artifact, as a stream for an import: as
/// [`open_artifact`], the stream ends only after the digest matched, and an item that does
/// not decode ends it with an error naming the artifact and where.
pub fn open_items<T: Send + 'static>(
    storage: Storage,
    id: BackupId,
    record: ArtifactRecord,
    decoding: Decoding,
    decode: Decoder<T>,
) -> impl Stream<Item = Result<T, String>> + Send + 'static {
    stream_of(storage, id, record, decoding, ITEMS_IN_FLIGHT, decode)
}

fn stream_of<T: Send + 'static>(
    storage: Storage,
    id: BackupId,
    record: ArtifactRecord,
    decoding: Decoding,
    capacity: usize,
    decode: Decoder<T>,
) -> impl Stream<Item = Result<T, String>> + Send + 'static {
    let (tx, mut rx) = mpsc::channel::<Result<T, String>>(capacity);
    let pump = tx.clone();
    tokio::spawn(async move {
        let outcome = pipeline::decode_artifact(&storage, &id, &record, &decoding, move |plain| {
            let mut send = |item: T| {
                // Lets a test slow a restore down to watch its progress (`failpoints` builds).
                #[cfg(feature = "failpoints")]
                fail::fail_point!("backup-restore-item");
                // The import stopped reading (it failed, or refused): nothing to do.
                pump.blocking_send(Ok(item))
                    .map_err(|_| io::Error::other("the import stopped reading"))
            };
            decode(plain, &mut send)
        })
        .await;
        if let Err(e) = outcome {
            let _ = tx.send(Err(e.to_string())).await;
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::backup::manifest::{Encryption, Outcome, Trigger};
    use crate::config::Compression;

    fn artifact(name: &str, logical: &str) -> ArtifactRecord {
        ArtifactRecord {
            name: name.to_owned(),
            logical: logical.to_owned(),
            bytes_in: 1,
            bytes_stored: 1,
            sha256: "00".repeat(32),
        }
    }

    fn store(outcome: Outcome, source: Value, artifacts: Vec<ArtifactRecord>) -> StoreRecord {
        StoreRecord {
            outcome,
            started: None,
            ended: None,
            source: source.as_object().cloned().unwrap_or_default(),
            artifacts,
        }
    }

    /// Every store: two collections, two Redis databases, one index, one volume, lucid-db's own.
    fn manifest() -> Manifest {
        let id = BackupId::new(Utc::now());
        let mut m = Manifest::new(
            id,
            Utc::now(),
            "pi",
            Trigger::Cli,
            Encryption::default(),
            Compression::Zstd,
        );
        let mongo = store(
            Outcome::Complete,
            json!({"collections": {"users": {"documents": 250}, "audit_logs": {"documents": 40}}}),
            vec![
                artifact("mongodb/lucid/users.bson.zst", "lucid.users"),
                artifact(
                    "mongodb/lucid/users.metadata.json.zst",
                    "lucid.users.metadata",
                ),
                artifact("mongodb/lucid/audit_logs.bson.zst", "lucid.audit_logs"),
                artifact(
                    "mongodb/lucid/audit_logs.metadata.json.zst",
                    "lucid.audit_logs.metadata",
                ),
            ],
        );
        let redis = store(
            Outcome::Complete,
            json!({}),
            vec![
                artifact("redis/db0.resp.zst", "db0"),
                artifact("redis/db1.resp.zst", "db1"),
            ],
        );
        // Failed after its first index: what it completed restores.
        let search = store(
            Outcome::Failed {
                code: "unavailable".into(),
                message: "gone".into(),
            },
            json!({"indices": {"lucid-a-2026.01": {"documents": 7, "write_blocked": true}}}),
            vec![
                artifact(
                    "elasticsearch/lucid-a-2026.01.ndjson.zst",
                    "lucid-a-2026.01",
                ),
                artifact(
                    "elasticsearch/lucid-a-2026.01.meta.json.zst",
                    "lucid-a-2026.01.meta",
                ),
            ],
        );
        let volumes = store(
            Outcome::Complete,
            json!({}),
            vec![artifact("volumes/chunks.tar.zst", "chunks")],
        );
        let own = store(
            Outcome::Complete,
            json!({}),
            vec![artifact("lucid-db/config.toml.zst", "config")],
        );
        for (name, s) in [
            ("mongodb", mongo),
            ("redis", redis),
            ("elasticsearch", search),
            ("volumes", volumes),
            ("lucid-db", own),
        ] {
            m.stores.insert(name.to_owned(), s);
        }
        m
    }

    fn names(steps: &[Step]) -> Vec<(&str, String)> {
        steps
            .iter()
            .map(|s| (s.record.name.as_str(), s.target.describe()))
            .collect()
    }

    #[test]
    fn the_default_plan_takes_every_store_with_artifacts_and_pairs_the_metadata() {
        let m = manifest();
        let steps = plan(&m, &[], &Targets::default()).expect("plan");
        assert_eq!(
            names(&steps),
            [
                (
                    "elasticsearch/lucid-a-2026.01.ndjson.zst",
                    "index lucid-a-2026.01".to_owned()
                ),
                (
                    "mongodb/lucid/users.bson.zst",
                    "collection ?.users".to_owned()
                ),
                (
                    "mongodb/lucid/audit_logs.bson.zst",
                    "collection ?.audit_logs".to_owned()
                ),
                ("redis/db0.resp.zst", "redis".to_owned()),
                ("redis/db1.resp.zst", "redis".to_owned()),
                ("volumes/chunks.tar.zst", "volume chunks".to_owned()),
            ]
        );
        match &steps[1].target {
            Target::Collection {
                metadata,
                documents,
                ..
            } => {
                assert_eq!(metadata.name, "mongodb/lucid/users.metadata.json.zst");
                assert_eq!(*documents, 250);
            }
            other => panic!("{other:?}"),
        }
        match &steps[0].target {
            Target::Index {
                metadata,
                write_blocked,
                documents,
                ..
            } => {
                assert_eq!(metadata.name, "elasticsearch/lucid-a-2026.01.meta.json.zst");
                assert_eq!((*write_blocked, *documents), (true, 7));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn selections_and_targets_narrow_and_rename() {
        let m = manifest();
        let targets = Targets {
            to_db: Some("copy".into()),
            index_prefix: Some("r-".into()),
            ..Targets::default()
        };
        let steps = plan(
            &m,
            &[
                StoreSelector::Collection(Collection::AuditLogs),
                StoreSelector::Index("lucid-a-2026.01".into()),
            ],
            &targets,
        )
        .expect("plan");
        assert_eq!(
            names(&steps),
            [
                (
                    "mongodb/lucid/audit_logs.bson.zst",
                    "collection copy.audit_logs".to_owned()
                ),
                (
                    "elasticsearch/lucid-a-2026.01.ndjson.zst",
                    "index r-lucid-a-2026.01".to_owned()
                ),
            ]
        );
        // A collection or index the backup does not hold, a store it has nothing of.
        for selector in [
            StoreSelector::Collection(Collection::Sessions),
            StoreSelector::Index("lucid-b-2026.01".into()),
        ] {
            let e = plan(&m, &[selector], &Targets::default()).expect_err("not held");
            assert_eq!(e.code(), "not_in_backup", "{e}");
        }
        let mut without = m.clone();
        without.stores.remove("redis");
        let e = plan(&without, &[StoreSelector::Redis], &Targets::default()).expect_err("none");
        assert!(e.to_string().contains("holds no redis"), "{e}");
        // One Redis database at most into --to-redis-db.
        let e = plan(
            &m,
            &[StoreSelector::Redis],
            &Targets {
                to_redis_db: Some(3),
                ..Targets::default()
            },
        )
        .expect_err("two into one");
        assert_eq!(e.code(), "bad_request", "{e}");
        // Data without the metadata beside it cannot be recreated.
        let mut cut = m.clone();
        cut.stores
            .get_mut("mongodb")
            .expect("mongodb")
            .artifacts
            .retain(|a| a.logical != "lucid.users.metadata");
        let e = plan(&cut, &[StoreSelector::Mongodb], &Targets::default()).expect_err("no meta");
        assert!(e.to_string().contains("lucid.users.metadata"), "{e}");
    }

    #[test]
    fn a_source_error_names_the_artifact_once() {
        let e = undecodable(
            "redis/db0.resp.zst",
            "redis/db0.resp.zst: does not decode: command 3 (at byte 90): cut",
        );
        assert_eq!(
            e.to_string(),
            "redis/db0.resp.zst: does not decode: command 3 (at byte 90): cut"
        );
        assert_eq!(e.code(), "bad_format");
        let other = undecodable("a.zst", "the import stopped");
        assert_eq!(
            other.to_string(),
            "a.zst: does not decode: the import stopped"
        );
    }
}
