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

/// The cgroup of a container: its own, or below its VM's when it is placed on one.
pub fn placed_path(vm: Option<&str>, id: &str) -> String {
    match vm {
        Some(vm) => format!("{}/{id}", container_path(vm)),
        None => container_path(id),
    }
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

/// What the kernel counted in one cgroup (and below it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// CPU time used, nanoseconds.
    pub cpu_ns: u64,
    /// The CPU limit in cores (quota / period).
    pub cpu_limit: Option<f64>,
    /// Memory in use, less the page cache the kernel can drop at once (inactive files),
    /// as `docker stats` counts it.
    pub memory_bytes: u64,
    pub memory_limit: Option<u64>,
    pub oom_kills: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub pids: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Reads the counters of the cgroup at `cgpath`; `None` when it does not exist.
pub fn stats(version: Version, cgpath: &str) -> Option<Stats> {
    stats_at(Path::new("/sys/fs/cgroup"), version, cgpath)
}

fn stats_at(root: &Path, version: Version, cgpath: &str) -> Option<Stats> {
    let rel = cgpath.trim_start_matches('/');
    let at = |controller: &str| match version {
        Version::V1 => root.join(controller).join(rel),
        Version::V2 => root.join(rel),
    };
    // a limit above this is "no limit" (v1 writes the largest page-aligned i64)
    const UNLIMITED: u64 = 1 << 60;
    let mut s = Stats::default();
    match version {
        Version::V1 => {
            let mem = at("memory");
            s.memory_bytes = read_u64(&mem.join("memory.usage_in_bytes"))?;
            let inactive = read_key(&mem.join("memory.stat"), "total_inactive_file").unwrap_or(0);
            s.memory_bytes = s.memory_bytes.saturating_sub(inactive);
            s.memory_limit = read_u64(&mem.join("memory.limit_in_bytes")).filter(|l| *l < UNLIMITED);
            s.oom_kills = read_key(&mem.join("memory.oom_control"), "oom_kill").unwrap_or(0);
            s.cpu_ns = read_u64(&at("cpuacct").join("cpuacct.usage")).unwrap_or(0);
            let quota = std::fs::read_to_string(at("cpu").join("cpu.cfs_quota_us")).ok();
            let period = read_u64(&at("cpu").join("cpu.cfs_period_us"));
            if let (Some(q), Some(p)) = (quota.and_then(|q| q.trim().parse::<i64>().ok()), period) {
                s.cpu_limit = (q > 0 && p > 0).then(|| q as f64 / p as f64);
            }
            let io = std::fs::read_to_string(at("blkio").join("blkio.throttle.io_service_bytes_recursive"))
                .or_else(|_| std::fs::read_to_string(at("blkio").join("blkio.throttle.io_service_bytes")))
                .unwrap_or_default();
            for l in io.lines() {
                let mut f = l.split_whitespace();
                match (f.next(), f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) {
                    (Some(_dev), Some("Read"), Some(v)) => s.io_read_bytes += v,
                    (Some(_dev), Some("Write"), Some(v)) => s.io_write_bytes += v,
                    _ => {}
                }
            }
            s.pids = read_u64(&at("pids").join("pids.current")).unwrap_or(0);
        }
        Version::V2 => {
            let d = at("");
            s.memory_bytes = read_u64(&d.join("memory.current"))?;
            let inactive = read_key(&d.join("memory.stat"), "inactive_file").unwrap_or(0);
            s.memory_bytes = s.memory_bytes.saturating_sub(inactive);
            s.memory_limit = read_u64(&d.join("memory.max")).filter(|l| *l < UNLIMITED);
            s.oom_kills = read_key(&d.join("memory.events"), "oom_kill").unwrap_or(0);
            s.cpu_ns = read_key(&d.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000;
            let max = std::fs::read_to_string(d.join("cpu.max")).unwrap_or_default();
            let mut f = max.split_whitespace();
            if let (Some(Ok(q)), Some(Ok(p))) = (f.next().map(str::parse::<f64>), f.next().map(str::parse::<f64>)) {
                s.cpu_limit = (p > 0.0).then_some(q / p);
            }
            for l in std::fs::read_to_string(d.join("io.stat")).unwrap_or_default().lines() {
                for kv in l.split_whitespace().skip(1) {
                    match kv.split_once('=') {
                        Some(("rbytes", v)) => s.io_read_bytes += v.parse::<u64>().unwrap_or(0),
                        Some(("wbytes", v)) => s.io_write_bytes += v.parse::<u64>().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            s.pids = read_u64(&d.join("pids.current")).unwrap_or(0);
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_by_version() {
        assert_eq!(dir(Version::V1, "memory", "/micro-os/abc"), PathBuf::from("/sys/fs/cgroup/memory/micro-os/abc"));
        assert_eq!(dir(Version::V2, "", "/micro-os/abc"), PathBuf::from("/sys/fs/cgroup/micro-os/abc"));
    }

    fn files(root: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    #[test]
    fn stats_from_v1_and_v2_files() {
        let d = tempfile::tempdir().unwrap();
        let v1 = d.path().join("v1");
        files(
            &v1,
            &[
                ("memory/micro-os/c/memory.usage_in_bytes", "10000\n"),
                ("memory/micro-os/c/memory.stat", "cache 5\ntotal_inactive_file 1000\n"),
                ("memory/micro-os/c/memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory/micro-os/c/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
                ("cpuacct/micro-os/c/cpuacct.usage", "123456789\n"),
                ("cpu/micro-os/c/cpu.cfs_quota_us", "50000\n"),
                ("cpu/micro-os/c/cpu.cfs_period_us", "100000\n"),
                (
                    "blkio/micro-os/c/blkio.throttle.io_service_bytes_recursive",
                    "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\n8:16 Read 1\nTotal 12289\n",
                ),
                ("pids/micro-os/c/pids.current", "3\n"),
            ],
        );
        let s = stats_at(&v1, Version::V1, "/micro-os/c").unwrap();
        assert_eq!(
            s,
            Stats {
                cpu_ns: 123456789,
                cpu_limit: Some(0.5),
                memory_bytes: 9000,
                memory_limit: None,
                oom_kills: 2,
                io_read_bytes: 4097,
                io_write_bytes: 8192,
                pids: 3
            }
        );
        let v2 = d.path().join("v2");
        files(
            &v2,
            &[
                ("micro-os/c/memory.current", "20000\n"),
                ("micro-os/c/memory.stat", "anon 1\ninactive_file 5000\n"),
                ("micro-os/c/memory.max", "1048576\n"),
                ("micro-os/c/memory.events", "low 0\noom 1\noom_kill 1\n"),
                ("micro-os/c/cpu.stat", "usage_usec 250\nuser_usec 200\n"),
                ("micro-os/c/cpu.max", "max 100000\n"),
                ("micro-os/c/io.stat", "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2\n"),
                ("micro-os/c/pids.current", "7\n"),
            ],
        );
        let s = stats_at(&v2, Version::V2, "/micro-os/c").unwrap();
        assert_eq!(
            s,
            Stats {
                cpu_ns: 250_000,
                cpu_limit: None,
                memory_bytes: 15000,
                memory_limit: Some(1048576),
                oom_kills: 1,
                io_read_bytes: 101,
                io_write_bytes: 202,
                pids: 7
            }
        );
        assert_eq!(stats_at(&v2, Version::V2, "/micro-os/none"), None);
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
    crate::procfs::host_memory().1 >> 20
}
