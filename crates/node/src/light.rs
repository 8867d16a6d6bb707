//! A light node (`--kind light`): headers only, and the wallet's own transactions, each
//! proven by a merkle proof (BIP37's merkle block) against a header the node holds. Proofs
//! are asked of full nodes with `GetProofs` (a range of heights, the wallet's scripts and
//! outpoints); the full node answers with the blocks that hold a match.
//!
//! Key design decisions: headers go through the same `ChainState::accept_header` as a full
//! node's (proof of work, difficulty, time rules), so a light node follows the most-work
//! header chain; it keeps that chain's hashes by height in memory, rebuilt at open from the
//! block index. A proven transaction counts only while its block is on that chain: a
//! reorganisation drops what it orphaned and rescans from the fork. A full node can hide a
//! transaction from a light node (BIP37's known weakness) but cannot invent one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use bitcoin::block::Header;
use bitcoin::consensus::{deserialize, serialize};
use bitcoin::hashes::Hash;
use bitcoin::merkle_tree::MerkleBlock;
use bitcoin::{BlockHash, OutPoint, ScriptBuf, Transaction, Txid};
use micro_os_chain::chainstate::ChainState;
use rusqlite::{params, Connection, OptionalExtension};

use crate::wallet::{Wallet, WalletCoin};

/// Heights one `GetProofs` covers at most.
pub const MAX_PROOF_RANGE: u32 = 1000;

/// What went wrong in the light store.
#[derive(Debug, thiserror::Error)]
pub enum LightError {
    #[error("light store {path}: {source}")]
    Store { path: PathBuf, source: rusqlite::Error },
    #[error("chain state: {0}")]
    Chain(#[from] micro_os_chain::error::Error),
    #[error("light store {path}: {what} is corrupt")]
    Corrupt { path: PathBuf, what: String },
}

/// Why proofs from a peer were refused. `Invalid` is the peer's fault (it costs score);
/// `OtherBranch` is not (the peer follows another chain, or has moved on).
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    OtherBranch(String),
    #[error(transparent)]
    Store(#[from] LightError),
}

/// One block's proof as it is checked: the merkle block and the matched transactions.
#[derive(Debug, Clone)]
pub struct Proof {
    pub height: u32,
    pub merkle_block: MerkleBlock,
    pub txs: Vec<Transaction>,
}

/// The light part of a node. See the module documentation.
pub struct Light {
    inner: Mutex<Inner>,
}

struct Inner {
    /// The best header chain's hashes by height (genesis first).
    hashes: Vec<BlockHash>,
    by_hash: HashMap<BlockHash, u32>,
    conn: Connection,
    path: PathBuf,
    /// Heights up to here have been scanned for the wallet.
    scanned: u32,
}

impl std::fmt::Debug for Light {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.inner();
        f.debug_struct("Light").field("path", &i.path).field("headers", &i.hashes.len()).finish()
    }
}

/// The hashes of the chain ending at `tip`, genesis first.
fn chain_to(chain: &ChainState, tip: BlockHash) -> Result<Vec<BlockHash>, LightError> {
    let mut out = Vec::new();
    let mut cur = chain.entry(&tip)?;
    while let Some(e) = cur {
        out.push(e.hash);
        if e.height == 0 {
            break;
        }
        cur = chain.entry(&e.header.prev_blockhash)?;
    }
    out.reverse();
    Ok(out)
}

