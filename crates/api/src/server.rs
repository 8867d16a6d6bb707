use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{
    ai, chain, circuits, containers, events, hosts, images, monitor, net, system, templates, vms, ApiError, Control,
    ErrorKind, Reply,
};

/// Largest request body accepted, in bytes (JSON bodies).
pub const BODY_LIMIT: usize = 1 << 20;

/// Largest upload accepted (an image archive, a file sent as a DATA stream): 16 GiB. An
/// upload is spooled to the daemon's home as it arrives, never held in memory.
pub const UPLOAD_LIMIT: u64 = 16 << 30;

/// The operations whose body is an upload, not JSON: they take [`UPLOAD_LIMIT`].
pub const UPLOAD_PATHS: &[&str] = &["/api/v1/images/import", "/api/v1/net/send/stream"];

/// The content types an upload may declare (none is taken as `application/octet-stream`).
pub const UPLOAD_TYPES: &[&str] = &["application/x-tar", "application/gzip", "application/octet-stream"];

/// Upload extractor: the body as a stream of bytes cut off past [`UPLOAD_LIMIT`]. A body
/// declared as anything but bytes — JSON naming a path, say — is refused (415): the
/// daemon reads what the client sends, never a file the client names.
pub struct ApiUpload(pub crate::action::Upload);

impl<S: Send + Sync> FromRequest<S> for ApiUpload {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        use futures_util::StreamExt;
        let kind = req.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("?").to_string());
        if let Some(kind) = kind {
            let bare = kind.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if !UPLOAD_TYPES.contains(&bare.as_str()) && bare != "application/x-gzip" {
                return Err(ApiError::new(
                    ErrorKind::UnsupportedMediaType,
                    format!(
                        "the body is the content itself ({}), not {kind}: the daemon reads no path a client names",
                        UPLOAD_TYPES.join(", ")
                    ),
                ));
            }
        }
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let mut seen = 0u64;
        let body = req.into_body().into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            seen += chunk.len() as u64;
            if seen > UPLOAD_LIMIT {
                return Err(std::io::Error::other(format!(
                    "the upload is larger than the limit of {UPLOAD_LIMIT} bytes"
                )));
            }
            Ok(chunk)
        });
        Ok(ApiUpload(crate::action::Upload { body: Box::pin(body), declared }))
    }
}

pub struct ServerConfig {
    /// The bearer token every call but `/api/v1/health` must carry.
    pub token: String,
    /// Networks (address, prefix length) whose clients are refused outright: the VM
    /// subnet, unless VMs are allowed to reach the API. Needs the router served with
    /// `ConnectInfo<SocketAddr>`.
    pub deny: Vec<(std::net::Ipv4Addr, u8)>,
    /// Serves requests that belong to another host of the fabric there (after auth).
    pub forward: Option<Arc<dyn Forwarder>>,
    /// This host's size: the document states it as the largest VM it takes.
    pub host: Option<HostLimits>,
}

/// What one VM may have at most on this host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostLimits {
    pub memory_mib: u64,
    pub cpus: f64,
}

/// The header that names the host a request is for (a peer id or a unique prefix of one).
pub const HOST_HEADER: &str = "micro-os-host";
/// The header a forwarded request carries, so that it is not forwarded again.
pub const FORWARDED_HEADER: &str = "micro-os-forwarded";

/// Serves a request on another host of the fabric when it belongs there: one named in
/// [`HOST_HEADER`], or about an object another host holds.
pub trait Forwarder: Send + Sync + 'static {
    /// `Ok` with the other host's answer; `Err` gives the request back to be served here.
    fn forward(&self, req: Request) -> crate::action::BoxFuture<'_, Result<Response, Request>>;
}

async fn forward(State(f): State<Option<Arc<dyn Forwarder>>>, req: Request, next: Next) -> Response {
    let Some(f) = f else { return next.run(req).await };
    match f.forward(req).await {
        Ok(answer) => answer,
        Err(req) => next.run(req).await,
    }
}

/// JSON body extractor whose rejections are problem+json. A number with no fraction is
/// an integer wherever one is expected (`256.0` as `256`), as JSON Schema has it: the
/// document and the server agree on what an integer is.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(mut v) = axum::Json::<serde_json::Value>::from_request(req, state).await?;
        integral_floats_as_integers(&mut v);
        serde_path_to_error::deserialize(v).map(ApiJson).map_err(|e| {
            ApiError::bad_request(format!(
                "request body is not valid: Failed to deserialize the JSON body into the target type: {e}"
            ))
        })
    }
}

fn integral_floats_as_integers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // exactly representable: below 2^53
            if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                *v = if f < 0.0 { (f as i64).into() } else { (f as u64).into() };
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(integral_floats_as_integers),
        serde_json::Value::Object(o) => o.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// Query extractor whose rejections are problem+json.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

