//! Seals of a validator-sealed network (`Consensus::Circuit`): the signature of the
//! validator that sealed a block, with the validator set from then on.
//!
//! Key design decision: a seal travels and is stored beside its block, not inside it. A
//! Bitcoin header has no room for a signature, and one in the coinbase would change the
//! merkle root and so the very hash it signs; so the seal signs the block hash (which
//! covers every byte of the block), a block's bytes stay Bitcoin's, and a seal cannot be
//! moved to another block. ECDSA signatures are checked low-S (libsecp256k1), so a seal
//! is not malleable either. The set a seal names is the one the next block's sealer must
//! belong to; block 1's sealer must belong to the set its own seal names (trusted on first
//! use, or pinned by the node's configuration).

use bitcoin::hashes::{sha256d, Hash, HashEngine};
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::BlockHash;

use crate::params::Params;
use crate::validation::{Reject, RejectCode};

/// Validators a set may hold, at most.
pub const MAX_VALIDATORS: usize = 64;

/// A block's seal. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// The validator that sealed the block.
    pub sealer: PublicKey,
    pub signature: ecdsa::Signature,
    /// The validators from this block on, sorted, without duplicates.
    pub validators: Vec<PublicKey>,
}

fn bad(why: String) -> Reject {
    Reject::new(RejectCode::BadSeal, why)
}

/// What a seal signs: the network's magic, the block hash and the validator set.
fn message(params: &Params, block: &BlockHash, validators: &[PublicKey]) -> Message {
    let mut e = sha256d::Hash::engine();
    e.input(b"micro-os/seal/1");
    e.input(&params.magic.to_bytes());
    e.input(block.as_byte_array());
    e.input(&[validators.len() as u8]);
    for v in validators {
        e.input(&v.serialize());
    }
    Message::from_digest(sha256d::Hash::from_engine(e).to_byte_array())
}

/// A set as a seal carries it: sorted and without duplicates.
pub fn normalize(mut validators: Vec<PublicKey>) -> Vec<PublicKey> {
    validators.sort_by_key(|k| k.serialize());
    validators.dedup();
    validators
}

impl Seal {
    /// Seals `block` with `key`, naming `validators` (normalised) as the set from now on.
    pub fn sign(params: &Params, key: &SecretKey, block: &BlockHash, validators: Vec<PublicKey>) -> Seal {
        let secp = Secp256k1::signing_only();
        let validators = normalize(validators);
        let signature = secp.sign_ecdsa(&message(params, block, &validators), key);
        Seal { sealer: PublicKey::from_secret_key(&secp, key), signature, validators }
    }

    /// Checks that the seal is `block`'s, signed by its sealer, and that the sealer is in
    /// `set` (the set before this block; `None` for block 1, which the seal's own set
    /// vouches for).
    pub fn verify(&self, params: &Params, block: &BlockHash, set: Option<&[PublicKey]>) -> Result<(), Reject> {
        if self.validators.is_empty() || self.validators.len() > MAX_VALIDATORS {
            return Err(bad(format!(
                "seal of block {block} names {} validators (1 to {MAX_VALIDATORS})",
                self.validators.len()
            )));
        }
        if normalize(self.validators.clone()) != self.validators {
            return Err(bad(format!("seal of block {block}: its validator set is not sorted and unique")));
        }
        let set = set.unwrap_or(&self.validators);
        if !set.contains(&self.sealer) {
            return Err(bad(format!("block {block} is sealed by {}, which is not a validator", self.sealer)));
        }
        Secp256k1::verification_only()
            .verify_ecdsa(&message(params, block, &self.validators), &self.signature, &self.sealer)
            .map_err(|_| bad(format!("seal of block {block}: the signature does not verify")))
    }

