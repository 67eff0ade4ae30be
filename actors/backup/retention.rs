//! Retention: which backups to keep and which to delete — a pure function over the catalogue,
//! the pins, the backups being read and a clock, so every rule is one row of a table test.
//!
//! A backup is kept when **any** rule keeps it:
//!
//! - `pinned` — `backup pin ID`; only `backup unpin` (or `backup delete --force`) lets it go.
//! - `in_use` — a restore, verify or drill is reading it (here or in another process).
//! - `newest_good_copy` — it is the newest *good copy* of something: a backup counts as a good
//!   copy once its verification reached `backup.min_level` (and no later check failed), and it
//!   is a copy only of what it holds **complete**: each volume, collection, index and Redis
//!   database of a store whose outcome is `complete` (a failed store in a partial backup
//!   counts for nothing; a backup of one volume is a copy of that volume alone).
//! - `no_good_copy` — it holds something of which no backup is a good copy yet: then nothing
//!   that holds it is deleted (an unverified copy is better than none).
//! - `keep_last` — among the newest `backup.keep_last` backups.
//! - `daily`, `weekly`, `monthly` — the newest backup of each of the last `keep_daily` days,
//!   `keep_weekly` ISO weeks and `keep_monthly` months that have a backup (UTC), as restic's
//!   `forget` counts them.
//! - `recent` — younger than `backup.retention_days`.
//!
//! Everything else is `expired` and deleted. The plan refuses to run at all while the clock is
//! not synchronised or reads earlier than the newest backup (a Pi without a hardware clock
//! boots in the past: "older than 30 days" would then mean nothing).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use super::catalogue::Entry;
use super::id::BackupId;
use super::manifest::{Level, Manifest, Outcome};

/// The `lucid-db` part of every backup (configuration and schema files): in every backup, so
/// it is nobody's reason to keep one.
const OWN_STORE: &str = "lucid-db";

/// The retention settings (`[backup]`: `retention_days`, `keep_last`, `keep_daily`,
/// `keep_weekly`, `keep_monthly`, `min_level`). A count of 0 turns its rule off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub retention_days: u32,
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub min_level: Level,
}

/// One backup as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub entry: &'a Entry,
    pub pinned: bool,
    /// A restore, verify or drill is reading it.
    pub in_use: bool,
}

/// Why a backup is kept (or, `Expired`, deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Reason {
    Pinned,
    InUse,
    /// The newest good copy of these things (`volumes:chunks`, `mongodb:lucid.users`, …).
    NewestGoodCopy {
        of: Vec<String>,
    },
    /// Holds these things, of which no backup is a good copy.
    NoGoodCopy {
        of: Vec<String>,
    },
    KeepLast,
    Daily {
        day: String,
    },
    Weekly {
        week: String,
    },
    Monthly {
        month: String,
    },
    Recent {
        days: u32,
    },
    /// No rule keeps it.
    Expired {
        age_days: i64,
    },
}

impl Reason {
    /// The rule's name, as `backup prune` prints it.
    pub fn rule(&self) -> &'static str {
        match self {
            Reason::Pinned => "pinned",
            Reason::InUse => "in_use",
            Reason::NewestGoodCopy { .. } => "newest_good_copy",
            Reason::NoGoodCopy { .. } => "no_good_copy",
            Reason::KeepLast => "keep_last",
            Reason::Daily { .. } => "daily",
            Reason::Weekly { .. } => "weekly",
            Reason::Monthly { .. } => "monthly",
            Reason::Recent { .. } => "recent",
            Reason::Expired { .. } => "expired",
        }
    }

    /// Whether this reason protects the backup from `backup delete` without `--force`.
    pub fn guards_delete(&self) -> bool {
        matches!(
            self,
            Reason::Pinned
                | Reason::InUse
                | Reason::NewestGoodCopy { .. }
                | Reason::NoGoodCopy { .. }
        )
    }
}

/// The plan for one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: BackupId,
    pub keep: bool,
    /// Every rule that keeps it, or `[Expired]`.
    pub reasons: Vec<Reason>,
}

/// Why no plan was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the system clock is not synchronised (systemd-timesyncd has not confirmed it): \
         retention waits, since a Pi without a hardware clock may boot in the past"
    )]
    ClockUnsynchronised,
    #[error(
        "the system clock reads {now}, earlier than the newest backup ({newest}): retention \
         waits until the clock is right"
    )]
    ClockBehind { now: String, newest: BackupId },
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::ClockUnsynchronised => "clock_unsynchronised",
            Refusal::ClockBehind { .. } => "clock_behind",
        }
    }
}

