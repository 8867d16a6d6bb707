//! What can go wrong in the P2P layer: one enum for the crate, the stream errors composed
//! into it.

use libp2p::StreamProtocol;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the p2p layer is down")]
    Down,
    #[error("the p2p layer dropped the request")]
    Dropped,
    #[error("build the swarm: {0}")]
    Build(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("protocol {0} is registered already")]
    AlreadyRegistered(StreamProtocol),
    #[error("protocol {0} is built in (register /micro-os/<name>/<version> of your own)")]
    Reserved(StreamProtocol),
    #[error("peer id {0:?} is malformed")]
    BadPeer(String),
    #[error("message type {0:?} is unknown (use SYNC, DISC, DATA, CTRL or PING)")]
    BadKind(String),
    #[error("only DATA travels as a stream")]
    NotData,
    #[error("{0}")]
    Publish(#[from] libp2p::gossipsub::PublishError),
    #[error("{0}")]
    Outbound(#[from] libp2p::request_response::OutboundFailure),
    #[error("file {path} cannot be read: {source}")]
    File { path: String, source: std::io::Error },
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    pub(crate) fn build(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Build(e.into())
    }
}

/// A stream (`/micro-os/data/1` or a registered protocol) that did not go through.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("open a {protocol} stream: {source}")]
    Open { protocol: StreamProtocol, source: libp2p_stream::OpenStreamError },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("read the data: {0}")]
    Source(#[source] std::io::Error),
    #[error("the peer closed the stream")]
    Closed,
    #[error("the peer's answer is too long")]
    TooLong,
    /// The receiver refused: a verifier's or a handler's reason.
    #[error("refused: {0}")]
    Refused(String),
    #[error("no answer within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("unexpected answer {0:?}")]
    Unexpected(String),
    #[error("the receiver computed checksum {theirs}, we sent {ours}")]
    Checksum { theirs: String, ours: String },
}
