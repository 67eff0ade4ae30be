//! `$jsonSchema` validation in the actor, before a document is sent.
//!
//! The collections' validators (in `configs/mongodb/`) are compiled once at start-up into a
//! [`Schema`]; every document written through the actor is checked against it, so a bad
//! document gets an error naming the field even where the server does not enforce
//! validators (nx-27017 does not; a MongoDB before 5.0 does but only says "Document failed
//! validation").
//!
//! The keywords are MongoDB's `$jsonSchema` subset that the schemas use: `bsonType` (a name
//! or a list; `"number"` is any of int, long, double, decimal), `required`, `properties`,
//! `additionalProperties` (a bool or a schema), `enum`, `pattern`, `minimum`/`maximum` (with
//! `exclusiveMinimum`/`exclusiveMaximum`), `minLength`/`maxLength`, `items` (a schema, or a
//! list for positions), `minItems`/`maxItems`, `uniqueItems`; `title` and `description` are
//! annotations. As in JSON Schema, a keyword about one kind of value says nothing about
//! another (`minimum` ignores strings); only `bsonType` restricts the kind. Any other keyword
//! is refused when the schema is compiled — a typo in a schema file stops start-up rather
//! than silently not checking anything.

use std::collections::HashSet;
use std::sync::Arc;

use mongodb::bson::spec::ElementType;
use mongodb::bson::{Bson, Document};
use regex_automata::dfa::{Automaton, dense};

/// A compiled `$jsonSchema`.
#[derive(Debug, Clone)]
pub struct Schema {
    root: Node,
}

/// Why a document does not match: the field (a dotted path, array positions as numbers; the
/// empty string for the document itself) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "the document {}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// A schema file that cannot be compiled: where in the schema, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SchemaError {
    pub path: String,
    pub reason: String,
}

/// A `pattern`. regex-lite is the reference: its `\s`, `\d`, `\w` and `(?i)` are ASCII, like
/// MongoDB's PCRE without UCP. An ASCII string — nearly every id, hash and address — is matched
/// by a dense DFA built from the same pattern at load time instead, several times cheaper per
/// check than regex-lite's PikeVM (the schema check is on every write; see
/// `scripts/bench-instructions.sh`). On ASCII input the two agree (tested); a pattern the DFA
/// cannot take within its size limit is matched by regex-lite alone.
#[derive(Debug, Clone)]
struct Pattern {
    source: String,
    reference: regex_lite::Regex,
    ascii: Option<Arc<dense::DFA<Vec<u32>>>>,
}

impl Pattern {
    fn new(source: &str) -> Result<Pattern, regex_lite::Error> {
        let reference = regex_lite::Regex::new(source)?;
        // Bytes, not Unicode: only ASCII haystacks reach the DFA, where the two are the same.
        let ascii = dense::Builder::new()
            .syntax(
                regex_automata::util::syntax::Config::new()
                    .unicode(false)
                    .utf8(false),
            )
            .thompson(regex_automata::nfa::thompson::Config::new().utf8(false))
            .configure(
                dense::DFA::config()
                    .dfa_size_limit(Some(1 << 20))
                    .determinize_size_limit(Some(1 << 20)),
            )
            .build(source)
            .ok()
            .map(Arc::new);
        Ok(Pattern {
            source: source.to_owned(),
            reference,
            ascii,
        })
    }

    fn is_match(&self, s: &str) -> bool {
        if s.is_ascii()
            && let Some(dfa) = &self.ascii
            && let Ok(found) = dfa.try_search_fwd(&regex_automata::Input::new(s).earliest(true))
        {
            return found.is_some();
        }
        self.reference.is_match(s)
    }
}

#[derive(Debug, Clone, Default)]
struct Node {
    types: Option<Vec<Kind>>,
    required: Vec<String>,
    properties: Vec<(String, Node)>,
    additional: Additional,
    one_of_values: Option<Vec<Bson>>,
    pattern: Option<Pattern>,
    minimum: Option<(f64, bool)>,
    maximum: Option<(f64, bool)>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    items: Items,
    min_items: Option<u64>,
    max_items: Option<u64>,
    unique_items: bool,
}

