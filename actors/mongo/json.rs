//! The operations for callers that speak JSON — the HTTP API, the CLI — and name no driver
//! type: documents, filters, updates and pipelines go in and come out as MongoDB Extended JSON
//! v2 (`serde_json::Value`). Each converts its input to BSON here and then runs as its typed
//! twin in [`super::crud`] does: the same schema check, the same refusals, the same errors.
//!
//! In: Extended JSON, relaxed or canonical, mixed as you like — `{"$oid": "…"}`,
//! `{"$date": "2026-01-02T03:04:05Z"}` or `{"$date": {"$numberLong": "…"}}`,
//! `{"$numberLong": "…"}`, `{"$numberDecimal": "…"}`, `{"$binary": …}`. A plain JSON number is
//! an int where it fits in 32 bits, else a long, else a double (the schemas accept either int
//! or long where large numbers belong). Out: relaxed — ObjectIds `{"$oid"}`, dates from 1970 to
//! 9999 `{"$date": "RFC 3339"}` (others `{"$date": {"$numberLong"}}`), ints and longs plain
//! numbers, decimals `{"$numberDecimal"}`.
//!
//! Refused before anything is sent, as `Invalid` naming the field the way the typed operation
//! names it (`filter.created_at`, `documents.1.email`, `update.$set.role`; a single document's
//! own fields bare):
//! - input that is not Extended JSON (`{"$oid": "zz"}`, `{"$numberLong": 5}`), and a document,
//!   filter, update, projection, sort or stage that is not a JSON object;
//! - in a filter (and a `$match` stage), an operator MongoDB's query language does not have
//!   (`{"age": {"$gtt": 1}}`): input from outside, so a typo is named here rather than left to
//!   the server's "unknown operator". Inside `$expr`, `$jsonSchema` and `$text` anything goes
//!   (aggregation expressions and schema keywords), but JavaScript, as everywhere;
//! - everything the typed operation refuses.

use std::future::Future;
use std::sync::Arc;

use actix::Message;
use futures_util::future::Either;
use mongodb::bson::{Bson, Document};
use serde::Serialize;
use serde_json::Value;

use super::collections::Collection;
use super::crud::{
    Aggregate, Count, DeleteMany, DeleteOne, Find, InsertMany, InsertOne, UpdateMany, UpdateOne,
    UpdateSummary, stream,
};
use super::{Conn, MongoError, MongoOp, Shared, sealed};
use crate::supervisor::feed::Feed;
use crate::supervisor::link::OpFuture;

// ---------------------------------------------------------------------------------------------
// Conversion

/// The keys that make a JSON object one Extended JSON value rather than a document.
const TYPE_KEYS: &[&str] = &[
    "$oid",
    "$symbol",
    "$regularExpression",
    "$numberInt",
    "$numberLong",
    "$numberDouble",
    "$numberDecimal",
    "$binary",
    "$uuid",
    "$code",
    "$timestamp",
    "$date",
    "$minKey",
    "$maxKey",
    "$dbPointer",
    "$undefined",
];

/// A dotted path to the value being converted or checked: the name errors give.
struct Path(Vec<String>);

impl Path {
    fn new(root: &str) -> Path {
        Path(if root.is_empty() {
            Vec::new()
        } else {
            vec![root.to_owned()]
        })
    }

    fn within<T>(&mut self, segment: impl Into<String>, f: impl FnOnce(&mut Path) -> T) -> T {
        self.0.push(segment.into());
        let out = f(self);
        self.0.pop();
        out
    }

