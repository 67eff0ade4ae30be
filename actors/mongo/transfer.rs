//! Streaming export and import of one collection, for backups.
//!
//! **Export** answers an [`ExportMetadata`] (the collection's options — the validator, from
//! the server where it keeps one, else from `configs/mongodb/` — and index specs) and a
//! [`DocStream`] of the documents as raw BSON, pulled from the server one cursor batch at a
//! time through a bounded channel: memory does not grow with the collection.
//!
//! **Import** recreates the collection with its validator and indexes, then inserts the
//! documents in batches (`mongodb.import_batch`, at most 8 MiB each), into the same or
//! another database. A target that holds documents is refused unless the import is forced;
//! forced, the target is dropped first (like `mongorestore --drop`). Every document is
//! checked against the exported validator before it is sent. If the import fails, the
//! documents it inserted are deleted again, so the target is left empty rather than half
//! restored; run it again once the cause is fixed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::Message;
use futures_util::{Stream, StreamExt};
use mongodb::bson::{self, Bson, DateTime, Document, RawDocumentBuf, doc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::collections::Collection;
use super::crud::{DocStream, check_size, pump};
use super::schema::Schema;
use super::{Conn, MongoError, MongoHandle, MongoOp, Shared, ok_of, sealed, with_deadline};

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

/// Exports a collection: its metadata and a stream of its documents as raw BSON.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(ExportMetadata, DocStream<RawDocumentBuf>), MongoError>")]
pub struct Export {
    pub collection: Collection,
}

impl sealed::Sealed for Export {}

impl MongoOp for Export {
    type Output = (ExportMetadata, DocStream<RawDocumentBuf>);

    fn start(
        self,
        conn: Conn,
        shared: &Arc<Shared>,
    ) -> Result<impl Future<Output = Result<Self::Output, MongoError>> + Send + 'static, MongoError>
    {
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

/// Where and how to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub collection: Collection,
    /// The target database; `None`: `mongodb.database`.
    pub database: Option<String>,
    /// Replace a target that holds documents (it is dropped first).
    pub force: bool,
    pub metadata: ExportMetadata,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub database: String,
    pub collection: Collection,
    pub documents: u64,
    pub batches: u64,
    pub indexes: u64,
    pub elapsed_ms: u64,
}

impl MongoHandle {
    /// Exports a collection (see the module doc).
    pub async fn export(
        &self,
        collection: Collection,
    ) -> Result<(ExportMetadata, DocStream<RawDocumentBuf>), MongoError> {
        self.call(Export { collection }).await
    }

    /// Imports documents into a collection (see the module doc). `documents` may be any
    /// stream; one that yields nothing for `supervisor.stream_idle_timeout` fails the import.
    pub async fn import<S, E>(
        &self,
        options: ImportOptions,
        documents: S,
    ) -> Result<ImportSummary, MongoError>
    where
        S: Stream<Item = Result<RawDocumentBuf, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (conn, generation) = self.conn()?;
        let res = import(self, &conn, options, documents).await;
        if let Err(e) = &res {
            self.shared().report(generation, e);
        }
        res
    }
}

async fn import<S, E>(
    handle: &MongoHandle,
    conn: &Conn,
    options: ImportOptions,
    mut documents: S,
) -> Result<ImportSummary, MongoError>
where
    S: Stream<Item = Result<RawDocumentBuf, E>> + Unpin,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let settings = handle.settings();
    let deadline = settings.deadline;
    let idle = settings.stream_idle;
    let database = options
        .database
        .clone()
        .unwrap_or_else(|| settings.database.clone());
    super::check_database_name(&database)
        .map_err(|reason| MongoError::invalid("database", reason))?;
    let meta = &options.metadata;
    if meta.collection != options.collection.name() {
        return Err(MongoError::invalid(
            "metadata.collection",
            format!(
                "is {:?}, the import is into {:?}",
                meta.collection,
                options.collection.name()
            ),
        ));
    }
    let schema = Schema::compile(&meta.validator)
        .map_err(|e| MongoError::invalid(format!("metadata.validator.{}", e.path), e.reason))?;
    let db = conn.client.database(&database);
    let name = options.collection.name();
    let coll = db.collection::<RawDocumentBuf>(name);

    let present = with_deadline(deadline, async {
        Ok(coll.count_documents(doc! {}).limit(1).await?)
    })
    .await?;
    if present > 0 {
        if !options.force {
            let documents = with_deadline(deadline, async {
                Ok(coll.estimated_document_count().await?)
            })
            .await?;
            return Err(MongoError::NotEmpty {
                database,
                collection: name.to_owned(),
                documents,
            });
        }
        with_deadline(deadline, async { Ok(coll.drop().await?) }).await?;
    }
    let command = |cmd: Document| {
        let db = db.clone();
        async move {
            let what = cmd.keys().next().cloned().unwrap_or_default();
            let reply = with_deadline(deadline, async { Ok(db.run_command(cmd).await?) }).await;
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

    let mut summary = ImportSummary {
        database: database.clone(),
        collection: options.collection,
        documents: 0,
        batches: 0,
        indexes: meta.indexes.len() as u64,
        elapsed_ms: 0,
    };
    let batch_docs = settings.import_batch;
    let result: Result<(), MongoError> = async {
        let mut batch: Vec<RawDocumentBuf> = Vec::with_capacity(batch_docs);
        let mut batch_bytes = 0usize;
        let mut index = 0u64;
        loop {
            let next = match tokio::time::timeout(idle, documents.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return Err(MongoError::StreamIdle {
                        what: "the import source sent no document",
                        after: idle,
                    });
                }
            };
            let doc = match next {
                Some(Ok(doc)) => Some(doc),
                Some(Err(e)) => {
                    return Err(MongoError::Codec {
                        message: format!("document {index} of the import source: {e}"),
                    });
                }
                None => None,
            };
            if let Some(raw) = &doc {
                let len = raw.as_bytes().len();
                check_size(&format!("documents.{index}"), len)?;
                let parsed = Document::try_from(raw.as_ref()).map_err(|e| MongoError::Codec {
                    message: format!("document {index}: {e}"),
                })?;
                if let Some(v) = schema.violations(&parsed, 1).into_iter().next() {
                    return Err(MongoError::Invalid {
                        field: format!("documents.{index}.{}", v.field),
                        reason: v.reason,
                    });
                }
                if !batch.is_empty() && batch_bytes + len > MAX_BATCH_BYTES {
                    flush(&coll, &mut batch, deadline, &mut summary).await?;
                    batch_bytes = 0;
                }
                batch_bytes += len;
                index += 1;
            }
            match doc {
                Some(raw) => {
                    batch.push(raw);
                    if batch.len() >= batch_docs {
                        flush(&coll, &mut batch, deadline, &mut summary).await?;
                        batch_bytes = 0;
                    }
                }
                None => {
                    if !batch.is_empty() {
                        flush(&coll, &mut batch, deadline, &mut summary).await?;
                    }
                    return Ok(());
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        if summary.documents > 0 {
            let cleanup =
                with_deadline(deadline, async { Ok(coll.delete_many(doc! {}).await?) }).await;
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

/// Inserts one batch (ordered: it stops at the first failure) within the deadline, scaled by
/// the batch size — a full batch of large documents takes longer than one ping.
async fn flush(
    coll: &mongodb::Collection<RawDocumentBuf>,
    batch: &mut Vec<RawDocumentBuf>,
    deadline: Duration,
    summary: &mut ImportSummary,
) -> Result<(), MongoError> {
    let n = batch.len() as u64;
    let docs = std::mem::take(batch);
    let allowed = deadline * 4;
    with_deadline(allowed, async {
        Ok(coll.insert_many(docs).ordered(true).await?)
    })
    .await?;
    summary.documents += n;
    summary.batches += 1;
    if summary.batches.is_multiple_of(10) {
        tracing::info!(
            collection = summary.collection.name(),
            database = %summary.database,
            documents = summary.documents,
            "import progress"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