#[derive(Debug, Clone, Default)]
enum Additional {
    #[default]
    Allowed,
    Forbidden,
    Schema(Box<Node>),
}

#[derive(Debug, Clone, Default)]
enum Items {
    #[default]
    Any,
    Each(Box<Node>),
    Positions(Vec<Node>),
}

/// A `bsonType` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exact(ElementType),
    Number,
}

const KINDS: &[(&str, Kind)] = &[
    ("double", Kind::Exact(ElementType::Double)),
    ("string", Kind::Exact(ElementType::String)),
    ("object", Kind::Exact(ElementType::EmbeddedDocument)),
    ("array", Kind::Exact(ElementType::Array)),
    ("binData", Kind::Exact(ElementType::Binary)),
    ("undefined", Kind::Exact(ElementType::Undefined)),
    ("objectId", Kind::Exact(ElementType::ObjectId)),
    ("bool", Kind::Exact(ElementType::Boolean)),
    ("date", Kind::Exact(ElementType::DateTime)),
    ("null", Kind::Exact(ElementType::Null)),
    ("regex", Kind::Exact(ElementType::RegularExpression)),
    ("dbPointer", Kind::Exact(ElementType::DbPointer)),
    ("javascript", Kind::Exact(ElementType::JavaScriptCode)),
    ("symbol", Kind::Exact(ElementType::Symbol)),
    (
        "javascriptWithScope",
        Kind::Exact(ElementType::JavaScriptCodeWithScope),
    ),
    ("int", Kind::Exact(ElementType::Int32)),
    ("timestamp", Kind::Exact(ElementType::Timestamp)),
    ("long", Kind::Exact(ElementType::Int64)),
    ("decimal", Kind::Exact(ElementType::Decimal128)),
    ("minKey", Kind::Exact(ElementType::MinKey)),
    ("maxKey", Kind::Exact(ElementType::MaxKey)),
    ("number", Kind::Number),
];

impl Kind {
    fn parse(name: &str) -> Option<Kind> {
        KINDS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    fn matches(self, value: &Bson) -> bool {
        match self {
            Kind::Exact(t) => value.element_type() == t,
            Kind::Number => matches!(
                value,
                Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_)
            ),
        }
    }
}

/// The `bsonType` name of a value, for error messages.
pub fn kind_name(value: &Bson) -> &'static str {
    let t = value.element_type();
    KINDS
        .iter()
        .find(|(_, k)| *k == Kind::Exact(t))
        .map_or("unknown", |(n, _)| n)
}

impl Schema {
    /// Compiles a validator: either `{"$jsonSchema": {...}}` or the schema itself.
    pub fn compile(validator: &Document) -> Result<Schema, SchemaError> {
        let schema = match validator.get("$jsonSchema") {
            Some(Bson::Document(d)) => d,
            Some(_) => return Err(err("$jsonSchema", "must be a document")),
            None => validator,
        };
        Ok(Schema {
            root: Node::compile(schema, "$jsonSchema")?,
        })
    }

