//! The two JSON files a backup carries besides its artifacts (BACKUP.md, "The manifest"):
//! [`Manifest`] (`<id>/manifest.json`, format 1, written last: its presence means complete)
//! and [`VerifyRecord`] (`<id>/verify.json`, the latest verification result per level).
//!
//! Parsing is strict: a manifest of another format version is [`ManifestError::UnknownFormat`]
//! (an older lucid-db must not half-understand a newer backup), an unknown key or a missing
//! one is [`ManifestError::Malformed`] naming the path, and an artifact name that could leave
//! the backup's directory (`..`, an absolute path) is refused — the read path opens what the
//! manifest names.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::BackupId;
use crate::config::Compression;

/// Times in the JSON files: RFC 3339 in UTC (`2026-11-30T02:00:00Z`), fractions only when
/// there are any. (chrono's own serde support is not built into this crate.)
pub mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}")))
    }

    /// The same for an optional time (`null` or absent: `None`).
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            #[derive(Deserialize)]
            struct Wrapped(#[serde(with = "super")] DateTime<Utc>);
            Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(t)| t))
        }
    }
}

/// The manifest format this version writes and reads.
pub const FORMAT: u32 = 1;
/// The verify.json format this version writes and reads.
pub const VERIFY_FORMAT: u32 = 1;
/// The format of `pins.json`.
pub const PINS_FORMAT: u32 = 1;

/// A manifest or verify.json that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Written by another version of the format (a newer lucid-db, most likely).
    #[error("{file}: format {found} is not one this version reads (it reads format {FORMAT})")]
    UnknownFormat { file: &'static str, found: String },
    /// Not JSON, or JSON of the wrong shape.
    #[error("{file}: {reason}")]
    Malformed { file: &'static str, reason: String },
}

impl ManifestError {
    pub fn code(&self) -> &'static str {
        match self {
            ManifestError::UnknownFormat { .. } => "unknown_format",
            ManifestError::Malformed { .. } => "bad_manifest",
        }
    }
}

/// What started a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Cli,
    Schedule,
    Api,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cli => "cli",
            Trigger::Schedule => "schedule",
            Trigger::Api => "api",
        }
    }
}

/// How the artifacts were encrypted: to these recipients (public keys), and/or to a per-backup
/// identity wrapped with the passphrase in `key.age`. Neither (the default): not encrypted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    pub recipients: Vec<String>,
    pub passphrase: bool,
}

impl Encryption {
    pub fn is_encrypted(&self) -> bool {
        self.passphrase || !self.recipients.is_empty()
    }
}

/// One stored artifact, as the write path measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRecord {
    /// Path under the backup's directory: `volumes/chunks.tar.zst.age`.
    pub name: String,
    /// What it holds, in the store's terms: the volume `chunks`, the collection `lucid.users`.
    pub logical: String,
    /// Bytes that came from the source (before compression).
    pub bytes_in: u64,
    /// Bytes stored (after compression and encryption).
    pub bytes_stored: u64,
    /// SHA-256 of the stored bytes, lower-case hex.
    pub sha256: String,
}

/// How one store's part of a backup ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    /// `code` is the store error's low-cardinality code, `message` its redacted text.
    Failed {
        code: String,
        message: String,
    },
    /// Selected but not run (turned off, or nothing to back up).
    Skipped,
}

/// One store's record in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawStore", into = "RawStore")]
pub struct StoreRecord {
    pub outcome: Outcome,
    pub started: Option<DateTime<Utc>>,
    pub ended: Option<DateTime<Utc>>,
    /// Facts about the source (counts, server version, topology, index names, …), free-form,
    /// so a drill can compare a restore with what was backed up.
    pub source: serde_json::Map<String, serde_json::Value>,
    pub artifacts: Vec<ArtifactRecord>,
}

/// The manifest's spelling of a [`StoreRecord`]: the outcome's fields beside the rest (serde
/// cannot flatten a tagged enum into a struct that refuses unknown keys).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    outcome: OutcomeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    started: Option<DateTime<Utc>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    ended: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    source: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    artifacts: Vec<ArtifactRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OutcomeKind {
    Complete,
    Failed,
    Skipped,
}

impl TryFrom<RawStore> for StoreRecord {
    type Error = String;

