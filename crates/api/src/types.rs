//! Request and response bodies.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use micro_os_core::{HealthCheck, PortMapping, Resources, RestartPolicy};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /api/v1/containers`. Give `image` or `template` (or both: the template with
/// another image). Anything set here overrides the template.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerCreate {
    /// 1-63 letters, digits, `-`, `_` or `.`, starting with a letter or digit.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Overrides the image's or template's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Place the container on this VM (not available yet: VMs arrive with the VM issue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub network: Option<serde_json::Value>,
    /// Run one replica on each member VM of this circuit (name or id); needs `replicate`.
    /// A VM that joins the circuit later gets one too, one that leaves loses its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
    /// With `circuit`: replicate the container on every member (`--replicate`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replicate: bool,
    /// In a deploy file: containers of the same file this one starts after, each once its
    /// condition holds (as Docker Compose's `depends_on`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
}

/// One entry of `depends_on`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// A container of the same deploy file.
    pub name: String,
    #[serde(default)]
    pub condition: Condition,
}

/// When a dependency lets its dependants start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// Once it runs (Compose's `service_started`).
    #[default]
    #[serde(alias = "service_started")]
    Started,
    /// Once its health check passes (`service_healthy`); it needs a health check.
    #[serde(alias = "service_healthy")]
    Healthy,
    /// Once it exited with code 0 (`service_completed_successfully`).
    #[serde(alias = "service_completed_successfully")]
    Completed,
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Condition::Started => "started",
            Condition::Healthy => "healthy",
            Condition::Completed => "completed",
        })
    }
}

