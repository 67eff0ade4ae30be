//! The backup catalogue: a local cache, under `state_dir/backup/catalogue/`, of the manifests
//! and verification results in storage, so that listing and showing backups needs no round
//! trip to S3, and the scheduler can ask which backups are verified without reading storage.
//!
//! Storage stays the truth. The cache is one JSON file per backup (`<id>.json`: the manifest
//! and verify.json) and `catalogue.json`, which notes the storage it mirrors. [`Catalogue::open`]
//! rebuilds it from storage when it is missing, unreadable or mirrors another storage (a fresh
//! Pi pointed at the same bucket lists every backup, verification results included), and
//! otherwise refreshes it: backups that appeared in storage are read, backups that are gone
//! are dropped. The backup actor keeps it current as it writes (`insert`, `set_verify`,
//! `remove`); verify.json written by another machine is picked up by `rebuild`.
//!
//! A manifest in storage that does not parse (another format, damage) is reported in the
//! [`SyncReport`], never a reason to fail the whole listing. Local file work runs on the
//! blocking pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::BackupId;
use super::manifest::{Level, Manifest, PinRecord, VerifyRecord};
use super::storage::{MANIFEST, PINS, Storage, StorageError, VERIFY};

/// The catalogue files' format.
const FORMAT: u32 = 1;
const INDEX: &str = "catalogue.json";

#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogueError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("backup catalogue {path}: {reason}")]
    Io { path: String, reason: String },
}

impl CatalogueError {
    pub fn code(&self) -> &'static str {
        match self {
            CatalogueError::Storage(e) => e.code(),
            CatalogueError::Io { .. } => "catalogue_io",
        }
    }
}

/// One backup, as the catalogue knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub manifest: Manifest,
    pub verify: Option<VerifyRecord>,
    /// pins.json; `None`: not pinned. Defaulted, so cache files from before pins still load.
    #[serde(default)]
    pub pins: Option<PinRecord>,
}

impl Entry {
    /// What the backup counts as ([`VerifyRecord::effective_level`]); `None` when unverified.
    pub fn effective_level(&self) -> Option<Level> {
        self.verify.as_ref().and_then(VerifyRecord::effective_level)
    }

    pub fn is_pinned(&self) -> bool {
        self.pins.as_ref().is_some_and(|p| !p.pins.is_empty())
    }
}

#[derive(Serialize, Deserialize)]
struct Index {
    format: u32,
    storage: String,
    #[serde(with = "super::manifest::rfc3339")]
    synced: DateTime<Utc>,
}

/// What a sync with storage changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The whole cache was rebuilt from storage.
    pub rebuilt: bool,
    pub added: Vec<BackupId>,
    pub removed: Vec<BackupId>,
    /// Backups whose manifest or verify.json could not be used: id, error code and message.
    pub unreadable: Vec<(BackupId, &'static str, String)>,
}

/// See the module doc.
#[derive(Debug)]
pub struct Catalogue {
    dir: PathBuf,
    storage: String,
    entries: BTreeMap<BackupId, Entry>,
}

impl Catalogue {
    /// Loads the catalogue in `dir` and brings it in step with `storage`: rebuilt when
    /// missing, unreadable or made for another storage, refreshed otherwise.
    pub async fn open(
        dir: &Path,
        storage: &Storage,
    ) -> Result<(Catalogue, SyncReport), CatalogueError> {
        let dir_owned = dir.to_owned();
        let want = storage.describe();
        let loaded = blocking(move || load(&dir_owned)).await?;
        let mut catalogue = Catalogue {
            dir: dir.to_owned(),
            storage: want.clone(),
            entries: BTreeMap::new(),
        };
        let report = match loaded {
            Some((index, entries)) if index.format == FORMAT && index.storage == want => {
                catalogue.entries = entries;
                catalogue.refresh(storage).await?
            }
            _ => catalogue.rebuild(storage).await?,
        };
        Ok((catalogue, report))
    }

