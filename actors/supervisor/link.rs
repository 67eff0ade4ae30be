//! The connection actor every backend shares: connect under backoff, probe on an interval,
//! react to failed calls, publish the connection for calls, stop cleanly.
//!
//! A backend actor holds a [`Link`] and implements [`Supervised`] — how to open a connection,
//! how to time a round trip, and what to do when the connection comes up or is lost (the
//! bootstrap, pub/sub) — and its `Actor::started` and handlers for [`Reconnect`],
//! [`CallFailed`], [`Heartbeat`](super::Heartbeat) and [`Shutdown`](super::Shutdown) call the
//! functions here. The decisions stay in the [`Connection`] state machine; this is the
//! plumbing around it that would otherwise be written once per backend.

use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;
use std::time::Duration;

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::prelude::*;
use tokio::time::Instant;

use super::{Backend, Connection, Published};
use crate::health::HealthEntry;

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

/// A backend's connection error, as supervision needs to see it.
pub trait LinkError: std::fmt::Display + Clone + Send + 'static {
    /// Low-cardinality code for the health entry and the events.
    fn code(&self) -> &'static str;
    /// The connection itself failed (reconnect now), as opposed to one slow call (probe).
    fn connection_lost(&self) -> bool;
}

/// What differs between the backend actors; see the module doc.
pub trait Supervised: Actor<Context = Context<Self>> + Handler<Reconnect> {
    /// The cheaply cloned driver handle calls run on.
    type Conn: Clone + 'static;
    type Error: LinkError;
    const BACKEND: Backend;

    fn link(&mut self) -> &mut Link<Self::Conn>;
    fn link_ref(&self) -> &Link<Self::Conn>;
    fn health(&self) -> &HealthEntry;
    /// Where calls read the connection.
    fn published(&self) -> &RwLock<Published<Self::Conn>>;
    fn deadline(&self) -> Duration;

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
    pub fn new(machine: Connection) -> Self {
        Link {
            machine,
            conn: None,
            generation: 0,
            probe_in_flight: false,
        }
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
    *act.published()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = published;
    act.health().record(link.machine.snapshot());
}

/// `Actor::started`: the mailbox bound, the first connect, and the probe interval.
pub fn start<A: Supervised>(
    act: &mut A,
    ctx: &mut Context<A>,
    mailbox_capacity: usize,
    probe_interval: Duration,
) {
    ctx.set_mailbox_capacity(mailbox_capacity);
    record(act);
    spawn_connect(act, ctx);
    ctx.run_interval(probe_interval, |act, ctx| probe(act, ctx));
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
            act.health().latency(latency);
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
    act.health().error(err.code(), &message);
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
        A::ping(conn, act.deadline())
            .into_actor(act)
            .map(move |res, act, ctx| {
                act.link().probe_in_flight = false;
                match res {
                    Ok(latency) if act.link_ref().generation == generation => {
                        let _ = act.link().machine.healthy(Instant::now());
                        act.health().latency(latency);
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

/// The handlers every [`Supervised`] actor has the same: `CallFailed`, `Reconnect` and
/// `Heartbeat` (the watchdog's round trip). `Shutdown` differs (what to close) and stays with
/// the actor.
macro_rules! supervised_handlers {
    ($actor:ty, $error:ty) => {
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
pub(crate) use supervised_handlers;