impl Light {
    /// Opens (creating) the light store at `path` and rebuilds the best header chain from
    /// `chain`'s block index.
    pub fn open(path: impl AsRef<Path>, chain: &ChainState) -> Result<Light, LightError> {
        let path = path.as_ref().to_path_buf();
        let store = |source| LightError::Store { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(store)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(store)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(store)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS proven (txid BLOB PRIMARY KEY, block BLOB NOT NULL, height INTEGER NOT NULL,
                 tx BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS pending (txid BLOB PRIMARY KEY, tx BLOB NOT NULL, sent INTEGER NOT NULL)
                 WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);",
        )
        .map_err(store)?;
        let hashes = chain_to(chain, chain.best_header()?.1)?;
        let by_hash = hashes.iter().enumerate().map(|(h, x)| (*x, h as u32)).collect();
        let scanned: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM meta WHERE key = 'scanned'", [], |r| r.get(0))
            .optional()
            .map_err(store)?;
        let mut inner = Inner { hashes, by_hash, conn, path, scanned: 0 };
        if let Some(hash) = scanned {
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| LightError::Corrupt { path: inner.path.clone(), what: "the scan point".into() })?;
            let hash = BlockHash::from_byte_array(hash);
            // the scan point on our chain, or where its branch left it
            let fork = chain_to(chain, hash)?.into_iter().rev().find_map(|h| inner.by_hash.get(&h).copied());
            inner.rewind(fork.unwrap_or(0))?;
        }
        Ok(Light { inner: Mutex::new(inner) })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The best header: (height, hash).
    pub fn tip(&self) -> (u32, BlockHash) {
        let i = self.inner();
        let h = i.hashes.len() - 1;
        (h as u32, i.hashes[h])
    }

    /// The hash at `height` on the best header chain.
    pub fn hash_at(&self, height: u32) -> Option<BlockHash> {
        self.inner().hashes.get(height as usize).copied()
    }

    /// The height of `hash` when it is on the best header chain.
    pub fn height_of(&self, hash: &BlockHash) -> Option<u32> {
        self.inner().by_hash.get(hash).copied()
    }

    /// Heights scanned for the wallet so far.
    pub fn scanned(&self) -> u32 {
        self.inner().scanned
    }

    /// Block locator of the best header chain.
    pub fn locator(&self) -> Vec<BlockHash> {
        let i = self.inner();
        let mut out = Vec::new();
        let mut height = (i.hashes.len() - 1) as i64;
        let mut step = 1i64;
        while height > 0 {
            out.push(i.hashes[height as usize]);
            if out.len() >= 10 {
                step *= 2;
            }
            height -= step;
        }
        out.push(i.hashes[0]);
        out
    }

    /// Up to `max` headers of the best header chain after the first locator hash on it.
    pub fn headers_after(
        &self,
        chain: &ChainState,
        locator: &[BlockHash],
        max: usize,
    ) -> Result<Vec<Header>, LightError> {
        let hashes: Vec<BlockHash> = {
            let i = self.inner();
            let start = locator.iter().find_map(|h| i.by_hash.get(h)).map_or(1, |h| *h as usize + 1);
            i.hashes.iter().skip(start).take(max).copied().collect()
        };
        let mut out = Vec::with_capacity(hashes.len());
        for h in hashes {
            let header = chain
                .header(&h)?
                .ok_or_else(|| LightError::Corrupt { path: self.inner().path.clone(), what: format!("header {h}") })?;
            out.push(header);
        }
        Ok(out)
    }

    /// Follows the chain state's best header after new headers; `Some(new tip)` when it
    /// moved. A reorganisation rewinds the wallet scan to the fork.
    pub fn follow(&self, chain: &ChainState) -> Result<Option<(u32, BlockHash)>, LightError> {
        let (height, best) = chain.best_header()?;
        let mut i = self.inner();
        if i.hashes.last() == Some(&best) {
            return Ok(None);
        }
        // walk back from the new best until a block of the chain we hold
        let mut branch = Vec::new();
        let mut cur = best;
        let fork = loop {
            if let Some(h) = i.by_hash.get(&cur) {
                break *h;
            }
            let e = chain.entry(&cur)?.ok_or_else(|| LightError::Corrupt {
                path: i.path.clone(),
                what: format!("block index entry {cur}"),
            })?;
            branch.push(cur);
            cur = e.header.prev_blockhash;
        };
        for gone in i.hashes.split_off(fork as usize + 1) {
            i.by_hash.remove(&gone);
        }
        for h in branch.into_iter().rev() {
            let height = i.hashes.len() as u32;
            i.hashes.push(h);
            i.by_hash.insert(h, height);
        }
        if i.scanned > fork {
            tracing::info!("light: reorganisation at height {fork}: wallet proofs above it dropped, rescanning");
            i.rewind(fork)?;
        }
        Ok(Some((height, best)))
    }

