//! MongoDB, Redis and Elasticsearch in a backup, through the CLI against real servers
//! (redis-server, nx-27017, osmem-server): a backup of every store verifies `decoded`, and each
//! store's artifacts come back with stock tools by docs/backup.md's recipes, each run as it
//! stands in the page; a backend that is down, or killed mid-backup, makes the backup partial
//! naming it while the other stores verify; one collection or one index backs up alone; and
//! the decoders catch what checksums cannot (a file re-encoded after it was cut).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lucid_testkit::Server;
use serde_json::{Value, json};

use crate::backup::{Machine, artifact_names, make_tree, need_stock_tools, sh};

// ---------------------------------------------------------------------------------------------
// Servers, seeds, snapshots

/// The servers a backup reads from.
struct Backends {
    redis: Server,
    mongo: Server,
    es: Server,
}

impl Backends {
    fn start() -> Backends {
        Backends {
            redis: lucid_testkit::redis(),
            mongo: lucid_testkit::mongo(),
            es: lucid_testkit::elasticsearch(),
        }
    }
}

/// A CLI machine whose database stores are `b`'s servers. The bootstraps are off: a run backs
/// up what the test seeded, not what a bootstrap made while it ran.
fn machine(b: &Backends) -> Machine {
    let mut m = Machine::new();
    for (k, v) in [
        ("LUCID_DB__REDIS__ENABLED", "true".to_owned()),
        ("LUCID_DB__REDIS__URL", b.redis.url()),
        ("LUCID_DB__MONGODB__ENABLED", "true".to_owned()),
        ("LUCID_DB__MONGODB__URL", b.mongo.url()),
        ("LUCID_DB__MONGODB__BOOTSTRAP", "false".to_owned()),
        ("LUCID_DB__ELASTICSEARCH__ENABLED", "true".to_owned()),
        ("LUCID_DB__ELASTICSEARCH__URL", b.es.url()),
        ("LUCID_DB__ELASTICSEARCH__BOOTSTRAP", "false".to_owned()),
    ] {
        m.set(k, v);
    }
    m
}

/// Runs a Python script with the project's venv (pymongo is pinned in scripts/setup.sh);
/// answers its stdout.
fn python(script: &str, args: &[&str]) -> String {
    let py = lucid_testkit::workspace_root().join(".venv/bin/python");
    assert!(
        py.is_file(),
        "no .venv/bin/python: run scripts/setup.sh (it installs pymongo into .venv)"
    );
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Documents of every type nx-27017 stores (it refuses Decimal128, Timestamp and Regex), in
/// `users` and `audit_logs`, valid against their schemas.
const SEED_MONGO: &str = r#"
import sys, datetime, pymongo, bson
db = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000).lucid
start = datetime.datetime(2026, 11, 1, 12, 0, 0)
db.users.insert_many([{
    "_id": bson.ObjectId(), "user_id": f"u{i}", "email": f"u{i}@example.org",
    "role": "user", "status": "active", "created_at": start + datetime.timedelta(seconds=i),
    "display_name": f"Ünïcode user {i} \"quoted\"", "n": i, "big": 2**40 + i, "ratio": i / 3,
    "admin": i % 2 == 0, "none": None, "blob": bson.Binary(bytes([i % 256, 0, 255]) * 3),
    "nested": {"a": [1, "two", {"three": i}], "empty": {}}, "tags": ["x", "y"],
} for i in range(250)])
db.audit_logs.insert_many([{
    "actor_id": f"u{i % 7}", "action": "auth.login", "target": f"session {i}",
    "timestamp": start + datetime.timedelta(minutes=i), "details": {"ip": "10.0.0.1", "n": i},
} for i in range(40)])
"#;

/// Every `.bson` file of the dump equals what the server holds, decoded by pymongo's own BSON
/// reader; `users.metadata.json` parses with pymongo's `json_util` into mongodump's shape, as
/// the golden file (from MongoDB's documentation of mongodump's output) has it.
const CHECK_MONGO: &str = r#"
import sys, pathlib, pymongo, bson
from bson import json_util
url, dump, golden = sys.argv[1:4]
db = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000).lucid
key = lambda d: str(d["_id"])
for coll, n in [("users", 250), ("audit_logs", 40)]:
    path = pathlib.Path(dump, "lucid", coll + ".bson")
    got = sorted(bson.decode_all(path.read_bytes()), key=key)
    want = sorted(db[coll].find(), key=key)
    assert len(got) == n, (coll, len(got))
    assert got == want, f"{coll}: the .bson file differs from the server"
    with open(path, "rb") as f:
        assert sum(1 for _ in bson.decode_file_iter(f)) == n
