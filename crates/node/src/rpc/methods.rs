//! The RPC methods, with Bitcoin Core's parameter names (for named parameters), result
//! shapes and error codes. Amounts are coins as JSON numbers (Core's `ValueFromAmount`),
//! hashes are hex in display order.

use std::str::FromStr;

use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use bitcoin::{Address, Amount, Block, BlockHash, FeeRate, Script, Target, Transaction, Txid};
use micro_os_chain::chainstate::{BlockStatus, ChainState, IndexEntry};
use micro_os_chain::mempool::Entry;
use micro_os_chain::params::Params;
use micro_os_chain::validation::{Reject, RejectCode};
use serde_json::{json, Map, Value};

use super::{code, Ctx, RpcError};
use crate::mining;
use crate::node::{Error, Node, TxError, BLOCK_VERSION};
use crate::wallet::{parse_address, WalletError};

type RpcResult = Result<Value, RpcError>;

/// Runs `method` with `params` (an array, or an object of Core's parameter names).
pub fn dispatch(ctx: &Ctx, method: &str, params: &Value) -> RpcResult {
    let node = &*ctx.node;
    let a = |names: &'static [&'static str]| Args { params, names };
    if node.is_sealed() && matches!(method, "getblocktemplate" | "submitblock" | "generatetoaddress") {
        return Err(misc(format!(
            "the {} network is sealed by validators on a circuit, not mined (send transactions; a validator seals them)",
            node.params().name
        )));
    }
    if node.is_light() {
        match method {
            "getblocktemplate" | "submitblock" | "generatetoaddress" | "getnetworkhashps" => {
                return Err(misc("a light node does not mine: it keeps headers only (run a full node to mine)"))
            }
            "getblockchaininfo" => return light_blockchaininfo(node),
            "getrawtransaction" => return light_rawtransaction(node, a(&["txid", "verbose", "blockhash"])),
            _ => {}
        }
    }
    match method {
        "getblockchaininfo" => getblockchaininfo(node),
        "getblockcount" => Ok(json!(node.tip().0)),
        "getbestblockhash" => Ok(json!(node.tip().1.to_string())),
        "getdifficulty" => Ok(json!(chain_err(node.state().chain.info())?.difficulty)),
        "getblockhash" => getblockhash(node, a(&["height"])),
        "getblock" => getblock(node, a(&["blockhash", "verbosity"])),
        "getblockheader" => getblockheader(node, a(&["blockhash", "verbose"])),
        "getrawmempool" => getrawmempool(node, a(&["verbose", "mempool_sequence"])),
        "getmempoolentry" => getmempoolentry(node, a(&["txid"])),
        "getmempoolinfo" => getmempoolinfo(node),
        "getrawtransaction" => getrawtransaction(node, a(&["txid", "verbose", "blockhash"])),
        "decoderawtransaction" => {
            let tx = decode_tx(a(&["hexstring"]).str(0)?)?;
            Ok(tx_json(&tx, node.params()))
        }
        "sendrawtransaction" => sendrawtransaction(node, a(&["hexstring", "maxfeerate"])),
        "getmininginfo" => getmininginfo(node),
        "getnetworkhashps" => Ok(json!(network_hash_ps(&node.state().chain)?)),
        "getnetworkinfo" => Ok(getnetworkinfo(ctx)),
        "getpeerinfo" => Ok(ctx.p2p.as_ref().map_or(json!([]), |p| p.peer_info())),
        "getconnectioncount" => Ok(json!(ctx.p2p.as_ref().map_or(0, |p| p.connections()))),
        "addnode" => {
            let p2p = ctx.p2p.as_ref().ok_or_else(|| misc("p2p is off (--no-p2p)"))?;
            let args = a(&["node", "command"]);
            p2p.add_node(args.str(0)?, args.str(1)?).map_err(|e| RpcError::new(code::INVALID_PARAMETER, e))?;
            Ok(Value::Null)
        }
        "getp2pinfo" => ctx.p2p.as_ref().map(|p| p.info()).ok_or_else(|| misc("p2p is off (--no-p2p)")),
        "getblocktemplate" => getblocktemplate(node, a(&["template_request"])),
        "submitblock" => submitblock(node, a(&["hexdata", "dummy"])),
        "generatetoaddress" => generatetoaddress(node, a(&["nblocks", "address", "maxtries"])),
        "getnewaddress" => getnewaddress(node, a(&["label", "address_type"])),
        "getbalance" => Ok(amount(wallet_err(node.balance())?.trusted())),
        "getbalances" => {
            let b = wallet_err(node.balance())?;
            Ok(json!({"mine": {"trusted": amount(b.confirmed), "untrusted_pending": amount(b.unconfirmed),
                "immature": amount(b.immature)}}))
        }
        "sendtoaddress" => sendtoaddress(
            node,
            a(&[
                "address",
                "amount",
                "comment",
                "comment_to",
                "subtractfeefromamount",
                "replaceable",
                "conf_target",
                "estimate_mode",
                "avoid_reuse",
                "fee_rate",
            ]),
        ),
        "listunspent" => listunspent(node, a(&["minconf", "maxconf", "addresses"])),
        "uptime" => Ok(json!(node.uptime())),
        // the transaction optimiser (not Core's): what the daemon's AI layer drives
        "getaiinfo" => {
            let mut info = node.ai().info();
            let (hits, misses, entries) = node.sig_cache_stats();
            info["sig_cache"] = json!({ "hits": hits, "misses": misses, "entries": entries });
            info["checks"] = node.check_order();
            Ok(info)
        }
        "setaiconfig" => setaiconfig(node, a(&["enabled", "config"])),
        "setaimodel" => setaimodel(node, a(&["kind", "version", "model"])),
        "getaisamples" => {
            let args = a(&["since", "limit"]);
            let (samples, next) = node.ai().samples(args.opt_u64(0, 0)?, args.opt_u64(1, 5000)?.min(50_000) as usize);
            Ok(json!({ "samples": samples, "next": next }))
        }
        "releaseheld" => Ok(json!({ "released": node.ai().release_held() })),
        "setaibatch" => {
            let batch = match a(&["batch"]).get(0) {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .filter(|b| (1..=65536).contains(b))
                        .ok_or_else(|| RpcError::new(code::INVALID_PARAMETER, "batch must be 1..=65536 or null"))?
                        as u32,
                ),
            };
            node.ai().set_adaptive_batch(batch);
            Ok(json!({ "batch": batch }))
        }
        "stop" => {
            ctx.shutdown.notify_one();
            Ok(json!("micro-os-node stopping"))
        }
        _ => Err(RpcError::new(code::METHOD_NOT_FOUND, "Method not found")),
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

