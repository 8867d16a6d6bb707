//! Boot files for qemu guests: the host's Debian kernel (linux-image-amd64) and an
//! initramfs made from an image's root filesystem, with `/init` starting the micro-os
//! agent in guest mode and the virtio modules it loads listed in `/etc/micro-os/modules`.
//!
//! The initramfs is an uncompressed newc cpio written by the `cpio` tool, so a TCG guest
//! does not spend its first seconds decompressing; the agent binary in it is stripped of
//! debug info (`strip`), which keeps it small.

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
    let agent = stage.join("sbin/micro-os");
    if agent.exists() {
        let stripped = stage.join("sbin/.micro-os.stripped");
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
    fs::write(&init, "#!/bin/sh\nexec /sbin/micro-os agent --guest\n").context(|| "write /init".into())?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).context(|| "chmod /init".into())?;
    }
    for d in ["proc", "sys", "dev", "run", "tmp"] {
        fs::create_dir_all(stage.join(d)).context(|| format!("create /{d}"))?;
    }
    let tmp = out.join(".initramfs.img");
    let cpio_out = fs::File::create(&tmp).context(|| format!("create {}", tmp.display()))?;
    let find = Command::new("find")
        .arg(".")
        .arg("-print0")
        .current_dir(&stage)
        .stdout(Stdio::piped())
        .spawn()
        .context(|| "run find".into())?;
    let status = Command::new("cpio")
        .args(["--null", "--create", "--format=newc", "--quiet"])
        .current_dir(&stage)
        .stdin(find.stdout.expect("piped"))
        .stdout(cpio_out)
        .status()
        .context(|| "run cpio (apt-get install cpio)".into())?;
    if !status.success() {
        return Err(Error::Failed("cpio failed to write the initramfs".into()));
    }
    fs::copy(&kernel, &files.kernel).context(|| format!("copy {}", kernel.display()))?;
    fs::rename(&tmp, &files.initramfs).context(|| "move initramfs into place".into())?;
    let _ = fs::remove_dir_all(&stage);
    Ok(files)
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
}
