//! `GET /metrics` (the Prometheus text of `lucid_actors::metrics`) and the middleware that
//! counts every HTTP request by route template, method and status. With `metrics.enabled =
//! false` the route is not there (404) and the middleware records nothing; `/health` and
//! `/ready` answer as ever.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use lucid_actors::metrics;

use super::{ApiState, method_name};

/// Adds `/metrics` when metrics are on.
pub fn routes(cfg: &mut web::ServiceConfig) {
    if metrics::enabled() {
        cfg.route("/metrics", web::get().to(serve));
    }
}

async fn serve(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(metrics::render(&state.registry))
}

/// Counts and times the request under its route's template (`/api/v1/…/{id}`, never the raw
/// path: a label per id would grow without bound), or `unmatched`.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !metrics::enabled() {
        return next.call(req).await;
    }
    let started = Instant::now();
    let route = req.match_pattern();
    let method = method_name(req.method());
    let res = next.call(req).await;
    let status = match &res {
        Ok(r) => r.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    metrics::http_request(
        route.as_deref().unwrap_or("unmatched"),
        method,
        status.as_u16(),
        started.elapsed(),
    );
    res
}
