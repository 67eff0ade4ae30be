//! Sliding-window rate limits: per user (`lucid:ratelimit:user:{id}`) and per IP
//! (`lucid:ratelimit:ip:{addr}`), each a sorted set of admitted requests scored by the server's
//! clock. One Lua script prunes the window, counts, and admits or refuses — atomically, so 64
//! concurrent callers never get more than the limit admitted — and answers the remaining quota
//! and, when refused, how long until the oldest admitted request leaves the window.
//!
//! While Redis is unavailable the decision follows `redis.rate_limit_when_down` (admit all or
//! refuse all); such a decision says so in `degraded`, and `ratelimit.degraded` is emitted once
//! per outage.

use std::fmt;
use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use actix::prelude::*;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::keys::check_id;
use super::{Key, RedisActor, RedisError, RedisHandle, millis};
use crate::config::DownPolicy;
use crate::events::{self, RateLimitDegraded};

// ---------------------------------------------------------------------------------------------
// Messages

/// Whose requests are counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RateSubject {
    User(String),
    Ip(IpAddr),
}

impl fmt::Display for RateSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateSubject::User(id) => write!(f, "user {id}"),
            RateSubject::Ip(ip) => write!(f, "ip {ip}"),
        }
    }
}

impl RateSubject {
    fn key(&self) -> Result<Key, RedisError> {
        match self {
            RateSubject::User(id) => {
                check_id("user_id", id)?;
                Key::new("ratelimit", "user", id)
            }
            RateSubject::Ip(ip) => Key::new("ratelimit", "ip", &ip.to_string()),
        }
    }
}

/// Counts one request of `subject` against `limit` requests per `window`, admitting it if
/// there is room.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<RateLimitDecision, RedisError>")]
pub struct CheckRateLimit {
    pub subject: RateSubject,
    pub limit: u32,
    pub window: Duration,
}

/// The answer to a rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitDecision {
    pub allowed: bool,
    /// Requests still admitted in the current window after this one.
    pub remaining: u32,
    /// When refused: how long until a request would be admitted. Zero when allowed.
    pub retry_after: Duration,
    /// Set when Redis was unavailable and the configured policy decided instead.
    pub degraded: Option<DownPolicy>,
}

// ---------------------------------------------------------------------------------------------
// Script

static SLIDING_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- KEYS: window. ARGV: limit, window_ms, unique member suffix
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local limit = tonumber(ARGV[1])
        local window = tonumber(ARGV[2])
        -- a request admitted at time s counts while s > now - window
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
        local count = redis.call('ZCARD', KEYS[1])
        if count < limit then
            redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
            redis.call('PEXPIRE', KEYS[1], window)
            return {1, limit - count - 1, 0}
        end
        local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
        local retry = tonumber(oldest[2]) + window - now
        if retry < 1 then retry = 1 end
        return {0, 0, retry}
        ",
    )
});

// ---------------------------------------------------------------------------------------------
// Handler

impl RedisActor {
    fn degraded_decision(&self, limit: u32, window: Duration) -> RateLimitDecision {
        let policy = self.settings.when_down;
        RateLimitDecision {
            allowed: policy == DownPolicy::Open,
            remaining: if policy == DownPolicy::Open { limit } else { 0 },
            retry_after: if policy == DownPolicy::Open {
                Duration::ZERO
            } else {
                window
            },
            degraded: Some(policy),
        }
    }
}

impl Handler<CheckRateLimit> for RedisActor {
    type Result = ResponseFuture<Result<RateLimitDecision, RedisError>>;

    fn handle(&mut self, msg: CheckRateLimit, ctx: &mut Context<Self>) -> Self::Result {
        let key = match msg.subject.key() {
            Ok(key) => key,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        if msg.limit == 0 {
            return Box::pin(std::future::ready(Err(RedisError::invalid(
                "limit",
                "must be at least 1",
            ))));
        }
        if msg.window < Duration::from_millis(1) {
            return Box::pin(std::future::ready(Err(RedisError::invalid(
                "window",
                "must be at least 1 ms",
            ))));
        }
        let degraded = self.degraded_decision(msg.limit, msg.window);
        if let Err(e) = self.usable() {
            if !self.degraded_reported {
                self.degraded_reported = true;
                events::emit(RateLimitDegraded {
                    policy: if degraded.allowed { "open" } else { "closed" },
                    code: e.code(),
                });
            }
            return Box::pin(std::future::ready(Ok(degraded)));
        }
        let call = self.run(ctx, move |mut conn| async move {
            let (allowed, remaining, retry_ms): (u8, u32, u64) = SLIDING_WINDOW
                .key(&key)
                .arg(msg.limit)
                .arg(millis(msg.window))
                .arg(rand::random::<u64>())
                .invoke_async(&mut conn)
                .await?;
            Ok(RateLimitDecision {
                allowed: allowed == 1,
                remaining,
                retry_after: Duration::from_millis(retry_ms),
                degraded: None,
            })
        });
        Box::pin(async move {
            match call.await {
                // Lost on the way (connection dropped, deadline): the policy decides this one.
                Err(RedisError::Call(_) | RedisError::Connection { .. }) => Ok(degraded),
                other => other,
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Typed helper

impl RedisHandle {
    /// Counts one request of `subject`; see [`CheckRateLimit`].
    pub async fn check_rate_limit(
        &self,
        subject: RateSubject,
        limit: u32,
        window: Duration,
    ) -> Result<RateLimitDecision, RedisError> {
        self.call(CheckRateLimit {
            subject,
            limit,
            window,
        })
        .await
    }
}