/// `POST /api/v1/containers/deploy`: the spec's `container_spec.json`. Every container is
/// checked (names, images, templates, `depends_on`: known names, no cycle) before any is
/// created; then all are created and started in dependency order, each once its
/// dependencies' conditions hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub containers: Vec<ContainerCreate>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateQuery {
    /// Start the container too: created and started in one request (`container run`).
    #[serde(default)]
    pub start: bool,
    /// With `start`: a container that cannot start is removed again instead of kept with
    /// its error (`container run --rm`).
    #[serde(default)]
    pub rm: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Remove the container once it has stopped; the reply still has its exit
    /// (`container run --rm`).
    #[serde(default)]
    pub rm: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// Stop a running container first.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StopQuery {
    /// Seconds between SIGTERM and SIGKILL (default 10).
    #[serde(default)]
    #[param(minimum = 0)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Keep the response open and send new lines as they are written.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines.
    #[serde(default, deserialize_with = "crate::schema::count")]
    #[param(maximum = 2147483647)]
    pub tail: Option<u32>,
    /// Only lines at or after this RFC 3339 time.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// Prefix each line with its time and stream.
    #[serde(default)]
    pub timestamps: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WaitResponse {
    pub exit_code: i32,
    pub oom_killed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /api/v1/containers/{id}/exec`: a command to run in a running container, as
/// `docker exec` (without a terminal) does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments (the program not empty).
    #[schema(min_items = 1, inline, value_type = Vec<NonEmpty>)]
    pub command: Vec<String>,
    /// Variables added to the container's own environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds before the command is killed (exit code 124); default 60, at most 3600.
    #[serde(default)]
    #[schema(minimum = 0.001, maximum = 3600)]
    pub timeout_s: Option<f64>,
}

/// A string of at least one character.
#[derive(ToSchema)]
#[schema(pattern = "[\\s\\S]")]
#[allow(dead_code)] // a shape for the document
pub struct NonEmpty(String);

/// What an exec printed and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// The command's exit code: 124 when killed at the timeout, 126/127 when it could not
    /// be run or found, 128+N when signal N ended it.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The command printed more than 4 MiB on a stream; the rest was cut off.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    pub name: String,
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub size_bytes: u64,
    pub layers: usize,
    pub source: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// `POST /api/v1/images/build`: build a built-in base image. (An image from a directory
/// is an upload: the client tars it and imports it as a root filesystem tarball.)
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageBuild {
    #[serde(default = "default_base")]
    #[schema(schema_with = crate::schema::image_base)]
    pub base: String,
    /// Name to store it under (default: the base's name).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
    pub name: Option<String>,
}

fn default_base() -> String {
    "busybox".into()
}

/// `POST /api/v1/images/import?name=NAME`: the body is the archive itself (an OCI layout
/// tar, a `docker save` tarball or a root filesystem tarball, gzip or not), uploaded by the
/// client; the daemon never reads a path a client names.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImageImport {
    /// Name to store the image under (default: the archive's own tag; a root filesystem
    /// tarball has none, so it needs one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]
    pub name: Option<String>,
    /// What the archive was called where the client found it (a file name), for the
    /// image's source and error messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(pattern = "^[^/]{1,255}$")]
    pub source: Option<String>,
}

/// One line of an image build's or import's NDJSON response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ImageEvent {
    Progress { stage: String, current: u64, total: u64 },
    Done { image: ImageInfo },
    Error { status: u16, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
    pub version: String,
}

/// A lifecycle event of an object, as the store recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventInfo {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub action: String,
    pub detail: String,
}

/// The kinds of objects whose events the stream carries (`type` in `GET /api/v1/events`).
pub const EVENT_TYPES: &[&str] = &["container", "vm", "circuit", "host", "ai", "alert"];

/// `GET /api/v1/events`: which events, from where.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default, rename = "type")]
    #[param(schema_with = crate::schema::event_types)]
    pub kinds: Option<String>,
    /// Only this object, by name or id (an alert's events carry the alerted object as
    /// their name, e.g. `container/eth-node-1`).
    #[serde(default)]
    pub object: Option<String>,
    /// Start after this event id (the last one a client saw); without it, the stream
    /// starts with the next event (the SSE `Last-Event-ID` header does the same).
    #[serde(default)]
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// Without `since`: start with the last N events that pass the filters.
    #[serde(default, deserialize_with = "crate::schema::count")]
    #[param(maximum = 2147483647)]
    pub tail: Option<u32>,
    /// Keep the stream open for new events (default); `false` ends it after the events
    /// recorded so far.
    #[serde(default)]
    pub follow: Option<bool>,
}

impl EventsQuery {
    /// The kinds asked for, each checked against [`EVENT_TYPES`].
    pub fn kinds(&self) -> Result<Vec<String>, String> {
        let Some(list) = &self.kinds else { return Ok(vec![]) };
        list.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                if EVENT_TYPES.contains(&k) {
                    Ok(k.to_string())
                } else {
                    Err(format!("event type {k:?} is unknown (one of: {})", EVENT_TYPES.join(", ")))
                }
            })
            .collect()
    }
}

/// One event of the stream: something that happened to an object, as the store recorded
/// it, in the order recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Its place in the stream; resume after it with `since`.
    pub id: i64,
    pub at: DateTime<Utc>,
    /// container, vm, circuit, host, ai or alert.
    #[serde(rename = "type")]
    pub kind: String,
    /// The object's id (an alert's: the alert id).
    pub object_id: String,
    /// The object's name (an alert's: the alerted object).
    pub name: String,
    /// created, started, exited, removed, fired, resolved, ...
    pub action: String,
    pub detail: String,
}

/// `POST /api/v1/vms`: one VM, as `vm create` takes it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreate {
    /// 1-63 letters, digits, `-`, `_` or `.`, starting with a letter or digit.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    pub name: String,
    /// Memory in MiB: at least 16, at most this host's (the served document says).
    pub memory: u64,
    /// CPUs (cores): at least 0.01, at most this host's.
    #[serde(default = "one")]
    #[schema(minimum = 0.01)]
    pub cpu: f64,
    /// Root filesystem image (default `blockchain-base`: busybox and the micro-os agent).
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::schema::vm_driver)]
    pub driver: Option<String>,
    #[serde(default)]
    pub restart: Option<RestartPolicy>,
}

fn one() -> f64 {
    1.0
}

/// `vm create --from-file`: a list of VMs, bare or as `{"vms": [...]}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum VmDefinitions {
    List(Vec<VmCreate>),
    Wrapped { vms: Vec<VmCreate> },
}

/// By hand rather than `untagged`, whose one error ("did not match any variant") hides
/// which VM and which key are wrong: this one says `vms[1]: unknown field "memroy"`.
impl<'de> Deserialize<'de> for VmDefinitions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        let (list, wrapped) = match v {
            serde_json::Value::Array(list) => (list, false),
            serde_json::Value::Object(mut o) => {
                if let Some(k) = o.keys().find(|k| *k != "vms") {
                    return Err(D::Error::custom(format!("unknown field `{k}`, expected `vms`")));
                }
                match o.remove("vms") {
                    Some(serde_json::Value::Array(list)) => (list, true),
                    _ => return Err(D::Error::custom("`vms` must be a list of VMs")),
                }
            }
            _ => return Err(D::Error::custom("expected a list of VMs or {\"vms\": [...]}")),
        };
        let vms = list
            .into_iter()
            .enumerate()
            .map(|(i, vm)| serde_json::from_value(vm).map_err(|e| D::Error::custom(format!("vms[{i}]: {e}"))))
            .collect::<Result<Vec<VmCreate>, _>>()?;
        Ok(if wrapped { VmDefinitions::Wrapped { vms } } else { VmDefinitions::List(vms) })
    }
}

