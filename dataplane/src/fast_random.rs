//! Cheap per-thread random numbers for sampling decisions on the request path (canary
//! splits): a xorshift generator seeded from the clock, with no lock and no system call.
//! Not for anything secret.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
            | 1,
    );
}

/// The next 64 random bits of this thread's generator.
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_spread_evenly() {
        let below_half = (0..10_000).filter(|_| super::next_u64() < u64::MAX / 2).count();
        assert!((4_700..=5_300).contains(&below_half), "{below_half}");
    }
}
