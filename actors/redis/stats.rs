//! Stats from `INFO`: what an operator checks first (memory, clients, keyspace, persistence),
//! plus the probe latency the actor measures. Not a metrics exporter: the standard
//! redis_exporter covers the rest.

use std::collections::BTreeMap;
use std::future::Future;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use super::sealed::Sealed;
use super::{Conn, RedisError, RedisHandle, RedisOp, Shared};
use crate::supervisor::link::OpFuture;

/// Asks Redis for `INFO` and answers the parsed [`RedisStats`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<RedisStats, RedisError>")]
pub struct GetStats;

/// Keys in one logical database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyspace {
    pub keys: u64,
    pub expires: u64,
}

/// The parsed answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisStats {
    pub version: String,
    pub uptime_seconds: u64,
    pub used_memory_bytes: u64,
    pub maxmemory_bytes: u64,
    pub connected_clients: u64,
    /// Per database (`db0`, …).
    pub keyspace: BTreeMap<String, Keyspace>,
    /// Unix time of the last successful RDB save.
    pub rdb_last_save_time: u64,
    /// `ok` or `err`.
    pub rdb_last_bgsave_status: String,
    pub aof_enabled: bool,
    /// `ok` or `err`; empty when AOF is off.
    pub aof_last_write_status: String,
    /// The last probe's round trip, in milliseconds (from the health registry's view).
    pub probe_latency_ms: Option<f64>,
}

/// Parses `INFO` text (`key:value` lines in `# Section` blocks).
pub fn parse_info(text: &str) -> RedisStats {
    let mut s = RedisStats::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim_end_matches('\r').split_once(':') else {
            continue;
        };
        let num = || value.parse::<u64>().unwrap_or_default();
        match key {
            "redis_version" => s.version = value.to_owned(),
            "uptime_in_seconds" => s.uptime_seconds = num(),
            "used_memory" => s.used_memory_bytes = num(),
            "maxmemory" => s.maxmemory_bytes = num(),
            "connected_clients" => s.connected_clients = num(),
            "rdb_last_save_time" => s.rdb_last_save_time = num(),
            "rdb_last_bgsave_status" => s.rdb_last_bgsave_status = value.to_owned(),
            "aof_enabled" => s.aof_enabled = value == "1",
            "aof_last_write_status" => s.aof_last_write_status = value.to_owned(),
            db if db.starts_with("db") && db[2..].chars().all(|c| c.is_ascii_digit()) => {
                let mut ks = Keyspace::default();
                for part in value.split(',') {
                    match part.split_once('=') {
                        Some(("keys", n)) => ks.keys = n.parse().unwrap_or_default(),
                        Some(("expires", n)) => ks.expires = n.parse().unwrap_or_default(),
                        _ => {}
                    }
                }
                s.keyspace.insert(db.to_owned(), ks);
            }
            _ => {}
        }
    }
    s
}

impl Sealed for GetStats {}

impl RedisOp for GetStats {
    type Output = RedisStats;

    fn start(self, mut conn: Conn, shared: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        let latency = shared.front.health().latency_ms();
        Ok(async move {
            let text: String = redis::cmd("INFO").query_async(&mut conn).await?;
            let mut stats = parse_info(&text);
            stats.probe_latency_ms = latency;
            Ok(stats)
        })
    }
}

impl RedisHandle {
    pub fn stats(&self) -> impl Future<Output = Result<RedisStats, RedisError>> + '_ {
        self.call(GetStats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_that_matter() {
        let info = "# Server\r\nredis_version:7.0.15\r\nuptime_in_seconds:42\r\n# Clients\r\nconnected_clients:3\r\n\
                    # Memory\r\nused_memory:1048576\r\nmaxmemory:0\r\n# Persistence\r\nrdb_last_save_time:1700000000\r\n\
                    rdb_last_bgsave_status:ok\r\naof_enabled:1\r\naof_last_write_status:ok\r\n\
                    # Keyspace\r\ndb0:keys=12,expires=3,avg_ttl=1000\r\ndb2:keys=1,expires=0,avg_ttl=0\r\n";
        let s = parse_info(info);
        assert_eq!(s.version, "7.0.15");
        assert_eq!(s.uptime_seconds, 42);
        assert_eq!(s.connected_clients, 3);
        assert_eq!(s.used_memory_bytes, 1_048_576);
        assert_eq!(s.rdb_last_save_time, 1_700_000_000);
        assert_eq!(s.rdb_last_bgsave_status, "ok");
        assert!(s.aof_enabled);
        assert_eq!(
            s.keyspace["db0"],
            Keyspace {
                keys: 12,
                expires: 3
            }
        );
        assert_eq!(s.keyspace["db2"].keys, 1);
    }
}
