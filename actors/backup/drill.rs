//! Drills: `backup verify ID --level drilled`. A backup nobody has restored is a hope; a
//! drill restores it into scratch targets beside the live data, compares what came back with
//! the artifacts, records the outcome and each store's restore time as the `drilled` level in
//! `verify.json`, and removes every scratch target — also when it fails. A drill that was
//! killed leaves scratch targets behind: they are named as drills' (`drill-…` volumes and
//! indices, `<db>_drill_…` databases, the Redis database `backup.drill.redis_db`), and the
//! next drill removes them by name before it starts.
//!
//! What is restored and compared:
//!
//! - **Volumes**: each into a scratch volume `drill-<suffix>-<name>`, through the volume's
//!   import (a scratch volume that exists already is refused: a drill lands on nothing). Then
//!   the artifact is read again and regular files' content is compared with the restored
//!   files byte for byte — a sample: the first [`SAMPLE_STEP`] files, then as many again at
//!   every doubling of the archive (every 2nd file, every 4th, …; about 1,700 files of a
//!   million) —, and the counts of files and bytes must match the archive's.
//! - `lucid-db/…` (configuration, schema files): decoded to their end, as `decoded` does.
//! - **MongoDB, Redis, Elasticsearch**: each store's artifacts through the restore's own
//!   steps (checksum and decode against the source facts, then the store's import, refusing
//!   any existing target) into scratch targets — MongoDB into `<db>_drill_<suffix>`, Redis
//!   into `backup.drill.redis_db`, Elasticsearch under `drill-<suffix>-` — then the server's
//!   counts are compared with the source facts (documents per collection and per index; the
//!   keys written, the keys per type having been compared while decoding). Then a sample of
//!   each artifact's items — up to [`DATABASE_SAMPLE`], spread evenly over it — is compared
//!   one by one with what the scratch target holds: a MongoDB document by `_id`, byte for
//!   byte as BSON; a Redis key's `DUMP` payload (or, where that differs, its type and value);
//!   an Elasticsearch document's `_source` by `_id`. A difference or a missing item fails the
//!   drill naming the artifact and the item. A scratch target
//!   is never the live data, so the stores' busy gate is not held: the daemon writes on.
//!   Scratch targets are removed (drop database, `FLUSHDB`, delete `drill-*` indices) also
//!   when the drill fails; a killed drill's are removed by name by the next. With Redis's
//!   `maxmemory` set, a drill whose backup's `used_memory` does not fit beside what the server
//!   uses is refused: it would evict live keys.
//!
//! A drill holds the backup lock (it writes, and a Pi has one disk) and the backup's reader
//! lock. It needs an identity for an encrypted backup, like `decoded`.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::id::BackupId;
use super::keys::Identities;
use super::manifest::{ArtifactCheck, ArtifactRecord, Level, LevelResult};
use super::pipeline::{self, Decoding, PipelineError};
use super::restore::{
    Step, Target, Targets, check_artifact, collection_metadata, database_target, import_step,
    index_metadata, plan, resolve, store, store_error, stored_manifest,
};
use super::select::StoreSelector;
use super::specs;
use super::verify::{self, VerifyReport};
use super::{BackupError, RunLock, Shared};
use crate::events::{self, BackupDrillFailed, BackupDrilled};
use crate::redis::transfer::KeyComparison;
use crate::transfer::{Existing, ImportOptions};
use crate::volume::{DeleteVolume, InspectVolume, ListVolumes, VolumeName};

/// Files compared byte for byte per doubling of a volume's archive (see the module doc).
pub const SAMPLE_STEP: u64 = 128;
/// Documents or keys of one database artifact compared one by one with the scratch target.
pub const DATABASE_SAMPLE: u64 = 128;
/// The prefix of every scratch target.
pub const PREFIX: &str = "drill-";

/// One store's part of a drill, recorded in `verify.json` beside the per-artifact results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreDrill {
    pub passed: bool,
    /// Time to restore the store's artifacts into their scratch targets.
    pub restore_ms: u64,
    /// Items restored (files, documents, keys).
    pub restored: u64,
    /// Of the database stores' items, those compared with the artifacts one by one (a
    /// sample; see the module doc). Absent in a drill recorded before samples were compared.
    #[serde(default)]
    pub compared: u64,
    /// Of the database stores' scratch targets, the specs compared with the metadata
    /// artifacts (see [`super::specs`]): each index and validator of a collection, the
    /// mappings and the settings of an index. Absent in a drill recorded before specs were
    /// compared.
    #[serde(default)]
    pub specs_compared: u64,
    /// What the server did not let the drill compare, with the targets it concerns
    /// ([`super::specs::VALIDATORS_NOT_KEPT`] on nx-27017): never counted as compared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_comparable: Vec<String>,
}