struct Args<'a> {
    params: &'a Value,
    names: &'static [&'static str],
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(v: &Value, expected: &str) -> RpcError {
    RpcError::new(code::TYPE_ERROR, format!("JSON value of type {} is not of expected type {expected}", type_name(v)))
}

impl<'a> Args<'a> {
    /// Parameter `i` (by position, or by its name in an object); null counts as absent.
    fn get(&self, i: usize) -> Option<&'a Value> {
        let v = match self.params {
            Value::Array(a) => a.get(i),
            Value::Object(o) => self.names.get(i).and_then(|n| o.get(*n)),
            _ => None,
        };
        v.filter(|v| !v.is_null())
    }

    fn name(&self, i: usize) -> &'static str {
        self.names.get(i).copied().unwrap_or("parameter")
    }

    fn required(&self, i: usize) -> Result<&'a Value, RpcError> {
        self.get(i).ok_or_else(|| {
            RpcError::new(code::INVALID_PARAMETER, format!("missing required parameter {} ({})", i + 1, self.name(i)))
        })
    }

    fn str(&self, i: usize) -> Result<&'a str, RpcError> {
        let v = self.required(i)?;
        v.as_str().ok_or_else(|| type_error(v, "string"))
    }

    fn opt_str(&self, i: usize) -> Result<Option<&'a str>, RpcError> {
        self.get(i).map(|v| v.as_str().ok_or_else(|| type_error(v, "string"))).transpose()
    }

    fn u64(&self, i: usize) -> Result<u64, RpcError> {
        let v = self.required(i)?;
        v.as_u64().ok_or_else(|| match v {
            Value::Number(_) => RpcError::new(code::INVALID_PARAMETER, format!("{} out of range", self.name(i))),
            _ => type_error(v, "number"),
        })
    }

    fn opt_u64(&self, i: usize, default: u64) -> Result<u64, RpcError> {
        match self.get(i) {
            None => Ok(default),
            Some(_) => self.u64(i),
        }
    }

    fn opt_bool(&self, i: usize, default: bool) -> Result<bool, RpcError> {
        match self.get(i) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| type_error(v, "bool")),
        }
    }

    /// A verbosity given as a number or, as older clients do, a bool.
    fn verbosity(&self, i: usize, default: u64) -> Result<u64, RpcError> {
        match self.get(i) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(u64::from(*b)),
            Some(Value::Number(n)) => Ok(n.as_u64().unwrap_or(0)),
            Some(v) => Err(type_error(v, "number")),
        }
    }

    /// A 32-byte hash in hex, with Core's messages.
    fn hash<T: FromStr>(&self, i: usize) -> Result<T, RpcError> {
        let s = self.str(i)?;
        let name = self.name(i);
        if s.len() != 64 {
            return Err(RpcError::new(
                code::INVALID_PARAMETER,
                format!("{name} must be of length 64 (not {}, for '{s}')", s.len()),
            ));
        }
        T::from_str(s).map_err(|_| {
            RpcError::new(code::INVALID_PARAMETER, format!("{name} must be hexadecimal string (not '{s}')"))
        })
    }

    /// An amount in coins (number or string), as Core's `AmountFromValue`.
    fn amount(&self, i: usize) -> Result<Amount, RpcError> {
        let v = self.required(i)?;
        let coins = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse::<f64>().ok(),
            _ => return Err(RpcError::new(code::TYPE_ERROR, "Amount is not a number or string")),
        }
        .ok_or_else(|| RpcError::new(code::TYPE_ERROR, "Invalid amount"))?;
        let sats = (coins * 1e8).round();
        if !(0.0..=Amount::MAX_MONEY.to_sat() as f64).contains(&sats) {
            return Err(RpcError::new(code::TYPE_ERROR, "Amount out of range"));
        }
        Ok(Amount::from_sat(sats as u64))
    }
}

// ---------------------------------------------------------------------------------------------
// Error mapping
// ---------------------------------------------------------------------------------------------

