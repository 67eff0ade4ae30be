//! Searches through an entity's read alias (every month): filters, full text (optionally
//! fuzzy), sort, `search_after` pagination, aggregations (terms, date histogram, stats,
//! cardinality), and counts. Built from typed parts, so a malformed query is refused before
//! sending; the server's own refusals come back as `Server` errors with its reason.

use std::sync::Arc;

use actix::Message;
use elasticsearch::http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::documents::Hit;
use super::names::Entity;
use super::{Conn, Request, SearchError, SearchOp, Shared, sealed};
use crate::supervisor::link::OpFuture;

/// At most this many hits per page (Elasticsearch's `index.max_result_window`).
pub const MAX_SIZE: u32 = 10_000;

const CALENDAR: [&str; 7] = ["minute", "hour", "day", "week", "month", "quarter", "year"];

fn check_field(field: &str) -> Result<(), SearchError> {
    let ok = !field.is_empty()
        && field.len() <= 256
        && !field.starts_with('_')
        && field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(SearchError::invalid(
            format!("field {field:?}"),
            "must be 1-256 of A-Z a-z 0-9 _ . - @, not starting with _",
        ))
    }
}

/// A condition every hit meets (no scoring).
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Term {
        field: String,
        value: Value,
    },
    Terms {
        field: String,
        values: Vec<Value>,
    },
    /// Inclusive bounds; dates as RFC 3339 text.
    Range {
        field: String,
        gte: Option<Value>,
        lte: Option<Value>,
    },
    Exists {
        field: String,
    },
    Not(Box<Filter>),
}

impl Filter {
    pub fn term(field: &str, value: impl Into<Value>) -> Filter {
        Filter::Term {
            field: field.to_owned(),
            value: value.into(),
        }
    }

    pub fn range(field: &str, gte: Option<Value>, lte: Option<Value>) -> Filter {
        Filter::Range {
            field: field.to_owned(),
            gte,
            lte,
        }
    }

    fn to_json(&self) -> Result<Value, SearchError> {
        Ok(match self {
            Filter::Term { field, value } => {
                check_field(field)?;
                json!({"term": {field: value}})
            }
            Filter::Terms { field, values } => {
                check_field(field)?;
                if values.is_empty() {
                    return Err(SearchError::invalid(field.as_str(), "terms: no values"));
                }
                json!({"terms": {field: values}})
            }
            Filter::Range { field, gte, lte } => {
                check_field(field)?;
                let mut bounds = Map::new();
                if let Some(v) = gte {
                    bounds.insert("gte".into(), v.clone());
                }
                if let Some(v) = lte {
                    bounds.insert("lte".into(), v.clone());
                }
                if bounds.is_empty() {
                    return Err(SearchError::invalid(field.as_str(), "range: no bounds"));
                }
                json!({"range": {field: bounds}})
            }
            Filter::Exists { field } => {
                check_field(field)?;
                json!({"exists": {"field": field}})
            }
            Filter::Not(inner) => json!({"bool": {"must_not": [inner.to_json()?]}}),
        })
    }
}

/// Full text over some fields, scored.
#[derive(Debug, Clone, PartialEq)]
pub struct TextQuery {
    pub text: String,
    pub fields: Vec<String>,
    /// Tolerate typos (`fuzziness: AUTO`).
    pub fuzzy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// An aggregation, answered under its name in [`SearchReply::aggs`].
#[derive(Debug, Clone, PartialEq)]
pub enum Agg {
    Terms {
        name: String,
        field: String,
        size: u32,
    },
    /// `interval`: minute, hour, day, week, month, quarter or year (calendar, UTC).
    DateHistogram {
        name: String,
        field: String,
        interval: String,
    },
    Stats {
        name: String,
        field: String,
    },
    Cardinality {
        name: String,
        field: String,
    },
}

impl Agg {
    fn name(&self) -> &str {
        match self {
            Agg::Terms { name, .. }
            | Agg::DateHistogram { name, .. }
            | Agg::Stats { name, .. }
            | Agg::Cardinality { name, .. } => name,
        }
    }

    fn to_json(&self) -> Result<Value, SearchError> {
        Ok(match self {
            Agg::Terms { field, size, .. } => {
                check_field(field)?;
                json!({"terms": {"field": field, "size": size}})
            }
            Agg::DateHistogram {
                field, interval, ..
            } => {
                check_field(field)?;
                if !CALENDAR.contains(&interval.as_str()) {
                    return Err(SearchError::invalid(
                        "interval",
                        format!("{interval:?}: one of {}", CALENDAR.join(", ")),
                    ));
                }
                json!({"date_histogram": {"field": field, "calendar_interval": interval, "time_zone": "UTC"}})
            }
            Agg::Stats { field, .. } => {
                check_field(field)?;
                json!({"stats": {"field": field}})
            }
            Agg::Cardinality { field, .. } => {
                check_field(field)?;
                json!({"cardinality": {"field": field}})
            }
        })
    }
}

/// A search of one entity, every month (through its read alias).
#[derive(Debug, Clone, PartialEq, Message)]
#[rtype(result = "Result<SearchReply, SearchError>")]
pub struct Search {
    pub entity: Entity,
    pub filters: Vec<Filter>,
    pub text: Option<TextQuery>,
    pub sort: Vec<(String, Order)>,
    pub size: u32,
    /// The `sort` values of the last hit of the previous page ([`SearchReply::next`]).
    pub search_after: Option<Vec<Value>>,
    pub aggs: Vec<Agg>,
}

impl Search {
    pub fn new(entity: Entity) -> Self {
        Search {
            entity,
            filters: Vec::new(),
            text: None,
            sort: Vec::new(),
            size: 10,
            search_after: None,
            aggs: Vec::new(),
        }
    }

