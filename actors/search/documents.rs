//! Documents: routed writes, by-id reads, updates and deletes, and bulk.
//!
//! **Routing.** A document's month is the UTC month of its entity's time field
//! ([`Entity::time_field`]: RFC 3339 text or epoch milliseconds). While that month's index is
//! hot (the month, and `warm_after` after it) the document goes to it by its concrete name;
//! after that the month is read-only, so the document goes to the entity's write alias (one
//! index: the current month's) and is counted as late — searches through the read alias
//! still find it. A document more than a month in the future is refused: the sender's clock
//! is wrong. A write that finds its own index already blocked (the lifecycle ran first) is
//! sent again as late.
//!
//! **By id.** The concrete index is resolved first — from the caller's time hint, else with
//! an `ids` query on the read alias — and the request goes to that index: never a write
//! through a multi-index alias. An id found in two months is ambiguous (give a hint).
//!
//! **Bulk** splits the documents into requests of at most `bulk_max_docs` documents and
//! `bulk_max_bytes` bytes, sends at most `bulk_in_flight` at once, retries the items the
//! server refused with 429 or 503 (`bulk_retries`, with backoff), and answers one result per
//! document, in order: where it went, or exactly why it was refused.
//!
//! Ids are 1–512 bytes of `A-Z a-z 0-9 . _ - : @`, starting with a letter or digit (they go
//! into URL paths as they are).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::Message;
use chrono::{DateTime, TimeZone, Utc};
use elasticsearch::http::Method;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::lifecycle::{self, Policy};
use super::names::{Entity, Month};
use super::{Answer, Conn, Request, SearchError, SearchOp, Settings, Shared, sealed};
use crate::supervisor::link::OpFuture;
use crate::supervisor::{BackoffPolicy, retry_pause};

// ---------------------------------------------------------------------------------------------
// Checks and routing

pub(crate) fn check_id(id: &str) -> Result<(), SearchError> {
    let ok = (1..=512).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@'));
    if ok {
        Ok(())
    } else {
        Err(SearchError::invalid(
            "id",
            "must be 1-512 bytes of A-Z a-z 0-9 . _ - : @, starting with a letter or digit",
        ))
    }
}

/// The time that decides a document's month.
pub(crate) fn document_time(entity: Entity, source: &Value) -> Result<DateTime<Utc>, SearchError> {
    let field = entity.time_field();
    let object = source
        .as_object()
        .ok_or_else(|| SearchError::invalid("document", "must be a JSON object"))?;
    let bad = |why: &str| SearchError::invalid(field, why.to_owned());
    match object.get(field) {
        None | Some(Value::Null) => Err(bad("is required: it decides the monthly index")),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| bad(&format!("{s:?} is not an RFC 3339 time: {e}"))),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .ok_or_else(|| bad("is not a time in epoch milliseconds")),
        Some(_) => Err(bad("must be an RFC 3339 string or epoch milliseconds")),
    }
}

/// Where a document goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// Its own month's index.
    Own(String),
    /// The write alias: its month is no longer writable.
    Late(String),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Own(n) | Target::Late(n) => n,
        }
    }

    fn late(&self) -> bool {
        matches!(self, Target::Late(_))
    }
}

