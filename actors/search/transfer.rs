//! Streaming export and import of one index, for backups.
//!
//! **Export** answers an [`IndexMetadata`] — the index's mappings, the settings worth
//! restoring, its aliases and its document count — and an [`ExportStream`] of its documents
//! as NDJSON lines (`{"_id": …, "_source": …}`), read with a scroll one page at a time and
//! passed through a bounded channel: memory does not grow with the index. A reader that stops
//! reading for `supervisor.stream_idle_timeout` ends the export (the scroll is cleared).
//! Scroll works the same on Elasticsearch and OpenSearch (their point-in-time APIs differ).
//!
//! **Import** creates the index under the same name or with a prefix (a restore drill next to
//! the live data: `drill-lucid-sessions-2026.11`), with the exported mappings and settings and
//! the aliases renamed with the same prefix — so the live read alias never counts a drill's
//! documents twice. `is_write_index` is not restored: the bootstrap and the lifecycle put the
//! write alias where it belongs. An existing target is refused unless forced (then it is
//! deleted first). The documents are bulk-loaded in requests of `bulk_max_docs` /
//! `bulk_max_bytes`; a write block the index had is set again after the load. If anything
//! fails, the index the import created is deleted: nothing is left half restored.

use elasticsearch::http::Method;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Conn, Request, SearchError, SearchHandle, within};
use crate::supervisor::feed::{Feed, Stopped, feed};

/// The format of [`IndexMetadata`]; bumped on incompatible changes.
pub const EXPORT_FORMAT: u32 = 1;

/// Hits per scroll page.
const PAGE: usize = 1000;
/// How long the server keeps a scroll between pages.
const SCROLL_KEEP: &str = "2m";

/// Settings an import restores (the rest are the cluster's own: uuid, creation date, …).
const RESTORED_SETTINGS: [&str; 6] = [
    "number_of_shards",
    "number_of_replicas",
    "priority",
    "refresh_interval",
    "max_result_window",
    "analysis",
];

/// An index's definition, as exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMetadata {
    pub format: u32,
    pub index: String,
    pub mappings: Value,
    /// The restorable index settings (see [`RESTORED_SETTINGS`]), nested as the server has
    /// them under `settings.index`.
    pub settings: Value,
    /// `index.blocks.write` was set (a warm or cold index): set again after the load.
    pub write_blocked: bool,
    /// Alias name → its definition (`filter`, `routing`, …), without `is_write_index`.
    pub aliases: Value,
    /// The count when the export started.
    pub documents: u64,
}

/// An export's documents as NDJSON lines, as they arrive (see the module doc). A failure is
/// the last item, never a silent end.
pub type ExportStream = Feed<Vec<u8>, SearchError>;

/// How an import goes.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Put before the index and alias names (`""`: the exported names).
    pub prefix: String,
    /// Replace an existing target index.
    pub force: bool,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub index: String,
    pub aliases: Vec<String>,
    pub documents: u64,
    pub requests: u64,
}

fn check_prefix(prefix: &str) -> Result<(), SearchError> {
    let ok = prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
        && !prefix.starts_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(SearchError::invalid(
            "prefix",
            "at most 64 of a-z 0-9 - _, not starting with - or _",
        ))
    }
}

/// Reads an index's definition from `GET /{index}`.
fn metadata_of(index: &str, definition: &Value, documents: u64) -> IndexMetadata {
    let d = &definition[index];
    let s = &d["settings"]["index"];
    let mut settings = Map::new();
    for key in RESTORED_SETTINGS {
        if let Some(v) = s.get(key) {
            settings.insert(key.to_owned(), v.clone());
        }
    }
    let write_blocked = matches!(&s["blocks"]["write"], Value::Bool(true))
        || s["blocks"]["write"].as_str() == Some("true");
    let mut aliases = d["aliases"].as_object().cloned().unwrap_or_default();
    for a in aliases.values_mut() {
        if let Some(o) = a.as_object_mut() {
            o.remove("is_write_index");
        }
    }
    IndexMetadata {
        format: EXPORT_FORMAT,
        index: index.to_owned(),
        mappings: d["mappings"].clone(),
        settings: Value::Object(settings),
        write_blocked,
        aliases: Value::Object(aliases),
        documents,
    }
}

