//! Volumes as tar streams, for backups: export writes a volume into a tar stream sent in
//! chunks through a bounded channel (modes, mtimes and symlinks kept; symlinks stored as links,
//! never followed); import unpacks such a stream into a staging directory, which replaces the
//! volume's content only once it is complete. Modification times keep whole seconds, tar's own
//! resolution (as GNU tar's default format): sub-second parts are not carried.
//!
//! An export is a [`Feed`](crate::supervisor::feed::Feed) like every store's: its producer,
//! the tar writer on a blocking thread, hands chunks over with [`Feeder::send_blocking`]. An
//! import's source is any stream of chunks; the volume actor forwards it into a bounded
//! channel that the tar reader, on a blocking thread, drains. A source that fails says so with
//! an `Err` item (the import fails with `import_source_failed`); a stream that just stops
//! without tar's end-of-archive block is truncated, and refused as such. Both blocking sides
//! wait with their own clock (not the runtime's timers, which stop when the runtime does), up
//! to the idle timeout, parked until the channel wakes them (`block_until`): no sleeping
//! between polls. (Not tokio-util's `SyncIoBridge`: its reads run through the runtime's
//! handle, so an idle timeout inside them would be a runtime timer, and polling one after the
//! runtime shut down under a stream panics — an abort in the release build.)

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::VolumeError;
use super::fsops::{walk_error, walk_volume};
use crate::supervisor::feed::{Feeder, Stopped, block_until};

