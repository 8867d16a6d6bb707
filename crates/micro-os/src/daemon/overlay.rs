//! The encrypted overlay between the hosts of a fabric: VMs (and the containers on them)
//! on different hosts reach each other by address through userspace WireGuard.
//!
//! Key design decision: each host runs one boringtun device (a TUN interface named after
//! its VM bridge, so homes on one machine never meet) configured over WireGuard's own
//! userspace API (on a socket pair), like `wg` configures a kernel device. A host's WireGuard public key,
//! UDP port and VM subnet travel in its heartbeats — the signed, members-only libp2p
//! channel — so a key is only ever taken from a member. Each member becomes a WireGuard
//! peer whose allowed IPs are its VM subnet, with a route to that subnet through the
//! device; each running sandbox VM gets routes to the other hosts' subnets through its
//! bridge's gateway. There is no unencrypted path between hosts: the host forwards between
//! its bridge and the device only (`ip_forward` in the daemon's network namespace), and
//! nothing is masqueraded.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use boringtun::device::{DeviceConfig, DeviceHandle};
use boringtun::x25519::{PublicKey, StaticSecret};
use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::error::{Error, Result};

/// What a host tells the members about its end of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayInfo {
    /// Hex of its WireGuard public key.
    pub public_key: String,
    pub port: u16,
    /// Its VM subnet (CIDR).
    pub subnet: String,
}

/// A member as a WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    endpoint: SocketAddr,
    subnet: String,
}

/// This host's end of the overlay.
#[derive(Default)]
pub struct Overlay {
    /// This host's WireGuard private key, once read.
    key: std::sync::OnceLock<[u8; 32]>,
    device: Mutex<Option<DeviceHandle>>,
    /// This end of the device's control connection (WireGuard's userspace API).
    control: Mutex<Option<std::os::unix::net::UnixStream>>,
    /// The peers configured now, by public key.
    applied: Mutex<BTreeMap<String, Peer>>,
    /// The other hosts' subnets each VM has a route to, by VM id.
    routed: Mutex<HashMap<String, Vec<String>>>,
    /// The subnets this host routes through the device, and whether from the gateway's
    /// address.
    routes: Mutex<(Vec<String>, bool)>,
}

impl Engine {
    /// The TUN device's name: the bridge's, with a `w` (at most 15 characters).
    fn overlay_if(&self) -> String {
        let b: String = self.cfg.vm_bridge.chars().take(14).collect();
        format!("{b}w")
    }

    /// This host's WireGuard key (`overlay.key`, 0600, made on first use), read once.
    fn overlay_key(&self) -> Result<StaticSecret> {
        if let Some(b) = self.overlay.key.get() {
            return Ok(StaticSecret::from(*b));
        }
        let path = self.home.root.join("overlay.key");
        let saved =
            std::fs::read_to_string(&path).ok().and_then(|h| <[u8; 32]>::try_from(hex::decode(h.trim()).ok()?).ok());
        let b = match saved {
            Some(b) => b,
            None => {
                let mut b = [0u8; 32];
                getrandom::fill(&mut b)
                    .map_err(|e| Error::internal(format!("no randomness for the overlay key: {e}")))?;
                crate::home::write_secret_atomic(&path, hex::encode(b).as_bytes())
                    .map_err(|e| Error::internal(format!("{e:#}")))?;
                b
            }
        };
        Ok(StaticSecret::from(*self.overlay.key.get_or_init(|| b)))
    }

    /// This host's end, as its heartbeat carries it (`None`: the overlay is off here).
    pub(super) fn overlay_info(&self) -> Option<OverlayInfo> {
        if self.cfg.overlay_port == 0 || !nix::unistd::geteuid().is_root() {
            return None;
        }
        let key = self.overlay_key().ok()?;
        let f = self.fabric();
        Some(OverlayInfo {
            public_key: hex::encode(PublicKey::from(&key).as_bytes()),
            port: self.cfg.overlay_port,
            subnet: format!("{}/{}", f.network, f.prefix),
        })
    }

