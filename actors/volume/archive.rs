//! Volumes as tar streams, for backups: export writes a volume into a tar stream sent in
//! chunks through a bounded channel (modes, mtimes and symlinks kept; symlinks stored as links,
//! never followed); import unpacks such a stream into a staging directory, which replaces the
//! volume's content only once it is complete. Modification times keep whole seconds, tar's own
//! resolution (as GNU tar's default format): sub-second parts are not carried.
//!
//! An export is a [`Feed`] like every store's: its producer, the tar writer on a blocking
//! thread, hands chunks over with [`Feeder::send_blocking`]. An import's source is any stream
//! of chunks; the volume actor forwards it into a bounded channel that the tar reader, on a
//! blocking thread, drains. A source that fails says so with an `Err` item (the import fails
//! with `import_source_failed`); a stream that just stops without tar's end-of-archive block is
//! truncated, and refused as such. Both blocking sides wait with their own clock (not the
//! runtime's timers, which stop when the runtime does), up to the idle timeout.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use super::VolumeError;
use super::fsops::{walk_error, walk_volume};
use crate::supervisor::feed::{Feeder, Stopped, poll_until};

/// Size of the chunks an export sends.
pub(crate) const CHUNK: usize = 64 * 1024;
/// Chunks an export buffers ahead of its reader: 1 MiB. Not a config key: the buffer only
/// keeps the tar writer busy while the reader (a backup's compressor) takes a chunk, and a
/// larger one buys no throughput, only memory.
pub(crate) const EXPORT_BUFFER: usize = 16;
/// Tar blocks are 512 bytes; an archive ends with zero blocks.
const BLOCK: usize = 512;

/// An import's chunks as the actor forwards them from its source (errors as text).
pub(crate) type Chunks = mpsc::Receiver<Result<Vec<u8>, String>>;

/// Writes the tree at `dir` as a tar stream into `feeder`; answers the bytes sent.
pub(crate) fn export(
    dir: &Path,
    feeder: &Feeder<Vec<u8>, VolumeError>,
) -> Result<u64, VolumeError> {
    let writer = ChannelWriter {
        feeder,
        buf: Vec::with_capacity(CHUNK),
        sent: 0,
    };
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    for entry in walk_volume(dir) {
        let entry = entry.map_err(|e| walk_error(dir, e))?;
        let ft = entry.file_type();
        // Sockets, FIFOs and devices are not data.
        if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        builder
            .append_path_with_name(entry.path(), rel)
            .map_err(|e| stream_error("tar", entry.path(), e))?;
    }
    let mut writer = builder
        .into_inner()
        .map_err(|e| stream_error("tar", dir, e))?;
    writer.flush().map_err(|e| stream_error("send", dir, e))?;
    Ok(writer.sent)
}

/// What unpacking a tar stream did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Unpacked {
    pub stream_bytes: u64,
    /// Entries read from the stream.
    pub entries: u64,
    /// Entries unpacked.
    pub unpacked: u64,
    /// Entries whose path would leave the volume: not unpacked.
    pub unsafe_paths: u64,
}

/// Unpacks a tar stream from `rx` into `dst` (which must exist). More than `limit` bytes of
/// stream exceeds `volume`'s quota. A source that failed is reported with the entries
/// unpacked before it.
pub(crate) fn import(
    dst: &Path,
    rx: Chunks,
    volume: &str,
    limit: u64,
    idle: Duration,
) -> Result<Unpacked, VolumeError> {
    let mut done = Unpacked::default();
    unpack(dst, rx, volume, limit, idle, &mut done).map_err(|e| match e {
        VolumeError::ImportSource { reason, .. } => VolumeError::ImportSource {
            written: done.unpacked,
            reason,
        },
        e => e,
    })?;
    Ok(done)
}

