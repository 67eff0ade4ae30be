//! The Redis actor under the shared supervision, against a real redis-server: killed,
//! restarted on the same port, and frozen with SIGSTOP.

use std::time::{Duration, Instant};

use lucid_actors::events;
use lucid_actors::redis::RedisError;
use lucid_actors::supervisor::{BackoffPolicy, StateLabel};
use lucid_actors::{BackendStatus, CallError, Handles, Roles};
use lucid_testkit::redis;

use crate::common::{DEADLINE, SLACK, at_once, fast_config as config};

fn redis_status(h: &Handles) -> BackendStatus {
    h.registry
        .snapshot()
        .into_iter()
        .next()
        .expect("redis registered")
}

/// Polls (real time: a real server decides) until `pred` holds; returns how long it took.
async fn wait_until(limit: Duration, what: &str, mut pred: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !pred() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[actix_rt::test]
async fn killed_server_goes_down_fast_and_comes_back_within_the_backoff_bound() {
    let mut server = redis();
    let cfg = config(&server.url());
    let policy = BackoffPolicy::from_config(&cfg.supervisor);
    let cap = events::capture();
    let h = lucid_actors::start(&cfg, Roles::SIBLING);
    let redis_h = h.redis.clone().expect("redis enabled");

    wait_until(Duration::from_secs(5), "first connect", || {
        redis_status(&h).is_up()
    })
    .await;
    redis_h.ping().await.expect("ping while up");
    let up = cap.named("backend.up");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].field("backend"), Some("redis"));
    assert_eq!(up[0].field("attempt"), Some("1"));

    // Kill it: the probe notices, the actor goes to backoff, backend.down fires once.
    server.stop();
    wait_until(Duration::from_secs(3), "backend down", || {
        !redis_status(&h).is_up()
    })
    .await;
    let went_down = Instant::now();
    let down = cap.named("backend.down");
    assert_eq!(down.len(), 1, "{:?}", cap.events());
    assert_eq!(down[0].field("backend"), Some("redis"));
    assert!(down[0].code.is_some_and(|c| !c.is_empty()));

    // Calls are answered at once, without touching the network.
    for _ in 0..20 {
        let err = at_once(redis_h.ping()).expect_err("redis is down");
        assert!(
            matches!(err, RedisError::Call(CallError::Unavailable { .. })),
            "{err:?}"
        );
    }
    assert_eq!(
        cap.named("backend.down").len(),
        1,
        "one backend.down per outage"
    );
    assert!(!cap.named("backend.retry_scheduled").is_empty());

    // Let the retries reach the cap: wait for a retry whose delay is drawn below the cap
    // itself (attempt n + 1 is drawn below ceiling(n)).
    let capped = (1..)
        .find(|&n| policy.ceiling(n) >= policy.cap)
        .expect("the ceiling reaches the cap");
    wait_until(
        policy.cap * (capped + 1) + DEADLINE * (capped + 1) + SLACK,
        "retries at the cap",
        || {
            cap.named("backend.retry_scheduled")
                .iter()
                .filter_map(|e| e.field("attempt")?.parse::<u32>().ok())
                .any(|attempt| attempt > capped)
        },
    )
    .await;

    // Back on the same port: up again within one backoff ceiling (plus one connect). The
    // schedule guarantees it: no retry is scheduled further out than the cap.
    let restarted = Instant::now();
    server.start_again();
    let bound = policy.cap + DEADLINE;
    wait_until(bound + SLACK, "reconnect", || redis_status(&h).is_up()).await;
    let delays: Vec<u64> = cap
        .named("backend.retry_scheduled")
        .iter()
        .filter_map(|e| e.field("retry_in_ms")?.parse().ok())
        .collect();
    assert!(
        delays.iter().all(|&ms| ms <= policy.cap.as_millis() as u64),
        "a retry was scheduled beyond the cap: {delays:?}"
    );
    redis_h.ping().await.expect("ping after reconnect");
    let up = cap.named("backend.up");
    assert_eq!(up.len(), 2);
    // The outage it reports covers at least the time the server was seen down.
    let seen_down = restarted.duration_since(went_down).as_millis() as u64;
    assert!(
        up[1]
            .field("down_ms")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|ms| ms >= seen_down),
        "{:?}, down for at least {seen_down} ms",
        up[1]
    );
    let status = redis_status(&h);
    assert_eq!(status.restarts, 1);
    assert_eq!(status.state, StateLabel::Up);

    assert!(h.shutdown(Duration::from_secs(1)).await.is_empty());
    assert_eq!(redis_status(&h).state, StateLabel::Disabled);
    // Calls are told the backend is shut down; messages to the stopped actor are not delivered.
    let err = redis_h.ping().await.expect_err("actor stopped");
    assert!(
        matches!(err, RedisError::Call(CallError::Disabled { .. })),
        "{err:?}"
    );
    let err = redis_h
        .send(lucid_actors::redis::Unsubscribe {
            id: lucid_actors::redis::SubscriptionId(1),
        })
        .await
        .expect_err("actor stopped");
    assert!(
        matches!(err, RedisError::Call(CallError::NotDelivered { .. })),
        "{err:?}"
    );
}

