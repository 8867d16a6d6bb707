use std::fmt;

use serde::{Deserialize, Serialize};
use serde_with::{DeserializeFromStr, SerializeDisplay};

use crate::ValidationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

crate::scalar_schema!(PortMapping, String, "HOST:CONTAINER[/tcp|udp], e.g. \"8081:80/tcp\"");

#[cfg(test)]
mod tests {
    use super::*;

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
