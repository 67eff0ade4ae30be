//! `lucid-db backup restore` of volumes: checks before writes, targets, tampering.

use super::*;

/// An encrypted backup of `chunks` (the tree of `make_tree`); answers (id, identity file).
fn backed_up(m: &mut Machine) -> (String, String) {
    let key = m.encrypt_to_new_key();
    make_tree(&m.volume("chunks"));
    let report = m.json(&["now", "--stores", "volumes:chunks"], 0);
    (
        report["id"].as_str().expect("id").to_owned(),
        key.display().to_string(),
    )
}

fn empty_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path).expect("rm -r");
        } else {
            std::fs::remove_file(&path).expect("rm");
        }
    }
}

#[test]
fn a_volume_comes_back_byte_for_byte_and_a_non_empty_target_is_refused_without_force() {
    let mut m = Machine::new();
    let (id, key) = backed_up(&mut m);
    let chunks = m.volume("chunks");
    let original = describe(&chunks);

    // Something new in the volume: restoring over it is refused, and nothing changes.
    std::fs::write(chunks.join("new.txt"), b"written after the backup").expect("write");
    let before = describe(&chunks);
    let (code, _, err) = m.cli(&[
        "restore",
        &id,
        "--stores",
        "volumes:chunks",
        "--identity",
        &key,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("volume chunks is not empty") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        describe(&chunks),
        before,
        "a refused restore changed the volume"
    );

    // --force replaces it with the backup's content.
    let report = m.json(
        &[
            "restore",
            &id,
            "--stores",
            "volumes:chunks",
            "--identity",
            &key,
            "--force",
        ],
        0,
    );
    assert_eq!(report["restored"][0]["target"], "chunks", "{report}");
    assert_eq!(describe(&chunks), original);

    // Emptied, it needs no --force; the default selection is everything the backup holds.
    empty_dir(&chunks);
    let report = m.json(&["restore", &id, "--identity", &key], 0);
    assert_eq!(report["restored"].as_array().expect("restored").len(), 1);
    assert_eq!(describe(&chunks), original);
}

#[test]
fn a_volume_restores_into_another_volume_and_bad_selections_exit_64() {
    let mut m = Machine::new();
    let (id, key) = backed_up(&mut m);
    let report = m.json(
        &[
            "restore",
            &id,
            "--stores",
            "volumes:chunks",
            "--to-volume",
            "chunks-restored",
            "--identity",
            &key,
        ],
        0,
    );
    assert_eq!(report["restored"][0]["target"], "chunks-restored");
    assert_eq!(
        describe(&m.volume("chunks-restored")),
        describe(&m.volume("chunks"))
    );

    let (code, _, err) = m.cli(&[
        "restore",
        &id,
        "--stores",
        "volumes:photos",
        "--identity",
        &key,
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("holds no volumes:photos"), "{err}");
    let (code, _, err) = m.cli(&["restore", &id, "--stores", "volumes:Bad Name"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("invalid volume name"), "{err}");
    // Without the identity an encrypted backup cannot be read: a configuration matter.
    let (code, _, err) = m.cli(&["restore", &id, "--stores", "volumes:chunks", "--force"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("--identity"), "{err}");
}

#[test]
fn a_damaged_artifact_is_found_before_anything_is_written() {
    let mut m = Machine::new();
    let (id, key) = backed_up(&mut m);
    let chunks = m.volume("chunks");
    empty_dir(&chunks);
    std::fs::write(chunks.join("keep.txt"), b"mine").expect("write");
    let before = describe(&chunks);
    // One byte flipped in the middle of the stored artifact.
    let artifact = m.backups().join(&id).join("volumes/chunks.tar.zst.age");
    let mut bytes = std::fs::read(&artifact).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&artifact, bytes).expect("write");
    let (code, _, err) = m.cli(&[
        "restore",
        &id,
        "--stores",
        "volumes:chunks",
        "--identity",
        &key,
        "--force",
    ]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("volumes/chunks.tar.zst.age") && err.contains("checksum_mismatch"),
        "{err}"
    );
    assert_eq!(
        describe(&chunks),
        before,
        "the damaged restore changed the volume"
    );
}

/// Beside a running daemon a restore goes through its API (tests/it/http/cli_client.rs); when
/// the daemon holds its lock but its API does not answer where the CLI looks, nothing is done
/// (exit 69): never a restore in process beside a live daemon.
#[test]
fn a_restore_beside_a_daemon_whose_api_does_not_answer_exits_69_and_does_nothing() {
    let mut m = Machine::new();
    let (id, key) = backed_up(&mut m);
    m.set(
        "LUCID_DB__HTTP__BIND",
        format!("127.0.0.1:{}", lucid_testkit::free_port()),
    );
    // The daemon's lock, held as `lucid-db run` holds it (tests/it/daemon.rs starts a real
    // daemon and checks the same).
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(m.path("state").join("locks").join("daemon.lock"))
        .expect("open");
    lock.lock().expect("lock");
    let (code, _, err) = m.cli(&["restore", &id, "--identity", &key]);
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("does not answer") && err.contains("nothing was done"),
        "{err}"
    );
    drop(lock);
    let (code, _, err) = m.cli(&["restore", &id, "--identity", &key, "--force"]);
    assert_eq!(code, 0, "{err}");
}
