//! The volume actor on a real filesystem (temp dirs): names and paths that cannot escape,
//! quotas, thresholds with hysteresis, integrity, tar round trips, migration interrupted by a
//! fail point, cleanup, and a 100,000-file walk that does not hold up other messages.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lucid_actors::config::ByteSize;
use lucid_actors::events;
use lucid_actors::volume::{
    CheckHealth, CleanupVolume, CreateVolume, DeleteVolume, ExportVolume, ImportVolume,
    InspectVolume, ListVolumes, MeasureUsage, MigrateVolume, ResizeVolume, Verify, VolumeActor,
    VolumeError, VolumeHandle, VolumeName, WriteFile,
};
use lucid_actors::{Config, volume};

fn name(n: &str) -> VolumeName {
    VolumeName::new(n).expect("valid name")
}

/// A volume actor over a fresh root; the defaults are created on start.
fn start(root: &Path, tweak: impl FnOnce(&mut Config)) -> VolumeHandle {
    let mut c = Config::defaults().expect("defaults");
    c.volumes.root = root.to_path_buf();
    tweak(&mut c);
    VolumeActor::start_with(&c.volumes, Duration::from_secs(5), 64)
}

async fn create(v: &VolumeHandle, n: &str, quota: Option<&str>) {
    v.call(CreateVolume {
        name: name(n),
        quota: quota.map(|q| ByteSize::parse(q).expect("size")),
        kind: None,
        labels: BTreeMap::new(),
    })
    .await
    .expect("create");
}

async fn write(v: &VolumeHandle, n: &str, path: &str, bytes: usize) -> Result<(), VolumeError> {
    v.call(WriteFile {
        name: name(n),
        path: path.to_owned(),
        data: vec![b'x'; bytes],
    })
    .await
}

#[actix_rt::test]
async fn defaults_exist_with_metadata_and_health() {
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |c| c.volumes.extra = vec!["uploads".into()]);
    let list = v.call(ListVolumes).await.expect("list");
    let names: Vec<String> = list.iter().map(|i| i.meta.name.to_string()).collect();
    for n in volume::DEFAULT_VOLUMES.iter().chain(&["uploads"]) {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        assert!(root.path().join(n).is_dir());
        assert!(root.path().join(format!("{n}.volume.json")).is_file());
    }
    assert!(list.iter().all(|i| i.meta.quota_bytes == 10 << 30));
    let h = v
        .call(CheckHealth {
            name: name("chunks"),
        })
        .await
        .expect("health");
    assert!(
        h.exists && h.writable && h.metadata_ok && !h.read_only_fs && h.healthy(),
        "{h:?}"
    );
    assert!(h.free_bytes > 0);

    // A second start finds them again, unchanged.
    let again = start(root.path(), |c| c.volumes.extra = vec!["uploads".into()]);
    let list2 = again.call(ListVolumes).await.expect("list");
    assert_eq!(
        list.iter().map(|i| &i.meta).collect::<Vec<_>>(),
        list2.iter().map(|i| &i.meta).collect::<Vec<_>>()
    );
}

#[actix_rt::test]
async fn traversal_is_refused_also_through_a_planted_symlink() {
    let root = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    for bad in ["../escape", "/etc/passwd", "a/../../b", "./x", ""] {
        let err = write(&v, "sessions", bad, 1).await.expect_err(bad);
        assert!(
            matches!(err, VolumeError::PathEscape { .. }),
            "{bad}: {err:?}"
        );
    }
    // Something inside the volume links out of it: writing through it is refused.
    std::os::unix::fs::symlink(outside.path(), root.path().join("sessions/link")).expect("symlink");
    let err = write(&v, "sessions", "link/planted.txt", 1)
        .await
        .expect_err("through a link");
    assert!(matches!(err, VolumeError::PathEscape { .. }), "{err:?}");
    let err = write(&v, "sessions", "link", 1)
        .await
        .expect_err("onto a link");
    assert!(matches!(err, VolumeError::PathEscape { .. }), "{err:?}");
    assert!(
        std::fs::read_dir(outside.path())
            .expect("ls")
            .next()
            .is_none(),
        "something was written outside"
    );
    write(&v, "sessions", "a/b/ok.txt", 3)
        .await
        .expect("a plain path");
    assert_eq!(
        std::fs::read(root.path().join("sessions/a/b/ok.txt")).expect("read"),
        b"xxx"
    );

    // Bad names never become paths.
    for bad in ["..", "a/b", "Upper", "a\0b", &"x".repeat(64)] {
        assert!(VolumeName::new(bad).is_err(), "{bad:?}");
    }
}

