//! Whom an `https` upstream must prove it is, and who the gateway is to it: the system's
//! root certificates or the CA certificates of a file the integration names (`ca_file`); the
//! name its certificate must carry when that is not the name sent in SNI; and a client
//! certificate and key the gateway presents (the backend's mutual TLS).
//!
//! The system roots are read once per process; files are read when the configuration is
//! compiled, so a missing or broken file is a validation error with its line.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

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
    let (roots, text) = read_roots(pem_file)?;
    Ok((Arc::new(client_config(roots)?), Some(crate::digest::sha256_hex(text.as_bytes()))))
}

/// The CA certificates of a PEM file (read with the size bound every named file gets), and
/// the file's text; `Err` says what is wrong with it.
pub fn read_roots(pem_file: &Path) -> Result<(rustls::RootCertStore, String), String> {
    let text =
        crate::files::read_bounded(pem_file).map_err(|e| format!("cannot read `{}`: {e}", pem_file.display()))?;
    let roots = roots_from_pem(&text, &format!("`{}`", pem_file.display()))?;
    Ok((roots, text))
}

/// The CA certificates of a PEM text, at least one; `source` names the text in errors (a
/// file, a field).
pub fn roots_from_pem(text: &str, source: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(text.as_bytes()) {
        let cert = cert.map_err(|e| format!("{source} does not hold PEM certificates: {e}"))?;
        roots.add(cert).map_err(|e| format!("{source}: unusable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{source} holds no certificate"));
    }
    Ok(roots)
}

/// An `http_proxy`'s own TLS settings, beyond whom to trust.
#[derive(Debug, Default)]
pub struct ClientTls<'a> {
    /// The name the upstream's certificate must carry, when not the name sent in SNI.
    pub expected_name: Option<&'a str>,
    /// A PEM certificate chain and its PEM private key, presented to the upstream.
    pub identity: Option<(&'a Path, &'a Path)>,
}

/// The client for an `https` upstream: `trust` (the system roots or a CA file) with `tls`'s
/// expected name and identity. The digest covers everything that configures it, so
/// endpoints with different settings never share connections.
pub fn upstream_client(ca_file: Option<&Path>, tls: &ClientTls<'_>) -> Result<UpstreamTls, String> {
    if tls.expected_name.is_none() && tls.identity.is_none() {
        return match ca_file {
            None => system_roots(),
            Some(file) => self::ca_file(file),
        };
    }
    let mut digest_input = String::new();
    let roots = match ca_file {
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            digest_input.push_str("system roots\n");
            roots
        }
        Some(file) => {
            let (roots, text) = read_roots(file)?;
            digest_input.push_str(&text);
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client setup failed: {e}"))?;
    let builder = match tls.expected_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let expected = ServerName::try_from(name.to_string())
                .map_err(|_| format!("`{name}` is not a DNS name or an IP address"))?;
            digest_input.push_str(&format!("expected name {name}\n"));
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("TLS client setup failed: {e}"))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(ExpectedName { inner, expected }))
        }
    };
    let config = match tls.identity {
        None => builder.with_no_client_auth(),
        Some((certificate, key)) => {
            let chain_text = crate::files::read_bounded(certificate)
                .map_err(|e| format!("cannot read `{}`: {e}", certificate.display()))?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_text.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("`{}` is not a PEM certificate file: {e}", certificate.display()))?;
            if chain.is_empty() {
                return Err(format!("`{}` holds no certificate", certificate.display()));
            }
            private_to_its_owner(key)?;
            let key_text =
                crate::files::read_bounded(key).map_err(|e| format!("cannot read `{}`: {e}", key.display()))?;
            let private = PrivateKeyDer::from_pem_slice(key_text.as_bytes())
                .map_err(|e| format!("`{}` is not a PEM private key: {e}", key.display()))?;
            digest_input.push_str(&chain_text);
            digest_input.push_str(&crate::digest::sha256_hex(key_text.as_bytes()));
            builder.with_client_auth_cert(chain, private).map_err(|e| {
                format!("`{}` and `{}` do not make a client identity: {e}", certificate.display(), key.display())
            })?
        }
    };
    Ok((Arc::new(config), Some(crate::digest::sha256_hex(digest_input.as_bytes()))))
}

/// Refuses a private key file others may read: it is a secret.
fn private_to_its_owner(key: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        std::fs::metadata(key).map_err(|e| format!("cannot read `{}`: {e}", key.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "`{}` may be read by other users (mode {:o}); a private key must be private to its owner: chmod 600 it",
            key.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

/// Checks an upstream's certificate chain against the roots, for a name other than the one
/// sent in SNI.
#[derive(Debug)]
struct ExpectedName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expected: ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for ExpectedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sent: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.expected, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
