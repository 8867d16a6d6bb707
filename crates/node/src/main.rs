//! `micro-os-node`: runs one node of micro-os's reference chain — chain state, mempool,
//! wallet, optional miner — with a JSON-RPC server compatible with Bitcoin Core's.
//!
//! Its own libp2p peer (key in `<datadir>/p2p.key`) listens on `--p2p-listen` (default the
//! network's P2P port, `Params::p2p_port`), dials `--connect` peers and finds the others
//! through the DHT; `--no-p2p` runs a node alone.
//!
//! Every option has an environment fallback so a container template can configure the node
//! (`MICRO_OS_CONFIG_NETWORK`, `_MINE`, `_THREADS`, `_SYNC_MODE`, …). Bad input ends the
//! process with one line naming the input and how to fix it, and exit code 2. SIGTERM and
//! SIGINT stop the miner, let the RPC server finish, remove the cookie and exit 0; a
//! `kill -9` at any moment is safe because the chain state commits once per block.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use micro_os_chain::params::Params;
use micro_os_node::mining;
use micro_os_node::node::{Node, Options};
use micro_os_node::p2p;
use micro_os_node::rpc::{http, Ctx};
use micro_os_node::wallet::parse_address;
use micro_os_p2p::Multiaddr;
use tokio::sync::Notify;

/// The RPC address per network: loopback on the network's port (`Params::rpc_port`).
fn default_rpc_bind(params: &Params) -> String {
    format!("127.0.0.1:{}", params.rpc_port)
}

/// What the node is: `full` validates everything, `validator` is a full node with a
/// validator key of its own, `light` keeps headers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Full,
    Light,
    Validator,
}

#[derive(Debug, Parser)]
#[command(name = "micro-os-node", version, about = "Runs one node of micro-os's reference chain")]
struct Cli {
    /// Directory for the chain state, the wallet and the RPC cookie.
    #[arg(long, env = "MICRO_OS_CONFIG_DATADIR", value_name = "DIR")]
    datadir: PathBuf,
    /// Network: devnet or mainnet.
    #[arg(long, env = "MICRO_OS_CONFIG_NETWORK", default_value = "devnet", value_name = "NAME")]
    network: String,
    /// RPC listen address (default 127.0.0.1:18443 on devnet, 127.0.0.1:8382 on mainnet).
    #[arg(long, env = "MICRO_OS_CONFIG_RPC_BIND", value_name = "ADDR")]
    rpc_bind: Option<String>,
    /// RPC user, accepted besides the cookie (needs --rpc-password).
    #[arg(long, env = "MICRO_OS_CONFIG_RPC_USER", value_name = "USER")]
    rpc_user: Option<String>,
    /// RPC password (needs --rpc-user).
    #[arg(long, env = "MICRO_OS_CONFIG_RPC_PASSWORD", value_name = "PASSWORD", hide_env_values = true)]
    rpc_password: Option<String>,
    /// Mine continuously (environment: MICRO_OS_CONFIG_MINE=true|false).
    #[arg(long)]
    mine: bool,
    /// Threads the miner hashes on.
    #[arg(long, env = "MICRO_OS_CONFIG_THREADS", default_value = "1", value_name = "N")]
    threads: String,
    /// Address mined blocks pay (default: the wallet's first address).
    #[arg(long, env = "MICRO_OS_CONFIG_MINE_TO", value_name = "ADDR")]
    mine_to: Option<String>,
    /// How to catch up with the network: full; fast (headers, then a UTXO snapshot the chain
    /// commits to, then validation forward); or light (headers only: the same as --kind light).
    #[arg(long, env = "MICRO_OS_CONFIG_SYNC_MODE", default_value = "full", value_name = "MODE")]
    sync_mode: String,
    /// P2P listen multiaddr, repeatable (default /ip4/0.0.0.0/tcp/18444 on devnet,
    /// /ip4/0.0.0.0/tcp/8383 on mainnet).
    #[arg(long, env = "MICRO_OS_CONFIG_P2P_LISTEN", value_delimiter = ',', value_name = "MULTIADDR")]
    p2p_listen: Vec<String>,
    /// A peer to dial (and redial while not connected), repeatable.
    #[arg(long, env = "MICRO_OS_CONFIG_CONNECT", value_delimiter = ',', value_name = "MULTIADDR")]
    connect: Vec<String>,
    /// Run without P2P: no peer, no sync (environment: MICRO_OS_CONFIG_NO_P2P=true|false).
    #[arg(long)]
    no_p2p: bool,
    /// On the circuit network: the validators (public keys, hex, comma-separated) block 1's
    /// sealer must be one of; by default the set block 1's own seal names is trusted.
    #[arg(long, env = "MICRO_OS_CONFIG_VALIDATORS", value_delimiter = ',', value_name = "KEYS")]
    validators: Vec<String>,
    /// What this node is: full, light (headers only, its wallet's transactions proven by
    /// merkle proofs from full nodes) or validator (a full node with a validator key kept in
    /// its data directory).
    #[arg(long, value_enum, default_value = "full")]
    kind: Kind,
}