#[actix_rt::test]
async fn quotas_are_checked_and_enforced_on_our_own_writes() {
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    let err = v
        .call(CreateVolume {
            name: name("huge"),
            quota: Some(ByteSize(101 << 30)),
            kind: None,
            labels: BTreeMap::new(),
        })
        .await
        .expect_err("above the maximum");
    assert!(
        matches!(err, VolumeError::Invalid { field: "quota", .. }),
        "{err:?}"
    );
    create(&v, "small", Some("256K")).await;
    let err = v
        .call(CreateVolume {
            name: name("small"),
            quota: None,
            kind: None,
            labels: BTreeMap::new(),
        })
        .await
        .expect_err("exists");
    assert!(matches!(err, VolumeError::Exists { .. }));

    write(&v, "small", "a.bin", 100 << 10).await.expect("fits");
    write(&v, "small", "b.bin", 100 << 10).await.expect("fits");
    let err = write(&v, "small", "c.bin", 100 << 10)
        .await
        .expect_err("over quota");
    assert!(matches!(err, VolumeError::OverQuota { .. }), "{err:?}");
    assert!(
        !root.path().join("small/c.bin").exists(),
        "a refused write left a file"
    );

    // Resize: never below what is used.
    let err = v
        .call(ResizeVolume {
            name: name("small"),
            quota: ByteSize(64 << 10),
        })
        .await
        .expect_err("below use");
    assert!(
        matches!(err, VolumeError::QuotaBelowUsage { .. }),
        "{err:?}"
    );
    let info = v
        .call(ResizeVolume {
            name: name("small"),
            quota: ByteSize::parse("1M").expect("size"),
        })
        .await
        .expect("grow");
    assert_eq!(info.meta.quota_bytes, 1 << 20);
    write(&v, "small", "c.bin", 100 << 10)
        .await
        .expect("fits after resize");

    // Delete refuses a non-empty volume unless forced.
    let err = v
        .call(DeleteVolume {
            name: name("small"),
            force: false,
        })
        .await
        .expect_err("not empty");
    assert!(matches!(err, VolumeError::NotEmpty { .. }));
    v.call(DeleteVolume {
        name: name("small"),
        force: true,
    })
    .await
    .expect("forced");
    assert!(!root.path().join("small").exists() && !root.path().join("small.volume.json").exists());
    let err = v
        .call(InspectVolume {
            name: name("small"),
        })
        .await
        .expect_err("gone");
    assert!(matches!(err, VolumeError::NotFound { .. }));
}

#[actix_rt::test]
async fn threshold_events_fire_once_per_crossing_with_hysteresis() {
    let root = tempfile::tempdir().expect("tempdir");
    let cap = events::capture();
    let v = start(root.path(), |_| {});
    create(&v, "metered", Some("1M")).await;
    let measure = || {
        v.call(MeasureUsage {
            name: name("metered"),
        })
    };
    // 8 × 100 KiB = 78 %: below.
    for i in 0..8 {
        write(&v, "metered", &format!("f{i}"), 100 << 10)
            .await
            .expect("write");
    }
    assert!(measure().await.expect("usage").percent < 80.0);
    assert!(cap.named("volume.threshold_crossed").is_empty());
    // Over 80 %, and measured again and again: one event.
    write(&v, "metered", "f8", 100 << 10).await.expect("write");
    for _ in 0..3 {
        assert!(measure().await.expect("usage").percent >= 80.0);
    }
    let crossed = cap.named("volume.threshold_crossed");
    assert_eq!(crossed.len(), 1, "{:?}", cap.events());
    assert_eq!(crossed[0].field("volume"), Some("metered"));
    // Back to 78 %: inside the hysteresis band, nothing.
    std::fs::remove_file(root.path().join("metered/f8")).expect("rm");
    assert!(measure().await.expect("usage").percent >= 75.0);
    assert!(cap.named("volume.threshold_cleared").is_empty());
    // Below 75 %: cleared, once.
    std::fs::remove_file(root.path().join("metered/f7")).expect("rm");
    for _ in 0..2 {
        assert!(measure().await.expect("usage").percent < 75.0);
    }
    assert_eq!(cap.named("volume.threshold_cleared").len(), 1);
    assert_eq!(cap.named("volume.threshold_crossed").len(), 1);
}

