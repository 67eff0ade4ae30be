//! Distributed locks: `lucid:locks:lock:{name}` holds a random token with a lease (PX), taken
//! with `SET NX` only; release and extend compare the token first (Lua), so a caller whose lease
//! ran out cannot free or prolong someone else's lock. Every acquisition also increments one
//! counter, `lucid:locks:fence:all`, and returns it: a fencing token that only grows (for every
//! name, since it grows for all), which the protected resource can check to refuse a stale
//! holder. One counter, not one per name, so lock names that come and go leave no keys behind.
//! An import raises it to max(current, restored) + `redis.fence_margin`, so a restore never
//! makes it go back.

use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use actix::prelude::*;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::sealed::Sealed;
use super::{Conn, Key, RedisError, RedisHandle, RedisOp, Settings, Shared, millis};
use crate::supervisor::link::OpFuture;

const SERVICE: &str = "locks";

fn lock_key(name: &str) -> Result<Key, RedisError> {
    Key::with_id_field(SERVICE, "lock", name, "name")
}

fn fence_key() -> Key {
    Key::fixed(FENCE_KEY)
}

/// The fencing counter, shared by every lock name.
#[doc(hidden)]
pub const FENCE_KEY: &str = "lucid:locks:fence:all";

/// Keys of fencing counters, which an import raises instead of overwriting.
pub(crate) const FENCE_PREFIX: &str = "lucid:locks:fence:";

// ---------------------------------------------------------------------------------------------
// Messages

/// A held lock. Not released on drop (release is a network call): call
/// [`RedisHandle::release_lock`], or let the lease run out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockGuard {
    pub name: String,
    /// Random; proves ownership on release and extend.
    pub token: String,
    /// Strictly greater than every fence handed out for this name before.
    pub fence: u64,
    pub lease: Duration,
}

/// One attempt to take lock `name` for `lease` (`None`: `redis.lock_lease`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<LockAttempt, RedisError>")]
pub struct AcquireLock {
    pub name: String,
    pub lease: Option<Duration>,
}

/// The outcome of one [`AcquireLock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAttempt {
    Acquired(LockGuard),
    /// Someone holds it; their lease ends in `expires_in` at the latest.
    Busy {
        expires_in: Duration,
    },
}

/// Frees the lock if `guard` still holds it; `NotHeld` otherwise.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), RedisError>")]
pub struct ReleaseLock {
    pub guard: LockGuard,
}

/// Restarts the lease at `lease` if `guard` still holds the lock; `NotHeld` otherwise.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<LockGuard, RedisError>")]
pub struct ExtendLock {
    pub guard: LockGuard,
    pub lease: Option<Duration>,
}

// ---------------------------------------------------------------------------------------------
// Scripts

/// Public so the benchmark's direct-driver path does exactly the same work.
#[doc(hidden)]
pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- KEYS: lock, fence. ARGV: token, lease_ms
        if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
            return {1, redis.call('INCR', KEYS[2])}
        end
        return {0, redis.call('PTTL', KEYS[1])}
        ",
    )
});

/// Public so the benchmark's direct-driver path does exactly the same work.
#[doc(hidden)]
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- KEYS: lock. ARGV: token
        if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('DEL', KEYS[1])
        end
        return 0
        ",
    )
});

static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        -- KEYS: lock. ARGV: token, lease_ms
        if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('PEXPIRE', KEYS[1], ARGV[2])
        end
        return 0
        ",
    )
});

// ---------------------------------------------------------------------------------------------
// Script arguments (pure: built and checked before anything is sent)

fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl AcquireLock {
    /// The lock's key and the lease (`None`: `redis.lock_lease`) [`ACQUIRE`] is given. KEYS:
    /// lock, [`FENCE_KEY`]; ARGV: a new token, lease_ms.
    fn script_args(&self, settings: &Settings) -> Result<(Key, Duration), RedisError> {
        let lease = self.lease.unwrap_or(settings.lock_lease);
        Settings::check_ttl("lease", lease, None)?;
        Ok((lock_key(&self.name)?, lease))
    }
}

impl ExtendLock {
    /// As [`AcquireLock::script_args`], for [`EXTEND`]. KEYS: lock; ARGV: the guard's token,
    /// lease_ms.
    fn script_args(&self, settings: &Settings) -> Result<(Key, Duration), RedisError> {
        let lease = self.lease.unwrap_or(settings.lock_lease);
        Settings::check_ttl("lease", lease, None)?;
        Ok((lock_key(&self.guard.name)?, lease))
    }
}

// ---------------------------------------------------------------------------------------------
// Operations

impl Sealed for AcquireLock {}
impl Sealed for ReleaseLock {}
impl Sealed for ExtendLock {}

impl RedisOp for AcquireLock {
    type Output = LockAttempt;

    fn start(self, mut conn: Conn, shared: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        let (lock, lease) = self.script_args(shared.settings())?;
        let fence = fence_key();
        Ok(async move {
            let token = new_token();
            let (acquired, value): (u8, i64) = ACQUIRE
                .key(&lock)
                .key(&fence)
                .arg(&token)
                .arg(millis(lease))
                .invoke_async(&mut conn)
                .await?;
            Ok(if acquired == 1 {
                LockAttempt::Acquired(LockGuard {
                    name: self.name,
                    token,
                    fence: value.max(0) as u64,
                    lease,
                })
            } else {
                // PTTL -1 (no expiry: not one of ours) or -2 (gone in between): poll at the
                // normal pace rather than spin.
                LockAttempt::Busy {
                    expires_in: if value > 0 {
                        Duration::from_millis(value as u64)
                    } else {
                        MAX_POLL
                    },
                }
            })
        })
    }
}

