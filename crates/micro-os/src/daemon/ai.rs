//! The AI layer in the daemon: which module runs for which reference-chain node and how it
//! is configured (objects of kind `ai` in the store), the samples the nodes report
//! (collected into the store), training on them into the model store (`models/` in the
//! home), the live models pushed to the nodes, and the anomalies they hold turned into
//! alerts with source `ai`.
//!
//! Key design decision: the daemon trains and the nodes serve. One loop ([`Engine::ai_round`],
//! every [`ROUND`]) reconciles each node with what is set: it turns the module on or off
//! with its configuration, pushes a live model whose version the node does not have,
//! collects new samples, raises or resolves the anomaly alert, and retrains when
//! `model_update_interval` has passed. So a restarted daemon or node converges again by
//! itself, and a command only changes what is set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use micro_os_ai::{ModelFile, ModelStore, TxOptimizerConfig, TxSample};
use micro_os_api::types::{AiConfigure, AiDisable, AiEnable, AiModelInfo, AiModuleStatus, AiTrain, AiTrainReport};
use micro_os_core::metrics::{Alert, Severity};
use micro_os_core::{Container, ContainerState};
use micro_os_store::Event;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::chain::NODE_IMAGE;
use super::engine::Engine;
use super::error::{Error, Result};

/// How often the nodes are reconciled and their samples collected.
pub const ROUND: Duration = Duration::from_secs(3);
/// The modules of the spec, and which of them this build has.
pub const MODULES: &[&str] = micro_os_api::schema::AI_MODULES;
const AVAILABLE: &[&str] = micro_os_api::schema::AI_MODULES_BUILT;
/// The object kind of module settings in the store.
const KIND: &str = "ai";
/// The scope of a setting made without `--container`: every node of this host.
const EVERY_NODE: &str = "*";
/// Samples kept per node to train on.
const SAMPLES_KEPT: usize = 100_000;
/// Samples the newest models are trained and tested on.
const TRAIN_ON: usize = 20_000;
/// Fewer samples than this and training waits.
pub const MIN_SAMPLES: usize = micro_os_ai::train::MIN_SAMPLES;
/// The templates of the AI layer's services: a container of the first is given the live
/// models, one of the second the samples to train on (and the daemon trains no more).
pub const INFERENCE: &str = "ai-inference";
pub const TRAINING: &str = "ai-training";
/// An anomaly alert resolves when its node held no new anomaly for this long.
const QUIET_MS: i64 = 60_000;
/// The seed of every training run, so a run repeats.
const SEED: u64 = 14;

/// What is set for one module and scope (a container id, or every node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setting {
    pub module: String,
    /// A container id, or `*`.
    pub scope: String,
    /// The container's name, or `*`.
    pub container: String,
    pub enabled: bool,
    pub config: TxOptimizerConfig,
    /// When the last training ran (unix ms) and what it said.
    #[serde(default)]
    pub trained_at: i64,
    #[serde(default)]
    pub last_training: Option<String>,
}

impl Setting {
    fn id(module: &str, scope: &str) -> String {
        format!("{module}:{scope}")
    }
}

/// What the loop knows of one node between rounds (not stored: it is asked again).
#[derive(Debug, Default)]
struct NodeView {
    /// The node's last sample collected.
    cursor: u64,
    /// The node's anomaly counter when last seen.
    anomalies: Option<u64>,
    /// The open anomaly alert and when the node last held a new anomaly.
    alert: Option<(i64, i64)>,
    info: Option<Value>,
    /// Arrivals per unix second, from the samples collected (the last ten minutes).
    arrivals: BTreeMap<i64, f64>,
    /// The last forecast (transactions in the next second) and the batch size it gave.
    forecast: Option<(f64, u32)>,
}

/// A live arrival forecaster, loaded.
enum Forecast {
    Lstm(Box<micro_os_ai::forecast::Forecaster>),
    Ewma(micro_os_ai::forecast::Ewma),
}

impl Forecast {
    fn load(f: &ModelFile) -> Result<Forecast> {
        let served: micro_os_ai::train::ServedForecaster =
            serde_json::from_value(f.model.get("serving").cloned().unwrap_or(Value::Null))
                .map_err(|e| Error::internal(format!("forecaster v{} does not load: {e}", f.version)))?;
        Ok(match served {
            micro_os_ai::train::ServedForecaster::Lstm { model } => Forecast::Lstm(Box::new(
                micro_os_ai::forecast::Forecaster::from_json(&model).map_err(|e| Error::internal(e.to_string()))?,
            )),
            micro_os_ai::train::ServedForecaster::Ewma { alpha } => {
                Forecast::Ewma(micro_os_ai::forecast::Ewma { alpha })
            }
        })
    }

    fn next(&self, history: &[f64]) -> f64 {
        match self {
            Forecast::Lstm(m) => m.predict_next(history),
            Forecast::Ewma(m) => m.predict_next(history),
        }
    }
}

