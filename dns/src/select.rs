//! Which region answers a client: the policy, kept pure so it can be tested and explained.
//!
//! For a client address the [`RegionSelector`] estimates every region's round-trip time
//! from one *basis*, the best information it has:
//! 1. **measured**: some region has timed connections from the client's prefix; regions not
//!    measured are estimated through the inter-region matrix from a measured one;
//! 2. **hint**: the client sits in a region's configured client network; that region counts
//!    as 0 and the others as their distance from it;
//! 3. **local**: nothing is known; the answering node's region counts as 0.
//!
//! Healthy regions come first, then the lowest estimate, then the highest weight; weight 0
//! drains a region (answered only when no other region is up). When every region is down
//! the answer holds every node: failing open beats answering nothing.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use serde::Serialize;

use crate::health::{HealthBoard, NodeId};
use crate::latency::ClientLatency;
use crate::net::{CLIENT_PREFIX_V4, CLIENT_PREFIX_V6, Cidr};

/// A region as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionConfig {
    pub name: String,
    /// DNS weight: ties go to the heavier region; 0 drains it.
    pub weight: u32,
    /// Client networks known to sit near the region (the cold start).
    pub hints: Vec<Cidr>,
}

/// A cluster member as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAddress {
    pub id: NodeId,
    pub region: String,
    /// The address clients reach the gateway on (answered in A/AAAA records).
    pub gateway_ip: IpAddr,
    /// The member's DNS responder (named in NS records), if it runs one.
    pub dns_addr: Option<SocketAddr>,
}

/// Everything selection depends on, taken at one instant.
#[derive(Debug, Clone)]
pub struct RegionSelector {
    pub regions: Vec<RegionStatus>,
    local: usize,
    /// Round trip between regions (by index), microseconds.
    matrix: HashMap<(usize, usize), u32>,
    /// Measured round trips per client prefix, by region index.
    measured: HashMap<Cidr, Vec<Option<(u32, u32)>>>,
}

/// A region's members and health.
#[derive(Debug, Clone, Serialize)]
pub struct RegionStatus {
    pub name: String,
    pub weight: u32,
    #[serde(serialize_with = "display_list")]
    pub hints: Vec<Cidr>,
    /// Addresses of its members that are up.
    pub healthy: Vec<IpAddr>,
    /// Addresses of all its members.
    pub members: Vec<IpAddr>,
}

impl RegionStatus {
    pub fn up(&self) -> bool {
        !self.healthy.is_empty()
    }
}

fn display_list<S: serde::Serializer>(list: &[Cidr], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(ToString::to_string))
}

/// Where a region's estimate came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Timed from this prefix's own connections to the region.
    Measured { samples: u32 },
    /// A measured region's time plus the inter-region round trip.
    ViaRegion { region: String },
    /// The client is in the region's configured networks.
    Hint { network: String },
    /// The answering node's region (nothing better is known).
    Local,
    /// No way to estimate it.
    Unknown,
}

/// One region's place in a client's ranking.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub region: String,
    pub up: bool,
    pub weight: u32,
    /// Estimated round trip, microseconds (`None`: unknown).
    pub estimate_us: Option<u32>,
    pub source: Source,
}

/// The decision for one client.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// Best first.
    pub ranking: Vec<Candidate>,
    /// Index into [`RegionSelector::regions`]; `None` when every region is down.
    #[serde(skip)]
    pub region: Option<usize>,
    /// ECS scope prefix: how much of the client's address the decision depended on.
    pub scope: u8,
}

