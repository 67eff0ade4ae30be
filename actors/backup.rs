//! Backups: the format, keys, pipeline, storage and catalogue that the backup actor (next)
//! orchestrates. Every artifact is a standard format (tar, mongodump's BSON, RESP, `_bulk`
//! NDJSON) inside zstd (or gzip) inside age, in a layout an operator can restore from with
//! stock tools (docs/backup.md; the layout is BACKUP.md's).
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
//! - [`pipeline`] — one artifact's bytes: any byte stream → compress → encrypt → hash →
//!   storage on a blocking thread behind bounded channels (memory flat whatever the size), and
//!   back: checksum, decrypt, decompress, parse.
//! - [`catalogue`] — the local cache of manifests and verification results under
//!   `state_dir/backup/catalogue/`, rebuilt from storage when missing or stale.
//!
//! Nothing here knows a store: sources are streams of bytes, and what each store exports is
//! the store's business. The checks of the `[backup]` section that need the age format or
//! volume names are [`check_config`]; [`config_warnings`] is what `config check` warns about.

pub mod catalogue;
pub mod id;
pub mod keys;
pub mod manifest;
pub mod pipeline;
pub mod storage;

pub use catalogue::{Catalogue, CatalogueError, Entry, SyncReport};
pub use id::BackupId;
pub use keys::{BackupKey, Identities, KeyError, Recipients, keygen};
pub use manifest::{
    ArtifactCheck, ArtifactRecord, Encryption, Level, LevelResult, Manifest, ManifestError,
    Outcome, StoreRecord, Trigger, VerifyRecord,
};
pub use pipeline::{Codec, Decoding, PipelineError, TarSummary, walk_tar};
pub use storage::{S3Settings, Storage, StorageError};

use crate::config::{BackupConfig, BackupStorage, ConfigError};
use crate::volume::VolumeName;

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
