//! Verifying a backup at a level: `checksummed` (every artifact's stored bytes against the
//! manifest's size and SHA-256; no key needed) or `decoded` (also decrypted, decompressed and
//! parsed to its end with the decoders a restore uses: tar headers and sizes for volumes and
//! the schema files, TOML for the configuration, every BSON document and mongodump's metadata
//! for MongoDB, every `RESTORE` command and its payload's CRC-64 for Redis, every `_bulk` line
//! pair and the create body for Elasticsearch). What a database artifact holds is compared
//! with the manifest's source facts — documents per collection and per index, keys per type
//! — so a file that decodes but lost (or gained) items is `count_mismatch`.
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
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::formats::resp::RespSummary;
use super::formats::{bulk, mongodump, resp};
use super::id::BackupId;
use super::keys::{BackupKey, Identities, KeyError};
use super::manifest::{
    ArtifactCheck, ArtifactRecord, Level, LevelResult, Manifest, StoreRecord, VerifyRecord,
};
use super::pipeline::{self, Decoding, PipelineError, walk_tar};
use super::storage::{KEY, MANIFEST, VERIFY};
use super::{BackupError, Shared};
use crate::events::{self, BackupVerified, BackupVerifyFailed};

/// What a verification found.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    for (store, record) in manifest
        .stores
        .iter()
        .flat_map(|(name, s)| s.artifacts.iter().map(move |a| ((name, s), a)))
    {
        let outcome = match &decoding {
            None => pipeline::verify_checksum(&storage, &id, record).await,
            Some(d) => {
                let parse = parser_for(&record.name);
                pipeline::decode_artifact(&storage, &id, record, d, parse)
                    .await
                    .and_then(|found| compare(store.0, store.1, record, found))
            }
        };
        let check = match outcome {
            Ok(_) => ArtifactCheck::Ok,
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

/// What the `decoded` walk of an artifact counted, for [`compare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decoded {
    /// Nothing to compare (a tar, the configuration, a metadata file).
    Whole,
    /// Documents (a `.bson` or `.ndjson` file).
    Documents(u64),
    /// Keys, and keys per type (a `.resp` file).
    Keys(RespSummary),
}

pub(super) type Parser = fn(&mut dyn Read) -> io::Result<Decoded>;

/// How an artifact's plain bytes are checked, by its name: tar streams walked entry by entry,
/// the configuration parsed as TOML, each database format with its decoder, anything else
/// read to its end.
pub(super) fn parser_for(name: &str) -> Parser {
    let stem = name
        .trim_end_matches(".age")
        .trim_end_matches(".zst")
        .trim_end_matches(".gz");
    if stem.ends_with(".tar") {
        |r| walk_tar(r).map(|_| Decoded::Whole)
    } else if stem.ends_with(".toml") {
        |r| parse_toml(r).map(|()| Decoded::Whole)
    } else if stem.ends_with(".bson") {
        |r| mongodump::walk_bson(r).map(Decoded::Documents)
    } else if stem.ends_with(".metadata.json") {
        |r| mongodump::walk_metadata(r).map(|_| Decoded::Whole)
    } else if stem.ends_with(".resp") {
        |r| resp::walk_resp(r).map(Decoded::Keys)
    } else if stem.ends_with(".ndjson") {
        |r| bulk::walk_bulk(r).map(Decoded::Documents)
    } else if stem.ends_with(".meta.json") {
        |r| bulk::walk_index_body(r).map(|_| Decoded::Whole)
    } else {
        |r| io::copy(r, &mut io::sink()).map(|_| Decoded::Whole)
    }
}

/// What an artifact decoded to against what its store's source facts say it holds: the
/// documents of `mongodb/<db>/<coll>.bson` against `collections.<coll>.documents`, of
/// `elasticsearch/<index>.ndjson` against `indices.<index>.documents`, the keys of
/// `redis/db<N>.resp` against `keys` and `keys_by_type`. Facts that are not there (a backup
/// written before they were recorded) are not a finding.
pub(super) fn compare(
    store: &str,
    facts: &StoreRecord,
    record: &ArtifactRecord,
    found: Decoded,
) -> Result<(), PipelineError> {
    let source = &facts.source;
    let file = record.name.rsplit('/').next().unwrap_or_default();
    let base = file.split('.').next().unwrap_or_default();
    let mismatch = |what: &str, expected: u64, found: u64| {
        if expected == found {
            Ok(())
        } else {
            Err(PipelineError::CountMismatch {
                artifact: record.name.clone(),
                what: what.to_owned(),
                expected,
                found,
            })
        }
    };
    match (store, found) {
        ("mongodb", Decoded::Documents(n)) => {
            match source["collections"][base]["documents"].as_u64() {
                Some(expected) => mismatch("documents", expected, n),
                None => Ok(()),
            }
        }
        ("elasticsearch", Decoded::Documents(n)) => {
            // An index name holds dots (`lucid-blocks-2026.11`): the name is the file's
            // name without `.ndjson` and what follows.
            let index = file.split(".ndjson").next().unwrap_or_default();
            match source["indices"][index]["documents"].as_u64() {
                Some(expected) => mismatch("documents", expected, n),
                None => Ok(()),
            }
        }
        ("redis", Decoded::Keys(summary)) => {
            if let Some(expected) = source["keys"].as_u64() {
                mismatch("keys", expected, summary.keys)?;
            }
            if let Some(by_type) = source["keys_by_type"].as_object() {
                let kinds: std::collections::BTreeSet<&String> =
                    by_type.keys().chain(summary.by_type.keys()).collect();
                for kind in kinds {
                    let expected = by_type.get(kind).and_then(|v| v.as_u64()).unwrap_or(0);
                    let found = summary.by_type.get(kind).copied().unwrap_or(0);
                    mismatch(&format!("{kind} keys"), expected, found)?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
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
        "count_mismatch",
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

        // The database formats, each with its decoder.
        let bson = mongodb::bson::RawDocumentBuf::from_document(&mongodb::bson::doc! {"a": 1})
            .expect("raw");
        let bson = [bson.as_bytes(), bson.as_bytes()].concat();
        assert_eq!(
            parser_for("mongodb/lucid/users.bson.zst.age")(&mut &bson[..]).expect("bson"),
            Decoded::Documents(2)
        );
        assert!(parser_for("mongodb/lucid/users.bson.zst")(&mut &bson[..7]).is_err());
        let meta = br#"{"indexes":[],"collectionName":"users"}"#;
        parser_for("mongodb/lucid/users.metadata.json.zst")(&mut &meta[..]).expect("metadata");
        assert!(parser_for("mongodb/lucid/users.metadata.json.zst")(&mut &b"{}"[..]).is_err());
        let ndjson = b"{\"index\":{\"_id\":\"a\"}}\n{\"n\":1}\n";
        assert_eq!(
            parser_for("elasticsearch/lucid-x-2026.01.ndjson.gz")(&mut &ndjson[..]).expect("bulk"),
            Decoded::Documents(1)
        );
        assert!(parser_for("elasticsearch/lucid-x-2026.01.ndjson.gz")(&mut &ndjson[..20]).is_err());
        parser_for("elasticsearch/lucid-x-2026.01.meta.json.gz")(&mut &b"{\"settings\":{}}"[..])
            .expect("create body");
        assert!(parser_for("redis/db0.resp.zst")(&mut &b"*1\r\n"[..]).is_err());
        assert_eq!(
            parser_for("redis/db0.resp.zst")(&mut &b""[..]).expect("no keys"),
            Decoded::Keys(RespSummary::default())
        );
    }

    #[test]
    fn counts_are_compared_with_the_source_facts() {
        let store = |source: serde_json::Value| StoreRecord {
            outcome: super::super::manifest::Outcome::Complete,
            started: None,
            ended: None,
            source: source.as_object().cloned().unwrap_or_default(),
            artifacts: Vec::new(),
        };
        let record = |name: &str| ArtifactRecord {
            name: name.to_owned(),
            logical: String::new(),
            bytes_in: 0,
            bytes_stored: 0,
            sha256: String::new(),
        };
        let mongo = store(serde_json::json!({"collections": {"users": {"documents": 3}}}));
        let search = store(serde_json::json!({"indices": {"lucid-x-2026.01": {"documents": 2}}}));
        let redis = store(serde_json::json!({"keys": 3, "keys_by_type": {"string": 2, "hash": 1}}));
        let keys = |pairs: &[(&str, u64)]| {
            Decoded::Keys(RespSummary {
                keys: pairs.iter().map(|(_, n)| n).sum(),
                by_type: pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
            })
        };
        type Case<'a> = (&'a str, &'a StoreRecord, &'a str, Decoded, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "mongodb",
                &mongo,
                "mongodb/lucid/users.bson.zst",
                Decoded::Documents(3),
                None,
            ),
            (
                "mongodb",
                &mongo,
                "mongodb/lucid/users.bson.zst",
                Decoded::Documents(2),
                Some("holds 2 documents, the manifest's source facts say 3"),
            ),
            // No facts for it (an older backup): nothing to compare.
            (
                "mongodb",
                &mongo,
                "mongodb/lucid/blocks.bson.zst",
                Decoded::Documents(9),
                None,
            ),
            (
                "elasticsearch",
                &search,
                "elasticsearch/lucid-x-2026.01.ndjson.zst.age",
                Decoded::Documents(2),
                None,
            ),
            (
                "elasticsearch",
                &search,
                "elasticsearch/lucid-x-2026.01.ndjson.zst.age",
                Decoded::Documents(3),
                Some("holds 3 documents"),
            ),
            (
                "redis",
                &redis,
                "redis/db0.resp.zst",
                keys(&[("string", 2), ("hash", 1)]),
                None,
            ),
            (
                "redis",
                &redis,
                "redis/db0.resp.zst",
                keys(&[("string", 2)]),
                Some("holds 2 keys, the manifest's source facts say 3"),
            ),
            (
                "redis",
                &redis,
                "redis/db0.resp.zst",
                keys(&[("string", 1), ("hash", 1), ("zset", 1)]),
                Some("holds 1 string keys"),
            ),
            ("volumes", &mongo, "volumes/x.tar.zst", Decoded::Whole, None),
        ];
        for (store, facts, name, found, want) in cases {
            let got = compare(store, facts, &record(name), found);
            match (got, want) {
                (Ok(()), None) => {}
                (Err(e), Some(needle)) => {
                    assert_eq!(e.code(), "count_mismatch");
                    assert!(e.is_corrupt());
                    assert!(e.to_string().starts_with(name), "{e}");
                    assert!(e.to_string().contains(needle), "{name}: {e}");
                }
                (got, want) => panic!("{store} {name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
