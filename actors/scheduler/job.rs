//! The jobs and their schedules: [`JobName`] (the fixed set of jobs), [`Schedule`] (a cron
//! string as configured, the six-field form the trigger library reads, and the slots croner
//! derives from it) and [`JobSpec`] (one job as `[scheduler]` configures it), with the checks
//! `config check` runs ([`check_config`]).
//!
//! Cron strings are the standard five fields in UTC. tokio-cron-scheduler wants a seconds
//! field, so `0 ` is put in front; a nickname (`@daily`) is first expanded to its five fields,
//! because croner expands a nickname to the form *it* was asked to parse and would otherwise
//! see `0 @daily`. Six fields are refused rather than read as seconds: a `*` in the wrong
//! place would run a backup every second.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, SchedulerConfig};

/// The value that turns a job off.
pub const OFF: &str = "off";

/// One of the scheduler's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobName {
    /// A full backup (`StartBackup`, trigger `schedule`).
    Backup,
    /// The newest backups not yet at `backup.min_level`, verified at that level.
    Verify,
    /// Backup retention (`PruneBackups`).
    Retention,
    /// The Elasticsearch index lifecycle, planned and applied.
    Lifecycle,
    /// Volume usage and thresholds (`CheckThresholds`).
    VolumeUsage,
    /// Volume cleanup and a fresh usage walk (`Maintain`).
    VolumeMaintenance,
    /// One `health.summary` event with every backend's state.
    HealthSummary,
}

impl JobName {
    /// Every job, in the order `schedule ls` lists them.
    pub const ALL: [JobName; 7] = [
        JobName::Backup,
        JobName::Verify,
        JobName::Retention,
        JobName::Lifecycle,
        JobName::VolumeUsage,
        JobName::VolumeMaintenance,
        JobName::HealthSummary,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobName::Backup => "backup",
            JobName::Verify => "verify",
            JobName::Retention => "retention",
            JobName::Lifecycle => "lifecycle",
            JobName::VolumeUsage => "volume_usage",
            JobName::VolumeMaintenance => "volume_maintenance",
            JobName::HealthSummary => "health_summary",
        }
    }

    /// Work that a wrong clock would spoil waits until the clock can be trusted: a backup's id
    /// and age come from it, retention deletes by age, the lifecycle deletes and freezes
    /// indices by age (a Pi without a hardware clock can boot in the past).
    pub fn needs_trusted_clock(self) -> bool {
        matches!(
            self,
            JobName::Backup | JobName::Retention | JobName::Lifecycle
        )
    }

    /// The job's key in `[scheduler]`.
    pub fn key(self) -> String {
        format!("scheduler.{}", self.as_str())
    }

    /// The job's key in `[scheduler.jitter]`.
    pub fn jitter_key(self) -> String {
        format!("scheduler.jitter.{}", self.as_str())
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no job {name:?}; the jobs are {}", JobName::ALL.map(JobName::as_str).join(", "))]
pub struct UnknownJob {
    pub name: String,
}

impl FromStr for JobName {
    type Err = UnknownJob;

    fn from_str(s: &str) -> Result<JobName, UnknownJob> {
        JobName::ALL
            .into_iter()
            .find(|j| j.as_str() == s)
            .ok_or_else(|| UnknownJob { name: s.to_owned() })
    }
}

/// A job's cron schedule; see the module doc.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As configured: `0 2 * * *`, `@daily`.
    configured: String,
    /// What the trigger library and croner read: `0 0 2 * * *`.
    six_field: String,
    cron: Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.six_field == other.six_field
    }
}

/// The standard nicknames, as their five fields.
const NICKNAMES: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// How far [`Schedule::shortest_interval`] and [`Schedule::count_between`] look: bounded, so
/// a pattern that fires every minute costs the same as one that fires once a year.
const SAMPLE: usize = 2000;

