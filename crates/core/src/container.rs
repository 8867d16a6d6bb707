use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{HealthCheck, HealthState, PortMapping, Resources, RestartPolicy, ValidationError};

/// What a container is asked to be: fixed at create time except `config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The process to run; empty means the image's command.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Settings handed to the workload (`container config N --network mainnet`), passed
    /// as `MICRO_OS_CONFIG_<KEY>` variables and as `/run/micro-os/config.json`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The VM (id) the container is placed on: it shares the VM's network namespace and
    /// sits under the VM's cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// The container network as the spec writes it (`{"mode": "overlay", ...}`; read by
    /// [`crate::ContainerNetwork::parse`], which `validate` checks it with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<serde_json::Value>,
    /// A directory in the container on which its own volume is mounted (from the
    /// template's `data`): kept across restarts, removed with the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// A replicated container (`--circuit N --replicate`): the circuit (id) on each of
    /// whose member VMs one replica runs. Such a container runs nothing itself; its state
    /// is the state its replicas are asked to be in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
    /// A replica: the replicated container (id) it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_of: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Exited,
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Exited => "exited",
        })
    }
}

/// The user-visible lifecycle actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Start,
    Stop,
    Pause,
    Resume,
    Remove,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transition::Start => "start",
            Transition::Stop => "stop",
            Transition::Pause => "pause",
            Transition::Resume => "resume",
            Transition::Remove => "remove",
        })
    }
}

/// An invalid lifecycle action: a conflict, not a crash and not a silent no-op.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} {kind} {name:?}: it is {state_name}{hint}")]
pub struct InvalidTransition {
    /// "container" or "vm".
    pub kind: &'static str,
    pub name: String,
    pub action: Transition,
    pub state: ContainerState,
    pub state_name: String,
    pub hint: &'static str,
}

impl ContainerState {
    /// Checks `action` against the state machine:
    /// created -start-> running -pause-> paused -resume-> running; running|paused -stop-> exited;
    /// exited -start-> running; created|exited -remove-> gone (`--force` removes any).
    pub fn check(self, name: &str, action: Transition) -> Result<(), InvalidTransition> {
        use ContainerState::*;
        use Transition::*;
        let hint = match (self, action) {
            (Created | Exited, Start) => return Ok(()),
            (Running | Paused, Stop) => return Ok(()),
            (Running, Pause) => return Ok(()),
            (Paused, Resume) => return Ok(()),
            (Created | Exited, Remove) => return Ok(()),
            (Running | Paused, Remove) => " (stop it first or use --force)",
            (Running, Start) | (Paused, Pause) => "",
            (Running, Resume) => ", not paused",
            (Paused, Start) => " (resume it instead)",
            (_, Resume) => ", not paused (start it first)",
            (_, Stop | Pause) => " (start it first)",
        };
        Err(InvalidTransition {
            kind: "container",
            name: name.to_string(),
            action,
            state: self,
            state_name: self.to_string(),
            hint,
        })
    }
}

/// A container as stored and reported: its spec plus observed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Container {
    pub id: String,
    #[serde(flatten)]
    pub spec: ContainerSpec,
    pub state: ContainerState,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Exit code of the last run; 128+N when killed by signal N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub restart_count: u32,
    /// Host pid of the container's first process while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthState>,
    /// Why the last start failed, or what the runtime reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set by `stop`: the exit that follows is not a failure for the restart policy.
    #[serde(default)]
    pub stop_requested: bool,
    /// Of a replicated container, its replicas as they are now (filled in when it is
    /// read; not stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaView>,
}

/// One replica of a replicated container, as `container inspect` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaView {
    /// The replica's own container name (`<name>.<vm>`), for `container logs` and the like.
    pub name: String,
    pub id: String,
    /// The member VM it runs on.
    pub vm: String,
    pub state: ContainerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::health::HealthStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ContainerSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::validate_name("container", &self.name)?;
        self.resources.validate()?;
        if let Some(h) = &self.health_check {
            h.validate()?;
        }
        if let Some(d) = &self.data {
            check_data_path(d)?;
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') {
                return Err(ValidationError::new(format!("env {k:?} is not a variable name (use KEY=VALUE)")));
            }
        }
        if let Some(n) = &self.network {
            crate::ContainerNetwork::parse(n)?;
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.ports {
            if !seen.insert((p.host, p.protocol)) {
                return Err(ValidationError::new(format!(
                    "port {p} maps host port {} twice (give each host port once)",
                    p.host
                )));
            }
        }
        Ok(())
    }
}