fn misc(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(code::MISC_ERROR, e.to_string())
}

fn chain_err<T>(r: Result<T, micro_os_chain::error::Error>) -> Result<T, RpcError> {
    r.map_err(misc)
}

fn wallet_err<T>(r: Result<T, Error>) -> Result<T, RpcError> {
    r.map_err(|e| match e {
        Error::Wallet(WalletError::BadAddress { address, reason }) => {
            RpcError::new(code::INVALID_ADDRESS_OR_KEY, format!("Invalid address: {address} ({reason})"))
        }
        Error::Wallet(e @ WalletError::InsufficientFunds { .. }) => {
            RpcError::new(code::WALLET_INSUFFICIENT_FUNDS, format!("Insufficient funds ({e})"))
        }
        Error::Wallet(e @ WalletError::Dust { .. }) => {
            RpcError::new(code::WALLET_ERROR, format!("Transaction amount too small ({e})"))
        }
        Error::Tx(e) => tx_error(e),
        other => misc(other),
    })
}

/// Core's codes for a refused transaction: -27 already confirmed, -25 missing inputs,
/// -26 any other rejection; the message is Core's reason, then ours in parentheses.
fn tx_error(e: TxError) -> RpcError {
    let message = format!("{} ({e})", e.reason());
    match e {
        TxError::InChain { .. } => RpcError::new(code::VERIFY_ALREADY_IN_CHAIN, "Transaction already in block chain"),
        TxError::Orphan { .. } => RpcError::new(code::VERIFY_ERROR, message),
        TxError::Chain(e) => misc(e),
        TxError::Light(e) => misc(e),
        TxError::Invalid(_) | TxError::Refused(_) => RpcError::new(code::VERIFY_REJECTED, message),
    }
}

fn address_param(node: &Node, s: &str) -> Result<Address, RpcError> {
    parse_address(s, node.params())
        .map_err(|e| RpcError::new(code::INVALID_ADDRESS_OR_KEY, format!("Invalid address: {e}")))
}

// ---------------------------------------------------------------------------------------------
// JSON shapes
// ---------------------------------------------------------------------------------------------

fn amount(a: Amount) -> Value {
    json!(a.to_btc())
}

fn fee_rate_btc_kvb(r: FeeRate) -> Value {
    json!((r.to_sat_per_kwu() * 4) as f64 / 1e8)
}

fn script_type(s: &Script) -> &'static str {
    if s.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if s.is_p2pkh() {
        "pubkeyhash"
    } else if s.is_p2sh() {
        "scripthash"
    } else if s.is_p2wsh() {
        "witness_v0_scripthash"
    } else if s.is_p2tr() {
        "witness_v1_taproot"
    } else if s.is_op_return() {
        "nulldata"
    } else if s.is_p2pk() {
        "pubkey"
    } else {
        "nonstandard"
    }
}

fn script_pubkey_json(s: &Script, params: &Params) -> Value {
    let mut o = json!({"asm": s.to_asm_string(), "hex": hex::encode(s.as_bytes()), "type": script_type(s)});
    if let Ok(a) = Address::from_script(s, params.network) {
        o["address"] = json!(a.to_string());
    }
    o
}

/// Core's `TxToUniv`.
fn tx_json(tx: &Transaction, params: &Params) -> Value {
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|i| {
            let mut o = if tx.is_coinbase() {
                json!({"coinbase": hex::encode(i.script_sig.as_bytes())})
            } else {
                json!({"txid": i.previous_output.txid.to_string(), "vout": i.previous_output.vout,
                    "scriptSig": {"asm": i.script_sig.to_asm_string(), "hex": hex::encode(i.script_sig.as_bytes())}})
            };
            if !i.witness.is_empty() {
                o["txinwitness"] = json!(i.witness.iter().map(hex::encode).collect::<Vec<_>>());
            }
            o["sequence"] = json!(i.sequence.0);
            o
        })
        .collect();
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| json!({"value": amount(o.value), "n": n, "scriptPubKey": script_pubkey_json(&o.script_pubkey, params)}))
        .collect();
    json!({
        "txid": tx.compute_txid().to_string(),
        "hash": tx.compute_wtxid().to_string(),
        "version": tx.version.0,
        "size": tx.total_size(),
        "vsize": tx.vsize(),
        "weight": tx.weight().to_wu(),
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": vin,
        "vout": vout,
        "hex": serialize_hex(tx),
    })
}

fn confirmations(chain: &ChainState, e: &IndexEntry) -> Result<i64, RpcError> {
    let active = chain_err(chain.hash_at(e.height))? == Some(e.hash);
    Ok(if active { i64::from(chain.tip().0) - i64::from(e.height) + 1 } else { -1 })
}

/// Core's `blockheaderToJSON`.
fn header_json(chain: &ChainState, e: &IndexEntry, n_tx: usize) -> RpcResult {
    let h = &e.header;
    let confirmations = confirmations(chain, e)?;
    let mut o = json!({
        "hash": e.hash.to_string(),
        "confirmations": confirmations,
        "height": e.height,
        "version": h.version.to_consensus(),
        "versionHex": format!("{:08x}", h.version.to_consensus()),
        "merkleroot": h.merkle_root.to_string(),
        "time": h.time,
        "mediantime": chain_err(chain.median_time_past(&e.hash))?,
        "nonce": h.nonce,
        "bits": format!("{:08x}", h.bits.to_consensus()),
        "target": hex::encode(h.target().to_be_bytes()),
        "difficulty": h.difficulty_float(),
        "chainwork": hex::encode(e.chainwork.to_be_bytes()),
        "nTx": n_tx,
    });
    if e.height > 0 {
        o["previousblockhash"] = json!(h.prev_blockhash.to_string());
    }
    if confirmations > 0 {
        if let Some(next) = chain_err(chain.hash_at(e.height + 1))? {
            o["nextblockhash"] = json!(next.to_string());
        }
    }
    Ok(o)
}

