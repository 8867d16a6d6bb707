//! The UTXO commitment and snapshots (fast sync).
//!
//! Every `Params::utxo_commit_every` blocks (K), the coinbase of the block at height h
//! (h a multiple of K) carries `OP_RETURN "MOSU" <32 bytes>`: the hash of the UTXO set
//! that block is connected to, the state after block h−1. Full nodes check it when they
//! connect the block, so it is consensus: a node that trusts the header chain's proof of
//! work can start from a snapshot of the UTXO set at h−1 whose hash matches, and validate
//! forward from there. A wrong snapshot cannot match.
//!
//! Key design decision: the hash is SHA-256 over the coins in (txid, vout) order — the
//! order of the SQLite table's primary key, so computing it is one ordered scan — each coin
//! as txid (32), vout (u32 LE), amount (u64 LE), height (u32 LE), coinbase (1), script
//! length (u32 LE) and script. A snapshot is the same bytes behind a header naming its base
//! block and height, so its hash is checked as it is read.

use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::script::PushBytesBuf;
use bitcoin::{Amount, BlockHash, OutPoint, ScriptBuf, Transaction, TxOut, Txid};

use crate::params::Params;
use crate::validation::Coin;

/// The commitment's tag after `OP_RETURN`.
pub const TAG: &[u8; 4] = b"MOSU";

/// Whether the block at `height` must commit to the UTXO set.
#[allow(clippy::manual_is_multiple_of)] // is_multiple_of is newer than our MSRV 1.85
pub fn required(params: &Params, height: u32) -> bool {
    let k = params.utxo_commit_every;
    k > 0 && height > 0 && height % k == 0
}

/// The coinbase output carrying `hash`.
pub fn commitment_output(hash: &[u8; 32]) -> TxOut {
    let mut data = TAG.to_vec();
    data.extend_from_slice(hash);
    let push = PushBytesBuf::try_from(data).expect("36 bytes fit a push");
    TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new_op_return(push) }
}

/// The commitment a coinbase carries, if any (its first `MOSU` output).
pub fn find(coinbase: &Transaction) -> Option<[u8; 32]> {
    coinbase.output.iter().find_map(|o| {
        let b = o.script_pubkey.as_bytes();
        // OP_RETURN, a 36-byte push, the tag
        (b.len() == 38 && b[0] == 0x6a && b[1] == 36 && &b[2..6] == TAG).then(|| b[6..38].try_into().expect("32"))
    })
}

/// One coin's bytes, as the hash and a snapshot hold them.
pub fn encode_coin(out: &mut Vec<u8>, op: &OutPoint, coin: &Coin) {
    out.extend_from_slice(op.txid.as_byte_array());
    out.extend_from_slice(&op.vout.to_le_bytes());
    out.extend_from_slice(&coin.output.value.to_sat().to_le_bytes());
    out.extend_from_slice(&coin.height.to_le_bytes());
    out.push(u8::from(coin.coinbase));
    let script = coin.output.script_pubkey.as_bytes();
    out.extend_from_slice(&(script.len() as u32).to_le_bytes());
    out.extend_from_slice(script);
}

/// Hashes coins given in (txid, vout) order.
#[derive(Default)]
pub struct Hasher {
    engine: sha256::HashEngine,
    buf: Vec<u8>,
    count: u64,
}

impl Hasher {
    pub fn add(&mut self, op: &OutPoint, coin: &Coin) {
        self.buf.clear();
        encode_coin(&mut self.buf, op, coin);
        self.engine.input(&self.buf);
        self.count += 1;
    }

    pub fn finish(self) -> [u8; 32] {
        let mut e = self.engine;
        e.input(&self.count.to_le_bytes());
        sha256::Hash::from_engine(e).to_byte_array()
    }
}

/// A UTXO set at a block: what fast sync loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The block the set is the state after.
    pub base: BlockHash,
    pub height: u32,
    /// In (txid, vout) order.
    pub coins: Vec<(OutPoint, Coin)>,
}

/// Why snapshot bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("utxo snapshot: {0}")]
pub struct SnapshotError(pub String);

