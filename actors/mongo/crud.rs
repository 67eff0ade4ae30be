//! CRUD on the Lucid collections: every written document is checked against its collection's
//! schema first, filters and pipelines are checked for server-side JavaScript, and reads of
//! many documents stream through a bounded channel — a result is never collected whole.
//!
//! Refused before anything is sent (`Invalid`, naming the field):
//! - a document that does not match the collection's `$jsonSchema`, or over 16 MB;
//! - an update that is not all operators (`$set`, …), or that sets a field to a value its
//!   schema refuses, or removes a required field;
//! - a filter, projection or pipeline using `$where`, `$function` or `$accumulator`
//!   (server-side JavaScript), and pipelines with `$out` or `$merge` (writes that would bypass
//!   the validation and the typed collections).
//!
//! A duplicate key is `Conflict { index, key }` with the index named as in `configs/mongodb/`
//! (servers name them differently: nx-27017 renames every index).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use actix::Message;
use mongodb::bson::{Bson, Document, RawDocumentBuf};
use mongodb::options::{FindOneOptions, FindOptions};
use mongodb::{Collection as DriverCollection, Cursor};
use serde::de::DeserializeOwned;

use super::collections::{Collection, CollectionSpec};
use super::{Conn, MAX_DOCUMENT_BYTES, MongoError, MongoOp, Shared, sealed};
use crate::supervisor::DeadlineError;
use crate::supervisor::feed::{Feed, Stopped, feed};
use crate::supervisor::link::OpFuture;

// ---------------------------------------------------------------------------------------------
// Input checks

/// Operators whose presence anywhere in a filter or pipeline means server-side JavaScript.
const JAVASCRIPT: &[&str] = &["$where", "$function", "$accumulator"];

/// Refuses `$where`, `$function` and `$accumulator` anywhere in `doc` (at any depth).
pub(crate) fn check_no_javascript(what: &str, doc: &Document) -> Result<(), MongoError> {
    match javascript_at(doc) {
        Some(at) => Err(javascript_refused(what, at)),
        None => Ok(()),
    }
}

/// Where `doc` uses server-side JavaScript, innermost path segment first. On every filter and
/// pipeline, so it walks by reference and builds a path only for a refusal.
fn javascript_at(doc: &Document) -> Option<Vec<String>> {
    fn in_value(value: &Bson) -> Option<Vec<String>> {
        match value {
            Bson::Document(d) => javascript_at(d),
            Bson::Array(a) => a.iter().enumerate().find_map(|(i, v)| {
                in_value(v).map(|mut at| {
                    at.push(i.to_string());
                    at
                })
            }),
            // `{"$where": "..."}` is caught as a key; JavaScript code values are refused too.
            Bson::JavaScriptCode(_) | Bson::JavaScriptCodeWithScope(_) => Some(Vec::new()),
            _ => None,
        }
    }
    doc.iter().find_map(|(k, v)| {
        if JAVASCRIPT.contains(&k.as_str()) {
            return Some(vec![k.clone()]);
        }
        in_value(v).map(|mut at| {
            at.push(k.clone());
            at
        })
    })
}

fn javascript_refused(what: &str, at: Vec<String>) -> MongoError {
    let path = std::iter::once(what)
        .chain(at.iter().rev().map(String::as_str))
        .collect::<Vec<_>>()
        .join(".");
    MongoError::invalid(
        path,
        "server-side JavaScript ($where, $function, $accumulator) is not allowed",
    )
}

/// The document as raw BSON, refused over 16 MB (`maxBsonObjectSize`).
fn encode(field: &str, doc: &Document) -> Result<RawDocumentBuf, MongoError> {
    let raw = RawDocumentBuf::from_document(doc).map_err(|e| MongoError::Codec {
        message: e.to_string(),
    })?;
    check_size(field, raw.as_bytes().len())?;
    Ok(raw)
}

