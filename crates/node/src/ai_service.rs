//! The AI layer's services, run in containers by the templates `ai-inference` and
//! `ai-training` (`micro-os-node ai-serve`, `micro-os-node ai-train`).
//!
//! - **ai-serve** answers `POST /score` with the priority class and anomaly score of
//!   transactions, from the live models of a model store directory (the daemon publishes
//!   its live versions into the container's data volume); `GET /models` lists them. A model
//!   whose `live` version changes is loaded again within a second.
//! - **ai-train** trains the transaction optimiser's models on the samples in
//!   `<data>/samples/<node>.jsonl` (the daemon exports them there) every `--interval`
//!   seconds and proposes each version to the model store in `<data>/models`, where the
//!   daemon picks it up and promotes it by its own rule.
//!
//! Key design decision: the services read and write files in the layout of
//! [`micro_os_ai::ModelStore`] and nothing else; they never reach the daemon, so a service
//! container needs no token and no route to the host.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use micro_os_ai::{AnomalyModel, Classifier, ModelFile, ModelStore, TxFeatures, TxSample};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The model store's module names of the transaction optimiser's two models.
pub const CLASSIFIER: &str = "transaction.classifier";
pub const ANOMALY: &str = "transaction.iforest";
pub const FORECASTER: &str = "transaction.forecaster";
/// How long a loaded model is trusted before its `live` file is read again.
const RECHECK: Duration = Duration::from_secs(1);

/// A live model and its version.
type Versioned<T> = Option<(u64, Arc<T>)>;

/// The live models of one scope (a node).
struct Live {
    checked: Instant,
    classifier: Versioned<Classifier>,
    anomaly: Versioned<AnomalyModel>,
}

struct Served {
    store: ModelStore,
    dir: PathBuf,
    live: Mutex<HashMap<String, Live>>,
}

