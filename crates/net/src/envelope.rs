use std::fmt;

use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The spec's message types and their priorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MessageType {
    /// VM state synchronisation (high).
    Sync,
    /// Resource and peer discovery (medium).
    Disc,
    /// Data transfer between VMs (normal).
    Data,
    /// Control commands (high).
    Ctrl,
    /// Health checks (low).
    Ping,
}

impl MessageType {
    /// Scheduling priority: higher goes first.
    pub fn priority(self) -> u8 {
        match self {
            MessageType::Sync | MessageType::Ctrl => 3,
            MessageType::Disc => 2,
            MessageType::Data => 1,
            MessageType::Ping => 0,
        }
    }

    fn tag(self) -> &'static [u8] {
        match self {
            MessageType::Sync => b"SYNC",
            MessageType::Disc => b"DISC",
            MessageType::Data => b"DATA",
            MessageType::Ctrl => b"CTRL",
            MessageType::Ping => b"PING",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(self.tag()).expect("ascii"))
    }
}

/// What a message carries: the state, its version, and the sha256 of the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub state: String,
    pub version: u64,
    /// Hex sha256 of `state`.
    pub checksum: String,
}

impl Payload {
    pub fn new(state: impl Into<String>, version: u64) -> Payload {
        let state = state.into();
        let checksum = hex::encode(Sha256::digest(state.as_bytes()));
        Payload { state, version, checksum }
    }

    pub fn checksum_ok(&self) -> bool {
        hex::encode(Sha256::digest(self.state.as_bytes())) == self.checksum
    }
}

/// A signing key delegated by a peer's identity key until `not_after` (unix seconds):
/// the identity key stays cold while the delegated key rotates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// Protobuf encoding of the delegated public key, hex.
    pub key: String,
    pub not_after: u64,
    /// The identity key's signature over `Delegation::signing_bytes`, hex.
    pub signature: String,
}

impl Delegation {
    fn signing_bytes(key: &[u8], not_after: u64) -> Vec<u8> {
        let mut b = b"micro-os/delegation/1\0".to_vec();
        b.extend_from_slice(&(key.len() as u32).to_be_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&not_after.to_be_bytes());
        b
    }

    /// `identity` delegates signing to `delegate` until `not_after`.
    pub fn issue(identity: &Keypair, delegate: &PublicKey, not_after: u64) -> Delegation {
        let key = delegate.encode_protobuf();
        let signature = identity.sign(&Self::signing_bytes(&key, not_after)).expect("ed25519 signs");
        Delegation { key: hex::encode(key), not_after, signature: hex::encode(signature) }
    }

    /// The delegated key, if `identity` really signed this delegation.
    pub fn verify(&self, identity: &PublicKey) -> Option<PublicKey> {
        let key = hex::decode(&self.key).ok()?;
        let sig = hex::decode(&self.signature).ok()?;
        identity.verify(&Self::signing_bytes(&key, self.not_after), &sig).then_some(())?;
        PublicKey::try_decode_protobuf(&key).ok()
    }
}

/// The spec's envelope, plus a nonce and an optional key delegation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// The sender's peer id.
    pub sender: String,
    /// The receiver's peer id, or "*" for a broadcast.
    pub receiver: String,
    /// Unix seconds at the sender.
    pub timestamp: u64,
    /// 16 random bytes, hex: with the sender, unique within the time window.
    pub nonce: String,
    pub payload: Payload,
    /// Set when a delegated key signed instead of the identity key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Delegation>,
    /// Hex signature over `Envelope::signing_bytes`.
    pub signature: String,
}

/// Largest envelope accepted on the wire; DATA beyond this travels as a stream.
pub const MAX_WIRE_BYTES: usize = 1 << 20;

fn put(b: &mut Vec<u8>, field: &[u8]) {
    b.extend_from_slice(&(field.len() as u32).to_be_bytes());
    b.extend_from_slice(field);
}

impl Envelope {
    /// The canonical bytes the signature covers: every field but the signature, each
    /// length-prefixed, in a fixed order, under a versioned domain tag.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut b = b"micro-os/msg/1\0".to_vec();
        put(&mut b, self.kind.tag());
        put(&mut b, self.sender.as_bytes());
        put(&mut b, self.receiver.as_bytes());
        b.extend_from_slice(&self.timestamp.to_be_bytes());
        put(&mut b, self.nonce.as_bytes());
        put(&mut b, self.payload.state.as_bytes());
        b.extend_from_slice(&self.payload.version.to_be_bytes());
        put(&mut b, self.payload.checksum.as_bytes());
        match &self.delegation {
            None => b.push(0),
            Some(d) => {
                b.push(1);
                put(&mut b, d.key.as_bytes());
                b.extend_from_slice(&d.not_after.to_be_bytes());
                put(&mut b, d.signature.as_bytes());
            }
        }
        b
    }

    /// A signed envelope from `identity` (or from `signer` with its `delegation`).
    pub fn seal(
        kind: MessageType,
        identity: &PeerId,
        receiver: &str,
        payload: Payload,
        now: u64,
        signer: &Keypair,
        delegation: Option<Delegation>,
    ) -> Envelope {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("randomness");
        let mut e = Envelope {
            kind,
            sender: identity.to_string(),
            receiver: receiver.to_string(),
            timestamp: now,
            nonce: hex::encode(nonce),
            payload,
            delegation,
            signature: String::new(),
        };
        e.signature = hex::encode(signer.sign(&e.signing_bytes()).expect("ed25519 signs"));
        e
    }

    /// Length of `encode()`, without keeping the bytes.
    pub fn encoded_len(&self) -> usize {
        struct Counter(usize);
        impl std::io::Write for Counter {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0 += b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut c = Counter(0);
        serde_json::to_writer(&mut c, self).expect("envelopes serialise");
        c.0
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes serialise")
    }

    /// Parses wire bytes; never panics, whatever the input.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        if bytes.len() > MAX_WIRE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid(e.to_string()))
    }
}

/// Why wire bytes are not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("envelope of {0} bytes is over the {MAX_WIRE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("envelope is not valid: {0}")]
    Invalid(String),
}

/// The public key inside an ed25519 peer id (identity multihash), if there is one.
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let mh = multihash_digest(peer)?;
    PublicKey::try_decode_protobuf(&mh).ok()
}

fn multihash_digest(peer: &PeerId) -> Option<Vec<u8>> {
    // a peer id is a multihash: <code varint><len varint><digest>; code 0 is identity
    let bytes = peer.to_bytes();
    let (code, rest) = varint(&bytes)?;
    let (len, rest) = varint(rest)?;
    (code == 0 && rest.len() == len as usize).then(|| rest.to_vec())
}

fn varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(9) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}
