//! The daemon's state and its control surface: the object tables, the drivers, the
//! agents' channels, the host's p2p handle and the collector, and `dispatch`, which turns
//! an API `Action` into a call on them. The lifecycles live in `containers.rs` and
//! `vms.rs`, exits and restarts in `supervisor.rs`.
//!
//! Invariant: a lifecycle action on an object holds that object's op lock, so two
//! actions on one object never interleave; exits observed by the watchers do not take it
//! (a `stop` waits for them while holding it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use micro_os_api::types::{EventInfo, ImageInfo};
use micro_os_api::{Action, Reply};
use micro_os_core::{Container, Driver, Template, Vm};
use micro_os_runtime::cgroup;
use micro_os_runtime::fabric::Fabric;
use micro_os_runtime::image::{Image, ImageStore};
use micro_os_runtime::runc::Runc;
use micro_os_store::Store;
use micro_os_vmm::VmDriver;
use tokio::sync::broadcast;

use super::error::{Error, Result};
use super::table::{OpLocks, Table};
use super::templates;
use crate::home::{Config, Home};

pub struct Engine {
    pub home: Home,
    pub cfg: Config,
    pub store: Arc<Store>,
    pub images: ImageStore,
    pub runc: Runc,
    pub(super) exe: PathBuf,
    pub(super) containers: Table<Container>,
    pub(super) vms: Table<Vm>,
    pub(super) circuits: Table<micro_os_core::Circuit>,
    /// The VM whose member led each circuit when last seen, by circuit id.
    pub(super) leader_hint: Mutex<HashMap<String, String>>,
    pub(super) ops: OpLocks,
    /// The live shim of each container that has one.
    pub(super) shims: Mutex<HashMap<String, u32>>,
    /// Ids of containers and VMs whose state changed.
    pub(super) changes: broadcast::Sender<String>,
    /// What VM drivers share: state dirs, images, runc, the VM bridge, the cgroup version.
    pub(super) host: micro_os_vmm::Host,
    pub(super) drivers: HashMap<Driver, Arc<dyn VmDriver>>,
    /// Senders to the connected agents, by VM id.
    pub(super) agents: Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<micro_os_core::vm::DaemonMessage>>>,
    /// Requests to agents (sends, queries) waiting for the answer with their id.
    pub(super) agent_calls: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<micro_os_core::vm::AgentMessage>>>,
    /// The host's libp2p peer, once started.
    pub p2p: std::sync::OnceLock<crate::p2p::Handle>,
    pub host_peer: std::sync::OnceLock<String>,
    /// The collector's state: the last round of samples, rates, alert rules.
    pub monitor: super::monitor::Monitor,
    /// The hosts of this host's fabric.
    pub hosts: super::hosts::Hosts,
    /// The API's router, which serves the requests members forward here.
    pub api: std::sync::OnceLock<axum::Router>,
    /// Connections the API refused at its caps.
    pub serve_stats: Arc<micro_os_api::serve::ServeStats>,
    /// This host's end of the encrypted overlay between the fabric's hosts.
    pub(super) overlay: super::overlay::Overlay,
    /// The fabric's ingress ports this host listens on.
    pub(super) ingress: super::ingress::Ingress,
    /// The AI layer's memory of the nodes between rounds.
    pub(super) ai: super::ai::AiState,
}

impl super::supervisor::Locks for Engine {
    fn ops(&self) -> &OpLocks {
        &self.ops
    }
}

pub fn image_info(i: Image) -> ImageInfo {
    ImageInfo {
        name: i.name,
        id: i.id,
        created_at: i.created_at,
        size_bytes: i.size_bytes,
        layers: i.layers,
        source: i.source,
        entrypoint: i.config.entrypoint,
        cmd: i.config.cmd,
    }
}

/// Images built from busybox and one binary on first use: the VMs' root (the agent), the
/// reference chain's node, and anvil from npm (the `ethereum-dev` template).
pub(super) const BUILT_IN_IMAGES: &[(&str, &micro_os_runtime::image::Companion)] = &[
    ("blockchain-base", &micro_os_runtime::image::AGENT),
    ("blockchain-node", &micro_os_runtime::image::NODE),
    ("ethereum-dev", &micro_os_runtime::image::ANVIL),
];

