//! What each job does once its run starts: a message to the actor that owns the work, through
//! that actor's handle — the scheduler never opens a connection or touches a store's files
//! itself — and the answer turned into a run's outcome and a one-line detail.
//!
//! | job | message | to |
//! | --- | --- | --- |
//! | `backup` | `StartBackup { trigger: schedule }`, then `BackupStatus` until it ends | backup |
//! | `verify` | `ListBackups`, then `VerifyBackup` at `backup.min_level` for each backup newer than the newest one at that level | backup |
//! | `retention` | `PruneBackups` | backup |
//! | `lifecycle` | `ApplyLifecycle` with the indices a verified backup holds ([`BackedUpIndices`]) | search |
//! | `volume_usage` | `CheckThresholds`, then `VolumeStats` (the I/O figures on `/metrics`) | volume |
//! | `volume_maintenance` | `Maintain` | volume |
//! | `health_summary` | reads the health registry; one `health.summary` event | — |
//!
//! A job whose actor does not run in this process (the backup part in a sibling,
//! Elasticsearch turned off) is skipped (`not_running`), not failed: there is nothing to do.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::job::JobName;
use super::records::RunOutcome;
use crate::backup::{
    BackupHandle, BackupId, BackupOutcome, BackupStatus, Entry, Level, ListBackups, PruneBackups,
    RunStatus, StartBackup, Trigger, VerifyBackup,
};
use crate::events::{self, HealthSummary};
use crate::health::HealthRegistry;
use crate::search::{ApplyLifecycle, SearchHandle};
use crate::volume::{CheckThresholds, Maintain, VolumeHandle, VolumeStats};

/// Which indices a verified backup holds: the lifecycle's deletion gate (an index old enough
/// to delete is deleted only when it is in this set). The backup actor answers it
/// (`BackupHandle::backed_up_indices_gate`: `BackedUpIndices` at `backup.min_level`); where
/// the backup part does not run, `None` and the lifecycle deletes nothing.
pub type BackedUpIndices =
    Arc<dyn Fn() -> BoxFuture<'static, Result<BTreeSet<String>, String>> + Send + Sync>;

/// The actors the jobs send their work to; `None` where that part does not run here.
#[derive(Clone, Default)]
pub struct Peers {
    pub registry: HealthRegistry,
    pub backup: Option<BackupHandle>,
    pub search: Option<SearchHandle>,
    pub volumes: Option<VolumeHandle>,
    /// **The lifecycle's deletion gate.** With `None` (no backup part here) the lifecycle job
    /// plans with an empty set, so no index is ever deleted (each one old enough is kept and
    /// reported `not_backed_up`), whatever `elasticsearch.lifecycle_delete` says.
    pub backed_up_indices: Option<BackedUpIndices>,
}

/// What the work needs besides the peers.
#[derive(Clone)]
pub(super) struct Settings {
    /// `backup.min_level`, resolved: what the verify job verifies to.
    pub min_level: Level,
    /// How often a running backup's status is asked for.
    pub backup_poll: Duration,
    /// How long a lifecycle run may take (force-merges of large indices take hours on a Pi).
    pub lifecycle_deadline: Duration,
}

/// How a run's work ended: its outcome, and a line saying what it did.
pub(super) struct Ended {
    pub outcome: RunOutcome,
    pub detail: String,
    /// For the `job.failed` event: the failing actor's code, as a static string.
    pub code: &'static str,
}

fn ok(detail: String) -> Ended {
    Ended {
        outcome: RunOutcome::Ok,
        detail,
        code: "",
    }
}

fn failed(code: &'static str, error: String) -> Ended {
    Ended {
        outcome: RunOutcome::Failed {
            code: code.to_owned(),
            error: error.clone(),
        },
        detail: String::new(),
        code,
    }
}

fn not_running(what: &str) -> Ended {
    Ended {
        outcome: RunOutcome::Skipped {
            why: "not_running".to_owned(),
        },
        detail: format!("{what} does not run in this process"),
        code: "not_running",
    }
}

/// Runs `job`'s work to its end.
pub(super) async fn run(job: JobName, peers: Peers, settings: Settings) -> Ended {
    match job {
        JobName::Backup => match &peers.backup {
            Some(b) => backup(b, settings.backup_poll).await,
            None => not_running("the backup part"),
        },
        JobName::Verify => match &peers.backup {
            Some(b) => verify(b, settings.min_level).await,
            None => not_running("the backup part"),
        },
        JobName::Retention => match &peers.backup {
            Some(b) => retention(b).await,
            None => not_running("the backup part"),
        },
        JobName::Lifecycle => match &peers.search {
            Some(s) => {
                lifecycle(
                    s,
                    peers.backed_up_indices.as_ref(),
                    settings.lifecycle_deadline,
                )
                .await
            }
            None => not_running("Elasticsearch"),
        },
        JobName::VolumeUsage => match &peers.volumes {
            Some(v) => volume_usage(v).await,
            None => not_running("the volumes part"),
        },
        JobName::VolumeMaintenance => match &peers.volumes {
            Some(v) => volume_maintenance(v).await,
            None => not_running("the volumes part"),
        },
        JobName::HealthSummary => health_summary(&peers.registry),
    }
}

