//! The cluster's certificates: a CA made at `cluster init`, node certificates it signs, and
//! join tokens.
//!
//! Every node-to-node connection is mutual TLS with certificates from this CA. A node that
//! joins generates its own key and sends a certificate request with the join token; a member
//! checks the token and signs. The token also carries the CA's fingerprint, so the joining
//! node can authenticate the member it talks to before it trusts anything it says (the
//! approach of kubeadm's discovery hash).

use meridian_dataplane::digest::{hex, sha256_hex};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The name every node certificate carries and every client checks.
pub const NODE_NAME: &str = "node.meridian.internal";

/// Errors making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate error: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The cluster CA: certificate and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A node's own certificate and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// The fingerprint of a PEM certificate: SHA-256 of its DER.
pub fn fingerprint(cert_pem: &str) -> Result<String, PkiError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))?;
    Ok(sha256_hex(&der))
}

/// 32 random bytes as hex.
pub fn random_secret() -> Result<String, PkiError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| PkiError::Invalid("the system random source failed".into()))?;
    Ok(hex(&bytes))
}

impl ClusterCa {
    /// Makes a new CA.
    pub fn generate() -> Result<ClusterCa, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, "Meridian cluster CA");
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    /// Signs a node's certificate request (client and server use, name [`NODE_NAME`]).
    pub fn sign_request(&self, csr_pem: &str) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params.subject_alt_names = vec![rcgen::SanType::DnsName(NODE_NAME.try_into()?)];
        csr.params.is_ca = IsCa::NoCa;
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        Ok(csr.signed_by(&self.issuer()?)?.pem())
    }

    /// A complete identity for a node of this CA (used by the node that creates the CA).
    pub fn issue_identity(&self) -> Result<NodeIdentity, PkiError> {
        let (key_pem, csr_pem) = new_request()?;
        Ok(NodeIdentity { cert_pem: self.sign_request(&csr_pem)?, key_pem, ca_pem: self.cert_pem.clone() })
    }
}

/// A fresh node key and a certificate request for it: (key PEM, CSR PEM).
pub fn new_request() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![NODE_NAME.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, NODE_NAME);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// A join token: `<secret>.<CA fingerprint>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: String,
    pub ca_fingerprint: String,
}

impl JoinToken {
    pub fn parse(text: &str) -> Result<JoinToken, PkiError> {
        let (secret, fp) = text
            .trim()
            .split_once('.')
            .ok_or_else(|| PkiError::Invalid("a join token looks like `<secret>.<ca-fingerprint>`".into()))?;
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex64(secret) || !hex64(fp) {
            return Err(PkiError::Invalid("a join token has two parts of 64 hex digits".into()));
        }
        Ok(JoinToken { secret: secret.to_ascii_lowercase(), ca_fingerprint: fp.to_ascii_lowercase() })
    }

    pub fn render(&self) -> String {
        format!("{}.{}", self.secret, self.ca_fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_chains_to_the_ca() {
        let ca = ClusterCa::generate().unwrap();
        let identity = ca.issue_identity().unwrap();
        // rustls accepts the pair as a certified key.
        let chain = vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap()];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
        rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider()).unwrap();
        assert_eq!(fingerprint(&identity.ca_pem).unwrap().len(), 64);
    }

    #[test]
    fn tokens_parse_strictly() {
        let t = JoinToken { secret: "a".repeat(64), ca_fingerprint: "b".repeat(64) };
        assert_eq!(JoinToken::parse(&t.render()).unwrap(), t);
        assert!(JoinToken::parse("abc").is_err());
        assert!(JoinToken::parse(&format!("{}.{}", "g".repeat(64), "b".repeat(64))).is_err());
    }
}
