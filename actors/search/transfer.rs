//! Streaming export and import of one index, for backups.
//!
//! **Export** ([`Export`]) answers an [`IndexMetadata`] — the index's mappings, its settings
//! without the ones the server owns, its aliases, whether it was write-blocked, and its
//! document count — and a [`Feed`] of its documents ([`ExportedDocument`]: the `_id` and the
//! `_source` as JSON text, which a backup writes as `_bulk` lines without parsing it again),
//! read with a scroll one page at a time and passed through a bounded channel: memory does
//! not grow with the index. A reader that stops
//! reading for `supervisor.stream_idle_timeout` ends the export (the scroll is cleared).
//! Scroll works the same on Elasticsearch and OpenSearch (their point-in-time APIs differ).
//!
//! **Import** ([`Import`]) follows the one contract of every store ([`crate::transfer`]). It
//! creates the index under the same name or with a prefix (a restore drill next to the live
//! data: `drill-lucid-sessions-2026.11`), with the exported mappings and settings and the
//! aliases renamed with the same prefix — so the live read alias never counts a drill's
//! documents twice. `is_write_index` is not restored from the export: the bootstrap and the
//! lifecycle put the write alias where it belongs; an index the import replaces keeps the
//! write flags it had on the aliases it gets back. A target that holds documents is refused
//! unless the import replaces it (then it is deleted first); one that exists but holds nothing
//! counts as empty — the bootstrap creates this month's index — and is recreated from the
//! export, unless the options refuse any existing target. The documents are bulk-loaded in
//! requests of `bulk_max_docs` / `bulk_max_bytes`, each request's body built from the
//! documents on the blocking pool (checking that each source is a JSON object is the import's
//! CPU work); a write block the index had is set again after the load. If anything fails — a
//! bulk error, a source that does not parse, the source's error (`import_source_failed`, with the count written) — the index the import
//! created is deleted: nothing is left half restored.
//!
//! Both are messages to the actor, so their streams run on its arbiter, not in the caller's
//! task.

use std::sync::Arc;

use actix::prelude::*;
use elasticsearch::http::Method;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{Conn, Request, SearchActor, SearchError, SearchHandle, Shared};
use crate::supervisor::DeadlineError;
use crate::supervisor::feed::{Feed, Stopped, feed};
use crate::transfer::{self, Admission, Batch, Source, SourceEnd, TargetState, next_batch};

/// The format of [`IndexMetadata`]; bumped on incompatible changes.
pub const EXPORT_FORMAT: u32 = 1;

/// Hits per scroll page.
const PAGE: usize = 1000;
/// Documents an export buffers ahead of its reader. Not a config key: the buffer only lets
/// the scroll task fetch the next page while the reader works, and what an export holds is a
/// page (`PAGE` hits) plus this, whatever the index size.
const EXPORT_BUFFER: usize = 256;
/// How long the server keeps a scroll between pages.
const SCROLL_KEEP: &str = "2m";

/// Index settings the server owns (`settings.index.<name>`): they describe this copy of the
/// index, not how to make one, and a create request refuses most of them. `blocks` is left
/// out too: a write block would refuse the load; [`IndexMetadata::write_blocked`] says whether
/// there was one, and the import sets it again after the load.
pub const SERVER_OWNED_SETTINGS: [&str; 10] = [
    "uuid",
    "creation_date",
    "creation_date_string",
    "version",
    "provided_name",
    "history_uuid",
    "resize",
    "shrink",
    "verified_before_close",
    "blocks",
];

/// One exported document: what a `_bulk` line pair carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedDocument {
    pub id: String,
    /// The `_source`, as JSON text on one line.
    pub source: Vec<u8>,
}

/// An index's definition, as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMetadata {
    pub format: u32,
    pub index: String,
    pub mappings: Value,
    /// The index settings but the server-owned ones ([`SERVER_OWNED_SETTINGS`]), nested as
    /// the server has them under `settings.index`.
    pub settings: Value,
    /// `index.blocks.write` was set (a warm or cold index): set again after the load.
    pub write_blocked: bool,
    /// Alias name → its definition (`filter`, `routing`, …), without `is_write_index`.
    pub aliases: Value,
    /// The count when the export started.
    pub documents: u64,
}

