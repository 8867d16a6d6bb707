//! What an end-to-end test needs from the machine, and what happens when it is missing.
//!
//! A test names its needs: `if !common::require("my_test", common::CONTAINERS) { return; }`.
//! When something is missing, the test skips with one `SKIP my_test: needs …` line, unless
//! the machine declared it in `MICRO_OS_TEST_REQUIRE` (a comma list of `Need` names, as
//! `.ci/run` sets it): then the test fails with a line naming what is missing and what
//! provides it. So a CI machine without runc goes red, and a developer without root
//! still gets a green run with its skips reported. `scripts/requirements.sh` checks the
//! same names before the build; keep the two lists alike.

use std::path::Path;
use std::process::{Command, Stdio};

/// The environment variable that declares what this machine must have.
pub const REQUIRE_ENV: &str = "MICRO_OS_TEST_REQUIRE";
/// A file each `SKIP` line is appended to, when set (scripts/test.sh sets it).
pub const SKIP_LOG_ENV: &str = "MICRO_OS_TEST_SKIP_LOG";

/// One thing a test may need from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Root,
    Runc,
    Busybox,
    Cgroups,
    Iproute2,
    Qemu,
    Kernel,
    Cpio,
    Strip,
    Curl,
    Npm,
    Promtool,
    Script,
    Tun,
    /// The fuzz targets (scripts/fuzz.sh, run by scripts/test.sh).
    Nightly,
}

/// What every container test needs: runc makes namespaces, mounts and cgroups.
pub const CONTAINERS: &[Need] = &[Need::Root, Need::Runc, Need::Busybox, Need::Cgroups];
/// A sandbox VM is a container in a network namespace on a bridge made with `ip`.
pub const VMS: &[Need] = &[Need::Root, Need::Runc, Need::Busybox, Need::Cgroups, Need::Iproute2];
/// What a qemu guest needs besides: qemu, the host's kernel, and the initramfs tools.
pub const QEMU: &[Need] = &[Need::Qemu, Need::Kernel, Need::Cpio, Need::Strip];

