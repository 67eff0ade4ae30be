//! The backup foundation against the real thing: a directory on disk, moto's S3 server, and
//! the stock `age`, `zstd` and `tar` CLIs an operator restores with (docs/backup.md).

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::stream;
use lucid_actors::backup::storage::{KEY, MANIFEST, S3_PART_SIZE, VERIFY};
use lucid_actors::backup::{
    ArtifactCheck, ArtifactRecord, BackupId, BackupKey, Catalogue, Codec, Decoding, Encryption,
    Identities, Level, LevelResult, Manifest, Outcome, Recipients, S3Settings, Storage,
    StoreRecord, Trigger, VerifyRecord, keygen, pipeline, walk_tar,
};
use lucid_actors::config::Compression;
use lucid_actors::redact::Secret;
use lucid_actors::volume::{ReserveQuota, VolumeActor, VolumeName};
use lucid_actors::{Config, StateDir};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A tree with what a volume holds: nested directories, modes, old mtimes, a relative and an
/// absolute-looking symlink, an empty file and a megabyte of incompressible bytes.
pub(crate) fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
    std::fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    std::fs::write(root.join("a/hello.txt"), "hello, volume\n").expect("write");
    std::fs::write(root.join("a/b/empty"), "").expect("write");
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(root.join("a/b/noise.bin"), noise).expect("write");
    std::os::unix::fs::symlink("b/noise.bin", root.join("a/link")).expect("symlink");
    std::os::unix::fs::symlink("/etc/lucid/elsewhere", root.join("dangling")).expect("symlink");
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    mode("run.sh", 0o755);
    mode("a/hello.txt", 0o600);
    mode("a/b", 0o750);
    for (i, p) in [
        "a/hello.txt",
        "a/b/empty",
        "run.sh",
        "a/b/noise.bin",
        "a/b",
        "a",
    ]
    .iter()
    .enumerate()
    {
        let t = filetime::FileTime::from_unix_time(1_600_000_000 + i as i64 * 86_400, 0);
        filetime::set_symlink_file_times(root.join(p), t, t).expect("mtime");
    }
}

/// What a tree holds, comparable: path → (kind, mode, mtime, content or link target).
fn describe(root: &Path) -> Vec<(String, String, u32, i64, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in walkdir(root) {
        let rel = entry
            .strip_prefix(root)
            .expect("under root")
            .display()
            .to_string();
        let meta = std::fs::symlink_metadata(&entry).expect("lstat");
        let (kind, body) = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&entry).expect("readlink");
            ("link", target.display().to_string().into_bytes())
        } else if meta.is_dir() {
            ("dir", Vec::new())
        } else {
            ("file", std::fs::read(&entry).expect("read"))
        };
        // A symlink's own mode and mtime are not restored by tar on Linux: compare targets.
        let (mode, mtime) = if kind == "link" {
            (0, 0)
        } else {
            (meta.mode() & 0o7777, meta.mtime())
        };
        out.push((rel, kind.to_owned(), mode, mtime, body));
    }
    out.sort();
    out
}

fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).expect("readdir") {
            let p = e.expect("entry").path();
            let meta = std::fs::symlink_metadata(&p).expect("lstat");
            if meta.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// The tree as a tar stream in 64 KiB chunks (what the volume actor's export yields).
fn tar_chunks(root: &Path) -> Vec<Result<Vec<u8>, String>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", root).expect("tar");
    let bytes = builder.into_inner().expect("tar");
    bytes.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect()
}

/// Runs `script` under `sh -c` with pipefail; answers (success, stderr).
pub(crate) fn sh(script: &str) -> (bool, String) {
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", script])
        .output()
        .unwrap_or_else(|e| panic!("bash: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The stock tools must be there: a missing one is a failure with the install hint.
pub(crate) fn need_stock_tools() {
    for tool in ["age", "zstd", "tar", "script"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "`{tool}` is not installed: run scripts/setup.sh (apt-get install age zstd tar util-linux)"
        );
    }
}

fn manifest_for(id: BackupId, records: Vec<ArtifactRecord>, encryption: Encryption) -> Manifest {
    let mut m = Manifest::new(
        id,
        id.time(),
        "test-pi",
        Trigger::Cli,
        encryption,
        Compression::Zstd,
    );
    m.stores.insert(
        "volumes".to_owned(),
        StoreRecord {
            outcome: Outcome::Complete,
            started: Some(id.time()),
            ended: Some(Utc::now()),
            source: serde_json::Map::new(),
            artifacts: records,
        },
    );
    m
}

fn codec_to(recipients: Recipients) -> Codec {
    Codec {
        compression: Compression::Zstd,
        zstd_workers: 2,
        recipients,
    }
}

struct S3 {
    server: lucid_testkit::Server,
    bucket: String,
}

impl S3 {
    fn start() -> S3 {
        let server = lucid_testkit::s3();
        let bucket = format!("lucid-{}", std::process::id());
        lucid_testkit::create_bucket(&server, &bucket);
        S3 { server, bucket }
    }

    fn settings(&self, prefix: &str) -> S3Settings {
        S3Settings {
            endpoint: self.server.url(),
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
            region: "us-east-1".to_owned(),
            access_key_id: Secret::new("AKIDLUCIDTEST"),
            secret_access_key: Secret::new("sekrit-do-not-print"),
        }
    }

    fn storage(&self, prefix: &str) -> Storage {
        Storage::s3(&self.settings(prefix), IO_TIMEOUT).expect("s3 storage")
    }
}

/// Reads a stored artifact through the storage API into a local file (S3 → disk, for the
/// stock tools).
async fn download(storage: &Storage, id: &BackupId, name: &str, to: &Path) {
    let mut reader = storage.reader(id, name).await.expect("reader");
    let mut file = std::fs::File::create(to).expect("create");
    while let Some(chunk) = reader.next_chunk().await {
        file.write_all(&chunk.expect("chunk")).expect("write");
    }
}

/// Backs the tree up, restores it with stock tools, compares; a different identity opens
/// nothing.
async fn round_trip_through_stock_tools(
    storage: &Storage,
    local_copy: impl AsyncFnOnce(&BackupId, &str, &Path),
) {
    need_stock_tools();
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    make_tree(&tree);
    let identity = tmp.path().join("backup.key");
    let recipient = keygen(&identity, Utc::now()).expect("keygen");
    let recipients =
        Recipients::parse("backup.recipients", &[recipient.to_string()]).expect("recipient");
    let codec = codec_to(recipients.clone());
    let id = BackupId::new(Utc::now());
    let name = format!("volumes/chunks.tar{}", codec.suffix());
    assert_eq!(name, "volumes/chunks.tar.zst.age");
    let record = pipeline::write_artifact(
        storage,
        &id,
        &name,
        "chunks",
        &codec,
        stream::iter(tar_chunks(&tree)),
    )
    .await
    .expect("backed up");
    let manifest = manifest_for(
        id,
        vec![record.clone()],
        Encryption {
            recipients: recipients.to_strings(),
            passphrase: false,
        },
    );
    storage
        .put_file(&id, MANIFEST, manifest.to_json())
        .await
        .expect("manifest");
    assert_eq!(storage.list_backups().await.expect("list"), vec![id]);

    // Both levels through lucid-db's own read path.
    pipeline::verify_checksum(storage, &id, &record)
        .await
        .expect("checksummed");
    let decoding = Decoding::for_manifest(
        &manifest,
        Some(Identities::load(&identity).expect("identity")),
    );
    let summary = pipeline::decode_artifact(storage, &id, &record, &decoding, walk_tar)
        .await
        .expect("decoded");
    assert!(summary.entries >= 9, "{summary:?}");

    // The stock tools, as docs/backup.md tells an operator.
    let file = tmp.path().join("chunks.tar.zst.age");
    local_copy(&id, &name, &file).await;
    let out = tmp.path().join("restored");
    std::fs::create_dir(&out).expect("mkdir");
    let (ok, err) = sh(&format!(
        "age -d -i '{}' '{}' | zstd -d | tar -x -C '{}'",
        identity.display(),
        file.display(),
        out.display()
    ));
    assert!(ok, "stock restore failed: {err}");
    assert_eq!(
        describe(&out),
        describe(&tree),
        "the tree came back different"
    );

    // Another identity opens nothing.
    let other = tmp.path().join("other.key");
    keygen(&other, Utc::now()).expect("keygen");
    let (ok, err) = sh(&format!(
        "age -d -i '{}' '{}' > '{}'",
        other.display(),
        file.display(),
        tmp.path().join("plain").display()
    ));
    assert!(!ok, "a different identity decrypted the artifact");
    assert!(err.contains("no identity matched"), "{err}");
    assert_eq!(
        std::fs::metadata(tmp.path().join("plain"))
            .map(|m| m.len())
            .unwrap_or(0),
        0
    );
    let wrong = Decoding::for_manifest(&manifest, Some(Identities::load(&other).expect("other")));
    let err = pipeline::decode_artifact(storage, &id, &record, &wrong, walk_tar)
        .await
        .expect_err("wrong identity");
    assert_eq!(err.code(), "wrong_identity");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_volume_tree_comes_back_byte_for_byte_with_stock_tools_from_fs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("backups");
    let storage = Storage::fs(&root, IO_TIMEOUT).expect("fs");
    storage.check().await.expect("check");
    let root2 = root.clone();
    round_trip_through_stock_tools(
        &storage,
        async move |id: &BackupId, name: &str, to: &Path| {
            // On fs the stored file is the artifact itself: copy it as an operator would.
            std::fs::copy(root2.join(id.to_string()).join(name), to).expect("copy");
        },
    )
    .await;
    // Nothing is left under a .partial name.
    assert!(
        !walkdir(&root)
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".partial")),
        "{:?}",
        walkdir(&root)
    );
}

