//! The model store: every version of every model as a file
//! `<dir>/<module>/<scope>/v<N>.json` with its report, and a `live` file naming the
//! version that serves. Files are written atomically (a temporary file, fsync, rename,
//! fsync of the directory), so a crash leaves the old version or the new one, never half.
//! A new version goes live only if it scores at least as well as the live one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// A trained model and its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub module: String,
    pub scope: String,
    /// Given by the store when the file is proposed.
    pub version: u64,
    pub created_unix: u64,
    /// Samples trained and tested on.
    pub data_size: u64,
    pub seed: u64,
    /// Scores on held-back data.
    pub metrics: BTreeMap<String, f64>,
    /// The baseline's scores on the same data.
    pub baseline_metrics: BTreeMap<String, f64>,
    /// The metric promotion compares (higher is better).
    pub primary_metric: String,
    /// The model itself and what the module needs to serve it.
    pub model: Value,
    /// Who trained it: `daemon`, or the container that did (`ai-training`).
    #[serde(default)]
    pub trainer: String,
    /// The primary metric is an error (lower is better), as a forecaster's MAE.
    #[serde(default)]
    pub lower_is_better: bool,
}

impl ModelFile {
    /// The primary metric.
    pub fn score(&self) -> f64 {
        let worst = if self.lower_is_better { f64::INFINITY } else { f64::NEG_INFINITY };
        self.metrics.get(&self.primary_metric).copied().unwrap_or(worst)
    }

    /// Whether it scores at least as well as `other`.
    pub fn at_least_as_good_as(&self, other: &ModelFile) -> bool {
        if self.lower_is_better {
            self.score() <= other.score()
        } else {
            self.score() >= other.score()
        }
    }
}

/// What became of a proposed version.
#[derive(Debug, Clone)]
pub struct Promotion {
    pub promoted: bool,
    /// E.g. `v4 is live (macro_f1 0.93 >= 0.91 of v3)` or `kept v3: v4 scored macro_f1 0.61 < 0.64`.
    pub reason: String,
    /// The file as stored, with its version.
    pub file: ModelFile,
}

pub struct ModelStore {
    dir: PathBuf,
}

