//! The volume routes that change data, through the real daemon on a free port and real HTTP:
//! each one's happy path and its effect on the disk (the volume exists, the quota changed, the
//! snapshot exists, restore brings the data back, the deleted volume is gone), the audit of
//! each, the answers equal to what `lucid-db volumes … --json` prints in process, and bad input (traversal in a name or a snapshot name, unknown fields, a quota that
//! is not one, a relative migration target, a non-empty volume deleted without `force`):
//! each the right 4xx with the volume actor's code, never a 500, nothing changed.

use std::path::Path;

use serde_json::{Value, json};

use super::{API, Resp, call, redis_only};

fn path(s: &str) -> String {
    format!("{API}{s}")
}

/// `r` is `status`, or the test fails with its body.
fn expect(r: &Resp, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    r.json()
}

/// `r` is the error shape with `status` and `code`.
fn refused(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (status, code),
        "{what}: {}",
        r.body
    );
}

/// The volume's stored metadata, as the actor wrote it.
fn meta(root: &Path, name: &str) -> Value {
    let text = std::fs::read_to_string(root.join(format!("{name}.volume.json")))
        .unwrap_or_else(|e| panic!("{name}.volume.json: {e}"));
    serde_json::from_str(&text).expect("volume.json")
}

/// The routes of the `api.audit` events in the daemon's log, each with its outcome.
fn audited(stderr: &str) -> Vec<(String, String, String)> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "api.audit")
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (s("method"), s("route"), s("outcome"))
        })
        .collect()
}