#[tokio::test]
async fn a_volume_tree_comes_back_byte_for_byte_with_stock_tools_from_s3() {
    let s3 = S3::start();
    let storage = s3.storage("lucid/pi-1");
    storage.check().await.expect("bucket reachable");
    let st = storage.clone();
    round_trip_through_stock_tools(
        &storage,
        async move |id: &BackupId, name: &str, to: &Path| {
            download(&st, id, name, to).await;
        },
    )
    .await;
    // Under the prefix, and nowhere else.
    let other = s3.storage("");
    assert!(other.list_backups().await.expect("list").is_empty());
}

/// An artifact bigger than one part goes up as a multipart upload and reads back whole.
#[tokio::test]
async fn s3_multipart_artifacts_read_back_whole() {
    let s3 = S3::start();
    let storage = s3.storage("");
    let codec = Codec {
        compression: Compression::Zstd,
        zstd_workers: 0,
        recipients: Recipients::default(),
    };
    let mut x = 0x1234_5678_9abc_def1u64;
    let data: Vec<Result<Vec<u8>, String>> = (0..20)
        .map(|_| {
            Ok((0..(1 << 20))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect())
        })
        .collect();
    let id = BackupId::new(Utc::now());
    let record = pipeline::write_artifact(
        &storage,
        &id,
        "volumes/big.tar.zst",
        "big",
        &codec,
        stream::iter(data),
    )
    .await
    .expect("multipart upload");
    assert!(record.bytes_stored > 2 * lucid_actors::backup::storage::S3_PART_SIZE as u64);
    pipeline::verify_checksum(&storage, &id, &record)
        .await
        .expect("checksummed");
    let listed = storage.list_backup(&id).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, record.bytes_stored);
}

/// Feeds `input` to a program at its passphrase prompt through a pty (`script`), since age
/// reads passphrases only from a terminal.
fn run_with_passphrase(command: &str, passphrase: &str) -> (bool, String) {
    let mut child = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut reader = std::io::BufReader::new(stdout);
        let mut buf = [0u8; 256];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                    let _ = tx.send(seen.clone());
                }
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while !seen.to_lowercase().contains("passphrase") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no passphrase prompt; saw {seen:?}");
        if let Ok(s) = rx.recv_timeout(left) {
            seen = s;
        }
    }
    stdin
        .write_all(format!("{passphrase}\n").as_bytes())
        .expect("type the passphrase");
    let status = child.wait().expect("wait");
    drop(stdin);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (
        status.success(),
        format!("{err}{}", rx.try_iter().last().unwrap_or(seen)),
    )
}

#[tokio::test]
async fn passphrase_mode_key_age_opens_with_stock_age_and_decrypts_the_artifact() {
    need_stock_tools();
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = Storage::fs(&tmp.path().join("backups"), IO_TIMEOUT).expect("fs");
    let tree = tmp.path().join("tree");
    make_tree(&tree);
    let passphrase = Secret::new("tr0ub4dor & 3");
    let key = BackupKey::generate();
    let id = BackupId::new(Utc::now());
    let sealed = key.seal(&passphrase, id.time(), None).expect("seal");
    storage.put_file(&id, KEY, sealed).await.expect("key.age");
    let mut recipients = Recipients::default();
    recipients.push(key.recipient());
    let record = pipeline::write_artifact(
        &storage,
        &id,
        "volumes/chunks.tar.zst.age",
        "chunks",
        &codec_to(recipients),
        stream::iter(tar_chunks(&tree)),
    )
    .await
    .expect("backed up");

    // The stock CLI, at a terminal: key.age → the identity file.
    let dir = tmp.path().join("backups").join(id.to_string());
    let identity = tmp.path().join("key.txt");
    let (ok, out) = run_with_passphrase(
        &format!(
            "age -d -o '{}' '{}'",
            identity.display(),
            dir.join(KEY).display()
        ),
        passphrase.expose(),
    );
    assert!(ok, "age -d key.age failed: {out}");
    let text = std::fs::read_to_string(&identity).expect("identity");
    assert!(
        text.contains(&format!("# public key: {}", key.recipient())),
        "{text}"
    );
    let out = tmp.path().join("restored");
    std::fs::create_dir(&out).expect("mkdir");
    let (ok, err) = sh(&format!(
        "age -d -i '{}' '{}' | zstd -d | tar -x -C '{}'",
        identity.display(),
        dir.join(&record.name).display(),
        out.display()
    ));
    assert!(ok, "restore with the unsealed identity failed: {err}");
    assert_eq!(describe(&out), describe(&tree));

    // A wrong passphrase opens nothing, and lucid-db's own open agrees with the CLI.
    let (ok, _) = run_with_passphrase(
        &format!("age -d -o /dev/null '{}'", dir.join(KEY).display()),
        "not it",
    );
    assert!(!ok, "a wrong passphrase opened key.age");
    let bytes = storage
        .get_file(&id, KEY)
        .await
        .expect("read")
        .expect("there");
    let opened = BackupKey::open(&bytes, &passphrase).expect("open");
    assert_eq!(opened.recipient().to_string(), key.recipient().to_string());
}

#[tokio::test]
async fn tampering_is_reported_as_corrupt_naming_the_artifact() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("backups");
    let storage = Storage::fs(&root, IO_TIMEOUT).expect("fs");
    let key = BackupKey::generate();
    let mut recipients = Recipients::default();
    recipients.push(key.recipient());
    let tree = tmp.path().join("tree");
    make_tree(&tree);
    let id = BackupId::new(Utc::now());
    let name = "volumes/chunks.tar.zst.age";
    let record = pipeline::write_artifact(
        &storage,
        &id,
        name,
        "chunks",
        &codec_to(recipients.clone()),
        stream::iter(tar_chunks(&tree)),
    )
    .await
    .expect("backed up");
    let manifest = manifest_for(
        id,
        vec![record.clone()],
        Encryption {
            recipients: recipients.to_strings(),
            passphrase: false,
        },
    );
    let decoding = Decoding::for_manifest(&manifest, Some(key.identities()));
    let path = root.join(id.to_string()).join(name);
    let original = std::fs::read(&path).expect("read");

    let check = async |want: &str| {
        let a = pipeline::verify_checksum(&storage, &id, &record)
            .await
            .expect_err(want);
        let b = pipeline::decode_artifact(&storage, &id, &record, &decoding, walk_tar)
            .await
            .expect_err(want);
        for err in [a, b] {
            assert_eq!(err.code(), want, "{err}");
            assert!(err.is_corrupt(), "{err}");
            assert_eq!(err.artifact(), name);
            assert!(err.to_string().contains(name), "{err}");
        }
    };
    // One flipped byte in the middle, and one in the age header.
    for at in [original.len() / 2, 40] {
        let mut flipped = original.clone();
        flipped[at] ^= 0x01;
        std::fs::write(&path, &flipped).expect("write");
        check("checksum_mismatch").await;
    }
    // Cut short.
    std::fs::write(&path, &original[..original.len() - 1000]).expect("write");
    check("truncated").await;
    // Gone.
    std::fs::remove_file(&path).expect("rm");
    check("missing").await;

    // Intact, but the wrong identity, or none.
    std::fs::write(&path, &original).expect("write");
    pipeline::verify_checksum(&storage, &id, &record)
        .await
        .expect("intact again");
    let wrong = Decoding::for_manifest(&manifest, Some(BackupKey::generate().identities()));
    let err = pipeline::decode_artifact(&storage, &id, &record, &wrong, walk_tar)
        .await
        .expect_err("wrong identity");
    assert_eq!(err.code(), "wrong_identity");
    assert!(err.is_corrupt() && err.to_string().contains(name), "{err}");
    let none = Decoding::for_manifest(&manifest, None);
    let err = pipeline::decode_artifact(&storage, &id, &record, &none, walk_tar)
        .await
        .expect_err("no identity");
    assert_eq!(err.code(), "identity_required");

    // Bytes as recorded, but not what the manifest says they are: a record for data that was
    // encrypted and compressed fine but is not a tar stream.
    let not_tar = pipeline::write_artifact(
        &storage,
        &id,
        "volumes/other.tar.zst.age",
        "other",
        &codec_to(recipients),
        stream::iter(vec![Ok::<_, String>(vec![0x55u8; 4096])]),
    )
    .await
    .expect("written");
    let err = pipeline::decode_artifact(&storage, &id, &not_tar, &decoding, walk_tar)
        .await
        .expect_err("not tar");
    assert_eq!(err.code(), "bad_format", "{err}");
    assert!(
        err.to_string().contains("volumes/other.tar.zst.age"),
        "{err}"
    );

    // Manifests from storage: another format, and one that does not parse.
    let mut text = String::from_utf8(manifest.to_json()).expect("utf8");
    text = text.replacen("\"format\": 1", "\"format\": 2", 1);
    storage
        .put_file(&id, MANIFEST, text.into_bytes())
        .await
        .expect("put");
    let bytes = storage
        .get_file(&id, MANIFEST)
        .await
        .expect("get")
        .expect("there");
    assert_eq!(
        Manifest::parse(&bytes).expect_err("format 2").code(),
        "unknown_format"
    );
    storage
        .put_file(&id, MANIFEST, b"{\"format\": 1, ".to_vec())
        .await
        .expect("put");
    let bytes = storage
        .get_file(&id, MANIFEST)
        .await
        .expect("get")
        .expect("there");
    assert_eq!(
        Manifest::parse(&bytes).expect_err("cut").code(),
        "bad_manifest"
    );
}

