//! `micro-os-agent`: the first process of every VM (PID 1 of a sandbox, `/init` of a qemu
//! guest), a binary of its own so that a VM maps only what it runs: no CLI, no API server,
//! no store.
//!
//! As PID 1 it reaps orphans and forwards signals; SIGTERM (or a `shutdown` from the
//! daemon) stops every process of the VM, SIGKILL after a grace period, then exits 0.
//! It holds the VM's identity — an ed25519 key whose libp2p peer id the daemon shows, kept
//! in the VM's root (a sandbox) or handed in by the daemon in the initramfs (a qemu
//! guest) — runs the VM's libp2p peer (`micro_os_p2p`) and reports readiness and health
//! over the control channel. Design decision: plain threads for the PID 1 duties and the
//! control channel; the peer alone runs on a single-threaded tokio runtime of its own.
//!
//! Usage: `micro-os-agent [--guest] [--control-dir DIR]` (`--version`, `--help`).

mod local;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micro_os_circuit::Replicas;
use micro_os_core::net::SendReport;
use micro_os_core::vm::{
    AgentMessage, DaemonMessage, Query, AGENT_CONTROL_DIR, AGENT_CONTROL_SOCKET, AGENT_P2P_PORT,
    AGENT_P2P_TRANSPORT_ENV,
};
use micro_os_p2p as p2p;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use p2p::libp2p::identity::Keypair;
use p2p::libp2p::multiaddr::Protocol;
use p2p::{Multiaddr, PeerId};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

const KEY_PATH: &str = "/var/lib/micro-os/agent.key";
/// Where named DATA streams sent to this VM are kept.
const INBOX: &str = "/var/lib/micro-os/inbox";
/// Where the VM's circuit members keep their Raft log and state, one directory each.
const CIRCUITS: &str = "/var/lib/micro-os/circuits";
const REPORT_EVERY: Duration = Duration::from_secs(1);
const DEFAULT_GRACE: f64 = 10.0;

/// The VM's identity: the seed persists in the VM's root, so a restarted VM keeps it.
fn identity(path: &Path) -> Result<Keypair, String> {
    let seed: [u8; 32] = match std::fs::read(path) {
        Ok(b) if b.len() == 32 => b.try_into().expect("32 bytes"),
        _ => {
            let mut s = [0u8; 32];
            getrandom::fill(&mut s).map_err(|e| format!("no randomness: {e}"))?;
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            std::fs::write(path, s).map_err(|e| format!("{}: {e}", path.display()))?;
            s
        }
    };
    Keypair::ed25519_from_bytes(seed).map_err(|e| e.to_string())
}

fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// Other user processes in this pid namespace (the agent is PID 1 of it); kernel
/// threads, which a guest always has, have an empty command line and do not count.
fn others() -> u32 {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.bytes().all(|b| b.is_ascii_digit())
                        && n != me.as_str()
                        && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty())
                })
                .count() as u32
        })
        .unwrap_or(0)
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Stops every other process: SIGTERM, then SIGKILL after `grace`.
fn stop_all(grace: Duration) {
    let pid1 = std::process::id() == 1;
    if !pid1 {
        return; // not the VM's init (a test run): nothing of ours to stop
    }
    let _ = signal::kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while others() > 0 && Instant::now() < deadline {
        reap();
        std::thread::sleep(Duration::from_millis(20));
    }
    if others() > 0 {
        let _ = signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(50));
    }
    reap();
}

struct Link {
    stream: Mutex<Option<Box<dyn Write + Send>>>,
}

impl Link {
    fn send(&self, msg: &AgentMessage) -> bool {
        let mut guard = self.stream.lock().unwrap();
        let Some(s) = guard.as_mut() else { return false };
        let mut line = serde_json::to_vec(msg).expect("messages serialise");
        line.push(b'\n');
        if s.write_all(&line).is_err() {
            *guard = None;
            return false;
        }
        true
    }
}

