//! The swarm's task: it owns the swarm and everything mutable (verifier, signer, outbox,
//! counters), takes `Command`s from handles and swarm events from libp2p, and hands each
//! to the module that deals with it (`discovery`, `messaging`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{autonat, gossipsub, kad, Multiaddr, PeerId, Swarm};
use micro_os_core::net::{Ack, NetStatus, PeerInfo, Provider};
use micro_os_net::{Envelope, MessageType, NonceStore, Rejection, Verifier};
use tokio::sync::{mpsc, oneshot};

use crate::handle::{Command, Delivery, Handle};
use crate::limits::{self, Limiter, Limits};
use crate::outbox::{Outbox, Queued, Signer};
use crate::swarm::{self, Behaviour, BehaviourEvent};
use crate::{now_secs, stream, Config, Error, Policy};

/// Requests verified together as one ed25519 batch, at most.
const BATCH: usize = 64;

/// A message in flight on `/micro-os/msg/1`: low priority (counts against the outbox's
/// cap), when it left, its size, who waits for the verdict.
pub(crate) type Pending = (bool, Instant, u64, oneshot::Sender<Result<Delivery, Error>>);

/// The swarm and everything its task keeps.
pub(crate) struct Node {
    pub swarm: Swarm<Behaviour>,
    pub id: PeerId,
    pub signer: Signer,
    pub verifier: Verifier<Box<dyn NonceStore + Send>>,
    pub policy: Arc<dyn Policy>,
    pub trusted: Vec<PeerId>,
    pub topic: gossipsub::IdentTopic,
    pub peers: HashMap<PeerId, PeerInfo>,
    pub listen: Vec<Multiaddr>,
    /// Accepted messages by type.
    pub messages: BTreeMap<String, u64>,
    /// Sent messages by type.
    pub sent: BTreeMap<String, u64>,
    pub pending: HashMap<request_response::OutboundRequestId, Pending>,
    pub outbox: Outbox,
    /// Requests waiting to be verified together.
    pub batch: Vec<(PeerId, Envelope, ResponseChannel<Ack>)>,
    pub provides: BTreeSet<String>,
    pub finds: HashMap<kad::QueryId, (BTreeSet<PeerId>, oneshot::Sender<Vec<Provider>>)>,
    pub streams_in: u64,
    pub stream_bytes_in: u64,
    /// Verified requests that a registered protocol's handler refused, by its reason.
    pub refused: BTreeMap<String, u64>,
    /// Listen addresses count as external (a relay server given no external address).
    pub listen_is_external: bool,
    pub leaf: bool,
    /// Addresses asked for with `Command::Listen`, once each.
    pub listen_requested: Vec<Multiaddr>,
    pub bootstrap_every: Duration,
    pub limits: Limits,
    /// Every peer's request budget (shared with the stream tasks).
    pub limiter: Arc<Limiter>,
    /// Banned peers and when their ban ends.
    pub bans: HashMap<PeerId, Instant>,
}

/// Counted when a peer is banned, and for each connection a banned peer tries.
pub(crate) const BANNED: &str = "peer banned";
pub(crate) const BANNED_CONNECTION: &str = "connection from a banned peer";

/// Starts a peer. `policy` says whether a peer may send us messages (beyond the trusted
/// and bootstrap peers): the daemon answers with its VMs' peer ids. Call it from inside a
/// tokio runtime; the swarm runs in a task of it.
pub fn spawn(
    keypair: libp2p::identity::Keypair,
    cfg: Config,
    nonces: Box<dyn NonceStore + Send>,
    policy: Arc<dyn Policy>,
) -> Result<Handle, Error> {
    let id = keypair.public().to_peer_id();
    let signer = Signer::new(keypair.clone(), cfg.rotate_every.max(1), now_secs());
    let mut swarm = swarm::build(keypair, &cfg)?;
    let topic = gossipsub::IdentTopic::new(swarm::BROADCAST_TOPIC);
    swarm.behaviour_mut().gossip.subscribe(&topic).map_err(Error::build)?;
    let mut control = swarm.behaviour().streams.new_control();
    let incoming = control.accept(stream::PROTOCOL).map_err(|_| Error::AlreadyRegistered(stream::PROTOCOL.clone()))?;
    let (tx, rx) = mpsc::channel::<Command>(256);
    let limiter = limits::limiter(&cfg.limits);
    tokio::spawn(stream::serve(incoming, tx.clone(), cfg.inbox.clone(), limiter.clone()));
    let mut node = Node {
        swarm,
        id,
        signer,
        verifier: Verifier::new(nonces),
        policy,
        trusted: cfg.trusted.clone(),
        topic,
        peers: HashMap::new(),
        listen: Vec::new(),
        messages: BTreeMap::new(),
        sent: BTreeMap::new(),
        pending: HashMap::new(),
        outbox: Outbox::default(),
        batch: Vec::new(),
        provides: BTreeSet::new(),
        finds: HashMap::new(),
        streams_in: 0,
        stream_bytes_in: 0,
        refused: BTreeMap::new(),
        listen_is_external: cfg.nat.relay_server && cfg.external.is_empty(),
        leaf: cfg.leaf,
        listen_requested: Vec::new(),
        bootstrap_every: cfg.bootstrap_every.max(Duration::from_millis(10)),
        limits: cfg.limits,
        limiter: limiter.clone(),
        bans: HashMap::new(),
    };
    for a in &cfg.external {
        node.swarm.add_external_address(a.clone());
    }
    for a in &cfg.listen {
        if let Err(e) = node.swarm.listen_on(a.clone()) {
            tracing::warn!("p2p cannot listen on {a}: {e}");
        }
    }
    node.add_bootstrap_peers(&cfg.bootstrap);
    tokio::spawn(node.run(rx));
    Ok(Handle { tx, control, sessions: Default::default(), limiter })
}