impl Schedule {
    /// A five-field cron string or a nickname, in UTC.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let trimmed = text.trim();
        let five = if trimmed.starts_with('@') {
            NICKNAMES
                .iter()
                .find(|(nick, _)| nick.eq_ignore_ascii_case(trimmed))
                .map(|(_, five)| *five)
                .ok_or_else(|| {
                    format!(
                        "{text:?} is not a nickname the scheduler knows ({}; @reboot has no \
                         meaning here: a missed run is caught up at start)",
                        NICKNAMES.map(|(n, _)| n).join(", ")
                    )
                })?
        } else {
            match trimmed.split_whitespace().count() {
                5 => trimmed,
                6 => {
                    return Err(format!(
                        "{text:?} has six fields: give the standard five (minute hour \
                         day-of-month month day-of-week); the scheduler adds the seconds itself"
                    ));
                }
                n => {
                    return Err(format!(
                        "{text:?} is not a 5-field cron string (minute hour day-of-month \
                         month day-of-week), it has {n} fields"
                    ));
                }
            }
        };
        let six = format!(
            "0 {}",
            five.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        Schedule::build(text.trim(), six)
            .map_err(|e| format!("{text:?} is not a valid cron string: {e}"))
    }

    /// A schedule with its own seconds field, finer than any configuration can ask for: for
    /// tests of the real trigger, which must not wait a minute for a tick.
    #[cfg(test)]
    pub(crate) fn with_seconds(six: &str) -> Schedule {
        Schedule::build(six, six.to_owned()).unwrap_or_else(|e| panic!("{six}: {e}"))
    }

    fn build(configured: &str, six_field: String) -> Result<Schedule, croner::errors::CronError> {
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .build()
            .parse(&six_field)?;
        Ok(Schedule {
            configured: configured.to_owned(),
            six_field,
            cron,
        })
    }

    /// As configured.
    pub fn as_configured(&self) -> &str {
        &self.configured
    }

    /// With the seconds field in front, as the trigger library reads it.
    pub fn six_field(&self) -> &str {
        &self.six_field
    }

    /// The slot a tick at `now` belongs to: the newest scheduled time at or before `now`.
    pub fn slot_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&now, true).ok()
    }

    /// The first scheduled time after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&now, false).ok()
    }

    /// How many slots lie strictly between `after` and `before`, counted up to `cap` (a Pi
    /// off for a month misses 43,200 minutes of a per-minute job; the record says "at least").
    pub fn count_between(&self, after: DateTime<Utc>, before: DateTime<Utc>, cap: u64) -> u64 {
        let mut n = 0;
        for t in self.cron.iter_after(after) {
            if t >= before || n >= cap {
                break;
            }
            n += 1;
        }
        n
    }

    /// The shortest time between two consecutive slots, over the first 2,000 slots of 2024
    /// (a leap year, so that `0 0 29 2 *` has two of them): what a jitter must stay below, so
    /// that a delayed run never reaches into the next slot. `None` for a schedule with fewer
    /// than two slots.
    pub fn shortest_interval(&self) -> Option<Duration> {
        let from = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single()?;
        let slots: Vec<DateTime<Utc>> = self
            .cron
            .iter_from(from, croner::Direction::Forward)
            .take(SAMPLE)
            .collect();
        slots
            .windows(2)
            .filter_map(|w| (w[1] - w[0]).to_std().ok())
            .min()
    }
}

/// One job as `[scheduler]` configures it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: JobName,
    /// `None`: the job is off.
    pub schedule: Option<Schedule>,
    /// Each scheduled run starts a random time below this after its slot (0: at the slot).
    pub jitter: Duration,
}

/// The configured cron string and jitter of `job`.
fn configured(cfg: &SchedulerConfig, job: JobName) -> (&str, Duration) {
    let j = &cfg.jitter;
    match job {
        JobName::Backup => (&cfg.backup, j.backup),
        JobName::Verify => (&cfg.verify, j.verify),
        JobName::Retention => (&cfg.retention, j.retention),
        JobName::Lifecycle => (&cfg.lifecycle, j.lifecycle),
        JobName::VolumeUsage => (&cfg.volume_usage, j.volume_usage),
        JobName::VolumeMaintenance => (&cfg.volume_maintenance, j.volume_maintenance),
        JobName::HealthSummary => (&cfg.health_summary, j.health_summary),
    }
}

