//! The configuration as an operator meets it: `lucid-db config check` and `lucid-db run` with
//! bad files, layered overrides, and secrets that must never be printed.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use lucid_testkit::{Daemon, REDIS, Server};

const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");

fn lucid_db(config: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lucid-db.toml");
    std::fs::write(&path, config).expect("write config");
    Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run lucid-db")
}

#[test]
fn each_bad_value_exits_78_naming_its_key() {
    let cases = [
        (
            "[redis]\nurl = \"redis://localhost\"\ntimeout = \"1s\"\n",
            "redis.timeout",
            "unknown field",
        ),
        (
            "[mongodb]\nurl = \"mongodb//no-scheme\"\n",
            "mongodb.url",
            "mongodb://",
        ),
        (
            "[redis]\nurl = \"redis://[::1\"\n",
            "redis.url",
            "not a valid URL",
        ),
        (
            "[scheduler]\nbackup = \"0 25 * * *\"\n",
            "scheduler.backup",
            "cron",
        ),
        (
            "[scheduler]\nlifecycle = \"every hour\"\n",
            "scheduler.lifecycle",
            "5-field",
        ),
        (
            "[supervisor]\ncall_deadline = \"soon\"\n",
            "supervisor.call_deadline",
            "duration",
        ),
        // Checks an actor makes of its own section: the command line loads through
        // lucid_actors::load_config, not config::load_values alone.
        (
            "[mongodb]\ndatabase = \"lucid.db\"\n",
            "mongodb.database",
            "must not contain",
        ),
        (
            "[elasticsearch]\nprepare_ahead = \"30d\"\n",
            "elasticsearch.prepare_ahead",
            "28 days",
        ),
        (
            "[volumes]\nextra = [\"Scratch\"]\n",
            "volumes.extra",
            "only a-z",
        ),
    ];
    for (file, key, reason) in cases {
        for command in [&["config", "check"][..], &["run"][..]] {
            let out = lucid_db(file, command, &[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(78),
                "{command:?} with {file:?}: {stderr}"
            );
            let line = stderr
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{key}:")))
                .unwrap_or_else(|| panic!("no line naming {key} in:\n{stderr}"));
            assert!(line.contains(reason), "{line}");
        }
    }
    // An environment variable is named by its key too.
    let out = lucid_db(
        "",
        &["config", "check"],
        &[("LUCID_DB__SUPERVISOR__BACKOFF_CAP", "forever")],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("supervisor.backoff_cap:"));
    // A --config file that does not exist is a configuration error as well.
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/lucid-db.toml", "config", "check"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn env_overrides_file_overrides_defaults() {
    let file = "[redis]\nurl = \"redis://from-file:6379/0\"\nrequired = false\n[supervisor]\ncall_deadline = \"2s\"\n";
    let out = lucid_db(
        file,
        &["config", "check", "--json"],
        &[
            ("LUCID_DB__REDIS__URL", "redis://from-env:6379/0"),
            ("LUCID_DB__SUPERVISOR__PROBE_INTERVAL", "9s"),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["layers"][0], "defaults", "{report}");
    let c = &report["config"];
    assert_eq!(
        c["redis"]["url"], "redis://from-env:6379/0",
        "env beats file"
    );
    assert_eq!(c["redis"]["required"], false, "file beats defaults");
    assert_eq!(
        c["supervisor"]["call_deadline"], "2s",
        "file beats defaults"
    );
    assert_eq!(
        c["supervisor"]["probe_interval"], "9s",
        "env beats defaults"
    );
    assert_eq!(c["supervisor"]["backoff_cap"], "30s", "defaults stay");

    // The TOML form names the layers it used.
    let out = lucid_db(
        file,
        &["config", "check"],
        &[("LUCID_DB__REDIS__URL", "redis://from-env:6379/0")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# layers: defaults, ") && text.contains("LUCID_DB__REDIS__URL"),
        "{text}"
    );
    assert!(text.contains("url = \"redis://from-env:6379/0\""), "{text}");
}

#[test]
fn a_credential_never_reaches_output_or_logs() {
    const SECRET: &str = "s3cr3t-sentinel-4d1e";
    let creds = tempfile::tempdir().expect("tempdir");
    std::fs::write(creds.path().join("redis_password"), format!("{SECRET}\n")).expect("write");
    let creds_dir = creds.path().to_str().expect("utf8");

    // config check shows that a password is set, never its value; also in a URL.
    let file = format!("[redis]\nurl = \"redis://:{SECRET}@127.0.0.1:6379/0\"\n");
    for args in [&["config", "check"][..], &["config", "check", "--json"][..]] {
        let out = lucid_db(
            &file,
            args,
            &[("CREDENTIALS_DIRECTORY", creds_dir), ("RUST_LOG", "trace")],
        );
        assert_eq!(out.status.code(), Some(0));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(SECRET), "secret printed by {args:?}:\n{all}");
        assert!(all.contains("***"), "{all}");
        assert!(
            all.contains("redis.password") && all.contains("$CREDENTIALS_DIRECTORY/redis_password"),
            "{all}"
        );
    }

    // The daemon authenticates with it against a Redis that wants another password: the
    // failure is logged at every level, the secret in no line of it.
    let server = Server::start_with(&REDIS, &["--requirepass", "another-password"]);
    let d = Daemon::start(
        Path::new(BIN),
        &format!(
            "[redis]\nurl = \"{}\"\n[mongodb]\nenabled = false\n[elasticsearch]\nenabled = false\n",
            server.url()
        ),
        &["--log-format", "json"],
        &[("CREDENTIALS_DIRECTORY", creds_dir), ("RUST_LOG", "trace")],
    );
    let down = d
        .wait_for_log(Duration::from_secs(10), "\"event\":\"backend.down\"")
        .unwrap_or_else(|| panic!("no backend.down:\n{}", d.stderr()));
    assert!(
        down.contains("auth") || down.contains("WRONGPASS"),
        "{down}"
    );
    d.signal(libc::SIGTERM);
    let mut d = d;
    d.wait_exit(Duration::from_secs(5));
    let logs = d.stderr();
    assert!(logs.lines().count() > 5, "expected trace logs:\n{logs}");
    assert!(!logs.contains(SECRET), "secret in the logs:\n{logs}");
}

#[test]
fn version_and_usage() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("lucid-db {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(BIN).arg("frobnicate").output().expect("run");
    assert_eq!(out.status.code(), Some(64), "usage errors are EX_USAGE");
}