impl Engine {
    /// The engine with this build's VM drivers.
    pub fn open(home: Home, cfg: Config) -> Result<Arc<Engine>> {
        Self::open_with(home, cfg, micro_os_vmm::drivers)
    }

    /// The engine with the drivers `drivers` makes (tests give a fake one).
    pub fn open_with(
        home: Home,
        cfg: Config,
        drivers: impl FnOnce(&micro_os_vmm::Host) -> Vec<Arc<dyn VmDriver>>,
    ) -> Result<Arc<Engine>> {
        let store = Arc::new(Store::open(&home.db_path())?);
        let images = ImageStore::new(home.images())?;
        let runc = Runc::new(&cfg.runtime, home.runc_root());
        let exe = std::env::current_exe().map_err(|e| Error::internal(format!("where is this binary: {e}")))?;
        let (changes, _) = broadcast::channel(1024);
        let containers = Table::load(store.clone(), changes.clone())?;
        let vms = Table::load(store.clone(), changes.clone())?;
        let circuits = Table::load(store.clone(), changes.clone())?;
        let host = micro_os_vmm::Host {
            vms_dir: home.root.join("vms"),
            images: images.clone(),
            runc: runc.clone(),
            fabric: Fabric::parse(&cfg.vm_bridge, &cfg.vm_subnet)?,
            cg: cgroup::detect(),
            shim_exe: exe.clone(),
            log_rotation: cfg.log_rotation(),
        };
        let drivers = drivers(&host).into_iter().map(|d| (d.kind(), d)).collect();
        let hosts = super::hosts::Hosts::load(store.clone(), &home.root)?;
        Ok(Arc::new(Engine {
            home,
            cfg,
            store,
            images,
            runc,
            exe,
            containers,
            vms,
            circuits,
            leader_hint: Mutex::new(HashMap::new()),
            ops: OpLocks::default(),
            shims: Mutex::new(HashMap::new()),
            changes,
            host,
            drivers,
            agents: Mutex::new(HashMap::new()),
            agent_calls: Mutex::new(HashMap::new()),
            p2p: std::sync::OnceLock::new(),
            host_peer: std::sync::OnceLock::new(),
            monitor: Default::default(),
            hosts,
            api: std::sync::OnceLock::new(),
            serve_stats: Arc::default(),
            overlay: Default::default(),
            ingress: Default::default(),
            ai: Default::default(),
        }))
    }

    pub fn container_count(&self) -> usize {
        self.containers.len()
    }

    pub(super) fn fabric(&self) -> &Fabric {
        &self.host.fabric
    }

    pub(super) fn cg(&self) -> cgroup::Version {
        self.host.cg
    }

    /// Finds a container by id or name.
    pub fn find(&self, key: &str) -> Result<Container> {
        self.containers.find(key)
    }

    pub fn find_vm(&self, key: &str) -> Result<Vm> {
        self.vms.find(key)
    }

    /// Whether `peer` is the agent of one of this host's VMs.
    pub fn is_vm_peer(&self, peer: &str) -> bool {
        self.vms.any(|v| v.peer_id.as_deref() == Some(peer))
    }

    /// Ids of containers and VMs whose state changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// The state of a container by id, without cloning it.
    pub fn state_of(&self, id: &str) -> Option<micro_os_core::ContainerState> {
        self.containers.read(id, |c| c.state)
    }

