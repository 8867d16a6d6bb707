use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::server::{unexpected, ApiQuery};
use crate::types::{
    HealthQuery, HealthReport, HistoryQuery, PerformanceQuery, PerformanceReport, ResourcesQuery, Sample,
};
use crate::{Action, ApiError, Control, Problem, Reply};

async fn samples(c: &Arc<dyn Control>, action: Action) -> Result<Vec<Sample>, ApiError> {
    match c.dispatch(action).await? {
        Reply::Samples(s) => Ok(s),
        other => Err(unexpected(other)),
    }
}

/// The latest sample of each running container and VM (and the host with `all`): CPU,
/// memory, block I/O, pids, network, restarts, health checks.
#[utoipa::path(get, path = "/api/v1/monitor/resources", tag = "monitor", params(ResourcesQuery),
    responses((status = 200, body = [Sample]), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn resources(
    State(c): State<Arc<dyn Control>>,
    ApiQuery(q): ApiQuery<ResourcesQuery>,
) -> Result<Json<Vec<Sample>>, ApiError> {
    samples(&c, Action::Resources(q)).await.map(Json)
}

/// Stored samples in a time range, oldest first (one-minute averages where raw samples
/// are no longer kept).
#[utoipa::path(get, path = "/api/v1/monitor/history", tag = "monitor", params(HistoryQuery),
    responses((status = 200, body = [Sample]), (status = 400, body = Problem)), security(("bearer" = [])))]
pub async fn history(
    State(c): State<Arc<dyn Control>>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<Sample>>, ApiError> {
    samples(&c, Action::History(q)).await.map(Json)
}

/// The samples of a time range as CSV (with a header) or JSON.
#[utoipa::path(get, path = "/api/v1/monitor/export", tag = "monitor", params(HistoryQuery),
    responses((status = 200, description = "text/csv or application/json"), (status = 400, body = Problem)),
    security(("bearer" = [])))]
pub async fn export(
    State(c): State<Arc<dyn Control>>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let format = q.format.clone().unwrap_or_else(|| "csv".into());
    if !crate::schema::EXPORT_FORMATS.contains(&format.as_str()) {
        return Err(ApiError::bad_request(format!("format {format:?} is unknown (use csv or json)")));
    }
    match c.dispatch(Action::Export(q)).await? {
        Reply::Samples(rows) => Ok(Json(rows).into_response()),
        Reply::Text(csv) => Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response()),
        other => Err(unexpected(other)),
    }
}

/// Components (healthy, degraded or critical, with a reason) and open alerts.
#[utoipa::path(get, path = "/api/v1/monitor/health", tag = "monitor", params(HealthQuery),
    responses((status = 200, body = HealthReport), (status = 400, body = Problem)), security(("bearer" = [])))]
pub async fn health(
    State(c): State<Arc<dyn Control>>,
    ApiQuery(q): ApiQuery<HealthQuery>,
) -> Result<Json<HealthReport>, ApiError> {
    match c.dispatch(Action::Health(q)).await? {
        Reply::Health(h) => Ok(Json(*h)),
        other => Err(unexpected(other)),
    }
}

/// A container's CPU, memory, network, I/O and health checks over a window.
#[utoipa::path(get, path = "/api/v1/monitor/performance", tag = "monitor", params(PerformanceQuery),
    responses((status = 200, body = PerformanceReport), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn performance(
    State(c): State<Arc<dyn Control>>,
    ApiQuery(q): ApiQuery<PerformanceQuery>,
) -> Result<Json<PerformanceReport>, ApiError> {
    match c.dispatch(Action::Performance(q)).await? {
        Reply::Performance(p) => Ok(Json(*p)),
        other => Err(unexpected(other)),
    }
}

/// Prometheus text exposition of the latest samples, the P2P counters and open alerts.
#[utoipa::path(get, path = "/api/v1/metrics", tag = "monitor",
    responses((status = 200, description = "Prometheus text format")), security(("bearer" = [])))]
pub async fn metrics(State(c): State<Arc<dyn Control>>) -> Result<Response, ApiError> {
    match c.dispatch(Action::Metrics).await? {
        Reply::Text(t) => Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], t).into_response()),
        other => Err(unexpected(other)),
    }
}

/// The daemon's own log as text lines: time, level, component, target, message.
#[utoipa::path(get, path = "/api/v1/logs", tag = "monitor", params(crate::types::DaemonLogsQuery),
    responses((status = 200, description = "text lines"), (status = 400, body = Problem)), security(("bearer" = [])))]
pub async fn daemon_logs(
    State(c): State<Arc<dyn Control>>,
    ApiQuery(q): ApiQuery<crate::types::DaemonLogsQuery>,
) -> Result<Response, ApiError> {
    let stream = c.daemon_logs(q).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], axum::body::Body::from_stream(stream)).into_response())
}
