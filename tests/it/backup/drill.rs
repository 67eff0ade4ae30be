//! Drills of volume backups: pass, fail naming the store and artifact, and never leave a
//! scratch volume behind — after a pass, a failure, or a kill.

use super::*;

fn scratch_volumes(m: &Machine) -> Vec<String> {
    std::fs::read_dir(m.path("volumes"))
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("drill-"))
        .collect()
}

fn backed_up(m: &mut Machine) -> (String, String) {
    let key = m.encrypt_to_new_key();
    make_tree(&m.volume("chunks"));
    noise_file(&m.volume("chunks"), "noise.bin", 1 << 20);
    let report = m.json(&["now", "--stores", "volumes:chunks"], 0);
    (
        report["id"].as_str().expect("id").to_owned(),
        key.display().to_string(),
    )
}

#[test]
fn a_drill_passes_on_a_good_backup_and_fails_naming_the_store_on_a_damaged_one() {
    let mut m = Machine::new();
    let (id, key) = backed_up(&mut m);
    let live = describe(&m.volume("chunks"));
    let report = m.json(
        &["verify", &id, "--level", "drilled", "--identity", &key],
        0,
    );
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["counts_as"], "drilled", "{report}");
    let stores = &report["stores"];
    assert_eq!(stores["volumes"]["passed"], true, "{report}");
    // make_tree's regular files plus noise.bin.
    assert!(
        stores["volumes"]["restored"].as_u64().expect("restored") >= 4,
        "{report}"
    );
    assert!(stores["volumes"]["restore_ms"].is_u64(), "{report}");
    assert!(scratch_volumes(&m).is_empty(), "{:?}", scratch_volumes(&m));
    assert_eq!(
        describe(&m.volume("chunks")),
        live,
        "the drill touched the live volume"
    );
    let shown = m.json(&["show", &id], 0);
    assert_eq!(
        shown["verify"]["levels"]["drilled"]["passed"], true,
        "{shown}"
    );

    // A byte flipped: the drill fails, naming the store and the artifact; it is recorded,
    // and the backup counts for nothing until verified again.
    let artifact = m.backups().join(&id).join("volumes/chunks.tar.zst.age");
    let mut bytes = std::fs::read(&artifact).expect("read");
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    std::fs::write(&artifact, bytes).expect("write");
    let (code, out, err) = m.cli(&["verify", &id, "--level", "drilled", "--identity", &key]);
    assert_eq!(code, 65, "{out}{err}");
    assert!(
        out.contains("volumes/chunks.tar.zst.age") && out.contains("checksum_mismatch"),
        "{out}"
    );
    assert!(scratch_volumes(&m).is_empty(), "{:?}", scratch_volumes(&m));
    assert_eq!(
        m.json(&["show", &id], 0)["counts_as"],
        serde_json::Value::Null
    );
}

#[test]
fn a_killed_drill_leaves_a_scratch_volume_that_the_next_drill_removes() {
    let mut m = Machine::new();
    let (id, key) = backed_up(&mut m);
    let mut child = m
        .command(&["verify", &id, "--level", "drilled", "--identity", &key])
        .env("FAILPOINTS", "backup-drill-restored=sleep(20000)")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Its metadata, not its directory: the directory comes first, and a kill between the two
    // leaves a bare directory that is not a volume yet (volume creation is not atomic).
    while !scratch_volumes(&m)
        .iter()
        .any(|n| n.ends_with(".volume.json"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no scratch volume appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill has no preconditions; the pid is our child's, not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
    }
    child.wait().expect("wait");
    let left = scratch_volumes(&m);
    assert!(!left.is_empty(), "{left:?}");

    let report = m.json(
        &["verify", &id, "--level", "drilled", "--identity", &key],
        0,
    );
    assert_eq!(report["passed"], true, "{report}");
    assert!(scratch_volumes(&m).is_empty(), "{:?}", scratch_volumes(&m));
    // The volume actor knows nothing of it any more either.
    let (code, out, err) = m.cli(&["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("drill-"), "{out}");
}