    /// The seal's bytes: sealer (33), compact signature (64), set size (1), keys (33 each).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(98 + 33 * self.validators.len());
        out.extend_from_slice(&self.sealer.serialize());
        out.extend_from_slice(&self.signature.serialize_compact());
        out.push(self.validators.len() as u8);
        for v in &self.validators {
            out.extend_from_slice(&v.serialize());
        }
        out
    }

    /// Parses [`Seal::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<Seal, Reject> {
        let malformed = |why: &str| bad(format!("seal is malformed: {why}"));
        if b.len() < 98 {
            return Err(malformed("shorter than 98 bytes"));
        }
        let sealer = PublicKey::from_slice(&b[..33]).map_err(|_| malformed("sealer is not a public key"))?;
        let signature =
            ecdsa::Signature::from_compact(&b[33..97]).map_err(|_| malformed("signature is not compact ECDSA"))?;
        let n = usize::from(b[97]);
        if b.len() != 98 + 33 * n {
            return Err(malformed(&format!("{} bytes for {n} validators", b.len())));
        }
        let validators = b[98..]
            .chunks(33)
            .map(PublicKey::from_slice)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| malformed("a validator is not a public key"))?;
        Ok(Seal { sealer, signature, validators })
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    pub fn from_hex(s: &str) -> Result<Seal, Reject> {
        let b = hex::decode(s).map_err(|_| bad("seal is not hex".into()))?;
        Seal::from_bytes(&b)
    }
}

/// A validator's signature on a block it applied from the circuit's log: "I hold this
/// block as final". A seal is the sealer's word; a block attested by a majority of the set
/// its seal names was committed by the circuit's quorum, which nodes outside the circuit
/// can check without trusting any one validator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attestation {
    pub validator: PublicKey,
    pub signature: ecdsa::Signature,
}

/// Bytes of an attestation: key (33) and compact signature (64).
pub const ATTESTATION_LEN: usize = 97;

/// What an attestation signs: the network's magic and the block hash, in another domain
/// than a seal, so neither passes for the other.
fn attest_message(params: &Params, block: &BlockHash) -> Message {
    let mut e = sha256d::Hash::engine();
    e.input(b"micro-os/attest/1");
    e.input(&params.magic.to_bytes());
    e.input(block.as_byte_array());
    Message::from_digest(sha256d::Hash::from_engine(e).to_byte_array())
}

/// Attestations a block needs to be final to an outsider: a majority of its set.
pub fn quorum(set: usize) -> usize {
    set / 2 + 1
}

impl Attestation {
    pub fn sign(params: &Params, key: &SecretKey, block: &BlockHash) -> Attestation {
        let secp = Secp256k1::signing_only();
        let signature = secp.sign_ecdsa(&attest_message(params, block), key);
        Attestation { validator: PublicKey::from_secret_key(&secp, key), signature }
    }

    /// Checks that the attestation is `block`'s and by a validator of `set` (the set the
    /// block's seal names).
    pub fn verify(&self, params: &Params, block: &BlockHash, set: &[PublicKey]) -> Result<(), Reject> {
        if !set.contains(&self.validator) {
            return Err(bad(format!("block {block} is attested by {}, which is not a validator", self.validator)));
        }
        Secp256k1::verification_only()
            .verify_ecdsa(&attest_message(params, block), &self.signature, &self.validator)
            .map_err(|_| {
                bad(format!("attestation of block {block} by {}: the signature does not verify", self.validator))
            })
    }

