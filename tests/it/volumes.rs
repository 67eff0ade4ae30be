//! The volume actor on a real filesystem (temp dirs): names and paths that cannot escape,
//! quotas, thresholds with hysteresis, integrity, tar round trips, migration interrupted by a
//! fail point, cleanup, a 100,000-file walk that does not hold up other messages, and the data
//! root's entry in the health registry (and the daemon's `/ready`).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lucid_actors::config::ByteSize;
use lucid_actors::events;
use lucid_actors::supervisor::StateLabel;
use lucid_actors::transfer::{Existing, Skip};
use lucid_actors::volume::integrity;
use lucid_actors::volume::{
    CheckHealth, CleanupVolume, CreateVolume, DeleteVolume, ExportVolume, ImportOptions,
    InspectVolume, ListVolumes, MeasureUsage, MigrateVolume, ReserveQuota, ResizeVolume, Verify,
    VolumeActor, VolumeError, VolumeHandle, VolumeName, WriteFile,
};
use lucid_actors::{Backend, BackendStatus, Config, HealthRegistry, Roles, volume};
use lucid_testkit::{Daemon, http_get};

use crate::common::SLACK;

mod forecast;
mod io;
mod snapshots;

fn name(n: &str) -> VolumeName {
    VolumeName::new(n).expect("valid name")
}

/// A volume actor over a fresh root; the defaults are created on start.
fn start(root: &Path, tweak: impl FnOnce(&mut Config)) -> VolumeHandle {
    let mut c = Config::defaults().expect("defaults");
    c.volumes.root = root.to_path_buf();
    c.supervisor.stream_idle_timeout = Duration::from_secs(5);
    c.supervisor.mailbox_capacity = 64;
    tweak(&mut c);
    VolumeActor::start_with(&c.volumes, &c.supervisor)
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
async fn a_reservation_holds_quota_for_a_streaming_writer_and_stops_it_at_its_end() {
    use std::io::Write;

    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    create(&v, "backups-test", Some("1M")).await;
    let reserve = |bytes: u64| {
        v.call(ReserveQuota {
            name: name("backups-test"),
            bytes,
        })
    };

    let r = reserve(600 << 10).await.expect("fits");
    assert_eq!(r.data_dir(), root.path().join("backups-test"));
    // What is promised counts against the quota for everyone else.
    let err = reserve(600 << 10).await.expect_err("promised already");
    assert_eq!(err.code(), "over_quota", "{err}");
    let err = write(&v, "backups-test", "small.bin", 500 << 10)
        .await
        .expect_err("WriteFile sees the promise too");
    assert_eq!(err.code(), "over_quota", "{err}");
    // The writer holds the volume's lock shared: nothing moves the data away under it.
    let err = v
        .call(DeleteVolume {
            name: name("backups-test"),
            force: true,
        })
        .await
        .expect_err("busy");
    assert_eq!(err.code(), "busy", "{err}");

    let path = r.data_dir().join("artifact.bin");
    let mut out = r.writer(std::fs::File::create(&path).expect("create"));
    out.write_all(&vec![b'a'; 400 << 10])
        .expect("within the reservation");
    let err = out
        .write_all(&vec![b'b'; 300 << 10])
        .expect_err("past the reservation");
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<VolumeError>())
        .expect("a volume error inside");
    assert_eq!(inner.code(), "over_reservation", "{inner}");
    drop(out);
    assert_eq!(r.used(), 400 << 10);
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        400 << 10,
        "nothing past the reservation was written"
    );
    assert_eq!(
        r.charge((200 << 10) + 1)
            .expect_err("charge checks too")
            .code(),
        "over_reservation"
    );

    // Dropped: the unused 200K come back at once, the 400K written count as used.
    drop(r);
    let err = reserve(700 << 10).await.expect_err("400K used + 700K > 1M");
    assert_eq!(err.code(), "over_quota", "{err}");
    let again = reserve(500 << 10).await.expect("400K used + 500K fits");
    drop(again);
    let err = reserve(0).await.expect_err("zero bytes");
    assert_eq!(err.code(), "invalid");
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
    // A directory with data but no metadata is not taken over by a create; an empty one,
    // what a create killed before its metadata leaves, is.
    std::fs::create_dir(root.path().join("orphan")).expect("mkdir");
    std::fs::write(root.path().join("orphan/data"), b"x").expect("write");
    let err = v
        .call(CreateVolume {
            name: name("orphan"),
            quota: None,
            kind: None,
            labels: BTreeMap::new(),
        })
        .await
        .expect_err("holds a file");
    assert!(matches!(err, VolumeError::Exists { .. }), "{err:?}");
    std::fs::remove_file(root.path().join("orphan/data")).expect("rm");
    create(&v, "orphan", Some("256K")).await;
    v.call(InspectVolume {
        name: name("orphan"),
    })
    .await
    .expect("listed after the create took the empty directory over");

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
async fn export_bytes(v: &VolumeHandle, n: &str) -> Vec<u8> {
    let mut stream = v
        .call(ExportVolume { name: name(n) })
        .await
        .expect("export");
    let mut all = Vec::new();
    while let Some(chunk) = stream.next().await {
        all.extend(chunk.expect("chunk"));
    }
    all
}