    /// The next range to scan for the wallet: (from, to), or `None` when scanned to the tip.
    pub fn next_scan(&self) -> Option<(u32, u32)> {
        let i = self.inner();
        let tip = (i.hashes.len() - 1) as u32;
        (i.scanned < tip).then(|| (i.scanned + 1, tip.min(i.scanned + MAX_PROOF_RANGE)))
    }

    /// What the wallet asks proofs for: its scripts, and the outpoints it owns that are not
    /// known to be spent.
    pub fn filter(&self, wallet: &Wallet) -> Result<(Vec<ScriptBuf>, Vec<OutPoint>), LightError> {
        let outpoints = self.coins(wallet)?.into_iter().map(|c| c.outpoint).collect();
        Ok((wallet.scripts(), outpoints))
    }

    /// Checks proofs for heights `from..=to` against the header chain and keeps the wallet's
    /// transactions among them; `end` is the peer's hash at `to`, which must be ours. Returns
    /// the transactions kept.
    pub fn accept_proofs(
        &self,
        wallet: &Wallet,
        from: u32,
        to: u32,
        end: BlockHash,
        proofs: Vec<Proof>,
    ) -> Result<usize, ProofError> {
        let mut i = self.inner();
        if from != i.scanned + 1 {
            return Err(ProofError::OtherBranch(format!(
                "proofs from {from}, but the wallet is scanned to {}",
                i.scanned
            )));
        }
        if i.hashes.get(to as usize) != Some(&end) {
            return Err(ProofError::OtherBranch(format!("the peer's block at {to} is {end}, not on our header chain")));
        }
        let mut owned: HashSet<OutPoint> = HashSet::new();
        let mut kept = Vec::new();
        let mut last = from.saturating_sub(1);
        for p in proofs {
            if p.height < from || p.height > to || p.height <= last {
                return Err(ProofError::Invalid(format!(
                    "a proof for height {} outside {from}..={to} or out of order",
                    p.height
                )));
            }
            last = p.height;
            let hash = p.merkle_block.header.block_hash();
            if i.hashes[p.height as usize] != hash {
                return Err(ProofError::Invalid(format!(
                    "proof for block {hash} at {}: not our header there",
                    p.height
                )));
            }
            let (mut matches, mut indexes) = (Vec::new(), Vec::new());
            p.merkle_block
                .extract_matches(&mut matches, &mut indexes)
                .map_err(|e| ProofError::Invalid(format!("merkle proof of block {hash}: {e}")))?;
            let matched: HashSet<Txid> = matches.into_iter().collect();
            for tx in p.txs {
                let txid = tx.compute_txid();
                if !matched.contains(&txid) {
                    return Err(ProofError::Invalid(format!("tx {txid} is not proven in block {hash}")));
                }
                let pays = tx.output.iter().any(|o| wallet.is_mine(&o.script_pubkey));
                let spends = tx.input.iter().any(|x| owned.contains(&x.previous_output));
                for (vout, o) in tx.output.iter().enumerate() {
                    if wallet.is_mine(&o.script_pubkey) {
                        owned.insert(OutPoint { txid, vout: vout as u32 });
                    }
                }
                if pays || spends || i.spends_owned(&tx)? {
                    kept.push((txid, hash, p.height, tx));
                }
            }
        }
        let n = kept.len();
        let path = i.path.clone();
        let store = |source| LightError::Store { path: path.clone(), source };
        let t = i.conn.unchecked_transaction().map_err(store)?;
        for (txid, block, height, tx) in kept {
            t.execute(
                "INSERT OR REPLACE INTO proven (txid, block, height, tx) VALUES (?1, ?2, ?3, ?4)",
                params![txid.to_byte_array(), block.to_byte_array(), height, serialize(&tx)],
            )
            .map_err(store)?;
            t.execute("DELETE FROM pending WHERE txid = ?1", [txid.to_byte_array()]).map_err(store)?;
        }
        t.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('scanned', ?1)", [end.to_byte_array()])
            .map_err(store)?;
        t.commit().map_err(store)?;
        i.scanned = to;
        // pending transactions whose inputs a proven one spent are dead
        let proven = i.proven()?;
        let spent: HashSet<OutPoint> =
            proven.iter().flat_map(|(tx, _)| tx.input.iter().map(|x| x.previous_output)).collect();
        for tx in i.pending()? {
            if tx.input.iter().any(|x| spent.contains(&x.previous_output)) {
                let txid = tx.compute_txid();
                tracing::info!("light: pending tx {txid} conflicts with a proven one; dropped");
                i.conn.execute("DELETE FROM pending WHERE txid = ?1", [txid.to_byte_array()]).map_err(store)?;
            }
        }
        Ok(n)
    }

