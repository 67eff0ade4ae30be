//! The on-disk store: where a volume's files are (its data directory, metadata, manifest and
//! lock file beside it), reading and writing its metadata, loading every volume at start (and
//! finishing or undoing what a crash interrupted), and the disk side of the short operations —
//! create, delete, resize, inspect, a write, a measurement, a health probe. Everything here
//! blocks: the actor runs it on its blocking pool, never on its event loop.
//!
//! The files are the truth: each function re-reads the volume's metadata ([`fresh_meta`]),
//! under the volume's lock where it changes something, so the CLI and the daemon never act on
//! each other's stale view.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::fsops;
use super::usage::percent;
use super::{Settings, Usage, VolumeError, VolumeHealth, VolumeMeta, VolumeName};
use crate::events::{self, VolumeCreated};

// ---------------------------------------------------------------------------------------------
// Paths

pub(super) fn data_dir(root: &Path, meta: &VolumeMeta) -> PathBuf {
    meta.path
        .clone()
        .unwrap_or_else(|| root.join(meta.name.as_str()))
}

fn meta_path(root: &Path, name: &VolumeName) -> PathBuf {
    root.join(format!("{name}.volume.json"))
}

pub(super) fn manifest_path(root: &Path, name: &VolumeName) -> PathBuf {
    root.join(format!("{name}.manifest.json"))
}

fn lock_path(root: &Path, name: &VolumeName) -> PathBuf {
    root.join(format!(".{name}.lock"))
}

/// Takes volume `name`'s lock (see [`fsops::lock`]): exclusive to replace or move its data,
/// shared to read it or add to it.
pub(super) fn lock(
    s: &Settings,
    name: &VolumeName,
    operation: &'static str,
    exclusive: bool,
) -> Result<fsops::LockFile, VolumeError> {
    fsops::lock(
        &lock_path(&s.root, name),
        name.as_str(),
        operation,
        exclusive,
    )
}

/// Beside the data directory (same filesystem, so a rename swaps it): staging, replaced,
/// migrated and deleted copies, named after the volume.
pub(super) fn beside(root: &Path, meta: &VolumeMeta, what: &str) -> PathBuf {
    let dir = data_dir(root, meta);
    let parent = dir.parent().unwrap_or(root).to_path_buf();
    parent.join(format!(
        ".{}.{what}-{:016x}",
        meta.name,
        rand::random::<u64>()
    ))
}

/// What [`beside`] names the copies an operation leaves beside a volume while it runs.
const LEFTOVERS: [&str; 4] = ["import", "deleted", "migrated", "replaced"];

