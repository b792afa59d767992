//! Small digest helpers shared by API keys, the admin token check, the cluster's PKI, and
//! hex digits both ways (trace ids, percent-encoded paths).
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

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// The value of a hex digit, in either case.
pub fn hex_digit(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The `N` bytes that `2 × N` hex digits (either case) write, and nothing for any other text.
///
/// ```
/// use meridian_dataplane::digest::{from_hex, sha256, sha256_hex};
/// assert_eq!(from_hex::<32>(sha256_hex(b"key").as_bytes()), Some(sha256(b"key")));
/// assert_eq!(from_hex::<32>(b"e3b0"), None);
/// ```
pub fn from_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(out)
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
