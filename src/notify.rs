//! Telling systemd (`NOTIFY_SOCKET`) without ever blocking the event loop.
//!
//! A datagram sent to the notify socket blocks while the socket's queue is full: systemd busy,
//! or a reader that stopped reading (the kernel queues only `net.unix.max_dgram_qlen`, 10 by
//! default). Sent from the main arbiter, that stalls everything there — the watchdog, the
//! audit writer, the status reports — for as long as nobody reads. So the event loop only
//! records what to say, and one thread, `lucid-notify`, says it. What waits is bounded: READY
//! and STOPPING once each, only the newest STATUS (an older one is out of date), one WATCHDOG.
//! When that thread is stuck, the watchdog pings stop reaching systemd, which then restarts
//! the daemon: the same answer as for a wedged event loop.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The sending side; see the module doc. Does nothing when `NOTIFY_SOCKET` is unset or empty.
#[derive(Clone)]
pub struct Notifier {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when something is pending (for the thread) and when it was sent (for
    /// [`Notifier::flush`]).
    changed: Condvar,
}

#[derive(Default)]
struct Pending {
    ready: bool,
    status: Option<String>,
    watchdog: bool,
    stopping: bool,
    /// The thread is sending what it took: not yet said.
    sending: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.ready && self.status.is_none() && !self.watchdog && !self.stopping
    }
}

impl Notifier {
    /// Starts the thread when systemd listens.
    pub fn start() -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none_or(|s| s.is_empty()) {
            return Notifier { shared: None };
        }
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            changed: Condvar::new(),
        });
        let theirs = shared.clone();
        let started = std::thread::Builder::new()
            .name("lucid-notify".into())
            .spawn(move || say(&theirs));
        match started {
            Ok(_) => Notifier {
                shared: Some(shared),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the systemd notify thread; systemd is not told");
                Notifier { shared: None }
            }
        }
    }

    /// READY=1 with the first STATUS=.
    pub fn ready(&self, status: String) {
        self.update(|p| {
            p.ready = true;
            p.status = Some(status);
        });
    }

    /// STATUS=: replaces one not yet sent.
    pub fn status(&self, status: String) {
        self.update(|p| p.status = Some(status));
    }

    pub fn watchdog(&self) {
        self.update(|p| p.watchdog = true);
    }

    pub fn stopping(&self) {
        self.update(|p| p.stopping = true);
    }

    /// Waits up to `within` until everything recorded was sent: before the process exits,
    /// so STOPPING=1 is not lost with the thread.
    pub fn flush(&self, within: Duration) {
        let Some(shared) = &self.shared else { return };
        let deadline = Instant::now() + within;
        let mut p = lock(shared);
        while !p.is_empty() || p.sending {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                tracing::warn!("systemd did not take the last notifications in time");
                return;
            };
            p = shared
                .changed
                .wait_timeout(p, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn update(&self, f: impl FnOnce(&mut Pending)) {
        if let Some(shared) = &self.shared {
            f(&mut lock(shared));
            shared.changed.notify_all();
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Pending> {
    shared
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The thread: takes what is pending and sends it, READY first and STOPPING last.
fn say(shared: &Shared) {
    loop {
        let taken = {
            let mut p = lock(shared);
            while p.is_empty() {
                p = shared
                    .changed
                    .wait(p)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let taken = std::mem::take(&mut *p);
            p.sending = true;
            taken
        };
        let status = taken.status.as_deref().map(NotifyState::Status);
        let mut states: Vec<NotifyState<'_>> = Vec::with_capacity(4);
        if taken.ready {
            states.push(NotifyState::Ready);
        }
        states.extend(status);
        if taken.watchdog {
            states.push(NotifyState::Watchdog);
        }
        if taken.stopping {
            states.push(NotifyState::Stopping);
        }
        if let Err(e) = sd_notify::notify(&states) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
        lock(shared).sending = false;
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What waits is bounded however often the event loop reports: one STATUS, the newest.
    #[test]
    fn statuses_not_yet_sent_are_replaced_by_the_newest() {
        let n = Notifier {
            shared: Some(Arc::new(Shared {
                pending: Mutex::new(Pending::default()),
                changed: Condvar::new(),
            })),
        };
        n.ready("starting".into());
        for i in 0..1000 {
            n.status(format!("status {i}"));
        }
        n.watchdog();
        n.watchdog();
        let shared = n.shared.as_ref().expect("shared");
        let p = lock(shared);
        assert!(p.ready && p.watchdog && !p.stopping);
        assert_eq!(p.status.as_deref(), Some("status 999"));
    }
}
