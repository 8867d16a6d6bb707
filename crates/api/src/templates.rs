use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use micro_os_core::Template;

use crate::{Action, ApiError, Control, Reply};

#[utoipa::path(get, path = "/api/v1/templates", tag = "templates",
    responses((status = 200, body = [Template])), security(("bearer" = [])))]
pub async fn list_templates(State(c): State<Arc<dyn Control>>) -> Result<Json<Vec<Template>>, ApiError> {
    match c.dispatch(Action::ListTemplates).await? {
        Reply::Templates(t) => Ok(Json(t)),
        other => Err(crate::server::unexpected(other)),
    }
}

#[utoipa::path(get, path = "/api/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path)),
    responses((status = 200, body = Template), (status = 404, body = crate::Problem)), security(("bearer" = [])))]
pub async fn get_template(
    State(c): State<Arc<dyn Control>>,
    Path(name): Path<String>,
) -> Result<Json<Template>, ApiError> {
    match c.dispatch(Action::GetTemplate(name)).await? {
        Reply::Template(t) => Ok(Json(*t)),
        other => Err(crate::server::unexpected(other)),
    }
}
