//! The Elasticsearch service through the actor, against a real osmem-server (an in-memory,
//! OpenSearch-compatible server; each test gets its own): bootstrap, routing by month,
//! late documents, by-id updates, bulk with per-item errors, search and aggregations, the
//! lifecycle executor, stats, bad input and faults. The actor runs on a clock the test sets;
//! the cluster is inspected with a plain client, never through the actor.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use elasticsearch::Elasticsearch;
use elasticsearch::http::Method;
use elasticsearch::http::headers::HeaderMap;
use lucid_actors::health::HealthRegistry;
use lucid_actors::search::{
    Agg, ApplyLifecycle, Bulk, BulkDoc, BulkItem, Clock, Count, Entity, ExportedDocument, Filter,
    GetDoc, GetStats, ImportOptions, ImportTarget, IndexDoc, IndexMetadata, Order, RunBootstrap,
    Search, SearchActor, SearchError, SearchHandle, Templates, UpdateDoc,
};
use lucid_actors::transfer::Existing;
use lucid_actors::{Backend, CallError, Config, events};
use lucid_testkit::{Server, elasticsearch};
use serde_json::{Value, json};

use crate::common::{DEADLINE, SLACK, at_once, fast_config};

/// A clock the test moves.
struct TestClock(Mutex<DateTime<Utc>>);

impl TestClock {
    fn at(t: &str) -> Arc<TestClock> {
        Arc::new(TestClock(Mutex::new(at(t))))
    }

    fn set(&self, t: &str) {
        *self.0.lock().expect("clock") = at(t);
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock")
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .with_timezone(&Utc)
}

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

fn config(server: &Server) -> Config {
    let mut c = fast_config("redis://127.0.0.1:1");
    c.redis.enabled = false;
    c.elasticsearch.enabled = true;
    c.elasticsearch.url = server.url().into();
    c
}

/// The actor on `clock`, once up and bootstrapped, plus the registry and a plain client.
async fn start(
    server: &Server,
    clock: Arc<TestClock>,
    tweak: impl FnOnce(&mut Config),
) -> (SearchHandle, HealthRegistry, Raw) {
    let mut cfg = config(server);
    tweak(&mut cfg);
    let registry = HealthRegistry::new();
    let entry = registry.register(Backend::Elasticsearch, true);
    let h = SearchActor::start_with(
        &cfg.elasticsearch,
        &cfg.supervisor,
        Templates::builtin().expect("templates"),
        clock,
        entry,
    );
    wait_until(Duration::from_secs(10), "up and bootstrapped", || {
        registry.readiness().is_ok() && h.last_bootstrap().is_some()
    })
    .await;
    (h, registry, Raw::new(server))
}

/// A plain client for inspecting the cluster.
struct Raw(Elasticsearch);

impl Raw {
    fn new(server: &Server) -> Raw {
        let url = elasticsearch::http::Url::parse(&server.url()).expect("url");
        let transport = elasticsearch::http::transport::Transport::single_node(url.as_str())
            .expect("transport");
        Raw(Elasticsearch::new(transport))
    }

    async fn req(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut headers = HeaderMap::new();
        headers.insert(
            elasticsearch::http::headers::CONTENT_TYPE,
            elasticsearch::http::headers::HeaderValue::from_static("application/json"),
        );
        let r = self
            .0
            .send(
                method,
                path,
                headers,
                None::<&()>,
                body.map(|b| b.to_string()),
                None,
            )
            .await
            .expect("request");
        let status = r.status_code().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.req(Method::Get, path, None).await
    }

    async fn indices(&self) -> BTreeSet<String> {
        let (_, v) = self.get("/_cat/indices?format=json&h=index").await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["index"].as_str().map(str::to_owned))
            .collect()
    }

    /// Indices holding `alias`, with their `is_write_index`.
    async fn alias(&self, alias: &str) -> Vec<(String, bool)> {
        let (status, v) = self.get(&format!("/_alias/{alias}")).await;
        if status == 404 {
            return Vec::new();
        }
        let mut out: Vec<(String, bool)> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(index, a)| (index.clone(), a["aliases"][alias]["is_write_index"] == true))
            .collect();
        out.sort();
        out
    }

    async fn setting(&self, index: &str, key: &str) -> Option<String> {
        let (_, v) = self
            .get(&format!("/{index}/_settings?flat_settings=true"))
            .await;
        v[index]["settings"][key].as_str().map(str::to_owned)
    }
}

fn session(id: &str, user: &str, started: &str) -> Value {
    json!({"session_id": id, "user_id": user, "status": "active", "started_at": started})
}

// ---------------------------------------------------------------------------------------------
// Bootstrap

