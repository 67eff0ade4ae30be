//! The health registry: one entry per backend actor, written by the actor on every state change
//! — and one for the volumes' data root ([`Backend::Volumes`], written by the volume actor's
//! probe) — and read by `/health`, `/ready`, `lucid-db health`, the systemd STATUS= line and
//! (later) the metrics. Readers get snapshots; [`HealthRegistry::subscribe`] wakes on every state change
//! (not on every probe latency, so STATUS= is not rewritten every few seconds).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::{Backend, StateLabel};
use crate::redact;

/// The last error an actor saw: a code from its error enum and the redacted message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub code: String,
    pub message: String,
}

/// One backend's health as reported to operators. Also what `/health` returns per backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub backend: Backend,
    /// A required backend that is not up makes `/ready` answer 503.
    pub required: bool,
    pub state: StateLabel,
    /// When the current state began (RFC 3339, UTC).
    pub since: String,
    /// The connect attempt in flight or next; 0 while up.
    pub attempt: u32,
    /// Times the connection was lost after having been up.
    pub restarts: u64,
    /// In backoff: milliseconds until the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// Why it is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// Round trip of the last successful probe or connect, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

impl BackendStatus {
    pub fn is_up(&self) -> bool {
        self.state == StateLabel::Up
    }

    /// One phrase for STATUS= and `/ready` reasons: `redis up`, `redis backoff (connection_refused), retry 3 in 1.2s`.
    pub fn summary(&self) -> String {
        let mut s = format!("{} {}", self.backend, self.state);
        if let Some(reason) = &self.reason {
            s.push_str(&format!(" ({reason})"));
        } else if !self.is_up()
            && let Some(e) = &self.last_error
        {
            s.push_str(&format!(" ({})", e.code));
        }
        if let Some(ms) = self.retry_in_ms {
            s.push_str(&format!(
                ", retry {} in {:.1}s",
                self.attempt,
                ms as f64 / 1000.0
            ));
        }
        s
    }
}

struct Entry {
    status: BackendStatus,
    /// Kept as an instant so snapshots report a fresh `retry_in_ms`.
    retry_at: Option<Instant>,
}

struct Inner {
    entries: RwLock<BTreeMap<Backend, Entry>>,
    changes: watch::Sender<u64>,
}

/// Shared, cheap to clone; see the module doc.
#[derive(Clone)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

impl Default for HealthRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthRegistry {
    pub fn new() -> Self {
        let (changes, _) = watch::channel(0);
        HealthRegistry {
            inner: Arc::new(Inner {
                entries: RwLock::new(BTreeMap::new()),
                changes,
            }),
        }
    }

    /// Adds a backend in `Connecting` and returns the handle its actor writes through.
    pub fn register(&self, backend: Backend, required: bool) -> HealthEntry {
        let status = BackendStatus {
            backend,
            required,
            state: StateLabel::Connecting,
            since: now_rfc3339(),
            attempt: 1,
            restarts: 0,
            retry_in_ms: None,
            reason: None,
            last_error: None,
            latency_ms: None,
        };
        if let Ok(mut entries) = self.inner.entries.write() {
            entries.insert(
                backend,
                Entry {
                    status,
                    retry_at: None,
                },
            );
        }
        self.inner.changes.send_modify(|v| *v += 1);
        HealthEntry {
            registry: self.clone(),
            backend,
        }
    }

    /// A backend that is enabled but cannot run (its actor could not start): shown disabled
    /// with the reason, and not holding readiness back.
    pub fn register_disabled(&self, backend: Backend, reason: &str) {
        self.register(backend, false);
        self.update(backend, true, |e| {
            e.status.state = StateLabel::Disabled;
            e.status.attempt = 0;
            e.status.reason = Some(reason.to_owned());
        });
    }

    /// Every backend's status, in a stable order.
    pub fn snapshot(&self) -> Vec<BackendStatus> {
        let now = Instant::now();
        let Ok(entries) = self.inner.entries.read() else {
            return Vec::new();
        };
        entries
            .values()
            .map(|e| {
                let mut s = e.status.clone();
                s.retry_in_ms = e
                    .retry_at
                    .map(|at| at.saturating_duration_since(now).as_millis() as u64);
                s
            })
            .collect()
    }

