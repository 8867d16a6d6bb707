//! The qemu driver's moving parts: the accelerator probe, the qemu command line, and a
//! small QMP client (pause, resume, status, quit).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use micro_os_core::Vm;
use micro_os_runtime::boot::BootFiles;

/// Whether KVM really boots a guest here: a probe boot of our own kernel and initramfs
/// whose agent powers off at once. Nested KVM can open /dev/kvm and still never run a
/// guest, so opening the device is not enough.
pub fn kvm_boots(boot: &BootFiles, dir: &Path) -> bool {
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
pub fn args(vm: &Vm, boot: &BootFiles, dir: &Path, accel: &str, tap: &str, prefix: u8) -> Vec<String> {
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
pub fn qmp(socket: &Path, command: &str) -> Result<serde_json::Value, String> {
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
