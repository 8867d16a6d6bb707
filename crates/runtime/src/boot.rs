//! Boot files for qemu guests: the host's Debian kernel (linux-image-amd64) and an
//! initramfs made from an image's root filesystem, with `/init` starting the micro-os
//! agent in guest mode and the virtio modules it loads listed in `/etc/micro-os/modules`.
//!
//! The initramfs is an uncompressed newc cpio written by the `cpio` tool, so a TCG guest
//! does not spend its first seconds decompressing; the agent binary in it is stripped of
//! debug info (`strip`), which keeps it small.
//!
//! A guest's root is fresh at every boot, so its identity comes from the daemon: each VM
//! boots the image's initramfs with a small archive appended (`for_vm`) that holds the
//! VM's key, made once and kept in the VM's state directory. The kernel unpacks
//! concatenated archives in order, and the key never appears on a command line.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::Context;
use crate::{Error, Result};

/// Modules a guest needs, in load order (dependencies first, from modules.dep).
const WANTED: &[&str] = &["virtio_pci", "virtio_net", "virtio_console"];

pub struct BootFiles {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// The newest kernel in /boot with its modules directory.
pub fn host_kernel() -> Result<(PathBuf, PathBuf)> {
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
                .collect()
        })
        .unwrap_or_default();
    kernels.sort();
    let kernel = kernels.pop().ok_or_else(|| {
        Error::Missing("no kernel in /boot (install Debian's linux-image-amd64 for qemu guests)".into())
    })?;
    let version = kernel.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    let modules = Path::new("/lib/modules").join(&version);
    if !modules.join("modules.dep").exists() {
        return Err(Error::Missing(format!(
            "{} has no modules.dep (reinstall linux-image-{version})",
            modules.display()
        )));
    }
    Ok((kernel, modules))
}

/// Module files for `WANTED` and their dependencies, dependencies first.
fn module_order(modules: &Path) -> Result<Vec<String>> {
    let dep = fs::read_to_string(modules.join("modules.dep")).context(|| "read modules.dep".into())?;
    let deps: std::collections::HashMap<String, Vec<String>> = dep
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((m.to_string(), d.split_whitespace().map(String::from).collect()))
        })
        .collect();
    let by_name = |name: &str| {
        deps.keys().find(|k| {
            let f = Path::new(k).file_name().unwrap().to_string_lossy();
            f.split('.').next() == Some(name)
        })
    };
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        m: &str,
        deps: &std::collections::HashMap<String, Vec<String>>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(m.to_string()) {
            return;
        }
        // modules.dep lists the full closure, deepest last: load them in reverse
        for d in deps.get(m).into_iter().flatten().rev() {
            visit(d, deps, seen, order);
        }
        order.push(m.to_string());
    }
    for w in WANTED {
        // a module missing from modules.dep is built into this kernel
        if let Some(m) = by_name(w) {
            visit(m, &deps, &mut seen, &mut order);
        }
    }
    Ok(order)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().context(|| format!("run {what}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Failed(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Builds (or reuses) `<out>/vmlinuz` and `<out>/initramfs.img` from `rootfs`.
pub fn build(rootfs: &Path, out: &Path) -> Result<BootFiles> {
    let files = BootFiles { kernel: out.join("vmlinuz"), initramfs: out.join("initramfs.img") };
    if files.kernel.exists() && files.initramfs.exists() {
        return Ok(files);
    }
    let (kernel, modules) = host_kernel()?;
    let stage = out.join(".stage");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).context(|| format!("create {}", stage.display()))?;
    // the image's root, as hard links where possible
    run(Command::new("cp").arg("-a").arg("-l").arg(format!("{}/.", rootfs.display())).arg(&stage), "cp")
        .or_else(|_| run(Command::new("cp").arg("-a").arg(format!("{}/.", rootfs.display())).arg(&stage), "cp"))?;
    // the agent without debug info (a separate file: the hard link must not be changed)
    let agent = stage.join(crate::image::AGENT_IN_IMAGE);
    if agent.exists() {
        let stripped = stage.join("sbin/.micro-os-agent.stripped");
        run(Command::new("strip").arg("--strip-debug").arg("-o").arg(&stripped).arg(&agent), "strip")?;
        fs::remove_file(&agent).context(|| "replace agent".into())?;
        fs::rename(&stripped, &agent).context(|| "replace agent".into())?;
    }
    let mut list = String::new();
    for m in module_order(&modules)? {
        let dest = stage.join("lib/modules").join(&m);
        fs::create_dir_all(dest.parent().unwrap()).context(|| "create module dir".into())?;
        fs::copy(modules.join(&m), &dest).context(|| format!("copy module {m}"))?;
        list.push_str(&format!("/lib/modules/{m}\n"));
    }
    fs::create_dir_all(stage.join("etc/micro-os")).context(|| "create /etc/micro-os".into())?;
    fs::write(stage.join("etc/micro-os/modules"), list).context(|| "write module list".into())?;
    let init = stage.join("init");
    // an image built before the agent was a binary of its own has `micro-os agent`
    let exec = if stage.join(crate::image::AGENT_IN_IMAGE).exists() || !stage.join("sbin/micro-os").exists() {
        format!("#!/bin/sh\nexec /{} --guest\n", crate::image::AGENT_IN_IMAGE)
    } else {
        "#!/bin/sh\nexec /sbin/micro-os agent --guest\n".to_string()
    };
    fs::write(&init, exec).context(|| "write /init".into())?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).context(|| "chmod /init".into())?;
    }
    for d in ["proc", "sys", "dev", "run", "tmp"] {
        fs::create_dir_all(stage.join(d)).context(|| format!("create /{d}"))?;
    }
    let tmp = out.join(".initramfs.img");
    cpio(&stage, fs::File::create(&tmp).context(|| format!("create {}", tmp.display()))?)?;
    fs::copy(&kernel, &files.kernel).context(|| format!("copy {}", kernel.display()))?;
    fs::rename(&tmp, &files.initramfs).context(|| "move initramfs into place".into())?;
    let _ = fs::remove_dir_all(&stage);
    Ok(files)
}

