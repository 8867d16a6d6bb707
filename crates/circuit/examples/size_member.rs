//! Size probe: the baseline plus everything a VM agent's Raft member needs from this crate
//! and openraft: `size_member PATH` starts a one-member Raft on the store at PATH, commits
//! one write through it and prints the answer and its resident set size. (One member sends
//! no RPC, so the network refuses all.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use micro_os_circuit::{open, Command, Member, NodeId, TypeConfig};
use openraft::error::{Fatal, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{Config, OptionalSend, Raft, Snapshot, Vote};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "size.db".into());
    let (log, sm) = open(&path).await.expect("open the store");
    let fresh = sm.view().last_applied().is_none();
    let config = Arc::new(Config::default().validate().expect("config"));
    let raft = Raft::new(1, config, NoNetwork, log, sm).await.expect("start raft");
    if fresh {
        let me = Member { peer: "12D3KooWself".into(), addr: "/ip4/127.0.0.1/tcp/4001".into() };
        raft.initialize(BTreeMap::from([(1, me)])).await.expect("initialize");
    }
    raft.wait(Some(Duration::from_secs(10))).current_leader(1, "leader").await.expect("leader");
    let answer = raft.client_write(Command::Set { key: "k".into(), value: "v".into() }).await.expect("write").data;
    println!("{}", serde_json::json!({ "path": path, "answer": answer, "rss": rss() }));
    raft.shutdown().await.expect("shutdown");
}

/// VmRSS, RssAnon and RssFile from /proc/self/status.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or("? ?");
        line.split_whitespace().nth(1).unwrap_or("?").to_owned()
    };
    format!("{} kB (anon {} kB, file {} kB)", field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

struct NoNetwork;

fn unreachable() -> Unreachable {
    Unreachable::new(&std::io::Error::other("a one-member circuit has no one to talk to"))
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoNetwork;
    async fn new_client(&mut self, _target: NodeId, _node: &Member) -> NoNetwork {
        NoNetwork
    }
}

impl RaftNetwork<TypeConfig> for NoNetwork {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote<NodeId>,
        _snapshot: Snapshot<TypeConfig>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        Err(StreamingError::Unreachable(unreachable()))
    }
}
