//! `/api/v1/database/redis/…`: the cache (`lucid:{service}:{entity}:{id}` keys, JSON values
//! with a TTL), sessions, rate-limit checks for Lucid's users, and leased locks with fencing
//! tokens, through the Redis actor. Key parts and names are checked by the actor's key builder
//! (no `:`, `*`, `/` or `..`): `400 invalid`.
//!
//! Locks taken through the API remember their holder (the token's name, in
//! `lucid:api:lock:{name}` for the lease): releasing a lock another token holds needs `admin`.

use std::net::IpAddr;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use lucid_actors::redis::{
    CacheDelete, CacheGet, CacheSet, Key, LockGuard, RateSubject, RedisHandle,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Scope, authorize};
use super::error::ApiError;
use super::extract::OptionalJson;
use super::{State, caller_of, need, ok};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/redis/cache", web::post().to(cache_set))
        .service(
            web::resource("/redis/cache/{service}/{entity}/{id}")
                .route(web::get().to(cache_get))
                .route(web::delete().to(cache_delete)),
        )
        .route("/redis/session", web::post().to(session_create))
        .service(
            web::resource("/redis/session/{session_id}")
                .route(web::get().to(session_get))
                .route(web::delete().to(session_delete)),
        )
        .route("/redis/ratelimit/check", web::post().to(ratelimit_check))
        .service(
            web::resource("/redis/lock/{name}")
                .route(web::post().to(lock_acquire))
                .route(web::delete().to(lock_release)),
        );
}

fn redis(state: &State) -> Result<&RedisHandle, ApiError> {
    need(&state.handles.redis, "redis")
}

