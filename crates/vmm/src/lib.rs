//! VM drivers: how a VM's first process — the micro-os agent, or a guest whose init is
//! the agent — is started, waited for, signalled, frozen, re-adopted and measured.
//!
//! Design decision: one small trait, [`VmDriver`], in the manner of Nomad's driver
//! plugins, with the abilities a driver has declared in [`Capabilities`] rather than
//! guessed from its name. Everything around a VM that is the same for every driver — its
//! record, op lock, restart policy, agent channel and watchdog — lives in the daemon's
//! supervisor, never here. A new driver is one file in this crate that implements the
//! trait, one variant of `micro_os_core::Driver`, and one line in [`drivers`].
//!
//! Invariant: drivers know nothing of HTTP, the API types or the store; they get a VM's
//! record and answer with typed errors.

mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod qemu;
pub mod sandbox;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use micro_os_core::{Driver, Vm, VmSpec};
use micro_os_runtime::cgroup;
use micro_os_runtime::fabric::Fabric;
use micro_os_runtime::image::ImageStore;
use micro_os_runtime::procfs::NetCounters;
use micro_os_runtime::runc::Runc;
pub use micro_os_runtime::workload::Exit;

pub use error::{Error, Result};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a driver can do, declared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capabilities {
    /// Containers can be placed on its VMs (they share the VM's namespace and cgroup).
    pub containers: bool,
    /// Files reach the VM through its control directory (`net send --file --from VM`).
    pub files: bool,
    /// How long a start may take until the agent says it is ready.
    pub boot: Duration,
    /// How long after a start a silent agent still counts as booting, not unreachable.
    pub boot_grace: Duration,
}

/// A VM's first process, once started.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    pub pid: u32,
    /// The process that watches it (a shim), when there is one.
    pub monitor_pid: Option<u32>,
    /// The accelerator a hardware VM runs with (kvm or tcg).
    pub accel: Option<String>,
    /// One line for the VM's event ("pid 42", "qemu pid 42, accel tcg").
    pub detail: String,
}

/// What `recover` finds after a daemon restart.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovered {
    Running(Started),
    Exited(Exit),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

/// What a VM used, as the collector samples it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub stats: cgroup::Stats,
    /// Traffic as the VM sees it (received = what reached the VM).
    pub net: NetCounters,
}

/// One kind of VM. Blocking methods run on a blocking thread; `wait` is a future.
pub trait VmDriver: Send + Sync + 'static {
    fn kind(&self) -> Driver;
    fn capabilities(&self) -> Capabilities;
    /// Checks a spec before anything is made: limits this driver needs and parts of the
    /// host it runs on. Blocking (it may look at the host's files).
    fn validate(&self, spec: &VmSpec) -> Result<()>;
    /// Starts the VM's first process. Blocking; undoes its own partial work on failure.
    fn start(&self, vm: &Vm) -> Result<Started>;
    /// Resolves when the VM's first process has ended, with how it ended.
    fn wait(&self, vm: &Vm, run: &Started) -> BoxFuture<Exit>;
    /// Resolves when what watched the VM's process (a shim) has finished cleaning up
    /// after it ended, so that `release` finds nothing in use. At once by default.
    fn settled(&self, _id: &str) -> BoxFuture<()> {
        Box::pin(async {})
    }
    /// Signals the VM's first process. Blocking.
    fn signal(&self, vm: &Vm, sig: Signal) -> Result<()>;
    /// Freezes or thaws the whole VM. Blocking.
    fn freeze(&self, vm: &Vm, frozen: bool) -> Result<()>;
    /// After a daemon restart: whether the VM still runs. Blocking.
    fn recover(&self, vm: &Vm) -> Recovered;
    /// What the running VM uses now; `None` when it cannot be read. Blocking.
    fn sample(&self, vm: &Vm) -> Option<Usage>;
    /// Undoes what `start` made on the host (network, cgroups) once the VM has stopped.
    /// Blocking; safe to call twice.
    fn release(&self, vm: &Vm);
}

/// What drivers share on this host.
#[derive(Clone)]
pub struct Host {
    /// `$HOME/vms`: one state directory per VM.
    pub vms_dir: PathBuf,
    pub images: ImageStore,
    pub runc: Runc,
    pub fabric: Fabric,
    pub cg: cgroup::Version,
    /// The binary whose `shim` subcommand watches a workload.
    pub shim_exe: PathBuf,
    /// When a sandbox VM's console log is rotated.
    pub log_rotation: micro_os_runtime::logs::Rotation,
}

impl Host {
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.vms_dir.join(id)
    }

    /// The VM's network namespace, pinned at `/run/netns/mos-<id12>`.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        Fabric::netns_path(&netns_name(id))
    }

    /// Undoes a VM's network (veth or tap, pinned namespace) and its cgroups. Blocking.
    pub fn release_host_side(&self, id: &str) {
        self.fabric.detach(&netns_name(id), &host_if(id));
        cgroup::remove_parent(self.cg, &format!("{}/agent", cgroup::container_path(id)));
        cgroup::remove_parent(self.cg, &cgroup::container_path(id));
    }
}

pub fn netns_name(id: &str) -> String {
    format!("mos-{}", &id[..12.min(id.len())])
}

/// The host end of a VM's link: its veth or its tap, `vh<id12>`.
pub fn host_if(id: &str) -> String {
    format!("vh{}", &id[..12.min(id.len())])
}

/// The drivers this build has, by kind. A new driver registers here.
pub fn drivers(host: &Host) -> Vec<Arc<dyn VmDriver>> {
    vec![Arc::new(sandbox::Sandbox::new(host.clone())), Arc::new(qemu::Qemu::new(host.clone()))]
}
