//! VMs in the daemon. A sandbox VM is a workload like a container — the image's
//! `micro-os agent` run by a shim — placed in a network namespace plugged into the VM
//! bridge and below a parent cgroup that carries the VM's limits, so everything later
//! placed on the VM shares its address and is bound by its `--memory` and `--cpu`.
//!
//! The agent reports over a unix socket in the VM's `ctl/` directory (bound into the VM
//! at `/run/micro-os/ctl`): hello with its peer id, ready, health every second. The
//! daemon shows `ready`, `degraded` or `unreachable` from what it last heard.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use micro_os_api::types::VmCreate;
use micro_os_api::ApiError;
use micro_os_core::net::{SendJob, SendReport};
use micro_os_core::vm::{AgentMessage, DaemonMessage, Query, AGENT_CONTROL_DIR, AGENT_CONTROL_SOCKET};
use micro_os_core::{AgentStatus, ContainerState, Driver, RestartPolicy, Transition, Vm, VmSpec, VmState};
use micro_os_runtime::cgroup;
use micro_os_runtime::fabric::Fabric;
use micro_os_runtime::shim::{self, Status};
use micro_os_store::Event;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::engine::{conflict, store_err, Engine, Workload};

pub const KIND: &str = "vm";
const BASE_IMAGE: &str = "blockchain-base";
/// The kernel, the unpacked initramfs and the agent need this much.
const QEMU_MIN_MIB: u64 = 256;
/// Silence after which a running VM's agent counts as unreachable.
const AGENT_DEADLINE: Duration = Duration::from_secs(4);

fn netns_name(id: &str) -> String {
    format!("mos-{}", &id[..12])
}

pub(super) fn host_if(id: &str) -> String {
    format!("vh{}", &id[..12])
}

impl Engine {
    /// Undoes what a VM's start made on the host: its veth or tap, its pinned network
    /// namespace and its cgroups. Blocking.
    fn release_host_side(&self, id: &str) {
        self.fabric.detach(&netns_name(id), &host_if(id));
        cgroup::remove_parent(self.cg, &format!("{}/agent", cgroup::container_path(id)));
        cgroup::remove_parent(self.cg, &cgroup::container_path(id));
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
        self.home.root.join("vms").join(id)
    }

    pub(super) fn vm_netns(&self, vm_id: &str) -> PathBuf {
        Fabric::netns_path(&netns_name(vm_id))
    }

