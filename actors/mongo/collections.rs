//! The 15 Lucid collections, and their validators and indexes as data.
//!
//! Each collection has one file in `configs/mongodb/{collection}.json` — the one source of
//! truth for its `$jsonSchema` validator, validation level and action, and index specs. The
//! files are compiled into the binary and parsed and checked when the actor starts (or read
//! from `mongodb.schema_dir` when that is set, so an operator can change them without a
//! rebuild); a file that does not parse, a schema keyword the validator does not know, an
//! index whose name does not follow `{collection}_{fields}_{type}` or that does not say which
//! query it serves, stops start-up with the file and the key named.

use std::path::Path;
use std::sync::Arc;

use mongodb::bson::{Bson, Document};
use serde::Deserialize;

use super::schema::{Schema, SchemaError};

macro_rules! collections {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        /// A Lucid collection. Collections are not free strings: an unknown name is impossible
        /// in code and refused by [`Collection::parse`] at the edges (CLI, HTTP, backups).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Collection {
            $($variant),+
        }

        impl Collection {
            /// All of them, in a stable order.
            pub const ALL: [Collection; 15] = [$(Collection::$variant),+];

            /// The collection's name in the database.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Collection::$variant => $name),+
                }
            }

            /// The built-in schema file (`configs/mongodb/{name}.json`): what a backup carries
            /// as the schema files when `mongodb.schema_dir` is empty.
            pub fn builtin_schema(self) -> &'static str {
                match self {
                    $(Collection::$variant => include_str!(concat!("../../configs/mongodb/", $name, ".json"))),+
                }
            }
        }
    };
}

collections! {
    Users => "users",
    Sessions => "sessions",
    Blocks => "blocks",
    Transactions => "transactions",
    TrustPolicies => "trust_policies",
    Manifests => "manifests",
    Chunks => "chunks",
    MerkleTrees => "merkle_trees",
    HardwareWallets => "hardware_wallets",
    ApiKeys => "api_keys",
    RateLimits => "rate_limits",
    AuditLogs => "audit_logs",
    Notifications => "notifications",
    Analytics => "analytics",
    SystemConfig => "system_config",
}

impl Collection {
    /// A collection by name, or an error listing the valid names.
    pub fn parse(name: &str) -> Result<Collection, String> {
        Collection::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown collection {name:?}; the collections are {}",
                    Collection::ALL.map(Collection::name).join(", ")
                )
            })
    }
}

impl std::fmt::Display for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Collection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Collection::parse(s)
    }
}

/// An index as the configs describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    pub name: String,
    /// Field → 1, -1, "text" or "hashed", in order.
    pub key: Document,
    pub unique: bool,
    pub sparse: bool,
    /// TTL indexes: seconds after the indexed date.
    pub expire_after_secs: Option<i64>,
    pub partial_filter: Option<Document>,
    /// Which query it serves (documentation that the files must carry).
    pub serves: String,
}

impl IndexSpec {
    /// The `createIndexes` entry for this index.
    pub fn to_command(&self) -> Document {
        let mut d = Document::new();
        d.insert("key", self.key.clone());
        d.insert("name", self.name.clone());
        if self.unique {
            d.insert("unique", true);
        }
        if self.sparse {
            d.insert("sparse", true);
        }
        if let Some(secs) = self.expire_after_secs {
            d.insert("expireAfterSeconds", secs);
        }
        if let Some(p) = &self.partial_filter {
            d.insert("partialFilterExpression", p.clone());
        }
        d
    }

    /// Whether any key is a text key.
    pub fn is_text(&self) -> bool {
        self.key.values().any(|v| v.as_str() == Some("text"))
    }