/// The checked configuration.
#[derive(Debug)]
struct Config {
    datadir: PathBuf,
    params: &'static Params,
    rpc_bind: SocketAddr,
    rpc_user: Option<(String, String)>,
    mine: bool,
    threads: usize,
    mine_to: Option<String>,
    kind: Kind,
    validators: Option<Vec<bitcoin::secp256k1::PublicKey>>,
    fast: bool,
    /// A validator's circuit (on the circuit network).
    circuit: Option<micro_os_node::sealer::CircuitConfig>,
    /// `None` with `--no-p2p`.
    p2p: Option<p2p::Config>,
}

/// A configuration mistake: one line naming the input and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ConfigError(String);

fn bool_env(name: &str) -> Result<Option<bool>, ConfigError> {
    let Ok(v) = std::env::var(name) else { return Ok(None) };
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(Some(true)),
        "0" | "false" | "no" | "off" | "" => Ok(Some(false)),
        _ => Err(ConfigError(format!("{name}={v:?} is not a boolean (use true or false)"))),
    }
}

impl Config {
    fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let kind = match (cli.sync_mode.as_str(), cli.kind) {
            ("full", kind) => kind,
            ("light", Kind::Full | Kind::Light) => Kind::Light,
            ("light", Kind::Validator) => {
                return Err(ConfigError(
                    "a validator keeps every block: sync mode light is for light nodes (use --sync-mode full)".into(),
                ))
            }
            ("fast", Kind::Light) => {
                return Err(ConfigError("a light node syncs headers only: sync mode fast is for full nodes".into()))
            }
            ("fast", kind) => kind,
            (other, _) => {
                return Err(ConfigError(format!("sync mode {other:?} is not known (use full, fast or light)")))
            }
        };
        let params = Params::by_name(&cli.network)
            .map_err(|_| ConfigError(format!("network {:?} is not known (use devnet or mainnet)", cli.network)))?;
        let bind = cli.rpc_bind.clone().unwrap_or_else(|| default_rpc_bind(params));
        let rpc_bind = bind.parse().map_err(|_| {
            ConfigError(format!("rpc bind address {bind:?} is not an ip:port (try 127.0.0.1:18443 or 0.0.0.0:18443)"))
        })?;
        let rpc_user = match (cli.rpc_user, cli.rpc_password) {
            (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() && !u.contains(':') => Some((u, p)),
            (None, None) => None,
            (Some(u), Some(_)) if u.contains(':') => {
                return Err(ConfigError(format!("rpc user {u:?} contains ':' (pick a user name without it)")))
            }
            _ => {
                return Err(ConfigError(
                    "--rpc-user and --rpc-password go together and may not be empty (give both, or neither to use the cookie)"
                        .into(),
                ))
            }
        };
        let threads =
            cli.threads.trim().parse::<usize>().ok().filter(|n| (1..=1024).contains(n)).ok_or_else(|| {
                ConfigError(format!("threads {:?} is not a number from 1 to 1024 (try 1)", cli.threads))
            })?;
        let mine = cli.mine || bool_env("MICRO_OS_CONFIG_MINE")?.unwrap_or(false);
        if mine && params.is_sealed() {
            return Err(ConfigError(format!(
                "the {} network is sealed by validators, not mined (drop --mine; run --kind validator on a circuit)",
                params.name
            )));
        }
        if mine && kind == Kind::Light {
            return Err(ConfigError(
                "a light node does not mine: it has no blocks to build on (drop --mine, or run --kind full)".into(),
            ));
        }
        if let Some(a) = &cli.mine_to {
            parse_address(a, params)
                .map_err(|e| ConfigError(format!("--mine-to: {e} (give a {} address)", params.name)))?;
        }
        let no_p2p = cli.no_p2p || bool_env("MICRO_OS_CONFIG_NO_P2P")?.unwrap_or(false);
        let multiaddr = |what: &str, a: &str| {
            a.trim().parse::<Multiaddr>().map_err(|_| {
                ConfigError(format!(
                    "{what} {a:?} is not a multiaddr (try /ip4/0.0.0.0/tcp/{} or /ip4/10.0.0.2/tcp/{}/p2p/<peer id>)",
                    params.p2p_port, params.p2p_port
                ))
            })
        };
        let mut listen =
            cli.p2p_listen.iter().map(|a| multiaddr("p2p listen address", a)).collect::<Result<Vec<_>, _>>()?;
        if listen.is_empty() {
            listen.push(format!("/ip4/0.0.0.0/tcp/{}", params.p2p_port).parse().expect("a multiaddr"));
        }
        let connect = cli.connect.iter().map(|a| multiaddr("--connect address", a)).collect::<Result<Vec<_>, _>>()?;
        let p2p = (!no_p2p).then_some(p2p::Config { listen, connect });
        let validators = match cli.validators.iter().filter(|k| !k.trim().is_empty()).collect::<Vec<_>>() {
            keys if keys.is_empty() => None,
            keys => Some(keys.iter().map(|k| k.trim().parse()).collect::<Result<Vec<_>, _>>().map_err(|_| {
                ConfigError("--validators: a key is not a hex public key (33 bytes, e.g. 02ab…)".into())
            })?),
        };
        let circuit = match (kind, params.is_sealed()) {
            (Kind::Validator, true) => Some(circuit_from_env()?),
            _ => None,
        };
        Ok(Config {
            p2p,
            datadir: cli.datadir,
            params,
            rpc_bind,
            rpc_user,
            mine,
            threads,
            mine_to: cli.mine_to,
            kind,
            validators,
            circuit,
            fast: cli.sync_mode == "fast",
        })
    }
}

