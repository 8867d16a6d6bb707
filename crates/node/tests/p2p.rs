//! End to end over loopback: real `micro-os-node` binaries, each with its own data
//! directory, RPC port and P2P port, talking `/micro-os/chain/1` through micro-os's libp2p
//! layer — headers-first sync, relay of transactions and blocks, a reorganisation onto the
//! heavier chain, a sync that resumes after `kill -9`; and a misbehaving peer (a p2p peer
//! of this test, spawned with `micro_os_p2p::spawn`) refused, counted and banned.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::block::Version as BlockVersion;
use bitcoin::hashes::Hash;
use bitcoin::{Amount, ScriptBuf, TxMerkleNode};
use micro_os_chain::miner::build_block;
use micro_os_chain::params::Params;
use micro_os_node::p2p::wire;
use micro_os_p2p::net::{MemoryNonces, MessageType};
use micro_os_p2p::{Multiaddr, PeerId, Policy, ProtocolHandler, Refusal, Request};
use serde_json::{json, Value};

/// A node process, killed when dropped (also when the test fails).
struct Node {
    child: Option<Child>,
    dir: PathBuf,
    rpc: u16,
    p2p: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Node {
    fn start(tmp: &Path, name: &str, extra: &[String]) -> Node {
        let mut n = Node { child: None, dir: tmp.join(name), rpc: free_port(), p2p: free_port() };
        n.spawn(extra);
        n
    }

    fn spawn(&mut self, extra: &[String]) {
        let _ = std::fs::remove_file(self.dir.join(".cookie"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_micro-os-node"))
            .args(["--datadir", self.dir.to_str().unwrap(), "--network", "devnet"])
            .args(["--rpc-bind", &format!("127.0.0.1:{}", self.rpc)])
            .args(["--p2p-listen", &format!("/ip4/127.0.0.1/tcp/{}", self.p2p)])
            .args(extra)
            .env_remove("MICRO_OS_CONFIG_MINE")
            .env_remove("MICRO_OS_CONFIG_CONNECT")
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting micro-os-node");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.try_rpc("getblockcount", json!([])).is_err() {
            assert!(Instant::now() < deadline, "node {} did not answer rpc; log:\n{}", self.dir.display(), self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.p2p)
    }

    fn try_rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        let cookie = std::fs::read_to_string(self.dir.join(".cookie")).map_err(|e| e.to_string())?;
        let (user, pass) = cookie.trim().split_once(':').unwrap();
        let auth = base64_basic(user, pass);
        let body = json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}).to_string();
        let reply = ureq::post(&format!("http://127.0.0.1:{}/", self.rpc))
            .set("authorization", &auth)
            .timeout(Duration::from_secs(60))
            .send_string(&body);
        let v: Value = match reply {
            Ok(r) => r.into_json().map_err(|e| e.to_string())?,
            Err(ureq::Error::Status(_, r)) => r.into_json().map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        match &v["error"] {
            Value::Null => Ok(v["result"].clone()),
            e => Err(e.to_string()),
        }
    }

    fn rpc(&self, method: &str, params: Value) -> Value {
        self.try_rpc(method, params.clone())
            .unwrap_or_else(|e| panic!("{method} {params} on {}: {e}; log:\n{}", self.dir.display(), self.log()))
    }

    fn height(&self) -> u64 {
        self.rpc("getblockcount", json!([])).as_u64().unwrap()
    }

    fn tip(&self) -> String {
        self.rpc("getbestblockhash", json!([])).as_str().unwrap().to_string()
    }

    fn mine(&self, n: u32) -> String {
        let addr = self.rpc("getnewaddress", json!([]));
        self.rpc("generatetoaddress", json!([n, addr]));
        addr.as_str().unwrap().to_string()
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
    }
}

fn base64_basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

/// Waits until `cond` holds, or fails naming `what` and the logs of `nodes`.
fn wait(what: &str, timeout: Duration, nodes: &[&Node], mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes.iter().map(|n| format!("--- {}:\n{}", n.dir.display(), n.log())).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn connect(to: &Node) -> Vec<String> {
    vec!["--connect".into(), to.addr()]
}

/// (a) B syncs A's 200 blocks; (b) a transaction sent through B reaches A's mempool, A
/// mines it and B sees it confirmed.
#[test]
fn a_node_syncs_and_transactions_and_blocks_are_relayed() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::start(tmp.path(), "a", &[]);
    let a_addr = a.mine(200);
    let b = Node::start(tmp.path(), "b", &connect(&a));
    wait("b to sync a's 200 blocks", Duration::from_secs(30), &[&a, &b], || b.height() == 200);
    assert_eq!(b.tip(), a.tip());
    let peers = b.rpc("getpeerinfo", json!([]));
    let a_id = a.rpc("getp2pinfo", json!([]))["peerid"].clone();
    assert_eq!(peers[0]["peerid"], a_id, "{peers}");
    assert_eq!(peers[0]["synced_blocks"], 200, "{peers}");
    assert!(peers[0]["bytesrecv"].as_u64().unwrap() > 0, "{peers}");
    assert_eq!(b.rpc("getnetworkinfo", json!([]))["connections"], 1, "{peers}");

    // blocks mined on B reach A: B's coins mature
    b.mine(11);
    wait("a to get b's blocks", Duration::from_secs(20), &[&a, &b], || a.height() == 211);
    assert_eq!(a.tip(), b.tip());

    let txid = b.rpc("sendtoaddress", json!([a_addr, 10]));
    wait("b's transaction in a's mempool", Duration::from_secs(20), &[&a, &b], || {
        a.rpc("getrawmempool", json!([])).as_array().unwrap().contains(&txid)
    });
    a.mine(1);
    wait("b to see a's block", Duration::from_secs(20), &[&a, &b], || b.height() == 212);
    let tx = b.rpc("getrawtransaction", json!([txid, true]));
    assert_eq!(tx["confirmations"], 1, "{tx}");
    assert_eq!(tx["blockhash"].as_str().unwrap(), a.tip());
    assert_eq!(b.rpc("getrawmempool", json!([])), json!([]));
}

/// A light node follows a full node's headers, proves a payment to its wallet with a
/// merkle proof, pays back through the full node, and a full node never downloads blocks
/// from it.
#[test]
fn a_light_node_follows_headers_and_proves_its_payments() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::start(tmp.path(), "a", &[]);
    a.mine(30);
    let mut args = connect(&a);
    args.extend(["--kind".into(), "light".into()]);
    let l = Node::start(tmp.path(), "light", &args);
    wait("the light node to follow a's 30 headers", Duration::from_secs(30), &[&a, &l], || l.height() == 30);
    assert_eq!(l.tip(), a.tip());
    let info = l.rpc("getblockchaininfo", json!([]));
    assert_eq!(info["light"], true, "{info}");
    assert_eq!(info["headers"], 30, "{info}");
    let e = l.try_rpc("getblock", json!([a.tip()])).unwrap_err();
    assert!(e.contains("Block not available"), "{e}");
    let e = l.try_rpc("generatetoaddress", json!([1, l.rpc("getnewaddress", json!([]))])).unwrap_err();
    assert!(e.contains("a light node does not mine"), "{e}");

