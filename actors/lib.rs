//! `lucid-actors`: the storage layer of the Lucid system as actix actors — one per backend,
//! under one supervision mechanism — plus the configuration, events and health registry they
//! share. The `lucid-db` daemon runs them; sibling services embed them with [`start`].
//! How the parts fit together, and where a new actor goes: `docs/architecture.md`.
//!
//! # Layout
//!
//! - [`backend`] — the names the others share: [`Backend`] and its connection's `StateLabel`.
//! - [`backup`] — the backup actor and its format, keys, pipeline, storage and catalogue.
//! - [`clock`] — where "now" comes from for the lifecycle and the scheduler ([`clock::Clock`]).
//! - [`config`] — the typed configuration (docs/configuration.md): layers, validation, secrets.
//!   Plain data: it names no actor; each actor checks its own section, [`load_config`] runs all.
//! - [`roles`] — which parts run in a process ([`Roles`]: stores, volumes, backup, scheduler).
//! - [`state`] — the state directory ([`StateDir`]) and the CLI's owner check.
//! - [`events`] — typed events: one `emit` that logs with stable fields and counts.
//! - [`redact`] — the one redaction helper for URLs and credentials; [`redact::Secret`].
//! - `glob` — the one `*`/`?` matcher: Redis keys a restore skips, cleanup's file patterns.
//! - [`supervisor`] — connection state machine, backoff schedule, call errors and deadlines.
//! - [`metrics`] — the Prometheus registry every actor records into, rendered for `/metrics`.
//! - [`health`] — the health registry the backend actors and the volume actor (its data root)
//!   write and `/health` reads.
//! - `threads` — each store actor's own thread (an actix arbiter), named, tied to its starter.
//! - [`transfer`] — the one import contract of every store: options, summary, sources.
//! - [`redis`] — the Redis actor.
//! - [`mongo`] — the MongoDB actor: the 15 collections, validated CRUD, bootstrap, export/import.
//! - [`search`] — the Elasticsearch actor: monthly indices, routed writes, bulk, lifecycle.
//! - [`volume`] — the volume actor: named volumes, quotas, usage, integrity, tar streams.
//! - [`scheduler`] — the scheduler actor: cron jobs, their run records, catch-up, the clock.
//!
//! # Use
//!
//! Inside an actix `System`, `start(&config, Roles::SIBLING)` starts the enabled store actors,
//! each on a thread of its own, and returns their [`Handles`]; [`Roles`] says which parts a
//! process runs. The handles are `Send + Sync + Clone`: any arbiter may call them, and a
//! request/response call runs in the caller's task. Every call answers within the configured
//! deadline: a backend that is down is an error in the reply (`Unavailable`), never a hang.

pub mod backend;
pub mod backup;
pub mod clock;
pub mod config;
pub mod events;
mod glob;
pub mod health;
pub mod metrics;
pub mod mongo;
pub mod redact;
pub mod redis;
pub mod roles;
pub mod scheduler;
pub mod search;
pub mod state;
pub mod supervisor;
mod threads;
pub mod transfer;
pub mod volume;

use std::time::Duration;

pub use backend::Backend;
pub use config::Config;
pub use health::{BackendStatus, HealthRegistry};
pub use roles::{Part, Roles};
pub use state::StateDir;
pub use supervisor::CallError;

/// The configuration with every check made: the config module's own
/// ([`config::load_values`]) and each actor's of its section ([`check_config`]), all problems
/// reported at once. The daemon, `config check` and every command load through this; sibling
/// services should too.
pub fn load_config(opts: &config::LoadOptions) -> Result<config::Loaded, config::ConfigErrors> {
    config::load_with(opts, check_config)
}

/// Each actor's checks of its own config section, the ones the config module cannot make
/// without naming the actor (a schema that must compile, a volume name, the lifecycle's
/// order). Redis has none: its section is checked by value alone.
pub fn check_config(config: &Config, errors: &mut Vec<config::ConfigError>) {
    mongo::check_config(&config.mongodb, errors);
    search::check_config(&config.elasticsearch, errors);
    volume::check_config(&config.volumes, errors);
    backup::check_config(&config.backup, errors);
    scheduler::check_config(&config.scheduler, errors);
}

/// What `config check` warns about: a configuration that works, but probably not as meant
/// (backups that would be written unencrypted).
pub fn config_warnings(config: &Config) -> Vec<config::ConfigError> {
    backup::config_warnings(&config.backup)
}

