//! `/api/v1/database/schedule/{job}/run` (`admin`): run one of the scheduler's jobs now, in the
//! daemon, and answer its run record — what `lucid-db schedule run JOB --json` prints. The run
//! is recorded in the job's history like any other (trigger `manual`). A job whose outcome is
//! a failure is still a `200`: the record says how it ended; the request failed only when the
//! job did not run (`409 busy` while its previous run goes on).
//!
//! A job (a backup) may run longer than `http.request_timeout`: this route is exempt from it
//! (docs/http.md), so the answer is the job's outcome, never a timeout while it goes on.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use lucid_actors::scheduler::{JobName, SchedulerError};

use super::error::ApiError;
use super::{State, need, ok};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/schedule/{job}/run", web::post().to(run));
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        match &e {
            SchedulerError::Busy { .. } => {
                ApiError::new(StatusCode::CONFLICT, "busy", e.to_string())
            }
            SchedulerError::NotDelivered => ApiError::unavailable("the scheduler", e.code()),
            // Another process holds the scheduler lock (cannot be while the daemon runs its
            // scheduler), or the state directory failed: not the caller's.
            _ => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code(),
                format!("the scheduler cannot run jobs ({})", e.code()),
            ),
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/database/schedule/{job}/run",
    operation_id = "schedule_run",
    tag = "schedule",
    params(("job" = String, Path, description = "backup, verify, retention, lifecycle, volume_usage, volume_maintenance, health_summary")),
    responses((status = 200, description = "the job's run record (its outcome may be a failure)"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["admin"]))
)]
pub(super) async fn run(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let job: JobName = path
        .parse()
        .map_err(|e: lucid_actors::scheduler::UnknownJob| {
            ApiError::bad_request("invalid_job", e.to_string())
        })?;
    let record = need(&state.handles.scheduler, "the scheduler")?
        .run(job)
        .await?;
    Ok(ok(&record))
}