    /// The field an error names; `whole` when the path is the root of a bare document.
    fn field(&self, whole: &str) -> String {
        if self.0.is_empty() {
            whole.to_owned()
        } else {
            self.0.join(".")
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> MongoError {
        MongoError::invalid(self.field("document"), reason)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn to_bson(value: Value, at: &mut Path) -> Result<Bson, MongoError> {
    match value {
        Value::Object(map) if !map.keys().any(|k| TYPE_KEYS.contains(&k.as_str())) => {
            let mut doc = Document::new();
            for (key, value) in map {
                let value = at.within(key.as_str(), |at| to_bson(value, at))?;
                doc.insert(key, value);
            }
            Ok(Bson::Document(doc))
        }
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| at.within(i.to_string(), |at| to_bson(v, at)))
            .collect::<Result<Vec<_>, _>>()
            .map(Bson::Array),
        value => {
            Bson::try_from(value).map_err(|e| at.invalid(format!("not valid Extended JSON: {e}")))
        }
    }
}

/// A JSON object as a BSON document; `root` is how errors name it (`filter`, `documents.1`;
/// empty for a single document, whose fields are named bare as the schema check names them).
fn document(root: &str, value: Value) -> Result<Document, MongoError> {
    let mut at = Path::new(root);
    match value {
        Value::Object(_) => match to_bson(value, &mut at)? {
            Bson::Document(doc) => Ok(doc),
            // An object with a type key is one value, not a document.
            other => Err(at.invalid(format!(
                "must be a document, found an Extended JSON {:?} value",
                other.element_type()
            ))),
        },
        other => Err(at.invalid(format!("must be a JSON object, found {}", kind(&other)))),
    }
}

fn optional(root: &str, value: Option<Value>) -> Result<Option<Document>, MongoError> {
    value.map(|v| document(root, v)).transpose()
}

/// A filter: converted, and its operators checked (see the module doc).
fn filter(root: &str, value: Value) -> Result<Document, MongoError> {
    let doc = document(root, value)?;
    check_filter(&doc, &mut Path::new(root))?;
    Ok(doc)
}

/// A value as relaxed Extended JSON v2.
pub(crate) fn relaxed(value: Bson) -> Value {
    value.into_relaxed_extjson()
}

fn relaxed_doc(doc: Document) -> Value {
    Bson::Document(doc).into_relaxed_extjson()
}

// ---------------------------------------------------------------------------------------------
// Query operators

/// Where a filter may use an operator in a field's place: logic, and what is not a filter.
const TOP_LEVEL_OPERATORS: &[&str] = &[
    "$and",
    "$or",
    "$nor",
    "$expr",
    "$jsonSchema",
    "$text",
    "$comment",
    "$sampleRate",
    // Refused as JavaScript by the typed check, with its own message.
    "$where",
];

/// The operators on a field (MongoDB's query and projection operators reference, 7.0).
const FIELD_OPERATORS: &[&str] = &[
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$not",
    "$exists",
    "$type",
    "$mod",
    "$regex",
    "$options",
    "$all",
    "$elemMatch",
    "$size",
    "$bitsAllClear",
    "$bitsAllSet",
    "$bitsAnyClear",
    "$bitsAnySet",
    "$geoWithin",
    "$geoIntersects",
    "$near",
    "$nearSphere",
    // Beside a legacy `$near: [x, y]`.
    "$maxDistance",
    "$minDistance",
];

/// Inside `$geoWithin`, `$geoIntersects`, `$near` and `$nearSphere`.
const GEO_OPERATORS: &[&str] = &[
    "$geometry",
    "$maxDistance",
    "$minDistance",
    "$box",
    "$center",
    "$centerSphere",
    "$polygon",
    "$uniqueDocs",
];

fn unknown(at: &Path, allowed: &str) -> MongoError {
    at.invalid(format!(
        "unknown query operator (those allowed here: {allowed})"
    ))
}

fn check_filter(filter: &Document, at: &mut Path) -> Result<(), MongoError> {
    for (key, value) in filter {
        at.within(key.as_str(), |at| {
            if key.starts_with('$') {
                match key.as_str() {
                    "$and" | "$or" | "$nor" => {
                        let Bson::Array(clauses) = value else {
                            return Err(at.invalid("must be an array of filters"));
                        };
                        for (i, clause) in clauses.iter().enumerate() {
                            at.within(i.to_string(), |at| match clause {
                                Bson::Document(d) => check_filter(d, at),
                                _ => Err(at.invalid("must be a filter document")),
                            })?;
                        }
                        Ok(())
                    }
                    k if TOP_LEVEL_OPERATORS.contains(&k) => Ok(()),
                    _ => Err(unknown(at, &TOP_LEVEL_OPERATORS.join(", "))),
                }
            } else {
                match value {
                    Bson::Document(ops) if is_operators(ops) => check_operators(ops, at),
                    _ => Ok(()),
                }
            }
        })?;
    }
    Ok(())
}

/// A document whose first key is an operator is operators throughout (as MongoDB reads it).
fn is_operators(doc: &Document) -> bool {
    doc.keys().next().is_some_and(|k| k.starts_with('$'))
}

fn check_operators(ops: &Document, at: &mut Path) -> Result<(), MongoError> {
    for (op, arg) in ops {
        at.within(op.as_str(), |at| {
            if !FIELD_OPERATORS.contains(&op.as_str()) {
                return Err(unknown(at, "$eq, $ne, $gt, $gte, $lt, $lte, $in, $nin, $not, $exists, $type, $mod, $regex, $all, $elemMatch, $size, $bits…, $geo…, $near…"));
            }
            match (op.as_str(), arg) {
                ("$not", Bson::Document(d)) => check_operators(d, at),
                ("$elemMatch", Bson::Document(d)) if is_operators(d) => check_operators(d, at),
                ("$elemMatch", Bson::Document(d)) => check_filter(d, at),
                ("$geoWithin" | "$geoIntersects" | "$near" | "$nearSphere", Bson::Document(d)) => {
                    for key in d.keys().filter(|k| k.starts_with('$')) {
                        if !GEO_OPERATORS.contains(&key.as_str()) {
                            return Err(at.within(key.as_str(), |at| {
                                unknown(at, &GEO_OPERATORS.join(", "))
                            }));
                        }
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        })?;
    }
    Ok(())
}

/// A pipeline: every stage a document, `$match` stages checked as filters.
fn pipeline(stages: Vec<Value>) -> Result<Vec<Document>, MongoError> {
    stages
        .into_iter()
        .enumerate()
        .map(|(i, stage)| {
            let root = format!("pipeline.{i}");
            let stage = document(&root, stage)?;
            if let Ok(matched) = stage.get_document("$match") {
                check_filter(matched, &mut Path::new(&format!("{root}.$match")))?;
            }
            Ok(stage)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Operations

/// What a JSON operation runs once its input is converted: its typed twin, the twin's answer
/// passed through `answer` (to relaxed Extended JSON, where it holds BSON).
fn twin<M: MongoOp, T: Send + 'static>(
    typed: M,
    conn: Conn,
    shared: &Arc<Shared>,
    answer: fn(M::Output) -> T,
) -> Result<impl Future<Output = Result<T, MongoError>> + Send + 'static, MongoError> {
    let run = typed.start(conn, shared)?;
    Ok(async move { run.await.map(answer) })
}

/// A query ([`Find`]) in JSON: answers the documents as relaxed Extended JSON, as a [`Feed`]
/// (streamed like `Find`'s).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Feed<Value, MongoError>, MongoError>")]
pub struct FindJson {
    pub collection: Collection,
    pub filter: Value,
    pub projection: Option<Value>,
    pub sort: Option<Value>,
    pub skip: Option<u64>,
    pub limit: Option<i64>,
}

impl sealed::Sealed for FindJson {}

impl MongoOp for FindJson {
    type Output = Feed<Value, MongoError>;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let find = Find {
            collection: self.collection,
            filter: filter("filter", self.filter)?,
            projection: optional("projection", self.projection)?,
            sort: optional("sort", self.sort)?,
            skip: self.skip,
            limit: self.limit,
        };
        stream(find, conn, shared, relaxed_doc)
    }
}

/// How many documents match a JSON filter ([`Count`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<u64, MongoError>")]
pub struct CountJson {
    pub collection: Collection,
    pub filter: Value,
}

impl sealed::Sealed for CountJson {}

impl MongoOp for CountJson {
    type Output = u64;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let filter = filter("filter", self.filter)?;
        Count {
            collection: self.collection,
            filter,
        }
        .start(conn, shared)
    }
}

/// Inserts one JSON document ([`InsertOne`], schema-checked); answers its `_id` as relaxed
/// Extended JSON.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Value, MongoError>")]
pub struct InsertJson {
    pub collection: Collection,
    pub document: Value,
}

impl sealed::Sealed for InsertJson {}

impl MongoOp for InsertJson {
    type Output = Value;
    const WRITES: bool = true;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let document = document("", self.document)?;
        let collection = self.collection;
        twin(
            InsertOne {
                collection,
                document,
            },
            conn,
            shared,
            relaxed,
        )
    }
}

/// Inserts JSON documents in one request ([`InsertMany`], each schema-checked); answers their
/// `_id`s in order.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<Value>, MongoError>")]
pub struct InsertManyJson {
    pub collection: Collection,
    pub documents: Vec<Value>,
    /// Stop at the first failure (the documents before it are inserted), or try every one.
    pub ordered: bool,
}

impl sealed::Sealed for InsertManyJson {}

impl MongoOp for InsertManyJson {
    type Output = Vec<Value>;
    const WRITES: bool = true;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let documents = self
            .documents
            .into_iter()
            .enumerate()
            .map(|(i, d)| document(&format!("documents.{i}"), d))
            .collect::<Result<Vec<_>, _>>()?;
        let insert = InsertMany {
            collection: self.collection,
            documents,
            ordered: self.ordered,
        };
        twin(insert, conn, shared, |ids| {
            ids.into_iter().map(relaxed).collect()
        })
    }
}

/// What an update did, with the upserted `_id` as relaxed Extended JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonUpdateSummary {
    pub matched: u64,
    pub modified: u64,
    /// The new document's `_id` when an upsert inserted one.
    pub upserted_id: Option<Value>,
}

impl From<UpdateSummary> for JsonUpdateSummary {
    fn from(s: UpdateSummary) -> Self {
        JsonUpdateSummary {
            matched: s.matched,
            modified: s.modified,
            upserted_id: s.upserted_id.map(relaxed),
        }
    }
}

/// Updates the documents matching a JSON filter ([`UpdateOne`], or [`UpdateMany`] with
/// `many`): operators only, `$set` values schema-checked.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<JsonUpdateSummary, MongoError>")]
pub struct UpdateJson {
    pub collection: Collection,
    pub filter: Value,
    /// Operators only (`$set`, `$inc`, …).
    pub update: Value,
    pub upsert: bool,
    /// Every matching document; else the first.
    pub many: bool,
}

impl sealed::Sealed for UpdateJson {}

impl MongoOp for UpdateJson {
    type Output = JsonUpdateSummary;
    const WRITES: bool = true;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let (collection, upsert) = (self.collection, self.upsert);
        let filter = filter("filter", self.filter)?;
        let update = document("update", self.update)?;
        let answer = JsonUpdateSummary::from;
        Ok(if self.many {
            let many = UpdateMany {
                collection,
                filter,
                update,
                upsert,
            };
            Either::Left(twin(many, conn, shared, answer)?)
        } else {
            let one = UpdateOne {
                collection,
                filter,
                update,
                upsert,
            };
            Either::Right(twin(one, conn, shared, answer)?)
        })
    }
}

/// Deletes the documents matching a JSON filter ([`DeleteOne`], or [`DeleteMany`] with
/// `many`); answers how many.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<u64, MongoError>")]
pub struct DeleteJson {
    pub collection: Collection,
    pub filter: Value,
    /// Every matching document; else the first.
    pub many: bool,
}

impl sealed::Sealed for DeleteJson {}

impl MongoOp for DeleteJson {
    type Output = u64;
    const WRITES: bool = true;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let (collection, filter) = (self.collection, filter("filter", self.filter)?);
        Ok(if self.many {
            Either::Left(DeleteMany { collection, filter }.start(conn, shared)?)
        } else {
            Either::Right(DeleteOne { collection, filter }.start(conn, shared)?)
        })
    }
}

