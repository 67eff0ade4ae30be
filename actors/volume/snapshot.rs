//! Snapshots: a copy of a volume's files taken at one moment, kept apart from its data under
//! `root/{name}.snapshots/{snapshot}/` (`data/`, `snapshot.json`, and `manifest.json`, the
//! integrity manifest sealed at creation, so verify works on a snapshot as on a volume).
//!
//! The copy is a reflink (FICLONE) where the filesystem supports it — btrfs, XFS with reflink —
//! and a plain copy elsewhere; the snapshot records which. A plain copy takes as much space as
//! the data and is refused before it starts when that does not fit. A snapshot is consistent
//! file by file, not across files while writers run, so the live database volumes are refused
//! unless the caller says the server is stopped (`allow_live`). Snapshots count apart from the
//! volume's data: its quota counts the data only.
//!
//! A snapshot is built in a `.partial-` directory of the area and renamed into place once it
//! is complete, so a listed snapshot is always whole. A restore copies the snapshot beside the
//! volume, checks the copy against the sealed manifest, moves the current data aside and swaps
//! the copy in; the old data goes only once the new is in place (interrupted, it is put back,
//! or the next start puts it back). Retention (`volumes.snapshots.keep`, or the volume's label
//! `snapshots.keep`) removes the oldest beyond it after each snapshot and at maintenance.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use super::fsops::{self, CopyMethod};
use super::integrity::{self, Manifest, VerifyReport};
use super::{Settings, VolumeActor, VolumeError, VolumeMeta, VolumeName, VolumeOp, events, store};

/// The volumes whose servers write across files (their data is backed up logically).
pub const LIVE_KINDS: [&str; 3] = ["mongodb", "redis", "elasticsearch"];

/// The label that overrides `volumes.snapshots.keep` for one volume.
pub const KEEP_LABEL: &str = "snapshots.keep";

// ---------------------------------------------------------------------------------------------
// Messages

/// Takes a snapshot of a volume; answers it. `snapshot`: its name (default: the time, UTC,
/// `YYYYMMDD-HHMMSS`). Refused for a live database volume unless `allow_live`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<SnapshotInfo, VolumeError>")]
pub struct TakeSnapshot {
    pub name: VolumeName,
    pub snapshot: Option<String>,
    pub label: Option<String>,
    pub allow_live: bool,
}

/// A volume's snapshots, oldest first.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<SnapshotInfo>, VolumeError>")]
pub struct ListSnapshots {
    pub name: VolumeName,
}

/// Replaces a volume's data with a snapshot's. `force`: needed when the volume holds files,
/// and for a live database volume (stop its server first).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<SnapshotInfo, VolumeError>")]
pub struct RestoreSnapshot {
    pub name: VolumeName,
    pub snapshot: String,
    pub force: bool,
}

/// Removes one snapshot.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), VolumeError>")]
pub struct DeleteSnapshot {
    pub name: VolumeName,
    pub snapshot: String,
}

/// Compares a snapshot with the manifest sealed when it was taken.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VerifyReport, VolumeError>")]
pub struct VerifySnapshot {
    pub name: VolumeName,
    pub snapshot: String,
}

impl VolumeOp for TakeSnapshot {
    type Output = SnapshotInfo;
    const LONG: bool = true;
}
impl VolumeOp for ListSnapshots {
    type Output = Vec<SnapshotInfo>;
    const LONG: bool = false;
}
impl VolumeOp for RestoreSnapshot {
    type Output = SnapshotInfo;
    const LONG: bool = true;
}
impl VolumeOp for DeleteSnapshot {
    type Output = ();
    const LONG: bool = true;
}
impl VolumeOp for VerifySnapshot {
    type Output = VerifyReport;
    const LONG: bool = true;
}

/// What `snapshot.json` holds and `snapshots` lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub volume: VolumeName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// RFC 3339, UTC.
    pub created: String,
    /// Nanoseconds since the epoch: the order of snapshots (and of retention).
    pub created_ns: u128,
    pub method: CopyMethod,
    pub files: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Files a reflink snapshot had to copy (a clone refused).
    #[serde(default)]
    pub copied_files: u64,
    /// Taken of a live database volume with `allow_live`.
    #[serde(default)]
    pub live: bool,
}

// ---------------------------------------------------------------------------------------------
// Paths and names