    /// The name the convention gives this index: `{collection}_{fields}_{type}`.
    fn conventional_name(&self, collection: Collection) -> String {
        let fields: Vec<&str> = self.key.keys().map(String::as_str).collect();
        let kind = if self.expire_after_secs.is_some() {
            "ttl"
        } else if self.is_text() {
            "text"
        } else if self.unique {
            "unique"
        } else if self.key.values().any(|v| v.as_str() == Some("hashed")) {
            "hashed"
        } else if fields.len() > 1 {
            "compound"
        } else if self.key.values().any(|v| is_direction(v, -1)) {
            "desc"
        } else {
            "asc"
        };
        format!("{}_{}_{kind}", collection.name(), fields.join("_"))
    }
}

fn is_direction(v: &Bson, dir: i64) -> bool {
    match v {
        Bson::Int32(n) => i64::from(*n) == dir,
        Bson::Int64(n) => *n == dir,
        Bson::Double(f) => *f == dir as f64,
        _ => false,
    }
}

/// A collection's definition: validator (raw and compiled), validation settings, indexes.
#[derive(Debug, Clone)]
pub struct CollectionSpec {
    pub collection: Collection,
    /// The validator document as the server gets it (`{"$jsonSchema": …}`).
    pub validator: Document,
    pub schema: Schema,
    pub validation_level: String,
    pub validation_action: String,
    pub indexes: Vec<IndexSpec>,
    /// The shard key applied on a mongos (`{field: 1}` or `{field: "hashed"}`), if any.
    pub shard_key: Option<Document>,
}

/// The file format (`configs/mongodb/*.json`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    collection: String,
    validator: serde_json::Value,
    validation_level: String,
    validation_action: String,
    indexes: Vec<FileIndex>,
    #[serde(default)]
    shard_key: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIndex {
    name: String,
    key: serde_json::Value,
    #[serde(default)]
    unique: bool,
    #[serde(default)]
    sparse: bool,
    #[serde(default, rename = "expireAfterSeconds")]
    expire_after_seconds: Option<i64>,
    #[serde(default, rename = "partialFilterExpression")]
    partial_filter_expression: Option<serde_json::Value>,
    serves: String,
}

/// A schema file that is not right: which file, where in it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {path}: {reason}")]
pub struct CatalogError {
    pub file: String,
    pub path: String,
    pub reason: String,
}

/// All 15 collections' definitions, checked.
#[derive(Debug, Clone)]
pub struct Catalog {
    specs: Arc<[CollectionSpec; 15]>,
}

/// Extended JSON (relaxed or canonical) to a BSON document.
fn to_document(value: serde_json::Value, file: &str, path: &str) -> Result<Document, CatalogError> {
    match Bson::try_from(value) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(_) => Err(CatalogError {
            file: file.to_owned(),
            path: path.to_owned(),
            reason: "must be an object".to_owned(),
        }),
        Err(e) => Err(CatalogError {
            file: file.to_owned(),
            path: path.to_owned(),
            reason: format!("not valid extended JSON: {e}"),
        }),
    }
}

impl Catalog {
    /// The definitions compiled into this binary.
    pub fn builtin() -> Result<Catalog, CatalogError> {
        Self::build(
            |c| Ok(c.builtin_schema().to_owned()),
            Path::new("configs/mongodb"),
        )
    }

    /// The definitions `[mongodb]` names: `schema_dir`, or the built-in ones.
    pub fn load(cfg: &crate::config::MongoConfig) -> Result<Catalog, CatalogError> {
        if cfg.schema_dir.as_os_str().is_empty() {
            Self::builtin()
        } else {
            Self::from_dir(&cfg.schema_dir)
        }
    }

    /// The definitions in `dir` (one `{collection}.json` per collection, all 15 required).
    pub fn from_dir(dir: &Path) -> Result<Catalog, CatalogError> {
        Self::build(
            |c| {
                let path = dir.join(format!("{}.json", c.name()));
                std::fs::read_to_string(&path).map_err(|e| CatalogError {
                    file: path.display().to_string(),
                    path: String::new(),
                    reason: format!("cannot read: {e}"),
                })
            },
            dir,
        )
    }

