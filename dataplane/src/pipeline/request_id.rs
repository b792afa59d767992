//! Request ids: taken from the client's `x-request-id` when well-formed, else generated.
//!
//! Generated ids are 128 random bits as 32 hex digits, drawn from a thread-local CSPRNG
//! (ChaCha, seeded by the operating system): ids end up in responses, logs and upstream
//! headers, and an id someone else can predict lets them forge or collide with log lines
//! and idempotency records of other clients.

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::RngExt;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether a client-supplied id is safe to reuse (and to write into logs).
pub fn is_well_formed(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A fresh, unpredictable request id.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = rand::rng().random::<u128>().to_be_bytes();
    let mut out = [0u8; 32];
    for (digits, byte) in out.chunks_exact_mut(2).zip(bits) {
        digits[0] = HEX[usize::from(byte >> 4)];
        digits[1] = HEX[usize::from(byte & 0xf)];
    }
    // The id is cloned into the upstream request, the response, the exchange and the log: as
    // its own owner its bytes are shared from the start (one allocation), where a copied
    // `Vec` would be moved to a shared allocation at the first clone.
    // Hex digits are always a valid header value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out)).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The id for a request with these headers.
pub fn assign(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&REQUEST_ID) {
        Some(v) if is_well_formed(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn client_ids_are_kept_only_when_well_formed() {
        let mut h = HeaderMap::new();
        h.insert(&REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(assign(&h), "abc-123");
        h.insert(&REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(assign(&h), "has space");
        h.insert(&REQUEST_ID, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_eq!(assign(&h).len(), 32);
    }

    #[test]
    fn generated_ids_are_unique_across_threads() {
        let ids: Vec<Vec<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1000).map(|_| generate().to_str().unwrap().to_string()).collect()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let all: HashSet<String> = ids.into_iter().flatten().collect();
        assert_eq!(all.len(), 4000);
        assert!(all.iter().all(|id| id.len() == 32 && is_well_formed(id.as_bytes())));
    }

    #[test]
    fn consecutive_ids_share_no_predictable_structure() {
        // The ids used to be a fixed process prefix and a counter: consecutive ids shared
        // their first 16 digits and differed by one.
        let ids: Vec<u128> = (0..64).map(|_| u128::from_str_radix(generate().to_str().unwrap(), 16).unwrap()).collect();
        let shared_prefix = ids.windows(2).filter(|w| w[0] >> 64 == w[1] >> 64).count();
        assert_eq!(shared_prefix, 0);
        let successive = ids.windows(2).filter(|w| w[1].wrapping_sub(w[0]) < 1 << 16).count();
        assert_eq!(successive, 0);
        // Every bit position takes both values across 64 ids.
        let ones = ids.iter().fold(0u128, |acc, id| acc | id);
        let zeros = ids.iter().fold(0u128, |acc, id| acc | !id);
        assert_eq!((ones, zeros), (u128::MAX, u128::MAX));
    }
}
