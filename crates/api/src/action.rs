//! The daemon's control surface as data.

use std::future::Future;
use std::pin::Pin;

use axum::body::Bytes;
use futures_util::Stream;
use micro_os_core::{Container, Template, Vm};

use crate::types::{
    Ack, ContainerCreate, DeployRequest, EventInfo, ImageBuild, ImageImport, ImageInfo, LogsQuery, NetSend,
    NetSendStream, NetStatus, Provider, SendReport, VmCreate, WaitResponse,
};
use crate::ApiError;

/// Everything the API can ask of the daemon, besides the streaming calls.
#[derive(Debug, Clone)]
pub enum Action {
    /// Create a container; `start` starts it too, `rm` removes it again if it cannot start.
    CreateContainer {
        req: Box<ContainerCreate>,
        start: bool,
        rm: bool,
    },
    Deploy(DeployRequest),
    ListContainers,
    GetContainer(String),
    RemoveContainer {
        id: String,
        force: bool,
    },
    StartContainer(String),
    StopContainer {
        id: String,
        timeout: Option<f64>,
    },
    PauseContainer(String),
    ResumeContainer(String),
    ConfigureContainer {
        id: String,
        set: std::collections::BTreeMap<String, String>,
    },
    /// Wait for a container to stop; `rm` removes it then.
    WaitContainer {
        id: String,
        rm: bool,
    },
    ContainerEvents(String),
    /// Run a command in a running container.
    ExecContainer {
        id: String,
        req: crate::types::ExecRequest,
    },
    CreateVms(Vec<VmCreate>),
    ListVms,
    GetVm(String),
    RemoveVm {
        id: String,
        force: bool,
    },
    StartVm(String),
    StopVm {
        id: String,
        force: bool,
        timeout: Option<f64>,
    },
    PauseVm(String),
    ResumeVm(String),
    /// The host's p2p status, or a VM's.
    NetStatus {
        vm: Option<String>,
    },
    NetSend(NetSend),
    /// Providers of a resource key, asked from the host's peer or a VM's.
    NetFind {
        key: String,
        vm: Option<String>,
    },
    /// The latest sample of each object, filtered.
    Resources(crate::types::ResourcesQuery),
    /// Stored samples in a range.
    History(crate::types::HistoryQuery),
    /// Stored samples in a range, as CSV text or (format json) samples.
    Export(crate::types::HistoryQuery),
    Health(crate::types::HealthQuery),
    Performance(crate::types::PerformanceQuery),
    /// The Prometheus exposition.
    Metrics,
    ListImages,
    RemoveImage(String),
    ListTemplates,
    GetTemplate(String),
    CreateCircuit(crate::types::CircuitCreate),
    ListCircuits,
    /// A circuit by id or name, with what its members report.
    GetCircuit(String),
    RemoveCircuit(String),
    /// `circuit add-node`: the VM joins as a learner, then becomes a voter.
    AddCircuitNode {
        id: String,
        vm: String,
    },
    RemoveCircuitNode {
        id: String,
        vm: String,
    },
    TransferLeader {
        id: String,
        vm: String,
    },
    /// A change to the replicated state, through member VM `via` (any member by default).
    CircuitWrite {
        id: String,
        via: Option<String>,
        op: micro_os_core::circuit::StateOp,
    },
    /// One key (or all), linearizable unless `stale`.
    CircuitRead {
        id: String,
        key: Option<String>,
        stale: bool,
        via: Option<String>,
    },
    /// A reference-chain node's height, tip, peers, mempool, hash rate and sync.
    ChainStatus(String),
    /// Send coins from a node's wallet.
    ChainSend {
        container: String,
        req: crate::types::ChainSend,
    },
    /// A node wallet's balance and a new address.
    ChainWallet(String),
    /// The hosts of this host's fabric.
    ListHosts,
    /// The fabric's join token and this host's join addresses.
    HostToken,
    /// Join the fabric of another host.
    JoinHost(crate::types::HostJoin),
    /// Leave the fabric; this host stands alone after.
    LeaveHost,
    /// Every AI module as it is set.
    AiList,
    AiEnable(crate::types::AiEnable),
    AiDisable(crate::types::AiDisable),
    AiConfigure(crate::types::AiConfigure),
    /// Retrain now.
    AiTrain(crate::types::AiTrain),
    /// Every model version in the store.
    AiModels,
}

#[derive(Debug, Clone)]
pub enum Reply {
    Container(Box<Container>),
    Containers(Vec<Container>),
    Exit(WaitResponse),
    Exec(crate::types::ExecResult),
    Events(Vec<EventInfo>),
    Images(Vec<ImageInfo>),
    Vm(Box<Vm>),
    Net(Box<NetStatus>),
    Ack(Ack),
    Sent(Box<SendReport>),
    Providers(Vec<Provider>),
    Samples(Vec<crate::types::Sample>),
    Health(Box<crate::types::HealthReport>),
    Performance(Box<crate::types::PerformanceReport>),
    Text(String),
    Vms(Vec<Vm>),
    Templates(Vec<Template>),
    Template(Box<Template>),
    Circuit(Box<micro_os_core::circuit::CircuitView>),
    Circuits(Vec<micro_os_core::circuit::CircuitView>),
    Written(micro_os_core::circuit::WriteResult),
    Read(micro_os_core::circuit::ReadResult),
    ChainStatus(Box<crate::types::ChainStatus>),
    ChainSent(crate::types::ChainSent),
    ChainWallet(crate::types::ChainWallet),
    Hosts(Vec<crate::types::HostInfo>),
    HostToken(crate::types::HostToken),
    AiModules(Vec<crate::types::AiModuleStatus>),
    AiTrained(Vec<crate::types::AiTrainReport>),
    AiModels(Vec<crate::types::AiModelInfo>),
    Done,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A request body a client uploads (an image archive, a file to send): its bytes as they
/// arrive, cut off with an error past [`crate::server::UPLOAD_LIMIT`], and the length the
/// client declared, if it did. The daemon spools it; nothing holds it whole in memory.
pub struct Upload {
    pub body: ByteStream,
    pub declared: Option<u64>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload").field("declared", &self.declared).finish_non_exhaustive()
    }
}

pub type EventStream = Pin<Box<dyn Stream<Item = crate::types::Event> + Send>>;

/// Implemented by the daemon.
pub trait Control: Send + Sync + 'static {
    fn dispatch(&self, action: Action) -> BoxFuture<'_, Result<Reply, ApiError>>;
    /// Log lines of a container, as text, following new ones when asked.
    fn logs(&self, id: String, query: LogsQuery) -> BoxFuture<'_, Result<ByteStream, ApiError>>;
    /// Image build or import, reporting progress as NDJSON lines.
    fn build_image(&self, req: ImageBuild) -> BoxFuture<'_, Result<ByteStream, ApiError>>;
    /// Import an uploaded archive: spooled in the daemon's home, imported, then removed.
    fn import_image(&self, req: ImageImport, upload: Upload) -> BoxFuture<'_, Result<ByteStream, ApiError>>;
    /// Send an uploaded body to a peer as one DATA stream.
    fn send_stream(&self, req: NetSendStream, upload: Upload) -> BoxFuture<'_, Result<SendReport, ApiError>>;
    /// The daemon's own log lines, by component and level, following new ones when asked.
    fn daemon_logs(&self, query: crate::types::DaemonLogsQuery) -> BoxFuture<'_, Result<ByteStream, ApiError>>;
    /// The store's events after `since` (or from now), following new ones unless asked not to.
    fn events(&self, query: crate::types::EventsQuery) -> BoxFuture<'_, Result<EventStream, ApiError>>;
}
