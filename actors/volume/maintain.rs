//! [`Maintain`]: the scheduler's `volume_maintenance` job on the volume actor — every volume's
//! cleanup (its `volumes.cleanup_patterns` files and the transient files of interrupted writes
//! older than `volumes.cleanup_age`, and the leftovers of interrupted imports, migrations and
//! deletes beside it), each under the volume's lock as `CleanupVolume` takes it, then a fresh
//! walk of its usage, which also checks its threshold. One volume's failure (its lock is held,
//! its directory is gone) is reported and the others go on. Issue #15 adds to it.

use super::*;

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
    type Result = Reply<MaintenanceReport>;

    fn handle(&mut self, _: Maintain, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.root_ok() {
            return ready(Err(e));
        }
        let names: Vec<VolumeName> = self.volumes.keys().cloned().collect();
        let s = self.settings();
        let work = blocking(move || {
            Ok(names
                .into_iter()
                .map(|name| {
                    let done = (|| {
                        let cleaned = {
                            let _lock = fsops::lock(
                                &lock_path(&s.root, &name),
                                name.as_str(),
                                "maintenance",
                                true,
                            )?;
                            cleanup(&s, &fresh_meta(&s, &name)?)?
                        };
                        let meta = fresh_meta(&s, &name)?;
                        let usage = measure(&s, &meta)?;
                        Ok::<_, VolumeError>((meta, cleaned, usage))
                    })();
                    (name, done)
                })
                .collect::<Vec<_>>())
        });
        Box::pin(work.into_actor(self).map(|res, act, _| {
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
        }))
    }
}