/// A validator's circuit, as micro-os gives it to the circuit's replicas.
fn circuit_from_env() -> Result<micro_os_node::sealer::CircuitConfig, ConfigError> {
    let missing = || {
        ConfigError(
            "a validator of the circuit network needs its circuit: MICRO_OS_CIRCUIT, MICRO_OS_CIRCUIT_ENDPOINT and \
             MICRO_OS_CIRCUIT_TOKEN are not set (run it with `micro-os container create --template blockchain-validator \
             --circuit NAME --replicate`)"
                .into(),
        )
    };
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    let circuit = var("MICRO_OS_CIRCUIT").ok_or_else(missing)?;
    let endpoint = var("MICRO_OS_CIRCUIT_ENDPOINT").ok_or_else(missing)?;
    let token = var("MICRO_OS_CIRCUIT_TOKEN").ok_or_else(missing)?;
    let endpoint = endpoint.parse().map_err(|_| {
        ConfigError(format!("MICRO_OS_CIRCUIT_ENDPOINT {endpoint:?} is not an ip:port (e.g. 127.0.0.1:4002)"))
    })?;
    Ok(micro_os_node::sealer::CircuitConfig { circuit, endpoint, token })
}

/// Holds `<datadir>/.lock` for the process's life, so two nodes never share a data directory.
fn lock_datadir(datadir: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(datadir).with_context(|| format!("creating data directory {}", datadir.display()))?;
    let path = datadir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "data directory {} is in use by another micro-os-node ({e}); stop it or pick another --datadir",
            datadir.display()
        )
    })
}

