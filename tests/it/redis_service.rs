//! The Redis service through the actor, against a real redis-server: cache, sessions, rate
//! limits, locks, pub/sub, export/import, naming, bad input and faults. The server itself is
//! inspected with a plain driver connection (PTTL, TYPE, SCAN), never through the actor.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::join_all;
use lucid_actors::config::DownPolicy;
use lucid_actors::events;
use lucid_actors::redis::{
    ImportOptions, ImportTarget, Key, KeyKind, PubSubMessage, RateSubject, RedisError, RedisHandle,
    Topic,
};
use lucid_actors::transfer::{Existing, Skip};
use lucid_actors::{CallError, Config, Handles, Roles};
use lucid_testkit::{Server, free_port, redis};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::common::{DEADLINE, SLACK, at_once, fast_config as config};

/// The actors on a fresh server, once Redis is up, and a plain connection for inspection.
async fn start(
    server: &Server,
    tweak: impl FnOnce(&mut Config),
) -> (Handles, RedisHandle, redis::aio::MultiplexedConnection) {
    let mut cfg = config(&server.url());
    tweak(&mut cfg);
    let handles = lucid_actors::start(&cfg, Roles::SIBLING);
    let redis_h = handles.redis.clone().expect("redis enabled");
    wait_until(Duration::from_secs(5), "redis up", || {
        handles.registry.readiness().is_ok()
    })
    .await;
    let raw = redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("inspection connection");
    (handles, redis_h, raw)
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

/// Redis's clock (`TIME`) in milliseconds, as the rate-limit script reads it.
async fn server_ms(raw: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(raw).await.expect("TIME");
    secs * 1000 + micros / 1000
}

/// Checks `subject` against `limit` per `window` until a request is admitted (within a
/// deadline), holding every decision to the window's `edge` on the server's clock — the
/// clock the script decides by. Each check is bracketed by two readings of that clock (Redis
/// runs one command at a time, so the script's reading lies between them): a refusal must
/// come before the edge and point `retry_after` at it, an admission must come at or after
/// it, and a refusal adds nothing to the window (`key` holds none but the `admitted`
/// members). Answers how many refusals there were.
async fn check_until_admitted(
    r: &RedisHandle,
    raw: &mut redis::aio::MultiplexedConnection,
    (subject, limit, window): (RateSubject, u32, Duration),
    edge: u64,
    (key, admitted): (&str, &[String]),
) -> u32 {
    let deadline = Instant::now() + window + SLACK;
    let mut refusals = 0;
    loop {
        let before = server_ms(raw).await;
        let d = r
            .check_rate_limit(subject.clone(), limit, window)
            .await
            .expect("check");
        let after = server_ms(raw).await;
        if d.allowed {
            assert!(
                after >= edge,
                "admitted in {before}..={after} ms, before the edge at {edge} ms: {d:?}"
            );
            return refusals;
        }
        assert!(
            before < edge,
            "refused in {before}..={after} ms, at or after the edge at {edge} ms: {d:?}"
        );
        let retry = d.retry_after.as_millis() as u64;
        assert!(
            (edge.saturating_sub(after).max(1)..=edge - before).contains(&retry),
            "retry_after {retry} ms does not point at the edge ({edge} ms) from {before}..={after} ms"
        );
        assert_eq!(d.remaining, 0);
        let held: Vec<String> = raw.zrange(key, 0, -1).await.expect("ZRANGE");
        assert!(
            held.iter().all(|m| admitted.contains(m)),
            "a refusal was added to the window: {held:?}"
        );
        refusals += 1;
        assert!(
            Instant::now() < deadline,
            "still refused {refusals} times, past the edge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pttl(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    raw.pttl(key).await.expect("PTTL")
}

async fn stop(handles: Handles) {
    assert!(
        handles.shutdown(Duration::from_secs(1)).await.is_empty(),
        "actors must quit"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    karma: u32,
}

// ---------------------------------------------------------------------------------------------
// Cache

#[actix_rt::test]
async fn cache_values_ttls_and_single_flight() {
    let server = redis();
    let (handles, r, mut raw) = start(&server, |_| {}).await;
    let key = Key::new("cache", "profile", "42").expect("key");
    let alice = Profile {
        name: "alice".into(),
        karma: 7,
    };

    assert_eq!(r.cache_get::<Profile>(&key).await.expect("get"), None);
    r.cache_set(&key, &alice, None).await.expect("set");
    assert_eq!(
        r.cache_get::<Profile>(&key).await.expect("get"),
        Some(alice.clone())
    );
    assert!(r.cache_exists(&key).await.expect("exists"));
    // The default TTL (redis.cache_ttl = 5m) is on the server.
    let ms = pttl(&mut raw, key.as_str()).await;
    assert!((299_000..=300_000).contains(&ms), "PTTL {ms}");
    // A caller's TTL replaces it.
    r.cache_set(&key, &alice, Some(Duration::from_secs(10)))
        .await
        .expect("set");
    let ms = pttl(&mut raw, key.as_str()).await;
    assert!((9_000..=10_000).contains(&ms), "PTTL {ms}");
    assert!(r.cache_delete(&key).await.expect("delete"));
    assert!(!r.cache_delete(&key).await.expect("delete again"));
    assert!(!r.cache_exists(&key).await.expect("exists"));

    // Single flight: 32 concurrent misses compute once.
    let computed = Arc::new(AtomicUsize::new(0));
    let flight_key = Key::new("cache", "report", "daily").expect("key");
    let calls = (0..32).map(|_| {
        let computed = computed.clone();
        let r = r.clone();
        let flight_key = flight_key.clone();
        async move {
            r.cache_get_or_compute(&flight_key, None, || async {
                computed.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, RedisError>(Profile {
                    name: "report".into(),
                    karma: 1,
                })
            })
            .await
        }
    });
    for res in join_all(calls).await {
        assert_eq!(res.expect("computed").name, "report");
    }
    assert_eq!(
        computed.load(Ordering::SeqCst),
        1,
        "computed more than once"
    );
    // Afterwards it is a plain hit.
    let again = r
        .cache_get_or_compute(&flight_key, None, || async {
            Err::<Profile, _>(RedisError::NotFound {
                what: "never called".into(),
            })
        })
        .await
        .expect("hit");
    assert_eq!(again.karma, 1);
    stop(handles).await;
}

#[actix_rt::test]
async fn bad_input_is_refused_before_anything_is_sent() {
    let server = redis();
    let (handles, r, mut raw) = start(&server, |c| c.redis.max_value_bytes = 1024).await;
    let key = Key::new("cache", "x", "1").expect("key");

    let invalid = |res: Result<(), RedisError>, field: &str| match res {
        Err(RedisError::Invalid { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected Invalid {field}, got {other:?}"),
    };
    invalid(r.cache_set(&key, &"x".repeat(2000), None).await, "value");
    invalid(r.cache_set(&key, &1, Some(Duration::ZERO)).await, "ttl");
    invalid(
        r.cache_set(&key, &1, Some(Duration::from_secs(7200))).await,
        "ttl",
    );
    invalid(
        r.create_session("", "u1", serde_json::json!({}), None)
            .await
            .map(|_| ()),
        "id",
    );
    invalid(
        r.create_session("s1", "u1", serde_json::json!({}), Some(Duration::ZERO))
            .await
            .map(|_| ()),
        "ttl",
    );
    invalid(
        r.check_rate_limit(RateSubject::User("u1".into()), 0, Duration::from_secs(1))
            .await
            .map(|_| ()),
        "limit",
    );
    invalid(
        r.check_rate_limit(RateSubject::User("u1".into()), 5, Duration::ZERO)
            .await
            .map(|_| ()),
        "window",
    );
    invalid(
        r.check_rate_limit(RateSubject::User(String::new()), 5, Duration::from_secs(1))
            .await
            .map(|_| ()),
        "user_id",
    );
    invalid(r.acquire_lock("", None, None).await.map(|_| ()), "name");
    invalid(
        r.acquire_lock("l", Some(Duration::ZERO), None)
            .await
            .map(|_| ()),
        "lease",
    );
    invalid(r.publish("", "x").await.map(|_| ()), "channel");
    assert!(Key::new("cache", "x", &"y".repeat(600)).is_err());
    // Nothing reached the server.
    let keys: Vec<String> = raw.keys("*").await.expect("KEYS");
    assert!(keys.is_empty(), "{keys:?}");

    // WRONGTYPE is an error reply, not a panic.
    let () = raw.lpush(key.as_str(), "a list").await.expect("LPUSH");
    match r.cache_get::<String>(&key).await {
        Err(RedisError::Server { message }) => assert!(message.contains("WRONGTYPE"), "{message}"),
        other => panic!("expected WRONGTYPE, got {other:?}"),
    }
    // The actor is fine afterwards.
    r.ping().await.expect("still up");
    stop(handles).await;
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[actix_rt::test]
async fn sessions_ttl_extend_and_an_index_consistent_with_expiry() {
    let server = redis();
    let (handles, r, mut raw) = start(&server, |_| {}).await;

    let s = r
        .create_session(
            "sess-a",
            "user-1",
            serde_json::json!({"role": "admin"}),
            None,
        )
        .await
        .expect("create");
    assert_eq!(
        s.ttl,
        Duration::from_secs(15 * 60),
        "default access-token TTL"
    );
    let ms = pttl(&mut raw, "lucid:sessions:session:sess-a").await;
    assert!((899_000..=900_000).contains(&ms), "PTTL {ms}");
    let got = r.get_session("sess-a").await.expect("get").expect("exists");
    assert_eq!(got.user_id, "user-1");
    assert_eq!(got.data["role"], "admin");
    assert!(got.created_ms > 1_600_000_000_000);
    assert!(matches!(
        r.create_session("sess-a", "user-2", serde_json::json!({}), None)
            .await,
        Err(RedisError::Conflict { .. })
    ));

    // Extend: the session's TTL and its index entry move together.
    assert_eq!(
        r.extend_session("sess-a", Some(Duration::from_secs(3600)))
            .await
            .expect("extend"),
        Duration::from_secs(3600)
    );
    let ms = pttl(&mut raw, "lucid:sessions:session:sess-a").await;
    assert!((3_599_000..=3_600_000).contains(&ms), "PTTL {ms}");
    let index_ms = pttl(&mut raw, "lucid:sessions:user:user-1").await;
    assert!(
        (3_599_000..=3_600_000).contains(&index_ms),
        "index PTTL {index_ms}"
    );
    assert!(matches!(
        r.extend_session("nope", None).await,
        Err(RedisError::NotFound { .. })
    ));

    // Two short sessions and a long one: once the short ones expire, the index forgets them.
    for id in ["short-1", "short-2"] {
        r.create_session(
            id,
            "user-2",
            serde_json::json!({}),
            Some(Duration::from_millis(300)),
        )
        .await
        .expect("create");
    }
    r.create_session(
        "long",
        "user-2",
        serde_json::json!({}),
        Some(Duration::from_secs(60)),
    )
    .await
    .expect("create");
    let listed: BTreeSet<String> = r
        .list_sessions("user-2")
        .await
        .expect("list")
        .into_iter()
        .collect();
    assert_eq!(
        listed,
        ["long", "short-1", "short-2"].map(String::from).into()
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let listed = r.list_sessions("user-2").await.expect("list");
        if listed == ["long"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expired sessions still listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let indexed: u64 = raw
        .zcard("lucid:sessions:user:user-2")
        .await
        .expect("ZCARD");
    assert_eq!(indexed, 1, "expired entries pruned from the index");
    assert_eq!(r.get_session("short-1").await.expect("get"), None);

    assert!(r.delete_session("long").await.expect("delete"));
    assert!(!r.delete_session("long").await.expect("delete again"));
    assert!(r.list_sessions("user-2").await.expect("list").is_empty());
    stop(handles).await;
}

// ---------------------------------------------------------------------------------------------
// Rate limits

#[actix_rt::test]
async fn rate_limit_is_exact_at_the_window_edge() {
    let server = redis();
    let (handles, r, mut raw) = start(&server, |_| {}).await;
    let who = RateSubject::Ip("192.0.2.7".parse().expect("ip"));
    // Long enough that the check right after the third admission comes before the edge even
    // on a loaded machine: the test waits for the edge, not for a fixed time.
    let window = Duration::from_millis(1500);
    let key = "lucid:ratelimit:ip:192.0.2.7:3per1500ms";

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let d = r
            .check_rate_limit(who.clone(), 3, window)
            .await
            .expect("check");
        assert!(d.allowed && d.degraded.is_none());
        remaining.push(d.remaining);
    }
    assert_eq!(remaining, [2, 1, 0]);
    // The edge: the oldest admission leaves the window `window` after it was admitted, on the
    // server's clock (its score).
    let admitted: Vec<(String, f64)> = raw.zrange_withscores(key, 0, -1).await.expect("ZRANGE");
    assert_eq!(admitted.len(), 3, "{admitted:?}");
    let edge = admitted[0].1 as u64 + window.as_millis() as u64;
    // Refused (consuming nothing) up to the edge, admitted from it on: the window slid past
    // the first admission.
    let members: Vec<String> = admitted.into_iter().map(|(m, _)| m).collect();
    let refusals =
        check_until_admitted(&r, &mut raw, (who, 3, window), edge, (key, &members)).await;
    assert!(refusals >= 1, "never checked before the edge");
    stop(handles).await;
}

#[actix_rt::test]
async fn rate_limit_admits_exactly_the_limit_under_64_concurrent_callers() {
    let server = redis();
    let (handles, r, mut raw) = start(&server, |_| {}).await;
    let checks = (0..64).map(|_| {
        r.check_rate_limit(
            RateSubject::User("burst".into()),
            10,
            Duration::from_secs(30),
        )
    });
    let decisions: Vec<_> = join_all(checks)
        .await
        .into_iter()
        .map(|d| d.expect("check"))
        .collect();
    let admitted = decisions.iter().filter(|d| d.allowed).count();
    assert_eq!(admitted, 10);
    let mut remaining: Vec<u32> = decisions
        .iter()
        .filter(|d| d.allowed)
        .map(|d| d.remaining)
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..10).collect::<Vec<u32>>(),
        "each admission saw a distinct count"
    );
    let window: u64 = raw
        .zcard("lucid:ratelimit:user:burst:10per30000ms")
        .await
        .expect("ZCARD");
    assert_eq!(window, 10);
    stop(handles).await;
}

#[actix_rt::test]
async fn rate_limit_follows_the_configured_policy_while_redis_is_down() {
    for (policy, allowed) in [(DownPolicy::Closed, false), (DownPolicy::Open, true)] {
        let cap = events::capture();
        let mut cfg = config(&format!("redis://127.0.0.1:{}/0", free_port()));
        cfg.redis.rate_limit_when_down = policy;
        let handles = lucid_actors::start(&cfg, Roles::SIBLING);
        let r = handles.redis.clone().expect("redis");
        wait_until(Duration::from_secs(2), "first failure", || {
            !cap.named("backend.down").is_empty()
        })
        .await;
        for _ in 0..5 {
            let d = r
                .check_rate_limit(RateSubject::User("u".into()), 10, Duration::from_secs(1))
                .await
                .expect("decision");
            assert_eq!(d.allowed, allowed, "{policy:?}");
            assert_eq!(d.degraded, Some(policy));
        }
        let degraded = cap.named("ratelimit.degraded");
        assert_eq!(degraded.len(), 1, "once per outage");
        assert_eq!(
            degraded[0].field("policy"),
            Some(if allowed { "open" } else { "closed" })
        );
        stop(handles).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Locks

#[actix_rt::test]
async fn locks_exclude_and_fence_under_contention() {
    let server = redis();
    let (handles, r, _raw) = start(&server, |_| {}).await;
    let inside = Arc::new(AtomicBool::new(false));
    let order = Arc::new(Mutex::new(Vec::new()));
    let workers = (0..16).map(|_| {
        let (r, inside, order) = (r.clone(), inside.clone(), order.clone());
        async move {
            let guard = r
                .acquire_lock(
                    "ledger",
                    Some(Duration::from_secs(5)),
                    Some(Duration::from_secs(10)),
                )
                .await
                .expect("acquired within the wait");
            assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
            order.lock().expect("lock").push(guard.fence);
            tokio::time::sleep(Duration::from_millis(5)).await;
            inside.store(false, Ordering::SeqCst);
            r.release_lock(&guard).await.expect("release");
        }
    });
    join_all(workers).await;
    let fences = order.lock().expect("lock").clone();
    assert_eq!(fences.len(), 16);
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences must strictly increase in acquisition order: {fences:?}"
    );
    stop(handles).await;
}

#[actix_rt::test]
async fn lock_release_by_a_non_holder_is_refused_and_expiry_frees_it() {
    let server = redis();
    let (handles, r, _raw) = start(&server, |_| {}).await;
    let first = r
        .acquire_lock("job", Some(Duration::from_millis(300)), None)
        .await
        .expect("acquire");
    assert!(matches!(
        r.acquire_lock("job", None, None).await,
        Err(RedisError::LockBusy { .. })
    ));
    let mut forged = first.clone();
    forged.token = "not-the-token".into();
    assert!(matches!(
        r.release_lock(&forged).await,
        Err(RedisError::NotHeld { .. })
    ));
    assert!(matches!(
        r.extend_lock(&forged, None).await,
        Err(RedisError::NotHeld { .. })
    ));

    // The lease runs out; a waiting caller gets it, with a higher fence.
    let second = r
        .acquire_lock(
            "job",
            Some(Duration::from_secs(5)),
            Some(Duration::from_secs(2)),
        )
        .await
        .expect("freed by expiry");
    assert!(second.fence > first.fence);
    // The first holder can no longer release or extend what is now someone else's.
    assert!(matches!(
        r.release_lock(&first).await,
        Err(RedisError::NotHeld { .. })
    ));
    let mut raw2 = redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let extended = r
        .extend_lock(&second, Some(Duration::from_secs(30)))
        .await
        .expect("holder extends");
    assert_eq!(extended.lease, Duration::from_secs(30));
    let ms = pttl(&mut raw2, "lucid:locks:lock:job").await;
    assert!(
        (29_000..=30_000).contains(&ms),
        "lease on the server after extend: {ms} ms"
    );
    r.release_lock(&second).await.expect("holder releases");
    let exists: bool = raw2.exists("lucid:locks:lock:job").await.expect("EXISTS");
    assert!(!exists, "released lock still on the server");
    stop(handles).await;
}

// ---------------------------------------------------------------------------------------------
// Pub/Sub

#[derive(Default)]
struct Collector {
    got: Arc<Mutex<Vec<PubSubMessage>>>,
}

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<PubSubMessage> for Collector {
    type Result = ();
    fn handle(&mut self, msg: PubSubMessage, _: &mut Context<Self>) {
        self.got.lock().expect("lock").push(msg);
    }
}

/// Blocks its own arbiter's thread in its first message until released (the sender is
/// dropped), so its mailbox fills up however fast or slow the publisher is.
struct Stuck {
    release: std::sync::mpsc::Receiver<()>,
}

impl Actor for Stuck {
    type Context = Context<Self>;
}

impl Handler<PubSubMessage> for Stuck {
    type Result = ();
    fn handle(&mut self, _: PubSubMessage, _: &mut Context<Self>) {
        let _ = self.release.recv();
    }
}

#[actix_rt::test]
async fn pubsub_delivers_to_actors_and_survives_a_restart() {
    let mut server = redis();
    let cap = events::capture();
    let (handles, r, _raw) = start(&server, |_| {}).await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let collector = Collector { got: got.clone() }.start();
    let by_channel = r
        .subscribe(
            Topic::Channel("lucid:blocks:new".into()),
            collector.clone().recipient(),
        )
        .await
        .expect("subscribe");
    r.subscribe(
        Topic::Pattern("lucid:alerts:*".into()),
        collector.clone().recipient(),
    )
    .await
    .expect("psubscribe");

    // The subscriber connection opens in the background, and SUBSCRIBE and PSUBSCRIBE take
    // effect one after the other: publish each until Redis counts a listener (a message nobody
    // heard is not delivered, so each is delivered exactly once).
    let received = |n: usize| got.lock().expect("lock").len() >= n;
    let payloads = || -> Vec<Vec<u8>> {
        got.lock()
            .expect("lock")
            .iter()
            .map(|m| m.payload.clone())
            .collect()
    };
    for (channel, payload) in [
        ("lucid:blocks:new", "block-1"),
        ("lucid:alerts:disk", "80%"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(3);
        while r.publish(channel, payload).await.expect("publish") == 0 {
            assert!(
                Instant::now() < deadline,
                "subscription for {channel} never became active"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    wait_until(Duration::from_secs(2), "two deliveries", || received(2)).await;
    {
        let got = got.lock().expect("lock");
        assert_eq!(
            got[0],
            PubSubMessage {
                channel: "lucid:blocks:new".into(),
                pattern: None,
                payload: b"block-1".to_vec()
            }
        );
        assert_eq!(got[1].pattern.as_deref(), Some("lucid:alerts:*"));
        assert_eq!(got[1].payload, b"80%");
    }

    // Restart redis-server: the actor reconnects and resubscribes both.
    server.stop();
    wait_until(Duration::from_secs(3), "down", || {
        handles.registry.readiness().is_err()
    })
    .await;
    server.start_again();
    wait_until(Duration::from_secs(3), "resubscribed", || {
        !cap.named("pubsub.resubscribed").is_empty()
    })
    .await;
    let resub = &cap.named("pubsub.resubscribed")[0];
    assert_eq!(
        (resub.field("channels"), resub.field("patterns")),
        (Some("1"), Some("1"))
    );
    assert_eq!(
        r.publish("lucid:blocks:new", "block-2")
            .await
            .expect("publish"),
        1
    );
    assert_eq!(
        r.publish("lucid:alerts:cpu", "95%").await.expect("publish"),
        1
    );
    wait_until(Duration::from_secs(2), "deliveries after restart", || {
        received(4)
    })
    .await;
    // Exactly once each, in order: no duplicate from a second subscriber connection.
    let expected: Vec<Vec<u8>> = ["block-1", "80%", "block-2", "95%"]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    assert_eq!(payloads(), expected);

    // The subscriber connection alone is killed (the main one stays up): it is re-opened.
    let mut raw = redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("inspection connection after the restart");
    let () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut raw)
        .await
        .expect("CLIENT KILL");
    let deadline = Instant::now() + Duration::from_secs(3);
    while r
        .publish("lucid:blocks:new", "block-4")
        .await
        .expect("publish")
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "subscriber connection not re-opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        handles.registry.readiness().is_ok(),
        "the main connection was not disturbed"
    );
    wait_until(Duration::from_secs(2), "delivery after CLIENT KILL", || {
        received(5)
    })
    .await;

    // Unsubscribed: no more deliveries on that channel.
    assert!(r.unsubscribe(by_channel).await.expect("unsubscribe"));
    assert!(!r.unsubscribe(by_channel).await.expect("unsubscribe again"));
    let deadline = Instant::now() + Duration::from_secs(2);
    while r
        .publish("lucid:blocks:new", "block-5")
        .await
        .expect("publish")
        != 0
    {
        assert!(Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!payloads().contains(&b"block-5".to_vec()));
    stop(handles).await;
}

#[actix_rt::test]
async fn a_refused_subscription_is_an_error_and_leaves_the_backend_up() {
    // An ACL user with every command but no channel rights (Redis 7's default for new users).
    let server = Server::start_with(
        &lucid_testkit::REDIS,
        &[
            "--user",
            "lucid",
            "on",
            ">pw",
            "~lucid:*",
            "resetchannels",
            "+@all",
        ],
    );
    let cap = events::capture();
    let url = format!("redis://lucid:pw@{}/0", server.addr());
    let mut cfg = config(&url);
    cfg.mongodb.enabled = false;
    let handles = lucid_actors::start(&cfg, Roles::SIBLING);
    let r = handles.redis.clone().expect("redis");
    wait_until(Duration::from_secs(5), "redis up", || {
        handles.registry.readiness().is_ok()
    })
    .await;
    let collector = Collector::default().start();

    // The first subscription opens the subscriber connection: refused there, reported, and
    // the main connection stays up.
    r.subscribe(
        Topic::Channel("lucid:x:y".into()),
        collector.clone().recipient(),
    )
    .await
    .expect("accepted");
    wait_until(Duration::from_secs(3), "subscribe_failed", || {
        !cap.named("pubsub.subscribe_failed").is_empty()
    })
    .await;
    assert!(handles.registry.readiness().is_ok());
    assert!(cap.named("backend.down").is_empty(), "{:?}", cap.events());
    r.cache_set(&Key::new("cache", "x", "1").expect("key"), &1, None)
        .await
        .expect("the rest still works");
    stop(handles).await;
}

#[actix_rt::test]
async fn a_slow_subscriber_loses_messages_not_memory() {
    let server = redis();
    let cap = events::capture();
    let (handles, r, _raw) = start(&server, |_| {}).await;
    let arbiter = Arbiter::new();
    let (release, stuck_until) = std::sync::mpsc::channel();
    let stuck = Stuck::start_in_arbiter(&arbiter.handle(), move |_| Stuck {
        release: stuck_until,
    });
    r.subscribe(Topic::Channel("lucid:flood:x".into()), stuck.recipient())
        .await
        .expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(3);
    while r.publish("lucid:flood:x", "first").await.expect("publish") == 0 {
        assert!(
            Instant::now() < deadline,
            "subscription never became active"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..200 {
        r.publish("lucid:flood:x", format!("m{i}"))
            .await
            .expect("publish");
    }
    wait_until(Duration::from_secs(3), "drops counted", || {
        !cap.named("pubsub.overflow").is_empty()
    })
    .await;
    let drops = r.pubsub_drops().await.expect("drops");
    assert_eq!(drops.len(), 1);
    // The mailbox (16 by default) bounds what is queued; the rest was dropped and counted.
    assert!(drops[0].1 >= 150, "dropped {}", drops[0].1);
    assert_eq!(
        cap.named("pubsub.overflow").len(),
        1,
        "one event per subscription"
    );
    drop(release);
    arbiter.stop();
    stop(handles).await;
}

// ---------------------------------------------------------------------------------------------
// Export / import

#[actix_rt::test]
async fn export_flushall_import_restores_every_type_and_skips_what_must_not_come_back() {
    let server = redis();
    let (handles, r, mut raw) = start(&server, |_| {}).await;
    // One key of each type, some with a TTL.
    let () = redis::pipe()
        .cmd("SET")
        .arg("lucid:t:string:1")
        .arg("v")
        .arg("PX")
        .arg(120_000)
        .ignore()
        .cmd("HSET")
        .arg("lucid:t:hash:1")
        .arg("f")
        .arg("v")
        .ignore()
        .cmd("RPUSH")
        .arg("lucid:t:list:1")
        .arg("a")
        .arg("b")
        .ignore()
        .cmd("PEXPIRE")
        .arg("lucid:t:list:1")
        .arg(60_000)
        .ignore()
        .cmd("SADD")
        .arg("lucid:t:set:1")
        .arg("x")
        .arg("y")
        .ignore()
        .cmd("ZADD")
        .arg("lucid:t:zset:1")
        .arg(1)
        .arg("one")
        .ignore()
        .cmd("XADD")
        .arg("lucid:t:stream:1")
        .arg("*")
        .arg("k")
        .arg("v")
        .ignore()
        .cmd("SET")
        .arg("lucid:t:string:short")
        .arg("gone soon")
        .arg("PX")
        .arg(300)
        .ignore()
        .cmd("SET")
        .arg("other:not:lucid")
        .arg("x")
        .ignore()
        .query_async(&mut raw)
        .await
        .expect("seed");
    let guard = r
        .acquire_lock("nightly", Some(Duration::from_secs(60)), None)
        .await
        .expect("lock");
    r.check_rate_limit(RateSubject::User("u".into()), 5, Duration::from_secs(60))
        .await
        .expect("limit");
    // The server's clock runs at most this process's between the two PTTL readings.
    let first_reading = Instant::now();
    let expiry_before: BTreeMap<String, i64> = {
        let mut m = BTreeMap::new();
        for k in ["lucid:t:string:1", "lucid:t:list:1"] {
            m.insert(k.to_owned(), pttl(&mut raw, k).await);
        }
        m
    };

    let exported = r.export_all().await.expect("export");
    let names: BTreeSet<&str> = exported.iter().map(|e| e.key.as_str()).collect();
    assert!(
        !names.contains("other:not:lucid"),
        "only lucid:* is exported"
    );
    for k in [
        "lucid:t:hash:1",
        "lucid:locks:lock:nightly",
        "lucid:locks:fence:all",
        "lucid:ratelimit:user:u:5per60000ms",
    ] {
        assert!(names.contains(k), "{k} missing from {names:?}");
    }
    let kinds: BTreeSet<String> = exported.iter().map(|e| format!("{:?}", e.kind)).collect();
    for kind in [
        KeyKind::String,
        KeyKind::Hash,
        KeyKind::List,
        KeyKind::Set,
        KeyKind::Zset,
        KeyKind::Stream,
    ] {
        assert!(
            kinds.contains(&format!("{kind:?}")),
            "{kind:?} not exported"
        );
    }

    // Long enough that a relative TTL would show: restored TTLs must keep their absolute end.
    // The short key's expiry passes meanwhile.
    let pause = Duration::from_millis(1600);
    tokio::time::sleep(pause).await;
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut raw)
        .await
        .expect("FLUSHALL");
    // The target's own counter is ahead of the backup's: the import must keep the larger.
    // (The counter is a lucid:* key, so the database holds data: the import replaces.)
    let ahead = guard.fence + 5000;
    let () = raw.set("lucid:locks:fence:all", ahead).await.expect("SET");
    let summary = r
        .import(
            ImportOptions::new(ImportTarget::default()).existing(Existing::Replace),
            futures_util::stream::iter(exported.into_iter().map(Ok::<_, String>)),
        )
        .await
        .expect("import");
    assert_eq!(summary.skipped(Skip::NotRestorable), 2, "{summary:?}"); // the lock and the rate-limit window
    assert_eq!(summary.skipped(Skip::Expired), 1, "{summary:?}");
    assert_eq!(summary.details.fences_raised, 1, "{summary:?}");
    assert_eq!(
        summary.written - summary.details.fences_raised,
        6,
        "restored: {summary:?}"
    );
    assert_eq!(summary.read, summary.written + summary.skipped_total());

    for (k, t) in [
        ("lucid:t:string:1", "string"),
        ("lucid:t:hash:1", "hash"),
        ("lucid:t:list:1", "list"),
        ("lucid:t:set:1", "set"),
        ("lucid:t:zset:1", "zset"),
        ("lucid:t:stream:1", "stream"),
    ] {
        let kind: String = redis::cmd("TYPE")
            .arg(k)
            .query_async(&mut raw)
            .await
            .expect("TYPE");
        assert_eq!(kind, t, "{k}");
    }
    let list: Vec<String> = raw.lrange("lucid:t:list:1", 0, -1).await.expect("LRANGE");
    assert_eq!(list, ["a", "b"]);
    let hash: String = raw.hget("lucid:t:hash:1", "f").await.expect("HGET");
    assert_eq!(hash, "v");
    // TTLs kept their absolute end: they lost at least the pause (a relative TTL, restored
    // as it was exported, would have lost next to nothing) and at most the time between the
    // two readings, however long a loaded machine made it — give or take the server's cached
    // clock (Redis reads the time once per event-loop turn, not per command, so a reading can
    // be a few ms old: CI saw 2 ms); persistent keys stay persistent.
    const CLOCK_SLACK_MS: i64 = 50;
    for (k, before) in &expiry_before {
        let after = pttl(&mut raw, k).await;
        let between = first_reading.elapsed().as_millis() as i64;
        let lost = before - after;
        assert!(
            after > 0 && lost >= pause.as_millis() as i64 - 1 && lost <= between + CLOCK_SLACK_MS,
            "{k}: PTTL {before} before, {after} after a {pause:?} pause ({between} ms between the readings)"
        );
    }
    assert_eq!(pttl(&mut raw, "lucid:t:hash:1").await, -1);
    for gone in [
        "lucid:locks:lock:nightly",
        "lucid:ratelimit:user:u:5per60000ms",
        "lucid:t:string:short",
    ] {
        let exists: bool = raw.exists(gone).await.expect("EXISTS");
        assert!(!exists, "{gone} came back");
    }
    let leftovers: Vec<String> = raw.keys("*restoring*").await.expect("KEYS");
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Fencing tokens never go back: max(current, restored) + margin, then the next one.
    let next = r
        .acquire_lock("nightly", None, None)
        .await
        .expect("lock after restore");
    assert_eq!(
        next.fence,
        ahead + 1000 + 1,
        "fence after restore ({} before)",
        guard.fence
    );
    stop(handles).await;
}

#[actix_rt::test]
async fn every_key_the_actor_writes_follows_the_naming_pattern() {
    let server = redis();
    let (handles, r, mut raw) = start(&server, |_| {}).await;
    r.cache_set(&Key::new("cache", "user", "1").expect("key"), &1, None)
        .await
        .expect("cache");
    r.create_session("s-1", "u-1", serde_json::json!({}), None)
        .await
        .expect("session");
    r.check_rate_limit(
        RateSubject::Ip("2001:db8::1".parse().expect("ip")),
        5,
        Duration::from_secs(5),
    )
    .await
    .expect("limit");
    r.check_rate_limit(RateSubject::User("u-1".into()), 5, Duration::from_secs(5))
        .await
        .expect("limit");
    r.acquire_lock("export", None, None).await.expect("lock");
    let mut keys: Vec<String> = Vec::new();
    let mut iter: redis::AsyncIter<String> = raw.scan().await.expect("SCAN");
    while let Some(k) = iter.next_item().await {
        keys.push(k.expect("key"));
    }
    drop(iter);
    assert_eq!(keys.len(), 7, "{keys:?}");
    for k in keys {
        let parts: Vec<&str> = k.splitn(4, ':').collect();
        assert_eq!(parts.len(), 4, "{k}");
        assert_eq!(parts[0], "lucid", "{k}");
        for name in &parts[1..3] {
            assert!(
                !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || c == '_'
                        || c == '-'),
                "{k}"
            );
        }
        assert!(!parts[3].is_empty(), "{k}");
    }
    stop(handles).await;
}

#[actix_rt::test]
async fn two_policies_on_one_subject_keep_separate_windows_and_a_lowered_limit_waits_its_turn() {
    let server = redis();
    let (handles, r, _raw) = start(&server, |_| {}).await;
    let who = || RateSubject::User("dual".into());
    // 3 per hour: used up.
    for _ in 0..3 {
        assert!(
            r.check_rate_limit(who(), 3, Duration::from_secs(3600))
                .await
                .expect("check")
                .allowed
        );
    }
    assert!(
        !r.check_rate_limit(who(), 3, Duration::from_secs(3600))
            .await
            .expect("check")
            .allowed
    );
    // A second policy on the same user (100 per second) neither sees nor resets the first.
    for _ in 0..5 {
        assert!(
            r.check_rate_limit(who(), 100, Duration::from_secs(1))
                .await
                .expect("check")
                .allowed
        );
    }
    assert!(
        !r.check_rate_limit(who(), 3, Duration::from_secs(3600))
            .await
            .expect("check")
            .allowed,
        "hourly limit reset by another policy"
    );

    // A window holding more than the limit (the limit was lowered): retry_after is when enough
    // entries have left, not when the oldest one does. The window of a limit of 1 is written
    // as the script leaves it after three admissions 500 ms apart on the server's clock (a
    // window key belongs to one policy, so the lowered limit cannot be reached through the
    // actor): the newest, whose leaving admits again, is 1,000 ms younger than the oldest, so
    // pointing at the oldest would be off by far more than a clock reading's bracket.
    let lowered = || RateSubject::User("lowered".into());
    let window = Duration::from_millis(1200);
    let key = "lucid:ratelimit:user:lowered:1per1200ms";
    let mut raw = redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let now = server_ms(&mut raw).await;
    let mut members = Vec::new();
    for admitted in [now - 1000, now - 500, now] {
        let member = format!("{admitted}:{admitted}");
        let () = raw.zadd(key, &member, admitted).await.expect("ZADD");
        members.push(member);
    }
    let edge = now + window.as_millis() as u64;
    let refusals =
        check_until_admitted(&r, &mut raw, (lowered(), 1, window), edge, (key, &members)).await;
    assert!(refusals >= 1, "never checked before the edge");
    stop(handles).await;
}

#[actix_rt::test]
async fn a_rate_limit_check_lost_on_the_way_follows_the_policy_and_says_so() {
    let server = redis();
    let cap = events::capture();
    let (handles, r, _raw) =
        start(&server, |c| c.redis.rate_limit_when_down = DownPolicy::Open).await;
    server.pause();
    let started = Instant::now();
    let d = r
        .check_rate_limit(
            RateSubject::User("frozen".into()),
            1,
            Duration::from_secs(1),
        )
        .await
        .expect("decision");
    // The policy answered (and said so) instead of an error; the wall clock only tells an
    // answer from a hang.
    assert!(d.allowed && d.degraded == Some(DownPolicy::Open), "{d:?}");
    assert!(started.elapsed() < DEADLINE + SLACK);
    assert_eq!(cap.named("ratelimit.degraded").len(), 1);
    server.resume();
    stop(handles).await;
}

#[actix_rt::test]
async fn export_import_of_many_keys_crosses_batches_and_scan_rounds() {
    let server = redis();
    let (handles, r, mut raw) = start(&server, |_| {}).await;
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET")
            .arg(format!("lucid:bulk:item:{i}"))
            .arg(i)
            .ignore();
    }
    let () = pipe.query_async(&mut raw).await.expect("seed");
    let exported = r.export_all().await.expect("export");
    let names: BTreeSet<String> = exported.iter().map(|e| e.key.clone()).collect();
    assert_eq!(names.len(), 1000, "every key once");
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut raw)
        .await
        .expect("FLUSHALL");
    let summary = r
        .import(
            ImportOptions::new(ImportTarget::default()),
            futures_util::stream::iter(exported.into_iter().map(Ok::<_, String>)),
        )
        .await
        .expect("import");
    assert_eq!(
        (summary.written, summary.skipped(Skip::Refused)),
        (1000, 0),
        "{summary:?}"
    );
    let v: i64 = raw.get("lucid:bulk:item:999").await.expect("GET");
    assert_eq!(v, 999);

    // A corrupt payload fails that key alone; a key outside lucid:* is refused.
    let mut good = r
        .export_all()
        .await
        .expect("export")
        .into_iter()
        .take(2)
        .collect::<Vec<_>>();
    let mut bad = good[0].clone();
    bad.key = "lucid:bulk:corrupt:1".into();
    bad.payload = b"not a dump".to_vec();
    let mut foreign = good[1].clone();
    foreign.key = "other:key".into();
    good.push(bad);
    good.push(foreign);
    let summary = r
        .import(
            ImportOptions::new(ImportTarget::default()).existing(Existing::Replace),
            futures_util::stream::iter(good.into_iter().map(Ok::<_, String>)),
        )
        .await
        .expect("import");
    assert_eq!(
        (
            summary.written,
            summary.skipped(Skip::Refused),
            summary.skipped(Skip::Foreign)
        ),
        (2, 1, 1),
        "{summary:?}"
    );
    assert_eq!(summary.details.failures[0].0, "lucid:bulk:corrupt:1");
    let exists: bool = raw.exists("other:key").await.expect("EXISTS");
    assert!(!exists);

    // A source that fails mid-stream fails the import — never a silently partial restore —
    // and says how many keys it had written.
    let three: Vec<_> = r
        .export_all()
        .await
        .expect("export")
        .into_iter()
        .filter(|k| k.key.starts_with("lucid:bulk:item:"))
        .take(3)
        .collect();
    assert_eq!(three.len(), 3);
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut raw)
        .await
        .expect("FLUSHALL");
    let (feeder, source) = RedisHandle::import_feed();
    let producer = actix_rt::spawn(async move {
        for key in three {
            feeder.send(key).await.expect("feed");
        }
        feeder.fail("the artifact ended early".to_owned());
    });
    let err = r
        .import(ImportOptions::new(ImportTarget::default()), source)
        .await
        .expect_err("a failed source fails");
    producer.await.expect("producer");
    assert_eq!(err.code(), "import_source_failed", "{err}");
    match err {
        RedisError::ImportSource { written, reason } => {
            assert_eq!(written, 3);
            assert!(reason.contains("ended early"), "{reason}");
        }
        other => panic!("expected ImportSource, got {other:?}"),
    }
    let left: u64 = redis::cmd("DBSIZE")
        .query_async(&mut raw)
        .await
        .expect("DBSIZE");
    assert_eq!(left, 3, "the count reported is what Redis holds");
    stop(handles).await;
}

/// A plain connection to database `db` of the test server.
async fn raw_db(server: &Server, db: u32) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("{}/{db}", server.url()))
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("inspection connection")
}

async fn dbsize(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("DBSIZE")
        .query_async(conn)
        .await
        .expect("DBSIZE")
}

#[actix_rt::test]
async fn an_export_feed_imports_into_another_database_under_the_empty_target_rule() {
    let server = redis();
    let (handles, r, mut raw) = start(&server, |_| {}).await;
    let mut pipe = redis::pipe();
    for i in 0..300 {
        pipe.cmd("SET")
            .arg(format!("lucid:bulk:item:{i}"))
            .arg(i)
            .ignore();
    }
    pipe.cmd("PEXPIRE")
        .arg("lucid:bulk:item:7")
        .arg(120_000)
        .ignore();
    let () = pipe.query_async(&mut raw).await.expect("seed");
    let to = |db: u32| ImportOptions::new(ImportTarget { db: Some(db) });

    // The export's feed is the import's source, straight into database 5: nothing collected.
    let feed = r.export().await.expect("export");
    let summary = r.import(to(5), feed).await.expect("import into db 5");
    assert_eq!((summary.read, summary.written), (300, 300), "{summary:?}");
    assert_eq!(summary.details.db, 5);
    let mut five = raw_db(&server, 5).await;
    assert_eq!(dbsize(&mut five).await, 300);
    let v: i64 = five.get("lucid:bulk:item:299").await.expect("GET");
    assert_eq!(v, 299);
    let ttl = pttl(&mut five, "lucid:bulk:item:7").await;
    assert!(ttl > 100_000, "the TTL came along: {ttl}");
    assert_eq!(
        dbsize(&mut raw).await,
        300,
        "the source database is untouched"
    );

    // Database 5 now holds lucid:* keys: refused, unless the import replaces.
    let err = r
        .import(to(5), r.export().await.expect("export"))
        .await
        .expect_err("not empty");
    assert_eq!(err.code(), "not_empty", "{err}");
    assert!(
        matches!(err, RedisError::NotEmpty { db: 5, keys: 300 }),
        "{err:?}"
    );
    let replaced = r
        .import(
            to(5).existing(Existing::Replace),
            r.export().await.expect("export"),
        )
        .await
        .expect("replace");
    assert_eq!(replaced.written, 300);

    // A database that exists but holds nothing of lucid-db's (a foreign key) counts as empty,
    // unless the options refuse any database in use; one with no key at all is never refused.
    let mut six = raw_db(&server, 6).await;
    let () = six.set("other:app:key", "x").await.expect("SET");
    let err = r
        .import(
            to(6).existing(Existing::RefuseAny),
            r.export().await.expect("export"),
        )
        .await
        .expect_err("in use");
    assert!(
        matches!(err, RedisError::Exists { db: 6, keys: 1 }),
        "{err:?}"
    );
    assert_eq!(err.code(), "exists");
    assert_eq!(dbsize(&mut six).await, 1, "a refused import writes nothing");
    let summary = r
        .import(to(6), r.export().await.expect("export"))
        .await
        .expect("foreign keys only: empty");
    assert_eq!(summary.written, 300);
    let kept: String = six.get("other:app:key").await.expect("GET");
    assert_eq!(kept, "x");
    let summary = r
        .import(
            to(7).existing(Existing::RefuseAny),
            r.export().await.expect("export"),
        )
        .await
        .expect("an unused database");
    assert_eq!(summary.written, 300);

    // A database the server does not have is bad input, named.
    let err = r
        .import(
            to(99_999),
            futures_util::stream::empty::<Result<_, String>>(),
        )
        .await
        .expect_err("no such database");
    assert!(
        matches!(&err, RedisError::Invalid { field, .. } if *field == "target.db"),
        "{err:?}"
    );
    stop(handles).await;
}

#[actix_rt::test]
async fn stats_come_from_the_server() {
    let server = redis();
    let (handles, r, mut raw) = start(&server, |_| {}).await;
    let () = raw.set("lucid:x:y:z", 1).await.expect("SET");
    let stats = r.stats().await.expect("stats");
    assert!(
        stats.version.starts_with('7') || stats.version.starts_with('6'),
        "{stats:?}"
    );
    assert!(
        stats.used_memory_bytes > 0 && stats.connected_clients >= 2,
        "{stats:?}"
    );
    assert_eq!(
        stats.keyspace.get("db0").map(|k| k.keys),
        Some(1),
        "{stats:?}"
    );
    assert!(stats.probe_latency_ms.is_some());
    stop(handles).await;
}

// ---------------------------------------------------------------------------------------------
// Faults on service calls

#[actix_rt::test]
async fn service_calls_never_hang_on_a_frozen_or_dead_server() {
    let mut server = redis();
    let (handles, r, _raw) = start(&server, |_| {}).await;
    let key = Key::new("cache", "f", "1").expect("key");
    r.cache_set(&key, &"v", None).await.expect("set");

    server.pause();
    let started = Instant::now();
    let calls = join_all([
        Box::pin(async { r.cache_get::<String>(&key).await.map(|_| ()) })
            as std::pin::Pin<Box<dyn std::future::Future<Output = _>>>,
        Box::pin(async { r.acquire_lock("frozen", None, None).await.map(|_| ()) }),
        Box::pin(async {
            r.create_session("frozen", "u", serde_json::json!({}), None)
                .await
                .map(|_| ())
        }),
    ])
    .await;
    // Each ran into the deadline (the error names it); the wall clock only tells an answer
    // from a hang.
    for res in calls {
        assert!(
            matches!(
                res,
                Err(RedisError::Call(CallError::DeadlineExceeded { after, .. })) if after == DEADLINE
            ),
            "{res:?}"
        );
    }
    assert!(
        started.elapsed() < DEADLINE + SLACK,
        "took {:?}",
        started.elapsed()
    );
    server.resume();
    wait_until(Duration::from_secs(3), "up after SIGCONT", || {
        handles.registry.readiness().is_ok()
    })
    .await;
    assert_eq!(
        r.cache_get::<String>(&key).await.expect("get").as_deref(),
        Some("v")
    );

    server.stop();
    wait_until(Duration::from_secs(3), "down", || {
        handles.registry.readiness().is_err()
    })
    .await;
    assert!(matches!(
        at_once(r.cache_get::<String>(&key)),
        Err(RedisError::Call(CallError::Unavailable { .. }))
    ));
    server.start_again();
    // Back within a retry at the backoff cap (400 ms) and a connect, give or take a loaded
    // machine; that no retry waits longer than the cap is redis_supervision.rs's to show.
    wait_until(
        Duration::from_millis(400) + DEADLINE + SLACK,
        "recovered within the backoff bound",
        || handles.registry.readiness().is_ok(),
    )
    .await;
    // (the server restarted empty: no persistence in the test kit)
    assert_eq!(r.cache_get::<String>(&key).await.expect("get"), None);
    stop(handles).await;
}

#[actix_rt::test]
async fn an_export_the_reader_abandons_ends_with_an_error_not_silently() {
    let server = redis();
    let (handles, r, mut raw) = start(&server, |c| {
        c.supervisor.stream_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.cmd("SET")
            .arg(format!("lucid:bulk:item:{i}"))
            .arg(i)
            .ignore();
    }
    let () = pipe.query_async(&mut raw).await.expect("seed");
    let mut keys = r.export().await.expect("export");
    // Read one, then take nothing until the export has given up on this reader (its feed
    // fills up, and nobody takes from it for the idle timeout).
    assert!(matches!(keys.next().await, Some(Ok(_))));
    wait_until(
        Duration::from_millis(300) + SLACK,
        "the export to give up on the stalled reader",
        || keys.finished(),
    )
    .await;
    let (mut n, mut errors) = (1, Vec::new());
    while let Some(item) = keys.next().await {
        match item {
            Ok(_) => n += 1,
            Err(e) => errors.push(e),
        }
    }
    // Cut short by the stall: what was queued when it gave up, then the error, once.
    assert!(
        n < 3000,
        "all {n} keys arrived: the stall past the idle timeout did not end the export"
    );
    assert!(
        matches!(errors.as_slice(), [RedisError::StreamIdle { .. }]),
        "one stream_idle error at the end: {errors:?}"
    );
    stop(handles).await;
}

#[actix_rt::test]
async fn writes_answer_busy_while_an_import_writes_into_the_live_database_and_reads_go_on() {
    let server = redis();
    let (handles, r, _raw) = start(&server, |_| {}).await;
    let key = Key::new("cache", "profile", "busy").expect("key");
    let value = Profile {
        name: "bob".into(),
        karma: 1,
    };
    r.cache_set(&key, &value, None).await.expect("set");

    // An import into a scratch database holds nothing up.
    let (scratch_feeder, scratch) = RedisHandle::import_feed();
    let scratch_import = {
        let r = r.clone();
        actix_rt::spawn(async move {
            r.import(ImportOptions::new(ImportTarget { db: Some(3) }), scratch)
                .await
        })
    };
    // A batch written there (64 keys), the scratch import still open: the live data takes
    // writes.
    for i in 0..64 {
        let k = Key::new("cache", "filler", &i.to_string()).expect("key");
        r.cache_set(&k, &value, None).await.expect("set");
    }
    for key in r.export_all().await.expect("export") {
        scratch_feeder.send(key).await.expect("feed");
    }
    let mut db3 = raw_db(&server, 3).await;
    let started = Instant::now();
    loop {
        let n: u64 = redis::cmd("DBSIZE")
            .query_async(&mut db3)
            .await
            .expect("DBSIZE");
        if n >= 64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no batch in db 3"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.cache_set(&key, &value, None)
        .await
        .expect("a scratch import does not hold writes up");

    // An import into the live database, its source held open: a restore under way.
    let (feeder, source) = RedisHandle::import_feed();
    let live_import = {
        let r = r.clone();
        actix_rt::spawn(async move {
            r.import(
                ImportOptions::new(ImportTarget::default()).existing(Existing::Replace),
                source,
            )
            .await
        })
    };
    let started = Instant::now();
    let err = loop {
        match r.cache_set(&key, &value, None).await {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "writes were never refused while the import ran"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Refused at once with `busy`, saying why; reads go on.
    assert_eq!(err.code(), "busy", "{err}");
    assert!(err.to_string().contains("a restore is writing"), "{err}");
    let refused_at = Instant::now();
    let again = r.cache_delete(&key).await.expect_err("a delete is a write");
    assert_eq!(again.code(), "busy");
    assert!(refused_at.elapsed() < DEADLINE, "a refusal, not a wait");
    assert_eq!(
        r.cache_get::<Profile>(&key).await.expect("read"),
        Some(value.clone())
    );

    // The import ends: writes are taken again. The scratch import never held them up.
    drop(feeder);
    live_import.await.expect("join").expect("the import");
    r.cache_set(&key, &value, None).await.expect("set after");
    drop(scratch_feeder);
    scratch_import
        .await
        .expect("join")
        .expect("the scratch import");
    stop(handles).await;
}
