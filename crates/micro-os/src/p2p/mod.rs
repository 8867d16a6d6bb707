//! A micro-os libp2p peer — the host's (in the daemon) and every VM's (in its agent):
//! TCP (noise or TLS 1.3, + yamux) and QUIC, identify, ping, connection limits, mDNS and
//! Kademlia (`/micro-os/kad/1`) for discovery and for the resources a VM offers, relay v2,
//! dcutr and autonat where configured, the versioned request-response protocol
//! `/micro-os/msg/1` for signed envelopes (`micro_os_net`), gossipsub for broadcasts, and
//! `/micro-os/data/1` for DATA too large for one envelope (`stream`).
//!
//! Every envelope is verified — signature, known sender, time window, nonce (the host
//! remembers them in its store, so replays fail after a restart too) — before it counts;
//! requests that arrive together are verified as one ed25519 batch. Rejections are
//! counted by reason and cost the peer score.
//!
//! The swarm runs in one task (`Node`); the rest of the process talks to it with
//! `Command`s through a `Handle`.

mod outbox;
pub mod stream;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, noise, ping, relay, tcp, yamux, Multiaddr,
    PeerId, StreamProtocol, Swarm,
};
use micro_os_api::types::{Ack, NetStatus, PeerInfo, Provider};
use micro_os_core::net::{quantile, SendJob, SendReport};
use micro_os_net::{Envelope, MessageType, NonceStore, Rejection, Verifier};
use micro_os_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use outbox::{Outbox, Queued, Signer};

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
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    relay: Toggle<relay::Behaviour>,
    relay_client: Toggle<relay::client::Behaviour>,
    dcutr: Toggle<dcutr::Behaviour>,
    autonat: Toggle<autonat::Behaviour>,
    data: libp2p_stream::Behaviour,
}

/// The broadcast topic: envelopes to "*", in gossipsub's strict signing mode.
const BROADCAST_TOPIC: &str = "/micro-os/broadcast/1";
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/micro-os/kad/1");
/// Requests verified together as one ed25519 batch, at most.
const BATCH: usize = 64;

/// Who may send us messages, besides the configured trusted and bootstrap peers.
pub trait Policy: Send + Sync + 'static {
    fn known(&self, peer: &PeerId) -> bool;
}

/// NAT traversal, per host: autonat finds out whether we are reachable, a relay server
/// (circuit relay v2) serves peers that are not, a relay client reserves a slot on a
/// relay (listen on `<relay addr>/p2p-circuit`) and dcutr upgrades relayed connections
/// to direct ones by hole punching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Nat {
    pub autonat: bool,
    pub relay_server: bool,
    pub relay_client: bool,
}

pub struct Config {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub trusted: Vec<PeerId>,
    /// Seconds between signing-key rotations (the identity key only delegates).
    pub rotate_every: u64,
    /// Find peers on the local network by multicast DNS.
    pub mdns: bool,
    pub nat: Nat,
    /// Addresses others reach us at (behind NAT, a forwarded port). A relay server serves
    /// only when it has one; without any given, its listen addresses count.
    pub external: Vec<Multiaddr>,
    /// Where named DATA streams are kept once verified; without it they are counted only.
    pub inbox: Option<PathBuf>,
    /// A leaf of the DHT (a VM's agent): a Kademlia client whose routing table holds only
    /// the peers given with `Handle::add_dht_peer` (its host); peers it finds by mDNS are
    /// noted, not dialed. So a host's VMs do not grow a full mesh of connections (each
    /// costs about a MiB, and gossipsub keeps mesh connections open).
    pub leaf: bool,
}

