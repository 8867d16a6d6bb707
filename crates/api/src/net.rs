use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use crate::server::{unexpected, ApiJson, ApiQuery};
use crate::types::{FindQuery, NetQuery, NetSend, NetStatus, Provider, SendReport};
use crate::{Action, ApiError, Control, Problem, Reply};

/// A libp2p peer's state — the host's, or with `vm` a VM's: listen addresses, peers with
/// latency, message counts and how they were found, accepted messages by type, refused
/// ones by reason, NAT status and advertised resources.
#[utoipa::path(get, path = "/api/v1/monitor/network", tag = "net", params(NetQuery),
    responses((status = 200, body = NetStatus), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn status(
    State(c): State<Arc<dyn Control>>,
    ApiQuery(q): ApiQuery<NetQuery>,
) -> Result<Json<NetStatus>, ApiError> {
    match c.dispatch(Action::NetStatus { vm: q.vm }).await? {
        Reply::Net(n) => Ok(Json(*n)),
        other => Err(unexpected(other)),
    }
}

/// Send signed messages (or a DATA stream) from this host or one of its VMs to a peer;
/// the peer's verdict comes back with counts and timings.
#[utoipa::path(post, path = "/api/v1/net/send", tag = "net", request_body = NetSend,
    responses((status = 200, body = SendReport), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn send(
    State(c): State<Arc<dyn Control>>,
    ApiJson(req): ApiJson<NetSend>,
) -> Result<Json<SendReport>, ApiError> {
    match c.dispatch(Action::NetSend(req)).await? {
        Reply::Sent(r) => Ok(Json(*r)),
        other => Err(unexpected(other)),
    }
}

/// Who offers a resource (`container/<name>`, `vm/<name>`), found in the Kademlia DHT.
#[utoipa::path(get, path = "/api/v1/net/providers", tag = "net", params(FindQuery),
    responses((status = 200, body = [Provider]), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn providers(
    State(c): State<Arc<dyn Control>>,
    ApiQuery(q): ApiQuery<FindQuery>,
) -> Result<Json<Vec<Provider>>, ApiError> {
    match c.dispatch(Action::NetFind { key: q.key, vm: q.vm }).await? {
        Reply::Providers(p) => Ok(Json(p)),
        other => Err(unexpected(other)),
    }
}
