//! Roles: which actors `start` runs for each preset, and that only the parts that write touch
//! the disk — `lucid-db health` leaves an empty data root empty, a `volumes` command refuses a
//! state directory another user owns, and `/health` lists the parts that run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lucid_actors::{Config, Part, Roles};
use lucid_testkit::{Daemon, free_port, http_get};

const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");

/// Every store enabled, each at a port where nothing listens (the actors start and back off),
/// the data root and the state directory inside `dir`.
fn config_in(dir: &Path) -> Config {
    let mut c = Config::defaults().expect("defaults");
    c.redis.url = format!("redis://127.0.0.1:{}/0", free_port()).into();
    c.mongodb.url = format!("mongodb://127.0.0.1:{}", free_port()).into();
    c.elasticsearch.url = format!("http://127.0.0.1:{}", free_port()).into();
    c.volumes.root = dir.join("volumes");
    c.state_dir = dir.join("state");
    c
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

#[actix_rt::test]
async fn each_preset_starts_exactly_its_actors() {
    // (preset, store actors, volume actor, backup actor, scheduler, parts reported as running)
    let table = [
        (
            Roles::DAEMON,
            true,
            true,
            true,
            true,
            "stores+volumes+backup+scheduler",
        ),
        (Roles::SIBLING, true, false, false, false, "stores"),
        (Roles::CLI, true, true, true, false, "stores+volumes+backup"),
        (Roles::VOLUMES, false, true, false, false, "volumes"),
        (Roles::BACKUP, false, false, true, false, "backup"),
        (Roles::SCHEDULER, false, false, false, true, "scheduler"),
    ];
    for (roles, stores, volumes, backup, scheduler, running) in table {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config_in(dir.path());
        std::fs::create_dir(&cfg.volumes.root).expect("mkdir root");
        let h = lucid_actors::start(&cfg, roles);
        assert_eq!(h.roles.to_string(), running, "{roles}");
        assert_eq!(h.redis.is_some(), stores, "redis for {roles}");
        assert_eq!(h.mongo.is_some(), stores, "mongodb for {roles}");
        assert_eq!(h.search.is_some(), stores, "elasticsearch for {roles}");
        assert_eq!(h.volumes.is_some(), volumes, "volume actor for {roles}");
        assert_eq!(h.backup.is_some(), backup, "backup actor for {roles}");
        assert_eq!(h.scheduler.is_some(), scheduler, "scheduler for {roles}");
        let registered: Vec<lucid_actors::Backend> =
            h.registry.snapshot().iter().map(|s| s.backend).collect();
        assert_eq!(
            registered
                .iter()
                .filter(|b| **b != lucid_actors::Backend::Volumes)
                .count(),
            if stores { 3 } else { 0 },
            "registered backends for {roles}"
        );
        assert_eq!(
            registered.contains(&lucid_actors::Backend::Volumes),
            volumes,
            "the data root's entry for {roles}"
        );
        h.heartbeat(Duration::from_secs(5))
            .await
            .expect("every started actor answers");
        if let Some(v) = &h.volumes {
            // The volume actor loads (and creates the defaults) before its first answer.
            let list = v
                .call(lucid_actors::volume::ListVolumes)
                .await
                .expect("list");
            assert_eq!(list.len(), lucid_actors::volume::DEFAULT_VOLUMES.len());
        }
        h.shutdown(Duration::from_secs(5)).await;
        let created = entries(&cfg.volumes.root);
        assert_eq!(
            !created.is_empty(),
            volumes,
            "default volumes for {roles}: {created:?}"
        );
        // Only the scheduler takes its lock and reads its run records at start; every other
        // part writes to the state directory only when asked to.
        assert_eq!(
            cfg.state_dir.exists(),
            scheduler,
            "the state directory after start ({roles})"
        );
    }
    assert!(!Roles::CLI.contains(Part::Scheduler));
    assert!(
        !Roles::SIBLING.contains(Part::Backup),
        "an embedding sibling never runs backups"
    );
}

#[test]
fn health_leaves_an_empty_data_root_empty_and_creates_no_state_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).expect("mkdir");
    let state = dir.path().join("state");
    let out = Command::new(BIN)
        .args(["health", "--json"])
        .env_clear()
        .env("LUCID_DB__HTTP__BIND", format!("127.0.0.1:{}", free_port()))
        .env("LUCID_DB__VOLUMES__ROOT", &root)
        .env("LUCID_DB__STATE_DIR", &state)
        .env(
            "LUCID_DB__REDIS__URL",
            format!("redis://127.0.0.1:{}/0", free_port()),
        )
        .env("LUCID_DB__MONGODB__ENABLED", "false")
        .env("LUCID_DB__ELASTICSEARCH__ENABLED", "false")
        .output()
        .expect("run health");
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["source"], "probe");
    assert_eq!(report["parts"], serde_json::json!(["stores"]));
    assert_eq!(entries(&root), Vec::<String>::new(), "health wrote volumes");
    assert!(!state.exists(), "health created the state directory");
}

#[test]
fn a_volumes_command_creates_the_state_directory_and_refuses_one_another_user_owns() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).expect("mkdir");
    let run = |state: &Path| {
        Command::new(BIN)
            .args(["volumes", "ls", "--json"])
            .env_clear()
            .env("LUCID_DB__VOLUMES__ROOT", &root)
            .env("LUCID_DB__STATE_DIR", state)
            .env("LUCID_DB__REDIS__ENABLED", "false")
            .env("LUCID_DB__MONGODB__ENABLED", "false")
            .env("LUCID_DB__ELASTICSEARCH__ENABLED", "false")
            .output()
            .expect("run volumes ls")
    };

    // SAFETY: geteuid cannot fail.
    let foreign = if unsafe { libc::geteuid() } == 0 {
        // As root (CI): a state directory that belongs to `nobody`.
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
        theirs
    } else {
        // As anyone else: `/` belongs to root (and nothing could be written there anyway).
        Path::new("/").to_path_buf()
    };
    let owner = std::fs::metadata(&foreign).expect("stat").uid();
    let out = run(&foreign);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains(&format!("uid {owner}")) && stderr.contains("sudo -u"),
        "names the owner: {stderr}"
    );
    assert_eq!(
        entries(&root),
        Vec::<String>::new(),
        "nothing written after the refusal"
    );

    let state = dir.path().join("state");
    let out = run(&state);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&state)
        .expect("created")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o750);
    assert!(state.join("locks").is_dir());
    assert!(
        root.join("backups").is_dir(),
        "the volumes part made the defaults"
    );
}

#[test]
fn health_lists_the_parts_the_daemon_runs() {
    let mut d = Daemon::start(
        Path::new(BIN),
        &format!(
            "[redis]\nurl = \"redis://127.0.0.1:{}/0\"\n[mongodb]\nenabled = false\n[elasticsearch]\nenabled = false\n",
            free_port()
        ),
        &[],
        &[],
    );
    assert!(
        d.notify
            .wait_for(Duration::from_secs(10), |l| l == "READY=1")
            .is_some(),
        "{}",
        d.stderr()
    );
    let (code, body) = http_get(d.http, "/health").expect("GET /health");
    assert_eq!(code, 200);
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        report["parts"],
        serde_json::json!(["stores", "volumes", "backup", "scheduler"])
    );
    assert!(
        d.dir().join("state").join("locks").is_dir(),
        "the daemon creates its state directory"
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(5)).is_some());
}
