//! Deleting backups and keeping them: the retention plan applied (`backup prune`), one backup
//! deleted by hand (`backup delete`), and pins (`backup pin` / `unpin`).
//!
//! Prune and delete hold the backup lock (no run or restore writes meanwhile, here or in
//! another process) and take each backup's reader file exclusively before deleting it
//! ([`super::readers`]): a backup a verify, restore or drill is reading is `in_use` and kept.
//! A deletion removes `manifest.json` first ([`Storage::delete_backup`]), so an interrupted
//! prune leaves an unlisted, incomplete backup that the next run's cleanup removes — never a
//! listed one with artifacts missing.
//!
//! Pins live in storage as `pins.json` beside the backup, so they survive a catalogue rebuild
//! and follow the bucket to a new Pi.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::time::Instant;

use super::catalogue::Entry;
use super::id::BackupId;
use super::manifest::{Level, Pin, PinRecord};
use super::readers::{Exclusive, ReadLock};
use super::retention::{self, Candidate, Decision, Policy, Reason};
use super::storage::{PINS, Storage};
use super::{BackupError, RunLock, Shared};
use crate::config::{BackupConfig, MinLevel};
use crate::events::{self, BackupDeleted, BackupPinned, BackupPruneRefused, BackupPruned};

/// The level a good copy must have reached: `backup.min_level`, with `auto` meaning `decoded`
/// when the daemon has an identity of its own (it can decode its backups) and `checksummed`
/// otherwise.
pub fn min_level(cfg: &BackupConfig) -> Level {
    match cfg.min_level {
        MinLevel::Auto if cfg.identity.is_some() => Level::Decoded,
        MinLevel::Auto | MinLevel::Checksummed => Level::Checksummed,
        MinLevel::Decoded => Level::Decoded,
        MinLevel::Drilled => Level::Drilled,
    }
}

/// The retention policy `[backup]` configures.
pub fn policy(cfg: &BackupConfig) -> Policy {
    Policy {
        retention_days: cfg.retention_days,
        keep_last: cfg.keep_last,
        keep_daily: cfg.keep_daily,
        keep_weekly: cfg.keep_weekly,
        keep_monthly: cfg.keep_monthly,
        min_level: min_level(cfg),
    }
}

/// One backup in a prune's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub id: BackupId,
    #[serde(with = "super::manifest::rfc3339")]
    pub created: DateTime<Utc>,
    pub keep: bool,
    pub reasons: Vec<Reason>,
    pub bytes_stored: u64,
    /// What the backup counts as (its verification).
    pub counts_as: Option<Level>,
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub min_level: Level,
    /// Every backup, newest first.
    pub backups: Vec<Planned>,
    /// Deleted (a dry run: would be).
    pub deleted: Vec<BackupId>,
    pub bytes_freed: u64,
}

/// What a `backup delete` did.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteReport {
    pub id: BackupId,
    pub bytes_stored: u64,
    /// The rules `--force` overrode (a pin, a newest good copy).
    pub overrode: Vec<Reason>,
}

fn stored_bytes(entry: &Entry) -> u64 {
    entry.manifest.artifacts().map(|a| a.bytes_stored).sum()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(BackupError::Interrupted {
            reason: format!("a blocking task failed: {e}"),
        })
    })
}

/// Applies the retention plan (see [`retention`]); `lock` is the backup lock the caller holds.
pub(super) async fn prune_locked(
    shared: &Shared,
    storage: &Storage,
    dry_run: bool,
    _lock: &RunLock,
) -> Result<PruneReport, BackupError> {
    let clock = Instant::now();
    let entries: Vec<Entry> = {
        let cat = shared.catalogue(storage, true).await?;
        cat.entries().map(|(_, e)| e.clone()).collect()
    };
    // Who reads what: the exclusive reader locks of the backups nobody reads are held until
    // the deletions are done, so no reader starts on a backup being deleted.
    let state = shared.state.clone();
    let ids: Vec<BackupId> = entries.iter().map(|e| e.manifest.id).collect();
    let mut held: BTreeMap<BackupId, ReadLock> = blocking(move || {
        let mut held = BTreeMap::new();
        for id in ids {
            if let Exclusive::Held(lock) = ReadLock::try_exclusive(&state, &id)? {
                held.insert(id, lock);
            }
        }
        Ok(held)
    })
    .await?;
    let candidates: Vec<Candidate<'_>> = entries
        .iter()
        .map(|entry| Candidate {
            entry,
            pinned: entry.is_pinned(),
            in_use: !held.contains_key(&entry.manifest.id),
        })
        .collect();
    let policy = policy(&shared.config.backup);
    let decisions = match retention::plan(
        &candidates,
        Utc::now(),
        retention::clock_synchronised(),
        &policy,
    ) {
        Ok(d) => d,
        Err(refusal) => {
            events::emit(BackupPruneRefused {
                code: refusal.code(),
                error: refusal.to_string(),
            });
            return Err(BackupError::Retention(refusal));
        }
    };
    let by_id: BTreeMap<BackupId, &Entry> = entries.iter().map(|e| (e.manifest.id, e)).collect();
    let mut report = PruneReport {
        dry_run,
        min_level: policy.min_level,
        backups: Vec::new(),
        deleted: Vec::new(),
        bytes_freed: 0,
    };
    for Decision { id, keep, reasons } in decisions {
        let Some(entry) = by_id.get(&id) else {
            continue;
        };
        let bytes = stored_bytes(entry);
        if !keep {
            if !dry_run {
                storage.delete_backup(&id).await?;
                shared.catalogue(storage, false).await?.remove(&id).await?;
                if let Some(lock) = held.remove(&id) {
                    lock.remove();
                }
                events::emit(BackupDeleted {
                    id: id.to_string(),
                    rule: "expired",
                    bytes_stored: bytes,
                });
            }
            report.deleted.push(id);
            report.bytes_freed += bytes;
        }
        report.backups.push(Planned {
            id,
            created: entry.manifest.created,
            keep,
            reasons,
            bytes_stored: bytes,
            counts_as: entry.effective_level(),
        });
    }
    drop(held);
    events::emit(BackupPruned {
        kept: report.backups.iter().filter(|b| b.keep).count() as u64,
        deleted: report.deleted.len() as u64,
        bytes_freed: report.bytes_freed,
        dry_run,
        duration_ms: clock.elapsed().as_millis() as u64,
    });
    Ok(report)
}

