//! Attacks from inside a container that must fail (issue 16): each class of system call
//! an escape or a host-wide change starts with is refused with its errno, and its effect
//! is looked for and not found. The calls are made by a small static probe
//! (`tests/probe/probe.rs`) in an image of its own, so they are the raw system calls and
//! not whatever a busybox applet happens to try.
//!
//! Then the floods: a fork bomb bounded by its pids limit, a memory bomb by its memory
//! limit, a log flood by log rotation, none of them felt by a neighbour container or by
//! the daemon's API.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// The probe, compiled once per test process: a static binary, since the image it goes
/// into has no libraries.
fn probe_binary() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/probe/probe.rs");
        // built afresh by each test process (a third of a second), renamed into place
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = dir.join(format!("attack-probe.{}", std::process::id()));
        // the rustc beside the cargo that builds this test (rustup's toolchain directory)
        let beside = Path::new(env!("CARGO")).with_file_name("rustc");
        let rustc = if beside.exists() { beside } else { PathBuf::from("rustc") };
        let o = Command::new(&rustc)
            .args(["--edition", "2021", "-O", "-C", "target-feature=+crt-static", "-C", "panic=abort", "-o"])
            .arg(&out)
            .arg(src)
            .output()
            .unwrap_or_else(|e| panic!("{} cannot be run: {e}", rustc.display()));
        assert!(o.status.success(), "the probe does not build: {}", String::from_utf8_lossy(&o.stderr));
        let probe = dir.join("attack-probe");
        std::fs::rename(&out, &probe).unwrap();
        probe
    })
}

/// An image `probe`: busybox and the probe at `/probe`, built from a directory.
fn probe_image(d: &Daemon) {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(root.path().join("mnt")).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "grep", "readlink", "wc", "ls", "unshare", "nsenter", "sleep", "test"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    std::fs::copy(probe_binary(), root.path().join("probe")).unwrap();
    d.ok(&["image", "build", "--from-dir", root.path().to_str().unwrap(), "--name", "probe"]);
}

/// What the container prints before the probe's lines.
const MARK: &str = "--- probe";

/// Runs the probe with `attacks` in a container of the probe image, after the shell
/// command `before` (its output comes first); returns the whole output and each attack's
/// outcome (`refused EPERM`, `allowed 3`).
fn probe(d: &Daemon, before: &str, attacks: &[&str]) -> (String, HashMap<String, String>) {
    let script = format!("{before} echo {MARK}; /probe {} 2>&1", attacks.join(" "));
    let o = d.cli(&["container", "run", "--rm", "--image", "probe", "--", "sh", "-c", &script]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "probe failed: {out}\n{}", String::from_utf8_lossy(&o.stderr));
    let outcomes: HashMap<String, String> = out
        .split(&format!("{MARK}\n"))
        .nth(1)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for a in attacks {
        let name = a.split('=').next().unwrap();
        assert!(outcomes.contains_key(name), "no outcome for {name}: {out}");
    }
    (out, outcomes)
}

/// Each of `attacks` (by name) came back refused with `errno`.
fn refused(outcomes: &HashMap<String, String>, attacks: &[&str], errno: &str, out: &str) {
    for a in attacks {
        let name = a.split('=').next().unwrap();
        assert_eq!(outcomes[name], format!("refused {errno}"), "{name}: {out}");
    }
}

fn start(test: &str) -> Option<Daemon> {
    if !require(test, CONTAINERS) {
        return None;
    }
    let d = Daemon::start();
    probe_image(&d);
    Some(d)
}

#[test]
fn mounting_is_refused() {
    let Some(d) = start("mounting_is_refused") else { return };
    let attacks = ["mount", "umount", "fsopen", "open_tree", "pivot_root"];
    let (out, o) = probe(&d, "mount -t proc proc /mnt 2>&1;", &attacks);
    refused(&o, &attacks, "EPERM", &out);
    // chroot needs CAP_SYS_CHROOT, which a container does not keep
    let (out2, o2) = probe(&d, "", &["chroot"]);
    refused(&o2, &["chroot"], "EPERM", &out2);
    assert!(out.contains("mount: permission denied"), "busybox mount: {out}");
    // nothing was mounted, nothing unmasked (the host's /proc/keys lists keys)
    let (mounts, _) = probe(&d, "grep -c ' /mnt ' /proc/mounts; echo keys $(wc -c < /proc/keys);", &[]);
    assert!(mounts.starts_with("0\n"), "{mounts}");
    if !std::fs::read_to_string("/proc/keys").unwrap_or_default().is_empty() {
        assert!(mounts.contains("keys 0\n"), "/proc/keys is masked: {mounts}");
    }
}

