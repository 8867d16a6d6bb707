//! A JSON-RPC server compatible with Bitcoin Core's, so existing clients (python-bitcoinrpc,
//! bitcoin-cli-shaped tools, mining software speaking BIP22/23) work unchanged.
//!
//! Three layers, as in Core's `httprpc.cpp` / `rpc/server.cpp` / `rpc/*.cpp`:
//! * `http` — axum: POST `/` and `/wallet/<name>`, Basic auth (cookie file or
//!   `--rpc-user/--rpc-password`) as a middleware layer, the body handed to [`handle`] on a
//!   blocking thread (the node's calls take locks and touch SQLite);
//! * this module — the protocol: parsing single and batch requests, reply shapes
//!   (`{"result", "error", "id"}`), Core's error codes and the HTTP status Core's
//!   `JSONErrorReply` sets (404 for method not found, 400 for an invalid request, 500 for
//!   any other error, 200 for success and for every batch);
//! * `methods` — one function per RPC method with Core's parameter and result shapes.
//!
//! Key design decision: a method is a function from (node, parameters) to a JSON value or
//! an [`RpcError`]; methods know no HTTP, and the HTTP layer knows no method.

pub mod http;
pub mod methods;

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::node::Node;

/// Core's `RPCErrorCode`s that this server uses.
pub mod code {
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    pub const PARSE_ERROR: i64 = -32700;
    pub const MISC_ERROR: i64 = -1;
    pub const TYPE_ERROR: i64 = -3;
    pub const WALLET_ERROR: i64 = -4;
    pub const INVALID_ADDRESS_OR_KEY: i64 = -5;
    pub const WALLET_INSUFFICIENT_FUNDS: i64 = -6;
    pub const INVALID_PARAMETER: i64 = -8;
    pub const DESERIALIZATION_ERROR: i64 = -22;
    pub const VERIFY_ERROR: i64 = -25;
    pub const VERIFY_REJECTED: i64 = -26;
    pub const VERIFY_ALREADY_IN_CHAIN: i64 = -27;
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rpc error {code}: {message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into() }
    }

    fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }

    /// The HTTP status Core's `JSONErrorReply` sends with this error.
    pub fn http_status(&self) -> u16 {
        match self.code {
            code::INVALID_REQUEST => 400,
            code::METHOD_NOT_FOUND => 404,
            _ => 500,
        }
    }
}

/// What the RPC methods share: the node, and the signal `stop` raises.
#[derive(Debug)]
pub struct Ctx {
    pub node: Arc<Node>,
    /// Notified once by the `stop` method; the binary shuts down on it.
    pub shutdown: Arc<Notify>,
    /// The node's P2P; `None` with `--no-p2p`.
    pub p2p: Option<Arc<crate::p2p::Service>>,
}

/// A reply: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

fn reply_object(result: Result<Value, RpcError>, id: Value) -> Value {
    match result {
        Ok(v) => json!({"result": v, "error": null, "id": id}),
        Err(e) => json!({"result": null, "error": e.to_json(), "id": id}),
    }
}

