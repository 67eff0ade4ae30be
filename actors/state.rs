//! The state directory (`state_dir`): what lucid-db keeps besides the data — the backup
//! catalogue, the scheduler's run records, the cross-process lock files and the HTTP API's
//! token file — each at a fixed place, so an operator knows what to back up and what may be
//! deleted (everything here can be rebuilt, but not without cost: see docs/architecture.md,
//! The state directory).
//!
//! Only the parts that write ([`crate::Roles::writes_state`]) create it, with mode 0750 as the
//! unit's `StateDirectoryMode=` does; `lucid-db health` and an embedding sibling never touch
//! it. [`check_owner`] is what the CLI runs before it writes anywhere: a root CLI writing into
//! the daemon's directories would leave files that the daemon, running as `User=lucid`, cannot
//! open, and that shows up days later as a failed backup rather than now as a clear error.

use std::ffi::CStr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The mode a new state directory gets (as `StateDirectoryMode=0750` in the unit).
pub const MODE: u32 = 0o750;

/// What went wrong with the state directory or a directory the CLI was about to write into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {reason}")]
    Unusable { path: String, reason: String },
    #[error(
        "{path} belongs to {owner} (uid {owner_uid}), and this runs as {me} (uid {me_uid}): files \
         written now could not be opened by {owner}; run the command as {owner} (sudo -u {owner} …)"
    )]
    ForeignOwner {
        path: String,
        owner: String,
        owner_uid: u32,
        me: String,
        me_uid: u32,
    },
}

impl StateError {
    pub fn code(&self) -> &'static str {
        match self {
            StateError::Unusable { .. } => "state_dir_unusable",
            StateError::ForeignOwner { .. } => "foreign_owner",
        }
    }
}

/// The state directory and the places in it. Building one touches nothing on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The backup catalogue (issue #10): one record per backup, rebuilt from the manifests in
    /// storage when lost.
    pub fn backup_catalogue(&self) -> PathBuf {
        self.root.join("backup").join("catalogue")
    }

    /// The scheduler's run records (issue #13): start, end and outcome of every run.
    pub fn scheduler_runs(&self) -> PathBuf {
        self.root.join("scheduler").join("runs")
    }

    /// The directory of the cross-process lock files (a backup, a restore: the CLI and the
    /// daemon never run two at once).
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// The lock file named `name` (`backup` → `locks/backup.lock`).
    pub fn lock_file(&self, name: &str) -> PathBuf {
        self.locks().join(format!("{name}.lock"))
    }

    /// The volumes' usage samples, kept for their time-to-full forecasts.
    pub fn volume_history(&self) -> PathBuf {
        self.root.join("volumes").join("usage-history.json")
    }

    /// The HTTP API's token file (issue #14).
    pub fn token_file(&self) -> PathBuf {
        self.root.join("http").join("tokens.toml")
    }

    /// Creates the state directory (mode [`MODE`]; parents as needed) and its `locks/`
    /// directory when missing. An existing directory keeps its mode: systemd or the operator
    /// set it.
    pub fn ensure(&self) -> Result<(), StateError> {
        let unusable = |path: &Path, reason: String| StateError::Unusable {
            path: path.display().to_string(),
            reason,
        };
        for dir in [self.root.clone(), self.locks()] {
            match std::fs::metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(unusable(&dir, "not a directory".to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(MODE)
                        .create(&dir)
                        .map_err(|e| unusable(&dir, format!("cannot create it: {e}")))?;
                }
                Err(e) => return Err(unusable(&dir, e.to_string())),
            }
        }
        Ok(())
    }
}

/// The daemon's presence: `lucid-db run` holds `locks/daemon.lock` (an `flock`, dropped by
/// the kernel when the daemon exits or is killed) for as long as it runs, so a CLI command
/// that must not run beside it (a restore writing into the stores the daemon serves) can tell.
#[derive(Debug)]
pub struct DaemonLock {
    _file: std::fs::File,
}

