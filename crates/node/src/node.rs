//! The node: the chain state, the mempool, the wallet and the miner of one network, and
//! the flows between them in Bitcoin Core's shape (`AcceptToMemoryPool`, `ProcessNewBlock`
//! with the mempool update after connecting or disconnecting blocks, block assembly).
//!
//! Key design decisions: one `Mutex` guards the chain state and the mempool together
//! ([`State`]), so a transaction is always checked against the pool and chain it enters; the
//! wallet has its own lock, always taken before the state's. Mining never holds a lock
//! while hashing: a template is assembled under the lock, the nonce search runs without it,
//! and the found block goes through [`Node::accept_block`] like any block from a peer. The
//! P2P sync (a later step) drives the node only through its public methods:
//! [`Node::accept_header`], [`Node::accept_block`], [`Node::accept_tx`], [`Node::locator`],
//! [`Node::headers_after`], [`Node::block`] and the [`Event`] stream for relaying.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::{Address, Amount, Block, BlockHash, FeeRate, OutPoint, ScriptBuf, Transaction, Txid, Weight};
use micro_os_chain::chainstate::{self, ChainState, HeaderStatus};
use micro_os_chain::mempool::{Mempool, Refused};
use micro_os_chain::miner::BuildError;
use micro_os_chain::params::Params;
use micro_os_chain::validation::{check_transaction, check_tx_inputs, Coin, CoinView, Reject, RejectCode, SigCache};
use tokio::sync::broadcast;

use crate::checks::Check;
use crate::light::{Light, LightError, Proof, ProofError};
use crate::sealed::{Attested, CheckError, SealStoreError, Seals, Verdict};
use crate::wallet::{Balance, Wallet, WalletCoin, WalletError, DEFAULT_FEE_RATE};
use bitcoin::secp256k1::PublicKey;
use micro_os_chain::seal::{Attestation, Seal};

/// The mempool's cap on the sum of virtual sizes (Core's `-maxmempool` default, 300 MB).
pub const MEMPOOL_MAX_BYTES: u64 = 300_000_000;

/// Weight kept free in a template for the header and the coinbase (Core's 4000).
pub const COINBASE_RESERVE: Weight = Weight::from_wu(4000);

/// The block version the node mines (BIP9's top bits, as Core sets them).
pub const BLOCK_VERSION: i32 = 0x2000_0000;

/// What the node could not do, outside of a transaction being refused ([`TxError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Chain(#[from] micro_os_chain::error::Error),
    #[error(transparent)]
    Wallet(#[from] WalletError),
    #[error(transparent)]
    Tx(#[from] TxError),
    #[error("block template: {0}")]
    Build(#[from] BuildError),
    #[error("data directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Light(#[from] LightError),
    #[error(transparent)]
    Seals(#[from] SealStoreError),
    /// Something only a full node does, asked of a light one.
    #[error("a light node {0}")]
    NotLight(&'static str),
}

impl From<CheckError> for Error {
    fn from(e: CheckError) -> Error {
        match e {
            CheckError::Reject(r) => Error::Chain(r.into()),
            CheckError::Store(e) => e.into(),
            CheckError::Chain(e) => e.into(),
        }
    }
}

impl Error {
    /// The verdict, when a block or header broke a rule.
    pub fn reject(&self) -> Option<&Reject> {
        match self {
            Error::Chain(e) => e.reject(),
            _ => None,
        }
    }
}

/// Why a transaction did not enter the mempool.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// It breaks a consensus rule (a bad signature, an immature or spent input, …).
    #[error("{0}")]
    Invalid(Reject),
    /// The pool's own rules refused it (conflict, duplicate, fee, package limits).
    #[error("{0}")]
    Refused(Refused),
    /// It is already confirmed on the active chain.
    #[error("tx {txid} is already in block {block}")]
    InChain { txid: Txid, block: BlockHash },
    /// Some inputs are unknown: it is held as an orphan until a parent arrives.
    #[error("tx {txid} spends {missing}, which is unknown: held as an orphan until its parent arrives")]
    Orphan { txid: Txid, missing: OutPoint },
    /// The chain state failed while checking it.
    #[error("chain state: {0}")]
    Chain(#[from] micro_os_chain::error::Error),
    /// A light node could not keep it to send.
    #[error(transparent)]
    Light(#[from] LightError),
}

impl TxError {
    /// Core's reject reason string for this refusal (what `sendrawtransaction` and
    /// `testmempoolaccept` report), e.g. `txn-mempool-conflict`.
    pub fn reason(&self) -> &'static str {
        match self {
            TxError::Invalid(r) => match r.code {
                RejectCode::MissingInputs | RejectCode::DoubleSpend => "bad-txns-inputs-missingorspent",
                RejectCode::Immature => "bad-txns-premature-spend-of-coinbase",
                RejectCode::BadAmount => "bad-txns-in-belowout",
                RejectCode::BadSignature => "mandatory-script-verify-flag-failed",
                RejectCode::NonStandard => "bad-txns-nonstandard-inputs",
                RejectCode::Oversized => "bad-txns-oversize",
                RejectCode::BadCoinbase => "coinbase",
                RejectCode::BadTransaction => "non-final",
                other => other.as_str(),
            },
            TxError::Refused(r) => match r {
                Refused::Duplicate { .. } => "txn-already-in-mempool",
                Refused::DuplicateOrphan { .. } => "txn-already-known",
                Refused::Coinbase { .. } => "coinbase",
                Refused::Conflict { .. } => "txn-mempool-conflict",
                Refused::FeeTooLow { .. } => "mempool min fee not met",
                Refused::TooManyAncestors { .. }
                | Refused::AncestorsTooLarge { .. }
                | Refused::TooManyDescendants { .. }
                | Refused::DescendantsTooLarge { .. } => "too-long-mempool-chain",
                Refused::MempoolFull { .. } => "mempool full",
                Refused::OrphanTooLarge { .. } => "tx-size",
            },
            TxError::InChain { .. } => "txn-already-known",
            TxError::Orphan { .. } => "bad-txns-inputs-missingorspent",
            TxError::Chain(_) | TxError::Light(_) => "error",
        }
    }
}

/// What the node tells whoever listens (the P2P layer relays it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The active tip changed.
    Tip { height: u32, hash: BlockHash },
    /// A transaction entered the mempool.
    Tx(Txid),
    /// A validator's attestation of a block was kept (validator-sealed networks).
    Attested { hash: BlockHash, attestation: Attestation },
}

/// The chain state and the mempool, under one lock.
#[derive(Debug)]
pub struct State {
    pub chain: ChainState,
    pub mempool: Mempool,
}

/// A block template: a block on the tip with nonce 0, and what went into it.
#[derive(Debug, Clone)]
pub struct Template {
    pub block: Block,
    pub height: u32,
    /// Fee of each non-coinbase transaction, in block order.
    pub fees: Vec<Amount>,
    /// The earliest time the block may carry (median time past + 1).
    pub min_time: u32,
    /// The tip generation it was built on (see [`Node::tip_generation`]).
    pub tip_generation: u64,
}

/// How the node is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Threads a miner hashes on (`--threads`).
    pub threads: usize,
    /// A light node: headers only, its wallet's transactions proven by merkle proofs.
    pub light: bool,
    /// On a validator-sealed network: the set block 1's sealer must be in (`None`: the
    /// set block 1's own seal names, trusted on first use).
    pub validators: Option<Vec<PublicKey>>,
    /// Fast sync: start from a UTXO snapshot the chain commits to (`--sync-mode fast`).
    pub fast: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { threads: 1, light: false, validators: None, fast: false }
    }
}

/// One node. See the module documentation.
pub struct Node {
    params: &'static Params,
    datadir: PathBuf,
    state: Mutex<State>,
    wallet: Mutex<Wallet>,
    /// `Some` on a light node (locked after the wallet and the state).
    light: Option<Light>,
    /// `Some` on a validator-sealed network (locked after the state).
    seals: Option<Mutex<Seals>>,
    options: Options,
    tip_generation: AtomicU64,
    pool_generation: AtomicU64,
    extra_nonce: AtomicU64,
    /// Hashes per second of the running miner (f64 bits), 0 when idle.
    hash_rate: AtomicU64,
    mining: AtomicBool,
    stopping: AtomicBool,
    fast_given_up: AtomicBool,
    events: broadcast::Sender<Event>,
    started: Instant,
    /// The transaction optimiser (off until the daemon turns it on).
    ai: crate::ai::Optimizer,
    /// Wtxids whose signatures verified at mempool entry, shared with the chain state so
    /// a block does not verify them again.
    sig_cache: std::sync::Arc<SigCache>,
    /// The order of the cheap checks of a transaction, adapted to what fails.
    checks: Mutex<crate::checks::CheckOrder>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("network", &self.params.name).field("datadir", &self.datadir).finish()
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The chain's coins plus the outputs of pool transactions (at the next block's height).
struct PoolView<'a> {
    chain: &'a ChainState,
    pool: &'a Mempool,
    height: u32,
}

