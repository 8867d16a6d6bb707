//! The chain state: block index, block and undo data, UTXO set and tip, in SQLite.
//!
//! In Bitcoin Core's shape: headers are accepted first (`accept_header`, with chainwork), a
//! block is stored (`accept_block`) and the chain with the most work whose blocks all have
//! data becomes active (`activate_best_chain`), disconnecting back to the fork point with undo
//! data and connecting the new branch; a block that fails to connect is marked invalid with
//! its descendants and the best valid chain is activated instead.
//!
//! Key design decisions: SQLite in WAL mode, and exactly one SQLite transaction per block
//! connect or disconnect (UTXO changes, undo data, tx index, active chain row and the `tip`
//! row together), so a `kill -9` at any moment leaves a consistent tip; `open` resumes an
//! interrupted reorganisation. Only connects and disconnects are fsynced
//! (`synchronous=FULL` for that transaction): headers and stored block data commit without
//! an fsync of their own, and since the WAL is written in order, the next connect's fsync
//! makes them durable too — a power cut may lose a header or a block not yet connected
//! (peers send them again), never a connected block, and never the state's consistency. A
//! connect reads each spent coin as it checks the input, and writes the block's UTXO, undo
//! and tx-index changes while its signatures are verified on the other cores
//! (`validation::verify_while`); it commits only if they all pass, else the SQLite
//! transaction is rolled back. The block index stays on disk (not in memory as in Core) so
//! a long-lived fast devnet does not grow the process; every lookup is a primary-key read
//! through a cached prepared statement.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bitcoin::block::Header;
use bitcoin::consensus::{deserialize, serialize, Decodable, Encodable};
use bitcoin::hashes::Hash;
use bitcoin::pow::Work;
use bitcoin::{Amount, Block, BlockHash, CompactTarget, OutPoint, Script, ScriptBuf, Transaction, TxOut, Txid};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::error::{Error, Result};
use crate::params::Params;
use crate::pow::{self, PrevBlock};
use crate::validation::{
    self, check_block_context, check_block_txids, check_header_context, check_header_pow, median_time, Coin, CoinView,
    PrevEntry, Reject, RejectCode, SigQueue, TxSpends, MEDIAN_TIME_SPAN,
};

/// How far a block index entry has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BlockStatus {
    /// Header stored; no block data.
    HeaderOnly = 0,
    /// Block data stored, not (yet) connected.
    HaveData = 1,
    /// Connected successfully at least once.
    Valid = 2,
    /// Failed validation, or descends from a block that did.
    Invalid = 3,
}

impl BlockStatus {
    fn from_i64(n: i64) -> Result<Self> {
        Ok(match n {
            0 => Self::HeaderOnly,
            1 => Self::HaveData,
            2 => Self::Valid,
            3 => Self::Invalid,
            _ => return Err(Error::Corrupt(format!("block status {n}"))),
        })
    }
}

/// One entry of the block index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Block hash.
    pub hash: BlockHash,
    /// The header.
    pub header: Header,
    /// Height.
    pub height: u32,
    /// Total work of the chain up to and including this block.
    pub chainwork: Work,
    /// How far it has got.
    pub status: BlockStatus,
}

/// What [`ChainState::accept_header`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderStatus {
    /// Block hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: u32,
    /// Its status after the call.
    pub status: BlockStatus,
    /// Whether the header was new.
    pub new: bool,
}

/// What [`ChainState::accept_block`] did to the active chain (net of any back and forth).
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The accepted block.
    pub hash: BlockHash,
    /// Its height.
    pub height: u32,
    /// Whether its data was new.
    pub new: bool,
    /// Blocks connected, in order.
    pub connected: Vec<BlockHash>,
    /// Blocks disconnected, tip first, with their transactions for a mempool to take back.
    pub disconnected: Vec<Block>,
    /// Other blocks found invalid while activating the best chain.
    pub invalid: Vec<(BlockHash, Reject)>,
    /// The tip afterwards.
    pub tip: (u32, BlockHash),
}

impl Accepted {
    fn nothing(hash: BlockHash, height: u32, tip: (u32, BlockHash)) -> Self {
        Accepted { hash, height, new: false, connected: Vec::new(), disconnected: Vec::new(), invalid: Vec::new(), tip }
    }
}

/// Numbers for `getblockchaininfo`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainInfo {
    /// Network name.
    pub chain: &'static str,
    /// Height of the active tip.
    pub blocks: u32,
    /// Height of the most-work valid header.
    pub headers: u32,
    /// Active tip.
    pub best_block_hash: BlockHash,
    /// Most-work valid header.
    pub best_header_hash: BlockHash,
    /// Tip difficulty relative to Bitcoin's difficulty-1 target.
    pub difficulty: f64,
    /// Median time past of the tip.
    pub median_time: u32,
    /// `blocks / headers` (1 when in sync).
    pub verification_progress: f64,
    /// Total work of the active chain.
    pub chainwork: Work,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS block_index (
    hash BLOB PRIMARY KEY, prev BLOB NOT NULL, height INTEGER NOT NULL, chainwork BLOB NOT NULL,
    status INTEGER NOT NULL, time INTEGER NOT NULL, bits INTEGER NOT NULL, header BLOB NOT NULL,
    fail_code TEXT, fail_reason TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS block_index_prev ON block_index (prev);
CREATE INDEX IF NOT EXISTS block_index_work ON block_index (chainwork);
CREATE TABLE IF NOT EXISTS block_data (hash BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS undo (hash BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS utxo (
    txid BLOB NOT NULL, vout INTEGER NOT NULL, amount INTEGER NOT NULL, script BLOB NOT NULL,
    height INTEGER NOT NULL, coinbase INTEGER NOT NULL, PRIMARY KEY (txid, vout)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS utxo_script ON utxo (script);
CREATE TABLE IF NOT EXISTS tx_index (txid BLOB PRIMARY KEY, block BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS active_chain (height INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tip (id INTEGER PRIMARY KEY CHECK (id = 0), hash BLOB NOT NULL, height INTEGER NOT NULL);
";

/// Failures that may come from a mutated copy of a good block (merkle or witness malleation,
/// CVE-2012-2459, witness stuffing): the header is not marked invalid for them.
fn may_be_mutation(code: RejectCode) -> bool {
    matches!(
        code,
        RejectCode::BadMerkleRoot | RejectCode::BadWitnessCommitment | RejectCode::Duplicate | RejectCode::Oversized
    )
}

/// The chain state of one network.
pub struct ChainState {
    conn: Connection,
    params: &'static Params,
    path: PathBuf,
    tip: (u32, BlockHash),
    /// Transactions whose signatures verified at mempool entry (none by default).
    sig_cache: Option<std::sync::Arc<validation::SigCache>>,
}

impl std::fmt::Debug for ChainState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainState")
            .field("network", &self.params.name)
            .field("path", &self.path)
            .field("tip", &self.tip)
            .finish()
    }
}

fn hash_from(bytes: [u8; 32]) -> BlockHash {
    BlockHash::from_byte_array(bytes)
}

fn encode_undo(spent: &[(OutPoint, Coin)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spent.len() * 80);
    (spent.len() as u32).consensus_encode(&mut out).expect("vec write");
    for (op, coin) in spent {
        op.consensus_encode(&mut out).expect("vec write");
        coin.output.consensus_encode(&mut out).expect("vec write");
        coin.height.consensus_encode(&mut out).expect("vec write");
        u8::from(coin.coinbase).consensus_encode(&mut out).expect("vec write");
    }
    out
}

fn decode_undo(hash: &BlockHash, mut data: &[u8]) -> Result<Vec<(OutPoint, Coin)>> {
    let corrupt = |e: bitcoin::consensus::encode::Error| Error::Corrupt(format!("undo data of block {hash}: {e}"));
    let r = &mut data;
    let n = u32::consensus_decode(r).map_err(corrupt)?;
    let mut spent = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let op = OutPoint::consensus_decode(r).map_err(corrupt)?;
        let output = TxOut::consensus_decode(r).map_err(corrupt)?;
        let height = u32::consensus_decode(r).map_err(corrupt)?;
        let coinbase = u8::consensus_decode(r).map_err(corrupt)? != 0;
        spent.push((op, Coin { output, height, coinbase }));
    }
    Ok(spent)
}

const READ_COIN: &str = "SELECT amount, script, height, coinbase FROM utxo WHERE txid = ?1 AND vout = ?2";

fn coin_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Coin> {
    Ok(Coin {
        output: TxOut {
            value: Amount::from_sat(r.get::<_, i64>(0)? as u64),
            script_pubkey: ScriptBuf::from_bytes(r.get(1)?),
        },
        height: r.get(2)?,
        coinbase: r.get(3)?,
    })
}

fn read_coin(conn: &Connection, op: &OutPoint) -> rusqlite::Result<Option<Coin>> {
    conn.prepare_cached(READ_COIN)?.query_row(params![op.txid.to_byte_array(), op.vout], coin_from_row).optional()
}

fn tx_confirmed(conn: &Connection, txid: &Txid) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM tx_index WHERE txid = ?1")?
        .query_row([txid.to_byte_array()], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
}

impl CoinView for ChainState {
    fn coin(&self, outpoint: &OutPoint) -> Option<Coin> {
        match read_coin(&self.conn, outpoint) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%outpoint, error = %e, "chain state: reading a coin failed");
                None
            }
        }
    }

    fn is_spent(&self, outpoint: &OutPoint) -> bool {
        tx_confirmed(&self.conn, &outpoint.txid).unwrap_or(false)
    }
}

impl ChainState {
    /// Opens (creating, with its genesis block, on first use) the chain state at `path`.
    /// Skips, at block connect, the signature checks of transactions `cache` holds (the
    /// node fills it as transactions enter its mempool).
    pub fn set_sig_cache(&mut self, cache: std::sync::Arc<validation::SigCache>) {
        self.sig_cache = Some(cache);
    }

