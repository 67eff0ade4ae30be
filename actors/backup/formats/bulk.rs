//! Elasticsearch's part of a backup, per index:
//!
//! - `elasticsearch/<index>.ndjson`: the documents in the `_bulk` format — for each one an
//!   action line `{"index":{"_id":"…"}}` (no `_index`: the URL names the target, so the same
//!   file loads under any name) and its source on the next line, every line ending in `\n`.
//!   `curl -XPOST host/<index>/_bulk -H 'Content-Type: application/x-ndjson' --data-binary
//!   @file` loads it; a file cut at an even line count is still whole documents.
//!   [`encode_document`] writes one document; [`BulkReader`] reads them back as the
//!   [`ExportedDocument`]s the Elasticsearch import takes.
//! - `elasticsearch/<index>.meta.json`: [`IndexBody`], the body of the `PUT /<index>` that
//!   creates the index — `settings` (without what the server owns: its uuid, creation date,
//!   version, and the write block, which would refuse the load; the manifest says whether
//!   there was one), `mappings`, `aliases` (without `is_write_index`: where the write alias
//!   points is the live cluster's business).

use std::io::{self, BufRead, BufReader, Read};

use serde_json::{Map, Value};

use super::{Counting, FormatError, fused};
use crate::search::{ExportedDocument, IndexMetadata};

/// The longest line a `_bulk` file may hold: Elasticsearch's default request limit
/// (`http.max_content_length`, 100 MB). A longer one is a damaged file.
pub const MAX_LINE: usize = 100 << 20;

/// Appends one document: its action line and its source line.
pub fn encode_document(doc: &ExportedDocument, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"index\":{\"_id\":");
    // A string always serialises; the source is the JSON the export wrote, on one line.
    let _ = serde_json::to_writer(&mut *out, &doc.id);
    out.extend_from_slice(b"}}\n");
    out.extend_from_slice(&doc.source);
    out.push(b'\n');
}

/// Reads a `_bulk` file's documents one at a time; stops after the first error. An action
/// line must be `{"index": {…}}` or `{"create": {…}}` with an `_id` (an `_index` in it is
/// ignored: the restore names the target); the next line must be a JSON object, the source.
pub struct BulkReader<R> {
    input: Counting<BufReader<R>>,
    /// Lines read so far.
    lines: u64,
    documents: u64,
    done: bool,
}

impl<R: Read> BulkReader<R> {
    pub fn new(input: R) -> Self {
        BulkReader {
            input: Counting::new(BufReader::with_capacity(64 << 10, input)),
            lines: 0,
            documents: 0,
            done: false,
        }
    }

    /// Documents read so far.
    pub fn documents(&self) -> u64 {
        self.documents
    }

    /// The next line without its `\n`, with its number and offset; `None` at the end.
    fn line(&mut self) -> Result<Option<(Vec<u8>, u64, u64)>, FormatError> {
        let number = self.lines + 1;
        let offset = self.input.offset;
        let err = |reason: String| FormatError::new("line", number, offset, reason);
        let mut line = Vec::new();
        let got = (&mut self.input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| err(e.to_string()))?;
        if got == 0 {
            return Ok(None);
        }
        self.lines = number;
        if line.pop() != Some(b'\n') {
            return Err(err(if got > MAX_LINE {
                "longer than 100 MB: not a _bulk line".to_owned()
            } else {
                "cut short: the last line has no newline".to_owned()
            }));
        }
        Ok(Some((line, number, offset)))
    }

    fn read_one(&mut self) -> Result<Option<ExportedDocument>, FormatError> {
        let Some((action, number, offset)) = self.line()? else {
            return Ok(None);
        };
        let id = action_id(&action)
            .map_err(|reason| FormatError::new("line", number, offset, reason))?;
        let Some((source, number, offset)) = self.line()? else {
            return Err(FormatError::new(
                "line",
                number + 1,
                self.input.offset,
                "cut short: an action line without its document",
            ));
        };
        check_source(&source).map_err(|reason| FormatError::new("line", number, offset, reason))?;
        self.documents += 1;
        Ok(Some(ExportedDocument { id, source }))
    }
}

impl<R: Read> Iterator for BulkReader<R> {
    type Item = Result<ExportedDocument, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let read = self.read_one();
        fused(&mut self.done, read)
    }
}

