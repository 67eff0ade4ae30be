//! lucid-bench: what the actors cost, measured against the raw driver in the same run.
//!
//! `cargo bench --bench lucid_bench -- [filter]` starts its servers through the test kit and,
//! for every workload and number of requests in flight, runs the actor path (the
//! `lucid-actors` API) and the direct-driver path (the same commands on a driver connection),
//! interleaved (ABBA within each round), for `ROUNDS` rounds of `LUCID_BENCH_SECONDS`
//! (default 1) per path each. It reports the
//! median throughput, p50/p99 latency, the client CPU per operation (getrusage of this
//! process: the actors, the driver and the workers; never the server), and the ratios
//! actor / direct — as a table and as JSON in `target/lucid-bench.json`. The server is often
//! the bottleneck here, so the CPU ratio is the number that shows the actors' own cost.
//!
//! Both paths run on one thread (an actix System), as they would in a sibling that embeds
//! the actors. Each backend has its workloads (`redis_workloads`, `mongo_workloads`) and a
//! section that starts its server; `cargo bench --bench lucid_bench -- mongo` runs one.
//! `-- http` measures the daemon's HTTP API against a bare actix-web route and the actor call
//! ([`http`], in `lucid_bench/http.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lucid_actors::mongo::bson::{DateTime, Document, doc};
use lucid_actors::mongo::{Aggregate, Collection, FindOne, InsertOne, MongoHandle, UpdateOne};
use lucid_actors::redis::{CacheGet, CacheSet, Key, RateSubject, RedisHandle, locks, ratelimit};
use lucid_actors::search::{Bulk, BulkDoc, Entity, Filter, Search, SearchHandle};
use lucid_actors::{Config, Handles, Roles};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::json;

// Each in a folder of its own: a file directly in benches/ would be a bench target of its own.
#[path = "lucid_bench/drill.rs"]
mod drill;
#[path = "lucid_bench/http.rs"]
mod http;

const ROUNDS: usize = 5;
const IN_FLIGHT: [usize; 3] = [1, 16, 64];
const KEYS: u64 = 1000;

type OpFuture = Pin<Box<dyn Future<Output = bool>>>;
/// One operation for worker `w`, its `n`-th; answers whether it succeeded.
type Op = Rc<dyn Fn(usize, u64) -> OpFuture>;

struct Workload {
    backend: &'static str,
    name: &'static str,
    actor: Op,
    direct: Op,
}

#[derive(Default, Clone)]
struct Run {
    ops: u64,
    errors: u64,
    elapsed: Duration,
    cpu: Duration,
    sys: Duration,
    latencies_us: Vec<u32>,
}

