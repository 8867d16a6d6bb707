//! The AI layer: modules enabled per reference-chain node, their configuration, training
//! and the model store.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use crate::server::{unexpected, ApiJson};
use crate::types::{AiConfigure, AiDisable, AiEnable, AiModelInfo, AiModuleStatus, AiTrain, AiTrainReport};
use crate::{Action, ApiError, Control, Problem, Reply};

type Ctl = State<Arc<dyn Control>>;

fn modules(reply: Reply) -> Result<Json<Vec<AiModuleStatus>>, ApiError> {
    match reply {
        Reply::AiModules(m) => Ok(Json(m)),
        other => Err(unexpected(other)),
    }
}

/// Every module as it is set, with its live models and what its nodes report.
#[utoipa::path(get, path = "/api/v1/ai", tag = "ai",
    responses((status = 200, body = [AiModuleStatus]), (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn list(State(c): Ctl) -> Result<Json<Vec<AiModuleStatus>>, ApiError> {
    modules(c.dispatch(Action::AiList).await?)
}

/// Enable a module for a node (or every node); with `all`, every module this build has.
#[utoipa::path(post, path = "/api/v1/ai/enable", tag = "ai", request_body = AiEnable,
    responses((status = 200, body = [AiModuleStatus]), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn enable(State(c): Ctl, ApiJson(req): ApiJson<AiEnable>) -> Result<Json<Vec<AiModuleStatus>>, ApiError> {
    modules(c.dispatch(Action::AiEnable(req)).await?)
}

/// Disable a module (or all); what was learnt stays in the model store.
#[utoipa::path(post, path = "/api/v1/ai/disable", tag = "ai", request_body = AiDisable,
    responses((status = 200, body = [AiModuleStatus]), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn disable(State(c): Ctl, ApiJson(req): ApiJson<AiDisable>) -> Result<Json<Vec<AiModuleStatus>>, ApiError> {
    modules(c.dispatch(Action::AiDisable(req)).await?)
}

/// Change a module's configuration, checked against its schema; all or nothing.
#[utoipa::path(post, path = "/api/v1/ai/config", tag = "ai", request_body = AiConfigure,
    responses((status = 200, body = [AiModuleStatus]), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn configure(
    State(c): Ctl,
    ApiJson(req): ApiJson<AiConfigure>,
) -> Result<Json<Vec<AiModuleStatus>>, ApiError> {
    modules(c.dispatch(Action::AiConfigure(req)).await?)
}

/// Retrain a module's models now on the samples collected; a new version goes live only
/// if it scores at least as well as the live one on held-back data.
#[utoipa::path(post, path = "/api/v1/ai/train", tag = "ai", request_body = AiTrain,
    responses((status = 200, body = [AiTrainReport]), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn train(State(c): Ctl, ApiJson(req): ApiJson<AiTrain>) -> Result<Json<Vec<AiTrainReport>>, ApiError> {
    match c.dispatch(Action::AiTrain(req)).await? {
        Reply::AiTrained(r) => Ok(Json(r)),
        other => Err(unexpected(other)),
    }
}

/// Every model version in the store, with its training data size, metrics and baseline.
#[utoipa::path(get, path = "/api/v1/ai/models", tag = "ai",
    responses((status = 200, body = [AiModelInfo]), (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn models(State(c): Ctl) -> Result<Json<Vec<AiModelInfo>>, ApiError> {
    match c.dispatch(Action::AiModels).await? {
        Reply::AiModels(m) => Ok(Json(m)),
        other => Err(unexpected(other)),
    }
}
