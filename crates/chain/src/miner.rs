//! Block assembly (a coinbase with the BIP34 height, the BIP141 witness commitment, the
//! merkle root) and a proof-of-work miner.
//!
//! Key design decision: the miner hashes a header in two SHA-256 compressions per nonce,
//! not three. The header's first 64 bytes do not depend on the nonce, so their compression
//! (the *midstate*) is computed once per [`Job`]; per nonce there remain the compression of
//! the header's last 16 bytes plus padding, and the second SHA-256 over the 32-byte digest
//! (one block). Both are done with the x86 SHA extensions (SHA-NI) on several independent
//! nonces at once, interleaved so that the `sha256rnds2` latency is hidden
//! ([`Backend::ShaNi`]); without SHA-NI the same loop runs on `sha2::compress256`
//! ([`Backend::Portable`]). What is constant per header (the first two rounds of the second
//! block, `W + K` of the padding words) is precomputed, and the last two rounds of the final
//! compression are skipped: only the most significant 32 bits of the hash are computed per
//! nonce, and a nonce that passes that filter is confirmed with rust-bitcoin's
//! `Header::block_hash`, so a wrong fast path can only miss blocks, never produce an invalid
//! one (and the tests compare both paths with `block_hash` on random headers).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bitcoin::block::{Header, Version};
use bitcoin::blockdata::opcodes::all::OP_RETURN;
use bitcoin::blockdata::script::{Builder, PushBytesBuf};
use bitcoin::hashes::Hash;
use bitcoin::pow::{CompactTarget, Target};
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxMerkleNode,
    TxOut, Witness,
};

// ---------------------------------------------------------------------------------------------
// Block assembly
// ---------------------------------------------------------------------------------------------

/// The largest coinbase scriptSig consensus allows (Core's `bad-cb-length`: 2..=100 bytes).
pub const MAX_COINBASE_SCRIPT_SIG: usize = 100;

/// The BIP141 commitment header: `OP_RETURN`, a 36-byte push, `0xaa21a9ed`.
const WITNESS_COMMITMENT_MAGIC: [u8; 4] = [0xaa, 0x21, 0xa9, 0xed];

/// Why [`build_block`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The height push and the extra nonce do not fit the coinbase scriptSig.
    #[error(
        "coinbase scriptSig for height {height} with a {extra_nonce}-byte extra nonce exceeds \
         {MAX_COINBASE_SCRIPT_SIG} bytes"
    )]
    CoinbaseScriptTooLong { height: u32, extra_nonce: usize },
}

/// Assembles a block on `prev` at `height` from `txs` (already selected and ordered, parents
/// first, e.g. by `Mempool::select`), paying `coinbase_value` (subsidy + fees) to `payout`.
///
/// The coinbase's scriptSig is the BIP34 height push exactly as Core writes it
/// (`CScript() << nHeight`, so heights 1..=16 are `OP_1`..`OP_16`) followed by a push of
/// `extra_nonce` (or `OP_0` when it is empty, as Core does, so the scriptSig is never shorter
/// than 2 bytes). When any transaction has a witness, the coinbase gets the 32-byte zero
/// witness reserved value and a last output committing to the witness root (BIP141). The
/// header's nonce is 0: the caller mines it.
#[allow(clippy::too_many_arguments)]
pub fn build_block(
    prev: BlockHash,
    height: u32,
    time: u32,
    bits: CompactTarget,
    version: Version,
    txs: Vec<Transaction>,
    coinbase_value: Amount,
    payout: ScriptBuf,
    extra_nonce: &[u8],
) -> Result<Block, BuildError> {
    build_block_with(prev, height, time, bits, version, txs, coinbase_value, payout, extra_nonce, Vec::new())
}

