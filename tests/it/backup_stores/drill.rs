//! Drills of MongoDB, Redis and Elasticsearch against real servers: a good backup of every
//! store passes with each store's restore time, a damaged database artifact fails naming it,
//! and neither leaves a scratch database, a key in the drill's Redis database or a `drill-*`
//! index behind; a Redis whose `maxmemory` leaves no room for the backup is not drilled.

use super::restore::{redis_conn, snapshot_es, snapshot_mongo};
use super::*;

/// The drill's Redis database (`backup.drill.redis_db`'s default).
const DRILL_DB: u32 = 15;

const MONGO_DATABASES: &str = r#"
import sys, json, pymongo
print(json.dumps(pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000).list_database_names()))
"#;

/// What the drills may have left: scratch databases, keys in the drill's Redis database,
/// `drill-*` indices.
fn scratch_targets(b: &Backends) -> Vec<String> {
    let mut left: Vec<String> =
        serde_json::from_str::<Vec<String>>(&python(MONGO_DATABASES, &[&b.mongo.url()]))
            .expect("database names")
            .into_iter()
            .filter(|n| n.contains("_drill_"))
            .collect();
    let mut c = redis_conn(&b.redis.url());
    let keys: u64 = redis::cmd("SELECT")
        .arg(DRILL_DB)
        .query::<()>(&mut c)
        .and_then(|()| redis::cmd("DBSIZE").query(&mut c))
        .expect("DBSIZE");
    if keys > 0 {
        left.push(format!("{keys} keys in redis db {DRILL_DB}"));
    }
    let indices = es(
        &b.es.url(),
        "GET",
        "/drill-*/_settings?allow_no_indices=true",
        "application/json",
        b"",
    );
    left.extend(indices.as_object().expect("indices").keys().cloned());
    left
}

/// Whether the server reports a validator created straight through the driver (prints
/// `True` or `False`); the probe collection is dropped again.
const DRIVER_VALIDATOR: &str = r#"
import sys, pymongo
db = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000)["lucid_probe_test"]
db.drop_collection("v")
db.create_collection("v", validator={"$jsonSchema": {"bsonType": "object"}})
kept = "validator" in (db.list_collections(filter={"name": "v"}).next().get("options") or {})
db.client.drop_database("lucid_probe_test")
print(kept)
"#;

fn seeded() -> (Backends, Machine, String, PathBuf) {
    let b = Backends::start();
    python(SEED_MONGO, &[&b.mongo.url()]);
    seed_redis(&b.redis.url());
    seed_es(&b.es.url());
    let m = machine(&b);
    let report = m.json(&["now"], 0);
    assert_eq!(report["outcome"], "complete", "{report}");
    let (id, dir) = backup_dir(&m, &report);
    (b, m, id, dir)
}