    fn build(
        read: impl Fn(Collection) -> Result<String, CatalogError>,
        dir: &Path,
    ) -> Result<Catalog, CatalogError> {
        let mut specs = Vec::with_capacity(15);
        for c in Collection::ALL {
            let file = dir.join(format!("{}.json", c.name())).display().to_string();
            specs.push(parse_spec(c, &read(c)?, &file)?);
        }
        let specs: [CollectionSpec; 15] = specs
            .try_into()
            .unwrap_or_else(|_| unreachable!("one spec per collection"));
        Ok(Catalog {
            specs: Arc::new(specs),
        })
    }

    pub fn get(&self, c: Collection) -> &CollectionSpec {
        let i = Collection::ALL
            .iter()
            .position(|x| *x == c)
            .unwrap_or_else(|| unreachable!("ALL lists every collection"));
        &self.specs[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &CollectionSpec> {
        self.specs.iter()
    }

    /// How many indexes the definitions have in all.
    pub fn index_count(&self) -> usize {
        self.specs.iter().map(|s| s.indexes.len()).sum()
    }
}

fn parse_spec(c: Collection, text: &str, file: &str) -> Result<CollectionSpec, CatalogError> {
    let fail = |path: &str, reason: String| CatalogError {
        file: file.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let de = &mut serde_json::Deserializer::from_str(text);
    let raw: FileSpec = serde_path_to_error::deserialize(de)
        .map_err(|e| fail(&e.path().to_string(), e.inner().to_string()))?;
    if raw.collection != c.name() {
        return Err(fail(
            "collection",
            format!("is {:?}, the file is for {:?}", raw.collection, c.name()),
        ));
    }
    let validator = to_document(raw.validator, file, "validator")?;
    let schema = Schema::compile(&validator)
        .map_err(|SchemaError { path, reason }| fail(&format!("validator.{path}"), reason))?;
    if !["off", "strict", "moderate"].contains(&raw.validation_level.as_str()) {
        return Err(fail(
            "validation_level",
            "must be off, strict or moderate".to_owned(),
        ));
    }
    if !["error", "warn"].contains(&raw.validation_action.as_str()) {
        return Err(fail(
            "validation_action",
            "must be error or warn".to_owned(),
        ));
    }
    let mut indexes: Vec<IndexSpec> = Vec::with_capacity(raw.indexes.len());
    for (i, ix) in raw.indexes.into_iter().enumerate() {
        let at = |k: &str| format!("indexes[{i}].{k}");
        let key = to_document(ix.key, file, &at("key"))?;
        if key.is_empty() {
            return Err(fail(&at("key"), "names no field".to_owned()));
        }
        for (field, dir) in &key {
            let ok = is_direction(dir, 1)
                || is_direction(dir, -1)
                || matches!(dir.as_str(), Some("text" | "hashed"));
            if !ok {
                return Err(fail(
                    &at("key"),
                    format!("{field}: must be 1, -1, \"text\" or \"hashed\""),
                ));
            }
        }
        let partial_filter = match ix.partial_filter_expression {
            Some(v) => Some(to_document(v, file, &at("partialFilterExpression"))?),
            None => None,
        };
        let spec = IndexSpec {
            name: ix.name,
            key,
            unique: ix.unique,
            sparse: ix.sparse,
            expire_after_secs: ix.expire_after_seconds,
            partial_filter,
            serves: ix.serves.trim().to_owned(),
        };
        if spec.serves.is_empty() {
            return Err(fail(
                &at("serves"),
                "must say which query the index serves".to_owned(),
            ));
        }
        if let Some(secs) = spec.expire_after_secs
            && (secs < 0 || spec.key.len() != 1)
        {
            return Err(fail(
                &at("expireAfterSeconds"),
                "a TTL index has one date field and a non-negative expiry".to_owned(),
            ));
        }
        let expected = spec.conventional_name(c);
        if spec.name != expected {
            return Err(fail(
                &at("name"),
                format!(
                    "is {:?}; the naming convention gives {expected:?}",
                    spec.name
                ),
            ));
        }
        if let Some(prev) = indexes.iter().find(|p| p.key == spec.key) {
            return Err(fail(
                &at("key"),
                format!("same key pattern as {}", prev.name),
            ));
        }
        if indexes.iter().any(|p| p.name == spec.name) {
            return Err(fail(&at("name"), "is used twice".to_owned()));
        }
        if spec.is_text() && indexes.iter().any(IndexSpec::is_text) {
            return Err(fail(
                &at("key"),
                "a collection can have one text index only".to_owned(),
            ));
        }
        indexes.push(spec);
    }
    let shard_key = match raw.shard_key {
        Some(v) => Some(to_document(v, file, "shard_key")?),
        None => None,
    };
    Ok(CollectionSpec {
        collection: c,
        validator,
        schema,
        validation_level: raw.validation_level,
        validation_action: raw.validation_action,
        indexes,
        shard_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_is_complete_and_follows_the_conventions() {
        let cat = Catalog::builtin().expect("builtin catalog");
        assert_eq!(cat.iter().count(), 15);
        assert!(cat.index_count() >= 45, "{} indexes", cat.index_count());
        let names: Vec<_> = cat.iter().map(|s| s.collection.name()).collect();
        assert_eq!(names, Collection::ALL.map(Collection::name).to_vec());
        let users = cat.get(Collection::Users);
        for unique in ["email", "wallet_address"] {
            assert!(
                users
                    .indexes
                    .iter()
                    .any(|i| i.unique && i.key.keys().eq([unique])),
                "users.{unique} unique"
            );
        }
        let kinds = |suffix: &str| {
            cat.iter()
                .flat_map(|s| &s.indexes)
                .filter(|i| i.name.ends_with(suffix))
                .count()
        };
        assert!(kinds("_ttl") >= 3 && kinds("_text") >= 3 && kinds("_compound") >= 10);
    }

    #[test]
    fn collection_names_parse_and_unknown_ones_are_refused() {
        for c in Collection::ALL {
            assert_eq!(Collection::parse(c.name()), Ok(c));
        }
        let e = Collection::parse("user").expect_err("unknown");
        assert!(e.contains("users") && e.contains("system_config"), "{e}");
    }

    fn users_with(f: impl FnOnce(&mut serde_json::Value)) -> Result<CollectionSpec, CatalogError> {
        let mut v: serde_json::Value =
            serde_json::from_str(Collection::Users.builtin_schema()).expect("json");
        f(&mut v);
        parse_spec(Collection::Users, &v.to_string(), "users.json")
    }

    #[test]
    fn bad_files_are_refused_with_the_key_named() {
        let e =
            users_with(|v| v["indexes"][0]["name"] = "users_mail_unique".into()).expect_err("name");
        assert_eq!(e.path, "indexes[0].name");
        let e = users_with(|v| v["indexes"][0]["serves"] = " ".into()).expect_err("serves");
        assert_eq!(e.path, "indexes[0].serves");
        let e = users_with(|v| {
            v["indexes"][1]["key"] = serde_json::json!({"email": 1});
            v["indexes"][1]["name"] = "users_email_unique".into();
        })
        .expect_err("dup");
        assert_eq!(e.path, "indexes[1].key");
        let e = users_with(|v| v["indexes"][0]["uniq"] = true.into()).expect_err("unknown key");
        assert!(e.path.starts_with("indexes[0]"), "{e}");
        let e = users_with(|v| {
            v["validator"]["$jsonSchema"]["properties"]["email"]["bsonType"] = "text".into()
        })
        .expect_err("schema");
        assert_eq!(e.path, "validator.$jsonSchema.properties.email.bsonType");
        let e = users_with(|v| v["collection"] = "sessions".into()).expect_err("wrong file");
        assert_eq!(e.path, "collection");
    }
}
