//! The scheduler actor: runs the jobs `[scheduler]` configures — backups, their verification
//! and retention, the index lifecycle, volume usage and maintenance, a health summary — on
//! their cron schedules, records every run, never runs a job twice at once, catches up a run
//! missed while the daemon was down, and keeps a wrong clock from spoiling time-based work.
//!
//! Part `scheduler`: only the daemon runs it (`Roles::DAEMON`); the CLI and an embedding
//! sibling never do, so no second cron ever runs. `lucid-db schedule run JOB` starts one with
//! its triggers off, to run one job by hand while no daemon runs.
//!
//! # How a run comes about
//!
//! - **Triggers** (`trigger`): tokio-cron-scheduler on a thread and runtime of its own. A
//!   trigger only `try_send`s a [`Tick`] to this actor; a full mailbox drops it, counted
//!   (`job.tick_dropped`).
//! - **Slots** ([`slots`]): a tick carries no time. The actor reads its [`Clock`] and derives
//!   the tick's slot from the job's cron schedule; a slot runs at most once, an earlier slot
//!   than the last one handled (the clock went back) is recorded as skipped and never run
//!   again, and slots passed over (the clock jumped forward) are counted in the run that
//!   stands for them.
//! - **No overlap**: a tick for a job whose run has not ended is skipped and recorded as
//!   skipped. (The backup lock still keeps a CLI's backup and the daemon's apart.)
//! - **Catch-up**: at start, a job whose newest slot passed while the daemon was not running
//!   runs once (`job.caught_up`), however long the gap — as systemd timers' `Persistent=true`.
//! - **A clock to trust**: `backup`, `retention` and `lifecycle` start their work only once
//!   the clock can be trusted — the system says it is synchronised
//!   ([`crate::backup::retention::clock_synchronised`]) and it reads no earlier than the
//!   newest run record — and say so meanwhile (`job.waiting`); scheduled runs wait, a run by
//!   hand does not.
//! - **Jitter**: `scheduler.jitter.<job>` delays each scheduled run by a random time below it.
//!
//! Each job's work is one message to the actor that owns it ([`work`]). Every run — scheduled,
//! caught up, by hand, or skipped — is recorded in `state_dir/scheduler/runs/` ([`records`]),
//! written before the next message is handled. The state directory's `locks/scheduler.lock`
//! is held while the actor runs, so two processes never write the records or run the jobs at
//! once: a `schedule run` in the CLI is refused while the daemon runs.
//!
//! Operator doc: docs/scheduler.md.

pub mod job;
pub mod records;
pub mod slots;
mod trigger;
pub mod work;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::time::Instant;

use crate::backup::lock::{LockError, RunLock};
use crate::backup::manifest::rfc3339;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::events::{
    self, JobCaughtUp, JobCompleted, JobFailed, JobHistorySetAside, JobSkipped, JobStarted,
    JobWaiting,
};
use crate::state::{StateDir, StateError};
use crate::threads::ActorThread;

pub use job::{JobName, JobSpec, Schedule, UnknownJob, check_config};
pub use records::{RecordsError, RunOutcome, RunRecord, RunTrigger};
pub use slots::ClockDoubt;
pub use work::{BackedUpIndices, Peers};

use slots::TickDecision;

// ---------------------------------------------------------------------------------------------
// Messages

/// A trigger fired for `job`. It carries no time: the actor reads its clock and derives the
/// slot. Triggers send it with `try_send` and never wait.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Tick {
    pub job: JobName,
}

/// Runs `job` now, by hand, without waiting for the clock or a jitter; answers its record
/// once it ended. A job that fails is an `Ok` whose record says so; `Err` only when it could
/// not run at all (it runs already, or another process holds the scheduler).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<RunRecord, SchedulerError>")]
pub struct RunJob {
    pub job: JobName,
}

/// A job's recorded runs, oldest first.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<RunRecord>")]
pub struct History {
    pub job: JobName,
}

/// Every job: its schedule, next slot, last run, and the run in progress.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<JobStatus>")]
pub struct ListJobs;

/// The scheduler's counters.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "SchedulerStats")]
pub struct GetStats;

/// One job, as `schedule ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub job: JobName,
    /// As configured; `None`: the job is off.
    pub schedule: Option<String>,
    pub jitter_ms: u64,
    #[serde(with = "rfc3339::option")]
    pub next: Option<DateTime<Utc>>,
    pub last: Option<RunRecord>,
    /// The run in progress, when the scheduler answering is the one that runs it.
    pub running: Option<Running>,
}

/// A run that has not ended.
#[derive(Debug, Clone, Serialize)]
pub struct Running {
    pub run_id: String,
    pub trigger: RunTrigger,
    #[serde(with = "rfc3339::option")]
    pub slot: Option<DateTime<Utc>>,
    #[serde(with = "rfc3339")]
    pub since: DateTime<Utc>,
    /// What it waits for before its work starts: `clock_unsynchronised`, `clock_behind`,
    /// `jitter`; `None` once the work runs.
    pub waiting: Option<&'static str>,
}

/// Each job's status from its spec and last record alone: what `schedule ls` shows from the
/// record files (no run in progress is known there).
pub fn statuses(
    specs: &[JobSpec],
    last: impl Fn(JobName) -> Option<RunRecord>,
    now: DateTime<Utc>,
) -> Vec<JobStatus> {
    specs
        .iter()
        .map(|spec| JobStatus {
            job: spec.name,
            schedule: spec.schedule.as_ref().map(|s| s.as_configured().to_owned()),
            jitter_ms: spec.jitter.as_millis() as u64,
            next: spec.schedule.as_ref().and_then(|s| s.next_after(now)),
            last: last(spec.name),
            running: None,
        })
        .collect()
}

/// What the scheduler has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SchedulerStats {
    /// Ticks received.
    pub ticks: u64,
    /// Ticks the triggers dropped on a full mailbox.
    pub ticks_dropped: u64,
    /// Runs ended (ok, failed or skipped by the work itself).
    pub runs: u64,
    pub failed: u64,
    /// Runs not started (overlap, clock went back).
    pub skipped: u64,
    pub caught_up: u64,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a job could not be run by hand.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SchedulerError {
    /// The job's previous run has not ended (it never runs twice at once).
    #[error("job {job} is running already (run {run_id}, since {since})")]
    Busy {
        job: JobName,
        run_id: String,
        since: String,
    },
    /// Another process runs the scheduler: the daemon (or another `schedule run`).
    #[error(
        "another process runs the scheduler ({holder}; lock {path}): while the daemon runs, \
         jobs are run through it"
    )]
    Elsewhere { holder: String, path: String },
    #[error(transparent)]
    State(StateError),
    #[error("the scheduler actor did not take the request: it has stopped")]
    NotDelivered,
}

