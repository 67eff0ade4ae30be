//! Snapshots on real filesystems: taken, changed, restored byte-identical with modes, mtimes
//! and symlinks; a restore interrupted by a fail point leaves the previous data complete;
//! retention keeps exactly `keep` (when a snapshot is taken and at maintenance); bad input
//! changes nothing; the reflink path on a loop-mounted btrfs (or XFS), the copy path on the
//! test machine's own filesystem and on a small tmpfs whose free space a plain copy does not
//! fit.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use lucid_actors::events;
use lucid_actors::volume::integrity::{self, Entry};
use lucid_actors::volume::{
    CopyMethod, DeleteSnapshot, ListSnapshots, Maintain, MeasureUsage, RestoreSnapshot,
    SnapshotInfo, TakeSnapshot, VerifySnapshot, VolumeError, VolumeHandle,
};

use super::{create, name, plant_tree, start};

/// Every entry with its full manifest line (kind, size, mode, mtime to the nanosecond, content
/// hash or link target), directories' mtimes too: what "byte-identical" means here.
fn exact(dir: &Path) -> BTreeMap<String, Entry> {
    integrity::build(dir).expect("manifest").entries
}

async fn snap(
    v: &VolumeHandle,
    n: &str,
    snapshot: Option<&str>,
) -> Result<SnapshotInfo, VolumeError> {
    v.call(TakeSnapshot {
        name: name(n),
        snapshot: snapshot.map(str::to_owned),
        label: None,
        allow_live: false,
    })
    .await
}

async fn names(v: &VolumeHandle, n: &str) -> Vec<String> {
    v.call(ListSnapshots { name: name(n) })
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name)
        .collect()
}

/// Changes every kind of thing a restore must put back: contents, a deleted and an added
/// file, a mode, a symlink's target.
fn change_everything(dir: &Path) {
    std::fs::write(dir.join("a.txt"), b"changed").expect("write");
    std::fs::remove_file(dir.join("run.sh")).expect("rm");
    std::fs::write(dir.join("nested/added.txt"), b"added").expect("write");
    std::fs::set_permissions(
        dir.join("secret.key"),
        std::fs::Permissions::from_mode(0o666),
    )
    .expect("chmod");
    std::fs::remove_file(dir.join("link-to-a")).expect("rm");
    std::os::unix::fs::symlink("secret.key", dir.join("link-to-a")).expect("symlink");
}

/// Snapshot → change → restore on the volume at `root`; answers the snapshot taken.
async fn round_trip(v: &VolumeHandle, root: &Path, vol: &str) -> SnapshotInfo {
    let dir = root.join(vol);
    plant_tree(&dir);
    let before = exact(&dir);
    let taken = snap(v, vol, None).await.expect("snapshot");
    assert_eq!(names(v, vol).await, vec![taken.name.clone()]);
    assert_eq!(taken.files, 4);
    // The snapshot is sealed: verify finds it clean.
    let report = v
        .call(VerifySnapshot {
            name: name(vol),
            snapshot: taken.name.clone(),
        })
        .await
        .expect("verify snapshot");
    assert!(report.clean() && report.entries > 0, "{report:?}");
    change_everything(&dir);
    assert_ne!(exact(&dir), before);

    let err = v
        .call(RestoreSnapshot {
            name: name(vol),
            snapshot: taken.name.clone(),
            force: false,
        })
        .await
        .expect_err("the volume holds files");
    assert_eq!(err.code(), "not_empty", "{err}");
    let restored = v
        .call(RestoreSnapshot {
            name: name(vol),
            snapshot: taken.name.clone(),
            force: true,
        })
        .await
        .expect("restore");
    assert_eq!(restored, taken);
    assert_eq!(exact(&dir), before, "not byte-identical after the restore");
    // Nothing left beside the volume, and the snapshot is still there.
    let leftovers: Vec<String> = std::fs::read_dir(root)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&format!(".{vol}.")) && !f.ends_with(".lock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(names(v, vol).await, vec![taken.name.clone()]);
    taken
}