/// Reads fail points from the `FAILPOINTS` environment variable (`name=action;…`, the `fail`
/// crate's syntax) in a build with the `failpoints` feature — the binary the integration tests
/// run, so a test can slow or crash a CLI process at a named point. Without the feature (every
/// real build) it does nothing and the variable is ignored.
pub fn failpoints_from_env() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// An actor that did not answer a heartbeat or a shutdown in time, or has stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {actor} actor {}", if *.stopped { "has stopped" } else { "did not answer in time" })]
pub struct Unresponsive {
    pub actor: &'static str,
    /// The actor has stopped (its mailbox is closed); otherwise it took no message, or gave
    /// no answer, within the deadline: its loop is wedged or its mailbox full.
    pub stopped: bool,
}

impl Unresponsive {
    /// `deadline_exceeded` for an actor that did not answer in time (the watchdog's usual
    /// case: a wedged loop), `not_delivered` for one that has stopped.
    pub fn code(&self) -> &'static str {
        if self.stopped {
            "not_delivered"
        } else {
            "deadline_exceeded"
        }
    }

    fn call(actor: &'static str, e: &CallError) -> Self {
        Unresponsive {
            actor,
            stopped: e.actor_stopped(),
        }
    }

    fn mailbox(actor: &'static str, e: &actix::MailboxError) -> Self {
        Unresponsive {
            actor,
            stopped: matches!(e, actix::MailboxError::Closed),
        }
    }
}

/// Typed handles to the running actors; `Send + Sync`, so any arbiter may call them (as the
/// HTTP workers will).
#[derive(Clone)]
pub struct Handles {
    /// The parts that run here: those asked for that have an actor ([`Roles::BUILT`]).
    pub roles: Roles,
    pub registry: HealthRegistry,
    /// `None` when `redis.enabled = false`.
    pub redis: Option<redis::RedisHandle>,
    /// `None` when `mongodb.enabled = false` (or its schema files could not be read).
    pub mongo: Option<mongo::MongoHandle>,
    /// `None` when `elasticsearch.enabled = false`.
    pub search: Option<search::SearchHandle>,
    /// `None` unless the `volumes` part runs.
    pub volumes: Option<volume::VolumeHandle>,
    /// `None` unless the `backup` part runs.
    pub backup: Option<backup::BackupHandle>,
    /// `None` unless the `scheduler` part runs.
    pub scheduler: Option<scheduler::SchedulerHandle>,
}

/// Starts the actors of the parts in `roles` (call it inside an actix `System`): for `stores`,
/// the enabled store actors; for `volumes`, the volume actor (which creates the default
/// volumes, and reports its data root in the registry as `volumes`); for `backup`, the backup actor (which reaches the others through their handles,
/// and writes nothing until asked). Nothing else is started and, without `volumes`, nothing is
/// written to disk.
/// Starting never fails on a backend that is down: the actor keeps trying under backoff and
/// reports through the registry.
///
/// Each actor runs on a thread of its own (`lucid-redis`, `lucid-mongo`, `lucid-search`,
/// `lucid-volume`, `lucid-backup`), which lives as long as the current arbiter — as the actors did when they
/// ran on it — and records events into the [`events::capture`]s open here when `start` is
/// called.
pub fn start(config: &Config, roles: Roles) -> Handles {
    let roles = roles.and(Roles::BUILT);
    metrics::set_enabled(config.metrics.enabled);
    let registry = HealthRegistry::new();
    let stores = roles.contains(Part::Stores);
    let redis = (stores && config.redis.enabled).then(|| {
        let entry = registry.register(Backend::Redis, config.redis.required);
        redis::RedisActor::start_with(&config.redis, &config.supervisor, entry)
    });
    let mongo = if stores && config.mongodb.enabled {
        match mongo::Catalog::load(&config.mongodb) {
            Ok(catalog) => {
                let entry = registry.register(Backend::Mongodb, config.mongodb.required);
                Some(mongo::MongoActor::start_with(
                    &config.mongodb,
                    &config.supervisor,
                    catalog,
                    entry,
                ))
            }
            Err(e) => {
                // `config check` refuses this before the daemon starts; this is the fallback.
                registry.register_disabled(Backend::Mongodb, &format!("schema files: {e}"));
                None
            }
        }
    } else {
        None
    };
    let search = if stores && config.elasticsearch.enabled {
        match search::Templates::builtin() {
            Ok(templates) => {
                let entry =
                    registry.register(Backend::Elasticsearch, config.elasticsearch.required);
                Some(search::SearchActor::start_with(
                    &config.elasticsearch,
                    &config.supervisor,
                    templates,
                    std::sync::Arc::new(search::SystemClock),
                    entry,
                ))
            }
            Err(e) => {
                registry.register_disabled(Backend::Elasticsearch, &format!("templates: {e}"));
                None
            }
        }
    } else {
        None
    };
    let volumes = roles.contains(Part::Volumes).then(|| {
        // Required: a daemon whose data root is missing, read-only or full is not ready.
        let entry = registry.register(Backend::Volumes, true);
        volume::VolumeActor::start_reporting(
            &config.volumes,
            &config.supervisor,
            entry,
            Some(state::StateDir::new(&config.state_dir).volume_history()),
        )
    });
    let backup = roles.contains(Part::Backup).then(|| {
        backup::BackupActor::start_with(
            config,
            backup::StoreHandles {
                volumes: volumes.clone(),
                mongo: mongo.clone(),
                redis: redis.clone(),
                search: search.clone(),
                registry: Some(registry.clone()),
            },
        )
    });
    let scheduler = roles.contains(Part::Scheduler).then(|| {
        let peers = scheduler::Peers {
            registry: registry.clone(),
            backup: backup.clone(),
            search: search.clone(),
            volumes: volumes.clone(),
            // The lifecycle's deletion gate: the indices a verified backup holds, exported
            // while write-blocked (no backup part here: nothing is deleted).
            backed_up_indices: backup.as_ref().map(|b| b.backed_up_indices_gate()),
        };
        scheduler::SchedulerActor::start_with(config, peers, scheduler::Options::daemon())
    });
    Handles {
        roles,
        registry,
        redis,
        mongo,
        search,
        volumes,
        backup,
        scheduler,
    }
}

