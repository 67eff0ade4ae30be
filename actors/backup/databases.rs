//! MongoDB, Redis and Elasticsearch in a backup run: reached only through their handles'
//! messages (stats, export), written through the pipeline in the [`formats`](super::formats)
//! BACKUP.md fixes.
//!
//! Each store goes in two steps. **Probe** (before anything is written, so the estimate can
//! count it): wait for the backend to be up (a CLI's actors have only just started connecting;
//! at most `supervisor.call_deadline`), read what the manifest records about the source — the
//! server's version, and per store what a drill compares a restore with — and the size the
//! estimate counts. **Export**: one artifact after another, each document or key counted as it
//! passes, so the source facts say what the artifact holds (a count the server gave when the
//! export started is recorded beside it: writes during the export may or may not be in it).
//!
//! A store that fails — its backend down at the probe, an export that dies — is recorded
//! `failed` with the store error's code and a message naming the collection or index; the
//! artifacts it completed before stay (each is whole), the run goes on with the next store.
//! Within a store the first failure ends it: a backend that went away fails every later
//! export too, each after a timeout.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::Utc;
use futures_util::{Stream, StreamExt, stream};
use serde_json::{Map, Value, json};

use super::formats::{bulk, chunked, mongodump, resp};
use super::manifest::{ArtifactRecord, Outcome, StoreRecord};
use super::pipeline::{Codec, PipelineError};
use super::run::{Job, Meter, write};
use super::select::Indices;
use super::storage::Storage;
use super::{BackupError, Shared};
use crate::Backend;
use crate::mongo::{Collection, GetServerVersion, MongoHandle};
use crate::redis::RedisHandle;
use crate::search::{GetServerInfo, SearchHandle};

/// Why a database store failed: its error's code, and a message.
pub(super) type Failure = (&'static str, String);

/// What a probe found: the facts for the manifest, the bytes the estimate counts, and what
/// the export takes (for Elasticsearch, the concrete indices).
pub(super) struct Probe<T> {
    pub facts: Map<String, Value>,
    pub estimate: u64,
    pub take: T,
}

/// Waits until `backend` is up, at most the call deadline; a backend that does not come up is
/// `unavailable`, with what the registry knows of why.
pub(super) async fn wait_up(shared: &Shared, backend: Backend) -> Result<(), Failure> {
    let Some(registry) = &shared.stores.registry else {
        return Ok(());
    };
    match registry
        .wait_up(backend, shared.config.supervisor.call_deadline)
        .await
    {
        Some(s) if s.is_up() => Ok(()),
        status => {
            let why = status
                .and_then(|s| {
                    s.last_error
                        .map(|e| format!("{} ({})", e.message, e.code))
                        .or(s.reason)
                })
                .unwrap_or_else(|| "not connected".to_owned());
            Err((
                "unavailable",
                format!("{backend} is not reachable: {}", crate::redact::text(&why)),
            ))
        }
    }
}

fn failed<E: StoreErrorLike>(what: &str, e: E) -> Failure {
    (
        e.code(),
        format!("{what}: {}", crate::redact::text(&e.to_string())),
    )
}

/// The three stores' error types, as far as a backup needs them.
pub(super) trait StoreErrorLike: std::fmt::Display {
    fn code(&self) -> &'static str;
    /// The reason an import's source (a backup artifact being read) failed, when that is
    /// what this error says: the artifact's fault, not the store's.
    fn import_source(&self) -> Option<&str>;
}

/// The three database stores' errors have the same shape where a backup looks.
macro_rules! store_error_like {
    ($($error:ident),+) => {$(
        impl StoreErrorLike for $error {
            fn code(&self) -> &'static str {
                $error::code(self)
            }

            fn import_source(&self) -> Option<&str> {
                match self {
                    $error::ImportSource { reason, .. } => Some(reason),
                    _ => None,
                }
            }
        }
    )+};
}

use crate::mongo::MongoError;
use crate::redis::RedisError;
use crate::search::SearchError;
store_error_like!(MongoError, RedisError, SearchError);

/// A store record for `store` that failed before its export.
pub(super) fn failed_record(failure: &Failure, facts: Map<String, Value>) -> StoreRecord {
    StoreRecord {
        outcome: Outcome::Failed {
            code: failure.0.to_owned(),
            message: failure.1.clone(),
        },
        started: Some(Utc::now()),
        ended: Some(Utc::now()),
        source: facts,
        artifacts: Vec::new(),
    }
}

