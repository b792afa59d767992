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
//!
//! A domain may also ask clients for a certificate (mutual TLS): its handshakes then use a
//! configuration with the domain's verifier (its truststore and revocation list), chosen by
//! SNI like the certificate. The verified client certificate becomes the connection's
//! [`ClientCertificate`], which authorizers, transforms and the access log read.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Certificates by lower-case domain name; `*.example.com` entries match one label.
#[derive(Debug, Default, Clone)]
pub struct DomainCertificates {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    /// The client certificate policies of domains with mutual TLS.
    client_auth: HashMap<String, ClientAuth>,
}

/// A domain's client certificate policy.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// What the handshake runs: proof that the client holds the key, and (when required)
    /// the chain to the truststore.
    verifier: Arc<dyn ClientCertVerifier>,
    /// When a certificate is only requested: the check that decides, after the handshake,
    /// whether the certificate the client showed is an identity (a bad one is not).
    requested: Option<Arc<dyn ClientCertVerifier>>,
}

/// By exact name, then by the wildcard of its parent.
fn by_sni<'m, T>(map: &'m HashMap<String, T>, server_name: &str) -> Option<&'m T> {
    let name = server_name.to_ascii_lowercase();
    if let Some(v) = map.get(&name) {
        return Some(v);
    }
    let (_, parent) = name.split_once('.')?;
    map.get(&format!("*.{parent}"))
}

impl DomainCertificates {
    pub fn insert(&mut self, name: &str, key: Arc<CertifiedKey>) {
        self.by_name.insert(name.to_ascii_lowercase(), key);
    }

    /// Makes `name`'s handshakes ask for a client certificate under `policy`.
    pub fn require_client_certificates(&mut self, name: &str, policy: ClientAuth) {
        self.client_auth.insert(name.to_ascii_lowercase(), policy);
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
        by_sni(&self.by_name, server_name).cloned()
    }
}

/// The client certificate policy of a domain: certificates must chain to the CA
/// certificates of `ca_file` and not be revoked by the lists of `crl_file`. With `required:
/// false` a client without a certificate, or with one that does not pass, is served without
/// identity (it must still prove it holds the key of what it shows).
pub fn client_verifier(ca_file: &Path, crl_file: Option<&Path>, required: bool) -> Result<ClientAuth, String> {
    let (roots, _) = crate::integration::trust::read_roots(ca_file)?;
    let crls = match crl_file {
        Some(crl_file) => {
            let text = crate::files::read_bounded(crl_file)
                .map_err(|e| format!("cannot read `{}`: {e}", crl_file.display()))?;
            revocation_lists(&text).map_err(|e| format!("`{}`: {e}", crl_file.display()))?
        }
        None => Vec::new(),
    };
    verifier(roots, crls, required).map_err(|e| format!("`{}`: {e}", ca_file.display()))
}

/// The same policy from PEM text (a cluster-managed domain's, from the replicated state).
pub fn client_verifier_from_pem(ca_pem: &str, crl_pem: Option<&str>, required: bool) -> Result<ClientAuth, String> {
    let roots = crate::integration::trust::roots_from_pem(ca_pem, "`ca_pem`")?;
    let crls = match crl_pem {
        Some(text) => revocation_lists(text)?,
        None => Vec::new(),
    };
    verifier(roots, crls, required)
}

/// The revocation lists of a PEM text: at least one.
fn revocation_lists(text: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not a PEM revocation list: {e}"))?;
    if crls.is_empty() {
        return Err("holds no revocation list".into());
    }
    Ok(crls)
}

fn verifier(
    roots: rustls::RootCertStore,
    crls: Vec<CertificateRevocationListDer<'static>>,
    required: bool,
) -> Result<ClientAuth, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if !crls.is_empty() {
        builder = builder.with_crls(crls);
    }
    let strict = builder.build().map_err(|e| e.to_string())?;
    Ok(if required {
        ClientAuth { verifier: strict, requested: None }
    } else {
        ClientAuth { verifier: Arc::new(Requested(strict.clone())), requested: Some(strict) }
    })
}