/// The loop's memory, by container id.
#[derive(Default)]
pub struct AiState {
    nodes: Mutex<HashMap<String, NodeView>>,
    /// Samples exported to a training container, by (container id, node id): their count.
    exported: Mutex<HashMap<(String, String), u64>>,
    /// Serialises training runs (a command and the loop).
    training: tokio::sync::Mutex<()>,
    /// The live forecaster of each node (by container name), with its version.
    forecasters: Mutex<HashMap<String, (u64, Arc<Forecast>)>>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn check_module(m: &str) -> Result<()> {
    if !MODULES.contains(&m) {
        return Err(Error::invalid(format!("module {m:?} is unknown (use {})", MODULES.join(", "))));
    }
    if !AVAILABLE.contains(&m) {
        return Err(Error::NotBuilt(format!(
            "module {m:?} is not available in this build yet (available: {})",
            AVAILABLE.join(", ")
        )));
    }
    Ok(())
}

/// The modules a request names: one (checked), or with `--all` every one this build has.
fn modules_of(module: Option<&str>, all: bool) -> Result<Vec<String>> {
    match (module, all) {
        (Some(_), true) => Err(Error::invalid("give --module or --all, not both")),
        (None, false) => Err(Error::invalid("give --module (transaction, mining, network) or --all")),
        (Some(m), false) => check_module(m).map(|()| vec![m.to_string()]),
        (None, true) => Ok(AVAILABLE.iter().map(|s| s.to_string()).collect()),
    }
}

fn bad_config(e: impl std::fmt::Display) -> Error {
    Error::invalid(e.to_string())
}

/// The model store's module name of a kind of model of the transaction optimiser.
fn store_module(kind: &str) -> String {
    format!("transaction.{kind}")
}

pub fn model_info(f: &ModelFile, live: bool) -> AiModelInfo {
    let kind = f.module.rsplit('.').next().unwrap_or(&f.module).to_string();
    AiModelInfo {
        module: f.module.split('.').next().unwrap_or(&f.module).to_string(),
        container: f.scope.clone(),
        kind,
        version: f.version,
        live,
        created_at: DateTime::from_timestamp(f.created_unix as i64, 0).unwrap_or_default(),
        data_size: f.data_size,
        seed: f.seed,
        algorithm: f.model.get("algorithm").and_then(Value::as_str).unwrap_or("-").to_string(),
        primary_metric: f.primary_metric.clone(),
        metrics: f.metrics.clone(),
        baseline: f.model.get("baseline").and_then(Value::as_str).unwrap_or("-").to_string(),
        baseline_metrics: f.baseline_metrics.clone(),
        trainer: f.trainer.clone(),
    }
}

impl Engine {
    fn model_store(&self) -> Result<ModelStore> {
        ModelStore::open(self.home.root.join("models")).map_err(|e| Error::internal(e.to_string()))
    }

    fn ai_settings(&self) -> Vec<Setting> {
        tokio::task::block_in_place(|| self.store.list::<Setting>(KIND)).unwrap_or_else(|e| {
            tracing::warn!("ai: read settings: {e}");
            Vec::new()
        })
    }

    /// Stores a setting with its event; the event is named by the node (or `*`), so that
    /// `events --object NODE` finds what the AI layer did to it.
    fn save_setting(&self, s: &Setting, action: &str, detail: Option<String>) -> Result<()> {
        let id = Setting::id(&s.module, &s.scope);
        let node = if s.container.is_empty() { s.scope.as_str() } else { s.container.as_str() };
        let detail = detail.unwrap_or_else(|| format!("module {}", s.module));
        let event = Event::new(KIND, &id, node, action, detail);
        tokio::task::block_in_place(|| match self.store.get::<Setting>(KIND, &id)? {
            Some(_) => self.store.update(KIND, &id, &id, s, Some(&event)),
            None => self.store.insert(KIND, &id, &id, s, &event),
        })?;
        Ok(())
    }

    /// A reference-chain node of this host by id or name (any state).
    fn ai_node(&self, key: &str) -> Result<Container> {
        let c = self.find(key)?;
        if c.spec.image != NODE_IMAGE {
            return Err(Error::invalid(format!(
                "container {:?} runs no reference-chain node (its image is {:?}); the transaction optimiser \
                 runs for nodes made with --template blockchain-full-node",
                c.spec.name, c.spec.image
            )));
        }
        Ok(c)
    }

    /// The setting that governs node `c` for `module`: its own, else the every-node one.
    fn effective(settings: &[Setting], module: &str, c: &Container) -> Option<Setting> {
        settings
            .iter()
            .find(|s| s.module == module && s.scope == c.id)
            .or_else(|| settings.iter().find(|s| s.module == module && s.scope == EVERY_NODE))
            .cloned()
    }

