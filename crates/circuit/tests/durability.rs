//! What a member's store keeps across a reopen, and what a snapshot carries: through the
//! public API and openraft's storage traits only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use micro_os_circuit::{checksum, open, Command, LogStore, Member, NodeId, Response, StateMachine, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder, StoredMembership,
    Vote,
};

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry { log_id: log_id(term, index), payload }
}

fn set(key: &str, value: &str) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Command::Set { key: key.into(), value: value.into() })
}

fn cas(key: &str, expected_version: u64, value: &str) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Command::CompareAndSet { key: key.into(), expected_version, value: value.into() })
}

fn delete(key: &str) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Command::Delete { key: key.into() })
}

fn members() -> Membership<NodeId, Member> {
    let nodes: BTreeMap<NodeId, Member> = (1..=3)
        .map(|id| (id, Member { peer: format!("12D3KooWpeer{id}"), addr: format!("/ip4/10.88.0.{id}/tcp/4001") }))
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

/// Blank, membership, then four commands: log indexes 1..=6 in term 1.
fn six_entries() -> Vec<Entry<TypeConfig>> {
    vec![
        entry(1, 1, EntryPayload::Blank),
        entry(1, 2, EntryPayload::Membership(members())),
        entry(1, 3, set("a", "one")),
        entry(1, 4, set("a", "two")),
        entry(1, 5, cas("b", 0, "bee")),
        entry(1, 6, delete("a")),
    ]
}

async fn open_at(path: &Path) -> (LogStore, StateMachine) {
    open(path).await.expect("open the store")
}

fn stored(version: u64, value: &str) -> Response {
    Response::Stored { version, checksum: checksum(value) }
}

#[tokio::test]
async fn apply_answers_for_every_entry_and_keeps_versions_and_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open_at(&dir.path().join("c.db")).await;
    let mut entries = six_entries();
    entries.push(entry(1, 7, cas("b", 7, "wrong")));
    entries.push(entry(1, 8, delete("nothing")));
    let responses = sm.apply(entries).await.unwrap();
    assert_eq!(
        responses,
        [
            Response::Empty,
            Response::Empty,
            stored(1, "one"),
            stored(2, "two"),
            stored(1, "bee"),
            Response::Deleted { version: 2 },
            Response::Conflict { current: 1 },
            Response::NotFound,
        ]
    );
    let view = sm.view();
    assert_eq!(view.get("a"), None);
    let b = view.get("b").unwrap();
    assert_eq!((b.value.as_str(), b.version, b.checksum.as_str()), ("bee", 1, checksum("bee").as_str()));
    assert_eq!(view.last_applied(), Some(log_id(1, 8)));
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 8)));
    assert_eq!(membership, StoredMembership::new(Some(log_id(1, 2)), members()));
}

#[tokio::test]
async fn vote_log_and_applied_state_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let vote = Vote::new_committed(3, 2);
    {
        let (mut log, mut sm) = open_at(&path).await;
        log.save_vote(&vote).await.unwrap();
        log.blocking_append(six_entries()).await.unwrap();
        log.save_committed(Some(log_id(1, 5))).await.unwrap();
        sm.apply(six_entries().into_iter().take(5)).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
        // An append after the purge, then the store is dropped with nothing pending.
        log.blocking_append([entry(2, 7, set("c", "sea"))]).await.unwrap();
    }
    let (mut log, mut sm) = open_at(&path).await;
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 5)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(2, 7)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, [3, 4, 5, 6, 7]);
    assert!(matches!(&entries[4].payload, EntryPayload::Normal(Command::Set { key, .. }) if key == "c"));

    // The applied state came back from the file: no replay from index 1.
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 5)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 2)));
    let a = sm.view().get("a").unwrap();
    assert_eq!((a.value.as_str(), a.version), ("two", 2));
    assert_eq!(sm.view().get("b").unwrap().version, 1);

    // Applying the rest carries on from there.
    let more = sm.apply([entry(1, 6, delete("a")), entry(2, 7, set("c", "sea"))]).await.unwrap();
    assert_eq!(more, [Response::Deleted { version: 2 }, stored(1, "sea")]);
}

#[tokio::test]
async fn a_truncate_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let (mut log, _sm) = open_at(&path).await;
        log.blocking_append(six_entries()).await.unwrap();
        log.truncate(log_id(1, 4)).await.unwrap();
    }
    let (mut log, _sm) = open_at(&path).await;
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 3)));
    let mut reader = log.get_log_reader().await;
    assert_eq!(reader.try_get_log_entries(4..).await.unwrap().len(), 0);
    assert_eq!(reader.try_get_log_entries(..).await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_snapshot_carries_the_map_to_another_member_and_survives_its_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (_log_a, mut a) = open_at(&dir.path().join("a.db")).await;
    a.apply(six_entries()).await.unwrap();
    let built = a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 6)));
    assert_eq!(built.meta.last_membership, StoredMembership::new(Some(log_id(1, 2)), members()));
    // The same state gives the same snapshot id; the id names the last log id.
    let again = a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(again.meta.snapshot_id, built.meta.snapshot_id);
    assert!(built.meta.snapshot_id.starts_with("1-1-6-"), "{}", built.meta.snapshot_id);

    let path_b = dir.path().join("b.db");
    {
        let (_log_b, mut b) = open_at(&path_b).await;
        // B had state of its own, which the snapshot replaces entirely.
        b.apply([entry(1, 1, set("stale", "x"))]).await.unwrap();
        let mut received = b.begin_receiving_snapshot().await.unwrap();
        received.extend_from_slice(&built.snapshot);
        b.install_snapshot(&built.meta, received).await.unwrap();
        assert_eq!(b.view().read().kv, a.view().read().kv);
        assert_eq!(b.view().get("stale"), None);
    }
    let (_log_b, mut b) = open_at(&path_b).await;
    assert_eq!(b.applied_state().await.unwrap(), (Some(log_id(1, 6)), built.meta.last_membership.clone()));
    assert_eq!(b.view().read().kv, a.view().read().kv);
    let current = b.get_current_snapshot().await.unwrap().expect("the installed snapshot is kept");
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot, built.snapshot);
}