#[actix_rt::test]
async fn fs_partials_are_cleaned_up_and_a_writer_stops_at_its_reservation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = Config::defaults().expect("defaults");
    c.volumes.root = tmp.path().join("volumes");
    std::fs::create_dir(&c.volumes.root).expect("mkdir");
    c.supervisor.stream_idle_timeout = Duration::from_secs(5);
    let volumes = VolumeActor::start_with(&c.volumes, &c.supervisor);
    let reservation = volumes
        .call(ReserveQuota {
            name: VolumeName::new("backups").expect("name"),
            bytes: 256 << 10,
        })
        .await
        .expect("reserved");
    let dir = reservation.data_dir().to_owned();
    let storage = Storage::fs(&dir, IO_TIMEOUT)
        .expect("fs")
        .charged_to(Arc::new(reservation));
    let plain = Codec {
        compression: Compression::Zstd,
        zstd_workers: 0,
        recipients: Recipients::default(),
    };

    // A complete backup that fits.
    let done = BackupId::new(Utc::now());
    let record = pipeline::write_artifact(
        &storage,
        &done,
        "volumes/small.tar.zst",
        "small",
        &plain,
        stream::iter(vec![Ok::<_, String>(vec![0u8; 100_000])]),
    )
    .await
    .expect("fits");
    storage
        .put_file(
            &done,
            MANIFEST,
            manifest_for(done, vec![record], Encryption::default()).to_json(),
        )
        .await
        .expect("manifest");

    // Past the reservation: stopped with over_reservation, nothing left behind.
    let big = BackupId::new(Utc::now() + chrono::Duration::seconds(1));
    let mut x = 7u64;
    let noise: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let err = pipeline::write_artifact(
        &storage,
        &big,
        "volumes/big.tar.zst",
        "big",
        &plain,
        stream::iter(vec![Ok::<_, String>(noise)]),
    )
    .await
    .expect_err("past the reservation");
    assert_eq!(err.code(), "over_reservation", "{err}");
    assert!(
        !dir.join(big.to_string())
            .join("volumes/big.tar.zst")
            .exists()
    );
    assert!(
        !dir.join(big.to_string())
            .join("volumes/big.tar.zst.partial")
            .exists()
    );

    // What a killed run leaves: a .partial file, and an artifact without a manifest.
    let crashed = BackupId::new(Utc::now() + chrono::Duration::seconds(2));
    let mut w = storage
        .writer(&crashed, "volumes/a.tar.zst")
        .await
        .expect("writer");
    w.write(bytes::Bytes::from_static(b"half an artifact"))
        .await
        .expect("write");
    drop(w);
    storage
        .put_file(&crashed, "volumes/b.tar.zst", b"whole".to_vec())
        .await
        .expect("put");
    let running = BackupId::new(Utc::now() + chrono::Duration::seconds(3));
    let mut w = storage
        .writer(&running, "volumes/c.tar.zst")
        .await
        .expect("writer");
    w.write(bytes::Bytes::from_static(b"in progress"))
        .await
        .expect("write");
    let crashed_dir = dir.join(crashed.to_string());
    assert!(crashed_dir.join("volumes/a.tar.zst.partial").exists());
    assert_eq!(storage.list_backups().await.expect("list"), vec![done]);

    let report = storage.cleanup(Some(&running)).await.expect("cleanup");
    assert_eq!(
        report.partials,
        vec![format!("{crashed}/volumes/a.tar.zst.partial")]
    );
    assert_eq!(report.incomplete, vec![crashed]);
    assert!(!crashed_dir.join("volumes/b.tar.zst").exists());
    assert!(
        dir.join(running.to_string())
            .join("volumes/c.tar.zst.partial")
            .exists(),
        "the running backup is spared"
    );
    assert_eq!(storage.list_backups().await.expect("list"), vec![done]);
    w.abort().await;
    assert!(
        !dir.join(running.to_string())
            .join("volumes/c.tar.zst.partial")
            .exists()
    );
    drop(storage);
}