#[actix_rt::test]
async fn frozen_server_never_makes_calls_hang() {
    let server = redis();
    let cfg = config(&server.url());
    let policy = BackoffPolicy::from_config(&cfg.supervisor);
    let cap = events::capture();
    let h = lucid_actors::start(&cfg, Roles::SIBLING);
    let redis_h = h.redis.clone().expect("redis enabled");
    wait_until(Duration::from_secs(5), "first connect", || {
        redis_status(&h).is_up()
    })
    .await;

    server.pause();
    // In-flight calls run into the deadline, all of them, concurrently.
    let started = Instant::now();
    let calls: Vec<_> = (0..8).map(|_| redis_h.ping()).collect();
    let results = futures_util::future::join_all(calls).await;
    let took = started.elapsed();
    // Each ran into the deadline (the error names it); the wall clock only tells an answer
    // from a hang.
    for r in &results {
        assert!(
            matches!(r, Err(RedisError::Call(CallError::DeadlineExceeded { after, .. })) if *after == DEADLINE),
            "{r:?}"
        );
    }
    assert!(took < DEADLINE + SLACK, "calls took {took:?}");

    // The actor then gives the connection up; later calls are answered at once.
    wait_until(DEADLINE * 4 + SLACK, "backend down", || {
        !redis_status(&h).is_up()
    })
    .await;
    let err = at_once(redis_h.ping()).expect_err("frozen");
    assert!(
        matches!(err, RedisError::Call(CallError::Unavailable { .. })),
        "{err:?}"
    );

    // Reconnect attempts against the frozen server time out rather than hang: attempts keep
    // failing with a timeout and being rescheduled.
    let retries = || cap.named("backend.retry_scheduled");
    let before = retries().len();
    wait_until(
        (policy.cap + DEADLINE) * 3 + SLACK,
        "two more reconnect attempts",
        || retries().len() >= before + 2,
    )
    .await;
    assert!(
        retries()[before..]
            .iter()
            .all(|e| matches!(e.code, Some("timeout" | "deadline_exceeded"))),
        "{:?}",
        &retries()[before..]
    );
    let status = redis_status(&h);
    assert!(!status.is_up(), "{status:?}");
    assert!(status.last_error.is_some(), "{status:?}");

    server.resume();
    wait_until(Duration::from_secs(3), "reconnect after SIGCONT", || {
        redis_status(&h).is_up()
    })
    .await;
    redis_h.ping().await.expect("ping after resume");
    assert!(
        h.shutdown(Duration::from_secs(1)).await.is_empty(),
        "actors must quit"
    );
}

#[actix_rt::test]
async fn unreachable_at_start_reports_once_and_keeps_retrying() {
    let port = lucid_testkit::free_port();
    let cfg = config(&format!("redis://127.0.0.1:{port}/0"));
    let cap = events::capture();
    let h = lucid_actors::start(&cfg, Roles::SIBLING);
    wait_until(Duration::from_secs(3), "several retries", || {
        cap.named("backend.retry_scheduled").len() >= 3
    })
    .await;
    let down = cap.named("backend.down");
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].code, Some("connection_refused"));
    let retries = cap.named("backend.retry_scheduled");
    let attempts: Vec<u32> = retries
        .iter()
        .filter_map(|e| e.field("attempt")?.parse().ok())
        .collect();
    assert_eq!(attempts[..3], [2, 3, 4], "attempts count up");
    for e in &retries {
        let ms: u64 = e
            .field("retry_in_ms")
            .and_then(|v| v.parse().ok())
            .expect("retry_in_ms");
        assert!(ms <= 400, "delay {ms} ms above the cap");
    }
    assert!(h.registry.readiness().is_err());
    assert!(
        h.shutdown(Duration::from_secs(1)).await.is_empty(),
        "actors must quit"
    );
}
