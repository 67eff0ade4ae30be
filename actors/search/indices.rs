//! What the cluster has and how lucid-db changes it: the index templates (from
//! `configs/elasticsearch/`), the bootstrap, the lifecycle executor, and stats.
//!
//! Templates carry a digest of their body in `_meta.digest`: the bootstrap compares digests,
//! so a second run changes nothing and an edited template file (or other shard settings) is
//! put again. The executor reads every `lucid-*` index's settings and aliases, asks the pure
//! planner ([`super::lifecycle::plan`]) what to do, and applies the actions one at a time,
//! each with an `ilm.transition` event; a failed action is reported and the run goes on.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use actix::Message;
use chrono::{DateTime, Utc};
use elasticsearch::http::Method;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::lifecycle::{self, Action, IndexInfo, Policy};
use super::names::{Entity, IndexName};
use super::{Conn, Request, SearchError, SearchOp, Settings, Shared, sealed};
use crate::events::{
    self, IlmCompleted, IlmTransition, IlmTransitionFailed, IlmUnparseable, SearchBootstrapApplied,
};
use crate::supervisor::link::OpFuture;

// ---------------------------------------------------------------------------------------------
// Templates

/// One entity's mappings, from `configs/elasticsearch/{entity}.json`.
#[derive(Debug, Clone)]
pub struct TemplateSpec {
    pub entity: Entity,
    pub mappings: Value,
}

/// The five entities' templates, checked.
#[derive(Debug, Clone)]
pub struct Templates {
    specs: Arc<Vec<TemplateSpec>>,
}

const BUILTIN: [(Entity, &str); 5] = [
    (
        Entity::Sessions,
        include_str!("../../configs/elasticsearch/sessions.json"),
    ),
    (
        Entity::Blocks,
        include_str!("../../configs/elasticsearch/blocks.json"),
    ),
    (
        Entity::Transactions,
        include_str!("../../configs/elasticsearch/transactions.json"),
    ),
    (
        Entity::Manifests,
        include_str!("../../configs/elasticsearch/manifests.json"),
    ),
    (
        Entity::AuditLogs,
        include_str!("../../configs/elasticsearch/audit-logs.json"),
    ),
];

impl Templates {
    /// The files compiled into the binary.
    pub fn builtin() -> Result<Templates, String> {
        let specs = BUILTIN
            .iter()
            .map(|(entity, text)| parse_spec(*entity, text))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Templates {
            specs: Arc::new(specs),
        })
    }

    pub fn get(&self, entity: Entity) -> &TemplateSpec {
        self.specs
            .iter()
            .find(|s| s.entity == entity)
            .unwrap_or_else(|| unreachable!("builtin() checks every entity has a template"))
    }

    /// The composable index template for `entity`: its pattern, shards and replicas, the
    /// mappings, the read alias, and `_meta.digest` over all of that.
    pub fn body(&self, entity: Entity, shards: u32, replicas: u32) -> Value {
        let mut body = json!({
            "index_patterns": [entity.index_pattern()],
            "priority": 100,
            "template": {
                "settings": {"number_of_shards": shards, "number_of_replicas": replicas},
                "mappings": self.get(entity).mappings,
                "aliases": {entity.read_alias(): {}},
            },
        });
        let digest = blake3::hash(body.to_string().as_bytes())
            .to_hex()
            .to_string();
        body["_meta"] = json!({"managed_by": "lucid-db", "digest": digest});
        body
    }
}

fn parse_spec(entity: Entity, text: &str) -> Result<TemplateSpec, String> {
    let file = format!("configs/elasticsearch/{}.json", entity.name());
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("{file}: {e}"))?;
    if doc.get("entity").and_then(Value::as_str) != Some(entity.name()) {
        return Err(format!("{file}: entity must be {:?}", entity.name()));
    }
    if doc.get("time_field").and_then(Value::as_str) != Some(entity.time_field()) {
        return Err(format!(
            "{file}: time_field must be {:?}",
            entity.time_field()
        ));
    }
    let mappings = doc
        .get("mappings")
        .cloned()
        .ok_or_else(|| format!("{file}: no mappings"))?;
    let time_type = mappings
        .pointer(&format!("/properties/{}/type", entity.time_field()))
        .and_then(Value::as_str);
    if time_type != Some("date") {
        return Err(format!(
            "{file}: mappings.properties.{} must be a date",
            entity.time_field()
        ));
    }
    Ok(TemplateSpec { entity, mappings })
}

