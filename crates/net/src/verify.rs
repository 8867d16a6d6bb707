use std::collections::HashMap;

use libp2p_identity::PeerId;

use crate::envelope::{public_key_of, Envelope};

/// Why an envelope was refused; each is counted and lowers the sender's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejection {
    #[error("malformed envelope")]
    Malformed,
    #[error("sender is not a known peer")]
    UnknownSender,
    #[error("timestamp outside the window")]
    Stale,
    #[error("nonce already seen")]
    Replayed,
    #[error("payload checksum does not match")]
    BadChecksum,
    #[error("bad signature")]
    BadSignature,
    #[error("signing key expired")]
    ExpiredKey,
}

/// Nonces seen within the window, by sender. Implementations persist them so a replay
/// is caught after a restart too.
pub trait NonceStore {
    /// Records `(sender, nonce)` seen at `timestamp`; false if it was already there.
    fn insert(&mut self, sender: &str, nonce: &str, timestamp: u64) -> bool;
    /// Forgets nonces older than `before`.
    fn prune(&mut self, before: u64);
}

impl<T: NonceStore + ?Sized> NonceStore for Box<T> {
    fn insert(&mut self, sender: &str, nonce: &str, timestamp: u64) -> bool {
        (**self).insert(sender, nonce, timestamp)
    }
    fn prune(&mut self, before: u64) {
        (**self).prune(before)
    }
}

/// In memory; a daemon wraps a persistent store around it.
#[derive(Debug, Default)]
pub struct MemoryNonces(HashMap<(String, String), u64>);

impl NonceStore for MemoryNonces {
    fn insert(&mut self, sender: &str, nonce: &str, timestamp: u64) -> bool {
        self.0.insert((sender.to_string(), nonce.to_string()), timestamp).is_none()
    }
    fn prune(&mut self, before: u64) {
        self.0.retain(|_, t| *t >= before);
    }
}

pub struct Verifier<S: NonceStore> {
    /// Accepted clock difference, seconds (±).
    pub window: u64,
    /// How long after a delegation's `not_after` its key is still accepted, seconds.
    pub grace: u64,
    pub nonces: S,
    pub rejected: HashMap<Rejection, u64>,
    /// Per peer: higher is better; every rejection costs.
    pub scores: HashMap<String, i64>,
}

impl<S: NonceStore> Verifier<S> {
    pub fn new(nonces: S) -> Self {
        Verifier { window: 30, grace: 300, nonces, rejected: HashMap::new(), scores: HashMap::new() }
    }

    fn reject(&mut self, sender: &str, why: Rejection) -> Rejection {
        *self.rejected.entry(why).or_default() += 1;
        *self.scores.entry(sender.to_string()).or_default() -= 10;
        why
    }

    /// Checks an envelope received at `now`; `known` says whether a peer may talk to us.
    pub fn verify(&mut self, e: &Envelope, now: u64, known: impl Fn(&PeerId) -> bool) -> Result<(), Rejection> {
        let sender = e.sender.clone();
        let Ok(peer) = e.sender.parse::<PeerId>() else { return Err(self.reject(&sender, Rejection::Malformed)) };
        let Some(identity) = public_key_of(&peer) else { return Err(self.reject(&sender, Rejection::Malformed)) };
        if !known(&peer) {
            return Err(self.reject(&sender, Rejection::UnknownSender));
        }
        if e.timestamp.abs_diff(now) > self.window {
            return Err(self.reject(&sender, Rejection::Stale));
        }
        if !e.payload.checksum_ok() {
            return Err(self.reject(&sender, Rejection::BadChecksum));
        }
        let signer = match &e.delegation {
            None => identity,
            Some(d) => match d.verify(&identity) {
                Some(k) if now <= d.not_after + self.grace => k,
                Some(_) => return Err(self.reject(&sender, Rejection::ExpiredKey)),
                None => return Err(self.reject(&sender, Rejection::BadSignature)),
            },
        };
        let Ok(sig) = hex::decode(&e.signature) else { return Err(self.reject(&sender, Rejection::Malformed)) };
        if !signer.verify(&e.signing_bytes(), &sig) {
            return Err(self.reject(&sender, Rejection::BadSignature));
        }
        // only a verified envelope may burn a nonce, or a forger could block real ones
        self.nonces.prune(now.saturating_sub(2 * self.window));
        if !self.nonces.insert(&e.sender, &e.nonce, e.timestamp) {
            return Err(self.reject(&sender, Rejection::Replayed));
        }
        *self.scores.entry(sender).or_default() += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Delegation, MessageType, Payload};
    use libp2p_identity::Keypair;

    const NOW: u64 = 1_700_000_000;

    fn peer() -> (Keypair, PeerId) {
        let k = Keypair::generate_ed25519();
        let p = k.public().to_peer_id();
        (k, p)
    }

