//! A chain micro-os did not write, through the template mechanism: the `ethereum-dev`
//! template runs anvil (Foundry's Ethereum development node, installed from npm by this
//! test), its JSON-RPC published on the host's loopback; Foundry's `cast` (npm too) reads
//! the chain id and block number and makes a transfer that shows in `eth_getBalance`.
//! Settings the template does not have, and a template naming a missing image, are clear
//! errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{require, Daemon, Need, CONTAINERS};

/// anvil's first development account (its well-known mnemonic's first key).
const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// Installs the two npm packages into `dir`; the paths of anvil and cast.
fn install_foundry(dir: &Path) -> (PathBuf, PathBuf) {
    let o = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .args(["@foundry-rs/anvil-linux-amd64", "@foundry-rs/cast-linux-amd64"])
        .output()
        .expect("running npm");
    assert!(o.status.success(), "npm install: {}", String::from_utf8_lossy(&o.stderr));
    let m = dir.join("node_modules/@foundry-rs");
    (m.join("anvil-linux-amd64/bin/anvil"), m.join("cast-linux-amd64/bin/cast"))
}

fn cast(cast: &Path, args: &[&str]) -> String {
    let o = Command::new(cast).args(args).output().expect("running cast");
    assert!(o.status.success(), "cast {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn anvil_runs_from_its_template_and_cast_drives_it() {
    let test = "anvil_runs_from_its_template_and_cast_drives_it";
    let mut needs = CONTAINERS.to_vec();
    needs.push(Need::Npm);
    if !require(test, &needs) {
        return;
    }
    let npm = tempfile::tempdir().unwrap();
    let (anvil, cast_bin) = install_foundry(npm.path());
    let mut d = Daemon::prepared("127.0.0.1");
    // the daemon finds anvil where the variable says (a user runs `npm install -g`)
    d.env.push(("MICRO_OS_ANVIL".into(), anvil.display().to_string()));
    d.spawn();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    d.ok(&[
        "container",
        "create",
        "--name",
        "anvil-1",
        "--template",
        "ethereum-dev",
        "--port",
        &format!("{port}:8545"),
    ]);
    let e = d.fails(&["container", "config", "anvil-1", "--network", "mainnet"], 2);
    assert!(e.contains("has no setting \"network\"") && e.contains("chain-id"), "{e}");
    let e = d.fails(&["container", "config", "anvil-1", "--sync-mode", "fast"], 2);
    assert!(e.contains("has no setting \"sync-mode\""), "{e}");
    d.ok(&["container", "config", "anvil-1", "--chain-id", "4242"]);
    d.ok(&["container", "start", "--name", "anvil-1"]);

    let rpc = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = Command::new(&cast_bin).args(["chain-id", "--rpc-url", &rpc]).output().unwrap();
        if o.status.success() {
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "4242", "the chain-id setting reached anvil");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "anvil never answered: {}",
            d.ok(&["container", "logs", "--name", "anvil-1"])
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let before: u64 = cast(&cast_bin, &["block-number", "--rpc-url", &rpc]).parse().unwrap();
    // a transfer to a fresh address shows in eth_getBalance
    let to = "0x00000000000000000000000000000000000a11ce";
    cast(&cast_bin, &["send", "--private-key", DEV_KEY, "--rpc-url", &rpc, "--value", "1.5ether", to]);
    assert_eq!(cast(&cast_bin, &["balance", "--rpc-url", &rpc, to]), "1500000000000000000");
    let after: u64 = cast(&cast_bin, &["block-number", "--rpc-url", &rpc]).parse().unwrap();
    assert!(after > before, "the transfer made a block: {before} -> {after}");
    // its health check (a TCP connect to 8545) passes
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.inspect("anvil-1")["health"]["status"] != "healthy" {
        assert!(Instant::now() < deadline, "anvil-1 never healthy: {}", d.inspect("anvil-1"));
        std::thread::sleep(Duration::from_millis(300));
    }
    d.ok(&["container", "rm", "--name", "anvil-1", "--force"]);

    // a template naming an image that does not exist
    let dir = d.home_path().join("templates");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("geth.json"), r#"{"name": "geth", "image": "geth-from-nowhere", "command": ["geth"]}"#)
        .unwrap();
    let e = d.fails(&["container", "create", "--name", "g", "--template", "geth"], 3);
    assert!(e.contains("image \"geth-from-nowhere\" not found"), "{e}");
}
