//! The `http` section: what the HTTP API itself costs per request.
//!
//! `cargo bench --bench lucid_bench -- http` starts redis-server and nx-27017 through the test
//! kit, the real `lucid-db` daemon as a child process (Elasticsearch off, a read and a write
//! token added through `lucid-db token add`), and drives three endpoints — `/health`, a cached
//! Redis read and a MongoDB find by a unique key (`users.email`, limit 1) — at each number of
//! keep-alive connections in `LUCID_BENCH_HTTP_CONNECTIONS` (default `16,64`), along three
//! paths, in one run:
//!
//! - `api`: the daemon, over HTTP/1.1 from this process's awc client;
//! - `bare`: an actix-web server in this process with one route per endpoint that answers the
//!   bytes the daemon answered (it reads the request body, parses nothing), with the daemon's
//!   `http.workers`: the HTTP layer alone, both ends;
//! - `actor`: the actors started in this process and the call the handler makes (`/health`:
//!   the health registry's snapshot, which it reads instead of calling an actor), at the same
//!   number in flight.
//!
//! Each round runs every path for `LUCID_BENCH_HTTP_SECONDS` (default 1), the order rotating
//! per round, for `LUCID_BENCH_HTTP_ROUNDS` rounds (default 3): requests/s and CPU are the
//! medians of the rounds, p50/p99 over every request. CPU per request is this process's
//! (getrusage: the load generator, and the bare server or the in-process actors) plus the
//! daemon's (`/proc/PID/stat`); the backends' (redis-server, nx-27017) is shown apart. The
//! API's own cost per request is `api − actor` (both HTTP ends, auth, rate limit, JSON) and
//! `api − actor − bare` (what the daemon adds over a bare actix-web route: auth, the rate
//! limit, JSON, the middleware).
//!
//! The daemon's rate limit is set out of reach (`http.rate_limit` 1,000,000 per 1 s window) so
//! it never refuses, while every request still runs its Redis check: it is part of the cost.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{App, HttpResponse, HttpServer, web};
use bytes::Bytes;
use lucid_actors::mongo::bson::{Document, doc};
use lucid_actors::mongo::{Collection, FindJson};
use lucid_actors::redis::{CacheGet, Key};
use lucid_actors::{Config, HealthRegistry};
use lucid_testkit::{Daemon, Server};
use serde_json::{Value, json};

use super::{Op, Run, measure, median, op, start_only};

/// The cached entry every Redis read asks for.
const CACHE: (&str, &str, &str) = ("bench", "item", "1");
const CACHE_PATH: &str = "/api/v1/database/redis/cache/bench/item/1";
const QUERY_PATH: &str = "/api/v1/database/mongodb/query";
/// Users seeded (unique `email`s) for the find by unique key.
const USERS: u64 = 1000;
const PATHS: [&str; 3] = ["api", "bare", "actor"];

/// The section's knobs, from the environment (docs/benchmark.md).
struct Settings {
    seconds: Duration,
    rounds: usize,
    connections: Vec<usize>,
    workers: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|s| !s.trim().is_empty());
        let seconds = var("LUCID_BENCH_HTTP_SECONDS").map_or(1.0, |s| {
            s.trim()
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("LUCID_BENCH_HTTP_SECONDS={s:?}: {e}"))
        });
        let rounds = var("LUCID_BENCH_HTTP_ROUNDS").map_or(3, |s| {
            s.trim()
                .parse::<usize>()
                .unwrap_or_else(|e| panic!("LUCID_BENCH_HTTP_ROUNDS={s:?}: {e}"))
                .max(1)
        });
        let connections = var("LUCID_BENCH_HTTP_CONNECTIONS").map_or(vec![16, 64], |s| {
            s.split(',')
                .map(|c| {
                    c.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .unwrap_or_else(|| panic!("LUCID_BENCH_HTTP_CONNECTIONS={s:?}"))
                })
                .collect()
        });
        let default_workers = Config::defaults()
            .unwrap_or_else(|e| panic!("defaults: {e}"))
            .http
            .workers;
        let workers = var("LUCID_BENCH_HTTP_WORKERS").map_or(default_workers, |s| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("LUCID_BENCH_HTTP_WORKERS={s:?}"))
        });
        Settings {
            seconds: Duration::from_secs_f64(seconds),
            rounds,
            connections,
            workers,
        }
    }
}

