//! Mutual TLS for node-to-node RPC.
//!
//! Servers present their node certificate followed by the CA certificate and ask clients for
//! a certificate, which must chain to the cluster CA when given. Only `Join` is answered
//! without one (it is authenticated by the join token); every other call checks
//! [`PeerIdentity::verified`]. Clients check the server against the cluster CA, or, while
//! joining (before they have the CA), against the CA fingerprint in the join token.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::pki::{NODE_NAME, NodeIdentity};
use meridian_dataplane::digest::sha256_hex;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    Ok(CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?)
}

fn roots(ca_pem: &str) -> Result<RootCertStore, BoxError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The RPC server's TLS configuration.
pub fn server_config(identity: &NodeIdentity) -> Result<rustls::ServerConfig, BoxError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&identity.ca_pem)?), provider())
        .allow_unauthenticated()
        .build()?;
    let mut chain = certs(&identity.cert_pem)?;
    chain.extend(certs(&identity.ca_pem)?);
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A member's client configuration: the cluster CA as the only root, its own certificate.
pub fn member_client_config(identity: &NodeIdentity) -> Result<rustls::ClientConfig, BoxError> {
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&identity.ca_pem)?)
        .with_client_auth_cert(certs(&identity.cert_pem)?, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A joining node's client configuration: trusts a server whose chain includes the CA with
/// this fingerprint and whose certificate that CA signed.
pub fn joining_client_config(ca_fingerprint: &str) -> Result<rustls::ClientConfig, BoxError> {
    let verifier = PinnedCaVerifier { fingerprint: ca_fingerprint.to_ascii_lowercase(), provider: provider() };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256_hex(c) == self.fingerprint)
            .ok_or_else(|| rustls::Error::General("the server's CA does not match the join token".into()))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects tonic channels over TLS to `http://host:port` URIs.
#[derive(Clone)]
pub struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    /// The address outgoing connections leave from: the node's own RPC address, so peers
    /// (and firewalls) see which node is calling.
    local_ip: Option<std::net::IpAddr>,
}

impl TlsConnector {
    pub fn new(config: rustls::ClientConfig) -> Self {
        TlsConnector { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), local_ip: None }
    }

    /// Connects from `ip` (unless it is a wildcard address).
    pub fn from_address(mut self, ip: std::net::IpAddr) -> Self {
        self.local_ip = (!ip.is_unspecified()).then_some(ip);
        self
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.connector.clone();
        let local_ip = self.local_ip;
        Box::pin(async move {
            let authority = uri.authority().ok_or("RPC address without host:port")?.as_str().to_string();
            let tcp = match local_ip {
                None => TcpStream::connect(&authority).await?,
                Some(ip) => {
                    let remote =
                        tokio::net::lookup_host(&authority).await?.next().ok_or("RPC address did not resolve")?;
                    let socket = if remote.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(std::net::SocketAddr::new(ip, 0))?;
                    socket.connect(remote).await?
                }
            };
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(NODE_NAME)?;
            Ok(TokioIo::new(connector.connect(name, tcp).await?))
        })
    }
}

/// The round trip to `peer`'s RPC port, as the best of three TLS handshakes (TLS 1.3 takes
/// one round trip after TCP's; unlike TCP's own, it crosses proxies in between).
pub async fn handshake_round_trip(peer: &str, config: rustls::ClientConfig) -> Result<std::time::Duration, BoxError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut best: Option<std::time::Duration> = None;
    let mut last_error: Option<BoxError> = None;
    for _ in 0..3 {
        let attempt = async {
            let tcp = TcpStream::connect(peer).await?;
            tcp.set_nodelay(true)?;
            let started = std::time::Instant::now();
            connector.connect(ServerName::try_from(NODE_NAME)?, tcp).await?;
            Ok::<_, BoxError>(started.elapsed())
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await {
            Ok(Ok(rtt)) => best = Some(best.map_or(rtt, |b| b.min(rtt))),
            Ok(Err(e)) => last_error = Some(e),
            Err(_) => last_error = Some("no TLS handshake within 5 s".into()),
        }
    }
    best.ok_or_else(|| last_error.unwrap_or_else(|| "no handshake".into()))
}

/// Who is on the other end of an RPC connection.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub remote: SocketAddr,
    /// The client presented a certificate that chains to the cluster CA.
    pub verified: bool,
}

/// A server-side RPC connection after its TLS handshake.
pub struct RpcStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    remote: SocketAddr,
}

impl RpcStream {
    pub fn new(inner: tokio_rustls::server::TlsStream<TcpStream>, remote: SocketAddr) -> Self {
        RpcStream { inner, remote }
    }
}

impl tonic::transport::server::Connected for RpcStream {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        let verified = self.inner.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
        PeerIdentity { remote: self.remote, verified }
    }
}

impl AsyncRead for RpcStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for RpcStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
