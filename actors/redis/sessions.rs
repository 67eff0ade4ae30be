//! Sessions: `lucid:sessions:session:{id}` (a hash: user_id, data, created_ms) with a TTL
//! (`redis.session_ttl`, 15 min by default), and per user an index
//! `lucid:sessions:user:{user_id}` — a sorted set of session ids scored by their expiry in the
//! server's clock. Every change to a session and its index happens in one Lua script, and the
//! index prunes expired entries (and expires itself with its last session), so listing a
//! user's sessions never returns one that has expired.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use actix::prelude::*;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::sealed::Sealed;
use super::{Conn, Key, RedisError, RedisHandle, RedisOp, Settings, Shared, millis};
use crate::supervisor::link::OpFuture;

const SERVICE: &str = "sessions";

fn session_key(id: &str) -> Result<Key, RedisError> {
    Key::new(SERVICE, "session", id)
}

fn index_key(user_id: &str) -> Result<Key, RedisError> {
    Key::with_id_field(SERVICE, "user", user_id, "user_id")
}

/// The hash fields of a stored session: user_id, data, created_ms.
type StoredFields = (Option<String>, Option<String>, Option<u64>);

/// Key prefixes the scripts build from ids they read (single-node Redis only; Cluster URLs are refused).
const SESSION_PREFIX: &str = "lucid:sessions:session:";
const INDEX_PREFIX: &str = "lucid:sessions:user:";

// ---------------------------------------------------------------------------------------------
// Messages

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub data: serde_json::Value,
    /// Server time of creation, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Time left before it expires.
    pub ttl: Duration,
}

/// Creates a session for `user_id` (`ttl` `None`: `redis.session_ttl`). Refused when the id
/// is taken.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Session, RedisError>")]
pub struct CreateSession {
    pub id: String,
    pub user_id: String,
    pub data: serde_json::Value,
    pub ttl: Option<Duration>,
}

/// The session, or `None` when it does not exist or has expired.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<Session>, RedisError>")]
pub struct GetSession {
    pub id: String,
}

/// Sets the session's remaining lifetime to `ttl` (`None`: `redis.session_ttl`); answers the
/// new TTL, or `NotFound`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Duration, RedisError>")]
pub struct ExtendSession {
    pub id: String,
    pub ttl: Option<Duration>,
}

/// Deletes the session and its index entry; answers whether it existed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<bool, RedisError>")]
pub struct DeleteSession {
    pub id: String,
}

/// The ids of a user's live sessions, soonest to expire first.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<String>, RedisError>")]
pub struct ListSessions {
    pub user_id: String,
}

// ---------------------------------------------------------------------------------------------
// Scripts (server time: every client agrees on what has expired)

static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- KEYS: session, index. ARGV: id, user_id, data, ttl_ms
        if redis.call('EXISTS', KEYS[1]) == 1 then return false end
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local ttl = tonumber(ARGV[4])
        redis.call('HSET', KEYS[1], 'user_id', ARGV[2], 'data', ARGV[3], 'created_ms', now)
        redis.call('PEXPIRE', KEYS[1], ttl)
        redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
        local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
        redis.call('PEXPIREAT', KEYS[2], last[2])
        return now
        ",
    )
});

static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- KEYS: session. ARGV: id, ttl_ms, index prefix
        local user = redis.call('HGET', KEYS[1], 'user_id')
        if not user then return false end
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local ttl = tonumber(ARGV[2])
        redis.call('PEXPIRE', KEYS[1], ttl)
        local index = ARGV[3] .. user
        redis.call('ZADD', index, now + ttl, ARGV[1])
        redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
        local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
        redis.call('PEXPIREAT', index, last[2])
        return ttl
        ",
    )
});

static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- KEYS: session. ARGV: id, index prefix
        local user = redis.call('HGET', KEYS[1], 'user_id')
        if not user then return 0 end
        redis.call('DEL', KEYS[1])
        redis.call('ZREM', ARGV[2] .. user, ARGV[1])
        return 1
        ",
    )
});