/// Feeds `items` to an import of `n`, as a producer would.
async fn import_items(
    v: &VolumeHandle,
    n: &str,
    items: Vec<Result<Vec<u8>, VolumeError>>,
    force: bool,
) -> Result<(), VolumeError> {
    let mut options = ImportOptions::new(name(n));
    if force {
        options = options.existing(Existing::Replace);
    }
    v.import(options, futures_util::stream::iter(items))
        .await
        .map(|_| ())
}

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

/// Every entry's kind, size, mode, mtime (to the second: tar's resolution) and content hash
/// (or link target): what a byte-identical restore must reproduce.
fn manifest(dir: &Path) -> BTreeMap<String, String> {
    integrity::build(dir)
        .expect("manifest")
        .entries
        .into_iter()
        .map(|(path, e)| {
            let line = format!(
                "{} {} {:o} {} {}",
                e.kind,
                e.size,
                e.mode,
                e.mtime_ns / 1_000_000_000,
                e.content
            );
            (path, line)
        })
        .collect()
}

#[actix_rt::test]
async fn export_import_round_trip_keeps_bytes_modes_mtimes_and_symlinks() {
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    v.call(ListVolumes).await.expect("started");
    plant_tree(&root.path().join("chunks"));
    let before = manifest(&root.path().join("chunks"));

    let whole = export_bytes(&v, "chunks").await;
    assert!(whole.len() > 60_000);
    import_items(&v, "restored", vec![Ok(whole.clone())], false)
        .await
        .expect("import");
    let after = manifest(&root.path().join("restored"));
    assert_eq!(before, after, "the restored tree differs");
    // The outward link came back as a link, not as a copy of its target.
    assert!(root.path().join("restored/link-out").is_symlink());

    // A non-empty target is refused without force, and left as it was.
    let err = import_items(&v, "restored", vec![], false)
        .await
        .expect_err("not empty");
    assert!(matches!(err, VolumeError::NotEmpty { .. }), "{err:?}");
    assert_eq!(manifest(&root.path().join("restored")), after);
    // With force, nothing that is not a whole stream replaces the volume: garbage, an empty
    // stream (a producer that died before sending), a truncated one (cut on a block boundary,
    // so tar itself sees a clean end), one that reports an error.
    let cut = whole.len() / 2 / 512 * 512;
    let streams: Vec<Vec<Result<Vec<u8>, VolumeError>>> = vec![
        vec![Ok(b"this is not a tar stream at all".repeat(100))],
        vec![],
        vec![Ok(whole[..cut].to_vec())],
        vec![
            Ok(whole[..cut].to_vec()),
            Err(VolumeError::Interrupted {
                what: "the backup store went away".into(),
            }),
        ],
    ];
    for items in streams {
        import_items(&v, "restored", items, true)
            .await
            .expect_err("refused");
        assert_eq!(
            manifest(&root.path().join("restored")),
            after,
            "a failed import changed the volume"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(".restored.") && !n.ends_with(".lock")
        })
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    // Over the quota: refused, and the target volume unchanged.
    create(&v, "small", Some("64K")).await;
    let err = import_items(&v, "small", vec![Ok(whole.clone())], false)
        .await
        .expect_err("over quota");
    assert!(matches!(err, VolumeError::OverQuota { .. }), "{err:?}");
    assert!(
        std::fs::read_dir(root.path().join("small"))
            .expect("ls")
            .next()
            .is_none()
    );
    // The whole stream again, forced: replaced, and the old manifest goes with the old content.
    v.call(ResizeVolume {
        name: name("restored"),
        quota: ByteSize(1 << 30),
    })
    .await
    .expect("resize");
    v.call(Verify {
        name: name("restored"),
        update: false,
    })
    .await
    .expect("seal");
    import_items(&v, "restored", vec![Ok(whole)], true)
        .await
        .expect("whole stream");
    assert!(!root.path().join("restored.manifest.json").exists());
    assert_eq!(manifest(&root.path().join("restored")), before);
}

