use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use micro_os_core::Vm;

use crate::server::{unexpected, ApiJson, ApiQuery};
use crate::types::{RemoveQuery, VmCreate, VmDefinitions, VmStopQuery};
use crate::{Action, ApiError, Control, Problem, Reply};

type Ctl = State<Arc<dyn Control>>;

async fn one(c: &Arc<dyn Control>, action: Action) -> Result<Json<Vm>, ApiError> {
    match c.dispatch(action).await? {
        Reply::Vm(x) => Ok(Json(*x)),
        other => Err(unexpected(other)),
    }
}

/// Create a VM (stored with its address, not started).
#[utoipa::path(post, path = "/api/v1/vms", tag = "vms", request_body = VmCreate,
    responses((status = 201, body = Vm), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn create_vm(State(c): Ctl, ApiJson(req): ApiJson<VmCreate>) -> Result<(StatusCode, Json<Vm>), ApiError> {
    match c.dispatch(Action::CreateVms(vec![req])).await? {
        Reply::Vms(mut v) if v.len() == 1 => Ok((StatusCode::CREATED, Json(v.remove(0)))),
        other => Err(unexpected(other)),
    }
}

/// Create every VM of a definitions file, or none if any is invalid.
#[utoipa::path(post, path = "/api/v1/vms/batch", tag = "vms", request_body = VmDefinitions,
    responses((status = 201, body = [Vm]), (status = 400, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn create_vms(
    State(c): Ctl,
    ApiJson(req): ApiJson<VmDefinitions>,
) -> Result<(StatusCode, Json<Vec<Vm>>), ApiError> {
    match c.dispatch(Action::CreateVms(req.into_vec())).await? {
        Reply::Vms(v) => Ok((StatusCode::CREATED, Json(v))),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(get, path = "/api/v1/vms", tag = "vms", responses((status = 200, body = [Vm])), security(("bearer" = [])))]
pub async fn list_vms(State(c): Ctl) -> Result<Json<Vec<Vm>>, ApiError> {
    match c.dispatch(Action::ListVms).await? {
        Reply::Vms(v) => Ok(Json(v)),
        other => Err(unexpected(other)),
    }
}

/// A VM by id or name.
#[utoipa::path(get, path = "/api/v1/vms/{id}", tag = "vms", params(("id" = String, Path, description = "id or name")),
    responses((status = 200, body = Vm), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get_vm(State(c): Ctl, Path(id): Path<String>) -> Result<Json<Vm>, ApiError> {
    one(&c, Action::GetVm(id)).await
}

#[utoipa::path(delete, path = "/api/v1/vms/{id}", tag = "vms", params(("id" = String, Path), RemoveQuery),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn remove_vm(
    State(c): Ctl,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    c.dispatch(Action::RemoveVm { id, force: q.force }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start a VM; returns once its agent reports ready (or after 15 s; 90 s for qemu guests).
#[utoipa::path(post, path = "/api/v1/vms/{id}/start", tag = "vms", params(("id" = String, Path)),
    responses((status = 200, body = Vm), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn start_vm(State(c): Ctl, Path(id): Path<String>) -> Result<Json<Vm>, ApiError> {
    one(&c, Action::StartVm(id)).await
}

/// Ask the agent to shut the VM down (kill after the timeout), or kill at once with `force`.
#[utoipa::path(post, path = "/api/v1/vms/{id}/stop", tag = "vms", params(("id" = String, Path), VmStopQuery),
    responses((status = 200, body = Vm), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn stop_vm(
    State(c): Ctl,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<VmStopQuery>,
) -> Result<Json<Vm>, ApiError> {
    one(&c, Action::StopVm { id, force: q.force, timeout: q.timeout }).await
}

/// Freeze every process of the VM, containers placed on it included.
#[utoipa::path(post, path = "/api/v1/vms/{id}/pause", tag = "vms", params(("id" = String, Path)),
    responses((status = 200, body = Vm), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn pause_vm(State(c): Ctl, Path(id): Path<String>) -> Result<Json<Vm>, ApiError> {
    one(&c, Action::PauseVm(id)).await
}

#[utoipa::path(post, path = "/api/v1/vms/{id}/resume", tag = "vms", params(("id" = String, Path)),
    responses((status = 200, body = Vm), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn resume_vm(State(c): Ctl, Path(id): Path<String>) -> Result<Json<Vm>, ApiError> {
    one(&c, Action::ResumeVm(id)).await
}
