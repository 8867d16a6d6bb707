//! The `sandbox` driver: the VM's agent as PID 1 of the image's root under runc and a
//! shim, in a network namespace on the VM bridge and below a parent cgroup with the
//! VM's limits. Containers placed on the VM join that namespace and nest under that
//! cgroup, so the VM's `--memory` and `--cpu` bound everything in it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use micro_os_core::vm::AGENT_CONTROL_DIR;
use micro_os_core::{Driver, Vm, VmSpec};
use micro_os_runtime::workload::{self, Running, Workload};
use micro_os_runtime::{cgroup, procfs, shim};

use crate::{host_if, netns_name, BoxFuture, Capabilities, Exit, Host, Recovered, Result, Signal, Started, Usage};

pub struct Sandbox {
    host: Host,
    /// The live shim of each VM, so a restart waits for the last one's cleanup.
    shims: Mutex<HashMap<String, u32>>,
}

impl Sandbox {
    pub fn new(host: Host) -> Sandbox {
        Sandbox { host, shims: Mutex::new(HashMap::new()) }
    }

    /// Waits (up to `limit`) for the VM's previous shim to finish unmounting; `settled`
    /// has usually waited for it already.
    fn previous_shim_gone(&self, id: &str, limit: Duration) {
        let Some(pid) = self.shims.lock().unwrap().get(id).copied() else { return };
        let deadline = Instant::now() + limit;
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            if Instant::now() > deadline {
                tracing::warn!("vm {id}: its shim (pid {pid}) is still cleaning up after {limit:?}; going on");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn launch(&self, vm: &Vm) -> Result<Running> {
        let image = self.host.images.get(&vm.spec.image)?;
        let fabric = &self.host.fabric;
        fabric.ensure_bridge()?;
        let parent = cgroup::container_path(&vm.id);
        let limits =
            cgroup::Limits { memory_bytes: Some(vm.spec.memory_mib << 20), cpus: Some(vm.spec.cpus), pids: None };
        cgroup::create_parent(self.host.cg, &parent, limits)
            .map_err(|e| crate::Error::Failed(format!("cgroup {parent}: {e}")))?;
        let netns = fabric.attach(&netns_name(&vm.id), &host_if(&vm.id), vm.address)?;
        let mut args = image.config.entrypoint.clone();
        args.extend(image.config.cmd.iter().cloned());
        let dir = self.host.vm_dir(&vm.id);
        let w = Workload {
            id: vm.id.clone(),
            dir: dir.clone(),
            hostname: vm.spec.name.clone(),
            image,
            args,
            env: agent_env(&vm.spec.name),
            resources: Default::default(),
            cgroups_path: format!("{parent}/agent"),
            netns,
            own_netns: false,
            binds: vec![(dir.join("ctl"), AGENT_CONTROL_DIR.into(), false)],
            ports: vec![],
            log_name: "console.log",
            log_rotation: self.host.log_rotation,
        };
        Ok(workload::launch(&self.host.runc, &self.host.images, &self.host.shim_exe, w)?)
    }
}

/// The agent's environment: its name, and the daemon's choice of VM-to-VM transport
/// when one is set (`AGENT_P2P_TRANSPORT_ENV`).
fn agent_env(name: &str) -> Vec<String> {
    let mut env = vec![format!("HOSTNAME={name}"), format!("MICRO_OS_VM={name}")];
    // knobs for benchmarks and diagnosis, passed on from the daemon's environment
    for var in [micro_os_core::vm::AGENT_P2P_TRANSPORT_ENV, "MICRO_OS_AGENT_LOG"] {
        if let Ok(v) = std::env::var(var) {
            env.push(format!("{var}={v}"));
        }
    }
    env
}

impl crate::VmDriver for Sandbox {
    fn kind(&self) -> Driver {
        Driver::Sandbox
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            containers: true,
            files: true,
            boot: Duration::from_secs(15),
            boot_grace: Duration::from_secs(4),
        }
    }

    fn validate(&self, _spec: &VmSpec) -> Result<()> {
        if !nix::unistd::geteuid().is_root() {
            return Err(crate::Error::Missing(
                "sandbox VMs need the daemon to run as root (namespaces, cgroups and the VM bridge)".into(),
            ));
        }
        Ok(())
    }

    fn start(&self, vm: &Vm) -> Result<Started> {
        self.previous_shim_gone(&vm.id, Duration::from_secs(10));
        match self.launch(vm) {
            Ok(run) => {
                self.shims.lock().unwrap().insert(vm.id.clone(), run.shim_pid);
                Ok(Started {
                    pid: run.pid,
                    monitor_pid: Some(run.shim_pid),
                    accel: None,
                    detail: format!("pid {}", run.pid),
                })
            }
            Err(e) => {
                self.host.release_host_side(&vm.id);
                Err(e)
            }
        }
    }

    fn wait(&self, vm: &Vm, run: &Started) -> BoxFuture<Exit> {
        let dir = self.host.vm_dir(&vm.id);
        let run = Running { pid: run.pid, shim_pid: run.monitor_pid.unwrap_or(run.pid) };
        Box::pin(async move {
            let status = workload::exit_of(&dir, run).await;
            // the shim unmounts after it records the exit; reap it when it is done
            tokio::spawn(workload::shim_done(run.shim_pid));
            Exit::from_status(status, "VM")
        })
    }

    fn settled(&self, id: &str) -> BoxFuture<()> {
        let shim = self.shims.lock().unwrap().get(id).copied();
        Box::pin(async move {
            if let Some(pid) = shim {
                micro_os_runtime::pidwait::exited(pid).await;
            }
        })
    }

    fn signal(&self, vm: &Vm, sig: Signal) -> Result<()> {
        let sig = match sig {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        };
        Ok(self.host.runc.kill(&vm.id, sig)?)
    }

    fn freeze(&self, vm: &Vm, frozen: bool) -> Result<()> {
        cgroup::freeze(self.host.cg, &cgroup::container_path(&vm.id), frozen)
            .map_err(|e| crate::Error::Failed(format!("freezer: {e}")))
    }

    fn recover(&self, vm: &Vm) -> Recovered {
        let dir = self.host.vm_dir(&vm.id);
        match shim::live_shim_pid(&dir) {
            Some(shim_pid) => {
                self.shims.lock().unwrap().insert(vm.id.clone(), shim_pid);
                let pid = vm.pid.unwrap_or(0);
                Recovered::Running(Started {
                    pid,
                    monitor_pid: Some(shim_pid),
                    accel: None,
                    detail: format!("pid {pid}"),
                })
            }
            None => Recovered::Exited(Exit::from_status(shim::read_status(&dir), "VM")),
        }
    }

    fn sample(&self, vm: &Vm) -> Option<Usage> {
        let stats = cgroup::stats(self.host.cg, &cgroup::container_path(&vm.id))?;
        let net = vm.pid.and_then(procfs::net_of_pid).unwrap_or_default();
        Some(Usage { stats, net })
    }

    fn release(&self, vm: &Vm) {
        self.previous_shim_gone(&vm.id, Duration::from_secs(10));
        self.shims.lock().unwrap().remove(&vm.id);
        self.host.release_host_side(&vm.id);
    }
}
