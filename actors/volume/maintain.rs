//! [`Maintain`]: the scheduler's `volume_maintenance` job on the volume actor — every volume's
//! cleanup (its `volumes.cleanup_patterns` files and the transient files of interrupted writes
//! older than `volumes.cleanup_age`, and the leftovers of interrupted imports, migrations and
//! deletes beside it), each under the volume's lock as `CleanupVolume` takes it, then a fresh
//! walk of its usage, which also checks its threshold. One volume's failure (its lock is held,
//! its directory is gone) is reported and the others go on. Issue #15 adds to it.

use actix::prelude::*;
use serde::Serialize;

use super::{CleanupReport, VolumeActor, VolumeError, VolumeName, VolumeOp, cleanup, store};

/// Cleans up and measures every volume; see the module doc.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<MaintenanceReport, VolumeError>")]
pub struct Maintain;

impl VolumeOp for Maintain {
    type Output = MaintenanceReport;
    // It walks every volume.
    const LONG: bool = true;
}

/// What a maintenance run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MaintenanceReport {
    /// Volumes cleaned and measured.
    pub volumes: u64,
    /// What their cleanups removed, summed.
    pub cleaned: CleanupReport,
    /// Volumes above their warning threshold after the walk.
    pub above: Vec<VolumeName>,
    /// The volumes that could not be cleaned or measured.
    pub failed: Vec<MaintenanceFailure>,
}

/// One volume a maintenance run could not finish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaintenanceFailure {
    pub volume: String,
    pub code: &'static str,
    pub error: String,
}

impl Handler<Maintain> for VolumeActor {
    type Result = super::Reply<MaintenanceReport>;

    fn handle(&mut self, _: Maintain, _: &mut Context<Self>) -> Self::Result {
        let names: Vec<VolumeName> = self.volumes.keys().cloned().collect();
        self.on_disk(
            self.root_ok(),
            move |s| {
                Ok(names
                    .into_iter()
                    .map(|name| {
                        let done = (|| {
                            let cleaned = cleanup::run(s, &name)?;
                            let meta = store::fresh_meta(s, &name)?;
                            let usage = store::measure(s, &meta)?;
                            Ok::<_, VolumeError>((meta, cleaned, usage))
                        })();
                        (name, done)
                    })
                    .collect::<Vec<_>>())
            },
            |act, res| {
                let mut report = MaintenanceReport::default();
                for (name, done) in res? {
                    match done {
                        Ok((meta, cleaned, usage)) => {
                            act.remember(&meta);
                            act.record_walk(&name, usage);
                            report.volumes += 1;
                            report.cleaned.removed_files += cleaned.removed_files;
                            report.cleaned.removed_bytes += cleaned.removed_bytes;
                            report.cleaned.removed_leftovers += cleaned.removed_leftovers;
                        }
                        Err(e) => report.failed.push(MaintenanceFailure {
                            volume: name.to_string(),
                            code: e.code(),
                            error: e.to_string(),
                        }),
                    }
                }
                report.above = act.above.iter().cloned().collect();
                Ok(report)
            },
        )
    }
}
