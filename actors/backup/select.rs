//! Which stores a backup takes: what the caller names (`volumes`, `volumes:NAME`, `mongodb`,
//! `redis`, `elasticsearch`; nothing: everything that runs), resolved against what runs in this
//! process and `[backup.volumes]` into a [`Plan`]. A pure function, so the rules are one table
//! test.
//!
//! - `volumes` is every volume but the live database volumes (`mongodb`, `redis`,
//!   `elasticsearch`: their data is backed up logically, through their stores) and `backups`
//!   (a backup of the backups); `backup.volumes.include` adds to that set (a database volume
//!   too), `backup.volumes.exclude` takes out. `volumes:NAME` is one volume, excluded or not.
//! - MongoDB, Redis and Elasticsearch are not backed up by this version (their exports join
//!   in #11): named explicitly, they are refused (`not_supported`); with no selection, each
//!   whose actor runs is recorded `skipped` in the manifest, so nobody mistakes the backup for
//!   one that holds them.

use std::fmt;
use std::str::FromStr;

use crate::config::BackupVolumesConfig;
use crate::volume::VolumeName;

/// Volumes the `volumes` selection leaves out unless `backup.volumes.include` names them.
pub const NOT_IN_VOLUMES: [&str; 4] = ["mongodb", "redis", "elasticsearch", "backups"];

/// The database stores, by their manifest names.
pub const DATABASES: [&str; 3] = ["mongodb", "redis", "elasticsearch"];

/// One item of a store selection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreSelector {
    /// `volumes`: the default set of volumes (see the module doc).
    Volumes,
    /// `volumes:NAME`: one volume.
    Volume(VolumeName),
    /// `mongodb`, `redis` or `elasticsearch`.
    Database(&'static str),
}

impl FromStr for StoreSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<StoreSelector, String> {
        let s = s.trim();
        if s == "volumes" {
            return Ok(StoreSelector::Volumes);
        }
        if let Some(name) = s.strip_prefix("volumes:") {
            return VolumeName::new(name)
                .map(StoreSelector::Volume)
                .map_err(|e| e.to_string());
        }
        DATABASES
            .into_iter()
            .find(|d| *d == s)
            .map(StoreSelector::Database)
            .ok_or_else(|| {
                format!(
                    "{:?} is not a store: use volumes, volumes:NAME, mongodb, redis or \
                     elasticsearch",
                    s.chars().take(64).collect::<String>()
                )
            })
    }
}

impl fmt::Display for StoreSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSelector::Volumes => f.write_str("volumes"),
            StoreSelector::Volume(name) => write!(f, "volumes:{name}"),
            StoreSelector::Database(name) => f.write_str(name),
        }
    }
}

/// What runs in this process.
#[derive(Debug, Clone, Default)]
pub struct Available {
    /// Every volume, when the volume actor runs.
    pub volumes: Option<Vec<VolumeName>>,
    /// The database stores whose actor runs.
    pub databases: Vec<&'static str>,
}

/// What a run backs up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The volumes, sorted; `None` when the `volumes` store is not part of the run.
    pub volumes: Option<Vec<VolumeName>>,
    /// Database stores recorded as `skipped`.
    pub skipped: Vec<&'static str>,
}

impl Plan {
    /// The stores of the run, for events: `volumes`, then the skipped ones.
    pub fn store_names(&self) -> Vec<&'static str> {
        self.volumes
            .iter()
            .map(|_| "volumes")
            .chain(self.skipped.iter().copied())
            .collect()
    }
}

/// A selection that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error(
        "{store} is not backed up by this version of lucid-db (volumes only; the database \
         stores come with their exports)"
    )]
    NotSupported { store: &'static str },
    #[error("no volume {name}")]
    UnknownVolume { name: String },
    /// The part that owns the store does not run in this process.
    #[error("{store}: its actor does not run in this process")]
    Unavailable { store: &'static str },
    #[error("nothing to back up: {reason}")]
    Nothing { reason: String },
}

impl SelectionError {
    pub fn code(&self) -> &'static str {
        match self {
            SelectionError::NotSupported { .. } => "not_supported",
            SelectionError::UnknownVolume { .. } => "not_found",
            SelectionError::Unavailable { .. } => "unavailable",
            SelectionError::Nothing { .. } => "nothing_selected",
        }
    }
}