    /// Talks WireGuard's userspace API to the device: `set=1` and `lines`, then its
    /// `errno=…` and a blank line.
    fn overlay_set(&self, lines: &str) -> Result<()> {
        self.overlay_call(&format!("set=1\n{lines}\n")).map(drop)
    }

    /// What the device says of its peers (`get=1`), by public key; empty while it is not
    /// running.
    pub(super) fn overlay_links(&self) -> HashMap<String, micro_os_api::types::OverlayLink> {
        if self.overlay.control.lock().expect("overlay").is_none() {
            return HashMap::new();
        }
        match self.overlay_call("get=1\n\n") {
            Ok(answer) => parse_links(&answer),
            Err(e) => {
                tracing::debug!("overlay: {e}");
                HashMap::new()
            }
        }
    }

    /// One request on the control connection; the answer up to its blank line, which
    /// must end in `errno=0`.
    fn overlay_call(&self, request: &str) -> Result<String> {
        let fail = |e: String| Error::internal(format!("overlay device {}: {e}", self.overlay_if()));
        let mut control = self.overlay.control.lock().expect("overlay");
        let s = control.as_mut().ok_or_else(|| fail("not started".into()))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).map_err(|e| fail(e.to_string()))?;
        s.write_all(request.as_bytes()).map_err(|e| fail(e.to_string()))?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\n\n") {
            match s.read(&mut byte) {
                Ok(1) => answer.push(byte[0]),
                Ok(_) => return Err(fail("the device closed its control connection".into())),
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.trim().lines().last() != Some("errno=0") {
            return Err(fail(format!("the device answered {:?}", answer.trim())));
        }
        Ok(answer)
    }

