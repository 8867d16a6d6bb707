//! The state machine half of a member's store: the applied map in memory, written through
//! to the `kv` and `sm_meta` tables in one transaction per apply batch, and its snapshot.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StoredMembership,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::kv::{Change, Kv, Response, Stored};
use crate::{Member, NodeId, SnapshotData, TypeConfig};

type StorageResult<T> = std::result::Result<T, StorageError<NodeId>>;

const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";

/// Everything applied so far: the map, the last applied log id and the membership. It is
/// also what a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub kv: Kv,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Member>,
}

/// The state machine openraft drives (`RaftStateMachine`).
pub struct StateMachine {
    db: Db,
    applied: Arc<RwLock<Applied>>,
}

/// Builds a snapshot of the state machine as it is when the builder was asked for.
pub struct SnapshotBuilder {
    db: Db,
    applied: Arc<RwLock<Applied>>,
}

/// A read-only view of the applied state, for local (stale) reads while openraft owns the
/// [`StateMachine`].
#[derive(Clone)]
pub struct StateView {
    applied: Arc<RwLock<Applied>>,
}

impl StateView {
    /// The applied state now; hold the guard briefly.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        read_lock(&self.applied)
    }

    pub fn get(&self, key: &str) -> Option<Stored> {
        self.read().kv.get(key).cloned()
    }

    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.read().last_applied
    }
}

fn read_lock(applied: &RwLock<Applied>) -> RwLockReadGuard<'_, Applied> {
    // A panic while holding the lock leaves a state no one wrote half of: the lock is only
    // taken for whole assignments and reads.
    applied.read().unwrap_or_else(|e| e.into_inner())
}

impl StateMachine {
    pub(crate) fn new(db: Db, applied: Applied) -> StateMachine {
        StateMachine { db, applied: Arc::new(RwLock::new(applied)) }
    }

    /// A view that stays valid after the state machine moved into openraft.
    pub fn view(&self) -> StateView {
        StateView { applied: self.applied.clone() }
    }

    fn replace(&self, applied: Applied) {
        *self.applied.write().unwrap_or_else(|e| e.into_inner()) = applied;
    }
}

fn get_meta<T: for<'de> Deserialize<'de>>(conn: &Connection, name: &'static str) -> Result<Option<T>> {
    let raw: Option<Vec<u8>> =
        conn.query_row("SELECT value FROM sm_meta WHERE name = ?1", [name], |r| r.get(0)).optional()?;
    raw.map(|raw| serde_json::from_slice(&raw).map_err(Error::corrupt(name))).transpose()
}

fn put_meta<T: Serialize>(conn: &Connection, name: &'static str, value: &T) -> Result<()> {
    let raw = serde_json::to_vec(value).map_err(Error::encode(name))?;
    conn.execute(
        "INSERT INTO sm_meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![name, raw],
    )?;
    Ok(())
}

fn put_pointers(
    conn: &Connection,
    last_applied: &Option<LogId<NodeId>>,
    membership: &StoredMembership<NodeId, Member>,
) -> Result<()> {
    put_meta(conn, LAST_APPLIED, last_applied)?;
    put_meta(conn, MEMBERSHIP, membership)
}

fn put_stored(conn: &Connection, key: &str, s: &Stored) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO kv (key, value, version, checksum) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version,
             checksum = excluded.checksum",
    )?;
    stmt.execute(params![key, s.value, s.version as i64, s.checksum])?;
    Ok(())
}

/// Loads the applied state from the database (on the storage thread, at open).
pub(crate) fn load(conn: &Connection) -> Result<Applied> {
    let mut kv = Kv::default();
    let mut stmt = conn.prepare("SELECT key, value, version, checksum FROM kv")?;
    let rows = stmt.query_map([], |r| {
        let stored = Stored { value: r.get(1)?, version: r.get::<_, i64>(2)? as u64, checksum: r.get(3)? };
        Ok((r.get::<_, String>(0)?, stored))
    })?;
    for row in rows {
        let (key, stored) = row?;
        kv.insert_stored(key, stored);
    }
    Ok(Applied {
        kv,
        last_applied: get_meta::<Option<LogId<NodeId>>>(conn, LAST_APPLIED)?.flatten(),
        membership: get_meta(conn, MEMBERSHIP)?.unwrap_or_default(),
    })
}

