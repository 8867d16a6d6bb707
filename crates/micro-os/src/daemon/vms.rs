//! VMs in the daemon: their records and lifecycle, the same for every driver — create,
//! start (the driver starts the first process; the agent's hello and ready arrive over
//! the control channel), stop (containers first, then the agent's own shutdown, then
//! signals), pause, remove, recover — and the agent's control channel.
//!
//! The agent reports over a unix socket in the VM's `ctl/` directory (bound into a
//! sandbox at `/run/micro-os/ctl`, a virtio-serial port of a qemu guest): hello with its
//! peer id, ready, health every second. The daemon shows `ready`, `degraded` or
//! `unreachable` from what it last heard.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use micro_os_api::types::VmCreate;
use micro_os_core::net::{SendJob, SendReport};
use micro_os_core::vm::{AgentMessage, DaemonMessage, Query, AGENT_CONTROL_DIR, AGENT_CONTROL_SOCKET};
use micro_os_core::{AgentStatus, ContainerState, Driver, RestartPolicy, Transition, Vm, VmSpec, VmState};
use micro_os_runtime::cgroup;
use micro_os_vmm::{Recovered, Signal, Started, VmDriver};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::containers::check_timeout;
use super::engine::Engine;
use super::error::{Error, Result};
use super::supervisor::{self, BoxFuture, Kind};
use super::table::Table;

const BASE_IMAGE: &str = "blockchain-base";
/// Silence after which a running VM's agent counts as unreachable.
const AGENT_DEADLINE: Duration = Duration::from_secs(4);

impl Kind<Vm> for Engine {
    fn table(&self) -> &Table<Vm> {
        &self.vms
    }
    fn relaunch<'a>(self: &'a Arc<Self>, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.launch_vm(id, "restarted"))
    }
    fn after_exit(self: &Arc<Self>, id: &str) {
        self.agents.lock().unwrap().remove(id);
        // the network and the parent cgroup outlive the VM's process only until now
        let (this, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            // the driver's cleanup (a shim unmounting) ends first, without holding the lock
            if let Some(d) = this.vms.get(&id).and_then(|v| this.driver(v.spec.driver).ok().cloned()) {
                d.settled(&id).await;
            }
            this.release_if_stopped(&id).await
        });
    }
}

impl Engine {
    pub(super) fn driver(&self, kind: Driver) -> Result<&Arc<dyn VmDriver>> {
        self.drivers.get(&kind).ok_or_else(|| Error::invalid(format!("driver {kind} is not available in this build")))
    }

    fn vm_dir(&self, id: &str) -> std::path::PathBuf {
        self.host.vm_dir(id)
    }

    fn resolve_vm(&self, req: VmCreate) -> Result<VmSpec> {
        let driver = match &req.driver {
            Some(d) => Driver::parse(d).map_err(|e| Error::invalid(e.to_string()))?,
            None => Driver::Sandbox,
        };
        let image = req.image.unwrap_or_else(|| BASE_IMAGE.to_string());
        let spec = VmSpec {
            name: req.name,
            memory_mib: req.memory,
            cpus: req.cpu,
            image: image.clone(),
            driver,
            restart: req.restart.unwrap_or(RestartPolicy::No),
        };
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        spec.validate(cgroup::host_memory_mib(), cpus).map_err(|e| Error::invalid(e.to_string()))?;
        // the driver looks at the host (PATH, /boot): off the async thread
        let d = self.driver(driver)?;
        tokio::task::block_in_place(|| d.validate(&spec)).map_err(Error::refused)?;
        if image == BASE_IMAGE {
            self.ensure_built_in(BASE_IMAGE)?;
        }
        if !self.images.exists(&image) {
            return Err(Error::not_found(format!("image {image:?} not found (see `micro-os image ls`)")));
        }
        Ok(spec)
    }

