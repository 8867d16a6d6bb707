//! The transaction optimiser's configuration, as the spec writes it
//! (`tx_optimizer_config`), its schema, presets and `--set key=value` changes.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{Error, Result};

/// `tx_optimizer_config`. Missing keys take their defaults; unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TxOptimizerConfig {
    /// Transactions validated per batch.
    pub batch_size: u32,
    /// Priority classes the classifier sorts transactions into (0 is served first).
    pub priority_levels: u32,
    /// An isolation-forest score at or above this holds a transaction back as an anomaly.
    pub anomaly_threshold: f64,
    /// Seconds between retrainings.
    pub model_update_interval: u64,
}

impl Default for TxOptimizerConfig {
    fn default() -> Self {
        TxOptimizerConfig { batch_size: 128, priority_levels: 3, anomaly_threshold: 0.85, model_update_interval: 3600 }
    }
}

/// Each key: its type, range and meaning.
pub const KEYS: &[(&str, &str, f64, f64, &str)] = &[
    ("batch_size", "integer", 1.0, 65536.0, "transactions validated per batch"),
    ("priority_levels", "integer", 2.0, 16.0, "priority classes (0 is served first)"),
    ("anomaly_threshold", "number", 0.0, 1.0, "isolation-forest score that holds a transaction back (exclusive range)"),
    ("model_update_interval", "integer", 60.0, 604800.0, "seconds between retrainings"),
];

/// The documented presets: `default`, and the spec's `tx_opt_high_throughput.json`.
pub const PRESETS: &[&str] = &["default", "high_throughput"];

fn known() -> String {
    KEYS.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
}

