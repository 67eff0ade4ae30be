//! `/api/v1/database/mongodb/…`: queries, inserts, updates and deletes by filter,
//! aggregations and stats, as relaxed Extended JSON through the MongoDB actor's JSON messages.
//!
//! Collections are Lucid's 15 (anything else is `400 unknown_collection`). Before anything is
//! sent, every filter, update, projection, sort, document and pipeline is searched for the
//! operators the API never passes on — `$where`, `$function`, `$accumulator` (server-side
//! JavaScript) and the `$out`/`$merge` stages — at any depth (`400 forbidden_operator`); the
//! actor then checks every filter operator against MongoDB's own list and every write against
//! the collection's schema.

use actix_web::{HttpResponse, web};
use lucid_actors::mongo::{
    AggregateJson, Collection, DeleteJson, FindJson, GetStats, InsertJson, InsertManyJson,
    MongoHandle, UpdateJson,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{State, need, ok};

/// At most this many documents answer a query or an aggregation.
pub const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 100;

/// Never passed on, wherever they appear.
const FORBIDDEN: &[&str] = &["$where", "$function", "$accumulator", "$out", "$merge"];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/mongodb/query", web::post().to(query))
        .route("/mongodb/stats", web::get().to(stats))
        .route("/mongodb/{collection}/aggregate", web::post().to(aggregate))
        .service(
            web::resource("/mongodb/{collection}")
                .route(web::post().to(insert))
                .route(web::patch().to(update))
                .route(web::delete().to(delete)),
        );
}

fn mongo(state: &State) -> Result<&MongoHandle, ApiError> {
    need(&state.handles.mongo, "mongodb")
}

fn collection(name: &str) -> Result<Collection, ApiError> {
    Collection::parse(name).map_err(|e| ApiError::bad_request("unknown_collection", e))
}

/// `400 forbidden_operator` naming the first forbidden key found in `value` (at `field`).
pub fn check_operators(field: &str, value: &Value) -> Result<(), ApiError> {
    fn walk(path: &mut String, v: &Value) -> Result<(), ApiError> {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    if FORBIDDEN.contains(&k.as_str()) {
                        return Err(ApiError::bad_request(
                            "forbidden_operator",
                            format!("{k} is not allowed (at {path})"),
                        ));
                    }
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    walk(path, child)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!(".{i}"));
                    walk(path, child)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk(&mut field.to_owned(), value)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    pub collection: String,
    #[serde(default = "empty")]
    #[schema(value_type = Object)]
    pub filter: Value,
    #[schema(value_type = Option<Object>)]
    pub projection: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub sort: Option<Value>,
    pub limit: Option<i64>,
    pub skip: Option<u64>,
}

fn empty() -> Value {
    json!({})
}