#[test]
fn new_namespaces_are_refused() {
    let Some(d) = start("new_namespaces_are_refused") else { return };
    let attacks = [
        "unshare_user",
        "unshare_net",
        "unshare_mount",
        "clone_user",
        "clone_net",
        "clone_mount",
        "clone_pid",
        "clone_ipc_uts_cgroup",
        "setns=/proc/1/ns/mnt",
    ];
    let (out, o) = probe(&d, "unshare -U -n -m true; echo ns $(readlink /proc/self/ns/user);", &attacks);
    refused(&o, &attacks, "EPERM", &out);
    assert!(out.contains("Operation not permitted"), "busybox unshare: {out}");
    // clone3 hides its flags from seccomp: ENOSYS, and libc falls back to clone, whose
    // flags are checked; threads and forks go on working
    let (out, o) = probe(&d, "", &["clone3_user", "clone3_plain", "thread"]);
    refused(&o, &["clone3_user", "clone3_plain"], "ENOSYS", &out);
    assert_eq!(o["thread"], "allowed 0", "a thread starts through clone: {out}");
    // the container's processes are all in the namespaces it started with
    let (out, _) = probe(&d, "for p in 1/ns/user self/ns/user 1/ns/net self/ns/net; do readlink /proc/$p; done;", &[]);
    let ns: Vec<&str> = out.lines().take_while(|l| *l != MARK).collect();
    assert_eq!(ns.len(), 4, "{out}");
    assert_eq!((ns[0], ns[2]), (ns[1], ns[3]), "{out}");
}

#[test]
fn the_kernel_keyring_is_refused() {
    let Some(d) = start("the_kernel_keyring_is_refused") else { return };
    let desc = format!("micro-os-attack-{}", d.port);
    let attacks = [format!("add_key={desc}"), format!("keyctl={desc}"), format!("request_key={desc}")];
    let attacks: Vec<&str> = attacks.iter().map(String::as_str).collect();
    let (out, o) = probe(&d, "", &attacks);
    refused(&o, &attacks, "EPERM", &out);
    // no key or keyring of that name anywhere on the host (root sees its own uid's keys,
    // and a container runs as the host's uid 0)
    let keys = std::fs::read_to_string("/proc/keys").unwrap_or_default();
    assert!(!keys.contains(&desc), "{keys}");
}

#[test]
fn bpf_is_refused() {
    let Some(d) = start("bpf_is_refused") else { return };
    let (out, o) = probe(&d, "", &["bpf_map", "bpf_prog"]);
    refused(&o, &["bpf_map", "bpf_prog"], "EPERM", &out);
    // and no bpf filesystem to pin anything in
    let (out, _) = probe(&d, "grep -c bpf /proc/mounts;", &[]);
    assert!(out.starts_with("0\n"), "{out}");
}

#[test]
fn host_processes_cannot_be_traced() {
    let Some(d) = start("host_processes_cannot_be_traced") else { return };
    let pid = d.pid().unwrap();
    let attacks = [
        format!("ptrace_pid={pid}"),
        format!("process_vm_readv_pid={pid}"),
        // a process of its own, which ptrace's own rules would allow: seccomp refuses
        "ptrace_child".to_string(),
        "process_vm_readv_child".to_string(),
    ];
    let attacks: Vec<&str> = attacks.iter().map(String::as_str).collect();
    let before = format!("test -e /proc/{pid} && echo DAEMON-VISIBLE; ls /proc | grep -c '^[0-9]';");
    let (out, o) = probe(&d, &before, &attacks);
    refused(&o, &attacks, "EPERM", &out);
    // the daemon's pid names nothing in the container's pid namespace, where a handful of
    // processes are all there is
    assert!(!out.contains("DAEMON-VISIBLE"), "{out}");
    let procs: usize = out.lines().next().unwrap().trim().parse().unwrap();
    assert!(procs <= 4, "{out}");
    // the daemon was not stopped by an attach
    let state = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(state.contains("TracerPid:\t0"), "{state}");
    d.ok(&["container", "list"]);
}

#[test]
fn raw_sockets_are_refused() {
    let Some(d) = start("raw_sockets_are_refused") else { return };
    let (out, o) = probe(&d, "", &["raw_inet", "raw_packet"]);
    refused(&o, &["raw_inet", "raw_packet"], "EPERM", &out);
    let (out, _) = probe(&d, "grep -E '^Cap(Eff|Bnd):' /proc/self/status;", &[]);
    for line in out.lines().take_while(|l| *l != MARK) {
        let caps = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(caps & (1 << 13), 0, "CAP_NET_RAW kept: {out}");
    }
}