#[actix_rt::test]
async fn a_snapshot_restores_contents_modes_mtimes_and_symlinks_by_plain_copy() {
    let root = tempfile::tempdir().expect("tempdir");
    let cap = events::capture();
    let v = start(root.path(), |_| {});
    create(&v, "photos", None).await;
    let taken = round_trip(&v, root.path(), "photos").await;
    // ext4 (the test machine's) has no reflinks.
    assert_eq!(taken.method, CopyMethod::Copy);
    assert_eq!(cap.named("volume.snapshot_created").len(), 1);
    assert_eq!(cap.named("volume.snapshot_restored").len(), 1);

    // Usage: data and snapshots apart; the quota counts the data.
    let usage = v
        .call(MeasureUsage {
            name: name("photos"),
        })
        .await
        .expect("usage");
    assert!(usage.snapshot_bytes >= 100_000, "{usage:?}");
    let data = lucid_actors::volume::integrity::build(&root.path().join("photos"))
        .expect("manifest")
        .entries
        .values()
        .map(|e| e.size)
        .sum::<u64>();
    assert!(usage.tally.apparent_bytes == data, "{usage:?}");

    v.call(DeleteSnapshot {
        name: name("photos"),
        snapshot: taken.name.clone(),
    })
    .await
    .expect("delete snapshot");
    assert!(names(&v, "photos").await.is_empty());
    let usage = v
        .call(MeasureUsage {
            name: name("photos"),
        })
        .await
        .expect("usage");
    assert_eq!(usage.snapshot_bytes, 0);
}

#[actix_rt::test]
async fn an_interrupted_restore_leaves_the_previous_data_complete() {
    let scenario = fail::FailScenario::setup();
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    create(&v, "photos", None).await;
    let dir = root.path().join("photos");
    plant_tree(&dir);
    let taken = snap(&v, "photos", Some("first")).await.expect("snapshot");
    change_everything(&dir);
    let changed = exact(&dir);

    // Interrupted once the current data is moved aside, before the copy is swapped in.
    fail::cfg("volume-restore-before-swap", "return").expect("fail point");
    let err = v
        .call(RestoreSnapshot {
            name: name("photos"),
            snapshot: taken.name.clone(),
            force: true,
        })
        .await
        .expect_err("interrupted");
    assert!(matches!(err, VolumeError::Interrupted { .. }), "{err:?}");
    assert_eq!(exact(&dir), changed, "the previous data is not complete");
    let beside: Vec<String> = std::fs::read_dir(root.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(".photos.") && !f.ends_with(".lock"))
        .collect();
    assert!(beside.is_empty(), "left behind: {beside:?}");
    fail::remove("volume-restore-before-swap");
    scenario.teardown();
}

#[actix_rt::test]
async fn retention_keeps_exactly_keep_when_taking_and_at_maintenance() {
    let root = tempfile::tempdir().expect("tempdir");
    let cap = events::capture();
    let v = start(root.path(), |c| c.volumes.snapshots.keep = 3);
    create(&v, "photos", None).await;
    std::fs::write(root.path().join("photos/f"), b"data").expect("write");
    for i in 0..5 {
        snap(&v, "photos", Some(&format!("s{i}")))
            .await
            .expect("snapshot");
    }
    assert_eq!(names(&v, "photos").await, ["s2", "s3", "s4"]);
    let removed: Vec<String> = cap
        .named("volume.snapshot_created")
        .iter()
        .filter_map(|e| e.field("removed").map(str::to_owned))
        .collect();
    assert_eq!(removed, ["0", "0", "0", "1", "1"]);

    // Fewer kept now: maintenance applies it, verifies the volume marked for it, and says so
    // in one event.
    drop(v);
    let v = start(root.path(), |c| {
        c.volumes.snapshots.keep = 1;
        c.volumes.verify_on_maintenance = vec!["photos".to_owned()];
    });
    let report = v.call(Maintain).await.expect("maintain");
    assert_eq!(report.snapshots_removed, 2, "{report:?}");
    assert_eq!(report.verified, [name("photos")]);
    assert!(report.mismatched.is_empty());
    assert_eq!(names(&v, "photos").await, ["s4"]);
    let maintained = cap.named("volume.maintained");
    assert_eq!(maintained.len(), 1, "{:?}", cap.events());
    assert_eq!(maintained[0].field("snapshots_removed"), Some("2"));
    assert_eq!(maintained[0].field("verified"), Some("1"));

    // A changed volume is a mismatch the next maintenance reports.
    std::fs::write(root.path().join("photos/f"), b"other").expect("write");
    let report = v.call(Maintain).await.expect("maintain");
    assert_eq!(report.mismatched, [name("photos")]);
    assert_eq!(cap.named("volume.integrity_mismatch").len(), 1);
}

