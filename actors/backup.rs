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
//! the store's business.

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
