//! systemd/lucid-db.service: hardened (systemd-analyze security ≤ 2.0), verifiable, and still
//! allowing what the daemon needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use lucid_actors::Config;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/lucid-db.service")
}

/// Every `Key=value` line (a key may repeat).
fn directives() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(unit_path()).expect("read unit");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn values(key: &str) -> Vec<String> {
    directives()
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

fn words(key: &str) -> Vec<String> {
    values(key)
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze").args(args).output().unwrap_or_else(|e| {
        panic!("systemd-analyze not runnable ({e}): run scripts/setup.sh (or: apt-get install -y systemd)")
    })
}

#[test]
fn lifecycle_directives() {
    assert_eq!(values("Type"), ["notify"]);
    assert_eq!(values("NotifyAccess"), ["main"]);
    assert_eq!(values("Restart"), ["on-failure"]);
    assert_eq!(
        values("RestartPreventExitStatus"),
        ["78"],
        "no restart loop on a configuration error"
    );
    assert_eq!(values("ExecStart"), ["/usr/bin/lucid-db run"]);
    assert!(!values("WatchdogSec").is_empty());
    let after = words("After");
    for target in ["network-online.target", "time-sync.target"] {
        assert!(after.iter().any(|t| t == target), "After= lacks {target}");
    }
}

#[test]
fn the_daemons_allowances_stay() {
    let families = words("RestrictAddressFamilies");
    for family in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(
            families.iter().any(|f| f == family),
            "RestrictAddressFamilies lacks {family}"
        );
    }
    assert_eq!(values("StateDirectory"), ["lucid-db"]);
    assert_eq!(values("LogsDirectory"), ["lucid-db"]);
    assert_eq!(values("ConfigurationDirectory"), ["lucid"]);
    // The default volume root must stay writable under ProtectSystem=strict.
    let root = Config::defaults().expect("defaults").volumes.root;
    let writable = words("ReadWritePaths");
    assert!(
        writable
            .iter()
            .any(|p| Path::new(p.trim_start_matches('-')) == root),
        "ReadWritePaths lacks the volume root {}",
        root.display()
    );
    assert!(
        values("PrivateNetwork").is_empty() && values("IPAddressDeny").is_empty(),
        "backends are reached over the network"
    );
    // Every secret the config can read has a credential.
    let creds: Vec<String> = values("LoadCredential")
        .iter()
        .filter_map(|v| v.split(':').next().map(str::to_owned))
        .collect();
    for name in [
        "redis_password",
        "mongodb_password",
        "elasticsearch_password",
        "backup_passphrase",
        "backup_identity",
        "backup_s3_access_key_id",
        "backup_s3_secret_access_key",
    ] {
        assert!(
            creds.iter().any(|c| c == name),
            "LoadCredential lacks {name}"
        );
        // Each is optional: a missing source falls back to this instead of failing the start.
        assert!(
            values("SetCredential").contains(&format!("{name}:\\n")),
            "SetCredential lacks {name}"
        );
    }
}

#[test]
fn security_exposure_is_at_most_2() {
    let out = systemd_analyze(&[
        "security",
        "--offline=true",
        &unit_path().display().to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score from {line:?}"));
    assert!(score <= 2.0, "exposure {score} > 2.0: {line}");
}

#[test]
fn unit_verifies_clean_with_a_real_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(unit_path()).expect("read unit");
    let unit = text.replace(
        "ExecStart=/usr/bin/lucid-db",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_lucid-db")),
    );
    let path = dir.path().join("lucid-db.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = systemd_analyze(&["verify", "--man=no", &path.display().to_string()]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && all.trim().is_empty(),
        "systemd-analyze verify:\n{all}"
    );
}