    /// All or nothing: every entry is checked before any is created.
    pub async fn create_vms(&self, reqs: Vec<VmCreate>) -> Result<Vec<Vm>> {
        if reqs.is_empty() {
            return Err(Error::invalid("the definitions list no VM (give [{\"name\": ..., \"memory\": ...}])"));
        }
        let many = reqs.len() > 1;
        let mut specs = Vec::new();
        let mut names = HashSet::new();
        for (i, r) in reqs.into_iter().enumerate() {
            let name = r.name.clone();
            let spec =
                self.resolve_vm(r).map_err(|e| if many { e.within(format!("vms[{i}] ({name:?})")) } else { e })?;
            if !names.insert(spec.name.clone()) {
                return Err(Error::invalid(format!("vms[{i}]: name {:?} appears twice", spec.name)));
            }
            self.vms.check_name_free(&spec.name)?;
            specs.push(spec);
        }
        let mut out = Vec::new();
        for spec in specs {
            let used: Vec<_> = self.vms.list().iter().map(|v| v.address).collect();
            let address = self
                .fabric()
                .allocate(&used)
                .ok_or_else(|| Error::conflict(format!("the vm subnet {} is full", self.cfg.vm_subnet)))?;
            let vm = Vm::new(micro_os_core::id::new_id(), spec, address, Utc::now());
            self.vms.insert(vm.clone(), format!("address {address}"))?;
            out.push(vm);
        }
        Ok(out)
    }

    pub async fn start_vm(self: &Arc<Self>, key: &str) -> Result<Vm> {
        let (v, _g) = supervisor::begin(&self.vms, &self.ops, key, Transition::Start).await?;
        self.launch_vm(&v.id, "started").await?;
        // the start is done when the agent says it is ready
        let ready = |v: &Vm| v.agent != AgentStatus::Starting || v.state != VmState::Running;
        let patience = self.driver(v.spec.driver)?.capabilities().boot;
        self.vms.wait_until(&v.id, ready, patience).await;
        // the replicas of running replicated containers on it run again
        let this = self.clone();
        let id = v.id.clone();
        tokio::spawn(async move { this.reconcile_vm(&id).await });
        self.find_vm(&v.id)
    }

    /// The control channel, then the driver's start. Caller holds the op lock.
    async fn launch_vm(self: &Arc<Self>, id: &str, action: &str) -> Result<()> {
        let v = self.find_vm(id)?;
        let driver = self.driver(v.spec.driver)?.clone();
        self.open_control(id).await?;
        let vv = v.clone();
        let d = driver.clone();
        let started =
            tokio::task::spawn_blocking(move || d.start(&vv)).await.map_err(|e| Error::internal(e.to_string()))?;
        match started {
            Ok(run) => {
                let now = Utc::now();
                self.vms.update(id, |v| {
                    v.mark_running(run.pid, now);
                    v.accel = run.accel.clone();
                });
                // recorded, then watched whatever the write did: an exit is never missed
                // (a driver's wait finds one that came first: the shim's status, qemu
                // our child until reaped) and its event comes after this one
                let persisted = self.vms.persist(id, action, run.detail.clone());
                self.supervise_vm(&v, &driver, &run);
                persisted?;
                Ok(())
            }
            Err(e) => {
                let e = Error::from(e);
                let msg = e.to_string();
                self.vms.update(id, |v| v.error = Some(msg.clone()));
                self.vms.persist(id, "start-failed", msg)?;
                Err(e.within(format!("start vm {:?}", v.spec.name)))
            }
        }
    }

    fn supervise_vm(self: &Arc<Self>, v: &Vm, driver: &Arc<dyn VmDriver>, run: &Started) {
        let mut running = v.clone();
        running.pid = Some(run.pid);
        supervisor::watch::<Vm, _>(self, &v.id, run.pid, driver.wait(&running, run));
        self.watchdog(&v.id, run.pid, driver.capabilities().boot_grace);
    }

    /// Releases the host side of a VM that has not been started again meanwhile; under
    /// the op lock, so a start of the same VM cannot interleave.
    pub(super) async fn release_if_stopped(self: &Arc<Self>, id: &str) {
        if self.vms.get(id).is_none() {
            return;
        }
        let lock = self.ops.of(id);
        let _g = lock.lock().await;
        let Some(v) = self.vms.get(id).filter(|v| v.pid.is_none()) else { return };
        let Ok(d) = self.driver(v.spec.driver).cloned() else { return };
        let _ = tokio::task::spawn_blocking(move || d.release(&v)).await;
    }

