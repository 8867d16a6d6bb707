"""The API's types, generated from ``/api/v1/openapi.json`` by ``tools/gen_models.py``.

Do not edit: regenerate. Unknown fields in an answer are ignored, so an older SDK reads a
newer daemon's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Optional, Union


@dataclass(kw_only=True)
class AiConfigure:
    """`POST /api/v1/ai/config`: `ai config --module M [--container N] --set key=value ...`;
every assignment is checked against the module's schema before any is applied."""

    module: Literal["transaction"]
    set: list[str]
    container: Optional[str] = None


@dataclass(kw_only=True)
class AiDisable:
    """`POST /api/v1/ai/disable`: `ai disable --module M [--container N]` or `--all`."""

    all: Optional[bool] = None
    container: Optional[str] = None
    module: Optional[Literal["transaction"]] = None


@dataclass(kw_only=True)
class AiEnable:
    """`POST /api/v1/ai/enable`: `ai enable --module M [--container N] [--config FILE]`, or
`ai enable --all`."""

    all: Optional[bool] = None
    config: Optional[dict[str, Any]] = None
    container: Optional[str] = None
    module: Optional[Literal["transaction"]] = None


@dataclass(kw_only=True)
class AiModelInfo:
    """One version of a trained model in the model store."""

    algorithm: str
    baseline: str
    baseline_metrics: dict[str, float]
    container: str
    created_at: datetime
    data_size: int
    kind: str
    live: bool
    metrics: dict[str, float]
    module: str
    primary_metric: str
    seed: int
    version: int
    trainer: Optional[str] = None


@dataclass(kw_only=True)
class AiModuleStatus:
    """A module as it is set for one container (or `*`, every node of this host)."""

    available: bool
    config: dict[str, Any]
    container: str
    enabled: bool
    models: list[AiModelInfo]
    module: str
    samples: int
    last_training: Optional[str] = None
    next_training: Optional[datetime] = None
    node: Optional[dict[str, Any]] = None
    note: Optional[str] = None


@dataclass(kw_only=True)
class AiTrain:
    """`POST /api/v1/ai/train`: `ai train --module M [--container N]`, retrain now."""

    module: Literal["transaction"]
    container: Optional[str] = None


@dataclass(kw_only=True)
class AiTrainReport:
    """What `ai train` did: one line per model (promoted, or kept and why) and the versions."""

    container: str
    models: list[AiModelInfo]
    module: str
    results: list[str]


@dataclass(kw_only=True)
class Alert:
    """An alert: a rule that fired for one object; `resolved_at` once it stopped holding."""

    fired_at: datetime
    id: int
    message: str
    object: str
    rule: str
    severity: Severity
    source: str
    value: float
    resolved_at: Optional[datetime] = None


@dataclass(kw_only=True)
class ChainSample:
    """What a reference-chain node reports each round. Flattened into a [`Sample`], where only
chain nodes have these fields: none is required in the document."""

    chain_block_interval_s: Optional[float] = None
    chain_hashrate: Optional[float] = None
    chain_height: Optional[int] = None
    chain_lag_blocks: Optional[int] = None
    chain_mempool_bytes: Optional[int] = None
    chain_mempool_txs: Optional[int] = None
    chain_peers: Optional[int] = None
    chain_stall_intervals: Optional[float] = None


@dataclass(kw_only=True)
class ChainSend:
    """`POST /api/v1/chain/{container}/send`: `chain send --to ADDR --amount X`."""

    amount: float
    to: str
    fee_rate: Optional[float] = None


@dataclass(kw_only=True)
class ChainSent:
    """The transaction a send made."""

    txid: str


@dataclass(kw_only=True)
class ChainStatus:
    """`GET /api/v1/chain/{container}`: a reference-chain node as `chain status` shows it."""

    container: str
    difficulty: float
    hashrate: float
    headers: int
    height: int
    mempool_bytes: int
    mempool_txs: int
    network: str
    peers: int
    sync_progress: float
    syncing: bool
    tip: str
    consensus: Optional[str] = None
    finalized: Optional[int] = None
    light: Optional[bool] = None
    validators: Optional[list[str]] = None


@dataclass(kw_only=True)
class ChainWallet:
    """`GET /api/v1/chain/{container}/wallet`: the node wallet's balance and an address to receive at."""

    address: str
    balance: float
    container: str