/// What the comparison of one volume found.
#[derive(Debug, Default)]
struct Compared {
    files: u64,
    bytes: u64,
    sampled: u64,
}

/// Drills backup `id`; see the module doc. The caller holds the backup lock and the backup's
/// reader lock.
pub(super) async fn drill(
    shared: &Shared,
    id: BackupId,
    identity: Option<Identities>,
    _lock: &RunLock,
) -> Result<VerifyReport, BackupError> {
    let clock = Instant::now();
    let storage = shared.storage().await?;
    let manifest = stored_manifest(&storage, &id).await?;
    let decoding = Decoding::for_manifest(
        &manifest,
        verify::keys_for(shared, &storage, &manifest, identity).await?,
    );
    remove_leftovers(shared, &manifest).await?;
    redis_headroom(shared, &manifest).await?;
    let suffix = format!("{:04x}", rand::random::<u16>());

    let mut checks: BTreeMap<String, ArtifactCheck> = BTreeMap::new();
    let mut stores: BTreeMap<String, StoreDrill> = BTreeMap::new();
    let mut about_the_key = false;
    for (store, record) in &manifest.stores {
        let started = Instant::now();
        let mut restored = 0;
        let mut compared = 0;
        let mut specs_compared = 0;
        let mut not_comparable = Vec::new();
        let mut passed = true;
        let database_steps = match database_plan(shared, &manifest, store, &suffix)? {
            Some(steps) => {
                let outcome =
                    drill_databases(shared, &storage, &id, &manifest, &decoding, &steps).await;
                // Every scratch target goes, whatever the outcome.
                let cleaned = remove_scratch(shared, store, &suffix).await;
                let done = outcome?;
                cleaned?;
                restored += done.restored;
                compared += done.compared;
                specs_compared += done.specs_compared;
                not_comparable = done
                    .not_comparable
                    .into_iter()
                    .map(|(what, targets)| {
                        format!(
                            "{what} ({})",
                            targets.into_iter().collect::<Vec<_>>().join(", ")
                        )
                    })
                    .collect();
                for (artifact, outcome) in done.checks {
                    let (check, key) = check_of(outcome)?;
                    about_the_key |= key;
                    passed &= check == ArtifactCheck::Ok;
                    checks.insert(artifact, check);
                }
                steps
                    .iter()
                    .flat_map(|s| std::iter::once(&s.record).chain(s.target.metadata()))
                    .map(|r| (r.name.clone(), ()))
                    .collect::<BTreeMap<_, _>>()
            }
            None => BTreeMap::new(),
        };
        for artifact in &record.artifacts {
            // Restored by the steps above: only what no step takes is decoded here.
            if database_steps.contains_key(&artifact.name) {
                continue;
            }
            // The stored bytes first, as a restore does: a damaged artifact is named as such
            // (not as whatever its import would stumble on), and nothing is restored from it.
            let checked = pipeline::verify_checksum(&storage, &id, artifact)
                .await
                .map_err(BackupError::Pipeline);
            let outcome = match store.as_str() {
                _ if checked.is_err() => checked,
                "volumes" => drill_volume(shared, &storage, &id, artifact, &decoding, &suffix)
                    .await
                    .map(|n| restored += n),
                // Stores whose restore is not drilled yet: decoded and counted, as `decoded`.
                _ => {
                    let parse = verify::parser_for(&artifact.name);
                    pipeline::decode_artifact(&storage, &id, artifact, &decoding, parse)
                        .await
                        .and_then(|found| verify::compare(store, record, artifact, found))
                        .map_err(BackupError::Pipeline)
                }
            };
            let (check, key) = check_of(outcome)?;
            about_the_key |= key;
            passed &= check == ArtifactCheck::Ok;
            checks.insert(artifact.name.clone(), check);
        }
        stores.insert(
            store.clone(),
            StoreDrill {
                passed,
                restore_ms: started.elapsed().as_millis() as u64,
                restored,
                compared,
                specs_compared,
                not_comparable,
            },
        );
    }
    let mut result = LevelResult::from_checks(Utc::now(), checks);
    result.stores = stores;
    let duration_ms = clock.elapsed().as_millis() as u64;
    let first_failure = result.artifacts.iter().find_map(|(name, c)| match c {
        ArtifactCheck::Failed { code, message } => {
            Some((name.clone(), code.clone(), message.clone()))
        }
        ArtifactCheck::Ok => None,
    });
    let counts_as = if about_the_key {
        None
    } else {
        verify::record(shared, &storage, id, Level::Drilled, result.clone()).await?
    };
    match &first_failure {
        None => events::emit(BackupDrilled {
            id: id.to_string(),
            stores: result.stores.keys().cloned().collect::<Vec<_>>().join(","),
            restored: result.stores.values().map(|s| s.restored).sum(),
            duration_ms,
        }),
        Some((artifact, code, _)) => events::emit(BackupDrillFailed {
            id: id.to_string(),
            code: verify::static_code(code),
            store: artifact.split('/').next().unwrap_or_default().to_owned(),
            artifact: artifact.clone(),
            duration_ms,
        }),
    }
    Ok(VerifyReport {
        id,
        level: Level::Drilled,
        result,
        first_failure,
        recorded: !about_the_key,
        counts_as,
    })
}

