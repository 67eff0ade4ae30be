//! Helpers shared by the integration tests that run the actors in process.

use std::time::Duration;

use lucid_actors::Config;

/// The call deadline of [`fast_config`].
pub const DEADLINE: Duration = Duration::from_millis(500);

/// How much later than due a timer may fire, or a reply arrive, on a loaded 2-core machine.
/// Wall-clock upper bounds add it, so that they catch a hang and never a busy neighbour; the
/// property a test is about (which deadline fired, what happened first) is asserted through
/// the error or the order of events, never through this bound.
pub const SLACK: Duration = Duration::from_secs(5);

/// The answer of a call that must not wait for anything — no network, no timer, no other
/// task: its future is ready the first time it is polled. This is what "answered at once,
/// without touching the network" means, and unlike a wall-clock bound ("under 100 ms") it
/// holds however loaded the machine is.
#[track_caller]
#[allow(dead_code)]
pub fn at_once<F: std::future::Future>(call: F) -> F::Output {
    futures_util::FutureExt::now_or_never(call).expect("answered at once, without waiting")
}

/// The defaults with Redis at `redis_url`, MongoDB and Elasticsearch off, and supervision fast
/// enough for tests: a 500 ms deadline, probes every 100 ms, backoff from 50 ms to 400 ms.
pub fn fast_config(redis_url: &str) -> Config {
    let mut c = Config::defaults().expect("defaults");
    c.redis.url = redis_url.into();
    c.mongodb.enabled = false;
    c.elasticsearch.enabled = false;
    c.supervisor.call_deadline = DEADLINE;
    c.supervisor.probe_interval = Duration::from_millis(100);
    c.supervisor.backoff_base = Duration::from_millis(50);
    c.supervisor.backoff_cap = Duration::from_millis(400);
    c
}

/// The defaults with MongoDB at `mongo_url` (Redis and Elasticsearch off) and the same fast
/// supervision as [`fast_config`].
#[allow(dead_code)]
pub fn fast_mongo_config(mongo_url: &str) -> Config {
    let mut c = fast_config("redis://127.0.0.1:1");
    c.redis.enabled = false;
    c.mongodb.enabled = true;
    c.mongodb.url = mongo_url.into();
    c
}