#[actix_rt::test]
async fn an_export_feed_imports_an_empty_volume_counts_as_empty_and_a_failing_source_fails_with_the_count()
 {
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    v.call(ListVolumes).await.expect("started");
    plant_tree(&root.path().join("chunks"));
    let before = manifest(&root.path().join("chunks"));

    // The export's feed is the import's source as it is, into a new volume.
    let feed = v.export(name("chunks")).await.expect("export");
    let summary = v
        .import(ImportOptions::new(name("copy")), feed)
        .await
        .expect("import from the feed");
    assert_eq!(manifest(&root.path().join("copy")), before);
    assert_eq!(
        (summary.read, summary.written, summary.skipped_total()),
        (before.len() as u64, before.len() as u64, 0),
        "{summary:?}"
    );
    assert!(summary.details.stream_bytes > 60_000, "{summary:?}");

    // Every default volume starts there and empty: a fresh node's restore target.
    let whole = export_bytes(&v, "chunks").await;
    let err = v
        .import(
            ImportOptions::new(name("sessions")).existing(Existing::RefuseAny),
            futures_util::stream::iter([Ok::<_, String>(whole.clone())]),
        )
        .await
        .expect_err("exists");
    assert!(matches!(err, VolumeError::Exists { .. }), "{err:?}");
    v.import(
        ImportOptions::new(name("sessions")),
        futures_util::stream::iter([Ok::<_, String>(whole.clone())]),
    )
    .await
    .expect("an empty volume counts as empty");
    assert_eq!(manifest(&root.path().join("sessions")), before);
    v.import(
        ImportOptions::new(name("fresh")).existing(Existing::RefuseAny),
        futures_util::stream::iter([Ok::<_, String>(whole.clone())]),
    )
    .await
    .expect("a missing volume is created");

    // Every entry, then the source fails before the end-of-archive blocks: the import fails
    // with the entries unpacked, and nothing of it is left.
    let entries = whole[..whole.len() - 1024].to_vec();
    let err = v
        .import(
            ImportOptions::new(name("cut")),
            futures_util::stream::iter([Ok(entries), Err("the backup store went away".to_owned())]),
        )
        .await
        .expect_err("a failed source fails");
    assert_eq!(err.code(), "import_source_failed", "{err}");
    match &err {
        VolumeError::ImportSource { written, reason } => {
            assert_eq!(*written, before.len() as u64);
            assert!(reason.contains("went away"), "{reason}");
        }
        other => panic!("expected ImportSource, got {other:?}"),
    }
    assert!(
        !root.path().join("cut").exists(),
        "the volume it created went again"
    );
    // An error after the end-of-archive blocks fails the import all the same.
    let err = v
        .import(
            ImportOptions::new(name("late")),
            futures_util::stream::iter([Ok(whole), Err("trailing failure".to_owned())]),
        )
        .await
        .expect_err("a failed source fails, even after tar's end");
    assert_eq!(err.code(), "import_source_failed", "{err}");

    // A name that would leave the volume is skipped, and counted.
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [("../escaped.txt", &b"escaped"[..]), ("kept.txt", b"kept")] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        // `set_path` refuses `..`: the raw name field is what a hostile archive carries.
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    let archive = b.into_inner().expect("archive");
    let summary = v
        .import(
            ImportOptions::new(name("hostile")),
            futures_util::stream::iter([Ok::<_, String>(archive)]),
        )
        .await
        .expect("import");
    assert_eq!(
        (
            summary.read,
            summary.written,
            summary.skipped(Skip::UnsafePath)
        ),
        (2, 1, 1),
        "{summary:?}"
    );
    assert!(root.path().join("hostile/kept.txt").exists());
    assert!(!root.path().join("escaped.txt").exists());
}

