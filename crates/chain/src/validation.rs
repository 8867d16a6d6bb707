//! Validation as functions from (state, block or transaction) to a verdict with a reason.
//!
//! Nothing here touches the network, the disk or a clock: the chain state is reached through
//! [`CoinView`], and the time is passed in, so every rule is unit-testable.
//!
//! Key design decisions:
//! - There is no script interpreter. An input may spend P2WPKH (BIP143 sighash) or P2PKH
//!   (legacy sighash) outputs only, each checked by shape, pubkey hash and one ECDSA
//!   signature; anything else is refused as `non-standard` with the script type named.
//!   Signatures must be strict DER with a standard sighash type and low S (libsecp256k1's
//!   verifier refuses high S, so low S is a consensus rule here), P2WPKH keys compressed.
//! - A transaction's inputs are checked in two parts: what needs the UTXO set (coins exist,
//!   maturity, amounts, the spent script's type), on the caller's thread in block order, and
//!   the rest as [`TxSigChecks`] — unlocking data shape, key hash, key and signature parsing,
//!   the sighash (one `SighashCache` per job, so BIP143 midstates are shared) and the ECDSA
//!   verification with one shared verification-only context. [`verify_while`] runs those on
//!   the machine's other cores while the caller goes on (the chain state looks up and writes
//!   coins meanwhile), so only the first part is serial.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, LazyLock, Mutex};

use bitcoin::block::Header;
use bitcoin::hashes::{hash160, Hash};
use bitcoin::script::Instruction;
use bitcoin::secp256k1::{self, Message, Secp256k1, VerifyOnly};
use bitcoin::sighash::SighashCache;
use bitcoin::{Amount, Block, BlockHash, CompactTarget, OutPoint, Script, Transaction, TxOut, Txid, Weight, Wtxid};

use crate::params::Params;
use crate::pow::target_from_bits;

/// Seconds a header's time may be ahead of the validating node's clock.
pub const MAX_FUTURE_BLOCK_TIME: u64 = 2 * 60 * 60;

/// Blocks whose times make the median time past.
pub const MEDIAN_TIME_SPAN: usize = 11;

/// One verification-only context for the whole process.
static SECP: LazyLock<Secp256k1<VerifyOnly>> = LazyLock::new(Secp256k1::verification_only);

/// The kind of rule a block, header or transaction broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// Hash above the target, or bits that are not a valid target under the pow limit.
    BadPow,
    /// Bits other than the difficulty algorithm's.
    BadBits,
    /// Header merkle root differs from the transactions'.
    BadMerkleRoot,
    /// Missing or wrong BIP141 witness commitment.
    BadWitnessCommitment,
    /// Block weight or transaction size above the limit.
    Oversized,
    /// Missing, misplaced or wrong coinbase (including excess value and BIP34 height).
    BadCoinbase,
    /// A malformed transaction (no inputs or outputs, null prevout, not final).
    BadTransaction,
    /// A signature, key or unlocking data that does not satisfy the spent output.
    BadSignature,
    /// An input whose coin does not exist.
    MissingInputs,
    /// An input whose coin was already spent (earlier in the block or chain, or twice in a tx).
    DoubleSpend,
    /// A coinbase output spent before maturity.
    Immature,
    /// Output values out of range, or outputs worth more than inputs.
    BadAmount,
    /// Header time not after the median time past, or too far in the future.
    BadTime,
    /// Unknown or invalid previous block.
    BadPrevBlock,
    /// A block or message of another network.
    WrongNetwork,
    /// Duplicate transactions in a block, or outputs that already exist (BIP30).
    Duplicate,
    /// Spends a script type this chain does not verify.
    NonStandard,
    /// A block of a validator-sealed network without a valid seal of a validator.
    BadSeal,
    /// A block of a validator-sealed network at a height already sealed: sealed blocks are final.
    HeightSealed,
}

const CODES: [(RejectCode, &str); 19] = [
    (RejectCode::BadPow, "bad-pow"),
    (RejectCode::BadBits, "bad-bits"),
    (RejectCode::BadMerkleRoot, "bad-merkle-root"),
    (RejectCode::BadWitnessCommitment, "bad-witness-commitment"),
    (RejectCode::Oversized, "oversized"),
    (RejectCode::BadCoinbase, "bad-coinbase"),
    (RejectCode::BadTransaction, "bad-transaction"),
    (RejectCode::BadSignature, "bad-signature"),
    (RejectCode::MissingInputs, "missing-inputs"),
    (RejectCode::DoubleSpend, "double-spend"),
    (RejectCode::Immature, "immature"),
    (RejectCode::BadAmount, "bad-amount"),
    (RejectCode::BadTime, "bad-time"),
    (RejectCode::BadPrevBlock, "bad-prev-block"),
    (RejectCode::WrongNetwork, "wrong-network"),
    (RejectCode::Duplicate, "duplicate"),
    (RejectCode::NonStandard, "non-standard"),
    (RejectCode::BadSeal, "bad-seal"),
    (RejectCode::HeightSealed, "height-already-sealed"),
];

impl RejectCode {
    /// The code's stable lowercase name, e.g. `bad-pow`.
    pub fn as_str(self) -> &'static str {
        CODES.iter().find(|(c, _)| *c == self).map(|(_, s)| *s).expect("every code is listed")
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RejectCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CODES.iter().find(|(_, n)| *n == s).map(|(c, _)| *c).ok_or_else(|| format!("unknown reject code {s:?}"))
    }
}

/// A verdict against a block, header or transaction: which rule, and what broke it (the
/// reason names the block hash, txid and input index involved).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Reject {
    /// The rule.
    pub code: RejectCode,
    /// One lowercase line naming what broke it.
    pub reason: String,
}

impl Reject {
    /// A verdict.
    pub fn new(code: RejectCode, reason: impl Into<String>) -> Self {
        Reject { code, reason: reason.into() }
    }
}

fn reject<T>(code: RejectCode, reason: impl Into<String>) -> Result<T, Reject> {
    Err(Reject::new(code, reason))
}

/// An unspent output as the chain state keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coin {
    /// The output.
    pub output: TxOut,
    /// Height of the block that created it.
    pub height: u32,
    /// Whether a coinbase created it.
    pub coinbase: bool,
}

/// Read access to unspent outputs.
pub trait CoinView {
    /// The unspent coin at `outpoint`, if any.
    fn coin(&self, outpoint: &OutPoint) -> Option<Coin>;

    /// Whether a missing coin is known to have existed and been spent (turns
    /// `missing-inputs` into `double-spend`); views that cannot tell say no.
    fn is_spent(&self, _outpoint: &OutPoint) -> bool {
        false
    }
}

impl CoinView for HashMap<OutPoint, Coin> {
    fn coin(&self, outpoint: &OutPoint) -> Option<Coin> {
        self.get(outpoint).cloned()
    }
}

impl<T: CoinView + ?Sized> CoinView for &T {
    fn coin(&self, outpoint: &OutPoint) -> Option<Coin> {
        (**self).coin(outpoint)
    }
    fn is_spent(&self, outpoint: &OutPoint) -> bool {
        (**self).is_spent(outpoint)
    }
}

