//! Measures block validation against libsecp256k1's raw ECDSA verification rate, in one run:
//!
//! * ours, connect: `ChainState::accept_block` of a block of 2,000 P2WPKH spends on a devnet
//!   chain state in SQLite (header and context checks, input checks, signature verification,
//!   the UTXO, undo and tx-index writes in one SQLite transaction). A block connects once, so
//!   every run opens a fresh copy of the database as it was before the block.
//! * ours, validation only: `check_block_txids`, then `tx_input_checks` of every spend against
//!   an in-memory `CoinView` inside `verify_while`, which verifies the signature checks (key
//!   and signature parsing, sighashes, ECDSA) on the other cores as they come and on this
//!   one at the end, as the chain state does; no storage.
//! * the peer: `Secp256k1::verify_ecdsa` (rust-bitcoin's `secp256k1`, the same library and a
//!   verification-only context like ours) of the same 2,000 (message, signature, key) triples,
//!   already parsed; on as many threads as this process has cores (see below).
//!
//! The workload is built for real: a coinbase paying 2,000 P2WPKH outputs to 2,000 keys,
//! `coinbase_maturity` empty blocks, then a block (`miner::build_block`) of 2,000 one-input
//! transactions each spending one of those outputs, signed with `SighashCache` and
//! `sign_ecdsa`. Every block is mined (devnet's pow limit: a few nonces) and accepted.
//!
//! Cores: from 64 signatures up, the library verifies on the calling thread and one worker per
//! other core (`available_parallelism()`, which honours the CPU affinity); on a single core,
//! on the calling thread alone. Run it under `taskset -c 0` for the per-core figures (`bash
//! bench/run.sh chain` does both, pinned and not). The three measurements of a round
//! are interleaved and the median of the rounds is reported.
//!
//! `cargo run --release -p micro-os-chain --example validate_bench -- [--txs N] [--runs R]`

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitcoin::block::Version;
use bitcoin::hashes::Hash;
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute, transaction, Amount, Block, CompressedPublicKey, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Witness,
};
use micro_os_chain::chainstate::ChainState;
use micro_os_chain::miner;
use micro_os_chain::params::Params;
use micro_os_chain::validation::{check_block_txids, tx_input_checks, verify_while, Coin, Reject};

/// One signature to verify, as the raw peer gets it.
type Triple = (Message, ecdsa::Signature, PublicKey);

/// The chain before the spending block, and that block.
struct Workload {
    /// The SQLite file (closed) with the chain up to the spending block's parent.
    db: PathBuf,
    /// The block of `txs` P2WPKH spends.
    block: Block,
    /// Its height.
    height: u32,
    /// The coins it spends, for the in-memory view.
    coins: std::collections::HashMap<OutPoint, Coin>,
    /// What each of its signatures checks.
    triples: Vec<Triple>,
    /// The clock handed to `accept_block`.
    now: u64,
}

