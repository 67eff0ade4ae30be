//! Integrity manifests: for every entry of a volume its kind, size, mode, mtime and, for
//! regular files, the BLAKE3 hash of the content (for symlinks, the target). `verify` compares
//! a volume with its manifest and reports files added, missing and changed; with `update` it
//! re-seals the volume after an intended change. BLAKE3 rather than SHA-256: several times
//! faster on a Pi's cores, and this is about detecting change, not signing.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::fsops::{self, walk_error, walk_volume};
use super::{Settings, VolumeError, VolumeName, store};

/// One entry of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    pub size: u64,
    /// Permission bits (e.g. 0o644).
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Hex BLAKE3 of the content (files), or the link target (symlinks).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content: String,
}

/// A sealed description of a volume's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub algorithm: String,
    /// RFC 3339, UTC.
    pub sealed_at: String,
    /// Paths relative to the volume, `/`-separated.
    pub entries: BTreeMap<String, Entry>,
}

/// One changed entry and what changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub path: String,
    /// `content`, `size`, `mode`, `mtime`, `kind`, `target` (comma-separated when several).
    pub what: String,
}

/// The outcome of a verify.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub volume: String,
    /// No manifest existed: one was built and written (nothing to compare yet).
    pub sealed: bool,
    /// The manifest was rewritten to match the volume (`--update`).
    pub updated: bool,
    pub entries: u64,
    pub added: Vec<String>,
    pub missing: Vec<String>,
    pub changed: Vec<Changed>,
}

impl VerifyReport {
    /// Whether the volume matched its manifest.
    pub fn clean(&self) -> bool {
        self.added.is_empty() && self.missing.is_empty() && self.changed.is_empty()
    }
}

/// Builds the manifest of the tree at `dir` (never following symlinks; lucid-db's own
/// short-lived files are left out).
pub fn build(dir: &Path) -> Result<Manifest, VolumeError> {
    let mut entries = BTreeMap::new();
    for item in walk_volume(dir) {
        let item = item.map_err(|e| walk_error(dir, e))?;
        let path = item.path();
        let rel = path
            .strip_prefix(dir)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = item.metadata().map_err(|e| walk_error(dir, e))?;
        let ft = item.file_type();
        let (kind, content) = if ft.is_dir() {
            ("dir", String::new())
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(path).map_err(|e| VolumeError::io("readlink", path, &e))?;
            ("symlink", target.to_string_lossy().into_owned())
        } else if ft.is_file() {
            ("file", hash_file(path)?)
        } else {
            continue;
        };
        entries.insert(
            rel,
            Entry {
                kind: kind.to_owned(),
                size: if ft.is_file() { meta.len() } else { 0 },
                mode: meta.permissions().mode() & 0o7777,
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                content,
            },
        );
    }
    Ok(Manifest {
        version: 1,
        algorithm: "blake3".to_owned(),
        sealed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        entries,
    })
}

fn hash_file(path: &Path) -> Result<String, VolumeError> {
    // Never through a symlink swapped in after the walk saw a file.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| VolumeError::io("open", path, &e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| VolumeError::io("read", path, &e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// What differs between a sealed manifest and the current one.
pub(crate) fn compare(volume: &str, sealed: &Manifest, now: &Manifest) -> VerifyReport {
    let mut report = VerifyReport {
        volume: volume.to_owned(),
        entries: now.entries.len() as u64,
        ..VerifyReport::default()
    };
    for (path, was) in &sealed.entries {
        let Some(is) = now.entries.get(path) else {
            report.missing.push(path.clone());
            continue;
        };
        let mut what = Vec::new();
        if was.kind != is.kind {
            what.push("kind");
        } else {
            if was.content != is.content {
                what.push(if is.kind == "symlink" {
                    "target"
                } else {
                    "content"
                });
            }
            if was.size != is.size {
                what.push("size");
            }
            if was.mode != is.mode {
                what.push("mode");
            }
            // A directory's mtime moves whenever an entry is added or removed, which is
            // reported on its own; a file's or link's is worth reporting.
            if was.mtime_ns != is.mtime_ns && is.kind != "dir" {
                what.push("mtime");
            }
        }
        if !what.is_empty() {
            report.changed.push(Changed {
                path: path.clone(),
                what: what.join(","),
            });
        }
    }
    report.added = now
        .entries
        .keys()
        .filter(|p| !sealed.entries.contains_key(*p))
        .cloned()
        .collect();
    report
}

/// Compares volume `name` with its manifest, building and sealing one when there is none;
/// `update` re-seals a volume that changed.
pub(super) fn verify(
    s: &Settings,
    name: &VolumeName,
    update: bool,
) -> Result<VerifyReport, VolumeError> {
    // Exclusive when it may write the manifest; shared otherwise (the data must not be
    // replaced or moved while it is read).
    let sealing = update || !store::manifest_path(&s.root, name).exists();
    let _lock = store::lock(s, name, "verify", sealing)?;
    let meta = store::fresh_meta(s, name)?;
    let dir = store::data_dir(&s.root, &meta);
    fsops::check_data_dir(&dir)?;
    let manifest_file = store::manifest_path(&s.root, name);
    let now = build(&dir)?;
    let seal = |m: &Manifest| -> Result<(), VolumeError> {
        let bytes = serde_json::to_vec(m).map_err(|e| VolumeError::Corrupt {
            what: format!("cannot encode the manifest of {name}: {e}"),
        })?;
        fsops::write_atomic(&manifest_file, &bytes, 0o640)
    };
    let sealed: Manifest = match std::fs::read(&manifest_file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| VolumeError::Corrupt {
            what: format!("{}: {e}", manifest_file.display()),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            seal(&now)?;
            return Ok(VerifyReport {
                volume: name.to_string(),
                sealed: true,
                entries: now.entries.len() as u64,
                ..VerifyReport::default()
            });
        }
        Err(e) => return Err(VolumeError::io("read", &manifest_file, &e)),
    };
    let mut report = compare(name.as_str(), &sealed, &now);
    if update && !report.clean() {
        seal(&now)?;
        report.updated = true;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_flipped_byte_a_deleted_file_and_an_added_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).expect("mkdir");
        std::fs::write(d.join("sub/data.bin"), vec![7u8; 4096]).expect("write");
        std::fs::write(d.join("keep.txt"), b"keep").expect("write");
        std::fs::write(d.join("gone.txt"), b"gone").expect("write");
        std::os::unix::fs::symlink("keep.txt", d.join("link")).expect("symlink");
        let sealed = build(d).expect("manifest");
        assert!(compare("v", &sealed, &build(d).expect("again")).clean());

        // Flip one byte in place, keeping size and mtime: only the hash can tell.
        let p = d.join("sub/data.bin");
        let mtime =
            filetime::FileTime::from_last_modification_time(&std::fs::metadata(&p).expect("meta"));
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[1000] ^= 0x01;
        std::fs::write(&p, bytes).expect("write");
        filetime::set_file_mtime(&p, mtime).expect("utimes");
        std::fs::remove_file(d.join("gone.txt")).expect("rm");
        std::fs::write(d.join("new.txt"), b"new").expect("write");

        let report = compare("v", &sealed, &build(d).expect("after"));
        assert_eq!(report.missing, ["gone.txt"]);
        assert_eq!(report.added, ["new.txt"]);
        assert_eq!(
            report.changed,
            [Changed {
                path: "sub/data.bin".into(),
                what: "content".into()
            }]
        );
        assert!(!report.clean());
    }
}