/// A requested client certificate: the handshake checks only that the client holds its
/// key; whether it is an identity is decided after the handshake.
#[derive(Debug)]
struct Requested(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Requested {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A verified client certificate, as the connection's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject's distinguished name, `CN=alice,O=Example`.
    pub subject: String,
    pub issuer: String,
    /// Hexadecimal, lower case.
    pub serial: String,
    /// DNS names, e-mail addresses, URIs and IP addresses of the subject alternative names.
    pub sans: Vec<String>,
    /// SHA-256 of the certificate (DER), hexadecimal.
    pub fingerprint: String,
}

impl ClientCertificate {
    /// The identity in `der` (a certificate the handshake verified); `None` when it cannot
    /// be parsed.
    pub fn from_der(der: &[u8]) -> Option<ClientCertificate> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let sans = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_string()),
                        GeneralName::RFC822Name(m) => Some(m.to_string()),
                        GeneralName::URI(u) => Some(u.to_string()),
                        GeneralName::IPAddress(bytes) => match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(|b| std::net::Ipv4Addr::from(b).to_string()),
                            16 => <[u8; 16]>::try_from(*bytes).ok().map(|b| std::net::Ipv6Addr::from(b).to_string()),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(ClientCertificate {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            sans,
            fingerprint: crate::digest::sha256_hex(der),
        })
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
    /// The server configurations of domains with mutual TLS, made on their first handshake
    /// and forgotten when the set is replaced.
    mutual: std::sync::Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl SniResolver {
    pub fn new(certificates: DomainCertificates, default: Option<String>) -> Self {
        publish_expiries(None, &certificates);
        let resolver = SniResolver {
            current: ArcSwap::from_pointee(certificates),
            default: ArcSwap::from_pointee(default),
            mutual: Default::default(),
        };
        resolver.check_default();
        resolver
    }

    /// Swaps in a reloaded certificate set.
    pub fn replace(&self, certificates: DomainCertificates) {
        publish_expiries(Some(&self.current.load()), &certificates);
        self.current.store(Arc::new(certificates));
        self.mutual.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.check_default();
    }

    /// Whether a request for `host` may be served on a connection whose handshake named
    /// `handshake_name`: always, unless `host` is a domain with mutual TLS and the handshake
    /// was not made under the same client certificate policy (no SNI, or another domain's),
    /// so that no client reaches a mutual TLS domain past its handshake.
    pub fn allows(&self, handshake_name: Option<&str>, host: &str) -> bool {
        let current = self.current.load();
        let Some(wanted) = by_sni(&current.client_auth, host) else { return true };
        handshake_name
            .and_then(|name| by_sni(&current.client_auth, name))
            .is_some_and(|had| std::ptr::addr_eq(Arc::as_ptr(&had.verifier), Arc::as_ptr(&wanted.verifier)))
    }

    /// The identity of a client that showed `chain` in a handshake for `server_name`: its
    /// leaf, when the domain's policy accepts the chain (a required certificate passed the
    /// handshake already; a requested one is checked now).
    pub fn identity(&self, server_name: Option<&str>, chain: &[CertificateDer<'_>]) -> Option<ClientCertificate> {
        let (leaf, intermediates) = chain.split_first()?;
        let current = self.current.load();
        let policy = by_sni(&current.client_auth, server_name?)?;
        if let Some(check) = &policy.requested
            && check.verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now()).is_err()
        {
            return None;
        }
        ClientCertificate::from_der(leaf.as_ref())
    }

    /// The configuration for a handshake that named `server_name`: `base`, or for a domain
    /// with mutual TLS, `base` with the domain's client verifier.
    pub fn config_for(
        self: &Arc<Self>,
        server_name: Option<&str>,
        base: &Arc<rustls::ServerConfig>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let Some(name) = server_name else { return Ok(base.clone()) };
        let current = self.current.load();
        let Some(policy) = by_sni(&current.client_auth, name) else { return Ok(base.clone()) };
        let key = name.to_ascii_lowercase();
        let mut mutual = self.mutual.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = mutual.get(&key) {
            return Ok(config.clone());
        }
        // Never without the verifier: when it cannot be set up, the handshake fails.
        let config = Arc::new(server_config_with(policy.verifier.clone(), self.clone())?);
        mutual.insert(key, config.clone());
        Ok(config)
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
    server_config_with(rustls::server::WebPkiClientVerifier::no_client_auth(), resolver)
}

fn server_config_with(
    verifier: Arc<dyn ClientCertVerifier>,
    resolver: Arc<SniResolver>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
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
