//! The audit trail of write and admin calls: an `api.audit` event for each (logged and counted
//! at once), and an `audit_logs` document written through the MongoDB actor.
//!
//! Documents wait in a bounded queue (`http.audit_queue`) and a task writes them in order; while
//! MongoDB is down they stay queued and go out once it is back (the task retries every second
//! and whenever the health registry changes). A full queue drops its oldest document and counts
//! it (`api.audit_dropped`): the API never waits on the audit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lucid_actors::HealthRegistry;
use lucid_actors::events::{self, ApiAudit, ApiAuditDropped};
use lucid_actors::mongo::{Collection, InsertJson, MongoError, MongoHandle};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One answered call, as audited.
#[derive(Debug, Clone)]
pub struct Record {
    pub token: String,
    pub method: &'static str,
    pub route: String,
    pub target: String,
    pub outcome: &'static str,
    pub status: u16,
    pub ip: Option<String>,
}

/// The queue's sending side; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    queue: Arc<Mutex<VecDeque<Value>>>,
    capacity: usize,
    wake: Arc<Notify>,
    dropped: Arc<AtomicU64>,
}

impl Audit {
    pub fn new(capacity: usize) -> Audit {
        Audit {
            queue: Arc::new(Mutex::new(VecDeque::new())),
            capacity: capacity.max(1),
            wake: Arc::new(Notify::new()),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Emits the event and queues the document.
    pub fn record(&self, r: Record) {
        events::emit(ApiAudit {
            token: r.token.clone(),
            method: r.method,
            route: r.route.clone(),
            target: r.target.clone(),
            outcome: r.outcome,
            status: u32::from(r.status),
        });
        let action = format!("api.{}", action_of(r.method));
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut doc = json!({
            "actor_id": format!("token:{}", r.token),
            "action": action,
            "target": truncate(&r.target, 512),
            "timestamp": {"$date": now},
            "details": {
                "route": r.route,
                "method": r.method,
                "outcome": r.outcome,
                "status": r.status,
            },
        });
        if let Some(ip) = r.ip {
            doc["ip"] = Value::String(truncate(&ip, 45));
        }
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() >= self.capacity {
            q.pop_front();
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            events::emit(ApiAuditDropped { dropped });
        }
        q.push_back(doc);
        drop(q);
        self.wake.notify_one();
    }

    /// Documents waiting for MongoDB.
    pub fn queued(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Documents dropped since start because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes queued documents for as long as the server runs; see the module doc.
    pub async fn run(self, mongo: Option<MongoHandle>, registry: HealthRegistry) {
        let Some(mongo) = mongo else {
            // No MongoDB in this process: the events are the whole trail.
            return;
        };
        let mut changes = registry.subscribe();
        let mut waiting = None;
        loop {
            self.flush(&mongo, &mut waiting).await;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Writes the queue front to back; stops at the first document MongoDB could not take
    /// for a reason of its own (down, slow), which stays at the front.
    async fn flush(&self, mongo: &MongoHandle, waiting: &mut Option<&'static str>) {
        loop {
            let Some(doc) = self.queue.lock().ok().and_then(|q| q.front().cloned()) else {
                return;
            };
            let res = mongo
                .call(InsertJson {
                    collection: Collection::AuditLogs,
                    document: doc,
                })
                .await;
            match res {
                Ok(_) => {}
                Err(MongoError::Invalid { .. } | MongoError::Conflict { .. }) => {
                    // Not going to succeed later either: said once, and dropped.
                    tracing::warn!(code = "invalid", "an audit document was refused");
                }
                Err(e) => {
                    // Said once per reason, so an operator sees why the trail waits.
                    if *waiting != Some(e.code()) {
                        tracing::info!(
                            code = e.code(),
                            queued = self.queued(),
                            "audit documents wait for mongodb"
                        );
                        *waiting = Some(e.code());
                    }
                    return;
                }
            }
            if let Some(code) = waiting.take() {
                tracing::info!(after = code, "audit documents are written again");
            }
            if let Ok(mut q) = self.queue.lock() {
                q.pop_front();
            }
        }
    }
}

/// `audit_logs.action` is `word.word`: the kind of call.
fn action_of(method: &str) -> &'static str {
    match method {
        "POST" => "create",
        "PATCH" | "PUT" => "update",
        "DELETE" => "delete",
        _ => "call",
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
