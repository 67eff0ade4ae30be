//! Filesystem work for the volume actor, all of it blocking (run with `spawn_blocking`):
//! names and paths that cannot escape a volume, atomic writes, statvfs, usage walks, the
//! cross-process lock, and copying a tree with its modes, mtimes and symlinks.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::VolumeError;

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory. A crash leaves the old file or the new one, never half of either.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VolumeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".lucid-tmp-{name}-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        VolumeError::io("write", path, &e)
    })
}

/// `rel` joined onto `base`, refused when it could leave `base`: absolute paths, `..`, `.`,
/// NUL, and any existing component that is a symlink (a link planted inside a volume must
/// not lead out of it). Missing directories are created when `create_dirs` is set.
pub(crate) fn safe_join(base: &Path, rel: &str, create_dirs: bool) -> Result<PathBuf, VolumeError> {
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
    let rel_path = Path::new(rel);
    let mut out = base.to_path_buf();
    let components: Vec<Component> = rel_path.components().collect();
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
                    if !create_dirs {
                        return Ok(out.join(components[i + 1..].iter().collect::<PathBuf>()));
                    }
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

// statvfs's fields are 32-bit on 32-bit ARM (Raspberry Pi OS) and 64-bit here: the
// conversions are needed there and look useless here.
#[allow(clippy::useless_conversion)]
pub(crate) fn statvfs(path: &Path) -> Result<FsStats, VolumeError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| VolumeError::PathEscape {
        path: path.display().to_string(),
        reason: "contains NUL".to_owned(),
    })?;
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is a valid C string.
    let (rc, st) = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st), st)
    };
    if rc != 0 {
        return Err(VolumeError::io(
            "statvfs",
            path,
            &std::io::Error::last_os_error(),
        ));
    }
    let frsize = u64::from(st.f_frsize);
    Ok(FsStats {
        total_bytes: u64::from(st.f_blocks) * frsize,
        // f_bavail: what an unprivileged writer (the daemon) can still use.
        free_bytes: u64::from(st.f_bavail) * frsize,
        total_inodes: u64::from(st.f_files),
        free_inodes: u64::from(st.f_favail),
        read_only: st.f_flag & libc::ST_RDONLY != 0,
    })
}

/// Bytes and entries under a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Space allocated on disk (what `du` counts, and what the quota is about).
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
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| walk_error(dir, e))?;
        let meta = entry.metadata().map_err(|e| walk_error(dir, e))?;
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

/// An exclusive lock on `path` held until dropped (flock): the CLI and the daemon never run
/// two exclusive operations on one volume at once.
pub(crate) struct LockFile {
    _file: File,
}

pub(crate) fn lock(
    path: &Path,
    volume: &str,
    operation: &'static str,
) -> Result<LockFile, VolumeError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| VolumeError::io("open lock", path, &e))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        return Err(VolumeError::Busy {
            volume: volume.to_owned(),
            operation,
        });
    }
    Ok(LockFile { _file: file })
}

/// Copies the tree at `src` into `dst` (created): regular files, directories and symlinks
/// (as links, never followed), with their modes and mtimes. Other file types are skipped.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<u64, VolumeError> {
    fs::create_dir_all(dst).map_err(|e| VolumeError::io("mkdir", dst, &e))?;
    let mut dirs = Vec::new();
    let mut copied = 0u64;
    for entry in walkdir::WalkDir::new(src).min_depth(1).follow_links(false) {
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
        if ft.is_dir() {
            fs::create_dir(&to).map_err(|e| VolumeError::io("mkdir", &to, &e))?;
            dirs.push((to, meta));
        } else if ft.is_symlink() {
            let target = fs::read_link(entry.path())
                .map_err(|e| VolumeError::io("readlink", entry.path(), &e))?;
            std::os::unix::fs::symlink(&target, &to)
                .map_err(|e| VolumeError::io("symlink", &to, &e))?;
            let mtime = filetime::FileTime::from_last_modification_time(&meta);
            let _ = filetime::set_symlink_file_times(&to, mtime, mtime);
        } else if ft.is_file() {
            copied += fs::copy(entry.path(), &to).map_err(|e| VolumeError::io("copy", &to, &e))?;
            fs::set_permissions(&to, meta.permissions())
                .map_err(|e| VolumeError::io("chmod", &to, &e))?;
            let mtime = filetime::FileTime::from_last_modification_time(&meta);
            filetime::set_file_mtime(&to, mtime).map_err(|e| VolumeError::io("utimes", &to, &e))?;
        }
    }
    // Directories last, deepest first: filling them changed their mtimes.
    for (dir, meta) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, meta.permissions())
            .map_err(|e| VolumeError::io("chmod", &dir, &e))?;
        let mtime = filetime::FileTime::from_last_modification_time(&meta);
        filetime::set_file_mtime(&dir, mtime).map_err(|e| VolumeError::io("utimes", &dir, &e))?;
    }
    File::open(dst)
        .and_then(|d| d.sync_all())
        .map_err(|e| VolumeError::io("fsync", dst, &e))?;
    Ok(copied)
}

/// Redis-style glob on a file name (`*`, `?`).
pub(crate) fn name_matches(pattern: &str, name: &str) -> bool {
    crate::redis::keys::glob_match(pattern, name)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                matches!(
                    safe_join(&base, bad, true),
                    Err(VolumeError::PathEscape { .. })
                ),
                "{bad:?}"
            );
        }
        let ok = safe_join(&base, "a/b/c.txt", true).expect("plain path");
        assert_eq!(ok, base.join("a/b/c.txt"));
        assert!(base.join("a/b").is_dir());
    }

    #[test]
    fn atomic_write_replaces_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("meta.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != "meta.json")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn statvfs_and_tally() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a"), vec![0u8; 10_000]).expect("write");
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
    fn a_held_lock_is_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".v.lock");
        let held = lock(&p, "v", "migrate").expect("first");
        assert!(matches!(
            lock(&p, "v", "import"),
            Err(VolumeError::Busy { .. })
        ));
        drop(held);
        lock(&p, "v", "import").expect("free again");
    }
}
