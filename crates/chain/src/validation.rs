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
//! - Signature checks are collected as [`SigCheck`] jobs (message, signature, key), sighashes
//!   computed through one `SighashCache` per transaction so BIP143 midstates are shared, and
//!   verified afterwards by [`verify_sig_checks`] with one shared verification-only context —
//!   in parallel over the machine's cores for blocks with many inputs.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use bitcoin::block::Header;
use bitcoin::hashes::{hash160, Hash};
use bitcoin::script::Instruction;
use bitcoin::secp256k1::{self, Message, Secp256k1, VerifyOnly};
use bitcoin::sighash::SighashCache;
use bitcoin::{Amount, Block, BlockHash, CompactTarget, OutPoint, Transaction, TxOut, Txid, Weight};

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

/// One deferred ECDSA check: `sig` over `msg` by `pk`, for input `input` of `txid`.
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

/// Jobs below this count are verified on the calling thread.
const PARALLEL_MIN_JOBS: usize = 64;

/// Verifies signature jobs, on all cores when there are many; the first failure (lowest
/// index within its thread's share) is returned.
pub fn verify_sig_checks(checks: &[SigCheck]) -> Result<(), Reject> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if checks.len() < PARALLEL_MIN_JOBS || threads < 2 {
        return checks.iter().try_for_each(SigCheck::verify);
    }
    let chunk = checks.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> =
            checks.chunks(chunk).map(|part| s.spawn(move || part.iter().try_for_each(SigCheck::verify))).collect();
        handles.into_iter().try_for_each(|h| h.join().expect("signature verification does not panic"))
    })
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
    let mut jobs = Vec::with_capacity(tx.input.len());
    let fee = tx_input_checks(tx, tx.compute_txid(), view, spend_height, params, &mut jobs)?;
    verify_sig_checks(&jobs)?;
    Ok(fee)
}

/// [`check_tx_inputs`] without the ECDSA verification: everything else is checked, and the
/// signature checks are appended to `jobs` for [`verify_sig_checks`]. Returns the fee.
pub fn tx_input_checks(
    tx: &Transaction,
    txid: Txid,
    view: &impl CoinView,
    spend_height: u32,
    params: &Params,
    jobs: &mut Vec<SigCheck>,
) -> Result<Amount, Reject> {
    if tx.is_coinbase() {
        return reject(RejectCode::BadCoinbase, format!("tx {txid} is a coinbase outside the first position"));
    }
    let mut cache = SighashCache::new(tx);
    let mut value_in = Amount::ZERO;
    for (i, txin) in tx.input.iter().enumerate() {
        let op = &txin.previous_output;
        let Some(coin) = view.coin(op) else {
            if view.is_spent(op) {
                return reject(RejectCode::DoubleSpend, format!("tx {txid} input {i} spends {op}, already spent"));
            }
            return reject(RejectCode::MissingInputs, format!("tx {txid} input {i} spends {op}, which does not exist"));
        };
        if coin.coinbase && spend_height.saturating_sub(coin.height) < params.coinbase_maturity {
            return reject(
                RejectCode::Immature,
                format!(
                    "tx {txid} input {i} spends coinbase output {op} of height {} at height {spend_height} (maturity {})",
                    coin.height, params.coinbase_maturity
                ),
            );
        }
        value_in = match value_in.checked_add(coin.output.value) {
            Some(v) if coin.output.value <= Amount::MAX_MONEY && v <= Amount::MAX_MONEY => v,
            _ => return reject(RejectCode::BadAmount, format!("tx {txid} input {i}: input values out of range")),
        };
        jobs.push(input_sig_check(tx, &mut cache, txid, i, &coin.output)?);
    }
    let value_out = tx.output.iter().map(|o| o.value).sum::<Amount>();
    value_in.checked_sub(value_out).ok_or_else(|| {
        Reject::new(
            RejectCode::BadAmount,
            format!("tx {txid} spends {} sat but creates {} sat", value_in.to_sat(), value_out.to_sat()),
        )
    })
}

/// Checks input `i`'s unlocking data against the spent output's script and returns its
/// signature check.
fn input_sig_check(
    tx: &Transaction,
    cache: &mut SighashCache<&Transaction>,
    txid: Txid,
    i: usize,
    spent: &TxOut,
) -> Result<SigCheck, Reject> {
    let txin = &tx.input[i];
    let spk = &spent.script_pubkey;
    let bad = |what: &str| Reject::new(RejectCode::BadSignature, format!("tx {txid} input {i}: {what}"));
    let (sig_bytes, pk_bytes, committed): (&[u8], &[u8], &[u8]) = if spk.is_p2wpkh() {
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
        (&txin.witness[0], pk, &spk.as_bytes()[2..22])
    } else if spk.is_p2pkh() {
        if !txin.witness.is_empty() {
            return Err(bad("p2pkh spend with a witness"));
        }
        let mut pushes = txin.script_sig.instructions_minimal();
        let (Some(Ok(Instruction::PushBytes(sig))), Some(Ok(Instruction::PushBytes(pk))), None) =
            (pushes.next(), pushes.next(), pushes.next())
        else {
            return Err(bad("p2pkh script_sig is not two minimal pushes <sig> <pubkey>"));
        };
        (sig.as_bytes(), pk.as_bytes(), &spk.as_bytes()[3..23])
    } else {
        return reject(
            RejectCode::NonStandard,
            format!("tx {txid} input {i} spends a {} output; only p2wpkh and p2pkh are spendable", script_kind(spk)),
        );
    };
    if hash160::Hash::hash(pk_bytes).as_byte_array()[..] != *committed {
        return Err(bad("pubkey does not match the spent output's key hash"));
    }
    let pk = secp256k1::PublicKey::from_slice(pk_bytes).map_err(|_| bad("pubkey is not a valid point"))?;
    let sig = bitcoin::ecdsa::Signature::from_slice(sig_bytes).map_err(|e| bad(&format!("signature: {e}")))?;
    let msg = if spk.is_p2wpkh() {
        let h = cache
            .p2wpkh_signature_hash(i, spk, spent.value, sig.sighash_type)
            .map_err(|e| bad(&format!("sighash: {e}")))?;
        Message::from_digest(h.to_byte_array())
    } else {
        let h = cache
            .legacy_signature_hash(i, spk, sig.sighash_type.to_u32())
            .map_err(|e| bad(&format!("sighash: {e}")))?;
        Message::from_digest(h.to_byte_array())
    };
    Ok(SigCheck { msg, sig: sig.signature, pk, txid, input: i as u32 })
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

    #[test]
    fn many_signatures_verify_in_parallel_and_one_bad_one_is_found() {
        let (view, ops, outs) = fixture();
        let mut jobs = Vec::new();
        for n in 0..80u64 {
            let mut tx = unsigned(&ops[..1], pay(1000 + n));
            sign(&mut tx, &outs[..1], &[key(1).0]);
            tx_input_checks(&tx, tx.compute_txid(), &view, 100, p(), &mut jobs).unwrap();
        }
        assert_eq!(verify_sig_checks(&jobs), Ok(()));
        jobs[77].msg = Message::from_digest([7; 32]);
        let e = verify_sig_checks(&jobs).unwrap_err();
        assert_eq!(e.code, RejectCode::BadSignature);
        assert_eq!(jobs[77].input, 0);
        assert!(e.reason.contains(&jobs[77].txid.to_string()), "{e}");
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
