//! Filesystem work for the volume actor, all of it blocking (run with `spawn_blocking`):
//! names and paths that cannot escape a volume, atomic and durable writes, statvfs, usage
//! walks, the cross-process lock, and copying a tree with its modes, mtimes and symlinks.
//! The system calls std lacks (statvfs, syncfs, flock) go through `rustix`: no `unsafe` here.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::FlockOperation;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::VolumeError;

/// Names lucid-db gives its own short-lived files (atomic writes, health probes). Walks for
/// verify and export skip them; cleanup removes old ones.
pub(crate) const TRANSIENT_PREFIX: &str = ".lucid-tmp-";

pub(crate) fn is_transient(name: &std::ffi::OsStr) -> bool {
    name.as_bytes().starts_with(TRANSIENT_PREFIX.as_bytes())
}

/// Writes `bytes` to `path` atomically and durably: a temporary file beside it, fsync, rename,
/// fsync of the directory. A crash leaves the old file or the new one, never half of either.
/// The new file gets `mode`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), VolumeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Short, so a long file name cannot make the temporary one exceed NAME_MAX.
    let tmp = dir.join(format!("{TRANSIENT_PREFIX}{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        VolumeError::io("write", path, &e)
    })
}

/// The data directory itself must be a real directory: a volume whose directory was replaced
/// by a symlink would lead every operation elsewhere.
pub(crate) fn check_data_dir(dir: &Path) -> Result<(), VolumeError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(VolumeError::PathEscape {
            path: dir.display().to_string(),
            reason: "the volume's directory is a symlink".to_owned(),
        }),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(VolumeError::PathEscape {
            path: dir.display().to_string(),
            reason: "the volume's directory is not a directory".to_owned(),
        }),
        Err(e) => Err(VolumeError::io("stat", dir, &e)),
    }
}

/// `rel` joined onto `base` (which [`check_data_dir`] accepted), creating missing parent
/// directories; refused when it could leave `base`: absolute paths, `..`, `.`, NUL, and any
/// existing component that is a symlink (a link planted inside a volume must not lead out).
pub(crate) fn safe_join(base: &Path, rel: &str) -> Result<PathBuf, VolumeError> {
    let escape = |reason: &str| VolumeError::PathEscape {
        path: rel.to_owned(),
        reason: reason.to_owned(),
    };
    if rel.is_empty() {
        return Err(escape("empty path"));
    }
    if rel.contains('\0') {
        return Err(escape("contains NUL"));
    }
    let components: Vec<Component> = Path::new(rel).components().collect();
    let mut out = base.to_path_buf();
    for (i, c) in components.iter().enumerate() {
        let Component::Normal(part) = c else {
            return Err(escape(
                "only plain names, no '/', '..' or '.' at the start or between",
            ));
        };
        out.push(part);
        let last = i + 1 == components.len();
        match fs::symlink_metadata(&out) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(escape("goes through a symlink"));
            }
            Ok(meta) if !last && !meta.is_dir() => {
                return Err(escape("a parent is not a directory"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !last {
                    fs::create_dir(&out).map_err(|e| VolumeError::io("mkdir", &out, &e))?;
                }
            }
            Err(e) => return Err(VolumeError::io("stat", &out, &e)),
        }
    }
    Ok(out)
}

/// What statvfs says about the filesystem holding `path`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStats {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub read_only: bool,
}

/// Why a filesystem cannot take the daemon's writes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsProblem {
    ReadOnly,
    /// Fewer bytes available to the daemon than `volumes.min_free`.
    Full {
        free_bytes: u64,
        min_free: u64,
    },
    NoInodes,
}

impl fmt::Display for FsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsProblem::ReadOnly => f.write_str("the filesystem is mounted read-only"),
            FsProblem::Full {
                free_bytes,
                min_free,
            } => write!(
                f,
                "the filesystem is full: {free_bytes} bytes free, below volumes.min_free \
                 ({min_free} bytes)"
            ),
            FsProblem::NoInodes => f.write_str("no free inodes"),
        }
    }
}

impl FsStats {
    /// What keeps this filesystem from taking writes: mounted read-only, fewer than
    /// `min_free` bytes available to the daemon (or none at all), no inode left. Empty when
    /// it can take them.
    pub(crate) fn problems(&self, min_free: u64) -> Vec<FsProblem> {
        let mut problems = Vec::new();
        if self.read_only {
            problems.push(FsProblem::ReadOnly);
        }
        if self.free_bytes < min_free.max(1) {
            problems.push(FsProblem::Full {
                free_bytes: self.free_bytes,
                min_free,
            });
        }
        // A filesystem without fixed inodes (btrfs) reports none at all: not a problem.
        if self.free_inodes == 0 && self.total_inodes > 0 {
            problems.push(FsProblem::NoInodes);
        }
        problems
    }
}