    pub fn open(path: impl AsRef<Path>, params: &'static Params) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        }
        let conn = Connection::open(&path)?;
        // The connect path alone uses about 15 statements; the default cache holds 16.
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        let mut cs = ChainState { conn, params, path, tip: (0, params.genesis_hash), sig_cache: None };
        let network: Option<String> =
            cs.conn.query_row("SELECT value FROM meta WHERE key = 'network'", [], |r| r.get(0)).optional()?;
        match network {
            Some(n) if n != params.name => {
                return Err(Error::Corrupt(format!("{} holds the {n} chain, not {}", cs.path.display(), params.name)))
            }
            Some(_) => {}
            None => cs.init_genesis()?,
        }
        let (hash, height): ([u8; 32], u32) =
            cs.conn.query_row("SELECT hash, height FROM tip WHERE id = 0", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        cs.tip = (height, hash_from(hash));
        if cs.hash_at(0)? != Some(params.genesis_hash) {
            return Err(Error::Corrupt(format!("{}: genesis is not {}'s", cs.path.display(), params.name)));
        }
        // Resume a reorganisation that a crash interrupted.
        cs.activate_best_chain()?;
        Ok(cs)
    }

    fn init_genesis(&mut self) -> Result<()> {
        let g = &self.params.genesis;
        let hash = self.params.genesis_hash;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO meta (key, value) VALUES ('network', ?1)", [self.params.name])?;
        tx.execute(
            "INSERT INTO block_index (hash, prev, height, chainwork, status, time, bits, header)
             VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7)",
            params![
                hash.to_byte_array(),
                g.header.prev_blockhash.to_byte_array(),
                g.header.work().to_be_bytes(),
                BlockStatus::Valid as i64,
                g.header.time,
                g.header.bits.to_consensus(),
                serialize(&g.header)
            ],
        )?;
        tx.execute("INSERT INTO block_data (hash, data) VALUES (?1, ?2)", params![hash.to_byte_array(), serialize(g)])?;
        tx.execute("INSERT INTO undo (hash, data) VALUES (?1, ?2)", params![hash.to_byte_array(), encode_undo(&[])])?;
        for t in &g.txdata {
            tx.execute(
                "INSERT INTO tx_index (txid, block) VALUES (?1, ?2)",
                params![t.compute_txid().to_byte_array(), hash.to_byte_array()],
            )?;
        }
        tx.execute("INSERT INTO active_chain (height, hash) VALUES (0, ?1)", [hash.to_byte_array()])?;
        tx.execute("INSERT INTO tip (id, hash, height) VALUES (0, ?1, 0)", [hash.to_byte_array()])?;
        tx.commit()?;
        Ok(())
    }

