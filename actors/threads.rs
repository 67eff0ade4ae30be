//! Each store actor's own thread: an actix arbiter per store, so that one store's long stream
//! (an import, an export, a bulk load) cannot stall another store's calls, the caller's event
//! loop or the watchdog's round trip.
//!
//! What runs there: the actor and everything it spawns — connecting, probes, the bootstrap,
//! its mailbox messages (the Redis and volume streams among them), the Elasticsearch bulk
//! indexer — and the drivers' own I/O tasks (the Redis connection, MongoDB's pool and monitors),
//! which are spawned where the connection is made. A handle's request/response call still runs
//! in the caller's task (the fast path the benchmark measures): handles are `Send + Sync` and
//! any arbiter may call them.
//!
//! Three things the thread does for the rest of the crate:
//! - It is named `lucid-{store}` (its blocking pool `lucid-{store}-bg`), for `top -H` on a Pi:
//!   actix names arbiter threads `actix-rt|system:N|arbiter:M`, which Linux cuts to the
//!   useless `actix-rt|system`.
//! - It and its blocking pool record events into the captures of the thread that started it
//!   ([`crate::events::inherited`]), so a test's [`crate::events::capture`] sees the actor's
//!   events although they fire elsewhere.
//! - It lives exactly as long as the arbiter that started it, as the actor did when it ran on
//!   that arbiter: a task there holds the thread's stop, and the end of that arbiter (a test's
//!   `System` dropped) drops it. `System::stop` stops it too, as it stops every arbiter. A
//!   `Shutdown` stops the actor, not the thread, so a stream a reader is still taking from
//!   runs to its end rather than being cut off in a way that looks like a finished stream.
//!
//! Should the OS refuse a thread, the actor runs on the caller's arbiter, as it always used to,
//! and the failure is logged: a daemon short of threads still serves.

use std::future::Future;
use std::io;

use actix::prelude::*;

use crate::events;

/// Where one store actor runs; see the module doc.
pub(crate) struct ActorThread {
    /// `None`: no thread of its own could be started; the caller's arbiter is used.
    arbiter: Option<ArbiterHandle>,
}

impl ActorThread {
    /// Starts the thread `name` (at most 15 bytes: Linux keeps no more), tied to the current
    /// arbiter. Call it inside an actix `System`.
    pub(crate) fn start(name: &'static str) -> ActorThread {
        match spawn(name) {
            Ok(arbiter) => {
                let stop = StopOnDrop(arbiter.clone());
                // Never finishes: dropped, and so stops the thread, when this arbiter ends.
                actix_rt::spawn(async move {
                    let _stop = stop;
                    std::future::pending::<()>().await
                });
                ActorThread {
                    arbiter: Some(arbiter),
                }
            }
            Err(e) => {
                tracing::error!(
                    thread = name,
                    error = %e,
                    "cannot start the actor's own thread; it runs on the caller's"
                );
                ActorThread { arbiter: None }
            }
        }
    }

    /// Starts the actor `make` builds on this thread.
    pub(crate) fn start_actor<A, F>(&self, make: F) -> Addr<A>
    where
        A: Actor<Context = Context<A>>,
        F: FnOnce(&mut Context<A>) -> A + Send + 'static,
    {
        match &self.arbiter {
            Some(arbiter) => A::start_in_arbiter(arbiter, make),
            None => A::create(make),
        }
    }

    /// Runs `task` on this thread.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        match &self.arbiter {
            // `false` only once the thread has stopped, and then so has everything it ran.
            Some(arbiter) => {
                let _ = arbiter.spawn(task);
            }
            None => {
                actix_rt::spawn(task);
            }
        }
    }
}

/// Stops the arbiter when dropped.
struct StopOnDrop(ArbiterHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

fn spawn(name: &'static str) -> io::Result<ArbiterHandle> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("actor-thread-spawn", |_| Err(io::Error::other(
        "fail point actor-thread-spawn"
    )));
    let captures = events::inherited();
    let arbiter = Arbiter::try_with_tokio_rt(move || {
        name_this_thread(name);
        captures.clone().install();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("{name}-bg"))
            .on_thread_start(move || captures.clone().install())
            .build()
    })?;
    // Dropping the `Arbiter` detaches the thread; it runs until it is told to stop.
    Ok(arbiter.handle())
}

/// Sets the name the kernel shows (`top -H`, `ps -L`, `/proc/…/comm`).
#[cfg(target_os = "linux")]
fn name_this_thread(name: &str) {
    if let Ok(name) = std::ffi::CString::new(name) {
        // SAFETY: `name` is NUL-terminated and outlives the call; PR_SET_NAME copies at most
        // 16 bytes of it and names only the calling thread.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn name_this_thread(_: &str) {}
