//! The artifact formats of the database stores, both ways: each encoder turns a store's export
//! into the bytes of a standard format (BACKUP.md), each decoder reads those bytes back as the
//! items a store's import takes — for `decoded` verification now, for a restore later.
//!
//! - [`mongodump`] — `<db>/<coll>.bson` (concatenated BSON documents, as stored) and
//!   `<coll>.metadata.json` (mongodump's own shape, canonical Extended JSON).
//! - [`resp`] — `db<N>.resp`: one `RESTORE key abs-expiry-ms payload ABSTTL REPLACE` per key as
//!   a RESP array, what `redis-cli --pipe` sends.
//! - [`bulk`] — `<index>.ndjson` in the `_bulk` format (an `index` action line, then the
//!   source line) and `<index>.meta.json`, the create-index body.
//!
//! Encoders write one item at a time into a buffer ([`chunked`] groups them into the
//! pipeline's chunks, so memory is a chunk whatever the export's size). Decoders are plain
//! `Iterator`s over a `Read` (the pipeline hands its decoding thread one): they hold one item
//! at a time, and every error is a [`FormatError`] naming the item and the byte offset where the
//! bytes stop making sense — a BSON file cut mid-document, a RESP command cut mid-payload, an
//! NDJSON line that is not JSON. A restore drives them on a blocking thread and passes each
//! item into the store's import (`crate::transfer`): a `RawDocumentBuf` for MongoDB, an
//! `ExportedKey` for Redis, an `ExportedDocument` for Elasticsearch.

pub mod bulk;
pub mod mongodump;
pub mod resp;

use std::io::{self, Read};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};

/// Bytes an encoder collects before it hands a chunk to the pipeline.
pub const CHUNK: usize = 64 << 10;

/// Where and why an artifact's plain bytes stop being the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {item} (at byte {offset}): {reason}")]
pub struct FormatError {
    /// What the format is made of: `document`, `command`, `line`, `metadata`.
    pub what: &'static str,
    /// Which one, counted from 1.
    pub item: u64,
    /// The offset in the plain (decompressed) bytes where that item starts.
    pub offset: u64,
    pub reason: String,
}

impl FormatError {
    pub fn new(what: &'static str, item: u64, offset: u64, reason: impl Into<String>) -> Self {
        FormatError {
            what,
            item,
            offset,
            reason: reason.into(),
        }
    }
}

impl From<FormatError> for io::Error {
    fn from(e: FormatError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Encodes each item of `items` with `encode` into chunks of about [`CHUNK`] bytes. An error
/// item ends the stream with that error, and the chunk in progress is dropped (the pipeline
/// throws the artifact away anyway).
pub fn chunked<S, T, E, F>(items: S, encode: F) -> impl Stream<Item = Result<Bytes, E>>
where
    S: Stream<Item = Result<T, E>>,
    F: FnMut(&T, &mut Vec<u8>),
{
    stream::unfold(Some((Box::pin(items), encode)), |state| async move {
        let (mut items, mut encode) = state?;
        let mut buf = Vec::with_capacity(CHUNK);
        loop {
            match items.next().await {
                Some(Ok(item)) => {
                    encode(&item, &mut buf);
                    if buf.len() >= CHUNK {
                        return Some((Ok(Bytes::from(buf)), Some((items, encode))));
                    }
                }
                Some(Err(e)) => return Some((Err(e), None)),
                None if buf.is_empty() => return None,
                None => return Some((Ok(Bytes::from(buf)), None)),
            }
        }
    })
}

/// A decoder's next item, given what its read answered (`None`: the end); `done` is set at
/// the end and after an error, so a decoder stops after its first error.
pub(crate) fn fused<T>(
    done: &mut bool,
    read: Result<Option<T>, FormatError>,
) -> Option<Result<T, FormatError>> {
    let next = read.transpose();
    if !matches!(next, Some(Ok(_))) {
        *done = true;
    }
    next
}

/// A reader that counts what it has handed out, for the offsets errors name.
pub(crate) struct Counting<R> {
    inner: R,
    pub(crate) offset: u64,
}

impl<R: Read> Counting<R> {
    pub(crate) fn new(inner: R) -> Self {
        Counting { inner, offset: 0 }
    }

    /// Fills `buf` completely; answers how many bytes it got before the end (`buf.len()` when
    /// whole).
    pub(crate) fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.offset += got as u64;
        Ok(got)
    }

    /// Reads exactly `len` bytes into a fresh buffer, growing it as bytes arrive (a length
    /// field that lies costs what the file holds, not what it claims); answers what it got
    /// when the input ends first.
    pub(crate) fn take_vec(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len.min(1 << 20));
        let got = (&mut self.inner).take(len as u64).read_to_end(&mut out)?;
        self.offset += got as u64;
        Ok(out)
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_gather_items_and_an_error_ends_the_stream() {
        let items = stream::iter((0..40_000u32).map(Ok::<u32, String>));
        let chunks: Vec<Bytes> = chunked(items, |n, buf| buf.extend_from_slice(&n.to_le_bytes()))
            .map(|c| c.expect("chunk"))
            .collect()
            .await;
        assert_eq!(chunks.len(), 3, "160,000 bytes in 64 KiB chunks");
        assert!(chunks[..2].iter().all(|c| c.len() == CHUNK));
        let all: Vec<u8> = chunks.concat();
        assert_eq!(all.len(), 160_000);
        assert_eq!(&all[4..8], &1u32.to_le_bytes());

        let failing = stream::iter([Ok(1u8), Err("cut".to_owned()), Ok(2)]);
        let out: Vec<Result<Bytes, String>> =
            chunked(failing, |n, buf| buf.push(*n)).collect().await;
        assert_eq!(out, vec![Err("cut".to_owned())]);
        let empty: Vec<Result<Bytes, String>> =
            chunked(stream::iter(Vec::<Result<u8, String>>::new()), |n, buf| {
                buf.push(*n)
            })
            .collect()
            .await;
        assert!(empty.is_empty());
    }
}
