//! What a drill compares besides counts and documents: the scratch targets' index specs and
//! validators against the backup's own metadata artifacts (`.metadata.json` for a MongoDB
//! collection, `.meta.json` for an Elasticsearch index: what the restore recreated them
//! from). Pure functions over normalised forms, so the rules are table-tested here and the
//! drill only fetches what the server reports.
//!
//! - **MongoDB indexes** are compared by key pattern and options — `unique`, `sparse`,
//!   `partialFilterExpression`, `expireAfterSeconds` —, never by name: servers rename indexes
//!   (nx-27017 does). Directions are compared as ±1 whatever number type the server answers
//!   (1, 1.0, 1i64); text indexes by the set of their fields (nx-27017 lists one per field).
//!   The `_id_` index is the server's own and not compared. What the server does not report
//!   (the bootstrap's probe tells: key directions, `sparse` and `partialFilterExpression` on
//!   nx-27017) is listed as not comparable, never passed silently.
//! - **MongoDB validators** with their level and action (MongoDB's defaults, `strict` and
//!   `error`, where absent), numbers by value and fields in any order. A server that keeps no
//!   validators (the probe: one created straight through the driver is not reported either)
//!   is listed as not comparable; on a real MongoDB they are compared.
//! - **Elasticsearch mappings** must be equal once normalised: `"true"` and `true` are one
//!   value, an object field's `"type": "object"` beside its `properties` is the default
//!   servers leave out, as are `dynamic: true` and an empty `dynamic_templates`. A field the
//!   restored index has and the artifact's mapping lacks is accepted only where dynamic
//!   mapping is on: the restore's own documents add it (as they did in the source index).
//! - **Elasticsearch settings**: every setting the artifact gives must hold the same value
//!   (compared as text: the server answers `"1"` for 1) but the number of shards and of
//!   replicas, which a restore elsewhere need not keep, and those the server owns.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::mongo::bootstrap::{
    Capabilities, ServerCollection, ServerIndex, normalize_key, same_bson, server_index,
    text_fields,
};
use crate::mongo::bson::{Bson, Document};
use crate::mongo::transfer::ExportMetadata;
use crate::search::transfer::IndexMetadata;

/// Not comparable on a server that does not keep validators.
pub const VALIDATORS_NOT_KEPT: &str = "validators: the server keeps none (a validator created \
     straight through the driver is not reported either); compared on a MongoDB that keeps them";
/// Not comparable on a server that reports every key as ascending.
pub const DIRECTIONS_NOT_KEPT: &str = "index key directions: the server reports every key as \
     ascending; keys compared by their fields";
/// Not comparable on a server that does not report `sparse` and `partialFilterExpression`.
pub const OPTIONS_NOT_REPORTED: &str =
    "index sparse and partialFilterExpression: the server does not report them";

/// Settings a restore need not keep.
const SETTINGS_NOT_COMPARED: [&str; 2] = ["number_of_shards", "number_of_replicas"];

/// What comparing one target's specs found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Specs compared: each index and the validator of a collection, the mappings and the
    /// settings of an index.
    pub compared: u64,
    /// What this server does not let be compared ([`VALIDATORS_NOT_KEPT`], …).
    pub not_comparable: BTreeSet<&'static str>,
    /// What differs, each naming the index or the field.
    pub differences: Vec<String>,
}