impl CoinView for PoolView<'_> {
    fn coin(&self, op: &OutPoint) -> Option<Coin> {
        self.chain
            .coin(op)
            .ok()
            .flatten()
            .or_else(|| self.pool.output(op).map(|output| Coin { output, height: self.height, coinbase: false }))
    }

    fn is_spent(&self, op: &OutPoint) -> bool {
        CoinView::is_spent(self.chain, op)
    }
}

impl Node {
    /// Opens the node's chain state (`chain.sqlite`) and wallet (`wallet.sqlite`) in
    /// `datadir`, creating them on first use.
    pub fn open(datadir: impl AsRef<Path>, params: &'static Params, options: Options) -> Result<Node, Error> {
        let datadir = datadir.as_ref().to_path_buf();
        std::fs::create_dir_all(&datadir).map_err(|source| Error::Io { path: datadir.clone(), source })?;
        let chain = ChainState::open(datadir.join("chain.sqlite"), params)?;
        let wallet = Wallet::open(datadir.join("wallet.sqlite"), params)?;
        let light = options.light.then(|| Light::open(datadir.join("light.sqlite"), &chain)).transpose()?;
        let seals = params
            .is_sealed()
            .then(|| Seals::open(datadir.join("seals.sqlite"), options.validators.clone()).map(Mutex::new))
            .transpose()?;
        let sig_cache = std::sync::Arc::new(SigCache::default());
        let mut chain = chain;
        chain.set_sig_cache(sig_cache.clone());
        Ok(Node {
            light,
            seals,
            params,
            datadir,
            state: Mutex::new(State { chain, mempool: Mempool::new(MEMPOOL_MAX_BYTES) }),
            sig_cache,
            checks: Mutex::new(crate::checks::CheckOrder::default()),
            wallet: Mutex::new(wallet),
            options,
            tip_generation: AtomicU64::new(0),
            pool_generation: AtomicU64::new(0),
            extra_nonce: AtomicU64::new(0),
            hash_rate: AtomicU64::new(0f64.to_bits()),
            mining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            fast_given_up: AtomicBool::new(false),
            events: broadcast::channel(1024).0,
            started: Instant::now(),
            ai: crate::ai::Optimizer::default(),
        })
    }