pub(crate) fn route(
    entity: Entity,
    time: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Result<Target, SearchError> {
    let month = Month::of(time);
    let newest = Month::of(now).next();
    if month > newest {
        return Err(SearchError::invalid(
            entity.time_field(),
            format!("is in {month}, after {newest}: check the sender's clock"),
        ));
    }
    if lifecycle::writable(month, now, policy) {
        Ok(Target::Own(entity.index(month).to_string()))
    } else {
        Ok(Target::Late(entity.write_alias()))
    }
}

fn encode(source: &Value, max_bytes: usize) -> Result<Vec<u8>, SearchError> {
    let bytes = serde_json::to_vec(source).map_err(|e| SearchError::Codec {
        message: e.to_string(),
    })?;
    if bytes.len() > max_bytes {
        return Err(SearchError::invalid(
            "document",
            format!(
                "{} bytes, more than elasticsearch.bulk_max_bytes ({max_bytes})",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

fn is_write_block(e: &SearchError) -> bool {
    matches!(e, SearchError::Server { status: 403, kind, .. } if kind == "cluster_block_exception")
}

// ---------------------------------------------------------------------------------------------
// One document

/// Where a document was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexReply {
    /// The concrete index.
    pub index: String,
    pub id: String,
    /// Its month was no longer writable: it went to the write index.
    pub late: bool,
    /// New (`false`: an existing document with that id was replaced).
    pub created: bool,
}

/// Indexes one document into its month (see the module doc); replaces a document with the
/// same id in that index.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<IndexReply, SearchError>")]
pub struct IndexDoc {
    pub entity: Entity,
    /// `None`: the server picks one.
    pub id: Option<String>,
    pub source: Value,
    /// Wait until the document is searchable.
    pub refresh: bool,
}

impl sealed::Sealed for IndexDoc {}

impl SearchOp for IndexDoc {
    type Output = IndexReply;
    const WRITES: bool = true;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        if let Some(id) = &self.id {
            check_id(id)?;
        }
        let time = document_time(self.entity, &self.source)?;
        let body = encode(&self.source, shared.settings.bulk_max_bytes)?;
        let target = route(self.entity, time, shared.now(), &shared.settings.policy)?;
        let shared = shared.clone();
        Ok(async move {
            let write = |target: Target| {
                let path = match &self.id {
                    Some(id) => format!("/{}/_doc/{id}", target.name()),
                    None => format!("/{}/_doc", target.name()),
                };
                let method = if self.id.is_some() {
                    Method::Put
                } else {
                    Method::Post
                };
                let mut req = Request::new(method, path);
                req.body = Some(body.clone());
                if self.refresh {
                    req = req.query("refresh", "wait_for");
                }
                if target.late() {
                    // A missing alias must be an error, never a new index of that name.
                    req = req.query("require_alias", "true");
                }
                let conn = &conn;
                async move { (conn.send(req).await, target) }
            };
            let (res, target) = match write(target).await {
                (Err(e), Target::Own(_)) if is_write_block(&e) => {
                    write(Target::Late(self.entity.write_alias())).await
                }
                other => other,
            };
            let body = res?.body;
            if target.late() {
                shared.count_late(1);
            }
            Ok(IndexReply {
                index: body["_index"].as_str().unwrap_or(target.name()).to_owned(),
                id: body["_id"].as_str().unwrap_or_default().to_owned(),
                late: target.late(),
                created: body["result"] == "created",
            })
        })
    }
}

/// A document found by id or by a search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub index: String,
    pub id: String,
    pub source: Value,
    /// The sort values (for `search_after`).
    pub sort: Vec<Value>,
}

impl Hit {
    /// Moves the fields out of a hit (no copy of the source).
    pub(crate) fn from_owned(mut hit: Value) -> Hit {
        let mut text = |key: &str| match hit[key].take() {
            Value::String(s) => s,
            _ => String::new(),
        };
        let index = text("_index");
        let id = text("_id");
        Hit {
            index,
            id,
            source: hit["_source"].take(),
            sort: match hit["sort"].take() {
                Value::Array(a) => a,
                _ => Vec::new(),
            },
        }
    }
}

/// The concrete index holding `id` (and the document): the hint's month first, else an `ids`
/// query on the read alias.
async fn resolve(
    conn: &Conn,
    entity: Entity,
    id: &str,
    hint: Option<DateTime<Utc>>,
) -> Result<Option<Hit>, SearchError> {
    if let Some(hint) = hint {
        let index = entity.index(Month::of(hint)).to_string();
        match conn
            .send(Request::new(Method::Get, format!("/{index}/_doc/{id}")))
            .await
        {
            Ok(answer) if answer.body["found"] == true => {
                return Ok(Some(Hit::from_owned(answer.body)));
            }
            Ok(_) => {}
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e),
        }
    }
    let mut answer = conn
        .send(
            Request::new(Method::Post, format!("/{}/_search", entity.read_alias()))
                .query("ignore_unavailable", "true")
                .query("allow_no_indices", "true")
                .json(&json!({"query": {"ids": {"values": [id]}}, "size": 2})),
        )
        .await?
        .body;
    let mut hits = match answer["hits"]["hits"].take() {
        Value::Array(hits) => hits,
        _ => Vec::new(),
    };
    match hits.as_mut_slice() {
        [] => Ok(None),
        [one] => Ok(Some(Hit::from_owned(one.take()))),
        many => Err(SearchError::Ambiguous {
            entity: entity.name(),
            id: id.to_owned(),
            indices: many
                .iter()
                .filter_map(|h| h["_index"].as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// One document by id; `None` when there is none.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<Hit>, SearchError>")]
pub struct GetDoc {
    pub entity: Entity,
    pub id: String,
    /// The document's time, if the caller knows it: finds the index without a search.
    pub hint: Option<DateTime<Utc>>,
}

impl sealed::Sealed for GetDoc {}

impl SearchOp for GetDoc {
    type Output = Option<Hit>;

    fn start(self, conn: Conn, _: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        check_id(&self.id)?;
        Ok(async move { resolve(&conn, self.entity, &self.id, self.hint).await })
    }
}

/// Merges `doc` into the document with that id, in the index that holds it. The time field
/// cannot change (it decides the index): delete and index again to move a document.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<IndexReply, SearchError>")]
pub struct UpdateDoc {
    pub entity: Entity,
    pub id: String,
    pub hint: Option<DateTime<Utc>>,
    /// The fields to set (a partial document).
    pub doc: Value,
    pub refresh: bool,
}

impl sealed::Sealed for UpdateDoc {}

impl SearchOp for UpdateDoc {
    type Output = IndexReply;
    const WRITES: bool = true;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        check_id(&self.id)?;
        let fields = self
            .doc
            .as_object()
            .ok_or_else(|| SearchError::invalid("doc", "must be a JSON object"))?;
        if fields.contains_key(self.entity.time_field()) {
            return Err(SearchError::invalid(
                self.entity.time_field(),
                "decides the document's monthly index and cannot be updated; delete the document and index it again",
            ));
        }
        encode(&self.doc, shared.settings.bulk_max_bytes)?;
        Ok(async move {
            let hit = resolve(&conn, self.entity, &self.id, self.hint)
                .await?
                .ok_or_else(|| SearchError::NotFound {
                    entity: self.entity.name(),
                    id: self.id.clone(),
                })?;
            let mut req = Request::new(Method::Post, format!("/{}/_update/{}", hit.index, self.id))
                .json(&json!({"doc": self.doc}));
            if self.refresh {
                req = req.query("refresh", "wait_for");
            }
            let body = conn.send(req).await?.body;
            Ok(IndexReply {
                index: hit.index,
                id: self.id,
                late: false,
                created: body["result"] == "created",
            })
        })
    }
}

/// Deletes the document with that id from the index that holds it; answers whether there
/// was one.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<bool, SearchError>")]
pub struct DeleteDoc {
    pub entity: Entity,
    pub id: String,
    pub hint: Option<DateTime<Utc>>,
    pub refresh: bool,
}

impl sealed::Sealed for DeleteDoc {}

impl SearchOp for DeleteDoc {
    type Output = bool;
    const WRITES: bool = true;

    fn start(self, conn: Conn, _: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        check_id(&self.id)?;
        Ok(async move {
            let Some(hit) = resolve(&conn, self.entity, &self.id, self.hint).await? else {
                return Ok(false);
            };
            let mut req = Request::new(Method::Delete, format!("/{}/_doc/{}", hit.index, self.id));
            if self.refresh {
                req = req.query("refresh", "wait_for");
            }
            match conn.send(req).await {
                Ok(_) => Ok(true),
                Err(e) if e.status() == Some(404) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Bulk

/// One document of a bulk.
#[derive(Debug, Clone)]
pub struct BulkDoc {
    pub id: Option<String>,
    pub source: Value,
}

/// One document's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum BulkItem {
    Indexed(IndexReply),
    /// `status` 0: refused by lucid-db before sending (`kind` "invalid").
    Failed {
        status: u16,
        kind: String,
        reason: String,
    },
}

impl BulkItem {
    pub fn is_ok(&self) -> bool {
        matches!(self, BulkItem::Indexed(_))
    }
}

/// What a bulk did, one item per document in order.
#[derive(Debug, Clone, Serialize)]
pub struct BulkReply {
    pub items: Vec<BulkItem>,
    pub indexed: u64,
    pub failed: u64,
    pub late: u64,
    /// Bulk requests sent (retries included).
    pub requests: u64,
}

/// Indexes many documents of one entity (see the module doc). A large bulk takes longer than
/// one call's deadline: send it with [`super::SearchHandle::call_within`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<BulkReply, SearchError>")]
pub struct Bulk {
    pub entity: Entity,
    pub docs: Vec<BulkDoc>,
    /// Wait until the documents are searchable.
    pub refresh: bool,
}

/// A document checked, routed and encoded, ready to send: its position in its batch, entity,
/// target and NDJSON source.
pub(crate) struct Prepared {
    pub(crate) pos: usize,
    entity: Entity,
    id: Option<String>,
    target: Target,
    source: Vec<u8>,
}

impl Prepared {
    /// Checks the id and the time, routes by `now` and encodes (see the module doc).
    pub(crate) fn new(
        entity: Entity,
        doc: BulkDoc,
        now: DateTime<Utc>,
        settings: &super::Settings,
    ) -> Result<Prepared, SearchError> {
        if let Some(id) = &doc.id {
            check_id(id)?;
        }
        let time = document_time(entity, &doc.source)?;
        let target = route(entity, time, now, &settings.policy)?;
        let source = encode(&doc.source, settings.bulk_max_bytes)?;
        Ok(Prepared {
            pos: 0,
            entity,
            id: doc.id,
            target,
            source,
        })
    }

    /// What it counts for against `bulk_max_bytes`: the source and its action line.
    pub(crate) fn size(&self) -> usize {
        self.source.len() + 128
    }

    /// A document of `source_len` bytes for the indexer's tests, which never send it.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str, source_len: usize) -> Prepared {
        Prepared {
            pos: 0,
            entity: Entity::Sessions,
            id: Some(id.to_owned()),
            target: Target::Own("lucid-sessions-2026.11".to_owned()),
            source: vec![b' '; source_len],
        }
    }

    #[cfg(test)]
    pub(crate) fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }

    fn lines(&self, out: &mut Vec<u8>) {
        // Index names and ids are checked to need no JSON escaping (see `check_id`).
        out.extend_from_slice(b"{\"index\":{\"_index\":\"");
        out.extend_from_slice(self.target.name().as_bytes());
        out.push(b'"');
        if let Some(id) = &self.id {
            out.extend_from_slice(b",\"_id\":\"");
            out.extend_from_slice(id.as_bytes());
            out.push(b'"');
        }
        if self.target.late() {
            out.extend_from_slice(b",\"require_alias\":true");
        }
        out.extend_from_slice(b"}}\n");
        out.extend_from_slice(&self.source);
        out.push(b'\n');
    }
}

/// Splits into requests by count and bytes.
fn batches(docs: Vec<Prepared>, max_docs: usize, max_bytes: usize) -> Vec<Vec<Prepared>> {
    let mut out = Vec::new();
    let mut current: Vec<Prepared> = Vec::new();
    let mut bytes = 0;
    for d in docs {
        let size = d.size();
        if !current.is_empty() && (current.len() >= max_docs || bytes + size > max_bytes) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(d);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// One document's outcome, by its position in its batch.
pub(crate) type Outcome = (usize, Result<IndexReply, SearchError>);

/// Sends one request's documents, retrying 429/503 items (and the whole request on a 429
/// or 503 answer) up to `bulk_retries` times; re-routes items whose own index turned
/// read-only, and counts the documents that went late. Answers each document's outcome and
/// the requests sent.
pub(crate) async fn send_batch(
    conn: &Conn,
    shared: &Shared,
    pending: Vec<Prepared>,
    refresh: bool,
) -> (Vec<Outcome>, u64) {
    let sent = send_with_retries(
        |req| conn.send(req),
        &shared.settings,
        pending,
        refresh,
        rand::random,
        |n| shared.count_retried(n),
    )
    .await;
    let late = sent
        .outcomes
        .iter()
        .filter(|(_, outcome)| outcome.as_ref().is_ok_and(|r| r.late))
        .count();
    shared.count_late(late as u64);
    (sent.outcomes, sent.requests)
}

/// What one batch came to.
struct Sent {
    outcomes: Vec<Outcome>,
    requests: u64,
}

/// The pauses before what a cluster refused with 429 or 503 is sent again: the supervisor's
/// retry schedule ([`retry_pause`]) with ceilings of 200 ms doubling to 6.4 s, so retry `n`
/// waits between half and all of `200 ms × 2^(n-1)`.
pub(crate) const BULK_RETRY: BackoffPolicy = BackoffPolicy {
    base: Duration::from_millis(200),
    factor: 2,
    cap: Duration::from_millis(6400),
    // Unused: each batch starts over at attempt 1.
    reset_after: Duration::ZERO,
};

/// The loop of [`send_batch`] on any transport (`send`: one bulk request, its answer). Round
/// `n` of what is sent again waits [`BULK_RETRY`]'s pause for attempt `n`, its jitter drawn
/// from `jitter`: callers refused by an overloaded cluster together do not come back in
/// step. `retried` counts the items refused and sent again, as each round is (not once the
/// batch is done: a retry in progress shows in `retried_documents`).
async fn send_with_retries<S, F>(
    send: S,
    settings: &Settings,
    mut pending: Vec<Prepared>,
    refresh: bool,
    mut jitter: impl FnMut() -> f64,
    retried: impl Fn(u64),
) -> Sent
where
    S: Fn(Request) -> F,
    F: Future<Output = Result<Answer, SearchError>>,
{
    let retries = settings.bulk_retries;
    let mut sent = Sent {
        outcomes: Vec::new(),
        requests: 0,
    };
    let mut attempt = 0;
    while !pending.is_empty() {
        let mut body = Vec::new();
        for d in &pending {
            d.lines(&mut body);
        }
        let mut req = Request::new(Method::Post, "/_bulk").ndjson(body);
        // A full request takes longer than one call; the bulk as a whole has its own deadline.
        req.timeout = Some(settings.bulk_timeout());
        if refresh {
            req = req.query("refresh", "wait_for");
        }
        sent.requests += 1;
        let answer = send(req).await;
        let mut again = Vec::new();
        let mut refused = 0;
        match answer {
            Ok(answer) => {
                // Read in place: no copy of the answer per item.
                let empty = Vec::new();
                let items = answer.body["items"].as_array().unwrap_or(&empty);
                for (d, item) in pending
                    .into_iter()
                    .zip(items.iter().chain(std::iter::repeat(&Value::Null)))
                {
                    let result = item
                        .as_object()
                        .and_then(|o| o.values().next())
                        .unwrap_or(&Value::Null);
                    let status = result["status"].as_u64().unwrap_or(0) as u16;
                    if (200..300).contains(&status) {
                        sent.outcomes.push((
                            d.pos,
                            Ok(IndexReply {
                                index: result["_index"]
                                    .as_str()
                                    .unwrap_or(d.target.name())
                                    .to_owned(),
                                id: result["_id"].as_str().unwrap_or_default().to_owned(),
                                late: d.target.late(),
                                created: result["result"] == "created",
                            }),
                        ));
                        continue;
                    }
                    let error =
                        SearchError::from_answer(status, &json!({"error": result["error"]}));
                    if (status == 429 || status == 503) && attempt < retries {
                        refused += 1;
                        again.push(d);
                    } else if is_write_block(&error) && !d.target.late() {
                        again.push(Prepared {
                            target: Target::Late(d.entity.write_alias()),
                            ..d
                        });
                    } else {
                        sent.outcomes.push((d.pos, Err(error)));
                    }
                }
            }
            Err(e) if matches!(e.status(), Some(429) | Some(503)) && attempt < retries => {
                refused = pending.len();
                again = pending;
            }
            Err(e) => {
                for d in pending {
                    sent.outcomes.push((d.pos, Err(e.clone())));
                }
            }
        }
        retried(refused as u64);
        if !again.is_empty() {
            attempt += 1;
            tokio::time::sleep(retry_pause(&BULK_RETRY, attempt, jitter())).await;
        }
        pending = again;
    }
    sent
}

fn failed(e: SearchError) -> BulkItem {
    match e {
        SearchError::Server {
            status,
            kind,
            reason,
        } => BulkItem::Failed {
            status,
            kind,
            reason,
        },
        SearchError::Invalid { field, reason } => BulkItem::Failed {
            status: 0,
            kind: "invalid".to_owned(),
            reason: format!("{field}: {reason}"),
        },
        other => BulkItem::Failed {
            status: 0,
            kind: other.code().to_owned(),
            reason: other.to_string(),
        },
    }
}

impl sealed::Sealed for Bulk {}

impl SearchOp for Bulk {
    type Output = BulkReply;
    const WRITES: bool = true;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        if self.docs.is_empty() {
            return Err(SearchError::invalid("docs", "is empty"));
        }
        let settings = shared.settings.clone();
        let now = shared.now();
        let entity = self.entity;
        let mut items: Vec<Option<BulkItem>> = vec![None; self.docs.len()];
        let mut ready = Vec::new();
        for (pos, doc) in self.docs.into_iter().enumerate() {
            match Prepared::new(entity, doc, now, &settings) {
                Ok(p) => ready.push(Prepared { pos, ..p }),
                Err(e) => items[pos] = Some(failed(e)),
            }
        }
        let shared = shared.clone();
        Ok(async move {
            let batches = batches(ready, settings.bulk_max_docs, settings.bulk_max_bytes);
            let mut requests = 0;
            let mut results = futures_util::stream::iter(batches)
                .map(|batch| send_batch(&conn, &shared, batch, self.refresh))
                .buffer_unordered(settings.bulk_in_flight);
            while let Some((done, sent)) = results.next().await {
                requests += sent;
                for (pos, outcome) in done {
                    if let Some(slot) = items.get_mut(pos) {
                        *slot = Some(match outcome {
                            Ok(reply) => BulkItem::Indexed(reply),
                            Err(e) => failed(e),
                        });
                    }
                }
            }
            let items: Vec<BulkItem> = items
                .into_iter()
                .map(|i| {
                    i.unwrap_or(BulkItem::Failed {
                        status: 0,
                        kind: "not_sent".to_owned(),
                        reason: "no answer for this item".to_owned(),
                    })
                })
                .collect();
            let late = items
                .iter()
                .filter(|i| matches!(i, BulkItem::Indexed(r) if r.late))
                .count() as u64;
            let indexed = items.iter().filter(|i| i.is_ok()).count() as u64;
            Ok(BulkReply {
                failed: items.len() as u64 - indexed,
                indexed,
                late,
                requests,
                items,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;
    use std::time::Duration;

    use super::*;

    /// Each bulk request a test transport was sent: when (since the batch began) and the ids
    /// of the documents in it.
    type Requests = Rc<RefCell<Vec<(Duration, Vec<String>)>>>;

    /// A transport for [`send_with_retries`] that records each request and answers it with the
    /// next of `answers` (bodies of 2xx answers, or the error of a refused request).
    fn transport(
        answers: Vec<Result<Value, SearchError>>,
    ) -> (
        impl Fn(Request) -> std::future::Ready<Result<Answer, SearchError>>,
        Requests,
    ) {
        let t0 = tokio::time::Instant::now();
        let requests = Requests::default();
        let seen = requests.clone();
        let answers = RefCell::new(VecDeque::from(answers));
        let send = move |req: Request| {
            let body = String::from_utf8(req.body.unwrap_or_default()).expect("utf-8");
            let ids = body
                .lines()
                .step_by(2)
                .map(|action| {
                    let action: Value = serde_json::from_str(action).expect("action line");
                    action["index"]["_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            seen.borrow_mut().push((t0.elapsed(), ids));
            let answer = answers.borrow_mut().pop_front().expect("an answer left");
            std::future::ready(answer.map(|body| Answer { body }))
        };
        (send, requests)
    }

    fn docs(ids: &[&str]) -> Vec<Prepared> {
        ids.iter()
            .enumerate()
            .map(|(pos, id)| Prepared {
                pos,
                ..Prepared::for_test(id, 16)
            })
            .collect()
    }

    fn indexed(id: &str) -> Value {
        json!({"index": {"status": 201, "_index": "lucid-sessions-2026.11", "_id": id, "result": "created"}})
    }

    fn rejected() -> Value {
        json!({"index": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}})
    }

    fn overloaded() -> SearchError {
        SearchError::Server {
            status: 429,
            kind: "es_rejected_execution_exception".to_owned(),
            reason: "queue full".to_owned(),
        }
    }

    /// The settings the retries read: three retries by default.
    fn retrying() -> Settings {
        let cfg = crate::Config::defaults().expect("defaults");
        let settings = Settings::from_config(&cfg.elasticsearch, &cfg.supervisor);
        assert_eq!(settings.bulk_retries, 3);
        settings
    }

    /// Items refused with 429 — one by one, or the whole request — are sent again after the
    /// retry pause for that attempt (with the jitter sample 0.5: three quarters of the
    /// ceiling, 200 ms doubling), on paused time; the others are answered from the first
    /// answer.
    #[tokio::test(start_paused = true)]
    async fn refused_items_are_sent_again_after_the_backoff_with_jitter() {
        let (send, requests) = transport(vec![
            Ok(json!({"items": [indexed("a"), rejected()]})),
            Err(overloaded()),
            Ok(json!({"items": [indexed("b")]})),
        ]);
        let count = std::cell::Cell::new(0);
        let retried = |n| count.set(count.get() + n);
        let sent =
            send_with_retries(send, &retrying(), docs(&["a", "b"]), false, || 0.5, retried).await;
        let ids = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            *requests.borrow(),
            vec![
                (Duration::ZERO, ids(&["a", "b"])),
                (Duration::from_millis(150), ids(&["b"])),
                (Duration::from_millis(150 + 300), ids(&["b"])),
            ]
        );
        let mut outcomes = sent.outcomes;
        outcomes.sort_by_key(|(pos, _)| *pos);
        let ids_indexed: Vec<_> = outcomes
            .iter()
            .map(|(_, o)| o.as_ref().map(|r| r.id.clone()))
            .collect();
        assert_eq!(ids_indexed, [Ok("a".to_owned()), Ok("b".to_owned())]);
        assert_eq!((sent.requests, count.get()), (3, 2));
    }

    /// A refusal that lasts is the item's answer once `bulk_retries` retries are spent.
    #[tokio::test(start_paused = true)]
    async fn a_lasting_refusal_is_the_answer_after_the_last_retry() {
        let (send, requests) = transport(vec![Err(overloaded()); 4]);
        let count = std::cell::Cell::new(0);
        let retried = |n| count.set(count.get() + n);
        let sent =
            send_with_retries(send, &retrying(), docs(&["a", "b"]), false, || 0.5, retried).await;
        let at: Vec<Duration> = requests.borrow().iter().map(|(t, _)| *t).collect();
        // 0.75 × 200, 400 and 800 ms.
        assert_eq!(
            at,
            [0, 150, 450, 1050].map(Duration::from_millis),
            "one request and three retries"
        );
        assert_eq!((sent.requests, count.get()), (4, 6));
        assert_eq!(sent.outcomes.len(), 2);
        for (_, outcome) in sent.outcomes {
            assert_eq!(outcome.expect_err("refused").status(), Some(429));
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    #[test]
    fn documents_go_to_their_month_while_it_is_hot_and_to_the_write_alias_after() {
        let p = Policy::default();
        let now = at("2026-12-05T12:00:00Z");
        // The last millisecond of November, in UTC, while November is hot (until 8 Dec).
        assert_eq!(
            route(Entity::Sessions, at("2026-11-30T23:59:59.999Z"), now, &p),
            Ok(Target::Own("lucid-sessions-2026.11".into()))
        );
        assert_eq!(
            route(Entity::Sessions, at("2026-12-01T00:00:00Z"), now, &p),
            Ok(Target::Own("lucid-sessions-2026.12".into()))
        );
        // 01:00 on 1 December in UTC+2 is still November in UTC.
        assert_eq!(
            route(Entity::Sessions, at("2026-12-01T01:00:00+02:00"), now, &p),
            Ok(Target::Own("lucid-sessions-2026.11".into()))
        );
        // October turned warm on 8 November: late.
        assert_eq!(
            route(Entity::Sessions, at("2026-10-31T10:00:00Z"), now, &p),
            Ok(Target::Late("lucid-sessions-write".into()))
        );
        // Next month is fine (clocks around midnight), the one after is refused.
        assert!(route(Entity::Sessions, at("2027-01-02T00:00:00Z"), now, &p).is_ok());
        assert!(matches!(
            route(Entity::Sessions, at("2027-02-01T00:00:00Z"), now, &p),
            Err(SearchError::Invalid { field, .. }) if field == "started_at"
        ));
    }

    #[test]
    fn the_time_field_is_required_and_read_in_both_forms() {
        let e = Entity::Blocks;
        assert_eq!(
            document_time(e, &json!({"timestamp": "2026-11-01T00:00:00Z"})),
            Ok(at("2026-11-01T00:00:00Z"))
        );
        assert_eq!(
            document_time(e, &json!({"timestamp": 1_793_491_200_000_i64})),
            Ok(at("2026-11-01T00:00:00Z"))
        );
        for bad in [
            json!({}),
            json!({"timestamp": null}),
            json!({"timestamp": "yesterday"}),
            json!({"timestamp": "2026-11-01"}),
            json!({"timestamp": true}),
            json!([1, 2]),
        ] {
            assert!(document_time(e, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_path_safe() {
        for ok in ["a", "s-1", "0x12ab", "user@example.com", "a:b.c_d"] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "_doc",
            "a/b",
            "a b",
            "a?b",
            "é",
            &"x".repeat(513),
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn batches_respect_count_and_bytes_and_keep_order() {
        let doc = |pos, len| Prepared {
            pos,
            entity: Entity::Blocks,
            id: None,
            target: Target::Own("i".into()),
            source: vec![b'x'; len],
        };
        let b = batches((0..10).map(|i| doc(i, 10)).collect(), 4, 1 << 20);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let b = batches((0..10).map(|i| doc(i, 1000)).collect(), 100, 3000);
        assert!(
            b.iter().all(|batch| batch.len() <= 2),
            "{:?}",
            b.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let order: Vec<usize> = b.iter().flatten().map(|d| d.pos).collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
        // A document bigger than the limit still goes alone (encode refuses it earlier).
        let b = batches(vec![doc(0, 5000)], 100, 3000);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn late_items_require_the_alias_so_a_missing_alias_never_creates_an_index() {
        let mut out = Vec::new();
        Prepared {
            pos: 0,
            entity: Entity::Blocks,
            id: Some("x1".into()),
            target: Target::Late("lucid-blocks-write".into()),
            source: b"{}".to_vec(),
        }
        .lines(&mut out);
        let first: Value =
            serde_json::from_slice(out.split(|b| *b == b'\n').next().expect("line")).expect("json");
        assert_eq!(
            first,
            json!({"index": {"_index": "lucid-blocks-write", "_id": "x1", "require_alias": true}})
        );
    }
}
