//! The swarm: transports, connection limits and the behaviours a peer runs.

use std::time::Duration;

use crate::{codec, discovery, security, Config, Error};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, noise, ping, relay, tcp,
    yamux, StreamProtocol, Swarm,
};

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Peers banned for a low score (`limits`): their connections are closed and refused.
    pub banned: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub msg: request_response::Behaviour<codec::Codec>,
    pub gossip: gossipsub::Behaviour,
    pub kad: discovery::Dht,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub relay: Toggle<relay::Behaviour>,
    pub relay_client: Toggle<relay::client::Behaviour>,
    pub dcutr: Toggle<dcutr::Behaviour>,
    pub autonat: Toggle<autonat::Behaviour>,
    /// `/micro-os/data/1` and the registered protocols.
    pub streams: libp2p_stream::Behaviour,
}

/// The broadcast topic: envelopes to "*", in gossipsub's strict signing mode.
pub(crate) const BROADCAST_TOPIC: &str = "/micro-os/broadcast/1";
pub(crate) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/micro-os/kad/1");
pub(crate) const MSG_PROTOCOL: StreamProtocol = StreamProtocol::new("/micro-os/msg/1");

pub(crate) fn build(keypair: libp2p::identity::Keypair, cfg: &Config) -> Result<Swarm<Behaviour>, Error> {
    let nat = cfg.nat;
    let mdns_on = cfg.mdns && discovery::mdns_allowed(&cfg.listen);
    if cfg.mdns && !mdns_on {
        tracing::info!(
            "mDNS is off: every listen address is on loopback, and libp2p's mDNS would announce this peer on \
             every interface of the machine (listen on another address to use it)"
        );
    }
    let leaf = cfg.leaf;
    let security = cfg.security;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        // noise and TLS 1.3, proposed in the order `cfg.security` gives (the dialer's
        // first that the listener supports wins)
        .with_tcp(
            tcp::Config::default().nodelay(true),
            |key: &libp2p::identity::Keypair| security::Upgrade::new(key, security),
            yamux::Config::default,
        )
        .map_err(Error::build)?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(Error::build)?
        .with_behaviour(|key, relay_client| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            let me = key.public().to_peer_id();
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .heartbeat_interval(Duration::from_secs(1))
                .build()?;
            let gossip = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_cfg)?;
            let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
            kad_cfg.set_query_timeout(Duration::from_secs(10));
            // the routing table holds only peers we put there (bootstrap peers, DHT servers
            // that identify, mDNS neighbours of a host, a leaf's host): kad would otherwise
            // add every VM the host dials, and queries would then connect VMs to each other
            kad_cfg.set_kbucket_inserts(kad::BucketInserts::Manual);
            // the node bootstraps on its own timer, and only when it knows a peer: kad's own
            // periodic bootstrap warns "No known peers" every five minutes on a lone host
            kad_cfg.set_periodic_bootstrap_interval(None);
            let mut kad = kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), kad_cfg);
            // a host serves the DHT (it has no confirmed external address, yet must answer
            // queries); a leaf only asks and advertises through its host, so its siblings
            // never learn of it from the DHT and never connect just to run a query
            kad.set_mode(Some(if leaf { kad::Mode::Client } else { kad::Mode::Server }));
            let mdns = if mdns_on { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), me)?) } else { None };
            Ok(Behaviour {
                banned: allow_block_list::Behaviour::default(),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(512))
                        .with_max_established_incoming(Some(384))
                        .with_max_established_per_peer(Some(4))
                        .with_max_pending_incoming(Some(64))
                        .with_max_pending_outgoing(Some(64)),
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new("/micro-os/id/1".into(), key.public())
                        .with_agent_version(format!("micro-os/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_secs(5)).with_timeout(Duration::from_secs(10)),
                ),
                msg: request_response::Behaviour::with_codec(
                    codec::Codec,
                    [(MSG_PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
                ),
                gossip,
                kad: discovery::Dht(kad),
                mdns: mdns.into(),
                relay: nat.relay_server.then(|| relay::Behaviour::new(me, relay::Config::default())).into(),
                relay_client: nat.relay_client.then_some(relay_client).into(),
                dcutr: nat.relay_client.then(|| dcutr::Behaviour::new(me)).into(),
                autonat: nat.autonat.then(|| autonat::Behaviour::new(me, autonat::Config::default())).into(),
                streams: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(Error::build)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok(swarm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::config;
    use crate::Nat;

    fn mdns_runs(listen: &[&str]) -> bool {
        let cfg = Config { mdns: true, ..config(listen, Nat::default()) };
        let swarm = build(libp2p::identity::Keypair::generate_ed25519(), &cfg).unwrap();
        swarm.behaviour().mdns.is_enabled()
    }

    #[tokio::test]
    async fn mdns_stays_off_when_the_peer_listens_on_loopback_only() {
        // it would announce the peer on every interface of the machine
        assert!(!mdns_runs(&["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"]));
        assert!(!mdns_runs(&["/ip6/::1/tcp/4001"]));
        assert!(mdns_runs(&["/ip4/0.0.0.0/tcp/4001"]), "an agent on its VM's network");
        assert!(mdns_runs(&["/ip4/127.0.0.1/tcp/4001", "/ip4/10.88.0.1/tcp/4001"]));
    }
}
