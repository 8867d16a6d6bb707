//! Circuit members over real libp2p peers on loopback: each peer runs on its own tokio
//! runtime (as each VM's agent is its own process) with its own `Replicas` in a temporary
//! directory, and the test drives them only through `Replicas::call`, as the daemon does.
//! No root, no VM: every peer listens on 127.0.0.1.
//!
//! Timers: openraft 0.9 gives an append (and the heartbeats that confirm a linearizable
//! read) the heartbeat interval as its whole deadline, and a snapshot chunk the default
//! `install_snapshot_timeout` (200 ms). A debug build moves about 1 MB/s through the p2p
//! stack (noise, ed25519 and sha256 over every request, JSON twice), so these tests keep
//! values small where they can and give the heartbeat room; the chunked snapshot test
//! needs `cargo test --release`.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use micro_os_circuit::network::{PROTOCOL, SNAPSHOT_CHUNK};
use micro_os_circuit::{checksum, NodeId, Replicas};
use micro_os_core::circuit::{
    CircuitCall, CircuitError, MemberAddr, MemberStatus, RaftSettings, ReadResult, StateEntry, StateOp, WriteOutcome,
    WriteResult, MAX_VALUE,
};
use micro_os_p2p::libp2p::identity::Keypair;
use micro_os_p2p::net::{MemoryNonces, MessageType};
use micro_os_p2p::{Config, Handle, Limits, NetStatus, PeerId, Policy, StreamError, StreamProtocol};
use serde::de::DeserializeOwned;
use tempfile::TempDir;
use tokio::task::JoinHandle;

const CIRCUIT: &str = "c-members";
const NOT_A_MEMBER: &str = "sender is not a circuit member";
const NOT_IN_CIRCUIT: &str = "not in this circuit";

/// Fast timers: the first leader is elected at once (`initialize` starts an election), a
/// lost leader is replaced within a second or two.
fn fast() -> RaftSettings {
    timers(150)
}

fn timers(heartbeat_ms: u64) -> RaftSettings {
    RaftSettings { heartbeat_ms, election_timeout_ms: 5 * heartbeat_ms, snapshot_every: 5000 }
}

struct Anyone;

impl Policy for Anyone {
    fn known(&self, _: &PeerId) -> bool {
        true
    }
}

/// One peer: a libp2p node and its `Replicas`, on a runtime of its own, so stopping the
/// runtime stops the peer the way a killed agent stops (every task and socket dropped).
struct Peer {
    node_id: NodeId,
    key: Keypair,
    peer: PeerId,
    /// Its TCP listen address.
    addr: String,
    dir: PathBuf,
    p2p: Handle,
    replicas: Arc<Replicas>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Peer {
    /// Starts a peer listening on `listen` whose members live under `dir`.
    async fn start(node_id: NodeId, key: Keypair, listen: &str, dir: PathBuf) -> Peer {
        Peer::start_with(node_id, key, listen, dir, Limits::default()).await
    }

    async fn start_with(node_id: NodeId, key: Keypair, listen: &str, dir: PathBuf, limits: Limits) -> Peer {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let cfg = Config { listen: vec![listen.parse().unwrap()], limits, ..Config::default() };
        let (k, d) = (key.clone(), dir.clone());
        let (p2p, replicas, addr) = rt
            .spawn(async move {
                let p2p = micro_os_p2p::spawn(k, cfg, Box::new(MemoryNonces::default()), Arc::new(Anyone)).unwrap();
                let addr = listening(&p2p).await;
                let replicas = Replicas::start(p2p.clone(), d).await.unwrap();
                (p2p, replicas, addr)
            })
            .await
            .unwrap();
        let peer = key.public().to_peer_id();
        Peer { node_id, key, peer, addr, dir, p2p, replicas, rt: Some(rt) }
    }

    fn member(&self) -> MemberAddr {
        MemberAddr { peer: self.peer.to_string(), addr: self.addr.clone() }
    }

    /// Runs `f` on this peer's runtime (where its Raft tasks must be spawned).
    async fn run<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        self.spawn(f).await.expect("the task ran")
    }

    fn spawn<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> JoinHandle<T> {
        self.rt.as_ref().expect("running").spawn(f)
    }

