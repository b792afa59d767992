//! Small digest helpers shared by API keys, the admin token check and the cluster's PKI.
//!
//! They live on their own so that the request path (API keys) and the admin API do not
//! depend on the cluster's certificate code for two functions.

use std::fmt::Write;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Compares secrets in time independent of where the first difference is.
///
/// ```
/// use meridian_node::digest::constant_time_eq;
/// assert!(constant_time_eq(b"token", b"token"));
/// assert!(!constant_time_eq(b"token", b"tokem"));
/// assert!(!constant_time_eq(b"token", b"tok"));
/// ```
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SHA-256 of `bytes`, as lower-case hex.
///
/// ```
/// use meridian_node::digest::sha256_hex;
/// assert_eq!(&sha256_hex(b"")[..16], "e3b0c44298fc1c14");
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}
