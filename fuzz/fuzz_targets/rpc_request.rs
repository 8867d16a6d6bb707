//! HTTP bodies of the chain node's JSON-RPC (`micro_os_node::rpc::handle`, what the axum
//! handler hands the body to): single requests and batches, parsed, dispatched to Core's
//! methods on a devnet node with a funded wallet and answered in Core's shapes. Every
//! answer must be a reply object (or an array of them) with a status Core would send.
//!
//! `generatetoaddress` asking for more than a few blocks is skipped: mining is what it is
//! asked to do, not a parser's bug, and would only make the target slow.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use micro_os_fuzz::Chain;
use serde_json::Value;

static CHAIN: OnceLock<Mutex<Chain>> = OnceLock::new();

/// Whether the request (or a request of the batch) mines more than a few blocks.
fn mines_much(v: &Value) -> bool {
    match v {
        Value::Array(batch) => batch.iter().any(mines_much),
        Value::Object(o) if o.get("method").and_then(Value::as_str) == Some("generatetoaddress") => {
            let n = match o.get("params") {
                Some(Value::Array(p)) => p.first(),
                Some(Value::Object(p)) => p.get("nblocks"),
                _ => None,
            };
            !n.and_then(Value::as_u64).is_some_and(|n| n <= 3)
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    if serde_json::from_slice::<Value>(data).is_ok_and(|v| mines_much(&v)) {
        return;
    }
    let mut chain = CHAIN.get_or_init(|| Mutex::new(Chain::new())).lock().unwrap();
    if chain.node().tip().0 > 200 {
        *chain = Chain::new();
    }
    let reply = micro_os_node::rpc::handle(&chain.ctx, data);
    assert!([200, 400, 404, 500].contains(&reply.status), "status {}", reply.status);
    let check = |r: &Value| {
        assert!(r.get("id").is_some() && r.get("result").is_some() && r.get("error").is_some(), "{r}");
        assert!(r["result"].is_null() || r["error"].is_null(), "{r}");
    };
    match &reply.body {
        Value::Array(replies) => {
            assert_eq!(reply.status, 200);
            replies.iter().for_each(check);
        }
        other => check(other),
    }
});