    /// The scope and display name a request's `--container` names.
    fn scope_of(&self, container: Option<&str>) -> Result<(String, String)> {
        match container {
            None | Some("*") => Ok((EVERY_NODE.into(), EVERY_NODE.into())),
            Some(k) => {
                let c = self.ai_node(k)?;
                Ok((c.id, c.spec.name))
            }
        }
    }

    pub async fn ai_enable(&self, req: AiEnable) -> Result<Vec<AiModuleStatus>> {
        let modules = modules_of(req.module.as_deref(), req.all)?;
        let config = match &req.config {
            None => None,
            Some(v) => Some(TxOptimizerConfig::from_json_str(&v.to_string()).map_err(bad_config)?),
        };
        let (scope, container) = self.scope_of(req.container.as_deref())?;
        let settings = self.ai_settings();
        for module in &modules {
            let old = settings.iter().find(|s| s.module == *module && s.scope == scope);
            let s = Setting {
                module: module.clone(),
                scope: scope.clone(),
                container: container.clone(),
                enabled: true,
                config: config.clone().or_else(|| old.map(|o| o.config.clone())).unwrap_or_default(),
                trained_at: old.map_or(0, |o| o.trained_at),
                last_training: old.and_then(|o| o.last_training.clone()),
            };
            self.save_setting(&s, "enabled", None)?;
            tracing::info!("ai: {module} enabled for {container}");
        }
        // what was enabled here, and with --all the modules that are not built yet
        let mut out = self.ai_list()?;
        out.retain(|m| {
            (m.available && modules.contains(&m.module) && m.container == container) || (req.all && !m.available)
        });
        if req.all {
            for m in MODULES.iter().filter(|m| !AVAILABLE.contains(m)) {
                if let Some(x) = out.iter_mut().find(|x| x.module == *m) {
                    x.note = Some(format!("{m} is not available in this build yet"));
                }
            }
        }
        Ok(out)
    }

    pub async fn ai_disable(&self, req: AiDisable) -> Result<Vec<AiModuleStatus>> {
        let modules = modules_of(req.module.as_deref(), req.all)?;
        let (scope, container) = self.scope_of(req.container.as_deref())?;
        let settings = self.ai_settings();
        for module in &modules {
            let s = match settings.iter().find(|s| s.module == *module && s.scope == scope) {
                Some(s) => Setting { enabled: false, ..s.clone() },
                // disabling one node under an every-node setting: an own, disabled setting
                None if scope != EVERY_NODE => Setting {
                    module: module.clone(),
                    scope: scope.clone(),
                    container: container.clone(),
                    enabled: false,
                    config: TxOptimizerConfig::default(),
                    trained_at: 0,
                    last_training: None,
                },
                None => continue,
            };
            self.save_setting(&s, "disabled", None)?;
            tracing::info!("ai: {module} disabled for {container}");
        }
        self.ai_list()
    }

    pub async fn ai_configure(&self, req: AiConfigure) -> Result<Vec<AiModuleStatus>> {
        check_module(&req.module)?;
        if req.set.is_empty() {
            return Err(Error::invalid("give at least one --set key=value"));
        }
        let (scope, container) = self.scope_of(req.container.as_deref())?;
        let settings = self.ai_settings();
        let base = settings
            .iter()
            .find(|s| s.module == req.module && s.scope == scope)
            .cloned()
            .or_else(|| {
                // a node's own setting starts from the every-node one
                settings.iter().find(|s| s.module == req.module && s.scope == EVERY_NODE).map(|s| Setting {
                    scope: scope.clone(),
                    container: container.clone(),
                    ..s.clone()
                })
            })
            .ok_or_else(|| {
                Error::conflict(format!(
                    "module {} is not enabled for {container} (run `micro-os ai enable --module {}{}` first)",
                    req.module,
                    req.module,
                    req.container.as_ref().map_or(String::new(), |c| format!(" --container {c}"))
                ))
            })?;
        let config = base.config.apply_sets(&req.set).map_err(bad_config)?;
        self.save_setting(&Setting { config, ..base }, "configured", None)?;
        let mut out = self.ai_list()?;
        out.retain(|m| m.module == req.module && m.container == container);
        Ok(out)
    }

    pub fn ai_models(&self) -> Result<Vec<AiModelInfo>> {
        let store = self.model_store()?;
        let mut out = Vec::new();
        for (module, scope) in store.list().map_err(|e| Error::internal(e.to_string()))? {
            let live = store.live(&module, &scope).map_err(|e| Error::internal(e.to_string()))?.map(|f| f.version);
            for f in store.versions(&module, &scope).map_err(|e| Error::internal(e.to_string()))? {
                out.push(model_info(&f, Some(f.version) == live));
            }
        }
        Ok(out)
    }

    fn live_models(&self, container: &str) -> Vec<ModelFile> {
        let Ok(store) = self.model_store() else { return Vec::new() };
        ["classifier", "iforest", "forecaster"]
            .iter()
            .filter_map(|k| store.live(&store_module(k), container).ok().flatten())
            .collect()
    }

