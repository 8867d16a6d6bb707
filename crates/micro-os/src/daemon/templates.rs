//! Templates: built-in ones compiled into the binary, user ones from
//! `$MICRO_OS_HOME/templates/*.json` (a user template of the same name wins).

use std::path::Path;

use micro_os_core::Template;

/// Built-in templates, as JSON so they read like the user's own files.
const BUILT_IN: &[&str] = &[
    r#"{
    "name": "busybox-httpd",
    "description": "A static web server (busybox httpd) on port 80 with an HTTP health check",
    "workload": "general",
    "image": "busybox",
    "command": ["sh", "-c", "mkdir -p /var/www && echo ok > /var/www/index.html && exec httpd -f -p 80 -h /var/www"],
    "resources": {"cpu": 0.5, "memory": "32M", "pids": 64},
    "health_check": {"type": "http", "port": 80, "path": "/", "interval_s": 2, "timeout_s": 1, "retries": 3},
    "restart": "on-failure:5"
}"#,
    r#"{
    "name": "blockchain-full-node",
    "description": "A full node of micro-os's reference chain (Bitcoin's wire formats, Bitcoin Core's JSON-RPC on port 18443 inside the container): validates every block, mines when configured (container config N --mine true --threads 1); network devnet unless configured (--network mainnet)",
    "workload": "blockchain",
    "image": "blockchain-node",
    "command": ["micro-os-node", "--datadir", "/data"],
    "data": "/data",
    "resources": {"cpu": 1, "memory": "256M", "pids": 256},
    "health_check": {"type": "command", "command": ["micro-os-node", "health", "--datadir", "/data"], "interval_s": 10, "timeout_s": 5, "retries": 3},
    "restart": "on-failure:5"
}"#,
    r#"{
    "name": "blockchain-light-node",
    "description": "A light node of micro-os's reference chain: headers only, its wallet's transactions proven by merkle proofs from full nodes (also as blockchain-light)",
    "workload": "blockchain",
    "image": "blockchain-node",
    "command": ["micro-os-node", "--datadir", "/data", "--kind", "light"],
    "data": "/data",
    "resources": {"cpu": 0.5, "memory": "64M", "pids": 128},
    "health_check": {"type": "command", "command": ["micro-os-node", "health", "--datadir", "/data"], "interval_s": 10, "timeout_s": 5, "retries": 3},
    "restart": "on-failure:5"
}"#,
    r#"{
    "name": "blockchain-validator",
    "description": "A validator of micro-os's reference chain on the circuit network: run it with --circuit N --replicate, and the validator on the circuit leader's VM seals blocks that the circuit's Raft log commits; a validator key of its own in its data volume",
    "workload": "blockchain",
    "image": "blockchain-node",
    "command": ["micro-os-node", "--datadir", "/data", "--kind", "validator"],
    "config": {"network": "circuit"},
    "data": "/data",
    "resources": {"cpu": 1, "memory": "256M", "pids": 256},
    "health_check": {"type": "command", "command": ["micro-os-node", "health", "--datadir", "/data"], "interval_s": 10, "timeout_s": 5, "retries": 3},
    "restart": "on-failure:5"
}"#,
    r#"{
    "name": "ethereum-dev",
    "description": "anvil, Foundry's Ethereum development node (npm @foundry-rs/anvil-linux-amd64, found through MICRO_OS_ANVIL or npm root -g), its JSON-RPC on port 8545 published on the host's loopback, its state in the data volume; settings chain-id, block-time (seconds; default: a block per transaction), accounts",
    "workload": "blockchain",
    "image": "ethereum-dev",
    "command": ["sh", "-c", "exec anvil --host 0.0.0.0 --port 8545 --state /data/anvil-state.json ${MICRO_OS_CONFIG_CHAIN_ID:+--chain-id $MICRO_OS_CONFIG_CHAIN_ID} ${MICRO_OS_CONFIG_BLOCK_TIME:+--block-time $MICRO_OS_CONFIG_BLOCK_TIME} ${MICRO_OS_CONFIG_ACCOUNTS:+--accounts $MICRO_OS_CONFIG_ACCOUNTS}"],
    "ports": ["8545:8545"],
    "data": "/data",
    "settings": ["chain-id", "block-time", "accounts"],
    "resources": {"cpu": 1, "memory": "512M", "pids": 256},
    "health_check": {"type": "tcp", "port": 8545, "interval_s": 5, "timeout_s": 2, "retries": 3},
    "restart": "on-failure:5"
}"#,
    r#"{
    "name": "ai-inference",
    "description": "Serves the AI layer's live models to the nodes that ask: POST /score on port 8600 gives each transaction's priority class and anomaly score, GET /models lists the models; the daemon publishes every live model into its data volume (micro-os-node ai-serve)",
    "workload": "ai",
    "image": "blockchain-node",
    "command": ["micro-os-node", "ai-serve", "--models", "/data/models", "--listen", "0.0.0.0:8600"],
    "data": "/data",
    "resources": {"cpu": 0.5, "memory": "128M", "pids": 64},
    "health_check": {"type": "tcp", "port": 8600, "interval_s": 5, "timeout_s": 2, "retries": 3},
    "restart": "on-failure:5"
}"#,
    r#"{
    "name": "ai-training",
    "description": "Runs the AI layer's training jobs: every interval (seconds, setting interval, default 3600) it trains the transaction optimiser's models on the samples the daemon exports into its data volume and publishes each new version, which the daemon promotes if it scores at least as well as the live one; while it runs the daemon trains no more (micro-os-node ai-train)",
    "workload": "ai",
    "image": "blockchain-node",
    "command": ["micro-os-node", "ai-train", "--data", "/data"],
    "data": "/data",
    "settings": ["interval", "priority-levels"],
    "resources": {"cpu": 1, "memory": "256M", "pids": 64},
    "restart": "on-failure:5"
}"#,
];

