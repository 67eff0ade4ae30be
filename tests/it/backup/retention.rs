//! Retention, pins and deletes through the CLI, on a real file system and a moto S3 bucket
//! (the rules themselves are table-tested in `actors/backup/retention.rs`).

use super::*;

/// Three backups of one volume: a (oldest, unverified), b (verified), c (newest, unverified).
fn three_backups(m: &Machine) -> [String; 3] {
    make_tree(&m.volume("chunks"));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let report = m.json(&["now", "--stores", "volumes:chunks"], 0);
        ids.push(report["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(m.json(&["verify", &ids[1]], 0)["passed"], true);
    [ids[0].clone(), ids[1].clone(), ids[2].clone()]
}

fn listed(m: &Machine) -> Vec<String> {
    m.json(&["list"], 0)
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|b| b["id"].as_str().map(str::to_owned))
        .collect()
}

/// `(id, keep, rules)` per backup of a prune report, oldest first.
fn plan_of(report: &serde_json::Value) -> Vec<(String, bool, Vec<String>)> {
    let mut out: Vec<(String, bool, Vec<String>)> = report["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| {
            (
                b["id"].as_str().expect("id").to_owned(),
                b["keep"].as_bool().expect("keep"),
                b["reasons"]
                    .as_array()
                    .expect("reasons")
                    .iter()
                    .filter_map(|r| r["rule"].as_str().map(str::to_owned))
                    .collect(),
            )
        })
        .collect();
    out.reverse();
    out
}

/// keep_last 1 and no age rule: a is expired, b is the newest good copy of `volumes:chunks`,
/// c the newest. A dry run deletes nothing; the prune deletes exactly a.
fn prune_deletes_exactly_the_planned_set(m: &mut Machine, gone: impl Fn(&str) -> bool) {
    m.set("LUCID_DB__BACKUP__RETENTION_DAYS", "0");
    m.set("LUCID_DB__BACKUP__KEEP_LAST", "1");
    let [a, b, c] = three_backups(m);
    let want = vec![
        (a.clone(), false, vec!["expired".to_owned()]),
        (b.clone(), true, vec!["newest_good_copy".to_owned()]),
        (c.clone(), true, vec!["keep_last".to_owned()]),
    ];

    let dry = m.json(&["prune", "--dry-run"], 0);
    assert_eq!(plan_of(&dry), want, "{dry}");
    assert_eq!(dry["deleted"], serde_json::json!([a]));
    assert_eq!(listed(m), [a.clone(), b.clone(), c.clone()]);
    assert!(!gone(&a));

    let (code, out, err) = m.cli(&["prune"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&a) && l.contains("deleted") && l.contains("expired")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&b) && l.contains("newest_good_copy(volumes:chunks)")),
        "{out}"
    );
    assert_eq!(listed(m), [b.clone(), c.clone()]);
    assert!(gone(&a), "{a}'s files are still in storage");
    assert!(!gone(&b) && !gone(&c));

    // Nothing more to do: the plan is stable.
    let again = m.json(&["prune"], 0);
    assert_eq!(again["deleted"], serde_json::json!([]));
}

#[test]
fn prune_deletes_exactly_the_planned_set_on_fs() {
    let mut m = Machine::new();
    let backups = m.backups();
    prune_deletes_exactly_the_planned_set(&mut m, |id| !backups.join(id).exists());
}

#[test]
fn prune_deletes_exactly_the_planned_set_on_s3() {
    let s3 = S3::start();
    let mut m = Machine::new();
    let prefix = format!("prune-{}", rand_suffix());
    m.use_s3(&s3, &prefix);
    let storage = s3.storage(&prefix);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    prune_deletes_exactly_the_planned_set(&mut m, |id| {
        let id: BackupId = id.parse().expect("id");
        rt.block_on(storage.list_backup(&id))
            .expect("list")
            .is_empty()
    });
}

#[test]
fn an_interrupted_prune_leaves_nothing_listed_that_is_not_complete() {
    let mut m = Machine::new();
    m.set("LUCID_DB__BACKUP__RETENTION_DAYS", "0");
    m.set("LUCID_DB__BACKUP__KEEP_LAST", "1");
    let [a, b, c] = three_backups(&m);
    // The deletion of a stops right after its manifest went.
    let out = m
        .command(&["prune", "--json"])
        .env("FAILPOINTS", "backup-delete-after-manifest=return")
        .output()
        .expect("prune");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("backup-delete-after-manifest"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        m.backups().join(&a).exists(),
        "the fail point did not stop it"
    );
    assert_eq!(listed(&m), [b.clone(), c.clone()]);
    // The next run removes what the prune left.
    let report = m.json(&["now", "--stores", "volumes:chunks"], 0);
    assert_eq!(
        report["cleaned_up"]["incomplete"],
        serde_json::json!([a]),
        "{report}"
    );
    assert!(!m.backups().join(&a).exists());
}

