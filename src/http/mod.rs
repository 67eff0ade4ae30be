//! The HTTP API (docs/http.md): `/health` and `/ready` without a token; the gateway endpoints
//! under `/api/v1/database/` over the actors' handles, each behind a bearer token with a
//! scope, a per-token rate limit and, for writes, the audit trail.
//!
//! One module per area: [`error`] (the one error shape), [`auth`] (tokens, scopes, the rate
//! limit), [`audit`], [`metrics`] (`/metrics` and the request counter), and the endpoints in [`mongo`], [`redis_ops`] (the `redis` name is the driver's), [`search`], [`volumes`],
//! [`backup`]. The router is [`routes`]; [`guard`] is the one middleware every request passes:
//! it knows each route's scope ([`scope_of`]), so no handler can forget to check it.
//!
//! actix-web's own signal handling is off: the daemon has one signal path. Handlers run on the
//! workers' threads and call the actors' handles from there (they are `Send + Sync`).

pub mod audit;
pub mod auth;
pub mod backup;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod mongo;
pub mod openapi;
pub mod redis_ops;
pub mod schedule;
pub mod search;
pub mod volumes;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers, Next, from_fn};
use actix_web::{App, HttpMessage, HttpResponse, HttpServer, web};
use lucid_actors::{BackendStatus, Config, Handles, HealthRegistry, Roles};
use serde::{Deserialize, Serialize};

use self::audit::{Audit, Record};
use self::auth::{Caller, Limiter, Scope, Tokens};
use self::error::ApiError;

/// What `/health` returns (and `lucid-db health --json` prints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthReport {
    /// `ok` when every required backend is up, else `degraded`. `/health` answers 200 either way.
    pub status: String,
    pub version: String,
    pub uptime_seconds: u64,
    /// The parts that run in this process (`stores`, `volumes`, …).
    pub parts: Roles,
    pub backends: Vec<BackendStatus>,
    /// Set while the API's rate limit counts in process because Redis is unavailable
    /// (`redis.rate_limit_when_down = "open"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// The API's audit documents waiting for MongoDB, and those dropped since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditStatus {
    pub queued: u64,
    pub dropped: u64,
}

impl HealthReport {
    pub fn new(registry: &HealthRegistry, parts: Roles, uptime: Duration) -> Self {
        let backends = registry.snapshot();
        let ok = backends.iter().all(|b| b.is_up() || !b.required);
        HealthReport {
            status: if ok { "ok" } else { "degraded" }.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: uptime.as_secs(),
            parts,
            backends,
            rate_limit: None,
            audit: None,
        }
    }

    /// Every required backend is up.
    pub fn required_up(&self) -> bool {
        self.status == "ok"
    }
}

/// What `/ready` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// Everything the handlers share; one per server, behind `web::Data`.
pub struct ApiState {
    pub registry: HealthRegistry,
    /// The parts that run ([`lucid_actors::Handles::roles`]).
    pub parts: Roles,
    pub started: Instant,
    pub handles: Handles,
    pub tokens: Tokens,
    pub limiter: Limiter,
    pub audit: Audit,
    /// `http.bind` is a loopback address: `/metrics` and the OpenAPI document need no token.
    pub loopback: bool,
    pub body_limit: usize,
    pub request_timeout: Duration,
    pub workers: usize,
}

impl ApiState {
    pub fn new(config: &Config, handles: Handles, started: Instant) -> ApiState {
        let http = &config.http;
        ApiState {
            registry: handles.registry.clone(),
            parts: handles.roles,
            started,
            tokens: Tokens::load(http.tokens_path(&config.state_dir)),
            limiter: Limiter::new(
                http.rate_limit,
                http.rate_window,
                config.redis.rate_limit_when_down,
            ),
            audit: Audit::new(http.audit_queue),
            loopback: http.bind.ip().is_loopback(),
            body_limit: usize::try_from(http.body_limit.0).unwrap_or(usize::MAX),
            request_timeout: http.request_timeout,
            workers: http.workers,
            handles,
        }
    }
}

async fn health(state: web::Data<ApiState>) -> HttpResponse {
    let mut report = HealthReport::new(&state.registry, state.parts, state.started.elapsed());
    if state.limiter.local_in_use.load(Ordering::Relaxed) {
        report.rate_limit = Some(
            "in_process: redis is unavailable and redis.rate_limit_when_down = open".to_owned(),
        );
    }
    report.audit = Some(AuditStatus {
        queued: state.audit.queued() as u64,
        dropped: state.audit.dropped(),
    });
    HttpResponse::Ok().json(report)
}

async fn ready(state: web::Data<ApiState>) -> HttpResponse {
    match state.registry.readiness() {
        Ok(()) => HttpResponse::Ok().json(Readiness {
            ready: true,
            reasons: Vec::new(),
        }),
        Err(reasons) => HttpResponse::ServiceUnavailable().json(Readiness {
            ready: false,
            reasons,
        }),
    }
}

/// The prefix of every gateway endpoint.
pub const API: &str = "/api/v1/database";

