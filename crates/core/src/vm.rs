//! VMs: hardware guests (qemu) and OS-level sandboxes (namespaces + cgroups), each with
//! its own address on the VM network and its own identity (the agent's key).

use std::fmt;
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{RestartPolicy, ValidationError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Driver {
    /// Linux namespaces and a cgroup; starts in milliseconds.
    #[default]
    Sandbox,
    /// A qemu guest (KVM when it boots, TCG otherwise).
    Qemu,
}

impl Driver {
    pub fn parse(s: &str) -> Result<Driver, ValidationError> {
        match s {
            "sandbox" => Ok(Driver::Sandbox),
            "qemu" => Ok(Driver::Qemu),
            _ => Err(ValidationError::new(format!("driver {s:?} is unknown (use sandbox or qemu)"))),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Sandbox => "sandbox",
            Driver::Qemu => "qemu",
        })
    }
}

/// What a VM is asked to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmSpec {
    pub name: String,
    /// Memory in MiB, as the spec's `--memory 4096`.
    pub memory_mib: u64,
    /// CPUs (cores; fractions allowed for sandboxes).
    pub cpus: f64,
    pub image: String,
    #[serde(default)]
    pub driver: Driver,
    #[serde(default)]
    pub restart: RestartPolicy,
}

/// Smallest VM: the agent and a shell need a few MiB.
pub const MIN_VM_MEMORY_MIB: u64 = 16;

