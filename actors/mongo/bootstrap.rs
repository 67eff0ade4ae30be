//! The idempotent bootstrap: bring the database in line with `configs/mongodb/` — create
//! missing collections with their validators, update validators that changed (`collMod`),
//! create missing indexes, shard configured collections on a mongos — and report, never
//! repair, what differs in ways only an operator should decide (drift).
//!
//! It runs in three steps:
//! 1. **Look**: what the server has (`listCollections`, `listIndexes`, `listSearchIndexes`,
//!    `hello`, and on a mongos `config.collections`), and what it can store: a scratch
//!    collection (`lucid_bootstrap_probe`, created and dropped) shows whether the server
//!    keeps validators, index key directions and index options. MongoDB keeps all three;
//!    nx-27017 keeps none, so there validators are reported as not stored and indexes are
//!    compared by fields only.
//! 2. **Plan**: [`plan`], a pure function of the catalog, the server state and the
//!    capabilities. Indexes are compared by key pattern and options, never by name (servers
//!    rename them). The plan is the list of commands, exactly as they will be sent.
//! 3. **Apply** (unless `--dry-run`): run the commands in order; a second run finds nothing
//!    to do.
//!
//! The actor runs it each time MongoDB comes up (`mongodb.bootstrap`); [`RunBootstrap`] runs
//! it on request and [`PlanBootstrap`] looks and plans only. One run at a time per actor:
//! even a plan creates and drops the probe's scratch collection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use actix::Message;
use mongodb::bson::{Bson, Document, doc};
use serde::Serialize;
use tokio::time::Instant;

use super::collections::{Catalog, Collection, CollectionSpec, IndexSpec};
use super::stats::{Topology, hello};
use super::{Conn, MongoError, MongoOp, Settings, Shared, ok_of, sealed};
use crate::events::{self, MongoBootstrapApplied, MongoDrift};
use crate::supervisor::DeadlineError;
use crate::supervisor::link::OpFuture;

/// The scratch collection of the capability probe.
pub const PROBE_COLLECTION: &str = "lucid_bootstrap_probe";

/// What the server stores of what the bootstrap sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// `listCollections` reports the validator a collection was created with.
    pub stores_validators: bool,
    /// `listIndexes` reports -1 where -1 was asked for.
    pub keeps_key_directions: bool,
    /// `listIndexes` reports `sparse` and `partialFilterExpression`.
    pub reports_index_options: bool,
}

impl Capabilities {
    /// What a real MongoDB does.
    pub const MONGODB: Capabilities = Capabilities {
        stores_validators: true,
        keeps_key_directions: true,
        reports_index_options: true,
    };
}

/// An index as the server reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerIndex {
    pub name: String,
    /// In the catalog's form: text indexes as `{field: "text", …}`.
    pub key: Document,
    pub unique: bool,
    pub sparse: bool,
    pub expire_after_secs: Option<i64>,
    pub partial_filter: Option<Document>,
}

/// A collection as the server reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerCollection {
    pub validator: Option<Document>,
    pub validation_level: Option<String>,
    pub validation_action: Option<String>,
    pub indexes: Vec<ServerIndex>,
}

/// What the server has, for [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServerState {
    pub collections: BTreeMap<String, ServerCollection>,
    /// Collections already sharded (names without the database), on a mongos.
    pub sharded: BTreeSet<String>,
    /// Whether sharding is enabled for the database, on a mongos.
    pub sharding_enabled: bool,
}

/// One command of the plan, exactly as it is sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanStep {
    /// `create_collection`, `update_validator`, `create_indexes`, `enable_sharding`,
    /// `shard_collection`.
    pub action: &'static str,
    /// The collection it is about (empty for the database).
    pub collection: String,
    /// The database the command is sent to (`admin` for sharding commands).
    pub database: String,
    #[serde(serialize_with = "relaxed_json")]
    pub command: Document,
    /// Index names for `create_indexes`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<String>,
}

impl PlanStep {
    /// The command as relaxed Extended JSON v2, as `--dry-run` prints it.
    pub fn command_json(&self) -> serde_json::Value {
        Bson::Document(self.command.clone()).into_relaxed_extjson()
    }
}

fn relaxed_json<S: serde::Serializer>(d: &Document, s: S) -> Result<S::Ok, S::Error> {
    Bson::Document(d.clone())
        .into_relaxed_extjson()
        .serialize(s)
}

/// A difference the bootstrap reports and leaves alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// `index_options`, `index_name_taken`, `index_unknown`, `text_index_differs`,
    /// `validators_not_stored`.
    pub code: &'static str,
    pub collection: String,
    pub detail: String,
}

