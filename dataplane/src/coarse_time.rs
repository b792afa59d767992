//! A monotonic clock read at the kernel's tick, for the stamps a request leaves behind that
//! only have to tell seconds apart: when a client connection went idle (which one to shed at
//! the cap), when a pooled upstream connection was returned (whether it is still fresh).
//!
//! Reading it costs a few nanoseconds where a precise reading costs about twenty, and a
//! proxied request took several: the clock was one of the larger items of a request's user
//! time (docs/BENCHMARKS.md). It lags real time by up to one tick (1–10 ms, 4 ms on most
//! kernels), so anything that measures a request (latency, rate limits, timeouts) keeps
//! [`std::time::Instant`].

use std::time::Duration;

/// A moment on the monotonic clock, to within the kernel's tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoarseInstant {
    millis: u64,
}

impl CoarseInstant {
    /// Now, to within a tick.
    pub fn now() -> CoarseInstant {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `now` is a valid, writable `timespec`; the call writes only into it.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
        if rc != 0 {
            // Only an unknown clock id fails, and every Linux since 2.6.32 has this one.
            return CoarseInstant { millis: 0 };
        }
        let millis = (now.tv_sec as u64).saturating_mul(1000).saturating_add(now.tv_nsec as u64 / 1_000_000);
        CoarseInstant { millis }
    }

    /// Milliseconds since an arbitrary fixed point (the machine's boot): for stamps kept in
    /// an atomic.
    pub fn as_millis(self) -> u64 {
        self.millis
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn saturating_duration_since(self, earlier: CoarseInstant) -> Duration {
        Duration::from_millis(self.millis.saturating_sub(earlier.millis))
    }

    /// How long ago this was, to within a tick.
    pub fn elapsed(self) -> Duration {
        CoarseInstant::now().saturating_duration_since(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn keeps_pace_with_the_precise_clock_to_within_a_tick() {
        let (coarse, precise) = (CoarseInstant::now(), Instant::now());
        assert!(coarse.as_millis() > 0, "the coarse clock could not be read");
        std::thread::sleep(Duration::from_millis(60));
        let (coarse_gone, precise_gone) = (coarse.elapsed(), precise.elapsed());
        // Both readings lag by up to a tick (at most 10 ms on any kernel configuration).
        let difference = coarse_gone.abs_diff(precise_gone);
        assert!(difference <= Duration::from_millis(20), "coarse {coarse_gone:?} against precise {precise_gone:?}");
        assert!(CoarseInstant::now() >= coarse, "the clock went backwards");
        assert_eq!(coarse.saturating_duration_since(CoarseInstant::now()), Duration::ZERO);
    }
}