#[test]
fn pins_and_deletes_are_guarded_and_survive_a_catalogue_rebuild() {
    let mut m = Machine::new();
    m.set("LUCID_DB__BACKUP__RETENTION_DAYS", "0");
    let [a, b, c] = three_backups(&m);

    // b is the newest good copy of volumes:chunks: delete refuses it without --force.
    let (code, _, err) = m.cli(&["delete", &b]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("newest good copy of volumes:chunks") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(listed(&m), [a.clone(), b.clone(), c.clone()]);
    // a is nothing's newest good copy: it goes.
    let deleted = m.json(&["delete", &a], 0);
    assert_eq!(deleted["overrode"], serde_json::json!([]));

    // Pinned, c is kept by retention and by delete, also after the state directory is lost.
    let pinned = m.json(&["pin", &c, "--reason", "before the migration"], 0);
    assert_eq!(pinned["pins"][0]["reason"], "before the migration");
    std::fs::remove_dir_all(m.path("state")).expect("rm state");
    let shown = m.json(&["show", &c], 0);
    assert_eq!(
        shown["pins"][0]["reason"], "before the migration",
        "{shown}"
    );
    let (code, out, _) = m.cli(&["show", &c]);
    assert_eq!(code, 0);
    assert!(
        out.contains("pinned") && out.contains("before the migration"),
        "{out}"
    );
    let plan = m.json(&["prune", "--dry-run"], 0);
    let decided: Vec<(String, bool, Vec<String>)> = plan_of(&plan);
    assert_eq!(
        decided,
        [
            (b.clone(), true, vec!["newest_good_copy".to_owned()]),
            (c.clone(), true, vec!["pinned".to_owned()]),
        ],
        "{plan}"
    );
    let (code, _, err) = m.cli(&["delete", &c]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("pinned"), "{err}");

    // Unpinned (and the state lost again): c is an ordinary expired backup.
    let unpinned = m.json(&["unpin", &c], 0);
    assert_eq!(unpinned["pins"], serde_json::Value::Null);
    std::fs::remove_dir_all(m.path("state")).expect("rm state");
    assert_eq!(m.json(&["show", &c], 0)["pins"], serde_json::Value::Null);
    let plan = m.json(&["prune", "--dry-run"], 0);
    assert_eq!(plan["deleted"], serde_json::json!([c]), "{plan}");

    // --force deletes the newest good copy, and says what it overrode.
    let forced = m.json(&["delete", &b, "--force"], 0);
    assert_eq!(
        forced["overrode"][0]["rule"], "newest_good_copy",
        "{forced}"
    );
    assert_eq!(listed(&m), [c]);
}

#[test]
fn a_backup_being_read_is_kept_by_prune_and_refused_by_delete() {
    let mut m = Machine::new();
    m.set("LUCID_DB__BACKUP__RETENTION_DAYS", "0");
    let [a, _b, _c] = three_backups(&m);
    // Another process (this test) reads a: it holds a's reader lock, shared.
    let locks = m.path("state").join("locks");
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(locks.join(format!("read-{a}.lock")))
        .expect("open");
    reader.lock_shared().expect("lock");
    let plan = m.json(&["prune"], 0);
    let of_a = plan_of(&plan).into_iter().find(|(id, _, _)| *id == a);
    assert_eq!(
        of_a,
        Some((a.clone(), true, vec!["in_use".to_owned()])),
        "{plan}"
    );
    let (code, _, err) = m.cli(&["delete", &a, "--force"]);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("being read"), "{err}");
    drop(reader);
    let plan = m.json(&["prune"], 0);
    assert_eq!(plan["deleted"], serde_json::json!([a]), "{plan}");
}

#[test]
fn prune_waits_while_the_clock_reads_earlier_than_the_newest_backup() {
    let mut m = Machine::new();
    m.set("LUCID_DB__BACKUP__RETENTION_DAYS", "0");
    make_tree(&m.volume("chunks"));
    let report = m.json(&["now", "--stores", "volumes:chunks"], 0);
    let id = report["id"].as_str().expect("id").to_owned();
    // A backup from 2099, as a machine whose clock ran ahead would have written: copied under
    // its id, its manifest saying so. To this machine the clock now reads "in the past".
    let future = "20991130T020000Z-0f0f";
    let from = m.backups().join(&id);
    let to = m.backups().join(future);
    let out = Command::new("cp")
        .arg("-a")
        .arg(&from)
        .arg(&to)
        .status()
        .expect("cp");
    assert!(out.success());
    let manifest = to.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).expect("read");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    json["id"] = future.into();
    json["created"] = "2099-11-30T02:00:00Z".into();
    std::fs::write(&manifest, serde_json::to_vec(&json).expect("json")).expect("write");
    assert_eq!(listed(&m).len(), 2);

    let (code, out, err) = m.cli(&["prune"]);
    assert_eq!(code, 75, "{out}{err}");
    assert!(
        err.contains("clock_behind") && err.contains(future),
        "{err}"
    );
    assert_eq!(listed(&m).len(), 2, "nothing is deleted");
}

/// With `backup.prune_before`, a backup that does not fit runs retention first and tries
/// again; without it, the same backup is refused `no_room`.
#[test]
fn prune_before_makes_room_for_a_backup_that_does_not_fit() {
    let mut m = Machine::new();
    m.set("LUCID_DB__BACKUP__RETENTION_DAYS", "0");
    noise_file(&m.volume("chunks"), "data.bin", 3 << 20);
    let old = m.json(&["now", "--stores", "volumes:chunks"], 0)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let good = m.json(&["now", "--stores", "volumes:chunks"], 0)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(m.json(&["verify", &good], 0)["passed"], true);
    // Two 3 MiB backups stored; a third needs about 7.4 MB (its data, 1 %, 4 MiB for the
    // small files): 12 MiB leaves about 6 MB, so it fits only once `old` (expired) is gone.
    let out = Command::new(BIN)
        .args(["volumes", "resize", "backups", "12M"])
        .env_clear()
        .envs(m.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("resize");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = m.json(&["now", "--stores", "volumes:chunks"], 1);
    assert_eq!(refused["error"]["code"], "no_room", "{refused}");
    assert_eq!(listed(&m), [old.clone(), good.clone()]);

    m.set("LUCID_DB__BACKUP__PRUNE_BEFORE", "true");
    let report = m.json(&["now", "--stores", "volumes:chunks"], 0);
    assert_eq!(report["outcome"], "complete", "{report}");
    let new = report["id"].as_str().expect("id").to_owned();
    assert_eq!(listed(&m), [good, new]);
    assert!(!m.backups().join(&old).exists());
}
