//! The security protocols a TCP connection may use, noise and TLS 1.3 (`tls`), offered in
//! an order chosen when the peer starts.
//!
//! multistream-select settles on the dialer's first proposal the listener supports, so
//! the order decides what a dialing peer gets; as a listener a peer accepts either. libp2p's
//! own `(A, B)` selection fixes the order in the type, and the order here depends on the
//! CPU (`Security::Auto`) and on the configuration, hence this small upgrade of our own.

use std::str::FromStr;

use futures_util::future::{BoxFuture, Either};
use futures_util::{AsyncRead, AsyncWrite, FutureExt, TryFutureExt};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::Keypair;
use libp2p::{noise, PeerId};
use serde::{Deserialize, Serialize};

use crate::tls;

/// Which security protocol this peer proposes first when it dials over TCP (the other is
/// offered too, and both are accepted when others dial).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// TLS 1.3 with AES-GCM where the CPU has AES instructions (the fastest measured
    /// there, `bench/RESULTS.md`), noise elsewhere.
    #[default]
    Auto,
    Noise,
    Tls,
}

impl Security {
    /// Noise or TLS, as `Auto` resolves on this machine.
    pub fn resolved(self) -> Security {
        match self {
            Security::Auto if tls::cpu_has_aes() => Security::Tls,
            Security::Auto => Security::Noise,
            s => s,
        }
    }

    fn protocols(self) -> [&'static str; 2] {
        match self.resolved() {
            Security::Tls => [tls::PROTOCOL, NOISE],
            _ => [NOISE, tls::PROTOCOL],
        }
    }
}

impl FromStr for Security {
    type Err = String;

    fn from_str(s: &str) -> Result<Security, String> {
        match s {
            "auto" => Ok(Security::Auto),
            "noise" => Ok(Security::Noise),
            "tls" => Ok(Security::Tls),
            _ => Err(format!("security {s:?} is not auto, noise or tls")),
        }
    }
}

const NOISE: &str = "/noise";

/// Why securing a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Noise(#[from] noise::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Noise and TLS behind one upgrade, proposed in the order of a `Security`.
#[derive(Clone)]
pub(crate) struct Upgrade {
    order: [&'static str; 2],
    noise: noise::Config,
    tls: tls::Config,
}

impl Upgrade {
    pub(crate) fn new(key: &Keypair, security: Security) -> Result<Upgrade, SecurityError> {
        Ok(Upgrade { order: security.protocols(), noise: noise::Config::new(key)?, tls: tls::Config::new(key)? })
    }
}

impl UpgradeInfo for Upgrade {
    type Info = &'static str;
    type InfoIter = std::array::IntoIter<&'static str, 2>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.order.into_iter()
    }
}

/// What a secured connection is: noise's or TLS's stream.
pub(crate) type Secured<C> = Either<noise::Output<C>, futures_rustls::TlsStream<tls::Wire<C>>>;

impl<C> InboundConnectionUpgrade<C> for Upgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = BoxFuture<'static, Result<Self::Output, SecurityError>>;

    fn upgrade_inbound(self, socket: C, info: &'static str) -> Self::Future {
        if info == tls::PROTOCOL {
            self.tls.upgrade_inbound(socket, info).map_ok(|(p, s)| (p, Either::Right(s))).err_into().boxed()
        } else {
            self.noise.upgrade_inbound(socket, info).map_ok(|(p, s)| (p, Either::Left(s))).err_into().boxed()
        }
    }
}

impl<C> OutboundConnectionUpgrade<C> for Upgrade
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = BoxFuture<'static, Result<Self::Output, SecurityError>>;

    fn upgrade_outbound(self, socket: C, info: &'static str) -> Self::Future {
        if info == tls::PROTOCOL {
            self.tls.upgrade_outbound(socket, info).map_ok(|(p, s)| (p, Either::Right(s))).err_into().boxed()
        } else {
            self.noise.upgrade_outbound(socket, info).map_ok(|(p, s)| (p, Either::Left(s))).err_into().boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_protocol_proposed_follows_the_setting() {
        let key = Keypair::generate_ed25519();
        let first = |s| Upgrade::new(&key, s).unwrap().protocol_info().next().unwrap();
        assert_eq!(first(Security::Noise), "/noise");
        assert_eq!(first(Security::Tls), "/tls/1.0.0");
        assert_eq!(first(Security::Auto), if tls::cpu_has_aes() { "/tls/1.0.0" } else { "/noise" });
        assert_eq!(Upgrade::new(&key, Security::Noise).unwrap().protocol_info().count(), 2, "both offered");
        assert_eq!("tls".parse(), Ok(Security::Tls));
        assert!("quic".parse::<Security>().unwrap_err().contains("not auto, noise or tls"));
    }
}