async fn backup(backup: &BackupHandle, poll: Duration) -> Ended {
    let id = match backup
        .call(StartBackup {
            stores: vec![],
            trigger: Trigger::Schedule,
        })
        .await
    {
        Ok(id) => id,
        Err(e) => return failed(e.code(), e.to_string()),
    };
    // The run goes on in the backup actor; the job's run lasts as long (no overlap).
    let report = loop {
        tokio::time::sleep(poll).await;
        match backup.call(BackupStatus { id }).await {
            Ok(RunStatus::Finished(report)) => break report,
            Ok(RunStatus::Running { .. }) => {}
            Err(e) => return failed(e.code(), format!("backup {id}: {e}")),
        }
    };
    let stored = format!("{} bytes stored", report.bytes_stored);
    match report.outcome {
        BackupOutcome::Complete => ok(format!("backup {id} complete, {stored}")),
        BackupOutcome::Partial => {
            let failed_stores: Vec<&str> = report
                .stores
                .iter()
                .filter(|(_, s)| matches!(s.outcome, crate::backup::Outcome::Failed { .. }))
                .map(|(name, _)| name.as_str())
                .collect();
            Ended {
                detail: format!("backup {id} partial, {stored}"),
                ..failed(
                    "partial",
                    format!(
                        "backup {id} is partial: {} failed, the rest is complete and usable",
                        failed_stores.join(", ")
                    ),
                )
            }
        }
        BackupOutcome::Failed => match report.error {
            Some(e) => failed(e.code(), format!("backup {id}: {e}")),
            None => failed("nothing_backed_up", format!("backup {id} failed")),
        },
    }
}

/// The backups to verify, newest first: each one newer than the newest backup already at
/// `min_level` that is not at it itself.
pub(super) fn to_verify(entries: &[Entry], min_level: Level) -> Vec<BackupId> {
    let mut newest_first: Vec<&Entry> = entries.iter().collect();
    newest_first.sort_by_key(|e| std::cmp::Reverse((e.manifest.created, e.manifest.id)));
    newest_first
        .into_iter()
        .take_while(|e| e.effective_level().is_none_or(|l| l < min_level))
        .map(|e| e.manifest.id)
        .collect()
}

async fn verify(backup: &BackupHandle, min_level: Level) -> Ended {
    let entries = match backup.call(ListBackups).await {
        Ok(entries) => entries,
        Err(e) => return failed(e.code(), e.to_string()),
    };
    let ids = to_verify(&entries, min_level);
    if ids.is_empty() {
        return ok(format!("every backup is at {} already", min_level.as_str()));
    }
    let mut passed = Vec::new();
    let mut problems = Vec::new();
    let mut first_code = None;
    // One after another: each reads every artifact of its backup.
    for id in ids {
        match backup
            .call(VerifyBackup {
                id,
                level: min_level,
                identity: None,
            })
            .await
        {
            Ok(report) if report.passed() => passed.push(id.to_string()),
            Ok(report) => {
                first_code.get_or_insert("verify_failed");
                let why = report
                    .first_failure
                    .map(|(artifact, code, message)| format!("{artifact} ({code}): {message}"))
                    .unwrap_or_else(|| "failed".to_owned());
                problems.push(format!("{id}: {why}"));
            }
            Err(e) => {
                first_code.get_or_insert(e.code());
                problems.push(format!("{id}: {e}"));
            }
        }
    }
    let verified = format!(
        "verified at {}: {}",
        min_level.as_str(),
        if passed.is_empty() {
            "none".to_owned()
        } else {
            passed.join(", ")
        }
    );
    match first_code {
        None => ok(verified),
        Some(code) => Ended {
            detail: verified,
            ..failed(code, problems.join("; "))
        },
    }
}

async fn retention(backup: &BackupHandle) -> Ended {
    match backup.call(PruneBackups { dry_run: false }).await {
        Ok(report) => ok(format!(
            "deleted {}, kept {}, {} bytes freed",
            report.deleted.len(),
            report.backups.len() - report.deleted.len(),
            report.bytes_freed
        )),
        Err(e) => failed(e.code(), e.to_string()),
    }
}

