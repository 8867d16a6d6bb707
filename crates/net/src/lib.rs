//! The communication layer's message format: the spec's envelope (type, sender, receiver,
//! timestamp, signature, payload with state, version and checksum) plus a nonce, signed
//! by the sender's libp2p identity (or a key it delegated) and verified on receipt.
//!
//! Design decision: the signature covers a canonical byte encoding built field by field
//! (`Envelope::signing_bytes`), never the JSON text, so re-serialising an envelope can
//! never change what was signed. Verification needs nothing but the envelope and the set
//! of peers we know: an ed25519 peer id embeds its public key.

pub mod envelope;
pub mod verify;

pub use envelope::{DecodeError, Delegation, Envelope, MessageType, Payload};
pub use verify::{FileNonces, MemoryNonces, NonceStore, Rejection, Verifier, MAX_SCORE};
