//! Cleanup: removes files matching `volumes.cleanup_patterns` (and lucid-db's own temporary
//! files) older than `volumes.cleanup_age` from a volume, and the leftovers of interrupted
//! imports, deletes, migrations and snapshots beside it — never a `.replaced-` copy while it is the only
//! copy of the data.

use std::time::SystemTime;

use super::{CleanupReport, Settings, VolumeError, VolumeMeta, VolumeName, fsops, store};

/// Cleans volume `name` under its exclusive lock.
pub(super) fn run(s: &Settings, name: &VolumeName) -> Result<CleanupReport, VolumeError> {
    let _lock = store::lock(s, name, "cleanup", true)?;
    cleanup(s, &store::fresh_meta(s, name)?)
}

fn cleanup(s: &Settings, meta: &VolumeMeta) -> Result<CleanupReport, VolumeError> {
    let mut report = CleanupReport::default();
    let cutoff = SystemTime::now()
        .checked_sub(s.cleanup_age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let old_enough = |m: &std::fs::Metadata| m.modified().is_ok_and(|t| t <= cutoff);
    let dir = store::data_dir(&s.root, meta);
    fsops::check_data_dir(&dir)?;
    for entry in walkdir::WalkDir::new(&dir).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| fsops::walk_error(&dir, e))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        let matches = fsops::is_transient(entry.file_name())
            || s.cleanup_patterns
                .iter()
                .any(|p| fsops::name_matches(p, &name));
        if !matches {
            continue;
        }
        let m = entry.metadata().map_err(|e| fsops::walk_error(&dir, e))?;
        if old_enough(&m) {
            std::fs::remove_file(entry.path())
                .map_err(|e| VolumeError::io("remove", entry.path(), &e))?;
            report.removed_files += 1;
            report.removed_bytes += m.len();
        }
    }
    // Leftovers of interrupted operations on this volume, beside it. A `.replaced-` copy is
    // the only copy while the volume's own directory is missing: never removed then.
    let parent = dir.parent().unwrap_or(&s.root).to_path_buf();
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let leftover =
                store::leftover_of(&meta.name, &name, &["import", "deleted", "migrated"])
                    || (store::leftover_of(&meta.name, &name, &["replaced"]) && dir.is_dir());
            if leftover
                && entry.metadata().is_ok_and(|m| old_enough(&m))
                && std::fs::remove_dir_all(entry.path()).is_ok()
            {
                report.removed_leftovers += 1;
            }
        }
    }
    // Snapshots interrupted while being taken or removed.
    if let Ok(entries) = std::fs::read_dir(super::snapshot::area(&s.root, &meta.name)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if super::snapshot::is_leftover(&name)
                && entry.metadata().is_ok_and(|m| old_enough(&m))
                && std::fs::remove_dir_all(entry.path()).is_ok()
            {
                report.removed_leftovers += 1;
            }
        }
    }
    Ok(report)
}
