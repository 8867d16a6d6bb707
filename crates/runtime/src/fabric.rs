//! The VM network: one bridge that micro-os owns, an address per VM from a configurable
//! subnet, and a veth pair from each VM's network namespace to the bridge.
//!
//! Nothing is routed or masqueraded off the machine: the host has the subnet's first
//! address on the bridge, VMs have no default route, and IP forwarding is left as the
//! operator set it. Links are configured with iproute2's `ip` in batch mode (two
//! processes per VM), which keeps the kernel interface in one well-known tool.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct Fabric {
    pub bridge: String,
    /// The subnet's network address and prefix length, e.g. 10.88.0.0/16.
    pub network: Ipv4Addr,
    pub prefix: u8,
}

fn ip_batch(netns: Option<&str>, script: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Missing(format!("run ip (install iproute2): {e}")))?;
    child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(|e| Error::Failed(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| Error::Failed(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Failed(format!("ip: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

impl Fabric {
    pub fn parse(bridge: &str, subnet: &str) -> Result<Fabric> {
        let bad = || Error::Invalid(format!("vm subnet {subnet:?} is not an IPv4 CIDR (try 10.88.0.0/16)"));
        let (net, prefix) = subnet.split_once('/').ok_or_else(bad)?;
        let network: Ipv4Addr = net.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(network) & !mask != 0 {
            return Err(bad());
        }
        if bridge.is_empty() || bridge.len() > 15 {
            return Err(Error::Invalid(format!("bridge name {bridge:?} must have 1 to 15 characters")));
        }
        Ok(Fabric { bridge: bridge.into(), network, prefix })
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The lowest free address (skipping the network, the gateway and broadcast).
    pub fn allocate(&self, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - self.prefix);
        (2..size - 1).map(|i| Ipv4Addr::from(base + i)).find(|a| !used.contains(a))
    }

    /// Creates the bridge with the gateway address, if it is not there.
    pub fn ensure_bridge(&self) -> Result<()> {
        // asked of `ip`, not sysfs: /sys shows the namespace it was mounted in, which need
        // not be the daemon's
        let exists = Command::new("ip")
            .args(["link", "show", "dev", &self.bridge])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            ip_batch(
                None,
                &format!(
                    "link add {b} type bridge\naddr add {g}/{p} dev {b}\nlink set {b} up\n",
                    b = self.bridge,
                    g = self.gateway(),
                    p = self.prefix
                ),
            )?;
        }
        Ok(())
    }

    /// Where a VM's network namespace is pinned (`ip netns` sees it as `name`).
    pub fn netns_path(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }

    /// Makes the VM's network namespace `name` and plugs it into the bridge as `eth0`
    /// with `addr`; `host_if` is the host end's name.
    pub fn attach(&self, name: &str, host_if: &str, addr: Ipv4Addr) -> Result<PathBuf> {
        let path = Self::netns_path(name);
        std::fs::create_dir_all("/run/netns").map_err(|e| Error::Failed(format!("/run/netns: {e}")))?;
        if path.exists() {
            crate::netns::remove(&path);
        }
        crate::netns::create(&path).map_err(|e| Error::Failed(format!("create netns {name}: {e}")))?;
        let _ = ip_batch(None, &format!("link del {host_if}\n"));
        let result = ip_batch(
            None,
            &format!(
                "link add {host_if} type veth peer name eth0 netns {name}\nlink set {host_if} master {b} up\n",
                b = self.bridge
            ),
        )
        .and_then(|_| {
            ip_batch(Some(name), &format!("addr add {addr}/{p} dev eth0\nlink set eth0 up\n", p = self.prefix))
        });
        if let Err(e) = result {
            self.detach(name, host_if);
            return Err(e);
        }
        Ok(path)
    }

    /// Makes a tap device `host_if` on the bridge, for a qemu guest's NIC.
    pub fn attach_tap(&self, host_if: &str) -> Result<()> {
        let _ = ip_batch(None, &format!("link del {host_if}\n"));
        ip_batch(
            None,
            &format!("tuntap add dev {host_if} mode tap\nlink set {host_if} master {b} up\n", b = self.bridge),
        )
    }

    pub fn detach(&self, name: &str, host_if: &str) {
        let _ = ip_batch(None, &format!("link del {host_if}\n"));
        crate::netns::remove(&Self::netns_path(name));
    }
}

/// Where homes claim their VM bridge and subnet. It is on tmpfs: a reboot clears the
/// claims as it clears the bridges.
pub const CLAIMS: &str = "/run/micro-os/fabric";

/// A home's claim on a bridge and its subnet (`<bridge>.json` in the claims directory).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Claim {
    home: PathBuf,
    subnet: String,
    /// The daemon that claimed it.
    #[serde(default)]
    pid: u32,
}

impl Claim {
    /// A claim holds while its home exists and either its daemon runs or a VM is still
    /// plugged into its bridge (sandboxes outlive their daemon).
    fn holds(&self, bridge: &str) -> bool {
        let daemon_runs = self.pid != 0 && Path::new("/proc").join(self.pid.to_string()).exists();
        let ports =
            std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif")).map_or(0, |d| d.flatten().count());
        self.home.exists() && (daemon_runs || ports > 0)
    }
}

impl Fabric {
    fn subnet(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    pub fn overlaps(&self, other: &Fabric) -> bool {
        let prefix = self.prefix.min(other.prefix);
        let mask = u32::MAX << (32 - prefix);
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }

    /// Claims this bridge and subnet for `home` in `dir` (normally [`CLAIMS`]) for this
    /// process: two daemons with different homes on one machine must not share a bridge or
    /// hand out the same addresses. Refused when another home holds the bridge or an
    /// overlapping subnet — while that home exists and its daemon runs or a VM is still on
    /// its bridge; the home's claims on other bridges (an old configuration) are dropped.
    pub fn claim(&self, dir: &Path, home: &Path) -> Result<()> {
        let failed = |e: std::io::Error| Error::Failed(format!("vm bridge claims in {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(failed)?;
        // one daemon at a time looks and claims
        let lock = std::fs::File::create(dir.join(".lock")).map_err(failed)?;
        lock.lock().map_err(failed)?;
        let home = home.canonicalize().unwrap_or_else(|_| home.to_path_buf());
        for entry in std::fs::read_dir(dir).map_err(failed)?.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(claim) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Claim>(&b).ok()) else {
                continue;
            };
            let bridge = path.file_stem().unwrap_or_default().to_string_lossy().to_string();
            if claim.home == home {
                if bridge != self.bridge {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            if !claim.holds(&bridge) {
                // its home is gone, or its daemon stopped and no VM is left on its bridge
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let fix = "give this home its own \"vm_bridge\" and \"vm_subnet\" in its config.json \
                       (e.g. \"vm_bridge\": \"mos1\", \"vm_subnet\": \"10.89.0.0/16\")";
            if bridge == self.bridge {
                return Err(Error::Invalid(format!(
                    "vm bridge {:?} is held by the micro-os home {}: {fix}",
                    self.bridge,
                    claim.home.display()
                )));
            }
            if Fabric::parse(&bridge, &claim.subnet).is_ok_and(|other| other.overlaps(self)) {
                return Err(Error::Invalid(format!(
                    "vm subnet {} overlaps {} of bridge {bridge:?}, held by the micro-os home {}: {fix}",
                    self.subnet(),
                    claim.subnet,
                    claim.home.display()
                )));
            }
        }
        let claim = Claim { home, subnet: self.subnet(), pid: std::process::id() };
        let tmp = dir.join(format!(".{}.tmp", self.bridge));
        std::fs::write(&tmp, serde_json::to_vec(&claim).expect("a claim serialises")).map_err(failed)?;
        std::fs::rename(&tmp, dir.join(format!("{}.json", self.bridge))).map_err(failed)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_allocation() {
        let f = Fabric::parse("mos0", "10.88.0.0/16").unwrap();
        assert_eq!(f.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(f.allocate(&[]), Some(Ipv4Addr::new(10, 88, 0, 2)));
        assert_eq!(f.allocate(&[Ipv4Addr::new(10, 88, 0, 2)]), Some(Ipv4Addr::new(10, 88, 0, 3)));
        let tiny = Fabric::parse("b", "192.168.5.0/30").unwrap();
        assert_eq!(tiny.allocate(&[]), Some(Ipv4Addr::new(192, 168, 5, 2)));
        assert_eq!(tiny.allocate(&[Ipv4Addr::new(192, 168, 5, 2)]), None);
        for bad in ["10.88.0.0", "10.88.0.1/16", "x/16", "10.0.0.0/31"] {
            assert!(Fabric::parse("mos0", bad).is_err(), "{bad}");
        }
        assert!(Fabric::parse("a-very-long-bridge-name", "10.0.0.0/24").is_err());
    }

    #[test]
    fn a_bridge_or_subnet_another_home_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let claims = dir.path().join("claims");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let mos0 = Fabric::parse("mos0", "10.88.0.0/16").unwrap();
        mos0.claim(&claims, &a).unwrap();
        mos0.claim(&claims, &a).unwrap(); // the same home again: its own claim
        let e = mos0.claim(&claims, &b).unwrap_err().to_string();
        assert!(e.contains("vm bridge \"mos0\" is held by the micro-os home") && e.contains("vm_bridge"), "{e}");
        let overlapping = Fabric::parse("mos1", "10.88.128.0/17").unwrap();
        let e = overlapping.claim(&claims, &b).unwrap_err().to_string();
        assert!(e.contains("overlaps 10.88.0.0/16 of bridge \"mos0\""), "{e}");
        Fabric::parse("mos1", "10.89.0.0/16").unwrap().claim(&claims, &b).unwrap();
        // a home that moves to another bridge lets go of its old one
        Fabric::parse("mos2", "10.90.0.0/16").unwrap().claim(&claims, &a).unwrap();
        mos0.claim(&claims, &b).unwrap();
        assert!(!claims.join("mos1.json").exists(), "b let go of mos1");
        let mos2 = Fabric::parse("mos2", "10.90.0.0/16").unwrap();
        assert!(mos2.claim(&claims, &b).is_err(), "a holds mos2");
        // a home whose daemon stopped, with no VM left on its bridge, holds nothing
        let mut stale: Claim = serde_json::from_slice(&std::fs::read(claims.join("mos2.json")).unwrap()).unwrap();
        stale.pid = u32::MAX;
        std::fs::write(claims.join("mos2.json"), serde_json::to_vec(&stale).unwrap()).unwrap();
        mos2.claim(&claims, &b).unwrap();
        // nor does a home that no longer exists
        Fabric::parse("mos3", "10.91.0.0/16").unwrap().claim(&claims, &a).unwrap();
        std::fs::remove_dir_all(&a).unwrap();
        Fabric::parse("mos3", "10.91.0.0/16").unwrap().claim(&claims, &b).unwrap();
    }
}
