//! Circuits: named groups of VMs that keep one replicated key-value state with Raft, as
//! the spec's "Circuit State Synchronization" describes. These are the records the daemon
//! keeps, what the API and CLI show, and what the daemon asks a VM's agent (whose Raft
//! member does the work) over the control channel.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// The kinds of circuit there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CircuitType {
    /// One state machine replicated with Raft: a change is committed once a majority of
    /// the members holds it.
    #[default]
    Consensus,
}

impl CircuitType {
    pub const ALL: &'static [&'static str] = &["consensus"];

    pub fn parse(s: &str) -> Result<CircuitType, ValidationError> {
        match s {
            "consensus" => Ok(CircuitType::Consensus),
            _ => Err(ValidationError::new(format!(
                "circuit type {s:?} is unknown (the types are: {})",
                CircuitType::ALL.join(", ")
            ))),
        }
    }
}

impl fmt::Display for CircuitType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CircuitType::Consensus => "consensus",
        })
    }
}

/// A member's part in the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Votes and counts towards the quorum.
    #[default]
    Voter,
    /// Receives the log but does not vote (a member catching up before it votes).
    Learner,
}

/// One VM of a circuit as the daemon records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CircuitMember {
    pub vm_id: String,
    /// The VM's name when it joined.
    pub vm: String,
    /// The member's Raft id: never reused within a circuit.
    pub node_id: u64,
    /// The VM agent's libp2p peer id.
    pub peer_id: String,
    /// Where the other members dial it (`/ip4/<vm address>/tcp/4001`).
    pub addr: String,
    #[serde(default)]
    pub role: Role,
    /// The peer id of the host the VM is on, where that is not the circuit's own host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A circuit as the daemon records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Circuit {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: CircuitType,
    pub members: Vec<CircuitMember>,
    /// The next Raft id to give a member (ids are never reused).
    pub next_node_id: u64,
    pub created_at: DateTime<Utc>,
}

impl Circuit {
    pub fn member(&self, vm: &str) -> Option<&CircuitMember> {
        self.members.iter().find(|m| m.vm_id == vm || m.vm == vm)
    }
}

/// A change to a circuit's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StateOp {
    Set {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    /// Set only if the key is at `expected_version` now (0: absent).
    CompareAndSet {
        key: String,
        expected_version: u64,
        value: String,
    },
}

impl StateOp {
    pub fn key(&self) -> &str {
        match self {
            StateOp::Set { key, .. } | StateOp::Delete { key } | StateOp::CompareAndSet { key, .. } => key,
        }
    }
}

/// Keys of the replicated state: printable, no spaces, at most 256 bytes.
pub fn validate_key(key: &str) -> Result<(), ValidationError> {
    let ok = !key.is_empty() && key.len() <= 256 && key.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(format!(
            "key {key:?} is not a state key (1 to 256 printable ASCII characters without spaces, e.g. config/batch_size)"
        )))
    }
}

/// Largest value a key may hold, in bytes.
pub const MAX_VALUE: usize = 256 * 1024;

/// A value must fit one Raft message once encoded: the log entry is JSON, carried as a
/// JSON string in the signed envelope, so quotes and control characters grow on the way
/// (a quote takes four bytes on the wire).
const MAX_ENCODED_VALUE: usize = 900 * 1024;

/// Checks a value's size, raw and as it travels.
pub fn check_value(value: &str) -> Result<(), ValidationError> {
    if value.len() > MAX_VALUE {
        return Err(ValidationError::new(format!(
            "value of {} bytes is over the limit of {MAX_VALUE} bytes (keep large data elsewhere and store its address)",
            value.len()
        )));
    }
    let once = serde_json::to_string(value).unwrap_or_default();
    let twice = serde_json::to_string(&once).unwrap_or_default();
    if twice.len() > MAX_ENCODED_VALUE {
        return Err(ValidationError::new(format!(
            "value of {} bytes grows to {} bytes escaped for the Raft log, over {MAX_ENCODED_VALUE} (fewer quotes, backslashes and control characters, or base64 it)",
            value.len(),
            twice.len()
        )));
    }
    Ok(())
}

/// One key of the replicated state, with the version and checksum of the spec's SYNC
/// payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateEntry {
    pub key: String,
    pub value: String,
    /// Writes to this key since it was (re)created, from 1.
    pub version: u64,
    /// Hex sha256 of the value.
    pub checksum: String,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WriteOutcome {
    Stored {
        version: u64,
        checksum: String,
    },
    Deleted {
        version: u64,
    },
    /// A compare-and-set found the key at `current` (0: absent).
    Conflict {
        current: u64,
    },
    NotFound,
}