pub(crate) fn statvfs(path: &Path) -> Result<FsStats, VolumeError> {
    let st = rustix::fs::statvfs(path)
        .map_err(|e| VolumeError::io("statvfs", path, &std::io::Error::from(e)))?;
    Ok(FsStats {
        total_bytes: st.f_blocks * st.f_frsize,
        // f_bavail: what an unprivileged writer (the daemon) can still use.
        free_bytes: st.f_bavail * st.f_frsize,
        total_inodes: st.f_files,
        free_inodes: st.f_favail,
        read_only: st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
    })
}

/// Flushes everything written to the filesystem holding `dir` (syncfs): what is renamed into
/// place next is on the disk, not only in the page cache.
pub(crate) fn sync_filesystem(dir: &Path) -> Result<(), VolumeError> {
    let f = File::open(dir).map_err(|e| VolumeError::io("open", dir, &e))?;
    rustix::fs::syncfs(&f).map_err(|e| VolumeError::io("syncfs", dir, &e.into()))
}

/// fsync of a directory: makes renames and removals inside it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), VolumeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| VolumeError::io("fsync", dir, &e))
}

/// Bytes and entries under a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Space allocated on disk (what `du` counts, hard links once; what quotas are about).
    pub bytes: u64,
    /// Sum of file lengths.
    pub apparent_bytes: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
}

/// Walks `dir` (never following symlinks) and counts.
pub(crate) fn tally(dir: &Path) -> Result<Tally, VolumeError> {
    let mut t = Tally::default();
    let mut linked = HashSet::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        // A file removed or renamed between the directory read and its stat (an atomic
        // write's temporary file, a database's scratch file) is not there to count: a live
        // volume must not make its own measurement fail.
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(walk_error(dir, e)),
        };
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(walk_error(dir, e)),
        };
        if meta.nlink() > 1 && !meta.is_dir() && !linked.insert((meta.dev(), meta.ino())) {
            continue;
        }
        t.bytes += meta.blocks() * 512;
        let ft = entry.file_type();
        if ft.is_dir() {
            t.dirs += 1;
        } else if ft.is_symlink() {
            t.symlinks += 1;
        } else {
            t.files += 1;
            t.apparent_bytes += meta.len();
        }
    }
    Ok(t)
}

/// A volume's tree, for verify and export: sorted by name (stable manifests and archives),
/// never following symlinks, without lucid-db's own short-lived files.
pub(crate) fn walk_volume(dir: &Path) -> impl Iterator<Item = walkdir::Result<walkdir::DirEntry>> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !is_transient(e.file_name()))
}

fn vanished(e: &walkdir::Error) -> bool {
    e.io_error()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
}

pub(crate) fn walk_error(dir: &Path, e: walkdir::Error) -> VolumeError {
    let path = e
        .path()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.to_path_buf());
    let io = e
        .into_io_error()
        .unwrap_or_else(|| std::io::Error::other("filesystem loop"));
    VolumeError::io("walk", &path, &io)
}

/// Whether `dir` holds nothing (a missing directory counts as empty).
pub(crate) fn is_empty_dir(dir: &Path) -> Result<bool, VolumeError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(VolumeError::io("read_dir", dir, &e)),
    }
}

/// A lock on a volume's lock file, held until dropped (flock, so the CLI and the daemon see
/// each other's): exclusive for operations that replace or move data (delete, import, migrate,
/// resize, verify --update), shared for those that only read or add to it (export, writes).
pub(crate) struct LockFile {
    _file: File,
}

pub(crate) fn lock(
    path: &Path,
    volume: &str,
    operation: &'static str,
    exclusive: bool,
) -> Result<LockFile, VolumeError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| VolumeError::io("open lock", path, &e))?;
    let how = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    match rustix::fs::flock(&file, how) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => {
            return Err(VolumeError::Busy {
                volume: volume.to_owned(),
                operation,
            });
        }
        Err(e) => return Err(VolumeError::io("flock", path, &e.into())),
    }
    Ok(LockFile { _file: file })
}

