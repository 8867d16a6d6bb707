use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use micro_os_core::Container;

use crate::server::{unexpected, ApiJson, ApiQuery};
use crate::types::{
    ContainerCreate, CreateQuery, DeployRequest, EventInfo, LogsQuery, RemoveQuery, StopQuery, WaitQuery, WaitResponse,
};
use crate::{Action, ApiError, Control, Problem, Reply};

type Ctl = State<Arc<dyn Control>>;

async fn one(c: &Arc<dyn Control>, action: Action) -> Result<Json<Container>, ApiError> {
    match c.dispatch(action).await? {
        Reply::Container(x) => Ok(Json(*x)),
        other => Err(unexpected(other)),
    }
}

/// Create a container (stored, not started unless `start`).
#[utoipa::path(post, path = "/api/v1/containers", tag = "containers", request_body = ContainerCreate, params(CreateQuery),
    responses((status = 201, body = Container), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 413, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_container(
    State(c): Ctl,
    ApiQuery(q): ApiQuery<CreateQuery>,
    ApiJson(req): ApiJson<ContainerCreate>,
) -> Result<(StatusCode, Json<Container>), ApiError> {
    let action = Action::CreateContainer { req: Box::new(req), start: q.start, rm: q.rm };
    Ok((StatusCode::CREATED, one(&c, action).await?))
}

#[utoipa::path(get, path = "/api/v1/containers", tag = "containers",
    responses((status = 200, body = [Container])), security(("bearer" = [])))]
pub async fn list_containers(State(c): Ctl) -> Result<Json<Vec<Container>>, ApiError> {
    match c.dispatch(Action::ListContainers).await? {
        Reply::Containers(v) => Ok(Json(v)),
        other => Err(unexpected(other)),
    }
}

