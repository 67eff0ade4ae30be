//! The CLI as the running daemon's client: beside a daemon, `backup now|verify|restore` and
//! `schedule run` go through its API (the daemon's catalogue, audit and run history show it),
//! with the same output and exit codes as in process; without a token, with a wrong one or an
//! under-scoped one nothing is done (exit 77); with no daemon, everything runs in process as
//! before, a token file or not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::*;

/// `lucid-db ARGS` against the daemon's configuration, state directory and HTTP address, with
/// `token` (its text) in a token file given by `--token-file`, or none.
fn lucid(d: &Daemon, token: Option<&str>, args: &[&str]) -> Output {
    lucid_env(d, token, args, &[])
}

fn lucid_env(d: &Daemon, token: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(d.dir().join("lucid-db.toml"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LUCID_DB__STATE_DIR", d.dir().join("state"))
        .env("LUCID_DB__VOLUMES__ROOT", d.dir().join("volumes"))
        .env("LUCID_DB__HTTP__BIND", d.http.to_string())
        .envs(env.iter().copied());
    let dir = tempfile::tempdir().expect("tempdir");
    if let Some(t) = token {
        let file = dir.path().join("token");
        // As an operator writes it: the token and a newline.
        std::fs::write(&file, format!("{t}\n")).expect("write token file");
        cmd.arg("--token-file").arg(&file);
    }
    cmd.output().expect("run lucid-db")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The exit code, with both streams in the message when it is not `want`.
fn assert_exit(o: &Output, want: i32, what: &str) {
    let (out, err) = text(o);
    assert_eq!(
        o.status.code(),
        Some(want),
        "{what}: stdout:\n{out}\nstderr:\n{err}"
    );
}

/// The daemon's backups, by id, with their manifest's trigger.
fn backups(api: &Api) -> Vec<(String, String)> {
    let r = call(
        api.d.http,
        "GET",
        &format!("{API}/backups"),
        Some(&api.read),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap_or_default().to_owned(),
                b["manifest"]["trigger"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// The daemon's `api.audit` events for `route` (a pattern) by `token` (its name).
fn audited(d: &Daemon, route: &str, token: &str) -> Vec<Value> {
    d.stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            let f = &v["fields"];
            let field = |k: &str| v[k].as_str().or_else(|| f[k].as_str()).map(str::to_owned);
            field("event").as_deref() == Some("api.audit")
                && field("route").as_deref() == Some(route)
                && field("token").as_deref() == Some(token)
        })
        .collect()
}

/// Puts `n` keys into Redis through the API (db 0, the live one).
fn put_keys(api: &Api, n: usize) {
    for i in 0..n {
        let r = call(
            api.d.http,
            "POST",
            &format!("{API}/redis/cache"),
            Some(&api.write),
            Some(
                &json!({"service": "cli", "entity": "item", "id": i.to_string(), "value": {"n": i}, "ttl": 3600}),
            ),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A daemon with Redis alone, a rate limit no test reaches, a 1 s request timeout, and each
/// restored item slowed down (a restore of the keys [`put_keys`] writes takes seconds).
fn slow_restores() -> Api {
    let (api, _) = redis_only(
        "[http]\nrequest_timeout = \"1s\"\nrate_limit = 100000\n",
        &[("FAILPOINTS", "backup-restore-item=sleep(100)")],
    );
    api
}

#[test]
fn backup_now_verify_and_restore_beside_the_daemon_go_through_its_api() {
    let mut api = slow_restores();
    put_keys(&api, 60);
    let before = backups(&api).len();

    // `backup now`: the daemon runs it (trigger `api` in its manifest, audited as the writer's
    // call); the CLI prints the id and exits 0.
    let o = lucid(
        &api.d,
        Some(&api.write),
        &["backup", "now", "--stores", "redis"],
    );
    assert_exit(&o, 0, "backup now");
    let (out, err) = text(&o);
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("backup ")?.split_once(':').map(|(id, _)| id))
        .unwrap_or_else(|| panic!("no id in {out:?}"))
        .to_owned();
    assert!(out.contains(&format!("backup {id}: complete")), "{out}");
    assert!(err.contains("in the daemon"), "{err}");
    let list = backups(&api);
    assert_eq!(list.len(), before + 1, "{list:?}");
    assert!(list.contains(&(id.clone(), "api".to_owned())), "{list:?}");
    assert!(
        !audited(&api.d, &format!("{API}/backup/create"), "writer").is_empty(),
        "no audit of the API call"
    );

    // The same with --json: the report as in process, from the daemon.
    let o = lucid(
        &api.d,
        Some(&api.write),
        &["backup", "now", "--stores", "redis", "--json"],
    );
    assert_exit(&o, 0, "backup now --json");
    let v: Value = serde_json::from_slice(&o.stdout).expect("--json prints JSON");
    assert_eq!(
        (v["outcome"].as_str(), v["trigger"].as_str()),
        (Some("complete"), Some("api"))
    );
    assert!(v["stores"]["redis"].is_object(), "{v}");
    assert!(v["cleaned_up"]["partials"].is_array(), "{v}");
    let id2 = v["id"].as_str().expect("id").to_owned();
    assert!(backups(&api).iter().any(|(b, _)| *b == id2));

    // `backup verify`: through the API, exit 0.
    let o = lucid(&api.d, Some(&api.write), &["backup", "verify", &id]);
    assert_exit(&o, 0, "backup verify");
    assert!(text(&o).0.contains("checksummed passed"), "{}", text(&o).0);
    assert!(!audited(&api.d, &format!("{API}/backup/{{id}}/verify"), "writer").is_empty());

    // `backup restore` into the live database, which holds the keys: refused, exit 1, nothing
    // written.
    let o = lucid(&api.d, Some(&api.admin), &["backup", "restore", &id]);
    assert_exit(&o, 1, "restore into a non-empty target");
    assert!(text(&o).1.contains("target_not_empty"), "{}", text(&o).1);

    // Into an empty database: 60 keys at 100 ms each, far past the 1 s request timeout, never
    // cut; its progress drawn from the daemon's restore status while it runs.
    let o = lucid(
        &api.d,
        Some(&api.admin),
        &["backup", "restore", &id, "--to-redis-db", "3"],
    );
    assert_exit(&o, 0, "a restore longer than http.request_timeout");
    let (out, err) = text(&o);
    assert!(
        out.contains(&format!("backup {id}: 1 artifacts restored")),
        "{out}"
    );
    assert!(out.contains("db3"), "{out}");
    assert!(
        err.contains(&format!("restoring {id}: ")) && err.contains("items read"),
        "no progress drawn: {err}"
    );
    let restores = audited(&api.d, &format!("{API}/backup/{{id}}/restore"), "admin");
    assert!(
        restores.iter().any(|v| v.to_string().contains("\"ok\"")),
        "{restores:?}"
    );

    // --identity is a key: never sent to the daemon.
    let o = lucid(
        &api.d,
        Some(&api.admin),
        &["backup", "restore", &id, "--identity", "/nonexistent"],
    );
    assert_exit(&o, 64, "--identity beside the daemon");

    // A corrupt artifact: verify exits 65, restore exits 65 and writes nothing.
    let artifact = files(&api.d.dir().join("volumes"))
        .into_iter()
        .find(|p| {
            let s = p.to_string_lossy();
            s.contains(&id) && s.contains("redis") && !s.ends_with(".json")
        })
        .unwrap_or_else(|| panic!("no redis artifact of {id}"));
    let mut bytes = std::fs::read(&artifact).expect("read artifact");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&artifact, bytes).expect("write artifact");
    let o = lucid(&api.d, Some(&api.write), &["backup", "verify", &id]);
    assert_exit(&o, 65, "verify of a corrupt backup");
    let o = lucid(
        &api.d,
        Some(&api.admin),
        &["backup", "restore", &id, "--to-redis-db", "4"],
    );
    assert_exit(&o, 65, "restore of a corrupt backup");

    // The token never reaches the daemon's log or the CLI's output.
    let all = api.d.stderr();
    for t in [&api.read, &api.write, &api.admin] {
        assert!(
            !all.contains(t.as_str()),
            "a token reached the daemon's log"
        );
    }

    // With the daemon stopped, the same command runs in process, a token file given or not.
    api.d.signal(libc::SIGTERM);
    assert!(api.d.wait_exit(WITHIN).is_some(), "the daemon did not stop");
    let o = lucid(
        &api.d,
        Some("ldb_not_read"),
        &["backup", "now", "--stores", "redis", "--json"],
    );
    assert_exit(&o, 0, "backup now without a daemon");
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["trigger"], "cli", "{v}");
}

#[test]
fn without_a_fitting_token_nothing_is_done_and_the_exit_is_77() {
    let (api, _) = redis_only("[http]\nrate_limit = 100000\n", &[]);
    put_keys(&api, 2);
    let before = backups(&api);
    let now = ["backup", "now", "--stores", "redis"];

    // No token at all: says how to make one.
    let o = lucid(&api.d, None, &now);
    assert_exit(&o, 77, "no token");
    assert!(text(&o).1.contains("lucid-db token add"), "{}", text(&o).1);
    // A wrong one, a file that is not there, a read token for a write, a write token for an
    // admin call (a restore) and for a job.
    let o = lucid(&api.d, Some("ldb_0000"), &now);
    assert_exit(&o, 77, "a wrong token");
    let o = lucid(
        &api.d,
        None,
        &["backup", "now", "--token-file", "/nonexistent/token"],
    );
    assert_exit(&o, 77, "a token file that is not there");
    let o = lucid(&api.d, Some(&api.read), &now);
    assert_exit(&o, 77, "a read token for a backup");
    assert_eq!(backups(&api), before, "a refused call made a backup");

    // The environment names the file as well as the flag.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("t");
    std::fs::write(&file, &api.write).expect("write");
    let o = lucid_env(
        &api.d,
        None,
        &now,
        &[("LUCID_DB_TOKEN_FILE", file.to_str().expect("utf-8"))],
    );
    assert_exit(&o, 0, "a token from LUCID_DB_TOKEN_FILE");
    let id = backups(&api)
        .into_iter()
        .map(|(id, _)| id)
        .find(|id| !before.iter().any(|(b, _)| b == id))
        .expect("the new backup");

    let o = lucid(
        &api.d,
        Some(&api.write),
        &["backup", "restore", &id, "--to-redis-db", "5"],
    );
    assert_exit(&o, 77, "a write token for a restore");
    let o = lucid(&api.d, Some(&api.write), &["schedule", "run", "backup"]);
    assert_exit(&o, 77, "a write token for a job");
    assert!(
        audited(&api.d, &format!("{API}/backup/{{id}}/restore"), "writer").is_empty(),
        "a refused restore reached the handler"
    );
    for t in [&api.read, &api.write, &api.admin] {
        assert!(!text(&o).1.contains(t.as_str()), "a token was printed");
    }
}

#[test]
fn schedule_run_beside_the_daemon_runs_the_job_there_and_its_history_has_it() {
    let (api, _) = redis_only("[http]\nrate_limit = 100000\n", &[]);
    let before = backups(&api).len();
    let o = lucid(
        &api.d,
        Some(&api.admin),
        &["schedule", "run", "backup", "--json"],
    );
    assert_exit(&o, 0, "schedule run backup");
    let record: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(record["trigger"], "manual", "{record}");
    assert_eq!(record["outcome"], "ok", "{record}");
    // The daemon ran it: its catalogue has the backup, its audit the call, its history the run.
    assert_eq!(backups(&api).len(), before + 1);
    assert!(!audited(&api.d, &format!("{API}/schedule/{{job}}/run"), "admin").is_empty());
    let h = lucid(&api.d, None, &["schedule", "history", "backup", "--json"]);
    assert_exit(&h, 0, "schedule history");
    let runs: Value = serde_json::from_slice(&h.stdout).expect("JSON");
    assert!(
        runs.as_array()
            .expect("runs")
            .iter()
            .any(|r| r["run_id"] == record["run_id"]),
        "{runs}"
    );
    // A job that does not exist: a usage error before anything is asked.
    let o = lucid(&api.d, Some(&api.admin), &["schedule", "run", "nope"]);
    assert_exit(&o, 64, "an unknown job");
    // And through the API directly: 400 with its code.
    let r = call(
        api.d.http,
        "POST",
        &format!("{API}/schedule/nope/run"),
        Some(&api.admin),
        None,
    );
    assert_eq!((r.status, r.code()), (400, "invalid_job".to_owned()));
}

/// Needs the daemon's volume routes (branch `volapi`, docs/http.md's Volumes table).
#[test]
fn volume_commands_beside_the_daemon_go_through_its_api() {
    let (api, _) = redis_only("[http]\nrate_limit = 100000\n", &[]);
    let (w, adm) = (Some(api.write.as_str()), Some(api.admin.as_str()));
    let inspect = |n: &str| {
        call(
            api.d.http,
            "GET",
            &format!("{API}/volumes/{n}"),
            Some(&api.read),
            None,
        )
    };

    let o = lucid(
        &api.d,
        w,
        &[
            "volumes", "create", "clivol", "--quota", "10M", "--label", "team=ops", "--json",
        ],
    );
    assert_exit(&o, 0, "volumes create");
    let created: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(created["name"], "clivol", "{created}");
    // The daemon made it: it knows it at once, and its audit has the writer's call.
    let info = inspect("clivol");
    assert_eq!(info.status, 200, "{}", info.body);
    assert_eq!(info.json()["labels"]["team"], "ops");
    assert!(!audited(&api.d, &format!("{API}/volumes"), "writer").is_empty());

    let o = lucid(&api.d, w, &["volumes", "resize", "clivol", "20M"]);
    assert_exit(&o, 0, "volumes resize");
    assert_eq!(inspect("clivol").json()["quota_bytes"], 20 * 1024 * 1024);

    // Verify seals on first use, then a changed file is a mismatch: 65, as in process.
    let data = PathBuf::from(
        inspect("clivol").json()["data_dir"]
            .as_str()
            .expect("data_dir"),
    );
    std::fs::write(data.join("a.txt"), "one").expect("write");
    assert_exit(
        &lucid(&api.d, w, &["volumes", "verify", "clivol"]),
        0,
        "verify seals",
    );
    let o = lucid(
        &api.d,
        w,
        &["volumes", "snapshot", "clivol", "--name", "s1"],
    );
    assert_exit(&o, 0, "volumes snapshot");
    assert_eq!(text(&o).0.trim(), "s1");
    std::fs::write(data.join("a.txt"), "two!").expect("write");
    assert_exit(
        &lucid(&api.d, w, &["volumes", "verify", "clivol"]),
        65,
        "verify of a change",
    );

    let o = lucid(&api.d, w, &["volumes", "snapshots", "clivol", "--json"]);
    assert_exit(&o, 0, "volumes snapshots");
    let list: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|s| s["name"] == "s1")),
        "{list}"
    );

    // Admin commands: refused to a write token (77, nothing done), done with an admin one.
    let o = lucid(
        &api.d,
        w,
        &["volumes", "restore-snapshot", "clivol", "s1", "--force"],
    );
    assert_exit(&o, 77, "restore-snapshot with a write token");
    assert_eq!(
        std::fs::read_to_string(data.join("a.txt")).expect("read"),
        "two!"
    );
    let o = lucid(
        &api.d,
        adm,
        &["volumes", "restore-snapshot", "clivol", "s1", "--force"],
    );
    assert_exit(&o, 0, "restore-snapshot");
    assert_eq!(
        std::fs::read_to_string(data.join("a.txt")).expect("read"),
        "one"
    );
    assert_exit(
        &lucid(&api.d, adm, &["volumes", "delete-snapshot", "clivol", "s1"]),
        0,
        "delete-snapshot",
    );
    assert_exit(
        &lucid(&api.d, w, &["volumes", "cleanup", "clivol"]),
        0,
        "cleanup",
    );
    let to = api.d.dir().join("elsewhere");
    let o = lucid(
        &api.d,
        adm,
        &["volumes", "migrate", "clivol", to.to_str().expect("utf-8")],
    );
    assert_exit(&o, 0, "migrate");
    assert!(
        to.join("a.txt").exists() || to.exists(),
        "nothing at {}",
        to.display()
    );

    // A bad name is refused before anything is asked (64), a busy or missing one by the daemon.
    assert_exit(
        &lucid(&api.d, w, &["volumes", "create", "no/pe"]),
        64,
        "a bad name",
    );
    assert_exit(
        &lucid(&api.d, w, &["volumes", "create", "clivol"]),
        1,
        "an existing volume",
    );
    let o = lucid(&api.d, w, &["volumes", "delete", "clivol", "--force"]);
    assert_exit(&o, 77, "delete with a write token");
    let o = lucid(&api.d, adm, &["volumes", "delete", "clivol", "--force"]);
    assert_exit(&o, 0, "delete");
    assert_eq!(inspect("clivol").status, 404);
}