    /// A built-in image (`BUILT_IN_IMAGES`: busybox plus a binary of micro-os), built on
    /// first use, and built again when this micro-os's binary is not the one in it (an
    /// upgrade) and nothing uses it; while VMs or containers use it they keep the old
    /// binary, said once in a warning. Other names are left alone.
    pub(super) fn ensure_built_in(&self, name: &str) -> Result<()> {
        let Some((_, c)) = BUILT_IN_IMAGES.iter().find(|(n, _)| *n == name) else { return Ok(()) };
        if self.images.exists(name) {
            let stale = tokio::task::block_in_place(|| self.images.is_stale(name, &self.cfg.busybox, &self.exe, c));
            match stale {
                Ok(false) => return Ok(()),
                Ok(true) if self.vms.any(|v| v.spec.image == name) || self.containers.any(|x| x.spec.image == name) => {
                    static WARNED: std::sync::Once = std::sync::Once::new();
                    WARNED.call_once(|| {
                        tracing::warn!(
                            "image {name} holds an older {}; what uses it runs that until it is removed, then \
                             the image is built again",
                            c.name
                        )
                    });
                    return Ok(());
                }
                Ok(true) => {
                    tracing::info!("image {name} holds an older {}: building it again", c.name);
                    tokio::task::block_in_place(|| self.images.remove(name))?;
                }
                // not a built-in image of ours after all (imported under that name): leave it
                Err(e) => {
                    tracing::debug!("image {name}: {e}");
                    return Ok(());
                }
            }
        }
        tokio::task::block_in_place(|| self.images.build_with(name, &self.cfg.busybox, &self.exe, c, &mut |_| {}))
            .map(drop)
            .or_else(|e| match e {
                micro_os_runtime::Error::ImageExists(_) => Ok(()),
                e => Err(Error::from(e).within(format!("build image {name}"))),
            })
    }

    pub(super) fn templates(&self) -> Vec<Template> {
        let (all, problems) = templates::all(&self.home.templates());
        for p in problems {
            tracing::warn!("{p}");
        }
        all
    }

    pub(super) fn template(&self, name: &str) -> Result<Template> {
        let all = self.templates();
        all.iter().find(|t| t.name == name).cloned().ok_or_else(|| {
            let names: Vec<_> = all.iter().map(|t| t.name.as_str()).collect();
            Error::not_found(format!(
                "template {name:?} not found (available: {}; add your own as JSON in {})",
                names.join(", "),
                self.home.templates().display()
            ))
        })
    }