#[tokio::test]
async fn s3_incomplete_backups_are_never_listed_and_are_cleaned_up() {
    let s3 = S3::start();
    let storage = s3.storage("p");
    let complete = BackupId::new(Utc::now());
    storage
        .put_file(&complete, "volumes/x.tar.zst", b"x".to_vec())
        .await
        .expect("put");
    storage
        .put_file(
            &complete,
            MANIFEST,
            manifest_for(complete, vec![], Encryption::default()).to_json(),
        )
        .await
        .expect("manifest");
    let crashed = BackupId::new(Utc::now() + chrono::Duration::seconds(1));
    storage
        .put_file(&crashed, "volumes/y.tar.zst", b"y".to_vec())
        .await
        .expect("put");
    assert_eq!(storage.list_backups().await.expect("list"), vec![complete]);
    let report = storage.cleanup(None).await.expect("cleanup");
    assert_eq!(report.incomplete, vec![crashed]);
    assert!(
        storage
            .list_backup(&crashed)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(storage.list_backup(&complete).await.expect("list").len(), 2);
    storage.delete_backup(&complete).await.expect("delete");
    assert!(storage.list_backups().await.expect("list").is_empty());
}

/// Starts artifact `name` of `id` and writes two parts' worth, so a multipart upload is open,
/// then drops the writer without finishing or aborting it: what a SIGKILL leaves on S3.
async fn open_upload(storage: &Storage, id: &BackupId, name: &str) {
    let mut w = storage.writer(id, name).await.expect("writer");
    w.write(bytes::Bytes::from(vec![7u8; 2 * S3_PART_SIZE + 1]))
        .await
        .expect("write");
    drop(w);
}

#[tokio::test]
async fn s3_cleanup_aborts_the_multipart_uploads_a_killed_writer_left_open() {
    let s3 = S3::start();
    let storage = s3.storage("lucid/pi");
    let elsewhere = s3.storage("elsewhere");
    let crashed = BackupId::new(Utc::now());
    let running = BackupId::new(Utc::now() + chrono::Duration::seconds(1));
    open_upload(&storage, &crashed, "volumes/a.tar.zst").await;
    open_upload(&storage, &running, "volumes/b.tar.zst").await;
    open_upload(&elsewhere, &crashed, "volumes/c.tar.zst").await;
    let mut open = storage.open_uploads().await.expect("list uploads");
    open.sort();
    assert_eq!(
        open,
        [
            format!("{crashed}/volumes/a.tar.zst"),
            format!("{running}/volumes/b.tar.zst")
        ],
        "an upload left open is invisible to listings of objects, not to this one"
    );
    assert!(
        storage
            .list_backup(&crashed)
            .await
            .expect("list")
            .is_empty()
    );

    let report = storage.cleanup(Some(&running)).await.expect("cleanup");
    assert_eq!(report.uploads, [format!("{crashed}/volumes/a.tar.zst")]);
    assert_eq!(
        storage.open_uploads().await.expect("list uploads"),
        [format!("{running}/volumes/b.tar.zst")],
        "the running backup's upload is spared"
    );
    assert_eq!(
        elsewhere.open_uploads().await.expect("list uploads"),
        [format!("{crashed}/volumes/c.tar.zst")],
        "another prefix is not ours"
    );

    // Once that run is over (killed too), the next one leaves no upload open.
    let report = storage.cleanup(None).await.expect("cleanup");
    assert_eq!(report.uploads, [format!("{running}/volumes/b.tar.zst")]);
    assert!(
        storage
            .open_uploads()
            .await
            .expect("list uploads")
            .is_empty()
    );
    assert_eq!(
        elsewhere
            .cleanup(None)
            .await
            .expect("cleanup")
            .uploads
            .len(),
        1
    );
    assert!(
        elsewhere
            .open_uploads()
            .await
            .expect("list uploads")
            .is_empty()
    );
}

#[tokio::test]
async fn s3_errors_name_the_endpoint_and_bucket_never_a_key() {
    let s3 = S3::start();
    let mut missing = s3.settings("");
    missing.bucket = "no-such-bucket".to_owned();
    let err = Storage::s3(&missing, IO_TIMEOUT)
        .expect("client")
        .check()
        .await
        .expect_err("no bucket");
    assert_eq!(err.code(), "no_bucket", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("no-such-bucket") && text.contains(&s3.server.url()),
        "{text}"
    );
    assert!(
        !text.contains("sekrit") && !text.contains("AKIDLUCIDTEST"),
        "{text}"
    );

    let mut unreachable = s3.settings("");
    unreachable.endpoint = format!("http://127.0.0.1:{}", lucid_testkit::free_port());
    let err = Storage::s3(&unreachable, IO_TIMEOUT)
        .expect("client")
        .check()
        .await
        .expect_err("nothing listens");
    assert_eq!(err.code(), "storage_unreachable", "{err}");
    let text = err.to_string();
    assert!(text.contains(&unreachable.endpoint), "{text}");
    assert!(
        !text.contains("sekrit") && !text.contains("AKIDLUCIDTEST"),
        "{text}"
    );
}

#[tokio::test]
async fn the_catalogue_is_rebuilt_from_s3_with_verification_results() {
    let s3 = S3::start();
    let storage = s3.storage("site-a");
    let key = BackupKey::generate();
    let mut recipients = Recipients::default();
    recipients.push(key.recipient());
    let enc = Encryption {
        recipients: recipients.to_strings(),
        passphrase: false,
    };
    let mut ids = Vec::new();
    for i in 0..2 {
        let id = BackupId::new(Utc::now() + chrono::Duration::seconds(i));
        let record = pipeline::write_artifact(
            &storage,
            &id,
            "volumes/v.tar.zst.age",
            "v",
            &codec_to(recipients.clone()),
            stream::iter(vec![Ok::<_, String>(vec![1u8; 1000])]),
        )
        .await
        .expect("write");
        storage
            .put_file(
                &id,
                MANIFEST,
                manifest_for(id, vec![record], enc.clone()).to_json(),
            )
            .await
            .expect("manifest");
        ids.push(id);
    }
    // The first one verified at two levels, the second with a failure.
    let at = Utc::now();
    let ok = |name: &str| std::collections::BTreeMap::from([(name.to_owned(), ArtifactCheck::Ok)]);
    let mut v0 = VerifyRecord::new(ids[0]);
    v0.record(
        Level::Checksummed,
        LevelResult::from_checks(at, ok("volumes/v.tar.zst.age")),
    );
    v0.record(
        Level::Decoded,
        LevelResult::from_checks(
            at + chrono::Duration::seconds(1),
            ok("volumes/v.tar.zst.age"),
        ),
    );
    storage
        .put_file(&ids[0], VERIFY, v0.to_json())
        .await
        .expect("verify");
    let mut v1 = VerifyRecord::new(ids[1]);
    v1.record(
        Level::Checksummed,
        LevelResult::from_checks(
            at,
            std::collections::BTreeMap::from([(
                "volumes/v.tar.zst.age".to_owned(),
                ArtifactCheck::Failed {
                    code: "checksum_mismatch".into(),
                    message: "x".into(),
                },
            )]),
        ),
    );
    storage
        .put_file(&ids[1], VERIFY, v1.to_json())
        .await
        .expect("verify");
    // One from a newer lucid-db: reported, not listed.
    let newer = BackupId::new(Utc::now() + chrono::Duration::seconds(5));
    storage
        .put_file(
            &newer,
            MANIFEST,
            br#"{"format": 2, "whatever": true}"#.to_vec(),
        )
        .await
        .expect("put");

    let state = tempfile::tempdir().expect("state");
    let state = StateDir::new(state.path().join("lucid-db"));
    let (cat, report) = Catalogue::open(&state.backup_catalogue(), &storage)
        .await
        .expect("open");
    assert!(report.rebuilt);
    assert_eq!(report.added, ids);
    assert_eq!(report.unreadable.len(), 1, "{report:?}");
    assert_eq!(report.unreadable[0].0, newer);
    assert_eq!(report.unreadable[0].1, "unknown_format");
    assert_eq!(cat.len(), 2);
    assert_eq!(
        cat.get(&ids[0]).expect("first").effective_level(),
        Some(Level::Decoded)
    );
    assert_eq!(cat.get(&ids[1]).expect("second").effective_level(), None);
    assert!(cat.get(&ids[1]).expect("second").verify.is_some());

    // A fresh Pi: the state directory is gone. Everything comes back from the bucket.
    std::fs::remove_dir_all(state.root()).expect("rm state");
    let (again, report) = Catalogue::open(&state.backup_catalogue(), &storage)
        .await
        .expect("open again");
    assert!(report.rebuilt);
    assert_eq!(again.entries().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    assert_eq!(again.get(&ids[0]), cat.get(&ids[0]));
    assert_eq!(again.get(&ids[1]), cat.get(&ids[1]));

    // Opened again with the cache in place: refreshed, not rebuilt; a deleted backup leaves
    // it, a local verification result stays.
    drop(again);
    storage.delete_backup(&ids[1]).await.expect("delete");
    let (mut cat, report) = Catalogue::open(&state.backup_catalogue(), &storage)
        .await
        .expect("refresh");
    assert!(!report.rebuilt, "{report:?}");
    assert_eq!(report.removed, vec![ids[1]]);
    let mut v = VerifyRecord::new(ids[0]);
    v.record(
        Level::Checksummed,
        LevelResult::from_checks(Utc::now(), ok("volumes/v.tar.zst.age")),
    );
    cat.set_verify(v.clone()).await.expect("set verify");
    let (cat, _) = Catalogue::open(&state.backup_catalogue(), &storage)
        .await
        .expect("reopen");
    assert_eq!(cat.get(&ids[0]).expect("kept").verify.as_ref(), Some(&v));
    // The cache mirrors one storage: pointed elsewhere, it is rebuilt for that one.
    let (other, report) = Catalogue::open(&state.backup_catalogue(), &s3.storage("site-b"))
        .await
        .expect("other storage");
    assert!(report.rebuilt && other.is_empty());
}

#[test]
fn config_check_warns_when_backups_would_be_unencrypted() {
    let run = |env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_lucid-db"))
            .args(["config", "check"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .output()
            .expect("run lucid-db")
    };
    let out = run(&[]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: backup.recipients:") && err.contains("UNENCRYPTED"),
        "{err}"
    );
    let out = run(&[(
        "LUCID_DB__BACKUP__RECIPIENTS",
        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
    )]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
    let out = run(&[("LUCID_DB__BACKUP__RECIPIENTS", "age1oops")]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("backup.recipients") && !err.contains("oops"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The backup actor, through the CLI and in process

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");

/// A machine for the CLI: its own data root, state directory and keys in a temporary
/// directory, every database store off (`backup_stores` turns them on, against real servers).
pub(crate) struct Machine {
    dir: tempfile::TempDir,
    pub(crate) env: Vec<(String, String)>,
}

impl Machine {
    pub(crate) fn new() -> Machine {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("volumes")).expect("mkdir");
        let env = vec![
            ("LUCID_DB__VOLUMES__ROOT", dir.path().join("volumes")),
            ("LUCID_DB__STATE_DIR", dir.path().join("state")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.display().to_string()))
        .chain(
            [
                ("LUCID_DB__REDIS__ENABLED", "false"),
                ("LUCID_DB__MONGODB__ENABLED", "false"),
                ("LUCID_DB__ELASTICSEARCH__ENABLED", "false"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .collect();
        Machine { dir, env }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A volume's directory (a default volume is adopted when the CLI first starts).
    pub(crate) fn volume(&self, name: &str) -> PathBuf {
        self.path("volumes").join(name)
    }

    pub(crate) fn backups(&self) -> PathBuf {
        self.volume("backups")
    }

    pub(crate) fn set(&mut self, key: &str, value: impl Into<String>) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.into()));
    }

    /// A fresh identity; its recipient goes into backup.recipients. Answers the identity file.
    pub(crate) fn encrypt_to_new_key(&mut self) -> PathBuf {
        let key = self.path(&format!("key-{}.txt", rand_suffix()));
        let recipient = keygen(&key, Utc::now()).expect("keygen");
        self.set("LUCID_DB__BACKUP__RECIPIENTS", recipient.to_string());
        key
    }

    fn use_s3(&mut self, s3: &S3, prefix: &str) {
        let id = self.path("s3-id");
        let secret = self.path("s3-secret");
        std::fs::write(&id, "AKIDLUCIDTEST\n").expect("write");
        std::fs::write(&secret, "sekrit-do-not-print\n").expect("write");
        for (k, v) in [
            ("LUCID_DB__BACKUP__STORAGE", "s3".to_owned()),
            ("LUCID_DB__BACKUP__S3__ENDPOINT", s3.server.url()),
            ("LUCID_DB__BACKUP__S3__BUCKET", s3.bucket.clone()),
            ("LUCID_DB__BACKUP__S3__PREFIX", prefix.to_owned()),
            ("LUCID_DB__BACKUP__S3__REGION", "us-east-1".to_owned()),
            (
                "LUCID_DB__BACKUP__S3__ACCESS_KEY_ID_FILE",
                id.display().to_string(),
            ),
            (
                "LUCID_DB__BACKUP__S3__SECRET_ACCESS_KEY_FILE",
                secret.display().to_string(),
            ),
        ] {
            self.set(k, v);
        }
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("backup")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    /// Runs `lucid-db backup ARGS`; answers (exit code, stdout, stderr).
    pub(crate) fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.command(args).output().expect("run lucid-db");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            !stderr.contains("sekrit") && !stdout.contains("sekrit"),
            "a secret was printed: {stderr}"
        );
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    /// `backup ARGS --json`, exit code checked, stdout parsed.
    pub(crate) fn json(&self, args: &[&str], want: i32) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = self.cli(&all);
        assert_eq!(code, want, "backup {args:?}: {err}\n{out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// The configuration the CLI reads, for the actors run in this test's own process.
    fn config(&self) -> Config {
        let env: std::collections::HashMap<String, String> = self.env.iter().cloned().collect();
        lucid_actors::load_config(&lucid_actors::config::LoadOptions { file: None, env })
            .expect("config")
            .config
    }
}

fn rand_suffix() -> String {
    format!("{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    // Distinct enough for file names within one test.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// `bytes` of incompressible data in `dir/name`.
fn noise_file(dir: &Path, name: &str, bytes: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ bytes as u64;
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(name)).expect("create"));
    let mut left = bytes;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        for word in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
}

/// The artifacts of a `backup now --json` report, by name.
pub(crate) fn artifact_names(report: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = report["stores"]
        .as_object()
        .expect("stores")
        .values()
        .flat_map(|s| {
            s["artifacts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|a| a["name"].as_str().expect("name").to_owned())
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_volume_backup_is_listed_shown_verified_and_restored_by_stock_tools_from_fs() {
    need_stock_tools();
    let mut m = Machine::new();
    let key = m.encrypt_to_new_key();
    make_tree(&m.volume("chunks"));

    let report = m.json(&["now"], 0);
    assert_eq!(report["outcome"], "complete", "{report}");
    assert_eq!(report["encrypted"], true);
    let id = report["id"].as_str().expect("id").to_owned();
    let names = artifact_names(&report);
    for want in [
        "lucid-db/config.toml.zst.age",
        "lucid-db/mongodb-schemas.tar.zst.age",
        "volumes/chunks.tar.zst.age",
        "volumes/sessions.tar.zst.age",
    ] {
        assert!(names.contains(&want.to_owned()), "{want}: {names:?}");
    }
    for never in ["mongodb", "redis", "elasticsearch", "backups"] {
        assert!(
            !names.contains(&format!("volumes/{never}.tar.zst.age")),
            "{never} is not in `volumes`: {names:?}"
        );
    }

    let list = m.json(&["list"], 0);
    assert_eq!(list.as_array().expect("list").len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["counts_as"], serde_json::Value::Null);
    let shown = m.json(&["show", &id], 0);
    assert_eq!(shown["manifest"]["format"], 1);
    assert_eq!(shown["manifest"]["trigger"], "cli");
    let (code, text, err) = m.cli(&["show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("volumes/chunks.tar.zst.age"), "{text}");

    let verified = m.json(&["verify", &id], 0);
    assert_eq!(verified["passed"], true, "{verified}");
    assert_eq!(verified["counts_as"], "checksummed");
    // decoded: no key at hand is a configuration problem; the right one passes.
    let (code, _, err) = m.cli(&["verify", &id, "--level", "decoded"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("--identity"), "{err}");
    let key_arg = key.display().to_string();
    let verified = m.json(
        &["verify", &id, "--level", "decoded", "--identity", &key_arg],
        0,
    );
    assert_eq!(verified["counts_as"], "decoded", "{verified}");
    let list = m.json(&["list"], 0);
    assert_eq!(list[0]["counts_as"], "decoded");
    // Another identity opens nothing: 65, naming the artifacts, and nothing is recorded.
    let other = m.path("other.key");
    keygen(&other, Utc::now()).expect("keygen");
    let other_arg = other.display().to_string();
    let (code, out, _) = m.cli(&[
        "verify",
        &id,
        "--level",
        "decoded",
        "--identity",
        &other_arg,
    ]);
    assert_eq!(code, 65, "{out}");
    assert!(
        out.contains("volumes/chunks.tar.zst.age (wrong_identity)"),
        "{out}"
    );
    assert_eq!(m.json(&["list"], 0)[0]["counts_as"], "decoded");
    // An identity file that does not parse: 78, naming the file, never its text.
    let bad = m.path("bad.key");
    std::fs::write(&bad, "AGE-SECRET-KEY-1NOTAKEYATALL\n").expect("write");
    let bad_arg = bad.display().to_string();
    let (code, _, err) = m.cli(&["verify", &id, "--level", "decoded", "--identity", &bad_arg]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("bad.key") && !err.contains("NOTAKEY"), "{err}");

    // The stock tools give the volume back, byte for byte, with modes, mtimes and symlinks.
    let file = m.backups().join(&id).join("volumes/chunks.tar.zst.age");
    let out = m.path("restored");
    std::fs::create_dir(&out).expect("mkdir");
    let (ok, err) = sh(&format!(
        "age -d -i '{}' '{}' | zstd -d | tar -x -C '{}'",
        key.display(),
        file.display(),
        out.display()
    ));
    assert!(ok, "stock restore failed: {err}");
    assert_eq!(describe(&out), describe(&m.volume("chunks")));
    // Without the identity, nothing can be read.
    let (ok, err) = sh(&format!(
        "age -d -i '{}' '{}' > /dev/null",
        other.display(),
        file.display()
    ));
    assert!(!ok && err.contains("no identity matched"), "{err}");
    // The effective configuration travels with it, secrets redacted.
    let config = m.backups().join(&id).join("lucid-db/config.toml.zst.age");
    let out = Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            &format!(
                "age -d -i '{}' '{}' | zstd -d",
                key.display(),
                config.display()
            ),
        ])
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("[backup]"), "{text}");
    assert!(
        !walkdir(&m.backups())
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".partial")),
        "a .partial file was left"
    );

    // keygen never overwrites.
    let (code, _, err) = m.cli(&["keygen", "--out", &key_arg]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("never overwrites"), "{err}");
}

#[test]
fn a_volume_backup_on_s3_is_verified_and_the_catalogue_comes_back_after_losing_state_dir() {
    let s3 = S3::start();
    let mut m = Machine::new();
    m.use_s3(&s3, "pi-1");
    let key = m.encrypt_to_new_key();
    make_tree(&m.volume("chunks"));
    let report = m.json(&["now", "--stores", "volumes:chunks"], 0);
    assert_eq!(report["outcome"], "complete", "{report}");
    let id = report["id"].as_str().expect("id").to_owned();
    assert_eq!(
        artifact_names(&report),
        [
            "lucid-db/config.toml.zst.age",
            "lucid-db/mongodb-schemas.tar.zst.age",
            "volumes/chunks.tar.zst.age"
        ]
    );
    // Nothing on the local disk: it all went to the bucket.
    assert!(!m.backups().join(&id).exists());
    let key_arg = key.display().to_string();
    assert_eq!(m.json(&["verify", &id], 0)["passed"], true);
    let verified = m.json(
        &["verify", &id, "--level", "decoded", "--identity", &key_arg],
        0,
    );
    assert_eq!(verified["counts_as"], "decoded");
    assert_eq!(m.json(&["show", &id], 0)["counts_as"], "decoded");

    // A fresh Pi: the state directory is gone; the bucket has everything, verify.json too.
    std::fs::remove_dir_all(m.path("state")).expect("rm state");
    let list = m.json(&["list"], 0);
    assert_eq!(list.as_array().expect("list").len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["counts_as"], "decoded");
    assert_eq!(
        list[0]["verify"]["levels"]["checksummed"]["passed"], true,
        "{list}"
    );
}

#[test]
fn tampering_makes_verify_exit_65_naming_the_artifact() {
    let mut m = Machine::new();
    let key = m.encrypt_to_new_key();
    make_tree(&m.volume("chunks"));
    let report = m.json(&["now", "--stores", "volumes:chunks"], 0);
    let id = report["id"].as_str().expect("id").to_owned();
    let dir = m.backups().join(&id);
    let artifact = "volumes/chunks.tar.zst.age";
    let path = dir.join(artifact);
    let original = std::fs::read(&path).expect("read");
    let key_arg = key.display().to_string();
    let verify = |level: &str| m.cli(&["verify", &id, "--level", level, "--identity", &key_arg]);

    let mut flipped = original.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    for (case, bytes, code) in [
        ("a flipped byte", Some(flipped), "checksum_mismatch"),
        (
            "a truncated artifact",
            Some(original[..original.len() - 100].to_vec()),
            "truncated",
        ),
        ("a missing artifact", None, "missing"),
    ] {
        match bytes {
            Some(b) => std::fs::write(&path, b).expect("write"),
            None => std::fs::remove_file(&path).expect("rm"),
        }
        for level in ["checksummed", "decoded"] {
            let (exit, out, err) = verify(level);
            assert_eq!(exit, 65, "{case} at {level}: {out}{err}");
            assert!(
                out.contains(&format!("FAILED  {artifact} ({code})")),
                "{case} at {level}: {out}"
            );
        }
        // Recorded: the backup counts as nothing until a pass after the failure.
        assert_eq!(
            m.json(&["show", &id], 0)["counts_as"],
            serde_json::Value::Null
        );
        std::fs::write(&path, &original).expect("restore");
    }
    assert_eq!(m.json(&["verify", &id], 0)["counts_as"], "checksummed");

    // The manifest itself: another format, or not JSON — 65 naming manifest.json.
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("read");
    for (case, bad, code) in [
        (
            "an unknown format",
            text.replacen("\"format\": 1", "\"format\": 7", 1),
            "unknown_format",
        ),
        (
            "a manifest that does not parse",
            text[..text.len() / 2].to_owned(),
            "bad_manifest",
        ),
        (
            "a manifest naming a missing artifact",
            text.replacen(artifact, "volumes/ghost.tar.zst.age", 1),
            "missing",
        ),
    ] {
        std::fs::write(&manifest, bad).expect("write");
        let (exit, out, err) = m.cli(&["verify", &id]);
        assert_eq!(exit, 65, "{case}: {out}{err}");
        let named = if code == "missing" {
            "volumes/ghost.tar.zst.age"
        } else {
            "manifest.json"
        };
        assert!(
            format!("{out}{err}").contains(named) && format!("{out}{err}").contains(code),
            "{case}: {out}{err}"
        );
        std::fs::write(&manifest, &text).expect("restore");
    }
    assert_eq!(m.json(&["verify", &id], 0)["passed"], true);
}

#[test]
fn a_volume_that_cannot_be_exported_makes_the_backup_partial() {
    let m = Machine::new();
    make_tree(&m.volume("chunks"));
    // A volume whose data directory is gone: its metadata points at nothing.
    std::fs::write(
        m.path("volumes").join("broken.volume.json"),
        r#"{"name":"broken","kind":"broken","quota_bytes":1048576,"created":"2026-01-01T00:00:00Z","path":"/nonexistent-lucid-test/broken"}"#,
    )
    .expect("write meta");
    let report = m.json(&["now"], 3);
    assert_eq!(report["outcome"], "partial", "{report}");
    let volumes = &report["stores"]["volumes"];
    assert_eq!(volumes["outcome"], "failed", "{volumes}");
    assert!(
        volumes["message"]
            .as_str()
            .expect("message")
            .contains("broken"),
        "{volumes}"
    );
    assert_eq!(volumes["source"]["volumes"]["broken"]["outcome"], "failed");
    assert_eq!(
        volumes["source"]["volumes"]["chunks"]["outcome"],
        "complete"
    );
    let names = artifact_names(&report);
    assert!(
        names.contains(&"volumes/chunks.tar.zst".to_owned()),
        "{names:?}"
    );
    // Listed (the rest is usable), as partial.
    let list = m.json(&["list"], 0);
    assert_eq!(list[0]["outcome"], "partial");
    // Nothing but the broken volume: nothing backed up, nothing listed, exit 1.
    let report = m.json(&["now", "--stores", "volumes:broken"], 1);
    assert_eq!(report["outcome"], "failed", "{report}");
    assert_eq!(report["listed"], false);
    assert_eq!(report["error"]["code"], "nothing_backed_up");
    assert_eq!(m.json(&["list"], 0).as_array().expect("list").len(), 1);
    // A database store the configuration turns off, named explicitly: refused (a configuration
    // matter), not silently skipped.
    let (code, _, err) = m.cli(&["now", "--stores", "mongodb"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("mongodb.enabled = false"), "{err}");
}

#[test]
fn storage_problems_exit_78_or_69_naming_the_bucket_or_endpoint_never_a_key() {
    let s3 = S3::start();
    let mut m = Machine::new();
    m.use_s3(&s3, "");
    m.set("LUCID_DB__BACKUP__S3__BUCKET", "no-such-bucket");
    let (code, _, err) = m.cli(&["now"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("no-such-bucket"), "{err}");
    let dead = format!("http://127.0.0.1:{}", lucid_testkit::free_port());
    m.set("LUCID_DB__BACKUP__S3__ENDPOINT", dead.clone());
    let (code, _, err) = m.cli(&["now"]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains(&dead), "{err}");
    let (code, _, err) = m.cli(&["list"]);
    assert_eq!(code, 69, "{err}");
    // The keys are the configuration's business: missing, they name the key.
    m.set("LUCID_DB__BACKUP__S3__ACCESS_KEY_ID_FILE", "");
    let (code, _, err) = m.cli(&["list"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("backup.s3.access_key_id_file"), "{err}");
}

/// Waits (polling, with a deadline) until run `id` has ended.
async fn finished(
    backup: &lucid_actors::backup::BackupHandle,
    id: BackupId,
) -> lucid_actors::backup::RunReport {
    use lucid_actors::backup::{BackupStatus, RunStatus};
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match backup.call(BackupStatus { id }).await.expect("status") {
            RunStatus::Finished(report) => return report,
            RunStatus::Running { .. } => {
                assert!(std::time::Instant::now() < deadline, "run {id} never ended");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A crash between the last artifact and the manifest (the fail point) leaves a backup that
/// is never listed; the next run removes it. On fs and on S3.
async fn crash_before_the_manifest_then_cleanup(
    m: &Machine,
    leftovers: impl Fn(&BackupId) -> usize,
) {
    use lucid_actors::backup::{BackupOutcome, ListBackups, StartBackup};
    let scenario = fail::FailScenario::setup();
    let capture = lucid_actors::events::capture();
    let handles = lucid_actors::start(&m.config(), lucid_actors::Roles::CLI);
    let backup = handles.backup.clone().expect("backup actor");
    fail::cfg("backup-before-manifest", "return").expect("fail point");
    let start = || StartBackup {
        stores: vec!["volumes:chunks".parse().expect("selector")],
        trigger: Trigger::Api,
    };
    let crashed = backup.call(start()).await.expect("started");
    let report = finished(&backup, crashed).await;
    assert_eq!(report.outcome, BackupOutcome::Failed);
    assert!(!report.listed);
    assert_eq!(report.error.as_ref().map(|e| e.code()), Some("interrupted"));
    assert!(leftovers(&crashed) >= 3, "the crash left its artifacts");
    assert!(backup.call(ListBackups).await.expect("list").is_empty());
    let failed = capture.named("backup.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].code, Some("interrupted"));
    assert_eq!(failed[0].field("encrypted"), Some("true"));

    fail::remove("backup-before-manifest");
    let next = backup.call(start()).await.expect("next run");
    let report = finished(&backup, next).await;
    assert_eq!(
        report.outcome,
        BackupOutcome::Complete,
        "{:?}",
        report.error
    );
    assert_eq!(report.cleaned.incomplete, vec![crashed]);
    assert_eq!(leftovers(&crashed), 0, "the next run cleaned up");
    let listed: Vec<BackupId> = backup
        .call(ListBackups)
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.manifest.id)
        .collect();
    assert_eq!(listed, vec![next]);
    assert_eq!(capture.named("backup.cleaned_up").len(), 1);
    let completed = capture.named("backup.completed");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].field("id"), Some(next.to_string().as_str()));
    assert_eq!(capture.named("backup.started").len(), 2);
    handles.shutdown(Duration::from_secs(5)).await;
    scenario.teardown();
}

#[actix_rt::test]
async fn a_crash_before_the_manifest_is_never_listed_and_cleaned_up_on_fs() {
    let mut m = Machine::new();
    m.encrypt_to_new_key();
    make_tree(&m.volume("chunks"));
    let backups = m.backups();
    crash_before_the_manifest_then_cleanup(&m, |id| {
        let dir = backups.join(id.to_string());
        if dir.exists() { walkdir(&dir).len() } else { 0 }
    })
    .await;
}

#[actix_rt::test]
async fn a_crash_before_the_manifest_is_never_listed_and_cleaned_up_on_s3() {
    let s3 = S3::start();
    let mut m = Machine::new();
    m.use_s3(&s3, "crash");
    m.encrypt_to_new_key();
    make_tree(&m.volume("chunks"));
    let storage = s3.storage("crash");
    let (tx, rx) = std::sync::mpsc::channel::<(BackupId, std::sync::mpsc::Sender<usize>)>();
    // The storage listing is async; the callback is sync: ask a helper thread with its own
    // runtime.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        while let Ok((id, reply)) = rx.recv() {
            let n = rt.block_on(storage.list_backup(&id)).expect("list").len();
            let _ = reply.send(n);
        }
    });
    crash_before_the_manifest_then_cleanup(&m, move |id| {
        let (reply, answer) = std::sync::mpsc::channel();
        tx.send((*id, reply)).expect("ask");
        answer.recv().expect("answer")
    })
    .await;
}

#[actix_rt::test]
async fn a_second_backup_while_one_runs_exits_75() {
    use lucid_actors::backup::{BackupOutcome, StartBackup};
    let m = Machine::new();
    make_tree(&m.volume("chunks"));
    let scenario = fail::FailScenario::setup();
    let handles = lucid_actors::start(&m.config(), lucid_actors::Roles::CLI);
    let backup = handles.backup.clone().expect("backup actor");
    // The run in this process holds the lock from its answer on; the fail point keeps it
    // from finishing while the CLI tries.
    fail::cfg("backup-before-manifest", "pause").expect("fail point");
    let id = backup
        .call(StartBackup {
            stores: vec![],
            trigger: Trigger::Schedule,
        })
        .await
        .expect("started");
    let (code, _, err) = m.cli(&["now"]);
    assert_eq!(code, 75, "{err}");
    assert!(
        err.contains("another backup or restore is running")
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    fail::remove("backup-before-manifest");
    let report = finished(&backup, id).await;
    assert_eq!(
        report.outcome,
        BackupOutcome::Complete,
        "{:?}",
        report.error
    );
    // Free again: the CLI runs.
    let report = m.json(&["now", "--stores", "volumes:chunks"], 0);
    assert_eq!(report["outcome"], "complete");
    handles.shutdown(Duration::from_secs(5)).await;
    scenario.teardown();
}

/// Changing `backup.recipients` rotates keys: the next backup is encrypted to the new set
/// only, and the one before still opens with its own identity and not with the new one.
#[test]
fn changing_the_recipients_rotates_keys_and_old_backups_stay_readable_with_old_identities() {
    let mut m = Machine::new();
    std::fs::create_dir_all(m.volume("chunks")).expect("mkdir");
    std::fs::write(m.volume("chunks").join("x"), b"rotate me").expect("write");
    let recipients_of = |key: &Path| {
        serde_json::json!(
            Identities::load(key)
                .expect("identity")
                .recipients()
                .to_strings()
        )
    };
    let old_key = m.encrypt_to_new_key();
    let old = m.json(&["now", "--stores", "volumes:chunks"], 0)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let new_key = m.encrypt_to_new_key();
    let new = m.json(&["now", "--stores", "volumes:chunks"], 0)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_ne!(recipients_of(&old_key), recipients_of(&new_key));
    for (id, key) in [(&old, &old_key), (&new, &new_key)] {
        assert_eq!(
            m.json(&["show", id], 0)["manifest"]["encryption"]["recipients"],
            recipients_of(key),
            "{id}"
        );
    }

    let decoded = |id: &str, key: &Path| {
        let key = key.display().to_string();
        m.cli(&["verify", id, "--level", "decoded", "--identity", &key])
    };
    for (id, wrong) in [(&old, &new_key), (&new, &old_key)] {
        let (code, out, err) = decoded(id, wrong);
        assert_eq!(code, 65, "{id}: {out}{err}");
        assert!(out.contains("(wrong_identity)"), "{id}: {out}");
    }
    for (id, right) in [(&old, &old_key), (&new, &new_key)] {
        let (code, out, err) = decoded(id, right);
        assert_eq!(code, 0, "{id}: {out}{err}");
    }
    let list = m.json(&["list"], 0);
    let counts: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|b| b["counts_as"].as_str())
        .collect();
    assert_eq!(counts, ["decoded", "decoded"], "{list}");
}

/// Starts `backup now` on a volume big enough to take seconds, kills it (SIGKILL) while it
/// writes the volume's artifact, and checks that nothing is listed and the next run cleans up.
fn killed_mid_backup(m: &Machine, leftovers: impl Fn(&str) -> usize) {
    noise_file(&m.volume("big"), "data.bin", 50 << 20);
    std::fs::create_dir_all(m.volume("chunks")).expect("mkdir");
    std::fs::write(m.volume("chunks").join("x"), b"x").expect("write");
    // The first run creates the volume metadata for `big` (adopted as an extra volume). Each
    // 64 KiB chunk waits 10 ms (800 chunks: 8 s), so the run is still writing when the
    // progress line shows it, however fast the machine: unthrottled, a quiet CI machine
    // finished the whole volume before the first progress line (at most one a second).
    let mut child = m
        .command(&["now", "--stores", "volumes:big"])
        .env("FAILPOINTS", "backup-artifact-chunk=sleep(10)")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut id = String::new();
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("never saw the volume being written: {seen:?}"));
        if let Some(rest) = line.strip_prefix("lucid-db backup: ")
            && let Some(started) = rest.strip_suffix(" started")
        {
            id = started.to_owned();
        }
        let writing = line.contains("writing volumes/big") && !line.contains(" 0B read");
        seen.push(line);
        if writing {
            break;
        }
    }
    // SAFETY: kill has no preconditions; the pid is our child's, not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
    }
    let status = child.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(!id.is_empty(), "{seen:?}");
    assert!(leftovers(&id) > 0, "the killed run left files: {seen:?}");
    assert_eq!(m.json(&["list"], 0).as_array().expect("list").len(), 0);

    // The next run (something small) removes what the killed one left.
    let report = m.json(&["now", "--stores", "volumes:chunks"], 0);
    assert_eq!(report["outcome"], "complete");
    let cleaned: Vec<&str> = report["cleaned_up"]["incomplete"]
        .as_array()
        .expect("cleaned")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(cleaned, [id.as_str()], "{report}");
    assert_eq!(leftovers(&id), 0);
    assert_eq!(m.json(&["list"], 0).as_array().expect("list").len(), 1);
}

/// On a terminal `backup now` draws a progress bar (redrawn in place: carriage returns and
/// erase-line sequences, the bar's brackets and the artifact count) and erases it before the
/// report; through a pipe the same run writes plain lines with no control characters (the
/// other tests read those lines).
#[test]
fn backup_now_and_restore_draw_a_progress_bar_on_a_terminal_and_plain_lines_in_a_pipe() {
    let mut m = Machine::new();
    m.set("LUCID_DB__VOLUMES__EXTRA", "big");
    noise_file(&m.volume("big"), "data.bin", 8 << 20);
    // 128 chunks of 64 KiB, 10 ms each: the run lasts over a second, so both kinds of
    // progress have something to show however fast the machine is.
    let slow = ("FAILPOINTS", "backup-artifact-chunk=sleep(10)");
    let command = format!("{BIN} backup now --stores volumes:big");
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .envs(m.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(slow.0, slow.1)
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("] ") && tty.contains("/3 artifacts"),
        "no bar drawn: {tty:?}"
    );
    assert!(
        tty.contains("\x1b["),
        "the bar is not redrawn in place: {tty:?}"
    );
    assert!(
        !tty.lines()
            .any(|l| l.starts_with("lucid-db backup: ") && l.contains(" artifacts")),
        "a plain progress line on a tty: {tty:?}"
    );
    assert!(tty.contains("complete"), "no report after the bar: {tty:?}");

    let out = m
        .command(&["now", "--stores", "volumes:big"])
        .env(slow.0, slow.1)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(" artifacts, ") && l.contains(" read, ")),
        "no progress line: {stderr}"
    );
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "control characters in a pipe: {stderr:?}"
    );

    // A restore on a terminal draws its bar too: artifacts restored, the one under way.
    let list = m.json(&["list"], 0);
    let id = list[0]["id"].as_str().expect("id").to_owned();
    let command = format!("{BIN} backup restore {id} --stores volumes:big --force");
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .envs(m.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("FAILPOINTS", "backup-restore-item=sleep(10)")
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("] 0/1 artifacts, restoring volumes/big") && tty.contains("\x1b["),
        "no restore bar drawn in place: {tty:?}"
    );
    assert!(
        !tty.contains(&format!("restoring {id}: 0/1 artifacts")),
        "a plain progress line on a tty: {tty:?}"
    );
}

#[test]
fn a_cli_killed_mid_backup_leaves_nothing_listed_and_the_next_run_cleans_up_on_fs() {
    let mut m = Machine::new();
    m.encrypt_to_new_key();
    m.set("LUCID_DB__VOLUMES__EXTRA", "big");
    let backups = m.backups();
    killed_mid_backup(&m, |id| {
        let dir = backups.join(id);
        if dir.exists() {
            walkdir(&dir).iter().filter(|p| p.is_file()).count()
        } else {
            0
        }
    });
}

#[test]
fn a_cli_killed_mid_backup_leaves_nothing_listed_and_the_next_run_cleans_up_on_s3() {
    let s3 = S3::start();
    let mut m = Machine::new();
    m.use_s3(&s3, "killed");
    m.encrypt_to_new_key();
    m.set("LUCID_DB__VOLUMES__EXTRA", "big");
    let storage = s3.storage("killed");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    killed_mid_backup(&m, |id| {
        let parsed: BackupId = id.parse().expect("id");
        let objects = rt
            .block_on(storage.list_backup(&parsed))
            .expect("list")
            .len();
        // The volume's artifact was a multipart upload in progress at the kill.
        let uploads = rt.block_on(storage.open_uploads()).expect("list uploads");
        objects + uploads.iter().filter(|u| u.starts_with(id)).count()
    });
}

/// Peak RSS (VmHWM) of one `backup now` CLI process, read through wait4's rusage: the CLI's
/// own memory, never the servers'.
fn peak_rss_kib(m: &Machine, args: &[&str]) -> (i32, u64) {
    let child = m
        .command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our unreaped child; both pointers are valid for the call.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4");
    // Reaped by wait4: the Child must not be waited for again.
    std::mem::forget(child);
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64)
}

#[test]
fn peak_memory_of_a_backup_is_the_same_for_20_mb_and_200_mb() {
    let mut m = Machine::new();
    m.encrypt_to_new_key();
    m.set("LUCID_DB__VOLUMES__EXTRA", "small,large");
    noise_file(&m.volume("small"), "data.bin", 20 << 20);
    noise_file(&m.volume("large"), "data.bin", 200 << 20);
    // A first run creates the volumes' metadata, so both measured runs do the same work.
    let (code, _, err) = m.cli(&["list"]);
    assert_eq!(code, 0, "{err}");
    // Each size's peak is the higher of two runs: on a loaded machine a short run can end
    // before every compression worker has filled its buffers, which reads as a smaller peak
    // than the pipeline really holds (seen at 51 MB against a steady 56 MB) and is no sign
    // of memory growing with the data.
    let peak = |store: &str| {
        (0..2)
            .map(|_| {
                let (code, kib) = peak_rss_kib(&m, &["now", "--stores", store]);
                assert_eq!(code, 0, "backup of {store}");
                kib
            })
            .max()
            .unwrap_or_default()
    };
    let small = peak("volumes:small");
    let large = peak("volumes:large");
    eprintln!("peak RSS of `backup now`: 20 MB volume {small} KiB, 200 MB volume {large} KiB");
    let (lo, hi) = (small.min(large) as f64, small.max(large) as f64);
    assert!(
        hi <= lo * 1.10,
        "peak RSS differs by more than 10 %: {small} KiB for 20 MB, {large} KiB for 200 MB"
    );
}

#[test]
fn passphrase_mode_backups_verify_decoded_with_key_age_and_a_wrong_passphrase_exits_65() {
    let mut m = Machine::new();
    make_tree(&m.volume("chunks"));
    let pass = m.path("passphrase");
    std::fs::write(&pass, "correct horse battery staple\n").expect("write");
    m.set(
        "LUCID_DB__BACKUP__PASSPHRASE_FILE",
        pass.display().to_string(),
    );
    let report = m.json(&["now", "--stores", "volumes:chunks"], 0);
    assert_eq!(report["encrypted"], true);
    let id = report["id"].as_str().expect("id").to_owned();
    assert!(m.backups().join(&id).join("key.age").is_file());
    let shown = m.json(&["show", &id], 0);
    assert_eq!(shown["manifest"]["encryption"]["passphrase"], true);
    // No identity given: key.age opened with the configured passphrase.
    let verified = m.json(&["verify", &id, "--level", "decoded"], 0);
    assert_eq!(verified["counts_as"], "decoded", "{verified}");
    // Another passphrase opens nothing: 65, naming key.age, nothing recorded.
    std::fs::write(&pass, "not it\n").expect("write");
    let (code, out, err) = m.cli(&["verify", &id, "--level", "decoded"]);
    assert_eq!(code, 65, "{out}{err}");
    assert!(err.contains("key.age") && !err.contains("not it"), "{err}");
    assert_eq!(m.json(&["show", &id], 0)["counts_as"], "decoded");
}

#[test]
fn a_backup_that_does_not_fit_is_refused_with_both_numbers() {
    let m = Machine::new();
    noise_file(&m.volume("chunks"), "data.bin", 3 << 20);
    // The backups volume's quota below what the backup needs.
    let out = Command::new(BIN)
        .args(["volumes", "resize", "backups", "2M"])
        .env_clear()
        .envs(m.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("resize");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = m.json(&["now", "--stores", "volumes:chunks"], 1);
    assert_eq!(report["error"]["code"], "no_room", "{report}");
    let message = report["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("quota (2097152 bytes") && message.contains("needs about"),
        "{message}"
    );
    assert_eq!(report["listed"], false);
    assert_eq!(m.json(&["list"], 0).as_array().expect("list").len(), 0);
    // Nothing was written for it.
    assert!(
        walkdir(&m.backups()).is_empty(),
        "{:?}",
        walkdir(&m.backups())
    );
}

#[test]
fn a_backup_command_refuses_a_state_directory_another_user_owns() {
    let mut m = Machine::new();
    // SAFETY: geteuid cannot fail.
    let foreign = if unsafe { libc::geteuid() } == 0 {
        // As root (CI): a state directory that belongs to `nobody`.
        let theirs = m.path("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
        theirs
    } else {
        // As anyone else: `/` belongs to root.
        PathBuf::from("/")
    };
    m.set("LUCID_DB__STATE_DIR", foreign.display().to_string());
    let (code, _, err) = m.cli(&["now"]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("sudo -u"), "{err}");
    assert!(
        std::fs::read_dir(m.path("volumes"))
            .expect("read_dir")
            .next()
            .is_none(),
        "nothing written after the refusal"
    );
}

mod drill;
mod restore;
mod retention;