/// Exports one index (see the module doc): its metadata and a feed of its documents. A
/// failure is the feed's last item, never a silent end.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(IndexMetadata, Feed<ExportedDocument, SearchError>), SearchError>")]
pub struct Export {
    /// One concrete index (not an alias, no wildcard).
    pub index: String,
}

/// Imports one index from an export's documents (see the module doc); answers what was done.
/// An `Err` item from the source fails the import ([`SearchError::ImportSource`]).
#[derive(Message)]
#[rtype(result = "Result<ImportSummary, SearchError>")]
pub struct Import {
    pub options: ImportOptions,
    pub source: Source<ExportedDocument>,
}

impl std::fmt::Debug for Import {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Import")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Where an Elasticsearch import goes: the exported index under a prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportTarget {
    /// The index as exported: its name, mappings, settings and aliases.
    pub metadata: IndexMetadata,
    /// Put before the index and alias names (`""`: the exported names).
    pub prefix: String,
}

/// An import's target and rule (see [`Import`]).
pub type ImportOptions = transfer::ImportOptions<ImportTarget>;

/// What only an Elasticsearch import reports, beside the shared counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportDetails {
    /// The index written (`{prefix}{exported name}`).
    pub index: String,
    /// Its aliases, prefixed.
    pub aliases: Vec<String>,
    /// `_bulk` requests sent.
    pub requests: u64,
}

/// What an import did: documents read and written (an Elasticsearch import skips none: a
/// document it cannot write fails it).
pub type ImportSummary = transfer::ImportSummary<ImportDetails>;

/// A prefix an import may put before index and alias names (`--index-prefix`).
pub fn check_prefix(prefix: &str) -> Result<(), SearchError> {
    let ok = prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
        && !prefix.starts_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(SearchError::invalid(
            "prefix",
            "at most 64 of a-z 0-9 - _, not starting with - or _",
        ))
    }
}

/// Reads an index's definition from `GET /{index}`.
fn metadata_of(index: &str, definition: &Value, documents: u64) -> IndexMetadata {
    let d = &definition[index];
    let s = &d["settings"]["index"];
    let mut settings = s.as_object().cloned().unwrap_or_default();
    settings.retain(|key, _| !SERVER_OWNED_SETTINGS.contains(&key.as_str()));
    let write_blocked = matches!(&s["blocks"]["write"], Value::Bool(true))
        || s["blocks"]["write"].as_str() == Some("true");
    let mut aliases = d["aliases"].as_object().cloned().unwrap_or_default();
    for a in aliases.values_mut() {
        if let Some(o) = a.as_object_mut() {
            o.remove("is_write_index");
        }
    }
    IndexMetadata {
        format: EXPORT_FORMAT,
        index: index.to_owned(),
        mappings: d["mappings"].clone(),
        settings: Value::Object(settings),
        write_blocked,
        aliases: Value::Object(aliases),
        documents,
    }
}

impl IndexMetadata {
    /// The body that creates the index `{prefix}{index}` with aliases `{prefix}{alias}`.
    pub fn create_body(&self, prefix: &str) -> Value {
        let aliases: Map<String, Value> = self
            .aliases
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, def)| (format!("{prefix}{name}"), def.clone()))
            .collect();
        json!({
            "settings": {"index": self.settings},
            "mappings": self.mappings,
            "aliases": aliases,
        })
    }

    pub fn check(&self) -> Result<(), SearchError> {
        if self.format != EXPORT_FORMAT {
            return Err(SearchError::invalid(
                "metadata.format",
                format!(
                    "{} is not a format this version reads ({EXPORT_FORMAT})",
                    self.format
                ),
            ));
        }
        if self.index.is_empty() || self.index.starts_with(['_', '-', '+', '.']) {
            return Err(SearchError::invalid("metadata.index", "not an index name"));
        }
        Ok(())
    }
}

