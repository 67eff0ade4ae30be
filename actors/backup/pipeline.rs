//! The bytes of one artifact, both ways.
//!
//! **Write:** source chunks → compression (zstd level 3, multithreaded when asked — volumes —,
//! or gzip) → age encryption to the recipients (or none) → SHA-256 and byte count of what is
//! stored → [`Storage`]. The source is any `Stream<Item = Result<chunk, E>>` (a store's
//! export, a tar stream): nothing here knows a store. The CPU work runs on one blocking
//! thread, fed through a bounded channel of [`IN_FLIGHT`] source chunks and feeding the
//! storage writer through another of [`OUT_FLIGHT`] chunks of [`CHUNK`] bytes, so memory is
//! the same for a kilobyte and a terabyte — the source waits while the thread is busy, the
//! thread waits while storage is slow. No actor's event loop ever compresses, encrypts or
//! hashes. A source that fails, a full reservation or a storage error throws the artifact away
//! (no final name on half a file) and the error says which artifact and why.
//!
//! **Read:** storage → SHA-256 and size against the manifest's record ([`verify_checksum`]:
//! the `checksummed` level, no identity needed) or, with an identity, also decrypt →
//! decompress → hand a `Read` to a parser that walks the format to its end ([`decode_artifact`]
//! with e.g. [`walk_tar`]: the `decoded` level). After the parser, the rest is read too, so the
//! whole file is hashed, authenticated (age) and checked (zstd's frame checksum).
//!
//! Errors tell corrupt (the artifact is bad: checksum, truncation, wrong identity, bad
//! format — [`PipelineError::is_corrupt`], exit 65) from everything else (the source, storage,
//! I/O).

use std::fmt::Display;
use std::io::{self, BufReader, Read, Write};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::id::BackupId;
use super::keys::{Identities, Recipients};
use super::manifest::{ArtifactRecord, Manifest};
use super::storage::{Storage, StorageError};
use crate::config::Compression;

/// Source chunks queued for the encoding thread.
pub const IN_FLIGHT: usize = 8;
/// Stored chunks queued for the storage writer (and read chunks for the decoding thread).
pub const OUT_FLIGHT: usize = 4;
/// Size of a stored chunk handed to storage.
pub const CHUNK: usize = 256 << 10;
/// zstd's level: 3 is its default, a good ratio at a speed a Pi sustains.
pub const ZSTD_LEVEL: i32 = 3;
/// The size of a multithreaded zstd job (zstd's minimum is 512 KiB): see `encode`.
pub const ZSTD_JOB_SIZE: u32 = 1 << 20;

/// How artifacts are encoded.
#[derive(Debug, Clone)]
pub struct Codec {
    pub compression: Compression,
    /// zstd worker threads besides the pipeline's own (0: none). Volumes use them; a small
    /// export gains nothing from them.
    pub zstd_workers: u32,
    /// Empty: not encrypted.
    pub recipients: Recipients,
}

impl Codec {
    /// The file-name suffix of an artifact: `.zst.age`, `.gz.age`, `.zst`, `.gz`.
    pub fn suffix(&self) -> &'static str {
        match (self.compression, self.recipients.is_empty()) {
            (Compression::Zstd, false) => ".zst.age",
            (Compression::Gzip, false) => ".gz.age",
            (Compression::Zstd, true) => ".zst",
            (Compression::Gzip, true) => ".gz",
        }
    }
}

/// How to read a backup's artifacts: what its manifest says, and the keys at hand.
#[derive(Debug, Clone)]
pub struct Decoding {
    pub compression: Compression,
    pub encrypted: bool,
    /// Needed when `encrypted`.
    pub identities: Option<Identities>,
}

impl Decoding {
    pub fn for_manifest(manifest: &Manifest, identities: Option<Identities>) -> Decoding {
        Decoding {
            compression: manifest.compression,
            encrypted: manifest.encryption.is_encrypted(),
            identities,
        }
    }
}

