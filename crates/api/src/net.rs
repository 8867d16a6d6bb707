use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use crate::server::{unexpected, ApiJson, ApiQuery, ApiUpload};
use crate::types::{FindQuery, NetQuery, NetSend, NetSendStream, NetStatus, Provider, SendReport};
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

/// Send the body the client uploads (up to 16 GiB) to a peer as one DATA stream
/// (`/micro-os/data/1`), from this host or one of its VMs; the daemon spools it in its
/// home first (the stream's header carries the content's checksum, signed) and removes it
/// after. The peer's verdict comes back with the checksum both ends computed.
#[utoipa::path(post, path = "/api/v1/net/send/stream", tag = "net", params(NetSendStream),
    request_body(description = "The content to send (up to 16 GiB).", content(
        (inline(crate::types::UploadBody) = "application/octet-stream"), (inline(crate::types::UploadBody) = "application/x-tar"), (inline(crate::types::UploadBody) = "application/gzip"))),
    responses((status = 200, body = SendReport), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 415, body = Problem)),
    security(("bearer" = [])))]
pub async fn send_stream(
    State(c): State<Arc<dyn Control>>,
    ApiQuery(req): ApiQuery<NetSendStream>,
    ApiUpload(upload): ApiUpload,
) -> Result<Json<SendReport>, ApiError> {
    Ok(Json(c.send_stream(req, upload).await?))
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