/// The scope a route needs (by method and pattern); `None`: no token at all. Routes not
/// listed (an unknown path) need `read`, so a caller without a token learns nothing of them.
pub fn scope_of(method: &Method, pattern: Option<&str>, loopback: bool) -> Option<Scope> {
    let Some(p) = pattern else {
        return Some(Scope::Read);
    };
    match p {
        "/health" | "/ready" => None,
        "/metrics" | "/api/v1/openapi.json" if loopback => None,
        "/metrics" | "/api/v1/openapi.json" => Some(Scope::Read),
        _ => Some(match (method.as_str(), p.strip_prefix(API).unwrap_or(p)) {
            // Deleting by filter, restoring, and (checked in the handler) releasing another
            // holder's lock.
            ("DELETE", "/mongodb/{collection}") => Scope::Admin,
            ("POST", "/backup/{id}/restore") => Scope::Admin,
            ("POST", "/schedule/{job}/run") => Scope::Admin,
            // Removing a volume or a snapshot, replacing a volume's data, moving it.
            ("DELETE", "/volumes/{name}" | "/volumes/{name}/snapshots/{snapshot}") => Scope::Admin,
            ("POST", "/volumes/{name}/snapshots/{snapshot}/restore") => Scope::Admin,
            ("POST", "/volumes/{name}/migrate") => Scope::Admin,
            ("GET", _) => Scope::Read,
            // Reads with a body.
            ("POST", "/mongodb/query" | "/mongodb/{collection}/aggregate") => Scope::Read,
            ("POST", "/elasticsearch/search") => Scope::Read,
            _ => Scope::Write,
        }),
    }
}

/// The routes `http.request_timeout` does not cut off, the one list: a backup's verification or
/// restore, a job run by hand, and each volume operation that copies, hashes, removes or walks
/// a volume's data (`VolumeOp::LONG`) take as long as their data takes, and the actor goes on
/// whatever the client is told. Cut off, the caller would hear `504 timeout` while the
/// operation goes on, and could not tell how it ended or whether the data changed
/// (docs/http.md).
pub fn unbounded(method: &Method, pattern: Option<&str>) -> bool {
    let Some(p) = pattern.and_then(|p| p.strip_prefix(API)) else {
        return false;
    };
    matches!(
        (method.as_str(), p),
        (
            "POST",
            "/backup/{id}/verify" | "/backup/{id}/restore" | "/schedule/{job}/run"
        ) | (
            "DELETE",
            "/volumes/{name}" | "/volumes/{name}/snapshots/{snapshot}"
        ) | ("PUT", "/volumes/{name}/quota")
            | (
                "POST",
                "/volumes/{name}/verify"
                    | "/volumes/{name}/snapshots"
                    | "/volumes/{name}/snapshots/{snapshot}/restore"
                    | "/volumes/{name}/cleanup"
                    | "/volumes/{name}/migrate"
            )
    )
}

/// Every request passes here: the token and its scope, the rate limit, the request timeout,
/// and the audit of writes. Nothing reaches a handler (or the body parser) before the token
/// is checked.
async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<ApiState>>().cloned() else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting", "starting").into());
    };
    let pattern = req.match_pattern();
    let Some(need) = scope_of(req.method(), pattern.as_deref(), state.loopback) else {
        return next.call(req).await;
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = auth::authenticate(&state.tokens, header)?;
    auth::authorize(&caller, need)?;
    state
        .limiter
        .check(state.handles.redis.as_ref(), &caller.name)
        .await?;
    let audited = need >= Scope::Write;
    let method = method_name(req.method());
    let ip = req.peer_addr().map(|a| a.ip().to_string());
    req.extensions_mut().insert(caller.clone());
    // `Duration::MAX`: no deadline at all (tokio sets none past the clock's end).
    let limit = if unbounded(req.method(), pattern.as_deref()) {
        Duration::MAX
    } else {
        state.request_timeout
    };
    let res = match tokio::time::timeout(limit, next.call(req)).await {
        Ok(res) => res,
        Err(_) => {
            let e = ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "the request took longer than {} s (http.request_timeout)",
                    state.request_timeout.as_secs_f64()
                ),
            );
            if audited {
                state.audit.record(Record {
                    token: caller.name,
                    method,
                    route: pattern.clone().unwrap_or_default(),
                    target: pattern.unwrap_or_default(),
                    outcome: "timeout",
                    status: 504,
                    ip,
                });
            }
            return Err(e.into());
        }
    };
    if audited {
        let (outcome, status, target) = match &res {
            Ok(r) => {
                let status = r.status();
                let outcome = if status.is_success() {
                    "ok"
                } else {
                    r.response()
                        .error()
                        .and_then(|e| e.as_error::<ApiError>())
                        .map_or("error", |e| e.code)
                };
                (outcome, status.as_u16(), target_of(r.request()))
            }
            Err(e) => (
                e.as_error::<ApiError>().map_or("error", |e| e.code),
                e.as_response_error().status_code().as_u16(),
                pattern.clone().unwrap_or_default(),
            ),
        };
        state.audit.record(Record {
            token: caller.name,
            method,
            route: pattern.unwrap_or_default(),
            target,
            outcome,
            status,
            ip,
        });
    }
    res
}

