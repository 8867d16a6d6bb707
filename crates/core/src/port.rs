use std::fmt;

use serde::{Deserialize, Serialize};
use serde_with::{DeserializeFromStr, SerializeDisplay};

use crate::ValidationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Protocol {
    Tcp,
    Udp,
}

/// `8081:80/tcp`: host port 8081 on the host's loopback forwards to port 80 inside the
/// container's network namespace. Serialised in that same string form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, SerializeDisplay, DeserializeFromStr)]
pub struct PortMapping {
    pub host: u16,
    pub container: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    pub fn parse(s: &str) -> Result<PortMapping, ValidationError> {
        let bad = || ValidationError::new(format!("port {s:?} is not HOST:CONTAINER[/tcp|udp] (try 8081:80/tcp)"));
        let (ports, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(bad()),
            None => (s, Protocol::Tcp),
        };
        let (h, c) = ports.split_once(':').ok_or_else(bad)?;
        let host: u16 = h.parse().map_err(|_| bad())?;
        let container: u16 = c.parse().map_err(|_| bad())?;
        if host == 0 || container == 0 {
            return Err(bad());
        }
        Ok(PortMapping { host, container, protocol: proto })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{}:{}/{p}", self.host, self.container)
    }
}

impl std::str::FromStr for PortMapping {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PortMapping::parse(s)
    }
}

crate::scalar_schema!(
    PortMapping,
    String,
    "HOST:CONTAINER[/tcp|udp], e.g. \"8081:80/tcp\"; ports 1-65535",
    pattern = "^([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])(/(tcp|udp))?$"
);

/// How a port of the spec's container network is published: `ingress` on every host of
/// the fabric (each forwards to the container), `host` on the host it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    Ingress,
    Host,
}

/// One port of a container network: `"8080": {"protocol": "tcp", "mode": "ingress"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedPort {
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    #[serde(default = "host_mode")]
    pub mode: PublishMode,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

fn host_mode() -> PublishMode {
    PublishMode::Host
}

/// Service discovery: `true`/`false`, or `"libp2p"` (the fabric's heartbeats over
/// libp2p, which is how names are shared: the same as `true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Discovery {
    On(bool),
    By(String),
}

/// A container's network as the spec writes it: `{"mode": "overlay", "encryption": true,
/// "discovery": "libp2p", "ports": {...}}`, and optionally its `name` (the domain its
/// containers' names resolve in; `micro-os` by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerNetwork {
    #[serde(default = "overlay")]
    pub mode: String,
    #[serde(default = "yes")]
    pub encryption: bool,
    #[serde(default)]
    pub discovery: Option<Discovery>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub ports: std::collections::BTreeMap<String, PublishedPort>,
}

fn overlay() -> String {
    "overlay".into()
}

fn yes() -> bool {
    true
}

impl ContainerNetwork {
    /// Reads and checks the free-form `network` of a spec or deploy file.
    pub fn parse(value: &serde_json::Value) -> Result<ContainerNetwork, ValidationError> {
        let n: ContainerNetwork = serde_json::from_value(value.clone()).map_err(|e| {
            ValidationError::new(format!(
                "network: {e} (the keys are mode, encryption, discovery, name and ports, as in {{\"mode\": \"overlay\", \"ports\": {{\"8080\": {{\"protocol\": \"tcp\", \"mode\": \"ingress\"}}}}}})"
            ))
        })?;
        if n.mode != "overlay" {
            return Err(ValidationError::new(format!("network mode {:?} is unknown (the modes are: overlay)", n.mode)));
        }
        if !n.encryption {
            return Err(ValidationError::new(
                "network encryption false: traffic between hosts always crosses the encrypted overlay (leave encryption out or set it true)",
            ));
        }
        match &n.discovery {
            None | Some(Discovery::On(_)) => {}
            Some(Discovery::By(by)) if by == "libp2p" => {}
            Some(Discovery::By(by)) => {
                return Err(ValidationError::new(format!(
                    "network discovery {by:?} is unknown (use \"libp2p\", true or false)"
                )))
            }
        }
        if let Some(name) = &n.name {
            let label = !name.is_empty()
                && name.len() <= 63
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-');
            if !label {
                return Err(ValidationError::new(format!(
                    "network name {name:?} is not a DNS label (letters, digits and '-', at most 63)"
                )));
            }
        }
        for k in n.ports.keys() {
            match k.parse::<u16>() {
                Ok(p) if p > 0 => {}
                _ => return Err(ValidationError::new(format!("network port {k:?} is not a port number (1-65535)"))),
            }
        }
        Ok(n)
    }

    /// The ports as (port, protocol, mode).
    pub fn published(&self) -> Vec<(u16, Protocol, PublishMode)> {
        self.ports.iter().filter_map(|(k, p)| Some((k.parse().ok()?, p.protocol, p.mode))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specs_container_network_reads_and_bad_ones_are_named() {
        let spec = serde_json::json!({"mode": "overlay", "encryption": true, "discovery": "libp2p", "ports": {
            "8080": {"protocol": "tcp", "mode": "ingress"}, "9000": {"protocol": "udp", "mode": "host"}}});
        let n = ContainerNetwork::parse(&spec).unwrap();
        assert_eq!(
            n.published(),
            [(8080, Protocol::Tcp, PublishMode::Ingress), (9000, Protocol::Udp, PublishMode::Host)]
        );
        ContainerNetwork::parse(&serde_json::json!({"mode": "overlay", "discovery": true})).unwrap();
        for (bad, says) in [
            (serde_json::json!({"mode": "mesh"}), "network mode \"mesh\" is unknown"),
            (serde_json::json!({"encryption": false}), "network encryption false"),
            (serde_json::json!({"discovery": "mdns"}), "network discovery \"mdns\""),
            (serde_json::json!({"name": "a.b"}), "not a DNS label"),
            (serde_json::json!({"ports": {"http": {}}}), "network port \"http\""),
            (serde_json::json!({"ports": {"80": {"mode": "everywhere"}}}), "network: unknown variant"),
            (serde_json::json!({"colour": "blue"}), "unknown field `colour`"),
        ] {
            let e = ContainerNetwork::parse(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn parse_table() {
        let p = PortMapping::parse("8080:80/tcp").unwrap();
        assert_eq!((p.host, p.container, p.protocol), (8080, 80, Protocol::Tcp));
        assert_eq!(PortMapping::parse("53:53/udp").unwrap().protocol, Protocol::Udp);
        assert_eq!(PortMapping::parse("9000:9000").unwrap().to_string(), "9000:9000/tcp");
        for bad in ["80", "a:b", "8080:80/sctp", "0:80", "70000:80"] {
            assert!(PortMapping::parse(bad).is_err(), "{bad}");
        }
    }
}