    pub fn params(&self) -> &'static Params {
        self.params
    }

    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Seconds since the node opened.
    pub fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The chain state and mempool, locked. Keep the guard short: miners and RPC wait on it.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wallet(&self) -> MutexGuard<'_, Wallet> {
        self.wallet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events (tip changes, new mempool transactions) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The active tip: (height, hash); a light node's best header.
    pub fn tip(&self) -> (u32, BlockHash) {
        match &self.light {
            Some(l) => l.tip(),
            None => self.state().chain.tip(),
        }
    }

    /// Whether this node still waits for a UTXO snapshot (fast sync, nothing connected yet).
    pub fn wants_snapshot(&self) -> bool {
        self.options.fast
            && !self.fast_given_up.load(Ordering::SeqCst)
            && self.state().chain.tip().0 == 0
            && !self.is_sealed()
            && !self.is_light()
    }

    /// Fast sync cannot be had (no commitment yet, or no peer gave a good snapshot): sync
    /// in full from now on.
    pub fn give_up_fast(&self) {
        self.fast_given_up.store(true, Ordering::SeqCst);
    }

    /// A block locator of the best header chain (fast sync's header phase, before anything
    /// is connected).
    pub fn header_locator(&self) -> Result<Vec<BlockHash>, Error> {
        let st = self.state();
        let (height, best) = st.chain.best_header()?;
        let mut hashes = Vec::with_capacity(height as usize + 1);
        let mut cur = st.chain.entry(&best)?;
        while let Some(e) = cur {
            hashes.push(e.hash);
            if e.height == 0 {
                break;
            }
            cur = st.chain.entry(&e.header.prev_blockhash)?;
        }
        // hashes[i] is at height - i: the last ten, then exponentially sparser, genesis last
        let mut out = Vec::new();
        let (mut i, mut step) = (0usize, 1usize);
        while i + 1 < hashes.len() {
            out.push(hashes[i]);
            if out.len() >= 10 {
                step *= 2;
            }
            i += step;
        }
        out.push(self.params.genesis_hash);
        Ok(out)
    }

    /// The best header: (height, hash).
    pub fn best_header(&self) -> Result<(u32, BlockHash), Error> {
        Ok(self.state().chain.best_header()?)
    }

    /// The hash at `height` on the best header chain.
    pub fn header_hash_at(&self, height: u32) -> Result<Option<BlockHash>, Error> {
        let st = self.state();
        let (top, best) = st.chain.best_header()?;
        if height > top {
            return Ok(None);
        }
        let mut cur = st.chain.entry(&best)?;
        while let Some(e) = cur {
            if e.height == height {
                return Ok(Some(e.hash));
            }
            cur = st.chain.entry(&e.header.prev_blockhash)?;
        }
        Ok(None)
    }

    /// Blocks below the fast-sync snapshot not fetched yet (at most `limit`, lowest first).
    pub fn missing_below_snapshot(&self, limit: usize) -> Result<Vec<(u32, BlockHash)>, Error> {
        Ok(self.state().chain.missing_below_snapshot(limit)?)
    }

    /// Stores a block below the fast-sync snapshot, fetched in the background.
    pub fn store_old_block(&self, block: &Block) -> Result<(), Error> {
        Ok(self.state().chain.store_old_block(block)?)
    }

    /// Loads a checked UTXO snapshot (fast sync).
    pub fn load_snapshot(&self, snap: &micro_os_chain::utxo::Snapshot) -> Result<(), Error> {
        let mut st = self.state();
        st.chain.load_snapshot(snap)?;
        self.tip_generation.fetch_add(1, Ordering::SeqCst);
        let _ = self.events.send(Event::Tip { height: snap.height, hash: snap.base });
        Ok(())
    }

    /// The light part of a light node.
    pub fn light(&self) -> Option<&Light> {
        self.light.as_ref()
    }

    pub fn is_light(&self) -> bool {
        self.light.is_some()
    }

    /// The hash at `height` on the active chain (a light node's best header chain).
    pub fn hash_at(&self, height: u32) -> Result<Option<BlockHash>, Error> {
        match &self.light {
            Some(l) => Ok(l.hash_at(height)),
            None => Ok(self.state().chain.hash_at(height)?),
        }
    }

    /// Bumped whenever the active tip changes: a miner restarts when it moves.
    pub fn tip_generation(&self) -> u64 {
        self.tip_generation.load(Ordering::SeqCst)
    }

    /// Bumped whenever a transaction enters the mempool.
    pub fn pool_generation(&self) -> u64 {
        self.pool_generation.load(Ordering::SeqCst)
    }

    /// The miner's hash rate (hashes per second), 0 when not mining.
    pub fn hash_rate(&self) -> f64 {
        f64::from_bits(self.hash_rate.load(Ordering::Relaxed))
    }

    pub(crate) fn set_hash_rate(&self, rate: f64) {
        self.hash_rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Whether a continuous miner runs.
    pub fn is_mining(&self) -> bool {
        self.mining.load(Ordering::SeqCst)
    }

    pub(crate) fn set_mining(&self, on: bool) {
        self.mining.store(on, Ordering::SeqCst);
    }

    /// Asks miners and loops to stop.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    // -----------------------------------------------------------------------------------------
    // Read access for the sync.
    // -----------------------------------------------------------------------------------------

    /// The active chain's block locator.
    pub fn locator(&self) -> Result<Vec<BlockHash>, Error> {
        match &self.light {
            Some(l) => Ok(l.locator()),
            None => Ok(self.state().chain.locator()?),
        }
    }

    /// Up to `max` active-chain headers after the locator's fork point.
    pub fn headers_after(&self, locator: &[BlockHash], max: usize) -> Result<Vec<Header>, Error> {
        let st = self.state();
        match &self.light {
            Some(l) => Ok(l.headers_after(&st.chain, locator, max)?),
            None => Ok(st.chain.headers_after(locator, max)?),
        }
    }

    /// A stored block (a light node has none).
    pub fn block(&self, hash: &BlockHash) -> Result<Option<Block>, Error> {
        if self.is_light() {
            return Ok(None);
        }
        Ok(self.state().chain.block(hash)?)
    }

    // -----------------------------------------------------------------------------------------
    // Headers and blocks.
    // -----------------------------------------------------------------------------------------

    /// Headers-first sync: stores a header that passes its checks.
    pub fn accept_header(&self, header: &Header) -> Result<HeaderStatus, Error> {
        if self.is_light() && self.is_sealed() {
            let hash = header.block_hash();
            return Err(Error::Chain(
                Reject::new(RejectCode::BadSeal, format!("header {hash} comes without its seal (a sealed network)"))
                    .into(),
            ));
        }
        self.store_header(header)
    }

    fn store_header(&self, header: &Header) -> Result<HeaderStatus, Error> {
        let mut st = self.state();
        let status = st.chain.accept_header(header, now())?;
        if let (Some(l), true) = (&self.light, status.new) {
            if let Some((height, hash)) = l.follow(&st.chain)? {
                self.tip_generation.fetch_add(1, Ordering::SeqCst);
                let _ = self.events.send(Event::Tip { height, hash });
            }
        }
        Ok(status)
    }

    /// Whether blocks of this node's network are sealed by validators.
    pub fn is_sealed(&self) -> bool {
        self.seals.is_some()
    }

    fn seals(&self) -> Option<MutexGuard<'_, Seals>> {
        self.seals.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The seal of block `hash`, on a validator-sealed network.
    pub fn seal(&self, hash: &BlockHash) -> Result<Option<Seal>, Error> {
        match self.seals() {
            Some(s) => Ok(s.get(hash)?),
            None => Ok(None),
        }
    }

    /// The validator set after the tip, on a validator-sealed network.
    pub fn validator_set(&self) -> Result<Option<Vec<PublicKey>>, Error> {
        let tip = self.tip();
        match self.seals() {
            Some(s) => Ok(s.set_at(tip)?),
            None => Ok(None),
        }
    }

    /// A light node on a validator-sealed network takes a header with its seal: it must
    /// extend the best header (a sealed height is final) and be sealed by a validator of
    /// the set the previous seal named.
    pub fn accept_sealed_header(&self, header: &Header, seal: &Seal) -> Result<HeaderStatus, Error> {
        let (Some(l), Some(_)) = (&self.light, &self.seals) else { return self.accept_header(header) };
        let hash = header.block_hash();
        let tip = l.tip();
        if header.prev_blockhash != tip.1 {
            if let Some(height) = l.height_of(&hash) {
                let status = self.state().chain.entry(&hash)?.map_or(chainstate::BlockStatus::HeaderOnly, |e| e.status);
                return Ok(HeaderStatus { hash, height, status, new: false });
            }
            let reject = match l.height_of(&header.prev_blockhash) {
                Some(h) => Reject::new(
                    RejectCode::HeightSealed,
                    format!("header {hash} at height {}: that height is already sealed and final", h + 1),
                ),
                None => Reject::new(
                    RejectCode::BadPrevBlock,
                    format!("header {hash}: previous block {} is unknown", header.prev_blockhash),
                ),
            };
            return Err(Error::Chain(reject.into()));
        }
        {
            let seals = self.seals().expect("sealed");
            let set = seals.set_at(tip)?;
            seal.verify(self.params, &hash, set.as_deref()).map_err(|r| Error::Chain(r.into()))?;
            seals.store(&hash, seal)?;
        }
        let status = self.store_header(header)?;
        self.attest_waiting(&hash);
        Ok(status)
    }

    /// A block of a validator-sealed network with its seal: it must extend the tip (a
    /// sealed height is final) and be sealed by a validator of the set; then it is stored
    /// like any block. A block the node already holds is accepted again as a no-op.
    pub fn accept_sealed(&self, block: &Block, seal: &Seal) -> Result<chainstate::Accepted, Error> {
        if self.is_light() {
            let s = self.accept_sealed_header(&block.header, seal)?;
            return Ok(self.header_taken(s));
        }
        let st = self.state();
        let Some(seals) = self.seals() else {
            return self.connect(st, block);
        };
        let hash = block.block_hash();
        match seals.check(&st.chain, block, seal) {
            Ok(Verdict::Known) => {
                let e = st.chain.entry(&hash)?.expect("a known block has an entry");
                let tip = st.chain.tip();
                return Ok(chainstate::Accepted {
                    hash,
                    height: e.height,
                    new: false,
                    connected: Vec::new(),
                    disconnected: Vec::new(),
                    invalid: Vec::new(),
                    tip,
                });
            }
            Ok(Verdict::Extends) => seals.store(&hash, seal)?,
            Err(e) => return Err(e.into()),
        }
        drop(seals);
        let accepted = self.connect(st, block)?;
        self.attest_waiting(&hash);
        Ok(accepted)
    }

    /// Takes the attestations that waited for block `hash`.
    fn attest_waiting(&self, hash: &BlockHash) {
        let waiting = self.seals().map(|mut s| s.take_pending(hash)).unwrap_or_default();
        for att in waiting {
            if let Err(e) = self.attest(hash, att) {
                tracing::debug!("attestation of block {hash} by {}: {e}", att.validator);
            }
        }
    }

    /// The height of block `hash` on the active chain (a light node's best header chain).
    fn active_height(&self, hash: &BlockHash) -> Result<Option<u32>, Error> {
        if let Some(l) = &self.light {
            return Ok(l.height_of(hash));
        }
        let st = self.state();
        Ok(match st.chain.entry(hash)? {
            Some(e) if st.chain.hash_at(e.height)? == Some(*hash) => Some(e.height),
            _ => None,
        })
    }

    /// Takes a validator's attestation of block `hash` (validator-sealed networks): it
    /// must be by a validator of the set the block's seal names. One that is new is told
    /// to the relay; one for a block not here yet waits for it.
    pub fn attest(&self, hash: &BlockHash, attestation: Attestation) -> Result<Attested, Error> {
        if !self.is_sealed() {
            let why =
                format!("attestation of block {hash}: the {} network is not sealed by validators", self.params.name);
            return Err(Error::Chain(Reject::new(RejectCode::BadSeal, why).into()));
        }
        let height = self.active_height(hash)?;
        let done = self.seals().expect("sealed").attest(self.params, hash, height, attestation)?;
        if let Attested::Taken { new: true, .. } = done {
            let _ = self.events.send(Event::Attested { hash: *hash, attestation });
        }
        Ok(done)
    }

    /// The attestations kept for block `hash`.
    pub fn attestations(&self, hash: &BlockHash) -> Result<Vec<Attestation>, Error> {
        match self.seals() {
            Some(s) => Ok(s.attestations(hash)?),
            None => Ok(Vec::new()),
        }
    }

    /// The highest block attested by a majority of its validators (validator-sealed
    /// networks).
    pub fn finalized(&self) -> Result<Option<u32>, Error> {
        match self.seals() {
            Some(s) => Ok(Some(s.finalized()?)),
            None => Ok(None),
        }
    }

    /// Stores a block and activates the best chain, then brings the mempool up to date:
    /// transactions of connected blocks (and their conflicts) leave it, transactions of
    /// disconnected blocks come back (oldest block first), and it is trimmed to its cap.
    /// On a validator-sealed network a block needs its seal ([`Node::accept_sealed`]).
    pub fn accept_block(&self, block: &Block) -> Result<chainstate::Accepted, Error> {
        if self.is_light() {
            // a light node takes the header of a block it is given
            let s = self.accept_header(&block.header)?;
            return Ok(self.header_taken(s));
        }
        if self.is_sealed() {
            let hash = block.block_hash();
            return Err(Error::Chain(
                Reject::new(
                    RejectCode::BadSeal,
                    format!(
                        "block {hash} comes without a seal: blocks of the {} network are sealed by validators",
                        self.params.name
                    ),
                )
                .into(),
            ));
        }
        self.connect(self.state(), block)
    }

    /// What a light node's taking a block's header did, told as a block's acceptance.
    fn header_taken(&self, s: HeaderStatus) -> chainstate::Accepted {
        let tip = self.tip();
        let connected = if s.new && tip.1 == s.hash { vec![s.hash] } else { Vec::new() };
        chainstate::Accepted {
            hash: s.hash,
            height: s.height,
            new: s.new,
            connected,
            disconnected: Vec::new(),
            invalid: Vec::new(),
            tip,
        }
    }

    fn connect(&self, mut st: MutexGuard<'_, State>, block: &Block) -> Result<chainstate::Accepted, Error> {
        let accepted = st.chain.accept_block(block, now())?;
        // the state the next commitment covers: kept for fast-syncing peers
        let k = self.params.utxo_commit_every;
        let snapshot = (k > 0 && !accepted.connected.is_empty() && (accepted.tip.0 + 1) % k == 0)
            .then(|| st.chain.snapshot())
            .transpose()?;
        let State { chain, mempool } = &mut *st;
        for hash in &accepted.connected {
            if *hash == accepted.hash {
                mempool.remove_for_block(block);
            } else if let Some(b) = chain.block(hash)? {
                mempool.remove_for_block(&b);
            }
        }
        if !accepted.disconnected.is_empty() {
            let spend_height = chain.tip().0 + 1;
            for b in accepted.disconnected.iter().rev() {
                for tx in b.txdata.iter().skip(1) {
                    readd(chain, mempool, tx, spend_height);
                }
            }
            mempool.trim_to_size();
        }
        if !accepted.connected.is_empty() || !accepted.disconnected.is_empty() {
            self.tip_generation.fetch_add(1, Ordering::SeqCst);
            let (height, hash) = accepted.tip;
            let _ = self.events.send(Event::Tip { height, hash });
        }
        drop(st);
        if let Some(snap) = snapshot {
            if let Err(e) = crate::fast::keep_snapshot(&self.datadir, &snap) {
                tracing::warn!("utxo snapshot at height {}: {e}", snap.height);
            }
        }
        Ok(accepted)
    }

    // -----------------------------------------------------------------------------------------
    // Transactions.
    // -----------------------------------------------------------------------------------------

    /// Core's `AcceptToMemoryPool`: checks `tx` against the chain and the pool and admits it
    /// with its fee; a transaction with unknown inputs is held as an orphan
    /// ([`TxError::Orphan`]). Orphans spending the admitted transaction are retried.
    pub fn accept_tx(&self, tx: Transaction) -> Result<Txid, TxError> {
        if let Some(l) = &self.light {
            // `sendrawtransaction` on a light node: kept and sent to full nodes, unchecked
            // against a UTXO set it does not have
            check_transaction(&tx).map_err(TxError::Invalid)?;
            l.add_pending(&tx)?;
            let txid = tx.compute_txid();
            let _ = self.events.send(Event::Tx(txid));
            return Ok(txid);
        }
        let mut st = self.state();
        self.accept_tx_locked(&mut st, tx)
    }

    /// The transaction optimiser.
    pub fn ai(&self) -> &crate::ai::Optimizer {
        &self.ai
    }

    /// The cheap checks' order and counts.
    pub fn check_order(&self) -> serde_json::Value {
        self.checks.lock().unwrap_or_else(|e| e.into_inner()).report()
    }

    /// The signature cache: (hits, misses, entries) so far.
    pub fn sig_cache_stats(&self) -> (u64, u64, usize) {
        self.sig_cache.stats()
    }

    /// What the transaction optimiser knows of `tx` before validating it: its fee rate
    /// (0 when an input is unknown: an orphan), size, shape, how often its sender was seen
    /// (counted here) and the age in blocks of the youngest coin it spends.
    pub fn tx_features(&self, tx: &Transaction) -> micro_os_ai::TxFeatures {
        let st = self.state();
        self.tx_features_locked(&st, tx)
    }

    fn tx_features_locked(&self, st: &State, tx: &Transaction) -> micro_os_ai::TxFeatures {
        let vsize = tx.vsize() as f64;
        let (fee_rate, coin_age) = {
            let height = st.chain.tip().0 + 1;
            let view = PoolView { chain: &st.chain, pool: &st.mempool, height };
            let coins: Option<Vec<Coin>> = tx.input.iter().map(|i| view.coin(&i.previous_output)).collect();
            match coins {
                Some(coins) if !tx.is_coinbase() => {
                    let input: u64 = coins.iter().map(|c| c.output.value.to_sat()).sum();
                    let output: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
                    let youngest = coins.iter().map(|c| c.height).max().unwrap_or(height);
                    (input.saturating_sub(output) as f64 / vsize.max(1.0), f64::from(height - youngest.min(height)))
                }
                _ => (0.0, 0.0),
            }
        };
        micro_os_ai::TxFeatures {
            fee_rate,
            vsize,
            inputs: tx.input.len() as f64,
            outputs: tx.output.len() as f64,
            sender_history: f64::from(self.ai.sender_history(tx)),
            coin_age,
        }
    }

    /// A transaction to relay: from the mempool, or a light node's pending one.
    pub fn relay_tx(&self, txid: &Txid) -> Option<Transaction> {
        match &self.light {
            Some(l) => l.pending().ok()?.into_iter().find(|t| t.compute_txid() == *txid),
            None => self.state().mempool.get(txid).map(|e| e.tx.clone()),
        }
    }

    fn accept_tx_locked(&self, st: &mut State, tx: Transaction) -> Result<Txid, TxError> {
        let txid = self.accept_one(st, tx)?;
        let mut queue = VecDeque::from([txid]);
        while let Some(parent) = queue.pop_front() {
            for orphan in st.mempool.take_orphans_spending(&parent) {
                match self.accept_one(st, orphan) {
                    Ok(t) => queue.push_back(t),
                    Err(TxError::Orphan { .. }) => {}
                    Err(e) => tracing::debug!(error = %e, "orphan refused after its parent {parent} arrived"),
                }
            }
        }
        Ok(txid)
    }

    fn accept_one(&self, st: &mut State, tx: Transaction) -> Result<Txid, TxError> {
        let State { chain, mempool } = st;
        let txid = tx.compute_txid();
        if mempool.contains(&txid) {
            return Err(TxError::Refused(Refused::Duplicate { txid }));
        }
        // the cheap checks, most likely to fail per unit of cost first (checks.rs)
        let order = self.checks.lock().unwrap_or_else(|e| e.into_inner()).order();
        let mut ran = Vec::with_capacity(order.len());
        let mut verdict = Ok(());
        for check in order {
            let started = Instant::now();
            let r: Result<(), TxError> = match check {
                Check::Context => {
                    check_transaction(&tx).map_err(TxError::Invalid).and_then(|()| match tx.is_coinbase() {
                        true => Err(TxError::Refused(Refused::Coinbase { txid })),
                        false => Ok(()),
                    })
                }
                Check::InChain => match chain.tx_block(&txid) {
                    Ok(Some(block)) => Err(TxError::InChain { txid, block }),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e.into()),
                },
                Check::Conflict => match tx
                    .input
                    .iter()
                    .find_map(|i| mempool.spender(&i.previous_output).map(|s| (i.previous_output, s)))
                {
                    Some((outpoint, spent_by)) => Err(TxError::Refused(Refused::Conflict { txid, outpoint, spent_by })),
                    None => Ok(()),
                },
                Check::Final => {
                    let (height, hash) = chain.tip();
                    chain
                        .median_time_past(&hash)
                        .map_err(TxError::from)
                        .and_then(|mtp| check_final(&tx, height + 1, mtp).map_err(TxError::Invalid))
                }
            };
            ran.push((check, started.elapsed().as_nanos() as u64, r.is_err()));
            if r.is_err() {
                verdict = r;
                break;
            }
        }
        self.checks.lock().unwrap_or_else(|e| e.into_inner()).record(&ran);
        verdict?;
        let tip_height = chain.tip().0;
        let view = PoolView { chain, pool: mempool, height: tip_height + 1 };
        let fee = match check_tx_inputs(&tx, &view, tip_height + 1, self.params) {
            Ok(fee) => {
                self.sig_cache.insert(tx.compute_wtxid());
                fee
            }
            Err(r) if r.code == RejectCode::MissingInputs => {
                let missing =
                    tx.input.iter().map(|i| i.previous_output).find(|op| view.coin(op).is_none()).unwrap_or_default();
                if let Err(e) = mempool.add_orphan(tx, now()) {
                    tracing::debug!(error = %e, "orphan not held");
                }
                return Err(TxError::Orphan { txid, missing });
            }
            Err(r) => return Err(TxError::Invalid(r)),
        };
        mempool.insert(tx, fee, now()).map_err(TxError::Refused)?;
        self.pool_generation.fetch_add(1, Ordering::SeqCst);
        let _ = self.events.send(Event::Tx(txid));
        Ok(txid)
    }

    // -----------------------------------------------------------------------------------------
    // Block assembly.
    // -----------------------------------------------------------------------------------------

    /// A block on the tip paying subsidy and fees to `payout`: transactions by ancestor fee
    /// rate from the mempool, time = max(now, median time past + 1), the difficulty's bits.
    pub fn block_template(&self, payout: ScriptBuf) -> Result<Template, Error> {
        if self.is_light() {
            return Err(Error::NotLight("does not mine (run a full node to mine)"));
        }
        let extra = self.extra_nonce.fetch_add(1, Ordering::Relaxed);
        let st = self.state();
        let tip_generation = self.tip_generation();
        let (tip_height, prev) = st.chain.tip();
        let height = tip_height + 1;
        let min_time = st.chain.median_time_past(&prev)? + 1;
        let time = (now().min(u64::from(u32::MAX)) as u32).max(min_time);
        let bits = st.chain.next_bits(&prev)?;
        let txs = st.mempool.select(self.params.max_block_weight, COINBASE_RESERVE);
        let fees: Vec<Amount> =
            txs.iter().map(|t| st.mempool.get(&t.compute_txid()).map_or(Amount::ZERO, |e| e.fee)).collect();
        let value = self.params.block_subsidy(height) + fees.iter().copied().sum::<Amount>();
        // every K blocks the coinbase commits to the UTXO set it is connected to
        let commitment = match micro_os_chain::utxo::required(self.params, height) {
            true => vec![micro_os_chain::utxo::commitment_output(&st.chain.utxo_hash()?)],
            false => Vec::new(),
        };
        let block = micro_os_chain::miner::build_block_with(
            prev,
            height,
            time,
            bits,
            BlockVersion::from_consensus(BLOCK_VERSION),
            txs,
            value,
            payout,
            &extra.to_le_bytes(),
            commitment,
        )?;
        Ok(Template { block, height, fees, min_time, tip_generation })
    }

    // -----------------------------------------------------------------------------------------
    // Wallet.
    // -----------------------------------------------------------------------------------------

    /// A new wallet address.
    pub fn new_address(&self) -> Result<Address, Error> {
        Ok(self.wallet().new_address()?)
    }

    /// The wallet's first address (created when there is none): the default payout.
    pub fn default_address(&self) -> Result<Address, Error> {
        Ok(self.wallet().default_address()?)
    }

    /// The wallet's balances.
    pub fn balance(&self) -> Result<Balance, Error> {
        let w = self.wallet();
        if let Some(l) = &self.light {
            return Ok(Balance::of(&l.coins(&w)?));
        }
        let st = self.state();
        Ok(w.balance(&st.chain, &st.mempool)?)
    }

    /// The wallet's coins with their addresses.
    pub fn list_unspent(&self) -> Result<Vec<(WalletCoin, Option<Address>)>, Error> {
        let w = self.wallet();
        let coins = match &self.light {
            Some(l) => l.coins(&w)?,
            None => {
                let st = self.state();
                w.coins(&st.chain, &st.mempool)?
            }
        };
        Ok(coins
            .into_iter()
            .map(|c| {
                let a = w.address_for(&c.output.script_pubkey);
                (c, a)
            })
            .collect())
    }

    /// Pays `amount` to `to` from the wallet at `fee_rate` (default 2 sat/vB) and admits the
    /// transaction to the mempool.
    pub fn send_to_address(&self, to: &Address, amount: Amount, fee_rate: Option<FeeRate>) -> Result<Txid, Error> {
        let mut w = self.wallet();
        if let Some(l) = &self.light {
            let coins = l.coins(&w)?;
            let tx = w.create_send_from(coins, to.script_pubkey(), amount, fee_rate.unwrap_or(DEFAULT_FEE_RATE))?;
            drop(w);
            return Ok(self.accept_tx(tx)?);
        }
        let mut st = self.state();
        let State { chain, mempool } = &*st;
        let tx = w.create_send(chain, mempool, to.script_pubkey(), amount, fee_rate.unwrap_or(DEFAULT_FEE_RATE))?;
        let started = Instant::now();
        let features = self.tx_features_locked(&st, &tx);
        let result = self.accept_tx_locked(&mut st, tx.clone());
        drop(st);
        let outcome = result.as_ref().map_or_else(|e| e.reason(), |_| "accepted");
        self.ai.observed(&tx, features, "wallet", started.elapsed().as_secs_f64() * 1000.0, outcome);
        Ok(result?)
    }
}

