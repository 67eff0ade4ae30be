//! Streaming export and import of one collection, for backups.
//!
//! **Export** answers an [`ExportMetadata`] (the collection's options — the validator, from
//! the server where it keeps one, else from `configs/mongodb/` — and index specs) and a
//! [`Feed`] of the documents as raw BSON, pulled from the server one cursor batch at a time
//! through a bounded channel: memory does not grow with the collection. It goes through the
//! actor's mailbox, so the task that pulls the cursor runs on the actor's arbiter.
//!
//! **Import** follows the one contract of every store ([`crate::transfer`]): [`Import`] is a
//! message, run on the actor's arbiter, never in the caller's task. It recreates the
//! collection with its validator and indexes, then inserts the documents in batches
//! (`mongodb.import_batch`, at most 8 MiB each), into the same or another database. Each
//! batch is checked against the exported validator — parsing and schema checks, the import's
//! CPU work — on the blocking pool before it is sent, so a 100,000-document import leaves the
//! event loop free for other calls. A target that holds documents is refused unless the
//! import replaces it; then it is dropped first (like `mongorestore --drop`). A collection
//! that exists but holds nothing counts as empty (the bootstrap creates every collection),
//! unless the options refuse any existing target. If the import fails — a bad document, the
//! source's error (`import_source_failed`, with the count written), a stalled source — the
//! documents it inserted are deleted again, so the target is left empty rather than half
//! restored; run it again once the cause is fixed.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::Stream;
use mongodb::bson::{self, Bson, DateTime, Document, RawDocumentBuf, doc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::collections::Collection;
use super::crud::{check_size, pump};
use super::schema::Schema;
use super::{Conn, MongoActor, MongoError, MongoHandle, MongoOp, Shared, ok_of, sealed};
use crate::supervisor::DeadlineError;
use crate::supervisor::feed::Feed;
use crate::supervisor::link::OpFuture;
use crate::transfer::{self, Admission, Batch, Source, SourceEnd, TargetState, next_batch};

/// The format of [`ExportMetadata`]; bumped on incompatible changes.
pub const EXPORT_FORMAT: u32 = 1;

/// Bytes of documents per insert batch at most (below the 16 MiB message size with room).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// What a backup stores beside a collection's documents to recreate it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportMetadata {
    pub format: u32,
    pub database: String,
    pub collection: String,
    pub validator: Document,
    pub validation_level: String,
    pub validation_action: String,
    /// `createIndexes` entries (`key`, `name`, options).
    pub indexes: Vec<Document>,
    /// The server's count when the export started (documents written during the export may
    /// or may not be in it).
    pub documents: u64,
    pub exported_at: DateTime,
}

impl ExportMetadata {
    pub fn to_document(&self) -> Result<Document, MongoError> {
        bson::to_document(self).map_err(|e| MongoError::Codec {
            message: e.to_string(),
        })
    }

    pub fn from_document(d: Document) -> Result<Self, MongoError> {
        let m: ExportMetadata = bson::from_document(d).map_err(|e| MongoError::Codec {
            message: format!("export metadata: {e}"),
        })?;
        if m.format != EXPORT_FORMAT {
            return Err(MongoError::invalid(
                "metadata.format",
                format!("is {}, this version reads {EXPORT_FORMAT}", m.format),
            ));
        }
        Ok(m)
    }
}

/// Exports a collection: its metadata and a feed of its documents as raw BSON.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(ExportMetadata, Feed<RawDocumentBuf, MongoError>), MongoError>")]
pub struct Export {
    pub collection: Collection,
}

impl sealed::Sealed for Export {}