impl Run {
    /// Adds another slice of the same path.
    fn absorb(&mut self, other: Run) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
        self.sys += other.sys;
        self.latencies_us.extend(other.latencies_us);
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_us_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    fn sys_us_per_op(&self) -> f64 {
        self.sys.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
}

/// Median of the rounds' throughput and CPU, percentiles over all their samples.
#[derive(serde::Serialize)]
struct Summary {
    ops_per_sec: f64,
    cpu_us_per_op: f64,
    /// The kernel's share of `cpu_us_per_op` (socket reads and writes).
    sys_us_per_op: f64,
    p50_us: u32,
    p99_us: u32,
    errors: u64,
}

impl Summary {
    fn of(runs: &[Run]) -> Summary {
        let mut all: Vec<u32> = runs
            .iter()
            .flat_map(|r| r.latencies_us.iter().copied())
            .collect();
        all.sort_unstable();
        let pct = |p: f64| {
            all.get(((all.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(0)
        };
        Summary {
            ops_per_sec: median(runs.iter().map(Run::ops_per_sec).collect()),
            cpu_us_per_op: median(runs.iter().map(Run::cpu_us_per_op).collect()),
            sys_us_per_op: median(runs.iter().map(Run::sys_us_per_op).collect()),
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            errors: runs.iter().map(|r| r.errors).sum(),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[derive(serde::Serialize)]
struct Row {
    backend: &'static str,
    workload: &'static str,
    in_flight: usize,
    actor: Summary,
    direct: Summary,
    /// actor / direct: ≥ 0.9 is the target at 64 in flight.
    throughput_ratio: f64,
    /// actor / direct: ≤ 1.15 is the target at 64 in flight.
    cpu_ratio: f64,
}

/// (user, system) CPU time of this whole process.
fn cpu_times() -> (Duration, Duration) {
    // SAFETY: getrusage writes into the struct we pass; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// User and system CPU time of this whole process.
fn cpu_total() -> Duration {
    let (user, sys) = cpu_times();
    user + sys
}

async fn measure(op: &Op, in_flight: usize, duration: Duration) -> Run {
    let (user_before, sys_before) = cpu_times();
    let started = Instant::now();
    let stop = started + duration;
    let workers: Vec<_> = (0..in_flight)
        .map(|w| {
            let op = op.clone();
            actix_rt::spawn(async move {
                // Sized for the fastest workloads, so growing it is rare (and equal for both paths).
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut errors = 0;
                let mut n = 0;
                while Instant::now() < stop {
                    let t = Instant::now();
                    if !op(w, n).await {
                        errors += 1;
                    }
                    latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    n += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut run = Run::default();
    for worker in workers {
        if let Ok((latencies, errors)) = worker.await {
            // Only successes count: a path that failed fast must not look fast.
            run.ops += latencies.len() as u64 - errors;
            run.errors += errors;
            run.latencies_us.extend(latencies);
        }
    }
    run.elapsed = started.elapsed();
    let (user_after, sys_after) = cpu_times();
    run.cpu = (user_after + sys_after) - (user_before + sys_before);
    run.sys = sys_after - sys_before;
    run
}

fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize, u64) -> Fut + 'static,
    Fut: Future<Output = bool> + 'static,
{
    Rc::new(move |w, n| Box::pin(f(w, n)))
}

/// GET/SET on a driver connection: alternately PSETEX and GET.
fn direct_get_set(c: MultiplexedConnection) -> Op {
    op(move |w, n| {
        let mut c = c.clone();
        async move {
            let key = raw_kv_key(w, n);
            if n % 2 == 0 {
                c.pset_ex::<_, _, ()>(&key, VALUE, TTL.as_millis() as u64)
                    .await
                    .is_ok()
            } else {
                c.get::<_, Option<Vec<u8>>>(&key).await.is_ok()
            }
        }
    })
}

/// The raw key the direct path uses: what a driver user would write, no validation.
fn raw_kv_key(w: usize, n: u64) -> String {
    format!("lucid:bench:kv:{}", (w as u64 * 7919 + n) % KEYS)
}

fn kv_key(w: usize, n: u64) -> Key {
    Key::new("bench", "kv", &((w as u64 * 7919 + n) % KEYS).to_string())
        .unwrap_or_else(|e| panic!("{e}"))
}

const VALUE: &[u8] = &[b'x'; 100];
const TTL: Duration = Duration::from_secs(300);

fn redis_workloads(h: RedisHandle, conn: MultiplexedConnection) -> Vec<Workload> {
    let mut out = Vec::new();

    // GET/SET: alternating SET (PSETEX, with the cache TTL) and GET of 100-byte values.
    let (ha, c) = (h.clone(), conn.clone());
    out.push(Workload {
        backend: "redis",
        name: "get/set",
        actor: op(move |w, n| {
            let h = ha.clone();
            async move {
                let key = kv_key(w, n);
                if n % 2 == 0 {
                    h.call(CacheSet {
                        key,
                        value: VALUE.to_vec(),
                        ttl: Some(TTL),
                    })
                    .await
                    .is_ok()
                } else {
                    h.call(CacheGet { key }).await.is_ok()
                }
            }
        }),
        direct: direct_get_set(c),
    });

    // The same GET/SET sent to the actor's mailbox (`Addr::send`), as a sibling sending
    // messages does: shows what the mailbox hop costs over the handle's direct call.
    let (ha, c) = (h.clone(), conn.clone());
    out.push(Workload {
        backend: "redis",
        name: "get/set via mailbox",
        actor: op(move |w, n| {
            let addr = ha.addr().clone();
            async move {
                let key = kv_key(w, n);
                if n % 2 == 0 {
                    matches!(
                        addr.send(CacheSet {
                            key,
                            value: VALUE.to_vec(),
                            ttl: Some(TTL)
                        })
                        .await,
                        Ok(Ok(()))
                    )
                } else {
                    matches!(addr.send(CacheGet { key }).await, Ok(Ok(_)))
                }
            }
        }),
        direct: direct_get_set(c),
    });

    // Rate-limit check: the same sliding-window script, many subjects.
    let (ha, c) = (h.clone(), conn.clone());
    out.push(Workload {
        backend: "redis",
        name: "rate-limit check",
        actor: op(move |w, n| {
            let h = ha.clone();
            async move {
                let who = RateSubject::User(format!("bench-{}", (w as u64 + n) % KEYS));
                h.check_rate_limit(who, 1_000_000, Duration::from_secs(60))
                    .await
                    .is_ok()
            }
        }),
        direct: op(move |w, n| {
            let mut c = c.clone();
            async move {
                let key = format!(
                    "lucid:ratelimit:user:bench-{}:1000000per60000ms",
                    (w as u64 + n) % KEYS
                );
                ratelimit::SLIDING_WINDOW
                    .key(key)
                    .arg(1_000_000u32)
                    .arg(60_000u64)
                    .arg(rand::random::<u64>())
                    .invoke_async::<(u8, u32, u64)>(&mut c)
                    .await
                    .is_ok()
            }
        }),
    });

    // Lock acquire + release: one lock per worker, so no waiting, just the two scripts.
    let (ha, c) = (h.clone(), conn.clone());
    out.push(Workload {
        backend: "redis",
        name: "lock acquire+release",
        actor: op(move |w, _| {
            let h = ha.clone();
            async move {
                let name = format!("bench-{w}");
                match h
                    .acquire_lock(&name, Some(Duration::from_secs(10)), None)
                    .await
                {
                    Ok(guard) => h.release_lock(&guard).await.is_ok(),
                    Err(_) => false,
                }
            }
        }),
        direct: op(move |w, _| {
            let mut c = c.clone();
            async move {
                let token = format!("{:032x}", rand::random::<u128>());
                let acquired: Result<(u8, i64), _> = locks::ACQUIRE
                    .key(format!("lucid:locks:lock:bench-{w}"))
                    .key(format!("lucid:locks:fence:bench-{w}"))
                    .arg(&token)
                    .arg(10_000u64)
                    .invoke_async(&mut c)
                    .await;
                if !matches!(acquired, Ok((1, _))) {
                    return false;
                }
                locks::RELEASE
                    .key(format!("lucid:locks:lock:bench-{w}"))
                    .arg(&token)
                    .invoke_async::<u64>(&mut c)
                    .await
                    .is_ok_and(|n| n == 1)
            }
        }),
    });

    // Publish a 100-byte message (no subscriber: the server's fan-out is not measured).
    out.push(Workload {
        backend: "redis",
        name: "publish",
        actor: op(move |_, _| {
            let h = h.clone();
            async move { h.publish("lucid:bench:events", VALUE).await.is_ok() }
        }),
        direct: op(move |_, _| {
            let mut c = conn.clone();
            async move {
                c.publish::<_, _, u64>("lucid:bench:events", VALUE)
                    .await
                    .is_ok()
            }
        }),
    });
    out
}

/// `redis-benchmark -c 64 -t get,set` against the same server, for comparison.
fn redis_benchmark(port: u16) -> serde_json::Value {
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-c",
            "64",
            "-n",
            "200000",
            "-t",
            "get,set",
            "-q",
        ])
        .output();
    let Ok(out) = out else {
        return json!({"error": "redis-benchmark not found (it comes with Debian's redis-tools)"});
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut result = serde_json::Map::new();
    // Lines like "SET: 98765.43 requests per second, p50=0.311 msec" (with \r progress before).
    for line in text.split(['\r', '\n']) {
        if let Some((name, rest)) = line.split_once(": ")
            && let Some(rps) = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            && rest.contains("requests per second")
        {
            result.insert(name.trim().to_lowercase(), json!(rps));
        }
    }
    serde_json::Value::Object(result)
}

/// Pins `pid` (0: this process) to one CPU. With two or more CPUs the benchmark runs on CPU 0
/// and the server on CPU 1, so the two do not trade places mid-run: the biggest source of
/// run-to-run noise on a small machine. Best effort.
fn pin(pid: u32, cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; sched_setaffinity only
    // reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ) == 0
    }
}

fn main() {
    if let Ok(job) = std::env::var(BACKUP_CHILD) {
        backup_child(&job);
        return;
    }
    if let Ok(job) = std::env::var(FULL_CHILD) {
        full_child(&job);
        return;
    }
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let seconds: f64 = std::env::var("LUCID_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let duration = Duration::from_secs_f64(seconds);

    let wants = |section: &str| {
        filter
            .as_deref()
            .is_none_or(|f| section.contains(f) || f.contains(section))
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let volume = if wants("volume") {
        volume_bench(duration)
    } else {
        json!(null)
    };
    // Its own name: `volume` alone does not take snapshots, nor mount a btrfs.
    let snapshot = if wants("snapshot") {
        snapshot_bench()
    } else {
        json!(null)
    };
    let backup = if wants("backup") {
        backup_bench()
    } else {
        json!(null)
    };
    // Its own section name: a filter containing "redis" or "backup" runs those sections too.
    let redis_backup = if wants("keyspace") {
        redis_backup_bench()
    } else {
        json!(null)
    };
    // A name of its own that no other filter matches: `backup` alone does not start three
    // servers and plant 200 MB.
    let full_backup = if wants("everystore") {
        full_backup_bench()
    } else {
        json!(null)
    };
    // The HTTP API against a bare actix-web route and the actor call (lucid_bench/http.rs).
    let http = if wants("http") {
        http::bench()
    } else {
        json!(null)
    };
    // Plants the `everystore` data set too, then drills a backup of it.
    let drill = if wants("drill") {
        drill::drill_bench()
    } else {
        json!(null)
    };
    let mut pinned = false;
    let mut rows = Vec::new();
    let mut redis_bench = json!(null);
    if wants("redis") {
        let server = lucid_testkit::redis();
        pinned = pin_pair(cpus, &server);
        let (r, bench) = redis_section(&server, filter.as_deref(), duration);
        rows.extend(r);
        redis_bench = bench;
        println!("\nredis-benchmark -c 64 -t get,set (same server): {redis_bench}");
    }
    if wants("mongo") {
        let server = lucid_testkit::mongo();
        pinned = pin_pair(cpus, &server);
        rows.extend(mongo_section(&server, filter.as_deref(), duration));
    }
    if wants("elasticsearch") {
        let server = lucid_testkit::elasticsearch();
        pinned = pin_pair(cpus, &server);
        rows.extend(es_section(&server, filter.as_deref(), duration));
    }
    write_report(json!({
        "seconds_per_run": seconds,
        "rounds": ROUNDS,
        "cpus": cpus,
        "pinned": pinned,
        "results": rows,
        "redis_benchmark_c64": redis_bench,
        "volume": volume,
        "snapshot": snapshot,
        "backup": backup,
        "redis_backup": redis_backup,
        "full_backup": full_backup,
        "http": http,
        "drill": drill,
    }));
}

/// Pins the benchmark to CPU 0 and `server` to CPU 1 when there are two CPUs (see [`pin`]).
fn pin_pair(cpus: usize, server: &lucid_testkit::Server) -> bool {
    let pinned = cpus >= 2 && pin(0, 0) && server.pid().is_some_and(|pid| pin(pid, 1));
    println!(
        "{cpus} CPUs; {}",
        if pinned {
            "benchmark pinned to CPU 0, server to CPU 1"
        } else {
            "not pinned"
        }
    );
    pinned
}

fn wanted(workloads: Vec<Workload>, filter: Option<&str>) -> Vec<Workload> {
    workloads
        .into_iter()
        .filter(|w| filter.is_none_or(|f| matches_filter(&format!("{}/{}", w.backend, w.name), f)))
        .collect()
}

/// LUCID_BENCH_ONLY=actor|direct: runs one path alone, once, at 64 in flight — for counting
/// its instructions under `valgrind --tool=callgrind` (repeatable, unlike time). Answers
/// whether it was set.
async fn only_one_path(workloads: &[Workload], duration: Duration) -> bool {
    let Ok(only) = std::env::var("LUCID_BENCH_ONLY") else {
        return false;
    };
    for w in workloads {
        let path = match only.as_str() {
            "actor" => &w.actor,
            "direct" => &w.direct,
            other => panic!("LUCID_BENCH_ONLY={other:?}: say actor or direct"),
        };
        // Warm up (scripts loaded) so the count is of the steady state.
        measure(path, 16, Duration::from_millis(100)).await;
        let run = measure(path, 64, duration).await;
        println!("{}/{} {only}: {} ops", w.backend, w.name, run.ops);
    }
    true
}

fn redis_section(
    server: &lucid_testkit::Server,
    filter: Option<&str>,
    duration: Duration,
) -> (Vec<Row>, serde_json::Value) {
    let system = actix_rt::System::new();
    system.block_on(async {
        let (handles, _) = start_only(
            |c| {
                c.redis.enabled = true;
                c.redis.url = server.url().into();
            },
            |_| true,
        )
        .await;
        let h = handles
            .redis
            .clone()
            .unwrap_or_else(|| panic!("redis enabled"));
        let conn = redis::Client::open(server.url())
            .unwrap_or_else(|e| panic!("client: {e}"))
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("direct connection: {e}"));

        let workloads = wanted(redis_workloads(h, conn), filter);
        if only_one_path(&workloads, duration).await {
            handles.shutdown(Duration::from_secs(1)).await;
            return (Vec::new(), json!(null));
        }
        let rows = compare(&workloads, duration).await;
        handles.shutdown(Duration::from_secs(1)).await;
        let bench = if filter.is_none_or(|f| matches_filter("redis/redis-benchmark", f)) {
            redis_benchmark(server.port())
        } else {
            json!(null)
        };
        (rows, bench)
    })
}

/// The actors with only the backend `configure` enables, once it is up and `ready` holds (its
/// bootstrap has run).
async fn start_only(
    configure: impl FnOnce(&mut Config),
    ready: impl Fn(&Handles) -> bool,
) -> (Handles, Config) {
    let mut cfg = Config::defaults().unwrap_or_else(|e| panic!("defaults: {e}"));
    cfg.redis.enabled = false;
    cfg.mongodb.enabled = false;
    cfg.elasticsearch.enabled = false;
    configure(&mut cfg);
    let handles = lucid_actors::start(&cfg, Roles::SIBLING);
    wait_ready(&handles, ready, Duration::from_secs(30)).await;
    (handles, cfg)
}

/// Waits until every enabled backend is up and `ready` holds; panics after `within`.
async fn wait_ready(handles: &Handles, ready: impl Fn(&Handles) -> bool, within: Duration) {
    let deadline = Instant::now() + within;
    while handles.registry.readiness().is_err() || !ready(handles) {
        assert!(
            Instant::now() < deadline,
            "the actor never came up (and bootstrapped)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// MongoDB, when it runs, has bootstrapped (what a backup of the data set waits for).
fn mongo_bootstrapped(h: &Handles) -> bool {
    h.mongo
        .as_ref()
        .is_none_or(|m| m.last_bootstrap().is_some())
}

/// Both paths of every workload compared — or one path alone under callgrind.
async fn run(workloads: &[Workload], duration: Duration) -> Vec<Row> {
    if only_one_path(workloads, duration).await {
        Vec::new()
    } else {
        compare(workloads, duration).await
    }
}

/// Runs every workload at each number in flight, the actor and direct paths interleaved, and
/// prints and answers one row per (workload, in flight).
async fn compare(workloads: &[Workload], duration: Duration) -> Vec<Row> {
    let mut rows = Vec::new();
    for w in workloads {
        // Warm up both paths (scripts loaded, pools filled).
        measure(&w.actor, 16, Duration::from_millis(200)).await;
        measure(&w.direct, 16, Duration::from_millis(200)).await;
        for in_flight in IN_FLIGHT {
            let (mut actor, mut direct) = (Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                // Each round is two half-slices per path in ABBA order (BAAB on odd
                // rounds), so drift in the machine's speed falls on both paths alike.
                let half = duration / 2;
                let (first, second) = if round % 2 == 0 {
                    (&w.actor, &w.direct)
                } else {
                    (&w.direct, &w.actor)
                };
                let mut a = measure(first, in_flight, half).await;
                let b1 = measure(second, in_flight, half).await;
                let b2 = measure(second, in_flight, half).await;
                a.absorb(measure(first, in_flight, half).await);
                let mut b = b1;
                b.absorb(b2);
                let (a, b) = if round % 2 == 0 { (a, b) } else { (b, a) };
                actor.push(a);
                direct.push(b);
            }
            let (a, d) = (Summary::of(&actor), Summary::of(&direct));
            let row = Row {
                backend: w.backend,
                workload: w.name,
                in_flight,
                throughput_ratio: a.ops_per_sec / d.ops_per_sec,
                cpu_ratio: a.cpu_us_per_op / d.cpu_us_per_op,
                actor: a,
                direct: d,
            };
            print_row(&row);
            rows.push(row);
        }
    }
    rows
}

fn write_report(report: serde_json::Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lucid-bench.json");
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    ) {
        Ok(()) => println!("JSON: {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}

/// A substring, or an exact name when the filter ends in `$`.
fn matches_filter(name: &str, filter: &str) -> bool {
    match filter.strip_suffix('$') {
        Some(exact) => name == exact,
        None => name.contains(filter),
    }
}

fn print_row(r: &Row) {
    static HEADER: std::sync::Once = std::sync::Once::new();
    HEADER.call_once(|| {
        println!(
            "{:<28} {:>4} | {:>10} {:>10} {:>6} | {:>7} {:>7} | {:>7} {:>7} | {:>8} {:>8} | {:>6}",
            "workload",
            "in",
            "actor/s",
            "direct/s",
            "ratio",
            "a p50",
            "d p50",
            "a p99",
            "d p99",
            "a cpu",
            "d cpu",
            "cpu x"
        );
    });
    println!(
        "{:<28} {:>4} | {:>10.0} {:>10.0} {:>6.2} | {:>6}u {:>6}u | {:>6}u {:>6}u | {:>7.2}u {:>7.2}u | {:>6.2}{}",
        format!("{}/{}", r.backend, r.workload),
        r.in_flight,
        r.actor.ops_per_sec,
        r.direct.ops_per_sec,
        r.throughput_ratio,
        r.actor.p50_us,
        r.direct.p50_us,
        r.actor.p99_us,
        r.direct.p99_us,
        r.actor.cpu_us_per_op,
        r.direct.cpu_us_per_op,
        r.cpu_ratio,
        if r.actor.errors + r.direct.errors > 0 {
            format!("  ({} errors)", r.actor.errors + r.direct.errors)
        } else {
            String::new()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Volumes

/// A tree like a Lucid volume's: a few hundred chunk files of half-compressible data and a few
/// thousand small ones.
fn plant_volume(dir: &std::path::Path, chunk_files: usize) -> u64 {
    let mut total = 0u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 512 * 1024];
    for i in 0..chunk_files {
        // Half random bytes, half text: compresses roughly 2:1, like real chunks and logs.
        for (j, b) in chunk.iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = if (j / 4096) % 2 == 0 {
                state as u8
            } else {
                b"lucid block merkle chunk "[j % 25]
            };
        }
        let sub = dir.join(format!("chunks/{:02}", i % 16));
        std::fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("mkdir: {e}"));
        std::fs::write(sub.join(format!("c{i:04}.bin")), &chunk)
            .unwrap_or_else(|e| panic!("write: {e}"));
        total += chunk.len() as u64;
    }
    std::fs::create_dir_all(dir.join("meta")).unwrap_or_else(|e| panic!("mkdir: {e}"));
    for i in 0..2000 {
        let body = format!(
            "{{\"id\":{i},\"hash\":\"{:016x}\",\"size\":{}}}\n",
            i * 7919,
            i * 31
        );
        std::fs::write(dir.join(format!("meta/m{i:05}.json")), &body)
            .unwrap_or_else(|e| panic!("write: {e}"));
        total += body.len() as u64;
    }
    total
}

/// Export through the actor, compressed with zstd -3 (multithreaded), against
/// `tar -c | zstd -3 -T0` on the same tree; then the latency of the quick operations, and of
/// usage and inspect on 100,000 files.
fn volume_bench(duration: Duration) -> serde_json::Value {
    use lucid_actors::volume::{
        CheckHealth, CreateVolume, InspectVolume, ListVolumes, MeasureUsage, ResizeVolume,
        VolumeActor, VolumeName,
    };
    let _ = duration;
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut cfg = Config::defaults().unwrap_or_else(|e| panic!("defaults: {e}"));
    cfg.volumes.root = root.path().to_path_buf();
    cfg.supervisor.mailbox_capacity = 64;
    let bytes = plant_volume(&root.path().join("chunks"), 200);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let name = |n: &str| VolumeName::new(n).unwrap_or_else(|e| panic!("{e}"));

    let system = actix_rt::System::new();
    system.block_on(async {
        let v = VolumeActor::start_with(&cfg.volumes, &cfg.supervisor);
        v.call(ListVolumes).await.unwrap_or_else(|e| panic!("start: {e}"));

        let actor_export = || async {
            let started = Instant::now();
            let (user0, sys0) = cpu_times();
            let mut chunks = v.export(name("chunks")).await.unwrap_or_else(|e| panic!("export: {e}"));
            let mut encoder = zstd::stream::Encoder::new(std::io::sink(), 3).unwrap_or_else(|e| panic!("zstd: {e}"));
            let _ = encoder.multithread(threads);
            let mut tar_bytes = 0u64;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.unwrap_or_else(|e| panic!("export chunk: {e}"));
                tar_bytes += chunk.len() as u64;
                std::io::Write::write_all(&mut encoder, &chunk).unwrap_or_else(|e| panic!("zstd: {e}"));
            }
            encoder.finish().unwrap_or_else(|e| panic!("zstd: {e}"));
            let (user1, sys1) = cpu_times();
            (started.elapsed(), (user1 + sys1) - (user0 + sys0), tar_bytes)
        };
        let tar_zstd = || {
            let started = Instant::now();
            // SAFETY: getrusage of our waited-for children; a zeroed struct is valid.
            let children = || unsafe {
                let mut u: libc::rusage = std::mem::zeroed();
                libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
                Duration::new(u.ru_utime.tv_sec as u64, u.ru_utime.tv_usec as u32 * 1000)
                    + Duration::new(u.ru_stime.tv_sec as u64, u.ru_stime.tv_usec as u32 * 1000)
            };
            let before = children();
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("tar -cf - -C '{}' . | zstd -3 -T0 -q -c > /dev/null", root.path().join("chunks").display()))
                .status()
                .unwrap_or_else(|e| panic!("sh: {e}"));
            assert!(status.success(), "tar | zstd failed (apt-get install zstd)");
            (started.elapsed(), children() - before)
        };

        let (mut actor_rates, mut direct_rates, mut actor_cpu, mut direct_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mb = bytes as f64 / (1 << 20) as f64;
        let _ = actor_export().await; // warm the page cache for both
        for round in 0..ROUNDS {
            let one_actor = || async {
                let (t, cpu, _) = actor_export().await;
                (mb / t.as_secs_f64(), cpu.as_secs_f64())
            };
            let (a, d) = if round % 2 == 0 {
                let a = one_actor().await;
                (a, tar_zstd())
            } else {
                let d = tar_zstd();
                (one_actor().await, d)
            };
            actor_rates.push(a.0);
            actor_cpu.push(a.1);
            direct_rates.push(mb / d.0.as_secs_f64());
            direct_cpu.push(d.1.as_secs_f64());
        }
        let (a_rate, d_rate) = (median(actor_rates), median(direct_rates));
        let (a_cpu, d_cpu) = (median(actor_cpu), median(direct_cpu));
        println!("\nvolume export, {mb:.0} MiB tree, zstd -3 ({threads} threads) vs `tar -c | zstd -3 -T0`:");
        println!("  actor {a_rate:.1} MiB/s ({a_cpu:.2} s CPU), tar|zstd {d_rate:.1} MiB/s ({d_cpu:.2} s CPU): throughput ratio {:.2}", a_rate / d_rate);

        // Quick operations, each timed once after a warm-up; all should be well under 1 s.
        let mut quick = serde_json::Map::new();
        let time = |d: Duration| (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
        let t = Instant::now();
        v.call(CreateVolume { name: name("bench"), quota: None, kind: None, labels: Default::default() }).await.unwrap_or_else(|e| panic!("{e}"));
        quick.insert("create_ms".into(), json!(time(t.elapsed())));
        let t = Instant::now();
        v.call(ResizeVolume { name: name("bench"), quota: lucid_actors::config::ByteSize(20 << 30) }).await.unwrap_or_else(|e| panic!("{e}"));
        quick.insert("resize_ms".into(), json!(time(t.elapsed())));
        let t = Instant::now();
        v.call(CheckHealth { name: name("bench") }).await.unwrap_or_else(|e| panic!("{e}"));
        quick.insert("health_ms".into(), json!(time(t.elapsed())));
        let t = Instant::now();
        v.call(ListVolumes).await.unwrap_or_else(|e| panic!("{e}"));
        quick.insert("list_ms".into(), json!(time(t.elapsed())));

        // 100,000 files (in /dev/shm when there is one: creating them on this disk takes minutes).
        let shm = std::path::Path::new("/dev/shm");
        let many_root = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap_or_else(|e| panic!("{e}"));
        let mut many_cfg = cfg.volumes.clone();
        many_cfg.root = many_root.path().to_path_buf();
        let many = VolumeActor::start_with(&many_cfg, &cfg.supervisor);
        many.call(ListVolumes).await.unwrap_or_else(|e| panic!("{e}"));
        for d in 0..100 {
            let sub = many_root.path().join(format!("blocks/d{d:03}"));
            std::fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("{e}"));
            for f in 0..1000 {
                std::fs::write(sub.join(format!("f{f:04}")), b"x").unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let t = Instant::now();
        many.call(MeasureUsage { name: name("blocks") }).await.unwrap_or_else(|e| panic!("{e}"));
        quick.insert("usage_100k_files_ms".into(), json!(time(t.elapsed())));
        let t = Instant::now();
        many.call(InspectVolume { name: name("blocks") }).await.unwrap_or_else(|e| panic!("{e}"));
        quick.insert("inspect_100k_files_cached_ms".into(), json!(time(t.elapsed())));
        println!("  quick operations (ms): {}", serde_json::Value::Object(quick.clone()));
        json!({
            "tree_mib": mb,
            "zstd_threads": threads,
            "actor_mib_per_s": a_rate,
            "tar_zstd_mib_per_s": d_rate,
            "throughput_ratio": a_rate / d_rate,
            "actor_cpu_s": a_cpu,
            "tar_zstd_cpu_s": d_cpu,
            "quick_ms": quick,
        })
    })
}

/// A loop-mounted btrfs image in `dir` (the snapshot tests' reflink filesystem), unmounted
/// on drop; `Err` says why there is none (not root, no loop device, no mkfs.btrfs).
struct LoopBtrfs {
    at: std::path::PathBuf,
}

impl LoopBtrfs {
    fn mount(dir: &std::path::Path) -> Result<LoopBtrfs, String> {
        use std::process::Command;
        let run = |cmd: &mut Command| {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let (image, at) = (dir.join("btrfs.img"), dir.join("mnt"));
        std::fs::create_dir(&at).map_err(|e| e.to_string())?;
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        // Sparse; room for the tree, its snapshot and cp's copy.
        file.set_len(1 << 30).map_err(|e| e.to_string())?;
        drop(file);
        run(Command::new("mkfs.btrfs").arg("-q").arg(&image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&at))?;
        Ok(LoopBtrfs { at })
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.at).status();
    }
}

/// A snapshot of a 100 MiB volume with 2,000 small files (`plant_volume`'s tree) through the
/// actor — copy, then the blake3 manifest sealed over the copy — against
/// `cp -a --reflink=auto DIR SNAP` and blake3 of every copied file with `b3sum` (b3sum has no
/// recursive flag: `find -exec b3sum {} +`), on the same tree in the same run, ABBA; on the
/// copy path (the temporary directory's filesystem) and on the reflink path (a loop-mounted
/// btrfs, when this runs as root). Then the wall time of `volumes stats` (one `VolumeStats`
/// at the CLI's 250 ms interval). Without `b3sum` the comparison is skipped and says so.
fn snapshot_bench() -> serde_json::Value {
    let b3sum = std::process::Command::new("b3sum")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !b3sum {
        println!(
            "\nsnapshot: SKIPPED the comparison: b3sum is not installed (apt-get install b3sum)"
        );
    }
    let mut paths = serde_json::Map::new();
    let copy_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    paths.insert("copy".into(), snapshot_path(copy_dir.path(), b3sum));
    let reflink_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    match LoopBtrfs::mount(reflink_dir.path()) {
        Ok(fs) => {
            paths.insert("reflink".into(), snapshot_path(&fs.at, b3sum));
            drop(fs);
        }
        Err(e) => {
            println!("snapshot: SKIPPED the reflink path: no loop-mounted btrfs here: {e}");
            paths.insert("reflink".into(), json!({ "skipped": e }));
        }
    }
    json!({ "b3sum": b3sum, "paths": paths })
}

/// One snapshot comparison with its volumes root in `base`.
fn snapshot_path(base: &std::path::Path, b3sum: bool) -> serde_json::Value {
    use lucid_actors::volume::{
        CreateVolume, DeleteSnapshot, ListVolumes, TakeSnapshot, VolumeActor, VolumeName,
        VolumeStats,
    };
    let root = base.join("volumes");
    let scratch = base.join("cp");
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("mkdir: {e}"));
    std::fs::create_dir_all(&scratch).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let mut cfg = Config::defaults().unwrap_or_else(|e| panic!("defaults: {e}"));
    cfg.volumes.root = root.clone();
    let name = VolumeName::new("photos").unwrap_or_else(|e| panic!("{e}"));
    let system = actix_rt::System::new();
    system.block_on(async {
        let v = VolumeActor::start_with(&cfg.volumes, &cfg.supervisor);
        v.call(ListVolumes).await.unwrap_or_else(|e| panic!("start: {e}"));
        v.call(CreateVolume { name: name.clone(), quota: None, kind: None, labels: Default::default() })
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        let bytes = plant_volume(&root.join("photos"), 200);
        let mb = bytes as f64 / (1 << 20) as f64;
        let mut method = String::new();
        let actor = || {
            let v = v.clone();
            let name = name.clone();
            async move {
                let started = Instant::now();
                let info = v
                    .call(TakeSnapshot { name: name.clone(), snapshot: Some("bench".into()), label: None, allow_live: false })
                    .await
                    .unwrap_or_else(|e| panic!("snapshot: {e}"));
                let took = started.elapsed();
                v.call(DeleteSnapshot { name, snapshot: "bench".into() }).await.unwrap_or_else(|e| panic!("delete: {e}"));
                (took, format!("{:?}", info.method))
            }
        };
        let direct = || {
            let snap = scratch.join("snap");
            let started = Instant::now();
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg("cp -a --reflink=auto \"$1\" \"$2\" && find \"$2\" -type f -exec b3sum {} + > /dev/null")
                .args(["sh", &root.join("photos").display().to_string(), &snap.display().to_string()])
                .status()
                .unwrap_or_else(|e| panic!("sh: {e}"));
            let took = started.elapsed();
            assert!(status.success(), "cp -a --reflink=auto && b3sum failed");
            std::fs::remove_dir_all(&snap).unwrap_or_else(|e| panic!("rm: {e}"));
            took
        };
        let _ = actor().await; // warm the page cache for both
        let (mut a, mut d) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            if b3sum && round % 2 == 1 {
                d.push(direct().as_secs_f64());
            }
            let (t, m) = actor().await;
            method = m;
            a.push(t.as_secs_f64());
            if b3sum && round % 2 == 0 {
                d.push(direct().as_secs_f64());
            }
        }
        let a_s = median(a);
        let d_s = (!d.is_empty()).then(|| median(d));
        match d_s {
            Some(d_s) => println!(
                "\nsnapshot of a {mb:.0} MiB volume, 2,000 small files ({method}, {}): actor {a_s:.3} s, `cp -a --reflink=auto && b3sum` {d_s:.3} s: throughput ratio {:.2}",
                base.display(),
                d_s / a_s
            ),
            None => println!("\nsnapshot of a {mb:.0} MiB volume ({method}): actor {a_s:.3} s (no b3sum: no comparison)"),
        }
        let started = Instant::now();
        let stats = v
            .call(VolumeStats { name: Some(name.clone()), interval: Duration::from_millis(250) })
            .await
            .unwrap_or_else(|e| panic!("stats: {e}"));
        let stats_ms = started.elapsed().as_secs_f64() * 1000.0;
        println!(
            "  volumes stats (250 ms interval): {stats_ms:.0} ms; device {}",
            stats.first().and_then(|s| s.device.as_ref()).map_or("none", |d| d.name.as_str())
        );
        json!({
            "tree_mib": mb,
            "method": method,
            "actor_s": a_s,
            "cp_b3sum_s": d_s,
            "throughput_ratio": d_s.map(|d| d / a_s),
            "stats_ms": stats_ms,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Backup

/// Set in the environment of the child this benchmark starts to run one backup (see
/// [`backup_child`]): `<volumes root>\t<volume>\t<output dir>\t<recipient>`.
const BACKUP_CHILD: &str = "LUCID_BENCH_BACKUP_CHILD";

/// One encrypted volume backup through the real pipeline — the volume actor's export, zstd -3
/// multithreaded as a backup run uses it, age to one recipient, fs storage (synced before its
/// rename) — in a process of its own, so its CPU time and peak RSS are its own.
fn backup_child(job: &str) {
    use lucid_actors::backup::{BackupId, Codec, Recipients, Storage, pipeline};
    use lucid_actors::volume::{VolumeActor, VolumeName};
    let [root, volume, out, recipient] = job.split('\t').collect::<Vec<_>>()[..] else {
        panic!("{BACKUP_CHILD}={job:?}: want root, volume, output dir, recipient")
    };
    let mut cfg = Config::defaults().unwrap_or_else(|e| panic!("defaults: {e}"));
    cfg.volumes.root = root.into();
    let recipients = Recipients::parse("bench", &[recipient.to_owned()])
        .unwrap_or_else(|e| panic!("recipient: {e}"));
    let codec = Codec {
        compression: lucid_actors::config::Compression::Zstd,
        // As a backup run does for volumes: the cores, at most four.
        zstd_workers: std::thread::available_parallelism().map_or(1, |n| n.get().min(4) as u32),
        recipients,
    };
    let storage = Storage::fs(std::path::Path::new(out), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("storage: {e}"));
    actix_rt::System::new().block_on(async {
        cfg.supervisor.stream_idle_timeout = Duration::from_secs(30);
        cfg.supervisor.mailbox_capacity = 64;
        let v = VolumeActor::start_with(&cfg.volumes, &cfg.supervisor);
        let name = VolumeName::new(volume).unwrap_or_else(|e| panic!("{e}"));
        let export = v
            .export(name)
            .await
            .unwrap_or_else(|e| panic!("export: {e}"));
        let id = BackupId::new(chrono::Utc::now());
        let artifact = format!("volumes/{volume}.tar{}", codec.suffix());
        pipeline::write_artifact(&storage, &id, &artifact, volume, &codec, export)
            .await
            .unwrap_or_else(|e| panic!("backup: {e}"));
    });
}

/// What one child process took: wall time, CPU (user + system, its threads and children),
/// peak RSS (`ru_maxrss` from `wait4`: the largest single process of a pipeline).
struct ChildCost {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
}

fn run_child(mut cmd: std::process::Command) -> ChildCost {
    let started = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn: {e}"));
    let pid = child.id() as libc::pid_t;
    // SAFETY: waits for our own unreaped child; status and rusage are plain structs that
    // wait4 fills.
    let (status, usage) = unsafe {
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        let rc = libc::wait4(pid, &mut status, 0, &mut usage);
        assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
        (status, usage)
    };
    // Reaped by wait4: the Child must not be waited for again.
    std::mem::forget(child);
    let wall = started.elapsed();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed: status {status:#x}"
    );
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    ChildCost {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
    }
}

/// Encrypted volume backup to fs through lucid-db's pipeline against the stock
/// `tar | zstd -3 -T0 | age | tee >(sha256sum) > FILE && sync FILE` on the same tree, for each
/// size in `LUCID_BENCH_BACKUP_MB` (default `100`; docs/benchmark.md used `100,500`): the
/// median of `ROUNDS` interleaved runs of each, each run a process of its own.
fn backup_bench() -> serde_json::Value {
    let sizes: Vec<u64> = std::env::var("LUCID_BENCH_BACKUP_MB")
        .unwrap_or_else(|_| "100".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|e| panic!("LUCID_BENCH_BACKUP_MB={s:?}: {e}"))
        })
        .collect();
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let recipient = lucid_actors::backup::BackupKey::generate()
        .recipient()
        .to_string();
    let mut results = Vec::new();
    for mb in sizes {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        // 512 KiB chunk files, plus the 2,000 small ones plant_volume always adds.
        let bytes = plant_volume(&root.path().join("chunks"), (mb * 2) as usize);
        let mib = bytes as f64 / (1 << 20) as f64;
        let ours = || {
            let mut cmd = std::process::Command::new(&exe);
            cmd.env(
                BACKUP_CHILD,
                format!(
                    "{}\tchunks\t{}\t{recipient}",
                    root.path().display(),
                    out.path().display()
                ),
            );
            let cost = run_child(cmd);
            std::fs::remove_dir_all(out.path()).unwrap_or_else(|e| panic!("rm: {e}"));
            cost
        };
        let stock = || {
            let file = out.path().join("chunks.tar.zst.age");
            std::fs::create_dir_all(out.path()).unwrap_or_else(|e| panic!("mkdir: {e}"));
            let mut cmd = std::process::Command::new("bash");
            // `wait` at the end: bash does not wait for a process substitution by itself, and
            // the hash is part of the work (and of the CPU counted).
            cmd.arg("-c").arg(format!(
                "tar -cf - -C '{}' . | zstd -3 -T0 -q | age -r {recipient} \
                 | tee >(sha256sum >/dev/null) > '{f}' && sync '{f}'; wait",
                root.path().join("chunks").display(),
                f = file.display()
            ));
            let cost = run_child(cmd);
            std::fs::remove_dir_all(out.path()).unwrap_or_else(|e| panic!("rm: {e}"));
            cost
        };
        let _ = (ours(), stock()); // warm the page cache and both binaries
        let (mut a, mut d) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            if round % 2 == 0 {
                a.push(ours());
                d.push(stock());
            } else {
                d.push(stock());
                a.push(ours());
            }
        }
        let summary = |runs: &[ChildCost]| {
            (
                median(runs.iter().map(|c| mib / c.wall.as_secs_f64()).collect()),
                median(runs.iter().map(|c| c.cpu.as_secs_f64()).collect()),
                median(runs.iter().map(|c| c.max_rss_kib as f64 / 1024.0).collect()),
            )
        };
        let ((a_rate, a_cpu, a_rss), (d_rate, d_cpu, d_rss)) = (summary(&a), summary(&d));
        println!(
            "\nencrypted volume backup to fs, {mib:.0} MiB tree, lucid-db pipeline vs `tar | zstd -3 -T0 | age | tee >(sha256sum) > FILE && sync FILE`:"
        );
        println!(
            "  lucid-db {a_rate:.1} MiB/s, {a_cpu:.2} s CPU, peak RSS {a_rss:.1} MiB; stock {d_rate:.1} MiB/s, {d_cpu:.2} s CPU, peak RSS {d_rss:.1} MiB (largest process); throughput ratio {:.2}",
            a_rate / d_rate
        );
        results.push(json!({
            "tree_mib": mib,
            "lucid_mib_per_s": a_rate,
            "stock_mib_per_s": d_rate,
            "throughput_ratio": a_rate / d_rate,
            "lucid_cpu_s": a_cpu,
            "stock_cpu_s": d_cpu,
            "lucid_peak_rss_mib": a_rss,
            "stock_peak_rss_mib_largest_process": d_rss,
        }));
    }
    json!(results)
}

// ---------------------------------------------------------------------------------------------
// The Redis part of a backup

/// Keys the Redis backup benchmark plants: strings of 512 bytes and hashes of 16 fields.
const BACKUP_STRINGS: u64 = 60_000;
const BACKUP_HASHES: u64 = 4_000;

/// The Redis part of a backup — the actor's export, the RESP encoder, the pipeline's zstd -3,
/// its SHA-256 and fs storage (unencrypted: encryption is the volume benchmark's) — against a
/// direct `SCAN` + `PTTL`/`DUMP` pipeline on one driver connection writing the same RESTORE
/// commands through the same zstd (level 3, on a thread of its own, as `| zstd > FILE` would)
/// to a file, synced; `redis-cli --rdb` of the same server for scale. Median of `ROUNDS`
/// interleaved runs, in one process on one actix System.
fn redis_backup_bench() -> serde_json::Value {
    use lucid_actors::backup::formats::{chunked, resp};
    use lucid_actors::backup::{BackupId, Codec, Recipients, Storage, pipeline};
    use lucid_actors::redis::{ExportedKey, KeyKind};

    let server = lucid_testkit::redis();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    pin_pair(cpus, &server);
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    actix_rt::System::new().block_on(async {
        let (handles, _) = start_only(
            |c| {
                c.redis.enabled = true;
                c.redis.url = server.url().into();
            },
            |_| true,
        )
        .await;
        let h = handles.redis.clone().unwrap_or_else(|| panic!("redis enabled"));
        let mut conn = redis::Client::open(server.url())
            .unwrap_or_else(|e| panic!("client: {e}"))
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("direct connection: {e}"));
        // Plant the keys, 1000 to a pipeline. Values of letters and digits drawn at random:
        // LZF, which DUMP applies, hardly shrinks them (as real cached JSON).
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut value = move || -> Vec<u8> {
            (0..512)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ{}:,"
                        [(x % 66) as usize]
                })
                .collect()
        };
        for start in (0..BACKUP_STRINGS).step_by(1000) {
            let mut pipe = redis::pipe();
            for i in start..(start + 1000).min(BACKUP_STRINGS) {
                pipe.cmd("SET").arg(format!("lucid:cache:bench:{i}")).arg(value()).ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap_or_else(|e| panic!("plant: {e}"));
        }
        for start in (0..BACKUP_HASHES).step_by(100) {
            let mut pipe = redis::pipe();
            for i in start..(start + 100).min(BACKUP_HASHES) {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(format!("lucid:sessions:bench:{i}"));
                for f in 0..16 {
                    cmd.arg(format!("field{f}")).arg(format!("value {i} {f}"));
                }
                pipe.add_command(cmd).ignore();
                pipe.cmd("PEXPIRE").arg(format!("lucid:sessions:bench:{i}")).arg(3_600_000).ignore();
            }
            let () = pipe.query_async(&mut conn).await.unwrap_or_else(|e| panic!("plant: {e}"));
        }
        let keys = BACKUP_STRINGS + BACKUP_HASHES;
        let storage = Storage::fs(out.path(), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("storage: {e}"));
        let codec = Codec {
            compression: lucid_actors::config::Compression::Zstd,
            zstd_workers: 0,
            recipients: Recipients::default(),
        };

        // lucid-db: the export as a backup run takes it.
        let ours = || {
            let (h, storage, codec) = (h.clone(), storage.clone(), codec.clone());
            async move {
                let started = Instant::now();
                let cpu0 = cpu_total();
                let feed = h.export().await.unwrap_or_else(|e| panic!("export: {e}"));
                let id = BackupId::new(chrono::Utc::now());
                let record = pipeline::write_artifact(
                    &storage,
                    &id,
                    "redis/db0.resp.zst",
                    "db0",
                    &codec,
                    chunked(feed, resp::encode_restore),
                )
                .await
                .unwrap_or_else(|e| panic!("backup: {e}"));
                let cost = (started.elapsed(), cpu_total() - cpu0, record.bytes_in);
                storage.delete_backup(&id).await.unwrap_or_else(|e| panic!("rm: {e}"));
                cost
            }
        };
        // Direct: SCAN, then PTTL and DUMP pipelined per batch, encoded the same way, piped to
        // zstd on its own thread.
        let direct = || {
            let mut conn = conn.clone();
            let file = out.path().join("direct.resp.zst");
            async move {
                let started = Instant::now();
                let cpu0 = cpu_total();
                let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
                let path = file.clone();
                let writer = std::thread::spawn(move || {
                    let f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("create: {e}"));
                    let mut z = zstd::stream::write::Encoder::new(f, 3)
                        .unwrap_or_else(|e| panic!("zstd: {e}"));
                    for chunk in rx {
                        std::io::Write::write_all(&mut z, &chunk)
                            .unwrap_or_else(|e| panic!("write: {e}"));
                    }
                    let f = z.finish().unwrap_or_else(|e| panic!("zstd: {e}"));
                    f.sync_all().unwrap_or_else(|e| panic!("sync: {e}"));
                });
                let mut bytes = 0u64;
                let mut buf = Vec::with_capacity(64 << 10);
                let mut cursor: u64 = 0;
                loop {
                    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg("lucid:*")
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                        .unwrap_or_else(|e| panic!("SCAN: {e}"));
                    if !batch.is_empty() {
                        let mut pipe = redis::pipe();
                        pipe.cmd("TIME");
                        for k in &batch {
                            pipe.cmd("PTTL").arg(k).cmd("DUMP").arg(k);
                        }
                        let mut replies: Vec<redis::Value> = pipe
                            .query_async(&mut conn)
                            .await
                            .unwrap_or_else(|e| panic!("DUMP: {e}"));
                        let (secs, micros): (u64, u64) = redis::from_redis_value(replies.remove(0))
                            .unwrap_or_else(|e| panic!("TIME: {e}"));
                        let now_ms = secs * 1000 + micros / 1000;
                        let mut replies = replies.into_iter();
                        for k in batch {
                            let (Some(pttl), Some(dump)) = (replies.next(), replies.next()) else {
                                panic!("short reply");
                            };
                            let pttl: i64 = redis::from_redis_value(pttl).unwrap_or(-2);
                            let dump: Option<Vec<u8>> = redis::from_redis_value(dump).unwrap_or(None);
                            let Some(payload) = dump else { continue };
                            let key = ExportedKey {
                                key: k,
                                kind: KeyKind::String,
                                payload,
                                expires_at_ms: (pttl >= 0).then(|| now_ms + pttl as u64),
                            };
                            resp::encode_restore(&key, &mut buf);
                            if buf.len() >= 64 << 10 {
                                bytes += buf.len() as u64;
                                tx.send(std::mem::replace(&mut buf, Vec::with_capacity(64 << 10)))
                                    .unwrap_or_else(|e| panic!("pipe: {e}"));
                            }
                        }
                    }
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
                bytes += buf.len() as u64;
                tx.send(buf).unwrap_or_else(|e| panic!("pipe: {e}"));
                drop(tx);
                writer.join().unwrap_or_else(|_| panic!("the zstd thread panicked"));
                let cost = (started.elapsed(), cpu_total() - cpu0, bytes);
                std::fs::remove_file(&file).unwrap_or_else(|e| panic!("rm: {e}"));
                cost
            }
        };
        let _ = (ours().await, direct().await); // warm both
        let (mut a, mut d) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            if round % 2 == 0 {
                a.push(ours().await);
                d.push(direct().await);
            } else {
                d.push(direct().await);
                a.push(ours().await);
            }
        }
        handles.shutdown(Duration::from_secs(1)).await;
        let rate = |runs: &[(Duration, Duration, u64)]| {
            median(runs.iter().map(|(t, _, _)| keys as f64 / t.as_secs_f64()).collect())
        };
        let mib = |runs: &[(Duration, Duration, u64)]| {
            median(
                runs.iter()
                    .map(|(t, _, b)| *b as f64 / (1 << 20) as f64 / t.as_secs_f64())
                    .collect(),
            )
        };
        let cpu = |runs: &[(Duration, Duration, u64)]| {
            median(runs.iter().map(|(_, c, _)| c.as_secs_f64() * 1e6 / keys as f64).collect())
        };
        let (a_rate, d_rate) = (rate(&a), rate(&d));
        let resp_mib = a.first().map_or(0.0, |(_, _, b)| *b as f64 / (1 << 20) as f64);
        // redis-cli --rdb: the server's own snapshot of the same data, for scale.
        let rdb = out.path().join("dump.rdb");
        let rdb_runs: Vec<f64> = (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                let ok = std::process::Command::new("redis-cli")
                    .args(["-p", &server.port().to_string(), "--rdb"])
                    .arg(&rdb)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "redis-cli --rdb failed (is redis-tools installed?)");
                keys as f64 / started.elapsed().as_secs_f64()
            })
            .collect();
        let rdb_rate = median(rdb_runs);
        println!(
            "\nRedis part of a backup, {keys} keys ({resp_mib:.1} MiB of RESTORE commands), \
             lucid-db export → pipeline (zstd -3, SHA-256, fs) vs direct SCAN + PTTL/DUMP → zstd -3 → file:"
        );
        println!(
            "  lucid-db {a_rate:.0} keys/s ({:.1} MiB/s, {:.1} µs CPU/key); direct {d_rate:.0} keys/s \
             ({:.1} MiB/s, {:.1} µs CPU/key); throughput ratio {:.2}; redis-cli --rdb {rdb_rate:.0} keys/s",
            mib(&a),
            cpu(&a),
            mib(&d),
            cpu(&d),
            a_rate / d_rate
        );
        json!({
            "keys": keys,
            "resp_mib": resp_mib,
            "lucid_keys_per_s": a_rate,
            "direct_keys_per_s": d_rate,
            "throughput_ratio": a_rate / d_rate,
            "lucid_mib_per_s": mib(&a),
            "direct_mib_per_s": mib(&d),
            "lucid_cpu_us_per_key": cpu(&a),
            "direct_cpu_us_per_key": cpu(&d),
            "redis_cli_rdb_keys_per_s": rdb_rate,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// MongoDB

/// Users seeded for the find and update workloads.
const MONGO_USERS: u64 = 1000;

fn mongo_user(i: u64) -> Document {
    doc! {
        "user_id": format!("bench{i}"),
        "email": format!("bench{i}@example.com"),
        "role": "user",
        "status": "active",
        "created_at": DateTime::now(),
    }
}

/// A user id spread over the seeded users, different per worker.
fn mongo_pick(w: usize, n: u64) -> u64 {
    (w as u64 * 7919 + n * 31) % MONGO_USERS
}

/// One analytics point (a collection without unique indexes, so inserts never conflict).
fn mongo_point(w: usize, n: u64) -> Document {
    doc! {
        "metric": "bench.insert",
        "timestamp": DateTime::now(),
        "value": ((w as i64) << 32) | n as i64,
        "dimensions": {"worker": w as i64},
    }
}

/// A small per-request aggregation: three users by id, counted per role.
fn mongo_pipeline(w: usize, n: u64) -> Vec<Document> {
    let ids: Vec<String> = (0..3)
        .map(|k| format!("bench{}", mongo_pick(w, n + k)))
        .collect();
    vec![
        doc! {"$match": {"user_id": {"$in": ids}}},
        doc! {"$group": {"_id": "$role", "n": {"$sum": 1}}},
    ]
}

fn mongo_workloads(h: MongoHandle, db: mongodb::Database) -> Vec<Workload> {
    let users = db.collection::<Document>("users");
    let analytics = db.collection::<Document>("analytics");
    let mut out = Vec::new();

    // Insert: the actor checks each document against the collection's schema first.
    let (ha, c) = (h.clone(), analytics.clone());
    out.push(Workload {
        backend: "mongo",
        name: "insert",
        actor: op(move |w, n| {
            let h = ha.clone();
            async move {
                h.call(InsertOne {
                    collection: Collection::Analytics,
                    document: mongo_point(w, n),
                })
                .await
                .is_ok()
            }
        }),
        direct: op(move |w, n| {
            let c = c.clone();
            async move { c.insert_one(mongo_point(w, n)).await.is_ok() }
        }),
    });

    // Find one user by a unique key (users_email_unique).
    let (ha, c) = (h.clone(), users.clone());
    out.push(Workload {
        backend: "mongo",
        name: "find by unique key",
        actor: op(move |w, n| {
            let h = ha.clone();
            async move {
                h.call(FindOne {
                    collection: Collection::Users,
                    filter: doc! {"email": format!("bench{}@example.com", mongo_pick(w, n))},
                    projection: None,
                })
                .await
                .is_ok_and(|d| d.is_some())
            }
        }),
        direct: op(move |w, n| {
            let c = c.clone();
            async move {
                c.find_one(doc! {"email": format!("bench{}@example.com", mongo_pick(w, n))})
                    .await
                    .is_ok_and(|d| d.is_some())
            }
        }),
    });

    // Update one user by id with $set (the actor checks the $set values against the schema).
    let (ha, c) = (h.clone(), users.clone());
    out.push(Workload {
        backend: "mongo",
        name: "update",
        actor: op(move |w, n| {
            let h = ha.clone();
            async move {
                h.call(UpdateOne {
                    collection: Collection::Users,
                    filter: doc! {"user_id": format!("bench{}", mongo_pick(w, n))},
                    update: doc! {"$set": {"display_name": format!("w{w} n{n}")}},
                    upsert: false,
                })
                .await
                .is_ok_and(|s| s.matched == 1)
            }
        }),
        direct: op(move |w, n| {
            let c = c.clone();
            async move {
                c.update_one(
                    doc! {"user_id": format!("bench{}", mongo_pick(w, n))},
                    doc! {"$set": {"display_name": format!("w{w} n{n}")}},
                )
                .await
                .is_ok_and(|r| r.matched_count == 1)
            }
        }),
    });

    // Aggregate, every result read (the actor's answer is a stream fed by a task).
    let (ha, c) = (h, users);
    out.push(Workload {
        backend: "mongo",
        name: "aggregate",
        actor: op(move |w, n| {
            let h = ha.clone();
            async move {
                let Ok(mut stream) = h
                    .call(Aggregate {
                        collection: Collection::Users,
                        pipeline: mongo_pipeline(w, n),
                    })
                    .await
                else {
                    return false;
                };
                let mut seen = 0;
                while let Some(d) = stream.next().await {
                    if d.is_err() {
                        return false;
                    }
                    seen += 1;
                }
                seen == 1
            }
        }),
        direct: op(move |w, n| {
            let c = c.clone();
            async move {
                let Ok(mut cursor) = c.aggregate(mongo_pipeline(w, n)).await else {
                    return false;
                };
                let mut seen = 0;
                while let Some(d) = cursor.next().await {
                    if d.is_err() {
                        return false;
                    }
                    seen += 1;
                }
                seen == 1
            }
        }),
    });
    out
}

fn mongo_section(
    server: &lucid_testkit::Server,
    filter: Option<&str>,
    duration: Duration,
) -> Vec<Row> {
    let system = actix_rt::System::new();
    system.block_on(async {
        let (handles, cfg) = start_only(
            |c| {
                c.mongodb.enabled = true;
                c.mongodb.url = server.url().into();
            },
            |h| {
                h.mongo
                    .as_ref()
                    .is_some_and(|m| m.last_bootstrap().is_some())
            },
        )
        .await;
        let h = handles
            .mongo
            .clone()
            .unwrap_or_else(|| panic!("mongodb enabled"));
        // The direct path gets the same pool size as the actor's client.
        let mut options = mongodb::options::ClientOptions::parse(server.url())
            .await
            .unwrap_or_else(|e| panic!("url: {e}"));
        options.max_pool_size = Some(cfg.mongodb.max_pool_size);
        let db = mongodb::Client::with_options(options)
            .unwrap_or_else(|e| panic!("direct client: {e}"))
            .database(&cfg.mongodb.database);
        let seeded = db
            .collection::<Document>("users")
            .insert_many((0..MONGO_USERS).map(mongo_user))
            .await;
        if let Err(e) = seeded {
            panic!("seeding users: {e}");
        }

        let rows = run(&wanted(mongo_workloads(h, db), filter), duration).await;
        handles.shutdown(Duration::from_secs(1)).await;
        rows
    })
}

// ---------------------------------------------------------------------------------------------
// Elasticsearch

/// Documents per bulk request in the bulk workload (both paths).
const ES_BULK_DOCS: usize = 100;
/// Sessions seeded for the search workload.
const ES_SESSIONS: usize = 2000;

fn es_session(i: usize, now: &str) -> serde_json::Value {
    json!({
        "session_id": format!("s{i}"),
        "user_id": format!("u{}", i % 50),
        "status": if i.is_multiple_of(4) { "closed" } else { "active" },
        "started_at": now,
        "duration_ms": i,
    })
}

fn es_transaction(w: usize, n: u64, now: &str) -> serde_json::Value {
    json!({"tx_id": format!("t{w}-{n}"), "from": format!("a{w}"), "to": "b", "amount": 1.5, "timestamp": now})
}

/// One request on the plain client; answers whether it succeeded, its JSON read as the actor
/// reads it.
async fn es_direct(
    client: &elasticsearch::Elasticsearch,
    path: &str,
    body: Vec<u8>,
    ndjson: bool,
) -> bool {
    use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        }),
    );
    let Ok(r) = client
        .send(
            elasticsearch::http::Method::Post,
            path,
            headers,
            None::<&()>,
            Some(body),
            None,
        )
        .await
    else {
        return false;
    };
    let ok = r.status_code().is_success();
    let Ok(bytes) = r.bytes().await else {
        return false;
    };
    ok && serde_json::from_slice::<serde_json::Value>(&bytes)
        .is_ok_and(|v| v.get("errors") != Some(&json!(true)))
}

fn es_workloads(h: SearchHandle, client: elasticsearch::Elasticsearch) -> Vec<Workload> {
    let mut out = Vec::new();

    // A term query on the sessions read alias, ten hits, the total counted.
    let (ha, c) = (h.clone(), client.clone());
    out.push(Workload {
        backend: "elasticsearch",
        name: "search",
        actor: op(move |w, n| {
            let h = ha.clone();
            async move {
                h.call(
                    Search::new(Entity::Sessions)
                        .filter(Filter::term("user_id", format!("u{}", (w as u64 * 7 + n) % 50)))
                        .size(10),
                )
                .await
                .is_ok_and(|r| r.total > 0)
            }
        }),
        direct: op(move |w, n| {
            let c = c.clone();
            async move {
                let body = json!({
                    "size": 10,
                    "track_total_hits": true,
                    "query": {"bool": {"filter": [{"term": {"user_id": format!("u{}", (w as u64 * 7 + n) % 50)}}], "must": []}},
                });
                es_direct(
                    &c,
                    "/lucid-sessions/_search?ignore_unavailable=true&allow_no_indices=true",
                    body.to_string().into_bytes(),
                    false,
                )
                .await
            }
        }),
    });

    // ES_BULK_DOCS single documents through the bulk indexer (batches of ES_BULK_DOCS, see
    // es_section), against the same direct bulk request.
    let (ha, c) = (h.clone(), client.clone());
    out.push(Workload {
        backend: "elasticsearch",
        name: "indexer (100 single docs)",
        actor: op(move |w, n| {
            let h = ha.clone();
            async move {
                let now = chrono::Utc::now().to_rfc3339();
                let submits = (0..ES_BULK_DOCS as u64).map(|k| {
                    h.submit(
                        Entity::Transactions,
                        BulkDoc {
                            id: None,
                            source: es_transaction(w, n * 1000 + k, &now),
                        },
                    )
                });
                futures_util::future::join_all(submits)
                    .await
                    .iter()
                    .all(Result::is_ok)
            }
        }),
        direct: es_direct_bulk(c),
    });

    // A bulk request of ES_BULK_DOCS transactions (ops/s × ES_BULK_DOCS = documents/s).
    let (ha, c) = (h, client);
    out.push(Workload {
        backend: "elasticsearch",
        name: "bulk (100 docs)",
        actor: op(move |w, n| {
            let h = ha.clone();
            async move {
                let now = chrono::Utc::now().to_rfc3339();
                let docs = (0..ES_BULK_DOCS as u64)
                    .map(|k| BulkDoc {
                        id: None,
                        source: es_transaction(w, n * 1000 + k, &now),
                    })
                    .collect();
                h.call_within(
                    Bulk {
                        entity: Entity::Transactions,
                        docs,
                        refresh: false,
                    },
                    Duration::from_secs(30),
                )
                .await
                .is_ok_and(|r| r.failed == 0)
            }
        }),
        direct: es_direct_bulk(c),
    });
    out
}

/// One direct bulk request of ES_BULK_DOCS transactions to the month's index.
fn es_direct_bulk(c: elasticsearch::Elasticsearch) -> Op {
    op(move |w, n| {
        let c = c.clone();
        async move {
            let now = chrono::Utc::now();
            let index = format!("lucid-transactions-{}", now.format("%Y.%m"));
            let now = now.to_rfc3339();
            let mut body = Vec::new();
            for k in 0..ES_BULK_DOCS as u64 {
                body.extend_from_slice(json!({"index": {"_index": index}}).to_string().as_bytes());
                body.push(b'\n');
                body.extend_from_slice(
                    es_transaction(w, n * 1000 + k, &now).to_string().as_bytes(),
                );
                body.push(b'\n');
            }
            es_direct(&c, "/_bulk", body, true).await
        }
    })
}

fn es_section(
    server: &lucid_testkit::Server,
    filter: Option<&str>,
    duration: Duration,
) -> Vec<Row> {
    let system = actix_rt::System::new();
    system.block_on(async {
        let (handles, _) = start_only(
            |c| {
                c.elasticsearch.enabled = true;
                c.elasticsearch.url = server.url().into();
                // The indexer's batches as large as the direct path's requests.
                c.elasticsearch.bulk_max_docs = ES_BULK_DOCS;
            },
            |h| {
                h.search
                    .as_ref()
                    .is_some_and(|s| s.last_bootstrap().is_some())
            },
        )
        .await;
        let h = handles
            .search
            .clone()
            .unwrap_or_else(|| panic!("elasticsearch enabled"));
        let transport = elasticsearch::http::transport::Transport::single_node(&server.url())
            .unwrap_or_else(|e| panic!("transport: {e}"));
        let client = elasticsearch::Elasticsearch::new(transport);
        let now = chrono::Utc::now().to_rfc3339();
        let seeded = h
            .call_within(
                Bulk {
                    entity: Entity::Sessions,
                    docs: (0..ES_SESSIONS)
                        .map(|i| BulkDoc {
                            id: Some(format!("s{i}")),
                            source: es_session(i, &now),
                        })
                        .collect(),
                    refresh: true,
                },
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_else(|e| panic!("seeding sessions: {e}"));
        assert_eq!(seeded.failed, 0, "seeding sessions");

        let rows = run(&wanted(es_workloads(h, client), filter), duration).await;
        handles.shutdown(Duration::from_secs(1)).await;
        rows
    })
}

// ---------------------------------------------------------------------------------------------
// A full backup

/// Set in the environment of a child this benchmark starts for the full backup (see
/// [`full_child`]): `<mode>\t<redis url>\t<mongo url>\t<es url>\t<volumes root>\t<state
/// dir>\t<result file>`; mode `full` (every store), `mongodb` (the MongoDB store alone) or
/// `mongodb-direct` (a driver cursor loop).
const FULL_CHILD: &str = "LUCID_BENCH_FULL_CHILD";

/// What a `LUCID_BENCH_FULL_MB` data set is made of: MongoDB 30 %, Redis 20 %, Elasticsearch
/// 10 %, volumes 40 % (of source bytes).
const FULL_SHARES: [(&str, f64); 4] = [
    ("mongodb", 0.3),
    ("redis", 0.2),
    ("elasticsearch", 0.1),
    ("volumes", 0.4),
];

/// Random letters and digits, `n` of them (compresses about as well as JSON text does not).
fn letters(x: &mut u64, n: usize) -> String {
    (0..n)
        .map(|_| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ -"[(*x % 64) as usize]
                as char
        })
        .collect()
}

/// One run in a child: the full backup or the MongoDB store through the actors (unencrypted,
/// fs storage in the `backups` volume, as the defaults give), or the direct loop. Writes the
/// seconds the work took and the documents it read to the result file.
fn full_child(job: &str) {
    use lucid_actors::backup::{BackupOutcome, BackupStatus, RunStatus, StartBackup, Trigger};
    let [mode, redis_url, mongo_url, es_url, root, state, result] =
        job.split('\t').collect::<Vec<_>>()[..]
    else {
        panic!("{FULL_CHILD}={job:?}: want 7 fields")
    };
    let mut cfg = Config::defaults().unwrap_or_else(|e| panic!("defaults: {e}"));
    cfg.volumes.root = root.into();
    cfg.state_dir = state.into();
    cfg.redis.url = redis_url.into();
    cfg.mongodb.url = mongo_url.into();
    cfg.elasticsearch.url = es_url.into();
    cfg.supervisor.call_deadline = Duration::from_secs(30);
    let full = mode == "full";
    cfg.redis.enabled = full;
    cfg.elasticsearch.enabled = full;
    let (elapsed, docs, bytes_in) = actix_rt::System::new().block_on(async {
        if mode == "mongodb-direct" {
            let (elapsed, docs) = mongo_direct(&cfg, root).await;
            return (elapsed, docs, 0);
        }
        let handles = lucid_actors::start(&cfg, Roles::CLI);
        wait_ready(&handles, mongo_bootstrapped, Duration::from_secs(60)).await;
        let backup = handles.backup.clone().unwrap_or_else(|| panic!("backup"));
        let stores = if full {
            vec![]
        } else {
            vec!["mongodb".parse().unwrap_or_else(|e| panic!("{e}"))]
        };
        let started = Instant::now();
        let id = backup
            .call(StartBackup {
                stores,
                trigger: Trigger::Api,
            })
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let report = loop {
            match backup.call(BackupStatus { id }).await {
                Ok(RunStatus::Finished(r)) => break r,
                Ok(RunStatus::Running { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("status: {e}"),
            }
        };
        let elapsed = started.elapsed();
        assert_eq!(report.outcome, BackupOutcome::Complete, "{report:?}");
        let docs = report.stores.get("mongodb").map_or(0, |s| {
            count_documents(&serde_json::Value::Object(s.source.clone()))
        });
        for (store, r) in &report.stores {
            let bytes_in: u64 = r.artifacts.iter().map(|a| a.bytes_in).sum();
            eprintln!("  {mode}: {store}: {bytes_in} bytes read");
        }
        handles.shutdown(Duration::from_secs(5)).await;
        (elapsed, docs, report.bytes_in)
    });
    std::fs::write(
        result,
        format!("{} {docs} {bytes_in}", elapsed.as_secs_f64()),
    )
    .unwrap_or_else(|e| panic!("result: {e}"));
}

/// The documents a MongoDB store's source facts count, whatever their nesting.
fn count_documents(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match (k.as_str(), v) {
                ("count" | "documents", serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
                _ => count_documents(v),
            })
            .sum(),
        serde_json::Value::Array(a) => a.iter().map(count_documents).sum(),
        _ => 0,
    }
}

/// The direct path: every Lucid collection read with a plain driver cursor of raw documents,
/// their bytes written as they are (concatenated BSON, as the backup's `.bson` files) through
/// zstd -3 to a file, synced.
async fn mongo_direct(cfg: &Config, root: &str) -> (Duration, u64) {
    use lucid_actors::mongo::bson::RawDocumentBuf;
    use std::io::Write;
    let client = mongodb::Client::with_uri_str(cfg.mongodb.url.expose())
        .await
        .unwrap_or_else(|e| panic!("client: {e}"));
    let db = client.database(&cfg.mongodb.database);
    let started = Instant::now();
    let mut docs = 0u64;
    let path = std::path::Path::new(root).join("direct.bson.zst");
    let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("create: {e}"));
    let mut out = zstd::Encoder::new(file, 3).unwrap_or_else(|e| panic!("zstd: {e}"));
    for c in Collection::ALL {
        let mut cursor = db
            .collection::<RawDocumentBuf>(c.name())
            .find(doc! {})
            .await
            .unwrap_or_else(|e| panic!("find: {e}"));
        while let Some(d) = cursor.next().await {
            let d = d.unwrap_or_else(|e| panic!("cursor: {e}"));
            out.write_all(d.as_bytes())
                .unwrap_or_else(|e| panic!("write: {e}"));
            docs += 1;
        }
    }
    let file = out.finish().unwrap_or_else(|e| panic!("zstd: {e}"));
    file.sync_all().unwrap_or_else(|e| panic!("sync: {e}"));
    (started.elapsed(), docs)
}

/// The servers and the planted `LUCID_BENCH_FULL_MB` data set of the `everystore` section
/// (also what the `drill` section restores).
struct FullSet {
    redis_s: lucid_testkit::Server,
    mongo_s: lucid_testkit::Server,
    es_s: lucid_testkit::Server,
    dir: tempfile::TempDir,
    /// `volumes.root` (the `chunks` volume planted in it).
    root: std::path::PathBuf,
    state: std::path::PathBuf,
    mb: f64,
    /// Source bytes planted per store.
    bytes: BTreeMap<&'static str, u64>,
}

/// Starts the three servers and plants the data set (see [`FULL_SHARES`]).
fn plant_full() -> FullSet {
    let mb: f64 = std::env::var("LUCID_BENCH_FULL_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200.0);
    let share = |store: &str| {
        FULL_SHARES
            .iter()
            .find(|(s, _)| *s == store)
            .map_or(0.0, |(_, f)| f * mb * 1e6)
    };
    let (redis_s, mongo_s, es_s) = (
        lucid_testkit::redis(),
        lucid_testkit::mongo(),
        lucid_testkit::elasticsearch(),
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (root, state) = (dir.path().join("volumes"), dir.path().join("state"));
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let planted = Instant::now();
    let mut bytes = BTreeMap::new();
    // Volumes: 512 KiB chunk files in one volume (plus its 2,000 small files).
    let files = (share("volumes") / (512.0 * 1024.0)).ceil() as usize;
    bytes.insert("volumes", plant_volume(&root.join("chunks"), files));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let database = Config::defaults()
        .unwrap_or_else(|e| panic!("defaults: {e}"))
        .mongodb
        .database;
    let mongo_docs = actix_rt::System::new().block_on(async {
        // MongoDB: analytics points of about 1 KiB.
        let client = mongodb::Client::with_uri_str(mongo_s.url())
            .await
            .unwrap_or_else(|e| panic!("client: {e}"));
        let coll = client
            .database(&database)
            .collection::<Document>(Collection::Analytics.name());
        let n = (share("mongodb") / 1024.0) as u64;
        for start in (0..n).step_by(1000) {
            let batch: Vec<Document> = (start..(start + 1000).min(n))
                .map(|i| {
                    doc! {
                        "metric": "bench.full",
                        // Now: the collection's TTL index deletes old points.
                        "timestamp": DateTime::now(),
                        "value": i as i64,
                        "dimensions": {"note": letters(&mut x, 960)},
                    }
                })
                .collect();
            coll.insert_many(batch)
                .await
                .unwrap_or_else(|e| panic!("plant mongodb: {e}"));
        }
        // Redis: strings of 1 KiB.
        let mut conn = redis::Client::open(redis_s.url())
            .unwrap_or_else(|e| panic!("client: {e}"))
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("redis: {e}"));
        let keys = (share("redis") / 1024.0) as u64;
        for start in (0..keys).step_by(1000) {
            let mut pipe = redis::pipe();
            for i in start..(start + 1000).min(keys) {
                pipe.cmd("SET")
                    .arg(format!("lucid:cache:full:{i}"))
                    .arg(letters(&mut x, 1024))
                    .ignore();
            }
            let () = pipe
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("plant redis: {e}"));
        }
        // Elasticsearch: documents of about 1 KiB in one lucid-* index.
        let transport = elasticsearch::http::transport::Transport::single_node(&es_s.url())
            .unwrap_or_else(|e| panic!("transport: {e}"));
        let client = elasticsearch::Elasticsearch::new(transport);
        let docs = (share("elasticsearch") / 1024.0) as usize;
        for start in (0..docs).step_by(1000) {
            let mut body = Vec::new();
            for i in start..(start + 1000).min(docs) {
                body.extend_from_slice(format!("{{\"index\":{{\"_id\":\"d{i}\"}}}}\n").as_bytes());
                body.extend_from_slice(
                    json!({"user_id": format!("u{i}"), "note": letters(&mut x, 960)})
                        .to_string()
                        .as_bytes(),
                );
                body.push(b'\n');
            }
            assert!(
                es_direct(&client, "/lucid-bench-full/_bulk?refresh=true", body, true).await,
                "plant elasticsearch"
            );
        }
        n
    });
    bytes.insert("mongodb", (share("mongodb")) as u64);
    bytes.insert("redis", (share("redis")) as u64);
    bytes.insert("elasticsearch", (share("elasticsearch")) as u64);
    println!(
        "\nfull backup: planted {mb:.0} MB ({mongo_docs} MongoDB documents) in {:.0} s",
        planted.elapsed().as_secs_f64()
    );
    FullSet {
        redis_s,
        mongo_s,
        es_s,
        dir,
        root,
        state,
        mb,
        bytes,
    }
}

/// A full backup — MongoDB, Redis, Elasticsearch and the volumes under one id, through the
/// daemon's actors in a process of its own — of a fixed data set of `LUCID_BENCH_FULL_MB`
/// (default 200) MB: seconds, MB/s and the process's peak RSS (target ≤ 64 MiB; the seed's
/// floor is 5 minutes). Then the MongoDB part alone against a direct driver cursor loop
/// writing the same BSON through the same zstd: client CPU per document, median of `ROUNDS`
/// interleaved runs, each a process of its own.
fn full_backup_bench() -> serde_json::Value {
    let FullSet {
        redis_s,
        mongo_s,
        es_s,
        dir,
        root,
        state,
        bytes,
        ..
    } = plant_full();

    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let result = dir.path().join("result");
    let child = |mode: &str| {
        let mut cmd = std::process::Command::new(&exe);
        cmd.env(
            FULL_CHILD,
            [
                mode,
                &redis_s.url(),
                &mongo_s.url(),
                &es_s.url(),
                &root.display().to_string(),
                &state.display().to_string(),
                &result.display().to_string(),
            ]
            .join("\t"),
        );
        let cost = run_child(cmd);
        let text = std::fs::read_to_string(&result).unwrap_or_else(|e| panic!("result: {e}"));
        let [secs, docs, bytes_in] = text.split(' ').collect::<Vec<_>>()[..] else {
            panic!("result {text:?}")
        };
        let secs: f64 = secs.parse().unwrap_or_else(|e| panic!("{e}"));
        let docs: u64 = docs.parse().unwrap_or_else(|e| panic!("{e}"));
        let bytes_in: u64 = bytes_in.parse().unwrap_or_else(|e| panic!("{e}"));
        // Backups go to the `backups` volume: removed, so every run writes the same.
        let _ = std::fs::remove_dir_all(root.join("backups"));
        let _ = std::fs::remove_file(root.join("direct.bson.zst"));
        (cost, secs, docs, bytes_in)
    };

    let (cost, secs, _, bytes_in) = child("full");
    // What the backup read, as its report counts it (the planted shares are the aim).
    let total_mb = bytes_in as f64 / 1e6;
    let rss_mib = cost.max_rss_kib as f64 / 1024.0;
    println!(
        "  every store: {secs:.1} s ({total_mb:.0} MB, {:.1} MB/s), {:.1} s CPU, peak RSS {rss_mib:.1} MiB (target ≤ 64 MiB; the seed's floor: 300 s); the process, start to exit: {:.1} s",
        total_mb / secs,
        cost.cpu.as_secs_f64(),
        cost.wall.as_secs_f64()
    );

    let _ = (child("mongodb"), child("mongodb-direct")); // warm both
    let (mut a, mut d) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            a.push(child("mongodb"));
            d.push(child("mongodb-direct"));
        } else {
            d.push(child("mongodb-direct"));
            a.push(child("mongodb"));
        }
    }
    let per_doc = |runs: &[(ChildCost, f64, u64, u64)]| {
        (
            median(
                runs.iter()
                    .map(|(c, _, n, _)| c.cpu.as_secs_f64() * 1e6 / (*n).max(1) as f64)
                    .collect(),
            ),
            median(runs.iter().map(|(_, s, _, _)| *s).collect()),
            runs.first().map_or(0, |(_, _, n, _)| *n),
        )
    };
    let ((a_us, a_s, a_n), (d_us, d_s, d_n)) = (per_doc(&a), per_doc(&d));
    println!(
        "  MongoDB part ({a_n} documents; direct read {d_n}): lucid-db {a_us:.1} µs CPU/doc, {a_s:.2} s; direct cursor loop {d_us:.1} µs CPU/doc, {d_s:.2} s; CPU ratio {:.2}",
        a_us / d_us
    );
    json!({
        "data_set_mb": total_mb,
        "planted_bytes": bytes,
        "seconds": secs,
        "mb_per_s": total_mb / secs,
        "cpu_s": cost.cpu.as_secs_f64(),
        "peak_rss_mib": rss_mib,
        "process_seconds": cost.wall.as_secs_f64(),
        "mongodb": {
            "documents": a_n,
            "lucid_cpu_us_per_doc": a_us,
            "direct_cpu_us_per_doc": d_us,
            "cpu_ratio": a_us / d_us,
            "lucid_seconds": a_s,
            "direct_seconds": d_s,
        },
    })
}
