//! The operator docs and the code stay in step: every configuration key with its default and
//! environment name (docs/configuration.md), every event with its level and fields
//! (docs/events.md).

use std::collections::BTreeMap;

use lucid_actors::config::{self, Config};
use lucid_actors::events;

fn doc(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Rows of the markdown table whose first cell is a backticked name.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

fn unquote(cell: &str) -> &str {
    cell.trim_matches('`')
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => {
                out.insert(key, other.clone());
            }
        }
    }
}

#[test]
fn configuration_doc_lists_every_key_with_its_default() {
    let defaults: toml::Table = toml::from_str(config::DEFAULTS).expect("defaults parse");
    let mut want = BTreeMap::new();
    flatten("", &defaults, &mut want);

    // The defaults file holds exactly the keys of the types (output-only secrets aside).
    let typed =
        toml::Table::try_from(Config::defaults().expect("defaults valid")).expect("serialize");
    let mut typed_keys = BTreeMap::new();
    flatten("", &typed, &mut typed_keys);
    let typed_keys: Vec<&String> = typed_keys.keys().collect();
    let default_keys: Vec<&String> = want.keys().collect();
    assert_eq!(
        typed_keys, default_keys,
        "configs/lucid-db.toml and the Config types disagree"
    );

    let text = doc("configuration.md");
    let documented: Vec<Vec<String>> = rows(&text)
        .into_iter()
        .filter(|r| r.len() == 4 && r[2].starts_with("`LUCID_DB__"))
        .collect();
    let mut seen = BTreeMap::new();
    for row in &documented {
        let key = unquote(&row[0]).to_owned();
        let default: toml::Table = toml::from_str(&format!("v = {}", unquote(&row[1])))
            .unwrap_or_else(|e| panic!("{key}: default {} is not a TOML value: {e}", row[1]));
        let env = format!("LUCID_DB__{}", key.to_uppercase().replace('.', "__"));
        assert_eq!(unquote(&row[2]), env, "{key}: environment name");
        assert!(!row[3].is_empty(), "{key}: no description");
        seen.insert(key, default["v"].clone());
    }
    let missing: Vec<&String> = want.keys().filter(|k| !seen.contains_key(*k)).collect();
    let extra: Vec<&String> = seen.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "docs/configuration.md lists keys that do not exist: {extra:?}"
    );
    for (key, value) in &want {
        assert_eq!(
            &seen[key], value,
            "{key}: documented default differs from configs/lucid-db.toml"
        );
    }
}

#[test]
fn events_doc_lists_every_event_with_level_and_fields() {
    let text = doc("events.md");
    let list = text.split("## List").nth(1).expect("a '## List' section");
    let documented: BTreeMap<String, (String, Vec<String>)> = rows(list)
        .into_iter()
        .map(|r| {
            let fields = r[2].split(", ").map(|f| unquote(f).to_owned()).collect();
            (unquote(&r[0]).to_owned(), (r[1].clone(), fields))
        })
        .collect();
    let code: BTreeMap<String, (String, Vec<String>)> = events::ALL
        .iter()
        .map(|(name, level, fields)| {
            (
                name.to_string(),
                (
                    level.to_string(),
                    fields.iter().map(|f| f.to_string()).collect(),
                ),
            )
        })
        .collect();
    assert_eq!(
        documented, code,
        "docs/events.md and actors/events.rs disagree"
    );
}

/// The retention docs/mongodb.md states for a collection ("kept 90 days (TTL)") is the TTL
/// index its file in configs/mongodb/ creates.
#[test]
fn mongodb_doc_states_the_retention_the_ttl_indexes_apply() {
    let text = doc("mongodb.md");
    let mut checked = 0;
    for row in rows(&text) {
        let Some(kept) = row.get(1).and_then(|holds| holds.split("kept ").nth(1)) else {
            continue;
        };
        let collection = unquote(&row[0]);
        let (n, unit) = kept
            .split_once(' ')
            .unwrap_or_else(|| panic!("{collection}: cannot read {kept:?}"));
        let n: u64 = n
            .parse()
            .unwrap_or_else(|e| panic!("{collection}: {kept:?}: {e}"));
        let stated = match unit.trim_start_matches(['(', ' ']) {
            u if u.starts_with("day") => n * 86_400,
            u if u.starts_with("year") => n * 365 * 86_400,
            u => panic!("{collection}: unit of {u:?}"),
        };
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs/mongodb")
            .join(format!("{collection}.json"));
        let file: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ttls: Vec<u64> = file["indexes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["expireAfterSeconds"].as_u64())
            .collect();
        assert_eq!(
            ttls,
            [stated],
            "{collection}: docs/mongodb.md says kept {kept}"
        );
        checked += 1;
    }
    assert!(checked >= 2, "no retention found in docs/mongodb.md");
}