/// A collection's indexes and validator as restored (`server`, `None`: not created at all),
/// against the artifact's `.metadata.json` (as the restore took it).
pub fn compare_collection(
    artifact: &ExportMetadata,
    server: Option<&ServerCollection>,
    caps: Capabilities,
) -> Comparison {
    let mut out = Comparison::default();
    let Some(server) = server else {
        out.differences
            .push("the collection was not created".to_owned());
        return out;
    };
    if !caps.keeps_key_directions {
        out.not_comparable.insert(DIRECTIONS_NOT_KEPT);
    }
    if !caps.reports_index_options {
        out.not_comparable.insert(OPTIONS_NOT_REPORTED);
    }
    let backed: Vec<ServerIndex> = artifact.indexes.iter().filter_map(server_index).collect();
    if backed.len() != artifact.indexes.len() {
        out.differences
            .push("an index of the backup's metadata has no key or name".to_owned());
    }
    let is_id = |i: &ServerIndex| i.name == "_id_" || i.key.keys().eq(["_id"]);
    let plain = |i: &&ServerIndex| text_fields(&i.key).is_empty() && !is_id(i);
    let mut unmatched: Vec<&ServerIndex> = server.indexes.iter().filter(plain).collect();
    for want in backed.iter().filter(plain) {
        out.compared += 1;
        let key = normalize_key(&want.key, caps.keeps_key_directions);
        let Some(at) = unmatched
            .iter()
            .position(|h| normalize_key(&h.key, caps.keeps_key_directions) == key)
        else {
            out.differences.push(format!(
                "index {} on {}: missing in the restored collection",
                want.name, want.key
            ));
            continue;
        };
        let have = unmatched.remove(at);
        let diffs = index_option_differences(want, have, caps);
        if !diffs.is_empty() {
            out.differences.push(format!(
                "index {} on {} (restored as {}): {}",
                want.name,
                want.key,
                have.name,
                diffs.join("; ")
            ));
        }
    }
    for extra in unmatched {
        out.differences.push(format!(
            "index {} on {}: not in the backup's metadata",
            extra.name, extra.key
        ));
    }
    let want_text: BTreeSet<String> = backed.iter().flat_map(|i| text_fields(&i.key)).collect();
    let have_text: BTreeSet<String> = server
        .indexes
        .iter()
        .flat_map(|i| text_fields(&i.key))
        .collect();
    if !want_text.is_empty() || !have_text.is_empty() {
        out.compared += 1;
        if want_text != have_text {
            out.differences.push(format!(
                "text index: the backup's on {want_text:?}, the restored one on {have_text:?}"
            ));
        }
    }
    compare_validator(artifact, server, caps, &mut out);
    out
}

fn index_option_differences(
    want: &ServerIndex,
    have: &ServerIndex,
    caps: Capabilities,
) -> Vec<String> {
    let mut diffs = Vec::new();
    if want.unique != have.unique {
        diffs.push(format!(
            "unique: backup {}, restored {}",
            want.unique, have.unique
        ));
    }
    if want.expire_after_secs != have.expire_after_secs {
        diffs.push(format!(
            "expireAfterSeconds: backup {:?}, restored {:?}",
            want.expire_after_secs, have.expire_after_secs
        ));
    }
    if caps.reports_index_options {
        if want.sparse != have.sparse {
            diffs.push(format!(
                "sparse: backup {}, restored {}",
                want.sparse, have.sparse
            ));
        }
        let same_filter = match (&want.partial_filter, &have.partial_filter) {
            (None, None) => true,
            (Some(a), Some(b)) => same_bson(&Bson::Document(a.clone()), &Bson::Document(b.clone())),
            _ => false,
        };
        if !same_filter {
            diffs.push(format!(
                "partialFilterExpression: backup {:?}, restored {:?}",
                want.partial_filter, have.partial_filter
            ));
        }
    }
    diffs
}

fn compare_validator(
    artifact: &ExportMetadata,
    server: &ServerCollection,
    caps: Capabilities,
    out: &mut Comparison,
) {
    let want = &artifact.validator;
    let Some(have) = server.validator.as_ref() else {
        if want.is_empty() {
            return;
        }
        if caps.stores_validators {
            out.compared += 1;
            out.differences
                .push("validator: the restored collection has none".to_owned());
        } else {
            out.not_comparable.insert(VALIDATORS_NOT_KEPT);
        }
        return;
    };
    out.compared += 1;
    if !same_bson(&Bson::Document(have.clone()), &Bson::Document(want.clone())) {
        out.differences.push(format!(
            "validator: the restored collection's differs from the backup's ({})",
            first_difference(want, have)
        ));
    }
    let level = server.validation_level.as_deref().unwrap_or("strict");
    let action = server.validation_action.as_deref().unwrap_or("error");
    if level != artifact.validation_level {
        out.differences.push(format!(
            "validationLevel: backup {}, restored {level}",
            artifact.validation_level
        ));
    }
    if action != artifact.validation_action {
        out.differences.push(format!(
            "validationAction: backup {}, restored {action}",
            artifact.validation_action
        ));
    }
}

/// The first field where two documents differ, as a dotted path.
fn first_difference(want: &Document, have: &Document) -> String {
    for (k, v) in want {
        match have.get(k) {
            None => return format!("{k}: missing"),
            Some(h) if !same_bson(v, h) => {
                return match (v, h) {
                    (Bson::Document(a), Bson::Document(b)) => {
                        format!("{k}.{}", first_difference(a, b))
                    }
                    _ => format!("{k}: backup {v}, restored {h}"),
                };
            }
            Some(_) => {}
        }
    }
    match have.keys().find(|k| !want.contains_key(k.as_str())) {
        Some(k) => format!("{k}: not in the backup's"),
        None => "no field differs".to_owned(),
    }
}