/// The plan: commands to run, and drift to report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub steps: Vec<PlanStep>,
    pub drift: Vec<Drift>,
}

/// What a bootstrap saw and did.
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapReport {
    pub database: String,
    pub topology: Topology,
    pub capabilities: Capabilities,
    pub dry_run: bool,
    pub plan: Plan,
    /// Steps that ran (all of them, unless one failed: then the error is returned instead).
    pub applied: usize,
    pub elapsed_ms: u64,
}

fn number(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

fn direction(v: &Bson) -> Bson {
    match v {
        Bson::String(s) => Bson::String(s.clone()),
        other => match number(Some(other)) {
            Some(n) if n < 0 => Bson::Int32(-1),
            _ => Bson::Int32(1),
        },
    }
}

/// A key pattern with every direction as Int32 ±1 (servers report 1, 1.0 or 1i64).
pub fn normalize_key(key: &Document, keep_directions: bool) -> Document {
    key.iter()
        .map(|(k, v)| {
            let d = direction(v);
            let d = match (&d, keep_directions) {
                (Bson::Int32(_), false) => Bson::Int32(1),
                _ => d,
            };
            (k.clone(), d)
        })
        .collect()
}

/// A `listIndexes` entry in the catalog's terms; text indexes (`_fts`) become
/// `{field: "text", …}` from their weights.
pub fn server_index(entry: &Document) -> Option<ServerIndex> {
    let name = entry.get_str("name").ok()?.to_owned();
    let raw_key = entry.get_document("key").ok()?;
    let key = if raw_key.get_str("_fts").ok() == Some("text") {
        let weights = entry.get_document("weights").ok()?;
        weights
            .keys()
            .map(|k| (k.clone(), Bson::String("text".to_owned())))
            .collect()
    } else {
        raw_key.clone()
    };
    Some(ServerIndex {
        name,
        key,
        unique: entry.get_bool("unique").unwrap_or(false),
        sparse: entry.get_bool("sparse").unwrap_or(false),
        expire_after_secs: number(entry.get("expireAfterSeconds")),
        partial_filter: entry.get_document("partialFilterExpression").ok().cloned(),
    })
}

/// The fields of a key pattern's text keys.
pub fn text_fields(key: &Document) -> BTreeSet<String> {
    key.iter()
        .filter(|(_, v)| v.as_str() == Some("text"))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The differences in options between what the catalog wants and what the server has.
fn option_differences(want: &IndexSpec, have: &ServerIndex, caps: Capabilities) -> Vec<String> {
    let mut diffs = Vec::new();
    if want.unique != have.unique {
        diffs.push(format!(
            "unique: want {}, server has {}",
            want.unique, have.unique
        ));
    }
    if want.expire_after_secs != have.expire_after_secs {
        diffs.push(format!(
            "expireAfterSeconds: want {:?}, server has {:?}",
            want.expire_after_secs, have.expire_after_secs
        ));
    }
    if caps.reports_index_options {
        if want.sparse != have.sparse {
            diffs.push(format!(
                "sparse: want {}, server has {}",
                want.sparse, have.sparse
            ));
        }
        if want.partial_filter != have.partial_filter {
            diffs.push("partialFilterExpression differs".to_owned());
        }
    }
    diffs
}

/// The plan (see the module doc). Pure: the same inputs always give the same plan.
pub fn plan(
    catalog: &Catalog,
    database: &str,
    server: &ServerState,
    caps: Capabilities,
    topology: &Topology,
    shard_collections: bool,
) -> Plan {
    let mut out = Plan::default();
    if !caps.stores_validators {
        out.drift.push(Drift {
            code: "validators_not_stored",
            collection: "*".to_owned(),
            detail: "the server does not keep collection validators; lucid-db validates every \
                     write itself"
                .to_owned(),
        });
    }
    for spec in catalog.iter() {
        let name = spec.collection.name();
        match server.collections.get(name) {
            None => out.steps.push(create_collection(spec)),
            Some(have) => {
                if caps.stores_validators && validator_differs(spec, have) {
                    out.steps.push(update_validator(spec));
                }
            }
        }
        let have = server.collections.get(name);
        index_plan(spec, have, caps, &mut out);
    }
    if *topology == Topology::Mongos && shard_collections {
        let to_shard: Vec<&CollectionSpec> = catalog
            .iter()
            .filter(|s| s.shard_key.is_some() && !server.sharded.contains(s.collection.name()))
            .collect();
        if !to_shard.is_empty() && !server.sharding_enabled {
            out.steps.push(PlanStep {
                action: "enable_sharding",
                collection: String::new(),
                database: "admin".to_owned(),
                command: doc! {"enableSharding": database},
                indexes: Vec::new(),
            });
        }
        for spec in to_shard {
            let key = spec.shard_key.clone().unwrap_or_default();
            out.steps.push(PlanStep {
                action: "shard_collection",
                collection: spec.collection.name().to_owned(),
                database: "admin".to_owned(),
                command: doc! {
                    "shardCollection": format!("{database}.{}", spec.collection.name()),
                    "key": key,
                },
                indexes: Vec::new(),
            });
        }
    }
    out
}

fn create_collection(spec: &CollectionSpec) -> PlanStep {
    PlanStep {
        action: "create_collection",
        collection: spec.collection.name().to_owned(),
        database: String::new(),
        command: doc! {
            "create": spec.collection.name(),
            "validator": spec.validator.clone(),
            "validationLevel": spec.validation_level.clone(),
            "validationAction": spec.validation_action.clone(),
        },
        indexes: Vec::new(),
    }
}

fn update_validator(spec: &CollectionSpec) -> PlanStep {
    PlanStep {
        action: "update_validator",
        collection: spec.collection.name().to_owned(),
        database: String::new(),
        command: doc! {
            "collMod": spec.collection.name(),
            "validator": spec.validator.clone(),
            "validationLevel": spec.validation_level.clone(),
            "validationAction": spec.validation_action.clone(),
        },
        indexes: Vec::new(),
    }
}

/// Whether the server's validator, level or action differ from the catalog's (numbers
/// compared by value: servers give back 1 as int or double).
fn validator_differs(spec: &CollectionSpec, have: &ServerCollection) -> bool {
    let same = match &have.validator {
        Some(v) => same_bson(
            &Bson::Document(v.clone()),
            &Bson::Document(spec.validator.clone()),
        ),
        None => false,
    };
    let level = have.validation_level.as_deref().unwrap_or("strict");
    let action = have.validation_action.as_deref().unwrap_or("error");
    !same || level != spec.validation_level || action != spec.validation_action
}

/// Whether two BSON values are the same, numbers by value (servers give back 1 as int or
/// double) and documents whatever their fields' order.
pub fn same_bson(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_bson(v, w)))
        }
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_bson(v, w))
        }
        _ => match (number(Some(a)), number(Some(b))) {
            (Some(x), Some(y))
                if !matches!(a, Bson::Double(_)) && !matches!(b, Bson::Double(_)) =>
            {
                x == y
            }
            _ => match (a, b) {
                (Bson::Double(x), _) | (_, Bson::Double(x)) => {
                    let other = if matches!(a, Bson::Double(_)) { b } else { a };
                    match other {
                        Bson::Double(y) => x == y,
                        Bson::Int32(y) => *x == f64::from(*y),
                        Bson::Int64(y) => *x == *y as f64,
                        _ => false,
                    }
                }
                _ => a == b,
            },
        },
    }
}

