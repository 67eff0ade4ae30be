//! Supervision: the connection state machine, the backoff schedule and the call errors every
//! backend actor shares (docs/architecture.md, Supervision).
//!
//! actix's `Supervisor` neither waits nor catches panics, so each backend actor keeps a
//! [`Connection`] of its own: the shared connection-actor functions in [`link`] ask it what to
//! do on every connect result, probe and failed call, schedule the reconnect it returns with
//! `notify_later`, and mirror it into the [`crate::health::HealthRegistry`] and into what calls
//! read ([`Published`]). A backend supplies only how to connect and ping and what to do when
//! the connection comes up or is lost. "Backend down" is an error in a reply, never a reason
//! for an actor to stop.
//!
//! The imports run one way: this module reports into [`crate::health`] and [`crate::events`],
//! and neither of them names this module. The names all three share ([`Backend`],
//! [`StateLabel`]) live in the leaf `backend` module and are re-exported here; the registry
//! learns of a transition from a plain [`ConnSnapshot`] that [`Connection::snapshot`] fills in,
//! not from the state machine itself.

pub mod feed;
pub mod link;

use std::future::Future;
use std::time::Duration;

use actix::prelude::*;
use futures_util::FutureExt;
use tokio::time::Instant;

pub use crate::backend::{Backend, StateLabel};
use crate::config::SupervisorConfig;
use crate::health::ConnSnapshot;

/// The reconnect schedule. Exponential with full jitter: attempt `n` waits a uniformly random
/// time in `[0, min(cap, base * factor^(n-1)))`, so many daemons restarting together do not
/// reconnect in step. The attempt counter is forgiven only after `reset_after` of healthy
/// probes, never merely because a connect succeeded: a flapping backend keeps backing off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub factor: u32,
    pub cap: Duration,
    pub reset_after: Duration,
}

impl BackoffPolicy {
    pub fn from_config(c: &SupervisorConfig) -> Self {
        BackoffPolicy {
            base: c.backoff_base,
            factor: c.backoff_factor,
            cap: c.backoff_cap,
            reset_after: c.reset_after,
        }
    }

    /// The upper bound of attempt `attempt`'s delay (attempt 1 is the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(63);
        let mult = u64::from(self.factor).checked_pow(exp).unwrap_or(u64::MAX);
        let base_ms = self.base.as_millis().min(u128::from(u64::MAX)) as u64;
        let ceil_ms = base_ms.saturating_mul(mult);
        Duration::from_millis(ceil_ms).min(self.cap)
    }
}

/// The delay before retry `attempt`, given a jitter sample `unit` in `[0, 1)`. Pure: the
/// caller supplies the randomness, tests supply fixed samples.
///
/// The one retry schedule of the crate: reconnects here, and through [`retry_pause`] the
/// retries of single operations, each with its policy.
pub fn backoff(policy: &BackoffPolicy, attempt: u32, unit: f64) -> Duration {
    policy.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
}

/// The pause before retry `attempt` of one operation — an Elasticsearch bulk item the server
/// refused with 429 or 503, a Redis lock someone else holds —: the [`backoff`] schedule with
/// the jitter sample `unit` in `[0, 1)` taken to the upper half of the ceiling. Callers
/// refused together still come back spread out, but never at once: the server just said it
/// is overloaded, or the lock is taken. (A reconnect may start at once: nothing is waiting
/// on the other side.) Pure, like [`backoff`].
pub fn retry_pause(policy: &BackoffPolicy, attempt: u32, unit: f64) -> Duration {
    backoff(policy, attempt, 0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

/// Where a backend connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// A connect attempt is in flight (attempt 1 is the first).
    Connecting { attempt: u32 },
    /// Connected and answering probes since `since`.
    Up { since: Instant },
    /// Attempt `attempt` failed; the next one starts at `until`.
    Backoff { attempt: u32, until: Instant },
    /// Not managed: turned off in config, or the actor is shutting down.
    Disabled { reason: String },
}

impl ConnState {
    /// Short label for health output and the STATUS= line.
    pub fn label(&self) -> StateLabel {
        match self {
            ConnState::Connecting { .. } => StateLabel::Connecting,
            ConnState::Up { .. } => StateLabel::Up,
            ConnState::Backoff { .. } => StateLabel::Backoff,
            ConnState::Disabled { .. } => StateLabel::Disabled,
        }
    }
}

/// A transition the state machine refused: a bug in the actor, logged and ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection state machine: `{event}` is not allowed in state {from}")]
pub struct InvalidTransition {
    pub from: StateLabel,
    pub event: &'static str,
}

/// What [`Connection::failed`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The connection was up (or this is the first failure since start): report an outage.
    pub outage_began: bool,
    /// The attempt that failed; the next one is `attempt + 1`.
    pub attempt: u32,
    /// When to try again.
    pub retry_in: Duration,
}