/// `POST /score`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// The node whose models score them (its container's name).
    pub scope: String,
    pub transactions: Vec<TxFeatures>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Scored {
    /// The priority class (0 is served first), when a classifier is live.
    pub class: Option<u32>,
    /// The anomaly score in (0, 1), when an anomaly model is live.
    pub score: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ScoreReply {
    pub scope: String,
    pub classifier_version: Option<u64>,
    pub anomaly_version: Option<u64>,
    pub results: Vec<Scored>,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn serving<T: serde::de::DeserializeOwned>(f: &ModelFile) -> Result<T, String> {
    serde_json::from_value(f.model.get("serving").cloned().unwrap_or(Value::Null))
        .map_err(|e| format!("{} v{} of {} does not load: {e}", f.module, f.version, f.scope))
}

impl Served {
    /// The live models of `scope`, loaded again when their version changed.
    fn live(&self, scope: &str) -> Result<(Versioned<Classifier>, Versioned<AnomalyModel>), String> {
        let mut cache = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = cache.get(scope).filter(|l| l.checked.elapsed() < RECHECK) {
            return Ok((l.classifier.clone(), l.anomaly.clone()));
        }
        let read = |module: &str| self.store.live(module, scope).map_err(|e| e.to_string());
        let (c, a) = (read(CLASSIFIER)?, read(ANOMALY)?);
        let old = cache.remove(scope);
        let classifier = match (c, old.as_ref().and_then(|o| o.classifier.clone())) {
            (Some(f), Some((v, m))) if f.version == v => Some((v, m)),
            (Some(f), _) => Some((f.version, Arc::new(serving::<Classifier>(&f)?))),
            (None, _) => None,
        };
        let anomaly = match (a, old.and_then(|o| o.anomaly)) {
            (Some(f), Some((v, m))) if f.version == v => Some((v, m)),
            (Some(f), _) => Some((f.version, Arc::new(serving::<AnomalyModel>(&f)?))),
            (None, _) => None,
        };
        cache.insert(
            scope.to_string(),
            Live { checked: Instant::now(), classifier: classifier.clone(), anomaly: anomaly.clone() },
        );
        Ok((classifier, anomaly))
    }
}

async fn score(State(s): State<Arc<Served>>, Json(req): Json<ScoreRequest>) -> Response {
    let s2 = s.clone();
    let scope = req.scope.clone();
    let live = tokio::task::spawn_blocking(move || s2.live(&scope)).await;
    let (classifier, anomaly) = match live {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if classifier.is_none() && anomaly.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no live model for {:?} in {} (the daemon publishes a node's models here once they are trained)",
                req.scope,
                s.dir.display()
            ),
        );
    }
    let rows: Vec<[f64; 6]> = req.transactions.iter().map(TxFeatures::to_vec).collect();
    let classes = classifier.as_ref().map(|(_, m)| m.predict(&rows));
    let results = rows
        .iter()
        .enumerate()
        .map(|(i, r)| Scored {
            class: classes.as_ref().and_then(|c| c.get(i).copied()),
            score: anomaly.as_ref().map(|(_, m)| m.score(r)),
        })
        .collect();
    Json(ScoreReply {
        scope: req.scope,
        classifier_version: classifier.map(|c| c.0),
        anomaly_version: anomaly.map(|a| a.0),
        results,
    })
    .into_response()
}

async fn models(State(s): State<Arc<Served>>) -> Response {
    let listed = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        for (module, scope) in s.store.list().map_err(|e| e.to_string())? {
            if let Some(f) = s.store.live(&module, &scope).map_err(|e| e.to_string())? {
                out.push(json!({
                    "module": module, "scope": scope, "version": f.version,
                    "algorithm": f.model.get("algorithm"), "primary_metric": f.primary_metric,
                    "metrics": f.metrics, "baseline_metrics": f.baseline_metrics, "data_size": f.data_size,
                }));
            }
        }
        Ok(out)
    })
    .await;
    match listed {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The router of `ai-serve` over the model store in `dir`.
pub fn router(dir: &Path) -> Result<Router, String> {
    let store = ModelStore::open(dir).map_err(|e| e.to_string())?;
    let served = Arc::new(Served { store, dir: dir.to_path_buf(), live: Mutex::new(HashMap::new()) });
    Ok(Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/models", get(models))
        .route("/score", post(score))
        .with_state(served))
}

/// Serves `dir`'s live models on `listen` until the process ends.
pub async fn serve(dir: &Path, listen: SocketAddr) -> Result<(), String> {
    let app = router(dir)?;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("listen on {listen}: {e}"))?;
    tracing::info!("ai-serve: scoring with the live models of {} on http://{listen}", dir.display());
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

/// One round of `ai-train`: every `<data>/samples/<node>.jsonl` with enough samples trains
/// both models, each proposed to `<data>/models`. Returns one line per node and model.
pub fn train_once(data: &Path, levels: u32, seed: u64) -> Vec<String> {
    let samples_dir = data.join("samples");
    let store = match ModelStore::open(data.join("models")) {
        Ok(s) => s,
        Err(e) => return vec![format!("model store: {e}")],
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&samples_dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "jsonl")).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let Some(scope) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                out.push(format!("{scope}: {}: {e}", path.display()));
                continue;
            }
        };
        let samples: Vec<TxSample> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if samples.len() < micro_os_ai::train::MIN_SAMPLES {
            out.push(format!("{scope}: {} samples, training needs {}", samples.len(), micro_os_ai::train::MIN_SAMPLES));
            continue;
        }
        let runs = [
            (CLASSIFIER, micro_os_ai::train::classifier(&samples, levels, seed)),
            (ANOMALY, micro_os_ai::train::iforest(&samples, seed)),
            (FORECASTER, micro_os_ai::train::forecaster(&samples, seed)),
        ];
        for (module, run) in runs {
            let line = match run {
                Ok(mut f) => {
                    f.module = module.into();
                    f.scope = scope.clone();
                    f.trainer = "ai-training".into();
                    match store.propose(f) {
                        Ok(p) => p.reason,
                        Err(e) => format!("not stored: {e}"),
                    }
                }
                Err(e) => format!("not trained: {e}"),
            };
            out.push(format!("{scope}: {module} on {} samples: {line}", samples.len()));
        }
    }
    if out.is_empty() {
        out.push(format!("no samples in {} yet", samples_dir.display()));
    }
    out
}