    /// Every module as it is set, with live models and what the node reports.
    pub fn ai_list(&self) -> Result<Vec<AiModuleStatus>> {
        let settings = self.ai_settings();
        let views = self.ai.nodes.lock().unwrap();
        let mut out: Vec<AiModuleStatus> = settings
            .iter()
            .map(|s| {
                let node = (s.scope != EVERY_NODE).then(|| views.get(&s.scope).and_then(|v| v.info.clone())).flatten();
                let models = if s.scope == EVERY_NODE { Vec::new() } else { self.live_models(&s.container) };
                let samples = if s.scope == EVERY_NODE {
                    0
                } else {
                    tokio::task::block_in_place(|| self.store.ai_sample_count(&s.module, &s.scope)).unwrap_or(0)
                };
                AiModuleStatus {
                    module: s.module.clone(),
                    container: s.container.clone(),
                    available: true,
                    enabled: s.enabled,
                    config: serde_json::to_value(&s.config).unwrap_or_default(),
                    samples,
                    models: models.iter().map(|f| model_info(f, true)).collect(),
                    last_training: s.last_training.clone(),
                    next_training: (s.enabled && s.scope != EVERY_NODE).then(|| {
                        DateTime::from_timestamp_millis(s.trained_at + s.config.model_update_interval as i64 * 1000)
                            .unwrap_or_default()
                    }),
                    node,
                    note: None,
                }
            })
            .collect();
        drop(views);
        for m in MODULES.iter().filter(|m| !AVAILABLE.contains(m)) {
            out.push(AiModuleStatus {
                module: m.to_string(),
                container: EVERY_NODE.into(),
                available: false,
                config: json!({}),
                note: Some(format!("{m} is not available in this build yet")),
                ..Default::default()
            });
        }
        Ok(out)
    }

    /// What the modules did for node `c`, in words and as data (`monitor performance
    /// --ai-stats`): decisions, the live models against their baselines on this node's
    /// data, and the waits by class from the samples collected.
    pub fn ai_performance(&self, c: &Container) -> (String, Vec<AiModuleStatus>) {
        let modules: Vec<AiModuleStatus> =
            self.ai_list().unwrap_or_default().into_iter().filter(|m| m.container == c.spec.name).collect();
        let settings = self.ai_settings();
        let Some(s) = Self::effective(&settings, "transaction", c).filter(|s| s.enabled) else {
            return ("no AI modules are enabled for this container".into(), modules);
        };
        let mut lines = vec![format!(
            "transaction optimiser: enabled (batch_size {}, priority_levels {}, anomaly_threshold {})",
            s.config.batch_size, s.config.priority_levels, s.config.anomaly_threshold
        )];
        if let Some(n) = self.ai.nodes.lock().unwrap().get(&c.id).and_then(|v| v.info.clone()) {
            let k = &n["counters"];
            lines.push(format!(
                "decided: {} batches, {} validated, {} served ahead of earlier arrivals, {} anomalies held ({} held now)",
                k["batches"], k["validated"], k["reordered"], k["anomalies"], n["held"]
            ));
        }
        for f in self.live_models(&c.spec.name) {
            let i = model_info(&f, true);
            let m = |x: &BTreeMap<String, f64>| x.get(&i.primary_metric).copied().unwrap_or(f64::NAN);
            let (ours, base) = (m(&i.metrics), m(&i.baseline_metrics));
            lines.push(format!(
                "{} v{} ({}): {} {ours:.3} against {} {base:.3} ({:+.3}) on {} samples",
                i.kind,
                i.version,
                i.algorithm,
                i.primary_metric,
                i.baseline,
                ours - base,
                i.data_size
            ));
        }
        let bodies =
            tokio::task::block_in_place(|| self.store.ai_samples("transaction", &c.id, 5000)).unwrap_or_default();
        let samples: Vec<TxSample> = bodies.iter().filter_map(|b| serde_json::from_str(b).ok()).collect();
        let queued: Vec<&TxSample> = samples.iter().filter(|x| x.source == "p2p" && !x.held).collect();
        if !queued.is_empty() {
            let p50 = |class: Option<u32>| {
                let mut w: Vec<f64> =
                    queued.iter().filter(|x| class.is_none_or(|c| x.class == c)).map(|x| x.wait_ms).collect();
                (!w.is_empty()).then(|| micro_os_ai::metrics::percentile(&mut w, 50.0))
            };
            let by_class: Vec<String> = (0..s.config.priority_levels)
                .filter_map(|k| p50(Some(k)).map(|w| format!("class {k} {w:.1} ms")))
                .collect();
            lines.push(format!(
                "wait to validation, p50 of the last {}: all {:.1} ms; {}",
                queued.len(),
                p50(None).unwrap_or(0.0),
                by_class.join(", ")
            ));
        }
        if let Some((f, b)) = self.ai.nodes.lock().unwrap().get(&c.id).and_then(|v| v.forecast) {
            lines.push(format!("forecast: {f:.1} transactions in the next second, so batches of {b}"));
        }
        if self.live_models(&c.spec.name).is_empty() {
            lines.push(format!(
                "no model is live yet: every transaction is served in one class (FIFO) until training has {MIN_SAMPLES} samples"
            ));
        }
        (lines.join("\n"), modules)
    }