/// One parsed ECDSA check: `sig` over `msg` by `pk`, for input `input` of `txid`.
#[derive(Debug, Clone, Copy)]
pub struct SigCheck {
    /// The sighash.
    pub msg: Message,
    /// The signature (low S).
    pub sig: secp256k1::ecdsa::Signature,
    /// The key whose hash the spent output commits to.
    pub pk: secp256k1::PublicKey,
    /// The spending transaction.
    pub txid: Txid,
    /// The input index.
    pub input: u32,
}

impl SigCheck {
    fn verify(&self) -> Result<(), Reject> {
        SECP.verify_ecdsa(&self.msg, &self.sig, &self.pk).map_err(|_| {
            Reject::new(
                RejectCode::BadSignature,
                format!("tx {} input {}: signature does not verify", self.txid, self.input),
            )
        })
    }
}

/// The kinds of output this chain can spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpendKind {
    P2wpkh,
    P2pkh,
}

/// What a signature check needs of a spent coin: its kind, value and committed key hash
/// (the script is rebuilt from them: both kinds are one fixed template around the hash).
#[derive(Debug, Clone, Copy)]
struct Prevout {
    kind: SpendKind,
    value: Amount,
    key_hash: [u8; 20],
}

/// The deferred signature checks of (some of) one transaction's inputs: everything about
/// them that does not need the UTXO set — the unlocking data's shape, the key hash, key and
/// signature parsing, the sighash and the ECDSA verification. [`tx_input_checks`] makes them
/// after the checks that do; [`verify_while`] runs them on worker threads.
#[derive(Debug, Clone)]
pub struct TxSigChecks<'a> {
    tx: &'a Transaction,
    txid: Txid,
    /// Index of the input `prevouts[0]` belongs to.
    first: usize,
    prevouts: Vec<Prevout>,
}

impl TxSigChecks<'_> {
    /// The transaction.
    pub fn txid(&self) -> Txid {
        self.txid
    }

    /// How many signatures these checks verify.
    pub fn len(&self) -> usize {
        self.prevouts.len()
    }

    /// Whether there is nothing to verify.
    pub fn is_empty(&self) -> bool {
        self.prevouts.is_empty()
    }

    /// Parses the inputs' unlocking data and computes their sighashes: the (message,
    /// signature, key) triples that [`verify`](Self::verify) checks.
    pub fn parse(&self) -> Result<Vec<SigCheck>, Reject> {
        let mut cache = SighashCache::new(self.tx);
        (0..self.prevouts.len()).map(|k| self.sig_check(&mut cache, k)).collect()
    }

    /// Runs every check; the first failure in input order is returned.
    pub fn verify(&self) -> Result<(), Reject> {
        let mut cache = SighashCache::new(self.tx);
        (0..self.prevouts.len()).try_for_each(|k| self.sig_check(&mut cache, k)?.verify())
    }

    /// Splits into checks of at most `n` inputs each (each recomputes the BIP143 midstates
    /// on its own: `n` should be large enough that this does not matter).
    fn split(self, n: usize) -> impl Iterator<Item = Self> {
        let TxSigChecks { tx, txid, first, prevouts } = self;
        let chunks: Vec<Vec<Prevout>> = prevouts.chunks(n.max(1)).map(<[Prevout]>::to_vec).collect();
        chunks.into_iter().scan(first, move |at, prevouts| {
            let part = TxSigChecks { tx, txid, first: *at, prevouts };
            *at += part.prevouts.len();
            Some(part)
        })
    }

    /// Checks the unlocking data of input `first + k` and returns its signature check.
    fn sig_check(&self, cache: &mut SighashCache<&Transaction>, k: usize) -> Result<SigCheck, Reject> {
        let (tx, txid, i, spent) = (self.tx, self.txid, self.first + k, self.prevouts[k]);
        let txin = &tx.input[i];
        let bad = |what: &str| Reject::new(RejectCode::BadSignature, format!("tx {txid} input {i}: {what}"));
        let (sig_bytes, pk_bytes): (&[u8], &[u8]) = match spent.kind {
            SpendKind::P2wpkh => {
                if !txin.script_sig.is_empty() {
                    return Err(bad("p2wpkh spend with a non-empty script_sig"));
                }
                if txin.witness.len() != 2 {
                    return Err(bad(&format!("p2wpkh witness has {} items, not 2", txin.witness.len())));
                }
                let pk = &txin.witness[1];
                if pk.len() != 33 {
                    return Err(bad("p2wpkh key is not compressed"));
                }
                (&txin.witness[0], pk)
            }
            SpendKind::P2pkh => {
                if !txin.witness.is_empty() {
                    return Err(bad("p2pkh spend with a witness"));
                }
                let mut pushes = txin.script_sig.instructions_minimal();
                let (Some(Ok(Instruction::PushBytes(sig))), Some(Ok(Instruction::PushBytes(pk))), None) =
                    (pushes.next(), pushes.next(), pushes.next())
                else {
                    return Err(bad("p2pkh script_sig is not two minimal pushes <sig> <pubkey>"));
                };
                (sig.as_bytes(), pk.as_bytes())
            }
        };
        if *hash160::Hash::hash(pk_bytes).as_byte_array() != spent.key_hash {
            return Err(bad("pubkey does not match the spent output's key hash"));
        }
        let pk = secp256k1::PublicKey::from_slice(pk_bytes).map_err(|_| bad("pubkey is not a valid point"))?;
        let sig = bitcoin::ecdsa::Signature::from_slice(sig_bytes).map_err(|e| bad(&format!("signature: {e}")))?;
        let digest = match spent.kind {
            SpendKind::P2wpkh => {
                let mut spk = [0u8; 22];
                spk[..2].copy_from_slice(&[0x00, 0x14]);
                spk[2..].copy_from_slice(&spent.key_hash);
                cache
                    .p2wpkh_signature_hash(i, Script::from_bytes(&spk), spent.value, sig.sighash_type)
                    .map_err(|e| bad(&format!("sighash: {e}")))?
                    .to_byte_array()
            }
            SpendKind::P2pkh => {
                let mut spk = [0u8; 25];
                spk[..3].copy_from_slice(&[0x76, 0xa9, 0x14]);
                spk[3..23].copy_from_slice(&spent.key_hash);
                spk[23..].copy_from_slice(&[0x88, 0xac]);
                cache
                    .legacy_signature_hash(i, Script::from_bytes(&spk), sig.sighash_type.to_u32())
                    .map_err(|e| bad(&format!("sighash: {e}")))?
                    .to_byte_array()
            }
        };
        Ok(SigCheck { msg: Message::from_digest(digest), sig: sig.signature, pk, txid, input: i as u32 })
    }
}

/// Signature checks below this many inputs are run on the calling thread.
const PARALLEL_MIN_JOBS: usize = 64;

/// Inputs per queued job at most (a larger transaction is split).
const JOB_INPUTS: usize = 32;

/// Inputs handed to the workers at a time: few enough to start them early, enough that a
/// waiting worker is not woken for every transaction.
const BATCH_INPUTS: usize = 16;

/// Signature checks with their positions (in the order they were pushed).
type Batch<'a> = Vec<(usize, TxSigChecks<'a>)>;

