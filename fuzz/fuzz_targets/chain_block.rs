//! Blocks, headers, seals and attestations as peers send them (`/micro-os/chain/1` carries
//! their consensus encoding): rust-bitcoin's consensus decoding, then our checks
//! (`validation::check_block`) and a devnet node's `accept_header` / `accept_block` (the
//! contextual checks, the UTXO connect, reorganisation).
//!
//! The first byte picks: 0 a block as it is; 1 a block made to fit the node's tip (parent,
//! bits, a time after the median, merkle root, then a nonce that meets the target), so
//! inputs reach the connect and not only the context-free checks; 2 a header; 3 a seal and
//! an attestation.
#![no_main]

use std::sync::{Mutex, OnceLock};

use bitcoin::consensus::deserialize;
use bitcoin::{block::Header, Block};
use libfuzzer_sys::fuzz_target;
use micro_os_chain::params::Params;
use micro_os_chain::seal::{Attestation, Seal};
use micro_os_chain::validation::check_block;
use micro_os_fuzz::Chain;

static CHAIN: OnceLock<Mutex<Chain>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else { return };
    let mut chain = CHAIN.get_or_init(|| Mutex::new(Chain::new())).lock().unwrap();
    // blocks that connect grow the chain: start again from a fresh one now and then
    if chain.node().tip().0 > 200 {
        *chain = Chain::new();
    }
    let node = chain.node();
    let params = Params::devnet();
    match mode % 4 {
        0 => {
            if let Ok(block) = deserialize::<Block>(bytes) {
                let _ = check_block(&block, params);
                let _ = node.accept_block(&block);
            }
        }
        1 => {
            if let Ok(mut block) = deserialize::<Block>(bytes) {
                let (_, tip) = node.tip();
                let (bits, mtp) = {
                    let state = node.state();
                    (state.chain.next_bits(&tip).unwrap(), state.chain.median_time_past(&tip).unwrap())
                };
                block.header.prev_blockhash = tip;
                block.header.bits = bits;
                block.header.time = block.header.time.clamp(mtp + 1, mtp + 600);
                if let Some(root) = block.compute_merkle_root() {
                    block.header.merkle_root = root;
                }
                let target = block.header.target();
                for _ in 0..64 {
                    if block.header.validate_pow(target).is_ok() {
                        break;
                    }
                    block.header.nonce = block.header.nonce.wrapping_add(1);
                }
                let _ = check_block(&block, params);
                let _ = node.accept_block(&block);
            }
        }
        2 => {
            if let Ok(header) = deserialize::<Header>(bytes) {
                let _ = node.accept_header(&header);
            }
        }
        _ => {
            if let Ok(seal) = Seal::from_bytes(bytes) {
                assert_eq!(Seal::from_bytes(&seal.to_bytes()).ok().as_ref(), Some(&seal), "a seal reads back");
            }
            if let Ok(a) = Attestation::from_bytes(bytes) {
                assert_eq!(Attestation::from_bytes(&a.to_bytes()).ok().as_ref(), Some(&a), "an attestation reads back");
            }
        }
    }
});
