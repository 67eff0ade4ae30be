//! Time to full: the usage samples of every walk (the scheduler's `volume_usage` job takes one
//! every 5 minutes), kept bounded — at most one per [`SPACING`], none older than
//! [`KEEP_FOR`] — and a straight-line trend over the last [`WINDOW`] (least squares) that
//! predicts when a volume reaches its quota and when its filesystem fills. Too few points, or
//! a trend that is flat or falling, predicts nothing ("not growing"): a forecast from a
//! handful of samples or a single burst would cry wolf.
//!
//! Pure data and arithmetic over a [`Clock`], so the tests move time themselves; the actor
//! keeps the [`History`], saves it under the state directory and raises `volume.filling`.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{Usage, VolumeName, events};
use crate::clock::Clock;

/// The span a trend is fitted over.
pub const WINDOW: Duration = Duration::days(7);
/// A walk sooner than this after the last kept sample is not kept.
pub const SPACING: Duration = Duration::minutes(30);
/// Samples older than this go.
pub const KEEP_FOR: Duration = Duration::days(8);
/// A trend needs this many samples in the window…
pub const MIN_POINTS: usize = 3;
/// …spread over at least this long.
pub const MIN_SPAN: Duration = Duration::hours(1);

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Saved as seconds since the epoch.
    #[serde(with = "unix_seconds")]
    pub at: DateTime<Utc>,
    /// The volume's data (allocated bytes, what the quota counts).
    pub bytes: u64,
    /// What its filesystem has in use (total − free).
    pub fs_used: u64,
}

mod unix_seconds {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(at.timestamp())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let secs = i64::deserialize(d)?;
        DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| serde::de::Error::custom(format!("{secs} is not a time")))
    }
}

/// What a trend predicts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "trend", rename_all = "snake_case")]
pub enum Forecast {
    /// Fewer than [`MIN_POINTS`] samples over [`MIN_SPAN`] in the window.
    TooFewPoints,
    /// Flat or shrinking.
    NotGrowing,
    Growing {
        /// Bytes a day the volume grows by.
        bytes_per_day: f64,
        /// Seconds until it reaches its quota (0: there already).
        quota_full_in_s: u64,
        /// Seconds until its filesystem is full, if the filesystem grows too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fs_full_in_s: Option<u64>,
    },
}

impl Forecast {
    /// The sooner of the two fill times, in seconds.
    pub fn full_in_s(&self) -> Option<u64> {
        match *self {
            Forecast::Growing {
                quota_full_in_s,
                fs_full_in_s,
                ..
            } => Some(fs_full_in_s.map_or(quota_full_in_s, |f| f.min(quota_full_in_s))),
            _ => None,
        }
    }

    /// "full in ~12 days", "not growing", "too few samples".
    pub fn describe(&self) -> String {
        match self.full_in_s() {
            Some(s) if s < 3600 => "full within the hour".to_owned(),
            Some(s) if s < 2 * 86_400 => format!("full in ~{} hours", s / 3600),
            Some(s) => format!("full in ~{} days", (s + 43_200) / 86_400),
            None if *self == Forecast::NotGrowing => "not growing".to_owned(),
            None => "too few samples".to_owned(),
        }
    }
}

/// The slope (units per second) of the least-squares line through `points` (seconds, value).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(x, y), (px, py)| (x + px / n, y + py / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

/// Seconds until `remaining` bytes are used at `per_s` bytes a second (`None`: not growing).
fn time_to(remaining: u64, per_s: f64) -> Option<u64> {
    // Under a byte a minute is noise, not growth.
    (per_s > 1.0 / 60.0).then(|| (remaining as f64 / per_s).round() as u64)
}