@dataclass(kw_only=True)
class CircuitCreate:
    """`POST /api/v1/circuits`: `circuit create --name N --nodes vm1,vm2,vm3 [--type consensus]`."""

    name: str
    nodes: list[str]
    type: Optional[Literal["consensus"]] = None


@dataclass(kw_only=True)
class CircuitView:
    """A circuit as `circuit view` shows it: the record and what its members report."""

    applied: int
    committed: int
    created_at: datetime
    health: str
    id: str
    last_log: int
    members: list[MemberView]
    name: str
    problems: list[str]
    term: int
    type: CircuitType
    leader: Optional[str] = None
    leader_node: Optional[int] = None


@dataclass(kw_only=True)
class ComponentHealth:
    """The health of one part of the daemon."""

    component: str
    reason: str
    status: Severity
    configured: Optional[bool] = None


@dataclass(kw_only=True)
class Container:
    """A container as stored and reported: its spec plus observed state."""

    created_at: datetime
    id: str
    image: str
    name: str
    state: ContainerState
    circuit: Optional[str] = None
    command: Optional[list[str]] = None
    config: Optional[dict[str, str]] = None
    data: Optional[str] = None
    env: Optional[dict[str, str]] = None
    error: Optional[str] = None
    exit_code: Optional[int] = None
    finished_at: Optional[datetime] = None
    health: Optional[HealthState] = None
    health_check: Optional[HealthCheck] = None
    network: Optional[Any] = None
    oom_killed: Optional[bool] = None
    pid: Optional[int] = None
    ports: Optional[list[PortMapping]] = None
    replica_of: Optional[str] = None
    replicas: Optional[list[ReplicaView]] = None
    resources: Optional[Resources] = None
    restart: Optional[RestartPolicy] = None
    restart_count: Optional[int] = None
    started_at: Optional[datetime] = None
    stop_requested: Optional[bool] = None
    template: Optional[str] = None
    vm: Optional[str] = None


@dataclass(kw_only=True)
class ContainerCreate:
    """`POST /api/v1/containers`. Give `image` or `template` (or both: the template with
another image). Anything set here overrides the template."""

    name: str
    circuit: Optional[str] = None
    command: Optional[list[str]] = None
    config: Optional[dict[str, str]] = None
    depends_on: Optional[list[Dependency]] = None
    env: Optional[dict[str, str]] = None
    health_check: Optional[HealthCheck] = None
    image: Optional[str] = None
    network: Optional[dict[str, Any]] = None
    ports: Optional[list[PortMapping]] = None
    replicate: Optional[bool] = None
    resources: Optional[Resources] = None
    restart: Optional[RestartPolicy] = None
    template: Optional[str] = None
    vm: Optional[str] = None


@dataclass(kw_only=True)
class ContainerSpec:
    """What a container is asked to be: fixed at create time except `config`."""

    image: str
    name: str
    circuit: Optional[str] = None
    command: Optional[list[str]] = None
    config: Optional[dict[str, str]] = None
    data: Optional[str] = None
    env: Optional[dict[str, str]] = None
    health_check: Optional[HealthCheck] = None
    network: Optional[Any] = None
    ports: Optional[list[PortMapping]] = None
    replica_of: Optional[str] = None
    resources: Optional[Resources] = None
    restart: Optional[RestartPolicy] = None
    template: Optional[str] = None
    vm: Optional[str] = None


@dataclass(kw_only=True)
class Dependency:
    """One entry of `depends_on`."""

    name: str
    condition: Optional[Condition] = None


@dataclass(kw_only=True)
class DeployRequest:
    """`POST /api/v1/containers/deploy`: the spec's `container_spec.json`. Every container is
checked (names, images, templates, `depends_on`: known names, no cycle) before any is
created; then all are created and started in dependency order, each once its
dependencies' conditions hold."""

    containers: list[ContainerCreate]


@dataclass(kw_only=True)
class Event:
    """One event of the stream: something that happened to an object, as the store recorded
it, in the order recorded."""

    action: str
    at: datetime
    detail: str
    id: int
    name: str
    object_id: str
    type: str


@dataclass(kw_only=True)
class EventInfo:
    """A lifecycle event of an object, as the store recorded it."""

    action: str
    at: datetime
    detail: str
    seq: int


