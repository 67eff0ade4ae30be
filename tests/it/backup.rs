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
use lucid_actors::backup::storage::{KEY, MANIFEST, VERIFY};
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
fn make_tree(root: &Path) {
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
fn sh(script: &str) -> (bool, String) {
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
fn need_stock_tools() {
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
    let volumes = VolumeActor::start_with(&c.volumes, Duration::from_secs(5), 64);
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
            manifest_for(
                done,
                vec![record],
                Encryption {
                    recipients: vec![],
                    passphrase: false,
                },
            )
            .to_json(),
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
            manifest_for(
                complete,
                vec![],
                Encryption {
                    recipients: vec![],
                    passphrase: false,
                },
            )
            .to_json(),
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
