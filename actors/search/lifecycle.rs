//! Index lifecycle, decided by lucid-db rather than by Elasticsearch's ILM (which cannot parse
//! `YYYY.MM` names, is absent from OpenSearch and needs a licence tier on some versions).
//!
//! An index's age is counted from the **end** of the month it is named for (UTC):
//!
//! | age | phase | what it gets |
//! | --- | --- | --- |
//! | the current or a future month, or under `warm_after` (7 d) | hot | nothing: it takes writes |
//! | from `warm_after` | warm | force-merged to one segment, then writes blocked |
//! | from `cold_after` (30 d) | cold | warm's, plus a lower `index.priority` and `cold_replicas` (0) replicas |
//! | from `delete_after` (90 d) | delete | deleted — only when deletion is on **and** the index is in `backed_up` (a verified backup holds it); else kept cold and reported |
//!
//! Each entity's next month's index is created, and its write alias moved onto it,
//! `prepare_ahead` (3 d) before the month starts, so the turn of the month needs nothing at
//! midnight. A missing current month's index is created too.
//!
//! [`plan`] is a pure function of what the cluster has, the time, the policy and the set of
//! backed-up indices; the executor applies its actions one at a time. Applying a plan and
//! planning again yields no work. Index names that do not parse are reported and never
//! touched; they do not stop the run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::names::{Entity, IndexName, Month};
use crate::config::ElasticsearchConfig;

// The planner's "now": the system clock in the daemon, a fixed time in tests and in
// `lucid-db search lifecycle --at`.
pub use crate::clock::{Clock, FixedClock, SystemClock};

/// When indices change phase, and what the phases set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub warm_after: Duration,
    pub cold_after: Duration,
    pub delete_after: Duration,
    /// Deletion at all: off until the backup catalogue supplies `backed_up`.
    pub delete: bool,
    /// How long before a month starts its index is created and the write alias moved.
    pub prepare_ahead: Duration,
    /// `index.number_of_replicas` of a cold index (0: a single node cannot place replicas).
    pub cold_replicas: u32,
    /// `index.priority` of a cold index (recovered last after a restart).
    pub cold_priority: i64,
}

impl Default for Policy {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Policy {
            warm_after: Duration::from_secs(7 * DAY),
            cold_after: Duration::from_secs(30 * DAY),
            delete_after: Duration::from_secs(90 * DAY),
            delete: false,
            prepare_ahead: Duration::from_secs(3 * DAY),
            cold_replicas: 0,
            cold_priority: 0,
        }
    }
}

impl Policy {
    /// The policy the `[elasticsearch]` lifecycle keys describe.
    pub fn from_config(cfg: &ElasticsearchConfig) -> Policy {
        Policy {
            warm_after: cfg.warm_after,
            cold_after: cfg.cold_after,
            delete_after: cfg.delete_after,
            delete: cfg.lifecycle_delete,
            prepare_ahead: cfg.prepare_ahead,
            cold_replicas: cfg.cold_replicas,
            cold_priority: cfg.cold_priority,
        }
    }

    /// Refuses phases out of order.
    pub fn check(&self) -> Result<(), String> {
        if !(self.warm_after < self.cold_after && self.cold_after < self.delete_after) {
            return Err("warm_after < cold_after < delete_after is required".into());
        }
        if self.prepare_ahead >= Duration::from_secs(28 * 24 * 3600) {
            return Err("prepare_ahead must be under 28 days (a month)".into());
        }
        Ok(())
    }
}

/// What the planner needs to know of one index (from the cluster's settings and aliases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexInfo {
    pub name: String,
    /// `index.blocks.write` is set.
    pub write_blocked: bool,
    pub replicas: u32,
    /// `index.priority`, if set.
    pub priority: Option<i64>,
    /// It holds its entity's write alias.
    pub write_alias: bool,
}