/// An index's mappings and settings as restored, against the artifact's `.meta.json`.
pub fn compare_index(artifact: &IndexMetadata, server: &IndexMetadata) -> Comparison {
    let mut out = Comparison {
        compared: 2,
        ..Comparison::default()
    };
    mapping_differences(
        &normalise_mapping(&artifact.mappings),
        &normalise_mapping(&server.mappings),
        "mappings",
        true,
        &mut out.differences,
    );
    let want = flat_settings(&artifact.settings);
    let have = flat_settings(&server.settings);
    for (key, value) in &want {
        if SETTINGS_NOT_COMPARED.contains(&key.as_str()) {
            continue;
        }
        match have.get(key) {
            None => out.differences.push(format!(
                "settings.index.{key}: missing in the restored index"
            )),
            Some(h) if h != value => out.differences.push(format!(
                "settings.index.{key}: backup {value}, restored {h}"
            )),
            Some(_) => {}
        }
    }
    out
}

/// Settings under `index` as dotted keys, each value as text (servers answer `"1"` for 1).
fn flat_settings(settings: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", settings, &mut out);
    out.retain(|k, _| {
        !crate::search::transfer::SERVER_OWNED_SETTINGS
            .contains(&k.split('.').next().unwrap_or_default())
    });
    out
}

/// A mapping with the defaults servers fill in or leave out removed, and `"true"`/`"false"`
/// as booleans (see the module doc).
pub fn normalise_mapping(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let v = normalise_mapping(v);
                let default = match k.as_str() {
                    "type" => v == "object" && m.contains_key("properties"),
                    "dynamic" => v == Value::Bool(true),
                    "dynamic_templates" => v.as_array().is_some_and(Vec::is_empty),
                    "properties" => v.as_object().is_some_and(|p| p.is_empty()),
                    _ => false,
                };
                if !default {
                    out.insert(k.clone(), v);
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalise_mapping).collect()),
        Value::String(s) if s == "true" => Value::Bool(true),
        Value::String(s) if s == "false" => Value::Bool(false),
        other => other.clone(),
    }
}

/// The differences between two normalised mappings, each naming its path. `dynamic`: whether
/// fields may be added to `properties` at this level (inherited; an object's own `dynamic`
/// decides for its fields).
fn mapping_differences(
    want: &Value,
    have: &Value,
    path: &str,
    dynamic: bool,
    out: &mut Vec<String>,
) {
    let (Value::Object(w), Value::Object(h)) = (want, have) else {
        if want != have {
            out.push(format!("{path}: backup {want}, restored {have}"));
        }
        return;
    };
    // `dynamic` was normalised away where true; false, "strict" and "runtime" add no fields.
    let dynamic = match w.get("dynamic") {
        None => dynamic,
        Some(_) => false,
    };
    for (k, v) in w {
        let at = format!("{path}.{k}");
        match h.get(k) {
            None => out.push(format!("{at}: missing in the restored index")),
            Some(hv) if k == "properties" => {
                properties_differences(v, hv, &at, dynamic, out);
            }
            Some(hv) => mapping_differences(v, hv, &at, dynamic, out),
        }
    }
    for k in h.keys().filter(|k| !w.contains_key(k.as_str())) {
        if k == "properties" && dynamic {
            // Every field of it was added by the restored documents.
            continue;
        }
        out.push(format!("{path}.{k}: not in the backup's mapping"));
    }
}

