//! OCI runtime bundles (`config.json`) generated with the oci-spec crate, hardened by
//! default: a short capability allowlist, no_new_privileges, a seccomp deny list, masked
//! /proc paths and a read-only /sys.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use micro_os_core::Resources;
use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, LinuxSeccomp,
    LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscallBuilder,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
};

use crate::Result;

/// Capabilities a container keeps; everything else is dropped.
pub const CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::AuditWrite,
];

/// Syscalls the seccomp profile refuses with EPERM: mounting, namespaces, kernel modules
/// and kexec, BPF, the kernel keyring, tracing other processes, clocks and swap, and
/// io_uring (whose operations seccomp never sees, as Docker's profile refuses it).
/// Names this kernel does not know are skipped by runc.
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

const CPU_PERIOD_US: u64 = 100_000;

/// What a bundle is made from.
pub struct BundleInput<'a> {
    pub hostname: &'a str,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub resources: &'a Resources,
    pub rootfs: PathBuf,
    pub cgroups_path: String,
    /// Join this network namespace (a VM's) instead of creating a new one.
    pub netns: Option<PathBuf>,
    /// Host paths bind-mounted into the container: (source, destination, read-only).
    pub binds: Vec<(PathBuf, String, bool)>,
}

/// The `clone` flags that make new namespaces: refused as `unshare` is, since either
/// gives a process a user namespace (and in it the capabilities to reach the kernel's
/// namespaced code: netfilter, mounts) or a namespace of its own to hide in.
pub const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

pub fn seccomp_profile() -> Result<LinuxSeccomp> {
    let deny = LinuxSyscallBuilder::default()
        .names(DENIED_SYSCALLS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .build()?;
    let mut rules = vec![deny];
    // clone(2) with a namespace flag: one rule per flag, since the conditions of one rule
    // must all hold (x86's first argument is the flags)
    for flag in NAMESPACE_FLAGS {
        let arg = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(*flag)
            .value_two(*flag)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()?;
        rules.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::EPERM as u32)
                .args(vec![arg])
                .build()?,
        );
    }
    // clone3 passes its flags in memory, out of seccomp's sight: ENOSYS, so that libc
    // falls back to clone (threads, posix_spawn), whose flags are checked above
    rules.push(
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()?,
    );
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32])
        .syscalls(rules)
        .build()?)
}