    // a pays the light wallet; once mined, the light node proves it and counts it
    let to_light = l.rpc("getnewaddress", json!([]));
    let paid = a.rpc("sendtoaddress", json!([to_light, 12.5]));
    let a_addr = a.mine(1);
    wait("the light wallet to prove the payment", Duration::from_secs(30), &[&a, &l], || {
        l.rpc("getbalance", json!([])).as_f64() == Some(12.5)
    });
    let tx = l.rpc("getrawtransaction", json!([paid, true]));
    assert_eq!(tx["blockhash"].as_str().unwrap(), a.tip(), "{tx}");
    assert_eq!(tx["confirmations"], 1, "{tx}");
    assert!(l.log().contains("wallet transaction(s) proven"), "{}", l.log());

    // the light wallet pays back: a takes it into its mempool, mines it, and the light
    // node proves the spend
    let back = l.rpc("sendtoaddress", json!([a_addr, 5]));
    wait("the light node's payment in a's mempool", Duration::from_secs(20), &[&a, &l], || {
        a.rpc("getrawmempool", json!([])).as_array().unwrap().contains(&back)
    });
    a.mine(1);
    wait("the light wallet to prove its spend", Duration::from_secs(30), &[&a, &l], || {
        l.rpc("getrawtransaction", json!([back, true]))["confirmations"] == 1
    });
    let left = l.rpc("getbalance", json!([])).as_f64().unwrap();
    assert!(left > 7.49 && left < 7.5, "12.5 - 5 - fee: {left}");

