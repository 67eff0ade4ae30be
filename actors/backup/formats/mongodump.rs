//! mongodump's directory layout for one collection, so `mongorestore --dir` (and `bsondump`,
//! and any BSON reader) can read a backup without lucid-db:
//!
//! - `<db>/<coll>.bson`: the documents, each exactly as the server stored it (the export hands
//!   over raw BSON), one after another — nothing between them, nothing around them.
//!   [`encode_document`] writes one; [`BsonReader`] reads them back, checking each one's
//!   length and every element down to the last nested one.
//! - `<db>/<coll>.metadata.json`: [`CollectionMetadata`], in the shape mongodump 100.x writes
//!   (`{"options": …, "indexes": […], "collectionName": …, "type": "collection"}`, canonical
//!   Extended JSON v2 on one line): `options` holds the validator, `validationLevel` and
//!   `validationAction` — the server's where it keeps them, else `configs/mongodb/`'s (the
//!   export decides) —, and `indexes` listIndexes' shape (`v`, `key`, `name`, then the
//!   options), `_id_` first. No `uuid`: a restore makes a new collection, and mongodump leaves
//!   it out too when the server reports none.

use std::io::{self, Read};

use mongodb::bson::{self, Bson, Document, RawBsonRef, RawDocument, RawDocumentBuf, doc};

use super::{Counting, FormatError, fused};
use crate::mongo::ExportMetadata;

/// The largest document a `.bson` file may hold: MongoDB's 16 MiB limit plus the 16 KiB the
/// server allows itself. A length field above it is a damaged file, not a document.
pub const MAX_DOCUMENT: usize = 16 * 1024 * 1024 + 16 * 1024;
/// How deep documents nest at most before the walk calls the file damaged (MongoDB stops at
/// 100 levels).
const MAX_DEPTH: usize = 200;
/// The index every collection has; the server makes it, so a restore leaves it out.
pub const ID_INDEX: &str = "_id_";
/// The index version listIndexes reports for every index since MongoDB 3.4.
const INDEX_VERSION: i32 = 2;

// ---------------------------------------------------------------------------------------------
// The .bson file

/// Appends one document to a `.bson` file's bytes.
pub fn encode_document(doc: &RawDocumentBuf, out: &mut Vec<u8>) {
    out.extend_from_slice(doc.as_bytes());
}

/// Reads a `.bson` file's documents one at a time; stops after the first error. Each document
/// is checked whole: its length, its terminator, and every element (nested documents and
/// arrays too), so a document that parses here inserts anywhere.
pub struct BsonReader<R> {
    input: Counting<R>,
    documents: u64,
    done: bool,
}

impl<R: Read> BsonReader<R> {
    pub fn new(input: R) -> Self {
        BsonReader {
            input: Counting::new(input),
            documents: 0,
            done: false,
        }
    }

    /// Documents read so far.
    pub fn documents(&self) -> u64 {
        self.documents
    }

    fn read_one(&mut self) -> Result<Option<RawDocumentBuf>, FormatError> {
        let item = self.documents + 1;
        let start = self.input.offset;
        let err = |reason: String| FormatError::new("document", item, start, reason);
        let mut len = [0u8; 4];
        let got = self.input.fill(&mut len).map_err(|e| err(e.to_string()))?;
        if got == 0 {
            return Ok(None);
        }
        if got < len.len() {
            return Err(err(format!(
                "cut short in its length field: {got} of 4 bytes"
            )));
        }
        let declared = i32::from_le_bytes(len);
        let size = usize::try_from(declared)
            .ok()
            .filter(|n| (5..=MAX_DOCUMENT).contains(n))
            .ok_or_else(|| {
                err(format!(
                    "its length field says {declared} bytes: not a BSON document (5 bytes to \
                     16 MiB)"
                ))
            })?;
        let body = self
            .input
            .take_vec(size - 4)
            .map_err(|e| err(e.to_string()))?;
        if body.len() < size - 4 {
            return Err(err(format!(
                "cut short: {} of {size} bytes",
                body.len() + 4
            )));
        }
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&len);
        bytes.extend_from_slice(&body);
        let doc = RawDocumentBuf::from_bytes(bytes).map_err(|e| err(e.to_string()))?;
        check_elements(&doc, 0).map_err(err)?;
        self.documents += 1;
        Ok(Some(doc))
    }
}

