//! The reference chain's nodes, for people: `chain status`, `chain send`, `chain wallet`.
//! The daemon asks the node in the container over its Bitcoin Core-style JSON-RPC.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;

use crate::server::{unexpected, ApiJson};
use crate::types::{ChainSend, ChainSent, ChainStatus, ChainWallet};
use crate::{Action, ApiError, Control, Problem, Reply};

type Ctl = State<Arc<dyn Control>>;

/// A node's height, headers, tip, peers, mempool, hash rate and sync progress.
#[utoipa::path(get, path = "/api/v1/chain/{container}", tag = "chain",
    params(("container" = String, Path, description = "the node's container, id or name")),
    responses((status = 200, body = ChainStatus), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn status(State(c): Ctl, Path(container): Path<String>) -> Result<Json<ChainStatus>, ApiError> {
    match c.dispatch(Action::ChainStatus(container)).await? {
        Reply::ChainStatus(s) => Ok(Json(*s)),
        other => Err(unexpected(other)),
    }
}

/// Send coins from the node's wallet to an address; answers once the node accepted the
/// transaction into its mempool.
#[utoipa::path(post, path = "/api/v1/chain/{container}/send", tag = "chain",
    params(("container" = String, Path, description = "the node's container, id or name")), request_body = ChainSend,
    responses((status = 200, body = ChainSent), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn send(
    State(c): Ctl,
    Path(container): Path<String>,
    ApiJson(req): ApiJson<ChainSend>,
) -> Result<Json<ChainSent>, ApiError> {
    match c.dispatch(Action::ChainSend { container, req }).await? {
        Reply::ChainSent(s) => Ok(Json(s)),
        other => Err(unexpected(other)),
    }
}

/// The node wallet's balance and a new address to receive at.
#[utoipa::path(get, path = "/api/v1/chain/{container}/wallet", tag = "chain",
    params(("container" = String, Path, description = "the node's container, id or name")),
    responses((status = 200, body = ChainWallet), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 503, body = Problem)), security(("bearer" = [])))]
pub async fn wallet(State(c): Ctl, Path(container): Path<String>) -> Result<Json<ChainWallet>, ApiError> {
    match c.dispatch(Action::ChainWallet(container)).await? {
        Reply::ChainWallet(w) => Ok(Json(w)),
        other => Err(unexpected(other)),
    }
}