// ---------------------------------------------------------------------------------------------
// Reading the cluster

/// Every `lucid-*` index with the settings and aliases the planner needs.
pub(crate) async fn gather(conn: &Conn) -> Result<Vec<IndexInfo>, SearchError> {
    let settings = conn
        .send(
            Request::new(Method::Get, "/lucid-*/_settings")
                .query("flat_settings", "true")
                .query("allow_no_indices", "true"),
        )
        .await?
        .body;
    let aliases = conn
        .send(Request::new(Method::Get, "/lucid-*/_alias").query("allow_no_indices", "true"))
        .await?
        .body;
    let mut out = Vec::new();
    for (name, v) in settings.as_object().into_iter().flatten() {
        let s = &v["settings"];
        let text = |key: &str| match &s[key] {
            Value::String(t) => Some(t.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        };
        let write_alias = IndexName::parse(name).is_ok_and(|n| {
            aliases
                .pointer(&format!("/{name}/aliases"))
                .and_then(Value::as_object)
                .is_some_and(|a| a.contains_key(&n.entity.write_alias()))
        });
        out.push(IndexInfo {
            name: name.clone(),
            write_blocked: text("index.blocks.write").as_deref() == Some("true"),
            replicas: text("index.number_of_replicas")
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            priority: text("index.priority").and_then(|p| p.parse().ok()),
            write_alias,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Applying actions

/// How long a force-merge may take (it answers when done).
const FORCE_MERGE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Applies one action; `Keep` and `Unparseable` change nothing.
pub(crate) async fn apply(conn: &Conn, action: &Action) -> Result<(), SearchError> {
    match action {
        Action::Create { index } => {
            match conn
                .send(Request::new(Method::Put, format!("/{index}")))
                .await
            {
                Err(SearchError::Server { kind, .. })
                    if kind == "resource_already_exists_exception" =>
                {
                    Ok(())
                }
                other => other.map(|_| ()),
            }
        }
        Action::MoveWriteAlias { entity, from, to } => {
            let alias = entity.write_alias();
            let mut actions: Vec<Value> = from
                .iter()
                .map(|index| json!({"remove": {"index": index, "alias": alias}}))
                .collect();
            actions.push(
                json!({"add": {"index": to.to_string(), "alias": alias, "is_write_index": true}}),
            );
            conn.send(Request::new(Method::Post, "/_aliases").json(&json!({"actions": actions})))
                .await
                .map(|_| ())
        }
        Action::Warm { index } => {
            let mut merge = Request::new(Method::Post, format!("/{index}/_forcemerge"))
                .query("max_num_segments", "1");
            merge.timeout = Some(FORCE_MERGE_TIMEOUT);
            conn.send(merge).await?;
            conn.send(
                Request::new(Method::Put, format!("/{index}/_settings"))
                    .json(&json!({"index": {"blocks.write": true}})),
            )
            .await
            .map(|_| ())
        }
        Action::Cold {
            index,
            replicas,
            priority,
        } => conn
            .send(
                Request::new(Method::Put, format!("/{index}/_settings")).json(
                    &json!({"index": {"priority": priority, "number_of_replicas": replicas}}),
                ),
            )
            .await
            .map(|_| ()),
        Action::Delete { index } => conn
            .send(Request::new(Method::Delete, format!("/{index}")))
            .await
            .map(|_| ()),
        Action::Keep { .. } | Action::Unparseable { .. } => Ok(()),
    }
}

/// What one lifecycle run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LifecycleReport {
    /// Every action planned, with `None` when it was applied (or needed nothing) and the
    /// error otherwise.
    pub actions: Vec<(String, String, Option<String>)>,
    pub applied: u64,
    pub failed: u64,
    pub kept: u64,
    pub unparseable: u64,
}

/// Applies `actions` in order, one at a time, with an event for each; failures are
/// collected, never a reason to stop.
pub(crate) async fn execute(conn: &Conn, actions: &[Action]) -> LifecycleReport {
    let started = Instant::now();
    let mut report = LifecycleReport::default();
    for action in actions {
        let outcome = match action {
            Action::Unparseable { index, reason } => {
                report.unparseable += 1;
                events::emit(IlmUnparseable {
                    index: index.clone(),
                    reason: reason.clone(),
                });
                None
            }
            Action::Keep { .. } => {
                report.kept += 1;
                None
            }
            _ => match apply(conn, action).await {
                Ok(()) => {
                    report.applied += 1;
                    events::emit(IlmTransition {
                        index: action.index(),
                        action: action.name(),
                    });
                    None
                }
                Err(e) => {
                    report.failed += 1;
                    events::emit(IlmTransitionFailed {
                        index: action.index(),
                        action: action.name(),
                        code: e.code(),
                        error: e.to_string(),
                    });
                    Some(e.to_string())
                }
            },
        };
        report
            .actions
            .push((action.name().to_owned(), action.index(), outcome));
    }
    events::emit(IlmCompleted {
        applied: report.applied,
        failed: report.failed,
        kept: report.kept,
        unparseable: report.unparseable,
        elapsed_ms: started.elapsed().as_millis() as u64,
    });
    report
}

// ---------------------------------------------------------------------------------------------
// Bootstrap

/// What a bootstrap did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BootstrapReport {
    pub templates_put: u64,
    pub indices_created: u64,
    pub aliases_moved: u64,
}

impl BootstrapReport {
    pub fn changed(&self) -> bool {
        self.templates_put + self.indices_created + self.aliases_moved > 0
    }
}

/// Templates first (so new indices get them), then the current month's indices (and the
/// next month's inside `prepare_ahead`) and the write aliases. Idempotent.
pub(crate) async fn bootstrap_with(
    conn: &Conn,
    templates: &Templates,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<BootstrapReport, SearchError> {
    let started = Instant::now();
    let mut report = BootstrapReport::default();
    for entity in Entity::ALL {
        let body = templates.body(entity, settings.shards, settings.replicas);
        let path = format!("/_index_template/{}", entity.template_name());
        let current = match conn.send(Request::new(Method::Get, &path)).await {
            Ok(answer) => answer
                .body
                .pointer("/index_templates/0/index_template/_meta/digest")
                .cloned(),
            Err(e) if e.status() == Some(404) => None,
            Err(e) => return Err(e),
        };
        if current.as_ref() != body.pointer("/_meta/digest") {
            conn.send(Request::new(Method::Put, &path).json(&body))
                .await?;
            report.templates_put += 1;
        }
    }
    let infos = gather(conn).await?;
    for action in lifecycle::plan(&infos, now, &settings.policy, &BTreeSet::new()) {
        match &action {
            Action::Create { .. } => {
                apply(conn, &action).await?;
                report.indices_created += 1;
            }
            Action::MoveWriteAlias { .. } => {
                apply(conn, &action).await?;
                report.aliases_moved += 1;
            }
            // Phase changes are the lifecycle run's, not the bootstrap's.
            _ => {}
        }
    }
    if report.changed() {
        events::emit(SearchBootstrapApplied {
            templates_put: report.templates_put,
            indices_created: report.indices_created,
            aliases_moved: report.aliases_moved,
            elapsed_ms: started.elapsed().as_millis() as u64,
        });
    }
    Ok(report)
}

pub(crate) async fn bootstrap(
    conn: &Conn,
    shared: &Shared,
) -> Result<BootstrapReport, SearchError> {
    bootstrap_with(conn, &shared.templates, &shared.settings, shared.now()).await
}

// ---------------------------------------------------------------------------------------------
// Operations

/// Runs the bootstrap now (it also runs each time the cluster comes up). Waits for a run
/// already in flight, then finds what is left to do; its report becomes the actor's last.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<BootstrapReport, SearchError>")]
pub struct RunBootstrap;

impl sealed::Sealed for RunBootstrap {}

impl SearchOp for RunBootstrap {
    type Output = BootstrapReport;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        let owned = shared.clone();
        let run = async move { bootstrap(&conn, &owned).await };
        Ok(shared.bootstraps.exclusive(false, run))
    }
}

/// The lifecycle plan at the actor's clock (or at `at`), applied to nothing.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<Action>, SearchError>")]
pub struct PlanLifecycle {
    /// Indices a verified backup holds (from the backup catalogue).
    pub backed_up: BTreeSet<String>,
    /// Plan as of this time instead of the actor's clock (`lucid-db search lifecycle --at`).
    pub at: Option<DateTime<Utc>>,
}

impl sealed::Sealed for PlanLifecycle {}

impl SearchOp for PlanLifecycle {
    type Output = Vec<Action>;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        let policy = shared.settings.policy.clone();
        let now = self.at.unwrap_or_else(|| shared.now());
        Ok(async move { plan_now(&conn, &policy, now, &self.backed_up).await })
    }
}

/// Plans at `now` from what the cluster has.
pub(crate) async fn plan_now(
    conn: &Conn,
    policy: &Policy,
    now: DateTime<Utc>,
    backed_up: &BTreeSet<String>,
) -> Result<Vec<Action>, SearchError> {
    let infos = gather(conn).await?;
    Ok(lifecycle::plan(&infos, now, policy, backed_up))
}

/// Plans and applies (run it with [`super::SearchHandle::call_within`]: force-merges take
/// time).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<LifecycleReport, SearchError>")]
pub struct ApplyLifecycle {
    /// Indices a verified backup holds (from the backup catalogue).
    pub backed_up: BTreeSet<String>,
    /// Plan as of this time instead of the actor's clock (`lucid-db search lifecycle --at`).
    pub at: Option<DateTime<Utc>>,
}

impl sealed::Sealed for ApplyLifecycle {}

impl SearchOp for ApplyLifecycle {
    type Output = LifecycleReport;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        let policy = shared.settings.policy.clone();
        let now = self.at.unwrap_or_else(|| shared.now());
        Ok(async move {
            let actions = plan_now(&conn, &policy, now, &self.backed_up).await?;
            Ok(execute(&conn, &actions).await)
        })
    }
}

/// One index's numbers and phase.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStats {
    pub index: String,
    pub docs: u64,
    pub bytes: u64,
    /// `None` for a name the lifecycle does not understand.
    pub phase: Option<&'static str>,
    pub write_index: bool,
}