    /// Keeps a transaction the wallet sent until it is proven in a block.
    pub fn add_pending(&self, tx: &Transaction) -> Result<(), LightError> {
        let i = self.inner();
        i.conn
            .execute(
                "INSERT OR IGNORE INTO pending (txid, tx, sent) VALUES (?1, ?2, ?3)",
                params![tx.compute_txid().to_byte_array(), serialize(tx), crate::node::now() as i64],
            )
            .map_err(|source| LightError::Store { path: i.path.clone(), source })?;
        Ok(())
    }

    /// Transactions sent and not yet proven.
    pub fn pending(&self) -> Result<Vec<Transaction>, LightError> {
        self.inner().pending()
    }

    /// The wallet's coins: outputs to its scripts of proven transactions on the header
    /// chain and of pending ones, not spent by either, largest first.
    pub fn coins(&self, wallet: &Wallet) -> Result<Vec<WalletCoin>, LightError> {
        let i = self.inner();
        let tip = (i.hashes.len() - 1) as u32;
        let proven = i.proven()?;
        let pending = i.pending()?;
        let spent: HashSet<OutPoint> = proven
            .iter()
            .map(|(t, _)| t)
            .chain(&pending)
            .flat_map(|t| t.input.iter().map(|x| x.previous_output))
            .collect();
        let maturity = wallet.params().coinbase_maturity;
        let mut coins = Vec::new();
        let all = proven.iter().map(|(t, h)| (t, Some(*h))).chain(pending.iter().map(|t| (t, None)));
        for (tx, height) in all {
            let txid = tx.compute_txid();
            for (vout, out) in tx.output.iter().enumerate() {
                let outpoint = OutPoint { txid, vout: vout as u32 };
                if !wallet.is_mine(&out.script_pubkey) || spent.contains(&outpoint) {
                    continue;
                }
                let confirmations = height.map_or(0, |h| tip + 1 - h.min(tip));
                let coinbase = tx.is_coinbase();
                let mature = !coinbase || height.is_some_and(|h| (tip + 1).saturating_sub(h) >= maturity);
                coins.push(WalletCoin { outpoint, output: out.clone(), confirmations, coinbase, spendable: mature });
            }
        }
        coins.sort_by(|a, b| b.output.value.cmp(&a.output.value).then(a.outpoint.cmp(&b.outpoint)));
        Ok(coins)
    }