impl MongoOp for Export {
    type Output = (ExportMetadata, Feed<RawDocumentBuf, MongoError>);

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let shared = shared.clone();
        Ok(async move {
            let generation = shared.usable().map(|(_, g)| g).unwrap_or_default();
            let spec = shared.catalog.get(self.collection);
            let name = self.collection.name();
            // The server's validator where it keeps one (it may be newer than the configs).
            let listed = conn
                .db
                .run_command(doc! {"listCollections": 1, "filter": {"name": name}})
                .await?;
            let server_options = listed
                .get_document("cursor")
                .ok()
                .and_then(|c| c.get_array("firstBatch").ok())
                .and_then(|b| {
                    b.iter()
                        .filter_map(Bson::as_document)
                        .find(|d| d.get_str("name") == Ok(name))
                })
                .and_then(|d| d.get_document("options").ok())
                .cloned()
                .unwrap_or_default();
            let validator = server_options
                .get_document("validator")
                .cloned()
                .unwrap_or_else(|_| spec.validator.clone());
            let coll = conn.db.collection::<RawDocumentBuf>(name);
            let documents = coll.count_documents(doc! {}).await?;
            let metadata = ExportMetadata {
                format: EXPORT_FORMAT,
                database: shared.settings.database.clone(),
                collection: name.to_owned(),
                validator,
                validation_level: server_options
                    .get_str("validationLevel")
                    .unwrap_or(&spec.validation_level)
                    .to_owned(),
                validation_action: server_options
                    .get_str("validationAction")
                    .unwrap_or(&spec.validation_action)
                    .to_owned(),
                indexes: spec.indexes.iter().map(|i| i.to_command()).collect(),
                documents,
                exported_at: DateTime::now(),
            };
            let cursor = coll
                .find(doc! {})
                .batch_size(shared.settings.batch_size)
                .await?;
            Ok((metadata, pump(cursor, &shared, generation).await))
        })
    }
}

/// Imports documents into a collection (see the module doc); answers what was done. An
/// `Err` item from the source fails the import ([`MongoError::ImportSource`]).
#[derive(Message)]
#[rtype(result = "Result<ImportSummary, MongoError>")]
pub struct Import {
    pub options: ImportOptions,
    pub source: Source<RawDocumentBuf>,
}

impl std::fmt::Debug for Import {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Import")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Where a MongoDB import goes, and what it recreates there.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportTarget {
    pub collection: Collection,
    /// The target database; `None`: `mongodb.database`.
    pub database: Option<String>,
    /// What the collection is made with (validator, indexes), as exported.
    pub metadata: ExportMetadata,
}

/// An import's target and rule (see [`Import`]).
pub type ImportOptions = transfer::ImportOptions<ImportTarget>;

/// What only a MongoDB import reports, beside the shared counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportDetails {
    pub database: String,
    pub collection: Collection,
    /// `insertMany` requests sent.
    pub batches: u64,
    /// Indexes created from the metadata.
    pub indexes: u64,
}

/// What an import did: documents read and written (a MongoDB import skips none: a document
/// it cannot write fails it).
pub type ImportSummary = transfer::ImportSummary<ImportDetails>;

impl MongoHandle {
    /// Exports a collection (see the module doc), through the actor's mailbox.
    pub async fn export(
        &self,
        collection: Collection,
    ) -> Result<(ExportMetadata, Feed<RawDocumentBuf, MongoError>), MongoError> {
        self.send(Export { collection }).await
    }

    /// What an import into `collection` of `database` (`None`: `mongodb.database`) would find
    /// there, and how many documents it holds — the rule [`Import`] applies, asked before
    /// anything is written (a restore looks at every target first). Writes nothing.
    pub async fn import_target(
        &self,
        collection: Collection,
        database: Option<&str>,
    ) -> Result<(TargetState, u64), MongoError> {
        let shared = &self.shared;
        let (conn, generation) = shared.usable()?;
        let database = database.unwrap_or(&shared.settings.database);
        super::check_database_name(database)
            .map_err(|reason| MongoError::invalid("database", reason))?;
        let deadline = shared.settings.deadline;
        let db = conn.client.database(database);
        let coll = db.collection::<RawDocumentBuf>(collection.name());
        let found = async {
            let state = target_state(&db, &coll, deadline).await?;
            let documents = if state == TargetState::Holding {
                MongoError::within(deadline, async { Ok(coll.count_documents(doc! {}).await?) })
                    .await?
            } else {
                0
            };
            Ok((state, documents))
        }
        .await;
        if let Err(e) = &found {
            shared.report(generation, e);
        }
        found
    }

    /// The documents of `collection` in `database` whose `_id` is one of `ids`, as the server
    /// holds them (raw BSON): what a drill compares with the backup's documents. Reads only.
    pub async fn documents_by_id(
        &self,
        collection: Collection,
        database: &str,
        ids: Vec<Bson>,
    ) -> Result<Vec<RawDocumentBuf>, MongoError> {
        use futures_util::TryStreamExt;
        let shared = &self.shared;
        super::check_database_name(database)
            .map_err(|reason| MongoError::invalid("database", reason))?;
        let (conn, generation) = shared.usable()?;
        let coll = conn
            .client
            .database(database)
            .collection::<RawDocumentBuf>(collection.name());
        let found = MongoError::within(shared.settings.deadline, async {
            let cursor = coll.find(doc! { "_id": { "$in": ids } }).await?;
            Ok(cursor.try_collect::<Vec<_>>().await?)
        })
        .await;
        if let Err(e) = &found {
            shared.report(generation, e);
        }
        found
    }

