//! The hosts of a fabric: `host list`, `host token`, `host join`, `host leave`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::server::{unexpected, ApiJson};
use crate::types::{HostInfo, HostJoin, HostToken};
use crate::{Action, ApiError, Control, Problem, Reply};

type Ctl = State<Arc<dyn Control>>;

/// Every host of this host's fabric: peer id, addresses, capacity, VMs, load and health.
#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts",
    responses((status = 200, body = [HostInfo])), security(("bearer" = [])))]
pub async fn list_hosts(State(c): Ctl) -> Result<Json<Vec<HostInfo>>, ApiError> {
    match c.dispatch(Action::ListHosts).await? {
        Reply::Hosts(h) => Ok(Json(h)),
        other => Err(unexpected(other)),
    }
}

/// The fabric's join token, and the addresses another host joins this one at.
#[utoipa::path(get, path = "/api/v1/hosts/token", tag = "hosts",
    responses((status = 200, body = HostToken)), security(("bearer" = [])))]
pub async fn token(State(c): Ctl) -> Result<Json<HostToken>, ApiError> {
    match c.dispatch(Action::HostToken).await? {
        Reply::HostToken(t) => Ok(Json(t)),
        other => Err(unexpected(other)),
    }
}

/// Join the fabric of the host at `addr` with its token; answers with the fabric's hosts.
#[utoipa::path(post, path = "/api/v1/hosts/join", tag = "hosts", request_body = HostJoin,
    responses((status = 200, body = [HostInfo]), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn join(State(c): Ctl, ApiJson(req): ApiJson<HostJoin>) -> Result<Json<Vec<HostInfo>>, ApiError> {
    match c.dispatch(Action::JoinHost(req)).await? {
        Reply::Hosts(h) => Ok(Json(h)),
        other => Err(unexpected(other)),
    }
}

/// Leave the fabric: its hosts are told, and this host stands alone with a new token.
#[utoipa::path(post, path = "/api/v1/hosts/leave", tag = "hosts",
    responses((status = 204), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn leave(State(c): Ctl) -> Result<StatusCode, ApiError> {
    match c.dispatch(Action::LeaveHost).await? {
        Reply::Done => Ok(StatusCode::NO_CONTENT),
        other => Err(unexpected(other)),
    }
}
