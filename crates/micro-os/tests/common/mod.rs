//! A real daemon in a temporary home on a random port, driven through the real binary.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod circuit;
mod require;
// not every test file needs it (health.rs does not)
#[allow(unused_imports)]
pub use require::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_micro-os");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Daemon {
    pub home: tempfile::TempDir,
    pub port: u16,
    /// The address the API binds (loopback unless a test says otherwise).
    pub bind: String,
    /// The uid and gid the daemon runs as, when not this process's.
    user: Option<(u32, u32)>,
    child: Option<Child>,
    /// Variables the daemon gets besides this process's environment.
    pub env: Vec<(String, String)>,
    /// The network namespace the daemon and its CLI run in (a host of a [`TestNet`]).
    pub netns: Option<String>,
}

/// nobody:nogroup on Debian.
pub const NOBODY: u32 = 65534;

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_on("127.0.0.1")
    }

    pub fn start_on(bind: &str) -> Daemon {
        let mut d = Self::prepared(bind);
        d.spawn();
        d
    }

    /// A home with its config written (and a key and token made), not yet running.
    pub fn prepared(bind: &str) -> Daemon {
        let home = tempfile::Builder::new().prefix("micro-os-test-").tempdir().unwrap();
        let port = free_port();
        // a bridge and a subnet of this test's own, so tests running at once never meet;
        // libp2p on free ports; no mDNS from the host, which would multicast on the
        // machine's own network (VMs still use it, on the test's bridge)
        let config = serde_json::json!({
            "p2p_mdns": false,
            "vm_bridge": format!("mt{port}"),
            "vm_subnet": format!("10.{}.{}.0/24", 100 + port % 100, (port / 100) % 250),
            "p2p_listen": ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"],
        });
        std::fs::write(home.path().join("config.json"), config.to_string()).unwrap();
        let d = Daemon { home, port, bind: bind.into(), user: None, child: None, env: Vec::new(), netns: None };
        d.ok(&["init"]);
        d
    }

    /// Sets one key of the config (takes effect at the next spawn).
    pub fn set_config(&self, key: &str, value: serde_json::Value) {
        let path = self.home.path().join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(path, cfg.to_string()).unwrap();
    }

    /// This node's libp2p peer id, as `init` prints it.
    pub fn peer_id(&self) -> String {
        let out = self.ok(&["init"]);
        out.lines().find_map(|l| l.strip_prefix("peer id")).expect("init prints the peer id").trim().to_string()
    }

    pub fn bridge(&self) -> String {
        format!("mt{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn home_path(&self) -> PathBuf {
        self.home.path().to_path_buf()
    }

    /// Makes the daemon run unprivileged: as nobody, owning its home, when this test runs
    /// as root (otherwise it runs as this unprivileged user already).
    pub fn unprivileged(&mut self) {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        fn chown_all(p: &std::path::Path) {
            std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY)).unwrap();
            if p.is_dir() && !p.is_symlink() {
                for e in std::fs::read_dir(p).unwrap() {
                    chown_all(&e.unwrap().path());
                }
            }
        }
        // nobody must reach the binary and the home (a home in /root/… is out of reach)
        for path in [Path::new(BIN), self.home.path()] {
            for dir in path.ancestors().skip(1) {
                let mode = std::fs::metadata(dir).unwrap().permissions().mode();
                assert!(
                    mode & 0o001 != 0,
                    "nobody cannot reach {} ({} is mode {:o}): keep the target dir and TMPDIR outside it",
                    path.display(),
                    dir.display(),
                    mode & 0o777
                );
            }
        }
        chown_all(self.home.path());
        self.user = Some((NOBODY, NOBODY));
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.home.path().join("daemon.log")).unwrap();
        let mut cmd = self.command();
        cmd.args(["daemon", "--api-addr", &format!("{}:{}", self.bind, self.port)])
            .env("MICRO_OS_HOME", self.home.path())
            .env("MICRO_OS_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((uid, gid)) = self.user {
            // std drops the supplementary groups too (setgroups(0)) before setuid
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let up = match &self.netns {
                // the API listens in the host's namespace: ask through the CLI there
                Some(_) => self.cli(&["host", "list"]).status.success(),
                None => ureq::get(&format!("{}/api/v1/health", self.url())).call().is_ok(),
            };
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not come up: {}", self.log());
    }

    /// The binary, run in the daemon's network namespace when it has one.
    fn command(&self) -> Command {
        match &self.netns {
            // nsenter, not `ip netns exec`: that remounts /sys, and the cgroup hierarchies
            // under it with it
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(BIN);
                c
            }
            None => Command::new(BIN),
        }
    }

    /// A daemon that runs in host `ns` of a [`TestNet`] at `addr`, its libp2p peer on that
    /// address (not yet running).
    pub fn prepared_in(ns: &str, addr: &str) -> Daemon {
        let mut d = Self::prepared("127.0.0.1");
        d.netns = Some(ns.to_string());
        d.set_config("p2p_listen", serde_json::json!([format!("/ip4/{addr}/tcp/0")]));
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.home.path().join("token")).unwrap().trim().to_string()
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status and how long the daemon took to go.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().expect("daemon running");
        let t = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = c.wait().unwrap();
        (status, t.elapsed())
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .env("MICRO_OS_HOME", self.home.path())
            .env("MICRO_OS_API", self.url())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "micro-os {} failed with {:?}\nstdout: {}\nstderr: {}",
            args.join(" "),
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs the CLI and insists on failure with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.cli(args);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(code), "micro-os {}: stderr {stderr}", args.join(" "));
        assert_eq!(stderr.trim().lines().count(), 1, "one error line expected: {stderr}");
        stderr
    }

    pub fn inspect(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["container", "inspect", "--name", name, "--format", "json"])).unwrap()
    }

    pub fn vm(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["vm", "inspect", "--name", name, "--format", "json"])).unwrap()
    }

    /// The host end of a sandbox VM's veth (`vh<id12>`): set it down to cut the VM off.
    pub fn veth(&self, vm: &str) -> String {
        let id = self.vm(vm)["id"].as_str().unwrap().to_string();
        format!("vh{}", &id[..12])
    }

    pub fn names(&self) -> Vec<String> {
        let v: Vec<serde_json::Value> =
            serde_json::from_str(&self.ok(&["container", "list", "--format", "json"])).unwrap();
        v.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
    }

    /// Polls `inspect` until `pred` holds.
    pub fn wait_for(&self, name: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.inspect(name);
            if pred(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "{name}: timed out waiting for {what}; last: {c:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn api(&self, method: &str, path: &str) -> ureq::Request {
        ureq::request(method, &format!("{}/api/v1{path}", self.url()))
            .set("Authorization", &format!("Bearer {}", self.token()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
        for name in self.names() {
            let _ = self.cli(&["container", "rm", "--force", "--name", &name]);
        }
        let vms: Vec<serde_json::Value> =
            serde_json::from_str(&self.ok(&["vm", "list", "--format", "json"])).unwrap_or_default();
        for v in vms {
            let _ = self.cli(&["vm", "rm", "--force", v["name"].as_str().unwrap()]);
        }
        std::thread::sleep(Duration::from_millis(200));
        self.kill9();
        let _ = Command::new("ip").args(["link", "del", &self.bridge()]).output();
    }
}

/// Moves the calling thread into network namespace `ns` (`/run/netns/ns`): a client
/// thread then reaches a daemon of a [`TestNet`] host at its loopback address.
pub fn enter_netns(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// Runs `ip` (iproute2) with `args`, insisting on success.
pub fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(o.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
}

/// Hosts on one machine, each a network namespace joined by a veth to a test bridge that
/// lives in a namespace of its own: nothing touches the machine's own interfaces, and
/// nothing is routed off it. Dropped, the namespaces go with everything in them.
pub struct TestNet {
    pub bridge_ns: String,
    pub hosts: Vec<(String, String)>,
}

impl TestNet {
    /// `n` hosts at 10.250.0.1, .2, …
    pub fn new(n: usize) -> TestNet {
        let tag = free_port();
        let bridge_ns = format!("mtb{tag}");
        ip(&["netns", "add", &bridge_ns]);
        ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for i in 1..=n {
            let ns = format!("mth{tag}-{i}");
            let port = format!("p{i}");
            let addr = format!("10.250.0.{i}");
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &bridge_ns]);
            ip(&["-n", &bridge_ns, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            hosts.push((ns, addr));
        }
        TestNet { bridge_ns, hosts }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for (ns, _) in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.bridge_ns]).output();
    }
}
