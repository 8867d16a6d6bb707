//! A validator-sealed network's rules in the node (`Params::is_sealed`): every block comes
//! with its seal (`micro_os_chain::seal`), whose sealer must be in the validator set the
//! previous block's seal named, and a sealed block is final — a block at a height the node
//! already holds is refused (`height-already-sealed`), so the chain never reorganises.
//!
//! Key design decision: seals live in their own file (`seals.sqlite`, keyed by block hash)
//! and a seal is stored before its block is connected, so a `kill -9` between the two
//! leaves a seal without its block (harmless: it is overwritten or unused), never a
//! connected block without its seal.
//!
//! Every validator attests each block it applied from the circuit's log
//! (`micro_os_chain::seal::Attestation`); attestations are kept beside the seals, and a block
//! attested by a majority of its set is *finalized* to a node outside the circuit. An
//! attestation that arrives before its block waits in memory (a few hundred blocks' worth)
//! until the block comes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Block, BlockHash};
use micro_os_chain::chainstate::ChainState;
use micro_os_chain::params::Params;
use micro_os_chain::seal::{quorum, Attestation, Seal};
use micro_os_chain::validation::{Reject, RejectCode};
use rusqlite::{params, Connection, OptionalExtension};

/// What went wrong in the seal store.
#[derive(Debug, thiserror::Error)]
#[error("seal store {path}: {source}")]
pub struct SealStoreError {
    path: PathBuf,
    source: rusqlite::Error,
}

/// The seals of the node's chain and the validator set after its tip.
pub struct Seals {
    conn: Connection,
    path: PathBuf,
    /// The set block 1's sealer must be in; `None`: the set block 1's seal names.
    pinned: Option<Vec<PublicKey>>,
    /// Attestations of blocks not here yet.
    pending: HashMap<BlockHash, Vec<Attestation>>,
}

/// Blocks whose attestations may wait for them, at most.
const MAX_PENDING: usize = 256;

impl std::fmt::Debug for Seals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seals").field("path", &self.path).finish()
    }
}

/// Whether a sealed block is new to the node or one it already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It extends the tip and its seal checks: connect it.
    Extends,
    /// The node already holds this very block at its height.
    Known,
}