static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- KEYS: index. ARGV: session prefix, the index's user id
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
        local live = {}
        for _, id in ipairs(ids) do
            -- gone behind our back (eviction, FLUSHDB), or the id now names another user's
            -- session: drop it from this index
            if redis.call('HGET', ARGV[1] .. id, 'user_id') == ARGV[2] then
                table.insert(live, id)
            else
                redis.call('ZREM', KEYS[1], id)
            end
        end
        return live
        ",
    )
});

// ---------------------------------------------------------------------------------------------
// Script arguments (pure: built and checked before anything is sent)

/// What [`CREATE`] is given. KEYS: session, index; ARGV: id, user_id, data, ttl_ms.
#[derive(Debug)]
struct CreateArgs {
    session: Key,
    index: Key,
    data: String,
    ttl: Duration,
}

impl CreateSession {
    /// The keys, the data as JSON and the TTL (`None`: `redis.session_ttl`); refused for a bad
    /// id or user id, a TTL out of range, or data above `redis.max_value_bytes`.
    fn script_args(&self, settings: &Settings) -> Result<CreateArgs, RedisError> {
        let ttl = self.ttl.unwrap_or(settings.session_ttl);
        let (session, index) = (session_key(&self.id)?, index_key(&self.user_id)?);
        Settings::check_ttl("ttl", ttl, None)?;
        let data = self.data.to_string();
        settings.check_value_size(data.len())?;
        Ok(CreateArgs {
            session,
            index,
            data,
            ttl,
        })
    }
}

impl GetSession {
    /// `HMGET session user_id data created_ms` and `PTTL session`, in one round trip.
    fn pipeline(&self) -> Result<(Key, redis::Pipeline), RedisError> {
        let key = session_key(&self.id)?;
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(&key)
            .arg("user_id")
            .arg("data")
            .arg("created_ms")
            .cmd("PTTL")
            .arg(&key);
        Ok((key, pipe))
    }
}

impl ExtendSession {
    /// The session key and the TTL (`None`: `redis.session_ttl`) [`EXTEND`] is given. KEYS:
    /// session; ARGV: id, ttl_ms, [`INDEX_PREFIX`].
    fn script_args(&self, settings: &Settings) -> Result<(Key, Duration), RedisError> {
        let ttl = self.ttl.unwrap_or(settings.session_ttl);
        let key = session_key(&self.id)?;
        Settings::check_ttl("ttl", ttl, None)?;
        Ok((key, ttl))
    }
}

impl DeleteSession {
    /// The session key [`DELETE`] is given. KEYS: session; ARGV: id, [`INDEX_PREFIX`].
    fn script_args(&self) -> Result<Key, RedisError> {
        session_key(&self.id)
    }
}

impl ListSessions {
    /// The user's index [`LIST`] is given. KEYS: index; ARGV: [`SESSION_PREFIX`], user_id.
    fn script_args(&self) -> Result<Key, RedisError> {
        index_key(&self.user_id)
    }
}

// ---------------------------------------------------------------------------------------------
// Operations

impl Sealed for CreateSession {}
impl Sealed for GetSession {}
impl Sealed for ExtendSession {}
impl Sealed for DeleteSession {}
impl Sealed for ListSessions {}

impl RedisOp for CreateSession {
    type Output = Session;
    const WRITES: bool = true;

    fn start(self, mut conn: Conn, shared: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        let CreateArgs {
            session,
            index,
            data,
            ttl,
        } = self.script_args(shared.settings())?;
        Ok(async move {
            let created: Option<u64> = CREATE
                .key(&session)
                .key(&index)
                .arg(&self.id)
                .arg(&self.user_id)
                .arg(&data)
                .arg(millis(ttl))
                .invoke_async(&mut conn)
                .await?;
            match created {
                Some(created_ms) => Ok(Session {
                    id: self.id,
                    user_id: self.user_id,
                    data: self.data,
                    created_ms,
                    ttl,
                }),
                None => Err(RedisError::Conflict {
                    what: format!("session {}", self.id),
                }),
            }
        })
    }
}