    /// A pending or proven transaction of the wallet.
    pub fn transaction(&self, txid: &Txid) -> Result<Option<(Transaction, Option<BlockHash>)>, LightError> {
        let i = self.inner();
        let store = |source| LightError::Store { path: i.path.clone(), source };
        let row: Option<(Vec<u8>, Option<[u8; 32]>)> = i
            .conn
            .query_row(
                "SELECT tx, block FROM proven WHERE txid = ?1 UNION ALL SELECT tx, NULL FROM pending WHERE txid = ?1",
                [txid.to_byte_array()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(store)?;
        row.map(|(tx, block)| Ok((i.decode(&tx)?, block.map(BlockHash::from_byte_array)))).transpose()
    }
}

impl Inner {
    fn store(&self, source: rusqlite::Error) -> LightError {
        LightError::Store { path: self.path.clone(), source }
    }

    fn decode(&self, bytes: &[u8]) -> Result<Transaction, LightError> {
        deserialize(bytes)
            .map_err(|e| LightError::Corrupt { path: self.path.clone(), what: format!("a transaction: {e}") })
    }

    /// Scans again from above `height`: proofs above it are dropped.
    fn rewind(&mut self, height: u32) -> Result<(), LightError> {
        let t = self.conn.unchecked_transaction().map_err(|e| self.store(e))?;
        t.execute("DELETE FROM proven WHERE height > ?1", [height]).map_err(|e| self.store(e))?;
        t.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('scanned', ?1)",
            [self.hashes[height as usize].to_byte_array()],
        )
        .map_err(|e| self.store(e))?;
        t.commit().map_err(|e| self.store(e))?;
        self.scanned = height;
        Ok(())
    }

    /// Proven transactions on the header chain, with their heights, oldest first.
    fn proven(&self) -> Result<Vec<(Transaction, u32)>, LightError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT tx, block, height FROM proven ORDER BY height")
            .map_err(|e| self.store(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, [u8; 32]>(1)?, r.get::<_, u32>(2)?)))
            .map_err(|e| self.store(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.store(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (tx, block, height) in rows {
            if self.hashes.get(height as usize) == Some(&BlockHash::from_byte_array(block)) {
                out.push((self.decode(&tx)?, height));
            }
        }
        Ok(out)
    }

    fn pending(&self) -> Result<Vec<Transaction>, LightError> {
        let mut stmt = self.conn.prepare_cached("SELECT tx FROM pending ORDER BY sent").map_err(|e| self.store(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.store(e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.store(e))?;
        rows.iter().map(|t| self.decode(t)).collect()
    }

    /// Whether `tx` spends an output of an already proven transaction paying the wallet.
    fn spends_owned(&self, tx: &Transaction) -> Result<bool, LightError> {
        let mut stmt = self.conn.prepare_cached("SELECT 1 FROM proven WHERE txid = ?1").map_err(|e| self.store(e))?;
        for x in &tx.input {
            if stmt.exists([x.previous_output.txid.to_byte_array()]).map_err(|e| self.store(e))? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A full node's side of `GetProofs`: for each block, the transactions paying one of
/// `scripts` or spending one of `outpoints` (outputs matched on the way join the outpoints,
/// as BIP37's `BLOOM_UPDATE_ALL`), and the merkle block proving them.
pub fn prove(
    block: &bitcoin::Block,
    height: u32,
    scripts: &HashSet<ScriptBuf>,
    outpoints: &mut HashSet<OutPoint>,
) -> Option<Proof> {
    let mut txs = Vec::new();
    let mut ids = HashSet::new();
    for tx in &block.txdata {
        let txid = tx.compute_txid();
        let mut hit = tx.input.iter().any(|x| outpoints.contains(&x.previous_output));
        for (vout, o) in tx.output.iter().enumerate() {
            if scripts.contains(&o.script_pubkey) {
                hit = true;
                outpoints.insert(OutPoint { txid, vout: vout as u32 });
            }
        }
        if hit {
            ids.insert(txid);
            txs.push(tx.clone());
        }
    }
    if txs.is_empty() {
        return None;
    }
    let merkle_block = MerkleBlock::from_block_with_predicate(block, |t| ids.contains(t));
    Some(Proof { height, merkle_block, txs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::{mine_to, node};
    use crate::node::{Node, Options};
    use bitcoin::Amount;
    use micro_os_chain::params::Params;

    /// A light node in a temp dir.
    fn light() -> (tempfile::TempDir, Node) {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(dir.path(), Params::devnet(), Options { light: true, ..Options::default() }).unwrap();
        (dir, node)
    }

    /// Gives the light node the full node's headers from `from` on.
    fn headers(full: &Node, light: &Node) {
        let locator = light.locator().unwrap();
        for h in full.headers_after(&locator, 2000).unwrap() {
            light.accept_header(&h).unwrap();
        }
    }

    /// Proofs the full node would send for the light node's next range.
    fn proofs_for(full: &Node, light: &Node) -> (u32, u32, BlockHash, Vec<Proof>) {
        let (from, to) = light.light().unwrap().next_scan().unwrap();
        let (scripts, outpoints) = light.light_filter().unwrap();
        let (end, proofs) = full.proofs(from, to, scripts, outpoints).unwrap();
        let (to, end) = end.unwrap();
        (from, to, end, proofs)
    }

    #[test]
    fn headers_follow_the_best_chain_and_proofs_prove_the_wallet() {
        let (_d, full) = node();
        let (_l, light) = light();
        let mine = light.new_address().unwrap();
        let other = full.new_address().unwrap();
        for _ in 0..12 {
            mine_to(&full, &other.script_pubkey());
        }
        let txid = full.send_to_address(&mine, Amount::from_int_btc(7), None).unwrap();
        mine_to(&full, &other.script_pubkey());
        headers(&full, &light);
        assert_eq!(light.tip(), full.tip());
        assert_eq!(light.state().chain.tip().0, 0, "a light node connects no blocks");

        let (from, to, end, proofs) = proofs_for(&full, &light);
        assert_eq!((from, to), (1, 13));
        assert_eq!(proofs.len(), 1);
        let l = light.light().unwrap();
        let kept = light.accept_proofs(from, to, end, proofs.clone()).unwrap();
        assert_eq!(kept, 1);
        assert_eq!(l.scanned(), 13);
        let b = light.balance().unwrap();
        assert_eq!(b.confirmed, Amount::from_int_btc(7));
        assert!(l.transaction(&txid).unwrap().is_some());

        // a proof whose tree does not give the header's merkle root is refused
        let mut bad = proofs[0].clone();
        bad.merkle_block.header.merkle_root = bitcoin::TxMerkleNode::all_zeros();
        l.inner().scanned = 12;
        let e = light.accept_proofs(13, 13, end, vec![bad]).unwrap_err();
        assert!(matches!(e, ProofError::Invalid(_)), "{e}");
        // a transaction that the proof does not hold is refused
        let mut extra = proofs[0].clone();
        extra.txs.push(full.block(&end).unwrap().unwrap().txdata[0].clone());
        let e = light.accept_proofs(13, 13, end, vec![extra]).unwrap_err();
        assert!(e.to_string().contains("is not proven in block"), "{e}");
        l.inner().scanned = 13;

        // the light wallet spends it; the full node takes the spend and mines it
        let back = full.new_address().unwrap();
        let sent = light.send_to_address(&back, Amount::from_int_btc(2), None).unwrap();
        let tx = l.transaction(&sent).unwrap().unwrap().0;
        assert_eq!(light.balance().unwrap().confirmed, Amount::ZERO, "its input is spent by the pending tx");
        full.accept_tx(tx).unwrap();
        mine_to(&full, &other.script_pubkey());
        headers(&full, &light);
        let (from, to, end, proofs) = proofs_for(&full, &light);
        assert_eq!((from, to), (14, 14));
        light.accept_proofs(from, to, end, proofs).unwrap();
        assert!(l.pending().unwrap().is_empty(), "the proven spend is no longer pending");
        let b = light.balance().unwrap();
        assert!(b.confirmed > Amount::from_int_btc(4) && b.confirmed < Amount::from_int_btc(5), "{b:?}");

        // the header chain and the scan point survive a restart
        let dir = light.datadir().to_path_buf();
        drop(light);
        let light = Node::open(&dir, Params::devnet(), Options { light: true, ..Options::default() }).unwrap();
        assert_eq!(light.tip(), full.tip());
        assert_eq!(light.light().unwrap().scanned(), 14);
        assert_eq!(light.balance().unwrap(), b);
    }

    #[test]
    fn a_heavier_branch_drops_the_proofs_it_orphaned() {
        let (_d, full) = node();
        let (_d2, rival) = node();
        let (_l, light) = light();
        let mine = light.new_address().unwrap();
        let other = full.new_address().unwrap();
        for _ in 0..12 {
            let b = mine_to(&full, &other.script_pubkey());
            rival.accept_block(&b).unwrap();
        }
        full.send_to_address(&mine, Amount::from_int_btc(3), None).unwrap();
        mine_to(&full, &other.script_pubkey());
        headers(&full, &light);
        let (from, to, end, proofs) = proofs_for(&full, &light);
        light.accept_proofs(from, to, end, proofs).unwrap();
        assert_eq!(light.balance().unwrap().confirmed, Amount::from_int_btc(3));
        // the rival mines two blocks on height 12 without the payment
        for _ in 0..2 {
            mine_to(&rival, &other.script_pubkey());
        }
        headers(&rival, &light);
        assert_eq!(light.tip(), rival.tip());
        assert_eq!(light.light().unwrap().scanned(), 12, "rewound to the fork");
        assert_eq!(light.balance().unwrap().confirmed, Amount::ZERO);
    }
}