/// Counts a feed's items as they pass and keeps the code of the error that ends it: the
/// store's facts and, when it fails, its failure's code.
#[derive(Default)]
struct Tally {
    items: Cell<u64>,
    code: Cell<Option<&'static str>>,
}

impl Tally {
    /// `feed` as the pipeline's source (errors as text), counted; `each` sees every item.
    fn count<'a, T, E>(
        &'a self,
        feed: impl Stream<Item = Result<T, E>> + 'a,
        mut each: impl FnMut(&T) + 'a,
    ) -> impl Stream<Item = Result<T, String>> + 'a
    where
        E: StoreErrorLike + 'a,
        T: 'a,
    {
        feed.map(move |item| match item {
            Ok(item) => {
                self.items.set(self.items.get() + 1);
                each(&item);
                Ok(item)
            }
            Err(e) => {
                if self.code.get().is_none() {
                    self.code.set(Some(e.code()));
                }
                Err(e.to_string())
            }
        })
    }
}

/// How an artifact's write ended: written, or the store's failure (its feed's error). A
/// failure that ends the run (storage, encoding) is the `Err`.
enum Written {
    Done(ArtifactRecord),
    Failed(Failure),
}

/// Where a store's artifacts go: the run, its storage and codec, the progress.
#[derive(Clone, Copy)]
struct Sink<'a> {
    job: &'a Job,
    storage: &'a Storage,
    codec: &'a Codec,
    meter: &'a Meter,
}

impl Sink<'_> {
    /// Writes artifact `stem` (the codec's suffix added) from a store's `feed`, each item
    /// encoded with `encode` and seen by `each`; answers how it ended and how many items
    /// passed. A failure of the feed is the store's, named with `what` and the code its error
    /// carried.
    async fn feed<T, E>(
        &self,
        stem: &str,
        logical: &str,
        what: &str,
        feed: impl Stream<Item = Result<T, E>>,
        encode: fn(&T, &mut Vec<u8>),
        each: impl FnMut(&T),
    ) -> Result<(Written, u64), BackupError>
    where
        E: StoreErrorLike,
    {
        let tally = Tally::default();
        let chunks = chunked(tally.count(feed, each), encode);
        let name = format!("{stem}{}", self.codec.suffix());
        let written = match write(
            self.job,
            self.storage,
            &name,
            logical,
            self.codec,
            chunks,
            self.meter,
        )
        .await
        {
            Ok(r) => Written::Done(r),
            Err(BackupError::Pipeline(PipelineError::Source { reason, .. })) => Written::Failed((
                tally.code.get().unwrap_or("source_failed"),
                format!(
                    "{what}: the export failed: {}",
                    crate::redact::text(&reason)
                ),
            )),
            Err(e) => return Err(e),
        };
        Ok((written, tally.items.get()))
    }

    /// A small artifact of one piece (a metadata file), `stem` plus the codec's suffix.
    async fn small(
        &self,
        stem: &str,
        logical: &str,
        bytes: Vec<u8>,
    ) -> Result<ArtifactRecord, BackupError> {
        let name = format!("{stem}{}", self.codec.suffix());
        let source = stream::iter([Ok::<_, String>(Bytes::from(bytes))]);
        write(
            self.job,
            self.storage,
            &name,
            logical,
            self.codec,
            source,
            self.meter,
        )
        .await
    }

    /// One exported item of a store with a data and a metadata artifact (a MongoDB
    /// collection, an Elasticsearch index): `{stem}{data_ext}` from `feed`, then
    /// `{stem}{meta_ext}` holding `meta`. Answers both records and the items written, or the
    /// store's failure (the store stops there).
    #[allow(clippy::too_many_arguments)]
    async fn item<T, E>(
        &self,
        stem: &str,
        (data_ext, meta_ext): (&str, &str),
        logical: &str,
        what: &str,
        feed: impl Stream<Item = Result<T, E>>,
        encode: fn(&T, &mut Vec<u8>),
        meta: Vec<u8>,
    ) -> Result<Result<([ArtifactRecord; 2], u64), Failure>, BackupError>
    where
        E: StoreErrorLike,
    {
        let (written, items) = self
            .feed(
                &format!("{stem}{data_ext}"),
                logical,
                what,
                feed,
                encode,
                |_| {},
            )
            .await?;
        let data = match written {
            Written::Done(r) => r,
            Written::Failed(f) => return Ok(Err(f)),
        };
        let meta_record = self
            .small(
                &format!("{stem}{meta_ext}"),
                &format!("{logical}{}", meta_ext.trim_end_matches(".json")),
                meta,
            )
            .await?;
        Ok(Ok(([data, meta_record], items)))
    }
}

