//! Containers: create (from an image or a template, alone or as a deploy file), start
//! under a shim, stop, pause, remove, configure, wait, re-adopt after a daemon restart.
//! A container placed on a VM joins the VM's network namespace and nests its cgroup
//! under the VM's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use micro_os_api::types::{Condition, ContainerCreate, Dependency, DeployRequest, WaitResponse};
use micro_os_core::{Container, ContainerSpec, ContainerState, HealthState, HealthStatus, Template, Transition};
use micro_os_runtime::image::Image;
use micro_os_runtime::workload::{self, Exit, Running, Workload};
use micro_os_runtime::{cgroup, shim};
use micro_os_store::Durability;

use super::engine::Engine;
use super::error::{Error, Result};
use super::supervisor::{self, BoxFuture, Kind};
use super::table::Table;

impl Kind<Container> for Engine {
    fn table(&self) -> &Table<Container> {
        &self.containers
    }
    fn relaunch<'a>(self: &'a Arc<Self>, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.launch(id, "restarted").await.map(drop) })
    }
}

impl Engine {
    pub(super) fn state_dir(&self, id: &str) -> std::path::PathBuf {
        self.home.containers().join(id)
    }

    /// Turns a create request into a validated spec, without side effects.
    fn resolve(&self, req: ContainerCreate) -> Result<ContainerSpec> {
        micro_os_core::validate_name("container", &req.name).map_err(|e| Error::invalid(e.to_string()))?;
        match (&req.circuit, req.replicate, &req.vm) {
            (Some(_), false, _) => {
                return Err(Error::invalid(
                    "--circuit needs --replicate (one replica runs on each member; to place a container on one VM use --vm)",
                ))
            }
            (None, true, _) => return Err(Error::invalid("--replicate needs --circuit N (the circuit whose members run it)")),
            (Some(_), true, Some(_)) => {
                return Err(Error::invalid("give --vm or --circuit, not both (a replicated container runs on every member)"))
            }
            (Some(_), true, None) if req.ports.as_ref().is_some_and(|p| !p.is_empty()) => {
                return Err(Error::invalid(
                    "a replicated container cannot publish host ports (each replica is reached at its VM's address)",
                ))
            }
            _ => {}
        }
        let vm = req.vm.as_deref().map(|v| self.find_vm(v)).transpose()?;
        if let Some(vm) = &vm {
            if !self.driver(vm.spec.driver)?.capabilities().containers {
                return Err(Error::invalid(format!(
                    "vm {:?} is a {} guest: containers can be placed on sandbox VMs only for now",
                    vm.spec.name, vm.spec.driver
                )));
            }
        }
        let template = req.template.as_deref().map(|t| self.template(t)).transpose()?;
        let image = match (&req.image, &template) {
            (Some(i), _) => i.clone(),
            (None, Some(t)) => t.image.clone(),
            (None, None) => return Err(Error::invalid("give an image or a template (--image I or --template T)")),
        };
        self.ensure_built_in(&image)?;
        if !self.images.exists(&image) {
            return Err(Error::not_found(format!(
                "image {image:?} not found (see `micro-os image ls`; import one with `micro-os image import FILE`)"
            )));
        }
        let base = template.unwrap_or_else(|| Template { image: image.clone(), ..Template::default() });
        let asked_cpu = req.resources.as_ref().and_then(|r| r.cpu);
        let mut resources = req.resources.unwrap_or_default().or(&base.effective_resources());
        // a container's CPU quota cannot exceed its VM's (the kernel refuses a child cgroup's
        // larger cfs quota): a template's default is fitted to the VM, an explicit ask is refused
        if let (Some(vm), Some(cpu)) = (&vm, resources.cpu) {
            if cpu > vm.spec.cpus {
                if let Some(asked) = asked_cpu {
                    return Err(Error::invalid(format!(
                        "cpu {asked} is more than vm {:?} has ({}): give --limits cpu={} or less, or a larger VM",
                        vm.spec.name, vm.spec.cpus, vm.spec.cpus
                    )));
                }
                resources.cpu = Some(vm.spec.cpus);
            }
        }
        let mut env = base.env.clone();
        env.extend(req.env);
        // replicas are reached at their VMs' addresses: a template's host ports stay unpublished
        let ports = if req.circuit.is_some() { Vec::new() } else { req.ports.unwrap_or_else(|| base.ports.clone()) };
        let mut spec = ContainerSpec {
            name: req.name,
            image,
            template: req.template,
            command: req.command.unwrap_or_else(|| base.command.clone()),
            env,
            resources,
            ports,
            restart: req.restart.unwrap_or(base.restart),
            health_check: req.health_check.or(base.health_check.clone()),
            config: {
                let mut config = base.config.clone();
                config.extend(req.config);
                config
            },
            vm: vm.map(|v| v.id),
            network: req.network,
            data: base.data.clone(),
            circuit: None,
            replica_of: None,
        };
        spec.validate().map_err(|e| Error::invalid(e.to_string()))?;
        self.network_ports(&mut spec, req.circuit.is_some())?;
        self.check_settings(spec.template.as_deref(), spec.config.keys())?;
        if spec.image == CHAIN_NODE_IMAGE {
            for (k, v) in &spec.config {
                check_node_setting(k, v)?;
            }
            check_node_kind(&spec.command, &spec.config)?;
        }
        if let Some(circuit) = &req.circuit {
            self.resolve_replicated(&mut spec, circuit)?;
        }
        Ok(spec)
    }

