//! The command line, as the spec writes it: `micro-os <category> <action> [options]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  micro-os init --config basic_config.json
  micro-os daemon
  micro-os container create --name web --template busybox-httpd --port 8081:80/tcp
  micro-os container start --name web
  micro-os container logs --name web --follow
  micro-os container run --rm --image busybox -- echo hello

Exit codes: 0 ok, 1 failure, 2 usage or invalid input, 3 not found, 4 conflict,
5 daemon unreachable, 6 unauthorized, 7 not in this build; `container run` returns the container's own
exit code, or 125 (micro-os failed), 126 (command cannot run), 127 (command not found).";

#[derive(Parser, Debug)]
#[command(name = "micro-os", version, about = "Run VMs, OCI containers and consensus circuits for blockchain nodes",
    after_help = AFTER_HELP, disable_help_subcommand = true)]
pub struct Cli {
    /// The daemon's API (default http://127.0.0.1:8080).
    #[arg(long, global = true, env = "MICRO_OS_API", value_name = "URL")]
    pub api: Option<String>,
    /// The host of the fabric the command is for (its peer id or a unique prefix; see
    /// `micro-os host list`): the daemon forwards the request there. Without it, objects
    /// are found wherever they are and new ones are made on this host.
    #[arg(long, global = true, value_name = "PEER")]
    pub host: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the micro-os home: node key, API token (mode 0600) and config.
    #[command(
        after_help = "Examples:\n  micro-os init\n  micro-os init --config basic_config.json\n\nRunning init again never replaces the key or the token."
    )]
    Init {
        /// A JSON config file to install (keys: api_addr, runtime, busybox, stop_timeout_s, log_level,
        /// vm_bridge, vm_subnet, vm_api_access, p2p_listen, p2p_bootstrap, p2p_trusted,
        /// p2p_key_rotation_s).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run the daemon: REST API, store, runtime.
    #[command(after_help = "Examples:\n  micro-os daemon\n  micro-os daemon --api-addr 127.0.0.1:9090")]
    Daemon {
        /// Listen address of the REST API (default from config: 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR")]
        api_addr: Option<String>,
        /// Use this config file instead of the home's config.json.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Self-checks of a running daemon.
    #[command(subcommand)]
    Test(TestCmd),
    /// The daemon's own log, by component and level.
    #[command(
        after_help = "Examples:\n  micro-os logs --component all --level debug\n  micro-os logs --component net --follow\n  micro-os logs --component runtime --level warn --tail 50\n  micro-os logs --circuit validation-cluster --follow"
    )]
    Logs {
        /// all, api, runtime, net, monitor, store, circuit or ai.
        #[arg(long, default_value = "all")]
        component: String,
        /// The least severe level shown: trace, debug, info, warn or error.
        #[arg(long, default_value = "info")]
        level: String,
        /// Keep printing new lines until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Only the last N lines logged so far.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Instead of the daemon's log: the replicas of every container replicated on this
        /// circuit, interleaved by time with a prefix per replica.
        #[arg(long, value_name = "N")]
        circuit: Option<String>,
        /// With --circuit: only lines since a time (RFC 3339) or a duration ago (10m, 2h).
        #[arg(long, value_name = "T", requires = "circuit")]
        since: Option<String>,
        /// With --circuit: show each line's time.
        #[arg(long, short = 't', requires = "circuit")]
        timestamps: bool,
    },
    /// Follow the event stream: lifecycle events of containers, VMs, circuits, hosts and AI
    /// modules, and alerts fired and resolved, as the store recorded them.
    #[command(
        after_help = "Examples:\n  micro-os events\n  micro-os events --type container,alert --object eth-node-1\n  micro-os events --since 120 --no-follow --format json\n  micro-os events --tail 20 --type alert\n\nEach event has an id: `--since ID` resumes after it, with nothing missed or repeated, across daemon restarts too."
    )]
    Events {
        /// Only these kinds, comma-separated: container, vm, circuit, host, ai, alert.
        #[arg(long = "type", value_name = "T")]
        kinds: Option<String>,
        /// Only this object, by name or id (an alert by the object it is about: container/NAME).
        #[arg(long, value_name = "N")]
        object: Option<String>,
        /// Start after this event id; without it, from the next event.
        #[arg(long, value_name = "ID", conflicts_with = "tail")]
        since: Option<i64>,
        /// Start with the last N events recorded (with --no-follow and no --since: 100).
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Print the events recorded so far and exit instead of following.
        #[arg(long)]
        no_follow: bool,
        /// table (one line per event) or json (one object per line).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Manage VMs: namespace sandboxes and qemu guests, each with its own address and identity.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Manage containers.
    #[command(subcommand)]
    Container(Box<ContainerCmd>),
    /// Circuits: groups of VMs that keep one replicated key-value state with Raft.
    #[command(subcommand)]
    Circuit(CircuitCmd),
    /// Nodes of the reference chain: status, sending coins, the node wallet.
    #[command(subcommand)]
    Chain(ChainCmd),
    /// Hosts that join into one fabric: a join token, join, list, leave.
    #[command(subcommand)]
    Host(HostCmd),
    /// The AI layer: enable, configure and train the optimisers of the chain nodes.
    #[command(subcommand)]
    Ai(AiCmd),
    /// The libp2p layer: peers, resources in the DHT, signed messages and DATA streams.
    #[command(subcommand)]
    Net(NetCmd),
    /// Resource use, P2P network, health and alerts, history and its export.
    #[command(subcommand)]
    Monitor(MonitorCmd),
    /// Manage images (no registry: built locally or imported from files).
    #[command(subcommand)]
    Image(ImageCmd),
    /// List and show container templates.
    #[command(subcommand)]
    Template(TemplateCmd),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  source <(micro-os completion bash)\n  micro-os completion zsh > ~/.zfunc/_micro-os"
    )]
    Completion { shell: clap_complete::Shell },
    /// Show help for a command, e.g. `micro-os help container create`.
    Help { command: Vec<String> },
    /// Internal: the per-container monitor process.
    #[command(hide = true)]
    Shim { state_dir: PathBuf },
}