/// What is recorded of one artifact's outcome, and whether a failure is about the key (then
/// nothing is recorded at all); an error that is no finding ends the drill.
fn check_of(outcome: Result<(), BackupError>) -> Result<(ArtifactCheck, bool), BackupError> {
    match outcome {
        Ok(()) => Ok((ArtifactCheck::Ok, false)),
        Err(e) if is_finding(&e) => Ok((
            ArtifactCheck::Failed {
                code: e.code().to_owned(),
                message: e.to_string(),
            },
            matches!(
                e,
                BackupError::Pipeline(PipelineError::WrongIdentity { .. })
            ),
        )),
        Err(e) => Err(e),
    }
}

/// A failure that says something about the backup (recorded), rather than about the machine
/// the drill runs on (which ends the drill with an error).
fn is_finding(e: &BackupError) -> bool {
    match e {
        BackupError::Pipeline(p) => p.is_corrupt(),
        BackupError::DrillMismatch { .. } => true,
        _ => false,
    }
}

/// The steps that restore `store`'s artifacts into its scratch targets: MongoDB into
/// `<db>_drill_<suffix>`, Redis into `backup.drill.redis_db`, Elasticsearch under
/// `drill-<suffix>-`. `None` for a store that is not a database or has no artifacts.
fn database_plan(
    shared: &Shared,
    manifest: &super::manifest::Manifest,
    store: &str,
    suffix: &str,
) -> Result<Option<Vec<Step>>, BackupError> {
    let selector = match store {
        "mongodb" => StoreSelector::Mongodb,
        "redis" => StoreSelector::Redis,
        "elasticsearch" => StoreSelector::Elasticsearch,
        _ => return Ok(None),
    };
    if manifest
        .stores
        .get(store)
        .is_none_or(|s| s.artifacts.is_empty())
    {
        return Ok(None);
    }
    let targets = Targets {
        to_db: Some(scratch_database(shared, suffix)),
        index_prefix: Some(format!("{PREFIX}{suffix}-")),
        ..Targets::default()
    };
    let mut steps = plan(manifest, &[selector], &targets)?;
    // Every Redis database of the backup into the drill's one, one after another (each is
    // compared, then the database emptied for the next).
    for step in &mut steps {
        if let Target::Redis { db } = &mut step.target {
            *db = Some(shared.config.backup.drill.redis_db);
        }
    }
    Ok(Some(steps))
}

fn scratch_database(shared: &Shared, suffix: &str) -> String {
    format!("{}{suffix}", scratch_database_prefix(shared))
}

fn scratch_database_prefix(shared: &Shared) -> String {
    format!("{}_drill_", shared.config.mongodb.database)
}

/// What the database steps of one store found, per artifact.
struct DatabaseDrill {
    restored: u64,
    compared: u64,
    specs_compared: u64,
    /// What the server did not let be compared → the collections or indices it concerns.
    not_comparable: BTreeMap<&'static str, std::collections::BTreeSet<String>>,
    checks: Vec<(String, Result<(), BackupError>)>,
}

