//! Where the actors run: each store actor on a named thread of its own, which ends with the
//! arbiter that started it; every handle called from another arbiter, as the HTTP workers
//! (#14) will; the actors' events reaching a test's capture across threads; and the fallback
//! to the caller's arbiter when no thread can be had.
//!
//! The thread checks read `/proc/self/task`, so they count every thread of the process: they
//! rely on nextest running each test in a process of its own.

use std::path::Path;
use std::time::{Duration, Instant};

use actix::prelude::*;
use lucid_actors::mongo::bson::doc;
use lucid_actors::mongo::{Collection, FindOne, InsertOne, MongoHandle};
use lucid_actors::redis::{Key, RedisHandle};
use lucid_actors::search::{Entity, GetDoc, IndexDoc, SearchHandle};
use lucid_actors::volume::{ExportVolume, InspectVolume, VolumeHandle, VolumeName, WriteFile};
use lucid_actors::{Config, Handles, Roles, events};
use lucid_testkit::{elasticsearch, free_port, mongo, redis};
use serde_json::json;

use crate::common::fast_config;

/// The names `start` gives the store actors' threads.
const STORE_THREADS: [&str; 4] = ["lucid-redis", "lucid-mongo", "lucid-search", "lucid-volume"];

/// The kernel's names of this process's threads, as `top -H` shows them.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| {
            let comm = task.ok()?.path().join("comm");
            Some(std::fs::read_to_string(comm).ok()?.trim_end().to_owned())
        })
        .collect()
}

fn count_named(name: &str) -> usize {
    thread_names().iter().filter(|n| *n == name).count()
}

async fn wait_until(limit: Duration, what: &str, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every store enabled at a port where nothing listens (the actors start and back off), the
/// data root inside `dir`.
fn unreachable_config(dir: &Path) -> Config {
    let mut c = fast_config(&format!("redis://127.0.0.1:{}/0", free_port()));
    c.mongodb.enabled = true;
    c.mongodb.url = format!("mongodb://127.0.0.1:{}", free_port()).into();
    c.elasticsearch.enabled = true;
    c.elasticsearch.url = format!("http://127.0.0.1:{}", free_port()).into();
    c.volumes.root = dir.join("volumes");
    c.state_dir = dir.join("state");
    std::fs::create_dir(&c.volumes.root).expect("mkdir root");
    c
}

/// One thread each, under its own name, and all four gone once the arbiter that started them
/// has ended — as the actors used to end with it when they ran there.
#[actix_rt::test]
async fn each_store_actor_runs_on_a_named_thread_that_ends_with_its_starter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = unreachable_config(dir.path());
    for name in STORE_THREADS {
        assert_eq!(count_named(name), 0, "{name} before start");
    }

    // The actors are started from an arbiter of their own, which the test can end.
    let starter = Arbiter::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    starter.spawn_fn(move || {
        let _ = tx.send(lucid_actors::start(&cfg, Roles::DAEMON));
    });
    let handles = rx.await.expect("started");
    for name in STORE_THREADS {
        assert_eq!(count_named(name), 1, "{name}: {:?}", thread_names());
    }
    handles
        .heartbeat(Duration::from_secs(5))
        .await
        .expect("every actor answers from its thread");

    starter.stop();
    starter.join().expect("the starter ends");
    wait_until(Duration::from_secs(5), "the store threads to end", || {
        STORE_THREADS.iter().all(|name| count_named(name) == 0)
    })
    .await;
    let late = handles.heartbeat(Duration::from_millis(500)).await;
    assert!(late.is_err(), "the actors ended with their threads");
}

/// What the worker saw, sent back to the test's thread to be checked there.
#[derive(Debug)]
struct WorkerReport {
    thread: std::thread::ThreadId,
    redis_value: Option<u32>,
    redis_exported: Vec<String>,
    mongo_found: Option<String>,
    mongo_exported: usize,
    search_found: Option<String>,
    search_exported: Vec<String>,
    volume_files: u64,
    volume_tar: Vec<u8>,
}

fn all_up(handles: &Handles) -> bool {
    handles.registry.readiness().is_ok()
        && handles.registry.snapshot().iter().all(|s| s.is_up())
        && handles
            .mongo
            .as_ref()
            .is_some_and(|m| m.last_bootstrap().is_some())
        && handles
            .search
            .as_ref()
            .is_some_and(|s| s.last_bootstrap().is_some())
}