#[derive(Args, Debug, Clone)]
pub struct NameArg {
    /// The container's name or id.
    #[arg(value_name = "NAME")]
    pub positional: Option<String>,
    /// The container's name or id.
    #[arg(long = "name", value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// The container's name.
    #[arg(value_name = "NAME")]
    pub positional: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Image to run (see `micro-os image ls`).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Template to start from (see `micro-os template ls`).
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// Limits, e.g. cpu=1.5,memory=512M,pids=256.
    #[arg(long, value_name = "LIST")]
    pub resources: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Publish a port on the host's loopback: HOST:CONTAINER[/tcp] (repeatable).
    #[arg(long = "port", short = 'p', value_name = "PORTS")]
    pub ports: Vec<String>,
    /// Restart policy: no, on-failure[:N] or always.
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// Health check: command run inside the container.
    #[arg(long, value_name = "CMD", conflicts_with_all = ["health_tcp", "health_http"])]
    pub health_cmd: Option<String>,
    /// Health check: TCP port inside the container.
    #[arg(long, value_name = "PORT", conflicts_with = "health_http")]
    pub health_tcp: Option<u16>,
    /// Health check: HTTP GET of PORT[/PATH] inside the container.
    #[arg(long, value_name = "PORT/PATH")]
    pub health_http: Option<String>,
    /// Seconds between health probes.
    #[arg(long, value_name = "S")]
    pub health_interval: Option<f64>,
    /// Seconds a probe may take.
    #[arg(long, value_name = "S")]
    pub health_timeout: Option<f64>,
    /// Failures in a row before the container is unhealthy.
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Place the container on a VM.
    #[arg(long, value_name = "VM", conflicts_with = "circuit")]
    pub vm: Option<String>,
    /// With --replicate: run one replica on each member VM of this circuit (a VM that
    /// joins it later gets one too, one that leaves loses its own).
    #[arg(long, value_name = "CIRCUIT")]
    pub circuit: Option<String>,
    /// Replicate the container on every member of --circuit.
    #[arg(long, requires = "circuit")]
    pub replicate: bool,
    /// The command to run instead of the image's or template's.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ContainerCmd {
    /// Create a container (it does not start until `container start`).
    #[command(
        after_help = "Examples:\n  micro-os container create --name my-node --template blockchain-full-node\n  micro-os container create --name web --image busybox --resources cpu=0.5,memory=64M -- httpd -f -p 80\n  micro-os container create --name w2 --template busybox-httpd --port 8081:80/tcp --restart on-failure:3\n  micro-os container create --name validator --template blockchain-validator \\\n    --circuit validation-cluster --replicate"
    )]
    Create(CreateArgs),
    /// Create, start and wait for a container, like `docker run`; exits with its code.
    #[command(
        after_help = "Examples:\n  micro-os container run --rm --image busybox -- echo hello\n  micro-os container run --detach --name web --template busybox-httpd"
    )]
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Remove the container when it exits.
        #[arg(long)]
        rm: bool,
        /// Print the id and return at once instead of waiting.
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// Create and start every container of a deploy file (the spec's container_spec.json), in
    /// the order its `depends_on` entries give.
    #[command(
        after_help = "Examples:\n  micro-os container deploy --from-file container_spec.json\n\nA container may wait for others of the file, as in Docker Compose:\n  \"depends_on\": [{\"name\": \"db\", \"condition\": \"healthy\"}]\nconditions: started (default), healthy (needs a health check), completed (exited 0).\nThe whole file is checked first (names, images, unknown names, cycles): a refused file creates nothing."
    )]
    Deploy {
        #[arg(long, value_name = "FILE")]
        from_file: PathBuf,
    },
    /// Start a container.
    #[command(after_help = "Examples:\n  micro-os container start --name eth-node-1")]
    Start(NameArg),
    /// Stop a container: SIGTERM, then SIGKILL after the timeout.
    #[command(after_help = "Examples:\n  micro-os container stop --name eth-node-1 --timeout 30")]
    Stop {
        #[command(flatten)]
        name: NameArg,
        /// Seconds between SIGTERM and SIGKILL (default 10).
        #[arg(long, value_name = "S")]
        timeout: Option<f64>,
    },
    /// Freeze every process of a container.
    Pause(NameArg),
    /// Thaw a paused container.
    Resume(NameArg),
    /// Show a container's details.
    #[command(after_help = "Examples:\n  micro-os container inspect --name eth-node-1 --format json")]
    Inspect {
        #[command(flatten)]
        name: NameArg,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List containers.
    #[command(alias = "ls")]
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show a container's output; of several (a,b,c), or of a replicated container's
    /// replicas, interleaved by time with a prefix per container.
    #[command(
        after_help = "Examples:\n  micro-os container logs --name eth-node-1 --follow\n  micro-os container logs --name eth-node-1 --tail 50 --since 10m\n  micro-os container logs --name node-1,node-2,node-3 --follow"
    )]
    Logs {
        #[command(flatten)]
        name: NameArg,
        /// Keep printing new lines until the container stops.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Only lines since a time (RFC 3339) or a duration ago (10m, 2h).
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Show each line's time and stream.
        #[arg(long, short = 't')]
        timestamps: bool,
    },
    /// Run a command in a running container, with its environment (as `docker exec`, without
    /// a terminal); exits with the command's exit code.
    #[command(
        after_help = "Examples:\n  micro-os container exec --name eth-node-1 -- cat /etc/hostname\n  micro-os container exec eth-node-1 --env DEBUG=1 -- sh -c 'echo $DEBUG'\n\nExit codes: the command's; 124 when it ran past --timeout; 126/127 when it could not be run or found."
    )]
    Exec {
        #[command(flatten)]
        name: NameArg,
        /// A variable added to the container's environment (repeatable).
        #[arg(long, short = 'e', value_name = "K=V")]
        env: Vec<String>,
        /// Seconds before the command is killed (default 60).
        #[arg(long, value_name = "S")]
        timeout: Option<f64>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Show a container's lifecycle events (created, started, exited, oom-killed, ...).
    #[command(after_help = "Examples:\n  micro-os container events --name eth-node-1 --format json")]
    Events {
        #[command(flatten)]
        name: NameArg,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a container.
    #[command(alias = "remove")]
    Rm {
        #[command(flatten)]
        name: NameArg,
        /// Stop it first if it runs.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Show or set settings handed to the workload: `config N --network mainnet --sync-mode fast`.
    #[command(
        after_help = "Examples:\n  micro-os container config eth-node-1 --network mainnet --sync-mode fast\n  micro-os container config eth-node-1\n\nSettings reach the workload as MICRO_OS_CONFIG_<KEY> variables and as\n/run/micro-os/config.json, from the next start on."
    )]
    Config {
        /// The container's name or id, then --key value pairs.
        #[arg(value_name = "NAME [--KEY VALUE]...", trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct VmName {
    /// The VM's name or id.
    #[arg(value_name = "NAME")]
    pub positional: Option<String>,
    /// The VM's name or id.
    #[arg(long = "name", value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Create a VM (or every VM of a definitions file); it gets its address now.
    #[command(
        after_help = "Examples:\n  micro-os vm create --name blockchain-node-1 --memory 4096 --cpu 2 --image blockchain-base\n  micro-os vm create --from-file vm_definitions.json\n\nA definitions file is a JSON list of {\"name\", \"memory\" (MiB), \"cpu\", \"image\", \"driver\"}."
    )]
    Create {
        #[arg(value_name = "NAME")]
        positional: Option<String>,
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Memory in MiB.
        #[arg(long, value_name = "MIB")]
        memory: Option<u64>,
        /// CPUs (cores).
        #[arg(long, value_name = "N")]
        cpu: Option<f64>,
        /// Root filesystem image (default blockchain-base: busybox + the micro-os agent).
        #[arg(long, value_name = "IMAGE")]
        image: Option<String>,
        /// sandbox (namespaces + cgroups) or qemu.
        #[arg(long, value_name = "DRIVER")]
        driver: Option<String>,
        /// Restart policy when the agent dies: no, on-failure[:N] or always.
        #[arg(long, value_name = "POLICY")]
        restart: Option<String>,
        /// A JSON list of VM definitions.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["positional", "name", "memory", "cpu", "image", "driver"])]
        from_file: Option<PathBuf>,
    },
    /// Start a VM; returns when its agent reports ready.
    #[command(after_help = "Examples:\n  micro-os vm start --name blockchain-node-1")]
    Start(VmName),
    /// Stop a VM: the agent shuts it down (SIGKILL after the timeout), or at once with --force.
    #[command(
        after_help = "Examples:\n  micro-os vm stop --name blockchain-node-1\n  micro-os vm stop --name blockchain-node-1 --force"
    )]
    Stop {
        #[command(flatten)]
        name: VmName,
        #[arg(long)]
        force: bool,
        /// Seconds the agent gets to stop everything (default 10).
        #[arg(long, value_name = "S")]
        timeout: Option<f64>,
    },
    /// Freeze every process of a VM, containers on it included.
    Pause(VmName),
    /// Thaw a paused VM.
    Resume(VmName),
    /// Show a VM's details.
    #[command(after_help = "Examples:\n  micro-os vm inspect --name blockchain-node-1 --format yaml")]
    Inspect {
        #[command(flatten)]
        name: VmName,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List VMs.
    #[command(alias = "ls")]
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a VM (no containers may be placed on it).
    #[command(alias = "remove")]
    Rm {
        #[command(flatten)]
        name: VmName,
        #[arg(long, short = 'f')]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NetCmd {
    /// Peers of this host's libp2p node (or a VM's), with addresses, latency, message
    /// counts and how each was found.
    #[command(
        after_help = "Examples:\n  micro-os net peers\n  micro-os net peers --vm blockchain-node-1 --format json"
    )]
    Peers {
        /// A VM's peers instead of the host's.
        #[arg(long, value_name = "VM")]
        vm: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Who offers a resource, found in the Kademlia DHT: VMs advertise `vm/<name>` and
    /// `container/<name>` for the containers placed on them.
    #[command(
        after_help = "Examples:\n  micro-os net find container/eth-node-1\n  micro-os net find vm/validator-2 --vm validator-1"
    )]
    Find {
        /// The resource key, e.g. container/<name> or vm/<name>.
        key: String,
        /// Ask from this VM's peer instead of the host's.
        #[arg(long, value_name = "VM")]
        vm: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Send signed messages to a peer (a peer id, or a VM's name). DATA with --file, or
    /// with --stream, travels as a stream with a checksum the receiver checks.
    #[command(
        after_help = "Examples:\n  micro-os net send --to blockchain-node-1 --type PING\n  micro-os net send --from blockchain-node-1 --to blockchain-node-2 --type SYNC --state 'height 7'\n  micro-os net send --to blockchain-node-2 --type DATA --file chain.tar\n  micro-os net send --from vm-a --to vm-b --type DATA --count 10000 --size 256\n  micro-os net send --from vm-a --to vm-b --type DATA --stream --size 1G"
    )]
    Send {
        /// Send from this VM's agent instead of from the host.
        #[arg(long, value_name = "VM")]
        from: Option<String>,
        #[arg(long, value_name = "PEER|VM")]
        to: String,
        /// SYNC, DISC, DATA, CTRL or PING.
        #[arg(long = "type", value_name = "TYPE")]
        kind: String,
        /// The payload's state.
        #[arg(long, value_name = "TEXT", conflicts_with = "file")]
        state: Option<String>,
        /// DATA: send this file as a stream. Other types: read the state from it.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Send this many messages at once (a load test; the answer has rate and latency).
        #[arg(long, value_name = "N", conflicts_with = "stream")]
        count: Option<u32>,
        /// Pad the state to this many bytes (at most 512K); with --stream, the stream's length.
        #[arg(long, value_name = "SIZE")]
        size: Option<micro_os_core::Size>,
        /// Send DATA as a stream of --size generated bytes.
        #[arg(long, requires = "size", conflicts_with = "file")]
        stream: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum MonitorCmd {
    /// Network statistics of the P2P layer: peers, latency, messages by type, rejections.
    #[command(
        after_help = "Examples:\n  micro-os monitor network --protocol p2p --detailed\n  micro-os monitor network --interval 5"
    )]
    Network {
        /// Only p2p for now.
        #[arg(long, default_value = "p2p")]
        protocol: String,
        /// Print again every S seconds until interrupted.
        #[arg(long, value_name = "S")]
        interval: Option<f64>,
        /// Show messages by type and rejections by reason too.
        #[arg(long)]
        detailed: bool,
        /// A VM's peer instead of the host's.
        #[arg(long, value_name = "VM")]
        vm: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Resource use of containers and VMs (and the host with --all): CPU, memory, I/O,
    /// processes, network, restarts, health checks. With --refresh on a terminal, a live
    /// view (q quits).
    #[command(
        after_help = "Examples:\n  micro-os monitor resources --container my-container\n  micro-os monitor resources --all --refresh 5\n  micro-os monitor resources --vm node-1 --format json"
    )]
    Resources {
        #[arg(long, value_name = "VM")]
        vm: Option<String>,
        #[arg(long, value_name = "CONTAINER")]
        container: Option<String>,
        /// The host too.
        #[arg(long)]
        all: bool,
        /// Refresh every S seconds until q (or Ctrl-C).
        #[arg(long, value_name = "S")]
        refresh: Option<f64>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Health of the daemon's components and the open alerts (exit 1 when something is critical).
    #[command(
        after_help = "Examples:\n  micro-os monitor health\n  micro-os monitor health --components runtime,net --critical-only\n  micro-os monitor health --ai-alerts"
    )]
    Health {
        /// Comma-separated: api, store, runtime, vms, containers, net, monitor, circuit, ai (default all).
        #[arg(long, value_name = "A,B")]
        components: Option<String>,
        #[arg(long)]
        critical_only: bool,
        /// The alerts AI modules raised.
        #[arg(long)]
        ai_alerts: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// A container's CPU, memory, network, I/O and health checks over a window.
    #[command(
        after_help = "Examples:\n  micro-os monitor performance --container eth-node-1 --ai-stats\n  micro-os monitor performance --container web --since 24h"
    )]
    Performance {
        #[arg(long, value_name = "CONTAINER")]
        container: String,
        /// How far back: 1h (default), 30m, 7d, or a date or time.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        #[arg(long)]
        ai_stats: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Cross-component communication: the API, each component's health, and each running
    /// VM's agent (control channel and P2P round trip), every S seconds.
    #[command(after_help = "Examples:\n  micro-os monitor integration\n  micro-os monitor integration --interval 10")]
    Integration {
        #[arg(long, value_name = "S")]
        interval: Option<f64>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Write the samples of a time range to a file, as CSV (with a header) or JSON.
    #[command(
        after_help = "Examples:\n  micro-os monitor export --from \"2023-01-01\" --to \"2023-01-31\" --format csv --output performance_january.csv\n  micro-os monitor export --from 2h --format json --output last-2h.json --object web"
    )]
    Export {
        /// A date (2023-01-31), an RFC 3339 time, or a duration ago (2h).
        #[arg(long, value_name = "WHEN")]
        from: String,
        /// Like --from; a date means the end of that day. Default now.
        #[arg(long, value_name = "WHEN")]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// Only this container or VM (name or id), or host.
        #[arg(long, value_name = "NAME")]
        object: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TestCmd {
    /// Exercise every component through the API with a scratch VM and container, then
    /// remove them; one PASS or FAIL line per component (exit 1 if any failed).
    #[command(
        after_help = "Examples:\n  micro-os test integration --components all\n  micro-os test integration --components runtime,net"
    )]
    Integration {
        /// Comma-separated: api, store, runtime, vms, containers, net, monitor, circuit, ai; or all.
        #[arg(long, default_value = "all", value_name = "A,B")]
        components: String,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Build a built-in base image — busybox (from Debian's busybox-static),
    /// blockchain-base (busybox + the micro-os agent; with a kernel + initramfs for qemu),
    /// blockchain-node (busybox + the reference chain's node, micro-os-node) or ethereum-dev
    /// (busybox + anvil from npm) — or an image from a directory whose tree is its root.
    #[command(
        after_help = "Examples:\n  micro-os image build busybox\n  micro-os image build blockchain-base\n  micro-os image build blockchain-node\n  micro-os image build busybox --name base\n  micro-os image build --from-dir ./rootfs --name my-node"
    )]
    Build {
        /// Which base: busybox, blockchain-base, blockchain-node or ethereum-dev.
        #[arg(default_value = "busybox", conflicts_with = "from_dir")]
        base: String,
        /// A directory whose tree becomes the image's root (needs --name).
        #[arg(long, value_name = "DIR", requires = "name")]
        from_dir: Option<PathBuf>,
        #[arg(long)]
        name: Option<String>,
    },
    /// Import an OCI image layout (dir or tar), a `docker save` tarball, or a root
    /// filesystem tarball (needs --name).
    #[command(
        after_help = "Examples:\n  micro-os image import ./alpine.tar --name alpine\n  micro-os image import ./oci-layout/"
    )]
    Import {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove an image no container uses.
    #[command(alias = "remove")]
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TemplateCmd {
    /// List templates.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show a template.
    Inspect {
        name: String,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
}

/// Which circuit: `--name N` or `--id ID` (the daemon takes either for both).
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct CircuitRef {
    /// The circuit's name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The circuit's id.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

impl CircuitRef {
    pub fn key(&self) -> &str {
        self.name.as_deref().or(self.id.as_deref()).expect("clap requires --name or --id")
    }
}

/// `circuit view`: one circuit, or every one with --all.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct CircuitPick {
    /// The circuit's name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The circuit's id.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Every circuit, one line each.
    #[arg(long)]
    pub all: bool,
}

#[derive(Subcommand, Debug)]
pub enum CircuitCmd {
    /// Create a circuit of running VMs; each becomes a voting member. Prints the circuit once
    /// it has a leader.
    #[command(
        after_help = "Examples:\n  micro-os circuit create --name validation-cluster \\\n    --nodes blockchain-node-1,blockchain-node-2,blockchain-node-3 \\\n    --type consensus\n  micro-os circuit create --name pair --nodes vm-a,vm-b --format json\n\nThe types are: consensus (the default)."
    )]
    Create {
        /// The circuit's name.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// The member VMs (names or ids), comma-separated; each must be running.
        #[arg(long, value_name = "VM,VM", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// The kind of circuit: consensus.
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// A circuit's leader, term, commit and applied index, health, and each member's role,
    /// state and lag; or every circuit with --all.
    #[command(
        after_help = "Examples:\n  micro-os circuit view --name validation-cluster\n  micro-os circuit view --id 3f2a9c1b0d4e --format yaml\n  micro-os circuit view --all"
    )]
    View {
        #[command(flatten)]
        pick: CircuitPick,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Every circuit, one line each (the same as `view --all`).
    #[command(alias = "ls", after_help = "Examples:\n  micro-os circuit list\n  micro-os circuit list --format json")]
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Watch a circuit: on a terminal a live view (q quits), otherwise one line per
    /// refresh with the leader, term, commit and applied index and each member's lag.
    #[command(
        after_help = "Examples:\n  micro-os circuit monitor --name validation-cluster\n  micro-os circuit monitor --id 3f2a9c1b0d4e --interval 5\n  micro-os circuit monitor --name validation-cluster | tee circuit.log"
    )]
    Monitor {
        #[command(flatten)]
        circuit: CircuitRef,
        /// Seconds between refreshes.
        #[arg(long, value_name = "S", default_value_t = 2.0)]
        interval: f64,
    },
    /// Add a running VM: it joins as a learner, catches up with the log, then votes.
    #[command(
        after_help = "Examples:\n  micro-os circuit add-node --name validation-cluster --node blockchain-node-4"
    )]
    AddNode {
        #[command(flatten)]
        circuit: CircuitRef,
        /// The VM (name or id).
        #[arg(long, value_name = "VM")]
        node: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a member; it leaves the membership and deletes its copy of the state.
    #[command(
        after_help = "Examples:\n  micro-os circuit remove-node --name validation-cluster --node blockchain-node-4"
    )]
    RemoveNode {
        #[command(flatten)]
        circuit: CircuitRef,
        /// The member VM (name or id).
        #[arg(long, value_name = "VM")]
        node: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Hand leadership to another voting member.
    #[command(
        after_help = "Examples:\n  micro-os circuit transfer-leader --name validation-cluster --to blockchain-node-2"
    )]
    TransferLeader {
        #[command(flatten)]
        circuit: CircuitRef,
        /// The member VM (name or id) to lead.
        #[arg(long, value_name = "VM")]
        to: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a circuit: every member leaves and deletes its copy of the state.
    #[command(alias = "remove", after_help = "Examples:\n  micro-os circuit rm --name validation-cluster")]
    Rm {
        #[command(flatten)]
        circuit: CircuitRef,
    },
    /// The circuit's replicated key-value state.
    #[command(subcommand)]
    State(StateCmd),
}