/// One delivered message: the receiver's verdict, the round trip from leaving the outbox
/// to the verdict, and its size on the wire.
pub struct Delivery {
    pub ack: Ack,
    pub rtt: Duration,
    pub bytes: u64,
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
        reply: oneshot::Sender<Result<Delivery, String>>,
    },
    /// Sign an envelope with the current key (a stream's header).
    Seal {
        kind: MessageType,
        to: PeerId,
        state: String,
        reply: oneshot::Sender<Envelope>,
    },
    /// A data stream's header, to verify before its body is read.
    VerifyStream {
        peer: PeerId,
        env: Box<Envelope>,
        reply: oneshot::Sender<Result<(), Rejection>>,
    },
    /// A data stream has been read (accepted or refused).
    Received(stream::Received),
    /// We sent a data stream of this many bytes.
    Streamed(PeerId, u64),
    /// Advertise exactly these resource keys as provider records.
    Provide(Vec<String>),
    /// A peer for the DHT's routing table (a leaf's host), at this address.
    AddDhtPeer(PeerId, Multiaddr),
    /// Listen on one more address.
    Listen(Multiaddr),
    /// The providers of a resource key.
    Find(String, oneshot::Sender<Vec<Provider>>),
}

#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| "the p2p layer is down".to_string())?;
        rx.await.map_err(|_| "the p2p layer dropped the request".to_string())
    }

    pub async fn status(&self) -> Option<NetStatus> {
        self.ask(Command::Status).await.ok()
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

    pub async fn find(&self, key: String) -> Result<Vec<Provider>, String> {
        self.ask(|tx| Command::Find(key, tx)).await
    }

    pub async fn dial(&self, addr: Multiaddr) {
        let _ = self.tx.send(Command::Dial(addr)).await;
    }

    /// Publishes a signed envelope to every peer on the broadcast topic.
    pub async fn broadcast(&self, kind: MessageType, state: String) -> Result<(), String> {
        self.ask(|reply| Command::Broadcast { kind, state, reply }).await?
    }

    pub async fn send(&self, to: PeerId, kind: MessageType, state: String) -> Result<Delivery, String> {
        self.ask(|reply| Command::Send { to, kind, state, reply }).await?
    }

    /// Sends a DATA stream; gives the body's length and checksum once the receiver accepted it.
    pub async fn send_stream(
        &self,
        to: PeerId,
        header: stream::StreamHeader,
        body: stream::Source,
    ) -> Result<(u64, String), String> {
        let state = serde_json::to_string(&header).expect("headers serialise");
        let env = self.ask(|reply| Command::Seal { kind: MessageType::Data, to, state, reply }).await?;
        let mut control = self.control.clone();
        let sent = stream::send(&mut control, to, &env, body).await?;
        let _ = self.tx.send(Command::Streamed(to, sent.0 + env.encoded_len() as u64)).await;
        Ok(sent)
    }

    /// Runs a `net send`: `count` messages (padded to `size`), or one DATA stream.
    pub async fn run(&self, job: SendJob) -> SendReport {
        let Ok(to) = job.to.parse::<PeerId>() else {
            return SendReport::failed(format!("peer id {:?} is malformed", job.to));
        };
        let Ok(kind) = serde_json::from_value::<MessageType>(serde_json::Value::String(job.kind.to_uppercase())) else {
            return SendReport::failed(format!(
                "message type {:?} is unknown (use SYNC, DISC, DATA, CTRL or PING)",
                job.kind
            ));
        };
        let started = Instant::now();
        if job.stream || job.file.is_some() {
            if kind != MessageType::Data {
                return SendReport::failed("only DATA travels as a stream");
            }
            let mut report = match self.stream_job(to, &job).await {
                Ok((bytes, sum)) => {
                    SendReport { accepted: true, sent: 1, bytes, checksum: Some(sum), ..Default::default() }
                }
                Err(e) => SendReport::failed(e),
            };
            report.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            return report;
        }
        let mut state = job.state;
        if let Some(size) = job.size {
            state.extend(std::iter::repeat_n('x', (size as usize).saturating_sub(state.len())));
        }
        let count = job.count.max(1);
        let results = futures_util::future::join_all((0..count).map(|_| self.send(to, kind, state.clone()))).await;
        let mut report = SendReport { sent: u64::from(count), accepted: true, ..Default::default() };
        report.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut rtts = Vec::with_capacity(results.len());
        for r in results {
            let why = match r {
                Ok(d) => {
                    report.bytes += d.bytes;
                    rtts.push(d.rtt.as_secs_f64() * 1000.0);
                    if d.ack.accepted {
                        continue;
                    }
                    d.ack.reason.unwrap_or_default()
                }
                Err(e) => e,
            };
            report.refused += 1;
            report.accepted = false;
            report.reason.get_or_insert(why);
        }
        rtts.sort_by(f64::total_cmp);
        report.p50_ms = quantile(&rtts, 0.5);
        report.p99_ms = quantile(&rtts, 0.99);
        report
    }

    async fn stream_job(&self, to: PeerId, job: &SendJob) -> Result<(u64, String), String> {
        match &job.file {
            Some(path) => {
                let p = PathBuf::from(path);
                // checksummed first: the header carries it signed, so the receiver checks
                // the file end to end (a file that changes while it is sent is refused)
                let sum = tokio::task::spawn_blocking({
                    let p = p.clone();
                    move || stream::checksum_file(&p)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("file {path} cannot be read: {e}"))?;
                let file = tokio::fs::File::open(&p).await.map_err(|e| format!("file {path} cannot be read: {e}"))?;
                let size = file.metadata().await.map_err(|e| e.to_string())?.len();
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                let header = stream::StreamHeader { size, xxh3: Some(sum), name };
                self.send_stream(to, header, Box::new(file)).await
            }
            None => {
                use tokio::io::AsyncReadExt;
                let size = job.size.unwrap_or(0);
                let header = stream::StreamHeader { size, xxh3: None, name: None };
                self.send_stream(to, header, Box::new(tokio::io::repeat(0x6d).take(size))).await
            }
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

type Pending = (bool, Instant, u64, oneshot::Sender<Result<Delivery, String>>);

/// The swarm and everything its task keeps.
struct Node {
    swarm: Swarm<Behaviour>,
    id: PeerId,
    signer: Signer,
    verifier: Verifier<Box<dyn NonceStore + Send>>,
    policy: Arc<dyn Policy>,
    trusted: Vec<PeerId>,
    topic: gossipsub::IdentTopic,
    peers: HashMap<PeerId, PeerInfo>,
    listen: Vec<Multiaddr>,
    messages: BTreeMap<String, u64>,
    pending: HashMap<request_response::OutboundRequestId, Pending>,
    outbox: Outbox,
    /// Requests waiting to be verified together.
    batch: Vec<(PeerId, Envelope, ResponseChannel<Ack>)>,
    provides: BTreeSet<String>,
    finds: HashMap<kad::QueryId, (BTreeSet<PeerId>, oneshot::Sender<Vec<Provider>>)>,
    streams_in: u64,
    stream_bytes_in: u64,
    /// Listen addresses count as external (a relay server given no external address).
    listen_is_external: bool,
    leaf: bool,
    /// Addresses asked for with `Command::Listen`, once each.
    listen_requested: Vec<Multiaddr>,
}

fn build(keypair: libp2p::identity::Keypair, cfg: &Config) -> anyhow::Result<Swarm<Behaviour>> {
    let nat = cfg.nat;
    let mdns_on = cfg.mdns;
    let leaf = cfg.leaf;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        // noise first, TLS 1.3 (libp2p-tls) offered too: the dialer's first supported wins
        .with_tcp(
            tcp::Config::default().nodelay(true),
            (noise::Config::new, libp2p::tls::Config::new),
            yamux::Config::default,
        )?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            let me = key.public().to_peer_id();
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .heartbeat_interval(Duration::from_secs(1))
                .build()?;
            let gossip = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_cfg)?;
            let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
            kad_cfg.set_query_timeout(Duration::from_secs(10));
            // the routing table holds only peers we put there (bootstrap peers, DHT servers
            // that identify, mDNS neighbours of a host, a leaf's host): kad would otherwise
            // add every VM the host dials, and queries would then connect VMs to each other
            kad_cfg.set_kbucket_inserts(kad::BucketInserts::Manual);
            let mut kad = kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), kad_cfg);
            // a host serves the DHT (it has no confirmed external address, yet must answer
            // queries); a leaf only asks and advertises through its host, so its siblings
            // never learn of it from the DHT and never connect just to run a query
            kad.set_mode(Some(if leaf { kad::Mode::Client } else { kad::Mode::Server }));
            let mdns = if mdns_on { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), me)?) } else { None };
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
                kad,
                mdns: mdns.into(),
                relay: nat.relay_server.then(|| relay::Behaviour::new(me, relay::Config::default())).into(),
                relay_client: nat.relay_client.then_some(relay_client).into(),
                dcutr: nat.relay_client.then(|| dcutr::Behaviour::new(me)).into(),
                autonat: nat.autonat.then(|| autonat::Behaviour::new(me, autonat::Config::default())).into(),
                data: libp2p_stream::Behaviour::new(),
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}

