//! TLS for custom domains: one certificate per domain on one port, chosen by SNI.
//!
//! The resolver holds the certificate set in an [`ArcSwap`], so a reload that changes a
//! certificate takes effect for the next handshake without restarting the listener. A
//! handshake whose SNI names no configured domain is refused (`unrecognized_name`); one
//! without SNI gets the listener's default certificate (`listen.default_certificate`) when
//! there is one, and is refused otherwise.
//!
//! Each certificate's expiry is published as `meridian_certificate_expiry_timestamp_seconds`
//! whenever the set is loaded, for the "expires soon" alert (`deploy/prometheus/alerts.yaml`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Certificates by lower-case domain name; `*.example.com` entries match one label.
#[derive(Debug, Default, Clone)]
pub struct DomainCertificates {
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl DomainCertificates {
    pub fn insert(&mut self, name: &str, key: Arc<CertifiedKey>) {
        self.by_name.insert(name.to_ascii_lowercase(), key);
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// When each leaf certificate expires (Unix seconds), by domain name.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let mut list: Vec<(String, i64)> = self
            .by_name
            .iter()
            .filter_map(|(name, key)| {
                let leaf = key.cert.first()?;
                let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
                Some((name.clone(), parsed.validity().not_after.timestamp()))
            })
            .collect();
        list.sort();
        list
    }

    /// The certificate for `server_name`: exact name first, then a wildcard.
    pub fn find(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let name = server_name.to_ascii_lowercase();
        if let Some(k) = self.by_name.get(&name) {
            return Some(k.clone());
        }
        let (_, parent) = name.split_once('.')?;
        self.by_name.get(&format!("*.{parent}")).cloned()
    }
}

/// Reads a PEM certificate chain and private key from files and checks that they belong
/// together. Both are read with the size bound every file an operator names gets.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, String> {
    let cert = crate::files::read_bounded(cert_file)
        .map_err(|e| format!("cannot read certificate `{}`: {e}", cert_file.display()))?;
    let key = crate::files::read_bounded(key_file)
        .map_err(|e| format!("cannot read a private key from `{}`: {e}", key_file.display()))?;
    certified_key_from_pem(&cert, &key)
        .map_err(|e| format!("`{}` / `{}`: {e}", cert_file.display(), key_file.display()))
}

/// Parses a PEM certificate chain and private key and checks that they belong together.
pub fn certified_key_from_pem(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("not a PEM private key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|e| format!("certificate and key do not fit: {e}"))?;
    Ok(Arc::new(certified))
}

/// Picks the certificate by SNI from the current set.
#[derive(Debug)]
pub struct SniResolver {
    current: ArcSwap<DomainCertificates>,
    /// The domain whose certificate clients without SNI get.
    default: ArcSwap<Option<String>>,
}

impl SniResolver {
    pub fn new(certificates: DomainCertificates, default: Option<String>) -> Self {
        publish_expiries(None, &certificates);
        let resolver =
            SniResolver { current: ArcSwap::from_pointee(certificates), default: ArcSwap::from_pointee(default) };
        resolver.check_default();
        resolver
    }

    /// Swaps in a reloaded certificate set.
    pub fn replace(&self, certificates: DomainCertificates) {
        publish_expiries(Some(&self.current.load()), &certificates);
        self.current.store(Arc::new(certificates));
        self.check_default();
    }

    /// Changes the default certificate's domain (a reloaded node file).
    pub fn set_default(&self, default: Option<String>) {
        self.default.store(Arc::new(default));
        self.check_default();
    }

    /// The certificate for a handshake that named `server_name`, or none.
    fn certificate(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.load();
        match server_name {
            Some(name) => current.find(name),
            None => current.find(self.default.load().as_deref()?),
        }
    }

    /// Says so when the default names a domain without a certificate (a cluster's domains
    /// change apart from the node's file).
    fn check_default(&self) {
        if let Some(name) = self.default.load().as_deref()
            && self.current.load().find(name).is_none()
        {
            tracing::warn!(domain = %name, "listen.default_certificate names no domain with a certificate: clients without SNI are refused");
        }
    }
}

/// Sets each certificate's expiry gauge; a certificate no longer served gets NaN, which no
/// alert threshold matches (a gauge cannot be removed once registered).
fn publish_expiries(previous: Option<&DomainCertificates>, current: &DomainCertificates) {
    let gauge =
        |name: &str| metrics::gauge!("meridian_certificate_expiry_timestamp_seconds", "name" => name.to_string());
    let gone = previous.into_iter().flat_map(|p| p.by_name.keys()).filter(|n| !current.by_name.contains_key(*n));
    for name in gone {
        gauge(name).set(f64::NAN);
    }
    for (name, expires) in current.expiries() {
        gauge(&name).set(expires as f64);
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certificate(hello.server_name())
    }
}

/// The server TLS configuration: ALPN `h2` then `http/1.1`, certificates by SNI.
pub fn server_config(resolver: Arc<SniResolver>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_of_each_certificate_is_read_from_it() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["api.example.com".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let cert = params.self_signed(&key).unwrap();
        let mut set = DomainCertificates::default();
        set.insert("API.example.com", certified_key_from_pem(&cert.pem(), &key.serialize_pem()).unwrap());
        // 2031-05-17T00:00:00Z
        assert_eq!(set.expiries(), vec![("api.example.com".to_string(), 1_936_742_400)]);
    }

    #[test]
    fn a_client_without_sni_gets_the_default_certificate_or_none() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["api.example.com".to_string()]).unwrap().self_signed(&key).unwrap();
        let mut set = DomainCertificates::default();
        set.insert("api.example.com", certified_key_from_pem(&cert.pem(), &key.serialize_pem()).unwrap());
        let resolver = SniResolver::new(set, None);
        assert!(resolver.certificate(None).is_none(), "no default: refused");
        assert!(resolver.certificate(Some("api.example.com")).is_some());
        resolver.set_default(Some("api.example.com".into()));
        assert!(resolver.certificate(None).is_some());
        resolver.set_default(Some("other.example.com".into()));
        assert!(resolver.certificate(None).is_none(), "a default without a certificate: refused");
        assert!(resolver.certificate(Some("unknown.example.com")).is_none(), "an unknown name stays refused");
    }
}
