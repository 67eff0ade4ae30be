//! The Redis actor: owns lucid-db's one connection to Redis.
//!
//! The connection is a `MultiplexedConnection` (requests from many callers share it and run
//! concurrently), re-created under the shared [`Connection`] backoff — not redis-rs's
//! `ConnectionManager`, whose own retry schedule would fight ours. While up, a PING probe runs
//! every `supervisor.probe_interval`; a failed probe, or a call that finds the connection
//! dropped, takes the actor to backoff at once, and calls are answered `Unavailable` without
//! touching the network until a reconnect succeeds.
//!
//! For now the actor offers the connection and its health; the Redis service (cache, sessions,
//! rate limits, pub/sub, locks, export/import) builds on it.

use std::time::Duration;

use actix::fut::{self, ActorFutureExt, WrapFuture};
use actix::prelude::*;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::config::{RedisConfig, SupervisorConfig};
use crate::events::{self, BackendDown, BackendRetryScheduled, BackendUp};
use crate::health::HealthEntry;
use crate::redact;
use crate::supervisor::{
    Backend, BackoffPolicy, CallError, ConnState, Connection, Heartbeat, Shutdown, call,
};

const BACKEND: Backend = Backend::Redis;

// ---------------------------------------------------------------------------------------------
// Messages

/// One round trip to Redis (`PING`); answers how long it took.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Duration, RedisError>")]
pub struct Ping;