/// Starts a peer. `policy` says whether a peer may send us messages (beyond the trusted
/// and bootstrap peers): the daemon answers with its VMs' peer ids.
pub fn spawn(
    keypair: libp2p::identity::Keypair,
    cfg: Config,
    nonces: Box<dyn NonceStore + Send>,
    policy: Arc<dyn Policy>,
) -> anyhow::Result<Handle> {
    let id = keypair.public().to_peer_id();
    let signer = Signer::new(keypair.clone(), cfg.rotate_every.max(1), now_secs());
    let mut swarm = build(keypair, &cfg)?;
    let topic = gossipsub::IdentTopic::new(BROADCAST_TOPIC);
    swarm.behaviour_mut().gossip.subscribe(&topic)?;
    let mut control = swarm.behaviour().data.new_control();
    let incoming = control.accept(stream::PROTOCOL).map_err(|e| anyhow::anyhow!("data protocol: {e}"))?;
    let (tx, rx) = mpsc::channel::<Command>(256);
    tokio::spawn(stream::serve(incoming, tx.clone(), cfg.inbox.clone()));
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
        pending: HashMap::new(),
        outbox: Outbox::default(),
        batch: Vec::new(),
        provides: BTreeSet::new(),
        finds: HashMap::new(),
        streams_in: 0,
        stream_bytes_in: 0,
        listen_is_external: cfg.nat.relay_server && cfg.external.is_empty(),
        leaf: cfg.leaf,
        listen_requested: Vec::new(),
    };
    for a in &cfg.external {
        node.swarm.add_external_address(a.clone());
    }
    for a in &cfg.listen {
        if let Err(e) = node.swarm.listen_on(a.clone()) {
            tracing::warn!("p2p cannot listen on {a}: {e}");
        }
    }
    for a in &cfg.bootstrap {
        if let Some(libp2p::multiaddr::Protocol::P2p(p)) = a.iter().last() {
            node.trusted.push(p);
            node.swarm.behaviour_mut().kad.add_address(&p, a.clone());
            node.peer(p).discovered_by("bootstrap");
        }
        if let Err(e) = node.swarm.dial(a.clone()) {
            tracing::warn!("bootstrap peer {a}: {e}");
        }
    }
    tokio::spawn(node.run(rx));
    Ok(Handle { tx, control })
}