async fn wait_for_shutdown(stop: Arc<Notify>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        _ = stop.notified() => tracing::info!("rpc stop: stopping"),
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let _lock = lock_datadir(&config.datadir)?;
    let node = Node::open(
        &config.datadir,
        config.params,
        Options {
            threads: config.threads,
            light: config.kind == Kind::Light,
            validators: config.validators.clone(),
            fast: config.fast,
        },
    )
    .with_context(|| format!("opening the {} node in {}", config.params.name, config.datadir.display()))?;
    let node = Arc::new(node);
    let (height, hash) = node.tip();
    if config.kind == Kind::Light {
        tracing::info!(
            "light node: headers only; the wallet's transactions are proven by merkle proofs from full nodes"
        );
    }
    let mut sealer = None;
    if config.kind == Kind::Validator {
        let key = micro_os_node::health::validator_key(&config.datadir)?;
        match &config.circuit {
            Some(c) => {
                let secret = micro_os_node::health::validator_secret(&config.datadir)?;
                let payout = match &config.mine_to {
                    Some(a) => parse_address(a, config.params)?,
                    None => node.default_address()?,
                };
                sealer = Some((secret, micro_os_node::sealer::Client::new(c.clone()), payout.script_pubkey()));
            }
            None => tracing::info!(
                "validator key {key}: the {} network is mined, so this validator is a full node (validators seal on the circuit network)",
                config.params.name
            ),
        }
    }

    let cookie = http::write_cookie(&config.datadir)?;
    let mut credentials = vec![cookie];
    credentials.extend(config.rpc_user.clone());
    let listener =
        http::bind(config.rpc_bind).await.map_err(|e| anyhow::anyhow!("{e} (pick a free address with --rpc-bind)"))?;
    let local = listener.local_addr()?;
    tracing::info!(
        "micro-os-node {} on {}: height {height} ({hash}), data in {}, rpc on {local} (cookie {})",
        env!("CARGO_PKG_VERSION"),
        config.params.name,
        config.datadir.display(),
        http::cookie_path(&config.datadir).display()
    );

    let mut threads = vec![mining::spawn_progress_log(node.clone())];
    if config.mine {
        let payout = match &config.mine_to {
            Some(a) => parse_address(a, config.params)?,
            None => node.default_address()?,
        };
        tracing::info!("mining to {payout} on {} thread(s)", config.threads);
        threads.push(mining::spawn_miner(node.clone(), payout.script_pubkey(), config.threads));
    }

    let p2p = match config.p2p.clone() {
        Some(cfg) => Some(p2p::start(node.clone(), cfg).await.context("starting p2p")?),
        None => {
            tracing::info!("p2p is off (--no-p2p): this node neither syncs nor relays");
            None
        }
    };

    if let Some((secret, client, payout)) = sealer {
        tokio::spawn(micro_os_node::sealer::run(node.clone(), secret, client, payout));
    }

    let shutdown = Arc::new(Notify::new());
    let ctx = Arc::new(Ctx { node: node.clone(), shutdown: shutdown.clone(), p2p });
    let app = http::router(ctx, http::Credentials::new(credentials));
    axum::serve(listener, app).with_graceful_shutdown(wait_for_shutdown(shutdown)).await.context("rpc server")?;

    node.stop();
    for t in threads {
        let _ = t.join();
    }
    let _ = std::fs::remove_file(http::cookie_path(&config.datadir));
    let (height, hash) = node.tip();
    tracing::info!("stopped at height {height} ({hash})");
    Ok(())
}

/// `micro-os-node ai-serve`: the `ai-inference` template's service.
#[derive(Debug, Parser)]
#[command(name = "micro-os-node ai-serve", about = "Scores transactions with the live models of a model store")]
struct AiServe {
    /// The model store directory (the daemon publishes live models there).
    #[arg(long, env = "MICRO_OS_CONFIG_MODELS", default_value = "/data/models", value_name = "DIR")]
    models: PathBuf,
    /// Where to answer POST /score and GET /models.
    #[arg(long, env = "MICRO_OS_CONFIG_LISTEN", default_value = "0.0.0.0:8600", value_name = "ADDR")]
    listen: SocketAddr,
}

/// `micro-os-node ai-train`: the `ai-training` template's job.
#[derive(Debug, Parser)]
#[command(name = "micro-os-node ai-train", about = "Trains the transaction optimiser's models on exported samples")]
struct AiTrain {
    /// Samples are read from DIR/samples/<node>.jsonl, versions proposed to DIR/models.
    #[arg(long, env = "MICRO_OS_CONFIG_DATA", default_value = "/data", value_name = "DIR")]
    data: PathBuf,
    /// Seconds between training rounds.
    #[arg(long, env = "MICRO_OS_CONFIG_INTERVAL", default_value = "3600", value_name = "SECS",
        value_parser = clap::value_parser!(u64).range(1..=604_800))]
    interval: u64,
    /// Priority classes of the classifier.
    #[arg(long, env = "MICRO_OS_CONFIG_PRIORITY_LEVELS", default_value = "3", value_name = "N",
        value_parser = clap::value_parser!(u32).range(2..=16))]
    priority_levels: u32,
    /// One round, then exit.
    #[arg(long)]
    once: bool,
}