impl Container {
    pub fn new(id: String, spec: ContainerSpec, now: DateTime<Utc>) -> Self {
        Container {
            id,
            spec,
            state: ContainerState::Created,
            created_at: now,
            started_at: None,
            finished_at: None,
            exit_code: None,
            oom_killed: false,
            restart_count: 0,
            pid: None,
            health: None,
            error: None,
            stop_requested: false,
            replicas: Vec::new(),
        }
    }

    /// Whether this is a replicated container (it runs through its replicas).
    pub fn is_replicated(&self) -> bool {
        self.spec.circuit.is_some()
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// A data volume's place in a container: an absolute path, not the root, without `..`.
pub fn check_data_path(p: &str) -> Result<(), ValidationError> {
    let ok = p.starts_with('/') && p.len() > 1 && !p.split('/').any(|c| c == "..") && !p.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(format!("data {p:?} is not an absolute path below / in the container (try /data)")))
    }
}

/// Parses `KEY=VALUE` (the CLI's `--env`).
pub fn parse_env(s: &str) -> Result<(String, String), ValidationError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(ValidationError::new(format!("env {s:?} is not KEY=VALUE (try --env NETWORK=devnet)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerState::*;
    use Transition::*;

    fn check(state: ContainerState, action: Transition, ok: bool) {
        assert_eq!(state.check("c", action).is_ok(), ok, "{state} {action}");
    }

    #[test]
    fn state_machine_table() {
        check(Created, Start, true);
        check(Exited, Start, true);
        check(Running, Start, false);
        check(Running, Pause, true);
        check(Paused, Resume, true);
        check(Exited, Pause, false);
        check(Created, Stop, false);
        check(Paused, Stop, true);
        check(Running, Remove, false);
        check(Exited, Remove, true);
    }

    #[test]
    fn resuming_what_is_not_paused_says_so() {
        let e = Running.check("r1", Resume).unwrap_err().to_string();
        assert_eq!(e, "cannot resume container \"r1\": it is running, not paused");
        let e = Exited.check("r1", Resume).unwrap_err().to_string();
        assert_eq!(e, "cannot resume container \"r1\": it is exited, not paused (start it first)");
    }

    #[test]
    fn conflict_message_says_state() {
        let e = Exited.check("eth-node-1", Pause).unwrap_err().to_string();
        assert_eq!(e, "cannot pause container \"eth-node-1\": it is exited (start it first)");
    }

    #[test]
    fn env_parsing() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("nothing").is_err());
    }

    #[test]
    fn a_host_port_is_published_once_per_protocol() {
        let spec: ContainerSpec =
            serde_json::from_str(r#"{"name":"n","image":"busybox","ports":["9000:9000/udp","9000:80/tcp"]}"#).unwrap();
        spec.validate().unwrap();
        let spec: ContainerSpec =
            serde_json::from_str(r#"{"name":"n","image":"busybox","ports":["9000:9000/udp","9000:53/udp"]}"#).unwrap();
        let e = spec.validate().unwrap_err().to_string();
        assert!(e.contains("maps host port 9000 twice"), "{e}");
        // the spec's network: its ports are checked too
        let spec: ContainerSpec =
            serde_json::from_str(r#"{"name":"n","image":"busybox","network":{"mode":"overlay","ports":{"x":{}}}}"#)
                .unwrap();
        assert!(spec.validate().unwrap_err().to_string().contains("network port \"x\""));
    }

    #[test]
    fn container_json_round_trip() {
        let spec: ContainerSpec = serde_json::from_str(
            r#"{"name":"n","image":"busybox","resources":{"memory":"64M"},"ports":["8080:80/tcp"],"restart":"on-failure:3"}"#,
        )
        .unwrap();
        spec.validate().unwrap();
        let c = Container::new("0123456789abcdef".into(), spec, Utc::now());
        let back: Container = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