/// What a backup is a copy of: `store:logical` for every artifact of every complete store
/// (a volume, a collection, an index, a Redis database), and the store's own name when a
/// complete store wrote no artifact (an empty Redis). The `lucid-db` part is left out.
pub fn holds(manifest: &Manifest) -> BTreeSet<String> {
    let mut things = BTreeSet::new();
    for (store, record) in &manifest.stores {
        if store == OWN_STORE || record.outcome != Outcome::Complete {
            continue;
        }
        if record.artifacts.is_empty() {
            things.insert(store.clone());
        }
        for artifact in &record.artifacts {
            things.insert(format!("{store}:{}", artifact.logical));
        }
    }
    things
}

/// The lifecycle's deletion gate: the indices of which a good copy (at `min_level`) was
/// exported while write-blocked — an index backed up while it still took writes may have
/// changed after, so that copy does not let the lifecycle delete it. Only a complete
/// `elasticsearch` store counts (a failed one holds nothing for certain), and only an index
/// its source facts mark `write_blocked`.
pub fn backed_up_indices<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    min_level: Level,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in entries {
        if !is_good(entry, min_level) {
            continue;
        }
        let Some(store) = entry.manifest.stores.get("elasticsearch") else {
            continue;
        };
        if store.outcome != Outcome::Complete {
            continue;
        }
        let Some(indices) = store.source.get("indices").and_then(|v| v.as_object()) else {
            continue;
        };
        for (index, facts) in indices {
            if facts.get("write_blocked").and_then(|v| v.as_bool()) == Some(true) {
                out.insert(index.clone());
            }
        }
    }
    out
}

/// Whether `entry` counts as a good copy at `min_level`.
pub fn is_good(entry: &Entry, min_level: Level) -> bool {
    entry.effective_level().is_some_and(|l| l >= min_level)
}

/// The plan: one decision per candidate, newest first. `synchronised`: what the system says
/// of its clock (see [`clock_synchronised`]).
pub fn plan(
    candidates: &[Candidate<'_>],
    now: DateTime<Utc>,
    synchronised: bool,
    policy: &Policy,
) -> Result<Vec<Decision>, Refusal> {
    if !synchronised {
        return Err(Refusal::ClockUnsynchronised);
    }
    let mut sorted: Vec<&Candidate<'_>> = candidates.iter().collect();
    // By creation time (with its fractions: two backups of one second are ordered), then id.
    sorted.sort_by_key(|c| std::cmp::Reverse((c.entry.manifest.created, c.entry.manifest.id)));
    if let Some(newest) = sorted.first()
        && newest.entry.manifest.created > now
    {
        return Err(Refusal::ClockBehind {
            now: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            newest: newest.entry.manifest.id,
        });
    }

    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); sorted.len()];
    for (i, c) in sorted.iter().enumerate() {
        if c.pinned {
            reasons[i].push(Reason::Pinned);
        }
        if c.in_use {
            reasons[i].push(Reason::InUse);
        }
    }

    // Per thing held, the backups that hold it, newest first.
    let held: Vec<BTreeSet<String>> = sorted.iter().map(|c| holds(&c.entry.manifest)).collect();
    let mut holders: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, things) in held.iter().enumerate() {
        for thing in things {
            holders.entry(thing.as_str()).or_default().push(i);
        }
    }
    let mut newest_good: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut no_good: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (thing, by) in &holders {
        match by
            .iter()
            .find(|&&i| is_good(sorted[i].entry, policy.min_level))
        {
            Some(&i) => newest_good.entry(i).or_default().push((*thing).to_owned()),
            None => {
                for &i in by {
                    no_good.entry(i).or_default().push((*thing).to_owned());
                }
            }
        }
    }
    for (i, of) in newest_good {
        reasons[i].push(Reason::NewestGoodCopy { of });
    }
    for (i, of) in no_good {
        reasons[i].push(Reason::NoGoodCopy { of });
    }

    for r in reasons.iter_mut().take(policy.keep_last as usize) {
        r.push(Reason::KeepLast);
    }
    let created = |i: usize| sorted[i].entry.manifest.created;
    bucket(&mut reasons, policy.keep_daily, |i| Reason::Daily {
        day: created(i).format("%Y-%m-%d").to_string(),
    });
    bucket(&mut reasons, policy.keep_weekly, |i| {
        let w = created(i).iso_week();
        Reason::Weekly {
            week: format!("{}-W{:02}", w.year(), w.week()),
        }
    });
    bucket(&mut reasons, policy.keep_monthly, |i| Reason::Monthly {
        month: created(i).format("%Y-%m").to_string(),
    });
    for (i, r) in reasons.iter_mut().enumerate() {
        let age = now - created(i);
        if policy.retention_days > 0 && age < chrono::Duration::days(policy.retention_days.into()) {
            r.push(Reason::Recent {
                days: policy.retention_days,
            });
        }
    }

    Ok(sorted
        .iter()
        .zip(reasons)
        .map(|(c, mut reasons)| {
            let keep = !reasons.is_empty();
            if !keep {
                reasons.push(Reason::Expired {
                    age_days: (now - c.entry.manifest.created).num_days(),
                });
            }
            Decision {
                id: c.entry.manifest.id,
                keep,
                reasons,
            }
        })
        .collect())
}