    /// Every backup, oldest first.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = (&BackupId, &Entry)> {
        self.entries.iter()
    }

    pub fn get(&self, id: &BackupId) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Throws the cache away and reads every manifest and verify.json in storage.
    pub async fn rebuild(&mut self, storage: &Storage) -> Result<SyncReport, CatalogueError> {
        let ids = storage.list_backups().await?;
        let mut report = SyncReport {
            rebuilt: true,
            ..SyncReport::default()
        };
        let mut entries = BTreeMap::new();
        for id in ids {
            if let Some(entry) = fetch(storage, &id, &mut report).await? {
                entries.insert(id, entry);
                report.added.push(id);
            }
        }
        report.removed = self
            .entries
            .keys()
            .filter(|id| !entries.contains_key(*id))
            .copied()
            .collect();
        let dir = self.dir.clone();
        let index = Index {
            format: FORMAT,
            storage: self.storage.clone(),
            synced: Utc::now(),
        };
        let to_write = entries.clone();
        blocking(move || replace_all(&dir, &index, &to_write)).await?;
        self.entries = entries;
        Ok(report)
    }

    /// Reads the backups storage has and the cache lacks, drops those storage no longer has.
    pub async fn refresh(&mut self, storage: &Storage) -> Result<SyncReport, CatalogueError> {
        let ids = storage.list_backups().await?;
        let mut report = SyncReport::default();
        let present: std::collections::BTreeSet<BackupId> = ids.iter().copied().collect();
        for id in ids {
            if self.entries.contains_key(&id) {
                continue;
            }
            if let Some(entry) = fetch(storage, &id, &mut report).await? {
                self.insert(entry).await?;
                report.added.push(id);
            }
        }
        let gone: Vec<BackupId> = self
            .entries
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.remove(&id).await?;
            report.removed.push(id);
        }
        Ok(report)
    }

    /// Adds (or replaces) one backup: after a run wrote its manifest.
    pub async fn insert(&mut self, entry: Entry) -> Result<(), CatalogueError> {
        let id = entry.manifest.id;
        let dir = self.dir.clone();
        let stored = entry.clone();
        blocking(move || write_json(&dir, &entry_file(&id), &stored)).await?;
        self.entries.insert(id, entry);
        Ok(())
    }

    /// Records a verification result (the caller writes verify.json to storage too).
    /// Unknown ids change nothing.
    pub async fn set_verify(&mut self, verify: VerifyRecord) -> Result<(), CatalogueError> {
        let Some(entry) = self.entries.get(&verify.id) else {
            return Ok(());
        };
        let mut entry = entry.clone();
        entry.verify = Some(verify);
        self.insert(entry).await
    }

    /// Records a backup's pins (`None`: unpinned; the caller writes or removes pins.json in
    /// storage too). Unknown ids change nothing.
    pub async fn set_pins(
        &mut self,
        id: &BackupId,
        pins: Option<PinRecord>,
    ) -> Result<(), CatalogueError> {
        let Some(entry) = self.entries.get(id) else {
            return Ok(());
        };
        let mut entry = entry.clone();
        entry.pins = pins;
        self.insert(entry).await
    }

    /// Forgets one backup: after retention deleted it.
    pub async fn remove(&mut self, id: &BackupId) -> Result<(), CatalogueError> {
        let path = self.dir.join(entry_file(id));
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(&path, e)),
            _ => Ok(()),
        })
        .await?;
        self.entries.remove(id);
        Ok(())
    }
}