/// One endpoint and its three paths.
struct Endpoint {
    name: &'static str,
    api: Op,
    bare: Op,
    actor: Op,
}

impl Endpoint {
    fn path(&self, i: usize) -> &Op {
        [&self.api, &self.bare, &self.actor][i]
    }
}

/// One timed slice of one path: what this process measured, and what the daemon and the
/// backends spent meanwhile.
struct Slice {
    run: Run,
    daemon: Duration,
    backends: Duration,
}

#[derive(serde::Serialize)]
struct PathSummary {
    requests_per_sec: f64,
    p50_us: u32,
    p99_us: u32,
    /// This process (the load generator, and the bare server or the actors).
    client_cpu_us: f64,
    /// The daemon child (counted for the `api` path only).
    daemon_cpu_us: f64,
    /// client + daemon: the number the API's cost is derived from.
    cpu_us: f64,
    /// redis-server and nx-27017, apart.
    backends_cpu_us: f64,
    errors: u64,
}

impl PathSummary {
    fn of(slices: &[Slice]) -> PathSummary {
        let per = |s: &Slice, d: Duration| d.as_secs_f64() * 1e6 / s.run.ops.max(1) as f64;
        let mut all: Vec<u32> = slices
            .iter()
            .flat_map(|s| s.run.latencies_us.iter().copied())
            .collect();
        all.sort_unstable();
        let pct = |p: f64| {
            all.get(((all.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(0)
        };
        PathSummary {
            requests_per_sec: median(slices.iter().map(|s| s.run.ops_per_sec()).collect()),
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            client_cpu_us: median(slices.iter().map(|s| per(s, s.run.cpu)).collect()),
            daemon_cpu_us: median(slices.iter().map(|s| per(s, s.daemon)).collect()),
            cpu_us: median(
                slices
                    .iter()
                    .map(|s| per(s, s.run.cpu + s.daemon))
                    .collect(),
            ),
            backends_cpu_us: median(slices.iter().map(|s| per(s, s.backends)).collect()),
            errors: slices.iter().map(|s| s.run.errors).sum(),
        }
    }
}

/// User plus system CPU time of process `pid` (every thread), from `/proc/PID/stat`; zero if
/// it cannot be read (the process is gone).
fn proc_cpu(pid: u32) -> Duration {
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The command name (field 2) may hold spaces: count from its closing parenthesis.
            let rest = s.get(s.rfind(')')? + 1..)?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime, fields 14 and 15 of proc(5); `rest` starts at field 3.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / hz)
}

/// Lets this thread (and what it starts: the daemon, the bare server's threads) run on every
/// CPU again: an earlier section may have pinned it to CPU 0.
fn unpin() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; sched_setaffinity only
    // reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The daemon to run: `LUCID_BENCH_DAEMON`, else `lucid-db` next to this bench in the target
/// directory's `release`, built there first when it is missing.
fn daemon_binary() -> PathBuf {
    if let Ok(path) = std::env::var("LUCID_BENCH_DAEMON") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // …/release/deps/lucid_bench-HASH → …/release/lucid-db
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("no target directory above {}", exe.display()))
        .join("lucid-db");
    if !bin.exists() {
        println!(
            "building {} (cargo build --release --bin lucid-db)",
            bin.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "lucid-db"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .unwrap_or_else(|e| panic!("cargo build: {e}"));
        assert!(
            status.success(),
            "cargo build --release --bin lucid-db failed"
        );
    }
    bin
}

/// `lucid-db token add NAME --scope SCOPE` against the daemon's config and state: the token.
fn add_token(bin: &std::path::Path, d: &Daemon, name: &str, scope: &str) -> String {
    let out = Command::new(bin)
        .arg("--config")
        .arg(d.dir().join("lucid-db.toml"))
        .args(["token", "add", name, "--scope", scope])
        .env_clear()
        .env("LUCID_DB__STATE_DIR", d.dir().join("state"))
        .env("LUCID_DB__VOLUMES__ROOT", d.dir().join("volumes"))
        .output()
        .unwrap_or_else(|e| panic!("lucid-db token add: {e}"));
    assert!(
        out.status.success(),
        "lucid-db token add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn daemon_config(redis: &Server, mongo: &Server, workers: usize) -> String {
    format!(
        "[redis]\nurl = \"{}\"\n[mongodb]\nurl = \"{}\"\n[elasticsearch]\nenabled = false\n\
         [http]\nworkers = {workers}\nrate_limit = 1000000\nrate_window = \"1s\"\n",
        redis.url(),
        mongo.url()
    )
}

/// The awc client every path's requests go through: keep-alive connections, enough for the
/// most in flight, never recycled mid-run.
fn client(connections: usize) -> awc::Client {
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .limit(connections)
                .conn_lifetime(Duration::from_secs(3600)),
        )
        .timeout(Duration::from_secs(30))
        .finish()
}

fn uri(addr: SocketAddr, path: &str) -> awc::http::Uri {
    format!("http://{addr}{path}")
        .parse()
        .unwrap_or_else(|e| panic!("uri: {e}"))
}

/// GET `uri` (with a bearer token, if any); true on 200 with the body read.
async fn get(c: awc::Client, uri: awc::http::Uri, bearer: Option<std::rc::Rc<str>>) -> bool {
    let mut req = c.get(uri);
    if let Some(b) = bearer {
        req = req.insert_header((header::AUTHORIZATION, &*b));
    }
    match req.send().await {
        Ok(mut res) => res.status() == 200 && res.body().await.is_ok(),
        Err(_) => false,
    }
}

/// POST a JSON `body` to `uri` with a bearer token; true on 200 with the body read.
async fn post(c: awc::Client, uri: awc::http::Uri, bearer: std::rc::Rc<str>, body: Bytes) -> bool {
    let req = c
        .post(uri)
        .insert_header((header::AUTHORIZATION, &*bearer))
        .insert_header((header::CONTENT_TYPE, "application/json"));
    match req.send_body(body).await {
        Ok(mut res) => res.status() == 200 && res.body().await.is_ok(),
        Err(_) => false,
    }
}

/// The request body of the find by unique key, for user `i`.
fn query_body(i: u64) -> Bytes {
    Bytes::from(
        json!({
            "collection": "users",
            "filter": {"email": format!("http{i}@example.com")},
            "limit": 1,
        })
        .to_string(),
    )
}

fn user(i: u64) -> Document {
    doc! {
        "user_id": format!("http{i}"),
        "email": format!("http{i}@example.com"),
        "role": "user",
        "status": "active",
        "created_at": lucid_actors::mongo::bson::DateTime::now(),
    }
}

/// A user spread over the seeded ones, different per worker.
fn pick(w: usize, n: u64) -> u64 {
    (w as u64 * 7919 + n * 31) % USERS
}

/// What the bare server answers on each route: the daemon's own answers.
#[derive(Clone)]
struct Answers {
    health: Bytes,
    cache: Bytes,
    query: Bytes,
}

/// The bare actix-web server on a thread of its own (its own System), `workers` workers, on a
/// free loopback port: its address and the handle that stops it.
fn start_bare(
    workers: usize,
    answers: Answers,
) -> (
    SocketAddr,
    actix_web::dev::ServerHandle,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                let json = |b: &Bytes| {
                    HttpResponse::Ok()
                        .content_type("application/json")
                        .body(b.clone())
                };
                let (h, c, q) = (
                    answers.health.clone(),
                    answers.cache.clone(),
                    answers.query.clone(),
                );
                App::new()
                    .route(
                        "/health",
                        web::get().to(move || {
                            let r = json(&h);
                            async move { r }
                        }),
                    )
                    .route(
                        "/api/v1/database/redis/cache/{service}/{entity}/{id}",
                        web::get().to(move || {
                            let r = json(&c);
                            async move { r }
                        }),
                    )
                    // The request body is read (as the daemon's JSON extractor reads it), not
                    // parsed: parsing is the API's cost.
                    .route(
                        QUERY_PATH,
                        web::post().to(move |_body: web::Bytes| {
                            let r = json(&q);
                            async move { r }
                        }),
                    )
            })
            .workers(workers)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("bare server: {e}"));
            let addr = server.addrs()[0];
            let server = server.run();
            let _ = tx.send((addr, server.handle()));
            let _ = server.await;
        });
    });
    let (addr, handle) = rx
        .recv()
        .unwrap_or_else(|e| panic!("bare server did not start: {e}"));
    (addr, handle, thread)
}

