//! Response-rate limiting per source prefix, so a node cannot be used as a reflection
//! amplifier against a spoofed victim. Over the limit, one response in `slip` is sent
//! truncated (a real client retries over TCP, which cannot be spoofed) and the rest are
//! dropped, the way BIND and Knot do it.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::time::Instant;

use crate::net::Cidr;
use crate::wire::FoldHasher;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send a truncated (TC) response instead.
    Slip,
    Drop,
}

/// Per-/24 (/56) response counters for the current second. One per UDP worker: no locks.
pub struct ResponseRateLimit {
    per_second: u32,
    slip: u32,
    second: Instant,
    counts: HashMap<Cidr, u32, BuildHasherDefault<FoldHasher>>,
}

/// Most prefixes tracked within one second; beyond it new prefixes are not limited.
const MAX_TRACKED: usize = 65_536;

impl ResponseRateLimit {
    /// `per_second` 0 turns limiting off.
    pub fn new(per_second: u32, slip: u32) -> ResponseRateLimit {
        ResponseRateLimit { per_second, slip, second: Instant::now(), counts: HashMap::default() }
    }

    pub fn check(&mut self, source: IpAddr, now: Instant) -> Verdict {
        if self.per_second == 0 {
            return Verdict::Send;
        }
        if now.saturating_duration_since(self.second).as_secs() >= 1 {
            self.second = now;
            self.counts.clear();
        }
        let prefix = Cidr::client_prefix(source);
        if self.counts.len() >= MAX_TRACKED && !self.counts.contains_key(&prefix) {
            return Verdict::Send;
        }
        let count = self.counts.entry(prefix).or_insert(0);
        *count += 1;
        if *count <= self.per_second {
            return Verdict::Send;
        }
        metrics::counter!("meridian_dns_rate_limited_total").increment(1);
        if self.slip > 0 && (*count - self.per_second).is_multiple_of(self.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_prefix_with_slip() {
        let mut rrl = ResponseRateLimit::new(3, 2);
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let same_prefix: IpAddr = "10.0.0.200".parse().unwrap();
        let other: IpAddr = "10.0.1.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..6).map(|i| rrl.check(if i % 2 == 0 { a } else { same_prefix }, t)).collect();
        assert_eq!(
            verdicts,
            [Verdict::Send, Verdict::Send, Verdict::Send, Verdict::Drop, Verdict::Slip, Verdict::Drop]
        );
        assert_eq!(rrl.check(other, t), Verdict::Send);
        assert_eq!(rrl.check(a, t + std::time::Duration::from_secs(1)), Verdict::Send, "a new second");
    }
}
