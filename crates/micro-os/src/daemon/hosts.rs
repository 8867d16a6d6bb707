//! Hosts that join into one fabric: `host token`, `host join`, `host list`, `host leave`.
//!
//! Key design decision: the membership is a signed list that every host checks, not a
//! Raft group of its own. Each host's record (peer id, addresses, when it joined or left)
//! is signed by the member that admitted it — a host's leave by itself — with the ed25519
//! key its peer id carries. A host takes a record from a peer only if the signature
//! verifies and its signer is a member it already holds (a leave only from the host
//! itself), and records merge by time (the newer of join and leave wins), so hosts that
//! heard of changes in different orders agree once they have exchanged lists: every
//! heartbeat carries the list. The records are objects of the store (kind `host`), so the
//! membership survives restarts.
//!
//! A newcomer proves it holds the fabric's join token with an HMAC of both peer ids,
//! sent over the authenticated libp2p connection on the open protocol
//! `/micro-os/host-join/1`; the token itself never travels from the newcomer, and a proof
//! seen by a third party is useless to it (it names the newcomer's peer id, which the
//! connection authenticates). Members talk on `/micro-os/host/1`, which the host's
//! `Policy` admits only from members.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::multiaddr::Protocol;
use micro_os_api::types::{HostInfo, HostStatus, HostToken};
use micro_os_p2p::net::MessageType;
use micro_os_p2p::{Multiaddr, PeerId, ProtocolHandler, Refusal, Request, StreamProtocol};
use micro_os_store::{Event, Store};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use micro_os_api::server::{FORWARDED_HEADER, HOST_HEADER};

use super::engine::Engine;
use super::error::{Error, Result};

/// Where a newcomer asks to join (open to any verified peer; the token decides).
pub const JOIN: StreamProtocol = StreamProtocol::new("/micro-os/host-join/1");
/// Where members exchange heartbeats and the membership list.
pub const HOST: StreamProtocol = StreamProtocol::new("/micro-os/host/1");
/// Where a member sends an API request that belongs to this host (members only).
pub const HOST_API: StreamProtocol = StreamProtocol::new("/micro-os/host-api/1");
/// How often a host sends each member its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// A member not heard from for this long is shown unreachable.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(8);
const KIND: &str = "host";
/// How often a host checks its own components' health for its heartbeat.
const HEALTH_EVERY: Duration = Duration::from_secs(10);

/// One host of the fabric, as every host keeps it. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub peer: String,
    /// Where it listens (libp2p multiaddrs without the peer id), as it said when it joined.
    pub addrs: Vec<String>,
    /// Milliseconds since the epoch.
    pub joined: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<u64>,
    /// The member that signed the record.
    pub by: String,
    /// Hex of the ed25519 signature of [`Record::message`].
    pub sig: String,
}

impl Record {
    fn message(&self) -> Vec<u8> {
        serde_json::to_vec(&("micro-os/host-record/1", &self.peer, &self.addrs, self.joined, self.left, &self.by))
            .expect("a record serialises")
    }

    fn signed(key: &Keypair, peer: &str, addrs: Vec<String>, joined: u64, left: Option<u64>) -> Record {
        let by = key.public().to_peer_id().to_string();
        let mut r = Record { peer: peer.into(), addrs, joined, left, by, sig: String::new() };
        r.sig = hex::encode(key.sign(&r.message()).expect("ed25519 signs"));
        r
    }

    /// The signature is its signer's.
    fn verifies(&self) -> bool {
        let Ok(sig) = hex::decode(&self.sig) else { return false };
        key_of(&self.by).is_some_and(|k| k.verify(&self.message(), &sig))
    }

    /// When it last changed: a leave counts after the join it ends.
    fn stamp(&self) -> u64 {
        self.left.map_or(self.joined, |l| l.max(self.joined))
    }

    fn is_member(&self) -> bool {
        self.left.is_none()
    }
}

