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
use std::future::Future;
use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use actix::prelude::*;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::sealed::Sealed;
use super::{Conn, Key, RedisError, RedisHandle, RedisOp, Settings, Shared, millis};
use crate::config::DownPolicy;
use crate::supervisor::link::OpFuture;

// ---------------------------------------------------------------------------------------------
// Messages

/// Whose requests are counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RateSubject {
    User(String),
    Ip(IpAddr),
    /// An HTTP API token, by name (`lucid:ratelimit:token:{name}`).
    Token(String),
}

impl fmt::Display for RateSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateSubject::User(id) => write!(f, "user {id}"),
            RateSubject::Ip(ip) => write!(f, "ip {ip}"),
            RateSubject::Token(name) => write!(f, "token {name}"),
        }
    }
}

impl RateSubject {
    /// One window per subject *and* policy: two limits on one subject never share (and
    /// corrupt) each other's history. IPv4-mapped IPv6 addresses count as their IPv4 address;
    /// IPv6 clients are limited per /64, the block one host usually holds.
    fn key(&self, limit: u32, window: Duration) -> Result<Key, RedisError> {
        let window_ms = millis(window);
        match self {
            RateSubject::User(id) => Key::with_suffix(
                "ratelimit",
                "user",
                id,
                "user_id",
                format_args!(":{limit}per{window_ms}ms"),
            ),
            RateSubject::Token(name) => Key::with_suffix(
                "ratelimit",
                "token",
                name,
                "token",
                format_args!(":{limit}per{window_ms}ms"),
            ),
            RateSubject::Ip(ip) => match ip.to_canonical() {
                IpAddr::V4(v4) => Key::with_suffix(
                    "ratelimit",
                    "ip",
                    &v4.to_string(),
                    "ip",
                    format_args!(":{limit}per{window_ms}ms"),
                ),
                IpAddr::V6(v6) => {
                    let net = std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1));
                    Key::with_suffix(
                        "ratelimit",
                        "ip",
                        &net.to_string(),
                        "ip",
                        format_args!("/64:{limit}per{window_ms}ms"),
                    )
                }
            },
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

/// Public so the benchmark's direct-driver path does exactly the same work.
#[doc(hidden)]
pub static SLIDING_WINDOW: LazyLock<Script> = LazyLock::new(|| {
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
        -- admitted again once count drops below limit: when the entry at count - limit
        -- (0-based; the oldest when count == limit) leaves the window
        local blocking = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
        local retry = tonumber(blocking[2]) + window - now
        if retry < 1 then retry = 1 end
        return {0, 0, retry}
        ",
    )
});

// ---------------------------------------------------------------------------------------------
// Operation

impl CheckRateLimit {
    fn validated_key(&self) -> Result<Key, RedisError> {
        if self.limit == 0 {
            return Err(RedisError::invalid("limit", "must be at least 1"));
        }
        Settings::check_ttl("window", self.window, None)?;
        self.subject.key(self.limit, self.window)
    }
}

impl Sealed for CheckRateLimit {}

impl RedisOp for CheckRateLimit {
    type Output = RateLimitDecision;

    fn start(self, mut conn: Conn, _: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        let key = self.validated_key()?;
        Ok(async move {
            let (allowed, remaining, retry_ms): (u8, u32, u64) = SLIDING_WINDOW
                .key(&key)
                .arg(self.limit)
                .arg(millis(self.window))
                .arg(rand::random::<u64>())
                .invoke_async(&mut conn)
                .await?;
            Ok(RateLimitDecision {
                allowed: allowed == 1,
                remaining,
                retry_after: Duration::from_millis(retry_ms),
                degraded: None,
            })
        })
    }

    /// The configured policy decides while Redis is down.
    fn when_down(&self, settings: &Settings) -> Option<RateLimitDecision> {
        let open = settings.when_down == DownPolicy::Open;
        Some(RateLimitDecision {
            allowed: open,
            remaining: if open { self.limit } else { 0 },
            retry_after: if open { Duration::ZERO } else { self.window },
            degraded: Some(settings.when_down),
        })
    }

