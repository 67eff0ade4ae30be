//! Export and import of Lucid's Redis data, for backups (docs/redis.md, Backups: export and import).
//!
//! Export walks the keyspace with `SCAN … MATCH lucid:*` (never `KEYS`, which blocks the
//! server) and streams each key as ([`ExportedKey`]) its name, type (from the payload's type
//! byte), `DUMP` payload and absolute expiry (server clock) through a bounded channel: memory stays flat whatever the
//! data size, and a consumer that stops reading for `supervisor.stream_idle_timeout` ends the
//! export. Import restores with `RESTORE … ABSTTL REPLACE`, so TTLs keep their absolute end;
//! it skips keys matching `redis.not_restorable` (held locks and rate-limit windows: they must
//! not come back), never resurrects a key whose expiry has passed, and raises each fencing
//! counter to max(current, restored) + `redis.fence_margin` instead of overwriting it.
//!
//! An import follows the one contract of every store ([`crate::transfer`]): it writes into the
//! database its options name (`SELECT` on a connection of its own, so a restore drill can go
//! to a scratch database beside the live one), refuses a database that holds `lucid:*` keys
//! unless it replaces (and then writes over the keys it restores, key by key: it never
//! flushes — fences must be compared with their current value, and the other keys stay), and
//! fails with the count written when its source fails.

use std::sync::LazyLock;
use std::time::Duration;

use actix::prelude::*;
use futures_util::Stream;
use redis::Script;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::locks::FENCE_PREFIX;
use super::{RedisActor, RedisError, RedisHandle, Settings, connect_once};
use crate::glob::glob_match;
use crate::redact;
use crate::supervisor::DeadlineError;
use crate::supervisor::feed::{Feed, Feeder, Stopped, feed};
use crate::transfer::{self, Admission, Batch, Skip, Source, SourceEnd, TargetState, next_batch};

/// Keys written per import pipeline: small enough that a batch of large values stays well
/// inside the call deadline.
const BATCH: usize = 64;
/// Keys an export asks `SCAN` for per step (a hint) and reads per `MULTI`/`EXEC`: round trips
/// dominate an export of small keys, so more than an import writes at once; a step has the
/// stream's idle timeout, not the call deadline, since a batch of large values takes longer
/// than one call.
const EXPORT_BATCH: usize = 256;
/// Items buffered between the producer and the consumer of a stream: eight SCAN batches. Not
/// a config key: the buffer only lets the SCAN task read ahead while the reader works, and a
/// larger one buys no throughput, only memory (each item holds a DUMPed value).
const CHANNEL_CAPACITY: usize = 512;
/// How long [`RedisHandle::import_feed`]'s writer waits for room before it gives up (the
/// import itself bounds its wait by `supervisor.stream_idle_timeout`).
const IMPORT_FEED_IDLE: Duration = Duration::from_secs(30);
/// What an export walks by default: everything lucid-db writes.
pub const DEFAULT_PATTERN: &str = "lucid:*";

// ---------------------------------------------------------------------------------------------
// Messages

/// Redis data types, as `TYPE` names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    String,
    Hash,
    List,
    Set,
    Zset,
    Stream,
    /// A module type or anything newer.
    Other(String),
}

impl KeyKind {
    /// The kind `TYPE` names.
    pub fn from_type(name: &str) -> KeyKind {
        match name {
            "string" => KeyKind::String,
            "hash" => KeyKind::Hash,
            "list" => KeyKind::List,
            "set" => KeyKind::Set,
            "zset" => KeyKind::Zset,
            "stream" => KeyKind::Stream,
            other => KeyKind::Other(other.to_owned()),
        }
    }

    /// The kind a `DUMP` payload's first byte (its RDB object type) says, for a key read back
    /// from a backup (Redis 7.4's types; a module's value, or anything newer, is `Other`).
    pub fn from_rdb_type(byte: u8) -> KeyKind {
        match byte {
            0 => KeyKind::String,
            1 | 10 | 14 | 18 => KeyKind::List,
            2 | 11 | 20 => KeyKind::Set,
            3 | 5 | 12 | 17 => KeyKind::Zset,
            4 | 9 | 13 | 16 | 22..=25 => KeyKind::Hash,
            15 | 19 | 21 => KeyKind::Stream,
            other => KeyKind::Other(format!("rdb-type-{other}")),
        }
    }