#[utoipa::path(
    post,
    path = "/api/v1/database/mongodb/query",
    operation_id = "mongo_query",
    tag = "mongodb",
    request_body = QueryBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn query(state: State, body: web::Json<QueryBody>) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let collection = collection(&b.collection)?;
    let limit = b.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_LIMIT}, got {limit}"),
        ));
    }
    check_operators("filter", &b.filter)?;
    for (f, v) in [("projection", &b.projection), ("sort", &b.sort)] {
        if let Some(v) = v {
            check_operators(f, v)?;
        }
    }
    let feed = mongo(&state)?
        .call(FindJson {
            collection,
            filter: b.filter,
            projection: b.projection,
            sort: b.sort,
            skip: b.skip,
            limit: Some(limit),
        })
        .await?;
    let documents = feed.collect().await?;
    Ok(ok(&json!({ "documents": documents })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InsertBody {
    /// One document…
    #[schema(value_type = Option<Object>)]
    pub document: Option<Value>,
    /// …or several (exactly one of the two).
    #[schema(value_type = Option<Vec<Object>>)]
    pub documents: Option<Vec<Value>>,
    /// For `documents`: stop at the first failure (default) or try every one.
    #[serde(default = "yes")]
    pub ordered: bool,
}

fn yes() -> bool {
    true
}

#[utoipa::path(
    post,
    path = "/api/v1/database/mongodb/{collection}",
    operation_id = "mongo_insert",
    tag = "mongodb",
    params(("collection" = String, Path)),
    request_body = InsertBody,
    responses((status = 201, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn insert(
    state: State,
    path: web::Path<String>,
    body: web::Json<InsertBody>,
) -> Result<HttpResponse, ApiError> {
    let collection = collection(&path)?;
    let b = body.into_inner();
    let ids = match (b.document, b.documents) {
        (Some(document), None) => {
            check_operators("document", &document)?;
            vec![
                mongo(&state)?
                    .call(InsertJson {
                        collection,
                        document,
                    })
                    .await?,
            ]
        }
        (None, Some(documents)) if !documents.is_empty() => {
            for (i, d) in documents.iter().enumerate() {
                check_operators(&format!("documents.{i}"), d)?;
            }
            mongo(&state)?
                .call(InsertManyJson {
                    collection,
                    documents,
                    ordered: b.ordered,
                })
                .await?
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "give exactly one of document or documents (not empty)",
            ));
        }
    };
    Ok(HttpResponse::Created().json(json!({ "inserted_ids": ids })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    #[schema(value_type = Object)]
    pub filter: Value,
    /// Operators only (`$set`, `$inc`, …).
    #[schema(value_type = Object)]
    pub update: Value,
    #[serde(default)]
    pub upsert: bool,
    /// Required: every matching document (`true`) or the first (`false`).
    pub many: bool,
}

#[utoipa::path(
    patch,
    path = "/api/v1/database/mongodb/{collection}",
    operation_id = "mongo_update",
    tag = "mongodb",
    params(("collection" = String, Path)),
    request_body = UpdateBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn update(
    state: State,
    path: web::Path<String>,
    body: web::Json<UpdateBody>,
) -> Result<HttpResponse, ApiError> {
    let collection = collection(&path)?;
    let b = body.into_inner();
    check_operators("filter", &b.filter)?;
    check_operators("update", &b.update)?;
    let summary = mongo(&state)?
        .call(UpdateJson {
            collection,
            filter: b.filter,
            update: b.update,
            upsert: b.upsert,
            many: b.many,
        })
        .await?;
    Ok(ok(&summary))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    #[schema(value_type = Object)]
    pub filter: Value,
    /// Required: every matching document (`true`) or the first (`false`).
    pub many: bool,
}

#[utoipa::path(
    delete,
    path = "/api/v1/database/mongodb/{collection}",
    operation_id = "mongo_delete",
    tag = "mongodb",
    params(("collection" = String, Path)),
    request_body = DeleteBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["admin"]))
)]
async fn delete(
    state: State,
    path: web::Path<String>,
    body: web::Json<DeleteBody>,
) -> Result<HttpResponse, ApiError> {
    let collection = collection(&path)?;
    let b = body.into_inner();
    check_operators("filter", &b.filter)?;
    let deleted = mongo(&state)?
        .call(DeleteJson {
            collection,
            filter: b.filter,
            many: b.many,
        })
        .await?;
    Ok(ok(&json!({ "deleted": deleted })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateBody {
    #[schema(value_type = Vec<Object>)]
    pub pipeline: Vec<Value>,
}

#[utoipa::path(
    post,
    path = "/api/v1/database/mongodb/{collection}/aggregate",
    operation_id = "mongo_aggregate",
    tag = "mongodb",
    params(("collection" = String, Path)),
    request_body = AggregateBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn aggregate(
    state: State,
    path: web::Path<String>,
    body: web::Json<AggregateBody>,
) -> Result<HttpResponse, ApiError> {
    let collection = collection(&path)?;
    let b = body.into_inner();
    for (i, stage) in b.pipeline.iter().enumerate() {
        check_operators(&format!("pipeline.{i}"), stage)?;
    }
    let mut feed = mongo(&state)?
        .call(AggregateJson {
            collection,
            pipeline: b.pipeline,
        })
        .await?;
    let mut documents = Vec::new();
    let mut truncated = false;
    while let Some(doc) = feed.next().await {
        if documents.len() as i64 >= MAX_LIMIT {
            truncated = true;
            break;
        }
        documents.push(doc?);
    }
    Ok(ok(
        &json!({ "documents": documents, "truncated": truncated }),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/database/mongodb/stats",
    operation_id = "mongo_stats",
    tag = "mongodb",
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn stats(state: State) -> Result<HttpResponse, ApiError> {
    let stats = mongo(&state)?.call(GetStats).await?;
    Ok(ok(&stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_operators_are_found_at_any_depth() {
        for (v, at) in [
            (json!({"$where": "1"}), "filter"),
            (json!({"a": {"$in": [{"$function": {}}]}}), "filter.a.$in.0"),
            (
                json!({"$or": [{"x": 1}, {"$expr": {"$accumulator": {}}}]}),
                "filter.$or.1.$expr",
            ),
        ] {
            let e = check_operators("filter", &v).expect_err("refused");
            assert_eq!(e.code, "forbidden_operator");
            assert!(e.message.ends_with(&format!("(at {at})")), "{}", e.message);
        }
        assert!(check_operators("filter", &json!({"a": {"$gt": 1}, "b": ["$where"]})).is_ok());
    }
}
