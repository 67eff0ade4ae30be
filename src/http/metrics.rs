//! `GET /metrics` (the Prometheus text of `lucid_actors::metrics`) and the middleware that
//! counts every HTTP request by route template, method and status. With `metrics.enabled =
//! false` it answers 404 and the middleware records nothing; `/health` and
//! `/ready` answer as ever.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use lucid_actors::metrics;

use super::error::ApiError;
use super::{ApiState, method_name};

/// `/metrics`, always routed so the guard's rule for it (no token on loopback) holds; with
/// metrics off it answers 404 in the one error shape.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(serve));
}

async fn serve(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    if !metrics::enabled() {
        return Err(ApiError::not_found(
            "metrics are off (metrics.enabled = false)",
        ));
    }
    Ok(HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(metrics::render(&state.registry)))
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
