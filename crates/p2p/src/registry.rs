//! Protocols that plug in: a crate that needs its own protocol (`/micro-os/raft/1`, a
//! chain's block and transaction protocols) implements [`ProtocolHandler`] and registers
//! it with `Handle::register`; the node's event loop is not edited.
//!
//! A registered protocol is request-response over a **session**: one libp2p stream per
//! (peer, protocol), opened by the first request and kept for the next ones, which may be
//! in flight together. Every frame is `u32 (big endian) length, u64 request id, body`:
//!
//! ```text
//! requester: the first frame's body is a signed envelope (`Envelope::encode`) whose state
//!            is the first request; each later frame's body is a request's state as it is
//! responder: per request, a frame whose body is one status byte (0 answered, 1 refused)
//!            and the handler's answer or the refusal's reason (UTF-8)
//! ```
//!
//! The responder hands the first envelope to the node, which checks it as every envelope
//! is checked — the sender is the connection's own peer, known to the `Policy` or
//! trusted, signature, time window, nonce replay, delegation — and counts it. A refused
//! envelope is answered with the verifier's reason, costs the sender score, and ends the
//! session. Later frames are bound to that verified peer: the connection under the stream
//! is authenticated and encrypted (Noise or TLS, whose AEAD counters refuse a replayed,
//! reordered or injected frame), so they are not signed again. Each request is still
//! authorised by its handler (a circuit checks its membership per request).
//!
//! Design decisions: libp2p-stream rather than one request-response behaviour per
//! protocol, because its protocols can be added while the swarm runs (a behaviour's are
//! fixed when the swarm is built) and each handler runs in its own task, so a slow
//! handler never holds the event loop. A session rather than a stream and a signature per
//! request: Raft sends thousands of small RPCs a second to the same peers, and opening a
//! stream, signing and verifying each through the swarm's event loop bounded a circuit's
//! write rate (etcd keeps one stream per peer pair for the same reason).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::io::{ReadHalf, WriteHalf};
use futures_util::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use micro_os_net::{Envelope, MessageType, Rejection};
use tokio::sync::{mpsc, oneshot};

use crate::handle::Command;
use crate::limits::Limiter;
use crate::StreamError;

/// Protocols of the node itself, which cannot be registered.
pub(crate) const RESERVED: &[&str] =
    &["/micro-os/msg/1", "/micro-os/data/1", "/micro-os/kad/1", "/micro-os/id/1", "/micro-os/broadcast/1"];
/// A request's largest size unless its protocol says otherwise
/// (`ProtocolHandler::max_request`), and the most a requester sends.
pub const MAX_REQUEST: u32 = 1 << 20;
const MAX_ANSWER: u32 = 16 << 20;
/// How long a request may take, from sending it to its answer.
const TIMEOUT: Duration = Duration::from_secs(30);
const ANSWERED: u8 = 0;
const REFUSED: u8 = 1;
/// Frames waiting to be written on one session.
const QUEUE: usize = 256;

/// A verified request on a registered protocol.
#[derive(Debug, Clone)]
pub struct Request {
    /// The connection's peer, which signed the session's first envelope.
    pub peer: PeerId,
    pub protocol: StreamProtocol,
    /// The message type of the session's signed envelope.
    pub kind: MessageType,
    /// The request itself (an envelope's state).
    pub state: String,
}

/// A handler's refusal: the reason goes back to the requester.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Answers the requests of one protocol.
pub trait ProtocolHandler: Send + Sync + 'static {
    /// Called for each request once its session's envelope has passed the verifier and
    /// the `Policy`.
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Vec<u8>, Refusal>>;

    /// The largest request (a frame's body, the session's first envelope included) this
    /// protocol takes: a larger one is refused ("message too large") from its length
    /// alone, before its body is read, and the session ends.
    fn max_request(&self) -> u32 {
        MAX_REQUEST
    }

    /// Whether `peer`'s requests on this protocol are exempt from the per-peer rate limit
    /// (`Limits`): for peers the protocol itself trusts and must never throttle, such as
    /// a circuit's members. Called per request: keep it cheap.
    fn unmetered(&self, _peer: &PeerId) -> bool {
        false
    }
}