    /// Starts the device with this host's key and port, up, and forwarding on.
    fn overlay_start(&self) -> Result<()> {
        use std::os::fd::IntoRawFd;
        let name = self.overlay_if();
        // the control connection is a socket pair, not boringtun's socket file: that one
        // comes with SIGINT and SIGTERM handlers of its own, which would take the daemon's
        let (mine, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::internal(format!("overlay device {name}: a control socket: {e}")))?;
        let cfg = DeviceConfig { n_threads: 2, uapi_fd: theirs.into_raw_fd(), ..DeviceConfig::default() };
        let handle =
            DeviceHandle::new(&name, cfg).map_err(|e| Error::internal(format!("overlay device {name}: {e}")))?;
        *self.overlay.device.lock().expect("overlay") = Some(handle);
        *self.overlay.control.lock().expect("overlay") = Some(mine);
        let key = self.overlay_key()?;
        self.overlay_set(&format!(
            "private_key={}\nlisten_port={}\n",
            hex::encode(key.to_bytes()),
            self.cfg.overlay_port
        ))?;
        ip(&["link", "set", &name, "mtu", &self.cfg.overlay_mtu.to_string(), "up"])?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| Error::internal(format!("turning ip_forward on for the overlay: {e}")))?;
        tracing::info!("overlay device {name} up on udp port {}", self.cfg.overlay_port);
        Ok(())
    }

    /// Brings the device, its peers and routes, and the VMs' routes in line with the
    /// members' last heartbeats.
    pub(super) fn overlay_sync(&self, members: &[(String, OverlayInfo, Vec<String>)]) {
        if let Err(e) = self.overlay_sync_inner(members) {
            // start over at the next heartbeat: a device that failed once (its thread
            // died, its control connection closed) is not trusted with the next change
            tracing::warn!("overlay: {e}; the device starts again");
            *self.overlay.control.lock().expect("overlay") = None;
            *self.overlay.device.lock().expect("overlay") = None;
            self.overlay.applied.lock().expect("overlay").clear();
            *self.overlay.routes.lock().expect("overlay") = Default::default();
        }
    }

    fn overlay_sync_inner(&self, members: &[(String, OverlayInfo, Vec<String>)]) -> Result<()> {
        let Some(mine) = self.overlay_info() else { return Ok(()) };
        let own = micro_os_runtime::fabric::Fabric::parse("x", &mine.subnet)?;
        let mut want: BTreeMap<String, Peer> = BTreeMap::new();
        for (peer, info, addrs) in members {
            let Some(ip) = endpoint_ip(addrs) else { continue };
            let Ok(theirs) = micro_os_runtime::fabric::Fabric::parse("x", &info.subnet) else { continue };
            if theirs.overlaps(&own) {
                tracing::warn!(
                    "overlay: host {peer}'s vm subnet {} overlaps this host's {}: give each host its own vm_subnet",
                    info.subnet,
                    mine.subnet
                );
                continue;
            }
            want.insert(
                info.public_key.clone(),
                Peer { endpoint: SocketAddr::new(ip, info.port), subnet: info.subnet.clone() },
            );
        }
        let started = self.overlay.device.lock().expect("overlay").is_some();
        if !started {
            if want.is_empty() {
                return Ok(());
            }
            self.overlay_start()?;
        }
        let name = self.overlay_if();
        let applied = self.overlay.applied.lock().expect("overlay").clone();
        if applied != want {
            let (removals, additions) = peer_changes(&applied, &want);
            for (_, p) in &removals {
                if !want.values().any(|w| w.subnet == p.subnet) {
                    let _ = ip(&["route", "del", &p.subnet, "dev", &name]);
                }
            }
            if !removals.is_empty() {
                let lines: String =
                    removals.iter().map(|(key, _)| format!("public_key={key}\nremove=true\n")).collect();
                self.overlay_set(&lines)?;
            }
            if !additions.is_empty() {
                let lines: String = additions
                    .iter()
                    .map(|(key, p)| {
                        format!(
                            "public_key={key}\nendpoint={}\nallowed_ip={}\npersistent_keepalive_interval=25\n",
                            p.endpoint, p.subnet
                        )
                    })
                    .collect();
                self.overlay_set(&lines)?;
            }
            tracing::info!(
                "overlay: {} peers ({})",
                want.len(),
                want.values().map(|p| p.subnet.as_str()).collect::<Vec<_>>().join(", ")
            );
            *self.overlay.applied.lock().expect("overlay") = want.clone();
        }
        // this host reaches the other hosts' subnets through the device, from the gateway's
        // address once the bridge has it: traffic the host itself sends (an ingress
        // port's) then comes from this host's subnet, which the peers allow
        let subnets: Vec<String> = want.values().map(|p| p.subnet.clone()).collect();
        let gateway = self.fabric().gateway().to_string();
        let bridge_up = std::net::UdpSocket::bind((self.fabric().gateway(), 0)).is_ok();
        let routes = (subnets.clone(), bridge_up);
        if *self.overlay.routes.lock().expect("overlay") != routes {
            for s in &subnets {
                let mut args = vec!["route", "replace", s.as_str(), "dev", name.as_str()];
                if bridge_up {
                    args.extend(["src", gateway.as_str()]);
                }
                ip(&args)?;
            }
            *self.overlay.routes.lock().expect("overlay") = routes;
        }
        // each running sandbox VM reaches the other hosts' subnets through its gateway
        let mut routed = self.overlay.routed.lock().expect("overlay");
        for vm in self.vms.list() {
            if vm.state != micro_os_core::vm::VmState::Running || vm.spec.driver != micro_os_core::vm::Driver::Sandbox {
                routed.remove(&vm.id);
                continue;
            }
            if routed.get(&vm.id) == Some(&subnets) {
                continue;
            }
            let ns = micro_os_vmm::netns_name(&vm.id);
            let mut ok = true;
            for s in &subnets {
                ok &= ip(&["-n", &ns, "route", "replace", s, "via", &gateway]).is_ok();
            }
            if ok {
                routed.insert(vm.id.clone(), subnets.clone());
            }
        }
        Ok(())
    }
}