    pub fn filter(mut self, f: Filter) -> Self {
        self.filters.push(f);
        self
    }

    pub fn text(mut self, text: &str, fields: &[&str], fuzzy: bool) -> Self {
        self.text = Some(TextQuery {
            text: text.to_owned(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            fuzzy,
        });
        self
    }

    pub fn sort(mut self, field: &str, order: Order) -> Self {
        self.sort.push((field.to_owned(), order));
        self
    }

    pub fn size(mut self, size: u32) -> Self {
        self.size = size;
        self
    }

    pub fn after(mut self, values: Vec<Value>) -> Self {
        self.search_after = Some(values);
        self
    }

    pub fn agg(mut self, agg: Agg) -> Self {
        self.aggs.push(agg);
        self
    }

    /// The request body, or why it cannot be sent.
    pub fn body(&self) -> Result<Value, SearchError> {
        if self.size > MAX_SIZE {
            return Err(SearchError::invalid(
                "size",
                format!("at most {MAX_SIZE}; page with search_after"),
            ));
        }
        let mut body = json!({"size": self.size, "track_total_hits": true, "query": query(&self.filters, self.text.as_ref())?});
        if !self.sort.is_empty() {
            let sort: Vec<Value> = self
                .sort
                .iter()
                .map(|(field, order)| {
                    check_field(field)?;
                    let order = match order {
                        Order::Asc => "asc",
                        Order::Desc => "desc",
                    };
                    Ok(json!({field: {"order": order}}))
                })
                .collect::<Result<_, SearchError>>()?;
            body["sort"] = Value::Array(sort);
        }
        if let Some(after) = &self.search_after {
            if self.sort.is_empty() || after.len() != self.sort.len() {
                return Err(SearchError::invalid(
                    "search_after",
                    "needs a sort, and one value per sort field",
                ));
            }
            body["search_after"] = Value::Array(after.clone());
        }
        if !self.aggs.is_empty() {
            let mut aggs = Map::new();
            for a in &self.aggs {
                if a.name().is_empty() || aggs.contains_key(a.name()) {
                    return Err(SearchError::invalid(
                        "aggs",
                        "every aggregation needs a distinct, non-empty name",
                    ));
                }
                aggs.insert(a.name().to_owned(), a.to_json()?);
            }
            body["aggs"] = Value::Object(aggs);
        }
        Ok(body)
    }
}

fn query(filters: &[Filter], text: Option<&TextQuery>) -> Result<Value, SearchError> {
    let filter: Vec<Value> = filters
        .iter()
        .map(Filter::to_json)
        .collect::<Result<_, _>>()?;
    let mut must = Vec::new();
    if let Some(t) = text {
        if t.text.trim().is_empty() || t.fields.is_empty() {
            return Err(SearchError::invalid(
                "text",
                "needs words and at least one field",
            ));
        }
        for f in &t.fields {
            check_field(f.trim_end_matches(|c: char| c == '^' || c.is_ascii_digit()))?;
        }
        let mut mm = json!({"query": t.text, "fields": t.fields});
        if t.fuzzy {
            mm["fuzziness"] = json!("AUTO");
        }
        must.push(json!({"multi_match": mm}));
    }
    Ok(json!({"bool": {"filter": filter, "must": must}}))
}

/// A page of hits, the total, and the aggregations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchReply {
    pub total: u64,
    pub hits: Vec<Hit>,
    /// The server's `aggregations`, by name (`buckets`, `value`, `min`/`max`/`avg`…).
    pub aggs: Value,
    /// Pass to [`Search::after`] for the next page; `None` on the last one.
    pub next: Option<Vec<Value>>,
}

impl sealed::Sealed for Search {}

impl SearchOp for Search {
    type Output = SearchReply;