/// A wedged volume actor (its loop blocked inside a handler by a fail point) does not hang its
/// callers: short calls answer `deadline_exceeded` after `supervisor.call_deadline`, the
/// watchdog's round trip reports a timeout, not a stopped actor, and once the loop turns
/// again every call answers as before.
#[actix_rt::test]
async fn a_wedged_volume_actor_answers_short_calls_with_deadline_exceeded() {
    const DEADLINE: Duration = Duration::from_millis(500);
    let scenario = fail::FailScenario::setup();
    let root = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config::defaults().expect("defaults");
    cfg.volumes.root = root.path().to_path_buf();
    cfg.supervisor.call_deadline = DEADLINE;
    let handles = lucid_actors::start(&cfg, Roles::VOLUMES);
    let v = handles.volumes.clone().expect("the volumes part runs");
    v.call(ListVolumes).await.expect("started");

    fail::cfg("volume-inspect-wedged", "pause").expect("fail point");
    let started = Instant::now();
    let err = v
        .call(InspectVolume { name: name("logs") })
        .await
        .expect_err("the actor is wedged");
    let took = started.elapsed();
    // The deadline fired (the error names it), not some other clock; the wall-clock bound
    // only tells an answer from a hang.
    assert_eq!(err, VolumeError::DeadlineExceeded { after: DEADLINE });
    assert_eq!(err.code(), "deadline_exceeded");
    assert!(took >= DEADLINE && took < DEADLINE + SLACK, "{took:?}");
    // Still wedged: another short call answers the same, and the watchdog sees a timeout.
    let err = v.call(ListVolumes).await.expect_err("still wedged");
    assert!(
        matches!(err, VolumeError::DeadlineExceeded { .. }),
        "{err:?}"
    );
    let late = handles
        .heartbeat(DEADLINE)
        .await
        .expect_err("no round trip");
    assert_eq!((late.actor, late.code()), ("volume", "deadline_exceeded"));

    // The loop turns again: everything answers.
    fail::remove("volume-inspect-wedged");
    let info = v
        .call(InspectVolume { name: name("logs") })
        .await
        .expect("inspect once unwedged");
    assert_eq!(info.meta.name, name("logs"));
    handles.heartbeat(DEADLINE).await.expect("round trip");
    assert!(
        handles.shutdown(DEADLINE).await.is_empty(),
        "actors must quit"
    );
    // Stopped is told apart from wedged.
    let gone = handles.heartbeat(DEADLINE).await.expect_err("stopped");
    assert_eq!((gone.actor, gone.code()), ("volume", "not_delivered"));
    let err = v.call(ListVolumes).await.expect_err("stopped");
    assert!(matches!(err, VolumeError::NotDelivered { .. }), "{err:?}");
    scenario.teardown();
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
    assert!(!to.exists(), "the partial copy was left behind");

    // Again, uninterrupted: switched, identical, old place gone.
    fail::remove("volume-migrate-before-switch");
    let info = v
        .call(MigrateVolume {
            name: name("blocks"),
            to: to.clone(),
        })
        .await
        .expect("migrate");
    assert_eq!(info.data_dir, to.canonicalize().expect("real path"));
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
    // `Addr::send` puts each message in the mailbox at once, in this order: the walk is taken
    // first, and the list must still be answered before the walk ends.
    let walk_asked = Instant::now();
    let walking = v.addr().send(MeasureUsage { name: name("many") });
    let list = v.addr().send(ListVolumes);
    tokio::pin!(walking);
    let answered = tokio::select! {
        biased;
        usage = &mut walking => panic!("the walk finished first ({usage:?}): no overlap shown"),
        list = list => list.expect("delivered").expect("list"),
    };
    assert!(answered.len() >= 10);
    let usage = walking.await.expect("delivered").expect("usage");
    let walked = Instant::now();
    assert_eq!(usage.tally.files, 100_000);
    assert_eq!(usage.tally.dirs, 100);
    assert_eq!(usage.age_ms, 0, "a walk answers a fresh figure");
    // Measured once, then served from the cache within volumes.usage_max_age: a file added
    // behind the actor's back after the walk is not in the inspect's figure (a re-walk would
    // count it), and the figure's age is that walk's — no less than the time since the walk
    // answered, no more than the time since it was asked for.
    std::fs::write(dir.join("d000/added-after-the-walk"), b"x").expect("write");
    let since_walk = walked.elapsed();
    let info = v
        .call(InspectVolume { name: name("many") })
        .await
        .expect("inspect");
    let cached = info.usage.expect("usage");
    assert_eq!(cached.tally.files, 100_000, "inspect re-walked: {cached:?}");
    let age = Duration::from_millis(cached.age_ms);
    assert!(
        age >= Duration::from_millis(since_walk.as_millis() as u64) && age <= walk_asked.elapsed(),
        "age {age:?} is not the walk's ({since_walk:?} since it answered)"
    );
    // A walk does see the added file: the figure above is the cache, not a blind spot.
    let fresh = v
        .call(MeasureUsage { name: name("many") })
        .await
        .expect("usage");
    assert_eq!((fresh.tally.files, fresh.age_ms), (100_001, 0));
}