impl Failure {
    /// The events every backend actor emits on a failure: `backend.down` once per outage, and
    /// `backend.retry_scheduled` (before the registry shows the new state: `link::record`).
    pub fn report(&self, backend: Backend, code: &'static str, message: &str) {
        if self.outage_began {
            crate::events::emit(crate::events::BackendDown {
                backend,
                code,
                error: crate::redact::text(message),
                attempt: self.attempt,
            });
        }
        crate::events::emit(crate::events::BackendRetryScheduled {
            backend,
            code,
            attempt: self.attempt + 1,
            retry_in_ms: self.retry_in.as_millis() as u64,
        });
    }
}

/// What [`Connection::connected`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// The attempt that succeeded.
    pub attempt: u32,
    /// How long the backend had been unavailable (zero on the first connect).
    pub down_for: Duration,
}

impl Recovery {
    /// `backend.up`, as every backend actor reports it.
    pub fn report(&self, backend: Backend) {
        crate::events::emit(crate::events::BackendUp {
            backend,
            attempt: self.attempt,
            down_ms: self.down_for.as_millis() as u64,
        });
    }
}

/// The connection state machine with its counters. Guarded: each method is allowed only in
/// the states its doc names and returns [`InvalidTransition`] otherwise.
#[derive(Debug, Clone)]
pub struct Connection {
    state: ConnState,
    policy: BackoffPolicy,
    /// Consecutive failed attempts not yet forgiven by a health signal.
    failures: u32,
    /// Times the connection was lost after having been up.
    restarts: u64,
    /// Since when the backend has been unavailable (None while up, or before the first try).
    down_since: Option<Instant>,
    /// Whether the current outage was reported (so `backend.down` fires once per outage).
    outage_reported: bool,
}

impl Connection {
    /// Starts in `Connecting { attempt: 1 }`.
    pub fn new(policy: BackoffPolicy, now: Instant) -> Self {
        Connection {
            state: ConnState::Connecting { attempt: 1 },
            policy,
            failures: 0,
            restarts: 0,
            down_since: Some(now),
            outage_reported: false,
        }
    }

    pub fn state(&self) -> &ConnState {
        &self.state
    }

    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// The attempt number for health output: the one in flight or next, 0 while up.
    pub fn attempt(&self) -> u32 {
        match self.state {
            ConnState::Connecting { attempt } => attempt,
            ConnState::Backoff { attempt, .. } => attempt + 1,
            ConnState::Up { .. } | ConnState::Disabled { .. } => 0,
        }
    }

    /// What the health registry shows of this connection (see the module doc for why it gets
    /// a copy and not the state machine).
    pub fn snapshot(&self) -> ConnSnapshot {
        ConnSnapshot {
            state: self.state.label(),
            attempt: self.attempt(),
            restarts: self.restarts,
            retry_at: match self.state {
                ConnState::Backoff { until, .. } => Some(until),
                _ => None,
            },
            reason: match &self.state {
                ConnState::Disabled { reason } => Some(reason.clone()),
                _ => None,
            },
        }
    }