#[derive(Subcommand, Debug)]
pub enum StateCmd {
    /// Set a key once a majority holds it; with --expected-version only if the key is at
    /// that version (0: only if it is absent), else exit 4 naming its version.
    #[command(
        after_help = "Examples:\n  micro-os circuit state set --name validation-cluster config/batch_size 64\n  micro-os circuit state set --name validation-cluster config/batch_size 128 --expected-version 1\n  micro-os circuit state set --name validation-cluster lock/miner vm-2 --expected-version 0\n  micro-os circuit state set --id 3f2a9c1b0d4e config/mode fast --via blockchain-node-2\n\nKeys are 1 to 256 printable ASCII characters without spaces; values at most 256 KiB."
    )]
    Set {
        #[command(flatten)]
        circuit: CircuitRef,
        /// The key, e.g. config/batch_size.
        key: String,
        /// The value (a string).
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Write only if the key is at this version now (0: only if it is absent).
        #[arg(long, value_name = "V")]
        expected_version: Option<u64>,
        /// Send the write through this member VM (it forwards it to the leader).
        #[arg(long, value_name = "VM")]
        via: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// One key: its value, version and checksum. Linearizable (through the leader) unless
    /// --stale.
    #[command(
        after_help = "Examples:\n  micro-os circuit state get --name validation-cluster config/batch_size\n  micro-os circuit state get --name validation-cluster config/batch_size --stale --via blockchain-node-3\n  micro-os circuit state get --name validation-cluster config/batch_size --format json"
    )]
    Get {
        #[command(flatten)]
        circuit: CircuitRef,
        key: String,
        /// Read the member's local copy without asking the leader (may be behind).
        #[arg(long)]
        stale: bool,
        /// Ask this member VM.
        #[arg(long, value_name = "VM")]
        via: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Delete a key (exit 3 when it is absent).
    #[command(
        alias = "remove",
        after_help = "Examples:\n  micro-os circuit state rm --name validation-cluster config/batch_size"
    )]
    Rm {
        #[command(flatten)]
        circuit: CircuitRef,
        key: String,
        /// Send the write through this member VM.
        #[arg(long, value_name = "VM")]
        via: Option<String>,
    },
    /// Every key, with its version and checksum (values cut to 60 characters in the table).
    #[command(
        alias = "ls",
        after_help = "Examples:\n  micro-os circuit state list --name validation-cluster\n  micro-os circuit state list --name validation-cluster --stale --format yaml"
    )]
    List {
        #[command(flatten)]
        circuit: CircuitRef,
        /// Read the member's local copy without asking the leader (may be behind).
        #[arg(long)]
        stale: bool,
        /// Ask this member VM.
        #[arg(long, value_name = "VM")]
        via: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `micro-os chain …`: a reference-chain node in a container.
#[derive(Subcommand, Debug)]
pub enum ChainCmd {
    /// Height, headers, tip, peers, mempool, hash rate and sync of a node.
    #[command(
        after_help = "Examples:\n  micro-os chain status --container eth-node-1\n  micro-os chain status --container eth-node-1 --format json"
    )]
    Status {
        /// The node's container.
        #[arg(long, value_name = "NAME")]
        container: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Send coins from the node's wallet; prints the transaction id.
    #[command(
        after_help = "Examples:\n  micro-os chain send --container eth-node-1 --to bcrt1q... --amount 1.5\n  micro-os chain send --container eth-node-1 --to bcrt1q... --amount 0.1 --fee-rate 25"
    )]
    Send {
        #[arg(long, value_name = "NAME")]
        container: String,
        /// An address of the node's network.
        #[arg(long, value_name = "ADDR")]
        to: String,
        /// Coins (e.g. 1.5).
        #[arg(long, value_name = "X")]
        amount: f64,
        /// Fee rate in sat/vB (default 2).
        #[arg(long, value_name = "SAT_PER_VB")]
        fee_rate: Option<f64>,
    },
    /// The node wallet's balance and a new address to receive at.
    #[command(after_help = "Examples:\n  micro-os chain wallet --container eth-node-1")]
    Wallet {
        #[arg(long, value_name = "NAME")]
        container: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum AiCmd {
    /// Enable a module for a reference-chain node (every node of this host without
    /// --container); --all enables every module this build has.
    #[command(
        after_help = "Examples:\n  micro-os ai enable --module transaction --container eth-node-1\n  micro-os ai enable --module transaction --container eth-node-1 --config tx_opt_high_throughput.json\n  micro-os ai enable --all\n\nModules: transaction (the transaction optimiser); mining and network are not built yet."
    )]
    Enable {
        /// transaction, mining or network.
        #[arg(long, value_name = "M", required_unless_present = "all", conflicts_with = "all")]
        module: Option<String>,
        #[arg(long)]
        all: bool,
        /// The node's container, id or name.
        #[arg(long, value_name = "NAME")]
        container: Option<String>,
        /// A JSON file of the module's configuration (keys: see `micro-os ai config --help`).
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Disable a module (or all); its models stay in the model store.
    #[command(
        after_help = "Examples:\n  micro-os ai disable --module transaction --container eth-node-1\n  micro-os ai disable --all"
    )]
    Disable {
        #[arg(long, value_name = "M", required_unless_present = "all", conflicts_with = "all")]
        module: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long, value_name = "NAME")]
        container: Option<String>,
    },
    /// Change a module's configuration: every --set is checked before any applies.
    #[command(
        after_help = "Examples:\n  micro-os ai config --module transaction --container eth-node-1 --set batch_size=256 --set priority_levels=4\n\nKeys of the transaction module: batch_size (1..=65536, default 128), priority_levels (2..=16, default 3),\nanomaly_threshold (between 0 and 1, default 0.85), model_update_interval (seconds, 60..=604800, default 3600)."
    )]
    Config {
        #[arg(long, value_name = "M")]
        module: String,
        #[arg(long, value_name = "NAME")]
        container: Option<String>,
        /// key=value, repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE", required = true)]
        set: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Every module as it is set, its live models and what its nodes report.
    #[command(alias = "list", after_help = "Examples:\n  micro-os ai status\n  micro-os ai list --format json")]
    Status {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Retrain a module's models now; a new version goes live only if it scores at least as
    /// well as the live one on held-back data.
    #[command(after_help = "Examples:\n  micro-os ai train --module transaction --container eth-node-1")]
    Train {
        #[arg(long, value_name = "M")]
        module: String,
        #[arg(long, value_name = "NAME")]
        container: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Every model version: training data size, metrics against the baseline, which is live.
    #[command(after_help = "Examples:\n  micro-os ai models\n  micro-os ai models --format json")]
    Models {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Every host of this host's fabric: peer id, state, capacity, VMs, load and health.
    #[command(alias = "ls", after_help = "Examples:\n  micro-os host list\n  micro-os host list --format json")]
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// The fabric's join token, and the command another host runs to join this one.
    #[command(after_help = "Examples:\n  micro-os host token")]
    Token {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Join the fabric of another host (its address and token from `micro-os host token`
    /// there).
    #[command(after_help = "Examples:\n  micro-os host join /ip4/10.0.0.2/tcp/4001/p2p/12D3KooW... --token 3f9c...")]
    Join {
        /// The other host's libp2p address, ending in /p2p/<peer id>.
        #[arg(value_name = "MULTIADDR")]
        addr: String,
        /// The fabric's join token.
        #[arg(long, value_name = "TOKEN")]
        token: String,
    },
    /// Leave the fabric: its hosts are told, and this host stands alone with a new token.
    #[command(after_help = "Examples:\n  micro-os host leave")]
    Leave,
}
