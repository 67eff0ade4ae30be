//! Stats and topology: `hello` (standalone, replica set with its primary and members, or
//! mongos), `dbStats`, and `collStats` for each Lucid collection.

use std::sync::Arc;
use std::time::Duration;

use actix::Message;
use mongodb::Client;
use mongodb::bson::{Bson, Document, doc};
use serde::Serialize;

use super::collections::Collection;
use super::{Conn, MongoError, MongoOp, Settings, Shared, ok_of, sealed};
use crate::supervisor::DeadlineError;
use crate::supervisor::link::OpFuture;

/// What kind of deployment the driver is talking to, from `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Topology {
    Standalone,
    ReplicaSet {
        set_name: String,
        /// The member the server names as primary, if it knows one.
        primary: Option<String>,
        /// The member that answered.
        me: Option<String>,
        /// Data-bearing members (`hosts`).
        members: Vec<String>,
        /// Whether the member that answered takes writes.
        writable: bool,
    },
    Mongos,
}

impl Topology {
    /// Reads a `hello` (or legacy `isMaster`) reply.
    pub fn from_hello(reply: &Document) -> Topology {
        if reply.get_str("msg") == Ok("isdbgrid") {
            return Topology::Mongos;
        }
        let Ok(set_name) = reply.get_str("setName") else {
            return Topology::Standalone;
        };
        let strings = |k: &str| -> Vec<String> {
            reply
                .get_array(k)
                .map(|a| {
                    a.iter()
                        .filter_map(|b| b.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Topology::ReplicaSet {
            set_name: set_name.to_owned(),
            primary: reply.get_str("primary").ok().map(str::to_owned),
            me: reply.get_str("me").ok().map(str::to_owned),
            members: strings("hosts"),
            writable: reply
                .get_bool("isWritablePrimary")
                .or_else(|_| reply.get_bool("ismaster"))
                .unwrap_or(false),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Topology::Standalone => "standalone",
            Topology::ReplicaSet { .. } => "replica_set",
            Topology::Mongos => "mongos",
        }
    }
}

/// The parts of `hello` lucid-db reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hello {
    pub topology: Topology,
    pub max_bson_object_size: i64,
    pub max_wire_version: i64,
}

fn int(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}

fn uint(d: &Document, k: &str) -> u64 {
    int(d.get(k))
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// `hello` on the admin database.
pub(crate) async fn hello(client: &Client, deadline: Duration) -> Result<Hello, MongoError> {
    let reply = MongoError::within(deadline, async {
        Ok(client
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await?)
    })
    .await?;
    Ok(Hello {
        topology: Topology::from_hello(&reply),
        max_bson_object_size: int(reply.get("maxBsonObjectSize")).unwrap_or(16 * 1024 * 1024),
        max_wire_version: int(reply.get("maxWireVersion")).unwrap_or(0),
    })
}

/// `dbStats`, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DatabaseStats {
    pub collections: u64,
    pub objects: u64,
    pub data_size: u64,
    pub storage_size: u64,
    pub indexes: u64,
    pub index_size: u64,
}

impl DatabaseStats {
    pub fn from_reply(d: &Document) -> Self {
        DatabaseStats {
            collections: uint(d, "collections"),
            objects: uint(d, "objects"),
            data_size: uint(d, "dataSize"),
            storage_size: uint(d, "storageSize"),
            indexes: uint(d, "indexes"),
            index_size: uint(d, "indexSize"),
        }
    }
}

/// `collStats` for one collection, in bytes; `exists: false` and zeros for a collection the
/// server does not have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CollectionStats {
    pub collection: Collection,
    pub exists: bool,
    pub count: u64,
    pub size: u64,
    pub storage_size: u64,
    pub total_index_size: u64,
    /// `None` where the server does not say (nx-27017).
    pub indexes: Option<u64>,
}

impl CollectionStats {
    pub fn from_reply(collection: Collection, d: &Document) -> Self {
        CollectionStats {
            collection,
            exists: true,
            count: uint(d, "count"),
            size: uint(d, "size"),
            storage_size: uint(d, "storageSize"),
            total_index_size: uint(d, "totalIndexSize"),
            indexes: int(d.get("nindexes")).and_then(|n| u64::try_from(n).ok()),
        }
    }

    fn missing(collection: Collection) -> Self {
        CollectionStats {
            collection,
            exists: false,
            count: 0,
            size: 0,
            storage_size: 0,
            total_index_size: 0,
            indexes: None,
        }
    }
}

/// Everything at once: topology, database and per-collection stats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MongoStats {
    pub database: String,
    pub hello: Hello,
    pub db: DatabaseStats,
    pub collections: Vec<CollectionStats>,
}

/// Topology, `dbStats` and `collStats` of every Lucid collection (each command within the
/// call deadline).
pub(crate) async fn collect(conn: &Conn, settings: &Settings) -> Result<MongoStats, MongoError> {
    let deadline = settings.deadline;
    let hello = hello(&conn.client, deadline).await?;
    let db = MongoError::within(deadline, async {
        Ok(DatabaseStats::from_reply(
            &conn.db.run_command(doc! {"dbStats": 1}).await?,
        ))
    })
    .await?;
    let names = MongoError::within(deadline, async {
        Ok(conn.db.list_collection_names().await?)
    })
    .await?;
    let mut collections = Vec::with_capacity(Collection::ALL.len());
    for c in Collection::ALL {
        if !names.iter().any(|n| n == c.name()) {
            collections.push(CollectionStats::missing(c));
            continue;
        }
        let reply = MongoError::within(deadline, async {
            Ok(conn.db.run_command(doc! {"collStats": c.name()}).await?)
        })
        .await?;
        collections.push(if ok_of(&reply) {
            CollectionStats::from_reply(c, &reply)
        } else {
            CollectionStats::missing(c)
        });
    }
    Ok(MongoStats {
        database: settings.database.clone(),
        hello,
        db,
        collections,
    })
}

/// Topology, `dbStats` and `collStats` of every Lucid collection.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<MongoStats, MongoError>")]
pub struct GetStats;

impl sealed::Sealed for GetStats {}

impl MongoOp for GetStats {
    type Output = MongoStats;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let settings = shared.settings.clone();
        Ok(async move { collect(&conn, &settings).await })
    }
}