#[actix_rt::test]
async fn bad_snapshot_input_is_refused_and_changes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    create(&v, "photos", None).await;
    let dir = root.path().join("photos");
    plant_tree(&dir);
    snap(&v, "photos", Some("one")).await.expect("snapshot");
    let area = root.path().join("photos.snapshots");
    let before = (exact(&dir), exact(&area));

    for bad in ["../escape", "a/b", "..", ".hidden", ""] {
        let err = snap(&v, "photos", Some(bad)).await.expect_err("bad name");
        assert_eq!(err.code(), "invalid", "{bad:?}: {err}");
        let err = v
            .call(RestoreSnapshot {
                name: name("photos"),
                snapshot: bad.to_owned(),
                force: true,
            })
            .await
            .expect_err("bad name");
        assert_eq!(err.code(), "invalid", "{bad:?}: {err}");
    }
    let err = snap(&v, "photos", Some("one")).await.expect_err("exists");
    assert_eq!(err.code(), "snapshot_exists", "{err}");
    for missing in [
        v.call(RestoreSnapshot {
            name: name("photos"),
            snapshot: "nope".into(),
            force: true,
        })
        .await
        .map(|_| ()),
        v.call(DeleteSnapshot {
            name: name("photos"),
            snapshot: "nope".into(),
        })
        .await,
    ] {
        let err = missing.expect_err("no such snapshot");
        assert_eq!(err.code(), "snapshot_not_found", "{err}");
    }
    // Busy: an import or migration holds the volume's lock exclusively.
    let lock = std::fs::File::open(root.path().join(".photos.lock")).expect("lock file");
    // SAFETY: flock on a file descriptor this test owns.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock");
    let err = snap(&v, "photos", None).await.expect_err("busy");
    assert_eq!(err.code(), "busy", "{err}");
    drop(lock);
    // A live database volume, unless told.
    std::fs::write(root.path().join("redis/dump.rdb"), b"REDIS").expect("write");
    let err = snap(&v, "redis", None).await.expect_err("live");
    assert_eq!(err.code(), "live_volume", "{err}");
    assert!(!root.path().join("redis.snapshots").exists());
    assert_eq!((exact(&dir), exact(&area)), before, "something changed");

    let live = v
        .call(TakeSnapshot {
            name: name("redis"),
            snapshot: None,
            label: Some("server stopped".into()),
            allow_live: true,
        })
        .await
        .expect("allowed");
    assert!(live.live);
    assert_eq!(live.label.as_deref(), Some("server stopped"));
}

// ---------------------------------------------------------------------------------------------
// Filesystems of their own

/// A filesystem mounted in the test's temp dir, unmounted when dropped — also when the test
/// fails.
pub(super) struct Mounted {
    pub(super) at: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(&self.at).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            // Busy (a file still open): detach it, so no mount outlives the test.
            let _ = Command::new("umount").arg("-l").arg(&self.at).output();
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A loop-mounted btrfs (else XFS with reflink) image in `dir`, mounted at `dir/mnt`.
fn reflink_fs(dir: &Path) -> Result<Mounted, String> {
    let image = dir.join("fs.img");
    let at = dir.join("mnt");
    std::fs::create_dir(&at).map_err(|e| e.to_string())?;
    let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
    // Sparse: XFS wants 300M at least; only what is written takes space.
    file.set_len(320 << 20).map_err(|e| e.to_string())?;
    drop(file);
    run(Command::new("mkfs.btrfs").arg("-q").arg(&image)).or_else(|btrfs| {
        run(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&image))
        .map_err(|xfs| format!("{btrfs}; {xfs}"))
    })?;
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&at))?;
    Ok(Mounted { at })
}