impl SchedulerError {
    pub fn code(&self) -> &'static str {
        match self {
            SchedulerError::Busy { .. } => "busy",
            SchedulerError::Elsewhere { .. } => "scheduler_elsewhere",
            SchedulerError::State(e) => e.code(),
            SchedulerError::NotDelivered => "not_delivered",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handle

/// What callers hold; `Send + Sync + Clone`.
#[derive(Clone)]
pub struct SchedulerHandle {
    addr: Addr<SchedulerActor>,
}

impl SchedulerHandle {
    pub fn addr(&self) -> &Addr<SchedulerActor> {
        &self.addr
    }

    /// Runs `job` by hand and waits for its record ([`RunJob`]).
    pub async fn run(&self, job: JobName) -> Result<RunRecord, SchedulerError> {
        self.addr
            .send(RunJob { job })
            .await
            .unwrap_or(Err(SchedulerError::NotDelivered))
    }

    /// Sends `job`'s tick as a trigger does: without waiting; `false` when the mailbox was
    /// full (the tick is dropped).
    pub fn tick(&self, job: JobName) -> bool {
        self.addr.try_send(Tick { job }).is_ok()
    }

    pub async fn history(&self, job: JobName) -> Result<Vec<RunRecord>, SchedulerError> {
        self.addr
            .send(History { job })
            .await
            .map_err(|_| SchedulerError::NotDelivered)
    }

    pub async fn jobs(&self) -> Result<Vec<JobStatus>, SchedulerError> {
        self.addr
            .send(ListJobs)
            .await
            .map_err(|_| SchedulerError::NotDelivered)
    }

    pub async fn stats(&self) -> Result<SchedulerStats, SchedulerError> {
        self.addr
            .send(GetStats)
            .await
            .map_err(|_| SchedulerError::NotDelivered)
    }
}

// ---------------------------------------------------------------------------------------------
// Options

/// How a scheduler runs: the daemon's ([`Options::daemon`]), the CLI's ([`Options::manual`]),
/// or a test's.
#[derive(Clone)]
pub struct Options {
    /// Where the slots' "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// Whether the system says its clock is synchronised.
    pub synchronised: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Start the cron triggers.
    pub triggers: bool,
    /// Catch up, at start, a slot missed while no scheduler ran.
    pub catch_up: bool,
    /// How often a run waiting for a trusted clock looks again.
    pub clock_poll: Duration,
    /// How often the backup job asks how its backup is doing.
    pub backup_poll: Duration,
    /// How often the daemon's scheduler tries again for a scheduler lock another process holds.
    pub lock_retry: Duration,
}

impl Options {
    /// The daemon's: the system clock, timesyncd's word on it, triggers and catch-up.
    pub fn daemon() -> Options {
        Options {
            clock: Arc::new(SystemClock),
            synchronised: Arc::new(crate::backup::retention::clock_synchronised),
            triggers: true,
            catch_up: true,
            clock_poll: Duration::from_secs(10),
            backup_poll: Duration::from_secs(1),
            lock_retry: Duration::from_secs(10),
        }
    }

    /// `schedule run` in the CLI: no triggers, no catch-up; jobs run only by hand.
    pub fn manual() -> Options {
        Options {
            triggers: false,
            catch_up: false,
            ..Options::daemon()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State

/// How long a lifecycle run may take: force-merges of large indices take hours on a Pi; each
/// request in it still has its own deadline.
const LIFECYCLE_DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// The scheduler lock, and the records it guards.
enum Lock {
    /// Not tried yet.
    Pending,
    /// Held until the actor is dropped.
    Held {
        _lock: RunLock,
    },
    /// Another process holds it.
    Elsewhere {
        holder: String,
        path: String,
    },
    Unusable(StateError),
}

/// Where a run is before its work ends.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a clock to trust.
    Waiting(ClockDoubt),
    /// Waiting out its jitter.
    Jitter,
    Working {
        started: DateTime<Utc>,
        at: Instant,
    },
}

struct InFlight {
    run_id: String,
    trigger: RunTrigger,
    slot: Option<DateTime<Utc>>,
    missed: u64,
    since: DateTime<Utc>,
    phase: Phase,
    /// The caller of a run by hand.
    reply: Option<tokio::sync::oneshot::Sender<RunRecord>>,
}

struct JobState {
    spec: JobSpec,
    /// Oldest first, at most [`records::KEEP`].
    runs: VecDeque<RunRecord>,
    /// The newest slot handled (run, caught up or skipped): a slot runs at most once.
    last_slot: Option<DateTime<Utc>>,
    /// The newest earlier slot reported as skipped after the clock went back (reported once).
    reported_back: Option<DateTime<Utc>>,
    in_flight: Option<InFlight>,
}

impl JobState {
    fn new(spec: JobSpec, runs: VecDeque<RunRecord>) -> JobState {
        let last_slot = runs
            .iter()
            .filter(|r| r.trigger != RunTrigger::Manual)
            .filter_map(|r| r.slot)
            .max();
        JobState {
            spec,
            runs,
            last_slot,
            reported_back: None,
            in_flight: None,
        }
    }
}

/// What loading found, off the event loop.
struct Loaded {
    lock: Result<RunLock, LockError>,
    runs: Vec<(JobName, VecDeque<RunRecord>, Option<records::SetAside>)>,
}

/// See the module doc.
pub struct SchedulerActor {
    peers: Peers,
    options: Options,
    settings: work::Settings,
    state: StateDir,
    lock: Lock,
    jobs: BTreeMap<JobName, JobState>,
    triggers: Option<trigger::Triggers>,
    /// Shared with the triggers' thread, which counts what it drops.
    dropped: Arc<AtomicU64>,
    stats: SchedulerStats,
    clock_poll: Option<SpawnHandle>,
    mailbox_capacity: usize,
}

impl SchedulerActor {
    /// Starts the scheduler on a thread of its own (`lucid-sched`, tied to the current
    /// arbiter) with the jobs `config` sets. The configuration was checked at load
    /// ([`check_config`]); a job whose schedule is refused anyway is logged and left off.
    pub fn start_with(config: &Config, peers: Peers, options: Options) -> SchedulerHandle {
        let specs = JobName::ALL
            .into_iter()
            .map(|name| {
                job::spec(&config.scheduler, name).unwrap_or_else(|errors| {
                    for e in errors {
                        tracing::error!(key = %e.key, error = %e.reason, "job left off");
                    }
                    JobSpec {
                        name,
                        schedule: None,
                        jitter: Duration::ZERO,
                    }
                })
            })
            .collect();
        SchedulerActor::start_specs(config, specs, peers, options)
    }

    /// As [`SchedulerActor::start_with`], with the jobs given.
    pub(crate) fn start_specs(
        config: &Config,
        specs: Vec<JobSpec>,
        peers: Peers,
        options: Options,
    ) -> SchedulerHandle {
        let actor = SchedulerActor::new(config, specs, peers, options);
        SchedulerHandle {
            addr: ActorThread::start("lucid-sched").start_actor(move |_| actor),
        }
    }

    fn new(config: &Config, specs: Vec<JobSpec>, peers: Peers, options: Options) -> Self {
        SchedulerActor {
            peers,
            settings: work::Settings {
                min_level: crate::backup::prune::min_level(&config.backup),
                backup_poll: options.backup_poll,
                lifecycle_deadline: LIFECYCLE_DEADLINE,
            },
            options,
            state: StateDir::new(&config.state_dir),
            lock: Lock::Pending,
            jobs: specs
                .into_iter()
                .map(|spec| (spec.name, JobState::new(spec, VecDeque::new())))
                .collect(),
            triggers: None,
            dropped: Arc::default(),
            stats: SchedulerStats::default(),
            clock_poll: None,
            mailbox_capacity: config.supervisor.mailbox_capacity,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.options.clock.now()
    }

    fn ready(&self) -> bool {
        matches!(self.lock, Lock::Held { .. })
    }

    /// Takes the scheduler lock and reads the records, holding every message back meanwhile.
    fn load(&mut self, ctx: &mut Context<Self>) {
        let state = self.state.clone();
        let now = self.now();
        let work = tokio::task::spawn_blocking(move || {
            state.ensure()?;
            let lock = RunLock::try_acquire(&state.lock_file("scheduler"));
            if lock.is_err() {
                return Ok(Loaded {
                    lock,
                    runs: Vec::new(),
                });
            }
            let dir = state.scheduler_runs();
            let runs = JobName::ALL
                .into_iter()
                .map(|job| match records::load(&dir, job, now) {
                    Ok((runs, set_aside)) => (job, runs, set_aside),
                    // Unreadable (permissions): start empty, as with a corrupt file.
                    Err(error) => (
                        job,
                        VecDeque::new(),
                        Some(records::SetAside {
                            job,
                            moved_to: None,
                            error,
                        }),
                    ),
                })
                .collect();
            Ok(Loaded { lock, runs })
        });
        ctx.wait(
            async move {
                match work.await {
                    Ok(res) => res,
                    Err(e) => Err(StateError::Unusable {
                        path: String::new(),
                        reason: format!("loading the run records: {e}"),
                    }),
                }
            }
            .into_actor(self)
            .map(|res, act, ctx| act.loaded(res, ctx)),
        );
    }

    fn loaded(&mut self, res: Result<Loaded, StateError>, ctx: &mut Context<Self>) {
        let loaded = match res {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, code = e.code(), "the scheduler cannot use the state directory; no job runs");
                self.lock = Lock::Unusable(e);
                return;
            }
        };
        match loaded.lock {
            Ok(lock) => self.lock = Lock::Held { _lock: lock },
            Err(LockError::Busy { path, holder }) => {
                if matches!(self.lock, Lock::Pending) {
                    tracing::warn!(%path, %holder, "another process runs the scheduler; trying again until it ends");
                }
                self.lock = Lock::Elsewhere { holder, path };
                if self.options.triggers {
                    ctx.run_later(self.options.lock_retry, |act, ctx| act.load(ctx));
                }
                return;
            }
            Err(LockError::Io { path, reason }) => {
                let e = StateError::Unusable { path, reason };
                tracing::error!(error = %e, code = e.code(), "the scheduler cannot take its lock; no job runs");
                self.lock = Lock::Unusable(e);
                return;
            }
        }
        for (job, runs, set_aside) in loaded.runs {
            if let Some(s) = set_aside {
                events::emit(JobHistorySetAside {
                    job: job.as_str(),
                    code: s.error.code(),
                    path: s
                        .moved_to
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    error: s.error.to_string(),
                });
            }
            if let Some(state) = self.jobs.get_mut(&job) {
                *state = JobState::new(state.spec.clone(), runs);
            }
        }
        if self.options.catch_up {
            self.catch_up(ctx);
        }
        if self.options.triggers {
            self.start_triggers(ctx);
        }
    }

    fn start_triggers(&mut self, ctx: &mut Context<Self>) {
        let jobs: Vec<(JobName, String)> = self
            .jobs
            .values()
            .filter_map(|s| {
                s.spec
                    .schedule
                    .as_ref()
                    .map(|c| (s.spec.name, c.six_field().to_owned()))
            })
            .collect();
        match trigger::start(jobs, ctx.address().recipient(), self.dropped.clone()) {
            Ok(triggers) => self.triggers = Some(triggers),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the cron triggers' thread: no job runs on schedule")
            }
        }
    }

    /// Runs once each job whose newest slot passed while no scheduler ran.
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        let due: Vec<(JobName, DateTime<Utc>, u64)> = self
            .jobs
            .values()
            .filter_map(|s| {
                let schedule = s.spec.schedule.as_ref()?;
                let (slot, missed) = slots::catch_up(schedule, s.last_slot, now)?;
                Some((s.spec.name, slot, missed))
            })
            .collect();
        for (job, slot, missed) in due {
            events::emit(JobCaughtUp {
                job: job.as_str(),
                slot: show(Some(slot)),
                missed,
                reason: "downtime",
            });
            self.stats.caught_up += 1;
            if let Some(s) = self.jobs.get_mut(&job) {
                s.last_slot = Some(slot);
            }
            self.begin(job, Some(slot), RunTrigger::CatchUp, missed, None, ctx);
        }
    }

    /// Why the clock cannot be trusted now, if it cannot.
    fn clock_doubt(&self, now: DateTime<Utc>) -> Option<ClockDoubt> {
        let newest = self
            .jobs
            .values()
            .flat_map(|s| s.runs.iter().map(|r| r.started))
            .max();
        slots::clock_doubt((self.options.synchronised)(), now, newest)
    }

    /// A run begins: it waits for the clock and its jitter where it must, then works.
    fn begin(
        &mut self,
        job: JobName,
        slot: Option<DateTime<Utc>>,
        trigger: RunTrigger,
        missed: u64,
        reply: Option<tokio::sync::oneshot::Sender<RunRecord>>,
        ctx: &mut Context<Self>,
    ) {
        let now = self.now();
        let doubt = (trigger != RunTrigger::Manual && job.needs_trusted_clock())
            .then(|| self.clock_doubt(now))
            .flatten();
        let Some(state) = self.jobs.get_mut(&job) else {
            return;
        };
        state.in_flight = Some(InFlight {
            run_id: records::run_id(now),
            trigger,
            slot,
            missed,
            since: now,
            phase: Phase::Jitter,
            reply,
        });
        if let Some(doubt) = doubt {
            if let Some(f) = state.in_flight.as_mut() {
                f.phase = Phase::Waiting(doubt);
            }
            events::emit(JobWaiting {
                job: job.as_str(),
                slot: show(slot),
                code: doubt.code(),
                error: format!(
                    "{}: the run starts once it can be trusted",
                    doubt.describe()
                ),
            });
            self.watch_clock(ctx);
            return;
        }
        let jitter = state.spec.jitter;
        if trigger != RunTrigger::Manual && !jitter.is_zero() {
            let delay = jitter.mul_f64(rand::random::<f64>());
            ctx.run_later(delay, move |act, ctx| act.work(job, ctx));
        } else {
            self.work(job, ctx);
        }
    }

    /// Looks at the clock every `clock_poll` while a run waits for it.
    fn watch_clock(&mut self, ctx: &mut Context<Self>) {
        if self.clock_poll.is_some() {
            return;
        }
        self.clock_poll = Some(ctx.run_interval(self.options.clock_poll, |act, ctx| {
            if act.clock_doubt(act.now()).is_some() {
                return;
            }
            if let Some(handle) = act.clock_poll.take() {
                ctx.cancel_future(handle);
            }
            let waiting: Vec<JobName> = act
                .jobs
                .values()
                .filter(|s| {
                    matches!(
                        s.in_flight.as_ref().map(|f| f.phase),
                        Some(Phase::Waiting(_))
                    )
                })
                .map(|s| s.spec.name)
                .collect();
            // Late already: no jitter on top.
            for job in waiting {
                act.work(job, ctx);
            }
        }));
    }

    /// The run's work starts.
    fn work(&mut self, job: JobName, ctx: &mut Context<Self>) {
        let now = self.now();
        let Some(f) = self.jobs.get_mut(&job).and_then(|s| s.in_flight.as_mut()) else {
            return;
        };
        f.phase = Phase::Working {
            started: now,
            at: Instant::now(),
        };
        events::emit(JobStarted {
            job: job.as_str(),
            run_id: f.run_id.clone(),
            trigger: f.trigger.as_str(),
            slot: show(f.slot),
        });
        let run = work::run(job, self.peers.clone(), self.settings.clone());
        ctx.spawn(
            run.into_actor(self)
                .map(move |ended, act, ctx| act.ended(job, ended, ctx)),
        );
    }

    /// The run's work ended: record it, say so, answer a caller.
    fn ended(&mut self, job: JobName, ended: work::Ended, ctx: &mut Context<Self>) {
        let now = self.now();
        let Some(f) = self.jobs.get_mut(&job).and_then(|s| s.in_flight.take()) else {
            return;
        };
        let (started, elapsed) = match f.phase {
            Phase::Working { started, at } => (started, at.elapsed()),
            _ => (f.since, Duration::ZERO),
        };
        let duration_ms = elapsed.as_millis() as u64;
        match &ended.outcome {
            RunOutcome::Ok => events::emit(JobCompleted {
                job: job.as_str(),
                run_id: f.run_id.clone(),
                duration_ms,
                detail: ended.detail.clone(),
            }),
            RunOutcome::Failed { error, .. } => {
                self.stats.failed += 1;
                events::emit(JobFailed {
                    job: job.as_str(),
                    run_id: f.run_id.clone(),
                    code: ended.code,
                    error: error.clone(),
                    duration_ms,
                });
            }
            RunOutcome::Skipped { .. } => events::emit(JobSkipped {
                job: job.as_str(),
                slot: show(f.slot),
                why: ended.code,
            }),
        }
        self.stats.runs += 1;
        crate::metrics::job_run(job.as_str(), ended.outcome.label());
        let record = RunRecord {
            run_id: f.run_id,
            job,
            trigger: f.trigger,
            slot: f.slot,
            started,
            ended: now,
            outcome: ended.outcome,
            missed: f.missed,
            detail: ended.detail,
        };
        self.record(record, f.reply, ctx);
    }

    /// A tick or a run by hand that does not run: recorded, and said.
    fn skip(
        &mut self,
        job: JobName,
        slot: Option<DateTime<Utc>>,
        trigger: RunTrigger,
        why: &'static str,
        ctx: &mut Context<Self>,
    ) {
        let now = self.now();
        self.stats.skipped += 1;
        crate::metrics::job_run(job.as_str(), "skipped");
        events::emit(JobSkipped {
            job: job.as_str(),
            slot: show(slot),
            why,
        });
        let record = RunRecord {
            run_id: records::run_id(now),
            job,
            trigger,
            slot,
            started: now,
            ended: now,
            outcome: RunOutcome::Skipped {
                why: why.to_owned(),
            },
            missed: 0,
            detail: String::new(),
        };
        self.record(record, None, ctx);
    }

    /// Keeps `record` and writes the job's file before the next message is handled (so a
    /// caller answered, or a scheduler started after this one, finds it on disk).
    fn record(
        &mut self,
        record: RunRecord,
        reply: Option<tokio::sync::oneshot::Sender<RunRecord>>,
        ctx: &mut Context<Self>,
    ) {
        let job = record.job;
        let Some(state) = self.jobs.get_mut(&job) else {
            return;
        };
        state.runs.push_back(record.clone());
        while state.runs.len() > records::KEEP {
            state.runs.pop_front();
        }
        let runs: Vec<RunRecord> = state.runs.iter().cloned().collect();
        let dir = self.state.scheduler_runs();
        let write = tokio::task::spawn_blocking(move || records::write(&dir, job, &runs));
        ctx.wait(
            async move {
                match write.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(job = job.as_str(), code = e.code(), error = %e, "cannot write the run records")
                    }
                    Err(e) => {
                        tracing::error!(job = job.as_str(), error = %e, "cannot write the run records")
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(record);
                }
            }
            .into_actor(self),
        );
    }