/// The current snapshot row, if any.
fn current_snapshot(conn: &Connection) -> Result<Option<Snapshot<TypeConfig>>> {
    let row: Option<(Vec<u8>, Vec<u8>)> = conn
        .query_row("SELECT meta, data FROM snapshot WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((meta, data)) = row else { return Ok(None) };
    let meta = serde_json::from_slice(&meta).map_err(Error::corrupt("snapshot meta"))?;
    Ok(Some(Snapshot { meta, snapshot: Box::new(data) }))
}

fn put_snapshot(conn: &Connection, meta: &SnapshotMeta<NodeId, Member>, data: &[u8]) -> Result<()> {
    let meta = serde_json::to_vec(meta).map_err(Error::encode("snapshot meta"))?;
    conn.execute(
        "INSERT INTO snapshot (id, meta, data) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET meta = excluded.meta, data = excluded.data",
        params![meta, data],
    )?;
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Serialises the applied state and keeps it as the current snapshot (durably) before
    /// answering. The id names the last log id and the content's hash, so it is the same
    /// on every member that snapshots the same state.
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let fail = |e: Error| e.storage(ErrorSubject::Snapshot(None), ErrorVerb::Write);
        let (data, last_log_id, last_membership) = {
            let applied = read_lock(&self.applied);
            let data = serde_json::to_vec(&*applied).map_err(|e| fail(Error::encode("snapshot")(e)))?;
            (data, applied.last_applied, applied.membership.clone())
        };
        let at = last_log_id.map_or_else(
            || "0-0-0".to_owned(),
            |l| format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
        );
        let snapshot_id = format!("{at}-{}", &hex::encode(sha2::Sha256::digest(&data))[..16]);
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let stored_meta = meta.clone();
        // The bytes go to the storage thread and come back after the commit: one copy.
        let data = self
            .db
            .write(move |conn| {
                put_snapshot(conn, &stored_meta, &data)?;
                Ok(data)
            })
            .await
            .map_err(fail)?;
        Ok(Snapshot { meta, snapshot: Box::new(data) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        let applied = read_lock(&self.applied);
        Ok((applied.last_applied, applied.membership.clone()))
    }

    /// Applies the entries with [`Kv::apply`] and persists the result, in one transaction,
    /// before answering.
    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Applied in place: the entries are committed, so a reader may see them before this
        // member's own commit; if that commit fails the store refuses all further writes and
        // openraft stops the member, which replays from its log when it starts again.
        let mut responses = Vec::new();
        let mut changes = Vec::new();
        let (last, last_applied, membership) = {
            let mut applied = self.applied.write().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                responses.push(match entry.payload {
                    EntryPayload::Blank => Response::Empty,
                    EntryPayload::Normal(command) => {
                        let (response, change) = applied.kv.apply_change(&command);
                        changes.extend(change);
                        response
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Empty
                    }
                });
            }
            if responses.is_empty() {
                return Ok(responses);
            }
            let last = applied.last_applied.expect("set by the entries just applied");
            (last, applied.last_applied, applied.membership.clone())
        };
        // no fsync of its own: the entries are durable in the log, and a member that lost
        // this commit to a power cut re-applies them from there when it starts again
        self.db
            .write_relaxed(move |conn| {
                for change in &changes {
                    match change {
                        Change::Put(key, stored) => put_stored(conn, key, stored)?,
                        Change::Remove(key) => {
                            conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?.execute([key])?;
                        }
                    }
                }
                put_pointers(conn, &last_applied, &membership)
            })
            .await
            .map_err(|e| e.storage(ErrorSubject::Apply(last), ErrorVerb::Write))?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), applied: self.applied.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<SnapshotData>> {
        Ok(Box::default())
    }

    /// Replaces the whole state with the snapshot's and keeps the snapshot as the current
    /// one, in one durable transaction.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<SnapshotData>,
    ) -> StorageResult<()> {
        let signature = Some(meta.signature());
        let fail = |e: Error| e.storage(ErrorSubject::Snapshot(signature.clone()), ErrorVerb::Write);
        let mut applied: Applied =
            serde_json::from_slice(&snapshot).map_err(|e| fail(Error::corrupt("snapshot")(e)))?;
        // The meta is what openraft acts on; the body must agree with it.
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        let (meta_copy, rows) = (meta.clone(), applied.clone());
        self.db
            .write(move |conn| {
                conn.execute("DELETE FROM kv", [])?;
                for (key, stored) in rows.kv.iter() {
                    put_stored(conn, key, stored)?;
                }
                put_pointers(conn, &rows.last_applied, &rows.membership)?;
                put_snapshot(conn, &meta_copy, &snapshot)
            })
            .await
            .map_err(fail)?;
        self.replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        self.db.read(current_snapshot).await.map_err(|e| e.storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}
