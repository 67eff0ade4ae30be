//! Volumes as tar streams, for backups: export writes a volume into a tar stream sent in
//! chunks through a bounded channel (modes, mtimes and symlinks kept; symlinks stored as links,
//! never followed); import unpacks such a stream into a staging directory, which replaces the
//! volume's content only once it is complete. Modification times keep whole seconds, tar's
//! own resolution (as GNU tar's default format): sub-second parts are not carried. Both run on blocking threads; a channel that
//! makes no progress for the idle timeout ends them.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::VolumeError;
use super::fsops::walk_error;

/// Size of the chunks an export sends.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Writes the tree at `dir` as a tar stream into `tx`; answers the bytes sent.
pub(crate) fn export(
    dir: &Path,
    tx: mpsc::Sender<Result<Vec<u8>, VolumeError>>,
    idle: Duration,
    runtime: Handle,
) -> Result<u64, VolumeError> {
    let writer = ChannelWriter {
        tx,
        buf: Vec::with_capacity(CHUNK),
        sent: 0,
        idle,
        runtime,
    };
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    for entry in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
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

/// Unpacks a tar stream from `rx` into `dst` (which must exist); answers the bytes read. More
/// than `limit` bytes of stream is an error (the quota).
pub(crate) fn import(
    dst: &Path,
    rx: mpsc::Receiver<Vec<u8>>,
    limit: u64,
    idle: Duration,
    runtime: Handle,
) -> Result<u64, VolumeError> {
    let mut reader = ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
        read: 0,
        limit,
        idle,
        runtime,
    };
    let mut archive = tar::Archive::new(&mut reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    // Owners are not restored: the daemon runs without CAP_CHOWN (docs/systemd.md).
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // Directories get their mtimes last, deepest first: unpacking their entries changed them.
    let mut dirs = Vec::new();
    for entry in archive
        .entries()
        .map_err(|e| stream_error("untar", dst, e))?
    {
        let mut entry = entry.map_err(|e| stream_error("untar", dst, e))?;
        let is_dir = entry.header().entry_type().is_dir();
        let mtime = entry.header().mtime().ok();
        let path = entry
            .path()
            .map_err(|e| stream_error("untar", dst, e))?
            .into_owned();
        // `unpack_in` refuses entries that would land outside `dst` (absolute paths, `..`,
        // or through a link); they are skipped (false), never written.
        let unpacked = entry
            .unpack_in(dst)
            .map_err(|e| stream_error("untar", dst, e))?;
        if unpacked
            && is_dir
            && let Some(mtime) = mtime
        {
            dirs.push((dst.join(path), mtime));
        }
    }
    for (dir, mtime) in dirs.into_iter().rev() {
        let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
        filetime::set_file_mtime(&dir, t).map_err(|e| VolumeError::io("utimes", &dir, &e))?;
    }
    Ok(reader.read)
}

fn stream_error(op: &'static str, path: &Path, e: std::io::Error) -> VolumeError {
    // Our reader and writer report their own errors through io::Error; unwrap them.
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<VolumeError>())
    {
        Some(inner) => inner.clone(),
        None => VolumeError::io(op, path, &e),
    }
}

struct ChannelWriter {
    tx: mpsc::Sender<Result<Vec<u8>, VolumeError>>,
    buf: Vec<u8>,
    sent: u64,
    idle: Duration,
    runtime: Handle,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let len = chunk.len() as u64;
        let tx = self.tx.clone();
        let sent = self
            .runtime
            .block_on(async { tokio::time::timeout(self.idle, tx.send(Ok(chunk))).await });
        match sent {
            Ok(Ok(())) => {
                self.sent += len;
                Ok(())
            }
            Ok(Err(_)) => Err(std::io::Error::other(VolumeError::Interrupted {
                what: "the export's reader went away".to_owned(),
            })),
            Err(_) => Err(std::io::Error::other(VolumeError::StreamIdle {
                what: "export consumer stopped reading",
                after: self.idle,
            })),
        }
    }
}

impl Write for ChannelWriter {
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
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    read: u64,
    limit: u64,
    idle: Duration,
    runtime: Handle,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(self.idle, self.rx.recv()).await });
            match next {
                Ok(Some(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(None) => return Ok(0),
                Err(_) => {
                    return Err(std::io::Error::other(VolumeError::StreamIdle {
                        what: "import source sent nothing",
                        after: self.idle,
                    }));
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(std::io::Error::other(VolumeError::Invalid {
                field: "import",
                reason: format!(
                    "the stream is larger than the volume's quota ({} bytes)",
                    self.limit
                ),
            }));
        }
        Ok(n)
    }
}