#[actix_rt::test]
async fn verify_finds_a_flipped_byte_a_deleted_file_and_an_added_file() {
    let root = tempfile::tempdir().expect("tempdir");
    let cap = events::capture();
    let v = start(root.path(), |_| {});
    let dir = root.path().join("merkle");
    // The defaults are created when the actor starts: wait for it.
    v.call(ListVolumes).await.expect("list");
    std::fs::create_dir(dir.join("tree")).expect("mkdir");
    std::fs::write(dir.join("tree/node.bin"), vec![3u8; 8192]).expect("write");
    std::fs::write(dir.join("root.txt"), b"root").expect("write");
    let verify = |update| {
        v.call(Verify {
            name: name("merkle"),
            update,
        })
    };
    let first = verify(false).await.expect("seal");
    assert!(
        first.sealed && first.clean() && first.entries == 3,
        "{first:?}"
    );
    assert!(verify(false).await.expect("verify").clean());

    let node = dir.join("tree/node.bin");
    let mtime =
        filetime::FileTime::from_last_modification_time(&std::fs::metadata(&node).expect("meta"));
    let mut bytes = std::fs::read(&node).expect("read");
    bytes[4096] ^= 0x80;
    std::fs::write(&node, bytes).expect("write");
    filetime::set_file_mtime(&node, mtime).expect("utimes");
    std::fs::remove_file(dir.join("root.txt")).expect("rm");
    std::fs::write(dir.join("intruder.txt"), b"!").expect("write");

    let report = verify(false).await.expect("verify");
    assert_eq!(report.missing, ["root.txt"]);
    assert_eq!(report.added, ["intruder.txt"]);
    assert_eq!(report.changed.len(), 1);
    assert_eq!(
        (
            report.changed[0].path.as_str(),
            report.changed[0].what.as_str()
        ),
        ("tree/node.bin", "content")
    );
    assert_eq!(cap.named("volume.integrity_mismatch").len(), 1);
    // An intended change is re-sealed with --update.
    assert!(verify(true).await.expect("update").updated);
    assert!(verify(false).await.expect("verify").clean());
}

/// Fills `dir` with files of several modes, a past mtime, nested directories and symlinks.
fn plant_tree(dir: &Path) {
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 123_000_000);
    std::fs::create_dir_all(dir.join("nested/deep")).expect("mkdir");
    let files = [
        ("a.txt", 0o644),
        ("run.sh", 0o755),
        ("secret.key", 0o600),
        ("nested/deep/blob.bin", 0o640),
    ];
    for (i, (f, mode)) in files.iter().enumerate() {
        let p = dir.join(f);
        std::fs::write(&p, vec![i as u8; 10_000 * (i + 1)]).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        filetime::set_file_mtime(&p, old).expect("utimes");
    }
    std::os::unix::fs::symlink("a.txt", dir.join("link-to-a")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", dir.join("link-out")).expect("symlink");
    std::fs::set_permissions(dir.join("nested"), std::fs::Permissions::from_mode(0o750))
        .expect("chmod");
    filetime::set_file_mtime(dir.join("nested/deep"), old).expect("utimes");
    filetime::set_file_mtime(dir.join("nested"), old).expect("utimes");
}

fn manifest(dir: &Path) -> BTreeMap<String, String> {
    // Everything but the sealing time, as text, for a readable diff.
    let out = std::process::Command::new("find")
        .arg(dir)
        .args(["-mindepth", "1", "-printf", "%P %y %m %T@ %s %l\n"])
        .output()
        .expect("find");
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (path, rest) = line.split_once(' ').expect("line");
        // type, mode, mtime to the second (tar's resolution), size (not for directories:
        // filesystem noise), link target.
        let f: Vec<&str> = rest.splitn(5, ' ').collect();
        let whole_seconds = f[2].split('.').next().unwrap_or(f[2]);
        let size = if f[0] == "d" { "-" } else { f[3] };
        m.insert(
            path.to_owned(),
            format!(
                "{} {} {} {} {}",
                f[0],
                f[1],
                whole_seconds,
                size,
                f.get(4).unwrap_or(&"")
            ),
        );
    }
    for (path, _) in m.clone() {
        let p = dir.join(&path);
        if p.is_file() && !p.is_symlink() {
            m.insert(
                format!("{path} (content)"),
                format!(
                    "{:?}",
                    std::fs::read(&p)
                        .expect("read")
                        .iter()
                        .map(|b| *b as u64)
                        .sum::<u64>()
                ),
            );
        }
    }
    m
}

