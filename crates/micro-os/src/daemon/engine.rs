//! The daemon's control logic: it owns the in-memory view of every container, writes
//! every change through to the store before acknowledging it, drives runc and the
//! shims, and supervises exits, restarts and health checks.
//!
//! Invariant: a lifecycle action on a container holds that container's op lock, so two
//! actions on one container never interleave; exits observed by the watchers do not
//! take it (a `stop` waits for them while holding it).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use micro_os_api::types::{ContainerCreate, DeployRequest, EventInfo, ImageInfo, WaitResponse};
use micro_os_api::{Action, ApiError, Reply};
use micro_os_core::container::InvalidTransition;
use micro_os_core::{Container, ContainerSpec, ContainerState, HealthState, Template, Transition, Vm};
use micro_os_runtime::fabric::Fabric;
use micro_os_runtime::image::{Image, ImageStore};
use micro_os_runtime::runc::Runc;
use micro_os_runtime::shim::{self, ShimConfig, Status};
use micro_os_runtime::{bundle, cgroup};
use micro_os_store::{Event, Store};
use tokio::sync::broadcast;

use super::templates;
use crate::home::{Config, Home};

const KIND: &str = "container";

/// One process run under a shim: a container or a sandbox VM's agent.
pub(super) struct Workload {
    pub id: String,
    pub dir: PathBuf,
    pub hostname: String,
    pub image: Image,
    pub args: Vec<String>,
    /// Added to the image's environment.
    pub env: Vec<String>,
    pub resources: micro_os_core::Resources,
    pub cgroups_path: String,
    pub netns: PathBuf,
    /// The shim makes `netns` (a container's own); otherwise it exists (a VM's).
    pub own_netns: bool,
    pub binds: Vec<(PathBuf, String, bool)>,
    pub ports: Vec<micro_os_core::PortMapping>,
    pub log_name: &'static str,
}

pub struct Engine {
    pub home: Home,
    pub cfg: Config,
    pub store: Store,
    pub images: ImageStore,
    pub runc: Runc,
    pub(super) exe: PathBuf,
    pub(super) containers: RwLock<HashMap<String, Container>>,
    pub(super) ops: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(super) persist_lock: Mutex<()>,
    /// The live shim of each container that has one.
    pub(super) shims: Mutex<HashMap<String, u32>>,
    /// Ids of containers and VMs whose state changed; waiters re-check on each.
    pub(super) changes: broadcast::Sender<String>,
    pub(super) vms: RwLock<HashMap<String, Vm>>,
    pub(super) fabric: Fabric,
    pub(super) cg: cgroup::Version,
    /// Senders to the connected agents, by VM id.
    pub(super) agents: Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<micro_os_core::vm::DaemonMessage>>>,
    /// The accelerator qemu guests use, once probed ("kvm" or "tcg").
    pub(super) accel: Mutex<Option<&'static str>>,
    /// The host's libp2p peer, once started.
    pub p2p: std::sync::OnceLock<crate::p2p::Handle>,
    pub host_peer: std::sync::OnceLock<String>,
    /// The collector's state: the last round of samples, rates, alert rules.
    pub monitor: super::monitor::Monitor,
    /// Requests to agents (sends, queries) waiting for the answer with their id.
    pub(super) agent_calls: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<micro_os_core::vm::AgentMessage>>>,
}

pub(super) fn conflict(e: InvalidTransition) -> ApiError {
    ApiError::conflict(e.to_string())
}

pub(super) fn store_err(e: micro_os_store::Error) -> ApiError {
    match e {
        micro_os_store::Error::Conflict { kind, name } => {
            ApiError::conflict(format!("{kind} {name:?} already exists (pick another name or remove it first)"))
        }
        other => ApiError::internal(other.to_string()),
    }
}

pub fn image_info(i: Image) -> ImageInfo {
    ImageInfo {
        name: i.name,
        id: i.id,
        created_at: i.created_at,
        size_bytes: i.size_bytes,
        layers: i.layers,
        source: i.source,
        entrypoint: i.config.entrypoint,
        cmd: i.config.cmd,
    }
}

impl Engine {
    pub fn open(home: Home, cfg: Config) -> anyhow::Result<Arc<Engine>> {
        let store = Store::open(&home.db_path())?;
        let images = ImageStore::new(home.images())?;
        let runc = Runc::new(&cfg.runtime, home.runc_root());
        let exe = std::env::current_exe()?;
        let containers: HashMap<String, Container> =
            store.list::<Container>(KIND)?.into_iter().map(|c| (c.id.clone(), c)).collect();
        let (changes, _) = broadcast::channel(1024);
        let vms: HashMap<String, Vm> =
            store.list::<Vm>(super::vms::KIND)?.into_iter().map(|v| (v.id.clone(), v)).collect();
        let fabric = Fabric::parse(&cfg.vm_bridge, &cfg.vm_subnet)?;
        Ok(Arc::new(Engine {
            vms: RwLock::new(vms),
            fabric,
            cg: cgroup::detect(),
            agents: Mutex::new(HashMap::new()),
            accel: Mutex::new(None),
            p2p: std::sync::OnceLock::new(),
            host_peer: std::sync::OnceLock::new(),
            agent_calls: Mutex::new(HashMap::new()),
            monitor: Default::default(),
            home,
            cfg,
            store,
            images,
            runc,
            exe,
            containers: RwLock::new(containers),
            ops: Mutex::new(HashMap::new()),
            persist_lock: Mutex::new(()),
            shims: Mutex::new(HashMap::new()),
            changes,
        }))
    }

