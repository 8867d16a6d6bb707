//! `micro-os ai …`: the AI layer's modules, their configuration, training and models.

use micro_os_api::types::{AiConfigure, AiDisable, AiEnable, AiModelInfo, AiModuleStatus, AiTrain, AiTrainReport};

use super::args::AiCmd;
use super::client::{CliError, CliResult, Client};
use super::output::{print, table};

/// A metric as a table shows it: up to 3 decimals.
fn metric(m: &std::collections::BTreeMap<String, f64>, key: &str) -> String {
    m.get(key).map_or("-".into(), |v| format!("{v:.3}"))
}

fn models_table(models: &[AiModelInfo]) -> String {
    let rows = models
        .iter()
        .map(|m| {
            vec![
                m.module.clone(),
                m.container.clone(),
                m.kind.clone(),
                format!("v{}{}", m.version, if m.live { " (live)" } else { "" }),
                m.algorithm.clone(),
                m.data_size.to_string(),
                format!("{} {}", m.primary_metric, metric(&m.metrics, &m.primary_metric)),
                format!("{} {}", m.baseline, metric(&m.baseline_metrics, &m.primary_metric)),
                m.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    table(&["MODULE", "CONTAINER", "MODEL", "VERSION", "SERVING", "SAMPLES", "SCORE", "BASELINE", "CREATED"], rows)
}

fn modules_table(modules: &[AiModuleStatus]) -> String {
    let rows = modules
        .iter()
        .map(|m| {
            let state = match (m.available, m.enabled) {
                (false, _) => "not available".to_string(),
                (true, true) => "enabled".into(),
                (true, false) => "disabled".into(),
            };
            let live: Vec<String> = m.models.iter().map(|x| format!("{} v{}", x.kind, x.version)).collect();
            let node = m.node.as_ref().map_or("-".to_string(), |n| {
                let c = &n["counters"];
                format!(
                    "queued {} held {} batches {} reordered {} anomalies {}",
                    n["queued"], n["held"], c["batches"], c["reordered"], c["anomalies"]
                )
            });
            let config = match &m.config {
                serde_json::Value::Object(o) if !o.is_empty() => {
                    o.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
                }
                _ => "-".into(),
            };
            vec![
                m.module.clone(),
                m.container.clone(),
                state,
                config,
                m.samples.to_string(),
                if live.is_empty() { "-".into() } else { live.join(", ") },
                m.note.clone().unwrap_or(node),
            ]
        })
        .collect();
    table(&["MODULE", "CONTAINER", "STATE", "CONFIG", "SAMPLES", "LIVE MODELS", "ACTIVITY"], rows)
}

/// The JSON of `--config FILE`, read here so the daemon never reads a client's path.
fn read_config(path: &std::path::Path) -> CliResult<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("config file {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        CliError::usage(format!(
            "config file {} is not JSON: {e} (see `micro-os ai config --help` for the keys)",
            path.display()
        ))
    })
}

pub fn run(client: &Client, cmd: AiCmd) -> CliResult<i32> {
    match cmd {
        AiCmd::Enable { module, all, container, config, format } => {
            let config = config.as_deref().map(read_config).transpose()?;
            let m: Vec<AiModuleStatus> =
                client.call("POST", "/ai/enable", Some(&AiEnable { module, all, container, config }))?;
            print(format, &m, |m| modules_table(m))?;
        }
        AiCmd::Disable { module, all, container } => {
            let m: Vec<AiModuleStatus> =
                client.call("POST", "/ai/disable", Some(&AiDisable { module, all, container }))?;
            println!("{}", modules_table(&m));
        }
        AiCmd::Config { module, container, set, format } => {
            let m: Vec<AiModuleStatus> =
                client.call("POST", "/ai/config", Some(&AiConfigure { module, container, set }))?;
            print(format, &m, |m| modules_table(m))?;
        }
        AiCmd::Status { format } => {
            let m: Vec<AiModuleStatus> = client.call("GET", "/ai", None::<&()>)?;
            print(format, &m, |m| modules_table(m))?;
        }
        AiCmd::Train { module, container, format } => {
            let r: Vec<AiTrainReport> = client.call("POST", "/ai/train", Some(&AiTrain { module, container }))?;
            print(format, &r, |r| {
                r.iter()
                    .map(|r| format!("{} on {}:\n  {}", r.module, r.container, r.results.join("\n  ")))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        AiCmd::Models { format } => {
            let m: Vec<AiModelInfo> = client.call("GET", "/ai/models", None::<&()>)?;
            print(format, &m, |m| models_table(m))?;
        }
    }
    Ok(0)
}
