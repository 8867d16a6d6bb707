//! openraft's network over micro-os's libp2p layer: every Raft RPC is one signed request
//! on the registered protocol `/micro-os/raft/1` (`micro_os_p2p::registry`), carrying the
//! circuit's id, so one protocol serves every circuit an agent is in. The p2p node checks
//! the envelope (signature, window, nonce, known peer) before the handler
//! (`replica::Replicas`) checks that the sender is a member of that circuit.
//!
//! A snapshot travels in chunks of [`SNAPSHOT_CHUNK`] bytes, each its own request, so a
//! snapshot of any size fits the registry's 1 MiB request limit; the receiver assembles
//! them and installs the whole snapshot when the last chunk arrives.

use std::time::Duration;

use micro_os_p2p::net::MessageType;
use micro_os_p2p::{Handle, PeerId, StreamProtocol};
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, Snapshot, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Command, Member, NodeId, TypeConfig};

/// The protocol every circuit's Raft traffic uses.
pub const PROTOCOL: &str = "/micro-os/raft/1";
/// Raw snapshot bytes per request (hex doubles them on the wire: under the 1 MiB limit).
pub const SNAPSHOT_CHUNK: usize = 256 * 1024;

/// The largest request body the p2p registry takes, less room for the envelope.
pub(crate) const MAX_STATE: usize = (1 << 20) - 16 * 1024;

pub(crate) fn protocol() -> StreamProtocol {
    StreamProtocol::new(PROTOCOL)
}

/// One request on `/micro-os/raft/1`. Public for the fuzz target of the decoder
/// (`fuzz/fuzz_targets/raft_message.rs`); only this crate builds and serves them.
#[derive(Debug, Serialize, Deserialize)]
pub struct Rpc {
    /// The circuit's id.
    pub circuit: String,
    pub body: Body,
}

/// Externally tagged: openraft's types hold maps with integer keys, which serde's
/// internally tagged enums cannot read back.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(Chunk),
    /// A client's request, sent to the member believed to lead.
    Client(ClientCall),
}

/// A piece of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct Chunk {
    pub vote: Vote<NodeId>,
    pub meta: SnapshotMeta<NodeId, Member>,
    pub offset: u64,
    /// Hex of the bytes.
    pub data: String,
    pub done: bool,
}

/// What a member asks of the leader on a client's behalf.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCall {
    Write(Command),
    /// Confirm leadership with a quorum and say up to which index a reader must have applied.
    ReadIndex,
    AddMember {
        node_id: NodeId,
        member: Member,
    },
    RemoveMember {
        node_id: NodeId,
    },
}

/// Builds a client per target member.
#[derive(Clone)]
pub struct Network {
    pub(crate) p2p: Handle,
    pub(crate) circuit: String,
    pub(crate) held: Held,
    /// RPCs timed out in a row, per member: kept here, not in a `Client`, because openraft
    /// makes a fresh client for every vote request, so a candidate's count never grew and
    /// its wedged sessions were never replaced (a member cut off and back stayed a
    /// candidate whose votes all timed out).
    pub(crate) timeouts: Timeouts,
}

/// Timed-out RPCs in a row by member.
pub(crate) type Timeouts = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<NodeId, u32>>>;

/// Until when this member sends no Raft RPC at all (how leadership is handed over: its
/// followers stop hearing from it, so their lease on it runs out).
#[derive(Clone, Default)]
pub(crate) struct Held(std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>);

impl Held {
    pub(crate) fn set(&self, until: Option<std::time::Instant>) {
        *self.0.lock().unwrap() = until;
    }

    fn active(&self) -> bool {
        self.0.lock().unwrap().is_some_and(|t| std::time::Instant::now() < t)
    }
}

pub struct Client {
    p2p: Handle,
    held: Held,
    circuit: String,
    target: NodeId,
    peer: Option<PeerId>,
    addr: Option<micro_os_p2p::Multiaddr>,
    /// RPCs timed out in a row, shared by every client of this member's `Network`.
    timeouts: Timeouts,
}

/// Timed-out RPCs in a row after which a member's session is closed for a fresh one.
const FRESH_STREAM_AFTER: u32 = 3;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Client {
        let peer = node.peer.parse::<PeerId>().ok();
        let addr = node.addr.parse::<micro_os_p2p::Multiaddr>().ok();
        if let (Some(peer), Some(addr)) = (peer, &addr) {
            self.p2p.add_address(peer, addr.clone()).await;
        }
        Client {
            p2p: self.p2p.clone(),
            held: self.held.clone(),
            circuit: self.circuit.clone(),
            target,
            peer,
            addr,
            timeouts: self.timeouts.clone(),
        }
    }
}

