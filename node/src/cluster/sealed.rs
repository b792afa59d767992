//! The cluster data key, and the secrets it seals before they enter the replicated state.
//!
//! Everything in the Raft log, its snapshots and the sled files is a copy of the cluster's
//! configuration that every member keeps on disk. Secrets that members must be able to use
//! (the cluster CA's private key, which any leader needs to sign a joining node's
//! certificate; later, signing secrets of credentials) therefore enter that state only
//! sealed: encrypted with ChaCha20-Poly1305 under a 256-bit *data key* that never enters
//! the log. `cluster init` makes the data key; a joining node receives it in the join
//! reply, over TLS that it authenticated by the CA fingerprint in its token, after the
//! member checked the token's secret. Each member keeps it in `<data_dir>/tls/data.key`
//! (mode 0600, in a 0700 directory).
//!
//! A sealed value is `version (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`; the purpose of the
//! value (for example `"cluster-ca-key"`) is bound as associated data, so a sealed value
//! cannot be replayed as another.
//!
//! ```
//! use meridian_node::cluster::sealed::DataKey;
//! let key = DataKey::generate().unwrap();
//! let sealed = key.seal("example", b"a secret").unwrap();
//! assert_eq!(key.open("example", &sealed).unwrap(), b"a secret");
//! assert!(key.open("another purpose", &sealed).is_err());
//! ```

use std::path::Path;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const VERSION: u8 = 1;

/// What the cluster CA's private key is sealed for.
pub const CA_KEY: &str = "cluster-ca-key";

/// What the private key of custom domain `name` is sealed for (bound to the name, so one
/// domain's sealed key cannot be replayed as another's).
pub fn domain_key(name: &str) -> String {
    format!("domain-key:{name}")
}
/// What the secret of credentials `access_key_id` is sealed for.
pub fn credential_secret(access_key_id: &str) -> String {
    format!("credential-secret:{access_key_id}")
}

const KEY_LEN: usize = 32;

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the system random source failed")]
    Random,
    #[error("a data key is {KEY_LEN} bytes; this one has {0}")]
    KeyLength(usize),
    #[error("the sealed value is damaged, or was sealed with another cluster's data key")]
    Open,
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// The cluster's data key.
#[derive(Clone)]
pub struct DataKey([u8; KEY_LEN]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Result<DataKey, SealError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SealError::Random)?;
        Ok(DataKey(bytes))
    }

    /// The key a join reply carried.
    pub fn from_bytes(bytes: &[u8]) -> Result<DataKey, SealError> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| SealError::KeyLength(bytes.len()))?;
        Ok(DataKey(array))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads the key a member keeps in its data directory.
    pub fn load(path: &Path) -> Result<DataKey, SealError> {
        let bytes = std::fs::read(path)
            .map_err(|e| SealError::File { path: path.display().to_string(), message: e.to_string() })?;
        DataKey::from_bytes(&bytes)
    }

    /// Writes the key, readable by this user only.
    pub fn save(&self, path: &Path) -> Result<(), SealError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let file_error =
            |e: std::io::Error| SealError::File { path: path.display().to_string(), message: e.to_string() };
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(file_error)?;
        file.write_all(&self.0).and_then(|_| file.sync_all()).map_err(file_error)
    }

    fn aead(&self) -> LessSafeKey {
        // A 32-byte key is always the right length for ChaCha20-Poly1305.
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.0).unwrap_or_else(|_| unreachable!()))
    }

    /// Encrypts `plaintext` for `purpose`.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + CHACHA20_POLY1305.tag_len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.as_bytes()), &mut body)
            .map_err(|_| SealError::Open)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts a value sealed for `purpose` with this key.
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&[VERSION], rest) = sealed.split_at_checked(1).ok_or(SealError::Open)? else {
            return Err(SealError::Open);
        };
        let (nonce, body) = rest.split_at_checked(NONCE_LEN).ok_or(SealError::Open)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut body = body.to_vec();
        let plain =
            self.aead().open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut body).map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let key = DataKey::generate().unwrap();
        let sealed = key.seal("cluster-ca-key", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"PRIVATE"));
        assert_eq!(key.open("cluster-ca-key", &sealed).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        assert!(DataKey::generate().unwrap().open("cluster-ca-key", &sealed).is_err());
        assert!(key.open("other", &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open("cluster-ca-key", &tampered).is_err());
        for cut in 0..sealed.len() {
            assert!(key.open("cluster-ca-key", &sealed[..cut]).is_err());
        }
        // Two seals of one value differ (fresh nonces).
        assert_ne!(sealed, key.seal("cluster-ca-key", b"-----BEGIN PRIVATE KEY-----").unwrap());
    }

    #[test]
    fn keys_are_saved_private_and_load_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.key");
        let key = DataKey::generate().unwrap();
        key.save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(DataKey::load(&path).unwrap().as_bytes(), key.as_bytes());
        assert!(key.save(&path).is_err(), "an existing key is never overwritten");
        assert!(matches!(DataKey::from_bytes(&[0; 31]), Err(SealError::KeyLength(31))));
    }
}
