//! The handle: how the rest of the process talks to the swarm's task.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use micro_os_core::net::{Ack, NetStatus, Provider};
use micro_os_net::{Envelope, MessageType, Rejection};
use tokio::sync::{mpsc, oneshot};

use crate::registry::{self, ProtocolHandler};
use crate::{stream, Error, StreamError};

/// One delivered message: the receiver's verdict, the round trip from leaving the outbox
/// to the verdict, and its size on the wire.
#[derive(Debug)]
pub struct Delivery {
    pub ack: Ack,
    pub rtt: Duration,
    pub bytes: u64,
}

/// What the handle (and the stream tasks) ask of the swarm's task.
pub(crate) enum Command {
    Status(oneshot::Sender<NetStatus>),
    Dial(Multiaddr),
    /// Dial a peer at this address unless connected to it or dialing it already.
    Connect(PeerId, Multiaddr),
    /// Close every connection to a peer (a protocol found it misbehaving).
    Disconnect(PeerId),
    /// Where a peer can be reached, for later sends.
    AddAddress(PeerId, Multiaddr),
    Broadcast {
        kind: MessageType,
        state: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Send {
        to: PeerId,
        kind: MessageType,
        state: String,
        reply: oneshot::Sender<Result<Delivery, Error>>,
    },
    /// Sign an envelope with the current key (a stream's header, a registered request).
    Seal {
        kind: MessageType,
        to: PeerId,
        state: String,
        reply: oneshot::Sender<Envelope>,
    },
    /// An envelope that arrived on a stream, to verify before anything else is read or
    /// handled; `counts` when it is a whole message (a registered protocol's request), not
    /// a data stream's header, whose body is counted once read (`Received`).
    Verify {
        peer: PeerId,
        env: Box<Envelope>,
        counts: bool,
        /// An open protocol's session: the sender need not be known to the `Policy`.
        open: bool,
        reply: oneshot::Sender<Result<(), Rejection>>,
    },
    /// A data stream has been read (accepted or refused).
    Received(stream::Received),
    /// A registered protocol's handler refused a verified request, for this reason.
    Refused(PeerId, String),
    /// A message of this peer was refused before it reached the verifier (over its rate,
    /// too large, not an envelope): counted, and charged to its score.
    Penalty(PeerId, Rejection),
    /// We sent a message of this type and size on a stream (data or registered protocol).
    Sent(PeerId, MessageType, u64),
    /// A request of this type and size came on a registered protocol's verified session.
    Counted(PeerId, MessageType, u64),
    /// Advertise exactly these resource keys as provider records.
    Provide(Vec<String>),
    /// A peer for the DHT's routing table (a leaf's host), at this address.
    AddDhtPeer(PeerId, Multiaddr),
    /// Listen on one more address.
    Listen(Multiaddr),
    /// The providers of a resource key.
    Find(String, oneshot::Sender<Vec<Provider>>),
}

/// A cloneable handle on a running peer.
#[derive(Clone)]
pub struct Handle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) control: libp2p_stream::Control,
    /// Open sessions of registered protocols, reused by later requests.
    pub(crate) sessions: Arc<registry::Sessions>,
    /// Every peer's request budget, shared with the node.
    pub(crate) limiter: Arc<crate::limits::Limiter>,
}

