//! The HTTP API through the real daemon on a free port, real backends, real HTTP: each
//! endpoint's happy path, the auth matrix over every route, the rate limit with Redis up and
//! down, the bad-input cases, the audit trail, and tokens added and revoked while it runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lucid_testkit::{Daemon, Server, elasticsearch, mongo, redis};
use serde_json::{Value, json};

/// The volume routes that change data.
mod volumes;

const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");
const API: &str = "/api/v1/database";

/// Long enough for anything that must happen "within seconds" on a loaded 2-core machine.
const WITHIN: Duration = Duration::from_secs(20);

mod cli_client;

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client (Connection: close; the daemon answers with Content-Length)

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error shape's code; panics on any other shape.
    fn code(&self) -> String {
        let v = self.json();
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not the error shape: {} {}", self.status, self.body));
        assert!(v["error"]["message"].is_string(), "{v}");
        code.to_owned()
    }
}

fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    // A server may answer (413) and close before taking a large body.
    let _ = s.write_all(body);
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    raw(addr, method, path, &headers, text.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// The daemon and its tokens

struct Api {
    d: Daemon,
    read: String,
    write: String,
    admin: String,
    _servers: Vec<Server>,
}

fn config(redis: &str, mongo: Option<&str>, es: Option<&str>, extra: &str) -> String {
    let mut c = format!(
        "[redis]\nurl = \"{redis}\"\n[supervisor]\nprobe_interval = \"200ms\"\nbackoff_base = \"50ms\"\nbackoff_cap = \"500ms\"\ncall_deadline = \"2s\"\n"
    );
    match mongo {
        Some(url) => c.push_str(&format!("[mongodb]\nurl = \"{url}\"\n")),
        None => c.push_str("[mongodb]\nenabled = false\n"),
    }
    match es {
        Some(url) => c.push_str(&format!("[elasticsearch]\nurl = \"{url}\"\n")),
        None => c.push_str("[elasticsearch]\nenabled = false\n"),
    }
    c.push_str(extra);
    c
}

/// `lucid-db token …` against the daemon's config and state directory.
fn token_cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(d.dir().join("lucid-db.toml"))
        .arg("token")
        .args(args)
        .env_clear()
        .env("LUCID_DB__STATE_DIR", d.dir().join("state"))
        .env("LUCID_DB__VOLUMES__ROOT", d.dir().join("volumes"))
        .output()
        .expect("run lucid-db token")
}