fn main() {
    let mut txs = 2000usize;
    let mut runs = 11usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> usize {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--txs" => txs = value("--txs").max(1),
            "--runs" => runs = value("--runs").max(5),
            other => {
                eprintln!("unknown argument {other}\nusage: validate_bench [--txs N] [--runs R (at least 5)]");
                std::process::exit(2);
            }
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = if threads == 1 { "1 core".to_string() } else { format!("{threads} cores") };
    println!(
        "{txs} P2WPKH spends in one block, {runs} rounds (median), {cores} available to this process \
         (signature verification on {threads} thread(s)), cpu: {}",
        common::cpu_model()
    );

    let dir = tempfile::tempdir().expect("a temporary directory");
    let started = Instant::now();
    let w = build(dir.path(), txs);
    println!(
        "workload: {} blocks mined and accepted, then the spending block mined at height {} ({} tx, {} weight \
         units), built in {:.1} s",
        w.height - 1,
        w.height,
        w.block.txdata.len(),
        w.block.weight().to_wu(),
        started.elapsed().as_secs_f64()
    );

    let secp = Secp256k1::verification_only();
    let mut connect = Vec::new();
    let mut validation = Vec::new();
    let mut parts = [Vec::new(), Vec::new(), Vec::new()];
    let mut raw = Vec::new();
    for run in 0..runs {
        // The three measurements of a round, started from a different one each round so that
        // none always runs first (or right after the connect's fsyncs).
        for step in (0..3).map(|k| (run + k) % 3) {
            match step {
                0 => connect.push(measure_connect(&w, dir.path(), run)),
                1 => {
                    let (total, split) = measure_validation(&w, run == 0);
                    validation.push(total);
                    for (p, d) in parts.iter_mut().zip(split) {
                        p.push(d);
                    }
                }
                _ => {
                    // The peer: raw verify_ecdsa of the same triples, on as many threads as ours.
                    let t = Instant::now();
                    raw_verify(&secp, &w.triples, threads);
                    raw.push(t.elapsed());
                }
            }
        }
    }

    let rate = |d: Duration| txs as f64 / d.as_secs_f64();
    let (c, v, r) = (rate(median(&mut connect)), rate(median(&mut validation)), rate(median(&mut raw)));
    println!();
    println!(
        "{:<28} {:>12} {:>15} {:>19} {:>21} {:>14}",
        "cores", "connect/raw", "validation/raw", "block connect tx/s", "validation only tx/s", "raw verify/s"
    );
    println!(
        "{:<28} {:>12.3} {:>15.3} {:>19.0} {:>21.0} {:>14.0}",
        format!("{cores} ({threads} verify thread(s))"),
        c / r,
        v / r,
        c,
        v,
        r
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let [p0, p1, p2] = parts.map(|mut p| ms(median(&mut p)));
    let (cm, vm, rm) = (ms(median(&mut connect)), ms(median(&mut validation)), ms(median(&mut raw)));
    println!(
        "\nwhere the time goes (median ms for the block): raw verify {rm:.1}; validation only {vm:.1} = \
         check_block {p0:.1} + coin checks on this thread {p1:.1} (signature checks run on the other cores \
         meanwhile) + the rest of the signature checks (key and signature parsing, BIP143 sighashes, ECDSA) \
         {p2:.1}; connect {cm:.1} = validation + {:.1} (header and context checks, the block stored, \
         coin reads and UTXO/undo/tx-index writes in SQLite beside the verification, the fsynced commit)",
        cm - vm
    );
    println!("target: connect/raw >= 0.7");
}

/// Builds the chain in `dir`: a coinbase with `n` P2WPKH outputs, `coinbase_maturity` empty
/// blocks, and the block spending every output (not accepted: it is the measured block).
fn build(dir: &Path, n: usize) -> Workload {
    let params = Params::devnet();
    let secp = Secp256k1::new();
    let keys: Vec<(SecretKey, PublicKey)> = (0..n)
        .map(|i| {
            let mut bytes = [0u8; 32];
            bytes[0] = 0x5a;
            bytes[24..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            let sk = SecretKey::from_slice(&bytes).expect("a valid secret key");
            (sk, sk.public_key(&secp))
        })
        .collect();
    let spks: Vec<ScriptBuf> =
        keys.iter().map(|(_, pk)| ScriptBuf::new_p2wpkh(&CompressedPublicKey(*pk).wpubkey_hash())).collect();

    let db = dir.join("before.sqlite");
    let mut cs = ChainState::open(&db, params).expect("open the chain state");
    let genesis_time = params.genesis.header.time;
    let spacing = params.target_spacing_s as u32;
    // Blocks on schedule from the genesis block, so ASERT keeps the pow limit.
    let time = |height: u32| genesis_time + height * spacing;
    let now =
        SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs().max(u64::from(time(1000)));
    let next = |cs: &mut ChainState, txs: Vec<Transaction>, fees: Amount, edit: &dyn Fn(&mut Block)| -> Block {
        let (tip_height, tip) = cs.tip();
        let height = tip_height + 1;
        let bits = cs.next_bits(&tip).expect("next bits");
        let value = params.block_subsidy(height) + fees;
        let mut block = miner::build_block(
            tip,
            height,
            time(height),
            bits,
            Version::from_consensus(0x2000_0000),
            txs,
            value,
            spks[0].clone(),
            b"validate_bench",
        )
        .expect("build_block");
        edit(&mut block);
        let target = block.header.target();
        while !target.is_met_by(block.block_hash()) {
            block.header.nonce += 1;
        }
        block
    };

    // Height 1: the coinbase pays the subsidy to the n keys.
    let subsidy = params.block_subsidy(1);
    let each = Amount::from_sat(subsidy.to_sat() / n as u64);
    let fan_out = next(&mut cs, Vec::new(), Amount::ZERO, &|b: &mut Block| {
        b.txdata[0].output = spks.iter().map(|s| TxOut { value: each, script_pubkey: s.clone() }).collect();
        b.header.merkle_root = b.compute_merkle_root().expect("merkle root");
    });
    cs.accept_block(&fan_out, now).expect("the fan-out block connects");
    let coinbase = &fan_out.txdata[0];
    let cb_txid = coinbase.compute_txid();
    for _ in 0..params.coinbase_maturity {
        let b = next(&mut cs, Vec::new(), Amount::ZERO, &|_: &mut Block| {});
        cs.accept_block(&b, now).expect("an empty block connects");
    }

    // The measured block: one spend per coinbase output, each paying the next key.
    let fee = Amount::from_sat(1000);
    let mut coins = std::collections::HashMap::new();
    let mut triples = Vec::with_capacity(n);
    let spends: Vec<Transaction> = (0..n)
        .map(|i| {
            let prevout = OutPoint { txid: cb_txid, vout: i as u32 };
            let spent = coinbase.output[i].clone();
            coins.insert(prevout, Coin { output: spent.clone(), height: 1, coinbase: true });
            let mut tx = Transaction {
                version: transaction::Version::TWO,
                lock_time: absolute::LockTime::ZERO,
                input: vec![TxIn {
                    previous_output: prevout,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                }],
                output: vec![TxOut { value: spent.value - fee, script_pubkey: spks[(i + 1) % n].clone() }],
            };
            let sighash = SighashCache::new(&tx)
                .p2wpkh_signature_hash(0, &spent.script_pubkey, spent.value, EcdsaSighashType::All)
                .expect("sighash");
            let msg = Message::from_digest(sighash.to_byte_array());
            let (sk, pk) = keys[i];
            let signature = secp.sign_ecdsa(&msg, &sk);
            let sig = bitcoin::ecdsa::Signature { signature, sighash_type: EcdsaSighashType::All };
            tx.input[0].witness = Witness::p2wpkh(&sig, &pk);
            triples.push((msg, signature, pk));
            tx
        })
        .collect();
    let block = next(&mut cs, spends, fee * n as u64, &|_: &mut Block| {});
    let height = cs.tip().0 + 1;
    drop(cs); // closing the last connection checkpoints the WAL into the database file
    Workload { db, block, height, coins, triples, now }
}

/// `ChainState::accept_block` of the spending block on a fresh copy of the state before it.
fn measure_connect(w: &Workload, dir: &Path, run: usize) -> Duration {
    let db = dir.join(format!("run-{run}.sqlite"));
    copy_db(&w.db, &db);
    let mut cs = ChainState::open(&db, Params::devnet()).expect("open the copy");
    let t = Instant::now();
    let accepted = cs.accept_block(&w.block, w.now).expect("the spending block connects");
    let took = t.elapsed();
    assert_eq!(accepted.tip, (w.height, w.block.block_hash()), "the block became the tip");
    drop(cs);
    remove_db(&db);
    took
}

/// Validation without storage: `check_block_txids`, then `tx_input_checks` of every spend
/// against the in-memory view inside `verify_while`, which verifies the signature checks on
/// the other cores meanwhile and on this one afterwards. Returns the total and its three
/// parts: check_block, the input checks on this thread, the rest of the verification.
fn measure_validation(w: &Workload, compare: bool) -> (Duration, [Duration; 3]) {
    let params = Params::devnet();
    let spends = || w.block.txdata.iter().skip(1);
    let t = Instant::now();
    let txids = check_block_txids(&w.block, params).expect("check_block");
    let t1 = t.elapsed();
    let inputs = spends().map(|tx| tx.input.len()).sum();
    let t2 = verify_while(inputs, |queue| {
        for (tx, txid) in spends().zip(&txids[1..]) {
            let (_fee, checks) = tx_input_checks(tx, *txid, &w.coins, w.height, params)?;
            queue.push(checks);
        }
        Ok::<_, Reject>(t.elapsed())
    })
    .expect("inputs check and signatures verify");
    let total = t.elapsed();
    if compare {
        // Not timed: the (message, signature, key) triples the checks verify, parsed again.
        let mut same = 0;
        for ((tx, txid), (m, s, p)) in spends().zip(&txids[1..]).zip(&w.triples) {
            let (_, checks) = tx_input_checks(tx, *txid, &w.coins, w.height, params).expect("inputs check");
            let parsed = checks.parse().expect("well-formed");
            same += usize::from(parsed.len() == 1 && parsed[0].msg == *m && parsed[0].sig == *s && parsed[0].pk == *p);
        }
        assert_eq!(same, w.triples.len(), "the library checks the same triples as the raw peer");
    }
    (total, [t1, t2 - t1, total - t2])
}

/// `verify_ecdsa` of every triple, split evenly over `threads` threads.
fn raw_verify(secp: &Secp256k1<bitcoin::secp256k1::VerifyOnly>, triples: &[Triple], threads: usize) {
    let verify = |part: &[Triple]| {
        for (msg, sig, pk) in part {
            secp.verify_ecdsa(msg, sig, pk).expect("a valid signature");
        }
    };
    if threads < 2 {
        return verify(triples);
    }
    std::thread::scope(|s| {
        for part in triples.chunks(triples.len().div_ceil(threads)) {
            s.spawn(move || verify(part));
        }
    });
}

/// Copies a closed SQLite database (and its WAL, if one was left) to `to`.
fn copy_db(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy the database");
    let wal = |p: &Path| PathBuf::from(format!("{}-wal", p.display()));
    if wal(from).exists() {
        std::fs::copy(wal(from), wal(to)).expect("copy the WAL");
    }
}

fn remove_db(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}
