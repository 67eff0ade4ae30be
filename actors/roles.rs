//! Which parts of lucid-db run in a process: a set of [`Part`]s, with the presets the daemon,
//! an embedding sibling and the CLI use.
//!
//! The parts are the units that must not be duplicated or started by accident: a sibling
//! service that embeds the store actors must never start a second scheduler (two crons would
//! run every backup twice), and `lucid-db health` must never create the default volumes in
//! whatever directory its configuration names. So [`crate::start`] starts exactly the parts it
//! is given, and nothing else decides.
//!
//! A preset names a whole process: [`Roles::DAEMON`] (`lucid-db run`), [`Roles::SIBLING`] (an
//! embedding service) and [`Roles::CLI`] (the CLI's backup and volume commands: never the
//! scheduler, so no cron ever runs inside a CLI). On the wire (`/health`) a set is a list of
//! part names in a fixed order.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One part of lucid-db.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// The Redis, MongoDB and Elasticsearch actors (each as its `enabled` key says).
    Stores,
    /// The volume actor; it creates the default volumes under `volumes.root` when it starts.
    Volumes,
    /// The backup actor: backups and their verification; never in an embedding sibling.
    Backup,
    /// The scheduler actor: cron jobs and their run records; only the daemon runs it.
    Scheduler,
}

impl Part {
    /// Every part, in the order they start and are listed.
    pub const ALL: [Part; 4] = [Part::Stores, Part::Volumes, Part::Backup, Part::Scheduler];

    pub fn as_str(self) -> &'static str {
        match self {
            Part::Stores => "stores",
            Part::Volumes => "volumes",
            Part::Backup => "backup",
            Part::Scheduler => "scheduler",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Part`]s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Roles(u8);

impl Roles {
    /// No part at all.
    pub const NONE: Roles = Roles(0);
    pub const STORES: Roles = Roles::of(Part::Stores);
    pub const VOLUMES: Roles = Roles::of(Part::Volumes);
    pub const BACKUP: Roles = Roles::of(Part::Backup);
    pub const SCHEDULER: Roles = Roles::of(Part::Scheduler);

    /// `lucid-db run`: every part.
    pub const DAEMON: Roles = Roles::STORES
        .with(Roles::VOLUMES)
        .with(Roles::BACKUP)
        .with(Roles::SCHEDULER);
    /// What a sibling service embeds: the store actors only.
    pub const SIBLING: Roles = Roles::STORES;
    /// The CLI's backup and volume commands: the stores, the volumes and the backup actor —
    /// never the scheduler.
    pub const CLI: Roles = Roles::STORES.with(Roles::VOLUMES).with(Roles::BACKUP);

    /// The parts that have an actor today; [`crate::start`] starts at most these.
    pub const BUILT: Roles = Roles::DAEMON;

    pub const fn of(part: Part) -> Roles {
        Roles(part.bit())
    }

    /// The union of two sets.
    pub const fn with(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }

    /// The parts in both sets.
    pub const fn and(self, other: Roles) -> Roles {
        Roles(self.0 & other.0)
    }

    pub const fn contains(self, part: Part) -> bool {
        self.0 & part.bit() != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The parts in the set, in [`Part::ALL`] order.
    pub fn parts(self) -> impl Iterator<Item = Part> {
        Part::ALL.into_iter().filter(move |p| self.contains(*p))
    }

    /// Whether a process with these parts writes to the state directory and the data root
    /// (and so must create the one and own both). The stores alone never write there.
    pub const fn writes_state(self) -> bool {
        self.contains(Part::Volumes)
            || self.contains(Part::Backup)
            || self.contains(Part::Scheduler)
    }
}

impl FromIterator<Part> for Roles {
    fn from_iter<I: IntoIterator<Item = Part>>(iter: I) -> Roles {
        iter.into_iter()
            .fold(Roles::NONE, |set, p| set.with(Roles::of(p)))
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.parts()).finish()
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.parts().map(Part::as_str).collect();
        f.write_str(&names.join("+"))
    }
}

impl Serialize for Roles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.parts())
    }
}

impl<'de> Deserialize<'de> for Roles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Roles, D::Error> {
        Ok(Vec::<Part>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_hold_the_parts_their_process_runs() {
        let table = [
            (Roles::DAEMON, "stores+volumes+backup+scheduler", true),
            (Roles::SIBLING, "stores", false),
            (Roles::CLI, "stores+volumes+backup", true),
            (Roles::NONE, "none", false),
        ];
        for (roles, parts, writes) in table {
            assert_eq!(roles.to_string(), parts);
            assert_eq!(roles.writes_state(), writes, "{roles}");
        }
        assert!(!Roles::CLI.contains(Part::Scheduler), "no cron in a CLI");
        assert!(!Roles::SIBLING.contains(Part::Scheduler));
    }

    #[test]
    fn a_set_is_a_list_of_names_on_the_wire() {
        let json = serde_json::to_string(&Roles::CLI).expect("serialize");
        assert_eq!(json, r#"["stores","volumes","backup"]"#);
        let back: Roles = serde_json::from_str(r#"["volumes","stores","volumes"]"#).expect("parse");
        assert_eq!(back, Roles::STORES.with(Roles::VOLUMES));
        assert!(serde_json::from_str::<Roles>(r#"["cron"]"#).is_err());
    }

    #[test]
    fn only_built_parts_start() {
        assert_eq!(Roles::DAEMON.and(Roles::BUILT), Roles::DAEMON);
        assert_eq!(Roles::SIBLING.and(Roles::BUILT), Roles::STORES);
    }
}
