//! The VM bridge's resolver: containers find each other by name, across the fabric.
//!
//! The daemon answers DNS on its VM bridge's gateway (UDP 53). `<container>.<network>` is
//! the address of the VM the container runs on (a container shares its VM's network
//! namespace): this host's containers from its own tables, every other host's from the
//! names and addresses its heartbeat carries over the signed libp2p channel. A
//! replicated container's name answers with the address of each replica. A name under a
//! network the fabric knows but no container holds is NXDOMAIN; any other name is passed
//! to the host's own resolvers (its `/etc/resolv.conf`). Containers on VMs get a
//! `resolv.conf` naming the gateway, with their network as search domain, so their bare
//! name works too.
//!
//! A container's network is `network.name` of its spec (`"network": {"mode": "overlay",
//! "name": "chain-net"}`), else [`DEFAULT_NETWORK`].

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
use micro_os_core::{ContainerNetwork, ContainerSpec};
use tokio::net::UdpSocket;

use super::engine::Engine;

/// The network of a container whose spec names none.
pub const DEFAULT_NETWORK: &str = "micro-os";
/// How long an answer may be cached: names move when containers do.
const TTL: u32 = 5;
/// How long an upstream resolver has to answer a passed-on query.
const UPSTREAM_WAIT: Duration = Duration::from_secs(3);

/// The network a container's spec puts it on.
pub fn network_of(spec: &ContainerSpec) -> String {
    spec.network
        .as_ref()
        .and_then(|n| ContainerNetwork::parse(n).ok())
        .and_then(|n| n.name)
        .map_or_else(|| DEFAULT_NETWORK.to_string(), |n| n.to_ascii_lowercase())
}

/// The `resolv.conf` of a container on `network`, whose resolver is at `gateway`.
pub fn resolv_conf(gateway: Ipv4Addr, network: &str) -> String {
    format!("nameserver {gateway}\nsearch {network}\noptions ndots:1\n")
}

/// What a query's name is, to this resolver.
#[derive(Debug, PartialEq)]
enum Found {
    /// A container's name: its addresses.
    Names(Vec<Ipv4Addr>),
    /// Under a network the fabric knows, but no container's.
    NoSuchName,
    /// Not ours: the host's resolvers answer it.
    Elsewhere,
}

/// Looks `name` (lowercase, no trailing dot) up in `records` (`<container>.<network>`,
/// address).
fn find(records: &[(String, Ipv4Addr)], name: &str) -> Found {
    let found: BTreeSet<Ipv4Addr> = records.iter().filter(|(n, _)| n == name).map(|(_, a)| *a).collect();
    if !found.is_empty() {
        return Found::Names(found.into_iter().collect());
    }
    let ours = |net: &str| name.strip_suffix(net).is_some_and(|head| head.ends_with('.') && head.len() > 1);
    let networks: BTreeSet<&str> = records.iter().filter_map(|(n, _)| n.split_once('.').map(|(_, net)| net)).collect();
    if ours(DEFAULT_NETWORK) || networks.into_iter().any(ours) {
        return Found::NoSuchName;
    }
    Found::Elsewhere
}

/// The answer to `query` from `records`, or `None` when the host's resolvers should
/// answer it (or it is not a query at all).
fn answer(query: &Message, records: &[(String, Ipv4Addr)]) -> Option<Message> {
    if query.message_type() != MessageType::Query || query.op_code() != OpCode::Query {
        return None;
    }
    let q = query.queries().first()?.clone();
    let name = q.name().to_lowercase().to_ascii();
    let name = name.trim_end_matches('.');
    let found = find(records, name);
    if found == Found::Elsewhere {
        return None;
    }
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(q.clone());
    match found {
        Found::Names(addrs) => {
            // A records for A (and ANY); an empty NOERROR for other types, so that a
            // client asking AAAA first falls back at once
            if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                for a in addrs {
                    reply.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(a))));
                }
            }
        }
        _ => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    Some(reply)
}

/// The host's resolvers, from its `/etc/resolv.conf`: IPv4 ones, not the gateway itself.
fn upstreams(gateway: Ipv4Addr) -> Vec<SocketAddr> {
    let Ok(raw) = std::fs::read("/etc/resolv.conf") else { return Vec::new() };
    let Ok(cfg) = resolv_conf::Config::parse(&raw) else { return Vec::new() };
    cfg.nameservers
        .into_iter()
        .filter_map(|ns| match IpAddr::from(ns) {
            IpAddr::V4(a) if a != gateway => Some(SocketAddr::from((a, 53))),
            _ => None,
        })
        .collect()
}