impl TxOptimizerConfig {
    /// A preset by name.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "default" => Ok(Self::default()),
            "high_throughput" => Ok(TxOptimizerConfig {
                batch_size: 256,
                priority_levels: 4,
                anomaly_threshold: 0.9,
                model_update_interval: 1800,
            }),
            _ => Err(Error::Config(format!("preset {name:?} is unknown (use {})", PRESETS.join(", ")))),
        }
    }

    /// Parses a configuration file's text and checks it.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("the configuration is not JSON: {e}")))?;
        let Value::Object(o) = &v else {
            return Err(Error::Config(
                "the configuration is not a JSON object of keys (e.g. {\"batch_size\": 256})".into(),
            ));
        };
        if let Some(k) = o.keys().find(|k| !KEYS.iter().any(|x| x.0 == k.as_str())) {
            return Err(Error::Config(format!("key {k:?} is unknown (the keys are {})", known())));
        }
        let c: Self =
            serde_json::from_value(v.clone()).map_err(|e| Error::Config(format!("the configuration: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks every value against its range.
    pub fn validate(&self) -> Result<()> {
        let range = |key: &str, v: String| -> Error {
            let (_, _, lo, hi, _) = KEYS.iter().find(|k| k.0 == key).copied().unwrap_or(("", "", 0.0, 0.0, ""));
            match key {
                "anomaly_threshold" => {
                    Error::Config(format!("{key} {v:?} is out of range (a number between 0 and 1, e.g. 0.85)"))
                }
                _ => Error::Config(format!("{key} {v:?} is out of range {lo}..={hi}")),
            }
        };
        if !(1..=65536).contains(&self.batch_size) {
            return Err(range("batch_size", self.batch_size.to_string()));
        }
        if !(2..=16).contains(&self.priority_levels) {
            return Err(range("priority_levels", self.priority_levels.to_string()));
        }
        if !(self.anomaly_threshold > 0.0 && self.anomaly_threshold < 1.0) {
            return Err(range("anomaly_threshold", self.anomaly_threshold.to_string()));
        }
        if !(60..=604_800).contains(&self.model_update_interval) {
            return Err(range("model_update_interval", self.model_update_interval.to_string()));
        }
        Ok(())
    }

    /// Applies one `key=value`.
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (key, value) = assignment
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| Error::Config(format!("{assignment:?} is not key=value (e.g. batch_size=256)")))?;
        let not = |what: &str| Error::Config(format!("{key} {value:?} is not {what}"));
        match key {
            "batch_size" => self.batch_size = value.parse().map_err(|_| not("a whole number (1..=65536)"))?,
            "priority_levels" => self.priority_levels = value.parse().map_err(|_| not("a whole number (2..=16)"))?,
            "anomaly_threshold" => {
                self.anomaly_threshold = value.parse().map_err(|_| not("a number between 0 and 1"))?
            }
            "model_update_interval" => {
                self.model_update_interval =
                    value.parse().map_err(|_| not("a whole number of seconds (60..=604800)"))?
            }
            _ => return Err(Error::Config(format!("key {key:?} is unknown (the keys are {})", known()))),
        }
        self.validate()
    }

    /// A copy with every assignment applied, or the first error; `self` is unchanged.
    pub fn apply_sets(&self, assignments: &[String]) -> Result<Self> {
        let mut c = self.clone();
        for a in assignments {
            c.set(a)?;
        }
        Ok(c)
    }

    /// The schema the API serves: each key's type, default, bounds and meaning.
    pub fn schema() -> Value {
        let d = serde_json::to_value(Self::default()).unwrap_or_default();
        let keys: serde_json::Map<String, Value> = KEYS
            .iter()
            .map(|(k, t, lo, hi, about)| {
                (k.to_string(), json!({ "type": t, "default": d[k], "min": lo, "max": hi, "description": about }))
            })
            .collect();
        Value::Object(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_specs() {
        let c = TxOptimizerConfig::from_json_str("{}").unwrap();
        assert_eq!(c, TxOptimizerConfig::default());
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"batch_size": 128, "priority_levels": 3, "anomaly_threshold": 0.85, "model_update_interval": 3600})
        );
    }

    #[test]
    fn the_high_throughput_preset_reads_as_its_file() {
        let file =
            r#"{"batch_size": 256, "priority_levels": 4, "anomaly_threshold": 0.9, "model_update_interval": 1800}"#;
        assert_eq!(
            TxOptimizerConfig::from_json_str(file).unwrap(),
            TxOptimizerConfig::preset("high_throughput").unwrap()
        );
    }

    fn check(sets: &[&str], expect: std::result::Result<(u32, u32), &str>) {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let base = TxOptimizerConfig::default();
        match (base.apply_sets(&sets), expect) {
            (Ok(c), Ok((b, p))) => assert_eq!((c.batch_size, c.priority_levels), (b, p), "{sets:?}"),
            (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{sets:?}: {e}"),
            (got, want) => panic!("{sets:?}: got {got:?}, want {want:?}"),
        }
        assert_eq!(base, TxOptimizerConfig::default(), "the original is untouched");
    }

    #[test]
    fn sets_are_checked_all_or_nothing() {
        check(&["batch_size=256", "priority_levels=4"], Ok((256, 4)));
        check(&["batch_size=0"], Err("batch_size \"0\" is out of range 1..=65536"));
        check(&["batch_size=many"], Err("batch_size \"many\" is not a whole number"));
        check(&["priority_levels=1"], Err("priority_levels \"1\" is out of range 2..=16"));
        check(&["anomaly_threshold=1"], Err("anomaly_threshold \"1\" is out of range"));
        check(&["model_update_interval=59"], Err("out of range 60..=604800"));
        check(&["batch_size=256", "colour=blue"], Err("key \"colour\" is unknown (the keys are batch_size"));
        check(&["batch_size"], Err("is not key=value"));
    }

    #[test]
    fn files_name_what_is_wrong() {
        let e = TxOptimizerConfig::from_json_str("batch_size: 1").unwrap_err().to_string();
        assert!(e.contains("is not JSON"), "{e}");
        let e = TxOptimizerConfig::from_json_str(r#"{"batch_size": 1, "speed": 3}"#).unwrap_err().to_string();
        assert!(e.contains("key \"speed\" is unknown"), "{e}");
        let e = TxOptimizerConfig::from_json_str(r#"{"batch_size": 0}"#).unwrap_err().to_string();
        assert!(e.contains("batch_size \"0\" is out of range"), "{e}");
        assert!(TxOptimizerConfig::preset("fast").is_err());
        assert_eq!(TxOptimizerConfig::schema()["batch_size"]["default"], 128);
    }
}
