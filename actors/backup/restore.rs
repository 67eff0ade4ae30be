//! Restoring a backup into the stores: `lucid-db backup restore ID [--stores …]`.
//!
//! A restore holds the backup lock (no backup, prune or second restore meanwhile, here or in
//! another process) and the backup's reader lock (retention keeps it). Then, in order:
//!
//! 1. **Selection**: the stores and artifacts the caller names, from the manifest in storage
//!    (not the catalogue: what storage holds now is what will be restored); by default every
//!    complete store in the backup. A store that failed in the backup cannot be restored from
//!    it (`not_in_backup`).
//! 2. **Checksums**: every selected artifact's stored bytes against the manifest's SHA-256,
//!    before anything is written — a damaged backup changes nothing (exit 65).
//! 3. **Targets**: each target is looked at, and a non-empty one refuses the whole restore
//!    unless `force` — before anything is written, so a refusal changes nothing. (Empty
//!    targets, such as the empty volumes lucid-db itself creates, do not count.)
//! 4. **Import**, one artifact after another, through each store's import (the one contract,
//!    [`crate::transfer`]): the artifact is read from storage, hashed again, decrypted and
//!    decompressed on a blocking thread, and streamed into the import through a bounded
//!    channel. The plain stream ends only once the artifact's digest matched again: a byte
//!    that changed since step 2 ends the stream with an error, so the store's import undoes
//!    what it wrote instead of finishing a restore from bad bytes.
//!
//! Stores restored: volumes (`volumes`, `volumes:NAME`, into another volume with
//! `to_volume`). MongoDB, Redis and Elasticsearch join with their artifact decoders.

use std::collections::BTreeMap;

use futures_util::Stream;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::id::BackupId;
use super::keys::Identities;
use super::manifest::{ArtifactRecord, Manifest, Outcome};
use super::pipeline::{self, Decoding, PipelineError};
use super::select::StoreSelector;
use super::storage::{MANIFEST, Storage};
use super::{BackupError, Shared};
use crate::events::{self, BackupRestoreFailed, BackupRestored};
use crate::transfer::{Existing, ImportOptions};
use crate::volume::{InspectVolume, VolumeError, VolumeName};

/// Plain bytes an artifact's stream holds at most in flight (chunks of 64 KiB).
const IN_FLIGHT: usize = 16;
const CHUNK: usize = 64 << 10;

/// Where a restore writes, when not where the backup came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// The volume a single selected volume is restored into.
    pub to_volume: Option<VolumeName>,
}

/// What one artifact's import did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub store: String,
    pub artifact: String,
    /// The store's own name for the target (a volume's name).
    pub target: String,
    pub read: u64,
    pub written: u64,
    pub skipped: u64,
    pub elapsed_ms: u64,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub id: BackupId,
    pub restored: Vec<Restored>,
    pub elapsed_ms: u64,
}

/// One artifact to restore, and where.
#[derive(Debug, Clone)]
struct Step {
    store: &'static str,
    record: ArtifactRecord,
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    Volume(VolumeName),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Volume(name) => format!("volume {name}"),
        }
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

/// Restores backup `id`; see the module doc. The caller holds the backup lock.
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
    let steps = plan(&manifest, selection, targets)?;

    // 2. Every checksum before anything is written.
    for step in &steps {
        pipeline::verify_checksum(&storage, &id, &step.record)
            .await
            .map_err(BackupError::Pipeline)?;
    }
    let decoding = Decoding::for_manifest(
        &manifest,
        super::verify::keys_for(shared, &storage, &manifest, identity).await?,
    );

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
        let plain = open_artifact(storage.clone(), id, step.record.clone(), decoding.clone());
        let started = Instant::now();
        let (target, read, written, skipped) = match &step.target {
            Target::Volume(name) => {
                let handle = shared.volumes("volumes")?;
                let summary = handle
                    .import(ImportOptions::new(name.clone()).existing(existing), plain)
                    .await
                    .map_err(|e| restore_error(&step.record.name, e))?;
                (
                    name.to_string(),
                    summary.read,
                    summary.written,
                    summary.skipped.values().sum(),
                )
            }
        };
        tracing::info!(%id, artifact = %step.record.name, %target, written, "restored");
        restored.push(Restored {
            store: step.store.to_owned(),
            artifact: step.record.name.clone(),
            target,
            read,
            written,
            skipped,
            elapsed_ms: started.elapsed().as_millis() as u64,
        });
    }
    Ok(RestoreReport {
        id,
        restored,
        elapsed_ms: 0,
    })
}