fn index_plan(
    spec: &CollectionSpec,
    have: Option<&ServerCollection>,
    caps: Capabilities,
    out: &mut Plan,
) {
    let name = spec.collection.name();
    let empty = Vec::new();
    let server_indexes = have.map_or(&empty, |h| &h.indexes);
    let server_text: BTreeSet<String> = server_indexes
        .iter()
        .flat_map(|i| text_fields(&i.key))
        .collect();
    let mut matched: BTreeSet<&str> = BTreeSet::new();
    let mut create: Vec<&IndexSpec> = Vec::new();
    for want in &spec.indexes {
        if want.is_text() {
            let fields = text_fields(&want.key);
            if server_text.is_empty() {
                create.push(want);
            } else if server_text != fields {
                out.drift.push(Drift {
                    code: "text_index_differs",
                    collection: name.to_owned(),
                    detail: format!(
                        "{}: want text on {:?}, server has text on {:?}",
                        want.name, fields, server_text
                    ),
                });
            }
            for i in server_indexes
                .iter()
                .filter(|i| !text_fields(&i.key).is_empty())
            {
                matched.insert(&i.name);
            }
            continue;
        }
        let want_key = normalize_key(&want.key, caps.keeps_key_directions);
        let found = server_indexes.iter().find(|i| {
            text_fields(&i.key).is_empty()
                && normalize_key(&i.key, caps.keeps_key_directions) == want_key
        });
        match found {
            Some(have) => {
                matched.insert(&have.name);
                let diffs = option_differences(want, have, caps);
                if !diffs.is_empty() {
                    out.drift.push(Drift {
                        code: "index_options",
                        collection: name.to_owned(),
                        detail: format!(
                            "{} (server: {}): {}",
                            want.name,
                            have.name,
                            diffs.join("; ")
                        ),
                    });
                }
            }
            None => {
                if let Some(taken) = server_indexes.iter().find(|i| i.name == want.name) {
                    matched.insert(&taken.name);
                    out.drift.push(Drift {
                        code: "index_name_taken",
                        collection: name.to_owned(),
                        detail: format!(
                            "{}: the server has an index of that name on {}, want {}",
                            want.name, taken.key, want.key
                        ),
                    });
                } else {
                    create.push(want);
                }
            }
        }
    }
    for extra in server_indexes {
        if extra.name != "_id_" && !matched.contains(extra.name.as_str()) {
            out.drift.push(Drift {
                code: "index_unknown",
                collection: name.to_owned(),
                detail: format!(
                    "{} on {} is not in configs/mongodb/{name}.json",
                    extra.name, extra.key
                ),
            });
        }
    }
    if !create.is_empty() {
        out.steps.push(PlanStep {
            action: "create_indexes",
            collection: name.to_owned(),
            database: String::new(),
            command: doc! {
                "createIndexes": name,
                "indexes": create.iter().map(|i| Bson::Document(i.to_command())).collect::<Vec<_>>(),
            },
            indexes: create.iter().map(|i| i.name.clone()).collect(),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Looking and applying

/// Runs the bootstrap against one database.
pub(crate) struct Bootstrap<'a> {
    conn: &'a Conn,
    catalog: &'a Catalog,
    database: String,
    deadline: Duration,
    shard_collections: bool,
}

impl<'a> Bootstrap<'a> {
    pub(crate) fn new(conn: &'a Conn, catalog: &'a Catalog, settings: &Settings) -> Self {
        Bootstrap {
            conn,
            catalog,
            database: settings.database.clone(),
            deadline: settings.deadline,
            shard_collections: settings.shard_collections,
        }
    }

    /// Looks, plans, and (unless `dry_run`) applies; emits `mongo.drift` for each drift and
    /// `mongo.bootstrap_applied` when something changed.
    pub(crate) async fn run(&self, dry_run: bool) -> Result<BootstrapReport, MongoError> {
        let started = Instant::now();
        let topology = hello(&self.conn.client, self.deadline).await?.topology;
        let caps = self.probe().await?;
        let server = self.look(&topology).await?;
        let plan = plan(
            self.catalog,
            &self.database,
            &server,
            caps,
            &topology,
            self.shard_collections,
        );
        for d in &plan.drift {
            events::emit(MongoDrift {
                code: d.code,
                collection: d.collection.clone(),
                detail: d.detail.clone(),
            });
        }
        let mut applied = 0;
        if !dry_run {
            for step in &plan.steps {
                self.apply(step).await?;
                applied += 1;
            }
            if applied > 0 {
                let count = |a: &str| plan.steps.iter().filter(|s| s.action == a).count() as u64;
                events::emit(MongoBootstrapApplied {
                    database: self.database.clone(),
                    collections_created: count("create_collection"),
                    indexes_created: plan.steps.iter().map(|s| s.indexes.len() as u64).sum(),
                    validators_updated: count("update_validator"),
                    collections_sharded: count("shard_collection"),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
        Ok(BootstrapReport {
            database: self.database.clone(),
            topology,
            capabilities: caps,
            dry_run,
            plan,
            applied,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    async fn command(&self, database: &str, cmd: Document) -> Result<Document, MongoError> {
        let db = if database.is_empty() {
            self.conn.db.clone()
        } else {
            self.conn.client.database(database)
        };
        command_on(&db, cmd, self.deadline).await
    }

    /// The documents of a cursor-returning command (`listCollections`, `listIndexes`).
    async fn cursor(&self, cmd: Document) -> Result<Vec<Document>, MongoError> {
        cursor_on(&self.conn.db, cmd, self.deadline).await
    }

    /// The scratch-collection probe (see the module doc).
    async fn probe(&self) -> Result<Capabilities, MongoError> {
        probe_on(&self.conn.db, self.deadline).await
    }

    /// What the server has (see the module doc).
    async fn look(&self, topology: &Topology) -> Result<ServerState, MongoError> {
        let mut state = ServerState::default();
        let listed = self.cursor(doc! {"listCollections": 1}).await?;
        let known: BTreeSet<&str> = Collection::ALL.iter().map(|c| c.name()).collect();
        for entry in &listed {
            let Ok(name) = entry.get_str("name") else {
                continue;
            };
            if !known.contains(name) {
                continue;
            }
            state
                .collections
                .insert(name.to_owned(), collection_of(entry));
        }
        for (name, coll) in state.collections.iter_mut() {
            coll.indexes = indexes_on(&self.conn.db, name, self.deadline).await?;
        }
        if *topology == Topology::Mongos {
            let config = self.conn.client.database("config");
            let prefix = format!("{}.", self.database);
            let sharded: Vec<Document> = MongoError::within(self.deadline, async {
                let mut cursor = config
                    .collection::<Document>("collections")
                    .find(doc! {"_id": {"$regex": format!("^{}", regex_escape(&prefix))}})
                    .await?;
                let mut out = Vec::new();
                while cursor.advance().await? {
                    out.push(cursor.deserialize_current()?);
                }
                Ok(out)
            })
            .await?;
            for c in sharded {
                if c.get_bool("dropped") == Ok(true) {
                    continue;
                }
                if let Ok(id) = c.get_str("_id")
                    && let Some(name) = id.strip_prefix(&prefix)
                {
                    state.sharded.insert(name.to_owned());
                }
            }
            let databases = config.collection::<Document>("databases");
            state.sharding_enabled = MongoError::within(self.deadline, async {
                Ok(databases
                    .find_one(doc! {"_id": &self.database})
                    .await?
                    .is_some_and(|d| d.get_bool("partitioned").unwrap_or(true)))
            })
            .await?;
        }
        Ok(state)
    }

    async fn apply(&self, step: &PlanStep) -> Result<(), MongoError> {
        self.command(&step.database, step.command.clone())
            .await
            .map(drop)
            .map_err(|e| match e {
                MongoError::Server { code, message } => MongoError::Server {
                    code,
                    message: format!("{} {}: {message}", step.action, step.collection),
                },
                e => e,
            })
    }
}

/// Runs `cmd` on `db`; a reply with `ok: 0` is a [`MongoError::Server`].
async fn command_on(
    db: &mongodb::Database,
    cmd: Document,
    deadline: Duration,
) -> Result<Document, MongoError> {
    let what = cmd.keys().next().cloned().unwrap_or_default();
    let reply = MongoError::within(deadline, async { Ok(db.run_command(cmd).await?) }).await?;
    if !ok_of(&reply) {
        return Err(MongoError::Server {
            code: number(reply.get("code")).and_then(|c| i32::try_from(c).ok()),
            message: format!(
                "{what}: {}",
                reply
                    .get_str("errmsg")
                    .unwrap_or("the server answered ok: 0")
            ),
        });
    }
    Ok(reply)
}

/// The documents of a cursor-returning command (`listCollections`, `listIndexes`) on `db`.
async fn cursor_on(
    db: &mongodb::Database,
    cmd: Document,
    deadline: Duration,
) -> Result<Vec<Document>, MongoError> {
    MongoError::within(deadline, async {
        let mut cursor = db.run_cursor_command(cmd).await?;
        let mut out = Vec::new();
        while cursor.advance().await? {
            out.push(cursor.deserialize_current()?);
        }
        Ok(out)
    })
    .await
}

/// The scratch-collection probe (see the module doc) in `db`: the probe collection is
/// created with a validator and an index straight through the driver, and what
/// `listCollections` and `listIndexes` report of them is what the server keeps.
pub(crate) async fn probe_on(
    db: &mongodb::Database,
    deadline: Duration,
) -> Result<Capabilities, MongoError> {
    let _ = command_on(db, doc! {"drop": PROBE_COLLECTION}, deadline).await;
    command_on(
        db,
        doc! {"create": PROBE_COLLECTION, "validator": {"$jsonSchema": {"bsonType": "object"}}},
        deadline,
    )
    .await?;
    let result = async {
        command_on(
            db,
            doc! {"createIndexes": PROBE_COLLECTION, "indexes": [
                {"key": {"p": -1}, "name": "lucid_probe_p_desc", "sparse": true}
            ]},
            deadline,
        )
        .await?;
        let collections = cursor_on(db, doc! {"listCollections": 1}, deadline).await?;
        let stores_validators = collections.iter().any(|c| {
            c.get_str("name") == Ok(PROBE_COLLECTION)
                && c.get_document("options")
                    .is_ok_and(|o| o.contains_key("validator"))
        });
        let indexes = cursor_on(db, doc! {"listIndexes": PROBE_COLLECTION}, deadline).await?;
        let probe = indexes
            .iter()
            .find(|i| i.get_document("key").is_ok_and(|k| k.contains_key("p")));
        Ok::<_, MongoError>(Capabilities {
            stores_validators,
            keeps_key_directions: probe.is_some_and(|i| {
                i.get_document("key")
                    .is_ok_and(|k| number(k.get("p")) == Some(-1))
            }),
            reports_index_options: probe.is_some_and(|i| i.get_bool("sparse") == Ok(true)),
        })
    }
    .await;
    let _ = command_on(db, doc! {"drop": PROBE_COLLECTION}, deadline).await;
    result
}

/// A `listCollections` entry's validator, level and action (no indexes yet).
fn collection_of(entry: &Document) -> ServerCollection {
    let options = entry.get_document("options").ok();
    ServerCollection {
        validator: options.and_then(|o| o.get_document("validator").ok().cloned()),
        validation_level: options
            .and_then(|o| o.get_str("validationLevel").ok().map(str::to_owned)),
        validation_action: options
            .and_then(|o| o.get_str("validationAction").ok().map(str::to_owned)),
        indexes: Vec::new(),
    }
}

/// The indexes of collection `name` in `db`, text indexes included.
async fn indexes_on(
    db: &mongodb::Database,
    name: &str,
    deadline: Duration,
) -> Result<Vec<ServerIndex>, MongoError> {
    let mut indexes: Vec<ServerIndex> = cursor_on(db, doc! {"listIndexes": name}, deadline)
        .await?
        .iter()
        .filter_map(server_index)
        .collect();
    // nx-27017 lists text indexes only here, one per field; MongoDB outside Atlas refuses
    // the command, which says nothing more.
    if let Ok(search) = cursor_on(db, doc! {"listSearchIndexes": name}, deadline).await {
        indexes.extend(
            search
                .iter()
                .filter_map(server_index)
                .filter(|i| i.key.values().all(|v| v.as_str() == Some("text"))),
        );
    }
    Ok(indexes)
}

/// Collection `name` of `db` as the server reports it (validator, indexes), `None` when it
/// does not exist.
pub(crate) async fn collection_on(
    db: &mongodb::Database,
    name: &str,
    deadline: Duration,
) -> Result<Option<ServerCollection>, MongoError> {
    let listed = cursor_on(
        db,
        doc! {"listCollections": 1, "filter": {"name": name}},
        deadline,
    )
    .await?;
    let Some(entry) = listed.iter().find(|e| e.get_str("name") == Ok(name)) else {
        return Ok(None);
    };
    let mut coll = collection_of(entry);
    coll.indexes = indexes_on(db, name, deadline).await?;
    Ok(Some(coll))
}

/// One run of the bootstrap on `conn` (its plan only, with `dry_run`).
pub(crate) async fn run(
    conn: &Conn,
    shared: &Shared,
    dry_run: bool,
) -> Result<BootstrapReport, MongoError> {
    Bootstrap::new(conn, &shared.catalog, &shared.settings)
        .run(dry_run)
        .await
}

// ---------------------------------------------------------------------------------------------
// Operations

/// The two bootstrap messages, a run and its plan alone: each waits for a run already in
/// flight ([`Bootstraps::exclusive`](crate::supervisor::link::Bootstraps::exclusive)), then
/// finds what is left to do; a run that applies becomes the actor's last report.
macro_rules! bootstrap_op {
    ($(#[$doc:meta])* $name:ident, dry_run: $dry_run:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Message)]
        #[rtype(result = "Result<BootstrapReport, MongoError>")]
        pub struct $name;

        impl sealed::Sealed for $name {}

        impl MongoOp for $name {
            type Output = BootstrapReport;

            fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
                let owned = shared.clone();
                let bootstrap = async move { run(&conn, &owned, $dry_run).await };
                Ok(shared.bootstraps.exclusive($dry_run, bootstrap))
            }
        }
    };
}

bootstrap_op!(
    /// Runs the bootstrap now: looks, plans and applies, and answers what it saw and did (it
    /// also runs each time MongoDB comes up, unless `mongodb.bootstrap = false`). Every command
    /// in it has the call deadline; the whole run takes longer than one call: send it with
    /// [`super::MongoHandle::call_within`]. Waits for a run already in flight, then finds what
    /// is left to do.
    RunBootstrap,
    dry_run: false
);

bootstrap_op!(
    /// The bootstrap's plan — the commands exactly as they would be sent, and the drift — with
    /// nothing applied (`lucid-db mongo bootstrap --dry-run`). It still creates and drops the
    /// probe's scratch collection ([`PROBE_COLLECTION`]). Deadlines as for [`RunBootstrap`].
    PlanBootstrap,
    dry_run: true
);

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::builtin().expect("catalog")
    }

    /// The server state a real MongoDB reports once the catalog is fully applied.
    fn applied_like_mongodb(cat: &Catalog) -> ServerState {
        let mut state = ServerState::default();
        for spec in cat.iter() {
            let mut indexes = vec![ServerIndex {
                name: "_id_".into(),
                key: doc! {"_id": 1},
                unique: false,
                sparse: false,
                expire_after_secs: None,
                partial_filter: None,
            }];
            for i in &spec.indexes {
                // MongoDB lists a text index as _fts/_ftsx with weights.
                let entry = if i.is_text() {
                    let weights: Document =
                        i.key.keys().map(|k| (k.clone(), Bson::Int32(1))).collect();
                    doc! {"v": 2, "key": {"_fts": "text", "_ftsx": 1}, "name": &i.name,
                    "weights": weights, "default_language": "english", "textIndexVersion": 3}
                } else {
                    let mut d = i.to_command();
                    d.insert("v", 2);
                    d
                };
                indexes.push(server_index(&entry).expect("entry parses"));
            }
            state.collections.insert(
                spec.collection.name().to_owned(),
                ServerCollection {
                    validator: Some(spec.validator.clone()),
                    validation_level: Some(spec.validation_level.clone()),
                    validation_action: Some(spec.validation_action.clone()),
                    indexes,
                },
            );
        }
        state
    }

    #[test]
    fn empty_database_gets_every_collection_and_index() {
        let cat = catalog();
        let p = plan(
            &cat,
            "lucid",
            &ServerState::default(),
            Capabilities::MONGODB,
            &Topology::Standalone,
            true,
        );
        assert!(p.drift.is_empty(), "{:?}", p.drift);
        let creates: Vec<_> = p
            .steps
            .iter()
            .filter(|s| s.action == "create_collection")
            .collect();
        assert_eq!(creates.len(), 15);
        assert_eq!(
            creates[0]
                .command
                .get_document("validator")
                .expect("validator"),
            &cat.get(Collection::Users).validator
        );
        let indexes: usize = p.steps.iter().map(|s| s.indexes.len()).sum();
        assert_eq!(indexes, cat.index_count());
        // no sharding commands on a standalone server
        assert!(p.steps.iter().all(|s| !s.action.contains("shard")));
    }

    #[test]
    fn a_fully_applied_database_plans_nothing() {
        let cat = catalog();
        let state = applied_like_mongodb(&cat);
        let p = plan(
            &cat,
            "lucid",
            &state,
            Capabilities::MONGODB,
            &Topology::Standalone,
            true,
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_changed_schema_is_a_collmod_request() {
        let cat = catalog();
        let mut state = applied_like_mongodb(&cat);
        let users = state.collections.get_mut("users").expect("users");
        users.validator = Some(doc! {"$jsonSchema": {"bsonType": "object"}});
        let p = plan(
            &cat,
            "lucid",
            &state,
            Capabilities::MONGODB,
            &Topology::Standalone,
            true,
        );
        assert_eq!(p.steps.len(), 1);
        let step = &p.steps[0];
        assert_eq!(step.action, "update_validator");
        assert_eq!(
            step.command,
            doc! {
                "collMod": "users",
                "validator": cat.get(Collection::Users).validator.clone(),
                "validationLevel": "strict",
                "validationAction": "error",
            }
        );
        // numbers given back as doubles are the same validator
        let mut state = applied_like_mongodb(&cat);
        let v = state.collections.get_mut("sessions").expect("sessions");
        let mut validator = cat.get(Collection::Sessions).validator.clone();
        let schema = validator.get_document_mut("$jsonSchema").expect("schema");
        let props = schema.get_document_mut("properties").expect("props");
        props
            .get_document_mut("chunk_count")
            .expect("chunk_count")
            .insert("minimum", 0.0);
        v.validator = Some(validator);
        let p = plan(
            &cat,
            "lucid",
            &state,
            Capabilities::MONGODB,
            &Topology::Standalone,
            true,
        );
        assert!(p.steps.is_empty(), "{:?}", p.steps);
    }

    #[test]
    fn indexes_compare_by_key_and_options_not_name() {
        let cat = catalog();
        let mut state = applied_like_mongodb(&cat);
        let users = state.collections.get_mut("users").expect("users");
        // renamed by the server: still the same index
        users.indexes[1].name = "email_1".into();
        // same key, different options: drift, not a change
        let ttl = state
            .collections
            .get_mut("sessions")
            .expect("sessions")
            .indexes
            .iter_mut()
            .find(|i| i.expire_after_secs.is_some())
            .expect("ttl");
        ttl.expire_after_secs = Some(60);
        // an index nobody declared
        state
            .collections
            .get_mut("blocks")
            .expect("blocks")
            .indexes
            .push(ServerIndex {
                name: "adhoc".into(),
                key: doc! {"producer": 1},
                unique: false,
                sparse: false,
                expire_after_secs: None,
                partial_filter: None,
            });
        // a missing one is created
        state
            .collections
            .get_mut("chunks")
            .expect("chunks")
            .indexes
            .retain(|i| i.name != "chunks_hash_asc");
        let p = plan(
            &cat,
            "lucid",
            &state,
            Capabilities::MONGODB,
            &Topology::Standalone,
            true,
        );
        assert_eq!(p.steps.len(), 1, "{:?}", p.steps);
        assert_eq!(p.steps[0].indexes, ["chunks_hash_asc"]);
        assert_eq!(
            p.steps[0].command,
            doc! {"createIndexes": "chunks", "indexes": [{"key": {"hash": 1}, "name": "chunks_hash_asc"}]}
        );
        let codes: Vec<_> = p
            .drift
            .iter()
            .map(|d| (d.code, d.collection.as_str()))
            .collect();
        assert_eq!(
            codes,
            [("index_options", "sessions"), ("index_unknown", "blocks")]
        );
    }

    #[test]
    fn a_server_without_validators_or_directions_is_compared_by_fields() {
        let cat = catalog();
        let mut state = applied_like_mongodb(&cat);
        let caps = Capabilities {
            stores_validators: false,
            keeps_key_directions: false,
            reports_index_options: false,
        };
        for c in state.collections.values_mut() {
            c.validator = None;
            c.validation_level = None;
            c.validation_action = None;
            for i in c.indexes.iter_mut().filter(|i| i.name != "_id_") {
                i.key = normalize_key(&i.key, false);
                i.sparse = false;
                i.name = format!("idx_{}", i.name);
            }
        }
        let p = plan(&cat, "lucid", &state, caps, &Topology::Standalone, true);
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert_eq!(p.drift.len(), 1);
        assert_eq!(p.drift[0].code, "validators_not_stored");
    }

    #[test]
    fn on_mongos_configured_collections_are_sharded() {
        let cat = catalog();
        let sharded: Vec<_> = cat.iter().filter(|s| s.shard_key.is_some()).collect();
        assert!(!sharded.is_empty(), "some collection names a shard key");
        let state = applied_like_mongodb(&cat);
        let p = plan(
            &cat,
            "lucid",
            &state,
            Capabilities::MONGODB,
            &Topology::Mongos,
            true,
        );
        assert_eq!(p.steps[0].action, "enable_sharding");
        assert_eq!(p.steps[0].database, "admin");
        assert_eq!(p.steps[0].command, doc! {"enableSharding": "lucid"});
        let shard_steps: Vec<_> = p
            .steps
            .iter()
            .filter(|s| s.action == "shard_collection")
            .collect();
        assert_eq!(shard_steps.len(), sharded.len());
        let first = sharded[0];
        assert_eq!(
            shard_steps[0].command,
            doc! {
                "shardCollection": format!("lucid.{}", first.collection.name()),
                "key": first.shard_key.clone().expect("key"),
            }
        );
        // once sharded, nothing more to do; and off when shard_collections = false
        let mut done = state.clone();
        done.sharding_enabled = true;
        done.sharded = sharded
            .iter()
            .map(|s| s.collection.name().to_owned())
            .collect();
        let p = plan(
            &cat,
            "lucid",
            &done,
            Capabilities::MONGODB,
            &Topology::Mongos,
            true,
        );
        assert!(p.steps.is_empty());
        let p = plan(
            &cat,
            "lucid",
            &state,
            Capabilities::MONGODB,
            &Topology::Mongos,
            false,
        );
        assert!(p.steps.is_empty());
    }

    #[test]
    fn text_indexes_from_weights_or_per_field_entries() {
        let real = doc! {"v": 2, "key": {"_fts": "text", "_ftsx": 1}, "name": "t",
        "weights": {"title": 1, "body": 1}};
        assert_eq!(
            server_index(&real).expect("parses").key,
            doc! {"title": "text", "body": "text"}
        );
        let nx = doc! {"v": 2, "key": {"title": "text"}, "name": "title_text"};
        assert_eq!(
            server_index(&nx).expect("parses").key,
            doc! {"title": "text"}
        );
        assert_eq!(regex_escape("lucid.x"), "lucid\\.x");
    }
}