/// The signature cache (Bitcoin Core's script execution cache): the wtxids of transactions
/// whose every signature verified against the coins they spend, when they entered the
/// mempool, so that a block carrying them connects without verifying them again. Keyed by
/// wtxid, so a transaction whose witness was changed is verified anew; the coins an
/// outpoint names never change, so neither do the sighashes. Bounded: the oldest entries go
/// first.
#[derive(Debug, Default)]
pub struct SigCache {
    inner: Mutex<SigCacheInner>,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct SigCacheInner {
    set: HashSet<Wtxid>,
    order: std::collections::VecDeque<Wtxid>,
}

impl SigCache {
    /// Entries kept (about 3 MB of wtxids and order).
    pub const CAPACITY: usize = 50_000;

    /// Records that every signature of `wtxid` verified.
    pub fn insert(&self, wtxid: Wtxid) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.set.insert(wtxid) {
            g.order.push_back(wtxid);
            if g.order.len() > Self::CAPACITY {
                if let Some(old) = g.order.pop_front() {
                    g.set.remove(&old);
                }
            }
        }
    }

    /// Whether `wtxid` verified before; counts a hit or a miss.
    pub fn check(&self, wtxid: &Wtxid) -> bool {
        let hit = self.inner.lock().unwrap_or_else(|e| e.into_inner()).set.contains(wtxid);
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// (hits, misses, entries) so far.
    pub fn stats(&self) -> (u64, u64, usize) {
        let n = self.inner.lock().unwrap_or_else(|e| e.into_inner()).set.len();
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed), n)
    }
}

/// Where [`verify_while`]'s producer hands its signature checks.
pub struct SigQueue<'q, 'a> {
    /// To the worker threads; `None` when the checks run on the calling thread.
    send: Option<mpsc::Sender<Batch<'a>>>,
    /// Checks not handed out yet: the batch being filled, or all of them without workers.
    local: Batch<'a>,
    /// Inputs in `local`.
    local_inputs: usize,
    /// Jobs pushed so far (the position of the next one).
    pushed: usize,
    verdict: &'q Verdict,
}

impl<'a> SigQueue<'_, 'a> {
    /// Queues `checks` (handed to the workers, if there are any, in batches).
    pub fn push(&mut self, checks: TxSigChecks<'a>) {
        if self.send.is_none() {
            self.local.push((self.pushed, checks));
            self.pushed += 1;
            return;
        }
        if checks.len() <= JOB_INPUTS {
            return self.hand_out(checks);
        }
        for part in checks.split(JOB_INPUTS) {
            self.hand_out(part);
        }
    }

    /// Adds a job to the batch, handing the batch out once it is full.
    fn hand_out(&mut self, checks: TxSigChecks<'a>) {
        self.local_inputs += checks.len();
        self.local.push((self.pushed, checks));
        self.pushed += 1;
        if self.local_inputs >= BATCH_INPUTS {
            self.flush();
        }
    }

    /// Hands the checks not handed out yet to the workers.
    fn flush(&mut self) {
        if let Some(send) = &self.send {
            if !self.local.is_empty() {
                // The receiver lives until the producer has returned.
                send.send(std::mem::take(&mut self.local)).expect("the job queue outlives the producer");
                self.local_inputs = 0;
            }
        }
    }

    /// Whether a check already failed (the producer may stop early).
    pub fn failed(&self) -> bool {
        self.verdict.stop.load(Ordering::Relaxed)
    }
}

/// The first failure (by job position) of a [`verify_while`] run.
#[derive(Default)]
struct Verdict {
    stop: AtomicBool,
    first: Mutex<Option<(usize, Reject)>>,
}

impl Verdict {
    fn fail(&self, at: usize, r: Reject) {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.as_ref().is_none_or(|(n, _)| at < *n) {
            *first = Some((at, r));
        }
    }

    fn into_result(self) -> Result<(), Reject> {
        match self.first.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some((_, r)) => Err(r),
            None => Ok(()),
        }
    }

    /// Verifies queued jobs until the queue is closed and empty; after a failure the rest
    /// are only taken off the queue.
    fn drain(&self, jobs: &Mutex<mpsc::Receiver<Batch<'_>>>) {
        loop {
            let next = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(batch) = next else { return };
            self.verify(&batch);
        }
    }

    fn verify(&self, batch: &Batch<'_>) {
        for (at, checks) in batch {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if let Err(r) = checks.verify() {
                self.fail(*at, r);
            }
        }
    }
}

/// Runs `produce` on the calling thread while the signature checks it pushes are verified
/// on the machine's other cores as they come (when `inputs`, the number of signatures to
/// expect, makes that worth it; on a single core they are all verified after `produce`).
/// Once `produce` returns, the calling thread helps verify what is left. So a block's serial work — coin lookups, amounts, the store's
/// writes and their I/O — overlaps its signature verification. Returns `produce`'s error if
/// it fails (the workers then stop), else the verdict of a failed check (the earliest pushed
/// of those found), else `produce`'s value.
pub fn verify_while<'a, T, E: From<Reject>>(
    inputs: usize,
    produce: impl FnOnce(&mut SigQueue<'_, 'a>) -> Result<T, E>,
) -> Result<T, E> {
    let verdict = Verdict::default();
    let mut queue = SigQueue { send: None, local: Vec::new(), local_inputs: 0, pushed: 0, verdict: &verdict };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    if inputs < PARALLEL_MIN_JOBS || workers == 0 {
        let out = produce(&mut queue)?;
        queue.local.iter().try_for_each(|(_, checks)| checks.verify())?;
        return Ok(out);
    }
    let (send, recv) = mpsc::channel();
    let jobs = Mutex::new(recv);
    queue.send = Some(send);
    let out = std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| verdict.drain(&jobs));
        }
        let out = produce(&mut queue);
        if out.is_err() {
            verdict.stop.store(true, Ordering::Relaxed);
        } else {
            queue.flush();
        }
        drop(queue); // closes the queue: the workers return once it is empty
        if out.is_ok() {
            verdict.drain(&jobs);
        }
        out
    })?;
    verdict.into_result()?;
    Ok(out)
}

/// Context-free transaction checks (Core's `CheckTransaction`).
pub fn check_transaction(tx: &Transaction) -> Result<(), Reject> {
    let txid = || tx.compute_txid();
    if tx.input.is_empty() {
        return reject(RejectCode::BadTransaction, format!("tx {} has no inputs", txid()));
    }
    if tx.output.is_empty() {
        return reject(RejectCode::BadTransaction, format!("tx {} has no outputs", txid()));
    }
    if tx.base_size() * 4 > Weight::MAX_BLOCK.to_wu() as usize {
        return reject(RejectCode::Oversized, format!("tx {} is {} bytes without witness", txid(), tx.base_size()));
    }
    let mut total = Amount::ZERO;
    for (i, out) in tx.output.iter().enumerate() {
        total = match total.checked_add(out.value) {
            Some(t) if out.value <= Amount::MAX_MONEY && t <= Amount::MAX_MONEY => t,
            _ => {
                return reject(
                    RejectCode::BadAmount,
                    format!("tx {} output {i}: value {} out of range", txid(), out.value.to_sat()),
                )
            }
        };
    }
    if tx.input.len() > 1 {
        let mut seen = HashSet::with_capacity(tx.input.len());
        for (i, txin) in tx.input.iter().enumerate() {
            if !seen.insert(txin.previous_output) {
                return reject(
                    RejectCode::DoubleSpend,
                    format!("tx {} input {i} spends {} twice", txid(), txin.previous_output),
                );
            }
        }
    }
    if tx.is_coinbase() {
        let len = tx.input[0].script_sig.len();
        if !(2..=100).contains(&len) {
            return reject(RejectCode::BadCoinbase, format!("coinbase {} script_sig is {len} bytes", txid()));
        }
    } else if let Some(i) = tx.input.iter().position(|i| i.previous_output.is_null()) {
        return reject(RejectCode::BadTransaction, format!("tx {} input {i} has a null prevout", txid()));
    }
    Ok(())
}