/// Deletes backup `id`, unless it is pinned or the newest good copy of something (or the only
/// copies of something have no good one) and `force` is not given; never while it is read.
pub(super) async fn delete_locked(
    shared: &Shared,
    storage: &Storage,
    id: BackupId,
    force: bool,
    _lock: &RunLock,
) -> Result<DeleteReport, BackupError> {
    let entries: Vec<Entry> = {
        let cat = shared.catalogue(storage, true).await?;
        cat.entries().map(|(_, e)| e.clone()).collect()
    };
    let Some(entry) = entries.iter().find(|e| e.manifest.id == id).cloned() else {
        return Err(BackupError::NotFound { id: id.to_string() });
    };
    let state = shared.state.clone();
    let reader = match blocking(move || Ok(ReadLock::try_exclusive(&state, &id)?)).await? {
        Exclusive::Held(lock) => lock,
        Exclusive::InUse => {
            return Err(BackupError::Busy {
                reason: format!("backup {id} is being read (a verify, restore or drill)"),
            });
        }
    };
    // The guards come from the retention plan. Its clock checks are for deleting by age; a
    // deletion by hand is not one, so the plan is made at a time no backup is newer than.
    let newest = entries
        .iter()
        .map(|e| e.manifest.created)
        .max()
        .unwrap_or_else(Utc::now);
    let candidates: Vec<Candidate<'_>> = entries
        .iter()
        .map(|entry| Candidate {
            entry,
            pinned: entry.is_pinned(),
            in_use: false,
        })
        .collect();
    let decisions = retention::plan(
        &candidates,
        newest.max(Utc::now()),
        true,
        &policy(&shared.config.backup),
    )
    .map_err(BackupError::Retention)?;
    let guards: Vec<Reason> = decisions
        .into_iter()
        .find(|d| d.id == id)
        .map(|d| d.reasons)
        .unwrap_or_default()
        .into_iter()
        .filter(Reason::guards_delete)
        .collect();
    if !guards.is_empty() && !force {
        return Err(BackupError::Guarded {
            id: id.to_string(),
            reasons: describe(&guards),
        });
    }
    let bytes = stored_bytes(&entry);
    storage.delete_backup(&id).await?;
    shared.catalogue(storage, false).await?.remove(&id).await?;
    reader.remove();
    events::emit(BackupDeleted {
        id: id.to_string(),
        rule: if guards.is_empty() {
            "delete"
        } else {
            "delete_forced"
        },
        bytes_stored: bytes,
    });
    Ok(DeleteReport {
        id,
        bytes_stored: bytes,
        overrode: guards,
    })
}

/// `pinned, newest good copy of volumes:chunks, mongodb:lucid.users`.
fn describe(reasons: &[Reason]) -> String {
    reasons
        .iter()
        .map(|r| match r {
            Reason::Pinned => "it is pinned (backup unpin ID)".to_owned(),
            Reason::InUse => "it is being read".to_owned(),
            Reason::NewestGoodCopy { of } => {
                format!("it is the newest good copy of {}", of.join(", "))
            }
            Reason::NoGoodCopy { of } => format!(
                "no backup is a good copy of {} yet, and this one holds it",
                of.join(", ")
            ),
            other => other.rule().to_owned(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Adds a pin to backup `id` (pins.json in storage, then the catalogue).
pub(super) async fn pin(
    shared: &Shared,
    id: BackupId,
    reason: Option<String>,
) -> Result<Entry, BackupError> {
    let storage = shared.storage().await?;
    super::find(shared, &storage, &id).await?;
    let mut record = match storage.get_file(&id, PINS).await? {
        Some(bytes) => PinRecord::parse(&bytes)
            .ok()
            .filter(|p| p.id == id)
            .unwrap_or_else(|| PinRecord::new(id)),
        None => PinRecord::new(id),
    };
    record.pins.push(Pin {
        at: Utc::now(),
        reason,
    });
    storage.put_file(&id, PINS, record.to_json()).await?;
    shared
        .catalogue(&storage, false)
        .await?
        .set_pins(&id, Some(record))
        .await?;
    events::emit(BackupPinned {
        id: id.to_string(),
        pinned: true,
    });
    super::find(shared, &storage, &id).await
}

/// Removes every pin of backup `id`.
pub(super) async fn unpin(shared: &Shared, id: BackupId) -> Result<Entry, BackupError> {
    let storage = shared.storage().await?;
    super::find(shared, &storage, &id).await?;
    storage.delete_file(&id, PINS).await?;
    shared
        .catalogue(&storage, false)
        .await?
        .set_pins(&id, None)
        .await?;
    events::emit(BackupPinned {
        id: id.to_string(),
        pinned: false,
    });
    super::find(shared, &storage, &id).await
}