#[test]
fn every_volume_route_changes_the_disk_as_the_cli_does_and_is_audited() {
    let (api, _) = redis_only("", &[]);
    let (a, w, adm, r) = (
        api.d.http,
        Some(api.write.as_str()),
        Some(api.admin.as_str()),
        Some(api.read.as_str()),
    );
    let root = api.d.dir().join("volumes");

    // Create: 201 with the volume; its directory and metadata exist.
    let body =
        json!({"name": "ledger", "quota": "10M", "kind": "chunks", "labels": {"team": "core"}});
    let created = expect(
        &call(a, "POST", &path("/volumes"), w, Some(&body)),
        201,
        "create",
    );
    assert_eq!(
        (
            &created["name"],
            &created["quota_bytes"],
            &created["kind"],
            &created["labels"]
        ),
        (
            &json!("ledger"),
            &json!(10 << 20),
            &json!("chunks"),
            &json!({"team": "core"})
        ),
        "{created}"
    );
    assert!(root.join("ledger").is_dir());
    assert_eq!(meta(&root, "ledger")["quota_bytes"], 10 << 20);
    // The same answer `GET /volumes/{name}` (and `volumes inspect --json`) gives.
    let got = expect(
        &call(a, "GET", &path("/volumes/ledger"), r, None),
        200,
        "get",
    );
    assert_eq!(
        (&got["name"], &got["data_dir"]),
        (&created["name"], &created["data_dir"])
    );
    std::fs::write(root.join("ledger/a.txt"), "one").expect("write a.txt");

    // Resize: the stored quota changed.
    let resized = expect(
        &call(
            a,
            "PUT",
            &path("/volumes/ledger/quota"),
            w,
            Some(&json!({"quota": "20M"})),
        ),
        200,
        "resize",
    );
    assert_eq!(resized["quota_bytes"], 20 << 20, "{resized}");
    assert_eq!(meta(&root, "ledger")["quota_bytes"], 20 << 20);

    // Verify: without a body the first seals the manifest; a change is a 200 with the report;
    // `update` re-seals.
    let sealed = expect(
        &call(a, "POST", &path("/volumes/ledger/verify"), w, None),
        200,
        "verify",
    );
    assert_eq!(sealed["sealed"], true, "{sealed}");
    assert!(
        sealed["entries"].as_u64().is_some_and(|n| n >= 1),
        "{sealed}"
    );
    std::fs::write(root.join("ledger/a.txt"), "uno").expect("change a.txt");
    let changed = expect(
        &call(
            a,
            "POST",
            &path("/volumes/ledger/verify"),
            w,
            Some(&json!({})),
        ),
        200,
        "verify after a change",
    );
    assert_eq!(changed["changed"][0]["path"], "a.txt", "{changed}");
    assert_eq!(changed["updated"], false);
    let updated = expect(
        &call(
            a,
            "POST",
            &path("/volumes/ledger/verify"),
            w,
            Some(&json!({"update": true})),
        ),
        200,
        "verify --update",
    );
    assert_eq!(updated["updated"], true, "{updated}");

    // Snapshot: 201; it is on disk and listed.
    let snap = expect(
        &call(
            a,
            "POST",
            &path("/volumes/ledger/snapshots"),
            w,
            Some(&json!({"name": "s1", "label": "before"})),
        ),
        201,
        "snapshot",
    );
    assert_eq!(
        (&snap["name"], &snap["label"], &snap["files"]),
        (&json!("s1"), &json!("before"), &json!(1)),
        "{snap}"
    );
    assert!(root.join("ledger.snapshots/s1").is_dir());
    // Without a name: the time, UTC.
    let dated = expect(
        &call(a, "POST", &path("/volumes/ledger/snapshots"), w, None),
        201,
        "snapshot without a body",
    );
    let dated = dated["name"].as_str().expect("name").to_owned();
    assert!(dated.len() == 15 && dated.as_bytes()[8] == b'-', "{dated}");
    let listed = expect(
        &call(a, "GET", &path("/volumes/ledger/snapshots"), r, None),
        200,
        "snapshots",
    );
    let names: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["s1", dated.as_str()], "{listed}");
    let verified = expect(
        &call(
            a,
            "POST",
            &path("/volumes/ledger/verify"),
            w,
            Some(&json!({"snapshot": "s1"})),
        ),
        200,
        "verify a snapshot",
    );
    assert!(
        verified["changed"].as_array().is_some_and(Vec::is_empty),
        "{verified}"
    );

    // Restore: refused over files without force; with it, the data is the snapshot's again.
    std::fs::write(root.join("ledger/a.txt"), "two").expect("change a.txt");
    std::fs::write(root.join("ledger/b.txt"), "new").expect("write b.txt");
    let restore = path("/volumes/ledger/snapshots/s1/restore");
    refused(
        &call(a, "POST", &restore, adm, None),
        409,
        "not_empty",
        "restore without force",
    );
    assert_eq!(
        std::fs::read_to_string(root.join("ledger/a.txt"))
            .ok()
            .as_deref(),
        Some("two")
    );
    let restored = expect(
        &call(a, "POST", &restore, adm, Some(&json!({"force": true}))),
        200,
        "restore",
    );
    assert_eq!(restored["name"], "s1", "{restored}");
    assert_eq!(
        std::fs::read_to_string(root.join("ledger/a.txt"))
            .ok()
            .as_deref(),
        Some("uno")
    );
    assert!(
        !root.join("ledger/b.txt").exists(),
        "b.txt came after the snapshot"
    );

    // Delete a snapshot: the answer `volumes delete-snapshot --json` prints; gone from disk.
    let gone = expect(
        &call(
            a,
            "DELETE",
            &path(&format!("/volumes/ledger/snapshots/{dated}")),
            adm,
            None,
        ),
        200,
        "delete-snapshot",
    );
    assert_eq!(gone, json!({"volume": "ledger", "deleted": dated}));
    assert!(!root.join(format!("ledger.snapshots/{dated}")).exists());

    // Cleanup: the report.
    let cleaned = expect(
        &call(a, "POST", &path("/volumes/ledger/cleanup"), w, None),
        200,
        "cleanup",
    );
    for k in ["removed_files", "removed_bytes", "removed_leftovers"] {
        assert!(cleaned[k].is_u64(), "{k}: {cleaned}");
    }

    // Migrate: the data is at the new path, and the volume says so.
    let to = api.d.dir().join("elsewhere");
    let moved = expect(
        &call(
            a,
            "POST",
            &path("/volumes/ledger/migrate"),
            adm,
            Some(&json!({"to": to})),
        ),
        200,
        "migrate",
    );
    let real = std::fs::canonicalize(&to).expect("the new path");
    assert_eq!(moved["data_dir"], json!(real), "{moved}");
    assert_eq!(
        std::fs::read_to_string(to.join("a.txt")).ok().as_deref(),
        Some("uno")
    );

    // Delete: not while it holds files without force (nothing removed); with it, gone.
    refused(
        &call(a, "DELETE", &path("/volumes/ledger"), adm, None),
        409,
        "not_empty",
        "delete without force",
    );
    assert!(to.join("a.txt").exists() && root.join("ledger.volume.json").exists());
    let deleted = expect(
        &call(a, "DELETE", &path("/volumes/ledger?force=true"), adm, None),
        200,
        "delete",
    );
    assert_eq!(deleted, json!({"deleted": "ledger"}));
    assert!(!root.join("ledger.volume.json").exists() && !to.exists());
    refused(
        &call(a, "GET", &path("/volumes/ledger"), r, None),
        404,
        "not_found",
        "get after delete",
    );

    // Every write and admin call is audited, with its outcome.
    let events = audited(&api.d.stderr());
    for (method, route, outcome) in [
        ("POST", "/volumes", "ok"),
        ("PUT", "/volumes/{name}/quota", "ok"),
        ("POST", "/volumes/{name}/verify", "ok"),
        ("POST", "/volumes/{name}/snapshots", "ok"),
        (
            "POST",
            "/volumes/{name}/snapshots/{snapshot}/restore",
            "not_empty",
        ),
        ("POST", "/volumes/{name}/snapshots/{snapshot}/restore", "ok"),
        ("DELETE", "/volumes/{name}/snapshots/{snapshot}", "ok"),
        ("POST", "/volumes/{name}/cleanup", "ok"),
        ("POST", "/volumes/{name}/migrate", "ok"),
        ("DELETE", "/volumes/{name}", "not_empty"),
        ("DELETE", "/volumes/{name}", "ok"),
    ] {
        let want = (method.to_owned(), path(route), outcome.to_owned());
        assert!(
            events.contains(&want),
            "no api.audit for {want:?} in {events:?}"
        );
    }
}