    // a full node that meets the light node first syncs from a, not from it
    let mut args = connect(&l);
    args.extend(connect(&a));
    let b = Node::start(tmp.path(), "b", &args);
    wait("b to sync from a", Duration::from_secs(30), &[&a, &b, &l], || b.height() == 32);
    wait("b to greet both", Duration::from_secs(30), &[&a, &b, &l], || {
        b.rpc("getpeerinfo", json!([])).as_array().unwrap().len() == 2
    });
    let peers = b.rpc("getpeerinfo", json!([]));
    let light = peers.as_array().unwrap().iter().find(|p| p["light"] == true);
    assert!(light.is_some(), "b sees the light node as light: {peers}");
    assert!(!b.log().contains("has none of"), "b asked the light node for blocks:\n{}", b.log());
}

/// Fast sync: B takes A's headers, the UTXO snapshot at 199 that block 200's coinbase
/// commits to, and validates forward to A's tip; with A's snapshot tampered, C refuses it,
/// scores A down and syncs in full.
#[test]
fn fast_sync_starts_from_a_committed_snapshot_and_refuses_a_tampered_one() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::start(tmp.path(), "a", &[]);
    a.mine(230);
    let snapshot = micro_os_node::fast::snapshot_path(&a.dir, 199);
    assert!(snapshot.exists(), "a keeps the state block 200 commits to");
    let mut args = connect(&a);
    args.extend(["--sync-mode".into(), "fast".into()]);
    let b = Node::start(tmp.path(), "b", &args);
    wait("b to fast-sync to a's tip", Duration::from_secs(60), &[&a, &b], || b.height() == 230);
    assert_eq!(b.tip(), a.tip());
    let log = b.log();
    assert!(log.contains("fast sync: utxo snapshot at height 199"), "{log}");
    assert!(log.contains("matches block 200's commitment"), "{log}");
    // below the snapshot: the chain is known at once, its blocks arrive in the background
    let old = b.rpc("getblockhash", json!([10]));
    assert_eq!(old, a.rpc("getblockhash", json!([10])));
    wait("b to fetch the blocks below the snapshot", Duration::from_secs(60), &[&a, &b], || {
        b.try_rpc("getblock", json!([old.clone()])).is_ok()
    });
    wait("b to say so", Duration::from_secs(30), &[&a, &b], || {
        b.log().contains("blocks below the snapshot are fetched")
    });
    let coinbase = b.rpc("getblock", json!([old.clone(), 1]))["tx"][0].clone();
    assert_eq!(b.rpc("getrawtransaction", json!([coinbase, true]))["blockhash"], old, "in the tx index too");
    // a payment after the snapshot is validated and seen
    let to = b.rpc("getnewaddress", json!([]));
    a.rpc("sendtoaddress", json!([to, 3]));
    a.mine(1);
    wait("b to see the payment", Duration::from_secs(30), &[&a, &b], || {
        b.rpc("getbalance", json!([])).as_f64() == Some(3.0)
    });

    // a tampered snapshot: one byte of the first coin's amount
    let mut bytes = std::fs::read(&snapshot).unwrap();
    bytes[44 + 36] ^= 1;
    std::fs::write(&snapshot, bytes).unwrap();
    let mut args = connect(&a);
    args.extend(["--sync-mode".into(), "fast".into()]);
    let c = Node::start(tmp.path(), "c", &args);
    wait("c to sync in full after refusing the snapshot", Duration::from_secs(60), &[&a, &c], || c.height() == 231);
    let log = c.log();
    assert!(log.contains("the utxo snapshot from") && log.contains("is refused"), "{log}");
    let info = c.rpc("getp2pinfo", json!([]));
    assert_eq!(info["refused"]["bad-snapshot"], 1, "{info}");
    let peers = c.rpc("getpeerinfo", json!([]));
    let a_id = a.rpc("getp2pinfo", json!([]))["peerid"].clone();
    let a_seen = peers.as_array().unwrap().iter().find(|p| p["peerid"] == a_id).expect("c knows a");
    assert!(a_seen["score"].as_i64().unwrap() < 0, "a's score dropped: {peers}");
    // c validated everything: it has the old blocks
    assert!(c.try_rpc("getblock", json!([old])).is_ok());
}

