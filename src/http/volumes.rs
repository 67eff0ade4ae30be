//! `/api/v1/database/volumes…`: the volumes with their usage and health, one volume, a backup
//! of one volume alone (`volumes:NAME`, `202` with the backup id), and the operations of
//! `lucid-db volumes …` that change data (create, delete, resize, verify, snapshots and their
//! restore, cleanup, migrate), each through the volume actor's own message, as the CLI sends
//! it in process. A success answers exactly what the command prints with `--json`
//! (`crate::volumes_cmd` shapes the two answers that are not the actor's value); a failure
//! keeps the actor's error code (`VolumeError::code`), which the CLI maps to its exit code.
//!
//! Names are checked by the volume actor's [`VolumeName`] (no `/`, no `..`): `400
//! invalid_name`; snapshot names by the actor (`400 invalid`). A quota is parsed as the CLI
//! parses `--quota`, a migration target must be absolute: otherwise `400 invalid_argument`
//! naming the field. The long operations are not cut off by `http.request_timeout`
//! ([`super::unbounded`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use actix_web::{HttpResponse, web};
use lucid_actors::backup::StoreSelector;
use lucid_actors::config::ByteSize;
use lucid_actors::volume::{
    CleanupVolume, CreateVolume, DeleteSnapshot, DeleteVolume, InspectVolume, ListSnapshots,
    ListVolumes, MigrateVolume, ResizeVolume, RestoreSnapshot, TakeSnapshot, Verify,
    VerifySnapshot, VolumeHandle, VolumeName,
};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::OptionalJson;
use super::{State, need, ok};
use crate::volumes_cmd::{deleted_json, snapshot_deleted_json};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/volumes", web::get().to(list))
        .route("/volumes", web::post().to(create))
        .route("/volumes/{name}", web::get().to(get))
        .route("/volumes/{name}", web::delete().to(delete))
        .route("/volumes/{name}/backup", web::post().to(backup))
        .route("/volumes/{name}/quota", web::put().to(resize))
        .route("/volumes/{name}/verify", web::post().to(verify))
        .route("/volumes/{name}/snapshots", web::get().to(snapshots))
        .route("/volumes/{name}/snapshots", web::post().to(snapshot))
        .route(
            "/volumes/{name}/snapshots/{snapshot}/restore",
            web::post().to(restore_snapshot),
        )
        .route(
            "/volumes/{name}/snapshots/{snapshot}",
            web::delete().to(delete_snapshot),
        )
        .route("/volumes/{name}/cleanup", web::post().to(cleanup))
        .route("/volumes/{name}/migrate", web::post().to(migrate));
}

fn handle(state: &State) -> Result<&VolumeHandle, ApiError> {
    need(&state.handles.volumes, "the volumes")
}

fn name(text: &str) -> Result<VolumeName, ApiError> {
    VolumeName::new(text).map_err(ApiError::from)
}

/// A bad value of `field`, named (as `backup/{id}/restore`'s targets).
fn bad(field: &str, reason: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_argument", format!("{field}: {reason}"))
}

/// A quota as `--quota` takes it (`10G`, `512M`, …).
fn quota(text: &str) -> Result<ByteSize, ApiError> {
    ByteSize::parse(text).map_err(|e| bad("quota", e))
}

#[utoipa::path(
    get,
    path = "/api/v1/database/volumes",
    operation_id = "volumes_list",
    tag = "volumes",
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn list(state: State) -> Result<HttpResponse, ApiError> {
    let volumes = handle(&state)?.call(ListVolumes).await?;
    Ok(ok(&json!({ "volumes": volumes })))
}

#[utoipa::path(
    get,
    path = "/api/v1/database/volumes/{name}",
    operation_id = "volumes_get",
    tag = "volumes",
    params(("name" = String, Path)),
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn get(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = name(&path)?;
    let info = handle(&state)?.call(InspectVolume { name }).await?;
    Ok(ok(&info))
}

