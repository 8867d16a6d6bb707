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
use micro_os_core::metrics::{AlertRule, ChainSample, Severity};
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

    /// Where the other reference-chain nodes of `c`'s network listen, as multiaddrs: those
    /// running on VMs of this host (a VM's address is on the VM bridge, which every VM
    /// reaches) and of the fabric's other hosts (reached over the overlay) — the seeds `c`
    /// dials when it starts, like Bitcoin Core's `-addnode`.
    pub(super) fn chain_seeds(&self, c: &Container) -> Vec<String> {
        let network = c.spec.config.get("network").cloned().unwrap_or_else(|| "devnet".into());
        let mut seeds: Vec<String> = self
            .chain_nodes_except(Some(&c.id), c.spec.vm.as_deref())
            .into_iter()
            .chain(self.fabric_chain_nodes())
            .filter(|(n, _)| *n == network)
            .map(|(_, a)| a)
            .collect();
        seeds.dedup();
        seeds
    }

    /// This host's running reference-chain nodes on VMs: (network, multiaddr of their P2P
    /// port on the VM's address).
    pub(super) fn local_chain_nodes(&self) -> Vec<(String, String)> {
        self.chain_nodes_except(None, None)
    }

    fn chain_nodes_except(&self, container: Option<&str>, vm: Option<&str>) -> Vec<(String, String)> {
        let network = |x: &Container| x.spec.config.get("network").cloned().unwrap_or_else(|| "devnet".into());
        self.containers
            .filter(|x| {
                Some(x.id.as_str()) != container
                    && x.spec.image == NODE_IMAGE
                    && x.state == ContainerState::Running
                    && x.spec.vm.is_some()
            })
            .into_iter()
            .filter_map(|x| {
                let vm_of = self.vms.get(x.spec.vm.as_deref()?)?;
                let params = micro_os_chain::params::Params::by_name(&network(&x)).ok()?;
                (Some(vm_of.id.as_str()) != vm)
                    .then(|| (network(&x), format!("/ip4/{}/tcp/{}", vm_of.address, params.p2p_port)))
            })
            .collect()
    }

    /// One JSON-RPC call to the node in container `c`: its result, or its error as ours.
    pub(super) async fn node_rpc(&self, c: &Container, method: &str, params: Value) -> Result<Value> {
        let mut out = self.node_batch(c, &[(method, params)]).await?;
        out.pop().unwrap_or_else(|| Err(Error::internal(format!("node {:?} answered no {method}", c.spec.name))))
    }

    /// Several JSON-RPC calls to the node in container `c` in one request (a batch, as
    /// Bitcoin Core takes them): one connection made in its netns, each call's result or
    /// error in order.
    pub(super) async fn node_batch(&self, c: &Container, calls: &[(&str, Value)]) -> Result<Vec<Result<Value>>> {
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
        let body: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, (method, params))| json!({"jsonrpc": "1.0", "id": i, "method": method, "params": params}))
            .collect();
        let call = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let auth = base64::engine::general_purpose::STANDARD.encode(cookie.trim());
            let req = hyper::Request::post("/")
                .header("host", format!("127.0.0.1:{port}"))
                .header("content-type", "application/json")
                .header("authorization", format!("Basic {auth}"))
                .body(Full::new(Bytes::from(Value::Array(body).to_string())))
                .map_err(|e| Error::internal(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(RPC_WAIT, call)
            .await
            .map_err(|_| unreachable(format!("no answer in {RPC_WAIT:?}")))??;
        let replies: Vec<Value> =
            serde_json::from_slice(&bytes).ok().filter(|r: &Vec<Value>| r.len() == calls.len()).ok_or_else(|| {
                Error::internal(format!("node {name:?} answered HTTP {status} and no JSON-RPC batch reply"))
            })?;
        Ok(replies
            .into_iter()
            .zip(calls)
            .map(|(reply, (method, _))| match reply.get("error") {
                Some(Value::Null) | None => Ok(reply.get("result").cloned().unwrap_or(Value::Null)),
                Some(e) => Err(rpc_error(&name, method, e)),
            })
            .collect())
    }

    pub async fn chain_status(&self, key: &str) -> Result<ChainStatus> {
        let c = self.chain_node(key)?;
        let calls = [
            ("getblockchaininfo", json!([])),
            ("getmininginfo", json!([])),
            ("getmempoolinfo", json!([])),
            ("getnetworkinfo", json!([])),
        ];
        let mut r = self.node_batch(&c, &calls).await?.into_iter();
        let mut next = || r.next().unwrap_or(Ok(Value::Null));
        let (info, mining, mempool, network) = (next()?, next()?, next()?, next()?);
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
            consensus: info.get("consensus").and_then(Value::as_str).unwrap_or("pow").to_string(),
            validators: info
                .get("validators")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default(),
            finalized: info.get("finalized").and_then(Value::as_u64),
            light: info.get("light").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    pub async fn chain_send(&self, key: &str, req: ChainSend) -> Result<ChainSent> {
        if !(req.amount.is_finite() && req.amount > 0.0) {
            return Err(Error::invalid(format!("amount {} is not a positive number of coins (try 1.5)", req.amount)));
        }
        if let Some(f) = req.fee_rate.filter(|f| !(f.is_finite() && *f >= 1.0 && *f <= 1_000_000.0)) {
            return Err(Error::invalid(format!("fee rate {f} is not a rate in sat/vB from 1 to 1000000 (try 5)")));
        }
        let c = self.chain_node(key)?;
        let params = match req.fee_rate {
            // Core's positional parameters up to fee_rate (the 10th)
            Some(f) => json!([req.to, req.amount, "", "", false, false, null, "unset", false, f]),
            None => json!([req.to, req.amount]),
        };
        let txid = self.node_rpc(&c, "sendtoaddress", params).await?;
        Ok(ChainSent { txid: txid.as_str().unwrap_or_default().to_string() })
    }

    pub async fn chain_wallet(&self, key: &str) -> Result<ChainWallet> {
        let c = self.chain_node(key)?;
        let mut r = self.node_batch(&c, &[("getbalance", json!([])), ("getnewaddress", json!([]))]).await?.into_iter();
        let mut next = || r.next().unwrap_or(Ok(Value::Null));
        let (balance, address) = (next()?, next()?);
        Ok(ChainWallet {
            container: c.spec.name.clone(),
            balance: balance.as_f64().unwrap_or(0.0),
            address: address.as_str().unwrap_or_default().to_string(),
        })
    }
}

impl Engine {
    /// What every running reference-chain node reports, by container id (the collector's
    /// round adds it to the nodes' samples); a node that does not answer is left out.
    pub(super) async fn chain_samples(&self) -> std::collections::HashMap<String, ChainSample> {
        let nodes = self.containers.filter(|c| c.spec.image == NODE_IMAGE && c.state == ContainerState::Running);
        let asked = nodes.iter().map(|c| async move { (c.id.clone(), self.chain_sample(c).await) });
        futures_util::future::join_all(asked)
            .await
            .into_iter()
            .filter_map(|(id, s)| match s {
                Ok(s) => Some((id, s)),
                Err(e) => {
                    tracing::debug!("monitor: chain node {id}: {e}");
                    None
                }
            })
            .collect()
    }

    async fn chain_sample(&self, c: &Container) -> Result<ChainSample> {
        let calls = [
            ("getblockchaininfo", json!([])),
            ("getmempoolinfo", json!([])),
            ("getmininginfo", json!([])),
            ("getnetworkinfo", json!([])),
            ("getpeerinfo", json!([])),
        ];
        let mut r = self.node_batch(c, &calls).await?.into_iter();
        let mut next = || r.next().unwrap_or(Ok(Value::Null));
        let (info, mempool, mining, network) = (next()?, next()?, next()?, next()?);
        let peers = next().unwrap_or(Value::Null);
        let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let (height, headers, tip_time) = (n(&info, "blocks"), n(&info, "headers"), n(&info, "time"));
        // the best height it knows of: its headers, or what its peers said they had
        let best_peer = peers
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("startingheight").or_else(|| p.get("synced_headers")).and_then(Value::as_u64))
            .max()
            .unwrap_or(0);
        // over the last ten blocks, never back to the genesis (its time is the network's birth)
        let back = height.saturating_sub(1).min(10);
        let interval = if back == 0 {
            0.0
        } else {
            // getblockheader takes a height's hash: one more call after the hash
            let hash = self.node_rpc(c, "getblockhash", json!([height - back])).await?;
            let then = self.node_rpc(c, "getblockheader", json!([hash, true])).await?;
            tip_time.saturating_sub(n(&then, "time")) as f64 / back as f64
        };
        let network_name = c.spec.config.get("network").map(String::as_str).unwrap_or("devnet");
        let spacing = micro_os_chain::params::Params::by_name(network_name).map(|p| p.target_spacing_s).unwrap_or(60);
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        Ok(ChainSample {
            chain_height: height,
            chain_peers: n(&network, "connections"),
            chain_mempool_txs: n(&mempool, "size"),
            chain_mempool_bytes: n(&mempool, "bytes"),
            chain_hashrate: mining.get("hashespersec").and_then(Value::as_f64).unwrap_or(0.0),
            chain_block_interval_s: interval,
            chain_lag_blocks: headers.max(best_peer).saturating_sub(height),
            chain_stall_intervals: now.saturating_sub(tip_time) as f64 / spacing.max(1) as f64,
        })
    }
}

