//! The VM network: one bridge that micro-os owns, an address per VM from a configurable
//! subnet, and a veth pair from each VM's network namespace to the bridge.
//!
//! Nothing is routed or masqueraded off the machine: the host has the subnet's first
//! address on the bridge, VMs have no default route, and IP forwarding is left as the
//! operator set it. Links are configured with iproute2's `ip` in batch mode (two
//! processes per VM), which keeps the kernel interface in one well-known tool.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
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
        let exists = std::path::Path::new("/sys/class/net").join(&self.bridge).exists();
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
}