impl VmDefinitions {
    pub fn into_vec(self) -> Vec<VmCreate> {
        match self {
            VmDefinitions::List(v) | VmDefinitions::Wrapped { vms: v } => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VmStopQuery {
    /// Kill at once instead of asking the agent to shut down.
    #[serde(default)]
    pub force: bool,
    /// Seconds the agent gets before the VM is killed (default 10).
    #[serde(default)]
    #[param(minimum = 0)]
    pub timeout: Option<f64>,
}

pub use micro_os_core::net::{Ack, NetStatus, PeerInfo, Provider};

/// `GET /api/v1/net/providers`: who offers a resource key (`container/<name>`, `vm/<name>`).
#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FindQuery {
    /// `container/<name>`, `vm/<name>` or any key a peer provides; not blank.
    #[param(pattern = "\\S")]
    pub key: String,
    /// Ask from this VM's peer instead of the host's.
    #[serde(default)]
    pub vm: Option<String>,
}

/// `GET /api/v1/monitor/network`: the host's peer, or a VM's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NetQuery {
    #[serde(default)]
    pub vm: Option<String>,
}

pub use micro_os_core::net::SendReport;

/// `POST /api/v1/net/send`: a signed message from this host to a peer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetSend {
    /// Send from this VM (name or id) instead of from the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Peer id, or the name of a VM whose agent has reported its peer id.
    pub to: String,
    #[serde(rename = "type")]
    #[schema(schema_with = crate::schema::message_type)]
    pub kind: String,
    /// The payload's state.
    #[serde(default)]
    pub state: String,
    /// Send this many copies at once (a load test); the answer counts refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Pad the state to this many bytes; for a stream, its length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Send as a DATA stream (`/micro-os/data/1`) rather than as messages.
    #[serde(default)]
    pub stream: bool,
}

/// An upload's body in the document: bytes (`type: string, format: binary`), not JSON.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct UploadBody(pub Vec<u8>);

/// `POST /api/v1/net/send/stream`: the body, uploaded by the client, goes to a peer as one
/// DATA stream (`/micro-os/data/1`) — what `net send --type DATA --file FILE` sends.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NetSendStream {
    /// Send from this VM (name or id) instead of from the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Peer id, or the name of a VM whose agent has reported its peer id.
    pub to: String,
    /// The file name the receiver keeps the content under (its inbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(pattern = "^[^/]{1,255}$")]
    pub name: Option<String>,
}

