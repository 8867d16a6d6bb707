//! A VM's members: one [`Replica`] (an openraft `Raft` on its SQLite store) per circuit the
//! VM is in, kept by [`Replicas`], which also answers `/micro-os/raft/1` for all of them.
//!
//! Membership is authorisation: a request names its circuit, and only a peer in that
//! circuit's membership (voters and learners, or the members it was told at join, before
//! it has a log) gets an answer; everything else is refused, counted by reason, and costs
//! the sender score in the p2p layer.
//!
//! Clients' requests (writes, linearizable reads, membership changes) are taken by any
//! member: a member that does not lead sends them to the one that does, retrying only
//! while it is sure nothing was applied (no leader yet, or the one asked no longer leads).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use micro_os_core::circuit::{
    CircuitCall, CircuitError, MemberAddr, MemberStatus, RaftSettings, ReadResult, StateEntry, WriteOutcome,
    WriteResult,
};
use micro_os_p2p::{Handle, PeerId, ProtocolHandler, Refusal, Request};
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{ChangeMembers, Config, Raft, ServerState, Snapshot, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::network::{self, Body, Chunk, ClientCall, Network, SendError};
use crate::{Command, Member, NodeId, Response, StateView, TypeConfig};

/// How long a client's request may take before its outcome is unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long adding a member may take (it catches up first, perhaps from a snapshot).
const ADD_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between tries while there is no leader.
const RETRY: Duration = Duration::from_millis(50);

const MEMBER_FILE: &str = "member.json";
const STORE_FILE: &str = "raft.db";

type Answer<T> = Result<T, CircuitError>;

/// What a member keeps beside its store: who it is and how it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Joined {
    circuit: String,
    node_id: NodeId,
    members: Vec<(NodeId, MemberAddr)>,
    settings: RaftSettings,
}