impl VmSpec {
    /// Validates against the host's memory and CPU count.
    pub fn validate(&self, host_memory_mib: u64, host_cpus: usize) -> Result<(), ValidationError> {
        crate::validate_name("vm", &self.name)?;
        if self.memory_mib < MIN_VM_MEMORY_MIB {
            return Err(ValidationError::new(format!(
                "memory {} MiB is too small (give at least {MIN_VM_MEMORY_MIB}, e.g. --memory 512)",
                self.memory_mib
            )));
        }
        if self.memory_mib > host_memory_mib {
            return Err(ValidationError::new(format!(
                "memory {} MiB is more than this host has ({host_memory_mib} MiB)",
                self.memory_mib
            )));
        }
        // above 0 and at least the quota granularity; the host's core count is the upper bound (next)
        crate::resources::check_cpu(self.cpus, f64::MAX)?;
        if self.cpus > host_cpus as f64 {
            return Err(ValidationError::new(format!(
                "cpu {} is more than this host has ({host_cpus} cores)",
                self.cpus
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum VmState {
    Created,
    Running,
    Paused,
    Stopped,
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopped => "stopped",
        })
    }
}

/// What the daemon knows of a VM's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AgentStatus {
    /// Not heard from yet.
    #[default]
    Starting,
    Ready,
    /// Reporting, but something in the VM is unwell.
    Degraded,
    /// Silent past its deadline.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Vm {
    pub id: String,
    #[serde(flatten)]
    pub spec: VmSpec,
    pub state: VmState,
    /// Address on the VM network, fixed at create time.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub address: Ipv4Addr,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
    /// Host pid of the agent (sandbox) or of qemu.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default)]
    pub agent: AgentStatus,
    /// The agent's libp2p peer id (from its ed25519 key), once it has reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub restart_count: u32,
    #[serde(default)]
    pub stop_requested: bool,
    /// The accelerator a qemu guest runs on: "kvm" or "tcg".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Vm {
    /// A VM just created: stopped until its first start.
    pub fn new(id: String, spec: VmSpec, address: Ipv4Addr, at: DateTime<Utc>) -> Vm {
        Vm {
            id,
            spec,
            state: VmState::Created,
            address,
            created_at: at,
            started_at: None,
            stopped_at: None,
            pid: None,
            agent: AgentStatus::Starting,
            peer_id: None,
            last_report: None,
            exit_code: None,
            oom_killed: false,
            restart_count: 0,
            stop_requested: false,
            accel: None,
            error: None,
        }
    }

    /// The VM's first process runs as `pid` from `at` on: everything of the last run is
    /// forgotten, and the agent has yet to report.
    pub fn mark_running(&mut self, pid: u32, at: DateTime<Utc>) {
        self.state = VmState::Running;
        self.pid = Some(pid);
        self.started_at = Some(at);
        self.stopped_at = None;
        self.exit_code = None;
        self.oom_killed = false;
        self.error = None;
        self.stop_requested = false;
        self.agent = AgentStatus::Starting;
        self.last_report = None;
    }
}

impl VmState {
    pub fn check(self, name: &str, action: crate::Transition) -> Result<(), crate::container::InvalidTransition> {
        use crate::container::ContainerState as C;
        // a VM moves like a container: stopped plays the part of exited
        let as_container = match self {
            VmState::Created => C::Created,
            VmState::Running => C::Running,
            VmState::Paused => C::Paused,
            VmState::Stopped => C::Exited,
        };
        as_container.check(name, action).map_err(|mut e| {
            e.kind = "vm";
            e.state_name = self.to_string();
            e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(memory_mib: u64, cpus: f64) -> VmSpec {
        VmSpec {
            name: "vm1".into(),
            memory_mib,
            cpus,
            image: "blockchain-base".into(),
            driver: Driver::Sandbox,
            restart: RestartPolicy::No,
        }
    }

    #[test]
    fn validation_names_the_input() {
        assert!(spec(512, 1.0).validate(4096, 2).is_ok());
        let e = spec(0, 1.0).validate(4096, 2).unwrap_err().to_string();
        assert!(e.contains("memory 0 MiB is too small"), "{e}");
        let e = spec(8192, 1.0).validate(4096, 2).unwrap_err().to_string();
        assert!(e.contains("more than this host has (4096 MiB)"), "{e}");
        let e = spec(512, 4.0).validate(4096, 2).unwrap_err().to_string();
        assert!(e.contains("cpu 4"), "{e}");
        assert!(spec(512, 0.01).validate(4096, 2).is_ok());
        for (cpus, want) in [
            (0.0, "cpu 0 is not a number of cores above 0 (try 0.5 or 2)"),
            (f64::NAN, "cpu NaN is not a number of cores above 0 (try 0.5 or 2)"),
            (0.0000001, "cpu 0.0000001 is below the minimum 0.01 (try 0.5 or 2)"),
            (1e-250, "cpu 1e-250 is below the minimum 0.01 (try 0.5 or 2)"),
        ] {
            let e = spec(512, cpus).validate(4096, 2).unwrap_err().to_string();
            assert_eq!(e, want, "{cpus}");
        }
        assert!(Driver::parse("xen").unwrap_err().to_string().contains("driver \"xen\""));
    }

    #[test]
    fn stopped_vm_conflicts_read_as_vm() {
        let e = VmState::Stopped.check("vm1", crate::Transition::Pause).unwrap_err().to_string();
        assert_eq!(e, "cannot pause vm \"vm1\": it is stopped (start it first)");
    }
}

/// Path of the control socket as an agent sees it inside a sandbox VM. The daemon binds
/// the VM's `ctl/` directory there, so a daemon restart (a new socket) reaches the agent.
pub const AGENT_CONTROL_DIR: &str = "/run/micro-os/ctl";
pub const AGENT_CONTROL_SOCKET: &str = "control.sock";

/// What an agent tells the daemon, one JSON object a line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AgentMessage {
    /// First line on every connection.
    Hello { peer_id: String, version: String },
    /// The VM is up and the agent serves it.
    Ready,
    /// Periodic report; `problems` empty when all is well.
    Health { load1: f64, processes: u32, problems: Vec<String> },
    /// The agent is shutting down (asked to, or by a signal).
    Bye { reason: String },
    /// The outcome of a `DaemonMessage::Send`.
    SendResult { id: u64, report: crate::net::SendReport },
    /// The answer to a `DaemonMessage::Query`: JSON of the p2p layer's answer, or an error.
    Answer { id: u64, result: Result<serde_json::Value, String> },
}

/// The port of an agent's local circuit endpoint: on loopback inside the VM's network
/// namespace, so only the VM's own workloads reach it (JSON lines of `LocalRequest`).
pub const AGENT_CIRCUIT_PORT: u16 = 4002;
/// The file in the VM's control directory holding the token of the local circuit endpoint;
/// the daemon writes it before the VM starts and gives it to the circuit's replicas.
pub const AGENT_CIRCUIT_TOKEN_FILE: &str = "circuit.token";

/// The port an agent's libp2p peer listens on (TCP, and QUIC when asked) at the VM's address.
pub const AGENT_P2P_PORT: u16 = 4001;
/// How a VM's agent dials its sibling VMs: `auto` (the default: TLS 1.3 with AES-GCM over
/// TCP where the CPU has AES instructions, noise elsewhere), `noise` or `tls` first over
/// TCP, or `quic` (the agent then listens on QUIC too). A sandbox VM's agent gets the
/// daemon's own value of this variable; it is for benchmarks and diagnosis, not a setting
/// a VM keeps.
pub const AGENT_P2P_TRANSPORT_ENV: &str = "MICRO_OS_P2P_TRANSPORT";

/// What the daemon tells an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DaemonMessage {
    /// Stop every process of the VM (SIGTERM, SIGKILL after `grace_s`), then exit.
    Shutdown { grace_s: f64 },
    /// The peers whose messages the agent accepts — the host and this host's other VMs —
    /// as peer ids or as multiaddrs ending in /p2p/<peer id> (which also say where to dial).
    /// `host` is the host's own peer on the VM bridge, the agent's way into the DHT.
    Peers {
        peers: Vec<String>,
        #[serde(default)]
        host: Option<String>,
    },
    /// Send signed messages (or a DATA stream) from this VM to a peer; answer with `SendResult`.
    Send { id: u64, job: crate::net::SendJob },
    /// What this VM offers, advertised as Kademlia provider records (`container/<name>`, …).
    Provide { keys: Vec<String> },
    /// Ask the VM's p2p layer something; answer with `Answer`.
    Query { id: u64, query: Query },
    /// Ask the VM's Raft member of a circuit; answer with `Answer`.
    Circuit { id: u64, call: crate::circuit::CircuitCall },
}

/// Questions the daemon asks an agent's p2p layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "lowercase")]
pub enum Query {
    /// Its peers and counters (`NetStatus`).
    Status,
    /// The providers of a resource key, found through Kademlia.
    Find { key: String },
}