impl IndexMetadata {
    /// The body that creates the index `{prefix}{index}` with aliases `{prefix}{alias}`.
    pub fn create_body(&self, prefix: &str) -> Value {
        let aliases: Map<String, Value> = self
            .aliases
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, def)| (format!("{prefix}{name}"), def.clone()))
            .collect();
        json!({
            "settings": {"index": self.settings},
            "mappings": self.mappings,
            "aliases": aliases,
        })
    }

    pub fn check(&self) -> Result<(), SearchError> {
        if self.format != EXPORT_FORMAT {
            return Err(SearchError::invalid(
                "metadata.format",
                format!(
                    "{} is not a format this version reads ({EXPORT_FORMAT})",
                    self.format
                ),
            ));
        }
        if self.index.is_empty() || self.index.starts_with(['_', '-', '+', '.']) {
            return Err(SearchError::invalid("metadata.index", "not an index name"));
        }
        Ok(())
    }
}

impl SearchHandle {
    /// Every `lucid-*` index (what a backup exports).
    pub async fn list_indices(&self) -> Result<Vec<String>, SearchError> {
        let (conn, _) = self.shared.usable()?;
        let deadline = self.shared.settings.deadline;
        let indices = within(deadline, super::indices::gather(&conn)).await?;
        Ok(indices.into_iter().map(|i| i.name).collect())
    }

    /// Exports one index (see the module doc).
    pub async fn export(&self, index: &str) -> Result<(IndexMetadata, ExportStream), SearchError> {
        if index.is_empty() || index.contains(['/', '*', ',', '?', '#', ' ']) {
            return Err(SearchError::invalid("index", "one concrete index name"));
        }
        let (conn, generation) = self.shared.usable()?;
        let deadline = self.shared.settings.deadline;
        let idle = self.shared.settings.stream_idle;
        let start = async {
            let definition = conn
                .send(Request::new(Method::Get, format!("/{index}")))
                .await?
                .body;
            if definition.get(index).is_none() {
                return Err(SearchError::invalid(
                    "index",
                    format!("{index} is an alias or not an index"),
                ));
            }
            let count = conn
                .send(Request::new(Method::Get, format!("/{index}/_count")))
                .await?
                .body["count"]
                .as_u64()
                .unwrap_or(0);
            let first = conn
                .send(
                    Request::new(Method::Post, format!("/{index}/_search"))
                        .query("scroll", SCROLL_KEEP)
                        .json(&json!({"size": PAGE, "sort": ["_doc"]})),
                )
                .await?
                .body;
            Ok::<_, SearchError>((metadata_of(index, &definition, count), first))
        };
        let (metadata, first) = match within(deadline, start).await {
            Ok(v) => v,
            Err(e) => {
                self.shared.report(generation, &e);
                return Err(e);
            }
        };
        let (feeder, lines) = feed(256, idle);
        tokio::spawn(async move {
            let mut page = first;
            let mut scroll_id = page["_scroll_id"].as_str().map(str::to_owned);
            let outcome: Result<(), SearchError> = async {
                loop {
                    let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
                    if hits.is_empty() {
                        return Ok(());
                    }
                    for hit in hits {
                        let mut line = json!({"_id": hit["_id"], "_source": hit["_source"]})
                            .to_string()
                            .into_bytes();
                        line.push(b'\n');
                        match feeder.send(line).await {
                            Ok(()) => {}
                            // The reader dropped the stream.
                            Err(Stopped::Gone) => return Ok(()),
                            Err(Stopped::Idle(after)) => {
                                return Err(SearchError::StreamIdle {
                                    what: "the reader did not take a document",
                                    after,
                                });
                            }
                        }
                    }
                    let Some(id) = scroll_id.clone() else {
                        return Ok(());
                    };
                    let next = conn.send(
                        Request::new(Method::Post, "/_search/scroll")
                            .json(&json!({"scroll": SCROLL_KEEP, "scroll_id": id})),
                    );
                    page = within(deadline, next).await?.body;
                    if let Some(id) = page["_scroll_id"].as_str() {
                        scroll_id = Some(id.to_owned());
                    }
                }
            }
            .await;
            if let Some(id) = scroll_id {
                let _ = tokio::time::timeout(
                    deadline,
                    conn.send(
                        Request::new(Method::Delete, "/_search/scroll")
                            .json(&json!({"scroll_id": id})),
                    ),
                )
                .await;
            }
            if let Err(e) = outcome {
                feeder.fail(e);
            }
        });
        Ok((metadata, lines))
    }

