//! The HTTP side of the RPC server (Core's `httprpc.cpp`): POST `/` and `/wallet/<name>`
//! (one wallet, so the name is accepted and ignored), Basic auth as a middleware layer, the
//! cookie file, and the body handed to [`super::handle`] on a blocking thread.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use bitcoin::secp256k1::rand::{self, RngCore};

use super::{handle, Ctx};

/// The cookie's user name, as Core writes it.
pub const COOKIE_USER: &str = "__cookie__";

/// Requests above this are refused (a 4 MWU block in hex is under 8 MiB).
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// What the HTTP layer could not do.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cookie file {path}: {source}")]
    Cookie { path: PathBuf, source: std::io::Error },
    #[error("rpc bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The credentials a request may present (user, password).
#[derive(Debug, Clone)]
pub struct Credentials(Vec<(String, String)>);

impl Credentials {
    pub fn new(pairs: Vec<(String, String)>) -> Credentials {
        Credentials(pairs)
    }

    /// Whether an `Authorization` header value carries one of the credentials.
    pub fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.and_then(|v| v.to_str().ok()) else { return false };
        let Some(encoded) = value.strip_prefix("Basic ") else { return false };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
        let Some((user, password)) = std::str::from_utf8(&decoded).ok().and_then(|s| s.split_once(':')) else {
            return false;
        };
        // Check every pair without stopping early, comparing in constant time.
        self.0.iter().fold(false, |ok, (u, p)| {
            ok | (ct_eq(u.as_bytes(), user.as_bytes()) & ct_eq(p.as_bytes(), password.as_bytes()))
        })
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes `<datadir>/.cookie` with `__cookie__:<64 hex>` (mode 0600, written to a temporary
/// file and renamed, as Core does) and returns the credentials.
pub fn write_cookie(datadir: &Path) -> Result<(String, String), HttpError> {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let password = hex::encode(secret);
    let path = cookie_path(datadir);
    let tmp = datadir.join(".cookie.tmp");
    let err = |source| HttpError::Cookie { path: path.clone(), source };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(format!("{COOKIE_USER}:{password}").as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok((COOKIE_USER.to_string(), password))
}

/// `<datadir>/.cookie`.
pub fn cookie_path(datadir: &Path) -> PathBuf {
    datadir.join(".cookie")
}

#[derive(Clone)]
struct AppState {
    ctx: Arc<Ctx>,
    credentials: Arc<Credentials>,
}

/// The RPC router: POST `/` and `/wallet/{name}`, behind Basic auth.
pub fn router(ctx: Arc<Ctx>, credentials: Credentials) -> Router {
    let state = AppState { ctx, credentials: Arc::new(credentials) };
    Router::new()
        .route("/", post(rpc).fallback(only_post))
        .route("/wallet/{name}", post(rpc).fallback(only_post))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Core answers a bad or missing password with 401, `WWW-Authenticate` and no body.
async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.credentials.allows(req.headers().get(header::AUTHORIZATION)) {
        tracing::warn!("rpc: refused a request with wrong or missing credentials");
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"jsonrpc\"")]).into_response();
    }
    next.run(req).await
}

async fn only_post() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, "JSONRPC server handles only POST requests").into_response()
}

async fn rpc(State(state): State<AppState>, _headers: HeaderMap, body: Bytes) -> Response {
    let ctx = state.ctx.clone();
    match tokio::task::spawn_blocking(move || handle(&ctx, &body)).await {
        Ok(reply) => {
            let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, axum::Json(reply.body)).into_response()
        }
        Err(e) => {
            tracing::error!("rpc handler failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// Binds `addr` (refusing with the address named).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| HttpError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::node;
    use axum::body::Body;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    #[tokio::test]
    async fn auth_is_required_and_replies_are_json() {
        let (dir, n) = node();
        let ctx = Arc::new(Ctx { node: Arc::new(n), shutdown: Arc::new(Notify::new()), p2p: None });
        let (user, password) = write_cookie(dir.path()).unwrap();
        let cookie = std::fs::read_to_string(cookie_path(dir.path())).unwrap();
        assert_eq!(cookie, format!("__cookie__:{password}"));
        assert_eq!(password.len(), 64);
        let mode = std::fs::metadata(cookie_path(dir.path())).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        let app = router(ctx, Credentials::new(vec![(user.clone(), password.clone()), ("u".into(), "p".into())]));
        let body = r#"{"method":"getblockcount","params":[],"id":1}"#;
        let send = |path: &str, auth: Option<String>, method: &str, body: &str| {
            let mut req = Request::builder().method(method).uri(path);
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            app.clone().oneshot(req.body(Body::from(body.to_string())).unwrap())
        };
        let r = send("/", None, "POST", body).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Basic realm=\"jsonrpc\"");
        let r = send("/", Some(basic(&user, "wrong")), "POST", body).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        for (path, auth) in [("/", basic(&user, &password)), ("/wallet/default", basic("u", "p"))] {
            let r = send(path, Some(auth), "POST", body).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
            let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            assert_eq!(&b[..], br#"{"error":null,"id":1,"result":0}"#);
        }
        let r = send("/", Some(basic("u", "p")), "POST", r#"{"method":"nope","id":1}"#).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = send("/", Some(basic("u", "p")), "GET", "").await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