impl Handle {
    pub(crate) async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Error::Down)?;
        rx.await.map_err(|_| Error::Dropped)
    }

    /// The peer's status and counters; `None` when its task has stopped.
    pub async fn status(&self) -> Option<NetStatus> {
        self.ask(Command::Status).await.ok()
    }

    /// Where a peer can be reached, for later sends.
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) {
        let _ = self.tx.send(Command::AddAddress(peer, addr)).await;
    }

    /// From outside the runtime (the agent's control thread).
    pub fn add_address_blocking(&self, peer: PeerId, addr: Multiaddr) {
        let _ = self.tx.blocking_send(Command::AddAddress(peer, addr));
    }

    /// From outside the runtime: the peer a leaf keeps in its DHT routing table.
    pub fn add_dht_peer_blocking(&self, peer: PeerId, addr: Multiaddr) {
        let _ = self.tx.blocking_send(Command::AddDhtPeer(peer, addr));
    }

    /// Without waiting (from inside the runtime, in sync code): listen on one more address.
    pub fn listen_now(&self, addr: Multiaddr) {
        let _ = self.tx.try_send(Command::Listen(addr));
    }

    /// From outside the runtime: advertise exactly these resource keys.
    pub fn provide_blocking(&self, keys: Vec<String>) {
        let _ = self.tx.blocking_send(Command::Provide(keys));
    }

    /// Advertise exactly these resource keys (from inside the runtime).
    pub async fn provide(&self, keys: Vec<String>) {
        let _ = self.tx.send(Command::Provide(keys)).await;
    }

    pub async fn find(&self, key: String) -> Result<Vec<Provider>, Error> {
        self.ask(|tx| Command::Find(key, tx)).await
    }

    /// Makes sure a connection to `peer` exists or is being made, at `addr` if it must
    /// dial. Protocols that open streams by peer id (`send_request`) call it first: a
    /// stream's own dial request can be lost while another dial is pending, and a peer
    /// found by mDNS long ago may have no address left in the swarm's books.
    pub async fn connect(&self, peer: PeerId, addr: Multiaddr) {
        let _ = self.tx.send(Command::Connect(peer, addr)).await;
    }

    /// Closes every connection to `peer`, e.g. one a protocol caught misbehaving; keeping
    /// it away afterwards is the `Policy`'s job (a ban list).
    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self.tx.send(Command::Disconnect(peer)).await;
    }

    pub async fn dial(&self, addr: Multiaddr) {
        let _ = self.tx.send(Command::Dial(addr)).await;
    }

    /// Publishes a signed envelope to every peer on the broadcast topic.
    pub async fn broadcast(&self, kind: MessageType, state: String) -> Result<(), Error> {
        self.ask(|reply| Command::Broadcast { kind, state, reply }).await?
    }

    /// Sends one signed envelope on `/micro-os/msg/1`, through the outbox (by priority).
    pub async fn send(&self, to: PeerId, kind: MessageType, state: String) -> Result<Delivery, Error> {
        self.ask(|reply| Command::Send { to, kind, state, reply }).await?
    }

    /// Sends a DATA stream; gives the body's length and checksum once the receiver accepted it.
    pub async fn send_stream(
        &self,
        to: PeerId,
        header: stream::StreamHeader,
        body: stream::Source,
    ) -> Result<(u64, String), Error> {
        let state = serde_json::to_string(&header).expect("headers serialise");
        let env = self.ask(|reply| Command::Seal { kind: MessageType::Data, to, state, reply }).await?;
        let mut control = self.control.clone();
        let sent = stream::send(&mut control, to, &env, body).await?;
        let _ = self.tx.send(Command::Sent(to, MessageType::Data, sent.0 + env.encoded_len() as u64)).await;
        Ok(sent)
    }

    /// Serves `protocol` with `handler`: every request that arrives on it is verified
    /// (signature, time window, nonce, delegation, the sender is the connected peer and
    /// known to the `Policy`) before the handler sees it; the handler's answer goes back
    /// to the requester. Call it from inside the runtime, before peers use the protocol.
    pub fn register(&self, protocol: StreamProtocol, handler: Arc<dyn ProtocolHandler>) -> Result<(), Error> {
        self.serve(protocol, handler, false)
    }

    /// Serves `protocol` like [`Handle::register`], but to any peer whose envelope passes
    /// the verifier, known to the `Policy` or not: for a protocol that admits newcomers
    /// (a host that joins with a token), whose handler authorises every request itself.
    pub fn register_open(&self, protocol: StreamProtocol, handler: Arc<dyn ProtocolHandler>) -> Result<(), Error> {
        self.serve(protocol, handler, true)
    }

    fn serve(&self, protocol: StreamProtocol, handler: Arc<dyn ProtocolHandler>, open: bool) -> Result<(), Error> {
        if registry::RESERVED.contains(&protocol.as_ref()) {
            return Err(Error::Reserved(protocol));
        }
        let incoming =
            self.control.clone().accept(protocol.clone()).map_err(|_| Error::AlreadyRegistered(protocol.clone()))?;
        tokio::spawn(registry::serve(protocol, incoming, handler, self.tx.clone(), open, self.limiter.clone()));
        Ok(())
    }

    /// Whether a session of `protocol` with `to` is open (a request on it needs no dial).
    pub fn has_session(&self, to: PeerId, protocol: &StreamProtocol) -> bool {
        self.sessions.is_live(to, protocol)
    }

    /// Closes the session with `to` on `protocol`, if one is open: the next request opens
    /// a new stream. For a caller whose request timed out: the session may be wedged (its
    /// responder gone quiet) while the connection under it still answers pings.
    pub fn close_session(&self, to: PeerId, protocol: &StreamProtocol) {
        self.sessions.close(to, protocol)
    }

    /// Sends a request on a registered protocol and waits for the receiver's handler to
    /// answer with bytes. On the session with `to` (see `registry`): the first request of
    /// a session is an envelope of type `kind` signed by this peer, later ones go as they
    /// are. A refusal — by the receiver's verifier or by its handler — is
    /// `StreamError::Refused`.
    pub async fn send_request(
        &self,
        to: PeerId,
        protocol: StreamProtocol,
        kind: MessageType,
        state: String,
    ) -> Result<Vec<u8>, Error> {
        let mut control = self.control.clone();
        let size = state.len() as u64;
        let seal = |state: String| async move {
            self.ask(|reply| Command::Seal { kind, to, state, reply }).await.map_err(|_| StreamError::Closed)
        };
        let answer = registry::request(&self.sessions, &mut control, to, protocol, state, seal).await;
        // it was sent once the receiver answered, even with a refusal
        if matches!(answer, Ok(_) | Err(StreamError::Refused(_))) {
            let _ = self.tx.try_send(Command::Sent(to, kind, size));
        }
        Ok(answer?)
    }

    /// Sends an envelope sealed already (`seal`) on a registered protocol, as the first
    /// request of a new session.
    pub async fn send_sealed(&self, to: PeerId, protocol: StreamProtocol, env: &Envelope) -> Result<Vec<u8>, Error> {
        let mut control = self.control.clone();
        let answer = registry::open(&self.sessions, &mut control, to, protocol, env).await;
        if matches!(answer, Ok(_) | Err(StreamError::Refused(_))) {
            let _ = self.tx.send(Command::Sent(to, env.kind, env.encoded_len() as u64)).await;
        }
        Ok(answer?)
    }

    /// An envelope signed by this peer's current key, to `to`.
    pub async fn seal(&self, to: PeerId, kind: MessageType, state: String) -> Result<Envelope, Error> {
        self.ask(|reply| Command::Seal { kind, to, state, reply }).await
    }
}
