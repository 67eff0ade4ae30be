//! `/api/v1/database/backup…`: start a backup (`202` with its id; it runs on, and `status`
//! follows it), list them, verify one, restore one (`admin`). Through the backup actor, which
//! holds the one backup lock: a second run while one runs is `409 busy`.

use std::str::FromStr;

use actix_web::{HttpResponse, web};
use lucid_actors::backup::{
    BackupHandle, BackupId, BackupStatus, Entry, LatestRun, Level, ListBackups, RestoreBackup,
    RestoreStatus, RunStatus, StartBackup, StoreSelector, Targets, Trigger, VerifyBackup,
    outcome_of,
};
use lucid_actors::volume::VolumeName;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::OptionalJson;
use super::{ApiState, State, need, ok};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/backup/create", web::post().to(create))
        .route("/backup/status", web::get().to(status_last))
        .route("/backup/status/{id}", web::get().to(status))
        .route("/backup/restore/status", web::get().to(restore_status))
        .route("/backups", web::get().to(list))
        .route("/backup/{id}/verify", web::post().to(verify))
        .route("/backup/{id}/restore", web::post().to(restore));
}

fn handle(state: &ApiState) -> Result<&BackupHandle, ApiError> {
    need(&state.handles.backup, "the backup")
}

fn backup_id(text: &str) -> Result<BackupId, ApiError> {
    text.parse::<BackupId>()
        .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

fn selectors(stores: &[String]) -> Result<Vec<StoreSelector>, ApiError> {
    stores
        .iter()
        .map(|s| {
            StoreSelector::from_str(s)
                .map_err(|e| ApiError::bad_request("invalid_store", e.to_string()))
        })
        .collect()
}

/// Starts a backup of `stores` through the actor; answers `202` with the id. Shared with the
/// volumes' `POST …/volumes/{name}/backup`.
pub async fn start(state: &ApiState, stores: Vec<StoreSelector>) -> Result<HttpResponse, ApiError> {
    let id = handle(state)?
        .call(StartBackup {
            stores,
            trigger: Trigger::Api,
        })
        .await?;
    Ok(HttpResponse::Accepted().json(json!({
        "id": id,
        "status": format!("{}/backup/status/{id}", super::API),
    })))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// `mongodb`, `mongodb:users`, `redis`, `elasticsearch`, `volumes`, `volumes:NAME`, …;
    /// empty: every store that runs.
    #[serde(default)]
    pub stores: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/database/backup/create",
    operation_id = "backup_create",
    tag = "backup",
    request_body = CreateBody,
    responses((status = 202, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn create(state: State, body: OptionalJson<CreateBody>) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    start(&state, selectors(&b.stores)?).await
}

fn status_json(s: &RunStatus) -> Value {
    match s {
        RunStatus::Running {
            id,
            trigger,
            started,
            progress,
        } => json!({
            "id": id,
            "state": "running",
            "trigger": trigger.as_str(),
            "started": started.to_rfc3339(),
            "progress": progress,
        }),
        RunStatus::Finished(r) => json!({
            "id": r.id,
            "state": "finished",
            "trigger": r.trigger.as_str(),
            "started": r.started.to_rfc3339(),
            "ended": r.ended.to_rfc3339(),
            "outcome": r.outcome,
            "stores": r.stores,
            "encrypted": r.encrypted,
            "bytes_in": r.bytes_in,
            "bytes_stored": r.bytes_stored,
            "error": r.error.as_ref().map(|e| json!({"code": e.code()})),
            "listed": r.listed,
            // What the run's cleanup removed first (`lucid-db backup now` says so).
            "cleaned_up": {
                "partials": r.cleaned.partials,
                "incomplete": r.cleaned.incomplete,
                "uploads": r.cleaned.uploads,
            },
        }),
    }
}

async fn status_of(state: &ApiState, id: BackupId) -> Result<HttpResponse, ApiError> {
    let s = handle(state)?.call(BackupStatus { id }).await?;
    Ok(ok(&status_json(&s)))
}

/// The backup running in the daemon, else the latest that ran there (any trigger).
#[utoipa::path(
    get,
    path = "/api/v1/database/backup/status",
    operation_id = "backup_status_last",
    tag = "backup",
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn status_last(state: State) -> Result<HttpResponse, ApiError> {
    match handle(&state)?.call(LatestRun).await? {
        Some(id) => status_of(&state, id).await,
        None => Err(ApiError::not_found(
            "no backup has run in the daemon since it started",
        )),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/database/backup/status/{id}",
    operation_id = "backup_status",
    tag = "backup",
    params(("id" = String, Path)),
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn status(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = backup_id(&path)?;
    status_of(&state, id).await
}

fn entry_json(e: &Entry) -> Value {
    json!({
        "id": e.manifest.id,
        "outcome": outcome_of(&e.manifest.stores),
        "counts_as": e.effective_level(),
        "manifest": e.manifest,
        "verify": e.verify,
        "pins": e.pins.as_ref().map(|p| &p.pins),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/database/backups",
    operation_id = "backup_list",
    tag = "backup",
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn list(state: State) -> Result<HttpResponse, ApiError> {
    let entries = handle(&state)?.call(ListBackups).await?;
    Ok(ok(&json!({
        "backups": entries.iter().map(entry_json).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// `checksummed` (default), `decoded` or `drilled`.
    #[schema(value_type = Option<String>)]
    pub level: Option<Level>,
}

#[utoipa::path(
    post,
    path = "/api/v1/database/backup/{id}/verify",
    operation_id = "backup_verify",
    tag = "backup",
    params(("id" = String, Path)),
    request_body = VerifyBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn verify(
    state: State,
    path: web::Path<String>,
    body: OptionalJson<VerifyBody>,
) -> Result<HttpResponse, ApiError> {
    let id = backup_id(&path)?;
    let b = body.into_inner();
    let report = handle(&state)?
        .call(VerifyBackup {
            id,
            level: b.level.unwrap_or(Level::Checksummed),
            identity: None,
        })
        .await?;
    Ok(ok(&json!({ "passed": report.passed(), "report": report })))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// Empty: every store the backup holds complete.
    #[serde(default)]
    pub stores: Vec<String>,
    /// Replace targets that hold data.
    #[serde(default)]
    pub force: bool,
    /// Restore the one selected volume into this volume instead (as `--to-volume`).
    #[serde(default)]
    pub to_volume: Option<String>,
    /// Restore MongoDB collections into this database instead (as `--to-db`).
    #[serde(default)]
    pub to_db: Option<String>,
    /// Restore Redis keys into this database index instead (as `--to-redis-db`).
    #[serde(default)]
    pub to_redis_db: Option<u32>,
    /// Put this before every restored Elasticsearch index and alias name (as `--index-prefix`).
    #[serde(default)]
    pub index_prefix: Option<String>,
}

impl RestoreBody {
    /// The targets, each checked as the CLI checks its flag (400 naming the field).
    fn targets(&self) -> Result<Targets, ApiError> {
        let bad = |field: &str, e: String| {
            ApiError::bad_request("invalid_argument", format!("{field}: {e}"))
        };
        let to_volume = self
            .to_volume
            .as_deref()
            .map(|v| VolumeName::new(v).map_err(|e| bad("to_volume", e.to_string())))
            .transpose()?;
        if let Some(db) = &self.to_db {
            lucid_actors::mongo::check_database_name(db).map_err(|e| bad("to_db", e))?;
        }
        if let Some(p) = &self.index_prefix {
            lucid_actors::search::check_prefix(p)
                .map_err(|e| bad("index_prefix", e.to_string()))?;
        }
        Ok(Targets {
            to_volume,
            to_db: self.to_db.clone(),
            to_redis_db: self.to_redis_db,
            index_prefix: self.index_prefix.clone(),
        })
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/database/backup/{id}/restore",
    operation_id = "backup_restore",
    tag = "backup",
    params(("id" = String, Path)),
    request_body = RestoreBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["admin"]))
)]
async fn restore(
    state: State,
    path: web::Path<String>,
    body: OptionalJson<RestoreBody>,
) -> Result<HttpResponse, ApiError> {
    let id = backup_id(&path)?;
    let b = body.into_inner();
    let report = handle(&state)?
        .call(RestoreBackup {
            id,
            stores: selectors(&b.stores)?,
            identity: None,
            targets: b.targets()?,
            force: b.force,
        })
        .await?;
    Ok(ok(&report))
}

/// The restore under way in the daemon (`null` when none runs): artifacts planned and done, the
/// one being restored and its items read — what `lucid-db backup restore` draws while it waits.
#[utoipa::path(
    get,
    path = "/api/v1/database/backup/restore/status",
    operation_id = "backup_restore_status",
    tag = "backup",
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn restore_status(state: State) -> Result<HttpResponse, ApiError> {
    let progress = handle(&state)?.call(RestoreStatus).await?;
    Ok(ok(&json!({ "progress": progress })))
}