impl RedisOp for GetSession {
    type Output = Option<Session>;

    fn start(self, mut conn: Conn, _: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        let (key, pipe) = self.pipeline()?;
        Ok(async move {
            let (fields, pttl): (StoredFields, i64) = pipe.query_async(&mut conn).await?;
            let (user_id, data, created_ms) = fields;
            let (Some(user_id), Some(data)) = (user_id, data) else {
                return Ok(None);
            };
            if pttl <= 0 && pttl != -1 {
                return Ok(None);
            }
            let data = serde_json::from_str(&data).map_err(|e| RedisError::Codec {
                key: key.to_string(),
                message: e.to_string(),
            })?;
            Ok(Some(Session {
                id: self.id,
                user_id,
                data,
                created_ms: created_ms.unwrap_or_default(),
                ttl: Duration::from_millis(pttl.max(0) as u64),
            }))
        })
    }
}

impl RedisOp for ExtendSession {
    type Output = Duration;
    const WRITES: bool = true;

    fn start(self, mut conn: Conn, shared: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        let (key, ttl) = self.script_args(shared.settings())?;
        Ok(async move {
            let extended: Option<u64> = EXTEND
                .key(&key)
                .arg(&self.id)
                .arg(millis(ttl))
                .arg(INDEX_PREFIX)
                .invoke_async(&mut conn)
                .await?;
            match extended {
                Some(ms) => Ok(Duration::from_millis(ms)),
                None => Err(RedisError::NotFound {
                    what: format!("session {}", self.id),
                }),
            }
        })
    }
}

impl RedisOp for DeleteSession {
    type Output = bool;
    const WRITES: bool = true;

    fn start(self, mut conn: Conn, _: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        let key = self.script_args()?;
        Ok(async move {
            let n: u64 = DELETE
                .key(&key)
                .arg(&self.id)
                .arg(INDEX_PREFIX)
                .invoke_async(&mut conn)
                .await?;
            Ok(n == 1)
        })
    }
}

impl RedisOp for ListSessions {
    type Output = Vec<String>;

