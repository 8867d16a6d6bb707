//! The store under the real engine: a one-member openraft `Raft` writes through it, takes
//! snapshots and purges its log, and after a restart on the same file carries on where it
//! stopped. (A one-member circuit never sends an RPC, so the network here refuses all.)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use micro_os_circuit::{checksum, open, Command, Member, NodeId, Response, StateView, TypeConfig};
use openraft::error::{Fatal, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::storage::RaftLogStorage;
use openraft::{Config, OptionalSend, Raft, RaftLogReader, Snapshot, SnapshotPolicy, Vote};

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

fn config() -> Arc<Config> {
    let config = Config {
        cluster_name: "test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        // Snapshot every 5 entries and keep no log behind it, so purge runs for real.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(5),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    Arc::new(config.validate().unwrap())
}

async fn start(path: &Path) -> (Raft<TypeConfig>, StateView, micro_os_circuit::LogStore) {
    let (log, sm) = open(path).await.unwrap();
    let view = sm.view();
    let raft = Raft::new(1, config(), NoNetwork, log.clone(), sm).await.unwrap();
    (raft, view, log)
}

async fn write(raft: &Raft<TypeConfig>, command: Command) -> Response {
    raft.client_write(command).await.unwrap().data
}

fn set(key: &str, value: String) -> Command {
    Command::Set { key: key.into(), value }
}

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_member_circuit_commits_snapshots_and_restarts_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("member-1.db");
    let last_applied;
    {
        let (raft, view, mut log) = start(&path).await;
        let me = Member { peer: "12D3KooWself".into(), addr: "/ip4/127.0.0.1/tcp/4001".into() };
        raft.initialize(BTreeMap::from([(1, me)])).await.unwrap();
        raft.wait(WAIT).current_leader(1, "becomes leader").await.unwrap();

        for i in 1..=12 {
            let value = format!("v{i}");
            assert_eq!(
                write(&raft, set("counter", value.clone())).await,
                Response::Stored { version: i, checksum: checksum(&value) }
            );
        }
        let cas = Command::CompareAndSet { key: "counter".into(), expected_version: 3, value: "late".into() };
        assert_eq!(write(&raft, cas).await, Response::Conflict { current: 12 });

        // Two blank/membership entries and 13 commands: a snapshot at 10 at least, and the
        // log before it purged.
        let metrics = raft
            .wait(WAIT)
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= 10) && m.purged.is_some(), "snapshot and purge")
            .await
            .unwrap();
        last_applied = metrics.last_applied;
        assert_eq!(view.last_applied(), last_applied);
        let purged = log.get_log_state().await.unwrap().last_purged_log_id.expect("purged");
        assert!(purged.index >= 10, "purged up to {purged}");
        assert!(log.try_get_log_entries(0..=purged.index).await.unwrap().is_empty());
        raft.shutdown().await.unwrap();
    }

    let (raft, view, _log) = start(&path).await;
    // The applied state is back before any replay, and the member leads again.
    assert_eq!(view.last_applied(), last_applied);
    assert_eq!(view.get("counter").map(|s| (s.value, s.version)), Some(("v12".to_owned(), 12)));
    raft.wait(WAIT).current_leader(1, "leads again after restart").await.unwrap();
    assert_eq!(
        write(&raft, set("counter", "after".into())).await,
        Response::Stored { version: 13, checksum: checksum("after") }
    );
    raft.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_each_get_their_own_version_and_one_compare_and_set_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (raft, view, _log) = start(&dir.path().join("member-1.db")).await;
    let me = Member { peer: "12D3KooWself".into(), addr: "/ip4/127.0.0.1/tcp/4001".into() };
    raft.initialize(BTreeMap::from([(1, me)])).await.unwrap();
    raft.wait(WAIT).current_leader(1, "becomes leader").await.unwrap();

    let writers: Vec<_> = (0..64)
        .map(|i| {
            let raft = raft.clone();
            tokio::spawn(async move { write(&raft, set("hot", format!("w{i}"))).await })
        })
        .collect();
    let mut versions = Vec::new();
    for writer in writers {
        match writer.await.unwrap() {
            Response::Stored { version, .. } => versions.push(version),
            other => panic!("a set answered {other:?}"),
        }
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=64).collect::<Vec<u64>>());

    let racers: Vec<_> = (0..16)
        .map(|i| {
            let raft = raft.clone();
            let cas = Command::CompareAndSet { key: "hot".into(), expected_version: 64, value: format!("c{i}") };
            tokio::spawn(async move { write(&raft, cas).await })
        })
        .collect();
    let mut won = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Response::Stored { version: 65, checksum } => won.push(checksum),
            Response::Conflict { current: 65 } => {}
            other => panic!("a compare-and-set answered {other:?}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one compare-and-set wins");
    let hot = view.get("hot").unwrap();
    assert_eq!((hot.version, &hot.checksum), (65, &won[0]));
    raft.shutdown().await.unwrap();
}