/// Checks that `header` has valid bits under the pow limit and a hash that meets them.
pub fn check_header_pow(header: &Header, params: &Params) -> Result<BlockHash, Reject> {
    let hash = header.block_hash();
    let Some(target) = target_from_bits(header.bits, params.pow_limit) else {
        return reject(
            RejectCode::BadPow,
            format!("block {hash}: bits {:#010x} are not a target under the pow limit", header.bits.to_consensus()),
        );
    };
    if !target.is_met_by(hash) {
        return reject(RejectCode::BadPow, format!("block {hash}: hash above its target"));
    }
    Ok(hash)
}

/// Context-free block checks (Core's `CheckBlock`): proof of work, merkle root, no
/// duplicate txids, exactly one coinbase and first, weight, witness commitment, and every
/// transaction's [`check_transaction`].
pub fn check_block(block: &Block, params: &Params) -> Result<(), Reject> {
    check_block_txids(block, params).map(drop)
}

/// [`check_block`], returning the transactions' txids for reuse.
pub fn check_block_txids(block: &Block, params: &Params) -> Result<Vec<Txid>, Reject> {
    let hash = check_header_pow(&block.header, params)?;
    if block.txdata.is_empty() {
        return reject(RejectCode::BadCoinbase, format!("block {hash} has no transactions"));
    }
    let txids: Vec<Txid> = block.txdata.iter().map(Transaction::compute_txid).collect();
    let root = bitcoin::merkle_tree::calculate_root(txids.iter().map(|t| t.to_raw_hash()));
    if root.map(bitcoin::TxMerkleNode::from_raw_hash) != Some(block.header.merkle_root) {
        return reject(RejectCode::BadMerkleRoot, format!("block {hash}: merkle root does not match its transactions"));
    }
    // Also catches CVE-2012-2459 (a duplicated tail that leaves the merkle root unchanged).
    let mut seen = HashSet::with_capacity(txids.len());
    if let Some(dup) = txids.iter().find(|t| !seen.insert(**t)) {
        return reject(RejectCode::Duplicate, format!("block {hash}: tx {dup} appears twice"));
    }
    // Size limits before anything expensive per transaction.
    let weight = block.weight();
    if weight > params.max_block_weight {
        return reject(
            RejectCode::Oversized,
            format!("block {hash}: weight {} above {}", weight.to_wu(), params.max_block_weight.to_wu()),
        );
    }
    if !block.txdata[0].is_coinbase() {
        return reject(RejectCode::BadCoinbase, format!("block {hash}: first tx {} is not a coinbase", txids[0]));
    }
    if let Some(i) = block.txdata.iter().skip(1).position(Transaction::is_coinbase) {
        return reject(RejectCode::BadCoinbase, format!("block {hash}: tx {} is a second coinbase", txids[i + 1]));
    }
    if !block.check_witness_commitment() {
        return reject(
            RejectCode::BadWitnessCommitment,
            format!("block {hash}: witness data without a matching bip141 commitment"),
        );
    }
    for tx in &block.txdata {
        check_transaction(tx)?;
    }
    Ok(txids)
}

/// Checks that need the block's height and its parent's median time past: BIP34 height in
/// the coinbase, and every transaction final (BIP113: lock times against the MTP).
pub fn check_block_context(block: &Block, height: u32, prev_median_time_past: u32) -> Result<(), Reject> {
    let hash = || block.block_hash();
    // Core's BIP34 check: the script_sig starts with `CScript() << height` (OP_1..OP_16 for
    // small heights, which rust-bitcoin's `bip34_block_height` does not read).
    let expected = bitcoin::script::Builder::new().push_int(i64::from(height)).into_script();
    let script_sig = block.txdata.first().and_then(|cb| cb.input.first()).map(|i| i.script_sig.as_bytes());
    if !script_sig.is_some_and(|s| s.starts_with(expected.as_bytes())) {
        return reject(
            RejectCode::BadCoinbase,
            format!("block {}: coinbase script_sig does not start with height {height}", hash()),
        );
    }
    for tx in &block.txdata {
        // Core's IsFinalTx: a lock below the block's height, or below the parent's MTP.
        let lock = tx.lock_time.to_consensus_u32();
        let bound = if tx.lock_time.is_block_height() { height } else { prev_median_time_past };
        if lock != 0 && lock >= bound && tx.is_lock_time_enabled() {
            return reject(
                RejectCode::BadTransaction,
                format!("block {}: tx {} is not final (lock time {lock})", hash(), tx.compute_txid()),
            );
        }
    }
    Ok(())
}

/// What [`check_header_context`] needs of the previous block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrevEntry {
    /// Its hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: u32,
    /// Median time of it and its ten ancestors.
    pub median_time_past: u32,
}

/// Contextual header checks (Core's `ContextualCheckBlockHeader`): builds on `prev`, carries
/// `expected_bits`, time after the median time past and at most two hours after `now`.
pub fn check_header_context(
    header: &Header,
    prev: &PrevEntry,
    params: &Params,
    expected_bits: CompactTarget,
    now: u64,
) -> Result<(), Reject> {
    let hash = header.block_hash();
    if header.prev_blockhash != prev.hash {
        return reject(
            RejectCode::BadPrevBlock,
            format!("block {hash} builds on {}, not {}", header.prev_blockhash, prev.hash),
        );
    }
    if header.bits != expected_bits {
        return reject(
            RejectCode::BadBits,
            format!(
                "block {hash} at height {}: bits {:#010x}, {} expects {:#010x}",
                prev.height + 1,
                header.bits.to_consensus(),
                params.name,
                expected_bits.to_consensus()
            ),
        );
    }
    if header.time <= prev.median_time_past {
        return reject(
            RejectCode::BadTime,
            format!("block {hash}: time {} not after median time past {}", header.time, prev.median_time_past),
        );
    }
    if u64::from(header.time) > now + MAX_FUTURE_BLOCK_TIME {
        return reject(
            RejectCode::BadTime,
            format!("block {hash}: time {} more than 2 h after now ({now})", header.time),
        );
    }
    Ok(())
}

/// The median of up to eleven block times (Core's `GetMedianTimePast`).
pub fn median_time(times: &mut [u32]) -> u32 {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or(0)
}