#[test]
fn the_cli_manages_volumes_and_exits_65_on_a_failed_verify() {
    const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");
    let root = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env_clear()
            .env("LUCID_DB__VOLUMES__ROOT", root.path())
            .env("LUCID_DB__STATE_DIR", state.path())
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
    // A migration target the volume actor refuses (inside the data root, relative) is a bad
    // command line, and the original stays where it was.
    let inside = root.path().join("elsewhere");
    for to in [inside.to_str().expect("utf8"), "relative/dir"] {
        let out = run(&["volumes", "migrate", "uploads", to]);
        assert_eq!(
            out.status.code(),
            Some(64),
            "migrate to {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read(root.path().join("uploads/a.txt")).expect("original untouched"),
        b"HELLO"
    );
    let missing = std::process::Command::new(BIN)
        .args(["volumes", "ls"])
        .env_clear()
        .env("LUCID_DB__VOLUMES__ROOT", "/nonexistent/lucid")
        .env("LUCID_DB__STATE_DIR", state.path().join("fresh"))
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(78));
    assert!(
        !state.path().join("fresh").exists(),
        "nothing is created before the data root is checked"
    );
}

#[actix_rt::test]
async fn tar_entries_cannot_reach_outside_the_volume() {
    let root = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    v.call(ListVolumes).await.expect("started");
    let old = filetime::FileTime::from_last_modification_time(
        &std::fs::metadata(outside.path()).expect("meta"),
    );
    // A hand-made archive: an absolute directory name, a `..` file, a link out and a file
    // through that link.
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(1);
        if let Some(target) = link {
            h.set_link_name(target).expect("link name");
        }
        // Names a well-behaved builder would refuse, written raw.
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).expect("append");
    };
    let outside_str = outside.path().display().to_string();
    add(
        &format!("{outside_str}/"),
        tar::EntryType::Directory,
        b"",
        None,
    );
    add("../escaped.txt", tar::EntryType::Regular, b"escaped", None);
    add("link", tar::EntryType::Symlink, b"", Some(&outside_str));
    add(
        "link/through.txt",
        tar::EntryType::Regular,
        b"through",
        None,
    );
    let archive = b.into_inner().expect("archive");
    let _ = import_items(&v, "uploads-test", vec![Ok(archive)], true).await;
    assert!(
        std::fs::read_dir(outside.path())
            .expect("ls")
            .next()
            .is_none(),
        "something was written outside"
    );
    assert!(!root.path().join("escaped.txt").exists());
    let now = filetime::FileTime::from_last_modification_time(
        &std::fs::metadata(outside.path()).expect("meta"),
    );
    assert_eq!(
        old, now,
        "a directory outside the volume had its mtime changed"
    );
}

#[actix_rt::test]
async fn migrate_targets_inside_the_root_another_volume_or_itself_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    v.call(ListVolumes).await.expect("started");
    std::fs::write(root.path().join("logs/keep.log"), b"keep").expect("write");
    let r = root.path();
    for to in [
        r.join("elsewhere"),
        r.join("chunks/nested"),
        r.join("merkle"),
        r.join("x/../logs/sub"),
        PathBuf::from("relative/path"),
    ] {
        let err = v
            .call(MigrateVolume {
                name: name("logs"),
                to: to.clone(),
            })
            .await
            .expect_err("refused");
        assert!(
            matches!(err, VolumeError::Invalid { field: "to", .. }),
            "{}: {err:?}",
            to.display()
        );
    }
    assert_eq!(
        std::fs::read(r.join("logs/keep.log")).expect("read"),
        b"keep"
    );
    let stray: Vec<_> = std::fs::read_dir(r.join("logs")).expect("ls").collect();
    assert_eq!(stray.len(), 1, "the volume was changed");
}

#[actix_rt::test]
async fn a_volume_directory_replaced_by_a_symlink_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    std::fs::write(outside.path().join("old.tmp"), b"precious").expect("write");
    filetime::set_file_mtime(outside.path().join("old.tmp"), old).expect("utimes");
    let v = start(root.path(), |_| {});
    v.call(ListVolumes).await.expect("started");
    std::fs::remove_dir(root.path().join("redis")).expect("rmdir");
    std::os::unix::fs::symlink(outside.path(), root.path().join("redis")).expect("symlink");
    for res in [
        v.call(CleanupVolume {
            name: name("redis"),
        })
        .await
        .map(|_| ()),
        write(&v, "redis", "x.txt", 1).await,
        v.call(Verify {
            name: name("redis"),
            update: false,
        })
        .await
        .map(|_| ()),
        v.call(MeasureUsage {
            name: name("redis"),
        })
        .await
        .map(|_| ()),
        v.call(DeleteVolume {
            name: name("redis"),
            force: true,
        })
        .await,
    ] {
        assert!(
            matches!(res, Err(VolumeError::PathEscape { .. })),
            "{res:?}"
        );
    }
    assert_eq!(
        std::fs::read(outside.path().join("old.tmp")).expect("still there"),
        b"precious"
    );
    assert!(!outside.path().join("x.txt").exists());
    let h = v
        .call(CheckHealth {
            name: name("redis"),
        })
        .await
        .expect("health");
    assert!(!h.healthy(), "{h:?}");
}