impl Need {
    pub const ALL: &'static [Need] = &[
        Need::Root,
        Need::Runc,
        Need::Busybox,
        Need::Cgroups,
        Need::Iproute2,
        Need::Qemu,
        Need::Kernel,
        Need::Cpio,
        Need::Strip,
        Need::Curl,
        Need::Npm,
        Need::Promtool,
        Need::Script,
        Need::Tun,
        Need::Nightly,
    ];

    /// The name in `MICRO_OS_TEST_REQUIRE` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Need::Root => "root",
            Need::Runc => "runc",
            Need::Busybox => "busybox",
            Need::Cgroups => "cgroups",
            Need::Iproute2 => "iproute2",
            Need::Qemu => "qemu",
            Need::Kernel => "kernel",
            Need::Cpio => "cpio",
            Need::Strip => "strip",
            Need::Curl => "curl",
            Need::Npm => "npm",
            Need::Promtool => "promtool",
            Need::Script => "script",
            Need::Tun => "tun",
            Need::Nightly => "nightly",
        }
    }

    /// What provides it (a Debian package, or what to do).
    pub fn provider(self) -> &'static str {
        match self {
            Need::Root => "run the tests as root: sudo bash scripts/test.sh",
            Need::Runc => "Debian package runc",
            Need::Busybox => "/bin/busybox from Debian package busybox-static",
            Need::Cgroups => "a cgroup v1 or v2 hierarchy mounted at /sys/fs/cgroup",
            Need::Iproute2 => "`ip` from Debian package iproute2",
            Need::Qemu => "qemu-system-x86_64 from Debian package qemu-system-x86",
            Need::Kernel => "/boot/vmlinuz-* from Debian package linux-image-amd64",
            Need::Cpio => "Debian package cpio",
            Need::Strip => "`strip` from Debian package binutils",
            Need::Curl => "Debian package curl",
            Need::Npm => "node from Debian package npm, then `npm ci` in tests/interop/js (scripts/test.sh does it)",
            Need::Promtool => "Debian package prometheus",
            Need::Script => "Debian package bsdutils",
            Need::Tun => "the kernel's TUN device, /dev/net/tun (modprobe tun)",
            Need::Nightly => "the nightly Rust toolchain (rustup toolchain install nightly), for cargo-fuzz",
        }
    }

    pub fn parse(name: &str) -> Option<Need> {
        Need::ALL.iter().copied().find(|n| n.name() == name)
    }

    /// Whether this machine has it, now.
    pub fn present(self) -> bool {
        let runs = |cmd: &str, arg: &str| {
            Command::new(cmd)
                .arg(arg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        match self {
            Need::Tun => Path::new("/dev/net/tun").exists(),
            Need::Root => nix::unistd::geteuid().is_root(),
            Need::Runc => runs("runc", "--version"),
            Need::Busybox => Path::new("/bin/busybox").is_file(),
            Need::Cgroups => {
                Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
                    || Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
            }
            Need::Iproute2 => runs("ip", "-V"),
            Need::Qemu => runs("qemu-system-x86_64", "--version"),
            Need::Kernel => std::fs::read_dir("/boot").is_ok_and(|mut rd| {
                rd.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-")))
            }),
            Need::Cpio => runs("cpio", "--version"),
            Need::Strip => runs("strip", "--version"),
            Need::Curl => runs("curl", "--version"),
            Need::Npm => runs("node", "--version") && interop_dir().join("node_modules/libp2p").is_dir(),
            Need::Promtool => runs("promtool", "--version"),
            Need::Script => runs("script", "--version"),
            Need::Nightly => Command::new("rustup")
                .args(["run", "nightly", "rustc", "--version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }
}

/// The js-libp2p peer of the interoperability test.
pub fn interop_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/js")
}

/// What a test does about its needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Run,
    /// Missing, and not declared: the line to print.
    Skip(String),
    /// Missing although declared: the panic message.
    Fail(String),
}

/// The names in a `MICRO_OS_TEST_REQUIRE` value, or the error for an unknown one.
pub fn parse_declared(value: &str) -> Result<Vec<Need>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            Need::parse(n).ok_or_else(|| {
                let known: Vec<&str> = Need::ALL.iter().map(|n| n.name()).collect();
                format!("{REQUIRE_ENV} names {n:?}, which is unknown (known: {})", known.join(", "))
            })
        })
        .collect()
}

/// The decision, without I/O: run when nothing is missing; fail when a missing need is
/// declared; skip otherwise.
pub fn decide(test: &str, needs: &[Need], declared: &[Need], present: impl Fn(Need) -> bool) -> Verdict {
    let missing: Vec<Need> = needs.iter().copied().filter(|n| !present(*n)).collect();
    if missing.is_empty() {
        return Verdict::Run;
    }
    let list =
        |ns: &[Need]| ns.iter().map(|n| format!("{} ({})", n.name(), n.provider())).collect::<Vec<_>>().join(", ");
    let required: Vec<Need> = missing.iter().copied().filter(|n| declared.contains(n)).collect();
    if required.is_empty() {
        Verdict::Skip(format!("SKIP {test}: needs {}", list(&missing)))
    } else {
        let names: Vec<&str> = required.iter().map(|n| n.name()).collect();
        Verdict::Fail(format!(
            "{test} cannot run: missing {}; {REQUIRE_ENV} declares that this machine has {}",
            list(&required),
            names.join(",")
        ))
    }
}

/// Whether `test` can run here: prints a `SKIP` line and gives false when something it
/// needs is missing and undeclared; panics when a missing need is declared.
pub fn require(test: &str, needs: &[Need]) -> bool {
    let declared = parse_declared(&std::env::var(REQUIRE_ENV).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    match decide(test, needs, &declared, Need::present) {
        Verdict::Run => true,
        Verdict::Skip(line) => {
            eprintln!("{line}");
            // libtest hides a passing test's output: scripts/test.sh lists these at the end
            if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
                use std::io::Write;
                let f = std::fs::OpenOptions::new().create(true).append(true).open(log);
                let _ = f.and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
            }
            false
        }
        Verdict::Fail(line) => panic!("{line}"),
    }
}