impl SearchHandle {
    /// Every `lucid-*` index (what a backup exports).
    pub async fn list_indices(&self) -> Result<Vec<String>, SearchError> {
        let (conn, _) = self.shared.usable()?;
        let deadline = self.shared.settings.deadline;
        let indices = SearchError::within(deadline, super::indices::gather(&conn)).await?;
        Ok(indices.into_iter().map(|i| i.name).collect())
    }

    /// Exports one index (see the module doc), through the actor's mailbox.
    pub async fn export(
        &self,
        index: &str,
    ) -> Result<(IndexMetadata, Feed<ExportedDocument, SearchError>), SearchError> {
        self.send(Export {
            index: index.to_owned(),
        })
        .await
    }

    /// What an import into index `target` (prefix included) would find there, and how many
    /// documents it holds — the rule [`Import`] applies, asked before anything is written (a
    /// restore looks at every target first). Writes nothing.
    pub async fn import_target(&self, target: &str) -> Result<(TargetState, u64), SearchError> {
        let (conn, generation) = self.shared.usable()?;
        match target_state(&conn, target, self.shared.settings.deadline).await {
            Ok((found, _)) => Ok(found),
            Err(e) => {
                self.shared.report(generation, &e);
                Err(e)
            }
        }
    }

    /// The `_source` of each document of `index` whose `_id` is one of `ids`, by id (a
    /// missing document is absent): what a drill compares with the backup's documents.
    /// Reads only.
    pub async fn sources_by_id(
        &self,
        index: &str,
        ids: &[String],
    ) -> Result<std::collections::BTreeMap<String, Value>, SearchError> {
        // `_mget` refuses an empty list (400, "no documents to get"): an empty index's sample.
        if ids.is_empty() {
            return Ok(std::collections::BTreeMap::new());
        }
        let (conn, generation) = self.shared.usable()?;
        let deadline = self.shared.settings.deadline;
        let found = SearchError::within(
            deadline,
            conn.send(
                Request::new(Method::Post, format!("/{index}/_mget")).json(&json!({ "ids": ids })),
            ),
        )
        .await;
        let body = match found {
            Ok(answer) => answer.body,
            Err(e) => {
                self.shared.report(generation, &e);
                return Err(e);
            }
        };
        Ok(body["docs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["found"] == Value::Bool(true))
            .filter_map(|d| Some((d["_id"].as_str()?.to_owned(), d["_source"].clone())))
            .collect())
    }

    /// Index `index`'s definition as the server holds it — mappings, settings but the ones
    /// the server owns, aliases — in an export's terms (`documents` is 0: not counted).
    /// `None` when there is no such index. What a drill compares with the backup's
    /// `.meta.json`. Reads only.
    pub async fn index_definition(
        &self,
        index: &str,
    ) -> Result<Option<IndexMetadata>, SearchError> {
        let (conn, generation) = self.shared.usable()?;
        let deadline = self.shared.settings.deadline;
        let found = SearchError::within(
            deadline,
            conn.send(Request::new(Method::Get, format!("/{index}"))),
        )
        .await;
        match found {
            Ok(answer) if answer.body.get(index).is_some() => {
                Ok(Some(metadata_of(index, &answer.body, 0)))
            }
            Ok(_) => Ok(None),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => {
                self.shared.report(generation, &e);
                Err(e)
            }
        }
    }

    /// Deletes every index whose name starts with `prefix` (a drill's scratch indices,
    /// `drill-<suffix>-…`); answers their names. A prefix [`check_prefix`] refuses, or an
    /// empty one, is `invalid`: this never reaches the live indices.
    pub async fn delete_prefixed(&self, prefix: &str) -> Result<Vec<String>, SearchError> {
        check_prefix(prefix)?;
        if prefix.is_empty() || "lucid-".starts_with(prefix) {
            return Err(SearchError::invalid(
                "prefix",
                "a scratch prefix, not the live one",
            ));
        }
        let (conn, generation) = self.shared.usable()?;
        let deadline = self.shared.settings.deadline;
        let deleted = async {
            let found = SearchError::within(
                deadline,
                conn.send(
                    Request::new(Method::Get, format!("/{prefix}*/_settings"))
                        .query("allow_no_indices", "true"),
                ),
            )
            .await?
            .body;
            let names: Vec<String> = found
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, _)| name.clone())
                .filter(|name| name.starts_with(prefix))
                .collect();
            for name in &names {
                match SearchError::within(
                    deadline,
                    conn.send(Request::new(Method::Delete, format!("/{name}"))),
                )
                .await
                {
                    Err(e) if e.status() != Some(404) => return Err(e),
                    _ => {}
                }
            }
            Ok(names)
        }
        .await;
        if let Err(e) = &deleted {
            self.shared.report(generation, e);
        }
        deleted
    }

    /// Imports one index from an export (see the module doc). `documents` may be any stream
    /// of documents — the export's feed, or a backup's `_bulk` file read back; one that yields nothing for
    /// `supervisor.stream_idle_timeout` fails the import, one that yields an `Err` fails it
    /// with the count written. The import runs on the actor's arbiter; the reply comes when
    /// the source ends.
    pub async fn import<S, E>(
        &self,
        options: ImportOptions,
        documents: S,
    ) -> Result<ImportSummary, SearchError>
    where
        S: Stream<Item = Result<ExportedDocument, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let source = transfer::source(documents);
        // Not `send`: its deadline is for short requests; an import takes as long as its
        // source.
        self.addr()
            .send(Import { options, source })
            .await
            .map_err(|e| crate::supervisor::not_delivered(crate::Backend::Elasticsearch, e))?
    }
}

