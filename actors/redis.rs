//! The Redis actor: owns lucid-db's connection to Redis and everything Lucid does with it.
//!
//! The connection is a `MultiplexedConnection` (requests from many callers share it and run
//! concurrently), re-created under the shared [`Connection`](crate::supervisor::Connection)
//! backoff — not redis-rs's
//! `ConnectionManager`, whose own retry schedule would fight ours. While up, a PING probe runs
//! every `supervisor.probe_interval`; a failed probe, or a call that finds the connection
//! dropped, takes the actor to backoff at once, and calls are answered `Unavailable` without
//! touching the network until a reconnect succeeds.
//!
//! Every request/response operation is a message with a typed reply that implements
//! [`RedisOp`], and runs the same way whether it is sent to the actor's mailbox or called
//! through [`RedisHandle::call`]: answer at once when Redis is not up, otherwise check the
//! input, run the driver calls within the call deadline, and tell the actor if the connection
//! turned out to be lost. The handle skips the mailbox hop (the actor publishes its current
//! connection and state for it), which is what keeps the actors' CPU cost per call close to
//! the raw driver's (see `actors/benches/lucid_bench.rs`). Operations on the actor's own state
//! (subscriptions, export, import) go through the mailbox. Every key goes through the one key
//! builder ([`Key`]: `lucid:{service}:{entity}:{id}`).
//!
//! The operations, one file each under `actors/redis/`:
//! - [`keys`] — the key builder and name validation.
//! - [`cache`] — get / set with TTL / delete / exists, typed JSON values, single-flight get-or-compute.
//! - [`sessions`] — sessions with a per-user index kept consistent with expiry.
//! - [`ratelimit`] — atomic sliding-window limits per user and per IP.
//! - [`locks`] — leased locks with fencing tokens.
//! - [`pubsub`] — publish, and subscriptions delivered to actors, restored after reconnects.
//! - [`transfer`] — streaming export (SCAN + DUMP) and import (RESTORE … ABSTTL, into any
//!   database of the server) for backups.
//! - [`stats`] — INFO-derived stats.

pub mod cache;
pub mod keys;
pub mod locks;
pub mod pubsub;
pub mod ratelimit;
pub mod sessions;
pub mod stats;
pub mod transfer;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::config::{DownPolicy, RedisConfig, SupervisorConfig};
use crate::events::{self, RateLimitDegraded};
use crate::health::HealthEntry;
use crate::redact;
use crate::supervisor::link::{
    self, ConnectError, Front, Handle, Link, LinkError, LocalFuture, OpFuture, Shares, Supervised,
};
use crate::supervisor::{Backend, CallError, DeadlineError, Shutdown};
use crate::threads::ActorThread;

pub use cache::{CacheDelete, CacheExists, CacheGet, CacheSet};
pub use keys::Key;
pub use locks::{AcquireLock, ExtendLock, LockAttempt, LockGuard, ReleaseLock};
pub use pubsub::{
    PubSubDrops, PubSubMessage, Publish, Subscribe, SubscriptionId, Topic, Unsubscribe,
};
pub use ratelimit::{CheckRateLimit, RateLimitDecision, RateSubject};
pub use sessions::{
    CreateSession, DeleteSession, ExtendSession, GetSession, ListSessions, Session,
};
pub use stats::{GetStats, RedisStats};
pub use transfer::{
    Export, ExportedKey, Import, ImportDetails, ImportOptions, ImportSummary, ImportTarget,
    InspectImportTarget, KeyKind,
};

const BACKEND: Backend = Backend::Redis;

/// The connection calls run on (the crate's name for it: callers never hold one).
pub(crate) type Conn = MultiplexedConnection;

// ---------------------------------------------------------------------------------------------
// Messages (the operations' messages live in their own files)

/// One round trip to Redis (`PING`); answers how long it took.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Duration, RedisError>")]
pub struct Ping;

// ---------------------------------------------------------------------------------------------
// Errors

