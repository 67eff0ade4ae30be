//! Migrate: moves a volume's data to a new directory outside the data root — copy, verify the
//! copy against the original, flush, and only then switch the metadata, so an interruption
//! before the switch leaves the original complete (the partial copy goes). The rules for the
//! target are [`check_target`]'s.

use std::path::{Path, PathBuf};

use super::{Settings, VolumeError, VolumeMeta, VolumeName, fsops, integrity, store};

/// Where a migration may go: a new directory (not existing yet) whose real parent is outside
/// the data root and outside every volume.
fn check_target(s: &Settings, to: &Path, others: &[PathBuf]) -> Result<PathBuf, VolumeError> {
    let bad = |reason: String| VolumeError::Invalid {
        field: "to",
        reason,
    };
    if !to.is_absolute() {
        return Err(bad("must be an absolute path".to_owned()));
    }
    let (Some(parent), Some(leaf)) = (to.parent(), to.file_name()) else {
        return Err(bad("must name a new directory".to_owned()));
    };
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(bad(format!("{} exists; migrate creates it", to.display())));
    }
    let parent = parent
        .canonicalize()
        .map_err(|e| bad(format!("its parent {}: {e}", parent.display())))?;
    let target = parent.join(leaf);
    let root = s
        .root
        .canonicalize()
        .map_err(|e| bad(format!("the data root: {e}")))?;
    if target.starts_with(&root) {
        return Err(bad(format!("{} is inside the data root", target.display())));
    }
    for other in others {
        if let Ok(other) = other.canonicalize()
            && (target.starts_with(&other) || other.starts_with(&target))
        {
            return Err(bad(format!(
                "{} overlaps volume data at {}",
                target.display(),
                other.display()
            )));
        }
    }
    Ok(target)
}

/// Copy, verify, flush, switch: the original stays complete until the metadata names the copy.
pub(super) fn migrate(
    s: &Settings,
    name: &VolumeName,
    to: &Path,
    others: &[PathBuf],
) -> Result<VolumeMeta, VolumeError> {
    let _lock = store::lock(s, name, "migrate", true)?;
    let mut meta = store::fresh_meta(s, name)?;
    let from = store::data_dir(&s.root, &meta);
    fsops::check_data_dir(&from)?;
    let target = check_target(s, to, others)?;
    if let Ok(real) = from.canonicalize()
        && (target.starts_with(&real) || real.starts_with(&target))
    {
        return Err(VolumeError::Invalid {
            field: "to",
            reason: "must not be the volume itself or inside it".to_owned(),
        });
    }
    let copied = (|| {
        fsops::copy_tree(&from, &target)?;
        let (source, copy) = (integrity::build(&from)?, integrity::build(&target)?);
        let report = integrity::compare(name.as_str(), &source, &copy);
        if !report.clean() {
            return Err(VolumeError::Corrupt {
                what: format!(
                    "the copy differs from the original ({} added, {} missing, {} changed); the original is unchanged",
                    report.added.len(),
                    report.missing.len(),
                    report.changed.len()
                ),
            });
        }
        #[cfg(feature = "failpoints")]
        fail::fail_point!("volume-migrate-before-switch", |_| Err(
            VolumeError::Interrupted {
                what: "fail point volume-migrate-before-switch".to_owned(),
            }
        ));
        Ok(())
    })();
    if let Err(e) = copied {
        // The original was never touched; the partial copy goes.
        let _ = std::fs::remove_dir_all(&target);
        return Err(e);
    }
    meta.path = Some(target);
    store::write_meta(&s.root, &meta)?;
    fsops::sync_dir(&s.root)?;
    // Switched. The old copy is renamed out of the way first (one step), then removed; if
    // that is interrupted, the next start removes the leftover.
    let old = from
        .parent()
        .unwrap_or(&s.root)
        .join(format!(".{name}.migrated-{:016x}", rand::random::<u64>()));
    match std::fs::rename(&from, &old) {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&old);
        }
        Err(e) => {
            tracing::warn!(volume = %name, path = %from.display(), error = %e, "migrated; the old copy is left in place")
        }
    }
    Ok(meta)
}