/// Create every container of a deploy file, or none if any is invalid.
#[utoipa::path(post, path = "/api/v1/containers/deploy", tag = "containers", request_body = DeployRequest,
    responses((status = 201, body = [Container]), (status = 400, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn deploy(
    State(c): Ctl,
    ApiJson(req): ApiJson<DeployRequest>,
) -> Result<(StatusCode, Json<Vec<Container>>), ApiError> {
    match c.dispatch(Action::Deploy(req)).await? {
        Reply::Containers(v) => Ok((StatusCode::CREATED, Json(v))),
        other => Err(unexpected(other)),
    }
}

/// A container by id or name.
#[utoipa::path(get, path = "/api/v1/containers/{id}", tag = "containers", params(("id" = String, Path, description = "id or name")),
    responses((status = 200, body = Container), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get_container(State(c): Ctl, Path(id): Path<String>) -> Result<Json<Container>, ApiError> {
    one(&c, Action::GetContainer(id)).await
}

#[utoipa::path(delete, path = "/api/v1/containers/{id}", tag = "containers",
    params(("id" = String, Path, description = "id or name"), RemoveQuery),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn remove_container(
    State(c): Ctl,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    c.dispatch(Action::RemoveContainer { id, force: q.force }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/containers/{id}/start", tag = "containers", params(("id" = String, Path)),
    responses((status = 200, body = Container), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn start_container(State(c): Ctl, Path(id): Path<String>) -> Result<Json<Container>, ApiError> {
    one(&c, Action::StartContainer(id)).await
}

/// SIGTERM, then SIGKILL after the timeout.
#[utoipa::path(post, path = "/api/v1/containers/{id}/stop", tag = "containers", params(("id" = String, Path), StopQuery),
    responses((status = 200, body = Container), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn stop_container(
    State(c): Ctl,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StopQuery>,
) -> Result<Json<Container>, ApiError> {
    one(&c, Action::StopContainer { id, timeout: q.timeout }).await
}

/// Freeze every process of the container (cgroup freezer).
#[utoipa::path(post, path = "/api/v1/containers/{id}/pause", tag = "containers", params(("id" = String, Path)),
    responses((status = 200, body = Container), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn pause_container(State(c): Ctl, Path(id): Path<String>) -> Result<Json<Container>, ApiError> {
    one(&c, Action::PauseContainer(id)).await
}

#[utoipa::path(post, path = "/api/v1/containers/{id}/resume", tag = "containers", params(("id" = String, Path)),
    responses((status = 200, body = Container), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn resume_container(State(c): Ctl, Path(id): Path<String>) -> Result<Json<Container>, ApiError> {
    one(&c, Action::ResumeContainer(id)).await
}

/// Wait until the container is no longer running; its exit code.
#[utoipa::path(post, path = "/api/v1/containers/{id}/wait", tag = "containers", params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = WaitResponse), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn wait_container(
    State(c): Ctl,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<Json<WaitResponse>, ApiError> {
    match c.dispatch(Action::WaitContainer { id, rm: q.rm }).await? {
        Reply::Exit(w) => Ok(Json(w)),
        other => Err(unexpected(other)),
    }
}

/// Run a command in a running container, with its environment (`docker exec` without a
/// terminal); answers once it ended, with what it printed.
#[utoipa::path(post, path = "/api/v1/containers/{id}/exec", tag = "containers", params(("id" = String, Path)),
    request_body = crate::types::ExecRequest,
    responses((status = 200, body = crate::types::ExecResult), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn exec_container(
    State(c): Ctl,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<crate::types::ExecRequest>,
) -> Result<Json<crate::types::ExecResult>, ApiError> {
    if req.command.is_empty() || req.command[0].is_empty() {
        return Err(ApiError::bad_request("give the command to run (command: [\"program\", \"arg\", ...])"));
    }
    if let Some(t) = req.timeout_s {
        if !(t.is_finite() && (0.001..=3600.0).contains(&t)) {
            return Err(ApiError::bad_request(format!("timeout_s {t} is out of range (0.001 to 3600 seconds)")));
        }
    }
    match c.dispatch(Action::ExecContainer { id, req }).await? {
        Reply::Exec(r) => Ok(Json(r)),
        other => Err(unexpected(other)),
    }
}

/// The settings handed to the workload.
#[utoipa::path(get, path = "/api/v1/containers/{id}/config", tag = "containers", params(("id" = String, Path)),
    responses((status = 200, body = BTreeMap<String, String>), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get_config(State(c): Ctl, Path(id): Path<String>) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    Ok(Json(one(&c, Action::GetContainer(id)).await?.0.spec.config))
}

/// Merge settings into the workload's config (applies at the next start).
#[utoipa::path(patch, path = "/api/v1/containers/{id}/config", tag = "containers", params(("id" = String, Path)),
    request_body = BTreeMap<String, String>,
    responses((status = 200, body = Container), (status = 400, body = Problem), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn set_config(
    State(c): Ctl,
    Path(id): Path<String>,
    ApiJson(set): ApiJson<BTreeMap<String, String>>,
) -> Result<Json<Container>, ApiError> {
    one(&c, Action::ConfigureContainer { id, set }).await
}

/// Log lines as text; with `follow`, new lines as they come.
#[utoipa::path(get, path = "/api/v1/containers/{id}/logs", tag = "containers", params(("id" = String, Path), LogsQuery),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn logs(
    State(c): Ctl,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let stream = c.logs(id, q).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], Body::from_stream(stream)).into_response())
}

/// The container's lifecycle events, oldest first (the last 100).
#[utoipa::path(get, path = "/api/v1/containers/{id}/events", tag = "containers", params(("id" = String, Path)),
    responses((status = 200, body = [EventInfo]), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn events(State(c): Ctl, Path(id): Path<String>) -> Result<Json<Vec<EventInfo>>, ApiError> {
    match c.dispatch(Action::ContainerEvents(id)).await? {
        Reply::Events(v) => Ok(Json(v)),
        other => Err(unexpected(other)),
    }
}