    fn check(&self) -> Result<(), RedisError> {
        self.validated_key().map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------------
// Typed helper

impl RedisHandle {
    /// Counts one request of `subject`; see [`CheckRateLimit`].
    pub fn check_rate_limit(
        &self,
        subject: RateSubject,
        limit: u32,
        window: Duration,
    ) -> impl Future<Output = Result<RateLimitDecision, RedisError>> + '_ {
        self.call(CheckRateLimit {
            subject,
            limit,
            window,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::tests::settings;

    fn check(subject: RateSubject, limit: u32, window: Duration) -> CheckRateLimit {
        CheckRateLimit {
            subject,
            limit,
            window,
        }
    }

    fn key(subject: &str, limit: u32, window: Duration) -> String {
        let subject = match subject.parse::<IpAddr>() {
            Ok(ip) => RateSubject::Ip(ip),
            Err(_) => RateSubject::User(subject.to_owned()),
        };
        check(subject, limit, window)
            .validated_key()
            .expect("valid")
            .as_str()
            .to_owned()
    }

    /// One window per subject and policy; an IPv4 client is one address however it arrives,
    /// an IPv6 client is its /64.
    #[test]
    fn keys_per_subject_and_policy() {
        let minute = Duration::from_secs(60);
        let table = [
            ("u-1", 5, minute, "lucid:ratelimit:user:u-1:5per60000ms"),
            ("u-1", 100, minute, "lucid:ratelimit:user:u-1:100per60000ms"),
            (
                "u-1",
                5,
                Duration::from_millis(1500),
                "lucid:ratelimit:user:u-1:5per1500ms",
            ),
            (
                "192.0.2.7",
                3,
                minute,
                "lucid:ratelimit:ip:192.0.2.7:3per60000ms",
            ),
            (
                "::ffff:192.0.2.7",
                3,
                minute,
                "lucid:ratelimit:ip:192.0.2.7:3per60000ms",
            ),
            (
                "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
                3,
                minute,
                "lucid:ratelimit:ip:2001:db8:1:2::/64:3per60000ms",
            ),
            (
                "2001:db8:1:2::1",
                3,
                minute,
                "lucid:ratelimit:ip:2001:db8:1:2::/64:3per60000ms",
            ),
            ("::1", 3, minute, "lucid:ratelimit:ip:::/64:3per60000ms"),
        ];
        for (subject, limit, window, want) in table {
            assert_eq!(
                key(subject, limit, window),
                want,
                "{subject} {limit}/{window:?}"
            );
        }
    }

    #[test]
    fn bad_limits_windows_and_ids_are_refused_before_sending() {
        let user = || RateSubject::User("u-1".to_owned());
        let field = |c: CheckRateLimit| match c.check() {
            Err(RedisError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(check(user(), 0, Duration::from_secs(1))), "limit");
        assert_eq!(field(check(user(), 1, Duration::ZERO)), "window");
        assert_eq!(field(check(user(), 1, crate::redis::MAX_TTL * 2)), "window");
        assert_eq!(
            field(check(
                RateSubject::User("has space".to_owned()),
                1,
                Duration::from_secs(1)
            )),
            "user_id"
        );
    }

    /// While Redis is down the configured policy answers, and says so.
    #[test]
    fn the_policy_answers_while_redis_is_down() {
        let mut s = settings();
        let c = check(RateSubject::User("u".to_owned()), 7, Duration::from_secs(9));
        s.when_down = DownPolicy::Closed;
        assert_eq!(
            c.when_down(&s),
            Some(RateLimitDecision {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_secs(9),
                degraded: Some(DownPolicy::Closed),
            })
        );
        s.when_down = DownPolicy::Open;
        assert_eq!(
            c.when_down(&s),
            Some(RateLimitDecision {
                allowed: true,
                remaining: 7,
                retry_after: Duration::ZERO,
                degraded: Some(DownPolicy::Open),
            })
        );
    }
}
