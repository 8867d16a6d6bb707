//! A micro-os libp2p peer — the host's (in the daemon) and every VM's (in its agent):
//! TCP (noise or TLS 1.3, + yamux) and QUIC, identify, ping, connection limits, and the versioned
//! request-response protocol `/micro-os/msg/1` that carries signed envelopes
//! (`micro_os_net`). Every envelope is verified — signature, known sender, time window,
//! nonce (the host remembers them in its store, so replays fail after a restart too) —
//! before it counts; rejections are counted by reason and cost the peer score.
//!
//! The swarm runs in one task; the rest of the process talks to it with `Command`s.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{connection_limits, gossipsub, identify, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use micro_os_api::types::{Ack, NetStatus, PeerInfo};
use micro_os_net::{Envelope, MessageType, NonceStore, Payload, Verifier};
use micro_os_store::Store;
use tokio::sync::{mpsc, oneshot};

/// Nonces of verified envelopes, in SQLite.
pub struct StoredNonces<S: AsRef<Store>>(pub S);

impl<S: AsRef<Store>> NonceStore for StoredNonces<S> {
    fn insert(&mut self, sender: &str, nonce: &str, timestamp: u64) -> bool {
        // a store that cannot answer refuses the message rather than risk a replay
        self.0.as_ref().insert_nonce(sender, nonce, timestamp).unwrap_or(false)
    }

    fn prune(&mut self, before: u64) {
        if let Err(e) = self.0.as_ref().prune_nonces(before) {
            tracing::warn!("prune message nonces: {e}");
        }
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    msg: request_response::json::Behaviour<Envelope, Ack>,
    gossip: gossipsub::Behaviour,
}

/// The broadcast topic: envelopes to "*", in gossipsub's strict signing mode.
const BROADCAST_TOPIC: &str = "/micro-os/broadcast/1";

/// Who may send us messages, besides the configured trusted and bootstrap peers.
pub trait Policy: Send + Sync + 'static {
    fn known(&self, peer: &PeerId) -> bool;
}

pub enum Command {
    Status(oneshot::Sender<NetStatus>),
    Dial(Multiaddr),
    /// Where a peer can be reached, for later sends.
    AddAddress(PeerId, Multiaddr),
    Broadcast {
        kind: MessageType,
        state: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Send {
        to: PeerId,
        kind: MessageType,
        state: String,
        reply: oneshot::Sender<Result<Ack, String>>,
    },
}

#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    pub async fn status(&self) -> Option<NetStatus> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    /// From outside the runtime (the agent's control thread).
    pub fn add_address_blocking(&self, peer: PeerId, addr: Multiaddr) {
        let _ = self.tx.blocking_send(Command::AddAddress(peer, addr));
    }

    pub async fn dial(&self, addr: Multiaddr) {
        let _ = self.tx.send(Command::Dial(addr)).await;
    }

    /// Publishes a signed envelope to every peer on the broadcast topic.
    pub async fn broadcast(&self, kind: MessageType, state: String) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Broadcast { kind, state, reply: tx })
            .await
            .map_err(|_| "the p2p layer is down".to_string())?;
        rx.await.map_err(|_| "the p2p layer dropped the request".to_string())?
    }

    pub async fn send(&self, to: PeerId, kind: MessageType, state: String) -> Result<Ack, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Send { to, kind, state, reply: tx })
            .await
            .map_err(|_| "the p2p layer is down".to_string())?;
        rx.await.map_err(|_| "the p2p layer dropped the request".to_string())?
    }
}

pub struct Config {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub trusted: Vec<PeerId>,
    /// Seconds between signing-key rotations (the identity key only delegates).
    pub rotate_every: u64,
}

#[derive(Clone)]
/// Signs envelopes with a short-lived key that the identity key delegates, and rotates
/// it on a schedule. A delegation is valid until the next rotation; receivers accept the
/// previous key for their grace period after that, and never beyond.
struct Signer {
    identity: libp2p::identity::Keypair,
    peer: PeerId,
    every: u64,
    hot: libp2p::identity::Keypair,
    delegation: micro_os_net::Delegation,
    rotated_at: u64,
}

impl Signer {
    fn new(identity: libp2p::identity::Keypair, every: u64, now: u64) -> Signer {
        let hot = libp2p::identity::Keypair::generate_ed25519();
        let delegation = micro_os_net::Delegation::issue(&identity, &hot.public(), now + every);
        let peer = identity.public().to_peer_id();
        Signer { identity, peer, every, hot, delegation, rotated_at: now }
    }

