//! [`Maintain`]: the scheduler's `volume_maintenance` job on the volume actor — every volume's
//! cleanup (its `volumes.cleanup_patterns` files and the transient files of interrupted writes
//! older than `volumes.cleanup_age`, and the leftovers of interrupted imports, migrations and
//! deletes beside it), each under the volume's lock as `CleanupVolume` takes it, then a fresh
//! walk of its usage, which also checks its threshold; then its snapshot retention
//! (`volumes.snapshots.keep`), and for the volumes of `volumes.verify_on_maintenance` an
//! integrity verify against their manifest (sealing one where there is none). One volume's
//! failure (its lock is held, its directory is gone) is reported and the others go on; one
//! `volume.maintained` event says what the run did.

use actix::prelude::*;
use serde::Serialize;

use super::{
    CleanupReport, VerifyReport, VolumeActor, VolumeError, VolumeName, VolumeOp, cleanup, events,
    integrity, snapshot, store,
};

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
    /// Snapshots retention removed.
    pub snapshots_removed: u64,
    /// Volumes verified (`volumes.verify_on_maintenance`).
    pub verified: Vec<VolumeName>,
    /// Of those, the ones that did not match their manifest.
    pub mismatched: Vec<VolumeName>,
    /// The volumes that could not be cleaned or measured.
    pub failed: Vec<MaintenanceFailure>,
}

/// What maintenance did to one volume.
struct Done {
    cleaned: CleanupReport,
    removed: u64,
    verified: Option<VerifyReport>,
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
                            let removed = snapshot::retain(s, &name)?.len() as u64;
                            let verified: Option<VerifyReport> =
                                if s.verify_on_maintenance.contains(&name) {
                                    Some(integrity::verify(s, &name, false)?)
                                } else {
                                    None
                                };
                            let meta = store::fresh_meta(s, &name)?;
                            let usage = store::measure(s, &meta)?;
                            Ok::<_, VolumeError>((
                                meta,
                                Done {
                                    cleaned,
                                    removed,
                                    verified,
                                },
                                usage,
                            ))
                        })();
                        (name, done)
                    })
                    .collect::<Vec<_>>())
            },
            |act, res| {
                let mut report = MaintenanceReport::default();
                for (name, done) in res? {
                    match done {
                        Ok((meta, done, usage)) => {
                            act.remember(&meta);
                            act.record_walk(&name, usage);
                            report.volumes += 1;
                            let cleaned = done.cleaned;
                            report.cleaned.removed_files += cleaned.removed_files;
                            report.cleaned.removed_bytes += cleaned.removed_bytes;
                            report.cleaned.removed_leftovers += cleaned.removed_leftovers;
                            report.snapshots_removed += done.removed;
                            if let Some(v) = done.verified {
                                report.verified.push(name.clone());
                                if !v.clean() {
                                    events::emit(events::VolumeIntegrityMismatch {
                                        volume: v.volume.clone(),
                                        added: v.added.len() as u64,
                                        missing: v.missing.len() as u64,
                                        changed: v.changed.len() as u64,
                                    });
                                    report.mismatched.push(name.clone());
                                }
                            }
                        }
                        Err(e) => report.failed.push(MaintenanceFailure {
                            volume: name.to_string(),
                            code: e.code(),
                            error: e.to_string(),
                        }),
                    }
                }
                act.save_history();
                report.above = act.above.iter().cloned().collect();
                events::emit(events::VolumeMaintained {
                    volumes: report.volumes,
                    removed_files: report.cleaned.removed_files,
                    removed_bytes: report.cleaned.removed_bytes,
                    removed_leftovers: report.cleaned.removed_leftovers,
                    snapshots_removed: report.snapshots_removed,
                    verified: report.verified.len() as u64,
                    mismatched: report.mismatched.len() as u64,
                    failed: report.failed.len() as u64,
                });
                Ok(report)
            },
        )
    }
}
