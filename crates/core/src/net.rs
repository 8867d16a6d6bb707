//! The P2P layer's vocabulary: a peer's status (`NetStatus`, `PeerInfo`), the providers
//! of a resource key, the answer to a message (`Ack`), and what a `net send` asks for and
//! what it reports: the same shape whether the host or a VM's agent sends, so the daemon
//! relays an agent's report unchanged and the REST API serves these types as they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The answer to a delivered P2P message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ack {
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One peer of the host's libp2p node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PeerInfo {
    pub peer_id: String,
    pub addresses: Vec<String>,
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// What the peer says it runs (identify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Grows with verified messages, falls with refused ones.
    pub score: i64,
    /// How we learned of the peer: bootstrap, mdns, kad, relay (none: it called us or we
    /// were told to dial it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovered: Vec<String>,
    pub messages_in: u64,
    pub messages_out: u64,
    /// Bytes of envelopes received from and sent to the peer.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// `GET /api/v1/monitor/network`: the host's libp2p node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetStatus {
    pub peer_id: String,
    pub listen: Vec<String>,
    pub peers: Vec<PeerInfo>,
    /// Accepted messages by type.
    pub messages: BTreeMap<String, u64>,
    /// Messages sent by type (a DATA stream counts as one DATA message).
    #[serde(default)]
    pub messages_sent: BTreeMap<String, u64>,
    /// Refused messages by reason.
    pub rejections: BTreeMap<String, u64>,
    /// Reachability as autonat found it (public, private, unknown); absent when autonat is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
    /// Resource keys this peer advertises in the DHT.
    #[serde(default)]
    pub provides: Vec<String>,
    /// DATA streams accepted, and their bytes.
    #[serde(default)]
    pub streams_in: u64,
    #[serde(default)]
    pub stream_bytes_in: u64,
}

/// A peer that advertises a resource (a Kademlia provider record).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Provider {
    pub peer_id: String,
    /// The VM of this host that the peer is, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    pub addresses: Vec<String>,
    pub connected: bool,
}

/// Messages to send from one peer to another.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SendJob {
    /// Peer id of the receiver.
    pub to: String,
    /// SYNC, DISC, DATA, CTRL or PING.
    pub kind: String,
    pub state: String,
    /// This many messages, at most `LOW_IN_FLIGHT` of the low priorities in flight.
    pub count: u32,
    /// Pad each message's state to this many bytes; for a stream, its length.
    pub size: Option<u64>,
    /// Send this file as a DATA stream (a path the sender can read).
    pub file: Option<String>,
    /// Send as a DATA stream (`/micro-os/data/1`) rather than as messages.
    pub stream: bool,
}

/// The outcome of a send: counts, timing and the receiver's verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendReport {
    /// True when the receiver accepted everything.
    pub accepted: bool,
    /// Why something was refused (the first reason), or why the send failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Messages (or streams) sent.
    pub sent: u64,
    /// How many of them the receiver refused or that failed.
    pub refused: u64,
    /// Bytes on the wire: encoded envelopes, or a stream's header and body.
    pub bytes: u64,
    pub elapsed_ms: f64,
    /// Round trip of one message, until the receiver's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// A stream's checksum (XXH3-128, hex), as both ends computed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

impl SendReport {
    pub fn failed(reason: impl Into<String>) -> SendReport {
        SendReport { accepted: false, reason: Some(reason.into()), refused: 1, ..Default::default() }
    }

    pub fn per_second(&self) -> f64 {
        if self.elapsed_ms > 0.0 {
            self.sent as f64 * 1000.0 / self.elapsed_ms
        } else {
            0.0
        }
    }

    pub fn mib_per_second(&self) -> f64 {
        if self.elapsed_ms > 0.0 {
            self.bytes as f64 / (1024.0 * 1024.0) * 1000.0 / self.elapsed_ms
        } else {
            0.0
        }
    }
}

/// The `q`-quantile of sorted samples (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&s, 0.5), Some(50.0));
        assert_eq!(quantile(&s, 0.99), Some(99.0));
        assert_eq!(quantile(&[3.0], 0.99), Some(3.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