    pub fn find_vm(&self, key: &str) -> Result<Vm, ApiError> {
        let map = self.vms.read().unwrap();
        if let Some(v) = map.get(key) {
            return Ok(v.clone());
        }
        map.values()
            .find(|v| v.spec.name == key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("vm {key:?} not found (see `micro-os vm list`)")))
    }

    pub fn list_vms(&self) -> Vec<Vm> {
        let mut v: Vec<Vm> = self.vms.read().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.spec.name.cmp(&b.spec.name)));
        v
    }

    fn update_vm(&self, id: &str, f: impl FnOnce(&mut Vm)) -> Option<Vm> {
        let mut map = self.vms.write().unwrap();
        let v = map.get_mut(id)?;
        f(v);
        Some(v.clone())
    }

    fn persist_vm(&self, id: &str, action: &str, detail: impl Into<String>) -> Result<(), ApiError> {
        let detail = detail.into();
        tokio::task::block_in_place(|| {
            let _g = self.persist_lock.lock().unwrap();
            let Some(v) = self.vms.read().unwrap().get(id).cloned() else { return Ok(()) };
            let ev = Event::new(KIND, id, &v.spec.name, action, detail);
            self.store.update(KIND, id, &v.spec.name, &v, Some(&ev)).map_err(store_err)
        })?;
        let _ = self.changes.send(id.to_string());
        Ok(())
    }

    /// The built-in VM image, built on first use from busybox and this very binary.
    fn ensure_base_image(&self) -> Result<(), ApiError> {
        if self.images.exists(BASE_IMAGE) {
            return Ok(());
        }
        tokio::task::block_in_place(|| {
            self.images.build_agent_base(BASE_IMAGE, &self.cfg.busybox, &self.exe, &mut |_| {})
        })
        .map(drop)
        .or_else(|e| match e {
            micro_os_runtime::Error::ImageExists(_) => Ok(()),
            e => Err(ApiError::internal(format!("build image {BASE_IMAGE}: {e}"))),
        })
    }

    fn resolve_vm(&self, req: VmCreate) -> Result<VmSpec, ApiError> {
        let driver = match &req.driver {
            Some(d) => Driver::parse(d).map_err(|e| ApiError::bad_request(e.to_string()))?,
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
        spec.validate(cgroup::host_memory_mib(), cpus).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if driver == Driver::Qemu {
            if spec.memory_mib < QEMU_MIN_MIB {
                return Err(ApiError::bad_request(format!(
                    "memory {} MiB is too small for a qemu guest (give at least {QEMU_MIN_MIB}: the kernel and the initramfs live in it)",
                    spec.memory_mib
                )));
            }
            let has_qemu = std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").exists()));
            if !has_qemu {
                return Err(ApiError::bad_request(
                    "driver qemu needs qemu-system-x86_64 (apt-get install qemu-system-x86)",
                ));
            }
            micro_os_runtime::boot::host_kernel().map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        if image == BASE_IMAGE {
            self.ensure_base_image()?;
        }
        if !self.images.exists(&image) {
            return Err(ApiError::not_found(format!("image {image:?} not found (see `micro-os image ls`)")));
        }
        Ok(spec)
    }

    /// All or nothing: every entry is checked before any is created.
    pub async fn create_vms(&self, reqs: Vec<VmCreate>) -> Result<Vec<Vm>, ApiError> {
        if reqs.is_empty() {
            return Err(ApiError::bad_request("the definitions list no VM (give [{\"name\": ..., \"memory\": ...}])"));
        }
        let many = reqs.len() > 1;
        let mut specs = Vec::new();
        let mut names = HashSet::new();
        for (i, r) in reqs.into_iter().enumerate() {
            let name = r.name.clone();
            let at = |e: ApiError| {
                if many {
                    ApiError::new(e.kind, format!("vms[{i}] ({name:?}): {}", e.message))
                } else {
                    e
                }
            };
            let spec = self.resolve_vm(r).map_err(at)?;
            if !names.insert(spec.name.clone()) {
                return Err(ApiError::bad_request(format!("vms[{i}]: name {:?} appears twice", spec.name)));
            }
            if self.vms.read().unwrap().values().any(|v| v.spec.name == spec.name) {
                return Err(ApiError::conflict(format!(
                    "vm {:?} already exists (pick another name or remove it first)",
                    spec.name
                )));
            }
            specs.push(spec);
        }
        let mut out = Vec::new();
        for spec in specs {
            let used: Vec<_> = self.vms.read().unwrap().values().map(|v| v.address).collect();
            let address = self
                .fabric
                .allocate(&used)
                .ok_or_else(|| ApiError::conflict(format!("the vm subnet {} is full", self.cfg.vm_subnet)))?;
            let vm = Vm {
                id: micro_os_core::id::new_id(),
                spec,
                state: VmState::Created,
                address,
                created_at: Utc::now(),
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
            };
            let ev = Event::new(KIND, &vm.id, &vm.spec.name, "created", format!("address {address}"));
            tokio::task::block_in_place(|| self.store.insert(KIND, &vm.id, &vm.spec.name, &vm, &ev))
                .map_err(store_err)?;
            self.vms.write().unwrap().insert(vm.id.clone(), vm.clone());
            out.push(vm);
        }
        Ok(out)
    }

    pub async fn start_vm(self: &Arc<Self>, key: &str) -> Result<Vm, ApiError> {
        let v = self.find_vm(key)?;
        let lock = self.op_lock(&v.id);
        let _g = lock.lock().await;
        let v = self.find_vm(&v.id)?;
        v.state.check(&v.spec.name, Transition::Start).map_err(conflict)?;
        self.launch_vm(&v.id, "started").await?;
        // the start is done when the agent says it is ready
        let ready = |v: &Vm| v.agent != AgentStatus::Starting || v.state != VmState::Running;
        // a TCG guest boots in seconds, more on a loaded host
        let patience = if v.spec.driver == Driver::Qemu { 90 } else { 15 };
        self.wait_vm(&v.id, ready, Duration::from_secs(patience)).await;
        self.find_vm(&v.id)
    }

    async fn wait_vm(&self, id: &str, done: impl Fn(&Vm) -> bool, timeout: Duration) -> Option<Vm> {
        let mut rx = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.find_vm(id) {
                Ok(v) if done(&v) => return Some(v),
                Ok(_) => {}
                Err(_) => return None,
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) | Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Network, cgroup, control socket and the agent under a shim. Caller holds the op lock.
    async fn launch_vm(self: &Arc<Self>, id: &str, action: &str) -> Result<(), ApiError> {
        self.shim_gone(id).await;
        let v = self.find_vm(id)?;
        if v.spec.driver == Driver::Qemu {
            return self.launch_qemu(id, action).await;
        }
        let image = self.images.get(&v.spec.image).map_err(|e| ApiError::not_found(e.to_string()))?;
        self.open_control(id).await?;
        let this = self.clone();
        let vv = v.clone();
        let spawned = tokio::task::spawn_blocking(move || -> Result<(u32, u32), String> {
            this.fabric.ensure_bridge().map_err(|e| e.to_string())?;
            let parent = cgroup::container_path(&vv.id);
            cgroup::create_parent(
                this.cg,
                &parent,
                cgroup::Limits { memory_bytes: Some(vv.spec.memory_mib << 20), cpus: Some(vv.spec.cpus), pids: None },
            )
            .map_err(|e| format!("cgroup: {e}"))?;
            let netns =
                this.fabric.attach(&netns_name(&vv.id), &host_if(&vv.id), vv.address).map_err(|e| e.to_string())?;
            let mut args = image.config.entrypoint.clone();
            args.extend(image.config.cmd.iter().cloned());
            let result = this.run_workload(Workload {
                id: vv.id.clone(),
                dir: this.vm_dir(&vv.id),
                hostname: vv.spec.name.clone(),
                image: image.clone(),
                args,
                env: vec![format!("HOSTNAME={}", vv.spec.name), format!("MICRO_OS_VM={}", vv.spec.name)],
                resources: Default::default(),
                cgroups_path: format!("{parent}/agent"),
                netns,
                own_netns: false,
                binds: vec![(this.vm_dir(&vv.id).join("ctl"), AGENT_CONTROL_DIR.into(), false)],
                ports: vec![],
                log_name: "console.log",
            });
            if result.is_err() {
                this.release_host_side(&vv.id);
            }
            result
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
        match spawned {
            Ok((pid, shim_pid)) => {
                let now = Utc::now();
                self.update_vm(id, |v| v.mark_running(pid, now));
                self.persist_vm(id, action, format!("pid {pid}"))?;
                self.supervise_vm(id, shim_pid, pid);
                Ok(())
            }
            Err(msg) => {
                self.update_vm(id, |v| v.error = Some(msg.clone()));
                self.persist_vm(id, "start-failed", msg.clone())?;
                Err(ApiError::internal(format!("start vm {:?}: {msg}", v.spec.name)))
            }
        }
    }

    /// The accelerator for qemu guests: KVM when a probe guest really boots with it,
    /// TCG otherwise (said once, in one warning line).
    fn accel(&self, boot: &micro_os_runtime::boot::BootFiles, dir: &std::path::Path) -> &'static str {
        let mut cached = self.accel.lock().unwrap();
        if let Some(a) = *cached {
            return a;
        }
        let a = if super::qemu::kvm_boots(boot, dir) {
            "kvm"
        } else {
            tracing::warn!(
                "KVM cannot boot a guest on this host (nested or absent): qemu VMs use TCG, which is slower"
            );
            "tcg"
        };
        *cached = Some(a);
        a
    }

    async fn launch_qemu(self: &Arc<Self>, id: &str, action: &str) -> Result<(), ApiError> {
        let v = self.find_vm(id)?;
        self.open_control(id).await?;
        let this = self.clone();
        let vv = v.clone();
        let spawned = tokio::task::spawn_blocking(move || -> Result<(u32, &'static str), String> {
            let rootfs = this.images.rootfs(&vv.spec.image);
            let boot_dir = rootfs.parent().expect("image dir").join("boot");
            let boot = micro_os_runtime::boot::build(&rootfs, &boot_dir).map_err(|e| format!("boot files: {e}"))?;
            let accel = this.accel(&boot, &boot_dir);
            // the image's initramfs plus the VM's key: the same peer id at every boot
            let boot =
                micro_os_runtime::boot::for_vm(&boot, &this.vm_dir(&vv.id)).map_err(|e| format!("boot files: {e}"))?;
            this.fabric.ensure_bridge().map_err(|e| e.to_string())?;
            this.fabric.attach_tap(&host_if(&vv.id)).map_err(|e| e.to_string())?;
            let args = super::qemu::args(&vv, &boot, &this.vm_dir(&vv.id), accel, &host_if(&vv.id), this.fabric.prefix);
            let _ = std::fs::remove_file(this.vm_dir(&vv.id).join("console.log"));
            let log = std::fs::File::create(this.vm_dir(&vv.id).join("qemu.log")).map_err(|e| e.to_string())?;
            let child = std::process::Command::new("qemu-system-x86_64")
                .args(&args)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("start qemu-system-x86_64: {e}"));
            match child {
                Ok(c) => {
                    let pid = c.id();
                    // reaped by the supervisor through waitpid; the handle is not needed
                    std::mem::forget(c);
                    Ok((pid, accel))
                }
                Err(e) => {
                    this.release_host_side(&vv.id);
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
        match spawned {
            Ok((pid, accel)) => {
                let now = Utc::now();
                self.update_vm(id, |v| {
                    v.mark_running(pid, now);
                    v.accel = Some(accel.to_string());
                });
                self.persist_vm(id, action, format!("qemu pid {pid}, accel {accel}"))?;
                self.supervise_qemu(id, pid);
                Ok(())
            }
            Err(msg) => {
                self.update_vm(id, |v| v.error = Some(msg.clone()));
                self.persist_vm(id, "start-failed", msg.clone())?;
                Err(ApiError::internal(format!("start vm {:?}: {msg}", v.spec.name)))
            }
        }
    }

    fn supervise_qemu(self: &Arc<Self>, id: &str, pid: u32) {
        let this = self.clone();
        let id2 = id.to_string();
        tokio::spawn(async move {
            super::pidwait::exited(pid).await;
            // qemu is our child unless the daemon restarted since; then its code is lost
            let code = match nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid as i32),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                _ => 0,
            };
            let status =
                Status::Exited { exit_code: code, oom_killed: false, started_at: None, finished_at: Utc::now() };
            this.on_vm_exit(&id2, pid, Some(status)).await;
            this.release_if_stopped(&id2).await;
        });
        self.watchdog(id, pid);
    }

    /// Releases the host side of a VM that has not been started again meanwhile; under
    /// the op lock, so a start of the same VM cannot interleave.
    async fn release_if_stopped(self: &Arc<Self>, id: &str) {
        let lock = self.op_lock(id);
        let _g = lock.lock().await;
        if self.find_vm(id).map_or(true, |v| v.pid.is_none()) {
            let (this, id) = (self.clone(), id.to_string());
            let _ = tokio::task::spawn_blocking(move || this.release_host_side(&id)).await;
        }
    }

    fn supervise_vm(self: &Arc<Self>, id: &str, shim_pid: u32, pid: u32) {
        self.shims.lock().unwrap().insert(id.to_string(), shim_pid);
        let this = self.clone();
        let id2 = id.to_string();
        tokio::spawn(async move {
            let status = Self::exit_of(&this.vm_dir(&id2), pid, shim_pid).await;
            this.on_vm_exit(&id2, pid, status).await;
            super::pidwait::exited(shim_pid).await;
            shim::reap(shim_pid);
            {
                let mut shims = this.shims.lock().unwrap();
                if shims.get(&id2) == Some(&shim_pid) {
                    shims.remove(&id2);
                }
            }
            // the network and the parent cgroup outlive the agent's shim only until now
            this.release_if_stopped(&id2).await;
        });
        self.watchdog(id, pid);
    }

    /// A running VM whose agent falls silent is unreachable.
    fn watchdog(self: &Arc<Self>, id: &str, pid: u32) {
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
                // a TCG guest takes seconds to boot: give it longer before calling it silent
                let grace = if v.spec.driver == Driver::Qemu { Duration::from_secs(60) } else { AGENT_DEADLINE };
                let started_long_ago =
                    v.started_at.is_some_and(|t| (Utc::now() - t).to_std().unwrap_or_default() > grace);
                if v.state == VmState::Running
                    && silent
                    && (started_long_ago || v.last_report.is_some())
                    && v.agent != AgentStatus::Unreachable
                {
                    this.update_vm(&id2, |v| v.agent = AgentStatus::Unreachable);
                    let _ = this.persist_vm(&id2, "agent-unreachable", "");
                }
            }
        });
    }

    async fn on_vm_exit(self: &Arc<Self>, id: &str, pid: u32, status: Option<Status>) {
        let (code, oom, error) = match status {
            Some(Status::Exited { exit_code, oom_killed, .. }) => (exit_code, oom_killed, None),
            Some(Status::Failed { error, .. }) => (125, false, Some(error)),
            _ => (255, false, Some("the VM's monitor (shim) died; exit status unknown".to_string())),
        };
        let Some(v) = self.update_vm(id, |v| {
            if v.pid != Some(pid) {
                return;
            }
            v.state = VmState::Stopped;
            v.pid = None;
            v.agent = AgentStatus::Unreachable;
            v.exit_code = Some(code);
            v.oom_killed = oom;
            v.stopped_at = Some(Utc::now());
            if error.is_some() {
                v.error = error.clone();
            }
        }) else {
            return;
        };
        if v.pid.is_some() || v.state != VmState::Stopped {
            return;
        }
        self.agents.lock().unwrap().remove(id);
        let _ = self.persist_vm(id, "stopped", format!("agent exit code {code}"));
        if !v.stop_requested && v.spec.restart.should_restart(code, v.restart_count) {
            let delay = micro_os_core::restart::backoff(v.restart_count, Utc::now().timestamp_subsec_nanos() as u64);
            let this = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let lock = this.op_lock(&id);
                let _g = lock.lock().await;
                let Ok(v) = this.find_vm(&id) else { return };
                if v.state != VmState::Stopped || v.stop_requested {
                    return;
                }
                this.update_vm(&id, |v| v.restart_count += 1);
                if let Err(e) = this.launch_vm(&id, "restarted").await {
                    tracing::warn!("restart vm {}: {e}", v.spec.name);
                }
            });
        }
    }

    pub async fn stop_vm(self: &Arc<Self>, key: &str, force: bool, timeout: Option<f64>) -> Result<Vm, ApiError> {
        let v = self.find_vm(key)?;
        let lock = self.op_lock(&v.id);
        let _g = lock.lock().await;
        let v = self.find_vm(&v.id)?;
        v.state.check(&v.spec.name, Transition::Stop).map_err(conflict)?;
        self.stop_vm_locked(&v, force, timeout.unwrap_or(self.cfg.stop_timeout_s)).await?;
        self.find_vm(&v.id)
    }

    async fn stop_vm_locked(self: &Arc<Self>, v: &Vm, force: bool, timeout: f64) -> Result<(), ApiError> {
        if !(timeout.is_finite() && timeout >= 0.0) {
            return Err(ApiError::bad_request(format!("timeout {timeout} is not a number of seconds (try 10)")));
        }
        let id = v.id.clone();
        self.update_vm(&id, |v| v.stop_requested = true);
        self.persist_vm(&id, "stopping", if force { "forced".to_string() } else { format!("timeout {timeout}s") })?;
        // containers placed on the VM go first
        let on_vm: Vec<_> = self
            .containers
            .read()
            .unwrap()
            .values()
            .filter(|c| c.spec.vm.as_deref() == Some(id.as_str()))
            .filter(|c| matches!(c.state, ContainerState::Running | ContainerState::Paused))
            .cloned()
            .collect();
        if v.state == VmState::Paused {
            let _ = self.freeze_vm(v, false).await;
        }
        for c in on_vm {
            let lock = self.op_lock(&c.id);
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
                self.kill_vm(v, "TERM").await;
            }
            // the agent's own grace period plus a margin for it to exit
            if self.wait_vm(&id, stopped, Duration::from_secs_f64(timeout + 2.0)).await.is_some() {
                return Ok(());
            }
        }
        self.kill_vm(v, "KILL").await;
        if self.wait_vm(&id, stopped, Duration::from_secs(15)).await.is_none() {
            return Err(ApiError::internal(format!("vm {:?} did not stop after SIGKILL", v.spec.name)));
        }
        Ok(())
    }

    /// Signals a VM's first process: the agent under runc, or qemu itself.
    async fn kill_vm(&self, v: &Vm, sig: &'static str) {
        match v.spec.driver {
            Driver::Sandbox => {
                let runc = self.runc.clone();
                let id = v.id.clone();
                let _ = tokio::task::spawn_blocking(move || runc.kill(&id, sig)).await;
            }
            Driver::Qemu => {
                if let Some(pid) = self.find_vm(&v.id).ok().and_then(|v| v.pid) {
                    let s = if sig == "KILL" { nix::sys::signal::SIGKILL } else { nix::sys::signal::SIGTERM };
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), s);
                }
            }
        }
    }

    /// Freezes a VM: its cgroup (sandbox) or its vCPUs over QMP (qemu).
    async fn freeze_vm(&self, v: &Vm, frozen: bool) -> Result<(), String> {
        match v.spec.driver {
            Driver::Sandbox => {
                let (cg, path) = (self.cg, cgroup::container_path(&v.id));
                tokio::task::spawn_blocking(move || cgroup::freeze(cg, &path, frozen))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("freezer: {e}"))
            }
            Driver::Qemu => {
                let sock = self.vm_dir(&v.id).join("qmp.sock");
                let cmd = if frozen { "stop" } else { "cont" };
                tokio::task::spawn_blocking(move || super::qemu::qmp(&sock, cmd))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(drop)
            }
        }
    }

    pub async fn pause_vm(&self, key: &str, pause: bool) -> Result<Vm, ApiError> {
        let v = self.find_vm(key)?;
        let lock = self.op_lock(&v.id);
        let _g = lock.lock().await;
        let v = self.find_vm(&v.id)?;
        v.state.check(&v.spec.name, if pause { Transition::Pause } else { Transition::Resume }).map_err(conflict)?;
        self.freeze_vm(&v, pause).await.map_err(ApiError::internal)?;
        // a paused agent cannot report: the silence it leaves behind is not its fault
        let now = Utc::now();
        self.update_vm(&v.id, |v| {
            v.state = if pause { VmState::Paused } else { VmState::Running };
            if !pause && v.last_report.is_some() {
                v.last_report = Some(now);
            }
        });
        self.persist_vm(&v.id, if pause { "paused" } else { "resumed" }, "")?;
        self.find_vm(&v.id)
    }

    pub async fn remove_vm(self: &Arc<Self>, key: &str, force: bool) -> Result<(), ApiError> {
        let v = self.find_vm(key)?;
        let placed: Vec<String> = self
            .containers
            .read()
            .unwrap()
            .values()
            .filter(|c| c.spec.vm.as_deref() == Some(v.id.as_str()))
            .map(|c| c.spec.name.clone())
            .collect();
        if !placed.is_empty() {
            return Err(ApiError::conflict(format!(
                "vm {:?} holds containers {} (remove them first)",
                v.spec.name,
                placed.join(", ")
            )));
        }
        let lock = self.op_lock(&v.id);
        let _g = lock.lock().await;
        let v = self.find_vm(&v.id)?;
        if let Err(e) = v.state.check(&v.spec.name, Transition::Remove) {
            if !force {
                return Err(conflict(e));
            }
            self.stop_vm_locked(&v, true, 0.0).await?;
        }
        // the host side (network namespace, veth, cgroups) goes before the record: a
        // daemon killed in between leaves a VM that `rm` can finish, never an orphan
        let _ = tokio::time::timeout(Duration::from_secs(10), self.shim_gone(&v.id)).await;
        let (this, id) = (self.clone(), v.id.clone());
        let _ = tokio::task::spawn_blocking(move || this.release_host_side(&id)).await;
        let ev = Event::new(KIND, &v.id, &v.spec.name, "removed", "");
        tokio::task::block_in_place(|| self.store.delete(KIND, &v.id, &ev)).map_err(store_err)?;
        self.vms.write().unwrap().remove(&v.id);
        let _ = self.changes.send(v.id.clone());
        let dir = self.vm_dir(&v.id);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        Ok(())
    }

    /// Makes the VM's `ctl/` directory and listens on its control socket.
    async fn open_control(self: &Arc<Self>, id: &str) -> Result<(), ApiError> {
        let ctl = self.vm_dir(id).join("ctl");
        std::fs::create_dir_all(&ctl).map_err(|e| ApiError::internal(format!("create {}: {e}", ctl.display())))?;
        self.serve_control(id, &ctl).await
    }

    /// Listens on the VM's control socket; each connection is one agent session.
    async fn serve_control(self: &Arc<Self>, id: &str, ctl: &std::path::Path) -> Result<(), ApiError> {
        let path = ctl.join(AGENT_CONTROL_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| ApiError::internal(format!("control socket {}: {e}", path.display())))?;
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
    async fn call_agent(
        &self,
        vm: &Vm,
        make: impl FnOnce(u64) -> DaemonMessage,
        wait: Duration,
    ) -> Result<AgentMessage, ApiError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.agent_calls.lock().unwrap().insert(id, tx);
        let sent = self.agents.lock().unwrap().get(&vm.id).is_some_and(|a| a.send(make(id)).is_ok());
        if !sent {
            self.agent_calls.lock().unwrap().remove(&id);
            return Err(ApiError::conflict(format!("vm {:?} has no agent connected (start it)", vm.spec.name)));
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => {
                self.agent_calls.lock().unwrap().remove(&id);
                Err(ApiError::internal(format!("vm {:?} did not answer in time", vm.spec.name)))
            }
        }
    }

    /// Asks a VM's agent to send from the VM's own peer. A file travels into the VM
    /// through its control directory first (sandbox VMs only).
    pub(super) async fn send_from_vm(&self, vm: &Vm, mut job: SendJob) -> Result<SendReport, ApiError> {
        let mut staged = None;
        if let Some(file) = job.file.take() {
            if vm.spec.driver == Driver::Qemu {
                return Err(ApiError::bad_request(format!(
                    "vm {:?} is a qemu VM: files cannot be sent from it yet (send generated data with --size)",
                    vm.spec.name
                )));
            }
            let name = Path::new(&file).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let outbox = self.vm_dir(&vm.id).join("ctl").join("outbox");
            let local = outbox.join(&name);
            let copied = std::fs::create_dir_all(&outbox).and_then(|_| std::fs::copy(&file, &local));
            copied.map_err(|e| ApiError::bad_request(format!("file {file} cannot be read: {e}")))?;
            job.file = Some(format!("{AGENT_CONTROL_DIR}/outbox/{name}"));
            staged = Some(local);
        }
        let answer = self.call_agent(vm, |id| DaemonMessage::Send { id, job }, Duration::from_secs(300)).await;
        if let Some(f) = staged {
            let _ = std::fs::remove_file(f);
        }
        match answer? {
            AgentMessage::SendResult { report, .. } => Ok(report),
            other => Err(ApiError::internal(format!("vm {:?} answered {other:?}", vm.spec.name))),
        }
    }

    /// Asks a VM's p2p layer a question; the answer is its JSON.
    pub(super) async fn query_vm(&self, vm: &Vm, query: Query) -> Result<serde_json::Value, ApiError> {
        match self.call_agent(vm, |id| DaemonMessage::Query { id, query }, Duration::from_secs(20)).await? {
            AgentMessage::Answer { result: Ok(v), .. } => Ok(v),
            AgentMessage::Answer { result: Err(e), .. } => {
                Err(ApiError::conflict(format!("vm {:?}: {e}", vm.spec.name)))
            }
            other => Err(ApiError::internal(format!("vm {:?} answered {other:?}", vm.spec.name))),
        }
    }

    /// Tells a VM's agent what to advertise in the DHT: the VM and its containers.
    pub(super) fn advertise(&self, vm_id: &str) {
        let Some(name) = self.vms.read().unwrap().get(vm_id).map(|v| v.spec.name.clone()) else { return };
        let mut keys = vec![format!("vm/{name}")];
        keys.extend(
            self.containers
                .read()
                .unwrap()
                .values()
                .filter(|c| c.spec.vm.as_deref() == Some(vm_id))
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
            .read()
            .unwrap()
            .values()
            .filter_map(|v| v.peer_id.as_ref().map(|p| format!("/ip4/{}/tcp/{port}/p2p/{p}", v.address)))
            .collect();
        let mut host = None;
        if let Some(h) = self.host_peer.get() {
            peers.push(h.clone());
            // the host's peer listens on the bridge too, for its VMs' DHT records
            let on_bridge: libp2p::Multiaddr =
                format!("/ip4/{}/tcp/{port}", self.fabric.gateway()).parse().expect("a valid multiaddr");
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
        self.update_vm(id, |v| {
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
            let _ = self.persist_vm(id, "agent", detail);
        } else {
            let _ = self.changes.send(id.to_string());
        }
    }

    /// Re-adopts running VMs after a restart and records those that stopped meanwhile.
    pub async fn recover_vms(self: &Arc<Self>) {
        let running: Vec<Vm> = self
            .vms
            .read()
            .unwrap()
            .values()
            .filter(|v| matches!(v.state, VmState::Running | VmState::Paused))
            .cloned()
            .collect();
        for v in running {
            let dir = self.vm_dir(&v.id);
            let pid = v.pid.unwrap_or(0);
            if v.spec.driver == Driver::Qemu {
                let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(v.id.len()).any(|w| w == v.id.as_bytes()));
                if alive {
                    let _ = self.serve_control(&v.id, &dir.join("ctl")).await;
                    tracing::info!("re-adopted qemu vm {} (pid {pid})", v.spec.name);
                    let _ = self.persist_vm(&v.id, "adopted", format!("qemu pid {pid}"));
                    self.supervise_qemu(&v.id, pid);
                } else {
                    let status =
                        Status::Exited { exit_code: 0, oom_killed: false, started_at: None, finished_at: Utc::now() };
                    self.on_vm_exit(&v.id, pid, Some(status)).await;
                }
                continue;
            }
            match shim::live_shim_pid(&dir) {
                Some(shim_pid) => {
                    if let Err(e) = self.serve_control(&v.id, &dir.join("ctl")).await {
                        tracing::warn!("vm {}: {e}", v.spec.name);
                    }
                    tracing::info!("re-adopted vm {} (pid {pid})", v.spec.name);
                    let _ = self.persist_vm(&v.id, "adopted", format!("pid {pid}"));
                    self.supervise_vm(&v.id, shim_pid, pid);
                }
                None => {
                    self.on_vm_exit(&v.id, pid, shim::read_status(&dir)).await;
                    // it ended while the daemon was down: nobody undid its network and cgroup
                    let (this, id) = (self.clone(), v.id.clone());
                    let _ = tokio::task::spawn_blocking(move || this.release_host_side(&id)).await;
                }
            }
        }
    }
}
