//! Circuits: the storage side of a Raft member. openraft (0.9.25, pinned) is the consensus
//! engine; this crate gives it a durable log store and the replicated key-value state
//! machine, both in one SQLite file per member. No network and no CLI live here yet.
//!
//! Design decision: the state machine is a pure function of the log. [`Kv::apply`] takes a
//! [`Command`] and returns a [`Response`] with no clock, no randomness and no I/O; the
//! store only persists what it answered, one transaction per apply batch, next to the log.
//! All SQLite work runs on one dedicated storage thread (see `db.rs`), never on the async
//! runtime, and nothing is reported durable before its commit (WAL, `synchronous=FULL`)
//! returned: a vote, an append (its `LogFlushed` callback), a truncate, a purge, an apply.
//! A file has one owner at a time (an exclusive SQLite lock held by that thread), so two
//! members can never share one log.
//!
//! Start a member with [`open`], which gives the two halves openraft's `Raft::new` takes.

pub mod check;
mod db;
mod error;
mod kv;
mod log_store;
pub mod network;
mod replica;
mod state_machine;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use error::{Error, Result};
pub use kv::{checksum, Command, Kv, Response, Stored};
pub use log_store::{LogReader, LogStore};
pub use replica::{Replica, Replicas};
pub use state_machine::{Applied, SnapshotBuilder, StateMachine, StateView};

/// A member's Raft id. Never derived from its peer id and never reused: a VM with a new
/// key or a new disk is a new member with a new id.
pub type NodeId = u64;

/// What the other members need to reach one: its libp2p peer id and address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's libp2p `PeerId`, base58 (`12D3KooW…`).
    pub peer: String,
    /// A multiaddr it listens on (`/ip4/10.88.0.2/tcp/4001`).
    pub addr: String,
}

/// A snapshot as openraft moves it: the serialised state machine (JSON of the map, the
/// last applied log id and the membership).
pub type SnapshotData = Vec<u8>;

openraft::declare_raft_types!(
    /// The types a circuit's Raft runs on.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Opens (or creates) a member's store at `path` and returns the log store and the state
/// machine, sharing one SQLite file and one storage thread. Whatever was applied before is
/// loaded, so a restarted member does not replay its log from zero.
pub async fn open(path: impl AsRef<Path>) -> Result<(LogStore, StateMachine)> {
    let (db, applied) = db::Db::open(path.as_ref(), state_machine::load).await?;
    Ok((LogStore::new(db.clone()), StateMachine::new(db, applied)))
}