    /// The network's parameters.
    pub fn params(&self) -> &'static Params {
        self.params
    }

    /// The active tip: (height, hash).
    pub fn tip(&self) -> (u32, BlockHash) {
        self.tip
    }

    /// The block index entry of `hash`.
    pub fn entry(&self, hash: &BlockHash) -> Result<Option<IndexEntry>> {
        let row = self
            .conn
            .prepare_cached("SELECT height, chainwork, status, header FROM block_index WHERE hash = ?1")?
            .query_row([hash.to_byte_array()], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, [u8; 32]>(1)?, r.get::<_, i64>(2)?, r.get::<_, Vec<u8>>(3)?))
            })
            .optional()?;
        let Some((height, work, status, header)) = row else { return Ok(None) };
        let header: Header =
            deserialize(&header).map_err(|e| Error::Corrupt(format!("header of block {hash}: {e}")))?;
        Ok(Some(IndexEntry {
            hash: *hash,
            header,
            height,
            chainwork: Work::from_be_bytes(work),
            status: BlockStatus::from_i64(status)?,
        }))
    }

    fn entry_or_corrupt(&self, hash: &BlockHash) -> Result<IndexEntry> {
        self.entry(hash)?.ok_or_else(|| Error::Corrupt(format!("block {hash} missing from the block index")))
    }

    /// The header of `hash`.
    pub fn header(&self, hash: &BlockHash) -> Result<Option<Header>> {
        Ok(self.entry(hash)?.map(|e| e.header))
    }

    /// The total work of the chain ending at `hash`.
    pub fn chainwork(&self, hash: &BlockHash) -> Result<Option<Work>> {
        Ok(self.entry(hash)?.map(|e| e.chainwork))
    }

    /// The block `hash`, if its data is stored.
    pub fn block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let data: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT data FROM block_data WHERE hash = ?1")?
            .query_row([hash.to_byte_array()], |r| r.get(0))
            .optional()?;
        data.map(|d| deserialize(&d).map_err(|e| Error::Corrupt(format!("data of block {hash}: {e}")))).transpose()
    }

    /// The hash at `height` on the active chain.
    pub fn hash_at(&self, height: u32) -> Result<Option<BlockHash>> {
        Ok(self
            .conn
            .prepare_cached("SELECT hash FROM active_chain WHERE height = ?1")?
            .query_row([height], |r| r.get::<_, [u8; 32]>(0))
            .optional()?
            .map(hash_from))
    }

    fn on_active_chain(&self, e: &IndexEntry) -> Result<bool> {
        Ok(e.height <= self.tip.0 && self.hash_at(e.height)? == Some(e.hash))
    }

    /// The ancestor of `entry` at `height` (at most `entry.height`).
    fn ancestor(&self, entry: &IndexEntry, height: u32) -> Result<IndexEntry> {
        let mut cur = entry.clone();
        loop {
            if cur.height == height {
                return Ok(cur);
            }
            if self.on_active_chain(&cur)? {
                let h = self.hash_at(height)?.ok_or_else(|| Error::Corrupt(format!("no active block at {height}")))?;
                return self.entry_or_corrupt(&h);
            }
            cur = self.entry_or_corrupt(&cur.header.prev_blockhash)?;
        }
    }

    fn mtp_of(&self, entry: &IndexEntry) -> Result<u32> {
        let mut times = Vec::with_capacity(MEDIAN_TIME_SPAN);
        let mut cur = entry.clone();
        loop {
            times.push(cur.header.time);
            if times.len() == MEDIAN_TIME_SPAN || cur.height == 0 {
                break;
            }
            cur = self.entry_or_corrupt(&cur.header.prev_blockhash)?;
        }
        Ok(median_time(&mut times))
    }

    /// Median time of `hash` and its ten ancestors.
    pub fn median_time_past(&self, hash: &BlockHash) -> Result<u32> {
        self.mtp_of(&self.entry_or_corrupt(hash)?)
    }

    fn next_bits_of(&self, prev: &IndexEntry) -> Result<CompactTarget> {
        let mut failure = None;
        let bits = pow::next_bits(
            self.params,
            PrevBlock { height: prev.height, time: prev.header.time, bits: prev.header.bits },
            |h| match self.ancestor(prev, h) {
                Ok(e) => e.header.time,
                Err(e) => {
                    failure = Some(e);
                    0
                }
            },
        );
        failure.map_or(Ok(bits), Err)
    }

    /// The bits a block on top of `prev` must carry.
    pub fn next_bits(&self, prev: &BlockHash) -> Result<CompactTarget> {
        self.next_bits_of(&self.entry_or_corrupt(prev)?)
    }

    /// The most-work header not known to be invalid: (height, hash).
    pub fn best_header(&self) -> Result<(u32, BlockHash)> {
        let (height, hash) = self
            .conn
            .prepare_cached(
                "SELECT height, hash FROM block_index WHERE status != 3 ORDER BY chainwork DESC, height ASC LIMIT 1",
            )?
            .query_row([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, [u8; 32]>(1)?)))?;
        Ok((height, hash_from(hash)))
    }

    /// Block locator of the active chain: the last ten blocks, then exponentially sparser,
    /// ending with genesis.
    pub fn locator(&self) -> Result<Vec<BlockHash>> {
        let mut out = Vec::new();
        let mut height = i64::from(self.tip.0);
        let mut step = 1i64;
        while height > 0 {
            out.push(
                self.hash_at(height as u32)?.ok_or_else(|| Error::Corrupt(format!("no active block at {height}")))?,
            );
            if out.len() >= 10 {
                step *= 2;
            }
            height -= step;
        }
        out.push(self.params.genesis_hash);
        Ok(out)
    }

    /// Up to `max` active-chain headers after the first `locator` hash on the active chain
    /// (after genesis when none is).
    pub fn headers_after(&self, locator: &[BlockHash], max: usize) -> Result<Vec<Header>> {
        let mut start = 1;
        for h in locator {
            if let Some(e) = self.entry(h)? {
                if self.on_active_chain(&e)? {
                    start = e.height + 1;
                    break;
                }
            }
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT b.header FROM active_chain a JOIN block_index b ON b.hash = a.hash
             WHERE a.height >= ?1 ORDER BY a.height LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![start, max as i64], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| deserialize(&r?).map_err(|e| Error::Corrupt(format!("stored header: {e}")))).collect()
    }

    /// The unspent coin at `outpoint`.
    pub fn coin(&self, outpoint: &OutPoint) -> Result<Option<Coin>> {
        Ok(read_coin(&self.conn, outpoint)?)
    }

    /// Unspent coins paying to `script` (a wallet's view).
    pub fn coins_for(&self, script: &Script) -> Result<Vec<(OutPoint, Coin)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT txid, vout, amount, height, coinbase FROM utxo WHERE script = ?1 ORDER BY height, txid, vout",
        )?;
        let rows = stmt.query_map([script.as_bytes()], |r| {
            Ok((
                OutPoint { txid: Txid::from_byte_array(r.get(0)?), vout: r.get(1)? },
                Coin {
                    output: TxOut {
                        value: Amount::from_sat(r.get::<_, i64>(2)? as u64),
                        script_pubkey: script.to_owned(),
                    },
                    height: r.get(3)?,
                    coinbase: r.get(4)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The active-chain block containing `txid`.
    pub fn tx_block(&self, txid: &Txid) -> Result<Option<BlockHash>> {
        Ok(self
            .conn
            .prepare_cached("SELECT block FROM tx_index WHERE txid = ?1")?
            .query_row([txid.to_byte_array()], |r| r.get::<_, [u8; 32]>(0))
            .optional()?
            .map(hash_from))
    }

    /// A confirmed transaction and the active-chain block containing it.
    pub fn transaction(&self, txid: &Txid) -> Result<Option<(Transaction, BlockHash)>> {
        let Some(hash) = self.tx_block(txid)? else { return Ok(None) };
        let block =
            self.block(&hash)?.ok_or_else(|| Error::Corrupt(format!("tx index names block {hash}, not stored")))?;
        Ok(block.txdata.into_iter().find(|t| t.compute_txid() == *txid).map(|t| (t, hash)))
    }

    /// The commitment hash of the UTXO set at the tip (`crate::utxo`): what the coinbase
    /// of the next block commits to when that block's height requires it.
    pub fn utxo_hash(&self) -> Result<[u8; 32]> {
        utxo_hash_of(&self.conn)
    }

    /// The UTXO set at the tip, for a fast-syncing peer.
    pub fn snapshot(&self) -> Result<crate::utxo::Snapshot> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT txid, vout, amount, script, height, coinbase FROM utxo ORDER BY txid, vout")?;
        let coins = stmt
            .query_map([], |r| {
                Ok((OutPoint { txid: Txid::from_byte_array(r.get(0)?), vout: r.get(1)? }, coin_from_row_at(r, 2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(crate::utxo::Snapshot { base: self.tip.1, height: self.tip.0, coins })
    }

    /// The height of the snapshot this chain state was started from (fast sync), if any:
    /// blocks at and below it have no data or undo here, and the chain never reorganises
    /// below it.
    pub fn snapshot_height(&self) -> Result<Option<u32>> {
        let v: Option<String> =
            self.conn.query_row("SELECT value FROM meta WHERE key = 'snapshot_height'", [], |r| r.get(0)).optional()?;
        Ok(v.and_then(|v| v.parse().ok()))
    }

    /// Fast sync: makes `snap` the state after its base block, whose header (and its
    /// ancestors') must be stored, on a chain state still at genesis. The base's ancestors
    /// become the active chain without block data; the caller has checked the snapshot's
    /// hash against the commitment in the coinbase of the block after the base.
    pub fn load_snapshot(&mut self, snap: &crate::utxo::Snapshot) -> Result<()> {
        if self.tip.0 != 0 {
            return Err(Error::Corrupt(format!(
                "a snapshot loads only on a chain at genesis; this one is at height {}",
                self.tip.0
            )));
        }
        let base = self.entry(&snap.base)?.ok_or_else(|| {
            Error::Invalid(Reject::new(
                RejectCode::BadPrevBlock,
                format!("snapshot base {} has no header here", snap.base),
            ))
        })?;
        if base.height != snap.height {
            return Err(Error::Invalid(Reject::new(
                RejectCode::BadPrevBlock,
                format!(
                    "snapshot says height {} for block {}, whose header is at {}",
                    snap.height, snap.base, base.height
                ),
            )));
        }
        let mut chain = Vec::with_capacity(base.height as usize);
        let mut cur = base.clone();
        while cur.height > 0 {
            chain.push((cur.height, cur.hash));
            cur = self.entry_or_corrupt(&cur.header.prev_blockhash)?;
        }
        let dbtx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut act = dbtx.prepare_cached("INSERT OR REPLACE INTO active_chain (height, hash) VALUES (?1, ?2)")?;
            let mut status = dbtx.prepare_cached("UPDATE block_index SET status = 2 WHERE hash = ?1")?;
            for (h, hash) in &chain {
                act.execute(params![h, hash.to_byte_array()])?;
                status.execute([hash.to_byte_array()])?;
            }
        }
        dbtx.execute("DELETE FROM utxo", [])?;
        insert_coins(&dbtx, snap.coins.iter().map(|(op, c)| (*op, &c.output, c.height, c.coinbase)))?;
        dbtx.execute(
            "UPDATE tip SET hash = ?1, height = ?2 WHERE id = 0",
            params![snap.base.to_byte_array(), snap.height],
        )?;
        dbtx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('snapshot_height', ?1)",
            [snap.height.to_string()],
        )?;
        dbtx.commit()?;
        self.tip = (snap.height, snap.base);
        Ok(())
    }

    /// Active-chain blocks below the fast-sync snapshot whose data is not here yet, the
    /// lowest first, at most `limit`.
    pub fn missing_below_snapshot(&self, limit: usize) -> Result<Vec<(u32, BlockHash)>> {
        let Some(snap) = self.snapshot_height()? else { return Ok(Vec::new()) };
        let mut stmt = self.conn.prepare_cached(
            "SELECT a.height, a.hash FROM active_chain a LEFT JOIN block_data d ON d.hash = a.hash
             WHERE a.height BETWEEN 1 AND ?1 AND d.hash IS NULL ORDER BY a.height LIMIT ?2",
        )?;
        let rows =
            stmt.query_map(params![snap, limit as i64], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, [u8; 32]>(1)?)))?;
        rows.map(|r| r.map(|(h, b)| (h, hash_from(b))).map_err(Error::from)).collect()
    }

    /// Stores the data of a block below the fast-sync snapshot, fetched after the fact: it
    /// must be the active chain's block at its height (its hash, and the header's proof of
    /// work, merkle root and the rest of the context-free checks); its transactions enter
    /// the tx index. Its coins are the snapshot's business, not redone.
    pub fn store_old_block(&mut self, block: &Block) -> Result<()> {
        let txids = validation::check_block_txids(block, self.params)?;
        let hash = block.block_hash();
        let e = self.entry_or_corrupt(&hash)?;
        let below = self.snapshot_height()?.is_some_and(|s| e.height <= s);
        if !below || self.hash_at(e.height)? != Some(hash) {
            return Err(Error::Invalid(Reject::new(
                RejectCode::BadPrevBlock,
                format!("block {hash} is not an active block below the snapshot"),
            )));
        }
        let dbtx = self.conn.transaction()?;
        dbtx.prepare_cached("INSERT OR IGNORE INTO block_data (hash, data) VALUES (?1, ?2)")?
            .execute(params![hash.to_byte_array(), serialize(block)])?;
        {
            let mut txi = dbtx.prepare_cached("INSERT OR IGNORE INTO tx_index (txid, block) VALUES (?1, ?2)")?;
            for txid in &txids {
                txi.execute(params![txid.to_byte_array(), hash.to_byte_array()])?;
            }
        }
        dbtx.commit()?;
        Ok(())
    }

    /// Numbers for `getblockchaininfo`.
    pub fn info(&self) -> Result<ChainInfo> {
        let tip = self.entry_or_corrupt(&self.tip.1)?;
        let (headers, best_header_hash) = self.best_header()?;
        let headers = headers.max(tip.height);
        Ok(ChainInfo {
            chain: self.params.name,
            blocks: tip.height,
            headers,
            best_block_hash: tip.hash,
            best_header_hash,
            difficulty: tip.header.difficulty_float(),
            median_time: self.mtp_of(&tip)?,
            verification_progress: if headers == 0 { 1.0 } else { f64::from(tip.height) / f64::from(headers) },
            chainwork: tip.chainwork,
        })
    }

    fn stored_reject(&self, hash: &BlockHash) -> Result<Reject> {
        let (code, reason): (Option<String>, Option<String>) = self
            .conn
            .prepare_cached("SELECT fail_code, fail_reason FROM block_index WHERE hash = ?1")?
            .query_row([hash.to_byte_array()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let code = code.and_then(|c| c.parse().ok()).unwrap_or(RejectCode::BadPrevBlock);
        Ok(Reject::new(
            code,
            match reason {
                Some(r) if r.starts_with("descends") => format!("block {hash} {r}"),
                Some(r) => r,
                None => format!("block {hash} is known to be invalid"),
            },
        ))
    }

    /// Marks `hash` invalid with `why`, and its descendants invalid as descending from it.
    fn mark_invalid(&mut self, hash: &BlockHash, why: &Reject) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE block_index SET status = 3, fail_code = ?2, fail_reason = ?3 WHERE hash = ?1",
            params![hash.to_byte_array(), why.code.as_str(), why.reason],
        )?;
        tx.execute(
            "WITH RECURSIVE d(hash) AS (
                 SELECT hash FROM block_index WHERE prev = ?1
                 UNION SELECT b.hash FROM block_index b JOIN d ON b.prev = d.hash)
             UPDATE block_index SET status = 3, fail_code = 'bad-prev-block',
                 fail_reason = 'descends from invalid block ' || ?2
             WHERE hash IN d",
            params![hash.to_byte_array(), hash.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Headers-first sync: checks a header's proof of work and context and stores it with
    /// its chainwork. `now` is the caller's clock (unix seconds).
    pub fn accept_header(&mut self, header: &Header, now: u64) -> Result<HeaderStatus> {
        let hash = header.block_hash();
        if let Some(e) = self.entry(&hash)? {
            if e.status == BlockStatus::Invalid {
                return Err(self.stored_reject(&hash)?.into());
            }
            return Ok(HeaderStatus { hash, height: e.height, status: e.status, new: false });
        }
        let (height, chainwork) = self.check_new_header(header, &hash, now)?;
        insert_header(&self.conn, header, &hash, height, chainwork)?;
        Ok(HeaderStatus { hash, height, status: BlockStatus::HeaderOnly, new: true })
    }

    /// The checks of a header not in the index yet: proof of work, a known parent not known
    /// to be invalid, bits and time. Returns its height and chainwork.
    fn check_new_header(&self, header: &Header, hash: &BlockHash, now: u64) -> Result<(u32, Work)> {
        check_header_pow(header, self.params)?;
        let Some(prev) = self.entry(&header.prev_blockhash)? else {
            return Err(Reject::new(
                RejectCode::BadPrevBlock,
                format!("block {hash}: previous block {} is unknown", header.prev_blockhash),
            )
            .into());
        };
        if prev.status == BlockStatus::Invalid {
            return Err(Reject::new(
                RejectCode::BadPrevBlock,
                format!("block {hash} builds on invalid block {}", prev.hash),
            )
            .into());
        }
        let ctx = PrevEntry { hash: prev.hash, height: prev.height, median_time_past: self.mtp_of(&prev)? };
        let expected = self.next_bits_of(&prev)?;
        check_header_context(header, &ctx, self.params, expected, now)?;
        Ok((prev.height + 1, prev.chainwork + header.work()))
    }

    /// Stores a block (accepting its header first) and, when its chain has more work than
    /// the tip, reorganises onto it. `Err(Error::Invalid)` when the block breaks a rule,
    /// found before storing it or while connecting it (the best valid chain then stays or
    /// becomes active).
    pub fn accept_block(&mut self, block: &Block, now: u64) -> Result<Accepted> {
        let hash = block.block_hash();
        let known = self.entry(&hash)?;
        if block.header.prev_blockhash == self.tip.1
            && known.as_ref().is_none_or(|e| e.status == BlockStatus::HeaderOnly)
        {
            return self.accept_tip_block(block, hash, known.is_some(), now);
        }
        let status = self.accept_header(&block.header, now)?;
        let hash = status.hash;
        if status.status >= BlockStatus::HaveData {
            return Ok(Accepted::nothing(hash, status.height, self.tip));
        }
        let txids = match check_block_txids(block, self.params) {
            Ok(txids) => txids,
            Err(r) => {
                if !may_be_mutation(r.code) {
                    self.mark_invalid(&hash, &r)?;
                }
                return Err(r.into());
            }
        };
        let prev = self.entry_or_corrupt(&block.header.prev_blockhash)?;
        if let Err(r) = check_block_context(block, status.height, self.mtp_of(&prev)?) {
            self.mark_invalid(&hash, &r)?;
            return Err(r.into());
        }
        store_block_data(&mut self.conn, &hash, block)?;
        let mut accepted = self.activate(Some(Fresh { hash, block, txids: &txids }))?;
        accepted.hash = hash;
        accepted.height = status.height;
        accepted.new = true;
        if let Some(i) = accepted.invalid.iter().position(|(h, _)| *h == hash) {
            return Err(accepted.invalid.swap_remove(i).1.into());
        }
        if self.entry_or_corrupt(&hash)?.status == BlockStatus::Invalid {
            return Err(self.stored_reject(&hash)?.into());
        }
        Ok(accepted)
    }

    /// [`accept_block`](Self::accept_block) of a block on the tip whose data is new (the
    /// usual case), in the same order of checks, but with its signatures verified while its
    /// header and data are stored and its connect is written: the connect commits only if
    /// they all pass. Nothing else can be activated before it (a block with a new header
    /// has no descendants; one with a known header may: `activate_best_chain` runs after).
    fn accept_tip_block(&mut self, block: &Block, hash: BlockHash, header_known: bool, now: u64) -> Result<Accepted> {
        let tip = self.entry_or_corrupt(&self.tip.1)?;
        if !header_known {
            self.check_new_header(&block.header, &hash, now)?;
        }
        // after the bits are checked: a zero target's work would overflow the sum
        let (height, chainwork) = (tip.height + 1, tip.chainwork + block.header.work());
        // A verdict before the connect: the header is kept (as `accept_header` would have),
        // marked invalid unless the block may be a mutated copy of a good one.
        let refuse = |cs: &mut Self, r: Reject, mark: bool| -> Result<Accepted> {
            if !header_known {
                insert_header(&cs.conn, &block.header, &hash, height, chainwork)?;
            }
            if mark {
                cs.mark_invalid(&hash, &r)?;
            }
            Err(r.into())
        };
        let txids = match check_block_txids(block, self.params) {
            Ok(txids) => txids,
            Err(r) => return refuse(self, r.clone(), !may_be_mutation(r.code)),
        };
        if let Err(r) = check_block_context(block, height, self.mtp_of(&tip)?) {
            return refuse(self, r, true);
        }
        let params = self.params;
        let inputs = block.txdata.iter().skip(1).map(|t| t.input.len()).sum();
        let conn = &mut self.conn;
        let cache = self.sig_cache.as_deref();
        let connected = validation::verify_while(inputs, |queue| {
            let spent = spend_coins(conn, block, &txids, height, params, queue, cache)?;
            if !header_known {
                insert_header(conn, &block.header, &hash, height, chainwork)?;
            }
            store_block_data(conn, &hash, block)?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            let dbtx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            write_connect(&dbtx, block, &txids, &hash, height, &spent)?;
            Ok::<_, Error>(dbtx)
        });
        let verdict = match connected.map(rusqlite::Transaction::commit) {
            Ok(committed) => {
                committed?;
                None
            }
            Err(Error::Invalid(r)) => Some(r),
            Err(e) => return Err(e),
        };
        if let Some(mut r) = verdict {
            // the connect was rolled back (if it had begun)
            self.conn.pragma_update(None, "synchronous", "NORMAL")?;
            r.reason = format!("block {hash}: {}", r.reason);
            tracing::warn!(block = %hash, height, reason = %r, "block failed to connect");
            if self.entry(&hash)?.is_none() {
                insert_header(&self.conn, &block.header, &hash, height, chainwork)?;
            }
            self.mark_invalid(&hash, &r)?;
            return Err(r.into());
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.tip = (height, hash);
        let more = self.activate(None)?;
        let mut connected = vec![hash];
        connected.extend(more.connected);
        Ok(Accepted {
            hash,
            height,
            new: true,
            connected,
            disconnected: more.disconnected,
            invalid: more.invalid,
            tip: self.tip,
        })
    }

    /// The most-work chain whose blocks all have data and none is invalid, if it has more
    /// work than the tip: (fork point on the active chain, blocks from the fork up to it).
    fn find_best_candidate(&self) -> Result<Option<(IndexEntry, Vec<IndexEntry>)>> {
        let tip_work = self.entry_or_corrupt(&self.tip.1)?.chainwork;
        let candidates: Vec<[u8; 32]> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT hash FROM block_index WHERE status IN (1, 2) AND chainwork > ?1 ORDER BY chainwork DESC",
            )?;
            let rows = stmt.query_map([tip_work.to_be_bytes()], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        'candidates: for c in candidates {
            let mut path = Vec::new();
            let mut cur = self.entry_or_corrupt(&hash_from(c))?;
            while !self.on_active_chain(&cur)? {
                if !matches!(cur.status, BlockStatus::HaveData | BlockStatus::Valid) {
                    continue 'candidates;
                }
                let prev = cur.header.prev_blockhash;
                path.push(cur);
                cur = self.entry_or_corrupt(&prev)?;
            }
            path.reverse();
            return Ok(Some((cur, path)));
        }
        Ok(None)
    }

    /// Makes the most-work fully available valid chain active, returning the net changes.
    pub fn activate_best_chain(&mut self) -> Result<Accepted> {
        self.activate(None)
    }

    /// [`activate_best_chain`](Self::activate_best_chain), connecting `fresh` (a block just
    /// stored) from memory if it is on the way.
    fn activate(&mut self, fresh: Option<Fresh<'_>>) -> Result<Accepted> {
        let mut out = Accepted::nothing(self.tip.1, self.tip.0, self.tip);
        while let Some((fork, path)) = self.find_best_candidate()? {
            while self.tip.1 != fork.hash {
                let block = self.disconnect_tip()?;
                let h = block.block_hash();
                if let Some(i) = out.connected.iter().position(|c| *c == h) {
                    out.connected.remove(i);
                } else {
                    out.disconnected.push(block);
                }
            }
            for e in path {
                match self.connect_block(&e, fresh)? {
                    Ok(()) => {
                        if let Some(i) = out.disconnected.iter().position(|b| b.block_hash() == e.hash) {
                            out.disconnected.remove(i);
                        } else {
                            out.connected.push(e.hash);
                        }
                    }
                    Err(r) => {
                        tracing::warn!(block = %e.hash, height = e.height, reason = %r, "block failed to connect");
                        self.mark_invalid(&e.hash, &r)?;
                        out.invalid.push((e.hash, r));
                        break;
                    }
                }
            }
        }
        out.tip = self.tip;
        // a connect refused by a verdict leaves its FULL setting behind
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(out)
    }

    /// Connects the block of `entry` on top of the tip (its parent), in one SQLite
    /// transaction; `fresh` is a block in hand with its txids (used when it is this one).
    /// The inner `Err` is a verdict; nothing is written then.
    fn connect_block(&mut self, entry: &IndexEntry, fresh: Option<Fresh<'_>>) -> Result<Result<(), Reject>> {
        let hash = entry.hash;
        let height = entry.height;
        let read;
        let (block, txids) = match fresh {
            Some(f) if f.hash == hash => (f.block, Cow::Borrowed(f.txids)),
            _ => {
                read = self.block(&hash)?.ok_or_else(|| Error::Corrupt(format!("block {hash} has no data")))?;
                (&read, Cow::Owned(read.txdata.iter().map(Transaction::compute_txid).collect()))
            }
        };
        let params = self.params;
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        let dbtx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inputs = block.txdata.iter().skip(1).map(|t| t.input.len()).sum();
        // The writes happen while the signatures are verified; a verdict rolls them back.
        let cache = self.sig_cache.as_deref();
        let connected = validation::verify_while(inputs, |queue| {
            let spent = spend_coins(&dbtx, block, &txids, height, params, queue, cache)?;
            if queue.failed() {
                return Ok(()); // the verdict is waiting: no use writing
            }
            write_connect(&dbtx, block, &txids, &hash, height, &spent)
        });
        match connected {
            Ok(()) => {}
            Err(Error::Invalid(mut r)) => {
                // dropping `dbtx` rolls back
                r.reason = format!("block {hash}: {}", r.reason);
                return Ok(Err(r));
            }
            Err(e) => return Err(e),
        }
        dbtx.commit()?;
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.tip = (height, hash);
        Ok(Ok(()))
    }

    /// Disconnects the tip in one SQLite transaction, returning its block.
    fn disconnect_tip(&mut self) -> Result<Block> {
        let (height, hash) = self.tip;
        if height == 0 {
            return Err(Error::Corrupt("asked to disconnect the genesis block".into()));
        }
        if self.snapshot_height()?.is_some_and(|s| height <= s) {
            return Err(Error::Invalid(Reject::new(
                RejectCode::BadPrevBlock,
                format!("cannot reorganise below height {height}: this node started from a utxo snapshot there"),
            )));
        }
        let block = self.block(&hash)?.ok_or_else(|| Error::Corrupt(format!("active block {hash} has no data")))?;
        let undo_data: Vec<u8> = self
            .conn
            .prepare_cached("SELECT data FROM undo WHERE hash = ?1")?
            .query_row([hash.to_byte_array()], |r| r.get(0))
            .optional()?
            .ok_or_else(|| Error::Corrupt(format!("active block {hash} has no undo data")))?;
        let undo = decode_undo(&hash, &undo_data)?;
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        let dbtx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut del = dbtx.prepare_cached("DELETE FROM utxo WHERE txid = ?1 AND vout = ?2")?;
            let mut untx = dbtx.prepare_cached("DELETE FROM tx_index WHERE txid = ?1 AND block = ?2")?;
            for tx in &block.txdata {
                let txid = tx.compute_txid();
                for vout in 0..tx.output.len() as u32 {
                    del.execute(params![txid.to_byte_array(), vout])?;
                }
                untx.execute(params![txid.to_byte_array(), hash.to_byte_array()])?;
            }
            insert_coins(&dbtx, undo.iter().map(|(op, c)| (*op, &c.output, c.height, c.coinbase)))?;
            dbtx.prepare_cached("DELETE FROM undo WHERE hash = ?1")?.execute([hash.to_byte_array()])?;
            dbtx.prepare_cached("DELETE FROM active_chain WHERE height = ?1")?.execute([height])?;
            dbtx.prepare_cached("UPDATE tip SET hash = ?1, height = ?2 WHERE id = 0")?
                .execute(params![block.header.prev_blockhash.to_byte_array(), height - 1])?;
        }
        dbtx.commit()?;
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.tip = (height - 1, block.header.prev_blockhash);
        Ok(block)
    }
}

/// A block in hand and its txids, so that connecting it neither reads it back nor hashes
/// its transactions again.
#[derive(Clone, Copy)]
struct Fresh<'b> {
    hash: BlockHash,
    block: &'b Block,
    txids: &'b [Txid],
}

/// What [`spend_coins`] found of a block: the coins it spends from the UTXO set (the undo
/// data, in order), and its outputs still unspent at its end (output, by the coinbase).
struct Spent<'b> {
    undo: Vec<(OutPoint, Coin)>,
    created: HashMap<OutPoint, (&'b TxOut, bool)>,
}

/// The checks of connecting `block` at `height` that need the UTXO set, in block order:
/// every input's coin (from the set or earlier in the block), maturity and amounts, and the
/// coinbase's value; the signature checks are pushed to `queue` as each transaction passes.
/// Reads only.
fn spend_coins<'b>(
    conn: &Connection,
    block: &'b Block,
    txids: &[Txid],
    height: u32,
    params: &Params,
    queue: &mut SigQueue<'_, 'b>,
    cache: Option<&validation::SigCache>,
) -> Result<Spent<'b>> {
    if crate::utxo::required(params, height) {
        // the coinbase commits to the UTXO set this block is connected to
        let have = utxo_hash_of(conn)?;
        match crate::utxo::find(&block.txdata[0]) {
            Some(c) if c == have => {}
            Some(c) => {
                return Err(Reject::new(
                    RejectCode::BadCoinbase,
                    format!("utxo commitment {} is not the utxo set's {}", hex::encode(c), hex::encode(have)),
                )
                .into())
            }
            None => {
                return Err(Reject::new(
                    RejectCode::BadCoinbase,
                    format!(
                        "no utxo commitment in the coinbase at height {height} (every {})",
                        params.utxo_commit_every
                    ),
                )
                .into())
            }
        }
    }
    let outputs = block.txdata.iter().map(|t| t.output.len()).sum();
    let mut created: HashMap<OutPoint, (&TxOut, bool)> = HashMap::with_capacity(outputs);
    let mut spent_in_block: HashSet<OutPoint> = HashSet::new();
    let mut undo = Vec::new();
    let mut fees = Amount::ZERO;
    // A SELECT now and a DELETE later cost less than one DELETE ... RETURNING (measured:
    // RETURNING buffers its rows in an ephemeral table).
    let mut read = conn.prepare_cached(READ_COIN)?;
    for (i, (tx, txid)) in block.txdata.iter().zip(txids).enumerate() {
        if i > 0 {
            let mut spends = TxSpends::new(tx, *txid, height, params)?;
            for (n, txin) in tx.input.iter().enumerate() {
                let op = txin.previous_output;
                if !spent_in_block.insert(op) {
                    return Err(Reject::new(
                        RejectCode::DoubleSpend,
                        format!("tx {txid} input {n} spends {op}, already spent in this block"),
                    )
                    .into());
                }
                if let Some((output, coinbase)) = created.remove(&op) {
                    spends.spend(n, output, height, coinbase)?;
                    continue;
                }
                let coin = read.query_row(params![op.txid.to_byte_array(), op.vout], coin_from_row).optional()?;
                let Some(coin) = coin else {
                    return Err(validation::missing_input(*txid, n, &op, tx_confirmed(conn, &op.txid)?).into());
                };
                spends.spend(n, &coin.output, coin.height, coin.coinbase)?;
                undo.push((op, coin));
            }
            let (fee, checks) = spends.finish()?;
            fees = fees.checked_add(fee).unwrap_or(Amount::MAX_MONEY);
            // verified when it entered the mempool: its coins and amounts are checked
            // above as for any other, its signatures are not checked twice
            if !cache.is_some_and(|c| c.check(&tx.compute_wtxid())) {
                queue.push(checks);
            }
        }
        for (vout, out) in tx.output.iter().enumerate() {
            if out.script_pubkey.is_op_return() {
                continue; // provably unspendable: never enters the UTXO set
            }
            created.insert(OutPoint { txid: *txid, vout: vout as u32 }, (out, i == 0));
        }
    }
    let paid: Amount = block.txdata[0].output.iter().map(|o| o.value).sum();
    let allowed = params.block_subsidy(height) + fees;
    if paid > allowed {
        return Err(Reject::new(
            RejectCode::BadCoinbase,
            format!("coinbase pays {} sat, subsidy and fees are {} sat", paid.to_sat(), allowed.to_sat()),
        )
        .into());
    }
    Ok(Spent { undo, created })
}

/// The writes of connecting `block` (`hash`) at `height` after [`spend_coins`], inside the
/// caller's transaction: spent coins out of the UTXO set, unspent outputs in, the tx index,
/// the undo data, the active chain, the tip and the block's status.
fn write_connect(
    dbtx: &rusqlite::Transaction<'_>,
    block: &Block,
    txids: &[Txid],
    hash: &BlockHash,
    height: u32,
    spent: &Spent<'_>,
) -> Result<()> {
    let mut del = dbtx.prepare_cached("DELETE FROM utxo WHERE txid = ?1 AND vout = ?2")?;
    for (op, _) in &spent.undo {
        del.execute(params![op.txid.to_byte_array(), op.vout])?;
    }
    // In block order, for locality in the B-tree pages of the outputs of one transaction.
    let outputs = block.txdata.iter().zip(txids).enumerate().flat_map(|(i, (tx, txid))| {
        tx.output.iter().enumerate().map(move |(vout, out)| (OutPoint { txid: *txid, vout: vout as u32 }, out, i == 0))
    });
    let unspent = outputs.filter(|(op, _, _)| spent.created.contains_key(op));
    insert_coins(dbtx, unspent.map(|(op, out, coinbase)| (op, out, height, coinbase)))?;
    let mut txi = dbtx.prepare_cached("INSERT OR REPLACE INTO tx_index (txid, block) VALUES (?1, ?2)")?;
    for txid in txids {
        txi.execute(params![txid.to_byte_array(), hash.to_byte_array()])?;
    }
    dbtx.prepare_cached("INSERT OR REPLACE INTO undo (hash, data) VALUES (?1, ?2)")?
        .execute(params![hash.to_byte_array(), encode_undo(&spent.undo)])?;
    dbtx.prepare_cached("INSERT OR REPLACE INTO active_chain (height, hash) VALUES (?1, ?2)")?
        .execute(params![height, hash.to_byte_array()])?;
    dbtx.prepare_cached("UPDATE tip SET hash = ?1, height = ?2 WHERE id = 0")?
        .execute(params![hash.to_byte_array(), height])?;
    dbtx.prepare_cached("UPDATE block_index SET status = 2 WHERE hash = ?1")?.execute([hash.to_byte_array()])?;
    Ok(())
}

/// The commitment hash of the UTXO set as `conn` holds it (`crate::utxo`).
fn utxo_hash_of(conn: &Connection) -> Result<[u8; 32]> {
    let mut h = crate::utxo::Hasher::default();
    let mut stmt =
        conn.prepare_cached("SELECT txid, vout, amount, script, height, coinbase FROM utxo ORDER BY txid, vout")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let op = OutPoint { txid: Txid::from_byte_array(r.get(0)?), vout: r.get(1)? };
        h.add(&op, &coin_from_row_at(r, 2)?);
    }
    Ok(h.finish())
}

fn coin_from_row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Coin> {
    Ok(Coin {
        output: TxOut {
            value: Amount::from_sat(r.get::<_, i64>(at)? as u64),
            script_pubkey: ScriptBuf::from_bytes(r.get(at + 1)?),
        },
        height: r.get(at + 2)?,
        coinbase: r.get(at + 3)?,
    })
}

/// Puts a checked header into the block index (status: header only).
fn insert_header(conn: &Connection, header: &Header, hash: &BlockHash, height: u32, chainwork: Work) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO block_index (hash, prev, height, chainwork, status, time, bits, header)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7)",
    )?
    .execute(params![
        hash.to_byte_array(),
        header.prev_blockhash.to_byte_array(),
        height,
        chainwork.to_be_bytes(),
        header.time,
        header.bits.to_consensus(),
        serialize(header)
    ])?;
    Ok(())
}

