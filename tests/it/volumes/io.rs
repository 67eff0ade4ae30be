//! I/O figures on real devices: they move while a writer that fsyncs runs in the volume; a
//! volume on tmpfs has none (said, not guessed); `volume.slow_io` fires once while a fail
//! point slows the latency probe.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lucid_actors::events;
use lucid_actors::volume::{VolumeHandle, VolumeStats};

use super::snapshots::Mounted;
use super::{create, name, start};

async fn stats(v: &VolumeHandle, n: &str, ms: u64) -> lucid_actors::volume::IoStats {
    let mut all = v
        .call(VolumeStats {
            name: Some(name(n)),
            interval: Duration::from_millis(ms),
        })
        .await
        .expect("stats");
    assert_eq!(all.len(), 1);
    all.remove(0)
}

#[actix_rt::test]
async fn the_figures_move_while_a_writer_fsyncs_in_the_volume() {
    let root = tempfile::tempdir().expect("tempdir");
    let v = start(root.path(), |_| {});
    create(&v, "busy", None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, dir) = (stop.clone(), root.path().join("busy"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = dir.join(format!("w{}", n % 8));
                let f = std::fs::File::create(&p).and_then(|mut f| {
                    std::io::Write::write_all(&mut f, &[7u8; 64 << 10])?;
                    f.sync_all()
                });
                f.expect("write and fsync");
                n += 1;
            }
            n
        })
    };
    let s = stats(&v, "busy", 500).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(written > 0);
    let device = s
        .device
        .as_ref()
        .unwrap_or_else(|| panic!("no device: {s:?}"));
    assert!(!device.name.is_empty());
    assert!(s.write_bytes_per_s.expect("write rate") > 0.0, "{s:?}");
    assert!(s.writes_per_s.expect("write ops") > 0.0, "{s:?}");
    assert!(s.busy_percent.is_some(), "{s:?}");
    assert!(s.probe_ms.is_some() && s.probe_p99_ms.is_some(), "{s:?}");
    assert!(s.interval_ms >= 500, "{s:?}");
    // The probe's file is gone again.
    let left: Vec<_> = std::fs::read_dir(root.path().join("busy"))
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".lucid-tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[actix_rt::test]
async fn a_volume_on_tmpfs_has_no_device_figures_and_says_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let at = tmp.path().join("ram");
    std::fs::create_dir(&at).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&at)
        .status()
        .expect("mount");
    if !mounted.success() {
        assert!(
            unsafe { libc::geteuid() } != 0,
            "cannot mount tmpfs as root"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs here");
        return;
    }
    let _guard = Mounted { at: at.clone() };
    let v = start(&at, |c| {
        c.volumes.min_free = lucid_actors::config::ByteSize(0)
    });
    create(&v, "ram", None).await;
    let s = stats(&v, "ram", 50).await;
    assert!(s.device.is_none(), "{s:?}");
    assert!(
        s.unavailable
            .as_deref()
            .is_some_and(|u| u.contains("tmpfs")),
        "{s:?}"
    );
    assert_eq!(s.write_bytes_per_s, None);
    // The probe still measures the write path.
    assert!(s.probe_ms.is_some(), "{s:?}");
    drop(v);
}

#[actix_rt::test]
async fn slow_io_fires_once_while_the_probe_is_slow() {
    let scenario = fail::FailScenario::setup();
    let root = tempfile::tempdir().expect("tempdir");
    let cap = events::capture();
    let v = start(root.path(), |c| {
        c.volumes.slow_io_threshold = Duration::from_millis(200)
    });
    create(&v, "card", None).await;
    stats(&v, "card", 10).await;
    assert!(cap.named("volume.slow_io").is_empty(), "{:?}", cap.events());
    fail::cfg("volume-io-probe-slow", "sleep(250)").expect("fail point");
    for _ in 0..3 {
        let s = stats(&v, "card", 10).await;
        assert!(s.probe_p99_ms.expect("p99") >= 200.0, "{s:?}");
    }
    let slow = cap.named("volume.slow_io");
    assert_eq!(slow.len(), 1, "{:?}", cap.events());
    assert_eq!(slow[0].field("volume"), Some("card"));
    assert_eq!(slow[0].field("threshold_ms"), Some("200"));
    fail::remove("volume-io-probe-slow");
    scenario.teardown();
}
