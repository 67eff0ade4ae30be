//! Redis's part of a backup, `redis/db<N>.resp`: for every key one
//! `RESTORE key abs-expiry-ms payload ABSTTL REPLACE` command as a RESP array of bulk strings —
//! exactly the bytes `redis-cli --pipe` sends. The payload is the key's `DUMP` (Redis's own
//! serialisation: a type byte, the value, the RDB version and a CRC-64), the expiry an absolute
//! Unix time in milliseconds on the server's clock, `0` for a key that does not expire.
//!
//! [`encode_restore`] writes one command; [`RespReader`] reads them back as the
//! [`ExportedKey`]s the Redis import takes (the type from the payload's type byte), checking the
//! framing, the command's shape and each payload's CRC-64 — so a decoded file holds nothing a
//! `RESTORE` would refuse for its bytes.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};

use super::{Counting, FormatError, fused};
use crate::redis::{ExportedKey, KeyKind};

/// The longest bulk string Redis takes by default (`proto-max-bulk-len`): a length above it
/// is a damaged file.
pub const MAX_BULK: usize = 512 << 20;
/// A header line (`*6`, `$1048576`) is short; a longer one is not RESP.
const MAX_HEADER: usize = 24;

/// Appends the `RESTORE … ABSTTL REPLACE` command for `key`. (No allocation: an export
/// encodes every key.)
pub fn encode_restore(key: &ExportedKey, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let expiry = decimal(key.expires_at_ms.unwrap_or(0), &mut digits);
    out.extend_from_slice(b"*6\r\n$7\r\nRESTORE\r\n");
    for arg in [key.key.as_bytes(), expiry, &key.payload] {
        let mut len = [0u8; 20];
        out.push(b'$');
        out.extend_from_slice(decimal(arg.len() as u64, &mut len));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"$6\r\nABSTTL\r\n$7\r\nREPLACE\r\n");
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Reads a `.resp` file's commands one at a time, as [`ExportedKey`]s; stops after the first
/// error. A command must be `RESTORE key expiry payload ABSTTL [REPLACE]` (the flags in any
/// order, names in any case), its expiry a whole number, its key UTF-8 (every Lucid key is
/// ASCII), its payload a `DUMP` whose CRC-64 matches.
pub struct RespReader<R> {
    input: Counting<BufReader<R>>,
    commands: u64,
    done: bool,
}

impl<R: Read> RespReader<R> {
    pub fn new(input: R) -> Self {
        RespReader {
            input: Counting::new(BufReader::with_capacity(64 << 10, input)),
            commands: 0,
            done: false,
        }
    }

    /// Commands read so far.
    pub fn commands(&self) -> u64 {
        self.commands
    }

    fn read_one(&mut self) -> Result<Option<ExportedKey>, FormatError> {
        let item = self.commands + 1;
        let start = self.input.offset;
        let err = |reason: String| FormatError::new("command", item, start, reason);
        let at_end = self
            .input
            .fill_buf()
            .map_err(|e| err(e.to_string()))?
            .is_empty();
        if at_end {
            return Ok(None);
        }
        let header = self
            .header(b'*')
            .map_err(|e| err(format!("its array header: {e}")))?;
        if !(5..=7).contains(&header) {
            return Err(err(format!(
                "an array of {header} items: a RESTORE … ABSTTL command has 5 to 7"
            )));
        }
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(header);
        for i in 0..header {
            let what = arg_name(i);
            let len = self.header(b'$').map_err(|e| err(format!("{what}: {e}")))?;
            if len > MAX_BULK {
                return Err(err(format!("{what}: {len} bytes, above Redis's 512 MiB")));
            }
            let bytes = self.input.take_vec(len).map_err(|e| err(e.to_string()))?;
            if bytes.len() < len {
                return Err(err(format!(
                    "cut short in {what}: {} of {len} bytes",
                    bytes.len()
                )));
            }
            let mut crlf = [0u8; 2];
            let got = self.input.fill(&mut crlf).map_err(|e| err(e.to_string()))?;
            if got < 2 {
                return Err(err(format!("cut short after {what}")));
            }
            if &crlf != b"\r\n" {
                return Err(err(format!("{what} is not followed by CRLF")));
            }
            args.push(bytes);
        }
        let key = restore_key(args).map_err(err)?;
        self.commands += 1;
        Ok(Some(key))
    }

    /// A `*N` or `$N` line: the number.
    fn header(&mut self, kind: u8) -> Result<usize, String> {
        let mut line = Vec::with_capacity(MAX_HEADER);
        let got = (&mut self.input)
            .take(MAX_HEADER as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if got == 0 {
            return Err("cut short: the file ends here".to_owned());
        }
        let Some(text) = line.strip_suffix(b"\r\n") else {
            return Err(if got < MAX_HEADER && !line.ends_with(b"\n") {
                "cut short in a header line".to_owned()
            } else {
                "a header line that does not end in CRLF".to_owned()
            });
        };
        let Some((first, digits)) = text.split_first() else {
            return Err("an empty header line".to_owned());
        };
        if *first != kind {
            return Err(format!(
                "expected {:?}, found {:?}",
                kind as char,
                String::from_utf8_lossy(text)
            ));
        }
        std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("{:?} is not a length", String::from_utf8_lossy(text)))
    }
}

impl<R: Read> BufRead for Counting<BufReader<R>> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.offset += amt as u64;
        self.inner.consume(amt);
    }
}