impl Snapshot {
    /// The set's commitment hash.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Hasher::default();
        for (op, c) in &self.coins {
            h.add(op, c);
        }
        h.finish()
    }

    /// base (32), height (u32 LE), coin count (u64 LE), the coins.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(44 + self.coins.len() * 64);
        out.extend_from_slice(self.base.as_byte_array());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&(self.coins.len() as u64).to_le_bytes());
        for (op, c) in &self.coins {
            encode_coin(&mut out, op, c);
        }
        out
    }

    /// Parses [`Snapshot::to_bytes`]; coins out of (txid, vout) order are refused.
    pub fn from_bytes(b: &[u8]) -> Result<Snapshot, SnapshotError> {
        let bad = |why: &str| SnapshotError(why.to_string());
        let mut r = Reader { b, at: 0 };
        let base = BlockHash::from_byte_array(r.take(32).ok_or_else(|| bad("no header"))?.try_into().expect("32"));
        let height = r.u32().ok_or_else(|| bad("no height"))?;
        let n = r.u64().ok_or_else(|| bad("no coin count"))?;
        let mut coins: Vec<(OutPoint, Coin)> = Vec::with_capacity(n.min(1 << 20) as usize);
        for i in 0..n {
            let coin = (|| {
                let txid = Txid::from_byte_array(r.take(32)?.try_into().ok()?);
                let vout = r.u32()?;
                let value = Amount::from_sat(r.u64()?);
                let height = r.u32()?;
                let coinbase = r.take(1)?[0] != 0;
                let len = r.u32()? as usize;
                let script = ScriptBuf::from_bytes(r.take(len)?.to_vec());
                Some((
                    OutPoint { txid, vout },
                    Coin { output: TxOut { value, script_pubkey: script }, height, coinbase },
                ))
            })()
            .ok_or_else(|| SnapshotError(format!("coin {i} of {n} is cut short")))?;
            if let Some((last, _)) = coins.last() {
                if (last.txid.to_byte_array(), last.vout) >= (coin.0.txid.to_byte_array(), coin.0.vout) {
                    return Err(SnapshotError(format!("coin {i} is out of (txid, vout) order")));
                }
            }
            coins.push(coin);
        }
        if r.at != b.len() {
            return Err(bad("bytes after the last coin"));
        }
        Ok(Snapshot { base, height, coins })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coin(v: u64) -> Coin {
        Coin {
            output: TxOut { value: Amount::from_sat(v), script_pubkey: ScriptBuf::new_op_return([1u8; 3]) },
            height: 7,
            coinbase: true,
        }
    }

    #[test]
    fn snapshots_round_trip_and_their_hash_sees_every_coin() {
        let a = OutPoint { txid: Txid::from_byte_array([1; 32]), vout: 0 };
        let b = OutPoint { txid: Txid::from_byte_array([1; 32]), vout: 1 };
        let s =
            Snapshot { base: BlockHash::from_byte_array([9; 32]), height: 99, coins: vec![(a, coin(5)), (b, coin(6))] };
        let back = Snapshot::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        let mut other = s.clone();
        other.coins[1].1.output.value = Amount::from_sat(7);
        assert_ne!(other.hash(), s.hash(), "an amount changed");
        other = s.clone();
        other.coins.pop();
        assert_ne!(other.hash(), s.hash(), "a coin missing");
        let mut bytes = s.to_bytes();
        bytes.pop();
        assert!(Snapshot::from_bytes(&bytes).unwrap_err().0.contains("cut short"));
        let swapped = Snapshot { coins: vec![(b, coin(6)), (a, coin(5))], ..s.clone() };
        assert!(Snapshot::from_bytes(&swapped.to_bytes()).unwrap_err().0.contains("order"));
        // the commitment output is found again, and only with its tag
        let tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![],
            output: vec![commitment_output(&s.hash())],
        };
        assert_eq!(find(&tx), Some(s.hash()));
        assert!(required(Params::devnet(), 100) && !required(Params::devnet(), 99) && !required(Params::devnet(), 0));
    }
}