/// Writes the tree under `dir` to `out` as a newc cpio archive.
fn cpio(dir: &Path, out: fs::File) -> Result<()> {
    let find = Command::new("find")
        .arg(".")
        .arg("-print0")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context(|| "run find".into())?;
    let status = Command::new("cpio")
        .args(["--null", "--create", "--format=newc", "--quiet"])
        .current_dir(dir)
        .stdin(find.stdout.expect("piped"))
        .stdout(out)
        .status()
        .context(|| "run cpio (apt-get install cpio)".into())?;
    if !status.success() {
        return Err(Error::Failed("cpio failed to write an initramfs".into()));
    }
    Ok(())
}

/// Where the agent keeps its identity (an ed25519 seed of 32 bytes), inside a VM.
pub const AGENT_KEY: &str = "var/lib/micro-os/agent.key";
/// A qemu VM's key in its state directory.
const VM_KEY: &str = "agent.key";

/// The VM's key in `vm_dir`, made on first use (32 random bytes, mode 0600).
fn vm_key(vm_dir: &Path) -> Result<Vec<u8>> {
    let path = vm_dir.join(VM_KEY);
    if let Ok(k) = fs::read(&path) {
        if k.len() == 32 {
            return Ok(k);
        }
    }
    let mut seed = vec![0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .context(|| "read /dev/urandom".into())?;
    write_secret(&path, &seed)?;
    Ok(seed)
}

/// A new file only its owner can read (mode 0600), replacing a leftover of that name.
fn create_private(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .context(|| format!("create {}", path.display()))
}

/// Writes a file only its owner can read, atomically.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = create_private(&tmp)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).context(|| format!("rename {}", path.display()))
}