fn arg_name(i: usize) -> String {
    match i {
        0 => "the command name".to_owned(),
        1 => "the key".to_owned(),
        2 => "the expiry".to_owned(),
        3 => "the payload".to_owned(),
        n => format!("argument {}", n + 1),
    }
}

/// The key a well-formed RESTORE command restores; see [`RespReader`].
fn restore_key(args: Vec<Vec<u8>>) -> Result<ExportedKey, String> {
    let mut args = args.into_iter();
    let (Some(name), Some(key), Some(expiry), Some(payload)) =
        (args.next(), args.next(), args.next(), args.next())
    else {
        return Err("too few arguments".to_owned());
    };
    if !name.eq_ignore_ascii_case(b"RESTORE") {
        return Err(format!(
            "{:?} is not RESTORE",
            String::from_utf8_lossy(&name)
        ));
    }
    let (mut absttl, mut replace) = (false, false);
    for flag in args {
        if flag.eq_ignore_ascii_case(b"ABSTTL") && !absttl {
            absttl = true;
        } else if flag.eq_ignore_ascii_case(b"REPLACE") && !replace {
            replace = true;
        } else {
            return Err(format!(
                "{:?}: only ABSTTL and REPLACE may follow the payload",
                String::from_utf8_lossy(&flag)
            ));
        }
    }
    if !absttl {
        return Err("no ABSTTL: the expiry would be read as relative".to_owned());
    }
    let key = String::from_utf8(key).map_err(|_| "the key is not UTF-8".to_owned())?;
    let expires_at_ms: u64 = std::str::from_utf8(&expiry)
        .ok()
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| {
            format!(
                "key {key:?}: the expiry {:?} is not a whole number of milliseconds",
                String::from_utf8_lossy(&expiry)
            )
        })?;
    check_dump(&payload).map_err(|e| format!("key {key:?}: the payload {e}"))?;
    Ok(ExportedKey {
        kind: KeyKind::from_rdb_type(payload[0]),
        key,
        payload,
        expires_at_ms: (expires_at_ms > 0).then_some(expires_at_ms),
    })
}

impl<R: Read> Iterator for RespReader<R> {
    type Item = Result<ExportedKey, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let read = self.read_one();
        fused(&mut self.done, read)
    }
}

/// What a `.resp` artifact holds, by the `decoded` walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RespSummary {
    pub keys: u64,
    /// Keys per type (`string`, `hash`, …), as the payloads' type bytes say.
    pub by_type: BTreeMap<String, u64>,
}