/// Ends a store's record: complete, or failed with `failure`.
fn record(
    started: chrono::DateTime<Utc>,
    failure: Option<Failure>,
    facts: Map<String, Value>,
    artifacts: Vec<ArtifactRecord>,
) -> StoreRecord {
    StoreRecord {
        outcome: match failure {
            None => Outcome::Complete,
            Some((code, message)) => Outcome::Failed {
                code: code.to_owned(),
                message,
            },
        },
        started: Some(started),
        ended: Some(Utc::now()),
        source: facts,
        artifacts,
    }
}

// ---------------------------------------------------------------------------------------------
// MongoDB

/// Server version, topology and database; the estimate is the selected collections' data
/// size (BSON as stored, what the `.bson` files hold).
pub(super) async fn probe_mongo(
    shared: &Shared,
    mongo: &MongoHandle,
    collections: &[Collection],
) -> Result<Probe<Vec<Collection>>, Failure> {
    wait_up(shared, Backend::Mongodb).await?;
    let stats = mongo
        .call(crate::mongo::GetStats)
        .await
        .map_err(|e| failed("stats", e))?;
    let version = mongo
        .call(GetServerVersion)
        .await
        .map_err(|e| failed("buildInfo", e))?;
    let estimate = stats
        .collections
        .iter()
        .filter(|c| collections.contains(&c.collection))
        .map(|c| c.size)
        .sum();
    let mut facts = Map::new();
    facts.insert("server_version".into(), version.into());
    facts.insert("topology".into(), stats.hello.topology.label().into());
    facts.insert("database".into(), stats.database.into());
    Ok(Probe {
        facts,
        estimate,
        take: collections.to_vec(),
    })
}

/// `mongodb/<db>/<coll>.bson` and `.metadata.json` per collection; see the module doc.
pub(super) async fn mongodb_store(
    job: &Job,
    mongo: &MongoHandle,
    probe: Probe<Vec<Collection>>,
    storage: &Storage,
    codec: &Codec,
    meter: &Meter,
) -> Result<StoreRecord, BackupError> {
    let sink = Sink {
        job,
        storage,
        codec,
        meter,
    };
    let started = Utc::now();
    let database = mongo.settings().database.clone();
    let mut facts = probe.facts;
    let mut per_collection = Map::new();
    let mut artifacts = Vec::new();
    let mut failure = None;
    for collection in probe.take {
        let name = collection.name();
        let what = format!("collection {name}");
        let (metadata, feed) = match mongo.export(collection).await {
            Ok(exported) => exported,
            Err(e) => {
                failure = Some(failed(&what, e));
                break;
            }
        };
        let stem = format!("mongodb/{database}/{name}");
        let meta = mongodump::CollectionMetadata::from_export(&metadata);
        let logical = format!("{database}.{name}");
        let exts = (".bson", ".metadata.json");
        let encode = mongodump::encode_document;
        let item = sink.item(&stem, exts, &logical, &what, feed, encode, meta.to_json());
        let (written, documents) = match item.await? {
            Ok(done) => done,
            Err(f) => {
                failure = Some(f);
                break;
            }
        };
        per_collection.insert(
            name.to_owned(),
            json!({
                "documents": documents,
                "server_count": metadata.documents,
                "indexes": meta.index_names(),
            }),
        );
        artifacts.extend(written);
    }
    facts.insert("collections".into(), Value::Object(per_collection));
    Ok(record(started, failure, facts, artifacts))
}

// ---------------------------------------------------------------------------------------------
// Redis

/// Server version, `used_memory` (also the estimate: DUMP payloads are smaller than what the
/// server holds) and the database exported.
pub(super) async fn probe_redis(
    shared: &Shared,
    redis: &RedisHandle,
) -> Result<Probe<()>, Failure> {
    wait_up(shared, Backend::Redis).await?;
    let stats = redis.stats().await.map_err(|e| failed("INFO", e))?;
    let mut facts = Map::new();
    facts.insert("server_version".into(), stats.version.into());
    facts.insert("used_memory".into(), stats.used_memory_bytes.into());
    facts.insert("db".into(), redis.database().into());
    Ok(Probe {
        facts,
        estimate: stats.used_memory_bytes,
        take: (),
    })
}