meta = json_util.loads(pathlib.Path(dump, "lucid", "users.metadata.json").read_text())
gold = json_util.loads(pathlib.Path(golden).read_text())
assert list(meta) == list(gold) == ["options", "indexes", "collectionName", "type"], list(meta)
assert list(meta["options"]) == list(gold["options"]), list(meta["options"])
assert (meta["collectionName"], meta["type"]) == ("users", gold["type"])
assert meta["indexes"][0] == gold["indexes"][0] == {"v": 2, "key": {"_id": 1}, "name": "_id_"}
for index in meta["indexes"]:
    assert list(index)[:3] == ["v", "key", "name"], index
    assert type(index["v"]) is int and index["v"] == 2
schema = meta["options"]["validator"]["$jsonSchema"]
assert schema["required"] == ["user_id", "email", "role", "status", "created_at"], schema
assert meta["options"]["validationLevel"] == "strict"
names = [i["name"] for i in meta["indexes"]]
assert "users_email_unique" in names and "users_display_name_text" in names, names
raw = pathlib.Path(dump, "lucid", "users.metadata.json").read_text()
assert '{"$numberInt":"2"}' in raw, "canonical Extended JSON, as mongodump writes it"
# Every collection's metadata file, beside its .bson file, in the same shape.
files = sorted(pathlib.Path(dump, "lucid").glob("*.metadata.json"))
assert len(files) == 15, files
for path in files:
    m = json_util.loads(path.read_text())
    assert list(m) == list(gold), (path, list(m))
    assert m["collectionName"] + ".metadata.json" == path.name, path
    assert path.with_name(m["collectionName"] + ".bson").exists(), path
    assert "$jsonSchema" in m["options"]["validator"], path
print(len(names))
"#;

/// Keys of every type, with and without a TTL, a held lock, the fencing counter, a rate-limit
/// window, a value that looks like RESP, enough keys for several SCAN steps, and a key outside
/// `lucid:*` (not backed up).
fn seed_redis(url: &str) {
    let mut c = redis::Client::open(url)
        .expect("client")
        .get_connection()
        .expect("connect");
    let mut run = |args: &[&[u8]]| {
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).expect("name"));
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<redis::Value>(&mut c)
            .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(args[0])));
    };
    run(&[
        b"SET",
        b"lucid:cache:resp-like",
        b"*6\r\n$7\r\nRESTORE\r\n\0\xff",
    ]);
    run(&[b"SET", b"lucid:cache:ttl", b"v", b"PX", b"600000"]);
    run(&[
        b"HSET",
        b"lucid:sessions:session:s1",
        b"user",
        b"u1",
        b"role",
        b"user",
    ]);
    run(&[b"PEXPIRE", b"lucid:sessions:session:s1", b"900000"]);
    run(&[b"RPUSH", b"lucid:test:list", b"a", b"b", b"c"]);
    run(&[b"SADD", b"lucid:test:set", b"x", b"y", b"z"]);
    run(&[b"SADD", b"lucid:test:intset", b"1", b"2", b"3"]);
    run(&[b"ZADD", b"lucid:test:zset", b"1", b"a", b"2.5", b"b"]);
    run(&[b"XADD", b"lucid:test:stream", b"*", b"field", b"value"]);
    run(&[b"XADD", b"lucid:test:stream", b"*", b"field", b"other"]);
    run(&[
        b"SET",
        b"lucid:locks:lock:job",
        b"token-1",
        b"PX",
        b"600000",
    ]);
    run(&[b"SET", b"lucid:locks:fence:all", b"42"]);
    run(&[b"ZADD", b"lucid:ratelimit:user:u1", b"1", b"r1"]);
    run(&[b"PEXPIRE", b"lucid:ratelimit:user:u1", b"60000"]);
    run(&[b"SET", b"other:not-lucid", b"x"]);
    for i in 0..300 {
        let key = format!("lucid:cache:k{i}");
        let value = format!("value {i}");
        run(&[b"SET", key.as_bytes(), value.as_bytes()]);
    }
}