/// Where volume `name`'s snapshots are: on the data root, whichever path its data has.
pub(super) fn area(root: &Path, name: &VolumeName) -> PathBuf {
    root.join(format!("{name}.snapshots"))
}

/// A snapshot name: the rules of a volume name (1–63 of `a-z 0-9 - _`), so never a path.
fn check_name(snapshot: &str) -> Result<(), VolumeError> {
    VolumeName::new(snapshot)
        .map(|_| ())
        .map_err(|e| VolumeError::Invalid {
            field: "snapshot",
            reason: match e {
                VolumeError::InvalidName { reason, .. } => format!("{snapshot:?}: {reason}"),
                other => other.to_string(),
            },
        })
}

fn default_name(now: SystemTime) -> String {
    let digits: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    format!("{}-{}", &digits[..8], &digits[8..14])
}

fn read_info(dir: &Path) -> Result<SnapshotInfo, VolumeError> {
    let path = dir.join("snapshot.json");
    let bytes = std::fs::read(&path).map_err(|e| VolumeError::io("read", &path, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| VolumeError::Corrupt {
        what: format!("{}: {e}", path.display()),
    })
}

fn read_manifest(dir: &Path) -> Result<Manifest, VolumeError> {
    let path = dir.join("manifest.json");
    let bytes = std::fs::read(&path).map_err(|e| VolumeError::io("read", &path, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| VolumeError::Corrupt {
        what: format!("{}: {e}", path.display()),
    })
}

/// The directory of an existing snapshot (its name checked first).
fn existing(s: &Settings, name: &VolumeName, snapshot: &str) -> Result<PathBuf, VolumeError> {
    check_name(snapshot)?;
    let dir = area(&s.root, name).join(snapshot);
    if std::fs::symlink_metadata(dir.join("snapshot.json")).is_err() {
        return Err(VolumeError::NoSnapshot {
            volume: name.to_string(),
            snapshot: snapshot.to_owned(),
        });
    }
    Ok(dir)
}

fn is_live(meta: &VolumeMeta) -> bool {
    LIVE_KINDS.contains(&meta.kind.as_str()) || LIVE_KINDS.contains(&meta.name.as_str())
}

fn refuse_live(meta: &VolumeMeta, flag: &'static str) -> VolumeError {
    VolumeError::Live {
        volume: meta.name.to_string(),
        kind: meta.kind.clone(),
        flag,
    }
}

/// Space the snapshots of `name` take (0 without any).
pub(super) fn area_bytes(root: &Path, name: &VolumeName) -> Result<u64, VolumeError> {
    let dir = area(root, name);
    if !dir.is_dir() {
        return Ok(0);
    }
    Ok(fsops::tally(&dir)?.bytes)
}

/// Removes every snapshot of `name` (its volume was deleted).
pub(super) fn remove_area(root: &Path, name: &VolumeName) -> Result<(), VolumeError> {
    let dir = area(root, name);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(VolumeError::io("remove", &dir, &e))
        }
        _ => Ok(()),
    }
}

/// Removes a directory in one visible step: renamed to a dot name first (never listed), then
/// removed; an interruption leaves a leftover that cleanup removes.
fn remove_whole(dir: &Path) -> Result<(), VolumeError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let doomed = parent.join(format!(".deleting-{:016x}", rand::random::<u64>()));
    std::fs::rename(dir, &doomed).map_err(|e| VolumeError::io("rename", dir, &e))?;
    std::fs::remove_dir_all(&doomed).map_err(|e| VolumeError::io("remove", &doomed, &e))
}

/// Whether `file` in a snapshot area is a leftover of an interrupted snapshot or removal.
pub(super) fn is_leftover(file: &str) -> bool {
    file.starts_with(".partial-") || file.starts_with(".deleting-")
}

// ---------------------------------------------------------------------------------------------
// Disk work

/// The first regular file under `dir` (to probe whether clones work), if any.
fn sample_file(dir: &Path) -> Option<PathBuf> {
    fsops::walk_volume(dir)
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_file())
        .map(walkdir::DirEntry::into_path)
}

