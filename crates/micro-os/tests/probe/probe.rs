//! The syscall probe the attack tests (`tests/attacks.rs`) run inside a container:
//! `probe ATTACK[=ARG] ...` makes each attack's system call as an attacker would and
//! prints one line per attack, `ATTACK: refused ENAME` or `ATTACK: allowed RESULT`.
//!
//! Not a test target (no `main.rs` beside it): the test compiles it with `rustc` as a
//! static binary and puts it into an image, since the image has no libraries. std only,
//! the raw `syscall(2)` of libc, x86_64 numbers.

use std::ffi::CString;

extern "C" {
    fn syscall(n: i64, ...) -> i64;
}

const SIGCHLD: i64 = 17;
const CLONE_NEWNS: i64 = 0x0002_0000;
const CLONE_NEWCGROUP: i64 = 0x0200_0000;
const CLONE_NEWUTS: i64 = 0x0400_0000;
const CLONE_NEWIPC: i64 = 0x0800_0000;
const CLONE_NEWUSER: i64 = 0x1000_0000;
const CLONE_NEWPID: i64 = 0x2000_0000;
const CLONE_NEWNET: i64 = 0x4000_0000;

/// The result of a system call: its return value or its errno.
fn call(r: i64) -> Result<i64, i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

fn errno_name(e: i32) -> String {
    let name = match e {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        9 => "EBADF",
        13 => "EACCES",
        14 => "EFAULT",
        22 => "EINVAL",
        30 => "EROFS",
        38 => "ENOSYS",
        93 => "EPROTONOSUPPORT",
        95 => "EOPNOTSUPP",
        97 => "EAFNOSUPPORT",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// A child that only waits to be killed, for the attacks on a process of our own.
fn child() -> i64 {
    // SAFETY: a raw fork of a single-threaded process; the child only sleeps
    let pid = unsafe { syscall(57) };
    if pid == 0 {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    pid
}

fn reap(pid: i64) {
    // SAFETY: kill and wait4 of our own child
    unsafe {
        syscall(62, pid, 9);
        syscall(61, pid, 0i64, 0i64, 0i64);
    }
}

/// clone(2) (or clone3 when `three`) of a child in new namespaces `flags`; the child exits.
fn clone_ns(flags: i64, three: bool) -> Result<i64, i32> {
    let r = if three {
        // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack,
        // stack_size, tls, set_tid, set_tid_size, cgroup
        let args: [u64; 11] = [flags as u64, 0, 0, 0, SIGCHLD as u64, 0, 0, 0, 0, 0, 0];
        // SAFETY: clone3 with no stack: the child goes on as after fork and exits at once
        unsafe { syscall(435, args.as_ptr(), std::mem::size_of_val(&args)) }
    } else {
        // SAFETY: as fork
        unsafe { syscall(56, flags | SIGCHLD, 0i64, 0i64, 0i64, 0i64) }
    };
    if r == 0 {
        // SAFETY: the child leaves at once
        unsafe { syscall(231, 0i64) };
    }
    let r = call(r)?;
    // SAFETY: wait4 of the child just made
    unsafe { syscall(61, r, 0i64, 0i64, 0i64) };
    Ok(r)
}

/// open(path, O_WRONLY) and write `value` into it.
fn write_file(path: &str, value: &str) -> Result<i64, i32> {
    let p = c(path);
    // SAFETY: openat(AT_FDCWD, path, O_WRONLY)
    let fd = call(unsafe { syscall(257, -100i64, p.as_ptr(), 1i64, 0i64) })?;
    // SAFETY: write of a live buffer to the fd just opened
    let r = call(unsafe { syscall(1, fd, value.as_ptr(), value.len()) });
    // SAFETY: close of our fd
    unsafe { syscall(3, fd) };
    r
}

fn attack(name: &str, arg: &str) -> Result<i64, i32> {
    let num = |s: &str| s.parse::<i64>().unwrap_or(0);
    // SAFETY (every block below): each is one system call with valid or null pointers to
    // live locals; the calls either fail or act on this process, its children or the
    // container, which is the point of the probe
    unsafe {
        match name {
            "mount" => {
                let (src, dst, fs) = (c("none"), c("/mnt"), c("tmpfs"));
                call(syscall(165, src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0i64, 0i64))
            }
            // MNT_DETACH of /proc would uncover what the masked paths hide
            "umount" => call(syscall(166, c("/proc/kcore").as_ptr(), 2i64)),
            "fsopen" => call(syscall(430, c("tmpfs").as_ptr(), 0i64)),
            "open_tree" => call(syscall(428, -100i64, c("/").as_ptr(), 1i64)),
            "pivot_root" => call(syscall(155, c("/tmp").as_ptr(), c("/tmp").as_ptr())),
            "chroot" => call(syscall(161, c("/tmp").as_ptr())),
            "unshare_user" => call(syscall(272, CLONE_NEWUSER)),
            "unshare_net" => call(syscall(272, CLONE_NEWNET)),
            "unshare_mount" => call(syscall(272, CLONE_NEWNS)),
            "clone_user" => clone_ns(CLONE_NEWUSER, false),
            "clone_net" => clone_ns(CLONE_NEWNET, false),
            "clone_mount" => clone_ns(CLONE_NEWNS, false),
            "clone_pid" => clone_ns(CLONE_NEWPID, false),
            "clone_ipc_uts_cgroup" => clone_ns(CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP, false),
            "clone3_user" => clone_ns(CLONE_NEWUSER, true),
            // a clone3 without namespaces: what glibc's threads try first
            "clone3_plain" => clone_ns(0, true),
            "thread" => std::thread::spawn(|| 0).join().map_err(|_| 0),
            "setns" => {
                let fd = call(syscall(257, -100i64, c(arg).as_ptr(), 0i64, 0i64))?;
                call(syscall(308, fd, 0i64))
            }
            "add_key" => {
                let (t, d, v) = (c("user"), c(arg), "secret");
                // KEY_SPEC_PROCESS_KEYRING
                call(syscall(248, t.as_ptr(), d.as_ptr(), v.as_ptr(), v.len(), -2i64))
            }
            // KEYCTL_JOIN_SESSION_KEYRING: a new session keyring named `arg`
            "keyctl" => call(syscall(250, 1i64, c(arg).as_ptr())),
            "request_key" => call(syscall(249, c("user").as_ptr(), c(arg).as_ptr(), 0i64, -2i64)),
            "bpf_map" => {
                // union bpf_attr for BPF_MAP_CREATE: a hash map of one u32 → u32
                let attr: [u32; 16] = [1, 4, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                call(syscall(321, 0i64, attr.as_ptr(), std::mem::size_of_val(&attr)))
            }
            "bpf_prog" => {
                // BPF_PROG_LOAD of a socket filter `r0 = 0; exit`
                let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
                let license = c("GPL");
                let mut attr = [0u64; 16];
                attr[0] = 1 | (2 << 32); // prog_type SOCKET_FILTER, insn_cnt 2
                attr[1] = insns.as_ptr() as u64;
                attr[2] = license.as_ptr() as u64;
                call(syscall(321, 5i64, attr.as_ptr(), std::mem::size_of_val(&attr)))
            }
            // PTRACE_ATTACH
            "ptrace_pid" => call(syscall(101, 16i64, num(arg), 0i64, 0i64)),
            "ptrace_child" => {
                let pid = child();
                let r = call(syscall(101, 16i64, pid, 0i64, 0i64));
                reap(pid);
                r
            }
            "process_vm_readv_pid" | "process_vm_readv_child" => {
                let pid = if name.ends_with("child") { child() } else { num(arg) };
                let mut buf = [0u8; 8];
                let local: [usize; 2] = [buf.as_mut_ptr() as usize, 8];
                let remote: [usize; 2] = [0x40_0000, 8];
                let r = call(syscall(310, pid, local.as_ptr(), 1i64, remote.as_ptr(), 1i64, 0i64));
                if name.ends_with("child") {
                    reap(pid);
                }
                r
            }
            "raw_inet" => call(syscall(41, 2i64, 3i64, 1i64)),
            // AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)
            "raw_packet" => call(syscall(41, 17i64, 3i64, 0x0300i64)),
            "write" => {
                let (path, value) = arg.split_once(':').unwrap_or((arg, "1"));
                write_file(path, value)
            }
            "open_by_handle_at" => {
                let root = call(syscall(257, -100i64, c("/").as_ptr(), 0i64, 0i64))?;
                // struct file_handle: handle_bytes 8, handle_type 1 (ext4's), the inode of
                // the host's root as shocker guessed it
                let handle: [u32; 4] = [8, 1, 2, 0];
                call(syscall(304, root, handle.as_ptr(), 0i64))
            }
            "name_to_handle_at" => {
                let mut handle = [0u32; 34];
                handle[0] = 128;
                let mut mount_id = 0i32;
                call(syscall(303, -100i64, c("/").as_ptr(), handle.as_mut_ptr(), &mut mount_id as *mut i32, 0i64))
            }
            "kexec_load" => call(syscall(246, 0i64, 0i64, 0i64, 0i64)),
            "kexec_file_load" => call(syscall(320, -1i64, -1i64, 0i64, c("").as_ptr(), 2i64)),
            "init_module" => call(syscall(175, 0i64, 0i64, c("").as_ptr())),
            "finit_module" => call(syscall(313, -1i64, c("").as_ptr(), 0i64)),
            "delete_module" => call(syscall(176, c("ext4").as_ptr(), 0x800i64)),
            // LINUX_REBOOT_CMD_CAD_OFF: harmless even if it passed
            "reboot" => call(syscall(169, 0xfee1_deadi64, 672_274_793i64, 0i64, 0i64)),
            "perf_event_open" => {
                let mut attr = [0u32; 32];
                attr[0] = 1; // PERF_TYPE_SOFTWARE
                attr[1] = 128; // size
                call(syscall(298, attr.as_ptr(), 0i64, -1i64, -1i64, 0i64))
            }
            "userfaultfd" => call(syscall(323, 0i64)),
            "io_uring_setup" => {
                let params = [0u32; 30];
                call(syscall(425, 1i64, params.as_ptr()))
            }
            // a block device node for the host's first disk
            "mknod" => call(syscall(133, c("/tmp/sda").as_ptr(), 0o60600i64, (8i64 << 8) | 0)),
            "iopl" => call(syscall(172, 3i64)),
            "swapoff" => call(syscall(168, c("/tmp/none").as_ptr())),
            // clock_settime(CLOCK_REALTIME, the present): harmless even if it passed
            "settime" => {
                let mut ts = [0i64; 2];
                call(syscall(228, 0i64, ts.as_mut_ptr()))?;
                call(syscall(227, 0i64, ts.as_ptr()))
            }
            _ => {
                eprintln!("probe: no attack {name:?}");
                std::process::exit(2)
            }
        }
    }
}

fn main() {
    for a in std::env::args().skip(1) {
        let (name, arg) = a.split_once('=').unwrap_or((&a, ""));
        match attack(name, arg) {
            Ok(r) => println!("{name}: allowed {r}"),
            Err(e) => println!("{name}: refused {}", errno_name(e)),
        }
    }
}
