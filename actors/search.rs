//! Elasticsearch: Lucid's monthly indices, routed writes, search, and a lifecycle lucid-db
//! decides itself.
//!
//! Like the other backends, the actor owns the connection's state (a client built once, a
//! probe on an interval, reconnects under the shared backoff) and publishes it; the handle
//! runs request/response operations directly on the published client within the call
//! deadline, and answers `unavailable` at once while the cluster is not up.
//!
//! - [`names`]: entities, months, `lucid-{entity}-{YYYY.MM}`, the read and write aliases.
//! - [`lifecycle`]: the pure planner (hot → warm → cold → delete, next month prepared).
//! - [`indices`]: what the cluster has (index settings and aliases), the templates from
//!   `configs/elasticsearch/`, the bootstrap, and the executor that applies a plan.
//! - [`documents`]: routed writes, by-id reads and updates, bulk.
//! - [`indexer`]: the bulk indexer — single documents batched by count, bytes and time.
//! - [`query`]: searches, counts, aggregations.
//! - [`transfer`]: streaming export and import of one index, for backups.

pub mod documents;
pub mod indexer;
pub mod indices;
pub mod lifecycle;
pub mod names;
pub mod query;
pub mod transfer;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::prelude::*;
use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::Method;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use serde_json::Value;
use tokio::time::Instant;

use crate::config::{ConfigError, ElasticsearchConfig, SupervisorConfig};
use crate::events::{self, SearchBootstrapFailed};
use crate::health::HealthEntry;
use crate::redact;
use crate::supervisor::link::{
    self, Bootstraps, ConnectError, Front, Handle, Link, LinkError, LocalFuture, OpFuture, Shares,
    Supervised,
};
use crate::supervisor::{Backend, CallError, DeadlineError, Shutdown};
use crate::threads::ActorThread;

pub use documents::{
    Bulk, BulkDoc, BulkItem, BulkReply, DeleteDoc, GetDoc, Hit, IndexDoc, IndexReply, UpdateDoc,
};
pub use indexer::{Indexer, IndexerStats};
pub use indices::{
    ApplyLifecycle, BootstrapReport, GetServerInfo, GetStats, IndexStats, LifecycleReport,
    PlanLifecycle, RunBootstrap, SearchStats, ServerInfo, Templates,
};
pub use lifecycle::{Action, Clock, FixedClock, IndexInfo, KeepReason, Phase, Policy, SystemClock};
pub use names::{Entity, IndexName, Month};
pub use query::{Agg, Count, Filter, Order, Search, SearchReply, TextQuery};
pub use transfer::{
    EXPORT_FORMAT, Export, ExportedDocument, Import, ImportDetails, ImportOptions, ImportSummary,
    ImportTarget, IndexMetadata, check_prefix,
};

const BACKEND: Backend = Backend::Elasticsearch;

// ---------------------------------------------------------------------------------------------
// Messages

/// One round trip to the cluster (`GET /`); answers how long it took.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Duration, SearchError>")]
pub struct Ping;

// ---------------------------------------------------------------------------------------------
// Errors