/// The `_id` of an action line; see [`BulkReader`].
fn action_id(line: &[u8]) -> Result<String, String> {
    let action: Value = serde_json::from_slice(line)
        .map_err(|e| format!("an action line that is not JSON: {e}"))?;
    let Some((verb, meta)) = action
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
    else {
        return Err("an action line must be one object with one key, index or create".to_owned());
    };
    if verb != "index" && verb != "create" {
        return Err(format!(
            "the action {verb:?}: a backup holds only index (or create) actions"
        ));
    }
    meta.get("_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("the {verb} action has no _id string"))
}

/// A source line: one JSON object.
fn check_source(line: &[u8]) -> Result<(), String> {
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("a document line that is not a JSON object".to_owned());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(line)
        .map(|_| ())
        .map_err(|e| format!("a document line that is not JSON: {e}"))
}

/// A `.ndjson` artifact's `decoded` check: every line pair, to the end; answers how many
/// documents.
pub fn walk_bulk(input: &mut dyn Read) -> io::Result<u64> {
    let mut reader = BulkReader::new(input);
    for doc in reader.by_ref() {
        doc?;
    }
    Ok(reader.documents())
}

// ---------------------------------------------------------------------------------------------
// The .meta.json file

/// An index's create body; see the module doc.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexBody {
    /// `{"index": {…}}`.
    pub settings: Value,
    pub mappings: Value,
    /// Alias name → definition.
    pub aliases: Value,
}

impl IndexBody {
    /// The body for the index the export describes, under its own name.
    pub fn from_metadata(m: &IndexMetadata) -> Self {
        let body = m.create_body("");
        IndexBody {
            settings: body["settings"].clone(),
            mappings: body["mappings"].clone(),
            aliases: body["aliases"].clone(),
        }
    }