#[actix_rt::test]
async fn on_a_reflink_filesystem_a_snapshot_is_a_reflink_and_restores_identically() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mounted = match reflink_fs(tmp.path()) {
        Ok(m) => m,
        // Only where mounting is impossible (no root, no loop device): said, not hidden.
        Err(e) if unsafe { libc::geteuid() } != 0 => {
            eprintln!("SKIPPED: cannot mount a reflink filesystem here: {e}");
            return;
        }
        Err(e) => panic!("cannot mount a reflink filesystem as root: {e}"),
    };
    let root = mounted.at.join("data");
    std::fs::create_dir(&root).expect("mkdir");
    let v = start(&root, |_| {});
    create(&v, "photos", None).await;
    let taken = round_trip(&v, &root, "photos").await;
    assert_eq!(taken.method, CopyMethod::Reflink);
    assert_eq!(taken.copied_files, 0);
    drop(v);
}

#[actix_rt::test]
async fn a_plain_copy_that_does_not_fit_is_refused_before_it_starts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let at = tmp.path().join("small");
    std::fs::create_dir(&at).expect("mkdir");
    if let Err(e) = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&at))
    {
        assert!(
            unsafe { libc::geteuid() } != 0,
            "cannot mount tmpfs as root: {e}"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs here: {e}");
        return;
    }
    let _mounted = Mounted { at: at.clone() };
    let v = start(&at, |c| {
        c.volumes.min_free = lucid_actors::config::ByteSize(0)
    });
    create(&v, "photos", None).await;
    std::fs::write(at.join("photos/big.bin"), vec![7u8; 6 << 20]).expect("write");
    let first = snap(&v, "photos", Some("first")).await.expect("fits once");
    assert_eq!(first.method, CopyMethod::Copy);
    let err = snap(&v, "photos", Some("second"))
        .await
        .expect_err("does not fit twice");
    assert_eq!(err.code(), "no_space", "{err}");
    assert_eq!(names(&v, "photos").await, ["first"]);
    let leftovers: Vec<_> = std::fs::read_dir(at.join("photos.snapshots"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    drop(v);
}

#[test]
fn the_cli_takes_lists_restores_and_deletes_snapshots_with_clear_exit_codes() {
    const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");
    let root = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env_clear()
            .env("LUCID_DB__VOLUMES__ROOT", root.path())
            .env("LUCID_DB__STATE_DIR", state.path())
            .output()
            .expect("run lucid-db")
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    ok(&["volumes", "create", "photos"]);
    let dir = root.path().join("photos");
    plant_tree(&dir);
    let before = exact(&dir);
    let snap = ok(&["volumes", "snapshot", "photos", "--label", "first"]);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["volumes", "snapshots", "photos", "--json"])).expect("json");
    assert_eq!(listed[0]["name"], snap.as_str());
    assert_eq!(listed[0]["label"], "first");
    assert_eq!(listed[0]["method"], "copy");
    ok(&["volumes", "verify", "photos", "--snapshot", &snap]);
    change_everything(&dir);
    assert_eq!(
        run(&["volumes", "restore-snapshot", "photos", &snap])
            .status
            .code(),
        Some(1),
        "not empty without --force"
    );
    ok(&["volumes", "restore-snapshot", "photos", &snap, "--force"]);
    assert_eq!(exact(&dir), before);

    for (args, code) in [
        (&["volumes", "snapshot", "photos", "--name", "../x"][..], 64),
        (&["volumes", "snapshot", "photos", "--name", &snap][..], 1),
        (
            &["volumes", "restore-snapshot", "photos", "nope", "--force"][..],
            1,
        ),
        (&["volumes", "snapshot", "mongodb"][..], 64),
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{args:?}: no error said");
    }
    // Busy: the volume's lock held exclusively (as an import or migration holds it).
    let lock = std::fs::File::open(root.path().join(".photos.lock")).expect("lock file");
    // SAFETY: flock on a file descriptor this test owns.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock");
    let out = run(&["volumes", "snapshot", "photos"]);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(lock);
    ok(&["volumes", "delete-snapshot", "photos", &snap]);
    assert_eq!(ok(&["volumes", "snapshots", "photos", "--json"]), "[]");
}