/// Everything an Elasticsearch call can answer instead of a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// Not delivered, not up, or no answer in time (shared with every backend).
    #[error(transparent)]
    Call(#[from] CallError),
    /// A write while a restore writes into the live indices (`busy`): nothing was sent.
    #[error("elasticsearch: {0}")]
    Restoring(#[from] crate::transfer::Restoring),
    /// The connection failed; the actor reconnects under backoff.
    #[error("elasticsearch connection failed ({code}): {message}")]
    Connection { code: &'static str, message: String },
    /// Bad input, refused before anything was sent: the field and why.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The server refused the request: its status, error type and reason.
    #[error("elasticsearch answered {status} {kind}: {reason}")]
    Server {
        status: u16,
        kind: String,
        reason: String,
    },
    /// No document with that id.
    #[error("no {entity} document with id {id}")]
    NotFound { entity: &'static str, id: String },
    /// The id is in more than one monthly index; give a time hint.
    #[error("{entity} id {id} is in several indices ({indices}); give a time hint")]
    Ambiguous {
        entity: &'static str,
        id: String,
        indices: String,
    },
    /// An answer that could not be read.
    #[error("cannot read elasticsearch's answer: {message}")]
    Codec { message: String },
    /// The target of an import holds documents and the import does not replace it.
    #[error("index {index} holds {documents} documents; import with force to replace it")]
    NotEmpty { index: String, documents: u64 },
    /// The target of an import exists (empty) and the import accepts only a missing one
    /// ([`crate::transfer::Existing::RefuseAny`]).
    #[error("index {index} exists (empty)")]
    Exists { index: String },
    /// The import's source failed mid-stream: the import is a failure, never a silently
    /// partial restore, and says how far it got (the index it created is deleted again).
    #[error("the import source failed after {written} documents were written: {reason}")]
    ImportSource { written: u64, reason: String },
    /// An export or import made no progress for `supervisor.stream_idle_timeout`.
    #[error("stream idle for {} ms: {what}", .after.as_millis())]
    StreamIdle { what: &'static str, after: Duration },
    /// The bulk indexer holds all it may (backpressure): its byte budget or its queue is
    /// full; try again later.
    #[error(
        "the bulk indexer is full (at most {budget_bytes} bytes held, {queue_docs} documents queued); try again later"
    )]
    Busy { budget_bytes: u64, queue_docs: u64 },
}

impl SearchError {
    /// Low-cardinality code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SearchError::Call(e) => e.code(),
            SearchError::Connection { code, .. } => code,
            SearchError::Invalid { .. } => "invalid",
            SearchError::Server { .. } => "server_error",
            SearchError::NotFound { .. } => "not_found",
            SearchError::Ambiguous { .. } => "conflict",
            SearchError::Codec { .. } => "codec",
            SearchError::NotEmpty { .. } => "not_empty",
            SearchError::Exists { .. } => "exists",
            SearchError::ImportSource { .. } => "import_source_failed",
            SearchError::StreamIdle { .. } => "stream_idle",
            SearchError::Busy { .. } | SearchError::Restoring(_) => "busy",
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SearchError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The server's HTTP status, for a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            SearchError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A transport failure: refused, timed out, or dropped.
    fn from_client(e: &elasticsearch::Error) -> Self {
        let message = redact::text(&e.to_string());
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut code = if e.is_timeout() {
            "timeout"
        } else {
            "connection_dropped"
        };
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                code = match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection_refused",
                    std::io::ErrorKind::TimedOut => "timeout",
                    _ => code,
                };
            }
            source = s.source();
        }
        SearchError::Connection { code, message }
    }

    /// An error answer: `{"error": {"type", "reason"}, "status"}` or `{"error": "text"}`.
    pub(crate) fn from_answer(status: u16, body: &Value) -> Self {
        let error = body.get("error");
        let kind = error
            .and_then(|e| e.get("type"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("http_{status}"));
        let reason = error
            .and_then(|e| {
                e.get("reason")
                    .and_then(Value::as_str)
                    .or_else(|| e.as_str())
            })
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let text = body.to_string();
                text.chars().take(300).collect()
            });
        SearchError::Server {
            status,
            kind,
            reason: redact::text(&reason),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and handle

/// The checks of `[elasticsearch]` that need this module: the lifecycle phases in order, with
/// the error on the key most likely wrong. The config module checks the rest of the section;
/// `lucid_actors::load_config` runs both.
pub fn check_config(cfg: &ElasticsearchConfig, errors: &mut Vec<ConfigError>) {
    if let Err(reason) = Policy::from_config(cfg).check() {
        let key = if cfg.prepare_ahead >= Duration::from_secs(28 * 24 * 3600) {
            "elasticsearch.prepare_ahead"
        } else {
            "elasticsearch.cold_after"
        };
        errors.push(ConfigError::new(key, reason));
    }
}

/// What the operations need from `[elasticsearch]` and `[supervisor]`, fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub deadline: Duration,
    pub probe_interval: Duration,
    pub stream_idle: Duration,
    pub mailbox_capacity: usize,
    pub shards: u32,
    pub replicas: u32,
    pub bootstrap: bool,
    pub bulk_max_docs: usize,
    pub bulk_max_bytes: usize,
    pub bulk_in_flight: usize,
    pub bulk_retries: u32,
    pub policy: Policy,
}

impl Settings {
    /// One bulk request's timeout: it takes longer than one call.
    pub(crate) fn bulk_timeout(&self) -> Duration {
        self.stream_idle.max(self.deadline)
    }

