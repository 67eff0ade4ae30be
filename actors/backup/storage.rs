//! Where backups live, through opendal: a directory (the `backups` volume) or an S3 bucket,
//! laid out as BACKUP.md says — `<id>/manifest.json`, `<id>/volumes/<name>.tar.zst.age`, …
//!
//! - **fs**: rooted at a directory. Artifacts and small files are written under
//!   `<name>.partial` and renamed when complete (the file is synced before the rename, the
//!   directory after the manifest's), so a crash never leaves a final name on half a file. With
//!   a [`Reservation`] ([`Storage::charged_to`]), every byte is charged before it is written
//!   and a writer past its reservation stops with `over_reservation`.
//! - **s3**: endpoint, bucket, prefix, region and static keys; opendal's own configuration
//!   loading (environment, `~/.aws`) and the EC2 instance-metadata lookup are off, so nothing
//!   but lucid-db's configuration decides where backups go and with which keys. S3 has no
//!   rename: artifacts are written under their final names as multipart uploads of
//!   [`S3_PART_SIZE`] parts (S3's minimum is 5 MiB), which become visible only when
//!   completed; the manifest alone says a backup is complete.
//!
//! A backup without `manifest.json` is never listed ([`Storage::list_backups`]); the next run
//! removes what a crashed one left ([`Storage::cleanup`]): `.partial` files, backups without a
//! manifest, and on S3 the multipart uploads a killed process left open — invisible to every
//! object listing but stored and billed. opendal has no call for those, so
//! `super::uploads` lists and aborts them itself (an upload that fails in process is
//! aborted through opendal at once).
//!
//! Errors name the directory or the endpoint and bucket, never a key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use opendal::{ErrorKind, Operator};

use super::id::BackupId;
use super::manifest::check_artifact_name;
use super::uploads::{Uploads, UploadsError};
use crate::redact::{self, Secret};
use crate::volume::{Reservation, VolumeError};

/// `<id>/manifest.json`: written last; its presence means complete.
pub const MANIFEST: &str = "manifest.json";
/// `<id>/verify.json`: the latest verification result per level.
pub const VERIFY: &str = "verify.json";
/// `<id>/key.age`: passphrase mode's per-backup identity.
pub const KEY: &str = "key.age";
/// `<id>/pins.json`: what keeps a backup from retention.
pub const PINS: &str = "pins.json";
/// The suffix of a file still being written on a file system.
pub const PARTIAL: &str = ".partial";
/// Multipart part size on S3: above S3's 5 MiB minimum; one part is buffered at a time.
pub const S3_PART_SIZE: usize = 8 << 20;
/// The largest small file (manifest, verify.json, key.age) read back whole.
pub const SMALL_FILE_LIMIT: u64 = 16 << 20;

/// Where an S3 storage is, and its keys.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `https://s3.eu-central-1.amazonaws.com`, `http://127.0.0.1:9000`; empty: AWS's
    /// endpoint for the region.
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix under which the backups live (`lucid/pi-1`); empty: the bucket's root.
    pub prefix: String,
    pub region: String,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
}

/// A storage operation that failed. Messages name the place, never a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// Nothing answers at the endpoint (or the directory's file system is gone).
    #[error("backup storage {place} is unreachable: {reason}")]
    Unreachable { place: String, reason: String },
    /// The endpoint answers, but has no such bucket.
    #[error("bucket {bucket:?} does not exist at {endpoint}")]
    NoBucket { bucket: String, endpoint: String },
    /// Credentials refused, or a directory lucid-db may not write.
    #[error("backup storage {place} refused {op} {name}: {reason}")]
    Denied {
        place: String,
        op: &'static str,
        name: String,
        reason: String,
    },
    #[error("{name} is not in backup storage {place}")]
    NotFound { place: String, name: String },
    /// The writer went past its quota reservation on the backups volume.
    #[error(transparent)]
    Quota(#[from] VolumeError),
    #[error("backup storage {place}: {op} {name}: {reason}")]
    Io {
        place: String,
        op: &'static str,
        name: String,
        reason: String,
    },
    /// Settings opendal refused (an endpoint that is not a URL, …).
    #[error("{key}: {reason}")]
    Config { key: &'static str, reason: String },
}

impl StorageError {
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::Unreachable { .. } => "storage_unreachable",
            StorageError::NoBucket { .. } => "no_bucket",
            StorageError::Denied { .. } => "storage_denied",
            StorageError::NotFound { .. } => "not_found",
            StorageError::Quota(e) => e.code(),
            StorageError::Io { .. } => "storage_io",
            StorageError::Config { .. } => "invalid_config",
        }
    }
}