#[test]
fn kernel_settings_cannot_be_written() {
    let Some(d) = start("kernel_settings_cannot_be_written") else { return };
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let swappiness = read("/proc/sys/vm/swappiness").trim().parse::<u32>().unwrap();
    let other = (swappiness + 7) % 100;
    let thp = "/sys/kernel/mm/transparent_hugepage/enabled";
    let panic = read("/proc/sys/kernel/panic").trim().parse::<u32>().unwrap_or(0);
    let before = [read("/proc/sys/vm/swappiness"), read("/proc/sys/kernel/panic"), read(thp)];
    let attacks = [
        ("/proc/sys/vm/swappiness", other.to_string()),
        ("/proc/sys/kernel/panic", (panic + 1).to_string()),
        // `h` only prints help to the kernel log, were it to pass
        ("/proc/sysrq-trigger", "h".to_string()),
        (thp, "never".to_string()),
    ];
    let mut outs = String::new();
    for (path, value) in &attacks {
        let shell = format!("echo {other} > /proc/sys/vm/swappiness; echo 1 > /sys/kernel/profiling;");
        let (out, o) = probe(&d, &shell, &[&format!("write={path}:{value}")]);
        // a file this kernel does not have is not there in the container either
        let want = if Path::new(path).exists() { "refused EROFS" } else { "refused ENOENT" };
        assert_eq!(o["write"], want, "{path}: {out}");
        assert!(out.contains("Read-only file system"), "the shell's writes: {out}");
        outs.push_str(&out);
    }
    // the cgroup hierarchy is not there to raise a limit in, nor can sysfs get a new file
    let (out, o) = probe(&d, "touch /sys/kernel/x;", &["write=/sys/fs/cgroup/pids.max:max"]);
    assert_eq!(o["write"], "refused ENOENT", "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let after = [read("/proc/sys/vm/swappiness"), read("/proc/sys/kernel/panic"), read(thp)];
    assert_eq!(before, after, "{outs}");
}

#[test]
fn kernel_and_device_calls_are_refused() {
    let Some(d) = start("kernel_and_device_calls_are_refused") else { return };
    let attacks = [
        // shocker: a file of the host by a guessed handle
        "open_by_handle_at",
        "name_to_handle_at",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "iopl",
        "swapoff",
        "settime",
        // a device node of the host's first disk: no CAP_MKNOD
        "mknod",
    ];
    let (out, o) = probe(&d, "", &attacks);
    refused(&o, &attacks, "EPERM", &out);
    let (out, _) = probe(&d, "test -e /tmp/sda && echo NODE; ls /dev;", &[]);
    assert!(!out.contains("NODE") && !out.contains("sda"), "{out}");
}

/// Asks the daemon's API for the container list every 100 ms on a thread of its own, as
/// an operator's client would, until [`ApiWatch::finish`]: the slowest answer.
struct ApiWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Duration, usize)>,
}

impl ApiWatch {
    fn start(d: &Daemon) -> ApiWatch {
        let (url, token) = (format!("{}/api/v1/containers", d.url()), d.token());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut slowest, mut asked) = (Duration::ZERO, 0);
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let r = ureq::get(&url)
                    .set("Authorization", &format!("Bearer {token}"))
                    .timeout(Duration::from_secs(5))
                    .call();
                let took = if r.is_ok() { t.elapsed() } else { Duration::MAX };
                slowest = slowest.max(took);
                asked += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (slowest, asked)
        });
        ApiWatch { stop, thread }
    }

    /// Stops asking; insists that every answer came within a second.
    fn finish(self) -> Duration {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (slowest, asked) = self.thread.join().unwrap();
        assert!(asked >= 5, "the API was asked {asked} times");
        assert!(slowest < Duration::from_secs(1), "the daemon's API took {slowest:?} to answer");
        slowest
    }
}

/// A neighbour that prints `beat` every 200 ms.
fn start_neighbour(d: &Daemon) {
    d.ok(&[
        "container",
        "create",
        "--name",
        "calm",
        "--image",
        "busybox",
        "--resources",
        "memory=32M,pids=16",
        "--",
        "sh",
        "-c",
        "while true; do echo beat; sleep 0.2; done",
    ]);
    d.ok(&["container", "start", "calm"]);
}