/// The method as a fixed label (audit, metrics): an extension method is `OTHER`.
fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// What a call acts on, for the audit: the path's parameters (`collection=users`), never a
/// session id (a credential of Lucid's users).
fn target_of(req: &actix_web::HttpRequest) -> String {
    let parts: Vec<String> = req
        .match_info()
        .iter()
        .filter(|(k, _)| *k != "session_id")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if parts.is_empty() {
        req.match_pattern().unwrap_or_default()
    } else {
        parts.join(",")
    }
}

/// The caller the guard let through.
pub fn caller_of(req: &actix_web::HttpRequest) -> Option<Caller> {
    req.extensions().get::<Caller>().cloned()
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such endpoint"))
}

/// Every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready));
    // `/metrics` (only while metrics are on), under the guard like the others.
    cfg.configure(metrics::routes);
    cfg.route("/api/v1/openapi.json", web::get().to(openapi::serve));
    cfg.service(
        web::scope(API)
            .configure(mongo::routes)
            .configure(redis_ops::routes)
            .configure(search::routes)
            .configure(volumes::routes)
            .configure(backup::routes)
            .configure(schedule::routes),
    );
}

/// Binds `addr` (the socket listens when this returns) and returns the server to spawn. The
/// token file's watcher and the audit writer start here, on the caller's arbiter.
pub fn serve(
    addr: SocketAddr,
    state: ApiState,
    shutdown_timeout: Duration,
) -> std::io::Result<Server> {
    let workers = state.workers.max(1);
    let body_limit = state.body_limit;
    actix_rt::spawn(state.tokens.clone().watch());
    actix_rt::spawn(
        state
            .audit
            .clone()
            .run(state.handles.mongo.clone(), state.registry.clone()),
    );
    let data = web::Data::new(state);
    let json = web::JsonConfig::default()
        .limit(body_limit)
        .error_handler(error::json_error);
    let path = web::PathConfig::default().error_handler(error::path_error);
    let query = web::QueryConfig::default().error_handler(error::query_error);
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(json.clone())
            .app_data(path.clone())
            .app_data(query.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            .wrap(from_fn(guard))
            // actix answers a known path with a wrong method by an empty 405: the error shape.
            .wrap(ErrorHandlers::new().handler(StatusCode::METHOD_NOT_ALLOWED, method_not_allowed))
            // Outermost, so refusals by the guard are counted too.
            .wrap(from_fn(metrics::track))
            .configure(routes)
            .default_service(web::to(not_found))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(shutdown_timeout.as_secs().max(1))
    .bind(addr)?
    .run())
}

fn method_not_allowed<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let (req, _) = res.into_parts();
    let e = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take this method (docs/http.md)",
    );
    let res = ServiceResponse::new(req, actix_web::ResponseError::error_response(&e));
    Ok(ErrorHandlerResponse::Response(res.map_into_right_body()))
}

/// Shared by the handlers: the actor handle, or 503 when that part does not run here.
pub fn need<'a, T>(handle: &'a Option<T>, what: &str) -> Result<&'a T, ApiError> {
    handle
        .as_ref()
        .ok_or_else(|| ApiError::unavailable(what, "disabled"))
}

/// Shared by the handlers that answer JSON with 200.
pub fn ok<T: Serialize>(value: &T) -> HttpResponse {
    HttpResponse::Ok().json(value)
}

/// The state as handlers take it.
pub type State = web::Data<ApiState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_and_the_openapi_document_need_a_read_token_unless_bound_to_loopback() {
        for path in ["/metrics", "/api/v1/openapi.json"] {
            assert_eq!(scope_of(&Method::GET, Some(path), true), None, "{path}");
            assert_eq!(scope_of(&Method::GET, Some(path), false), Some(Scope::Read));
        }
        for path in ["/health", "/ready"] {
            assert_eq!(scope_of(&Method::GET, Some(path), false), None, "{path}");
        }
        // An unknown path needs a token before it is a 404.
        assert_eq!(scope_of(&Method::GET, None, true), Some(Scope::Read));
    }

    #[test]
    fn verify_restore_and_a_job_run_escape_the_request_timeout_and_other_backup_calls_do_not() {
        for p in [
            "/backup/{id}/verify",
            "/backup/{id}/restore",
            "/schedule/{job}/run",
        ] {
            assert!(unbounded(&Method::POST, Some(&format!("{API}{p}"))), "{p}");
            assert!(!unbounded(&Method::GET, Some(&format!("{API}{p}"))), "{p}");
        }
        for p in ["/backup/create", "/mongodb/query", "/backup/status/{id}"] {
            assert!(!unbounded(&Method::POST, Some(&format!("{API}{p}"))), "{p}");
        }
        assert!(!unbounded(&Method::POST, None));
        assert_eq!(
            scope_of(
                &Method::POST,
                Some(&format!("{API}/schedule/{{job}}/run")),
                true
            ),
            Some(Scope::Admin)
        );
    }
}