#[actix_rt::test]
async fn concurrent_writes_cannot_all_pass_one_quota() {
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    create(&v, "tight", Some("512K")).await;
    // Ten writes of 100 KiB at once into 512 KiB: at most five fit.
    let writes: Vec<_> = (0..10)
        .map(|i| {
            let v = v.clone();
            async move { write(&v, "tight", &format!("f{i}"), 100 << 10).await }
        })
        .collect();
    let results = futures_util::future::join_all(writes).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    // Never more than fits; possibly fewer (a write may count another's bytes both in its
    // walk and in that write's reservation: conservative, never over the quota).
    assert!((1..=5).contains(&ok), "{ok} writes passed: {results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(VolumeError::OverQuota { .. }))),
        "{results:?}"
    );
    let usage = v
        .call(MeasureUsage {
            name: name("tight"),
        })
        .await
        .expect("usage");
    assert!(usage.tally.bytes <= 512 << 10, "{usage:?}");
}

#[actix_rt::test]
async fn a_crash_in_the_middle_of_an_import_swap_is_undone_at_start() {
    let root = tempfile::tempdir().expect("tempdir");
    {
        let v = start(root.path(), |_| {});
        v.call(ListVolumes).await.expect("started");
    }
    // What a crash between the two renames leaves: the data moved aside, no volume directory.
    std::fs::write(root.path().join("sessions/s1"), b"session").expect("write");
    std::fs::rename(
        root.path().join("sessions"),
        root.path().join(".sessions.replaced-00000000000000aa"),
    )
    .expect("rename");
    std::fs::create_dir(root.path().join(".sessions.import-00000000000000bb"))
        .expect("half staging");
    let v = start(root.path(), |_| {});
    v.call(ListVolumes).await.expect("started");
    assert_eq!(
        std::fs::read(root.path().join("sessions/s1")).expect("restored"),
        b"session"
    );
    assert!(
        !root
            .path()
            .join(".sessions.import-00000000000000bb")
            .exists()
    );
}

/// The `volumes` entry of the registry once `pred` holds for it, waiting on the registry's
/// changes (no sleeps), at most 10 s.
async fn volumes_entry(
    registry: &HealthRegistry,
    pred: impl Fn(&BackendStatus) -> bool,
) -> BackendStatus {
    let entry = || {
        registry
            .snapshot()
            .into_iter()
            .find(|s| s.backend == Backend::Volumes)
    };
    let mut changes = registry.subscribe();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(s) = entry().filter(|s| pred(s)) {
                return s;
            }
            changes.changed().await.expect("registry alive");
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("the volumes entry never got there: {:?}", entry()))
}

fn probing(root: &Path) -> Config {
    let mut c = Config::defaults().expect("defaults");
    c.volumes.root = root.to_path_buf();
    c.supervisor.probe_interval = Duration::from_millis(50);
    c
}

/// The data root has a required entry in the health registry, as the backends do: `up` while
/// usable; `down` with `root_missing` once it is gone, `root_not_directory` while a file
/// stands in its place — `/ready`'s reasons name it —; `up` again when it is back, one outage
/// counted and one pair of events.
#[actix_rt::test]
async fn the_data_root_is_in_the_health_registry_down_while_missing_or_not_a_directory() {
    let cap = events::capture();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("volumes");
    std::fs::create_dir(&root).expect("mkdir");
    let h = lucid_actors::start(&probing(&root), Roles::VOLUMES);
    let up = volumes_entry(&h.registry, BackendStatus::is_up).await;
    assert!(up.required, "{up:?}");
    assert_eq!(h.registry.readiness(), Ok(()));

    let moved = dir.path().join("moved");
    std::fs::rename(&root, &moved).expect("rename");
    let down = volumes_entry(&h.registry, |s| s.state == StateLabel::Down).await;
    let error = down.last_error.expect("last error");
    assert_eq!(error.code, "root_missing");
    assert!(
        error.message.contains(&root.display().to_string()),
        "{error:?}"
    );
    assert_eq!(
        h.registry.readiness(),
        Err(vec!["volumes down (root_missing)".to_owned()])
    );

    std::fs::write(&root, b"not a directory").expect("write");
    volumes_entry(&h.registry, |s| {
        s.last_error
            .as_ref()
            .is_some_and(|e| e.code == "root_not_directory")
    })
    .await;
    std::fs::remove_file(&root).expect("rm");
    std::fs::rename(&moved, &root).expect("rename back");
    let back = volumes_entry(&h.registry, BackendStatus::is_up).await;
    assert_eq!(back.restarts, 1);
    assert_eq!(h.registry.readiness(), Ok(()));

    // One outage: one `volume.root_down` (with the first finding), one `volume.root_up`.
    let downs = cap.named("volume.root_down");
    assert_eq!(downs.len(), 1, "{:?}", cap.events());
    assert_eq!(downs[0].code, Some("root_missing"));
    assert_eq!(cap.named("volume.root_up").len(), 1);
    assert!(h.shutdown(Duration::from_secs(5)).await.is_empty());
}

