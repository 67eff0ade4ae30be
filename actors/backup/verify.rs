//! Verifying a backup at a level: `checksummed` (every artifact's stored bytes against the
//! manifest's size and SHA-256; no key needed) or `decoded` (also decrypted, decompressed and
//! parsed to its end: tar headers and sizes for volumes and the schema files, TOML for the
//! configuration).
//!
//! The manifest is read from storage, not from the catalogue: verification is about what
//! storage holds now, and a manifest that no longer parses is itself a finding
//! (`bad_manifest`, `unknown_format`, naming `manifest.json`).
//!
//! The result is recorded in `verify.json` beside the backup and in the catalogue — a failure
//! too, since a later failure lowers what the backup counts as — except when a failure says
//! something about the key rather than the backup (an identity that opens nothing, a
//! passphrase that does not open `key.age`): the backup is not worse for it, so nothing is
//! recorded and nothing changes.
//!
//! Keys for `decoded`, all that are at hand, tried together: the identity the caller gives,
//! `backup.identity_file` (or the `backup_identity` credential), and in passphrase mode the
//! backup's own `key.age` opened with the configured passphrase.

use std::collections::BTreeMap;
use std::io::{self, Read};

use chrono::Utc;
use serde::Serialize;
use tokio::time::Instant;

use super::id::BackupId;
use super::keys::{BackupKey, Identities, KeyError};
use super::manifest::{ArtifactCheck, Level, LevelResult, Manifest, VerifyRecord};
use super::pipeline::{self, Decoding, PipelineError, walk_tar};
use super::storage::{KEY, MANIFEST, VERIFY};
use super::{BackupError, Shared};
use crate::events::{self, BackupVerified, BackupVerifyFailed};

/// What a verification found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub id: BackupId,
    pub level: Level,
    pub result: LevelResult,
    /// The first failure: artifact, code, message.
    pub first_failure: Option<(String, String, String)>,
    /// Whether the result went into verify.json (see the module doc).
    pub recorded: bool,
    /// What the backup counts as now ([`VerifyRecord::effective_level`]).
    pub counts_as: Option<Level>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.result.passed
    }
}

/// Verifies backup `id` at `level`; see the module doc.
pub(super) async fn verify(
    shared: &Shared,
    id: BackupId,
    level: Level,
    identity: Option<Identities>,
) -> Result<VerifyReport, BackupError> {
    if level == Level::Drilled {
        return Err(BackupError::NotSupported {
            what: "drilled verification runs as a drill (backup::drill), not here".to_owned(),
        });
    }
    let clock = Instant::now();
    let storage = shared.storage().await?;
    let bytes = storage
        .get_file(&id, MANIFEST)
        .await?
        .ok_or_else(|| BackupError::NotFound { id: id.to_string() })?;
    let manifest = Manifest::parse(&bytes).map_err(BackupError::Manifest)?;
    if manifest.id != id {
        return Err(BackupError::Manifest(
            super::manifest::ManifestError::Malformed {
                file: "manifest.json",
                reason: format!("it names backup {}", manifest.id),
            },
        ));
    }
    let encrypted = manifest.encryption.is_encrypted();
    let decoding = match level {
        Level::Checksummed => None,
        _ => Some(Decoding::for_manifest(
            &manifest,
            keys_for(shared, &storage, &manifest, identity).await?,
        )),
    };

    let mut checks = BTreeMap::new();
    let mut first_failure = None;
    let mut about_the_key = false;
    for record in manifest.artifacts() {
        let outcome = match &decoding {
            None => pipeline::verify_checksum(&storage, &id, record).await,
            Some(d) => {
                let parse = parser_for(&record.name);
                pipeline::decode_artifact(&storage, &id, record, d, parse).await
            }
        };
        let check = match outcome {
            Ok(()) => ArtifactCheck::Ok,
            Err(e) if e.is_corrupt() => {
                about_the_key |= matches!(e, PipelineError::WrongIdentity { .. });
                first_failure.get_or_insert_with(|| {
                    (record.name.clone(), e.code().to_owned(), e.to_string())
                });
                ArtifactCheck::Failed {
                    code: e.code().to_owned(),
                    message: e.to_string(),
                }
            }
            // Not a finding about the backup: storage or local trouble ends the verification.
            Err(e) => return Err(BackupError::Pipeline(e)),
        };
        checks.insert(record.name.clone(), check);
    }
    let result = LevelResult::from_checks(Utc::now(), checks);
    let duration_ms = clock.elapsed().as_millis() as u64;

    let mut counts_as = None;
    let recorded = !about_the_key;
    if recorded {
        counts_as = record(shared, &storage, id, level, result.clone()).await?;
    }
    match &first_failure {
        None => events::emit(BackupVerified {
            id: id.to_string(),
            level: level.as_str(),
            artifacts: result.artifacts.len() as u64,
            duration_ms,
            encrypted,
        }),
        Some((artifact, code, _)) => events::emit(BackupVerifyFailed {
            id: id.to_string(),
            level: level.as_str(),
            code: static_code(code),
            artifact: artifact.clone(),
            failed: result
                .artifacts
                .values()
                .filter(|c| **c != ArtifactCheck::Ok)
                .count() as u64,
            duration_ms,
            encrypted,
        }),
    }
    Ok(VerifyReport {
        id,
        level,
        result,
        first_failure,
        recorded,
        counts_as,
    })
}

