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
use std::time::Duration;

use actix::prelude::*;
use redis::Script;
use serde::{Deserialize, Serialize};

use tokio::time::Instant;

use super::sealed::Sealed;
use super::{Conn, Key, RedisError, RedisHandle, RedisOp, Settings, Shared, millis};
use crate::supervisor::link::OpFuture;
use crate::supervisor::{BackoffPolicy, retry_pause};

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

impl ReleaseLock {
    /// The lock's key [`RELEASE`] is given. KEYS: lock; ARGV: the guard's token.
    fn script_args(&self) -> Result<Key, RedisError> {
        lock_key(&self.guard.name)
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
    const WRITES: bool = true;

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
        let lock = self.script_args()?;
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
    const WRITES: bool = true;

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

/// The pauses between the attempts on a taken lock: the supervisor's retry schedule
/// ([`retry_pause`]: attempt `n` waits between half and all of `min(100 ms, 25 ms × 2^(n-1))`),
/// so waiters on one lock do not poll in step, and a lock freed soon is taken soon. Nothing
/// forgives a streak here (`reset_after` is unused): every wait starts at attempt 1.
const POLL: BackoffPolicy = BackoffPolicy {
    base: Duration::from_millis(25),
    factor: 2,
    cap: MAX_POLL,
    reset_after: Duration::ZERO,
};

/// Runs `attempt` until it takes the lock or `wait` has passed (`LockBusy`), pausing
/// [`POLL`] (jitter samples from `jitter`) between attempts, never past the holder's lease
/// end or the caller's wait.
async fn poll<F, Fut>(
    name: &str,
    wait: Duration,
    mut jitter: impl FnMut() -> f64,
    mut attempt: F,
) -> Result<LockGuard, RedisError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<LockAttempt, RedisError>>,
{
    let started = Instant::now();
    let mut attempts: u32 = 0;
    loop {
        let expires_in = match attempt().await? {
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
        attempts = attempts.saturating_add(1);
        let pause = retry_pause(&POLL, attempts, jitter());
        tokio::time::sleep(pause.min(expires_in).min(wait - waited)).await;
    }
}

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
        let attempt = || {
            self.call(AcquireLock {
                name: name.to_owned(),
                lease,
            })
        };
        poll(name, wait.unwrap_or(Duration::ZERO), rand::random, attempt).await
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
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

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

    #[test]
    fn release_names_the_lock_of_the_guard() {
        let release = ReleaseLock {
            guard: guard("nightly"),
        };
        assert_eq!(
            release.script_args().expect("valid").as_str(),
            "lucid:locks:lock:nightly"
        );
        let release = ReleaseLock {
            guard: guard("not a name"),
        };
        assert!(matches!(
            release.script_args(),
            Err(RedisError::Invalid { field: "name", .. })
        ));
    }

    type Answer = std::future::Ready<Result<LockAttempt, RedisError>>;

    /// Attempts of a lock poll, answered by `answers` in turn (the last one again and again),
    /// and the time of each since the poll began.
    fn attempts(answers: Vec<LockAttempt>) -> (impl FnMut() -> Answer, Rc<RefCell<Vec<Duration>>>) {
        let t0 = Instant::now();
        let at = Rc::new(RefCell::new(Vec::new()));
        let seen = at.clone();
        let mut answers = VecDeque::from(answers);
        let attempt = move || {
            seen.borrow_mut().push(t0.elapsed());
            let answer = if answers.len() > 1 {
                answers.pop_front()
            } else {
                answers.front().cloned()
            };
            std::future::ready(Ok(answer.expect("an answer")))
        };
        (attempt, at)
    }

    fn ms(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    fn busy(expires_in: Duration) -> LockAttempt {
        LockAttempt::Busy { expires_in }
    }

    /// The pauses between attempts follow the supervisor's retry schedule (ceilings of 25,
    /// 50, then 100 ms, of which the jitter sample 0.6 takes four fifths), on paused time.
    #[tokio::test(start_paused = true)]
    async fn a_poll_backs_off_with_jitter_until_the_lock_is_free() {
        let far = Duration::from_secs(30);
        let (attempt, at) = attempts(vec![
            busy(far),
            busy(far),
            busy(far),
            busy(far),
            LockAttempt::Acquired(guard("job")),
        ]);
        let got = poll("job", Duration::from_secs(10), || 0.6, attempt).await;
        assert_eq!(got.expect("acquired").name, "job");
        // 20 ms (0.8 × 25), 40 ms (0.8 × 50), then 80 ms (0.8 × the 100 ms cap) twice.
        assert_eq!(*at.borrow(), ms(&[0, 20, 60, 140, 220]));
        for n in 1..=4 {
            assert!(retry_pause(&POLL, n, 1.0) <= MAX_POLL);
        }
    }

    /// A pause never runs past the holder's lease end, nor past the caller's wait: the
    /// attempt at the end of the wait is made, then `LockBusy` says how long it waited.
    #[tokio::test(start_paused = true)]
    async fn a_poll_stops_at_the_lease_end_and_at_the_wait() {
        let (attempt, at) = attempts(vec![
            busy(Duration::from_millis(3)),
            LockAttempt::Acquired(guard("job")),
        ]);
        poll("job", Duration::from_secs(1), || 1.0, attempt)
            .await
            .expect("acquired once the lease ended");
        assert_eq!(
            *at.borrow(),
            [Duration::ZERO, Duration::from_millis(3)],
            "the lease end, not the 25 ms the schedule allows"
        );

        let (attempt, at) = attempts(vec![busy(Duration::from_secs(30))]);
        let refused = poll("job", Duration::from_millis(60), || 1.0, attempt).await;
        // 25 ms, then 35 of the 50 allowed: the wait's end; one more attempt there.
        assert_eq!(*at.borrow(), ms(&[0, 25, 60]));
        assert_eq!(
            refused,
            Err(RedisError::LockBusy {
                lock: "job".to_owned(),
                waited: Duration::from_millis(60),
            })
        );

        // No wait: one attempt.
        let (attempt, at) = attempts(vec![busy(Duration::from_secs(30))]);
        let refused = poll("job", Duration::ZERO, || 1.0, attempt).await;
        assert!(matches!(refused, Err(RedisError::LockBusy { .. })));
        assert_eq!(at.borrow().len(), 1);
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