pub(crate) fn check_size(field: &str, len: usize) -> Result<(), MongoError> {
    if len > MAX_DOCUMENT_BYTES {
        return Err(MongoError::invalid(
            field,
            format!("{len} bytes, above MongoDB's limit of {MAX_DOCUMENT_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Schema check and encoding of a whole document to be written.
fn checked(
    spec: &CollectionSpec,
    prefix: &str,
    doc: &Document,
) -> Result<RawDocumentBuf, MongoError> {
    if let Some(v) = spec.schema.violations(doc, 1).into_iter().next() {
        let field = match (prefix.is_empty(), v.field.is_empty()) {
            (true, _) => v.field,
            (false, true) => prefix.to_owned(),
            (false, false) => format!("{prefix}.{}", v.field),
        };
        return Err(MongoError::Invalid {
            field,
            reason: v.reason,
        });
    }
    encode(
        if prefix.is_empty() {
            "document"
        } else {
            prefix
        },
        doc,
    )
}

const UPDATE_OPERATORS: &[&str] = &[
    "$set",
    "$setOnInsert",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$rename",
    "$currentDate",
    "$push",
    "$addToSet",
    "$pull",
    "$pullAll",
    "$pop",
];

/// An update must be operators only; `$set`/`$setOnInsert` values are checked against the
/// field's schema and `$unset`/`$rename` may not remove a required field.
fn check_update(spec: &CollectionSpec, update: &Document) -> Result<(), MongoError> {
    if update.is_empty() {
        return Err(MongoError::invalid("update", "is empty"));
    }
    for (op, args) in update {
        if !op.starts_with('$') {
            return Err(MongoError::invalid(
                format!("update.{op}"),
                "an update must be operators only ($set, $inc, …); use replace for a whole document",
            ));
        }
        if !UPDATE_OPERATORS.contains(&op.as_str()) {
            return Err(MongoError::invalid(
                format!("update.{op}"),
                format!(
                    "unknown update operator; allowed: {}",
                    UPDATE_OPERATORS.join(", ")
                ),
            ));
        }
        let Bson::Document(args) = args else {
            return Err(MongoError::invalid(
                format!("update.{op}"),
                "must be a document",
            ));
        };
        check_no_javascript(&format!("update.{op}"), args)?;
        for (path, value) in args {
            match op.as_str() {
                "$set" | "$setOnInsert" => {
                    spec.schema
                        .check_path(path, value)
                        .map_err(|v| MongoError::Invalid {
                            field: v.field,
                            reason: v.reason,
                        })?
                }
                "$unset" | "$rename" => {
                    spec.schema
                        .check_removal(path)
                        .map_err(|v| MongoError::Invalid {
                            field: v.field,
                            reason: v.reason,
                        })?
                }
                _ => {}
            }
        }
    }
    let len = RawDocumentBuf::from_document(update)
        .map_err(|e| MongoError::Codec {
            message: e.to_string(),
        })?
        .as_bytes()
        .len();
    check_size("update", len)
}

/// Aggregation stages that write: refused (they would bypass validation and the typed
/// collections).
const WRITE_STAGES: &[&str] = &["$out", "$merge"];

fn check_pipeline(pipeline: &[Document]) -> Result<(), MongoError> {
    for (i, stage) in pipeline.iter().enumerate() {
        if stage.len() != 1 {
            return Err(MongoError::invalid(
                format!("pipeline.{i}"),
                "a stage is a document with exactly one operator",
            ));
        }
        if let Some(name) = stage.keys().next()
            && WRITE_STAGES.contains(&name.as_str())
        {
            return Err(MongoError::invalid(
                format!("pipeline.{i}.{name}"),
                "writing stages ($out, $merge) are not allowed",
            ));
        }
        if let Some(at) = javascript_at(stage) {
            return Err(javascript_refused(&format!("pipeline.{i}"), at));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Duplicate keys

/// The index name and key from a duplicate-key message. MongoDB: `E11000 duplicate key error
/// collection: db.users index: users_email_unique dup key: { email: "a@b" }`; nx-27017:
/// `UNIQUE constraint failed: index 'idx_users_email'` or `… users._id`.
pub(crate) fn parse_duplicate_key(message: &str) -> (String, String) {
    if let Some(rest) = message.split(" index: ").nth(1) {
        let (name, key) = match rest.split_once(" dup key: ") {
            Some((name, key)) => (name.trim(), key.trim()),
            None => (rest.trim(), ""),
        };
        return (name.to_owned(), key.to_owned());
    }
    if let Some(rest) = message.split("index '").nth(1)
        && let Some((name, _)) = rest.split_once('\'')
    {
        return (name.to_owned(), String::new());
    }
    if message.trim_end().ends_with("._id") {
        return ("_id_".to_owned(), String::new());
    }
    (String::new(), String::new())
}

/// The server's name for a duplicate-key index mapped to the catalog's, and the key filled
/// in from the document written when the server did not say it.
fn conflict(spec: &CollectionSpec, e: MongoError, written: Option<&Document>) -> MongoError {
    let MongoError::Conflict { index, key } = e else {
        return e;
    };
    let found = spec
        .indexes
        .iter()
        .find(|ix| ix.name == index || server_style_name(spec.collection, ix) == index);
    let (index, fields): (String, Vec<String>) = match found {
        Some(ix) => (ix.name.clone(), ix.key.keys().cloned().collect()),
        None if index == "_id_" || index.ends_with("__id") => {
            ("_id_".to_owned(), vec!["_id".to_owned()])
        }
        None => (index, Vec::new()),
    };
    let key = if key.is_empty() {
        written
            .map(|doc| {
                let mut k = Document::new();
                for f in &fields {
                    k.insert(f.clone(), doc.get(f).cloned().unwrap_or(Bson::Null));
                }
                k.to_string()
            })
            .unwrap_or_default()
    } else {
        key
    };
    MongoError::Conflict { index, key }
}

/// The name nx-27017 gives an index: `idx_{collection}_{fields joined by _}`.
fn server_style_name(c: Collection, ix: &super::collections::IndexSpec) -> String {
    let fields: Vec<&str> = ix.key.keys().map(String::as_str).collect();
    format!("idx_{}_{}", c.name(), fields.join("_"))
}

// ---------------------------------------------------------------------------------------------
// Streams

/// One document from the cursor: `None` at the end.
fn next_item<T: DeserializeOwned>(
    advanced: Result<bool, mongodb::error::Error>,
    cursor: &Cursor<T>,
) -> Option<Result<T, MongoError>> {
    match advanced {
        Err(e) => Some(Err(MongoError::from_driver(&e))),
        Ok(false) => None,
        Ok(true) => Some(cursor.deserialize_current().map_err(|e| MongoError::Codec {
            message: e.to_string(),
        })),
    }
}

/// Documents of a find, aggregate or export as they arrive, as a [`Feed`]. The first batch is
/// read by the call itself: a result that fits in one batch (`Settings::batch_size`, nearly
/// every query) is complete when the call answers, with no task and no channel
/// ([`Feed::ready`]). A larger one continues through a bounded feed filled by a task that
/// pulls the server's cursor one batch at a time — on the arbiter the call runs on, the
/// actor's for a message — so memory stays at most a batch plus the channel, whatever the
/// result size. Dropping the feed closes the cursor.
///
/// A failure (connection lost, a batch not in time, the reader not reading for
/// `supervisor.stream_idle_timeout`) is the last item, never a silent end.
pub(crate) async fn pump<T>(
    cursor: Cursor<T>,
    shared: &Arc<Shared>,
    generation: u64,
) -> Feed<T, MongoError>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    pump_map(cursor, shared, generation, |doc| doc).await
}

/// As [`pump`], each document passed through `map` as it is read (relaxed Extended JSON for
/// the JSON operations).
pub(crate) async fn pump_map<T, U>(
    mut cursor: Cursor<T>,
    shared: &Arc<Shared>,
    generation: u64,
    map: impl Fn(T) -> U + Send + 'static,
) -> Feed<U, MongoError>
where
    T: DeserializeOwned + Send + Sync + 'static,
    U: Send + 'static,
{
    let batch = usize::try_from(shared.settings.batch_size).unwrap_or(usize::MAX);
    let mut ready = VecDeque::new();
    while ready.len() < batch {
        match next_item(cursor.advance().await, &cursor) {
            None => return Feed::ready(ready),
            Some(Err(e)) => {
                shared.report(generation, &e);
                ready.push_back(Err(e));
                return Feed::ready(ready);
            }
            Some(Ok(doc)) => ready.push_back(Ok(map(doc))),
        }
    }

    let (feeder, rest) = feed(shared.settings.stream_buffer, shared.settings.stream_idle);
    let shared = shared.clone();
    tokio::spawn(async move {
        let deadline = shared.settings.deadline;
        loop {
            let item =
                match MongoError::within(deadline, async { Ok(cursor.advance().await) }).await {
                    Err(e) => Err(e),
                    Ok(advanced) => match next_item(advanced, &cursor) {
                        None => return,
                        Some(item) => item,
                    },
                };
            match item {
                Ok(doc) => match feeder.send(map(doc)).await {
                    Ok(()) => {}
                    // The reader dropped the stream: closing the cursor is all that is left.
                    Err(Stopped::Gone) => return,
                    Err(Stopped::Idle(after)) => {
                        return feeder.fail(MongoError::StreamIdle {
                            what: "the reader did not take a document",
                            after,
                        });
                    }
                },
                Err(e) => {
                    shared.report(generation, &e);
                    return feeder.fail(e);
                }
            }
        }
    });
    rest.after(ready)
}

/// A query whose documents are answered as a [`Feed`]: [`Find`] and [`Aggregate`] (and their
/// JSON twins, which pass each document through a `map`).
pub(crate) trait Streamed: Send + 'static {
    /// The input checks: an error here means nothing was sent.
    fn check(&self) -> Result<(), MongoError>;

    /// The cursor, reading `batch` documents a round trip.
    fn open(
        self,
        conn: &Conn,
        batch: u32,
    ) -> impl Future<Output = mongodb::error::Result<Cursor<Document>>> + Send;
}

/// Runs `query`: the checks, then its cursor, each document passed through `map` as it is
/// read (see [`pump`]).
pub(crate) fn stream<U: Send + 'static>(
    query: impl Streamed,
    conn: Conn,
    shared: &Arc<Shared>,
    map: impl Fn(Document) -> U + Send + 'static,
) -> Result<
    impl Future<Output = Result<Feed<U, MongoError>, MongoError>> + Send + 'static,
    MongoError,
> {
    query.check()?;
    let shared = shared.clone();
    let batch = shared.settings.batch_size;
    Ok(async move {
        let generation = shared.usable().map(|(_, g)| g).unwrap_or_default();
        let cursor = query.open(&conn, batch).await?;
        Ok(pump_map(cursor, &shared, generation, map).await)
    })
}

// ---------------------------------------------------------------------------------------------
// Operations

fn coll(conn: &Conn, c: Collection) -> DriverCollection<Document> {
    conn.db.collection::<Document>(c.name())
}

fn raw_coll(conn: &Conn, c: Collection) -> DriverCollection<RawDocumentBuf> {
    conn.db.collection::<RawDocumentBuf>(c.name())
}

/// Inserts one document; answers its `_id` (generated by the driver when missing).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Bson, MongoError>")]
pub struct InsertOne {
    pub collection: Collection,
    pub document: Document,
}

impl sealed::Sealed for InsertOne {}

impl MongoOp for InsertOne {
    type Output = Bson;
    const WRITES: bool = true;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let raw = checked(shared.catalog.get(self.collection), "", &self.document)?;
        // The catalog is one Arc: cloning it, not the collection's spec, per call.
        let catalog = shared.catalog.clone();
        Ok(async move {
            match raw_coll(&conn, self.collection).insert_one(raw).await {
                Ok(r) => Ok(r.inserted_id),
                Err(e) => Err(conflict(
                    catalog.get(self.collection),
                    e.into(),
                    Some(&self.document),
                )),
            }
        })
    }
}

/// Inserts many documents in one request; answers their `_id`s in order. `ordered` stops at
/// the first failure (the documents before it are inserted); unordered tries every one.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<Bson>, MongoError>")]
pub struct InsertMany {
    pub collection: Collection,
    pub documents: Vec<Document>,
    pub ordered: bool,
}

impl sealed::Sealed for InsertMany {}

impl MongoOp for InsertMany {
    type Output = Vec<Bson>;
    const WRITES: bool = true;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        if self.documents.is_empty() {
            return Err(MongoError::invalid("documents", "is empty"));
        }
        let spec = shared.catalog.get(self.collection);
        let raws = self
            .documents
            .iter()
            .enumerate()
            .map(|(i, d)| checked(spec, &format!("documents.{i}"), d))
            .collect::<Result<Vec<_>, _>>()?;
        let catalog = shared.catalog.clone();
        Ok(async move {
            let res = raw_coll(&conn, self.collection)
                .insert_many(raws)
                .ordered(self.ordered)
                .await;
            match res {
                Ok(r) => {
                    let mut ids: Vec<(usize, Bson)> = r.inserted_ids.into_iter().collect();
                    ids.sort_by_key(|(i, _)| *i);
                    Ok(ids.into_iter().map(|(_, id)| id).collect())
                }
                Err(e) => {
                    let failed_at = match e.kind.as_ref() {
                        mongodb::error::ErrorKind::InsertMany(im) => im
                            .write_errors
                            .as_ref()
                            .and_then(|w| w.first())
                            .map(|w| w.index),
                        _ => None,
                    };
                    let written = failed_at.and_then(|i| self.documents.get(i));
                    Err(conflict(catalog.get(self.collection), e.into(), written))
                }
            }
        })
    }
}

/// A query: filter, projection, sort, skip, limit. Answers the documents as a [`Feed`] (see
/// [`pump`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Feed<Document, MongoError>, MongoError>")]
pub struct Find {
    pub collection: Collection,
    pub filter: Document,
    pub projection: Option<Document>,
    pub sort: Option<Document>,
    pub skip: Option<u64>,
    pub limit: Option<i64>,
}

impl Find {
    pub fn new(collection: Collection, filter: Document) -> Self {
        Find {
            collection,
            filter,
            projection: None,
            sort: None,
            skip: None,
            limit: None,
        }
    }

    pub fn projection(mut self, p: Document) -> Self {
        self.projection = Some(p);
        self
    }

    pub fn sort(mut self, s: Document) -> Self {
        self.sort = Some(s);
        self
    }

    pub fn skip(mut self, n: u64) -> Self {
        self.skip = Some(n);
        self
    }

    pub fn limit(mut self, n: i64) -> Self {
        self.limit = Some(n);
        self
    }
}

impl sealed::Sealed for Find {}

impl MongoOp for Find {
    type Output = Feed<Document, MongoError>;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        stream(self, conn, shared, |doc| doc)
    }
}

impl Streamed for Find {
    fn check(&self) -> Result<(), MongoError> {
        check_no_javascript("filter", &self.filter)?;
        if let Some(projection) = &self.projection {
            check_no_javascript("projection", projection)?;
        }
        if let Some(limit) = self.limit
            && limit < 0
        {
            return Err(MongoError::invalid("limit", "must not be negative"));
        }
        Ok(())
    }

    async fn open(self, conn: &Conn, batch: u32) -> mongodb::error::Result<Cursor<Document>> {
        let mut options = FindOptions::default();
        options.projection = self.projection;
        options.sort = self.sort;
        options.skip = self.skip;
        options.limit = self.limit;
        options.batch_size = Some(batch);
        coll(conn, self.collection)
            .find(self.filter)
            .with_options(options)
            .await
    }
}

/// The first document matching `filter`, if any.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<Document>, MongoError>")]
pub struct FindOne {
    pub collection: Collection,
    pub filter: Document,
    pub projection: Option<Document>,
}

impl sealed::Sealed for FindOne {}

impl MongoOp for FindOne {
    type Output = Option<Document>;

    fn start(self, conn: Conn, _: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        check_no_javascript("filter", &self.filter)?;
        if let Some(projection) = &self.projection {
            check_no_javascript("projection", projection)?;
        }
        Ok(async move {
            let mut options = FindOneOptions::default();
            options.projection = self.projection;
            Ok(coll(&conn, self.collection)
                .find_one(self.filter)
                .with_options(options)
                .await?)
        })
    }
}

/// What an update or replace did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UpdateSummary {
    pub matched: u64,
    pub modified: u64,
    /// The new document's `_id` when an upsert inserted one.
    pub upserted_id: Option<Bson>,
}

impl From<mongodb::results::UpdateResult> for UpdateSummary {
    fn from(r: mongodb::results::UpdateResult) -> Self {
        UpdateSummary {
            matched: r.matched_count,
            modified: r.modified_count,
            upserted_id: r.upserted_id,
        }
    }
}

macro_rules! update_op {
    ($(#[$doc:meta])* $name:ident, $method:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Message)]
        #[rtype(result = "Result<UpdateSummary, MongoError>")]
        pub struct $name {
            pub collection: Collection,
            pub filter: Document,
            /// Operators only (`$set`, `$inc`, …).
            pub update: Document,
            pub upsert: bool,
        }

        impl sealed::Sealed for $name {}

        impl MongoOp for $name {
            type Output = UpdateSummary;
            const WRITES: bool = true;

            fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
                check_no_javascript("filter", &self.filter)?;
                check_update(shared.catalog.get(self.collection), &self.update)?;
                let catalog = shared.catalog.clone();
                Ok(async move {
                    let written = self.update.get_document("$set").ok().cloned();
                    coll(&conn, self.collection)
                        .$method(self.filter, self.update)
                        .upsert(self.upsert)
                        .await
                        .map(UpdateSummary::from)
                        .map_err(|e| conflict(catalog.get(self.collection), e.into(), written.as_ref()))
                })
            }
        }
    };
}

update_op!(
    /// Updates the first document matching `filter`.
    UpdateOne,
    update_one
);
update_op!(
    /// Updates every document matching `filter`.
    UpdateMany,
    update_many
);

/// Replaces the first document matching `filter` with a whole, schema-checked document.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<UpdateSummary, MongoError>")]
pub struct ReplaceOne {
    pub collection: Collection,
    pub filter: Document,
    pub replacement: Document,
    pub upsert: bool,
}

impl sealed::Sealed for ReplaceOne {}

impl MongoOp for ReplaceOne {
    type Output = UpdateSummary;
    const WRITES: bool = true;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        check_no_javascript("filter", &self.filter)?;
        if let Some(op) = self.replacement.keys().find(|k| k.starts_with('$')) {
            return Err(MongoError::invalid(
                format!("replacement.{op}"),
                "a replacement is a whole document, not operators; use update",
            ));
        }
        let raw = checked(shared.catalog.get(self.collection), "", &self.replacement)?;
        let catalog = shared.catalog.clone();
        Ok(async move {
            raw_coll(&conn, self.collection)
                .replace_one(self.filter, raw)
                .upsert(self.upsert)
                .await
                .map(UpdateSummary::from)
                .map_err(|e| {
                    conflict(
                        catalog.get(self.collection),
                        e.into(),
                        Some(&self.replacement),
                    )
                })
        })
    }
}