/// The neighbour's heartbeats since `since`: how many, and the longest silence between
/// two of them (or since `since`, or until now).
fn heartbeats(d: &Daemon, since: chrono::DateTime<chrono::Utc>) -> (usize, Duration) {
    let logs = d.ok(&["container", "logs", "--name", "calm", "--timestamps"]);
    let mut times: Vec<chrono::DateTime<chrono::Utc>> = logs
        .lines()
        .filter(|l| l.ends_with(" beat"))
        .filter_map(|l| chrono::DateTime::parse_from_rfc3339(l.split(' ').next()?).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .filter(|t| *t >= since)
        .collect();
    let n = times.len();
    times.insert(0, since);
    times.push(chrono::Utc::now());
    let gap = times.windows(2).map(|w| (w[1] - w[0]).to_std().unwrap_or_default()).max().unwrap_or_default();
    (n, gap)
}

/// The neighbour beat on through `since`..now (a beat every 200 ms; a silence of 2 s
/// would be the neighbour starved) and still runs commands.
fn neighbour_unaffected(d: &Daemon, since: chrono::DateTime<chrono::Utc>) {
    let window = (chrono::Utc::now() - since).to_std().unwrap();
    let (beats, gap) = heartbeats(d, since);
    assert!(beats as f64 >= window.as_secs_f64() * 2.0, "{beats} beats in {window:?}");
    assert!(gap < Duration::from_secs(2), "the neighbour was silent for {gap:?}");
    let t = Instant::now();
    assert_eq!(d.ok(&["container", "exec", "--name", "calm", "--", "echo", "alive"]).trim(), "alive");
    assert!(t.elapsed() < Duration::from_secs(5), "exec took {:?}", t.elapsed());
    assert_eq!(d.inspect("calm")["state"], "running");
}

/// The directory of a container's cgroup in controller `controller` (v1) or the unified one.
fn cgroup_dir(controller: &str, id: &str) -> PathBuf {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from(format!("/sys/fs/cgroup/micro-os/{id}"))
    } else {
        PathBuf::from(format!("/sys/fs/cgroup/{controller}/micro-os/{id}"))
    }
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn a_fork_bomb_is_bounded_by_its_pids_limit() {
    if !require("a_fork_bomb_is_bounded_by_its_pids_limit", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    start_neighbour(&d);
    std::thread::sleep(Duration::from_millis(500));
    let api = ApiWatch::start(&d);
    let since = chrono::Utc::now();
    d.ok(&[
        "container",
        "create",
        "--name",
        "bomb",
        "--image",
        "busybox",
        "--resources",
        "cpu=0.5,memory=64M,pids=32",
        "--",
        "sh",
        "-c",
        "f() { f | f & }; f; sleep 60",
    ]);
    d.ok(&["container", "start", "bomb"]);
    let id = d.inspect("bomb")["id"].as_str().unwrap().to_string();
    let pids = cgroup_dir("pids", &id);
    let (mut most, t) = (0, Instant::now());
    while t.elapsed() < Duration::from_secs(5) {
        most = most.max(read_number(&pids.join("pids.current")).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(most <= 32, "{most} processes under a limit of 32");
    // the bomb did hit the limit: forks were refused
    let events = std::fs::read_to_string(pids.join("pids.events")).unwrap();
    let refused: u64 = events.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(refused > 0 && most >= 16, "the bomb never reached its limit: {most} processes, {events}");
    neighbour_unaffected(&d, since);
    eprintln!("fork bomb: at most {most} processes, {refused} forks refused; API slowest {:?}", api.finish());
    // and it is stopped as any container is
    let t = Instant::now();
    d.ok(&["container", "rm", "--force", "--name", "bomb"]);
    assert!(t.elapsed() < Duration::from_secs(10), "rm took {:?}", t.elapsed());
    // its shim removes the cgroup (runc delete) right after the last process is gone
    while pids.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pids.exists(), "the bomb's cgroup is still there after {:?}", t.elapsed());
}

#[test]
fn a_memory_bomb_is_bounded_by_its_limit() {
    if !require("a_memory_bomb_is_bounded_by_its_limit", CONTAINERS) {
        return;
    }
    let d = Daemon::start();
    start_neighbour(&d);
    std::thread::sleep(Duration::from_millis(500));
    let api = ApiWatch::start(&d);
    let since = chrono::Utc::now();
    // each awk doubles a string until the OOM killer takes it; the last one ends the container
    let grow = "awk 'BEGIN{s=\"x\"; while(1){s=s s}}'";
    let script = format!("for i in 1 2 3 4 5; do {grow}; echo killed $?; done; exec {grow}");
    d.ok(&[
        "container",
        "create",
        "--name",
        "hog",
        "--image",
        "busybox",
        "--resources",
        "memory=32M",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    d.ok(&["container", "start", "hog"]);
    let id = d.inspect("hog")["id"].as_str().unwrap().to_string();
    let memory = cgroup_dir("memory", &id);
    let limit = 32u64 << 20;
    let (mut most, t) = (0, Instant::now());
    while t.elapsed() < Duration::from_secs(30) && d.inspect("hog")["state"] == "running" {
        for f in ["memory.usage_in_bytes", "memory.current"] {
            most = most.max(read_number(&memory.join(f)).unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = d.wait_for("hog", "exit", |c| c["state"] == "exited");
    assert_eq!((c["oom_killed"].as_bool(), c["exit_code"].as_i64()), (Some(true), Some(137)), "{c:#}");
    assert!(most <= limit, "{most} bytes under a limit of {limit}");
    let logs = d.ok(&["container", "logs", "--name", "hog"]);
    assert_eq!(logs.matches("killed 137").count(), 5, "each awk was OOM-killed: {logs}");
    neighbour_unaffected(&d, since);
    eprintln!("memory bomb: at most {most} bytes; API slowest {:?}", api.finish());
}

#[test]
fn a_log_flood_is_bounded_by_rotation() {
    if !require("a_log_flood_is_bounded_by_rotation", CONTAINERS) {
        return;
    }
    let mut d = Daemon::prepared("127.0.0.1");
    let (max_size, max_files) = (256u64 << 10, 3u64);
    d.set_config("log_max_size", serde_json::json!("256K"));
    d.set_config("log_max_files", serde_json::json!(max_files));
    d.spawn();
    // prints as fast as it can for 3 s, then 1000 numbered lines, and ends (`yes` is cut
    // off mid-line: a newline ends its last one)
    let script = "timeout 3 yes flood-flood-flood-flood-flood-flood; echo; \
                  awk 'BEGIN{for(i=0;i<1000;i++) print \"last\", i}'";
    d.ok(&["container", "create", "--name", "flood", "--image", "busybox", "--", "sh", "-c", script]);
    let dir = d.home.path().join("containers").join(d.inspect("flood")["id"].as_str().unwrap());
    // a follower from before the start reads on across every rotation
    let follow = Command::new(BIN)
        .args(["container", "logs", "--name", "flood", "--follow"])
        .env("MICRO_OS_HOME", d.home.path())
        .env("MICRO_OS_API", d.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let api = ApiWatch::start(&d);
    d.ok(&["container", "start", "flood"]);
    let on_disk = || -> (u64, usize) {
        let logs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("container.log"))
            .collect();
        (logs.iter().map(|e| e.metadata().map(|m| m.len()).unwrap_or(0)).sum(), logs.len())
    };
    let (mut most, mut files) = (0, 0);
    while d.inspect("flood")["state"] == "running" {
        let (bytes, n) = on_disk();
        (most, files) = (most.max(bytes), files.max(n));
        std::thread::sleep(Duration::from_millis(50));
    }
    let slowest = api.finish();
    assert_eq!(d.inspect("flood")["exit_code"], 0);
    let (bytes, n) = on_disk();
    (most, files) = (most.max(bytes), files.max(n));
    assert!(most <= max_size * max_files, "{most} bytes of log on disk");
    assert_eq!(files as u64, max_files, "rotated, and no more files kept than {max_files}");

    // the follower saw the flood go by (more than the disk keeps) and every last line in order
    let out = follow.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&out.stdout);
    let floods = followed.lines().filter(|l| l.starts_with("flood-")).count() as u64;
    let last: Vec<&str> = followed.lines().filter(|l| l.starts_with("last ")).collect();
    let want: Vec<String> = (0..1000).map(|i| format!("last {i}")).collect();
    let missing: Vec<&String> = want.iter().filter(|w| !last.contains(&w.as_str())).collect();
    assert!(last == want, "the follower's last lines: {} of them, missing {missing:?}", last.len());
    assert!(floods * 36 > max_size * max_files, "the follower read {floods} flood lines, fewer than were kept");
    // what is kept reads in order across the files, ending with the newest
    let all = d.ok(&["container", "logs", "--name", "flood"]);
    assert!(all.ends_with("last 998\nlast 999\n"), "{}", &all[all.len().saturating_sub(200)..]);
    let kept_last: Vec<&str> = all.lines().filter(|l| l.starts_with("last ")).collect();
    assert!(kept_last == want, "the last lines, once each and in order: {} of them", kept_last.len());
    assert!(all.len() as u64 <= max_size * max_files, "{} bytes shown", all.len());
    let tail = d.ok(&["container", "logs", "--name", "flood", "--tail", "3"]);
    assert_eq!(tail, "last 997\nlast 998\nlast 999\n");
    eprintln!("log flood: {floods} lines followed, at most {most} bytes on disk; API slowest {slowest:?}");
}