/// A data root whose filesystem has fewer free bytes than `volumes.min_free` is full: its
/// entry is `down` with `root_full`, and every volume's health lists it — while the volumes
/// keep working (full is a warning to act on, not a refusal).
#[actix_rt::test]
async fn a_data_root_below_min_free_is_full_in_the_registry_and_in_volume_health() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut cfg = probing(root.path());
    // More than any filesystem has free: the honest way to be full without filling a disk.
    cfg.volumes.min_free = ByteSize(u64::MAX);
    let h = lucid_actors::start(&cfg, Roles::VOLUMES);
    let down = volumes_entry(&h.registry, |s| s.state == StateLabel::Down).await;
    let error = down.last_error.expect("last error");
    assert_eq!(error.code, "root_full");
    assert!(error.message.contains("volumes.min_free"), "{error:?}");
    assert!(h.registry.readiness().is_err());

    let v = h.volumes.clone().expect("volumes part");
    let health = v
        .call(CheckHealth {
            name: name("chunks"),
        })
        .await
        .expect("health");
    assert!(
        health.exists && health.writable && !health.healthy(),
        "{health:?}"
    );
    assert!(
        health.problems.iter().any(|p| p.contains("full")),
        "{health:?}"
    );
    write(&v, "chunks", "still.txt", 10)
        .await
        .expect("writes go on");
    assert!(h.shutdown(Duration::from_secs(5)).await.is_empty());
}

/// An embedder that starts the volume actor before its data root is there (a disk mounted
/// late): the entry is `down` (`root_missing`), calls answer `root_unavailable`; once the root
/// appears, the next probe loads the volumes (the defaults created) and the entry is `up`.
#[actix_rt::test]
async fn volumes_missing_at_start_are_loaded_once_the_root_appears() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("late");
    let h = lucid_actors::start(&probing(&root), Roles::VOLUMES);
    let v = h.volumes.clone().expect("volumes part");
    let down = volumes_entry(&h.registry, |s| s.state == StateLabel::Down).await;
    assert_eq!(
        down.last_error.map(|e| e.code),
        Some("root_missing".to_owned())
    );
    let err = v.call(ListVolumes).await.expect_err("no root");
    assert_eq!(err.code(), "root_unavailable");

    std::fs::create_dir(&root).expect("mkdir");
    volumes_entry(&h.registry, BackendStatus::is_up).await;
    let list = v.call(ListVolumes).await.expect("loaded");
    assert_eq!(list.len(), volume::DEFAULT_VOLUMES.len());
    assert!(root.join("chunks").is_dir());
    assert!(h.shutdown(Duration::from_secs(5)).await.is_empty());
}