    fn insert(&self, spec: ContainerSpec, durability: Durability) -> Result<Container> {
        let c = Container::new(micro_os_core::id::new_id(), spec, Utc::now());
        self.containers.insert_with(c.clone(), format!("image {}", c.spec.image), durability)?;
        Ok(c)
    }

    /// Creates a container; with `start` starts it too (`container run`: one request, one
    /// fsync less), and with `rm` as well removes it again if it cannot start.
    pub async fn create(self: &Arc<Self>, req: ContainerCreate, start: bool, rm: bool) -> Result<Container> {
        if !req.depends_on.is_empty() {
            return Err(Error::invalid(format!(
                "container {:?}: depends_on orders the containers of a deploy file (container deploy --from-file)",
                req.name
            )));
        }
        let spec = self.resolve(req)?;
        self.containers.check_name_free(&spec.name)?;
        if spec.circuit.is_some() {
            return self.create_replicated(spec, start).await;
        }
        // Alone, the creation is the acknowledged change and is fsynced. Followed by a
        // start, it need only be committed before the shim runs (a daemon killed after
        // that finds the record); the start's synced "started" (or "start-failed") write
        // makes both durable before the reply.
        let c = self.insert(spec, if start { Durability::Committed } else { Durability::Synced })?;
        if let Some(vm) = &c.spec.vm {
            self.advertise(vm);
        }
        if !start {
            return Ok(c);
        }
        match self.start(&c.id).await {
            Ok(c) => Ok(c),
            Err(e) => {
                if rm {
                    if let Err(r) = self.remove(&c.id, true).await {
                        tracing::warn!("remove container {} after its failed start: {r}", c.spec.name);
                    }
                } else {
                    // kept with its error: as durable as a separate create would be
                    self.containers.sync()?;
                }
                Err(e)
            }
        }
    }