/// Why an artifact could not be written or read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    /// The source failed mid-stream: the artifact was thrown away.
    #[error("{artifact}: the source failed after {bytes_in} bytes: {reason}")]
    Source {
        artifact: String,
        bytes_in: u64,
        reason: String,
    },
    #[error("{artifact}: {source}")]
    Storage {
        artifact: String,
        #[source]
        source: StorageError,
    },
    /// Compressing or encrypting failed on the encoding thread.
    #[error("{artifact}: encoding failed: {reason}")]
    Encode { artifact: String, reason: String },
    /// The manifest names an artifact that storage does not have.
    #[error("{artifact}: missing from storage")]
    Missing { artifact: String },
    #[error("{artifact}: truncated: {found} of {expected} bytes stored")]
    Truncated {
        artifact: String,
        expected: u64,
        found: u64,
    },
    #[error("{artifact}: SHA-256 mismatch: the manifest says {expected}, storage holds {found}")]
    ChecksumMismatch {
        artifact: String,
        expected: String,
        found: String,
    },
    /// None of the identities given opens it.
    #[error("{artifact}: none of the identities given can decrypt it")]
    WrongIdentity { artifact: String },
    /// The backup is encrypted and no identity was given.
    #[error("{artifact}: encrypted, and no identity was given to decrypt it")]
    IdentityRequired { artifact: String },
    /// The stored bytes are as written but do not decrypt, decompress or parse.
    #[error("{artifact}: does not decode: {reason}")]
    Undecodable { artifact: String, reason: String },
    /// It decodes, but holds another number of items than the manifest's source facts say.
    #[error("{artifact}: holds {found} {what}, the manifest's source facts say {expected}")]
    CountMismatch {
        artifact: String,
        what: String,
        expected: u64,
        found: u64,
    },
}

