//! Transactions as peers push them and `sendrawtransaction` takes them: rust-bitcoin's
//! consensus decoding, `validation::check_transaction`, then a devnet node's `accept_tx`
//! (Core's order: context-free checks, conflicts, inputs from the UTXO set and the
//! mempool, orphans, scripts and signatures).
//!
//! The first byte picks: even, the transaction as it is; odd, with each input pointed at
//! one of the node's mature coinbase outputs, so inputs reach the amount, script and
//! signature checks and not only the missing-input path.
#![no_main]

use std::sync::OnceLock;

use bitcoin::consensus::deserialize;
use bitcoin::Transaction;
use libfuzzer_sys::fuzz_target;
use micro_os_chain::validation::check_transaction;
use micro_os_fuzz::Chain;

static CHAIN: OnceLock<Chain> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else { return };
    let Ok(mut tx) = deserialize::<Transaction>(bytes) else { return };
    let chain = CHAIN.get_or_init(Chain::new);
    if mode % 2 == 1 {
        for (i, input) in tx.input.iter_mut().enumerate() {
            input.previous_output = chain.coinbases[i % chain.coinbases.len()];
        }
    }
    let _ = check_transaction(&tx);
    let _ = chain.node().accept_tx(tx);
});