    /// The name `TYPE` gives it.
    pub fn as_str(&self) -> &str {
        match self {
            KeyKind::String => "string",
            KeyKind::Hash => "hash",
            KeyKind::List => "list",
            KeyKind::Set => "set",
            KeyKind::Zset => "zset",
            KeyKind::Stream => "stream",
            KeyKind::Other(name) => name,
        }
    }
}

/// One exported key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedKey {
    pub key: String,
    pub kind: KeyKind,
    /// `DUMP` output: Redis's own serialisation, with its RDB version and checksum.
    pub payload: Vec<u8>,
    /// Absolute expiry, milliseconds since the Unix epoch (server clock); `None`: persistent.
    pub expires_at_ms: Option<u64>,
}

/// Starts an export of the keys matching `pattern` (`None`: `lucid:*`) and answers the stream.
/// The stream ends after the last key, or with one `Err` item (a reader that stops taking keys
/// for `supervisor.stream_idle_timeout` gets `stream_idle` once it reads again).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Feed<ExportedKey, RedisError>, RedisError>")]
pub struct Export {
    pub pattern: Option<String>,
}

/// Restores the keys of `source` until it ends, into the database `options` names; answers
/// what was done. The target rule ([`crate::transfer::Existing`]) reads "holds data" as "holds
/// a `lucid:*` key" and "exists" as "holds any key": an import writes only `lucid:*`. An `Err`
/// item from the source fails the import ([`RedisError::ImportSource`], with the keys written
/// so far): a restore that read only half its artifact must not look complete.
#[derive(Message)]
#[rtype(result = "Result<ImportSummary, RedisError>")]
pub struct Import {
    pub options: ImportOptions,
    pub source: Source<ExportedKey>,
}

impl std::fmt::Debug for Import {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Import")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Where a Redis import writes: a database of the server `redis.url` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportTarget {
    /// The database index (`SELECT`); `None`: the one `redis.url` selects.
    pub db: Option<u32>,
}

/// An import's target and rule (see [`Import`]).
pub type ImportOptions = transfer::ImportOptions<ImportTarget>;

/// What only a Redis import reports, beside the shared counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportDetails {
    /// The database written.
    pub db: i64,
    /// Fencing counters raised to max(current, restored) + margin (counted in `written`).
    pub fences_raised: u64,
    /// The first few keys Redis refused (skipped as `refused`: a corrupt payload, a module
    /// type not loaded, OOM), with Redis's reason.
    pub failures: Vec<(String, String)>,
}

/// What an import did: keys read, written (restored, and fences raised), skipped as
/// `not_restorable`, `expired`, `foreign` (outside `lucid:*`) or `refused`.
pub type ImportSummary = transfer::ImportSummary<ImportDetails>;

/// How many refused keys are kept with their reason.
const KEEP_FAILURES: usize = 20;

