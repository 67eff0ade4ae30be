//! The connection actor every backend shares: connect under backoff, probe on an interval,
//! react to failed calls, publish the connection for calls, run the calls, stop cleanly.
//!
//! A backend actor holds a [`Link`] (its supervision state) and, in the state it shares with
//! its handles, a [`Front`]; it implements [`Supervised`] — how to open a connection, how to
//! time a round trip, and what to do when the connection comes up or is lost (the bootstrap,
//! pub/sub) — and [`supervised_actor!`] writes its `Actor` impl and the handlers every backend
//! has the same. The decisions stay in the [`Connection`] state machine; this is the plumbing
//! around it that would otherwise be written once per backend:
//!
//! - the actor side: connect results, probes, failures, reconnects, mirroring the state into
//!   the registry and into what calls read ([`record`]), and [`disconnect`] for `Shutdown`;
//! - the call side, [`Front`]: the published connection or the answer to give at once, the
//!   operation within its deadline, news of a lost connection back to the actor, and mailbox
//!   sends within the deadline plus [`DELIVERY_GRACE`];
//! - the call's metrics, once for every backend ([`Front::timed`]: counted, timed, error coded);
//! - what callers hold, [`Handle`], for any backend's shared state ([`Shares`]);
//! - [`Bootstraps`]: a backend's bootstrap runs one at a time, at connect or asked for.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::prelude::*;
use futures_util::FutureExt;
use tokio::time::Instant;

use super::{
    Backend, BackoffPolicy, CallError, Connection, DELIVERY_GRACE, DeadlineError, Heartbeat,
    Published, Shutdown, call,
};
use crate::config::SupervisorConfig;
use crate::health::HealthEntry;
use crate::metrics;
use crate::threads::ActorThread;

/// A future the actor awaits on its own thread.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Why a connect attempt failed.
#[derive(Debug)]
pub enum ConnectError<E> {
    /// Worth retrying under backoff.
    Failed(E),
    /// The settings can never work: the backend is disabled with this reason.
    Invalid(String),
}

impl<E> From<E> for ConnectError<E> {
    fn from(e: E) -> Self {
        ConnectError::Failed(e)
    }
}

/// A backend's error, as supervision and the call path need to see it: whose it is, its
/// code, whether it says the connection is gone, and the shared [`CallError`] it wraps (its
/// `Call` variant). It has the deadline helper: `RedisError::within(deadline, fut)`.
pub trait LinkError: From<CallError> + std::fmt::Display + Clone + Send + 'static {
    const BACKEND: Backend;
    /// Low-cardinality code for the health entry and the events.
    fn code(&self) -> &'static str;
    /// The connection itself failed (reconnect now), as opposed to one slow call (probe).
    fn connection_lost(&self) -> bool;
    /// The shared call error, when this is one.
    fn as_call(&self) -> Option<&CallError>;

    /// Whether a call's failure is news for the actor: the connection is gone (back off
    /// now), or the call ran out of time (probe now).
    fn tells_of_connection(&self) -> bool {
        self.connection_lost() || matches!(self.as_call(), Some(CallError::DeadlineExceeded { .. }))
    }
}

impl<E: LinkError> DeadlineError for E {
    fn deadline_exceeded(after: Duration) -> Self {
        CallError::DeadlineExceeded {
            backend: E::BACKEND,
            after,
        }
        .into()
    }
}

/// What differs between the backend actors; see the module doc.
pub trait Supervised:
    Actor<Context = Context<Self>>
    + Handler<Reconnect>
    + Handler<Heartbeat>
    + Handler<Shutdown>
    + Linked
{
    type Error: LinkError;
    const BACKEND: Backend;

    /// Opens a connection and times a first round trip. `None`: nothing to connect with (the
    /// backend was disabled at start).
    #[allow(clippy::type_complexity)]
    fn connect(
        &mut self,
    ) -> Option<LocalFuture<Result<(Self::Conn, Duration), ConnectError<Self::Error>>>>;

    /// One round trip on `conn`, timed.
    fn ping(conn: Self::Conn, deadline: Duration) -> LocalFuture<Result<Duration, Self::Error>>;

    /// The connection is up and published (run a bootstrap, resubscribe).
    fn on_up(&mut self, _ctx: &mut Context<Self>) {}

    /// The connection is gone, before the state is published (cancel what used it).
    fn on_lost(&mut self, _ctx: &mut Context<Self>) {}
}

