//! TLS 1.3 as libp2p's `/tls/1.0.0` security protocol (the libp2p TLS spec), with the cipher
//! suites in the order this CPU runs fastest.
//!
//! libp2p-tls offers ChaCha20-Poly1305 first, whatever the machine. On a CPU with AES and
//! carry-less multiply instructions (AES-NI and PCLMULQDQ on x86-64, the crypto extension
//! on aarch64) AES-GCM is several times faster, so this upgrade puts TLS13_AES_128_GCM_SHA256
//! and then TLS13_AES_256_GCM_SHA384 first there, and ChaCha20 first elsewhere. The order is
//! only a preference: rustls servers follow the client's order among the suites they
//! support, every libp2p TLS implementation supports all three, and the wire protocol is
//! the spec's, so other implementations still connect.
//!
//! What is ours: the rustls configurations and the certificate verifier. What is
//! libp2p-tls's: the certificate with the libp2p public key extension, generated and
//! parsed (self-signature, validity, the extension's signature by the host key) through its
//! public `certificate` module.
//!
//! The verifier enforces the spec: TLS 1.3 only; exactly one certificate; self-signed and
//! carrying a valid libp2p extension; handshake signatures only in a scheme that matches
//! the certificate's key; the remote's peer id equal to the one we meant to reach when we
//! know it; ALPN "libp2p" offered, and refused if the peer selects anything else.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures_rustls::TlsStream;
use futures_util::future::BoxFuture;
use futures_util::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::Keypair;
use libp2p::tls::certificate;
use libp2p::PeerId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError, PeerIncompatible,
    SignatureScheme, SupportedCipherSuite,
};

/// The protocol name multistream-select negotiates: the spec's, so other libp2p
/// implementations speak it with us.
pub(crate) const PROTOCOL: &str = "/tls/1.0.0";
const ALPN: &[u8] = b"libp2p";

/// Why a TLS upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make the libp2p tls certificate: {0}")]
    Certificate(#[from] certificate::GenError),
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("tls handshake: {0}")]
    Handshake(std::io::Error),
    #[error("the peer's tls certificate is not a libp2p certificate: {0}")]
    BadCertificate(#[from] certificate::ParseError),
    #[error("the peer negotiated application protocol {0:?}, not \"libp2p\"")]
    Alpn(String),
}

/// Does this CPU have the instructions that make AES-GCM fast?
pub fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The TLS 1.3 suites, fastest first for a CPU with (`aes`) or without AES instructions.
pub fn cipher_suites(aes: bool) -> Vec<SupportedCipherSuite> {
    if aes {
        vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256]
    } else {
        vec![TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384]
    }
}

/// ring's algorithms, with the suites in the order given.
fn provider(suites: Vec<SupportedCipherSuite>) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider { cipher_suites: suites, ..rustls::crypto::ring::default_provider() })
}

/// The `/tls/1.0.0` upgrade for a libp2p transport (`SwarmBuilder::with_tcp`).
#[derive(Clone)]
pub struct Config {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl Config {
    /// A fresh certificate for `key`, the suites in this CPU's order.
    pub fn new(key: &Keypair) -> Result<Config, TlsError> {
        let (cert, cert_key) = certificate::generate(key)?;
        Config::build(cert, cert_key, cipher_suites(cpu_has_aes()), None)
    }

    /// As `new`, but a dialer that refuses any peer other than `remote`. (In a swarm,
    /// libp2p compares the authenticated peer with the dialed `/p2p/` id as well.)
    pub fn for_peer(key: &Keypair, remote: PeerId) -> Result<Config, TlsError> {
        let (cert, cert_key) = certificate::generate(key)?;
        Config::build(cert, cert_key, cipher_suites(cpu_has_aes()), Some(remote))
    }

    fn build(
        cert: CertificateDer<'static>,
        cert_key: PrivateKeyDer<'static>,
        suites: Vec<SupportedCipherSuite>,
        remote: Option<PeerId>,
    ) -> Result<Config, TlsError> {
        let provider = provider(suites);
        // rustls's own single-certificate setup parses the certificate with webpki, which
        // refuses the libp2p extension (critical, unknown to it): hand it the key as is
        let ours = Arc::new(OurCertificate(Arc::new(CertifiedKey::new(
            vec![cert],
            provider.key_provider.load_private_key(cert_key)?,
        ))));
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier { remote }))
            .with_client_cert_resolver(ours.clone());
        client.alpn_protocols = vec![ALPN.to_vec()];
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(Verifier { remote: None }))
            .with_cert_resolver(ours);
        server.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Config { client: Arc::new(client), server: Arc::new(server) })
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<&'static str>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

/// The peer an established session authenticated: the one certificate the verifier
/// accepted, and the application protocol both sides agreed on.
fn authenticated(state: &CommonState) -> Result<PeerId, TlsError> {
    if let Some(p) = state.alpn_protocol().filter(|p| *p != ALPN) {
        return Err(TlsError::Alpn(String::from_utf8_lossy(p).into_owned()));
    }
    match state.peer_certificates() {
        Some([cert]) => Ok(certificate::parse(cert)?.peer_id()),
        // the verifiers refuse anything else during the handshake
        _ => Err(TlsError::Handshake(std::io::Error::other("the peer presented no single certificate"))),
    }
}