/// The peers in a `get=1` answer, by public key. boringtun gives the time since the last
/// handshake (not since the epoch, as the protocol's text says).
fn parse_links(answer: &str) -> HashMap<String, micro_os_api::types::OverlayLink> {
    let mut out = HashMap::new();
    let mut current: Option<(String, micro_os_api::types::OverlayLink)> = None;
    for line in answer.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        match k {
            "public_key" => {
                out.extend(current.take());
                current = Some((v.to_string(), Default::default()));
            }
            "last_handshake_time_sec" => {
                if let Some((_, l)) = &mut current {
                    l.handshake_s_ago = v.parse().ok();
                }
            }
            "rx_bytes" | "tx_bytes" => {
                if let Some((_, l)) = &mut current {
                    let n = v.parse().unwrap_or(0);
                    if k == "rx_bytes" {
                        l.rx_bytes = n;
                    } else {
                        l.tx_bytes = n;
                    }
                }
            }
            _ => {}
        }
    }
    out.extend(current);
    out
}

/// Peers by public key, as a change names them.
type Changes<'a> = Vec<(&'a String, &'a Peer)>;

/// What turns the peers `applied` into `want`: the peers to remove and those to add.
/// boringtun cannot change a peer in place, so a changed one is in both.
fn peer_changes<'a>(
    applied: &'a BTreeMap<String, Peer>,
    want: &'a BTreeMap<String, Peer>,
) -> (Changes<'a>, Changes<'a>) {
    let removals = applied.iter().filter(|(k, p)| want.get(*k) != Some(p)).collect();
    let additions = want.iter().filter(|(k, p)| applied.get(*k) != Some(p)).collect();
    (removals, additions)
}

/// The first routable IPv4 address among a host's libp2p listen addresses.
fn endpoint_ip(addrs: &[String]) -> Option<IpAddr> {
    addrs.iter().find_map(|a| {
        let ip: std::net::Ipv4Addr = a.strip_prefix("/ip4/")?.split('/').next()?.parse().ok()?;
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(IpAddr::V4(ip))
    })
}

fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::internal(format!("run ip (install iproute2): {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::internal(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_peer_is_removed_and_added_an_unchanged_one_left_alone() {
        let peer = |port: u16, subnet: &str| Peer { endpoint: ([10, 250, 0, 2], port).into(), subnet: subnet.into() };
        let applied: BTreeMap<String, Peer> =
            [("b".into(), peer(51820, "10.62.0.0/24")), ("gone".into(), peer(51820, "10.63.0.0/24"))].into();
        let want: BTreeMap<String, Peer> = [
            ("b".into(), peer(51820, "10.62.0.0/24")),
            ("c".into(), peer(51820, "10.64.0.0/24")),
            ("gone".into(), peer(51821, "10.63.0.0/24")),
        ]
        .into();
        let (removed, added) = peer_changes(&applied, &want);
        let keys = |v: Vec<(&String, &Peer)>| v.into_iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(removed), ["gone"]);
        assert_eq!(keys(added), ["c", "gone"]);
        let (removed, added) = peer_changes(&want, &want);
        assert!(removed.is_empty() && added.is_empty());
    }

    #[test]
    fn a_get_answer_gives_each_peers_handshake_and_bytes() {
        let answer = "own_public_key=aa\nlisten_port=51820\npublic_key=bb\nendpoint=10.250.0.2:51820\n\
                      allowed_ip=10.62.0.0/24\nlast_handshake_time_sec=3\nlast_handshake_time_nsec=5\n\
                      rx_bytes=100\ntx_bytes=200\npublic_key=cc\nrx_bytes=0\ntx_bytes=148\nerrno=0\n\n";
        let links = parse_links(answer);
        assert_eq!(links.len(), 2);
        assert_eq!((links["bb"].handshake_s_ago, links["bb"].rx_bytes, links["bb"].tx_bytes), (Some(3), 100, 200));
        assert_eq!((links["cc"].handshake_s_ago, links["cc"].tx_bytes), (None, 148));
    }

    #[test]
    fn the_endpoint_is_a_routable_ipv4_listen_address() {
        let a = |v: &[&str]| endpoint_ip(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&["/ip4/127.0.0.1/tcp/1", "/ip4/10.250.0.2/tcp/4001"]), Some("10.250.0.2".parse().unwrap()));
        assert_eq!(a(&["/ip4/0.0.0.0/tcp/1", "/ip6/::1/tcp/1"]), None);
    }
}
