//! Whom an `https` upstream must prove it is: the system's root certificates, or the CA
//! certificates of a file the integration names (`ca_file`).
//!
//! The system roots are read once per process; a CA file is read when the configuration is
//! compiled, so a missing or broken file is a validation error with its line.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The client configuration for an `https` upstream, and the digest of the CA file it
/// trusts (`None` for the system roots).
pub type UpstreamTls = (Arc<rustls::ClientConfig>, Option<String>);

/// A client trusting the system's root certificates.
pub fn system_roots() -> Result<UpstreamTls, String> {
    static SYSTEM: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let config = SYSTEM
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                tracing::warn!("no system root certificates found; https upstreams need `ca_file`");
            }
            client_config(roots).map(Arc::new)
        })
        .clone()?;
    Ok((config, None))
}

/// A client trusting only the CA certificates in `pem_file`.
pub fn ca_file(pem_file: &Path) -> Result<UpstreamTls, String> {
    let text =
        crate::files::read_bounded(pem_file).map_err(|e| format!("cannot read `{}`: {e}", pem_file.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("`{}` is not a PEM certificate file: {e}", pem_file.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", pem_file.display()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| format!("`{}`: unusable CA certificate: {e}", pem_file.display()))?;
    }
    Ok((Arc::new(client_config(roots)?), Some(crate::digest::sha256_hex(text.as_bytes()))))
}

fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