/// The forecast from `samples` (oldest first) at `now`, against `quota` and the filesystem's
/// `fs_free` bytes.
pub fn forecast(samples: &[Sample], now: DateTime<Utc>, quota: u64, fs_free: u64) -> Forecast {
    let recent: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at <= now && now - s.at <= WINDOW)
        .collect();
    let (Some(first), Some(last)) = (recent.first(), recent.last()) else {
        return Forecast::TooFewPoints;
    };
    if recent.len() < MIN_POINTS || last.at - first.at < MIN_SPAN {
        return Forecast::TooFewPoints;
    }
    let secs = |s: &Sample| (s.at - first.at).num_milliseconds() as f64 / 1000.0;
    let data: Vec<(f64, f64)> = recent.iter().map(|s| (secs(s), s.bytes as f64)).collect();
    let fs: Vec<(f64, f64)> = recent.iter().map(|s| (secs(s), s.fs_used as f64)).collect();
    let per_s = slope(&data);
    let Some(quota_full_in_s) = time_to(quota.saturating_sub(last.bytes), per_s) else {
        return Forecast::NotGrowing;
    };
    Forecast::Growing {
        bytes_per_day: per_s * 86_400.0,
        quota_full_in_s,
        fs_full_in_s: time_to(fs_free, slope(&fs)),
    }
}

/// Every volume's recent samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub volumes: BTreeMap<VolumeName, VecDeque<Sample>>,
}

impl History {
    /// Records a walk of `name` at the clock's time; answers whether a sample was kept, i.e.
    /// whether the history is worth saving again.
    pub fn record(&mut self, name: &VolumeName, usage: &Usage, clock: &dyn Clock) -> bool {
        let now = clock.now();
        let sample = Sample {
            at: now,
            bytes: usage.tally.bytes,
            fs_used: usage.fs.total_bytes.saturating_sub(usage.fs.free_bytes),
        };
        let series = self.volumes.entry(name.clone()).or_default();
        // A clock set back (NTP at boot): what lies in the future is dropped.
        while series.back().is_some_and(|s| s.at > now) {
            series.pop_back();
        }
        while series.front().is_some_and(|s| now - s.at > KEEP_FOR) {
            series.pop_front();
        }
        // Thinned: a walk sooner than SPACING after the last kept sample adds nothing.
        if series.back().is_some_and(|s| now - s.at < SPACING) {
            return false;
        }
        series.push_back(sample);
        true
    }

    /// The forecast of `name` at the clock's time.
    pub fn forecast(
        &self,
        name: &VolumeName,
        quota: u64,
        fs_free: u64,
        clock: &dyn Clock,
    ) -> Forecast {
        let samples: Vec<Sample> = self
            .volumes
            .get(name)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        forecast(&samples, clock.now(), quota, fs_free)
    }

    pub fn forget(&mut self, name: &VolumeName) {
        self.volumes.remove(name);
    }
}