pub fn unexpected(r: Reply) -> ApiError {
    ApiError::internal(format!("daemon gave an unexpected reply: {r:?}"))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "micro-os", description = "Run VMs, OCI containers and consensus circuits for blockchain nodes."),
    modifiers(&BearerAuth),
    // the event stream's messages carry an Event as JSON in their data: named here, since
    // no path refers to it
    components(schemas(crate::types::Event)),
    tags((name = "vms"), (name = "net"), (name = "monitor"), (name = "containers"), (name = "images"), (name = "templates"), (name = "circuits"), (name = "chain"), (name = "hosts"), (name = "ai"), (name = "events"), (name = "system"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The served routes and the OpenAPI document generated from the same handlers.
pub fn api_parts() -> (Router<Arc<dyn Control>>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::health))
        .routes(routes!(containers::create_container, containers::list_containers))
        .routes(routes!(containers::deploy))
        .routes(routes!(containers::get_container, containers::remove_container))
        .routes(routes!(containers::start_container))
        .routes(routes!(containers::stop_container))
        .routes(routes!(containers::pause_container))
        .routes(routes!(containers::resume_container))
        .routes(routes!(containers::wait_container))
        .routes(routes!(containers::get_config, containers::set_config))
        .routes(routes!(containers::logs))
        .routes(routes!(containers::events))
        .routes(routes!(containers::exec_container))
        .routes(routes!(vms::create_vm, vms::list_vms))
        .routes(routes!(vms::create_vms))
        .routes(routes!(vms::get_vm, vms::remove_vm))
        .routes(routes!(vms::start_vm))
        .routes(routes!(vms::stop_vm))
        .routes(routes!(vms::pause_vm))
        .routes(routes!(vms::resume_vm))
        .routes(routes!(net::status))
        .routes(routes!(net::send))
        .routes(routes!(net::send_stream))
        .routes(routes!(net::providers))
        .routes(routes!(monitor::resources))
        .routes(routes!(monitor::history))
        .routes(routes!(monitor::export))
        .routes(routes!(monitor::health))
        .routes(routes!(monitor::performance))
        .routes(routes!(monitor::metrics))
        .routes(routes!(monitor::daemon_logs))
        .routes(routes!(images::list_images))
        .routes(routes!(images::remove_image))
        .routes(routes!(images::build_image))
        .routes(routes!(images::import_image))
        .routes(routes!(templates::list_templates))
        .routes(routes!(templates::get_template))
        .routes(routes!(circuits::create_circuit, circuits::list_circuits))
        .routes(routes!(circuits::get_circuit, circuits::remove_circuit))
        .routes(routes!(circuits::add_member))
        .routes(routes!(circuits::remove_member))
        .routes(routes!(circuits::transfer_leader))
        .routes(routes!(circuits::read_state))
        .routes(routes!(circuits::read_key, circuits::write_key, circuits::delete_key))
        .routes(routes!(chain::status))
        .routes(routes!(chain::send))
        .routes(routes!(chain::wallet))
        .routes(routes!(hosts::list_hosts))
        .routes(routes!(hosts::token))
        .routes(routes!(hosts::join))
        .routes(routes!(hosts::leave))
        .routes(routes!(ai::list))
        .routes(routes!(ai::enable))
        .routes(routes!(ai::disable))
        .routes(routes!(ai::configure))
        .routes(routes!(ai::train))
        .routes(routes!(ai::models))
        .routes(routes!(events::events))
        .split_for_parts();
    // OpenAPI has no catch-all segment: axum serves `{*key}`, the document says `{key}`
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths.into_iter().map(|(path, item)| (path.replace("{*", "{"), item)).collect();
    document_problems(&mut doc);
    (routes, doc)
}

/// Says in the document what the layers answer for every operation, which the handlers'
/// annotations do not: errors are `application/problem+json`; every operation but health
/// may answer 401 (the auth layer), 400 (a path, query or body the extractors refuse) and
/// 404 (an object it names is not there); one with a body 413 (the body limit).
fn document_problems(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let problem = |why: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(why)
                .content(
                    "application/problem+json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            for (status, resp) in op.responses.responses.iter_mut() {
                if let (RefOr::T(r), true) = (resp, status.starts_with('4') || status.starts_with('5')) {
                    if let Some(c) = r.content.shift_remove("application/json") {
                        r.content.insert("application/problem+json".to_string(), c);
                    }
                }
            }
            if path == "/api/v1/health" {
                continue;
            }
            let mut add = vec![
                ("400", "the request is not valid: the problem's detail names the input"),
                ("401", "no token, or not this daemon's (Authorization: Bearer <token from the home>)"),
            ];
            if UPLOAD_PATHS.contains(&path.as_str()) {
                add.push(("413", "the upload is larger than the limit (16 GiB)"));
                add.push((
                    "415",
                    "the body is not bytes (application/x-tar, application/gzip, application/octet-stream)",
                ));
            } else if op.request_body.is_some() {
                add.push(("413", "the body is larger than the limit (1 MiB)"));
            }
            // a path names an object; a body may name one too (a VM, a file, a node)
            add.push(("404", "no such object"));
            if path.starts_with("/api/v1/ai/") {
                add.push(("409", "the module is not enabled for that node (ai enable first)"));
                add.push(("501", "a module of the spec this build does not have yet"));
            }
            for (status, why) in add {
                op.responses.responses.entry(status.to_string()).or_insert_with(|| problem(why));
            }
        }
    }
}