    async fn net(&self) -> NetStatus {
        let p2p = self.p2p.clone();
        self.run(async move { p2p.status().await }).await.expect("the swarm runs")
    }

    /// Stops the peer and waits until its runtime has dropped every task; gives back its
    /// key, directory and listen address for a restart.
    async fn stop(mut self) -> (Keypair, PathBuf, String) {
        let rt = self.rt.take().expect("running");
        tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(10))).await.unwrap();
        (self.key.clone(), self.dir.clone(), self.addr.clone())
    }
}

async fn listening(h: &Handle) -> String {
    for _ in 0..250 {
        let listen = h.status().await.map(|s| s.listen).unwrap_or_default();
        if let Some(a) = listen.into_iter().find(|a| a.contains("/tcp/")) {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the peer never listened");
}

/// One call as the daemon makes it, decoded as the `Result<T, CircuitError>` it answers.
async fn call<T: DeserializeOwned>(peer: &Peer, c: CircuitCall) -> Result<T, CircuitError> {
    let replicas = peer.replicas.clone();
    let answer = peer.run(async move { replicas.call(c).await }).await;
    serde_json::from_value(answer.clone()).unwrap_or_else(|e| panic!("answer {answer} does not decode: {e}"))
}

async fn status(peer: &Peer) -> MemberStatus {
    call(peer, CircuitCall::Status { circuit: CIRCUIT.into() }).await.expect("a member answers its status")
}

async fn write(peer: &Peer, op: StateOp) -> Result<WriteResult, CircuitError> {
    call(peer, CircuitCall::Write { circuit: CIRCUIT.into(), op }).await
}

async fn read(peer: &Peer, key: Option<&str>, stale: bool) -> ReadResult {
    let c = CircuitCall::Read { circuit: CIRCUIT.into(), key: key.map(str::to_string), stale };
    call(peer, c).await.unwrap_or_else(|e| panic!("read through member {}: {e}", peer.node_id))
}

fn set(key: &str, value: &str) -> StateOp {
    StateOp::Set { key: key.into(), value: value.into() }
}

/// Polls `f` every 50 ms until it gives `Some`, for at most `within`.
async fn until<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A circuit of peers, node ids 1..=n, each with its own directory.
struct Circuit {
    peers: Vec<Peer>,
    settings: RaftSettings,
    /// Every peer's p2p limits.
    limits: Limits,
    _dirs: Vec<TempDir>,
}

impl Circuit {
    async fn start(n: u64, settings: RaftSettings) -> Circuit {
        Circuit::start_with(n, settings, Limits::default()).await
    }

    async fn start_with(n: u64, settings: RaftSettings, limits: Limits) -> Circuit {
        let mut c = Circuit { peers: vec![], settings, limits, _dirs: vec![] };
        for id in 1..=n {
            c.add_peer(id).await;
        }
        c
    }

    /// A new peer with id `id`, not joined to anything yet.
    async fn add_peer(&mut self, id: NodeId) -> &Peer {
        let dir = tempfile::tempdir().unwrap();
        let (key, dir_path) = (Keypair::generate_ed25519(), dir.path().to_path_buf());
        let peer = Peer::start_with(id, key, "/ip4/127.0.0.1/tcp/0", dir_path, self.limits).await;
        self._dirs.push(dir);
        self.peers.push(peer);
        self.peers.last().unwrap()
    }

    fn peer(&self, id: NodeId) -> &Peer {
        self.peers.iter().find(|p| p.node_id == id).expect("a peer with that id")
    }

    fn members(&self, ids: impl Fn(NodeId) -> bool) -> Vec<(u64, MemberAddr)> {
        self.peers.iter().filter(|p| ids(p.node_id)).map(|p| (p.node_id, p.member())).collect()
    }

    async fn join(&self, id: NodeId, members: Vec<(u64, MemberAddr)>, initialize: bool) -> MemberStatus {
        let c =
            CircuitCall::Join { circuit: CIRCUIT.into(), node_id: id, members, initialize, settings: self.settings };
        call(self.peer(id), c).await.unwrap_or_else(|e| panic!("join member {id}: {e}"))
    }

    /// Joins the first `n` peers: the others first, then node 1, which initializes.
    async fn join_all(&self, n: u64) {
        let members = self.members(|id| id <= n);
        for id in (2..=n).rev() {
            let s = self.join(id, members.clone(), false).await;
            assert_eq!(s.node_id, id);
        }
        self.join(1, members, true).await;
    }

    /// Waits until the members in `ids` agree on one leader that says it leads.
    async fn leader(&self, ids: &[NodeId]) -> NodeId {
        until("a leader all members agree on", Duration::from_secs(10), || async {
            let mut seen = BTreeSet::new();
            let mut leading = None;
            for id in ids {
                let s = status(self.peer(*id)).await;
                seen.insert(s.leader);
                if s.state == "leader" {
                    leading = Some(s.node_id);
                }
            }
            match (seen.len(), seen.into_iter().next().flatten(), leading) {
                (1, Some(l), Some(ll)) if l == ll => Some(l),
                _ => None,
            }
        })
        .await
    }

    /// Waits until member `id` has applied at least `index`.
    async fn applied(&self, id: NodeId, index: u64, within: Duration) -> MemberStatus {
        let what = format!("member {id} applies {index}");
        until(&what, within, || async {
            let s = status(self.peer(id)).await;
            (s.applied >= index).then_some(s)
        })
        .await
    }
}

fn entry(key: &str, value: &str, version: u64) -> StateEntry {
    StateEntry { key: key.into(), value: value.into(), version, checksum: checksum(value) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_replicate_and_forward() {
    let c = Circuit::start(3, fast()).await;
    c.join_all(3).await;
    let leader = c.leader(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let s = status(c.peer(leader)).await;
    assert_eq!(s.voters, vec![1, 2, 3]);
    assert!(s.learners.is_empty());

    // a write through a follower is forwarded to the leader and committed there
    let w = write(c.peer(follower), set("greeting", "hello")).await.expect("a forwarded write");
    assert_eq!(w.leader, leader, "the leader that committed it");
    assert_eq!(w.outcome, WriteOutcome::Stored { version: 1, checksum: checksum("hello") });
    assert!(w.index >= 2, "after the membership and the leader's blank entry: {}", w.index);

    // a linearizable read through each member sees it
    for id in 1..=3 {
        let r = read(c.peer(id), Some("greeting"), false).await;
        assert_eq!(r.entries, vec![entry("greeting", "hello", 1)], "member {id}");
        assert_eq!((r.node, r.stale), (id, false));
        assert!(r.applied >= w.index, "member {id} answered at {} before {}", r.applied, w.index);
    }
    // and so does a stale one, now that every member has applied it
    let r = read(c.peer(follower), None, true).await;
    assert!(r.stale);
    assert_eq!(r.entries, vec![entry("greeting", "hello", 1)]);

    // compare-and-set: a wrong version conflicts and changes nothing, the right one stores
    let cas = |expected_version| StateOp::CompareAndSet {
        key: "greeting".into(),
        expected_version,
        value: format!("at {expected_version}"),
    };
    let w = write(c.peer(follower), cas(7)).await.unwrap();
    assert_eq!(w.outcome, WriteOutcome::Conflict { current: 1 });
    let w = write(c.peer(leader), cas(1)).await.unwrap();
    assert_eq!(w.outcome, WriteOutcome::Stored { version: 2, checksum: checksum("at 1") });
    let r = read(c.peer(follower), Some("greeting"), false).await;
    assert_eq!(r.entries, vec![entry("greeting", "at 1", 2)]);
    let w = write(
        c.peer(follower),
        StateOp::CompareAndSet { key: "absent".into(), expected_version: 3, value: "x".into() },
    )
    .await
    .unwrap();
    assert_eq!(w.outcome, WriteOutcome::Conflict { current: 0 });
}

/// The JSON of a client write on `/micro-os/raft/1` (`network::Rpc`, whose body types are
/// the crate's own): externally tagged, snake case, the op tagged inside.
fn raw_write(circuit: &str, key: &str, value: &str) -> String {
    serde_json::json!({ "circuit": circuit, "body": { "client": { "write": { "op": "set", "key": key, "value": value } } } })
        .to_string()
}

async fn send_raw(from: &Peer, to: &Peer, state: String) -> Result<Vec<u8>, micro_os_p2p::Error> {
    let (p2p, peer, addr) = (from.p2p.clone(), to.peer, to.addr.parse().unwrap());
    from.run(async move {
        p2p.connect(peer, addr).await;
        for _ in 0..100 {
            match p2p.send_request(peer, StreamProtocol::new(PROTOCOL), MessageType::Sync, state.clone()).await {
                // the connection is still being made
                Err(micro_os_p2p::Error::Stream(StreamError::Open { .. })) => {}
                other => return other,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no stream to {peer} opened");
    })
    .await
}

fn refusal(answer: Result<Vec<u8>, micro_os_p2p::Error>) -> String {
    match answer {
        Err(micro_os_p2p::Error::Stream(StreamError::Refused(why))) => why,
        Err(e) => panic!("expected a refusal, got the error {e}"),
        Ok(body) => panic!("expected a refusal, got the answer {}", String::from_utf8_lossy(&body)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_is_refused_and_counted() {
    let mut c = Circuit::start(3, fast()).await;
    c.join_all(3).await;
    let leader = c.leader(&[1, 2, 3]).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    // a fourth peer that speaks the protocol but is in no circuit
    c.add_peer(4).await;
    let (outsider, target) = (c.peer(4), c.peer(leader));

    // the same request from a member is served: the JSON is what the members speak
    let answer = send_raw(c.peer(follower), target, raw_write(CIRCUIT, "shape", "ok")).await.expect("served");
    let w: Result<WriteResult, CircuitError> = serde_json::from_slice(&answer).unwrap();
    assert_eq!(w.unwrap().outcome, WriteOutcome::Stored { version: 1, checksum: checksum("ok") });

    // from the outsider it is refused, by the handler, and counted twice
    let why = refusal(send_raw(outsider, target, raw_write(CIRCUIT, "k", "evil")).await);
    assert_eq!(why, NOT_A_MEMBER);
    let net = target.net().await;
    assert!(net.rejections.get(NOT_A_MEMBER).copied().unwrap_or(0) >= 1, "p2p rejections: {:?}", net.rejections);
    let s = status(target).await;
    assert_eq!(s.refused.get(NOT_A_MEMBER), Some(&1), "member refusals: {:?}", s.refused);

    // a circuit the receiver is not in is refused before any member looks at it
    let why = refusal(send_raw(outsider, target, raw_write("no-such-circuit", "k", "evil")).await);
    assert_eq!(why, NOT_IN_CIRCUIT);
    assert_eq!(target.replicas.refused().get(NOT_IN_CIRCUIT), Some(&1));
    let net = target.net().await;
    assert!(net.rejections.get(NOT_IN_CIRCUIT).copied().unwrap_or(0) >= 1, "p2p rejections: {:?}", net.rejections);
    // a member refuses a circuit it is not in even from a fellow member
    let why = refusal(send_raw(c.peer(follower), target, raw_write("no-such-circuit", "k", "evil")).await);
    assert_eq!(why, NOT_IN_CIRCUIT);

    // nothing was written: a write after the attempts commits behind anything they could
    // have caused, and every member's copy lacks the key
    let w = write(target, set("after", "1")).await.unwrap();
    for id in 1..=3 {
        c.applied(id, w.index, Duration::from_secs(5)).await;
        let r = read(c.peer(id), Some("k"), true).await;
        assert!(r.entries.is_empty(), "member {id} holds {:?}", r.entries);
        assert_eq!(read(c.peer(id), Some("shape"), true).await.entries, vec![entry("shape", "ok", 1)]);
    }
}

/// Raft requests one peer received from the others on `/micro-os/raft/1` (each counted as
/// a SYNC message).
fn raft_in(net: &NetStatus) -> u64 {
    net.messages.get("SYNC").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_never_rate_limited_and_an_outsider_is() {
    // a budget far below what Raft sends: 5 requests a second, 5 at once
    let limits = Limits { per_second: 5, burst: 5, ban_below: -1_000_000, ban_s: 60 };
    let mut c = Circuit::start_with(3, fast(), limits).await;
    c.join_all(3).await;
    let leader = c.leader(&[1, 2, 3]).await;
    let before: Vec<u64> =
        futures_util::future::join_all((1..=3).map(|id| c.peer(id).net())).await.iter().map(raft_in).collect();
    let started = Instant::now();
    // 8 clients writing for two seconds, at the leader and through a follower (forwarded)
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let target = if i % 2 == 0 { leader } else { follower };
            let replicas = c.peer(target).replicas.clone();
            c.peer(target).spawn(async move {
                let mut n = 0u64;
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(2) {
                    let op = set(&format!("w{i}"), &n.to_string());
                    let a = replicas.call(CircuitCall::Write { circuit: CIRCUIT.into(), op }).await;
                    let w: Result<WriteResult, CircuitError> = serde_json::from_value(a).unwrap();
                    w.unwrap_or_else(|e| panic!("write {n} of client {i}: {e}"));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut writes = 0;
    for w in writers {
        writes += w.await.unwrap();
    }
    let took = started.elapsed().as_secs_f64();
    let mut rates = Vec::new();
    for id in 1..=3 {
        let net = c.peer(id).net().await;
        assert_eq!(net.rejections.get("rate limited"), None, "member {id} was throttled: {:?}", net.rejections);
        rates.push((raft_in(&net) - before[id as usize - 1]) as f64 / took);
    }
    eprintln!(
        "{writes} writes in {took:.1} s ({:.0}/s); Raft requests received per member per second: {:?} (leader {leader})",
        writes as f64 / took,
        rates.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    assert!(rates.iter().any(|r| *r > 5.0), "Raft sent more than the budget: the exemption is what let it through");

    // an outsider on the same budget: refused over the rate (and as a non-member)
    c.add_peer(4).await;
    let (outsider, target) = (c.peer(4), c.peer(leader));
    let mut reasons = BTreeSet::new();
    for _ in 0..20 {
        reasons.insert(refusal(send_raw(outsider, target, raw_write(CIRCUIT, "k", "evil")).await));
    }
    assert!(reasons.contains("rate limited") && reasons.contains(NOT_A_MEMBER), "{reasons:?}");
    let net = target.net().await;
    assert!(net.rejections.get("rate limited").copied().unwrap_or(0) >= 10, "{:?}", net.rejections);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_catches_up_from_a_large_snapshot_in_chunks() {
    // 48 values of 32 KiB: a snapshot of over 1.5 MiB (six chunks and more). Values of
    // 32 KiB, not larger: the log that follows a snapshot (up to `snapshot_every` entries)
    // must fit one append request, see
    // `a_member_behind_by_more_than_a_request_catches_up_from_the_log`.
    const KEYS: usize = 48;
    const SIZE: usize = 32 * 1024;
    // openraft 0.9 gives an append one heartbeat interval: the log tail after the snapshot
    // (up to 640 KiB) takes longer than the fast timers through a debug build
    let settings = RaftSettings { snapshot_every: 20, ..timers(1000) };
    let mut c = Circuit::start(3, settings).await;
    c.join_all(3).await;
    let leader = c.leader(&[1, 2, 3]).await;
    let value = |i: usize| format!("{i:04}:").repeat(SIZE / 5);
    let mut last = 0;
    for i in 0..KEYS {
        let w = write(c.peer(leader), set(&format!("key/{i:02}"), &value(i))).await.unwrap();
        last = w.index;
    }
    let raw: usize = (0..KEYS).map(|i| value(i).len()).sum();
    assert!(raw > 4 * SNAPSHOT_CHUNK, "the state ({raw} bytes) spans more than four chunks");
    // the leader's snapshot covers (nearly) all of it, and its log before that is purged,
    // so a new member must start from the snapshot
    let every = settings.snapshot_every;
    let s = until("the leader snapshots", Duration::from_secs(10), || async {
        let s = status(c.peer(leader)).await;
        (s.snapshot + every > last && s.snapshot >= every).then_some(s)
    })
    .await;
    let snapshot = s.snapshot;

    // a fourth member joins knowing the circuit (itself included), then is added through
    // a follower, which forwards the change to the leader
    c.add_peer(4).await;
    let all = c.members(|_| true);
    let s = c.join(4, all, false).await;
    assert_eq!((s.applied, s.snapshot), (0, 0), "a new member starts empty");
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let added = Instant::now();
    let c4 = CircuitCall::AddMember { circuit: CIRCUIT.into(), node_id: 4, member: c.peer(4).member() };
    let s: MemberStatus = call(c.peer(follower), c4).await.expect("member 4 added");
    assert_eq!(s.voters, vec![1, 2, 3, 4], "member 4 votes");
    let target = status(c.peer(leader)).await.applied;
    let s = c.applied(4, target, Duration::from_secs(10)).await;
    eprintln!("member 4 caught up {:?} after it was added", added.elapsed());
    assert!(s.snapshot >= snapshot, "member 4 holds the leader's snapshot {snapshot}, not {}", s.snapshot);
    assert_eq!(s.state, "follower");

    // it came as a snapshot: hex doubles the bytes on the wire, the log would not
    let net = c.peer(4).net().await;
    let bytes_in: u64 = net.peers.iter().map(|p| p.bytes_in).sum();
    assert!(bytes_in > 2 * raw as u64, "member 4 received {bytes_in} bytes for {raw} bytes of values");

    let r = read(c.peer(4), None, true).await;
    assert_eq!(r.entries.len(), KEYS);
    for (i, e) in r.entries.iter().enumerate() {
        assert_eq!(e.key, format!("key/{i:02}"));
        assert!(e.value == value(i), "key/{i:02} holds another value");
        assert_eq!((e.version, &e.checksum), (1, &checksum(&value(i))), "key/{i:02}");
    }
    // and it takes part: a write now commits with it
    let w = write(c.peer(4), set("after", "join")).await.unwrap();
    assert_eq!(w.leader, leader);
    assert_eq!(read(c.peer(4), Some("after"), false).await.entries, vec![entry("after", "join", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_on_its_store_rejoins() {
    let mut c = Circuit::start(3, fast()).await;
    c.join_all(3).await;
    let leader = c.leader(&[1, 2, 3]).await;
    for i in 0..10 {
        write(c.peer(leader), set(&format!("before/{i}"), &i.to_string())).await.unwrap();
    }
    let down = (1..=3).rev().find(|id| *id != leader).unwrap();
    let before = read(c.peer(down), None, false).await;
    assert_eq!(before.entries.len(), 10);

    // stop it as a killed agent stops: its runtime, and with it every task, goes away
    let at = c.peers.iter().position(|p| p.node_id == down).unwrap();
    let (key, dir, addr) = c.peers.remove(at).stop().await;
    // its store is released (the storage thread ends with the last handle) and holds
    // everything it had applied
    let store = dir.join(CIRCUIT).join("raft.db");
    let on_disk = until("the stopped member's store is released", Duration::from_secs(10), || async {
        micro_os_circuit::open(&store).await.ok()
    })
    .await;
    assert_eq!(on_disk.1.view().read().kv.len(), 10, "the stopped member's store lost applied entries");
    drop(on_disk);

    // the others go on without it
    let mut during = 0;
    for i in 0..10 {
        during = write(c.peer(leader), set(&format!("during/{i}"), &i.to_string())).await.unwrap().index;
    }
    write(c.peer(leader), StateOp::Delete { key: "before/0".into() }).await.unwrap();

    // the same key, directory and address: it reopens its member from the store alone
    let listen = addr.clone();
    let p = Peer::start(down, key, &listen, dir).await;
    assert_eq!(p.addr, addr, "it listens where the others dial it");
    assert_eq!(p.replicas.circuits(), vec![CIRCUIT.to_string()], "the member was reopened");
    c.peers.push(p);
    assert_eq!(status(c.peer(down)).await.node_id, down);
    // its state is there at once, from its store (a stale read asks no one)
    let r = read(c.peer(down), None, true).await;
    assert!(r.applied >= before.applied, "it reopened at {} after applying {}", r.applied, before.applied);
    for i in 1..10 {
        assert!(r.entries.iter().any(|e| e.key == format!("before/{i}")), "before/{i} is lost");
    }

    let target = status(c.peer(leader)).await.applied;
    assert!(target > during);
    let s = c.applied(down, target, Duration::from_secs(10)).await;
    assert_eq!(s.leader, Some(leader));
    let r = read(c.peer(down), None, true).await;
    let keys: Vec<&str> = r.entries.iter().map(|e| e.key.as_str()).collect();
    let mut want: Vec<String> =
        (1..10).map(|i| format!("before/{i}")).chain((0..10).map(|i| format!("during/{i}"))).collect();
    want.sort();
    assert_eq!(keys, want);
    for e in &r.entries {
        assert_eq!(e.checksum, checksum(&e.value), "{}", e.key);
    }
    // it is a voter again: with the other follower gone, leader and it still commit
    let other = (1..=3).find(|id| *id != leader && *id != down).unwrap();
    let at = c.peers.iter().position(|p| p.node_id == other).unwrap();
    c.peers.remove(at).stop().await;
    let w = write(c.peer(down), set("after", "restart")).await.expect("a majority of leader and restarted member");
    assert_eq!(w.leader, leader);
}

/// A fourth member is added after `keys` values of `size` bytes were committed, with no
/// snapshot taken: it must catch up from the leader's log.
async fn catch_up_from_the_log(keys: usize, size: usize) {
    // a slow heartbeat: an append's deadline is the heartbeat interval, and this is about
    // how much one append may carry, not how fast it goes
    let mut c = Circuit::start(3, timers(2000)).await;
    c.join_all(3).await;
    let leader = c.leader(&[1, 2, 3]).await;
    let value = |i: usize| format!("{i:04}:").repeat(size / 5);
    for i in 0..keys {
        write(c.peer(leader), set(&format!("big/{i:02}"), &value(i))).await.unwrap();
    }
    let target = status(c.peer(leader)).await.applied;
    c.add_peer(4).await;
    c.join(4, c.members(|_| true), false).await;
    // adding waits for the learner to catch up: run it aside and watch the learner
    let (p, m) = (c.peer(4).member(), c.peer(leader).replicas.clone());
    let add = c
        .peer(leader)
        .spawn(async move { m.call(CircuitCall::AddMember { circuit: CIRCUIT.into(), node_id: 4, member: p }).await });
    let s = c.applied(4, target, Duration::from_secs(15)).await;
    assert_eq!(s.snapshot, 0, "no snapshot was needed");
    let s: Result<MemberStatus, CircuitError> = serde_json::from_value(add.await.unwrap()).unwrap();
    assert_eq!(s.unwrap().voters, vec![1, 2, 3, 4]);
    let r = read(c.peer(4), None, true).await;
    assert_eq!(r.entries.len(), keys);
    assert!(r.entries.iter().enumerate().all(|(i, e)| e.value == value(i)), "member 4 holds other values");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_by_less_than_a_request_catches_up_from_the_log() {
    // 600 KiB of entries: one append request (at most 1 MiB) holds them all
    catch_up_from_the_log(6, 100 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_by_more_than_a_request_catches_up_from_the_log() {
    // 1.2 MiB of entries: more than one request holds
    catch_up_from_the_log(12, 100 * 1024).await;
}

/// A value of `MAX_VALUE` bytes, all `fill`, is committed and the circuit goes on.
async fn largest_value(fill: &str) {
    // a slow heartbeat: a debug build needs more than the fast one to move 256 KiB
    let c = Circuit::start(3, timers(3000)).await;
    c.join_all(3).await;
    let leader = c.leader(&[1, 2, 3]).await;
    let value = fill.repeat(MAX_VALUE);
    let w = write(c.peer(leader), set("large", &value)).await.expect("the largest value is committed");
    assert_eq!(w.outcome, WriteOutcome::Stored { version: 1, checksum: checksum(&value) });
    let r = read(c.peer(leader), Some("large"), false).await;
    assert!(r.entries.len() == 1 && r.entries[0].value == value, "the value read back differs");
    write(c.peer(leader), set("after", "1")).await.expect("and the circuit goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_value_of_the_largest_size_replicates() {
    largest_value("x").await;
}

// A value that grows past one message once escaped twice (the entry's JSON inside the
// envelope's JSON string: a quote takes four bytes) is refused before it reaches a member:
// `micro_os_core::circuit::check_value`, tested in core.
