//! Replicated containers (`container create --circuit N --replicate`): one replica on
//! each member VM of a circuit, like a Nomad system job or a Kubernetes DaemonSet whose
//! nodes are the circuit's members.
//!
//! The replicated container is a record that runs nothing itself: its spec is the spec of
//! every replica and its state is the state its replicas are asked to be in. Each replica
//! is an ordinary container placed on one member VM (named `<name>.<vm>`, with
//! `replica_of` pointing back), so the shim, restarts, health checks, logs and metrics
//! are the ones every container has. `reconcile` makes the replicas follow the circuit's
//! membership; it runs after a create, after `circuit add-node` and `remove-node`, and at
//! daemon start (which also repairs a create cut short by a crash).

use std::sync::Arc;

use chrono::Utc;
use futures_util::future::join_all;
use micro_os_core::{Circuit, Container, ContainerSpec, ContainerState, ReplicaView, Transition, VmState};
use micro_os_store::Durability;

use super::engine::Engine;
use super::error::{Error, Result};

/// A replica's name: `<name>.<vm>`, or `<name>.<node id>` when that is too long.
fn replica_name(parent: &str, vm: &str, node_id: u64) -> String {
    let long = format!("{parent}.{vm}");
    if long.len() <= 63 {
        long
    } else {
        format!("{parent}.{node_id}")
    }
}

