//! What the node's benchmarks share: a devnet chain mined in process and payments signed
//! beforehand, each spending its own coin of its own key.

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::rand::rngs::StdRng;
use bitcoin::secp256k1::rand::Rng;
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{
    absolute::LockTime, transaction::Version, Amount, CompressedPublicKey, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxOut, Witness,
};
use micro_os_node::mining;
use micro_os_node::node::Node;

/// Share of payments that pay a high fee rate.
pub const HIGH: f64 = 0.1;

pub struct Key {
    sk: SecretKey,
    pk: CompressedPublicKey,
    script: ScriptBuf,
}

pub fn key(secp: &Secp256k1<bitcoin::secp256k1::All>, rng: &mut StdRng) -> Key {
    let sk = SecretKey::new(rng);
    let pk = CompressedPublicKey::from_private_key(secp, &bitcoin::PrivateKey::new(sk, bitcoin::Network::Regtest))
        .expect("compressed");
    Key { sk, pk, script: ScriptBuf::new_p2wpkh(&pk.wpubkey_hash()) }
}

pub fn spend(
    secp: &Secp256k1<bitcoin::secp256k1::All>,
    k: &Key,
    coin: OutPoint,
    value: Amount,
    outputs: Vec<TxOut>,
) -> Transaction {
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: coin,
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        }],
        output: outputs,
    };
    let hash =
        SighashCache::new(&tx).p2wpkh_signature_hash(0, &k.script, value, EcdsaSighashType::All).expect("sighash");
    let sig = secp.sign_ecdsa(&Message::from_digest(hash.to_byte_array()), &k.sk);
    tx.input[0].witness =
        Witness::p2wpkh(&bitcoin::ecdsa::Signature { signature: sig, sighash_type: EcdsaSighashType::All }, &k.pk.0);
    tx
}

/// A payment of the trace: the transaction and whether it pays a high fee rate.
pub struct Payment {
    pub tx: Transaction,
    pub high: bool,
}

/// Mines a devnet chain and signs `n` payments, each spending its own coin of its own key.
pub fn payments(node: &Node, n: usize, rng: &mut StdRng) -> Vec<Payment> {
    let secp = Secp256k1::new();
    let params = node.params();
    let miner = key(&secp, rng);
    const FAN: usize = 1000;
    let coinbases = n.div_ceil(FAN);
    mining::generate(node, coinbases as u32 + params.coinbase_maturity, &miner.script).expect("mine");
    let keys: Vec<Key> = (0..n).map(|_| key(&secp, rng)).collect();
    let mut coins = Vec::new();
    for c in 0..coinbases {
        let hash = node.hash_at(c as u32 + 1).expect("store").expect("block");
        let block = node.block(&hash).expect("store").expect("block");
        let cb = &block.txdata[0];
        let value = cb.output[0].value;
        let share = (value - Amount::from_sat(100_000)) / FAN as u64;
        let outs: Vec<TxOut> =
            (0..FAN).map(|i| TxOut { value: share, script_pubkey: keys[(c * FAN + i) % n].script.clone() }).collect();
        let fan = spend(&secp, &miner, OutPoint::new(cb.compute_txid(), 0), value, outs);
        let txid = node.accept_tx(fan).expect("fan-out");
        for i in 0..FAN {
            if c * FAN + i < n {
                coins.push((OutPoint::new(txid, i as u32), share, c * FAN + i));
            }
        }
    }
    mining::generate(node, 1, &miner.script).expect("confirm the fan-outs");
    let sink = key(&secp, rng).script;
    coins
        .into_iter()
        .map(|(coin, value, k)| {
            let high = rng.gen_bool(HIGH);
            let rate: f64 = if high { rng.gen_range(50.0..100.0) } else { rng.gen_range(1.0..20.0) };
            let fee = Amount::from_sat((rate * 110.0) as u64);
            let tx =
                spend(&secp, &keys[k], coin, value, vec![TxOut { value: value - fee, script_pubkey: sink.clone() }]);
            Payment { tx, high }
        })
        .collect()
}

/// Takes `txs` out of the mempool again, so the same payments can be replayed.
pub fn unwind(node: &Node, txs: &[Payment]) {
    let mut st = node.state();
    for p in txs {
        st.mempool.remove_recursive(&p.tx.compute_txid());
    }
}