/// Other names of built-in templates: (alias, template). `blockchain-light` is the name the
/// spec's curl and SDK examples use.
const ALIASES: &[(&str, &str)] = &[("blockchain-light", "blockchain-light-node")];

pub fn built_in() -> Vec<Template> {
    let mut out: Vec<Template> = BUILT_IN
        .iter()
        .map(|j| {
            let mut t: Template = serde_json::from_str(j).expect("built-in templates are valid");
            t.source = "built-in".into();
            t
        })
        .collect();
    for (alias, of) in ALIASES {
        let mut t = out.iter().find(|t| t.name == *of).expect("aliases name built-in templates").clone();
        t.name = alias.to_string();
        t.description = format!("{} (the same as {of})", t.description);
        out.push(t);
    }
    out
}

/// All templates; user files that do not parse are reported in the second list.
pub fn all(dir: &Path) -> (Vec<Template>, Vec<String>) {
    let mut out = built_in();
    let mut problems = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect())
        .unwrap_or_default();
    files.sort();
    for path in files {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Template>(&t).map_err(|e| e.to_string()))
            .and_then(|t| t.validate().map(|_| t).map_err(|e| e.to_string()));
        match parsed {
            Ok(mut t) => {
                t.source = path.display().to_string();
                out.retain(|o| o.name != t.name);
                out.push(t);
            }
            Err(e) => problems.push(format!("template {} is not valid: {e}", path.display())),
        }
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_are_valid() {
        for t in built_in() {
            t.validate().unwrap();
        }
    }

    #[test]
    fn user_templates_override_and_bad_ones_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"name":"busybox-httpd","image":"mine"}"#).unwrap();
        std::fs::write(dir.path().join("b.json"), r#"{"name":"x"}"#).unwrap();
        let (all, problems) = all(dir.path());
        let httpd = all.iter().find(|t| t.name == "busybox-httpd").unwrap();
        assert_eq!(httpd.image, "mine");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("b.json"), "{problems:?}");
    }
}