#[actix_rt::test]
async fn export_import_round_trip_keeps_bytes_modes_mtimes_and_symlinks() {
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    v.call(ListVolumes).await.expect("started");
    plant_tree(&root.path().join("chunks"));
    let before = manifest(&root.path().join("chunks"));

    let mut stream = v
        .call(ExportVolume {
            name: name("chunks"),
        })
        .await
        .expect("export");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let forward = actix_rt::spawn(async move {
        let mut bytes = 0;
        while let Some(chunk) = stream.recv().await {
            let chunk = chunk.expect("chunk");
            bytes += chunk.len();
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
        bytes
    });
    let report = v
        .call(ImportVolume {
            name: name("restored"),
            source: rx,
            force: false,
        })
        .await
        .expect("import");
    assert!(forward.await.expect("forward") > 60_000);
    assert_eq!(report.usage.files, 4);
    let after = manifest(&root.path().join("restored"));
    assert_eq!(before, after, "the restored tree differs");
    // The outward link came back as a link, not as a copy of its target.
    assert!(root.path().join("restored/link-out").is_symlink());

    // A non-empty target is refused without force, and left as it was.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(tx);
    let err = v
        .call(ImportVolume {
            name: name("restored"),
            source: rx,
            force: false,
        })
        .await
        .expect_err("not empty");
    assert!(matches!(err, VolumeError::NotEmpty { .. }), "{err:?}");
    assert_eq!(manifest(&root.path().join("restored")), after);
    // A broken stream with force: the volume keeps its content.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(b"this is not a tar stream at all".repeat(100))
        .await
        .expect("send");
    drop(tx);
    v.call(ImportVolume {
        name: name("restored"),
        source: rx,
        force: true,
    })
    .await
    .expect_err("garbage");
    assert_eq!(
        manifest(&root.path().join("restored")),
        after,
        "a failed import changed the volume"
    );
}

#[actix_rt::test]
async fn migrate_interrupted_before_the_switch_leaves_the_original_complete() {
    let scenario = fail::FailScenario::setup();
    let root = tempfile::tempdir().expect("tempdir");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    v.call(ListVolumes).await.expect("started");
    plant_tree(&root.path().join("blocks"));
    let original = manifest(&root.path().join("blocks"));
    let to: PathBuf = elsewhere.path().join("blocks");

    fail::cfg("volume-migrate-before-switch", "return").expect("fail point");
    let err = v
        .call(MigrateVolume {
            name: name("blocks"),
            to: to.clone(),
        })
        .await
        .expect_err("interrupted");
    assert!(matches!(err, VolumeError::Interrupted { .. }), "{err:?}");
    let info = v
        .call(InspectVolume {
            name: name("blocks"),
        })
        .await
        .expect("inspect");
    assert_eq!(
        info.data_dir,
        root.path().join("blocks"),
        "switched although interrupted"
    );
    assert_eq!(manifest(&root.path().join("blocks")), original);
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path().join("blocks.volume.json")).expect("read"),
    )
    .expect("json");
    assert!(meta.get("path").is_none(), "{meta}");

    // Again, uninterrupted (the half copy is replaced): switched, identical, old place gone.
    fail::remove("volume-migrate-before-switch");
    std::fs::remove_dir_all(&to).expect("clear the half copy");
    let info = v
        .call(MigrateVolume {
            name: name("blocks"),
            to: to.clone(),
        })
        .await
        .expect("migrate");
    assert_eq!(info.data_dir, to);
    assert_eq!(manifest(&to), original);
    assert!(!root.path().join("blocks").exists());
    write(&v, "blocks", "after.txt", 4)
        .await
        .expect("writes go to the new place");
    assert!(to.join("after.txt").is_file());
    scenario.teardown();
}

