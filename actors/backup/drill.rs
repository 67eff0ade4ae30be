//! Drills: `backup verify ID --level drilled`. A backup nobody has restored is a hope; a
//! drill restores it into scratch targets beside the live data, compares what came back with
//! the artifacts, records the outcome and each store's restore time as the `drilled` level in
//! `verify.json`, and removes every scratch target — also when it fails. A drill that was
//! killed leaves scratch targets behind: they carry the `drill-` prefix, and the next drill
//! removes them by name before it starts.
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
//! - MongoDB, Redis and Elasticsearch join with their restores.
//!
//! A drill holds the backup lock (it writes, and a Pi has one disk) and the backup's reader
//! lock. It needs an identity for an encrypted backup, like `decoded`.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::id::BackupId;
use super::keys::Identities;
use super::manifest::{ArtifactCheck, ArtifactRecord, Level, LevelResult};
use super::pipeline::{self, Decoding, PipelineError};
use super::restore::stored_manifest;
use super::verify::{self, VerifyReport};
use super::{BackupError, RunLock, Shared};
use crate::events::{self, BackupDrillFailed, BackupDrilled};
use crate::transfer::{Existing, ImportOptions};
use crate::volume::{DeleteVolume, InspectVolume, ListVolumes, VolumeName};

/// Files compared byte for byte per doubling of a volume's archive (see the module doc).
pub const SAMPLE_STEP: u64 = 128;
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
    remove_leftovers(shared).await?;
    let suffix = format!("{:04x}", rand::random::<u16>());

    let mut checks: BTreeMap<String, ArtifactCheck> = BTreeMap::new();
    let mut stores: BTreeMap<String, StoreDrill> = BTreeMap::new();
    let mut about_the_key = false;
    for (store, record) in &manifest.stores {
        let started = Instant::now();
        let mut restored = 0;
        let mut passed = true;
        for artifact in &record.artifacts {
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
            let check = match outcome {
                Ok(()) => ArtifactCheck::Ok,
                Err(e) if is_finding(&e) => {
                    about_the_key |= matches!(
                        e,
                        BackupError::Pipeline(PipelineError::WrongIdentity { .. })
                    );
                    passed = false;
                    ArtifactCheck::Failed {
                        code: e.code().to_owned(),
                        message: e.to_string(),
                    }
                }
                Err(e) => return Err(e),
            };
            checks.insert(artifact.name.clone(), check);
        }
        stores.insert(
            store.clone(),
            StoreDrill {
                passed,
                restore_ms: started.elapsed().as_millis() as u64,
                restored,
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

/// A failure that says something about the backup (recorded), rather than about the machine
/// the drill runs on (which ends the drill with an error).
fn is_finding(e: &BackupError) -> bool {
    match e {
        BackupError::Pipeline(p) => p.is_corrupt(),
        BackupError::DrillMismatch { .. } => true,
        _ => false,
    }
}

/// Removes the scratch volumes a killed drill left (by their prefix).
async fn remove_leftovers(shared: &Shared) -> Result<(), BackupError> {
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