/// A `.resp` artifact's `decoded` check: every command, to the end.
pub fn walk_resp(input: &mut dyn Read) -> io::Result<RespSummary> {
    let mut summary = RespSummary::default();
    for key in RespReader::new(input) {
        let key = key?;
        summary.keys += 1;
        *summary
            .by_type
            .entry(key.kind.as_str().to_owned())
            .or_default() += 1;
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// DUMP payloads

/// A `DUMP` payload's frame: at least a type byte, then the RDB version (2 bytes) and the
/// CRC-64 of everything before it (8 bytes, little-endian) — what `RESTORE` checks first.
pub fn check_dump(payload: &[u8]) -> Result<(), String> {
    if payload.len() < 11 {
        return Err(format!(
            "has {} bytes: too short for a DUMP payload",
            payload.len()
        ));
    }
    let (body, footer) = payload.split_at(payload.len() - 8);
    let mut stored = [0u8; 8];
    stored.copy_from_slice(footer);
    let stored = u64::from_le_bytes(stored);
    let computed = crc64(body);
    if stored != computed {
        return Err(format!(
            "fails its CRC-64 check (stored {stored:016x}, computed {computed:016x})"
        ));
    }
    Ok(())
}

/// Redis's CRC-64 (Jones polynomial, reflected, no final XOR): the checksum of `DUMP`.
pub fn crc64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |crc, b| {
        CRC64_TABLE[((crc ^ u64::from(*b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// The Jones polynomial 0xad93d23594c935a9, bit-reversed.
const CRC64_POLY: u64 = 0x95ac_9329_ac4b_c9b5;

const CRC64_TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CRC64_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    /// A DUMP payload for `value` (a string, RDB type 0, length-prefixed below 64 bytes).
    fn dump_of(value: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8, value.len() as u8];
        p.extend_from_slice(value);
        p.extend_from_slice(&10u16.to_le_bytes());
        let crc = crc64(&p);
        p.extend_from_slice(&crc.to_le_bytes());
        p
    }

    fn keys() -> Vec<ExportedKey> {
        vec![
            ExportedKey {
                key: "lucid:cache:a".into(),
                kind: KeyKind::String,
                payload: dump_of(b"hello"),
                expires_at_ms: Some(1_900_000_000_123),
            },
            ExportedKey {
                key: "lucid:x:binary\r\n".into(),
                kind: KeyKind::String,
                payload: dump_of(b"\r\n*6\r\n$7\r\n\0\xff"),
                expires_at_ms: None,
            },
        ]
    }

    fn file(keys: &[ExportedKey]) -> Vec<u8> {
        let mut out = Vec::new();
        for k in keys {
            encode_restore(k, &mut out);
        }
        out
    }

    #[test]
    fn redis_crc64_matches_its_test_vector() {
        // Redis's own: crc64(0, "123456789") == 0xe9c6d914c4b8d9ca (src/crc64.c).
        assert_eq!(crc64(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    #[test]
    fn commands_round_trip_and_are_what_redis_cli_pipe_sends() {
        let keys = keys();
        let bytes = file(&keys);
        let first = std::str::from_utf8(&bytes[..64]).unwrap_or_default();
        assert!(
            first.starts_with(
                "*6\r\n$7\r\nRESTORE\r\n$13\r\nlucid:cache:a\r\n$13\r\n1900000000123\r\n$17\r\n"
            ),
            "{first:?}"
        );
        let back: Vec<ExportedKey> = RespReader::new(bytes.as_slice())
            .collect::<Result<_, _>>()
            .expect("reads");
        assert_eq!(back, keys);
        let summary = walk_resp(&mut bytes.as_slice()).expect("walks");
        assert_eq!(summary.keys, 2);
        assert_eq!(summary.by_type, BTreeMap::from([("string".to_owned(), 2)]));
        // A hand-written command: lower case, REPLACE first, no REPLACE at all.
        let payload = dump_of(b"v");
        for flags in [&["replace", "absttl"][..], &["ABSTTL"]] {
            let mut cmd = format!(
                "*{}\r\n$7\r\nrestore\r\n$7\r\nlucid:k\r\n$1\r\n0\r\n",
                4 + flags.len()
            )
            .into_bytes();
            cmd.extend_from_slice(format!("${}\r\n", payload.len()).as_bytes());
            cmd.extend_from_slice(&payload);
            cmd.extend_from_slice(b"\r\n");
            for f in flags {
                cmd.extend_from_slice(format!("${}\r\n{f}\r\n", f.len()).as_bytes());
            }
            let k = RespReader::new(cmd.as_slice())
                .next()
                .expect("one")
                .expect("valid");
            assert_eq!((k.key.as_str(), k.expires_at_ms), ("lucid:k", None));
        }
    }

    #[test]
    fn damage_is_named_with_the_command_and_its_offset() {
        let keys = keys();
        let bytes = file(&keys);
        let mut one = Vec::new();
        encode_restore(&keys[0], &mut one);
        let second = one.len() as u64;
        let mut bad_crc = bytes.clone();
        let payload_end = one.len() - "\r\n$6\r\nABSTTL\r\n$7\r\nREPLACE\r\n".len() - 1;
        bad_crc[payload_end] ^= 0x55;
        // Byte-wise: the payloads are not UTF-8.
        let replace = |from: &str, to: &str| {
            let at = bytes
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .expect("found");
            [&bytes[..at], to.as_bytes(), &bytes[at + from.len()..]].concat()
        };
        type Case = (&'static str, Vec<u8>, u64, u64, &'static str);
        let cases: Vec<Case> = vec![
            (
                "cut mid-payload",
                bytes[..one.len() + 70].to_vec(),
                2,
                second,
                "cut short in the payload",
            ),
            (
                "cut in a header",
                bytes[..one.len() + 2].to_vec(),
                2,
                second,
                "cut short in a header line",
            ),
            ("a payload whose CRC fails", bad_crc, 1, 0, "CRC-64"),
            (
                "not RESTORE",
                replace("RESTORE", "DESTROY"),
                1,
                0,
                "is not RESTORE",
            ),
            (
                "no ABSTTL",
                replace("ABSTTL", "IDLETI"),
                1,
                0,
                "only ABSTTL and REPLACE",
            ),
            (
                "a relative expiry written as text",
                replace("1900000000123", "19000000001x3"),
                1,
                0,
                "not a whole number",
            ),
            ("not RESP", b"SET a b\r\n".to_vec(), 1, 0, "expected '*'"),
            (
                "a missing CRLF",
                replace("$7\r\nRESTORE\r\n", "$7\r\nRESTOREXX"),
                1,
                0,
                "not followed by CRLF",
            ),
        ];
        for (case, bytes, item, offset, needle) in cases {
            let mut reader = RespReader::new(bytes.as_slice());
            let err = reader
                .by_ref()
                .find_map(Result::err)
                .unwrap_or_else(|| panic!("{case}: no error"));
            assert_eq!((err.item, err.offset), (item, offset), "{case}: {err}");
            assert!(err.to_string().contains(needle), "{case}: {err}");
            assert!(reader.next().is_none(), "{case}: stops after an error");
            assert!(walk_resp(&mut bytes.as_slice()).is_err(), "{case}");
        }
    }
}