impl Engine {
    /// The `chain` component: the reference-chain nodes and their health checks (which ask
    /// each node whether it serves and is not stalled); not configured without nodes.
    pub(super) fn chain_health(&self) -> super::components::Health {
        use super::components::Health;
        use micro_os_core::HealthStatus;
        let nodes = self.containers.filter(|c| c.spec.image == NODE_IMAGE && !c.is_replicated());
        if nodes.is_empty() {
            return Health::NotConfigured;
        }
        let running = nodes.iter().filter(|c| c.state == ContainerState::Running).count();
        let sick: Vec<&str> = nodes
            .iter()
            .filter(|c| c.health.as_ref().is_some_and(|h| h.status == HealthStatus::Unhealthy))
            .map(|c| c.spec.name.as_str())
            .collect();
        if sick.is_empty() {
            Health::Is(Severity::Healthy, format!("{running} of {} nodes running", nodes.len()))
        } else {
            Health::Is(Severity::Degraded, format!("nodes unhealthy (stalled or not serving): {}", sick.join(", ")))
        }
    }
}

/// The default alert rules of reference-chain nodes (config `chain_alert_*`; 0 turns one
/// off): a node lagging its peers' best, one that has seen no block for a number of its
/// network's block intervals, one without peers.
pub(super) fn chain_alert_rules(cfg: &crate::home::Config) -> Vec<AlertRule> {
    let rule = |name: &str, metric: &str, above: f64, for_s: u64, severity: Severity| AlertRule {
        name: name.into(),
        metric: metric.into(),
        above,
        for_s,
        increase_over_s: None,
        objects: "container/*".into(),
        severity,
    };
    let mut out = Vec::new();
    if cfg.chain_alert_lag_blocks > 0 {
        let above = cfg.chain_alert_lag_blocks as f64;
        out.push(rule("chain-node-lagging", "chain_lag_blocks", above, cfg.chain_alert_for_s, Severity::Degraded));
    }
    if cfg.chain_alert_stall_intervals > 0 {
        let above = cfg.chain_alert_stall_intervals as f64;
        out.push(rule("chain-node-stalled", "chain_stall_intervals", above, 0, Severity::Critical));
    }
    if cfg.chain_alert_no_peers_s > 0 {
        out.push(rule("chain-node-no-peers", "chain_no_peers", 0.5, cfg.chain_alert_no_peers_s, Severity::Degraded));
    }
    // the user's own rule of the same name wins
    out.retain(|r| !cfg.alerts.iter().any(|u| u.name == r.name));
    out
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