fn unpack(
    dst: &Path,
    rx: Chunks,
    volume: &str,
    limit: u64,
    idle: Duration,
    done: &mut Unpacked,
) -> Result<(), VolumeError> {
    let mut reader = ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
        read: 0,
        tail: Vec::with_capacity(BLOCK),
        volume: volume.to_owned(),
        limit,
        idle,
    };
    let mut archive = tar::Archive::new(&mut reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    // Owners are not restored: the daemon runs without CAP_CHOWN (docs/systemd.md).
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // Directories: owner-writable while their entries are unpacked (a 0555 directory in the
    // archive must still be filled), their own mode and mtime set last, deepest first.
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    for entry in archive
        .entries()
        .map_err(|e| stream_error("untar", dst, e))?
    {
        let mut entry = entry.map_err(|e| stream_error("untar", dst, e))?;
        let header = entry.header();
        let is_dir = header.entry_type().is_dir();
        let (mode, mtime) = (header.mode().unwrap_or(0o755), header.mtime().unwrap_or(0));
        let path = entry
            .path()
            .map_err(|e| stream_error("untar", dst, e))?
            .into_owned();
        done.entries += 1;
        // `unpack_in` strips a leading `/`, skips `..` (false) and refuses to write through a
        // link; where it put the entry is `dst` + the plain components of its name.
        if !entry
            .unpack_in(dst)
            .map_err(|e| stream_error("untar", dst, e))?
        {
            done.unsafe_paths += 1;
            continue;
        }
        done.unpacked += 1;
        if is_dir {
            let inside: PathBuf = path
                .components()
                .filter_map(|c| match c {
                    Component::Normal(part) => Some(part),
                    _ => None,
                })
                .collect();
            let full = dst.join(inside);
            std::fs::set_permissions(&full, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| VolumeError::io("chmod", &full, &e))?;
            dirs.push((full, mode & 0o7777, mtime));
        }
    }
    if !reader.ended_properly() {
        return Err(VolumeError::Interrupted {
            what: "the tar stream ended before its end-of-archive block (truncated)".to_owned(),
        });
    }
    // The source is read to its end (padding after tar's end, if any), so one that fails
    // after the archive fails the import all the same.
    let mut rest = [0u8; BLOCK];
    while reader
        .read(&mut rest)
        .map_err(|e| stream_error("untar", dst, e))?
        > 0
    {}
    for (dir, mode, mtime) in dirs.into_iter().rev() {
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| VolumeError::io("chmod", &dir, &e))?;
        let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
        filetime::set_file_mtime(&dir, t).map_err(|e| VolumeError::io("utimes", &dir, &e))?;
    }
    done.stream_bytes = reader.read;
    Ok(())
}

fn stream_error(op: &'static str, path: &Path, e: std::io::Error) -> VolumeError {
    // Our reader and writer report their own errors through io::Error, which tar may wrap in
    // its own error: find ours in the chain.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|inner| inner as _);
    while let Some(err) = cur {
        if let Some(ours) = err.downcast_ref::<VolumeError>() {
            return ours.clone();
        }
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => err.source(),
        };
    }
    VolumeError::io(op, path, &e)
}

struct ChannelWriter<'a> {
    feeder: &'a Feeder<Vec<u8>, VolumeError>,
    buf: Vec<u8>,
    sent: u64,
}

impl ChannelWriter<'_> {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let len = chunk.len() as u64;
        match self.feeder.send_blocking(chunk) {
            Ok(()) => {
                self.sent += len;
                Ok(())
            }
            Err(Stopped::Gone) => Err(std::io::Error::other(VolumeError::Interrupted {
                what: "the export's reader went away".to_owned(),
            })),
            Err(Stopped::Idle(after)) => Err(std::io::Error::other(VolumeError::StreamIdle {
                what: "export consumer stopped reading",
                after,
            })),
        }
    }
}

impl Write for ChannelWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

struct ChannelReader {
    rx: Chunks,
    chunk: Vec<u8>,
    pos: usize,
    read: u64,
    /// The last bytes read (up to a block): tar's end is a zero block.
    tail: Vec<u8>,
    volume: String,
    limit: u64,
    idle: Duration,
}

impl ChannelReader {
    /// Whether the stream ended with tar's end-of-archive (zero) block.
    fn ended_properly(&self) -> bool {
        self.tail.len() == BLOCK && self.tail.iter().all(|b| *b == 0)
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            let next = poll_until(self.idle, || match self.rx.try_recv() {
                Ok(item) => Some(Some(item)),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(None),
            });
            match next {
                Some(Some(Ok(chunk))) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                // The count written is filled in by `import`, which knows it.
                Some(Some(Err(reason))) => {
                    return Err(std::io::Error::other(VolumeError::ImportSource {
                        written: 0,
                        reason,
                    }));
                }
                Some(None) => return Ok(0),
                None => {
                    return Err(std::io::Error::other(VolumeError::StreamIdle {
                        what: "import source sent nothing",
                        after: self.idle,
                    }));
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        let bytes = &self.chunk[self.pos..self.pos + n];
        out[..n].copy_from_slice(bytes);
        if n >= BLOCK {
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[n - BLOCK..]);
        } else {
            self.tail.extend_from_slice(bytes);
            let excess = self.tail.len().saturating_sub(BLOCK);
            self.tail.drain(..excess);
        }
        self.pos += n;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(std::io::Error::other(VolumeError::OverQuota {
                volume: self.volume.clone(),
                used: 0,
                quota: self.limit,
                needed: self.read,
            }));
        }
        Ok(n)
    }
}
