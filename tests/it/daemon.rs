//! The daemon binary under a stand-in for systemd: readiness while a backend is down, STATUS=,
//! the watchdog, /health and /ready, the one signal path, and its events in the JSON log.

use std::path::Path;
use std::time::{Duration, Instant};

use lucid_testkit::{Daemon, free_port, http_get, redis};

const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");

fn config_for(redis_url: &str) -> String {
    format!(
        "[redis]\nurl = \"{redis_url}\"\n[supervisor]\nprobe_interval = \"200ms\"\nbackoff_base = \"50ms\"\nbackoff_cap = \"500ms\"\ncall_deadline = \"500ms\"\n[mongodb]\nenabled = false\n[elasticsearch]\nenabled = false\n"
    )
}

fn json_events(stderr: &str, name: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == name)
        .collect()
}

#[test]
fn unreachable_redis_ready_anyway_then_sigterm_exits_cleanly() {
    let dead_port = free_port();
    let mut d = Daemon::start(
        Path::new(BIN),
        &config_for(&format!("redis://127.0.0.1:{dead_port}/0")),
        &["--log-format", "json"],
        &[("WATCHDOG_USEC", "400000")],
    );

    // READY=1 although Redis is down, and STATUS= names the backend that is down.
    assert!(
        d.notify
            .wait_for(Duration::from_secs(10), |l| l == "READY=1")
            .is_some(),
        "no READY=1; stderr:\n{}",
        d.stderr()
    );
    let status = d
        .notify
        .wait_for(Duration::from_secs(5), |l| {
            l.starts_with("STATUS=") && l.contains("redis backoff")
        })
        .unwrap_or_else(|| panic!("no STATUS= naming redis: {:?}", d.notify.seen()));
    assert!(status.contains("connection_refused"), "{status}");

    // Watchdog pings at half of WATCHDOG_USEC (400 ms): several within a second.
    let pings = d
        .notify
        .wait_count(Duration::from_secs(2), 3, |l| l == "WATCHDOG=1");
    assert!(
        pings >= 3,
        "expected WATCHDOG=1 every 200 ms, saw {pings}: {:?}",
        d.notify.seen()
    );

    let (code, body) = http_get(d.http, "/ready").expect("GET /ready");
    assert_eq!(code, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(ready["ready"], false);
    assert!(
        ready["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("redis backoff")),
        "{body}"
    );

    let (code, body) = http_get(d.http, "/health").expect("GET /health");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["backends"][0]["backend"], "redis");
    assert_eq!(health["backends"][0]["state"], "backoff");
    assert_eq!(
        health["backends"][0]["last_error"]["code"],
        "connection_refused"
    );

    // One signal path: STOPPING=1, drain, exit 0 — well within 5 s.
    let sent = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM; stderr:\n{}", d.stderr()));
    assert!(status.success(), "exit {status:?}; stderr:\n{}", d.stderr());
    assert!(sent.elapsed() < Duration::from_secs(5));
    assert!(
        d.notify
            .wait_for(Duration::from_millis(100), |l| l == "STOPPING=1")
            .is_some(),
        "{:?}",
        d.notify.seen()
    );

    // The events of that life, with their stable fields, in the JSON log.
    let stderr = d.stderr();
    let started = json_events(&stderr, "daemon.started");
    assert_eq!(started.len(), 1, "{stderr}");
    assert_eq!(started[0]["version"], env!("CARGO_PKG_VERSION"));
    let sources = started[0]["config_sources"]
        .as_str()
        .expect("config_sources");
    assert!(
        sources.starts_with("defaults,")
            && sources.contains("lucid-db.toml")
            && sources.contains("LUCID_DB__HTTP__BIND"),
        "{sources}"
    );
    let down = json_events(&stderr, "backend.down");
    assert_eq!(down.len(), 1, "one backend.down per outage: {stderr}");
    assert_eq!(down[0]["backend"], "redis");
    assert_eq!(down[0]["code"], "connection_refused");
    assert_eq!(down[0]["level"], "WARN");
    assert_eq!(
        json_events(&stderr, "daemon.stopping")[0]["signal"],
        "SIGTERM"
    );
    assert_eq!(down[0]["attempt"], 1, "numbers stay numbers");
    assert_eq!(json_events(&stderr, "daemon.stopped")[0]["code"], "drained");
}

#[test]
fn live_redis_makes_the_daemon_ready_and_health_cli_asks_it() {
    let server = redis();
    let mut d = Daemon::start(Path::new(BIN), &config_for(&server.url()), &[], &[]);
    assert!(
        d.notify
            .wait_for(Duration::from_secs(10), |l| l == "READY=1")
            .is_some()
    );
    d.notify
        .wait_for(Duration::from_secs(5), |l| {
            l == "STATUS=redis up; volumes up"
        })
        .unwrap_or_else(|| panic!("no STATUS=redis up: {:?}", d.notify.seen()));
    let (code, body) = http_get(d.http, "/ready").expect("GET /ready");
    assert_eq!((code, body.as_str()), (200, "{\"ready\":true}"));

    // `lucid-db health` finds the daemon on http.bind and reports what it says.
    let out = std::process::Command::new(BIN)
        .args([
            "--config",
            &d.dir().join("lucid-db.toml").display().to_string(),
            "health",
            "--json",
        ])
        .env_clear()
        .env("LUCID_DB__HTTP__BIND", d.http.to_string())
        .output()
        .expect("run health");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["source"], "daemon");
    assert_eq!(report["backends"][0]["state"], "up");

    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn health_cli_probes_directly_when_no_daemon_answers() {
    let server = redis();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("lucid-db.toml");
    let health = |redis_url: &str| {
        std::fs::write(&cfg, config_for(redis_url)).expect("write config");
        std::process::Command::new(BIN)
            .args(["--config", &cfg.display().to_string(), "health"])
            .env_clear()
            .env("LUCID_DB__HTTP__BIND", format!("127.0.0.1:{}", free_port()))
            .output()
            .expect("run health")
    };

    let live = health(&server.url());
    let table = String::from_utf8_lossy(&live.stdout);
    assert_eq!(
        live.status.code(),
        Some(0),
        "{table}\n{}",
        String::from_utf8_lossy(&live.stderr)
    );
    assert!(table.contains("direct probe"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("redis") && l.contains(" up ")),
        "{table}"
    );

    let dead = health(&format!("redis://127.0.0.1:{}/0", free_port()));
    let table = String::from_utf8_lossy(&dead.stdout);
    assert_eq!(dead.status.code(), Some(69), "{table}");
    assert!(table.contains("connection_refused"), "{table}");
}

#[test]
fn a_missing_data_root_is_a_configuration_error() {
    let mut d = Daemon::start(
        Path::new(BIN),
        &config_for(&format!("redis://127.0.0.1:{}/0", free_port())),
        &[],
        &[("LUCID_DB__VOLUMES__ROOT", "/nonexistent/lucid-volumes")],
    );
    let status = d.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(78), "{}", d.stderr());
    assert!(d.stderr().contains("volumes.root"), "{}", d.stderr());
    assert!(
        d.notify
            .wait_for(Duration::from_millis(100), |l| l == "READY=1")
            .is_none(),
        "READY=1 sent anyway"
    );
}