    pub fn from_config(cfg: &ElasticsearchConfig, sup: &SupervisorConfig) -> Self {
        Settings {
            deadline: sup.call_deadline,
            probe_interval: sup.probe_interval,
            stream_idle: sup.stream_idle_timeout,
            mailbox_capacity: sup.mailbox_capacity,
            shards: cfg.shards,
            replicas: cfg.replicas,
            bootstrap: cfg.bootstrap,
            bulk_max_docs: cfg.bulk_max_docs,
            bulk_max_bytes: usize::try_from(cfg.bulk_max_bytes.0).unwrap_or(usize::MAX),
            bulk_in_flight: cfg.bulk_in_flight,
            bulk_retries: cfg.bulk_retries,
            policy: Policy::from_config(cfg),
        }
    }
}

pub(crate) use conn::Conn;

mod conn {
    use elasticsearch::Elasticsearch;

    /// The client, as published for calls. The crate's own: callers reach the cluster through
    /// messages ([`super::SearchOp`], [`super::SearchHandle`]), never the client. (`pub` in a
    /// private module, so that no one outside can name or build it: the sealed operation
    /// trait's signature carries it, where a `pub(crate)` type is refused.)
    #[derive(Clone)]
    pub struct Conn {
        pub(crate) client: Elasticsearch,
    }
}

/// One HTTP request to the cluster.
pub(crate) struct Request {
    pub method: Method,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
    pub ndjson: bool,
    /// Instead of the client's (the call deadline), for requests that answer when done.
    pub timeout: Option<Duration>,
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Request {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            ndjson: false,
            timeout: None,
        }
    }

    /// A query parameter: fixed words and numbers only (they go into the path unencoded).
    pub fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    pub fn json(mut self, body: &Value) -> Self {
        self.body = Some(body.to_string().into_bytes());
        self
    }

    pub fn ndjson(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self.ndjson = true;
        self
    }
}

/// A 2xx answer's JSON body (`Null` when empty).
pub(crate) struct Answer {
    pub body: Value,
}

impl Conn {
    /// Sends `req`; a non-2xx answer is `SearchError::Server` (a 404 too: callers that
    /// expect one match on its status).
    pub(crate) async fn send(&self, req: Request) -> Result<Answer, SearchError> {
        self.send_as::<Value>(req).await.map(|body| Answer { body })
    }

    /// As [`Conn::send`], reading a 2xx answer straight into `T` (no intermediate `Value`
    /// for answers read on every call, like search hits).
    pub(crate) async fn send_as<T: serde::de::DeserializeOwned + Default>(
        &self,
        req: Request,
    ) -> Result<T, SearchError> {
        let mut headers = HeaderMap::new();
        let content_type = if req.ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        // Parameters go into the path (they are fixed words): no form encoder per call.
        let mut path = req.path;
        for (i, (key, value)) in req.query.iter().enumerate() {
            path.push(if i == 0 { '?' } else { '&' });
            path.push_str(key);
            path.push('=');
            path.push_str(value);
        }
        let response = self
            .client
            .send(
                req.method,
                &path,
                headers,
                None::<&()>,
                req.body,
                req.timeout,
            )
            .await
            .map_err(|e| SearchError::from_client(&e))?;
        let status = response.status_code().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| SearchError::from_client(&e))?;
        let codec = |e: serde_json::Error| SearchError::Codec {
            message: format!(
                "{} {}: {e}",
                status,
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        };
        if (200..300).contains(&status) {
            if bytes.is_empty() {
                Ok(T::default())
            } else {
                serde_json::from_slice(&bytes).map_err(codec)
            }
        } else {
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            };
            Err(SearchError::from_answer(status, &body))
        }
    }
}

mod sealed {
    /// Only this crate's operations run through [`super::SearchOp`]: validation stays here.
    pub trait Sealed {}
}

/// A request/response operation (see the module doc). Sealed.
pub trait SearchOp:
    sealed::Sealed + Message<Result = Result<<Self as SearchOp>::Output, SearchError>> + Send + 'static
{
    type Output: Send + 'static;
    /// Whether it writes: refused with `busy` while a restore writes into the store's live
    /// data ([`crate::transfer::RestoreGate`]).
    const WRITES: bool = false;

    /// Checks the input (an error here means nothing was sent) and returns the requests.
    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError>;
}

/// State shared by the actor (its only writer) and every handle.
pub struct Shared {
    settings: Settings,
    templates: Templates,
    clock: Arc<dyn Clock>,
    /// The actor's address, its published connection and health entry.
    front: Front<SearchActor>,
    /// The bootstrap runs (one at a time) and the last report.
    bootstraps: Bootstraps<BootstrapReport>,
    /// Documents whose month was no longer writable, sent to the write index instead.
    late_documents: AtomicU64,
    /// Bulk items sent again after the server refused them with 429 or 503.
    retried_documents: AtomicU64,
    indexer: Indexer,
    /// Held while an import writes under no prefix (see [`SearchOp::WRITES`]).
    restore_gate: crate::transfer::RestoreGate,
}

