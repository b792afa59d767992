//! Client-to-region round-trip times, learned from real clients.
//!
//! Gateways time the connections they terminate (kernel TCP RTT, or the TLS handshake when a
//! proxy sits in the path) and hand the figures to [`ClientLatency::record`]. They are
//! aggregated per client prefix (/24, /56) as a moving average for the node's own region,
//! gossiped as [`ClientSample`]s, and merged so every node knows, for each prefix, how fast
//! each region answers it.
//!
//! ```
//! use meridian_dns::latency::ClientLatency;
//! let mut table = ClientLatency::new("eu");
//! table.record("203.0.113.7".parse().unwrap(), 40_000);
//! table.record("203.0.113.99".parse().unwrap(), 20_000);
//! let prefix = "203.0.113.0/24".parse().unwrap();
//! assert_eq!(table.estimate(&prefix, "eu").unwrap().rtt_us, 34_000);
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::net::Cidr;

/// How long a prefix's estimate is used after its last sample.
pub const ESTIMATE_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Most prefixes remembered; new prefixes beyond it are ignored until old ones expire.
pub const MAX_PREFIXES: usize = 100_000;
/// Weight of a new sample in the moving average.
const ALPHA: f64 = 0.3;

/// One region's estimate for one prefix, as gossiped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSample {
    pub prefix: Cidr,
    pub region: String,
    pub rtt_us: u32,
    pub samples: u32,
}

/// A region's round-trip time to a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub rtt_us: u32,
    pub samples: u32,
    pub updated: Instant,
}

/// Per prefix, per region estimates; the local region's are measured here.
#[derive(Debug, Clone)]
pub struct ClientLatency {
    local_region: String,
    table: HashMap<Cidr, HashMap<String, Estimate>>,
    /// Prefixes whose local estimate changed since the last [`ClientLatency::take_changes`].
    changed: Vec<Cidr>,
}

impl ClientLatency {
    pub fn new(local_region: &str) -> ClientLatency {
        ClientLatency { local_region: local_region.to_string(), table: HashMap::new(), changed: Vec::new() }
    }

    /// Adds a measured round trip from this node's region to `client`.
    pub fn record(&mut self, client: IpAddr, rtt_us: u32) {
        self.record_at(client, rtt_us, Instant::now());
    }

    fn record_at(&mut self, client: IpAddr, rtt_us: u32, now: Instant) {
        let prefix = Cidr::client_prefix(client);
        if !self.table.contains_key(&prefix) && self.table.len() >= MAX_PREFIXES {
            metrics::counter!("meridian_dns_latency_prefixes_dropped_total").increment(1);
            return;
        }
        let regions = self.table.entry(prefix).or_default();
        let estimate =
            regions.entry(self.local_region.clone()).or_insert(Estimate { rtt_us, samples: 0, updated: now });
        if estimate.samples > 0 {
            let mixed = ALPHA * f64::from(rtt_us) + (1.0 - ALPHA) * f64::from(estimate.rtt_us);
            estimate.rtt_us = mixed.round() as u32;
        }
        estimate.samples = estimate.samples.saturating_add(1);
        estimate.updated = now;
        if !self.changed.contains(&prefix) {
            self.changed.push(prefix);
        }
    }

    /// The local estimates that changed since the last call, for gossip.
    pub fn take_changes(&mut self) -> Vec<ClientSample> {
        let changed = std::mem::take(&mut self.changed);
        changed.into_iter().filter_map(|prefix| self.sample(prefix)).collect()
    }

    /// Every local estimate, for anti-entropy.
    pub fn local_samples(&self) -> Vec<ClientSample> {
        self.table.keys().filter_map(|p| self.sample(*p)).collect()
    }

    fn sample(&self, prefix: Cidr) -> Option<ClientSample> {
        let e = self.table.get(&prefix)?.get(&self.local_region)?;
        Some(ClientSample { prefix, region: self.local_region.clone(), rtt_us: e.rtt_us, samples: e.samples })
    }

    /// Merges a peer's samples (a peer in this node's region measures it too: newest wins).
    pub fn merge(&mut self, samples: &[ClientSample], now: Instant) {
        for sample in samples {
            if !self.table.contains_key(&sample.prefix) && self.table.len() >= MAX_PREFIXES {
                continue;
            }
            self.table.entry(sample.prefix).or_default().insert(
                sample.region.clone(),
                Estimate { rtt_us: sample.rtt_us, samples: sample.samples, updated: now },
            );
        }
    }

    /// Drops estimates older than [`ESTIMATE_LIFETIME`].
    pub fn expire(&mut self, now: Instant) {
        self.table.retain(|_, regions| {
            regions.retain(|_, e| now.saturating_duration_since(e.updated) < ESTIMATE_LIFETIME);
            !regions.is_empty()
        });
    }

    pub fn estimate(&self, prefix: &Cidr, region: &str) -> Option<Estimate> {
        self.table.get(prefix)?.get(region).copied()
    }

    /// Every prefix with at least one estimate, and its estimates by region.
    pub fn prefixes(&self) -> impl Iterator<Item = (&Cidr, &HashMap<String, Estimate>)> {
        self.table.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_per_prefix_and_reports_changes_once() {
        let mut t = ClientLatency::new("eu");
        let now = Instant::now();
        t.record_at("10.1.2.3".parse().unwrap(), 10_000, now);
        t.record_at("10.1.2.4".parse().unwrap(), 20_000, now);
        t.record_at("10.9.9.9".parse().unwrap(), 5_000, now);
        let changes = t.take_changes();
        assert_eq!(changes.len(), 2);
        assert!(t.take_changes().is_empty());
        let p: Cidr = "10.1.2.0/24".parse().unwrap();
        assert_eq!(t.estimate(&p, "eu").unwrap().rtt_us, 13_000);
        assert_eq!(t.estimate(&p, "eu").unwrap().samples, 2);
    }

    #[test]
    fn merges_other_regions_and_expires() {
        let mut t = ClientLatency::new("eu");
        let now = Instant::now();
        let p: Cidr = "10.1.2.0/24".parse().unwrap();
        t.merge(&[ClientSample { prefix: p, region: "us".into(), rtt_us: 90_000, samples: 4 }], now);
        assert_eq!(t.estimate(&p, "us").unwrap().rtt_us, 90_000);
        assert!(t.local_samples().is_empty(), "only local estimates are re-gossiped");
        t.expire(now + ESTIMATE_LIFETIME);
        assert!(t.estimate(&p, "us").is_none());
    }
}