/// The last height a `GetProofs` answer covers, and the block there.
pub type Scanned = (u32, BlockHash);

impl Node {
    // -----------------------------------------------------------------------------------------
    // Light nodes: merkle proofs of wallet transactions.
    // -----------------------------------------------------------------------------------------

    /// A light node's filter for `GetProofs`: its wallet's scripts and unspent outpoints.
    pub fn light_filter(&self) -> Result<(Vec<ScriptBuf>, Vec<OutPoint>), Error> {
        let l = self.light.as_ref().ok_or(Error::NotLight("filter asked of a full node"))?;
        let w = self.wallet();
        Ok(l.filter(&w)?)
    }

    /// A light node takes proofs for heights `from..=to` (see [`Light::accept_proofs`]).
    pub fn accept_proofs(&self, from: u32, to: u32, end: BlockHash, proofs: Vec<Proof>) -> Result<usize, ProofError> {
        let Some(l) = &self.light else { return Ok(0) };
        let w = self.wallet();
        l.accept_proofs(&w, from, to, end, proofs)
    }

    /// A full node answers `GetProofs`: the blocks of heights `from..=to` on its active chain
    /// (at most [`crate::light::MAX_PROOF_RANGE`], not past its tip) that hold a
    /// transaction paying `scripts` or spending `outpoints`, proven; and the last height
    /// scanned with its hash (`None` when `from` is past its tip).
    pub fn proofs(
        &self,
        from: u32,
        to: u32,
        scripts: Vec<ScriptBuf>,
        outpoints: Vec<OutPoint>,
    ) -> Result<(Option<Scanned>, Vec<Proof>), Error> {
        if self.is_light() {
            return Err(Error::NotLight("keeps no blocks to prove transactions with"));
        }
        let to = to.min(from.saturating_add(crate::light::MAX_PROOF_RANGE - 1)).min(self.tip().0);
        let scripts: std::collections::HashSet<ScriptBuf> = scripts.into_iter().collect();
        let mut outpoints: std::collections::HashSet<OutPoint> = outpoints.into_iter().collect();
        let mut out = Vec::new();
        let mut end = None;
        for height in from.max(1)..=to {
            let block = {
                let st = self.state();
                let Some(hash) = st.chain.hash_at(height)? else { break };
                end = Some((height, hash));
                st.chain.block(&hash)?
            };
            let Some(block) = block else { break };
            out.extend(crate::light::prove(&block, height, &scripts, &mut outpoints));
        }
        Ok((end, out))
    }
}