/// How a tree copy copies file contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    /// A reflink (FICLONE): the copy shares the original's blocks until either is written,
    /// so it takes no space and no time to speak of. btrfs, XFS with reflink.
    Reflink,
    /// The bytes are read and written again: the copy takes as much space as the original.
    Copy,
}

/// What a tree copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Copied {
    /// Bytes of file content copied or cloned.
    pub bytes: u64,
    pub files: u64,
    /// Files cloned (the rest were copied: a clone refused, e.g. across a mount point).
    pub cloned: u64,
}

/// Copies the tree at `src` into `dst` (which must not exist; it is created): regular files,
/// directories and symlinks (as links, never followed), with their modes and mtimes, then
/// flushes the filesystem. Other file types and lucid-db's own transient files are skipped.
/// Owners are not copied (the daemon has no CAP_CHOWN).
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<u64, VolumeError> {
    Ok(copy_tree_as(src, dst, CopyMethod::Copy)?.bytes)
}

/// As [`copy_tree`], cloning each file where `method` is [`CopyMethod::Reflink`] (a file
/// whose clone is refused is copied instead, and counted so).
pub(crate) fn copy_tree_as(
    src: &Path,
    dst: &Path,
    method: CopyMethod,
) -> Result<Copied, VolumeError> {
    fs::create_dir(dst).map_err(|e| VolumeError::io("mkdir", dst, &e))?;
    let mut dirs = Vec::new();
    let mut copied = Copied::default();
    for entry in walkdir::WalkDir::new(src)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !is_transient(e.file_name()))
    {
        let entry = entry.map_err(|e| walk_error(src, e))?;
        let rel = entry
            .path()
            .strip_prefix(src)
            .map_err(|_| VolumeError::PathEscape {
                path: entry.path().display().to_string(),
                reason: "outside the source".to_owned(),
            })?;
        let to = dst.join(rel);
        let meta = entry.metadata().map_err(|e| walk_error(src, e))?;
        let ft = entry.file_type();
        let mtime = filetime::FileTime::from_last_modification_time(&meta);
        if ft.is_dir() {
            // Owner-writable until the end, so a read-only directory can still be filled.
            fs::create_dir(&to).map_err(|e| VolumeError::io("mkdir", &to, &e))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o700))
                .map_err(|e| VolumeError::io("chmod", &to, &e))?;
            dirs.push((to, meta.permissions(), mtime));
        } else if ft.is_symlink() {
            let target = fs::read_link(entry.path())
                .map_err(|e| VolumeError::io("readlink", entry.path(), &e))?;
            std::os::unix::fs::symlink(&target, &to)
                .map_err(|e| VolumeError::io("symlink", &to, &e))?;
            let _ = filetime::set_symlink_file_times(&to, mtime, mtime);
        } else if ft.is_file() {
            let (bytes, cloned) = copy_file(entry.path(), &to, method)?;
            copied.bytes += bytes;
            copied.files += 1;
            copied.cloned += u64::from(cloned);
            fs::set_permissions(&to, meta.permissions())
                .map_err(|e| VolumeError::io("chmod", &to, &e))?;
            filetime::set_file_mtime(&to, mtime).map_err(|e| VolumeError::io("utimes", &to, &e))?;
        }
    }
    // Directories last, deepest first: filling them changed their mtimes.
    for (dir, perms, mtime) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, perms).map_err(|e| VolumeError::io("chmod", &dir, &e))?;
        filetime::set_file_mtime(&dir, mtime).map_err(|e| VolumeError::io("utimes", &dir, &e))?;
    }
    sync_filesystem(dst)?;
    Ok(copied)
}

/// Copies one file without following a symlink swapped in for it; with
/// [`CopyMethod::Reflink`] it clones it, falling back to a copy when the clone is refused.
/// Answers the bytes and whether it was cloned.
fn copy_file(from: &Path, to: &Path, method: CopyMethod) -> Result<(u64, bool), VolumeError> {
    let mut src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)
        .map_err(|e| VolumeError::io("open", from, &e))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(to)
        .map_err(|e| VolumeError::io("create", to, &e))?;
    if method == CopyMethod::Reflink && rustix::fs::ioctl_ficlone(&dst, &src).is_ok() {
        let len = dst
            .metadata()
            .map_err(|e| VolumeError::io("stat", to, &e))?
            .len();
        return Ok((len, true));
    }
    let n = std::io::copy(&mut src, &mut dst).map_err(|e| VolumeError::io("copy", to, &e))?;
    Ok((n, false))
}