/// Where a supervised actor keeps its supervision state and what it shares with its
/// handles: its field `link` and the `front` of its field `shared`, the same in every backend
/// ([`supervised_actor!`] writes the impl).
pub trait Linked {
    /// The cheaply cloned driver handle calls run on.
    type Conn: Clone + 'static;

    fn link(&mut self) -> &mut Link<Self::Conn>;
    fn link_ref(&self) -> &Link<Self::Conn>;
    /// What the actor shares with its handles.
    fn front(&self) -> &Front<Self>
    where
        Self: Supervised;
}

/// A connection actor's supervision state.
pub struct Link<C> {
    pub machine: Connection,
    /// The live connection while up.
    pub conn: Option<C>,
    /// Bumped on every connect attempt and loss: a result of an older generation is ignored.
    pub generation: u64,
    probe_in_flight: bool,
}

impl<C> Link<C> {
    /// Connecting (attempt 1), under the supervisor's backoff policy.
    pub fn new(sup: &SupervisorConfig) -> Self {
        Link {
            machine: Connection::new(BackoffPolicy::from_config(sup), Instant::now()),
            conn: None,
            generation: 0,
            probe_in_flight: false,
        }
    }
}

/// The future an operation's `start` answers for message `M`: `M`'s reply, `Send`, owning
/// what it uses (it runs in the caller's task or on the actor's thread alike).
pub trait OpFuture<M: Message + ?Sized>: Future<Output = M::Result> + Send + 'static {}

impl<M, F> OpFuture<M> for F
where
    M: Message + ?Sized,
    F: Future<Output = M::Result> + Send + 'static,
{
}

/// What a backend actor shares with its handles (inside the backend's own `Shared`, behind an
/// `Arc`): its address, the connection it publishes, its health entry and the supervisor's
/// settings; and the call path on them, the same for every backend. The actor is the only
/// writer of the published connection; handles read it under the lock.
pub struct Front<A: Supervised> {
    published: RwLock<Published<A::Conn>>,
    health: HealthEntry,
    addr: OnceLock<Addr<A>>,
    /// `supervisor.call_deadline`.
    deadline: Duration,
    probe_interval: Duration,
    mailbox_capacity: usize,
}

impl<A: Supervised> Front<A> {
    pub fn new(health: HealthEntry, sup: &SupervisorConfig) -> Self {
        Front {
            published: RwLock::new(Published::Connecting),
            health,
            addr: OnceLock::new(),
            deadline: sup.call_deadline,
            probe_interval: sup.probe_interval,
            mailbox_capacity: sup.mailbox_capacity,
        }
    }

    /// Starts `actor` on `thread` (see `actors/threads.rs`); called by the backend's
    /// `start_with` before it hands out a handle.
    pub(crate) fn start(&self, thread: &ActorThread, actor: A)
    where
        A: Send,
    {
        let _ = self.addr.set(thread.start_actor(move |_| actor));
    }

    /// `supervisor.call_deadline`.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The backend's entry in the health registry.
    pub fn health(&self) -> &HealthEntry {
        &self.health
    }

    /// The actor's address; set by [`Front::start`] before any handle exists.
    pub fn actor(&self) -> &Addr<A> {
        self.addr
            .get()
            .unwrap_or_else(|| unreachable!("the address is set before the handle is returned"))
    }

    /// The connection for a call and its generation, or the answer to give instead — at
    /// once, without waiting.
    pub fn usable(&self) -> Result<(A::Conn, u64), CallError> {
        self.published
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .usable(A::BACKEND)
    }

    /// Tells the actor that a call on connection `generation` failed in a way that says
    /// something about the connection. A full mailbox only delays that news: the probe finds
    /// out too.
    pub fn report(&self, generation: u64, e: &A::Error)
    where
        A: Handler<CallFailed<A::Error>>,
    {
        if e.tells_of_connection()
            && let Some(actor) = self.addr.get()
        {
            let _ = actor.try_send(CallFailed {
                generation,
                error: e.clone(),
            });
        }
    }