/// Core's `IsFinalTx` for a transaction entering the next block at `height` whose parent
/// has median time past `mtp`.
fn check_final(tx: &Transaction, height: u32, mtp: u32) -> Result<(), Reject> {
    let lock = tx.lock_time.to_consensus_u32();
    let bound = if tx.lock_time.is_block_height() { height } else { mtp };
    if lock != 0 && lock >= bound && tx.is_lock_time_enabled() {
        return Err(Reject::new(
            RejectCode::BadTransaction,
            format!("tx {} is not final (lock time {lock})", tx.compute_txid()),
        ));
    }
    Ok(())
}

/// Re-admits a transaction of a disconnected block after a reorganisation; when it no
/// longer fits the chain, pool transactions spending its outputs go too.
fn readd(chain: &ChainState, mempool: &mut Mempool, tx: &Transaction, spend_height: u32) {
    let txid = tx.compute_txid();
    if matches!(chain.tx_block(&txid), Ok(Some(_))) {
        return;
    }
    let view = PoolView { chain, pool: mempool, height: spend_height };
    let result = check_tx_inputs(tx, &view, spend_height, chain.params())
        .map_err(|r| r.to_string())
        .and_then(|fee| mempool.readd(tx.clone(), fee, now()).map_err(|e| e.to_string()));
    if let Err(why) = result {
        tracing::debug!(%txid, %why, "transaction of a disconnected block not re-added");
        for vout in 0..tx.output.len() as u32 {
            if let Some(child) = mempool.spender(&OutPoint { txid, vout }) {
                mempool.remove_recursive(&child);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wallet::unsigned;
    use micro_os_chain::miner::{self, build_block};

    /// A devnet node in a temp dir.
    pub fn node() -> (tempfile::TempDir, Node) {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(dir.path(), Params::devnet(), Options::default()).unwrap();
        (dir, node)
    }

    /// Mines a template to `payout` and submits it.
    pub fn mine_to(node: &Node, payout: &ScriptBuf) -> Block {
        let mut t = node.block_template(payout.clone()).unwrap();
        let target = t.block.header.target();
        let m = miner::mine(&t.block.header, target, 1, &AtomicBool::new(false), |_| {});
        t.block.header = m.header.unwrap();
        node.accept_block(&t.block).unwrap();
        t.block
    }

    /// A funded wallet: `n` blocks to a wallet address.
    fn funded(n: u32) -> (tempfile::TempDir, Node, Address) {
        let (dir, node) = node();
        let a = node.new_address().unwrap();
        for _ in 0..n {
            mine_to(&node, &a.script_pubkey());
        }
        (dir, node, a)
    }

    #[test]
    fn wallet_send_enters_the_mempool_and_a_block_takes_it_out() {
        let (_d, node, _a) = funded(12);
        // Two coinbases (heights 1, 2) are mature at the next height 13 with maturity 10.
        let b = node.balance().unwrap();
        assert_eq!(b.confirmed, Amount::from_int_btc(100) + Amount::from_int_btc(50));
        assert_eq!(b.immature, Amount::from_int_btc(50) * 9);
        let to = node.new_address().unwrap();
        let txid = node.send_to_address(&to, Amount::from_int_btc(70), None).unwrap();
        let entry = node.state().mempool.get(&txid).cloned().unwrap();
        // 2 sat/vB, estimated from the largest witness: at least 2 sat per vB, at most a few more.
        assert!(entry.fee.to_sat() >= 2 * entry.vsize && entry.fee.to_sat() <= 2 * entry.vsize + 4, "{entry:?}");
        assert_eq!(entry.tx.input.len(), 2);
        // Balance: what was sent to ourselves and the change stay ours, less the fee.
        let after = node.balance().unwrap();
        assert_eq!(after.trusted(), b.confirmed - entry.fee);
        let block = mine_to(&node, &ScriptBuf::new_op_return([1u8; 4]));
        assert!(block.txdata.iter().any(|t| t.compute_txid() == txid));
        assert!(node.state().mempool.is_empty());
        assert!(node.state().chain.tx_block(&txid).unwrap().is_some());
        // The coinbase took the fee.
        assert_eq!(block.txdata[0].output[0].value, node.params.block_subsidy(13) + entry.fee);
        // Too much is refused with the amounts.
        let e = node.send_to_address(&to, Amount::from_int_btc(10_000), None).unwrap_err().to_string();
        assert!(e.starts_with("insufficient funds"), "{e}");
    }

    #[test]
    fn a_block_does_not_verify_again_what_the_mempool_verified() {
        let (_d, node, _a) = funded(12);
        let (hits, misses, entries) = node.sig_cache_stats();
        assert_eq!((hits, misses, entries), (0, 0, 0), "blocks of coinbases only check nothing");
        let to = node.new_address().unwrap();
        let txid = node.send_to_address(&to, Amount::from_int_btc(1), None).unwrap();
        assert_eq!(node.sig_cache_stats().2, 1, "verified at mempool entry");
        let block = mine_to(&node, &ScriptBuf::new_op_return([1u8; 4]));
        assert!(block.txdata.iter().any(|t| t.compute_txid() == txid));
        assert_eq!(node.sig_cache_stats(), (1, 0, 1), "the block's transaction was a hit");
        // a node that never saw it in its mempool verifies it in the block
        let (_d2, other) = super::tests::node();
        for h in 1..node.tip().0 {
            let hash = node.hash_at(h).unwrap().unwrap();
            other.accept_block(&node.block(&hash).unwrap().unwrap()).unwrap();
        }
        other.accept_block(&block).unwrap();
        assert_eq!(other.sig_cache_stats(), (0, 1, 0));
    }

    #[test]
    fn double_spend_is_refused_with_a_reason_and_orphans_wait_for_their_parent() {
        let (_d, node, a) = funded(12);
        let to = node.new_address().unwrap();
        let txid = node.send_to_address(&to, Amount::from_int_btc(20), None).unwrap();
        let tx = node.state().mempool.get(&txid).unwrap().tx.clone();
        // Same inputs, other outputs: a conflict.
        let mut other = tx.clone();
        other.output[0].value = Amount::from_int_btc(19);
        let e = node.accept_tx(other).unwrap_err();
        assert_eq!(e.reason(), "txn-mempool-conflict");
        assert!(e.to_string().contains(&format!("already spent by mempool tx {txid}")), "{e}");
        // The same tx again.
        assert_eq!(node.accept_tx(tx.clone()).unwrap_err().reason(), "txn-already-in-mempool");

        // A child spending the tx's output 0, built by hand; submitted before its parent on
        // a second node, it is held as an orphan and admitted once the parent arrives.
        let child = {
            let w = node.wallet();
            let st = node.state();
            let coin = w
                .coins(&st.chain, &st.mempool)
                .unwrap()
                .into_iter()
                .find(|c| c.outpoint == OutPoint { txid, vout: 0 })
                .unwrap();
            let mut child = unsigned(
                &[&coin],
                vec![bitcoin::TxOut {
                    value: coin.output.value - Amount::from_sat(1000),
                    script_pubkey: a.script_pubkey(),
                }],
            );
            w.sign(&mut child, &[&coin]);
            child
        };
        let dir2 = tempfile::tempdir().unwrap();
        let node2 = Node::open(dir2.path(), Params::devnet(), Options::default()).unwrap();
        for h in 1..=12 {
            let hash = node.state().chain.hash_at(h).unwrap().unwrap();
            node2.accept_block(&node.block(&hash).unwrap().unwrap()).unwrap();
        }
        let e = node2.accept_tx(child.clone()).unwrap_err();
        assert!(matches!(e, TxError::Orphan { missing, .. } if missing == OutPoint { txid, vout: 0 }), "{e}");
        assert_eq!(node2.state().mempool.orphan_count(), 1);
        node2.accept_tx(tx.clone()).unwrap();
        assert!(node2.state().mempool.contains(&child.compute_txid()));
        assert_eq!(node2.state().mempool.orphan_count(), 0);

        // Once mined, a spend of the same coin is a chain double spend.
        mine_to(&node, &a.script_pubkey());
        let mut again = tx.clone();
        again.output[0].value = Amount::from_int_btc(18);
        let e = node.accept_tx(again).unwrap_err();
        assert_eq!(e.reason(), "bad-txns-inputs-missingorspent");
        assert!(matches!(&e, TxError::Invalid(r) if r.code == RejectCode::DoubleSpend), "{e}");
        let e = node.accept_tx(tx).unwrap_err();
        assert!(matches!(e, TxError::InChain { .. }), "{e}");
    }

    #[test]
    fn immature_coinbase_is_not_spent() {
        let (_d, node, a) = funded(3);
        let b = node.balance().unwrap();
        assert_eq!(b.confirmed, Amount::ZERO);
        assert_eq!(b.immature, Amount::from_int_btc(150));
        let e = node.send_to_address(&a, Amount::from_int_btc(1), None).unwrap_err().to_string();
        assert!(e.contains("insufficient funds"), "{e}");
    }

    #[test]
    fn reorg_puts_transactions_of_disconnected_blocks_back() {
        let (_d, node, a) = funded(12);
        let fork_point = node.tip().1;
        let txid = node.send_to_address(&a, Amount::from_int_btc(5), None).unwrap();
        let mined = mine_to(&node, &a.script_pubkey());
        assert!(node.state().mempool.is_empty());

        // A competing branch of two empty blocks from the fork point wins.
        let mtp = node.state().chain.median_time_past(&fork_point).unwrap();
        let mut prev = fork_point;
        for h in 13..=14u32 {
            let bits = node.state().chain.next_bits(&prev).unwrap();
            let mut b = build_block(
                prev,
                h,
                mined.header.time.max(mtp + 1) + h,
                bits,
                BlockVersion::from_consensus(BLOCK_VERSION),
                vec![],
                node.params.block_subsidy(h),
                ScriptBuf::new_op_return([2u8; 4]),
                &[9],
            )
            .unwrap();
            let m = miner::mine(&b.header, b.header.target(), 1, &AtomicBool::new(false), |_| {});
            b.header = m.header.unwrap();
            let acc = node.accept_block(&b).unwrap();
            prev = b.block_hash();
            if h == 14 {
                assert_eq!(acc.disconnected.len(), 1);
            }
        }
        assert_eq!(node.tip(), (14, prev));
        assert!(node.state().mempool.contains(&txid), "the tx is back in the mempool");
    }
}