/// The boot files of one VM: the image's kernel, and `vm_dir/initramfs.img`, the image's
/// initramfs followed by an archive with the VM's key at `/var/lib/micro-os/agent.key`
/// (mode 0600, like the key in the state directory). The key is made once, so the guest
/// has the same peer id at every boot; the initramfs is rebuilt when the image's changed.
pub fn for_vm(image: &BootFiles, vm_dir: &Path) -> Result<BootFiles> {
    let key = vm_key(vm_dir)?;
    let out = vm_dir.join("initramfs.img");
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = match (modified(&out), modified(&image.initramfs), modified(&vm_dir.join(VM_KEY))) {
        (Some(o), Some(i), Some(k)) => o >= i && o >= k,
        _ => false,
    };
    if !fresh {
        let stage = vm_dir.join(".key-stage");
        let _ = fs::remove_dir_all(&stage);
        let dest = stage.join(AGENT_KEY);
        fs::create_dir_all(dest.parent().expect("a parent")).context(|| format!("create {}", stage.display()))?;
        write_secret(&dest, &key)?;
        let tmp = vm_dir.join(".initramfs.img");
        {
            use std::io::Write;
            let mut f = create_private(&tmp)?;
            let mut base =
                fs::File::open(&image.initramfs).context(|| format!("open {}", image.initramfs.display()))?;
            std::io::copy(&mut base, &mut f).context(|| format!("copy {}", image.initramfs.display()))?;
            // newc archives start on a 4-byte boundary
            let pad = (4 - f.metadata().context(|| "stat the initramfs".into())?.len() % 4) % 4;
            f.write_all(&vec![0u8; pad as usize]).context(|| format!("write {}", tmp.display()))?;
            cpio(&stage, f)?;
        }
        let _ = fs::remove_dir_all(&stage);
        fs::rename(&tmp, &out).context(|| format!("move {} into place", out.display()))?;
    }
    Ok(BootFiles { kernel: image.kernel.clone(), initramfs: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_order_puts_dependencies_first() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("modules.dep"),
            "kernel/a/virtio.ko:\nkernel/a/virtio_ring.ko:\nkernel/n/failover.ko:\n\
             kernel/n/net_failover.ko: kernel/n/failover.ko\n\
             kernel/n/virtio_net.ko: kernel/n/net_failover.ko kernel/n/failover.ko kernel/a/virtio.ko kernel/a/virtio_ring.ko\n\
             kernel/c/virtio_console.ko: kernel/a/virtio.ko kernel/a/virtio_ring.ko\n",
        )
        .unwrap();
        let order = module_order(d.path()).unwrap();
        let pos = |m: &str| order.iter().position(|o| o.ends_with(m)).unwrap();
        assert!(pos("/failover.ko") < pos("/net_failover.ko"));
        assert!(pos("/net_failover.ko") < pos("/virtio_net.ko"));
        assert!(pos("/virtio_ring.ko") < pos("/virtio_console.ko"));
        assert_eq!(order.len(), 6, "{order:?}");
    }

    #[test]
    fn a_vm_boots_with_the_same_key_every_time() {
        let has = |tool: &str| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        if !has("cpio") {
            eprintln!("SKIP a_vm_boots_with_the_same_key_every_time: cpio missing (apt-get install cpio)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let image = BootFiles { kernel: d.path().join("vmlinuz"), initramfs: d.path().join("image.img") };
        let base = d.path().join("base");
        fs::create_dir_all(base.join("sbin")).unwrap();
        fs::write(base.join("sbin/agent"), "the image's root").unwrap();
        cpio(&base, fs::File::create(&image.initramfs).unwrap()).unwrap();
        let vm = d.path().join("vm");
        fs::create_dir(&vm).unwrap();

        let first = for_vm(&image, &vm).unwrap();
        let key = fs::read(vm.join(VM_KEY)).unwrap();
        assert_eq!(key.len(), 32);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(vm.join(VM_KEY)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&first.initramfs).unwrap().permissions().mode() & 0o777, 0o600);
        // the image's archive comes first, unchanged; the key's follows
        let img = fs::read(&image.initramfs).unwrap();
        let both = fs::read(&first.initramfs).unwrap();
        assert_eq!(&both[..img.len()], &img[..]);
        let tail = d.path().join("tail.cpio");
        let start = img.len().div_ceil(4) * 4;
        fs::write(&tail, &both[start..]).unwrap();
        let out = d.path().join("unpacked");
        fs::create_dir(&out).unwrap();
        let ok = Command::new("cpio")
            .args(["--extract", "--make-directories", "--quiet"])
            .current_dir(&out)
            .stdin(fs::File::open(&tail).unwrap())
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(fs::read(out.join(AGENT_KEY)).unwrap(), key, "the guest does not get the VM's key");

        // the next boot (and one after the image was rebuilt) brings the same key
        std::thread::sleep(std::time::Duration::from_millis(20));
        cpio(&base, fs::File::create(&image.initramfs).unwrap()).unwrap();
        let second = for_vm(&image, &vm).unwrap();
        assert_eq!(fs::read(vm.join(VM_KEY)).unwrap(), key, "a new key at the second boot");
        assert!(fs::read(&second.initramfs).unwrap().len() > img.len());
        let other = d.path().join("other");
        fs::create_dir(&other).unwrap();
        for_vm(&image, &other).unwrap();
        assert_ne!(fs::read(other.join(VM_KEY)).unwrap(), key, "two VMs share a key");
    }
}