    /// `Ok` when every required backend is up, else one reason per backend that is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let reasons: Vec<String> = self
            .snapshot()
            .iter()
            .filter(|s| s.required && !s.is_up())
            .map(BackendStatus::summary)
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// The one-line summary for systemd's STATUS=.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.snapshot().iter().map(BackendStatus::summary).collect();
        if parts.is_empty() {
            "no backends enabled".to_owned()
        } else {
            parts.join("; ")
        }
    }

    /// Wakes the receiver on every state change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Waits until `backend` is up, at most `deadline`, through failed attempts and backoff:
    /// for a one-shot command that needs that one backend (the CLI). Answers its status then —
    /// up, or whatever it is at the deadline, or disabled (at once) — and `None` when it has
    /// no entry.
    pub async fn wait_up(&self, backend: Backend, deadline: Duration) -> Option<BackendStatus> {
        let status = || self.snapshot().into_iter().find(|s| s.backend == backend);
        let mut changes = self.subscribe();
        let settled = tokio::time::timeout(deadline, async {
            loop {
                match status() {
                    Some(s) if s.is_up() || s.state == StateLabel::Disabled => return Some(s),
                    None => return None,
                    Some(_) => {}
                }
                if changes.changed().await.is_err() {
                    return status();
                }
            }
        })
        .await;
        settled.unwrap_or_else(|_| status())
    }

    fn update(&self, backend: Backend, notify: bool, f: impl FnOnce(&mut Entry)) {
        if let Ok(mut entries) = self.inner.entries.write()
            && let Some(entry) = entries.get_mut(&backend)
        {
            f(entry);
        }
        if notify {
            self.inner.changes.send_modify(|v| *v += 1);
        }
    }
}

/// What the registry keeps of a connection after a transition; the supervisor's
/// `Connection::snapshot` fills it in. Plain data, so this module does not depend on the
/// supervisor (which depends on this one to report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSnapshot {
    pub state: StateLabel,
    /// The connect attempt in flight or next; 0 while up.
    pub attempt: u32,
    /// Times the connection was lost after having been up.
    pub restarts: u64,
    /// In backoff: when the next attempt starts.
    pub retry_at: Option<Instant>,
    /// Disabled: why.
    pub reason: Option<String>,
}

/// A backend actor's handle to its own registry entry.
#[derive(Clone)]
pub struct HealthEntry {
    registry: HealthRegistry,
    backend: Backend,
}

impl HealthEntry {
    /// Mirrors the state machine after a transition.
    pub fn record(&self, snap: ConnSnapshot) {
        self.registry.update(self.backend, true, |e| {
            if e.status.state != snap.state {
                e.status.since = now_rfc3339();
            }
            e.status.state = snap.state;
            e.status.attempt = snap.attempt;
            e.status.restarts = snap.restarts;
            e.retry_at = snap.retry_at;
            e.status.reason = snap.reason;
        });
    }

    /// The last error seen (message redacted here, whatever the caller passed).
    pub fn error(&self, code: &str, message: &str) {
        let last = LastError {
            code: code.to_owned(),
            message: redact::text(message),
        };
        self.registry
            .update(self.backend, true, |e| e.status.last_error = Some(last));
    }

    /// The last successful round trip, in milliseconds.
    pub fn latency_ms(&self) -> Option<f64> {
        let entries = self.registry.inner.entries.read().ok()?;
        entries.get(&self.backend)?.status.latency_ms
    }

    /// A successful round trip; does not wake subscribers.
    pub fn latency(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        self.registry
            .update(self.backend, false, |e| e.status.latency_ms = Some(ms));
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(state: StateLabel, attempt: u32) -> ConnSnapshot {
        ConnSnapshot {
            state,
            attempt,
            restarts: 0,
            retry_at: None,
            reason: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_up_waits_through_backoff_and_gives_up_at_the_deadline() {
        let registry = HealthRegistry::new();
        let entry = registry.register(Backend::Mongodb, false);
        let deadline = Duration::from_secs(5);

        // Down for two attempts, up at 3 s: answered then, not at the deadline.
        let writer = entry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            writer.error("connection_refused", "refused");
            writer.record(snap(StateLabel::Backoff, 2));
            tokio::time::sleep(Duration::from_secs(2)).await;
            writer.record(snap(StateLabel::Up, 0));
        });
        let started = Instant::now();
        let status = registry.wait_up(Backend::Mongodb, deadline).await;
        assert_eq!(status.map(|s| s.state), Some(StateLabel::Up));
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        // Never up: the status at the deadline, with the last error.
        entry.record(snap(StateLabel::Backoff, 3));
        let started = Instant::now();
        let status = registry
            .wait_up(Backend::Mongodb, deadline)
            .await
            .expect("registered");
        assert_eq!(started.elapsed(), deadline);
        assert_eq!(status.state, StateLabel::Backoff);
        assert_eq!(
            status.last_error.map(|e| e.code),
            Some("connection_refused".to_owned())
        );

        // Disabled, or not there at all: at once.
        registry.register_disabled(Backend::Elasticsearch, "templates: broken");
        let started = Instant::now();
        let status = registry
            .wait_up(Backend::Elasticsearch, deadline)
            .await
            .expect("registered");
        assert_eq!(status.state, StateLabel::Disabled);
        assert_eq!(status.reason.as_deref(), Some("templates: broken"));
        assert_eq!(registry.wait_up(Backend::Redis, deadline).await, None);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
