//! What one peer may ask of us: a token bucket per peer on inbound requests (governor's
//! keyed GCRA limiter), and the score below which a peer is disconnected and banned for a
//! while (libp2p's block list, lifted when the ban expires).
//!
//! What takes a token: each request on `/micro-os/msg/1`, each DATA stream, and each
//! request on a registered protocol (a session's first envelope and every later frame)
//! unless the protocol's handler exempts the peer (`ProtocolHandler::unmetered`: a circuit
//! exempts its members, whose Raft traffic must never be throttled). A request over the
//! budget is refused ("rate limited") before it is verified or handled, and costs the
//! peer score (`Rejection::cost`); every other refusal costs score too, and a peer whose
//! score falls below `ban_below` is disconnected and refused for `ban_s` seconds.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{Quota, RateLimiter};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Per-peer limits on inbound traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Requests a peer may send per second, sustained.
    pub per_second: u32,
    /// Requests a peer may send at once (the bucket's size).
    pub burst: u32,
    /// A peer whose score falls below this is disconnected and banned.
    pub ban_below: i64,
    /// How long a ban lasts, seconds.
    pub ban_s: u64,
}

impl Default for Limits {
    /// Well above what the heaviest legitimate sender here does: `net send` between two
    /// VMs peaks near 5,600 signed messages a second (bench/RESULTS.md), and circuit
    /// members are not metered at all.
    fn default() -> Limits {
        Limits { per_second: 10_000, burst: 20_000, ban_below: -100, ban_s: 600 }
    }
}

impl Limits {
    /// Why these limits cannot work, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.per_second == 0 || self.burst == 0 {
            return Err(format!(
                "p2p limits per_second {} and burst {} must both be at least 1",
                self.per_second, self.burst
            ));
        }
        if self.ban_below >= 0 {
            return Err(format!("p2p limits ban_below {} must be below 0 (a new peer's score)", self.ban_below));
        }
        Ok(())
    }
}

/// The token buckets, one per peer, shared by the event loop and the stream tasks.
pub(crate) type Limiter = governor::DefaultKeyedRateLimiter<PeerId>;

pub(crate) fn limiter(l: &Limits) -> Arc<Limiter> {
    let per_second = NonZeroU32::new(l.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(l.burst).unwrap_or(NonZeroU32::MIN);
    Arc::new(RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_its_burst_then_waits_and_others_are_not_affected() {
        let l = limiter(&Limits { per_second: 1, burst: 3, ..Limits::default() });
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!((0..3).all(|_| l.check_key(&a).is_ok()));
        assert!(l.check_key(&a).is_err(), "a fourth request within the second");
        assert!(l.check_key(&b).is_ok(), "another peer has its own bucket");
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        assert!(Limits::default().check().is_ok());
        assert!(Limits { per_second: 0, ..Limits::default() }.check().unwrap_err().contains("per_second 0"));
        assert!(Limits { ban_below: 5, ..Limits::default() }.check().unwrap_err().contains("ban_below 5"));
    }
}
