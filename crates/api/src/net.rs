use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use crate::server::{unexpected, ApiJson};
use crate::types::{Ack, NetSend, NetStatus};
use crate::{Action, ApiError, Control, Problem, Reply};

/// The host's libp2p node: listen addresses, peers with latency and message counts,
/// accepted messages by type, refused ones by reason.
#[utoipa::path(get, path = "/api/v1/monitor/network", tag = "net",
    responses((status = 200, body = NetStatus)), security(("bearer" = [])))]
pub async fn status(State(c): State<Arc<dyn Control>>) -> Result<Json<NetStatus>, ApiError> {
    match c.dispatch(Action::NetStatus).await? {
        Reply::Net(n) => Ok(Json(*n)),
        other => Err(unexpected(other)),
    }
}

/// Send a signed message from this host to a peer; the peer's verdict comes back.
#[utoipa::path(post, path = "/api/v1/net/send", tag = "net", request_body = NetSend,
    responses((status = 200, body = Ack), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn send(State(c): State<Arc<dyn Control>>, ApiJson(req): ApiJson<NetSend>) -> Result<Json<Ack>, ApiError> {
    match c.dispatch(Action::NetSend(req)).await? {
        Reply::Ack(a) => Ok(Json(a)),
        other => Err(unexpected(other)),
    }
}