/// The daemon holds `locks/daemon.lock` while it runs: a restore from the CLI (which would
/// write into the stores it serves) never runs in process beside it — when the daemon's API
/// does not answer where the CLI looks (another `http.bind`), it is refused with exit 69 — and
/// a second daemon with the same state directory does not start. Once it stopped, both may
/// run.
#[test]
fn a_running_daemon_keeps_restores_and_a_second_daemon_out() {
    let server = redis();
    let config = config_for(&server.url());
    let mut d = Daemon::start(Path::new(BIN), &config, &[], &[]);
    assert!(
        d.notify
            .wait_for(Duration::from_secs(10), |l| l == "READY=1")
            .is_some()
    );
    let dir = d.dir().to_owned();
    let cli = |args: &[&str]| {
        std::process::Command::new(BIN)
            .arg("--config")
            .arg(dir.join("lucid-db.toml"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LUCID_DB__STATE_DIR", dir.join("state"))
            .env("LUCID_DB__VOLUMES__ROOT", dir.join("volumes"))
            .env("LUCID_DB__HTTP__BIND", format!("127.0.0.1:{}", free_port()))
            .output()
            .expect("run lucid-db")
    };
    let out = cli(&["backup", "restore", "20261130T020000Z-3f9a"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("does not answer") && stderr.contains("nothing was done"),
        "{stderr}"
    );
    let second = cli(&["run"]);
    assert_eq!(
        second.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
    // No daemon: the restore gets as far as looking for the backup.
    let out = cli(&["backup", "restore", "20261130T020000Z-3f9a"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("no backup 20261130T020000Z-3f9a"),
        "{stderr}"
    );
}