/// Checks `tx`'s inputs against `view` at `spend_height` — coins exist, coinbase maturity,
/// amounts, P2WPKH/P2PKH unlocking data and signatures — and returns the fee.
pub fn check_tx_inputs(
    tx: &Transaction,
    view: &impl CoinView,
    spend_height: u32,
    params: &Params,
) -> Result<Amount, Reject> {
    verify_while(tx.input.len(), |queue| {
        let (fee, checks) = tx_input_checks(tx, tx.compute_txid(), view, spend_height, params)?;
        queue.push(checks);
        Ok(fee)
    })
}

/// [`check_tx_inputs`] without the signature checks: the coins, maturity and amounts are
/// checked here, and the fee is returned with the [`TxSigChecks`] that check the rest.
pub fn tx_input_checks<'a>(
    tx: &'a Transaction,
    txid: Txid,
    view: &impl CoinView,
    spend_height: u32,
    params: &Params,
) -> Result<(Amount, TxSigChecks<'a>), Reject> {
    let mut spends = TxSpends::new(tx, txid, spend_height, params)?;
    for (i, txin) in tx.input.iter().enumerate() {
        let op = &txin.previous_output;
        let Some(coin) = view.coin(op) else { return Err(missing_input(txid, i, op, view.is_spent(op))) };
        spends.spend(i, &coin.output, coin.height, coin.coinbase)?;
    }
    spends.finish()
}

/// The verdict on input `i` of `txid`, whose coin `op` is not in the UTXO set: a double
/// spend when it is known to have been `spent`, else a missing input.
pub fn missing_input(txid: Txid, i: usize, op: &OutPoint, spent: bool) -> Reject {
    if spent {
        Reject::new(RejectCode::DoubleSpend, format!("tx {txid} input {i} spends {op}, already spent"))
    } else {
        Reject::new(RejectCode::MissingInputs, format!("tx {txid} input {i} spends {op}, which does not exist"))
    }
}

/// [`tx_input_checks`] one coin at a time, for callers that find the coins themselves (the
/// chain state takes them out of its UTXO set as it connects a block): [`new`](Self::new),
/// then [`spend`](Self::spend) for each input in order, then [`finish`](Self::finish).
#[derive(Debug)]
pub struct TxSpends<'a> {
    checks: TxSigChecks<'a>,
    spend_height: u32,
    maturity: u32,
    value_in: Amount,
}

impl<'a> TxSpends<'a> {
    /// Starts on `tx` (refused if it is a coinbase), to be included at `spend_height`.
    pub fn new(tx: &'a Transaction, txid: Txid, spend_height: u32, params: &Params) -> Result<Self, Reject> {
        if tx.is_coinbase() {
            return reject(RejectCode::BadCoinbase, format!("tx {txid} is a coinbase outside the first position"));
        }
        let checks = TxSigChecks { tx, txid, first: 0, prevouts: Vec::with_capacity(tx.input.len()) };
        Ok(TxSpends { checks, spend_height, maturity: params.coinbase_maturity, value_in: Amount::ZERO })
    }

    /// Input `i` (the next one) spends `output`, created at `height` (by a coinbase or not).
    pub fn spend(&mut self, i: usize, output: &TxOut, height: u32, coinbase: bool) -> Result<(), Reject> {
        let txid = self.checks.txid;
        debug_assert_eq!(i, self.checks.prevouts.len(), "inputs are spent in order");
        if coinbase && self.spend_height.saturating_sub(height) < self.maturity {
            let op = &self.checks.tx.input[i].previous_output;
            return reject(
                RejectCode::Immature,
                format!(
                    "tx {txid} input {i} spends coinbase output {op} of height {height} at height {} (maturity {})",
                    self.spend_height, self.maturity
                ),
            );
        }
        self.value_in = match self.value_in.checked_add(output.value) {
            Some(v) if output.value <= Amount::MAX_MONEY && v <= Amount::MAX_MONEY => v,
            _ => return reject(RejectCode::BadAmount, format!("tx {txid} input {i}: input values out of range")),
        };
        let spk = output.script_pubkey.as_bytes();
        let (kind, hash) = if output.script_pubkey.is_p2wpkh() {
            (SpendKind::P2wpkh, &spk[2..22])
        } else if output.script_pubkey.is_p2pkh() {
            (SpendKind::P2pkh, &spk[3..23])
        } else {
            return reject(
                RejectCode::NonStandard,
                format!(
                    "tx {txid} input {i} spends a {} output; only p2wpkh and p2pkh are spendable",
                    script_kind(&output.script_pubkey)
                ),
            );
        };
        let key_hash = hash.try_into().expect("a 20-byte key hash");
        self.checks.prevouts.push(Prevout { kind, value: output.value, key_hash });
        Ok(())
    }

    /// The fee (refused if the outputs are worth more than the inputs) and the signature
    /// checks still to run.
    pub fn finish(self) -> Result<(Amount, TxSigChecks<'a>), Reject> {
        let TxSpends { checks, value_in, .. } = self;
        debug_assert_eq!(checks.prevouts.len(), checks.tx.input.len(), "every input spent");
        let value_out = checks.tx.output.iter().map(|o| o.value).sum::<Amount>();
        let fee = value_in.checked_sub(value_out).ok_or_else(|| {
            Reject::new(
                RejectCode::BadAmount,
                format!("tx {} spends {} sat but creates {} sat", checks.txid, value_in.to_sat(), value_out.to_sat()),
            )
        })?;
        Ok((fee, checks))
    }
}

/// A short lowercase name of a script's type, for reasons.
fn script_kind(spk: &bitcoin::Script) -> &'static str {
    if spk.is_p2sh() {
        "p2sh"
    } else if spk.is_p2wsh() {
        "p2wsh"
    } else if spk.is_p2tr() {
        "p2tr"
    } else if spk.is_p2pk() {
        "p2pk"
    } else if spk.is_multisig() {
        "bare multisig"
    } else if spk.is_op_return() {
        "op_return"
    } else if spk.witness_version().is_some() {
        "future witness version"
    } else {
        "non-standard"
    }
}

/// Helpers to build, sign and mine in tests (shared with the chain state's tests).
#[cfg(test)]
pub(crate) mod test_util {
    use bitcoin::block::{Header, Version as BlockVersion};
    use bitcoin::hashes::Hash;
    use bitcoin::script::{Builder, PushBytesBuf};
    use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
    use bitcoin::sighash::{EcdsaSighashType, SighashCache};
    use bitcoin::transaction::Version;
    use bitcoin::{
        absolute::LockTime, Amount, Block, BlockHash, CompactTarget, CompressedPublicKey, OutPoint, ScriptBuf,
        Sequence, Transaction, TxIn, TxMerkleNode, TxOut, Witness,
    };

    pub fn secp() -> Secp256k1<All> {
        Secp256k1::new()
    }

    pub fn key(n: u8) -> (SecretKey, PublicKey) {
        let sk = SecretKey::from_slice(&[n; 32]).unwrap();
        (sk, sk.public_key(&secp()))
    }

    pub fn p2wpkh(pk: &PublicKey) -> ScriptBuf {
        ScriptBuf::new_p2wpkh(&CompressedPublicKey(*pk).wpubkey_hash())
    }