    pub fn container_count(&self) -> usize {
        self.containers.read().unwrap().len()
    }

    pub(super) fn state_dir(&self, id: &str) -> PathBuf {
        self.home.containers().join(id)
    }

    /// Finds a container by id or name.
    pub fn find(&self, key: &str) -> Result<Container, ApiError> {
        let map = self.containers.read().unwrap();
        if let Some(c) = map.get(key) {
            return Ok(c.clone());
        }
        map.values()
            .find(|c| c.spec.name == key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("container {key:?} not found (see `micro-os container list`)")))
    }

    /// Whether `peer` is the agent of one of this host's VMs.
    pub fn is_vm_peer(&self, peer: &str) -> bool {
        self.vms.read().unwrap().values().any(|v| v.peer_id.as_deref() == Some(peer))
    }

    /// Ids of containers and VMs whose state changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// The state of a container by id, without cloning it.
    pub fn state_of(&self, id: &str) -> Option<ContainerState> {
        self.containers.read().unwrap().get(id).map(|c| c.state)
    }

    pub(super) fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.ops.lock().unwrap().entry(id.to_string()).or_default().clone()
    }

    pub(super) fn update(&self, id: &str, f: impl FnOnce(&mut Container)) -> Option<Container> {
        let mut map = self.containers.write().unwrap();
        let c = map.get_mut(id)?;
        f(c);
        Some(c.clone())
    }

    /// Writes the current in-memory container (and an event) to the store. Always writes
    /// the latest state, under one lock, so concurrent persists cannot reorder.
    pub(super) fn persist(&self, id: &str, action: &str, detail: impl Into<String>) -> Result<(), ApiError> {
        let detail = detail.into();
        tokio::task::block_in_place(|| {
            let _g = self.persist_lock.lock().unwrap();
            let Some(c) = self.containers.read().unwrap().get(id).cloned() else { return Ok(()) };
            let ev = Event::new(KIND, id, &c.spec.name, action, detail);
            self.store.update(KIND, id, &c.spec.name, &c, Some(&ev)).map_err(store_err)
        })?;
        let _ = self.changes.send(id.to_string());
        Ok(())
    }

    fn templates(&self) -> Vec<Template> {
        let (all, problems) = templates::all(&self.home.templates());
        for p in problems {
            tracing::warn!("{p}");
        }
        all
    }

    fn template(&self, name: &str) -> Result<Template, ApiError> {
        let all = self.templates();
        all.iter().find(|t| t.name == name).cloned().ok_or_else(|| {
            let names: Vec<_> = all.iter().map(|t| t.name.as_str()).collect();
            ApiError::not_found(format!(
                "template {name:?} not found (available: {}; add your own as JSON in {})",
                names.join(", "),
                self.home.templates().display()
            ))
        })
    }

    /// Turns a create request into a validated spec, without side effects.
    fn resolve(&self, req: ContainerCreate) -> Result<ContainerSpec, ApiError> {
        micro_os_core::validate_name("container", &req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let vm = req.vm.as_deref().map(|v| self.find_vm(v)).transpose()?;
        if let Some(vm) = &vm {
            if vm.spec.driver != micro_os_core::Driver::Sandbox {
                return Err(ApiError::bad_request(format!(
                    "vm {:?} is a {} guest: containers can be placed on sandbox VMs only for now",
                    vm.spec.name, vm.spec.driver
                )));
            }
        }
        let template = req.template.as_deref().map(|t| self.template(t)).transpose()?;
        let image = match (&req.image, &template) {
            (Some(i), _) => i.clone(),
            (None, Some(t)) => t.image.clone(),
            (None, None) => {
                return Err(ApiError::bad_request("give an image or a template (--image I or --template T)"))
            }
        };
        if !self.images.exists(&image) {
            return Err(ApiError::not_found(format!(
                "image {image:?} not found (see `micro-os image ls`; import one with `micro-os image import FILE`)"
            )));
        }
        let base = template.unwrap_or_else(|| Template {
            name: String::new(),
            description: String::new(),
            workload: Default::default(),
            image: image.clone(),
            command: vec![],
            env: BTreeMap::new(),
            resources: Default::default(),
            ports: vec![],
            health_check: None,
            restart: Default::default(),
            source: String::new(),
        });
        let mut env = base.env.clone();
        env.extend(req.env);
        let spec = ContainerSpec {
            name: req.name,
            image,
            template: req.template,
            command: req.command.unwrap_or_else(|| base.command.clone()),
            env,
            resources: req.resources.unwrap_or_default().or(&base.effective_resources()),
            ports: req.ports.unwrap_or_else(|| base.ports.clone()),
            restart: req.restart.unwrap_or(base.restart),
            health_check: req.health_check.or(base.health_check.clone()),
            config: req.config,
            vm: vm.map(|v| v.id),
            network: req.network,
        };
        spec.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(spec)
    }

    fn check_name_free(&self, name: &str) -> Result<(), ApiError> {
        if self.containers.read().unwrap().values().any(|c| c.spec.name == name) {
            return Err(ApiError::conflict(format!(
                "container {name:?} already exists (pick another name or remove it first)"
            )));
        }
        Ok(())
    }

    fn insert(&self, spec: ContainerSpec) -> Result<Container, ApiError> {
        let c = Container::new(micro_os_core::id::new_id(), spec, Utc::now());
        let ev = Event::new(KIND, &c.id, &c.spec.name, "created", format!("image {}", c.spec.image));
        tokio::task::block_in_place(|| self.store.insert(KIND, &c.id, &c.spec.name, &c, &ev)).map_err(store_err)?;
        self.containers.write().unwrap().insert(c.id.clone(), c.clone());
        Ok(c)
    }

    pub async fn create(&self, req: ContainerCreate) -> Result<Container, ApiError> {
        let spec = self.resolve(req)?;
        self.check_name_free(&spec.name)?;
        let c = self.insert(spec)?;
        if let Some(vm) = &c.spec.vm {
            self.advertise(vm);
        }
        Ok(c)
    }

    /// All or nothing: every entry is resolved and checked before any is created.
    pub async fn deploy(&self, req: DeployRequest) -> Result<Vec<Container>, ApiError> {
        if req.containers.is_empty() {
            return Err(ApiError::bad_request("deploy file lists no containers (give {\"containers\": [...]})"));
        }
        let mut specs = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, r) in req.containers.into_iter().enumerate() {
            let name = r.name.clone();
            let spec = self
                .resolve(r)
                .map_err(|e| ApiError::new(e.kind, format!("containers[{i}] ({name:?}): {}", e.message)))?;
            if !names.insert(spec.name.clone()) {
                return Err(ApiError::bad_request(format!(
                    "containers[{i}]: name {:?} appears twice in the file",
                    spec.name
                )));
            }
            self.check_name_free(&spec.name)?;
            specs.push(spec);
        }
        let mut out = Vec::new();
        for s in specs {
            out.push(self.insert(s)?);
        }
        let vms: std::collections::BTreeSet<&String> = out.iter().filter_map(|c| c.spec.vm.as_ref()).collect();
        for vm in vms {
            self.advertise(vm);
        }
        Ok(out)
    }

    pub async fn start(self: &Arc<Self>, key: &str) -> Result<Container, ApiError> {
        let c = self.find(key)?;
        let lock = self.op_lock(&c.id);
        let _g = lock.lock().await;
        let c = self.find(&c.id)?;
        c.state.check(&c.spec.name, Transition::Start).map_err(conflict)?;
        if let Some(vm_id) = &c.spec.vm {
            let vm = self.find_vm(vm_id)?;
            if vm.state != micro_os_core::VmState::Running {
                return Err(ApiError::conflict(format!(
                    "cannot start container {:?}: its vm {:?} is {} (start the vm first)",
                    c.spec.name, vm.spec.name, vm.state
                )));
            }
        }
        self.launch(&c.id, "started").await
    }

    /// Prepares the bundle, spawns the shim and records the outcome. Caller holds the op lock.
    async fn launch(self: &Arc<Self>, id: &str, action: &str) -> Result<Container, ApiError> {
        // the previous run's shim may still be unmounting; it must be gone first
        self.shim_gone(id).await;
        let c = self.find(id)?;
        let image = self.images.get(&c.spec.image).map_err(|e| ApiError::not_found(e.to_string()))?;
        let this = self.clone();
        let cc = c.clone();
        let spawned = tokio::task::spawn_blocking(move || this.spawn_shim(&cc, &image))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        match spawned {
            Ok((pid, shim_pid)) => {
                let now = Utc::now();
                self.update(id, |c| {
                    c.state = ContainerState::Running;
                    c.pid = Some(pid);
                    c.started_at = Some(now);
                    c.finished_at = None;
                    c.exit_code = None;
                    c.oom_killed = false;
                    c.error = None;
                    c.stop_requested = false;
                    c.health = c.spec.health_check.as_ref().map(|_| HealthState::default());
                });
                self.persist(id, action, format!("pid {pid}"))?;
                self.supervise(id, shim_pid, pid);
                self.find(id)
            }
            Err(msg) => {
                self.update(id, |c| c.error = Some(msg.clone()));
                self.persist(id, "start-failed", msg.clone())?;
                Err(ApiError::internal(format!("start container {:?}: {msg}", c.spec.name)))
            }
        }
    }

    fn spawn_shim(&self, c: &Container, image: &Image) -> Result<(u32, u32), String> {
        let dir = self.state_dir(&c.id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut args = image.config.entrypoint.clone();
        if c.spec.command.is_empty() {
            args.extend(image.config.cmd.iter().cloned());
        } else {
            args.extend(c.spec.command.iter().cloned());
        }
        if args.is_empty() {
            return Err(format!("image {:?} has no command; give one after --", image.name));
        }
        let mut env = vec![format!("HOSTNAME={}", c.spec.name), format!("MICRO_OS_CONTAINER={}", c.spec.name)];
        for (k, v) in &c.spec.config {
            env.push(format!("MICRO_OS_CONFIG_{}={v}", k.to_ascii_uppercase().replace('-', "_")));
        }
        for (k, v) in &c.spec.env {
            env.push(format!("{k}={v}"));
        }
        let config_file = dir.join("workload-config.json");
        std::fs::write(&config_file, serde_json::to_vec_pretty(&c.spec.config).unwrap_or_default())
            .map_err(|e| format!("write {}: {e}", config_file.display()))?;
        // on a VM: the VM's network namespace and a cgroup below the VM's
        let (netns, own_netns, cgroups_path) = match &c.spec.vm {
            Some(vm_id) => (self.vm_netns(vm_id), false, cgroup::placed_path(Some(vm_id), &c.id)),
            None => (dir.join("netns"), true, cgroup::placed_path(None, &c.id)),
        };
        self.run_workload(Workload {
            id: c.id.clone(),
            dir,
            hostname: c.spec.name.clone(),
            image: image.clone(),
            args,
            env,
            resources: c.spec.resources.clone(),
            cgroups_path,
            netns,
            own_netns,
            binds: vec![(config_file, "/run/micro-os/config.json".into(), true)],
            ports: c.spec.ports.clone(),
            log_name: "container.log",
        })
    }

    /// Writes a workload's bundle and shim config and starts its shim. Returns
    /// (workload pid, shim pid).
    pub(super) fn run_workload(&self, w: Workload) -> Result<(u32, u32), String> {
        let bundle_dir = w.dir.join("bundle");
        std::fs::create_dir_all(&bundle_dir).map_err(|e| format!("create {}: {e}", bundle_dir.display()))?;
        let mut env = w.image.config.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        env.extend(w.env);
        let input = bundle::BundleInput {
            hostname: &w.hostname,
            args: w.args,
            env,
            cwd: if w.image.config.workdir.is_empty() { "/".into() } else { w.image.config.workdir.clone() },
            resources: &w.resources,
            rootfs: bundle_dir.join("rootfs"),
            cgroups_path: w.cgroups_path.clone(),
            netns: Some(w.netns.clone()),
            binds: w.binds,
        };
        let spec = bundle::spec(&input).map_err(|e| e.to_string())?;
        spec.save(bundle_dir.join("config.json")).map_err(|e| format!("write bundle: {e}"))?;
        let shim_cfg = ShimConfig {
            id: w.id,
            runc_binary: self.runc.binary.clone(),
            runc_root: self.runc.root.clone(),
            bundle: bundle_dir,
            lower: self.images.rootfs(&w.image.name),
            log_path: w.dir.join(w.log_name),
            cgroups_path: w.cgroups_path,
            ports: w.ports,
            netns: w.own_netns.then_some(w.netns),
        };
        std::fs::write(w.dir.join("shim.json"), serde_json::to_vec_pretty(&shim_cfg).expect("serialises"))
            .map_err(|e| format!("write shim.json: {e}"))?;
        let _ = std::fs::remove_file(shim::status_path(&w.dir));
        let (shim_pid, pid) = shim::spawn(&self.exe, &w.dir).map_err(|e| e.to_string())?;
        Ok((pid, shim_pid))
    }

    /// Resolves when the workload has exited, with what its shim recorded.
    pub(super) async fn exit_of(dir: &std::path::Path, pid: u32, shim_pid: u32) -> Option<Status> {
        tokio::select! {
            _ = super::pidwait::exited(pid) => {}
            _ = super::pidwait::exited(shim_pid) => {}
        }
        // the shim writes the status right after it reaps the workload
        let mut status = shim::read_status(dir);
        for i in 0..2000 {
            if matches!(status, Some(Status::Exited { .. } | Status::Failed { .. })) {
                break;
            }
            if shim::live_shim_pid(dir).is_none() {
                return shim::read_status(dir);
            }
            tokio::time::sleep(Duration::from_millis(if i < 100 { 1 } else { 10 })).await;
            status = shim::read_status(dir);
        }
        status
    }

    /// Watches the container until it exits and records the exit as soon as the shim
    /// has written it; then waits for the shim's cleanup to end. Runs health checks meanwhile.
    pub(super) fn supervise(self: &Arc<Self>, id: &str, shim_pid: u32, pid: u32) {
        self.shims.lock().unwrap().insert(id.to_string(), shim_pid);
        let this = self.clone();
        let id2 = id.to_string();
        tokio::spawn(async move {
            let status = Self::exit_of(&this.state_dir(&id2), pid, shim_pid).await;
            this.on_exit(&id2, pid, status).await;
            super::pidwait::exited(shim_pid).await;
            shim::reap(shim_pid);
            let mut shims = this.shims.lock().unwrap();
            if shims.get(&id2) == Some(&shim_pid) {
                shims.remove(&id2);
            }
        });
        if let Some(h) = self.find(id).ok().and_then(|c| c.spec.health_check) {
            tokio::spawn(super::health::run(self.clone(), id.to_string(), pid, h));
        }
    }

    /// Resolves once the container's last shim has finished its cleanup.
    pub(super) async fn shim_gone(&self, id: &str) {
        let pid = self.shims.lock().unwrap().get(id).copied();
        if let Some(pid) = pid {
            super::pidwait::exited(pid).await;
        }
    }

    async fn on_exit(self: &Arc<Self>, id: &str, pid: u32, status: Option<Status>) {
        let (code, oom, finished, error) = match status {
            Some(Status::Exited { exit_code, oom_killed, finished_at, .. }) => {
                (exit_code, oom_killed, finished_at, None)
            }
            Some(Status::Failed { error, at }) => (125, false, at, Some(error)),
            _ => (255, false, Utc::now(), Some("the container's monitor (shim) died; exit status unknown".to_string())),
        };
        let Some(c) = self.update(id, |c| {
            if c.pid != Some(pid) {
                return;
            }
            c.state = ContainerState::Exited;
            c.pid = None;
            c.exit_code = Some(code);
            c.oom_killed = oom;
            c.finished_at = Some(finished);
            if error.is_some() {
                c.error = error.clone();
            }
        }) else {
            return;
        };
        if c.state != ContainerState::Exited || c.exit_code != Some(code) || c.pid.is_some() {
            return;
        }
        let detail = format!("exit code {code}{}", if oom { ", OOM-killed" } else { "" });
        if let Err(e) = self.persist(id, if oom { "oom-killed" } else { "exited" }, detail) {
            tracing::error!("record exit of {id}: {e}");
        }
        if !c.stop_requested && c.spec.restart.should_restart(code, c.restart_count) {
            let delay = micro_os_core::restart::backoff(c.restart_count, Utc::now().timestamp_subsec_nanos() as u64);
            let this = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let Some(lock) = this.find(&id).ok().map(|c| this.op_lock(&c.id)) else { return };
                let _g = lock.lock().await;
                let Ok(c) = this.find(&id) else { return };
                if c.state != ContainerState::Exited || c.stop_requested {
                    return;
                }
                this.update(&id, |c| c.restart_count += 1);
                if let Err(e) = this.launch(&id, "restarted").await {
                    tracing::warn!("restart {}: {e}", c.spec.name);
                }
            });
        }
    }

    pub(super) async fn wait_until(
        &self,
        id: &str,
        done: impl Fn(&Container) -> bool,
        timeout: Duration,
    ) -> Option<Container> {
        let mut rx = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.find(id) {
                Ok(c) if done(&c) => return Some(c),
                Ok(_) => {}
                Err(_) => return None,
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return None,
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn stop(&self, key: &str, timeout: Option<f64>) -> Result<Container, ApiError> {
        let c = self.find(key)?;
        let lock = self.op_lock(&c.id);
        let _g = lock.lock().await;
        let c = self.find(&c.id)?;
        c.state.check(&c.spec.name, Transition::Stop).map_err(conflict)?;
        self.stop_locked(&c, timeout.unwrap_or(self.cfg.stop_timeout_s)).await?;
        self.find(&c.id)
    }

    pub(super) async fn stop_locked(&self, c: &Container, timeout: f64) -> Result<(), ApiError> {
        if !(timeout.is_finite() && timeout >= 0.0) {
            return Err(ApiError::bad_request(format!("timeout {timeout} is not a number of seconds (try 10)")));
        }
        let id = c.id.clone();
        self.update(&id, |c| c.stop_requested = true);
        self.persist(&id, "stopping", format!("timeout {timeout}s"))?;
        let runc = self.runc.clone();
        let paused = c.state == ContainerState::Paused;
        let id2 = id.clone();
        let first = tokio::task::spawn_blocking(move || {
            if paused {
                runc.resume(&id2)?;
            }
            runc.kill(&id2, "TERM")
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
        if let Err(e) = first {
            tracing::debug!("stop {}: {e}", c.spec.name);
        }
        let exited = |c: &Container| c.state == ContainerState::Exited;
        if self.wait_until(&id, exited, Duration::from_secs_f64(timeout)).await.is_some() {
            return Ok(());
        }
        let runc = self.runc.clone();
        let id2 = id.clone();
        let _ = tokio::task::spawn_blocking(move || runc.kill(&id2, "KILL")).await;
        if self.wait_until(&id, exited, Duration::from_secs(15)).await.is_none() {
            return Err(ApiError::internal(format!("container {:?} did not exit after SIGKILL", c.spec.name)));
        }
        Ok(())
    }

    pub async fn pause(&self, key: &str, pause: bool) -> Result<Container, ApiError> {
        let c = self.find(key)?;
        let lock = self.op_lock(&c.id);
        let _g = lock.lock().await;
        let c = self.find(&c.id)?;
        let action = if pause { Transition::Pause } else { Transition::Resume };
        c.state.check(&c.spec.name, action).map_err(conflict)?;
        let runc = self.runc.clone();
        let id = c.id.clone();
        tokio::task::spawn_blocking(move || if pause { runc.pause(&id) } else { runc.resume(&id) })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.update(&c.id, |c| c.state = if pause { ContainerState::Paused } else { ContainerState::Running });
        self.persist(&c.id, if pause { "paused" } else { "resumed" }, "")?;
        self.find(&c.id)
    }

    pub async fn remove(self: &Arc<Self>, key: &str, force: bool) -> Result<(), ApiError> {
        let c = self.find(key)?;
        let lock = self.op_lock(&c.id);
        let _g = lock.lock().await;
        let c = self.find(&c.id)?;
        if let Err(e) = c.state.check(&c.spec.name, Transition::Remove) {
            if !force {
                return Err(conflict(e));
            }
            self.stop_locked(&c, 0.0).await?;
        }
        let ev = Event::new(KIND, &c.id, &c.spec.name, "removed", "");
        tokio::task::block_in_place(|| self.store.delete(KIND, &c.id, &ev)).map_err(store_err)?;
        self.containers.write().unwrap().remove(&c.id);
        self.ops.lock().unwrap().remove(&c.id);
        let _ = self.changes.send(c.id.clone());
        if let Some(vm) = &c.spec.vm {
            self.advertise(vm);
        }
        let dir = self.state_dir(&c.id);
        let this = self.clone();
        let id = c.id.clone();
        tokio::spawn(async move {
            this.shim_gone(&id).await;
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        });
        Ok(())
    }

    pub async fn configure(&self, key: &str, set: BTreeMap<String, String>) -> Result<Container, ApiError> {
        let c = self.find(key)?;
        for k in set.keys() {
            if k.is_empty() || !k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.') {
                return Err(ApiError::bad_request(format!(
                    "config key {k:?} is not valid (use letters, digits, '-', '_' or '.', e.g. --sync-mode fast)"
                )));
            }
        }
        let keys: Vec<_> = set.keys().cloned().collect();
        self.update(&c.id, |c| c.spec.config.extend(set));
        self.persist(&c.id, "configured", keys.join(","))?;
        self.find(&c.id)
    }

    pub async fn wait(&self, key: &str) -> Result<WaitResponse, ApiError> {
        let c = self.find(key)?;
        let done = |c: &Container| !matches!(c.state, ContainerState::Running | ContainerState::Paused);
        let c = self
            .wait_until(&c.id, done, Duration::from_secs(365 * 24 * 3600))
            .await
            .ok_or_else(|| ApiError::not_found(format!("container {key:?} was removed while waiting")))?;
        Ok(WaitResponse { exit_code: c.exit_code.unwrap_or(0), oom_killed: c.oom_killed, error: c.error })
    }

    /// Re-adopts containers that kept running while the daemon was down and records
    /// the exits of those that ended meanwhile.
    pub async fn recover(self: &Arc<Self>) {
        let running: Vec<Container> = self
            .containers
            .read()
            .unwrap()
            .values()
            .filter(|c| matches!(c.state, ContainerState::Running | ContainerState::Paused))
            .cloned()
            .collect();
        for c in running {
            let dir = self.state_dir(&c.id);
            let pid = c.pid.unwrap_or(0);
            match shim::live_shim_pid(&dir) {
                Some(shim_pid) => {
                    tracing::info!("re-adopted container {} (pid {pid})", c.spec.name);
                    let _ = self.persist(&c.id, "adopted", format!("pid {pid}"));
                    self.supervise(&c.id, shim_pid, pid);
                }
                None => {
                    let status = shim::read_status(&dir);
                    tracing::info!("container {} ended while the daemon was down: {status:?}", c.spec.name);
                    self.on_exit(&c.id, pid, status).await;
                }
            }
        }
    }

    pub async fn dispatch(self: &Arc<Self>, action: Action) -> Result<Reply, ApiError> {
        let one = |c: Container| Reply::Container(Box::new(c));
        match action {
            Action::CreateContainer(req) => self.create(*req).await.map(one),
            Action::Deploy(req) => self.deploy(req).await.map(Reply::Containers),
            Action::ListContainers => {
                let mut v: Vec<Container> = self.containers.read().unwrap().values().cloned().collect();
                v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.spec.name.cmp(&b.spec.name)));
                Ok(Reply::Containers(v))
            }
            Action::GetContainer(k) => self.find(&k).map(one),
            Action::RemoveContainer { id, force } => self.remove(&id, force).await.map(|_| Reply::Done),
            Action::StartContainer(k) => self.start(&k).await.map(one),
            Action::StopContainer { id, timeout } => self.stop(&id, timeout).await.map(one),
            Action::PauseContainer(k) => self.pause(&k, true).await.map(one),
            Action::ResumeContainer(k) => self.pause(&k, false).await.map(one),
            Action::ConfigureContainer { id, set } => self.configure(&id, set).await.map(one),
            Action::WaitContainer(k) => self.wait(&k).await.map(Reply::Exit),
            Action::ContainerEvents(k) => {
                let c = self.find(&k)?;
                let events = tokio::task::block_in_place(|| self.store.events(Some(&c.id), 100)).map_err(store_err)?;
                Ok(Reply::Events(
                    events
                        .into_iter()
                        .map(|e| EventInfo { seq: e.seq, at: e.at, action: e.action, detail: e.detail })
                        .collect(),
                ))
            }
            Action::CreateVms(reqs) => self.create_vms(reqs).await.map(Reply::Vms),
            Action::ListVms => Ok(Reply::Vms(self.list_vms())),
            Action::GetVm(k) => self.find_vm(&k).map(|v| Reply::Vm(Box::new(v))),
            Action::RemoveVm { id, force } => self.remove_vm(&id, force).await.map(|_| Reply::Done),
            Action::StartVm(k) => self.start_vm(&k).await.map(|v| Reply::Vm(Box::new(v))),
            Action::StopVm { id, force, timeout } => {
                self.stop_vm(&id, force, timeout).await.map(|v| Reply::Vm(Box::new(v)))
            }
            Action::PauseVm(k) => self.pause_vm(&k, true).await.map(|v| Reply::Vm(Box::new(v))),
            Action::ResumeVm(k) => self.pause_vm(&k, false).await.map(|v| Reply::Vm(Box::new(v))),
            Action::NetStatus { vm: None } => {
                let st = self.host_p2p()?.status().await.ok_or_else(|| ApiError::internal("the p2p layer is down"))?;
                Ok(Reply::Net(Box::new(st)))
            }
            Action::NetStatus { vm: Some(name) } => {
                let vm = self.find_vm(&name)?;
                let v = self.query_vm(&vm, micro_os_core::vm::Query::Status).await?;
                let st = serde_json::from_value(v).map_err(|e| ApiError::internal(format!("vm status: {e}")))?;
                Ok(Reply::Net(Box::new(st)))
            }
            Action::NetFind { key, vm } => {
                if key.trim().is_empty() {
                    return Err(ApiError::bad_request("key is empty (try container/<name> or vm/<name>)"));
                }
                let mut found: Vec<micro_os_api::types::Provider> = match vm {
                    None => self.host_p2p()?.find(key).await.map_err(|e| ApiError::internal(e.to_string()))?,
                    Some(name) => {
                        let vm = self.find_vm(&name)?;
                        let v = self.query_vm(&vm, micro_os_core::vm::Query::Find { key }).await?;
                        serde_json::from_value(v).map_err(|e| ApiError::internal(format!("vm answer: {e}")))?
                    }
                };
                let vms = self.vms.read().unwrap();
                for p in &mut found {
                    p.vm = vms.values().find(|v| v.peer_id.as_deref() == Some(&p.peer_id)).map(|v| v.spec.name.clone());
                }
                Ok(Reply::Providers(found))
            }
            Action::NetSend(req) => self.net_send(req).await.map(|r| Reply::Sent(Box::new(r))),
            Action::Resources(q) => self.resources(&q).map(Reply::Samples),
            Action::History(q) => self.history(&q).map(Reply::Samples),
            Action::Export(q) => {
                let rows = self.history(&q)?;
                match q.format.as_deref().unwrap_or("csv") {
                    "json" => Ok(Reply::Samples(rows)),
                    _ => Ok(Reply::Text(micro_os_monitor::export::csv(&rows))),
                }
            }
            Action::Health(q) => {
                let components = self.health().await;
                self.health_report(&q, components).map(|r| Reply::Health(Box::new(r)))
            }
            Action::Performance(q) => self.performance(&q).map(|r| Reply::Performance(Box::new(r))),
            Action::Metrics => Ok(Reply::Text(self.metrics().await)),
            Action::ListImages => self
                .images
                .list()
                .map(|v| Reply::Images(v.into_iter().map(image_info).collect()))
                .map_err(|e| ApiError::internal(e.to_string())),
            Action::RemoveImage(name) => {
                self.images.get(&name).map_err(|e| ApiError::not_found(e.to_string()))?;
                let users: Vec<String> = self
                    .containers
                    .read()
                    .unwrap()
                    .values()
                    .filter(|c| c.spec.image == name)
                    .map(|c| c.spec.name.clone())
                    .collect();
                if !users.is_empty() {
                    return Err(ApiError::conflict(format!(
                        "image {name:?} is used by containers {} (remove them first)",
                        users.join(", ")
                    )));
                }
                self.images.remove(&name).map_err(|e| ApiError::internal(e.to_string()))?;
                Ok(Reply::Done)
            }
            Action::ListTemplates => Ok(Reply::Templates(self.templates())),
            Action::GetTemplate(name) => self.template(&name).map(|t| Reply::Template(Box::new(t))),
        }
    }

    fn host_p2p(&self) -> Result<&crate::p2p::Handle, ApiError> {
        self.p2p.get().ok_or_else(|| ApiError::internal("the p2p layer is not running"))
    }

    /// `net send`: messages or a DATA stream, from the host or from one of its VMs.
    async fn net_send(&self, req: micro_os_api::types::NetSend) -> Result<micro_os_core::net::SendReport, ApiError> {
        let kind: micro_os_net::MessageType =
            serde_json::from_value(serde_json::Value::String(req.kind.to_uppercase())).map_err(|_| {
                ApiError::bad_request(format!(
                    "message type {:?} is unknown (use SYNC, DISC, DATA, CTRL or PING)",
                    req.kind
                ))
            })?;
        let stream = req.stream || req.file.is_some();
        if stream && kind != micro_os_net::MessageType::Data {
            return Err(ApiError::bad_request(format!("only DATA travels as a stream, not {kind}")));
        }
        if let Some(f) = &req.file {
            if !Path::new(f).is_absolute() {
                return Err(ApiError::bad_request(format!("file {f:?} is not an absolute path")));
            }
            std::fs::File::open(f).map_err(|e| ApiError::bad_request(format!("file {f} cannot be read: {e}")))?;
        }
        if !stream && req.size.is_some_and(|s| s > 512 * 1024) {
            return Err(ApiError::bad_request(format!(
                "size {} is over 512 KiB (send larger DATA as a stream: --stream)",
                req.size.unwrap_or(0)
            )));
        }
        if req.to == "*" {
            if req.from.is_some() || stream || req.count.is_some_and(|c| c > 1) {
                return Err(ApiError::bad_request(
                    "broadcasts are one message from the host (leave out --from, --count, --file)",
                ));
            }
            let started = std::time::Instant::now();
            self.host_p2p()?
                .broadcast(kind, req.state)
                .await
                .map_err(|e| ApiError::conflict(format!("broadcast: {e}")))?;
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            return Ok(micro_os_core::net::SendReport { accepted: true, sent: 1, elapsed_ms, ..Default::default() });
        }
        let to = match req.to.parse::<libp2p::PeerId>() {
            Ok(p) => p,
            Err(_) => {
                let vm = self.find_vm(&req.to)?;
                let peer = vm.peer_id.ok_or_else(|| {
                    ApiError::conflict(format!("vm {:?} has no peer id yet (start it)", vm.spec.name))
                })?;
                peer.parse().map_err(|_| ApiError::internal(format!("vm peer id {peer:?} is malformed")))?
            }
        };
        let job = micro_os_core::net::SendJob {
            to: to.to_string(),
            kind: kind.to_string(),
            state: req.state,
            count: req.count.unwrap_or(1).clamp(1, 100_000),
            size: req.size,
            file: req.file,
            stream,
        };
        match &req.from {
            Some(from) => {
                let vm = self.find_vm(from)?;
                self.send_from_vm(&vm, job).await
            }
            None => Ok(self.host_p2p()?.run(job).await),
        }
    }

    /// Records a health probe result; persists only when the status changes.
    pub fn record_health(&self, id: &str, pid: u32, ok: bool, retries: u32, ms: f64, output: String) -> bool {
        let mut changed = None;
        let alive = self
            .update(id, |c| {
                if c.pid != Some(pid) || c.state != ContainerState::Running {
                    return;
                }
                let h = c.health.get_or_insert_with(HealthState::default);
                let before = h.status;
                h.record(ok, retries, Utc::now(), ms, output);
                if h.status != before {
                    changed = Some(h.status);
                }
            })
            .is_some_and(|c| c.pid == Some(pid) && c.state != ContainerState::Exited);
        if let Some(s) = changed {
            let _ = self.persist(id, "health", format!("{s:?}").to_lowercase());
        }
        alive
    }
}
