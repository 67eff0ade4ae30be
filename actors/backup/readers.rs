//! Who is reading a backup: a verify, a restore or a drill holds a *shared* lock on
//! `state_dir/locks/read-<id>.lock` while it reads backup `<id>`; retention and `backup delete`
//! take the same file *exclusively*, without waiting, before they delete — so a backup being
//! read, by this process or another (the daemon and a CLI share the state directory), is never
//! deleted under its reader. The kernel drops a lock with its file, also when the holder is
//! killed: a crashed reader never keeps a backup forever.
//!
//! The lock files are left in place (removing one while another process opens it would let
//! two holders lock two different files); they are a few bytes each, and the deletion of a
//! backup removes its own.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use super::id::BackupId;
use crate::state::{StateDir, StateError};

/// A held lock on one backup's reader file; dropping it releases it.
#[derive(Debug)]
pub struct ReadLock {
    _file: File,
    path: PathBuf,
}

/// What taking the exclusive lock found.
#[derive(Debug)]
pub enum Exclusive {
    /// Nobody reads the backup; it stays unread while this is held.
    Held(ReadLock),
    /// A reader holds it.
    InUse,
}

fn path_of(state: &StateDir, id: &BackupId) -> PathBuf {
    state.lock_file(&format!("read-{id}"))
}

fn open(path: &Path) -> Result<File, StateError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StateError::Unusable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

impl ReadLock {
    /// Marks backup `id` as being read, waiting while a deletion holds it exclusively (a
    /// deletion is short; the reader then finds the backup gone and says so). Blocking file
    /// I/O: call it off the event loop.
    pub fn shared(state: &StateDir, id: &BackupId) -> Result<ReadLock, StateError> {
        let path = path_of(state, id);
        std::fs::create_dir_all(state.locks()).map_err(|e| StateError::Unusable {
            path: state.locks().display().to_string(),
            reason: e.to_string(),
        })?;
        let file = open(&path)?;
        file.lock_shared().map_err(|e| StateError::Unusable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(ReadLock { _file: file, path })
    }

    /// Takes backup `id`'s file exclusively if nobody reads it, without waiting.
    pub fn try_exclusive(state: &StateDir, id: &BackupId) -> Result<Exclusive, StateError> {
        let path = path_of(state, id);
        std::fs::create_dir_all(state.locks()).map_err(|e| StateError::Unusable {
            path: state.locks().display().to_string(),
            reason: e.to_string(),
        })?;
        let file = open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Exclusive::Held(ReadLock { _file: file, path })),
            Err(TryLockError::WouldBlock) => Ok(Exclusive::InUse),
            Err(TryLockError::Error(e)) => Err(StateError::Unusable {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Releases the lock and removes its file: only for an exclusive holder whose backup is
    /// deleted (a reader that comes after finds no backup and no lock to wait for).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_deleters_out_until_it_lets_go_in_this_process_or_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let id = BackupId::new(chrono::Utc::now());
        let reader = ReadLock::shared(&state, &id).expect("shared");
        // A second reader is welcome; a deleter is not.
        let second = ReadLock::shared(&state, &id).expect("second reader");
        assert!(matches!(
            ReadLock::try_exclusive(&state, &id).expect("try"),
            Exclusive::InUse
        ));
        drop(reader);
        assert!(matches!(
            ReadLock::try_exclusive(&state, &id).expect("try"),
            Exclusive::InUse
        ));
        drop(second);
        let held = match ReadLock::try_exclusive(&state, &id).expect("try") {
            Exclusive::Held(l) => l,
            Exclusive::InUse => panic!("nobody reads it any more"),
        };
        // Another backup is not affected.
        let other = BackupId::new(chrono::Utc::now() - chrono::Duration::hours(1));
        assert!(matches!(
            ReadLock::try_exclusive(&state, &other).expect("try"),
            Exclusive::Held(_)
        ));
        held.remove();
        assert!(!path_of(&state, &id).exists());

        // Another process: `flock` on the same file from a child shell.
        let reader = ReadLock::shared(&state, &id).expect("shared");
        let path = path_of(&state, &id);
        let status = std::process::Command::new("flock")
            .args(["--exclusive", "--nonblock"])
            .arg(&path)
            .arg("true")
            .status()
            .expect("flock(1)");
        assert!(
            !status.success(),
            "another process took a lock a reader holds"
        );
        drop(reader);
        let status = std::process::Command::new("flock")
            .args(["--exclusive", "--nonblock"])
            .arg(&path)
            .arg("true")
            .status()
            .expect("flock(1)");
        assert!(status.success());
    }
}