    /// Imports one index from an export (see the module doc). `lines` yields the export's
    /// NDJSON lines; one that yields nothing for `supervisor.stream_idle_timeout` fails the
    /// import.
    pub async fn import<S, E>(
        &self,
        metadata: &IndexMetadata,
        options: ImportOptions,
        lines: S,
    ) -> Result<ImportSummary, SearchError>
    where
        S: Stream<Item = Result<Vec<u8>, E>> + Unpin,
        E: std::fmt::Display,
    {
        metadata.check()?;
        check_prefix(&options.prefix)?;
        let (conn, generation) = self.shared.usable()?;
        let settings = self.shared.settings.clone();
        let target = format!("{}{}", options.prefix, metadata.index);
        let deadline = settings.deadline;

        let exists = match within(
            deadline,
            conn.send(Request::new(Method::Get, format!("/{target}"))),
        )
        .await
        {
            Ok(_) => true,
            Err(e) if e.status() == Some(404) => false,
            Err(e) => {
                self.shared.report(generation, &e);
                return Err(e);
            }
        };
        if exists {
            if !options.force {
                return Err(SearchError::Exists { index: target });
            }
            within(
                deadline,
                conn.send(Request::new(Method::Delete, format!("/{target}"))),
            )
            .await?;
        }
        within(
            deadline,
            conn.send(
                Request::new(Method::Put, format!("/{target}"))
                    .json(&metadata.create_body(&options.prefix)),
            ),
        )
        .await?;

        match load(&conn, &target, &settings, lines).await {
            Ok((documents, requests)) => {
                if metadata.write_blocked {
                    within(
                        deadline,
                        conn.send(
                            Request::new(Method::Put, format!("/{target}/_settings"))
                                .json(&json!({"index": {"blocks.write": true}})),
                        ),
                    )
                    .await?;
                }
                let mut aliases: Vec<String> = metadata
                    .aliases
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(a, _)| format!("{}{a}", options.prefix))
                    .collect();
                aliases.sort();
                Ok(ImportSummary {
                    index: target,
                    aliases,
                    documents,
                    requests,
                })
            }
            Err(e) => {
                // Nothing half restored: the index this import created goes again.
                let _ = within(
                    deadline,
                    conn.send(Request::new(Method::Delete, format!("/{target}"))),
                )
                .await;
                Err(e)
            }
        }
    }
}

