//! The cron triggers: tokio-cron-scheduler, on a thread of its own (`lucid-cron`) with a
//! multi-thread tokio runtime of its own. The library can deadlock on a current-thread runtime
//! (its upstream issue #28), and every actix arbiter is one, so it never runs on the actors'
//! threads; and a thread of its own means a busy actor thread never delays a tick.
//!
//! A trigger does one thing: [`deliver`] a [`Tick`] to the scheduler actor with `try_send`. A
//! full mailbox drops the tick, counts it and says so (`job.tick_dropped`); it never blocks
//! the library's loop. The tick carries no time — the library reads the wall clock and only
//! says "now" — so the actor derives the slot from the schedule and its own clock
//! (`slots::on_tick`), and owns de-duplication, catch-up and clock jumps.
//!
//! The library polls its jobs twice a second, so a tick arrives up to half a second after
//! its slot; a slot belongs to the tick that follows it, never to one before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use tokio_cron_scheduler::{Job, JobScheduler};

use super::Tick;
use super::job::JobName;
use crate::events::{self, JobTickDropped};

/// The running triggers; dropping this stops them and lets their thread end.
pub(crate) struct Triggers {
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Sends `job`'s tick, never waiting: a full mailbox drops it (counted in `dropped`, and a
/// `job.tick_dropped`). Answers whether it went out.
pub(crate) fn deliver(to: &Recipient<Tick>, job: JobName, dropped: &AtomicU64) -> bool {
    match to.try_send(Tick { job }) {
        Ok(()) => true,
        Err(SendError::Full(_)) => {
            let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
            events::emit(JobTickDropped {
                job: job.as_str(),
                dropped: n,
            });
            false
        }
        // The scheduler has stopped; its triggers stop with it.
        Err(SendError::Closed(_)) => false,
    }
}

/// Starts the triggers for `jobs` (name and six-field cron string) on their own thread.
pub(crate) fn start(
    jobs: Vec<(JobName, String)>,
    to: Recipient<Tick>,
    dropped: Arc<AtomicU64>,
) -> std::io::Result<Triggers> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let captures = events::inherited();
    std::thread::Builder::new()
        .name("lucid-cron".to_owned())
        .spawn(move || {
            captures.clone().install();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("lucid-cron-rt")
                .enable_time()
                .on_thread_start(move || captures.clone().install())
                .build();
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the cron triggers' runtime: no job runs on schedule");
                    return;
                }
            };
            runtime.block_on(async move {
                if let Err(e) = run(jobs, to, dropped, stop_rx).await {
                    tracing::error!(error = %e, "the cron triggers failed: no job runs on schedule");
                }
            });
        })?;
    Ok(Triggers { _stop: stop_tx })
}

async fn run(
    jobs: Vec<(JobName, String)>,
    to: Recipient<Tick>,
    dropped: Arc<AtomicU64>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), tokio_cron_scheduler::JobSchedulerError> {
    let mut scheduler = JobScheduler::new().await?;
    for (job, cron) in jobs {
        let to = to.clone();
        let dropped = dropped.clone();
        scheduler
            .add(Job::new(cron.as_str(), move |_, _| {
                deliver(&to, job, &dropped);
            })?)
            .await?;
    }
    scheduler.start().await?;
    // Until the actor drops its `Triggers` (or stops: the sender goes with it).
    let _ = stop.await;
    scheduler.shutdown().await
}
