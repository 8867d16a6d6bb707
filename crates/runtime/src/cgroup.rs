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

/// Current memory use in bytes.
pub fn memory_usage(version: Version, cgpath: &str) -> Option<u64> {
    let file = match version {
        Version::V1 => dir(version, "memory", cgpath).join("memory.usage_in_bytes"),
        Version::V2 => dir(version, "", cgpath).join("memory.current"),
    };
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
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
