//! The Prometheus metrics against the real thing: calls to a real Redis and MongoDB counted,
//! timed and their errors coded in the shared call path; and the daemon's `/metrics` after a
//! backup, scheduler runs and a volume usage refresh of its own, every named series there
//! with a non-zero value, in text that parses as the Prometheus exposition format; with
//! `metrics.enabled = false`, `/metrics` answers 404 while `/health` and the watchdog go on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use lucid_actors::mongo::Collection;
use lucid_actors::mongo::bson::{DateTime, doc};
use lucid_actors::mongo::{FindOne, InsertOne};
use lucid_actors::redis::Key;
use lucid_actors::scheduler::records;
use lucid_actors::scheduler::{JobName, RunOutcome, RunRecord, RunTrigger};
use lucid_actors::{Roles, metrics};
use lucid_testkit::{Daemon, http_get, mongo, redis};

use crate::common::fast_mongo_config;

const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");

/// A label's name and value.
type Label = (String, String);

/// One sample of the exposition: its series name, labels and value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `text` as the Prometheus text format 0.0.4, strictly enough to catch what a scraper
/// would refuse: `# HELP`/`# TYPE` lines with a valid name and a known type, one `TYPE` per
/// family before its samples, sample names that belong to the family (`_bucket`, `_sum`,
/// `_count` for histograms), label names and quoted, escaped values, float values; and for
/// each histogram, cumulative buckets ending in `+Inf` equal to `_count`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn value(v: &str) -> f64 {
        match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("value {v:?} is not a float: {e}")),
        }
    }
    assert!(text.ends_with('\n'), "the text ends with a newline");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(valid_name(name), "bad metric name in {line:?}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "unknown type in {line:?}"
                );
                assert!(
                    types.insert(name.to_owned(), t.to_owned()).is_none(),
                    "second TYPE for {name}"
                );
            } else {
                assert_eq!(kind, "HELP", "unknown comment {line:?}");
            }
            continue;
        }
        assert!(!line.is_empty(), "empty line in the exposition");
        let (series, val) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(valid_name(key), "bad label name {key:?} in {line:?}");
                    let mut v = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => v.push('\n'),
                                Some((_, c @ ('\\' | '"'))) => v.push(c),
                                other => panic!("bad escape {other:?} in {line:?}"),
                            },
                            Some((i, '"')) => break i,
                            Some((_, c)) => v.push(c),
                            None => panic!("unterminated label value in {line:?}"),
                        }
                    };
                    labels.insert(key.to_owned(), v);
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                (name, labels)
            }
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        let family = types
            .keys()
            .filter(|f| {
                name == f.as_str()
                    || (types[*f] == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(f.as_str())))
            })
            .max_by_key(|f| f.len());
        assert!(family.is_some(), "sample {name} before or without its TYPE");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value(val),
        });
    }
    // Histograms: per label set, buckets cumulative, +Inf equal to _count.
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        // Per label set (without `le`): its (le, count) pairs in order.
        let mut buckets: BTreeMap<Vec<Label>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let le = value(&s.labels["le"]);
            let key: Vec<_> = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            buckets.entry(key).or_default().push((le, s.value));
        }
        for (key, bs) in buckets {
            assert!(bs.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
            let count = samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count")
                        && s.labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .eq(key.clone())
                })
                .unwrap_or_else(|| panic!("{family} {key:?} has no _count"));
            let last = bs.last().expect("a bucket");
            assert!(last.0.is_infinite(), "{family} {key:?} ends in +Inf");
            assert_eq!(last.1, count.value, "{family} {key:?}: +Inf == _count");
        }
    }
    samples
}

/// The largest value of `name` among the samples whose labels include `labels`.
fn max_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .reduce(f64::max)
}

