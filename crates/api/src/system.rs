use axum::Json;

use crate::types::HealthResponse;

/// Liveness of the daemon. Needs no token.
#[utoipa::path(get, path = "/api/v1/health", tag = "system",
    responses((status = 200, description = "daemon is up", body = HealthResponse)))]
pub async fn health() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}
