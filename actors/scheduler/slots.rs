//! The scheduler's decisions about time, as pure functions of a job's schedule, the last slot
//! it handled and the clock — so that ticks, catch-up and clock jumps are table-tested without
//! an actor or a timer.
//!
//! A tick carries no time: the trigger library reads the wall clock and only says "now". The
//! actor reads its [`crate::clock::Clock`] and asks [`on_tick`] which slot that is. A slot is
//! run at most once (a repeated tick for it changes nothing); an earlier slot than one already
//! handled means the clock went back, and is reported, never run again; a slot further ahead
//! than the next one means slots were passed over (the clock jumped forward), and the run
//! stands for them, counted.

use chrono::{DateTime, Utc};

use super::job::Schedule;

/// The most missed slots counted for one run (a month off is 43,200 minutes of a per-minute
/// job; a count that long says nothing more).
pub const MISSED_CAP: u64 = 10_000;

/// What a tick means for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickDecision {
    /// A slot not handled yet: run it. `missed` earlier slots passed without a run.
    Run { slot: DateTime<Utc>, missed: u64 },
    /// The slot handled last (the library ticked twice, or the clock stepped back a little):
    /// nothing to do.
    Repeat,
    /// A slot older than the one handled last: the clock went back. Never run twice.
    Earlier { slot: DateTime<Utc> },
}

/// What a tick at `now` means for a job whose last handled slot is `last`. `None` when the
/// schedule has no slot at or before `now`.
pub fn on_tick(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<TickDecision> {
    let slot = schedule.slot_at(now)?;
    Some(match last {
        Some(last) if slot == last => TickDecision::Repeat,
        Some(last) if slot < last => TickDecision::Earlier { slot },
        Some(last) => TickDecision::Run {
            slot,
            missed: schedule.count_between(last, slot, MISSED_CAP),
        },
        None => TickDecision::Run { slot, missed: 0 },
    })
}

/// At start: the slot to catch up, if the newest slot at or before `now` was not handled —
/// it passed while the daemon was not running — with how many earlier ones passed too. Run
/// once, however long the gap (as systemd timers' `Persistent=true`). A job with no history has
/// missed nothing.
pub fn catch_up(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, u64)> {
    match on_tick(schedule, Some(last?), now)? {
        TickDecision::Run { slot, missed } => Some((slot, missed)),
        TickDecision::Repeat | TickDecision::Earlier { .. } => None,
    }
}

/// Why the clock cannot be trusted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockDoubt {
    /// systemd-timesyncd runs and has not confirmed the time.
    Unsynchronised,
    /// The clock reads earlier than the newest run record: it went back, or the Pi booted in
    /// the past.
    Behind { newest: DateTime<Utc> },
}

impl ClockDoubt {
    pub fn code(self) -> &'static str {
        match self {
            ClockDoubt::Unsynchronised => "clock_unsynchronised",
            ClockDoubt::Behind { .. } => "clock_behind",
        }
    }

    pub fn describe(self) -> String {
        match self {
            ClockDoubt::Unsynchronised => {
                "the system clock is not synchronised yet (systemd-timesyncd has not confirmed it)"
                    .to_owned()
            }
            ClockDoubt::Behind { newest } => format!(
                "the system clock reads earlier than the newest run record ({})",
                newest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        }
    }
}