/// Every handle is `Send + Sync + Clone`, and answers from another arbiter — one
/// request/response call each and one export read to its end — as an HTTP worker will call it.
#[actix_rt::test]
async fn every_handle_answers_and_exports_from_another_arbiter() {
    fn callable_from_any_thread<T: Send + Sync + Clone + 'static>() {}
    callable_from_any_thread::<Handles>();
    callable_from_any_thread::<RedisHandle>();
    callable_from_any_thread::<MongoHandle>();
    callable_from_any_thread::<SearchHandle>();
    callable_from_any_thread::<VolumeHandle>();

    let (redis_server, mongo_server, search_server) = (redis(), mongo(), elasticsearch());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = unreachable_config(dir.path());
    cfg.redis.url = redis_server.url().into();
    cfg.mongodb.url = mongo_server.url().into();
    cfg.elasticsearch.url = search_server.url().into();
    let handles = lucid_actors::start(&cfg, Roles::DAEMON);
    wait_until(
        Duration::from_secs(20),
        "every store up and bootstrapped",
        || all_up(&handles),
    )
    .await;

    // The worker runs a `!Send` task on its own loop, as actix-web's workers run handlers.
    let worker = Arbiter::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let on_worker = handles.clone();
    worker.spawn_fn(move || {
        actix_rt::spawn(async move {
            let _ = tx.send(calls_and_exports(on_worker).await);
        });
    });
    let report = rx.await.expect("the worker answered");
    worker.stop();
    worker.join().expect("worker");

    assert_ne!(report.thread, std::thread::current().id());
    assert_eq!(report.redis_value, Some(42));
    assert_eq!(report.redis_exported, ["lucid:cache:worker:1"]);
    assert_eq!(report.mongo_found.as_deref(), Some("worker@example.com"));
    assert_eq!(report.mongo_exported, 1);
    assert_eq!(report.search_found.as_deref(), Some("w1"));
    assert_eq!(report.search_exported, ["w1"]);
    assert_eq!(report.volume_files, 1);
    // A tar stream holds its entries' names in the clear.
    let tar = String::from_utf8_lossy(&report.volume_tar);
    assert!(tar.contains("from-worker.txt"), "tar without the file");
    assert!(tar.contains("written on another arbiter"));

    assert!(
        handles.shutdown(Duration::from_secs(5)).await.is_empty(),
        "actors must quit"
    );
}

/// The worker's side of [`every_handle_answers_and_exports_from_another_arbiter`].
async fn calls_and_exports(h: Handles) -> WorkerReport {
    let thread = std::thread::current().id();

    let r = h.redis.as_ref().expect("redis");
    let key = Key::new("cache", "worker", "1").expect("key");
    r.cache_set(&key, &42u32, None).await.expect("cache set");
    let redis_value = r.cache_get::<u32>(&key).await.expect("cache get");
    let mut redis_exported: Vec<String> = r
        .export_all()
        .await
        .expect("redis export")
        .into_iter()
        .map(|k| k.key)
        .collect();
    redis_exported.sort();

    let m = h.mongo.as_ref().expect("mongodb");
    m.call(InsertOne {
        collection: Collection::Users,
        document: doc! {
            "user_id": "worker",
            "email": "worker@example.com",
            "role": "user",
            "status": "active",
            "created_at": lucid_actors::mongo::bson::DateTime::now(),
        },
    })
    .await
    .expect("insert");
    let mongo_found = m
        .call(FindOne {
            collection: Collection::Users,
            filter: doc! {"user_id": "worker"},
            projection: None,
        })
        .await
        .expect("find")
        .and_then(|d| d.get_str("email").ok().map(str::to_owned));
    let (_, mut docs) = m.export(Collection::Users).await.expect("mongo export");
    let mut mongo_exported = 0;
    while let Some(d) = docs.next().await {
        d.expect("exported document");
        mongo_exported += 1;
    }

    let s = h.search.as_ref().expect("elasticsearch");
    let indexed = s
        .call(IndexDoc {
            entity: Entity::Sessions,
            id: Some("w1".into()),
            source: json!({
                "session_id": "w1",
                "user_id": "worker",
                "status": "active",
                "started_at": chrono::Utc::now().to_rfc3339(),
            }),
            refresh: true,
        })
        .await
        .expect("index");
    let search_found = s
        .call(GetDoc {
            entity: Entity::Sessions,
            id: "w1".into(),
            hint: None,
        })
        .await
        .expect("get")
        .map(|hit| hit.id);
    let (_, mut lines) = s.export(&indexed.index).await.expect("search export");
    let mut search_exported = Vec::new();
    while let Some(doc) = lines.next().await {
        search_exported.push(doc.expect("exported document").id);
    }

    let v = h.volumes.as_ref().expect("volumes");
    let logs = VolumeName::new("logs").expect("name");
    v.call(WriteFile {
        name: logs.clone(),
        path: "from-worker.txt".into(),
        data: b"written on another arbiter".to_vec(),
    })
    .await
    .expect("write");
    let volume_files = v
        .call(InspectVolume { name: logs.clone() })
        .await
        .expect("inspect")
        .usage
        .map(|u| u.tally.files)
        .unwrap_or_default();
    let mut tar = v.call(ExportVolume { name: logs }).await.expect("export");
    let mut volume_tar = Vec::new();
    while let Some(chunk) = tar.next().await {
        volume_tar.extend(chunk.expect("tar chunk"));
    }

    WorkerReport {
        thread,
        redis_value,
        redis_exported,
        mongo_found,
        mongo_exported,
        search_found,
        search_exported,
        volume_files,
        volume_tar,
    }
}