pub fn spec(input: &BundleInput<'_>) -> Result<Spec> {
    // 64k open files, as chain nodes need, but never above what we may grant
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard.min(65_536))
        .unwrap_or(1024);
    let caps: HashSet<Capability> = CAPABILITIES.iter().copied().collect();
    let capabilities = oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(input.args.clone())
        .env(input.env.clone())
        .cwd(input.cwd.clone())
        .no_new_privileges(true)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(nofile)
            .hard(nofile)
            .build()?])
        .build()?;

    let mut resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?]);
    if let Some(m) = input.resources.memory {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(m.bytes() as i64).build()?);
    }
    if let Some(cpu) = input.resources.cpu {
        let quota = (cpu * CPU_PERIOD_US as f64).round() as i64;
        resources = resources.cpu(LinuxCpuBuilder::default().quota(quota).period(CPU_PERIOD_US).build()?);
    }
    if let Some(p) = input.resources.pids {
        resources = resources.pids(LinuxPidsBuilder::default().limit(p as i64).build()?);
    }

    let namespaces: Vec<LinuxNamespace> = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| {
        let mut b = LinuxNamespaceBuilder::default().typ(typ);
        if typ == LinuxNamespaceType::Network {
            if let Some(p) = &input.netns {
                b = b.path(p.clone());
            }
        }
        b.build()
    })
    .collect::<std::result::Result<_, _>>()?;

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build()?)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .seccomp(seccomp_profile()?)
        .masked_paths(
            [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
                "/sys/devices/virtual/powercap",
            ]
            .map(String::from)
            .to_vec(),
        )
        .readonly_paths(
            ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"].map(String::from).to_vec(),
        )
        .build()?;

    let mut mounts: Vec<_> = oci_spec::runtime::get_default_mounts()
        .into_iter()
        // the cgroup mount of the default list exposes the host's controllers; leave it out
        .filter(|m| m.destination() != Path::new("/sys/fs/cgroup"))
        .collect();
    for m in &mut mounts {
        if m.destination() == Path::new("/sys") {
            m.set_options(Some(["nosuid", "noexec", "nodev", "ro"].map(String::from).to_vec()));
        }
    }
    for (source, dest, ro) in &input.binds {
        let mut opts = vec!["rbind", "nosuid", "nodev"];
        if *ro {
            opts.push("ro");
        }
        mounts.push(
            MountBuilder::default()
                .destination(dest.as_str())
                .typ("bind")
                .source(source.clone())
                .options(opts.into_iter().map(String::from).collect::<Vec<_>>())
                .build()?,
        );
    }
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(["nosuid", "nodev", "mode=1777"].map(String::from).to_vec())
            .build()?,
    );

    Ok(SpecBuilder::default()
        .version("1.0.2")
        .hostname(input.hostname)
        .root(RootBuilder::default().path(input.rootfs.clone()).readonly(false).build()?)
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_os_core::Size;

    fn input(r: &Resources) -> BundleInput<'_> {
        BundleInput {
            hostname: "n",
            args: vec!["true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            resources: r,
            rootfs: "/x/rootfs".into(),
            cgroups_path: "/micro-os/abc".into(),
            netns: None,
            binds: vec![],
        }
    }

    #[test]
    fn limits_and_hardening_reach_the_json() {
        let r = Resources { cpu: Some(1.5), memory: Some(Size(64 << 20)), pids: Some(256) };
        let json = serde_json::to_value(spec(&input(&r)).unwrap()).unwrap();
        let res = &json["linux"]["resources"];
        assert_eq!(res["memory"]["limit"], 64 << 20);
        assert_eq!(res["cpu"]["quota"], 150_000);
        assert_eq!(res["cpu"]["period"], 100_000);
        assert_eq!(res["pids"]["limit"], 256);
        assert_eq!(json["process"]["noNewPrivileges"], true);
        let caps = json["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(caps.len(), CAPABILITIES.len());
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        let sc = &json["linux"]["seccomp"];
        assert_eq!(sc["defaultAction"], "SCMP_ACT_ALLOW");
        let denied = sc["syscalls"][0]["names"].as_array().unwrap();
        for s in ["mount", "unshare", "kexec_load", "bpf", "add_key", "io_uring_setup"] {
            assert!(denied.iter().any(|d| d == s), "{s}");
        }
        // clone with any namespace flag is refused, one rule per flag; clone3 is ENOSYS
        let rules = sc["syscalls"].as_array().unwrap();
        let clone: Vec<_> = rules.iter().filter(|r| r["names"][0] == "clone").collect();
        assert_eq!(clone.len(), NAMESPACE_FLAGS.len());
        for (rule, flag) in clone.iter().zip(NAMESPACE_FLAGS) {
            let arg = &rule["args"][0];
            assert_eq!((arg["index"].as_u64(), arg["op"].as_str()), (Some(0), Some("SCMP_CMP_MASKED_EQ")));
            assert_eq!((arg["value"].as_u64(), arg["valueTwo"].as_u64()), (Some(*flag), Some(*flag)));
            assert_eq!(rule["errnoRet"], libc::EPERM);
        }
        assert!(rules.iter().any(|r| r["names"][0] == "clone3" && r["errnoRet"] == libc::ENOSYS));
        assert!(json["linux"]["maskedPaths"].as_array().unwrap().iter().any(|p| p == "/proc/kcore"));
        let sys = json["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/sys").unwrap();
        assert!(sys["options"].as_array().unwrap().iter().any(|o| o == "ro"));
    }

    #[test]
    fn joins_a_given_network_namespace() {
        let r = Resources::default();
        let mut i = input(&r);
        i.netns = Some("/run/netns/vm1".into());
        let json = serde_json::to_value(spec(&i).unwrap()).unwrap();
        let net = json["linux"]["namespaces"].as_array().unwrap().iter().find(|n| n["type"] == "network").unwrap();
        assert_eq!(net["path"], "/run/netns/vm1");
        assert!(json["linux"]["resources"].get("memory").is_none());
    }
}
