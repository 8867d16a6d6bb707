use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// How a container's health is probed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum HealthProbe {
    /// Run a command inside the container; exit 0 is healthy.
    Command {
        #[cfg_attr(feature = "openapi", schema(min_items = 1))]
        command: Vec<String>,
    },
    /// Connect to a TCP port inside the container's network namespace.
    Tcp {
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
        port: u16,
    },
    /// GET a path on a port inside the container's network namespace; 2xx/3xx is healthy.
    Http {
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
        port: u16,
        #[serde(default = "root_path")]
        #[cfg_attr(feature = "openapi", schema(pattern = "^/"))]
        path: String,
    },
}

fn root_path() -> String {
    "/".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthCheck {
    #[serde(flatten)]
    pub probe: HealthProbe,
    /// Seconds between probes.
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0, maximum = 86400))]
    #[serde(default = "default_interval")]
    pub interval_s: f64,
    /// Seconds a probe may take before it counts as failed.
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0, maximum = 86400))]
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Consecutive failures before the container is unhealthy.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_interval() -> f64 {
    10.0
}
fn default_timeout() -> f64 {
    3.0
}
fn default_retries() -> u32 {
    3
}

impl HealthCheck {
    pub fn new(probe: HealthProbe) -> Self {
        HealthCheck { probe, interval_s: default_interval(), timeout_s: default_timeout(), retries: default_retries() }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        for (what, v) in [("health interval", self.interval_s), ("health timeout", self.timeout_s)] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return Err(ValidationError::new(format!("{what} {v} is out of range (give seconds above 0, e.g. 5)")));
            }
        }
        if self.retries == 0 {
            return Err(ValidationError::new("health retries 0 is too small (give at least 1)"));
        }
        match &self.probe {
            HealthProbe::Command { command } if command.is_empty() => {
                Err(ValidationError::new("health command is empty (give a command such as \"test -f /ready\")"))
            }
            HealthProbe::Tcp { port: 0 } | HealthProbe::Http { port: 0, .. } => {
                Err(ValidationError::new("health port 0 is not a port (give 1-65535)"))
            }
            HealthProbe::Http { path, .. } if !path.starts_with('/') => {
                Err(ValidationError::new(format!("health path {path:?} must start with '/'")))
            }
            _ => Ok(()),
        }
    }

    /// Parses the CLI shorthand for HTTP probes, `PORT[/PATH]`.
    pub fn parse_http(s: &str) -> Result<HealthProbe, ValidationError> {
        let (port, path) = match s.split_once('/') {
            Some((p, rest)) => (p, format!("/{rest}")),
            None => (s, "/".to_string()),
        };
        let port = port
            .parse()
            .map_err(|_| ValidationError::new(format!("health http {s:?} is not PORT[/PATH] (try 80/healthz)")))?;
        Ok(HealthProbe::Http { port, path })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum HealthStatus {
    #[default]
    Starting,
    Healthy,
    Unhealthy,
}

/// The last known health of a container, as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthState {
    pub status: HealthStatus,
    pub failing_streak: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_duration_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_output: String,
    pub checks: u64,
    pub failures: u64,
}

impl HealthState {
    /// Folds one probe result into the state.
    pub fn record(&mut self, ok: bool, retries: u32, at: DateTime<Utc>, duration_ms: f64, output: String) {
        self.checks += 1;
        self.last_checked = Some(at);
        self.last_duration_ms = Some(duration_ms);
        self.last_output = output;
        if ok {
            self.failing_streak = 0;
            self.status = HealthStatus::Healthy;
        } else {
            self.failures += 1;
            self.failing_streak += 1;
            if self.failing_streak >= retries {
                self.status = HealthStatus::Unhealthy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn becomes_unhealthy_after_retries_and_recovers() {
        let mut s = HealthState::default();
        let now = Utc::now();
        s.record(false, 2, now, 1.0, "refused".into());
        assert_eq!(s.status, HealthStatus::Starting);
        s.record(false, 2, now, 1.0, "refused".into());
        assert_eq!(s.status, HealthStatus::Unhealthy);
        s.record(true, 2, now, 1.0, String::new());
        assert_eq!(s.status, HealthStatus::Healthy);
        assert_eq!((s.checks, s.failures, s.failing_streak), (3, 2, 0));
    }

    #[test]
    fn json_shape_and_validation() {
        let h: HealthCheck = serde_json::from_str(r#"{"type":"http","port":80,"interval_s":2}"#).unwrap();
        assert_eq!(h.probe, HealthProbe::Http { port: 80, path: "/".into() });
        assert_eq!(h.retries, 3);
        h.validate().unwrap();
        let bad = HealthCheck { interval_s: 0.0, ..h };
        assert!(bad.validate().unwrap_err().to_string().contains("health interval"));
        assert_eq!(
            HealthCheck::parse_http("8080/healthz").unwrap(),
            HealthProbe::Http { port: 8080, path: "/healthz".into() }
        );
        assert!(HealthCheck::parse_http("x").is_err());
    }
}
