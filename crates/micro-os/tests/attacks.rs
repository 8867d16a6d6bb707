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

use common::*;

/// The probe, compiled once per test process: a static binary, since the image it goes
/// into has no libraries.
fn probe_binary() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/probe/probe.rs");
        let dir = tempfile::Builder::new().prefix("micro-os-probe-").tempdir().unwrap().keep();
        let out = dir.join("probe");
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
        out
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