    /// While in backoff: how long until the next attempt.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        match self.state {
            ConnState::Backoff { until, .. } => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, ConnState::Up { .. })
    }

    /// `Backoff` (once its time has come) → `Connecting`. Returns the attempt number.
    pub fn retry(&mut self, now: Instant) -> Result<u32, InvalidTransition> {
        match self.state {
            ConnState::Backoff { attempt, until } if now >= until => {
                let next = attempt + 1;
                self.state = ConnState::Connecting { attempt: next };
                Ok(next)
            }
            _ => Err(self.refuse("retry")),
        }
    }

    /// `Connecting` → `Up`.
    pub fn connected(&mut self, now: Instant) -> Result<Recovery, InvalidTransition> {
        let ConnState::Connecting { attempt } = self.state else {
            return Err(self.refuse("connected"));
        };
        let down_for = match self.down_since.take() {
            Some(since) if self.outage_reported => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        };
        self.outage_reported = false;
        self.state = ConnState::Up { since: now };
        Ok(Recovery { attempt, down_for })
    }

    /// A successful probe while `Up`: after `reset_after` of being up, the failure streak is
    /// forgiven and the next outage starts over at the base delay.
    pub fn healthy(&mut self, now: Instant) -> Result<(), InvalidTransition> {
        let ConnState::Up { since } = self.state else {
            return Err(self.refuse("healthy"));
        };
        if now.saturating_duration_since(since) >= self.policy.reset_after {
            self.failures = 0;
        }
        Ok(())
    }

    /// `Connecting` or `Up` → `Backoff`, with the delay drawn from `unit` (jitter in `[0,1)`).
    pub fn failed(&mut self, now: Instant, unit: f64) -> Result<Failure, InvalidTransition> {
        match self.state {
            ConnState::Connecting { .. } => {}
            ConnState::Up { .. } => {
                self.restarts += 1;
                self.down_since = Some(now);
            }
            _ => return Err(self.refuse("failed")),
        }
        self.failures = self.failures.saturating_add(1);
        let attempt = self.failures;
        let retry_in = backoff(&self.policy, attempt, unit);
        self.state = ConnState::Backoff {
            attempt,
            until: now + retry_in,
        };
        let outage_began = !self.outage_reported;
        self.outage_reported = true;
        if self.down_since.is_none() {
            self.down_since = Some(now);
        }
        Ok(Failure {
            outage_began,
            attempt,
            retry_in,
        })
    }

    /// Any state → `Disabled`.
    pub fn disable(&mut self, reason: impl Into<String>) {
        self.state = ConnState::Disabled {
            reason: reason.into(),
        };
    }

    fn refuse(&self, event: &'static str) -> InvalidTransition {
        InvalidTransition {
            from: self.state.label(),
            event,
        }
    }
}

/// Why a call did not get a backend's answer — shared by every backend actor's error enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The backend is not up; the actor answered at once instead of waiting.
    #[error("{backend} is unavailable{}", retry_hint(*.retry_in))]
    Unavailable {
        backend: Backend,
        retry_in: Option<Duration>,
    },
    /// The backend is turned off or the actor is shutting down.
    #[error("{backend} is disabled: {reason}")]
    Disabled { backend: Backend, reason: String },
    /// The backend did not answer within the call deadline.
    #[error("{backend} did not answer within {}", humantime::format_duration(*.after))]
    DeadlineExceeded { backend: Backend, after: Duration },
    /// The message never reached the actor, or its answer never came back: the mailbox
    /// stayed full past the deadline, or the actor has stopped.
    #[error("{backend} actor did not take the request: {reason}")]
    NotDelivered {
        backend: Backend,
        reason: &'static str,
    },
}

fn retry_hint(retry_in: Option<Duration>) -> String {
    match retry_in {
        Some(d) => format!(", next attempt in {} ms", d.as_millis()),
        None => ", connecting".to_owned(),
    }
}

impl CallError {
    /// Low-cardinality code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Unavailable { .. } => "unavailable",
            CallError::Disabled { .. } => "disabled",
            CallError::DeadlineExceeded { .. } => "deadline_exceeded",
            CallError::NotDelivered { .. } => "not_delivered",
        }
    }

    /// Whether the actor has stopped (its mailbox is closed), as opposed to not answering in
    /// time.
    pub fn actor_stopped(&self) -> bool {
        matches!(self, CallError::NotDelivered { reason, .. } if *reason == ACTOR_STOPPED)
    }
}

/// Why a message to a stopped actor was not delivered.
const ACTOR_STOPPED: &str = "actor has stopped";

/// How much longer than the call deadline a caller waits for the answer to a message sent
/// through an actor's mailbox: the work runs within the deadline, the grace covers the wait
/// for a place in a full mailbox and the way back. Every actor's `send` uses it.
pub const DELIVERY_GRACE: Duration = Duration::from_millis(250);

/// An actor's error that can say "no answer within the deadline", and with it the one
/// deadline helper every actor uses, [`DeadlineError::within`]. The backend errors have it
/// through [`link::LinkError`] (their `Call(DeadlineExceeded)`); another actor's error says
/// it in its own variant.
pub trait DeadlineError: Sized {
    /// The error for work that had no answer within `after`.
    fn deadline_exceeded(after: Duration) -> Self;

