use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{HealthCheck, PortMapping, Resources, RestartPolicy, Size, ValidationError};

/// The kind of work a template runs; it decides the headroom added to its resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Workload {
    Blockchain,
    Ai,
    #[default]
    General,
}

impl Workload {
    /// Memory headroom factor for spikes: chain nodes spike on sync and reorgs, AI work on
    /// batch loads; general services less.
    pub fn headroom(self) -> f64 {
        match self {
            Workload::Blockchain => 1.25,
            Workload::Ai => 1.5,
            Workload::General => 1.1,
        }
    }
}

/// A named recipe for containers: image, command, env, ports, health check and default
/// resources. Built-in templates are compiled into the binary; user templates are JSON
/// files of this shape in `$MICRO_OS_HOME/templates/`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Template {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub workload: Workload,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Settings a container starts with (what `container config` changes), e.g. the
    /// network of a chain node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// The settings its workload understands (`container config N --KEY VALUE`, passed as
    /// `MICRO_OS_CONFIG_<KEY>`); absent: any key is passed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Vec<String>>,
    /// Baseline resources before headroom.
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// A directory in the container (e.g. `/data`) on which micro-os mounts a volume of
    /// the container's own: it survives restarts and goes with `container rm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Where the template came from: "built-in" or the file path.
    #[serde(default)]
    pub source: String,
}

impl Template {
    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::validate_name("template", &self.name)?;
        self.resources.validate()?;
        if let Some(h) = &self.health_check {
            h.validate()?;
        }
        if let Some(d) = &self.data {
            crate::container::check_data_path(d)?;
        }
        Ok(())
    }

    /// Baseline resources with the workload's memory headroom applied.
    pub fn effective_resources(&self) -> Resources {
        let mut r = self.resources.clone();
        if let Some(m) = r.memory {
            let with = (m.bytes() as f64 * self.workload.headroom()) as u64;
            // round up to whole MiB so limits read well
            r.memory = Some(Size(with.div_ceil(1 << 20) << 20));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_by_workload() {
        let mut t: Template =
            serde_json::from_str(r#"{"name":"x","image":"busybox","resources":{"memory":"400M","cpu":1}}"#).unwrap();
        t.workload = Workload::Blockchain;
        assert_eq!(t.effective_resources().memory, Some(Size(500 << 20)));
        t.workload = Workload::Ai;
        assert_eq!(t.effective_resources().memory, Some(Size(600 << 20)));
        assert_eq!(t.effective_resources().cpu, Some(1.0));
    }
}
