//! The `qemu` driver: a hardware VM booting the host's Debian kernel and an initramfs
//! made from the image's root, whose init is the agent. KVM when a probe guest really
//! boots with it, TCG otherwise. The agent talks over a virtio-serial port whose host end
//! is qemu's client connection to the VM's control socket; the NIC is a tap on the VM
//! bridge; QMP (`qmp.sock`) pauses and resumes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;
use std::sync::Mutex;

use micro_os_core::{Driver, Vm, VmSpec};
use micro_os_runtime::boot::{self, BootFiles};
use micro_os_runtime::{cgroup, pidwait, procfs};

use crate::{host_if, BoxFuture, Capabilities, Error, Exit, Host, Recovered, Result, Signal, Started, Usage};

/// The kernel, the unpacked initramfs and the agent need this much.
const MIN_MIB: u64 = 256;

/// Whether KVM really boots a guest here: a probe boot of our own kernel and initramfs
/// whose agent powers off at once. Nested KVM can open /dev/kvm and still never run a
/// guest, so opening the device is not enough.
fn kvm_boots(boot: &BootFiles, dir: &Path) -> bool {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return false;
    }
    let log = dir.join("kvm-probe.log");
    let _ = std::fs::remove_file(&log);
    let child = std::process::Command::new("qemu-system-x86_64")
        .args(["-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-no-reboot", "-serial"])
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(&boot.initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1 micro_os.probe=1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    std::fs::read_to_string(&log).is_ok_and(|l| l.contains("probe boot done"))
}

/// The qemu command line of a VM.
fn args(vm: &Vm, boot: &BootFiles, dir: &Path, accel: &str, tap: &str, prefix: u8) -> Vec<String> {
    let id = &vm.id;
    // a stable MAC from the id: locally administered, unicast
    let mac = format!("52:54:{}:{}:{}:{}", &id[0..2], &id[2..4], &id[4..6], &id[6..8]);
    let cpu = if accel == "kvm" { "host" } else { "max" };
    let mut a: Vec<String> = [
        "-name",
        &vm.spec.name,
        "-machine",
        &format!("q35,accel={accel}"),
        "-cpu",
        cpu,
        "-m",
        &vm.spec.memory_mib.to_string(),
        "-smp",
        &(vm.spec.cpus.ceil() as u64).max(1).to_string(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["-serial".into(), format!("file:{}", dir.join("console.log").display())]);
    a.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display())]);
    a.extend([
        "-kernel".into(),
        boot.kernel.display().to_string(),
        "-initrd".into(),
        boot.initramfs.display().to_string(),
    ]);
    a.extend([
        "-append".into(),
        format!("console=ttyS0 quiet panic=-1 micro_os.ip={}/{prefix} micro_os.hostname={}", vm.address, vm.spec.name),
    ]);
    a.extend([
        "-netdev".into(),
        format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={mac}"),
    ]);
    a.extend([
        "-device".into(),
        "virtio-serial-pci".into(),
        "-chardev".into(),
        format!("socket,id=ctl,path={},reconnect=1", dir.join("ctl").join("control.sock").display()),
        "-device".into(),
        "virtserialport,chardev=ctl,name=micro-os.ctl".into(),
    ]);
    a
}

/// Runs one QMP command and returns its `return` value.
fn qmp(socket: &Path, command: &str) -> Result<serde_json::Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("qmp {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("qmp greeting: {e}"))?;
    for cmd in ["qmp_capabilities", command] {
        writeln!(s, "{}", serde_json::json!({ "execute": cmd })).map_err(|e| e.to_string())?;
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| format!("qmp {cmd}: {e}"))? == 0 {
                return Err(format!("qmp {cmd}: connection closed"));
            }
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(format!("qmp {cmd}: {e}"));
            }
            if cmd == command {
                return Ok(v["return"].clone());
            }
            break;
        }
    }
    unreachable!("the loop returns on the command's reply")
}

/// An exit whose status nobody could read: counted as a failure, as a sandbox's lost
/// shim is.
fn lost(why: &str) -> Exit {
    Exit { code: 255, error: Some(why.to_string()), ..Exit::code(255) }
}

pub struct Qemu {
    host: Host,
    /// The accelerator guests use, once probed ("kvm" or "tcg").
    accel: Mutex<Option<&'static str>>,
}

impl Qemu {
    pub fn new(host: Host) -> Qemu {
        Qemu { host, accel: Mutex::new(None) }
    }