impl RedisOp for ReleaseLock {
    type Output = ();

    fn start(self, mut conn: Conn, _: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        let lock = lock_key(&self.guard.name)?;
        Ok(async move {
            let n: u64 = RELEASE
                .key(&lock)
                .arg(&self.guard.token)
                .invoke_async(&mut conn)
                .await?;
            if n == 1 {
                Ok(())
            } else {
                Err(RedisError::NotHeld {
                    lock: self.guard.name,
                })
            }
        })
    }
}

impl RedisOp for ExtendLock {
    type Output = LockGuard;

    fn start(self, mut conn: Conn, shared: &Shared) -> Result<impl OpFuture<Self>, RedisError> {
        let (lock, lease) = self.script_args(shared.settings())?;
        Ok(async move {
            let n: u64 = EXTEND
                .key(&lock)
                .arg(&self.guard.token)
                .arg(millis(lease))
                .invoke_async(&mut conn)
                .await?;
            if n == 1 {
                Ok(LockGuard {
                    lease,
                    ..self.guard
                })
            } else {
                Err(RedisError::NotHeld {
                    lock: self.guard.name,
                })
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Typed helpers

/// Longest pause between two attempts while waiting for a lock.
const MAX_POLL: Duration = Duration::from_millis(100);

impl RedisHandle {
    /// Takes lock `name` for `lease` (`None`: `redis.lock_lease`). With `wait`, retries until
    /// it is free or `wait` has passed (`LockBusy`); without, one attempt. The waiting happens
    /// here, in the caller's task, never in the actor.
    pub async fn acquire_lock(
        &self,
        name: &str,
        lease: Option<Duration>,
        wait: Option<Duration>,
    ) -> Result<LockGuard, RedisError> {
        let started = Instant::now();
        let wait = wait.unwrap_or(Duration::ZERO);
        loop {
            let attempt = self
                .call(AcquireLock {
                    name: name.to_owned(),
                    lease,
                })
                .await?;
            let expires_in = match attempt {
                LockAttempt::Acquired(guard) => return Ok(guard),
                LockAttempt::Busy { expires_in } => expires_in,
            };
            let waited = started.elapsed();
            if waited >= wait {
                return Err(RedisError::LockBusy {
                    lock: name.to_owned(),
                    waited,
                });
            }
            // Poll with jitter, never past the lease end or the caller's wait.
            let pause = MAX_POLL.mul_f64(0.25 + 0.75 * rand::random::<f64>());
            tokio::time::sleep(pause.min(expires_in).min(wait - waited)).await;
        }
    }

    pub fn release_lock(
        &self,
        guard: &LockGuard,
    ) -> impl Future<Output = Result<(), RedisError>> + '_ {
        self.call(ReleaseLock {
            guard: guard.clone(),
        })
    }

    pub fn extend_lock(
        &self,
        guard: &LockGuard,
        lease: Option<Duration>,
    ) -> impl Future<Output = Result<LockGuard, RedisError>> + '_ {
        self.call(ExtendLock {
            guard: guard.clone(),
            lease,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::tests::settings;

    fn guard(name: &str) -> LockGuard {
        LockGuard {
            name: name.to_owned(),
            token: new_token(),
            fence: 1,
            lease: Duration::from_secs(30),
        }
    }

    #[test]
    fn acquire_and_extend_name_the_lock_and_resolve_the_lease() {
        let s = settings();
        let acquire = |lease| AcquireLock {
            name: "nightly".to_owned(),
            lease,
        };
        let (key, lease) = acquire(None).script_args(&s).expect("valid");
        assert_eq!(
            (key.as_str(), lease),
            ("lucid:locks:lock:nightly", s.lock_lease)
        );
        let (_, lease) = acquire(Some(Duration::from_millis(250)))
            .script_args(&s)
            .expect("valid");
        assert_eq!(lease, Duration::from_millis(250));
        let extend = ExtendLock {
            guard: guard("nightly"),
            lease: Some(Duration::from_secs(60)),
        };
        let (key, lease) = extend.script_args(&s).expect("valid");
        assert_eq!(
            (key.as_str(), lease),
            ("lucid:locks:lock:nightly", Duration::from_secs(60))
        );
    }

    #[test]
    fn bad_names_and_leases_are_refused_before_sending() {
        let s = settings();
        let field = |r: Result<(Key, Duration), RedisError>| match r {
            Err(RedisError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let acquire = |name: &str, lease| AcquireLock {
            name: name.to_owned(),
            lease,
        };
        assert_eq!(field(acquire("", None).script_args(&s)), "name");
        assert_eq!(field(acquire("a b", None).script_args(&s)), "name");
        assert_eq!(
            field(acquire("job", Some(Duration::ZERO)).script_args(&s)),
            "lease"
        );
        let extend = ExtendLock {
            guard: guard("job"),
            lease: Some(crate::redis::MAX_TTL + Duration::from_secs(1)),
        };
        assert_eq!(field(extend.script_args(&s)), "lease");
    }

    /// One fencing counter for every name, under the prefix an import raises instead of
    /// overwriting; tokens are 128 random bits, so two holders never share one.
    #[test]
    fn the_fence_key_and_tokens() {
        assert_eq!(fence_key().as_str(), FENCE_KEY);
        assert!(FENCE_KEY.starts_with(FENCE_PREFIX));
        assert!(FENCE_KEY.starts_with("lucid:locks:"));
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