/// Every `lucid:*` key: type, value (members sorted where Redis keeps no order), `PTTL`.
fn redis_keys(url: &str) -> BTreeMap<String, (String, String, i64)> {
    let mut c = redis::Client::open(url)
        .expect("client")
        .get_connection()
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("lucid:*")
        .query(&mut c)
        .expect("KEYS");
    keys.into_iter()
        .map(|k| {
            let kind: String = redis::cmd("TYPE").arg(&k).query(&mut c).expect("TYPE");
            let read = |cmd: &mut redis::Cmd, c: &mut redis::Connection| -> Vec<Vec<u8>> {
                cmd.query(c).expect("read the value")
            };
            let value = match kind.as_str() {
                "string" => format!("{:?}", read(redis::cmd("GET").arg(&k), &mut c)),
                "list" => format!(
                    "{:?}",
                    read(redis::cmd("LRANGE").arg(&k).arg(0).arg(-1), &mut c)
                ),
                "zset" => format!(
                    "{:?}",
                    read(
                        redis::cmd("ZRANGE")
                            .arg(&k)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES"),
                        &mut c
                    )
                ),
                "set" => {
                    let mut members = read(redis::cmd("SMEMBERS").arg(&k), &mut c);
                    members.sort();
                    format!("{members:?}")
                }
                "hash" => {
                    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                        .arg(&k)
                        .query(&mut c)
                        .expect("HGETALL");
                    pairs.sort();
                    format!("{pairs:?}")
                }
                "stream" => {
                    let entries: redis::Value = redis::cmd("XRANGE")
                        .arg(&k)
                        .arg("-")
                        .arg("+")
                        .query(&mut c)
                        .expect("XRANGE");
                    format!("{entries:?}")
                }
                other => panic!("{k}: a {other} key in the test data"),
            };
            let pttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut c).expect("PTTL");
            (k, (kind, value, pttl))
        })
        .collect()
}