/// [`build_block`] with more coinbase outputs after the payout (a UTXO commitment,
/// `crate::utxo::commitment_output`).
#[allow(clippy::too_many_arguments)]
pub fn build_block_with(
    prev: BlockHash,
    height: u32,
    time: u32,
    bits: CompactTarget,
    version: Version,
    txs: Vec<Transaction>,
    coinbase_value: Amount,
    payout: ScriptBuf,
    extra_nonce: &[u8],
    extra_outputs: Vec<TxOut>,
) -> Result<Block, BuildError> {
    let too_long = || BuildError::CoinbaseScriptTooLong { height, extra_nonce: extra_nonce.len() };
    if extra_nonce.len() > MAX_COINBASE_SCRIPT_SIG {
        return Err(too_long());
    }
    let builder = Builder::new().push_int(i64::from(height));
    let script_sig = if extra_nonce.is_empty() {
        builder.push_opcode(bitcoin::blockdata::opcodes::OP_0)
    } else {
        builder.push_slice(PushBytesBuf::try_from(extra_nonce.to_vec()).map_err(|_| too_long())?)
    }
    .into_script();
    if script_sig.len() > MAX_COINBASE_SCRIPT_SIG {
        return Err(too_long());
    }

    let segwit = txs.iter().any(|tx| tx.input.iter().any(|i| !i.witness.is_empty()));
    let coinbase = Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig,
            sequence: Sequence::MAX,
            witness: if segwit { Witness::from_slice(&[[0u8; 32]]) } else { Witness::new() },
        }],
        output: std::iter::once(TxOut { value: coinbase_value, script_pubkey: payout }).chain(extra_outputs).collect(),
    };
    let mut txdata = Vec::with_capacity(txs.len() + 1);
    txdata.push(coinbase);
    txdata.extend(txs);
    let mut block = Block {
        header: Header { version, prev_blockhash: prev, merkle_root: TxMerkleNode::all_zeros(), time, bits, nonce: 0 },
        txdata,
    };

    if segwit {
        // The witness root treats the coinbase's wtxid as zero, so it can be computed before
        // the commitment output exists.
        let root = block.witness_root().expect("a block with a coinbase has a witness root");
        let commitment = Block::compute_witness_commitment(&root, &[0u8; 32]);
        let mut push = [0u8; 36];
        push[..4].copy_from_slice(&WITNESS_COMMITMENT_MAGIC);
        push[4..].copy_from_slice(commitment.as_byte_array());
        let script = Builder::new().push_opcode(OP_RETURN).push_slice(push).into_script();
        block.txdata[0].output.push(TxOut { value: Amount::ZERO, script_pubkey: script });
    }
    block.header.merkle_root = block.compute_merkle_root().expect("a block with a coinbase has a merkle root");
    Ok(block)
}

// ---------------------------------------------------------------------------------------------
// SHA-256 pieces
// ---------------------------------------------------------------------------------------------

const IV: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    sha2::compress256(state, &[(*block).into()]);
}

/// Which implementation of the per-nonce hashing a [`Job`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// x86 SHA extensions, [`SHANI_LANES`] nonces interleaved.
    ShaNi,
    /// `sha2::compress256` per block (itself SHA-NI accelerated where available, but one
    /// nonce at a time).
    Portable,
}

impl Backend {
    /// The fastest backend this CPU supports.
    pub fn best() -> Backend {
        if Backend::ShaNi.available() {
            Backend::ShaNi
        } else {
            Backend::Portable
        }
    }

    /// Whether this CPU can run the backend.
    pub fn available(self) -> bool {
        match self {
            Backend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => std::is_x86_feature_detected!("sha") && std::is_x86_feature_detected!("sse4.1"),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::ShaNi => false,
        }
    }
}

/// How many nonces the SHA-NI path hashes side by side.
pub const SHANI_LANES: usize = 2;

/// A header prepared for nonce search: its midstate and the nonce-independent words.
#[derive(Debug, Clone)]
pub struct Job {
    header: Header,
    target: Target,
    /// The most significant 32 bits of the target (the hash is a little-endian number).
    target_hi: u32,
    /// SHA-256 state after the header's first 64 bytes.
    mid: [u32; 8],
    /// Big-endian words 0..3 of the second block: the merkle root's last 4 bytes, time, bits.
    tail: [u32; 3],
    backend: Backend,
}

impl Job {
    /// Prepares `header` for a search against `target` with the best available backend.
    pub fn new(header: &Header, target: Target) -> Job {
        Job::with_backend(header, target, Backend::best())
    }