    /// A running VM whose agent falls silent is unreachable.
    fn watchdog(self: &Arc<Self>, id: &str, pid: u32, grace: Duration) {
        let this = self.clone();
        let id2 = id.to_string();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Ok(v) = this.find_vm(&id2) else { return };
                if v.pid != Some(pid) || v.state == VmState::Stopped {
                    return;
                }
                let silent =
                    v.last_report.is_none_or(|t| (Utc::now() - t).to_std().unwrap_or_default() > AGENT_DEADLINE);
                // a guest takes a while to boot: give it its driver's grace before calling it silent
                let started_long_ago =
                    v.started_at.is_some_and(|t| (Utc::now() - t).to_std().unwrap_or_default() > grace);
                if v.state == VmState::Running
                    && silent
                    && (started_long_ago || v.last_report.is_some())
                    && v.agent != AgentStatus::Unreachable
                {
                    this.vms.update(&id2, |v| v.agent = AgentStatus::Unreachable);
                    let _ = this.vms.persist(&id2, "agent-unreachable", "");
                }
            }
        });
    }

    pub async fn stop_vm(self: &Arc<Self>, key: &str, force: bool, timeout: Option<f64>) -> Result<Vm> {
        if let Some(v) = supervisor::cancel_restart(&self.vms, &self.ops, key).await? {
            return Ok(v);
        }
        let (v, _g) = supervisor::begin(&self.vms, &self.ops, key, Transition::Stop).await?;
        self.stop_vm_locked(&v, force, timeout.unwrap_or(self.cfg.stop_timeout_s)).await?;
        // the reply reports the exit, which the supervisor only recorded
        self.vms.sync()?;
        self.find_vm(&v.id)
    }

    async fn stop_vm_locked(self: &Arc<Self>, v: &Vm, force: bool, timeout: f64) -> Result<()> {
        check_timeout(timeout)?;
        let id = v.id.clone();
        self.vms.update(&id, |v| v.stop_requested = true);
        self.vms.persist(&id, "stopping", if force { "forced".to_string() } else { format!("timeout {timeout}s") })?;
        // containers placed on the VM go first
        let on_vm = self.containers.filter(|c| {
            c.spec.vm.as_deref() == Some(id.as_str())
                && matches!(c.state, ContainerState::Running | ContainerState::Paused)
        });
        if v.state == VmState::Paused {
            let _ = self.freeze_vm(v, false).await;
        }
        for c in on_vm {
            let lock = self.ops.of(&c.id);
            let _g = lock.lock().await;
            if let Ok(c) = self.find(&c.id) {
                if matches!(c.state, ContainerState::Running | ContainerState::Paused) {
                    let _ = self.stop_locked(&c, if force { 0.0 } else { timeout }).await;
                }
            }
        }
        let stopped = |v: &Vm| v.state == VmState::Stopped;
        if !force {
            let asked = self
                .agents
                .lock()
                .unwrap()
                .get(&id)
                .is_some_and(|tx| tx.send(DaemonMessage::Shutdown { grace_s: timeout }).is_ok());
            if !asked {
                self.signal_vm(v, Signal::Term).await;
            }
            // the agent's own grace period plus a margin for it to exit
            if self.vms.wait_until(&id, stopped, Duration::from_secs_f64(timeout + 2.0)).await.is_some() {
                return Ok(());
            }
        }
        self.signal_vm(v, Signal::Kill).await;
        if self.vms.wait_until(&id, stopped, Duration::from_secs(15)).await.is_none() {
            return Err(Error::internal(format!("vm {:?} did not stop after SIGKILL", v.spec.name)));
        }
        Ok(())
    }

    /// Signals a VM's first process through its driver.
    async fn signal_vm(&self, v: &Vm, sig: Signal) {
        let Ok(d) = self.driver(v.spec.driver).cloned() else { return };
        let Some(v) = self.vms.get(&v.id) else { return };
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = d.signal(&v, sig) {
                tracing::debug!("signal vm {}: {e}", v.spec.name);
            }
        })
        .await;
    }

    async fn freeze_vm(&self, v: &Vm, frozen: bool) -> Result<()> {
        let d = self.driver(v.spec.driver)?.clone();
        let v = v.clone();
        Ok(tokio::task::spawn_blocking(move || d.freeze(&v, frozen))
            .await
            .map_err(|e| Error::internal(e.to_string()))??)
    }

    pub async fn pause_vm(&self, key: &str, pause: bool) -> Result<Vm> {
        let action = if pause { Transition::Pause } else { Transition::Resume };
        let (v, _g) = supervisor::begin(&self.vms, &self.ops, key, action).await?;
        self.freeze_vm(&v, pause).await?;
        supervisor::record_freeze(&self.vms, &v, pause)
    }

    pub async fn remove_vm(self: &Arc<Self>, key: &str, force: bool) -> Result<()> {
        let v = self.find_vm(key)?;
        let placed: Vec<String> = self
            .containers
            .filter(|c| c.spec.vm.as_deref() == Some(v.id.as_str()))
            .into_iter()
            .map(|c| c.spec.name)
            .collect();
        if !placed.is_empty() {
            return Err(Error::conflict(format!(
                "vm {:?} holds containers {} (remove them first)",
                v.spec.name,
                placed.join(", ")
            )));
        }
        let (v, _g) = supervisor::locked(&self.vms, &self.ops, &v.id).await?;
        if let Err(e) = v.state.check(&v.spec.name, Transition::Remove) {
            if !force {
                return Err(Error::conflict(e.to_string()));
            }
            self.stop_vm_locked(&v, true, 0.0).await?;
        }
        // the host side (network namespace, veth, cgroups) goes before the record: a
        // daemon killed in between leaves a VM that `rm` can finish, never an orphan
        let d = self.driver(v.spec.driver)?.clone();
        let vv = v.clone();
        let _ = tokio::task::spawn_blocking(move || d.release(&vv)).await;
        self.vms.delete(&v.id)?;
        self.ops.forget(&v.id);
        let dir = self.vm_dir(&v.id);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        Ok(())
    }

    /// Makes the VM's `ctl/` directory and listens on its control socket.
    async fn open_control(self: &Arc<Self>, id: &str) -> Result<()> {
        let ctl = self.vm_dir(id).join("ctl");
        std::fs::create_dir_all(&ctl).map_err(|e| Error::internal(format!("create {}: {e}", ctl.display())))?;
        write_circuit_token(&ctl)?;
        self.serve_control(id, &ctl).await
    }

    /// The token of VM `id`'s local circuit endpoint, once its control directory has one.
    pub(super) fn circuit_token(&self, id: &str) -> Option<String> {
        let path = self.vm_dir(id).join("ctl").join(micro_os_core::vm::AGENT_CIRCUIT_TOKEN_FILE);
        std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
    }

    /// Listens on the VM's control socket; each connection is one agent session.
    async fn serve_control(self: &Arc<Self>, id: &str, ctl: &Path) -> Result<()> {
        let path = ctl.join(AGENT_CONTROL_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| Error::internal(format!("control socket {}: {e}", path.display())))?;
        let this = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                if this.find_vm(&id).is_err() {
                    return;
                }
                let (rd, mut wr) = stream.into_split();
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DaemonMessage>();
                this.agents.lock().unwrap().insert(id.clone(), tx);
                tokio::spawn(async move {
                    while let Some(m) = rx.recv().await {
                        let mut line = serde_json::to_vec(&m).expect("messages serialise");
                        line.push(b'\n');
                        if wr.write_all(&line).await.is_err() {
                            return;
                        }
                    }
                });
                let this2 = this.clone();
                let id2 = id.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(rd).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        match serde_json::from_str::<AgentMessage>(&line) {
                            Ok(m) => this2.on_agent(&id2, m),
                            Err(e) => tracing::warn!("vm {id2}: bad agent message: {e}"),
                        }
                    }
                });
            }
        });
        Ok(())
    }

    /// Sends a message to a VM's agent and waits for the answer that carries the same id.
    pub(super) async fn call_agent(
        &self,
        vm: &Vm,
        make: impl FnOnce(u64) -> DaemonMessage,
        wait: Duration,
    ) -> Result<AgentMessage> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.agent_calls.lock().unwrap().insert(id, tx);
        let sent = self.agents.lock().unwrap().get(&vm.id).is_some_and(|a| a.send(make(id)).is_ok());
        if !sent {
            self.agent_calls.lock().unwrap().remove(&id);
            // nothing was sent: another member of a circuit may take the request
            return Err(Error::NotRunning(format!("vm {:?} has no agent connected (start it)", vm.spec.name)));
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => {
                self.agent_calls.lock().unwrap().remove(&id);
                Err(Error::internal(format!("vm {:?} did not answer in time", vm.spec.name)))
            }
        }
    }

    /// Asks a VM's agent to send from the VM's own peer. A file travels into the VM
    /// through its control directory first (drivers that declare `files`).
    pub(super) async fn send_from_vm(&self, vm: &Vm, mut job: SendJob) -> Result<SendReport> {
        let mut staged = None;
        if let Some(file) = job.file.take() {
            if !self.driver(vm.spec.driver)?.capabilities().files {
                return Err(Error::invalid(format!(
                    "vm {:?} is a {} VM: files cannot be sent from it yet (send generated data with --size)",
                    vm.spec.name, vm.spec.driver
                )));
            }
            let name = Path::new(&file).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let outbox = self.vm_dir(&vm.id).join("ctl").join("outbox");
            let local = outbox.join(&name);
            let copied = tokio::task::block_in_place(|| {
                std::fs::create_dir_all(&outbox).and_then(|_| std::fs::copy(&file, &local))
            });
            copied.map_err(|e| Error::invalid(format!("file {file} cannot be read: {e}")))?;
            job.file = Some(format!("{AGENT_CONTROL_DIR}/outbox/{name}"));
            staged = Some(local);
        }
        let answer = self.call_agent(vm, |id| DaemonMessage::Send { id, job }, Duration::from_secs(300)).await;
        if let Some(f) = staged {
            let _ = std::fs::remove_file(f);
        }
        match answer? {
            AgentMessage::SendResult { report, .. } => Ok(report),
            other => Err(Error::internal(format!("vm {:?} answered {other:?}", vm.spec.name))),
        }
    }

    /// Asks a VM's p2p layer a question; the answer is its JSON.
    pub(super) async fn query_vm(&self, vm: &Vm, query: Query) -> Result<serde_json::Value> {
        match self.call_agent(vm, |id| DaemonMessage::Query { id, query }, Duration::from_secs(20)).await? {
            AgentMessage::Answer { result: Ok(v), .. } => Ok(v),
            AgentMessage::Answer { result: Err(e), .. } => Err(Error::conflict(format!("vm {:?}: {e}", vm.spec.name))),
            other => Err(Error::internal(format!("vm {:?} answered {other:?}", vm.spec.name))),
        }
    }

    /// Whether VM `v` runs with its agent connected: calls to its agent can be sent.
    pub(super) fn agent_ready(&self, v: &Vm) -> bool {
        v.state == VmState::Running && self.agents.lock().unwrap().contains_key(&v.id)
    }

    /// Tells a VM's agent what to advertise in the DHT: the VM and its containers.
    pub(super) fn advertise(&self, vm_id: &str) {
        let Some(name) = self.vms.read(vm_id, |v| v.spec.name.clone()) else { return };
        let mut keys = vec![format!("vm/{name}")];
        keys.extend(
            self.containers
                .filter(|c| c.spec.vm.as_deref() == Some(vm_id))
                .into_iter()
                .map(|c| format!("container/{}", c.spec.name)),
        );
        if let Some(tx) = self.agents.lock().unwrap().get(vm_id) {
            let _ = tx.send(DaemonMessage::Provide { keys });
        }
    }

    /// Tells every connected agent which peers it may accept messages from.
    fn share_peers(&self) {
        let port = micro_os_core::vm::AGENT_P2P_PORT;
        let mut peers: Vec<String> = self
            .vms
            .list()
            .into_iter()
            .filter_map(|v| v.peer_id.as_ref().map(|p| format!("/ip4/{}/tcp/{port}/p2p/{p}", v.address)))
            .collect();
        let mut host = None;
        if let Some(h) = self.host_peer.get() {
            peers.push(h.clone());
            // the host's peer listens on the bridge too, for its VMs' DHT records
            let on_bridge: libp2p::Multiaddr =
                format!("/ip4/{}/tcp/{port}", self.fabric().gateway()).parse().expect("a valid multiaddr");
            if let Some(p2p) = self.p2p.get() {
                p2p.listen_now(on_bridge.clone());
            }
            host = Some(format!("{on_bridge}/p2p/{h}"));
        }
        for tx in self.agents.lock().unwrap().values() {
            let _ = tx.send(DaemonMessage::Peers { peers: peers.clone(), host: host.clone() });
        }
    }

    fn on_agent(&self, id: &str, m: AgentMessage) {
        if let AgentMessage::SendResult { id: call, .. } | AgentMessage::Answer { id: call, .. } = &m {
            if let Some(tx) = self.agent_calls.lock().unwrap().remove(call) {
                let _ = tx.send(m);
            }
            return;
        }
        if let AgentMessage::Hello { peer_id, .. } = &m {
            // the host's peer dials the agent's, so VMs show in `net peers`
            if let (Some(p2p), Ok(v)) = (self.p2p.get(), self.find_vm(id)) {
                if let Ok(addr) =
                    format!("/ip4/{}/tcp/{}/p2p/{peer_id}", v.address, micro_os_core::vm::AGENT_P2P_PORT).parse()
                {
                    let p2p = p2p.clone();
                    tokio::spawn(async move { p2p.dial(addr).await });
                }
            }
        }
        let now = Utc::now();
        let mut changed = None;
        self.vms.update(id, |v| {
            v.last_report = Some(now);
            let before = v.agent;
            match &m {
                AgentMessage::Hello { peer_id, .. } => {
                    if v.peer_id.as_deref() != Some(peer_id.as_str()) {
                        v.peer_id = Some(peer_id.clone());
                        changed = Some(format!("peer id {peer_id}"));
                    }
                }
                AgentMessage::Ready => v.agent = AgentStatus::Ready,
                AgentMessage::Health { problems, .. } => {
                    v.agent = if problems.is_empty() { AgentStatus::Ready } else { AgentStatus::Degraded };
                }
                AgentMessage::Bye { .. } | AgentMessage::SendResult { .. } | AgentMessage::Answer { .. } => {}
            }
            if v.agent != before {
                changed = Some(format!("agent {:?}", v.agent).to_lowercase());
            }
        });
        if matches!(m, AgentMessage::Hello { .. }) {
            self.share_peers();
            self.advertise(id);
        }
        if let Some(detail) = changed {
            let _ = self.vms.persist(id, "agent", detail);
        } else {
            self.vms.notify(id);
        }
    }

    /// Re-adopts running VMs after a restart and records those that stopped meanwhile.
    pub async fn recover_vms(self: &Arc<Self>) {
        let running = self.vms.filter(|v| matches!(v.state, VmState::Running | VmState::Paused));
        for v in running {
            let Ok(driver) = self.driver(v.spec.driver).cloned() else { continue };
            let (d, vv) = (driver.clone(), v.clone());
            let found = tokio::task::spawn_blocking(move || d.recover(&vv)).await;
            match found {
                Ok(Recovered::Running(run)) => {
                    if let Err(e) = self.serve_control(&v.id, &self.vm_dir(&v.id).join("ctl")).await {
                        tracing::warn!("vm {}: {e}", v.spec.name);
                    }
                    tracing::info!("re-adopted vm {} ({})", v.spec.name, run.detail);
                    let _ = self.vms.persist(&v.id, "adopted", run.detail.clone());
                    self.supervise_vm(&v, &driver, &run);
                }
                Ok(Recovered::Exited(exit)) => {
                    // it ended while the daemon was down: nobody undid its network and cgroup
                    supervisor::on_exit::<Vm, _>(self, &v.id, v.pid.unwrap_or(0), exit).await;
                }
                Err(e) => tracing::warn!("recover vm {}: {e}", v.spec.name),
            }
        }
    }
}

/// Makes the token of a VM's local circuit endpoint (`ctl/circuit.token`, 0600) unless it
/// exists: the agent reads it there, the daemon gives it to the VM's circuit replicas.
fn write_circuit_token(ctl: &Path) -> Result<()> {
    let path = ctl.join(micro_os_core::vm::AGENT_CIRCUIT_TOKEN_FILE);
    if path.exists() {
        return Ok(());
    }
    let mut t = [0u8; 32];
    getrandom::fill(&mut t).map_err(|e| Error::internal(format!("no randomness for {}: {e}", path.display())))?;
    crate::home::write_secret_atomic(&path, hex::encode(t).as_bytes()).map_err(|e| Error::internal(format!("{e:#}")))
}