/// `ai-train`: a round every `interval`, or one with `once`.
pub async fn train_loop(data: PathBuf, interval: Duration, levels: u32, once: bool) {
    loop {
        let d = data.clone();
        let t = Instant::now();
        match tokio::task::spawn_blocking(move || train_once(&d, levels, 14)).await {
            Ok(lines) => {
                for l in lines {
                    tracing::info!("ai-train: {l}");
                }
            }
            Err(e) => tracing::error!("ai-train: a round panicked: {e}"),
        }
        tracing::info!("ai-train: round took {:.1} s; next in {} s", t.elapsed().as_secs_f64(), interval.as_secs());
        if once {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn samples(n: usize) -> String {
        (0..n)
            .map(|i| {
                let fee = 1.0 + (i % 10) as f64 * 9.0;
                let s = TxSample {
                    seq: i as u64 + 1,
                    ts: i as i64,
                    txid: format!("{i:064x}"),
                    features: TxFeatures {
                        fee_rate: fee,
                        vsize: 110.0 + (i % 3) as f64 * 68.0,
                        inputs: 1.0 + (i % 3) as f64,
                        outputs: 2.0,
                        sender_history: (i % 4) as f64,
                        coin_age: (i % 7) as f64,
                    },
                    class: 0,
                    score: None,
                    wait_ms: 0.1,
                    outcome: "accepted".into(),
                    source: "wallet".into(),
                    held: false,
                };
                serde_json::to_string(&s).unwrap() + "\n"
            })
            .collect()
    }

    async fn post(app: &Router, body: Value) -> (StatusCode, Value) {
        let req = axum::http::Request::post("/score")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn trained_in_one_directory_served_from_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("samples")).unwrap();
        std::fs::write(dir.path().join("samples/eth-node-1.jsonl"), samples(300)).unwrap();
        std::fs::write(dir.path().join("samples/quiet.jsonl"), samples(20)).unwrap();
        let lines = train_once(dir.path(), 3, 1);
        assert!(
            lines.iter().any(|l| l.starts_with("eth-node-1: transaction.classifier on 300 samples: v1 is live")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("eth-node-1: transaction.iforest on 300 samples: v1 is live")),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l == "quiet: 20 samples, training needs 200"), "{lines:?}");

        let app = router(&dir.path().join("models")).unwrap();
        let rich =
            TxFeatures { fee_rate: 82.0, vsize: 110.0, inputs: 1.0, outputs: 2.0, sender_history: 0.0, coin_age: 1.0 };
        let poor = TxFeatures { fee_rate: 1.0, ..rich.clone() };
        let (status, reply) = post(&app, json!({"scope": "eth-node-1", "transactions": [rich, poor]})).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!((reply["classifier_version"].as_u64(), reply["anomaly_version"].as_u64()), (Some(1), Some(1)));
        assert_eq!(reply["results"][0]["class"], 0, "{reply}");
        assert_eq!(reply["results"][1]["class"], 2, "{reply}");
        assert!(reply["results"][0]["score"].as_f64().is_some_and(|s| s > 0.0 && s < 1.0), "{reply}");
        let (status, reply) = post(&app, json!({"scope": "nobody", "transactions": []})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(reply["error"].as_str().unwrap().contains("no live model for \"nobody\""), "{reply}");
        let (status, _) = post(&app, json!({"scope": "eth-node-1", "transactions": [], "extra": 1})).await;
        assert!(status.is_client_error());

        // a second round proposes v2; the server picks it up within a second
        train_once(dir.path(), 3, 1);
        tokio::time::sleep(RECHECK + Duration::from_millis(50)).await;
        let (_, reply) = post(&app, json!({"scope": "eth-node-1", "transactions": [rich]})).await;
        assert_eq!(reply["classifier_version"], 2, "{reply}");
    }
}