/// One request object: (method, params, id), or the error to answer it with.
fn parse_request(req: &Value) -> (Value, Result<(String, Value), RpcError>) {
    let Some(obj) = req.as_object() else {
        return (Value::Null, Err(RpcError::new(code::INVALID_REQUEST, "Invalid Request object")));
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    let method = match obj.get("method") {
        None => return (id, Err(RpcError::new(code::INVALID_REQUEST, "Missing method"))),
        Some(Value::String(m)) => m.clone(),
        Some(_) => return (id, Err(RpcError::new(code::INVALID_REQUEST, "Method must be a string"))),
    };
    let params = match obj.get("params") {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(p @ (Value::Array(_) | Value::Object(_))) => p.clone(),
        Some(_) => return (id, Err(RpcError::new(code::INVALID_REQUEST, "Params must be an array or object"))),
    };
    (id, Ok((method, params)))
}

fn execute(ctx: &Ctx, req: &Value) -> (Value, Result<Value, RpcError>) {
    let (id, parsed) = parse_request(req);
    let result = parsed.and_then(|(method, params)| {
        tracing::debug!(%method, "rpc");
        methods::dispatch(ctx, &method, &params)
    });
    (id, result)
}

/// Answers an HTTP body: a request object, or a batch (an array of them, answered as an
/// array with status 200).
pub fn handle(ctx: &Ctx, body: &[u8]) -> Reply {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            let e = RpcError::new(code::PARSE_ERROR, "Parse error");
            return Reply { status: e.http_status(), body: reply_object(Err(e), Value::Null) };
        }
    };
    match parsed {
        Value::Array(reqs) => {
            let replies = reqs
                .iter()
                .map(|r| {
                    let (id, result) = execute(ctx, r);
                    reply_object(result, id)
                })
                .collect();
            Reply { status: 200, body: Value::Array(replies) }
        }
        req @ Value::Object(_) => {
            let (id, result) = execute(ctx, &req);
            let status = result.as_ref().err().map_or(200, RpcError::http_status);
            Reply { status, body: reply_object(result, id) }
        }
        _ => {
            let e = RpcError::new(code::PARSE_ERROR, "Top-level object parse error");
            Reply { status: e.http_status(), body: reply_object(Err(e), Value::Null) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::node;

    fn ctx() -> (tempfile::TempDir, Ctx) {
        let (d, n) = node();
        (d, Ctx { node: Arc::new(n), shutdown: Arc::new(Notify::new()), p2p: None })
    }

    /// Sends `body` and checks the status and the reply's error code (or success).
    fn check(ctx: &Ctx, body: &str, status: u16, error_code: Option<i64>) -> Value {
        let r = handle(ctx, body.as_bytes());
        assert_eq!(r.status, status, "{body} -> {}", r.body);
        assert_eq!(r.body["error"]["code"].as_i64(), error_code, "{body} -> {}", r.body);
        if error_code.is_none() {
            assert!(r.body["error"].is_null() && r.body.get("result").is_some(), "{}", r.body);
        } else {
            assert!(r.body["result"].is_null() && r.body["error"]["message"].is_string(), "{}", r.body);
        }
        r.body
    }

    #[test]
    fn replies_have_cores_shape_codes_and_statuses() {
        let (_d, ctx) = ctx();
        let b = check(&ctx, r#"{"method":"getblockcount","params":[],"id":7}"#, 200, None);
        assert_eq!(b, json!({"result": 0, "error": null, "id": 7}));
        check(&ctx, r#"{"method":"getblockcount","id":"x"}"#, 200, None);
        check(&ctx, r#"{"method":"nosuch","params":[],"id":1}"#, 404, Some(code::METHOD_NOT_FOUND));
        check(&ctx, r#"{"params":[],"id":1}"#, 400, Some(code::INVALID_REQUEST));
        check(&ctx, r#"{"method":5,"id":1}"#, 400, Some(code::INVALID_REQUEST));
        check(&ctx, r#"{"method":"getblockcount","params":5,"id":1}"#, 400, Some(code::INVALID_REQUEST));
        let b = check(&ctx, r#"{"method":"getblockcount""#, 500, Some(code::PARSE_ERROR));
        assert!(b["id"].is_null());
        check(&ctx, r#"{"method":"getblockhash","params":[99],"id":1}"#, 500, Some(code::INVALID_PARAMETER));
        check(&ctx, r#"{"method":"getblockhash","params":["x"],"id":1}"#, 500, Some(code::TYPE_ERROR));
        check(&ctx, r#"{"method":"getblockhash","params":[],"id":1}"#, 500, Some(code::INVALID_PARAMETER));
        check(&ctx, r#"{"method":"getblockheader","params":["00"],"id":1}"#, 500, Some(code::INVALID_PARAMETER));
        let zeros = "0".repeat(64);
        let body = format!(r#"{{"method":"getblock","params":["{zeros}"],"id":1}}"#);
        check(&ctx, &body, 500, Some(code::INVALID_ADDRESS_OR_KEY));
        check(
            &ctx,
            r#"{"method":"sendrawtransaction","params":["zz"],"id":1}"#,
            500,
            Some(code::DESERIALIZATION_ERROR),
        );
        check(&ctx, r#"{"method":"getnewaddress","params":[],"id":1}"#, 200, None);
        let b = check(&ctx, r#"{"method":"getblockhash","params":{"height":0},"id":1}"#, 200, None);
        assert_eq!(b["result"], ctx.node.params().genesis_hash.to_string());
    }

    #[test]
    fn batches_are_answered_in_order_with_status_200() {
        let (_d, ctx) = ctx();
        let r = handle(
            &ctx,
            br#"[{"method":"getblockcount","id":1},{"method":"nosuch","id":2},5,{"method":"getbestblockhash","id":3}]"#,
        );
        assert_eq!(r.status, 200);
        let a = r.body.as_array().unwrap();
        assert_eq!(a.len(), 4);
        assert_eq!(a[0], json!({"result": 0, "error": null, "id": 1}));
        assert_eq!(a[1]["error"]["code"], code::METHOD_NOT_FOUND);
        assert_eq!(a[1]["id"], 2);
        assert_eq!(a[2]["error"]["code"], code::INVALID_REQUEST);
        assert_eq!(a[3]["result"], ctx.node.params().genesis_hash.to_string());
    }

    #[test]
    fn wallet_and_mining_calls_work_end_to_end() {
        let (_d, ctx) = ctx();
        let call = |m: &str, p: Value| methods::dispatch(&ctx, m, &p);
        let addr = call("getnewaddress", json!([])).unwrap();
        let hashes = call("generatetoaddress", json!([12, addr])).unwrap();
        assert_eq!(hashes.as_array().unwrap().len(), 12);
        assert_eq!(call("getblockcount", json!([])).unwrap(), 12);
        assert_eq!(call("getbalance", json!([])).unwrap(), json!(150.0));
        let to = call("getnewaddress", json!([])).unwrap();
        let txid = call("sendtoaddress", json!([to, 1.5])).unwrap();
        assert_eq!(call("getrawmempool", json!([])).unwrap(), json!([txid]));
        let verbose = call("getrawmempool", json!([true])).unwrap();
        assert!(verbose[txid.as_str().unwrap()]["vsize"].as_u64().unwrap() > 100);
        let raw = call("getrawtransaction", json!([txid, true])).unwrap();
        assert_eq!(raw["txid"], txid);
        assert!(raw.get("blockhash").is_none());
        // The same transaction again: a rejection with Core's reason (-27 is for confirmed ones).
        let e = call("sendrawtransaction", json!([raw["hex"]])).unwrap_err();
        assert_eq!(e.code, code::VERIFY_REJECTED);
        assert!(e.message.starts_with("txn-already-in-mempool"), "{}", e.message);
        let t = call("getblocktemplate", json!([{"rules": ["segwit"]}])).unwrap();
        assert_eq!(t["height"], 13);
        assert_eq!(t["transactions"][0]["txid"], txid);
        assert!(t["default_witness_commitment"].as_str().unwrap().starts_with("6a24aa21a9ed"));
        assert_eq!(
            call("getblocktemplate", json!([])).unwrap_err().code,
            code::INVALID_PARAMETER,
            "the segwit rule is required, as in core"
        );
        let mined = call("generatetoaddress", json!([1, addr])).unwrap();
        let raw = call("getrawtransaction", json!([txid, 1])).unwrap();
        assert_eq!(raw["blockhash"], mined[0]);
        assert_eq!(raw["confirmations"], 1);
        let e = call("sendrawtransaction", json!([raw["hex"]])).unwrap_err();
        assert_eq!(e.code, code::VERIFY_ALREADY_IN_CHAIN);
        let e = call("sendtoaddress", json!(["bcrt1nope", 1])).unwrap_err();
        assert_eq!(e.code, code::INVALID_ADDRESS_OR_KEY);
        let e = call("sendtoaddress", json!([to, 100000])).unwrap_err();
        assert_eq!(e.code, code::WALLET_INSUFFICIENT_FUNDS);
        for v in [json!(0), json!(1), json!(2), json!(false), json!(true)] {
            let b = call("getblock", json!([mined[0], v])).unwrap();
            match v.as_u64().unwrap_or_else(|| u64::from(v.as_bool().unwrap())) {
                0 => assert!(b.as_str().unwrap().len() > 160),
                1 => assert_eq!(b["tx"][1], txid),
                _ => assert_eq!(b["tx"][1]["txid"], txid),
            }
        }
        let h = call("getblockheader", json!([mined[0], false])).unwrap();
        assert_eq!(h.as_str().unwrap().len(), 160);
        let h = call("getblockheader", json!([mined[0]])).unwrap();
        assert_eq!(h["height"], 13);
        assert_eq!(h["nTx"], 2);
        assert_eq!(call("submitblock", json!([call("getblock", json!([mined[0], 0])).unwrap()])).unwrap(), "duplicate");
        assert_eq!(call("stop", json!([])).unwrap(), "micro-os-node stopping");
    }
}
