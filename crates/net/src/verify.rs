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
    #[error("stream truncated")]
    Truncated,
    #[error("stream checksum does not match")]
    StreamChecksum,
    /// Not the sender's fault: the receiver cannot keep a stream that large.
    #[error("no room to keep the stream")]
    NoRoom,
    /// The peer sent more requests than its budget allows.
    #[error("rate limited")]
    RateLimited,
    /// Over the protocol's maximum message size: refused before it is read whole.
    #[error("message too large")]
    TooLarge,
}

/// The most a peer's score can grow to: good behaviour in the past does not pay for a
/// flood later.
pub const MAX_SCORE: i64 = 100;

impl Rejection {
    /// What a refusal costs the sender's score: a message over the rate costs little (a
    /// burst a little over budget is not an attack), a bad one much more.
    pub fn cost(self) -> i64 {
        match self {
            Rejection::NoRoom => 0,
            Rejection::RateLimited => 1,
            _ => 10,
        }
    }
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

#[derive(Clone)]
struct Sender {
    peer: PeerId,
    key: libp2p_identity::PublicKey,
    dalek: ed25519_dalek::VerifyingKey,
}

fn parse_sender(s: &str) -> Option<Sender> {
    let peer = s.parse::<PeerId>().ok()?;
    let key = public_key_of(&peer)?;
    let bytes = key.clone().try_into_ed25519().ok()?.to_bytes();
    let dalek = ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
    Some(Sender { peer, key, dalek })
}

/// Nonces in memory, journaled to a file so a restarted process still refuses replays
/// (the agents use it; the daemon uses its SQLite store). The journal is rewritten with
/// only the live nonces when it is pruned.
pub struct FileNonces {
    path: std::path::PathBuf,
    mem: MemoryNonces,
    file: Option<std::fs::File>,
    /// Lines in the journal: it is rewritten with only the live nonces once it holds
    /// twice as many (amortised: a rewrite per second of every live nonce stalled the
    /// verifier for tens of milliseconds at a thousand messages a second).
    lines: usize,
}

impl FileNonces {
    pub fn open(path: impl Into<std::path::PathBuf>) -> FileNonces {
        let path = path.into();
        let mut mem = MemoryNonces::default();
        let mut lines = 0;
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines() {
                lines += 1;
                let mut it = line.split(' ');
                if let (Some(s), Some(n), Some(t)) = (it.next(), it.next(), it.next().and_then(|t| t.parse().ok())) {
                    mem.insert(s, n, t);
                }
            }
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).ok();
        FileNonces { path, mem, file, lines }
    }
}

impl NonceStore for FileNonces {
    fn insert(&mut self, sender: &str, nonce: &str, timestamp: u64) -> bool {
        if !self.mem.insert(sender, nonce, timestamp) {
            return false;
        }
        if let Some(f) = &mut self.file {
            use std::io::Write;
            let _ = writeln!(f, "{sender} {nonce} {timestamp}");
            self.lines += 1;
        }
        true
    }

    fn prune(&mut self, before: u64) {
        self.mem.prune(before);
        if self.lines < 2 * self.mem.0.len() + 1024 {
            return;
        }
        let text: String = self.mem.0.iter().map(|((s, n), t)| format!("{s} {n} {t}\n")).collect();
        let tmp = self.path.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, &self.path).is_ok() {
            self.file = std::fs::OpenOptions::new().append(true).open(&self.path).ok();
            self.lines = self.mem.0.len();
        }
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
    /// Parsed identity keys by sender string: parsing a peer id and decompressing its
    /// key cost as much as a third of a verification.
    keys: HashMap<String, Option<Sender>>,
    /// Delegations already checked, by (sender, delegation): the delegated key, or `None`
    /// for a forged one. A peer's delegation changes once per rotation, so without this
    /// every message would cost two signature checks.
    /// Keyed by the delegation's signature; hits must match sender and delegation too.
    delegations: HashMap<String, (String, crate::envelope::Delegation, Option<ed25519_dalek::VerifyingKey>)>,
    /// When the nonce memory was last pruned (it is pruned once a second, not per message).
    pruned_at: u64,
}

impl<S: NonceStore> Verifier<S> {
    pub fn new(nonces: S) -> Self {
        Verifier {
            window: 30,
            grace: 300,
            nonces,
            rejected: HashMap::new(),
            scores: HashMap::new(),
            keys: HashMap::new(),
            delegations: HashMap::new(),
            pruned_at: 0,
        }
    }

