//! Typed events: every state change an operator cares about is one of these structs, emitted
//! through [`emit`], which logs it with stable field names and counts it by name and error code.
//!
//! The events are declared in one list below (name, level, fields); `docs/events.md` documents
//! the same list and a test keeps the two in step. Counters are readable in process with
//! [`count`] and [`counts`] (the metrics endpoint will export them); [`capture`] records the
//! events fired on the current thread — and on the threads it is handed to with
//! [`inherited`] — for tests.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::backend::Backend;

/// What every event can do; implemented by the `events!` list below, not by hand.
pub trait Event {
    /// Stable dotted name, e.g. `backend.down`.
    const NAME: &'static str;
    /// Low-cardinality error code (one of the `code()` values of the error enums), if any.
    fn code(&self) -> Option<&'static str>;
    /// Field names and rendered values, in declaration order.
    fn fields(&self) -> Vec<(&'static str, String)>;
    /// Writes the log line (target `lucid_db::event`, field `event` = the name).
    fn log(&self);
}

/// Logs, counts and (when a capture is active on this thread) records one event.
pub fn emit<E: Event>(event: E) {
    event.log();
    let code = event.code().unwrap_or("");
    if let Ok(mut counts) = COUNTS.lock() {
        *counts.entry((E::NAME, code)).or_default() += 1;
    }
    let _ = CAPTURES.try_with(|captures| {
        let mut captures = captures.borrow_mut();
        if captures.is_empty() {
            return;
        }
        // A capture dropped on its own thread is gone here too.
        captures.retain(|sink| sink.strong_count() > 0);
        let recorded = Recorded {
            name: E::NAME,
            code: event.code(),
            fields: event.fields().into_iter().collect(),
        };
        for sink in captures.iter().filter_map(Weak::upgrade) {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(recorded.clone());
        }
    });
}

/// Declares the events: a struct each, with doc comments, and the [`Event`] impl.
macro_rules! events {
    ($(
        $(#[doc = $doc:literal])*
        $ty:ident = $name:literal, $level:ident $(, code = $code:ident)? {
            $( $(#[doc = $fdoc:literal])* $field:ident : $fty:ty ),* $(,)?
        }
    )*) => {
        $(
            $(#[doc = $doc])*
            #[derive(Debug, Clone)]
            pub struct $ty { $( $(#[doc = $fdoc])* pub $field: $fty, )* }

            impl Event for $ty {
                const NAME: &'static str = $name;
                fn code(&self) -> Option<&'static str> {
                    None $( .or(Some(self.$code)) )?
                }
                fn fields(&self) -> Vec<(&'static str, String)> {
                    vec![ $( (stringify!($field), self.$field.to_string()), )* ]
                }
                fn log(&self) {
                    tracing::event!(
                        target: "lucid_db::event",
                        tracing::Level::$level,
                        event = $name,
                        $( $field = LogValue::log_value(&self.$field), )*
                        "{}", $name
                    );
                }
            }
        )*

        /// Every event: (name, level, field names). `docs/events.md` must list the same.
        pub const ALL: &[(&str, &str, &[&str])] = &[
            $( ($name, stringify!($level), &[ $( stringify!($field) ),* ]), )*
        ];
    };
}

events! {
    /// The daemon loaded its configuration and is starting its actors.
    DaemonStarted = "daemon.started", INFO {
        version: &'static str,
        /// Comma-separated layers: `defaults`, the file, the `LUCID_DB__*` names (never values).
        config_sources: String,
    }
    /// The HTTP API listens and READY=1 was sent to systemd.
    DaemonReady = "daemon.ready", INFO {
        http_addr: String,
    }
    /// A stop signal arrived; STOPPING=1 was sent and the drain begins.
    DaemonStopping = "daemon.stopping", INFO {
        signal: &'static str,
    }
    /// The drain finished (or ran out of time) and the daemon exits.
    DaemonStopped = "daemon.stopped", INFO, code = code {
        /// `drained`, or `drain_timeout` when the shutdown timeout cut the drain short.
        code: &'static str,
        elapsed_ms: u64,
    }
    /// A backend connection is up: the first connect, or a reconnect after an outage.
    BackendUp = "backend.up", INFO {
        backend: Backend,
        /// The attempt that succeeded (1 = first try).
        attempt: u32,
        /// How long the backend was unavailable; 0 for the first connect.
        down_ms: u64,
    }
    /// A backend became unavailable: once per outage (not once per failed retry).
    BackendDown = "backend.down", WARN, code = code {
        backend: Backend,
        code: &'static str,
        /// The driver's message, URLs redacted.
        error: String,
        /// Consecutive failed attempts so far.
        attempt: u32,
    }
    /// A reconnect is scheduled after a backoff delay.
    BackendRetryScheduled = "backend.retry_scheduled", INFO, code = code {
        backend: Backend,
        code: &'static str,
        /// The attempt that will run next.
        attempt: u32,
        retry_in_ms: u64,
    }
    /// A rate-limit check found Redis unavailable and answered by `redis.rate_limit_when_down`;
    /// once per outage.
    RateLimitDegraded = "ratelimit.degraded", WARN, code = code {
        /// `open` (admitting) or `closed` (refusing).
        policy: &'static str,
        code: &'static str,
    }
    /// The subscriber connection was re-opened after a reconnect and every subscription restored.
    PubSubResubscribed = "pubsub.resubscribed", INFO {
        channels: u64,
        patterns: u64,
    }
    /// Redis refused a subscription (an ACL without channel rights, say); the main
    /// connection is not affected, and the next reconnect tries again.
    PubSubSubscribeFailed = "pubsub.subscribe_failed", WARN, code = code {
        code: &'static str,
        error: String,
    }
    /// A subscriber's mailbox was full and a message was dropped; once per subscription
    /// (the count is in `pubsub_drops`).
    PubSubOverflow = "pubsub.overflow", WARN {
        topic: String,
    }
    /// A volume's usage reached `volumes.warn_percent` of its quota; once per upward crossing.
    VolumeThresholdCrossed = "volume.threshold_crossed", WARN {
        volume: String,
        percent: u64,
        warn_percent: u64,
    }
    /// A volume's usage dropped below `volumes.clear_percent` after a crossing.
    VolumeThresholdCleared = "volume.threshold_cleared", INFO {
        volume: String,
        percent: u64,
    }
    /// A volume was created (at start for a missing default one, or on request).
    VolumeCreated = "volume.created", INFO {
        volume: String,
        quota_bytes: u64,
    }
    /// A volume and its data were deleted.
    VolumeDeleted = "volume.deleted", INFO {
        volume: String,
    }
    /// A volume's data now lives at `to` (copied and verified before the switch).
    VolumeMigrated = "volume.migrated", INFO {
        volume: String,
        to: String,
    }
    /// A verify found the volume different from its sealed manifest.
    VolumeIntegrityMismatch = "volume.integrity_mismatch", WARN {
        volume: String,
        added: u64,
        missing: u64,
        changed: u64,
    }
    /// The p99 of a volume's latency probes (a 4 KiB write and fsync) reached
    /// `volumes.slow_io_threshold`: on an SD card, often the first sign of a dying card. Once
    /// per crossing.
    VolumeSlowIo = "volume.slow_io", WARN {
        volume: String,
        p99_ms: u64,
        threshold_ms: u64,
    }
    /// A volume's usage trend says it is full (`limit`: its `quota` or its `filesystem`)
    /// sooner than `volumes.fill_warning`; once per crossing.
    VolumeFilling = "volume.filling", WARN {
        volume: String,
        full_in_hours: u64,
        limit: String,
    }
    /// A snapshot of a volume was taken (`method`: `reflink` or `copy`); `removed` older
    /// snapshots went by retention.
    VolumeSnapshotCreated = "volume.snapshot_created", INFO {
        volume: String,
        snapshot: String,
        method: String,
        bytes: u64,
        removed: u64,
    }
    /// A volume's data was replaced by one of its snapshots.
    VolumeSnapshotRestored = "volume.snapshot_restored", INFO {
        volume: String,
        snapshot: String,
    }
    /// The scheduler's maintenance ran over the volumes: what it removed, the snapshots
    /// retention removed, the volumes it verified and those that failed.
    VolumeMaintained = "volume.maintained", INFO {
        volumes: u64,
        removed_files: u64,
        removed_bytes: u64,
        removed_leftovers: u64,
        snapshots_removed: u64,
        verified: u64,
        mismatched: u64,
        failed: u64,
    }
    /// The data root (`volumes.root`) cannot hold the volumes: missing, not a directory,
    /// read-only, full (below `volumes.min_free`) or not writable; once per outage.
    VolumeRootDown = "volume.root_down", WARN, code = code {
        /// `root_missing`, `root_not_directory`, `root_read_only`, `root_full`,
        /// `root_not_writable`, `root_unavailable`, `io`.
        code: &'static str,
        error: String,
    }
    /// The data root is usable again after a `volume.root_down`.
    VolumeRootUp = "volume.root_up", INFO {
        down_ms: u64,
    }
    /// The MongoDB bootstrap brought the database in line with `configs/mongodb/`
    /// (emitted only when it changed something).
    MongoBootstrapApplied = "mongo.bootstrap_applied", INFO {
        database: String,
        collections_created: u64,
        indexes_created: u64,
        validators_updated: u64,
        collections_sharded: u64,
        elapsed_ms: u64,
    }
    /// The database differs from `configs/mongodb/` in a way the bootstrap does not repair on
    /// its own (an index with the same key but other options, an index nobody declared, a
    /// validator the server cannot store); an operator decides.
    MongoDrift = "mongo.drift", WARN, code = code {
        /// `index_options`, `index_name_taken`, `index_unknown`, `text_index_differs`,
        /// `validators_not_stored`.
        code: &'static str,
        collection: String,
        detail: String,
    }
    /// The bootstrap could not finish (it runs again the next time MongoDB comes up).
    MongoBootstrapFailed = "mongo.bootstrap_failed", WARN, code = code {
        code: &'static str,
        error: String,
    }
    /// The Elasticsearch bootstrap put templates, indices or aliases in place (emitted only
    /// when it changed something).
    SearchBootstrapApplied = "search.bootstrap_applied", INFO {
        templates_put: u64,
        indices_created: u64,
        aliases_moved: u64,
        elapsed_ms: u64,
    }
    /// The Elasticsearch bootstrap could not finish (it runs again at the next reconnect).
    SearchBootstrapFailed = "search.bootstrap_failed", WARN, code = code {
        code: &'static str,
        error: String,
    }
    /// The lifecycle executor applied one action to an index.
    IlmTransition = "ilm.transition", INFO {
        index: String,
        /// `create`, `move_write_alias`, `warm`, `cold`, `delete`.
        action: &'static str,
    }
    /// A lifecycle action failed; the run goes on with the next one.
    IlmTransitionFailed = "ilm.transition_failed", WARN, code = code {
        index: String,
        action: &'static str,
        code: &'static str,
        error: String,
    }
    /// An index matching `lucid-*` whose name the lifecycle does not understand: reported,
    /// never touched.
    IlmUnparseable = "ilm.unparseable", WARN {
        index: String,
        reason: String,
    }
    /// A lifecycle run finished.
    IlmCompleted = "ilm.completed", INFO {
        applied: u64,
        failed: u64,
        /// Indices old enough to delete but kept (deletion off, or no verified backup).
        kept: u64,
        unparseable: u64,
        elapsed_ms: u64,
    }
    /// A backup run holds the backup lock and starts (its id is answered to the caller).
    BackupStarted = "backup.started", INFO {
        id: String,
        /// Comma-separated: `volumes`, and database stores recorded as skipped.
        stores: String,
        /// `cli`, `schedule` or `api`.
        trigger: &'static str,
        encrypted: bool,
    }
    /// A running backup's progress; at most once a second per run.
    BackupProgress = "backup.progress", INFO {
        id: String,
        /// The artifact being written.
        artifact: String,
        artifacts_done: u64,
        /// Source bytes read so far (every artifact).
        bytes_in: u64,
        /// Bytes stored by the artifacts already complete.
        bytes_stored: u64,
    }
    /// A run removed what interrupted runs left: `.partial` files, backups without a manifest,
    /// open multipart uploads (S3).
    BackupCleanedUp = "backup.cleaned_up", INFO {
        id: String,
        partials: u64,
        incomplete: u64,
        uploads: u64,
    }
    /// Every selected store is backed up; the manifest is written.
    BackupCompleted = "backup.completed", INFO {
        id: String,
        stores: String,
        bytes_in: u64,
        bytes_stored: u64,
        duration_ms: u64,
        encrypted: bool,
    }
    /// Some stores failed, the others are complete and usable; the manifest says which.
    BackupPartial = "backup.partial", WARN, code = code {
        id: String,
        stores: String,
        /// The stores (and volumes) that failed, comma-separated.
        failed: String,
        /// The first failure's code.
        code: &'static str,
        bytes_in: u64,
        bytes_stored: u64,
        duration_ms: u64,
        encrypted: bool,
    }
    /// Nothing usable was backed up (no manifest: the backup is not listed).
    BackupFailed = "backup.failed", ERROR, code = code {
        id: String,
        stores: String,
        code: &'static str,
        /// Redacted; names the store, artifact, key or endpoint, never a credential.
        error: String,
        duration_ms: u64,
        encrypted: bool,
    }
    /// A verification passed at `level`; recorded in verify.json.
    BackupVerified = "backup.verified", INFO {
        id: String,
        level: &'static str,
        artifacts: u64,
        duration_ms: u64,
        encrypted: bool,
    }
    /// A verification found a bad artifact (or could not open one).
    BackupVerifyFailed = "backup.verify_failed", WARN, code = code {
        id: String,
        level: &'static str,
        code: &'static str,
        /// The first failing artifact.
        artifact: String,
        /// How many artifacts failed.
        failed: u64,
        duration_ms: u64,
        encrypted: bool,
    }
    /// Retention ran (`backup prune`, the scheduler's retention job, or a backup that did not
    /// fit with `backup.prune_before`); each deletion has its own `backup.deleted`.
    BackupPruned = "backup.pruned", INFO {
        kept: u64,
        deleted: u64,
        bytes_freed: u64,
        /// A dry run deletes nothing: `deleted` is what it would delete.
        dry_run: bool,
        duration_ms: u64,
    }
    /// Retention did not run: the clock is not synchronised, or reads earlier than the newest
    /// backup (a Pi without a hardware clock may boot in the past).
    BackupPruneRefused = "backup.prune_refused", WARN, code = code {
        code: &'static str,
        error: String,
    }
    /// A backup was deleted: by retention (`rule` expired) or by hand (`rule` delete, or
    /// `delete_forced` when `--force` overrode a pin or a newest good copy).
    BackupDeleted = "backup.deleted", INFO {
        id: String,
        rule: &'static str,
        bytes_stored: u64,
    }
    /// A restore wrote every selected artifact into its store.
    BackupRestored = "backup.restored", INFO {
        id: String,
        artifacts: u64,
        /// Items written: files, documents, keys.
        written: u64,
        duration_ms: u64,
    }
    /// A restore stopped: a damaged artifact, a non-empty target, a store that refused. What
    /// an artifact's import wrote before it failed is removed by the store's import.
    BackupRestoreFailed = "backup.restore_failed", WARN, code = code {
        id: String,
        code: &'static str,
        error: String,
        duration_ms: u64,
    }
    /// A drill restored every store of a backup into scratch targets, found them equal to
    /// the artifacts, and removed them; recorded as `drilled`.
    BackupDrilled = "backup.drilled", INFO {
        id: String,
        stores: String,
        /// Items restored: files, documents, keys.
        restored: u64,
        duration_ms: u64,
    }
    /// A drill found a store that did not come back as backed up (or an artifact that does
    /// not open); the scratch targets are removed all the same.
    BackupDrillFailed = "backup.drill_failed", WARN, code = code {
        id: String,
        code: &'static str,
        store: String,
        artifact: String,
        duration_ms: u64,
    }
    /// A backup was pinned or unpinned.
    BackupPinned = "backup.pinned", INFO {
        id: String,
        pinned: bool,
    }
    /// A scheduled job's work starts (after any wait for the clock and any jitter).
    JobStarted = "job.started", INFO {
        job: &'static str,
        run_id: String,
        /// `schedule`, `catch_up` or `manual`.
        trigger: &'static str,
        /// The cron slot it runs for (RFC 3339); empty for a run by hand.
        slot: String,
    }
    /// A job's run ended well.
    JobCompleted = "job.completed", INFO {
        job: &'static str,
        run_id: String,
        duration_ms: u64,
        /// What it did, in a line (the backup id, what a prune deleted, …).
        detail: String,
    }
    /// A job's run failed; it is recorded and the scheduler goes on.
    JobFailed = "job.failed", WARN, code = code {
        job: &'static str,
        run_id: String,
        /// The failing actor's error code (`busy`, `unavailable`, `partial`, …).
        code: &'static str,
        error: String,
        duration_ms: u64,
    }
    /// A run did not happen and is recorded as skipped: its job was still running
    /// (`overlap`) or waiting for the clock (`waiting_for_clock`), the clock went back to a
    /// slot already handled (`clock_went_back`), or what the job needs does not run in this
    /// process (`not_running`).
    JobSkipped = "job.skipped", WARN, code = why {
        job: &'static str,
        /// Empty for a run by hand.
        slot: String,
        why: &'static str,
    }
    /// One run stands for slots that passed without one: the daemon was down (`downtime`,
    /// at start) or the clock jumped forward (`clock_jump`). It runs once, however many.
    JobCaughtUp = "job.caught_up", INFO {
        job: &'static str,
        /// The slot the run is for (the newest that passed).
        slot: String,
        /// Earlier slots that passed too, without a run of their own (counted up to 10,000).
        missed: u64,
        reason: &'static str,
    }
    /// A trigger found the scheduler's mailbox full and dropped its tick (the count is the
    /// total since start).
    JobTickDropped = "job.tick_dropped", WARN {
        job: &'static str,
        dropped: u64,
    }
    /// A run of a time-based job (backup, retention, lifecycle) waits: the clock is not
    /// synchronised yet, or reads earlier than the newest run record. It starts once the
    /// clock can be trusted.
    JobWaiting = "job.waiting", WARN, code = code {
        job: &'static str,
        slot: String,
        /// `clock_unsynchronised` or `clock_behind`.
        code: &'static str,
        error: String,
    }
    /// A job's run record file could not be read: it was set aside (renamed to `path`) and
    /// the job starts with no history.
    JobHistorySetAside = "job.history_set_aside", WARN, code = code {
        job: &'static str,
        /// `records_corrupt` or `records_unusable`.
        code: &'static str,
        /// Where the file is now; empty when it could not be moved.
        path: String,
        error: String,
    }
    /// The scheduler's `health_summary` job: every backend's state in one event.
    HealthSummary = "health.summary", INFO {
        /// Backends up.
        up: u64,
        /// Backends registered (enabled or disabled).
        total: u64,
        /// `redis up; mongodb backoff (connection_refused), retry 3 in 2.0s; …`
        summary: String,
    }
    /// The watchdog ping was withheld because the supervision loop did not answer in time.
    WatchdogSkipped = "watchdog.skipped", WARN, code = code {
        code: &'static str,
        error: String,
    }
    /// A write or admin call of the HTTP API was answered (never the token itself).
    ApiAudit = "api.audit", INFO, code = outcome {
        /// The token's name.
        token: String,
        method: &'static str,
        /// The route's pattern (`/api/v1/database/mongodb/{collection}`).
        route: String,
        /// What it acted on (a collection, a key, a backup id).
        target: String,
        /// `ok`, or the error code answered.
        outcome: &'static str,
        status: u32,
    }
    /// An audit document could not be queued for MongoDB (the queue held `http.audit_queue`):
    /// the oldest was dropped. `dropped` is the total since start.
    ApiAuditDropped = "api.audit_dropped", WARN {
        dropped: u64,
    }
    /// The daemon (re)read `http.tokens_file`: at start and whenever it changed.
    ApiTokensLoaded = "api.tokens_loaded", INFO, code = code {
        /// `ok`, or `tokens_unreadable` (the tokens held before stay in use).
        code: &'static str,
        tokens: u64,
    }
}

/// How a field type is handed to `tracing`: numbers stay numbers (JSON numbers, journald
/// integers), everything else is text.
pub trait LogValue {
    type Value<'a>: tracing::Value
    where
        Self: 'a;
    fn log_value(&self) -> Self::Value<'_>;
}

impl LogValue for u64 {
    type Value<'a> = u64;
    fn log_value(&self) -> u64 {
        *self
    }
}

impl LogValue for u32 {
    type Value<'a> = u64;
    fn log_value(&self) -> u64 {
        u64::from(*self)
    }
}

impl LogValue for bool {
    type Value<'a> = bool;
    fn log_value(&self) -> bool {
        *self
    }
}

impl LogValue for &'static str {
    type Value<'a> = &'static str;
    fn log_value(&self) -> &'static str {
        self
    }
}

impl LogValue for String {
    type Value<'a> = &'a str;
    fn log_value(&self) -> &str {
        self
    }
}

impl LogValue for Backend {
    type Value<'a> = &'static str;
    fn log_value(&self) -> &'static str {
        self.as_str()
    }
}

/// One captured event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub name: &'static str,
    pub code: Option<&'static str>,
    pub fields: BTreeMap<&'static str, String>,
}

impl Recorded {
    /// A field's rendered value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

type Sink = Arc<Mutex<Vec<Recorded>>>;

thread_local! {
    /// The captures this thread records into. Weak: the [`Capture`] owns its sink, so a
    /// capture handed to another thread ends when the test drops it, not when that thread ends.
    static CAPTURES: RefCell<Vec<Weak<Mutex<Vec<Recorded>>>>> = const { RefCell::new(Vec::new()) };
}

static COUNTS: Mutex<BTreeMap<(&'static str, &'static str), u64>> = Mutex::new(BTreeMap::new());

/// Records the events emitted on this thread, and on the threads it is handed to with
/// [`inherited`], until dropped. Each actor started with [`crate::start`] runs on a thread of
/// its own that inherits the captures open when it starts: open the capture first, then start
/// the actors, and it sees their events.
pub fn capture() -> Capture {
    let sink: Sink = Arc::default();
    CAPTURES.with(|c| c.borrow_mut().push(Arc::downgrade(&sink)));
    Capture { sink }
}

/// The captures active on this thread, to [`Inherited::install`] on another one (an actor's
/// thread does at its start, a worker thread may): what fires there is recorded by the same
/// captures, so a capture is scoped to a test, not to the thread the test happens to run on.
pub fn inherited() -> Inherited {
    Inherited(CAPTURES.with(|c| c.borrow().clone()))
}

/// See [`inherited`].
#[derive(Clone, Default)]
pub struct Inherited(Vec<Weak<Mutex<Vec<Recorded>>>>);

impl Inherited {
    /// Records this thread's events into the inherited captures too (while they live).
    pub fn install(self) {
        let _ = CAPTURES.try_with(|c| {
            let mut c = c.borrow_mut();
            for sink in self.0 {
                if !c.iter().any(|s| s.ptr_eq(&sink)) {
                    c.push(sink);
                }
            }
        });
    }
}

/// A running capture; see [`capture`].
pub struct Capture {
    sink: Sink,
}

impl Capture {
    /// Everything recorded so far, oldest first.
    pub fn events(&self) -> Vec<Recorded> {
        self.sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The recorded events with this name.
    pub fn named(&self, name: &str) -> Vec<Recorded> {
        self.sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|e| e.name == name)
            .cloned()
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let me = Arc::downgrade(&self.sink);
        let _ = CAPTURES.try_with(|c| c.borrow_mut().retain(|s| !s.ptr_eq(&me)));
    }
}

/// How many times an event fired in this process, over all codes.
pub fn count(name: &str) -> u64 {
    COUNTS
        .lock()
        .map(|c| {
            c.iter()
                .filter(|((n, _), _)| *n == name)
                .map(|(_, v)| v)
                .sum()
        })
        .unwrap_or(0)
}

/// Every counter: (name, code or "", count).
pub fn counts() -> Vec<(&'static str, &'static str, u64)> {
    COUNTS
        .lock()
        .map(|c| c.iter().map(|((n, code), v)| (*n, *code, *v)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_counts_and_captures() {
        let cap = capture();
        let before = count("backend.down");
        emit(BackendDown {
            backend: Backend::Redis,
            code: "connection_refused",
            error: "Connection refused".into(),
            attempt: 1,
        });
        assert_eq!(count("backend.down"), before + 1);
        assert!(
            counts()
                .iter()
                .any(|(n, c, v)| *n == "backend.down" && *c == "connection_refused" && *v >= 1)
        );
        let got = cap.named("backend.down");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].code, Some("connection_refused"));
        assert_eq!(got[0].field("backend"), Some("redis"));
        assert_eq!(got[0].field("attempt"), Some("1"));
        drop(cap);
        // nothing is recorded once the capture is gone
        let cap2 = capture();
        drop(cap2);
        emit(DaemonReady {
            http_addr: "127.0.0.1:1".into(),
        });
    }

    #[test]
    fn a_capture_handed_to_another_thread_sees_its_events_until_dropped() {
        let ready = || DaemonReady {
            http_addr: "127.0.0.1:2".into(),
        };
        let cap = capture();
        let other = capture();
        drop(other);
        let handed = inherited();
        let worker = std::thread::spawn(move || {
            // Not installed yet: this thread's events are its own.
            emit(ready());
            handed.install();
            emit(ready());
        });
        worker.join().expect("worker");
        assert_eq!(cap.named("daemon.ready").len(), 1, "only after install");

        // A capture dropped on the test's thread ends on every thread it was handed to.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let handed = inherited();
        let worker = std::thread::spawn(move || {
            handed.install();
            rx.recv().expect("go");
            emit(ready());
            done_tx.send(()).expect("done");
        });
        let sink = Arc::downgrade(&cap.sink);
        drop(cap);
        tx.send(()).expect("go");
        done_rx.recv().expect("done");
        worker.join().expect("worker");
        assert!(
            sink.upgrade().is_none(),
            "nothing keeps a dropped capture alive"
        );
    }

    #[test]
    fn names_are_unique_and_dotted() {
        let mut names: Vec<&str> = ALL.iter().map(|(n, _, _)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        for n in names {
            assert!(
                n.split('.').count() == 2
                    && n.chars()
                        .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'),
                "{n}"
            );
        }
    }
}