fn config(circuit: &str, s: &RaftSettings) -> Result<Arc<Config>, CircuitError> {
    let config = Config {
        cluster_name: circuit.to_string(),
        heartbeat_interval: s.heartbeat_ms,
        election_timeout_min: s.election_timeout_ms,
        election_timeout_max: s.election_timeout_ms * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(s.snapshot_every),
        // a follower a little behind catches up from the log, not a snapshot
        max_in_snapshot_log_to_keep: (s.snapshot_every / 10).max(1),
        // an append that does not fit one request (1 MiB) is refused by the network as
        // too large, and openraft sends fewer entries
        max_payload_entries: 64,
        // a snapshot chunk is 256 KiB: give it time on a slow machine
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    config.validate().map(Arc::new).map_err(|e| CircuitError::Invalid(format!("raft config: {e}")))
}

fn member(addr: &MemberAddr) -> Member {
    Member { peer: addr.peer.clone(), addr: addr.addr.clone() }
}

/// One member of one circuit.
pub struct Replica {
    circuit: String,
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    view: StateView,
    p2p: Handle,
    /// Peers named at join: accepted before the log holds a membership.
    expected: HashSet<PeerId>,
    refused: Mutex<BTreeMap<String, u64>>,
    held: network::Held,
    /// Counts holds, so an old hold's timer does not end a newer one.
    holds: std::sync::atomic::AtomicU64,
    /// A snapshot being received: its id and the bytes so far.
    incoming: tokio::sync::Mutex<Option<(String, Vec<u8>)>>,
    reads: Arc<Mutex<ReadRounds>>,
}

/// Linearizable reads that wait for a leadership confirmation. Concurrent reads share
/// one: a read joins the next round that starts after it arrived (never one already under
/// way, which may have been decided before the read existed), so many readers cost one
/// quorum round each time, not one each (openraft 0.9 confirms per call).
#[derive(Default)]
struct ReadRounds {
    waiting: Vec<tokio::sync::oneshot::Sender<Answer<Option<u64>>>>,
    running: bool,
}

impl Replica {
    async fn open(dir: PathBuf, joined: &Joined, p2p: Handle) -> Answer<Replica> {
        let failed = |what: &str, e: &dyn std::fmt::Display| CircuitError::Failed(format!("{what}: {e}"));
        let (log, sm) = crate::open(dir.join(STORE_FILE)).await.map_err(|e| failed("open the store", &e))?;
        let view = sm.view();
        let held = network::Held::default();
        let network = Network {
            p2p: p2p.clone(),
            circuit: joined.circuit.clone(),
            held: held.clone(),
            timeouts: Default::default(),
        };
        let cfg = config(&joined.circuit, &joined.settings)?;
        let raft = Raft::new(joined.node_id, cfg, network, log, sm).await.map_err(|e| failed("start raft", &e))?;
        let expected = joined.members.iter().filter_map(|(_, m)| m.peer.parse().ok()).collect();
        Ok(Replica {
            circuit: joined.circuit.clone(),
            node_id: joined.node_id,
            raft,
            view,
            p2p,
            expected,
            refused: Mutex::new(BTreeMap::new()),
            held,
            holds: std::sync::atomic::AtomicU64::new(0),
            incoming: tokio::sync::Mutex::new(None),
            reads: Arc::default(),
        })
    }

    /// Whether `peer` belongs to this circuit.
    fn admits(&self, peer: &PeerId) -> bool {
        if self.expected.contains(peer) {
            return true;
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let peer = peer.to_string();
        let found = membership.nodes().any(|(_, n)| n.peer == peer);
        found
    }

    fn refuse(&self, why: &str) -> Refusal {
        *self.refused.lock().unwrap().entry(why.to_string()).or_default() += 1;
        Refusal(why.to_string())
    }

    pub fn status(&self) -> MemberStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let last_log = m.last_log_index.unwrap_or(0);
        let matched: BTreeMap<NodeId, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        let applied = m.last_applied.map_or(0, |l| l.index);
        // openraft 0.9 does not publish the commit index: on the leader it is the highest
        // index a majority of voters holds; elsewhere what was applied is the known bound
        let committed = if m.state == ServerState::Leader && !voters.is_empty() {
            let mut held: Vec<u64> = voters
                .iter()
                .map(|v| if *v == self.node_id { last_log } else { matched.get(v).copied().flatten().unwrap_or(0) })
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            held[voters.len() / 2].max(applied)
        } else {
            applied
        };
        MemberStatus {
            node_id: self.node_id,
            state: state_name(m.state).to_string(),
            term: m.current_term,
            leader: m.current_leader,
            last_log,
            committed,
            applied,
            snapshot: m.snapshot.map_or(0, |l| l.index),
            matched,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            voters,
            learners,
            refused: self.refused.lock().unwrap().clone(),
        }
    }

    fn leader_peer(&self, f: &ForwardToLeader<NodeId, Member>) -> Option<Member> {
        let node = match &f.leader_node {
            Some(n) => Some(n.clone()),
            None => {
                let m = self.raft.metrics().borrow().clone();
                f.leader_id.and_then(|id| m.membership_config.membership().get_node(&id).cloned())
            }
        };
        node
    }

    /// Sends a client call to the leader; `Ok(None)` means "try again" (it no longer leads,
    /// or the request never left).
    async fn forward<T: serde::de::DeserializeOwned>(&self, leader: Member, call: ClientCall) -> Answer<Option<T>> {
        let Ok(peer) = leader.peer.parse::<PeerId>() else { return Ok(None) };
        if let Ok(addr) = leader.addr.parse() {
            self.p2p.connect(peer, addr).await;
        }
        let ttl = match call {
            ClientCall::AddMember { .. } => ADD_TIMEOUT,
            _ => CLIENT_TIMEOUT,
        };
        let is_write = !matches!(call, ClientCall::ReadIndex);
        match network::call::<Answer<T>>(&self.p2p, peer, &self.circuit, Body::Client(call), ttl).await {
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err(CircuitError::NotLeader)) => Ok(None),
            Ok(Err(e)) => Err(e),
            // the stream did not open: the request never reached the leader
            Err(SendError::P2p(micro_os_p2p::Error::Stream(e @ micro_os_p2p::StreamError::Open { .. }))) => {
                tracing::info!(circuit = %self.circuit, %peer, "a call to the leader did not leave: {e}");
                Ok(None)
            }
            Err(e) if is_write => Err(CircuitError::Unknown(format!("the leader did not answer: {e}"))),
            Err(e) => Err(CircuitError::NoLeader(format!("the leader did not answer: {e}"))),
        }
    }

    /// A change through this member: applied here if it leads, else sent to the leader.
    pub async fn write(&self, command: Command) -> Answer<WriteResult> {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = match tokio::time::timeout(left, self.raft.client_write(command.clone())).await {
                Err(_) => {
                    return Err(CircuitError::Unknown(format!(
                        "not committed within {CLIENT_TIMEOUT:?} (is a majority of the members reachable?)"
                    )))
                }
                Ok(Ok(r)) => {
                    return Ok(WriteResult { outcome: outcome(r.data), index: r.log_id.index, leader: self.node_id })
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => f,
                Ok(Err(e)) => return Err(CircuitError::Failed(e.to_string())),
            };
            if let Some(peer) = self.leader_peer(&f) {
                if let Some(r) = self.forward(peer, ClientCall::Write(command.clone())).await? {
                    return Ok(r);
                }
            }
            if Instant::now() + RETRY > deadline {
                return Err(CircuitError::NoLeader(format!("none elected within {CLIENT_TIMEOUT:?}")));
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Applies a client call that another member sent here, only if this member leads.
    async fn lead(&self, call: ClientCall) -> Vec<u8> {
        fn json<T: Serialize>(v: &T) -> Vec<u8> {
            serde_json::to_vec(v).expect("answers serialise")
        }
        match call {
            ClientCall::Write(command) => {
                let r = match tokio::time::timeout(CLIENT_TIMEOUT, self.raft.client_write(command)).await {
                    Err(_) => Err(CircuitError::Unknown(format!("not committed within {CLIENT_TIMEOUT:?}"))),
                    Ok(Ok(r)) => {
                        Ok(WriteResult { outcome: outcome(r.data), index: r.log_id.index, leader: self.node_id })
                    }
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(CircuitError::NotLeader),
                    Ok(Err(e)) => Err(CircuitError::Failed(e.to_string())),
                };
                json(&r)
            }
            ClientCall::ReadIndex => json(&self.local_read_index().await),
            ClientCall::AddMember { node_id, member } => json(&self.add_here(node_id, member).await),
            ClientCall::RemoveMember { node_id } => json(&self.remove_here(node_id).await),
        }
    }

    /// On the leader: confirm with a quorum, give the index a read must wait for. Joins
    /// the next round of confirmation (`ReadRounds`).
    async fn local_read_index(&self) -> Answer<Option<u64>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut r = self.reads.lock().unwrap();
            r.waiting.push(tx);
            !std::mem::replace(&mut r.running, true)
        };
        if start {
            let (raft, reads) = (self.raft.clone(), self.reads.clone());
            tokio::spawn(async move {
                loop {
                    let round = {
                        let mut r = reads.lock().unwrap();
                        let round = std::mem::take(&mut r.waiting);
                        r.running = !round.is_empty();
                        round
                    };
                    if round.is_empty() {
                        return;
                    }
                    let answer = confirm_leader(&raft).await;
                    for w in round {
                        let _ = w.send(answer.clone());
                    }
                }
            });
        }
        rx.await.unwrap_or_else(|_| Err(CircuitError::Failed("the read round was dropped".into())))
    }
    /// The index a linearizable read must wait for, from the leader wherever it is.
    async fn read_index(&self) -> Answer<Option<u64>> {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            match self.local_read_index().await {
                Err(CircuitError::NotLeader) => {}
                other => return other,
            }
            let (leader, state) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                (m.current_leader, m.state)
            };
            let f = ForwardToLeader { leader_id: leader, leader_node: None };
            // why this round found no leader, for the error if none is found in time
            let why = match leader {
                None => format!("this member ({state:?}) knows no leader"),
                Some(l) if l == self.node_id => {
                    format!("this member ({state:?}) names itself leader but could not confirm it")
                }
                Some(l) => match self.leader_peer(&f) {
                    None => format!("leader {l} is not in this member's membership"),
                    Some(peer) => match self.forward::<Option<u64>>(peer, ClientCall::ReadIndex).await? {
                        Some(index) => return Ok(index),
                        None => format!("leader {l} could not be reached or no longer leads"),
                    },
                },
            };
            if Instant::now() + RETRY > deadline {
                return Err(CircuitError::NoLeader(format!(
                    "no leader confirmed within {CLIENT_TIMEOUT:?}: {why} (is a majority of the members reachable?)"
                )));
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    pub async fn read(&self, key: Option<String>, stale: bool) -> Answer<ReadResult> {
        if !stale {
            if let Some(index) = self.read_index().await? {
                self.raft
                    .wait(Some(CLIENT_TIMEOUT))
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                    .map_err(|e| CircuitError::NoQuorum(format!("this member did not catch up to {index}: {e}")))?;
            }
        }
        let state = self.view.read();
        let entry = |(k, s): (&String, &crate::Stored)| StateEntry {
            key: k.clone(),
            value: s.value.clone(),
            version: s.version,
            checksum: s.checksum.clone(),
        };
        let entries = match key {
            Some(k) => state.kv.get(&k).map(|s| entry((&k, s))).into_iter().collect(),
            None => state.kv.iter().map(entry).collect(),
        };
        Ok(ReadResult { entries, node: self.node_id, applied: state.last_applied.map_or(0, |l| l.index), stale })
    }

    /// A membership change through this member, sent to the leader when it is elsewhere.
    async fn change(&self, call: ClientCall) -> Answer<MemberStatus> {
        let deadline = Instant::now() + ADD_TIMEOUT;
        loop {
            let here = match &call {
                ClientCall::AddMember { node_id, member } => self.add_here(*node_id, member.clone()).await,
                ClientCall::RemoveMember { node_id } => self.remove_here(*node_id).await,
                _ => unreachable!("only membership changes come here"),
            };
            match here {
                Err(CircuitError::NotLeader) => {}
                other => return other,
            }
            let leader = self.raft.metrics().borrow().current_leader;
            let f = ForwardToLeader { leader_id: leader, leader_node: None };
            if let Some(peer) = self.leader_peer(&f) {
                if let Some(status) = self.forward::<MemberStatus>(peer, call.clone()).await? {
                    return Ok(status);
                }
            }
            if Instant::now() + RETRY > deadline {
                return Err(CircuitError::NoLeader(format!("none elected within {ADD_TIMEOUT:?}")));
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// On the leader: the new member joins as a learner, catches up, then becomes a voter.
    async fn add_here(&self, node_id: NodeId, member: Member) -> Answer<MemberStatus> {
        let not_leader = |e: &RaftError<NodeId, ClientWriteError<NodeId, Member>>| {
            matches!(e, RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
        };
        let step = async {
            self.raft.add_learner(node_id, member, true).await?;
            self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false).await
        };
        match tokio::time::timeout(ADD_TIMEOUT, step).await {
            Err(_) => Err(CircuitError::Unknown(format!("member {node_id} did not catch up within {ADD_TIMEOUT:?}"))),
            Ok(Ok(_)) => Ok(self.status()),
            Ok(Err(e)) if not_leader(&e) => Err(CircuitError::NotLeader),
            Ok(Err(e)) => Err(CircuitError::Failed(e.to_string())),
        }
    }

    async fn remove_here(&self, node_id: NodeId) -> Answer<MemberStatus> {
        let change = self.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node_id])), false);
        match tokio::time::timeout(CLIENT_TIMEOUT, change).await {
            Err(_) => Err(CircuitError::Unknown(format!("the removal of {node_id} was not committed in time"))),
            Ok(Ok(_)) => Ok(self.status()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(CircuitError::NotLeader),
            Ok(Err(e)) => Err(CircuitError::Failed(e.to_string())),
        }
    }

    /// A chunk of a snapshot; the last one installs it.
    async fn snapshot_chunk(&self, chunk: Chunk) -> Result<Option<openraft::raft::SnapshotResponse<NodeId>>, String> {
        let bytes = hex::decode(&chunk.data).map_err(|e| format!("snapshot chunk: {e}"))?;
        let mut incoming = self.incoming.lock().await;
        let id = chunk.meta.snapshot_id.clone();
        if chunk.offset == 0 {
            *incoming = Some((id.clone(), Vec::new()));
        }
        let Some((have, buf)) = incoming.as_mut() else { return Err("snapshot chunk out of order".into()) };
        if *have != id || buf.len() as u64 != chunk.offset {
            *incoming = None;
            return Err("snapshot chunk out of order".into());
        }
        buf.extend_from_slice(&bytes);
        if !chunk.done {
            return Ok(None);
        }
        let (_, data) = incoming.take().expect("present");
        let snapshot = Snapshot { meta: chunk.meta, snapshot: Box::new(data) };
        match self.raft.install_full_snapshot(chunk.vote, snapshot).await {
            Ok(r) => Ok(Some(r)),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn serve(&self, body: Body) -> Vec<u8> {
        fn json<T: Serialize>(v: &T) -> Vec<u8> {
            serde_json::to_vec(v).expect("answers serialise")
        }
        match body {
            Body::Append(req) => json(&self.raft.append_entries(req).await),
            Body::Vote(req) => json(&self.raft.vote(req).await),
            Body::Snapshot(chunk) => {
                let r = self.snapshot_chunk(chunk).await;
                json(&r.map_err(|e| {
                    tracing::warn!("circuit {}: snapshot refused: {e}", self.circuit);
                    openraft::error::Fatal::<NodeId>::Stopped
                }))
            }
            Body::Client(call) => self.lead(call).await,
        }
    }
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn outcome(r: Response) -> WriteOutcome {
    match r {
        Response::Stored { version, checksum } => WriteOutcome::Stored { version, checksum },
        Response::Deleted { version } => WriteOutcome::Deleted { version },
        Response::Conflict { current } => WriteOutcome::Conflict { current },
        Response::NotFound | Response::Empty => WriteOutcome::NotFound,
    }
}

/// Every circuit member of one VM (or of a test's peer), under `dir/<circuit id>/`.
pub struct Replicas {
    p2p: Handle,
    dir: PathBuf,
    map: RwLock<HashMap<String, Arc<Replica>>>,
    /// Requests for circuits this VM is not in, by reason.
    refused: Mutex<BTreeMap<String, u64>>,
    /// Joins and leaves one at a time.
    joining: tokio::sync::Mutex<()>,
}

impl Replicas {
    /// Registers `/micro-os/raft/1` on `p2p` and reopens the members found under `dir`
    /// (a restarted VM rejoins its circuits with what its stores hold). Call it from
    /// inside the runtime the p2p peer runs on.
    pub async fn start(p2p: Handle, dir: PathBuf) -> Result<Arc<Replicas>, String> {
        let replicas = Arc::new(Replicas {
            p2p: p2p.clone(),
            dir,
            map: RwLock::new(HashMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            joining: tokio::sync::Mutex::new(()),
        });
        p2p.register(network::protocol(), replicas.clone()).map_err(|e| e.to_string())?;
        for entry in std::fs::read_dir(&replicas.dir).into_iter().flatten().flatten() {
            let dir = entry.path();
            let Ok(raw) = std::fs::read(dir.join(MEMBER_FILE)) else { continue };
            let joined: Joined = match serde_json::from_slice(&raw) {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!("{}: {e}", dir.join(MEMBER_FILE).display());
                    continue;
                }
            };
            match Replica::open(dir.clone(), &joined, p2p.clone()).await {
                Ok(r) => {
                    tracing::info!("circuit {}: member {} reopened", joined.circuit, joined.node_id);
                    replicas.map.write().unwrap().insert(joined.circuit.clone(), Arc::new(r));
                }
                Err(e) => tracing::warn!("circuit {}: cannot reopen member: {e}", joined.circuit),
            }
        }
        Ok(replicas)
    }

    fn get(&self, circuit: &str) -> Answer<Arc<Replica>> {
        self.map.read().unwrap().get(circuit).cloned().ok_or_else(|| CircuitError::NoCircuit(circuit.to_string()))
    }

    /// Whether `peer` is a member of one of the circuits here (or was named at a join):
    /// the VM's peer accepts it though its host does not know it (a VM of another host).
    pub fn admits(&self, peer: &PeerId) -> bool {
        self.map.read().unwrap().values().any(|r| r.admits(peer))
    }

    /// The circuits this VM is a member of.
    pub fn circuits(&self) -> Vec<String> {
        self.map.read().unwrap().keys().cloned().collect()
    }

    /// Answers one call of the daemon's: the JSON of `Result<T, CircuitError>`.
    pub async fn call(&self, call: CircuitCall) -> serde_json::Value {
        fn json<T: Serialize>(v: Answer<T>) -> serde_json::Value {
            serde_json::to_value(v).expect("answers serialise")
        }
        match call {
            CircuitCall::Join { circuit, node_id, members, initialize, settings } => {
                json(self.join(Joined { circuit, node_id, members, settings }, initialize).await)
            }
            CircuitCall::Write { circuit, op } => match self.get(&circuit) {
                Ok(r) => json(r.write(op).await),
                Err(e) => json::<()>(Err(e)),
            },
            CircuitCall::Read { circuit, key, stale } => match self.get(&circuit) {
                Ok(r) => json(r.read(key, stale).await),
                Err(e) => json::<()>(Err(e)),
            },
            CircuitCall::Status { circuit } => json(self.get(&circuit).map(|r| r.status())),
            CircuitCall::AddMember { circuit, node_id, member: m } => match self.get(&circuit) {
                Ok(r) => json(r.change(ClientCall::AddMember { node_id, member: member(&m) }).await),
                Err(e) => json::<()>(Err(e)),
            },
            CircuitCall::RemoveMember { circuit, node_id } => match self.get(&circuit) {
                Ok(r) => json(r.change(ClientCall::RemoveMember { node_id }).await),
                Err(e) => json::<()>(Err(e)),
            },
            CircuitCall::Hold { circuit, replication, elections, for_ms } => {
                json(self.get(&circuit).map(|r| r.hold(replication, elections, for_ms)))
            }
            CircuitCall::Elect { circuit } => match self.get(&circuit) {
                Ok(r) => json(
                    r.raft.trigger().elect().await.map(|_| r.status()).map_err(|e| CircuitError::Failed(e.to_string())),
                ),
                Err(e) => json::<()>(Err(e)),
            },
            CircuitCall::Leave { circuit } => json(self.leave(&circuit).await),
        }
    }

    async fn join(&self, joined: Joined, initialize: bool) -> Answer<MemberStatus> {
        let _one = self.joining.lock().await;
        if let Ok(r) = self.get(&joined.circuit) {
            if r.node_id != joined.node_id {
                return Err(CircuitError::Invalid(format!(
                    "this VM is member {} of circuit {:?} already, not {}",
                    r.node_id, joined.circuit, joined.node_id
                )));
            }
            return Ok(r.status());
        }
        joined.settings.validate().map_err(|e| CircuitError::Invalid(e.to_string()))?;
        let dir = self.dir.join(&joined.circuit);
        let failed = |e: std::io::Error| CircuitError::Failed(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(failed)?;
        write_durably(&dir.join(MEMBER_FILE), &serde_json::to_vec_pretty(&joined).expect("serialises"))
            .map_err(failed)?;
        let r = Replica::open(dir.clone(), &joined, self.p2p.clone()).await?;
        if initialize && !r.raft.is_initialized().await.unwrap_or(false) {
            let members = joined.members.iter().map(|(id, m)| (*id, member(m))).collect::<BTreeMap<_, _>>();
            r.raft.initialize(members).await.map_err(|e| CircuitError::Failed(format!("initialize: {e}")))?;
        }
        let status = r.status();
        self.map.write().unwrap().insert(joined.circuit.clone(), Arc::new(r));
        Ok(status)
    }

    async fn leave(&self, circuit: &str) -> Answer<()> {
        let _one = self.joining.lock().await;
        let r = self.map.write().unwrap().remove(circuit);
        if let Some(r) = r {
            let _ = r.raft.shutdown().await;
            // the store's thread closes its file once the last handle is gone
            drop(r);
        }
        let dir = self.dir.join(circuit);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CircuitError::Failed(format!("{}: {e}", dir.display()))),
        }
    }

    /// Requests refused for circuits this VM is not in, by reason.
    pub fn refused(&self) -> BTreeMap<String, u64> {
        self.refused.lock().unwrap().clone()
    }
}

impl Replica {
    /// Holds back replication (every RPC this member would send) or elections for
    /// `for_ms` at most; `false, false` lets them run again now.
    fn hold(self: &Arc<Self>, replication: bool, elections: bool, for_ms: u64) -> MemberStatus {
        use std::sync::atomic::Ordering;
        let generation = self.holds.fetch_add(1, Ordering::SeqCst) + 1;
        let until = Instant::now() + Duration::from_millis(for_ms);
        self.held.set(replication.then_some(until));
        self.raft.runtime_config().heartbeat(!replication);
        self.raft.runtime_config().elect(!elections);
        if replication || elections {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(for_ms)).await;
                if this.holds.load(Ordering::SeqCst) == generation {
                    this.held.set(None);
                    this.raft.runtime_config().heartbeat(true);
                    this.raft.runtime_config().elect(true);
                }
            });
        }
        self.status()
    }
}

impl ProtocolHandler for Replicas {
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Vec<u8>, Refusal>> {
        Box::pin(async move {
            let rpc: network::Rpc = serde_json::from_str(&request.state).map_err(|_| {
                *self.refused.lock().unwrap().entry("malformed raft request".into()).or_default() += 1;
                Refusal("malformed raft request".into())
            })?;
            let Ok(replica) = self.get(&rpc.circuit) else {
                *self.refused.lock().unwrap().entry("not in this circuit".into()).or_default() += 1;
                return Err(Refusal("not in this circuit".into()));
            };
            if !replica.admits(&request.peer) {
                tracing::warn!("circuit {}: refused raft traffic from {}: not a member", rpc.circuit, request.peer);
                return Err(replica.refuse("sender is not a circuit member"));
            }
            Ok(replica.serve(rpc.body).await)
        })
    }

    /// A snapshot goes in 256 KiB chunks and a circuit's chain block fits one entry:
    /// the registry's 1 MiB, said here because Raft depends on it.
    fn max_request(&self) -> u32 {
        micro_os_p2p::registry::MAX_REQUEST
    }

    /// A member's Raft traffic is never rate limited: heartbeats, appends and forwarded
    /// writes under load reach thousands a second, and throttling them would cost the
    /// circuit its leader. Everyone else is metered (and refused by `handle`).
    fn unmetered(&self, peer: &PeerId) -> bool {
        self.admits(peer)
    }
}

/// Writes a file and its directory entry durably (a member's identity must survive a
/// power cut as its log does).
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// One leadership confirmation by a quorum: the index a read must wait for.
async fn confirm_leader(raft: &Raft<TypeConfig>) -> Answer<Option<u64>> {
    match tokio::time::timeout(CLIENT_TIMEOUT, raft.get_read_log_id()).await {
        Err(_) => {
            Err(CircuitError::NoQuorum(format!("a majority did not confirm the leader within {CLIENT_TIMEOUT:?}")))
        }
        Ok(Ok((read, _))) => Ok(read.map(|l| l.index)),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => Err(CircuitError::NotLeader),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
            Err(CircuitError::NoQuorum(e.to_string()))
        }
        Ok(Err(e)) => Err(CircuitError::Failed(e.to_string())),
    }
}