/// How a copy of `from` into the directory `into` goes, refused before it starts when a plain
/// copy does not fit in what the filesystem has free (less `volumes.min_free`).
fn plan_copy(
    s: &Settings,
    volume: &VolumeName,
    from: &Path,
    into: &Path,
) -> Result<CopyMethod, VolumeError> {
    if sample_file(from).is_some_and(|f| fsops::can_reflink(&f, into)) {
        return Ok(CopyMethod::Reflink);
    }
    let needed = fsops::tally(from)?.bytes;
    let free = fsops::statvfs(into)?.free_bytes;
    if needed.saturating_add(s.min_free) > free {
        return Err(VolumeError::NoSpace {
            volume: volume.to_string(),
            needed,
            free: free.saturating_sub(s.min_free),
        });
    }
    Ok(CopyMethod::Copy)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), VolumeError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| VolumeError::Corrupt {
        what: format!("cannot encode {}: {e}", path.display()),
    })?;
    fsops::write_atomic(path, &bytes, 0o640)
}

pub(super) fn take(s: &Settings, msg: &TakeSnapshot) -> Result<SnapshotInfo, VolumeError> {
    if let Some(snap) = &msg.snapshot {
        check_name(snap)?;
    }
    // Shared: writers go on (the snapshot is consistent file by file), but nothing replaces
    // or moves the data meanwhile — an import, a migration or a restore answers busy.
    let _lock = store::lock(s, &msg.name, "snapshot", false)?;
    let meta = store::fresh_meta(s, &msg.name)?;
    if is_live(&meta) && !msg.allow_live {
        return Err(refuse_live(&meta, "--allow-live"));
    }
    let data = store::data_dir(&s.root, &meta);
    fsops::check_data_dir(&data)?;
    let area = area(&s.root, &msg.name);
    std::fs::create_dir_all(&area).map_err(|e| VolumeError::io("mkdir", &area, &e))?;
    let now = SystemTime::now();
    let name = match &msg.snapshot {
        Some(snap) if area.join(snap).exists() => {
            return Err(VolumeError::SnapshotExists {
                volume: msg.name.to_string(),
                snapshot: snap.clone(),
            });
        }
        Some(snap) => snap.clone(),
        None => {
            let base = default_name(now);
            (1..)
                .map(|n| {
                    if n == 1 {
                        base.clone()
                    } else {
                        format!("{base}-{n}")
                    }
                })
                .find(|n| !area.join(n).exists())
                .unwrap_or(base)
        }
    };
    let method = plan_copy(s, &msg.name, &data, &area)?;
    let partial = area.join(format!(".partial-{name}-{:016x}", rand::random::<u64>()));
    let built = (|| {
        std::fs::create_dir(&partial).map_err(|e| VolumeError::io("mkdir", &partial, &e))?;
        let copied = fsops::copy_tree_as(&data, &partial.join("data"), method)?;
        // Sealed from the copy: what verify checks the snapshot against later.
        let manifest = integrity::build(&partial.join("data"))?;
        write_json(&partial.join("manifest.json"), &manifest)?;
        let info = SnapshotInfo {
            name: name.clone(),
            volume: msg.name.clone(),
            label: msg.label.clone(),
            created: humantime::format_rfc3339_millis(now).to_string(),
            created_ns: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            method,
            files: copied.files,
            bytes: copied.bytes,
            copied_files: match method {
                CopyMethod::Reflink => copied.files - copied.cloned,
                CopyMethod::Copy => 0,
            },
            live: is_live(&meta),
        };
        write_json(&partial.join("snapshot.json"), &info)?;
        fsops::sync_dir(&partial)?;
        // Whole, or not there: a snapshot of this name made meanwhile is not replaced.
        std::fs::rename(&partial, area.join(&name)).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::DirectoryNotEmpty => {
                VolumeError::SnapshotExists {
                    volume: msg.name.to_string(),
                    snapshot: name.clone(),
                }
            }
            _ => VolumeError::io("rename", &partial, &e),
        })?;
        fsops::sync_dir(&area)?;
        Ok(info)
    })();
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    built
}

/// A volume's snapshots, oldest first (a snapshot whose record cannot be read is skipped with
/// a warning: it is listed by nothing and removed by nothing but `delete-snapshot`).
pub(super) fn list(s: &Settings, name: &VolumeName) -> Result<Vec<SnapshotInfo>, VolumeError> {
    store::fresh_meta(s, name)?;
    let area = area(&s.root, name);
    let entries = match std::fs::read_dir(&area) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(VolumeError::io("read_dir", &area, &e)),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with('.') {
            continue;
        }
        match read_info(&entry.path()) {
            Ok(info) => found.push(info),
            Err(e) => {
                tracing::warn!(volume = %name, snapshot = %file, error = %e, "snapshot record unreadable; not listed")
            }
        }
    }
    found.sort_by(|a, b| (a.created_ns, &a.name).cmp(&(b.created_ns, &b.name)));
    Ok(found)
}

