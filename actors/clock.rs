//! Where "now" comes from, for the logic that decides by the wall clock: the lifecycle planner
//! (which month an index belongs to, how old it is) and the scheduler (which cron slot a tick
//! belongs to, whether a slot was missed, whether the clock jumped). The daemon reads the
//! system clock; tests and `lucid-db search lifecycle --at` put a clock of their own in its
//! place, so that month ends, missed slots and clock jumps are tested without waiting for them.
//!
//! A leaf: it names nothing else in the crate.

use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

/// The wall clock a piece of logic reads.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that always says the same time.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// A clock its owner sets and moves, forward or back — how a test makes the Pi boot in the
/// past, sleep through 02:00 or have its clock corrected by NTP.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock(Mutex::new(at))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    /// Moves the clock by `by` (negative: back).
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An RFC 3339 time, for tables of times in tests.
#[cfg(test)]
pub(crate) fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_clock_says_its_time() {
        let t = at("2026-11-28T10:00:00Z");
        assert_eq!(FixedClock(t).now(), t);
        assert!(SystemClock.now() > t - chrono::Duration::days(365 * 10));
        let manual = ManualClock::new(t);
        assert_eq!(manual.now(), t);
        manual.advance(chrono::Duration::hours(-3));
        assert_eq!(manual.now(), at("2026-11-28T07:00:00Z"));
        manual.set(at("2027-01-01T00:00:00Z"));
        assert_eq!(manual.now(), at("2027-01-01T00:00:00Z"));
    }
}
