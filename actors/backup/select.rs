//! Which stores a backup takes: what the caller names (`volumes`, `volumes:NAME`, `mongodb`,
//! `mongodb:COLL`, `redis`, `elasticsearch`, `elasticsearch:INDEX`; nothing: everything that
//! runs), resolved against what runs in this process and `[backup.volumes]` into a [`Plan`]. A
//! pure function, so the rules are one table test.
//!
//! - `volumes` is every volume but the live database volumes (`mongodb`, `redis`,
//!   `elasticsearch`: their data is backed up logically, through their stores) and `backups`
//!   (a backup of the backups); `backup.volumes.include` adds to that set (a database volume
//!   too), `backup.volumes.exclude` takes out. `volumes:NAME` is one volume, excluded or not.
//! - `mongodb` is every Lucid collection, `mongodb:COLL` one (several may be named);
//!   `elasticsearch` every `lucid-*` index the cluster has when the run starts,
//!   `elasticsearch:INDEX` one (whether it exists is the export's to say).
//! - With no selection, every store whose actor runs here is taken; a database store whose
//!   actor does not run (`enabled = false`) is recorded `skipped` in the manifest, so nobody
//!   mistakes the backup for one that holds it. Named explicitly, a store that does not run is
//!   refused: `disabled` when the configuration turns it off, else `unavailable`.

use std::fmt;
use std::str::FromStr;

use crate::config::BackupVolumesConfig;
use crate::mongo::Collection;
use crate::volume::VolumeName;

/// Volumes the `volumes` selection leaves out unless `backup.volumes.include` names them.
pub const NOT_IN_VOLUMES: [&str; 4] = ["mongodb", "redis", "elasticsearch", "backups"];

/// The database stores, by their manifest names, in the order a run takes them.
pub const DATABASES: [&str; 3] = ["mongodb", "redis", "elasticsearch"];

/// One item of a store selection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreSelector {
    /// `volumes`: the default set of volumes (see the module doc).
    Volumes,
    /// `volumes:NAME`: one volume.
    Volume(VolumeName),
    /// `mongodb`: every Lucid collection.
    Mongodb,
    /// `mongodb:COLL`: one collection.
    Collection(Collection),
    /// `redis`: every `lucid:*` key.
    Redis,
    /// `elasticsearch`: every `lucid-*` index.
    Elasticsearch,
    /// `elasticsearch:INDEX`: one `lucid-*` index.
    Index(String),
}

/// A name `elasticsearch:INDEX` may take: a concrete `lucid-*` index (lower case, no
/// wildcard, no path).
pub fn check_index_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with("lucid-")
        && name.len() <= 255
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a lucid-* index name (a-z 0-9 - _ . only)",
            name.chars().take(64).collect::<String>()
        ))
    }
}

impl FromStr for StoreSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<StoreSelector, String> {
        let s = s.trim();
        match s {
            "volumes" => return Ok(StoreSelector::Volumes),
            "mongodb" => return Ok(StoreSelector::Mongodb),
            "redis" => return Ok(StoreSelector::Redis),
            "elasticsearch" => return Ok(StoreSelector::Elasticsearch),
            _ => {}
        }
        if let Some(name) = s.strip_prefix("volumes:") {
            return VolumeName::new(name)
                .map(StoreSelector::Volume)
                .map_err(|e| e.to_string());
        }
        if let Some(name) = s.strip_prefix("mongodb:") {
            return Collection::parse(name).map(StoreSelector::Collection);
        }
        if let Some(name) = s.strip_prefix("elasticsearch:") {
            check_index_name(name)?;
            return Ok(StoreSelector::Index(name.to_owned()));
        }
        Err(format!(
            "{:?} is not a store: use volumes, volumes:NAME, mongodb, mongodb:COLLECTION, redis, \
             elasticsearch or elasticsearch:INDEX",
            s.chars().take(64).collect::<String>()
        ))
    }
}

impl fmt::Display for StoreSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSelector::Volumes => f.write_str("volumes"),
            StoreSelector::Volume(name) => write!(f, "volumes:{name}"),
            StoreSelector::Mongodb => f.write_str("mongodb"),
            StoreSelector::Collection(c) => write!(f, "mongodb:{c}"),
            StoreSelector::Redis => f.write_str("redis"),
            StoreSelector::Elasticsearch => f.write_str("elasticsearch"),
            StoreSelector::Index(name) => write!(f, "elasticsearch:{name}"),
        }
    }
}

