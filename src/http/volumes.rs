//! `/api/v1/database/volumes…`: the volumes with their usage and health, one volume, and a
//! backup of one volume alone (`volumes:NAME`, `202` with the backup id). Names are checked by
//! the volume actor's [`VolumeName`] (no `/`, no `..`): `400 invalid_name`.

use actix_web::{HttpResponse, web};
use lucid_actors::backup::StoreSelector;
use lucid_actors::volume::{InspectVolume, ListVolumes, VolumeHandle, VolumeName};
use serde_json::json;

use super::error::ApiError;
use super::{State, need, ok};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/volumes", web::get().to(list))
        .route("/volumes/{name}", web::get().to(get))
        .route("/volumes/{name}/backup", web::post().to(backup));
}

fn handle(state: &State) -> Result<&VolumeHandle, ApiError> {
    need(&state.handles.volumes, "the volumes")
}

fn name(text: &str) -> Result<VolumeName, ApiError> {
    VolumeName::new(text).map_err(ApiError::from)
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