/// Keeps `result` as the latest at `level` in the backup's verify.json (storage, then the
/// catalogue); answers what the backup counts as now.
pub(super) async fn record(
    shared: &Shared,
    storage: &super::Storage,
    id: BackupId,
    level: Level,
    result: LevelResult,
) -> Result<Option<Level>, BackupError> {
    let mut record = match storage.get_file(&id, VERIFY).await? {
        Some(bytes) => VerifyRecord::parse(&bytes)
            .ok()
            .filter(|v| v.id == id)
            .unwrap_or_else(|| VerifyRecord::new(id)),
        None => VerifyRecord::new(id),
    };
    record.record(level, result);
    let counts_as = record.effective_level();
    storage.put_file(&id, VERIFY, record.to_json()).await?;
    if let Err(e) = shared.catalogue_verify(storage, record).await {
        tracing::warn!(%id, error = %e, code = e.code(), "backup catalogue not updated");
    }
    Ok(counts_as)
}

/// Every identity at hand for `manifest` (see the module doc); `None` when the backup is not
/// encrypted.
pub(super) async fn keys_for(
    shared: &Shared,
    storage: &super::Storage,
    manifest: &Manifest,
    given: Option<Identities>,
) -> Result<Option<Identities>, BackupError> {
    if !manifest.encryption.is_encrypted() {
        return Ok(None);
    }
    let mut ids = given.unwrap_or_default();
    if let Some(configured) = &shared.config.backup.identity {
        ids.extend(
            Identities::parse(configured.origin(), configured.expose())
                .map_err(BackupError::Key)?,
        );
    }
    if manifest.encryption.passphrase
        && let Some(passphrase) = &shared.config.backup.passphrase
    {
        let sealed = storage.get_file(&manifest.id, KEY).await?.ok_or_else(|| {
            BackupError::Pipeline(PipelineError::Missing {
                artifact: KEY.to_owned(),
            })
        })?;
        let pass = passphrase.clone();
        // scrypt: about a second of CPU, off the event loop.
        let opened = tokio::task::spawn_blocking(move || BackupKey::open(&sealed, &pass))
            .await
            .map_err(|e| BackupError::Interrupted {
                reason: format!("opening key.age: {e}"),
            })?;
        match opened {
            Ok(key) => ids.extend(key.identities()),
            Err(KeyError::Passphrase { reason }) => {
                return Err(BackupError::KeyAge { reason });
            }
            Err(e) => return Err(BackupError::Key(e)),
        }
    }
    if ids.is_empty() {
        return Err(BackupError::IdentityRequired);
    }
    Ok(Some(ids))
}

pub(super) type Parser = fn(&mut dyn Read) -> io::Result<()>;

/// How an artifact's plain bytes are checked, by its name: tar streams walked entry by entry,
/// the configuration parsed as TOML, anything else read to its end.
pub(super) fn parser_for(name: &str) -> Parser {
    let stem = name
        .trim_end_matches(".age")
        .trim_end_matches(".zst")
        .trim_end_matches(".gz");
    if stem.ends_with(".tar") {
        |r| walk_tar(r).map(|_| ())
    } else if stem.ends_with(".toml") {
        parse_toml
    } else {
        |r| io::copy(r, &mut io::sink()).map(|_| ())
    }
}

/// The configuration artifact: UTF-8 TOML, at most 16 MiB.
fn parse_toml(r: &mut dyn Read) -> io::Result<()> {
    let mut text = String::new();
    r.take(16 << 20).read_to_string(&mut text)?;
    toml::from_str::<toml::Table>(&text)
        .map(|_| ())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not TOML: {e}")))
}

/// The codes a verification reports, as the static strings events carry.
pub(super) fn static_code(code: &str) -> &'static str {
    [
        "missing",
        "truncated",
        "checksum_mismatch",
        "wrong_identity",
        "bad_format",
    ]
    .into_iter()
    .find(|c| *c == code)
    .unwrap_or("corrupt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_follow_the_artifact_name() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        header.set_cksum();
        tar.append_data(&mut header, "a", &b"abc"[..])
            .expect("append");
        let tar = tar.into_inner().expect("tar");
        for name in [
            "volumes/chunks.tar.zst.age",
            "lucid-db/mongodb-schemas.tar.gz",
        ] {
            parser_for(name)(&mut &tar[..]).expect(name);
            assert!(parser_for(name)(&mut &b"not a tar"[..]).is_err(), "{name}");
        }
        let toml = b"[backup]\nstorage = \"fs\"\n";
        parser_for("lucid-db/config.toml.zst.age")(&mut &toml[..]).expect("toml");
        assert!(parser_for("lucid-db/config.toml.zst")(&mut &b"[[["[..]).is_err());
        parser_for("other/blob.zst")(&mut &b"anything"[..]).expect("read to the end");
    }
}