/// Serves a registered protocol until the swarm goes away.
pub(crate) async fn serve(
    protocol: StreamProtocol,
    mut incoming: libp2p_stream::IncomingStreams,
    handler: Arc<dyn ProtocolHandler>,
    tx: mpsc::Sender<Command>,
    open: bool,
    limiter: Arc<Limiter>,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let limit = Limit { limiter: limiter.clone(), max: handler.max_request() };
        tokio::spawn(answer(protocol.clone(), peer, stream, handler.clone(), tx.clone(), open, limit));
    }
}

/// What a session's requests must keep within.
struct Limit {
    limiter: Arc<Limiter>,
    max: u32,
}

impl Limit {
    /// Takes a token for a request of `peer`, unless the handler exempts it.
    fn admits(&self, peer: &PeerId, handler: &Arc<dyn ProtocolHandler>) -> bool {
        handler.unmetered(peer) || self.limiter.check_key(peer).is_ok()
    }
}

/// One session, responder side: verify the first envelope, then answer every request
/// (each in its own task) until the requester closes.
async fn answer(
    protocol: StreamProtocol,
    peer: PeerId,
    s: libp2p::Stream,
    handler: Arc<dyn ProtocolHandler>,
    tx: mpsc::Sender<Command>,
    open: bool,
    limit: Limit,
) {
    let (mut rd, wr) = s.split();
    let (out, queue) = mpsc::channel::<(u64, u8, Vec<u8>)>(QUEUE);
    let writer = tokio::spawn(write_answers(wr, queue));
    let refuse = |id: u64, why: Rejection| {
        let (out, tx, protocol) = (out.clone(), tx.clone(), protocol.clone());
        async move {
            tracing::warn!("refused a {protocol} request from {peer}: {why}");
            let _ = tx.send(Command::Penalty(peer, why)).await;
            let _ = out.send((id, REFUSED, why.to_string().into_bytes())).await;
        }
    };
    let first = match tokio::time::timeout(TIMEOUT, read_frame(&mut rd, limit.max)).await {
        Ok(Ok((id, Some(body)))) => (id, body),
        Ok(Ok((id, None))) => {
            refuse(id, Rejection::TooLarge).await;
            drop(out);
            let _ = writer.await;
            return;
        }
        _ => {
            let _ = out.send((0, REFUSED, Rejection::Malformed.to_string().into_bytes())).await;
            drop(out);
            let _ = writer.await;
            return;
        }
    };
    if !limit.admits(&peer, &handler) {
        refuse(first.0, Rejection::RateLimited).await;
        drop(out);
        let _ = writer.await;
        return;
    }
    let verified = match Envelope::decode(&first.1) {
        Ok(env) => verify(peer, &env, &tx, open).await.map(|_| env),
        Err(_) => {
            // not an envelope at all: the verifier never saw it, so it is charged here
            let _ = tx.send(Command::Penalty(peer, Rejection::Malformed)).await;
            Err(Rejection::Malformed)
        }
    };
    let env = match verified {
        Ok(env) => env,
        Err(why) => {
            tracing::warn!("refused a {protocol} session from {peer}: {why}");
            let _ = out.send((first.0, REFUSED, why.to_string().into_bytes())).await;
            drop(out);
            let _ = writer.await;
            return;
        }
    };
    let kind = env.kind;
    let call = |id: u64, state: String| {
        let (handler, out, tx, protocol) = (handler.clone(), out.clone(), tx.clone(), protocol.clone());
        tokio::spawn(async move {
            let answer = handler.handle(Request { peer, protocol, kind, state }).await;
            let (status, body) = match answer {
                Ok(a) => (ANSWERED, a),
                Err(Refusal(why)) => {
                    let _ = tx.send(Command::Refused(peer, why.clone())).await;
                    (REFUSED, why.into_bytes())
                }
            };
            let _ = out.send((id, status, body)).await;
        });
    };
    call(first.0, env.payload.state);
    loop {
        match read_frame(&mut rd, limit.max).await {
            Ok((id, None)) => {
                // the body was not read, so the stream cannot go on: refused, and ended
                refuse(id, Rejection::TooLarge).await;
                break;
            }
            Ok((id, _)) if !limit.admits(&peer, &handler) => refuse(id, Rejection::RateLimited).await,
            Ok((id, Some(body))) => match String::from_utf8(body) {
                Ok(state) => {
                    let _ = tx.send(Command::Counted(peer, kind, state.len() as u64)).await;
                    call(id, state)
                }
                Err(_) => refuse(id, Rejection::Malformed).await,
            },
            Err(StreamError::Closed) => break,
            Err(e) => {
                tracing::debug!("{protocol} session from {peer} ended: {e}");
                break;
            }
        }
    }
    drop(out);
    let _ = writer.await;
}