fn key(service: &str, entity: &str, id: &str) -> Result<Key, ApiError> {
    Key::new(service, entity, id).map_err(ApiError::from)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheBody {
    pub service: String,
    pub entity: String,
    pub id: String,
    #[schema(value_type = Object)]
    pub value: Value,
    /// Seconds; default `redis.cache_ttl`, at most `redis.cache_max_ttl`.
    pub ttl: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/api/v1/database/redis/cache",
    operation_id = "redis_ops_cache_set",
    tag = "redis",
    request_body = CacheBody,
    responses((status = 201, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn cache_set(state: State, body: web::Json<CacheBody>) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let key = key(&b.service, &b.entity, &b.id)?;
    let value = serde_json::to_vec(&b.value)
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    redis(&state)?
        .call(CacheSet {
            key: key.clone(),
            value,
            ttl: b.ttl.map(Duration::from_secs),
        })
        .await?;
    Ok(HttpResponse::Created().json(json!({ "key": key.as_str() })))
}

#[utoipa::path(
    get,
    path = "/api/v1/database/redis/cache/{service}/{entity}/{id}",
    operation_id = "redis_ops_cache_get",
    tag = "redis",
    params(("service" = String, Path), ("entity" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn cache_get(
    state: State,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (service, entity, id) = path.into_inner();
    let key = key(&service, &entity, &id)?;
    let Some(bytes) = redis(&state)?.call(CacheGet { key: key.clone() }).await? else {
        return Err(ApiError::not_found(format!(
            "no cache entry {}",
            key.as_str()
        )));
    };
    // Values written by the API are JSON; anything else comes back as text.
    let value = serde_json::from_slice::<Value>(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(ok(&json!({ "key": key.as_str(), "value": value })))
}

#[utoipa::path(
    delete,
    path = "/api/v1/database/redis/cache/{service}/{entity}/{id}",
    operation_id = "redis_ops_cache_delete",
    tag = "redis",
    params(("service" = String, Path), ("entity" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn cache_delete(
    state: State,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (service, entity, id) = path.into_inner();
    let key = key(&service, &entity, &id)?;
    let deleted = redis(&state)?.call(CacheDelete { key }).await?;
    Ok(ok(&json!({ "deleted": deleted })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionBody {
    /// Default: a new random id.
    pub id: Option<String>,
    pub user_id: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Value,
    /// Seconds; default `redis.session_ttl`.
    pub ttl: Option<u64>,
}

#[utoipa::path(
    post,
    path = "/api/v1/database/redis/session",
    operation_id = "redis_ops_session_create",
    tag = "redis",
    request_body = SessionBody,
    responses((status = 201, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn session_create(
    state: State,
    body: web::Json<SessionBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let id =
        b.id.unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
    let session = redis(&state)?
        .create_session(&id, &b.user_id, b.data, b.ttl.map(Duration::from_secs))
        .await?;
    Ok(HttpResponse::Created().json(session_json(&session)))
}

fn session_json(s: &lucid_actors::redis::Session) -> Value {
    json!({
        "id": s.id,
        "user_id": s.user_id,
        "data": s.data,
        "created_ms": s.created_ms,
        "ttl_seconds": s.ttl.as_secs(),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/database/redis/session/{session_id}",
    operation_id = "redis_ops_session_get",
    tag = "redis",
    params(("session_id" = String, Path)),
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn session_get(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    match redis(&state)?.get_session(&path).await? {
        Some(s) => Ok(ok(&session_json(&s))),
        None => Err(ApiError::not_found("no such session")),
    }
}

#[utoipa::path(
    delete,
    path = "/api/v1/database/redis/session/{session_id}",
    operation_id = "redis_ops_session_delete",
    tag = "redis",
    params(("session_id" = String, Path)),
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn session_delete(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let deleted = redis(&state)?.delete_session(&path).await?;
    Ok(ok(&json!({ "deleted": deleted })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    /// Exactly one of `user_id` and `ip`.
    pub user_id: Option<String>,
    #[schema(value_type = Option<String>)]
    pub ip: Option<IpAddr>,
    pub limit: u32,
    pub window_seconds: u64,
}

#[utoipa::path(
    post,
    path = "/api/v1/database/redis/ratelimit/check",
    operation_id = "redis_ops_ratelimit_check",
    tag = "redis",
    request_body = RateLimitBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn ratelimit_check(
    state: State,
    body: web::Json<RateLimitBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let subject = match (b.user_id, b.ip) {
        (Some(u), None) => RateSubject::User(u),
        (None, Some(ip)) => RateSubject::Ip(ip),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "give exactly one of user_id or ip",
            ));
        }
    };
    if b.limit == 0 || b.window_seconds == 0 {
        return Err(ApiError::bad_request(
            "invalid_body",
            "limit and window_seconds must be greater than zero",
        ));
    }
    let d = redis(&state)?
        .check_rate_limit(subject, b.limit, Duration::from_secs(b.window_seconds))
        .await?;
    Ok(ok(&json!({
        "allowed": d.allowed,
        "remaining": d.remaining,
        "retry_after_ms": d.retry_after.as_millis() as u64,
        "degraded": d.degraded,
    })))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// Milliseconds; default `redis.lock_lease`.
    pub lease_ms: Option<u64>,
    /// Wait up to this long for the lock (milliseconds; default: one attempt). At most 10 s.
    pub wait_ms: Option<u64>,
}

/// Where the API remembers who holds a lock.
fn holder_key(name: &str) -> Result<Key, ApiError> {
    key("api", "lock", name)
}

#[utoipa::path(
    post,
    path = "/api/v1/database/redis/lock/{name}",
    operation_id = "redis_ops_lock_acquire",
    tag = "redis",
    params(("name" = String, Path)),
    request_body = AcquireBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn lock_acquire(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    body: OptionalJson<AcquireBody>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let b = body.into_inner();
    let caller = caller_of(&req).ok_or_else(|| ApiError::not_found("no caller"))?;
    let holder = holder_key(&name)?;
    let wait = b.wait_ms.map(|ms| Duration::from_millis(ms.min(10_000)));
    let r = redis(&state)?;
    let guard = r
        .acquire_lock(&name, b.lease_ms.map(Duration::from_millis), wait)
        .await?;
    // The holder's name lives as long as the lease.
    r.call(CacheSet {
        key: holder,
        value: caller.name.into_bytes(),
        ttl: Some(guard.lease.max(Duration::from_secs(1))),
    })
    .await?;
    Ok(ok(&json!({
        "name": guard.name,
        "token": guard.token,
        "fence": guard.fence,
        "lease_ms": guard.lease.as_millis() as u64,
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// The token the acquire answered.
    pub token: String,
    pub fence: u64,
}

#[utoipa::path(
    delete,
    path = "/api/v1/database/redis/lock/{name}",
    operation_id = "redis_ops_lock_release",
    tag = "redis",
    params(("name" = String, Path)),
    request_body = ReleaseBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn lock_release(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<ReleaseBody>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let b = body.into_inner();
    let caller = caller_of(&req).ok_or_else(|| ApiError::not_found("no caller"))?;
    let r = redis(&state)?;
    let holder_key = holder_key(&name)?;
    if let Some(holder) = r
        .call(CacheGet {
            key: holder_key.clone(),
        })
        .await?
        && holder != caller.name.as_bytes()
    {
        authorize(&caller, Scope::Admin)?;
    }
    r.release_lock(&LockGuard {
        name,
        token: b.token,
        fence: b.fence,
        lease: Duration::ZERO,
    })
    .await?;
    r.call(CacheDelete { key: holder_key }).await?;
    Ok(ok(&json!({ "released": true })))
}
