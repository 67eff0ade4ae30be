//! The process's Prometheus metrics: one registry, the instruments every actor records into,
//! and the text exposition `/metrics` serves (docs/metrics.md lists every series).
//!
//! One registry per process, not per [`crate::start`]: a daemon is one process, and the call
//! path records from any thread without a handle to thread through every actor. What the
//! series mean:
//!
//! - backend calls: counted, their errors by code and their latency, per backend and
//!   operation, once in the shared call path (`supervisor::link`), not in each actor;
//! - `lucid_db_backend_up`: read from the health registry when the text is rendered, so it is
//!   never out of step with `/health`;
//! - backups (per store), volume usage and quota, scheduler job runs, HTTP requests.
//!
//! Cheap on the hot path: label sets are `&'static str` (the backend, the operation's type
//! name, the error's code), so a call allocates nothing; a label set is copied into the
//! family once, the first time it is seen. With `metrics.enabled = false` every recording
//! function returns at its first load of one flag.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::backend::Backend;
use crate::health::HealthRegistry;

/// The `Content-Type` of [`render`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    backend: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    backend: &'static str,
    operation: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    volume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

type Histograms<S> = Family<S, Histogram, fn() -> Histogram>;
type TimestampGauge = Gauge<f64, AtomicU64>;

/// The instruments, registered once.
struct Metrics {
    registry: Registry,
    backend_up: Family<BackendLabels, Gauge>,
    calls: Family<OpLabels, Counter>,
    call_errors: Family<ErrorLabels, Counter>,
    call_seconds: Histograms<OpLabels>,
    backup_last_success: Family<StoreLabels, TimestampGauge>,
    backup_source_bytes: Family<StoreLabels, Counter>,
    backup_stored_bytes: Family<StoreLabels, Counter>,
    backup_seconds: Histograms<StoreLabels>,
    backup_runs: Family<OutcomeLabels, Counter>,
    volume_used: Family<VolumeLabels, Gauge>,
    volume_quota: Family<VolumeLabels, Gauge>,
    volume_io: VolumeIoGauges,
    job_runs: Family<JobLabels, Counter>,
    http_requests: Family<RequestLabels, Counter>,
    http_seconds: Histograms<RouteLabels>,
}

/// The I/O figures of a volume's device and its latency probe, one gauge family each.
#[derive(Default)]
struct VolumeIoGauges {
    available: Family<VolumeLabels, Gauge>,
    read_bytes: Family<VolumeLabels, TimestampGauge>,
    write_bytes: Family<VolumeLabels, TimestampGauge>,
    reads: Family<VolumeLabels, TimestampGauge>,
    writes: Family<VolumeLabels, TimestampGauge>,
    busy: Family<VolumeLabels, TimestampGauge>,
    probe_p50: Family<VolumeLabels, TimestampGauge>,
    probe_p99: Family<VolumeLabels, TimestampGauge>,
}

/// Backend calls: 0.5 ms to about 16 s, doubling.
fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Backups of one store: 1 s to about 4.5 h, by fours.
fn backup_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 8))
}