impl<R: Read> Iterator for BsonReader<R> {
    type Item = Result<RawDocumentBuf, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let read = self.read_one();
        fused(&mut self.done, read)
    }
}

/// Every element of `doc`, recursively: a key, a type byte and a value the type's rules allow.
fn check_elements(doc: &RawDocument, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested more than {MAX_DEPTH} levels deep"));
    }
    for element in doc.iter() {
        let (key, value) = element.map_err(|e| e.to_string())?;
        check_value(value, depth).map_err(|e| format!("field {key:?}: {e}"))?;
    }
    Ok(())
}

fn check_value(value: RawBsonRef<'_>, depth: usize) -> Result<(), String> {
    match value {
        RawBsonRef::Document(d) => check_elements(d, depth + 1),
        RawBsonRef::Array(a) => {
            for (i, item) in a.into_iter().enumerate() {
                let item = item.map_err(|e| format!("item {i}: {e}"))?;
                check_value(item, depth + 1).map_err(|e| format!("item {i}: {e}"))?;
            }
            Ok(())
        }
        RawBsonRef::JavaScriptCodeWithScope(c) => check_elements(c.scope, depth + 1),
        _ => Ok(()),
    }
}

/// A `.bson` artifact's `decoded` check: every document, to the end; answers how many.
pub fn walk_bson(input: &mut dyn Read) -> io::Result<u64> {
    let mut reader = BsonReader::new(input);
    for doc in reader.by_ref() {
        doc?;
    }
    Ok(reader.documents())
}

// ---------------------------------------------------------------------------------------------
// The .metadata.json file

/// A collection's `<coll>.metadata.json`; see the module doc.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionMetadata {
    pub collection_name: String,
    /// `validator`, `validationLevel`, `validationAction`: the `create` options.
    pub options: Document,
    /// listIndexes' shape: `v`, `key`, `name`, then the options; `_id_` first.
    pub indexes: Vec<Document>,
    /// mongodump's `type`: always `collection` for a Lucid collection.
    pub kind: String,
}

impl CollectionMetadata {
    /// What mongodump would write for the collection the export describes.
    pub fn from_export(m: &ExportMetadata) -> Self {
        let mut indexes = vec![doc! {
            "v": INDEX_VERSION,
            "key": {"_id": 1},
            "name": ID_INDEX,
        }];
        for spec in &m.indexes {
            // listIndexes' order: v, key, name, then the rest as created.
            let mut index = doc! {"v": INDEX_VERSION};
            for field in ["key", "name"] {
                if let Some(v) = spec.get(field) {
                    index.insert(field, v.clone());
                }
            }
            for (k, v) in spec {
                if !matches!(k.as_str(), "key" | "name" | "v") {
                    index.insert(k.clone(), v.clone());
                }
            }
            indexes.push(index);
        }
        CollectionMetadata {
            collection_name: m.collection.clone(),
            options: doc! {
                "validator": m.validator.clone(),
                "validationLevel": m.validation_level.clone(),
                "validationAction": m.validation_action.clone(),
            },
            indexes,
            kind: "collection".to_owned(),
        }
    }

    /// The file's bytes: canonical Extended JSON on one line, as mongodump writes it.
    pub fn to_json(&self) -> Vec<u8> {
        let document = doc! {
            "options": self.options.clone(),
            "indexes": self.indexes.iter().cloned().map(Bson::Document).collect::<Vec<_>>(),
            "collectionName": self.collection_name.clone(),
            "type": self.kind.clone(),
        };
        // A serde_json::Value always serialises.
        serde_json::to_vec(&Bson::Document(document).into_canonical_extjson()).unwrap_or_default()
    }