#[utoipa::path(
    post,
    path = "/api/v1/database/volumes/{name}/backup",
    operation_id = "volumes_backup",
    tag = "volumes",
    params(("name" = String, Path)),
    responses((status = 202, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn backup(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = name(&path)?;
    // Refuse an unknown volume here, with the volume's own error, not the backup's.
    handle(&state)?
        .call(InspectVolume { name: name.clone() })
        .await?;
    super::backup::start(&state, vec![StoreSelector::Volume(name)]).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub name: String,
    /// `10G`, `512M`, … (as `--quota`) [default: `volumes.default_quota`].
    #[serde(default)]
    pub quota: Option<String>,
    /// What it holds [default: `data`].
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `volumes create`: `201` with the volume.
#[utoipa::path(
    post,
    path = "/api/v1/database/volumes",
    operation_id = "volumes_create",
    tag = "volumes",
    request_body = CreateBody,
    responses((status = 201, description = "the volume, as `volumes create --json` prints it"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn create(state: State, body: web::Json<CreateBody>) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let msg = CreateVolume {
        name: name(&b.name)?,
        quota: b.quota.as_deref().map(quota).transpose()?,
        kind: b.kind,
        labels: b.labels,
    };
    let info = handle(&state)?.call(msg).await?;
    Ok(HttpResponse::Created().json(&info))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete a volume that holds files, with them.
    #[serde(default)]
    pub force: bool,
}

/// `volumes delete`: `{"deleted": NAME}`; a volume that holds files only with `force=true`
/// (else `409 not_empty`).
#[utoipa::path(
    delete,
    path = "/api/v1/database/volumes/{name}",
    operation_id = "volumes_delete",
    tag = "volumes",
    params(("name" = String, Path), DeleteQuery),
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["admin"]))
)]
async fn delete(
    state: State,
    path: web::Path<String>,
    query: web::Query<DeleteQuery>,
) -> Result<HttpResponse, ApiError> {
    let n = name(&path)?;
    handle(&state)?
        .call(DeleteVolume {
            name: n.clone(),
            force: query.force,
        })
        .await?;
    Ok(ok(&deleted_json(n.as_str())))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    /// `10G`, `512M`, … (as `volumes resize`).
    pub quota: String,
}

/// `volumes resize`: the volume with its new quota (never below its use: `409
/// quota_below_usage`).
#[utoipa::path(
    put,
    path = "/api/v1/database/volumes/{name}/quota",
    operation_id = "volumes_resize",
    tag = "volumes",
    params(("name" = String, Path)),
    request_body = QuotaBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn resize(
    state: State,
    path: web::Path<String>,
    body: web::Json<QuotaBody>,
) -> Result<HttpResponse, ApiError> {
    let msg = ResizeVolume {
        name: name(&path)?,
        quota: quota(&body.quota)?,
    };
    let info = handle(&state)?.call(msg).await?;
    Ok(ok(&info))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// Re-seal the manifest after an intended change.
    #[serde(default)]
    pub update: bool,
    /// Check this snapshot against the manifest sealed when it was taken (not with `update`).
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// `volumes verify`: the report, `200` whether or not it matched (the CLI exits 65 on a
/// mismatch: `added`, `missing` or `changed` not empty and not `updated`).
#[utoipa::path(
    post,
    path = "/api/v1/database/volumes/{name}/verify",
    operation_id = "volumes_verify",
    tag = "volumes",
    params(("name" = String, Path)),
    request_body = VerifyBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn verify(
    state: State,
    path: web::Path<String>,
    body: OptionalJson<VerifyBody>,
) -> Result<HttpResponse, ApiError> {
    let name = name(&path)?;
    let b = body.into_inner();
    let v = handle(&state)?;
    let report = match b.snapshot {
        Some(_) if b.update => return Err(bad("update", "cannot be used with snapshot")),
        Some(snapshot) => v.call(VerifySnapshot { name, snapshot }).await?,
        None => {
            v.call(Verify {
                name,
                update: b.update,
            })
            .await?
        }
    };
    Ok(ok(&report))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    /// The snapshot's name [default: the time, UTC, `YYYYMMDD-HHMMSS`].
    #[serde(default)]
    pub name: Option<String>,
    /// A note kept with the snapshot.
    #[serde(default)]
    pub label: Option<String>,
    /// Snapshot a live database volume (consistent file by file only: stop its server first).
    #[serde(default)]
    pub allow_live: bool,
}

/// `volumes snapshot`: `201` with the snapshot.
#[utoipa::path(
    post,
    path = "/api/v1/database/volumes/{name}/snapshots",
    operation_id = "volumes_snapshot",
    tag = "volumes",
    params(("name" = String, Path)),
    request_body = SnapshotBody,
    responses((status = 201, description = "the snapshot, as `volumes snapshot --json` prints it"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn snapshot(
    state: State,
    path: web::Path<String>,
    body: OptionalJson<SnapshotBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let msg = TakeSnapshot {
        name: name(&path)?,
        snapshot: b.name,
        label: b.label,
        allow_live: b.allow_live,
    };
    let info = handle(&state)?.call(msg).await?;
    Ok(HttpResponse::Created().json(&info))
}

/// `volumes snapshots`: the volume's snapshots, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/database/volumes/{name}/snapshots",
    operation_id = "volumes_snapshots",
    tag = "volumes",
    params(("name" = String, Path)),
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["read"]))
)]
async fn snapshots(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let list = handle(&state)?
        .call(ListSnapshots { name: name(&path)? })
        .await?;
    Ok(ok(&list))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// Replace data the volume holds (and a live database volume's: stop its server first).
    #[serde(default)]
    pub force: bool,
}