pub use micro_os_core::metrics::{Alert, ComponentHealth, Sample, Severity};

/// `GET /api/v1/monitor/resources`: the latest sample of each object.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResourcesQuery {
    /// Only this VM (name or id) and the containers placed on it.
    #[serde(default)]
    pub vm: Option<String>,
    /// Only this container (name or id).
    #[serde(default)]
    pub container: Option<String>,
    /// The host too, besides containers and VMs.
    #[serde(default)]
    pub all: bool,
}

/// `GET /api/v1/monitor/history` and `/export`: samples in a time range.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// A date (2023-01-31), an RFC 3339 time, or a duration ago (2h).
    #[param(schema_with = crate::schema::time, required = true)]
    pub from: String,
    /// Like `from`; a date means its end. Default now. A `from` after `to` is an empty range.
    #[serde(default)]
    #[param(schema_with = crate::schema::time)]
    pub to: Option<String>,
    /// Only this object: a container's or VM's name or id, or `host`.
    #[serde(default)]
    pub object: Option<String>,
    /// Export only.
    #[serde(default)]
    #[param(schema_with = crate::schema::export_format)]
    pub format: Option<String>,
}

/// `GET /api/v1/monitor/health`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HealthQuery {
    #[serde(default)]
    #[param(schema_with = crate::schema::components)]
    pub components: Option<String>,
    /// Only what is critical.
    #[serde(default)]
    pub critical_only: bool,
    /// The alerts AI modules raised instead of the rules' alerts.
    #[serde(default)]
    pub ai_alerts: bool,
}

/// Components and open alerts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthReport {
    /// The worst status of the components shown.
    pub status: Severity,
    pub components: Vec<ComponentHealth>,
    pub alerts: Vec<Alert>,
}

/// `GET /api/v1/monitor/performance`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PerformanceQuery {
    pub container: String,
    /// How far back: a duration (1h, default) or a time.
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub ai_stats: bool,
}

/// A container's use over a window, from its stored samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PerformanceReport {
    pub container: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub samples: u64,
    pub cpu_percent_avg: f64,
    pub cpu_percent_p95: f64,
    pub cpu_percent_max: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_percent: Option<f64>,
    pub memory_bytes_avg: u64,
    pub memory_bytes_max: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    pub net_rx_bytes_per_s: f64,
    pub net_tx_bytes_per_s: f64,
    pub io_read_bytes_per_s: f64,
    pub io_write_bytes_per_s: f64,
    pub restarts: u64,
    pub oom_kills: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_ms_avg: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_error_rate: Option<f64>,
    /// What the AI modules decided for this container, their gain against their
    /// baselines and their model versions, in words (`--ai-stats`; says so when none is
    /// enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai_stats: Option<String>,
    /// The same, as data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ai: Vec<AiModuleStatus>,
}

/// `GET /api/v1/logs`: the daemon's own log, by component.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DaemonLogsQuery {
    #[serde(default)]
    #[param(schema_with = crate::schema::component)]
    pub component: Option<String>,
    #[serde(default)]
    #[param(schema_with = crate::schema::log_level)]
    pub level: Option<String>,
    /// Keep the response open and send new lines as they are logged.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N matching lines written so far.
    #[serde(default, deserialize_with = "crate::schema::count")]
    #[param(maximum = 2147483647)]
    pub tail: Option<u32>,
}

/// `POST /api/v1/circuits`: `circuit create --name N --nodes vm1,vm2,vm3 [--type consensus]`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitCreate {
    /// 1-63 letters, digits, `-`, `_` or `.`, starting with a letter or digit.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    pub name: String,
    /// The member VMs, by name or id; each must be running.
    #[schema(min_items = 1)]
    pub nodes: Vec<String>,
    #[serde(default, rename = "type")]
    #[schema(schema_with = crate::schema::circuit_type)]
    pub kind: Option<String>,
}