/// How many snapshots volume `meta` keeps (0: all).
pub(super) fn keep(s: &Settings, meta: &VolumeMeta) -> u32 {
    meta.labels
        .get(KEEP_LABEL)
        .and_then(|k| k.parse().ok())
        .unwrap_or(s.snapshot_keep)
}

/// Removes the oldest snapshots of `name` beyond what it keeps; answers their names. Called
/// with the volume's lock held.
pub(super) fn apply_retention(s: &Settings, meta: &VolumeMeta) -> Result<Vec<String>, VolumeError> {
    let keep = keep(s, meta) as usize;
    let all = list(s, &meta.name)?;
    if keep == 0 || all.len() <= keep {
        return Ok(Vec::new());
    }
    let area = area(&s.root, &meta.name);
    let mut removed = Vec::new();
    for old in &all[..all.len() - keep] {
        remove_whole(&area.join(&old.name))?;
        removed.push(old.name.clone());
    }
    Ok(removed)
}

/// Retention under the volume's lock (maintenance).
pub(super) fn retain(s: &Settings, name: &VolumeName) -> Result<Vec<String>, VolumeError> {
    let _lock = store::lock(s, name, "snapshot retention", false)?;
    apply_retention(s, &store::fresh_meta(s, name)?)
}

pub(super) fn delete(s: &Settings, name: &VolumeName, snapshot: &str) -> Result<(), VolumeError> {
    // Exclusive: a restore reading this snapshot is not cut short.
    let _lock = store::lock(s, name, "delete-snapshot", true)?;
    store::fresh_meta(s, name)?;
    remove_whole(&existing(s, name, snapshot)?)
}

pub(super) fn verify(
    s: &Settings,
    name: &VolumeName,
    snapshot: &str,
) -> Result<VerifyReport, VolumeError> {
    let _lock = store::lock(s, name, "verify-snapshot", false)?;
    let dir = existing(s, name, snapshot)?;
    let sealed = read_manifest(&dir)?;
    let now = integrity::build(&dir.join("data"))?;
    Ok(integrity::compare(
        &format!("{name}@{snapshot}"),
        &sealed,
        &now,
    ))
}

/// Replaces the volume's data with the snapshot's; see the module doc.
pub(super) fn restore(
    s: &Settings,
    msg: &RestoreSnapshot,
) -> Result<(VolumeMeta, SnapshotInfo), VolumeError> {
    let name = &msg.name;
    let _lock = store::lock(s, name, "restore-snapshot", true)?;
    let meta = store::fresh_meta(s, name)?;
    let snap = existing(s, name, &msg.snapshot)?;
    let info = read_info(&snap)?;
    let sealed = read_manifest(&snap)?;
    let dir = store::data_dir(&s.root, &meta);
    fsops::check_data_dir(&dir)?;
    if !msg.force {
        if is_live(&meta) {
            return Err(refuse_live(&meta, "--force"));
        }
        if !fsops::is_empty_dir(&dir)? {
            return Err(VolumeError::NotEmpty {
                volume: name.to_string(),
            });
        }
    }
    // Beside the data (same filesystem, so the swap is a rename), checked against the sealed
    // manifest before anything of the current data moves.
    let staging = store::beside(&s.root, &meta, "import");
    let parent = staging.parent().unwrap_or(&s.root).to_path_buf();
    let staged = (|| {
        let method = plan_copy(s, name, &snap.join("data"), &parent)?;
        fsops::copy_tree_as(&snap.join("data"), &staging, method)?;
        let report = integrity::compare(name.as_str(), &sealed, &integrity::build(&staging)?);
        if !report.clean() {
            return Err(VolumeError::Corrupt {
                what: format!(
                    "snapshot {} of {name} does not match its manifest ({} added, {} missing, \
                     {} changed); the volume is unchanged",
                    msg.snapshot,
                    report.added.len(),
                    report.missing.len(),
                    report.changed.len()
                ),
            });
        }
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let old = store::beside(&s.root, &meta, "replaced");
    std::fs::rename(&dir, &old).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staging);
        VolumeError::io("rename", &dir, &e)
    })?;
    // A closure so the fail point can return early; without the feature it is one call.
    #[allow(clippy::redundant_closure_call)]
    let swapped = (|| {
        // Interrupted with the current data moved aside, for the test that it comes back.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("volume-restore-before-swap", |_| Err(
            VolumeError::Interrupted {
                what: "fail point volume-restore-before-swap".to_owned(),
            }
        ));
        std::fs::rename(&staging, &dir).map_err(|e| VolumeError::io("rename", &staging, &e))
    })();
    if let Err(e) = swapped {
        // The previous data back; a crash right here is undone at the next start.
        let _ = std::fs::rename(&old, &dir);
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    fsops::sync_dir(&parent)?;
    // The volume now is the snapshot: its sealed manifest describes it.
    let manifest = store::manifest_path(&s.root, name);
    std::fs::read(snap.join("manifest.json"))
        .map_err(|e| VolumeError::io("read", &snap, &e))
        .and_then(|bytes| fsops::write_atomic(&manifest, &bytes, 0o640))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok((meta, info))
}

