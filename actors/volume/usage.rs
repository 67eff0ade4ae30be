//! The actor's usage cache and threshold state. A walk's figure is reused for
//! `volumes.usage_max_age` and adjusted by the actor's own writes (no walk for them), so a
//! large volume is not re-walked on every probe; every new figure is checked against the
//! warning threshold, with hysteresis ([`threshold_step`]), and raises the threshold events.

use tokio::time::Instant;

use super::{Usage, VolumeActor, VolumeName};
use crate::events::{self, VolumeThresholdCleared, VolumeThresholdCrossed};

/// A threshold change for one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdChange {
    Crossed,
    Cleared,
}

/// Whether usage at `percent` changes a volume's warning state: crossing up at `warn`, and
/// clearing only below `clear` (< `warn`), so usage hovering at the line raises one event, not
/// a flood.
pub fn threshold_step(above: bool, percent: f64, warn: u8, clear: u8) -> Option<ThresholdChange> {
    if !above && percent >= f64::from(warn) {
        Some(ThresholdChange::Crossed)
    } else if above && percent < f64::from(clear) {
        Some(ThresholdChange::Cleared)
    } else {
        None
    }
}

/// `bytes` as a percentage of `quota` (a quota of 0 is full).
pub(super) fn percent(bytes: u64, quota: u64) -> f64 {
    if quota == 0 {
        100.0
    } else {
        bytes as f64 * 100.0 / quota as f64
    }
}

/// A measured usage and what the actor's own writes have added since.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measured {
    usage: Usage,
    /// When the volume was last walked (adjustments do not move this).
    walked_at: Instant,
}

impl VolumeActor {
    /// Usage measured within `volumes.usage_max_age` (with the actor's own writes since).
    pub(super) fn fresh_usage(&self, name: &VolumeName) -> Option<Usage> {
        let m = self.usage.get(name)?;
        let age = m.walked_at.elapsed();
        (age <= self.settings.usage_max_age).then_some(Usage {
            age_ms: age.as_millis() as u64,
            ..m.usage
        })
    }

    /// Records a walk's result and emits the threshold events it implies.
    pub(super) fn record_walk(&mut self, name: &VolumeName, usage: Usage) {
        self.usage.insert(
            name.clone(),
            Measured {
                usage,
                walked_at: Instant::now(),
            },
        );
        crate::metrics::volume_usage(name.as_str(), usage.tally.bytes, usage.quota_bytes);
        self.check_threshold(name, usage.percent);
        self.history_dirty |= self.history.record(name, &usage, self.clock.as_ref());
        self.check_filling(name, &usage);
    }

    fn check_threshold(&mut self, name: &VolumeName, percent: f64) {
        let above = self.above.contains(name);
        match threshold_step(above, percent, self.settings.warn, self.settings.clear) {
            Some(ThresholdChange::Crossed) => {
                self.above.insert(name.clone());
                events::emit(VolumeThresholdCrossed {
                    volume: name.to_string(),
                    percent: percent.round() as u64,
                    warn_percent: u64::from(self.settings.warn),
                });
            }
            Some(ThresholdChange::Cleared) => {
                self.above.remove(name);
                events::emit(VolumeThresholdCleared {
                    volume: name.to_string(),
                    percent: percent.round() as u64,
                });
            }
            None => {}
        }
    }

    /// Adds the daemon's own writes to the measured usage. Incremental: the walk is not
    /// repeated for them, and the walk's time stays that of the walk, so outside changes are
    /// still picked up.
    pub(super) fn add_usage(&mut self, name: &VolumeName, bytes: i64, apparent: i64, files: i64) {
        if let Some(m) = self.usage.get_mut(name) {
            let t = &mut m.usage.tally;
            t.bytes = t.bytes.saturating_add_signed(bytes);
            t.apparent_bytes = t.apparent_bytes.saturating_add_signed(apparent);
            t.files = t.files.saturating_add_signed(files);
            m.usage.percent = percent(t.bytes, m.usage.quota_bytes);
            crate::metrics::volume_usage(name.as_str(), t.bytes, m.usage.quota_bytes);
            let p = m.usage.percent;
            self.check_threshold(name, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_cross_once_and_clear_with_hysteresis() {
        use ThresholdChange::*;
        let series = [50.0, 79.9, 80.0, 85.0, 79.0, 76.0, 80.5, 74.9, 74.0, 81.0];
        let mut above = false;
        let mut changes = Vec::new();
        for p in series {
            if let Some(c) = threshold_step(above, p, 80, 75) {
                above = c == Crossed;
                changes.push((p, c));
            }
        }
        assert_eq!(changes, [(80.0, Crossed), (74.9, Cleared), (81.0, Crossed)]);
    }
}