impl Handler<Export> for SearchActor {
    type Result =
        ResponseFuture<Result<(IndexMetadata, Feed<ExportedDocument, SearchError>), SearchError>>;

    fn handle(&mut self, msg: Export, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        Box::pin(async move { export(&shared, &msg.index).await })
    }
}

impl Handler<Import> for SearchActor {
    type Result = ResponseFuture<Result<ImportSummary, SearchError>>;

    fn handle(&mut self, msg: Import, _: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        Box::pin(async move { import(&shared, msg.options, msg.source).await })
    }
}

/// Reads the definition and the first page, then hands the scroll to a task on this arbiter.
async fn export(
    shared: &Arc<Shared>,
    index: &str,
) -> Result<(IndexMetadata, Feed<ExportedDocument, SearchError>), SearchError> {
    if index.is_empty() || index.contains(['/', '*', ',', '?', '#', ' ']) {
        return Err(SearchError::invalid("index", "one concrete index name"));
    }
    let (conn, generation) = shared.usable()?;
    let deadline = shared.settings.deadline;
    let idle = shared.settings.stream_idle;
    let start = async {
        let definition = conn
            .send(Request::new(Method::Get, format!("/{index}")))
            .await?
            .body;
        if definition.get(index).is_none() {
            return Err(SearchError::invalid(
                "index",
                format!("{index} is an alias or not an index"),
            ));
        }
        let count = conn
            .send(Request::new(Method::Get, format!("/{index}/_count")))
            .await?
            .body["count"]
            .as_u64()
            .unwrap_or(0);
        let first = conn
            .send(
                Request::new(Method::Post, format!("/{index}/_search"))
                    .query("scroll", SCROLL_KEEP)
                    .json(&json!({"size": PAGE, "sort": ["_doc"]})),
            )
            .await?
            .body;
        Ok::<_, SearchError>((metadata_of(index, &definition, count), first))
    };
    let (metadata, first) = match SearchError::within(deadline, start).await {
        Ok(v) => v,
        Err(e) => {
            shared.report(generation, &e);
            return Err(e);
        }
    };
    let (feeder, lines) = feed(EXPORT_BUFFER, idle);
    tokio::spawn(async move {
        let mut page = first;
        let mut scroll_id = page["_scroll_id"].as_str().map(str::to_owned);
        let outcome: Result<(), SearchError> = async {
            loop {
                let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
                if hits.is_empty() {
                    return Ok(());
                }
                for hit in hits {
                    let doc = ExportedDocument {
                        id: hit["_id"].as_str().unwrap_or_default().to_owned(),
                        source: serde_json::to_vec(&hit["_source"]).map_err(|e| {
                            SearchError::Codec {
                                message: format!("document {}: {e}", hit["_id"]),
                            }
                        })?,
                    };
                    match feeder.send(doc).await {
                        Ok(()) => {}
                        // The reader dropped the stream.
                        Err(Stopped::Gone) => return Ok(()),
                        Err(Stopped::Idle(after)) => {
                            return Err(SearchError::StreamIdle {
                                what: "the reader did not take a document",
                                after,
                            });
                        }
                    }
                }
                let Some(id) = scroll_id.clone() else {
                    return Ok(());
                };
                let next = conn.send(
                    Request::new(Method::Post, "/_search/scroll")
                        .json(&json!({"scroll": SCROLL_KEEP, "scroll_id": id})),
                );
                page = SearchError::within(deadline, next).await?.body;
                if let Some(id) = page["_scroll_id"].as_str() {
                    scroll_id = Some(id.to_owned());
                }
            }
        }
        .await;
        if let Some(id) = scroll_id {
            let _ = tokio::time::timeout(
                deadline,
                conn.send(
                    Request::new(Method::Delete, "/_search/scroll").json(&json!({"scroll_id": id})),
                ),
            )
            .await;
        }
        if let Err(e) = outcome {
            feeder.fail(e);
        }
    });
    Ok((metadata, lines))
}

