//! The pooled upstream HTTP client, with connection figures for `/metrics`.
//!
//! One [`UpstreamClient`] keeps keep-alive connections to every upstream it has called.
//! Its connector counts connections opened and open (`meridian_upstream_connections_*`)
//! so an operator can see whether pooling works.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;

use crate::body::{BoxError, RequestBody};

/// A pooled client for HTTP and HTTPS upstreams.
pub type UpstreamClient = Client<HttpsConnector<CountingConnector>, RequestBody>;

/// The client trusting the system's root certificates, shared by every route that does
/// not name its own CA so that its pool survives configuration reloads.
pub fn shared_client() -> Result<Arc<UpstreamClient>, String> {
    static SHARED: OnceLock<Result<Arc<UpstreamClient>, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                tracing::warn!("no system root certificates found; https upstreams need `ca_file`");
            }
            build(roots).map(Arc::new)
        })
        .clone()
}

/// A client trusting only the CA certificates in `pem_file`.
pub fn client_with_ca(pem_file: &Path) -> Result<UpstreamClient, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pem_file)
        .map_err(|e| format!("cannot read `{}`: {e}", pem_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}` is not a PEM certificate file: {e}", pem_file.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", pem_file.display()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| format!("`{}`: unusable CA certificate: {e}", pem_file.display()))?;
    }
    build(roots)
}

fn build(roots: rustls::RootCertStore) -> Result<UpstreamClient, String> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(CountingConnector { inner: http });
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}

/// Wraps the TCP connector to count upstream connections.
#[derive(Clone, Debug)]
pub struct CountingConnector {
    inner: HttpConnector,
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = CountedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<CountedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            metrics::counter!("meridian_upstream_connections_opened_total").increment(1);
            metrics::gauge!("meridian_upstream_connections_open").increment(1.0);
            Ok(CountedIo { io })
        })
    }
}

/// An upstream TCP connection that keeps the open-connections gauge honest.
#[derive(Debug)]
pub struct CountedIo {
    io: TokioIo<TcpStream>,
}

impl Drop for CountedIo {
    fn drop(&mut self) {
        metrics::gauge!("meridian_upstream_connections_open").decrement(1.0);
    }
}

impl Connection for CountedIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for CountedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for CountedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
