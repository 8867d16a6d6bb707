//! Protocols that plug in: a crate that needs its own protocol (`/micro-os/raft/1`, a
//! chain's block and transaction protocols) implements [`ProtocolHandler`] and registers
//! it with `Handle::register`; the node's event loop is not edited.
//!
//! A registered protocol is request-response over libp2p-stream, one stream per request:
//!
//! ```text
//! requester: u32 (big endian) length, then a signed envelope (`Envelope::encode`); closes
//!            its side
//! responder: one status byte (0 answered, 1 refused), u32 length, then the handler's
//!            answer or the refusal's reason (UTF-8); closes
//! ```
//!
//! The responder reads the envelope and hands it to the node, which checks it as every
//! envelope is checked — the sender is the connection's own peer, known to the `Policy`
//! or trusted, signature, time window, nonce replay, delegation — and counts it. Only an
//! envelope that passed reaches the handler; a refused one is answered with the
//! verifier's reason and costs the sender score.
//!
//! Design decision: libp2p-stream rather than one request-response behaviour per
//! protocol, because its protocols can be added while the swarm runs (a behaviour's are
//! fixed when the swarm is built) and each handler runs in its own task, so a slow
//! handler never holds the event loop.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use micro_os_net::{Envelope, Rejection};
use tokio::sync::{mpsc, oneshot};

use crate::handle::Command;
use crate::StreamError;

/// Protocols of the node itself, which cannot be registered.
pub(crate) const RESERVED: &[&str] =
    &["/micro-os/msg/1", "/micro-os/data/1", "/micro-os/kad/1", "/micro-os/id/1", "/micro-os/broadcast/1"];
const MAX_REQUEST: u32 = 1 << 20;
const MAX_ANSWER: u32 = 16 << 20;
/// How long a request may take, from opening the stream to the answer.
const TIMEOUT: Duration = Duration::from_secs(30);
const ANSWERED: u8 = 0;
const REFUSED: u8 = 1;

/// A verified request on a registered protocol.
#[derive(Debug, Clone)]
pub struct Request {
    /// The connection's peer, which is also the envelope's sender.
    pub peer: PeerId,
    pub protocol: StreamProtocol,
    pub envelope: Envelope,
}

/// A handler's refusal: the reason goes back to the requester.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Answers the requests of one protocol.
pub trait ProtocolHandler: Send + Sync + 'static {
    /// Called for each request once it has passed the verifier and the `Policy`.
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Vec<u8>, Refusal>>;
}

/// Serves a registered protocol until the swarm goes away.
pub(crate) async fn serve(
    protocol: StreamProtocol,
    mut incoming: libp2p_stream::IncomingStreams,
    handler: Arc<dyn ProtocolHandler>,
    tx: mpsc::Sender<Command>,
) {
    while let Some((peer, stream)) = incoming.next().await {
        tokio::spawn(answer(protocol.clone(), peer, stream, handler.clone(), tx.clone()));
    }
}

async fn answer(
    protocol: StreamProtocol,
    peer: PeerId,
    mut s: libp2p::Stream,
    handler: Arc<dyn ProtocolHandler>,
    tx: mpsc::Sender<Command>,
) {
    let outcome = match tokio::time::timeout(TIMEOUT, read_frame(&mut s, MAX_REQUEST)).await {
        Ok(Ok(bytes)) => match Envelope::decode(&bytes) {
            Ok(envelope) => match verify(peer, &envelope, &tx).await {
                Ok(()) => {
                    let answer = handler.handle(Request { peer, protocol: protocol.clone(), envelope }).await;
                    if let Err(Refusal(why)) = &answer {
                        let _ = tx.send(Command::Refused(peer, why.clone())).await;
                    }
                    answer
                }
                Err(why) => {
                    tracing::warn!("refused a {protocol} request from {peer}: {why}");
                    Err(Refusal(why.to_string()))
                }
            },
            Err(_) => Err(Refusal(Rejection::Malformed.to_string())),
        },
        Ok(Err(_)) | Err(_) => Err(Refusal(Rejection::Malformed.to_string())),
    };
    let (status, body) = match outcome {
        Ok(answer) => (ANSWERED, answer),
        Err(Refusal(why)) => (REFUSED, why.into_bytes()),
    };
    let _ = write_frame(&mut s, status, &body).await;
    let _ = s.close().await;
}

async fn verify(peer: PeerId, env: &Envelope, tx: &mpsc::Sender<Command>) -> Result<(), Rejection> {
    let (reply, verdict) = oneshot::channel();
    let cmd = Command::Verify { peer, env: Box::new(env.clone()), counts: true, reply };
    tx.send(cmd).await.map_err(|_| Rejection::Malformed)?;
    verdict.await.unwrap_or(Err(Rejection::Malformed))
}

async fn read_frame<R: futures_util::AsyncRead + Unpin>(r: &mut R, max: u32) -> Result<Vec<u8>, StreamError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(closed)?;
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(StreamError::TooLong);
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await.map_err(closed)?;
    Ok(buf)
}

async fn write_frame<W: futures_util::AsyncWrite + Unpin>(w: &mut W, status: u8, body: &[u8]) -> std::io::Result<()> {
    w.write_all(&[status]).await?;
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await
}

fn closed(e: std::io::Error) -> StreamError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        StreamError::Closed
    } else {
        StreamError::Io(e)
    }
}

/// Sends one request and reads its answer.
pub(crate) async fn request(
    control: &mut libp2p_stream::Control,
    to: PeerId,
    protocol: StreamProtocol,
    env: &Envelope,
) -> Result<Vec<u8>, StreamError> {
    let exchange = async {
        let mut s = control
            .open_stream(to, protocol.clone())
            .await
            .map_err(|source| StreamError::Open { protocol: protocol.clone(), source })?;
        let head = env.encode();
        // the responder would stop reading and this side would block writing: refuse here
        if head.len() > MAX_REQUEST as usize {
            return Err(StreamError::TooLong);
        }
        s.write_all(&(head.len() as u32).to_be_bytes()).await?;
        s.write_all(&head).await?;
        s.close().await?;
        let mut status = [0u8; 1];
        s.read_exact(&mut status).await.map_err(closed)?;
        let body = read_frame(&mut s, MAX_ANSWER).await?;
        match status[0] {
            ANSWERED => Ok(body),
            REFUSED => Err(StreamError::Refused(String::from_utf8_lossy(&body).into_owned())),
            other => Err(StreamError::Unexpected(format!("status {other}"))),
        }
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| StreamError::TimedOut(TIMEOUT))?
}
