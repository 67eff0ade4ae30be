//! The MongoDB actor: owns lucid-db's connection to MongoDB and everything Lucid does with it.
//!
//! The official driver keeps a pool per server and finds servers on its own; the actor
//! supervises it the way every backend actor does (docs/architecture.md): a `ping` probe every
//! `supervisor.probe_interval`, the shared [`Connection`](crate::supervisor::Connection)
//! state machine and backoff, calls
//! answered `Unavailable` at once while MongoDB is not up, and news of a lost connection from
//! the calls themselves. The driver's server selection timeout is the call deadline, so no
//! call waits longer than a caller was promised; the driver's retryable-writes rules apply
//! (one retry on a replica set, for writes the server can de-duplicate) and lucid-db never
//! retries a write on its own.
//!
//! Like Redis, every request/response operation is a message with a typed reply that
//! implements [`MongoOp`] and runs the same way through the mailbox or through
//! [`MongoHandle::call`], which skips the mailbox hop. Export and import are the exception:
//! they go through the mailbox, so their streams run on the actor's arbiter, not in the
//! caller's task ([`transfer`]). The collections are a typed enum
//! ([`Collection`]) with their validators and indexes as data (`configs/mongodb/`).
//!
//! One file each under `actors/mongo/`:
//! - [`collections`] — the 15 collections and their specs (validators, indexes).
//! - [`schema`] — `$jsonSchema` validation in the actor, naming the field.
//! - [`bootstrap`] — the idempotent bootstrap: plan (a pure function) and apply.
//! - [`crud`] — insert, find (streamed), update, replace, delete, count, distinct, aggregate.
//! - [`json`] — the same with documents, filters and pipelines as Extended JSON, for callers
//!   that name no driver type (the HTTP API).
//! - [`records`] — typed documents for users, sessions, blocks and transactions.
//! - [`transfer`] — streaming export and import of a collection, for backups.
//! - [`stats`] — collection and database stats, `hello` topology.

pub mod bootstrap;
pub mod collections;
pub mod crud;
pub mod json;
pub mod records;
pub mod schema;
pub mod stats;
pub mod transfer;