/// Cluster health and every `lucid-*` index.
#[derive(Debug, Clone, Serialize)]
pub struct SearchStats {
    /// `green`, `yellow`, `red`.
    pub status: String,
    pub nodes: u64,
    pub active_shards: u64,
    pub unassigned_shards: u64,
    pub indices: Vec<IndexStats>,
}

#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<SearchStats, SearchError>")]
pub struct GetStats;

impl sealed::Sealed for GetStats {}

impl SearchOp for GetStats {
    type Output = SearchStats;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        let policy = shared.settings.policy.clone();
        let now = shared.now();
        Ok(async move { stats(&conn, &policy, now).await })
    }
}

/// What the cluster says of itself (`GET /`): a backup records it beside the indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerInfo {
    /// `version.number`.
    pub version: String,
    /// `version.distribution`: `opensearch`; Elasticsearch does not send it, so its absence
    /// means `elasticsearch`.
    pub distribution: String,
}

impl ServerInfo {
    pub fn from_root(root: &Value) -> ServerInfo {
        ServerInfo {
            version: root["version"]["number"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            distribution: root["version"]["distribution"]
                .as_str()
                .unwrap_or("elasticsearch")
                .to_owned(),
        }
    }
}

/// The cluster's version and distribution, from `GET /`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<ServerInfo, SearchError>")]
pub struct GetServerInfo;

impl sealed::Sealed for GetServerInfo {}

impl SearchOp for GetServerInfo {
    type Output = ServerInfo;

