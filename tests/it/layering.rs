//! The dependency rule of docs/architecture.md that only a test can hold: `src/`, the daemon
//! (CLI, HTTP), uses no driver crate — it talks to the stores in `lucid_actors` messages.
//!
//! Two ways in are closed: the `lucid-db` package lists no driver crate in its
//! `[dependencies]` (so `mongodb::…` in `src/` does not even compile; the integration tests
//! have them as dev-dependencies), and no path in `src/` reaches a driver item through a
//! re-export of `lucid_actors` (today `lucid_actors::mongo::bson`, for sibling services that
//! build BSON documents). Our own module `lucid_actors::redis` is not the `redis` crate: paths
//! are read with their `use` imports resolved, so only what really names a driver counts.
//! `scripts/test.sh` runs this first, as its own step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The driver crates (`bson` is the MongoDB driver's).
const DRIVERS: [&str; 4] = ["mongodb", "bson", "elasticsearch", "redis"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
}

#[test]
fn the_daemon_package_depends_on_no_driver_crate() {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let manifest: toml::Table = toml::from_str(&text).expect("Cargo.toml parses");
    let mut tables = vec![("[dependencies]".to_owned(), manifest.get("dependencies"))];
    // Target-specific dependencies count too.
    for (target, spec) in manifest
        .get("target")
        .and_then(toml::Value::as_table)
        .into_iter()
        .flatten()
    {
        tables.push((
            format!("[target.{target}.dependencies]"),
            spec.get("dependencies"),
        ));
    }
    for (where_, table) in tables {
        for (name, spec) in table.and_then(toml::Value::as_table).into_iter().flatten() {
            // A dependency may be renamed: `db = { package = "mongodb" }`.
            let package = spec
                .get("package")
                .and_then(toml::Value::as_str)
                .unwrap_or(name);
            assert!(
                !DRIVERS.contains(&package),
                "Cargo.toml {where_} lists the driver crate {package:?}: src/ must reach the \
                 stores through lucid_actors messages (docs/architecture.md, Dependency rules); \
                 tests take drivers as dev-dependencies"
            );
        }
    }
}

#[test]
fn src_names_no_driver_crate_nor_a_re_export_of_one() {
    let reexports = driver_reexports();
    assert!(
        reexports.iter().any(|r| r == "lucid_actors::mongo::bson"),
        "the check must know the re-exports it guards against: {reexports:?}"
    );
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    assert!(!files.is_empty(), "no source under src/");
    let mut found = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("read");
        let name = file
            .strip_prefix(root())
            .unwrap_or(&file)
            .display()
            .to_string();
        for (line, path) in driver_paths(&source, &reexports) {
            found.push(format!("{name}:{line}: {path}"));
        }
    }
    assert!(
        found.is_empty(),
        "src/ names a driver crate (docs/architecture.md, Dependency rules: the daemon talks to \
         the stores through lucid_actors messages, the JSON-facing ones for MongoDB):\n  {}",
        found.join("\n  ")
    );
}

/// The checker itself, on what it must and must not report.
#[test]
fn the_check_sees_imports_groups_aliases_and_re_exports_and_nothing_else() {
    let reexports = vec!["lucid_actors::mongo::bson".to_owned()];
    let source = r#"
use lucid_actors::redis::{self, RedisHandle};
use lucid_actors::{mongo::{Catalog, bson as b}, search};
use lucid_actors::mongo;
// mongodb::Client in a comment, "bson::doc" in a string, and 'r' a char
/* elasticsearch::Elasticsearch
   in a block comment */
fn f(config: &Config) {
    let _ = redis::RedisHandle::new();
    let _ = config.mongodb.url;
    let _ = b::doc! {};
    let _ = mongo::bson::Document::new();
    let _ = ::redis::Client::open(r"x");
    let _ = elasticsearch::Elasticsearch::default();
    let _ = search::Entity::Blocks;
    let _ = Vec::<u8>::new();
}
"#;
    let found: Vec<(usize, String)> = driver_paths(source, &reexports);
    assert_eq!(
        found,
        [
            (3, "lucid_actors::mongo::bson".to_owned()),
            (11, "lucid_actors::mongo::bson::doc".to_owned()),
            (12, "lucid_actors::mongo::bson::Document::new".to_owned()),
            (13, "redis::Client::open".to_owned()),
            (14, "elasticsearch::Elasticsearch::default".to_owned()),
        ]
    );
}

/// Every item `lucid_actors` re-exports from a driver crate, as the path a caller would name
/// (`lucid_actors::mongo::bson`).
fn driver_reexports() -> Vec<String> {
    let actors = root().join("actors");
    let mut files = Vec::new();
    rust_files(&actors, &mut files);
    let mut out = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&actors).expect("under actors/");
        if relative.starts_with("benches") {
            continue;
        }
        let mut module = vec!["lucid_actors".to_owned()];
        let stem = relative.with_extension("");
        for part in stem.iter() {
            let part = part.to_string_lossy();
            if part != "lib" {
                module.push(part.into_owned());
            }
        }
        let source = std::fs::read_to_string(&file).expect("read");
        let tokens = tokens(&code_only(&source));
        let mut i = 0;
        while i < tokens.len() {
            let public_use =
                tokens[i].text == "pub" && tokens.get(i + 1).is_some_and(|t| t.text == "use");
            if !public_use {
                i += 1;
                continue;
            }
            let (imports, next) = use_tree(&tokens, i + 2, Vec::new());
            for (path, name) in imports {
                if path.first().is_some_and(|r| DRIVERS.contains(&r.as_str())) {
                    out.push(format!("{}::{name}", module.join("::")));
                }
            }
            i = next;
        }
    }
    out
}