/// Resolves `requested` (empty: everything that runs); see the module doc.
pub fn resolve(
    requested: &[StoreSelector],
    available: &Available,
    cfg: &BackupVolumesConfig,
) -> Result<Plan, SelectionError> {
    if let Some(StoreSelector::Database(store)) = requested
        .iter()
        .find(|s| matches!(s, StoreSelector::Database(_)))
    {
        return Err(SelectionError::NotSupported { store });
    }
    let mut volumes: Option<Vec<VolumeName>> = None;
    let mut skipped = Vec::new();
    let defaults = |all: &[VolumeName]| -> Vec<VolumeName> {
        let included = |name: &str| cfg.include.iter().any(|i| i == name);
        all.iter()
            .filter(|v| !NOT_IN_VOLUMES.contains(&v.as_str()) || included(v.as_str()))
            .cloned()
            // Named in include but not (yet) a volume: selected, and its export says why not.
            .chain(cfg.include.iter().filter_map(|n| VolumeName::new(n).ok()))
            .filter(|v| !cfg.exclude.iter().any(|e| e == v.as_str()))
            .collect()
    };
    if requested.is_empty() {
        if let Some(all) = &available.volumes {
            volumes = Some(defaults(all));
        }
        skipped = available.databases.clone();
    }
    for selector in requested {
        let all = available
            .volumes
            .as_ref()
            .ok_or(SelectionError::Unavailable { store: "volumes" })?;
        let chosen = volumes.get_or_insert_with(Vec::new);
        match selector {
            StoreSelector::Volumes => chosen.extend(defaults(all)),
            StoreSelector::Volume(name) if all.contains(name) => chosen.push(name.clone()),
            StoreSelector::Volume(name) => {
                return Err(SelectionError::UnknownVolume {
                    name: name.to_string(),
                });
            }
            StoreSelector::Database(_) => {}
        }
    }
    if let Some(v) = &mut volumes {
        v.sort();
        v.dedup();
        if v.is_empty() {
            return Err(SelectionError::Nothing {
                reason: "backup.volumes.exclude leaves no volume in the selection".to_owned(),
            });
        }
    }
    if volumes.is_none() {
        return Err(SelectionError::Nothing {
            reason: "no store that this version backs up runs in this process".to_owned(),
        });
    }
    Ok(Plan { volumes, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<VolumeName> {
        list.iter()
            .map(|n| VolumeName::new(n).expect("name"))
            .collect()
    }

    fn cfg(include: &[&str], exclude: &[&str]) -> BackupVolumesConfig {
        BackupVolumesConfig {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    const ALL: [&str; 9] = [
        "mongodb",
        "redis",
        "elasticsearch",
        "sessions",
        "chunks",
        "merkle",
        "blocks",
        "logs",
        "backups",
    ];

    #[test]
    fn selectors_parse_and_print() {
        for text in [
            "volumes",
            "volumes:chunks",
            "mongodb",
            "redis",
            "elasticsearch",
        ] {
            let s: StoreSelector = text.parse().expect(text);
            assert_eq!(s.to_string(), text);
        }
        for bad in [
            "",
            "volume",
            "volumes:",
            "volumes:../etc",
            "postgres",
            "Volumes",
        ] {
            assert!(bad.parse::<StoreSelector>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_rules_in_one_table() {
        let running = Available {
            volumes: Some(names(&ALL)),
            databases: vec!["redis", "mongodb"],
        };
        let no_volumes = Available {
            volumes: None,
            databases: vec!["redis"],
        };
        let defaults = ["blocks", "chunks", "logs", "merkle", "sessions"];
        type Case<'a> = (
            &'a str,
            Vec<&'a str>,
            &'a Available,
            BackupVolumesConfig,
            Result<(Vec<&'a str>, Vec<&'a str>), &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "nothing named: every default volume, running databases skipped",
                vec![],
                &running,
                cfg(&[], &[]),
                Ok((defaults.to_vec(), vec!["redis", "mongodb"])),
            ),
            (
                "volumes",
                vec!["volumes"],
                &running,
                cfg(&[], &[]),
                Ok((defaults.to_vec(), vec![])),
            ),
            (
                "include a database volume, exclude logs",
                vec!["volumes"],
                &running,
                cfg(&["redis"], &["logs"]),
                Ok((
                    vec!["blocks", "chunks", "merkle", "redis", "sessions"],
                    vec![],
                )),
            ),
            (
                "include a volume that does not exist: selected, its export will say",
                vec!["volumes"],
                &running,
                cfg(&["scratch"], &[]),
                Ok((
                    vec!["blocks", "chunks", "logs", "merkle", "scratch", "sessions"],
                    vec![],
                )),
            ),
            (
                "one volume, even an excluded one",
                vec!["volumes:backups", "volumes:chunks"],
                &running,
                cfg(&[], &["chunks"]),
                Ok((vec!["backups", "chunks"], vec![])),
            ),
            (
                "both forms: one set",
                vec!["volumes", "volumes:chunks"],
                &running,
                cfg(&[], &[]),
                Ok((defaults.to_vec(), vec![])),
            ),
            (
                "a database named",
                vec!["volumes", "mongodb"],
                &running,
                cfg(&[], &[]),
                Err("not_supported"),
            ),
            (
                "an unknown volume named",
                vec!["volumes:nope"],
                &running,
                cfg(&[], &[]),
                Err("not_found"),
            ),
            (
                "everything excluded",
                vec!["volumes"],
                &running,
                cfg(&[], &["sessions", "chunks", "merkle", "blocks", "logs"]),
                Err("nothing_selected"),
            ),
            (
                "volumes named where no volume actor runs",
                vec!["volumes"],
                &no_volumes,
                cfg(&[], &[]),
                Err("unavailable"),
            ),
            (
                "nothing named and nothing this version backs up runs",
                vec![],
                &no_volumes,
                cfg(&[], &[]),
                Err("nothing_selected"),
            ),
        ];
        for (case, requested, available, cfg, want) in cases {
            let requested: Vec<StoreSelector> = requested
                .iter()
                .map(|s| s.parse().expect("selector"))
                .collect();
            let got = resolve(&requested, available, &cfg);
            match (got, want) {
                (Ok(plan), Ok((volumes, skipped))) => {
                    let got: Vec<&str> = plan
                        .volumes
                        .as_ref()
                        .expect("volumes")
                        .iter()
                        .map(VolumeName::as_str)
                        .collect();
                    assert_eq!(got, volumes, "{case}");
                    assert_eq!(plan.skipped, skipped, "{case}");
                }
                (Err(e), Err(code)) => assert_eq!(e.code(), code, "{case}: {e}"),
                (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
            }
        }
    }
}