/// Where the import goes, what is there, then the load; the created index goes again when
/// anything fails.
async fn import(
    shared: &Arc<Shared>,
    options: ImportOptions,
    mut source: Source<ExportedDocument>,
) -> Result<ImportSummary, SearchError> {
    let started = Instant::now();
    let ImportTarget { metadata, prefix } = &options.target;
    metadata.check()?;
    check_prefix(prefix)?;
    let (conn, generation) = shared.usable()?;
    let settings = &shared.settings;
    let target = format!("{prefix}{}", metadata.index);
    let deadline = settings.deadline;
    // Under the live names: the daemon's own writes answer `busy` until the import ends.
    let _gate = prefix.is_empty().then(|| shared.restore_gate.hold());

    let (found, write_flags) = match target_state(&conn, &target, deadline).await {
        Ok(found) => found,
        Err(e) => {
            shared.report(generation, &e);
            return Err(e);
        }
    };
    match options.existing.admit(found.0) {
        Admission::NotEmpty => {
            return Err(SearchError::NotEmpty {
                index: target,
                documents: found.1,
            });
        }
        Admission::Exists => return Err(SearchError::Exists { index: target }),
        // An index that is there but empty is recreated from the export too.
        Admission::Into | Admission::Replace => {}
    }
    if found.0 != TargetState::Missing {
        SearchError::within(
            deadline,
            conn.send(Request::new(Method::Delete, format!("/{target}"))),
        )
        .await?;
    }
    let mut body = metadata.create_body(prefix);
    for alias in write_flags {
        if let Some(def) = body["aliases"]
            .get_mut(&alias)
            .and_then(Value::as_object_mut)
        {
            def.insert("is_write_index".to_owned(), Value::Bool(true));
        }
    }
    SearchError::within(
        deadline,
        conn.send(Request::new(Method::Put, format!("/{target}")).json(&body)),
    )
    .await?;

    let mut aliases: Vec<String> = body["aliases"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(a, _)| a.clone())
        .collect();
    aliases.sort();
    let mut summary = ImportSummary::new(ImportDetails {
        index: target.clone(),
        aliases,
        requests: 0,
    });
    let loaded = async {
        load(&conn, &target, settings, &mut source, &mut summary).await?;
        if metadata.write_blocked {
            SearchError::within(
                deadline,
                conn.send(
                    Request::new(Method::Put, format!("/{target}/_settings"))
                        .json(&json!({"index": {"blocks.write": true}})),
                ),
            )
            .await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = loaded {
        // Nothing half restored: the index this import created goes again.
        let _ = SearchError::within(
            deadline,
            conn.send(Request::new(Method::Delete, format!("/{target}"))),
        )
        .await;
        shared.report(generation, &e);
        return Err(e);
    }
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// What is at `target` — nothing, an empty index, or one holding documents (and how many) —
/// and the aliases on which it is the write index.
async fn target_state(
    conn: &Conn,
    target: &str,
    deadline: std::time::Duration,
) -> Result<((TargetState, u64), Vec<String>), SearchError> {
    let definition = match SearchError::within(
        deadline,
        conn.send(Request::new(Method::Get, format!("/{target}"))),
    )
    .await
    {
        Ok(answer) => answer.body,
        Err(e) if e.status() == Some(404) => return Ok(((TargetState::Missing, 0), Vec::new())),
        Err(e) => return Err(e),
    };
    // An alias of that name answers with the indices behind it: never import over those.
    let Some(index) = definition.get(target) else {
        return Err(SearchError::invalid(
            "target",
            format!("{target} is an alias, not an index"),
        ));
    };
    let write_flags = index["aliases"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, def)| def["is_write_index"] == true)
        .map(|(alias, _)| alias.clone())
        .collect();
    let documents = SearchError::within(
        deadline,
        conn.send(Request::new(Method::Get, format!("/{target}/_count"))),
    )
    .await?
    .body["count"]
        .as_u64()
        .unwrap_or(0);
    let found = if documents == 0 {
        TargetState::Empty
    } else {
        TargetState::Holding
    };
    Ok(((found, documents), write_flags))
}

/// Bulk-loads the source's documents into `target`, a request per batch of `bulk_max_docs` (cut
/// again at `bulk_max_bytes`), then refreshes it.
async fn load(
    conn: &Conn,
    target: &str,
    settings: &super::Settings,
    source: &mut Source<ExportedDocument>,
    summary: &mut ImportSummary,
) -> Result<(), SearchError> {
    loop {
        let Batch { items, end } =
            next_batch(source, settings.bulk_max_docs, settings.stream_idle).await;
        match end {
            Some(SourceEnd::Idle(after)) => {
                return Err(SearchError::StreamIdle {
                    what: "the import's source yielded nothing",
                    after,
                });
            }
            Some(SourceEnd::Failed(reason)) => {
                return Err(SearchError::ImportSource {
                    written: summary.written,
                    reason: crate::redact::text(&reason),
                });
            }
            None | Some(SourceEnd::Finished) => {}
        }
        let first = summary.read;
        summary.read += items.len() as u64;
        if !items.is_empty() {
            let (target, max_bytes) = (target.to_owned(), settings.bulk_max_bytes);
            let requests =
                tokio::task::spawn_blocking(move || bulk_bodies(&target, items, first, max_bytes))
                    .await
                    .map_err(|e| SearchError::Codec {
                        message: format!("building the import's bulk requests stopped: {e}"),
                    })??;
            for (body, documents) in requests {
                bulk(conn, settings, body).await?;
                summary.written += documents;
                summary.details.requests += 1;
            }
        }
        if end == Some(SourceEnd::Finished) {
            break;
        }
    }
    let refresh = Request::new(Method::Post, format!("/{target}/_refresh"));
    SearchError::within(settings.deadline, conn.send(refresh)).await?;
    Ok(())
}

/// `_bulk` bodies for exported documents into `target`, each with how many documents it
/// holds: cut once a body reaches `max_bytes`. Each source must be one JSON object (a bulk
/// request with a broken line fails as a whole, naming no document); `first` numbers the
/// documents (from 1 in errors) across batches. CPU work: run on the blocking pool.
fn bulk_bodies(
    target: &str,
    docs: Vec<ExportedDocument>,
    first: u64,
    max_bytes: usize,
) -> Result<Vec<(Vec<u8>, u64)>, SearchError> {
    let mut out = Vec::new();
    let (mut body, mut in_body) = (Vec::new(), 0u64);
    for (i, doc) in docs.iter().enumerate() {
        let object = if doc.source.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            Err("not a JSON object".to_owned())
        } else {
            serde_json::from_slice::<serde::de::IgnoredAny>(&doc.source)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        if let Err(reason) = object {
            return Err(SearchError::Codec {
                message: format!("document {} ({:?}): {reason}", first + i as u64 + 1, doc.id),
            });
        }
        let action = json!({"index": {"_index": target, "_id": doc.id}});
        body.extend_from_slice(action.to_string().as_bytes());
        body.push(b'\n');
        body.extend_from_slice(&doc.source);
        body.push(b'\n');
        in_body += 1;
        if body.len() >= max_bytes {
            out.push((std::mem::take(&mut body), in_body));
            in_body = 0;
        }
    }
    if in_body > 0 {
        out.push((body, in_body));
    }
    Ok(out)
}

/// Sends one `_bulk` request; the first item error fails it.
async fn bulk(conn: &Conn, settings: &super::Settings, body: Vec<u8>) -> Result<(), SearchError> {
    let mut req = Request::new(Method::Post, "/_bulk").ndjson(body);
    req.timeout = Some(settings.bulk_timeout());
    let answer = conn.send(req).await?.body;
    if answer["errors"] == true {
        let first = answer["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.as_object().and_then(|o| o.values().next()))
            .find(|r| r.get("error").is_some())
            .cloned()
            .unwrap_or(Value::Null);
        return Err(SearchError::from_answer(
            first["status"].as_u64().unwrap_or(400) as u16,
            &json!({"error": first["error"]}),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_keeps_mappings_restorable_settings_and_aliases_without_the_write_flag() {
        let definition = json!({"lucid-blocks-2026.10": {
            "aliases": {"lucid-blocks": {}, "lucid-blocks-write": {"is_write_index": true}},
            "mappings": {"dynamic": "strict", "properties": {"height": {"type": "long"}}},
            "settings": {"index": {
                "number_of_shards": "1", "number_of_replicas": "0", "priority": "0",
                "uuid": "abc", "creation_date": "1", "provided_name": "x",
                "blocks": {"write": "true"}
            }}
        }});
        let m = metadata_of("lucid-blocks-2026.10", &definition, 7);
        assert_eq!(m.documents, 7);
        assert!(m.write_blocked);
        assert_eq!(
            m.settings,
            json!({"number_of_shards": "1", "number_of_replicas": "0", "priority": "0"})
        );
        assert_eq!(
            m.aliases,
            json!({"lucid-blocks": {}, "lucid-blocks-write": {}})
        );
        let body = m.create_body("drill-");
        assert_eq!(
            body["aliases"],
            json!({"drill-lucid-blocks": {}, "drill-lucid-blocks-write": {}})
        );
        assert_eq!(body["mappings"]["dynamic"], "strict");
        assert!(body["settings"]["index"].get("uuid").is_none());
        // Round trip as JSON (how a backup stores it), and a later format is refused.
        let back: IndexMetadata =
            serde_json::from_value(serde_json::to_value(&m).expect("json")).expect("back");
        assert_eq!(back, m);
        let later = IndexMetadata {
            format: 2,
            ..m.clone()
        };
        assert!(later.check().is_err());
        assert!(m.check().is_ok());
    }

    #[test]
    fn bulk_bodies_carry_ids_and_sources_and_are_cut_at_the_byte_limit() {
        let docs: Vec<ExportedDocument> = (0..3)
            .map(|i| ExportedDocument {
                id: format!("s{i}"),
                source: format!("{{\"n\":{i}}}").into_bytes(),
            })
            .collect();
        let whole = bulk_bodies("drill-x", docs.clone(), 0, 1 << 20).expect("bodies");
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].1, 3);
        let text = String::from_utf8(whole[0].0.clone()).expect("utf-8");
        let first: Vec<Value> = text
            .lines()
            .take(2)
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(
            first,
            [
                json!({"index": {"_index": "drill-x", "_id": "s0"}}),
                json!({"n": 0})
            ]
        );
        // A limit below one document's size: a request per document.
        let cut = bulk_bodies("drill-x", docs, 0, 10).expect("bodies");
        assert_eq!(cut.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 1, 1]);
        // Documents are numbered across batches; a source must be a JSON object.
        for source in [&b"{not json"[..], b"[1, 2]"] {
            let broken = vec![ExportedDocument {
                id: "b".into(),
                source: source.to_vec(),
            }];
            let e = bulk_bodies("x", broken, 700, 1 << 20).expect_err("broken");
            assert!(e.to_string().contains("document 701 (\"b\")"), "{e}");
        }
    }

    #[test]
    fn prefixes_are_index_name_safe() {
        for ok in ["", "drill-", "restore_2026-"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["Drill-", "-x", "_x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
