//! The per-container monitor, run as `micro-os shim <state-dir>`.
//!
//! The daemon writes `shim.json` into the container's state directory and spawns the
//! shim (posix_spawn, a session of its own), which then:
//! 1. mounts the container's overlay root (image rootfs below, a private upper layer)
//!    and, at the same time, makes its network namespace with loopback up;
//! 2. becomes a child subreaper and runs `runc run --detach` with pipes as the
//!    container's stdout/stderr, so the container's first process becomes its child;
//! 3. opens published ports on the host's loopback and proxies them into the
//!    container's network namespace;
//! 4. writes `status.json` and reports `ok <pid>` (or `err <message>`) on fd 3 to the
//!    daemon;
//! 5. copies stdout/stderr to `container.log` (CRI format, rotated by size:
//!    `logs::Writer`) until the container exits,
//!    then records the exit code and OOM kills in `status.json`, deletes the runc
//!    container and unmounts the root.
//!
//! Because the shim, not the daemon, holds the container, a daemon restart or crash
//! leaves containers and their logs running; the daemon re-reads `status.json`.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use micro_os_core::{PortMapping, Protocol};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::Context;
use crate::runc::Runc;
use crate::{cgroup, logs, netns, Error, Result};

/// Everything the shim needs, written by the daemon as `shim.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    pub id: String,
    pub runc_binary: PathBuf,
    pub runc_root: PathBuf,
    pub bundle: PathBuf,
    /// The image's root filesystem (read-only lower layer).
    pub lower: PathBuf,
    pub log_path: PathBuf,
    /// When the log is rotated (a shim of an older daemon has none: the default).
    #[serde(default)]
    pub log_rotation: logs::Rotation,
    pub cgroups_path: String,
    pub ports: Vec<PortMapping>,
    /// Make a network namespace of the container's own here (loopback up) before runc
    /// runs; the bundle joins it by this path. `None` when it joins a VM's namespace.
    pub netns: Option<PathBuf>,
}

impl ShimConfig {
    pub fn upper(&self) -> PathBuf {
        self.bundle.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.bundle.join("work")
    }
    pub fn merged(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }
}

/// What the shim last recorded, in `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Status {
    Running { pid: u32, started_at: DateTime<Utc> },
    Exited { exit_code: i32, oom_killed: bool, started_at: Option<DateTime<Utc>>, finished_at: DateTime<Utc> },
    Failed { error: String, at: DateTime<Utc> },
}

pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