/// Whether `file` (a name in the directory holding volume `volume`'s data) is a copy [`beside`]
/// named for one of `what`: a leftover of an interrupted operation on it.
pub(super) fn leftover_of(volume: &VolumeName, file: &str, what: &[&str]) -> bool {
    what.iter()
        .any(|w| file.starts_with(&format!(".{volume}.{w}-")))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

// ---------------------------------------------------------------------------------------------
// Metadata

/// The volume's metadata as on disk now, checked: the CLI and the daemon share these files.
pub(super) fn fresh_meta(s: &Settings, name: &VolumeName) -> Result<VolumeMeta, VolumeError> {
    let meta = read_meta(&meta_path(&s.root, name)).map_err(|e| match e {
        VolumeError::Io { op: "read", .. } => VolumeError::NotFound {
            volume: name.to_string(),
        },
        other => other,
    })?;
    if meta.name != *name {
        return Err(VolumeError::Corrupt {
            what: format!(
                "{} names volume {}",
                meta_path(&s.root, name).display(),
                meta.name
            ),
        });
    }
    if let Some(path) = &meta.path
        && (!path.is_absolute() || path.parent().is_none())
    {
        return Err(VolumeError::Corrupt {
            what: format!(
                "volume {name}: path {} in its metadata is not a directory lucid-db could own",
                path.display()
            ),
        });
    }
    Ok(meta)
}

fn read_meta(path: &Path) -> Result<VolumeMeta, VolumeError> {
    let bytes = std::fs::read(path).map_err(|e| VolumeError::io("read", path, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| VolumeError::Corrupt {
        what: format!("{}: {e}", path.display()),
    })
}

pub(super) fn write_meta(root: &Path, meta: &VolumeMeta) -> Result<(), VolumeError> {
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| VolumeError::Corrupt {
        what: format!("cannot encode the metadata of {}: {e}", meta.name),
    })?;
    fsops::write_atomic(&meta_path(root, &meta.name), &bytes, 0o640)
}

/// Removes volume `name`'s metadata and manifest (either may be missing already).
pub(super) fn remove_meta(s: &Settings, name: &VolumeName) -> Result<(), VolumeError> {
    for p in [meta_path(&s.root, name), manifest_path(&s.root, name)] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(VolumeError::io("remove", &p, &e));
            }
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Start

/// Loads every `*.volume.json` under the root, undoes or finishes what a crash interrupted,
/// and creates the default volumes that are missing.
pub(super) fn load(s: &Settings) -> Result<BTreeMap<VolumeName, VolumeMeta>, VolumeError> {
    super::root::check_root(&s.root)?;
    let mut volumes = BTreeMap::new();
    let mut unreadable = BTreeSet::new();
    let entries =
        std::fs::read_dir(&s.root).map_err(|e| VolumeError::io("read_dir", &s.root, &e))?;
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file
            .strip_suffix(".volume.json")
            .and_then(|n| VolumeName::new(n).ok())
        else {
            continue;
        };
        match fresh_meta(s, &name) {
            Ok(meta) => {
                recover(s, &meta);
                volumes.insert(name, meta);
            }
            // Never overwritten with a new default: its data may be elsewhere (a migration).
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), error = %e, "volume metadata unreadable; volume skipped");
                unreadable.insert(name);
            }
        }
    }
    for name in &s.defaults {
        if !volumes.contains_key(name) && !unreadable.contains(name) {
            let meta = create(
                s,
                name,
                s.default_quota,
                name.to_string(),
                BTreeMap::new(),
                true,
            )?;
            events::emit(VolumeCreated {
                volume: name.to_string(),
                quota_bytes: meta.quota_bytes,
            });
            volumes.insert(name.clone(), meta);
        }
    }
    Ok(volumes)
}

/// After a crash: an import that had moved the old data aside but not its replacement in gets
/// the old data back; half-done staging, deleted and migrated copies go.
fn recover(s: &Settings, meta: &VolumeMeta) {
    let dir = data_dir(&s.root, meta);
    let parent = dir.parent().unwrap_or(&s.root).to_path_buf();
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if leftover_of(&meta.name, &name, &["replaced"]) && !dir.exists() {
            match std::fs::rename(&path, &dir) {
                Ok(()) => {
                    tracing::warn!(volume = %meta.name, "an interrupted import was undone: the previous data is back")
                }
                Err(e) => {
                    tracing::error!(volume = %meta.name, error = %e, "cannot restore the data an interrupted import moved aside")
                }
            }
        } else if leftover_of(&meta.name, &name, &LEFTOVERS) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Short operations

/// Creates a new volume: refused when it exists already, also one this actor has not loaded
/// (the CLI created it meanwhile).
pub(super) fn create_new(
    s: &Settings,
    name: &VolumeName,
    quota: u64,
    kind: String,
    labels: BTreeMap<String, String>,
) -> Result<VolumeMeta, VolumeError> {
    if meta_path(&s.root, name).exists() {
        return Err(VolumeError::Exists {
            volume: name.to_string(),
        });
    }
    create(s, name, quota, kind, labels, false)
}

/// Creates a volume's directory and metadata. `adopt`: an existing real directory (data a
/// server wrote before lucid-db managed it) is taken over; otherwise it must not exist.
pub(super) fn create(
    s: &Settings,
    name: &VolumeName,
    quota: u64,
    kind: String,
    labels: BTreeMap<String, String>,
    adopt: bool,
) -> Result<VolumeMeta, VolumeError> {
    let dir = s.root.join(name.as_str());
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && adopt => {
            fsops::check_data_dir(&dir)?
        }
        // An empty directory without metadata is what a create killed between its mkdir and
        // its metadata leaves: no volume is listed by that name, so taking the directory over
        // loses nothing, and refusing would block the name until an operator removed it.
        Err(e)
            if e.kind() == std::io::ErrorKind::AlreadyExists
                && !meta_path(&s.root, name).exists()
                && is_empty_real_dir(&dir) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(VolumeError::Exists {
                volume: name.to_string(),
            });
        }
        Err(e) => return Err(VolumeError::io("mkdir", &dir, &e)),
    }
    // A manifest left by an earlier volume of this name describes other data.
    let _ = std::fs::remove_file(manifest_path(&s.root, name));
    let meta = VolumeMeta {
        name: name.clone(),
        kind,
        quota_bytes: quota,
        created: now_rfc3339(),
        labels,
        path: None,
    };
    write_meta(&s.root, &meta)?;
    Ok(meta)
}