async fn write_answers(mut wr: WriteHalf<libp2p::Stream>, mut queue: mpsc::Receiver<(u64, u8, Vec<u8>)>) {
    while let Some((id, status, body)) = queue.recv().await {
        let mut framed = Vec::with_capacity(body.len() + 1);
        framed.push(status);
        framed.extend_from_slice(&body);
        if write_frame(&mut wr, id, &framed).await.is_err() {
            return;
        }
    }
    let _ = wr.close().await;
}

async fn verify(peer: PeerId, env: &Envelope, tx: &mpsc::Sender<Command>, open: bool) -> Result<(), Rejection> {
    let (reply, verdict) = oneshot::channel();
    let cmd = Command::Verify { peer, env: Box::new(env.clone()), counts: true, open, reply };
    tx.send(cmd).await.map_err(|_| Rejection::Malformed)?;
    verdict.await.unwrap_or(Err(Rejection::Malformed))
}

/// Reads one frame: its request id and body, or `None` for a body over `max`, which is
/// left unread (the stream cannot go on after it).
async fn read_frame<R: futures_util::AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
) -> Result<(u64, Option<Vec<u8>>), StreamError> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head).await.map_err(closed)?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes"));
    let id = u64::from_be_bytes(head[4..].try_into().expect("8 bytes"));
    if len > max {
        return Ok((id, None));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await.map_err(closed)?;
    Ok((id, Some(buf)))
}

async fn write_frame<W: futures_util::AsyncWrite + Unpin>(w: &mut W, id: u64, body: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 12];
    head[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
    head[4..].copy_from_slice(&id.to_be_bytes());
    w.write_all(&head).await?;
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

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, StreamError>>>>;

/// One session, requester side: frames go out through `out`; answers find their request
/// in `pending` by id.
struct Session {
    out: mpsc::Sender<(u64, Vec<u8>)>,
    pending: Pending,
    next: AtomicU64,
    alive: AtomicBool,
    /// Its writer and reader: aborted when it is ended from here, which drops the stream.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Session {
    /// Fails every request still waiting: the session is gone.
    fn end(&self) {
        self.alive.store(false, Ordering::SeqCst);
        for (_, w) in self.pending.lock().unwrap().drain() {
            let _ = w.send(Err(StreamError::Closed));
        }
    }

    /// Ends the session and drops its stream (its peer's responder sees it close).
    fn close(&self) {
        self.end();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Sends one frame and waits for its answer.
    async fn call(&self, id: u64, body: Vec<u8>) -> Result<Vec<u8>, StreamError> {
        if body.len() > MAX_REQUEST as usize {
            // the responder would stop reading: refused here
            return Err(StreamError::TooLong);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        // one deadline for the whole call: the queue to the writer is bounded, and a writer
        // stuck on a stream its peer no longer reads (a peer that banned us, say) must not
        // hold the callers queued behind it forever
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        match tokio::time::timeout_at(deadline, self.out.send((id, body))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                self.pending.lock().unwrap().remove(&id);
                return Err(StreamError::Closed);
            }
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                return Err(StreamError::TimedOut(TIMEOUT));
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StreamError::Closed),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(StreamError::TimedOut(TIMEOUT))
            }
        }
    }
}

/// A peer's open sessions, by (peer, protocol).
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<(PeerId, StreamProtocol), Arc<Session>>>);

impl Sessions {
    fn live(&self, to: PeerId, protocol: &StreamProtocol) -> Option<Arc<Session>> {
        let map = self.0.lock().unwrap();
        map.get(&(to, protocol.clone())).filter(|s| s.alive.load(Ordering::SeqCst)).cloned()
    }

    pub(crate) fn is_live(&self, to: PeerId, protocol: &StreamProtocol) -> bool {
        self.live(to, protocol).is_some()
    }

    /// Closes the session with `to` on `protocol`, if one is open: the next request opens
    /// a new stream (and dials, if the connection is gone too).
    pub(crate) fn close(&self, to: PeerId, protocol: &StreamProtocol) {
        let s = self.0.lock().unwrap().remove(&(to, protocol.clone()));
        if let Some(s) = s {
            s.close();
        }
    }

    fn forget(&self, to: PeerId, protocol: &StreamProtocol, s: &Arc<Session>) {
        let mut map = self.0.lock().unwrap();
        if map.get(&(to, protocol.clone())).is_some_and(|x| Arc::ptr_eq(x, s)) {
            map.remove(&(to, protocol.clone()));
        }
    }
}