    pub async fn ai_train(&self, req: AiTrain) -> Result<Vec<AiTrainReport>> {
        check_module(&req.module)?;
        let settings = self.ai_settings();
        let targets: Vec<(Container, Setting)> = match req.container.as_deref() {
            Some(k) => {
                let c = self.ai_node(k)?;
                let s = Self::effective(&settings, &req.module, &c).filter(|s| s.enabled).ok_or_else(|| {
                    Error::conflict(format!(
                        "module {} is not enabled for {} (run `micro-os ai enable --module {} --container {}` first)",
                        req.module, c.spec.name, req.module, c.spec.name
                    ))
                })?;
                vec![(c, s)]
            }
            None => self
                .containers
                .filter(|c| c.spec.image == NODE_IMAGE)
                .into_iter()
                .filter_map(|c| Self::effective(&settings, &req.module, &c).filter(|s| s.enabled).map(|s| (c, s)))
                .collect(),
        };
        if targets.is_empty() {
            return Err(Error::conflict(format!(
                "module {} is enabled for no reference-chain node (run `micro-os ai enable --module {}` first)",
                req.module, req.module
            )));
        }
        let mut out = Vec::new();
        for (c, s) in targets {
            out.push(self.train_node(&c, &s).await?);
        }
        Ok(out)
    }