/// `POST /api/v1/circuits/{id}/members` (add a node) and `POST /api/v1/circuits/{id}/leader`
/// (hand leadership to it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    /// The VM, by name or id.
    pub vm: String,
}

/// `PUT /api/v1/circuits/{id}/state/{key}`: set a key, or compare-and-set it when
/// `expected_version` is given.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateWrite {
    pub value: String,
    /// Write only if the key is at this version now (0: only if it is absent); otherwise
    /// the answer is 409 with the key's current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

/// `GET /api/v1/circuits/{id}/state[/{key}]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    /// Answer from the member's local copy without asking the leader (may be behind).
    #[serde(default)]
    pub stale: bool,
    /// Ask this member VM (name or id) rather than any member.
    #[serde(default)]
    pub via: Option<String>,
}

/// `PUT` and `DELETE /api/v1/circuits/{id}/state/{key}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    /// Send the write through this member VM (name or id); it forwards it to the leader.
    #[serde(default)]
    pub via: Option<String>,
}

/// `GET /api/v1/chain/{container}`: a reference-chain node as `chain status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChainStatus {
    pub container: String,
    /// The network the node is on (devnet, mainnet).
    pub network: String,
    /// Blocks validated on the best chain.
    pub height: u64,
    /// Headers known (ahead of `height` while syncing).
    pub headers: u64,
    /// The best block's hash.
    pub tip: String,
    pub peers: u64,
    /// Transactions in the mempool and their size in virtual bytes.
    pub mempool_txs: u64,
    pub mempool_bytes: u64,
    /// Hashes per second of its miner (0 when it does not mine).
    pub hashrate: f64,
    pub difficulty: f64,
    /// `height / headers`, 0..1.
    pub sync_progress: f64,
    /// Whether it is still catching up with the headers it knows.
    pub syncing: bool,
    /// `pow` (mined) or `circuit` (sealed by validators on a circuit).
    #[serde(default)]
    pub consensus: String,
    /// On the circuit network: the validators' public keys after the tip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validators: Vec<String>,
    /// On the circuit network: the highest block a majority of its validators attested
    /// (final to this node without trusting any one validator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalized: Option<u64>,
    /// A light node (headers only).
    #[serde(default)]
    pub light: bool,
}

/// `POST /api/v1/chain/{container}/send`: `chain send --to ADDR --amount X`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainSend {
    /// An address of the node's network (bcrt1… on devnet).
    pub to: String,
    /// Coins, as Bitcoin Core's `sendtoaddress` takes them (e.g. 1.5).
    #[schema(exclusive_minimum = 0)]
    pub amount: f64,
    /// Fee rate in sat/vB (Core's `fee_rate`); the wallet's default (2) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub fee_rate: Option<f64>,
}

/// The transaction a send made.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChainSent {
    pub txid: String,
}

/// `GET /api/v1/chain/{container}/wallet`: the node wallet's balance and an address to receive at.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChainWallet {
    pub container: String,
    /// Spendable coins (mature, confirmed).
    pub balance: f64,
    /// A new address of the wallet.
    pub address: String,
}

/// A host's capacity and load, as its heartbeat carries them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostStatus {
    /// Where its libp2p peer listens.
    pub addrs: Vec<String>,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub memory_free_bytes: u64,
    /// The disk of its home.
    pub disk_bytes: u64,
    pub disk_free_bytes: u64,
    pub vms: u32,
    pub vms_running: u32,
    /// The one-minute load average.
    pub load: f64,
    /// `ok`, or `critical: ` and the components that are.
    pub health: String,
}