/// Whether a volume's fill warning changes: raised when its forecast drops under `warning`,
/// re-armed only once it is back above 1.5 × `warning` or no longer growing (hysteresis, as
/// for the usage thresholds), so a forecast hovering at the line raises one event.
pub fn filling_step(
    warned: bool,
    forecast: &Forecast,
    warning: std::time::Duration,
) -> Option<bool> {
    let warn_s = warning.as_secs();
    match forecast.full_in_s() {
        Some(s) if !warned && s < warn_s => Some(true),
        Some(s) if warned && s > warn_s + warn_s / 2 => Some(false),
        None if warned => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// On the actor

impl super::VolumeActor {
    /// The forecast of `name` with its latest usage.
    pub(super) fn forecast_of(&self, name: &VolumeName, usage: &Usage) -> Forecast {
        self.history.forecast(
            name,
            usage.quota_bytes,
            usage.fs.free_bytes,
            self.clock.as_ref(),
        )
    }

    /// Raises `volume.filling` when the forecast of `name` drops under `volumes.fill_warning`.
    pub(super) fn check_filling(&mut self, name: &VolumeName, usage: &Usage) {
        let f = self.forecast_of(name, usage);
        let warned = self.filling.contains(name);
        match filling_step(warned, &f, self.settings.fill_warning) {
            Some(true) => {
                self.filling.insert(name.clone());
                let limit = match f {
                    Forecast::Growing {
                        quota_full_in_s,
                        fs_full_in_s: Some(fs),
                        ..
                    } if fs < quota_full_in_s => "filesystem",
                    _ => "quota",
                };
                events::emit(events::VolumeFilling {
                    volume: name.to_string(),
                    full_in_hours: f.full_in_s().unwrap_or(0) / 3600,
                    limit: limit.to_owned(),
                });
            }
            Some(false) => {
                self.filling.remove(name);
            }
            None => {}
        }
    }

    /// Saves the samples (on the blocking pool) when some were added since the last save.
    pub(super) fn save_history(&mut self) {
        let Some(file) = self.settings.history_file.clone() else {
            return;
        };
        if !std::mem::take(&mut self.history_dirty) {
            return;
        }
        let history = self.history.clone();
        self.history_saves.0 += 1;
        let (this, newest) = (self.history_saves.0, self.history_saves.1.clone());
        tokio::task::spawn_blocking(move || {
            // Held across the write: saves take turns, and a later one has already won.
            let mut written = newest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *written > this {
                return;
            }
            *written = this;
            let saved = serde_json::to_vec(&history)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    if let Some(dir) = file.parent() {
                        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                    }
                    super::fsops::write_atomic(&file, &bytes, 0o640).map_err(|e| e.to_string())
                });
            if let Err(e) = saved {
                tracing::warn!(file = %file.display(), error = %e, "cannot save the volumes' usage samples");
            }
        });
    }
}