macro_rules! filter_op {
    ($(#[$doc:meta])* $name:ident -> $out:ty, writes: $writes:literal, |$coll:ident, $filter:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pub collection: Collection,
            pub filter: Document,
        }

        impl Message for $name {
            type Result = Result<$out, MongoError>;
        }

        impl sealed::Sealed for $name {}

        impl MongoOp for $name {
            type Output = $out;
            const WRITES: bool = $writes;

            fn start(self, conn: Conn, _: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
                check_no_javascript("filter", &self.filter)?;
                Ok(async move {
                    let $coll = coll(&conn, self.collection);
                    let $filter = self.filter;
                    Ok($body.await?)
                })
            }
        }
    };
}

filter_op!(
    /// Deletes the first document matching `filter`; answers how many were deleted (0 or 1).
    DeleteOne -> u64, writes: true, |c, f| async move { c.delete_one(f).await.map(|r| r.deleted_count) }
);
filter_op!(
    /// Deletes every document matching `filter`; answers how many.
    DeleteMany -> u64, writes: true, |c, f| async move { c.delete_many(f).await.map(|r| r.deleted_count) }
);
filter_op!(
    /// How many documents match `filter` (an exact count).
    Count -> u64, writes: false, |c, f| c.count_documents(f)
);

/// The distinct values of `field` among the documents matching `filter`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<Bson>, MongoError>")]
pub struct Distinct {
    pub collection: Collection,
    pub field: String,
    pub filter: Document,
}