/// The document as served: utoipa's, plus the rules that tie fields of a body together
/// ([`crate::schema::cross_field_rules`]), which utoipa's types cannot carry, and what
/// only the running daemon knows (its host's size).
pub fn served_document(doc: &utoipa::openapi::OpenApi, host: Option<HostLimits>) -> serde_json::Value {
    let mut v = serde_json::to_value(doc).expect("the document serialises");
    if let Some(h) = host {
        let vm = &mut v["components"]["schemas"]["VmCreate"]["properties"];
        vm["memory"]["maximum"] = h.memory_mib.into();
        vm["cpu"]["maximum"] = h.cpus.into();
    }
    let serde_json::Value::Object(rules) = crate::schema::cross_field_rules() else { unreachable!() };
    for (name, rule) in rules {
        let schema = &mut v["components"]["schemas"][&name];
        assert!(schema.is_object(), "cross-field rule for a schema the document lacks: {name}");
        merge(schema, rule);
    }
    // a single create takes no `depends_on`: that orders the containers of a deploy file
    let body = &mut v["paths"]["/api/v1/containers"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert!(body.is_object(), "the document lacks POST /api/v1/containers's body");
    *body = serde_json::json!({"allOf": [body.take(), {"properties": {"depends_on": {"maxItems": 0}}}]});
    // utoipa drops `required` from a parameter whose schema is a function's
    for path in ["/api/v1/monitor/history", "/api/v1/monitor/export"] {
        for p in v["paths"][path]["get"]["parameters"].as_array_mut().into_iter().flatten() {
            if p["name"] == "from" {
                p["required"] = true.into();
            }
        }
    }
    v
}

/// `patch` merged into `into`: objects key by key, anything else replaced.
fn merge(into: &mut serde_json::Value, patch: serde_json::Value) {
    match (into, patch) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub fn router(control: Arc<dyn Control>, cfg: ServerConfig) -> Router {
    let (routes, doc) = api_parts();
    let doc = Arc::new(served_document(&doc, cfg.host));
    let token: Arc<str> = cfg.token.into();
    routes
        .route("/api/v1/openapi.json", axum::routing::get(move || async move { Json(doc.as_ref().clone()) }))
        // where Prometheus looks by default; the same as /api/v1/metrics, token and all
        .route("/metrics", axum::routing::get(monitor::metrics))
        .fallback(|req: Request| async move {
            ApiError::not_found(format!(
                "no such endpoint: {} {} (see /api/v1/openapi.json)",
                req.method(),
                req.uri().path()
            ))
        })
        .layer(middleware::from_fn_with_state(cfg.forward, forward))
        .layer(middleware::from_fn_with_state(token, auth))
        .layer(middleware::from_fn_with_state(Arc::new(cfg.deny), refuse_networks))
        .layer(middleware::from_fn(refuse_declared_oversize))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(control)
}

fn within(ip: std::net::Ipv4Addr, (net, prefix): (std::net::Ipv4Addr, u8)) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    u32::from(ip) & mask == u32::from(net) & mask
}

async fn refuse_networks(State(deny): State<Arc<Vec<(std::net::Ipv4Addr, u8)>>>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    if let Some(std::net::IpAddr::V4(ip)) = peer {
        if deny.iter().any(|n| within(ip, *n)) {
            return ApiError::new(
                ErrorKind::Forbidden,
                format!(
                    "clients on {ip}'s network (the VM network) may not use the API (set vm_api_access to allow it)"
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Refuses a body whose declared length is over the limit before reading any of it (so a
/// client that sent `Expect: 100-continue` never uploads it): [`UPLOAD_LIMIT`] for the
/// upload operations, [`BODY_LIMIT`] for the rest. Bodies without a length are cut off at
/// the limit as they are read (`DefaultBodyLimit` for JSON, [`ApiUpload`] for uploads).
async fn refuse_declared_oversize(req: Request, next: Next) -> Response {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let limit = match UPLOAD_PATHS.contains(&req.uri().path()) {
        true => UPLOAD_LIMIT,
        false => BODY_LIMIT as u64,
    };
    match declared {
        Some(n) if n > limit => ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body of {n} bytes is larger than the limit of {limit} bytes"),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    // constant time in the token's length
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/api/v1/health" {
        return next.run(req).await;
    }
    let given =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if same(t.trim().as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(ErrorKind::Unauthorized, "the API token is wrong (see token in the micro-os home)")
            .into_response(),
        None => ApiError::new(
            ErrorKind::Unauthorized,
            "the request carries no API token (send Authorization: Bearer <token from the micro-os home>)",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_membership() {
        let net = (std::net::Ipv4Addr::new(10, 88, 0, 0), 16);
        assert!(within(std::net::Ipv4Addr::new(10, 88, 3, 4), net));
        assert!(!within(std::net::Ipv4Addr::new(10, 89, 0, 1), net));
        assert!(!within(std::net::Ipv4Addr::LOCALHOST, net));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
