//! What the node knows of its peers: their chain (from `Hello`), their score and bans, the
//! refusals by reason, and which peer a block or transaction came from (so it is not echoed
//! back). Plain data under one lock, read by the RPC and written by the p2p tasks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::BlockHash;
use micro_os_p2p::{PeerId, Policy};

/// A peer is banned when its score falls below this.
pub const BAN_SCORE: i64 = -100;

/// How long a ban lasts.
pub const BAN_FOR: Duration = Duration::from_secs(10 * 60);

/// Items remembered in the seen-set, at most.
const SEEN_CAP: usize = 50_000;

/// Whether a peer speaks our chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// Not asked yet, or the last `Hello` failed for a passing reason.
    Unknown,
    /// It answered a `Hello` of our network.
    Ours,
    /// Another network, or not a chain node; asked again after `until`.
    Other { until: Instant },
}

/// One peer, as the chain sees it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: Option<String>,
    pub connected: bool,
    pub chain: Chain,
    /// Height and tip from its last `Hello`, or the last block we know it has.
    pub height: Option<u32>,
    pub tip: Option<BlockHash>,
    /// Height of its first `Hello` (Core's `startingheight`).
    pub starting_height: Option<u32>,
    /// A light node (from its `Hello`): no blocks to download from it.
    pub light: bool,
    /// Falls with misbehaviour; below [`BAN_SCORE`] the peer is banned.
    pub score: i64,
    /// The p2p layer's counters and score for it.
    pub p2p_score: i64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes of answers: the p2p layer counts requests only.
    pub answer_bytes_in: u64,
    pub answer_bytes_out: u64,
    pub rtt_ms: Option<f64>,
    pub agent: Option<String>,
    /// Unix seconds when we first saw it connected.
    pub since: u64,
    pub last_hello: Option<Instant>,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            addr: None,
            connected: false,
            chain: Chain::Unknown,
            height: None,
            tip: None,
            starting_height: None,
            light: false,
            score: 0,
            p2p_score: 0,
            messages_in: 0,
            messages_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            answer_bytes_in: 0,
            answer_bytes_out: 0,
            rtt_ms: None,
            agent: None,
            since: crate::node::now(),
            last_hello: None,
        }
    }

    /// It answered a `Hello` of our network and is connected.
    pub fn is_chain_peer(&self) -> bool {
        self.connected && self.chain == Chain::Ours
    }
}

/// Banned peers until when; the p2p layer's [`Policy`], so a banned peer's new sessions
/// are refused by its verifier before any handler sees them.
#[derive(Debug, Default)]
pub struct Bans(Mutex<HashMap<PeerId, Instant>>);

impl Bans {
    /// Until when `peer` is banned, if it is.
    pub fn until(&self, peer: &PeerId) -> Option<Instant> {
        let mut bans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match bans.get(peer) {
            Some(t) if *t > Instant::now() => Some(*t),
            Some(_) => {
                bans.remove(peer);
                None
            }
            None => None,
        }
    }

    pub fn ban(&self, peer: PeerId, until: Instant) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(peer, until);
    }

    /// Banned peers and the seconds left.
    pub fn list(&self) -> Vec<(PeerId, u64)> {
        let now = Instant::now();
        let bans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = bans.iter().filter(|(_, t)| **t > now).map(|(p, t)| (*p, (*t - now).as_secs())).collect();
        out.sort();
        out
    }
}

/// A public chain: anyone who signs correctly, unless banned.
#[derive(Debug, Clone, Default)]
pub struct Open(pub Arc<Bans>);

impl Policy for Open {
    fn known(&self, peer: &PeerId) -> bool {
        self.0.until(peer).is_none()
    }
}

/// Which peer sent a block or transaction first (bounded, oldest forgotten first).
#[derive(Debug, Default)]
pub struct Seen {
    from: HashMap<[u8; 32], PeerId>,
    order: VecDeque<[u8; 32]>,
}

impl Seen {
    pub fn insert(&mut self, id: [u8; 32], peer: PeerId) {
        if self.from.insert(id, peer).is_none() {
            self.order.push_back(id);
            if self.order.len() > SEEN_CAP {
                if let Some(old) = self.order.pop_front() {
                    self.from.remove(&old);
                }
            }
        }
    }

    pub fn from(&self, id: &[u8; 32]) -> Option<PeerId> {
        self.from.get(id).copied()
    }
}

/// The peers, refusals and seen-set.
#[derive(Debug, Default)]
pub struct Book {
    pub peers: HashMap<PeerId, Peer>,
    /// Requests we refused, by reason (`bad-pow`, `wrong network magic`, …).
    pub refused: BTreeMap<String, u64>,
    pub seen: Seen,
    /// Our own listen addresses, as the p2p layer reports them.
    pub listen: Vec<String>,
}

impl Book {
    pub fn peer(&mut self, id: PeerId) -> &mut Peer {
        self.peers.entry(id).or_insert_with(Peer::new)
    }

    /// A peer has (at least) this block.
    pub fn has(&mut self, id: PeerId, height: u32, hash: BlockHash) {
        let p = self.peer(id);
        if p.height.is_none_or(|h| h <= height) {
            p.height = Some(height);
            p.tip = Some(hash);
        }
    }

    /// Lowers a peer's score; `true` when that bans it now.
    pub fn misbehaved(&mut self, id: PeerId, points: i64) -> bool {
        let p = self.peer(id);
        let before = p.score;
        p.score -= points;
        before >= BAN_SCORE && p.score < BAN_SCORE
    }

    /// Connected peers of our chain.
    pub fn chain_peers(&self) -> Vec<(PeerId, Peer)> {
        self.peers.iter().filter(|(_, p)| p.is_chain_peer()).map(|(id, p)| (*id, p.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_banned_once_its_score_falls_below_the_line() {
        let mut book = Book::default();
        let id = PeerId::random();
        assert!(!book.misbehaved(id, 50));
        assert!(!book.misbehaved(id, 50), "-100 is not below -100");
        assert!(book.misbehaved(id, 1), "-101 bans");
        assert!(!book.misbehaved(id, 50), "banned once, not again");
        let bans = Arc::new(Bans::default());
        let policy = Open(bans.clone());
        assert!(policy.known(&id));
        bans.ban(id, Instant::now() + BAN_FOR);
        assert!(!policy.known(&id));
        assert_eq!(bans.list().len(), 1);
        bans.ban(id, Instant::now());
        assert!(policy.known(&id), "an expired ban is gone");
    }

    #[test]
    fn the_seen_set_forgets_the_oldest() {
        let mut seen = Seen::default();
        let p = PeerId::random();
        for i in 0..(SEEN_CAP + 1) as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            seen.insert(id, p);
        }
        assert_eq!(seen.from(&[0u8; 32]), None);
        let mut last = [0u8; 32];
        last[..4].copy_from_slice(&(SEEN_CAP as u32).to_be_bytes());
        assert_eq!(seen.from(&last), Some(p));
    }
}