#[actix_rt::test]
async fn cleanup_removes_old_temp_files_only() {
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    v.call(ListVolumes).await.expect("started");
    let dir = root.path().join("logs");
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    for f in ["old.tmp", "sub/old.partial", "keep.log"] {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, b"12345").expect("write");
        filetime::set_file_mtime(&p, old).expect("utimes");
    }
    std::fs::write(dir.join("fresh.tmp"), b"new").expect("write");
    std::fs::create_dir(root.path().join(".logs.import-deadbeef")).expect("leftover");
    filetime::set_file_mtime(root.path().join(".logs.import-deadbeef"), old).expect("utimes");
    let report = v
        .call(CleanupVolume { name: name("logs") })
        .await
        .expect("cleanup");
    assert_eq!(
        (
            report.removed_files,
            report.removed_bytes,
            report.removed_leftovers
        ),
        (2, 10, 1)
    );
    assert!(dir.join("keep.log").exists() && dir.join("fresh.tmp").exists());
    assert!(!dir.join("old.tmp").exists() && !dir.join("sub/old.partial").exists());
}

#[actix_rt::test]
async fn a_walk_over_100000_files_does_not_hold_up_other_messages() {
    // In memory where there is a tmpfs: creating 100,000 files on this VM's disk takes a minute
    // of the test's time, and the point here is the actor, not the disk.
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let v = start(root.path(), |_| {});
    create(&v, "many", Some("10G")).await;
    let dir = root.path().join("many");
    for d in 0..100 {
        let sub = dir.join(format!("d{d:03}"));
        std::fs::create_dir(&sub).expect("mkdir");
        for f in 0..1000 {
            std::fs::write(sub.join(format!("f{f:04}")), b"x").expect("write");
        }
    }
    let walking = v.call(MeasureUsage { name: name("many") });
    let list = v.call(ListVolumes);
    tokio::pin!(walking);
    // The list is answered while the walk is still going.
    let answered = tokio::select! {
        usage = &mut walking => panic!("the walk finished first ({usage:?}): no overlap shown"),
        list = list => list.expect("list"),
    };
    assert!(answered.len() >= 10);
    let started = Instant::now();
    let usage = walking.await.expect("usage");
    assert_eq!(usage.tally.files, 100_000);
    assert_eq!(usage.tally.dirs, 100);
    // Measured once, then served from the cache within volumes.usage_max_age.
    let inspect_started = Instant::now();
    let info = v
        .call(InspectVolume { name: name("many") })
        .await
        .expect("inspect");
    assert_eq!(info.usage.expect("usage").tally.files, 100_000);
    assert!(
        inspect_started.elapsed() < Duration::from_secs(1),
        "inspect re-walked: {:?}",
        inspect_started.elapsed()
    );
    let _ = started;
}

#[test]
fn the_cli_manages_volumes_and_exits_65_on_a_failed_verify() {
    const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");
    let root = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env_clear()
            .env("LUCID_DB__VOLUMES__ROOT", root.path())
            .output()
            .expect("run lucid-db")
    };
    let out = run(&[
        "volumes",
        "create",
        "uploads",
        "--quota",
        "1G",
        "--label",
        "team=core",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(root.path().join("uploads/a.txt"), b"hello").expect("write");
    assert_eq!(
        run(&["volumes", "verify", "uploads"]).status.code(),
        Some(0),
        "first verify seals"
    );
    std::fs::write(root.path().join("uploads/a.txt"), b"HELLO").expect("write");
    let out = run(&["volumes", "verify", "uploads", "--json"]);
    assert_eq!(out.status.code(), Some(65));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["changed"][0]["path"], "a.txt");
    assert_eq!(
        run(&["volumes", "verify", "uploads", "--update"])
            .status
            .code(),
        Some(0)
    );

    let out = run(&["volumes", "ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let uploads = list
        .as_array()
        .expect("array")
        .iter()
        .find(|v| v["name"] == "uploads")
        .expect("listed");
    assert_eq!(uploads["labels"]["team"], "core");
    assert!(
        uploads["usage"]["files"].as_u64().is_some_and(|n| n >= 1),
        "usage measured for ls: {uploads}"
    );

    assert_eq!(
        run(&["volumes", "create", "../etc"]).status.code(),
        Some(64)
    );
    assert_eq!(
        run(&["volumes", "resize", "uploads", "200G"]).status.code(),
        Some(64)
    );
    assert_eq!(
        run(&["volumes", "delete", "uploads"]).status.code(),
        Some(1),
        "not empty"
    );
    let missing = std::process::Command::new(BIN)
        .args(["volumes", "ls"])
        .env_clear()
        .env("LUCID_DB__VOLUMES__ROOT", "/nonexistent/lucid")
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(78));
}