    pub fn p2pkh(pk: &PublicKey) -> ScriptBuf {
        ScriptBuf::new_p2pkh(&bitcoin::PublicKey::new(*pk).pubkey_hash())
    }

    /// A coinbase for `height` paying `value` to `spk` (BIP34 height first in script_sig).
    pub fn coinbase(height: u32, value: Amount, spk: ScriptBuf) -> Transaction {
        let tag = PushBytesBuf::try_from(b"test".to_vec()).unwrap();
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig: Builder::new().push_int(i64::from(height)).push_slice(tag).into_script(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut { value, script_pubkey: spk }],
        }
    }

    /// An unsigned spend of `prevouts` to `outputs`.
    pub fn unsigned(prevouts: &[OutPoint], outputs: Vec<TxOut>) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: prevouts
                .iter()
                .map(|op| TxIn {
                    previous_output: *op,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                })
                .collect(),
            output: outputs,
        }
    }

    /// Signs every input of `tx`; `spent[i]` is the output input `i` spends and `keys[i]`
    /// the key of its P2WPKH or P2PKH script.
    pub fn sign(tx: &mut Transaction, spent: &[TxOut], keys: &[SecretKey]) {
        let s = secp();
        let mut scripts = Vec::new();
        let mut witnesses = Vec::new();
        {
            let mut cache = SighashCache::new(&*tx);
            for (i, (out, sk)) in spent.iter().zip(keys).enumerate() {
                let pk = sk.public_key(&s);
                if out.script_pubkey.is_p2wpkh() {
                    let h =
                        cache.p2wpkh_signature_hash(i, &out.script_pubkey, out.value, EcdsaSighashType::All).unwrap();
                    let sig = s.sign_ecdsa(&bitcoin::secp256k1::Message::from_digest(h.to_byte_array()), sk);
                    let sig = bitcoin::ecdsa::Signature { signature: sig, sighash_type: EcdsaSighashType::All };
                    scripts.push(ScriptBuf::new());
                    witnesses.push(Witness::p2wpkh(&sig, &pk));
                } else {
                    let h = cache.legacy_signature_hash(i, &out.script_pubkey, 1).unwrap();
                    let sig = s.sign_ecdsa(&bitcoin::secp256k1::Message::from_digest(h.to_byte_array()), sk);
                    let sig = bitcoin::ecdsa::Signature { signature: sig, sighash_type: EcdsaSighashType::All };
                    let script =
                        Builder::new().push_slice(sig.serialize()).push_key(&bitcoin::PublicKey::new(pk)).into_script();
                    scripts.push(script);
                    witnesses.push(Witness::new());
                }
            }
        }
        for ((txin, script), witness) in tx.input.iter_mut().zip(scripts).zip(witnesses) {
            txin.script_sig = script;
            txin.witness = witness;
        }
    }

    /// Fixes up the coinbase's witness commitment (when any tx has a witness) and the merkle
    /// root, then searches a nonce that meets `bits`.
    pub fn finish(block: &mut Block) {
        if block.txdata.iter().any(|t| t.input.iter().any(|i| !i.witness.is_empty())) {
            let cb = &mut block.txdata[0];
            cb.input[0].witness = Witness::from_slice(&[[0u8; 32]]);
            cb.output.retain(|o| !o.script_pubkey.as_bytes().starts_with(&[0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed]));
            let root = block.witness_root().unwrap();
            let commitment = Block::compute_witness_commitment(&root, &[0u8; 32]);
            let mut spk = vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
            spk.extend_from_slice(commitment.as_byte_array());
            block.txdata[0].output.push(TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::from(spk) });
        }
        block.header.merkle_root = block.compute_merkle_root().unwrap();
        mine(&mut block.header);
    }

    pub fn mine(header: &mut Header) {
        let target = header.target();
        while !target.is_met_by(header.block_hash()) {
            header.nonce += 1;
        }
    }

    /// A mined block on `prev` with `txs`.
    pub fn block(prev: BlockHash, time: u32, bits: CompactTarget, txs: Vec<Transaction>) -> Block {
        let mut b = Block {
            header: Header {
                version: BlockVersion::TWO,
                prev_blockhash: prev,
                merkle_root: TxMerkleNode::all_zeros(),
                time,
                bits,
                nonce: 0,
            },
            txdata: txs,
        };
        finish(&mut b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use bitcoin::hashes::Hash;
    use bitcoin::{ScriptBuf, TxOut, Witness};

    fn p() -> &'static Params {
        Params::devnet()
    }

    /// A view with one mature P2WPKH coin (key 1), one P2PKH coin (key 2) and one young
    /// coinbase coin (key 1).
    fn fixture() -> (HashMap<OutPoint, Coin>, [OutPoint; 3], [TxOut; 3]) {
        let (_, pk1) = key(1);
        let (_, pk2) = key(2);
        let outs = [
            TxOut { value: Amount::from_sat(50_000), script_pubkey: p2wpkh(&pk1) },
            TxOut { value: Amount::from_sat(70_000), script_pubkey: p2pkh(&pk2) },
            TxOut { value: Amount::from_sat(90_000), script_pubkey: p2wpkh(&pk1) },
        ];
        let ops = [0u8, 1, 2].map(|n| OutPoint { txid: Txid::from_byte_array([n + 7; 32]), vout: u32::from(n) });
        let mut view = HashMap::new();
        view.insert(ops[0], Coin { output: outs[0].clone(), height: 1, coinbase: false });
        view.insert(ops[1], Coin { output: outs[1].clone(), height: 1, coinbase: false });
        view.insert(ops[2], Coin { output: outs[2].clone(), height: 95, coinbase: true });
        (view, ops, outs)
    }

    fn pay(n: u64) -> Vec<TxOut> {
        vec![TxOut { value: Amount::from_sat(n), script_pubkey: p2wpkh(&key(9).1) }]
    }

    #[test]
    fn p2wpkh_and_p2pkh_spends_are_accepted_and_pay_their_fee() {
        let (view, ops, outs) = fixture();
        let mut tx = unsigned(&ops[..2], pay(100_000));
        sign(&mut tx, &outs[..2], &[key(1).0, key(2).0]);
        assert_eq!(check_transaction(&tx), Ok(()));
        assert_eq!(check_tx_inputs(&tx, &view, 100, p()), Ok(Amount::from_sat(20_000)));
    }

    #[test]
    fn bad_signature_and_wrong_pubkey_are_refused() {
        let (view, ops, outs) = fixture();
        // Signed by the wrong key: the key hash does not match.
        let mut tx = unsigned(&ops[..1], pay(40_000));
        sign(&mut tx, &outs[..1], &[key(3).0]);
        let e = check_tx_inputs(&tx, &view, 100, p()).unwrap_err();
        assert_eq!(e.code, RejectCode::BadSignature);
        assert!(e.reason.contains("pubkey does not match") && e.reason.contains("input 0"), "{e}");
        // Right key, but the signature is over other data (output changed after signing).
        for i in 0..2 {
            let mut tx = unsigned(&ops[i..i + 1], pay(40_000));
            sign(&mut tx, &outs[i..i + 1], &[[key(1).0, key(2).0][i]]);
            tx.output[0].value = Amount::from_sat(39_999);
            let e = check_tx_inputs(&tx, &view, 100, p()).unwrap_err();
            assert_eq!(e.code, RejectCode::BadSignature);
            assert!(e.to_string().contains(&tx.compute_txid().to_string()), "{e}");
            assert!(e.reason.contains("does not verify"), "{e}");
        }
        // Witness shape.
        let mut tx = unsigned(&ops[..1], pay(40_000));
        sign(&mut tx, &outs[..1], &[key(1).0]);
        tx.input[0].witness = Witness::from_slice(&[vec![1u8; 10]]);
        assert_eq!(check_tx_inputs(&tx, &view, 100, p()).unwrap_err().code, RejectCode::BadSignature);
    }

    #[test]
    fn missing_immature_overspent_and_unsupported_inputs_are_refused() {
        let (mut view, ops, outs) = fixture();
        let missing = OutPoint { txid: Txid::from_byte_array([1; 32]), vout: 0 };
        let tx = unsigned(&[missing], pay(1));
        assert_eq!(check_tx_inputs(&tx, &view, 100, p()).unwrap_err().code, RejectCode::MissingInputs);

        // Coinbase of height 95 with maturity 10: spendable from height 105.
        let mut tx = unsigned(&ops[2..3], pay(1000));
        sign(&mut tx, &outs[2..3], &[key(1).0]);
        let e = check_tx_inputs(&tx, &view, 104, p()).unwrap_err();
        assert_eq!(e.code, RejectCode::Immature, "{e}");
        assert_eq!(check_tx_inputs(&tx, &view, 105, p()), Ok(Amount::from_sat(89_000)));

        let mut tx = unsigned(&ops[..1], pay(50_001));
        sign(&mut tx, &outs[..1], &[key(1).0]);
        assert_eq!(check_tx_inputs(&tx, &view, 100, p()).unwrap_err().code, RejectCode::BadAmount);

        let p2sh = ScriptBuf::new_p2sh(&bitcoin::ScriptHash::from_byte_array([3; 20]));
        view.insert(
            missing,
            Coin { output: TxOut { value: Amount::ONE_BTC, script_pubkey: p2sh }, height: 1, coinbase: false },
        );
        let e = check_tx_inputs(&unsigned(&[missing], pay(1)), &view, 100, p()).unwrap_err();
        assert_eq!(e.code, RejectCode::NonStandard);
        assert!(e.reason.contains("p2sh"), "{e}");
    }

    #[test]
    fn check_transaction_refuses_malformed_transactions() {
        let (_, ops, _) = fixture();
        assert_eq!(check_transaction(&unsigned(&[], pay(1))).unwrap_err().code, RejectCode::BadTransaction);
        assert_eq!(check_transaction(&unsigned(&ops[..1], vec![])).unwrap_err().code, RejectCode::BadTransaction);
        let e = check_transaction(&unsigned(&[ops[0], ops[0]], pay(1))).unwrap_err();
        assert_eq!(e.code, RejectCode::DoubleSpend);
        assert!(e.reason.contains("input 1"), "{e}");
        let e = check_transaction(&unsigned(&ops[..1], pay(21_000_000 * 100_000_000 + 1))).unwrap_err();
        assert_eq!(e.code, RejectCode::BadAmount);
        let mut two = pay(Amount::MAX_MONEY.to_sat());
        two.extend(pay(1));
        assert_eq!(check_transaction(&unsigned(&ops[..1], two)).unwrap_err().code, RejectCode::BadAmount);
        let huge = vec![TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::from(vec![0x51; 1_000_001]) }];
        assert_eq!(check_transaction(&unsigned(&ops[..1], huge)).unwrap_err().code, RejectCode::Oversized);
        let mut cb = coinbase(1, Amount::ONE_BTC, p2wpkh(&key(1).1));
        cb.input[0].script_sig = ScriptBuf::from(vec![0x51]);
        assert_eq!(check_transaction(&cb).unwrap_err().code, RejectCode::BadCoinbase);
    }

    fn good_block() -> Block {
        let (_, ops, outs) = fixture();
        let mut tx = unsigned(&ops[..1], pay(40_000));
        sign(&mut tx, &outs[..1], &[key(1).0]);
        let cb = coinbase(1, Amount::from_int_btc(50), p2wpkh(&key(1).1));
        block(p().genesis_hash, p().genesis.header.time + 2, p().pow_limit_bits, vec![cb, tx])
    }

    #[test]
    fn check_block_accepts_a_good_block_and_names_what_breaks() {
        let b = good_block();
        assert_eq!(check_block(&b, p()), Ok(()));
        assert!(b.txdata[0].output.len() == 2, "witness commitment added");

        let mut bad = b.clone();
        bad.header.merkle_root = bitcoin::TxMerkleNode::all_zeros();
        mine(&mut bad.header);
        let e = check_block(&bad, p()).unwrap_err();
        assert_eq!(e.code, RejectCode::BadMerkleRoot);
        assert!(e.reason.contains(&bad.block_hash().to_string()), "{e}");

        // Hash above target: find a nonce that fails.
        let mut bad = b.clone();
        while bad.header.target().is_met_by(bad.block_hash()) {
            bad.header.nonce += 1;
        }
        assert_eq!(check_block(&bad, p()).unwrap_err().code, RejectCode::BadPow);
        // Bits above the pow limit.
        let mut bad = b.clone();
        bad.header.bits = CompactTarget::from_consensus(0x2100ffff);
        mine(&mut bad.header);
        assert_eq!(check_block(&bad, p()).unwrap_err().code, RejectCode::BadPow);

        // Witness changed after the commitment was made.
        let mut bad = b.clone();
        bad.txdata[1].input[0].witness = Witness::from_slice(&[vec![1u8; 71], vec![2u8; 33]]);
        mine(&mut bad.header);
        assert_eq!(check_block(&bad, p()).unwrap_err().code, RejectCode::BadWitnessCommitment);
        // Commitment missing altogether.
        let mut bad = b.clone();
        bad.txdata[0].output.truncate(1);
        bad.header.merkle_root = bad.compute_merkle_root().unwrap();
        mine(&mut bad.header);
        assert_eq!(check_block(&bad, p()).unwrap_err().code, RejectCode::BadWitnessCommitment);

        // No coinbase first; two coinbases.
        let mut bad = b.clone();
        bad.txdata.swap(0, 1);
        finish(&mut bad);
        assert_eq!(check_block(&bad, p()).unwrap_err().code, RejectCode::BadCoinbase);
        let mut bad = b.clone();
        bad.txdata.push(coinbase(7, Amount::ONE_BTC, p2wpkh(&key(1).1)));
        finish(&mut bad);
        assert_eq!(check_block(&bad, p()).unwrap_err().code, RejectCode::BadCoinbase);

        // Duplicate txids (CVE-2012-2459 shape: the last tx repeated).
        let mut bad = b.clone();
        bad.txdata.push(bad.txdata[1].clone());
        finish(&mut bad);
        assert_eq!(check_block(&bad, p()).unwrap_err().code, RejectCode::Duplicate);
    }

    #[test]
    fn oversized_block_is_refused() {
        let mut b = good_block();
        let (_, ops, _) = fixture();
        // ~1.1 MB of base data in one tx: 4.4 M weight units.
        let mut tx = unsigned(
            &ops[1..2],
            vec![TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::from(vec![0x6a; 990_000]) }],
        );
        tx.output.push(TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::from(vec![0x6a; 110_000]) });
        b.txdata.push(tx);
        finish(&mut b);
        let e = check_block(&b, p()).unwrap_err();
        assert_eq!(e.code, RejectCode::Oversized, "{e}");
    }

    #[test]
    fn block_context_needs_bip34_height_and_final_transactions() {
        let b = good_block();
        assert_eq!(check_block_context(&b, 1, 0), Ok(()));
        let e = check_block_context(&b, 2, 0).unwrap_err();
        assert_eq!(e.code, RejectCode::BadCoinbase);
        assert!(e.reason.contains("height 2"), "{e}");
        let mut locked = b.clone();
        locked.txdata[1].lock_time = bitcoin::absolute::LockTime::from_consensus(5);
        locked.txdata[1].input[0].sequence = bitcoin::Sequence::ZERO;
        assert_eq!(check_block_context(&locked, 1, 0).unwrap_err().code, RejectCode::BadTransaction);
        assert_eq!(check_block_context(&locked, 6, 0).map_err(|e| e.code), Err(RejectCode::BadCoinbase));
    }

    #[test]
    fn header_context_checks_prev_bits_and_time() {
        let b = good_block();
        let h = b.header;
        let prev = PrevEntry { hash: p().genesis_hash, height: 0, median_time_past: h.time - 1 };
        let now = u64::from(h.time);
        assert_eq!(check_header_context(&h, &prev, p(), p().pow_limit_bits, now), Ok(()));
        let other = CompactTarget::from_consensus(0x1f00ffff);
        let e = check_header_context(&h, &prev, p(), other, now).unwrap_err();
        assert_eq!(e.code, RejectCode::BadBits);
        assert!(e.reason.contains("0x1f00ffff") && e.reason.contains("height 1"), "{e}");
        let late = PrevEntry { median_time_past: h.time, ..prev };
        assert_eq!(
            check_header_context(&h, &late, p(), p().pow_limit_bits, now).unwrap_err().code,
            RejectCode::BadTime
        );
        let early_clock = now - MAX_FUTURE_BLOCK_TIME - 1;
        assert_eq!(
            check_header_context(&h, &prev, p(), p().pow_limit_bits, early_clock).unwrap_err().code,
            RejectCode::BadTime
        );
        assert!(check_header_context(&h, &prev, p(), p().pow_limit_bits, early_clock + 1).is_ok());
        let wrong_prev = PrevEntry { hash: BlockHash::all_zeros(), ..prev };
        assert_eq!(
            check_header_context(&h, &wrong_prev, p(), p().pow_limit_bits, now).unwrap_err().code,
            RejectCode::BadPrevBlock
        );
        assert_eq!(median_time(&mut [5, 1, 4, 2, 3]), 3);
    }

    /// A view of `n` mature P2WPKH coins of key 1, and their outpoints and outputs.
    fn many_coins(n: u8) -> (HashMap<OutPoint, Coin>, Vec<OutPoint>, Vec<TxOut>) {
        let out = TxOut { value: Amount::from_sat(10_000), script_pubkey: p2wpkh(&key(1).1) };
        let ops: Vec<OutPoint> = (0..n).map(|k| OutPoint { txid: Txid::from_byte_array([k; 32]), vout: 1 }).collect();
        let view = ops.iter().map(|op| (*op, Coin { output: out.clone(), height: 1, coinbase: false })).collect();
        (view, ops, vec![out; n as usize])
    }

    #[test]
    fn many_signatures_verify_in_parallel_and_one_bad_one_is_found() {
        let (view, ops, outs) = many_coins(80);
        let txs: Vec<Transaction> = (0..80)
            .map(|n| {
                let mut tx = unsigned(&ops[n..n + 1], pay(1000 + n as u64));
                sign(&mut tx, &outs[..1], &[key(1).0]);
                tx
            })
            .collect();
        let check = |txs: &[Transaction]| {
            verify_while(txs.len(), |queue| {
                for tx in txs {
                    let (fee, checks) = tx_input_checks(tx, tx.compute_txid(), &view, 100, p())?;
                    assert_eq!(checks.len(), 1);
                    queue.push(checks);
                    assert!(fee > Amount::ZERO);
                }
                Ok::<_, Reject>(txs.len())
            })
        };
        assert_eq!(check(&txs), Ok(80));
        let mut bad = txs.clone();
        bad[77].output[0].value = Amount::from_sat(1); // signed over another amount
        let e = check(&bad).unwrap_err();
        assert_eq!(e.code, RejectCode::BadSignature);
        assert!(e.reason.contains(&bad[77].compute_txid().to_string()) && e.reason.contains("input 0"), "{e}");
        // The producer's own verdict wins, and nothing it queued is reported instead.
        let e = verify_while(txs.len(), |queue| {
            for tx in &bad {
                queue.push(tx_input_checks(tx, tx.compute_txid(), &view, 100, p())?.1);
            }
            Err::<(), _>(Reject::new(RejectCode::MissingInputs, "stop"))
        })
        .unwrap_err();
        assert_eq!(e.code, RejectCode::MissingInputs);
    }

    #[test]
    fn a_large_transaction_is_split_and_each_input_checked_at_its_index() {
        let (view, ops, outs) = many_coins(70);
        let mut tx = unsigned(&ops, pay(600_000));
        sign(&mut tx, &outs, &vec![key(1).0; 70]);
        assert_eq!(check_tx_inputs(&tx, &view, 100, p()), Ok(Amount::from_sat(100_000)));
        let (_, checks) = tx_input_checks(&tx, tx.compute_txid(), &view, 100, p()).unwrap();
        let parts: Vec<TxSigChecks> = checks.split(JOB_INPUTS).collect();
        assert_eq!(parts.iter().map(TxSigChecks::len).collect::<Vec<_>>(), [32, 32, 6]);
        assert!(parts.iter().all(|c| c.verify().is_ok()));
        // A signature moved to another input fails there, whichever part holds it.
        let mut bad = tx.clone();
        bad.input[50].witness = tx.input[49].witness.clone();
        let e = check_tx_inputs(&bad, &view, 100, p()).unwrap_err();
        assert_eq!(e.code, RejectCode::BadSignature);
        assert!(e.reason.contains("input 50:"), "{e}");
        // The parsed triples are what the raw verifier would be given.
        let triples = tx_input_checks(&tx, tx.compute_txid(), &view, 100, p()).unwrap().1.parse().unwrap();
        assert_eq!(triples.len(), 70);
        assert_eq!(triples[69].input, 69);
        assert!(triples.iter().all(|c| c.verify().is_ok()));
    }

    #[test]
    fn reject_codes_round_trip_and_display_lowercase() {
        for (code, name) in CODES {
            assert_eq!(code.to_string(), name);
            assert_eq!(name.parse::<RejectCode>(), Ok(code));
            assert_eq!(name, name.to_lowercase());
        }
        assert!("nope".parse::<RejectCode>().is_err());
    }
}