    fn status(&self, state: &JobState, now: DateTime<Utc>) -> JobStatus {
        let mut status = statuses(
            std::slice::from_ref(&state.spec),
            |_| state.runs.back().cloned(),
            now,
        )
        .remove(0);
        status.running = state.in_flight.as_ref().map(|f| Running {
            run_id: f.run_id.clone(),
            trigger: f.trigger,
            slot: f.slot,
            since: f.since,
            waiting: match f.phase {
                Phase::Waiting(doubt) => Some(doubt.code()),
                Phase::Jitter => Some("jitter"),
                Phase::Working { .. } => None,
            },
        });
        status
    }
}

/// A slot for an event field: RFC 3339, or empty for a run by hand.
fn show(slot: Option<DateTime<Utc>>) -> String {
    slot.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

impl Actor for SchedulerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        self.load(ctx);
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

impl Handler<crate::supervisor::Heartbeat> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, _: crate::supervisor::Heartbeat, _: &mut Context<Self>) {}
}

impl Handler<crate::supervisor::Shutdown> for SchedulerActor {
    type Result = ();

    /// The triggers stop; a run in progress is left to its actor (a backup goes on in the
    /// backup actor until the daemon stops) and is not recorded.
    fn handle(&mut self, _: crate::supervisor::Shutdown, ctx: &mut Context<Self>) {
        self.triggers = None;
        ctx.stop();
    }
}