@dataclass(kw_only=True)
class ExecRequest:
    """`POST /api/v1/containers/{id}/exec`: a command to run in a running container, as
`docker exec` (without a terminal) does."""

    command: list[str]
    env: Optional[dict[str, str]] = None
    timeout_s: Optional[float] = None


@dataclass(kw_only=True)
class ExecResult:
    """What an exec printed and how it ended."""

    exit_code: int
    stderr: str
    stdout: str
    truncated: bool


@dataclass(kw_only=True)
class HealthCheck:
    type: Literal["command", "tcp", "http"]
    command: Optional[list[str]] = None
    interval_s: Optional[float] = None
    path: Optional[str] = None
    port: Optional[int] = None
    retries: Optional[int] = None
    timeout_s: Optional[float] = None


@dataclass(kw_only=True)
class HealthProbe:
    """How a container's health is probed."""

    type: Literal["command", "tcp", "http"]
    command: Optional[list[str]] = None
    path: Optional[str] = None
    port: Optional[int] = None


@dataclass(kw_only=True)
class HealthReport:
    """Components and open alerts."""

    alerts: list[Alert]
    components: list[ComponentHealth]
    status: Severity


@dataclass(kw_only=True)
class HealthResponse:
    status: str
    version: str


@dataclass(kw_only=True)
class HealthState:
    """The last known health of a container, as `inspect` shows it."""

    checks: int
    failing_streak: int
    failures: int
    status: HealthStatus
    last_checked: Optional[datetime] = None
    last_duration_ms: Optional[float] = None
    last_output: Optional[str] = None


@dataclass(kw_only=True)
class HostInfo:
    """`GET /api/v1/hosts`: a host of the fabric as `host list` shows it."""

    admitted_by: str
    joined: datetime
    peer_id: str
    state: str
    last_seen_s: Optional[int] = None
    overlay: Optional[OverlayLink] = None
    status: Optional[HostStatus] = None


@dataclass(kw_only=True)
class HostJoin:
    """`POST /api/v1/hosts/join`: `host join MULTIADDR --token T`."""

    addr: str
    token: str


@dataclass(kw_only=True)
class HostStatus:
    """A host's capacity and load, as its heartbeat carries them."""

    addrs: list[str]
    cpus: int
    disk_bytes: int
    disk_free_bytes: int
    health: str
    load: float
    memory_bytes: int
    memory_free_bytes: int
    vms: int
    vms_running: int


@dataclass(kw_only=True)
class HostToken:
    """`GET /api/v1/hosts/token`: the fabric's join token and where to join this host."""

    join: list[str]
    peer_id: str
    token: str


@dataclass(kw_only=True)
class ImageBuild:
    """`POST /api/v1/images/build`: build a built-in base image. (An image from a directory
is an upload: the client tars it and imports it as a root filesystem tarball.)"""

    base: Optional[Literal["busybox", "blockchain-base", "blockchain-node", "ethereum-dev"]] = None
    name: Optional[str] = None


@dataclass(kw_only=True)
class ImageEvent:
    """One line of an image build's or import's NDJSON response."""

    event: Literal["progress", "done", "error"]
    current: Optional[int] = None
    image: Optional[ImageInfo] = None
    message: Optional[str] = None
    stage: Optional[str] = None
    status: Optional[int] = None
    total: Optional[int] = None


@dataclass(kw_only=True)
class ImageInfo:
    cmd: list[str]
    created_at: datetime
    entrypoint: list[str]
    id: str
    layers: int
    name: str
    size_bytes: int
    source: str


@dataclass(kw_only=True)
class MemberRequest:
    """`POST /api/v1/circuits/{id}/members` (add a node) and `POST /api/v1/circuits/{id}/leader`
(hand leadership to it)."""

    vm: str


@dataclass(kw_only=True)
class MemberView:
    """One member in `circuit view`."""

    health: str
    node_id: int
    peer_id: str
    role: Role
    state: str
    vm: str
    vm_id: str
    applied: Optional[int] = None
    error: Optional[str] = None
    host: Optional[str] = None
    lag: Optional[int] = None
    matched: Optional[int] = None
    snapshot: Optional[int] = None
    term: Optional[int] = None


@dataclass(kw_only=True)
class NetSend:
    """`POST /api/v1/net/send`: a signed message from this host to a peer."""

    to: str
    type: Literal["SYNC", "DISC", "DATA", "CTRL", "PING", "sync", "disc", "data", "ctrl", "ping"]
    count: Optional[int] = None
    from_: Optional[str] = None
    size: Optional[int] = None
    state: Optional[str] = None
    stream: Optional[bool] = None