/// The paths in `source` (with their line) that name a driver crate or a driver re-export,
/// with `use` imports resolved.
fn driver_paths(source: &str, reexports: &[String]) -> Vec<(usize, String)> {
    let tokens = tokens(&code_only(source));
    let mut imported: HashMap<String, Vec<String>> = HashMap::new();
    // (line, segments, not to be resolved through imports: a `use` path or a global one)
    let mut paths: Vec<(usize, Vec<String>, bool)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        if t.text == "use" {
            let (imports, next) = use_tree(&tokens, i + 1, Vec::new());
            for (path, name) in imports {
                imported.insert(name, path.clone());
                paths.push((t.line, path, true));
            }
            i = next;
            continue;
        }
        // A path: ident (:: ident)*, from its first segment. After a `::` that follows no
        // path (`::redis::Client`) it is a global path: an extern crate, never an import.
        if is_ident(&t.text) && tokens.get(i + 1).is_some_and(|n| n.text == "::") {
            let after_colons = i > 0 && tokens[i - 1].text == "::";
            let inside = after_colons
                && i >= 2
                && (is_ident(&tokens[i - 2].text) || tokens[i - 2].text == ">");
            if !inside {
                let (segments, next) = path_at(&tokens, i);
                if segments.len() > 1 {
                    paths.push((t.line, segments, after_colons));
                }
                i = next;
                continue;
            }
        }
        i += 1;
    }
    let mut found = Vec::new();
    for (line, path, as_written) in paths {
        let resolved = match (as_written, imported.get(&path[0])) {
            (false, Some(full)) => full.iter().chain(&path[1..]).cloned().collect(),
            _ => path,
        };
        let text = resolved.join("::");
        let driver = DRIVERS.contains(&resolved[0].as_str());
        let reexport = reexports
            .iter()
            .any(|r| text == *r || text.starts_with(&format!("{r}::")));
        if driver || reexport {
            found.push((line, text));
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The segments of the path starting at `tokens[i]`, and the index after it. A turbofish
/// (`Vec::<u8>`) ends it.
fn path_at(tokens: &[Token], mut i: usize) -> (Vec<String>, usize) {
    let mut segments = vec![tokens[i].text.clone()];
    while tokens.get(i + 1).is_some_and(|t| t.text == "::")
        && tokens.get(i + 2).is_some_and(|t| is_ident(&t.text))
    {
        segments.push(tokens[i + 2].text.clone());
        i += 2;
    }
    (segments, i + 1)
}

/// A `use` tree from `tokens[i]`: each leaf as (full path, the name it brings into scope), and
/// the index of the token after the tree (its `;`, or the `,` or `}` in a group).
fn use_tree(
    tokens: &[Token],
    mut i: usize,
    prefix: Vec<String>,
) -> (Vec<(Vec<String>, String)>, usize) {
    let text = |i: usize| tokens.get(i).map(|t| t.text.as_str());
    let mut path = prefix;
    let mut out = Vec::new();
    loop {
        match text(i) {
            Some("::") => i += 1,
            Some("{") => {
                i += 1;
                loop {
                    match text(i) {
                        None => return (out, i),
                        Some("}") => return (out, i + 1),
                        Some(",") => i += 1,
                        Some(_) => {
                            let (inner, next) = use_tree(tokens, i, path.clone());
                            out.extend(inner);
                            i = next;
                        }
                    }
                }
            }
            Some("*") => return (out, i + 1),
            // `a::{self}` brings `a` itself.
            Some("self") => {
                i += 1;
                break;
            }
            Some(t) if is_ident(t) && t != "as" => {
                path.push(t.to_owned());
                i += 1;
            }
            _ => break,
        }
    }
    let name = if text(i) == Some("as") {
        i += 2;
        text(i - 1).map(str::to_owned)
    } else {
        path.last().cloned()
    };
    if let Some(name) = name {
        out.push((path, name));
    }
    (out, i)
}

struct Token {
    text: String,
    line: usize,
}

fn is_ident(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && text.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Identifiers, `::`, and every other character as a token of its own.
fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                text: chars[start..i].iter().collect(),
                line,
            });
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token {
                text: "::".to_owned(),
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

/// `source` with comments and string and char literals blanked, newlines kept.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let ident = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric() || *c == '_');
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev = if i > 0 { chars.get(i - 1) } else { None };
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if !ident(prev) && (c == 'r' || (c == 'b' && next == Some('r'))) && {
            let mut j = i + if c == 'b' { 2 } else { 1 };
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            chars.get(j) == Some(&'"')
        } {
            // A raw string: r"…", r#"…"#, br"…".
            let mut j = i + if c == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &chars[i..j.min(chars.len())] {
                blank(&mut out, ch);
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            // '\n', '\'', '\u{…}'
            let mut j = i + 2;
            while j < chars.len() && chars[j] != '\'' {
                j += 1;
            }
            for _ in i..=j.min(chars.len() - 1) {
                out.push(' ');
            }
            i = j + 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}