    /// Runs one operation: the published connection (or the answer to give at once), `start`
    /// (the input checks: an error there means nothing was sent) and the work it returns
    /// within `deadline`, and news of a lost connection or a missed deadline back to the
    /// actor. Successful calls never touch the actor.
    ///
    /// (Not an `async fn`: one would keep `start`, and the message in it, twice in the future
    /// every call moves.)
    ///
    /// `operation` names it in the metrics ([`crate::metrics::op_name`] of the message).
    #[allow(clippy::manual_async_fn)]
    pub fn run<T, F>(
        &self,
        operation: &'static str,
        deadline: Duration,
        start: impl FnOnce(A::Conn) -> Result<F, A::Error>,
    ) -> impl Future<Output = Result<T, A::Error>>
    where
        F: Future<Output = Result<T, A::Error>>,
        A: Handler<CallFailed<A::Error>>,
    {
        async move {
            let (conn, generation) = self.usable().inspect_err(|e| {
                metrics::backend_call(A::BACKEND, operation, None, Some(e.code()));
            })?;
            let work = start(conn).inspect_err(|e| {
                metrics::backend_call(A::BACKEND, operation, None, Some(e.code()));
            })?;
            let res = Self::timed(operation, deadline, work).await;
            if let Err(e) = &res {
                self.report(generation, e);
            }
            res
        }
    }

    /// `work` within `deadline` ([`DeadlineError::within`]), counted and timed in the metrics
    /// under `operation` with its error's code: the one place a backend call is measured, for
    /// [`Front::run`] and for a backend that runs its calls its own way (Redis's answers while
    /// down). A `map`, not an `async` block, for the same reason as `within`.
    pub fn timed<T>(
        operation: &'static str,
        deadline: Duration,
        work: impl Future<Output = Result<T, A::Error>>,
    ) -> impl Future<Output = Result<T, A::Error>> {
        let started = std::time::Instant::now();
        A::Error::within(deadline, work).map(move |res| {
            let code = res.as_ref().err().map(LinkError::code);
            metrics::backend_call(A::BACKEND, operation, Some(started.elapsed()), code);
            res
        })
    }

    /// Sends `msg` through the actor's mailbox and waits for the answer within the deadline
    /// plus [`DELIVERY_GRACE`]; `NotDelivered` once the actor has stopped.
    pub async fn send<M, T>(&self, msg: M) -> Result<T, A::Error>
    where
        M: Message<Result = Result<T, A::Error>> + Send + 'static,
        T: Send + 'static,
        A: Handler<M>,
    {
        call(
            self.actor(),
            A::BACKEND,
            msg,
            self.deadline + DELIVERY_GRACE,
        )
        .await?
    }

    /// The watchdog's round trip through the mailbox.
    pub async fn heartbeat(&self, deadline: Duration) -> Result<(), CallError> {
        call(self.actor(), A::BACKEND, Heartbeat, deadline).await
    }

    /// Asks the actor to let go of its connection and stop.
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), CallError> {
        call(self.actor(), A::BACKEND, Shutdown, deadline).await
    }
}

/// A backend's state shared by its actor (the only writer) and every handle, as [`Handle`]
/// needs to see it.
pub trait Shares: Send + Sync + 'static {
    type Actor: Supervised;
    /// What the operations need from the configuration, fixed at start.
    type Settings;

    fn front(&self) -> &Front<Self::Actor>;
    fn settings(&self) -> &Self::Settings;

    /// What to finish before the actor is asked to stop, within `deadline` (the bulk
    /// indexer's queue); nothing by default.
    fn before_shutdown(&self, deadline: Duration) -> impl Future<Output = ()> + Send {
        let _ = deadline;
        std::future::ready(())
    }
}

/// What callers hold of a backend actor (`RedisHandle`, `MongoHandle`, `SearchHandle`): the
/// state it shares with them. Cheap to clone (one atomic increment); `Send + Sync`. What every
/// backend's handle does is here; each backend adds its `call` (its operation trait) and its
/// typed helpers.
pub struct Handle<S> {
    pub(crate) shared: Arc<S>,
}

impl<S> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Handle {
            shared: self.shared.clone(),
        }
    }
}

impl<S: Shares> Handle<S> {
    /// The actor's address, for sending messages directly (`send` with a timeout, never
    /// `do_send`).
    pub fn addr(&self) -> &Addr<S::Actor> {
        self.shared.front().actor()
    }

    pub fn settings(&self) -> &S::Settings {
        self.shared.settings()
    }

    /// Sends a message through the actor's mailbox ([`Front::send`]: within the deadline plus
    /// a grace for a full mailbox), for what is not a request/response operation: the
    /// actor's own state (subscriptions), streams.
    pub async fn send<M, T>(&self, msg: M) -> Result<T, <S::Actor as Supervised>::Error>
    where
        M: Message<Result = Result<T, <S::Actor as Supervised>::Error>> + Send + 'static,
        T: Send + 'static,
        S::Actor: Handler<M>,
    {
        self.shared.front().send(msg).await
    }