fn add_token(d: &Daemon, name: &str, scope: &str) -> String {
    let out = token_cli(d, &["add", name, "--scope", scope]);
    assert!(
        out.status.success(),
        "token add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    // The token alone on stdout.
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let token = stdout.trim().to_owned();
    assert!(token.starts_with("ldb_") && token.len() > 40, "{token}");
    token
}

/// Polls a read route with `token` until `pred(status)`, at most [`WITHIN`].
fn wait_status(addr: SocketAddr, token: &str, pred: impl Fn(u16) -> bool) -> u16 {
    let deadline = Instant::now() + WITHIN;
    loop {
        let r = call(addr, "GET", &format!("{API}/volumes"), Some(token), None);
        if pred(r.status) || Instant::now() > deadline {
            return r.status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(cfg: &str, env: &[(&str, &str)], servers: Vec<Server>) -> Api {
    let mut d = Daemon::start(Path::new(BIN), cfg, &["--log-format", "json"], env);
    assert!(
        d.notify.wait_for(WITHIN, |l| l == "READY=1").is_some(),
        "no READY=1; stderr:\n{}",
        d.stderr()
    );
    let read = add_token(&d, "reader", "read");
    let write = add_token(&d, "writer", "write");
    let admin = add_token(&d, "admin", "admin");
    // Added while the daemon runs: accepted within seconds, without a restart.
    for t in [&read, &write, &admin] {
        assert_eq!(wait_status(d.http, t, |s| s != 401), 200, "{}", d.stderr());
    }
    Api {
        d,
        read,
        write,
        admin,
        _servers: servers,
    }
}

fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + WITHIN;
    while raw(addr, "GET", "/ready", &[], b"").status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn full() -> Api {
    let (r, m, e) = (redis(), mongo(), elasticsearch());
    let cfg = config(&r.url(), Some(&m.url()), Some(&e.url()), "");
    let api = start(&cfg, &[], vec![r, m, e]);
    wait_ready(api.d.http);
    api
}

fn redis_only(extra: &str, env: &[(&str, &str)]) -> (Api, u16) {
    let r = redis();
    let port = r.port();
    let cfg = config(&r.url(), None, None, extra);
    (start(&cfg, env, vec![r]), port)
}

// ---------------------------------------------------------------------------------------------
// Happy paths

#[test]
fn every_endpoint_answers_its_happy_path_and_writes_are_audited() {
    let api = full();
    let a = api.d.http;
    let (r, w, adm) = (
        Some(api.read.as_str()),
        Some(api.write.as_str()),
        Some(api.admin.as_str()),
    );

    // No token for /health and /ready.
    let h = raw(a, "GET", "/health", &[], b"");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["audit"]["dropped"], 0);

    // MongoDB: insert one and many, query, update, aggregate, delete, stats.
    let user = |id: &str| json!({"user_id": id, "email": format!("{id}@example.org"), "created_at": {"$date": "2026-01-02T03:04:05Z"}, "role": "user", "status": "active"});
    let ins = call(
        a,
        "POST",
        &format!("{API}/mongodb/users"),
        w,
        Some(&json!({"document": user("u1")})),
    );
    assert_eq!(ins.status, 201, "{}", ins.body);
    assert_eq!(ins.json()["inserted_ids"].as_array().map(Vec::len), Some(1));
    let many = call(
        a,
        "POST",
        &format!("{API}/mongodb/users"),
        w,
        Some(&json!({"documents": [user("u2"), user("u3")]})),
    );
    assert_eq!(many.status, 201, "{}", many.body);
    let q = call(
        a,
        "POST",
        &format!("{API}/mongodb/query"),
        r,
        Some(
            &json!({"collection": "users", "filter": {"user_id": {"$in": ["u1", "u2"]}}, "sort": {"user_id": 1}, "limit": 10}),
        ),
    );
    assert_eq!(q.status, 200, "{}", q.body);
    let docs = q.json()["documents"].clone();
    assert_eq!(docs.as_array().map(Vec::len), Some(2), "{docs}");
    assert_eq!(docs[0]["user_id"], "u1");
    assert!(
        docs[0]["_id"]["$oid"].is_string(),
        "relaxed Extended JSON: {docs}"
    );
    let up = call(
        a,
        "PATCH",
        &format!("{API}/mongodb/users"),
        w,
        Some(
            &json!({"filter": {"user_id": "u1"}, "update": {"$set": {"role": "admin"}}, "many": false}),
        ),
    );
    assert_eq!(
        (up.status, up.json()["modified"].clone()),
        (200, json!(1)),
        "{}",
        up.body
    );
    let agg = call(
        a,
        "POST",
        &format!("{API}/mongodb/users/aggregate"),
        r,
        Some(&json!({"pipeline": [{"$match": {"role": "user"}}, {"$count": "n"}]})),
    );
    assert_eq!(agg.status, 200, "{}", agg.body);
    assert_eq!(agg.json()["documents"][0]["n"], 2, "{}", agg.body);
    let del = call(
        a,
        "DELETE",
        &format!("{API}/mongodb/users"),
        adm,
        Some(&json!({"filter": {"role": "user"}, "many": true})),
    );
    assert_eq!(
        (del.status, del.json()["deleted"].clone()),
        (200, json!(2)),
        "{}",
        del.body
    );
    let st = call(a, "GET", &format!("{API}/mongodb/stats"), r, None);
    assert_eq!(st.status, 200, "{}", st.body);
    assert_eq!(st.json()["database"], "lucid");

    // Redis: cache, sessions, a rate-limit check, a lock.
    let set = call(
        a,
        "POST",
        &format!("{API}/redis/cache"),
        w,
        Some(
            &json!({"service": "auth", "entity": "user", "id": "42", "value": {"name": "Ada"}, "ttl": 60}),
        ),
    );
    assert_eq!(set.status, 201, "{}", set.body);
    assert_eq!(set.json()["key"], "lucid:auth:user:42");
    let get = call(
        a,
        "GET",
        &format!("{API}/redis/cache/auth/user/42"),
        r,
        None,
    );
    assert_eq!(
        (get.status, get.json()["value"]["name"].clone()),
        (200, json!("Ada"))
    );
    let gone = call(
        a,
        "DELETE",
        &format!("{API}/redis/cache/auth/user/42"),
        w,
        None,
    );
    assert_eq!(gone.json()["deleted"], true);
    assert_eq!(
        call(
            a,
            "GET",
            &format!("{API}/redis/cache/auth/user/42"),
            r,
            None
        )
        .status,
        404
    );

    let s = call(
        a,
        "POST",
        &format!("{API}/redis/session"),
        w,
        Some(&json!({"user_id": "u1", "data": {"ip": "10.0.0.1"}, "ttl": 600})),
    );
    assert_eq!(s.status, 201, "{}", s.body);
    let sid = s.json()["id"].as_str().expect("id").to_owned();
    let sg = call(a, "GET", &format!("{API}/redis/session/{sid}"), r, None);
    assert_eq!(
        (sg.status, sg.json()["user_id"].clone()),
        (200, json!("u1"))
    );
    let sd = call(a, "DELETE", &format!("{API}/redis/session/{sid}"), w, None);
    assert_eq!(sd.json()["deleted"], true);
    assert_eq!(
        call(a, "GET", &format!("{API}/redis/session/{sid}"), r, None).status,
        404
    );

    let rl = |n| {
        call(
            a,
            "POST",
            &format!("{API}/redis/ratelimit/check"),
            w,
            Some(&json!({"user_id": "u9", "limit": 1, "window_seconds": 60})),
        )
        .json()["allowed"]
            .clone()
            == json!(n)
    };
    assert!(rl(true));
    assert!(rl(false));

    let lock = call(
        a,
        "POST",
        &format!("{API}/redis/lock/nightly"),
        adm,
        Some(&json!({"lease_ms": 30000})),
    );
    assert_eq!(lock.status, 200, "{}", lock.body);
    let guard = lock.json();
    assert!(guard["fence"].as_u64().is_some_and(|f| f > 0), "{guard}");
    let busy = call(a, "POST", &format!("{API}/redis/lock/nightly"), w, None);
    assert_eq!((busy.status, busy.code()), (409, "lock_busy".into()));
    let release_body = json!({"token": guard["token"], "fence": guard["fence"]});
    // A write token may not release the admin's lock, even with its token…
    let other = call(
        a,
        "DELETE",
        &format!("{API}/redis/lock/nightly"),
        w,
        Some(&release_body),
    );
    assert_eq!((other.status, other.code()), (403, "forbidden".into()));
    // …its holder may.
    let rel = call(
        a,
        "DELETE",
        &format!("{API}/redis/lock/nightly"),
        adm,
        Some(&release_body),
    );
    assert_eq!(rel.status, 200, "{}", rel.body);
    let again = call(
        a,
        "DELETE",
        &format!("{API}/redis/lock/nightly"),
        adm,
        Some(&release_body),
    );
    assert_eq!((again.status, again.code()), (409, "not_held".into()));

    // Elasticsearch: index through the bulk indexer, search, analytics, stats.
    let idx = call(
        a,
        "POST",
        &format!("{API}/elasticsearch/blocks"),
        w,
        Some(
            &json!({"id": "b1", "document": {"height": 1, "hash": "h1", "timestamp": "2026-11-02T10:00:00Z"}}),
        ),
    );
    assert_eq!(idx.status, 201, "{}", idx.body);
    assert_eq!(idx.json()["id"], "b1");
    let deadline = Instant::now() + WITHIN;
    loop {
        let found = call(
            a,
            "POST",
            &format!("{API}/elasticsearch/search"),
            r,
            Some(
                &json!({"entity": "blocks", "filters": [{"term": {"field": "hash", "value": "h1"}}], "size": 5}),
            ),
        );
        assert_eq!(found.status, 200, "{}", found.body);
        if found.json()["total"] == 1 {
            assert_eq!(found.json()["hits"][0]["id"], "b1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "indexed document never found: {}",
            found.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let an = call(a, "GET", &format!("{API}/elasticsearch/analytics"), r, None);
    assert_eq!(an.status, 200, "{}", an.body);
    assert_eq!(
        an.json()["documents_per_month"]["blocks"]["total"],
        1,
        "{}",
        an.body
    );
    assert!(an.json()["blocks_per_day"].is_array(), "{}", an.body);
    let es = call(a, "GET", &format!("{API}/elasticsearch/stats"), r, None);
    assert_eq!(es.status, 200, "{}", es.body);
    assert!(
        es.json()["indexer"]["answered"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    );

    // Volumes.
    let vols = call(a, "GET", &format!("{API}/volumes"), r, None);
    assert_eq!(vols.status, 200, "{}", vols.body);
    assert!(vols.body.contains("\"sessions\""), "{}", vols.body);
    let one = call(a, "GET", &format!("{API}/volumes/sessions"), r, None);
    assert_eq!(one.status, 200, "{}", one.body);
    let vb = call(
        a,
        "POST",
        &format!("{API}/volumes/sessions/backup"),
        w,
        None,
    );
    assert_eq!(vb.status, 202, "{}", vb.body);
    let vid = vb.json()["id"].as_str().expect("id").to_owned();
    let finished = |id: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = call(a, "GET", &format!("{API}/backup/status/{id}"), r, None);
            assert_eq!(st.status, 200, "{}", st.body);
            if st.json()["state"] == "finished" {
                return st.json();
            }
            assert!(Instant::now() < deadline, "backup {id} never finished");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let vs = finished(&vid);
    assert_eq!(vs["outcome"], "complete", "{vs}");

    // Backups: create, status, list, verify.
    let bc = call(
        a,
        "POST",
        &format!("{API}/backup/create"),
        w,
        Some(&json!({"stores": ["redis", "mongodb:users"]})),
    );
    assert_eq!(bc.status, 202, "{}", bc.body);
    let bid = bc.json()["id"].as_str().expect("id").to_owned();
    let last = call(a, "GET", &format!("{API}/backup/status"), r, None);
    assert_eq!((last.status, last.json()["id"].clone()), (200, json!(bid)));
    assert_eq!(finished(&bid)["outcome"], "complete");
    let list = call(a, "GET", &format!("{API}/backups"), r, None);
    assert_eq!(list.status, 200);
    let ids: Vec<Value> = list.json()["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .map(|b| b["id"].clone())
        .collect();
    assert!(
        ids.contains(&json!(bid)) && ids.contains(&json!(vid)),
        "{ids:?}"
    );
    let ver = call(a, "POST", &format!("{API}/backup/{bid}/verify"), w, None);
    assert_eq!(
        (ver.status, ver.json()["passed"].clone()),
        (200, json!(true)),
        "{}",
        ver.body
    );
    // Restore (admin), into another database and Redis database: the live ones stay as they
    // are, the report names the targets.
    let res = call(
        a,
        "POST",
        &format!("{API}/backup/{bid}/restore"),
        adm,
        Some(
            &json!({"stores": ["mongodb:users", "redis"], "to_db": "lucid_http_copy", "to_redis_db": 7}),
        ),
    );
    assert_eq!(res.status, 200, "{}", res.body);
    let targets: Vec<String> = res.json()["restored"]
        .as_array()
        .expect("restored")
        .iter()
        .map(|r| r["target"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        targets.iter().any(|t| t.starts_with("lucid_http_copy."))
            && targets.iter().any(|t| t == "db7"),
        "{}",
        res.body
    );

    // The audit: a document for a write, through MongoDB, naming the token (never the token).
    let deadline = Instant::now() + WITHIN;
    loop {
        let au = call(
            a,
            "POST",
            &format!("{API}/mongodb/query"),
            r,
            Some(
                &json!({"collection": "audit_logs", "filter": {"actor_id": "token:writer", "details.route": "/api/v1/database/mongodb/{collection}", "details.method": "PATCH"}}),
            ),
        );
        assert_eq!(au.status, 200, "{}", au.body);
        if let Some(doc) = au.json()["documents"].get(0) {
            assert_eq!(doc["target"], "collection=users");
            assert_eq!(doc["details"]["outcome"], "ok");
            assert_eq!(doc["details"]["status"], 200);
            assert!(!au.body.contains(&api.write), "the token is in the audit");
            break;
        }
        assert!(Instant::now() < deadline, "no audit document");
        std::thread::sleep(Duration::from_millis(200));
    }
    let stderr = api.d.stderr();
    assert!(
        stderr.contains("\"event\":\"api.audit\""),
        "no api.audit event"
    );
    for t in [&api.read, &api.write, &api.admin] {
        assert!(!stderr.contains(t.as_str()), "a token reached the log");
    }
}

// ---------------------------------------------------------------------------------------------
// Auth

/// Every route with a body that does nothing when it gets past auth (a bad id, an unknown
/// collection, an empty object): (method, path, body, the scope it needs).
fn routes() -> Vec<(&'static str, String, Option<Value>, &'static str)> {
    let p = |s: &str| format!("{API}{s}");
    let nothing = Some(json!({"nothing": true}));
    vec![
        ("POST", p("/mongodb/query"), nothing.clone(), "read"),
        ("GET", p("/mongodb/stats"), None, "read"),
        ("POST", p("/mongodb/nope"), nothing.clone(), "write"),
        ("PATCH", p("/mongodb/nope"), nothing.clone(), "write"),
        ("DELETE", p("/mongodb/nope"), nothing.clone(), "admin"),
        (
            "POST",
            p("/mongodb/nope/aggregate"),
            nothing.clone(),
            "read",
        ),
        ("POST", p("/redis/cache"), nothing.clone(), "write"),
        ("GET", p("/redis/cache/a/b/c"), None, "read"),
        ("DELETE", p("/redis/cache/a/b:x/c"), None, "write"),
        ("POST", p("/redis/session"), nothing.clone(), "write"),
        ("GET", p("/redis/session/s1"), None, "read"),
        ("DELETE", p("/redis/session/x:y"), None, "write"),
        (
            "POST",
            p("/redis/ratelimit/check"),
            nothing.clone(),
            "write",
        ),
        ("POST", p("/redis/lock/x"), nothing.clone(), "write"),
        ("DELETE", p("/redis/lock/x"), nothing.clone(), "write"),
        ("POST", p("/elasticsearch/search"), nothing.clone(), "read"),
        ("POST", p("/elasticsearch/nope"), nothing.clone(), "write"),
        ("GET", p("/elasticsearch/analytics"), None, "read"),
        ("GET", p("/elasticsearch/stats"), None, "read"),
        ("GET", p("/volumes"), None, "read"),
        ("GET", p("/volumes/sessions"), None, "read"),
        ("POST", p("/volumes/no..pe/backup"), None, "write"),
        ("POST", p("/volumes"), nothing.clone(), "write"),
        ("DELETE", p("/volumes/no..pe"), None, "admin"),
        ("PUT", p("/volumes/no..pe/quota"), nothing.clone(), "write"),
        ("POST", p("/volumes/no..pe/verify"), None, "write"),
        ("POST", p("/volumes/no..pe/snapshots"), None, "write"),
        ("GET", p("/volumes/no..pe/snapshots"), None, "read"),
        (
            "POST",
            p("/volumes/no..pe/snapshots/s/restore"),
            None,
            "admin",
        ),
        ("DELETE", p("/volumes/no..pe/snapshots/s"), None, "admin"),
        ("POST", p("/volumes/no..pe/cleanup"), None, "write"),
        (
            "POST",
            p("/volumes/no..pe/migrate"),
            nothing.clone(),
            "admin",
        ),
        ("POST", p("/backup/create"), nothing.clone(), "write"),
        ("GET", p("/backup/status"), None, "read"),
        ("GET", p("/backup/status/nope"), None, "read"),
        ("GET", p("/backups"), None, "read"),
        ("POST", p("/backup/nope/verify"), nothing.clone(), "write"),
        ("POST", p("/backup/nope/restore"), nothing.clone(), "admin"),
        ("GET", p("/backup/restore/status"), None, "read"),
        ("POST", p("/schedule/nope/run"), None, "admin"),
        ("GET", p("/nowhere"), None, "read"),
    ]
}

#[test]
fn the_auth_matrix_holds_over_every_route_and_a_revoked_token_is_refused_within_seconds() {
    let (api, _) = redis_only("", &[]);
    let a = api.d.http;
    let revoked = add_token(&api.d, "leaver", "admin");
    assert_eq!(wait_status(a, &revoked, |s| s != 401), 200);
    let out = token_cli(&api.d, &["revoke", "leaver"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        wait_status(a, &revoked, |s| s == 401),
        401,
        "a revoked token still works after {WITHIN:?}"
    );
    let ls = token_cli(&api.d, &["ls", "--json"]);
    let names: Vec<String> = serde_json::from_slice::<Value>(&ls.stdout)
        .expect("ls json")
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["reader", "writer", "admin"]);

    let rank = |s: &str| ["read", "write", "admin"].iter().position(|x| *x == s);
    for (method, path, body, need) in routes() {
        for (who, token) in [
            ("none", None),
            ("wrong", Some("ldb_0000")),
            ("revoked", Some(revoked.as_str())),
            ("read", Some(api.read.as_str())),
            ("write", Some(api.write.as_str())),
            ("admin", Some(api.admin.as_str())),
        ] {
            let r = call(a, method, &path, token, body.as_ref());
            let want = match rank(who) {
                None => Some((401, "unauthorized")),
                Some(have) if have < rank(need).unwrap_or(0) => Some((403, "forbidden")),
                Some(_) => None,
            };
            match want {
                Some((status, code)) => {
                    assert_eq!(
                        (r.status, r.code()),
                        (status, code.to_owned()),
                        "{who} {method} {path}"
                    )
                }
                None => {
                    assert!(
                        ![401, 403].contains(&r.status) && r.status < 500 || r.status == 503,
                        "{who} {method} {path}: {} {}",
                        r.status,
                        r.body
                    );
                    if r.status >= 400 {
                        r.code();
                    }
                }
            }
        }
    }
    // No token for these while bound to loopback.
    assert_eq!(raw(a, "GET", "/health", &[], b"").status, 200);
    assert_eq!(raw(a, "GET", "/ready", &[], b"").status, 200);

    // The OpenAPI document: served without a token here, equal to the committed one, an
    // OpenAPI 3 document naming every route above with its method and its scope.
    let served = raw(a, "GET", "/api/v1/openapi.json", &[], b"");
    assert_eq!(served.status, 200);
    let committed =
        std::fs::read_to_string(lucid_testkit::workspace_root().join("docs/openapi.json"))
            .expect("docs/openapi.json");
    assert!(
        served.body == committed,
        "docs/openapi.json differs from the served document: write GET /api/v1/openapi.json to it"
    );
    let doc = served.json();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert!(doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
    for (method, path, _, need) in routes() {
        if path.ends_with("/nowhere") {
            continue;
        }
        let paths = doc["paths"].as_object().expect("paths");
        // The route itself, else the pattern it fills in.
        let item = paths.get(&path).or_else(|| {
            paths
                .iter()
                .find(|(pattern, _)| pattern_matches(pattern, &path))
                .map(|(_, item)| item)
        });
        let op = item
            .and_then(|item| item.get(method.to_lowercase()))
            .unwrap_or_else(|| panic!("{method} {path} is not in the OpenAPI document"));
        assert_eq!(op["security"][0]["bearer"][0], need, "{method} {path}");
    }
}

/// Whether an OpenAPI path pattern (`/a/{x}/b`) matches a concrete path.
fn pattern_matches(pattern: &str, path: &str) -> bool {
    let (p, q): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == q.len() && p.iter().zip(&q).all(|(a, b)| a == b || a.starts_with('{'))
}

// ---------------------------------------------------------------------------------------------
// Rate limit

#[test]
fn a_burst_past_the_token_limit_is_answered_429_with_retry_after() {
    let (api, _) = redis_only("[http]\nrate_limit = 20\nrate_window = \"1m\"\n", &[]);
    let a = api.d.http;
    // The writer has not been used yet (start() polled with every token once).
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..25 {
        let r = call(a, "GET", &format!("{API}/volumes"), Some(&api.write), None);
        statuses.push(r.status);
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert_eq!(r.code(), "rate_limited");
    let after: u64 = r
        .header("Retry-After")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&after), "{after}");
    // Per token: the reader is not limited by the writer's burst.
    assert_eq!(
        call(a, "GET", &format!("{API}/volumes"), Some(&api.read), None).status,
        200
    );
}

/// Stops Redis and waits until a request shows the daemon knows.
fn stop_redis(api: &mut Api, until: impl Fn(&Resp) -> bool) -> Resp {
    api._servers[0].stop();
    let deadline = Instant::now() + WITHIN;
    loop {
        let r = call(
            api.d.http,
            "GET",
            &format!("{API}/volumes"),
            Some(&api.read),
            None,
        );
        if until(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "redis down never showed: {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn with_redis_down_and_closed_requests_are_refused_503_with_retry_after() {
    let (mut api, _) = redis_only("", &[("LUCID_DB__REDIS__RATE_LIMIT_WHEN_DOWN", "closed")]);
    let r = stop_redis(&mut api, |r| r.status == 503);
    assert_eq!(r.code(), "rate_limit_unavailable");
    assert!(r.header("Retry-After").is_some(), "{:?}", r.headers);
    // /health needs no token and still answers.
    assert_eq!(raw(api.d.http, "GET", "/health", &[], b"").status, 200);
}

#[test]
fn with_redis_down_and_open_the_limit_counts_in_process_and_health_says_so() {
    let (mut api, _) = redis_only(
        "[http]\nrate_limit = 30\n",
        &[("LUCID_DB__REDIS__RATE_LIMIT_WHEN_DOWN", "open")],
    );
    let a = api.d.http;
    let health = raw(a, "GET", "/health", &[], b"").json();
    assert!(health.get("rate_limit").is_none(), "{health}");
    stop_redis(&mut api, move |r| {
        r.status == 200
            && raw(a, "GET", "/health", &[], b"")
                .json()
                .get("rate_limit")
                .is_some()
    });
    // Admitted while Redis is down, counted here: the 31st in the window is refused.
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let r = call(a, "GET", &format!("{API}/volumes"), Some(&api.admin), None);
        statuses.push(r.status);
        if r.status == 429 {
            assert!(r.header("Retry-After").is_some());
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 200).count() <= 30,
        "{statuses:?}"
    );
    let health = raw(a, "GET", "/health", &[], b"").json();
    assert!(
        health["rate_limit"]
            .as_str()
            .is_some_and(|s| s.starts_with("in_process")),
        "{health}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[test]
fn bad_input_is_a_clear_4xx_never_a_500_and_nothing_is_written() {
    let (r, m) = (redis(), mongo());
    let cfg = config(
        &r.url(),
        Some(&m.url()),
        None,
        "[http]\nbody_limit = \"4K\"\n",
    );
    let api = start(&cfg, &[], vec![r, m]);
    wait_ready(api.d.http);
    let a = api.d.http;
    let w = api.write.clone();
    let adm = api.admin.clone();
    let auth = format!("Bearer {w}");
    let json_h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let users = format!("{API}/mongodb/users");
    let query = format!("{API}/mongodb/query");
    let user = json!({"user_id": "x1", "email": "x1@example.org", "created_at": {"$date": "2026-01-02T03:04:05Z"}, "role": "user", "status": "active"});

    let cases: Vec<(&str, Resp, u16, &str)> = vec![
        (
            "malformed JSON",
            raw(a, "POST", &users, &json_h, b"{\"document\": "),
            400,
            "invalid_json",
        ),
        (
            "not JSON at all",
            raw(a, "POST", &users, &json_h, b"hello"),
            400,
            "invalid_json",
        ),
        (
            "no JSON content type",
            raw(
                a,
                "POST",
                &users,
                &[("Authorization", auth.as_str())],
                b"{}",
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "wrong type",
            call(
                a,
                "POST",
                &query,
                Some(&w),
                Some(&json!({"collection": "users", "limit": "ten"})),
            ),
            400,
            "invalid_body",
        ),
        (
            "unknown field",
            call(
                a,
                "POST",
                &users,
                Some(&w),
                Some(&json!({"document": user, "upsert": true})),
            ),
            400,
            "invalid_body",
        ),
        (
            "missing many",
            call(
                a,
                "PATCH",
                &users,
                Some(&w),
                Some(&json!({"filter": {}, "update": {"$set": {"role": "admin"}}})),
            ),
            400,
            "invalid_body",
        ),
        (
            "oversize body",
            raw(
                a,
                "POST",
                &users,
                &json_h,
                format!("{{\"document\": {{\"pad\": \"{}\"}}}}", "x".repeat(8192)).as_bytes(),
            ),
            413,
            "body_too_large",
        ),
        (
            "$where in a filter",
            call(
                a,
                "POST",
                &query,
                Some(&w),
                Some(&json!({"collection": "users", "filter": {"$where": "sleep(1000)"}})),
            ),
            400,
            "forbidden_operator",
        ),
        (
            "$function deep in a filter",
            call(
                a,
                "POST",
                &query,
                Some(&w),
                Some(
                    &json!({"collection": "users", "filter": {"$expr": {"$and": [{"$function": {"body": "x", "args": [], "lang": "js"}}]}}}),
                ),
            ),
            400,
            "forbidden_operator",
        ),
        (
            "$accumulator in a pipeline",
            call(
                a,
                "POST",
                &format!("{users}/aggregate"),
                Some(&w),
                Some(&json!({"pipeline": [{"$group": {"_id": null, "x": {"$accumulator": {}}}}]})),
            ),
            400,
            "forbidden_operator",
        ),
        (
            "$out stage",
            call(
                a,
                "POST",
                &format!("{users}/aggregate"),
                Some(&w),
                Some(&json!({"pipeline": [{"$match": {}}, {"$out": "stolen"}]})),
            ),
            400,
            "forbidden_operator",
        ),
        (
            "$merge stage",
            call(
                a,
                "POST",
                &format!("{users}/aggregate"),
                Some(&w),
                Some(&json!({"pipeline": [{"$merge": {"into": "users"}}]})),
            ),
            400,
            "forbidden_operator",
        ),
        (
            "$where in an update filter",
            call(
                a,
                "PATCH",
                &users,
                Some(&w),
                Some(
                    &json!({"filter": {"$where": "1"}, "update": {"$set": {"role": "admin"}}, "many": true}),
                ),
            ),
            400,
            "forbidden_operator",
        ),
        (
            "unknown operator",
            call(
                a,
                "POST",
                &query,
                Some(&w),
                Some(&json!({"collection": "users", "filter": {"role": {"$gtt": 1}}})),
            ),
            400,
            "invalid",
        ),
        (
            "collection outside the 15",
            call(
                a,
                "POST",
                &format!("{API}/mongodb/system.users"),
                Some(&w),
                Some(&json!({"document": {}})),
            ),
            400,
            "unknown_collection",
        ),
        (
            "query of another collection",
            call(
                a,
                "POST",
                &query,
                Some(&w),
                Some(&json!({"collection": "admin"})),
            ),
            400,
            "unknown_collection",
        ),
        (
            "limit over 1000",
            call(
                a,
                "POST",
                &query,
                Some(&w),
                Some(&json!({"collection": "users", "limit": 1001})),
            ),
            400,
            "invalid_limit",
        ),
        (
            "schema violation",
            call(
                a,
                "POST",
                &users,
                Some(&w),
                Some(&json!({"document": {"user_id": 5}})),
            ),
            400,
            "invalid",
        ),
        (
            "entity outside the set",
            call(
                a,
                "POST",
                &format!("{API}/elasticsearch/secrets"),
                Some(&w),
                Some(&json!({"document": {}})),
            ),
            400,
            "unknown_entity",
        ),
        (
            "search of another entity",
            call(
                a,
                "POST",
                &format!("{API}/elasticsearch/search"),
                Some(&w),
                Some(&json!({"entity": "lucid-*"})),
            ),
            400,
            "unknown_entity",
        ),
        (
            "traversal in a volume name",
            call(a, "GET", &format!("{API}/volumes/..%2Fetc"), Some(&w), None),
            400,
            "invalid_name",
        ),
        (
            "traversal in a volume backup",
            call(
                a,
                "POST",
                &format!("{API}/volumes/a..b/backup"),
                Some(&w),
                None,
            ),
            400,
            "invalid_name",
        ),
        (
            "traversal in a key part",
            call(
                a,
                "POST",
                &format!("{API}/redis/cache"),
                Some(&w),
                Some(&json!({"service": "..", "entity": "user", "id": "1", "value": 1})),
            ),
            400,
            "invalid",
        ),
        (
            "separator in a key part",
            call(
                a,
                "GET",
                &format!("{API}/redis/cache/auth/us:er/1"),
                Some(&w),
                None,
            ),
            400,
            "invalid",
        ),
        (
            "bad backup id",
            call(
                a,
                "GET",
                &format!("{API}/backup/status/..%2F..%2Fetc"),
                Some(&w),
                None,
            ),
            400,
            "invalid_id",
        ),
        (
            "wrong method",
            call(a, "PUT", &format!("{API}/mongodb/query"), Some(&w), None),
            405,
            "method_not_allowed",
        ),
        (
            "bad restore target database",
            call(
                a,
                "POST",
                &format!("{API}/backup/20261130T020000Z-3f9a/restore"),
                Some(&adm),
                Some(&json!({"to_db": "a/b"})),
            ),
            400,
            "invalid_argument",
        ),
        (
            "bad restore index prefix",
            call(
                a,
                "POST",
                &format!("{API}/backup/20261130T020000Z-3f9a/restore"),
                Some(&adm),
                Some(&json!({"index_prefix": "UP/"})),
            ),
            400,
            "invalid_argument",
        ),
        (
            "bad store",
            call(
                a,
                "POST",
                &format!("{API}/backup/create"),
                Some(&w),
                Some(&json!({"stores": ["postgres"]})),
            ),
            400,
            "invalid_store",
        ),
        (
            "unknown route",
            call(
                a,
                "GET",
                &format!("{API}/mongodb/users/../../etc"),
                Some(&w),
                None,
            ),
            404,
            "not_found",
        ),
    ];
    for (what, r, status, code) in cases {
        assert_eq!(
            (r.status, r.code()),
            (status, code.to_owned()),
            "{what}: {}",
            r.body
        );
        assert!(
            !r.body.contains("127.0.0.1"),
            "{what}: an address in {}",
            r.body
        );
    }

    // Nothing was written.
    let count = call(
        a,
        "POST",
        &format!("{users}/aggregate"),
        Some(&w),
        Some(&json!({"pipeline": [{"$count": "n"}]})),
    );
    assert_eq!(count.status, 200, "{}", count.body);
    // An empty collection counts as no result, or as `n: 0` (nx-27017).
    let n = count.json()["documents"]
        .get(0)
        .map_or(0, |d| d["n"].as_u64().unwrap_or(u64::MAX));
    assert_eq!(n, 0, "documents were written: {}", count.body);
    let stderr = api.d.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Audit while MongoDB is down

/// Also the guard against a stalled event loop: the audit writer runs on the main arbiter, and
/// MongoDB's reconnects fill the notify socket (which this test never reads) with STATUS= lines;
/// when those were sent from the event loop, the writer stopped once the socket's queue was full.
#[test]
fn audit_documents_wait_while_mongodb_is_down_are_written_when_it_is_back_and_overflow_is_counted()
{
    let (r, m) = (redis(), mongo());
    let mut cfg = config(&r.url(), Some(&m.url()), None, "[http]\naudit_queue = 2\n");
    // MongoDB down must not make the test daemon unready for the API's sake.
    cfg = cfg.replace("[mongodb]\n", "[mongodb]\nrequired = false\n");
    let mut api = start(&cfg, &[], vec![r, m]);
    wait_ready(api.d.http);
    let a = api.d.http;
    api._servers[1].stop();
    // Wait until the daemon knows.
    let deadline = Instant::now() + WITHIN;
    while !raw(a, "GET", "/health", &[], b"")
        .body
        .contains("\"backend\":\"mongodb\",\"required\":false,\"state\":\"backoff\"")
    {
        assert!(
            Instant::now() < deadline,
            "mongodb never down: {}",
            raw(a, "GET", "/health", &[], b"").body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in ["1", "2", "3", "4"] {
        let set = call(
            a,
            "POST",
            &format!("{API}/redis/cache"),
            Some(&api.write),
            Some(&json!({"service": "audit", "entity": "test", "id": id, "value": id})),
        );
        assert_eq!(set.status, 201, "{}", set.body);
    }
    let health = raw(a, "GET", "/health", &[], b"").json();
    assert_eq!(health["audit"]["queued"], 2, "{health}");
    assert_eq!(health["audit"]["dropped"], 2, "{health}");
    assert!(api.d.stderr().contains("\"event\":\"api.audit_dropped\""));

    api._servers[1].start_again();
    let deadline = Instant::now() + WITHIN;
    loop {
        let q = call(
            a,
            "POST",
            &format!("{API}/mongodb/query"),
            Some(&api.read),
            Some(
                &json!({"collection": "audit_logs", "filter": {"details.route": "/api/v1/database/redis/cache"}}),
            ),
        );
        if q.status == 200 && q.json()["documents"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queued audit documents never written: {} {}\n{}\n{}",
            q.status,
            q.body,
            raw(a, "GET", "/health", &[], b"").body,
            api.d
                .stderr()
                .lines()
                .filter(|l| l.contains("audit") || l.contains("mongodb"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        raw(a, "GET", "/health", &[], b"").json()["audit"]["queued"],
        0
    );
}

/// `token add` into a state directory another user owns would leave a file the daemon
/// (`User=lucid`) cannot read: refused with exit 77, naming the owner, and nothing written.
#[test]
fn token_add_into_a_state_directory_of_another_user_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // SAFETY: geteuid cannot fail.
    let foreign = if unsafe { libc::geteuid() } == 0 {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
        theirs
    } else {
        std::path::PathBuf::from("/")
    };
    let owner = std::fs::metadata(&foreign).expect("stat").uid();
    let out = Command::new(BIN)
        .args(["token", "add", "svc", "--scope", "read"])
        .env_clear()
        .env("LUCID_DB__STATE_DIR", &foreign)
        .env("LUCID_DB__VOLUMES__ROOT", dir.path().join("volumes"))
        .output()
        .expect("run lucid-db token add");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains(&format!("uid {owner}")),
        "names the owner: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no token printed");
    assert!(
        !foreign.join("http").exists(),
        "nothing written after the refusal"
    );
}
