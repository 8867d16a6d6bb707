//! What a `net send` asks for and what it reports: the same shape whether the host or a
//! VM's agent sends, so the daemon relays an agent's report unchanged.

use serde::{Deserialize, Serialize};

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