/// One backup's manifest and verify.json from storage; `None` (and a line in the report) when
/// either cannot be used.
async fn fetch(
    storage: &Storage,
    id: &BackupId,
    report: &mut SyncReport,
) -> Result<Option<Entry>, CatalogueError> {
    let Some(bytes) = storage.get_file(id, MANIFEST).await? else {
        // Deleted between the listing and now.
        return Ok(None);
    };
    let manifest = match Manifest::parse(&bytes) {
        Ok(m) if m.id == *id => m,
        Ok(m) => {
            report.unreadable.push((
                *id,
                "bad_manifest",
                format!("manifest.json names backup {}", m.id),
            ));
            return Ok(None);
        }
        Err(e) => {
            report.unreadable.push((*id, e.code(), e.to_string()));
            return Ok(None);
        }
    };
    let verify = match storage.get_file(id, VERIFY).await? {
        None => None,
        Some(bytes) => match VerifyRecord::parse(&bytes) {
            Ok(v) if v.id == *id => Some(v),
            // A verify.json that cannot be read counts as no verification (the backup is
            // listed, unverified), and is reported.
            Ok(_) => {
                report.unreadable.push((
                    *id,
                    "bad_manifest",
                    "verify.json names another backup".into(),
                ));
                None
            }
            Err(e) => {
                report.unreadable.push((*id, e.code(), e.to_string()));
                None
            }
        },
    };
    // Pins that cannot be read keep the backup all the same: an unreadable pins.json is
    // reported and counts as a pin without a reason, so retention never deletes what someone
    // meant to keep because a file was damaged.
    let pins = match storage.get_file(id, PINS).await? {
        None => None,
        Some(bytes) => match PinRecord::parse(&bytes) {
            Ok(p) if p.id == *id => Some(p),
            Ok(_) => {
                report.unreadable.push((
                    *id,
                    "bad_manifest",
                    "pins.json names another backup".into(),
                ));
                Some(unreadable_pins(*id))
            }
            Err(e) => {
                report.unreadable.push((*id, e.code(), e.to_string()));
                Some(unreadable_pins(*id))
            }
        },
    };
    Ok(Some(Entry {
        manifest,
        verify,
        pins,
    }))
}

fn unreadable_pins(id: BackupId) -> PinRecord {
    let mut record = PinRecord::new(id);
    record.pins.push(super::manifest::Pin {
        at: Utc::now(),
        reason: Some("pins.json could not be read; kept until it is unpinned".into()),
    });
    record
}

fn entry_file(id: &BackupId) -> String {
    format!("{id}.json")
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> CatalogueError {
    CatalogueError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

type Loaded = Option<(Index, BTreeMap<BackupId, Entry>)>;

/// The cache as it is on disk; `None` when its index is missing or unreadable. An entry file
/// that does not parse is left out (the refresh reads that backup again).
fn load(dir: &Path) -> Result<Loaded, CatalogueError> {
    let index: Index = match std::fs::read(dir.join(INDEX)) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(index) => index,
            Err(_) => return Ok(None),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&dir.join(INDEX), e)),
    };
    let mut entries = BTreeMap::new();
    let listing = std::fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
    for item in listing {
        let item = item.map_err(|e| io_error(dir, e))?;
        let name = item.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<BackupId>().ok())
        else {
            continue;
        };
        let parsed = std::fs::read(item.path())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Entry>(&bytes).ok());
        if let Some(entry) = parsed.filter(|e| e.manifest.id == id) {
            entries.insert(id, entry);
        }
    }
    Ok(Some((index, entries)))
}

/// Writes `value` as `dir/name` through a temporary file and a rename.
fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), CatalogueError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let bytes = serde_json::to_vec(value).map_err(|e| io_error(&path, e))?;
    std::fs::write(&tmp, bytes).map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))
}

/// Replaces the whole cache: every entry written, stale entry files removed, the index last
/// (a crash in between leaves no index, so the next open rebuilds again).
fn replace_all(
    dir: &Path,
    index: &Index,
    entries: &BTreeMap<BackupId, Entry>,
) -> Result<(), CatalogueError> {
    match std::fs::remove_file(dir.join(INDEX)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error(&dir.join(INDEX), e));
        }
        _ => {}
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    for item in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let item = item.map_err(|e| io_error(dir, e))?;
        let stale = item
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<BackupId>().ok())
            .is_some_and(|id| !entries.contains_key(&id));
        if stale {
            std::fs::remove_file(item.path()).map_err(|e| io_error(&item.path(), e))?;
        }
    }
    for (id, entry) in entries {
        write_json(dir, &entry_file(id), entry)?;
    }
    write_json(dir, INDEX, index)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CatalogueError> + Send + 'static,
) -> Result<T, CatalogueError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(CatalogueError::Io {
            path: String::new(),
            reason: format!("the catalogue's blocking task failed: {e}"),
        })
    })
}