    fn seal(&mut self, kind: MessageType, to: &str, state: String, now: u64) -> Envelope {
        if now >= self.rotated_at + self.every {
            *self = Signer::new(self.identity.clone(), self.every, now);
        }
        Envelope::seal(kind, &self.peer, to, Payload::new(state, 1), now, &self.hot, Some(self.delegation.clone()))
    }
}

/// Outgoing messages wait here by priority: SYNC and CTRL are sent at once, DISC next,
/// and DATA and PING only while fewer than `LOW_IN_FLIGHT` of them are unanswered, so a
/// DATA flood never stands between a peer and a CTRL.
const LOW_IN_FLIGHT: usize = 8;

struct Queued {
    to: PeerId,
    kind: MessageType,
    state: String,
    reply: oneshot::Sender<Result<Ack, String>>,
}

#[derive(Default)]
struct Outbox {
    queues: [std::collections::VecDeque<Queued>; 4],
    low_in_flight: usize,
}

impl Outbox {
    fn push(&mut self, q: Queued) {
        let p = q.kind.priority() as usize;
        self.queues[p].push_back(q);
    }

    /// The next message allowed out now, highest priority first.
    fn pop(&mut self) -> Option<Queued> {
        for p in (0..4).rev() {
            let low = p <= MessageType::Data.priority() as usize;
            if low && self.low_in_flight >= LOW_IN_FLIGHT {
                continue;
            }
            if let Some(q) = self.queues[p].pop_front() {
                if low {
                    self.low_in_flight += 1;
                }
                return Some(q);
            }
        }
        None
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Starts the host peer. `known` says whether a peer may send us messages (beyond the
/// trusted and bootstrap peers): the daemon answers with its VMs' peer ids.
pub fn spawn(
    keypair: libp2p::identity::Keypair,
    cfg: Config,
    nonces: Box<dyn NonceStore + Send>,
    policy: Arc<dyn Policy>,
) -> anyhow::Result<Handle> {
    let peer_id = keypair.public().to_peer_id();
    let mut signer = Signer::new(keypair.clone(), cfg.rotate_every.max(1), now_secs());
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        // noise first, TLS 1.3 (libp2p-tls) offered too: the dialer's first supported wins
        .with_tcp(
            tcp::Config::default().nodelay(true),
            (noise::Config::new, libp2p::tls::Config::new),
            yamux::Config::default,
        )?
        .with_quic()
        .with_behaviour(|key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .heartbeat_interval(Duration::from_secs(1))
                .build()?;
            let gossip = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_cfg)?;
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(512))
                        .with_max_established_incoming(Some(384))
                        .with_max_established_per_peer(Some(4))
                        .with_max_pending_incoming(Some(64))
                        .with_max_pending_outgoing(Some(64)),
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new("/micro-os/id/1".into(), key.public())
                        .with_agent_version(format!("micro-os/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5))),
                msg: request_response::json::Behaviour::new(
                    [(StreamProtocol::new("/micro-os/msg/1"), ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
                ),
                gossip,
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    let topic = gossipsub::IdentTopic::new(BROADCAST_TOPIC);
    swarm.behaviour_mut().gossip.subscribe(&topic)?;
    for a in &cfg.listen {
        if let Err(e) = swarm.listen_on(a.clone()) {
            tracing::warn!("p2p cannot listen on {a}: {e}");
        }
    }
    let mut trusted: Vec<PeerId> = cfg.trusted.clone();
    for a in &cfg.bootstrap {
        if let Some(libp2p::multiaddr::Protocol::P2p(p)) = a.iter().last() {
            trusted.push(p);
        }
        if let Err(e) = swarm.dial(a.clone()) {
            tracing::warn!("bootstrap peer {a}: {e}");
        }
    }
    let (tx, mut rx) = mpsc::channel::<Command>(64);
    let identity = peer_id;
    tokio::spawn(async move {
        let mut verifier = Verifier::new(nonces);
        let mut peers: HashMap<PeerId, PeerInfo> = HashMap::new();
        let mut listen: Vec<Multiaddr> = Vec::new();
        let mut messages: BTreeMap<String, u64> = BTreeMap::new();
        let mut pending: HashMap<request_response::OutboundRequestId, (bool, oneshot::Sender<Result<Ack, String>>)> =
            HashMap::new();
        let mut outbox = Outbox::default();
        loop {
            while let Some(q) = outbox.pop() {
                let low = q.kind.priority() <= MessageType::Data.priority();
                let env = signer.seal(q.kind, &q.to.to_string(), q.state, now_secs());
                let size = env.encoded_len() as u64;
                let id = swarm.behaviour_mut().msg.send_request(&q.to, env);
                let p =
                    peers.entry(q.to).or_insert_with(|| PeerInfo { peer_id: q.to.to_string(), ..Default::default() });
                p.messages_out += 1;
                p.bytes_out += size;
                pending.insert(id, (low, q.reply));
            }
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(Command::Status(reply)) => {
                        let mut list: Vec<PeerInfo> = peers.values().cloned().collect();
                        for p in &mut list {
                            p.score = verifier.scores.get(&p.peer_id).copied().unwrap_or(0);
                        }
                        list.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                        let rejections = verifier.rejected.iter().map(|(k, v)| (format!("{k}"), *v)).collect();
                        let _ = reply.send(NetStatus {
                            peer_id: identity.to_string(),
                            listen: listen.iter().map(|a| a.to_string()).collect(),
                            peers: list,
                            messages: messages.clone(),
                            rejections,
                        });
                    }
                    Some(Command::Broadcast { kind, state, reply }) => {
                        let env = signer.seal(kind, "*", state, now_secs());
                        let r = swarm.behaviour_mut().gossip.publish(topic.clone(), env.encode()).map(drop).map_err(|e| e.to_string());
                        let _ = reply.send(r);
                    }
                    Some(Command::AddAddress(peer, addr)) => {
                        swarm.add_peer_address(peer, addr);
                    }
                    Some(Command::Dial(addr)) => {
                        if let Err(e) = swarm.dial(addr.clone()) {
                            tracing::debug!("dial {addr}: {e}");
                        }
                    }
                    Some(Command::Send { to, kind, state, reply }) => {
                        outbox.push(Queued { to, kind, state, reply });
                    }
                },
                event = swarm.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        tracing::info!("p2p listening on {address}/p2p/{identity}");
                        listen.push(address);
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                        let p = peers.entry(peer_id).or_insert_with(|| PeerInfo { peer_id: peer_id.to_string(), ..Default::default() });
                        p.connected = true;
                        let addr = endpoint.get_remote_address().to_string();
                        if !p.addresses.contains(&addr) {
                            p.addresses.push(addr);
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                        if let Some(p) = peers.get_mut(&peer_id) {
                            p.connected = false;
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message { message, .. })) => {
                        // strict mode: gossipsub checked the author's signature; the envelope
                        // must come from that same author and pass our own checks too
                        let verdict = match (Envelope::decode(&message.data), message.source) {
                            (Ok(env), Some(author)) if env.sender == author.to_string() => {
                                let is_known = |p: &PeerId| trusted.contains(p) || policy.known(p);
                                verifier.verify(&env, now_secs(), is_known).map(|_| env).map_err(|r| r.to_string())
                            }
                            (Ok(_), _) => Err("broadcast author is not the envelope's sender".to_string()),
                            (Err(e), _) => Err(e),
                        };
                        match verdict {
                            Ok(env) => {
                                *messages.entry(env.kind.to_string()).or_default() += 1;
                                if let Some(p) = message.source.and_then(|a| peers.get_mut(&a)) {
                                    p.messages_in += 1;
                                    p.bytes_in += message.data.len() as u64;
                                }
                            }
                            Err(reason) => tracing::warn!("refused a broadcast: {reason}"),
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) => {
                        if let Some(p) = peers.get_mut(&peer) {
                            p.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                        if let Some(p) = peers.get_mut(&peer_id) {
                            p.agent = Some(info.agent_version);
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Msg(request_response::Event::Message { peer, message, .. })) => match message {
                        request_response::Message::Request { request, channel, .. } => {
                            // the envelope must come from the connection's own peer
                            let verdict = if request.sender != peer.to_string() {
                                Err("sender is not the connected peer".to_string())
                            } else {
                                let is_known = |p: &PeerId| trusted.contains(p) || policy.known(p);
                                verifier.verify(&request, now_secs(), is_known).map_err(|r| r.to_string())
                            };
                            let ack = match verdict {
                                Ok(()) => {
                                    *messages.entry(request.kind.to_string()).or_default() += 1;
                                    if let Some(p) = peers.get_mut(&peer) {
                                        p.messages_in += 1;
                                        p.bytes_in += request.encoded_len() as u64;
                                    }
                                    Ack { accepted: true, reason: None }
                                }
                                Err(reason) => {
                                    tracing::warn!("refused {} from {peer}: {reason}", request.kind);
                                    Ack { accepted: false, reason: Some(reason) }
                                }
                            };
                            let _ = swarm.behaviour_mut().msg.send_response(channel, ack);
                        }
                        request_response::Message::Response { request_id, response } => {
                            if let Some((low, r)) = pending.remove(&request_id) {
                                outbox.low_in_flight -= usize::from(low);
                                let _ = r.send(Ok(response));
                            }
                        }
                    },
                    SwarmEvent::Behaviour(BehaviourEvent::Msg(request_response::Event::OutboundFailure { request_id, error, .. })) => {
                        if let Some((low, r)) = pending.remove(&request_id) {
                            outbox.low_in_flight -= usize::from(low);
                            let _ = r.send(Err(error.to_string()));
                        }
                    }
                    _ => {}
                },
            }
        }
    });
    Ok(Handle { tx })
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    #[test]
    fn signing_keys_rotate_and_old_ones_expire_after_the_grace_period() {
        let id = Keypair::generate_ed25519();
        let peer = id.public().to_peer_id();
        let now = 1_700_000_000;
        let mut s = Signer::new(id, 60, now);
        let before = s.clone();
        let first = s.seal(MessageType::Sync, "*", "a".into(), now);
        let later = s.seal(MessageType::Sync, "*", "b".into(), now + 61);
        assert_ne!(first.delegation, later.delegation, "no rotation after the period");
        let mut v = Verifier::new(micro_os_net::MemoryNonces::default());
        v.grace = 30;
        let known = |p: &PeerId| p == &peer;
        assert_eq!(v.verify(&first, now + 20, known), Ok(()));
        assert_eq!(v.verify(&later, now + 61, known), Ok(()));
        // a message signed with the previous key after it was rotated out: accepted for
        // the grace period (not_after = now + 60, grace 30), refused after it
        let old_key = |at| {
            Envelope::seal(
                MessageType::Data,
                &peer,
                "*",
                Payload::new("c", 1),
                at,
                &before.hot,
                Some(before.delegation.clone()),
            )
        };
        assert_eq!(v.verify(&old_key(now + 80), now + 80, known), Ok(()));
        assert_eq!(v.verify(&old_key(now + 95), now + 95, known), Err(micro_os_net::Rejection::ExpiredKey));
    }

    #[test]
    fn the_outbox_lets_high_priority_overtake_a_data_flood() {
        let mut o = Outbox::default();
        let to = Keypair::generate_ed25519().public().to_peer_id();
        let q = |kind| Queued { to, kind, state: String::new(), reply: oneshot::channel().0 };
        for _ in 0..20 {
            o.push(q(MessageType::Data));
        }
        o.push(q(MessageType::Ping));
        let first: Vec<MessageType> = std::iter::from_fn(|| o.pop()).map(|q| q.kind).collect();
        assert_eq!(first.len(), LOW_IN_FLIGHT, "DATA beyond the in-flight cap went out");
        o.push(q(MessageType::Ctrl));
        o.push(q(MessageType::Disc));
        o.push(q(MessageType::Sync));
        // the cap is full, yet CTRL, SYNC and DISC go out at once, highest first
        let next: Vec<MessageType> = std::iter::from_fn(|| o.pop()).map(|q| q.kind).collect();
        assert_eq!(next, [MessageType::Ctrl, MessageType::Sync, MessageType::Disc]);
        o.low_in_flight -= 1; // one DATA answered
        assert_eq!(o.pop().map(|q| q.kind), Some(MessageType::Data));
    }
    use micro_os_net::Rejection;

    #[test]
    fn a_replay_is_refused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let k = Keypair::generate_ed25519();
        let p = k.public().to_peer_id();
        let now = 1_700_000_000;
        let e = Envelope::seal(MessageType::Ctrl, &p, "*", Payload::new("stop", 1), now, &k, None);
        {
            let store = Store::open(&db).unwrap();
            let mut v = Verifier::new(StoredNonces(&store));
            assert_eq!(v.verify(&e, now, |_| true), Ok(()));
        }
        let store = Store::open(&db).unwrap();
        let mut v = Verifier::new(StoredNonces(&store));
        assert_eq!(v.verify(&e, now + 1, |_| true), Err(Rejection::Replayed));
    }
}