    /// `fut`, or [`DeadlineError::deadline_exceeded`] once `deadline` has passed (written
    /// `RedisError::within(deadline, fut)`: the error type names whose deadline it is).
    ///
    /// (A `map` of tokio's `Timeout`, not an `async` block: on the calls' hot path it adds no
    /// state machine that would hold `fut` twice and move it again.)
    fn within<T>(
        deadline: Duration,
        fut: impl Future<Output = Result<T, Self>>,
    ) -> impl Future<Output = Result<T, Self>> {
        tokio::time::timeout(deadline, fut)
            .map(move |res| res.unwrap_or_else(|_| Err(Self::deadline_exceeded(deadline))))
    }
}

/// Sends `msg` and waits for the answer at most `deadline`: the bounded mailbox makes `send`
/// wait for room, so a full mailbox turns into an error the caller sees, never an unbounded
/// queue (`do_send` would ignore the bound).
pub async fn call<A, M>(
    addr: &Addr<A>,
    backend: Backend,
    msg: M,
    deadline: Duration,
) -> Result<M::Result, CallError>
where
    A: Actor + Handler<M>,
    A::Context: actix::dev::ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    addr.send(msg)
        .timeout(deadline)
        .await
        .map_err(|e| not_delivered(backend, e))
}

/// A mailbox error as the caller sees it.
pub fn not_delivered(backend: Backend, e: MailboxError) -> CallError {
    CallError::NotDelivered {
        backend,
        reason: match e {
            MailboxError::Timeout => "no answer within the deadline (mailbox full or actor busy)",
            MailboxError::Closed => ACTOR_STOPPED,
        },
    }
}

/// What a backend actor publishes for calls that bypass its mailbox: the live connection
/// (any cheaply cloned driver handle) and its generation while up, otherwise the answer to
/// give at once. The actor is the only writer; callers read it under an `RwLock`.
pub enum Published<C> {
    Up { conn: C, generation: u64 },
    Connecting,
    Backoff { retry_at: Instant },
    Disabled { reason: String },
}

impl<C: Clone> Published<C> {
    /// The state machine's state with the actor's connection, as callers should see it.
    pub fn from_state(state: &ConnState, conn: Option<&C>, generation: u64) -> Self {
        match (state, conn) {
            (ConnState::Up { .. }, Some(conn)) => Published::Up {
                conn: conn.clone(),
                generation,
            },
            (ConnState::Backoff { until, .. }, _) => Published::Backoff { retry_at: *until },
            (ConnState::Disabled { reason }, _) => Published::Disabled {
                reason: reason.clone(),
            },
            _ => Published::Connecting,
        }
    }

    /// The connection for a call and its generation, or the error to answer with at once.
    pub fn usable(&self, backend: Backend) -> Result<(C, u64), CallError> {
        match self {
            Published::Up { conn, generation } => Ok((conn.clone(), *generation)),
            Published::Connecting => Err(CallError::Unavailable {
                backend,
                retry_in: None,
            }),
            Published::Backoff { retry_at } => Err(CallError::Unavailable {
                backend,
                retry_in: Some(retry_at.saturating_duration_since(Instant::now())),
            }),
            Published::Disabled { reason } => Err(CallError::Disabled {
                backend,
                reason: reason.clone(),
            }),
        }
    }
}

/// Answers at once: the watchdog sends it to prove the actor's event loop is turning.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Heartbeat;