    fn try_from(raw: RawStore) -> Result<StoreRecord, String> {
        let outcome = match (raw.outcome, raw.code, raw.message) {
            (OutcomeKind::Failed, Some(code), message) => Outcome::Failed {
                code,
                message: message.unwrap_or_default(),
            },
            (OutcomeKind::Failed, None, _) => return Err("a failed store needs a code".into()),
            (_, Some(_), _) | (_, _, Some(_)) => {
                return Err("only a failed store has a code and a message".into());
            }
            (OutcomeKind::Complete, None, None) => Outcome::Complete,
            (OutcomeKind::Skipped, None, None) => Outcome::Skipped,
        };
        for a in &raw.artifacts {
            check_artifact(a)?;
        }
        Ok(StoreRecord {
            outcome,
            started: raw.started,
            ended: raw.ended,
            source: raw.source,
            artifacts: raw.artifacts,
        })
    }
}

impl From<StoreRecord> for RawStore {
    fn from(s: StoreRecord) -> RawStore {
        let (outcome, code, message) = match s.outcome {
            Outcome::Complete => (OutcomeKind::Complete, None, None),
            Outcome::Failed { code, message } => (OutcomeKind::Failed, Some(code), Some(message)),
            Outcome::Skipped => (OutcomeKind::Skipped, None, None),
        };
        RawStore {
            outcome,
            code,
            message,
            started: s.started,
            ended: s.ended,
            source: s.source,
            artifacts: s.artifacts,
        }
    }
}

/// An artifact's name is a relative path of plain segments (`volumes/chunks.tar.zst.age`): no
/// `..`, no `.`, no empty segment, nothing but ASCII letters, digits and `._-@+=`. The read
/// path opens what the manifest names, so a hostile manifest must not reach outside the
/// backup. Its digest is 64 lower-case hex digits.
pub fn check_artifact_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 1024
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@+=".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "artifact name {:?} is not a relative path of plain segments",
            name.chars().take(128).collect::<String>()
        ))
    }
}

fn check_artifact(a: &ArtifactRecord) -> Result<(), String> {
    check_artifact_name(&a.name)?;
    if a.sha256.len() != 64
        || !a
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "artifact {}: sha256 must be 64 lower-case hex digits",
            a.name
        ));
    }
    Ok(())
}

/// `<id>/manifest.json`, format 1 (BACKUP.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Reserved for incremental backups: the id of the backup this one builds on. Format 1
    /// holds full backups only, so it is always null.
    pub base: Option<BackupId>,
    pub id: BackupId,
    #[serde(with = "rfc3339")]
    pub created: DateTime<Utc>,
    pub host: String,
    /// The lucid-db version that wrote it.
    pub lucid_db: String,
    pub trigger: Trigger,
    pub encryption: Encryption,
    pub compression: Compression,
    /// Per store (`volumes`, `mongodb`, `redis`, `elasticsearch`), its outcome and artifacts.
    pub stores: BTreeMap<String, StoreRecord>,
}

impl Manifest {
    /// A manifest of format 1 for `id`, created now, with no store yet.
    pub fn new(
        id: BackupId,
        created: DateTime<Utc>,
        host: impl Into<String>,
        trigger: Trigger,
        encryption: Encryption,
        compression: Compression,
    ) -> Manifest {
        Manifest {
            format: FORMAT,
            base: None,
            id,
            created,
            host: host.into(),
            lucid_db: env!("CARGO_PKG_VERSION").to_owned(),
            trigger,
            encryption,
            compression,
            stores: BTreeMap::new(),
        }
    }

    /// Every artifact of every store, in store order.
    pub fn artifacts(&self) -> impl Iterator<Item = &ArtifactRecord> {
        self.stores.values().flat_map(|s| s.artifacts.iter())
    }

    /// The manifest as written to storage (pretty JSON: `jq` is the reader on the worst day).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses `manifest.json`; see the module doc for what is refused.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = parse_versioned("manifest.json", bytes, FORMAT)?;
        if manifest.base.is_some() {
            return Err(ManifestError::Malformed {
                file: "manifest.json",
                reason: "base: format 1 holds full backups only (base must be null)".into(),
            });
        }
        let mut names = std::collections::HashSet::new();
        if let Some(dup) = manifest.artifacts().find(|a| !names.insert(&a.name)) {
            return Err(ManifestError::Malformed {
                file: "manifest.json",
                reason: format!("artifact {} is listed twice", dup.name),
            });
        }
        Ok(manifest)
    }
}