/// Self-message: the backoff delay is over, try to connect again. Carries the generation it
/// was scheduled for, so a stale timer cannot start a second connect.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
struct Reconnect {
    generation: u64,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Everything a Redis call can answer instead of a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// Not delivered, not up, or no answer in time (shared with every backend).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The connection failed or was lost; the actor reconnects under backoff.
    #[error("redis connection failed ({code}): {message}")]
    Connection { code: &'static str, message: String },
    /// Redis answered with an error reply.
    #[error("redis replied with an error: {message}")]
    Server { message: String },
}

impl RedisError {
    /// Low-cardinality code for logs, events and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            RedisError::Call(e) => e.code(),
            RedisError::Connection { code, .. } => code,
            RedisError::Server { .. } => "server_error",
        }
    }

    /// Whether this error means the connection itself is gone (as opposed to one bad reply).
    fn connection_lost(&self) -> bool {
        matches!(self, RedisError::Connection { .. })
    }

    fn from_driver(e: &redis::RedisError) -> Self {
        let code = if e.is_connection_refusal() {
            "connection_refused"
        } else if e.is_timeout() {
            "timeout"
        } else if e.is_connection_dropped() {
            "connection_dropped"
        } else if e.kind() == redis::ErrorKind::AuthenticationFailed {
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

    fn deadline(after: Duration) -> Self {
        RedisError::Call(CallError::DeadlineExceeded {
            backend: BACKEND,
            after,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Handle

/// What callers hold: the actor's address and the call deadline.
#[derive(Clone)]
pub struct RedisHandle {
    addr: Addr<RedisActor>,
    deadline: Duration,
}

impl RedisHandle {
    /// The actor's address, for sending messages directly (`send` with a timeout, never `do_send`).
    pub fn addr(&self) -> &Addr<RedisActor> {
        &self.addr
    }

    /// PING through the actor.
    pub async fn ping(&self) -> Result<Duration, RedisError> {
        self.call(Ping).await?
    }

    /// Sends a message, answering within the deadline (the actor enforces the deadline on
    /// Redis itself; the grace here only covers a full mailbox or a stopped actor).
    async fn call<M>(&self, msg: M) -> Result<M::Result, CallError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        RedisActor: Handler<M>,
    {
        call(&self.addr, BACKEND, msg, self.deadline + DELIVERY_GRACE).await
    }

    pub(crate) async fn heartbeat(&self, deadline: Duration) -> Result<(), CallError> {
        call(&self.addr, BACKEND, Heartbeat, deadline).await
    }

    pub(crate) async fn shutdown(&self, deadline: Duration) -> Result<(), CallError> {
        call(&self.addr, BACKEND, Shutdown, deadline).await
    }
}

/// How much longer than the deadline a caller waits for delivery before giving up on the actor.
const DELIVERY_GRACE: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// State

/// See the module doc.
pub struct RedisActor {
    /// `None` when the URL could not be turned into a client (the actor stays disabled).
    client: Option<redis::Client>,
    machine: Connection,
    conn: Option<MultiplexedConnection>,
    /// Bumped on every connect attempt and every loss, so late results of an older
    /// connection (a probe, a call, a timer) cannot act on the current one.
    generation: u64,
    probe_in_flight: bool,
    deadline: Duration,
    probe_interval: Duration,
    mailbox_capacity: usize,
    health: HealthEntry,
}

impl RedisActor {
    /// Starts the actor on the current arbiter and returns its handle.
    pub fn start_with(
        cfg: &RedisConfig,
        sup: &SupervisorConfig,
        health: HealthEntry,
    ) -> RedisHandle {
        let mut machine = Connection::new(BackoffPolicy::from_config(sup), Instant::now());
        let client = match build_client(cfg) {
            Ok(client) => Some(client),
            Err(e) => {
                machine.disable(format!("invalid redis.url: {}", e));
                None
            }
        };
        let actor = RedisActor {
            client,
            machine,
            conn: None,
            generation: 0,
            probe_in_flight: false,
            deadline: sup.call_deadline,
            probe_interval: sup.probe_interval,
            mailbox_capacity: sup.mailbox_capacity,
            health,
        };
        RedisHandle {
            addr: actor.start(),
            deadline: sup.call_deadline,
        }
    }

    fn spawn_connect(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        self.generation += 1;
        let generation = self.generation;
        self.health.record(&self.machine);
        let deadline = self.deadline;
        ctx.spawn(
            connect_once(client, deadline)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    if act.generation != generation {
                        return;
                    }
                    match res {
                        Ok((conn, latency)) => act.on_connected(conn, latency),
                        Err(e) => act.on_failure(generation, &e, ctx),
                    }
                }),
        );
    }

    fn on_connected(&mut self, conn: MultiplexedConnection, latency: Duration) {
        match self.machine.connected(Instant::now()) {
            Ok(recovery) => {
                self.conn = Some(conn);
                self.health.record(&self.machine);
                self.health.latency(latency);
                events::emit(BackendUp {
                    backend: BACKEND,
                    attempt: recovery.attempt,
                    down_ms: recovery.down_for.as_millis() as u64,
                });
            }
            Err(e) => {
                tracing::error!(backend = %BACKEND, error = %e, "bug: unexpected connect result")
            }
        }
    }

    /// A connect, probe or call of connection `generation` failed: back off and reconnect.
    fn on_failure(&mut self, generation: u64, err: &RedisError, ctx: &mut Context<Self>) {
        if generation != self.generation {
            return;
        }
        // Only Connecting or Up can fail; anything else is a late echo and changes nothing.
        let Ok(failure) = self.machine.failed(Instant::now(), rand::random::<f64>()) else {
            return;
        };
        self.conn = None;
        self.generation += 1;
        self.health.record(&self.machine);
        let message = err.to_string();
        self.health.error(err.code(), &message);
        if failure.outage_began {
            events::emit(BackendDown {
                backend: BACKEND,
                code: err.code(),
                error: redact::text(&message),
                attempt: failure.attempt,
            });
        }
        events::emit(BackendRetryScheduled {
            backend: BACKEND,
            code: err.code(),
            attempt: failure.attempt + 1,
            retry_in_ms: failure.retry_in.as_millis() as u64,
        });
        ctx.notify_later(
            Reconnect {
                generation: self.generation,
            },
            failure.retry_in,
        );
    }

    /// PING over the current connection unless one is already in flight.
    fn probe(&mut self, ctx: &mut Context<Self>) {
        if self.probe_in_flight || !self.machine.is_up() {
            return;
        }
        let Some(conn) = self.conn.clone() else {
            return;
        };
        self.probe_in_flight = true;
        let generation = self.generation;
        ctx.spawn(
            ping(conn, self.deadline)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    act.probe_in_flight = false;
                    match res {
                        Ok(latency) if act.generation == generation => {
                            let _ = act.machine.healthy(Instant::now());
                            act.health.latency(latency);
                        }
                        Ok(_) => {}
                        Err(e) => act.on_failure(generation, &e, ctx),
                    }
                }),
        );
    }

    /// The connection for a call, or the answer to give instead — at once, without waiting.
    fn usable(&self) -> Result<MultiplexedConnection, RedisError> {
        let unavailable = |retry_in| {
            RedisError::Call(CallError::Unavailable {
                backend: BACKEND,
                retry_in,
            })
        };
        match self.machine.state() {
            ConnState::Up { .. } => self.conn.clone().ok_or_else(|| unavailable(None)),
            ConnState::Backoff { .. } => Err(unavailable(self.machine.retry_in(Instant::now()))),
            ConnState::Connecting { .. } => Err(unavailable(None)),
            ConnState::Disabled { reason } => Err(RedisError::Call(CallError::Disabled {
                backend: BACKEND,
                reason: reason.clone(),
            })),
        }
    }

    /// After a call failed: a lost connection means backoff now; a call that ran out of time
    /// triggers a probe at once rather than at the next interval.
    fn after_call_error(&mut self, generation: u64, err: &RedisError, ctx: &mut Context<Self>) {
        if err.connection_lost() {
            self.on_failure(generation, err, ctx);
        } else if matches!(err, RedisError::Call(CallError::DeadlineExceeded { .. })) {
            self.probe(ctx);
        }
    }
}

impl Actor for RedisActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        self.health.record(&self.machine);
        self.spawn_connect(ctx);
        ctx.run_interval(self.probe_interval, |act, ctx| act.probe(ctx));
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

impl Handler<Ping> for RedisActor {
    type Result = ResponseActFuture<Self, Result<Duration, RedisError>>;

    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> Self::Result {
        let conn = match self.usable() {
            Ok(conn) => conn,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        let generation = self.generation;
        Box::pin(
            ping(conn, self.deadline)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    if let Err(e) = &res {
                        act.after_call_error(generation, e, ctx);
                    }
                    res
                }),
        )
    }
}