@dataclass(kw_only=True)
class NetStatus:
    """`GET /api/v1/monitor/network`: the host's libp2p node."""

    listen: list[str]
    messages: dict[str, int]
    peer_id: str
    peers: list[PeerInfo]
    rejections: dict[str, int]
    messages_sent: Optional[dict[str, int]] = None
    nat: Optional[str] = None
    provides: Optional[list[str]] = None
    stream_bytes_in: Optional[int] = None
    streams_in: Optional[int] = None


@dataclass(kw_only=True)
class OverlayLink:
    """An overlay link to another host, as this host's WireGuard device reports it."""

    rx_bytes: int
    tx_bytes: int
    handshake_s_ago: Optional[int] = None


@dataclass(kw_only=True)
class PeerInfo:
    """One peer of the host's libp2p node."""

    addresses: list[str]
    bytes_in: int
    bytes_out: int
    connected: bool
    messages_in: int
    messages_out: int
    peer_id: str
    score: int
    agent: Optional[str] = None
    discovered: Optional[list[str]] = None
    rtt_ms: Optional[float] = None


@dataclass(kw_only=True)
class PerformanceReport:
    """A container's use over a window, from its stored samples."""

    container: str
    cpu_percent_avg: float
    cpu_percent_max: float
    cpu_percent_p95: float
    from_: datetime
    io_read_bytes_per_s: float
    io_write_bytes_per_s: float
    memory_bytes_avg: int
    memory_bytes_max: int
    net_rx_bytes_per_s: float
    net_tx_bytes_per_s: float
    oom_kills: int
    restarts: int
    samples: int
    to: datetime
    ai: Optional[list[AiModuleStatus]] = None
    ai_stats: Optional[str] = None
    cpu_limit_percent: Optional[float] = None
    health_error_rate: Optional[float] = None
    health_ms_avg: Optional[float] = None
    memory_limit_bytes: Optional[int] = None


@dataclass(kw_only=True)
class Problem:
    """RFC 9457 problem details, served as `application/problem+json`."""

    detail: str
    status: int
    title: str
    type: str


@dataclass(kw_only=True)
class Provider:
    """A peer that advertises a resource (a Kademlia provider record)."""

    addresses: list[str]
    connected: bool
    peer_id: str
    vm: Optional[str] = None


@dataclass(kw_only=True)
class ReadResult:
    """The answer to a read."""

    applied: int
    entries: list[StateEntry]
    node: int
    stale: bool


@dataclass(kw_only=True)
class ReplicaView:
    """One replica of a replicated container, as `container inspect` shows it."""

    id: str
    name: str
    state: ContainerState
    vm: str
    error: Optional[str] = None
    exit_code: Optional[int] = None
    health: Optional[HealthStatus] = None
    pid: Optional[int] = None


@dataclass(kw_only=True)
class Resources:
    """Limits for one container (or VM): enforced by cgroups, never advisory."""

    cpu: Optional[float] = None
    memory: Optional[Size] = None
    pids: Optional[int] = None


@dataclass(kw_only=True)
class Sample:
    """One measurement of a container, a VM, the host or a P2P peer. Counters (CPU time,
I/O, network) are cumulative since the object started; `cpu_percent` is over the last
interval. For a peer (kind `peer`), the packet columns count messages and `health_ms`
is the ping round trip."""

    cpu_percent: float
    id: str
    io_read_bytes: int
    io_write_bytes: int
    kind: str
    memory_bytes: int
    name: str
    net_rx_bytes: int
    net_rx_packets: int
    net_tx_bytes: int
    net_tx_packets: int
    oom_kills: int
    pids: int
    restarts: int
    ts: int
    chain_block_interval_s: Optional[float] = None
    chain_hashrate: Optional[float] = None
    chain_height: Optional[int] = None
    chain_lag_blocks: Optional[int] = None
    chain_mempool_bytes: Optional[int] = None
    chain_mempool_txs: Optional[int] = None
    chain_peers: Optional[int] = None
    chain_stall_intervals: Optional[float] = None
    cpu_limit_percent: Optional[float] = None
    disk_total_bytes: Optional[int] = None
    disk_used_bytes: Optional[int] = None
    health_error_rate: Optional[float] = None
    health_ms: Optional[float] = None
    load1: Optional[float] = None
    memory_limit_bytes: Optional[int] = None