#[test]
fn a_drill_of_every_store_passes_timing_each_and_leaves_no_scratch_target() {
    let (b, m, id, _) = seeded();
    let mongo_before = snapshot_mongo(&b.mongo.url(), "lucid");
    let redis_before = redis_keys(&b.redis.url());
    let es_before = snapshot_es(&b.es.url(), "");

    // What a killed drill would have left: the next drill removes it by name.
    python(
        r#"
import sys, pymongo
pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000)["lucid_drill_dead"]["users"].insert_one({"x": 1})
"#,
        &[&b.mongo.url()],
    );
    let mut c = redis_conn(&b.redis.url());
    redis::pipe()
        .cmd("SELECT")
        .arg(DRILL_DB)
        .cmd("SET")
        .arg("lucid:left")
        .arg("1")
        .query::<()>(&mut c)
        .expect("SET");
    es(
        &b.es.url(),
        "PUT",
        "/drill-dead-lucid-scratch-2026.01",
        "application/json",
        b"{}",
    );
    assert_eq!(scratch_targets(&b).len(), 3, "{:?}", scratch_targets(&b));

    let report = m.json(&["verify", &id, "--level", "drilled"], 0);
    assert_eq!(report["passed"], true, "{report}");
    assert_eq!(report["counts_as"], "drilled", "{report}");
    let stores = &report["stores"];
    for store in ["mongodb", "redis", "elasticsearch", "volumes"] {
        assert_eq!(stores[store]["passed"], true, "{store}: {report}");
        assert!(stores[store]["restore_ms"].is_u64(), "{store}: {report}");
    }
    // users (250) and audit_logs; both indices (10,050 and 3); the restorable keys.
    assert!(
        stores["mongodb"]["restored"].as_u64().expect("restored") > 250,
        "{report}"
    );
    assert_eq!(
        stores["elasticsearch"]["restored"],
        json!(SCRATCH_DOCS as u64 + 3),
        "{report}"
    );
    assert!(
        stores["redis"]["restored"].as_u64().expect("restored") > 0,
        "{report}"
    );
    // Each database store's items compared one by one: every Redis key of the few the
    // backup holds that a restore writes, and documents of each collection and index.
    for store in ["mongodb", "redis", "elasticsearch"] {
        assert!(
            stores[store]["compared"].as_u64().expect("compared") > 0,
            "{store}: {report}"
        );
    }
    // Users (250, all sampled up to 128) and audit logs; both indices: sampled, not all.
    assert!(
        stores["mongodb"]["compared"].as_u64().expect("compared") > 128,
        "{report}"
    );
    assert!(
        stores["elasticsearch"]["compared"]
            .as_u64()
            .expect("compared")
            < stores["elasticsearch"]["restored"]
                .as_u64()
                .expect("restored"),
        "{report}"
    );
    // Index specs and validators (MongoDB), mappings and settings (Elasticsearch) of every
    // scratch target compared with the metadata artifacts.
    for store in ["mongodb", "elasticsearch"] {
        assert!(
            stores[store]["specs_compared"]
                .as_u64()
                .expect("specs_compared")
                > 0,
            "{store}: {report}"
        );
    }
    // Both indices: their mappings and their settings.
    assert_eq!(
        stores["elasticsearch"]["specs_compared"],
        json!(4),
        "{report}"
    );
    // What the server does not keep is named, never passed: the validators where a validator
    // created straight through the driver is not reported either (nx-27017), compared where
    // it is (a real MongoDB).
    let keeps_validators = python(DRIVER_VALIDATOR, &[&b.mongo.url()]).trim() == "True";
    let not_comparable = stores["mongodb"]["not_comparable"].to_string();
    assert_eq!(
        !keeps_validators,
        not_comparable.contains("validators: the server keeps none"),
        "{report}"
    );
    if !keeps_validators {
        // Each reason lists the collections it concerns.
        assert!(not_comparable.contains("users"), "{report}");
        let shown = m.json(&["show", &id], 0);
        assert_eq!(
            shown["verify"]["levels"]["drilled"]["stores"]["mongodb"]["not_comparable"],
            stores["mongodb"]["not_comparable"],
            "{shown}"
        );
        let (code, text, err) = m.cli(&["show", &id]);
        assert_eq!(code, 0, "{err}");
        assert!(
            text.contains("mongodb: not comparable on this server: validators"),
            "{text}"
        );
    }
    assert_eq!(scratch_targets(&b), Vec::<String>::new());

    // The live data is as it was.
    assert_eq!(snapshot_mongo(&b.mongo.url(), "lucid"), mongo_before);
    // Keys with an expiry may have expired meanwhile (the seed's shortest lives 60 s); none
    // came or went otherwise.
    let redis_after = redis_keys(&b.redis.url());
    assert!(
        redis_after.keys().all(|k| redis_before.contains_key(k)),
        "{redis_after:?}"
    );
    let lasting: Vec<&String> = redis_before
        .iter()
        .filter(|(_, (_, _, pttl))| *pttl < 0)
        .map(|(k, _)| k)
        .collect();
    assert!(!lasting.is_empty());
    for key in lasting {
        assert!(redis_after.contains_key(key), "{key} is gone");
    }
    assert_eq!(snapshot_es(&b.es.url(), ""), es_before);
}

#[test]
fn a_damaged_database_artifact_fails_the_drill_naming_it_and_leaves_no_scratch_target() {
    let (b, m, id, dir) = seeded();
    // A document short, with the checksum to match: only decoding it can tell.
    tamper(&dir, "mongodb/lucid/users.bson.zst", without_last_document);
    let (code, out, err) = m.cli(&["verify", &id, "--level", "drilled"]);
    assert_eq!(code, 65, "{out}{err}");
    assert!(out.contains("mongodb/lucid/users.bson.zst"), "{out}");
    let report = m.json(&["show", &id], 0);
    let drilled = &report["verify"]["levels"]["drilled"];
    assert_eq!(drilled["passed"], false, "{report}");
    assert_eq!(drilled["stores"]["mongodb"]["passed"], false, "{report}");
    // The other stores were drilled all the same.
    assert_eq!(drilled["stores"]["redis"]["passed"], true, "{report}");
    assert_eq!(
        drilled["stores"]["elasticsearch"]["passed"], true,
        "{report}"
    );
    assert_eq!(scratch_targets(&b), Vec::<String>::new());
}

#[test]
fn a_redis_without_room_for_the_backup_beside_its_live_keys_is_not_drilled() {
    let (b, m, id, _) = seeded();
    let mut c = redis_conn(&b.redis.url());
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut c)
        .expect("INFO");
    let used: u64 = info
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("used_memory:"))
        .and_then(|v| v.parse().ok())
        .expect("used_memory");
    // Room for a few more keys, not for the backup's used_memory again.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + (64 << 10))
        .query::<()>(&mut c)
        .expect("CONFIG SET");
    let keys_before = redis_keys(&b.redis.url()).len();

    let (code, out, err) = m.cli(&["verify", &id, "--level", "drilled"]);
    assert_eq!(code, 69, "{out}{err}");
    assert!(format!("{out}{err}").contains("maxmemory"), "{out}{err}");
    assert_eq!(redis_keys(&b.redis.url()).len(), keys_before);
    assert_eq!(scratch_targets(&b), Vec::<String>::new());
    // Refused, not failed: nothing recorded about the backup.
    let shown = m.json(&["show", &id], 0);
    assert!(shown["verify"]["levels"]["drilled"].is_null(), "{shown}");
}