/// `GET /api/v1/hosts`: a host of the fabric as `host list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    /// Its libp2p peer id.
    pub peer_id: String,
    /// `this host`, `up`, or `unreachable` (no heartbeat for 8 s).
    pub state: String,
    pub joined: chrono::DateTime<chrono::Utc>,
    /// The member that admitted it (itself for the host that founded the fabric).
    pub admitted_by: String,
    /// Seconds since its last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_s: Option<u64>,
    /// What its last heartbeat said (none before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<HostStatus>,
    /// This host's encrypted overlay link to it (none while the overlay has no peer there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayLink>,
}

/// An overlay link to another host, as this host's WireGuard device reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OverlayLink {
    /// Seconds since the last handshake (none: no handshake yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_s_ago: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// `POST /api/v1/hosts/join`: `host join MULTIADDR --token T`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostJoin {
    #[schema(schema_with = crate::schema::peer_addr)]
    pub addr: String,
    /// The fabric's join token (`micro-os host token` on one of its hosts); not blank.
    #[schema(pattern = "\\S")]
    pub token: String,
}

/// `GET /api/v1/hosts/token`: the fabric's join token and where to join this host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostToken {
    pub token: String,
    pub peer_id: String,
    /// Addresses another host gives `host join`.
    pub join: Vec<String>,
}

/// `POST /api/v1/ai/enable`: `ai enable --module M [--container N] [--config FILE]`, or
/// `ai enable --all`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AiEnable {
    /// Absent with `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::ai_module_or_null)]
    pub module: Option<String>,
    /// Every module this build has; the others answer that they are not available.
    #[serde(default)]
    pub all: bool,
    /// The reference-chain node (container id or name) it runs for; absent: every node of
    /// this host, now and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The module's configuration (the JSON of `--config FILE`); its defaults where absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
}

/// `POST /api/v1/ai/disable`: `ai disable --module M [--container N]` or `--all`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AiDisable {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::ai_module_or_null)]
    pub module: Option<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// `POST /api/v1/ai/config`: `ai config --module M [--container N] --set key=value ...`;
/// every assignment is checked against the module's schema before any is applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AiConfigure {
    #[schema(schema_with = crate::schema::ai_module)]
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub set: Vec<String>,
}

/// `POST /api/v1/ai/train`: `ai train --module M [--container N]`, retrain now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AiTrain {
    #[schema(schema_with = crate::schema::ai_module)]
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// One version of a trained model in the model store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AiModelInfo {
    pub module: String,
    /// The container whose data it was trained on.
    pub container: String,
    /// `classifier` (priority classes) or `iforest` (anomalies).
    pub kind: String,
    pub version: u64,
    pub live: bool,
    pub created_at: DateTime<Utc>,
    /// Samples it was trained and tested on.
    pub data_size: u64,
    pub seed: u64,
    /// What is being served: `random_forest`, or the baseline when the forest lost to it.
    pub algorithm: String,
    /// The metric promotion compares.
    pub primary_metric: String,
    /// Scores on held-back data.
    pub metrics: BTreeMap<String, f64>,
    /// The named baseline, trained and scored on the same split.
    pub baseline: String,
    pub baseline_metrics: BTreeMap<String, f64>,
    /// `daemon`, or the `ai-training` container that trained it.
    #[serde(default)]
    pub trainer: String,
}

/// A module as it is set for one container (or `*`, every node of this host).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AiModuleStatus {
    pub module: String,
    pub container: String,
    /// False for a module this build does not have yet.
    pub available: bool,
    pub enabled: bool,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Samples collected to train on.
    pub samples: u64,
    /// The live models.
    pub models: Vec<AiModelInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_training: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_training: Option<DateTime<Utc>>,
    /// What the node reports the module did (queue, batches, reorderings, anomalies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub node: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What `ai train` did: one line per model (promoted, or kept and why) and the versions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct AiTrainReport {
    pub module: String,
    pub container: String,
    pub results: Vec<String>,
    pub models: Vec<AiModelInfo>,
}
