//! The node's P2P: its own libp2p peer (micro-os's p2p layer) speaking the chain's protocol
//! `/micro-os/chain/1` ([`wire`]) with the nodes of its network — headers-first sync with
//! blocks downloaded by request ([`sync`]), transactions and new blocks pushed to peers
//! ([`relay`]), nodes of a network found through the DHT, misbehaving peers scored down and
//! banned ([`peers`]).
//!
//! Key design decision: everything goes through the p2p layer's protocol registry
//! (`Handle::register`, `Handle::send_request`), so every session is a signed, verified
//! request-response channel and the chain adds no networking of its own; the chain code
//! drives the node only through [`Node`]'s public methods (`accept_header`, `accept_block`,
//! `accept_tx`, `locator`, `headers_after`, `block`, `subscribe`), always on blocking
//! threads because they take the node's lock and touch SQLite. One sync task at a time
//! downloads blocks (from several peers at once), so two peers never race for the same
//! blocks; relaying is announced by pushes, and a peer that learns of a block it cannot
//! connect asks for headers.

mod intake;
pub mod peers;
pub mod prove;
pub mod relay;
mod serve;
pub mod sync;
pub mod wire;

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use micro_os_p2p::libp2p::identity::Keypair;
use micro_os_p2p::libp2p::multiaddr::Protocol;
use micro_os_p2p::net::MessageType;
use micro_os_p2p::{Handle, Multiaddr, PeerId, StreamError};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::node::Node;
use peers::{Bans, Book, Chain, BAN_FOR};
use wire::{Hello, Message, Request};

/// How often the peer list is read from the p2p layer (and new peers greeted).
const POLL_EVERY: Duration = Duration::from_secs(1);
/// A chain peer is greeted again this often, which refreshes its height.
const HELLO_EVERY: Duration = Duration::from_secs(10);
/// How often the DHT is asked for the network's nodes, and `--connect` peers redialed.
const DISCOVER_EVERY: Duration = Duration::from_secs(15);
/// A banned peer is disconnected this long after the refusal that banned it.
const DISCONNECT_AFTER: Duration = Duration::from_millis(500);
/// A peer of another network (or no chain node) is asked again after this long.
const OTHER_FOR: Duration = Duration::from_secs(10 * 60);