impl StoreSelector {
    /// The store it belongs to, by its manifest name.
    pub fn store(&self) -> &'static str {
        match self {
            StoreSelector::Volumes | StoreSelector::Volume(_) => "volumes",
            StoreSelector::Mongodb | StoreSelector::Collection(_) => "mongodb",
            StoreSelector::Redis => "redis",
            StoreSelector::Elasticsearch | StoreSelector::Index(_) => "elasticsearch",
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
    /// The database stores the configuration turns off (`enabled = false`).
    pub disabled: Vec<&'static str>,
}

/// The indices an Elasticsearch backup takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Indices {
    /// Every `lucid-*` index there is when the run starts.
    All,
    /// These, sorted.
    Only(Vec<String>),
}

/// What a run backs up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The volumes, sorted; `None` when the `volumes` store is not part of the run.
    pub volumes: Option<Vec<VolumeName>>,
    /// The collections, in [`Collection::ALL`]'s order; `None`: MongoDB is not part of it.
    pub mongodb: Option<Vec<Collection>>,
    pub redis: bool,
    pub elasticsearch: Option<Indices>,
    /// Database stores recorded as `skipped`: their actor does not run here.
    pub skipped: Vec<&'static str>,
}

impl Plan {
    /// The stores of the run, for events: the databases, `volumes`, then the skipped ones.
    pub fn store_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.mongodb.is_some() {
            names.push("mongodb");
        }
        if self.redis {
            names.push("redis");
        }
        if self.elasticsearch.is_some() {
            names.push("elasticsearch");
        }
        if self.volumes.is_some() {
            names.push("volumes");
        }
        names.extend(self.skipped.iter().copied());
        names
    }
}

/// A selection that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("no volume {name}")]
    UnknownVolume { name: String },
    /// The part that owns the store does not run in this process.
    #[error("{store}: its actor does not run in this process")]
    Unavailable { store: &'static str },
    /// The configuration turns the store off.
    #[error(
        "{store} is disabled in the configuration ({store}.enabled = false): nothing to back up"
    )]
    Disabled { store: &'static str },
    #[error("nothing to back up: {reason}")]
    Nothing { reason: String },
}