/// An aggregation pipeline of JSON stages ([`Aggregate`]: no `$out`, `$merge` or JavaScript);
/// answers its results as relaxed Extended JSON, as a [`Feed`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Feed<Value, MongoError>, MongoError>")]
pub struct AggregateJson {
    pub collection: Collection,
    pub pipeline: Vec<Value>,
}

impl sealed::Sealed for AggregateJson {}

impl MongoOp for AggregateJson {
    type Output = Feed<Value, MongoError>;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let aggregate = Aggregate {
            collection: self.collection,
            pipeline: pipeline(self.pipeline)?,
        };
        stream(aggregate, conn, shared, relaxed_doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;
    use mongodb::bson::{DateTime, Decimal128, doc};
    use serde_json::json;

    fn field_of(e: MongoError) -> String {
        match e {
            MongoError::Invalid { field, .. } => field,
            other => panic!("not invalid: {other}"),
        }
    }

    #[test]
    fn relaxed_and_canonical_input_become_the_same_bson() {
        let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").expect("oid");
        let want = doc! {
            "_id": oid,
            "at": DateTime::from_millis(1_700_000_000_000),
            "small": 5,
            "big": 5_000_000_000_i64,
            "ratio": 0.5,
            "price": "12.50".parse::<Decimal128>().expect("decimal"),
            "tags": ["a", {"b": null}],
        };
        let relaxed_in = json!({
            "_id": {"$oid": "65a1b2c3d4e5f60718293a4b"},
            "at": {"$date": "2023-11-14T22:13:20Z"},
            "small": 5,
            "big": 5_000_000_000_i64,
            "ratio": 0.5,
            "price": {"$numberDecimal": "12.50"},
            "tags": ["a", {"b": null}],
        });
        let canonical_in = json!({
            "_id": {"$oid": "65a1b2c3d4e5f60718293a4b"},
            "at": {"$date": {"$numberLong": "1700000000000"}},
            "small": {"$numberInt": "5"},
            "big": {"$numberLong": "5000000000"},
            "ratio": {"$numberDouble": "0.5"},
            "price": {"$numberDecimal": "12.50"},
            "tags": ["a", {"b": null}],
        });
        assert_eq!(document("", relaxed_in.clone()).expect("relaxed"), want);
        assert_eq!(document("", canonical_in).expect("canonical"), want);
        // And back out, relaxed: the input's relaxed form exactly.
        assert_eq!(relaxed_doc(want), relaxed_in);
        // A long that fits in 32 bits comes out as a plain number, and goes back in as an int.
        assert_eq!(relaxed(Bson::Int64(7)), json!(7));
        // Dates before 1970 keep their canonical form, which reads back.
        let old = relaxed(Bson::DateTime(DateTime::from_millis(-86_400_000)));
        assert_eq!(old, json!({"$date": {"$numberLong": "-86400000"}}));
        assert_eq!(
            document("", json!({"d": old})).expect("old date"),
            doc! {"d": DateTime::from_millis(-86_400_000)}
        );
    }

    #[test]
    fn malformed_extended_json_names_the_field() {
        for (value, root, field) in [
            (
                json!({"user_id": {"$oid": "zz"}}),
                "filter",
                "filter.user_id",
            ),
            (
                json!({"a": [1, {"at": {"$date": "yesterday"}}]}),
                "",
                "a.1.at",
            ),
            (
                json!({"n": {"$numberLong": 5}}),
                "documents.2",
                "documents.2.n",
            ),
            (json!([1, 2]), "filter", "filter"),
            (json!("x"), "", "document"),
            (
                json!({"$oid": "65a1b2c3d4e5f60718293a4b"}),
                "update",
                "update",
            ),
        ] {
            let e = document(root, value.clone()).expect_err("refused");
            assert_eq!(field_of(e), field, "{value}");
        }
    }

    #[test]
    fn filters_use_only_query_operators() {
        for ok in [
            json!({"age": {"$gte": 18, "$lt": 65}, "role": {"$in": ["user", "admin"]}}),
            json!({"$or": [{"a": 1}, {"b": {"$exists": false}}], "c": {"$not": {"$regex": "^x"}}}),
            json!({"tags": {"$elemMatch": {"k": "x", "v": {"$gt": 1}}}, "n": {"$elemMatch": {"$gt": 1}}}),
            json!({"$expr": {"$gt": ["$a", {"$add": ["$b", 1]}]}}),
            json!({"loc": {"$near": {"$geometry": {"type": "Point", "coordinates": [0, 0]}, "$maxDistance": 5}}}),
            json!({"$text": {"$search": "lucid"}, "name": {"$regex": "^a", "$options": "i"}}),
            // An embedded document matched whole: its keys are not operators.
            json!({"address": {"city": "Oslo", "zip": "0150"}}),
        ] {
            filter("filter", ok.clone()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, field) in [
            (json!({"age": {"$gtt": 1}}), "filter.age.$gtt"),
            (
                json!({"$and": [{"a": 1}, {"b": {"$foo": 2}}]}),
                "filter.$and.1.b.$foo",
            ),
            (json!({"$set": {"a": 1}}), "filter.$set"),
            (
                json!({"a": {"$not": {"$bogus": 1}}}),
                "filter.a.$not.$bogus",
            ),
            (json!({"a": {"$gt": 1, "b": 2}}), "filter.a.b"),
            (json!({"$or": {"a": 1}}), "filter.$or"),
            (
                json!({"loc": {"$geoWithin": {"$circle": 1}}}),
                "filter.loc.$geoWithin.$circle",
            ),
        ] {
            let e = filter("filter", bad.clone()).expect_err("refused");
            assert_eq!(field_of(e), field, "{bad}");
        }
        let e = filter("filter", json!({"age": {"$gtt": 1}})).expect_err("refused");
        assert!(e.to_string().contains("unknown query operator"), "{e}");
    }

    #[test]
    fn pipelines_are_documents_and_their_match_stages_filters() {
        let stages = pipeline(vec![
            json!({"$match": {"status": "active"}}),
            json!({"$group": {"_id": "$role", "n": {"$sum": 1}}}),
        ])
        .expect("pipeline");
        assert_eq!(
            stages[1],
            doc! {"$group": {"_id": "$role", "n": {"$sum": 1}}}
        );
        let e = pipeline(vec![json!({"$match": {"a": {"$gtt": 1}}})]).expect_err("refused");
        assert_eq!(field_of(e), "pipeline.0.$match.a.$gtt");
        let e = pipeline(vec![json!({"$match": {}}), json!(["$count"])]).expect_err("refused");
        assert_eq!(field_of(e), "pipeline.1");
    }
}