#[test]
fn bad_volume_input_is_a_4xx_with_the_actors_code_and_changes_nothing() {
    let (api, _) = redis_only("", &[]);
    let (a, w, adm) = (
        api.d.http,
        Some(api.write.as_str()),
        Some(api.admin.as_str()),
    );
    let root = api.d.dir().join("volumes");
    expect(
        &call(
            a,
            "POST",
            &path("/volumes"),
            w,
            Some(&json!({"name": "keep", "quota": "1M"})),
        ),
        201,
        "create",
    );
    std::fs::write(root.join("keep/data.txt"), "kept").expect("write");
    expect(
        &call(
            a,
            "POST",
            &path("/volumes/keep/snapshots"),
            w,
            Some(&json!({"name": "s1"})),
        ),
        201,
        "snapshot",
    );

    let cases: Vec<(&str, Resp, u16, &str)> = vec![
        (
            "traversal in a name",
            call(
                a,
                "POST",
                &path("/volumes"),
                w,
                Some(&json!({"name": "../etc"})),
            ),
            400,
            "invalid_name",
        ),
        (
            "traversal in a path name",
            call(
                a,
                "DELETE",
                &path("/volumes/..%2F..%2Fetc?force=true"),
                adm,
                None,
            ),
            400,
            "invalid_name",
        ),
        (
            "dots as a name",
            call(a, "POST", &path("/volumes/../cleanup"), w, None),
            400,
            "invalid_name",
        ),
        (
            "traversal in a snapshot name",
            call(
                a,
                "POST",
                &path("/volumes/keep/snapshots"),
                w,
                Some(&json!({"name": "../../x"})),
            ),
            400,
            "invalid",
        ),
        (
            "dots as a snapshot to restore",
            call(
                a,
                "POST",
                &path("/volumes/keep/snapshots/../restore"),
                adm,
                Some(&json!({"force": true})),
            ),
            400,
            "invalid",
        ),
        (
            "traversal in a snapshot to delete",
            call(
                a,
                "DELETE",
                &path("/volumes/keep/snapshots/..%2F..%2Fkeep"),
                adm,
                None,
            ),
            400,
            "invalid",
        ),
        (
            "an unknown field",
            call(
                a,
                "POST",
                &path("/volumes"),
                w,
                Some(&json!({"name": "other", "qouta": "1G"})),
            ),
            400,
            "invalid_body",
        ),
        (
            "an unknown field in an optional body",
            call(
                a,
                "POST",
                &path("/volumes/keep/snapshots/s1/restore"),
                adm,
                Some(&json!({"forse": true})),
            ),
            400,
            "invalid_body",
        ),
        (
            "a wrong type in an optional body",
            call(
                a,
                "POST",
                &path("/volumes/keep/verify"),
                w,
                Some(&json!({"update": "yes"})),
            ),
            400,
            "invalid_body",
        ),
        (
            "an unknown query parameter",
            call(a, "DELETE", &path("/volumes/keep?forse=true"), adm, None),
            400,
            "invalid_query",
        ),
        (
            "a quota that is not one, on create",
            call(
                a,
                "POST",
                &path("/volumes"),
                w,
                Some(&json!({"name": "other", "quota": "abc"})),
            ),
            400,
            "invalid_argument",
        ),
        (
            "a quota that is not one, on resize",
            call(
                a,
                "PUT",
                &path("/volumes/keep/quota"),
                w,
                Some(&json!({"quota": "abc"})),
            ),
            400,
            "invalid_argument",
        ),
        (
            "a quota below the volume's use",
            call(
                a,
                "PUT",
                &path("/volumes/keep/quota"),
                w,
                Some(&json!({"quota": "1"})),
            ),
            409,
            "quota_below_usage",
        ),
        (
            "update with a snapshot",
            call(
                a,
                "POST",
                &path("/volumes/keep/verify"),
                w,
                Some(&json!({"update": true, "snapshot": "s1"})),
            ),
            400,
            "invalid_argument",
        ),
        (
            "a relative migration target",
            call(
                a,
                "POST",
                &path("/volumes/keep/migrate"),
                adm,
                Some(&json!({"to": "moved/keep"})),
            ),
            400,
            "invalid_argument",
        ),
        (
            "a migration target inside the data root",
            call(
                a,
                "POST",
                &path("/volumes/keep/migrate"),
                adm,
                Some(&json!({"to": root.join("inside")})),
            ),
            400,
            "invalid",
        ),
        (
            "a non-empty volume deleted without force",
            call(a, "DELETE", &path("/volumes/keep"), adm, None),
            409,
            "not_empty",
        ),
        (
            "a volume that exists",
            call(
                a,
                "POST",
                &path("/volumes"),
                w,
                Some(&json!({"name": "keep"})),
            ),
            409,
            "exists",
        ),
        (
            "a snapshot that exists",
            call(
                a,
                "POST",
                &path("/volumes/keep/snapshots"),
                w,
                Some(&json!({"name": "s1"})),
            ),
            409,
            "snapshot_exists",
        ),
        (
            "a snapshot that does not",
            call(a, "DELETE", &path("/volumes/keep/snapshots/s9"), adm, None),
            404,
            "snapshot_not_found",
        ),
        (
            // The same optional-body extractor: a misspelt field is refused, not dropped
            // (which would restore every store of the backup).
            "an unknown field in a backup restore's body",
            call(
                a,
                "POST",
                &path("/backup/nope/restore"),
                adm,
                Some(&json!({"stores": ["volumes:keep"], "forse": true})),
            ),
            400,
            "invalid_body",
        ),
        (
            "a volume that does not",
            call(a, "POST", &path("/volumes/nowhere/cleanup"), w, None),
            404,
            "not_found",
        ),
    ];
    for (what, r, status, code) in &cases {
        refused(r, *status, code, what);
    }
    let message = |i: usize| {
        cases[i].1.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // The field is named.
    for i in [10, 11] {
        assert!(message(i).starts_with("quota:"), "{}", message(i));
    }
    assert!(message(14).starts_with("to:"), "{}", message(14));

    // Nothing changed: the volume, its data, its quota and its snapshot are as they were; no
    // volume was made by a refused create, nothing was written at the refused targets.
    assert_eq!(
        std::fs::read_to_string(root.join("keep/data.txt"))
            .ok()
            .as_deref(),
        Some("kept")
    );
    assert_eq!(meta(&root, "keep")["quota_bytes"], 1 << 20);
    assert!(root.join("keep.snapshots/s1").is_dir());
    assert!(!root.join("other").exists() && !root.join("inside").exists());
    let stderr = api.d.stderr();
    assert!(
        !stderr.contains("\"status\":500"),
        "a 500 was answered:\n{stderr}"
    );
}

/// `lucid-db volumes …` in process (no daemon answers), on the daemon's data root: its
/// `--json` output as JSON.
fn cli_json(api: &super::Api, args: &[&str]) -> Value {
    let d = &api.d;
    let out = std::process::Command::new(super::BIN)
        .arg("--config")
        .arg(d.dir().join("lucid-db.toml"))
        .arg("volumes")
        .args(args)
        .arg("--json")
        .env_clear()
        .env("LUCID_DB__STATE_DIR", d.dir().join("state"))
        .env("LUCID_DB__VOLUMES__ROOT", d.dir().join("volumes"))
        .output()
        .expect("run lucid-db volumes");
    assert!(
        out.status.success(),
        "volumes {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("volumes {args:?}: {e}"))
}

/// The keys of an object, and of the objects in it, as paths.
fn shape(v: &Value, at: &str, into: &mut Vec<String>) {
    if let Value::Object(m) = v {
        for (k, child) in m {
            let p = format!("{at}.{k}");
            shape(child, &p, into);
            into.push(p);
        }
    }
}

#[test]
fn each_answer_is_what_the_cli_prints_with_json() {
    let (mut api, _) = redis_only("", &[]);
    let (a, w, adm, r) = (
        api.d.http,
        Some(api.write.as_str()),
        Some(api.admin.as_str()),
        Some(api.read.as_str()),
    );
    let root = api.d.dir().join("volumes");
    let created = expect(
        &call(
            a,
            "POST",
            &path("/volumes"),
            w,
            Some(&json!({"name": "same", "quota": "1M", "labels": {"k": "v"}})),
        ),
        201,
        "create",
    );
    std::fs::write(root.join("same/a.txt"), "one").expect("write");
    for s in ["s1", "s2"] {
        expect(
            &call(
                a,
                "POST",
                &path("/volumes/same/snapshots"),
                w,
                Some(&json!({"name": s})),
            ),
            201,
            "snapshot",
        );
    }
    let deleted = expect(
        &call(a, "DELETE", &path("/volumes/same/snapshots/s2"), adm, None),
        200,
        "delete-snapshot",
    );
    expect(
        &call(a, "POST", &path("/volumes/same/verify"), w, None),
        200,
        "seal",
    );
    let verified = expect(
        &call(a, "POST", &path("/volumes/same/verify"), w, None),
        200,
        "verify",
    );
    let listed = expect(
        &call(a, "GET", &path("/volumes/same/snapshots"), r, None),
        200,
        "snapshots",
    );
    let cleaned = expect(
        &call(a, "POST", &path("/volumes/same/cleanup"), w, None),
        200,
        "cleanup",
    );

    // The daemon stops: the CLI runs in process, on the same data root.
    api.d.signal(libc::SIGTERM);
    assert!(
        api.d.wait_exit(super::WITHIN).is_some(),
        "the daemon did not stop"
    );
    assert_eq!(cli_json(&api, &["snapshots", "same"]), listed);
    assert_eq!(cli_json(&api, &["verify", "same"]), verified);
    assert_eq!(cli_json(&api, &["cleanup", "same"]), cleaned);
    cli_json(&api, &["snapshot", "same", "--name", "s2"]);
    assert_eq!(cli_json(&api, &["delete-snapshot", "same", "s2"]), deleted);
    // A new volume: the same fields (its name, path and time differ).
    let other = cli_json(
        &api,
        &["create", "other", "--quota", "1M", "--label", "k=v"],
    );
    let (mut want, mut got) = (Vec::new(), Vec::new());
    shape(&created, "", &mut want);
    shape(&other, "", &mut got);
    assert_eq!(got, want, "{other} vs {created}");
    assert_eq!(
        (&other["quota_bytes"], &other["labels"]),
        (&created["quota_bytes"], &created["labels"])
    );
    assert_eq!(
        cli_json(&api, &["delete", "other"]),
        json!({"deleted": "other"})
    );
}