/// `volumes restore-snapshot`: the snapshot restored.
#[utoipa::path(
    post,
    path = "/api/v1/database/volumes/{name}/snapshots/{snapshot}/restore",
    operation_id = "volumes_restore_snapshot",
    tag = "volumes",
    params(("name" = String, Path), ("snapshot" = String, Path)),
    request_body = RestoreBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["admin"]))
)]
async fn restore_snapshot(
    state: State,
    path: web::Path<(String, String)>,
    body: OptionalJson<RestoreBody>,
) -> Result<HttpResponse, ApiError> {
    let (n, snapshot) = path.into_inner();
    let msg = RestoreSnapshot {
        name: name(&n)?,
        snapshot,
        force: body.into_inner().force,
    };
    let info = handle(&state)?.call(msg).await?;
    Ok(ok(&info))
}

/// `volumes delete-snapshot`: `{"volume", "deleted"}`.
#[utoipa::path(
    delete,
    path = "/api/v1/database/volumes/{name}/snapshots/{snapshot}",
    operation_id = "volumes_delete_snapshot",
    tag = "volumes",
    params(("name" = String, Path), ("snapshot" = String, Path)),
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["admin"]))
)]
async fn delete_snapshot(
    state: State,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (n, snapshot) = path.into_inner();
    let name = name(&n)?;
    handle(&state)?
        .call(DeleteSnapshot {
            name: name.clone(),
            snapshot: snapshot.clone(),
        })
        .await?;
    Ok(ok(&snapshot_deleted_json(name.as_str(), &snapshot)))
}

/// `volumes cleanup`: what it removed.
#[utoipa::path(
    post,
    path = "/api/v1/database/volumes/{name}/cleanup",
    operation_id = "volumes_cleanup",
    tag = "volumes",
    params(("name" = String, Path)),
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["write"]))
)]
async fn cleanup(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let report = handle(&state)?
        .call(CleanupVolume { name: name(&path)? })
        .await?;
    Ok(ok(&report))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateBody {
    /// The new directory: absolute, not existing yet, outside the data root and every volume.
    #[schema(value_type = String)]
    pub to: PathBuf,
}

/// `volumes migrate`: the volume at its new path.
#[utoipa::path(
    post,
    path = "/api/v1/database/volumes/{name}/migrate",
    operation_id = "volumes_migrate",
    tag = "volumes",
    params(("name" = String, Path)),
    request_body = MigrateBody,
    responses((status = 200, description = "success"), (status = "4XX", description = "the error shape", body = super::error::ErrorBody), (status = "5XX", description = "the error shape", body = super::error::ErrorBody)),
    security(("bearer" = ["admin"]))
)]
async fn migrate(
    state: State,
    path: web::Path<String>,
    body: web::Json<MigrateBody>,
) -> Result<HttpResponse, ApiError> {
    let name = name(&path)?;
    let to = body.into_inner().to;
    // The daemon's working directory means nothing to a caller: a relative path is refused
    // here, before the actor checks the rest (outside the data root, not existing yet).
    if !to.is_absolute() {
        return Err(bad("to", "must be an absolute path"));
    }
    let info = handle(&state)?.call(MigrateVolume { name, to }).await?;
    Ok(ok(&info))
}

#[cfg(test)]
mod tests {
    use actix_web::http::Method;
    use lucid_actors::volume::VolumeOp;

    use super::super::{API, unbounded};
    use super::*;

    /// The routes `http.request_timeout` leaves alone are exactly those whose message the
    /// actor's own handle waits on without a deadline.
    #[test]
    fn the_unbounded_routes_are_the_long_volume_operations() {
        let cases = [
            (Method::POST, "/volumes", CreateVolume::LONG),
            (Method::GET, "/volumes/{name}", InspectVolume::LONG),
            (Method::DELETE, "/volumes/{name}", DeleteVolume::LONG),
            (Method::PUT, "/volumes/{name}/quota", ResizeVolume::LONG),
            (Method::POST, "/volumes/{name}/verify", Verify::LONG),
            // The same route, with a snapshot.
            (Method::POST, "/volumes/{name}/verify", VerifySnapshot::LONG),
            (
                Method::POST,
                "/volumes/{name}/snapshots",
                TakeSnapshot::LONG,
            ),
            (
                Method::GET,
                "/volumes/{name}/snapshots",
                ListSnapshots::LONG,
            ),
            (
                Method::POST,
                "/volumes/{name}/snapshots/{snapshot}/restore",
                RestoreSnapshot::LONG,
            ),
            (
                Method::DELETE,
                "/volumes/{name}/snapshots/{snapshot}",
                DeleteSnapshot::LONG,
            ),
            (Method::POST, "/volumes/{name}/cleanup", CleanupVolume::LONG),
            (Method::POST, "/volumes/{name}/migrate", MigrateVolume::LONG),
        ];
        for (method, path, long) in cases {
            let pattern = format!("{API}{path}");
            assert_eq!(unbounded(&method, Some(&pattern)), long, "{method} {path}");
        }
        assert!(!unbounded(
            &Method::POST,
            Some("/api/v1/database/mongodb/query")
        ));
        assert!(!unbounded(&Method::POST, None));
    }
}
