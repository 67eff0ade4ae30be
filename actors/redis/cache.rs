//! Cache: get / set with TTL / delete / exists. Values are JSON (serde_json) — one
//! serialisation, chosen once, readable in `redis-cli` — and the typed helpers on
//! [`RedisHandle`] do the encoding; the messages carry the encoded bytes.
//! [`RedisHandle::cache_get_or_compute`] runs the computation once per key at a time in this
//! process (single flight): concurrent callers for the same key wait for the first one's result.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use super::sealed::Sealed;
use super::{Conn, Key, RedisError, RedisHandle, RedisOp, Settings, Shared, millis, query};
use crate::supervisor::link::OpFuture;

// ---------------------------------------------------------------------------------------------
// Messages

/// The encoded value at `key`; `None` when absent or expired.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<Vec<u8>>, RedisError>")]
pub struct CacheGet {
    pub key: Key,
}

/// Stores an encoded value with a TTL (`None`: `redis.cache_ttl`; at most `redis.cache_max_ttl`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), RedisError>")]
pub struct CacheSet {
    pub key: Key,
    pub value: Vec<u8>,
    pub ttl: Option<Duration>,
}

/// Deletes `key`; answers whether it existed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<bool, RedisError>")]
pub struct CacheDelete {
    pub key: Key,
}

/// Whether `key` exists.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<bool, RedisError>")]
pub struct CacheExists {
    pub key: Key,
}

// ---------------------------------------------------------------------------------------------
// Commands (pure: built and checked before anything is sent)

/// `NAME key`: the commands that name the key alone.
fn on_key(name: &str, key: &Key) -> redis::Cmd {
    let mut cmd = redis::cmd(name);
    cmd.arg(key);
    cmd
}

impl CacheGet {
    fn command(&self) -> redis::Cmd {
        on_key("GET", &self.key)
    }
}

impl CacheSet {
    /// `PSETEX key ttl_ms value`, the TTL resolved (`None`: `redis.cache_ttl`); refused when
    /// the TTL is above `redis.cache_max_ttl` or the value above `redis.max_value_bytes`.
    fn command(self, settings: &Settings) -> Result<redis::Cmd, RedisError> {
        let ttl = self.ttl.unwrap_or(settings.cache_ttl);
        Settings::check_ttl("ttl", ttl, Some(settings.cache_max_ttl))?;
        settings.check_value_size(self.value.len())?;
        let mut cmd = redis::cmd("PSETEX");
        cmd.arg(&self.key).arg(millis(ttl)).arg(self.value);
        Ok(cmd)
    }
}

impl CacheDelete {
    fn command(&self) -> redis::Cmd {
        on_key("DEL", &self.key)
    }
}

impl CacheExists {
    fn command(&self) -> redis::Cmd {
        on_key("EXISTS", &self.key)
    }
}

// ---------------------------------------------------------------------------------------------
// Operations

impl Sealed for CacheGet {}
impl Sealed for CacheSet {}
impl Sealed for CacheDelete {}
impl Sealed for CacheExists {}

impl RedisOp for CacheGet {
    type Output = Option<Vec<u8>>;

    fn start(self, conn: Conn, _: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        Ok(query(self.command(), conn))
    }
}

impl RedisOp for CacheSet {
    type Output = ();
    const WRITES: bool = true;

    fn start(self, conn: Conn, shared: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        Ok(query(self.command(shared.settings())?, conn))
    }
}

impl RedisOp for CacheDelete {
    type Output = bool;
    const WRITES: bool = true;

    fn start(self, conn: Conn, _: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        let deleted = query::<u64>(self.command(), conn);
        Ok(async move { Ok(deleted.await? > 0) })
    }
}

impl RedisOp for CacheExists {
    type Output = bool;

    fn start(self, conn: Conn, _: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        Ok(query(self.command(), conn))
    }
}

// ---------------------------------------------------------------------------------------------
// Typed helpers

/// The flights in progress, by key: each waits on one cell that its leader fills.
#[derive(Clone, Default)]
pub(crate) struct Flights(Arc<Mutex<HashMap<Key, Flight>>>);

/// One computation in progress: its leader fills the cell, the others wait on it.
type Flight = Arc<OnceCell<Vec<u8>>>;

impl Flights {
    fn join(&self, key: &Key) -> Flight {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(key.clone()).or_default().clone()
    }

    /// Removes the flight once it has landed, so the next miss computes afresh.
    fn land(&self, key: &Key, cell: &Flight) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.get(key).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            map.remove(key);
        }
    }
}

/// Removes a flight from the table when dropped.
struct Landing<'a> {
    flights: &'a Flights,
    key: &'a Key,
    cell: Flight,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.flights.land(self.key, &self.cell);
    }
}