/// Reads `format` first, so that another version is [`ManifestError::UnknownFormat`] rather
/// than a confusing complaint about some key, then the whole document, naming the path of the
/// first problem.
fn parse_versioned<T: serde::de::DeserializeOwned>(
    file: &'static str,
    bytes: &[u8],
    want: u32,
) -> Result<T, ManifestError> {
    let malformed = |reason: String| ManifestError::Malformed { file, reason };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON: {e}")))?;
    match value.get("format") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(want)) => {}
        Some(other) => {
            return Err(ManifestError::UnknownFormat {
                file,
                found: other.to_string().chars().take(32).collect(),
            });
        }
        None => return Err(malformed("no format key".into())),
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        malformed(format!("{path}: {}", e.into_inner()))
    })
}

// ---------------------------------------------------------------------------------------------
// verify.json

/// Verification levels, weakest first: `checksummed` (every stored artifact's SHA-256 matches
/// the manifest; no identity needed) < `decoded` (decrypted, decompressed and parsed to its
/// end) < `drilled` (restored into scratch targets and compared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Checksummed,
    Decoded,
    Drilled,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::Checksummed, Level::Decoded, Level::Drilled];

    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Checksummed => "checksummed",
            Level::Decoded => "decoded",
            Level::Drilled => "drilled",
        }
    }
}

/// One artifact's result at one level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase", deny_unknown_fields)]
pub enum ArtifactCheck {
    Ok,
    Failed { code: String, message: String },
}

/// The latest run at one level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelResult {
    #[serde(with = "rfc3339")]
    pub at: DateTime<Utc>,
    /// True when every artifact passed.
    pub passed: bool,
    /// Per artifact name.
    pub artifacts: BTreeMap<String, ArtifactCheck>,
    /// `drilled` only: per store, its outcome and restore time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stores: BTreeMap<String, super::drill::StoreDrill>,
}

impl LevelResult {
    /// A result from per-artifact checks: passed when every one is `Ok` (and there was at
    /// least one artifact, or the manifest listed none).
    pub fn from_checks(at: DateTime<Utc>, artifacts: BTreeMap<String, ArtifactCheck>) -> Self {
        let passed = artifacts.values().all(|c| *c == ArtifactCheck::Ok);
        LevelResult {
            at,
            passed,
            artifacts,
            stores: BTreeMap::new(),
        }
    }
}

/// `<id>/verify.json`: the latest result per level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRecord {
    pub format: u32,
    pub id: BackupId,
    pub levels: BTreeMap<Level, LevelResult>,
}

impl VerifyRecord {
    pub fn new(id: BackupId) -> VerifyRecord {
        VerifyRecord {
            format: VERIFY_FORMAT,
            id,
            levels: BTreeMap::new(),
        }
    }

    /// Keeps `result` as the latest at `level`.
    pub fn record(&mut self, level: Level, result: LevelResult) {
        self.levels.insert(level, result);
    }