impl Seals {
    pub fn open(path: impl AsRef<Path>, pinned: Option<Vec<PublicKey>>) -> Result<Seals, SealStoreError> {
        let path = path.as_ref().to_path_buf();
        let err = |source| SealStoreError { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS seals (hash BLOB PRIMARY KEY, seal BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS attestations (
                 hash BLOB NOT NULL, validator BLOB NOT NULL, attestation BLOB NOT NULL,
                 PRIMARY KEY (hash, validator)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )
        .map_err(err)?;
        Ok(Seals { conn, path, pinned, pending: HashMap::new() })
    }

    fn err(&self, source: rusqlite::Error) -> SealStoreError {
        SealStoreError { path: self.path.clone(), source }
    }

    /// The seal of `hash`.
    pub fn get(&self, hash: &BlockHash) -> Result<Option<Seal>, SealStoreError> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT seal FROM seals WHERE hash = ?1")
            .map_err(|e| self.err(e))?
            .query_row([hash.to_byte_array()], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        // stored only after it was checked
        Ok(bytes.and_then(|b| Seal::from_bytes(&b).ok()))
    }

    /// The validator set after the chain's tip: the one its seal names (`None` at genesis).
    pub fn set_after(&self, chain: &ChainState) -> Result<Option<Vec<PublicKey>>, SealStoreError> {
        self.set_at(chain.tip())
    }

    /// The validator set after block `tip` (height, hash): the one its seal names.
    pub fn set_at(&self, (height, tip): (u32, BlockHash)) -> Result<Option<Vec<PublicKey>>, SealStoreError> {
        if height == 0 {
            return Ok(self.pinned.clone());
        }
        Ok(self.get(&tip)?.map(|s| s.validators))
    }

    /// Checks a sealed block against the chain: it extends the tip (or is the block the
    /// node holds at its height), and its seal is its own, by a validator of the set.
    pub fn check(&self, chain: &ChainState, block: &Block, seal: &Seal) -> Result<Verdict, CheckError> {
        let hash = block.block_hash();
        let (height, tip) = chain.tip();
        if block.header.prev_blockhash != tip {
            if let Some(e) = chain.entry(&hash)? {
                if chain.hash_at(e.height)? == Some(hash) {
                    return Ok(Verdict::Known);
                }
            }
            return match chain.entry(&block.header.prev_blockhash)? {
                Some(prev) if prev.height < height => Err(Reject::new(
                    RejectCode::HeightSealed,
                    format!("block {hash} at height {}: that height is already sealed and final", prev.height + 1),
                )
                .into()),
                _ => Err(Reject::new(
                    RejectCode::BadPrevBlock,
                    format!("block {hash}: previous block {} is unknown", block.header.prev_blockhash),
                )
                .into()),
            };
        }
        let set = self.set_after(chain)?;
        seal.verify(chain.params(), &hash, set.as_deref())?;
        Ok(Verdict::Extends)
    }

    /// Keeps `seal` for `hash` (before the block is connected).
    pub fn store(&self, hash: &BlockHash, seal: &Seal) -> Result<(), SealStoreError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO seals (hash, seal) VALUES (?1, ?2)")
            .map_err(|e| self.err(e))?
            .execute(params![hash.to_byte_array(), seal.to_bytes()])
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// What an attestation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attested {
    /// Checked and kept; `new` when it was not here before; `count` of `quorum` needed.
    Taken { new: bool, count: usize, quorum: usize },
    /// Its block is not here yet: it waits in memory.
    Pending,
}

impl Seals {
    /// Takes `att` for block `hash` at `height` (`None`: not here yet): it must be by a
    /// validator of the set the block's seal names.
    pub fn attest(
        &mut self,
        params: &Params,
        hash: &BlockHash,
        height: Option<u32>,
        att: Attestation,
    ) -> Result<Attested, CheckError> {
        let seal = match height {
            Some(_) => self.get(hash)?,
            None => None,
        };
        let (Some(height), Some(seal)) = (height, seal) else {
            if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(hash) {
                return Err(Reject::new(
                    RejectCode::BadPrevBlock,
                    format!("attestation of block {hash}: the block is unknown"),
                )
                .into());
            }
            let waiting = self.pending.entry(*hash).or_default();
            if !waiting.contains(&att) && waiting.len() < 2 * micro_os_chain::seal::MAX_VALIDATORS {
                waiting.push(att);
            }
            return Ok(Attested::Pending);
        };
        att.verify(params, hash, &seal.validators)?;
        let new = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO attestations (hash, validator, attestation) VALUES (?1, ?2, ?3)")
            .map_err(|e| self.err(e))?
            .execute(params![hash.to_byte_array(), att.validator.serialize(), att.to_bytes()])
            .map_err(|e| self.err(e))?
            == 1;
        let count = self.attestations(hash)?.len();
        let quorum = quorum(seal.validators.len());
        if new && count >= quorum && height > self.finalized()? {
            self.conn
                .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES ('finalized', ?1)")
                .map_err(|e| self.err(e))?
                .execute([height])
                .map_err(|e| self.err(e))?;
        }
        Ok(Attested::Taken { new, count, quorum })
    }

    /// The attestations that waited for block `hash`, which has just come.
    pub fn take_pending(&mut self, hash: &BlockHash) -> Vec<Attestation> {
        self.pending.remove(hash).unwrap_or_default()
    }

    /// The attestations kept for block `hash`.
    pub fn attestations(&self, hash: &BlockHash) -> Result<Vec<Attestation>, SealStoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT attestation FROM attestations WHERE hash = ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([hash.to_byte_array()], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        // stored only after it was checked
        Ok(rows.iter().filter_map(|b| Attestation::from_bytes(b).ok()).collect())
    }

    /// The highest block attested by a majority of its set (0: none yet).
    pub fn finalized(&self) -> Result<u32, SealStoreError> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'finalized'")
            .map_err(|e| self.err(e))?
            .query_row([], |r| r.get(0))
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(|e| self.err(e))
    }
}

/// Why a sealed block was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Reject(#[from] Reject),
    #[error(transparent)]
    Store(#[from] SealStoreError),
    #[error("chain state: {0}")]
    Chain(#[from] micro_os_chain::error::Error),
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use bitcoin::secp256k1::{rand, Secp256k1, SecretKey};
    use bitcoin::ScriptBuf;
    use micro_os_chain::miner;
    use micro_os_chain::params::Params;
    use micro_os_chain::seal::normalize;

    use super::*;
    use crate::node::{Node, Options};

    fn key() -> (SecretKey, PublicKey) {
        let sk = SecretKey::new(&mut rand::thread_rng());
        (sk, PublicKey::from_secret_key(&Secp256k1::signing_only(), &sk))
    }

    /// A block on `node`'s tip at the fixed pow limit, with extra nonce `extra`.
    fn next_block(node: &Node, extra: u8) -> Block {
        let mut t = node.block_template(ScriptBuf::new_op_return([extra; 4])).unwrap();
        let m = miner::mine(&t.block.header, t.block.header.target(), 1, &AtomicBool::new(false), |_| {});
        t.block.header = m.header.unwrap();
        t.block
    }

    #[test]
    fn sealed_blocks_need_a_validators_seal_and_are_final() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(dir.path(), Params::circuit(), Options::default()).unwrap();
        let p = node.params();
        let (a, pa) = key();
        let (b, pb) = key();
        let (outsider, _) = key();
        let b1 = next_block(&node, 1);
        let code = |e: crate::node::Error| e.reject().map(|r| r.code);
        // no seal, or a seal of another block: refused
        assert_eq!(code(node.accept_block(&b1).unwrap_err()), Some(RejectCode::BadSeal));
        let wrong = Seal::sign(p, &a, &BlockHash::all_zeros(), vec![pa, pb]);
        assert_eq!(code(node.accept_sealed(&b1, &wrong).unwrap_err()), Some(RejectCode::BadSeal));
        // block 1 names the set {a, b}
        node.accept_sealed(&b1, &Seal::sign(p, &a, &b1.block_hash(), vec![pa, pb])).unwrap();
        assert_eq!(node.tip().0, 1);
        assert_eq!(node.validator_set().unwrap(), Some(normalize(vec![pa, pb])));
        // block 2 sealed by someone outside the set: refused; by b: taken
        let b2 = next_block(&node, 2);
        let e = node.accept_sealed(&b2, &Seal::sign(p, &outsider, &b2.block_hash(), vec![pa, pb])).unwrap_err();
        assert!(e.to_string().contains("not a validator"), "{e}");
        let s2 = Seal::sign(p, &b, &b2.block_hash(), vec![pa, pb]);
        node.accept_sealed(&b2, &s2).unwrap();
        // the same block again is a no-op; another block at height 2 is refused: final
        assert!(node.accept_sealed(&b2, &s2).unwrap().connected.is_empty());
        let mut rival = b2.clone();
        rival.header.time += 1;
        let m = miner::mine(&rival.header, rival.header.target(), 1, &AtomicBool::new(false), |_| {});
        rival.header = m.header.unwrap();
        let e = node.accept_sealed(&rival, &Seal::sign(p, &a, &rival.block_hash(), vec![pa, pb])).unwrap_err();
        assert_eq!(code(e), Some(RejectCode::HeightSealed));
        assert_eq!(node.seal(&b2.block_hash()).unwrap(), Some(s2));
        // the set and the seals survive a restart
        drop(node);
        let node = Node::open(dir.path(), Params::circuit(), Options::default()).unwrap();
        assert_eq!(node.tip().0, 2);
        assert_eq!(node.validator_set().unwrap(), Some(normalize(vec![pa, pb])));
    }

    #[test]
    fn a_light_node_checks_each_headers_seal() {
        let dir = tempfile::tempdir().unwrap();
        let full = Node::open(dir.path(), Params::circuit(), Options::default()).unwrap();
        let p = full.params();
        let (a, pa) = key();
        let (outsider, _) = key();
        let mut sealed = Vec::new();
        for i in 0..3u8 {
            let b = next_block(&full, i);
            let seal = Seal::sign(p, &a, &b.block_hash(), vec![pa]);
            full.accept_sealed(&b, &seal).unwrap();
            sealed.push((b, seal));
        }
        let ldir = tempfile::tempdir().unwrap();
        let light = Node::open(ldir.path(), Params::circuit(), Options { light: true, ..Options::default() }).unwrap();
        let code = |e: crate::node::Error| e.reject().map(|r| r.code);
        // without its seal a header is refused; with a seal by no validator too
        assert_eq!(code(light.accept_header(&sealed[0].0.header).unwrap_err()), Some(RejectCode::BadSeal));
        light.accept_sealed_header(&sealed[0].0.header, &sealed[0].1).unwrap();
        let forged = Seal::sign(p, &outsider, &sealed[1].0.block_hash(), vec![pa]);
        let e = light.accept_sealed_header(&sealed[1].0.header, &forged).unwrap_err();
        assert!(e.to_string().contains("not a validator"), "{e}");
        for (b, seal) in &sealed[1..] {
            light.accept_sealed_header(&b.header, seal).unwrap();
        }
        assert_eq!(light.tip(), full.tip());
        assert_eq!(light.validator_set().unwrap(), Some(vec![pa]));
        // a rival header at a sealed height is refused: final
        let mut rival = sealed[2].0.header;
        rival.time += 1;
        let m = miner::mine(&rival, rival.target(), 1, &AtomicBool::new(false), |_| {});
        let rival = m.header.unwrap();
        let e = light.accept_sealed_header(&rival, &Seal::sign(p, &a, &rival.block_hash(), vec![pa])).unwrap_err();
        assert_eq!(code(e), Some(RejectCode::HeightSealed));
    }

    #[test]
    fn a_majority_of_attestations_finalizes_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(dir.path(), Params::circuit(), Options::default()).unwrap();
        let p = node.params();
        let (a, pa) = key();
        let (b, pb) = key();
        let (c, pc) = key();
        let (outsider, _) = key();
        let set = vec![pa, pb, pc];
        let b1 = next_block(&node, 1);
        let h1 = b1.block_hash();
        // an attestation that comes before its block waits for it
        assert_eq!(node.attest(&h1, Attestation::sign(p, &b, &h1)).unwrap(), Attested::Pending);
        node.accept_sealed(&b1, &Seal::sign(p, &a, &h1, set.clone())).unwrap();
        assert_eq!(node.attestations(&h1).unwrap().len(), 1, "the waiting attestation was taken");
        assert_eq!(node.finalized().unwrap(), Some(0), "one of three is no majority");
        // an outsider's attestation, or one of another block, is refused
        let e = node.attest(&h1, Attestation::sign(p, &outsider, &h1)).unwrap_err();
        assert_eq!(e.reject().map(|r| r.code), Some(RejectCode::BadSeal), "{e}");
        let mut forged = Attestation::sign(p, &c, &BlockHash::all_zeros());
        forged.validator = pc;
        assert!(node.attest(&h1, forged).unwrap_err().to_string().contains("does not verify"));
        // the second of three finalizes it; the same one again is not new
        let taken = node.attest(&h1, Attestation::sign(p, &c, &h1)).unwrap();
        assert_eq!(taken, Attested::Taken { new: true, count: 2, quorum: 2 });
        assert_eq!(node.finalized().unwrap(), Some(1));
        let again = node.attest(&h1, Attestation::sign(p, &c, &h1)).unwrap();
        assert_eq!(again, Attested::Taken { new: false, count: 2, quorum: 2 });
        // they survive a restart
        drop(node);
        let node = Node::open(dir.path(), Params::circuit(), Options::default()).unwrap();
        assert_eq!(node.finalized().unwrap(), Some(1));
        let mut by: Vec<_> = node.attestations(&h1).unwrap().iter().map(|a| a.validator).collect();
        by.sort_by_key(|k| k.serialize());
        assert_eq!(by, normalize(vec![pb, pc]));
        // a pow network has none
        let pow = tempfile::tempdir().unwrap();
        let pow = Node::open(pow.path(), Params::devnet(), Options::default()).unwrap();
        assert!(pow.attest(&h1, Attestation::sign(p, &a, &h1)).is_err());
        assert_eq!(pow.finalized().unwrap(), None);
    }
}