    /// Collection `collection` of `database` as the server reports it — its validator and
    /// indexes, `None` when it does not exist — and what the server keeps of what it is
    /// sent (the bootstrap's probe, run in `database`: a validator created straight through
    /// the driver that `listCollections` does not report either). What a drill compares
    /// with the backup's `.metadata.json`. Creates and drops the probe's scratch collection
    /// in `database`, so it is refused for the live database.
    pub async fn collection_spec(
        &self,
        collection: Collection,
        database: &str,
    ) -> Result<
        (
            super::Capabilities,
            Option<super::bootstrap::ServerCollection>,
        ),
        MongoError,
    > {
        let shared = &self.shared;
        super::check_database_name(database)
            .map_err(|reason| MongoError::invalid("database", reason))?;
        if database == shared.settings.database {
            return Err(MongoError::invalid(
                "database",
                "a scratch database, not the live one (the probe creates a collection)",
            ));
        }
        let (conn, generation) = shared.usable()?;
        let deadline = shared.settings.deadline;
        let db = conn.client.database(database);
        let found = async {
            let caps = super::bootstrap::probe_on(&db, deadline).await?;
            let coll = super::bootstrap::collection_on(&db, collection.name(), deadline).await?;
            Ok((caps, coll))
        }
        .await;
        if let Err(e) = &found {
            shared.report(generation, e);
        }
        found
    }

    /// Drops every database whose name starts with `prefix` (a drill's scratch databases,
    /// `<db>_drill_<suffix>`); answers their names. A prefix `mongodb.database` starts with
    /// is `invalid`: this never drops the live database.
    pub async fn drop_prefixed(&self, prefix: &str) -> Result<Vec<String>, MongoError> {
        let shared = &self.shared;
        if prefix.is_empty() || shared.settings.database.starts_with(prefix) {
            return Err(MongoError::invalid(
                "database",
                "a scratch database prefix, not the live database",
            ));
        }
        let (conn, generation) = shared.usable()?;
        let deadline = shared.settings.deadline;
        let dropped = async {
            let names = MongoError::within(deadline, async {
                Ok(conn.client.list_database_names().await?)
            })
            .await?;
            let names: Vec<String> = names
                .into_iter()
                .filter(|n| n.starts_with(prefix))
                .collect();
            for name in &names {
                let db = conn.client.database(name);
                MongoError::within(deadline, async { Ok(db.drop().await?) }).await?;
            }
            Ok(names)
        }
        .await;
        if let Err(e) = &dropped {
            shared.report(generation, e);
        }
        dropped
    }

    /// Imports documents into a collection (see the module doc). `source` may be any stream
    /// — another export's feed too; one that yields nothing for
    /// `supervisor.stream_idle_timeout` fails the import, one that yields an `Err` fails it
    /// with the count written. The import runs on the actor's arbiter; the reply comes when
    /// the source ends.
    pub async fn import<S, E>(
        &self,
        options: ImportOptions,
        source: S,
    ) -> Result<ImportSummary, MongoError>
    where
        S: Stream<Item = Result<RawDocumentBuf, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let source = transfer::source(source);
        // Not `send`: its deadline is for short requests; an import takes as long as its
        // source.
        self.addr()
            .send(Import { options, source })
            .await
            .map_err(|e| crate::supervisor::not_delivered(crate::Backend::Mongodb, e))?
    }
}

impl Handler<Import> for MongoActor {
    type Result = ResponseFuture<Result<ImportSummary, MongoError>>;

    fn handle(&mut self, msg: Import, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (conn, generation) = shared.usable()?;
            let res = import(&shared, &conn, msg.options, msg.source).await;
            if let Err(e) = &res {
                shared.report(generation, e);
            }
            res
        })
    }
}