impl Handler<Reconnect> for RedisActor {
    type Result = ();

    fn handle(&mut self, msg: Reconnect, ctx: &mut Context<Self>) {
        if msg.generation != self.generation {
            return;
        }
        let now = Instant::now();
        match self.machine.retry(now) {
            Ok(_) => self.spawn_connect(ctx),
            // The timer fired a hair early: wait out the rest.
            Err(_) => {
                if let Some(wait) = self.machine.retry_in(now) {
                    ctx.notify_later(msg, wait);
                }
            }
        }
    }
}

impl Handler<Heartbeat> for RedisActor {
    type Result = ();

    fn handle(&mut self, _: Heartbeat, _: &mut Context<Self>) {}
}

impl Handler<Shutdown> for RedisActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        self.machine.disable("shutting down");
        self.generation += 1;
        self.conn = None;
        self.health.record(&self.machine);
        ctx.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Driver calls (no actor state)

fn build_client(cfg: &RedisConfig) -> Result<redis::Client, RedisError> {
    let client = redis::Client::open(cfg.url.as_str()).map_err(|e| RedisError::from_driver(&e))?;
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
    match tokio::time::timeout(
        deadline,
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await
    {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(RedisError::from_driver(&e)),
        Err(_) => Err(RedisError::deadline(deadline)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            RedisError::deadline(Duration::from_secs(1)).code(),
            "deadline_exceeded"
        );
        assert!(!RedisError::deadline(Duration::from_secs(1)).connection_lost());
    }

    #[test]
    fn client_carries_the_password_from_the_secret() {
        let cfg = RedisConfig {
            enabled: true,
            required: true,
            url: "redis://127.0.0.1:6379/3".into(),
            password_file: Default::default(),
            password: Some(crate::redact::Secret::new("pw")),
        };
        let client = build_client(&cfg).expect("client");
        let info = client.get_connection_info();
        assert_eq!(info.redis_settings().password(), Some("pw"));
        assert_eq!(info.redis_settings().db(), 3);
    }
}
