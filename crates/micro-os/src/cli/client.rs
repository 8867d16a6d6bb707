//! The HTTP client every command but `init`, `daemon` and `completion` uses.

use std::fmt;

use micro_os_api::Problem;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::home::Home;

/// Process exit codes, documented in `micro-os --help`.
pub mod exit {
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const CONFLICT: i32 = 4;
    pub const UNREACHABLE: i32 = 5;
    pub const UNAUTHORIZED: i32 = 6;
    /// The daemon answered 501: what was asked for is valid but not in this build.
    pub const NOT_BUILT: i32 = 7;
}

/// An error for the user: one line, and the exit code that goes with it.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CliError { code, message: message.into() }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit::USAGE, message)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::new(exit::FAILURE, format!("{e:#}"))
    }
}

pub type CliResult<T> = Result<T, CliError>;

pub struct Client {
    base: String,
    token: Option<String>,
    /// The host of the fabric requests are for (`--host`).
    host: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(api: Option<String>, host: Option<String>) -> Client {
        let base = api.unwrap_or_else(|| "http://127.0.0.1:8080".into()).trim_end_matches('/').to_string();
        let token =
            std::env::var("MICRO_OS_TOKEN").ok().filter(|t| !t.is_empty()).or_else(|| Home::locate().token().ok());
        Client { base, token, host, agent: ureq::AgentBuilder::new().build() }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let mut r = self.agent.request(method, &format!("{}/api/v1{path}", self.base));
        if let Some(t) = &self.token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        if let Some(h) = &self.host {
            r = r.set(micro_os_api::server::HOST_HEADER, h);
        }
        r
    }

    fn map_err(&self, e: ureq::Error) -> CliError {
        match e {
            ureq::Error::Status(status, resp) => {
                let text = resp.into_string().unwrap_or_default();
                let detail = serde_json::from_str::<Problem>(&text).map(|p| p.detail).unwrap_or(text);
                let code = match status {
                    400 | 413 | 422 => exit::USAGE,
                    401 | 403 => exit::UNAUTHORIZED,
                    404 => exit::NOT_FOUND,
                    409 => exit::CONFLICT,
                    501 => exit::NOT_BUILT,
                    _ => exit::FAILURE,
                };
                let detail = if status == 401 && self.token.is_none() {
                    format!("{detail}; no token found: set MICRO_OS_TOKEN or MICRO_OS_HOME")
                } else {
                    detail
                };
                CliError::new(code, detail)
            }
            ureq::Error::Transport(t) => CliError::new(
                exit::UNREACHABLE,
                format!(
                    "cannot reach the micro-os daemon at {} ({}); start it with `micro-os daemon` or point MICRO_OS_API at it",
                    self.base,
                    t.kind()
                ),
            ),
        }
    }

    pub fn raw(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> CliResult<ureq::Response> {
        let req = self.request(method, path);
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        res.map_err(|e| self.map_err(e))
    }

    /// Sends `body` as the request's bytes (an upload: chunked when its length is unknown).
    pub fn upload(&self, method: &str, path: &str, body: super::upload::Body) -> CliResult<ureq::Response> {
        let super::upload::Body { reader, len, content_type, failed, .. } = body;
        let mut req = self.request(method, path).set("Content-Type", content_type);
        if let Some(n) = len {
            req = req.set("Content-Length", &n.to_string());
        }
        req.send(reader).map_err(|e| match failed.lock().unwrap().take() {
            // the tar made on the fly broke: that, not the connection it cut, is the error
            Some(why) => CliError::new(exit::FAILURE, why),
            None => self.map_err(e),
        })
    }

    pub fn call<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<&impl Serialize>) -> CliResult<T> {
        let body = body.map(|b| serde_json::to_value(b).expect("request serialises"));
        let resp = self.raw(method, path, body.as_ref())?;
        resp.into_json().map_err(|e| CliError::new(exit::FAILURE, format!("the daemon's reply is not valid: {e}")))
    }

    pub fn call_empty(&self, method: &str, path: &str) -> CliResult<()> {
        self.raw(method, path, None).map(drop)
    }
}

/// `?k=v&...` of the pairs given (values escaped), or nothing.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", seg(v)))).collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// Escapes a path segment (names are validated, but ids typed by users may not be).
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