#[derive(Debug, Clone)]
enum Place {
    Fs {
        root: PathBuf,
    },
    S3 {
        endpoint: String,
        bucket: String,
        prefix: String,
    },
}

/// One stored file under a backup's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Relative to the backup's directory: `volumes/chunks.tar.zst.age`.
    pub name: String,
    pub size: u64,
}

/// What [`Storage::cleanup`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// `.partial` files (fs) left by a writer that never finished.
    pub partials: Vec<String>,
    /// Backups without a manifest: a run that crashed or was killed before its end.
    pub incomplete: Vec<BackupId>,
    /// Multipart uploads (S3) left open by a writer that never finished, aborted: the
    /// artifacts' names relative to the storage root.
    pub uploads: Vec<String>,
}

/// Backup storage; see the module doc. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    op: Operator,
    place: Arc<Place>,
    reservation: Option<Arc<Reservation>>,
    /// S3: the multipart uploads opendal cannot list.
    uploads: Option<Arc<Uploads>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("place", &self.describe())
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Storage in the directory `root` (created when missing). `io_timeout` bounds each
    /// operation's wait for progress.
    pub fn fs(root: &Path, io_timeout: Duration) -> Result<Storage, StorageError> {
        let builder = opendal::services::Fs::default().root(&root.to_string_lossy());
        let place = Place::Fs {
            root: root.to_owned(),
        };
        let op = Operator::new(builder)
            .map_err(|e| StorageError::Config {
                key: "volumes.root",
                reason: e.to_string(),
            })?
            .layer(timeouts(io_timeout))
            .finish();
        Ok(Storage {
            op,
            place: Arc::new(place),
            reservation: None,
            uploads: None,
        })
    }

    /// Storage in an S3 bucket; see the module doc. Builds the client only: [`Storage::check`]
    /// finds out whether the endpoint answers and the bucket exists.
    pub fn s3(s: &S3Settings, io_timeout: Duration) -> Result<Storage, StorageError> {
        let prefix = s.prefix.trim_matches('/');
        let mut builder = opendal::services::S3::default()
            .bucket(&s.bucket)
            .region(&s.region)
            .root(&format!("/{prefix}"))
            .access_key_id(s.access_key_id.expose())
            .secret_access_key(s.secret_access_key.expose())
            .disable_config_load()
            .disable_ec2_metadata();
        if !s.endpoint.is_empty() {
            builder = builder.endpoint(&s.endpoint);
        }
        let endpoint = if s.endpoint.is_empty() {
            format!("https://s3.{}.amazonaws.com", s.region)
        } else {
            redact::url(&s.endpoint)
        };
        let op = Operator::new(builder)
            .map_err(|e| StorageError::Config {
                key: "backup.s3",
                reason: redact::text(&e.to_string()),
            })?
            .layer(timeouts(io_timeout))
            .finish();
        let uploads =
            Uploads::new(s, Duration::from_secs(60).max(io_timeout)).map_err(|reason| {
                StorageError::Config {
                    key: "backup.s3.endpoint",
                    reason,
                }
            })?;
        Ok(Storage {
            op,
            uploads: Some(Arc::new(uploads)),
            place: Arc::new(Place::S3 {
                endpoint,
                bucket: s.bucket.clone(),
                prefix: prefix.to_owned(),
            }),
            reservation: None,
        })
    }

    /// This storage with every byte written charged to `reservation` first (fs: the
    /// `backups` volume's quota).
    pub fn charged_to(&self, reservation: Arc<Reservation>) -> Storage {
        Storage {
            reservation: Some(reservation),
            ..self.clone()
        }
    }

    /// `fs:/var/lib/lucid/backups` or `s3://bucket/prefix at https://endpoint`: for messages,
    /// and the catalogue's note of where it came from.
    pub fn describe(&self) -> String {
        match &*self.place {
            Place::Fs { root } => format!("fs:{}", root.display()),
            Place::S3 {
                endpoint,
                bucket,
                prefix,
            } => format!("s3://{bucket}/{prefix} at {endpoint}"),
        }
    }

    fn is_fs(&self) -> bool {
        matches!(&*self.place, Place::Fs { .. })
    }

    /// Maps an opendal error to what an operator can act on; see [`StorageError`].
    fn error(&self, op: &'static str, name: &str, e: opendal::Error) -> StorageError {
        let place = self.describe();
        let reason = short_reason(&e);
        // opendal reports S3's NoSuchBucket as an invalid configuration or as not found,
        // depending on the call: the code in the answer decides.
        if let Place::S3 {
            endpoint, bucket, ..
        } = &*self.place
            && reason.contains("NoSuchBucket")
        {
            return StorageError::NoBucket {
                bucket: bucket.clone(),
                endpoint: endpoint.clone(),
            };
        }
        match e.kind() {
            ErrorKind::NotFound => StorageError::NotFound {
                place,
                name: name.to_owned(),
            },
            ErrorKind::PermissionDenied => StorageError::Denied {
                place,
                op,
                name: name.to_owned(),
                reason,
            },
            ErrorKind::ConfigInvalid => StorageError::Config {
                key: if self.is_fs() {
                    "volumes.root"
                } else {
                    "backup.s3"
                },
                reason,
            },
            ErrorKind::Unexpected if e.is_temporary() && !self.is_fs() => {
                StorageError::Unreachable { place, reason }
            }
            _ => StorageError::Io {
                place,
                op,
                name: name.to_owned(),
                reason,
            },
        }
    }

    /// Whether the storage answers: the directory is there (created when missing), the
    /// endpoint answers, the bucket exists and the keys may list it.
    pub async fn check(&self) -> Result<(), StorageError> {
        if let Place::Fs { root } = &*self.place {
            let root = root.clone();
            blocking(move || std::fs::create_dir_all(&root))
                .await
                .map_err(|e| StorageError::Io {
                    place: self.describe(),
                    op: "create",
                    name: String::new(),
                    reason: e.to_string(),
                })?;
        }
        self.op
            .list_with("/")
            .limit(1)
            .await
            .map(|_| ())
            .map_err(|e| self.error("list", "/", e))
    }

    fn path(id: &BackupId, name: &str) -> Result<String, StorageError> {
        check_artifact_name(name).map_err(|reason| StorageError::Io {
            place: String::new(),
            op: "name",
            name: String::new(),
            reason,
        })?;
        Ok(format!("{id}/{name}"))
    }

    /// A streaming writer for artifact `name` of backup `id`; see the module doc for names.
    pub async fn writer(&self, id: &BackupId, name: &str) -> Result<ArtifactWriter, StorageError> {
        let path = Self::path(id, name)?;
        let write_path = if self.is_fs() {
            format!("{path}{PARTIAL}")
        } else {
            path.clone()
        };
        let mut w = self.op.writer_with(&write_path);
        if !self.is_fs() {
            w = w.chunk(S3_PART_SIZE);
        }
        let writer = w.await.map_err(|e| self.error("write", &path, e))?;
        Ok(ArtifactWriter {
            storage: self.clone(),
            writer: Some(writer),
            path,
            write_path,
            written: 0,
        })
    }

    /// A streaming reader of artifact `name` of backup `id`.
    pub async fn reader(&self, id: &BackupId, name: &str) -> Result<ArtifactReader, StorageError> {
        let path = Self::path(id, name)?;
        let size = self
            .op
            .stat(&path)
            .await
            .map_err(|e| self.error("stat", &path, e))?
            .content_length();
        // No `chunk`: that would read in ranged requests (hundreds of GETs per artifact on
        // S3); one streamed read yields the body as it arrives (fs: 2 MiB reads).
        let stream = self
            .op
            .reader(&path)
            .await
            .map_err(|e| self.error("read", &path, e))?
            .into_bytes_stream(..)
            .await
            .map_err(|e| self.error("read", &path, e))?;
        Ok(ArtifactReader {
            storage: self.clone(),
            path,
            size,
            stream,
        })
    }

    /// Writes a small file (`manifest.json`, `verify.json`, `key.age`) whole: on fs under
    /// `.partial`, synced, renamed, and the directory synced, so it appears complete or not
    /// at all; on S3 one PUT, which is atomic.
    pub async fn put_file(
        &self,
        id: &BackupId,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StorageError> {
        let mut w = self.writer(id, name).await?;
        w.write(Bytes::from(bytes)).await?;
        w.finish().await?;
        if let Place::Fs { root } = &*self.place {
            // The rename is durable only once the directory holding it is synced.
            let dir = root.join(id.to_string());
            let _ = blocking(move || std::fs::File::open(&dir)?.sync_all()).await;
        }
        Ok(())
    }

    /// Reads a small file whole; `None` when it does not exist. Larger than
    /// [`SMALL_FILE_LIMIT`] is an error (a manifest is kilobytes).
    pub async fn get_file(
        &self,
        id: &BackupId,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let mut reader = match self.reader(id, name).await {
            Ok(r) => r,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if reader.size > SMALL_FILE_LIMIT {
            return Err(StorageError::Io {
                place: self.describe(),
                op: "read",
                name: reader.path.clone(),
                reason: format!("{} bytes is too large for this file", reader.size),
            });
        }
        let mut out = Vec::with_capacity(reader.size as usize);
        while let Some(chunk) = reader.next_chunk().await {
            out.extend_from_slice(&chunk?);
            if out.len() as u64 > SMALL_FILE_LIMIT {
                return Err(StorageError::Io {
                    place: self.describe(),
                    op: "read",
                    name: reader.path.clone(),
                    reason: "grew past the small-file limit while read".into(),
                });
            }
        }
        Ok(Some(out))
    }

    /// Every file in the storage, recursively (path relative to the root, size).
    async fn list_all(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let entries = self
            .op
            .list_with("/")
            .recursive(true)
            .await
            .map_err(|e| self.error("list", "/", e))?;
        Ok(entries
            .into_iter()
            .filter(|e| !e.path().ends_with('/'))
            .map(|e| {
                (
                    e.path().trim_start_matches('/').to_owned(),
                    e.metadata().content_length(),
                )
            })
            .collect())
    }

    /// The backups that have a manifest, oldest first. Anything else at the root (a
    /// directory whose name is not an id, a backup still being written) is not listed.
    pub async fn list_backups(&self) -> Result<Vec<BackupId>, StorageError> {
        let mut ids: Vec<BackupId> = self
            .list_all()
            .await?
            .into_iter()
            .filter_map(|(path, _)| {
                let (id, rest) = path.split_once('/')?;
                (rest == MANIFEST).then(|| id.parse().ok())?
            })
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Every file under backup `id`, names relative to its directory, sorted.
    pub async fn list_backup(&self, id: &BackupId) -> Result<Vec<StoredFile>, StorageError> {
        let prefix = format!("{id}/");
        let mut files: Vec<StoredFile> = self
            .list_all()
            .await?
            .into_iter()
            .filter_map(|(path, size)| {
                path.strip_prefix(&prefix).map(|name| StoredFile {
                    name: name.to_owned(),
                    size,
                })
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// Deletes backup `id`: the manifest first, so that an interrupted delete leaves an
    /// incomplete backup (never listed, removed by the next cleanup), not a listed one with
    /// artifacts missing.
    pub async fn delete_backup(&self, id: &BackupId) -> Result<(), StorageError> {
        let manifest = format!("{id}/{MANIFEST}");
        match self.op.delete(&manifest).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(self.error("delete", &manifest, e)),
        }
        // An interrupted deletion, for the tests: the backup is unlisted, its files remain.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("backup-delete-after-manifest", |_| Err(StorageError::Io {
            place: self.describe(),
            op: "delete",
            name: format!("{id}/"),
            reason: "interrupted (fail point backup-delete-after-manifest)".into(),
        }));
        let dir = format!("{id}/");
        self.op
            .remove_all(&dir)
            .await
            .map_err(|e| self.error("delete", &dir, e))
    }

    /// Deletes one small file of backup `id` (`pins.json` when the last pin goes); a file
    /// that is not there is no error.
    pub async fn delete_file(&self, id: &BackupId, name: &str) -> Result<(), StorageError> {
        let path = format!("{id}/{name}");
        match self.op.delete(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error("delete", &path, e)),
        }
    }

    /// Removes what an interrupted run left: every `.partial` file, and every backup without
    /// a manifest — except under `running` (the run about to start or in progress, which
    /// holds the backup lock: nobody else writes while it is held, so everything else found
    /// unfinished is stale).
    pub async fn cleanup(&self, running: Option<&BackupId>) -> Result<Cleanup, StorageError> {
        let files = self.list_all().await?;
        let mut report = Cleanup::default();
        let mut complete = std::collections::BTreeSet::new();
        let mut seen = std::collections::BTreeSet::new();
        for (path, _) in &files {
            let Some((id, rest)) = path.split_once('/') else {
                continue;
            };
            let Ok(id) = id.parse::<BackupId>() else {
                continue;
            };
            seen.insert(id);
            if rest == MANIFEST {
                complete.insert(id);
            }
        }
        for (path, _) in &files {
            let under_running = running.is_some_and(|r| path.starts_with(&format!("{r}/")));
            if path.ends_with(PARTIAL) && !under_running {
                match self.op.delete(path).await {
                    Ok(()) => report.partials.push(path.clone()),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(self.error("delete", path, e)),
                }
            }
        }
        for id in seen.difference(&complete) {
            if Some(id) == running {
                continue;
            }
            self.delete_backup(id).await?;
            report.incomplete.push(*id);
        }
        if let Some(uploads) = &self.uploads {
            let open = uploads
                .list()
                .await
                .map_err(|e| self.uploads_error("/", e))?;
            for upload in open {
                // Only what a backup run writes: `<id>/…` under an id that is not running.
                let stale = upload
                    .name
                    .split_once('/')
                    .and_then(|(id, _)| id.parse::<BackupId>().ok())
                    .is_some_and(|id| Some(&id) != running);
                if stale {
                    uploads
                        .abort(&upload)
                        .await
                        .map_err(|e| self.uploads_error(&upload.name, e))?;
                    report.uploads.push(upload.name);
                }
            }
        }
        Ok(report)
    }

    /// The multipart uploads open under this storage's prefix (S3; none on fs), by artifact
    /// name relative to the root: what [`Storage::cleanup`] aborts.
    pub async fn open_uploads(&self) -> Result<Vec<String>, StorageError> {
        let Some(uploads) = &self.uploads else {
            return Ok(Vec::new());
        };
        let open = uploads
            .list()
            .await
            .map_err(|e| self.uploads_error("/", e))?;
        Ok(open.into_iter().map(|u| u.name).collect())
    }

    /// Maps a failed uploads call like [`Storage::error`] maps opendal's.
    fn uploads_error(&self, name: &str, e: UploadsError) -> StorageError {
        let place = self.describe();
        if let Place::S3 {
            endpoint, bucket, ..
        } = &*self.place
            && e.reason.contains("NoSuchBucket")
        {
            return StorageError::NoBucket {
                bucket: bucket.clone(),
                endpoint: endpoint.clone(),
            };
        }
        match e.status {
            _ if e.unreachable => StorageError::Unreachable {
                place,
                reason: e.reason,
            },
            Some(401 | 403) => StorageError::Denied {
                place,
                op: e.op,
                name: name.to_owned(),
                reason: e.reason,
            },
            _ => StorageError::Io {
                place,
                op: e.op,
                name: name.to_owned(),
                reason: e.reason,
            },
        }
    }
}

