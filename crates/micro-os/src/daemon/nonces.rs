//! The host peer's nonce memory in the store: the p2p layer asks through
//! `micro_os_net::NonceStore`, so it never knows the store.

use micro_os_net::NonceStore;
use micro_os_store::Store;

/// Nonces of verified envelopes, in SQLite.
pub struct StoredNonces<S: AsRef<Store>>(pub S);

impl<S: AsRef<Store>> NonceStore for StoredNonces<S> {
    fn insert(&mut self, sender: &str, nonce: &str, timestamp: u64) -> bool {
        // a store that cannot answer refuses the message rather than risk a replay
        self.0.as_ref().insert_nonce(sender, nonce, timestamp).unwrap_or(false)
    }

    fn prune(&mut self, before: u64) {
        if let Err(e) = self.0.as_ref().prune_nonces(before) {
            tracing::warn!("prune message nonces: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;
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
