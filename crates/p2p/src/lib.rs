//! A micro-os libp2p peer — the host's (in the daemon) and every VM's (in its agent):
//! TCP (noise or TLS 1.3 with the CPU's fastest cipher first, + yamux) and QUIC, identify, ping, connection limits, mDNS and
//! Kademlia (`/micro-os/kad/1`) for discovery and for the resources a VM offers, relay v2,
//! dcutr and autonat where configured, the versioned request-response protocol
//! `/micro-os/msg/1` for signed envelopes (`micro_os_net`), gossipsub for broadcasts,
//! `/micro-os/data/1` for DATA too large for one envelope (`stream`), and the protocols
//! other crates register (`registry`).
//!
//! Every envelope is verified — signature, known sender (`Policy`), time window, nonce
//! (remembered through a `micro_os_net::NonceStore`, so replays fail after a restart too),
//! delegation — before it counts; requests that arrive together on `/micro-os/msg/1` are
//! verified as one ed25519 batch. Rejections are counted by reason and cost the peer score;
//! each peer's requests are rate limited, and a peer whose score falls too low is
//! disconnected and banned for a while (`limits`).
//!
//! Design decision: the swarm runs in one task (`node::Node`) that owns every piece of
//! mutable state (verifier, signer, counters); the rest of the process talks to it with
//! commands through a cloneable [`Handle`]. A new protocol does not add a branch to that
//! task: it registers a [`ProtocolHandler`] with [`Handle::register`] and is served over
//! libp2p-stream, one stream per request, after the node has verified the envelope. The
//! built-in `/micro-os/msg/1` stays on request-response (its JSON codec is what other
//! libp2p implementations speak to us) and `/micro-os/data/1` keeps its own framing.
//!
//! This crate knows nothing of HTTP, the API types or the store: what it reports are the
//! `micro_os_core::net` types, and what it persists goes through `NonceStore`.

#[cfg(test)]
mod attacks;
mod codec;
mod discovery;
mod error;
mod handle;
pub mod limits;
mod messaging;
mod node;
mod outbox;
pub mod registry;
mod security;
mod send;
pub mod stream;
mod swarm;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{Error, StreamError};
pub use handle::{Delivery, Handle};
pub use limits::Limits;
pub use node::spawn;
pub use registry::{ProtocolHandler, Refusal, Request};
pub use security::{Security, SecurityError};

pub use libp2p;
pub use libp2p::{Multiaddr, PeerId, StreamProtocol};
pub use micro_os_core::net::{Ack, NetStatus, PeerInfo, Provider};
pub use micro_os_net as net;

/// Who may send us messages, besides the configured trusted and bootstrap peers.
pub trait Policy: Send + Sync + 'static {
    fn known(&self, peer: &PeerId) -> bool;
}

/// NAT traversal, per host: autonat finds out whether we are reachable, a relay server
/// (circuit relay v2) serves peers that are not, a relay client reserves a slot on a
/// relay (listen on `<relay addr>/p2p-circuit`) and dcutr upgrades relayed connections
/// to direct ones by hole punching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Nat {
    pub autonat: bool,
    pub relay_server: bool,
    pub relay_client: bool,
}

pub struct Config {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub trusted: Vec<PeerId>,
    /// Seconds between signing-key rotations (the identity key only delegates).
    pub rotate_every: u64,
    /// Find peers on the local network by multicast DNS. libp2p's mDNS cannot be held to
    /// some interfaces, so it stays off when every listen address is on loopback (it would
    /// announce the peer on every interface of the machine).
    pub mdns: bool,
    pub nat: Nat,
    /// Addresses others reach us at (behind NAT, a forwarded port). A relay server serves
    /// only when it has one; without any given, its listen addresses count.
    pub external: Vec<Multiaddr>,
    /// Where named DATA streams are kept once verified; without it they are counted only.
    pub inbox: Option<PathBuf>,
    /// A leaf of the DHT (a VM's agent): a Kademlia client whose routing table holds only
    /// the peers given with `Handle::add_dht_peer` (its host); peers it finds by mDNS are
    /// noted, not dialed. So a host's VMs do not grow a full mesh of connections (each
    /// costs about a MiB, and gossipsub keeps mesh connections open).
    pub leaf: bool,
    /// Time between Kademlia bootstrap rounds; a round runs only when the routing table
    /// holds a peer (a lone host is normal, not an error).
    pub bootstrap_every: Duration,
    /// The security protocol proposed first on the TCP connections this peer dials.
    pub security: Security,
    /// Per-peer request budget, and the score below which a peer is banned.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: vec![],
            bootstrap: vec![],
            trusted: vec![],
            rotate_every: 3600,
            mdns: false,
            nat: Nat::default(),
            external: vec![],
            inbox: None,
            leaf: false,
            bootstrap_every: Duration::from_secs(5 * 60),
            security: Security::Auto,
            limits: Limits::default(),
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Peers for the tests of this crate's modules.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use libp2p::identity::Keypair;
    use micro_os_net::MemoryNonces;

    use crate::{spawn, Config, Handle, Multiaddr, Nat, PeerId, Policy};

    pub struct Anyone;

    impl Policy for Anyone {
        fn known(&self, _: &PeerId) -> bool {
            true
        }
    }

    pub fn config(listen: &[&str], nat: Nat) -> Config {
        Config { listen: listen.iter().map(|a| a.parse().unwrap()).collect(), nat, ..Config::default() }
    }

    pub fn node(listen: &[&str], nat: Nat) -> (Handle, PeerId) {
        node_with_inbox(listen, nat, None)
    }

    pub fn node_with_inbox(listen: &[&str], nat: Nat, inbox: Option<PathBuf>) -> (Handle, PeerId) {
        let k = Keypair::generate_ed25519();
        let id = k.public().to_peer_id();
        let cfg = Config { inbox, ..config(listen, nat) };
        (spawn(k, cfg, Box::new(MemoryNonces::default()), Arc::new(Anyone)).unwrap(), id)
    }

    pub async fn listening(h: &Handle) -> Multiaddr {
        for _ in 0..100 {
            if let Some(a) = h.status().await.and_then(|s| s.listen.into_iter().next()) {
                return a.parse().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the peer never listened");
    }
}