/// A bounded wait for every operation: `io_timeout` between two pieces of progress, and a
/// minute for one whole call (list page, stat, delete).
fn timeouts(io_timeout: Duration) -> opendal::layers::TimeoutLayer {
    opendal::layers::TimeoutLayer::new()
        .with_timeout(Duration::from_secs(60).max(io_timeout))
        .with_io_timeout(io_timeout)
}

/// opendal's message and its first cause, on one line and redacted: enough to act on, without
/// its full context dump.
fn short_reason(e: &opendal::Error) -> String {
    // Display is "Kind (status) at op, context: { … } => message, source: …": keep what
    // follows the context.
    let full = e.to_string();
    let text = full.split_once(" => ").map_or(full.as_str(), |(_, m)| m);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    redact::text(&text.chars().take(300).collect::<String>())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}

/// Streams one artifact into storage; see [`Storage::writer`]. Call [`ArtifactWriter::finish`]
/// to make it final, or [`ArtifactWriter::abort`] to throw it away. One dropped without either
/// leaves a `.partial` file (fs) or an open multipart upload (S3) for the next cleanup.
pub struct ArtifactWriter {
    storage: Storage,
    writer: Option<opendal::Writer>,
    path: String,
    write_path: String,
    written: u64,
}

impl ArtifactWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Where the artifact ends up, relative to the storage root.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Writes one chunk; with a reservation, charges it first (and writes nothing of a chunk
    /// that would pass it).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        if let Some(r) = &self.storage.reservation {
            r.charge(chunk.len() as u64)?;
        }
        let len = chunk.len() as u64;
        let writer = self.writer.as_mut().ok_or_else(|| closed(&self.path))?;
        writer
            .write(chunk)
            .await
            .map_err(|e| self.storage.error("write", &self.path, e))?;
        self.written += len;
        Ok(())
    }

    /// Completes the artifact under its final name; answers the bytes written.
    pub async fn finish(mut self) -> Result<u64, StorageError> {
        let mut writer = self.writer.take().ok_or_else(|| closed(&self.path))?;
        if let Err(e) = writer.close().await {
            let err = self.storage.error("write", &self.path, e);
            self.discard(writer).await;
            return Err(err);
        }
        if self.write_path != self.path
            && let Err(e) = self.storage.op.rename(&self.write_path, &self.path).await
        {
            let _ = self.storage.op.delete(&self.write_path).await;
            return Err(self.storage.error("rename", &self.path, e));
        }
        Ok(self.written)
    }

    /// Throws the artifact away: the `.partial` file is deleted, the multipart upload aborted.
    pub async fn abort(mut self) {
        if let Some(writer) = self.writer.take() {
            self.discard(writer).await;
        }
    }

    async fn discard(&self, mut writer: opendal::Writer) {
        if self.storage.is_fs() {
            // opendal's fs writer cannot abort without its own temp dir: drop it, delete ours.
            drop(writer);
            let _ = self.storage.op.delete(&self.write_path).await;
        } else {
            let _ = writer.abort().await;
        }
    }
}

fn closed(path: &str) -> StorageError {
    StorageError::Io {
        place: String::new(),
        op: "write",
        name: path.to_owned(),
        reason: "the writer is closed".into(),
    }
}

/// Streams one artifact out of storage; see [`Storage::reader`].
pub struct ArtifactReader {
    storage: Storage,
    path: String,
    size: u64,
    stream: opendal::FuturesBytesStream,
}

impl ArtifactReader {
    /// The stored size, as the storage reported it before reading.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next chunk; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, StorageError>> {
        let item = self.stream.next().await?;
        Some(item.map_err(|e| StorageError::Io {
            place: self.storage.describe(),
            op: "read",
            name: self.path.clone(),
            reason: redact::text(&e.to_string()),
        }))
    }
}