    /// Reads a metadata file, mongodump's or ours: Extended JSON (canonical or relaxed) with
    /// `collectionName` and `indexes` (each with `key` and `name`); `options` and `type` may be
    /// absent.
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let err = |reason: String| FormatError::new("metadata", 1, 0, reason);
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| err(format!("not JSON: {e}")))?;
        let Bson::Document(d) =
            Bson::try_from(value).map_err(|e| err(format!("not Extended JSON: {e}")))?
        else {
            return Err(err("not a JSON object".to_owned()));
        };
        let collection_name = d
            .get_str("collectionName")
            .map_err(|_| err("collectionName: missing, or not a string".to_owned()))?
            .to_owned();
        let options = match d.get("options") {
            None | Some(Bson::Null) => Document::new(),
            Some(Bson::Document(o)) => o.clone(),
            Some(_) => return Err(err("options: not an object".to_owned())),
        };
        let list = d
            .get_array("indexes")
            .map_err(|_| err("indexes: missing, or not an array".to_owned()))?;
        let mut indexes = Vec::with_capacity(list.len());
        for (i, index) in list.iter().enumerate() {
            let Bson::Document(index) = index else {
                return Err(err(format!("indexes.{i}: not an object")));
            };
            if index.get_document("key").is_err() || index.get_str("name").is_err() {
                return Err(err(format!("indexes.{i}: needs a key object and a name")));
            }
            indexes.push(index.clone());
        }
        let kind = match d.get("type") {
            None => "collection".to_owned(),
            Some(Bson::String(t)) => t.clone(),
            Some(_) => return Err(err("type: not a string".to_owned())),
        };
        Ok(CollectionMetadata {
            collection_name,
            options,
            indexes,
            kind,
        })
    }

    /// The index names, `_id_` included, in the file's order.
    pub fn index_names(&self) -> Vec<String> {
        self.indexes
            .iter()
            .filter_map(|i| i.get_str("name").ok().map(str::to_owned))
            .collect()
    }

    /// What the MongoDB import takes to recreate the collection in `database`: the validator
    /// and its level and action (MongoDB's defaults, `strict` and `error`, where absent), and
    /// the indexes as `createIndexes` entries — without `_id_`, which the server makes, and
    /// without `v`, which it sets. `documents` and `exported_at` come from the manifest.
    pub fn to_export(
        &self,
        database: &str,
        documents: u64,
        exported_at: bson::DateTime,
    ) -> ExportMetadata {
        let text = |k: &str, default: &str| {
            self.options
                .get_str(k)
                .map_or_else(|_| default.to_owned(), str::to_owned)
        };
        ExportMetadata {
            format: crate::mongo::EXPORT_FORMAT,
            database: database.to_owned(),
            collection: self.collection_name.clone(),
            validator: self
                .options
                .get_document("validator")
                .cloned()
                .unwrap_or_default(),
            validation_level: text("validationLevel", "strict"),
            validation_action: text("validationAction", "error"),
            indexes: self
                .indexes
                .iter()
                .filter(|i| i.get_str("name") != Ok(ID_INDEX))
                .map(|i| {
                    let mut i = i.clone();
                    i.remove("v");
                    i
                })
                .collect(),
            documents,
            exported_at,
        }
    }
}

/// A `.metadata.json` artifact's `decoded` check: the whole file parses; answers it.
pub fn walk_metadata(input: &mut dyn Read) -> io::Result<CollectionMetadata> {
    let mut bytes = Vec::new();
    // A metadata file holds a validator and index specs: kilobytes. 16 MiB is a damaged file.
    input.take(16 << 20).read_to_end(&mut bytes)?;
    Ok(CollectionMetadata::parse(&bytes)?)
}

#[cfg(test)]
mod tests {
    use mongodb::bson::oid::ObjectId;
    use mongodb::bson::{Binary, DateTime, spec::BinarySubtype};