impl Shared {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    pub(crate) fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    pub(crate) fn count_late(&self, n: u64) {
        self.late_documents.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_retried(&self, n: u64) {
        self.retried_documents.fetch_add(n, Ordering::Relaxed);
    }

    /// The client for a call, or the answer to give instead ([`Front::usable`]).
    fn usable(&self) -> Result<(Conn, u64), SearchError> {
        Ok(self.front.usable()?)
    }

    /// News of a failed call for the actor ([`Front::report`]).
    fn report(&self, generation: u64, e: &SearchError) {
        self.front.report(generation, e);
    }
}

/// Sends one batch of the bulk indexer on the published client: `unavailable` for every
/// document while the cluster is not up, and news of a lost connection back to the actor.
async fn send_indexed(
    shared: Weak<Shared>,
    batch: Vec<documents::Prepared>,
) -> Vec<documents::Outcome> {
    let fail_all = |batch: Vec<documents::Prepared>, e: SearchError| {
        batch.into_iter().map(|d| (d.pos, Err(e.clone()))).collect()
    };
    let Some(shared) = shared.upgrade() else {
        let e = SearchError::Call(CallError::Disabled {
            backend: BACKEND,
            reason: "shutting down".to_owned(),
        });
        return fail_all(batch, e);
    };
    if let Err(e) = shared.restore_gate.check() {
        return fail_all(batch, e.into());
    }
    let (conn, generation) = match shared.usable() {
        Ok(usable) => usable,
        Err(e) => return fail_all(batch, e),
    };
    let (outcomes, _) = documents::send_batch(&conn, &shared, batch, false).await;
    if let Some(e) = outcomes
        .iter()
        .find_map(|(_, outcome)| outcome.as_ref().err().filter(|e| e.connection_lost()))
    {
        shared.report(generation, e);
    }
    outcomes
}

/// What callers hold ([`Handle`]).
pub type SearchHandle = Handle<Shared>;

impl Shares for Shared {
    type Actor = SearchActor;
    type Settings = Settings;

    fn front(&self) -> &Front<SearchActor> {
        &self.front
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The bulk indexer's queue goes out first, so queued documents are not dropped.
    async fn before_shutdown(&self, _: Duration) {
        let _ = self.indexer.flush().await;
    }
}

impl SearchHandle {
    /// The last bootstrap's report, once one has run.
    pub fn last_bootstrap(&self) -> Option<BootstrapReport> {
        self.shared.bootstraps.last()
    }

    /// Documents sent to the write index because their own month was no longer writable.
    pub fn late_documents(&self) -> u64 {
        self.shared.late_documents.load(Ordering::Relaxed)
    }

    /// Bulk items (of `Bulk` calls and of the bulk indexer) sent again because the server
    /// refused them with 429 or 503 (`elasticsearch.bulk_retries`), since start.
    pub fn retried_documents(&self) -> u64 {
        self.shared.retried_documents.load(Ordering::Relaxed)
    }

    /// Indexes one document through the bulk indexer (see [`indexer`]): it is checked and
    /// routed now, sent in a batch with others, and its own outcome comes back. Waits for
    /// room at most the call deadline, then `busy`; `unavailable` at once while the cluster
    /// is not up.
    pub async fn submit(&self, entity: Entity, doc: BulkDoc) -> Result<IndexReply, SearchError> {
        let doc = self.prepare(entity, doc)?;
        self.shared
            .indexer
            .submit(doc, self.shared.settings.deadline)
            .await
    }

    /// As [`SearchHandle::submit`], but `busy` at once when the indexer holds all it may.
    pub async fn try_submit(
        &self,
        entity: Entity,
        doc: BulkDoc,
    ) -> Result<IndexReply, SearchError> {
        let doc = self.prepare(entity, doc)?;
        self.shared.indexer.try_submit(doc).await
    }

    /// Sends what the bulk indexer holds now and waits for every outcome.
    pub async fn flush(&self) -> Result<(), SearchError> {
        self.shared.indexer.flush().await
    }

    pub fn indexer_stats(&self) -> IndexerStats {
        self.shared.indexer.stats()
    }

    fn prepare(&self, entity: Entity, doc: BulkDoc) -> Result<documents::Prepared, SearchError> {
        self.shared.usable()?;
        documents::Prepared::new(entity, doc, self.shared.now(), &self.shared.settings)
    }

