//! Counters the kernel keeps outside cgroups: a network namespace's interfaces (through
//! any process in it), the host's CPU, memory, load and disk.

use std::path::Path;

/// Bytes and packets through the interfaces of one network namespace, loopback excluded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// Parses `/proc/<pid>/net/dev`, summing the interfaces `keep` accepts.
pub fn parse_net_dev(text: &str, keep: impl Fn(&str) -> bool) -> NetCounters {
    let mut c = NetCounters::default();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else { continue };
        let name = name.trim();
        if name == "lo" || !keep(name) {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        if f.len() >= 10 {
            c.rx_bytes += f[0];
            c.rx_packets += f[1];
            c.tx_bytes += f[8];
            c.tx_packets += f[9];
        }
    }
    c
}

/// The network namespace of process `pid`.
pub fn net_of_pid(pid: u32) -> Option<NetCounters> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    Some(parse_net_dev(&text, |_| true))
}

/// The host's physical interfaces (bridges and veths would count VM traffic twice).
pub fn host_net() -> NetCounters {
    let text = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    parse_net_dev(&text, |name| Path::new("/sys/class/net").join(name).join("device").exists())
}

/// One interface's counters (host view), from sysfs; zero when it does not exist.
pub fn interface(name: &str) -> NetCounters {
    let read = |stat: &str| {
        std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("statistics").join(stat))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    NetCounters {
        rx_bytes: read("rx_bytes"),
        rx_packets: read("rx_packets"),
        tx_bytes: read("tx_bytes"),
        tx_packets: read("tx_packets"),
    }
}

/// A process's CPU time (user + system, ns) and resident memory (bytes).
pub fn process(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces; the fields start after its closing parenthesis
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    let pages: u64 = fields.get(21)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    Some((ticks * 1_000_000_000 / hz, pages * page))
}

/// CPU time the host spent busy and in total, in clock ticks, from the first line of
/// /proc/stat.
pub fn host_cpu() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = text.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The host's memory in use (total less available) and total, bytes.
pub fn host_memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let (total, available) = (kb("MemTotal:"), kb("MemAvailable:"));
    (total.saturating_sub(available), total)
}

pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Used and total bytes of the filesystem holding `path`.
pub fn disk(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = s.fragment_size() as u64;
    let total = s.blocks() as u64 * frag;
    let free = s.blocks_free() as u64 * frag;
    Some((total - free, total))
}

/// Number of processes the host runs.
pub fn host_pids() -> u64 {
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit())).count())
        .unwrap_or(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_sums_all_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0: 5000 40 0 0 0 0 0 0 7000 50 0 0 0 0 0 0
  eth1:  1 2 0 0 0 0 0 0 3 4 0 0 0 0 0 0
";
        let all = parse_net_dev(text, |_| true);
        assert_eq!(all, NetCounters { rx_bytes: 5001, rx_packets: 42, tx_bytes: 7003, tx_packets: 54 });
        let one = parse_net_dev(text, |n| n == "eth1");
        assert_eq!(one, NetCounters { rx_bytes: 1, rx_packets: 2, tx_bytes: 3, tx_packets: 4 });
    }

    #[test]
    fn host_counters_read() {
        let (busy, total) = host_cpu().unwrap();
        assert!(total > 0 && busy <= total);
        let (used, total) = host_memory();
        assert!(total > 0 && used < total);
        let (used, total) = disk(Path::new("/")).unwrap();
        assert!(total > 0 && used <= total);
        assert!(host_pids() > 0);
        let (cpu, rss) = process(std::process::id()).unwrap();
        assert!(rss > 1 << 20 && cpu < 3600 * 1_000_000_000, "{cpu} {rss}");
        assert_eq!(interface("no-such-if0"), NetCounters::default());
        // a datagram over loopback shows in its counters
        let before = interface("lo");
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.send_to(&[0u8; 1000], sock.local_addr().unwrap()).unwrap();
        let after = interface("lo");
        assert!(after.tx_packets > before.tx_packets && after.tx_bytes >= before.tx_bytes + 1000, "{after:?}");
    }
}