impl Handler<Tick> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: Tick, ctx: &mut Context<Self>) {
        self.stats.ticks += 1;
        if !self.ready() {
            return;
        }
        let now = self.now();
        let job = msg.job;
        let decision = self.jobs.get(&job).and_then(|s| {
            let schedule = s.spec.schedule.as_ref()?;
            slots::on_tick(schedule, s.last_slot, now)
        });
        let Some(state) = self.jobs.get_mut(&job) else {
            return;
        };
        match decision {
            None | Some(TickDecision::Repeat) => {}
            Some(TickDecision::Earlier { slot }) => {
                // The clock went back: this slot was handled before. Said once per slot.
                if state.reported_back.is_none_or(|r| slot > r) {
                    state.reported_back = Some(slot);
                    self.skip(
                        job,
                        Some(slot),
                        RunTrigger::Schedule,
                        "clock_went_back",
                        ctx,
                    );
                }
            }
            Some(TickDecision::Run { slot, missed }) => {
                state.last_slot = Some(slot);
                let busy = state.in_flight.as_ref().map(|f| match f.phase {
                    Phase::Waiting(_) => "waiting_for_clock",
                    _ => "overlap",
                });
                if let Some(why) = busy {
                    self.skip(job, Some(slot), RunTrigger::Schedule, why, ctx);
                    return;
                }
                if missed > 0 {
                    // Slots passed without a tick: the clock jumped forward.
                    events::emit(JobCaughtUp {
                        job: job.as_str(),
                        slot: show(Some(slot)),
                        missed,
                        reason: "clock_jump",
                    });
                    self.stats.caught_up += 1;
                }
                self.begin(job, Some(slot), RunTrigger::Schedule, missed, None, ctx);
            }
        }
    }
}