    use super::*;

    /// Every BSON type a Lucid document may hold (and nx-27017 stores), nested.
    fn documents() -> Vec<RawDocumentBuf> {
        let id = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").expect("oid");
        [
            doc! {"_id": id, "email": "a@example.org", "n": 1_i32, "big": 1_i64 << 40,
            "f": 2.5, "ok": true, "none": Bson::Null,
            "at": DateTime::from_millis(1_700_000_000_123),
            "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 2, 255] },
            "nested": {"a": [1, "two", {"three": 3}], "empty": {}}},
            doc! {"_id": "s-2", "tags": ["x", "y"], "unicode": "grüße ✓"},
            doc! {},
        ]
        .iter()
        .map(|d| RawDocumentBuf::from_document(d).expect("raw"))
        .collect()
    }

    fn file(docs: &[RawDocumentBuf]) -> Vec<u8> {
        let mut out = Vec::new();
        for d in docs {
            encode_document(d, &mut out);
        }
        out
    }

    #[test]
    fn documents_round_trip_byte_for_byte() {
        let docs = documents();
        let bytes = file(&docs);
        let back: Vec<RawDocumentBuf> = BsonReader::new(bytes.as_slice())
            .collect::<Result<_, _>>()
            .expect("reads");
        assert_eq!(back, docs);
        assert_eq!(walk_bson(&mut bytes.as_slice()).expect("walks"), 3);
        assert_eq!(walk_bson(&mut &b""[..]).expect("an empty file"), 0);
    }

    #[test]
    fn damage_is_named_with_the_document_and_its_offset() {
        let docs = documents();
        let bytes = file(&docs);
        let first = docs[0].as_bytes().len();
        let second = docs[1].as_bytes().len();
        let mut bad_type = bytes.clone();
        // The second document's first element type byte: 0x42 is no BSON type.
        bad_type[first + 4] = 0x42;
        let mut huge = bytes.clone();
        huge[first..first + 4].copy_from_slice(&(64_i32 << 20).to_le_bytes());
        let mut no_terminator = bytes.clone();
        no_terminator[first + second - 1] = 7;
        type Case = (&'static str, Vec<u8>, u64, u64, &'static str);
        let cases: Vec<Case> = vec![
            (
                "cut mid-document",
                bytes[..first + 10].to_vec(),
                2,
                first as u64,
                "cut short: 10 of",
            ),
            (
                "cut in the length field",
                bytes[..first + 2].to_vec(),
                2,
                first as u64,
                "cut short in its length field: 2 of 4",
            ),
            ("a bad type byte", bad_type, 2, first as u64, ""),
            (
                "a length beyond 16 MiB",
                huge,
                2,
                first as u64,
                "not a BSON document",
            ),
            ("no terminator", no_terminator, 2, first as u64, ""),
            (
                "not BSON at all",
                b"hello, world".to_vec(),
                1,
                0,
                "length field says",
            ),
        ];
        for (case, bytes, item, offset, needle) in cases {
            let mut reader = BsonReader::new(bytes.as_slice());
            let err = reader
                .by_ref()
                .find_map(Result::err)
                .unwrap_or_else(|| panic!("{case}: no error"));
            assert_eq!((err.item, err.offset), (item, offset), "{case}: {err}");
            assert!(err.to_string().contains(needle), "{case}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("document {item} (at byte {offset})")),
                "{case}: {err}"
            );
            assert!(reader.next().is_none(), "{case}: it stops after an error");
            let io = walk_bson(&mut bytes.as_slice()).expect_err(case);
            assert_eq!(io.kind(), io::ErrorKind::InvalidData, "{case}");
        }
    }