    fn start(self, mut conn: Conn, _: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        let key = self.script_args()?;
        Ok(async move {
            Ok(LIST
                .key(&key)
                .arg(SESSION_PREFIX)
                .arg(&self.user_id)
                .invoke_async(&mut conn)
                .await?)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Typed helpers

impl RedisHandle {
    pub fn create_session(
        &self,
        id: &str,
        user_id: &str,
        data: serde_json::Value,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<Session, RedisError>> + '_ {
        self.call(CreateSession {
            id: id.to_owned(),
            user_id: user_id.to_owned(),
            data,
            ttl,
        })
    }

    pub fn get_session(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<Session>, RedisError>> + '_ {
        self.call(GetSession { id: id.to_owned() })
    }

    pub fn extend_session(
        &self,
        id: &str,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<Duration, RedisError>> + '_ {
        self.call(ExtendSession {
            id: id.to_owned(),
            ttl,
        })
    }

    pub fn delete_session(&self, id: &str) -> impl Future<Output = Result<bool, RedisError>> + '_ {
        self.call(DeleteSession { id: id.to_owned() })
    }

    pub fn list_sessions(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<String>, RedisError>> + '_ {
        self.call(ListSessions {
            user_id: user_id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::tests::{args, settings};

    fn create(id: &str, user_id: &str, ttl: Option<Duration>) -> CreateSession {
        CreateSession {
            id: id.to_owned(),
            user_id: user_id.to_owned(),
            data: serde_json::json!({"role": "admin"}),
            ttl,
        }
    }

    #[test]
    fn create_names_the_session_and_its_users_index_and_resolves_the_ttl() {
        let s = settings();
        let a = create("sess-a", "user-1", None)
            .script_args(&s)
            .expect("valid");
        assert_eq!(a.session.as_str(), "lucid:sessions:session:sess-a");
        assert_eq!(a.index.as_str(), "lucid:sessions:user:user-1");
        assert_eq!(a.data, r#"{"role":"admin"}"#);
        assert_eq!(a.ttl, s.session_ttl);
        let a = create("sess-a", "user-1", Some(Duration::from_secs(60)))
            .script_args(&s)
            .expect("valid");
        assert_eq!(a.ttl, Duration::from_secs(60));
    }

    #[test]
    fn create_refuses_bad_ids_ttls_and_oversized_data_before_sending() {
        let s = settings();
        let refused = |c: CreateSession| match c.script_args(&s) {
            Err(RedisError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(create("has space", "u", None)), "id");
        assert_eq!(refused(create("s", "", None)), "user_id");
        assert_eq!(refused(create("s", "u", Some(Duration::ZERO))), "ttl");
        assert_eq!(
            refused(create("s", "u", Some(crate::redis::MAX_TTL * 2))),
            "ttl"
        );
        let mut big = create("s", "u", None);
        big.data = serde_json::Value::String("x".repeat(s.max_value_bytes));
        assert_eq!(refused(big), "value");
    }

    #[test]
    fn get_reads_the_three_fields_and_the_ttl_in_one_round_trip() {
        let (key, pipe) = GetSession {
            id: "sess-a".to_owned(),
        }
        .pipeline()
        .expect("valid");
        assert_eq!(key.as_str(), "lucid:sessions:session:sess-a");
        let cmds: Vec<Vec<String>> = pipe.cmd_iter().map(args).collect();
        assert_eq!(
            cmds,
            [
                vec![
                    "HMGET",
                    "lucid:sessions:session:sess-a",
                    "user_id",
                    "data",
                    "created_ms"
                ],
                vec!["PTTL", "lucid:sessions:session:sess-a"],
            ]
        );
    }

    #[test]
    fn extend_resolves_the_ttl_and_refuses_one_out_of_range() {
        let s = settings();
        let extend = |ttl| ExtendSession {
            id: "sess-a".to_owned(),
            ttl,
        };
        let (key, ttl) = extend(None).script_args(&s).expect("valid");
        assert_eq!(
            (key.as_str(), ttl),
            ("lucid:sessions:session:sess-a", s.session_ttl)
        );
        assert!(matches!(
            extend(Some(Duration::ZERO)).script_args(&s),
            Err(RedisError::Invalid { field: "ttl", .. })
        ));
    }

    #[test]
    fn delete_names_the_session_and_list_the_users_index() {
        let delete = |id: &str| DeleteSession { id: id.to_owned() }.script_args();
        assert_eq!(
            delete("sess-a").expect("valid").as_str(),
            "lucid:sessions:session:sess-a"
        );
        assert!(matches!(
            delete("has space"),
            Err(RedisError::Invalid { field: "id", .. })
        ));
        let list = |user_id: &str| {
            ListSessions {
                user_id: user_id.to_owned(),
            }
            .script_args()
        };
        assert_eq!(
            list("user-1").expect("valid").as_str(),
            "lucid:sessions:user:user-1"
        );
        assert!(matches!(
            list(""),
            Err(RedisError::Invalid {
                field: "user_id",
                ..
            })
        ));
    }

    /// The scripts build keys from ids they read (a session's user, an index's session ids)
    /// with these prefixes: they must be the key builder's.
    #[test]
    fn the_scripts_prefixes_are_the_key_builders() {
        assert_eq!(
            format!("{INDEX_PREFIX}user-1"),
            index_key("user-1").expect("key").as_str()
        );
        assert_eq!(
            format!("{SESSION_PREFIX}sess-a"),
            session_key("sess-a").expect("key").as_str()
        );
    }
}