/// Runs an AI service (`ai-serve`, `ai-train`) on a small runtime of its own.
fn ai_service(args: Vec<String>) -> ! {
    tracing_subscriber::fmt().with_target(false).init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let code = match args[1].as_str() {
        "ai-serve" => {
            let a = AiServe::parse_from(args.iter().skip(1));
            match runtime.block_on(micro_os_node::ai_service::serve(&a.models, a.listen)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("micro-os-node ai-serve: {e}");
                    1
                }
            }
        }
        _ => {
            let a = AiTrain::parse_from(args.iter().skip(1));
            runtime.block_on(micro_os_node::ai_service::train_loop(
                a.data,
                std::time::Duration::from_secs(a.interval),
                a.priority_levels,
                a.once,
            ));
            0
        }
    };
    std::process::exit(code)
}

fn main() {
    // `micro-os-node health --datadir DIR`: the container's health probe
    if std::env::args().nth(1).as_deref() == Some("health") {
        std::process::exit(micro_os_node::health::probe(std::env::args().skip(2).collect()));
    }
    let args: Vec<String> = std::env::args().collect();
    if matches!(args.get(1).map(String::as_str), Some("ai-serve" | "ai-train")) {
        ai_service(args);
    }
    let cli = Cli::parse();
    let config = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("micro-os-node: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".parse().expect("filter")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    if let Err(e) = runtime.block_on(run(config)) {
        eprintln!("micro-os-node: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str], expected: Result<(), &str>) {
        let cli = Cli::try_parse_from(["micro-os-node", "--datadir", "/tmp/x"].iter().chain(args)).unwrap();
        match (Config::from_cli(cli), expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg),
            (got, want) => panic!("{args:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn bad_input_is_one_line_naming_it_and_the_fix() {
        check(&[], Ok(()));
        check(&["--network", "mainnet", "--threads", "2", "--mine"], Ok(()));
        check(&["--no-p2p", "--connect", "/ip4/127.0.0.1/tcp/1", "--p2p-listen", "/ip4/127.0.0.1/tcp/0"], Ok(()));
        check(
            &["--connect", "127.0.0.1:18444"],
            Err("--connect address \"127.0.0.1:18444\" is not a multiaddr (try /ip4/0.0.0.0/tcp/18444 or /ip4/10.0.0.2/tcp/18444/p2p/<peer id>)"),
        );
        check(&["--sync-mode", "fast"], Ok(()));
        check(
            &["--sync-mode", "fast", "--kind", "light"],
            Err("a light node syncs headers only: sync mode fast is for full nodes"),
        );
        check(&["--sync-mode", "light"], Ok(()));
        check(&["--kind", "light"], Ok(()));
        check(&["--sync-mode", "warp"], Err("sync mode \"warp\" is not known (use full, fast or light)"));
        check(
            &["--kind", "light", "--mine"],
            Err("a light node does not mine: it has no blocks to build on (drop --mine, or run --kind full)"),
        );
        check(
            &["--kind", "validator", "--sync-mode", "light"],
            Err("a validator keeps every block: sync mode light is for light nodes (use --sync-mode full)"),
        );
        check(&["--network", "moon"], Err("network \"moon\" is not known (use devnet or mainnet)"));
        check(&["--threads", "0"], Err("threads \"0\" is not a number from 1 to 1024 (try 1)"));
        check(
            &["--rpc-bind", "localhost"],
            Err("rpc bind address \"localhost\" is not an ip:port (try 127.0.0.1:18443 or 0.0.0.0:18443)"),
        );
        check(&["--rpc-user", "u"], Err("--rpc-user and --rpc-password go together and may not be empty (give both, or neither to use the cookie)"));
        let testnet = "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx";
        let want = format!(
            "--mine-to: address {testnet:?} is not valid: not an address of the devnet network (give a devnet address)"
        );
        check(&["--mine-to", testnet], Err(&want));
    }
}