/// `dir` is a real directory (not a symlink) with nothing in it.
fn is_empty_real_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
        && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// Walks the volume now: its usage against its quota, and its filesystem.
pub(super) fn measure(s: &Settings, meta: &VolumeMeta) -> Result<Usage, VolumeError> {
    // A slow walk (a large volume on a slow card), for the tests of who waits for one.
    #[cfg(feature = "failpoints")]
    fail::fail_point!("volume-measure-slow");
    let dir = data_dir(&s.root, meta);
    fsops::check_data_dir(&dir)?;
    let tally = fsops::tally(&dir)?;
    let fs = fsops::statvfs(&dir)?;
    Ok(Usage {
        percent: percent(tally.bytes, meta.quota_bytes),
        quota_bytes: meta.quota_bytes,
        tally,
        fs,
        age_ms: 0,
        snapshot_bytes: super::snapshot::area_bytes(&s.root, &meta.name)?,
    })
}

/// A volume's health right now: its directory, its filesystem (read-only, full), a real
/// write (a probe file written, fsynced and removed) and its metadata. A directory that is
/// missing, or is not a real directory, is reported here, not as an error.
pub(super) fn health(s: &Settings, meta: &VolumeMeta) -> VolumeHealth {
    let dir = data_dir(&s.root, meta);
    let mut h = VolumeHealth::default();
    match fsops::check_data_dir(&dir) {
        Ok(()) => h.exists = true,
        Err(_) if matches!(std::fs::symlink_metadata(&dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound) =>
        {
            h.problems
                .push(format!("its directory {} does not exist", dir.display()));
        }
        Err(e) => h.problems.push(e.to_string()),
    }
    if h.exists {
        match fsops::statvfs(&dir) {
            Ok(fs) => {
                h.read_only_fs = fs.read_only;
                h.free_bytes = fs.free_bytes;
                h.free_inodes = fs.free_inodes;
                h.problems
                    .extend(fs.problems(s.min_free).iter().map(ToString::to_string));
            }
            Err(e) => h.problems.push(e.to_string()),
        }
        let probe = dir.join(format!(
            "{}probe-{:016x}",
            fsops::TRANSIENT_PREFIX,
            rand::random::<u64>()
        ));
        match fsops::write_atomic(&probe, b"probe", 0o600).and_then(|()| {
            std::fs::remove_file(&probe).map_err(|e| VolumeError::io("remove", &probe, &e))
        }) {
            Ok(()) => h.writable = true,
            Err(e) => h.problems.push(format!("not writable: {e}")),
        }
    }
    match fresh_meta(s, &meta.name) {
        Ok(stored) if stored.quota_bytes <= s.max_quota => h.metadata_ok = true,
        Ok(_) => h
            .problems
            .push("its quota is above volumes.max_quota".to_owned()),
        Err(e) => h.problems.push(format!("metadata: {e}")),
    }
    h
}

/// What an inspect found on disk.
pub(super) struct Inspected {
    pub meta: VolumeMeta,
    /// `None` when the volume's directory is not there to measure (its health says why).
    pub usage: Option<Usage>,
    /// Whether `usage` was measured now (not the cached figure).
    pub walked: bool,
    pub health: VolumeHealth,
}

/// The metadata, health and usage of a volume: `cached` while there is one, else measured now
/// — unless the directory is gone, which is what its health then says (an inspect must show
/// that, not fail on the walk).
pub(super) fn inspect(
    s: &Settings,
    name: &VolumeName,
    cached: Option<Usage>,
) -> Result<Inspected, VolumeError> {
    let meta = fresh_meta(s, name)?;
    let health = health(s, &meta);
    let (usage, walked) = match cached {
        _ if !health.exists => (None, false),
        Some(usage) => (Some(usage), false),
        None => (Some(measure(s, &meta)?), true),
    };
    Ok(Inspected {
        meta,
        usage,
        walked,
        health,
    })
}

/// Deletes a volume (refused for one that holds files unless `force`). The data goes out of
/// the way in one step first; then the metadata; then the copy. Interrupted, what is left is
/// a `.deleted-` directory, removed at start.
pub(super) fn delete(s: &Settings, name: &VolumeName, force: bool) -> Result<(), VolumeError> {
    let _lock = lock(s, name, "delete", true)?;
    let meta = fresh_meta(s, name)?;
    let dir = data_dir(&s.root, &meta);
    fsops::check_data_dir(&dir)?;
    if !force && !fsops::is_empty_dir(&dir)? {
        return Err(VolumeError::NotEmpty {
            volume: name.to_string(),
        });
    }
    let doomed = beside(&s.root, &meta, "deleted");
    std::fs::rename(&dir, &doomed).map_err(|e| VolumeError::io("rename", &dir, &e))?;
    remove_meta(s, name)?;
    fsops::sync_dir(&s.root)?;
    std::fs::remove_dir_all(&doomed).map_err(|e| VolumeError::io("remove", &doomed, &e))?;
    // Its snapshots go with it: a new volume of this name must not find them. The lock file
    // stays (module doc of `volume`).
    super::snapshot::remove_area(&s.root, name)
}

/// Sets a volume's quota, never below its use — always measured: a stale figure could let the
/// quota drop below real use. Answers the new metadata and the usage against it.
pub(super) fn resize(
    s: &Settings,
    name: &VolumeName,
    quota: u64,
) -> Result<(VolumeMeta, Usage), VolumeError> {
    let _lock = lock(s, name, "resize", true)?;
    let mut meta = fresh_meta(s, name)?;
    let usage = measure(s, &meta)?;
    if quota < usage.tally.bytes {
        return Err(VolumeError::QuotaBelowUsage {
            volume: name.to_string(),
            quota,
            used: usage.tally.bytes,
        });
    }
    meta.quota_bytes = quota;
    write_meta(&s.root, &meta)?;
    let usage = Usage {
        quota_bytes: quota,
        percent: percent(usage.tally.bytes, quota),
        ..usage
    };
    Ok((meta, usage))
}

/// What one write changed in a volume's usage.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delta {
    pub bytes: i64,
    pub apparent: i64,
    pub files: i64,
}

/// Writes `data` at `rel` inside `dir` (a volume's data directory, its lock held by the
/// caller) atomically; answers what that changed in the volume's usage. Replacing a file keeps
/// its mode, and only the difference counts.
pub(super) fn write_file(dir: &Path, rel: &str, data: &[u8]) -> Result<Delta, VolumeError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let path = fsops::safe_join(dir, rel)?;
    let before = std::fs::symlink_metadata(&path).ok();
    let mode = before
        .as_ref()
        .map_or(0o640, |m| m.permissions().mode() & 0o7777);
    fsops::write_atomic(&path, data, mode)?;
    let after = std::fs::symlink_metadata(&path).map_err(|e| VolumeError::io("stat", &path, &e))?;
    let old_blocks = before.as_ref().map_or(0, |m| m.blocks() * 512);
    let old_len = before.as_ref().map_or(0, std::fs::Metadata::len);
    Ok(Delta {
        bytes: (after.blocks() * 512) as i64 - old_blocks as i64,
        apparent: after.len() as i64 - old_len as i64,
        files: i64::from(before.is_none()),
    })
}
