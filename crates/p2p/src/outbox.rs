//! What leaves a peer: envelopes signed by a rotating key (`Signer`), queued by priority
//! (`Outbox`).

use libp2p::PeerId;
use micro_os_net::{Envelope, MessageType, Payload};
use std::collections::VecDeque;
use tokio::sync::oneshot;

#[derive(Clone)]
/// Signs envelopes with a short-lived key that the identity key delegates, and rotates
/// it on a schedule. A delegation is valid until the next rotation; receivers accept the
/// previous key for their grace period after that, and never beyond.
pub(crate) struct Signer {
    identity: libp2p::identity::Keypair,
    peer: PeerId,
    every: u64,
    hot: libp2p::identity::Keypair,
    delegation: micro_os_net::Delegation,
    rotated_at: u64,
}

impl Signer {
    pub(crate) fn new(identity: libp2p::identity::Keypair, every: u64, now: u64) -> Signer {
        let hot = libp2p::identity::Keypair::generate_ed25519();
        let delegation = micro_os_net::Delegation::issue(&identity, &hot.public(), now + every);
        let peer = identity.public().to_peer_id();
        Signer { identity, peer, every, hot, delegation, rotated_at: now }
    }

    pub(crate) fn seal(&mut self, kind: MessageType, to: &str, state: String, now: u64) -> Envelope {
        if now >= self.rotated_at + self.every {
            *self = Signer::new(self.identity.clone(), self.every, now);
        }
        Envelope::seal(kind, &self.peer, to, Payload::new(state, 1), now, &self.hot, Some(self.delegation.clone()))
    }
}

/// Outgoing messages wait here by priority: SYNC and CTRL are sent at once, DISC next,
/// and DATA and PING only while fewer than `LOW_IN_FLIGHT` of them are unanswered, so a
/// DATA flood never stands between a peer and a CTRL.
pub(crate) const LOW_IN_FLIGHT: usize = 8;

pub(crate) struct Queued {
    pub to: PeerId,
    pub kind: MessageType,
    pub state: String,
    pub reply: oneshot::Sender<Result<crate::Delivery, crate::Error>>,
}

#[derive(Default)]
pub(crate) struct Outbox {
    queues: [VecDeque<Queued>; 4],
    pub low_in_flight: usize,
}

impl Outbox {
    pub fn push(&mut self, q: Queued) {
        let p = q.kind.priority() as usize;
        self.queues[p].push_back(q);
    }

    /// The next message allowed out now, highest priority first.
    pub fn pop(&mut self) -> Option<Queued> {
        for p in (0..4).rev() {
            let low = p <= MessageType::Data.priority() as usize;
            if low && self.low_in_flight >= LOW_IN_FLIGHT {
                continue;
            }
            if let Some(q) = self.queues[p].pop_front() {
                if low {
                    self.low_in_flight += 1;
                }
                return Some(q);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;
    use micro_os_net::Verifier;

    #[test]
    fn signing_keys_rotate_and_old_ones_expire_after_the_grace_period() {
        let id = Keypair::generate_ed25519();
        let peer = id.public().to_peer_id();
        let now = 1_700_000_000;
        let mut s = Signer::new(id, 60, now);
        let before = s.clone();
        let first = s.seal(MessageType::Sync, "*", "a".into(), now);
        let later = s.seal(MessageType::Sync, "*", "b".into(), now + 61);
        assert_ne!(first.delegation, later.delegation, "no rotation after the period");
        let mut v = Verifier::new(micro_os_net::MemoryNonces::default());
        v.grace = 30;
        let known = |p: &PeerId| p == &peer;
        assert_eq!(v.verify(&first, now + 20, known), Ok(()));
        assert_eq!(v.verify(&later, now + 61, known), Ok(()));
        // a message signed with the previous key after it was rotated out: accepted for
        // the grace period (not_after = now + 60, grace 30), refused after it
        let old_key = |at| {
            Envelope::seal(
                MessageType::Data,
                &peer,
                "*",
                Payload::new("c", 1),
                at,
                &before.hot,
                Some(before.delegation.clone()),
            )
        };
        assert_eq!(v.verify(&old_key(now + 80), now + 80, known), Ok(()));
        assert_eq!(v.verify(&old_key(now + 95), now + 95, known), Err(micro_os_net::Rejection::ExpiredKey));
    }

    #[test]
    fn the_outbox_lets_high_priority_overtake_a_data_flood() {
        let mut o = Outbox::default();
        let to = Keypair::generate_ed25519().public().to_peer_id();
        let q = |kind| Queued { to, kind, state: String::new(), reply: oneshot::channel().0 };
        for _ in 0..20 {
            o.push(q(MessageType::Data));
        }
        o.push(q(MessageType::Ping));
        let first: Vec<MessageType> = std::iter::from_fn(|| o.pop()).map(|q| q.kind).collect();
        assert_eq!(first.len(), LOW_IN_FLIGHT, "DATA beyond the in-flight cap went out");
        o.push(q(MessageType::Ctrl));
        o.push(q(MessageType::Disc));
        o.push(q(MessageType::Sync));
        // the cap is full, yet CTRL, SYNC and DISC go out at once, highest first
        let next: Vec<MessageType> = std::iter::from_fn(|| o.pop()).map(|q| q.kind).collect();
        assert_eq!(next, [MessageType::Ctrl, MessageType::Sync, MessageType::Disc]);
        o.low_in_flight -= 1; // one DATA answered
        assert_eq!(o.pop().map(|q| q.kind), Some(MessageType::Data));
    }
}
