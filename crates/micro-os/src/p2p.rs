//! Wiring of the communication layer into the daemon. For now: the verifier's nonce
//! memory kept in the store, so a replayed message is refused after a restart too.
//! The libp2p swarm that feeds it arrives with the P2P issue (issue 4).

// used by the swarm once it lands; tested now
#![cfg_attr(not(test), allow(dead_code))]

use micro_os_net::NonceStore;
use micro_os_store::Store;

/// Nonces of verified envelopes, in SQLite.
pub struct StoredNonces<'a>(pub &'a Store);

impl NonceStore for StoredNonces<'_> {
    fn insert(&mut self, sender: &str, nonce: &str, timestamp: u64) -> bool {
        // a store that cannot answer refuses the message rather than risk a replay
        self.0.insert_nonce(sender, nonce, timestamp).unwrap_or(false)
    }

    fn prune(&mut self, before: u64) {
        if let Err(e) = self.0.prune_nonces(before) {
            tracing::warn!("prune message nonces: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p_identity::Keypair;
    use micro_os_net::{Envelope, MessageType, Payload, Rejection, Verifier};

    #[test]
    fn a_replay_is_refused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let k = Keypair::generate_ed25519();
        let p = k.public().to_peer_id();
        let now = 1_700_000_000;
        let e = Envelope::seal(MessageType::Ctrl, &p, "*", Payload::new("stop", 1), now, &k, None);
        {
            let store = Store::open(&db).unwrap();
            let mut v = Verifier::new(StoredNonces(&store));
            assert_eq!(v.verify(&e, now, |_| true), Ok(()));
        }
        let store = Store::open(&db).unwrap();
        let mut v = Verifier::new(StoredNonces(&store));
        assert_eq!(v.verify(&e, now + 1, |_| true), Err(Rejection::Replayed));
    }
}