/// Runs `op` on every replica at once; the failures, as `name: why`.
async fn each<'a, F, Fut>(rs: &'a [Container], op: F) -> Vec<String>
where
    F: Fn(&'a Container) -> Fut,
    Fut: std::future::Future<Output = Result<Container>>,
{
    join_all(rs.iter().map(&op))
        .await
        .into_iter()
        .zip(rs)
        .filter_map(|(res, r)| res.err().map(|e| format!("{}: {e}", r.spec.name)))
        .collect()
}

impl Engine {
    /// The replicas of a replicated container (by its id).
    pub(super) fn replicas_of(&self, parent: &str) -> Vec<Container> {
        self.containers.filter(|c| c.spec.replica_of.as_deref() == Some(parent))
    }

    /// A container as the API shows it: a replicated one with its replicas.
    pub(super) fn shown(&self, mut c: Container) -> Container {
        if c.is_replicated() {
            let mut rs: Vec<ReplicaView> = self
                .replicas_of(&c.id)
                .into_iter()
                .map(|r| ReplicaView {
                    vm: r.spec.vm.as_deref().and_then(|v| self.vms.get(v)).map(|v| v.spec.name).unwrap_or_default(),
                    name: r.spec.name,
                    id: r.id,
                    state: r.state,
                    pid: r.pid,
                    health: r.health.map(|h| h.status),
                    exit_code: r.exit_code,
                    error: r.error,
                })
                .collect();
            rs.sort_by(|a, b| a.name.cmp(&b.name));
            c.replicas = rs;
        }
        c
    }

    /// Checks a replicated create before anything is made: the circuit exists (its id goes
    /// in the spec), and the replicas' names are free.
    pub(super) fn resolve_replicated(&self, spec: &mut ContainerSpec, circuit: &str) -> Result<()> {
        let c = self.circuits.find(circuit)?;
        if let Some(m) = c.members.iter().find(|m| m.host.is_some()) {
            return Err(Error::invalid(format!(
                "circuit {:?} has members on other hosts (vm {:?}): replicated containers need every member on this host (not supported across hosts yet)",
                c.name, m.vm
            )));
        }
        for m in &c.members {
            let name = replica_name(&spec.name, &m.vm, m.node_id);
            micro_os_core::validate_name("container", &name).map_err(|e| Error::invalid(e.to_string()))?;
            self.containers.check_name_free(&name).map_err(|e| e.within(format!("replica on vm {:?}", m.vm)))?;
        }
        spec.circuit = Some(c.id);
        Ok(())
    }

    /// Creates a replicated container and a replica on each member; with `start`, starts
    /// them. The record is committed first and the replicas made by `reconcile`, so a
    /// crash in between is repaired at the next start.
    pub(super) async fn create_replicated(self: &Arc<Self>, spec: ContainerSpec, start: bool) -> Result<Container> {
        let p = Container::new(micro_os_core::id::new_id(), spec, Utc::now());
        let circuit = p.spec.circuit.clone().unwrap_or_default();
        self.containers.insert_with(p.clone(), format!("replicated on circuit {circuit}"), Durability::Committed)?;
        {
            let lock = self.ops.of(&p.id);
            let _g = lock.lock().await;
            self.reconcile_one(&p.id).await;
        }
        // the create is acknowledged now: durable with its replicas
        self.containers.sync()?;
        if start {
            return self.start_replicated(&p.id).await;
        }
        Ok(self.shown(self.find(&p.id)?))
    }

    /// Makes the replicas of every replicated container of circuit `id` follow its members.
    pub(super) async fn reconcile_circuit(self: &Arc<Self>, circuit: &str) {
        for p in self.containers.filter(|c| c.spec.circuit.as_deref() == Some(circuit)) {
            let lock = self.ops.of(&p.id);
            let _g = lock.lock().await;
            self.reconcile_one(&p.id).await;
        }
    }

    /// After VM `vm` started: the circuits it is a member of.
    pub(super) async fn reconcile_vm(self: &Arc<Self>, vm: &str) {
        for c in self.circuits.filter(|c| c.member(vm).is_some()) {
            self.reconcile_circuit(&c.id).await;
        }
    }

    /// At daemon start: every replicated container against its circuit as recorded.
    pub(super) async fn reconcile_all(self: &Arc<Self>) {
        let circuits: std::collections::BTreeSet<String> =
            self.containers.filter(|c| c.is_replicated()).into_iter().filter_map(|c| c.spec.circuit).collect();
        for c in circuits {
            self.reconcile_circuit(&c).await;
        }
    }

    /// One replicated container (its op lock held): a replica on each member VM, none
    /// elsewhere; a new one is started if the replicated container is running.
    async fn reconcile_one(self: &Arc<Self>, parent: &str) {
        let Some(p) = self.containers.get(parent) else { return };
        let Some(circuit) = p.spec.circuit.as_deref().and_then(|c| self.circuits.get(c)) else {
            tracing::warn!("replicated container {:?}: its circuit is gone", p.spec.name);
            return;
        };
        let replicas = self.replicas_of(&p.id);
        for r in &replicas {
            let member = r.spec.vm.as_deref().and_then(|vm| circuit.member(vm));
            if member.is_none() {
                tracing::info!("replica {} leaves with its VM from circuit {}", r.spec.name, circuit.name);
                if let Err(e) = self.remove_one(&r.id, true).await {
                    tracing::warn!("remove replica {}: {e}", r.spec.name);
                }
            }
        }
        // replicas are made on this host's members only (a replicated create refuses a
        // circuit that spans hosts; one that came to span them later keeps its local ones)
        for m in circuit.members.iter().filter(|m| m.host.is_none()) {
            if let Some(r) = replicas.iter().find(|r| r.spec.vm.as_deref() == Some(&m.vm_id)) {
                // a replica whose VM was stopped under it runs again once the VM does
                let vm_running = self.vms.get(&m.vm_id).is_some_and(|v| v.state == VmState::Running);
                let r_running = self
                    .containers
                    .get(&r.id)
                    .is_some_and(|r| matches!(r.state, ContainerState::Running | ContainerState::Paused));
                if p.state == ContainerState::Running && vm_running && !r_running {
                    match self.start_one(&r.id).await {
                        Ok(_) => tracing::info!("replica {} runs again on vm {}", r.spec.name, m.vm),
                        Err(e) => tracing::warn!("replica {} on vm {}: {e}", r.spec.name, m.vm),
                    }
                }
                continue;
            }
            match self.add_replica(&p, &circuit, &m.vm_id).await {
                Ok(r) => tracing::info!("replica {} made on vm {}", r.spec.name, m.vm),
                Err(e) => {
                    tracing::warn!("replica of {} on vm {}: {e}", p.spec.name, m.vm);
                    self.containers.update(&p.id, |c| c.error = Some(format!("replica on vm {:?}: {e}", m.vm)));
                    let _ = self.containers.record(&p.id, "replica-failed", e.to_string());
                }
            }
        }
    }

    async fn add_replica(self: &Arc<Self>, p: &Container, circuit: &Circuit, vm_id: &str) -> Result<Container> {
        let m = circuit.member(vm_id).ok_or_else(|| Error::internal("member gone"))?;
        let vm = self.find_vm(vm_id)?;
        let mut spec = p.spec.clone();
        spec.name = replica_name(&p.spec.name, &vm.spec.name, m.node_id);
        spec.vm = Some(vm.id.clone());
        spec.circuit = None;
        spec.replica_of = Some(p.id.clone());
        // fitted to its VM: a child cgroup's CPU quota may not exceed the VM's
        if spec.resources.cpu.is_some_and(|c| c > vm.spec.cpus) {
            spec.resources.cpu = Some(vm.spec.cpus);
        }
        spec.validate().map_err(|e| Error::invalid(e.to_string()))?;
        self.containers.check_name_free(&spec.name)?;
        let r = Container::new(micro_os_core::id::new_id(), spec, Utc::now());
        self.containers.insert_with(
            r.clone(),
            format!("replica of {} on vm {}", p.spec.name, vm.spec.name),
            Durability::Committed,
        )?;
        self.advertise(&vm.id);
        if p.state == ContainerState::Running && vm.state == VmState::Running {
            return self.start_one(&r.id).await;
        }
        Ok(r)
    }

    /// `container start` of a replicated container: every replica that is not running
    /// and whose VM runs. Fails only if none could start; the others' reasons are kept in
    /// its `error`.
    pub(super) async fn start_replicated(self: &Arc<Self>, key: &str) -> Result<Container> {
        let (p, _g) = super::supervisor::locked(&self.containers, &self.ops, key).await?;
        p.state.check(&p.spec.name, Transition::Start).map_err(|e| Error::conflict(e.to_string()))?;
        // a member that joined while the daemon was down gets its replica first
        self.reconcile_one(&p.id).await;
        let replicas = self.replicas_of(&p.id);
        let starts = replicas
            .iter()
            .filter(|r| !matches!(r.state, ContainerState::Running | ContainerState::Paused))
            .map(|r| async move {
                let vm = r.spec.vm.as_deref().and_then(|v| self.vms.get(v));
                match vm {
                    Some(vm) if vm.state == VmState::Running => self.start_one(&r.id).await.map(drop),
                    Some(vm) => Err(Error::conflict(format!("its vm {:?} is {}", vm.spec.name, vm.state))),
                    None => Err(Error::conflict("its vm is gone")),
                }
                .map_err(|e| format!("{}: {e}", r.spec.name))
            });
        let failed: Vec<String> = join_all(starts).await.into_iter().filter_map(|r| r.err()).collect();
        let running = self.replicas_of(&p.id).iter().filter(|r| r.state == ContainerState::Running).count();
        if running == 0 && !replicas.is_empty() {
            return Err(Error::conflict(format!(
                "cannot start container {:?}: no replica could start ({})",
                p.spec.name,
                failed.join("; ")
            )));
        }
        let error = (!failed.is_empty())
            .then(|| format!("{} of {} replicas did not start: {}", failed.len(), replicas.len(), failed.join("; ")));
        let now = Utc::now();
        self.containers.update(&p.id, |c| {
            c.state = ContainerState::Running;
            c.started_at = Some(now);
            c.finished_at = None;
            c.stop_requested = false;
            c.error = error.clone();
        });
        self.containers.persist(&p.id, "started", format!("{running} of {} replicas running", replicas.len()))?;
        Ok(self.shown(self.find(&p.id)?))
    }

    /// `container stop` of a replicated container: every replica, at once.
    pub(super) async fn stop_replicated(self: &Arc<Self>, key: &str, timeout: Option<f64>) -> Result<Container> {
        let (p, _g) = super::supervisor::locked(&self.containers, &self.ops, key).await?;
        p.state.check(&p.spec.name, Transition::Stop).map_err(|e| Error::conflict(e.to_string()))?;
        self.stop_replicas(&p, timeout).await?;
        self.containers.update(&p.id, |c| {
            c.state = ContainerState::Exited;
            c.finished_at = Some(Utc::now());
            c.stop_requested = true;
        });
        self.containers.persist(&p.id, "stopped", "")?;
        Ok(self.shown(self.find(&p.id)?))
    }

    async fn stop_replicas(&self, p: &Container, timeout: Option<f64>) -> Result<()> {
        let live: Vec<Container> = self
            .replicas_of(&p.id)
            .into_iter()
            .filter(|r| matches!(r.state, ContainerState::Running | ContainerState::Paused))
            .collect();
        let failed = each(&live, |r| self.stop_one(&r.id, timeout)).await;
        if !failed.is_empty() {
            return Err(Error::internal(format!("container {:?}: {}", p.spec.name, failed.join("; "))));
        }
        Ok(())
    }

    /// `container pause`/`resume` of a replicated container: every replica in the state
    /// the transition starts from.
    pub(super) async fn pause_replicated(self: &Arc<Self>, key: &str, pause: bool) -> Result<Container> {
        let (p, _g) = super::supervisor::locked(&self.containers, &self.ops, key).await?;
        let t = if pause { Transition::Pause } else { Transition::Resume };
        p.state.check(&p.spec.name, t).map_err(|e| Error::conflict(e.to_string()))?;
        let from = if pause { ContainerState::Running } else { ContainerState::Paused };
        let these: Vec<Container> = self.replicas_of(&p.id).into_iter().filter(|r| r.state == from).collect();
        let failed = each(&these, |r| self.pause_one(&r.id, pause)).await;
        if !failed.is_empty() {
            return Err(Error::conflict(format!("container {:?}: {}", p.spec.name, failed.join("; "))));
        }
        self.containers
            .update(&p.id, |c| c.state = if pause { ContainerState::Paused } else { ContainerState::Running });
        self.containers.persist(&p.id, if pause { "paused" } else { "resumed" }, "")?;
        Ok(self.shown(self.find(&p.id)?))
    }

    /// `container rm` of a replicated container: its replicas (stopped first with
    /// `--force`), then the record.
    pub(super) async fn remove_replicated(self: &Arc<Self>, key: &str, force: bool) -> Result<()> {
        let (p, _g) = super::supervisor::locked(&self.containers, &self.ops, key).await?;
        if let Err(e) = p.state.check(&p.spec.name, Transition::Remove) {
            if !force {
                return Err(Error::conflict(format!("{e} (stop it first, or rm --force)")));
            }
        }
        for r in self.replicas_of(&p.id) {
            self.remove_one(&r.id, force).await.map_err(|e| e.within(format!("replica {:?}", r.spec.name)))?;
        }
        self.containers.delete(&p.id)?;
        self.ops.forget(&p.id);
        Ok(())
    }

    /// Names of the replicated containers that run on circuit `id` (a circuit with some
    /// cannot be removed).
    pub(super) fn replicated_on(&self, circuit: &str) -> Vec<String> {
        self.containers
            .filter(|c| c.spec.circuit.as_deref() == Some(circuit))
            .into_iter()
            .map(|c| c.spec.name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_names_fit() {
        assert_eq!(replica_name("validator", "blockchain-node-1", 3), "validator.blockchain-node-1");
        let long = "v".repeat(40);
        let vm = "w".repeat(30);
        assert_eq!(replica_name(&long, &vm, 7), format!("{long}.7"));
    }
}