fn refused(summary: &mut ImportSummary, key: String, reason: &str) {
    summary.skip(Skip::Refused);
    if summary.details.failures.len() < KEEP_FAILURES {
        summary.details.failures.push((key, redact::text(reason)));
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

impl Handler<Export> for RedisActor {
    type Result = Result<Feed<ExportedKey, RedisError>, RedisError>;

    fn handle(&mut self, msg: Export, _: &mut Context<Self>) -> Self::Result {
        self.shared.usable()?;
        let pattern = msg.pattern.unwrap_or_else(|| DEFAULT_PATTERN.to_owned());
        if !pattern.starts_with("lucid:") {
            return Err(RedisError::invalid("pattern", "must start with \"lucid:\""));
        }
        let client = self.stream_client()?;
        let (feeder, keys) = feed(CHANNEL_CAPACITY, self.shared.settings().stream_idle);
        let shared = self.shared.clone();
        actix_rt::spawn(async move {
            let settings = shared.settings();
            let exported = async {
                let (conn, _) = connect_once(client, settings.deadline).await?;
                export(conn, &pattern, settings, &feeder).await
            };
            if let Err(e) = exported.await {
                feeder.fail(e);
            }
        });
        Ok(keys)
    }
}

/// What an import into a database would find there, and how many keys it holds in all —
/// the rule [`Import`] applies, asked before anything is written (a restore looks at every
/// target first). Writes nothing.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(TargetState, u64), RedisError>")]
pub struct InspectImportTarget {
    pub target: ImportTarget,
}

impl Handler<InspectImportTarget> for RedisActor {
    type Result = ResponseFuture<Result<(TargetState, u64), RedisError>>;

    fn handle(&mut self, msg: InspectImportTarget, _: &mut Context<Self>) -> Self::Result {
        let target = self.target_connection(msg.target);
        Box::pin(async move {
            let (mut conn, _, deadline) = target?.await?;
            target_state(&mut conn, deadline).await
        })
    }
}

impl Handler<Import> for RedisActor {
    type Result = ResponseFuture<Result<ImportSummary, RedisError>>;

    /// Runs on the actor's arbiter, on a connection of its own to the target database.
    fn handle(&mut self, msg: Import, _: &mut Context<Self>) -> Self::Result {
        let target = self.target_connection(msg.options.target);
        let shared = self.shared.clone();
        Box::pin(async move {
            let settings = shared.settings();
            let (mut conn, db, _) = target?.await?;
            // Into the live database: the daemon's own writes answer `busy` until it ends.
            let _gate = (db == shared.database).then(|| shared.restore_gate.hold());
            let (found, keys) = target_state(&mut conn, settings.deadline).await?;
            match msg.options.existing.admit(found) {
                Admission::Into | Admission::Replace => {}
                Admission::NotEmpty => return Err(RedisError::NotEmpty { db, keys }),
                Admission::Exists => return Err(RedisError::Exists { db, keys }),
            }
            import(conn, msg.source, settings, db).await
        })
    }
}

/// See [`RedisHandle::flush_scratch`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(), RedisError>")]
pub struct FlushScratch {
    pub db: u32,
}

impl Handler<FlushScratch> for RedisActor {
    type Result = ResponseFuture<Result<(), RedisError>>;

    fn handle(&mut self, msg: FlushScratch, _: &mut Context<Self>) -> Self::Result {
        let target = self.scratch_connection(msg.db);
        Box::pin(async move {
            let (mut conn, _, deadline) = target?.await?;
            RedisError::within(deadline, async {
                Ok(redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?)
            })
            .await
        })
    }
}

/// How a key of a drill's database compares with the backup's; see
/// [`RedisHandle::compare_keys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyComparison {
    Same,
    Missing,
    Differs,
}

/// See [`RedisHandle::compare_keys`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<KeyComparison>, RedisError>")]
pub struct CompareKeys {
    pub db: u32,
    pub keys: Vec<ExportedKey>,
}

/// Where a drill puts a backup's payload to read its value (outside `lucid:*`).
const COMPARE_KEY: &str = "drill-compare";

impl Handler<CompareKeys> for RedisActor {
    type Result = ResponseFuture<Result<Vec<KeyComparison>, RedisError>>;

    fn handle(&mut self, msg: CompareKeys, _: &mut Context<Self>) -> Self::Result {
        let target = self.scratch_connection(msg.db);
        Box::pin(async move {
            let (mut conn, _, deadline) = target?.await?;
            let mut out = Vec::with_capacity(msg.keys.len());
            for key in &msg.keys {
                let conn = &mut conn;
                let found = RedisError::within(deadline, async {
                    let held: Option<Vec<u8>> =
                        redis::cmd("DUMP").arg(&key.key).query_async(conn).await?;
                    let Some(held) = held else {
                        return Ok(KeyComparison::Missing);
                    };
                    if held == key.payload {
                        return Ok(KeyComparison::Same);
                    }
                    // A set's or hash's payload follows its table's layout, which differs
                    // between two copies of the same value: compare the values themselves.
                    redis::cmd("RESTORE")
                        .arg(COMPARE_KEY)
                        .arg(0)
                        .arg(&key.payload)
                        .arg("REPLACE")
                        .query_async::<()>(conn)
                        .await?;
                    let backed = value_of(conn, COMPARE_KEY).await;
                    redis::cmd("DEL")
                        .arg(COMPARE_KEY)
                        .query_async::<()>(conn)
                        .await?;
                    let same = backed? == value_of(conn, &key.key).await?;
                    Ok(if same {
                        KeyComparison::Same
                    } else {
                        KeyComparison::Differs
                    })
                })
                .await?;
                out.push(found);
            }
            Ok(out)
        })
    }
}

/// A key's type and value in an order that does not depend on how the server laid it out.
async fn value_of(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> Result<(String, redis::Value), redis::RedisError> {
    let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await?;
    let (name, extra): (&str, &[&str]) = match kind.as_str() {
        "string" => ("GET", &[]),
        "list" => ("LRANGE", &["0", "-1"]),
        "set" => ("SMEMBERS", &[]),
        "hash" => ("HGETALL", &[]),
        "zset" => ("ZRANGE", &["0", "-1", "WITHSCORES"]),
        "stream" => ("XRANGE", &["-", "+"]),
        // No way to read it here: its payload is all there is (it differed).
        _ => return Ok((kind, redis::Value::Nil)),
    };
    let mut cmd = redis::cmd(name);
    cmd.arg(key).arg(extra);
    if !matches!(kind.as_str(), "set" | "hash") {
        let value: redis::Value = cmd.query_async(conn).await?;
        return Ok((kind, value));
    }
    let mut items: Vec<Vec<u8>> = cmd.query_async(conn).await?;
    if kind == "hash" {
        let mut pairs: Vec<Vec<Vec<u8>>> = items.chunks(2).map(<[_]>::to_vec).collect();
        pairs.sort();
        items = pairs.into_iter().flatten().collect();
    } else {
        items.sort();
    }
    let items = items.into_iter().map(redis::Value::BulkString).collect();
    Ok((kind, redis::Value::Array(items)))
}

/// The client for database `db` of the same server (`None`: the client as it is).
fn on_db(client: redis::Client, db: Option<u32>) -> Result<redis::Client, RedisError> {
    let Some(db) = db else {
        return Ok(client);
    };
    let info = client.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_db(i64::from(db));
    redis::Client::open(info.set_redis_settings(settings)).map_err(|e| RedisError::from_driver(&e))
}

/// What the import's database holds: nothing at all, keys but none of lucid-db's, or
/// `lucid:*` keys; and how many keys in all.
async fn target_state(
    conn: &mut MultiplexedConnection,
    deadline: Duration,
) -> Result<(TargetState, u64), RedisError> {
    let keys: u64 = RedisError::within(deadline, async {
        Ok(redis::cmd("DBSIZE").query_async(conn).await?)
    })
    .await?;
    if keys == 0 {
        return Ok((TargetState::Missing, 0));
    }
    let mut cursor: u64 = 0;
    loop {
        let (next, found): (u64, Vec<String>) = RedisError::within(deadline, async {
            Ok(redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(DEFAULT_PATTERN)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?)
        })
        .await?;
        if !found.is_empty() {
            return Ok((TargetState::Holding, keys));
        }
        cursor = next;
        if cursor == 0 {
            return Ok((TargetState::Empty, keys));
        }
    }
}

impl RedisActor {
    /// [`Self::target_connection`] to a drill's scratch database; the live one is refused
    /// (`invalid`), so no drill message can flush or compare live keys.
    fn scratch_connection(
        &self,
        db: u32,
    ) -> Result<
        impl Future<Output = Result<(MultiplexedConnection, i64, Duration), RedisError>> + use<>,
        RedisError,
    > {
        if i64::from(db) == self.shared.database {
            return Err(RedisError::invalid(
                "db",
                format!("{db} is the live database, not a scratch one"),
            ));
        }
        self.target_connection(ImportTarget { db: Some(db) })
    }

    /// A connection of its own to an import's target database (the server refuses a
    /// `SELECT` past `databases`: `invalid` naming `target.db`), its index, and the deadline.
    fn target_connection(
        &self,
        target: ImportTarget,
    ) -> Result<
        impl Future<Output = Result<(MultiplexedConnection, i64, Duration), RedisError>> + use<>,
        RedisError,
    > {
        let client = self
            .shared
            .usable()
            .and_then(|_| self.stream_client())
            .and_then(|client| on_db(client, target.db))?;
        let db = client.get_connection_info().redis_settings().db();
        let deadline = self.shared.settings().deadline;
        Ok(async move {
            let (conn, _) =
                connect_once(client, deadline)
                    .await
                    .map_err(|e| match (e, target.db) {
                        (RedisError::Server { message }, Some(_)) => {
                            RedisError::invalid("target.db", message)
                        }
                        (e, _) => e,
                    })?;
            Ok((conn, db, deadline))
        })
    }

    /// Streams run on a connection of their own: big DUMP or RESTORE batches must not delay
    /// the replies other callers wait for on the shared connection.
    fn stream_client(&self) -> Result<redis::Client, RedisError> {
        self.client.clone().ok_or_else(|| {
            RedisError::Call(crate::CallError::Disabled {
                backend: crate::Backend::Redis,
                reason: "no usable redis.url".to_owned(),
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Export

async fn export(
    mut conn: MultiplexedConnection,
    pattern: &str,
    settings: &Settings,
    feeder: &Feeder<ExportedKey, RedisError>,
) -> Result<(), RedisError> {
    let deadline = settings.deadline;
    // A batch of DUMPs is a stream's progress, not a call: it may take longer than one.
    let step = settings.stream_idle.max(deadline);
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = RedisError::within(deadline, async {
            Ok(redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(EXPORT_BATCH)
                .query_async(&mut conn)
                .await?)
        })
        .await?;
        if !keys.is_empty() {
            // MULTI/EXEC: a key's TTL and payload are read at one instant. The type is the
            // payload's first byte: no TYPE round through the server.
            let mut pipe = redis::pipe();
            pipe.atomic().cmd("TIME");
            for key in &keys {
                pipe.cmd("PTTL").arg(key).cmd("DUMP").arg(key);
            }
            let replies: Vec<redis::Value> =
                RedisError::within(step, async { Ok(pipe.query_async(&mut conn).await?) }).await?;
            let mut replies = replies.into_iter();
            let now_ms = server_ms(replies.next())?;
            for key in keys {
                let (Some(pttl), Some(dump)) = (replies.next(), replies.next()) else {
                    return Err(RedisError::Server {
                        message: "short pipeline reply during export".to_owned(),
                    });
                };
                let pttl: i64 = parse(pttl)?;
                let dump: Option<Vec<u8>> = parse(dump)?;
                // Gone between SCAN and DUMP (expired or deleted): nothing to export.
                let (Some(payload), false) = (dump, pttl == -2) else {
                    continue;
                };
                let item = ExportedKey {
                    key,
                    kind: payload
                        .first()
                        .map_or(KeyKind::Other("empty".to_owned()), |b| {
                            KeyKind::from_rdb_type(*b)
                        }),
                    payload,
                    expires_at_ms: (pttl >= 0).then(|| now_ms + pttl as u64),
                };
                match feeder.send(item).await {
                    Ok(()) => {}
                    Err(Stopped::Idle(after)) => {
                        return Err(RedisError::StreamIdle {
                            what: "export consumer stopped reading",
                            after,
                        });
                    }
                    // The consumer went away: the export is abandoned.
                    Err(Stopped::Gone) => return Ok(()),
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(());
        }
    }
}

fn parse<T: redis::FromRedisValue>(v: redis::Value) -> Result<T, RedisError> {
    redis::from_redis_value(v).map_err(|e| RedisError::Server {
        message: format!("unexpected reply: {e}"),
    })
}

/// `TIME` → milliseconds since the epoch.
fn server_ms(reply: Option<redis::Value>) -> Result<u64, RedisError> {
    let (secs, micros): (u64, u64) = parse(reply.unwrap_or(redis::Value::Nil))?;
    Ok(secs * 1000 + micros / 1000)
}

// ---------------------------------------------------------------------------------------------
// Import

static RAISE_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- KEYS: fence, scratch key. ARGV: margin, the exported DUMP payload.
        -- All in one script: no scratch key survives an error half-way.
        redis.call('RESTORE', KEYS[2], 0, ARGV[2], 'REPLACE')
        local restored = tonumber(redis.call('GET', KEYS[2])) or 0
        redis.call('DEL', KEYS[2])
        local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
        local target = math.max(current, restored) + tonumber(ARGV[1])
        redis.call('SET', KEYS[1], target)
        return target
        ",
    )
});

async fn import(
    mut conn: MultiplexedConnection,
    mut source: Source<ExportedKey>,
    settings: &Settings,
    db: i64,
) -> Result<ImportSummary, RedisError> {
    let started = Instant::now();
    let mut summary = ImportSummary::new(ImportDetails {
        db,
        ..ImportDetails::default()
    });
    loop {
        let Batch { items, end } = next_batch(&mut source, BATCH, settings.stream_idle).await;
        if let Some(SourceEnd::Idle(after)) = end {
            return Err(RedisError::StreamIdle {
                what: "import source sent nothing",
                after,
            });
        }
        summary.read += items.len() as u64;
        // The keys read before a source error are written first, so the count the failure
        // reports is what is really in Redis.
        if !items.is_empty() {
            restore_batch(&mut conn, items, settings, &mut summary).await?;
        }
        match end {
            None => {}
            Some(SourceEnd::Failed(reason)) => {
                return Err(RedisError::ImportSource {
                    written: summary.written,
                    reason: redact::text(&reason),
                });
            }
            Some(SourceEnd::Finished | SourceEnd::Idle(_)) => {
                summary.elapsed_ms = started.elapsed().as_millis() as u64;
                return Ok(summary);
            }
        }
    }
}

/// Restores one batch: RESTORE … ABSTTL REPLACE in one pipeline, fences one script each.
async fn restore_batch(
    conn: &mut MultiplexedConnection,
    batch: Vec<ExportedKey>,
    settings: &Settings,
    summary: &mut ImportSummary,
) -> Result<(), RedisError> {
    let deadline = settings.deadline;
    let now_ms = RedisError::within(deadline, async {
        let time: redis::Value = redis::cmd("TIME").query_async(conn).await?;
        server_ms(Some(time))
    })
    .await?;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut restoring = Vec::new();
    let mut fences = Vec::new();
    for item in batch {
        // A backup holds only lucid:* keys; anything else is not ours to write.
        if !item.key.starts_with("lucid:") {
            summary.skip(Skip::Foreign);
            continue;
        }
        if settings
            .not_restorable
            .iter()
            .any(|p| glob_match(p, &item.key))
        {
            summary.skip(Skip::NotRestorable);
            continue;
        }
        if item.expires_at_ms.is_some_and(|at| at <= now_ms) {
            summary.skip(Skip::Expired);
            continue;
        }
        if item.key.starts_with(FENCE_PREFIX) {
            fences.push(item);
            continue;
        }
        pipe.cmd("RESTORE")
            .arg(&item.key)
            .arg(item.expires_at_ms.unwrap_or(0))
            .arg(item.payload)
            .arg("ABSTTL")
            .arg("REPLACE");
        restoring.push(item.key);
    }
    if !restoring.is_empty() {
        // One result per key: a bad payload fails that key, not the batch.
        let results: Vec<redis::RedisResult<redis::Value>> =
            RedisError::within(deadline, async { Ok(pipe.query_async(conn).await?) }).await?;
        for (key, result) in restoring.into_iter().zip(results) {
            match result {
                Ok(_) => summary.written += 1,
                Err(e) => refused(summary, key, &e.to_string()),
            }
        }
    }
    for fence in fences {
        let scratch = format!("{}:restoring:{:016x}", fence.key, rand::random::<u64>());
        let raised = RedisError::within(deadline, async {
            Ok(RAISE_FENCE
                .key(&fence.key)
                .key(&scratch)
                .arg(settings.fence_margin)
                .arg(fence.payload)
                .invoke_async::<u64>(conn)
                .await?)
        })
        .await;
        match raised {
            Ok(_) => {
                summary.written += 1;
                summary.details.fences_raised += 1;
            }
            Err(e @ RedisError::Server { .. }) => refused(summary, fence.key, &e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Typed helpers

impl RedisHandle {
    /// Streams every `lucid:*` key; see [`Export`].
    pub async fn export(&self) -> Result<Feed<ExportedKey, RedisError>, RedisError> {
        self.send(Export { pattern: None }).await
    }

    /// What an import into `target` would find there; see [`InspectImportTarget`].
    pub async fn import_target(
        &self,
        target: ImportTarget,
    ) -> Result<(TargetState, u64), RedisError> {
        self.send(InspectImportTarget { target }).await
    }

    /// Empties database `db` (`FLUSHDB`): a drill's scratch database. The live database
    /// (the one `redis.url` selects) is `invalid`: this never reaches the live keys.
    pub async fn flush_scratch(&self, db: u32) -> Result<(), RedisError> {
        self.send(FlushScratch { db }).await
    }

    /// How each of `keys` (as the backup holds them) compares with the key of the same name
    /// in scratch database `db`, in order: the `DUMP` payloads, or where they differ, the
    /// values (a set's or hash's payload depends on its table's layout). Writes only a
    /// transient key outside `lucid:*` in `db`; the live database is `invalid`.
    pub async fn compare_keys(
        &self,
        db: u32,
        keys: Vec<ExportedKey>,
    ) -> Result<Vec<KeyComparison>, RedisError> {
        self.send(CompareKeys { db, keys }).await
    }

    /// Restores keys from `source` into the database `options` names; see [`Import`]. The
    /// import runs on the actor's arbiter; the reply comes when the source ends, so the call
    /// waits as long as the source takes (each step still has the call deadline, and the
    /// source its idle timeout). An `Err` from the source fails the import.
    pub async fn import<S, E>(
        &self,
        options: ImportOptions,
        source: S,
    ) -> Result<ImportSummary, RedisError>
    where
        S: Stream<Item = Result<ExportedKey, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let source = transfer::source(source);
        // Not `send`: its deadline is for short requests; an import takes as long as its
        // source.
        self.addr()
            .send(Import { options, source })
            .await
            .map_err(|e| crate::supervisor::not_delivered(crate::Backend::Redis, e))?
    }

    /// A bounded feed of the size imports read in, for feeding [`RedisHandle::import`] by
    /// hand: send keys through the [`Feeder`], end it with [`Feeder::fail`] to fail the import.
    pub fn import_feed() -> (Feeder<ExportedKey, String>, Feed<ExportedKey, String>) {
        feed(CHANNEL_CAPACITY, IMPORT_FEED_IDLE)
    }

    /// Waits for every item of an export (for tests and small datasets; backups stream).
    pub async fn export_all(&self) -> Result<Vec<ExportedKey>, RedisError> {
        self.export().await?.collect().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        for (name, kind) in [
            ("string", KeyKind::String),
            ("hash", KeyKind::Hash),
            ("list", KeyKind::List),
            ("set", KeyKind::Set),
            ("zset", KeyKind::Zset),
            ("stream", KeyKind::Stream),
            ("ReJSON-RL", KeyKind::Other("ReJSON-RL".into())),
        ] {
            assert_eq!(KeyKind::from_type(name), kind);
            assert_eq!(kind.as_str(), name);
        }
        // The type bytes `DUMP` writes on Redis 7 (string, listpack hash, quicklist list,
        // intset, listpack zset, stream listpacks 3).
        for (byte, kind) in [
            (0, KeyKind::String),
            (16, KeyKind::Hash),
            (18, KeyKind::List),
            (11, KeyKind::Set),
            (2, KeyKind::Set),
            (17, KeyKind::Zset),
            (21, KeyKind::Stream),
        ] {
            assert_eq!(KeyKind::from_rdb_type(byte), kind, "{byte}");
        }
        assert_eq!(KeyKind::from_rdb_type(7).as_str(), "rdb-type-7");
    }

    #[test]
    fn time_reply() {
        let reply = redis::Value::Array(vec![
            redis::Value::BulkString(b"1700000000".to_vec()),
            redis::Value::BulkString(b"123456".to_vec()),
        ]);
        assert_eq!(server_ms(Some(reply)).expect("parse"), 1_700_000_000_123);
        assert!(server_ms(None).is_err());
    }
}