async fn wait_until(limit: Duration, what: &str, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn real_redis_and_mongodb_calls_are_counted_timed_and_their_errors_coded() {
    let (redis_server, mongo_server) = (redis(), mongo());
    let mut cfg = fast_mongo_config(&mongo_server.url());
    cfg.redis.enabled = true;
    cfg.redis.url = redis_server.url().into();
    let handles = lucid_actors::start(&cfg, Roles::SIBLING);
    let (r, m) = (
        handles.redis.clone().expect("redis"),
        handles.mongo.clone().expect("mongodb"),
    );
    wait_until(Duration::from_secs(20), "both up and bootstrapped", || {
        handles.registry.readiness().is_ok() && m.last_bootstrap().is_some()
    })
    .await;

    let key = Key::new("cache", "profile", "42").expect("key");
    for n in 0..3 {
        r.cache_set(&key, &n, None).await.expect("set");
    }
    // Refused input: counted as an error with its code, and nothing was sent.
    r.cache_set(&key, &1, Some(Duration::ZERO))
        .await
        .expect_err("ttl 0");
    let user = doc! {
        "user_id": "u1", "email": "u1@example.com", "role": "user", "status": "active",
        "created_at": DateTime::from_millis(1_700_000_000_000),
    };
    m.call(InsertOne {
        collection: Collection::Users,
        document: user,
    })
    .await
    .expect("insert");
    m.call(FindOne {
        collection: Collection::Users,
        filter: doc! {"user_id": "u1"},
        projection: None,
    })
    .await
    .expect("find")
    .expect("found");

    let text = metrics::render(&handles.registry);
    let s = parse_exposition(&text);
    let calls = "lucid_db_backend_calls_total";
    let seconds = "lucid_db_backend_call_duration_seconds_count";
    let redis_set = [("backend", "redis"), ("operation", "CacheSet")];
    // Three sets and the refused one.
    assert_eq!(max_of(&s, calls, &redis_set), Some(4.0), "{text}");
    // Only the three that reached Redis were timed.
    assert_eq!(max_of(&s, seconds, &redis_set), Some(3.0), "{text}");
    assert_eq!(
        max_of(
            &s,
            "lucid_db_backend_call_errors_total",
            &[
                ("backend", "redis"),
                ("operation", "CacheSet"),
                ("code", "invalid")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    for op in ["InsertOne", "FindOne"] {
        let labels = [("backend", "mongodb"), ("operation", op)];
        assert_eq!(max_of(&s, calls, &labels), Some(1.0), "{op}: {text}");
        assert_eq!(max_of(&s, seconds, &labels), Some(1.0), "{op}: {text}");
    }
    for backend in ["redis", "mongodb"] {
        assert_eq!(
            max_of(&s, "lucid_db_backend_up", &[("backend", backend)]),
            Some(1.0),
            "{text}"
        );
    }
    assert!(
        handles.shutdown(Duration::from_secs(2)).await.is_empty(),
        "actors must quit"
    );
}

/// The volume actor's operations are counted, timed and their errors coded in the same
/// series as the other stores' calls (`backend="volumes"`, the message's name).
#[actix_rt::test]
async fn volume_operations_are_counted_timed_and_their_errors_coded() {
    use lucid_actors::volume::{
        CreateVolume, InspectVolume, ResizeVolume, TakeSnapshot, Verify, VolumeActor, VolumeName,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = lucid_actors::Config::defaults().expect("defaults");
    c.volumes.root = dir.path().to_path_buf();
    let v = VolumeActor::start_with(&c.volumes, &c.supervisor);
    let name = VolumeName::new("ledger").expect("name");
    v.call(CreateVolume {
        name: name.clone(),
        quota: None,
        kind: None,
        labels: Default::default(),
    })
    .await
    .expect("create");
    std::fs::write(dir.path().join("ledger/a.txt"), "one").expect("write");
    for _ in 0..2 {
        v.call(Verify {
            name: name.clone(),
            update: false,
        })
        .await
        .expect("verify");
    }
    v.call(TakeSnapshot {
        name: name.clone(),
        snapshot: Some("s1".into()),
        label: None,
        allow_live: false,
    })
    .await
    .expect("snapshot");
    // Refused: a quota of nothing, a volume that is not there.
    v.call(ResizeVolume {
        name: name.clone(),
        quota: lucid_actors::config::ByteSize(0),
    })
    .await
    .expect_err("quota 0");
    v.call(InspectVolume {
        name: VolumeName::new("nowhere").expect("name"),
    })
    .await
    .expect_err("no such volume");

    let text = metrics::render(&lucid_actors::HealthRegistry::new());
    let s = parse_exposition(&text);
    let (calls, seconds) = (
        "lucid_db_backend_calls_total",
        "lucid_db_backend_call_duration_seconds_count",
    );
    for (op, n) in [
        ("CreateVolume", 1.0),
        ("Verify", 2.0),
        ("TakeSnapshot", 1.0),
    ] {
        let labels = [("backend", "volumes"), ("operation", op)];
        assert_eq!(max_of(&s, calls, &labels), Some(n), "{op}: {text}");
        assert_eq!(max_of(&s, seconds, &labels), Some(n), "{op}: {text}");
    }
    let errors = "lucid_db_backend_call_errors_total";
    for (op, code) in [("ResizeVolume", "invalid"), ("InspectVolume", "not_found")] {
        let labels = [("backend", "volumes"), ("operation", op), ("code", code)];
        assert_eq!(max_of(&s, errors, &labels), Some(1.0), "{op}: {text}");
    }
    assert_eq!(
        max_of(
            &s,
            errors,
            &[("backend", "volumes"), ("operation", "Verify")]
        ),
        None,
        "{text}"
    );
}

/// A run record of `job` two days old, so the daemon catches the job up at start.
fn seed_run(state: &Path, job: JobName) {
    let then = Utc::now() - chrono::Duration::days(2);
    let run = RunRecord {
        run_id: records::run_id(then),
        job,
        trigger: RunTrigger::Schedule,
        slot: Some(then),
        started: then,
        ended: then,
        outcome: RunOutcome::Ok,
        missed: 0,
        detail: String::new(),
    };
    records::write(&state.join("scheduler/runs"), job, &[run]).expect("seed run record");
}

fn daemon_config(redis_url: &str, mongo_url: &str, extra: &str) -> String {
    format!(
        "[redis]\nurl = \"{redis_url}\"\n[mongodb]\nurl = \"{mongo_url}\"\n[elasticsearch]\nenabled = false\n[supervisor]\nprobe_interval = \"200ms\"\nbackoff_base = \"50ms\"\nbackoff_cap = \"500ms\"\n{extra}"
    )
}

#[actix_rt::test]
async fn the_daemon_serves_every_named_series_after_a_backup_jobs_and_a_usage_refresh() {
    let (redis_server, mongo_server) = (redis(), mongo());
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, state) = (dir.path().join("volumes"), dir.path().join("state"));
    std::fs::create_dir_all(&root).expect("mkdir root");
    let env = [
        ("LUCID_DB__VOLUMES__ROOT", root.display().to_string()),
        ("LUCID_DB__STATE_DIR", state.display().to_string()),
    ];
    // A volume with a file and a quota, made before the daemon runs.
    let out = Command::new(BIN)
        .args(["volumes", "create", "ledger", "--quota", "10M"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs([
            ("LUCID_DB__REDIS__ENABLED", "false"),
            ("LUCID_DB__MONGODB__ENABLED", "false"),
            ("LUCID_DB__ELASTICSEARCH__ENABLED", "false"),
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("volumes create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(root.join("ledger/data.bin"), vec![7u8; 64 * 1024]).expect("write");
    for job in [
        JobName::Backup,
        JobName::VolumeUsage,
        JobName::HealthSummary,
    ] {
        seed_run(&state, job);
    }

    // A read token, for the backup status below.
    let out = Command::new(BIN)
        .args(["token", "add", "reader", "--scope", "read"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("token add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut denv: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    denv.push(("LUCID_DB__SCHEDULER__BACKUP", "0 2 * * *"));
    let d = Daemon::start(
        Path::new(BIN),
        &daemon_config(&redis_server.url(), &mongo_server.url(), ""),
        &["--log-format", "json"],
        &denv,
    );
    // The three jobs caught up at start: the backup is the slowest.
    for job in ["backup", "volume_usage", "health_summary"] {
        let needle = format!("\"job\":\"{job}\"");
        let started = Instant::now();
        while !d
            .stderr()
            .lines()
            .any(|l| l.contains("\"event\":\"job.completed\"") && l.contains(&needle))
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no job.completed for {job}; stderr:\n{}",
                d.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for _ in 0..3 {
        assert_eq!(http_get(d.http, "/health").expect("GET /health").0, 200);
    }
    // The API's backup status follows the daemon's runs, the scheduler's too.
    let (code, text) =
        lucid_testkit::http_get_as(d.http, "/api/v1/database/backup/status", Some(&reader))
            .expect("GET /backup/status");
    assert_eq!(code, 200, "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        (status["state"].as_str(), status["trigger"].as_str()),
        (Some("finished"), Some("schedule")),
        "{text}"
    );
    // An unknown path without a token is refused before it is looked up (docs/http.md).
    assert_eq!(http_get(d.http, "/no/such/route").expect("GET").0, 401);

    let (code, text) = http_get(d.http, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{text}");
    let s = parse_exposition(&text);
    // Every named series has a sample above zero.
    let named: BTreeSet<&str> = [
        "lucid_db_backend_up",
        "lucid_db_backend_calls_total",
        "lucid_db_backend_call_duration_seconds_count",
        "lucid_db_backup_last_success_timestamp_seconds",
        "lucid_db_backup_source_bytes_total",
        "lucid_db_backup_stored_bytes_total",
        "lucid_db_backup_duration_seconds_count",
        "lucid_db_backup_runs_total",
        "lucid_db_volume_used_bytes",
        "lucid_db_volume_quota_bytes",
        "lucid_db_volume_io_probe_p50_seconds",
        "lucid_db_volume_io_probe_p99_seconds",
        "lucid_db_scheduler_job_runs_total",
        "lucid_db_http_requests_total",
        "lucid_db_http_request_duration_seconds_count",
    ]
    .into();
    for name in &named {
        assert!(
            max_of(&s, name, &[]).is_some_and(|v| v > 0.0),
            "{name} has no non-zero sample:\n{text}"
        );
    }
    for backend in ["redis", "mongodb", "volumes"] {
        assert_eq!(
            max_of(&s, "lucid_db_backend_up", &[("backend", backend)]),
            Some(1.0),
            "{text}"
        );
    }
    // The volumes too: the usage job's and the backup's calls to the volume actor.
    for backend in ["redis", "mongodb", "volumes"] {
        assert!(
            max_of(&s, "lucid_db_backend_calls_total", &[("backend", backend)])
                .is_some_and(|v| v > 0.0),
            "no {backend} calls:\n{text}"
        );
    }
    let now = Utc::now().timestamp() as f64;
    for store in ["mongodb", "redis", "volumes"] {
        let at = max_of(
            &s,
            "lucid_db_backup_last_success_timestamp_seconds",
            &[("store", store)],
        )
        .unwrap_or_else(|| panic!("no last success for {store}:\n{text}"));
        assert!(at <= now + 1.0 && at > now - 600.0, "{store}: {at}");
    }
    assert_eq!(
        max_of(&s, "lucid_db_backup_runs_total", &[("outcome", "complete")]),
        Some(1.0),
        "{text}"
    );
    let ledger = [("volume", "ledger")];
    assert!(
        max_of(&s, "lucid_db_volume_used_bytes", &ledger).is_some_and(|v| v >= 64.0 * 1024.0),
        "{text}"
    );
    assert_eq!(
        max_of(&s, "lucid_db_volume_quota_bytes", &ledger),
        Some(10.0 * 1024.0 * 1024.0),
        "{text}"
    );
    // The volume_usage job's I/O sample: the probe ran in the volume (a 4 KiB write and
    // fsync takes more than nothing and less than the job's minute), and the device's figures
    // are there exactly when its availability says so (a tempdir on tmpfs or overlay has none).
    let p50 = max_of(&s, "lucid_db_volume_io_probe_p50_seconds", &ledger);
    let p99 = max_of(&s, "lucid_db_volume_io_probe_p99_seconds", &ledger);
    assert!(
        p50.is_some_and(|v| v > 0.0 && v < 60.0) && p99 >= p50,
        "{text}"
    );
    let available = max_of(&s, "lucid_db_volume_io_available", &ledger);
    let device_series = [
        "lucid_db_volume_io_read_bytes_per_second",
        "lucid_db_volume_io_write_bytes_per_second",
        "lucid_db_volume_io_read_ops_per_second",
        "lucid_db_volume_io_write_ops_per_second",
        "lucid_db_volume_io_busy_ratio",
    ];
    match available {
        Some(1.0) => {
            for name in device_series {
                assert!(
                    max_of(&s, name, &ledger).is_some_and(|v| v >= 0.0),
                    "{name}:\n{text}"
                );
            }
            assert!(
                max_of(&s, "lucid_db_volume_io_busy_ratio", &ledger).is_some_and(|v| v <= 1.0),
                "{text}"
            );
        }
        Some(0.0) => {
            for name in device_series {
                assert_eq!(max_of(&s, name, &ledger), None, "{name}:\n{text}");
            }
        }
        other => panic!("lucid_db_volume_io_available is {other:?}:\n{text}"),
    }
    for job in ["backup", "volume_usage", "health_summary"] {
        assert!(
            max_of(
                &s,
                "lucid_db_scheduler_job_runs_total",
                &[("job", job), ("outcome", "ok")]
            )
            .is_some_and(|v| v >= 1.0),
            "{job}:\n{text}"
        );
    }
    // Route templates, not raw paths: the unknown path is `unmatched`.
    assert_eq!(
        max_of(
            &s,
            "lucid_db_http_requests_total",
            &[("route", "/health"), ("method", "GET"), ("status", "200")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        max_of(
            &s,
            "lucid_db_http_requests_total",
            &[("route", "unmatched"), ("status", "401")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        !s.iter()
            .any(|x| x.labels.get("route").is_some_and(|r| r.contains("no/such"))),
        "{text}"
    );
}

#[test]
fn with_metrics_off_metrics_is_404_and_health_and_the_watchdog_go_on() {
    let redis_server = redis();
    let d = Daemon::start(
        Path::new(BIN),
        &format!(
            "[redis]\nurl = \"{}\"\n[mongodb]\nenabled = false\n[elasticsearch]\nenabled = false\n[metrics]\nenabled = false\n",
            redis_server.url()
        ),
        &[],
        &[("WATCHDOG_USEC", "400000")],
    );
    let mut d = d;
    assert!(
        d.notify
            .wait_for(Duration::from_secs(10), |l| l == "READY=1")
            .is_some(),
        "no READY=1; stderr:\n{}",
        d.stderr()
    );
    let (code, body) = http_get(d.http, "/metrics").expect("GET /metrics");
    assert_eq!(code, 404, "{body}");
    let (code, body) = http_get(d.http, "/health").expect("GET /health");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["backends"][0]["backend"], "redis", "{body}");
    let pings = d
        .notify
        .wait_count(Duration::from_secs(2), 3, |l| l == "WATCHDOG=1");
    assert!(pings >= 3, "watchdog pings: {:?}", d.notify.seen());
}