/// Whether the clock can be trusted for work a wrong clock would spoil: the system says it is
/// synchronised (`backup::retention::clock_synchronised`: timesyncd's flag where it runs), and
/// it reads no earlier than the newest run record.
pub fn clock_doubt(
    synchronised: bool,
    now: DateTime<Utc>,
    newest_record: Option<DateTime<Utc>>,
) -> Option<ClockDoubt> {
    if !synchronised {
        return Some(ClockDoubt::Unsynchronised);
    }
    match newest_record {
        Some(newest) if now < newest => Some(ClockDoubt::Behind { newest }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::at;

    #[test]
    fn ticks_run_each_slot_once_and_report_clock_jumps() {
        let daily = Schedule::parse("0 2 * * *").expect("parse");
        let hourly = Schedule::parse("15 * * * *").expect("parse");
        let d = |s| Some(at(s));
        type Case<'a> = (
            &'a Schedule,
            Option<DateTime<Utc>>,
            &'a str,
            Option<TickDecision>,
        );
        let cases: [Case<'_>; 9] = [
            // First tick ever.
            (
                &daily,
                None,
                "2026-11-30T02:00:00.3Z",
                Some(TickDecision::Run {
                    slot: at("2026-11-30T02:00:00Z"),
                    missed: 0,
                }),
            ),
            // The next day's slot.
            (
                &daily,
                d("2026-11-29T02:00:00Z"),
                "2026-11-30T02:00:00Z",
                Some(TickDecision::Run {
                    slot: at("2026-11-30T02:00:00Z"),
                    missed: 0,
                }),
            ),
            // A second tick for the same slot.
            (
                &daily,
                d("2026-11-30T02:00:00Z"),
                "2026-11-30T02:00:00.5Z",
                Some(TickDecision::Repeat),
            ),
            // The clock went back a little, within the same slot.
            (
                &daily,
                d("2026-11-30T02:00:00Z"),
                "2026-11-30T09:00:00Z",
                Some(TickDecision::Repeat),
            ),
            // The clock went back past the last slot: 29 November's is never run again.
            (
                &daily,
                d("2026-11-30T02:00:00Z"),
                "2026-11-29T23:00:00Z",
                Some(TickDecision::Earlier {
                    slot: at("2026-11-29T02:00:00Z"),
                }),
            ),
            // The clock jumped three days forward: the newest slot runs, two are counted.
            (
                &daily,
                d("2026-11-30T02:00:00Z"),
                "2026-12-03T02:00:00Z",
                Some(TickDecision::Run {
                    slot: at("2026-12-03T02:00:00Z"),
                    missed: 2,
                }),
            ),
            // Hourly at :15, a tick at 10:20 belongs to 10:15.
            (
                &hourly,
                d("2026-11-30T09:15:00Z"),
                "2026-11-30T10:20:00Z",
                Some(TickDecision::Run {
                    slot: at("2026-11-30T10:15:00Z"),
                    missed: 0,
                }),
            ),
            (
                &hourly,
                d("2026-11-30T05:15:00Z"),
                "2026-11-30T10:15:00Z",
                Some(TickDecision::Run {
                    slot: at("2026-11-30T10:15:00Z"),
                    missed: 4,
                }),
            ),
            // Exactly at a slot handled already.
            (
                &hourly,
                d("2026-11-30T10:15:00Z"),
                "2026-11-30T10:15:00Z",
                Some(TickDecision::Repeat),
            ),
        ];
        for (schedule, last, now, want) in cases {
            assert_eq!(
                on_tick(schedule, last, at(now)),
                want,
                "{} last {last:?} at {now}",
                schedule.as_configured()
            );
        }
    }

    #[test]
    fn catch_up_runs_once_for_a_missed_slot_and_never_without_one() {
        let daily = Schedule::parse("0 2 * * *").expect("parse");
        let last = at("2026-11-29T02:00:00Z");
        // Off from 01:00 to 03:00 on the 30th: the 02:00 slot is caught up, nothing else.
        assert_eq!(
            catch_up(&daily, Some(last), at("2026-11-30T03:00:00Z")),
            Some((at("2026-11-30T02:00:00Z"), 0))
        );
        // Off for a month: one run, for the newest slot, with 30 slots counted as missed.
        assert_eq!(
            catch_up(&daily, Some(last), at("2026-12-30T12:00:00Z")),
            Some((at("2026-12-30T02:00:00Z"), 30))
        );
        // Restarted before the next slot: nothing missed.
        assert_eq!(
            catch_up(&daily, Some(last), at("2026-11-30T01:59:59Z")),
            None
        );
        assert_eq!(catch_up(&daily, Some(last), last), None);
        // Never ran: nothing missed.
        assert_eq!(catch_up(&daily, None, at("2026-12-30T12:00:00Z")), None);
        // Booted in the past: nothing to catch up (and the clock is not trusted either).
        assert_eq!(
            catch_up(&daily, Some(last), at("1970-01-01T00:00:10Z")),
            None
        );
        // A per-minute job off for a year: counted up to the cap.
        let every = Schedule::parse("* * * * *").expect("parse");
        assert_eq!(
            catch_up(&every, Some(last), at("2027-11-29T02:00:00Z")),
            Some((at("2027-11-29T02:00:00Z"), MISSED_CAP))
        );
    }

    #[test]
    fn the_clock_is_trusted_only_synchronised_and_not_behind_the_records() {
        let newest = at("2026-11-30T02:00:00Z");
        let cases = [
            (true, "2026-11-30T02:00:00Z", None, None),
            (true, "2026-11-30T02:00:01Z", Some(newest), None),
            (true, "2026-11-30T02:00:00Z", Some(newest), None),
            (
                true,
                "1970-01-01T00:00:05Z",
                Some(newest),
                Some(ClockDoubt::Behind { newest }),
            ),
            (
                false,
                "2026-12-01T00:00:00Z",
                Some(newest),
                Some(ClockDoubt::Unsynchronised),
            ),
            (
                false,
                "2026-12-01T00:00:00Z",
                None,
                Some(ClockDoubt::Unsynchronised),
            ),
        ];
        for (sync, now, records, want) in cases {
            assert_eq!(clock_doubt(sync, at(now), records), want, "{sync} {now}");
        }
        assert_eq!(ClockDoubt::Unsynchronised.code(), "clock_unsynchronised");
        assert!(
            ClockDoubt::Behind { newest }
                .describe()
                .contains("2026-11-30T02:00:00Z")
        );
    }
}