impl PipelineError {
    pub fn code(&self) -> &'static str {
        match self {
            PipelineError::Source { .. } => "source_failed",
            PipelineError::Storage { source, .. } => source.code(),
            PipelineError::Encode { .. } => "encode_failed",
            PipelineError::Missing { .. } => "missing",
            PipelineError::Truncated { .. } => "truncated",
            PipelineError::ChecksumMismatch { .. } => "checksum_mismatch",
            PipelineError::WrongIdentity { .. } => "wrong_identity",
            PipelineError::IdentityRequired { .. } => "identity_required",
            PipelineError::Undecodable { .. } => "bad_format",
            PipelineError::CountMismatch { .. } => "count_mismatch",
        }
    }

    /// The artifact is bad or cannot be verified with what was given (exit 65), as opposed to
    /// a failure around it (the source, storage, local I/O).
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            PipelineError::Missing { .. }
                | PipelineError::Truncated { .. }
                | PipelineError::ChecksumMismatch { .. }
                | PipelineError::WrongIdentity { .. }
                | PipelineError::Undecodable { .. }
                | PipelineError::CountMismatch { .. }
        )
    }

    /// The artifact's name, as the manifest lists it.
    pub fn artifact(&self) -> &str {
        match self {
            PipelineError::Source { artifact, .. }
            | PipelineError::Storage { artifact, .. }
            | PipelineError::Encode { artifact, .. }
            | PipelineError::Missing { artifact }
            | PipelineError::Truncated { artifact, .. }
            | PipelineError::ChecksumMismatch { artifact, .. }
            | PipelineError::WrongIdentity { artifact }
            | PipelineError::IdentityRequired { artifact }
            | PipelineError::Undecodable { artifact, .. }
            | PipelineError::CountMismatch { artifact, .. } => artifact,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Write

/// What the encoding thread is handed.
enum Piece {
    Data(Bytes),
    /// The source ended normally. A channel that closes without it means the source failed:
    /// the thread then stops without finishing the streams.
    End,
}

/// Writes artifact `name` (relative to backup `id`; `logical` is what it holds) from
/// `source` through `codec` into `storage`; see the module doc.
pub async fn write_artifact<S, B, E>(
    storage: &Storage,
    id: &BackupId,
    name: &str,
    logical: &str,
    codec: &Codec,
    source: S,
) -> Result<ArtifactRecord, PipelineError>
where
    S: Stream<Item = Result<B, E>>,
    B: Into<Bytes>,
    E: Display,
{
    let artifact = name.to_owned();
    let storage_err = |source| PipelineError::Storage {
        artifact: artifact.clone(),
        source,
    };
    let mut writer = storage.writer(id, name).await.map_err(storage_err)?;
    let (in_tx, in_rx) = mpsc::channel::<Piece>(IN_FLIGHT);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUT_FLIGHT);
    let thread_codec = codec.clone();
    let encoder = tokio::task::spawn_blocking(move || encode(in_rx, out_tx, &thread_codec));

    let pump = async move {
        let mut bytes_in = 0u64;
        let mut source = std::pin::pin!(source);
        while let Some(item) = source.next().await {
            match item {
                Ok(chunk) => {
                    // Lets a test slow an artifact down (`sleep(10)`) to kill a run mid-write
                    // on any machine, however fast (`failpoints` builds only).
                    #[cfg(feature = "failpoints")]
                    fail::fail_point!("backup-artifact-chunk");
                    let chunk: Bytes = chunk.into();
                    bytes_in += chunk.len() as u64;
                    if in_tx.send(Piece::Data(chunk)).await.is_err() {
                        // The thread stopped: its error or the storage's says why.
                        return Ok(bytes_in);
                    }
                }
                Err(e) => return Err((bytes_in, e.to_string())),
            }
        }
        let _ = in_tx.send(Piece::End).await;
        Ok(bytes_in)
    };
    let drain = async {
        while let Some(chunk) = out_rx.recv().await {
            writer.write(chunk).await?;
        }
        Ok::<(), StorageError>(())
        // Returning drops `out_rx`: on a storage error the thread's next send fails and it
        // stops, and then the source's next send fails.
    };
    let (pumped, drained) = tokio::join!(pump, drain);
    let encoded = encoder
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("the encoding thread died: {e}"))));

    let failure = match (pumped, drained, encoded) {
        (Err((bytes_in, reason)), _, _) => PipelineError::Source {
            artifact: artifact.clone(),
            bytes_in,
            reason,
        },
        (_, Err(e), _) => storage_err(e),
        (_, _, Err(e)) => PipelineError::Encode {
            artifact: artifact.clone(),
            reason: e.to_string(),
        },
        (Ok(bytes_in), Ok(()), Ok(done)) => {
            let bytes_stored = writer.finish().await.map_err(storage_err)?;
            debug_assert_eq!(bytes_stored, done.bytes_stored);
            return Ok(ArtifactRecord {
                name: artifact.clone(),
                logical: logical.to_owned(),
                bytes_in,
                bytes_stored,
                sha256: done.sha256,
            });
        }
    };
    writer.abort().await;
    Err(failure)
}

struct Encoded {
    bytes_stored: u64,
    sha256: String,
}