fn properties_differences(
    want: &Value,
    have: &Value,
    path: &str,
    dynamic: bool,
    out: &mut Vec<String>,
) {
    let (Value::Object(w), Value::Object(h)) = (want, have) else {
        return mapping_differences(want, have, path, dynamic, out);
    };
    for (field, def) in w {
        let at = format!("{path}.{field}");
        match h.get(field) {
            None => out.push(format!("{at}: missing in the restored index")),
            Some(hd) => mapping_differences(def, hd, &at, dynamic, out),
        }
    }
    if !dynamic {
        for field in h.keys().filter(|f| !w.contains_key(f.as_str())) {
            out.push(format!(
                "{path}.{field}: not in the backup's mapping (dynamic mapping is off)"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mongo::bson::doc;

    fn export(validator: Document, indexes: Vec<Document>) -> ExportMetadata {
        ExportMetadata {
            format: crate::mongo::EXPORT_FORMAT,
            database: "lucid".into(),
            collection: "users".into(),
            validator,
            validation_level: "strict".into(),
            validation_action: "error".into(),
            indexes,
            documents: 0,
            exported_at: crate::mongo::bson::DateTime::from_millis(0),
        }
    }

    fn listed(entries: Vec<Document>, validator: Option<Document>) -> ServerCollection {
        ServerCollection {
            validator,
            validation_level: None,
            validation_action: None,
            indexes: entries.iter().filter_map(server_index).collect(),
        }
    }

    fn backed_indexes() -> Vec<Document> {
        vec![
            doc! {"key": {"email": 1}, "name": "users_email_unique", "unique": true},
            doc! {"key": {"at": -1, "user": 1}, "name": "users_at_user",
            "partialFilterExpression": {"active": true, "n": {"$gt": 1}}, "sparse": true},
            doc! {"key": {"seen": 1}, "name": "users_seen_ttl", "expireAfterSeconds": 3600},
            doc! {"key": {"bio": "text", "name": "text"}, "name": "users_text"},
        ]
    }

    #[test]
    fn indexes_compare_by_key_and_options_whatever_their_names_and_option_order() {
        let validator = doc! {"$jsonSchema": {"bsonType": "object", "required": ["email"]}};
        let artifact = export(validator.clone(), backed_indexes());
        // Renamed, options in another order, numbers of other types, the text index as
        // MongoDB lists it, the validator's fields in another order.
        let server = listed(
            vec![
                doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
                doc! {"v": 2, "key": {"seen": 1.0}, "name": "seen_1", "expireAfterSeconds": 3600_i64},
                doc! {"v": 2, "key": {"at": -1_i64, "user": 1}, "name": "at_-1_user_1",
                "sparse": true, "partialFilterExpression": {"n": {"$gt": 1.0}, "active": true}},
                doc! {"v": 2, "unique": true, "key": {"email": 1_i64}, "name": "email_1"},
                doc! {"v": 2, "key": {"_fts": "text", "_ftsx": 1}, "name": "t",
                "weights": {"name": 1, "bio": 1}},
            ],
            Some(doc! {"$jsonSchema": {"required": ["email"], "bsonType": "object"}}),
        );
        let c = compare_collection(&artifact, Some(&server), Capabilities::MONGODB);
        assert_eq!(c.differences, Vec::<String>::new());
        // Three plain indexes, the text index, the validator.
        assert_eq!(c.compared, 5);
        assert!(c.not_comparable.is_empty());
    }

    #[test]
    fn a_missing_extra_or_changed_index_is_named() {
        let artifact = export(Document::new(), backed_indexes());
        let server = listed(
            vec![
                doc! {"key": {"_id": 1}, "name": "_id_"},
                doc! {"key": {"email": 1}, "name": "email_1"},
                doc! {"key": {"at": -1, "user": 1}, "name": "x", "sparse": true,
                "partialFilterExpression": {"active": true, "n": {"$gt": 1}}},
                doc! {"key": {"seen": 1}, "name": "s", "expireAfterSeconds": 60},
                doc! {"key": {"other": 1}, "name": "other_1"},
                doc! {"key": {"_fts": "text"}, "name": "t", "weights": {"bio": 1}},
            ],
            None,
        );
        let c = compare_collection(&artifact, Some(&server), Capabilities::MONGODB);
        let all = c.differences.join("\n");
        assert!(
            all.contains("index users_email_unique on { \"email\": 1 } (restored as email_1): unique: backup true, restored false"),
            "{all}"
        );
        assert!(
            all.contains("users_seen_ttl")
                && all.contains("expireAfterSeconds: backup Some(3600), restored Some(60)"),
            "{all}"
        );
        assert!(
            all.contains("index other_1 on { \"other\": 1 }: not in the backup's metadata"),
            "{all}"
        );
        assert!(all.contains("text index"), "{all}");
        assert_eq!(c.differences.len(), 4, "{all}");

        // A direction that differs is another key on a server that keeps directions.
        let server = listed(vec![doc! {"key": {"at": 1, "user": 1}, "name": "x"}], None);
        let artifact = export(Document::new(), vec![backed_indexes().remove(1)]);
        let c = compare_collection(&artifact, Some(&server), Capabilities::MONGODB);
        assert!(
            c.differences[0].contains("users_at_user on { \"at\": -1, \"user\": 1 }: missing"),
            "{:?}",
            c.differences
        );
    }

    #[test]
    fn what_the_server_does_not_keep_is_not_comparable_never_a_pass() {
        let nx = Capabilities {
            stores_validators: false,
            keeps_key_directions: false,
            reports_index_options: false,
        };
        let validator = doc! {"$jsonSchema": {"bsonType": "object"}};
        let artifact = export(validator.clone(), backed_indexes());
        // Directions and options dropped, text indexes one per field.
        let server = listed(
            vec![
                doc! {"key": {"_id": 1}, "name": "_id_"},
                doc! {"key": {"email": 1}, "name": "a", "unique": true},
                doc! {"key": {"at": 1, "user": 1}, "name": "b"},
                doc! {"key": {"seen": 1}, "name": "c", "expireAfterSeconds": 3600},
                doc! {"key": {"_fts": "text"}, "name": "d", "weights": {"bio": 1}},
                doc! {"key": {"_fts": "text"}, "name": "e", "weights": {"name": 1}},
            ],
            None,
        );
        let c = compare_collection(&artifact, Some(&server), nx);
        assert_eq!(c.differences, Vec::<String>::new());
        assert_eq!(c.compared, 4, "the validator is not counted as compared");
        assert_eq!(
            c.not_comparable,
            BTreeSet::from([
                VALIDATORS_NOT_KEPT,
                DIRECTIONS_NOT_KEPT,
                OPTIONS_NOT_REPORTED
            ])
        );
        // Unique and TTL are reported there, so they are still compared.
        let server = listed(vec![doc! {"key": {"email": 1}, "name": "a"}], None);
        let artifact = export(Document::new(), vec![backed_indexes().remove(0)]);
        assert_eq!(
            compare_collection(&artifact, Some(&server), nx)
                .differences
                .len(),
            1
        );

        // A server that keeps validators and answers none: a difference.
        let artifact = export(validator.clone(), Vec::new());
        let c = compare_collection(
            &artifact,
            Some(&listed(vec![], None)),
            Capabilities::MONGODB,
        );
        assert_eq!(
            c.differences,
            vec!["validator: the restored collection has none"]
        );
        let c = compare_collection(
            &artifact,
            Some(&listed(
                vec![],
                Some(doc! {"$jsonSchema": {"bsonType": "array"}}),
            )),
            Capabilities::MONGODB,
        );
        assert!(
            c.differences[0]
                .contains("$jsonSchema.bsonType: backup \"object\", restored \"array\""),
            "{:?}",
            c.differences
        );
        let c = compare_collection(&artifact, None, Capabilities::MONGODB);
        assert_eq!(c.differences, vec!["the collection was not created"]);
    }

    fn index(mappings: Value, settings: Value) -> IndexMetadata {
        IndexMetadata {
            format: crate::search::EXPORT_FORMAT,
            index: "lucid-a".into(),
            mappings,
            settings,
            write_blocked: false,
            aliases: json!({}),
            documents: 0,
        }
    }

    #[test]
    fn mappings_are_equal_with_the_defaults_a_server_fills_in() {
        let artifact = index(
            json!({"dynamic": "strict", "properties": {
                "user_id": {"type": "keyword"},
                "meta": {"type": "object", "properties": {"ip": {"type": "ip", "index": true}}},
            }}),
            json!({"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "1s",
                   "analysis": {"analyzer": {"a": {"type": "standard"}}}}),
        );
        let server = index(
            json!({"dynamic": "strict", "dynamic_templates": [], "properties": {
                "meta": {"properties": {"ip": {"index": "true", "type": "ip"}}},
                "user_id": {"type": "keyword"},
            }}),
            json!({"number_of_shards": "3", "number_of_replicas": "1", "refresh_interval": "1s",
                   "analysis": {"analyzer": {"a": {"type": "standard"}}}, "uuid": "x"}),
        );
        let c = compare_index(&artifact, &server);
        assert_eq!(c.differences, Vec::<String>::new());
        assert_eq!(c.compared, 2);

        // Fields the documents added under dynamic mapping; `dynamic: true` said or not.
        let artifact = index(json!({"properties": {"a": {"type": "keyword"}}}), json!({}));
        let server = index(
            json!({"dynamic": "true", "properties": {"a": {"type": "keyword"},
                "b": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}}}),
            json!({}),
        );
        assert_eq!(
            compare_index(&artifact, &server).differences,
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_mapping_or_setting_that_differs_is_named() {
        let artifact = index(
            json!({"dynamic": false, "properties": {"a": {"type": "keyword"}, "b": {"type": "long"}}}),
            json!({"refresh_interval": "1s", "number_of_shards": 1}),
        );
        let server = index(
            json!({"dynamic": "false", "properties": {"a": {"type": "text"}, "c": {"type": "long"}}}),
            json!({"refresh_interval": "30s"}),
        );
        let c = compare_index(&artifact, &server);
        assert_eq!(
            c.differences,
            vec![
                "mappings.properties.a.type: backup \"keyword\", restored \"text\"",
                "mappings.properties.b: missing in the restored index",
                "mappings.properties.c: not in the backup's mapping (dynamic mapping is off)",
                "settings.index.refresh_interval: backup 1s, restored 30s",
            ]
        );
    }
}
