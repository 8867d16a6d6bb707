//! `GET /api/v1/events`: the store's events as Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::server::ApiQuery;
use crate::types::{Event, EventsQuery};
use crate::ApiError;

type Ctl = State<std::sync::Arc<dyn crate::Control>>;

/// One message of the stream, as a Server-Sent Events client parses it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a shape for the document; the messages are written by axum's `Sse`
pub struct SseMessage {
    /// The event's id: resume after it with `since` or `Last-Event-ID`.
    id: String,
    /// The event's type: container, vm, circuit, host, ai or alert.
    event: String,
    /// The event (schema `Event`) as JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// Every lifecycle event of containers, VMs, circuits, hosts, AI modules and alerts, in the
/// order the store recorded them, as `text/event-stream`: each event's `id` is its place
/// in the stream (resume after it with `since` or the `Last-Event-ID` header), its `event`
/// its type, its `data` the event as JSON. A comment line every 15 s keeps idle
/// connections open.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, content_type = "text/event-stream", body = SseMessage,
        description = "one SSE message per event: `id: <id>`, `event: <type>`, `data: <Event as JSON>`"),
        (status = 400, body = crate::Problem)),
    security(("bearer" = [])))]
pub async fn events(
    State(c): Ctl,
    headers: HeaderMap,
    ApiQuery(mut q): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    q.kinds().map_err(ApiError::bad_request)?;
    if q.since.is_some_and(|s| s < 0) {
        return Err(ApiError::bad_request("since must be an event id (0 or more)"));
    }
    if q.since.is_none() {
        if let Some(last) = headers.get("last-event-id") {
            let last = last.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()).filter(|s| *s >= 0);
            q.since = Some(last.ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id"))?);
        }
    }
    let stream = c.events(q).await?.map(|e: Event| {
        Ok::<_, Infallible>(
            Sse::default().id(e.id.to_string()).event(e.kind.clone()).json_data(&e).expect("events serialise"),
        )
    });
    Ok(axum::response::Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}
