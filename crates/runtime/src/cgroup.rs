//! Which cgroup hierarchy the host has, where a container's cgroup lives, and what the
//! kernel counted in it. runc creates and limits the cgroups; we only read them.

use std::path::{Path, PathBuf};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy or hybrid hierarchy: one mount per controller.
    V1,
    /// Unified hierarchy.
    V2,
}

#[allow(clippy::unnecessary_cast)] // the field's integer type differs between libcs
pub fn detect() -> Version {
    match nix::sys::statfs::statfs("/sys/fs/cgroup") {
        Ok(s) if s.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC => Version::V2,
        _ => Version::V1,
    }
}

/// The cgroup path runc is given for a container (cgroupfs driver, absolute).
pub fn container_path(id: &str) -> String {
    format!("/micro-os/{id}")
}

fn dir(version: Version, controller: &str, cgpath: &str) -> PathBuf {
    let rel = cgpath.trim_start_matches('/');
    match version {
        Version::V1 => Path::new("/sys/fs/cgroup").join(controller).join(rel),
        Version::V2 => Path::new("/sys/fs/cgroup").join(rel),
    }
}

fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// How many processes the kernel OOM-killed in this cgroup.
pub fn oom_kills(version: Version, cgpath: &str) -> Option<u64> {
    match version {
        Version::V1 => read_key(&dir(version, "memory", cgpath).join("memory.oom_control"), "oom_kill"),
        Version::V2 => read_key(&dir(version, "", cgpath).join("memory.events"), "oom_kill"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_by_version() {
        assert_eq!(dir(Version::V1, "memory", "/micro-os/abc"), PathBuf::from("/sys/fs/cgroup/memory/micro-os/abc"));
        assert_eq!(dir(Version::V2, "", "/micro-os/abc"), PathBuf::from("/sys/fs/cgroup/micro-os/abc"));
    }

    #[test]
    fn reads_keyed_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(read_key(&f, "oom_kill"), Some(1));
        assert_eq!(read_key(&f, "max"), Some(3));
        assert_eq!(read_key(&f, "nope"), None);
    }
}

/// Limits for a parent cgroup that bounds a VM and everything placed in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "freezer"];

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Creates (or updates) the cgroup at `cgpath` with `limits`. runc places the VM's agent
/// and its containers in children of it, so the limits bound them all.
pub fn create_parent(version: Version, cgpath: &str, limits: Limits) -> std::io::Result<()> {
    const PERIOD: u64 = 100_000;
    match version {
        Version::V1 => {
            for c in V1_CONTROLLERS {
                std::fs::create_dir_all(dir(version, c, cgpath))?;
            }
            if let Some(m) = limits.memory_bytes {
                write(&dir(version, "memory", cgpath).join("memory.limit_in_bytes"), &m.to_string())?;
            }
            if let Some(c) = limits.cpus {
                let d = dir(version, "cpu", cgpath);
                write(&d.join("cpu.cfs_period_us"), &PERIOD.to_string())?;
                write(&d.join("cpu.cfs_quota_us"), &((c * PERIOD as f64).round() as u64).to_string())?;
            }
            if let Some(p) = limits.pids {
                write(&dir(version, "pids", cgpath).join("pids.max"), &p.to_string())?;
            }
        }
        Version::V2 => {
            // enable the controllers on every level from the root down to the parent
            let mut cur = PathBuf::from("/sys/fs/cgroup");
            for part in cgpath.trim_start_matches('/').split('/') {
                let _ = write(&cur.join("cgroup.subtree_control"), "+memory +cpu +pids");
                cur = cur.join(part);
                std::fs::create_dir_all(&cur)?;
            }
            let _ = write(&cur.join("cgroup.subtree_control"), "+memory +cpu +pids");
            if let Some(m) = limits.memory_bytes {
                write(&cur.join("memory.max"), &m.to_string())?;
                let _ = write(&cur.join("memory.swap.max"), "0");
            }
            if let Some(c) = limits.cpus {
                write(&cur.join("cpu.max"), &format!("{} {PERIOD}", (c * PERIOD as f64).round() as u64))?;
            }
            if let Some(p) = limits.pids {
                write(&cur.join("pids.max"), &p.to_string())?;
            }
        }
    }
    Ok(())
}

/// Freezes or thaws every process below `cgpath`.
pub fn freeze(version: Version, cgpath: &str, frozen: bool) -> std::io::Result<()> {
    match version {
        Version::V1 => {
            let f = dir(version, "freezer", cgpath).join("freezer.state");
            write(&f, if frozen { "FROZEN" } else { "THAWED" })?;
            // the kernel freezes asynchronously: wait until it says so
            let want = if frozen { "FROZEN" } else { "THAWED" };
            for _ in 0..500 {
                if std::fs::read_to_string(&f)?.trim() == want {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(std::io::Error::other(format!("{} did not become {want}", f.display())))
        }
        Version::V2 => write(&dir(version, "", cgpath).join("cgroup.freeze"), if frozen { "1" } else { "0" }),
    }
}

/// Removes the cgroup at `cgpath` (empty by then) from every hierarchy.
pub fn remove_parent(version: Version, cgpath: &str) {
    match version {
        Version::V1 => {
            let entries =
                std::fs::read_dir("/sys/fs/cgroup").map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>());
            for root in entries.unwrap_or_default() {
                let _ = std::fs::remove_dir(root.join(cgpath.trim_start_matches('/')));
            }
        }
        Version::V2 => {
            let _ = std::fs::remove_dir(dir(version, "", cgpath));
        }
    }
}

/// The host's memory in MiB (from /proc/meminfo).
pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}