/// An import that failed: when its source failed because the artifact did not decode (or
/// changed since its checksum), that is the finding; otherwise the store's own error.
fn restore_error(artifact: &str, e: VolumeError) -> BackupError {
    match e {
        VolumeError::ImportSource { reason, .. } => {
            BackupError::Pipeline(PipelineError::Undecodable {
                artifact: artifact.to_owned(),
                reason,
            })
        }
        other => BackupError::Volume(other),
    }
}

/// What the target holds, when it holds something an import would write over.
async fn holding(shared: &Shared, target: &Target) -> Result<Option<String>, BackupError> {
    match target {
        Target::Volume(name) => {
            let Some(handle) = shared.stores.volumes.as_ref() else {
                return Ok(None);
            };
            match handle.call(InspectVolume { name: name.clone() }).await {
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
            }
        }
    }
}

/// The steps of a restore: the artifacts `selection` names in `manifest`, with their targets.
fn plan(
    manifest: &Manifest,
    selection: &[StoreSelector],
    targets: &Targets,
) -> Result<Vec<Step>, BackupError> {
    let mut steps = Vec::new();
    let volumes = manifest.stores.get("volumes");
    let complete_volumes = || -> Result<&Vec<ArtifactRecord>, BackupError> {
        match volumes {
            Some(s) if s.outcome == Outcome::Complete || !s.artifacts.is_empty() => {
                Ok(&s.artifacts)
            }
            _ => Err(BackupError::NotInBackup {
                what: "volumes".to_owned(),
                id: manifest.id.to_string(),
            }),
        }
    };
    let all: Vec<StoreSelector> = if selection.is_empty() {
        manifest
            .stores
            .iter()
            .filter(|(name, s)| name.as_str() == "volumes" && !s.artifacts.is_empty())
            .map(|_| StoreSelector::Volumes)
            .collect()
    } else {
        selection.to_vec()
    };
    for selector in &all {
        match selector {
            StoreSelector::Volumes => {
                for record in complete_volumes()? {
                    steps.push(volume_step(record)?);
                }
            }
            StoreSelector::Volume(name) => {
                let record = complete_volumes()?
                    .iter()
                    .find(|a| a.logical == name.as_str())
                    .ok_or_else(|| BackupError::NotInBackup {
                        what: format!("volumes:{name}"),
                        id: manifest.id.to_string(),
                    })?;
                steps.push(volume_step(record)?);
            }
            other => {
                return Err(BackupError::NotSupported {
                    what: format!(
                        "restoring {other} (not built yet: restore it by hand, docs/backup.md)"
                    ),
                });
            }
        }
    }
    if steps.is_empty() {
        return Err(BackupError::NotInBackup {
            what: "anything restorable".to_owned(),
            id: manifest.id.to_string(),
        });
    }
    let mut seen = BTreeMap::new();
    steps.retain(|s| seen.insert(s.record.name.clone(), ()).is_none());
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

/// The plain bytes of one artifact (decrypted, decompressed) as a stream, for an import. The
/// stream ends only after the artifact's size and SHA-256 matched the manifest; otherwise its
/// last item is the error (see the module doc).
pub fn open_artifact(
    storage: Storage,
    id: BackupId,
    record: ArtifactRecord,
    decoding: Decoding,
) -> impl Stream<Item = Result<Vec<u8>, String>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, String>>(IN_FLIGHT);
    let pump = tx.clone();
    tokio::spawn(async move {
        let outcome = pipeline::decode_artifact(&storage, &id, &record, &decoding, move |plain| {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = plain.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                if pump.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                    // The import stopped reading (it failed, or refused): nothing to do.
                    return Err(std::io::Error::other("the import stopped reading"));
                }
            }
        })
        .await;
        if let Err(e) = outcome {
            let _ = tx.send(Err(e.to_string())).await;
        }
    });
    tokio_stream_of(rx)
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