    /// As [`Job::new`] with a chosen backend; an unavailable [`Backend::ShaNi`] falls back to
    /// [`Backend::Portable`].
    pub fn with_backend(header: &Header, target: Target, backend: Backend) -> Job {
        let bytes = bitcoin::consensus::serialize(header);
        let mut first = [0u8; 64];
        first.copy_from_slice(&bytes[..64]);
        let mut mid = IV;
        compress(&mut mid, &first);
        let word = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let le = target.to_le_bytes();
        Job {
            header: *header,
            target,
            target_hi: u32::from_le_bytes(le[28..32].try_into().expect("4 bytes")),
            mid,
            tail: [word(64), word(68), word(72)],
            backend: if backend.available() { backend } else { Backend::Portable },
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The header with `nonce`.
    pub fn header_with(&self, nonce: u32) -> Header {
        Header { nonce, ..self.header }
    }

    /// Searches `nonces` (clamped to `0..2^32`) in order and returns the first nonce whose
    /// header hash meets the target.
    pub fn scan(&self, nonces: Range<u64>) -> Option<u32> {
        let end = nonces.end.min(1 << 32);
        let start = nonces.start.min(end);
        let mut found = None;
        let mut check = |nonce: u32| {
            if self.target.is_met_by(self.header_with(nonce).block_hash()) {
                found = Some(nonce);
                true
            } else {
                false
            }
        };
        match self.backend {
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => {
                // SAFETY: `with_backend` only keeps `ShaNi` when the CPU has SHA and SSE4.1.
                unsafe { shani::scan::<SHANI_LANES>(self, start, end, &mut check) }
            }
            _ => self.scan_portable(start, end, &mut check),
        }
        found
    }

    /// The most significant 32 bits of the hash of the header with `nonce` (as a little-endian
    /// 256-bit number): the filter value.
    fn portable_hi(&self, block2: &mut [u8; 64], nonce: u32) -> u32 {
        block2[12..16].copy_from_slice(&nonce.to_le_bytes());
        let mut state = self.mid;
        compress(&mut state, block2);
        let mut block3 = [0u8; 64];
        for (chunk, word) in block3.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        block3[32] = 0x80;
        block3[62] = 0x01; // 256 bits
        let mut state = IV;
        compress(&mut state, &block3);
        state[7].swap_bytes()
    }

    fn second_block(&self) -> [u8; 64] {
        let mut block2 = [0u8; 64];
        for (chunk, word) in block2.chunks_exact_mut(4).zip(self.tail) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        block2[16] = 0x80;
        block2[62] = 0x02; // 640 bits
        block2[63] = 0x80;
        block2
    }

    fn scan_portable(&self, start: u64, end: u64, check: &mut impl FnMut(u32) -> bool) {
        let mut block2 = self.second_block();
        for nonce in start..end {
            let nonce = nonce as u32;
            if self.portable_hi(&mut block2, nonce) <= self.target_hi && check(nonce) {
                return;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod shani {
    //! The SHA-NI kernel. State is kept in the instructions' ABEF/CDGH register layout;
    //! message vectors hold four big-endian words with word 0 in lane 0.

    use super::{Job, IV, K};
    use core::arch::x86_64::*;

    /// Per-job constants: the midstate, the state after the two nonce-independent rounds of
    /// the second block and the `W + K` vectors of the padding words.
    struct Pre {
        mid_abef: __m128i,
        mid_cdgh: __m128i,
        /// ABEF after rounds 0 and 1 of the second block (they use no nonce bits).
        r2_abef: __m128i,
        /// `W2 + K2` in lane 0; lane 1 gets `bswap(nonce) + K3` per nonce.
        wk2: u32,
        /// Message vector 0 of the second block without the nonce word.
        w0: __m128i,
        /// The second block's constant message vectors 1..3 and their `W + K`.
        w1: __m128i,
        w2: __m128i,
        w3: __m128i,
        wk_b2: [__m128i; 3],
        /// The final block's constant message vectors 2..3 (padding) and their `W + K`.
        f2: __m128i,
        f3: __m128i,
        wk_b3: [__m128i; 2],
        iv_abef: __m128i,
        iv_cdgh: __m128i,
    }

    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn k4(i: usize) -> __m128i {
        let k = &K[4 * i..4 * i + 4];
        _mm_set_epi32(k[3] as i32, k[2] as i32, k[1] as i32, k[0] as i32)
    }

    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn to_abef_cdgh(s: &[u32; 8]) -> (__m128i, __m128i) {
        let abef = _mm_set_epi32(s[0] as i32, s[1] as i32, s[4] as i32, s[5] as i32);
        let cdgh = _mm_set_epi32(s[2] as i32, s[3] as i32, s[6] as i32, s[7] as i32);
        (abef, cdgh)
    }

    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn schedule(v0: __m128i, v1: __m128i, v2: __m128i, v3: __m128i) -> __m128i {
        let t1 = _mm_sha256msg1_epu32(v0, v1);
        let t2 = _mm_alignr_epi8(v3, v2, 4);
        _mm_sha256msg2_epu32(_mm_add_epi32(t1, t2), v3)
    }

    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn pre(job: &Job) -> Pre {
        let (mid_abef, mid_cdgh) = to_abef_cdgh(&job.mid);
        let [t0, t1, t2] = job.tail;
        let wk01 = _mm_set_epi32(0, 0, t1.wrapping_add(K[1]) as i32, t0.wrapping_add(K[0]) as i32);
        let r2_abef = _mm_sha256rnds2_epu32(mid_cdgh, mid_abef, wk01);
        let w1 = _mm_set_epi32(0, 0, 0, 0x8000_0000u32 as i32);
        let w2 = _mm_setzero_si128();
        let w3 = _mm_set_epi32(640, 0, 0, 0);
        let f2 = _mm_set_epi32(0, 0, 0, 0x8000_0000u32 as i32);
        let f3 = _mm_set_epi32(256, 0, 0, 0);
        let (iv_abef, iv_cdgh) = to_abef_cdgh(&IV);
        Pre {
            mid_abef,
            mid_cdgh,
            r2_abef,
            wk2: t2.wrapping_add(K[2]),
            w0: _mm_set_epi32(0, t2 as i32, t1 as i32, t0 as i32),
            w1,
            w2,
            w3,
            wk_b2: [_mm_add_epi32(w1, k4(1)), _mm_add_epi32(w2, k4(2)), _mm_add_epi32(w3, k4(3))],
            f2,
            f3,
            wk_b3: [_mm_add_epi32(f2, k4(2)), _mm_add_epi32(f3, k4(3))],
            iv_abef,
            iv_cdgh,
        }
    }

    /// Four rounds on every lane with precomputed `W + K` vectors.
    macro_rules! rounds4 {
        ($l:ident, $abef:ident, $cdgh:ident, $wk:expr) => {{
            let mut t = [_mm_setzero_si128(); $l];
            for l in 0..$l {
                let wk = $wk[l];
                $cdgh[l] = _mm_sha256rnds2_epu32($cdgh[l], $abef[l], wk);
                t[l] = _mm_shuffle_epi32(wk, 0x0E);
            }
            for l in 0..$l {
                $abef[l] = _mm_sha256rnds2_epu32($abef[l], $cdgh[l], t[l]);
            }
        }};
    }

    /// Schedules message vector `$e` from `$a..$d` and runs its four rounds (group `$i`).
    macro_rules! sched4 {
        ($l:ident, $abef:ident, $cdgh:ident, $m:ident, $i:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr) => {{
            let mut wk = [_mm_setzero_si128(); $l];
            for l in 0..$l {
                $m[l][$e] = schedule($m[l][$a], $m[l][$b], $m[l][$c], $m[l][$d]);
                wk[l] = _mm_add_epi32($m[l][$e], k4($i));
            }
            rounds4!($l, $abef, $cdgh, wk);
        }};
    }

    /// Groups 4..=14 of a compression (message vectors 0..3 are in slots 0..3 of `$m`), after
    /// which vector 4's successor for group 15 is scheduled by the caller.
    macro_rules! groups_4_to_14 {
        ($l:ident, $abef:ident, $cdgh:ident, $m:ident) => {{
            sched4!($l, $abef, $cdgh, $m, 4, 0, 1, 2, 3, 4);
            sched4!($l, $abef, $cdgh, $m, 5, 1, 2, 3, 4, 0);
            sched4!($l, $abef, $cdgh, $m, 6, 2, 3, 4, 0, 1);
            sched4!($l, $abef, $cdgh, $m, 7, 3, 4, 0, 1, 2);
            sched4!($l, $abef, $cdgh, $m, 8, 4, 0, 1, 2, 3);
            sched4!($l, $abef, $cdgh, $m, 9, 0, 1, 2, 3, 4);
            sched4!($l, $abef, $cdgh, $m, 10, 1, 2, 3, 4, 0);
            sched4!($l, $abef, $cdgh, $m, 11, 2, 3, 4, 0, 1);
            sched4!($l, $abef, $cdgh, $m, 12, 3, 4, 0, 1, 2);
            sched4!($l, $abef, $cdgh, $m, 13, 4, 0, 1, 2, 3);
            sched4!($l, $abef, $cdgh, $m, 14, 0, 1, 2, 3, 4);
        }};
    }

    /// The filter values (most significant 32 bits of the hash as a little-endian number) of
    /// `L` consecutive nonces starting at `nonce`.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn hi_lanes<const L: usize>(p: &Pre, nonce: u32) -> [u32; L] {
        // Second block, from the precomputed state after rounds 0 and 1.
        let mut abef = [p.mid_abef; L];
        let mut cdgh = [p.r2_abef; L];
        let mut m = [[p.w0, p.w1, p.w2, p.w3, p.w0]; L];
        for l in 0..L {
            let n = nonce.wrapping_add(l as u32).swap_bytes();
            m[l][0] = _mm_insert_epi32(p.w0, n as i32, 3);
            let wk = _mm_set_epi32(0, 0, n.wrapping_add(K[3]) as i32, p.wk2 as i32);
            // Rounds 2 and 3: the CDGH role is played by the midstate's ABEF.
            abef[l] = _mm_sha256rnds2_epu32(abef[l], cdgh[l], wk);
        }
        rounds4!(L, abef, cdgh, [p.wk_b2[0]; L]);
        rounds4!(L, abef, cdgh, [p.wk_b2[1]; L]);
        rounds4!(L, abef, cdgh, [p.wk_b2[2]; L]);
        groups_4_to_14!(L, abef, cdgh, m);
        sched4!(L, abef, cdgh, m, 15, 1, 2, 3, 4, 0);

        // Final block: the digest (feed-forward added) is the message.
        for l in 0..L {
            let a = _mm_add_epi32(abef[l], p.mid_abef);
            let c = _mm_add_epi32(cdgh[l], p.mid_cdgh);
            let feba = _mm_shuffle_epi32(a, 0x1B);
            let dchg = _mm_shuffle_epi32(c, 0xB1);
            m[l][0] = _mm_blend_epi16(feba, dchg, 0xF0); // words 0..3
            m[l][1] = _mm_alignr_epi8(dchg, feba, 8); // words 4..7
            m[l][2] = p.f2;
            m[l][3] = p.f3;
            abef[l] = p.iv_abef;
            cdgh[l] = p.iv_cdgh;
        }
        let mut wk = [_mm_setzero_si128(); L];
        for l in 0..L {
            wk[l] = _mm_add_epi32(m[l][0], k4(0));
        }
        rounds4!(L, abef, cdgh, wk);
        for l in 0..L {
            wk[l] = _mm_add_epi32(m[l][1], k4(1));
        }
        rounds4!(L, abef, cdgh, wk);
        rounds4!(L, abef, cdgh, [p.wk_b3[0]; L]);
        rounds4!(L, abef, cdgh, [p.wk_b3[1]; L]);
        groups_4_to_14!(L, abef, cdgh, m);
        // Group 15, first half only: rounds 60 and 61 yield ABEF of state 62, whose F is the
        // final H before the feed-forward (H64 = F62). Rounds 62 and 63 are not needed.
        let mut out = [0u32; L];
        for l in 0..L {
            let w = schedule(m[l][1], m[l][2], m[l][3], m[l][4]);
            let wk = _mm_add_epi32(w, k4(15));
            let s62 = _mm_sha256rnds2_epu32(cdgh[l], abef[l], wk);
            out[l] = (_mm_cvtsi128_si32(s62) as u32).wrapping_add(IV[7]).swap_bytes();
        }
        out
    }

    /// Scans `start..end` (`end <= 2^32`), calling `check` on every nonce that passes the
    /// 32-bit filter until it returns true. Callers must make sure the CPU has SHA and SSE4.1.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn scan<const L: usize>(job: &Job, start: u64, end: u64, check: &mut impl FnMut(u32) -> bool) {
        let p = pre(job);
        let mut n = start;
        while n < end {
            let his = hi_lanes::<L>(&p, n as u32);
            for (l, hi) in his.into_iter().enumerate() {
                let nonce = n + l as u64;
                if hi <= job.target_hi && nonce < end && check(nonce as u32) {
                    return;
                }
            }
            n += L as u64;
        }
    }

    /// The filter values of `L` nonces, for tests of every lane count.
    #[cfg(test)]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn hi<const L: usize>(job: &Job, nonce: u32) -> [u32; L] {
        hi_lanes::<L>(&pre(job), nonce)
    }
}

// ---------------------------------------------------------------------------------------------
// The multi-threaded miner
// ---------------------------------------------------------------------------------------------

/// Progress of a search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Nonces hashed so far.
    pub hashes: u64,
    pub elapsed: Duration,
    /// Hashes per second over `elapsed`.
    pub rate: f64,
}

impl Stats {
    fn new(hashes: u64, elapsed: Duration) -> Stats {
        let secs = elapsed.as_secs_f64();
        Stats { hashes, elapsed, rate: if secs > 0.0 { hashes as f64 / secs } else { 0.0 } }
    }
}

/// The result of [`mine`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mined {
    /// The header with a nonce that meets the target, if one was found.
    pub header: Option<Header>,
    /// All 2^32 nonces were tried without success: change the extra nonce (and so the merkle
    /// root) or the time, and mine again.
    pub exhausted: bool,
    pub stats: Stats,
}

/// Nonces a worker hashes between looks at the cancel flag (about 10-30 ms).
const CHUNK: u64 = 1 << 17;

/// How often `progress` is called.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Searches the whole nonce space of `header` (its own nonce is ignored) for a hash at or
/// below `target`, on `threads` threads (at least one) each owning a contiguous slice of the
/// space. Stops when a nonce is found, the space is exhausted or `cancel` is set; `progress`
/// is called on the calling thread every [`PROGRESS_EVERY`] and once at the end.
pub fn mine(header: &Header, target: Target, threads: usize, cancel: &AtomicBool, progress: impl Fn(Stats)) -> Mined {
    let job = Job::new(header, target);
    let threads = threads.max(1) as u64;
    let hashes = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<Option<u32>>();
    let space: u64 = 1 << 32;

    let found = std::thread::scope(|s| {
        for t in 0..threads {
            let (job, hashes, stop, tx) = (&job, &hashes, &stop, tx.clone());
            let range = (space * t / threads)..(space * (t + 1) / threads);
            s.spawn(move || {
                let mut n = range.start;
                let mut result = None;
                while n < range.end && !stop.load(Ordering::Relaxed) && !cancel.load(Ordering::Relaxed) {
                    let end = (n + CHUNK).min(range.end);
                    let hit = job.scan(n..end);
                    hashes.fetch_add(hit.map_or(end, |nonce| u64::from(nonce) + 1) - n, Ordering::Relaxed);
                    if hit.is_some() {
                        result = hit;
                        break;
                    }
                    n = end;
                }
                let _ = tx.send(result);
            });
        }
        drop(tx);

        let mut done = 0;
        let mut found = None;
        let mut next_report = started + PROGRESS_EVERY;
        while done < threads {
            let wait = next_report.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(hit) => {
                    done += 1;
                    if let Some(nonce) = hit {
                        found.get_or_insert(nonce);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    progress(Stats::new(hashes.load(Ordering::Relaxed), started.elapsed()));
                    next_report += PROGRESS_EVERY;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        found
    });

    let stats = Stats::new(hashes.load(Ordering::Relaxed), started.elapsed());
    progress(stats);
    Mined {
        header: found.map(|nonce| job.header_with(nonce)),
        exhausted: found.is_none() && stats.hashes >= space,
        stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::hashes::sha256d;

    /// A small deterministic generator (xorshift64*), so tests need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn bytes32(&mut self) -> [u8; 32] {
            let mut b = [0u8; 32];
            for c in b.chunks_exact_mut(8) {
                c.copy_from_slice(&self.next().to_le_bytes());
            }
            b
        }
        fn header(&mut self) -> Header {
            Header {
                version: Version::from_consensus(self.next() as i32),
                prev_blockhash: BlockHash::from_byte_array(self.bytes32()),
                merkle_root: TxMerkleNode::from_byte_array(self.bytes32()),
                time: self.next() as u32,
                bits: CompactTarget::from_consensus(self.next() as u32),
                nonce: 0,
            }
        }
    }

    fn reference_hi(header: &Header) -> u32 {
        let hash = header.block_hash().to_byte_array();
        u32::from_le_bytes(hash[28..32].try_into().unwrap())
    }

    #[test]
    fn portable_filter_matches_block_hash() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..500 {
            let h = rng.header();
            let job = Job::with_backend(&h, Target::MAX, Backend::Portable);
            let mut block2 = job.second_block();
            for nonce in [0, u32::MAX, rng.next() as u32, rng.next() as u32] {
                assert_eq!(job.portable_hi(&mut block2, nonce), reference_hi(&job.header_with(nonce)));
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn shani_filter_matches_block_hash_for_every_lane_count() {
        if !Backend::ShaNi.available() {
            eprintln!("no SHA-NI on this CPU: skipped");
            return;
        }
        fn check<const L: usize>(rng: &mut Rng) {
            for _ in 0..200 {
                let h = rng.header();
                let job = Job::with_backend(&h, Target::MAX, Backend::ShaNi);
                // Includes the wrap from u32::MAX to 0 across lanes.
                for start in [0, u32::MAX - 1, rng.next() as u32] {
                    // SAFETY: SHA-NI availability checked above.
                    let got = unsafe { shani::hi::<L>(&job, start) };
                    for (l, hi) in got.into_iter().enumerate() {
                        let nonce = start.wrapping_add(l as u32);
                        assert_eq!(hi, reference_hi(&job.header_with(nonce)), "lanes {L} nonce {nonce}");
                    }
                }
            }
        }
        let mut rng = Rng(0xfeed_beef_0bad_cafe);
        check::<1>(&mut rng);
        check::<2>(&mut rng);
        check::<3>(&mut rng);
        check::<4>(&mut rng);
    }

    /// Both backends find exactly the nonces a brute-force `block_hash` loop finds, including
    /// targets whose top 32 bits equal the hash's (the filter's boundary).
    #[test]
    fn scan_finds_the_first_nonce_meeting_the_target_on_both_backends() {
        let mut rng = Rng(42);
        for round in 0..20 {
            let h = rng.header();
            // About one nonce in 64 meets it.
            let mut t = [0xffu8; 32];
            t[31] = 0x03;
            if round % 2 == 1 {
                // A target whose top word equals that of nonce 37's hash: the filter lets
                // through hashes above the target; the full check must refuse them.
                let mut b = Header { nonce: 37, ..h }.block_hash().to_byte_array();
                b[..28].fill(0);
                t = b;
            }
            let target = Target::from_le_bytes(t);
            let expected = (0u32..4096).find(|&n| target.is_met_by(Header { nonce: n, ..h }.block_hash()));
            for backend in [Backend::Portable, Backend::ShaNi] {
                let job = Job::with_backend(&h, target, backend);
                assert_eq!(job.scan(0..4096), expected, "round {round} {backend:?}");
                // A range that starts mid-way and is not a multiple of the lane count.
                let later = expected.map(|n| n + 1).unwrap_or(0);
                let expected_later = (later..4097).find(|&n| target.is_met_by(Header { nonce: n, ..h }.block_hash()));
                assert_eq!(job.scan(u64::from(later)..4097), expected_later, "{backend:?}");
            }
        }
    }

    #[test]
    fn mine_finds_a_header_meeting_the_target() {
        let mut rng = Rng(7);
        let h = rng.header();
        let target = Target::MAX_ATTAINABLE_REGTEST;
        let cancel = AtomicBool::new(false);
        let mined = mine(&h, target, 2, &cancel, |_| {});
        let found = mined.header.expect("regtest target is met within a few nonces");
        assert!(target.is_met_by(found.block_hash()));
        assert_eq!(Header { nonce: found.nonce, ..h }, found);
        assert!(!mined.exhausted);
        assert!(mined.stats.hashes >= 1);
        // One in 2^16 hashes meets this: found across threads within the space.
        let mut t = [0u8; 32];
        t[..30].fill(0xff);
        let target = Target::from_le_bytes(t);
        let mined = mine(&h, target, 2, &cancel, |_| {});
        assert!(target.is_met_by(mined.header.expect("found").block_hash()));
    }

    #[test]
    fn mine_stops_when_cancelled() {
        let h = Rng(9).header();
        let cancel = AtomicBool::new(true);
        let mined = mine(&h, Target::ZERO, 2, &cancel, |_| {});
        assert_eq!(mined.header, None);
        assert!(!mined.exhausted);
    }

    fn p2wpkh_spend(seed: u8, with_witness: bool) -> Transaction {
        Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint { txid: bitcoin::Txid::from_raw_hash(sha256d::Hash::hash(&[seed])), vout: 0 },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: if with_witness {
                    Witness::from_slice(&[vec![seed; 72], vec![2; 33]])
                } else {
                    Witness::new()
                },
            }],
            output: vec![TxOut { value: Amount::from_sat(1000), script_pubkey: ScriptBuf::new_op_return([seed]) }],
        }
    }

    #[test]
    fn build_block_commits_to_transactions_and_witnesses() {
        let cases: [(&str, Vec<Transaction>, u32, &[u8]); 5] = [
            ("coinbase only", vec![], 1, b""),
            ("legacy txs", vec![p2wpkh_spend(1, false), p2wpkh_spend(2, false)], 17, b"x"),
            ("segwit txs", vec![p2wpkh_spend(1, true), p2wpkh_spend(2, true)], 300, b"nonce"),
            ("mixed", vec![p2wpkh_spend(3, false), p2wpkh_spend(4, true)], 1_000_000, &[0; 8]),
            ("max extra nonce", vec![p2wpkh_spend(5, true)], 500_000, &[7; 94]),
        ];
        for (name, txs, height, extra) in cases {
            let segwit = txs.iter().any(|t| !t.input[0].witness.is_empty());
            let n = txs.len();
            let block = build_block(
                BlockHash::all_zeros(),
                height,
                1_700_000_000,
                CompactTarget::from_consensus(0x207fffff),
                Version::from_consensus(0x2000_0000),
                txs,
                Amount::from_sat(50 * 100_000_000),
                ScriptBuf::new_op_return([1, 2, 3]),
                extra,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(block.txdata.len(), n + 1, "{name}");
            assert!(block.txdata[0].is_coinbase(), "{name}");
            assert!(block.check_merkle_root(), "{name}");
            assert!(block.check_witness_commitment(), "{name}");
            let cb = &block.txdata[0];
            assert_eq!(cb.output.len(), if segwit { 2 } else { 1 }, "{name}");
            assert_eq!(cb.input[0].witness.len(), usize::from(segwit), "{name}");
            // Core's BIP34 check: the scriptSig starts with `CScript() << height`.
            let expect = Builder::new().push_int(i64::from(height)).into_script();
            assert!(cb.input[0].script_sig.as_bytes().starts_with(expect.as_bytes()), "{name}");
            assert!((2..=100).contains(&cb.input[0].script_sig.len()), "{name}");
            if height > 16 {
                assert_eq!(block.bip34_block_height(), Ok(u64::from(height)), "{name}");
            }
        }
    }

    #[test]
    fn build_block_refuses_an_oversized_extra_nonce() {
        let err = build_block(
            BlockHash::all_zeros(),
            500_000,
            0,
            CompactTarget::from_consensus(0x207fffff),
            Version::TWO,
            vec![],
            Amount::ZERO,
            ScriptBuf::new(),
            &[0; 95],
        )
        .unwrap_err();
        // 4 (height push) + 2 (OP_PUSHDATA1, length) + 95 = 101 bytes.
        assert_eq!(err, BuildError::CoinbaseScriptTooLong { height: 500_000, extra_nonce: 95 });
    }

    #[test]
    fn a_built_block_mines_and_keeps_its_commitments() {
        let block = build_block(
            BlockHash::all_zeros(),
            1,
            1_700_000_000,
            CompactTarget::from_consensus(0x207fffff),
            Version::TWO,
            vec![p2wpkh_spend(9, true)],
            Amount::from_sat(5_000_000_000),
            ScriptBuf::new(),
            b"",
        )
        .unwrap();
        let cancel = AtomicBool::new(false);
        let mined = mine(&block.header, block.header.target(), 1, &cancel, |_| {});
        let block = Block { header: mined.header.unwrap(), ..block };
        assert!(block.header.validate_pow(block.header.target()).is_ok());
        assert!(block.check_merkle_root() && block.check_witness_commitment());
    }
}