    /// Trains the classifier and the isolation forest on node `c`'s samples and proposes
    /// both to the model store; records when and what in the node's setting.
    async fn train_node(&self, c: &Container, s: &Setting) -> Result<AiTrainReport> {
        let _one = self.ai.training.lock().await;
        let store = self.store.clone();
        let id = c.id.clone();
        let bodies = tokio::task::spawn_blocking(move || store.ai_samples("transaction", &id, TRAIN_ON))
            .await
            .map_err(|e| Error::internal(e.to_string()))??;
        let samples: Vec<TxSample> = bodies.iter().filter_map(|b| serde_json::from_str(b).ok()).collect();
        if samples.len() < MIN_SAMPLES {
            return Err(Error::conflict(format!(
                "node {:?} has {} samples, training needs {MIN_SAMPLES} (send transactions to it and try again)",
                c.spec.name,
                samples.len()
            )));
        }
        let levels = s.config.priority_levels;
        let models = self.model_store()?;
        let name = c.spec.name.clone();
        let (results, files) = tokio::task::spawn_blocking(move || {
            let mut results = Vec::new();
            let mut files = Vec::new();
            let trained = [
                ("classifier", micro_os_ai::train::classifier(&samples, levels, SEED)),
                ("iforest", micro_os_ai::train::iforest(&samples, SEED)),
                ("forecaster", micro_os_ai::train::forecaster(&samples, SEED)),
            ];
            for (kind, t) in trained {
                match t {
                    Ok(mut f) => {
                        f.module = store_module(kind);
                        f.scope = name.clone();
                        f.trainer = "daemon".into();
                        match models.propose(f) {
                            Ok(p) => {
                                results.push(format!("{kind}: {}", p.reason));
                                files.push(p.file);
                            }
                            Err(e) => results.push(format!("{kind}: not stored: {e}")),
                        }
                    }
                    Err(e) => results.push(format!("{kind}: not trained: {e}")),
                }
            }
            (results, files)
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
        let mut setting = s.clone();
        if setting.scope == EVERY_NODE {
            // a node trained under the every-node setting gets its own record of training
            setting.scope = c.id.clone();
            setting.container = c.spec.name.clone();
        }
        setting.trained_at = now_ms();
        setting.last_training = Some(format!("{}: {}", Utc::now().format("%Y-%m-%d %H:%M:%S"), results.join("; ")));
        self.save_setting(&setting, "trained", Some(results.join("; ")))?;
        tracing::info!("ai: trained transaction models for {}: {}", c.spec.name, results.join("; "));
        let live = self.live_models(&c.spec.name);
        Ok(AiTrainReport {
            module: "transaction".into(),
            container: c.spec.name.clone(),
            results,
            models: files
                .iter()
                .map(|f| model_info(f, live.iter().any(|l| l.module == f.module && l.version == f.version)))
                .collect(),
        })
    }

    /// Runs the loop until the daemon stops.
    pub(super) fn spawn_ai(self: &Arc<Self>) {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ROUND);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                engine.ai_round().await;
            }
        });
    }

    /// One round over this host's running reference-chain nodes and AI service containers.
    async fn ai_round(self: &Arc<Self>) {
        let settings = self.ai_settings();
        if settings.is_empty() {
            return;
        }
        self.ai_services(&settings);
        let nodes = self.containers.filter(|c| {
            c.spec.image == NODE_IMAGE && c.state == ContainerState::Running && !c.spec.config.contains_key("light")
        });
        for c in nodes {
            let setting = Self::effective(&settings, "transaction", &c);
            if let Err(e) = self.ai_reconcile(&c, setting.as_ref()).await {
                tracing::debug!("ai: node {}: {e}", c.spec.name);
            }
        }
    }

    async fn ai_reconcile(self: &Arc<Self>, c: &Container, s: Option<&Setting>) -> Result<()> {
        let info = self.node_rpc(c, "getaiinfo", json!([])).await?;
        let enabled = s.is_some_and(|s| s.enabled);
        let config = s.map(|s| s.config.clone()).unwrap_or_default();
        let info = if info["enabled"].as_bool() != Some(enabled)
            || (enabled && info["config"] != serde_json::to_value(&config).unwrap_or_default())
        {
            self.node_rpc(c, "setaiconfig", json!([enabled, config])).await?
        } else {
            info
        };
        if !enabled {
            let mut views = self.ai.nodes.lock().unwrap();
            let view = views.entry(c.id.clone()).or_default();
            view.info = Some(info);
            view.anomalies = None;
            return Ok(());
        }
        for f in self.live_models(&c.spec.name) {
            let kind = f.module.rsplit('.').next().unwrap_or_default().to_string();
            if kind == "forecaster" {
                continue; // the daemon runs it and sends the node only the batch size
            }
            let has = info[format!("{kind}_version")].as_u64();
            if has != Some(f.version) {
                let model = f.model.get("serving").cloned().unwrap_or(Value::Null);
                self.node_rpc(c, "setaimodel", json!([kind, f.version, model])).await?;
                tracing::info!("ai: {} now serves {kind} v{}", c.spec.name, f.version);
            }
        }
        self.ai_collect(c).await?;
        if let Some(s) = s {
            self.ai_adapt_batch(c, s, &info).await?;
        }
        let info = self.node_rpc(c, "getaiinfo", json!([])).await?;
        self.ai_alert(c, &info);
        self.ai.nodes.lock().unwrap().entry(c.id.clone()).or_default().info = Some(info);
        let Some(s) = s.cloned() else { return Ok(()) };
        let due = s.trained_at + s.config.model_update_interval as i64 * 1000 <= now_ms();
        if due && !self.training_offloaded() {
            let count = tokio::task::block_in_place(|| self.store.ai_sample_count("transaction", &c.id)).unwrap_or(0);
            if count as usize >= MIN_SAMPLES {
                let engine = self.clone();
                let c = c.clone();
                // in its own task: the round goes on for the other nodes
                tokio::spawn(async move {
                    if let Err(e) = engine.train_node(&c, &s).await {
                        tracing::warn!("ai: scheduled training for {}: {e}", c.spec.name);
                    }
                });
            }
        }
        Ok(())
    }

    /// The running containers of an AI service template.
    fn services(&self, template: &str) -> Vec<Container> {
        self.containers.filter(|c| c.state == ContainerState::Running && c.spec.template.as_deref() == Some(template))
    }

    /// Whether an `ai-training` container trains instead of the daemon.
    fn training_offloaded(&self) -> bool {
        !self.services(TRAINING).is_empty()
    }

    /// Publishes the live models to `ai-inference` containers; exports samples to, and
    /// imports the versions of, `ai-training` containers.
    fn ai_services(&self, settings: &[Setting]) {
        for c in self.services(INFERENCE) {
            if let Err(e) = tokio::task::block_in_place(|| self.publish_models(&c)) {
                tracing::warn!("ai: publish models to {}: {e}", c.spec.name);
            }
        }
        for c in self.services(TRAINING) {
            let done = tokio::task::block_in_place(|| {
                self.export_samples(&c, settings)?;
                self.import_models(&c)
            });
            if let Err(e) = done {
                tracing::warn!("ai: training container {}: {e}", c.spec.name);
            }
        }
    }

    fn service_store(&self, c: &Container) -> Result<ModelStore> {
        ModelStore::open(self.state_dir(&c.id).join("data/models")).map_err(|e| Error::internal(e.to_string()))
    }

    fn publish_models(&self, c: &Container) -> Result<()> {
        let (ours, theirs) = (self.model_store()?, self.service_store(c)?);
        let e = |e: micro_os_ai::Error| Error::internal(e.to_string());
        for (module, scope) in ours.list().map_err(e)? {
            let Some(f) = ours.live(&module, &scope).map_err(e)? else { continue };
            if theirs.live(&module, &scope).map_err(e)?.map(|x| x.version) != Some(f.version) {
                theirs.publish(&f).map_err(e)?;
                tracing::info!("ai: {} serves {module} v{} of {scope}", c.spec.name, f.version);
            }
        }
        Ok(())
    }

    /// Writes each node's newest samples to `<data>/samples/<node>.jsonl` when more came.
    fn export_samples(&self, c: &Container, settings: &[Setting]) -> Result<()> {
        let dir = self.state_dir(&c.id).join("data/samples");
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("{}: {e}", dir.display())))?;
        let nodes = self.containers.filter(|n| {
            n.spec.image == NODE_IMAGE && Self::effective(settings, "transaction", n).is_some_and(|s| s.enabled)
        });
        for n in nodes {
            let count = self.store.ai_sample_count("transaction", &n.id)?;
            let key = (c.id.clone(), n.id.clone());
            if self.ai.exported.lock().unwrap().get(&key) == Some(&count) {
                continue;
            }
            let bodies = self.store.ai_samples("transaction", &n.id, TRAIN_ON)?;
            let path = dir.join(format!("{}.jsonl", n.spec.name));
            let tmp = dir.join(format!(".{}.jsonl.tmp", n.spec.name));
            let text: String = bodies.iter().map(|b| format!("{b}\n")).collect();
            std::fs::write(&tmp, text)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| Error::internal(format!("{}: {e}", path.display())))?;
            self.ai.exported.lock().unwrap().insert(key, count);
        }
        Ok(())
    }

    /// Proposes each version a training container made that was not imported yet to the
    /// daemon's store (promoted by the same rule as its own), marking it imported there.
    fn import_models(&self, c: &Container) -> Result<()> {
        let (ours, theirs) = (self.model_store()?, self.service_store(c)?);
        let e = |e: micro_os_ai::Error| Error::internal(e.to_string());
        let root = self.state_dir(&c.id).join("data/models");
        for (module, scope) in theirs.list().map_err(e)? {
            for mut f in theirs.versions(&module, &scope).map_err(e)? {
                let marker = root.join(&module).join(&scope).join(format!("v{}.imported", f.version));
                if marker.exists() {
                    continue;
                }
                let theirs_version = f.version;
                f.trainer = format!("container {}", c.spec.name);
                let p = ours.propose(f).map_err(e)?;
                tracing::info!("ai: {module} v{theirs_version} of {scope} from {}: {}", c.spec.name, p.reason);
                let ev = Event::new(
                    KIND,
                    &scope,
                    &scope,
                    "model-imported",
                    format!("{module} v{theirs_version} from {}: {}", c.spec.name, p.reason),
                );
                self.store.record_event(&ev)?;
                std::fs::write(&marker, p.reason.as_bytes())
                    .map_err(|err| Error::internal(format!("{}: {err}", marker.display())))?;
            }
        }
        Ok(())
    }

    /// The live forecaster of node `c`, loaded once per version.
    fn forecaster_of(&self, c: &Container) -> Option<Arc<Forecast>> {
        let f = self.live_models(&c.spec.name).into_iter().find(|f| f.module.ends_with(".forecaster"))?;
        let mut cache = self.ai.forecasters.lock().unwrap();
        if let Some((v, m)) = cache.get(&c.spec.name) {
            if *v == f.version {
                return Some(m.clone());
            }
        }
        match Forecast::load(&f) {
            Ok(m) => {
                let m = Arc::new(m);
                cache.insert(c.spec.name.clone(), (f.version, m.clone()));
                Some(m)
            }
            Err(e) => {
                tracing::warn!("ai: {}: {e}", c.spec.name);
                None
            }
        }
    }

    /// Forecasts node `c`'s arrivals in the next second from the last two minutes and sets
    /// its batch size from it (`forecast::adaptive_batch`, at most `batch_size`).
    async fn ai_adapt_batch(&self, c: &Container, s: &Setting, info: &Value) -> Result<()> {
        let Some(model) = self.forecaster_of(c) else { return Ok(()) };
        let now_s = now_ms() / 1000;
        let history: Vec<f64> = {
            let views = self.ai.nodes.lock().unwrap();
            let arrivals = views.get(&c.id).map(|v| v.arrivals.clone()).unwrap_or_default();
            (now_s - 120..now_s).map(|t| arrivals.get(&t).copied().unwrap_or(0.0)).collect()
        };
        let forecast = tokio::task::block_in_place(|| model.next(&history));
        let batch = micro_os_ai::forecast::adaptive_batch(forecast, 1, s.config.batch_size);
        if info["adaptive_batch"].as_u64() != Some(u64::from(batch)) {
            self.node_rpc(c, "setaibatch", json!([batch])).await?;
            // a decision of the module: in the event stream, not worth an fsync of its own
            let id = Setting::id(&s.module, &s.scope);
            let ev =
                Event::new(KIND, &id, &c.spec.name, "batch-size", format!("{batch} (forecast {forecast:.1} tx/s)"));
            if let Err(e) = tokio::task::block_in_place(|| self.store.record_event(&ev)) {
                tracing::warn!("ai: record the batch size of {}: {e}", c.spec.name);
            }
        }
        self.ai.nodes.lock().unwrap().entry(c.id.clone()).or_default().forecast = Some((forecast, batch));
        Ok(())
    }

    /// Collects the samples node `c` has taken since the last round into the store.
    async fn ai_collect(&self, c: &Container) -> Result<()> {
        loop {
            let cursor = self.ai.nodes.lock().unwrap().entry(c.id.clone()).or_default().cursor;
            let page = self.node_rpc(c, "getaisamples", json!([cursor, 5000])).await?;
            let samples: Vec<TxSample> = serde_json::from_value(page["samples"].clone())
                .map_err(|e| Error::internal(format!("node {:?} sent samples that do not parse: {e}", c.spec.name)))?;
            let next = page["next"].as_u64().unwrap_or(cursor);
            if samples.is_empty() {
                self.ai.nodes.lock().unwrap().entry(c.id.clone()).or_default().cursor = next;
                return Ok(());
            }
            let rows: Vec<(i64, String)> =
                samples.iter().map(|s| (s.ts, serde_json::to_string(s).unwrap_or_default())).collect();
            {
                let mut views = self.ai.nodes.lock().unwrap();
                let arrivals = &mut views.entry(c.id.clone()).or_default().arrivals;
                for s in &samples {
                    *arrivals.entry(s.ts / 1000).or_insert(0.0) += 1.0;
                }
                let keep_from = now_ms() / 1000 - 600;
                arrivals.retain(|t, _| *t >= keep_from);
            }
            let store = self.store.clone();
            let id = c.id.clone();
            tokio::task::spawn_blocking(move || store.add_ai_samples("transaction", &id, &rows, SAMPLES_KEPT))
                .await
                .map_err(|e| Error::internal(e.to_string()))??;
            self.ai.nodes.lock().unwrap().entry(c.id.clone()).or_default().cursor = next;
            if samples.len() < 5000 {
                return Ok(());
            }
        }
    }

    /// Fires the node's anomaly alert when it held new anomalies, resolves it after a quiet
    /// minute.
    fn ai_alert(&self, c: &Container, info: &Value) {
        let count = info["counters"]["anomalies"].as_u64().unwrap_or(0);
        let now = now_ms();
        let mut views = self.ai.nodes.lock().unwrap();
        let view = views.entry(c.id.clone()).or_default();
        let before = view.anomalies.replace(count);
        let new = match before {
            Some(b) if count >= b => count - b,
            // a restarted node counts from 0 again
            Some(_) => count,
            // first look since the daemon started: only what comes next is new
            None => 0,
        };
        if new > 0 {
            match &mut view.alert {
                Some((_, last)) => *last = now,
                None => {
                    let held = info["recent_anomalies"].as_array().cloned().unwrap_or_default();
                    let top = held.iter().max_by(|a, b| {
                        a["score"].as_f64().unwrap_or(0.0).total_cmp(&b["score"].as_f64().unwrap_or(0.0))
                    });
                    let score = top.and_then(|t| t["score"].as_f64()).unwrap_or(0.0);
                    let why = top.map_or(String::new(), |t| {
                        let profile =
                            self.live_models(&c.spec.name).into_iter().find(|f| f.module.ends_with("iforest"));
                        let why = profile
                            .and_then(|f| micro_os_ai::train::explain(&f.model, &t["features"]))
                            .unwrap_or_else(|| "its features as a whole".into());
                        format!(" (e.g. {}: score {score:.3}, unusual in {why})", t["txid"].as_str().unwrap_or("?"))
                    });
                    let threshold = info["config"]["anomaly_threshold"].as_f64().unwrap_or(0.0);
                    let algorithm = self
                        .live_models(&c.spec.name)
                        .into_iter()
                        .find(|f| f.module.ends_with("iforest"))
                        .and_then(|f| f.model["algorithm"].as_str().map(str::to_string))
                        .unwrap_or_else(|| "the live model".into());
                    let alert = Alert {
                        id: 0,
                        rule: "ai-tx-anomaly".into(),
                        object: format!("container/{}", c.spec.name),
                        severity: Severity::Degraded,
                        source: "ai".into(),
                        value: score,
                        message: format!(
                            "transaction optimiser on node {}: {new} transactions flagged as anomalies \
                             (score >= {threshold} by {algorithm}){why}",
                            c.spec.name
                        ),
                        fired_at: Utc::now(),
                        resolved_at: None,
                    };
                    match tokio::task::block_in_place(|| self.store.insert_alert(&alert)) {
                        Ok(id) => {
                            tracing::warn!("alert {} fired: {}", alert.rule, alert.message);
                            view.alert = Some((id, now));
                        }
                        Err(e) => tracing::warn!("ai: store alert: {e}"),
                    }
                }
            }
        } else if let Some((id, last)) = view.alert {
            if now - last >= QUIET_MS {
                if let Err(e) = tokio::task::block_in_place(|| self.store.resolve_alert(id, Utc::now())) {
                    tracing::warn!("ai: resolve alert: {e}");
                }
                view.alert = None;
            }
        }
    }
}