impl Handler<RunJob> for SchedulerActor {
    type Result = ResponseFuture<Result<RunRecord, SchedulerError>>;

    fn handle(&mut self, msg: RunJob, ctx: &mut Context<Self>) -> Self::Result {
        let refused = |e| -> Self::Result { Box::pin(std::future::ready(Err(e))) };
        match &self.lock {
            Lock::Held { .. } => {}
            Lock::Elsewhere { holder, path } => {
                return refused(SchedulerError::Elsewhere {
                    holder: holder.clone(),
                    path: path.clone(),
                });
            }
            Lock::Unusable(e) => return refused(SchedulerError::State(e.clone())),
            Lock::Pending => return refused(SchedulerError::NotDelivered),
        }
        let job = msg.job;
        if let Some(f) = self.jobs.get(&job).and_then(|s| s.in_flight.as_ref()) {
            let busy = SchedulerError::Busy {
                job,
                run_id: f.run_id.clone(),
                since: show(Some(f.since)),
            };
            self.skip(job, None, RunTrigger::Manual, "overlap", ctx);
            return refused(busy);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.begin(job, None, RunTrigger::Manual, 0, Some(tx), ctx);
        Box::pin(async move { rx.await.map_err(|_| SchedulerError::NotDelivered) })
    }
}

impl Handler<History> for SchedulerActor {
    type Result = MessageResult<History>;

    fn handle(&mut self, msg: History, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            self.jobs
                .get(&msg.job)
                .map(|s| s.runs.iter().cloned().collect())
                .unwrap_or_default(),
        )
    }
}

impl Handler<ListJobs> for SchedulerActor {
    type Result = MessageResult<ListJobs>;

    fn handle(&mut self, _: ListJobs, _: &mut Context<Self>) -> Self::Result {
        let now = self.now();
        MessageResult(self.jobs.values().map(|s| self.status(s, now)).collect())
    }
}