    /// `GET /`, timed.
    pub fn ping(&self) -> impl Future<Output = Result<Duration, SearchError>> + '_ {
        self.call(Ping)
    }

    /// Runs an operation within the call deadline on the client the actor published;
    /// `Unavailable` at once while the cluster is not up.
    pub fn call<M: SearchOp>(
        &self,
        msg: M,
    ) -> impl Future<Output = Result<M::Output, SearchError>> + '_ {
        self.call_within(msg, self.shared.front.deadline())
    }

    /// As [`SearchHandle::call`] with a deadline of its own, for long work (a large bulk, a
    /// lifecycle run with force-merges).
    pub fn call_within<M: SearchOp>(
        &self,
        msg: M,
        deadline: Duration,
    ) -> impl Future<Output = Result<M::Output, SearchError>> + '_ {
        let shared = &self.shared;
        shared
            .front
            .run(crate::metrics::op_name::<M>(), deadline, move |conn| {
                if M::WRITES {
                    shared.restore_gate.check()?;
                }
                msg.start(conn, shared)
            })
    }

    /// Sessions of one user, newest first, with more filters.
    pub async fn search_sessions(
        &self,
        user_id: &str,
        filters: Vec<Filter>,
        size: u32,
    ) -> Result<SearchReply, SearchError> {
        let mut search = Search::new(Entity::Sessions)
            .filter(Filter::term("user_id", user_id))
            .sort("started_at", Order::Desc)
            .sort("session_id", Order::Asc)
            .size(size);
        for f in filters {
            search = search.filter(f);
        }
        self.call(search).await
    }

    /// Blocks by height range (inclusive) and/or time range, with more filters, by height.
    pub async fn search_blocks(
        &self,
        heights: Option<(i64, i64)>,
        time: Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
        filters: Vec<Filter>,
        size: u32,
    ) -> Result<SearchReply, SearchError> {
        let mut search = Search::new(Entity::Blocks)
            .sort("height", Order::Asc)
            .size(size);
        if let Some((from, to)) = heights {
            search = search.filter(Filter::range("height", Some(from.into()), Some(to.into())));
        }
        if let Some((from, to)) = time {
            search = search.filter(Filter::range(
                "timestamp",
                Some(from.to_rfc3339().into()),
                Some(to.to_rfc3339().into()),
            ));
        }
        for f in filters {
            search = search.filter(f);
        }
        self.call(search).await
    }
}

// ---------------------------------------------------------------------------------------------
// State

/// See the module doc.
pub struct SearchActor {
    options: Option<ElasticsearchConfig>,
    client: Option<Elasticsearch>,
    link: Link<Conn>,
    shared: Arc<Shared>,
}

impl SearchActor {
    /// Starts the actor and the bulk indexer's batching task on a thread of their own
    /// (`lucid-search`, tied to the current arbiter: see `actors/threads.rs`) and returns the
    /// handle.
    pub fn start_with(
        cfg: &ElasticsearchConfig,
        sup: &SupervisorConfig,
        templates: Templates,
        clock: Arc<dyn Clock>,
        health: HealthEntry,
    ) -> SearchHandle {
        let settings = Settings::from_config(cfg, sup);
        let limits = indexer::Limits {
            max_docs: settings.bulk_max_docs,
            max_bytes: settings.bulk_max_bytes,
            in_flight: settings.bulk_in_flight,
            flush_interval: cfg.bulk_flush_interval,
        };
        let thread = ActorThread::start("lucid-search");
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            let weak = weak.clone();
            let (indexer, batching) =
                Indexer::new(limits, move |batch| send_indexed(weak.clone(), batch));
            thread.spawn(batching);
            Shared {
                indexer,
                settings,
                templates,
                clock,
                front: Front::new(health, sup),
                bootstraps: Bootstraps::default(),
                late_documents: AtomicU64::new(0),
                retried_documents: AtomicU64::new(0),
                restore_gate: Default::default(),
            }
        });
        let actor = SearchActor {
            options: Some(cfg.clone()),
            client: None,
            link: Link::new(sup),
            shared: shared.clone(),
        };
        shared.front.start(&thread, actor);
        SearchHandle { shared }
    }
}

impl Supervised for SearchActor {
    type Error = SearchError;
    const BACKEND: Backend = BACKEND;