/// Size of the chunks an export sends.
pub(crate) const CHUNK: usize = 64 * 1024;
/// Chunks an export buffers ahead of its reader: 1 MiB. Not a config key: the buffer only
/// keeps the tar writer busy while the reader (a backup's compressor) takes a chunk, and a
/// larger one buys no throughput, only memory.
pub(crate) const EXPORT_BUFFER: usize = 16;
/// Chunks of an import's source the actor forwards ahead of the tar reader; fixed for the same
/// reason.
pub(crate) const IMPORT_BUFFER: usize = 16;
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
        source_ended: false,
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
    let unpacked = unpack_entries(&mut archive, dst, done, &mut dirs);
    let truncated = || VolumeError::Interrupted {
        what: "the tar stream ended before its end-of-archive block (truncated)".to_owned(),
    };
    match unpacked {
        // Cut off inside an entry: tar only sees a file shorter than its header says.
        Err(_) if reader.source_ended && !reader.ended_properly() => return Err(truncated()),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    if !reader.ended_properly() {
        return Err(truncated());
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

/// Unpacks every entry of `archive` into `dst`, counting in `done`; directories go into
/// `dirs`, for their own mode and mtime once everything is in.
fn unpack_entries(
    archive: &mut tar::Archive<&mut ChannelReader>,
    dst: &Path,
    done: &mut Unpacked,
    dirs: &mut Vec<(PathBuf, u32, u64)>,
) -> Result<(), VolumeError> {
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
    /// The source has ended (without an error).
    source_ended: bool,
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
            // Parked until the actor forwards a chunk or the source ends, at most the idle
            // timeout.
            match block_until(self.idle, self.rx.recv()) {
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
                Some(None) => {
                    self.source_ended = true;
                    return Ok(0);
                }
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

#[cfg(test)]
mod tests {
    //! The stream logic on real temp directories: the export's chunking, and the import's
    //! reader — tar's end found across any chunking, truncation, the quota, a failing or
    //! silent source. The volume actor around them is tested in `tests/it/volumes.rs`.

    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::supervisor::feed::{Feed, feed};

    /// A tree with a nested file larger than a chunk, a read-only directory, a symlink and a
    /// socket (not data: skipped). Answers the large file's content.
    fn plant(dir: &Path) -> Vec<u8> {
        let big: Vec<u8> = (0..CHUNK * 2 + 1234).map(|i| (i % 251) as u8).collect();
        std::fs::create_dir_all(dir.join("a/b")).expect("mkdir");
        std::fs::write(dir.join("a/b/big.bin"), &big).expect("write");
        std::fs::write(dir.join("small.txt"), b"hello").expect("write");
        std::fs::set_permissions(dir.join("small.txt"), PermissionsExt::from_mode(0o640))
            .expect("chmod");
        filetime::set_file_mtime(
            dir.join("small.txt"),
            filetime::FileTime::from_unix_time(1_600_000_000, 0),
        )
        .expect("utimes");
        std::os::unix::fs::symlink("small.txt", dir.join("link")).expect("symlink");
        std::os::unix::net::UnixListener::bind(dir.join("socket")).expect("socket");
        std::fs::set_permissions(dir.join("a"), PermissionsExt::from_mode(0o555)).expect("chmod");
        big
    }

    /// Makes `dir/a` writable again, so the temp dir can go.
    fn unlock(dir: &Path) {
        let _ = std::fs::set_permissions(dir.join("a"), PermissionsExt::from_mode(0o755));
    }

    /// Exports `dir` on a thread of its own (the tar writer blocks) and reads the feed here.
    fn export_chunks(dir: &Path) -> (Vec<Vec<u8>>, u64) {
        let (feeder, chunks): (_, Feed<Vec<u8>, VolumeError>) = feed(4, Duration::from_secs(30));
        let dir = dir.to_owned();
        let writer = std::thread::spawn(move || export(&dir, &feeder));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let chunks = runtime.block_on(chunks.collect()).expect("chunks");
        let sent = writer.join().expect("writer").expect("export");
        (chunks, sent)
    }

    /// Unpacks a source that sends `items` and ends.
    fn import_items(
        dst: &Path,
        items: Vec<Result<Vec<u8>, String>>,
        limit: u64,
    ) -> Result<Unpacked, VolumeError> {
        let (tx, rx) = mpsc::channel(items.len().max(1));
        for item in items {
            tx.try_send(item).expect("room");
        }
        drop(tx);
        import(dst, rx, "v", limit, Duration::from_secs(30))
    }

    /// Unpacks `stream` cut into pieces of `piece` bytes.
    fn import_pieces(
        dst: &Path,
        stream: &[u8],
        piece: usize,
        limit: u64,
    ) -> Result<Unpacked, VolumeError> {
        let pieces = stream.chunks(piece).map(|c| Ok(c.to_vec())).collect();
        import_items(dst, pieces, limit)
    }

    #[test]
    fn an_export_is_full_chunks_and_unpacks_to_the_same_tree_however_it_is_cut() {
        let src = tempfile::tempdir().expect("tempdir");
        let big = plant(src.path());
        let (chunks, sent) = export_chunks(src.path());
        unlock(src.path());
        // Every chunk but the last is exactly CHUNK bytes; the count is what was sent.
        let (last, full) = chunks.split_last().expect("chunks");
        assert!(full.iter().all(|c| c.len() == CHUNK));
        assert!(!last.is_empty() && last.len() <= CHUNK);
        let stream: Vec<u8> = chunks.concat();
        assert_eq!(sent, stream.len() as u64);
        assert_eq!(stream.len() % BLOCK, 0, "tar is whole blocks");

        // Cut at the export's own size, at odd sizes (tar's end-of-archive block straddles
        // pieces) and a byte at a time: tar's end is always found, the tree always the same.
        for piece in [CHUNK, 1000, BLOCK, 7, 1] {
            let dst = tempfile::tempdir().expect("tempdir");
            let done = import_pieces(dst.path(), &stream, piece, u64::MAX)
                .unwrap_or_else(|e| panic!("pieces of {piece}: {e}"));
            assert_eq!(done.stream_bytes, stream.len() as u64, "pieces of {piece}");
            // a, a/b, a/b/big.bin, link, small.txt: the socket is not data.
            assert_eq!((done.entries, done.unpacked, done.unsafe_paths), (5, 5, 0));
            let d = dst.path();
            assert_eq!(std::fs::read(d.join("a/b/big.bin")).expect("read"), big);
            assert_eq!(std::fs::read(d.join("small.txt")).expect("read"), b"hello");
            let meta = std::fs::metadata(d.join("small.txt")).expect("stat");
            assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
            assert_eq!(
                filetime::FileTime::from_last_modification_time(&meta).unix_seconds(),
                1_600_000_000
            );
            assert_eq!(
                std::fs::read_link(d.join("link")).expect("link"),
                PathBuf::from("small.txt")
            );
            assert!(!d.join("socket").exists());
            // The read-only directory was filled, then given its own mode.
            let a = std::fs::metadata(d.join("a")).expect("stat");
            assert_eq!(a.permissions().mode() & 0o7777, 0o555);
            unlock(d);
        }
    }

    #[test]
    fn a_stream_cut_short_anywhere_or_past_the_quota_is_refused() {
        let src = tempfile::tempdir().expect("tempdir");
        plant(src.path());
        let (chunks, _) = export_chunks(src.path());
        unlock(src.path());
        let stream: Vec<u8> = chunks.concat();

        // Without tar's two end blocks (cut between entries), and cut inside the large
        // file's data (tar itself only sees a short file): truncated, both.
        for cut_blocks in [2, 6] {
            let dst = tempfile::tempdir().expect("tempdir");
            let cut = &stream[..stream.len() - cut_blocks * BLOCK];
            let err = import_pieces(dst.path(), cut, 1000, u64::MAX).expect_err("truncated");
            assert!(
                matches!(&err, VolumeError::Interrupted { what } if what.contains("truncated")),
                "{cut_blocks} blocks short: {err:?}"
            );
            unlock(dst.path());
        }

        // One byte more than allowed: over quota, naming the limit; exactly the limit fits.
        let dst = tempfile::tempdir().expect("tempdir");
        let limit = stream.len() as u64 - 1;
        let err = import_pieces(dst.path(), &stream, 1000, limit).expect_err("over");
        assert!(
            matches!(err, VolumeError::OverQuota { quota, .. } if quota == limit),
            "{err:?}"
        );
        unlock(dst.path());
        let dst = tempfile::tempdir().expect("tempdir");
        import_pieces(dst.path(), &stream, 1000, stream.len() as u64).expect("exactly fits");
        unlock(dst.path());
    }

    #[test]
    fn a_failing_source_fails_with_the_count_and_a_silent_one_after_the_idle_timeout() {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::write(src.path().join("one.txt"), b"1").expect("write");
        std::fs::write(src.path().join("two.txt"), b"2").expect("write");
        let (chunks, _) = export_chunks(src.path());
        let stream: Vec<u8> = chunks.concat();
        // Both entries (a header and a data block each), then the source fails.
        let two_entries = stream[..4 * BLOCK].to_vec();
        let dst = tempfile::tempdir().expect("tempdir");
        let err = import_items(
            dst.path(),
            vec![Ok(two_entries), Err("disk gone".to_owned())],
            u64::MAX,
        )
        .expect_err("source failed");
        assert_eq!(
            err,
            VolumeError::ImportSource {
                written: 2,
                reason: "disk gone".to_owned()
            }
        );
        // A source that fails after tar's end fails the import all the same.
        let dst = tempfile::tempdir().expect("tempdir");
        let err = import_items(
            dst.path(),
            vec![Ok(stream), Err("late".to_owned())],
            u64::MAX,
        )
        .expect_err("source failed after the end");
        assert!(
            matches!(&err, VolumeError::ImportSource { written: 2, reason } if reason == "late"),
            "{err:?}"
        );

        // A source that stays open and sends nothing: idle, after the idle timeout (on the
        // reader's own clock: this runs on a blocking thread, outside any runtime).
        let dst = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = mpsc::channel(1);
        let idle = Duration::from_millis(50);
        let started = std::time::Instant::now();
        let err = import(dst.path(), rx, "v", u64::MAX, idle).expect_err("idle");
        assert!(started.elapsed() >= idle);
        assert!(
            matches!(err, VolumeError::StreamIdle { after, .. } if after == idle),
            "{err:?}"
        );
        drop(tx);
    }

    /// Reads a tar stream back with the `tar` crate's own reader: (name, kind, mode, mtime,
    /// link target, size) of each entry.
    fn listing(stream: &[u8]) -> Vec<(String, tar::EntryType, u32, u64, Option<String>, u64)> {
        let mut archive = tar::Archive::new(stream);
        archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let h = e.header();
                (
                    e.path().expect("path").display().to_string(),
                    h.entry_type(),
                    h.mode().expect("mode") & 0o7777,
                    h.mtime().expect("mtime"),
                    e.link_name()
                        .expect("link")
                        .map(|l| l.display().to_string()),
                    h.size().expect("size"),
                )
            })
            .collect()
    }

    /// What the export writes: every entry in name order (the same tree gives the same
    /// bytes), files with their mode, mtime and size, a symlink as a link (never followed,
    /// no content), directories before what is in them; lucid-db's own short-lived files and
    /// sockets left out; tar's two zero blocks at the end.
    #[test]
    fn an_export_is_the_tree_in_name_order_links_as_links_without_temp_files_or_sockets() {
        let src = tempfile::tempdir().expect("tempdir");
        let big = plant(src.path());
        std::fs::write(src.path().join(".lucid-tmp-0123"), b"half a write").expect("write");
        let (chunks, _) = export_chunks(src.path());
        let (again, _) = export_chunks(src.path());
        unlock(src.path());
        let stream = chunks.concat();
        assert_eq!(stream, again.concat(), "the same tree, the same archive");
        assert!(stream.ends_with(&[0u8; 2 * BLOCK]));

        let entries = listing(&stream);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["a", "a/b", "a/b/big.bin", "link", "small.txt"]);
        let by_name = |n: &str| entries.iter().find(|e| e.0 == n).expect("entry").clone();
        let (_, kind, mode, _, _, _) = by_name("a");
        assert_eq!((kind, mode), (tar::EntryType::Directory, 0o555));
        let (_, kind, _, _, _, size) = by_name("a/b/big.bin");
        assert_eq!((kind, size), (tar::EntryType::Regular, big.len() as u64));
        assert_eq!(
            by_name("small.txt"),
            (
                "small.txt".to_owned(),
                tar::EntryType::Regular,
                0o640,
                1_600_000_000,
                None,
                5
            )
        );
        let (_, kind, _, _, target, size) = by_name("link");
        assert_eq!(
            (kind, target.as_deref(), size),
            (tar::EntryType::Symlink, Some("small.txt"), 0)
        );
    }

    /// An archive as an attacker (or a corrupted artifact) would write it: names a careful
    /// builder refuses, written raw into the header.
    fn raw_archive(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1);
            if let Some(target) = link {
                h.set_link_name(target).expect("link name");
            }
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("archive")
    }

    /// What the import refuses and how it counts it: a `..` name is skipped and counted as
    /// unsafe, an absolute one lands inside (made relative), a file through a link that
    /// leads out fails the import — and nothing is ever written outside the directory.
    #[test]
    fn an_import_keeps_every_entry_inside_and_counts_what_it_skipped() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dst = parent.path().join("volume");
        std::fs::create_dir(&dst).expect("mkdir");
        let regular = tar::EntryType::Regular;
        let stream = raw_archive(&[
            ("../escaped.txt", regular, b"escaped", None),
            ("/abs/inside.txt", regular, b"inside", None),
            ("plain.txt", regular, b"plain", None),
        ]);
        let done = import_items(&dst, vec![Ok(stream.clone())], u64::MAX).expect("import");
        assert_eq!((done.entries, done.unpacked, done.unsafe_paths), (3, 2, 1));
        assert_eq!(done.stream_bytes, stream.len() as u64);
        assert!(!parent.path().join("escaped.txt").exists());
        assert_eq!(
            std::fs::read(dst.join("abs/inside.txt")).expect("read"),
            b"inside"
        );
        assert_eq!(
            std::fs::read(dst.join("plain.txt")).expect("read"),
            b"plain"
        );

        let outside = tempfile::tempdir().expect("tempdir");
        let target = outside.path().display().to_string();
        let dst = parent.path().join("other");
        std::fs::create_dir(&dst).expect("mkdir");
        let stream = raw_archive(&[
            ("link", tar::EntryType::Symlink, b"", Some(&target)),
            ("link/through.txt", regular, b"through", None),
        ]);
        let err = import_items(&dst, vec![Ok(stream)], u64::MAX).expect_err("through a link");
        assert!(
            matches!(err, VolumeError::Io { op: "untar", .. }),
            "{err:?}"
        );
        assert_eq!(
            std::fs::read_dir(outside.path()).expect("ls").count(),
            0,
            "written outside"
        );
    }

    /// A source that is not tar, and one that ends before sending anything: refused, with
    /// nothing unpacked.
    #[test]
    fn garbage_and_an_empty_source_are_refused() {
        let dst = tempfile::tempdir().expect("tempdir");
        let garbage: Vec<u8> = (0..4 * BLOCK).map(|i| (i % 7 + 1) as u8).collect();
        let err = import_items(dst.path(), vec![Ok(garbage)], u64::MAX).expect_err("garbage");
        assert!(
            matches!(&err, VolumeError::Io { op: "untar", .. }),
            "{err:?}"
        );
        let err = import_items(dst.path(), vec![], u64::MAX).expect_err("empty");
        assert!(
            matches!(&err, VolumeError::Interrupted { what } if what.contains("truncated")),
            "{err:?}"
        );
        assert_eq!(std::fs::read_dir(dst.path()).expect("ls").count(), 0);
    }

    /// The tar reader waits for a source that is slow but alive (each chunk well inside the
    /// idle timeout) and unpacks it all: it is woken by each chunk, not ended early.
    #[test]
    fn the_reader_waits_for_a_slow_source_within_the_idle_timeout() {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::write(src.path().join("one.txt"), b"1").expect("write");
        let (chunks, _) = export_chunks(src.path());
        let stream = chunks.concat();
        let (tx, rx) = mpsc::channel(1);
        let sender = std::thread::spawn(move || {
            for piece in stream.chunks(BLOCK) {
                // Slower than the reader: it waits for every piece.
                std::thread::sleep(Duration::from_millis(2));
                if tx.blocking_send(Ok(piece.to_vec())).is_err() {
                    return;
                }
            }
        });
        let dst = tempfile::tempdir().expect("tempdir");
        let done = import(dst.path(), rx, "v", u64::MAX, Duration::from_secs(30)).expect("import");
        sender.join().expect("sender");
        assert_eq!((done.entries, done.unpacked), (1, 1));
        assert_eq!(
            std::fs::read(dst.path().join("one.txt")).expect("read"),
            b"1"
        );
    }
}