    fn msg(k: &Keypair, p: &PeerId, at: u64) -> Envelope {
        Envelope::seal(MessageType::Sync, p, "*", Payload::new("block 42", 2), at, k, None)
    }

    fn check(v: &mut Verifier<MemoryNonces>, e: &Envelope, now: u64, known: &PeerId) -> Result<(), Rejection> {
        v.verify(e, now, |p| p == known)
    }

    #[test]
    fn round_trip_and_every_rejection() {
        let (k, p) = peer();
        let mut v = Verifier::new(MemoryNonces::default());
        let e = msg(&k, &p, NOW);
        let wire = Envelope::decode(&e.encode()).unwrap();
        assert_eq!(check(&mut v, &wire, NOW + 5, &p), Ok(()));
        // the same bytes again
        assert_eq!(check(&mut v, &wire, NOW + 6, &p), Err(Rejection::Replayed));
        // tampered state (checksum fixed up, so the signature is what catches it)
        let mut t = msg(&k, &p, NOW);
        t.payload = Payload::new("block 43", 2);
        assert_eq!(check(&mut v, &t, NOW, &p), Err(Rejection::BadSignature));
        // tampered state with the old checksum
        let mut t = msg(&k, &p, NOW);
        t.payload.state.push('!');
        assert_eq!(check(&mut v, &t, NOW, &p), Err(Rejection::BadChecksum));
        // stale and future
        assert_eq!(check(&mut v, &msg(&k, &p, NOW - 31), NOW, &p), Err(Rejection::Stale));
        assert_eq!(check(&mut v, &msg(&k, &p, NOW + 31), NOW, &p), Err(Rejection::Stale));
        // forged: someone else's key, claiming p as the sender
        let (other, _) = peer();
        let forged = Envelope::seal(MessageType::Ctrl, &p, "*", Payload::new("stop", 1), NOW, &other, None);
        assert_eq!(check(&mut v, &forged, NOW, &p), Err(Rejection::BadSignature));
        // a stranger
        let (sk, sp) = peer();
        assert_eq!(check(&mut v, &msg(&sk, &sp, NOW), NOW, &p), Err(Rejection::UnknownSender));
        assert_eq!(v.rejected.values().sum::<u64>(), 7);
        assert!(v.scores[&p.to_string()] < 0);
    }

    #[test]
    fn delegated_keys_rotate_with_a_grace_period() {
        let (identity, p) = peer();
        let hot = Keypair::generate_ed25519();
        let d = Delegation::issue(&identity, &hot.public(), NOW + 60);
        let mut v = Verifier::new(MemoryNonces::default());
        let seal = |at| Envelope::seal(MessageType::Data, &p, "*", Payload::new("x", 1), at, &hot, Some(d.clone()));
        assert_eq!(check(&mut v, &seal(NOW), NOW, &p), Ok(()));
        // past not_after but within the grace period: still accepted
        assert_eq!(check(&mut v, &seal(NOW + 200), NOW + 200, &p), Ok(()));
        // past the grace period: refused
        assert_eq!(check(&mut v, &seal(NOW + 400), NOW + 400, &p), Err(Rejection::ExpiredKey));
        // a delegation the identity never signed
        let rogue = Keypair::generate_ed25519();
        let fake = Delegation::issue(&rogue, &hot.public(), NOW + 60);
        let e = Envelope::seal(MessageType::Data, &p, "*", Payload::new("x", 1), NOW, &hot, Some(fake));
        assert_eq!(check(&mut v, &e, NOW, &p), Err(Rejection::BadSignature));
    }

    #[test]
    fn garbage_never_panics() {
        // a small deterministic fuzz of the decoder and verifier (cargo fuzz goes further)
        let (k, p) = peer();
        let good = msg(&k, &p, NOW).encode();
        let mut v = Verifier::new(MemoryNonces::default());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = good.clone();
            let flips = 1 + (x % 8) as usize;
            for i in 0..flips {
                let pos = ((x >> (i * 7)) as usize) % bytes.len();
                bytes[pos] = (x >> (i * 3)) as u8;
            }
            if round % 7 == 0 {
                bytes.truncate((x as usize) % bytes.len());
            }
            if let Ok(e) = Envelope::decode(&bytes) {
                let _ = v.verify(&e, NOW, |_| true);
            }
        }
        assert!(Envelope::decode(&vec![b'['; MAX + 1]).is_err());
    }

    const MAX: usize = crate::envelope::MAX_WIRE_BYTES;

    #[test]
    fn priorities_follow_the_spec() {
        assert!(MessageType::Sync.priority() > MessageType::Data.priority());
        assert!(MessageType::Ctrl.priority() > MessageType::Data.priority());
        assert!(MessageType::Data.priority() > MessageType::Ping.priority());
        let json = serde_json::to_value(MessageType::Disc).unwrap();
        assert_eq!(json, "DISC");
    }
}