/// Guest mode (PID 1 of a qemu guest): mount the basics, load the virtio modules the
/// initramfs lists, configure eth0 from the kernel command line.
fn guest_setup() -> Vec<String> {
    use nix::mount::{mount, MsFlags};
    let mut problems = Vec::new();
    let none = None::<&str>;
    for (src, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
    ] {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(Some(src), target, Some(fstype), MsFlags::empty(), none) {
            problems.push(format!("mount {target}: {e}"));
        }
    }
    for m in std::fs::read_to_string("/etc/micro-os/modules").unwrap_or_default().lines().filter(|l| !l.is_empty()) {
        match std::fs::File::open(m) {
            Ok(f) => {
                use std::os::fd::AsRawFd;
                // SAFETY: finit_module with a valid fd, an empty C string and no flags.
                let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), 0) };
                if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                    problems.push(format!("load {m}: {}", std::io::Error::last_os_error()));
                }
            }
            Err(e) => problems.push(format!("open {m}: {e}")),
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let arg = |key: &str| cmdline.split_whitespace().find_map(|w| w.strip_prefix(key)).map(String::from);
    let ip =
        |args: &[&str]| std::process::Command::new("/bin/ip").args(args).status().map(|s| s.success()).unwrap_or(false);
    ip(&["link", "set", "lo", "up"]);
    if let Some(addr) = arg("micro_os.ip=") {
        // the NIC appears once virtio_net has probed it
        let deadline = Instant::now() + Duration::from_secs(5);
        while !Path::new("/sys/class/net/eth0").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !(ip(&["addr", "add", &addr, "dev", "eth0"]) && ip(&["link", "set", "eth0", "up"])) {
            problems.push(format!("configure eth0 with {addr}"));
        }
    }
    if let Some(name) = arg("micro_os.hostname=") {
        let _ = nix::unistd::sethostname(name);
    }
    problems
}

/// The virtio-serial port the daemon's control channel arrives on.
fn guest_port() -> Option<PathBuf> {
    for e in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        if std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == "micro-os.ctl") {
            return Some(Path::new("/dev").join(e.file_name()));
        }
    }
    None
}

fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    std::process::exit(0)
}

type Channel = (Box<dyn Write + Send>, Box<dyn std::io::Read + Send>);

/// The VM's libp2p peer accepts messages from the peers the daemon names, and from the
/// members of its circuits, which may be VMs of other hosts.
#[derive(Default)]
struct AgentPolicy(std::sync::RwLock<std::collections::HashSet<PeerId>>, std::sync::OnceLock<Arc<Replicas>>);

impl p2p::Policy for AgentPolicy {
    fn known(&self, peer: &PeerId) -> bool {
        self.0.read().unwrap().contains(peer) || self.1.get().is_some_and(|r| r.admits(peer))
    }
}

/// How the VM's peer dials its siblings (`AGENT_P2P_TRANSPORT_ENV`): over TCP with a
/// security protocol first, or over QUIC (then it also listens on QUIC, at the TCP port).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    Tcp(p2p::Security),
    Quic,
}

impl Transport {
    fn from_env() -> Transport {
        match std::env::var(AGENT_P2P_TRANSPORT_ENV).as_deref() {
            Err(_) => Transport::Tcp(p2p::Security::Auto),
            Ok("quic") => Transport::Quic,
            Ok(s) => s.parse().map(Transport::Tcp).unwrap_or_else(|e| {
                eprintln!("micro-os-agent: {AGENT_P2P_TRANSPORT_ENV}: {e} (nor quic); using auto");
                Transport::Tcp(p2p::Security::Auto)
            }),
        }
    }

    /// Where to dial a sibling the daemon names by its TCP address.
    fn sibling(self, addr: Multiaddr) -> Multiaddr {
        if self != Transport::Quic {
            return addr;
        }
        addr.iter()
            .flat_map(|p| match p {
                Protocol::Tcp(port) => vec![Protocol::Udp(port), Protocol::QuicV1],
                p => vec![p],
            })
            .collect()
    }
}

/// The VM's peer: the runtime it runs on, its handle, and the VM's circuit members.
#[derive(Clone)]
struct Peer {
    rt: tokio::runtime::Handle,
    p2p: p2p::Handle,
    circuits: Option<Arc<Replicas>>,
}