trait Discovered {
    fn discovered_by(&mut self, how: &str);
}

impl Discovered for PeerInfo {
    fn discovered_by(&mut self, how: &str) {
        if !self.discovered.iter().any(|d| d == how) {
            self.discovered.push(how.to_string());
        }
    }
}

impl Node {
    fn peer(&mut self, id: PeerId) -> &mut PeerInfo {
        self.peers.entry(id).or_insert_with(|| PeerInfo { peer_id: id.to_string(), ..Default::default() })
    }

    fn is_known(trusted: &[PeerId], policy: &Arc<dyn Policy>, p: &PeerId) -> bool {
        trusted.contains(p) || policy.known(p)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
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

    fn send_queued(&mut self) {
        while let Some(q) = self.outbox.pop() {
            let low = q.kind.priority() <= MessageType::Data.priority();
            let env = self.signer.seal(q.kind, &q.to.to_string(), q.state, now_secs());
            let size = env.encoded_len() as u64;
            let id = self.swarm.behaviour_mut().msg.send_request(&q.to, env);
            let p = self.peer(q.to);
            p.messages_out += 1;
            p.bytes_out += size;
            self.pending.insert(id, (low, Instant::now(), size, q.reply));
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Broadcast { kind, state, reply } => {
                let env = self.signer.seal(kind, "*", state, now_secs());
                let topic = self.topic.clone();
                let r = self.swarm.behaviour_mut().gossip.publish(topic, env.encode()).map(drop);
                let _ = reply.send(r.map_err(|e| e.to_string()));
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
            Command::Send { to, kind, state, reply } => self.outbox.push(Queued { to, kind, state, reply }),
            Command::Seal { kind, to, state, reply } => {
                let _ = reply.send(self.signer.seal(kind, &to.to_string(), state, now_secs()));
            }
            Command::VerifyStream { peer, env, reply } => {
                let verdict = if env.sender != peer.to_string() {
                    Err(self.verifier.reject(&env.sender, Rejection::UnknownSender))
                } else {
                    let (trusted, policy) = (&self.trusted, &self.policy);
                    self.verifier.verify(&env, now_secs(), |p| Self::is_known(trusted, policy, p))
                };
                if let Err(r) = &verdict {
                    tracing::warn!("refused a data stream from {peer}: {r}");
                }
                let _ = reply.send(verdict);
            }
            Command::Received(r) => {
                let p = self.peer(r.peer);
                p.bytes_in += r.bytes;
                match r.result {
                    Ok(()) => {
                        p.messages_in += 1;
                        self.streams_in += 1;
                        self.stream_bytes_in += r.bytes;
                        *self.messages.entry(MessageType::Data.to_string()).or_default() += 1;
                    }
                    Err(why) => {
                        tracing::warn!("refused a data stream from {}: {why}", r.peer);
                        self.verifier.reject(&r.peer.to_string(), why);
                    }
                }
            }
            Command::Streamed(peer, bytes) => {
                let p = self.peer(peer);
                p.messages_out += 1;
                p.bytes_out += bytes;
            }
            Command::Provide(keys) => {
                let keys: BTreeSet<String> = keys.into_iter().collect();
                for gone in self.provides.difference(&keys) {
                    self.swarm.behaviour_mut().kad.stop_providing(&kad::RecordKey::new(gone));
                }
                self.provides = keys;
                self.announce();
            }
            Command::Find(key, reply) => {
                let q = self.swarm.behaviour_mut().kad.get_providers(kad::RecordKey::new(&key));
                self.finds.insert(q, (BTreeSet::new(), reply));
            }
        }
    }

    /// A peer's address learned from the network goes into the DHT's routing table,
    /// unless this peer is a leaf, whose table holds only its host (`AddDhtPeer`).
    fn route(&mut self, peer: PeerId, addr: Multiaddr) {
        if !self.leaf {
            self.swarm.behaviour_mut().kad.add_address(&peer, addr);
        }
    }

    /// (Re)publishes our provider records to the closest peers we know.
    fn announce(&mut self) {
        for k in &self.provides {
            if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(kad::RecordKey::new(k)) {
                tracing::warn!("advertise {k}: {e}");
            }
        }
    }

    fn status(&self) -> NetStatus {
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
            rejections: self.verifier.rejected.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            nat,
            provides: self.provides.iter().cloned().collect(),
            streams_in: self.streams_in,
            stream_bytes_in: self.stream_bytes_in,
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!("p2p listening on {address}/p2p/{}", self.id);
                // a VM's bridge address is reachable by everyone it deals with: it goes into
                // the provider records the VM publishes, so askers learn where to find it
                let loopback =
                    address.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_loopback()));
                if self.listen_is_external || (self.leaf && !loopback) {
                    self.swarm.add_external_address(address.clone());
                }
                self.listen.push(address);
            }
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
            BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. }) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                // the listen addresses of peers that serve the DHT go into its routing table
                // (not a leaf's: it knows only its host; not agents': they are clients, or
                // queries would send their askers to every VM); loopback ones only when
                // they are on our loopback too
                let local =
                    self.peers.get(&peer_id).is_some_and(|p| p.addresses.iter().any(|a| a.contains("/127.0.0.1/")));
                let serves = info.protocols.contains(&KAD_PROTOCOL);
                for a in info.listen_addrs.into_iter().filter(|_| serves) {
                    let loopback =
                        a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_loopback()));
                    if local || !loopback {
                        self.route(peer_id, a);
                    }
                }
                self.peer(peer_id).agent = Some(info.agent_version);
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if peer == self.id {
                        continue;
                    }
                    self.swarm.add_peer_address(peer, addr.clone());
                    self.peer(peer).discovered_by("mdns");
                    self.route(peer, addr);
                    if !self.leaf && !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, is_new_peer, .. }) => {
                if !self.peers.contains_key(&peer) {
                    self.peer(peer).discovered_by("kad");
                }
                // a new neighbour may be closer to our keys than any before
                if is_new_peer && !self.provides.is_empty() {
                    self.announce();
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(r),
                step,
                ..
            }) => {
                if let (Some((found, _)), Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) =
                    (self.finds.get_mut(&id), r)
                {
                    found.extend(providers);
                }
                if step.last {
                    if let Some((found, reply)) = self.finds.remove(&id) {
                        let list = found.into_iter().map(|p| self.provider(p)).collect();
                        let _ = reply.send(list);
                    }
                }
            }
            BehaviourEvent::Msg(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.batch.push((peer, request, channel))
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some((low, at, bytes, r)) = self.pending.remove(&request_id) {
                        self.outbox.low_in_flight -= usize::from(low);
                        let _ = r.send(Ok(Delivery { ack: response, rtt: at.elapsed(), bytes }));
                    }
                }
            },
            BehaviourEvent::Msg(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                if let Some((low, _, _, r)) = self.pending.remove(&request_id) {
                    self.outbox.low_in_flight -= usize::from(low);
                    let _ = r.send(Err(error.to_string()));
                }
            }
            BehaviourEvent::Dcutr(e) => tracing::info!("dcutr: {e:?}"),
            BehaviourEvent::RelayClient(e) => tracing::info!("relay client: {e:?}"),
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                tracing::info!("autonat: {old:?} -> {new:?}");
            }
            _ => {}
        }
    }

    fn provider(&self, p: PeerId) -> Provider {
        let info = self.peers.get(&p);
        Provider {
            peer_id: p.to_string(),
            vm: None,
            addresses: info.map(|i| i.addresses.clone()).unwrap_or_default(),
            connected: info.is_some_and(|i| i.connected) || p == self.id,
        }
    }

    fn on_broadcast(&mut self, message: gossipsub::Message) {
        // strict mode: gossipsub checked the author's signature; the envelope must come
        // from that same author and pass our own checks too
        let verdict = match (Envelope::decode(&message.data), message.source) {
            (Ok(env), Some(author)) if env.sender == author.to_string() => {
                let (trusted, policy) = (&self.trusted, &self.policy);
                self.verifier
                    .verify(&env, now_secs(), |p| Self::is_known(trusted, policy, p))
                    .map(|_| env)
                    .map_err(|r| r.to_string())
            }
            (Ok(_), _) => Err("broadcast author is not the envelope's sender".to_string()),
            (Err(e), _) => Err(e.to_string()),
        };
        match verdict {
            Ok(env) => {
                *self.messages.entry(env.kind.to_string()).or_default() += 1;
                if let Some(p) = message.source.and_then(|a| self.peers.get_mut(&a)) {
                    p.messages_in += 1;
                    p.bytes_in += message.data.len() as u64;
                }
            }
            Err(reason) => tracing::warn!("refused a broadcast: {reason}"),
        }
    }

    /// Verifies the requests that arrived together — one ed25519 batch — and answers each.
    fn verify_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut envs = Vec::with_capacity(self.batch.len());
        let mut from = Vec::with_capacity(self.batch.len());
        for (peer, env, channel) in std::mem::take(&mut self.batch) {
            // the envelope must come from the connection's own peer
            if env.sender == peer.to_string() {
                envs.push(env);
                from.push((peer, channel));
            } else {
                self.answer(peer, &env, channel, Err("sender is not the connected peer".to_string()));
            }
        }
        let (trusted, policy) = (&self.trusted, &self.policy);
        let verdicts = self.verifier.verify_batch(&envs, now_secs(), |p| Self::is_known(trusted, policy, p));
        for ((env, (peer, channel)), verdict) in envs.into_iter().zip(from).zip(verdicts) {
            self.answer(peer, &env, channel, verdict.map_err(|r| r.to_string()));
        }
    }

    /// Counts a request's verdict and sends it back as the request's `Ack`.
    fn answer(&mut self, peer: PeerId, env: &Envelope, channel: ResponseChannel<Ack>, verdict: Result<(), String>) {
        let ack = match verdict {
            Ok(()) => {
                *self.messages.entry(env.kind.to_string()).or_default() += 1;
                let p = self.peer(peer);
                p.messages_in += 1;
                p.bytes_in += env.encoded_len() as u64;
                Ack { accepted: true, reason: None }
            }
            Err(reason) => {
                tracing::warn!("refused {} from {peer}: {reason}", env.kind);
                Ack { accepted: false, reason: Some(reason) }
            }
        };
        let _ = self.swarm.behaviour_mut().msg.send_response(channel, ack);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;
    use micro_os_net::{MemoryNonces, Payload, Rejection};

    struct Anyone;

    impl Policy for Anyone {
        fn known(&self, _: &PeerId) -> bool {
            true
        }
    }

    fn node(listen: &[&str], nat: Nat) -> (Handle, PeerId) {
        node_with_inbox(listen, nat, None)
    }

    fn node_with_inbox(listen: &[&str], nat: Nat, inbox: Option<PathBuf>) -> (Handle, PeerId) {
        let k = Keypair::generate_ed25519();
        let id = k.public().to_peer_id();
        let cfg = Config {
            listen: listen.iter().map(|a| a.parse().unwrap()).collect(),
            bootstrap: vec![],
            trusted: vec![],
            rotate_every: 3600,
            mdns: false,
            nat,
            external: vec![],
            inbox,
            leaf: false,
        };
        (spawn(k, cfg, Box::new(MemoryNonces::default()), Arc::new(Anyone)).unwrap(), id)
    }

    async fn listening(h: &Handle) -> Multiaddr {
        for _ in 0..100 {
            if let Some(a) = h.status().await.and_then(|s| s.listen.into_iter().next()) {
                return a.parse().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the peer never listened");
    }

    fn header(size: usize, xxh3: Option<String>) -> stream::StreamHeader {
        stream::StreamHeader { size: size as u64, xxh3, name: None }
    }

    #[tokio::test]
    async fn a_corrupted_or_truncated_data_stream_is_refused_and_counted() {
        let (a, _) = node(&["/ip4/127.0.0.1/tcp/0"], Nat::default());
        let (b, b_id) = node(&["/ip4/127.0.0.1/tcp/0"], Nat::default());
        a.tx.send(Command::AddAddress(b_id, listening(&b).await)).await.unwrap();
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i| (i % 251) as u8).collect();
        let sum = stream::hex128(xxhash_rust::xxh3::xxh3_128(&data));
        let body = |d: &Vec<u8>| -> stream::Source { Box::new(std::io::Cursor::new(d.clone())) };

        let sent = a.send_stream(b_id, header(data.len(), Some(sum.clone())), body(&data)).await.unwrap();
        assert_eq!(sent, (data.len() as u64, sum.clone()));
        // the body differs from what the signed header promised (a file that changed
        // after it was hashed, a bit flipped before the transport)
        let mut flipped = data.clone();
        flipped[1_000_000] ^= 1;
        let err = a.send_stream(b_id, header(data.len(), Some(sum.clone())), body(&flipped)).await.unwrap_err();
        assert!(err.contains("stream checksum does not match"), "{err}");
        // shorter than declared
        let err = a.send_stream(b_id, header(data.len() + 100, None), body(&data)).await.unwrap_err();
        assert!(err.contains("stream truncated"), "{err}");
        // no hash up front, and a trailer that does not match the body
        let env = a
            .ask(|reply| Command::Seal {
                kind: MessageType::Data,
                to: b_id,
                state: serde_json::to_string(&header(4, None)).unwrap(),
                reply,
            })
            .await
            .unwrap();
        let mut s = a.control.clone().open_stream(b_id, stream::PROTOCOL).await.unwrap();
        use futures_util::{AsyncReadExt, AsyncWriteExt};
        let head = env.encode();
        s.write_all(&(head.len() as u32).to_be_bytes()).await.unwrap();
        s.write_all(&head).await.unwrap();
        let mut go = [0u8; 3];
        s.read_exact(&mut go).await.unwrap();
        assert_eq!(&go, b"go\n");
        s.write_all(b"abcd").await.unwrap();
        s.write_all(&xxhash_rust::xxh3::xxh3_128(b"abce").to_be_bytes()).await.unwrap();
        s.close().await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "refused stream checksum does not match\n");

        let st = b.status().await.unwrap();
        assert_eq!(st.rejections.get("stream checksum does not match"), Some(&2), "{st:?}");
        assert_eq!(st.rejections.get("stream truncated"), Some(&1), "{st:?}");
        assert_eq!((st.streams_in, st.stream_bytes_in), (1, data.len() as u64), "only the good stream counts");
        assert_eq!(st.messages.get("DATA"), Some(&1));
    }

    #[tokio::test]
    async fn named_streams_are_kept_when_they_fit() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        let (a, _) = node(&["/ip4/127.0.0.1/tcp/0"], Nat::default());
        let (b, b_id) = node_with_inbox(&["/ip4/127.0.0.1/tcp/0"], Nat::default(), Some(inbox.clone()));
        a.tx.send(Command::AddAddress(b_id, listening(&b).await)).await.unwrap();
        let data = b"block 1\nblock 2\n".to_vec();
        let named = |size: u64, name: &str| stream::StreamHeader { size, xxh3: None, name: Some(name.into()) };
        let body: stream::Source = Box::new(std::io::Cursor::new(data.clone()));
        a.send_stream(b_id, named(data.len() as u64, "../../chain.txt"), body).await.unwrap();
        // kept under its base name only, inside the inbox
        assert_eq!(std::fs::read(inbox.join("chain.txt")).unwrap(), data);
        // one that cannot fit on the disk is refused before any of it is sent
        let body: stream::Source = Box::new(tokio::io::AsyncReadExt::take(tokio::io::repeat(0), 0));
        let err = a.send_stream(b_id, named(u64::MAX / 4, "huge.bin"), body).await.unwrap_err();
        assert!(err.contains("no room to keep the stream"), "{err}");
        assert!(!inbox.join("huge.bin").exists());
        let st = b.status().await.unwrap();
        assert!(st.rejections.is_empty(), "not the sender's fault: {:?}", st.rejections);
        assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 1, "no partial file left");
    }

    #[tokio::test]
    async fn peers_reach_each_other_through_a_relay() {
        let relay = Nat { relay_server: true, ..Nat::default() };
        let (r, r_id) = node(&["/ip4/127.0.0.1/tcp/0"], relay);
        let circuit = format!("{}/p2p/{r_id}/p2p-circuit", listening(&r).await);
        // L is reachable only through its reservation on R; D dials L's circuit address
        let client = Nat { relay_client: true, ..Nat::default() };
        let (l, l_id) = node(&[&circuit], client);
        let (d, _) = node(&[], client);
        let target: Multiaddr = format!("{circuit}/p2p/{l_id}").parse().unwrap();
        let mut last = String::new();
        let mut delivered = None;
        for _ in 0..50 {
            d.dial(target.clone()).await;
            match tokio::time::timeout(Duration::from_secs(2), d.send(l_id, MessageType::Ping, "hi".into())).await {
                Ok(Ok(x)) => {
                    delivered = Some(x);
                    break;
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(delivered) = delivered else {
            panic!("no message got through the relay: {last}; L: {:?}", l.status().await);
        };
        assert!(delivered.ack.accepted, "{:?}", delivered.ack.reason);
        let st = l.status().await.unwrap();
        let from_d = st.peers.iter().find(|p| p.peer_id == d_id_of(&st, &r_id)).cloned();
        let from_d = from_d.expect("L does not know D");
        assert!(from_d.discovered.contains(&"relay".to_string()), "{from_d:?}");
        assert_eq!(from_d.messages_in, 1, "{from_d:?}");
        let to_l = d.status().await.unwrap().peers.into_iter().find(|p| p.peer_id == l_id.to_string()).unwrap();
        assert!(to_l.addresses.iter().any(|a| a.contains("/p2p-circuit/")), "D did not go through R: {to_l:?}");
    }

    /// The one peer of L's that is neither the relay nor L itself.
    fn d_id_of(st: &NetStatus, relay: &PeerId) -> String {
        st.peers.iter().map(|p| p.peer_id.clone()).find(|p| p != &relay.to_string()).unwrap_or_default()
    }

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