/// Restores each step into its scratch target through the restore's own import (a scratch
/// target is never the live data, so the store's busy gate is not held), then compares what
/// the server holds with the manifest's source facts. A finding about one artifact is
/// recorded and the drill goes on; anything else ends it (the caller removes the targets).
async fn drill_databases(
    shared: &Shared,
    storage: &super::Storage,
    id: &BackupId,
    manifest: &super::manifest::Manifest,
    decoding: &Decoding,
    steps: &[Step],
) -> Result<DatabaseDrill, BackupError> {
    let mut steps = steps.to_vec();
    resolve(shared, &mut steps).await?;
    let mut out = DatabaseDrill {
        restored: 0,
        compared: 0,
        specs_compared: 0,
        not_comparable: BTreeMap::new(),
        checks: Vec::new(),
    };
    let items = Arc::new(AtomicU64::new(0));
    for step in &steps {
        // As a restore does: stored bytes and decoded counts first, so a damaged artifact is
        // named as such and nothing is imported from it.
        let mut damaged = false;
        for record in std::iter::once(&step.record).chain(step.target.metadata()) {
            match check_artifact(storage, id, manifest, step.store, record, decoding).await {
                Err(e) if is_finding(&e) => {
                    damaged = true;
                    out.checks.push((record.name.clone(), Err(e)));
                }
                Err(e) => return Err(e),
                // The data artifact's check is recorded once its import compared.
                Ok(()) if record.name != step.record.name => {
                    out.checks.push((record.name.clone(), Ok(())));
                }
                Ok(()) => {}
            }
        }
        if damaged {
            continue;
        }
        let imported = import_step(
            shared,
            storage,
            *id,
            decoding,
            step,
            Existing::RefuseAny,
            &items,
        )
        .await;
        // Lets a test change a restored key or index before the drill compares
        // (`backup-drill-<store>-imported`, `failpoints` builds).
        #[cfg(feature = "failpoints")]
        fail::fail_point!(&format!("backup-drill-{}-imported", step.store));
        let outcome = match imported {
            Ok(done) => match compare_database(shared, step, &done).await {
                Ok(()) => {
                    // The specs are the metadata artifact's finding, the sample the data's.
                    if let Some(metadata) = step.target.metadata() {
                        let specs = compare_specs(shared, storage, id, decoding, step).await?;
                        out.specs_compared += specs.compared;
                        for what in specs.not_comparable {
                            out.not_comparable
                                .entry(what)
                                .or_default()
                                .insert(step.target.short_name());
                        }
                        if !specs.differences.is_empty() {
                            let mismatch = BackupError::DrillMismatch {
                                artifact: metadata.name.clone(),
                                reason: format!(
                                    "{} differs from the backup's metadata: {}",
                                    step.target.describe(),
                                    specs.differences.join("; ")
                                ),
                            };
                            out.checks.retain(|(name, _)| *name != metadata.name);
                            out.checks.push((metadata.name.clone(), Err(mismatch)));
                        }
                    }
                    compare_sample(shared, storage, id, decoding, step, &done)
                        .await
                        .map(|n| (done.written, n))
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Target::Redis { db: Some(db) } = step.target {
            // The next Redis database of the backup lands on an empty one too.
            store(shared.stores.redis.as_ref(), "redis")?
                .flush_scratch(db)
                .await
                .map_err(|e| store_error("redis", e.code(), &e))?;
        }
        match outcome {
            Ok((written, compared)) => {
                out.restored += written;
                out.compared += compared;
                out.checks.push((step.record.name.clone(), Ok(())));
            }
            Err(e) if is_finding(&e) => out.checks.push((step.record.name.clone(), Err(e))),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// What the server holds after one step, against the source facts: the documents of the
/// collection or index, the keys the import wrote (the artifact's keys per type were compared
/// with the facts before the import, as `decoded` does; expired and not-restorable keys are
/// skipped by design, a key the server refused fails the drill).
async fn compare_database(
    shared: &Shared,
    step: &Step,
    done: &super::restore::Restored,
) -> Result<(), BackupError> {
    if done.refused > 0 {
        return Err(BackupError::DrillMismatch {
            artifact: step.record.name.clone(),
            reason: format!(
                "{} refused {} of its items (see the log for which and why)",
                step.target.describe(),
                done.refused
            ),
        });
    }
    let expected = match &step.target {
        Target::Collection { documents, .. } | Target::Index { documents, .. } => *documents,
        Target::Redis { .. } => done.written,
        Target::Volume(_) => return Ok(()),
    };
    let Some((_, found, what)) = database_target(shared, &step.target).await? else {
        return Ok(());
    };
    if expected != found {
        return Err(BackupError::DrillMismatch {
            artifact: step.record.name.clone(),
            reason: format!(
                "the backup holds {expected} {what}, {} holds {found} after the restore",
                step.target.describe()
            ),
        });
    }
    Ok(())
}

/// The scratch target's index specs and validator (a collection), or mappings and settings
/// (an index), against the metadata artifact the restore recreated it from; see
/// [`super::specs`]. Redis and volumes have no specs.
async fn compare_specs(
    shared: &Shared,
    storage: &super::Storage,
    id: &BackupId,
    decoding: &Decoding,
    step: &Step,
) -> Result<specs::Comparison, BackupError> {
    match &step.target {
        Target::Volume(_) | Target::Redis { .. } => Ok(specs::Comparison::default()),
        Target::Collection {
            collection,
            database,
            metadata,
            documents,
        } => {
            let mongo = store(shared.stores.mongo.as_ref(), "mongodb")?;
            let (database, artifact) =
                collection_metadata(mongo, storage, id, decoding, database, metadata, *documents)
                    .await?;
            let (caps, server) = mongo
                .collection_spec(*collection, &database)
                .await
                .map_err(|e| store_error("mongodb", e.code(), &e))?;
            Ok(specs::compare_collection(&artifact, server.as_ref(), caps))
        }
        Target::Index {
            index,
            prefix,
            metadata,
            write_blocked,
            documents,
        } => {
            let search = store(shared.stores.search.as_ref(), "elasticsearch")?;
            let artifact = index_metadata(
                storage,
                id,
                decoding,
                index,
                metadata,
                *write_blocked,
                *documents,
            )
            .await?;
            let name = format!("{prefix}{index}");
            let Some(server) = search
                .index_definition(&name)
                .await
                .map_err(|e| store_error("elasticsearch", e.code(), &e))?
            else {
                return Ok(specs::Comparison {
                    differences: vec!["the index was not created".to_owned()],
                    ..specs::Comparison::default()
                });
            };
            Ok(specs::compare_index(&artifact, &server))
        }
    }
}

/// Takes up to [`DATABASE_SAMPLE`] of the `total` items `decode` reads from `record`, spread
/// evenly over it (every `total / DATABASE_SAMPLE`-th, from the first).
async fn sample_of<T: Send + 'static>(
    storage: &super::Storage,
    id: &BackupId,
    record: &ArtifactRecord,
    decoding: &Decoding,
    total: u64,
    decode: impl FnOnce(&mut dyn Read, &mut dyn FnMut(T) -> bool) -> io::Result<()> + Send + 'static,
) -> Result<Vec<T>, BackupError> {
    let stride = total.div_ceil(DATABASE_SAMPLE).max(1);
    pipeline::decode_artifact(storage, id, record, decoding, move |r| {
        let mut taken = Vec::new();
        let mut seen = 0u64;
        decode(r, &mut |item| {
            if seen.is_multiple_of(stride) && (taken.len() as u64) < DATABASE_SAMPLE {
                taken.push(item);
            }
            seen += 1;
            (taken.len() as u64) < DATABASE_SAMPLE
        })?;
        Ok(taken)
    })
    .await
    .map_err(BackupError::Pipeline)
}

fn differs(step: &Step, item: String, how: &str) -> BackupError {
    BackupError::DrillMismatch {
        artifact: step.record.name.clone(),
        reason: format!("{item}: {how} in {}", step.target.describe()),
    }
}

/// Compares a sample of the artifact's items with what the scratch target holds, one by
/// one: a MongoDB document by `_id`, byte for byte as BSON; a Redis key's `DUMP` payload, or
/// where that differs its type and value (a set's or hash's payload follows its table's
/// layout, not only its content); an Elasticsearch document's `_source` by `_id`, as JSON.
/// Answers how many were compared. A Redis key
/// the import skips by design (outside `lucid:*`, `redis.not_restorable`, a fence, which is
/// raised rather than written) is not compared, nor one with an expiry that is gone (it may
/// have expired since).
async fn compare_sample(
    shared: &Shared,
    storage: &super::Storage,
    id: &BackupId,
    decoding: &Decoding,
    step: &Step,
    done: &super::restore::Restored,
) -> Result<u64, BackupError> {
    use super::formats::{bulk, mongodump, resp};
    let record = &step.record;
    match &step.target {
        Target::Volume(_) => Ok(0),
        Target::Collection {
            collection,
            database,
            ..
        } => {
            let sample = sample_of(storage, id, record, decoding, done.read, |r, take| {
                for doc in mongodump::BsonReader::new(r) {
                    if !take(doc.map_err(io::Error::other)?) {
                        break;
                    }
                }
                Ok(())
            })
            .await?;
            let mut ids = Vec::with_capacity(sample.len());
            for doc in &sample {
                let id = doc
                    .get("_id")
                    .ok()
                    .flatten()
                    .and_then(|v| crate::mongo::bson::Bson::try_from(v.to_raw_bson()).ok())
                    .ok_or_else(|| {
                        differs(step, "a document".to_owned(), "has no _id to look it up by")
                    })?;
                ids.push(id);
            }
            let mongo = store(shared.stores.mongo.as_ref(), "mongodb")?;
            let database = database
                .clone()
                .unwrap_or_else(|| mongo.settings().database.clone());
            let found = mongo
                .documents_by_id(*collection, &database, ids.clone())
                .await
                .map_err(|e| store_error("mongodb", e.code(), &e))?;
            for (doc, id) in sample.iter().zip(&ids) {
                let held = found.iter().find(|f| {
                    f.get("_id")
                        .ok()
                        .flatten()
                        .and_then(|v| crate::mongo::bson::Bson::try_from(v.to_raw_bson()).ok())
                        .as_ref()
                        == Some(id)
                });
                match held {
                    None => return Err(differs(step, format!("document _id {id}"), "missing")),
                    Some(h) if h.as_bytes() != doc.as_bytes() => {
                        return Err(differs(
                            step,
                            format!("document _id {id}"),
                            "differs from the backup's",
                        ));
                    }
                    Some(_) => {}
                }
            }
            Ok(sample.len() as u64)
        }
        Target::Redis { db } => {
            let skipped_by_design = shared.config.redis.not_restorable.clone();
            let sample = sample_of(storage, id, record, decoding, done.read, move |r, take| {
                for key in resp::RespReader::new(r) {
                    let key = key.map_err(io::Error::other)?;
                    if !key.key.starts_with("lucid:")
                        || key.key.starts_with(crate::redis::locks::FENCE_PREFIX)
                        || skipped_by_design
                            .iter()
                            .any(|p| crate::glob::glob_match(p, &key.key))
                    {
                        continue;
                    }
                    if !take(key) {
                        break;
                    }
                }
                Ok(())
            })
            .await?;
            let redis = store(shared.stores.redis.as_ref(), "redis")?;
            let db = db.unwrap_or(shared.config.backup.drill.redis_db);
            let found = redis
                .compare_keys(db, sample.clone())
                .await
                .map_err(|e| store_error("redis", e.code(), &e))?;
            let mut compared = 0;
            for (key, found) in sample.iter().zip(found) {
                let item = format!("key {}", key.key);
                match found {
                    KeyComparison::Same => compared += 1,
                    // Its expiry may have passed since the import.
                    KeyComparison::Missing if key.expires_at_ms.is_some() => {}
                    KeyComparison::Missing => return Err(differs(step, item, "missing")),
                    KeyComparison::Differs => {
                        return Err(differs(step, item, "its value differs from the backup's"));
                    }
                }
            }
            Ok(compared)
        }
        Target::Index { index, prefix, .. } => {
            let sample = sample_of(storage, id, record, decoding, done.read, |r, take| {
                for doc in bulk::BulkReader::new(r) {
                    if !take(doc.map_err(io::Error::other)?) {
                        break;
                    }
                }
                Ok(())
            })
            .await?;
            let search = store(shared.stores.search.as_ref(), "elasticsearch")?;
            let ids: Vec<String> = sample.iter().map(|d| d.id.clone()).collect();
            let found = search
                .sources_by_id(&format!("{prefix}{index}"), &ids)
                .await
                .map_err(|e| store_error("elasticsearch", e.code(), &e))?;
            for doc in &sample {
                let item = format!("document _id {}", doc.id);
                let backed: serde_json::Value = serde_json::from_slice(&doc.source)
                    .map_err(|e| differs(step, item.clone(), &format!("does not parse ({e})")))?;
                match found.get(&doc.id) {
                    None => return Err(differs(step, item, "missing")),
                    Some(held) if *held != backed => {
                        return Err(differs(step, item, "its _source differs from the backup's"));
                    }
                    Some(_) => {}
                }
            }
            Ok(sample.len() as u64)
        }
    }
}

/// Removes `store`'s scratch targets of the drill with `suffix` (an empty `suffix`: of every
/// drill, by name). A store that is not configured has none.
async fn remove_scratch(shared: &Shared, store: &str, suffix: &str) -> Result<(), BackupError> {
    match store {
        "mongodb" => {
            if let Some(mongo) = shared.stores.mongo.as_ref() {
                let prefix = format!("{}{suffix}", scratch_database_prefix(shared));
                let dropped = mongo
                    .drop_prefixed(&prefix)
                    .await
                    .map_err(|e| store_error("mongodb", e.code(), &e))?;
                log_removed(suffix, "database", &dropped);
            }
        }
        "redis" => {
            if let Some(redis) = shared.stores.redis.as_ref() {
                redis
                    .flush_scratch(shared.config.backup.drill.redis_db)
                    .await
                    .map_err(|e| store_error("redis", e.code(), &e))?;
            }
        }
        "elasticsearch" => {
            if let Some(search) = shared.stores.search.as_ref() {
                let prefix = if suffix.is_empty() {
                    PREFIX.to_owned()
                } else {
                    format!("{PREFIX}{suffix}-")
                };
                let deleted = search
                    .delete_prefixed(&prefix)
                    .await
                    .map_err(|e| store_error("elasticsearch", e.code(), &e))?;
                log_removed(suffix, "index", &deleted);
            }
        }
        _ => {}
    }
    Ok(())
}

fn log_removed(suffix: &str, what: &str, names: &[String]) {
    for name in names {
        if suffix.is_empty() {
            tracing::info!(%name, "removing a scratch {what} an earlier drill left");
        }
    }
}

/// Refuses a drill whose Redis restore could make the server evict live keys: with
/// `maxmemory` set, the room left must hold what the backup's server held (`used_memory`).
async fn redis_headroom(
    shared: &Shared,
    manifest: &super::manifest::Manifest,
) -> Result<(), BackupError> {
    let Some(record) = manifest
        .stores
        .get("redis")
        .filter(|r| !r.artifacts.is_empty())
    else {
        return Ok(());
    };
    let Some(redis) = shared.stores.redis.as_ref() else {
        return Ok(());
    };
    let needed = record
        .source
        .get("used_memory")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let stats = redis
        .stats()
        .await
        .map_err(|e| store_error("redis", e.code(), &e))?;
    let room = stats
        .maxmemory_bytes
        .saturating_sub(stats.used_memory_bytes);
    if stats.maxmemory_bytes > 0 && room < needed {
        return Err(BackupError::Unavailable {
            what: "redis".to_owned(),
            reason: format!(
                "a drill needs room for about {needed} bytes (the backup's used_memory), and \
                 maxmemory {} leaves {room} beside the {} bytes in use: it could evict live \
                 keys, so it is not drilled (raise maxmemory or drill elsewhere)",
                stats.maxmemory_bytes, stats.used_memory_bytes
            ),
        });
    }
    Ok(())
}

/// Removes the scratch targets a killed drill left (by their names): the volumes, and those
/// of the database stores this backup holds (once each is up).
async fn remove_leftovers(
    shared: &Shared,
    manifest: &super::manifest::Manifest,
) -> Result<(), BackupError> {
    for (store, backend) in [
        ("mongodb", crate::Backend::Mongodb),
        ("redis", crate::Backend::Redis),
        ("elasticsearch", crate::Backend::Elasticsearch),
    ] {
        if manifest
            .stores
            .get(store)
            .is_none_or(|s| s.artifacts.is_empty())
        {
            continue;
        }
        super::databases::wait_up(shared, backend)
            .await
            .map_err(|(code, message)| BackupError::Unavailable {
                what: backend.to_string(),
                reason: format!("{message} ({code})"),
            })?;
        remove_scratch(shared, store, "").await?;
    }
    let Some(handle) = shared.stores.volumes.as_ref() else {
        return Ok(());
    };
    for info in handle.call(ListVolumes).await? {
        if info.meta.name.as_str().starts_with(PREFIX) {
            tracing::info!(volume = %info.meta.name, "removing a scratch volume an earlier drill left");
            handle
                .call(DeleteVolume {
                    name: info.meta.name,
                    force: true,
                })
                .await?;
        }
    }
    Ok(())
}

/// Restores one volume artifact into a scratch volume, compares, removes the scratch volume.
/// Answers the files restored.
async fn drill_volume(
    shared: &Shared,
    storage: &super::Storage,
    id: &BackupId,
    record: &ArtifactRecord,
    decoding: &Decoding,
    suffix: &str,
) -> Result<u64, BackupError> {
    let handle = shared.volumes("volumes")?;
    let mut name = format!("{PREFIX}{suffix}-{}", record.logical);
    name.truncate(63);
    let scratch =
        VolumeName::new(name.trim_end_matches(['-', '_'])).map_err(BackupError::Volume)?;
    let plain =
        super::restore::open_artifact(storage.clone(), *id, record.clone(), decoding.clone());
    let imported = handle
        .import(
            ImportOptions::new(scratch.clone()).existing(Existing::RefuseAny),
            plain,
        )
        .await;
    // Lets a test kill a drill while its scratch volume exists (`failpoints` builds only).
    #[cfg(feature = "failpoints")]
    fail::fail_point!("backup-drill-restored");
    let outcome = match imported {
        Ok(_) => compare_volume(shared, storage, id, record, decoding, &scratch).await,
        Err(crate::volume::VolumeError::ImportSource { reason, .. }) => {
            Err(BackupError::Pipeline(PipelineError::Undecodable {
                artifact: record.name.clone(),
                reason,
            }))
        }
        Err(e) => Err(BackupError::Volume(e)),
    };
    // Always removed; a failure to remove is reported, and the next drill tries again.
    if let Err(e) = handle
        .call(DeleteVolume {
            name: scratch.clone(),
            force: true,
        })
        .await
        && !matches!(e, crate::volume::VolumeError::NotFound { .. })
    {
        tracing::warn!(volume = %scratch, code = e.code(), error = %e, "a drill's scratch volume could not be removed");
    }
    outcome
}

async fn compare_volume(
    shared: &Shared,
    storage: &super::Storage,
    id: &BackupId,
    record: &ArtifactRecord,
    decoding: &Decoding,
    scratch: &VolumeName,
) -> Result<u64, BackupError> {
    let handle = shared.volumes("volumes")?;
    let info = handle
        .call(InspectVolume {
            name: scratch.clone(),
        })
        .await?;
    let root = info.data_dir.clone();
    let compared = pipeline::decode_artifact(storage, id, record, decoding, move |r| {
        compare_tar(r, &root)
    })
    .await
    .map_err(|e| match e {
        // What the comparison found is a drill finding about this artifact.
        PipelineError::Undecodable { artifact, reason } if reason.starts_with(MISMATCH) => {
            BackupError::DrillMismatch {
                artifact,
                reason: reason.trim_start_matches(MISMATCH).to_owned(),
            }
        }
        other => BackupError::Pipeline(other),
    })?;
    let usage = info.usage.map(|u| u.tally).unwrap_or_default();
    if usage.files != compared.files || usage.apparent_bytes != compared.bytes {
        return Err(BackupError::DrillMismatch {
            artifact: record.name.clone(),
            reason: format!(
                "the archive holds {} files ({} bytes), the restored volume {} files ({} \
                 bytes)",
                compared.files, compared.bytes, usage.files, usage.apparent_bytes
            ),
        });
    }
    tracing::debug!(artifact = %record.name, files = compared.files, sampled = compared.sampled, "drill compared");
    Ok(compared.files)
}

const MISMATCH: &str = "mismatch: ";

fn mismatch(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{MISMATCH}{what}"))
}

/// Reads a volume's tar stream and compares it with the restored tree under `root`: every
/// regular file counted, a sample compared byte for byte (see the module doc: an even spread
/// without knowing the archive's length in advance).
fn compare_tar(r: &mut dyn Read, root: &Path) -> io::Result<Compared> {
    let mut archive = tar::Archive::new(r);
    let mut out = Compared::default();
    let mut stride = 1u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path: PathBuf = entry.path()?.into_owned();
        let size = entry.header().size()?;
        out.files += 1;
        out.bytes += size;
        if out.files % stride != 0 {
            io::copy(&mut entry, &mut io::sink())?;
            continue;
        }
        out.sampled += 1;
        if out.sampled % SAMPLE_STEP == 0 {
            stride *= 2;
        }
        let restored = root.join(&path);
        let mut file = std::fs::File::open(&restored)
            .map_err(|e| mismatch(format!("{}: not restored ({e})", path.display())))?;
        if !same_bytes(&mut entry, &mut file)? {
            return Err(mismatch(format!(
                "{}: the restored file differs from the archive",
                path.display()
            )));
        }
    }
    Ok(out)
}

fn same_bytes(a: &mut dyn Read, b: &mut dyn Read) -> io::Result<bool> {
    let mut x = vec![0u8; 64 << 10];
    let mut y = vec![0u8; 64 << 10];
    loop {
        let n = read_full(a, &mut x)?;
        let m = read_full(b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o640);
            header.set_cksum();
            builder
                .append_data(&mut header, name, *data)
                .expect("append");
        }
        builder.into_inner().expect("tar")
    }

    #[test]
    fn the_comparison_finds_a_changed_or_missing_file_and_counts_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a")).expect("mkdir");
        std::fs::write(dir.path().join("a/x.txt"), b"hello").expect("write");
        std::fs::write(dir.path().join("y.bin"), b"world!").expect("write");
        let tar = tar_of(&[("a/x.txt", b"hello"), ("y.bin", b"world!")]);
        let c = compare_tar(&mut tar.as_slice(), dir.path()).expect("same");
        assert_eq!((c.files, c.bytes, c.sampled), (2, 11, 2));

        std::fs::write(dir.path().join("y.bin"), b"w0rld!").expect("write");
        let e = compare_tar(&mut tar.as_slice(), dir.path()).expect_err("differs");
        assert!(
            e.to_string().contains("y.bin: the restored file differs"),
            "{e}"
        );

        std::fs::remove_file(dir.path().join("y.bin")).expect("rm");
        let e = compare_tar(&mut tar.as_slice(), dir.path()).expect_err("missing");
        assert!(e.to_string().contains("y.bin: not restored"), "{e}");
    }

    #[test]
    fn large_archives_are_sampled_evenly_up_to_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names: Vec<String> = (0..1000).map(|i| format!("f{i:04}")).collect();
        for n in &names {
            std::fs::write(dir.path().join(n), n.as_bytes()).expect("write");
        }
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), n.as_bytes())).collect();
        let tar = tar_of(&files);
        let c = compare_tar(&mut tar.as_slice(), dir.path()).expect("same");
        assert_eq!(c.files, 1000);
        // 128 of the first 128, 128 of the next 256, 128 of the next 512, then every 8th.
        assert_eq!(c.sampled, 128 + 128 + 128 + 13);
    }
}