impl IndexInfo {
    /// A new, hot index as the template creates it.
    pub fn new(name: impl Into<String>) -> Self {
        IndexInfo {
            name: name.into(),
            write_blocked: false,
            replicas: 1,
            priority: None,
            write_alias: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Hot,
    Warm,
    Cold,
    Delete,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Hot => "hot",
            Phase::Warm => "warm",
            Phase::Cold => "cold",
            Phase::Delete => "delete",
        }
    }
}

/// The phase of a month's index at `now`.
pub fn phase_of(month: Month, now: DateTime<Utc>, policy: &Policy) -> Phase {
    let Ok(age) = (now - month.end()).to_std() else {
        // The month has not ended (or is in the future).
        return Phase::Hot;
    };
    if age >= policy.delete_after {
        Phase::Delete
    } else if age >= policy.cold_after {
        Phase::Cold
    } else if age >= policy.warm_after {
        Phase::Warm
    } else {
        Phase::Hot
    }
}

/// Whether a document of `month` may still be written to its own index at `now`.
pub fn writable(month: Month, now: DateTime<Utc>, policy: &Policy) -> bool {
    phase_of(month, now, policy) == Phase::Hot
}

/// The month whose index should hold the write alias at `now`.
pub fn write_month(now: DateTime<Utc>, policy: &Policy) -> Month {
    let current = Month::of(now);
    match (current.end() - now).to_std() {
        Ok(left) if left <= policy.prepare_ahead => current.next(),
        _ => current,
    }
}

/// Why an index old enough to delete is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    /// `elasticsearch.lifecycle_delete` is off.
    DeletionOff,
    /// No verified backup holds it.
    NotBackedUp,
}

impl KeepReason {
    pub fn code(self) -> &'static str {
        match self {
            KeepReason::DeletionOff => "deletion_off",
            KeepReason::NotBackedUp => "not_backed_up",
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the month's index (its template supplies settings and mappings).
    Create { index: IndexName },
    /// Put the entity's write alias on `to` and take it off `from`, in one request.
    MoveWriteAlias {
        entity: Entity,
        from: Vec<String>,
        to: IndexName,
    },
    /// Force-merge to one segment, then block writes.
    Warm { index: IndexName },
    /// Lower the priority and the replicas.
    Cold {
        index: IndexName,
        replicas: u32,
        priority: i64,
    },
    /// Delete the index: old enough, deletion on, and a verified backup holds it.
    Delete { index: IndexName },
    /// Old enough to delete but kept (reported, nothing done).
    Keep {
        index: IndexName,
        reason: KeepReason,
    },
    /// Not a name the planner understands (reported, never touched).
    Unparseable { index: String, reason: String },
}

impl Action {
    /// Whether applying it changes the cluster.
    pub fn changes(&self) -> bool {
        !matches!(self, Action::Keep { .. } | Action::Unparseable { .. })
    }

    /// The index it concerns.
    pub fn index(&self) -> String {
        match self {
            Action::Create { index }
            | Action::Warm { index }
            | Action::Cold { index, .. }
            | Action::Delete { index }
            | Action::Keep { index, .. }
            | Action::MoveWriteAlias { to: index, .. } => index.to_string(),
            Action::Unparseable { index, .. } => index.clone(),
        }
    }

    /// A stable name, for events and the CLI.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::MoveWriteAlias { .. } => "move_write_alias",
            Action::Warm { .. } => "warm",
            Action::Cold { .. } => "cold",
            Action::Delete { .. } => "delete",
            Action::Keep { .. } => "keep",
            Action::Unparseable { .. } => "unparseable",
        }
    }
}

