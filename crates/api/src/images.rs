use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::server::{unexpected, ApiJson, ApiQuery, ApiUpload};
use crate::types::{ImageBuild, ImageEvent, ImageImport, ImageInfo};
use crate::{Action, ApiError, Control, Problem, Reply};

type Ctl = State<Arc<dyn Control>>;

#[utoipa::path(get, path = "/api/v1/images", tag = "images",
    responses((status = 200, body = [ImageInfo])), security(("bearer" = [])))]
pub async fn list_images(State(c): Ctl) -> Result<Json<Vec<ImageInfo>>, ApiError> {
    match c.dispatch(Action::ListImages).await? {
        Reply::Images(v) => Ok(Json(v)),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(delete, path = "/api/v1/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn remove_image(State(c): Ctl, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    c.dispatch(Action::RemoveImage(name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn ndjson(stream: crate::ByteStream) -> Response {
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response()
}

/// Build a built-in base image; progress as NDJSON [`ImageEvent`] lines.
#[utoipa::path(post, path = "/api/v1/images/build", tag = "images", request_body = ImageBuild,
    responses((status = 200, content_type = "application/x-ndjson", body = ImageEvent), (status = 400, body = Problem),
        (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn build_image(State(c): Ctl, ApiJson(req): ApiJson<ImageBuild>) -> Result<Response, ApiError> {
    Ok(ndjson(c.build_image(req).await?))
}

/// Import an image archive the client uploads as the body — an OCI image layout tar, a
/// `docker save` tarball or a root filesystem tarball, gzip or not — up to 16 GiB; the
/// daemon spools it in its home, imports it and removes the spool. Progress as NDJSON
/// [`ImageEvent`] lines, the first while the body arrives.
#[utoipa::path(post, path = "/api/v1/images/import", tag = "images", params(ImageImport),
    request_body(description = "The archive's bytes (up to 16 GiB).", content(
        (inline(crate::types::UploadBody) = "application/x-tar"), (inline(crate::types::UploadBody) = "application/gzip"), (inline(crate::types::UploadBody) = "application/octet-stream"))),
    responses((status = 200, content_type = "application/x-ndjson", body = ImageEvent), (status = 400, body = Problem),
        (status = 409, body = Problem), (status = 415, body = Problem)), security(("bearer" = [])))]
pub async fn import_image(
    State(c): Ctl,
    ApiQuery(req): ApiQuery<ImageImport>,
    ApiUpload(upload): ApiUpload,
) -> Result<Response, ApiError> {
    Ok(ndjson(c.import_image(req, upload).await?))
}