    /// What the backup counts as: the highest level whose latest result passed with no
    /// failure at *any* level since. A checksum that fails after a decode passed means the
    /// stored bytes changed, so the decode proves nothing any more; a decode that fails after
    /// a checksum passed means the bytes are intact but unusable. Either way a later failure
    /// lowers the backup below everything that passed before it; `None`: not verified, or
    /// known bad. A failure and a pass at the same instant count as the failure.
    pub fn effective_level(&self) -> Option<Level> {
        let last_failure = self
            .levels
            .values()
            .filter(|r| !r.passed)
            .map(|r| r.at)
            .max();
        Level::ALL.into_iter().rev().find(|level| {
            self.levels
                .get(level)
                .is_some_and(|r| r.passed && last_failure.is_none_or(|f| r.at > f))
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<VerifyRecord, ManifestError> {
        parse_versioned("verify.json", bytes, VERIFY_FORMAT)
    }
}

// pins.json

/// One pin: when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    #[serde(with = "rfc3339")]
    pub at: DateTime<Utc>,
    pub reason: Option<String>,
}

/// `<id>/pins.json`: the pins that keep a backup from retention. Stored beside the backup
/// (written after the manifest, like verify.json), so they survive a catalogue rebuild; the
/// file is removed when the last pin is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRecord {
    pub format: u32,
    pub id: BackupId,
    pub pins: Vec<Pin>,
}

impl PinRecord {
    pub fn new(id: BackupId) -> PinRecord {
        PinRecord {
            format: PINS_FORMAT,
            id,
            pins: Vec::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<PinRecord, ManifestError> {
        parse_versioned("pins.json", bytes, PINS_FORMAT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BACKUP.md's example, its elisions filled in.
    const EXAMPLE: &str = r#"{ "format": 1, "base": null, "id": "20261130T020000Z-3f9a", "created": "2026-11-30T02:00:00Z",
  "host": "lucid-pi", "lucid_db": "0.2.0", "trigger": "schedule",
  "encryption": { "recipients": ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"], "passphrase": false },
  "compression": "zstd",
  "stores": {
    "volumes":  { "outcome": "complete", "started": "2026-11-30T02:00:00Z", "ended": "2026-11-30T02:00:09Z",
        "source": { "volumes": 1 }, "artifacts": [
        { "name": "volumes/chunks.tar.zst.age", "logical": "chunks",
          "bytes_in": 1048576, "bytes_stored": 400321,
          "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" } ] },
    "mongodb":  { "outcome": "failed", "code": "unavailable", "message": "MongoDB is not up" },
    "redis": { "outcome": "skipped" } } }"#;

    #[test]
    fn the_documented_example_parses_and_round_trips() {
        let m = Manifest::parse(EXAMPLE.as_bytes()).expect("parses");
        assert_eq!(m.id.to_string(), "20261130T020000Z-3f9a");
        assert_eq!(m.trigger, Trigger::Schedule);
        assert_eq!(m.compression, Compression::Zstd);
        assert!(m.encryption.is_encrypted());
        assert_eq!(m.stores["volumes"].outcome, Outcome::Complete);
        assert_eq!(m.stores["volumes"].source["volumes"], 1);
        assert_eq!(
            m.stores["mongodb"].outcome,
            Outcome::Failed {
                code: "unavailable".into(),
                message: "MongoDB is not up".into()
            }
        );
        assert_eq!(m.stores["redis"].outcome, Outcome::Skipped);
        assert_eq!(m.artifacts().count(), 1);
        let again = Manifest::parse(&m.to_json()).expect("round trip");
        assert_eq!(again, m);
        // The written form keeps the documented keys.
        let v: serde_json::Value = serde_json::from_slice(&m.to_json()).expect("json");
        assert_eq!(v["base"], serde_json::Value::Null);
        assert_eq!(v["stores"]["mongodb"]["code"], "unavailable");
        assert!(v["stores"]["redis"].get("artifacts").is_none());
    }

    #[test]
    fn another_format_is_a_typed_error() {
        for (from, to, found) in [
            ("\"format\": 1", "\"format\": 2", "2"),
            ("\"format\": 1", "\"format\": \"1\"", "\"1\""),
            ("\"format\": 1", "\"format\": 1.5", "1.5"),
        ] {
            let text = EXAMPLE.replacen(from, to, 1);
            let err = Manifest::parse(text.as_bytes()).expect_err(to);
            assert_eq!(err.code(), "unknown_format", "{err}");
            assert_eq!(
                err,
                ManifestError::UnknownFormat {
                    file: "manifest.json",
                    found: found.into()
                }
            );
        }
    }

    #[test]
    fn what_is_not_a_format_1_manifest_is_malformed_naming_the_place() {
        for (case, text, needle) in [
            ("not json", "{\"format\": 1,".to_owned(), "not JSON"),
            ("no format", "{}".to_owned(), "no format key"),
            (
                "unknown key",
                EXAMPLE.replacen("\"host\"", "\"hots\"", 1),
                "hots",
            ),
            (
                "bad id",
                EXAMPLE.replacen("20261130T020000Z-3f9a", "yesterday", 1),
                "id",
            ),
            (
                "traversal",
                EXAMPLE.replacen("volumes/chunks", "../../etc/chunks", 1),
                "relative path",
            ),
            (
                "absolute",
                EXAMPLE.replacen("volumes/chunks", "/etc/chunks", 1),
                "relative path",
            ),
            (
                "digest",
                EXAMPLE.replacen("9f86d0", "9F86D0", 1),
                "lower-case hex",
            ),
            (
                "failed without code",
                EXAMPLE.replacen("\"code\": \"unavailable\", ", "", 1),
                "needs a code",
            ),
            (
                "base",
                EXAMPLE.replacen("\"base\": null", "\"base\": \"20261129T020000Z-0000\"", 1),
                "full backups only",
            ),
            (
                "trigger",
                EXAMPLE.replacen("schedule", "cron", 1),
                "trigger",
            ),
        ] {
            let err = Manifest::parse(text.as_bytes()).expect_err(case);
            assert_eq!(err.code(), "bad_manifest", "{case}: {err}");
            assert!(err.to_string().contains(needle), "{case}: {err}");
        }
    }

    fn result(at: &str, passed: bool) -> LevelResult {
        let check = if passed {
            ArtifactCheck::Ok
        } else {
            ArtifactCheck::Failed {
                code: "checksum_mismatch".into(),
                message: "x".into(),
            }
        };
        LevelResult::from_checks(
            DateTime::parse_from_rfc3339(at)
                .expect("time")
                .with_timezone(&Utc),
            BTreeMap::from([("volumes/a.tar.zst".to_owned(), check)]),
        )
    }

    #[test]
    fn a_later_failure_at_any_level_lowers_the_backup() {
        use Level::*;
        let t = |h: u32| format!("2026-11-30T{h:02}:00:00Z");
        type Case<'a> = (&'a str, Vec<(Level, u32, bool)>, Option<Level>);
        let cases: Vec<Case> = vec![
            ("nothing yet", vec![], None),
            (
                "checksummed",
                vec![(Checksummed, 1, true)],
                Some(Checksummed),
            ),
            (
                "decoded over checksummed",
                vec![(Checksummed, 1, true), (Decoded, 2, true)],
                Some(Decoded),
            ),
            (
                "drilled",
                vec![
                    (Checksummed, 1, true),
                    (Decoded, 2, true),
                    (Drilled, 3, true),
                ],
                Some(Drilled),
            ),
            (
                "a later checksum failure voids the decode",
                vec![(Decoded, 1, true), (Checksummed, 2, false)],
                None,
            ),
            (
                "a later decode failure voids the checksum",
                vec![(Checksummed, 1, true), (Decoded, 2, false)],
                None,
            ),
            (
                "a pass after the failure stands",
                vec![(Decoded, 1, false), (Checksummed, 2, true)],
                Some(Checksummed),
            ),
            (
                "a drill failure lowers everything before it",
                vec![
                    (Checksummed, 3, true),
                    (Decoded, 4, true),
                    (Drilled, 5, false),
                ],
                None,
            ),
            (
                "only what passed after the failure counts",
                vec![
                    (Drilled, 1, true),
                    (Checksummed, 2, false),
                    (Decoded, 3, true),
                ],
                Some(Decoded),
            ),
            (
                "same instant: the failure wins",
                vec![(Checksummed, 2, false), (Decoded, 2, true)],
                None,
            ),
        ];
        let id: BackupId = "20261130T020000Z-3f9a".parse().expect("id");
        for (case, runs, want) in cases {
            let mut v = VerifyRecord::new(id);
            for (level, hour, passed) in runs {
                v.record(level, result(&t(hour), passed));
            }
            assert_eq!(v.effective_level(), want, "{case}");
            let again = VerifyRecord::parse(&v.to_json()).expect("round trip");
            assert_eq!(again, v, "{case}");
        }
    }

    #[test]
    fn verify_json_is_strict_too() {
        let err = VerifyRecord::parse(br#"{"format": 9, "id": "x", "levels": {}}"#)
            .expect_err("format 9");
        assert_eq!(err.code(), "unknown_format");
        let err = VerifyRecord::parse(
            br#"{"format": 1, "id": "20261130T020000Z-3f9a", "levels": {"eyeballed": {}}}"#,
        )
        .expect_err("unknown level");
        assert_eq!(err.code(), "bad_manifest");
        assert!(err.to_string().contains("verify.json"), "{err}");
    }
}
