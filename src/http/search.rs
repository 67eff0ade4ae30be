//! `/api/v1/database/elasticsearch/…`: searches of one Lucid entity (every month, through its
//! read alias), single documents indexed through the bulk indexer, the Lucid analytics, and
//! cluster stats. Entities are Lucid's five (`sessions`, `blocks`, `transactions`,
//! `manifests`, `audit-logs`); anything else is `400 unknown_entity`. Queries are built from
//! the typed filters and aggregations below, never passed through as raw query DSL.

use actix_web::{HttpResponse, web};
use lucid_actors::search::{
    Agg, BulkDoc, Entity, Filter, GetStats, Order, Search, SearchHandle, TextQuery,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{State, need, ok};

/// At most this many hits a page.
pub const MAX_SIZE: u32 = 1000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/elasticsearch/search", web::post().to(search))
        .route("/elasticsearch/analytics", web::get().to(analytics))
        .route("/elasticsearch/stats", web::get().to(stats))
        .route("/elasticsearch/{entity}", web::post().to(index));
}

fn handle(state: &State) -> Result<&SearchHandle, ApiError> {
    need(&state.handles.search, "elasticsearch")
}

fn entity(name: &str) -> Result<Entity, ApiError> {
    Entity::parse(name).map_err(|e| ApiError::bad_request("unknown_entity", e))
}

/// A condition every hit meets.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum FilterBody {
    Term {
        field: String,
        value: Value,
    },
    Terms {
        field: String,
        values: Vec<Value>,
    },
    Range {
        field: String,
        gte: Option<Value>,
        lte: Option<Value>,
    },
    Exists {
        field: String,
    },
    #[schema(no_recursion)]
    Not(Box<FilterBody>),
}

impl FilterBody {
    fn into_filter(self) -> Filter {
        match self {
            FilterBody::Term { field, value } => Filter::Term { field, value },
            FilterBody::Terms { field, values } => Filter::Terms { field, values },
            FilterBody::Range { field, gte, lte } => Filter::Range { field, gte, lte },
            FilterBody::Exists { field } => Filter::Exists { field },
            FilterBody::Not(inner) => Filter::Not(Box::new(inner.into_filter())),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextQueryBody {
    pub text: String,
    pub fields: Vec<String>,
    #[serde(default)]
    pub fuzzy: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AggBody {
    Terms {
        name: String,
        field: String,
        #[serde(default = "ten")]
        size: u32,
    },
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

fn ten() -> u32 {
    10
}

impl AggBody {
    fn into_agg(self) -> Agg {
        match self {
            AggBody::Terms { name, field, size } => Agg::Terms { name, field, size },
            AggBody::DateHistogram {
                name,
                field,
                interval,
            } => Agg::DateHistogram {
                name,
                field,
                interval,
            },
            AggBody::Stats { name, field } => Agg::Stats { name, field },
            AggBody::Cardinality { name, field } => Agg::Cardinality { name, field },
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderBody {
    Asc,
    Desc,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SortBody {
    pub field: String,
    pub order: OrderBody,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    pub entity: String,
    pub query: Option<TextQueryBody>,
    #[serde(default)]
    pub filters: Vec<FilterBody>,
    #[serde(default)]
    pub sort: Vec<SortBody>,
    /// Hits a page (default 10, at most 1000).
    pub size: Option<u32>,
    /// The `next` of the previous page.
    #[schema(value_type = Option<Vec<Object>>)]
    pub after: Option<Vec<Value>>,
    #[serde(default)]
    pub aggregations: Vec<AggBody>,
}

#[utoipa::path(
    post,
    path = "/api/v1/database/elasticsearch/search",
    operation_id = "search_search",
    tag = "elasticsearch",
    request_body = SearchBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn search(state: State, body: web::Json<SearchBody>) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let size = b.size.unwrap_or(10);
    if size > MAX_SIZE {
        return Err(ApiError::bad_request(
            "invalid_size",
            format!("size must be at most {MAX_SIZE}, got {size}"),
        ));
    }
    let search = Search {
        entity: entity(&b.entity)?,
        filters: b.filters.into_iter().map(FilterBody::into_filter).collect(),
        text: b.query.map(|q| TextQuery {
            text: q.text,
            fields: q.fields,
            fuzzy: q.fuzzy,
        }),
        sort: b
            .sort
            .into_iter()
            .map(|s| {
                let order = match s.order {
                    OrderBody::Asc => Order::Asc,
                    OrderBody::Desc => Order::Desc,
                };
                (s.field, order)
            })
            .collect(),
        size,
        search_after: b.after,
        aggs: b.aggregations.into_iter().map(AggBody::into_agg).collect(),
    };
    let reply = handle(&state)?.call(search).await?;
    Ok(ok(&reply))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexBody {
    /// Default: the server picks one.
    pub id: Option<String>,
    #[schema(value_type = Object)]
    pub document: Value,
}

#[utoipa::path(
    post,
    path = "/api/v1/database/elasticsearch/{entity}",
    operation_id = "search_index",
    tag = "elasticsearch",
    params(("entity" = String, Path)),
    request_body = IndexBody,
    responses((status = 201, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn index(
    state: State,
    path: web::Path<String>,
    body: web::Json<IndexBody>,
) -> Result<HttpResponse, ApiError> {
    let entity = entity(&path)?;
    let b = body.into_inner();
    if !b.document.is_object() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "document must be a JSON object",
        ));
    }
    let reply = handle(&state)?
        .submit(
            entity,
            BulkDoc {
                id: b.id,
                source: b.document,
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(reply))
}

/// The Lucid aggregations: documents per month and entity, the top users by sessions, and
/// blocks per day.
#[utoipa::path(
    get,
    path = "/api/v1/database/elasticsearch/analytics",
    operation_id = "search_analytics",
    tag = "elasticsearch",
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn analytics(state: State) -> Result<HttpResponse, ApiError> {
    let h = handle(&state)?;
    let mut per_month = serde_json::Map::new();
    for e in Entity::ALL {
        let reply = h
            .call(Search::new(e).size(0).agg(Agg::DateHistogram {
                name: "per_month".into(),
                field: e.time_field().into(),
                interval: "month".into(),
            }))
            .await?;
        per_month.insert(
            e.name().to_owned(),
            json!({ "total": reply.total, "months": reply.aggs["per_month"]["buckets"] }),
        );
    }
    let users = h
        .call(Search::new(Entity::Sessions).size(0).agg(Agg::Terms {
            name: "users".into(),
            field: "user_id".into(),
            size: 10,
        }))
        .await?;
    let blocks = h
        .call(Search::new(Entity::Blocks).size(0).agg(Agg::DateHistogram {
            name: "per_day".into(),
            field: Entity::Blocks.time_field().into(),
            interval: "day".into(),
        }))
        .await?;
    Ok(ok(&json!({
        "documents_per_month": per_month,
        "top_users_by_sessions": users.aggs["users"]["buckets"],
        "blocks_per_day": blocks.aggs["per_day"]["buckets"],
    })))
}

#[utoipa::path(
    get,
    path = "/api/v1/database/elasticsearch/stats",
    operation_id = "search_stats",
    tag = "elasticsearch",
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn stats(state: State) -> Result<HttpResponse, ApiError> {
    let h = handle(&state)?;
    let cluster = h.call(GetStats).await?;
    Ok(ok(&json!({
        "cluster": cluster,
        "indexer": h.indexer_stats(),
        "late_documents": h.late_documents(),
        "retried_documents": h.retried_documents(),
    })))
}