    /// The client is built once (a bad URL disables the backend), then `GET /`.
    fn connect(
        &mut self,
    ) -> Option<LocalFuture<Result<(Conn, Duration), ConnectError<SearchError>>>> {
        let deadline = self.shared.settings.deadline;
        let client = match self.client.clone() {
            Some(c) => c,
            None => {
                let built = self
                    .options
                    .as_ref()
                    .ok_or_else(|| "no configuration".to_owned())
                    .and_then(|cfg| build_client(cfg, deadline));
                match built {
                    Ok(c) => {
                        self.client = Some(c.clone());
                        c
                    }
                    Err(message) => {
                        let reason = format!("invalid elasticsearch settings: {message}");
                        return Some(Box::pin(async move { Err(ConnectError::Invalid(reason)) }));
                    }
                }
            }
        };
        Some(Box::pin(async move {
            let conn = Conn { client };
            let latency = ping(&conn, deadline).await?;
            Ok((conn, latency))
        }))
    }

    fn ping(conn: Conn, deadline: Duration) -> LocalFuture<Result<Duration, SearchError>> {
        Box::pin(async move { ping(&conn, deadline).await })
    }

    /// Templates, this month's indices and the aliases ([`Bootstraps::at_connect`]).
    fn on_up(&mut self, ctx: &mut Context<Self>) {
        if let (true, Some(conn)) = (self.shared.settings.bootstrap, self.link.conn.clone()) {
            let shared = self.shared.clone();
            let run = async move { indices::bootstrap(&conn, &shared).await };
            self.shared
                .bootstraps
                .at_connect(ctx, run, |e: SearchError| {
                    events::emit(SearchBootstrapFailed {
                        code: e.code(),
                        error: e.to_string(),
                    })
                });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

impl sealed::Sealed for Ping {}

impl SearchOp for Ping {
    type Output = Duration;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        let deadline = shared.front.deadline();
        Ok(async move { ping(&conn, deadline).await })
    }
}

link::supervised_actor! {
    actor: SearchActor,
    conn: Conn,
    error: SearchError,
    operations: SearchOp,
}

impl Handler<Shutdown> for SearchActor {
    type Result = ();

    /// HTTP holds nothing server-side: drop the client and stop.
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        link::disconnect(self, ctx);
        self.client = None;
        ctx.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// The client from `[elasticsearch]`: one node, the call deadline as request timeout, basic
/// auth when a user is set, no proxy from the environment.
pub(crate) fn build_client(
    cfg: &ElasticsearchConfig,
    deadline: Duration,
) -> Result<Elasticsearch, String> {
    let url = elasticsearch::http::Url::parse(cfg.url.expose())
        .map_err(|e| format!("elasticsearch.url: {e}"))?;
    let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
        .timeout(deadline)
        .disable_proxy();
    if !cfg.username.is_empty() {
        let password = cfg
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .unwrap_or_default();
        builder = builder.auth(Credentials::Basic(cfg.username.clone(), password));
    }
    let transport = builder.build().map_err(|e| redact::text(&e.to_string()))?;
    Ok(Elasticsearch::new(transport))
}

/// `GET /` within `deadline`, timed.
pub(crate) async fn ping(conn: &Conn, deadline: Duration) -> Result<Duration, SearchError> {
    let started = Instant::now();
    SearchError::within(deadline, conn.send(Request::new(Method::Get, "/"))).await?;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_errors_carry_the_type_and_reason_in_both_shapes() {
        let e = SearchError::from_answer(
            400,
            &json!({"error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [started_at]"}, "status": 400}),
        );
        assert_eq!(
            e,
            SearchError::Server {
                status: 400,
                kind: "mapper_parsing_exception".into(),
                reason: "failed to parse field [started_at]".into()
            }
        );
        let e = SearchError::from_answer(400, &json!({"error": "no handler found for uri [/x]"}));
        assert!(
            matches!(&e, SearchError::Server { kind, reason, .. } if kind == "http_400" && reason.contains("no handler")),
            "{e:?}"
        );
        let e = SearchError::from_answer(502, &Value::Null);
        assert_eq!(e.status(), Some(502));
        assert_eq!(e.code(), "server_error");
    }

    #[test]
    fn the_client_takes_the_deadline_and_refuses_a_bad_url() {
        let mut cfg = crate::Config::defaults().expect("defaults").elasticsearch;
        assert!(build_client(&cfg, Duration::from_secs(1)).is_ok());
        cfg.url = "not a url".into();
        assert!(build_client(&cfg, Duration::from_secs(1)).is_err());
    }
}