/// What a TLS session runs over: the connection, its writes gathered into 64 KiB. Each
/// yamux frame becomes a TLS record of at most 16 KiB, and rustls writes each out as it
/// is sealed; gathered, a bulk stream makes a quarter of the writes (yamux flushes, and so
/// empties the buffer, whenever it has nothing more to send).
pub type Wire<C> = futures_util::io::BufWriter<C>;

fn wire<C: AsyncWrite>(socket: C) -> Wire<C> {
    futures_util::io::BufWriter::with_capacity(64 * 1024, socket)
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<Wire<C>>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, TlsError>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(wire(socket))
                .await
                .map_err(TlsError::Handshake)?;
            let peer = authenticated(stream.get_ref().1)?;
            Ok((peer, TlsStream::Server(stream)))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<Wire<C>>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, TlsError>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // the spec: a client of this version of the handshake sends no server name
            // indication, which rustls leaves out for an IP address
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, wire(socket))
                .await
                .map_err(TlsError::Handshake)?;
            let peer = authenticated(stream.get_ref().1)?;
            Ok((peer, TlsStream::Client(stream)))
        }
        .boxed()
    }
}

/// The certificate we present, as client and as server.
#[derive(Debug)]
struct OurCertificate(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for OurCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for OurCertificate {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Checks the one certificate a libp2p peer presents, as client or as server.
#[derive(Debug)]
struct Verifier {
    /// The peer a dialer means to reach, when it knows.
    remote: Option<PeerId>,
}

/// Handshake signature schemes a libp2p certificate's key may use (what libp2p-tls's
/// `P2pCertificate::verify_signature` checks), none with a hash shorter than 256 bits.
const SCHEMES: [SignatureScheme; 9] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

fn bad_certificate(e: certificate::ParseError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl Verifier {
    /// The peer id of a presented chain: exactly one certificate, self-signed, with a
    /// valid libp2p extension (what `certificate::parse` checks).
    fn presented(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<PeerId, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General("a libp2p peer presents exactly one certificate".into()));
        }
        let peer = certificate::parse(end_entity).map_err(bad_certificate)?.peer_id();
        match self.remote {
            Some(want) if want != peer => {
                Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
            }
            _ => Ok(peer),
        }
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        scheme: SignatureScheme,
        signature: &[u8],
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !SCHEMES.contains(&scheme) {
            return Err(rustls::Error::PeerIncompatible(PeerIncompatible::NoSignatureSchemesInCommon));
        }
        // refuses a scheme other than the one the certificate's key is for
        certificate::parse(cert)
            .map_err(bad_certificate)?
            .verify_signature(scheme, message, signature)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }
}

fn tls12_refused() -> rustls::Error {
    // unreachable with TLS 1.3 as the only version configured; refused all the same
    rustls::Error::General("libp2p allows tls 1.3 only".into())
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.presented(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss.scheme, dss.signature())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // the spec: servers MUST require client authentication
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.presented(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss.scheme, dss.signature())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

    type Pipe = Compat<tokio::io::DuplexStream>;
    type Session = Result<(PeerId, TlsStream<Wire<Pipe>>), TlsError>;

    /// A dialer (`client`) and a listener (`server`) over an in-memory duplex.
    async fn handshake(client: Config, server: Config) -> (Session, Session) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        tokio::join!(client.upgrade_outbound(a.compat(), PROTOCOL), server.upgrade_inbound(b.compat(), PROTOCOL))
    }

    fn suite(s: &TlsStream<Wire<Pipe>>) -> SupportedCipherSuite {
        s.get_ref().1.negotiated_cipher_suite().expect("a finished handshake has a suite")
    }

    #[tokio::test]
    async fn two_peers_authenticate_each_other_and_talk() {
        use futures_util::{AsyncReadExt, AsyncWriteExt};
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (a, b) = handshake(Config::new(&ka).unwrap(), Config::new(&kb).unwrap()).await;
        let ((b_seen, mut a_stream), (a_seen, mut b_stream)) = (a.unwrap(), b.unwrap());
        assert_eq!(b_seen, kb.public().to_peer_id(), "the dialer learns the listener's peer id");
        assert_eq!(a_seen, ka.public().to_peer_id(), "the listener learns the dialer's peer id");
        assert_eq!(a_stream.get_ref().1.alpn_protocol(), Some(ALPN));
        a_stream.write_all(b"block 1").await.unwrap();
        a_stream.flush().await.unwrap();
        let mut got = [0u8; 7];
        b_stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"block 1");
    }

    #[tokio::test]
    async fn the_suite_is_aes_gcm_where_the_cpu_has_aes_and_chacha20_elsewhere() {
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (a, b) = handshake(Config::new(&ka).unwrap(), Config::new(&kb).unwrap()).await;
        let (a, b) = (a.unwrap().1, b.unwrap().1);
        let want = if cpu_has_aes() { TLS13_AES_128_GCM_SHA256 } else { TLS13_CHACHA20_POLY1305_SHA256 };
        assert_eq!(suite(&a).suite(), want.suite());
        assert_eq!(suite(&b).suite(), want.suite());
        // the order is the dialer's preference, which a rustls listener follows
        let with = |key: &Keypair, aes| {
            let (cert, cert_key) = certificate::generate(key).unwrap();
            Config::build(cert, cert_key, cipher_suites(aes), None).unwrap()
        };
        let (a, _) = handshake(with(&ka, false), with(&kb, true)).await;
        assert_eq!(suite(&a.unwrap().1).suite(), TLS13_CHACHA20_POLY1305_SHA256.suite());
        let (a, _) = handshake(with(&ka, true), with(&kb, false)).await;
        assert_eq!(suite(&a.unwrap().1).suite(), TLS13_AES_128_GCM_SHA256.suite());
    }

    #[tokio::test]
    async fn a_dialer_refuses_a_listener_that_is_not_the_peer_it_meant() {
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let someone_else = Keypair::generate_ed25519().public().to_peer_id();
        let (a, b) = handshake(Config::for_peer(&ka, someone_else).unwrap(), Config::new(&kb).unwrap()).await;
        let Err(err) = a else { panic!("the dialer accepted a peer it did not mean") };
        let err = err.to_string();
        assert!(err.contains("tls handshake"), "{err}");
        assert!(b.is_err(), "the listener sees the dialer abort");
        // the right one passes
        let (a, _) =
            handshake(Config::for_peer(&ka, kb.public().to_peer_id()).unwrap(), Config::new(&kb).unwrap()).await;
        assert_eq!(a.unwrap().0, kb.public().to_peer_id());
    }

    /// A self-signed certificate without the libp2p extension (plain rcgen).
    fn plain_certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["peer".into()]).unwrap().self_signed(&key).unwrap();
        (cert.der().clone(), PrivateKeyDer::Pkcs8(key.serialize_der().into()))
    }

    #[tokio::test]
    async fn a_certificate_without_the_libp2p_extension_is_refused_either_way() {
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let plain = || {
            let (cert, key) = plain_certificate();
            Config::build(cert, key, cipher_suites(cpu_has_aes()), None).unwrap()
        };
        // a dialer with a plain certificate: the listener refuses it
        let (_, b) = handshake(plain(), Config::new(&kb).unwrap()).await;
        assert!(b.is_err(), "the listener accepted a certificate without the extension");
        // a listener with one: the dialer refuses it
        let (a, _) = handshake(Config::new(&ka).unwrap(), plain()).await;
        assert!(a.is_err(), "the dialer accepted a certificate without the extension");
        // and the verifier says why
        let (cert, _) = plain_certificate();
        let err = Verifier { remote: None }.presented(&cert, &[]).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
    }

    #[test]
    fn more_than_one_certificate_and_a_foreign_signature_scheme_are_refused() {
        let key = Keypair::generate_ed25519();
        let (cert, _) = certificate::generate(&key).unwrap();
        let v = Verifier { remote: None };
        assert_eq!(v.presented(&cert, &[]).unwrap(), key.public().to_peer_id());
        assert!(v.presented(&cert, std::slice::from_ref(&cert)).is_err(), "a chain of two");
        // the certificate's key is ECDSA P-256: a handshake signature claimed in another
        // scheme, or in one no libp2p peer may use, is refused
        for scheme in [SignatureScheme::ED25519, SignatureScheme::RSA_PKCS1_SHA1, SignatureScheme::ECDSA_SHA1_Legacy] {
            assert!(v.tls13_signature(b"transcript", &cert, scheme, &[0; 64]).is_err(), "{scheme:?}");
        }
        let scheme = SignatureScheme::ECDSA_NISTP256_SHA256;
        assert!(v.tls13_signature(b"transcript", &cert, scheme, &[0; 64]).is_err(), "a bad signature");
    }

    #[tokio::test]
    async fn speaks_with_libp2p_tls_both_ways() {
        let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let theirs = libp2p::tls::Config::new(&kb).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (ours, other) = tokio::join!(
            Config::new(&ka).unwrap().upgrade_outbound(a.compat(), PROTOCOL),
            theirs.upgrade_inbound(b.compat(), "/tls/1.0.0")
        );
        assert_eq!(ours.unwrap().0, kb.public().to_peer_id());
        assert_eq!(other.unwrap().0, ka.public().to_peer_id());
        let theirs = libp2p::tls::Config::new(&kb).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (other, ours) = tokio::join!(
            theirs.upgrade_outbound(a.compat(), "/tls/1.0.0"),
            Config::new(&ka).unwrap().upgrade_inbound(b.compat(), PROTOCOL)
        );
        assert_eq!(ours.unwrap().0, kb.public().to_peer_id());
        assert_eq!(other.unwrap().0, ka.public().to_peer_id());
    }
}