/// Bulk-loads the lines into `target`; answers (documents, requests).
async fn load<S, E>(
    conn: &Conn,
    target: &str,
    settings: &super::Settings,
    mut lines: S,
) -> Result<(u64, u64), SearchError>
where
    S: Stream<Item = Result<Vec<u8>, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut body = Vec::new();
    let mut in_body = 0usize;
    let mut documents = 0u64;
    let mut requests = 0u64;
    let flush = |body: Vec<u8>| async move {
        let mut req = Request::new(Method::Post, "/_bulk").ndjson(body);
        req.timeout = Some(settings.bulk_timeout());
        let answer = conn.send(req).await?.body;
        if answer["errors"] == true {
            let first = answer["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.as_object().and_then(|o| o.values().next()))
                .find(|r| r.get("error").is_some())
                .cloned()
                .unwrap_or(Value::Null);
            return Err(SearchError::from_answer(
                first["status"].as_u64().unwrap_or(400) as u16,
                &json!({"error": first["error"]}),
            ));
        }
        Ok(())
    };
    loop {
        let next = match tokio::time::timeout(settings.stream_idle, lines.next()).await {
            Err(_) => {
                return Err(SearchError::StreamIdle {
                    what: "the import's source yielded nothing",
                    after: settings.stream_idle,
                });
            }
            Ok(next) => next,
        };
        let Some(line) = next else { break };
        let line = line.map_err(|e| SearchError::invalid("import", e.to_string()))?;
        let doc: Value = serde_json::from_slice(&line).map_err(|e| SearchError::Codec {
            message: format!("export line {}: {e}", documents + 1),
        })?;
        let source = serde_json::to_vec(&doc["_source"]).map_err(|e| SearchError::Codec {
            message: e.to_string(),
        })?;
        let mut action = json!({"index": {"_index": target}});
        if let Some(id) = doc["_id"].as_str() {
            action["index"]["_id"] = json!(id);
        }
        body.extend_from_slice(action.to_string().as_bytes());
        body.push(b'\n');
        body.extend_from_slice(&source);
        body.push(b'\n');
        in_body += 1;
        documents += 1;
        if in_body >= settings.bulk_max_docs || body.len() >= settings.bulk_max_bytes {
            flush(std::mem::take(&mut body)).await?;
            requests += 1;
            in_body = 0;
        }
    }
    if in_body > 0 {
        flush(body).await?;
        requests += 1;
    }
    let refresh = Request::new(Method::Post, format!("/{target}/_refresh"));
    within(settings.deadline, conn.send(refresh)).await?;
    Ok((documents, requests))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_keeps_mappings_restorable_settings_and_aliases_without_the_write_flag() {
        let definition = json!({"lucid-blocks-2026.10": {
            "aliases": {"lucid-blocks": {}, "lucid-blocks-write": {"is_write_index": true}},
            "mappings": {"dynamic": "strict", "properties": {"height": {"type": "long"}}},
            "settings": {"index": {
                "number_of_shards": "1", "number_of_replicas": "0", "priority": "0",
                "uuid": "abc", "creation_date": "1", "provided_name": "x",
                "blocks": {"write": "true"}
            }}
        }});
        let m = metadata_of("lucid-blocks-2026.10", &definition, 7);
        assert_eq!(m.documents, 7);
        assert!(m.write_blocked);
        assert_eq!(
            m.settings,
            json!({"number_of_shards": "1", "number_of_replicas": "0", "priority": "0"})
        );
        assert_eq!(
            m.aliases,
            json!({"lucid-blocks": {}, "lucid-blocks-write": {}})
        );
        let body = m.create_body("drill-");
        assert_eq!(
            body["aliases"],
            json!({"drill-lucid-blocks": {}, "drill-lucid-blocks-write": {}})
        );
        assert_eq!(body["mappings"]["dynamic"], "strict");
        assert!(body["settings"]["index"].get("uuid").is_none());
        // Round trip as JSON (how a backup stores it), and a later format is refused.
        let back: IndexMetadata =
            serde_json::from_value(serde_json::to_value(&m).expect("json")).expect("back");
        assert_eq!(back, m);
        let later = IndexMetadata {
            format: 2,
            ..m.clone()
        };
        assert!(later.check().is_err());
        assert!(m.check().is_ok());
    }

    #[test]
    fn prefixes_are_index_name_safe() {
        for ok in ["", "drill-", "restore_2026-"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["Drill-", "-x", "_x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