/// Sends one request on the session with `to`: as a frame of the open session, or, with
/// none open, as the signed first envelope of a new one (`seal` makes it).
pub(crate) async fn request<F, Fut>(
    sessions: &Arc<Sessions>,
    control: &mut libp2p_stream::Control,
    to: PeerId,
    protocol: StreamProtocol,
    state: String,
    seal: F,
) -> Result<Vec<u8>, StreamError>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<Envelope, StreamError>>,
{
    if let Some(s) = sessions.live(to, &protocol) {
        let id = s.next.fetch_add(1, Ordering::SeqCst);
        return s.call(id, state.into_bytes()).await;
    }
    let env = seal(state).await?;
    open(sessions, control, to, protocol, &env).await
}

/// Opens a session with `env` as its first request and answers that request; the session
/// stays for the next ones.
pub(crate) async fn open(
    sessions: &Arc<Sessions>,
    control: &mut libp2p_stream::Control,
    to: PeerId,
    protocol: StreamProtocol,
    env: &Envelope,
) -> Result<Vec<u8>, StreamError> {
    let head = env.encode();
    if head.len() > MAX_REQUEST as usize {
        return Err(StreamError::TooLong);
    }
    let stream = tokio::time::timeout(TIMEOUT, control.open_stream(to, protocol.clone()))
        .await
        .map_err(|_| StreamError::TimedOut(TIMEOUT))?
        .map_err(|source| StreamError::Open { protocol: protocol.clone(), source })?;
    let (rd, wr) = stream.split();
    let (out, queue) = mpsc::channel(QUEUE);
    let s = Arc::new(Session {
        out,
        pending: Mutex::default(),
        next: AtomicU64::new(1),
        alive: AtomicBool::new(true),
        tasks: Mutex::default(),
    });
    let writer = tokio::spawn(write_requests(wr, queue, s.clone()));
    let reader = tokio::spawn(read_answers(rd, s.clone(), sessions.clone(), to, protocol.clone()));
    s.tasks.lock().unwrap().extend([writer.abort_handle(), reader.abort_handle()]);
    sessions.0.lock().unwrap().insert((to, protocol.clone()), s.clone());
    let answer = s.call(0, head).await;
    if answer.is_err() {
        // a refused envelope ends the session on the other side
        s.end();
        sessions.forget(to, &protocol, &s);
    }
    answer
}

async fn write_requests(mut wr: WriteHalf<libp2p::Stream>, mut queue: mpsc::Receiver<(u64, Vec<u8>)>, s: Arc<Session>) {
    // holds only a weak interest: the session ends when every sender (the map's and
    // callers') is gone, which closes the queue
    let weak = Arc::downgrade(&s);
    drop(s);
    while let Some((id, body)) = queue.recv().await {
        if write_frame(&mut wr, id, &body).await.is_err() {
            if let Some(s) = weak.upgrade() {
                s.end();
            }
            return;
        }
    }
    let _ = wr.close().await;
}

async fn read_answers(
    mut rd: ReadHalf<libp2p::Stream>,
    s: Arc<Session>,
    sessions: Arc<Sessions>,
    to: PeerId,
    protocol: StreamProtocol,
) {
    let weak = Arc::downgrade(&s);
    drop(s);
    loop {
        let frame = read_frame(&mut rd, MAX_ANSWER).await;
        let Some(s) = weak.upgrade() else { return };
        match frame {
            Ok((_, None)) => {
                tracing::debug!("{protocol} session with {to} ended: an answer over {MAX_ANSWER} bytes");
                s.end();
                sessions.forget(to, &protocol, &s);
                return;
            }
            Ok((id, Some(body))) => {
                let answer = match body.split_first() {
                    Some((&ANSWERED, rest)) => Ok(rest.to_vec()),
                    Some((&REFUSED, rest)) => Err(StreamError::Refused(String::from_utf8_lossy(rest).into_owned())),
                    other => Err(StreamError::Unexpected(format!("status {:?}", other.map(|o| o.0)))),
                };
                if let Some(w) = s.pending.lock().unwrap().remove(&id) {
                    let _ = w.send(answer);
                }
            }
            Err(e) => {
                tracing::debug!("{protocol} session with {to} ended: {e}");
                s.end();
                sessions.forget(to, &protocol, &s);
                return;
            }
        }
    }
}