/// (c) A and C mine apart, C longer; once connected both follow C's chain and A's wallet
/// loses the coins of its orphaned blocks.
#[test]
fn nodes_converge_on_the_heavier_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::start(tmp.path(), "a", &[]);
    let c = Node::start(tmp.path(), "c", &[]);
    a.mine(15);
    c.mine(25);
    let a_before = a.rpc("getbalances", json!([]))["mine"].clone();
    assert!(a_before["immature"].as_f64().unwrap() + a_before["trusted"].as_f64().unwrap() > 0.0, "{a_before}");
    let c_balance = c.rpc("getbalances", json!([]))["mine"].clone();
    let c_tip = c.tip();

    a.rpc("addnode", json!([c.addr(), "add"]));
    wait("a to reorganise onto c's chain", Duration::from_secs(30), &[&a, &c], || a.tip() == c_tip);
    assert_eq!(c.tip(), c_tip, "c keeps its heavier chain");
    assert_eq!(a.height(), 25);
    let a_after = a.rpc("getbalances", json!([]))["mine"].clone();
    assert_eq!(a_after["trusted"], 0.0, "{a_after}");
    assert_eq!(a_after["immature"], 0.0, "{a_after}");
    assert_eq!(c.rpc("getbalances", json!([]))["mine"], c_balance);
    // the UTXO set follows: a block A mined now pays A on top of C's chain
    a.mine(1);
    wait("c to take a's block", Duration::from_secs(20), &[&a, &c], || c.height() == 26);
    assert_eq!(a.tip(), c.tip());
}

/// (d) `kill -9` of B in the middle of a 2000-block sync; restarted, it resumes from its
/// stored state and reaches A's tip.
#[test]
fn a_sync_killed_with_sigkill_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::start(tmp.path(), "a", &[]);
    a.mine(2000);
    let a_tip = a.tip();
    let mut b = Node::start(tmp.path(), "b", &connect(&a));
    let mut seen = 0;
    wait("b to be part way", Duration::from_secs(40), &[&a, &b], || {
        seen = b.height();
        seen >= 300
    });
    b.kill9();
    assert!(seen < 2000, "the sync finished before the kill (height {seen})");

    let started = Instant::now();
    b.spawn(&connect(&a));
    let resumed = b.height();
    assert!(resumed >= seen, "height {resumed} after the restart, {seen} before the kill");
    let mut rss = 0;
    wait("b to reach a's tip after the restart", Duration::from_secs(60), &[&a, &b], || {
        rss = rss.max(b.rss_kib().unwrap_or(0));
        b.tip() == a_tip
    });
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "resumed at {resumed} (killed at ≥ {seen}), synced {} blocks in {secs:.1} s: {:.0} blocks/s, rss {} MiB",
        2000 - resumed,
        (2000 - resumed) as f64 / secs,
        rss / 1024
    );
    let log = b.log();
    assert!(log.contains(" of 2000 ("), "the progress line shows during the sync:\n{log}");
}

/// Answers every request with a `Hello` of devnet at genesis, so the node takes this test's
/// peer for a chain peer.
struct Greeter;

impl ProtocolHandler for Greeter {
    fn handle(&self, _: Request) -> futures_util::future::BoxFuture<'_, Result<Vec<u8>, Refusal>> {
        let g = Params::devnet().genesis_hash;
        Box::pin(async move {
            Ok(serde_json::to_vec(&wire::Hello { genesis: g, height: 0, tip: g, light: false }).unwrap())
        })
    }
}

struct Anyone;

impl Policy for Anyone {
    fn known(&self, _: &PeerId) -> bool {
        true
    }
}

/// A block on genesis paying nothing: with a bad proof of work, or a wrong merkle root.
fn bad_block(bad_pow: bool) -> String {
    let params = Params::devnet();
    let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as u32;
    let mut b = build_block(
        params.genesis_hash,
        1,
        time,
        params.pow_limit_bits,
        BlockVersion::from_consensus(0x2000_0000),
        vec![],
        Amount::from_int_btc(50),
        ScriptBuf::new_op_return([7u8; 4]),
        &[1],
    )
    .unwrap();
    if !bad_pow {
        b.header.merkle_root = TxMerkleNode::all_zeros();
    }
    let target = b.header.target();
    while b.header.validate_pow(target).is_ok() == bad_pow {
        b.header.nonce += 1;
    }
    wire::block_hex(&b)
}