impl RegionSelector {
    /// Takes the selection inputs: configured regions, members, health, client latency.
    pub fn new(
        configured: &[RegionConfig],
        members: &[MemberAddress],
        local_region: &str,
        health: &HealthBoard,
        latency: &ClientLatency,
        now: Instant,
    ) -> RegionSelector {
        let mut regions: Vec<RegionStatus> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for member in members {
            let i = *index.entry(member.region.clone()).or_insert_with(|| {
                let config = configured.iter().find(|r| r.name == member.region);
                regions.push(RegionStatus {
                    name: member.region.clone(),
                    weight: config.map_or(1, |c| c.weight),
                    hints: config.map(|c| c.hints.clone()).unwrap_or_default(),
                    healthy: Vec::new(),
                    members: Vec::new(),
                });
                regions.len() - 1
            });
            let region = &mut regions[i];
            if !region.members.contains(&member.gateway_ip) {
                region.members.push(member.gateway_ip);
            }
            if health.node_up(member.id) && !region.healthy.contains(&member.gateway_ip) {
                region.healthy.push(member.gateway_ip);
            }
        }
        let nodes: Vec<(NodeId, String)> = members.iter().map(|m| (m.id, m.region.clone())).collect();
        let mut matrix = HashMap::new();
        for ((from, to), rtt) in health.region_rtts(&nodes, now) {
            if let (Some(&a), Some(&b)) = (index.get(&from), index.get(&to)) {
                // Probes run both ways; keep the smaller, for both directions.
                for key in [(a, b), (b, a)] {
                    let entry = matrix.entry(key).or_insert(rtt);
                    *entry = (*entry).min(rtt);
                }
            }
        }
        let mut measured = HashMap::new();
        for (prefix, estimates) in latency.prefixes() {
            let mut row = vec![None; regions.len()];
            for (region, e) in estimates {
                if let Some(&i) = index.get(region) {
                    row[i] = Some((e.rtt_us, e.samples));
                }
            }
            if row.iter().any(Option::is_some) {
                measured.insert(*prefix, row);
            }
        }
        let local = index.get(local_region).copied().unwrap_or(0);
        RegionSelector { regions, local, matrix, measured }
    }

    /// The prefixes with measurements (the hot path precomputes a decision for each).
    pub fn measured_prefixes(&self) -> impl Iterator<Item = &Cidr> {
        self.measured.keys()
    }

    /// Ranks the regions for a client at `address` (from ECS with `source_prefix` bits, or the
    /// packet's source with the full width).
    pub fn choose(&self, address: IpAddr, source_prefix: u8) -> Choice {
        let prefix = Cidr::client_prefix(address);
        let client_width = if address.is_ipv4() { CLIENT_PREFIX_V4 } else { CLIENT_PREFIX_V6 };
        let (estimates, scope): (Vec<(Option<u32>, Source)>, u8) = if let Some(row) = self.measured.get(&prefix) {
            let estimates = (0..self.regions.len())
                .map(|r| match row[r] {
                    Some((rtt, samples)) => (Some(rtt), Source::Measured { samples }),
                    None => self.via_best(row, r),
                })
                .collect();
            (estimates, client_width)
        } else if let Some((hinted, network)) = self.hint_for(address) {
            let estimates = (0..self.regions.len())
                .map(|r| {
                    if r == hinted {
                        (Some(0), Source::Hint { network: network.to_string() })
                    } else {
                        match self.matrix.get(&(hinted, r)) {
                            Some(&rtt) => (Some(rtt), Source::ViaRegion { region: self.regions[hinted].name.clone() }),
                            None => (None, Source::Unknown),
                        }
                    }
                })
                .collect();
            (estimates, network.prefix())
        } else {
            let estimates = (0..self.regions.len())
                .map(|r| {
                    if r == self.local {
                        (Some(0), Source::Local)
                    } else {
                        match self.matrix.get(&(self.local, r)) {
                            Some(&rtt) => {
                                (Some(rtt), Source::ViaRegion { region: self.regions[self.local].name.clone() })
                            }
                            None => (None, Source::Unknown),
                        }
                    }
                })
                .collect();
            (estimates, 0)
        };
        let mut order: Vec<usize> = (0..self.regions.len()).collect();
        order.sort_by_key(|&r| {
            let region = &self.regions[r];
            (!region.up(), region.weight == 0, estimates[r].0.unwrap_or(u32::MAX), Reverse(region.weight), r)
        });
        let region = order.first().copied().filter(|&r| self.regions[r].up());
        let ranking = order
            .into_iter()
            .map(|r| Candidate {
                region: self.regions[r].name.clone(),
                up: self.regions[r].up(),
                weight: self.regions[r].weight,
                estimate_us: estimates[r].0,
                source: estimates[r].1.clone(),
            })
            .collect();
        Choice { ranking, region, scope: scope.min(source_prefix) }
    }

    /// The addresses to answer with for a choice: the chosen region's healthy members, or
    /// every member when no region is up.
    pub fn addresses(&self, choice: Option<usize>) -> Vec<IpAddr> {
        match choice {
            Some(r) => self.regions[r].healthy.clone(),
            None => self.regions.iter().flat_map(|r| r.members.iter().copied()).collect(),
        }
    }