/// Whether the target collection is there and holds documents. Listed first: counting in a
/// collection that is not there creates it on some servers (nx-27017).
async fn target_state(
    db: &mongodb::Database,
    coll: &mongodb::Collection<RawDocumentBuf>,
    deadline: Duration,
) -> Result<TargetState, MongoError> {
    let listed = MongoError::within(deadline, async {
        Ok(db
            .list_collection_names()
            .filter(doc! {"name": coll.name()})
            .await?)
    })
    .await?;
    if !listed.iter().any(|n| n == coll.name()) {
        return Ok(TargetState::Missing);
    }
    let present = MongoError::within(deadline, async {
        Ok(coll.count_documents(doc! {}).limit(1).await?)
    })
    .await?;
    Ok(if present > 0 {
        TargetState::Holding
    } else {
        TargetState::Empty
    })
}

async fn import(
    shared: &Shared,
    conn: &Conn,
    options: ImportOptions,
    mut source: Source<RawDocumentBuf>,
) -> Result<ImportSummary, MongoError> {
    let started = Instant::now();
    let settings = &shared.settings;
    let deadline = settings.deadline;
    let target = options.target;
    let database = target
        .database
        .clone()
        .unwrap_or_else(|| settings.database.clone());
    super::check_database_name(&database)
        .map_err(|reason| MongoError::invalid("database", reason))?;
    let meta = &target.metadata;
    if meta.collection != target.collection.name() {
        return Err(MongoError::invalid(
            "metadata.collection",
            format!(
                "is {:?}, the import is into {:?}",
                meta.collection,
                target.collection.name()
            ),
        ));
    }
    let schema =
        Arc::new(Schema::compile(&meta.validator).map_err(|e| {
            MongoError::invalid(format!("metadata.validator.{}", e.path), e.reason)
        })?);
    let db = conn.client.database(&database);
    let name = target.collection.name();
    let coll = db.collection::<RawDocumentBuf>(name);
    // Into the live database: the daemon's own writes answer `busy` until the import ends.
    let _gate = (database == settings.database).then(|| shared.restore_gate.hold());

    match options
        .existing
        .admit(target_state(&db, &coll, deadline).await?)
    {
        Admission::Into => {}
        Admission::Replace => {
            MongoError::within(deadline, async { Ok(coll.drop().await?) }).await?;
        }
        Admission::NotEmpty => {
            let documents = MongoError::within(deadline, async {
                Ok(coll.estimated_document_count().await?)
            })
            .await?;
            return Err(MongoError::NotEmpty {
                database,
                collection: name.to_owned(),
                documents,
            });
        }
        Admission::Exists => {
            return Err(MongoError::Exists {
                database,
                collection: name.to_owned(),
            });
        }
    }
    let command = |cmd: Document| {
        let db = db.clone();
        async move {
            let what = cmd.keys().next().cloned().unwrap_or_default();
            let reply =
                MongoError::within(deadline, async { Ok(db.run_command(cmd).await?) }).await;
            match reply {
                Ok(r) if ok_of(&r) => Ok(()),
                // 48: the collection exists (empty, since we checked): fine.
                Err(MongoError::Server { code: Some(48), .. }) => Ok(()),
                Ok(r) => Err(MongoError::Server {
                    code: None,
                    message: format!("{what}: {}", r.get_str("errmsg").unwrap_or("ok: 0")),
                }),
                Err(e) => Err(e),
            }
        }
    };
    command(doc! {
        "create": name,
        "validator": meta.validator.clone(),
        "validationLevel": meta.validation_level.clone(),
        "validationAction": meta.validation_action.clone(),
    })
    .await?;
    if !meta.indexes.is_empty() {
        command(doc! {"createIndexes": name, "indexes": meta.indexes.iter().cloned().map(Bson::Document).collect::<Vec<_>>()})
            .await?;
    }

    let mut summary = ImportSummary::new(ImportDetails {
        database: database.clone(),
        collection: target.collection,
        batches: 0,
        indexes: meta.indexes.len() as u64,
    });
    let result: Result<(), MongoError> = async {
        loop {
            let Batch { items, end } =
                next_batch(&mut source, settings.import_batch, settings.stream_idle).await;
            match end {
                Some(SourceEnd::Idle(after)) => {
                    return Err(MongoError::StreamIdle {
                        what: "the import source sent no document",
                        after,
                    });
                }
                Some(SourceEnd::Failed(reason)) => {
                    return Err(MongoError::ImportSource {
                        written: summary.written,
                        reason: crate::redact::text(&reason),
                    });
                }
                None | Some(SourceEnd::Finished) => {}
            }
            let first = summary.read;
            summary.read += items.len() as u64;
            if !items.is_empty() {
                let docs = checked_off_loop(schema.clone(), items, first).await?;
                for batch in by_bytes(docs) {
                    flush(&coll, batch, deadline, &mut summary).await?;
                }
            }
            if end == Some(SourceEnd::Finished) {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        if summary.written > 0 {
            let cleanup =
                MongoError::within(deadline, async { Ok(coll.delete_many(doc! {}).await?) }).await;
            if let Err(ce) = cleanup {
                tracing::warn!(collection = name, database = %database, error = %ce,
                    "import failed and its documents could not be removed; drop the collection before importing again");
            }
        }
        return Err(e);
    }
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// Checks a batch on the blocking pool (see the module doc) and hands it back: each document
/// within MongoDB's size limit, parseable, and valid against the exported validator. `first`
/// is the index of the batch's first document in the source, for the field an error names.
async fn checked_off_loop(
    schema: Arc<Schema>,
    docs: Vec<RawDocumentBuf>,
    first: u64,
) -> Result<Vec<RawDocumentBuf>, MongoError> {
    tokio::task::spawn_blocking(move || {
        for (i, raw) in docs.iter().enumerate() {
            let index = first + i as u64;
            check_size(&format!("documents.{index}"), raw.as_bytes().len())?;
            let parsed = Document::try_from(raw.as_ref()).map_err(|e| MongoError::Codec {
                message: format!("document {index}: {e}"),
            })?;
            if let Some(v) = schema.violations(&parsed, 1).into_iter().next() {
                return Err(MongoError::Invalid {
                    field: format!("documents.{index}.{}", v.field),
                    reason: v.reason,
                });
            }
        }
        Ok(docs)
    })
    .await
    .map_err(|e| MongoError::Codec {
        message: format!("the import's document check stopped: {e}"),
    })?
}

/// The documents in order, cut into requests of at most [`MAX_BATCH_BYTES`].
fn by_bytes(docs: Vec<RawDocumentBuf>) -> Vec<Vec<RawDocumentBuf>> {
    let mut out = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0usize);
    for doc in docs {
        let len = doc.as_bytes().len();
        if !batch.is_empty() && bytes + len > MAX_BATCH_BYTES {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += len;
        batch.push(doc);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// Inserts one batch (ordered: it stops at the first failure) within the deadline, scaled by
/// the batch size — a full batch of large documents takes longer than one ping.
async fn flush(
    coll: &mongodb::Collection<RawDocumentBuf>,
    docs: Vec<RawDocumentBuf>,
    deadline: Duration,
    summary: &mut ImportSummary,
) -> Result<(), MongoError> {
    let n = docs.len() as u64;
    let allowed = deadline * 4;
    MongoError::within(allowed, async {
        Ok(coll.insert_many(docs).ordered(true).await?)
    })
    .await?;
    summary.written += n;
    summary.details.batches += 1;
    if summary.details.batches.is_multiple_of(10) {
        tracing::info!(
            collection = summary.details.collection.name(),
            database = %summary.details.database,
            documents = summary.written,
            "import progress"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_cut_at_the_byte_limit_in_order() {
        let doc = |n: usize| {
            RawDocumentBuf::from_document(&doc! {"n": n as i64, "pad": "x".repeat(3 << 20)})
                .expect("raw")
        };
        let cut = by_bytes((0..5).map(doc).collect());
        let sizes: Vec<usize> = cut.iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 1], "3 MiB documents, 8 MiB a request");
        let order: Vec<i64> = cut
            .iter()
            .flatten()
            .map(|d| d.get_i64("n").expect("n"))
            .collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        assert!(by_bytes(Vec::new()).is_empty());
    }

    #[test]
    fn metadata_round_trips_and_refuses_other_formats() {
        let m = ExportMetadata {
            format: EXPORT_FORMAT,
            database: "lucid".into(),
            collection: "users".into(),
            validator: doc! {"$jsonSchema": {"bsonType": "object"}},
            validation_level: "strict".into(),
            validation_action: "error".into(),
            indexes: vec![doc! {"key": {"email": 1}, "name": "users_email_unique", "unique": true}],
            documents: 3,
            exported_at: DateTime::from_millis(1_700_000_000_000),
        };
        let d = m.to_document().expect("encodes");
        assert_eq!(
            ExportMetadata::from_document(d.clone()).expect("decodes"),
            m
        );
        let mut other = d;
        other.insert("format", 2_i64);
        assert!(matches!(
            ExportMetadata::from_document(other),
            Err(MongoError::Invalid { .. })
        ));
    }
}