    /// The file's bytes: the JSON body, indented (an operator reads and edits it).
    pub fn to_json(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "settings": self.settings,
            "mappings": self.mappings,
            "aliases": self.aliases,
        });
        let mut out = serde_json::to_vec_pretty(&body).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Reads a create body: a JSON object whose `settings`, `mappings` and `aliases` are
    /// objects where present.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let err = |reason: String| FormatError::new("metadata", 1, 0, reason);
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| err(format!("not JSON: {e}")))?;
        let Value::Object(mut body) = value else {
            return Err(err("not a JSON object".to_owned()));
        };
        let mut part = |name: &str| match body.remove(name) {
            None | Some(Value::Null) => Ok(Value::Object(Map::new())),
            Some(v @ Value::Object(_)) => Ok(v),
            Some(_) => Err(err(format!("{name}: not an object"))),
        };
        let (settings, mappings, aliases) =
            (part("settings")?, part("mappings")?, part("aliases")?);
        if let Some(other) = body.keys().next() {
            return Err(err(format!(
                "{other:?}: a create body holds settings, mappings and aliases only"
            )));
        }
        Ok(IndexBody {
            settings,
            mappings,
            aliases,
        })
    }

    /// What the Elasticsearch import takes to recreate `index`; `write_blocked` and
    /// `documents` come from the manifest's source facts. Settings given flat
    /// (`"index.refresh_interval"`) or bare (`"refresh_interval"`) count as under `index`.
    pub fn to_metadata(&self, index: &str, write_blocked: bool, documents: u64) -> IndexMetadata {
        let mut settings = Map::new();
        for (k, v) in self.settings.as_object().into_iter().flatten() {
            match (k.as_str(), v) {
                ("index", Value::Object(inner)) => {
                    settings.extend(inner.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                (k, v) => {
                    settings.insert(k.strip_prefix("index.").unwrap_or(k).to_owned(), v.clone());
                }
            }
        }
        IndexMetadata {
            format: crate::search::EXPORT_FORMAT,
            index: index.to_owned(),
            mappings: self.mappings.clone(),
            settings: Value::Object(settings),
            write_blocked,
            aliases: self.aliases.clone(),
            documents,
        }
    }
}

/// A `.meta.json` artifact's `decoded` check: the whole file parses.
pub fn walk_index_body(input: &mut dyn Read) -> io::Result<IndexBody> {
    let mut bytes = Vec::new();
    // Mappings and settings: kilobytes; 16 MiB is a damaged file.
    input.take(16 << 20).read_to_end(&mut bytes)?;
    Ok(IndexBody::parse(&bytes)?)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn docs() -> Vec<ExportedDocument> {
        vec![
            ExportedDocument {
                id: "s1".into(),
                source: br#"{"user_id":"u1","note":"line\nbreak \"quoted\""}"#.to_vec(),
            },
            ExportedDocument {
                id: "weird \"id\"\n".into(),
                source: b"{}".to_vec(),
            },
        ]
    }

    fn file(docs: &[ExportedDocument]) -> Vec<u8> {
        let mut out = Vec::new();
        for d in docs {
            encode_document(d, &mut out);
        }
        out
    }

    #[test]
    fn documents_round_trip_as_bulk_line_pairs() {
        let docs = docs();
        let bytes = file(&docs);
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], r#"{"index":{"_id":"s1"}}"#);
        assert_eq!(
            serde_json::from_str::<Value>(lines[2]).expect("json"),
            json!({"index": {"_id": "weird \"id\"\n"}})
        );
        let back: Vec<ExportedDocument> = BulkReader::new(bytes.as_slice())
            .collect::<Result<_, _>>()
            .expect("reads");
        assert_eq!(back, docs);
        assert_eq!(walk_bulk(&mut bytes.as_slice()).expect("walks"), 2);
        // A stock file with _index and create actions reads too.
        let stock = b"{\"create\":{\"_index\":\"x\",\"_id\":\"a\"}}\n{\"n\":1}\n";
        let d = BulkReader::new(&stock[..])
            .next()
            .expect("one")
            .expect("valid");
        assert_eq!(
            (d.id.as_str(), d.source.as_slice()),
            ("a", &b"{\"n\":1}"[..])
        );
    }

    #[test]
    fn damage_is_named_with_the_line_and_its_offset() {
        let bytes = file(&docs());
        let first_pair = file(&docs()[..1]).len() as u64;
        let action_len = br#"{"index":{"_id":"s1"}}"#.len() as u64 + 1;
        let swap = |from: &str, to: &str| {
            String::from_utf8_lossy(&bytes)
                .replacen(from, to, 1)
                .into_bytes()
        };
        type Case = (&'static str, Vec<u8>, u64, u64, &'static str);
        let cases: Vec<Case> = vec![
            (
                "a source line that is not JSON",
                swap("\"user_id\":\"u1\"", "\"user_id\":u1"),
                2,
                action_len,
                "not JSON",
            ),
            (
                "cut after an action line",
                bytes[..(first_pair + 10) as usize].to_vec(),
                3,
                first_pair,
                "no newline",
            ),
            (
                "cut between the lines of a pair",
                bytes[..action_len as usize].to_vec(),
                2,
                action_len,
                "without its document",
            ),
            (
                "a delete action",
                swap("index", "delete"),
                1,
                0,
                "only index",
            ),
            ("no _id", swap("_id", "_ix"), 1, 0, "no _id"),
            (
                "a source that is an array",
                swap(
                    "{\"user_id\":\"u1\",\"note\":\"line\\nbreak \\\"quoted\\\"\"}",
                    "[1]",
                ),
                2,
                action_len,
                "not a JSON object",
            ),
        ];
        for (case, bytes, item, offset, needle) in cases {
            let mut reader = BulkReader::new(bytes.as_slice());
            let err = reader
                .by_ref()
                .find_map(Result::err)
                .unwrap_or_else(|| panic!("{case}: no error"));
            assert_eq!((err.item, err.offset), (item, offset), "{case}: {err}");
            assert!(err.to_string().contains(needle), "{case}: {err}");
            assert!(
                err.to_string().starts_with(&format!("line {item} ")),
                "{case}: {err}"
            );
            assert!(reader.next().is_none(), "{case}: stops after an error");
            assert!(walk_bulk(&mut bytes.as_slice()).is_err(), "{case}");
        }
    }

    #[test]
    fn the_create_body_round_trips_to_what_the_import_takes() {
        let meta = IndexMetadata {
            format: crate::search::EXPORT_FORMAT,
            index: "lucid-blocks-2026.10".into(),
            mappings: json!({"dynamic": "strict", "properties": {"height": {"type": "long"}}}),
            settings: json!({"number_of_shards": "1", "refresh_interval": "1s"}),
            write_blocked: true,
            aliases: json!({"lucid-blocks": {}}),
            documents: 9,
        };
        let body = IndexBody::from_metadata(&meta);
        let bytes = body.to_json();
        let parsed: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(
            parsed,
            json!({
                "settings": {"index": {"number_of_shards": "1", "refresh_interval": "1s"}},
                "mappings": meta.mappings,
                "aliases": {"lucid-blocks": {}},
            })
        );
        let back = IndexBody::parse(&bytes).expect("parses");
        assert_eq!(back, body);
        assert_eq!(back.to_metadata("lucid-blocks-2026.10", true, 9), meta);
        // Flat and bare settings count as under `index`.
        let flat = IndexBody::parse(
            br#"{"settings":{"index.number_of_shards":"1","refresh_interval":"1s"}}"#,
        )
        .expect("flat");
        assert_eq!(
            flat.to_metadata("x", false, 0).settings,
            json!({"number_of_shards": "1", "refresh_interval": "1s"})
        );
        for (case, bytes, needle) in [
            ("not JSON", &b"{"[..], "not JSON"),
            ("an array", &b"[]"[..], "not a JSON object"),
            (
                "mappings not an object",
                &br#"{"mappings":[]}"#[..],
                "mappings",
            ),
            (
                "an unknown part",
                &br#"{"settings":{},"template":{}}"#[..],
                "\"template\"",
            ),
        ] {
            let err = IndexBody::parse(bytes).expect_err(case);
            assert!(err.to_string().contains(needle), "{case}: {err}");
        }
    }
}