impl sealed::Sealed for Distinct {}

impl MongoOp for Distinct {
    type Output = Vec<Bson>;

    fn start(self, conn: Conn, _: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        check_no_javascript("filter", &self.filter)?;
        if self.field.is_empty() || self.field.starts_with('$') {
            return Err(MongoError::invalid("field", "must be a field name"));
        }
        Ok(async move {
            Ok(coll(&conn, self.collection)
                .distinct(self.field, self.filter)
                .await?)
        })
    }
}

/// An aggregation pipeline; answers its results as a [`Feed`] (see [`pump`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Feed<Document, MongoError>, MongoError>")]
pub struct Aggregate {
    pub collection: Collection,
    pub pipeline: Vec<Document>,
}

impl sealed::Sealed for Aggregate {}

impl MongoOp for Aggregate {
    type Output = Feed<Document, MongoError>;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        stream(self, conn, shared, |doc| doc)
    }
}

impl Streamed for Aggregate {
    fn check(&self) -> Result<(), MongoError> {
        check_pipeline(&self.pipeline)
    }

    async fn open(self, conn: &Conn, batch: u32) -> mongodb::error::Result<Cursor<Document>> {
        coll(conn, self.collection)
            .aggregate(self.pipeline)
            .batch_size(batch)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mongo::Catalog;
    use mongodb::bson::doc;

    fn users() -> CollectionSpec {
        Catalog::builtin()
            .expect("catalog")
            .get(Collection::Users)
            .clone()
    }

    #[test]
    fn javascript_is_refused_at_any_depth() {
        for filter in [
            doc! {"$where": "this.a == 1"},
            doc! {"$and": [{"a": 1}, {"$where": "1"}]},
            doc! {"$expr": {"$function": {"body": "x", "args": [], "lang": "js"}}},
        ] {
            let e = check_no_javascript("filter", &filter).expect_err("refused");
            assert!(matches!(e, MongoError::Invalid { .. }), "{e}");
        }
        let e = check_no_javascript("filter", &doc! {"$and": [{"a": 1}, {"$where": "1"}]})
            .expect_err("refused");
        assert!(e.to_string().contains("filter.$and.1.$where"), "{e}");
        assert!(check_no_javascript("filter", &doc! {"a": {"$gt": 1}, "b": "$where"}).is_ok());
        let pipeline = [doc! {"$group": {"_id": null, "x": {"$accumulator": {}}}}];
        assert!(check_pipeline(&pipeline).is_err());
        assert!(check_pipeline(&[doc! {"$out": "x"}]).is_err());
        assert!(check_pipeline(&[doc! {"$match": {}}, doc! {"$count": "n"}]).is_ok());
    }

    #[test]
    fn updates_are_operators_and_respect_the_schema() {
        let spec = users();
        assert!(check_update(&spec, &doc! {"$set": {"display_name": "Ann"}}).is_ok());
        let e = check_update(&spec, &doc! {"display_name": "Ann"}).expect_err("not operators");
        assert!(
            matches!(e, MongoError::Invalid { ref field, .. } if field == "update.display_name")
        );
        let e = check_update(&spec, &doc! {"$set": {"role": "king"}}).expect_err("enum");
        assert!(matches!(e, MongoError::Invalid { ref field, .. } if field == "role"));
        let e = check_update(&spec, &doc! {"$unset": {"email": ""}}).expect_err("required");
        assert!(matches!(e, MongoError::Invalid { ref field, .. } if field == "email"));
        assert!(check_update(&spec, &doc! {"$frobnicate": {"a": 1}}).is_err());
        assert!(check_update(&spec, &doc! {}).is_err());
    }

    #[test]
    fn oversized_documents_are_refused_before_sending() {
        let big = "x".repeat(MAX_DOCUMENT_BYTES);
        let e = encode("document", &doc! {"blob": big}).expect_err("too big");
        assert!(matches!(e, MongoError::Invalid { ref field, .. } if field == "document"));
    }

    #[test]
    fn duplicate_key_messages_name_the_catalog_index() {
        let real = "E11000 duplicate key error collection: lucid.users index: users_email_unique dup key: { email: \"a@b.io\" }";
        assert_eq!(
            parse_duplicate_key(real),
            ("users_email_unique".into(), "{ email: \"a@b.io\" }".into())
        );
        let spec = users();
        let nx = MongoError::Conflict {
            index: parse_duplicate_key("UNIQUE constraint failed: index 'idx_users_email'").0,
            key: String::new(),
        };
        let written = doc! {"email": "a@b.io", "user_id": "u1"};
        assert_eq!(
            conflict(&spec, nx, Some(&written)),
            MongoError::Conflict {
                index: "users_email_unique".into(),
                key: "{ \"email\": \"a@b.io\" }".into()
            }
        );
        let id = MongoError::Conflict {
            index: parse_duplicate_key("UNIQUE constraint failed: users._id").0,
            key: String::new(),
        };
        assert!(
            matches!(conflict(&spec, id, None), MongoError::Conflict { index, .. } if index == "_id_")
        );
    }
}