    fn start(
        self,
        conn: Conn,
        _: &Arc<Shared>,
    ) -> Result<impl Future<Output = Result<ServerInfo, SearchError>> + Send + 'static, SearchError>
    {
        Ok(async move {
            let root = conn.send(Request::new(Method::Get, "/")).await?.body;
            Ok(ServerInfo::from_root(&root))
        })
    }
}

fn number(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::String(s) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// `_cluster/health` and `_cat/indices` for `lucid-*`, with each index's phase at `now`.
pub(crate) async fn stats(
    conn: &Conn,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<SearchStats, SearchError> {
    let health = conn
        .send(Request::new(Method::Get, "/_cluster/health").query("timeout", "1s"))
        .await?
        .body;
    let cat = conn
        .send(
            Request::new(Method::Get, "/_cat/indices/lucid-*")
                .query("format", "json")
                .query("bytes", "b")
                .query("h", "index,docs.count,store.size")
                .query("allow_no_indices", "true"),
        )
        .await?
        .body;
    let infos = gather(conn).await?;
    let mut indices: Vec<IndexStats> = cat
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| {
            let index = row.get("index")?.as_str()?.to_owned();
            let phase = IndexName::parse(&index)
                .ok()
                .map(|n| lifecycle::phase_of(n.month, now, policy).name());
            let write_index = infos.iter().any(|i| i.name == index && i.write_alias);
            Some(IndexStats {
                docs: number(&row["docs.count"]),
                bytes: number(&row["store.size"]),
                index,
                phase,
                write_index,
            })
        })
        .collect();
    indices.sort_by(|a, b| a.index.cmp(&b.index));
    Ok(SearchStats {
        status: health["status"].as_str().unwrap_or("unknown").to_owned(),
        nodes: number(&health["number_of_nodes"]),
        active_shards: number(&health["active_shards"]),
        unassigned_shards: number(&health["unassigned_shards"]),
        indices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_templates_are_complete_and_their_digest_follows_the_settings() {
        let t = Templates::builtin().expect("templates");
        for e in Entity::ALL {
            let body = t.body(e, 1, 0);
            assert_eq!(body["index_patterns"][0], format!("lucid-{}-*", e.name()));
            assert!(body["template"]["aliases"].get(e.read_alias()).is_some());
            assert_eq!(
                body.pointer(&format!(
                    "/template/mappings/properties/{}/type",
                    e.time_field()
                )),
                Some(&json!("date"))
            );
            assert_eq!(body, t.body(e, 1, 0), "deterministic");
            assert_ne!(
                body["_meta"]["digest"],
                t.body(e, 2, 0)["_meta"]["digest"],
                "shards change the digest"
            );
        }
    }

    #[test]
    fn server_info_names_the_distribution_elasticsearch_leaves_out() {
        let opensearch = json!({"version": {"distribution": "opensearch", "number": "2.19.1"}});
        let elastic = json!({"version": {"number": "8.15.0", "build_flavor": "default"}});
        assert_eq!(
            ServerInfo::from_root(&opensearch),
            ServerInfo {
                version: "2.19.1".into(),
                distribution: "opensearch".into()
            }
        );
        assert_eq!(
            ServerInfo::from_root(&elastic).distribution,
            "elasticsearch"
        );
        assert_eq!(ServerInfo::from_root(&json!({})).version, "unknown");
    }

    #[test]
    fn a_template_file_with_the_wrong_time_field_is_refused() {
        let bad = r#"{"entity": "blocks", "time_field": "height", "mappings": {"properties": {"height": {"type": "long"}}}}"#;
        assert!(parse_spec(Entity::Blocks, bad).is_err());
        let bad = r#"{"entity": "blocks", "time_field": "timestamp", "mappings": {"properties": {"timestamp": {"type": "keyword"}}}}"#;
        assert!(
            parse_spec(Entity::Blocks, bad)
                .expect_err("not a date")
                .contains("must be a date")
        );
        let wrong = r#"{"entity": "sessions", "time_field": "started_at", "mappings": {}}"#;
        assert!(parse_spec(Entity::Blocks, wrong).is_err());
    }
}