/// `curl` to an Elasticsearch URL; answers the JSON reply.
fn es(url: &str, method: &str, path: &str, content_type: &str, body: &[u8]) -> Value {
    let mut child = Command::new("curl")
        .args(["-fsS", "-X", method, &format!("{url}{path}")])
        .args(["-H", &format!("Content-Type: {content_type}")])
        .args(["--data-binary", "@-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("body");
    let out = child.wait_with_output().expect("curl");
    assert!(
        out.status.success(),
        "{method} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON reply")
}

/// The documents a `_bulk` recipe must split: more than one part of 10,000.
const SCRATCH_DOCS: usize = 10_050;

/// `lucid-scratch-2026.01` (10,050 documents, an alias) and `lucid-scratch-2026.02` (3
/// documents, write-blocked like a warm index).
fn seed_es(url: &str) {
    let create = |index: &str, alias: &str| {
        let body = json!({
            "settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0}},
            "mappings": {"properties": {
                "user": {"type": "keyword"}, "n": {"type": "long"},
                "at": {"type": "date"}, "note": {"type": "text"},
            }},
            "aliases": {alias: {}},
        });
        es(
            url,
            "PUT",
            &format!("/{index}"),
            "application/json",
            body.to_string().as_bytes(),
        );
    };
    let load = |index: &str, n: usize| {
        let mut bulk = Vec::new();
        for i in 0..n {
            writeln!(bulk, "{}", json!({"index": {"_id": format!("d{i}")}})).expect("write");
            let source = json!({
                "user": format!("u{}", i % 7), "n": i,
                "at": format!("2026-01-{:02}T10:00:00Z", 1 + i % 28),
                "note": format!("line {i} with \"quotes\", ünïcode and a\nnewline"),
            });
            writeln!(bulk, "{source}").expect("write");
        }
        let reply = es(
            url,
            "POST",
            &format!("/{index}/_bulk"),
            "application/x-ndjson",
            &bulk,
        );
        assert_eq!(reply["errors"], false, "{reply}");
    };
    create("lucid-scratch-2026.01", "lucid-scratch");
    load("lucid-scratch-2026.01", SCRATCH_DOCS);
    create("lucid-scratch-2026.02", "lucid-scratch-old");
    load("lucid-scratch-2026.02", 3);
    es(
        url,
        "PUT",
        "/lucid-scratch-2026.02/_settings",
        "application/json",
        br#"{"index": {"blocks.write": true}}"#,
    );
    es(url, "POST", "/_refresh", "application/json", b"");
}

/// Every document (by id), the mappings and the alias names of each index are the same on
/// both clusters.
const COMPARE_ES: &str = r#"
import json, sys, urllib.request
def req(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(base + path, data=data, method=method,
                               headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(r) as resp:
        return json.load(resp)
def docs(base, index):
    out = {}
    page = req(base, "POST", f"/{index}/_search?scroll=1m", {"size": 1000, "sort": ["_doc"]})
    while page["hits"]["hits"]:
        for h in page["hits"]["hits"]:
            out[h["_id"]] = h["_source"]
        page = req(base, "POST", "/_search/scroll", {"scroll": "1m", "scroll_id": page["_scroll_id"]})
    return out
src, dst, indices = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
total = 0
for index in indices:
    a, b = docs(src, index), docs(dst, index)
    assert a == b, f"{index}: {len(a)} documents backed up, {len(b)} restored, or they differ"
    ma = req(src, "GET", f"/{index}/_mapping")[index]["mappings"]
    mb = req(dst, "GET", f"/{index}/_mapping")[index]["mappings"]
    assert ma == mb, (index, ma, mb)
    aa = sorted(req(src, "GET", f"/{index}/_alias")[index]["aliases"])
    ab = sorted(req(dst, "GET", f"/{index}/_alias")[index]["aliases"])
    assert aa == ab, (index, aa, ab)
    total += len(a)
print(total)
"#;

// ---------------------------------------------------------------------------------------------
// docs/backup.md's recipes

/// The shell block that follows `<!-- recipe: NAME -->` in docs/backup.md.
fn recipe(name: &str) -> String {
    let path = lucid_testkit::workspace_root().join("docs/backup.md");
    let text = std::fs::read_to_string(&path).expect("docs/backup.md");
    let marker = format!("<!-- recipe: {name} -->");
    let at = text
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/backup.md has no {marker}"));
    let rest = &text[at + marker.len()..];
    let start = rest.find("```sh\n").expect("a sh block after the marker") + "```sh\n".len();
    let end = rest[start..].find("\n```").expect("the block's end");
    rest[start..start + end].to_owned()
}

/// Runs recipe `name` as it stands, under bash with `-e` and pipefail, in `dir`, with `env`;
/// answers its stdout.
fn run_recipe(name: &str, dir: &Path, env: &[(&str, String)]) -> String {
    let script = recipe(name);
    let out = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", &script])
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stderr.is_empty(),
        "recipe {name} failed:\n{script}\n--- stderr:\n{stderr}\n--- stdout:\n{stdout}"
    );
    stdout
}

fn need_tools(tools: &[&str]) {
    need_stock_tools();
    for tool in tools {
        let (found, _) = sh(&format!("command -v {tool}"));
        assert!(
            found,
            "`{tool}` is not installed: run scripts/setup.sh (apt-get install redis-tools curl jq)"
        );
    }
}

/// The backup's id and directory from a `backup now --json` report.
fn backup_dir(m: &Machine, report: &Value) -> (String, PathBuf) {
    let id = report["id"].as_str().expect("id").to_owned();
    let dir = m.backups().join(&id);
    (id, dir)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn a_backup_of_every_store_verifies_decoded_and_comes_back_with_the_stock_tools_by_the_docs() {
    need_tools(&["redis-cli", "curl", "jq", "split"]);
    let b = Backends::start();
    python(SEED_MONGO, &[&b.mongo.url()]);
    seed_redis(&b.redis.url());
    seed_es(&b.es.url());
    let mut m = machine(&b);
    let key = m.encrypt_to_new_key();
    make_tree(&m.volume("chunks"));

    // No selection: every store, under one id.
    let report = m.json(&["now"], 0);
    assert_eq!(report["outcome"], "complete", "{report}");
    for store in ["mongodb", "redis", "elasticsearch", "volumes", "lucid-db"] {
        assert_eq!(
            report["stores"][store]["outcome"], "complete",
            "{store}: {report}"
        );
    }
    let names = artifact_names(&report);
    for want in [
        "mongodb/lucid/users.bson.zst.age",
        "mongodb/lucid/users.metadata.json.zst.age",
        "mongodb/lucid/audit_logs.bson.zst.age",
        "redis/db0.resp.zst.age",
        "elasticsearch/lucid-scratch-2026.01.ndjson.zst.age",
        "elasticsearch/lucid-scratch-2026.01.meta.json.zst.age",
        "elasticsearch/lucid-scratch-2026.02.ndjson.zst.age",
        "volumes/chunks.tar.zst.age",
    ] {
        assert!(names.contains(&want.to_owned()), "{want}: {names:?}");
    }

    // The source facts.
    let mongo = &report["stores"]["mongodb"]["source"];
    assert_eq!(mongo["topology"], "standalone", "{mongo}");
    assert_eq!(mongo["database"], "lucid");
    assert!(
        !mongo["server_version"].as_str().unwrap_or("").is_empty(),
        "{mongo}"
    );
    assert_eq!(mongo["collections"]["users"]["documents"], 250, "{mongo}");
    assert_eq!(mongo["collections"]["users"]["server_count"], 250);
    assert_eq!(mongo["collections"]["audit_logs"]["documents"], 40);
    let users_indexes = mongo["collections"]["users"]["indexes"].clone();
    assert_eq!(users_indexes[0], "_id_", "{users_indexes}");
    assert!(
        users_indexes
            .as_array()
            .expect("names")
            .contains(&json!("users_email_unique"))
    );
    let source_keys = redis_keys(&b.redis.url());
    let redis_facts = &report["stores"]["redis"]["source"];
    assert_eq!(redis_facts["keys"], source_keys.len(), "{redis_facts}");
    assert_eq!(redis_facts["db"], 0);
    assert!(redis_facts["used_memory"].as_u64().unwrap_or(0) > 0);
    for kind in ["string", "hash", "list", "set", "zset", "stream"] {
        let want = source_keys.values().filter(|(k, _, _)| k == kind).count();
        assert_eq!(
            redis_facts["keys_by_type"][kind], want,
            "{kind}: {redis_facts}"
        );
    }
    let es_facts = &report["stores"]["elasticsearch"]["source"];
    assert_eq!(es_facts["distribution"], "opensearch", "{es_facts}");
    let scratch = &es_facts["indices"]["lucid-scratch-2026.01"];
    assert_eq!(scratch["documents"], SCRATCH_DOCS, "{es_facts}");
    assert_eq!(scratch["write_blocked"], false);
    assert_eq!(
        es_facts["indices"]["lucid-scratch-2026.02"]["write_blocked"],
        true
    );

    // Every artifact decodes to its end, counted against the facts.
    let key_arg = key.display().to_string();
    let (id, dir) = backup_dir(&m, &report);
    let verified = m.json(
        &["verify", &id, "--level", "decoded", "--identity", &key_arg],
        0,
    );
    assert_eq!(verified["counts_as"], "decoded", "{verified}");

    let work = tempfile::tempdir().expect("tempdir");
    let env = vec![("ID", dir.display().to_string()), ("KEY", key_arg.clone())];

    // MongoDB: the decrypt loop as the page has it, then pymongo reads the dump.
    run_recipe("mongodb-decrypt", work.path(), &env);
    let golden =
        lucid_testkit::workspace_root().join("actors/backup/formats/golden/users.metadata.json");
    python(
        CHECK_MONGO,
        &[
            &b.mongo.url(),
            &work.path().join("dump").display().to_string(),
            &golden.display().to_string(),
        ],
    );

    // Redis: redis-cli --pipe into an empty server gives the same keys, TTLs within 1 s …
    let target = lucid_testkit::redis();
    let mut redis_env = env.clone();
    redis_env.push(("REDIS_HOST", "127.0.0.1".to_owned()));
    redis_env.push(("REDIS_PORT", target.port().to_string()));
    let piped = run_recipe("redis-pipe", work.path(), &redis_env);
    assert!(
        piped.contains(&format!("errors: 0, replies: {}", source_keys.len())),
        "{piped}"
    );
    let restored = redis_keys(&target.url());
    assert_eq!(
        restored.keys().collect::<Vec<_>>(),
        source_keys.keys().collect::<Vec<_>>()
    );
    let now = redis_keys(&b.redis.url());
    for (k, (kind, value, pttl)) in &restored {
        let (want_kind, want_value, want_pttl) = &now[k];
        assert_eq!((kind, value), (want_kind, want_value), "{k}");
        if *want_pttl < 0 {
            assert_eq!(pttl, want_pttl, "{k}: persistent");
        } else {
            assert!(
                (pttl - want_pttl).abs() <= 1000,
                "{k}: {pttl} vs {want_pttl} ms"
            );
        }
    }
    // … including a held lock and an old fence: the page's next step drops and raises them.
    assert!(restored.contains_key("lucid:locks:lock:job"));
    run_recipe("redis-after-pipe", work.path(), &redis_env);
    let cleaned = redis_keys(&target.url());
    assert!(
        !cleaned.contains_key("lucid:locks:lock:job"),
        "the lock is gone"
    );
    assert!(
        !cleaned.contains_key("lucid:ratelimit:user:u1"),
        "the window is gone"
    );
    let mut c = redis::Client::open(target.url())
        .expect("client")
        .get_connection()
        .expect("connect");
    let fence: u64 = redis::cmd("GET")
        .arg("lucid:locks:fence:all")
        .query(&mut c)
        .expect("GET");
    assert_eq!(fence, 42 + 1_000_000);

    // Elasticsearch: the create bodies and the split _bulk loads into an empty server.
    let target = lucid_testkit::elasticsearch();
    let mut es_env = env.clone();
    es_env.push(("ES", target.url()));
    run_recipe("elasticsearch-bulk", work.path(), &es_env);
    let parts: Vec<usize> = (0..4)
        .map(|n| {
            work.path()
                .join(format!("lucid-scratch-2026.01.part.{n:04}"))
        })
        .filter(|p| p.exists())
        .map(|p| {
            std::io::BufReader::new(std::fs::File::open(p).expect("part"))
                .lines()
                .count()
        })
        .collect();
    assert_eq!(parts, [20_000, 100], "split on document boundaries");
    let indices: Vec<&String> = es_facts["indices"]
        .as_object()
        .expect("indices")
        .keys()
        .collect();
    let compared = python(
        COMPARE_ES,
        &[
            &b.es.url(),
            &target.url(),
            &serde_json::to_string(&indices).expect("json"),
        ],
    );
    assert_eq!(compared.trim(), (SCRATCH_DOCS + 3).to_string());
}

/// Waits until the CLI's progress line shows `artifact` being written with bytes read; answers
/// the lines seen.
fn wait_for_progress(
    lines: &std::sync::mpsc::Receiver<String>,
    artifact: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("never saw {artifact} being written: {seen:?}"));
        let writing = line.contains(&format!("writing {artifact}")) && !line.contains(" 0B read");
        seen.push(line);
        if writing {
            return seen;
        }
    }
}

#[test]
fn a_backend_down_or_killed_mid_backup_makes_it_partial_naming_it_and_the_rest_verifies() {
    let mut b = Backends::start();
    python(SEED_MONGO, &[&b.mongo.url()]);
    seed_redis(&b.redis.url());
    seed_es(&b.es.url());
    let mut m = machine(&b);
    let key = m.encrypt_to_new_key();
    let key_arg = key.display().to_string();
    make_tree(&m.volume("chunks"));

    // Redis is down before the run: its store fails, named; every other store completes.
    b.redis.stop();
    let report = m.json(&["now"], 3);
    assert_eq!(report["outcome"], "partial", "{report}");
    let redis = &report["stores"]["redis"];
    assert_eq!(redis["outcome"], "failed", "{redis}");
    assert_eq!(redis["code"], "unavailable", "{redis}");
    assert!(
        redis["message"].as_str().unwrap_or("").contains("redis"),
        "{redis}"
    );
    for store in ["mongodb", "elasticsearch", "volumes"] {
        assert_eq!(report["stores"][store]["outcome"], "complete", "{store}");
    }
    let (id, _) = backup_dir(&m, &report);
    let verified = m.json(
        &["verify", &id, "--level", "decoded", "--identity", &key_arg],
        0,
    );
    assert_eq!(verified["counts_as"], "decoded", "{verified}");
    // Only Redis selected, and down: nothing backed up, because its backend is unavailable.
    let (code, _, err) = m.cli(&["now", "--stores", "redis"]);
    assert_eq!(code, 69, "{err}");

    // Elasticsearch is killed while its biggest index is being written (each chunk slowed, so
    // the run is still there however fast the machine): that store fails naming the index,
    // MongoDB completes, and what was written verifies.
    let mut child = m
        .command(&["now", "--stores", "mongodb,elasticsearch", "--json"])
        .env("FAILPOINTS", "backup-artifact-chunk=sleep(150)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    wait_for_progress(
        &rx,
        "elasticsearch/lucid-scratch-2026.01.ndjson",
        Duration::from_secs(120),
    );
    b.es.stop();
    let out = child.wait_with_output().expect("wait");
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(out.status.code(), Some(3), "{report}");
    let search = &report["stores"]["elasticsearch"];
    assert_eq!(search["outcome"], "failed", "{search}");
    assert!(
        search["message"]
            .as_str()
            .unwrap_or("")
            .contains("index lucid-scratch-2026.01"),
        "{search}"
    );
    assert_ne!(search["code"], "", "{search}");
    assert_eq!(report["stores"]["mongodb"]["outcome"], "complete");
    let names = artifact_names(&report);
    assert!(
        !names.iter().any(|n| n.contains("lucid-scratch-2026.01")),
        "no half artifact: {names:?}"
    );
    assert!(names.contains(&"mongodb/lucid/users.bson.zst.age".to_owned()));
    let (id, _) = backup_dir(&m, &report);
    let verified = m.json(
        &["verify", &id, "--level", "decoded", "--identity", &key_arg],
        0,
    );
    assert_eq!(verified["passed"], true, "{verified}");

    // What the partial backup holds complete restores (into another database here).
    let restored = m.json(
        &[
            "restore",
            &id,
            "--identity",
            &key_arg,
            "--stores",
            "mongodb",
            "--to-db",
            "after_partial",
        ],
        0,
    );
    let stores: Vec<&str> = restored["restored"]
        .as_array()
        .expect("restored")
        .iter()
        .map(|r| r["store"].as_str().expect("store"))
        .collect();
    assert!(
        !stores.is_empty() && stores.iter().all(|s| *s == "mongodb"),
        "{restored}"
    );
    let counted = python(
        "import sys, pymongo\nprint(pymongo.MongoClient(sys.argv[1]).after_partial.users.count_documents({}))",
        &[&b.mongo.url()],
    );
    assert_eq!(counted.trim(), "250");
}

/// Rewrites artifact `name` of backup `dir` (unencrypted zstd) with `change` applied to its
/// plain bytes, and the manifest's size and SHA-256 to match: only a decoder can tell. The
/// stock `zstd` and `sha256sum` do the work.
fn tamper(dir: &Path, name: &str, change: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let file = dir.join(name);
    let run = |args: &[&str], input: &[u8]| -> Vec<u8> {
        let mut child = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().expect("wait");
        feeder.join().expect("feeder").expect("write");
        assert!(out.status.success(), "{args:?}");
        out.stdout
    };
    let plain = run(
        &["zstd", "-d", "-c"],
        &std::fs::read(&file).expect("artifact"),
    );
    let stored = run(&["zstd", "-q", "-3", "-c"], &change(plain));
    std::fs::write(&file, &stored).expect("write");
    let sha = String::from_utf8(run(&["sha256sum"], &stored)).expect("utf-8");
    let sha = sha.split_whitespace().next().expect("digest").to_owned();
    let manifest_path = dir.join("manifest.json");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("json");
    for store in manifest["stores"]
        .as_object_mut()
        .expect("stores")
        .values_mut()
    {
        for a in store["artifacts"].as_array_mut().into_iter().flatten() {
            if a["name"] == name {
                a["sha256"] = json!(sha);
                a["bytes_stored"] = json!(stored.len());
            }
        }
    }
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).expect("json"),
    )
    .expect("write");
}