fn entry_or_not_found(chain: &ChainState, hash: &BlockHash) -> Result<IndexEntry, RpcError> {
    chain_err(chain.entry(hash))?.ok_or_else(|| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Block not found"))
}

fn mempool_entry_json(e: &Entry, height: u32) -> Value {
    json!({
        "vsize": e.vsize,
        "weight": e.weight.to_wu(),
        "time": e.time,
        "height": height,
        "descendantcount": e.descendant_count,
        "descendantsize": e.descendant_vsize,
        "ancestorcount": e.ancestor_count,
        "ancestorsize": e.ancestor_vsize,
        "wtxid": e.tx.compute_wtxid().to_string(),
        "fees": {"base": amount(e.fee), "modified": amount(e.fee), "ancestor": amount(e.ancestor_fees),
            "descendant": amount(e.descendant_fees)},
        "depends": e.parents.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "spentby": e.children.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "bip125-replaceable": false,
        "unbroadcast": false,
    })
}

// ---------------------------------------------------------------------------------------------
// Chain
// ---------------------------------------------------------------------------------------------

fn getblockchaininfo(node: &Node) -> RpcResult {
    let validators = node.validator_set().map_err(misc)?.map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>());
    let st = node.state();
    let info = chain_err(st.chain.info())?;
    let tip = chain_err(st.chain.header(&info.best_block_hash))?.map_or(0, |h| h.time);
    let size = std::fs::metadata(node.datadir().join("chain.sqlite")).map_or(0, |m| m.len());
    Ok(json!({
        "chain": info.chain,
        "blocks": info.blocks,
        "headers": info.headers,
        "bestblockhash": info.best_block_hash.to_string(),
        "bits": format!("{:08x}", chain_err(st.chain.next_bits(&info.best_block_hash))?.to_consensus()),
        "difficulty": info.difficulty,
        "time": tip,
        "mediantime": info.median_time,
        "verificationprogress": info.verification_progress,
        "initialblockdownload": info.headers > info.blocks,
        "chainwork": hex::encode(info.chainwork.to_be_bytes()),
        "size_on_disk": size,
        "pruned": false,
        "consensus": if node.is_sealed() { "circuit" } else { "pow" },
        "validators": validators,
        "finalized": node.finalized().map_err(misc)?,
        "warnings": "",
    }))
}

/// A light node's `getblockchaininfo`: its height is its best header's, whose headers it has
/// checked (proof of work, difficulty, time) without the blocks; `"light": true`.
fn light_blockchaininfo(node: &Node) -> RpcResult {
    let validators = node.validator_set().map_err(misc)?.map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>());
    let (height, hash) = node.tip();
    let st = node.state();
    let e = entry_or_not_found(&st.chain, &hash)?;
    let size = ["chain.sqlite", "light.sqlite"]
        .iter()
        .map(|f| std::fs::metadata(node.datadir().join(f)).map_or(0, |m| m.len()))
        .sum::<u64>();
    Ok(json!({
        "chain": node.params().name,
        "blocks": height,
        "headers": height,
        "bestblockhash": hash.to_string(),
        "bits": format!("{:08x}", chain_err(st.chain.next_bits(&hash))?.to_consensus()),
        "difficulty": e.header.difficulty_float(),
        "time": e.header.time,
        "mediantime": chain_err(st.chain.median_time_past(&hash))?,
        "verificationprogress": 1.0,
        "initialblockdownload": false,
        "chainwork": hex::encode(e.chainwork.to_be_bytes()),
        "size_on_disk": size,
        "pruned": true,
        "light": true,
        "consensus": if node.is_sealed() { "circuit" } else { "pow" },
        "validators": validators,
        "finalized": node.finalized().map_err(misc)?,
        "walletscanned": node.light().map_or(0, |l| l.scanned()),
        "warnings": "",
    }))
}

/// A light node knows only its wallet's transactions (pending, or proven in a block).
fn light_rawtransaction(node: &Node, a: Args) -> RpcResult {
    let txid: Txid = a.hash(0)?;
    let verbosity = a.verbosity(1, 0)?;
    let found = node.light().map(|l| l.transaction(&txid)).transpose().map_err(misc)?.flatten();
    let Some((tx, block)) = found else {
        return Err(RpcError::new(
            code::INVALID_ADDRESS_OR_KEY,
            "No such wallet transaction: a light node knows only its wallet's transactions",
        ));
    };
    if verbosity == 0 {
        return Ok(json!(serialize_hex(&tx)));
    }
    let mut o = tx_json(&tx, node.params());
    if let Some(bh) = block {
        o["blockhash"] = json!(bh.to_string());
        if let Some(h) = node.light().and_then(|l| l.height_of(&bh)) {
            o["confirmations"] = json!(node.tip().0 + 1 - h);
        }
    }
    Ok(o)
}