/// One job's spec, or the problems with its keys.
pub(crate) fn spec(cfg: &SchedulerConfig, name: JobName) -> Result<JobSpec, Vec<ConfigError>> {
    let (text, jitter) = configured(cfg, name);
    if text.trim().eq_ignore_ascii_case(OFF) {
        return Ok(JobSpec {
            name,
            schedule: None,
            jitter,
        });
    }
    let schedule =
        Schedule::parse(text).map_err(|reason| vec![ConfigError::new(name.key(), reason)])?;
    if !jitter.is_zero() {
        match schedule.shortest_interval() {
            Some(interval) if jitter >= interval => {
                return Err(vec![ConfigError::new(
                    name.jitter_key(),
                    format!(
                        "{} is not shorter than the {} between two runs of {:?}: a delayed \
                         run would reach into the next one",
                        humantime::format_duration(jitter),
                        humantime::format_duration(interval),
                        schedule.as_configured()
                    ),
                )]);
            }
            _ => {}
        }
    }
    Ok(JobSpec {
        name,
        schedule: Some(schedule),
        jitter,
    })
}

/// Every job as configured, or every problem (each naming its key).
pub fn specs(cfg: &SchedulerConfig) -> Result<Vec<JobSpec>, Vec<ConfigError>> {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for name in JobName::ALL {
        match spec(cfg, name) {
            Ok(s) => specs.push(s),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// The `[scheduler]` checks: each cron string parses (five fields or a nickname, or `off`),
/// each jitter is shorter than its job's shortest interval. Unknown keys (a job that does not
/// exist) are refused by the configuration's own `deny_unknown_fields`.
pub fn check_config(cfg: &SchedulerConfig, errors: &mut Vec<ConfigError>) {
    if let Err(e) = specs(cfg) {
        errors.extend(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::at;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_jobs() {
        for job in JobName::ALL {
            assert_eq!(job.as_str().parse::<JobName>(), Ok(job));
            let json = serde_json::to_string(&job).expect("json");
            assert_eq!(json, format!("\"{job}\""));
        }
        let e = "nightly".parse::<JobName>().expect_err("unknown");
        assert!(e.to_string().contains("backup, verify, retention"), "{e}");
    }

    #[test]
    fn five_fields_and_nicknames_get_a_seconds_field_and_everything_else_is_refused() {
        for (text, six) in [
            ("0 2 * * *", "0 0 2 * * *"),
            ("  */5   * * * *  ", "0 */5 * * * *"),
            ("@daily", "0 0 0 * * *"),
            ("@HOURLY", "0 0 * * * *"),
            ("@weekly", "0 0 0 * * 0"),
            ("30 3 * * MON-FRI", "0 30 3 * * MON-FRI"),
        ] {
            let s = Schedule::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(s.six_field(), six, "{text}");
            assert_eq!(s.as_configured(), text.trim());
        }
        for (text, needle) in [
            ("0 0 2 * * *", "six fields"),
            ("0 2 * *", "it has 4 fields"),
            ("0 25 * * *", "not a valid cron string"),
            ("every hour", "it has 2 fields"),
            ("@reboot", "not a nickname"),
            ("", "it has 0 fields"),
        ] {
            let e = Schedule::parse(text).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn a_slot_is_the_newest_scheduled_time_at_or_before_the_tick() {
        let s = Schedule::parse("0 2 * * *").expect("parse");
        // A tick a moment after 02:00 (the library polls twice a second) belongs to 02:00.
        let slot = at("2026-11-30T02:00:00Z");
        assert_eq!(s.slot_at(at("2026-11-30T02:00:00.400Z")), Some(slot));
        assert_eq!(s.slot_at(slot), Some(slot));
        assert_eq!(
            s.slot_at(at("2026-11-30T01:59:59Z")),
            Some(at("2026-11-29T02:00:00Z"))
        );
        assert_eq!(s.next_after(slot), Some(at("2026-12-01T02:00:00Z")));
        // Missed slots between two times, bounded.
        let every = Schedule::parse("* * * * *").expect("parse");
        let from = at("2026-11-30T00:00:00Z");
        assert_eq!(
            every.count_between(from, from + chrono::Duration::minutes(10), 100),
            9
        );
        assert_eq!(
            every.count_between(from, from + chrono::Duration::days(30), 500),
            500
        );
        assert_eq!(
            s.count_between(slot, slot + chrono::Duration::days(1), 100),
            0
        );
    }

    #[test]
    fn the_shortest_interval_is_the_tightest_pair_of_slots() {
        let day = Duration::from_secs(86_400);
        for (text, want) in [
            ("* * * * *", Duration::from_secs(60)),
            ("*/5 * * * *", Duration::from_secs(300)),
            ("15 * * * *", Duration::from_secs(3600)),
            ("0 2 * * *", day),
            // Twice a day, unevenly: the short gap counts.
            ("0 2,4 * * *", Duration::from_secs(7200)),
            // February, in the years after 2024.
            ("0 0 1 * *", 28 * day),
            ("0 0 29 2 *", 4 * 365 * day + day),
            ("0 0 * * 1,2", day),
        ] {
            let s = Schedule::parse(text).expect("parse");
            assert_eq!(s.shortest_interval(), Some(want), "{text}");
        }
    }

    fn cfg() -> SchedulerConfig {
        crate::config::Config::defaults()
            .expect("defaults")
            .scheduler
    }

    #[test]
    fn the_defaults_are_every_job_on_without_jitter() {
        let specs = specs(&cfg()).expect("valid");
        let got: Vec<(JobName, String)> = specs
            .iter()
            .map(|s| {
                (
                    s.name,
                    s.schedule.as_ref().expect("on").as_configured().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (JobName::Backup, "0 2 * * *".to_owned()),
                (JobName::Verify, "0 4 * * *".to_owned()),
                (JobName::Retention, "30 3 * * *".to_owned()),
                (JobName::Lifecycle, "15 * * * *".to_owned()),
                (JobName::VolumeUsage, "*/5 * * * *".to_owned()),
                (JobName::VolumeMaintenance, "45 3 * * *".to_owned()),
                (JobName::HealthSummary, "* * * * *".to_owned()),
            ]
        );
        assert!(specs.iter().all(|s| s.jitter.is_zero()));
    }

    #[test]
    fn each_bad_value_names_its_key_and_off_turns_a_job_off() {
        let mut c = cfg();
        c.backup = "0 0 2 * * *".into();
        c.lifecycle = "OFF".into();
        c.jitter.lifecycle = Duration::from_secs(7200);
        c.jitter.volume_usage = Duration::from_secs(300);
        c.jitter.backup = Duration::from_secs(600);
        c.jitter.verify = Duration::from_secs(3600);
        let errors = specs(&c).expect_err("bad");
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        // backup's cron is refused (its jitter is not judged against a schedule it lacks);
        // lifecycle is off (its jitter does not matter); five minutes is not below five
        // minutes; an hour is below a day.
        assert_eq!(keys, ["scheduler.backup", "scheduler.jitter.volume_usage"]);
        assert!(errors[0].reason.contains("six fields"), "{}", errors[0]);
        assert!(errors[1].reason.contains("5m"), "{}", errors[1]);

        c.backup = "0 2 * * *".into();
        c.jitter.volume_usage = Duration::from_secs(299);
        let specs = specs(&c).expect("valid");
        assert!(specs[JobName::Lifecycle as usize].schedule.is_none());
        assert_eq!(
            specs[JobName::Backup as usize].jitter,
            Duration::from_secs(600)
        );
    }
}
