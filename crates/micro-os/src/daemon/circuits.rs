//! Circuits in the daemon: their records, and the calls that make VM agents' Raft members
//! (crates/circuit, run by each agent) form, change and serve them.
//!
//! The daemon is not a Raft member: it keeps who is in which circuit (the record, with
//! Raft ids that are never reused) and talks to the members over the agents' control
//! channels. Any member takes a write or a read and sends it to the leader itself; the
//! daemon only remembers which member led last, to skip that hop. A member may be a VM
//! of another host of the fabric: then its calls go through that host (`remote.rs`), and
//! the members reach each other over the overlay.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use micro_os_api::types::CircuitCreate;
use micro_os_core::circuit::{
    check_value, validate_key, Circuit, CircuitCall, CircuitError, CircuitMember, CircuitType, CircuitView, MemberAddr,
    MemberStatus, MemberView, ReadResult, Role, StateOp, WriteResult,
};
use micro_os_core::metrics::Severity;
use micro_os_core::vm::AGENT_P2P_PORT;
use micro_os_core::{AgentStatus, Driver, Vm, VmState};
use micro_os_p2p::PeerId;
use serde::de::DeserializeOwned;

use super::components::Health;
use super::engine::Engine;
use super::error::{Error, Result};
use super::table::Object;

/// How long the daemon waits for a member's answer (the member's own limit is 5 s).
const CALL_WAIT: Duration = Duration::from_secs(15);
/// Adding a member waits for it to catch up.
const ADD_WAIT: Duration = Duration::from_secs(75);
/// A status asked for a view: a member that does not answer by then is unreachable.
const STATUS_WAIT: Duration = Duration::from_secs(3);
/// The shortest heartbeat and election timeout of a circuit whose members span hosts.
const SPANNING_HEARTBEAT_MS: u64 = 250;
const SPANNING_ELECTION_MS: u64 = 2500;

impl Object for Circuit {
    const KIND: &'static str = "circuit";
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn created_at(&self) -> chrono::DateTime<Utc> {
        self.created_at
    }
}

fn member_addr(m: &CircuitMember) -> MemberAddr {
    MemberAddr { peer: m.peer_id.clone(), addr: m.addr.clone() }
}

/// A member's VM and where it is: `host` is `None` for this host.
#[derive(Debug, Clone)]
struct Site {
    vm_id: String,
    name: String,
    host: Option<PeerId>,
}

impl Site {
    fn of(vm: &Vm, host: Option<PeerId>) -> Site {
        Site { vm_id: vm.id.clone(), name: vm.spec.name.clone(), host }
    }

    fn member(m: &CircuitMember) -> Site {
        Site { vm_id: m.vm_id.clone(), name: m.vm.clone(), host: m.host.as_deref().and_then(|h| h.parse().ok()) }
    }
}

impl Engine {
    /// Asks a VM's member of a circuit something, here or through the VM's host, and
    /// decodes its answer.
    async fn member_call<T: DeserializeOwned>(
        &self,
        c: &Circuit,
        site: &Site,
        call: CircuitCall,
        wait: Duration,
    ) -> Result<T> {
        let value = match site.host {
            None => self.local_circuit_call(&site.vm_id, call, wait).await?,
            Some(host) => self.remote_circuit_call(host, &site.vm_id, call, wait).await?,
        };
        let decoded: std::result::Result<T, CircuitError> = serde_json::from_value(value)
            .map_err(|e| Error::internal(format!("vm {:?} gave an answer that is not valid: {e}", site.name)))?;
        decoded.map_err(|e| circuit_error(c, site, e))
    }

    /// The members whose VMs run with their agent connected (another host's, by its last
    /// heartbeat), leader first if known.
    fn reachable_members(&self, c: &Circuit) -> Vec<Site> {
        let hint = self.leader_hint.lock().unwrap().get(&c.id).cloned();
        let mut sites: Vec<Site> = c
            .members
            .iter()
            .map(Site::member)
            .filter(|s| match s.host {
                None => self.vms.get(&s.vm_id).is_some_and(|v| self.agent_ready(&v)),
                Some(host) => self.hosts.vm_ready(&host.to_string(), &s.name),
            })
            .collect();
        sites.sort_by_key(|s| Some(&s.vm_id) != hint.as_ref());
        sites
    }