fn getblockhash(node: &Node, a: Args) -> RpcResult {
    let v = a.required(0)?;
    let height = v.as_i64().ok_or_else(|| type_error(v, "number"))?;
    let hash = u32::try_from(height).ok().map(|h| node.hash_at(h).map_err(misc)).transpose()?.flatten();
    hash.map(|h| json!(h.to_string()))
        .ok_or_else(|| RpcError::new(code::INVALID_PARAMETER, "Block height out of range"))
}

fn getblock(node: &Node, a: Args) -> RpcResult {
    let hash: BlockHash = a.hash(0)?;
    let verbosity = a.verbosity(1, 1)?;
    let st = node.state();
    let e = entry_or_not_found(&st.chain, &hash)?;
    let block: Block = chain_err(st.chain.block(&hash))?
        .ok_or_else(|| RpcError::new(code::MISC_ERROR, "Block not available (not fully downloaded)"))?;
    if verbosity == 0 {
        return Ok(json!(serialize_hex(&block)));
    }
    let mut o = header_json(&st.chain, &e, block.txdata.len())?;
    o["size"] = json!(block.total_size());
    // weight = 3 * stripped size + total size
    o["strippedsize"] = json!((block.weight().to_wu() as usize - block.total_size()) / 3);
    o["weight"] = json!(block.weight().to_wu());
    o["tx"] = if verbosity == 1 {
        json!(block.txdata.iter().map(|t| t.compute_txid().to_string()).collect::<Vec<_>>())
    } else {
        json!(block.txdata.iter().map(|t| tx_json(t, node.params())).collect::<Vec<_>>())
    };
    drop(st);
    add_seal(node, &hash, &mut o)?;
    Ok(o)
}

/// On a validator-sealed network: who sealed the block, which validators attested it, and
/// whether a majority of its set did (final to a node outside the circuit).
fn add_seal(node: &Node, hash: &BlockHash, o: &mut Value) -> Result<(), RpcError> {
    let Some(seal) = node.seal(hash).map_err(misc)? else { return Ok(()) };
    let attested = node.attestations(hash).map_err(misc)?;
    o["sealer"] = json!(seal.sealer.to_string());
    o["attestations"] = json!(attested.iter().map(|a| a.validator.to_string()).collect::<Vec<_>>());
    o["finalized"] = json!(attested.len() >= micro_os_chain::seal::quorum(seal.validators.len()));
    Ok(())
}

fn getblockheader(node: &Node, a: Args) -> RpcResult {
    let hash: BlockHash = a.hash(0)?;
    let verbose = a.opt_bool(1, true)?;
    let st = node.state();
    let e = entry_or_not_found(&st.chain, &hash)?;
    if !verbose {
        return Ok(json!(serialize_hex(&e.header)));
    }
    let n_tx = chain_err(st.chain.block(&hash))?.map_or(0, |b| b.txdata.len());
    let mut o = header_json(&st.chain, &e, n_tx)?;
    drop(st);
    add_seal(node, &hash, &mut o)?;
    Ok(o)
}

fn getrawtransaction(node: &Node, a: Args) -> RpcResult {
    let txid: Txid = a.hash(0)?;
    let verbosity = a.verbosity(1, 0)?;
    let in_block: Option<BlockHash> = a.get(2).map(|_| a.hash(2)).transpose()?;
    let st = node.state();
    let found: Option<(Transaction, Option<BlockHash>)> = match in_block {
        Some(bh) => {
            entry_or_not_found(&st.chain, &bh)?;
            let block = chain_err(st.chain.block(&bh))?;
            block.and_then(|b| b.txdata.into_iter().find(|t| t.compute_txid() == txid)).map(|t| (t, Some(bh)))
        }
        None => match st.mempool.get(&txid) {
            Some(e) => Some((e.tx.clone(), None)),
            None => chain_err(st.chain.transaction(&txid))?.map(|(t, b)| (t, Some(b))),
        },
    };
    let Some((tx, block)) = found else {
        let message = match in_block {
            Some(_) => "No such transaction found in the provided block",
            None => "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.",
        };
        return Err(RpcError::new(code::INVALID_ADDRESS_OR_KEY, message));
    };
    if verbosity == 0 {
        return Ok(json!(serialize_hex(&tx)));
    }
    let mut o = tx_json(&tx, node.params());
    if let Some(bh) = block {
        let e = entry_or_not_found(&st.chain, &bh)?;
        let confirmations = confirmations(&st.chain, &e)?;
        o["blockhash"] = json!(bh.to_string());
        o["in_active_chain"] = json!(confirmations > 0);
        o["confirmations"] = json!(confirmations.max(0));
        o["time"] = json!(e.header.time);
        o["blocktime"] = json!(e.header.time);
    }
    Ok(o)
}

fn decode_tx(hex: &str) -> Result<Transaction, RpcError> {
    deserialize_hex(hex).map_err(|_| RpcError::new(code::DESERIALIZATION_ERROR, "TX decode failed"))
}

