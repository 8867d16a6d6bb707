//! Finding peers and resources: listen addresses, bootstrap peers, identify, ping, mDNS,
//! and the Kademlia DHT (routing table, bootstrap rounds, provider records).

use std::collections::BTreeSet;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{identify, kad, mdns, ping, Multiaddr, PeerId};
use micro_os_core::net::Provider;
use tokio::sync::oneshot;

use crate::node::{Discovered, Node};
use crate::swarm::KAD_PROTOCOL;

fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Whether mDNS may run for these listen addresses. libp2p's mDNS (0.56) has no way to
/// keep to some interfaces: it answers on every interface of the machine. A peer that
/// listens on loopback only must not be announced on the others, so mDNS is off unless
/// some listen address is not on loopback (`0.0.0.0` or an interface's address).
pub(crate) fn mdns_allowed(listen: &[Multiaddr]) -> bool {
    listen.iter().any(|a| !is_loopback(a) && !a.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
}

type Kad = kad::Behaviour<kad::store::MemoryStore>;

/// Kademlia, bootstrapped only when its routing table holds a peer. Kademlia starts a
/// bootstrap of its own whenever a listen address appears while it has no connection, and
/// warns "Failed to trigger bootstrap: No known peers" when it has none to ask: on a lone
/// host, which is normal. This wrapper keeps new listen addresses from it while its
/// routing table is empty (it uses them for nothing else); periodic rounds are the node's
/// (`Node::bootstrap`), and Kademlia's own bootstrap after a peer enters the table stays.
pub(crate) struct Dht(pub Kad);

impl std::ops::Deref for Dht {
    type Target = Kad;

    fn deref(&self) -> &Kad {
        &self.0
    }
}

impl std::ops::DerefMut for Dht {
    fn deref_mut(&mut self) -> &mut Kad {
        &mut self.0
    }
}

impl NetworkBehaviour for Dht {
    type ConnectionHandler = <Kad as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = kad::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.0.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0.handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.0.handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0.handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if matches!(event, FromSwarm::NewListenAddr(_)) && !self.0.kbuckets().any(|b| b.num_entries() > 0) {
            return;
        }
        self.0.on_swarm_event(event)
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        self.0.on_connection_handler_event(peer, id, event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.0.poll(cx)
    }
}

impl Node {
    pub fn new_listen_addr(&mut self, address: Multiaddr) {
        tracing::info!("p2p listening on {address}/p2p/{}", self.id);
        // a VM's bridge address is reachable by everyone it deals with: it goes into the
        // provider records the VM publishes, so askers learn where to find it
        if self.listen_is_external || (self.leaf && !is_loopback(&address)) {
            self.swarm.add_external_address(address.clone());
        }
        self.listen.push(address);
    }

    /// Bootstrap peers are trusted, go into the routing table and are dialed at once.
    pub fn add_bootstrap_peers(&mut self, peers: &[Multiaddr]) {
        for a in peers {
            if let Some(Protocol::P2p(p)) = a.iter().last() {
                self.trusted.push(p);
                self.swarm.behaviour_mut().kad.add_address(&p, a.clone());
                self.peer(p).discovered_by("bootstrap");
            }
            if let Err(e) = self.swarm.dial(a.clone()) {
                tracing::warn!("bootstrap peer {a}: {e}");
            }
        }
    }

    /// A bootstrap round of the DHT, when its routing table holds a peer; a host alone is
    /// normal and has nothing to bootstrap from.
    pub fn bootstrap(&mut self) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        if !kad.kbuckets().any(|b| b.num_entries() > 0) {
            tracing::debug!("no DHT bootstrap: no known peers");
            return;
        }
        if let Err(e) = kad.bootstrap() {
            tracing::debug!("no DHT bootstrap: {e}");
        }
    }

    /// A peer's address learned from the network goes into the DHT's routing table,
    /// unless this peer is a leaf, whose table holds only its host (`AddDhtPeer`).
    pub fn route(&mut self, peer: PeerId, addr: Multiaddr) {
        if !self.leaf {
            self.swarm.behaviour_mut().kad.add_address(&peer, addr);
        }
    }

    /// (Re)publishes our provider records to the closest peers we know.
    pub fn announce(&mut self) {
        for k in &self.provides {
            if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(kad::RecordKey::new(k)) {
                tracing::warn!("advertise {k}: {e}");
            }
        }
    }

    /// Advertise exactly these keys.
    pub fn provide(&mut self, keys: Vec<String>) {
        let keys: BTreeSet<String> = keys.into_iter().collect();
        for gone in self.provides.difference(&keys) {
            self.swarm.behaviour_mut().kad.stop_providing(&kad::RecordKey::new(gone));
        }
        self.provides = keys;
        self.announce();
    }

    pub fn find(&mut self, key: String, reply: oneshot::Sender<Vec<Provider>>) {
        let q = self.swarm.behaviour_mut().kad.get_providers(kad::RecordKey::new(&key));
        self.finds.insert(q, (BTreeSet::new(), reply));
    }

    fn provider(&self, p: PeerId) -> Provider {
        let info = self.peers.get(&p);
        Provider {
            peer_id: p.to_string(),
            vm: None,
            addresses: info.map(|i| i.addresses.clone()).unwrap_or_default(),
            connected: info.is_some_and(|i| i.connected) || p == self.id,
        }
    }

    pub fn on_ping(&mut self, e: ping::Event) {
        if let (Ok(rtt), Some(p)) = (e.result, self.peers.get_mut(&e.peer)) {
            p.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
        }
    }

    pub fn on_identify(&mut self, e: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = e else { return };
        // the listen addresses of peers that serve the DHT go into its routing table (not
        // a leaf's: it knows only its host; not agents': they are clients, or queries
        // would send their askers to every VM); loopback ones only when they are on our
        // loopback too
        let local = self.peers.get(&peer_id).is_some_and(|p| p.addresses.iter().any(|a| a.contains("/127.0.0.1/")));
        let serves = info.protocols.contains(&KAD_PROTOCOL);
        for a in info.listen_addrs.into_iter().filter(|_| serves) {
            if local || !is_loopback(&a) {
                self.route(peer_id, a);
            }
        }
        self.peer(peer_id).agent = Some(info.agent_version);
    }

    pub fn on_mdns(&mut self, e: mdns::Event) {
        let mdns::Event::Discovered(found) = e else { return };
        for (peer, addr) in found {
            if peer == self.id {
                continue;
            }
            self.swarm.add_peer_address(peer, addr.clone());
            self.peer(peer).discovered_by("mdns");
            self.route(peer, addr);
            if !self.leaf && !self.swarm.is_connected(&peer) {
                let _ = self.swarm.dial(peer);
            }
        }
    }

    pub fn on_kad(&mut self, e: kad::Event) {
        match e {
            kad::Event::RoutingUpdated { peer, is_new_peer, .. } => {
                if !self.peers.contains_key(&peer) {
                    self.peer(peer).discovered_by("kad");
                }
                // a new neighbour may be closer to our keys than any before
                if is_new_peer && !self.provides.is_empty() {
                    self.announce();
                }
            }
            kad::Event::OutboundQueryProgressed { id, result: kad::QueryResult::GetProviders(r), step, .. } => {
                if let (Some((found, _)), Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) =
                    (self.finds.get_mut(&id), r)
                {
                    found.extend(providers);
                }
                if step.last {
                    if let Some((found, reply)) = self.finds.remove(&id) {
                        let list = found.into_iter().map(|p| self.provider(p)).collect();
                        let _ = reply.send(list);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::{listening, node};
    use crate::{Nat, NetStatus};
    use micro_os_net::MessageType;

    #[tokio::test]
    async fn peers_reach_each_other_through_a_relay() {
        let relay = Nat { relay_server: true, ..Nat::default() };
        let (r, r_id) = node(&["/ip4/127.0.0.1/tcp/0"], relay);
        let circuit = format!("{}/p2p/{r_id}/p2p-circuit", listening(&r).await);
        // L is reachable only through its reservation on R; D dials L's circuit address
        let client = Nat { relay_client: true, ..Nat::default() };
        let (l, l_id) = node(&[&circuit], client);
        let (d, _) = node(&[], client);
        let target: Multiaddr = format!("{circuit}/p2p/{l_id}").parse().unwrap();
        let mut last = String::new();
        let mut delivered = None;
        for _ in 0..50 {
            d.dial(target.clone()).await;
            match tokio::time::timeout(Duration::from_secs(2), d.send(l_id, MessageType::Ping, "hi".into())).await {
                Ok(Ok(x)) => {
                    delivered = Some(x);
                    break;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(delivered) = delivered else {
            panic!("no message got through the relay: {last}; L: {:?}", l.status().await);
        };
        assert!(delivered.ack.accepted, "{:?}", delivered.ack.reason);
        let st = l.status().await.unwrap();
        let from_d = st.peers.iter().find(|p| p.peer_id == d_id_of(&st, &r_id)).cloned();
        let from_d = from_d.expect("L does not know D");
        assert!(from_d.discovered.contains(&"relay".to_string()), "{from_d:?}");
        assert_eq!(from_d.messages_in, 1, "{from_d:?}");
        let to_l = d.status().await.unwrap().peers.into_iter().find(|p| p.peer_id == l_id.to_string()).unwrap();
        assert!(to_l.addresses.iter().any(|a| a.contains("/p2p-circuit/")), "D did not go through R: {to_l:?}");
    }

    /// The one peer of L's that is neither the relay nor L itself.
    fn d_id_of(st: &NetStatus, relay: &PeerId) -> String {
        st.peers.iter().map(|p| p.peer_id.clone()).find(|p| p != &relay.to_string()).unwrap_or_default()
    }

    /// What a test's peers log at WARN and above.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_lone_host_does_not_warn_about_bootstrapping() {
        let log = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer({
                let log = log.clone();
                move || log.clone()
            })
            .finish();
        // the test's runtime runs the node's task on this thread
        let _guard = tracing::subscriber::set_default(subscriber);
        let k = libp2p::identity::Keypair::generate_ed25519();
        let cfg = crate::Config {
            bootstrap_every: Duration::from_millis(50),
            ..crate::testing::config(&["/ip4/127.0.0.1/tcp/0"], Nat::default())
        };
        let h = crate::spawn(
            k,
            cfg,
            Box::new(micro_os_net::MemoryNonces::default()),
            std::sync::Arc::new(crate::testing::Anyone),
        )
        .unwrap();
        listening(&h).await;
        // ten bootstrap periods, alone
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(h.status().await.is_some());
        let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
        assert!(!text.contains("bootstrap"), "a lone host warned: {text}");
    }
}