/// The encoding thread: compress → encrypt → hash → chunk into `out`.
fn encode(
    mut input: mpsc::Receiver<Piece>,
    out: mpsc::Sender<Bytes>,
    codec: &Codec,
) -> io::Result<Encoded> {
    let hashed = Hashing::new(Chunker::new(out));
    let sealed = match codec.recipients.encryptor() {
        Some(encryptor) => Sealer::Age(encryptor.wrap_output(hashed)?),
        None if codec.recipients.is_empty() => Sealer::Plain(hashed),
        None => return Err(io::Error::other("the recipients were refused by age")),
    };
    let mut compressor = match codec.compression {
        Compression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(sealed, ZSTD_LEVEL)?;
            z.include_checksum(true)?;
            if codec.zstd_workers > 0 {
                z.multithread(codec.zstd_workers)?;
                // zstd's own job size (4 × its window: 8 MiB at level 3) holds several jobs'
                // input and output per worker, and a stream of a few tens of megabytes never
                // reaches that ceiling while a long one does: small jobs keep the ceiling low
                // and reached at once, so memory is the same for 20 MB and 200 MB.
                z.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_SIZE))?;
            }
            Compressor::Zstd(z)
        }
        Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
            sealed,
            flate2::Compression::default(),
        )),
    };
    loop {
        match input.blocking_recv() {
            Some(Piece::Data(chunk)) => compressor.write_all(&chunk)?,
            Some(Piece::End) => break,
            None => return Err(io::Error::other("the source stopped")),
        }
    }
    let hashed = compressor.finish()?.finish()?;
    let (chunker, sha256, bytes_stored) = hashed.into_parts();
    chunker.finish()?;
    Ok(Encoded {
        bytes_stored,
        sha256,
    })
}

enum Compressor<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
}

impl<W: Write> Compressor<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Zstd(z) => z.finish(),
            Compressor::Gzip(g) => g.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Zstd(z) => z.write(buf),
            Compressor::Gzip(g) => g.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Zstd(z) => z.flush(),
            Compressor::Gzip(g) => g.flush(),
        }
    }
}

enum Sealer<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealer<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Sealer::Plain(w) => Ok(w),
            Sealer::Age(a) => a.finish(),
        }
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealer::Plain(w) => w.write(buf),
            Sealer::Age(a) => a.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealer::Plain(w) => w.flush(),
            Sealer::Age(a) => a.flush(),
        }
    }
}

/// SHA-256 and byte count of everything written through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    count: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            sha: Sha256::new(),
            count: 0,
        }
    }

    fn into_parts(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.sha.finalize()), self.count)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Collects writes into [`CHUNK`]-sized pieces and hands each to the storage writer, waiting
/// while the channel is full.
struct Chunker {
    out: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl Chunker {
    fn new(out: mpsc::Sender<Bytes>) -> Self {
        Chunker {
            out,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.out
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| io::Error::other("the storage writer stopped"))
    }

    fn finish(mut self) -> io::Result<()> {
        self.send()
    }
}

impl Write for Chunker {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    // A flush from above (age's or zstd's) must not send a small chunk: S3 parts and the
    // channel's bound assume full ones.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Read

/// What the decoding thread is handed.
enum Fetched {
    Data(Bytes),
    Failed,
}

/// The `checksummed` level for one artifact: its stored bytes, hashed (off the event loop),
/// against the manifest's size and SHA-256.
pub async fn verify_checksum(
    storage: &Storage,
    id: &BackupId,
    record: &ArtifactRecord,
) -> Result<(), PipelineError> {
    read_artifact(storage, id, record, |hashed| {
        io::copy(hashed, &mut io::sink()).map(|_| ())
    })
    .await
}

/// The `decoded` level for one artifact: hashed as in [`verify_checksum`], then decrypted and
/// decompressed, and `parse` reads the plain bytes (to their end, ideally: whatever it leaves
/// is read and checked after it). Answers what `parse` answered.
pub async fn decode_artifact<T, F>(
    storage: &Storage,
    id: &BackupId,
    record: &ArtifactRecord,
    decoding: &Decoding,
    parse: F,
) -> Result<T, PipelineError>
where
    F: FnOnce(&mut dyn Read) -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let artifact = record.name.clone();
    if decoding.encrypted
        && decoding
            .identities
            .as_ref()
            .is_none_or(Identities::is_empty)
    {
        return Err(PipelineError::IdentityRequired { artifact });
    }
    let decoding = decoding.clone();
    let outcome = read_artifact(storage, id, record, move |hashed| {
        Ok(decode(hashed, &decoding, parse).map_err(|reason| (reason, artifact)))
    })
    .await?;
    outcome.map_err(|(failure, artifact)| match failure {
        DecodeFailure::WrongIdentity => PipelineError::WrongIdentity { artifact },
        DecodeFailure::Bad(reason) => PipelineError::Undecodable { artifact, reason },
    })
}

enum DecodeFailure {
    WrongIdentity,
    Bad(String),
}

/// Decrypts, decompresses, parses, then reads the rest of the plain stream.
fn decode<T>(
    hashed: &mut dyn Read,
    decoding: &Decoding,
    parse: impl FnOnce(&mut dyn Read) -> io::Result<T>,
) -> Result<T, DecodeFailure> {
    let bad = |e: &dyn Display| DecodeFailure::Bad(e.to_string());
    let mut buffered = BufReader::with_capacity(64 << 10, hashed);
    let plain: Box<dyn Read + '_> = match (&decoding.identities, decoding.encrypted) {
        (Some(ids), true) => {
            let decryptor = age::Decryptor::new_buffered(&mut buffered)
                .map_err(|e| DecodeFailure::Bad(format!("not an age file: {e}")))?;
            let reader = decryptor.decrypt(ids.as_age()).map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => DecodeFailure::WrongIdentity,
                other => bad(&other),
            })?;
            Box::new(reader)
        }
        _ => Box::new(&mut buffered),
    };
    let mut decompressed: Box<dyn Read + '_> = match decoding.compression {
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(plain).map_err(|e| bad(&e))?)
        }
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(plain)),
    };
    let parsed = parse(&mut decompressed).map_err(|e| bad(&e))?;
    io::copy(&mut decompressed, &mut io::sink()).map_err(|e| bad(&e))?;
    Ok(parsed)
}