/// The actions that bring `indices` (every index matching `lucid-*`) in line with `policy`
/// at `now`: creations and write-alias moves first, then phase changes oldest first, then
/// what is only reported.
pub fn plan(
    indices: &[IndexInfo],
    now: DateTime<Utc>,
    policy: &Policy,
    backed_up: &BTreeSet<String>,
) -> Vec<Action> {
    let mut parsed: BTreeMap<IndexName, &IndexInfo> = BTreeMap::new();
    let mut unparseable = Vec::new();
    for info in indices {
        match IndexName::parse(&info.name) {
            Ok(name) => {
                parsed.insert(name, info);
            }
            Err(reason) => unparseable.push(Action::Unparseable {
                index: info.name.clone(),
                reason,
            }),
        }
    }

    let mut prepare = Vec::new();
    let current = Month::of(now);
    let target = write_month(now, policy);
    for entity in Entity::ALL {
        for month in [current, target] {
            let index = entity.index(month);
            if !parsed.contains_key(&index) && !prepare.contains(&Action::Create { index }) {
                prepare.push(Action::Create { index });
            }
        }
        let to = entity.index(target);
        let holders: Vec<String> = parsed
            .iter()
            .filter(|(name, info)| name.entity == entity && info.write_alias)
            .map(|(name, _)| name.to_string())
            .collect();
        if holders != [to.to_string()] {
            prepare.push(Action::MoveWriteAlias {
                entity,
                from: holders
                    .into_iter()
                    .filter(|h| *h != to.to_string())
                    .collect(),
                to,
            });
        }
    }

    // Oldest month first, so a backlog is worked off in age order.
    let mut by_age: Vec<(&IndexName, &&IndexInfo)> = parsed.iter().collect();
    by_age.sort_by_key(|(name, _)| (name.month, name.entity));
    let mut transitions = Vec::new();
    let mut kept = Vec::new();
    for (name, info) in by_age {
        let index = *name;
        let phase = phase_of(name.month, now, policy);
        if phase == Phase::Hot || info.write_alias {
            // A write index is never made read-only or deleted, whatever its month.
            continue;
        }
        if phase == Phase::Delete {
            if !policy.delete {
                kept.push(Action::Keep {
                    index,
                    reason: KeepReason::DeletionOff,
                });
            } else if !backed_up.contains(&info.name) {
                kept.push(Action::Keep {
                    index,
                    reason: KeepReason::NotBackedUp,
                });
            } else {
                transitions.push(Action::Delete { index });
                continue;
            }
        }
        if !info.write_blocked {
            transitions.push(Action::Warm { index });
        }
        if phase >= Phase::Cold
            && (info.replicas != policy.cold_replicas
                || info.priority != Some(policy.cold_priority))
        {
            transitions.push(Action::Cold {
                index,
                replicas: policy.cold_replicas,
                priority: policy.cold_priority,
            });
        }
    }

    prepare
        .into_iter()
        .chain(transitions)
        .chain(kept)
        .chain(unparseable)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn month(y: i32, m: u32) -> Month {
        Month::new(y, m).expect("month")
    }

    const MS: chrono::Duration = chrono::Duration::milliseconds(1);

    fn days(n: i64) -> chrono::Duration {
        chrono::Duration::days(n)
    }

    /// The cluster after `actions`, as the executor would leave it.
    fn apply(indices: &mut Vec<IndexInfo>, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Create { index } => indices.push(IndexInfo::new(index.to_string())),
                Action::MoveWriteAlias { to, .. } => {
                    for i in indices.iter_mut() {
                        if IndexName::parse(&i.name).is_ok_and(|n| n.entity == to.entity) {
                            i.write_alias = i.name == to.to_string();
                        }
                    }
                }
                Action::Warm { index } => {
                    let name = index.to_string();
                    if let Some(i) = indices.iter_mut().find(|i| i.name == name) {
                        i.write_blocked = true;
                    }
                }
                Action::Cold {
                    index,
                    replicas,
                    priority,
                } => {
                    let name = index.to_string();
                    if let Some(i) = indices.iter_mut().find(|i| i.name == name) {
                        i.replicas = *replicas;
                        i.priority = Some(*priority);
                    }
                }
                Action::Delete { index } => {
                    let name = index.to_string();
                    indices.retain(|i| i.name != name);
                }
                Action::Keep { .. } | Action::Unparseable { .. } => {}
            }
        }
    }

    /// A cluster brought in line at `now` (every entity's current indices and aliases).
    fn settled(now: DateTime<Utc>, policy: &Policy) -> Vec<IndexInfo> {
        let mut indices = Vec::new();
        let actions = plan(&indices, now, policy, &BTreeSet::new());
        apply(&mut indices, &actions);
        indices
    }

    fn for_index<'a>(actions: &'a [Action], name: &str) -> Vec<&'a Action> {
        actions
            .iter()
            .filter(|a| a.index() == name && !matches!(a, Action::MoveWriteAlias { .. }))
            .collect()
    }

    #[test]
    fn phases_change_exactly_at_their_boundaries_counted_from_the_months_end() {
        let p = Policy::default();
        let oct = month(2026, 10);
        let end = oct.end();
        assert_eq!(end, at("2026-11-01T00:00:00Z"));
        assert_eq!(phase_of(oct, at("2026-10-15T00:00:00Z"), &p), Phase::Hot);
        assert_eq!(phase_of(oct, end - MS, &p), Phase::Hot);
        assert_eq!(phase_of(oct, end, &p), Phase::Hot);
        assert_eq!(phase_of(oct, end + days(7) - MS, &p), Phase::Hot);
        assert_eq!(phase_of(oct, end + days(7), &p), Phase::Warm);
        assert_eq!(phase_of(oct, end + days(30) - MS, &p), Phase::Warm);
        assert_eq!(phase_of(oct, end + days(30), &p), Phase::Cold);
        assert_eq!(phase_of(oct, end + days(90) - MS, &p), Phase::Cold);
        assert_eq!(phase_of(oct, end + days(90), &p), Phase::Delete);
        // A future month (a clock or document from the future) is hot.
        assert_eq!(phase_of(month(2027, 3), end, &p), Phase::Hot);
        assert!(writable(oct, end + days(7) - MS, &p));
        assert!(!writable(oct, end + days(7), &p));
    }

    #[test]
    fn the_planner_acts_at_each_boundary_and_not_a_millisecond_before() {
        let p = Policy {
            delete: true,
            ..Policy::default()
        };
        let oct = Entity::Blocks.index(month(2026, 10));
        let name = oct.to_string();
        let end = oct.month.end();
        let backed_up = BTreeSet::from([name.clone()]);
        let state = |now| {
            let mut indices = settled(now, &p);
            indices.push(IndexInfo::new(&name));
            indices
        };

        let before_warm = end + days(7) - MS;
        assert!(
            for_index(
                &plan(&state(before_warm), before_warm, &p, &backed_up),
                &name
            )
            .is_empty()
        );
        let warm = end + days(7);
        assert_eq!(
            for_index(&plan(&state(warm), warm, &p, &backed_up), &name),
            [&Action::Warm { index: oct }]
        );
        let before_cold = end + days(30) - MS;
        assert_eq!(
            for_index(
                &plan(&state(before_cold), before_cold, &p, &backed_up),
                &name
            ),
            [&Action::Warm { index: oct }]
        );
        // Cold on an index that was never warmed (the daemon was off): both, in order.
        let cold = end + days(30);
        assert_eq!(
            for_index(&plan(&state(cold), cold, &p, &backed_up), &name),
            [
                &Action::Warm { index: oct },
                &Action::Cold {
                    index: oct,
                    replicas: 0,
                    priority: 0
                }
            ]
        );
        let before_delete = end + days(90) - MS;
        assert!(
            !for_index(
                &plan(&state(before_delete), before_delete, &p, &backed_up),
                &name
            )
            .iter()
            .any(|a| matches!(a, Action::Delete { .. }))
        );
        let delete = end + days(90);
        assert_eq!(
            for_index(&plan(&state(delete), delete, &p, &backed_up), &name),
            [&Action::Delete { index: oct }]
        );
    }

    #[test]
    fn deletion_needs_both_the_switch_and_a_verified_backup() {
        let now = at("2027-03-01T00:00:00Z");
        let old = Entity::AuditLogs.index(month(2026, 10));
        let name = old.to_string();
        let mut indices = settled(now, &Policy::default());
        indices.push(IndexInfo {
            write_blocked: true,
            replicas: 0,
            priority: Some(0),
            ..IndexInfo::new(&name)
        });

        let off = Policy::default();
        let backed_up = BTreeSet::from([name.clone()]);
        assert_eq!(
            for_index(&plan(&indices, now, &off, &backed_up), &name),
            [&Action::Keep {
                index: old,
                reason: KeepReason::DeletionOff
            }]
        );
        let on = Policy {
            delete: true,
            ..Policy::default()
        };
        assert_eq!(
            for_index(&plan(&indices, now, &on, &BTreeSet::new()), &name),
            [&Action::Keep {
                index: old,
                reason: KeepReason::NotBackedUp
            }]
        );
        // Another index's backup does not count.
        let other = BTreeSet::from(["lucid-audit-logs-2026.09".to_owned()]);
        assert!(matches!(
            for_index(&plan(&indices, now, &on, &other), &name)[..],
            [Action::Keep { .. }]
        ));
        assert_eq!(
            for_index(&plan(&indices, now, &on, &backed_up), &name),
            [&Action::Delete { index: old }]
        );
        // A kept index that missed its warm and cold steps still gets them.
        let mut fresh = settled(now, &off);
        fresh.push(IndexInfo::new(&name));
        let actions = plan(&fresh, now, &off, &backed_up);
        let names: Vec<&str> = for_index(&actions, &name)
            .iter()
            .map(|a| a.name())
            .collect();
        assert_eq!(names, ["warm", "cold", "keep"]);
    }

    #[test]
    fn the_next_month_is_prepared_before_it_starts_and_the_write_alias_moves_once() {
        let p = Policy::default();
        // Before the window (3 days before 1 December): only November.
        let early = at("2026-11-27T23:59:59Z");
        let indices = settled(early, &p);
        assert_eq!(indices.len(), Entity::ALL.len());
        assert!(
            indices
                .iter()
                .all(|i| i.name.ends_with("-2026.11") && i.write_alias)
        );
        assert!(plan(&indices, early, &p, &BTreeSet::new()).is_empty());

        // At the window: December is created and takes the write alias.
        let window = at("2026-11-28T00:00:00Z");
        let actions = plan(&indices, window, &p, &BTreeSet::new());
        let dec = Entity::Sessions.index(month(2026, 12));
        assert!(actions.contains(&Action::Create { index: dec }));
        assert!(actions.contains(&Action::MoveWriteAlias {
            entity: Entity::Sessions,
            from: vec!["lucid-sessions-2026.11".into()],
            to: dec
        }));
        assert_eq!(actions.len(), 2 * Entity::ALL.len(), "{actions:#?}");
        // Creations come before the alias moves that need them.
        let first_move = actions
            .iter()
            .position(|a| matches!(a, Action::MoveWriteAlias { .. }))
            .expect("a move");
        assert!(
            actions[..first_move]
                .iter()
                .all(|a| matches!(a, Action::Create { .. }))
        );

        let mut after = indices.clone();
        apply(&mut after, &actions);
        assert!(plan(&after, window, &p, &BTreeSet::new()).is_empty());
        // Across midnight, into the new month and the year after: nothing more to do until
        // the next window.
        for now in ["2026-12-01T00:00:00Z", "2026-12-07T23:59:59Z"] {
            assert!(
                plan(&after, at(now), &p, &BTreeSet::new()).is_empty(),
                "{now}"
            );
        }
        // November turns warm 7 days after its end.
        let warm = plan(&after, at("2026-12-08T00:00:00Z"), &p, &BTreeSet::new());
        assert_eq!(warm.len(), Entity::ALL.len());
        assert!(
            warm.iter()
                .all(|a| matches!(a, Action::Warm { index } if index.month == month(2026, 11)))
        );

        // The year turns the same way.
        let dec_window = at("2026-12-29T00:00:00Z");
        let actions = plan(&after, dec_window, &p, &BTreeSet::new());
        assert!(actions.contains(&Action::Create {
            index: Entity::Blocks.index(month(2027, 1))
        }));
    }

    #[test]
    fn an_empty_cluster_gets_the_current_month_and_its_write_alias() {
        let now = at("2026-11-10T12:00:00Z");
        let actions = plan(&[], now, &Policy::default(), &BTreeSet::new());
        assert_eq!(actions.len(), 2 * Entity::ALL.len());
        assert!(actions.contains(&Action::MoveWriteAlias {
            entity: Entity::Manifests,
            from: vec![],
            to: Entity::Manifests.index(month(2026, 11))
        }));
    }

    #[test]
    fn unparseable_names_are_reported_and_never_touched_and_the_rest_proceeds() {
        let now = at("2027-06-01T00:00:00Z");
        let p = Policy {
            delete: true,
            ..Policy::default()
        };
        let mut indices = settled(now, &p);
        for odd in [
            "lucid-sessions-2026.13",
            "lucid-users-2026.01",
            "lucid-x",
            "lucid-blocks-2026.1",
        ] {
            indices.push(IndexInfo::new(odd));
        }
        indices.push(IndexInfo::new("lucid-blocks-2026.01"));
        let everything = BTreeSet::from_iter(indices.iter().map(|i| i.name.clone()));
        let actions = plan(&indices, now, &p, &everything);
        let odd: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Unparseable { index, .. } => Some(index.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            odd,
            [
                "lucid-sessions-2026.13",
                "lucid-users-2026.01",
                "lucid-x",
                "lucid-blocks-2026.1"
            ]
        );
        assert!(
            actions
                .iter()
                .filter(|a| a.changes())
                .all(|a| !odd.contains(&a.index().as_str()))
        );
        assert!(actions.contains(&Action::Delete {
            index: Entity::Blocks.index(month(2026, 1))
        }));
        // Reported after the work, so a strange name never holds the real work back.
        let first_odd = actions
            .iter()
            .position(|a| matches!(a, Action::Unparseable { .. }))
            .expect("reported");
        assert!(actions[first_odd..].iter().all(|a| !a.changes()));
    }

    #[test]
    fn the_write_index_is_never_blocked_or_deleted_and_stray_write_aliases_are_cleared() {
        let p = Policy {
            delete: true,
            ..Policy::default()
        };
        let now = at("2027-06-15T00:00:00Z");
        let mut indices = settled(now, &p);
        // An old index that still holds the write alias (someone moved it by hand).
        let old = "lucid-transactions-2026.01";
        indices.push(IndexInfo {
            write_alias: true,
            ..IndexInfo::new(old)
        });
        let actions = plan(&indices, now, &p, &BTreeSet::from([old.to_owned()]));
        assert!(actions.contains(&Action::MoveWriteAlias {
            entity: Entity::Transactions,
            from: vec![old.into()],
            to: Entity::Transactions.index(month(2027, 6))
        }));
        assert!(for_index(&actions, old).is_empty(), "{actions:#?}");
        // Once the alias has moved, the old index follows its phase.
        apply(&mut indices, &actions);
        let next = plan(&indices, now, &p, &BTreeSet::from([old.to_owned()]));
        assert_eq!(
            next,
            [Action::Delete {
                index: IndexName::parse(old).expect("name")
            }]
        );
    }

    #[test]
    fn policies_out_of_order_are_refused() {
        assert!(Policy::default().check().is_ok());
        let bad = Policy {
            cold_after: Duration::from_secs(3600),
            ..Policy::default()
        };
        assert!(bad.check().is_err());
    }
}