    fn via_best(&self, row: &[Option<(u32, u32)>], target: usize) -> (Option<u32>, Source) {
        row.iter()
            .enumerate()
            .filter_map(|(m, measured)| {
                let (rtt, _) = (*measured)?;
                let hop = self.matrix.get(&(m, target))?;
                Some((rtt.saturating_add(*hop), m))
            })
            .min()
            .map_or((None, Source::Unknown), |(rtt, m)| {
                (Some(rtt), Source::ViaRegion { region: self.regions[m].name.clone() })
            })
    }

    /// The most specific configured network containing `address`, and its region.
    pub fn hint_for(&self, address: IpAddr) -> Option<(usize, Cidr)> {
        self.regions
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.hints.iter().map(move |h| (i, *h)))
            .filter(|(_, h)| h.contains(address))
            .max_by_key(|(_, h)| h.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{HealthReport, Probe};
    use crate::latency::ClientSample;

    fn members() -> Vec<MemberAddress> {
        [(1, "eu", "127.1.0.1"), (2, "us", "127.2.0.1"), (3, "ap", "127.3.0.1")]
            .into_iter()
            .map(|(id, region, ip)| MemberAddress {
                id,
                region: region.into(),
                gateway_ip: ip.parse().unwrap(),
                dns_addr: None,
            })
            .collect()
    }

    fn config() -> Vec<RegionConfig> {
        vec![RegionConfig { name: "ap".into(), weight: 1, hints: vec!["198.51.100.0/24".parse().unwrap()] }]
    }

    fn down(board: &mut HealthBoard, target: NodeId, t: Instant) {
        for (observer, region) in [(1, "eu"), (2, "us"), (3, "ap")] {
            if observer != target {
                let probes = vec![Probe { target, up: false, rtt_us: None }];
                board.record(HealthReport { observer, region: region.into(), probes, clients: vec![] }, t);
            }
        }
        let nodes: Vec<_> = members().iter().map(|m| (m.id, m.region.clone())).collect();
        board.evaluate(&nodes, t);
    }

    #[test]
    fn measured_beats_hint_beats_local() {
        let now = Instant::now();
        let mut latency = ClientLatency::new("eu");
        let p: Cidr = "203.0.113.0/24".parse().unwrap();
        latency.merge(
            &[
                ClientSample { prefix: p, region: "eu".into(), rtt_us: 80_000, samples: 3 },
                ClientSample { prefix: p, region: "us".into(), rtt_us: 20_000, samples: 5 },
            ],
            now,
        );
        let board = HealthBoard::default();
        let s = RegionSelector::new(&config(), &members(), "eu", &board, &latency, now);
        let measured = s.choose("203.0.113.9".parse().unwrap(), 32);
        assert_eq!(measured.ranking[0].region, "us");
        assert_eq!(measured.scope, 24);
        assert_eq!(s.addresses(measured.region), vec!["127.2.0.1".parse::<IpAddr>().unwrap()]);
        let hinted = s.choose("198.51.100.4".parse().unwrap(), 20);
        assert_eq!(hinted.ranking[0].region, "ap");
        assert_eq!(hinted.scope, 20, "scope never exceeds the source prefix");
        let local = s.choose("192.0.2.1".parse().unwrap(), 32);
        assert_eq!(local.ranking[0].region, "eu");
        assert_eq!(local.scope, 0);
    }

    #[test]
    fn down_regions_go_last_and_all_down_fails_open() {
        let now = Instant::now();
        let mut board = HealthBoard::default();
        down(&mut board, 1, now);
        let latency = ClientLatency::new("eu");
        let s = RegionSelector::new(&config(), &members(), "eu", &board, &latency, now);
        let choice = s.choose("192.0.2.1".parse().unwrap(), 32);
        assert_ne!(choice.ranking[0].region, "eu");
        assert!(!choice.ranking[2].up);
        down(&mut board, 2, now);
        down(&mut board, 3, now);
        let s = RegionSelector::new(&config(), &members(), "eu", &board, &latency, now);
        let choice = s.choose("192.0.2.1".parse().unwrap(), 32);
        assert_eq!(choice.region, None);
        assert_eq!(s.addresses(None).len(), 3);
    }

    #[test]
    fn weight_zero_drains_a_region() {
        let now = Instant::now();
        let config = vec![RegionConfig { name: "eu".into(), weight: 0, hints: vec![] }];
        let s = RegionSelector::new(&config, &members(), "eu", &HealthBoard::default(), &ClientLatency::new("eu"), now);
        let choice = s.choose("192.0.2.1".parse().unwrap(), 32);
        assert_ne!(choice.ranking[0].region, "eu");
    }
}