    pub(crate) async fn heartbeat(&self, deadline: Duration) -> Result<(), CallError> {
        self.shared.front().heartbeat(deadline).await
    }

    /// Finishes what the backend holds ([`Shares::before_shutdown`], half the deadline at
    /// most), then stops the actor.
    pub(crate) async fn shutdown(&self, deadline: Duration) -> Result<(), CallError> {
        let _ = tokio::time::timeout(deadline / 2, self.shared.before_shutdown(deadline / 2)).await;
        self.shared.front().shutdown(deadline).await
    }
}

/// A backend's bootstrap runs (MongoDB's collections, Elasticsearch's templates and indices):
/// one at a time, whether it runs because the connection came up or because a message asked
/// for it, and the last report of a run that applied. A run asked for while another is in
/// flight waits for it, then finds what is left to do; the run at connect is skipped instead
/// (the one in flight does the work).
pub struct Bootstraps<R> {
    running: Arc<tokio::sync::Mutex<()>>,
    last: Arc<Mutex<Option<R>>>,
}

impl<R> Default for Bootstraps<R> {
    fn default() -> Self {
        Bootstraps {
            running: Arc::default(),
            last: Arc::new(Mutex::new(None)),
        }
    }
}

impl<R: Clone + Send + 'static> Bootstraps<R> {
    /// The last report of a run that applied, once one has.
    pub fn last(&self) -> Option<R> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A run asked for: `run` once no other is in flight. Unless it is a dry run, its report
    /// becomes the last one.
    pub fn exclusive<E, F>(
        &self,
        dry_run: bool,
        run: F,
    ) -> impl Future<Output = Result<R, E>> + use<R, E, F>
    where
        F: Future<Output = Result<R, E>>,
    {
        let (running, last) = (self.running.clone(), self.last.clone());
        async move {
            let _running = running.lock().await;
            let report = run.await?;
            if !dry_run {
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
            }
            Ok(report)
        }
    }

    /// The run at connect, spawned on the actor (it ends with the actor): skipped while a run
    /// is in flight, its report the last one, its failure handed to `failed` (an event:
    /// failures are reported, not fatal — the next time the backend comes up it runs again).
    pub fn at_connect<A, E>(
        &self,
        ctx: &mut Context<A>,
        run: impl Future<Output = Result<R, E>> + 'static,
        failed: impl FnOnce(E) + 'static,
    ) where
        A: Actor<Context = Context<A>>,
    {
        let Ok(running) = self.running.clone().try_lock_owned() else {
            return;
        };
        let last = self.last.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            let res = run.await;
            drop(running);
            match res {
                Ok(report) => *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report),
                Err(e) => failed(e),
            }
        }));
    }
}

/// Tries to connect again, if `generation` is still current.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Reconnect {
    pub generation: u64,
}

/// A call on connection `generation` failed in a way that says something about the
/// connection.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct CallFailed<E> {
    pub generation: u64,
    pub error: E,
}

/// Mirrors the state machine into what calls read and into the health registry.
///
/// The registry last: it is read on other threads than the actor's (`/health`, a probe's
/// `settled`, tests), so a transition's error, latency, events and call state are in place
/// before it shows the new state — whoever sees `backoff` there finds calls answered
/// `Unavailable`, the error and `backend.down`.
pub fn record<A: Supervised>(act: &A) {
    let link = act.link_ref();
    let published =
        Published::from_state(link.machine.state(), link.conn.as_ref(), link.generation);
    let front = act.front();
    *front
        .published
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = published;
    front.health.record(link.machine.snapshot());
}

/// `Actor::started`: the mailbox bound, the first connect, and the probe interval.
pub fn start<A: Supervised>(act: &mut A, ctx: &mut Context<A>) {
    let front = act.front();
    let (capacity, interval) = (front.mailbox_capacity, front.probe_interval);
    ctx.set_mailbox_capacity(capacity);
    record(act);
    spawn_connect(act, ctx);
    ctx.run_interval(interval, |act, ctx| probe(act, ctx));
}

fn spawn_connect<A: Supervised>(act: &mut A, ctx: &mut Context<A>) {
    let Some(connecting) = act.connect() else {
        return;
    };
    act.link().generation += 1;
    let generation = act.link_ref().generation;
    record(act);
    ctx.spawn(connecting.into_actor(act).map(move |res, act, ctx| {
        if act.link_ref().generation != generation {
            return;
        }
        match res {
            Ok((conn, latency)) => on_connected(act, conn, latency, ctx),
            Err(ConnectError::Invalid(reason)) => {
                act.link().machine.disable(reason);
                record(act);
            }
            Err(ConnectError::Failed(e)) => on_failure(act, generation, &e, ctx),
        }
    }));
}