    /// The member VM `key` names (a name or id, of this host's VMs or another's).
    async fn member_named(&self, c: &Circuit, key: &str) -> Result<CircuitMember> {
        let named =
            |m: &&CircuitMember| m.vm_id == key || self.vms.get(&m.vm_id).map_or(m.vm == key, |v| v.spec.name == key);
        if let Some(m) = c.members.iter().find(named) {
            return Ok(m.clone());
        }
        let (vm, _) = self.locate_vm(key).await?;
        c.member(&vm.id)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("vm {:?} is not a member of circuit {:?}", vm.spec.name, c.name)))
    }

    /// Sends `call` through `via` if given, else through the last known leader, else any
    /// reachable member: the next one while a member's VM turns out not to run or its
    /// host cannot be reached (nothing was sent then; another host's VM may have stopped,
    /// or its host gone, since its last heartbeat).
    async fn through_member<T: DeserializeOwned>(
        &self,
        c: &Circuit,
        via: Option<&str>,
        call: CircuitCall,
        wait: Duration,
    ) -> Result<T> {
        let sites = match via {
            Some(_) => vec![self.entry_member(c, via).await?],
            None => self.reachable_members(c),
        };
        let Some(last) = sites.len().checked_sub(1) else {
            return Err(Error::Unavailable(format!("circuit {:?} has no member running (start its VMs)", c.name)));
        };
        for (i, site) in sites.iter().enumerate() {
            match self.member_call(c, site, call.clone(), wait).await {
                Err(Error::NotRunning(why) | Error::Unreached(why)) if i < last => {
                    tracing::debug!("circuit {:?}: {why}: next member", c.name)
                }
                r => return r,
            }
        }
        unreachable!("the last member's answer is returned")
    }

    /// The member to send a request through: `via` if given (it must be a member), else
    /// the last known leader, else any reachable member.
    async fn entry_member(&self, c: &Circuit, via: Option<&str>) -> Result<Site> {
        if let Some(via) = via {
            return Ok(Site::member(&self.member_named(c, via).await?));
        }
        self.reachable_members(c)
            .into_iter()
            .next()
            .ok_or_else(|| Error::Unavailable(format!("circuit {:?} has no member running (start its VMs)", c.name)))
    }

    fn note_leader(&self, c: &Circuit, node: u64) {
        if let Some(m) = c.members.iter().find(|m| m.node_id == node) {
            self.leader_hint.lock().unwrap().insert(c.id.clone(), m.vm_id.clone());
        }
    }

    /// A VM that may join a circuit: running, reporting, on a driver that keeps its disk;
    /// on this host or on another (`Some(host)`) whose overlay is up, as this host's is.
    async fn joinable(&self, key: &str) -> Result<(Vm, Option<PeerId>)> {
        let (vm, host) = self.locate_vm(key).await?;
        let name = &vm.spec.name;
        if let Some(host) = host {
            if self.overlay_info().is_none() || !self.hosts.has_overlay(&host.to_string()) {
                return Err(Error::conflict(format!(
                    "vm {name:?} is on host {host}: a circuit across hosts needs the overlay up on both (overlay_port in each host's config)"
                )));
            }
        }
        if vm.state != VmState::Running {
            return Err(Error::conflict(format!("vm {name:?} is {} (start it first)", vm.state)));
        }
        if vm.spec.driver == Driver::Qemu {
            return Err(Error::invalid(format!(
                "vm {name:?} is a qemu VM, whose root is rebuilt at every boot: it cannot keep a Raft log yet (use a sandbox VM)"
            )));
        }
        if vm.peer_id.is_none() || vm.agent == AgentStatus::Starting || vm.agent == AgentStatus::Unreachable {
            return Err(Error::conflict(format!(
                "vm {name:?}: its agent has not reported yet (wait for it to be ready)"
            )));
        }
        if let Some(other) = self.circuits.list().into_iter().find(|c| c.member(&vm.id).is_some()) {
            return Err(Error::conflict(format!(
                "vm {name:?} is a member of circuit {:?} already (a VM is in one consensus circuit at a time)",
                other.name
            )));
        }
        Ok((vm, host))
    }

    /// The Raft timers of a circuit: the config's, made slower for one whose members span
    /// hosts (openraft gives every AppendEntries one heartbeat interval to answer, and the
    /// overlay under load has round trips of tens of milliseconds, plus a catching-up
    /// member's fsyncs; etcd's rule of thumb: heartbeat about a round trip, election ten).
    fn raft_settings(&self, spans_hosts: bool) -> micro_os_core::circuit::RaftSettings {
        let mut s = self.cfg.raft_settings();
        if spans_hosts {
            s.heartbeat_ms = s.heartbeat_ms.max(SPANNING_HEARTBEAT_MS);
            s.election_timeout_ms = s.election_timeout_ms.max(SPANNING_ELECTION_MS);
        }
        s
    }

    fn new_member(vm: &Vm, host: Option<PeerId>, node_id: u64, role: Role) -> CircuitMember {
        CircuitMember {
            vm_id: vm.id.clone(),
            vm: vm.spec.name.clone(),
            node_id,
            peer_id: vm.peer_id.clone().unwrap_or_default(),
            addr: format!("/ip4/{}/tcp/{AGENT_P2P_PORT}", vm.address),
            role,
            host: host.map(|h| h.to_string()),
        }
    }

    pub async fn create_circuit(self: &Arc<Self>, req: CircuitCreate) -> Result<CircuitView> {
        micro_os_core::validate_name("circuit", &req.name).map_err(|e| Error::invalid(e.to_string()))?;
        let kind = CircuitType::parse(req.kind.as_deref().unwrap_or("consensus"))
            .map_err(|e| Error::invalid(e.to_string()))?;
        let nodes: Vec<&str> = req.nodes.iter().map(|n| n.trim()).filter(|n| !n.is_empty()).collect();
        if nodes.is_empty() {
            return Err(Error::invalid("a circuit needs at least one member (give --nodes vm1,vm2,vm3)"));
        }
        self.circuits.check_name_free(&req.name)?;
        let mut vms: Vec<(Vm, Option<PeerId>)> = Vec::new();
        for n in &nodes {
            let (vm, host) = self.joinable(n).await?;
            if vms.iter().any(|(v, _)| v.id == vm.id) {
                return Err(Error::invalid(format!("node {n:?} appears twice in --nodes")));
            }
            vms.push((vm, host));
        }
        let members: Vec<CircuitMember> =
            vms.iter().enumerate().map(|(i, (v, h))| Self::new_member(v, *h, i as u64 + 1, Role::Voter)).collect();
        let c = Circuit {
            id: micro_os_core::id::new_id(),
            name: req.name.clone(),
            kind,
            next_node_id: members.len() as u64 + 1,
            members,
            created_at: Utc::now(),
        };
        let addrs: Vec<(u64, MemberAddr)> = c.members.iter().map(|m| (m.node_id, member_addr(m))).collect();
        let settings = self.raft_settings(c.members.iter().any(|m| m.host.is_some()));
        // the others first, so the first member's election finds them listening
        let mut joined = Vec::new();
        for m in c.members.iter().rev() {
            let site = Site::member(m);
            let call = CircuitCall::Join {
                circuit: c.id.clone(),
                node_id: m.node_id,
                members: addrs.clone(),
                initialize: m.node_id == 1,
                settings,
            };
            match self.member_call::<MemberStatus>(&c, &site, call, CALL_WAIT).await {
                Ok(_) => joined.push(site),
                Err(e) => {
                    for s in &joined {
                        let leave = CircuitCall::Leave { circuit: c.id.clone() };
                        let _ = self.member_call::<()>(&c, s, leave, CALL_WAIT).await;
                    }
                    return Err(e.within(format!("vm {:?} could not join", site.name)));
                }
            }
        }
        self.circuits.insert(c.clone(), format!("members {}", nodes.join(",")))?;
        tracing::info!("circuit {:?} created with {} members", c.name, c.members.len());
        // a new circuit answers once it has elected a leader
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let view = self.view_of(&c).await;
            if view.leader.is_some() || tokio::time::Instant::now() > deadline {
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn list_circuits(&self) -> Vec<CircuitView> {
        let mut out = Vec::new();
        for c in self.circuits.list() {
            out.push(self.view_of(&c).await);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub async fn view_circuit(&self, key: &str) -> Result<CircuitView> {
        let c = self.circuits.find(key)?;
        Ok(self.view_of(&c).await)
    }

    /// Every member's status, asked at once; `Err` says why a member did not answer.
    async fn statuses(&self, c: &Circuit) -> Vec<(CircuitMember, std::result::Result<MemberStatus, String>)> {
        let asks = c.members.iter().map(|m| async move {
            let site = Site::member(m);
            let call = CircuitCall::Status { circuit: c.id.clone() };
            // this host's VMs are checked here; another host checks its own
            let status = match (&site.host, self.vms.get(&m.vm_id)) {
                (None, None) => Err("its VM was removed".to_string()),
                (None, Some(vm)) if vm.state != VmState::Running => Err(format!("its VM is {}", vm.state)),
                _ => self.member_call::<MemberStatus>(c, &site, call, STATUS_WAIT).await.map_err(|e| e.to_string()),
            };
            (m.clone(), status)
        });
        futures_util::future::join_all(asks).await
    }

    async fn view_of(&self, c: &Circuit) -> CircuitView {
        let statuses = self.statuses(c).await;
        let leader = statuses
            .iter()
            .filter_map(|(m, s)| s.as_ref().ok().filter(|s| s.state == "leader").map(|s| (m, s)))
            .max_by_key(|(_, s)| s.term);
        if let Some((m, _)) = leader {
            self.leader_hint.lock().unwrap().insert(c.id.clone(), m.vm_id.clone());
        }
        let ok = || statuses.iter().filter_map(|(_, s)| s.as_ref().ok());
        let term = ok().map(|s| s.term).max().unwrap_or(0);
        let applied = ok().map(|s| s.applied).max().unwrap_or(0);
        let (committed, last_log) = match leader {
            Some((_, l)) => (l.committed, l.last_log),
            None => (applied, ok().map(|s| s.last_log).max().unwrap_or(0)),
        };
        let lag_alert = self.cfg.circuit_lag_alert;
        let mut problems = Vec::new();
        if leader.is_none() {
            problems.push("no leader (an election is under way, or a majority of the members is unreachable)".into());
        }
        let members = statuses
            .iter()
            .map(|(m, s)| {
                let matched = match (leader, s) {
                    (Some((lm, l)), _) if lm.node_id == m.node_id => Some(l.last_log),
                    (Some((_, l)), _) => l.matched.get(&m.node_id).copied().flatten(),
                    (None, Ok(s)) => Some(s.last_log),
                    (None, Err(_)) => None,
                };
                let lag = leader.map(|(_, l)| l.last_log.saturating_sub(matched.unwrap_or(0)));
                let health = match s {
                    Err(why) => {
                        problems.push(format!("member {:?} (node {}) is unreachable: {why}", m.vm, m.node_id));
                        "unreachable"
                    }
                    Ok(_) if lag.is_some_and(|l| l > lag_alert) => {
                        problems.push(format!(
                            "member {:?} (node {}) lags {} entries behind the leader (more than {lag_alert})",
                            m.vm,
                            m.node_id,
                            lag.unwrap_or(0)
                        ));
                        "lagging"
                    }
                    Ok(_) => "ok",
                };
                MemberView {
                    vm: self.vms.get(&m.vm_id).map_or_else(|| m.vm.clone(), |v| v.spec.name),
                    vm_id: m.vm_id.clone(),
                    node_id: m.node_id,
                    peer_id: m.peer_id.clone(),
                    host: m.host.clone(),
                    role: m.role,
                    state: s.as_ref().map_or_else(|_| "unreachable".to_string(), |s| s.state.clone()),
                    matched,
                    lag,
                    applied: s.as_ref().ok().map(|s| s.applied),
                    snapshot: s.as_ref().ok().map(|s| s.snapshot),
                    term: s.as_ref().ok().map(|s| s.term),
                    health: health.to_string(),
                    error: s.as_ref().err().cloned(),
                }
            })
            .collect();
        let health = if leader.is_none() {
            "down"
        } else if problems.is_empty() {
            "ok"
        } else {
            "degraded"
        };
        CircuitView {
            id: c.id.clone(),
            name: c.name.clone(),
            kind: c.kind,
            leader: leader.map(|(m, _)| self.vms.get(&m.vm_id).map_or_else(|| m.vm.clone(), |v| v.spec.name)),
            leader_node: leader.map(|(m, _)| m.node_id),
            term,
            committed,
            applied,
            last_log,
            health: health.to_string(),
            problems,
            members,
            created_at: c.created_at,
        }
    }

    /// Stops every member (each deletes its store) and forgets the circuit.
    pub async fn remove_circuit(&self, key: &str) -> Result<()> {
        let c = self.circuits.find(key)?;
        let replicated = self.replicated_on(&c.id);
        if !replicated.is_empty() {
            return Err(Error::conflict(format!(
                "circuit {:?} runs replicated containers {} (remove them first)",
                c.name,
                replicated.join(", ")
            )));
        }
        let lock = self.ops.of(&c.id);
        let _g = lock.lock().await;
        for m in &c.members {
            let here_stopped = m.host.is_none() && !self.vms.get(&m.vm_id).is_some_and(|v| v.state == VmState::Running);
            if !here_stopped {
                let leave = CircuitCall::Leave { circuit: c.id.clone() };
                if let Err(e) = self.member_call::<()>(&c, &Site::member(m), leave, CALL_WAIT).await {
                    tracing::warn!("circuit {:?}: member {:?} did not leave: {e}", c.name, m.vm);
                }
            }
        }
        self.circuits.delete(&c.id)?;
        self.leader_hint.lock().unwrap().remove(&c.id);
        self.ops.forget(&c.id);
        Ok(())
    }

    /// `circuit add-node`: a new Raft id (recorded before anything else, so it is never
    /// reused), the VM's member started, then added as a learner and made a voter once it
    /// has caught up.
    pub async fn add_circuit_node(self: &Arc<Self>, key: &str, vm_key: &str) -> Result<CircuitView> {
        let c = self.circuits.find(key)?;
        let lock = self.ops.of(&c.id);
        let _g = lock.lock().await;
        let c = self.circuits.find(&c.id)?;
        let (vm, host) = self.joinable(vm_key).await?;
        let entry = self.entry_member(&c, None).await?;
        let site = Site::of(&vm, host);
        let node_id = c.next_node_id;
        let m = Self::new_member(&vm, host, node_id, Role::Learner);
        self.circuits.update(&c.id, |c| {
            c.next_node_id += 1;
            c.members.push(m.clone());
        });
        self.circuits.persist(&c.id, "member-adding", format!("{} as node {node_id}", vm.spec.name))?;
        let c = self.circuits.find(&c.id)?;
        let addrs: Vec<(u64, MemberAddr)> = c.members.iter().map(|m| (m.node_id, member_addr(m))).collect();
        let join = CircuitCall::Join {
            circuit: c.id.clone(),
            node_id,
            members: addrs,
            initialize: false,
            settings: self.raft_settings(c.members.iter().any(|m| m.host.is_some())),
        };
        let added = async {
            self.member_call::<MemberStatus>(&c, &site, join, CALL_WAIT).await?;
            let add = CircuitCall::AddMember { circuit: c.id.clone(), node_id, member: member_addr(&m) };
            self.member_call::<MemberStatus>(&c, &entry, add, ADD_WAIT).await
        }
        .await;
        match added {
            Ok(_) => {
                self.circuits.update(&c.id, |c| {
                    if let Some(x) = c.members.iter_mut().find(|x| x.node_id == node_id) {
                        x.role = Role::Voter;
                    }
                });
                self.circuits.persist(&c.id, "member-added", format!("{} as node {node_id}", vm.spec.name))?;
                drop(_g);
                self.reconcile_circuit(&c.id).await;
            }
            Err(e) => {
                let leave = CircuitCall::Leave { circuit: c.id.clone() };
                let _ = self.member_call::<()>(&c, &site, leave, CALL_WAIT).await;
                self.circuits.update(&c.id, |c| c.members.retain(|x| x.node_id != node_id));
                self.circuits.persist(&c.id, "member-add-failed", format!("{}: {e}", vm.spec.name))?;
                return Err(e.within(format!("vm {:?} could not join circuit {:?}", vm.spec.name, c.name)));
            }
        }
        Ok(self.view_of(&self.circuits.find(&c.id)?).await)
    }

    /// `circuit remove-node`: out of the membership (joint consensus), then its member
    /// stops and deletes its store.
    pub async fn remove_circuit_node(self: &Arc<Self>, key: &str, vm_key: &str) -> Result<CircuitView> {
        let c = self.circuits.find(key)?;
        let lock = self.ops.of(&c.id);
        let _g = lock.lock().await;
        let c = self.circuits.find(&c.id)?;
        let m = self.member_named(&c, vm_key).await?;
        let site = Site::member(&m);
        if c.members.len() == 1 {
            return Err(Error::conflict(format!(
                "vm {:?} is the last member of circuit {:?} (remove the circuit instead: circuit rm --name {})",
                site.name, c.name, c.name
            )));
        }
        // through another member where possible: the removed one may be the leader
        let others: Vec<Site> = self.reachable_members(&c).into_iter().filter(|s| s.vm_id != m.vm_id).collect();
        let entry = match others.into_iter().next() {
            Some(s) => s,
            None => self.entry_member(&c, None).await?,
        };
        let remove = CircuitCall::RemoveMember { circuit: c.id.clone(), node_id: m.node_id };
        self.member_call::<MemberStatus>(&c, &entry, remove, CALL_WAIT).await?;
        self.circuits.update(&c.id, |c| c.members.retain(|x| x.node_id != m.node_id));
        self.circuits.persist(&c.id, "member-removed", format!("{} (node {})", m.vm, m.node_id))?;
        let leave = CircuitCall::Leave { circuit: c.id.clone() };
        if let Err(e) = self.member_call::<()>(&c, &site, leave, CALL_WAIT).await {
            tracing::warn!("circuit {:?}: removed member {:?} did not stop: {e}", c.name, m.vm);
        }
        self.leader_hint.lock().unwrap().remove(&c.id);
        drop(_g);
        // its replicas go with it
        self.reconcile_circuit(&c.id).await;
        Ok(self.view_of(&self.circuits.find(&c.id)?).await)
    }

    /// `circuit transfer-leader`: openraft 0.9 has no transfer, so the daemon makes one
    /// from its switches: once the target holds the whole log, every other voter holds
    /// back its elections and the leader all its replication (heartbeats and appends: a
    /// write that arrives meanwhile waits) until the followers' leader lease has run out;
    /// then the target starts an election, which it wins because its log is as long as
    /// any. The holds lapse by themselves if the daemon goes away meanwhile.
    pub async fn transfer_leader(&self, key: &str, vm_key: &str) -> Result<CircuitView> {
        let c = self.circuits.find(key)?;
        let lock = self.ops.of(&c.id);
        let _g = lock.lock().await;
        let target = self.member_named(&c, vm_key).await?;
        let vm = Site::member(&target);
        if target.role != Role::Voter {
            return Err(Error::conflict(format!("vm {:?} is a learner of circuit {:?}, not a voter", vm.name, c.name)));
        }
        let view = self.view_of(&c).await;
        let Some(leader_node) = view.leader_node else {
            return Err(Error::Unavailable(format!("circuit {:?} has no leader to hand over from", c.name)));
        };
        if leader_node == target.node_id {
            return Ok(view);
        }
        let election = self.raft_settings(c.members.iter().any(|m| m.host.is_some())).election_timeout_ms;
        let mut leader_node = leader_node;
        for attempt in 0..2 {
            // the target must hold the leader's whole log, or it cannot win
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let v = self.view_of(&c).await;
                let caught_up = v.members.iter().any(|m| m.node_id == target.node_id && m.lag == Some(0));
                if caught_up {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(Error::Unavailable(format!(
                        "vm {:?} did not catch up with the leader within 5 s",
                        vm.name
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let hold_for = election * 8;
            let voters: Vec<(CircuitMember, Site)> = c
                .members
                .iter()
                .filter(|m| m.role == Role::Voter && m.node_id != target.node_id)
                .map(|m| (m.clone(), Site::member(m)))
                .collect();
            // the leader stops replicating (its writes wait) and no one else may stand
            for (m, v) in &voters {
                let hold = CircuitCall::Hold {
                    circuit: c.id.clone(),
                    replication: m.node_id == leader_node,
                    elections: true,
                    for_ms: hold_for,
                };
                let _ = self.member_call::<MemberStatus>(&c, v, hold, CALL_WAIT).await;
            }
            // the followers' lease on the old leader runs out once they stop hearing from it
            // (openraft 0.9: the longest election timeout)
            tokio::time::sleep(Duration::from_millis(election * 2 + 200)).await;
            let elect = CircuitCall::Elect { circuit: c.id.clone() };
            let elected = self.member_call::<MemberStatus>(&c, &vm, elect, CALL_WAIT).await;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(election * 4 + 2000);
            let mut view = self.view_of(&c).await;
            while elected.is_ok() && view.leader_node != Some(target.node_id) && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                view = self.view_of(&c).await;
            }
            for (_, v) in &voters {
                let release =
                    CircuitCall::Hold { circuit: c.id.clone(), replication: false, elections: false, for_ms: 0 };
                let _ = self.member_call::<MemberStatus>(&c, v, release, CALL_WAIT).await;
            }
            if view.leader_node == Some(target.node_id) {
                self.note_leader(&c, target.node_id);
            }
            elected?;
            if view.leader_node == Some(target.node_id) {
                return Ok(view);
            }
            if attempt == 0 {
                // an election is a race: on a loaded machine the old leader's lease or a slow
                // vote can beat the target once; a second round usually settles it
                tracing::info!("circuit {:?}: leadership did not move to {:?} at once; trying again", c.name, vm.name);
                match view.leader_node {
                    Some(l) if l == target.node_id => return Ok(view),
                    Some(l) => leader_node = l,
                    None => {}
                }
                continue;
            }
            return Err(Error::Unavailable(format!(
                "leadership of circuit {:?} did not move to {:?} (the leader is now {:?}); try again",
                c.name,
                vm.name,
                view.leader.unwrap_or_else(|| "none".into())
            )));
        }
        unreachable!("the second attempt returns")
    }

    pub async fn circuit_write(&self, key: &str, via: Option<&str>, op: StateOp) -> Result<WriteResult> {
        validate_key(op.key()).map_err(|e| Error::invalid(e.to_string()))?;
        if let StateOp::Set { value, .. } | StateOp::CompareAndSet { value, .. } = &op {
            check_value(value).map_err(|e| Error::invalid(e.to_string()))?;
        }
        let c = self.circuits.find(key)?;
        let call = CircuitCall::Write { circuit: c.id.clone(), op };
        let r: WriteResult = self.through_member(&c, via, call, CALL_WAIT).await?;
        self.note_leader(&c, r.leader);
        Ok(r)
    }

    pub async fn circuit_read(
        &self,
        key: &str,
        state_key: Option<String>,
        stale: bool,
        via: Option<&str>,
    ) -> Result<ReadResult> {
        if let Some(k) = &state_key {
            validate_key(k).map_err(|e| Error::invalid(e.to_string()))?;
        }
        let c = self.circuits.find(key)?;
        let call = CircuitCall::Read { circuit: c.id.clone(), key: state_key.clone(), stale };
        let r: ReadResult = self.through_member(&c, via, call, CALL_WAIT).await?;
        if let Some(k) = state_key {
            if r.entries.is_empty() {
                return Err(Error::not_found(format!("key {k:?} not found in circuit {:?}", c.name)));
            }
        }
        Ok(r)
    }

    /// Raises and resolves the circuit component's alerts (source `circuit`) from every
    /// circuit's view: one for a circuit without a leader, one per member unreachable or
    /// lagging more than `circuit_lag_alert` entries. Open ones are found again in the
    /// store after a restart, so each fires once while its condition holds.
    pub async fn circuit_alerts(&self) {
        use micro_os_core::metrics::Alert;
        let open: std::collections::HashMap<(String, String), i64> = self
            .open_alerts(false)
            .into_iter()
            .filter(|a| a.source == "circuit")
            .map(|a| ((a.rule, a.object), a.id))
            .collect();
        let mut holding = std::collections::HashSet::new();
        for c in self.circuits.list() {
            let v = self.view_of(&c).await;
            let object = format!("circuit/{}", c.name);
            let mut conditions: Vec<(&str, Severity, f64, String)> = Vec::new();
            if v.leader.is_none() {
                let why = "no leader (an election is under way, or a majority is unreachable)";
                conditions.push(("circuit-no-leader", Severity::Critical, 0.0, why.to_string()));
            }
            for m in &v.members {
                match m.health.as_str() {
                    "unreachable" => conditions.push((
                        "circuit-member-unreachable",
                        Severity::Degraded,
                        m.node_id as f64,
                        format!(
                            "member {:?} (node {}) is unreachable: {}",
                            m.vm,
                            m.node_id,
                            m.error.clone().unwrap_or_default()
                        ),
                    )),
                    "lagging" => conditions.push((
                        "circuit-member-lagging",
                        Severity::Degraded,
                        m.lag.unwrap_or(0) as f64,
                        format!(
                            "member {:?} (node {}) lags {} entries behind the leader",
                            m.vm,
                            m.node_id,
                            m.lag.unwrap_or(0)
                        ),
                    )),
                    _ => {}
                }
            }
            for (rule, severity, value, message) in conditions {
                // one alert per member: its node id is part of the object
                let object = if rule == "circuit-no-leader" {
                    object.clone()
                } else {
                    format!("{object}/node-{}", value as u64)
                };
                holding.insert((rule.to_string(), object.clone()));
                if open.contains_key(&(rule.to_string(), object.clone())) {
                    continue;
                }
                let a = Alert {
                    id: 0,
                    rule: rule.to_string(),
                    object,
                    severity,
                    source: "circuit".into(),
                    value,
                    message: format!("circuit {:?}: {message}", c.name),
                    fired_at: Utc::now(),
                    resolved_at: None,
                };
                match tokio::task::block_in_place(|| self.store.insert_alert(&a)) {
                    Ok(_) => tracing::warn!("alert {} fired: {}", a.rule, a.message),
                    Err(e) => tracing::warn!("circuits: store alert: {e}"),
                }
            }
        }
        for (key, id) in open {
            if !holding.contains(&key) {
                tracing::info!("alert {id} resolved ({} {})", key.0, key.1);
                if let Err(e) = tokio::task::block_in_place(|| self.store.resolve_alert(id, Utc::now())) {
                    tracing::warn!("circuits: resolve alert: {e}");
                }
            }
        }
    }

    /// The circuit component's health: each circuit's leader, lag and reachability.
    pub async fn circuits_health(&self) -> Health {
        let circuits = self.circuits.list();
        if circuits.is_empty() {
            return Health::NotConfigured;
        }
        let mut worst = Severity::Healthy;
        let mut lines = Vec::new();
        for c in &circuits {
            let v = self.view_of(c).await;
            let sev = match v.health.as_str() {
                "ok" => Severity::Healthy,
                "degraded" => Severity::Degraded,
                _ => Severity::Critical,
            };
            worst = worst.max(sev);
            if v.problems.is_empty() {
                lines.push(format!("{}: leader {}, term {}", c.name, v.leader.unwrap_or_default(), v.term));
            } else {
                lines.push(format!("{}: {}", c.name, v.problems.join("; ")));
            }
        }
        Health::Is(worst, lines.join("; "))
    }
}

/// A member's refusal as the daemon reports it.
fn circuit_error(c: &Circuit, vm: &Site, e: CircuitError) -> Error {
    let m = format!("circuit {:?} (through {:?}): {e}", c.name, vm.name);
    match e {
        CircuitError::NoLeader(_) | CircuitError::NoQuorum(_) | CircuitError::Unknown(_) | CircuitError::NotLeader => {
            Error::Unavailable(m)
        }
        CircuitError::NoCircuit(_) => Error::conflict(format!(
            "vm {:?} holds no member of circuit {:?} (its store is gone: remove it from the circuit and add it again)",
            vm.name, c.name
        )),
        CircuitError::Invalid(_) => Error::Invalid(m),
        CircuitError::Failed(_) => Error::Internal(m),
    }
}