    fn export() -> ExportMetadata {
        ExportMetadata {
            format: crate::mongo::EXPORT_FORMAT,
            database: "lucid".into(),
            collection: "users".into(),
            validator: doc! {"$jsonSchema": {
                "bsonType": "object",
                "required": ["email", "created_at"],
                "properties": {
                    "email": {"bsonType": "string", "maxLength": 254},
                    "created_at": {"bsonType": "date"},
                },
            }},
            validation_level: "strict".into(),
            validation_action: "error".into(),
            indexes: vec![
                doc! {"key": {"email": 1}, "name": "users_email_unique", "unique": true},
                doc! {"key": {"created_at": -1}, "name": "users_created_at_desc"},
                doc! {"key": {"last_seen": 1}, "name": "users_last_seen_ttl",
                "expireAfterSeconds": 86_400_i64},
            ],
            documents: 3,
            exported_at: DateTime::from_millis(1_700_000_000_000),
        }
    }

    /// The golden file is what mongodump writes for such a collection, by MongoDB's
    /// documentation of its output (and mongo-tools' own test data): one line of canonical
    /// Extended JSON, `options` first, listIndexes' index documents with `_id_` first, then
    /// `collectionName` and `type`. The integration test reads the same file with pymongo.
    const GOLDEN: &str = include_str!("golden/users.metadata.json");

    #[test]
    fn metadata_is_written_as_mongodump_writes_it() {
        let meta = CollectionMetadata::from_export(&export());
        let written = String::from_utf8(meta.to_json()).expect("utf-8");
        assert_eq!(written, GOLDEN.trim_end(), "the golden file");
        assert_eq!(
            meta.index_names(),
            [
                "_id_",
                "users_email_unique",
                "users_created_at_desc",
                "users_last_seen_ttl"
            ]
        );
        // Read back, it is what the import takes.
        let back = CollectionMetadata::parse(GOLDEN.as_bytes()).expect("parses");
        assert_eq!(back, meta);
        assert_eq!(
            back.to_export("lucid", 3, DateTime::from_millis(1_700_000_000_000)),
            export()
        );
    }

    #[test]
    fn metadata_from_mongodump_itself_is_read_and_bad_files_are_named() {
        // mongodump's own output for a plain collection (relaxed numbers, a uuid, no type):
        // read, and the restore gets MongoDB's defaults for what is absent.
        let stock = br#"{"options":{},"indexes":[{"v":2,"key":{"_id":1},"name":"_id_"},
            {"v":2,"key":{"ts":1},"name":"ts_1","expireAfterSeconds":3600}],
            "uuid":"0f3b9a4c2d1e4f5a8b7c6d5e4f3a2b1c","collectionName":"audit_logs"}"#;
        let m = CollectionMetadata::parse(stock).expect("stock metadata");
        assert_eq!(m.kind, "collection");
        let e = m.to_export("other", 0, DateTime::from_millis(0));
        assert_eq!(
            (e.database.as_str(), e.collection.as_str()),
            ("other", "audit_logs")
        );
        assert_eq!(
            (e.validation_level.as_str(), e.validation_action.as_str()),
            ("strict", "error")
        );
        assert_eq!(
            e.indexes,
            vec![doc! {"key": {"ts": 1}, "name": "ts_1", "expireAfterSeconds": 3600}]
        );

        for (case, bytes, needle) in [
            ("not JSON", &b"{\"options\":"[..], "not JSON"),
            ("no name", &br#"{"indexes":[]}"#[..], "collectionName"),
            ("no indexes", &br#"{"collectionName":"x"}"#[..], "indexes"),
            (
                "an index without a key",
                &br#"{"collectionName":"x","indexes":[{"name":"a"}]}"#[..],
                "indexes.0",
            ),
            (
                "bad extended JSON",
                &br#"{"collectionName":"x","indexes":[],"n":{"$numberInt":"x"}}"#[..],
                "Extended JSON",
            ),
        ] {
            let err = CollectionMetadata::parse(bytes).expect_err(case);
            assert!(err.to_string().contains(needle), "{case}: {err}");
            assert!(err.to_string().starts_with("metadata 1"), "{case}: {err}");
        }
    }
}