/// Everything a Redis call can answer instead of a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// Not delivered, not up, or no answer in time (shared with every backend).
    #[error(transparent)]
    Call(#[from] CallError),
    /// A write while a restore writes into the database (`busy`): nothing was sent.
    #[error("redis: {0}")]
    Restoring(#[from] crate::transfer::Restoring),
    /// The connection failed or was lost; the actor reconnects under backoff.
    #[error("redis connection failed ({code}): {message}")]
    Connection { code: &'static str, message: String },
    /// Redis answered with an error reply (WRONGTYPE, OOM, NOSCRIPT, …).
    #[error("redis replied with an error: {message}")]
    Server { message: String },
    /// Bad input, refused before anything was sent.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A value could not be encoded to or decoded from JSON.
    #[error("cannot (de)serialize the value of {key}: {message}")]
    Codec { key: String, message: String },
    /// The session (or other record) does not exist, or has expired.
    #[error("{what} not found")]
    NotFound { what: String },
    /// A record with this id exists already (creating a session twice).
    #[error("{what} already exists")]
    Conflict { what: String },
    /// Release or extend of a lock this caller does not hold (any more).
    #[error("lock {lock} is not held by this token")]
    NotHeld { lock: String },
    /// The lock stayed taken for the whole wait.
    #[error("lock {lock} is held by someone else (waited {} ms)", .waited.as_millis())]
    LockBusy { lock: String, waited: Duration },
    /// An export or import stream made no progress for `supervisor.stream_idle_timeout`.
    #[error("stream idle for {} ms: {what}", .after.as_millis())]
    StreamIdle { what: &'static str, after: Duration },
    /// The import's source failed mid-stream (a corrupt artifact, a lost disk): the import is
    /// a failure, never a silently partial restore, and says how far it got.
    #[error("the import source failed after {written} keys were written: {reason}")]
    ImportSource { written: u64, reason: String },
    /// The import's target database holds `lucid:*` keys and the import does not replace.
    #[error(
        "redis database {db} holds lucid:* keys ({keys} keys in all); import with force to write over them"
    )]
    NotEmpty { db: i64, keys: u64 },
    /// The import's target database holds keys, none of them lucid-db's, and the import
    /// accepts only a database that holds nothing ([`crate::transfer::Existing::RefuseAny`]).
    #[error("redis database {db} is in use ({keys} keys, none of them lucid:*)")]
    Exists { db: i64, keys: u64 },
}

impl RedisError {
    /// Low-cardinality code for logs, events and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            RedisError::Call(e) => e.code(),
            RedisError::Restoring(_) => "busy",
            RedisError::Connection { code, .. } => code,
            RedisError::Server { .. } => "server_error",
            RedisError::Invalid { .. } => "invalid",
            RedisError::Codec { .. } => "codec",
            RedisError::NotFound { .. } => "not_found",
            RedisError::Conflict { .. } => "conflict",
            RedisError::NotHeld { .. } => "not_held",
            RedisError::LockBusy { .. } => "lock_busy",
            RedisError::StreamIdle { .. } => "stream_idle",
            RedisError::ImportSource { .. } => "import_source_failed",
            RedisError::NotEmpty { .. } => "not_empty",
            RedisError::Exists { .. } => "exists",
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        RedisError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn from_driver(e: &redis::RedisError) -> Self {
        let code = if e.is_connection_refusal() {
            "connection_refused"
        } else if e.is_timeout() {
            "timeout"
        } else if e.is_connection_dropped() {
            "connection_dropped"
        } else if e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
        {
            "auth_failed"
        } else if e.is_io_error() {
            "io"
        } else if e.kind() == redis::ErrorKind::InvalidClientConfig {
            "invalid_config"
        } else {
            return RedisError::Server {
                message: redact::text(&e.to_string()),
            };
        };
        RedisError::Connection {
            code,
            message: redact::text(&e.to_string()),
        }
    }
}

impl From<redis::RedisError> for RedisError {
    fn from(e: redis::RedisError) -> Self {
        RedisError::from_driver(&e)
    }
}

// ---------------------------------------------------------------------------------------------
// Settings and handle

/// The longest TTL, lease or window accepted anywhere: a year.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the operations need from `[redis]` and `[supervisor]`, fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub deadline: Duration,
    pub probe_interval: Duration,
    pub stream_idle: Duration,
    pub mailbox_capacity: usize,
    pub cache_ttl: Duration,
    pub cache_max_ttl: Duration,
    pub session_ttl: Duration,
    pub lock_lease: Duration,
    pub max_value_bytes: usize,
    pub when_down: DownPolicy,
    pub not_restorable: Vec<String>,
    pub fence_margin: u64,
}

