//! Request ids: taken from the client's `x-request-id` when well-formed, else generated.
//!
//! Generated ids are 32 hex digits: a per-process random prefix and a per-thread counter,
//! unique without coordination or a random-number call per request.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether a client-supplied id is safe to reuse (and to write into logs).
pub fn is_well_formed(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn process_prefix() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        h.write_u32(std::process::id());
        h.finish()
    })
}

static THREAD_BLOCKS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// (next, end) of this thread's block of counter values.
    static COUNTER: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

fn next_counter() -> u64 {
    COUNTER.with(|c| {
        let (mut next, mut end) = c.get();
        if next == end {
            next = THREAD_BLOCKS.fetch_add(1, Ordering::Relaxed) << 32;
            end = next + (1 << 32);
        }
        c.set((next + 1, end));
        next
    })
}

/// A fresh, process-unique request id.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, word) in [process_prefix(), next_counter()].into_iter().enumerate() {
        for j in 0..16 {
            out[i * 16 + j] = HEX[((word >> (60 - 4 * j)) & 0xf) as usize];
        }
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
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
}