/// `redis/db<N>.resp`: every `lucid:*` key as a `RESTORE` command; see the module doc.
pub(super) async fn redis_store(
    job: &Job,
    redis: &RedisHandle,
    probe: Probe<()>,
    storage: &Storage,
    codec: &Codec,
    meter: &Meter,
) -> Result<StoreRecord, BackupError> {
    let sink = Sink {
        job,
        storage,
        codec,
        meter,
    };
    let started = Utc::now();
    let mut facts = probe.facts;
    let db = redis.database();
    let what = format!("db {db}");
    let feed = match redis.export().await {
        Ok(feed) => feed,
        Err(e) => return Ok(record(started, Some(failed(&what, e)), facts, Vec::new())),
    };
    let by_type = RefCell::new(BTreeMap::<String, u64>::new());
    let (written, keys) = sink
        .feed(
            &format!("redis/db{db}.resp"),
            &format!("db{db}"),
            &what,
            feed,
            resp::encode_restore,
            |key: &crate::redis::ExportedKey| {
                *by_type
                    .borrow_mut()
                    .entry(key.kind.as_str().to_owned())
                    .or_default() += 1;
            },
        )
        .await?;
    Ok(match written {
        Written::Done(r) => {
            facts.insert("keys".into(), keys.into());
            facts.insert("keys_by_type".into(), json!(by_type.into_inner()));
            record(started, None, facts, vec![r])
        }
        Written::Failed(f) => record(started, Some(f), facts, Vec::new()),
    })
}

// ---------------------------------------------------------------------------------------------
// Elasticsearch

/// Server version and distribution, and the concrete indices (every `lucid-*` one for
/// [`Indices::All`]); the estimate is their store size.
pub(super) async fn probe_search(
    shared: &Shared,
    search: &SearchHandle,
    indices: &Indices,
) -> Result<Probe<Vec<String>>, Failure> {
    wait_up(shared, Backend::Elasticsearch).await?;
    let info = search
        .call(GetServerInfo)
        .await
        .map_err(|e| failed("GET /", e))?;
    let stats = search
        .call(crate::search::GetStats)
        .await
        .map_err(|e| failed("stats", e))?;
    let take: Vec<String> = match indices {
        Indices::All => stats.indices.iter().map(|i| i.index.clone()).collect(),
        Indices::Only(list) => list.clone(),
    };
    let estimate = stats
        .indices
        .iter()
        .filter(|i| take.contains(&i.index))
        .map(|i| i.bytes)
        .sum();
    let mut facts = Map::new();
    facts.insert("server_version".into(), info.version.into());
    facts.insert("distribution".into(), info.distribution.into());
    Ok(Probe {
        facts,
        estimate,
        take,
    })
}

/// `elasticsearch/<index>.ndjson` and `.meta.json` per index; see the module doc.
pub(super) async fn search_store(
    job: &Job,
    search: &SearchHandle,
    probe: Probe<Vec<String>>,
    storage: &Storage,
    codec: &Codec,
    meter: &Meter,
) -> Result<StoreRecord, BackupError> {
    let sink = Sink {
        job,
        storage,
        codec,
        meter,
    };
    let started = Utc::now();
    let mut facts = probe.facts;
    let mut per_index = Map::new();
    let mut artifacts = Vec::new();
    let mut failure = None;
    for index in probe.take {
        let what = format!("index {index}");
        let (metadata, feed) = match search.export(&index).await {
            Ok(exported) => exported,
            Err(e) => {
                failure = Some(failed(&what, e));
                break;
            }
        };
        let stem = format!("elasticsearch/{index}");
        let body = bulk::IndexBody::from_metadata(&metadata);
        let exts = (".ndjson", ".meta.json");
        let encode = bulk::encode_document;
        let item = sink.item(&stem, exts, &index, &what, feed, encode, body.to_json());
        let (written, documents) = match item.await? {
            Ok(done) => done,
            Err(f) => {
                failure = Some(f);
                break;
            }
        };
        per_index.insert(
            index.clone(),
            json!({
                "documents": documents,
                "server_count": metadata.documents,
                "write_blocked": metadata.write_blocked,
            }),
        );
        artifacts.extend(written);
    }
    facts.insert("indices".into(), Value::Object(per_index));
    Ok(record(started, failure, facts, artifacts))
}