/// Starts the VM's libp2p peer on its own thread (a small single-threaded runtime), and
/// the members of the circuits the VM is in (reopened from their stores).
fn start_p2p(key: Keypair, policy: Arc<AgentPolicy>, transport: Transport, token: Option<PathBuf>) -> Option<Peer> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("micro-os-agent: no runtime for p2p: {e}");
                return;
            }
        };
        rt.block_on(async move {
            let mut listen: Vec<Multiaddr> = vec![format!("/ip4/0.0.0.0/tcp/{AGENT_P2P_PORT}").parse().expect("valid")];
            // QUIC only when asked: on the VM bridge a sibling that also knew our QUIC
            // address (mDNS announces every listen address) dialed both at once, and QUIC's
            // shorter handshake won, though it carries a stream at half the speed of TLS
            // over TCP here (bench/RESULTS.md)
            if transport == Transport::Quic {
                listen.push(format!("/ip4/0.0.0.0/udp/{AGENT_P2P_PORT}/quic-v1").parse().expect("valid"));
            }
            let cfg = p2p::Config {
                listen,
                // the VM's network is the VM bridge: mDNS finds its sibling VMs there
                mdns: true,
                inbox: Some(PathBuf::from(INBOX)),
                // the host holds the DHT for its VMs; siblings connect only when they talk
                leaf: true,
                security: match transport {
                    Transport::Tcp(s) => s,
                    Transport::Quic => p2p::Security::Auto,
                },
                ..p2p::Config::default()
            };
            // nonces journaled in the VM's root, so a restarted VM still refuses replays
            let nonces = p2p::net::FileNonces::open(Path::new(KEY_PATH).with_file_name("nonces"));
            match p2p::spawn(key, cfg, Box::new(nonces), policy.clone()) {
                Ok(h) => {
                    let circuits = match Replicas::start(h.clone(), PathBuf::from(CIRCUITS)).await {
                        Ok(r) => {
                            let _ = policy.1.set(r.clone());
                            if let Some(token) = token {
                                tokio::spawn(local::serve(r.clone(), token));
                            }
                            Some(r)
                        }
                        Err(e) => {
                            eprintln!("micro-os-agent: circuits: {e}");
                            None
                        }
                    };
                    let _ = tx.send(Peer { rt: tokio::runtime::Handle::current(), p2p: h, circuits });
                    std::future::pending::<()>().await;
                }
                Err(e) => eprintln!("micro-os-agent: p2p: {e}"),
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(5)).ok()
}

fn connect(socket: &Path, guest: bool) -> Option<Channel> {
    if guest {
        let port = guest_port()?;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(port).ok()?;
        let r = f.try_clone().ok()?;
        return Some((Box::new(f), Box::new(r)));
    }
    let s = UnixStream::connect(socket).ok()?;
    let r = s.try_clone().ok()?;
    Some((Box::new(s), Box::new(r)))
}

const USAGE: &str = "usage: micro-os-agent [--guest] [--control-dir DIR]

The first process of a micro-os VM; the daemon starts it, it is not meant to be run by hand.
  --guest            PID 1 of a qemu guest: mount /proc, /sys, /dev, load the virtio modules,
                     configure eth0 from the kernel command line, talk over virtio-serial
  --control-dir DIR  directory of the daemon's control socket (default /run/micro-os/ctl)";

fn main() -> std::process::ExitCode {
    // what the VM's peer and its circuit members have to say goes to the VM's console log
    // (`MICRO_OS_AGENT_LOG`, a tracing filter, says more)
    let filter = std::env::var("MICRO_OS_AGENT_LOG")
        .unwrap_or_else(|_| "warn,micro_os_p2p=info,micro_os_circuit=info,openraft=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let mut args = std::env::args().skip(1);
    let (mut guest, mut control_dir) = (false, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--guest" => guest = true,
            "--control-dir" => match args.next() {
                Some(d) => control_dir = Some(PathBuf::from(d)),
                None => return usage("--control-dir needs a directory"),
            },
            "--version" | "-V" => {
                println!("micro-os-agent {}", env!("CARGO_PKG_VERSION"));
                return std::process::ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return std::process::ExitCode::SUCCESS;
            }
            other => return usage(&format!("unexpected argument {other:?}")),
        }
    }
    std::process::ExitCode::from(run(control_dir, guest).clamp(0, 255) as u8)
}

fn usage(why: &str) -> std::process::ExitCode {
    eprintln!("micro-os-agent: {why}\n{USAGE}");
    std::process::ExitCode::from(2)
}

fn run(control_dir: Option<PathBuf>, guest: bool) -> i32 {
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGQUIT] {
        // SAFETY: the handler only stores into an atomic.
        let _ = unsafe { signal::signal(sig, SigHandler::Handler(on_signal)) };
    }
    let socket = control_dir.unwrap_or_else(|| PathBuf::from(AGENT_CONTROL_DIR)).join(AGENT_CONTROL_SOCKET);
    let mut problems = if guest { guest_setup() } else { Vec::new() };
    if guest && std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("micro_os.probe=1")) {
        eprintln!("micro-os-agent: probe boot done");
        power_off();
    }
    let key = identity(Path::new(KEY_PATH));
    let peer_id = match &key {
        Ok(k) => k.public().to_peer_id().to_string(),
        Err(e) => {
            problems.push(format!("identity: {e}"));
            String::new()
        }
    };
    let policy = Arc::new(AgentPolicy::default());
    let transport = Transport::from_env();
    // a sandbox VM's control directory holds the token of the local circuit endpoint
    let token = (!guest).then(|| socket.with_file_name(micro_os_core::vm::AGENT_CIRCUIT_TOKEN_FILE));
    let p2p = key.ok().and_then(|k| start_p2p(k, policy.clone(), transport, token));
    match &p2p {
        None => problems.push("p2p: the peer did not start".into()),
        Some(p) if p.circuits.is_none() => problems.push("circuits: the members did not start".into()),
        Some(_) => {}
    }
    eprintln!("micro-os-agent: pid {}, peer id {peer_id}", std::process::id());
    let link = Arc::new(Link { stream: Mutex::new(None) });
    let shutdown = Arc::new(Mutex::new(None::<f64>));
    let connected = Arc::new(AtomicBool::new(false));
    let mut last_report = Instant::now() - REPORT_EVERY;
    loop {
        reap();
        // (re)connect to the daemon; a restarted daemon makes a new socket
        if !connected.load(Ordering::SeqCst) {
            if let Some((w, r)) = connect(&socket, guest) {
                *link.stream.lock().unwrap() = Some(w);
                connected.store(true, Ordering::SeqCst);
                link.send(&AgentMessage::Hello { peer_id: peer_id.clone(), version: env!("CARGO_PKG_VERSION").into() });
                link.send(&AgentMessage::Ready);
                let shutdown = shutdown.clone();
                let connected = connected.clone();
                let (policy, p2p, link) = (policy.clone(), p2p.clone(), link.clone());
                std::thread::spawn(move || {
                    for line in BufReader::new(r).lines() {
                        let Ok(line) = line else { break };
                        match serde_json::from_str(&line) {
                            Ok(DaemonMessage::Shutdown { grace_s }) => *shutdown.lock().unwrap() = Some(grace_s),
                            Ok(DaemonMessage::Peers { peers, host }) => {
                                if let (Some(peer), Some(addr)) = (&p2p, host.and_then(|a| a.parse::<Multiaddr>().ok()))
                                {
                                    if let Some(Protocol::P2p(id)) = addr.iter().last() {
                                        peer.p2p.add_dht_peer_blocking(id, addr);
                                    }
                                }
                                let mut known = std::collections::HashSet::new();
                                for p in peers {
                                    if let Ok(id) = p.parse::<PeerId>() {
                                        known.insert(id);
                                    } else if let Ok(addr) = p.parse::<Multiaddr>() {
                                        if let Some(Protocol::P2p(id)) = addr.iter().last() {
                                            known.insert(id);
                                            if let Some(peer) = &p2p {
                                                peer.p2p.add_address_blocking(id, transport.sibling(addr));
                                            }
                                        }
                                    }
                                }
                                *policy.0.write().unwrap() = known;
                            }
                            Ok(DaemonMessage::Send { id, job }) => {
                                let link = link.clone();
                                match &p2p {
                                    Some(peer) => {
                                        let h = peer.p2p.clone();
                                        peer.rt.spawn(async move {
                                            let report = h.run(job).await;
                                            link.send(&AgentMessage::SendResult { id, report });
                                        });
                                    }
                                    None => {
                                        let report = SendReport::failed("the VM's p2p peer is not running");
                                        link.send(&AgentMessage::SendResult { id, report });
                                    }
                                }
                            }
                            Ok(DaemonMessage::Provide { keys }) => {
                                if let Some(peer) = &p2p {
                                    peer.p2p.provide_blocking(keys);
                                }
                            }
                            Ok(DaemonMessage::Query { id, query }) => {
                                let link = link.clone();
                                match &p2p {
                                    Some(peer) => {
                                        let h = peer.p2p.clone();
                                        peer.rt.spawn(async move {
                                            let result = match query {
                                                Query::Status => h
                                                    .status()
                                                    .await
                                                    .ok_or_else(|| "the p2p layer is down".to_string())
                                                    .and_then(|s| serde_json::to_value(s).map_err(|e| e.to_string())),
                                                Query::Find { key } => {
                                                    h.find(key).await.map_err(|e| e.to_string()).and_then(|p| {
                                                        serde_json::to_value(p).map_err(|e| e.to_string())
                                                    })
                                                }
                                            };
                                            link.send(&AgentMessage::Answer { id, result });
                                        });
                                    }
                                    None => {
                                        let result = Err("the VM's p2p peer is not running".into());
                                        link.send(&AgentMessage::Answer { id, result });
                                    }
                                }
                            }
                            Ok(DaemonMessage::Circuit { id, call }) => {
                                let link = link.clone();
                                match p2p.as_ref().and_then(|p| Some((p.rt.clone(), p.circuits.clone()?))) {
                                    Some((rt, circuits)) => {
                                        rt.spawn(async move {
                                            let result = Ok(circuits.call(call).await);
                                            link.send(&AgentMessage::Answer { id, result });
                                        });
                                    }
                                    None => {
                                        let result = Err("the VM's circuit members are not running".into());
                                        link.send(&AgentMessage::Answer { id, result });
                                    }
                                }
                            }
                            Err(e) => eprintln!("micro-os-agent: a daemon message is not valid: {e}"),
                        }
                    }
                    connected.store(false, Ordering::SeqCst);
                });
                last_report = Instant::now() - REPORT_EVERY;
            }
        }
        let sig = SIGNAL.swap(0, Ordering::SeqCst);
        let asked = shutdown.lock().unwrap().take();
        if asked.is_some() || sig == libc::SIGTERM || sig == libc::SIGINT {
            let reason = if asked.is_some() { "asked by the daemon".to_string() } else { format!("signal {sig}") };
            link.send(&AgentMessage::Bye { reason: reason.clone() });
            stop_all(Duration::from_secs_f64(asked.unwrap_or(DEFAULT_GRACE).clamp(0.0, 3600.0)));
            eprintln!("micro-os-agent: stopped ({reason})");
            if guest {
                power_off();
            }
            return 0;
        }
        if sig != 0 && std::process::id() == 1 {
            // forward the others to every process of the VM
            if let Ok(s) = Signal::try_from(sig) {
                let _ = signal::kill(Pid::from_raw(-1), s);
            }
        }
        if last_report.elapsed() >= REPORT_EVERY && connected.load(Ordering::SeqCst) {
            link.send(&AgentMessage::Health { load1: load1(), processes: others(), problems: problems.clone() });
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_quic_a_sibling_is_dialed_at_its_udp_port() {
        let id = Keypair::generate_ed25519().public().to_peer_id();
        let tcp: Multiaddr = format!("/ip4/10.77.0.3/tcp/4001/p2p/{id}").parse().unwrap();
        let quic: Multiaddr = format!("/ip4/10.77.0.3/udp/4001/quic-v1/p2p/{id}").parse().unwrap();
        assert_eq!(Transport::Quic.sibling(tcp.clone()), quic);
        assert_eq!(Transport::Tcp(p2p::Security::Tls).sibling(tcp.clone()), tcp);
    }
}