/// Keeps the newest backup of each of the `count` newest periods that have one; `key` names
/// backup `i`'s period (as a [`Reason`]). `reasons` is newest first.
fn bucket(reasons: &mut [Vec<Reason>], count: u32, key: impl Fn(usize) -> Reason) {
    let mut seen: Vec<Reason> = Vec::new();
    for (i, kept) in reasons.iter_mut().enumerate() {
        if seen.len() >= count as usize {
            break;
        }
        let period = key(i);
        if !seen.contains(&period) {
            seen.push(period.clone());
            kept.push(period);
        }
    }
}

/// Whether the system says its clock is synchronised: where systemd-timesyncd runs (it keeps
/// `/run/systemd/timesync/`), only once it has written `synchronized` there; elsewhere (no
/// timesyncd: chrony, a container, a test) the unit's ordering after `time-sync.target` is the
/// guard, and the planner's own check that the clock is not behind the newest backup.
pub fn clock_synchronised() -> bool {
    clock_synchronised_in(std::path::Path::new("/run/systemd/timesync"))
}

fn clock_synchronised_in(dir: &std::path::Path) -> bool {
    !dir.is_dir() || dir.join("synchronized").exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{
        ArtifactRecord, Encryption, LevelResult, StoreRecord, Trigger, VerifyRecord,
    };
    use crate::config::Compression;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn artifact(logical: &str) -> ArtifactRecord {
        ArtifactRecord {
            name: format!("volumes/{logical}.tar.zst"),
            logical: logical.to_owned(),
            bytes_in: 1,
            bytes_stored: 1,
            sha256: "0".repeat(64),
        }
    }

    fn store(outcome: Outcome, logicals: &[&str]) -> StoreRecord {
        StoreRecord {
            outcome,
            started: None,
            ended: None,
            source: Default::default(),
            artifacts: logicals.iter().map(|l| artifact(l)).collect(),
        }
    }

    /// A backup made at `when`, holding `stores`, verified to `level`.
    fn backup(when: &str, stores: &[(&str, StoreRecord)], level: Option<Level>) -> Entry {
        let created = at(when);
        let id = BackupId::new(created);
        let mut manifest = Manifest::new(
            id,
            created,
            "pi",
            Trigger::Schedule,
            Encryption::default(),
            Compression::Zstd,
        );
        manifest
            .stores
            .insert(OWN_STORE.to_owned(), store(Outcome::Complete, &["config"]));
        for (name, record) in stores {
            manifest.stores.insert((*name).to_owned(), record.clone());
        }
        let verify = level.map(|level| {
            let mut v = VerifyRecord::new(id);
            v.record(
                level,
                LevelResult::from_checks(created + chrono::Duration::minutes(5), BTreeMap::new()),
            );
            v
        });
        Entry {
            manifest,
            verify,
            pins: None,
        }
    }

    fn volumes(names: &[&str]) -> (&'static str, StoreRecord) {
        ("volumes", store(Outcome::Complete, names))
    }

    fn policy() -> Policy {
        Policy {
            retention_days: 30,
            keep_last: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            min_level: Level::Checksummed,
        }
    }

    /// The rules that decided each backup, oldest first: `("2026-11-01", ["expired"])`.
    fn decide(entries: &[Entry], now: &str, policy: &Policy) -> Vec<(String, Vec<&'static str>)> {
        decide_with(entries, now, policy, &[], &[])
    }

    fn decide_with(
        entries: &[Entry],
        now: &str,
        policy: &Policy,
        pinned: &[usize],
        in_use: &[usize],
    ) -> Vec<(String, Vec<&'static str>)> {
        let candidates: Vec<Candidate<'_>> = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| Candidate {
                entry,
                pinned: pinned.contains(&i),
                in_use: in_use.contains(&i),
            })
            .collect();
        let mut out: Vec<(String, Vec<&'static str>)> = plan(&candidates, at(now), true, policy)
            .expect("plan")
            .into_iter()
            .map(|d| {
                assert_eq!(d.keep, d.reasons.iter().all(|r| r.rule() != "expired"));
                let day = entries
                    .iter()
                    .find(|e| e.manifest.id == d.id)
                    .map(|e| e.manifest.created.format("%m-%d %H").to_string())
                    .unwrap_or_default();
                (day, d.reasons.iter().map(Reason::rule).collect())
            })
            .collect();
        out.reverse();
        out
    }

    const V: Option<Level> = Some(Level::Checksummed);

    #[test]
    fn age_keeps_what_is_recent_and_the_newest_good_copy_keeps_the_rest() {
        let entries = [
            backup("2026-09-01T02:00:00Z", &[volumes(&["chunks"])], V),
            backup("2026-10-01T02:00:00Z", &[volumes(&["chunks"])], V),
            backup("2026-11-20T02:00:00Z", &[volumes(&["chunks"])], V),
        ];
        assert_eq!(
            decide(&entries, "2026-11-30T12:00:00Z", &policy()),
            [
                ("09-01 02".into(), vec!["expired"]),
                ("10-01 02".into(), vec!["expired"]),
                ("11-20 02".into(), vec!["newest_good_copy", "recent"]),
            ]
        );
        // Everything expired: the newest verified copy stays all the same.
        let old = [
            backup("2026-01-01T02:00:00Z", &[volumes(&["chunks"])], V),
            backup("2026-02-01T02:00:00Z", &[volumes(&["chunks"])], V),
        ];
        assert_eq!(
            decide(&old, "2026-11-30T12:00:00Z", &policy()),
            [
                ("01-01 02".into(), vec!["expired"]),
                ("02-01 02".into(), vec!["newest_good_copy"]),
            ]
        );
    }

    #[test]
    fn an_unverified_or_failed_backup_is_no_good_copy_and_keeps_every_copy_while_none_is() {
        let failed_later = {
            let mut e = backup("2026-03-01T02:00:00Z", &[volumes(&["chunks"])], V);
            if let Some(v) = e.verify.as_mut() {
                v.record(
                    Level::Checksummed,
                    LevelResult {
                        at: at("2026-03-02T00:00:00Z"),
                        passed: false,
                        artifacts: BTreeMap::new(),
                        stores: BTreeMap::new(),
                    },
                );
            }
            e
        };
        let entries = [
            backup("2026-01-01T02:00:00Z", &[volumes(&["chunks"])], V),
            failed_later,
            backup("2026-04-01T02:00:00Z", &[volumes(&["chunks"])], None),
        ];
        // January's is the newest good copy: March's failed its later check, April's is
        // unverified.
        assert_eq!(
            decide(&entries, "2026-11-30T12:00:00Z", &policy()),
            [
                ("01-01 02".into(), vec!["newest_good_copy"]),
                ("03-01 02".into(), vec!["expired"]),
                ("04-01 02".into(), vec!["expired"]),
            ]
        );
        // No good copy of `chunks` at all: nothing holding it goes.
        let unverified = [
            backup("2026-01-01T02:00:00Z", &[volumes(&["chunks"])], None),
            backup("2026-02-01T02:00:00Z", &[volumes(&["chunks"])], None),
        ];
        assert_eq!(
            decide(&unverified, "2026-11-30T12:00:00Z", &policy()),
            [
                ("01-01 02".into(), vec!["no_good_copy"]),
                ("02-01 02".into(), vec!["no_good_copy"]),
            ]
        );
    }

    #[test]
    fn min_level_decides_what_counts_as_good() {
        let entries = [
            backup(
                "2026-01-01T02:00:00Z",
                &[volumes(&["chunks"])],
                Some(Level::Decoded),
            ),
            backup("2026-02-01T02:00:00Z", &[volumes(&["chunks"])], V),
        ];
        let decoded = Policy {
            min_level: Level::Decoded,
            ..policy()
        };
        assert_eq!(
            decide(&entries, "2026-11-30T12:00:00Z", &decoded),
            [
                ("01-01 02".into(), vec!["newest_good_copy"]),
                ("02-01 02".into(), vec!["expired"]),
            ]
        );
        assert_eq!(
            decide(&entries, "2026-11-30T12:00:00Z", &policy()),
            [
                ("01-01 02".into(), vec!["expired"]),
                ("02-01 02".into(), vec!["newest_good_copy"]),
            ]
        );
    }

    #[test]
    fn each_volume_store_and_index_keeps_its_own_newest_good_copy() {
        let partial = [
            volumes(&["chunks"]),
            (
                "mongodb",
                store(
                    Outcome::Failed {
                        code: "unavailable".into(),
                        message: "down".into(),
                    },
                    &[],
                ),
            ),
        ];
        let entries = [
            // Full: chunks, photos, MongoDB's users.
            backup(
                "2026-01-01T02:00:00Z",
                &[
                    volumes(&["chunks", "photos"]),
                    ("mongodb", store(Outcome::Complete, &["lucid.users"])),
                ],
                V,
            ),
            // Partial: MongoDB failed, so it is no copy of MongoDB's users.
            backup("2026-02-01T02:00:00Z", &partial, V),
            // One volume alone.
            backup("2026-03-01T02:00:00Z", &[volumes(&["photos"])], V),
            // An empty Redis: a copy of `redis` itself.
            backup(
                "2026-04-01T02:00:00Z",
                &[("redis", store(Outcome::Complete, &[]))],
                V,
            ),
        ];
        let candidates: Vec<Candidate<'_>> = entries
            .iter()
            .map(|entry| Candidate {
                entry,
                pinned: false,
                in_use: false,
            })
            .collect();
        let decisions =
            plan(&candidates, at("2026-11-30T12:00:00Z"), true, &policy()).expect("plan");
        let of = |month: &str| -> Vec<String> {
            let d = decisions
                .iter()
                .find(|d| d.id.to_string().starts_with(&format!("2026{month}")))
                .expect("decision");
            d.reasons
                .iter()
                .flat_map(|r| match r {
                    Reason::NewestGoodCopy { of } => of.clone(),
                    _ => Vec::new(),
                })
                .collect()
        };
        assert_eq!(of("01"), ["mongodb:lucid.users"]);
        assert_eq!(of("02"), ["volumes:chunks"]);
        assert_eq!(of("03"), ["volumes:photos"]);
        assert_eq!(of("04"), ["redis"]);
    }

    #[test]
    fn keep_last_daily_weekly_and_monthly_count_like_restic() {
        // Two a day on Nov 20 to 30 (UTC), plus one on each first of Jun to Oct.
        let mut entries: Vec<Entry> = (1..=10)
            .map(|m| format!("2026-{:02}-01T02:00:00Z", m))
            .filter(|s| s.as_str() >= "2026-06")
            .map(|s| backup(&s, &[], V))
            .collect();
        for day in 20..=30 {
            for hour in ["02", "14"] {
                entries.push(backup(&format!("2026-11-{day}T{hour}:00:00Z"), &[], V));
            }
        }
        let gfs = Policy {
            retention_days: 0,
            keep_last: 3,
            keep_daily: 4,
            keep_weekly: 2,
            keep_monthly: 3,
            min_level: Level::Checksummed,
        };
        let kept: Vec<(String, Vec<&'static str>)> = decide(&entries, "2026-11-30T20:00:00Z", &gfs)
            .into_iter()
            .filter(|(_, rules)| rules != &["expired"])
            .collect();
        assert_eq!(
            kept,
            [
                ("09-01 02".into(), vec!["monthly"]),
                ("10-01 02".into(), vec!["monthly"]),
                ("11-27 14".into(), vec!["daily"]),
                ("11-28 14".into(), vec!["daily"]),
                // Nov 29 is a Sunday: the newest of ISO week 48; Nov 30 opens week 49.
                ("11-29 14".into(), vec!["keep_last", "daily", "weekly"]),
                ("11-30 02".into(), vec!["keep_last"]),
                (
                    "11-30 14".into(),
                    vec!["keep_last", "daily", "weekly", "monthly"]
                ),
            ],
        );
    }

    #[test]
    fn only_good_copies_of_write_blocked_indices_open_the_deletion_gate() {
        let es = |outcome: Outcome, indices: serde_json::Value| {
            let mut record = store(outcome, &["x"]);
            record.source.insert("indices".into(), indices);
            ("elasticsearch", record)
        };
        let blocked = serde_json::json!({
            "lucid-blocks-2020.01": {"documents": 3, "write_blocked": true},
            "lucid-sessions-2026.11": {"documents": 9, "write_blocked": false},
        });
        let failed = Outcome::Failed {
            code: "unavailable".into(),
            message: "down".into(),
        };
        let cases: [(&[Entry], Level, &[&str]); 5] = [
            // Verified, write-blocked: the gate opens for it alone (the hot one was not blocked).
            (
                &[backup(
                    "2026-11-01T02:00:00Z",
                    &[es(Outcome::Complete, blocked.clone())],
                    V,
                )],
                Level::Checksummed,
                &["lucid-blocks-2020.01"],
            ),
            // Not verified to min_level.
            (
                &[backup(
                    "2026-11-01T02:00:00Z",
                    &[es(Outcome::Complete, blocked.clone())],
                    V,
                )],
                Level::Decoded,
                &[],
            ),
            // Unverified.
            (
                &[backup(
                    "2026-11-01T02:00:00Z",
                    &[es(Outcome::Complete, blocked.clone())],
                    None,
                )],
                Level::Checksummed,
                &[],
            ),
            // The store failed in that backup.
            (
                &[backup(
                    "2026-11-01T02:00:00Z",
                    &[es(failed, blocked.clone())],
                    V,
                )],
                Level::Checksummed,
                &[],
            ),
            // No Elasticsearch in it at all.
            (
                &[backup("2026-11-01T02:00:00Z", &[volumes(&["chunks"])], V)],
                Level::Checksummed,
                &[],
            ),
        ];
        for (i, (entries, level, want)) in cases.iter().enumerate() {
            let got: Vec<String> = backed_up_indices(entries.iter(), *level)
                .into_iter()
                .collect();
            assert_eq!(got, *want, "case {i}");
        }
    }

    #[test]
    fn pinned_and_in_use_backups_are_kept_whatever_their_age() {
        let entries = [
            backup("2026-01-01T02:00:00Z", &[], V),
            backup("2026-02-01T02:00:00Z", &[], V),
            backup("2026-03-01T02:00:00Z", &[], V),
        ];
        assert_eq!(
            decide_with(&entries, "2026-11-30T12:00:00Z", &policy(), &[0], &[1]),
            [
                ("01-01 02".into(), vec!["pinned"]),
                ("02-01 02".into(), vec!["in_use"]),
                ("03-01 02".into(), vec!["expired"]),
            ]
        );
    }

    #[test]
    fn a_clock_in_the_past_or_unsynchronised_refuses_the_plan() {
        let entries = [backup("2026-11-30T02:00:00Z", &[], V)];
        let candidates = [Candidate {
            entry: &entries[0],
            pinned: false,
            in_use: false,
        }];
        // A Pi that booted in 1970.
        let refusal =
            plan(&candidates, at("1970-01-01T00:00:10Z"), true, &policy()).expect_err("refused");
        assert_eq!(refusal.code(), "clock_behind");
        assert!(
            refusal
                .to_string()
                .contains(&entries[0].manifest.id.to_string())
        );
        let refusal =
            plan(&candidates, at("2026-11-30T12:00:00Z"), false, &policy()).expect_err("refused");
        assert_eq!(refusal.code(), "clock_unsynchronised");
        assert!(plan(&candidates, at("2026-11-30T12:00:00Z"), true, &policy()).is_ok());
    }

    #[test]
    fn timesyncd_decides_the_clock_where_it_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let timesync = dir.path().join("timesync");
        // No timesyncd here: the ordering of the unit and the planner's own check guard.
        assert!(clock_synchronised_in(&timesync));
        std::fs::create_dir(&timesync).expect("mkdir");
        assert!(!clock_synchronised_in(&timesync));
        std::fs::write(timesync.join("synchronized"), b"").expect("write");
        assert!(clock_synchronised_in(&timesync));
    }
}
