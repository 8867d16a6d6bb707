//! `micro-os daemon`: the composition root. It opens the home, the store and the image
//! store, re-adopts running containers, and serves the REST API until SIGTERM/SIGINT.

mod ai;
mod chain;
mod circuits;
pub mod components;
mod containers;
mod dns;
mod engine;
mod error;
mod events;
mod health;
mod hosts;
mod ingress;
mod journal;
mod logs;
mod monitor;
mod nonces;
mod overlay;
mod remote;
mod replicas;
mod spool;
mod supervisor;
mod table;
pub mod templates;
#[cfg(test)]
mod tests;
mod vms;

use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use micro_os_api::action::BoxFuture;
use micro_os_api::action::Upload;
use micro_os_api::types::{ImageBuild, ImageEvent, ImageImport, LogsQuery, NetSendStream, SendReport};
use micro_os_api::{Action, ApiError, ByteStream, Control, Reply, ServerConfig};
use micro_os_runtime::image::Progress;
use tokio::sync::mpsc;

pub use engine::Engine;

use crate::home::{Config, Home};

struct Daemon(Arc<Engine>);

/// The daemon's store, for the p2p layer's nonce memory.
struct EngineStore(Arc<Engine>);

impl AsRef<micro_os_store::Store> for EngineStore {
    fn as_ref(&self) -> &micro_os_store::Store {
        &self.0.store
    }
}

/// The host accepts messages from its own VMs' agents and from the hosts of its fabric
/// (besides trusted peers).
struct HostPolicy(Arc<Engine>);

impl crate::p2p::Policy for HostPolicy {
    fn known(&self, peer: &libp2p::PeerId) -> bool {
        let peer = peer.to_string();
        self.0.is_vm_peer(&peer) || self.0.hosts.is_member(&peer)
    }
}

fn ndjson_line(ev: &ImageEvent) -> Bytes {
    let mut v = serde_json::to_vec(ev).expect("event serialises");
    v.push(b'\n');
    Bytes::from(v)
}

fn image_error(e: micro_os_runtime::Error) -> ApiError {
    error::Error::from(e).into()
}

type ImageJob =
    Box<dyn FnOnce(&mut dyn FnMut(Progress)) -> Result<micro_os_runtime::image::Image, micro_os_runtime::Error> + Send>;

/// Runs an image job on a blocking thread, streaming its progress as NDJSON.
fn image_job(
    job: impl FnOnce(&mut dyn FnMut(Progress)) -> Result<micro_os_runtime::image::Image, micro_os_runtime::Error>
        + Send
        + 'static,
) -> ByteStream {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    run_image_job(tx, Box::new(job));
    logs::byte_stream(rx)
}

/// The NDJSON line of a failed image job.
fn error_line(e: ApiError) -> Bytes {
    ndjson_line(&ImageEvent::Error { status: e.kind.status().as_u16(), message: e.message })
}

/// [`image_job`] reporting to `tx`.
fn run_image_job(tx: mpsc::Sender<Bytes>, job: ImageJob) {
    tokio::task::spawn_blocking(move || {
        let mut last = std::time::Instant::now() - std::time::Duration::from_secs(1);
        let mut report = |p: Progress| {
            // at most 20 updates a second, and always the last of a stage
            if p.current >= p.total || last.elapsed().as_millis() >= 50 {
                last = std::time::Instant::now();
                let _ = tx.blocking_send(ndjson_line(&ImageEvent::Progress {
                    stage: p.stage,
                    current: p.current,
                    total: p.total,
                }));
            }
        };
        let ev = match job(&mut report) {
            Ok(img) => ImageEvent::Done { image: engine::image_info(img) },
            Err(e) => {
                let api = image_error(e);
                ImageEvent::Error { status: api.kind.status().as_u16(), message: api.message }
            }
        };
        let _ = tx.blocking_send(ndjson_line(&ev));
    });
}