    /// All or nothing: every entry is resolved and checked before any is created.
    /// Checks a deploy file whole, creates its containers, then starts them in dependency
    /// order, each once its dependencies' conditions hold (Compose's `up`). A dependency
    /// that cannot get there stops the deploy: what was created stays, and the error says
    /// what started and what did not.
    pub async fn deploy(self: &Arc<Self>, req: DeployRequest) -> Result<Vec<Container>> {
        if req.containers.is_empty() {
            return Err(Error::invalid("deploy file lists no containers (give {\"containers\": [...]})"));
        }
        let mut specs = Vec::new();
        let mut deps = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, mut r) in req.containers.into_iter().enumerate() {
            let name = r.name.clone();
            if r.circuit.is_some() {
                return Err(Error::invalid(format!(
                    "containers[{i}] ({name:?}): a replicated container cannot come from a deploy file yet (use container create --circuit N --replicate)"
                )));
            }
            deps.push(std::mem::take(&mut r.depends_on));
            let spec = self.resolve(r).map_err(|e| e.within(format!("containers[{i}] ({name:?})")))?;
            if !names.insert(spec.name.clone()) {
                return Err(Error::invalid(format!("containers[{i}]: name {:?} appears twice in the file", spec.name)));
            }
            self.containers.check_name_free(&spec.name)?;
            specs.push(spec);
        }
        let order = start_order(&specs, &deps)?;
        let mut created = Vec::new();
        for s in specs {
            created.push(self.insert(s, Durability::Synced)?);
        }
        let vms: std::collections::BTreeSet<&String> = created.iter().filter_map(|c| c.spec.vm.as_ref()).collect();
        for vm in vms {
            self.advertise(vm);
        }
        let mut started: Vec<String> = Vec::new();
        for i in order {
            let c = &created[i];
            for d in &deps[i] {
                let dep = created.iter().find(|x| x.spec.name == d.name).expect("checked in start_order");
                if let Err(why) = self.dependency_holds(dep, d.condition).await {
                    let not_started: Vec<&str> = created
                        .iter()
                        .map(|x| x.spec.name.as_str())
                        .filter(|n| !started.iter().any(|s| s == n))
                        .collect();
                    return Err(Error::conflict(format!(
                        "deploy stopped: {:?} waits for {:?} to be {}, but {why} (started: {}; created, not started: {})",
                        c.spec.name,
                        d.name,
                        d.condition,
                        if started.is_empty() { "none".to_string() } else { started.join(", ") },
                        not_started.join(", ")
                    )));
                }
            }
            self.start_one(&c.id).await.map_err(|e| e.within(format!("deploy: starting {:?}", c.spec.name)))?;
            started.push(c.spec.name.clone());
        }
        created.iter().map(|c| self.find(&c.id).map(|c| self.shown(c))).collect()
    }

    /// Waits until container `c` meets `cond`; why it never will, if so.
    async fn dependency_holds(&self, c: &Container, cond: Condition) -> std::result::Result<(), String> {
        /// How long a dependency may take to get there.
        const WAIT: Duration = Duration::from_secs(300);
        let exited = |x: &Container| x.state == ContainerState::Exited;
        let done = |x: &Container| match cond {
            Condition::Started => x.state == ContainerState::Running || x.started_at.is_some(),
            Condition::Healthy => x.health.as_ref().is_some_and(|h| h.status == HealthStatus::Healthy),
            Condition::Completed => exited(x) && x.exit_code == Some(0),
        };
        let Some(x) = self.containers.wait_until(&c.id, |x| done(x) || exited(x), WAIT).await else {
            return Err(format!("it did not get there in {} s", WAIT.as_secs()));
        };
        if done(&x) {
            return Ok(());
        }
        Err(format!("it exited with code {} first", x.exit_code.map_or("-".to_string(), |c| c.to_string())))
    }

    pub async fn start(self: &Arc<Self>, key: &str) -> Result<Container> {
        if self.find(key)?.is_replicated() {
            return self.start_replicated(key).await;
        }
        self.start_one(key).await
    }

    /// Starts one container that runs by itself, or a replica.
    pub(super) async fn start_one(self: &Arc<Self>, key: &str) -> Result<Container> {
        let (c, _g) = supervisor::begin(&self.containers, &self.ops, key, Transition::Start).await?;
        if let Some(vm_id) = &c.spec.vm {
            let vm = self.find_vm(vm_id)?;
            if vm.state != micro_os_core::VmState::Running {
                return Err(Error::conflict(format!(
                    "cannot start container {:?}: its vm {:?} is {} (start the vm first)",
                    c.spec.name, vm.spec.name, vm.state
                )));
            }
        }
        self.launch(&c.id, "started").await
    }

    /// Prepares the bundle, spawns the shim and records the outcome. Caller holds the op lock.
    async fn launch(self: &Arc<Self>, id: &str, action: &str) -> Result<Container> {
        // the previous run's shim may still be unmounting; it must be gone first
        self.shim_gone(id).await;
        let c = self.find(id)?;
        let image = self.images.get(&c.spec.image)?;
        let this = self.clone();
        let cc = c.clone();
        let spawned = tokio::task::spawn_blocking(move || this.spawn_shim(&cc, &image))
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
        match spawned {
            Ok(run) => {
                let now = Utc::now();
                self.containers.update(id, |c| mark_running(c, run.pid, now));
                // synced: the reply says the container runs, and after a power cut
                // `recover` restarts it by its policy only if the store says it ran; then
                // watched, whatever the write did, so an exit is never missed (the shim
                // keeps it in status.json) and its event comes after this one: a watcher
                // started first recorded a quick exit before the start
                let persisted = self.containers.persist(id, action, format!("pid {}", run.pid));
                self.supervise(id, run);
                persisted?;
                self.find(id)
            }
            Err(e) => {
                let msg = e.to_string();
                self.containers.update(id, |c| c.error = Some(msg.clone()));
                // synced: the reply reports the failure of a container that stays
                self.containers.persist(id, "start-failed", msg)?;
                Err(e.within(format!("start container {:?}", c.spec.name)))
            }
        }
    }

    /// A template that lists its workload's settings takes no others: `--network` of a node
    /// that has no networks is an error, not a variable nobody reads.
    fn check_settings<'a>(&self, template: Option<&str>, keys: impl Iterator<Item = &'a String>) -> Result<()> {
        let Some(t) = template.and_then(|t| self.template(t).ok()) else { return Ok(()) };
        let Some(known) = &t.settings else { return Ok(()) };
        for k in keys {
            if !known.contains(k) {
                return Err(Error::invalid(format!(
                    "template {}'s workload has no setting {k:?} (its settings: {})",
                    t.name,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
        }
        Ok(())
    }

    /// A replica of a container replicated on a circuit reaches the circuit's member on its
    /// VM through the agent's local endpoint: which circuit, where, and the VM's token.
    fn circuit_env(&self, c: &Container) -> Vec<String> {
        let (Some(parent), Some(vm)) = (&c.spec.replica_of, &c.spec.vm) else { return Vec::new() };
        let Some(circuit) = self.containers.read(parent, |p| p.spec.circuit.clone()).flatten() else {
            return Vec::new();
        };
        let Some(token) = self.circuit_token(vm) else {
            tracing::warn!(
                "container {}: VM {vm} has no circuit token; the replica cannot reach its circuit",
                c.spec.name
            );
            return Vec::new();
        };
        vec![
            format!("MICRO_OS_CIRCUIT={circuit}"),
            format!("MICRO_OS_CIRCUIT_ENDPOINT=127.0.0.1:{}", micro_os_core::vm::AGENT_CIRCUIT_PORT),
            format!("MICRO_OS_CIRCUIT_TOKEN={token}"),
        ]
    }

    fn spawn_shim(&self, c: &Container, image: &Image) -> Result<Running> {
        let dir = self.state_dir(&c.id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("create {}: {e}", dir.display())))?;
        let mut args = image.config.entrypoint.clone();
        if c.spec.command.is_empty() {
            args.extend(image.config.cmd.iter().cloned());
        } else {
            args.extend(c.spec.command.iter().cloned());
        }
        if args.is_empty() {
            return Err(Error::invalid(format!("image {:?} has no command; give one after --", image.name)));
        }
        let mut env = vec![format!("HOSTNAME={}", c.spec.name), format!("MICRO_OS_CONTAINER={}", c.spec.name)];
        for (k, v) in &c.spec.config {
            env.push(format!("MICRO_OS_CONFIG_{}={v}", k.to_ascii_uppercase().replace('-', "_")));
        }
        if c.spec.image == CHAIN_NODE_IMAGE && !c.spec.config.contains_key("connect") {
            // the other nodes of its network on VMs, to dial first (the DHT finds the rest)
            let seeds = self.chain_seeds(c);
            if !seeds.is_empty() {
                env.push(format!("MICRO_OS_CONFIG_CONNECT={}", seeds.join(",")));
            }
        }
        env.extend(self.circuit_env(c));
        for (k, v) in &c.spec.env {
            env.push(format!("{k}={v}"));
        }
        let config_file = dir.join("workload-config.json");
        std::fs::write(&config_file, serde_json::to_vec_pretty(&c.spec.config).unwrap_or_default())
            .map_err(|e| Error::internal(format!("write {}: {e}", config_file.display())))?;
        let mut binds = vec![(config_file, "/run/micro-os/config.json".to_string(), true)];
        if let Some(data) = &c.spec.data {
            let volume = dir.join("data");
            std::fs::create_dir_all(&volume)
                .map_err(|e| Error::internal(format!("create {}: {e}", volume.display())))?;
            binds.push((volume, data.clone(), false));
        }
        if c.spec.vm.is_some() {
            // the VM bridge's resolver answers the fabric's container names (dns.rs)
            let network = super::dns::network_of(&c.spec);
            let resolv = dir.join("resolv.conf");
            std::fs::write(&resolv, super::dns::resolv_conf(self.fabric().gateway(), &network))
                .map_err(|e| Error::internal(format!("write {}: {e}", resolv.display())))?;
            binds.push((resolv, "/etc/resolv.conf".to_string(), true));
        }
        // on a VM: the VM's network namespace and a cgroup below the VM's
        let (netns, own_netns, cgroups_path) = match &c.spec.vm {
            Some(vm_id) => (self.host.netns_path(vm_id), false, cgroup::placed_path(Some(vm_id), &c.id)),
            None => (dir.join("netns"), true, cgroup::placed_path(None, &c.id)),
        };
        let w = Workload {
            id: c.id.clone(),
            dir,
            hostname: c.spec.name.clone(),
            image: image.clone(),
            args,
            env,
            resources: c.spec.resources.clone(),
            cgroups_path,
            netns,
            own_netns,
            binds,
            ports: c.spec.ports.clone(),
            log_name: "container.log",
            log_rotation: self.cfg.log_rotation(),
        };
        Ok(workload::launch(&self.runc, &self.images, &self.exe, w)?)
    }

    /// The ports of the spec's container network: `host` ones become published ports of
    /// the container (its shim's, on this host), `ingress` ones are the fabric's
    /// (`ingress.rs`) and need the container on a VM, whose address every host forwards to.
    fn network_ports(&self, spec: &mut ContainerSpec, replicated: bool) -> Result<()> {
        let Some(net) = spec.network.as_ref() else { return Ok(()) };
        let net = micro_os_core::ContainerNetwork::parse(net).map_err(|e| Error::invalid(e.to_string()))?;
        for (port, protocol, mode) in net.published() {
            match mode {
                micro_os_core::PublishMode::Ingress if spec.vm.is_none() && !replicated => {
                    return Err(Error::invalid(format!(
                        "network port {port} in ingress mode: the container must run on a VM (give --vm), whose address the hosts forward to"
                    )));
                }
                micro_os_core::PublishMode::Ingress => {}
                micro_os_core::PublishMode::Host if replicated => {
                    return Err(Error::invalid(format!(
                        "network port {port} in host mode: a replicated container cannot publish host ports (use ingress mode)"
                    )));
                }
                micro_os_core::PublishMode::Host => {
                    let mapping = micro_os_core::PortMapping { host: port, container: port, protocol };
                    if !spec.ports.contains(&mapping) {
                        spec.ports.push(mapping);
                    }
                }
            }
        }
        spec.validate().map_err(|e| Error::invalid(e.to_string()))
    }

    /// Watches the container until it exits and records the exit as soon as the shim
    /// has written it; then waits for the shim's cleanup to end. Runs health checks meanwhile.
    fn supervise(self: &Arc<Self>, id: &str, run: Running) {
        self.shims.lock().unwrap().insert(id.to_string(), run.shim_pid);
        let dir = self.state_dir(id);
        let (this, id2) = (self.clone(), id.to_string());
        let exit = Box::pin(async move {
            let status = workload::exit_of(&dir, run).await;
            // forget the shim once its cleanup is done, so a start waits for no one
            tokio::spawn(async move {
                workload::shim_done(run.shim_pid).await;
                let mut shims = this.shims.lock().unwrap();
                if shims.get(&id2) == Some(&run.shim_pid) {
                    shims.remove(&id2);
                }
            });
            Exit::from_status(status, "container")
        });
        supervisor::watch::<Container, _>(self, id, run.pid, exit);
        if let Some(h) = self.find(id).ok().and_then(|c| c.spec.health_check) {
            tokio::spawn(super::health::run(self.clone(), id.to_string(), run.pid, h));
        }
    }

    /// Resolves once the container's last shim has finished its cleanup.
    pub(super) async fn shim_gone(&self, id: &str) {
        let pid = self.shims.lock().unwrap().get(id).copied();
        if let Some(pid) = pid {
            micro_os_runtime::pidwait::exited(pid).await;
        }
    }

    pub async fn stop(self: &Arc<Self>, key: &str, timeout: Option<f64>) -> Result<Container> {
        if self.find(key)?.is_replicated() {
            return self.stop_replicated(key, timeout).await;
        }
        self.stop_one(key, timeout).await
    }

    /// Stops one container that runs by itself, or a replica.
    pub(super) async fn stop_one(&self, key: &str, timeout: Option<f64>) -> Result<Container> {
        if let Some(c) = supervisor::cancel_restart(&self.containers, &self.ops, key).await? {
            return Ok(c);
        }
        let (c, _g) = supervisor::begin(&self.containers, &self.ops, key, Transition::Stop).await?;
        self.stop_locked(&c, timeout.unwrap_or(self.cfg.stop_timeout_s)).await?;
        // the reply reports the exit, which the supervisor only recorded
        self.containers.sync()?;
        self.find(&c.id)
    }

    pub(super) async fn stop_locked(&self, c: &Container, timeout: f64) -> Result<()> {
        check_timeout(timeout)?;
        let id = c.id.clone();
        self.containers.update(&id, |c| c.stop_requested = true);
        self.containers.persist(&id, "stopping", format!("timeout {timeout}s"))?;
        let runc = self.runc.clone();
        let paused = c.state == ContainerState::Paused;
        let id2 = id.clone();
        let first = tokio::task::spawn_blocking(move || {
            if paused {
                runc.resume(&id2)?;
            }
            runc.kill(&id2, "TERM")
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
        if let Err(e) = first {
            tracing::debug!("stop {}: {e}", c.spec.name);
        }
        let exited = |c: &Container| c.state == ContainerState::Exited;
        if self.containers.wait_until(&id, exited, Duration::from_secs_f64(timeout)).await.is_some() {
            return Ok(());
        }
        let runc = self.runc.clone();
        let id2 = id.clone();
        let _ = tokio::task::spawn_blocking(move || runc.kill(&id2, "KILL")).await;
        if self.containers.wait_until(&id, exited, Duration::from_secs(15)).await.is_none() {
            return Err(Error::internal(format!("container {:?} did not exit after SIGKILL", c.spec.name)));
        }
        Ok(())
    }

    pub async fn pause(self: &Arc<Self>, key: &str, pause: bool) -> Result<Container> {
        if self.find(key)?.is_replicated() {
            return self.pause_replicated(key, pause).await;
        }
        self.pause_one(key, pause).await
    }

    /// Runs a command in running container `key` (`container exec`).
    pub async fn exec(
        &self,
        key: &str,
        req: micro_os_api::types::ExecRequest,
    ) -> Result<micro_os_api::types::ExecResult> {
        /// Each of stdout and stderr, at most.
        const LIMIT: usize = 4 << 20;
        let c = self.find(key)?;
        if c.is_replicated() {
            let mut names: Vec<String> = self.replicas_of(&c.id).into_iter().map(|r| r.spec.name).collect();
            names.sort();
            return Err(Error::invalid(format!(
                "container {:?} is replicated: run the command in one replica ({})",
                c.spec.name,
                names.join(", ")
            )));
        }
        if c.state != ContainerState::Running {
            return Err(Error::conflict(format!(
                "cannot exec in container {:?}: it is {} (start it first)",
                c.spec.name, c.state
            )));
        }
        let runc = self.runc.clone();
        let id = c.id.clone();
        let env: Vec<(String, String)> = req.env.into_iter().collect();
        let timeout = Duration::from_secs_f64(req.timeout_s.unwrap_or(60.0));
        let out = tokio::task::spawn_blocking(move || runc.exec_output(&id, &req.command, &env, timeout, LIMIT))
            .await
            .map_err(|e| Error::internal(e.to_string()))??;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // runc reports a program it could not start with its own exit code (255): give the
        // shell's 127 (not found) and 126 (not runnable), as docker exec does
        let mut code = out.code;
        if code == 255 && stderr.contains("exec failed") {
            let m = stderr.to_ascii_lowercase();
            code = if m.contains("not found") || m.contains("no such file") { 127 } else { 126 };
        }
        Ok(micro_os_api::types::ExecResult {
            exit_code: code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
            truncated: out.truncated,
        })
    }

    /// Pauses or resumes one container that runs by itself, or a replica.
    pub(super) async fn pause_one(&self, key: &str, pause: bool) -> Result<Container> {
        let action = if pause { Transition::Pause } else { Transition::Resume };
        let (c, _g) = supervisor::begin(&self.containers, &self.ops, key, action).await?;
        let runc = self.runc.clone();
        let id = c.id.clone();
        let done = tokio::task::spawn_blocking(move || if pause { runc.pause(&id) } else { runc.resume(&id) })
            .await
            .map_err(|e| Error::internal(e.to_string()))?;
        if let Err(e) = done {
            // the process may have ended meanwhile: that is a conflict, not a failure
            let ended = |c: &Container| c.state == ContainerState::Exited;
            if self.containers.wait_until(&c.id, ended, Duration::from_millis(500)).await.is_some() {
                return Err(Error::conflict(format!(
                    "cannot {} container {:?}: it exited meanwhile",
                    if pause { "pause" } else { "resume" },
                    c.spec.name
                )));
            }
            return Err(e.into());
        }
        supervisor::record_freeze(&self.containers, &c, pause)
    }

    pub async fn remove(self: &Arc<Self>, key: &str, force: bool) -> Result<()> {
        let c = self.find(key)?;
        if c.is_replicated() {
            return self.remove_replicated(key, force).await;
        }
        if let Some(p) = c.spec.replica_of.as_deref().and_then(|p| self.containers.get(p)) {
            return Err(Error::conflict(format!(
                "container {:?} is a replica of {:?}: remove {:?}, or take its VM out of the circuit (circuit remove-node)",
                c.spec.name, p.spec.name, p.spec.name
            )));
        }
        self.remove_one(&c.id, force).await
    }

    /// Removes one container that runs by itself (or a replica, for `reconcile`).
    pub(super) async fn remove_one(self: &Arc<Self>, key: &str, force: bool) -> Result<()> {
        let (c, _g) = supervisor::locked(&self.containers, &self.ops, key).await?;
        if let Err(e) = c.state.check(&c.spec.name, Transition::Remove) {
            if !force {
                return Err(Error::conflict(e.to_string()));
            }
            self.stop_locked(&c, 0.0).await?;
        }
        // synced (`Table::delete`): an acknowledged removal must not come back after a
        // power cut; it also makes the exit recorded before it durable
        self.containers.delete(&c.id)?;
        self.ops.forget(&c.id);
        if let Some(vm) = &c.spec.vm {
            self.advertise(vm);
        }
        let dir = self.state_dir(&c.id);
        let this = self.clone();
        let id = c.id.clone();
        tokio::spawn(async move {
            this.shim_gone(&id).await;
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        });
        Ok(())
    }

    pub async fn configure(&self, key: &str, set: BTreeMap<String, String>) -> Result<Container> {
        let c = self.find(key)?;
        for k in set.keys() {
            if k.is_empty() || !k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.') {
                return Err(Error::invalid(format!(
                    "config key {k:?} is not valid (use letters, digits, '-', '_' or '.', e.g. --sync-mode fast)"
                )));
            }
        }
        self.check_settings(c.spec.template.as_deref(), set.keys())?;
        if c.spec.image == CHAIN_NODE_IMAGE {
            for (k, v) in &set {
                check_node_setting(k, v)?;
            }
            let mut merged = c.spec.config.clone();
            merged.extend(set.clone());
            check_node_kind(&c.spec.command, &merged)?;
        }
        let keys: Vec<_> = set.keys().cloned().collect();
        // a replicated container's settings are its replicas' (they take them at their next start)
        for r in self.replicas_of(&c.id) {
            self.containers.update(&r.id, |r| r.spec.config.extend(set.clone()));
            self.containers.record(&r.id, "configured", keys.join(","))?;
        }
        self.containers.update(&c.id, |c| c.spec.config.extend(set));
        self.containers.persist(&c.id, "configured", keys.join(","))?;
        self.find(&c.id)
    }

    /// Waits until the container is not running; with `rm`, removes it then (its removal
    /// is fsynced, and with it the exit the reply reports). Without `rm` this is a read:
    /// it reports the exit as recorded (committed, see `Table::record`), like a GET.
    pub async fn wait(self: &Arc<Self>, key: &str, rm: bool) -> Result<WaitResponse> {
        let c = self.find(key)?;
        let done = |c: &Container| !matches!(c.state, ContainerState::Running | ContainerState::Paused);
        let c = self
            .containers
            .wait_until(&c.id, done, Duration::from_secs(365 * 24 * 3600))
            .await
            .ok_or_else(|| Error::not_found(format!("container {key:?} was removed while waiting")))?;
        if rm {
            self.remove(&c.id, false).await?;
        }
        Ok(WaitResponse { exit_code: c.exit_code.unwrap_or(0), oom_killed: c.oom_killed, error: c.error })
    }

    /// Re-adopts containers that kept running while the daemon was down and records
    /// the exits of those that ended meanwhile.
    pub async fn recover(self: &Arc<Self>) {
        // a replicated container runs nothing of its own: its replicas are adopted here
        let running = self
            .containers
            .filter(|c| !c.is_replicated() && matches!(c.state, ContainerState::Running | ContainerState::Paused));
        for c in running {
            let dir = self.state_dir(&c.id);
            let pid = c.pid.unwrap_or(0);
            match shim::live_shim_pid(&dir) {
                Some(shim_pid) => {
                    tracing::info!("re-adopted container {} (pid {pid})", c.spec.name);
                    let _ = self.containers.record(&c.id, "adopted", format!("pid {pid}"));
                    self.supervise(&c.id, Running { pid, shim_pid });
                }
                None => {
                    let status = shim::read_status(&dir);
                    tracing::info!("container {} ended while the daemon was down: {status:?}", c.spec.name);
                    let exit = Exit::from_status(status, "container");
                    supervisor::on_exit::<Container, _>(self, &c.id, pid, exit).await;
                }
            }
        }
        // a start cut short by a crash: its shim runs the workload though the store does
        // not say so (the kill came between the spawn and the write). The start happened:
        // adopt it. A shim that is ending is waited for, so that the next start's shim
        // does not share the container's directory with it.
        let others = self
            .containers
            .filter(|c| !c.is_replicated() && !matches!(c.state, ContainerState::Running | ContainerState::Paused));
        for c in others {
            let dir = self.state_dir(&c.id);
            let Some(shim_pid) = shim::live_shim_pid(&dir) else { continue };
            let mut status = shim::read_status(&dir);
            for _ in 0..100 {
                if status.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                status = shim::read_status(&dir);
            }
            match status {
                Some(shim::Status::Running { pid, started_at }) => {
                    tracing::info!("adopted container {} (pid {pid}): its start was cut short", c.spec.name);
                    self.containers.update(&c.id, |c| mark_running(c, pid, started_at));
                    let _ = self.containers.persist(&c.id, "adopted", format!("pid {pid}, a start cut short"));
                    self.supervise(&c.id, Running { pid, shim_pid });
                }
                _ => {
                    tracing::info!("waiting for the shim of container {} to end (a start cut short)", c.spec.name);
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_secs(10), workload::shim_done(shim_pid)).await;
                }
            }
        }
    }

    /// Records a health probe result; persists only when the status changes.
    pub fn record_health(&self, id: &str, pid: u32, ok: bool, retries: u32, ms: f64, output: String) -> bool {
        let mut changed = None;
        let alive = self
            .containers
            .update(id, |c| {
                if c.pid != Some(pid) || c.state != ContainerState::Running {
                    return;
                }
                let h = c.health.get_or_insert_with(HealthState::default);
                let before = h.status;
                h.record(ok, retries, Utc::now(), ms, output);
                if h.status != before {
                    changed = Some(h.status);
                }
            })
            .is_some_and(|c| c.pid == Some(pid) && c.state != ContainerState::Exited);
        if let Some(s) = changed {
            let _ = self.containers.record(id, "health", format!("{s:?}").to_lowercase());
        }
        alive
    }
}

/// The image of the reference chain's node: its settings are checked when configured.
const CHAIN_NODE_IMAGE: &str = super::chain::NODE_IMAGE;

/// A setting of a reference-chain node (`container config N --network mainnet`), checked
/// before it is stored; keys the node does not know are left to it.
fn check_node_setting(key: &str, value: &str) -> Result<()> {
    use micro_os_chain::params::Params;
    let why = match key {
        "network" if Params::by_name(value).is_err() => {
            let known: Vec<&str> = Params::all().iter().map(|p| p.name).collect();
            format!("network {value:?} is unknown (known: {})", known.join(", "))
        }
        "sync-mode" if !["full", "fast", "light"].contains(&value) => {
            format!("sync mode {value:?} is unknown (use full, fast or light)")
        }
        "mine" if value != "true" && value != "false" => {
            format!("mine {value:?} is not true or false (try --mine true)")
        }
        "threads" if !value.parse::<u16>().is_ok_and(|n| n >= 1) => {
            format!("threads {value:?} is not a number of threads (try --threads 1)")
        }
        _ => return Ok(()),
    };
    Err(Error::invalid(why))
}

/// The settings of a reference-chain node that go together: a light node (the light template's
/// `--kind light`, or `--sync-mode light`) neither mines nor validates.
fn check_node_kind(command: &[String], config: &BTreeMap<String, String>) -> Result<()> {
    let kind = command.windows(2).find(|w| w[0] == "--kind").map_or("full", |w| w[1].as_str());
    let light = kind == "light" || config.get("sync-mode").is_some_and(|m| m == "light");
    if kind == "validator" && light {
        return Err(Error::invalid(
            "a validator keeps every block: sync mode light is for light nodes (use --sync-mode full)",
        ));
    }
    let network = config.get("network").map_or("devnet", String::as_str);
    let sealed = micro_os_chain::params::Params::by_name(network).is_ok_and(|p| p.is_sealed());
    if sealed && config.get("mine").is_some_and(|m| m == "true") {
        return Err(Error::invalid(format!(
            "the {network} network is sealed by validators on a circuit, not mined (set --mine false)"
        )));
    }
    if kind == "light" && config.get("sync-mode").is_some_and(|m| m == "fast") {
        return Err(Error::invalid("a light node syncs headers only: sync mode fast is for full nodes"));
    }
    if light && config.get("mine").is_some_and(|m| m == "true") {
        return Err(Error::invalid(
            "a light node does not mine: it keeps headers only (set --mine false, or use blockchain-full-node)",
        ));
    }
    Ok(())
}

/// A container's record for a run that has begun: a fresh start's or an adopted one's.
fn mark_running(c: &mut Container, pid: u32, started_at: chrono::DateTime<Utc>) {
    c.state = ContainerState::Running;
    c.pid = Some(pid);
    c.started_at = Some(started_at);
    c.finished_at = None;
    c.exit_code = None;
    c.oom_killed = false;
    c.error = None;
    c.stop_requested = false;
    c.health = c.spec.health_check.as_ref().map(|_| HealthState::default());
}

/// A stop timeout must be a number of seconds.
pub(super) fn check_timeout(timeout: f64) -> Result<()> {
    if !(timeout.is_finite() && timeout >= 0.0) {
        return Err(Error::invalid(format!("timeout {timeout} is not a number of seconds (try 10)")));
    }
    Ok(())
}

/// The order a deploy file's containers start in: each after what it `depends_on`, in the
/// file's order otherwise (Kahn's algorithm). Refuses a name outside the file, a
/// container that depends on itself, `healthy` of one without a health check, and cycles.
fn start_order(specs: &[ContainerSpec], deps: &[Vec<Dependency>]) -> Result<Vec<usize>> {
    let index = |n: &str| specs.iter().position(|s| s.name == n);
    let mut after = vec![Vec::new(); specs.len()]; // after[d]: those waiting for d
    let mut waiting = vec![0usize; specs.len()];
    for (i, ds) in deps.iter().enumerate() {
        let me = &specs[i].name;
        for d in ds {
            let Some(j) = index(&d.name) else {
                return Err(Error::invalid(format!(
                    "containers[{i}] ({me:?}): depends_on names {:?}, which is not in the deploy file",
                    d.name
                )));
            };
            if j == i {
                return Err(Error::invalid(format!("containers[{i}] ({me:?}): depends_on names itself")));
            }
            if d.condition == Condition::Healthy && specs[j].health_check.is_none() {
                return Err(Error::invalid(format!(
                    "containers[{i}] ({me:?}): depends_on {:?} being healthy, but {:?} has no health check (give it one, or use condition started)",
                    d.name, d.name
                )));
            }
            after[j].push(i);
            waiting[i] += 1;
        }
    }
    let mut order = Vec::new();
    let mut ready: std::collections::BTreeSet<usize> = (0..specs.len()).filter(|i| waiting[*i] == 0).collect();
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &k in &after[i] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.insert(k);
            }
        }
    }
    if order.len() < specs.len() {
        // walk the dependencies of one that never got ready until a name repeats
        let mut path = vec![(0..specs.len()).find(|i| waiting[*i] > 0).expect("one is left")];
        loop {
            let cur = *path.last().expect("not empty");
            let next = deps[cur].iter().filter_map(|d| index(&d.name)).find(|j| waiting[*j] > 0).expect("it waits");
            if let Some(at) = path.iter().position(|p| *p == next) {
                let mut cycle: Vec<&str> = path[at..].iter().map(|p| specs[*p].name.as_str()).collect();
                cycle.push(&specs[next].name);
                return Err(Error::invalid(format!("depends_on forms a cycle: {}", cycle.join(" -> "))));
            }
            path.push(next);
        }
    }
    Ok(order)
}
