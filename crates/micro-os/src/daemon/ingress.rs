//! Ingress ports: a container network's port in `"mode": "ingress"` is published on every
//! host of the fabric. Each daemon listens on the port (on its loopback, as published
//! ports are) and forwards each TCP connection, or each UDP client's datagrams, to one of
//! the containers that publish it (round robin; the next one where a connection is
//! refused), at the address of the container's VM: on this host's VM bridge, or across
//! the encrypted overlay. Which containers publish what comes from this host's tables and
//! from the other members' heartbeats, and is brought up to date at every heartbeat.
//!
//! `"mode": "host"` ports are ordinary published ports of the container (its shim's).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use micro_os_core::{ContainerNetwork, ContainerState, Protocol, PublishMode};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::engine::Engine;

/// How long a connection to a target may take before the next is tried.
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// A UDP client silent this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(120);

/// One container that publishes a port in ingress mode: where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Published {
    pub port: u16,
    pub protocol: Protocol,
    /// The address of the container's VM (the container's port is the same number).
    pub address: Ipv4Addr,
}

/// A listening ingress port and the targets it forwards to.
struct Port {
    targets: Arc<RwLock<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

/// This host's ingress listeners, by (port, protocol).
#[derive(Default)]
pub struct Ingress {
    ports: Mutex<HashMap<(u16, Protocol), Port>>,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        for p in self.ports.lock().unwrap().values() {
            p.task.abort();
        }
    }
}

impl Engine {
    /// The ingress ports this host's running containers on VMs publish.
    pub(super) fn local_ingress(&self) -> Vec<Published> {
        let mut out = Vec::new();
        for c in self.containers.list() {
            if c.state != ContainerState::Running {
                continue;
            }
            let Some(vm) = c.spec.vm.as_deref().and_then(|v| self.vms.get(v)) else { continue };
            let Some(net) = c.spec.network.as_ref().and_then(|n| ContainerNetwork::parse(n).ok()) else { continue };
            for (port, protocol, mode) in net.published() {
                if mode == PublishMode::Ingress {
                    out.push(Published { port, protocol, address: vm.address });
                }
            }
        }
        out
    }

    /// Listens on every ingress port the fabric publishes, forwarding to its publishers
    /// as they are now; closes the ports no one publishes any more.
    pub(super) fn ingress_sync(&self) {
        let mut wanted: HashMap<(u16, Protocol), Vec<SocketAddr>> = HashMap::new();
        let mut all = self.local_ingress();
        all.extend(self.hosts.fabric_ingress());
        all.sort();
        all.dedup();
        for p in all {
            wanted.entry((p.port, p.protocol)).or_default().push(SocketAddr::from((p.address, p.port)));
        }
        let mut ports = self.ingress.ports.lock().unwrap();
        ports.retain(|key, p| {
            let keep = wanted.contains_key(key) && !p.task.is_finished();
            if !keep {
                p.task.abort();
                tracing::info!("ingress: port {}/{} closed", key.0, protocol_name(key.1));
            }
            keep
        });
        for (key, targets) in wanted {
            if let Some(p) = ports.get(&key) {
                *p.targets.write().unwrap() = targets;
                continue;
            }
            let at = SocketAddr::from((Ipv4Addr::LOCALHOST, key.0));
            let targets = Arc::new(RwLock::new(targets));
            let task = match key.1 {
                Protocol::Tcp => match std::net::TcpListener::bind(at).and_then(|l| {
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)
                }) {
                    Ok(l) => tokio::spawn(serve_tcp(l, targets.clone())),
                    Err(e) => {
                        tracing::warn!("ingress: cannot listen on {at}/tcp: {e}");
                        continue;
                    }
                },
                Protocol::Udp => match std::net::UdpSocket::bind(at).and_then(|s| {
                    s.set_nonblocking(true)?;
                    UdpSocket::from_std(s)
                }) {
                    Ok(s) => tokio::spawn(serve_udp(Arc::new(s), targets.clone())),
                    Err(e) => {
                        tracing::warn!("ingress: cannot listen on {at}/udp: {e}");
                        continue;
                    }
                },
            };
            tracing::info!("ingress: port {}/{} published on this host", key.0, protocol_name(key.1));
            ports.insert(key, Port { targets, task });
        }
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The targets in turn, starting at the next of the round.
fn in_turn(targets: &RwLock<Vec<SocketAddr>>, next: &AtomicUsize) -> Vec<SocketAddr> {
    let t = targets.read().unwrap().clone();
    if t.is_empty() {
        return t;
    }
    let start = next.fetch_add(1, Ordering::Relaxed) % t.len();
    t[start..].iter().chain(&t[..start]).copied().collect()
}

async fn serve_tcp(listener: TcpListener, targets: Arc<RwLock<Vec<SocketAddr>>>) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut client, _)) = listener.accept().await else { continue };
        let _ = client.set_nodelay(true);
        let order = in_turn(&targets, &next);
        tokio::spawn(async move {
            for to in order {
                if let Ok(Ok(mut upstream)) = tokio::time::timeout(CONNECT_WAIT, TcpStream::connect(to)).await {
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
            }
        });
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, targets: Arc<RwLock<Vec<SocketAddr>>>) {
    let next = AtomicUsize::new(0);
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
        let existing = flows.lock().unwrap().get(&from).cloned();
        let upstream = match existing {
            Some(u) => u,
            None => {
                let Some(to) = in_turn(&targets, &next).first().copied() else { continue };
                let Ok(u) = UdpSocket::bind("0.0.0.0:0").await else { continue };
                if u.connect(to).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                flows.lock().unwrap().insert(from, u.clone());
                let (socket, flows, answers) = (socket.clone(), flows.clone(), u.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, answers.recv(&mut buf)).await {
                        let _ = socket.send_to(&buf[..n], from).await;
                    }
                    flows.lock().unwrap().remove(&from);
                });
                u
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_taken_in_turn_from_the_next_one() {
        let t: Vec<SocketAddr> = (1..=3).map(|i| SocketAddr::from(([10, 0, 0, i], 80))).collect();
        let targets = RwLock::new(t.clone());
        let next = AtomicUsize::new(0);
        assert_eq!(in_turn(&targets, &next), t);
        assert_eq!(in_turn(&targets, &next), [t[1], t[2], t[0]]);
        assert_eq!(in_turn(&targets, &next), [t[2], t[0], t[1]]);
        assert!(in_turn(&RwLock::new(Vec::new()), &next).is_empty());
    }
}