#[test]
fn a_key_that_differs_from_the_backup_after_the_restore_fails_the_drill_naming_it() {
    let (b, m, id, _) = seeded();
    // The drill pauses once Redis's import is done; the test changes the restored keys in the
    // drill's database meanwhile, as a restore that wrote something else would have.
    let child = m
        .command(&["verify", &id, "--level", "drilled"])
        .env("FAILPOINTS", "backup-drill-redis-imported=sleep(8000)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut c = redis_conn(&b.redis.url());
    redis::cmd("SELECT")
        .arg(DRILL_DB)
        .query::<()>(&mut c)
        .expect("SELECT");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !redis::cmd("EXISTS")
        .arg("lucid:test:list")
        .query::<bool>(&mut c)
        .expect("EXISTS")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the key was not restored"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every restored key changed: whichever the drill samples differs (the first of the
    // artifact, always sampled, is restored first).
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).expect("KEYS");
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut c).expect("TYPE");
        let mut cmd = match kind.as_str() {
            "string" => redis::cmd("APPEND"),
            "list" => redis::cmd("RPUSH"),
            "set" => redis::cmd("SADD"),
            "zset" => redis::cmd("ZADD"),
            "hash" => redis::cmd("HSET"),
            "stream" => redis::cmd("XADD"),
            _ => continue,
        };
        cmd.arg(&key);
        match kind.as_str() {
            "zset" => cmd.arg(7).arg("changed"),
            "hash" => cmd.arg("changed").arg("1"),
            "stream" => cmd.arg("*").arg("changed").arg("1"),
            _ => cmd.arg("changed"),
        };
        // A key that expired meanwhile is not there to change.
        let _ = cmd.query::<redis::Value>(&mut c);
    }
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(65),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("redis/db0.resp.zst")
            && stdout.contains("key lucid:")
            && stdout.contains("its value differs from the backup's"),
        "{stdout}"
    );
    let report = m.json(&["show", &id], 0);
    let drilled = &report["verify"]["levels"]["drilled"];
    assert_eq!(drilled["stores"]["redis"]["passed"], false, "{report}");
    assert_eq!(drilled["stores"]["mongodb"]["passed"], true, "{report}");
    assert_eq!(scratch_targets(&b), Vec::<String>::new());
}

/// Adds an index to every collection of the drill's scratch database that has one of its own
/// (prints the collections changed, once there are any).
const EXTRA_INDEX: &str = r#"
import sys, time, pymongo
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000)
deadline = time.time() + 60
while time.time() < deadline:
    for name in client.list_database_names():
        if "_drill_" not in name:
            continue
        changed = []
        for coll in client[name].list_collection_names():
            if len(list(client[name][coll].list_indexes())) > 1:
                client[name][coll].create_index([("drill_extra", 1)], name="drill_extra_1")
                changed.append(coll)
        if changed:
            print(",".join(changed))
            sys.exit(0)
    time.sleep(0.05)
sys.exit("no scratch collection with an index appeared")
"#;

#[test]
fn a_restored_index_that_differs_from_the_metadata_fails_the_drill_naming_it() {
    let (b, m, id, _) = seeded();
    // The drill pauses once the first collection is imported; the test adds an index to it
    // in the scratch database meanwhile, as a restore that made an index the backup does not
    // list would have. (Changing the artifact would not do: the restore recreates what it
    // lists.)
    let child = m
        .command(&["verify", &id, "--level", "drilled"])
        .env("FAILPOINTS", "backup-drill-mongodb-imported=1*sleep(8000)")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let changed = python(EXTRA_INDEX, &[&b.mongo.url()]);
    let collection = changed
        .trim()
        .split(',')
        .next()
        .expect("a collection")
        .to_owned();
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(65),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata = format!("mongodb/lucid/{collection}.metadata.json.zst");
    assert!(
        stdout.lines().any(|l| l.starts_with("FAILED")
            && l.contains(&metadata)
            && l.contains(&format!(".{collection} differs from the backup's metadata"))
            // By its key: nx-27017 names it after the collection, not as it was asked.
            && l.contains("on { \"drill_extra\": 1 }: not in the backup's metadata")),
        "{stdout}"
    );
    let report = m.json(&["show", &id], 0);
    let drilled = &report["verify"]["levels"]["drilled"];
    assert_eq!(drilled["passed"], false, "{report}");
    assert_eq!(drilled["stores"]["mongodb"]["passed"], false, "{report}");
    assert_eq!(
        drilled["artifacts"][&metadata]["code"], "drill_mismatch",
        "{report}"
    );
    // The data artifact's documents compared all the same, and the other stores passed.
    assert_eq!(
        drilled["artifacts"][format!("mongodb/lucid/{collection}.bson.zst")]["outcome"],
        "ok",
        "{report}"
    );
    assert_eq!(
        drilled["stores"]["elasticsearch"]["passed"], true,
        "{report}"
    );
    assert_eq!(scratch_targets(&b), Vec::<String>::new());
}