    /// Counts a refusal and lowers the sender's score.
    pub fn reject(&mut self, sender: &str, why: Rejection) -> Rejection {
        *self.rejected.entry(why).or_default() += 1;
        *self.scores.entry(sender.to_string()).or_default() -= why.cost();
        why
    }

    /// Checks an envelope received at `now`; `known` says whether a peer may talk to us.
    pub fn verify(&mut self, e: &Envelope, now: u64, known: impl Fn(&PeerId) -> bool) -> Result<(), Rejection> {
        let signer = self.precheck(e, now, &known)?;
        let sig = hex::decode(&e.signature).ok().and_then(|s| ed25519_dalek::Signature::from_slice(&s).ok());
        let Some(sig) = sig else { return Err(self.reject(&e.sender, Rejection::Malformed)) };
        if signer.verify_strict(&e.signing_bytes(), &sig).is_err() {
            return Err(self.reject(&e.sender, Rejection::BadSignature));
        }
        self.accept(e, now)
    }

    /// Everything but the signature: who, when, the checksum and the delegation. Gives
    /// the key that must have signed.
    fn precheck(
        &mut self,
        e: &Envelope,
        now: u64,
        known: &impl Fn(&PeerId) -> bool,
    ) -> Result<ed25519_dalek::VerifyingKey, Rejection> {
        let sender = &e.sender;
        if self.keys.len() > 65_536 {
            self.keys.clear();
        }
        let parsed = self.keys.entry(sender.clone()).or_insert_with(|| parse_sender(sender)).clone();
        let Some(who) = parsed else { return Err(self.reject(sender, Rejection::Malformed)) };
        if !known(&who.peer) {
            return Err(self.reject(sender, Rejection::UnknownSender));
        }
        if e.timestamp.abs_diff(now) > self.window {
            return Err(self.reject(sender, Rejection::Stale));
        }
        if !e.payload.checksum_ok() {
            return Err(self.reject(sender, Rejection::BadChecksum));
        }
        let Some(d) = &e.delegation else { return Ok(who.dalek) };
        if self.delegations.len() > 65_536 {
            self.delegations.clear();
        }
        let delegated = match self.delegations.get(d.signature.as_str()) {
            Some((s, cached, k)) if s == sender && cached == d => *k,
            _ => {
                let k = d.verify(&who.key).and_then(|k| {
                    let bytes = k.try_into_ed25519().ok()?.to_bytes();
                    ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()
                });
                self.delegations.insert(d.signature.clone(), (sender.clone(), d.clone(), k));
                k
            }
        };
        match delegated {
            Some(k) if now <= d.not_after + self.grace => Ok(k),
            Some(_) => Err(self.reject(sender, Rejection::ExpiredKey)),
            None => Err(self.reject(sender, Rejection::BadSignature)),
        }
    }

    /// The nonce check and bookkeeping of a verified envelope.
    fn accept(&mut self, e: &Envelope, now: u64) -> Result<(), Rejection> {
        // only a verified envelope may burn a nonce, or a forger could block real ones
        if now != self.pruned_at {
            self.nonces.prune(now.saturating_sub(2 * self.window));
            self.pruned_at = now;
        }
        if !self.nonces.insert(&e.sender, &e.nonce, e.timestamp) {
            return Err(self.reject(&e.sender, Rejection::Replayed));
        }
        let score = self.scores.entry(e.sender.clone()).or_default();
        *score = (*score + 1).min(MAX_SCORE);
        Ok(())
    }