/// (e) A peer sending a request of another network, a block with a bad proof of work and
/// one with a bad merkle root is refused with each reason, counted, scored down and banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_peer_is_refused_counted_and_banned() {
    let tmp = tempfile::tempdir().unwrap();
    let node = tokio::task::block_in_place(|| Node::start(tmp.path(), "n", &[]));
    let info = tokio::task::block_in_place(|| node.rpc("getp2pinfo", json!([])));
    let node_id: PeerId = info["peerid"].as_str().unwrap().parse().unwrap();
    let magic = info["magic"].as_str().unwrap().to_string();

    let key = micro_os_p2p::libp2p::identity::Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let cfg = micro_os_p2p::Config { listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], ..Default::default() };
    let peer = micro_os_p2p::spawn(key, cfg, Box::new(MemoryNonces::default()), Arc::new(Anyone)).unwrap();
    peer.register(wire::PROTOCOL, Arc::new(Greeter)).unwrap();
    peer.connect(node_id, node.addr().parse::<Multiaddr>().unwrap()).await;

    let send = |magic: &str, message: wire::Message| {
        let state = serde_json::to_string(&wire::Request { magic: magic.to_string(), message }).unwrap();
        let peer = peer.clone();
        async move { peer.send_request(node_id, wire::PROTOCOL, MessageType::Sync, state).await }
    };
    let refusal = |r: Result<Vec<u8>, micro_os_p2p::Error>| match r {
        Err(micro_os_p2p::Error::Stream(micro_os_p2p::StreamError::Refused(why))) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let g = Params::devnet().genesis_hash;
    let hello = wire::Message::Hello(wire::Hello { genesis: g, height: 0, tip: g, light: false });

    let mainnet = wire::magic_hex(Params::mainnet().magic);
    let why = refusal(send(&mainnet, hello.clone()).await);
    assert!(why.starts_with("wrong network magic \"e36d6f73\""), "{why}");
    send(&magic, hello.clone()).await.expect("a hello of devnet is answered");

    let peer_info = || {
        tokio::task::block_in_place(|| node.rpc("getpeerinfo", json!([])))
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peerid"] == me.to_string())
            .cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer_info().is_none() {
        assert!(Instant::now() < deadline, "the node never listed the test peer: {}", node.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(peer_info().unwrap()["score"], -20);

    let why = refusal(send(&magic, wire::Message::Block { hex: bad_block(true), seal: None }).await);
    assert!(why.contains("refused: bad-pow"), "{why}");
    assert_eq!(peer_info().unwrap()["score"], -70);

    let why = refusal(send(&magic, wire::Message::Block { hex: bad_block(false), seal: None }).await);
    assert!(why.contains("refused: bad-merkle-root"), "{why}");

    let info = tokio::task::block_in_place(|| node.rpc("getp2pinfo", json!([])));
    assert_eq!(info["refused"], json!({"wrong network magic": 1, "bad-pow": 1, "bad-merkle-root": 1}), "{info}");
    assert_eq!(info["banned"][0]["peerid"], me.to_string(), "score -120 bans: {info}");
    // banned: refused on the open session, then disconnected and refused a new one
    let why = refusal(send(&magic, hello.clone()).await);
    assert!(why.contains("is banned"), "{why}");
    // it is disconnected half a second after the refusal that banned it (later on a
    // loaded machine)
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while peer_info().is_some() {
        assert!(std::time::Instant::now() < deadline, "the banned peer is never disconnected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(send(&magic, hello).await.is_err(), "a banned peer is refused a new session");
    assert_eq!(node.height(), 0);
}

/// Nodes of a network find each other through the DHT: B and C know only A, and connect
/// to each other through the provider records of the network's key.
#[test]
fn nodes_of_a_network_find_each_other_through_the_dht() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Node::start(tmp.path(), "a", &[]);
    let b = Node::start(tmp.path(), "b", &connect(&a));
    let c = Node::start(tmp.path(), "c", &connect(&a));
    let c_id = c.rpc("getp2pinfo", json!([]))["peerid"].clone();
    let key = c.rpc("getp2pinfo", json!([]))["dht_key"].clone();
    assert_eq!(key, format!("chain/devnet/{}", Params::devnet().genesis_hash));
    wait("b to find c through the dht", Duration::from_secs(40), &[&a, &b, &c], || {
        b.rpc("getpeerinfo", json!([])).as_array().unwrap().iter().any(|p| p["peerid"] == c_id)
    });
}