fn check_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Name { what, name: name.into() })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Writes `bytes` to `path` atomically and durably.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("model")));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl ModelStore {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(ModelStore { dir })
    }

    fn scope_dir(&self, module: &str, scope: &str) -> Result<PathBuf> {
        check_name("module", module)?;
        check_name("scope", scope)?;
        Ok(self.dir.join(module).join(scope))
    }

    fn read(path: &Path) -> Result<ModelFile> {
        let text = fs::read(path).map_err(io(path))?;
        serde_json::from_slice(&text).map_err(|source| Error::Corrupt { path: path.into(), source })
    }

    /// Version numbers stored for `module` and `scope`, ascending.
    fn version_numbers(&self, module: &str, scope: &str) -> Result<Vec<u64>> {
        let dir = self.scope_dir(module, scope)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut v: Vec<u64> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix('v')?.strip_suffix(".json")?.parse().ok())
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    pub fn versions(&self, module: &str, scope: &str) -> Result<Vec<ModelFile>> {
        let dir = self.scope_dir(module, scope)?;
        self.version_numbers(module, scope)?.into_iter().map(|n| Self::read(&dir.join(format!("v{n}.json")))).collect()
    }

    /// The version that serves, if any.
    pub fn live(&self, module: &str, scope: &str) -> Result<Option<ModelFile>> {
        let dir = self.scope_dir(module, scope)?;
        let live = dir.join("live");
        let n: u64 = match fs::read_to_string(&live) {
            Ok(s) => s.trim().parse().map_err(|_| Error::Io {
                path: live.clone(),
                source: std::io::Error::other(format!("{s:?} is not a version")),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&live)(e)),
        };
        Self::read(&dir.join(format!("v{n}.json"))).map(Some)
    }

    /// Every (module, scope) with models, sorted.
    pub fn list(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let names = |d: &Path| -> Result<Vec<String>> {
            let mut v: Vec<String> = fs::read_dir(d)
                .map_err(io(d))?
                .filter_map(|e| {
                    let e = e.ok()?;
                    e.file_type().ok()?.is_dir().then(|| e.file_name().to_str().map(str::to_string))?
                })
                .filter(|n| !n.starts_with('.'))
                .collect();
            v.sort();
            Ok(v)
        };
        for module in names(&self.dir)? {
            for scope in names(&self.dir.join(&module))? {
                out.push((module.clone(), scope));
            }
        }
        Ok(out)
    }

    /// Mirrors `file` (a version of another store) here as it is, and makes it live: how
    /// the daemon publishes its live models to a service's store.
    pub fn publish(&self, file: &ModelFile) -> Result<()> {
        let dir = self.scope_dir(&file.module, &file.scope)?;
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("v{}.json", file.version));
        if !path.exists() {
            write_atomic(&path, &serde_json::to_vec(file).map_err(|e| Error::Model(e.to_string()))?)?;
        }
        write_atomic(&dir.join("live"), file.version.to_string().as_bytes())
    }

    /// Stores `file` as the next version of its module and scope, and makes it live if it
    /// scores at least as well as the live version (or none is live).
    pub fn propose(&self, mut file: ModelFile) -> Result<Promotion> {
        let dir = self.scope_dir(&file.module, &file.scope)?;
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        file.version = self.version_numbers(&file.module, &file.scope)?.last().copied().unwrap_or(0) + 1;
        let bytes = serde_json::to_vec(&file).map_err(|e| Error::Model(e.to_string()))?;
        write_atomic(&dir.join(format!("v{}.json", file.version)), &bytes)?;
        let live = self.live(&file.module, &file.scope)?;
        let metric = &file.primary_metric;
        let (promoted, reason) = match &live {
            None => (true, format!("v{} is live ({metric} {:.4}, the first version)", file.version, file.score())),
            Some(l) if file.at_least_as_good_as(l) => (
                true,
                format!(
                    "v{} is live ({metric} {:.4} {} {:.4} of v{})",
                    file.version,
                    file.score(),
                    if file.lower_is_better { "<=" } else { ">=" },
                    l.score(),
                    l.version
                ),
            ),
            Some(l) => (
                false,
                format!(
                    "kept v{}: v{} scored {metric} {:.4} {} {:.4}",
                    l.version,
                    file.version,
                    file.score(),
                    if file.lower_is_better { ">" } else { "<" },
                    l.score()
                ),
            ),
        };
        if promoted {
            write_atomic(&dir.join("live"), file.version.to_string().as_bytes())?;
        }
        Ok(Promotion { promoted, reason, file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(score: f64) -> ModelFile {
        ModelFile {
            module: "transaction.classifier".into(),
            scope: "eth-node-1".into(),
            version: 0,
            created_unix: 1,
            data_size: 500,
            seed: 7,
            metrics: BTreeMap::from([("macro_f1".into(), score)]),
            baseline_metrics: BTreeMap::from([("macro_f1".into(), 0.5)]),
            primary_metric: "macro_f1".into(),
            model: serde_json::json!({"w": score}),
            trainer: "daemon".into(),
            lower_is_better: false,
        }
    }

    #[test]
    fn a_worse_version_is_stored_but_not_promoted_and_all_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open(dir.path()).unwrap();
        let p1 = s.propose(model(0.8)).unwrap();
        assert!(p1.promoted && p1.file.version == 1, "{}", p1.reason);
        let p2 = s.propose(model(0.7)).unwrap();
        assert!(!p2.promoted);
        assert_eq!(p2.reason, "kept v1: v2 scored macro_f1 0.7000 < 0.8000");
        let p3 = s.propose(model(0.8)).unwrap();
        assert!(p3.promoted, "as good is good enough: {}", p3.reason);
        let again = ModelStore::open(dir.path()).unwrap();
        assert_eq!(again.live("transaction.classifier", "eth-node-1").unwrap().unwrap().version, 3);
        assert_eq!(again.versions("transaction.classifier", "eth-node-1").unwrap().len(), 3);
        assert_eq!(again.list().unwrap(), vec![("transaction.classifier".to_string(), "eth-node-1".to_string())]);
        assert!(again.live("transaction.iforest", "eth-node-1").unwrap().is_none());
        // no temporary file is left behind
        let left: Vec<_> = fs::read_dir(dir.path().join("transaction.classifier/eth-node-1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn an_error_metric_promotes_the_lower() {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open(dir.path()).unwrap();
        let err = |mae: f64| ModelFile {
            module: "transaction.forecaster".into(),
            primary_metric: "mae".into(),
            metrics: BTreeMap::from([("mae".into(), mae)]),
            lower_is_better: true,
            ..model(0.0)
        };
        assert!(s.propose(err(3.0)).unwrap().promoted);
        let worse = s.propose(err(4.0)).unwrap();
        assert!(!worse.promoted);
        assert_eq!(worse.reason, "kept v1: v2 scored mae 4.0000 > 3.0000");
        assert!(s.propose(err(2.5)).unwrap().promoted);
    }

    #[test]
    fn a_published_version_is_live_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open(dir.path()).unwrap();
        let mut m = model(0.4);
        m.version = 7;
        s.publish(&m).unwrap();
        assert_eq!(s.live("transaction.classifier", "eth-node-1").unwrap().unwrap(), m, "kept its version and score");
    }

    #[test]
    fn unsafe_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = ModelStore::open(dir.path()).unwrap();
        for bad in ["../x", ".hidden", "a/b", ""] {
            let mut m = model(0.5);
            m.scope = bad.into();
            let e = s.propose(m).unwrap_err().to_string();
            assert!(e.contains("is not a valid name"), "{bad}: {e}");
        }
    }
}