/// `hello`: the topology as the server reports it now.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Hello, MongoError>")]
pub struct GetHello;

impl sealed::Sealed for GetHello {}

impl MongoOp for GetHello {
    type Output = Hello;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let deadline = shared.settings.deadline;
        Ok(async move { hello(&conn.client, deadline).await })
    }
}

/// The server's version, from `buildInfo` (`unknown` where it does not say): a backup records
/// it beside the collections.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<String, MongoError>")]
pub struct GetServerVersion;

impl sealed::Sealed for GetServerVersion {}

impl MongoOp for GetServerVersion {
    type Output = String;

    fn start(self, conn: Conn, shared: &Arc<Shared>) -> Result<impl OpFuture<Self>, MongoError> {
        let deadline = shared.settings.deadline;
        Ok(async move {
            let reply = MongoError::within(deadline, async {
                Ok(conn
                    .client
                    .database("admin")
                    .run_command(doc! {"buildInfo": 1})
                    .await?)
            })
            .await?;
            Ok(reply.get_str("version").unwrap_or("unknown").to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_from_hello_replies() {
        // MongoDB manual, `hello` output of a replica-set member.
        let rs = doc! {
            "isWritablePrimary": true, "topologyVersion": {"counter": 6_i64},
            "hosts": ["m1.example.net:27017", "m2.example.net:27017", "m3.example.net:27017"],
            "setName": "rs0", "setVersion": 9, "secondary": false,
            "primary": "m1.example.net:27017", "me": "m1.example.net:27017",
            "maxBsonObjectSize": 16777216, "maxWireVersion": 17, "ok": 1
        };
        assert_eq!(
            Topology::from_hello(&rs),
            Topology::ReplicaSet {
                set_name: "rs0".into(),
                primary: Some("m1.example.net:27017".into()),
                me: Some("m1.example.net:27017".into()),
                members: vec![
                    "m1.example.net:27017".into(),
                    "m2.example.net:27017".into(),
                    "m3.example.net:27017".into()
                ],
                writable: true,
            }
        );
        let mongos = doc! {"isWritablePrimary": true, "msg": "isdbgrid", "ok": 1.0};
        assert_eq!(Topology::from_hello(&mongos), Topology::Mongos);
        let standalone = doc! {"isWritablePrimary": true, "maxWireVersion": 25, "ok": 1};
        assert_eq!(Topology::from_hello(&standalone), Topology::Standalone);
        // a 4.4 secondary answering the legacy isMaster
        let legacy = doc! {"ismaster": false, "secondary": true, "setName": "rs0", "ok": 1};
        assert!(matches!(
            Topology::from_hello(&legacy),
            Topology::ReplicaSet {
                writable: false,
                primary: None,
                ..
            }
        ));
    }

    #[test]
    fn stats_read_any_number_type() {
        let d = doc! {"collections": 15, "objects": 10_i64, "dataSize": 1024.0, "indexes": 68, "indexSize": 4096_i64};
        let s = DatabaseStats::from_reply(&d);
        assert_eq!(
            (
                s.collections,
                s.objects,
                s.data_size,
                s.indexes,
                s.index_size
            ),
            (15, 10, 1024, 68, 4096)
        );
        let c = CollectionStats::from_reply(
            Collection::Users,
            &doc! {"count": 3, "size": 300, "nindexes": 7},
        );
        assert_eq!((c.count, c.size, c.indexes), (3, 300, Some(7)));
    }
}