/// A `.bson` file's bytes without its last document.
fn without_last_document(bytes: Vec<u8>) -> Vec<u8> {
    let mut at = 0;
    let mut last = 0;
    while at + 4 <= bytes.len() {
        let len = i32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        last = at;
        at += usize::try_from(len).expect("a document length");
    }
    bytes[..last].to_vec()
}

#[test]
fn one_collection_or_one_index_alone_and_decoders_catch_what_checksums_cannot() {
    let b = Backends::start();
    python(SEED_MONGO, &[&b.mongo.url()]);
    seed_redis(&b.redis.url());
    seed_es(&b.es.url());
    // Unencrypted, so the test can re-encode an artifact; the stores at once.
    let mut m = machine(&b);
    m.set("LUCID_DB__BACKUP__PARALLEL_STORES", "true");

    let report = m.json(
        &[
            "now",
            "--stores",
            "mongodb:users,redis,elasticsearch:lucid-scratch-2026.02",
        ],
        0,
    );
    assert_eq!(report["outcome"], "complete", "{report}");
    let names: Vec<String> = artifact_names(&report)
        .into_iter()
        .filter(|n| !n.starts_with("lucid-db/"))
        .collect();
    assert_eq!(
        names,
        [
            "elasticsearch/lucid-scratch-2026.02.meta.json.zst",
            "elasticsearch/lucid-scratch-2026.02.ndjson.zst",
            "mongodb/lucid/users.bson.zst",
            "mongodb/lucid/users.metadata.json.zst",
            "redis/db0.resp.zst",
        ]
    );
    assert!(report["stores"].get("volumes").is_none(), "{report}");
    assert_eq!(
        report["stores"]["elasticsearch"]["source"]["indices"]["lucid-scratch-2026.02"],
        json!({"documents": 3, "server_count": 3, "write_blocked": true})
    );
    let (id, dir) = backup_dir(&m, &report);
    assert_eq!(
        m.json(&["verify", &id, "--level", "decoded"], 0)["passed"],
        true
    );

    // Each artifact cut or changed, re-compressed, its checksum made to match: checksummed
    // passes, decoded finds it (exit 65) naming the artifact and where its bytes go wrong.
    let originals: BTreeMap<&str, Vec<u8>> = [
        "mongodb/lucid/users.bson.zst",
        "redis/db0.resp.zst",
        "elasticsearch/lucid-scratch-2026.02.ndjson.zst",
    ]
    .into_iter()
    .map(|n| (n, std::fs::read(dir.join(n)).expect("artifact")))
    .collect();
    let manifest = std::fs::read(dir.join("manifest.json")).expect("manifest");
    type Change = Box<dyn FnOnce(Vec<u8>) -> Vec<u8>>;
    let cases: Vec<(&str, Change, &str, &str)> = vec![
        (
            "mongodb/lucid/users.bson.zst",
            Box::new(|b| b[..b.len() - 10].to_vec()),
            "bad_format",
            "document 250",
        ),
        (
            "mongodb/lucid/users.bson.zst",
            // The last document dropped whole: it decodes, one short of the facts.
            Box::new(without_last_document),
            "count_mismatch",
            "holds 249 documents",
        ),
        (
            "redis/db0.resp.zst",
            Box::new(|b| b[..b.len() - 40].to_vec()),
            "bad_format",
            "command",
        ),
        (
            "elasticsearch/lucid-scratch-2026.02.ndjson.zst",
            Box::new(|b| {
                String::from_utf8_lossy(&b)
                    .replacen("\"user\":", "\"user\" ", 1)
                    .into_bytes()
            }),
            "bad_format",
            "line 2",
        ),
    ];
    for (artifact, change, code, needle) in cases {
        tamper(&dir, artifact, change);
        assert_eq!(m.json(&["verify", &id], 0)["passed"], true, "{artifact}");
        let verified = m.json(&["verify", &id, "--level", "decoded"], 65);
        let failure = &verified["first_failure"];
        assert_eq!(failure["artifact"], artifact, "{verified}");
        assert_eq!(failure["code"], code, "{verified}");
        assert!(
            failure["message"].as_str().unwrap_or("").contains(needle),
            "{artifact}: {failure}"
        );
        std::fs::write(dir.join(artifact), &originals[artifact]).expect("restore");
        std::fs::write(dir.join("manifest.json"), &manifest).expect("restore");
    }
    assert_eq!(
        m.json(&["verify", &id, "--level", "decoded"], 0)["passed"],
        true
    );
}

mod drill;
mod restore;