    fn start(self, conn: Conn, _: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        let body = self.body()?;
        let size = self.size as usize;
        let sorted = !self.sort.is_empty();
        Ok(async move {
            let answer: SearchAnswer = conn
                .send_as(
                    Request::new(
                        Method::Post,
                        format!("/{}/_search", self.entity.read_alias()),
                    )
                    .query("ignore_unavailable", "true")
                    .query("allow_no_indices", "true")
                    .json(&body),
                )
                .await?;
            let hits: Vec<Hit> = answer
                .hits
                .hits
                .into_iter()
                .map(|h| Hit {
                    index: h.index,
                    id: h.id,
                    source: h.source,
                    sort: h.sort,
                })
                .collect();
            let total = match answer.hits.total {
                Value::Number(n) => n.as_u64().unwrap_or(0),
                other => other["value"].as_u64().unwrap_or(0),
            };
            let next = if sorted && size > 0 && hits.len() == size {
                hits.last().map(|h| h.sort.clone())
            } else {
                None
            };
            Ok(SearchReply {
                total,
                hits,
                aggs: match answer.aggregations {
                    Value::Null => json!({}),
                    aggs => aggs,
                },
                next,
            })
        })
    }
}

/// The parts of a search answer lucid-db reads, deserialized directly.
#[derive(Debug, Default, Deserialize)]
struct SearchAnswer {
    #[serde(default)]
    hits: HitsAnswer,
    #[serde(default)]
    aggregations: Value,
}

#[derive(Debug, Default, Deserialize)]
struct HitsAnswer {
    /// `{"value": n, "relation"}`, or a number with `rest_total_hits_as_int`.
    #[serde(default)]
    total: Value,
    #[serde(default)]
    hits: Vec<HitAnswer>,
}

#[derive(Debug, Deserialize)]
struct HitAnswer {
    #[serde(rename = "_index", default)]
    index: String,
    #[serde(rename = "_id", default)]
    id: String,
    #[serde(rename = "_source", default)]
    source: Value,
    #[serde(default)]
    sort: Vec<Value>,
}

/// How many documents of an entity match.
#[derive(Debug, Clone, PartialEq, Message)]
#[rtype(result = "Result<u64, SearchError>")]
pub struct Count {
    pub entity: Entity,
    pub filters: Vec<Filter>,
    pub text: Option<TextQuery>,
}

impl sealed::Sealed for Count {}

impl SearchOp for Count {
    type Output = u64;

    fn start(self, conn: Conn, _: &Arc<Shared>) -> Result<impl OpFuture<Self>, SearchError> {
        let body = json!({"query": query(&self.filters, self.text.as_ref())?});
        Ok(async move {
            let answer = conn
                .send(
                    Request::new(
                        Method::Post,
                        format!("/{}/_count", self.entity.read_alias()),
                    )
                    .query("ignore_unavailable", "true")
                    .query("allow_no_indices", "true")
                    .json(&body),
                )
                .await?
                .body;
            Ok(answer["count"].as_u64().unwrap_or(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_filters_text_sort_paging_and_aggregations() {
        let s = Search::new(Entity::Sessions)
            .filter(Filter::term("user_id", "u1"))
            .filter(Filter::range(
                "started_at",
                Some(json!("2026-11-01T00:00:00Z")),
                None,
            ))
            .text("firefox linux", &["user_agent", "location^2"], true)
            .sort("started_at", Order::Desc)
            .sort("session_id", Order::Asc)
            .size(20)
            .after(vec![json!(1_793_491_200_000_i64), json!("s9")])
            .agg(Agg::Terms {
                name: "by_status".into(),
                field: "status".into(),
                size: 5,
            })
            .agg(Agg::DateHistogram {
                name: "per_day".into(),
                field: "started_at".into(),
                interval: "day".into(),
            });
        let body = s.body().expect("valid");
        assert_eq!(
            body["query"]["bool"]["filter"][0],
            json!({"term": {"user_id": "u1"}})
        );
        assert_eq!(
            body["query"]["bool"]["filter"][1],
            json!({"range": {"started_at": {"gte": "2026-11-01T00:00:00Z"}}})
        );
        assert_eq!(
            body["query"]["bool"]["must"][0]["multi_match"]["fuzziness"],
            "AUTO"
        );
        assert_eq!(body["sort"][0], json!({"started_at": {"order": "desc"}}));
        assert_eq!(body["search_after"][1], "s9");
        assert_eq!(body["track_total_hits"], true);
        assert_eq!(
            body["aggs"]["per_day"]["date_histogram"]["calendar_interval"],
            "day"
        );
    }

    #[test]
    fn malformed_searches_are_refused_before_sending() {
        let base = || Search::new(Entity::Blocks);
        for bad in [
            base().size(MAX_SIZE + 1),
            base().filter(Filter::term("", 1)),
            base().filter(Filter::term("_source", 1)),
            base().filter(Filter::term("a b", 1)),
            base().filter(Filter::range("height", None, None)),
            base().filter(Filter::Terms {
                field: "hash".into(),
                values: vec![],
            }),
            base().after(vec![json!(1)]),
            base()
                .sort("height", Order::Asc)
                .after(vec![json!(1), json!(2)]),
            base().text(" ", &["note"], false),
            base().text("x", &[], false),
            base().agg(Agg::DateHistogram {
                name: "h".into(),
                field: "timestamp".into(),
                interval: "fortnight".into(),
            }),
            base()
                .agg(Agg::Stats {
                    name: "s".into(),
                    field: "size_bytes".into(),
                })
                .agg(Agg::Cardinality {
                    name: "s".into(),
                    field: "producer".into(),
                }),
        ] {
            assert!(
                matches!(bad.body(), Err(SearchError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }
}