/// Why a request to another member failed before it answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("member {0} has no valid peer id")]
    NoPeer(NodeId),
    #[error("this member holds back its replication (a leadership transfer)")]
    Held,
    #[error("a request of {0} bytes is over the limit of one message")]
    TooLarge(usize),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    P2p(#[from] micro_os_p2p::Error),
    #[error("the answer is not valid: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Sends `body` to `peer` and decodes its answer as `T`.
pub(crate) async fn call<T: DeserializeOwned>(
    p2p: &Handle,
    peer: PeerId,
    circuit: &str,
    body: Body,
    ttl: Duration,
) -> Result<T, SendError> {
    send_state(p2p, peer, encode(circuit, body)?, ttl).await
}

fn encode(circuit: &str, body: Body) -> Result<String, SendError> {
    Ok(serde_json::to_string(&Rpc { circuit: circuit.to_string(), body })?)
}

async fn send_state<T: DeserializeOwned>(
    p2p: &Handle,
    peer: PeerId,
    state: String,
    ttl: Duration,
) -> Result<T, SendError> {
    // the envelope carries the state as a JSON string: escaped once more on the wire
    if state.len() > MAX_STATE || escaped_len(&state) > MAX_STATE {
        return Err(SendError::TooLarge(state.len()));
    }
    let answer = tokio::time::timeout(ttl, p2p.send_request(peer, protocol(), MessageType::Sync, state))
        .await
        .map_err(|_| SendError::TimedOut(ttl))??;
    Ok(serde_json::from_slice(&answer)?)
}

/// The length of `s` as a JSON string.
pub(crate) fn escaped_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
        + 2
}

impl Client {
    async fn rpc<T: DeserializeOwned>(&mut self, body: Body, option: &RPCOption) -> Result<T, SendError> {
        let state = encode(&self.circuit, body)?;
        if self.held.active() {
            return Err(SendError::Held);
        }
        let peer = self.peer.ok_or(SendError::NoPeer(self.target))?;
        // a dial goes through the swarm's event loop: only when no session carries the RPC
        if let Some(addr) = self.addr.as_ref().filter(|_| !self.p2p.has_session(peer, &protocol())) {
            self.p2p.connect(peer, addr.clone()).await;
        }
        let answer = send_state(&self.p2p, peer, state, option.hard_ttl()).await;
        if matches!(answer, Err(SendError::TimedOut(_))) {
            // after a partition a stream can stay open with no one answering on it while
            // pings keep its connection up: after a few timeouts in a row the next RPC goes
            // on a fresh stream (not after one: a slow answer is no reason to pay a new
            // stream's round trips)
            let fresh = {
                let mut t = self.timeouts.lock().unwrap();
                let n = t.entry(self.target).or_default();
                *n += 1;
                let fresh = *n >= FRESH_STREAM_AFTER;
                if fresh {
                    *n = 0;
                }
                fresh
            };
            if fresh {
                self.p2p.close_session(peer, &protocol());
            }
        } else {
            self.timeouts.lock().unwrap().remove(&self.target);
        }
        answer
    }
}

fn unreachable(e: SendError) -> Unreachable {
    Unreachable::new(&e)
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            self.rpc(Body::Append(rpc), &option).await.map_err(|e| match e {
                // too many entries for one request: openraft retries with fewer
                SendError::TooLarge(_) if entries > 1 => {
                    RPCError::PayloadTooLarge(openraft::error::PayloadTooLarge::new_entries_hint(entries / 2))
                }
                e => RPCError::Unreachable(unreachable(e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            self.rpc(Body::Vote(rpc), &option).await.map_err(|e| RPCError::Unreachable(unreachable(e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let send = async {
            let data: &[u8] = &snapshot.snapshot;
            let mut offset = 0usize;
            loop {
                let end = (offset + SNAPSHOT_CHUNK).min(data.len());
                let done = end == data.len();
                let chunk = Chunk {
                    vote,
                    meta: snapshot.meta.clone(),
                    offset: offset as u64,
                    data: hex::encode(&data[offset..end]),
                    done,
                };
                let answer: Result<Option<SnapshotResponse<NodeId>>, Fatal<NodeId>> = self
                    .rpc(Body::Snapshot(chunk), &option)
                    .await
                    .map_err(|e| StreamingError::Unreachable(unreachable(e)))?;
                match answer {
                    Err(e) => return Err(StreamingError::RemoteError(RemoteError::new(self.target, e))),
                    Ok(Some(done)) => return Ok(done),
                    Ok(None) if done => {
                        let e = NetworkError::new(&std::io::Error::other("the last chunk was not answered"));
                        return Err(StreamingError::Network(e));
                    }
                    Ok(None) => offset = end,
                }
            }
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = send => sent,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn escaped_length_is_what_serde_json_writes() {
        for s in ["plain", "quote \" and \\ back", "ctl \u{1} \n", "ünïcödé"] {
            assert_eq!(escaped_len(s), serde_json::to_string(s).unwrap().len(), "{s:?}");
        }
    }
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};

    #[test]
    fn requests_with_a_membership_read_back() {
        let members = BTreeMap::from([(1, Member { peer: "p1".into(), addr: "/ip4/10.0.0.2/tcp/4001".into() })]);
        let membership = Membership::new(vec![[1u64].into()], members);
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Membership(membership),
        };
        let req = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: vec![entry],
            leader_commit: None,
        };
        let rpc = Rpc { circuit: "c".into(), body: Body::Append(req) };
        let back: Rpc = serde_json::from_str(&serde_json::to_string(&rpc).unwrap()).unwrap();
        assert!(matches!(back.body, Body::Append(r) if r.entries.len() == 1));
    }
}