impl Handler<GetStats> for SchedulerActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(SchedulerStats {
            ticks_dropped: self.dropped.load(Ordering::Relaxed),
            ..self.stats
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::clock::{ManualClock, at};
    use crate::events::Recorded;

    /// A state directory, a clock and a synchronisation flag the test moves.
    struct Fixture {
        _tmp: tempfile::TempDir,
        config: Config,
        clock: Arc<ManualClock>,
        synchronised: Arc<AtomicBool>,
    }

    impl Fixture {
        fn new(now: &str) -> Fixture {
            let tmp = tempfile::tempdir().expect("tempdir");
            let mut config = Config::defaults().expect("defaults");
            config.state_dir = tmp.path().join("state");
            config.volumes.root = tmp.path().join("volumes");
            Fixture {
                _tmp: tmp,
                config,
                clock: Arc::new(ManualClock::new(at(now))),
                synchronised: Arc::new(AtomicBool::new(true)),
            }
        }

        fn options(&self) -> Options {
            let synchronised = self.synchronised.clone();
            Options {
                clock: self.clock.clone(),
                synchronised: Arc::new(move || synchronised.load(Ordering::SeqCst)),
                triggers: false,
                catch_up: true,
                clock_poll: Duration::from_secs(10),
                backup_poll: Duration::from_secs(1),
                lock_retry: Duration::from_secs(10),
            }
        }

        fn runs_dir(&self) -> std::path::PathBuf {
            StateDir::new(&self.config.state_dir).scheduler_runs()
        }

        /// The actor on the test's own arbiter (so paused time and the test's events apply),
        /// with `jobs` on and every other job off.
        fn start(&self, jobs: &[(JobName, Schedule)], peers: Peers) -> Addr<SchedulerActor> {
            self.start_with(jobs, peers, self.options())
        }

        fn start_with(
            &self,
            jobs: &[(JobName, Schedule)],
            peers: Peers,
            options: Options,
        ) -> Addr<SchedulerActor> {
            let specs = JobName::ALL
                .into_iter()
                .map(|name| JobSpec {
                    name,
                    schedule: jobs
                        .iter()
                        .find(|(j, _)| *j == name)
                        .map(|(_, s)| s.clone()),
                    jitter: Duration::ZERO,
                })
                .collect();
            let actor = SchedulerActor::new(&self.config, specs, peers, options);
            SchedulerActor::create(move |_| actor)
        }
    }

    fn cron(text: &str) -> Schedule {
        Schedule::parse(text).expect("cron")
    }

    /// A finished run of `job` for `slot`, as an earlier daemon would have recorded it.
    fn ran(job: JobName, slot: &str) -> RunRecord {
        RunRecord {
            run_id: records::run_id(at(slot)),
            job,
            trigger: RunTrigger::Schedule,
            slot: Some(at(slot)),
            started: at(slot),
            ended: at(slot) + chrono::Duration::seconds(1),
            outcome: RunOutcome::Ok,
            missed: 0,
            detail: String::new(),
        }
    }

    async fn history(addr: &Addr<SchedulerActor>, job: JobName) -> Vec<RunRecord> {
        addr.send(History { job }).await.expect("history")
    }

    /// Waits (in paused time: as long as it takes) until `job` has `n` runs recorded.
    async fn runs(addr: &Addr<SchedulerActor>, job: JobName, n: usize) -> Vec<RunRecord> {
        for _ in 0..10_000 {
            let h = history(addr, job).await;
            if h.len() >= n {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{job} never reached {n} runs: {:?}",
            history(addr, job).await
        );
    }

    /// The run's (trigger, slot, outcome, missed).
    fn summary(r: &RunRecord) -> (RunTrigger, Option<String>, String, u64) {
        let outcome = match &r.outcome {
            RunOutcome::Ok => "ok".to_owned(),
            RunOutcome::Failed { code, .. } => format!("failed:{code}"),
            RunOutcome::Skipped { why } => format!("skipped:{why}"),
        };
        (r.trigger, r.slot.map(|s| show(Some(s))), outcome, r.missed)
    }

    fn fields(events: &[Recorded], keys: &[&str]) -> Vec<Vec<String>> {
        events
            .iter()
            .map(|e| {
                keys.iter()
                    .map(|k| e.field(k).unwrap_or_default().to_owned())
                    .collect()
            })
            .collect()
    }

    async fn stop(addr: Addr<SchedulerActor>) {
        let _ = addr.send(crate::supervisor::Shutdown).await;
        // The lock goes with the actor.
        while addr.connected() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[actix_rt::test]
    async fn catch_up_runs_once_after_a_gap_and_not_at_all_when_nothing_was_missed() {
        tokio::time::pause();
        let f = Fixture::new("2026-11-30T12:30:00Z");
        // The last run was for 09:00; the daemon was off at 10:00, 11:00 and 12:00.
        records::write(
            &f.runs_dir(),
            JobName::HealthSummary,
            &[ran(JobName::HealthSummary, "2026-11-30T09:00:00Z")],
        )
        .expect("write");
        let cap = events::capture();
        // verify has a schedule and no history: it missed nothing.
        let jobs = [
            (JobName::HealthSummary, cron("0 * * * *")),
            (JobName::Verify, cron("0 4 * * *")),
        ];
        let addr = f.start(&jobs, Peers::default());
        let h = runs(&addr, JobName::HealthSummary, 2).await;
        assert_eq!(
            summary(&h[1]),
            (
                RunTrigger::CatchUp,
                Some("2026-11-30T12:00:00Z".into()),
                "ok".into(),
                2
            )
        );
        assert_eq!(
            fields(
                &cap.named("job.caught_up"),
                &["job", "slot", "missed", "reason"]
            ),
            [["health_summary", "2026-11-30T12:00:00Z", "2", "downtime"]]
        );
        assert!(history(&addr, JobName::Verify).await.is_empty());
        stop(addr).await;

        // Started again in the same hour: nothing was missed, nothing runs.
        let addr = f.start(&jobs, Peers::default());
        let h = history(&addr, JobName::HealthSummary).await;
        assert_eq!(h.len(), 2, "{h:?}");
        stop(addr).await;
        // A month later: one run, however many slots passed.
        f.clock.set(at("2026-12-30T12:30:00Z"));
        let addr = f.start(&jobs, Peers::default());
        let h = runs(&addr, JobName::HealthSummary, 3).await;
        assert_eq!(
            summary(&h[2]),
            (
                RunTrigger::CatchUp,
                Some("2026-12-30T12:00:00Z".into()),
                "ok".into(),
                719
            )
        );
        assert_eq!(cap.named("job.caught_up").len(), 2);
        assert!(history(&addr, JobName::Verify).await.is_empty());
        // What the runs did is on disk too.
        assert_eq!(
            records::read(&f.runs_dir(), JobName::HealthSummary).expect("read"),
            h
        );
    }

    #[actix_rt::test]
    async fn clock_jumps_forward_and_back_neither_run_a_slot_twice_nor_skip_one_silently() {
        tokio::time::pause();
        let f = Fixture::new("2026-11-30T10:00:00.200Z");
        let cap = events::capture();
        let addr = f.start(
            &[(JobName::HealthSummary, cron("* * * * *"))],
            Peers::default(),
        );
        let tick = || Tick {
            job: JobName::HealthSummary,
        };
        let job = JobName::HealthSummary;
        addr.send(tick()).await.expect("tick");
        runs(&addr, job, 1).await;
        // A second tick for the same slot changes nothing.
        f.clock.set(at("2026-11-30T10:00:00.700Z"));
        addr.send(tick()).await.expect("tick");
        // Forward by three minutes: the newest slot runs once, two slots counted as missed.
        f.clock.set(at("2026-11-30T10:03:00.100Z"));
        addr.send(tick()).await.expect("tick");
        runs(&addr, job, 2).await;
        // Back by half an hour: 09:33 was handled (by the 10:03 run's time), never run
        // again; said once, however often it ticks.
        f.clock.set(at("2026-11-30T09:33:00.500Z"));
        addr.send(tick()).await.expect("tick");
        addr.send(tick()).await.expect("tick");
        runs(&addr, job, 3).await;
        // Back where it was: the slot already run does not run again; the next one does.
        f.clock.set(at("2026-11-30T10:03:30Z"));
        addr.send(tick()).await.expect("tick");
        f.clock.set(at("2026-11-30T10:04:00.100Z"));
        addr.send(tick()).await.expect("tick");
        let h = runs(&addr, job, 4).await;
        let got: Vec<_> = h.iter().map(summary).collect();
        let s = |t: &str| Some(t.to_owned());
        assert_eq!(
            got,
            [
                (
                    RunTrigger::Schedule,
                    s("2026-11-30T10:00:00Z"),
                    "ok".into(),
                    0
                ),
                (
                    RunTrigger::Schedule,
                    s("2026-11-30T10:03:00Z"),
                    "ok".into(),
                    2
                ),
                (
                    RunTrigger::Schedule,
                    s("2026-11-30T09:33:00Z"),
                    "skipped:clock_went_back".into(),
                    0
                ),
                (
                    RunTrigger::Schedule,
                    s("2026-11-30T10:04:00Z"),
                    "ok".into(),
                    0
                ),
            ]
        );
        assert_eq!(
            fields(&cap.named("job.caught_up"), &["slot", "missed", "reason"]),
            [["2026-11-30T10:03:00Z", "2", "clock_jump"]]
        );
        assert_eq!(
            fields(&cap.named("job.skipped"), &["slot", "why"]),
            [["2026-11-30T09:33:00Z", "clock_went_back"]]
        );
        assert_eq!(cap.named("health.summary").len(), 3);
    }

    #[actix_rt::test]
    async fn time_based_jobs_wait_for_a_clock_they_can_trust() {
        tokio::time::pause();
        let f = Fixture::new("2026-11-30T02:00:00.300Z");
        f.synchronised.store(false, Ordering::SeqCst);
        let cap = events::capture();
        let jobs = [
            (JobName::Backup, cron("0 2 * * *")),
            (JobName::HealthSummary, cron("* * * * *")),
        ];
        let addr = f.start(&jobs, Peers::default());
        for job in [JobName::Backup, JobName::HealthSummary] {
            addr.send(Tick { job }).await.expect("tick");
        }
        // The health summary does not depend on the clock: it ran.
        runs(&addr, JobName::HealthSummary, 1).await;
        assert_eq!(
            fields(&cap.named("job.waiting"), &["job", "slot", "code"]),
            [["backup", "2026-11-30T02:00:00Z", "clock_unsynchronised"]]
        );
        let listed = addr.send(ListJobs).await.expect("jobs");
        let backup = listed
            .iter()
            .find(|s| s.job == JobName::Backup)
            .expect("backup");
        assert_eq!(
            backup.running.as_ref().and_then(|r| r.waiting),
            Some("clock_unsynchronised")
        );
        // Another day's slot while it waits: skipped, recorded.
        f.clock.set(at("2026-12-01T02:00:00.100Z"));
        addr.send(Tick {
            job: JobName::Backup,
        })
        .await
        .expect("tick");
        let h = runs(&addr, JobName::Backup, 1).await;
        assert_eq!(summary(&h[0]).2, "skipped:waiting_for_clock");
        // Still waiting after a poll.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            cap.named("job.started")
                .iter()
                .all(|e| e.field("job") != Some("backup"))
        );
        // Synchronised: the next poll starts it (the backup part does not run in this test:
        // its work answers `not_running`).
        f.synchronised.store(true, Ordering::SeqCst);
        let h = runs(&addr, JobName::Backup, 2).await;
        assert_eq!(
            summary(&h[1]),
            (
                RunTrigger::Schedule,
                Some("2026-11-30T02:00:00Z".into()),
                "skipped:not_running".into(),
                0
            )
        );
        assert_eq!(
            fields(&cap.named("job.started"), &["job", "slot"])
                .into_iter()
                .filter(|f| f[0] == "backup")
                .collect::<Vec<_>>(),
            [["backup", "2026-11-30T02:00:00Z"]]
        );
        stop(addr).await;

        // A clock that reads earlier than the newest record (the Pi booted in the past) is
        // not trusted either, synchronised or not.
        f.clock.set(at("1970-01-01T00:02:00.100Z"));
        let addr = f.start(&[(JobName::Retention, cron("* * * * *"))], Peers::default());
        addr.send(Tick {
            job: JobName::Retention,
        })
        .await
        .expect("tick");
        // A run by hand does not wait.
        let by_hand = addr
            .send(RunJob {
                job: JobName::Backup,
            })
            .await
            .expect("send")
            .expect("ran");
        assert_eq!(by_hand.trigger, RunTrigger::Manual);
        assert_eq!(
            fields(&cap.named("job.waiting"), &["job", "code"]).last(),
            Some(&vec!["retention".to_owned(), "clock_behind".to_owned()])
        );
        f.clock.set(at("2026-12-02T00:00:00Z"));
        let h = runs(&addr, JobName::Retention, 1).await;
        assert_eq!(summary(&h[0]).1.as_deref(), Some("1970-01-01T00:02:00Z"));
    }

    #[actix_rt::test]
    async fn a_run_that_has_not_ended_makes_the_next_one_skip_and_a_run_by_hand_busy() {
        tokio::time::pause();
        let f = Fixture::new("2026-11-30T03:30:00Z");
        f.synchronised.store(false, Ordering::SeqCst);
        let addr = f.start(
            &[(JobName::Retention, cron("30 3 * * *"))],
            Peers::default(),
        );
        addr.send(Tick {
            job: JobName::Retention,
        })
        .await
        .expect("tick");
        let busy = addr
            .send(RunJob {
                job: JobName::Retention,
            })
            .await
            .expect("send")
            .expect_err("busy");
        assert_eq!(busy.code(), "busy");
        let h = runs(&addr, JobName::Retention, 1).await;
        assert_eq!(
            summary(&h[0]),
            (RunTrigger::Manual, None, "skipped:overlap".into(), 0)
        );
    }

    #[actix_rt::test]
    async fn a_failing_job_is_recorded_and_the_scheduler_goes_on() {
        tokio::time::pause();
        let f = Fixture::new("2026-11-30T10:05:00Z");
        // A data root that does not exist: every volume message fails.
        let volumes =
            crate::volume::VolumeActor::start_with(&f.config.volumes, &f.config.supervisor);
        let cap = events::capture();
        let addr = f.start(
            &[
                (JobName::VolumeUsage, cron("*/5 * * * *")),
                (JobName::HealthSummary, cron("* * * * *")),
            ],
            Peers {
                volumes: Some(volumes),
                ..Peers::default()
            },
        );
        for job in [JobName::VolumeUsage, JobName::HealthSummary] {
            addr.send(Tick { job }).await.expect("tick");
        }
        let h = runs(&addr, JobName::VolumeUsage, 1).await;
        let (_, _, outcome, _) = summary(&h[0]);
        assert!(outcome.starts_with("failed:"), "{outcome}");
        let failed = cap.named("job.failed");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].field("job"), Some("volume_usage"));
        runs(&addr, JobName::HealthSummary, 1).await;
        // The next slot runs again.
        f.clock.set(at("2026-11-30T10:10:00Z"));
        addr.send(Tick {
            job: JobName::VolumeUsage,
        })
        .await
        .expect("tick");
        runs(&addr, JobName::VolumeUsage, 2).await;
        let stats = addr.send(GetStats).await.expect("stats");
        assert_eq!((stats.ticks, stats.runs, stats.failed), (3, 3, 2));
    }

    #[actix_rt::test]
    async fn a_tick_on_a_full_mailbox_is_dropped_and_counted() {
        let f = Fixture::new("2026-11-30T10:00:00Z");
        let cap = events::capture();
        let addr = f.start(
            &[(JobName::HealthSummary, cron("* * * * *"))],
            Peers::default(),
        );
        let dropped = AtomicU64::new(0);
        let to = addr.clone().recipient();
        // The actor runs on this thread: nothing is taken from its mailbox until this yields.
        let sent = (0..64)
            .filter(|_| trigger::deliver(&to, JobName::HealthSummary, &dropped))
            .count() as u64;
        let lost = dropped.load(Ordering::Relaxed);
        assert!(lost > 0 && sent > 0, "sent {sent}, dropped {lost}");
        assert_eq!(sent + lost, 64);
        assert_eq!(cap.named("job.tick_dropped").len() as u64, lost);
        assert_eq!(
            cap.named("job.tick_dropped")
                .last()
                .and_then(|e| e.field("dropped")),
            Some(lost.to_string().as_str())
        );
        // Every tick that went out was handled (one run: they all name one slot).
        let stats = addr.send(GetStats).await.expect("stats");
        assert_eq!(stats.ticks, sent);
        assert_eq!(history(&addr, JobName::HealthSummary).await.len(), 1);
    }

    #[actix_rt::test]
    async fn a_corrupt_record_file_is_set_aside_and_its_job_starts_empty() {
        let f = Fixture::new("2026-11-30T10:00:00Z");
        std::fs::create_dir_all(f.runs_dir()).expect("mkdir");
        std::fs::write(records::path(&f.runs_dir(), JobName::Backup), "{ not json").expect("write");
        let fine = [ran(JobName::Verify, "2026-11-30T04:00:00Z")];
        records::write(&f.runs_dir(), JobName::Verify, &fine).expect("write");
        let cap = events::capture();
        let addr = f.start(&[], Peers::default());
        assert!(history(&addr, JobName::Backup).await.is_empty());
        assert_eq!(history(&addr, JobName::Verify).await, fine);
        let set_aside = cap.named("job.history_set_aside");
        assert_eq!(set_aside.len(), 1);
        assert_eq!(set_aside[0].field("job"), Some("backup"));
        assert_eq!(set_aside[0].code, Some("records_corrupt"));
        let moved = set_aside[0].field("path").expect("path");
        assert_eq!(std::fs::read_to_string(moved).expect("kept"), "{ not json");
        // It runs as usual and writes a good file.
        addr.send(RunJob {
            job: JobName::HealthSummary,
        })
        .await
        .expect("send")
        .expect("ran");
    }

    #[actix_rt::test]
    async fn only_one_process_runs_the_scheduler() {
        let f = Fixture::new("2026-11-30T10:00:00Z");
        let first = f.start(&[], Peers::default());
        let record = first
            .send(RunJob {
                job: JobName::HealthSummary,
            })
            .await
            .expect("send")
            .expect("ran");
        assert_eq!(record.outcome, RunOutcome::Ok);
        assert_eq!(
            records::read(&f.runs_dir(), JobName::HealthSummary).expect("read"),
            [record],
            "on disk once answered"
        );
        let second = f.start_with(
            &[],
            Peers::default(),
            Options {
                catch_up: false,
                ..f.options()
            },
        );
        let refused = second
            .send(RunJob {
                job: JobName::HealthSummary,
            })
            .await
            .expect("send")
            .expect_err("elsewhere");
        assert_eq!(refused.code(), "scheduler_elsewhere");
        assert!(
            refused
                .to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
    }

    /// The real trigger, tokio-cron-scheduler on its own thread and runtime, fires a
    /// per-second job into the actor on its own arbiter, all inside an actix system as the
    /// daemon runs it: ticks arrive, each slot runs once, nothing deadlocks.
    #[actix_rt::test]
    async fn the_real_trigger_fires_a_per_second_job_inside_an_actix_system() {
        let f = Fixture::new("2026-11-30T10:00:00Z");
        let options = Options {
            clock: Arc::new(SystemClock),
            triggers: true,
            catch_up: false,
            ..f.options()
        };
        let specs = JobName::ALL
            .into_iter()
            .map(|name| JobSpec {
                name,
                schedule: (name == JobName::HealthSummary)
                    .then(|| Schedule::with_seconds("* * * * * *")),
                jitter: Duration::ZERO,
            })
            .collect();
        let handle = SchedulerActor::start_specs(&f.config, specs, Peers::default(), options);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let h = loop {
            let h = handle
                .history(JobName::HealthSummary)
                .await
                .expect("history");
            if h.len() >= 3 {
                break h;
            }
            assert!(std::time::Instant::now() < deadline, "no ticks: {h:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let slots: Vec<DateTime<Utc>> = h.iter().filter_map(|r| r.slot).collect();
        assert_eq!(slots.len(), h.len());
        assert!(
            slots.windows(2).all(|w| w[0] < w[1]),
            "each slot once, in order: {slots:?}"
        );
        assert!(slots.iter().all(|s| s.timestamp_subsec_nanos() == 0));
        assert!(h.iter().all(|r| r.outcome == RunOutcome::Ok), "{h:?}");
        handle
            .addr()
            .send(crate::supervisor::Shutdown)
            .await
            .expect("shutdown");
    }
}
