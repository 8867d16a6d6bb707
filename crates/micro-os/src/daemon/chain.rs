//! The reference chain's nodes, seen from the daemon: `chain status`, `chain send` and
//! `chain wallet` ask the node in a container over its Bitcoin Core-style JSON-RPC.
//!
//! The node listens on loopback inside its container's network namespace; the daemon
//! makes its socket there (`netns::connect_tcp`), so nothing is published or routed on
//! the host. It authenticates with the cookie the node writes in its data volume, as
//! Bitcoin Core's clients do.

use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use micro_os_api::types::{ChainSend, ChainSent, ChainStatus, ChainWallet};
use micro_os_core::{Container, ContainerState};
use serde_json::{json, Value};

use super::engine::Engine;
use super::error::{Error, Result};

/// The image of the reference chain's node.
pub(super) const NODE_IMAGE: &str = "blockchain-node";
const RPC_WAIT: Duration = Duration::from_secs(10);

impl Engine {
    /// A running reference-chain node by container id or name.
    fn chain_node(&self, key: &str) -> Result<Container> {
        let c = self.find(key)?;
        if c.spec.image != NODE_IMAGE {
            return Err(Error::invalid(format!(
                "container {:?} is not a node of the reference chain (its image is {:?}, not {NODE_IMAGE}; \
                 create one with --template blockchain-full-node)",
                c.spec.name, c.spec.image
            )));
        }
        if c.state != ContainerState::Running {
            return Err(Error::conflict(format!("container {:?} is {} (start it first)", c.spec.name, c.state)));
        }
        Ok(c)
    }

    /// One JSON-RPC call to the node in container `c`: its result, or its error as ours.
    pub(super) async fn node_rpc(&self, c: &Container, method: &str, params: Value) -> Result<Value> {
        let name = c.spec.name.clone();
        let network = c.spec.config.get("network").cloned().unwrap_or_else(|| "devnet".into());
        let port = micro_os_chain::params::Params::by_name(&network)
            .map(|p| p.rpc_port)
            .map_err(|e| Error::invalid(format!("container {name:?}: {e}")))?;
        let cookie_path = self.state_dir(&c.id).join("data/.cookie");
        let cookie = std::fs::read_to_string(&cookie_path).map_err(|e| {
            Error::Unavailable(format!(
                "node {name:?} has not written its RPC cookie yet ({}: {e}); is it still starting?",
                cookie_path.display()
            ))
        })?;
        let netns = match &c.spec.vm {
            Some(vm) => self.host.netns_path(vm),
            None => self.state_dir(&c.id).join("netns"),
        };
        let unreachable =
            |e: String| Error::Unavailable(format!("node {name:?} does not answer on its RPC port {port}: {e}"));
        let stream = tokio::task::spawn_blocking(move || {
            let s = micro_os_runtime::netns::connect_tcp(&netns, port, RPC_WAIT)?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let stream = tokio::net::TcpStream::from_std(stream).map_err(|e| unreachable(e.to_string()))?;
        let call = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let body = json!({"jsonrpc": "1.0", "id": "micro-os", "method": method, "params": params}).to_string();
            let auth = base64::engine::general_purpose::STANDARD.encode(cookie.trim());
            let req = hyper::Request::post("/")
                .header("host", format!("127.0.0.1:{port}"))
                .header("content-type", "application/json")
                .header("authorization", format!("Basic {auth}"))
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| Error::internal(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(RPC_WAIT, call)
            .await
            .map_err(|_| unreachable(format!("no answer in {RPC_WAIT:?}")))??;
        let reply: Value = serde_json::from_slice(&bytes).map_err(|_| {
            Error::internal(format!("node {name:?} answered {method} with HTTP {status} and no JSON-RPC reply"))
        })?;
        match reply.get("error") {
            Some(Value::Null) | None => Ok(reply.get("result").cloned().unwrap_or(Value::Null)),
            Some(e) => Err(rpc_error(&name, method, e)),
        }
    }

    pub async fn chain_status(&self, key: &str) -> Result<ChainStatus> {
        let c = self.chain_node(key)?;
        let info = self.node_rpc(&c, "getblockchaininfo", json!([])).await?;
        let mining = self.node_rpc(&c, "getmininginfo", json!([])).await?;
        let mempool = self.node_rpc(&c, "getmempoolinfo", json!([])).await?;
        let network = self.node_rpc(&c, "getnetworkinfo", json!([])).await?;
        let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let (height, headers) = (n(&info, "blocks"), n(&info, "headers"));
        Ok(ChainStatus {
            container: c.spec.name.clone(),
            network: info.get("chain").and_then(Value::as_str).unwrap_or("?").to_string(),
            height,
            headers,
            tip: info.get("bestblockhash").and_then(Value::as_str).unwrap_or_default().to_string(),
            peers: n(&network, "connections"),
            mempool_txs: n(&mempool, "size"),
            mempool_bytes: n(&mempool, "bytes"),
            hashrate: f(&mining, "networkhashps").max(f(&mining, "hashespersec")),
            difficulty: f(&info, "difficulty"),
            sync_progress: if headers == 0 { 1.0 } else { (height as f64 / headers as f64).min(1.0) },
            syncing: info.get("initialblockdownload").and_then(Value::as_bool).unwrap_or(height < headers),
        })
    }

    pub async fn chain_send(&self, key: &str, req: ChainSend) -> Result<ChainSent> {
        if !(req.amount.is_finite() && req.amount > 0.0) {
            return Err(Error::invalid(format!("amount {} is not a positive number of coins (try 1.5)", req.amount)));
        }
        let c = self.chain_node(key)?;
        let txid = self.node_rpc(&c, "sendtoaddress", json!([req.to, req.amount])).await?;
        Ok(ChainSent { txid: txid.as_str().unwrap_or_default().to_string() })
    }

    pub async fn chain_wallet(&self, key: &str) -> Result<ChainWallet> {
        let c = self.chain_node(key)?;
        let balance = self.node_rpc(&c, "getbalance", json!([])).await?;
        let address = self.node_rpc(&c, "getnewaddress", json!([])).await?;
        Ok(ChainWallet {
            container: c.spec.name.clone(),
            balance: balance.as_f64().unwrap_or(0.0),
            address: address.as_str().unwrap_or_default().to_string(),
        })
    }
}

/// A node's JSON-RPC error as ours: bad input stays bad input (an address, an amount, a
/// refused transaction), lack of funds is a conflict.
fn rpc_error(node: &str, method: &str, e: &Value) -> Error {
    let code = e.get("code").and_then(Value::as_i64).unwrap_or(-1);
    let msg = e.get("message").and_then(Value::as_str).unwrap_or("?");
    let line = format!("node {node:?}: {method}: {msg}");
    match code {
        // invalid parameter, address or key; type error; verify rejected
        -8 | -5 | -3 | -26 | -25 => Error::invalid(line),
        // insufficient funds
        -6 => Error::conflict(line),
        _ => Error::internal(line),
    }
}