/// The daemon end to end: `/ready` answers 503 naming the data root while it is missing,
/// `/health` shows the `volumes` entry `down` (`root_missing`) and STATUS= says so; both are
/// back once the root is.
#[test]
fn the_daemon_is_not_ready_while_its_data_root_is_missing() {
    const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");
    let mut d = Daemon::start(
        Path::new(BIN),
        "[redis]\nenabled = false\n[mongodb]\nenabled = false\n[elasticsearch]\nenabled = false\n[supervisor]\nprobe_interval = \"100ms\"\n",
        &[],
        &[],
    );
    let status = |d: &mut Daemon, text: &'static str| {
        d.notify
            .wait_for(Duration::from_secs(10), |l| l == format!("STATUS={text}"))
            .unwrap_or_else(|| panic!("no STATUS={text}: {:?}", d.notify.seen()));
    };
    status(&mut d, "volumes up");
    let (code, body) = http_get(d.http, "/ready").expect("GET /ready");
    assert_eq!((code, body.as_str()), (200, "{\"ready\":true}"));

    let root = d.dir().join("volumes");
    let moved = d.dir().join("moved");
    std::fs::rename(&root, &moved).expect("rename");
    status(&mut d, "volumes down (root_missing)");
    let (code, body) = http_get(d.http, "/ready").expect("GET /ready");
    assert_eq!(code, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        ready["reasons"],
        serde_json::json!(["volumes down (root_missing)"])
    );
    let (code, body) = http_get(d.http, "/health").expect("GET /health");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "degraded");
    let entry = &health["backends"][0];
    assert_eq!(
        (&entry["backend"], &entry["state"], &entry["required"]),
        (
            &serde_json::json!("volumes"),
            &serde_json::json!("down"),
            &serde_json::json!(true)
        )
    );
    assert_eq!(entry["last_error"]["code"], "root_missing");

    std::fs::rename(&moved, &root).expect("rename back");
    // A STATUS= line after the outage's (the summary is sent again on every change).
    let up = |l: &str| l == "STATUS=volumes up";
    let before = d.notify.seen().iter().filter(|l| up(l)).count();
    assert_eq!(
        d.notify.wait_count(Duration::from_secs(10), before + 1, up),
        before + 1,
        "{:?}",
        d.notify.seen()
    );
    let (code, _) = http_get(d.http, "/ready").expect("GET /ready");
    assert_eq!(code, 200);
    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success()),
        "{}",
        d.stderr()
    );
}

/// `inspect` of a volume whose directory vanished answers its health — `exists: false`, the
/// missing directory named, no usage — instead of failing on the walk; so does the CLI
/// (exit 0, JSON without usage), though a measurement of it fails.
#[actix_rt::test]
async fn inspect_of_a_volume_whose_directory_vanished_shows_it_in_health() {
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    // Measured first: a cached figure must not stand in for a directory that is gone.
    v.call(MeasureUsage { name: name("logs") })
        .await
        .expect("measured");
    std::fs::remove_dir(root.path().join("logs")).expect("rmdir");
    let info = v
        .call(InspectVolume { name: name("logs") })
        .await
        .expect("inspect answers");
    let health = info.health.expect("health");
    assert!(!health.exists && !health.writable, "{health:?}");
    assert!(health.metadata_ok, "{health:?}");
    assert!(
        health.problems.iter().any(|p| p.contains("does not exist")),
        "{health:?}"
    );
    assert_eq!(info.usage, None);
    let err = v
        .call(MeasureUsage { name: name("logs") })
        .await
        .expect_err("nothing to walk");
    assert_eq!(err.code(), "io");

    const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");
    let state = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(BIN)
        .args(["volumes", "inspect", "logs", "--json"])
        .env_clear()
        .env("LUCID_DB__VOLUMES__ROOT", root.path())
        .env("LUCID_DB__STATE_DIR", state.path())
        .output()
        .expect("run lucid-db");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["health"]["exists"], false, "{shown}");
    assert!(shown.get("usage").is_none(), "{shown}");
}

/// Resize is a long call (its walk and the write of the new quota are waited for), inspect a
/// short one: with a walk slower than `supervisor.call_deadline`, the resize answers its new
/// quota — never `deadline_exceeded` while the quota is still written — and an inspect that
/// has to walk answers `deadline_exceeded`.
#[actix_rt::test]
async fn resize_waits_for_its_walk_past_the_call_deadline_and_inspect_does_not() {
    const DEADLINE: Duration = Duration::from_millis(200);
    let scenario = fail::FailScenario::setup();
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |c| c.supervisor.call_deadline = DEADLINE);
    v.call(ListVolumes).await.expect("started");
    // Every walk takes three deadlines.
    fail::cfg("volume-measure-slow", "sleep(600)").expect("fail point");
    let info = v
        .call(ResizeVolume {
            name: name("chunks"),
            quota: ByteSize::parse("2G").expect("size"),
        })
        .await
        .expect("resize is waited for");
    assert_eq!(info.meta.quota_bytes, 2 << 30);
    let on_disk: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path().join("chunks.volume.json")).expect("metadata"),
    )
    .expect("json");
    assert_eq!(on_disk["quota_bytes"], 2u64 << 30);
    let err = v
        .call(InspectVolume { name: name("logs") })
        .await
        .expect_err("inspect walks past the deadline");
    assert_eq!(err, VolumeError::DeadlineExceeded { after: DEADLINE });
    fail::remove("volume-measure-slow");
    scenario.teardown();
}