/// Whether `sample` can be cloned into the directory `into` (the same filesystem, and one
/// that supports reflinks): a clone into a transient file there, removed again.
pub(crate) fn can_reflink(sample: &Path, into: &Path) -> bool {
    let probe = into.join(format!(
        "{TRANSIENT_PREFIX}clone-{:016x}",
        rand::random::<u64>()
    ));
    let cloned = (|| {
        let src = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(sample)
            .ok()?;
        let dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe)
            .ok()?;
        rustix::fs::ioctl_ficlone(&dst, &src).ok()
    })()
    .is_some();
    let _ = fs::remove_file(&probe);
    cloned
}

/// File-name glob for cleanup patterns.
pub(crate) fn name_matches(pattern: &str, name: &str) -> bool {
    crate::glob::glob_match(pattern, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_survives_files_that_vanish_while_it_walks() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..200 {
            fs::write(dir.path().join(format!("keep-{i}")), b"x").expect("write");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let (stop, root) = (stop.clone(), dir.path().to_path_buf());
            // An atomic writer's pattern: create a temporary file, rename it over another.
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let tmp = root.join(format!("tmp-{}", n % 50));
                    let _ = fs::write(&tmp, b"y");
                    let _ = fs::rename(&tmp, root.join("target"));
                    n += 1;
                }
            })
        };
        let walks: Vec<Result<Tally, VolumeError>> = (0..300).map(|_| tally(dir.path())).collect();
        stop.store(true, Ordering::Relaxed);
        churn.join().expect("churn");
        for t in walks {
            let t = t.expect("a vanished file is not an error");
            assert!(t.files >= 200, "{t:?}");
        }
    }

    #[test]
    fn safe_join_refuses_every_way_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("vol");
        fs::create_dir(&base).expect("mkdir");
        std::os::unix::fs::symlink("/etc", base.join("link")).expect("symlink");
        fs::write(base.join("file"), b"x").expect("write");
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "./x",
            "link/passwd",
            "link",
            "file/x",
            "a\0b",
        ] {
            assert!(
                matches!(safe_join(&base, bad), Err(VolumeError::PathEscape { .. })),
                "{bad:?}"
            );
        }
        let ok = safe_join(&base, "a/b/c.txt").expect("plain path");
        assert_eq!(ok, base.join("a/b/c.txt"));
        assert!(base.join("a/b").is_dir());
    }

    #[test]
    fn a_symlinked_volume_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/tmp", dir.path().join("vol")).expect("symlink");
        assert!(matches!(
            check_data_dir(&dir.path().join("vol")),
            Err(VolumeError::PathEscape { .. })
        ));
        fs::create_dir(dir.path().join("real")).expect("mkdir");
        check_data_dir(&dir.path().join("real")).expect("a real directory");
    }

    #[test]
    fn atomic_write_replaces_whole_with_its_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("meta.json");
        write_atomic(&p, b"one", 0o640).expect("write");
        write_atomic(&p, b"two", 0o600).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(
            fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != "meta.json")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn statvfs_and_tally_count_hard_links_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a"), vec![0u8; 10_000]).expect("write");
        fs::hard_link(dir.path().join("a"), dir.path().join("a2")).expect("link");
        fs::create_dir(dir.path().join("d")).expect("mkdir");
        std::os::unix::fs::symlink("a", dir.path().join("l")).expect("symlink");
        let t = tally(dir.path()).expect("tally");
        assert_eq!(
            (t.files, t.dirs, t.symlinks, t.apparent_bytes),
            (1, 1, 1, 10_000)
        );
        assert!(t.bytes >= 8192, "{t:?}");
        let fs_stats = statvfs(dir.path()).expect("statvfs");
        assert!(fs_stats.total_bytes > 0 && fs_stats.free_bytes <= fs_stats.total_bytes);
    }

    #[test]
    fn an_exclusive_lock_excludes_and_shared_ones_share() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".v.lock");
        let held = lock(&p, "v", "migrate", true).expect("first");
        assert!(matches!(
            lock(&p, "v", "import", true),
            Err(VolumeError::Busy { .. })
        ));
        assert!(matches!(
            lock(&p, "v", "write", false),
            Err(VolumeError::Busy { .. })
        ));
        drop(held);
        let reader = lock(&p, "v", "export", false).expect("shared");
        let _writer = lock(&p, "v", "write", false).expect("shared too");
        assert!(matches!(
            lock(&p, "v", "migrate", true),
            Err(VolumeError::Busy { .. })
        ));
        drop(reader);
    }
}