/// One slice of `path`, with the backends' CPU time meanwhile and the daemon's when it is
/// `daemon`'s path (otherwise the daemon idles, and its housekeeping is no path's cost).
async fn slice(
    path: &Op,
    in_flight: usize,
    duration: Duration,
    daemon: Option<u32>,
    backends: &[u32],
) -> Slice {
    let cpu = |pids: &[u32]| pids.iter().map(|&p| proc_cpu(p)).sum::<Duration>();
    let (d0, b0) = (cpu(daemon.as_slice()), cpu(backends));
    let run = measure(path, in_flight, duration).await;
    let (d1, b1) = (cpu(daemon.as_slice()), cpu(backends));
    Slice {
        run,
        daemon: d1.saturating_sub(d0),
        backends: b1.saturating_sub(b0),
    }
}

/// Runs the section; the JSON for target/lucid-bench.json.
pub(crate) fn bench() -> Value {
    let settings = Settings::from_env();
    unpin();
    let bin = daemon_binary();
    let (redis_s, mongo_s) = (lucid_testkit::redis(), lucid_testkit::mongo());
    let backends: Vec<u32> = [&redis_s, &mongo_s]
        .iter()
        .filter_map(|s| s.pid())
        .collect();
    let mut daemon = Daemon::start(
        &bin,
        &daemon_config(&redis_s, &mongo_s, settings.workers),
        &["--log-format", "json"],
        &[],
    );
    assert!(
        daemon
            .notify
            .wait_for(Duration::from_secs(60), |l| l == "READY=1")
            .is_some(),
        "the daemon never said READY=1; stderr:\n{}",
        daemon.stderr()
    );
    let daemon_pid = daemon
        .pid()
        .unwrap_or_else(|| panic!("the daemon has no pid"));
    let read = add_token(&bin, &daemon, "bench-read", "read");
    let write = add_token(&bin, &daemon, "bench-write", "write");
    println!(
        "\nhttp: lucid-db {} (pid {daemon_pid}), http.workers = {}, rate limit 1000000/1s; \
         {} s per path per round, {} rounds; not pinned",
        bin.display(),
        settings.workers,
        settings.seconds.as_secs_f64(),
        settings.rounds
    );

    let system = actix_rt::System::new();
    let out = system.block_on(async {
        let api = daemon.http;
        let setup = client(4);
        let read_bearer: std::rc::Rc<str> = format!("Bearer {read}").into();
        let write_bearer = format!("Bearer {write}");

        // The daemon is ready (its backends up, its MongoDB bootstrap done) and the tokens
        // taken (the token file is watched, not read per request).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = setup
                .get(uri(api, "/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            let cached = setup
                .post(uri(api, "/api/v1/database/redis/cache"))
                .insert_header((header::AUTHORIZATION, write_bearer.as_str()))
                .send_json(&json!({
                    "service": CACHE.0, "entity": CACHE.1, "id": CACHE.2,
                    "value": {"name": "bench item", "price": 1234, "tags": ["a", "b", "c"]},
                    "ttl": 3600,
                }))
                .await
                .is_ok_and(|r| r.status() == 201);
            if ready && cached {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon never became ready or never took the tokens; stderr:\n{}",
                daemon.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The actors in this process, on the same servers (after the daemon's bootstrap, so
        // the two never create the same collections at once).
        let (handles, cfg) = start_only(
            |c| {
                c.redis.enabled = true;
                c.redis.url = redis_s.url().into();
                c.mongodb.enabled = true;
                c.mongodb.url = mongo_s.url().into();
            },
            |h| {
                h.mongo
                    .as_ref()
                    .is_some_and(|m| m.last_bootstrap().is_some())
            },
        )
        .await;
        let redis = handles
            .redis
            .clone()
            .unwrap_or_else(|| panic!("redis enabled"));
        let mongo = handles
            .mongo
            .clone()
            .unwrap_or_else(|| panic!("mongodb enabled"));
        let users = mongodb::Client::with_uri_str(mongo_s.url())
            .await
            .unwrap_or_else(|e| panic!("mongodb client: {e}"))
            .database(&cfg.mongodb.database)
            .collection::<Document>(Collection::Users.name());
        if let Err(e) = users.insert_many((0..USERS).map(user)).await {
            panic!("seeding users: {e}");
        }

        // What the daemon answers: the bare route answers the same bytes.
        let answer = |req: awc::ClientRequest, body: Option<Bytes>| async move {
            let res = match body {
                Some(b) => {
                    req.insert_header((header::CONTENT_TYPE, "application/json"))
                        .send_body(b)
                        .await
                }
                None => req.send().await,
            };
            let mut res = res.unwrap_or_else(|e| panic!("daemon: {e}"));
            assert_eq!(res.status(), 200, "daemon answered {}", res.status());
            res.body()
                .await
                .unwrap_or_else(|e| panic!("daemon body: {e}"))
        };
        let answers = Answers {
            health: answer(setup.get(uri(api, "/health")), None).await,
            cache: answer(
                setup
                    .get(uri(api, CACHE_PATH))
                    .insert_header((header::AUTHORIZATION, &*read_bearer)),
                None,
            )
            .await,
            query: answer(
                setup
                    .post(uri(api, QUERY_PATH))
                    .insert_header((header::AUTHORIZATION, &*read_bearer)),
                Some(query_body(0)),
            )
            .await,
        };
        let sizes = (
            answers.health.len(),
            answers.cache.len(),
            answers.query.len(),
        );
        let (bare, bare_handle, bare_thread) = start_bare(settings.workers, answers);
        println!(
            "answers: /health {} B, cache read {} B, find by unique key {} B",
            sizes.0, sizes.1, sizes.2
        );

        let max = settings.connections.iter().copied().max().unwrap_or(1);
        let bodies: std::rc::Rc<Vec<Bytes>> =
            std::rc::Rc::new((0..USERS).map(query_body).collect());
        let registry: HealthRegistry = handles.registry.clone();
        let endpoints = {
            let (api_c, bare_c) = (client(max), client(max));
            let get_op = |c: &awc::Client, addr: SocketAddr, path: &str, bearer: bool| {
                let (c, u, b) = (
                    c.clone(),
                    uri(addr, path),
                    bearer.then(|| read_bearer.clone()),
                );
                op(move |_, _| get(c.clone(), u.clone(), b.clone()))
            };
            let post_op = |c: &awc::Client, addr: SocketAddr| {
                let (c, u, b, bodies) = (
                    c.clone(),
                    uri(addr, QUERY_PATH),
                    read_bearer.clone(),
                    bodies.clone(),
                );
                op(move |w, n| {
                    post(
                        c.clone(),
                        u.clone(),
                        b.clone(),
                        bodies[pick(w, n) as usize].clone(),
                    )
                })
            };
            let (r, m) = (redis.clone(), mongo.clone());
            vec![
                Endpoint {
                    name: "/health",
                    api: get_op(&api_c, api, "/health", false),
                    bare: get_op(&bare_c, bare, "/health", false),
                    // The handler reads the registry; a yield, so the workers take turns.
                    actor: op(move |_, _| {
                        let snapshot = registry.snapshot();
                        async move {
                            tokio::task::yield_now().await;
                            !snapshot.is_empty()
                        }
                    }),
                },
                Endpoint {
                    name: "redis cache read",
                    api: get_op(&api_c, api, CACHE_PATH, true),
                    bare: get_op(&bare_c, bare, CACHE_PATH, true),
                    actor: op(move |_, _| {
                        let r = r.clone();
                        async move {
                            let Ok(key) = Key::new(CACHE.0, CACHE.1, CACHE.2) else {
                                return false;
                            };
                            r.call(CacheGet { key }).await.is_ok_and(|v| v.is_some())
                        }
                    }),
                },
                Endpoint {
                    name: "mongo find by unique key",
                    api: post_op(&api_c, api),
                    bare: post_op(&bare_c, bare),
                    actor: op(move |w, n| {
                        let m = m.clone();
                        async move {
                            let find = FindJson {
                                collection: Collection::Users,
                                filter: json!({"email": format!("http{}@example.com", pick(w, n))}),
                                projection: None,
                                sort: None,
                                skip: None,
                                limit: Some(1),
                            };
                            match m.call(find).await {
                                Ok(feed) => feed.collect().await.is_ok_and(|d| d.len() == 1),
                                Err(_) => false,
                            }
                        }
                    }),
                },
            ]
        };

        let mut results = Vec::new();
        for e in &endpoints {
            for &conns in &settings.connections {
                // Warm up: connections opened, pools filled, scripts loaded.
                for i in 0..PATHS.len() {
                    let daemon = (i == 0).then_some(daemon_pid);
                    slice(
                        e.path(i),
                        conns,
                        Duration::from_millis(300),
                        daemon,
                        &backends,
                    )
                    .await;
                }
                let mut slices: [Vec<Slice>; 3] = Default::default();
                for round in 0..settings.rounds {
                    // The order rotates per round, so drift in the machine's speed falls on
                    // every path alike.
                    for k in 0..PATHS.len() {
                        let i = (round + k) % PATHS.len();
                        let daemon = (i == 0).then_some(daemon_pid);
                        slices[i].push(
                            slice(e.path(i), conns, settings.seconds, daemon, &backends).await,
                        );
                    }
                }
                let [a, b, c] = slices.map(|s| PathSummary::of(&s));
                print_case(e.name, conns, [&a, &b, &c]);
                results.push(json!({
                    "endpoint": e.name,
                    "connections": conns,
                    "api": a,
                    "bare": b,
                    "actor": c,
                    "api_minus_actor_cpu_us": a.cpu_us - c.cpu_us,
                    "api_own_cpu_us": a.cpu_us - c.cpu_us - b.cpu_us,
                }));
            }
        }
        handles.shutdown(Duration::from_secs(1)).await;
        bare_handle.stop(true).await;
        let _ = bare_thread.join();
        results
    });
    daemon.signal(libc::SIGTERM);
    let _ = daemon.wait_exit(Duration::from_secs(10));
    json!({
        "seconds_per_path": settings.seconds.as_secs_f64(),
        "rounds": settings.rounds,
        "http_workers": settings.workers,
        "rate_limit": "1000000 per 1s (never reached; checked on every request)",
        "results": out,
    })
}

fn print_case(endpoint: &str, conns: usize, paths: [&PathSummary; 3]) {
    static HEADER: std::sync::Once = std::sync::Once::new();
    HEADER.call_once(|| {
        println!(
            "{:<26} {:>5} {:<5} | {:>8} {:>7} {:>7} | {:>8} {:>8} {:>8} | {:>8}",
            "endpoint",
            "conns",
            "path",
            "req/s",
            "p50",
            "p99",
            "client",
            "daemon",
            "cpu/req",
            "backends"
        );
    });
    for (name, s) in PATHS.iter().zip(paths) {
        println!(
            "{:<26} {:>5} {:<5} | {:>8.0} {:>6}u {:>6}u | {:>7.1}u {:>7.1}u {:>7.1}u | {:>7.1}u{}",
            endpoint,
            conns,
            name,
            s.requests_per_sec,
            s.p50_us,
            s.p99_us,
            s.client_cpu_us,
            s.daemon_cpu_us,
            s.cpu_us,
            s.backends_cpu_us,
            if s.errors > 0 {
                format!("  ({} errors)", s.errors)
            } else {
                String::new()
            }
        );
    }
    let [a, b, c] = paths;
    println!(
        "{:<26} {:>5} API cost µs/request: {:.1} over the actor call (HTTP both ends, auth, \
         rate limit, JSON); {:.1} over actor call + bare route (auth, rate limit, JSON, middleware)",
        endpoint,
        conns,
        a.cpu_us - c.cpu_us,
        a.cpu_us - c.cpu_us - b.cpu_us
    );
}