/// Passes a query on to the host's first resolver that answers.
async fn pass_on(raw: &[u8], gateway: Ipv4Addr) -> Option<Vec<u8>> {
    for upstream in upstreams(gateway) {
        let Ok(s) = UdpSocket::bind("0.0.0.0:0").await else { continue };
        if s.send_to(raw, upstream).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) = tokio::time::timeout(UPSTREAM_WAIT, s.recv_from(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

impl Engine {
    /// The names this host's containers on VMs answer to: (`<container>.<network>`, the
    /// VM's address); a replica also answers to its replicated container's name.
    pub(super) fn local_names(&self) -> Vec<(String, Ipv4Addr)> {
        let mut out = Vec::new();
        for c in self.containers.list() {
            let Some(vm) = c.spec.vm.as_deref().and_then(|v| self.vms.get(v)) else { continue };
            let network = network_of(&c.spec);
            out.push((format!("{}.{network}", c.spec.name.to_ascii_lowercase()), vm.address));
            if let Some(parent) = c.spec.replica_of.as_deref().and_then(|p| self.containers.get(p)) {
                out.push((format!("{}.{network}", parent.spec.name.to_ascii_lowercase()), vm.address));
            }
        }
        out
    }

    /// Every name the fabric's containers answer to: this host's and, by their last
    /// heartbeats, the other members'.
    fn fabric_names(&self) -> Vec<(String, Ipv4Addr)> {
        let mut all = self.local_names();
        all.extend(self.hosts.fabric_names());
        all
    }

    /// Answers DNS on the VM bridge's gateway, once the bridge is up (the first VM's start
    /// makes it), until the daemon stops.
    pub(super) fn start_dns(self: &Arc<Self>) {
        let engine = Arc::downgrade(self);
        let gateway = self.fabric().gateway();
        tokio::spawn(async move {
            let socket = loop {
                match UdpSocket::bind((gateway, 53)).await {
                    Ok(s) => break Arc::new(s),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {}
                    Err(e) => {
                        tracing::warn!("dns: cannot answer on {gateway}:53: {e}");
                        return;
                    }
                }
                if engine.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            tracing::info!("dns: answering containers' names on {gateway}:53");
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
                let Some(e) = engine.upgrade() else { return };
                let raw = buf[..n].to_vec();
                let socket = socket.clone();
                tokio::spawn(async move {
                    let Ok(query) = Message::from_vec(&raw) else { return };
                    let reply = match answer(&query, &e.fabric_names()) {
                        Some(m) => m.to_vec().ok(),
                        None => pass_on(&raw, gateway).await,
                    };
                    if let Some(reply) = reply {
                        let _ = socket.send_to(&reply, from).await;
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn records() -> Vec<(String, Ipv4Addr)> {
        vec![
            ("srv.micro-os".into(), Ipv4Addr::new(10, 88, 1, 2)),
            ("node.chain-net".into(), Ipv4Addr::new(10, 88, 2, 2)),
            ("node.chain-net".into(), Ipv4Addr::new(10, 88, 3, 2)),
        ]
    }

    fn ask(name: &str, kind: RecordType) -> Option<Message> {
        let mut q = Message::new();
        q.set_id(7).set_recursion_desired(true).add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        let q = Message::from_vec(&q.to_vec().unwrap()).unwrap();
        answer(&q, &records())
    }

    fn addrs(m: &Message) -> Vec<Ipv4Addr> {
        m.answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_container_name_answers_with_its_vms_addresses() {
        let m = ask("srv.micro-os.", RecordType::A).unwrap();
        assert_eq!(
            (m.id(), m.response_code(), addrs(&m)),
            (7, ResponseCode::NoError, vec![Ipv4Addr::new(10, 88, 1, 2)])
        );
        // case does not matter; a replicated container answers with each replica
        let m = ask("NODE.Chain-Net.", RecordType::A).unwrap();
        assert_eq!(addrs(&m), [Ipv4Addr::new(10, 88, 2, 2), Ipv4Addr::new(10, 88, 3, 2)]);
        // AAAA of a known name: empty, not an error
        let m = ask("srv.micro-os.", RecordType::AAAA).unwrap();
        assert_eq!((m.response_code(), m.answers().len()), (ResponseCode::NoError, 0));
    }

    #[test]
    fn an_unknown_name_of_a_known_network_is_nxdomain_and_others_go_upstream() {
        for name in ["nope.micro-os.", "nope.chain-net."] {
            assert_eq!(ask(name, RecordType::A).unwrap().response_code(), ResponseCode::NXDomain, "{name}");
        }
        for name in ["example.org.", "micro-os.", "xmicro-os."] {
            assert!(ask(name, RecordType::A).is_none(), "{name} is not ours");
        }
    }

    #[test]
    fn a_containers_network_is_its_specs_or_the_default() {
        let mut spec: ContainerSpec = serde_json::from_str(r#"{"name":"n","image":"busybox"}"#).unwrap();
        assert_eq!(network_of(&spec), DEFAULT_NETWORK);
        spec.network = Some(serde_json::json!({"mode": "overlay", "name": "Chain-Net"}));
        assert_eq!(network_of(&spec), "chain-net");
        assert_eq!(
            resolv_conf(Ipv4Addr::new(10, 88, 0, 1), "chain-net"),
            "nameserver 10.88.0.1\nsearch chain-net\noptions ndots:1\n"
        );
    }
}