impl Node {
    pub fn peer(&mut self, id: PeerId) -> &mut PeerInfo {
        self.peers.entry(id).or_insert_with(|| PeerInfo { peer_id: id.to_string(), ..Default::default() })
    }

    pub fn is_known(trusted: &[PeerId], policy: &Arc<dyn Policy>, p: &PeerId) -> bool {
        trusted.contains(p) || policy.known(p)
    }

    /// Counts a message sent to `peer`.
    pub fn count_sent(&mut self, peer: PeerId, kind: MessageType, bytes: u64) {
        *self.sent.entry(kind.to_string()).or_default() += 1;
        let p = self.peer(peer);
        p.messages_out += 1;
        p.bytes_out += bytes;
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let every = self.bootstrap_every;
        let mut bootstrap = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        bootstrap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // every command waiting goes into the outbox before anything is sent, so a
            // CTRL asked for behind a flood of DATA requests is not stuck in the channel
            // while the loop serves swarm events one at a time
            for _ in 0..1024 {
                match rx.try_recv() {
                    Ok(c) => self.on_command(c),
                    Err(_) => break,
                }
            }
            self.send_queued();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(c) => self.on_command(c),
                },
                _ = bootstrap.tick() => self.bootstrap(),
                _ = second.tick() => self.lift_bans(),
                event = self.swarm.select_next_some() => {
                    self.on_event(event);
                    // what else has arrived joins the batch, so requests are verified together
                    while !self.batch.is_empty() && self.batch.len() < BATCH {
                        match self.swarm.next().now_or_never() {
                            Some(Some(event)) => self.on_event(event),
                            _ => break,
                        }
                    }
                    self.verify_batch();
                }
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Broadcast { kind, state, reply } => {
                let _ = reply.send(self.broadcast(kind, state));
            }
            Command::AddAddress(peer, addr) => {
                self.swarm.add_peer_address(peer, addr.clone());
                self.route(peer, addr);
            }
            Command::AddDhtPeer(peer, addr) => {
                self.swarm.add_peer_address(peer, addr.clone());
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                self.announce();
            }
            Command::Listen(addr) => {
                if !self.listen_requested.contains(&addr) {
                    self.listen_requested.push(addr.clone());
                    if let Err(e) = self.swarm.listen_on(addr.clone()) {
                        tracing::warn!("p2p cannot listen on {addr}: {e}");
                    }
                }
            }
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!("dial {addr}: {e}");
                }
            }
            Command::Connect(peer, addr) => {
                use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
                if !self.swarm.is_connected(&peer) {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(vec![addr])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!("connect {peer}: {e}");
                    }
                }
            }
            Command::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Send { to, kind, state, reply } => self.outbox.push(Queued { to, kind, state, reply }),
            Command::Seal { kind, to, state, reply } => {
                let _ = reply.send(self.signer.seal(kind, &to.to_string(), state, now_secs()));
            }
            Command::Verify { peer, env, counts, open, reply } => {
                let _ = reply.send(self.verify_on_stream(peer, &env, counts, open));
            }
            Command::Received(r) => self.received_stream(r),
            Command::Sent(peer, kind, bytes) => self.count_sent(peer, kind, bytes),
            Command::Counted(peer, kind, bytes) => self.count_frame(peer, kind, bytes),
            Command::Refused(peer, why) => {
                *self.refused.entry(why).or_default() += 1;
                *self.verifier.scores.entry(peer.to_string()).or_default() -= 10;
                self.judge(peer);
            }
            Command::Penalty(peer, why) => self.refuse(peer, why),
            Command::Provide(keys) => self.provide(keys),
            Command::Find(key, reply) => self.find(key, reply),
        }
    }

    /// Counts a refusal of `peer`'s message and charges its score.
    pub fn refuse(&mut self, peer: PeerId, why: Rejection) {
        self.verifier.reject(&peer.to_string(), why);
        self.judge(peer);
    }

    /// Bans `peer` if its score has fallen below the limit: every connection to it is
    /// closed, and new ones are refused until the ban ends.
    pub fn judge(&mut self, peer: PeerId) {
        let score = self.verifier.scores.get(&peer.to_string()).copied().unwrap_or(0);
        if score >= self.limits.ban_below || self.bans.contains_key(&peer) || peer == self.id {
            return;
        }
        let ban = Duration::from_secs(self.limits.ban_s);
        tracing::warn!("banned {peer} for {ban:?}: its score {score} fell below {}", self.limits.ban_below);
        self.bans.insert(peer, Instant::now() + ban);
        self.swarm.behaviour_mut().banned.block_peer(peer);
        *self.refused.entry(BANNED.to_string()).or_default() += 1;
    }

    /// Lifts the bans that have ended (the peer starts again from a score of 0) and
    /// forgets the request budgets of peers that have been quiet.
    fn lift_bans(&mut self) {
        let now = Instant::now();
        let ended: Vec<PeerId> = self.bans.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        for peer in ended {
            tracing::info!("the ban of {peer} has ended");
            self.bans.remove(&peer);
            self.swarm.behaviour_mut().banned.unblock_peer(peer);
            self.verifier.scores.insert(peer.to_string(), 0);
        }
        self.limiter.retain_recent();
    }

    pub fn status(&self) -> NetStatus {
        let mut list: Vec<PeerInfo> = self.peers.values().cloned().collect();
        for p in &mut list {
            p.score = self.verifier.scores.get(&p.peer_id).copied().unwrap_or(0);
        }
        list.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        let nat = self.swarm.behaviour().autonat.as_ref().map(|a| match a.nat_status() {
            autonat::NatStatus::Public(addr) => format!("public ({addr})"),
            autonat::NatStatus::Private => "private".to_string(),
            autonat::NatStatus::Unknown => "unknown".to_string(),
        });
        NetStatus {
            peer_id: self.id.to_string(),
            listen: self.listen.iter().map(|a| a.to_string()).collect(),
            peers: list,
            messages: self.messages.clone(),
            messages_sent: self.sent.clone(),
            rejections: self
                .verifier
                .rejected
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .chain(self.refused.iter().map(|(k, v)| (k.clone(), *v)))
                .collect(),
            nat,
            provides: self.provides.iter().cloned().collect(),
            streams_in: self.streams_in,
            stream_bytes_in: self.stream_bytes_in,
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => self.new_listen_addr(address),
            SwarmEvent::ExpiredListenAddr { address, .. } => self.listen.retain(|a| a != &address),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                let p = self.peer(peer_id);
                p.connected = true;
                let addr = endpoint.get_remote_address().to_string();
                if !p.addresses.contains(&addr) {
                    p.addresses.push(addr);
                }
                if endpoint.is_relayed() {
                    p.discovered_by("relay");
                }
            }
            SwarmEvent::IncomingConnectionError { peer_id: Some(peer), error, .. } if self.bans.contains_key(&peer) => {
                tracing::debug!("refused a connection from banned {peer}: {error}");
                *self.refused.entry(BANNED_CONNECTION.to_string()).or_default() += 1;
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.connected = false;
                }
            }
            SwarmEvent::Behaviour(e) => self.on_behaviour(e),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossip(gossipsub::Event::Message { message, .. }) => self.on_broadcast(message),
            BehaviourEvent::Msg(e) => self.on_msg(e),
            BehaviourEvent::Ping(e) => {
                // a connection whose ping times out is dead (a cut link, a frozen peer):
                // closed, so that the next request dials afresh instead of queueing on it
                // until TCP gives up (a peer without ping is left alone)
                if let Err(libp2p::ping::Failure::Timeout) = &e.result {
                    tracing::info!("ping {} timed out: closing that connection", e.peer);
                    self.swarm.close_connection(e.connection);
                }
                self.on_ping(e)
            }
            BehaviourEvent::Identify(e) => self.on_identify(e),
            BehaviourEvent::Mdns(e) => self.on_mdns(e),
            BehaviourEvent::Kad(e) => self.on_kad(e),
            BehaviourEvent::Dcutr(e) => tracing::info!("dcutr: {e:?}"),
            BehaviourEvent::RelayClient(e) => tracing::info!("relay client: {e:?}"),
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                tracing::info!("autonat: {old:?} -> {new:?}");
            }
            _ => {}
        }
    }
}

/// How a peer was found, noted once per way.
pub(crate) trait Discovered {
    fn discovered_by(&mut self, how: &str);
}

impl Discovered for PeerInfo {
    fn discovered_by(&mut self, how: &str) {
        if !self.discovered.iter().any(|d| d == how) {
            self.discovered.push(how.to_string());
        }
    }
}