    pub async fn dispatch(self: &Arc<Self>, action: Action) -> Result<Reply> {
        let one = |c: Container| Reply::Container(Box::new(c));
        let vm = |v: Vm| Reply::Vm(Box::new(v));
        match action {
            Action::CreateContainer { req, start, rm } => self.create(*req, start, rm).await.map(one),
            Action::Deploy(req) => self.deploy(req).await.map(Reply::Containers),
            Action::ListContainers => {
                Ok(Reply::Containers(self.containers.list().into_iter().map(|c| self.shown(c)).collect()))
            }
            Action::GetContainer(k) => self.find(&k).map(|c| one(self.shown(c))),
            Action::RemoveContainer { id, force } => self.remove(&id, force).await.map(|_| Reply::Done),
            Action::StartContainer(k) => self.start(&k).await.map(one),
            Action::StopContainer { id, timeout } => self.stop(&id, timeout).await.map(one),
            Action::PauseContainer(k) => self.pause(&k, true).await.map(one),
            Action::ResumeContainer(k) => self.pause(&k, false).await.map(one),
            Action::ConfigureContainer { id, set } => self.configure(&id, set).await.map(one),
            Action::WaitContainer { id, rm } => self.wait(&id, rm).await.map(Reply::Exit),
            Action::ExecContainer { id, req } => self.exec(&id, req).await.map(Reply::Exec),
            Action::ContainerEvents(k) => {
                let c = self.find(&k)?;
                let events = tokio::task::block_in_place(|| self.store.events(Some(&c.id), 100))?;
                Ok(Reply::Events(
                    events
                        .into_iter()
                        .map(|e| EventInfo { seq: e.seq, at: e.at, action: e.action, detail: e.detail })
                        .collect(),
                ))
            }
            Action::CreateVms(reqs) => self.create_vms(reqs).await.map(Reply::Vms),
            Action::ListVms => Ok(Reply::Vms(self.vms.list())),
            Action::GetVm(k) => self.find_vm(&k).map(vm),
            Action::RemoveVm { id, force } => self.remove_vm(&id, force).await.map(|_| Reply::Done),
            Action::StartVm(k) => self.start_vm(&k).await.map(vm),
            Action::StopVm { id, force, timeout } => self.stop_vm(&id, force, timeout).await.map(vm),
            Action::PauseVm(k) => self.pause_vm(&k, true).await.map(vm),
            Action::ResumeVm(k) => self.pause_vm(&k, false).await.map(vm),
            Action::NetStatus { vm: None } => {
                let st = self.host_p2p()?.status().await.ok_or_else(|| Error::internal("the p2p layer is down"))?;
                Ok(Reply::Net(Box::new(st)))
            }
            Action::NetStatus { vm: Some(name) } => {
                let vm = self.find_vm(&name)?;
                let v = self.query_vm(&vm, micro_os_core::vm::Query::Status).await?;
                let st = serde_json::from_value(v).map_err(|e| Error::internal(format!("vm status: {e}")))?;
                Ok(Reply::Net(Box::new(st)))
            }
            Action::NetFind { key, vm } => self.net_find(key, vm).await.map(Reply::Providers),
            Action::NetSend(req) => self.net_send(req, None).await.map(|r| Reply::Sent(Box::new(r))),
            Action::Resources(q) => self.resources(&q).map(Reply::Samples),
            Action::History(q) => self.history(&q).map(Reply::Samples),
            Action::Export(q) => {
                let rows = self.history(&q)?;
                match q.format.as_deref().unwrap_or("csv") {
                    "json" => Ok(Reply::Samples(rows)),
                    _ => Ok(Reply::Text(micro_os_monitor::export::csv(&rows))),
                }
            }
            Action::Health(q) => {
                let components = self.health().await;
                self.health_report(&q, components).map(|r| Reply::Health(Box::new(r)))
            }
            Action::Performance(q) => self.performance(&q).map(|r| Reply::Performance(Box::new(r))),
            Action::Metrics => Ok(Reply::Text(self.metrics().await)),
            Action::ListImages => Ok(Reply::Images(self.images.list()?.into_iter().map(image_info).collect())),
            Action::RemoveImage(name) => {
                self.images.get(&name)?;
                let users: Vec<String> =
                    self.containers.filter(|c| c.spec.image == name).into_iter().map(|c| c.spec.name).collect();
                if !users.is_empty() {
                    return Err(Error::conflict(format!(
                        "image {name:?} is used by containers {} (remove them first)",
                        users.join(", ")
                    )));
                }
                self.images.remove(&name)?;
                Ok(Reply::Done)
            }
            Action::ListTemplates => Ok(Reply::Templates(self.templates())),
            Action::GetTemplate(name) => self.template(&name).map(|t| Reply::Template(Box::new(t))),
            Action::CreateCircuit(req) => self.create_circuit(req).await.map(|c| Reply::Circuit(Box::new(c))),
            Action::ListCircuits => Ok(Reply::Circuits(self.list_circuits().await)),
            Action::GetCircuit(k) => self.view_circuit(&k).await.map(|c| Reply::Circuit(Box::new(c))),
            Action::RemoveCircuit(k) => self.remove_circuit(&k).await.map(|_| Reply::Done),
            Action::AddCircuitNode { id, vm } => {
                self.add_circuit_node(&id, &vm).await.map(|c| Reply::Circuit(Box::new(c)))
            }
            Action::RemoveCircuitNode { id, vm } => {
                self.remove_circuit_node(&id, &vm).await.map(|c| Reply::Circuit(Box::new(c)))
            }
            Action::TransferLeader { id, vm } => {
                self.transfer_leader(&id, &vm).await.map(|c| Reply::Circuit(Box::new(c)))
            }
            Action::CircuitWrite { id, via, op } => {
                self.circuit_write(&id, via.as_deref(), op).await.map(Reply::Written)
            }
            Action::CircuitRead { id, key, stale, via } => {
                self.circuit_read(&id, key, stale, via.as_deref()).await.map(Reply::Read)
            }
            Action::ListHosts => self.host_list().await.map(Reply::Hosts),
            Action::HostToken => self.host_token().await.map(Reply::HostToken),
            Action::JoinHost(req) => self.host_join(&req.addr, &req.token).await.map(Reply::Hosts),
            Action::LeaveHost => self.host_leave().await.map(|_| Reply::Done),
            Action::ChainStatus(k) => self.chain_status(&k).await.map(|s| Reply::ChainStatus(Box::new(s))),
            Action::ChainSend { container, req } => self.chain_send(&container, req).await.map(Reply::ChainSent),
            Action::ChainWallet(k) => self.chain_wallet(&k).await.map(Reply::ChainWallet),
            Action::AiList => self.ai_list().map(Reply::AiModules),
            Action::AiEnable(r) => self.ai_enable(r).await.map(Reply::AiModules),
            Action::AiDisable(r) => self.ai_disable(r).await.map(Reply::AiModules),
            Action::AiConfigure(r) => self.ai_configure(r).await.map(Reply::AiModules),
            Action::AiTrain(r) => self.ai_train(r).await.map(Reply::AiTrained),
            Action::AiModels => tokio::task::block_in_place(|| self.ai_models()).map(Reply::AiModels),
        }
    }