#[actix_rt::test]
async fn bootstrap_puts_templates_indices_and_aliases_and_a_second_run_changes_nothing() {
    let server = elasticsearch();
    let cap = events::capture();
    let (h, _, raw) = start(&server, TestClock::at("2026-11-10T12:00:00Z"), |_| {}).await;
    let first = h.last_bootstrap().expect("ran");
    assert_eq!(first.templates_put, 5);
    assert_eq!(first.indices_created, 5);
    assert_eq!(first.aliases_moved, 5);
    assert_eq!(cap.named("search.bootstrap_applied").len(), 1);

    for e in Entity::ALL {
        let (status, t) = raw
            .get(&format!("/_index_template/lucid-{}", e.name()))
            .await;
        assert_eq!(status, 200, "{e}");
        let t = &t["index_templates"][0]["index_template"];
        assert_eq!(t["index_patterns"][0], format!("lucid-{}-*", e.name()));
        assert_eq!(t["_meta"]["managed_by"], "lucid-db");
        let index = format!("lucid-{}-2026.11", e.name());
        // The template's mappings were applied to the month's index.
        let (_, m) = raw.get(&format!("/{index}/_mapping")).await;
        assert_eq!(
            m[&index]["mappings"]["properties"][e.time_field()]["type"],
            "date"
        );
        assert_eq!(raw.alias(&e.read_alias()).await, [(index.clone(), false)]);
        assert_eq!(raw.alias(&e.write_alias()).await, [(index, true)]);
    }

    let second = h.call(RunBootstrap).await.expect("second run");
    assert!(!second.changed(), "{second:?}");
    assert_eq!(cap.named("search.bootstrap_applied").len(), 1);

    // Inside the last three days of the month, December is prepared and takes the write alias.
    // (A new actor on another clock, same cluster.)
    let (h2, _, _) = start(&server, TestClock::at("2026-11-28T00:00:00Z"), |_| {}).await;
    let report = h2.last_bootstrap().expect("ran");
    assert_eq!(
        (
            report.templates_put,
            report.indices_created,
            report.aliases_moved
        ),
        (0, 5, 5)
    );
    assert_eq!(
        raw.alias("lucid-blocks-write").await,
        [("lucid-blocks-2026.12".to_owned(), true)]
    );
    assert_eq!(raw.alias("lucid-blocks").await.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Routing

#[actix_rt::test]
async fn documents_land_in_the_utc_month_of_their_time_at_month_boundaries() {
    let server = elasticsearch();
    let (h, _, raw) = start(&server, TestClock::at("2026-12-05T12:00:00Z"), |_| {}).await;
    let cases = [
        ("s1", "2026-11-30T23:59:59.999Z", "lucid-sessions-2026.11"),
        ("s2", "2026-12-01T00:00:00Z", "lucid-sessions-2026.12"),
        ("s3", "2026-12-01T01:00:00+02:00", "lucid-sessions-2026.11"),
        ("s4", "2026-12-31T23:59:59Z", "lucid-sessions-2026.12"),
    ];
    for (id, time, index) in cases {
        let reply = h
            .call(IndexDoc {
                entity: Entity::Sessions,
                id: Some(id.into()),
                source: session(id, "u1", time),
                refresh: true,
            })
            .await
            .expect("indexed");
        assert_eq!(
            (reply.index.as_str(), reply.late),
            (index, false),
            "{id} {time}"
        );
        let (status, doc) = raw.get(&format!("/{index}/_doc/{id}")).await;
        assert_eq!((status, &doc["_source"]["session_id"]), (200, &json!(id)));
    }
    // Epoch milliseconds work as well: 2026-11-15T00:00:00Z.
    let reply = h
        .call(IndexDoc {
            entity: Entity::Blocks,
            id: Some("b1".into()),
            source: json!({"height": 1, "hash": "h1", "timestamp": 1_794_700_800_000_i64}),
            refresh: true,
        })
        .await
        .expect("indexed");
    assert_eq!(reply.index, "lucid-blocks-2026.11");
    // The read alias sees every month.
    let all = h
        .call(Count {
            entity: Entity::Sessions,
            filters: vec![],
            text: None,
        })
        .await
        .expect("count");
    assert_eq!(all, 4);
}

#[actix_rt::test]
async fn a_late_document_goes_to_the_write_index_and_is_found_through_the_read_alias() {
    let server = elasticsearch();
    let clock = TestClock::at("2026-12-05T12:00:00Z");
    let (h, _, raw) = start(&server, clock.clone(), |_| {}).await;

    // November is still hot on 5 December: its own index.
    let hot = h
        .call(IndexDoc {
            entity: Entity::Sessions,
            id: Some("nov-1".into()),
            source: session("nov-1", "u1", "2026-11-20T10:00:00Z"),
            refresh: true,
        })
        .await
        .expect("indexed");
    assert_eq!(
        (hot.index.as_str(), hot.late),
        ("lucid-sessions-2026.11", false)
    );

    // 9 December: November turned warm; the lifecycle blocks its writes.
    clock.set("2026-12-09T00:00:00Z");
    let report = h
        .call_within(
            ApplyLifecycle {
                backed_up: BTreeSet::new(),
                at: None,
            },
            Duration::from_secs(10),
        )
        .await
        .expect("lifecycle");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(
        raw.setting("lucid-sessions-2026.11", "index.blocks.write")
            .await
            .as_deref(),
        Some("true")
    );

    let late = h
        .call(IndexDoc {
            entity: Entity::Sessions,
            id: Some("nov-2".into()),
            source: session("nov-2", "u1", "2026-11-21T10:00:00Z"),
            refresh: true,
        })
        .await
        .expect("indexed late");
    assert_eq!(
        (late.index.as_str(), late.late),
        ("lucid-sessions-2026.12", true)
    );
    assert_eq!(h.late_documents(), 1);

    // Found through the read alias, with its own time intact.
    let found = h
        .call(GetDoc {
            entity: Entity::Sessions,
            id: "nov-2".into(),
            hint: None,
        })
        .await
        .expect("get")
        .expect("found");
    assert_eq!(found.index, "lucid-sessions-2026.12");
    assert_eq!(found.source["started_at"], "2026-11-21T10:00:00Z");
    let november = h
        .call(
            Search::new(Entity::Sessions)
                .filter(Filter::range(
                    "started_at",
                    Some(json!("2026-11-01T00:00:00Z")),
                    Some(json!("2026-11-30T23:59:59Z")),
                ))
                .sort("session_id", Order::Asc),
        )
        .await
        .expect("search");
    let ids: Vec<&str> = november.hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["nov-1", "nov-2"]);
}

#[actix_rt::test]
async fn a_document_in_a_past_month_is_updated_in_its_own_index() {
    let server = elasticsearch();
    let (h, _, raw) = start(&server, TestClock::at("2026-12-05T12:00:00Z"), |_| {}).await;
    h.call(IndexDoc {
        entity: Entity::Sessions,
        id: Some("old".into()),
        source: session("old", "u7", "2026-11-03T08:00:00Z"),
        refresh: true,
    })
    .await
    .expect("indexed");

    // No hint: resolved with an ids query on the read alias.
    let updated = h
        .call(UpdateDoc {
            entity: Entity::Sessions,
            id: "old".into(),
            hint: None,
            doc: json!({"status": "closed", "duration_ms": 4200}),
            refresh: true,
        })
        .await
        .expect("updated");
    assert_eq!(updated.index, "lucid-sessions-2026.11");
    let (_, doc) = raw.get("/lucid-sessions-2026.11/_doc/old").await;
    assert_eq!(doc["_source"]["status"], "closed");
    assert_eq!(doc["_source"]["duration_ms"], 4200);
    // Nothing leaked into the current month.
    let (status, _) = raw.get("/lucid-sessions-2026.12/_doc/old").await;
    assert_eq!(status, 404);

    // With a hint: straight to the month's index.
    h.call(UpdateDoc {
        entity: Entity::Sessions,
        id: "old".into(),
        hint: Some(at("2026-11-03T08:00:00Z")),
        doc: json!({"device": "pi-5"}),
        refresh: true,
    })
    .await
    .expect("updated with hint");
    let got = h
        .call(GetDoc {
            entity: Entity::Sessions,
            id: "old".into(),
            hint: Some(at("2026-11-03T08:00:00Z")),
        })
        .await
        .expect("get")
        .expect("found");
    assert_eq!(got.source["device"], "pi-5");

    // The time field cannot move a document; an unknown id is NotFound.
    let e = h
        .call(UpdateDoc {
            entity: Entity::Sessions,
            id: "old".into(),
            hint: None,
            doc: json!({"started_at": "2026-12-01T00:00:00Z"}),
            refresh: false,
        })
        .await
        .expect_err("time field");
    assert!(
        matches!(&e, SearchError::Invalid { field, .. } if field == "started_at"),
        "{e}"
    );
    let e = h
        .call(UpdateDoc {
            entity: Entity::Sessions,
            id: "nobody".into(),
            hint: None,
            doc: json!({"status": "x"}),
            refresh: false,
        })
        .await
        .expect_err("missing");
    assert!(matches!(e, SearchError::NotFound { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Bulk

#[actix_rt::test]
async fn a_bulk_of_10000_with_bad_documents_answers_exact_item_errors_and_indexes_the_rest() {
    let server = elasticsearch();
    let (h, _, _) = start(&server, TestClock::at("2026-11-20T00:00:00Z"), |c| {
        c.elasticsearch.bulk_max_docs = 700;
        c.elasticsearch.bulk_in_flight = 3;
    })
    .await;
    let n = 10_000;
    let docs: Vec<BulkDoc> = (0..n)
        .map(|i| {
            let mut source = json!({
                "tx_id": format!("t{i}"),
                "from": format!("a{}", i % 13),
                "to": format!("b{}", i % 7),
                "amount": i as f64 / 10.0,
                "timestamp": format!("2026-11-{:02}T{:02}:00:00Z", 1 + i % 19, i % 24),
            });
            if i % 1000 == 999 {
                source["timestamp"] = json!("not a time"); // refused before sending
            } else if i % 777 == 0 {
                source["amount"] = json!("lots"); // the mapping refuses it
            } else if i % 2500 == 1 {
                source["unknown_field"] = json!(1); // dynamic: strict
            }
            BulkDoc {
                id: Some(format!("t{i}")),
                source,
            }
        })
        .collect();
    let reply = h
        .call_within(
            Bulk {
                entity: Entity::Transactions,
                docs,
                refresh: true,
            },
            Duration::from_secs(60),
        )
        .await
        .expect("bulk");
    assert_eq!(reply.items.len(), n);
    let mut expected_failures = 0;
    for (i, item) in reply.items.iter().enumerate() {
        if i % 1000 == 999 {
            expected_failures += 1;
            assert!(
                matches!(item, BulkItem::Failed { status: 0, kind, reason } if kind == "invalid" && reason.contains("timestamp")),
                "{i}: {item:?}"
            );
        } else if i % 777 == 0 {
            expected_failures += 1;
            assert!(
                matches!(item, BulkItem::Failed { status: 400, kind, .. } if kind == "mapper_parsing_exception"),
                "{i}: {item:?}"
            );
        } else if i % 2500 == 1 {
            expected_failures += 1;
            assert!(
                matches!(item, BulkItem::Failed { status: 400, kind, .. } if kind.contains("strict_dynamic_mapping")),
                "{i}: {item:?}"
            );
        } else {
            assert!(
                matches!(item, BulkItem::Indexed(r) if r.index == "lucid-transactions-2026.11" && r.id == format!("t{i}")),
                "{i}: {item:?}"
            );
        }
    }
    assert_eq!(reply.failed, expected_failures);
    assert_eq!(reply.indexed, (n - expected_failures as usize) as u64);
    assert!(reply.requests >= (n / 700) as u64, "{}", reply.requests);
    // On a loaded machine a probe can miss its deadline during the bulk and the actor mark the
    // server down for a moment: the count is asked again while it says so, never judged then.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let stored = loop {
        let count = h
            .call(Count {
                entity: Entity::Transactions,
                filters: vec![],
                text: None,
            })
            .await;
        match count {
            Err(SearchError::Call(CallError::Unavailable { .. }))
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other.expect("count"),
        }
    };
    assert_eq!(stored, reply.indexed);
}

// ---------------------------------------------------------------------------------------------
// Search

async fn seed_sessions(h: &SearchHandle) {
    let agents = ["Firefox on Linux", "Chrome on Android", "Safari on iOS"];
    let docs: Vec<BulkDoc> = (0..30)
        .map(|i| BulkDoc {
            id: Some(format!("s{i:02}")),
            source: json!({
                "session_id": format!("s{i:02}"),
                "user_id": format!("u{}", i % 3),
                "status": if i % 5 == 0 { "closed" } else { "active" },
                "started_at": format!("2026-11-{:02}T10:00:00Z", 1 + i % 10),
                "duration_ms": 1000 * (i + 1),
                "user_agent": agents[i % 3],
            }),
        })
        .collect();
    let reply = h
        .call_within(
            Bulk {
                entity: Entity::Sessions,
                docs,
                refresh: true,
            },
            Duration::from_secs(10),
        )
        .await
        .expect("seed");
    assert_eq!(reply.failed, 0, "{reply:?}");
}

#[actix_rt::test]
async fn search_full_text_fuzzy_paging_and_aggregations_return_the_expected_hits_and_buckets() {
    let server = elasticsearch();
    let (h, _, _) = start(&server, TestClock::at("2026-11-20T00:00:00Z"), |_| {}).await;
    seed_sessions(&h).await;

    // Filters.
    let r = h
        .call(
            Search::new(Entity::Sessions)
                .filter(Filter::term("user_id", "u1"))
                .filter(Filter::term("status", "active"))
                .size(100),
        )
        .await
        .expect("search");
    // u1: i = 1, 4, 7, …, 28 (10 sessions); closed when i % 5 == 0: 10, 25.
    assert_eq!(r.total, 8);

    // Full text, and fuzzy with a typo.
    let exact = h
        .call(
            Search::new(Entity::Sessions)
                .text("firefox", &["user_agent"], false)
                .size(100),
        )
        .await
        .expect("text");
    assert_eq!(exact.total, 10);
    let typo = h
        .call(
            Search::new(Entity::Sessions)
                .text("firefx", &["user_agent"], true)
                .size(100),
        )
        .await
        .expect("fuzzy");
    assert_eq!(typo.total, 10);
    let strict = h
        .call(
            Search::new(Entity::Sessions)
                .text("firefx", &["user_agent"], false)
                .size(100),
        )
        .await
        .expect("not fuzzy");
    assert_eq!(strict.total, 0);

    // Paging with search_after visits every session once, in order.
    let mut seen = Vec::new();
    let mut page = Search::new(Entity::Sessions)
        .sort("duration_ms", Order::Desc)
        .sort("session_id", Order::Asc)
        .size(7);
    loop {
        let r = h.call(page.clone()).await.expect("page");
        seen.extend(r.hits.iter().map(|h| h.id.clone()));
        match r.next {
            Some(after) => page = page.after(after),
            None => break,
        }
    }
    let want: Vec<String> = (0..30).rev().map(|i| format!("s{i:02}")).collect();
    assert_eq!(seen, want);

    // Aggregations: terms, a daily histogram, stats, cardinality.
    let r = h
        .call(
            Search::new(Entity::Sessions)
                .size(0)
                .agg(Agg::Terms {
                    name: "status".into(),
                    field: "status".into(),
                    size: 5,
                })
                .agg(Agg::DateHistogram {
                    name: "per_day".into(),
                    field: "started_at".into(),
                    interval: "day".into(),
                })
                .agg(Agg::Stats {
                    name: "duration".into(),
                    field: "duration_ms".into(),
                })
                .agg(Agg::Cardinality {
                    name: "users".into(),
                    field: "user_id".into(),
                }),
        )
        .await
        .expect("aggs");
    let buckets: Vec<(String, u64)> = r.aggs["status"]["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            (
                b["key"].as_str().unwrap_or("").to_owned(),
                b["doc_count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        buckets,
        [("active".to_owned(), 24), ("closed".to_owned(), 6)]
    );
    let days = r.aggs["per_day"]["buckets"].as_array().expect("days");
    assert_eq!(days.len(), 10);
    assert!(days.iter().all(|d| d["doc_count"] == 3));
    assert_eq!(r.aggs["duration"]["count"], 30);
    assert_eq!(r.aggs["duration"]["max"].as_f64(), Some(30_000.0));
    assert_eq!(r.aggs["users"]["value"], 3);

    // The typed searches.
    let mine = h
        .search_sessions("u2", vec![Filter::term("status", "active")], 100)
        .await
        .expect("sessions");
    assert_eq!(mine.total, 8);
    let newest = &mine.hits[0].source["started_at"];
    assert!(
        mine.hits
            .iter()
            .all(|h| h.source["started_at"].as_str() <= newest.as_str())
    );
}

#[actix_rt::test]
async fn blocks_by_height_and_time_range() {
    let server = elasticsearch();
    let (h, _, _) = start(&server, TestClock::at("2026-11-20T00:00:00Z"), |_| {}).await;
    let docs: Vec<BulkDoc> = (0..50)
        .map(|i| BulkDoc {
            id: Some(format!("b{i}")),
            source: json!({
                "height": i,
                "hash": format!("h{i}"),
                "producer": format!("p{}", i % 4),
                "timestamp": format!("2026-11-{:02}T00:00:00Z", 1 + i / 5),
            }),
        })
        .collect();
    h.call_within(
        Bulk {
            entity: Entity::Blocks,
            docs,
            refresh: true,
        },
        Duration::from_secs(10),
    )
    .await
    .expect("blocks");
    let r = h
        .search_blocks(Some((10, 19)), None, vec![], 100)
        .await
        .expect("range");
    let heights: Vec<i64> = r
        .hits
        .iter()
        .filter_map(|h| h.source["height"].as_i64())
        .collect();
    assert_eq!(heights, (10..=19).collect::<Vec<_>>());
    let r = h
        .search_blocks(
            None,
            Some((at("2026-11-03T00:00:00Z"), at("2026-11-04T00:00:00Z"))),
            vec![Filter::term("producer", "p1")],
            100,
        )
        .await
        .expect("time");
    // Days 3 and 4 are heights 10-19; producer p1: 13, 17.
    let heights: Vec<i64> = r
        .hits
        .iter()
        .filter_map(|h| h.source["height"].as_i64())
        .collect();
    assert_eq!(heights, [13, 17]);
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

#[actix_rt::test]
async fn the_executor_moves_the_write_alias_blocks_writes_changes_settings_and_deletes_only_backed_up_indices()
 {
    let server = elasticsearch();
    let clock = TestClock::at("2027-03-10T00:00:00Z");
    let cap = events::capture();
    let (h, _, raw) = start(&server, clock.clone(), |c| {
        c.elasticsearch.lifecycle_delete = true;
    })
    .await;
    // Older months, as an earlier year of the daemon would have left them.
    for index in [
        "lucid-blocks-2026.10",   // delete phase, backed up
        "lucid-sessions-2026.10", // delete phase, not backed up
        "lucid-blocks-2027.01",   // cold
        "lucid-blocks-2027.02",   // warm
        "lucid-blocks-2026.13",   // not a month: reported, untouched
    ] {
        let (status, body) = raw.req(Method::Put, &format!("/{index}"), None).await;
        assert_eq!(status, 200, "{index}: {body}");
    }
    let backed_up = BTreeSet::from(["lucid-blocks-2026.10".to_owned()]);
    let report = h
        .call_within(
            ApplyLifecycle {
                backed_up: backed_up.clone(),
                at: None,
            },
            Duration::from_secs(10),
        )
        .await
        .expect("lifecycle");
    assert_eq!(
        (report.failed, report.unparseable, report.kept),
        (0, 1, 1),
        "{report:?}"
    );

    let indices = raw.indices().await;
    assert!(!indices.contains("lucid-blocks-2026.10"), "{indices:?}");
    assert!(indices.contains("lucid-sessions-2026.10"));
    assert!(indices.contains("lucid-blocks-2026.13"));
    assert_eq!(
        raw.setting("lucid-blocks-2027.02", "index.blocks.write")
            .await
            .as_deref(),
        Some("true")
    );
    assert_eq!(
        raw.setting("lucid-blocks-2027.01", "index.blocks.write")
            .await
            .as_deref(),
        Some("true")
    );
    assert_eq!(
        raw.setting("lucid-blocks-2027.01", "index.priority")
            .await
            .as_deref(),
        Some("0")
    );
    assert_eq!(
        raw.setting("lucid-blocks-2027.01", "index.number_of_replicas")
            .await
            .as_deref(),
        Some("0")
    );
    // The unparseable name was untouched and reported.
    assert_eq!(
        raw.setting("lucid-blocks-2026.13", "index.blocks.write")
            .await,
        None
    );
    let odd = cap.named("ilm.unparseable");
    assert_eq!(odd.len(), 1);
    assert!(!cap.named("ilm.transition").is_empty());

    // A second run has nothing left to change.
    let again = h
        .call_within(
            ApplyLifecycle {
                backed_up,
                at: None,
            },
            Duration::from_secs(10),
        )
        .await
        .expect("again");
    assert_eq!(again.applied, 0, "{again:?}");

    // Three days before April: April is created and takes the write alias.
    clock.set("2027-03-29T00:00:00Z");
    let report = h
        .call_within(
            ApplyLifecycle {
                backed_up: BTreeSet::new(),
                at: None,
            },
            Duration::from_secs(10),
        )
        .await
        .expect("prepare");
    assert_eq!(report.failed, 0);
    for e in Entity::ALL {
        assert_eq!(
            raw.alias(&e.write_alias()).await,
            [(format!("lucid-{}-2027.04", e.name()), true)]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Stats, bad input, faults

#[actix_rt::test]
async fn stats_report_cluster_health_and_each_index_with_its_phase() {
    let server = elasticsearch();
    let (h, registry, _) = start(&server, TestClock::at("2026-12-10T00:00:00Z"), |_| {}).await;
    for (id, time) in [
        ("a", "2026-12-01T00:00:00Z"),
        ("b", "2026-12-02T00:00:00Z"),
        ("c", "2026-11-02T00:00:00Z"),
    ] {
        h.call(IndexDoc {
            entity: Entity::Manifests,
            id: Some(id.into()),
            source: json!({"manifest_id": id, "created_at": time}),
            refresh: true,
        })
        .await
        .expect("indexed");
    }
    let stats = h.call(GetStats).await.expect("stats");
    assert!(
        ["green", "yellow"].contains(&stats.status.as_str()),
        "{}",
        stats.status
    );
    assert_eq!(stats.nodes, 1);
    let find = |name: &str| {
        stats
            .indices
            .iter()
            .find(|i| i.index == name)
            .unwrap_or_else(|| panic!("{name} in {:?}", stats.indices))
    };
    let dec = find("lucid-manifests-2026.12");
    assert_eq!(
        (dec.docs, dec.phase, dec.write_index),
        (3, Some("hot"), true)
    );
    assert!(dec.bytes > 0);
    // November is late documents only here (it turned warm on 8 December): the document went
    // to December's index and November's index was never created.
    assert!(
        stats
            .indices
            .iter()
            .all(|i| i.index != "lucid-manifests-2026.11")
    );
    assert_eq!(h.late_documents(), 1);
    let snap = registry.snapshot();
    let es = snap
        .iter()
        .find(|s| s.backend == Backend::Elasticsearch)
        .expect("registered");
    assert!(es.is_up() && es.latency_ms.is_some());
}

#[actix_rt::test]
async fn bad_input_is_refused_before_sending_and_server_refusals_carry_the_reason() {
    let server = elasticsearch();
    let (h, _, raw) = start(&server, TestClock::at("2026-11-20T00:00:00Z"), |c| {
        c.elasticsearch.bulk_max_bytes = lucid_actors::config::ByteSize(4096);
    })
    .await;
    assert!(Entity::parse("users").is_err());
    let before = raw.indices().await;
    for (source, field) in [
        (json!({"session_id": "x"}), "started_at"),
        (json!({"started_at": "20/11/2026"}), "started_at"),
        (json!({"started_at": "2027-05-01T00:00:00Z"}), "started_at"),
        (json!("not an object"), "document"),
        (
            json!({"started_at": "2026-11-20T00:00:00Z", "location": "x".repeat(5000)}),
            "document",
        ),
    ] {
        let e = h
            .call(IndexDoc {
                entity: Entity::Sessions,
                id: None,
                source,
                refresh: false,
            })
            .await
            .expect_err("refused");
        assert!(
            matches!(&e, SearchError::Invalid { field: f, .. } if f == field),
            "{e}"
        );
    }
    let e = h
        .call(IndexDoc {
            entity: Entity::Sessions,
            id: Some("../x".into()),
            source: session("x", "u", "2026-11-20T00:00:00Z"),
            refresh: false,
        })
        .await
        .expect_err("bad id");
    assert!(
        matches!(&e, SearchError::Invalid { field, .. } if field == "id"),
        "{e}"
    );
    assert_eq!(raw.indices().await, before, "nothing was created");

    // The server's own refusals: a text field cannot be sorted on, and a strict mapping
    // refuses an unknown field.
    h.call(IndexDoc {
        entity: Entity::Sessions,
        id: Some("one".into()),
        source: session("one", "u1", "2026-11-20T00:00:00Z"),
        refresh: true,
    })
    .await
    .expect("one document to sort");
    let e = h
        .call(Search::new(Entity::Sessions).sort("user_agent", Order::Asc))
        .await
        .expect_err("server refuses");
    assert!(
        matches!(&e, SearchError::Server { status: 400, reason, .. } if !reason.is_empty()),
        "{e}"
    );
    let e = h
        .call(IndexDoc {
            entity: Entity::Sessions,
            id: Some("x".into()),
            source: json!({"started_at": "2026-11-20T00:00:00Z", "colour": "red"}),
            refresh: false,
        })
        .await
        .expect_err("strict mapping");
    assert!(
        matches!(&e, SearchError::Server { status: 400, kind, .. } if kind.contains("strict_dynamic_mapping")),
        "{e}"
    );
}

#[actix_rt::test]
async fn kill_sigstop_and_restart_never_hang_a_call_and_recover_within_the_bound() {
    let mut server = elasticsearch();
    let cap = events::capture();
    let (h, registry, _) = start(&server, TestClock::at("2026-11-20T00:00:00Z"), |_| {}).await;
    let is_up = |r: &HealthRegistry| {
        r.snapshot()
            .iter()
            .any(|s| s.backend == Backend::Elasticsearch && s.is_up())
    };
    let count = || Count {
        entity: Entity::Blocks,
        filters: vec![],
        text: None,
    };

    // Killed: calls fail within the deadline (the wall clock only tells an answer from a
    // hang), then at once once the actor knows.
    server.stop();
    let started = Instant::now();
    assert!(h.ping().await.is_err());
    assert!(started.elapsed() < DEADLINE + SLACK);
    wait_until(Duration::from_secs(3), "marked down", || !is_up(&registry)).await;
    let e = at_once(h.call(count())).expect_err("unavailable");
    assert!(
        matches!(e, SearchError::Call(CallError::Unavailable { .. })),
        "{e}"
    );
    assert_eq!(cap.named("backend.down").len(), 1);

    // osmem keeps nothing across a restart: back up, the bootstrap puts everything again.
    // What bounds the recovery is the schedule — no retry is scheduled further out than the
    // cap —; the wall clock is given a loaded machine's slack.
    server.start_again();
    let test_cap = config(&server).supervisor.backoff_cap;
    wait_until(test_cap + DEADLINE + SLACK, "back up", || is_up(&registry)).await;
    let delays: Vec<u64> = cap
        .named("backend.retry_scheduled")
        .iter()
        .filter_map(|e| e.field("retry_in_ms")?.parse().ok())
        .collect();
    assert!(
        !delays.is_empty() && delays.iter().all(|&ms| ms <= test_cap.as_millis() as u64),
        "retries beyond the cap: {delays:?}"
    );
    wait_until(Duration::from_secs(5), "bootstrapped again", || {
        cap.named("search.bootstrap_applied").len() == 2
    })
    .await;
    assert_eq!(h.call(count()).await.expect("count"), 0);

    server.pause();
    let started = Instant::now();
    let calls = futures_util::future::join_all((0..8).map(|_| h.call(count()))).await;
    assert!(calls.iter().all(Result::is_err), "{calls:?}");
    assert!(
        started.elapsed() < DEADLINE + SLACK,
        "{:?}",
        started.elapsed()
    );
    wait_until(Duration::from_secs(3), "down while frozen", || {
        !is_up(&registry)
    })
    .await;
    server.resume();
    wait_until(Duration::from_secs(10), "up after SIGCONT", || {
        is_up(&registry)
    })
    .await;
    h.ping().await.expect("ping after resume");
}

// ---------------------------------------------------------------------------------------------
// Command line

/// Runs `lucid-db search …` against `url` (environment only, like the volumes CLI test).
fn cli(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");
    let root = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(BIN)
        .arg("search")
        .args(args)
        .env_clear()
        .env("LUCID_DB__VOLUMES__ROOT", root.path())
        .env("LUCID_DB__ELASTICSEARCH__URL", url)
        .env("LUCID_DB__ELASTICSEARCH__LIFECYCLE_DELETE", "true")
        .output()
        .expect("run lucid-db");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[actix_rt::test]
async fn the_cli_prints_the_lifecycle_plan_changes_nothing_on_a_dry_run_and_applies_on_request() {
    let server = elasticsearch();
    let raw = Raw::new(&server);
    let url = server.url();
    let at = "--at=2027-03-29T00:00:00Z";

    // An empty cluster: March and April for every entity, and the write aliases on April.
    let (code, out, err) = cli(&url, &["lifecycle", "--dry-run", at]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("lifecycle at 2027-03-29T00:00:00+00:00"),
        "{out}"
    );
    for e in Entity::ALL {
        for month in ["2027.03", "2027.04"] {
            let line = format!("create           lucid-{}-{month}", e.name());
            assert!(out.contains(&line), "{line} missing in:\n{out}");
        }
        assert!(
            out.contains(&format!("{} from nowhere", e.write_alias())),
            "{out}"
        );
    }
    assert!(
        raw.indices().await.is_empty(),
        "a dry run changed the cluster"
    );

    // Bootstrap, an old backed-up index, then the plan applied.
    let (code, out, err) = cli(&url, &["bootstrap"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("templates put: 5"), "{out}");
    let (code, out, _) = cli(&url, &["bootstrap"]);
    assert_eq!(
        (code, out.as_str()),
        (
            Some(0),
            "nothing to do: templates, indices and aliases are in place\n"
        )
    );
    raw.req(Method::Put, "/lucid-audit-logs-2026.10", None)
        .await;
    let (code, out, err) = cli(
        &url,
        &[
            "lifecycle",
            "--apply",
            "--backed-up",
            "lucid-audit-logs-2026.10",
            at,
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("0 failed"), "{out}");
    assert!(!raw.indices().await.contains("lucid-audit-logs-2026.10"));
    assert_eq!(
        raw.alias("lucid-audit-logs-write").await,
        [("lucid-audit-logs-2027.04".to_owned(), true)]
    );

    let (code, out, err) = cli(&url, &["stats", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let stats: Value = serde_json::from_str(&out).expect("json");
    let listed: BTreeSet<&str> = stats["indices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["index"].as_str())
        .collect();
    // (The bootstrap also made today's months: `bootstrap` runs at the real time.)
    for e in Entity::ALL {
        for month in ["2027.03", "2027.04"] {
            assert!(
                listed.contains(format!("lucid-{}-{month}", e.name()).as_str()),
                "{out}"
            );
        }
    }

    // Usage and reachability errors.
    let (code, _, err) = cli(&url, &["lifecycle", "--at", "next tuesday"]);
    assert_eq!(code, Some(64), "{err}");
    let nobody = format!("http://127.0.0.1:{}", lucid_testkit::free_port());
    let (code, _, err) = cli(&nobody, &["stats"]);
    assert_eq!(code, Some(69), "{err}");
}

/// The command waits for its backend through failed attempts and backoff, within the call
/// deadline: a cluster that comes up meanwhile is used, one that does not is exit 69.
#[test]
fn the_cli_waits_for_a_cluster_that_comes_up_within_the_deadline() {
    use std::io::{BufRead, BufReader, Read};

    const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");
    let mut server = elasticsearch();
    let root = tempfile::tempdir().expect("tempdir");
    server.stop();
    let started = Instant::now();
    let mut child = std::process::Command::new(BIN)
        .args(["search", "stats", "--json"])
        .env_clear()
        .env("LUCID_DB__VOLUMES__ROOT", root.path())
        .env("LUCID_DB__ELASTICSEARCH__URL", server.url())
        .env("LUCID_DB__SUPERVISOR__CALL_DEADLINE", "20s")
        // The events on stderr: the test hears the failed attempt it waits for.
        .env("RUST_LOG", "lucid_db::event=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run lucid-db");
    // Refused at first (a connect fails at once): the cluster comes back only once the command
    // has said so (`backend.down`), while it still waits. Its stderr is read to the end on a
    // thread, so the command never blocks on a full pipe.
    let stderr = child.stderr.take().expect("stderr");
    let (heard_down, down) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.expect("stderr line");
            if line.contains("backend.down") {
                let _ = heard_down.send(());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    down.recv_timeout(Duration::from_secs(15))
        .expect("backend.down while the cluster is away");
    server.start_again();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    let status = child.wait().expect("wait");
    let err = reader.join().expect("stderr reader");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("backend.up"),
        "it connected after the outage: {err}"
    );
    let stats: Value = serde_json::from_str(&stdout).expect("json");
    assert!(stats["status"].is_string(), "{stats}");
    assert!(started.elapsed() < Duration::from_secs(20));

    // Down for the whole deadline: 69, once the deadline has passed, with the last error.
    server.stop();
    let started = Instant::now();
    let out = std::process::Command::new(BIN)
        .args(["search", "stats"])
        .env_clear()
        .env("LUCID_DB__VOLUMES__ROOT", root.path())
        .env("LUCID_DB__ELASTICSEARCH__URL", server.url())
        .env("LUCID_DB__SUPERVISOR__CALL_DEADLINE", "1s")
        .output()
        .expect("run lucid-db");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(err.contains("connection_refused"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Export / import

async fn export_all(h: &SearchHandle, index: &str) -> (IndexMetadata, Vec<ExportedDocument>) {
    let (meta, mut stream) = h.export(index).await.expect("export");
    let mut docs = Vec::new();
    while let Some(doc) = stream.next().await {
        docs.push(doc.expect("document"));
    }
    (meta, docs)
}

fn lines_of(
    docs: &[ExportedDocument],
) -> impl futures_util::Stream<Item = Result<ExportedDocument, String>> + Send + 'static + use<> {
    let owned: Vec<ExportedDocument> = docs.to_vec();
    futures_util::stream::iter(owned.into_iter().map(Ok))
}

/// An import of `meta`'s index under `prefix`.
fn into(meta: &IndexMetadata, prefix: &str) -> ImportOptions {
    ImportOptions::new(ImportTarget {
        metadata: meta.clone(),
        prefix: prefix.to_owned(),
    })
}

#[actix_rt::test]
async fn export_delete_import_restores_mappings_prefixed_aliases_and_documents() {
    let server = elasticsearch();
    let (h, _, raw) = start(&server, TestClock::at("2026-12-05T12:00:00Z"), |c| {
        c.elasticsearch.bulk_max_docs = 400;
    })
    .await;
    let docs: Vec<BulkDoc> = (0..2500)
        .map(|i| {
            let month = if i % 2 == 0 { "11" } else { "12" };
            BulkDoc {
                id: Some(format!("s{i}")),
                source: session(
                    &format!("s{i}"),
                    &format!("u{}", i % 9),
                    &format!("2026-{month}-0{}T10:00:00Z", 1 + i % 4),
                ),
            }
        })
        .collect();
    h.call_within(
        Bulk {
            entity: Entity::Sessions,
            docs,
            refresh: true,
        },
        Duration::from_secs(30),
    )
    .await
    .expect("seed");
    let count = || Count {
        entity: Entity::Sessions,
        filters: vec![],
        text: None,
    };
    assert_eq!(h.call(count()).await.expect("count"), 2500);
    let listed = h.list_indices().await.expect("list");
    assert!(
        listed.contains(&"lucid-sessions-2026.11".to_owned()),
        "{listed:?}"
    );

    let (nov, nov_lines) = export_all(&h, "lucid-sessions-2026.11").await;
    let (dec, dec_lines) = export_all(&h, "lucid-sessions-2026.12").await;
    assert_eq!((nov.documents, nov_lines.len()), (1250, 1250));
    assert_eq!((dec.documents, dec_lines.len()), (1250, 1250));
    assert_eq!(nov.mappings["properties"]["started_at"]["type"], "date");
    assert!(dec.aliases.get("lucid-sessions").is_some());
    assert_eq!(
        dec.aliases["lucid-sessions-write"],
        json!({}),
        "no is_write_index"
    );
    // A backup stores the metadata as JSON.
    let nov: IndexMetadata =
        serde_json::from_str(&serde_json::to_string(&nov).expect("json")).expect("metadata");

    for index in ["lucid-sessions-2026.11", "lucid-sessions-2026.12"] {
        let (status, _) = raw.req(Method::Delete, &format!("/{index}"), None).await;
        assert_eq!(status, 200);
    }
    assert_eq!(h.call(count()).await.expect("count"), 0);

    for (meta, lines) in [(&nov, &nov_lines), (&dec, &dec_lines)] {
        let summary = h
            .import(into(meta, ""), lines_of(lines))
            .await
            .expect("import");
        assert_eq!((summary.read, summary.written), (1250, 1250));
        assert!(summary.details.requests >= 4, "{summary:?}");
    }
    assert_eq!(h.call(count()).await.expect("count"), 2500);
    let (_, mapping) = raw.get("/lucid-sessions-2026.11/_mapping").await;
    assert_eq!(
        mapping["lucid-sessions-2026.11"]["mappings"]["dynamic"],
        "strict"
    );
    let (_, doc) = raw.get("/lucid-sessions-2026.11/_doc/s42").await;
    assert_eq!(doc["_source"]["user_id"], "u6");
    assert_eq!(raw.alias("lucid-sessions").await.len(), 2);

    // A target that holds documents is refused unless forced.
    let e = h
        .import(into(&nov, ""), lines_of(&nov_lines))
        .await
        .expect_err("not empty");
    assert!(
        matches!(
            e,
            SearchError::NotEmpty {
                documents: 1250,
                ..
            }
        ),
        "{e}"
    );
    h.import(
        into(&nov, "").existing(Existing::Replace),
        lines_of(&nov_lines),
    )
    .await
    .expect("forced");
    assert_eq!(h.call(count()).await.expect("count"), 2500);

    // A drill under a prefix: its own index and aliases; the live read alias does not see it.
    let drill = h
        .import(into(&nov, "drill-"), lines_of(&nov_lines))
        .await
        .expect("drill");
    assert_eq!(drill.details.index, "drill-lucid-sessions-2026.11");
    assert_eq!(drill.details.aliases, ["drill-lucid-sessions"]);
    assert_eq!(h.call(count()).await.expect("count"), 2500);
    let (_, n) = raw.get("/drill-lucid-sessions/_count").await;
    assert_eq!(n["count"], 1250);

    // A broken document: the import fails and leaves no index behind.
    let mut broken = nov_lines.clone();
    broken[700].source = b"{not json".to_vec();
    let e = h
        .import(into(&nov, "bad-"), lines_of(&broken))
        .await
        .expect_err("broken line");
    assert!(matches!(e, SearchError::Codec { .. }), "{e}");
    assert!(!raw.indices().await.contains("bad-lucid-sessions-2026.11"));
}

#[actix_rt::test]
async fn an_empty_index_counts_as_empty_a_feed_imports_and_a_failing_source_fails_with_the_count() {
    let server = elasticsearch();
    let (h, _, raw) = start(&server, TestClock::at("2026-12-05T12:00:00Z"), |c| {
        c.elasticsearch.bulk_max_docs = 400;
    })
    .await;
    let index = "lucid-sessions-2026.12";
    let docs: Vec<BulkDoc> = (0..1000)
        .map(|i| BulkDoc {
            id: Some(format!("s{i}")),
            source: session(&format!("s{i}"), "u1", "2026-12-02T10:00:00Z"),
        })
        .collect();
    h.call_within(
        Bulk {
            entity: Entity::Sessions,
            docs,
            refresh: true,
        },
        Duration::from_secs(30),
    )
    .await
    .expect("seed");
    let (meta, lines) = export_all(&h, index).await;
    assert_eq!(lines.len(), 1000);

    // The export's feed is the import's source as it is: a drill beside the live index.
    let (_, feed) = h.export(index).await.expect("export");
    let drill = h
        .import(into(&meta, "feed-"), feed)
        .await
        .expect("import from the feed");
    assert_eq!((drill.read, drill.written), (1000, 1000));
    let (_, n) = raw.get("/feed-lucid-sessions-2026.12/_count").await;
    assert_eq!(n["count"], 1000);

    // A source that fails mid-stream fails the import with the documents written (the first
    // request of 400), and leaves no index behind.
    let head: Vec<ExportedDocument> = lines[..500].to_vec();
    let cut = futures_util::stream::iter(
        head.into_iter()
            .map(Ok)
            .chain([Err("the artifact ended early".to_owned())]),
    );
    let err = h
        .import(into(&meta, "cut-"), cut)
        .await
        .expect_err("a failed source fails");
    assert_eq!(err.code(), "import_source_failed", "{err}");
    assert!(
        matches!(&err, SearchError::ImportSource { written: 400, reason } if reason.contains("ended early")),
        "{err:?}"
    );
    assert!(!raw.indices().await.contains("cut-lucid-sessions-2026.12"));

    // This month's index as the bootstrap makes it on a fresh node: there, and empty.
    let (status, _) = raw.req(Method::Delete, &format!("/{index}"), None).await;
    assert_eq!(status, 200);
    h.call(RunBootstrap).await.expect("bootstrap");
    let (_, n) = raw.get(&format!("/{index}/_count")).await;
    assert_eq!(n["count"], 0);
    assert_eq!(
        raw.alias("lucid-sessions-write").await,
        [(index.to_owned(), true)]
    );
    let err = h
        .import(
            into(&meta, "").existing(Existing::RefuseAny),
            lines_of(&lines),
        )
        .await
        .expect_err("exists");
    assert!(matches!(err, SearchError::Exists { .. }), "{err:?}");
    assert_eq!(err.code(), "exists");
    let summary = h
        .import(into(&meta, ""), lines_of(&lines))
        .await
        .expect("an empty index counts as empty");
    assert_eq!(summary.written, 1000);
    let (_, n) = raw.get(&format!("/{index}/_count")).await;
    assert_eq!(n["count"], 1000);
    // Recreated from the export, it is still where the write alias writes.
    assert_eq!(
        raw.alias("lucid-sessions-write").await,
        [(index.to_owned(), true)]
    );
}

#[actix_rt::test]
async fn bulk_items_refused_with_429_are_retried_with_backoff_and_reported_when_retries_run_out() {
    let server = elasticsearch();
    let (h, _, raw) = start(&server, TestClock::at("2026-11-20T00:00:00Z"), |c| {
        c.elasticsearch.bulk_retries = 4;
        c.elasticsearch.bulk_max_docs = 50;
    })
    .await;
    let index = "/lucid-transactions-2026.11/_settings";
    let docs = |from: usize| -> Vec<BulkDoc> {
        (from..from + 120)
            .map(|i| BulkDoc {
                id: Some(format!("t{i}")),
                source: json!({"tx_id": format!("t{i}"), "timestamp": "2026-11-10T00:00:00Z"}),
            })
            .collect()
    };
    // The flood-stage block answers 429 (TOO_MANY_REQUESTS) until it is lifted.
    let block = |on: bool| {
        let value = if on { json!(true) } else { Value::Null };
        raw.req(
            Method::Put,
            index,
            Some(json!({"index.blocks.read_only_allow_delete": value})),
        )
    };
    let (status, body) = block(true).await;
    assert_eq!(status, 200, "{body}");
    let bulk = h.call_within(
        Bulk {
            entity: Entity::Transactions,
            docs: docs(0),
            refresh: true,
        },
        Duration::from_secs(20),
    );
    // Lifted once the block has refused the bulk: the retries are what this is about.
    let retried_before = h.retried_documents();
    let lift = async {
        wait_until(Duration::from_secs(10), "a 429 to be retried", || {
            h.retried_documents() > retried_before
        })
        .await;
        block(false).await
    };
    let (reply, (status, _)) = futures_util::future::join(bulk, lift).await;
    assert_eq!(status, 200);
    let reply = reply.expect("bulk");
    assert_eq!((reply.indexed, reply.failed), (120, 0), "{reply:?}");
    // Three requests' worth of documents, sent more than three times: the retries.
    assert!(reply.requests > 3, "{}", reply.requests);

    // Retries run out: every item says 429 and why.
    block(true).await;
    let reply = h
        .call_within(
            Bulk {
                entity: Entity::Transactions,
                docs: docs(1000),
                refresh: false,
            },
            Duration::from_secs(20),
        )
        .await
        .expect("bulk answers");
    block(false).await;
    assert_eq!(reply.failed, 120);
    assert!(
        reply.items.iter().all(
            |i| matches!(i, BulkItem::Failed { status: 429, reason, .. } if !reason.is_empty())
        ),
        "{:?}",
        reply.items.first()
    );
    assert_eq!(
        reply.requests,
        3 * 5,
        "each request tried once and retried 4 times"
    );
}

// ---------------------------------------------------------------------------------------------
// The bulk indexer

fn transaction(i: usize) -> BulkDoc {
    BulkDoc {
        id: Some(format!("q{i}")),
        source: json!({
            "tx_id": format!("q{i}"),
            "from": format!("a{}", i % 5),
            "amount": i as f64,
            "timestamp": format!("2026-11-{:02}T12:00:00Z", 1 + i % 19),
        }),
    }
}

#[actix_rt::test]
async fn the_bulk_indexer_batches_single_documents_and_answers_each_caller_its_own_outcome() {
    let server = elasticsearch();
    let (h, _, raw) = start(&server, TestClock::at("2026-11-20T00:00:00Z"), |c| {
        c.elasticsearch.bulk_max_docs = 100;
        c.elasticsearch.bulk_in_flight = 2;
        c.elasticsearch.bulk_flush_interval = Duration::from_millis(200);
        // The count after 1,000 writes can pass the 500 ms test deadline while other tests
        // load a 2-core CI machine.
        c.supervisor.call_deadline = Duration::from_secs(5);
    })
    .await;
    let n = 1000;
    let docs: Vec<BulkDoc> = (0..n)
        .map(|i| {
            let mut d = transaction(i);
            if i % 97 == 5 {
                d.source["amount"] = json!("lots"); // the mapping refuses it
            } else if i % 250 == 7 {
                d.source["timestamp"] = json!("soon"); // refused before it is queued
            }
            d
        })
        .collect();
    let answers =
        futures_util::future::join_all(docs.into_iter().map(|d| h.submit(Entity::Transactions, d)))
            .await;
    let (mut indexed, mut invalid) = (0, 0);
    for (i, answer) in answers.iter().enumerate() {
        if i % 97 == 5 {
            assert!(
                matches!(answer, Err(SearchError::Server { status: 400, kind, .. }) if kind == "mapper_parsing_exception"),
                "{i}: {answer:?}"
            );
        } else if i % 250 == 7 {
            invalid += 1;
            assert!(
                matches!(answer, Err(SearchError::Invalid { field, .. }) if field == "timestamp"),
                "{i}: {answer:?}"
            );
        } else {
            indexed += 1;
            let reply = answer.as_ref().expect("indexed");
            assert_eq!(reply.id, format!("q{i}"));
            assert_eq!(reply.index, "lucid-transactions-2026.11");
        }
    }
    let stats = h.indexer_stats();
    assert_eq!(stats.submitted, (n - invalid) as u64);
    assert_eq!(stats.answered, stats.submitted);
    assert_eq!(stats.held_bytes, 0);
    // Batches of at most 100: at least 10 of them, and not one per document.
    assert!((10..=40).contains(&stats.batches), "{stats:?}");

    let (status, _) = raw
        .req(Method::Post, "/lucid-transactions/_refresh", None)
        .await;
    assert_eq!(status, 200);
    let count = || Count {
        entity: Entity::Transactions,
        filters: vec![],
        text: None,
    };
    assert_eq!(h.call(count()).await.expect("count"), indexed);

    // A lone document waits for the flush interval, then goes on its own.
    let started = Instant::now();
    let reply = h
        .submit(Entity::Transactions, transaction(5000))
        .await
        .expect("lone document");
    assert_eq!(reply.id, "q5000");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(h.indexer_stats().batches, stats.batches + 1);
}

#[actix_rt::test]
async fn the_bulk_indexer_answers_busy_while_a_blocked_cluster_holds_its_budget() {
    let mut server = elasticsearch();
    let (h, registry, raw) = start(&server, TestClock::at("2026-11-20T00:00:00Z"), |c| {
        c.elasticsearch.bulk_max_docs = 10;
        c.elasticsearch.bulk_max_bytes = lucid_actors::config::ByteSize(4096);
        c.elasticsearch.bulk_in_flight = 1;
        c.elasticsearch.bulk_retries = 5;
        c.elasticsearch.bulk_flush_interval = Duration::from_millis(50);
    })
    .await;
    let budget = h.indexer_stats().budget_bytes;
    assert_eq!(budget, 2 * 4096);
    // The flood-stage block answers 429: batches stay in flight, retried with backoff.
    let index = "/lucid-transactions-2026.11/_settings";
    let block = |on: bool| {
        let value = if on { json!(true) } else { Value::Null };
        raw.req(
            Method::Put,
            index,
            Some(json!({"index.blocks.read_only_allow_delete": value})),
        )
    };
    assert_eq!(block(true).await.0, 200);
    let held = Arc::new(Mutex::new(0u64));
    let submits = futures_util::future::join_all((0..100).map(|i| {
        let h = h.clone();
        let held = held.clone();
        async move {
            let answer = h.try_submit(Entity::Transactions, transaction(i)).await;
            let now = h.indexer_stats().held_bytes;
            let mut max = held.lock().expect("held");
            *max = (*max).max(now);
            answer
        }
    }));
    // Lifted once a refused batch is being retried: until then the budget stays held by the
    // blocked cluster.
    let lift = async {
        wait_until(Duration::from_secs(10), "a 429 to be retried", || {
            h.retried_documents() > 0
        })
        .await;
        block(false).await
    };
    let (answers, (status, _)) = futures_util::future::join(submits, lift).await;
    assert_eq!(status, 200);
    let busy = answers
        .iter()
        .filter(
            |a| matches!(a, Err(SearchError::Busy { budget_bytes, .. }) if *budget_bytes == budget),
        )
        .count();
    let ok = answers.iter().filter(|a| a.is_ok()).count();
    assert!(busy > 0, "nothing refused: {:?}", h.indexer_stats());
    assert_eq!(
        ok + busy,
        100,
        "every other answer is a success: {answers:?}"
    );
    assert!(*held.lock().expect("held") <= budget);
    assert_eq!(h.indexer_stats().busy, busy as u64);
    h.flush().await.expect("flush");
    assert_eq!(h.indexer_stats().held_bytes, 0);

    // While the cluster is down, a submission is refused at once and nothing is queued.
    server.stop();
    wait_until(Duration::from_secs(3), "marked down", || {
        registry.readiness().is_err()
    })
    .await;
    let e = at_once(h.submit(Entity::Transactions, transaction(7))).expect_err("unavailable");
    assert!(
        matches!(e, SearchError::Call(CallError::Unavailable { .. })),
        "{e}"
    );
    assert_eq!(h.indexer_stats().held_bytes, 0);
}

#[actix_rt::test]
async fn stopping_the_daemon_sends_what_the_bulk_indexer_still_holds() {
    let server = elasticsearch();
    let mut cfg = config(&server);
    // Nothing would go for a minute on its own.
    cfg.elasticsearch.bulk_flush_interval = Duration::from_secs(60);
    let handles = lucid_actors::start(&cfg, lucid_actors::Roles::SIBLING);
    let h = handles.search.clone().expect("elasticsearch enabled");
    wait_until(Duration::from_secs(10), "up and bootstrapped", || {
        handles.registry.readiness().is_ok() && h.last_bootstrap().is_some()
    })
    .await;
    let now = Utc::now();
    let submitted: Vec<_> = (0..25)
        .map(|i| {
            let h = h.clone();
            let doc = BulkDoc {
                id: Some(format!("held{i}")),
                source: json!({"tx_id": format!("held{i}"), "timestamp": now.to_rfc3339()}),
            };
            actix_rt::spawn(async move { h.submit(Entity::Transactions, doc).await })
        })
        .collect();
    wait_until(Duration::from_secs(2), "all 25 queued", || {
        h.indexer_stats().submitted == 25
    })
    .await;
    assert_eq!(h.indexer_stats().batches, 0, "nothing sent before the stop");

    // Sent at the stop, not after the minute the interval would have made them wait.
    let started = Instant::now();
    let late = handles.shutdown(Duration::from_secs(4)).await;
    assert!(late.is_empty(), "{late:?}");
    assert!(started.elapsed() < cfg.elasticsearch.bulk_flush_interval);
    for s in submitted {
        s.await.expect("join").expect("indexed at the stop");
    }
    let raw = Raw::new(&server);
    let (status, _) = raw
        .req(Method::Post, "/lucid-transactions/_refresh", None)
        .await;
    assert_eq!(status, 200);
    let (_, body) = raw.get("/lucid-transactions/_count").await;
    assert_eq!(body["count"], 25, "{body}");
}

#[actix_rt::test]
async fn writes_answer_busy_while_an_import_writes_under_the_live_names_and_reads_go_on() {
    let server = elasticsearch();
    let (h, _, _raw) = start(&server, TestClock::at("2026-12-05T12:00:00Z"), |_| {}).await;
    let write = |id: &str| IndexDoc {
        entity: Entity::Sessions,
        id: Some(id.into()),
        source: session(id, "u1", "2026-12-01T10:00:00Z"),
        refresh: true,
    };
    h.call(write("s0")).await.expect("indexed");
    let (meta, _) = export_all(&h, "lucid-sessions-2026.12").await;

    // An import under the live names, its source held open: a restore under way.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<ExportedDocument, String>>(1);
    let source = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let importing = {
        let h = h.clone();
        let options = into(&meta, "").existing(Existing::Replace);
        actix_rt::spawn(async move { h.import(options, source).await })
    };
    let started = Instant::now();
    let err = loop {
        match h.call(write("s1")).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "writes were never refused while the import ran"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(err.code(), "busy", "{err}");
    assert!(err.to_string().contains("a restore is writing"), "{err}");
    // Reads go on.
    h.call(Count {
        entity: Entity::Sessions,
        filters: vec![],
        text: None,
    })
    .await
    .expect("a read");

    // The import ends: writes are taken again.
    drop(tx);
    importing.await.expect("join").expect("the import");
    h.call(write("s2")).await.expect("indexed after");
}