/// `backend.up` fires on the Redis actor's own thread, and the capture the test opened before
/// `start` records it all the same; so is `volume.created`, which the volume actor's start-up
/// fires on its thread's blocking pool.
#[actix_rt::test]
async fn events_fired_on_the_actors_threads_reach_the_tests_capture() {
    let server = redis();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = unreachable_config(dir.path());
    cfg.redis.url = server.url().into();
    cfg.mongodb.enabled = false;
    cfg.elasticsearch.enabled = false;
    let cap = events::capture();
    let handles = lucid_actors::start(&cfg, Roles::DAEMON);
    assert_eq!(count_named("lucid-redis"), 1);
    wait_until(Duration::from_secs(5), "backend.up in the capture", || {
        !cap.named("backend.up").is_empty()
    })
    .await;
    let up = cap.named("backend.up");
    assert_eq!(up[0].field("backend"), Some("redis"));
    assert_eq!(up[0].field("attempt"), Some("1"));

    // The default volumes are created by the volume actor's first (blocking) job.
    let v = handles.volumes.as_ref().expect("volumes");
    v.call(lucid_actors::volume::ListVolumes)
        .await
        .expect("list");
    let created: Vec<String> = cap
        .named("volume.created")
        .iter()
        .filter_map(|e| e.field("volume").map(str::to_owned))
        .collect();
    assert_eq!(created.len(), lucid_actors::volume::DEFAULT_VOLUMES.len());
    assert!(handles.shutdown(Duration::from_secs(5)).await.is_empty());
}

/// When the OS refuses a thread, the actors run on the caller's arbiter, as they used to, and
/// still answer.
#[actix_rt::test]
async fn without_a_thread_of_their_own_the_actors_run_on_the_callers_arbiter() {
    let scenario = fail::FailScenario::setup();
    fail::cfg("actor-thread-spawn", "return").expect("fail point");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = unreachable_config(dir.path());
    let handles = lucid_actors::start(&cfg, Roles::DAEMON);
    for name in STORE_THREADS {
        assert_eq!(count_named(name), 0, "{name}: {:?}", thread_names());
    }
    handles
        .heartbeat(Duration::from_secs(5))
        .await
        .expect("every actor answers");
    let list = handles
        .volumes
        .as_ref()
        .expect("volumes")
        .call(lucid_actors::volume::ListVolumes)
        .await
        .expect("list");
    assert_eq!(list.len(), lucid_actors::volume::DEFAULT_VOLUMES.len());
    assert!(handles.shutdown(Duration::from_secs(5)).await.is_empty());
    fail::remove("actor-thread-spawn");
    scenario.teardown();
}
