use std::fmt;
use std::time::Duration;

use serde_with::{DeserializeFromStr, SerializeDisplay};

use crate::ValidationError;

/// What to do when a container's process exits on its own (not after `stop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, SerializeDisplay, DeserializeFromStr)]
pub enum RestartPolicy {
    #[default]
    No,
    /// Restart after a non-zero exit, at most `max` times (unbounded when `None`).
    OnFailure {
        max: Option<u32>,
    },
    Always,
}

impl RestartPolicy {
    pub fn parse(s: &str) -> Result<RestartPolicy, ValidationError> {
        let bad = || {
            ValidationError::new(format!(
                "restart policy {s:?} is unknown (use no, on-failure, on-failure:N or always)"
            ))
        };
        match s {
            "no" | "never" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "on-failure" => Ok(RestartPolicy::OnFailure { max: None }),
            _ => {
                let n = s.strip_prefix("on-failure:").ok_or_else(bad)?;
                Ok(RestartPolicy::OnFailure { max: Some(n.parse().map_err(|_| bad())?) })
            }
        }
    }

    /// Whether an exit with `code`, after `restarts` restarts so far, should restart.
    pub fn should_restart(self, code: i32, restarts: u32) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure { max } => code != 0 && max.is_none_or(|m| restarts < m),
        }
    }
}

/// Exponential backoff from 100 ms doubling to a 30 s cap, with up to ±20 % jitter taken
/// from `jitter_seed` (any varying number; the daemon passes clock nanoseconds).
pub fn backoff(restarts: u32, jitter_seed: u64) -> Duration {
    let base_ms = 100u64.saturating_mul(1u64 << restarts.min(20)).min(30_000);
    let span = base_ms / 5; // 20 %
    let jitter = if span == 0 { 0 } else { jitter_seed % (2 * span + 1) };
    Duration::from_millis(base_ms - span + jitter)
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::OnFailure { max: None } => f.write_str("on-failure"),
            RestartPolicy::OnFailure { max: Some(n) } => write!(f, "on-failure:{n}"),
        }
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RestartPolicy::parse(s)
    }
}

crate::scalar_schema!(
    RestartPolicy,
    String,
    "no | on-failure | on-failure:N | always",
    pattern = "^(no|never|always|on-failure(:[0-9]{1,9})?)$"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_decide() {
        assert_eq!(RestartPolicy::parse("no").unwrap(), RestartPolicy::No);
        let p = RestartPolicy::parse("on-failure:2").unwrap();
        assert!(p.should_restart(1, 0));
        assert!(p.should_restart(1, 1));
        assert!(!p.should_restart(1, 2));
        assert!(!p.should_restart(0, 0));
        assert!(RestartPolicy::Always.should_restart(0, 100));
        assert!(!RestartPolicy::No.should_restart(1, 0));
        assert!(RestartPolicy::parse("sometimes").is_err());
        assert!(RestartPolicy::parse("on-failure:x").is_err());
        assert_eq!(p.to_string(), "on-failure:2");
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let d0 = backoff(0, 0).as_millis();
        assert!((80..=120).contains(&d0), "{d0}");
        assert!(backoff(3, 7).as_millis() >= 640);
        assert!(backoff(50, u64::MAX).as_millis() <= 36_000);
        // jitter changes the result
        assert_ne!(backoff(5, 1), backoff(5, 500));
    }
}