/// The samples saved earlier (none when there is no file or it does not parse: a forecast
/// starts over, nothing else depends on it).
pub(super) fn load(file: Option<&std::path::Path>) -> History {
    let Some(file) = file else {
        return History::default();
    };
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %file.display(), error = %e, "usage samples unreadable; forecasts start over");
            History::default()
        }),
        Err(_) => History::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::volume::fsops::{FsStats, Tally};

    const GIB: u64 = 1 << 30;

    fn usage(bytes: u64, fs_free: u64) -> Usage {
        Usage {
            tally: Tally {
                bytes,
                ..Tally::default()
            },
            quota_bytes: 10 * GIB,
            percent: 0.0,
            fs: FsStats {
                total_bytes: 100 * GIB,
                free_bytes: fs_free,
                ..FsStats::default()
            },
            age_ms: 0,
            snapshot_bytes: 0,
        }
    }

    /// Records `days` days of samples every 5 minutes, the volume growing by `per_day` bytes a
    /// day from 1 GiB (the filesystem by the same), and answers the forecast at the end.
    fn series(per_day: i64, days: i64) -> (Forecast, History) {
        let clock = ManualClock::new(
            DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
                .expect("time")
                .with_timezone(&Utc),
        );
        let name = VolumeName::new("chunks").expect("name");
        let mut history = History::default();
        let steps = days * 24 * 12;
        let mut bytes = GIB as i64;
        for _ in 0..=steps {
            let free = (50 * GIB as i64 - (bytes - GIB as i64)) as u64;
            history.record(&name, &usage(bytes as u64, free), &clock);
            clock.advance(Duration::minutes(5));
            bytes += per_day / (24 * 12);
        }
        clock.advance(Duration::minutes(-5));
        let last = history.volumes[&name].back().copied().expect("a sample");
        let free = 100 * GIB - last.fs_used;
        (history.forecast(&name, 10 * GIB, free, &clock), history)
    }

    #[test]
    fn a_growing_volume_is_forecast_to_fill_its_quota() {
        // 1 GiB a day from 1 GiB: after 3 days at 4 GiB, 6 GiB left: ~6 days.
        let (f, history) = series(GIB as i64, 3);
        let Forecast::Growing {
            bytes_per_day,
            quota_full_in_s,
            fs_full_in_s,
        } = f
        else {
            panic!("{f:?}");
        };
        assert!(
            (bytes_per_day / GIB as f64 - 1.0).abs() < 0.01,
            "{bytes_per_day}"
        );
        let days = quota_full_in_s as f64 / 86_400.0;
        assert!((days - 6.0).abs() < 0.05, "{days}");
        // The filesystem: 47 GiB free at 1 GiB a day.
        let fs_days = fs_full_in_s.expect("fs grows") as f64 / 86_400.0;
        assert!((fs_days - 47.0).abs() < 0.5, "{fs_days}");
        assert_eq!(f.describe(), "full in ~6 days");
        // Bounded: one sample per 30 minutes, nothing older than 8 days.
        let kept = history.volumes.values().next().expect("series").len();
        assert!(kept <= 3 * 48 + 2, "{kept}");
    }

    #[test]
    fn flat_and_shrinking_volumes_are_not_growing() {
        assert_eq!(series(0, 3).0, Forecast::NotGrowing);
        assert_eq!(series(-(GIB as i64) / 10, 3).0, Forecast::NotGrowing);
        assert_eq!(Forecast::NotGrowing.describe(), "not growing");
    }

    #[test]
    fn too_few_points_predict_nothing() {
        // One sample; then three within 10 minutes: a burst, not a trend.
        assert_eq!(series(GIB as i64, 0).0, Forecast::TooFewPoints);
        let now = Utc::now();
        let burst: Vec<Sample> = (0..3)
            .map(|i| Sample {
                at: now - Duration::minutes(10 - 5 * i),
                bytes: i as u64 * GIB,
                fs_used: 0,
            })
            .collect();
        assert_eq!(forecast(&burst, now, 10 * GIB, GIB), Forecast::TooFewPoints);
        assert_eq!(forecast(&[], Utc::now(), GIB, GIB), Forecast::TooFewPoints);
        let now = Utc::now();
        let two = [
            Sample {
                at: now - Duration::hours(5),
                bytes: 1,
                fs_used: 1,
            },
            Sample {
                at: now,
                bytes: GIB,
                fs_used: GIB,
            },
        ];
        assert_eq!(forecast(&two, now, 2 * GIB, GIB), Forecast::TooFewPoints);
    }

    #[test]
    fn old_samples_fall_out_of_the_window() {
        // Fast growth long ago, flat for the last 7 days: not growing.
        let now = Utc::now();
        let mut samples: Vec<Sample> = (0..10)
            .map(|i| Sample {
                at: now - Duration::days(20) + Duration::hours(i),
                bytes: i as u64 * GIB,
                fs_used: 0,
            })
            .collect();
        samples.extend((0..10).map(|i| Sample {
            at: now - Duration::days(6) + Duration::hours(i * 12),
            bytes: 5 * GIB,
            fs_used: 0,
        }));
        assert_eq!(forecast(&samples, now, 10 * GIB, GIB), Forecast::NotGrowing);
    }

    #[test]
    fn filling_fires_once_and_rearms_with_hysteresis() {
        let week = std::time::Duration::from_secs(7 * 86_400);
        let grow = |days: u64| Forecast::Growing {
            bytes_per_day: 1.0,
            quota_full_in_s: days * 86_400,
            fs_full_in_s: None,
        };
        let mut warned = false;
        let mut fired = 0;
        for f in [
            grow(20),
            grow(6),
            grow(5),
            grow(8),
            grow(6),
            grow(11),
            grow(3),
        ] {
            if let Some(now) = filling_step(warned, &f, week) {
                warned = now;
                fired += u32::from(now);
            }
        }
        // 6 → fires; 5, 8, 6 → inside the band; 11 → re-armed; 3 → fires again.
        assert_eq!(fired, 2);
        assert_eq!(filling_step(true, &Forecast::NotGrowing, week), Some(false));
    }
}