fn decode<T: DeserializeOwned>(key: &Key, bytes: &[u8]) -> Result<T, RedisError> {
    serde_json::from_slice(bytes).map_err(|e| RedisError::Codec {
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(key: &Key, value: &T) -> Result<Vec<u8>, RedisError> {
    serde_json::to_vec(value).map_err(|e| RedisError::Codec {
        key: key.to_string(),
        message: e.to_string(),
    })
}

impl RedisHandle {
    /// The value at `key`, decoded; `None` when absent or expired.
    pub async fn cache_get<T: DeserializeOwned>(&self, key: &Key) -> Result<Option<T>, RedisError> {
        match self.call(CacheGet { key: key.clone() }).await? {
            Some(bytes) => decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Stores `value` at `key` for `ttl` (`None`: `redis.cache_ttl`).
    pub async fn cache_set<T: Serialize>(
        &self,
        key: &Key,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), RedisError> {
        let value = encode(key, value)?;
        self.call(CacheSet {
            key: key.clone(),
            value,
            ttl,
        })
        .await
    }

    pub fn cache_delete(&self, key: &Key) -> impl Future<Output = Result<bool, RedisError>> + '_ {
        self.call(CacheDelete { key: key.clone() })
    }

    pub fn cache_exists(&self, key: &Key) -> impl Future<Output = Result<bool, RedisError>> + '_ {
        self.call(CacheExists { key: key.clone() })
    }

    /// Cache-aside with single flight: the cached value, or `compute()` stored for `ttl`. While
    /// one caller computes a key, other callers of this process wait for its result instead of
    /// computing again (if that computation fails, the next waiter computes in its turn: an
    /// error is not shared). Redis being down makes this a plain call to `compute` (the cache is an
    /// optimisation); a value that no longer decodes is treated as a miss and overwritten.
    pub async fn cache_get_or_compute<T, E, F, Fut>(
        &self,
        key: &Key,
        ttl: Option<Duration>,
        compute: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<RedisError>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Ok(Some(value)) = self.cache_get(key).await {
            return Ok(value);
        }
        let cell = self.shared.flights.join(key);
        // Lands the flight however this call ends, also when the caller drops it half-way.
        let _landing = Landing {
            flights: &self.shared.flights,
            key,
            cell: cell.clone(),
        };
        let result = cell
            .get_or_try_init(|| async {
                // A flight that landed just now may have filled the cache.
                if let Ok(Some(bytes)) = self.call(CacheGet { key: key.clone() }).await
                    && decode::<T>(key, &bytes).is_ok()
                {
                    return Ok(bytes);
                }
                let value = compute().await?;
                let bytes = encode(key, &value)?;
                if let Err(e) = self
                    .call(CacheSet {
                        key: key.clone(),
                        value: bytes.clone(),
                        ttl,
                    })
                    .await
                {
                    tracing::debug!(key = %key, code = e.code(), "computed value not cached");
                }
                Ok::<_, E>(bytes)
            })
            .await
            .map(|bytes| decode::<T>(key, bytes));
        result?.map_err(E::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::tests::{args, settings};

    fn key() -> Key {
        Key::new("cache", "profile", "42").expect("key")
    }

    #[test]
    fn each_command_names_the_key_as_built() {
        assert_eq!(
            args(&CacheGet { key: key() }.command()),
            ["GET", "lucid:cache:profile:42"]
        );
        assert_eq!(
            args(&CacheDelete { key: key() }.command()),
            ["DEL", "lucid:cache:profile:42"]
        );
        assert_eq!(
            args(&CacheExists { key: key() }.command()),
            ["EXISTS", "lucid:cache:profile:42"]
        );
    }

    #[test]
    fn set_resolves_the_ttl_in_milliseconds_and_checks_ttl_and_size() {
        let s = settings();
        let set = |ttl: Option<Duration>, value: &[u8]| {
            CacheSet {
                key: key(),
                value: value.to_vec(),
                ttl,
            }
            .command(&s)
        };
        // No TTL given: redis.cache_ttl (5 min by default).
        let cmd = set(None, b"{}").expect("default ttl");
        assert_eq!(
            args(&cmd),
            ["PSETEX", "lucid:cache:profile:42", "300000", "{}"]
        );
        // A caller's TTL, to the millisecond; below a millisecond is refused, not rounded up.
        let cmd = set(Some(Duration::from_millis(1500)), b"1").expect("1.5 s");
        assert_eq!(args(&cmd)[2], "1500");
        assert!(matches!(
            set(Some(Duration::from_micros(999)), b"1"),
            Err(RedisError::Invalid { field: "ttl", .. })
        ));
        // Above redis.cache_max_ttl (1 h), or a value above redis.max_value_bytes: refused.
        assert!(matches!(
            set(Some(s.cache_max_ttl + Duration::from_millis(1)), b"1"),
            Err(RedisError::Invalid { field: "ttl", .. })
        ));
        assert!(set(Some(s.cache_max_ttl), b"1").is_ok());
        let big = vec![b'x'; s.max_value_bytes + 1];
        assert!(matches!(
            set(None, &big),
            Err(RedisError::Invalid { field: "value", .. })
        ));
        assert!(set(None, &big[1..]).is_ok());
    }
}