    /// KVM when a probe guest really boots with it, TCG otherwise (said once, in one
    /// warning line).
    fn accel(&self, boot: &BootFiles, dir: &Path) -> &'static str {
        let mut cached = self.accel.lock().unwrap();
        if let Some(a) = *cached {
            return a;
        }
        let a = if kvm_boots(boot, dir) {
            "kvm"
        } else {
            tracing::warn!(
                "KVM cannot boot a guest on this host (nested or absent): qemu VMs use TCG, which is slower"
            );
            "tcg"
        };
        *cached = Some(a);
        a
    }

    fn launch(&self, vm: &Vm) -> Result<Started> {
        let rootfs = self.host.images.rootfs(&vm.spec.image);
        let boot_dir = rootfs.parent().expect("image dir").join("boot");
        let boot = boot::build(&rootfs, &boot_dir)?;
        let accel = self.accel(&boot, &boot_dir);
        // the image's initramfs plus the VM's key: the same peer id at every boot
        let boot = boot::for_vm(&boot, &self.host.vm_dir(&vm.id))?;
        let fabric = &self.host.fabric;
        fabric.ensure_bridge()?;
        fabric.attach_tap(&host_if(&vm.id))?;
        let dir = self.host.vm_dir(&vm.id);
        let args = args(vm, &boot, &dir, accel, &host_if(&vm.id), fabric.prefix);
        let _ = std::fs::remove_file(dir.join("console.log"));
        let log_path = dir.join("qemu.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| Error::Failed(format!("create {}: {e}", log_path.display())))?;
        let child = std::process::Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| Error::Failed(e.to_string()))?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Failed(format!("start qemu-system-x86_64: {e}")))?;
        let pid = child.id();
        // reaped by `wait` through waitpid; the handle is not needed
        std::mem::forget(child);
        Ok(Started {
            pid,
            monitor_pid: None,
            accel: Some(accel.to_string()),
            detail: format!("qemu pid {pid}, accel {accel}"),
        })
    }
}

impl crate::VmDriver for Qemu {
    fn kind(&self) -> Driver {
        Driver::Qemu
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            containers: false,
            files: false,
            // a TCG guest boots in seconds, more on a loaded host
            boot: Duration::from_secs(90),
            boot_grace: Duration::from_secs(60),
        }
    }

    fn validate(&self, spec: &VmSpec) -> Result<()> {
        if spec.cpus.fract() != 0.0 {
            return Err(Error::Invalid(format!("cpu {} must be a whole number for qemu guests", spec.cpus)));
        }
        if spec.memory_mib < MIN_MIB {
            return Err(Error::Invalid(format!(
                "memory {} MiB is too small for a qemu guest (give at least {MIN_MIB}: the kernel and the initramfs live in it)",
                spec.memory_mib
            )));
        }
        let has_qemu = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").exists()));
        if !has_qemu {
            return Err(Error::Missing(
                "driver qemu needs qemu-system-x86_64 (apt-get install qemu-system-x86)".into(),
            ));
        }
        boot::host_kernel()?;
        Ok(())
    }

    fn start(&self, vm: &Vm) -> Result<Started> {
        self.launch(vm).inspect_err(|_| self.host.release_host_side(&vm.id))
    }

    fn wait(&self, _vm: &Vm, run: &Started) -> BoxFuture<Exit> {
        let pid = run.pid;
        Box::pin(async move {
            pidwait::exited(pid).await;
            // qemu is our child unless the daemon restarted since; then its code is lost
            use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
            match waitpid(nix::unistd::Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, c)) => Exit::code(c),
                Ok(WaitStatus::Signaled(_, s, _)) => Exit::code(128 + s as i32),
                _ => lost("qemu ended; its exit status is lost (the daemon restarted since it started qemu)"),
            }
        })
    }

    fn signal(&self, vm: &Vm, sig: Signal) -> Result<()> {
        let Some(pid) = vm.pid else { return Ok(()) };
        let s = match sig {
            Signal::Term => nix::sys::signal::SIGTERM,
            Signal::Kill => nix::sys::signal::SIGKILL,
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), s)
            .map_err(|e| Error::Failed(format!("signal qemu pid {pid}: {e}")))
    }

    fn freeze(&self, vm: &Vm, frozen: bool) -> Result<()> {
        let sock = self.host.vm_dir(&vm.id).join("qmp.sock");
        qmp(&sock, if frozen { "stop" } else { "cont" }).map(drop).map_err(Error::Failed)
    }

    fn recover(&self, vm: &Vm) -> Recovered {
        let pid = vm.pid.unwrap_or(0);
        let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.windows(vm.id.len()).any(|w| w == vm.id.as_bytes()));
        if alive {
            Recovered::Running(Started {
                pid,
                monitor_pid: None,
                accel: vm.accel.clone(),
                detail: format!("qemu pid {pid}"),
            })
        } else {
            Recovered::Exited(lost("qemu ended while the daemon was down; its exit status is unknown"))
        }
    }

    fn sample(&self, vm: &Vm) -> Option<Usage> {
        // the guest is one qemu process: its CPU time and memory, and its tap
        let (cpu_ns, rss) = procfs::process(vm.pid?)?;
        let stats = cgroup::Stats {
            cpu_ns,
            cpu_limit: Some(vm.spec.cpus),
            memory_bytes: rss,
            memory_limit: Some(vm.spec.memory_mib << 20),
            pids: 1,
            ..Default::default()
        };
        // what the tap receives, the guest sent
        let tap = procfs::interface(&host_if(&vm.id));
        let net = procfs::NetCounters {
            rx_bytes: tap.tx_bytes,
            tx_bytes: tap.rx_bytes,
            rx_packets: tap.tx_packets,
            tx_packets: tap.rx_packets,
        };
        Some(Usage { stats, net })
    }

    fn release(&self, vm: &Vm) {
        self.host.release_host_side(&vm.id);
    }
}