impl Handles {
    /// A round trip to every actor: proves their event loops are turning (the watchdog sends
    /// WATCHDOG=1 only after this answered).
    pub async fn heartbeat(&self, deadline: Duration) -> Result<(), Unresponsive> {
        if let Some(redis) = &self.redis {
            redis
                .heartbeat(deadline)
                .await
                .map_err(|e| Unresponsive::call("redis", &e))?;
        }
        if let Some(mongo) = &self.mongo {
            mongo
                .heartbeat(deadline)
                .await
                .map_err(|e| Unresponsive::call("mongodb", &e))?;
        }
        if let Some(search) = &self.search {
            search
                .heartbeat(deadline)
                .await
                .map_err(|e| Unresponsive::call("elasticsearch", &e))?;
        }
        if let Some(volumes) = &self.volumes {
            volumes
                .addr()
                .send(supervisor::Heartbeat)
                .timeout(deadline)
                .await
                .map_err(|e| Unresponsive::mailbox("volume", &e))?;
        }
        if let Some(backup) = &self.backup {
            backup
                .addr()
                .send(supervisor::Heartbeat)
                .timeout(deadline)
                .await
                .map_err(|e| Unresponsive::mailbox("backup", &e))?;
        }
        if let Some(scheduler) = &self.scheduler {
            scheduler
                .addr()
                .send(supervisor::Heartbeat)
                .timeout(deadline)
                .await
                .map_err(|e| Unresponsive::mailbox("scheduler", &e))?;
        }
        Ok(())
    }

    /// Asks every actor to close its connections and stop; waits at most `deadline` each.
    /// Returns the actors that did not confirm in time.
    pub async fn shutdown(&self, deadline: Duration) -> Vec<Unresponsive> {
        let mut late = Vec::new();
        // The scheduler first: no new run starts while the others drain.
        if let Some(scheduler) = &self.scheduler
            && let Err(e) = scheduler
                .addr()
                .send(supervisor::Shutdown)
                .timeout(deadline)
                .await
        {
            late.push(Unresponsive::mailbox("scheduler", &e));
        }
        if let Some(redis) = &self.redis
            && let Err(e) = redis.shutdown(deadline).await
        {
            late.push(Unresponsive::call("redis", &e));
        }
        if let Some(mongo) = &self.mongo
            && let Err(e) = mongo.shutdown(deadline).await
        {
            late.push(Unresponsive::call("mongodb", &e));
        }
        if let Some(search) = &self.search
            && let Err(e) = search.shutdown(deadline).await
        {
            late.push(Unresponsive::call("elasticsearch", &e));
        }
        if let Some(volumes) = &self.volumes
            && let Err(e) = volumes
                .addr()
                .send(supervisor::Shutdown)
                .timeout(deadline)
                .await
        {
            late.push(Unresponsive::mailbox("volume", &e));
        }
        if let Some(backup) = &self.backup
            && let Err(e) = backup
                .addr()
                .send(supervisor::Shutdown)
                .timeout(deadline)
                .await
        {
            late.push(Unresponsive::mailbox("backup", &e));
        }
        late
    }

