//! The HTTP API. For now the two endpoints that need no auth: `/health` (liveness: the
//! process answers; per-backend detail) and `/ready` (200 only when every required backend is
//! up). actix-web's own signal handling is off: the daemon has one signal path.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, middleware, web};
use lucid_actors::{BackendStatus, HealthRegistry, Roles};
use serde::{Deserialize, Serialize};

use crate::http_metrics;

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

#[derive(Clone)]
pub struct ApiState {
    pub registry: HealthRegistry,
    /// The parts that run ([`lucid_actors::Handles::roles`]).
    pub parts: Roles,
    pub started: Instant,
}

async fn health(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(HealthReport::new(
        &state.registry,
        state.parts,
        state.started.elapsed(),
    ))
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

/// Binds `addr` (the socket listens when this returns) and returns the server to spawn.
pub fn serve(
    addr: SocketAddr,
    state: ApiState,
    shutdown_timeout: Duration,
) -> std::io::Result<Server> {
    let data = web::Data::new(state);
    Ok(HttpServer::new(move || {
        App::new()
            .wrap(middleware::from_fn(http_metrics::track))
            .app_data(data.clone())
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready))
            .configure(http_metrics::routes)
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(shutdown_timeout.as_secs().max(1))
    .bind(addr)?
    .run())
}