fn on_connected<A: Supervised>(
    act: &mut A,
    conn: A::Conn,
    latency: Duration,
    ctx: &mut Context<A>,
) {
    match act.link().machine.connected(Instant::now()) {
        Ok(recovery) => {
            act.link().conn = Some(conn);
            // Before `record`: see there.
            act.front().health.latency(latency);
            recovery.report(A::BACKEND);
            record(act);
            act.on_up(ctx);
        }
        Err(e) => {
            tracing::error!(backend = %A::BACKEND, error = %e, "bug: unexpected connect result")
        }
    }
}

/// A connect, probe or call of connection `generation` failed: back off and reconnect.
pub fn on_failure<A: Supervised>(
    act: &mut A,
    generation: u64,
    err: &A::Error,
    ctx: &mut Context<A>,
) {
    if generation != act.link_ref().generation {
        return;
    }
    // Only Connecting or Up can fail; anything else is a late echo and changes nothing.
    let Ok(failure) = act
        .link()
        .machine
        .failed(Instant::now(), rand::random::<f64>())
    else {
        return;
    };
    let link = act.link();
    link.conn = None;
    link.generation += 1;
    let next = link.generation;
    act.on_lost(ctx);
    // Before `record`: see there.
    let message = err.to_string();
    act.front().health.error(err.code(), &message);
    failure.report(A::BACKEND, err.code(), &message);
    record(act);
    ctx.notify_later(Reconnect { generation: next }, failure.retry_in);
}

/// A round trip over the current connection unless one is already out.
pub fn probe<A: Supervised>(act: &mut A, ctx: &mut Context<A>) {
    let link = act.link_ref();
    if link.probe_in_flight || !link.machine.is_up() {
        return;
    }
    let Some(conn) = link.conn.clone() else {
        return;
    };
    let generation = link.generation;
    act.link().probe_in_flight = true;
    ctx.spawn(
        A::ping(conn, act.front().deadline)
            .into_actor(act)
            .map(move |res, act, ctx| {
                act.link().probe_in_flight = false;
                match res {
                    Ok(latency) if act.link_ref().generation == generation => {
                        let _ = act.link().machine.healthy(Instant::now());
                        act.front().health.latency(latency);
                    }
                    Ok(_) => {}
                    Err(e) => on_failure(act, generation, &e, ctx),
                }
            }),
    );
}

/// The `Reconnect` handler.
pub fn reconnect<A: Supervised>(act: &mut A, msg: Reconnect, ctx: &mut Context<A>) {
    if msg.generation != act.link_ref().generation {
        return;
    }
    let now = Instant::now();
    match act.link().machine.retry(now) {
        Ok(_) => spawn_connect(act, ctx),
        // The timer fired a hair early: wait out the rest.
        Err(_) => {
            if let Some(wait) = act.link_ref().machine.retry_in(now) {
                ctx.notify_later(msg, wait);
            }
        }
    }
}

/// The `CallFailed` handler: a lost connection means backoff now; a call that ran out of
/// time triggers a probe at once rather than at the next interval.
pub fn call_failed<A: Supervised>(act: &mut A, msg: CallFailed<A::Error>, ctx: &mut Context<A>) {
    if msg.error.connection_lost() {
        on_failure(act, msg.generation, &msg.error, ctx);
    } else if msg.generation == act.link_ref().generation {
        probe(act, ctx);
    }
}

/// For the `Shutdown` handler: disabled, the connection dropped and unpublished. The caller
/// closes what it holds and stops the actor.
pub fn disconnect<A: Supervised>(act: &mut A, ctx: &mut Context<A>) {
    let link = act.link();
    link.machine.disable("shutting down");
    link.generation += 1;
    link.conn = None;
    act.on_lost(ctx);
    record(act);
}