// ---------------------------------------------------------------------------------------------
// Handlers

impl Handler<TakeSnapshot> for VolumeActor {
    type Result = super::Reply<SnapshotInfo>;

    fn handle(&mut self, msg: TakeSnapshot, _: &mut Context<Self>) -> Self::Result {
        let name = msg.name.clone();
        self.on_disk(
            self.known(&name),
            move |s| {
                let info = take(s, &msg)?;
                // Retention under the lock again: a failure there does not undo the snapshot.
                let removed = retain(s, &msg.name).unwrap_or_else(|e| {
                    tracing::warn!(volume = %msg.name, error = %e, "snapshot retention failed");
                    Vec::new()
                });
                Ok((info, removed))
            },
            move |act, res| {
                let (info, removed) = res?;
                act.usage.remove(&name);
                events::emit(events::VolumeSnapshotCreated {
                    volume: name.to_string(),
                    snapshot: info.name.clone(),
                    method: format!("{:?}", info.method).to_lowercase(),
                    bytes: info.bytes,
                    removed: removed.len() as u64,
                });
                Ok(info)
            },
        )
    }
}

impl Handler<ListSnapshots> for VolumeActor {
    type Result = super::Reply<Vec<SnapshotInfo>>;

    fn handle(&mut self, msg: ListSnapshots, _: &mut Context<Self>) -> Self::Result {
        let name = msg.name;
        self.on_disk(self.known(&name), move |s| list(s, &name), |_, res| res)
    }
}

impl Handler<RestoreSnapshot> for VolumeActor {
    type Result = super::Reply<SnapshotInfo>;

    fn handle(&mut self, msg: RestoreSnapshot, _: &mut Context<Self>) -> Self::Result {
        let check = self.known(&msg.name);
        self.on_disk(
            check,
            move |s| restore(s, &msg),
            |act, res| {
                let (meta, info) = res?;
                act.usage.remove(&meta.name);
                act.remember(&meta);
                events::emit(events::VolumeSnapshotRestored {
                    volume: meta.name.to_string(),
                    snapshot: info.name.clone(),
                });
                Ok(info)
            },
        )
    }
}

impl Handler<DeleteSnapshot> for VolumeActor {
    type Result = super::Reply<()>;

    fn handle(&mut self, msg: DeleteSnapshot, _: &mut Context<Self>) -> Self::Result {
        let name = msg.name.clone();
        self.on_disk(
            self.known(&name),
            move |s| delete(s, &msg.name, &msg.snapshot),
            move |act, res| {
                act.usage.remove(&name);
                res
            },
        )
    }
}

impl Handler<VerifySnapshot> for VolumeActor {
    type Result = super::Reply<VerifyReport>;

    fn handle(&mut self, msg: VerifySnapshot, _: &mut Context<Self>) -> Self::Result {
        let name = msg.name.clone();
        self.on_disk(
            self.known(&name),
            move |s| verify(s, &msg.name, &msg.snapshot),
            |_, res| res,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_the_utc_time_and_valid() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_518_872);
        let n = default_name(t);
        assert_eq!(n, "20251130-160752");
        assert!(check_name(&n).is_ok());
        for bad in ["..", "../x", "a/b", "", ".hidden", "UP"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