/// HTTP requests: 1 ms to about 16 s, doubling.
fn http_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            backend_up: Family::default(),
            calls: Family::default(),
            call_errors: Family::default(),
            call_seconds: Family::new_with_constructor(call_buckets),
            backup_last_success: Family::default(),
            backup_source_bytes: Family::default(),
            backup_stored_bytes: Family::default(),
            backup_seconds: Family::new_with_constructor(backup_buckets),
            backup_runs: Family::default(),
            volume_used: Family::default(),
            volume_quota: Family::default(),
            volume_io: VolumeIoGauges::default(),
            job_runs: Family::default(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(http_buckets),
        };
        let mut r = m.registry;
        // Counters get their `_total` from the encoder.
        r.register(
            "lucid_db_backend_up",
            "1 while the backend's connection is up (the data root's probe passes, for volumes), else 0",
            m.backend_up.clone(),
        );
        r.register(
            "lucid_db_backend_calls",
            "Calls to a backend through its actor, by operation",
            m.calls.clone(),
        );
        r.register(
            "lucid_db_backend_call_errors",
            "Backend calls that failed, by operation and error code",
            m.call_errors.clone(),
        );
        r.register(
            "lucid_db_backend_call_duration_seconds",
            "Time a backend call took, from the call to its answer",
            m.call_seconds.clone(),
        );
        r.register(
            "lucid_db_backup_last_success_timestamp_seconds",
            "When the store's part of a backup last completed (Unix time), since the daemon started",
            m.backup_last_success.clone(),
        );
        r.register(
            "lucid_db_backup_source_bytes",
            "Bytes read from the store by completed backups",
            m.backup_source_bytes.clone(),
        );
        r.register(
            "lucid_db_backup_stored_bytes",
            "Bytes written to backup storage for the store (compressed, encrypted)",
            m.backup_stored_bytes.clone(),
        );
        r.register(
            "lucid_db_backup_duration_seconds",
            "Time the store's part of a backup took",
            m.backup_seconds.clone(),
        );
        r.register(
            "lucid_db_backup_runs",
            "Backup runs by outcome (complete, partial, failed)",
            m.backup_runs.clone(),
        );
        r.register(
            "lucid_db_volume_used_bytes",
            "Bytes the volume's files use on disk, as last measured",
            m.volume_used.clone(),
        );
        r.register(
            "lucid_db_volume_quota_bytes",
            "The volume's quota",
            m.volume_quota.clone(),
        );
        let io = &m.volume_io;
        r.register(
            "lucid_db_volume_io_available",
            "1 when the volume's block device was found and its counters read at the last I/O sample, else 0",
            io.available.clone(),
        );
        r.register(
            "lucid_db_volume_io_read_bytes_per_second",
            "Bytes read per second from the volume's device (the whole device's) over the last I/O sample",
            io.read_bytes.clone(),
        );
        r.register(
            "lucid_db_volume_io_write_bytes_per_second",
            "Bytes written per second to the volume's device over the last I/O sample",
            io.write_bytes.clone(),
        );
        r.register(
            "lucid_db_volume_io_read_ops_per_second",
            "Read operations per second on the volume's device over the last I/O sample",
            io.reads.clone(),
        );
        r.register(
            "lucid_db_volume_io_write_ops_per_second",
            "Write operations per second on the volume's device over the last I/O sample",
            io.writes.clone(),
        );
        r.register(
            "lucid_db_volume_io_busy_ratio",
            "Share of the last I/O sample's interval the volume's device had I/O in flight, 0 to 1",
            io.busy.clone(),
        );
        r.register(
            "lucid_db_volume_io_probe_p50_seconds",
            "Median of the volume's recent latency probes (a 4 KiB write and fsync)",
            io.probe_p50.clone(),
        );
        r.register(
            "lucid_db_volume_io_probe_p99_seconds",
            "99th percentile of the volume's recent latency probes",
            io.probe_p99.clone(),
        );
        r.register(
            "lucid_db_scheduler_job_runs",
            "Scheduler job runs by outcome (ok, failed, skipped)",
            m.job_runs.clone(),
        );
        r.register(
            "lucid_db_http_requests",
            "HTTP requests by route template, method and status",
            m.http_requests.clone(),
        );
        r.register(
            "lucid_db_http_request_duration_seconds",
            "Time an HTTP request took, by route template",
            m.http_seconds.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
static ENABLED: AtomicBool = AtomicBool::new(true);

/// `metrics.enabled`: when off, nothing is recorded (and the daemon serves no `/metrics`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether recording is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn metrics() -> Option<&'static Metrics> {
    enabled().then(|| &*METRICS)
}