    /// Waits until every backend has finished its first connect attempt (up, or failed and in
    /// backoff), at most `deadline`; for one-shot health checks.
    pub async fn settled(&self, deadline: Duration) {
        let mut changes = self.registry.subscribe();
        let _ = tokio::time::timeout(deadline, async {
            loop {
                let pending = self
                    .registry
                    .snapshot()
                    .iter()
                    .any(|s| s.state == supervisor::StateLabel::Connecting);
                if !pending || changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{ConfigErrors, LoadOptions};

    fn load_env(pairs: &[(&str, &str)]) -> Result<config::Loaded, ConfigErrors> {
        load_config(&LoadOptions {
            file: None,
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        })
    }

    fn keys(e: &ConfigErrors) -> Vec<&str> {
        e.0.iter().map(|e| e.key.as_str()).collect()
    }

    /// The watchdog's code tells a wedged actor (no answer in time) from a stopped one.
    #[test]
    fn unresponsive_says_whether_the_actor_stopped_or_did_not_answer() {
        let cases = [
            (
                Unresponsive::call(
                    "redis",
                    &supervisor::not_delivered(Backend::Redis, actix::MailboxError::Closed),
                ),
                "not_delivered",
                "the redis actor has stopped",
            ),
            (
                Unresponsive::call(
                    "mongodb",
                    &supervisor::not_delivered(Backend::Mongodb, actix::MailboxError::Timeout),
                ),
                "deadline_exceeded",
                "the mongodb actor did not answer in time",
            ),
            (
                Unresponsive::mailbox("volume", &actix::MailboxError::Timeout),
                "deadline_exceeded",
                "the volume actor did not answer in time",
            ),
            (
                Unresponsive::mailbox("volume", &actix::MailboxError::Closed),
                "not_delivered",
                "the volume actor has stopped",
            ),
        ];
        for (e, code, text) in cases {
            assert_eq!((e.code(), e.to_string().as_str()), (code, text), "{e:?}");
        }
    }

    #[test]
    fn defaults_pass_every_actors_check() {
        load_env(&[]).expect("defaults valid");
    }

    /// The keys only an actor can check are checked by `load_config`, with the same key and
    /// message `config check` printed when the config module made these checks itself.
    #[test]
    fn actor_checks_name_their_key() {
        let missing = std::env::temp_dir().join("lucid-db-no-such-schema-dir");
        let missing = missing.to_str().expect("utf8");
        for (env, key, needle) in [
            (
                ("LUCID_DB__MONGODB__DATABASE", "lucid.db"),
                "mongodb.database",
                "must not contain '.'",
            ),
            (
                ("LUCID_DB__MONGODB__SCHEMA_DIR", missing),
                "mongodb.schema_dir",
                "",
            ),
            (
                ("LUCID_DB__ELASTICSEARCH__COLD_AFTER", "1d"),
                "elasticsearch.cold_after",
                "warm_after < cold_after < delete_after",
            ),
            (
                ("LUCID_DB__ELASTICSEARCH__PREPARE_AHEAD", "30d"),
                "elasticsearch.prepare_ahead",
                "under 28 days",
            ),
            (
                ("LUCID_DB__VOLUMES__EXTRA", "scratch, ../up"),
                "volumes.extra",
                "only a-z",
            ),
            (
                ("LUCID_DB__VOLUMES__MAX_QUOTA", "1T"),
                "volumes.max_quota",
                "must be at most 100G",
            ),
            (
                ("LUCID_DB__VOLUMES__CLEANUP_PATTERNS", "*.tmp, *"),
                "volumes.cleanup_patterns",
                "at least one literal character",
            ),
        ] {
            let err = load_env(&[env]).expect_err(env.1);
            assert_eq!(keys(&err), vec![key], "{env:?}: {err}");
            assert!(err.to_string().contains(needle), "{env:?}: {err}");
            // The config module alone accepts these: the check is the actor's.
            config::load_values(&LoadOptions {
                file: None,
                env: HashMap::from([(env.0.to_owned(), env.1.to_owned())]),
            })
            .unwrap_or_else(|e| panic!("{env:?} is the actor's to refuse: {e}"));
        }
        // A schema directory is compiled only when MongoDB is enabled.
        load_env(&[
            ("LUCID_DB__MONGODB__SCHEMA_DIR", missing),
            ("LUCID_DB__MONGODB__ENABLED", "false"),
        ])
        .expect("disabled MongoDB's schema files are not read");
    }

    #[test]
    fn config_and_actor_errors_are_reported_together() {
        let err = load_env(&[
            ("LUCID_DB__MONGODB__URL", "postgres://x"),
            ("LUCID_DB__VOLUMES__EXTRA", "Bad"),
            ("LUCID_DB__VOLUMES__ROOT", "relative"),
        ])
        .expect_err("invalid");
        assert_eq!(
            keys(&err),
            vec!["mongodb.url", "volumes.root", "volumes.extra"]
        );
    }

    /// The crate paths a source file names (in code or docs), with their line numbers: the
    /// first segment after each `crate::`, and each member of a `crate::{a, b::{c}}` group,
    /// however many lines the group spans.
    fn crate_paths(source: &str) -> Vec<(usize, String, &str)> {
        let line_at = |offset: usize| source[..offset].matches('\n').count();
        let lines: Vec<&str> = source.lines().collect();
        let mut found = Vec::new();
        for (at, _) in source.match_indices("crate::") {
            let rest = &source[at + "crate::".len()..];
            let mut names = Vec::new();
            if let Some(group) = rest.strip_prefix('{') {
                // The first segment of each item at the group's top level.
                let (mut depth, mut item) = (0usize, String::new());
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => names.push(std::mem::take(&mut item)),
                        _ if depth == 0 => item.push(c),
                        _ => {}
                    }
                }
                names.push(item);
            } else {
                names.push(rest.to_owned());
            }
            let line = line_at(at);
            for name in names {
                let name = name.trim_start();
                let end = name
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(name.len());
                if end > 0 {
                    found.push((line + 1, name[..end].to_owned(), lines[line]));
                }
            }
        }
        found
    }

    fn assert_names_only(file: &str, source: &str, allowed: &[&str]) {
        for (line_no, name, line) in crate_paths(source) {
            assert!(
                allowed.contains(&name.as_str()),
                "actors/{file}:{line_no} names crate::{name}, but this file may name only {allowed:?} \
                 (so that no import path leads from it back into an actor): {}",
                line.trim()
            );
        }
        // A `super::` at the top of a module one level down is the crate root too.
        for (i, line) in source.lines().enumerate() {
            let t = line.trim();
            assert!(
                !t.contains("super::") || t == "use super::*;",
                "actors/{file}:{} reaches the crate root through super::: {t}",
                i + 1
            );
        }
    }

    /// Config is plain data: `config.rs` names only the leaf `redact`, and the leaves name
    /// nothing, so no import path leads from the configuration back into an actor.
    #[test]
    fn config_and_the_leaves_name_no_actor() {
        assert_names_only("config.rs", include_str!("config.rs"), &["redact"]);
        assert_names_only("redact.rs", include_str!("redact.rs"), &[]);
        assert_names_only("backend.rs", include_str!("backend.rs"), &[]);
        assert_names_only("transfer.rs", include_str!("transfer.rs"), &[]);
        assert_names_only("clock.rs", include_str!("clock.rs"), &[]);
    }

    /// The supervisor reports into the health registry and the events; they must not name it
    /// back (what they share is in the leaf `backend`).
    #[test]
    fn health_and_events_do_not_name_the_supervisor() {
        for (file, source) in [
            ("health.rs", include_str!("health.rs")),
            ("events.rs", include_str!("events.rs")),
        ] {
            for (line_no, name, line) in crate_paths(source) {
                assert!(
                    name != "supervisor",
                    "actors/{file}:{line_no} names crate::supervisor (an import cycle): {}",
                    line.trim()
                );
            }
        }
    }

    /// The checker itself: it must see a path in a group and in a doc link.
    #[test]
    fn crate_paths_sees_groups_and_docs() {
        let source = "use crate::{\n    redact,\n    mongo::{Catalog, self},\n};\n/// See [`crate::volume`].\n";
        let names: Vec<(usize, String)> = crate_paths(source)
            .into_iter()
            .map(|(n, name, _)| (n, name))
            .collect();
        assert_eq!(
            names,
            [
                (1, "redact".to_owned()),
                (1, "mongo".to_owned()),
                (5, "volume".to_owned())
            ]
        );
    }
}