fn sendrawtransaction(node: &Node, a: Args) -> RpcResult {
    let tx = decode_tx(a.str(0)?)?;
    let started = std::time::Instant::now();
    let features = node.tx_features(&tx);
    let result = node.accept_tx(tx.clone());
    let outcome = result.as_ref().map_or_else(|e| e.reason(), |_| "accepted");
    node.ai().observed(&tx, features, "rpc", started.elapsed().as_secs_f64() * 1000.0, outcome);
    result.map(|t| json!(t.to_string())).map_err(tx_error)
}

// ---------------------------------------------------------------------------------------------
// The transaction optimiser
// ---------------------------------------------------------------------------------------------

fn setaiconfig(node: &Node, a: Args) -> RpcResult {
    let enabled = a.opt_bool(0, true)?;
    let config = match a.get(1) {
        None | Some(Value::Null) => micro_os_ai::TxOptimizerConfig::default(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| RpcError::new(code::INVALID_PARAMETER, format!("config: {e}")))?,
    };
    node.ai().configure(enabled, config).map_err(|e| RpcError::new(code::INVALID_PARAMETER, e))?;
    Ok(node.ai().info())
}

fn setaimodel(node: &Node, a: Args) -> RpcResult {
    let kind: crate::ai::ModelKind = serde_json::from_value(a.required(0)?.clone()).map_err(|_| {
        RpcError::new(code::INVALID_PARAMETER, "kind must be \"classifier\" or \"iforest\"".to_string())
    })?;
    let version = a.u64(1)?;
    node.ai()
        .set_model(kind, version, a.required(2)?.clone())
        .map_err(|e| RpcError::new(code::INVALID_PARAMETER, e))?;
    Ok(json!({ "kind": kind, "version": version }))
}

// ---------------------------------------------------------------------------------------------
// Mempool
// ---------------------------------------------------------------------------------------------

fn getrawmempool(node: &Node, a: Args) -> RpcResult {
    let verbose = a.opt_bool(0, false)?;
    let st = node.state();
    let txids = st.mempool.txids();
    if !verbose {
        return Ok(json!(txids.iter().map(|t| t.to_string()).collect::<Vec<_>>()));
    }
    let height = st.chain.tip().0;
    let mut o = Map::new();
    for t in txids {
        if let Some(e) = st.mempool.get(&t) {
            o.insert(t.to_string(), mempool_entry_json(e, height));
        }
    }
    Ok(Value::Object(o))
}

fn getmempoolentry(node: &Node, a: Args) -> RpcResult {
    let txid: Txid = a.hash(0)?;
    let st = node.state();
    let e = st
        .mempool
        .get(&txid)
        .ok_or_else(|| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Transaction not in mempool"))?;
    Ok(mempool_entry_json(e, st.chain.tip().0))
}

fn getmempoolinfo(node: &Node) -> RpcResult {
    let i = node.state().mempool.info(crate::node::now());
    Ok(json!({
        "loaded": true,
        "size": i.size,
        "bytes": i.bytes,
        "usage": i.usage,
        "total_fee": amount(i.total_fee),
        "maxmempool": i.max_mempool,
        "mempoolminfee": fee_rate_btc_kvb(i.mempool_min_fee),
        "minrelaytxfee": fee_rate_btc_kvb(i.min_relay_tx_fee),
        "incrementalrelayfee": fee_rate_btc_kvb(i.incremental_relay_fee),
        "unbroadcastcount": 0,
        "fullrbf": false,
    }))
}

// ---------------------------------------------------------------------------------------------
// Mining
// ---------------------------------------------------------------------------------------------

/// Core's `GetNetworkHashPS` over the last 120 blocks: work done / time taken.
fn network_hash_ps(chain: &ChainState) -> Result<f64, RpcError> {
    let (tip_height, tip) = chain.tip();
    if tip_height == 0 {
        return Ok(0.0);
    }
    let start_height = tip_height.saturating_sub(120);
    let start = chain_err(chain.hash_at(start_height))?.unwrap_or(tip);
    let (Some(a), Some(b)) = (chain_err(chain.entry(&start))?, chain_err(chain.entry(&tip))?) else {
        return Ok(0.0);
    };
    let secs = i64::from(b.header.time) - i64::from(a.header.time);
    if secs <= 0 {
        return Ok(0.0);
    }
    let work = work_f64(b.chainwork) - work_f64(a.chainwork);
    Ok(work / secs as f64)
}

fn work_f64(w: bitcoin::Work) -> f64 {
    w.to_be_bytes().iter().fold(0.0, |acc, &byte| acc * 256.0 + f64::from(byte))
}

fn getmininginfo(node: &Node) -> RpcResult {
    let st = node.state();
    let info = chain_err(st.chain.info())?;
    let blocks = match node.light() {
        Some(l) => l.tip().0,
        None => info.blocks,
    };
    Ok(json!({
        "blocks": blocks,
        "difficulty": info.difficulty,
        "networkhashps": network_hash_ps(&st.chain)?,
        "hashespersec": node.hash_rate(),
        "generate": node.is_mining(),
        "genproclimit": node.options().threads,
        "pooledtx": st.mempool.len(),
        "chain": info.chain,
        "warnings": "",
    }))
}

fn getnetworkinfo(ctx: &Ctx) -> Value {
    let node = &ctx.node;
    let connections = ctx.p2p.as_ref().map_or(0, |p| p.connections());
    let local: Vec<String> = ctx.p2p.as_ref().map_or(Vec::new(), |p| {
        p.info()["listen"]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
    });
    let relay = node.state().mempool.policy().min_fee_rate;
    json!({
        "version": 10000,
        "subversion": format!("/micro-os-node:{}/", env!("CARGO_PKG_VERSION")),
        "protocolversion": 70016,
        "localservices": "0000000000000409",
        "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED"],
        "localrelay": true,
        "timeoffset": 0,
        "networkactive": ctx.p2p.is_some(),
        "connections": connections,
        "networks": [],
        "relayfee": fee_rate_btc_kvb(relay),
        "incrementalfee": fee_rate_btc_kvb(relay),
        "localaddresses": local,
        "warnings": "",
    })
}