    pub(super) fn host_p2p(&self) -> Result<&crate::p2p::Handle> {
        self.p2p.get().ok_or_else(|| Error::internal("the p2p layer is not running"))
    }

    async fn net_find(&self, key: String, vm: Option<String>) -> Result<Vec<micro_os_api::types::Provider>> {
        if key.trim().is_empty() {
            return Err(Error::invalid("key is empty (try container/<name> or vm/<name>)"));
        }
        let mut found: Vec<micro_os_api::types::Provider> = match vm {
            None => self.host_p2p()?.find(key).await.map_err(|e| Error::Internal(e.to_string()))?,
            Some(name) => {
                let vm = self.find_vm(&name)?;
                let v = self.query_vm(&vm, micro_os_core::vm::Query::Find { key }).await?;
                serde_json::from_value(v).map_err(|e| Error::internal(format!("vm answer: {e}")))?
            }
        };
        let vms = self.vms.list();
        for p in &mut found {
            p.vm = vms.iter().find(|v| v.peer_id.as_deref() == Some(&p.peer_id)).map(|v| v.spec.name.clone());
        }
        Ok(found)
    }

    /// `net send`: messages or a DATA stream, from the host or from one of its VMs; `file`
    /// is an upload the daemon spooled (never a path a client named), sent as the stream.
    pub(super) async fn net_send(
        &self,
        req: micro_os_api::types::NetSend,
        file: Option<std::path::PathBuf>,
    ) -> Result<micro_os_core::net::SendReport> {
        let kind: micro_os_net::MessageType =
            serde_json::from_value(serde_json::Value::String(req.kind.to_uppercase())).map_err(|_| {
                Error::invalid(format!("message type {:?} is unknown (use SYNC, DISC, DATA, CTRL or PING)", req.kind))
            })?;
        let stream = req.stream || file.is_some();
        if stream && kind != micro_os_net::MessageType::Data {
            return Err(Error::invalid(format!("only DATA travels as a stream, not {kind}")));
        }
        if !stream && req.size.is_some_and(|s| s > 512 * 1024) {
            return Err(Error::invalid(format!(
                "size {} is over 512 KiB (send larger DATA as a stream: --stream)",
                req.size.unwrap_or(0)
            )));
        }
        if req.to == "*" {
            if req.from.is_some() || stream || req.count.is_some_and(|c| c > 1) {
                return Err(Error::invalid(
                    "broadcasts are one message from the host (leave out --from, --count, --file)",
                ));
            }
            let started = std::time::Instant::now();
            self.host_p2p()?
                .broadcast(kind, req.state)
                .await
                .map_err(|e| Error::conflict(format!("broadcast: {e}")))?;
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            return Ok(micro_os_core::net::SendReport { accepted: true, sent: 1, elapsed_ms, ..Default::default() });
        }
        let to = match req.to.parse::<libp2p::PeerId>() {
            Ok(p) => p,
            Err(_) => {
                let vm = self.find_vm(&req.to)?;
                let peer = vm
                    .peer_id
                    .ok_or_else(|| Error::conflict(format!("vm {:?} has no peer id yet (start it)", vm.spec.name)))?;
                peer.parse().map_err(|_| Error::internal(format!("vm peer id {peer:?} is malformed")))?
            }
        };
        let job = micro_os_core::net::SendJob {
            to: to.to_string(),
            kind: kind.to_string(),
            state: req.state,
            count: req.count.unwrap_or(1).clamp(1, 100_000),
            size: req.size,
            file: file.map(|f| f.display().to_string()),
            stream,
        };
        match &req.from {
            Some(from) => {
                let vm = self.find_vm(from)?;
                self.send_from_vm(&vm, job).await
            }
            None => Ok(self.host_p2p()?.run(job).await),
        }
    }
}
