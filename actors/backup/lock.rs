//! The backup lock: one backup (and, later, one restore) at a time on a machine, whoever starts
//! it — the daemon, its scheduler or a CLI in another process. It is an `flock` on
//! `state_dir/locks/backup.lock`: the kernel drops it when the holder's file closes, also when
//! the process is killed, so a crashed run never leaves a stale lock behind, and the next run
//! finds what the crashed one wrote and cleans it up under the lock.
//!
//! The holder writes its pid into the file, so a refusal can say who holds it. Taking the lock
//! is a non-blocking `flock` (std's `File::try_lock`): it never waits; a second run is refused
//! at once (`busy`).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Another run holds it.
    #[error("another backup or restore is running ({holder}; lock {path})")]
    Busy { path: String, holder: String },
    #[error("backup lock {path}: {reason}")]
    Io { path: String, reason: String },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock at `path` (its directory must exist) or answers why not, without
    /// waiting. Blocking file I/O: call it off the event loop.
    pub fn try_acquire(path: &Path) -> Result<RunLock, LockError> {
        let io = |e: std::io::Error| LockError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("held by pid {pid}"),
                    Err(_) => "held by another process".to_owned(),
                };
                return Err(LockError::Busy {
                    path: path.display().to_string(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // Ours now: say who holds it.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io)?;
        Ok(RunLock {
            _file: file,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backup.lock");
        let held = RunLock::try_acquire(&path).expect("first");
        // A second open file description of the same file conflicts like another process.
        match RunLock::try_acquire(&path) {
            Err(e @ LockError::Busy { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("pid {}", std::process::id())),
                    "{text}"
                );
            }
            other => panic!("expected busy, got {other:?}"),
        }
        drop(held);
        let again = RunLock::try_acquire(&path).expect("free again");
        assert_eq!(again.path(), path);

        let err = RunLock::try_acquire(&dir.path().join("missing/backup.lock")).expect_err("io");
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
    }
}