/// Streams the artifact from storage to a blocking thread where `work` reads it through a
/// hashing reader; then reads what `work` left, and checks size and digest against the record.
/// A mismatch wins over whatever `work` said: bytes that changed explain every later failure.
async fn read_artifact<T, W>(
    storage: &Storage,
    id: &BackupId,
    record: &ArtifactRecord,
    work: W,
) -> Result<T, PipelineError>
where
    W: FnOnce(&mut dyn Read) -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let artifact = record.name.clone();
    let mut reader = match storage.reader(id, &record.name).await {
        Ok(r) => r,
        Err(StorageError::NotFound { .. }) => return Err(PipelineError::Missing { artifact }),
        Err(source) => return Err(PipelineError::Storage { artifact, source }),
    };
    let (tx, rx) = mpsc::channel::<Fetched>(OUT_FLIGHT);
    let thread = tokio::task::spawn_blocking(move || {
        let mut hashed = HashingReader {
            inner: ChannelReader {
                rx,
                current: Bytes::new(),
            },
            sha: Sha256::new(),
            count: 0,
        };
        let result = work(&mut hashed);
        // Whatever the work left (or all of it, when it failed early) is read and hashed too.
        let rest = io::copy(&mut hashed, &mut io::sink());
        let (sha, count) = (hex::encode(hashed.sha.finalize()), hashed.count);
        (result, rest, sha, count)
    });
    let mut fetch_error = None;
    while let Some(chunk) = reader.next_chunk().await {
        let piece = match chunk {
            Ok(bytes) => Fetched::Data(bytes),
            Err(e) => {
                fetch_error = Some(e);
                Fetched::Failed
            }
        };
        let failed = matches!(piece, Fetched::Failed);
        if tx.send(piece).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    let (result, rest, sha, count) = thread.await.map_err(|e| PipelineError::Undecodable {
        artifact: artifact.clone(),
        reason: format!("the decoding thread died: {e}"),
    })?;
    if let Some(source) = fetch_error {
        return Err(PipelineError::Storage { artifact, source });
    }
    if count < record.bytes_stored {
        return Err(PipelineError::Truncated {
            artifact,
            expected: record.bytes_stored,
            found: count,
        });
    }
    if count != record.bytes_stored || sha != record.sha256 {
        return Err(PipelineError::ChecksumMismatch {
            artifact,
            expected: record.sha256.clone(),
            found: sha,
        });
    }
    let bad = |e: io::Error| PipelineError::Undecodable {
        artifact: artifact.clone(),
        reason: e.to_string(),
    };
    rest.map_err(bad)?;
    result.map_err(bad)
}