/// The answer to a write: what it did and where in the log it was committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteResult {
    pub outcome: WriteOutcome,
    /// The log index of the committed entry.
    pub index: u64,
    /// The member that led when it was committed.
    pub leader: u64,
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadResult {
    pub entries: Vec<StateEntry>,
    /// The member that answered, and the log index its state reflects.
    pub node: u64,
    pub applied: u64,
    /// Read from the member's local copy without asking the leader.
    pub stale: bool,
}

/// One member's view of its Raft group (openraft's metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberStatus {
    pub node_id: u64,
    /// leader, follower, candidate, learner or shutdown.
    pub state: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log: u64,
    pub committed: u64,
    pub applied: u64,
    pub snapshot: u64,
    /// On the leader: each member's matched log index (absent: nothing matched yet).
    #[serde(default)]
    pub matched: BTreeMap<u64, Option<u64>>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    #[serde(default)]
    pub millis_since_quorum_ack: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Requests on `/micro-os/raft/1` refused by this member, by reason.
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
}

/// A circuit as `circuit view` shows it: the record and what its members report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CircuitView {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: CircuitType,
    /// The leading member's VM name, when there is a leader.
    pub leader: Option<String>,
    pub leader_node: Option<u64>,
    pub term: u64,
    /// The highest commit and applied index any member reports.
    pub committed: u64,
    pub applied: u64,
    pub last_log: u64,
    /// `ok`, `degraded` (a member lags or is unreachable) or `down` (no leader).
    pub health: String,
    /// Why it is not ok, one line each.
    pub problems: Vec<String>,
    pub members: Vec<MemberView>,
    pub created_at: DateTime<Utc>,
}

/// One member in `circuit view`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberView {
    pub vm: String,
    pub vm_id: String,
    pub node_id: u64,
    pub peer_id: String,
    /// The peer id of the host the VM is on, where that is not the circuit's own host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub role: Role,
    /// leader, follower, candidate, learner, or unreachable when its agent did not answer.
    pub state: String,
    /// The log index the leader knows this member holds.
    pub matched: Option<u64>,
    /// Entries behind the leader's last log.
    pub lag: Option<u64>,
    pub applied: Option<u64>,
    /// The last log index its latest snapshot covers (0: none yet).
    pub snapshot: Option<u64>,
    pub term: Option<u64>,
    /// `ok`, `lagging`, `unreachable`.
    pub health: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A member's address as the other members need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddr {
    pub peer: String,
    pub addr: String,
}

/// How a circuit's Raft runs: its timers and when it snapshots. The daemon's config sets
/// them (`circuit_heartbeat_ms`, `circuit_election_timeout_ms`, `circuit_snapshot_every`);
/// a member keeps the ones it joined with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    /// An election starts after this much silence from the leader, randomised up to twice it.
    pub election_timeout_ms: u64,
    /// Entries between snapshots; the log before a snapshot is purged.
    pub snapshot_every: u64,
}

impl Default for RaftSettings {
    fn default() -> RaftSettings {
        RaftSettings { heartbeat_ms: 100, election_timeout_ms: 500, snapshot_every: 5000 }
    }
}

impl RaftSettings {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.heartbeat_ms == 0 || self.heartbeat_ms > 10_000 {
            return Err(ValidationError::new(format!(
                "circuit_heartbeat_ms {} is out of range (1 to 10000, e.g. 100)",
                self.heartbeat_ms
            )));
        }
        if self.election_timeout_ms < 2 * self.heartbeat_ms || self.election_timeout_ms > 60_000 {
            return Err(ValidationError::new(format!(
                "circuit_election_timeout_ms {} must be at least twice circuit_heartbeat_ms ({}) and at most 60000 (e.g. 500)",
                self.election_timeout_ms, self.heartbeat_ms
            )));
        }
        if self.snapshot_every < 2 {
            return Err(ValidationError::new(format!(
                "circuit_snapshot_every {} is too small (at least 2, e.g. 5000)",
                self.snapshot_every
            )));
        }
        Ok(())
    }
}