pub fn read_status(state_dir: &Path) -> Option<Status> {
    let text = fs::read(status_path(state_dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes `status.json` atomically (temp file, rename): a reader sees the old or the
/// new status, never half of one. Not fsynced: the daemon commits what it reads to its
/// store, and after a power cut a container without a shim is reported as lost anyway.
pub fn write_status(state_dir: &Path, status: &Status) -> io::Result<()> {
    let tmp = state_dir.join(".status.json.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(status).expect("status serialises"))?;
    fs::rename(&tmp, status_path(state_dir))
}

/// The shim's pid, if it is alive and really our shim for this state directory.
pub fn live_shim_pid(state_dir: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(state_dir.join("shim.pid")).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let want = state_dir.as_os_str().as_encoded_bytes();
    let is_ours = cmdline.split(|b| *b == 0).any(|arg| arg == want);
    // a zombie has an empty cmdline: it has exited
    is_ours.then_some(pid)
}

/// Daemon side: starts a shim for the prepared state directory and waits until it
/// reports the container started or failed. Returns (shim pid, container pid).
///
/// The shim is spawned with posix_spawn (no fork of the daemon's address space) in a
/// session of its own; it is the daemon's child, so the daemon reaps it ([`reap`]), and
/// when the daemon dies it is re-parented to init and goes on.
pub fn spawn(exe: &Path, state_dir: &Path) -> Result<(u32, u32)> {
    use nix::fcntl::OFlag;
    use nix::spawn::{posix_spawn, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
    use nix::sys::stat::Mode;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let err = |what: &str, e: nix::Error| Error::Failed(format!("start shim: {what}: {e}"));
    let (r, w0) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| err("pipe", e))?;
    // keep the write end off fd 3 itself: dup2(3, 3) would leave it close-on-exec
    let w = nix::fcntl::fcntl(&w0, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(|e| err("dup", e))?;
    // the shim's copy is the only write end: a shim that dies before it reports must
    // give the reader end-of-file, not leave it waiting on our own copy
    drop(w0);
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    let w = unsafe { OwnedFd::from_raw_fd(w) };
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| Error::Failed("start shim: path has a NUL byte".into()));
    let log = cstr(state_dir.join("shim.log").as_os_str().as_bytes())?;
    let mut actions = PosixSpawnFileActions::init().map_err(|e| err("file actions", e))?;
    actions.add_open(0, c"/dev/null", OFlag::O_RDONLY, Mode::empty()).map_err(|e| err("stdin", e))?;
    actions.add_open(1, c"/dev/null", OFlag::O_WRONLY, Mode::empty()).map_err(|e| err("stdout", e))?;
    let log_flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC;
    actions.add_open(2, log.as_c_str(), log_flags, Mode::from_bits_truncate(0o640)).map_err(|e| err("shim.log", e))?;
    actions.add_dup2(w.as_raw_fd(), 3).map_err(|e| err("report pipe", e))?;
    let mut attr = PosixSpawnAttr::init().map_err(|e| err("attributes", e))?;
    attr.set_flags(PosixSpawnFlags::from_bits_retain(libc::POSIX_SPAWN_SETSID as _)).map_err(|e| err("setsid", e))?;
    let exe_c = cstr(exe.as_os_str().as_bytes())?;
    let args = [exe_c.clone(), cstr(b"shim")?, cstr(state_dir.as_os_str().as_bytes())?];
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok())
        .collect();
    let shim =
        posix_spawn(exe_c.as_c_str(), &actions, &attr, &args, &env).map_err(|e| err(&exe.display().to_string(), e))?;
    drop(w);
    let shim_pid = shim.as_raw() as u32;
    let mut line = String::new();
    BufReader::new(File::from(r)).read_line(&mut line).context(|| "read shim report".into())?;
    let line = line.trim();
    if let Some(pid) = line.strip_prefix("ok ") {
        let pid = pid.parse().map_err(|_| Error::Failed(format!("shim reported {line:?}")))?;
        return Ok((shim_pid, pid));
    }
    // the shim has failed and is exiting: do not leave a zombie
    let _ = waitpid(shim, None);
    if let Some(msg) = line.strip_prefix("err ") {
        return Err(Error::Failed(msg.to_string()));
    }
    let log = fs::read_to_string(state_dir.join("shim.log")).unwrap_or_default();
    Err(Error::Failed(format!("shim exited without a report: {}", log.trim())))
}

/// Reaps an exited shim if it is this process's child (it is not after a restart).
pub fn reap(shim_pid: u32) {
    let _ = waitpid(Pid::from_raw(shim_pid as i32), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

/// Shim side: runs the container to completion. Returns the process exit code.
pub fn run(state_dir: &Path) -> i32 {
    // SAFETY: fd 3 was set up by `spawn` for us alone; a failed fcntl means it is absent.
    let report = unsafe {
        if libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC) == 0 {
            Some(File::from_raw_fd(3))
        } else {
            None
        }
    };
    let _ = fs::write(state_dir.join("shim.pid"), std::process::id().to_string());
    let cfg: ShimConfig = match fs::read(state_dir.join("shim.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return fail(state_dir, report, &format!("read shim.json: {e}")),
    };
    let runc = Runc::new(&cfg.runc_binary, &cfg.runc_root);
    let started = match start(&cfg, &runc, state_dir) {
        Ok(s) => s,
        Err(e) => {
            cleanup(&cfg, &runc);
            return fail(state_dir, report, &e.to_string());
        }
    };
    let started_at = Utc::now();
    let _ = write_status(state_dir, &Status::Running { pid: started.pid, started_at });
    if let Some(mut r) = report {
        let _ = writeln!(r, "ok {}", started.pid);
    }

    let exit_code = wait_for(started.pid);
    for pump in started.pumps {
        let _ = pump.join();
    }
    let oom_killed = cgroup::oom_kills(cgroup::detect(), &cfg.cgroups_path).unwrap_or(0) > 0;
    // report first: the daemon watches the container's pid and reads this at once; the
    // cleanup after it is off the user's path (the daemon waits for this process to end
    // before it reuses or deletes the state directory)
    let _ = write_status(
        state_dir,
        &Status::Exited { exit_code, oom_killed, started_at: Some(started_at), finished_at: Utc::now() },
    );
    // what is left (runc delete, unmounts) waits for nobody: at a lower CPU priority it
    // yields to the starts and exits that someone is waiting for on a busy host
    // SAFETY: setpriority on this process only; a failure leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
    cleanup(&cfg, &runc);
    0
}

fn fail(state_dir: &Path, report: Option<File>, msg: &str) -> i32 {
    let _ = write_status(state_dir, &Status::Failed { error: msg.to_string(), at: Utc::now() });
    if let Some(mut r) = report {
        let _ = writeln!(r, "err {}", msg.replace('\n', " "));
    }
    // stderr is shim.log: a full disk must not turn a failure into a panic
    let _ = writeln!(io::stderr(), "shim: {msg}");
    1
}

struct Started {
    pid: u32,
    pumps: Vec<std::thread::JoinHandle<()>>,
}

fn is_mountpoint(p: &Path) -> bool {
    let Ok(m) = fs::metadata(p) else { return false };
    let Some(parent) = p.parent() else { return false };
    let Ok(pm) = fs::metadata(parent) else { return false };
    use std::os::unix::fs::MetadataExt;
    m.dev() != pm.dev()
}

fn mount_rootfs(cfg: &ShimConfig) -> Result<()> {
    let merged = cfg.merged();
    if is_mountpoint(&merged) {
        let _ = umount2(&merged, MntFlags::MNT_DETACH);
    }
    for d in [cfg.upper(), cfg.work(), merged.clone()] {
        fs::create_dir_all(&d).context(|| format!("create {}", d.display()))?;
    }
    let opts =
        format!("lowerdir={},upperdir={},workdir={}", cfg.lower.display(), cfg.upper().display(), cfg.work().display());
    mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
        .map_err(|e| Error::Failed(format!("mount overlay root at {}: {e}", merged.display())))
}

/// Writes one timed step to the shim's own log (its stderr), for operators and profiling.
fn step(t0: std::time::Instant, what: &str) {
    // eprintln! panics when the write fails (a full disk): a log line is not worth it
    let _ = writeln!(io::stderr(), "shim: {:>7.2} ms {what}", t0.elapsed().as_secs_f64() * 1000.0);
}

fn start(cfg: &ShimConfig, runc: &Runc, state_dir: &Path) -> Result<Started> {
    let t0 = std::time::Instant::now();
    // the overlay mount and the network namespace do not depend on each other: the root
    // is mounted on a thread of its own while this one makes the namespace
    let mounting = {
        let cfg = cfg.clone();
        std::thread::spawn(move || mount_rootfs(&cfg))
    };
    let made = cfg.netns.as_ref().map(|ns| {
        if ns.exists() {
            netns::remove(ns);
        }
        netns::create(ns).context(|| format!("create network namespace {}", ns.display()))
    });
    let mounted = mounting.join().unwrap_or_else(|_| Err(Error::Failed("mount thread panicked".into())));
    if made.is_some() {
        step(t0, "network namespace");
    }
    mounted?;
    step(t0, "mounted root");
    made.transpose()?;
    // a container of this id left by a crash would make runc refuse the id
    if cfg.runc_root.join(&cfg.id).exists() {
        let _ = runc.delete(&cfg.id, true);
        step(t0, "stale delete");
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| Error::Failed(format!("subreaper: {e}")))?;

    let log = Arc::new(Mutex::new(
        logs::Writer::open(&cfg.log_path, cfg.log_rotation).context(|| format!("open {}", cfg.log_path.display()))?,
    ));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // runc writes a pid file with O_SYNC (a journal commit on the start's path); when the
    // kernel lists our children, the container's first process is found among them instead
    let pid_file = (!children_listed()).then(|| state_dir.join("container.pid"));
    if let Some(f) = &pid_file {
        let _ = fs::remove_file(f);
    }
    let runc_log = state_dir.join("runc.log");
    // create and start in one runc process; the container's stdio are our pipes
    let mut cmd = runc.command();
    cmd.arg("--log").arg(&runc_log).arg("--log-format").arg("json").arg("run").arg("--detach");
    cmd.arg("--bundle").arg(&cfg.bundle);
    if let Some(f) = &pid_file {
        cmd.arg("--pid-file").arg(f);
    }
    let output = cmd
        .arg(&cfg.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()
        .context(|| format!("run {}", cfg.runc_binary.display()))?;
    step(t0, "runc run");
    let pumps = vec![pump(out_r, "stdout", log.clone()), pump(err_r, "stderr", log)];
    if !output.success() {
        let msg = fs::read(&runc_log).map(|b| crate::runc::last_error(&b)).unwrap_or_default();
        return Err(Error::Runc { action: "run".into(), id: cfg.id.clone(), msg });
    }
    let pid: u32 = match &pid_file {
        Some(f) => fs::read_to_string(f)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::Failed(format!("runc wrote no pid to {}", f.display())))?,
        None => container_child().ok_or_else(|| Error::Failed(format!("runc left no process for {}", cfg.id)))?,
    };
    let ns = cfg.netns.clone().unwrap_or_else(|| netns::ns_path(pid));
    let published = (|| {
        for p in &cfg.ports {
            let (ns, port) = (ns.clone(), p.container);
            let at = SocketAddr::from((Ipv4Addr::LOCALHOST, p.host));
            let busy = || format!("publish port {p}: host port {} is not free", p.host);
            match p.protocol {
                Protocol::Tcp => {
                    let listener = TcpListener::bind(at).context(busy)?;
                    std::thread::spawn(move || proxy_tcp(listener, ns, port));
                }
                Protocol::Udp => {
                    let socket = UdpSocket::bind(at).context(busy)?;
                    std::thread::spawn(move || proxy_udp(socket, ns, port));
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = published {
        let _ = runc.kill(&cfg.id, "KILL");
        let _ = wait_for(pid);
        return Err(e);
    }
    Ok(Started { pid, pumps })
}

/// Whether the kernel lists a task's children (`/proc/<pid>/task/<tid>/children`,
/// CONFIG_PROC_CHILDREN).
fn children_listed() -> bool {
    let pid = std::process::id();
    Path::new(&format!("/proc/{pid}/task/{pid}/children")).exists()
}

/// The container's first process once `runc run --detach` has returned: runc's child,
/// re-parented to us (a subreaper), and the one that is pid 1 of its own pid namespace
/// (an init that forked and exited at once leaves its orphans with us too). A zombie is
/// listed as well, so a container that already exited is found.
fn container_child() -> Option<u32> {
    let pid = std::process::id();
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(children) = fs::read_to_string(task.path().join("children")) else { continue };
        for child in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
            let status = fs::read_to_string(format!("/proc/{child}/status")).unwrap_or_default();
            let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"));
            if nspid.and_then(|p| p.split_whitespace().last()) == Some("1") {
                return Some(child);
            }
        }
    }
    None
}

fn cleanup(cfg: &ShimConfig, runc: &Runc) {
    if cfg.runc_root.join(&cfg.id).exists() {
        let _ = runc.delete(&cfg.id, true);
    }
    let merged = cfg.merged();
    if is_mountpoint(&merged) {
        let _ = umount2(&merged, MntFlags::MNT_DETACH);
    }
    if let Some(ns) = &cfg.netns {
        netns::remove(ns);
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Failed(format!("pipe: {e}")))
}

/// Reaps children until `pid` exits; returns its exit code (128+N for signal N).
fn wait_for(pid: u32) -> i32 {
    let target = Pid::from_raw(pid as i32);
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p == target => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == target => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                // not our child (should not happen): poll until it is gone
                while Path::new(&format!("/proc/{pid}")).exists() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return 255;
            }
        }
    }
}

/// Copies one of the container's streams into the log, a CRI line per line.
fn pump(fd: OwnedFd, stream: &'static str, log: Arc<Mutex<logs::Writer>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        const MAX_LINE: usize = 16 * 1024;
        let mut reader = BufReader::new(File::from(fd));
        let mut buf = Vec::with_capacity(1024);
        loop {
            buf.clear();
            let n = match (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let full = buf.last() == Some(&b'\n');
            let msg = if full { &buf[..n - 1] } else { &buf[..n] };
            let line = logs::format_line(Utc::now(), stream, !full && n == MAX_LINE, msg);
            if let Ok(mut w) = log.lock() {
                let _ = w.write_line(&line);
            }
        }
    })
}

fn proxy_tcp(listener: TcpListener, ns: PathBuf, port: u16) {
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let ns = ns.clone();
        std::thread::spawn(move || {
            let Ok(upstream) = netns::connect_tcp(&ns, port, Duration::from_secs(5)) else { return };
            splice_both(client, upstream);
        });
    }
}

/// A published UDP port: each client (host address and port) gets a socket of its own
/// in the container's namespace, connected to the container's port, so answers go back
/// to the client they answer; a client silent for [`UDP_IDLE`] is forgotten.
fn proxy_udp(socket: UdpSocket, ns: PathBuf, port: u16) {
    let socket = Arc::new(socket);
    let flows: Arc<Mutex<std::collections::HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        let existing = flows.lock().unwrap().get(&from).cloned();
        let upstream = match existing {
            Some(u) => u,
            None => {
                let Ok(u) = netns::udp_to(&ns, port) else { continue };
                let u = Arc::new(u);
                flows.lock().unwrap().insert(from, u.clone());
                let (socket, flows, answers) = (socket.clone(), flows.clone(), u.clone());
                std::thread::spawn(move || {
                    let _ = answers.set_read_timeout(Some(UDP_IDLE));
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = answers.recv(&mut buf) {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                    flows.lock().unwrap().remove(&from);
                });
                u
            }
        };
        let _ = upstream.send(&buf[..n]);
    }
}

/// How long a UDP client may stay silent before its flow is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(120);

fn splice_both(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else { return };
    let t = std::thread::spawn(move || {
        let mut a = a;
        let mut b = b;
        let _ = io::copy(&mut a, &mut b);
        let _ = b.shutdown(std::net::Shutdown::Write);
    });
    let _ = io::copy(&mut b2, &mut a2);
    let _ = a2.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shim_that_dies_without_a_report_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        // /bin/true takes the shim's arguments and exits without writing to fd 3
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(spawn(Path::new("/bin/true"), &d).map_err(|e| e.to_string()));
        });
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("spawn still waits for a report from a dead shim");
        let msg = got.expect_err("a shim without a report cannot have started anything");
        assert!(msg.contains("without a report"), "{msg}");
    }
}