/// A `Read` over chunks a task sends; a `Failed` piece is an error, the channel's end EOF.
struct ChannelReader {
    rx: mpsc::Receiver<Fetched>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Fetched::Data(b)) => self.current = b,
                Some(Fetched::Failed) => {
                    return Err(io::Error::other("reading from storage failed"));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

struct HashingReader<R> {
    inner: R,
    sha: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// What [`walk_tar`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TarSummary {
    pub entries: u64,
    /// The sum of the entries' sizes.
    pub bytes: u64,
}

/// A tar stream's `decoded` check: every header parses and every entry's data is there, to
/// the end of the archive.
pub fn walk_tar(r: &mut dyn Read) -> io::Result<TarSummary> {
    let mut archive = tar::Archive::new(r);
    let mut summary = TarSummary::default();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let size = entry.header().size()?;
        // Read the data: the walk must reach the end of each entry, not trust its header.
        let read = io::copy(&mut entry, &mut io::sink())?;
        if read != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("entry {} holds {read} of {size} bytes", summary.entries + 1),
            ));
        }
        summary.entries += 1;
        summary.bytes += size;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use futures_util::stream;

    use super::*;
    use crate::backup::keys::BackupKey;

    fn tar_of_files(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o640);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            builder
                .append_data(&mut header, name, data.as_slice())
                .expect("append");
        }
        builder.into_inner().expect("tar")
    }

    fn chunks(data: &[u8], size: usize) -> Vec<Result<Bytes, String>> {
        data.chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    }

    fn storage(dir: &std::path::Path) -> Storage {
        Storage::fs(dir, Duration::from_secs(30)).expect("fs storage")
    }

    fn id() -> BackupId {
        BackupId::new(Utc::now())
    }

    #[tokio::test]
    async fn every_codec_round_trips_and_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = storage(dir.path());
        let key = BackupKey::generate();
        let mut recipients = Recipients::default();
        recipients.push(key.recipient());
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let tar = tar_of_files(&[("a.txt", b"hello".to_vec()), ("big.bin", big)]);
        for (compression, zstd_workers, encrypted) in [
            (Compression::Zstd, 0, true),
            (Compression::Zstd, 2, true),
            (Compression::Gzip, 0, true),
            (Compression::Zstd, 0, false),
            (Compression::Gzip, 0, false),
        ] {
            let codec = Codec {
                compression,
                zstd_workers,
                recipients: if encrypted {
                    recipients.clone()
                } else {
                    Recipients::default()
                },
            };
            let id = id();
            let name = format!("volumes/chunks.tar{}", codec.suffix());
            let record = write_artifact(
                &storage,
                &id,
                &name,
                "chunks",
                &codec,
                stream::iter(chunks(&tar, 100_000)),
            )
            .await
            .expect("write");
            assert_eq!(record.bytes_in, tar.len() as u64);
            let stored = std::fs::read(dir.path().join(id.to_string()).join(&name)).expect("read");
            assert_eq!(record.bytes_stored, stored.len() as u64);
            assert_eq!(record.sha256, hex::encode(Sha256::digest(&stored)));
            assert!(record.bytes_stored < record.bytes_in / 10, "{record:?}");
            assert_eq!(stored.starts_with(b"age-encryption.org/v1\n"), encrypted);

            verify_checksum(&storage, &id, &record)
                .await
                .expect("checksummed");
            let decoding = Decoding {
                compression,
                encrypted,
                identities: encrypted.then(|| key.identities()),
            };
            let summary = decode_artifact(&storage, &id, &record, &decoding, walk_tar)
                .await
                .expect("decoded");
            assert_eq!(summary.entries, 2);
            assert_eq!(summary.bytes, 3_000_005);
        }
    }

    #[tokio::test]
    async fn a_failing_source_leaves_nothing_under_a_final_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = storage(dir.path());
        let codec = Codec {
            compression: Compression::Zstd,
            zstd_workers: 0,
            recipients: Recipients::default(),
        };
        let id = id();
        let mut items = chunks(&vec![7u8; 2 << 20], 64 << 10);
        items.push(Err("the export lost its connection".to_owned()));
        items.extend(chunks(&[1, 2, 3], 3));
        let err = write_artifact(
            &storage,
            &id,
            "volumes/x.tar.zst",
            "x",
            &codec,
            stream::iter(items),
        )
        .await
        .expect_err("the source failed");
        assert_eq!(err.code(), "source_failed");
        assert!(!err.is_corrupt());
        assert_eq!(err.artifact(), "volumes/x.tar.zst");
        assert!(err.to_string().contains("after 2097152 bytes"), "{err}");
        assert!(err.to_string().contains("lost its connection"), "{err}");
        let left: Vec<_> = walkdir::WalkDir::new(dir.path())
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().display().to_string())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[tokio::test]
    async fn a_tar_walk_refuses_what_is_not_a_whole_tar() {
        let tar = tar_of_files(&[("a", vec![1u8; 3000])]);
        let mut whole = tar.as_slice();
        assert_eq!(walk_tar(&mut whole).expect("tar").entries, 1);
        let mut cut = &tar[..1500];
        assert!(walk_tar(&mut cut).is_err());
        let mut garbage: &[u8] = &[0x55; 1024];
        assert!(walk_tar(&mut garbage).is_err());
    }

    /// Peak resident memory of this process (each nextest test runs in its own process).
    fn vm_hwm_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// 200 MB through zstd and age into storage, from a source that makes its chunks as they
    /// are asked for: the process's peak memory grows by the pipeline's bounded buffers (a
    /// few chunks, zstd's window, age's 64 KiB chunks), not by anything like the data.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_stays_flat_whatever_the_size() {
        const TOTAL: u64 = 200 << 20;
        const CHUNK_IN: usize = 64 << 10;
        const TABLE: usize = 16 << 20;
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = storage(dir.path());
        let mut recipients = Recipients::default();
        recipients.push(BackupKey::generate().recipient());
        let codec = Codec {
            compression: Compression::Zstd,
            zstd_workers: 0,
            recipients,
        };
        // Chunks cut at random places from a 16 MiB table of half-compressible bytes (4
        // random bits each; wider than zstd's window, so it cannot just repeat the table):
        // every stage has work, and making the data costs little.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let table = Bytes::from(
            (0..TABLE)
                .map(|_| (next() & 0x0f) as u8)
                .collect::<Vec<u8>>(),
        );
        let source = stream::unfold((0u64, next), move |(sent, mut next)| {
            let table = table.clone();
            async move {
                if sent >= TOTAL {
                    return None;
                }
                let at = (next() as usize) % (TABLE - CHUNK_IN);
                let chunk = table.slice(at..at + CHUNK_IN);
                Some((Ok::<_, String>(chunk), (sent + CHUNK_IN as u64, next)))
            }
        });
        let before = vm_hwm_kib();
        let record = write_artifact(
            &storage,
            &id(),
            "volumes/big.tar.zst.age",
            "big",
            &codec,
            source,
        )
        .await
        .expect("write");
        assert_eq!(record.bytes_in, TOTAL);
        let growth_mib = vm_hwm_kib().saturating_sub(before) / 1024;
        eprintln!(
            "peak RSS grew by {growth_mib} MiB (before: {} MiB)",
            before / 1024
        );
        assert!(
            growth_mib < 48,
            "peak RSS grew by {growth_mib} MiB for {} MiB of data",
            TOTAL >> 20
        );
    }
}