fn getblocktemplate(node: &Node, a: Args) -> RpcResult {
    let request = a.get(0).cloned().unwrap_or(json!({}));
    let rules: Vec<&str> =
        request["rules"].as_array().map_or(Vec::new(), |r| r.iter().filter_map(Value::as_str).collect());
    match request["mode"].as_str() {
        None | Some("template") => {}
        Some(m) => {
            return Err(RpcError::new(code::INVALID_PARAMETER, format!("Invalid mode {m:?} (only \"template\")")))
        }
    }
    if !rules.contains(&"segwit") {
        return Err(RpcError::new(
            code::INVALID_PARAMETER,
            "getblocktemplate must be called with the segwit rule set (call with {\"rules\": [\"segwit\"]})",
        ));
    }
    // The coinbase is the miner's: the template's own pays nowhere and only yields the
    // coinbase value and the witness commitment.
    let t = node.block_template(bitcoin::ScriptBuf::new()).map_err(misc)?;
    let b = &t.block;
    let index: std::collections::HashMap<Txid, usize> =
        b.txdata.iter().enumerate().skip(1).map(|(i, tx)| (tx.compute_txid(), i)).collect();
    let txs: Vec<Value> = b
        .txdata
        .iter()
        .skip(1)
        .zip(&t.fees)
        .map(|(tx, fee)| {
            let mut depends: Vec<usize> =
                tx.input.iter().filter_map(|i| index.get(&i.previous_output.txid).copied()).collect();
            depends.sort_unstable();
            depends.dedup();
            let sigops: usize = tx.input.iter().map(|i| if i.witness.is_empty() { 4 } else { 1 }).sum::<usize>()
                + tx.output.iter().map(|o| o.script_pubkey.count_sigops_legacy() * 4).sum::<usize>();
            json!({
                "data": serialize_hex(tx),
                "txid": tx.compute_txid().to_string(),
                "hash": tx.compute_wtxid().to_string(),
                "depends": depends,
                "fee": fee.to_sat(),
                "sigops": sigops,
                "weight": tx.weight().to_wu(),
            })
        })
        .collect();
    let target = Target::from_compact(b.header.bits);
    let mut o = json!({
        "capabilities": [],
        "version": BLOCK_VERSION,
        "rules": ["csv", "!segwit"],
        "vbavailable": {},
        "vbrequired": 0,
        "previousblockhash": b.header.prev_blockhash.to_string(),
        "transactions": txs,
        "coinbaseaux": {},
        "coinbasevalue": b.txdata[0].output[0].value.to_sat(),
        "longpollid": format!("{}{}", b.header.prev_blockhash, node.pool_generation()),
        "target": hex::encode(target.to_be_bytes()),
        "mintime": t.min_time,
        "mutable": ["time", "transactions", "prevblock"],
        "noncerange": "00000000ffffffff",
        "sigoplimit": 80_000,
        "sizelimit": 4_000_000,
        "weightlimit": node.params().max_block_weight.to_wu(),
        "curtime": b.header.time,
        "bits": format!("{:08x}", b.header.bits.to_consensus()),
        "height": t.height,
    });
    if let Some(c) = b.txdata[0]
        .output
        .iter()
        .find(|o| o.script_pubkey.as_bytes().starts_with(&[0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed]))
    {
        o["default_witness_commitment"] = json!(hex::encode(c.script_pubkey.as_bytes()));
    }
    Ok(o)
}

/// The BIP22 reason for a block verdict, in Core's words where Core has one.
pub fn bip22_reason(r: &Reject) -> &'static str {
    match r.code {
        RejectCode::BadPow => "high-hash",
        RejectCode::BadBits => "bad-diffbits",
        RejectCode::BadMerkleRoot => "bad-txnmrklroot",
        RejectCode::BadWitnessCommitment => "bad-witness-merkle-match",
        RejectCode::Oversized => "bad-blk-weight",
        RejectCode::BadTime if r.reason.contains("after now") => "time-too-new",
        RejectCode::BadTime => "time-too-old",
        RejectCode::BadPrevBlock if r.reason.contains("unknown") => "prev-blk-not-found",
        RejectCode::BadPrevBlock => "bad-prevblk",
        RejectCode::Duplicate => "bad-txns-duplicate",
        RejectCode::MissingInputs | RejectCode::DoubleSpend => "bad-txns-inputs-missingorspent",
        RejectCode::Immature => "bad-txns-premature-spend-of-coinbase",
        RejectCode::BadAmount => "bad-txns-in-belowout",
        RejectCode::BadSignature => "mandatory-script-verify-flag-failed",
        RejectCode::NonStandard => "bad-txns-nonstandard-inputs",
        RejectCode::BadCoinbase => "bad-cb",
        RejectCode::BadTransaction => "bad-txns",
        RejectCode::WrongNetwork => "wrong-network",
        RejectCode::BadSeal => "bad-seal",
        RejectCode::HeightSealed => "height-already-sealed",
    }
}