    pub fn to_bytes(&self) -> [u8; ATTESTATION_LEN] {
        let mut out = [0; ATTESTATION_LEN];
        out[..33].copy_from_slice(&self.validator.serialize());
        out[33..].copy_from_slice(&self.signature.serialize_compact());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Attestation, Reject> {
        let malformed = |why: &str| bad(format!("attestation is malformed: {why}"));
        if b.len() != ATTESTATION_LEN {
            return Err(malformed(&format!("{} bytes (an attestation is {ATTESTATION_LEN})", b.len())));
        }
        let validator = PublicKey::from_slice(&b[..33]).map_err(|_| malformed("validator is not a public key"))?;
        let signature =
            ecdsa::Signature::from_compact(&b[33..]).map_err(|_| malformed("signature is not compact ECDSA"))?;
        Ok(Attestation { validator, signature })
    }

    /// Several attestations as they travel: their bytes one after the other, as hex.
    pub fn list_to_hex(list: &[Attestation]) -> String {
        hex::encode(list.iter().flat_map(|a| a.to_bytes()).collect::<Vec<u8>>())
    }

    pub fn list_from_hex(s: &str) -> Result<Vec<Attestation>, Reject> {
        let b = hex::decode(s).map_err(|_| bad("attestations are not hex".into()))?;
        if b.len() % ATTESTATION_LEN != 0 {
            return Err(bad(format!("attestations are malformed: {} bytes", b.len())));
        }
        b.chunks(ATTESTATION_LEN).map(Attestation::from_bytes).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::rand;

    fn key() -> (SecretKey, PublicKey) {
        let sk = SecretKey::new(&mut rand::thread_rng());
        (sk, PublicKey::from_secret_key(&Secp256k1::signing_only(), &sk))
    }

    #[test]
    fn a_seal_verifies_only_for_its_block_network_and_set() {
        let p = Params::circuit();
        let (a, pa) = key();
        let (b, pb) = key();
        let block = BlockHash::from_byte_array([7; 32]);
        let seal = Seal::sign(p, &a, &block, vec![pb, pa, pa]);
        assert_eq!(seal.validators.len(), 2, "sorted and unique");
        seal.verify(p, &block, None).unwrap();
        seal.verify(p, &block, Some(&[pa])).unwrap();
        let code = |r: Result<(), Reject>| r.unwrap_err().code;
        assert_eq!(code(seal.verify(p, &BlockHash::from_byte_array([8; 32]), None)), RejectCode::BadSeal);
        assert_eq!(code(seal.verify(Params::devnet(), &block, None)), RejectCode::BadSeal);
        let e = seal.verify(p, &block, Some(&[pb])).unwrap_err();
        assert!(e.reason.contains("which is not a validator"), "{e}");
        // b's signature does not pass for a's seal
        let mut forged = seal.clone();
        forged.signature = Seal::sign(p, &b, &block, vec![pa, pb]).signature;
        assert!(forged.verify(p, &block, None).unwrap_err().reason.contains("does not verify"));
        // the set is signed too
        let mut widened = seal.clone();
        widened.validators = normalize(vec![pa, pb, key().1]);
        assert!(widened.verify(p, &block, None).is_err());
        // bytes round-trip; junk is refused with a reason
        assert_eq!(Seal::from_hex(&seal.to_hex()).unwrap(), seal);
        assert!(Seal::from_bytes(&seal.to_bytes()[..97]).unwrap_err().reason.contains("shorter"));
        assert!(Seal::from_hex("zz").is_err());
        let mut extra = seal.to_bytes();
        extra.push(0);
        assert!(Seal::from_bytes(&extra).unwrap_err().reason.contains("for 2 validators"));
    }

    #[test]
    fn an_attestation_is_a_validators_word_on_one_block() {
        let p = Params::circuit();
        let (a, pa) = key();
        let (b, pb) = key();
        let block = BlockHash::from_byte_array([7; 32]);
        let att = Attestation::sign(p, &a, &block);
        att.verify(p, &block, &[pa, pb]).unwrap();
        assert!(att.verify(p, &block, &[pb]).unwrap_err().reason.contains("not a validator"));
        assert!(att.verify(p, &BlockHash::from_byte_array([8; 32]), &[pa]).is_err());
        assert!(att.verify(Params::devnet(), &block, &[pa]).is_err());
        // a seal's signature does not pass for an attestation
        let seal = Seal::sign(p, &a, &block, vec![pa]);
        let forged = Attestation { validator: pa, signature: seal.signature };
        assert!(forged.verify(p, &block, &[pa]).unwrap_err().reason.contains("does not verify"));
        let list = vec![att, Attestation::sign(p, &b, &block)];
        assert_eq!(Attestation::list_from_hex(&Attestation::list_to_hex(&list)).unwrap(), list);
        assert!(Attestation::list_from_hex(&Attestation::list_to_hex(&list)[2..]).is_err());
        assert_eq!((quorum(1), quorum(2), quorum(3), quorum(4)), (1, 2, 2, 3));
    }
}
