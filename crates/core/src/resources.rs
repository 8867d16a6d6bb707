use serde::{Deserialize, Serialize};

use crate::{Size, ValidationError};

/// Limits for one container (or VM): enforced by cgroups, never advisory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resources {
    /// CPUs as a fraction of cores, e.g. 1.5 (cfs quota over a 100 ms period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.01, maximum = 1024))]
    pub cpu: Option<f64>,
    /// Memory limit in bytes (strings like "512M" are accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub pids: Option<u64>,
}

/// Smallest memory limit we accept: below this runc itself cannot start the container.
pub const MIN_MEMORY: u64 = 6 << 20;

/// Smallest CPU limit we accept, in cores: the granularity of a cgroup's CPU quota (the
/// kernel's smallest `cfs_quota_us` is 1 ms of our 100 ms period).
pub const MIN_CPU: f64 = 0.01;

/// A number of cores as the user gave it, short enough for one error line
/// (`0.0000001`, but `1e-250` rather than 250 digits).
pub(crate) fn show_cpu(cpu: f64) -> String {
    let s = cpu.to_string();
    if s.len() > 12 {
        format!("{cpu:e}")
    } else {
        s
    }
}

/// Checks a CPU limit of a container or VM: above 0, at least `MIN_CPU`, at most `max`.
pub(crate) fn check_cpu(cpu: f64, max: f64) -> Result<(), ValidationError> {
    let shown = show_cpu(cpu);
    if !(cpu.is_finite() && cpu > 0.0) {
        return Err(ValidationError::new(format!("cpu {shown} is not a number of cores above 0 (try 0.5 or 2)")));
    }
    if cpu < MIN_CPU {
        return Err(ValidationError::new(format!("cpu {shown} is below the minimum {MIN_CPU} (try 0.5 or 2)")));
    }
    if cpu > max {
        return Err(ValidationError::new(format!("cpu {shown} is more than {max} cores (try 0.5 or 2)")));
    }
    Ok(())
}

impl Resources {
    /// Parses the CLI form `cpu=1.5,memory=512M,pids=256`.
    pub fn parse(s: &str) -> Result<Resources, ValidationError> {
        let mut r = Resources::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                ValidationError::new(format!("resource {part:?} is not key=value (try cpu=1.5,memory=512M,pids=256)"))
            })?;
            match k.trim() {
                "cpu" | "cpus" => {
                    r.cpu = Some(v.trim().parse().map_err(|_| {
                        ValidationError::new(format!("cpu {v:?} is not a number of cores (try cpu=1.5)"))
                    })?)
                }
                "memory" | "mem" => r.memory = Some(Size::parse("memory", v)?),
                "pids" => {
                    r.pids = Some(v.trim().parse().map_err(|_| {
                        ValidationError::new(format!("pids {v:?} is not a whole number (try pids=256)"))
                    })?)
                }
                other => {
                    return Err(ValidationError::new(format!(
                        "resource {other:?} is unknown (known: cpu, memory, pids)"
                    )))
                }
            }
        }
        r.validate()?;
        Ok(r)
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(cpu) = self.cpu {
            check_cpu(cpu, 1024.0)?;
        }
        if let Some(m) = self.memory {
            if m.bytes() < MIN_MEMORY {
                return Err(ValidationError::new(format!("memory {m} is too small (give at least 6M)")));
            }
        }
        if self.pids == Some(0) {
            return Err(ValidationError::new("pids 0 is too small (give at least 1)"));
        }
        Ok(())
    }

    /// `self` with every unset field taken from `defaults`.
    pub fn or(&self, defaults: &Resources) -> Resources {
        Resources {
            cpu: self.cpu.or(defaults.cpu),
            memory: self.memory.or(defaults.memory),
            pids: self.pids.or(defaults.pids),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spec_form() {
        let r = Resources::parse("cpu=1.5,memory=512M,pids=256").unwrap();
        assert_eq!(r.cpu, Some(1.5));
        assert_eq!(r.memory, Some(Size(512 << 20)));
        assert_eq!(r.pids, Some(256));
        assert_eq!(Resources::parse("cpu=0.01").unwrap().cpu, Some(MIN_CPU));
    }

    #[test]
    fn rejects_bad_input_with_named_errors() {
        for (input, needle) in [
            ("memory=4XB", "memory \"4XB\" is not a size"),
            ("cpu=lots", "cpu \"lots\""),
            ("cpu=0", "cpu 0 is not a number of cores above 0 (try 0.5 or 2)"),
            ("cpu=-1", "cpu -1 is not a number of cores above 0"),
            ("cpu=NaN", "cpu NaN is not a number of cores above 0"),
            ("cpu=0.0000001", "cpu 0.0000001 is below the minimum 0.01 (try 0.5 or 2)"),
            ("cpu=1e-250", "cpu 1e-250 is below the minimum 0.01 (try 0.5 or 2)"),
            ("cpu=0.009", "cpu 0.009 is below the minimum 0.01"),
            ("cpu=1025", "cpu 1025 is more than 1024 cores"),
            ("gpu=1", "resource \"gpu\" is unknown"),
            ("memory", "not key=value"),
            ("memory=1K", "too small"),
            ("pids=0", "pids 0"),
        ] {
            let e = Resources::parse(input).unwrap_err().to_string();
            assert!(e.contains(needle), "{input}: {e}");
        }
    }

    #[test]
    fn or_fills_unset() {
        let a = Resources { cpu: Some(1.0), ..Default::default() };
        let b = Resources { cpu: Some(2.0), memory: Some(Size(1 << 30)), pids: None };
        let c = a.or(&b);
        assert_eq!(c.cpu, Some(1.0));
        assert_eq!(c.memory, Some(Size(1 << 30)));
    }
}