    /// Every violation of `doc`, at most `limit` (the first is the one callers see; more help
    /// in logs of a bulk import).
    pub fn violations(&self, doc: &Document, limit: usize) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut path = String::new();
        self.root
            .check_document(doc, &mut path, &mut out, limit.max(1));
        out
    }

    /// The first violation of `doc`, if any.
    pub fn validate(&self, doc: &Document) -> Result<(), Violation> {
        match self.violations(doc, 1).into_iter().next() {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// Checks a value an update operator (`$set`, `$setOnInsert`) writes at a dotted `path`:
    /// against the schema of that field where the schema has one, refused where the schema
    /// forbids fields it does not list. Positions in arrays (`tags.2`) use `items`.
    pub fn check_path(&self, path: &str, value: &Bson) -> Result<(), Violation> {
        let mut node = &self.root;
        for segment in path.split('.') {
            let next = if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
                match &node.items {
                    Items::Each(n) => Some(n.as_ref()),
                    Items::Positions(list) => {
                        segment.parse::<usize>().ok().and_then(|i| list.get(i))
                    }
                    Items::Any => None,
                }
            } else {
                match node.properties.iter().find(|(n, _)| n == segment) {
                    Some((_, n)) => Some(n),
                    None => match &node.additional {
                        Additional::Forbidden => {
                            return Err(Violation {
                                field: path.to_owned(),
                                reason: "is not an allowed field".to_owned(),
                            });
                        }
                        Additional::Schema(n) => Some(n.as_ref()),
                        Additional::Allowed => None,
                    },
                }
            };
            match next {
                Some(n) => node = n,
                // Nothing in the schema below here: any value is allowed.
                None => return Ok(()),
            }
        }
        let mut out = Vec::new();
        let mut at = path.to_owned();
        node.check(value, &mut at, &mut out, 1);
        match out.into_iter().next() {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// Whether removing the top-level field `path` (`$unset`, `$rename` away) would leave a
    /// document without a required field.
    pub fn check_removal(&self, path: &str) -> Result<(), Violation> {
        if self.root.required.iter().any(|r| r == path) {
            return Err(Violation {
                field: path.to_owned(),
                reason: "is required and cannot be removed".to_owned(),
            });
        }
        Ok(())
    }
}

fn err(path: &str, reason: impl Into<String>) -> SchemaError {
    SchemaError {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn as_count(path: &str, key: &str, v: &Bson) -> Result<u64, SchemaError> {
    let n = match v {
        Bson::Int32(n) => i64::from(*n),
        Bson::Int64(n) => *n,
        Bson::Double(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 9.0e15 => *f as i64,
        _ => return Err(err(&format!("{path}.{key}"), "must be a whole number")),
    };
    u64::try_from(n).map_err(|_| err(&format!("{path}.{key}"), "must not be negative"))
}

fn as_bool(path: &str, key: &str, v: &Bson) -> Result<bool, SchemaError> {
    match v {
        Bson::Boolean(b) => Ok(*b),
        _ => Err(err(&format!("{path}.{key}"), "must be true or false")),
    }
}

/// A number as f64 for `minimum`/`maximum` (Decimal128 is compared through its string form).
fn number(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(n) => Some(f64::from(*n)),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(f) => Some(*f),
        Bson::Decimal128(d) => d.to_string().parse().ok(),
        _ => None,
    }
}

impl Node {
    fn compile(schema: &Document, path: &str) -> Result<Node, SchemaError> {
        let mut node = Node::default();
        let mut exclusive_min = false;
        let mut exclusive_max = false;
        for (key, value) in schema {
            let here = || format!("{path}.{key}");
            match key.as_str() {
                "bsonType" => {
                    let names: Vec<&str> = match value {
                        Bson::String(s) => vec![s.as_str()],
                        Bson::Array(a) if !a.is_empty() => a
                            .iter()
                            .map(|b| {
                                b.as_str()
                                    .ok_or_else(|| err(&here(), "names must be strings"))
                            })
                            .collect::<Result<_, _>>()?,
                        _ => return Err(err(&here(), "must be a type name or a non-empty list")),
                    };
                    let kinds = names
                        .iter()
                        .map(|n| {
                            Kind::parse(n)
                                .ok_or_else(|| err(&here(), format!("unknown BSON type {n:?}")))
                        })
                        .collect::<Result<_, _>>()?;
                    node.types = Some(kinds);
                }
                "required" => {
                    let Bson::Array(a) = value else {
                        return Err(err(&here(), "must be a list of field names"));
                    };
                    let mut seen = HashSet::new();
                    for f in a {
                        let name = f
                            .as_str()
                            .ok_or_else(|| err(&here(), "field names must be strings"))?;
                        if !seen.insert(name) {
                            return Err(err(&here(), format!("{name:?} is listed twice")));
                        }
                        node.required.push(name.to_owned());
                    }
                }
                "properties" => {
                    let Bson::Document(props) = value else {
                        return Err(err(&here(), "must be a document"));
                    };
                    for (name, sub) in props {
                        let Bson::Document(sub) = sub else {
                            return Err(err(&format!("{}.{name}", here()), "must be a document"));
                        };
                        node.properties.push((
                            name.clone(),
                            Node::compile(sub, &format!("{}.{name}", here()))?,
                        ));
                    }
                }
                "additionalProperties" => {
                    node.additional = match value {
                        Bson::Boolean(true) => Additional::Allowed,
                        Bson::Boolean(false) => Additional::Forbidden,
                        Bson::Document(sub) => {
                            Additional::Schema(Box::new(Node::compile(sub, &here())?))
                        }
                        _ => return Err(err(&here(), "must be true, false or a schema")),
                    }
                }
                "enum" => match value {
                    Bson::Array(a) if !a.is_empty() => node.one_of_values = Some(a.clone()),
                    _ => return Err(err(&here(), "must be a non-empty list")),
                },
                "pattern" => {
                    let Bson::String(p) = value else {
                        return Err(err(&here(), "must be a string"));
                    };
                    let re = Pattern::new(p).map_err(|e| {
                        err(&here(), format!("not a valid regular expression: {e}"))
                    })?;
                    node.pattern = Some(re);
                }
                "minimum" | "maximum" => {
                    let n = number(value).ok_or_else(|| err(&here(), "must be a number"))?;
                    if key == "minimum" {
                        node.minimum = Some((n, false));
                    } else {
                        node.maximum = Some((n, false));
                    }
                }
                "exclusiveMinimum" => exclusive_min = as_bool(path, key, value)?,
                "exclusiveMaximum" => exclusive_max = as_bool(path, key, value)?,
                "minLength" => node.min_length = Some(as_count(path, key, value)?),
                "maxLength" => node.max_length = Some(as_count(path, key, value)?),
                "minItems" => node.min_items = Some(as_count(path, key, value)?),
                "maxItems" => node.max_items = Some(as_count(path, key, value)?),
                "uniqueItems" => node.unique_items = as_bool(path, key, value)?,
                "items" => {
                    node.items = match value {
                        Bson::Document(sub) => Items::Each(Box::new(Node::compile(sub, &here())?)),
                        Bson::Array(list) => Items::Positions(
                            list.iter()
                                .enumerate()
                                .map(|(i, s)| match s {
                                    Bson::Document(sub) => {
                                        Node::compile(sub, &format!("{}.{i}", here()))
                                    }
                                    _ => Err(err(&format!("{}.{i}", here()), "must be a schema")),
                                })
                                .collect::<Result<_, _>>()?,
                        ),
                        _ => return Err(err(&here(), "must be a schema or a list of schemas")),
                    }
                }
                "title" | "description" => {
                    if !matches!(value, Bson::String(_)) {
                        return Err(err(&here(), "must be a string"));
                    }
                }
                other => {
                    return Err(err(
                        &here(),
                        format!("keyword {other:?} is not supported by lucid-db's validator"),
                    ));
                }
            }
        }
        if exclusive_min {
            let Some((n, _)) = node.minimum else {
                return Err(err(path, "exclusiveMinimum needs minimum"));
            };
            node.minimum = Some((n, true));
        }
        if exclusive_max {
            let Some((n, _)) = node.maximum else {
                return Err(err(path, "exclusiveMaximum needs maximum"));
            };
            node.maximum = Some((n, true));
        }
        Ok(node)
    }

    fn fail(out: &mut Vec<Violation>, path: &str, reason: String) {
        out.push(Violation {
            field: path.to_owned(),
            reason,
        });
    }

    /// Checks `value` at `path`; pushes violations until `limit` is reached.
    fn check(&self, value: &Bson, path: &mut String, out: &mut Vec<Violation>, limit: usize) {
        if out.len() >= limit {
            return;
        }
        if let Some(types) = &self.types
            && !types.iter().any(|k| k.matches(value))
        {
            let wanted: Vec<&str> = types
                .iter()
                .map(|k| match k {
                    Kind::Number => "number",
                    Kind::Exact(t) => KINDS
                        .iter()
                        .find(|(_, kk)| *kk == Kind::Exact(*t))
                        .map_or("?", |(n, _)| n),
                })
                .collect();
            Self::fail(
                out,
                path,
                format!(
                    "must be of type {}, not {}",
                    wanted.join(" or "),
                    kind_name(value)
                ),
            );
            return;
        }
        if let Some(values) = &self.one_of_values
            && !values.iter().any(|v| same_value(v, value))
        {
            Self::fail(
                out,
                path,
                format!("{} is not one of the allowed values", short(value)),
            );
            return;
        }
        match value {
            Bson::String(s) => self.check_string(s, path, out),
            Bson::Document(d) => self.check_document(d, path, out, limit),
            Bson::Array(a) => self.check_array(a, path, out, limit),
            other => {
                if let Some(n) = number(other) {
                    self.check_number(n, path, out);
                }
            }
        }
    }

    fn check_string(&self, s: &str, path: &str, out: &mut Vec<Violation>) {
        let len = s.chars().count() as u64;
        if let Some(min) = self.min_length
            && len < min
        {
            return Self::fail(out, path, format!("is {len} characters, fewer than {min}"));
        }
        if let Some(max) = self.max_length
            && len > max
        {
            return Self::fail(out, path, format!("is {len} characters, more than {max}"));
        }
        if let Some(re) = &self.pattern
            && !re.is_match(s)
        {
            Self::fail(
                out,
                path,
                format!("does not match the pattern {}", re.source),
            );
        }
    }

    fn check_number(&self, n: f64, path: &str, out: &mut Vec<Violation>) {
        if let Some((min, exclusive)) = self.minimum
            && (n < min || (exclusive && n == min))
        {
            let rel = if exclusive { "above" } else { "at least" };
            return Self::fail(out, path, format!("is {n}, must be {rel} {min}"));
        }
        if let Some((max, exclusive)) = self.maximum
            && (n > max || (exclusive && n == max))
        {
            let rel = if exclusive { "below" } else { "at most" };
            Self::fail(out, path, format!("is {n}, must be {rel} {max}"));
        }
    }

    fn check_document(
        &self,
        doc: &Document,
        path: &mut String,
        out: &mut Vec<Violation>,
        limit: usize,
    ) {
        for name in &self.required {
            if out.len() >= limit {
                return;
            }
            if !doc.contains_key(name) {
                let field = join(path, name);
                Self::fail(out, &field, "is required".to_owned());
            }
        }
        for (name, value) in doc {
            if out.len() >= limit {
                return;
            }
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(name);
            match self.properties.iter().find(|(n, _)| n == name) {
                Some((_, node)) => node.check(value, path, out, limit),
                None => match &self.additional {
                    Additional::Allowed => {}
                    Additional::Forbidden => {
                        Self::fail(out, path, "is not an allowed field".to_owned())
                    }
                    Additional::Schema(node) => node.check(value, path, out, limit),
                },
            }
            path.truncate(len);
        }
    }

    fn check_array(
        &self,
        items: &[Bson],
        path: &mut String,
        out: &mut Vec<Violation>,
        limit: usize,
    ) {
        let n = items.len() as u64;
        if let Some(min) = self.min_items
            && n < min
        {
            return Self::fail(out, path, format!("has {n} items, fewer than {min}"));
        }
        if let Some(max) = self.max_items
            && n > max
        {
            return Self::fail(out, path, format!("has {n} items, more than {max}"));
        }
        if self.unique_items {
            for (i, a) in items.iter().enumerate() {
                if items[..i].iter().any(|b| same_value(a, b)) {
                    return Self::fail(out, path, format!("item {i} repeats an earlier item"));
                }
            }
        }
        for (i, item) in items.iter().enumerate() {
            let node = match &self.items {
                Items::Any => return,
                Items::Each(node) => node.as_ref(),
                Items::Positions(nodes) => match nodes.get(i) {
                    Some(node) => node,
                    None => return,
                },
            };
            let len = path.len();
            path.push('.');
            path.push_str(&i.to_string());
            node.check(item, path, out, limit);
            path.truncate(len);
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Equality as MongoDB compares values in `enum`: numbers by value whatever their type.
fn same_value(a: &Bson, b: &Bson) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// A value for an error message: short, and never more than 40 characters of it.
fn short(value: &Bson) -> String {
    let s = match value {
        Bson::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{DateTime, doc, oid::ObjectId};

    fn schema(validator: Document) -> Schema {
        Schema::compile(&validator).expect("compiles")
    }

    fn first(s: &Schema, d: Document) -> Option<(String, String)> {
        s.validate(&d).err().map(|v| (v.field, v.reason))
    }

    /// MongoDB manual, "Specify JSON Schema Validation": the students collection.
    fn students() -> Schema {
        schema(doc! {"$jsonSchema": {
            "bsonType": "object",
            "title": "Student Object Validation",
            "required": ["address", "major", "name", "year"],
            "properties": {
                "name": {"bsonType": "string", "description": "'name' must be a string and is required"},
                "year": {"bsonType": "int", "minimum": 2017, "maximum": 3017,
                         "description": "'year' must be an integer in [ 2017, 3017 ] and is required"},
                "gpa": {"bsonType": ["double"], "description": "'gpa' must be a double if the field exists"}
            }
        }})
    }

    #[test]
    fn golden_students_rejects_an_int_gpa_and_accepts_a_double() {
        let s = students();
        // The manual's rejected insert: gpa is an int where a double is required.
        let rejected = doc! {
            "name": "Alice", "year": 2019_i32, "major": "History", "gpa": 3_i32,
            "address": {"city": "NYC", "street": "33rd Street"}
        };
        let (field, reason) = first(&s, rejected).expect("rejected");
        assert_eq!(field, "gpa");
        assert!(
            reason.contains("double") && reason.contains("int"),
            "{reason}"
        );
        // The manual's accepted insert: gpa as a double.
        let accepted = doc! {
            "name": "Alice", "year": 2019_i32, "major": "History", "gpa": 3.0_f64,
            "address": {"city": "NYC", "street": "33rd Street"}
        };
        assert_eq!(first(&s, accepted), None);
    }

    #[test]
    fn golden_students_required_and_ranges() {
        let s = students();
        let missing = doc! {"name": "Bob", "year": 2019_i32, "address": {}};
        assert_eq!(
            first(&s, missing),
            Some(("major".into(), "is required".into()))
        );
        let early = doc! {"name": "Bob", "year": 2016_i32, "major": "Art", "address": {}};
        let (field, reason) = first(&s, early).expect("rejected");
        assert_eq!(field, "year");
        assert!(reason.contains("at least 2017"), "{reason}");
        let late = doc! {"name": "Bob", "year": 3018_i32, "major": "Art", "address": {}};
        assert_eq!(first(&s, late).map(|v| v.0), Some("year".into()));
        // year as a long is not an int
        let long = doc! {"name": "Bob", "year": 2019_i64, "major": "Art", "address": {}};
        assert_eq!(first(&s, long).map(|v| v.0), Some("year".into()));
    }

    /// MongoDB manual, "Specify Allowed Fields": additionalProperties false, _id allowed.
    #[test]
    fn golden_allowed_fields() {
        let s = schema(doc! {"$jsonSchema": {
            "required": ["name", "phone"],
            "properties": {
                "_id": {},
                "name": {"bsonType": "string"},
                "phone": {"bsonType": "string"}
            },
            "additionalProperties": false
        }});
        let ok = doc! {"_id": ObjectId::new(), "name": "Jane", "phone": "555-1234"};
        assert_eq!(first(&s, ok), None);
        let extra = doc! {"name": "John", "phone": "555-1234", "email": "j@example.com"};
        assert_eq!(
            first(&s, extra),
            Some(("email".into(), "is not an allowed field".into()))
        );
    }

    /// MongoDB manual, `enum` and `pattern` examples, and nested objects with a path.
    #[test]
    fn golden_enum_pattern_nested() {
        let s = schema(doc! {"$jsonSchema": {
            "bsonType": "object",
            "properties": {
                "status": {"enum": ["Unknown", "Incomplete"]},
                "email": {"bsonType": "string", "pattern": "@mongodb\\.com$"},
                "address": {"bsonType": "object", "required": ["zipcode"],
                            "properties": {"zipcode": {"bsonType": "string", "minLength": 5, "maxLength": 10}}},
                "tags": {"bsonType": "array", "minItems": 1, "maxItems": 3, "uniqueItems": true,
                         "items": {"bsonType": "string"}}
            }
        }});
        assert_eq!(first(&s, doc! {"status": "Unknown"}), None);
        assert_eq!(
            first(&s, doc! {"status": "Done"}).map(|v| v.0),
            Some("status".into())
        );
        assert_eq!(first(&s, doc! {"email": "a@mongodb.com"}), None);
        let (field, reason) = first(&s, doc! {"email": "a@example.com"}).expect("bad");
        assert_eq!(field, "email");
        assert!(reason.contains("pattern"), "{reason}");
        assert_eq!(
            first(&s, doc! {"address": {"street": "x"}}),
            Some(("address.zipcode".into(), "is required".into()))
        );
        assert_eq!(
            first(&s, doc! {"address": {"zipcode": "123"}}).map(|v| v.0),
            Some("address.zipcode".into())
        );
        assert_eq!(
            first(&s, doc! {"tags": ["a", 1_i32]}).map(|v| v.0),
            Some("tags.1".into())
        );
        assert_eq!(
            first(&s, doc! {"tags": []}).map(|v| v.0),
            Some("tags".into())
        );
        assert_eq!(
            first(&s, doc! {"tags": ["a", "a"]}).map(|v| v.0),
            Some("tags".into())
        );
        // keywords about other kinds of values do not apply: minLength on a number is ignored
        let lax = schema(doc! {"properties": {"x": {"minLength": 3, "minimum": 10}}});
        assert_eq!(first(&lax, doc! {"x": 11_i32}), None);
        assert_eq!(first(&lax, doc! {"x": "abcd"}), None);
        assert!(first(&lax, doc! {"x": 9.5}).is_some());
    }

    #[test]
    fn number_alias_and_exclusive_bounds() {
        let s = schema(
            doc! {"properties": {"n": {"bsonType": "number", "minimum": 0, "exclusiveMinimum": true}}},
        );
        for ok in [Bson::Int32(1), Bson::Int64(2), Bson::Double(0.5)] {
            assert_eq!(first(&s, doc! {"n": ok}), None);
        }
        assert!(first(&s, doc! {"n": 0_i32}).is_some());
        assert!(first(&s, doc! {"n": "1"}).is_some());
        let d = schema(doc! {"properties": {"at": {"bsonType": "date"}}});
        assert_eq!(first(&d, doc! {"at": DateTime::now()}), None);
        assert!(first(&d, doc! {"at": "2026-01-01"}).is_some());
    }

    #[test]
    fn compile_refuses_unknown_keywords_and_bad_values() {
        let cases = [
            (doc! {"bsonType": "strng"}, "$jsonSchema.bsonType"),
            (
                doc! {"properties": {"a": {"minLenght": 1}}},
                "$jsonSchema.properties.a.minLenght",
            ),
            (doc! {"pattern": "("}, "$jsonSchema.pattern"),
            (doc! {"required": "a"}, "$jsonSchema.required"),
            (doc! {"minLength": -1_i32}, "$jsonSchema.minLength"),
            (doc! {"exclusiveMinimum": true}, "$jsonSchema"),
            (doc! {"enum": []}, "$jsonSchema.enum"),
        ];
        for (bad, path) in cases {
            let e = Schema::compile(&doc! {"$jsonSchema": bad.clone()}).expect_err("refused");
            assert_eq!(e.path, path, "{bad}: {e}");
        }
    }

    #[test]
    fn update_paths_are_checked_against_the_field_schema() {
        let s = students();
        assert!(s.check_path("year", &Bson::Int32(2020)).is_ok());
        let v = s.check_path("year", &Bson::Int32(1999)).expect_err("range");
        assert_eq!(v.field, "year");
        assert!(s.check_path("gpa", &Bson::Int32(3)).is_err());
        // fields the schema does not describe are free unless additionalProperties says no
        assert!(s.check_path("address.city", &Bson::Int32(1)).is_ok());
        let closed = schema(
            doc! {"properties": {"a": {"bsonType": "array", "items": {"bsonType": "int"}}},
            "additionalProperties": false},
        );
        assert!(closed.check_path("a.3", &Bson::Int32(1)).is_ok());
        assert_eq!(
            closed
                .check_path("a.3", &Bson::String("x".into()))
                .map_err(|v| v.field),
            Err("a.3".to_owned())
        );
        assert!(closed.check_path("b", &Bson::Null).is_err());
        assert!(s.check_removal("name").is_err());
        assert!(s.check_removal("gpa").is_ok());
    }

    #[test]
    fn violations_are_bounded() {
        let s = schema(doc! {"required": ["a", "b", "c"]});
        assert_eq!(s.violations(&doc! {}, 2).len(), 2);
        assert_eq!(s.violations(&doc! {}, 10).len(), 3);
    }

    /// The DFA that matches ASCII strings answers exactly as regex-lite, for every pattern in
    /// configs/mongodb/ and for the constructs whose meaning could differ (classes, case,
    /// word boundaries, anchors, alternation, repetition).
    #[test]
    fn the_ascii_dfa_agrees_with_regex_lite() {
        use crate::mongo::collections::{Catalog, Collection};
        let catalog = Catalog::builtin().expect("catalog");
        let mut patterns = Vec::new();
        for c in Collection::ALL {
            collect_patterns(
                &Bson::Document(catalog.get(c).validator.clone()),
                &mut patterns,
            );
        }
        assert!(patterns.len() >= 7, "{patterns:?}");
        patterns.extend(
            [
                r"@mongodb\.com$",
                r"(?i)^ab+c$",
                r"\bword\b",
                r"^\d{3}-\w+\s?$",
                r"^(foo|bar)*baz",
                r"[^@\s]+",
                r"^.{2,4}$",
                r"x?y{0,1}z",
            ]
            .map(String::from),
        );
        let samples = [
            "",
            "a",
            "abc",
            "ABBC",
            "abbbc",
            "x@mongodb.com",
            "x@mongodb.comx",
            "word",
            "a word.",
            "swordfish",
            "123-abc",
            "123-abc ",
            "123-",
            "foobarbaz",
            "fooba",
            "baz",
            "a b",
            "0x0123456789abcdef0123456789ABCDEF01234567",
            "0x0123",
            "user@example.com",
            "us er@example.com",
            "bench.insert",
            "Bench",
            "read:admin",
            "auth_x:write",
            "a.b",
            "a.b.c",
            "\n",
            "ab\ncd",
            "ab\n",
            "z",
            "xyz",
            "yz",
            "tab\tsep",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ];
        for p in &patterns {
            let pattern = Pattern::new(p).expect("valid");
            assert!(pattern.ascii.is_some(), "{p}: the DFA could not be built");
            for s in samples {
                assert_eq!(
                    pattern.is_match(s),
                    pattern.reference.is_match(s),
                    "{p} on {s:?}"
                );
            }
        }
        // Non-ASCII goes to regex-lite: `\s` is ASCII there, so NBSP is not whitespace.
        let p = Pattern::new(r"^[^@\s]+$").expect("valid");
        assert!(p.is_match("caf\u{e9}\u{a0}x"));
    }

    fn collect_patterns(b: &Bson, out: &mut Vec<String>) {
        match b {
            Bson::Document(d) => {
                for (k, v) in d {
                    match (k.as_str(), v) {
                        ("pattern", Bson::String(p)) => out.push(p.clone()),
                        _ => collect_patterns(v, out),
                    }
                }
            }
            Bson::Array(a) => a.iter().for_each(|v| collect_patterns(v, out)),
            _ => {}
        }
    }
}