/// What can go wrong in the node's P2P.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("p2p key {path}: {source}")]
    Key { path: PathBuf, source: std::io::Error },
    #[error("p2p key {path} is not a 32-byte ed25519 seed (remove it to make a new one)")]
    BadKey { path: PathBuf },
    #[error(transparent)]
    P2p(#[from] micro_os_p2p::Error),
    #[error(transparent)]
    Node(#[from] crate::node::Error),
    #[error("peer {peer} answered {what} with something malformed: {why}")]
    Malformed { peer: PeerId, what: &'static str, why: String },
    #[error("peer {peer} sent an invalid {what}: {why}")]
    Invalid { peer: PeerId, what: &'static str, why: String },
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// How the node's peer is set up.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<Multiaddr>,
    /// Peers to dial, and redial while not connected (`--connect`).
    pub connect: Vec<Multiaddr>,
}

/// The node's P2P: its peer, what it knows of the others, the sync's wake-up.
pub struct Service {
    pub(crate) node: Arc<Node>,
    pub(crate) handle: Handle,
    pub(crate) me: PeerId,
    pub(crate) magic: String,
    pub(crate) bans: Arc<Bans>,
    book: Mutex<Book>,
    /// Peers the sync should ask first (a block that did not connect, a higher `Hello`).
    hints: Mutex<VecDeque<PeerId>>,
    pub(crate) wake: Notify,
    pub(crate) syncing: std::sync::atomic::AtomicBool,
    connect: Mutex<Vec<Multiaddr>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("me", &self.me).finish()
    }
}

/// The node's libp2p identity: an ed25519 seed in `<datadir>/p2p.key` (mode 0600), made on
/// first use.
pub fn load_key(datadir: &Path) -> Result<Keypair, Error> {
    let path = datadir.join("p2p.key");
    let key_err = |source| Error::Key { path: path.clone(), source };
    match std::fs::read(&path) {
        Ok(seed) => {
            let seed: [u8; 32] = seed.try_into().map_err(|_| Error::BadKey { path: path.clone() })?;
            Keypair::ed25519_from_bytes(seed).map_err(|_| Error::BadKey { path: path.clone() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let ed = key.clone().try_into_ed25519().expect("an ed25519 key");
            let tmp = path.with_extension("key.tmp");
            let mut f = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)
            }
            .map_err(key_err)?;
            f.write_all(ed.secret().as_ref()).and_then(|()| f.sync_all()).map_err(key_err)?;
            std::fs::rename(&tmp, &path).map_err(key_err)?;
            Ok(key)
        }
        Err(e) => Err(key_err(e)),
    }
}

/// The DHT key under which the nodes of a network advertise themselves.
pub fn network_key(node: &Node) -> String {
    let p = node.params();
    format!("chain/{}/{}", p.name, p.genesis_hash)
}

/// Starts the node's peer and its tasks (greeting, sync, relay, discovery). Call it from
/// inside the runtime.
pub async fn start(node: Arc<Node>, cfg: Config) -> Result<Arc<Service>, Error> {
    let key = load_key(node.datadir())?;
    let me = key.public().to_peer_id();
    let bans = Arc::new(Bans::default());
    let nonces = micro_os_p2p::net::FileNonces::open(node.datadir().join("p2p.nonces"));
    let p2p_cfg = micro_os_p2p::Config { listen: cfg.listen.clone(), ..micro_os_p2p::Config::default() };
    let handle = micro_os_p2p::spawn(key, p2p_cfg, Box::new(nonces), Arc::new(peers::Open(bans.clone())))?;
    let svc = Arc::new(Service {
        magic: wire::magic_hex(node.params().magic),
        node,
        handle,
        me,
        bans,
        book: Mutex::default(),
        hints: Mutex::default(),
        wake: Notify::new(),
        syncing: Default::default(),
        connect: Mutex::new(cfg.connect.clone()),
    });
    svc.handle.register(wire::PROTOCOL, svc.clone())?;
    svc.handle.provide(vec![network_key(&svc.node)]).await;
    tracing::info!("p2p peer {me}, chain protocol {} on {}", wire::PROTOCOL, svc.node.params().name);
    for a in &cfg.connect {
        svc.dial(a).await;
    }
    tokio::spawn(svc.clone().poll_loop());
    tokio::spawn(svc.clone().discover_loop());
    tokio::spawn(sync::run(svc.clone()));
    tokio::spawn(relay::run(svc.clone()));
    tokio::spawn(intake::run(svc.clone()));
    tokio::spawn(sync::backfill(svc.clone()));
    if svc.node.is_light() {
        tokio::spawn(prove::run(svc.clone()));
    }
    Ok(svc)
}

impl Service {
    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Asks the sync to look at `peer` first.
    pub(crate) fn hint(&self, peer: PeerId) {
        let mut h = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        if !h.contains(&peer) {
            h.push_back(peer);
        }
        drop(h);
        self.wake.notify_one();
    }

    pub(crate) fn take_hint(&self) -> Option<PeerId> {
        self.hints.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    /// Counts a refusal by reason and lowers the peer's score; bans and disconnects it when
    /// that takes it below the line.
    pub(crate) fn misbehaved(&self, peer: PeerId, reason: &str, points: i64) {
        let banned = {
            let mut book = self.book();
            *book.refused.entry(reason.to_string()).or_default() += 1;
            book.misbehaved(peer, points)
        };
        if banned {
            tracing::warn!(
                "banning peer {peer} for {} min: its score fell below {}",
                BAN_FOR.as_secs() / 60,
                peers::BAN_SCORE
            );
            self.bans.ban(peer, Instant::now() + BAN_FOR);
            let h = self.handle.clone();
            tokio::spawn(async move {
                // after the refusal that banned it has gone out on the session
                tokio::time::sleep(DISCONNECT_AFTER).await;
                h.disconnect(peer).await
            });
        }
    }

    /// Sends one request of our chain to `peer` and decodes the JSON answer.
    pub(crate) async fn request<T: serde::de::DeserializeOwned>(
        &self,
        peer: PeerId,
        what: &'static str,
        message: Message,
    ) -> Result<T, RequestError> {
        let state = serde_json::to_string(&Request { magic: self.magic.clone(), message }).expect("requests serialise");
        let bytes = self.handle.send_request(peer, wire::PROTOCOL, MessageType::Sync, state).await?;
        self.book().peer(peer).answer_bytes_in += bytes.len() as u64;
        serde_json::from_slice(&bytes).map_err(|e| RequestError::Malformed { what, why: e.to_string() })
    }

    /// Our own `Hello`.
    pub(crate) fn hello(&self) -> Hello {
        let (height, tip) = self.node.tip();
        Hello { genesis: self.node.params().genesis_hash, height, tip, light: self.node.is_light() }
    }

    /// Greets `peer` (or greets it again): learns whether it is of our chain and how far.
    pub(crate) async fn greet(self: Arc<Self>, peer: PeerId) {
        self.book().peer(peer).last_hello = Some(Instant::now());
        let answer = self.request::<Hello>(peer, "hello", Message::Hello(self.hello())).await;
        match answer {
            Ok(h) if h.genesis == self.node.params().genesis_hash => {
                let first = self.got_hello(peer, h);
                if first {
                    tracing::info!("chain peer {peer} at height {} ({})", h.height, h.tip);
                }
            }
            Ok(h) => {
                tracing::info!("peer {peer} is on another chain (genesis {})", h.genesis);
                self.book().peer(peer).chain = Chain::Other { until: Instant::now() + OTHER_FOR };
            }
            Err(RequestError::P2p(micro_os_p2p::Error::Stream(StreamError::Refused(why)))) => {
                tracing::debug!("peer {peer} refused our hello: {why}");
                if why.contains("wrong network magic") || why.contains("genesis") {
                    self.book().peer(peer).chain = Chain::Other { until: Instant::now() + OTHER_FOR };
                }
            }
            Err(RequestError::P2p(micro_os_p2p::Error::Stream(StreamError::Open { .. }))) => {
                // no chain protocol there (another kind of micro-os peer)
                self.book().peer(peer).chain = Chain::Other { until: Instant::now() + OTHER_FOR };
            }
            Err(e) => tracing::debug!("hello to {peer}: {e}"),
        }
    }

    /// A `Hello` of our chain from `peer` (its answer, or its request); `true` the first
    /// time. Wakes the sync when the peer is ahead.
    pub(crate) fn got_hello(&self, peer: PeerId, h: Hello) -> bool {
        let first = {
            let mut book = self.book();
            let p = book.peer(peer);
            let first = p.chain != Chain::Ours;
            p.chain = Chain::Ours;
            p.connected = true;
            p.height = Some(h.height);
            p.tip = Some(h.tip);
            p.light = h.light;
            p.starting_height.get_or_insert(h.height);
            first
        };
        let (height, tip) = self.node.tip();
        // a full node downloads blocks, which a light node has none of
        let can_serve = !h.light || self.node.is_light();
        if can_serve && (h.height > height || (h.height == height && h.tip != tip && first)) {
            self.hint(peer);
        }
        first
    }

    async fn dial(&self, a: &Multiaddr) {
        match a.iter().last() {
            Some(Protocol::P2p(peer)) => self.handle.connect(peer, a.clone()).await,
            _ => self.handle.dial(a.clone()).await,
        }
    }

    /// Reads the peer list from the p2p layer and greets new peers (and chain peers again
    /// every [`HELLO_EVERY`]).
    async fn poll_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(POLL_EVERY);
        loop {
            tick.tick().await;
            if self.node.is_stopping() {
                return;
            }
            let Some(status) = self.handle.status().await else { return };
            let mut greet = Vec::new();
            {
                let mut book = self.book();
                book.listen = status.listen.clone();
                for info in &status.peers {
                    let Ok(id) = info.peer_id.parse::<PeerId>() else { continue };
                    let p = book.peer(id);
                    if info.connected && !p.connected {
                        p.since = crate::node::now();
                    }
                    p.connected = info.connected;
                    p.addr = info.addresses.last().cloned();
                    p.p2p_score = info.score;
                    p.messages_in = info.messages_in;
                    p.messages_out = info.messages_out;
                    p.bytes_in = info.bytes_in;
                    p.bytes_out = info.bytes_out;
                    p.rtt_ms = info.rtt_ms;
                    p.agent = info.agent.clone();
                    let due = p.last_hello.is_none_or(|t| t.elapsed() >= HELLO_EVERY);
                    let asked = match p.chain {
                        Chain::Other { until } => Instant::now() < until,
                        _ => false,
                    };
                    if p.connected && due && !asked && self.bans.until(&id).is_none() {
                        p.last_hello = Some(Instant::now());
                        greet.push(id);
                    }
                }
            }
            for id in greet {
                tokio::spawn(self.clone().greet(id));
            }
        }
    }

    /// Finds the network's nodes through the DHT and connects to them; redials the
    /// `--connect` peers that are not connected.
    async fn discover_loop(self: Arc<Self>) {
        let key = network_key(&self.node);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(2), DISCOVER_EVERY);
        loop {
            tick.tick().await;
            if self.node.is_stopping() {
                return;
            }
            // provider records expire and new neighbours may be closer to the key
            self.handle.provide(vec![key.clone()]).await;
            let found = match self.handle.find(key.clone()).await {
                Ok(f) => f,
                Err(_) => return,
            };
            for p in found {
                let Ok(id) = p.peer_id.parse::<PeerId>() else { continue };
                if id == self.me || p.connected || self.bans.until(&id).is_some() {
                    continue;
                }
                for a in p.addresses.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                    tracing::debug!("dht: connecting to {id} at {a}");
                    self.handle.connect(id, a).await;
                }
            }
            let connected: Vec<String> =
                self.book().peers.values().filter(|p| p.connected).filter_map(|p| p.addr.clone()).collect();
            let redial = self.connect.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for a in &redial {
                let s = a.to_string();
                if !connected.iter().any(|c| s.starts_with(c.as_str()) || c.starts_with(s.as_str())) {
                    self.dial(a).await;
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // For the RPC (synchronous: it runs on blocking threads).
    // -----------------------------------------------------------------------------------------

    /// Core's `addnode`: dial `addr` now, and with `keep` redial it while not connected
    /// (`remove` forgets it). Call it from a thread of the runtime (the RPC's).
    pub fn add_node(&self, addr: &str, command: &str) -> Result<(), String> {
        let a: Multiaddr = addr.trim().parse().map_err(|_| format!("node address {addr:?} is not a multiaddr"))?;
        let mut list = self.connect.lock().unwrap_or_else(|e| e.into_inner());
        match command {
            "add" if !list.contains(&a) => list.push(a.clone()),
            "add" | "onetry" => {}
            "remove" => {
                list.retain(|x| x != &a);
                return Ok(());
            }
            other => return Err(format!("addnode command {other:?} is not known (use add, remove or onetry)")),
        }
        let handle = self.handle.clone();
        tokio::runtime::Handle::current().spawn(async move {
            match a.iter().last() {
                Some(Protocol::P2p(peer)) => handle.connect(peer, a).await,
                _ => handle.dial(a).await,
            }
        });
        Ok(())
    }

    /// Connected peers of our chain.
    pub fn connections(&self) -> usize {
        self.book().chain_peers().len()
    }

    /// `getpeerinfo`: the connected peers of our chain, in Core's shape where it fits.
    pub fn peer_info(&self) -> Value {
        let book = self.book();
        let mut list: Vec<_> = book.chain_peers();
        list.sort_by_key(|(_, p)| p.since);
        let out: Vec<Value> = list
            .iter()
            .enumerate()
            .map(|(i, (id, p))| {
                json!({
                    "id": i,
                    "peerid": id.to_string(),
                    "addr": p.addr,
                    "conntime": p.since,
                    "bytessent": p.bytes_out + p.answer_bytes_out,
                    "bytesrecv": p.bytes_in + p.answer_bytes_in,
                    "msgsent": p.messages_out,
                    "msgrecv": p.messages_in,
                    "pingtime": p.rtt_ms.map(|ms| ms / 1000.0),
                    "subver": p.agent,
                    "startingheight": p.starting_height,
                    "light": p.light,
                    "synced_headers": p.height,
                    "synced_blocks": p.height,
                    "tip": p.tip.map(|t| t.to_string()),
                    "score": p.score,
                    "banscore": -p.score,
                    "p2p_score": p.p2p_score,
                })
            })
            .collect();
        Value::Array(out)
    }

    /// `getp2pinfo`: our peer, the refusals by reason, the bans.
    pub fn info(&self) -> Value {
        let book = self.book();
        json!({
            "peerid": self.me.to_string(),
            "protocol": wire::PROTOCOL.as_ref(),
            "magic": self.magic,
            "dht_key": network_key(&self.node),
            "listen": book.listen,
            "connections": book.chain_peers().len(),
            "peers_known": book.peers.values().filter(|p| p.connected).count(),
            "syncing": self.syncing.load(std::sync::atomic::Ordering::Relaxed),
            "refused": book.refused,
            "banned": self.bans.list().iter().map(|(p, s)| json!({"peerid": p.to_string(), "seconds_left": s})).collect::<Vec<_>>(),
        })
    }
}

/// A request to a peer that did not get a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    P2p(#[from] micro_os_p2p::Error),
    #[error("the answer to {what} is malformed: {why}")]
    Malformed { what: &'static str, why: String },
}
