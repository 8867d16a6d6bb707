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
}