/// The driver's BSON crate, for callers building documents.
pub use mongodb::bson;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::prelude::*;
use mongodb::bson::{Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::{
    ClientOptions, Credential, ReadPreference, ReadPreferenceOptions, SelectionCriteria,
    WriteConcern,
};
use mongodb::{Client, Database};
use tokio::time::Instant;

use crate::config::{ConfigError, MongoConfig, ReadPreferenceMode, SupervisorConfig};
use crate::events::{self, MongoBootstrapFailed};
use crate::health::HealthEntry;
use crate::redact;
use crate::supervisor::link::{
    self, Bootstraps, ConnectError, Front, Handle, Link, LocalFuture, OpFuture, Shares, Supervised,
};
use crate::supervisor::{Backend, CallError, DeadlineError, Shutdown};
use crate::threads::ActorThread;

pub use bootstrap::{BootstrapReport, Capabilities, Plan, PlanBootstrap, PlanStep, RunBootstrap};
pub use collections::{Catalog, CatalogError, Collection, CollectionSpec, IndexSpec};
pub use crud::{
    Aggregate, Count, DeleteMany, DeleteOne, Distinct, Find, FindOne, InsertMany, InsertOne,
    ReplaceOne, UpdateMany, UpdateOne, UpdateSummary,
};
pub use json::{
    AggregateJson, CountJson, DeleteJson, FindJson, InsertJson, InsertManyJson, JsonUpdateSummary,
    UpdateJson,
};
pub use records::Record;
pub use schema::{Schema, Violation};
pub use stats::{
    CollectionStats, DatabaseStats, GetServerVersion, GetStats, Hello, MongoStats, Topology,
};
pub use transfer::{
    EXPORT_FORMAT, Export, ExportMetadata, Import, ImportDetails, ImportOptions, ImportSummary,
    ImportTarget,
};

const BACKEND: Backend = Backend::Mongodb;

/// The largest document MongoDB stores (`maxBsonObjectSize`).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Messages

/// One round trip to MongoDB (`ping`); answers how long it took.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Duration, MongoError>")]
pub struct Ping;

// ---------------------------------------------------------------------------------------------
// Errors

/// Everything a MongoDB call can answer instead of a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MongoError {
    /// Not delivered, not up, or no answer in time (shared with every backend).
    #[error(transparent)]
    Call(#[from] CallError),
    /// A write while a restore writes into the database (`busy`): nothing was sent.
    #[error("mongodb: {0}")]
    Restoring(#[from] crate::transfer::Restoring),
    /// The connection failed or was lost; the actor reconnects under backoff.
    #[error("mongodb connection failed ({code}): {message}")]
    Connection { code: &'static str, message: String },
    /// A unique index refused the write: which index (the name in `configs/mongodb/`), and
    /// the key as the server or the document gave it.
    #[error("duplicate key for index {index}: {key}")]
    Conflict { index: String, key: String },
    /// Bad input, refused before anything was sent: the field (a dotted path) and why.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The target of an import holds documents and the import does not replace it.
    #[error(
        "collection {collection} in database {database} is not empty ({documents} documents); import with force to replace it"
    )]
    NotEmpty {
        database: String,
        collection: String,
        documents: u64,
    },
    /// The target of an import exists (empty) and the import accepts only a missing one
    /// ([`crate::transfer::Existing::RefuseAny`]).
    #[error("collection {collection} exists in database {database} (empty)")]
    Exists {
        database: String,
        collection: String,
    },
    /// The import's source failed mid-stream (a corrupt artifact, a lost disk): the import is
    /// a failure, never a silently partial restore, and says how far it got (the documents it
    /// wrote are removed again).
    #[error("the import source failed after {written} documents were written: {reason}")]
    ImportSource { written: u64, reason: String },
    /// MongoDB answered with an error (`code` where the server gave one).
    #[error("mongodb replied with an error{}: {message}", .code.map(|c| format!(" {c}")).unwrap_or_default())]
    Server { code: Option<i32>, message: String },
    /// A document could not be encoded or decoded.
    #[error("cannot (de)serialize a document: {message}")]
    Codec { message: String },
    /// A stream made no progress for `supervisor.stream_idle_timeout`.
    #[error("stream idle for {} ms: {what}", .after.as_millis())]
    StreamIdle { what: &'static str, after: Duration },
}

impl MongoError {
    /// Low-cardinality code for logs, events and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            MongoError::Call(e) => e.code(),
            MongoError::Connection { code, .. } => code,
            MongoError::Conflict { .. } => "conflict",
            MongoError::Invalid { .. } => "invalid",
            MongoError::NotEmpty { .. } => "not_empty",
            MongoError::Exists { .. } => "exists",
            MongoError::ImportSource { .. } => "import_source_failed",
            MongoError::Server { .. } => "server_error",
            MongoError::Codec { .. } => "codec",
            MongoError::StreamIdle { .. } => "stream_idle",
            MongoError::Restoring(_) => "busy",
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        MongoError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The driver's error, classified. Duplicate keys become [`MongoError::Conflict`] with the
    /// index named as the server names it; [`crud`] maps that to the catalog's name.
    pub(crate) fn from_driver(e: &mongodb::error::Error) -> Self {
        let message = redact::text(&e.to_string());
        let connection = |code| MongoError::Connection {
            code,
            message: message.clone(),
        };
        match e.kind.as_ref() {
            ErrorKind::Io(io) => match io.kind() {
                std::io::ErrorKind::ConnectionRefused => connection("connection_refused"),
                std::io::ErrorKind::TimedOut => connection("timeout"),
                _ => connection("connection_dropped"),
            },
            ErrorKind::ConnectionPoolCleared { .. } => connection("connection_dropped"),
            ErrorKind::ServerSelection { message: m, .. } => {
                if m.contains("refused") {
                    connection("connection_refused")
                } else {
                    connection("timeout")
                }
            }
            ErrorKind::DnsResolve { .. } => connection("io"),
            ErrorKind::Authentication { .. } => connection("auth_failed"),
            ErrorKind::InvalidTlsConfig { .. } => connection("invalid_config"),
            ErrorKind::Shutdown => MongoError::Call(CallError::Disabled {
                backend: BACKEND,
                reason: "client shut down".to_owned(),
            }),
            ErrorKind::BsonSerialization(_) | ErrorKind::BsonDeserialization(_) => {
                MongoError::Codec { message }
            }
            ErrorKind::InvalidArgument { message: m, .. } => MongoError::Invalid {
                field: "request".to_owned(),
                reason: redact::text(m),
            },
            ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => {
                server_write_error(w.code, &w.message)
            }
            ErrorKind::InsertMany(im) => {
                match im.write_errors.as_ref().and_then(|errs| errs.first()) {
                    Some(w) => server_write_error(w.code, &w.message),
                    None => MongoError::Server {
                        code: None,
                        message,
                    },
                }
            }
            ErrorKind::Command(c) => {
                if c.code == 11000 {
                    server_write_error(c.code, &c.message)
                } else {
                    MongoError::Server {
                        code: Some(c.code),
                        message: redact::text(&c.message),
                    }
                }
            }
            _ => MongoError::Server {
                code: None,
                message,
            },
        }
    }
}

/// A write error: 11000 is a duplicate key, anything else is the server's answer.
fn server_write_error(code: i32, message: &str) -> MongoError {
    if code == 11000 {
        let (index, key) = crud::parse_duplicate_key(message);
        MongoError::Conflict { index, key }
    } else {
        MongoError::Server {
            code: Some(code),
            message: redact::text(message),
        }
    }
}

impl From<mongodb::error::Error> for MongoError {
    fn from(e: mongodb::error::Error) -> Self {
        MongoError::from_driver(&e)
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and handle

/// Documents a find, aggregate or export buffers ahead of its reader ([`Settings::stream_buffer`]).
const STREAM_BUFFER: usize = 256;

/// What the operations need from `[mongodb]` and `[supervisor]`, fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: String,
    pub deadline: Duration,
    pub probe_interval: Duration,
    pub stream_idle: Duration,
    pub mailbox_capacity: usize,
    pub bootstrap: bool,
    pub shard_collections: bool,
    pub import_batch: usize,
    /// Documents per cursor batch for streamed finds, aggregates and exports
    /// (`mongodb.batch_size`).
    pub batch_size: u32,
    /// Documents a stream buffers ahead of its reader. Not a config key: the buffer only lets
    /// the cursor task fetch the next batch while the reader works on this one, so it gains
    /// nothing past a batch or so; what a stream holds is tuned with `mongodb.batch_size`.
    pub stream_buffer: usize,
}

impl Settings {
    pub fn from_config(cfg: &MongoConfig, sup: &SupervisorConfig) -> Self {
        Settings {
            database: cfg.database.clone(),
            deadline: sup.call_deadline,
            probe_interval: sup.probe_interval,
            stream_idle: sup.stream_idle_timeout,
            mailbox_capacity: sup.mailbox_capacity,
            bootstrap: cfg.bootstrap,
            shard_collections: cfg.shard_collections,
            import_batch: cfg.import_batch,
            batch_size: cfg.batch_size,
            stream_buffer: STREAM_BUFFER,
        }
    }
}

pub(crate) use conn::Conn;

mod conn {
    use mongodb::{Client, Database};

    /// The driver's client and the Lucid database, as published for calls. The crate's own:
    /// callers reach MongoDB through messages ([`super::MongoOp`], [`super::MongoHandle`]),
    /// never the driver. (`pub` in a private module, so that no one outside can name or
    /// build it: the sealed operation trait's signature carries it, where a `pub(crate)`
    /// type is refused.)
    #[derive(Clone)]
    pub struct Conn {
        pub(crate) client: Client,
        pub(crate) db: Database,
    }
}

mod sealed {
    /// Only this crate's operations run through [`super::MongoOp`]: validation stays here.
    pub trait Sealed {}
}

/// A request/response operation (see the module doc). Sealed.
pub trait MongoOp:
    sealed::Sealed + Message<Result = Result<<Self as MongoOp>::Output, MongoError>> + Send + 'static
{
    type Output: Send + 'static;
    /// Whether it writes: refused with `busy` while a restore writes into the database
    /// ([`crate::transfer::RestoreGate`]).
    const WRITES: bool = false;

    /// Checks the input (an error here means nothing was sent) and returns the driver calls.
    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError>;
}

/// State shared by the actor (its only writer) and every handle.
pub struct Shared {
    settings: Settings,
    catalog: Catalog,
    /// The actor's address, its published connection and health entry.
    front: Front<MongoActor>,
    /// The bootstrap runs (one at a time) and the last report, for `/health` and the CLI.
    bootstraps: Bootstraps<BootstrapReport>,
    /// Held while an import writes into `mongodb.database` (see [`MongoOp::WRITES`]).
    restore_gate: crate::transfer::RestoreGate,
}

impl Shared {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The connection for a call, or the answer to give instead ([`Front::usable`]).
    fn usable(&self) -> Result<(Conn, u64), MongoError> {
        Ok(self.front.usable()?)
    }

    /// News of a failed call for the actor ([`Front::report`]).
    fn report(&self, generation: u64, e: &MongoError) {
        self.front.report(generation, e);
    }
}

/// What callers hold ([`Handle`]).
pub type MongoHandle = Handle<Shared>;

impl Shares for Shared {
    type Actor = MongoActor;
    type Settings = Settings;

    fn front(&self) -> &Front<MongoActor> {
        &self.front
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }
}

impl MongoHandle {
    /// The collections' specs (validators, indexes) the actor runs with.
    pub fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    /// The last bootstrap's report, once one has run.
    pub fn last_bootstrap(&self) -> Option<BootstrapReport> {
        self.shared.bootstraps.last()
    }

    /// `ping`, timed.
    pub fn ping(&self) -> impl Future<Output = Result<Duration, MongoError>> + '_ {
        self.call(Ping)
    }

    /// Runs an operation within the call deadline on the connection the actor published;
    /// `Unavailable` at once while MongoDB is not up.
    pub fn call<M: MongoOp>(
        &self,
        msg: M,
    ) -> impl Future<Output = Result<M::Output, MongoError>> + '_ {
        self.call_within(msg, self.shared.front.deadline())
    }

    /// As [`MongoHandle::call`] with a deadline of its own, for work longer than one call
    /// ([`RunBootstrap`], [`PlanBootstrap`]).
    pub fn call_within<M: MongoOp>(
        &self,
        msg: M,
        deadline: Duration,
    ) -> impl Future<Output = Result<M::Output, MongoError>> + '_ {
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
}

// ---------------------------------------------------------------------------------------------
// State

/// See the module doc.
pub struct MongoActor {
    options: Option<MongoConfig>,
    client: Option<Client>,
    link: Link<Conn>,
    shared: Arc<Shared>,
}

impl MongoActor {
    /// Starts the actor on a thread of its own (`lucid-mongo`, tied to the current arbiter:
    /// see `actors/threads.rs`) and returns its handle.
    pub fn start_with(
        cfg: &MongoConfig,
        sup: &SupervisorConfig,
        catalog: Catalog,
        health: HealthEntry,
    ) -> MongoHandle {
        let shared = Arc::new(Shared {
            settings: Settings::from_config(cfg, sup),
            catalog,
            restore_gate: Default::default(),
            front: Front::new(health, sup),
            bootstraps: Bootstraps::default(),
        });
        let actor = MongoActor {
            options: Some(cfg.clone()),
            client: None,
            link: Link::new(sup),
            shared: shared.clone(),
        };
        shared
            .front
            .start(&ActorThread::start("lucid-mongo"), actor);
        MongoHandle { shared }
    }
}

impl Supervised for MongoActor {
    type Error = MongoError;
    const BACKEND: Backend = BACKEND;

    /// The client is built once (settings it refuses disable the backend), then `ping`.
    fn connect(
        &mut self,
    ) -> Option<LocalFuture<Result<(Conn, Duration), ConnectError<MongoError>>>> {
        let deadline = self.shared.settings.deadline;
        let probe = self.shared.settings.probe_interval;
        let database = self.shared.settings.database.clone();
        let client = self.client.clone();
        let cfg = self.options.clone();
        Some(Box::pin(async move {
            let client = match client {
                Some(c) => c,
                None => {
                    let invalid = |message: &str| {
                        ConnectError::Invalid(format!("invalid mongodb settings: {message}"))
                    };
                    let cfg = cfg.ok_or_else(|| invalid("no configuration"))?;
                    match build_client(&cfg, deadline, probe).await {
                        Ok(c) => c,
                        Err(MongoError::Connection {
                            code: "invalid_config",
                            message,
                        }) => return Err(invalid(&message)),
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            let latency = ping(&client.database("admin"), deadline).await?;
            let db = client.database(&database);
            Ok((Conn { client, db }, latency))
        }))
    }

    fn ping(conn: Conn, deadline: Duration) -> LocalFuture<Result<Duration, MongoError>> {
        Box::pin(async move { ping(&conn.db, deadline).await })
    }

    /// Brings the database in line with the catalog ([`Bootstraps::at_connect`]).
    fn on_up(&mut self, ctx: &mut Context<Self>) {
        self.client = self.link.conn.as_ref().map(|c| c.client.clone());
        if let (true, Some(conn)) = (self.shared.settings.bootstrap, self.link.conn.clone()) {
            let shared = self.shared.clone();
            let run = async move { bootstrap::run(&conn, &shared, false).await };
            self.shared
                .bootstraps
                .at_connect(ctx, run, |e: MongoError| {
                    events::emit(MongoBootstrapFailed {
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

impl MongoOp for Ping {
    type Output = Duration;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let deadline = shared.front.deadline();
        Ok(async move { ping(&conn.db, deadline).await })
    }
}

link::supervised_actor! {
    actor: MongoActor,
    conn: Conn,
    error: MongoError,
    operations: MongoOp,
}

impl Handler<Shutdown> for MongoActor {
    type Result = ResponseActFuture<Self, ()>;

    /// Closes the driver's pool (ending server-side sessions) and stops.
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        link::disconnect(self, ctx);
        let client = self.client.take();
        Box::pin(
            async move {
                if let Some(client) = client {
                    client.shutdown().immediate(true).await;
                }
            }
            .into_actor(self)
            .map(|(), _, ctx| ctx.stop()),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Config

/// The checks of `[mongodb]` that need this module: the database name, and, when MongoDB is
/// enabled, that the files in `schema_dir` compile (the config module has checked the path is
/// absolute). `lucid_actors::load_config` runs this with the config module's own checks, so
/// `config check` refuses a broken schema file before the daemon starts.
pub fn check_config(cfg: &MongoConfig, errors: &mut Vec<ConfigError>) {
    if let Err(reason) = check_database_name(&cfg.database) {
        errors.push(ConfigError::new("mongodb.database", reason));
    }
    if cfg.enabled
        && cfg.schema_dir.is_absolute()
        && let Err(e) = Catalog::from_dir(&cfg.schema_dir)
    {
        errors.push(ConfigError::new("mongodb.schema_dir", e.to_string()));
    }
}

/// MongoDB's rules for a database name: `mongodb.database`, and the database an import names.
pub fn check_database_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".to_owned());
    }
    if let Some(c) = name
        .chars()
        .find(|c| "/\\. \"$*<>:|?".contains(*c) || c.is_control())
    {
        return Err(format!("must not contain {c:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Driver calls (no actor state)

/// The driver's options from `[mongodb]`: the call deadline as server selection and connect
/// timeout, the password from its secret, read preference and write concern.
pub(crate) async fn client_options(
    cfg: &MongoConfig,
    deadline: Duration,
    heartbeat: Duration,
) -> Result<ClientOptions, MongoError> {
    let invalid = |e: mongodb::error::Error| MongoError::Connection {
        code: "invalid_config",
        message: redact::text(&e.to_string()),
    };
    let mut options = ClientOptions::parse(cfg.url.expose())
        .await
        .map_err(invalid)?;
    options.app_name = Some("lucid-db".to_owned());
    options.server_selection_timeout = Some(deadline);
    options.connect_timeout = Some(deadline);
    options.heartbeat_freq = Some(heartbeat.max(Duration::from_millis(500)));
    options.max_pool_size = Some(cfg.max_pool_size);
    if let Some(password) = &cfg.password {
        let mut credential = options
            .credential
            .take()
            .unwrap_or_else(Credential::default);
        credential.password = Some(password.expose().to_owned());
        options.credential = Some(credential);
    }
    options.selection_criteria = Some(SelectionCriteria::ReadPreference(read_preference(
        cfg.read_preference,
    )));
    options.write_concern = write_concern(&cfg.write_concern);
    Ok(options)
}

fn read_preference(mode: ReadPreferenceMode) -> ReadPreference {
    let options = Some(ReadPreferenceOptions::default());
    match mode {
        ReadPreferenceMode::Primary => ReadPreference::Primary,
        ReadPreferenceMode::PrimaryPreferred => ReadPreference::PrimaryPreferred { options },
        ReadPreferenceMode::Secondary => ReadPreference::Secondary { options },
        ReadPreferenceMode::SecondaryPreferred => ReadPreference::SecondaryPreferred { options },
        ReadPreferenceMode::Nearest => ReadPreference::Nearest { options },
    }
}

/// `default` leaves the server's default; config validation has refused anything else.
fn write_concern(raw: &str) -> Option<WriteConcern> {
    match raw {
        "majority" => Some(WriteConcern::majority()),
        n => n.parse::<u32>().ok().map(WriteConcern::nodes),
    }
}

async fn build_client(
    cfg: &MongoConfig,
    deadline: Duration,
    heartbeat: Duration,
) -> Result<Client, MongoError> {
    let options = client_options(cfg, deadline, heartbeat).await?;
    Client::with_options(options).map_err(|e| MongoError::Connection {
        code: "invalid_config",
        message: redact::text(&e.to_string()),
    })
}

async fn ping(db: &Database, deadline: Duration) -> Result<Duration, MongoError> {
    let started = Instant::now();
    MongoError::within(deadline, async {
        db.run_command(doc! {"ping": 1}).await?;
        Ok(started.elapsed())
    })
    .await
}

/// A command's `ok` as the server gave it (nx-27017 answers unknown commands with `ok: 1`).
pub(crate) fn ok_of(reply: &Document) -> bool {
    match reply.get("ok") {
        Some(mongodb::bson::Bson::Double(f)) => *f == 1.0,
        Some(mongodb::bson::Bson::Int32(n)) => *n == 1,
        Some(mongodb::bson::Bson::Int64(n)) => *n == 1,
        Some(mongodb::bson::Bson::Boolean(b)) => *b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Secret;
    use crate::supervisor::link::LinkError;

    #[test]
    fn codes_are_low_cardinality() {
        let refused = mongodb::error::Error::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ));
        assert_eq!(
            MongoError::from_driver(&refused).code(),
            "connection_refused"
        );
        let dropped =
            mongodb::error::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(MongoError::from_driver(&dropped).connection_lost());
        assert_eq!(
            MongoError::deadline_exceeded(Duration::from_secs(1)).code(),
            "deadline_exceeded"
        );
    }

    #[tokio::test]
    async fn options_carry_deadline_password_and_preferences() {
        let mut cfg = crate::Config::defaults().expect("defaults").mongodb;
        cfg.url = "mongodb://lucid@127.0.0.1:27017,127.0.0.2:27017/?replicaSet=rs0".into();
        cfg.password = Some(Secret::new("pw"));
        cfg.read_preference = ReadPreferenceMode::SecondaryPreferred;
        cfg.write_concern = "majority".into();
        let o = client_options(&cfg, Duration::from_millis(700), Duration::from_secs(1))
            .await
            .expect("options");
        assert_eq!(o.server_selection_timeout, Some(Duration::from_millis(700)));
        assert_eq!(o.connect_timeout, Some(Duration::from_millis(700)));
        assert_eq!(o.hosts.len(), 2);
        assert_eq!(o.repl_set_name.as_deref(), Some("rs0"));
        let cred = o.credential.expect("credential");
        assert_eq!(cred.username.as_deref(), Some("lucid"));
        assert_eq!(cred.password.as_deref(), Some("pw"));
        assert!(matches!(
            o.selection_criteria,
            Some(SelectionCriteria::ReadPreference(
                ReadPreference::SecondaryPreferred { .. }
            ))
        ));
        assert_eq!(o.write_concern, Some(WriteConcern::majority()));
        cfg.write_concern = "default".into();
        cfg.password = None;
        cfg.url = "mongodb://127.0.0.1:27017".into();
        let o = client_options(&cfg, Duration::from_secs(1), Duration::from_secs(1))
            .await
            .expect("options");
        assert_eq!(o.write_concern, None);
        assert!(o.credential.is_none());

        // A password in the URI is used as it is; the secret, when set too, wins.
        cfg.url = "mongodb://lucid:from-uri@127.0.0.1:27017".into();
        let o = client_options(&cfg, Duration::from_secs(1), Duration::from_secs(1))
            .await
            .expect("options");
        let cred = o.credential.expect("credential");
        assert_eq!(cred.username.as_deref(), Some("lucid"));
        assert_eq!(cred.password.as_deref(), Some("from-uri"));
        cfg.password = Some(Secret::new("from-file"));
        let o = client_options(&cfg, Duration::from_secs(1), Duration::from_secs(1))
            .await
            .expect("options");
        let cred = o.credential.expect("credential");
        assert_eq!(cred.password.as_deref(), Some("from-file"));
    }
}