/// What every [`Supervised`] actor has the same, for `actor` with its connection type `conn`,
/// its error type `error`, and its operation trait `operations`:
/// - its `Actor` impl (started by [`start`]) and its [`Linked`] impl;
/// - the handler of its request/response operations: each message implementing the
///   operation trait runs through the handle's `call` on the actor's shared state, so the
///   mailbox and the handle answer alike;
/// - the handlers of `CallFailed`, `Reconnect` and `Heartbeat` (the watchdog's round trip);
/// - [`LinkError`] for its error, whose variants follow the backends' one pattern:
///   `Call(CallError)`, the shared call error, and `Connection { .. }`, the connection itself
///   failed.
///
/// `Shutdown` differs (what to close) and stays with the actor.
macro_rules! supervised_actor {
    (
        actor: $actor:ty,
        conn: $conn:ty,
        error: $error:ident,
        operations: $op:ident $(,)?
    ) => {
        impl $crate::supervisor::link::Linked for $actor {
            type Conn = $conn;

            fn link(&mut self) -> &mut $crate::supervisor::link::Link<$conn> {
                &mut self.link
            }

            fn link_ref(&self) -> &$crate::supervisor::link::Link<$conn> {
                &self.link
            }

            fn front(&self) -> &$crate::supervisor::link::Front<Self> {
                &self.shared.front
            }
        }

        impl $crate::supervisor::link::LinkError for $error {
            const BACKEND: $crate::supervisor::Backend =
                <$actor as $crate::supervisor::link::Supervised>::BACKEND;

            fn code(&self) -> &'static str {
                $error::code(self)
            }

            fn connection_lost(&self) -> bool {
                matches!(self, $error::Connection { .. })
            }

            fn as_call(&self) -> Option<&$crate::supervisor::CallError> {
                match self {
                    $error::Call(e) => Some(e),
                    _ => None,
                }
            }
        }

        impl actix::Actor for $actor {
            type Context = actix::Context<Self>;

            fn started(&mut self, ctx: &mut actix::Context<Self>) {
                $crate::supervisor::link::start(self, ctx);
            }
        }

        impl<M: $op> actix::Handler<M> for $actor {
            type Result = actix::ResponseFuture<Result<M::Output, $error>>;

            fn handle(&mut self, msg: M, _: &mut actix::Context<Self>) -> Self::Result {
                let handle = $crate::supervisor::link::Handle {
                    shared: self.shared.clone(),
                };
                Box::pin(async move { handle.call(msg).await })
            }
        }

        impl actix::Handler<$crate::supervisor::link::CallFailed<$error>> for $actor {
            type Result = ();

            fn handle(
                &mut self,
                msg: $crate::supervisor::link::CallFailed<$error>,
                ctx: &mut actix::Context<Self>,
            ) {
                $crate::supervisor::link::call_failed(self, msg, ctx);
            }
        }

        impl actix::Handler<$crate::supervisor::link::Reconnect> for $actor {
            type Result = ();

            fn handle(
                &mut self,
                msg: $crate::supervisor::link::Reconnect,
                ctx: &mut actix::Context<Self>,
            ) {
                $crate::supervisor::link::reconnect(self, msg, ctx);
            }
        }

        impl actix::Handler<$crate::supervisor::Heartbeat> for $actor {
            type Result = ();

            fn handle(&mut self, _: $crate::supervisor::Heartbeat, _: &mut actix::Context<Self>) {}
        }
    };
}
pub(crate) use supervised_actor;

#[cfg(test)]
mod tests {
    use super::*;

    /// A run asked for waits for the one in flight; a dry run's report does not replace the
    /// last one (paused time).
    #[tokio::test(start_paused = true)]
    async fn bootstrap_runs_go_one_at_a_time_and_keep_the_last_applied_report() {
        let runs: Bootstraps<u32> = Bootstraps::default();
        let steps = Arc::new(Mutex::new(Vec::new()));
        let run = |n: u32, takes: u64| {
            let steps = steps.clone();
            async move {
                steps.lock().expect("steps").push(("start", n));
                tokio::time::sleep(Duration::from_secs(takes)).await;
                steps.lock().expect("steps").push(("end", n));
                Ok::<_, ()>(n)
            }
        };
        let first = tokio::spawn(runs.exclusive(false, run(1, 10)));
        tokio::task::yield_now().await;
        let plan = tokio::spawn(runs.exclusive(true, run(2, 1)));
        assert_eq!(first.await.expect("join"), Ok(1));
        assert_eq!(plan.await.expect("join"), Ok(2));
        assert_eq!(
            *steps.lock().expect("steps"),
            [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
        );
        assert_eq!(runs.last(), Some(1), "the plan is not the last report");
        assert_eq!(runs.exclusive(false, run(3, 0)).await, Ok(3));
        assert_eq!(runs.last(), Some(3));
    }
}
