//! One process run under a shim: a container, or a sandbox VM's agent. Writing its OCI
//! bundle and shim config, starting the shim, and waiting for its exit are the same for
//! both; what differs (network namespace, cgroup, binds) is in [`Workload`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use micro_os_core::{PortMapping, Resources};

use crate::image::{Image, ImageStore};
use crate::runc::Runc;
use crate::shim::{self, ShimConfig, Status};
use crate::{bundle, pidwait, Context, Error, Result};

pub struct Workload {
    pub id: String,
    /// The state directory: bundle, shim.json, status.json, the log.
    pub dir: PathBuf,
    pub hostname: String,
    pub image: Image,
    pub args: Vec<String>,
    /// Added to the image's environment.
    pub env: Vec<String>,
    pub resources: Resources,
    pub cgroups_path: String,
    pub netns: PathBuf,
    /// The shim makes `netns` (a container's own); otherwise it exists (a VM's).
    pub own_netns: bool,
    pub binds: Vec<(PathBuf, String, bool)>,
    pub ports: Vec<PortMapping>,
    pub log_name: &'static str,
    pub log_rotation: crate::logs::Rotation,
}

/// A started workload: its pid and its shim's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    pub shim_pid: u32,
}

/// Writes a workload's bundle and shim config and starts its shim. Blocking.
pub fn launch(runc: &Runc, images: &ImageStore, shim_exe: &Path, w: Workload) -> Result<Running> {
    let bundle_dir = w.dir.join("bundle");
    std::fs::create_dir_all(&bundle_dir).context(|| format!("create {}", bundle_dir.display()))?;
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
    let spec = bundle::spec(&input)?;
    spec.save(bundle_dir.join("config.json")).map_err(|e| Error::Failed(format!("write bundle: {e}")))?;
    let shim_cfg = ShimConfig {
        id: w.id,
        runc_binary: runc.binary.clone(),
        runc_root: runc.root.clone(),
        bundle: bundle_dir,
        lower: images.rootfs(&w.image.name),
        log_path: w.dir.join(w.log_name),
        log_rotation: w.log_rotation,
        cgroups_path: w.cgroups_path,
        ports: w.ports,
        netns: w.own_netns.then_some(w.netns),
    };
    let shim_json = w.dir.join("shim.json");
    std::fs::write(&shim_json, serde_json::to_vec_pretty(&shim_cfg).expect("serialises"))
        .context(|| format!("write {}", shim_json.display()))?;
    let _ = std::fs::remove_file(shim::status_path(&w.dir));
    let (shim_pid, pid) = shim::spawn(shim_exe, &w.dir)?;
    Ok(Running { pid, shim_pid })
}

/// Resolves when the workload has exited, with what its shim recorded.
pub async fn exit_of(dir: &Path, run: Running) -> Option<Status> {
    tokio::select! {
        _ = pidwait::exited(run.pid) => {}
        _ = pidwait::exited(run.shim_pid) => {}
    }
    // the shim writes the status right after it reaps the workload, a fraction of a
    // millisecond after the exit: look for it at that pace first (a tokio timer sleeps
    // at least a millisecond, and waiters of a `run` are waiting for this)
    let mut status = shim::read_status(dir);
    if !is_final(&status) {
        let d = dir.to_path_buf();
        status = tokio::task::spawn_blocking(move || {
            let mut status = None;
            for _ in 0..200 {
                std::thread::sleep(Duration::from_micros(100));
                status = shim::read_status(&d);
                if is_final(&status) {
                    break;
                }
            }
            status
        })
        .await
        .unwrap_or(None);
    }
    for i in 0..2000 {
        if is_final(&status) {
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

fn is_final(status: &Option<Status>) -> bool {
    matches!(status, Some(Status::Exited { .. } | Status::Failed { .. }))
}

/// Resolves when the shim has finished its cleanup (unmounts, runc delete), and reaps it.
pub async fn shim_done(shim_pid: u32) {
    pidwait::exited(shim_pid).await;
    shim::reap(shim_pid);
}

/// How a workload ended, as its supervisor records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub code: i32,
    pub oom_killed: bool,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    /// Set when the workload could not run, or its monitor died.
    pub error: Option<String>,
}

impl Exit {
    /// What a shim's status says; `what` names the workload in the message of a lost status.
    pub fn from_status(status: Option<Status>, what: &str) -> Exit {
        match status {
            Some(Status::Exited { exit_code, oom_killed, finished_at, .. }) => {
                Exit { code: exit_code, oom_killed, finished_at, error: None }
            }
            Some(Status::Failed { error, at }) => {
                Exit { code: 125, oom_killed: false, finished_at: at, error: Some(error) }
            }
            _ => Exit {
                code: 255,
                oom_killed: false,
                finished_at: chrono::Utc::now(),
                error: Some(format!("the {what}'s monitor (shim) died; exit status unknown")),
            },
        }
    }

    pub fn code(code: i32) -> Exit {
        Exit { code, oom_killed: false, finished_at: chrono::Utc::now(), error: None }
    }
}
