//! Small digest helpers shared by API keys, the admin token check, the cluster's PKI and
//! trace ids (their hex digits).
//!
//! They live on their own so that the request path (API keys, traces) and the admin API do
//! not depend on the cluster's certificate code for a few functions.

/// Lower-case hex of `bytes`.
///
/// ```
/// assert_eq!(meridian_dataplane::digest::hex(&[0x00, 0x9f, 0xa0]), "009fa0");
/// ```
pub fn hex(bytes: &[u8]) -> String {
    let mut digits = vec![0; bytes.len() * 2];
    hex_into(bytes, &mut digits);
    // Hex digits are ASCII.
    String::from_utf8(digits).unwrap_or_default()
}

/// `bytes` as lower-case hex digits into `out` (twice as long), for callers that keep the
/// digits where they are needed (trace ids on the stack) instead of in a `String`.
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// Compares secrets in time independent of where the first difference is.
///
/// ```
/// use meridian_dataplane::digest::constant_time_eq;
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
/// use meridian_dataplane::digest::sha256_hex;
/// assert_eq!(&sha256_hex(b"")[..16], "e3b0c44298fc1c14");
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}
