//! The VMs of other hosts, for the circuits of this one.
//!
//! A circuit is held by the host it was made on (its record, its Raft ids), but its
//! members may be VMs of any host of the fabric: their agents talk Raft to each other over
//! the encrypted overlay, and the circuit's host reaches each member's agent through the
//! member's own host. That host is asked on `/micro-os/host-vm/1`, which its `Policy`
//! admits from fabric members only (like every host protocol), and passes the call to its
//! VM's agent exactly as it does its own circuits' calls.

use std::time::Duration;

use micro_os_core::circuit::CircuitCall;
use micro_os_core::vm::{AgentMessage, DaemonMessage};
use micro_os_core::{Vm, VmState};
use micro_os_p2p::net::MessageType;
use micro_os_p2p::{PeerId, Refusal, StreamProtocol};
use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::error::{Class, Error, Result};

pub const HOST_VM: StreamProtocol = StreamProtocol::new("/micro-os/host-vm/1");

/// The longest a member's host is asked to wait for its agent: the libp2p session
/// answers within 30 s or gives up.
const MOST_WAIT: Duration = Duration::from_secs(25);

#[derive(Debug, Serialize, Deserialize)]
enum VmRequest {
    /// The VM a name or id gives, as its host records it.
    Find { vm: String },
    /// A call to the VM's member of a circuit, answered by its agent.
    Circuit { vm: String, call: CircuitCall, wait_ms: u64 },
}

/// An error as the VM's host classed it, so that the circuit's host reports the same.
#[derive(Debug, Serialize, Deserialize)]
struct Failure {
    class: String,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        if let Error::NotRunning(m) = e {
            return Failure { class: "not_running".into(), message: m };
        }
        let class = match e.class() {
            Class::Invalid => "invalid",
            Class::NotFound => "not_found",
            Class::Conflict => "conflict",
            Class::Unavailable => "unavailable",
            Class::NotBuilt => "not_built",
            Class::Internal => "internal",
        };
        Failure { class: class.into(), message: e.to_string() }
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f.class.as_str() {
            "invalid" => Error::Invalid(f.message),
            "not_found" => Error::NotFound(f.message),
            "conflict" => Error::Conflict(f.message),
            "not_running" => Error::NotRunning(f.message),
            "unavailable" => Error::Unavailable(f.message),
            "not_built" => Error::NotBuilt(f.message),
            _ => Error::Internal(f.message),
        }
    }
}

type Answer = std::result::Result<serde_json::Value, Failure>;

impl Engine {
    /// A VM by name or id, here or on another host of the fabric (`Some(host)`).
    pub(super) async fn locate_vm(&self, key: &str) -> Result<(Vm, Option<PeerId>)> {
        match self.find_vm(key) {
            Ok(vm) => Ok((vm, None)),
            Err(e) if e.class() == Class::NotFound => {
                let Some(host) = self.hosts.vm_holder(key) else { return Err(e) };
                let value = self.ask_vm_host(host, &VmRequest::Find { vm: key.to_string() }, MOST_WAIT).await?;
                let vm: Vm = serde_json::from_value(value)
                    .map_err(|e| Error::internal(format!("host {host} described vm {key:?} malformedly: {e}")))?;
                Ok((vm, Some(host)))
            }
            Err(e) => Err(e),
        }
    }

    /// A circuit call to the member on VM `vm` of `host`: what its agent answered.
    pub(super) async fn remote_circuit_call(
        &self,
        host: PeerId,
        vm: &str,
        call: CircuitCall,
        wait: Duration,
    ) -> Result<serde_json::Value> {
        let wait = wait.min(MOST_WAIT);
        let req = VmRequest::Circuit { vm: vm.to_string(), call, wait_ms: wait.as_millis() as u64 };
        self.ask_vm_host(host, &req, wait + Duration::from_secs(2)).await
    }

    async fn ask_vm_host(&self, host: PeerId, req: &VmRequest, wait: Duration) -> Result<serde_json::Value> {
        let body = serde_json::to_string(req).expect("serialises");
        let bytes = tokio::time::timeout(wait, self.ask_host(host, HOST_VM, MessageType::Ctrl, body))
            .await
            .map_err(|_| Error::Unavailable(format!("host {host} did not answer within {} s", wait.as_secs())))??;
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(format!("host {host} answered something malformed: {e}")))?;
        answer.map_err(Error::from)
    }

    /// Answers a member host's [`VmRequest`] about a VM of this host.
    pub(super) async fn serve_vm_request(&self, state: &str) -> std::result::Result<Vec<u8>, Refusal> {
        let req: VmRequest = serde_json::from_str(state).map_err(|e| Refusal(format!("malformed request: {e}")))?;
        let answer: Answer = match req {
            VmRequest::Find { vm } => {
                self.find_vm(&vm).map(|v| serde_json::to_value(v).expect("serialises")).map_err(Failure::from)
            }
            VmRequest::Circuit { vm, call, wait_ms } => self
                .local_circuit_call(&vm, call, Duration::from_millis(wait_ms).min(MOST_WAIT))
                .await
                .map_err(Failure::from),
        };
        Ok(serde_json::to_vec(&answer).expect("serialises"))
    }

    /// A circuit call to the member on this host's VM `vm` (name or id): its agent's answer,
    /// the JSON of `Result<T, CircuitError>`.
    pub(super) async fn local_circuit_call(
        &self,
        vm: &str,
        call: CircuitCall,
        wait: Duration,
    ) -> Result<serde_json::Value> {
        let vm = self.find_vm(vm)?;
        if vm.state != VmState::Running {
            return Err(Error::NotRunning(format!("vm {:?} is {} (start it)", vm.spec.name, vm.state)));
        }
        let answer = self.call_agent(&vm, |id| DaemonMessage::Circuit { id, call }, wait).await?;
        let AgentMessage::Answer { result, .. } = answer else {
            return Err(Error::internal(format!("vm {:?} answered {answer:?}", vm.spec.name)));
        };
        result.map_err(|e| Error::internal(format!("vm {:?}: {e}", vm.spec.name)))
    }
}