fn submitblock(node: &Node, a: Args) -> RpcResult {
    let block: Block =
        deserialize_hex(a.str(0)?).map_err(|_| RpcError::new(code::DESERIALIZATION_ERROR, "Block decode failed"))?;
    if !block.txdata.first().is_some_and(Transaction::is_coinbase) {
        return Err(RpcError::new(code::DESERIALIZATION_ERROR, "Block does not start with a coinbase"));
    }
    let hash = block.block_hash();
    if let Some(e) = chain_err(node.state().chain.entry(&hash))? {
        match e.status {
            BlockStatus::Invalid => return Ok(json!("duplicate-invalid")),
            BlockStatus::HaveData | BlockStatus::Valid => return Ok(json!("duplicate")),
            BlockStatus::HeaderOnly => {}
        }
    }
    match node.accept_block(&block) {
        Ok(acc) if acc.tip.1 == hash => Ok(Value::Null),
        Ok(_) => Ok(json!("inconclusive")),
        Err(e) => match e.reject() {
            Some(r) => {
                tracing::info!("submitblock: block {hash} refused: {r}");
                Ok(json!(bip22_reason(r)))
            }
            None => Err(misc(e)),
        },
    }
}

fn generatetoaddress(node: &Node, a: Args) -> RpcResult {
    let n = a.u64(0)?;
    let n = u32::try_from(n).map_err(|_| RpcError::new(code::INVALID_PARAMETER, "nblocks out of range"))?;
    let to = address_param(node, a.str(1)?)?;
    let hashes = mining::generate(node, n, &to.script_pubkey()).map_err(misc)?;
    if n > 0 {
        tracing::info!("generated {n} block(s) to {to}, height {}", node.tip().0);
    }
    Ok(json!(hashes.iter().map(|h| h.to_string()).collect::<Vec<_>>()))
}

// ---------------------------------------------------------------------------------------------
// Wallet
// ---------------------------------------------------------------------------------------------

fn getnewaddress(node: &Node, a: Args) -> RpcResult {
    match a.opt_str(1)? {
        None | Some("bech32") => {}
        Some(t) => return Err(RpcError::new(code::INVALID_ADDRESS_OR_KEY, format!("Unknown address type '{t}'"))),
    }
    Ok(json!(wallet_err(node.new_address())?.to_string()))
}

fn sendtoaddress(node: &Node, a: Args) -> RpcResult {
    let to = address_param(node, a.str(0)?)?;
    let value = a.amount(1)?;
    if value == Amount::ZERO {
        return Err(RpcError::new(code::TYPE_ERROR, "Invalid amount for send"));
    }
    if a.opt_bool(4, false)? {
        return Err(RpcError::new(code::INVALID_PARAMETER, "subtractfeefromamount is not supported"));
    }
    let fee_rate = match a.get(9) {
        None => None,
        Some(v) => {
            let sat_vb = v.as_f64().ok_or_else(|| type_error(v, "number"))?;
            Some(FeeRate::from_sat_per_kwu((sat_vb * 250.0).round() as u64))
        }
    };
    let txid = wallet_err(node.send_to_address(&to, value, fee_rate))?;
    Ok(json!(txid.to_string()))
}

fn listunspent(node: &Node, a: Args) -> RpcResult {
    let min = a.opt_u64(0, 1)?;
    let max = a.opt_u64(1, 9_999_999)?;
    let coins = wallet_err(node.list_unspent())?;
    Ok(json!(coins
        .into_iter()
        .filter(|(c, _)| c.spendable && (min..=max).contains(&u64::from(c.confirmations)))
        .map(|(c, addr)| json!({
            "txid": c.outpoint.txid.to_string(),
            "vout": c.outpoint.vout,
            "address": addr.map(|a| a.to_string()),
            "scriptPubKey": hex::encode(c.output.script_pubkey.as_bytes()),
            "amount": amount(c.output.value),
            "confirmations": c.confirmations,
            "spendable": true,
            "solvable": true,
            "safe": true,
        }))
        .collect::<Vec<_>>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_amounts_use_cores_words() {
        let r = Reject::new(RejectCode::BadPow, "block 00: hash above target");
        assert_eq!(bip22_reason(&r), "high-hash");
        let r = Reject::new(RejectCode::BadPrevBlock, "block 00: previous block 11 is unknown");
        assert_eq!(bip22_reason(&r), "prev-blk-not-found");
        assert_eq!(amount(Amount::from_sat(150_000_000)), json!(1.5));
        let p = json!([1.23456789, "0.1", -1, "x"]);
        let a = Args { params: &p, names: &["a", "b", "c", "d"] };
        assert_eq!(a.amount(0).unwrap(), Amount::from_sat(123_456_789));
        assert_eq!(a.amount(1).unwrap(), Amount::from_sat(10_000_000));
        assert_eq!(a.amount(2).unwrap_err().code, code::TYPE_ERROR);
        assert_eq!(a.amount(3).unwrap_err().code, code::TYPE_ERROR);
        assert_eq!(a.required(9).unwrap_err().code, code::INVALID_PARAMETER);
    }
}