impl DaemonLock {
    /// Takes the lock; `Ok(None)` when another daemon holds it. The directory must exist
    /// ([`StateDir::ensure`]).
    pub fn acquire(state: &StateDir) -> Result<Option<DaemonLock>, StateError> {
        let path = state.lock_file("daemon");
        let file = open_lock(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DaemonLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(StateError::Unusable {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Whether a daemon runs with this state directory (holds its lock) right now.
    pub fn held(state: &StateDir) -> Result<bool, StateError> {
        let path = state.lock_file("daemon");
        if !path.exists() {
            return Ok(false);
        }
        let file = open_lock(&path)?;
        match file.try_lock_shared() {
            Ok(()) => Ok(false),
            Err(std::fs::TryLockError::WouldBlock) => Ok(true),
            Err(std::fs::TryLockError::Error(e)) => Err(StateError::Unusable {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

fn open_lock(path: &Path) -> Result<std::fs::File, StateError> {
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

/// Refuses a directory that exists and belongs to another user than the one this process
/// runs as (its effective uid). A missing directory passes: whoever creates it owns it.
pub fn check_owner(path: &Path) -> Result<(), StateError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StateError::Unusable {
                path: path.display().to_string(),
                reason: e.to_string(),
            });
        }
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me_uid = unsafe { libc::geteuid() };
    if meta.uid() == me_uid {
        return Ok(());
    }
    Err(StateError::ForeignOwner {
        path: path.display().to_string(),
        owner: user_name(meta.uid()),
        owner_uid: meta.uid(),
        me: user_name(me_uid),
        me_uid,
    })
}

/// The login name of `uid`, or the number when the user database does not know it.
pub fn user_name(uid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to overwrite.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and `buf.len()` is the buffer's size.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return uid.to_string();
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
    unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn places_are_fixed_under_the_root() {
        let s = StateDir::new("/var/lib/lucid-db");
        assert_eq!(
            s.backup_catalogue(),
            Path::new("/var/lib/lucid-db/backup/catalogue")
        );
        assert_eq!(
            s.scheduler_runs(),
            Path::new("/var/lib/lucid-db/scheduler/runs")
        );
        assert_eq!(
            s.lock_file("backup"),
            Path::new("/var/lib/lucid-db/locks/backup.lock")
        );
        assert_eq!(
            s.token_file(),
            Path::new("/var/lib/lucid-db/http/tokens.toml")
        );
    }

    #[test]
    fn the_daemon_lock_tells_a_cli_whether_a_daemon_runs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = StateDir::new(tmp.path().join("state"));
        s.ensure().expect("create");
        assert!(!DaemonLock::held(&s).expect("probe"));
        let daemon = DaemonLock::acquire(&s).expect("acquire").expect("free");
        assert!(DaemonLock::held(&s).expect("probe"));
        assert!(
            DaemonLock::acquire(&s).expect("acquire").is_none(),
            "a second daemon"
        );
        drop(daemon);
        assert!(!DaemonLock::held(&s).expect("probe"));
    }

    #[test]
    fn ensure_creates_it_0750_once_and_keeps_an_existing_mode() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = StateDir::new(tmp.path().join("state"));
        s.ensure().expect("create");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(s.root()), MODE);
        assert_eq!(mode(&s.locks()), MODE);
        std::fs::set_permissions(s.root(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        s.ensure().expect("again");
        assert_eq!(
            mode(s.root()),
            0o700,
            "an existing directory keeps its mode"
        );

        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let err = StateDir::new(&file).ensure().expect_err("a file");
        assert_eq!(err.code(), "state_dir_unusable");
    }

    #[test]
    fn owner_check_passes_own_and_missing_directories() {
        let tmp = tempfile::tempdir().expect("tempdir");
        check_owner(tmp.path()).expect("ours");
        check_owner(&tmp.path().join("missing")).expect("missing passes");
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        assert!(!user_name(me).is_empty());
        assert_eq!(user_name(4_000_000_000), "4000000000", "unknown uid");
    }

    #[test]
    fn owner_check_names_another_owner() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // SAFETY: geteuid cannot fail.
        let foreign = if unsafe { libc::geteuid() } == 0 {
            // As root (CI): a directory given to `nobody`.
            let dir = tmp.path().join("theirs");
            std::fs::create_dir(&dir).expect("mkdir");
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
            dir
        } else {
            // As anyone else: `/` belongs to root.
            PathBuf::from("/")
        };
        let owner_uid = std::fs::metadata(&foreign).expect("stat").uid();
        match check_owner(&foreign) {
            Err(e @ StateError::ForeignOwner { .. }) => {
                assert_eq!(e.code(), "foreign_owner");
                let text = e.to_string();
                assert!(text.contains(&user_name(owner_uid)), "{text}");
                assert!(text.contains(&format!("uid {owner_uid}")), "{text}");
            }
            other => panic!("expected ForeignOwner, got {other:?}"),
        }
    }
}