impl Control for Daemon {
    fn dispatch(&self, action: Action) -> BoxFuture<'_, Result<Reply, ApiError>> {
        Box::pin(async move { self.0.dispatch(action).await.map_err(ApiError::from) })
    }

    fn daemon_logs(&self, query: micro_os_api::types::DaemonLogsQuery) -> BoxFuture<'_, Result<ByteStream, ApiError>> {
        Box::pin(async move {
            journal::check(&query)?;
            Ok(journal::stream(&self.0.home.root.join("logs").join("daemon.log"), query))
        })
    }

    fn events(
        &self,
        query: micro_os_api::types::EventsQuery,
    ) -> BoxFuture<'_, Result<micro_os_api::action::EventStream, ApiError>> {
        Box::pin(async move { events::stream(self.0.store.clone(), query) })
    }

    fn logs(&self, id: String, query: LogsQuery) -> BoxFuture<'_, Result<ByteStream, ApiError>> {
        Box::pin(async move {
            let c = self.0.find(&id).map_err(ApiError::from)?;
            if c.is_replicated() {
                let mut names: Vec<String> = self.0.replicas_of(&c.id).into_iter().map(|r| r.spec.name).collect();
                names.sort();
                return Err(ApiError::from(error::Error::invalid(format!(
                    "container {:?} is replicated: read one replica's logs ({})",
                    c.spec.name,
                    names.join(", ")
                ))));
            }
            let path = self.0.home.containers().join(&c.id).join("container.log");
            Ok(logs::stream(self.0.clone(), c.id, path, self.0.cfg.log_max_files, query))
        })
    }

    fn build_image(&self, req: ImageBuild) -> BoxFuture<'_, Result<ByteStream, ApiError>> {
        Box::pin(async move {
            if req.base == "ethereum-dev" {
                let name = req.name.unwrap_or_else(|| req.base.clone());
                micro_os_runtime::image::validate_image_name(&name).map_err(image_error)?;
                if self.0.images.exists(&name) {
                    return Err(image_error(micro_os_runtime::Error::ImageExists(name)));
                }
                let engine = self.0.clone();
                let anvil = micro_os_runtime::image::ANVIL;
                return Ok(image_job(move |p| {
                    engine.images.build_with(&name, &engine.cfg.busybox, &engine.exe, &anvil, p)
                }));
            }
            if !micro_os_api::schema::IMAGE_BASES.contains(&req.base.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "base image {:?} is unknown (built-in bases: {}; or an image from a directory: image build --from-dir DIR)",
                    req.base,
                    micro_os_api::schema::IMAGE_BASES.join(", ")
                )));
            }
            let name = req.name.unwrap_or_else(|| req.base.clone());
            micro_os_runtime::image::validate_image_name(&name).map_err(image_error)?;
            if self.0.images.exists(&name) {
                return Err(image_error(micro_os_runtime::Error::ImageExists(name)));
            }
            let engine = self.0.clone();
            if req.base == "busybox" {
                return Ok(image_job(move |p| engine.images.build_busybox(&name, &engine.cfg.busybox, p)));
            }
            if req.base == "blockchain-node" {
                let node = micro_os_runtime::image::NODE;
                return Ok(image_job(move |p| {
                    engine.images.build_with(&name, &engine.cfg.busybox, &engine.exe, &node, p)
                }));
            }
            // busybox + the agent (micro-os-agent beside this binary, or $MICRO_OS_AGENT);
            // plus the qemu boot files (kernel and initramfs) when the host has a kernel
            Ok(image_job(move |p| {
                let img = engine.images.build_agent_base(&name, &engine.cfg.busybox, &engine.exe, p)?;
                if micro_os_runtime::boot::host_kernel().is_ok() {
                    let stage = "making the qemu kernel + initramfs".to_string();
                    p(Progress { stage: stage.clone(), current: 0, total: 1 });
                    let rootfs = engine.images.rootfs(&name);
                    micro_os_runtime::boot::build(&rootfs, &rootfs.parent().expect("image dir").join("boot"))?;
                    p(Progress { stage, current: 1, total: 1 });
                }
                Ok(img)
            }))
        })
    }

    fn import_image(&self, req: ImageImport, upload: Upload) -> BoxFuture<'_, Result<ByteStream, ApiError>> {
        Box::pin(async move {
            if let Some(n) = &req.name {
                micro_os_runtime::image::validate_image_name(n).map_err(image_error)?;
                if self.0.images.exists(n) {
                    return Err(image_error(micro_os_runtime::Error::ImageExists(n.clone())));
                }
            }
            let origin = match &req.source {
                Some(s) => format!("upload {}", spool::file_name(s).map_err(ApiError::bad_request)?),
                None => "upload".to_string(),
            };
            // the body is spooled as it arrives (progress: "receiving archive"), then
            // imported on a blocking thread; the spool goes when the job ends, whatever
            // its outcome, or as soon as the upload breaks off
            let engine = self.0.clone();
            let (tx, rx) = mpsc::channel::<Bytes>(256);
            tokio::spawn(async move {
                let spool = match spool::Spool::new(&engine.home) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(error_line(ApiError::internal(format!("the upload's spool: {e}")))).await;
                        return;
                    }
                };
                let file = spool.path("archive");
                let progress = tx.clone();
                let mut heard = |current, total| {
                    let stage = "receiving archive".to_string();
                    let _ = progress.try_send(ndjson_line(&ImageEvent::Progress { stage, current, total }));
                };
                if let Err(e) = spool::receive(upload, &file, &mut heard).await {
                    let why = format!("the upload of {origin} broke off: {e}");
                    let _ = tx.send(error_line(ApiError::bad_request(why))).await;
                    return;
                }
                run_image_job(
                    tx,
                    Box::new(move |p| {
                        let _spool = spool;
                        engine.images.import_as(&file, &origin, req.name.as_deref(), p)
                    }),
                );
            });
            Ok(logs::byte_stream(rx))
        })
    }

    fn send_stream(&self, req: NetSendStream, upload: Upload) -> BoxFuture<'_, Result<SendReport, ApiError>> {
        Box::pin(async move {
            let name = spool::file_name(req.name.as_deref().unwrap_or("upload")).map_err(ApiError::bad_request)?;
            if let Some(from) = &req.from {
                self.0.find_vm(from).map_err(ApiError::from)?;
            }
            let spool = spool::Spool::new(&self.0.home)
                .map_err(|e| ApiError::internal(format!("the upload's spool cannot be made: {e}")))?;
            let file = spool.path(name);
            spool::receive(upload, &file, &mut |_, _| {})
                .await
                .map_err(|e| ApiError::bad_request(format!("the upload of {name} broke off: {e}")))?;
            let send = micro_os_api::types::NetSend {
                from: req.from,
                to: req.to,
                kind: "DATA".into(),
                state: String::new(),
                count: None,
                size: None,
                stream: true,
            };
            let report = self.0.net_send(send, Some(file)).await.map_err(ApiError::from);
            drop(spool);
            report
        })
    }
}