/// Closes the backend connection and stops the actor; answered once the actor has let go.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            base: Duration::from_millis(250),
            factor: 2,
            cap: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn ceiling_table() {
        let p = policy();
        let table = [
            (0, 250),
            (1, 250),
            (2, 500),
            (3, 1_000),
            (4, 2_000),
            (5, 4_000),
            (6, 8_000),
            (7, 16_000),
            (8, 30_000),
            (9, 30_000),
            (64, 30_000),
            (u32::MAX, 30_000),
        ];
        for (attempt, ms) in table {
            assert_eq!(
                p.ceiling(attempt),
                Duration::from_millis(ms),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn backoff_is_full_jitter_below_the_ceiling() {
        let p = policy();
        let table = [
            (1, 0.0, 0),
            (1, 0.5, 125),
            (3, 0.25, 250),
            (8, 0.5, 15_000),
            (20, 0.999, 29_970),
            // samples outside [0, 1] are clamped, never beyond the cap
            (20, 7.0, 30_000),
            (2, -1.0, 0),
        ];
        for (attempt, unit, ms) in table {
            assert_eq!(
                backoff(&p, attempt, unit),
                Duration::from_millis(ms),
                "attempt {attempt} unit {unit}"
            );
        }
        let flat = BackoffPolicy { factor: 1, ..p };
        assert_eq!(flat.ceiling(10), Duration::from_millis(250));
    }

    #[test]
    fn a_retry_pause_is_in_the_upper_half_of_the_ceiling() {
        let p = policy();
        let table = [
            (1, 0.0, 125),
            (1, 0.5, 187),
            (1, 0.999, 249),
            (3, 0.0, 500),
            (3, 0.5, 750),
            (20, 0.0, 15_000),
            (20, 1.0, 30_000),
            // samples outside [0, 1] are clamped
            (2, -3.0, 250),
            (2, 9.0, 500),
        ];
        for (attempt, unit, ms) in table {
            assert_eq!(
                retry_pause(&p, attempt, unit).as_millis(),
                ms,
                "attempt {attempt} unit {unit}"
            );
        }
    }

    /// The one deadline helper: the work's own answer when it comes in time, else the error's
    /// `deadline_exceeded` once the deadline has passed (paused time).
    #[tokio::test(start_paused = true)]
    async fn within_answers_in_time_or_deadline_exceeded_at_the_deadline() {
        #[derive(Debug, PartialEq)]
        enum Late {
            After(Duration),
            Refused,
        }
        impl DeadlineError for Late {
            fn deadline_exceeded(after: Duration) -> Self {
                Late::After(after)
            }
        }
        let deadline = Duration::from_secs(5);
        let work = |takes: u64| async move {
            tokio::time::sleep(Duration::from_secs(takes)).await;
            Ok::<_, Late>(takes)
        };
        assert_eq!(Late::within(deadline, work(4)).await, Ok(4));
        let refused = async { Err::<u64, _>(Late::Refused) };
        assert_eq!(Late::within(deadline, refused).await, Err(Late::Refused));
        let started = Instant::now();
        assert_eq!(
            Late::within(deadline, work(6)).await,
            Err(Late::After(deadline))
        );
        assert_eq!(started.elapsed(), deadline, "given up at the deadline");
    }

    #[test]
    fn guarded_transitions() {
        let now = Instant::now();
        let mut c = Connection::new(policy(), now);
        assert_eq!(c.healthy(now).unwrap_err().event, "healthy");
        assert_eq!(c.retry(now).unwrap_err().from, StateLabel::Connecting);
        c.connected(now).expect("connecting -> up");
        assert_eq!(c.connected(now).unwrap_err().from, StateLabel::Up);
        c.failed(now, 0.5).expect("up -> backoff");
        assert_eq!(c.failed(now, 0.5).unwrap_err().from, StateLabel::Backoff);
        c.disable("shutting down");
        assert_eq!(
            c.retry(now + Duration::from_secs(60)).unwrap_err().from,
            StateLabel::Disabled
        );
        assert_eq!(c.state().label(), StateLabel::Disabled);
    }

    /// The whole schedule, driven by paused tokio time: retries escalate to the cap, a short
    /// spell of being up does not reset them, 60 s of healthy probes does.
    #[tokio::test(start_paused = true)]
    async fn schedule_under_paused_time() {
        let p = policy();
        let start = Instant::now();
        let mut c = Connection::new(p, start);
        let mut delays = Vec::new();
        // The first connect fails: an outage begins, reported once.
        let f = c.failed(Instant::now(), 0.999).expect("fail");
        assert!(f.outage_began);
        delays.push(f.retry_in);
        for _ in 0..9 {
            let wait = c.retry_in(Instant::now()).expect("in backoff");
            // not yet: a retry before `until` is refused
            if !wait.is_zero() {
                assert!(c.retry(Instant::now()).is_err());
            }
            tokio::time::advance(wait).await;
            c.retry(Instant::now()).expect("retry due");
            let f = c.failed(Instant::now(), 0.999).expect("fail");
            assert!(!f.outage_began, "one report per outage");
            delays.push(f.retry_in);
        }
        let want: Vec<Duration> = (1..=10).map(|a| p.ceiling(a).mul_f64(0.999)).collect();
        assert_eq!(delays, want);
        assert_eq!(
            *delays.last().expect("delay"),
            Duration::from_secs(30).mul_f64(0.999)
        );

        // It comes back: up, with the outage's length.
        tokio::time::advance(c.retry_in(Instant::now()).expect("backoff")).await;
        let attempt = c.retry(Instant::now()).expect("retry");
        assert_eq!(attempt, 11);
        let rec = c.connected(Instant::now()).expect("up");
        assert_eq!(rec.down_for, Instant::now() - start);
        assert_eq!(c.attempt(), 0);

        // Up for only 10 s, then lost: the streak continues at the cap.
        tokio::time::advance(Duration::from_secs(10)).await;
        c.healthy(Instant::now()).expect("probe ok");
        let f = c.failed(Instant::now(), 0.999).expect("lost");
        assert!(f.outage_began);
        assert_eq!(f.retry_in, p.cap.mul_f64(0.999));
        assert_eq!(c.restarts(), 1);

        // Back, and healthy for 60 s: the next outage starts over at the base delay.
        tokio::time::advance(f.retry_in).await;
        c.retry(Instant::now()).expect("retry");
        c.connected(Instant::now()).expect("up");
        tokio::time::advance(Duration::from_secs(60)).await;
        c.healthy(Instant::now()).expect("probe ok");
        let f = c.failed(Instant::now(), 0.999).expect("lost again");
        assert_eq!(f.attempt, 1);
        assert_eq!(f.retry_in, p.base.mul_f64(0.999));
        assert_eq!(c.restarts(), 2);
    }

    /// The registry shows what the state machine decided: [`Connection::snapshot`] carries
    /// everything `/health` and `/ready` report.
    #[tokio::test]
    async fn health_entries_follow_the_state_machine() {
        let reg = crate::health::HealthRegistry::new();
        let mut rx = reg.subscribe();
        let entry = reg.register(Backend::Redis, true);
        let policy = BackoffPolicy {
            base: Duration::from_millis(100),
            factor: 2,
            cap: Duration::from_secs(1),
            reset_after: Duration::from_secs(60),
        };
        let mut conn = Connection::new(policy, Instant::now());
        assert!(reg.readiness().is_err());

        conn.connected(Instant::now()).expect("up");
        entry.record(conn.snapshot());
        entry.latency(Duration::from_micros(1500));
        assert!(rx.has_changed().expect("sender alive"));
        rx.mark_unchanged();
        assert_eq!(reg.readiness(), Ok(()));
        let snap = reg.snapshot();
        assert_eq!(snap[0].state, StateLabel::Up);
        assert_eq!(snap[0].latency_ms, Some(1.5));
        assert_eq!(reg.summary(), "redis up");

        conn.failed(Instant::now(), 0.5).expect("down");
        entry.record(conn.snapshot());
        entry.error("connection_refused", "cannot reach redis://:pw@h:1");
        assert!(rx.has_changed().expect("sender alive"));
        let snap = reg.snapshot();
        assert_eq!(snap[0].state, StateLabel::Backoff);
        assert_eq!(snap[0].attempt, 2);
        assert!(snap[0].retry_in_ms.is_some_and(|ms| ms <= 100));
        assert_eq!(
            snap[0].last_error.as_ref().map(|e| e.message.as_str()),
            Some("cannot reach redis://:***@h:1")
        );
        let reasons = reg.readiness().expect_err("required backend down");
        assert!(
            reasons[0].starts_with("redis backoff (connection_refused), retry 2 in"),
            "{reasons:?}"
        );

        // optional backends, and those that cannot run, do not hold readiness back
        let _mongo = reg.register(Backend::Mongodb, false);
        reg.register_disabled(Backend::Elasticsearch, "templates: broken file");
        assert_eq!(reg.readiness().expect_err("redis still down").len(), 1);
        let es = reg
            .snapshot()
            .into_iter()
            .find(|s| s.backend == Backend::Elasticsearch)
            .expect("listed");
        assert_eq!(es.state, StateLabel::Disabled);
        assert!(
            !es.required
                && es
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("templates"))
        );

        // a latency update alone does not wake STATUS= writers
        rx.mark_unchanged();
        entry.latency(Duration::from_millis(2));
        assert!(!rx.has_changed().expect("sender alive"));
    }
}