@dataclass(kw_only=True)
class SendReport:
    """The outcome of a send: counts, timing and the receiver's verdict."""

    accepted: bool
    bytes: int
    elapsed_ms: float
    refused: int
    sent: int
    checksum: Optional[str] = None
    p50_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    reason: Optional[str] = None


@dataclass(kw_only=True)
class SseMessage:
    """One message of the stream, as a Server-Sent Events client parses it."""

    data: str
    event: str
    id: str


@dataclass(kw_only=True)
class StateEntry:
    """One key of the replicated state, with the version and checksum of the spec's SYNC
payload."""

    checksum: str
    key: str
    value: str
    version: int


@dataclass(kw_only=True)
class StateWrite:
    """`PUT /api/v1/circuits/{id}/state/{key}`: set a key, or compare-and-set it when
`expected_version` is given."""

    value: str
    expected_version: Optional[int] = None


@dataclass(kw_only=True)
class Template:
    """A named recipe for containers: image, command, env, ports, health check and default
resources. Built-in templates are compiled into the binary; user templates are JSON
files of this shape in `$MICRO_OS_HOME/templates/`."""

    image: str
    name: str
    command: Optional[list[str]] = None
    config: Optional[dict[str, str]] = None
    data: Optional[str] = None
    description: Optional[str] = None
    env: Optional[dict[str, str]] = None
    health_check: Optional[HealthCheck] = None
    ports: Optional[list[PortMapping]] = None
    resources: Optional[Resources] = None
    restart: Optional[RestartPolicy] = None
    settings: Optional[list[str]] = None
    source: Optional[str] = None
    workload: Optional[Workload] = None


@dataclass(kw_only=True)
class Vm:
    address: str
    cpus: float
    created_at: datetime
    id: str
    image: str
    memory_mib: int
    name: str
    state: VmState
    accel: Optional[str] = None
    agent: Optional[AgentStatus] = None
    driver: Optional[Driver] = None
    error: Optional[str] = None
    exit_code: Optional[int] = None
    last_report: Optional[datetime] = None
    oom_killed: Optional[bool] = None
    peer_id: Optional[str] = None
    pid: Optional[int] = None
    restart: Optional[RestartPolicy] = None
    restart_count: Optional[int] = None
    started_at: Optional[datetime] = None
    stop_requested: Optional[bool] = None
    stopped_at: Optional[datetime] = None


@dataclass(kw_only=True)
class VmCreate:
    """`POST /api/v1/vms`: one VM, as `vm create` takes it."""

    memory: int
    name: str
    cpu: Optional[float] = None
    driver: Optional[Literal["sandbox", "qemu"]] = None
    image: Optional[str] = None
    restart: Optional[RestartPolicy] = None


@dataclass(kw_only=True)
class VmSpec:
    """What a VM is asked to be."""

    cpus: float
    image: str
    memory_mib: int
    name: str
    driver: Optional[Driver] = None
    restart: Optional[RestartPolicy] = None


@dataclass(kw_only=True)
class WaitResponse:
    exit_code: int
    oom_killed: bool
    error: Optional[str] = None


@dataclass(kw_only=True)
class WriteOutcome:
    """What a write did."""

    result: Literal["stored", "deleted", "conflict", "not_found"]
    checksum: Optional[str] = None
    current: Optional[int] = None
    version: Optional[int] = None


@dataclass(kw_only=True)
class WriteResult:
    """The answer to a write: what it did and where in the log it was committed."""

    index: int
    leader: int
    outcome: WriteOutcome

AgentStatus = Literal["starting", "ready", "degraded", "unreachable"]
CircuitType = Literal["consensus"]
Condition = Literal["started", "healthy", "completed"]
ContainerState = Literal["created", "running", "paused", "exited"]
Driver = Literal["sandbox", "qemu"]
HealthStatus = Literal["starting", "healthy", "unhealthy"]
PortMapping = str
RestartPolicy = str
Role = Literal["voter", "learner"]
Severity = Literal["healthy", "degraded", "critical"]
Size = int
VmDefinitions = Union[list[VmCreate], dict[str, Any]]
VmState = Literal["created", "running", "paused", "stopped"]
Workload = Literal["blockchain", "ai", "general"]