/// The operation label of message type `M`: its type name without path or generics
/// (`lucid_actors::redis::cache::CacheGet` → `CacheGet`). A `&'static str`, found without
/// allocating.
pub fn op_name<M: ?Sized>() -> &'static str {
    let full = std::any::type_name::<M>();
    let plain = full.split('<').next().unwrap_or(full);
    plain.rsplit("::").next().unwrap_or(plain)
}

/// One backend call ended: counted, its error by `error` code, and its time when it reached
/// the backend (`elapsed`; `None` for a call answered at once, unavailable or refused input).
pub fn backend_call(
    backend: Backend,
    operation: &'static str,
    elapsed: Option<Duration>,
    error: Option<&'static str>,
) {
    let Some(m) = metrics() else { return };
    let labels = OpLabels {
        backend: backend.as_str(),
        operation,
    };
    m.calls.get_or_create(&labels).inc();
    if let Some(elapsed) = elapsed {
        m.call_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
    if let Some(code) = error {
        m.call_errors
            .get_or_create(&ErrorLabels {
                backend: labels.backend,
                operation,
                code,
            })
            .inc();
    }
}

/// What one store's part of a backup did.
#[derive(Debug, Clone, Copy)]
pub struct StoreBackup<'a> {
    pub store: &'a str,
    pub complete: bool,
    /// When it ended (Unix seconds).
    pub ended_unix: f64,
    pub elapsed: Option<Duration>,
    pub source_bytes: u64,
    pub stored_bytes: u64,
}

/// One store's part of a backup ended.
pub fn backup_store(b: StoreBackup<'_>) {
    let Some(m) = metrics() else { return };
    let labels = StoreLabels {
        store: b.store.to_owned(),
    };
    m.backup_source_bytes
        .get_or_create(&labels)
        .inc_by(b.source_bytes);
    m.backup_stored_bytes
        .get_or_create(&labels)
        .inc_by(b.stored_bytes);
    if let Some(elapsed) = b.elapsed {
        m.backup_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
    if b.complete {
        m.backup_last_success
            .get_or_create(&labels)
            .set(b.ended_unix);
    }
}

/// A backup run ended: `complete`, `partial` or `failed`.
pub fn backup_run(outcome: &'static str) {
    let Some(m) = metrics() else { return };
    m.backup_runs
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
}

/// A volume's usage was measured (or adjusted by the actor's own writes).
pub fn volume_usage(volume: &str, used_bytes: u64, quota_bytes: u64) {
    let Some(m) = metrics() else { return };
    let labels = VolumeLabels {
        volume: volume.to_owned(),
    };
    m.volume_used
        .get_or_create(&labels)
        .set(i64::try_from(used_bytes).unwrap_or(i64::MAX));
    m.volume_quota
        .get_or_create(&labels)
        .set(i64::try_from(quota_bytes).unwrap_or(i64::MAX));
}

/// One I/O sample of a volume (`VolumeStats`): rates over the sample's interval, `None`
/// where its device was not found; probe percentiles in seconds, `None` before any probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct VolumeIo {
    pub read_bytes_per_s: Option<f64>,
    pub write_bytes_per_s: Option<f64>,
    pub reads_per_s: Option<f64>,
    pub writes_per_s: Option<f64>,
    /// 0–1.
    pub busy_ratio: Option<f64>,
    pub probe_p50_s: Option<f64>,
    pub probe_p99_s: Option<f64>,
}

/// A volume's I/O was sampled. A figure that is unavailable has its series removed rather
/// than left at a stale value; `lucid_db_volume_io_available` says whether the device's
/// figures are there.
pub fn volume_io(volume: &str, io: VolumeIo) {
    let Some(m) = metrics() else { return };
    let labels = VolumeLabels {
        volume: volume.to_owned(),
    };
    let g = &m.volume_io;
    let set = |family: &Family<VolumeLabels, TimestampGauge>, value: Option<f64>| match value {
        Some(v) => {
            family.get_or_create(&labels).set(v);
        }
        None => {
            family.remove(&labels);
        }
    };
    set(&g.read_bytes, io.read_bytes_per_s);
    set(&g.write_bytes, io.write_bytes_per_s);
    set(&g.reads, io.reads_per_s);
    set(&g.writes, io.writes_per_s);
    set(&g.busy, io.busy_ratio);
    set(&g.probe_p50, io.probe_p50_s);
    set(&g.probe_p99, io.probe_p99_s);
    g.available
        .get_or_create(&labels)
        .set(i64::from(io.read_bytes_per_s.is_some()));
}