impl Settings {
    pub fn from_config(cfg: &RedisConfig, sup: &SupervisorConfig) -> Self {
        Settings {
            deadline: sup.call_deadline,
            probe_interval: sup.probe_interval,
            stream_idle: sup.stream_idle_timeout,
            mailbox_capacity: sup.mailbox_capacity,
            cache_ttl: cfg.cache_ttl,
            cache_max_ttl: cfg.cache_max_ttl,
            session_ttl: cfg.session_ttl,
            lock_lease: cfg.lock_lease,
            max_value_bytes: cfg.max_value_bytes,
            when_down: cfg.rate_limit_when_down,
            not_restorable: cfg.not_restorable.clone(),
            fence_margin: cfg.fence_margin,
        }
    }

    /// A TTL given by a caller: at least 1 ms and at most `max` (`None`: [`MAX_TTL`], so
    /// Redis never refuses the expiry of a key it has just written).
    pub(crate) fn check_ttl(
        field: &'static str,
        ttl: Duration,
        max: Option<Duration>,
    ) -> Result<(), RedisError> {
        if ttl < Duration::from_millis(1) {
            return Err(RedisError::invalid(field, "must be at least 1 ms"));
        }
        let max = max.unwrap_or(MAX_TTL);
        if ttl > max {
            return Err(RedisError::invalid(
                field,
                format!(
                    "{} is above the maximum {}",
                    humantime::format_duration(ttl),
                    humantime::format_duration(max)
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn check_value_size(&self, len: usize) -> Result<(), RedisError> {
        if len > self.max_value_bytes {
            return Err(RedisError::invalid(
                "value",
                format!(
                    "{len} bytes, above redis.max_value_bytes ({})",
                    self.max_value_bytes
                ),
            ));
        }
        Ok(())
    }
}

mod sealed {
    /// Only this crate's operations run through [`super::RedisOp`]: key naming and input
    /// checks stay here.
    pub trait Sealed {}
}

/// A request/response operation: one message type, handled identically whether it arrives
/// through the mailbox (`Addr::send`) or is run by [`RedisHandle::call`] directly on the
/// connection the actor published (no mailbox hop — the actor still owns connecting,
/// probing and backoff, and learns of a lost connection from the call). Sealed.
pub trait RedisOp:
    sealed::Sealed + Message<Result = Result<<Self as RedisOp>::Output, RedisError>> + Send + 'static
{
    type Output: Send + 'static;
    /// Whether it writes: refused with `busy` while a restore writes into the store's live
    /// data ([`crate::transfer::RestoreGate`]).
    const WRITES: bool = false;

    /// Checks the input (an error here means nothing was sent) and returns the driver calls.
    fn start(self, conn: Conn, shared: &Shared) -> Result<impl OpFuture<Self>, RedisError>;

    /// The answer while Redis is unavailable, for operations that have one (rate limits).
    /// Cheap: it is prepared before every call, in case the connection is lost on the way.
    fn when_down(&self, _: &Settings) -> Option<Self::Output> {
        None
    }

    /// The input checks of [`RedisOp::start`], for answering [`RedisOp::when_down`] without a
    /// connection: bad input stays an error while Redis is down.
    fn check(&self) -> Result<(), RedisError> {
        Ok(())
    }
}

/// State shared by the actor (its only writer) and every handle.
pub struct Shared {
    settings: Settings,
    /// The actor's address, its published connection and health entry.
    front: Front<RedisActor>,
    /// Whether `ratelimit.degraded` was emitted for the current outage.
    degraded_reported: AtomicBool,
    flights: cache::Flights,
    /// The database `redis.url` selects (0 when it names none).
    database: i64,
    /// Held while an import writes into `database` (see [`RedisOp::WRITES`]).
    restore_gate: crate::transfer::RestoreGate,
}

impl Shared {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The connection for a call, or the answer to give instead ([`Front::usable`]).
    fn usable(&self) -> Result<(Conn, u64), RedisError> {
        Ok(self.front.usable()?)
    }

    /// `ratelimit.degraded`, once per outage.
    fn degraded(&self, cause: &RedisError, admitted: bool) {
        if !self.degraded_reported.swap(true, Ordering::Relaxed) {
            events::emit(RateLimitDegraded {
                policy: if admitted { "open" } else { "closed" },
                code: cause.code(),
            });
        }
    }
}

/// Runs one operation as [`Front::run`] does — the connection the actor published (or the
/// immediate answer while Redis is not up), the input checks, the driver calls within the
/// call deadline, news of a lost connection or a missed deadline back to the actor — and
/// answers by the configured policy while Redis is down, for the operations that have one
/// ([`RedisOp::when_down`]).
async fn exec<M: RedisOp>(shared: &Shared, msg: M) -> Result<M::Output, RedisError> {
    if M::WRITES {
        shared.restore_gate.check()?;
    }
    let operation = crate::metrics::op_name::<M>();
    let (conn, generation) = match shared.usable() {
        Ok(usable) => usable,
        Err(e) => {
            crate::metrics::backend_call(Backend::Redis, operation, None, Some(e.code()));
            let Some(answer) = msg.when_down(&shared.settings) else {
                return Err(e);
            };
            msg.check()?;
            shared.degraded(&e, shared.settings.when_down == DownPolicy::Open);
            return Ok(answer);
        }
    };
    let fallback = msg.when_down(&shared.settings);
    let work = msg.start(conn, shared).inspect_err(|e| {
        crate::metrics::backend_call(Backend::Redis, operation, None, Some(e.code()));
    })?;
    let res = Front::<RedisActor>::timed(operation, shared.front.deadline(), work).await;
    match res {
        Err(e) if e.tells_of_connection() => {
            shared.front.report(generation, &e);
            // Lost on the way: the configured policy decides this one, where there is one.
            match fallback {
                Some(answer) => {
                    shared.degraded(&e, shared.settings.when_down == DownPolicy::Open);
                    Ok(answer)
                }
                None => Err(e),
            }
        }
        res => res,
    }
}

/// What callers hold ([`Handle`]): the state shared with the actor (its address, its
/// published connection, the settings, the single-flight table).
pub type RedisHandle = Handle<Shared>;

impl Shares for Shared {
    type Actor = RedisActor;
    type Settings = Settings;

    fn front(&self) -> &Front<RedisActor> {
        &self.front
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }
}

impl RedisHandle {
    /// The database `redis.url` selects: the one calls and exports use.
    pub fn database(&self) -> i64 {
        self.shared.database
    }

    /// PING, timed.
    pub fn ping(&self) -> impl Future<Output = Result<Duration, RedisError>> + '_ {
        self.call(Ping)
    }

    /// Runs a request/response operation within the call deadline, directly on the
    /// connection the actor published (see [`RedisOp`]); `Unavailable` at once while Redis is
    /// not up.
    ///
    /// (Not an `async fn`: the typed helpers return this future as it is, so the call path
    /// adds no layers of futures to move around — it is the hot path.)
    pub fn call<M: RedisOp>(
        &self,
        msg: M,
    ) -> impl Future<Output = Result<M::Output, RedisError>> + '_ {
        exec(&self.shared, msg)
    }
}

// ---------------------------------------------------------------------------------------------
// State

/// See the module doc.
pub struct RedisActor {
    /// `None` when the URL could not be turned into a client (the actor stays disabled).
    client: Option<redis::Client>,
    /// The connection under supervision; its generation is bumped on every connect attempt
    /// and every loss, so late results of an older connection (a probe, a call, a timer)
    /// cannot act on the current one.
    link: Link<Conn>,
    shared: Arc<Shared>,
    subscriptions: pubsub::Subscriptions,
}

impl RedisActor {
    /// Starts the actor on a thread of its own (`lucid-redis`, tied to the current arbiter:
    /// see `actors/threads.rs`) and returns its handle.
    pub fn start_with(
        cfg: &RedisConfig,
        sup: &SupervisorConfig,
        health: HealthEntry,
    ) -> RedisHandle {
        let built = build_client(cfg);
        let shared = Arc::new(Shared {
            settings: Settings::from_config(cfg, sup),
            front: Front::new(health, sup),
            degraded_reported: AtomicBool::new(false),
            flights: cache::Flights::default(),
            restore_gate: Default::default(),
            database: built
                .as_ref()
                .map_or(0, |c| c.get_connection_info().redis_settings().db()),
        });
        let mut link = Link::new(sup);
        let client = match built {
            Ok(client) => Some(client),
            Err(e) => {
                link.machine.disable(format!("invalid redis.url: {e}"));
                None
            }
        };
        let actor = RedisActor {
            client,
            link,
            shared: shared.clone(),
            subscriptions: pubsub::Subscriptions::default(),
        };
        shared
            .front
            .start(&ActorThread::start("lucid-redis"), actor);
        RedisHandle { shared }
    }
}

impl Supervised for RedisActor {
    type Error = RedisError;
    const BACKEND: Backend = BACKEND;

    /// A new multiplexed connection and a PING; nothing while the URL was refused at start.
    fn connect(
        &mut self,
    ) -> Option<LocalFuture<Result<(MultiplexedConnection, Duration), ConnectError<RedisError>>>>
    {
        let client = self.client.clone()?;
        let deadline = self.shared.settings.deadline;
        Some(Box::pin(async move {
            Ok(connect_once(client, deadline).await?)
        }))
    }

    fn ping(
        conn: MultiplexedConnection,
        deadline: Duration,
    ) -> LocalFuture<Result<Duration, RedisError>> {
        Box::pin(ping(conn, deadline))
    }

    /// Resubscribes every pub/sub topic; the policy for a down Redis is reported afresh.
    fn on_up(&mut self, ctx: &mut Context<Self>) {
        self.shared
            .degraded_reported
            .store(false, Ordering::Relaxed);
        self.open_pubsub(ctx);
    }

    fn on_lost(&mut self, ctx: &mut Context<Self>) {
        if let Some(stream) = self.subscriptions.connection_lost() {
            ctx.cancel_future(stream);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

impl sealed::Sealed for Ping {}

impl RedisOp for Ping {
    type Output = Duration;

    fn start(self, conn: Conn, shared: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        Ok(ping(conn, shared.settings.deadline))
    }
}

link::supervised_actor! {
    actor: RedisActor,
    conn: Conn,
    error: RedisError,
    operations: RedisOp,
}

impl Handler<Shutdown> for RedisActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        link::disconnect(self, ctx);
        ctx.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Driver calls (no actor state)

fn build_client(cfg: &RedisConfig) -> Result<redis::Client, RedisError> {
    let client = redis::Client::open(cfg.url.expose()).map_err(|e| RedisError::from_driver(&e))?;
    let Some(password) = &cfg.password else {
        return Ok(client);
    };
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_password(password.expose());
    redis::Client::open(info.set_redis_settings(settings)).map_err(|e| RedisError::from_driver(&e))
}

/// Connects and PINGs (which also proves authentication worked), all within `deadline`.
async fn connect_once(
    client: redis::Client,
    deadline: Duration,
) -> Result<(MultiplexedConnection, Duration), RedisError> {
    let started = Instant::now();
    // No response timeout in the driver: every call's deadline is ours (tokio's timeout), so a
    // slow reply is `DeadlineExceeded`, one kind of error whichever clock fired first.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(deadline))
        .set_response_timeout(None);
    let attempt = async {
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| RedisError::from_driver(&e))?;
        ping(conn.clone(), deadline).await?;
        Ok(conn)
    };
    match tokio::time::timeout(deadline, attempt).await {
        Ok(Ok(conn)) => Ok((conn, started.elapsed())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RedisError::Connection {
            code: "timeout",
            message: format!("no answer within {}", humantime::format_duration(deadline)),
        }),
    }
}

async fn ping(mut conn: MultiplexedConnection, deadline: Duration) -> Result<Duration, RedisError> {
    let started = Instant::now();
    RedisError::within(deadline, async {
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(started.elapsed())
    })
    .await
}

/// One command's reply, as `T`: the driver call of the operations that send one command.
///
/// (Not an `async fn`: one would keep its arguments twice in its future, which every call
/// then moves — on the hot path.)
#[allow(clippy::manual_async_fn)]
pub(crate) fn query<T: redis::FromRedisValue>(
    cmd: redis::Cmd,
    mut conn: Conn,
) -> impl Future<Output = Result<T, RedisError>> + Send + 'static {
    async move { Ok(cmd.query_async(&mut conn).await?) }
}

/// Milliseconds for a Redis argument (`PX`, `PEXPIRE`), at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    (d.as_millis().min(u128::from(u64::MAX)) as u64).max(1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A command's arguments as text, name first: what Redis would be sent.
    pub(crate) fn args(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<cursor>".to_owned(),
            })
            .collect()
    }

    /// The operations' settings from the default configuration.
    pub(crate) fn settings() -> Settings {
        let cfg = crate::Config::defaults().expect("defaults");
        Settings::from_config(&cfg.redis, &cfg.supervisor)
    }

    #[test]
    fn codes_are_low_cardinality() {
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(
            RedisError::from_driver(&refused).code(),
            "connection_refused"
        );
        let dropped = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(
            RedisError::from_driver(&dropped).code(),
            "connection_dropped"
        );
        assert!(RedisError::from_driver(&dropped).connection_lost());
        let late = RedisError::deadline_exceeded(Duration::from_secs(1));
        assert_eq!(
            late,
            RedisError::Call(CallError::DeadlineExceeded {
                backend: Backend::Redis,
                after: Duration::from_secs(1)
            })
        );
        assert_eq!(late.code(), "deadline_exceeded");
        assert!(!late.connection_lost());
        assert!(
            late.tells_of_connection(),
            "a missed deadline makes the actor probe"
        );
    }

    #[test]
    fn client_carries_the_password_from_the_secret() {
        let mut cfg = crate::Config::defaults().expect("defaults").redis;
        cfg.url = "redis://127.0.0.1:6379/3".into();
        cfg.password = Some(crate::redact::Secret::new("pw"));
        let client = build_client(&cfg).expect("client");
        let info = client.get_connection_info();
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().db(), 3);
    }

    #[test]
    fn ttl_checks() {
        let max = Some(Duration::from_secs(3600));
        assert!(Settings::check_ttl("ttl", Duration::from_secs(300), max).is_ok());
        assert!(matches!(
            Settings::check_ttl("ttl", Duration::ZERO, max),
            Err(RedisError::Invalid { field: "ttl", .. })
        ));
        assert!(matches!(
            Settings::check_ttl("ttl", Duration::from_secs(3601), max),
            Err(RedisError::Invalid { .. })
        ));
        assert!(Settings::check_ttl("ttl", Duration::from_secs(86400), None).is_ok());
        assert!(matches!(
            Settings::check_ttl("ttl", Duration::MAX, None),
            Err(RedisError::Invalid { .. })
        ));
    }
}