    /// Verifies many envelopes at once: the signatures in one ed25519 batch (much faster
    /// per signature); when the batch fails, one by one to find the bad ones.
    pub fn verify_batch(
        &mut self,
        envs: &[Envelope],
        now: u64,
        known: impl Fn(&PeerId) -> bool,
    ) -> Vec<Result<(), Rejection>> {
        use ed25519_dalek::Signature;
        let mut out: Vec<Result<(), Rejection>> = Vec::with_capacity(envs.len());
        let mut msgs = Vec::new();
        let mut sigs = Vec::new();
        let mut keys = Vec::new();
        let mut idx = Vec::new();
        for (i, e) in envs.iter().enumerate() {
            let parts = self.precheck(e, now, &known).and_then(|key| {
                let sig = hex::decode(&e.signature)
                    .ok()
                    .and_then(|s| Signature::from_slice(&s).ok())
                    .ok_or(Rejection::Malformed)?;
                Ok((key, sig))
            });
            match parts {
                Ok((k, s)) => {
                    msgs.push(e.signing_bytes());
                    sigs.push(s);
                    keys.push(k);
                    idx.push(i);
                    out.push(Ok(()));
                }
                Err(r) => out.push(Err(r)),
            }
        }
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        let all_good = ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok();
        for (j, &i) in idx.iter().enumerate() {
            let good = all_good || keys[j].verify_strict(&msgs[j], &sigs[j]).is_ok();
            out[i] = if good {
                self.accept(&envs[i], now)
            } else {
                Err(self.reject(&envs[i].sender, Rejection::BadSignature))
            };
        }
        out
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
    fn a_checked_delegation_serves_only_its_own_sender_and_fields() {
        let (identity, p) = peer();
        let hot = Keypair::generate_ed25519();
        let d = Delegation::issue(&identity, &hot.public(), NOW + 60);
        let mut v = Verifier::new(MemoryNonces::default());
        let e = Envelope::seal(MessageType::Data, &p, "*", Payload::new("x", 1), NOW, &hot, Some(d.clone()));
        assert_eq!(v.verify(&e, NOW, |_| true), Ok(()));
        // another peer copies the (cached) delegation into its own envelope
        let (_, other) = peer();
        let copied = Envelope::seal(MessageType::Data, &other, "*", Payload::new("x", 1), NOW, &hot, Some(d.clone()));
        assert_eq!(v.verify(&copied, NOW, |_| true), Err(Rejection::BadSignature));
        // the same signature with a later expiry written in
        let mut longer = d.clone();
        longer.not_after += 3600;
        let stretched = Envelope::seal(MessageType::Data, &p, "*", Payload::new("y", 1), NOW, &hot, Some(longer));
        assert_eq!(v.verify(&stretched, NOW, |_| true), Err(Rejection::BadSignature));
        // and the real one still passes from the cache
        let again = Envelope::seal(MessageType::Data, &p, "*", Payload::new("z", 1), NOW, &hot, Some(d));
        assert_eq!(v.verify(&again, NOW, |_| true), Ok(()));
    }

    #[test]
    fn batches_agree_with_single_verification() {
        let (k, p) = peer();
        let (other, _) = peer();
        let mut envs: Vec<Envelope> = (0..20).map(|_| msg(&k, &p, NOW)).collect();
        envs[7] = Envelope::seal(MessageType::Ctrl, &p, "*", Payload::new("x", 1), NOW, &other, None); // forged
        envs[9] = envs[3].clone(); // replay within the batch
        let mut v = Verifier::new(MemoryNonces::default());
        let r = v.verify_batch(&envs, NOW, |q| q == &p);
        assert_eq!(r[7], Err(Rejection::BadSignature));
        assert_eq!(r[9], Err(Rejection::Replayed));
        assert_eq!(r.iter().filter(|x| x.is_ok()).count(), 18);
        // an all-good batch takes the fast path
        let good: Vec<Envelope> = (0..10).map(|_| msg(&k, &p, NOW)).collect();
        assert!(v.verify_batch(&good, NOW, |q| q == &p).iter().all(|x| x.is_ok()));
    }

    #[test]
    fn file_nonces_refuse_a_replay_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("micro-os-nonces-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let (k, p) = peer();
        let e = msg(&k, &p, NOW);
        {
            let mut v = Verifier::new(FileNonces::open(&dir));
            assert_eq!(v.verify(&e, NOW, |_| true), Ok(()));
        }
        let mut v = Verifier::new(FileNonces::open(&dir));
        assert_eq!(v.verify(&e, NOW + 1, |_| true), Err(Rejection::Replayed));
        // a small journal is left as it is; one twice the live set is rewritten with the
        // live nonces only
        let mut n = FileNonces::open(&dir);
        n.prune(NOW + 1);
        assert!(!FileNonces::open(&dir).insert(&e.sender, &e.nonce, NOW), "journal rewritten too early");
        let mut n = FileNonces::open(&dir);
        for i in 0..3000 {
            assert!(n.insert("old", &i.to_string(), NOW - 10));
        }
        assert!(n.insert("new", "1", NOW + 5));
        n.prune(NOW + 1);
        assert_eq!(std::fs::read_to_string(&dir).unwrap(), format!("new 1 {}\n", NOW + 5));
        assert!(FileNonces::open(&dir).insert(&e.sender, &e.nonce, NOW));
        let _ = std::fs::remove_file(&dir);
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