impl SelectionError {
    pub fn code(&self) -> &'static str {
        match self {
            SelectionError::UnknownVolume { .. } => "not_found",
            SelectionError::Unavailable { .. } => "unavailable",
            SelectionError::Disabled { .. } => "disabled",
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
    let mut plan = Plan {
        volumes: None,
        mongodb: None,
        redis: false,
        elasticsearch: None,
        skipped: Vec::new(),
    };
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
    let runs = |store: &str| available.databases.contains(&store);
    if requested.is_empty() {
        // Everything that runs; a `volumes` that the exclusions empty is left out.
        if let Some(all) = &available.volumes {
            plan.volumes = Some(defaults(all)).filter(|v| !v.is_empty());
        }
        if runs("mongodb") {
            plan.mongodb = Some(Collection::ALL.to_vec());
        }
        plan.redis = runs("redis");
        if runs("elasticsearch") {
            plan.elasticsearch = Some(Indices::All);
        }
        plan.skipped = DATABASES.into_iter().filter(|d| !runs(d)).collect();
    }
    for selector in requested {
        let store = selector.store();
        if store != "volumes" && !runs(store) {
            return Err(if available.disabled.contains(&store) {
                SelectionError::Disabled { store }
            } else {
                SelectionError::Unavailable { store }
            });
        }
        match selector {
            StoreSelector::Volumes | StoreSelector::Volume(_) => {
                let all = available
                    .volumes
                    .as_ref()
                    .ok_or(SelectionError::Unavailable { store: "volumes" })?;
                let chosen = plan.volumes.get_or_insert_with(Vec::new);
                match selector {
                    StoreSelector::Volume(name) if all.contains(name) => chosen.push(name.clone()),
                    StoreSelector::Volume(name) => {
                        return Err(SelectionError::UnknownVolume {
                            name: name.to_string(),
                        });
                    }
                    _ => chosen.extend(defaults(all)),
                }
            }
            StoreSelector::Mongodb => plan.mongodb = Some(Collection::ALL.to_vec()),
            StoreSelector::Collection(c) => plan.mongodb.get_or_insert_with(Vec::new).push(*c),
            StoreSelector::Redis => plan.redis = true,
            StoreSelector::Elasticsearch => plan.elasticsearch = Some(Indices::All),
            StoreSelector::Index(name) => match &mut plan.elasticsearch {
                Some(Indices::All) => {}
                Some(Indices::Only(list)) => list.push(name.clone()),
                None => plan.elasticsearch = Some(Indices::Only(vec![name.clone()])),
            },
        }
    }
    if requested.contains(&StoreSelector::Mongodb) {
        plan.mongodb = Some(Collection::ALL.to_vec());
    }
    if let Some(collections) = &mut plan.mongodb {
        let chosen = std::mem::take(collections);
        collections.extend(Collection::ALL.into_iter().filter(|c| chosen.contains(c)));
    }
    if let Some(Indices::Only(list)) = &mut plan.elasticsearch {
        list.sort();
        list.dedup();
    }
    if let Some(v) = &mut plan.volumes {
        v.sort();
        v.dedup();
        if v.is_empty() {
            return Err(SelectionError::Nothing {
                reason: "backup.volumes.exclude leaves no volume in the selection".to_owned(),
            });
        }
    }
    if plan.volumes.is_none()
        && plan.mongodb.is_none()
        && !plan.redis
        && plan.elasticsearch.is_none()
    {
        return Err(SelectionError::Nothing {
            reason: "no store runs in this process".to_owned(),
        });
    }
    Ok(plan)
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
            "mongodb:users",
            "mongodb:audit_logs",
            "redis",
            "elasticsearch",
            "elasticsearch:lucid-blocks-2026.11",
        ] {
            let s: StoreSelector = text.parse().expect(text);
            assert_eq!(s.to_string(), text);
        }
        for (bad, needle) in [
            ("", "not a store"),
            ("volume", "not a store"),
            ("volumes:", ""),
            ("volumes:../etc", ""),
            ("postgres", "not a store"),
            ("Volumes", "not a store"),
            ("mongodb:", "unknown collection"),
            ("mongodb:Users", "unknown collection"),
            ("elasticsearch:", "not a lucid-* index"),
            ("elasticsearch:lucid-*", "not a lucid-* index"),
            ("elasticsearch:other-index", "not a lucid-* index"),
            ("elasticsearch:lucid-x/_doc", "not a lucid-* index"),
            ("elasticsearch:Lucid-X", "not a lucid-* index"),
        ] {
            let e = bad.parse::<StoreSelector>().expect_err(bad);
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }

    /// (volumes, collections, redis, indices, skipped) of a plan, as text.
    type Shape<'a> = (
        Option<Vec<&'a str>>,
        Option<Vec<&'a str>>,
        bool,
        Option<Vec<&'a str>>,
        Vec<&'a str>,
    );

    fn shape(plan: &Plan) -> Shape<'_> {
        (
            plan.volumes
                .as_ref()
                .map(|v| v.iter().map(VolumeName::as_str).collect()),
            plan.mongodb
                .as_ref()
                .map(|c| c.iter().map(|c| c.name()).collect()),
            plan.redis,
            plan.elasticsearch.as_ref().map(|i| match i {
                Indices::All => vec!["*"],
                Indices::Only(list) => list.iter().map(String::as_str).collect(),
            }),
            plan.skipped.clone(),
        )
    }

    #[test]
    fn the_rules_in_one_table() {
        let every = Available {
            volumes: Some(names(&ALL)),
            databases: vec!["mongodb", "redis", "elasticsearch"],
            disabled: vec![],
        };
        let some = Available {
            volumes: Some(names(&ALL)),
            databases: vec!["redis", "mongodb"],
            disabled: vec!["elasticsearch"],
        };
        let no_volumes = Available {
            volumes: None,
            databases: vec!["redis"],
            disabled: vec![],
        };
        let nothing = Available::default();
        let defaults = vec!["blocks", "chunks", "logs", "merkle", "sessions"];
        let all_collections: Vec<&str> = Collection::ALL.iter().map(|c| c.name()).collect();
        type Case<'a> = (
            &'a str,
            Vec<&'a str>,
            &'a Available,
            BackupVolumesConfig,
            Result<Shape<'a>, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (
                "nothing named: every store that runs",
                vec![],
                &every,
                cfg(&[], &[]),
                Ok((
                    Some(defaults.clone()),
                    Some(all_collections.clone()),
                    true,
                    Some(vec!["*"]),
                    vec![],
                )),
            ),
            (
                "nothing named: a store that does not run is skipped",
                vec![],
                &some,
                cfg(&[], &[]),
                Ok((
                    Some(defaults.clone()),
                    Some(all_collections.clone()),
                    true,
                    None,
                    vec!["elasticsearch"],
                )),
            ),
            (
                "nothing named, every volume excluded: the databases alone",
                vec![],
                &some,
                cfg(&[], &["sessions", "chunks", "merkle", "blocks", "logs"]),
                Ok((
                    None,
                    Some(all_collections.clone()),
                    true,
                    None,
                    vec!["elasticsearch"],
                )),
            ),
            (
                "volumes",
                vec!["volumes"],
                &every,
                cfg(&[], &[]),
                Ok((Some(defaults.clone()), None, false, None, vec![])),
            ),
            (
                "include a database volume, exclude logs",
                vec!["volumes"],
                &every,
                cfg(&["redis"], &["logs"]),
                Ok((
                    Some(vec!["blocks", "chunks", "merkle", "redis", "sessions"]),
                    None,
                    false,
                    None,
                    vec![],
                )),
            ),
            (
                "include a volume that does not exist: selected, its export will say",
                vec!["volumes"],
                &every,
                cfg(&["scratch"], &[]),
                Ok((
                    Some(vec![
                        "blocks", "chunks", "logs", "merkle", "scratch", "sessions",
                    ]),
                    None,
                    false,
                    None,
                    vec![],
                )),
            ),
            (
                "one volume, even an excluded one",
                vec!["volumes:backups", "volumes:chunks"],
                &every,
                cfg(&[], &["chunks"]),
                Ok((Some(vec!["backups", "chunks"]), None, false, None, vec![])),
            ),
            (
                "both forms: one set",
                vec!["volumes", "volumes:chunks"],
                &every,
                cfg(&[], &[]),
                Ok((Some(defaults.clone()), None, false, None, vec![])),
            ),
            (
                "collections in the catalogue's order, once each",
                vec!["mongodb:audit_logs", "mongodb:users", "mongodb:users"],
                &every,
                cfg(&[], &[]),
                Ok((None, Some(vec!["users", "audit_logs"]), false, None, vec![])),
            ),
            (
                "mongodb wins over one collection",
                vec!["mongodb:users", "mongodb"],
                &every,
                cfg(&[], &[]),
                Ok((None, Some(all_collections.clone()), false, None, vec![])),
            ),
            (
                "indices sorted, and elasticsearch wins",
                vec![
                    "elasticsearch:lucid-b-2026.01",
                    "elasticsearch:lucid-a-2026.01",
                ],
                &every,
                cfg(&[], &[]),
                Ok((
                    None,
                    None,
                    false,
                    Some(vec!["lucid-a-2026.01", "lucid-b-2026.01"]),
                    vec![],
                )),
            ),
            (
                "elasticsearch and one index",
                vec!["elasticsearch:lucid-a-2026.01", "elasticsearch", "redis"],
                &every,
                cfg(&[], &[]),
                Ok((None, None, true, Some(vec!["*"]), vec![])),
            ),
            (
                "a database store the configuration turns off, named",
                vec!["volumes", "elasticsearch"],
                &some,
                cfg(&[], &[]),
                Err("disabled"),
            ),
            (
                "a database store whose actor does not run, named",
                vec!["elasticsearch:lucid-a-2026.01"],
                &no_volumes,
                cfg(&[], &[]),
                Err("unavailable"),
            ),
            (
                "an unknown volume named",
                vec!["volumes:nope"],
                &every,
                cfg(&[], &[]),
                Err("not_found"),
            ),
            (
                "everything excluded",
                vec!["volumes"],
                &every,
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
                "redis alone where only redis runs",
                vec![],
                &no_volumes,
                cfg(&[], &[]),
                Ok((None, None, true, None, vec!["mongodb", "elasticsearch"])),
            ),
            (
                "nothing named and nothing runs",
                vec![],
                &nothing,
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
                (Ok(plan), Ok(want)) => assert_eq!(shape(&plan), want, "{case}"),
                (Err(e), Err(code)) => assert_eq!(e.code(), code, "{case}: {e}"),
                (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
            }
        }
    }
}