async fn lifecycle(
    search: &SearchHandle,
    gate: Option<&BackedUpIndices>,
    deadline: Duration,
) -> Ended {
    let backed_up = match gate {
        // Until #12: nothing counts as backed up, so nothing is deleted.
        None => BTreeSet::new(),
        Some(gate) => match gate().await {
            Ok(set) => set,
            Err(e) => {
                return failed(
                    "backed_up_unknown",
                    format!("which indices are backed up: {e}"),
                );
            }
        },
    };
    match search
        .call_within(
            ApplyLifecycle {
                backed_up,
                at: None,
            },
            deadline,
        )
        .await
    {
        Ok(report) => {
            let detail = format!(
                "applied {}, failed {}, kept {}, unparseable {}",
                report.applied, report.failed, report.kept, report.unparseable
            );
            if report.failed > 0 {
                let errors: Vec<String> = report
                    .actions
                    .iter()
                    .filter_map(|(index, action, e)| {
                        e.as_ref().map(|e| format!("{action} {index}: {e}"))
                    })
                    .collect();
                Ended {
                    detail,
                    ..failed("transition_failed", errors.join("; "))
                }
            } else {
                ok(detail)
            }
        }
        Err(e) => failed(e.code(), e.to_string()),
    }
}

async fn volume_usage(volumes: &VolumeHandle) -> Ended {
    let ended = match volumes.call(CheckThresholds).await {
        Ok(above) if above.is_empty() => ok("every volume below its warning threshold".into()),
        Ok(above) => ok(format!(
            "above the warning threshold: {}",
            above
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(e) => return failed(e.code(), e.to_string()),
    };
    // One I/O sample of every volume refreshes their figures on /metrics (and the probes that
    // raise volume.slow_io); a scrape never waits on a sample. Its failure is the usage
    // check's detail, not the job's: the thresholds were checked.
    match volumes
        .call(VolumeStats {
            name: None,
            interval: IO_SAMPLE,
        })
        .await
    {
        Ok(_) => ended,
        Err(e) => ok(format!("{}; no I/O sample: {e}", ended.detail)),
    }
}

/// The interval of the `volume_usage` job's I/O sample (the most `VolumeStats` takes).
const IO_SAMPLE: Duration = Duration::from_secs(1);

async fn volume_maintenance(volumes: &VolumeHandle) -> Ended {
    match volumes.call(Maintain).await {
        Ok(report) => {
            let c = &report.cleaned;
            let detail = format!(
                "{} volumes: removed {} files ({} bytes) and {} leftovers",
                report.volumes, c.removed_files, c.removed_bytes, c.removed_leftovers
            );
            match report.failed.first() {
                None => ok(detail),
                Some(first) => {
                    let errors: Vec<String> = report
                        .failed
                        .iter()
                        .map(|f| format!("{} ({}): {}", f.volume, f.code, f.error))
                        .collect();
                    Ended {
                        detail,
                        ..failed(first.code, errors.join("; "))
                    }
                }
            }
        }
        Err(e) => failed(e.code(), e.to_string()),
    }
}

fn health_summary(registry: &HealthRegistry) -> Ended {
    let snapshot = registry.snapshot();
    let up = snapshot.iter().filter(|s| s.is_up()).count() as u64;
    let summary = registry.summary();
    events::emit(HealthSummary {
        up,
        total: snapshot.len() as u64,
        summary: summary.clone(),
    });
    ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{Encryption, LevelResult, Manifest, VerifyRecord};

    fn entry(created: &str, level: Option<Level>) -> Entry {
        let created = crate::clock::at(created);
        let id = BackupId::new(created);
        let verify = level.map(|level| {
            let mut record = VerifyRecord::new(id);
            record.record(
                level,
                LevelResult::from_checks(created, std::collections::BTreeMap::new()),
            );
            record
        });
        Entry {
            manifest: Manifest::new(
                id,
                created,
                "pi",
                Trigger::Schedule,
                Encryption::default(),
                crate::config::Compression::Zstd,
            ),
            verify,
            pins: None,
        }
    }

    #[test]
    fn verify_takes_every_backup_newer_than_the_newest_good_one() {
        use Level::{Checksummed, Decoded};
        let entries = [
            entry("2026-11-01T02:00:00Z", Some(Decoded)),
            entry("2026-11-02T02:00:00Z", None),
            entry("2026-11-03T02:00:00Z", Some(Decoded)),
            entry("2026-11-04T02:00:00Z", Some(Checksummed)),
            entry("2026-11-05T02:00:00Z", None),
        ];
        let ids = |slice: &[usize]| -> Vec<BackupId> {
            slice.iter().map(|&i| entries[i].manifest.id).collect()
        };
        // At decoded: the 5th and the 4th (checksummed only), newest first; the 2nd is older
        // than a good copy and left alone.
        assert_eq!(to_verify(&entries, Decoded), ids(&[4, 3]));
        // At checksummed: only the 5th.
        assert_eq!(to_verify(&entries, Checksummed), ids(&[4]));
        assert!(to_verify(&entries[..1], Decoded).is_empty());
        assert_eq!(to_verify(&entries[1..2], Decoded), ids(&[1]));
        assert!(to_verify(&[], Decoded).is_empty());
    }
}