/// The API's connection caps, within what this process may open: the soft descriptor
/// limit is raised to the hard one first (as systemd services and nginx do), and at most
/// half of it goes to API connections.
fn serve_limits() -> micro_os_api::serve::ServeLimits {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let mut limits = micro_os_api::serve::ServeLimits::default();
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft };
        let room = usize::try_from(soft / 2).unwrap_or(usize::MAX);
        limits.total = limits.total.min(room);
        limits.per_client = limits.per_client.min(limits.total);
    }
    limits
}

pub fn run(home: Home, cfg: Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MICRO_OS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // stderr as configured; the journal (`micro-os logs`) with our own targets at debug
    let journal = journal::Journal::open(home.root.join("logs").join("daemon.log"));
    let journal_filter = tracing_subscriber::EnvFilter::new(
        "info,micro_os=debug,micro_os_api=debug,micro_os_runtime=debug,micro_os_vmm=debug,micro_os_store=debug,\
         micro_os_net=debug,micro_os_p2p=debug",
    );
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter),
        )
        .with(tracing_subscriber::fmt::layer().json().with_writer(journal).with_filter(journal_filter))
        .init();
    home.init(None)?;
    spool::clear(&home);
    for (component, settings) in components::settings(&cfg) {
        tracing::debug!(target: "micro_os::daemon", "{component} settings: {settings}");
    }
    let token = home.token()?;
    if !nix::unistd::geteuid().is_root() {
        // the rest works unprivileged; say once what does not, rather than refuse to start
        tracing::warn!(
            "not running as root: containers and VMs cannot start (runc, cgroups, mounts and the VM bridge need root); \
             the API, the store, images, monitoring and the libp2p peer work"
        );
    } else {
        // two homes on one machine must not share the VM bridge or hand out the same addresses
        let fabric = micro_os_runtime::fabric::Fabric::parse(&cfg.vm_bridge, &cfg.vm_subnet)?;
        fabric.claim(std::path::Path::new(micro_os_runtime::fabric::CLAIMS), &home.root)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let engine = Engine::open(home.clone(), cfg.clone())?;
        if !engine.images.exists("busybox") {
            match engine.images.build_busybox("busybox", &cfg.busybox, &mut |_| {}) {
                Ok(_) => tracing::info!("built the busybox base image from {}", cfg.busybox.display()),
                Err(e) => tracing::warn!("no busybox base image: {e}"),
            }
        }
        // the API's port is taken before the peer listens: a peer given port 0 must not get it
        let addr: std::net::SocketAddr = cfg.api_addr.parse().context("api_addr")?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (is another daemon running? pick another with --api-addr)")
        })?;
        // the host's libp2p peer, with the node key's identity
        let p2p_cfg = crate::p2p::Config {
            listen: cfg.p2p_listen.iter().filter_map(|a| a.parse().ok()).collect(),
            bootstrap: cfg.p2p_bootstrap.iter().filter_map(|a| a.parse().ok()).collect(),
            trusted: cfg.p2p_trusted.iter().filter_map(|p| p.parse().ok()).collect(),
            rotate_every: cfg.p2p_key_rotation_s,
            mdns: cfg.p2p_mdns,
            nat: cfg.p2p_nat,
            external: cfg.p2p_external.iter().filter_map(|a| a.parse().ok()).collect(),
            inbox: Some(home.root.join("inbox")),
            leaf: false,
            limits: cfg.p2p_limits,
            ..crate::p2p::Config::default()
        };
        let key = home.libp2p_key()?;
        let _ = engine.host_peer.set(key.public().to_peer_id().to_string());
        let host_key = key.clone();
        let handle = crate::p2p::spawn(
            key,
            p2p_cfg,
            Box::new(nonces::StoredNonces(EngineStore(engine.clone()))),
            Arc::new(HostPolicy(engine.clone())),
        )?;
        let _ = engine.p2p.set(handle);
        engine.start_hosts(host_key)?;
        engine.start_dns();
        engine.recover_vms().await;
        engine.recover().await;
        // replicas follow their circuits' members as recorded (and a create cut short is finished)
        tokio::spawn({
            let engine = engine.clone();
            async move { engine.reconcile_all().await }
        });
        engine.spawn_monitor();
        engine.spawn_ai();
        tracing::info!(
            "micro-os daemon listening on http://{} (home {}, {} containers)",
            listener.local_addr()?,
            home.root.display(),
            engine.container_count()
        );
        let deny = if cfg.vm_api_access { vec![] } else { vec![(engine.fabric().network, engine.fabric().prefix)] };
        let forward: Arc<dyn micro_os_api::Forwarder> = Arc::new(hosts::Forward(Arc::downgrade(&engine)));
        let app = micro_os_api::router(
            Arc::new(Daemon(engine.clone())),
            ServerConfig {
                token,
                deny,
                forward: Some(forward),
                host: Some(micro_os_api::HostLimits {
                    memory_mib: micro_os_runtime::cgroup::host_memory_mib(),
                    cpus: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
                }),
            },
        );
        let _ = engine.api.set(app.clone());
        // open streams (logs --follow) would hold a graceful shutdown forever: they get 2 s
        let limits = serve_limits();
        micro_os_api::serve::serve(listener, app, limits, engine.serve_stats.clone(), shutdown_signal()).await?;
        tracing::info!("micro-os daemon stopped; containers keep running under their shims");
        anyhow::Ok(())
    })?;
    // follow-mode log streams run on blocking threads; do not wait for them
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut int = signal(SignalKind::interrupt()).expect("signal handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