/// A request to an agent's local circuit endpoint (`vm::AGENT_CIRCUIT_PORT`) from a
/// workload on its VM: the endpoint's token and a `Read`, `Write` or `Status` call. The
/// answer is one JSON line: the call's `Result` (`{"Ok": …}` or `{"Err": …}`), or
/// `{"refused": "why"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRequest {
    pub token: String,
    pub request: CircuitCall,
}

/// What the daemon asks a VM agent's Raft member. The agent answers with
/// `AgentMessage::Answer` whose value is the JSON of `Result<T, CircuitError>`, `T` being
/// the type each call names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum CircuitCall {
    /// Become member `node_id` of circuit `circuit` (its id), opening its store; with
    /// `initialize`, make `members` the first membership. `members` are also the peers
    /// whose Raft traffic it accepts before it has a membership of its own. `MemberStatus`.
    Join {
        circuit: String,
        node_id: u64,
        /// (node id, address) pairs: a list, as integer map keys do not survive serde's
        /// internally tagged enums.
        members: Vec<(u64, MemberAddr)>,
        initialize: bool,
        #[serde(default)]
        settings: RaftSettings,
    },
    /// A change, forwarded to the leader when this member is not it. `WriteResult`.
    Write { circuit: String, op: StateOp },
    /// One key (`Some`) or all of them. Linearizable (ReadIndex through the leader) unless
    /// `stale`. `ReadResult`.
    Read { circuit: String, key: Option<String>, stale: bool },
    /// `MemberStatus`.
    Status { circuit: String },
    /// On the leader (forwarded there): add a learner, wait until it has caught up, then
    /// make it a voter (joint consensus inside openraft). `MemberStatus`.
    AddMember { circuit: String, node_id: u64, member: MemberAddr },
    /// On the leader (forwarded there): remove a member from the membership. `MemberStatus`.
    RemoveMember { circuit: String, node_id: u64 },
    /// Hold back this member's replication — heartbeats and appends, so a leader's
    /// followers stop hearing from it — and its elections, for
    /// `for_ms` at most, or until told again: how leadership is handed over. `MemberStatus`.
    Hold { circuit: String, replication: bool, elections: bool, for_ms: u64 },
    /// Start an election now. `MemberStatus`.
    Elect { circuit: String },
    /// Stop this member and delete its store. `null`.
    Leave { circuit: String },
}

/// Why a member could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", content = "detail", rename_all = "snake_case")]
pub enum CircuitError {
    /// An election is under way, or this member cannot reach a majority.
    #[error("no leader: {0}")]
    NoLeader(String),
    /// The leader could not confirm it still leads a majority (a minority side of a split).
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// A write that may or may not have been committed.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// This member is not the leader (for calls that only the leader takes).
    #[error("not the leader")]
    NotLeader,
    #[error("circuit {0:?} is not known to this member")]
    NoCircuit(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_type_lists_the_types() {
        assert_eq!(CircuitType::parse("consensus").unwrap(), CircuitType::Consensus);
        let e = CircuitType::parse("paxos").unwrap_err().to_string();
        assert_eq!(e, "circuit type \"paxos\" is unknown (the types are: consensus)");
    }

    #[test]
    fn calls_survive_the_control_channel() {
        let call = CircuitCall::Join {
            circuit: "c".into(),
            node_id: 2,
            members: vec![(1, MemberAddr { peer: "p".into(), addr: "/ip4/10.0.0.2/tcp/4001".into() })],
            initialize: false,
            settings: RaftSettings::default(),
        };
        let msg = crate::vm::DaemonMessage::Circuit { id: 7, call };
        let line = serde_json::to_string(&msg).unwrap();
        assert_eq!(serde_json::from_str::<crate::vm::DaemonMessage>(&line).unwrap(), msg);
    }

    #[test]
    fn values_must_fit_a_message_once_escaped() {
        assert!(check_value(&"a".repeat(MAX_VALUE)).is_ok());
        let e = check_value(&"a".repeat(MAX_VALUE + 1)).unwrap_err().to_string();
        assert!(e.contains("over the limit of 262144 bytes"), "{e}");
        let e = check_value(&"\"".repeat(MAX_VALUE)).unwrap_err().to_string();
        assert!(e.contains("escaped for the Raft log"), "{e}");
    }

    #[test]
    fn keys_are_printable() {
        assert!(validate_key("config/batch_size").is_ok());
        for bad in ["", "a b", "tab\t", &"k".repeat(257)] {
            let e = validate_key(bad).unwrap_err().to_string();
            assert!(e.contains("is not a state key"), "{e}");
        }
    }
}
