//! **API Boundary.** The REST interface of the daemon: request and response types, the
//! closed set of [`Action`]s the daemon's control surface accepts, the OpenAPI document,
//! and the axum server with its tower layers (auth, body limit, tracing).
//!
//! Design decision: handlers only parse, send an [`Action`] to a [`Control`]
//! implementation and map the [`Reply`] to a status code — they never touch drivers or
//! the store. The daemon (in the binary) implements [`Control`]; the CLI uses the same
//! types to read the replies. The OpenAPI document is generated from the handlers
//! registered here (utoipa-axum), so what is documented is what is served.

pub mod action;
pub mod error;
pub mod schema;
pub mod serve;
pub mod server;
pub mod types;

mod ai;
mod chain;
mod circuits;
mod containers;
mod events;
mod hosts;
mod images;
mod monitor;
mod net;
mod system;
mod templates;
mod vms;

pub use action::{Action, ByteStream, Control, Reply};
pub use error::{ApiError, ErrorKind, Problem};
pub use server::{router, Forwarder, HostLimits, ServerConfig};