/// The public key a peer id carries (ed25519 ids inline their key).
fn key_of(peer: &str) -> Option<PublicKey> {
    let id: PeerId = peer.parse().ok()?;
    // an identity multihash: code 0, a one-byte length, the key's protobuf encoding
    let b = id.to_bytes();
    match b.as_slice() {
        [0, len, key @ ..] if usize::from(*len) == key.len() => PublicKey::try_decode_protobuf(key).ok(),
        _ => None,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The proof a newcomer sends: HMAC-SHA256 under the token of both peer ids.
fn proof(token: &str, newcomer: &str, member: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("hmac takes any key");
    mac.update(b"micro-os/host-join/1\0");
    mac.update(newcomer.as_bytes());
    mac.update(b"\0");
    mac.update(member.as_bytes());
    mac
}

#[derive(Debug, Serialize, Deserialize)]
struct JoinRequest {
    proof: String,
    addrs: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct JoinAnswer {
    token: String,
    records: Vec<Record>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    status: HostStatus,
    records: Vec<Record>,
    /// The names of the objects the host holds, so that others forward requests about them.
    #[serde(default)]
    names: Names,
    /// Its end of the encrypted overlay (none where the overlay is off).
    #[serde(default)]
    overlay: Option<super::overlay::OverlayInfo>,
}

/// The VMs, containers and circuits a host holds, by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Names {
    pub vms: Vec<String>,
    pub containers: Vec<String>,
    pub circuits: Vec<String>,
    /// Its running reference-chain nodes on VMs: (network, multiaddr), for the nodes of
    /// other hosts to dial over the overlay.
    #[serde(default)]
    pub chain_nodes: Vec<(String, String)>,
    /// Its VMs that run with their agent connected, by name: the circuit members other
    /// hosts may call through it.
    #[serde(default)]
    pub ready: Vec<String>,
    /// The names its containers on VMs answer to, with their VMs' addresses
    /// (`<container>.<network>`, for the fabric's resolvers: `dns.rs`).
    #[serde(default)]
    pub addresses: Vec<(String, std::net::Ipv4Addr)>,
    /// The ports its running containers publish in ingress mode (`ingress.rs`).
    #[serde(default)]
    pub ingress: Vec<super::ingress::Published>,
}

/// An API request forwarded to the host it belongs to.
#[derive(Debug, Serialize, Deserialize)]
struct Forwarded {
    method: String,
    /// Path and query.
    uri: String,
    content_type: Option<String>,
    /// Base64 of the body.
    body: String,
}

/// The answer to a [`Forwarded`] request.
#[derive(Debug, Serialize, Deserialize)]
struct Answered {
    status: u16,
    content_type: Option<String>,
    body: String,
}

/// A member's last heartbeat, and when it came.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    status: HostStatus,
    names: Names,
    overlay: Option<super::overlay::OverlayInfo>,
}

/// The fabric as this host holds it.
pub struct Hosts {
    store: Arc<Store>,
    token_path: PathBuf,
    key: OnceLock<Keypair>,
    records: RwLock<HashMap<String, Record>>,
    /// The last heartbeat of each member, and when it came.
    seen: Mutex<HashMap<String, Seen>>,
    /// This host's health as its components last said (checked at most every
    /// [`HEALTH_EVERY`]).
    health: Mutex<Option<(Instant, String)>>,
    /// Still to join through the config's `host_token` (not after a join or a leave).
    auto_join: std::sync::atomic::AtomicBool,
}

impl Hosts {
    pub fn load(store: Arc<Store>, home: &std::path::Path) -> Result<Hosts> {
        let records: Vec<Record> = store.list(KIND)?;
        Ok(Hosts {
            store,
            token_path: home.join("host.token"),
            key: OnceLock::new(),
            records: RwLock::new(records.into_iter().map(|r| (r.peer.clone(), r)).collect()),
            seen: Mutex::default(),
            health: Mutex::default(),
            auto_join: std::sync::atomic::AtomicBool::new(true),
        })
    }

    fn me(&self) -> String {
        self.key.get().map(|k| k.public().to_peer_id().to_string()).unwrap_or_default()
    }

    /// Whether `peer` is a member of this host's fabric (not this host).
    pub fn is_member(&self, peer: &str) -> bool {
        peer != self.me() && self.records.read().expect("records").get(peer).is_some_and(Record::is_member)
    }

    fn members(&self) -> Vec<Record> {
        let mut v: Vec<Record> =
            self.records.read().expect("records").values().filter(|r| r.is_member()).cloned().collect();
        v.sort_by_key(|r| r.joined);
        v
    }

    fn all(&self) -> Vec<Record> {
        self.records.read().expect("records").values().cloned().collect()
    }

    /// Keeps `r` (in the store first: nothing acknowledged is lost).
    fn keep(&self, r: Record, action: &str) -> Result<()> {
        let detail = match action {
            "left" => format!("host {} left the fabric", r.peer),
            _ => format!("host {} joined the fabric (admitted by {})", r.peer, r.by),
        };
        let event = Event::new(KIND, &r.peer, &r.peer, action, detail);
        tokio::task::block_in_place(|| self.store.update(KIND, &r.peer, &r.peer, &r, Some(&event)))?;
        self.records.write().expect("records").insert(r.peer.clone(), r);
        Ok(())
    }

    /// Starts with this host's key: a host that holds no record of itself founds a fabric
    /// of one.
    pub fn start(&self, key: Keypair) -> Result<()> {
        let me = key.public().to_peer_id().to_string();
        let _ = self.key.set(key);
        let mine = self.records.read().expect("records").get(&me).cloned();
        if mine.is_none_or(|r| !r.is_member()) {
            let key = self.key.get().expect("set");
            self.keep(Record::signed(key, &me, Vec::new(), now_ms(), None), "joined")?;
        }
        Ok(())
    }

    /// The fabric's join token (made on first use, mode 0600).
    pub fn token(&self) -> Result<String> {
        if let Ok(t) = std::fs::read_to_string(&self.token_path) {
            if !t.trim().is_empty() {
                return Ok(t.trim().to_string());
            }
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| Error::internal(format!("no randomness for a join token: {e}")))?;
        let token = hex::encode(bytes);
        self.save_token(&token)?;
        Ok(token)
    }

    fn save_token(&self, token: &str) -> Result<()> {
        crate::home::write_secret_atomic(&self.token_path, token.as_bytes())
            .map_err(|e| Error::internal(format!("{e:#}")))
    }

    /// Takes the records a member sent: each must verify, and be signed by a member this
    /// host holds (a leave by the host itself), and be newer than the one held.
    fn merge(&self, records: Vec<Record>) -> Result<()> {
        for r in records {
            if !r.verifies() {
                tracing::warn!("host record of {} signed by {}: the signature does not verify", r.peer, r.by);
                continue;
            }
            let (newer, authorised) = {
                let held = self.records.read().expect("records");
                let newer = held.get(&r.peer).is_none_or(|h| r.stamp() > h.stamp());
                let by_member = held.get(&r.by).is_some_and(Record::is_member);
                (newer, by_member || (r.by == r.peer && r.left.is_some()))
            };
            if newer && authorised {
                // a record that says this host left, signed by another: not this host's word
                if r.peer == self.me() && r.by != r.peer {
                    continue;
                }
                let action = if r.is_member() { "joined" } else { "left" };
                self.keep(r, action)?;
            }
        }
        Ok(())
    }

    fn note(&self, peer: &str, beat: Heartbeat) {
        let seen = Seen { at: Instant::now(), status: beat.status, names: beat.names, overlay: beat.overlay };
        self.seen.lock().expect("seen").insert(peer.to_string(), seen);
    }

    /// The members' ends of the overlay, with their listen addresses.
    fn overlay_peers(&self) -> Vec<(String, super::overlay::OverlayInfo, Vec<String>)> {
        let seen = self.seen.lock().expect("seen");
        seen.iter()
            .filter(|(p, _)| self.is_member(p))
            .filter_map(|(p, s)| Some((p.clone(), s.overlay.clone()?, s.status.addrs.clone())))
            .collect()
    }

    /// The member that holds object `name` of `kind` (`vms`, `containers`, `circuits`), by
    /// its last heartbeat.
    fn holder(&self, kind: &str, name: &str) -> Option<String> {
        let seen = self.seen.lock().expect("seen");
        let holds = |n: &Names| match kind {
            "vms" => n.vms.iter().any(|v| v == name),
            "containers" => n.containers.iter().any(|c| c == name),
            "circuits" => n.circuits.iter().any(|c| c == name),
            _ => false,
        };
        seen.iter().find(|(p, s)| self.is_member(p) && holds(&s.names)).map(|(p, _)| p.clone())
    }

    /// The member that holds VM `key` (a name), by its last heartbeat.
    pub(super) fn vm_holder(&self, key: &str) -> Option<PeerId> {
        self.holder("vms", key).and_then(|p| p.parse().ok())
    }

    /// Whether member `peer` beat lately and then ran VM `vm` with its agent connected.
    pub(super) fn vm_ready(&self, peer: &str, vm: &str) -> bool {
        let seen = self.seen.lock().expect("seen");
        self.is_member(peer)
            && seen
                .get(peer)
                .is_some_and(|s| s.at.elapsed() < UNREACHABLE_AFTER && s.names.ready.iter().any(|v| v == vm))
    }

    /// The container names the other members' last heartbeats gave, with their addresses.
    pub(super) fn fabric_names(&self) -> Vec<(String, std::net::Ipv4Addr)> {
        let me = self.me();
        let seen = self.seen.lock().expect("seen");
        seen.iter()
            .filter(|(p, _)| **p != me && self.is_member(p))
            .flat_map(|(_, s)| s.names.addresses.iter().cloned())
            .collect()
    }

    /// The ingress ports the other members' containers publish, by their last heartbeats
    /// (members not heard from lately are left out: their containers are out of reach).
    pub(super) fn fabric_ingress(&self) -> Vec<super::ingress::Published> {
        let me = self.me();
        let seen = self.seen.lock().expect("seen");
        seen.iter()
            .filter(|(p, s)| **p != me && self.is_member(p) && s.at.elapsed() < UNREACHABLE_AFTER)
            .flat_map(|(_, s)| s.names.ingress.iter().cloned())
            .collect()
    }

    /// Whether member `peer` has its end of the overlay up, by its last heartbeat.
    pub(super) fn has_overlay(&self, peer: &str) -> bool {
        self.seen.lock().expect("seen").get(peer).is_some_and(|s| s.overlay.is_some())
    }

    /// The member a `--host` names: its peer id or a unique prefix of it (`None`: this host).
    fn resolve(&self, given: &str) -> Result<Option<PeerId>> {
        let me = self.me();
        let found: Vec<Record> = self.members().into_iter().filter(|r| r.peer.starts_with(given)).collect();
        match found.as_slice() {
            [r] if r.peer == me => Ok(None),
            [r] => r.peer.parse().map(Some).map_err(|_| Error::internal(format!("peer id {} is malformed", r.peer))),
            [] => Err(Error::not_found(format!("host {given:?} is not in this fabric (see `micro-os host list`)"))),
            _ => Err(Error::invalid(format!(
                "host {given:?} names {} hosts (give more of the peer id; see `micro-os host list`)",
                found.len()
            ))),
        }
    }
}

impl Engine {
    fn hosts_p2p(&self) -> Result<(&crate::p2p::Handle, &Keypair)> {
        let key = self.hosts.key.get().ok_or_else(|| Error::internal("the host's fabric is not started"))?;
        Ok((self.host_p2p()?, key))
    }

    /// Where this host's libp2p peer listens.
    async fn listen_addrs(&self) -> Vec<String> {
        match self.p2p.get() {
            Some(h) => h.status().await.map(|s| s.listen).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// This host's capacity and load, as its heartbeat carries them.
    pub(super) async fn host_status(self: &Arc<Self>) -> HostStatus {
        let listen = self.listen_addrs().await;
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let disk = nix::sys::statvfs::statvfs(&self.home.root).ok();
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let vms = self.vms.list();
        let running = vms.iter().filter(|v| v.state == micro_os_core::vm::VmState::Running).count();
        let health = {
            let cached = self.hosts.health.lock().expect("health").clone();
            match cached {
                Some((at, h)) if at.elapsed() < HEALTH_EVERY => h,
                _ => {
                    let failing: Vec<String> = self
                        .health()
                        .await
                        .into_iter()
                        .filter(|c| c.status == micro_os_api::types::Severity::Critical)
                        .map(|c| c.component)
                        .collect();
                    let h = if failing.is_empty() { "ok".into() } else { format!("critical: {}", failing.join(", ")) };
                    *self.hosts.health.lock().expect("health") = Some((Instant::now(), h.clone()));
                    h
                }
            }
        };
        HostStatus {
            addrs: listen,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: mem_kib("MemTotal:") * 1024,
            memory_free_bytes: mem_kib("MemAvailable:") * 1024,
            disk_bytes: disk.as_ref().map_or(0, |d| d.blocks() * d.fragment_size()),
            disk_free_bytes: disk.as_ref().map_or(0, |d| d.blocks_available() * d.fragment_size()),
            vms: vms.len() as u32,
            vms_running: running as u32,
            load: loadavg.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0),
            health,
        }
    }

    /// `host token`: the token, and the command another host runs to join this one.
    pub(super) async fn host_token(self: &Arc<Self>) -> Result<HostToken> {
        let token = self.hosts.token()?;
        let me = self.hosts.me();
        let listen = self.listen_addrs().await;
        let join = listen.iter().map(|a| format!("{a}/p2p/{me}")).collect();
        Ok(HostToken { token, peer_id: me, join })
    }

    /// `host list`: every member, this host first.
    pub(super) async fn host_list(self: &Arc<Self>) -> Result<Vec<HostInfo>> {
        let me = self.hosts.me();
        let mine = self.host_status().await;
        let seen = self.hosts.seen.lock().expect("seen").clone();
        let links = tokio::task::block_in_place(|| self.overlay_links());
        let mut out = Vec::new();
        for r in self.hosts.members() {
            let joined = chrono::DateTime::from_timestamp_millis(r.joined as i64).unwrap_or_default();
            let (state, status, last_seen_s) = if r.peer == me {
                ("this host".to_string(), Some(mine.clone()), Some(0))
            } else {
                match seen.get(&r.peer) {
                    Some(s) => {
                        let state = if s.at.elapsed() < UNREACHABLE_AFTER { "up" } else { "unreachable" };
                        (state.to_string(), Some(s.status.clone()), Some(s.at.elapsed().as_secs()))
                    }
                    None => ("unreachable".to_string(), None, None),
                }
            };
            let overlay =
                seen.get(&r.peer).and_then(|s| s.overlay.as_ref()).and_then(|o| links.get(&o.public_key)).cloned();
            out.push(HostInfo {
                peer_id: r.peer.clone(),
                state,
                joined,
                admitted_by: r.by.clone(),
                last_seen_s,
                status,
                overlay,
            });
        }
        out.sort_by_key(|h| h.peer_id != me);
        Ok(out)
    }

    /// `host join ADDR --token T`: asks the host at `addr` to admit this one, then takes
    /// its fabric's list and token.
    pub(super) async fn host_join(self: &Arc<Self>, addr: &str, token: &str) -> Result<Vec<HostInfo>> {
        let (p2p, _) = self.hosts_p2p()?;
        let fix = "copy it from `micro-os host token` on that host";
        let mut addr: Multiaddr =
            addr.parse().map_err(|_| Error::invalid(format!("host address {addr:?} is not a multiaddr ({fix})")))?;
        let Some(Protocol::P2p(peer)) = addr.pop() else {
            return Err(Error::invalid(format!("host address {addr} does not end in /p2p/<peer id> ({fix})")));
        };
        if token.trim().is_empty() {
            return Err(Error::invalid(format!("the join token is empty ({fix})")));
        }
        let me = self.hosts.me();
        if peer.to_string() == me {
            return Err(Error::invalid(format!("host address {addr}/p2p/{peer} is this host")));
        }
        let others = self.hosts.members().len().saturating_sub(1);
        if others > 0 {
            return Err(Error::conflict(format!(
                "this host is in a fabric of {} hosts already (run `micro-os host leave` first)",
                others + 1
            )));
        }
        p2p.add_address(peer, addr.clone()).await;
        let addrs = self.listen_addrs().await;
        let proof = hex::encode(proof(token.trim(), &me, &peer.to_string()).finalize().into_bytes());
        let req = serde_json::to_string(&JoinRequest { proof, addrs }).expect("serialises");
        let answer = p2p.send_request(peer, JOIN, MessageType::Ctrl, req).await.map_err(|e| match e {
            micro_os_p2p::Error::Stream(micro_os_p2p::StreamError::Refused(why)) => {
                Error::invalid(format!("host {peer} refused to admit this host: {why}"))
            }
            e => Error::Unavailable(format!("host {peer} at {addr}: {e}")),
        })?;
        let answer: JoinAnswer = serde_json::from_slice(&answer)
            .map_err(|e| Error::internal(format!("host {peer} answered the join with something malformed: {e}")))?;
        // the list of the host chosen to join: every record signed by one of its members
        let peers: Vec<&str> = answer.records.iter().map(|r| r.peer.as_str()).collect();
        if let Some(bad) = answer.records.iter().find(|r| !r.verifies() || !peers.contains(&r.by.as_str())) {
            return Err(Error::internal(format!("host {peer} sent a record of {} that does not verify", bad.peer)));
        }
        if !answer.records.iter().any(|r| r.peer == me && r.is_member()) {
            return Err(Error::internal(format!("host {peer} answered the join without admitting this host")));
        }
        self.hosts.save_token(&answer.token)?;
        for r in answer.records {
            let action = if r.is_member() { "joined" } else { "left" };
            self.hosts.keep(r, action)?;
        }
        for r in self.hosts.members() {
            self.dial_member(&r).await;
        }
        self.heartbeat_all().await;
        self.host_list().await
    }

    /// `host leave`: tells the members, then stands alone with a new token.
    pub(super) async fn host_leave(self: &Arc<Self>) -> Result<()> {
        let (_, key) = self.hosts_p2p()?;
        self.hosts.auto_join.store(false, std::sync::atomic::Ordering::Relaxed);
        let me = self.hosts.me();
        let others: Vec<Record> = self.hosts.members().into_iter().filter(|r| r.peer != me).collect();
        if others.is_empty() {
            return Err(Error::conflict("this host is in no fabric but its own (nothing to leave)"));
        }
        let now = now_ms();
        let joined = self.hosts.records.read().expect("records").get(&me).map_or(now, |r| r.joined);
        self.hosts.keep(Record::signed(key, &me, Vec::new(), joined, Some(now)), "left")?;
        self.heartbeat_all().await;
        // alone from now on: the old fabric's records go, its token too
        for r in self.hosts.all() {
            if r.peer != me {
                let event = Event::new(KIND, &r.peer, &r.peer, "forgotten", "this host left the fabric");
                tokio::task::block_in_place(|| self.store.delete(KIND, &r.peer, &event))?;
                self.hosts.records.write().expect("records").remove(&r.peer);
            }
        }
        self.hosts.seen.lock().expect("seen").clear();
        let _ = std::fs::remove_file(&self.hosts.token_path);
        self.hosts.keep(Record::signed(key, &me, Vec::new(), now + 1, None), "joined")?;
        Ok(())
    }

    async fn dial_member(&self, r: &Record) {
        let (Some(p2p), Ok(peer)) = (self.p2p.get(), r.peer.parse::<PeerId>()) else { return };
        let status_addrs = self.hosts.seen.lock().expect("seen").get(&r.peer).map(|s| s.status.addrs.clone());
        for a in r.addrs.iter().chain(status_addrs.iter().flatten()) {
            if let Ok(a) = a.parse::<Multiaddr>() {
                p2p.add_address(peer, a).await;
            }
        }
    }

    /// One heartbeat to every member; their answers merged.
    async fn heartbeat_all(self: &Arc<Self>) {
        let me = self.hosts.me();
        let status = self.host_status().await;
        let beat = Heartbeat { status, records: self.hosts.all(), names: self.names(), overlay: self.overlay_info() };
        let body = serde_json::to_string(&beat).expect("serialises");
        let Some(p2p) = self.p2p.get() else { return };
        let mut calls = Vec::new();
        for r in self.hosts.all().into_iter().filter(|r| r.peer != me) {
            // a member that left hears of it once more, with this beat
            let Ok(peer) = r.peer.parse::<PeerId>() else { continue };
            self.dial_member(&r).await;
            let body = body.clone();
            calls.push(async move {
                let answer = tokio::time::timeout(HEARTBEAT * 2, p2p.send_request(peer, HOST, MessageType::Sync, body));
                (r.peer, answer.await)
            });
        }
        for (peer, answer) in futures_util::future::join_all(calls).await {
            match answer {
                Ok(Ok(bytes)) => match serde_json::from_slice::<Heartbeat>(&bytes) {
                    Ok(mut h) => {
                        let records = std::mem::take(&mut h.records);
                        self.hosts.note(&peer, h);
                        if let Err(e) = self.hosts.merge(records) {
                            tracing::warn!("host list from {peer}: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("heartbeat answer from {peer} is malformed: {e}"),
                },
                Ok(Err(e)) => tracing::debug!("heartbeat to {peer}: {e}"),
                Err(_) => tracing::debug!("heartbeat to {peer}: no answer"),
            }
        }
    }

    /// Registers the host protocols and beats until the daemon stops.
    pub(super) fn start_hosts(self: &Arc<Self>, key: Keypair) -> Result<()> {
        self.hosts.start(key)?;
        let p2p = self.host_p2p()?;
        let handler = Arc::new(HostHandler(Arc::downgrade(self)));
        p2p.register_open(JOIN, handler.clone()).map_err(|e| Error::internal(format!("{JOIN}: {e}")))?;
        p2p.register(HOST, handler.clone()).map_err(|e| Error::internal(format!("{HOST}: {e}")))?;
        p2p.register(HOST_API, handler.clone()).map_err(|e| Error::internal(format!("{HOST_API}: {e}")))?;
        let vm = super::remote::HOST_VM;
        p2p.register(vm.clone(), handler).map_err(|e| Error::internal(format!("{vm}: {e}")))?;
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let Some(engine) = engine.upgrade() else { return };
                engine.join_from_config().await;
                engine.heartbeat_all().await;
                let peers = engine.hosts.overlay_peers();
                tokio::task::block_in_place(|| engine.overlay_sync(&peers));
                engine.ingress_sync();
            }
        });
        Ok(())
    }

    /// With `host_token` in the config, a host alone joins the fabric through the first
    /// `p2p_bootstrap` address that admits it (tried again at each heartbeat until then).
    async fn join_from_config(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        let token = self.cfg.host_token.trim();
        if token.is_empty() || !self.hosts.auto_join.load(Ordering::Relaxed) {
            return;
        }
        if self.hosts.members().len() > 1 {
            self.hosts.auto_join.store(false, Ordering::Relaxed);
            return;
        }
        for addr in self.cfg.p2p_bootstrap.iter().filter(|a| a.contains("/p2p/")) {
            match self.host_join(addr, token).await {
                Ok(hosts) => {
                    tracing::info!("joined the fabric of {} hosts through {addr} (host_token)", hosts.len());
                    return;
                }
                Err(e) => tracing::debug!("joining through {addr}: {e}"),
            }
        }
    }
}

/// Answers joins (anyone with a proof of the token), members' heartbeats and the API
/// requests members forward here.
struct HostHandler(std::sync::Weak<Engine>);

impl ProtocolHandler for HostHandler {
    fn handle(&self, request: Request) -> BoxFuture<'_, std::result::Result<Vec<u8>, Refusal>> {
        Box::pin(async move {
            let engine = self.0.upgrade().ok_or_else(|| Refusal("the daemon is stopping".into()))?;
            let peer = request.peer.to_string();
            if request.protocol == JOIN {
                return engine.admit(&peer, &request.state).await;
            }
            if request.protocol == HOST_API {
                return engine.serve_forwarded(&request.state).await;
            }
            if request.protocol == super::remote::HOST_VM {
                return engine.serve_vm_request(&request.state).await;
            }
            // the policy admits members only
            let mut beat: Heartbeat =
                serde_json::from_str(&request.state).map_err(|e| Refusal(format!("malformed heartbeat: {e}")))?;
            let records = std::mem::take(&mut beat.records);
            engine.hosts.note(&peer, beat);
            engine.hosts.merge(records).map_err(|e| Refusal(format!("host list: {e}")))?;
            let status = engine.host_status().await;
            let answer = Heartbeat {
                status,
                records: engine.hosts.all(),
                names: engine.names(),
                overlay: engine.overlay_info(),
            };
            Ok(serde_json::to_vec(&answer).expect("serialises"))
        })
    }
}

impl Engine {
    /// A newcomer's join: its proof must be of this fabric's token.
    async fn admit(self: &Arc<Self>, peer: &str, state: &str) -> std::result::Result<Vec<u8>, Refusal> {
        let req: JoinRequest = serde_json::from_str(state).map_err(|e| Refusal(format!("malformed join: {e}")))?;
        let token = self.hosts.token().map_err(|e| Refusal(e.to_string()))?;
        let me = self.hosts.me();
        let given = hex::decode(&req.proof).map_err(|_| Refusal("the join proof is not hex".into()))?;
        if proof(&token, peer, &me).verify_slice(&given).is_err() {
            tracing::warn!("host {peer} asked to join with a wrong token");
            return Err(Refusal(
                "the join token is not this fabric's (ask its hosts for `micro-os host token`)".into(),
            ));
        }
        let key = self.hosts.key.get().ok_or_else(|| Refusal("the host's fabric is not started".into()))?;
        let addrs: Vec<String> = req.addrs.into_iter().take(16).collect();
        let record = Record::signed(key, peer, addrs, now_ms(), None);
        self.hosts.keep(record, "joined").map_err(|e| Refusal(e.to_string()))?;
        tracing::info!("host {peer} joined the fabric");
        Ok(serde_json::to_vec(&JoinAnswer { token, records: self.hosts.all() }).expect("serialises"))
    }
}

impl Engine {
    /// The names of what this host holds, for its heartbeat.
    fn names(&self) -> Names {
        Names {
            vms: self.vms.list().into_iter().map(|v| v.spec.name).collect(),
            containers: self.containers.list().into_iter().map(|c| c.spec.name).collect(),
            circuits: self.circuits.list().into_iter().map(|c| c.name).collect(),
            chain_nodes: self.local_chain_nodes(),
            ready: self.vms.list().into_iter().filter(|v| self.agent_ready(v)).map(|v| v.spec.name).collect(),
            addresses: self.local_names(),
            ingress: self.local_ingress(),
        }
    }

    /// The reference-chain nodes the other hosts of the fabric run on VMs: (network,
    /// multiaddr), by their last heartbeats.
    pub(super) fn fabric_chain_nodes(&self) -> Vec<(String, String)> {
        let seen = self.hosts.seen.lock().expect("seen");
        seen.iter()
            .filter(|(p, _)| self.hosts.is_member(p))
            .flat_map(|(_, s)| s.names.chain_nodes.iter().cloned())
            .collect()
    }

    /// Where a request belongs: the host its [`HOST_HEADER`] names, or the member that
    /// holds the object its path names when this host does not; `None`: here.
    fn destination(&self, req: &axum::extract::Request) -> Result<Option<PeerId>> {
        if req.headers().contains_key(FORWARDED_HEADER) {
            return Ok(None);
        }
        if let Some(h) = req.headers().get(HOST_HEADER) {
            let h = h.to_str().map_err(|_| Error::invalid("the micro-os-host header is not text"))?;
            return self.hosts.resolve(h.trim());
        }
        // /api/v1/{vms,containers,circuits}/{name}[/...], or a monitor query naming a
        // container or a VM (?container=N, ?vm=N)
        let path = req.uri().path().trim_start_matches("/api/v1/");
        let (kind, name) = if path.starts_with("monitor/") {
            let query = req.uri().query().unwrap_or_default();
            let param =
                |key: &str| query.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(percent_decode));
            match (param("container"), param("vm")) {
                (Some(c), _) => ("containers", c),
                (None, Some(v)) => ("vms", v),
                _ => return Ok(None),
            }
        } else {
            let mut parts = path.splitn(3, '/');
            let (Some(kind), Some(name)) = (parts.next(), parts.next()) else { return Ok(None) };
            (kind, percent_decode(name))
        };
        let here = match kind {
            "vms" => self.vms.find(&name).is_ok(),
            "containers" => self.containers.find(&name).is_ok(),
            "circuits" => self.circuits.find(&name).is_ok(),
            _ => return Ok(None),
        };
        if here || name.is_empty() {
            return Ok(None);
        }
        Ok(self.hosts.holder(kind, &name).and_then(|p| p.parse().ok()))
    }

    /// Sends `req` to `peer` and gives back its answer.
    async fn forward_to(&self, peer: PeerId, req: axum::extract::Request) -> Result<axum::response::Response> {
        use base64::Engine as _;
        let (parts, body) = req.into_parts();
        // a forwarded request travels in one message: an upload too (so at most 1 MiB)
        let upload = micro_os_api::server::UPLOAD_PATHS.contains(&parts.uri.path());
        let body = axum::body::to_bytes(body, micro_os_api::server::BODY_LIMIT).await.map_err(|e| match upload {
            true => Error::invalid(format!(
                "an upload for another host of the fabric is forwarded in one message, at most {} bytes ({e}): \
                 send it to that host's API (MICRO_OS_API)",
                micro_os_api::server::BODY_LIMIT
            )),
            false => Error::invalid(format!("request body: {e}")),
        })?;
        let content_type =
            parts.headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(String::from);
        let f = Forwarded {
            method: parts.method.to_string(),
            uri: parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |p| p.to_string()),
            content_type,
            body: base64::engine::general_purpose::STANDARD.encode(&body),
        };
        let answer =
            self.ask_host(peer, HOST_API, MessageType::Ctrl, serde_json::to_string(&f).expect("serialises")).await?;
        let a: Answered = serde_json::from_slice(&answer)
            .map_err(|e| Error::internal(format!("host {peer} answered something malformed: {e}")))?;
        let body = base64::engine::general_purpose::STANDARD
            .decode(&a.body)
            .map_err(|e| Error::internal(format!("host {peer} answered a body that is not base64: {e}")))?;
        let mut out = axum::response::Response::new(axum::body::Body::from(body));
        *out.status_mut() = axum::http::StatusCode::from_u16(a.status)
            .map_err(|_| Error::internal(format!("host {peer} answered status {}", a.status)))?;
        if let Some(ct) = a.content_type.and_then(|c| axum::http::HeaderValue::from_str(&c).ok()) {
            out.headers_mut().insert(axum::http::header::CONTENT_TYPE, ct);
        }
        Ok(out)
    }

    /// One request to member `peer` on a host protocol, dialled first at the addresses
    /// its record and its last heartbeat give.
    pub(super) async fn ask_host(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
        kind: MessageType,
        body: String,
    ) -> Result<Vec<u8>> {
        let p2p = self.host_p2p()?;
        let r = self.hosts.records.read().expect("records").get(&peer.to_string()).cloned();
        if let Some(r) = r {
            self.dial_member(&r).await;
        }
        p2p.send_request(peer, protocol, kind, body).await.map_err(|e| match e {
            // no stream opened: nothing reached the host
            micro_os_p2p::Error::Stream(micro_os_p2p::StreamError::Open { .. }) => {
                Error::Unreached(format!("host {peer} is unreachable: {e}"))
            }
            e => Error::Unavailable(format!("host {peer}: {e}")),
        })
    }

    /// Serves a request a member forwarded, through this host's own API (its own token).
    async fn serve_forwarded(&self, state: &str) -> std::result::Result<Vec<u8>, Refusal> {
        use base64::Engine as _;
        use tower::ServiceExt;
        let f: Forwarded = serde_json::from_str(state).map_err(|e| Refusal(format!("malformed request: {e}")))?;
        let router = self.api.get().cloned().ok_or_else(|| Refusal("the API is not serving yet".into()))?;
        let body = base64::engine::general_purpose::STANDARD
            .decode(&f.body)
            .map_err(|_| Refusal("the request body is not base64".into()))?;
        let token = self.home.token().map_err(|e| Refusal(e.to_string()))?;
        let mut req = axum::http::Request::builder()
            .method(f.method.as_str())
            .uri(&f.uri)
            .header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(FORWARDED_HEADER, "1");
        if let Some(ct) = &f.content_type {
            req = req.header(axum::http::header::CONTENT_TYPE, ct);
        }
        let req = req.body(axum::body::Body::from(body)).map_err(|e| Refusal(format!("malformed request: {e}")))?;
        let answer = router.oneshot(req).await.map_err(|e| Refusal(format!("serving it: {e}")))?;
        let status = answer.status().as_u16();
        let content_type =
            answer.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(String::from);
        // streams that follow (logs --follow) end here at the answer's limit; the CLI asks
        // the host itself for those
        let body = axum::body::to_bytes(answer.into_body(), 8 << 20)
            .await
            .map_err(|e| Refusal(format!("reading the answer: {e}")))?;
        let a = Answered { status, content_type, body: base64::engine::general_purpose::STANDARD.encode(&body) };
        Ok(serde_json::to_vec(&a).expect("serialises"))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok())) {
            (b'%', Some(h)) if u8::from_str_radix(h, 16).is_ok() => {
                out.push(u8::from_str_radix(h, 16).expect("checked"));
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends requests that belong to another host of the fabric there.
pub struct Forward(pub std::sync::Weak<Engine>);

impl micro_os_api::Forwarder for Forward {
    fn forward(
        &self,
        req: axum::extract::Request,
    ) -> micro_os_api::action::BoxFuture<'_, std::result::Result<axum::response::Response, axum::extract::Request>>
    {
        Box::pin(async move {
            use axum::response::IntoResponse;
            let Some(engine) = self.0.upgrade() else { return Err(req) };
            match engine.destination(&req) {
                Ok(None) => Err(req),
                Ok(Some(peer)) => Ok(match engine.forward_to(peer, req).await {
                    Ok(answer) => answer,
                    Err(e) => micro_os_api::ApiError::from(e).into_response(),
                }),
                Err(e) => Ok(micro_os_api::ApiError::from(e).into_response()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_verify_only_as_their_signer_signed_them() {
        let a = Keypair::generate_ed25519();
        let b = Keypair::generate_ed25519();
        let b_id = b.public().to_peer_id().to_string();
        let r = Record::signed(&a, &b_id, vec!["/ip4/127.0.0.1/tcp/1".into()], 5, None);
        assert!(r.verifies());
        assert_eq!(r.by, a.public().to_peer_id().to_string());
        let mut changed = r.clone();
        changed.addrs.push("/ip4/10.0.0.1/tcp/1".into());
        assert!(!changed.verifies(), "the addresses are signed");
        let mut claimed = r.clone();
        claimed.by = b_id.clone();
        assert!(!claimed.verifies(), "the signer is who signed it");
        let left = Record::signed(&b, &b_id, vec![], 5, Some(9));
        assert!(left.verifies() && !left.is_member() && left.stamp() > r.stamp());
    }

    #[test]
    fn a_proof_is_bound_to_the_token_and_both_peers() {
        let p = |t: &str, n: &str, m: &str| proof(t, n, m).finalize().into_bytes().to_vec();
        assert_eq!(p("t", "a", "b"), p("t", "a", "b"));
        assert_ne!(p("t", "a", "b"), p("u", "a", "b"));
        assert_ne!(p("t", "a", "b"), p("t", "c", "b"));
        assert_ne!(p("t", "a", "b"), p("t", "a", "c"));
        assert!(proof("t", "a", "b").verify_slice(&p("t", "a", "b")).is_ok());
    }
}