/// Stores a block's data (status: have data), in a transaction of its own (not fsynced:
/// the next connect's fsync makes it durable).
fn store_block_data(conn: &mut Connection, hash: &BlockHash, block: &Block) -> Result<()> {
    let tx = conn.transaction()?;
    tx.prepare_cached("INSERT INTO block_data (hash, data) VALUES (?1, ?2)")?
        .execute(params![hash.to_byte_array(), serialize(block)])?;
    tx.prepare_cached("UPDATE block_index SET status = 1 WHERE hash = ?1")?.execute([hash.to_byte_array()])?;
    tx.commit()?;
    Ok(())
}

/// Puts coins into the UTXO set (a block's new outputs, or the spent ones a disconnect
/// brings back), inside the caller's transaction: (outpoint, output, height, coinbase).
fn insert_coins<'a>(
    dbtx: &rusqlite::Transaction<'_>,
    coins: impl IntoIterator<Item = (OutPoint, &'a TxOut, u32, bool)>,
) -> rusqlite::Result<()> {
    let mut ins = dbtx.prepare_cached(
        "INSERT INTO utxo (txid, vout, amount, script, height, coinbase) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (op, out, height, coinbase) in coins {
        ins.execute(params![
            op.txid.to_byte_array(),
            op.vout,
            out.value.to_sat() as i64,
            out.script_pubkey.as_bytes(),
            height,
            coinbase
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::test_util::*;
    use bitcoin::secp256k1::SecretKey;

    fn p() -> &'static Params {
        Params::devnet()
    }

    const NOW: u64 = 1_735_689_600 + 1_000_000;

    struct Node {
        cs: ChainState,
        _dir: tempfile::TempDir,
    }

    fn node() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cs = ChainState::open(dir.path().join("chain.db"), p()).unwrap();
        Node { cs, _dir: dir }
    }

    /// A mined block on `prev` paying the subsidy plus `fees` to key `miner`, carrying `txs`.
    fn build(cs: &ChainState, prev: BlockHash, miner: u8, fees: Amount, txs: Vec<Transaction>) -> Block {
        let e = cs.entry(&prev).unwrap().unwrap();
        let height = e.height + 1;
        let mut all = vec![coinbase(height, p().block_subsidy(height) + fees, p2wpkh(&key(miner).1))];
        all.extend(txs);
        block(prev, e.header.time + 2, cs.next_bits(&prev).unwrap(), all)
    }

    /// Mines `n` empty blocks on the tip (miner key `miner`); returns their hashes.
    fn extend(cs: &mut ChainState, n: usize, miner: u8) -> Vec<BlockHash> {
        (0..n)
            .map(|_| {
                let b = build(cs, cs.tip().1, miner, Amount::ZERO, vec![]);
                cs.accept_block(&b, NOW).unwrap();
                b.block_hash()
            })
            .collect()
    }

    fn cb_out(cs: &ChainState, hash: &BlockHash) -> (OutPoint, TxOut) {
        let b = cs.block(hash).unwrap().unwrap();
        (OutPoint { txid: b.txdata[0].compute_txid(), vout: 0 }, b.txdata[0].output[0].clone())
    }

    fn spend(prev: &[(OutPoint, TxOut)], keys: &[SecretKey], to: ScriptBuf, fee: u64) -> Transaction {
        let total: u64 = prev.iter().map(|(_, o)| o.value.to_sat()).sum();
        let ops: Vec<OutPoint> = prev.iter().map(|(op, _)| *op).collect();
        let mut tx = unsigned(&ops, vec![TxOut { value: Amount::from_sat(total - fee), script_pubkey: to }]);
        let outs: Vec<TxOut> = prev.iter().map(|(_, o)| o.clone()).collect();
        sign(&mut tx, &outs, keys);
        tx
    }

    type UtxoRow = (Vec<u8>, u32, i64, Vec<u8>, u32, bool);

    fn utxo_set(cs: &ChainState) -> Vec<UtxoRow> {
        let mut stmt = cs
            .conn
            .prepare("SELECT txid, vout, amount, script, height, coinbase FROM utxo ORDER BY txid, vout")
            .unwrap();
        let rows =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    fn code(e: Error) -> RejectCode {
        e.reject().unwrap_or_else(|| panic!("not a reject: {e}")).code
    }

    #[test]
    fn genesis_on_first_open_and_blocks_connect_with_their_coinbase() {
        let mut n = node();
        let cs = &mut n.cs;
        assert_eq!(cs.tip(), (0, p().genesis_hash));
        assert_eq!(cs.block(&p().genesis_hash).unwrap().unwrap(), p().genesis);
        let hashes = extend(cs, 3, 1);
        assert_eq!(cs.tip(), (3, hashes[2]));
        assert_eq!(cs.hash_at(2).unwrap(), Some(hashes[1]));
        let (op, out) = cb_out(cs, &hashes[0]);
        let coin = cs.coin(&op).unwrap().unwrap();
        assert_eq!((coin.height, coin.coinbase, coin.output.value), (1, true, Amount::from_int_btc(50)));
        assert_eq!(cs.coins_for(&out.script_pubkey).unwrap().len(), 3);
        assert_eq!(cs.tx_block(&op.txid).unwrap(), Some(hashes[0]));
        assert_eq!(cs.transaction(&op.txid).unwrap().unwrap().1, hashes[0]);
        let info = cs.info().unwrap();
        assert_eq!((info.blocks, info.headers, info.verification_progress), (3, 3, 1.0));
        assert_eq!(cs.chainwork(&hashes[2]).unwrap().unwrap(), cs.entry(&hashes[2]).unwrap().unwrap().chainwork);
        assert!(info.chainwork > cs.chainwork(&p().genesis_hash).unwrap().unwrap());
        // Locator and headers_after.
        let loc = cs.locator().unwrap();
        assert_eq!(loc.first(), Some(&hashes[2]));
        assert_eq!(loc.last(), Some(&p().genesis_hash));
        let hs = cs.headers_after(&[hashes[0]], 10).unwrap();
        assert_eq!(hs.iter().map(|h| h.block_hash()).collect::<Vec<_>>(), hashes[1..].to_vec());
        assert_eq!(cs.headers_after(&[p().genesis_hash], 1).unwrap()[0].block_hash(), hashes[0]);
        // A known block is not new.
        let again = cs.accept_block(&cs.block(&hashes[1]).unwrap().unwrap(), NOW).unwrap();
        assert!(!again.new && again.connected.is_empty());
    }

    #[test]
    fn spends_are_checked_against_the_utxo_set() {
        let mut n = node();
        let cs = &mut n.cs;
        let first = extend(cs, 1, 1)[0];
        let second = extend(cs, 1, 2)[0];
        // Immature: a coinbase of height 1 spent in block 3 (maturity 10).
        let c1 = cb_out(cs, &first);
        let tx = spend(std::slice::from_ref(&c1), &[key(1).0], p2pkh(&key(3).1), 1000);
        let b = build(cs, cs.tip().1, 9, Amount::from_sat(1000), vec![tx.clone()]);
        assert_eq!(code(cs.accept_block(&b, NOW).unwrap_err()), RejectCode::Immature);
        assert_eq!(cs.tip().0, 2);
        extend(cs, 9, 9);
        // Now height 12: a P2WPKH spend to P2PKH is accepted...
        let b12 = build(cs, cs.tip().1, 9, Amount::from_sat(1000), vec![tx.clone()]);
        let acc = cs.accept_block(&b12, NOW).unwrap();
        assert_eq!(acc.connected, vec![b12.block_hash()]);
        assert!(cs.coin(&c1.0).unwrap().is_none());
        let p2pkh_coin = (OutPoint { txid: tx.compute_txid(), vout: 0 }, tx.output[0].clone());
        assert!(cs.coin(&p2pkh_coin.0).unwrap().is_some());
        // ...and the P2PKH output spends onward.
        let tx2 = spend(std::slice::from_ref(&p2pkh_coin), &[key(3).0], p2wpkh(&key(4).1), 500);
        let b13 = build(cs, cs.tip().1, 9, Amount::from_sat(500), vec![tx2]);
        cs.accept_block(&b13, NOW).unwrap();
        // Double spend across blocks.
        let again = spend(std::slice::from_ref(&c1), &[key(1).0], p2wpkh(&key(5).1), 2000);
        let b = build(cs, cs.tip().1, 9, Amount::from_sat(2000), vec![again]);
        let e = cs.accept_block(&b, NOW).unwrap_err();
        assert_eq!(code(e), RejectCode::DoubleSpend);
        // Double spend within a block.
        let c2 = cb_out(cs, &second);
        let a = spend(std::slice::from_ref(&c2), &[key(2).0], p2wpkh(&key(5).1), 1000);
        let bb = spend(std::slice::from_ref(&c2), &[key(2).0], p2wpkh(&key(6).1), 1000);
        let b = build(cs, cs.tip().1, 9, Amount::from_sat(2000), vec![a.clone(), bb]);
        let e = cs.accept_block(&b, NOW).unwrap_err();
        assert_eq!(e.reject().unwrap().code, RejectCode::DoubleSpend);
        assert!(e.to_string().contains("already spent in this block"), "{e}");
        // Bad signature: signed by the right key over other data.
        let mut bad = a.clone();
        bad.output[0].value = Amount::from_sat(1);
        let b = build(cs, cs.tip().1, 9, Amount::ZERO, vec![bad]);
        assert_eq!(code(cs.accept_block(&b, NOW).unwrap_err()), RejectCode::BadSignature);
        // Wrong key.
        let wrong = spend(std::slice::from_ref(&c2), &[key(7).0], p2wpkh(&key(5).1), 1000);
        let b = build(cs, cs.tip().1, 9, Amount::from_sat(1000), vec![wrong]);
        assert_eq!(code(cs.accept_block(&b, NOW).unwrap_err()), RejectCode::BadSignature);
        // Excess coinbase value: fees claimed twice.
        let b = build(cs, cs.tip().1, 9, Amount::from_sat(2001), vec![a.clone()]);
        assert_eq!(code(cs.accept_block(&b, NOW).unwrap_err()), RejectCode::BadCoinbase);
        // The failed blocks left the tip and UTXO set alone; the good spend still goes in.
        assert_eq!(cs.tip(), (13, b13.block_hash()));
        let b = build(cs, cs.tip().1, 9, Amount::from_sat(1000), vec![a]);
        cs.accept_block(&b, NOW).unwrap();
        assert_eq!(cs.tip().0, 14);
    }

    #[test]
    fn bad_headers_and_blocks_are_refused_with_their_code() {
        let mut n = node();
        let cs = &mut n.cs;
        let tip = cs.tip().1;
        // Bad bits: easier than the limit allows, or not what ASERT says.
        let mut b = build(cs, tip, 1, Amount::ZERO, vec![]);
        b.header.bits = CompactTarget::from_consensus(0x1f7fffff);
        mine(&mut b.header);
        assert_eq!(code(cs.accept_header(&b.header, NOW).unwrap_err()), RejectCode::BadBits);
        // Bad PoW.
        let mut b = build(cs, tip, 1, Amount::ZERO, vec![]);
        while b.header.target().is_met_by(b.block_hash()) {
            b.header.nonce += 1;
        }
        assert_eq!(code(cs.accept_block(&b, NOW).unwrap_err()), RejectCode::BadPow);
        // Bad merkle root does not poison the header: the real block is accepted afterwards.
        let good = build(cs, tip, 1, Amount::ZERO, vec![]);
        let mut mutated = good.clone();
        mutated.txdata[0].output[0].value = Amount::from_sat(1);
        assert_eq!(code(cs.accept_block(&mutated, NOW).unwrap_err()), RejectCode::BadMerkleRoot);
        cs.accept_block(&good, NOW).unwrap();
        // Time too far ahead / not after MTP; unknown parent.
        let mut b = build(cs, cs.tip().1, 1, Amount::ZERO, vec![]);
        b.header.time = (NOW + 3 * 3600) as u32;
        b.header.bits = cs.next_bits(&cs.tip().1).unwrap();
        mine(&mut b.header);
        assert_eq!(code(cs.accept_header(&b.header, NOW).unwrap_err()), RejectCode::BadTime);
        let mut orphan = build(cs, cs.tip().1, 1, Amount::ZERO, vec![]);
        orphan.header.prev_blockhash = BlockHash::from_byte_array([9; 32]);
        mine(&mut orphan.header);
        assert_eq!(code(cs.accept_header(&orphan.header, NOW).unwrap_err()), RejectCode::BadPrevBlock);
        // BIP34 height wrong: coinbase of height 5 at height 2 — marked invalid for good.
        let e = cs.entry(&cs.tip().1).unwrap().unwrap();
        let bad = block(
            e.hash,
            e.header.time + 2,
            cs.next_bits(&e.hash).unwrap(),
            vec![coinbase(5, Amount::ONE_BTC, p2wpkh(&key(1).1))],
        );
        assert_eq!(code(cs.accept_block(&bad, NOW).unwrap_err()), RejectCode::BadCoinbase);
        assert_eq!(cs.entry(&bad.block_hash()).unwrap().unwrap().status, BlockStatus::Invalid);
        assert_eq!(code(cs.accept_block(&bad, NOW).unwrap_err()), RejectCode::BadCoinbase);
        let child = build(cs, bad.block_hash(), 1, Amount::ZERO, vec![]);
        assert_eq!(code(cs.accept_block(&child, NOW).unwrap_err()), RejectCode::BadPrevBlock);
    }

    /// Found by the `chain_block` fuzz target: a block on the tip whose bits make a zero
    /// target (work = 2^256 - 1) overflowed the chainwork sum before its bits were checked
    /// (a panic with overflow checks, as in debug builds).
    #[test]
    fn a_tip_block_with_a_zero_target_is_refused_before_its_work_is_counted() {
        let mut n = node();
        let cs = &mut n.cs;
        extend(cs, 1, 1);
        for bits in [0, 0x0100_0000, 0x0080_0000] {
            let mut b = build(cs, cs.tip().1, 1, Amount::ZERO, vec![]);
            b.header.bits = CompactTarget::from_consensus(bits);
            assert_eq!(code(cs.accept_block(&b, NOW).unwrap_err()), RejectCode::BadPow, "bits {bits:#x}");
            assert_eq!(code(cs.accept_header(&b.header, NOW).unwrap_err()), RejectCode::BadPow, "bits {bits:#x}");
        }
    }

    #[test]
    fn wrong_witness_commitment_and_oversized_blocks_are_refused() {
        let mut n = node();
        let cs = &mut n.cs;
        let first = extend(cs, 1, 1)[0];
        extend(cs, 10, 9);
        let c1 = cb_out(cs, &first);
        let tx = spend(&[c1], &[key(1).0], p2wpkh(&key(3).1), 0);
        let mut b = build(cs, cs.tip().1, 9, Amount::ZERO, vec![tx]);
        let last = b.txdata[0].output.len() - 1;
        b.txdata[0].output[last].script_pubkey =
            ScriptBuf::from(vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed].into_iter().chain([0u8; 32]).collect::<Vec<u8>>());
        b.header.merkle_root = b.compute_merkle_root().unwrap();
        mine(&mut b.header);
        assert_eq!(code(cs.accept_block(&b, NOW).unwrap_err()), RejectCode::BadWitnessCommitment);
        let mut big = build(cs, cs.tip().1, 9, Amount::ZERO, vec![]);
        big.txdata[0].output.push(TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::from(vec![0x6a; 1_000_001]) });
        finish(&mut big);
        assert_eq!(code(cs.accept_block(&big, NOW).unwrap_err()), RejectCode::Oversized);
    }

    #[test]
    fn reorg_to_the_heavier_branch_matches_a_fresh_node() {
        let mut a = node();
        let cs = &mut a.cs;
        let common = extend(cs, 11, 1);
        let fork = cs.tip().1;
        let c1 = cb_out(cs, &common[0]);
        // Branch A: 2 blocks, spends c1 to key 3.
        let ta = spend(std::slice::from_ref(&c1), &[key(1).0], p2wpkh(&key(3).1), 1000);
        let a12 = build(cs, fork, 2, Amount::from_sat(1000), vec![ta.clone()]);
        cs.accept_block(&a12, NOW).unwrap();
        let a13 = build(cs, a12.block_hash(), 2, Amount::ZERO, vec![]);
        cs.accept_block(&a13, NOW).unwrap();
        let utxo_a = utxo_set(cs);
        // Branch B: 3 blocks (more work), spends c1 to key 4 instead.
        let tb = spend(std::slice::from_ref(&c1), &[key(1).0], p2wpkh(&key(4).1), 3000);
        // Headers first, then blocks out of order: nothing moves until B has more work.
        let b12 = build(cs, fork, 5, Amount::from_sat(3000), vec![tb.clone()]);
        assert!(cs.accept_header(&b12.header, NOW).unwrap().new);
        let b13 = build(cs, b12.block_hash(), 5, Amount::ZERO, vec![]);
        assert!(cs.accept_header(&b13.header, NOW).unwrap().new);
        let b14 = build(cs, b13.block_hash(), 5, Amount::ZERO, vec![]);
        assert!(cs.accept_header(&b14.header, NOW).unwrap().new);
        assert!(!cs.accept_header(&b14.header, NOW).unwrap().new);
        assert_eq!(cs.best_header().unwrap(), (14, b14.block_hash()));
        assert_eq!(cs.info().unwrap().headers, 14);
        assert!(cs.accept_block(&b14, NOW).unwrap().connected.is_empty());
        assert!(cs.accept_block(&b12, NOW).unwrap().connected.is_empty());
        assert_eq!(cs.tip().1, a13.block_hash());
        let acc = cs.accept_block(&b13, NOW).unwrap();
        assert_eq!(acc.connected, vec![b12.block_hash(), b13.block_hash(), b14.block_hash()]);
        assert_eq!(
            acc.disconnected.iter().map(Block::block_hash).collect::<Vec<_>>(),
            vec![a13.block_hash(), a12.block_hash()]
        );
        assert!(acc.disconnected[1].txdata.contains(&ta), "a mempool gets the tx back");
        assert_eq!(cs.tip(), (14, b14.block_hash()));
        assert!(cs.tx_block(&ta.compute_txid()).unwrap().is_none());
        assert_eq!(cs.tx_block(&tb.compute_txid()).unwrap(), Some(b12.block_hash()));
        assert_ne!(utxo_set(cs), utxo_a);

        // A fresh node fed only the winning branch has the same UTXO set.
        let mut fresh = node();
        for h in &common {
            fresh.cs.accept_block(&cs.block(h).unwrap().unwrap(), NOW).unwrap();
        }
        for b in [&b12, &b13, &b14] {
            fresh.cs.accept_block(b, NOW).unwrap();
        }
        assert_eq!(fresh.cs.tip(), cs.tip());
        assert_eq!(utxo_set(&fresh.cs), utxo_set(cs));

        // Reorg back when A grows heavier again, with an invalid block in the way on B's side.
        let a14 = build(cs, a13.block_hash(), 2, Amount::ZERO, vec![]);
        cs.accept_block(&a14, NOW).unwrap();
        let a15 = build(cs, a14.block_hash(), 2, Amount::ZERO, vec![]);
        let acc = cs.accept_block(&a15, NOW).unwrap();
        assert_eq!(acc.connected.len(), 4);
        assert_eq!(acc.disconnected.len(), 3);
        assert_eq!(utxo_set(cs).len(), utxo_a.len() + 2);
    }

    #[test]
    fn a_bad_signature_among_many_rolls_back_the_writes_made_while_verifying() {
        let mut n = node();
        let cs = &mut n.cs;
        let first = extend(cs, 1, 1)[0];
        extend(cs, 10, 9);
        // Fan the first coinbase out to 80 coins of key 2, then spend each in its own tx:
        // enough signatures for the checks to run on worker threads.
        let (op, out) = cb_out(cs, &first);
        let each = out.value.to_sat() / 80 - 100;
        let mut fan =
            unsigned(&[op], vec![TxOut { value: Amount::from_sat(each), script_pubkey: p2wpkh(&key(2).1) }; 80]);
        sign(&mut fan, std::slice::from_ref(&out), &[key(1).0]);
        let fee = out.value.to_sat() - each * 80;
        let b = build(cs, cs.tip().1, 9, Amount::from_sat(fee), vec![fan.clone()]);
        cs.accept_block(&b, NOW).unwrap();
        let spends: Vec<Transaction> = (0..80u32)
            .map(|vout| {
                let coin = (OutPoint { txid: fan.compute_txid(), vout }, fan.output[vout as usize].clone());
                spend(&[coin], &[key(2).0], p2wpkh(&key(3).1), 10)
            })
            .collect();
        let (tip, utxo) = (cs.tip(), utxo_set(cs));
        let mut bad = spends.clone();
        bad[61].input[0].witness = spends[60].input[0].witness.clone();
        let b = build(cs, cs.tip().1, 9, Amount::from_sat(800), bad);
        let e = cs.accept_block(&b, NOW).unwrap_err();
        assert_eq!(code(e), RejectCode::BadSignature);
        assert_eq!((cs.tip(), utxo_set(cs)), (tip, utxo), "nothing of the refused block stays");
        assert_eq!(cs.entry(&b.block_hash()).unwrap().unwrap().status, BlockStatus::Invalid);
        assert!(cs.tx_block(&spends[0].compute_txid()).unwrap().is_none());
        let b = build(cs, cs.tip().1, 9, Amount::from_sat(800), spends.clone());
        assert_eq!(cs.accept_block(&b, NOW).unwrap().connected, vec![b.block_hash()]);
        assert_eq!(cs.tx_block(&spends[79].compute_txid()).unwrap(), Some(b.block_hash()));
        assert!(cs.coin(&OutPoint { txid: fan.compute_txid(), vout: 5 }).unwrap().is_none());
        assert!(cs.coin(&OutPoint { txid: spends[5].compute_txid(), vout: 0 }).unwrap().is_some());
    }

    #[test]
    fn a_tip_block_whose_child_came_first_connects_both() {
        let mut n = node();
        let cs = &mut n.cs;
        extend(cs, 2, 1);
        let b3 = build(cs, cs.tip().1, 2, Amount::ZERO, vec![]);
        assert!(cs.accept_header(&b3.header, NOW).unwrap().new);
        let b4 = build(cs, b3.block_hash(), 2, Amount::ZERO, vec![]);
        // The child's data first: stored, not connectable without its parent's.
        assert!(cs.accept_block(&b4, NOW).unwrap().connected.is_empty());
        assert_eq!(cs.tip().0, 2);
        let acc = cs.accept_block(&b3, NOW).unwrap();
        assert_eq!(acc.connected, vec![b3.block_hash(), b4.block_hash()]);
        assert_eq!((acc.hash, acc.height, acc.new), (b3.block_hash(), 3, true));
        assert_eq!(cs.tip(), (4, b4.block_hash()));
        assert_eq!(acc.tip, cs.tip());
        // Known by now: nothing new.
        let again = cs.accept_block(&b3, NOW).unwrap();
        assert!(!again.new && again.connected.is_empty());
    }

    #[test]
    fn an_invalid_block_on_the_heavier_branch_leaves_the_best_valid_chain() {
        let mut n = node();
        let cs = &mut n.cs;
        let common = extend(cs, 11, 1);
        let fork = cs.tip().1;
        let a12 = build(cs, fork, 2, Amount::ZERO, vec![]);
        cs.accept_block(&a12, NOW).unwrap();
        let a13 = build(cs, a12.block_hash(), 2, Amount::ZERO, vec![]);
        cs.accept_block(&a13, NOW).unwrap();
        let before = utxo_set(cs);
        // B: b12 fine, b13 spends a coin that does not exist, b14 on top.
        let b12 = build(cs, fork, 5, Amount::ZERO, vec![]);
        let ghost = (OutPoint { txid: Txid::from_byte_array([3; 32]), vout: 0 }, cb_out(cs, &common[0]).1);
        let bad = spend(&[ghost], &[key(1).0], p2wpkh(&key(4).1), 0);
        cs.accept_block(&b12, NOW).unwrap();
        let b13 = build(cs, b12.block_hash(), 5, Amount::ZERO, vec![bad]);
        cs.accept_block(&b13, NOW).unwrap(); // same work as A: stored only
        let b14 = build(cs, b13.block_hash(), 5, Amount::ZERO, vec![]);
        let e = cs.accept_block(&b14, NOW).unwrap_err();
        assert_eq!(code(e), RejectCode::BadPrevBlock, "b14 descends from the invalid b13");
        assert_eq!(cs.entry(&b13.block_hash()).unwrap().unwrap().status, BlockStatus::Invalid);
        assert_eq!(cs.tip(), (13, a13.block_hash()));
        assert_eq!(utxo_set(cs), before);
        assert_eq!(cs.best_header().unwrap().1, a13.block_hash());
    }

    #[test]
    fn reopen_keeps_the_tip_and_coins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("chain.db");
        let (tip, utxo) = {
            let mut cs = ChainState::open(&path, p()).unwrap();
            extend(&mut cs, 4, 1);
            (cs.tip(), utxo_set(&cs))
        };
        let cs = ChainState::open(&path, p()).unwrap();
        assert_eq!(cs.tip(), tip);
        assert_eq!(utxo_set(&cs), utxo);
        drop(cs);
        let e = ChainState::open(&path, Params::mainnet()).unwrap_err();
        assert!(matches!(e, Error::Corrupt(_)), "{e}");
        assert!(e.to_string().contains("devnet"), "{e}");
    }

    /// Block 100 must commit to the UTXO set it is connected to; a fresh chain state with
    /// the headers loads the snapshot that commitment covers and connects block 100 on it.
    #[test]
    fn the_utxo_commitment_is_consensus_and_a_snapshot_loads_on_the_headers() {
        let mut n = node();
        extend(&mut n.cs, 99, 1);
        let base = n.cs.tip().1;
        let (time, bits) = (n.cs.entry(&base).unwrap().unwrap().header.time + 2, n.cs.next_bits(&base).unwrap());
        let with = |commit: Option<[u8; 32]>| {
            let mut cb = coinbase(100, p().block_subsidy(100), p2wpkh(&key(1).1));
            cb.output.extend(commit.map(|c| crate::utxo::commitment_output(&c)));
            block(base, time, bits, vec![cb])
        };
        let missing = with(None);
        let e = n.cs.accept_block(&missing, NOW).unwrap_err();
        assert!(e.to_string().contains("no utxo commitment"), "{e}");
        let wrong = with(Some([7; 32]));
        assert_eq!(code(n.cs.accept_block(&wrong, NOW).unwrap_err()), RejectCode::BadCoinbase);
        let snap = n.cs.snapshot().unwrap();
        assert_eq!((snap.height, snap.base, snap.coins.len()), (99, base, 99));
        let good = with(Some(snap.hash()));
        assert_eq!(n.cs.utxo_hash().unwrap(), snap.hash());
        n.cs.accept_block(&good, NOW).unwrap();
        assert_eq!(n.cs.tip().0, 100);

        // another node: the headers, then the snapshot, then block 100 validated on it
        let mut f = node();
        for h in 1..=100 {
            let hash = n.cs.hash_at(h).unwrap().unwrap();
            f.cs.accept_header(&n.cs.header(&hash).unwrap().unwrap(), NOW).unwrap();
        }
        let mut tampered = snap.clone();
        tampered.coins.pop();
        assert_ne!(tampered.hash(), snap.hash());
        f.cs.load_snapshot(&snap).unwrap();
        assert_eq!(f.cs.tip(), (99, base));
        assert_eq!(f.cs.snapshot_height().unwrap(), Some(99));
        assert_eq!(f.cs.hash_at(50).unwrap(), n.cs.hash_at(50).unwrap());
        assert!(f.cs.block(&n.cs.hash_at(50).unwrap().unwrap()).unwrap().is_none());
        f.cs.accept_block(&good, NOW).unwrap();
        assert_eq!(f.cs.tip(), n.cs.tip());
        assert_eq!(f.cs.utxo_hash().unwrap(), n.cs.utxo_hash().unwrap());
        // a snapshot loads only on a chain at genesis
        assert!(f.cs.load_snapshot(&snap).is_err());
    }
}