/// A scheduler job's run was recorded: `ok`, `failed` or `skipped`.
pub fn job_run(job: &'static str, outcome: &'static str) {
    let Some(m) = metrics() else { return };
    m.job_runs.get_or_create(&JobLabels { job, outcome }).inc();
}

/// An HTTP request was answered. `route` is the route's template (`/api/v1/…/{id}`), never the
/// raw path, or `unmatched`: the label's values stay few.
pub fn http_request(route: &str, method: &'static str, status: u16, elapsed: Duration) {
    let Some(m) = metrics() else { return };
    m.http_requests
        .get_or_create(&RequestLabels {
            route: route.to_owned(),
            method,
            status,
        })
        .inc();
    m.http_seconds
        .get_or_create(&RouteLabels {
            route: route.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
}

/// The text `/metrics` serves, with `lucid_db_backend_up` read from `health` now.
pub fn render(health: &HealthRegistry) -> String {
    let m = &*METRICS;
    for status in health.snapshot() {
        m.backend_up
            .get_or_create(&BackendLabels {
                backend: status.backend.as_str(),
            })
            .set(i64::from(status.is_up()));
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &m.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of `text` for `series` with every label in `labels`, and its value.
    fn value(text: &str, series: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| {
                l.split(['{', ' ']).next() == Some(series) && labels.iter().all(|x| l.contains(x))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    struct CacheGet;
    struct Wrapped<T>(T);

    #[test]
    fn operation_names_are_the_bare_type_names() {
        assert_eq!(op_name::<CacheGet>(), "CacheGet");
        assert_eq!(op_name::<Wrapped<CacheGet>>(), "Wrapped");
        assert_eq!(op_name::<u32>(), "u32");
    }

    #[test]
    fn calls_errors_and_latency_are_rendered_per_backend_and_operation() {
        let health = HealthRegistry::new();
        let redis = health.register(Backend::Redis, true);
        backend_call(
            Backend::Redis,
            "CacheGet",
            Some(Duration::from_millis(3)),
            None,
        );
        backend_call(
            Backend::Redis,
            "CacheGet",
            Some(Duration::from_millis(900)),
            Some("deadline_exceeded"),
        );
        backend_call(Backend::Mongodb, "Find", None, Some("unavailable"));
        let text = render(&health);
        let get = ["backend=\"redis\"", "operation=\"CacheGet\""];
        assert_eq!(
            value(&text, "lucid_db_backend_calls_total", &get),
            Some(2.0)
        );
        let deadline = ["operation=\"CacheGet\"", "code=\"deadline_exceeded\""];
        assert_eq!(
            value(&text, "lucid_db_backend_call_errors_total", &deadline),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "lucid_db_backend_call_duration_seconds_count", &get),
            Some(2.0)
        );
        // 3 ms falls in the 4 ms bucket; 900 ms does not.
        let le = [get[0], get[1], "le=\"0.004\""];
        assert_eq!(
            value(&text, "lucid_db_backend_call_duration_seconds_bucket", &le),
            Some(1.0)
        );
        // A call answered at once is counted, and has no latency.
        let find = ["backend=\"mongodb\"", "operation=\"Find\""];
        assert_eq!(
            value(&text, "lucid_db_backend_calls_total", &find),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "lucid_db_backend_call_duration_seconds_count", &find),
            None
        );
        // Up is read from the registry at render time.
        assert_eq!(
            value(&text, "lucid_db_backend_up", &["backend=\"redis\""]),
            Some(0.0)
        );
        drop(redis);
    }

    #[test]
    fn backups_volumes_jobs_and_requests_are_rendered_with_their_labels() {
        backup_store(StoreBackup {
            store: "volumes:chunks",
            complete: true,
            ended_unix: 1_700_000_000.0,
            elapsed: Some(Duration::from_secs(5)),
            source_bytes: 1000,
            stored_bytes: 400,
        });
        backup_store(StoreBackup {
            store: "redis",
            complete: false,
            ended_unix: 1_700_000_100.0,
            elapsed: None,
            source_bytes: 0,
            stored_bytes: 0,
        });
        backup_run("partial");
        volume_usage("chunks", 4096, 1 << 20);
        volume_io(
            "chunks",
            VolumeIo {
                read_bytes_per_s: Some(2048.0),
                write_bytes_per_s: Some(512.0),
                reads_per_s: Some(4.0),
                writes_per_s: Some(1.0),
                busy_ratio: Some(0.25),
                probe_p50_s: Some(0.002),
                probe_p99_s: Some(0.03),
            },
        );
        // A volume on tmpfs: no device, only its probe.
        volume_io(
            "scratch",
            VolumeIo {
                probe_p50_s: Some(0.001),
                probe_p99_s: Some(0.001),
                ..VolumeIo::default()
            },
        );
        job_run("backup", "ok");
        http_request("/health", "GET", 200, Duration::from_millis(2));
        let text = render(&HealthRegistry::new());
        let chunks = ["store=\"volumes:chunks\""];
        assert_eq!(
            value(
                &text,
                "lucid_db_backup_last_success_timestamp_seconds",
                &chunks
            ),
            Some(1_700_000_000.0)
        );
        // A store that failed does not move its last success.
        assert_eq!(
            value(
                &text,
                "lucid_db_backup_last_success_timestamp_seconds",
                &["store=\"redis\""]
            ),
            None
        );
        assert_eq!(
            value(&text, "lucid_db_backup_stored_bytes_total", &chunks),
            Some(400.0)
        );
        assert_eq!(
            value(
                &text,
                "lucid_db_backup_runs_total",
                &["outcome=\"partial\""]
            ),
            Some(1.0)
        );
        let v = ["volume=\"chunks\""];
        assert_eq!(value(&text, "lucid_db_volume_used_bytes", &v), Some(4096.0));
        assert_eq!(
            value(&text, "lucid_db_volume_quota_bytes", &v),
            Some(1048576.0)
        );
        assert_eq!(value(&text, "lucid_db_volume_io_available", &v), Some(1.0));
        assert_eq!(
            value(&text, "lucid_db_volume_io_read_bytes_per_second", &v),
            Some(2048.0)
        );
        assert_eq!(
            value(&text, "lucid_db_volume_io_busy_ratio", &v),
            Some(0.25)
        );
        assert_eq!(
            value(&text, "lucid_db_volume_io_probe_p99_seconds", &v),
            Some(0.03)
        );
        let scratch = ["volume=\"scratch\""];
        assert_eq!(
            value(&text, "lucid_db_volume_io_available", &scratch),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "lucid_db_volume_io_read_bytes_per_second", &scratch),
            None
        );
        assert_eq!(
            value(&text, "lucid_db_volume_io_probe_p50_seconds", &scratch),
            Some(0.001)
        );
        assert_eq!(
            value(
                &text,
                "lucid_db_scheduler_job_runs_total",
                &["job=\"backup\"", "outcome=\"ok\""]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "lucid_db_http_requests_total",
                &["route=\"/health\"", "method=\"GET\"", "status=\"200\""]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn nothing_is_recorded_while_disabled() {
        set_enabled(false);
        job_run("verify", "ok");
        set_enabled(true);
        let text = render(&HealthRegistry::new());
        assert_eq!(
            value(
                &text,
                "lucid_db_scheduler_job_runs_total",
                &["job=\"verify\""]
            ),
            None
        );
    }
}
