//! Region health by agreement.
//!
//! Every node probes the gateways of the nodes in *other* regions and gossips what it saw
//! (a [`HealthReport`]). A node is taken out of DNS answers only when observers in at least
//! two other regions (or in every other region, when there are fewer than two) agree that it
//! is down: one observer cut off from the rest cannot take a region out. A node that was
//! down comes back only after observers have agreed it is up for [`RECOVERY`], so a flapping
//! node does not make answers oscillate. A region is down when all of its nodes are.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use meridian_dns::health::{HealthBoard, HealthReport, Probe};
//! let nodes = [(1, "eu".to_string()), (2, "us".to_string()), (3, "ap".to_string())];
//! let mut board = HealthBoard::default();
//! let t = Instant::now();
//! for observer in [2, 3] {
//!     let region = if observer == 2 { "us" } else { "ap" };
//!     let probes = vec![Probe { target: 1, up: false, rtt_us: None }];
//!     board.record(HealthReport { observer, region: region.into(), probes, clients: vec![] }, t);
//! }
//! board.evaluate(&nodes, t);
//! assert!(!board.node_up(1));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::latency::ClientSample;

/// A node id, as the cluster numbers its members.
pub type NodeId = u64;

/// How long an observer's report counts after it was received.
pub const REPORT_LIFETIME: Duration = Duration::from_secs(3);
/// Reports younger than this outvote older ones from the same region (reports come every
/// 250 ms).
pub const CURRENT: Duration = Duration::from_millis(600);
/// How long observers must agree a down node is up before answers include it again.
pub const RECOVERY: Duration = Duration::from_secs(3);

/// One observer's view, gossiped to every peer a few times a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub observer: NodeId,
    pub region: String,
    /// The observer's latest verdict on each node it probes.
    pub probes: Vec<Probe>,
    /// Client round-trip times the observer measured since its last report.
    pub clients: Vec<ClientSample>,
}

/// An observer's verdict on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub target: NodeId,
    pub up: bool,
    /// Round-trip time of the last successful probe, microseconds.
    pub rtt_us: Option<u32>,
}

#[derive(Debug, Clone)]
struct Received {
    region: String,
    at: Instant,
    probes: Vec<Probe>,
}

#[derive(Debug, Clone, Copy)]
struct NodeState {
    up: bool,
    /// While down: since when observers have agreed it is up.
    agreed_up_since: Option<Instant>,
}

/// What every observer last said, and the node states decided from it.
#[derive(Debug, Default, Clone)]
pub struct HealthBoard {
    reports: HashMap<NodeId, Received>,
    states: HashMap<NodeId, NodeState>,
}

/// How one region's observers see one node (for `meridian dns explain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Opinion {
    pub observer_region: String,
    pub up: usize,
    pub down: usize,
}

impl HealthBoard {
    /// Stores an observer's report (replacing its previous one).
    pub fn record(&mut self, report: HealthReport, now: Instant) {
        self.reports.insert(report.observer, Received { region: report.region, at: now, probes: report.probes });
    }

    /// Forgets observers that left the cluster.
    pub fn retain_observers(&mut self, mut keep: impl FnMut(NodeId) -> bool) {
        self.reports.retain(|id, _| keep(*id));
        self.states.retain(|id, _| keep(*id));
    }

    /// Opinions of the fresh observers outside `region` about `target`, by observer region.
    ///
    /// Within a region, reports from the last [`CURRENT`] outvote older ones: an observer
    /// that stopped reporting (paused, dead, cut off) loses its say as soon as a region-mate
    /// reports, rather than at the end of [`REPORT_LIFETIME`].
    pub fn opinions(&self, target: NodeId, region: &str, now: Instant) -> Vec<Opinion> {
        // Per observer region: (up, down) among current reports, and among all fresh ones.
        let mut by_region: BTreeMap<&str, [(usize, usize); 2]> = BTreeMap::new();
        for received in self.reports.values() {
            let age = now.saturating_duration_since(received.at);
            if received.region == region || age > REPORT_LIFETIME {
                continue;
            }
            if let Some(probe) = received.probes.iter().find(|p| p.target == target) {
                let entry = by_region.entry(&received.region).or_default();
                for (i, tally) in entry.iter_mut().enumerate() {
                    if i == 0 && age > CURRENT {
                        continue;
                    }
                    if probe.up {
                        tally.0 += 1;
                    } else {
                        tally.1 += 1;
                    }
                }
            }
        }
        by_region
            .into_iter()
            .map(|(r, [current, fresh])| {
                let (up, down) = if current != (0, 0) { current } else { fresh };
                Opinion { observer_region: r.to_string(), up, down }
            })
            .collect()
    }

    /// Re-decides every node's state from the fresh reports; returns whether any changed.
    /// `nodes` lists every member as `(id, region)`.
    pub fn evaluate(&mut self, nodes: &[(NodeId, String)], now: Instant) -> bool {
        let mut changed = false;
        for (id, region) in nodes {
            let opinions = self.opinions(*id, region, now);
            // A region's observers say "down" when most of them do (a tie is "up").
            let regions_down = opinions.iter().filter(|o| o.down > o.up).count();
            let required = opinions.len().min(2);
            let state = self.states.entry(*id).or_insert(NodeState { up: true, agreed_up_since: None });
            if required == 0 {
                // Nobody outside the region can see it: keep the last decision.
                continue;
            }
            let agreed_down = regions_down >= required;
            if state.up && agreed_down {
                *state = NodeState { up: false, agreed_up_since: None };
                changed = true;
            } else if !state.up {
                let agreed_up = opinions.len() - regions_down >= required;
                if !agreed_up {
                    state.agreed_up_since = None;
                } else {
                    let since = *state.agreed_up_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= RECOVERY {
                        *state = NodeState { up: true, agreed_up_since: None };
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// Whether `node` is up as decided by the last evaluation (unknown nodes are up).
    pub fn node_up(&self, node: NodeId) -> bool {
        self.states.get(&node).is_none_or(|s| s.up)
    }

    /// The inter-region round-trip matrix: for each (observer region, target region), the
    /// smallest fresh probe RTT between their nodes, microseconds.
    pub fn region_rtts(&self, nodes: &[(NodeId, String)], now: Instant) -> HashMap<(String, String), u32> {
        let region_of: HashMap<NodeId, &str> = nodes.iter().map(|(id, r)| (*id, r.as_str())).collect();
        let mut matrix: HashMap<(String, String), u32> = HashMap::new();
        for received in self.reports.values() {
            if now.saturating_duration_since(received.at) > REPORT_LIFETIME {
                continue;
            }
            for probe in &received.probes {
                let (Some(rtt), Some(target_region)) = (probe.rtt_us, region_of.get(&probe.target)) else { continue };
                if !probe.up {
                    continue;
                }
                let key = (received.region.clone(), target_region.to_string());
                let entry = matrix.entry(key).or_insert(rtt);
                *entry = (*entry).min(rtt);
            }
        }
        matrix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<(NodeId, String)> {
        vec![(1, "eu".into()), (2, "eu".into()), (3, "us".into()), (4, "ap".into())]
    }

    fn report(observer: NodeId, region: &str, verdicts: &[(NodeId, bool)]) -> HealthReport {
        HealthReport {
            observer,
            region: region.into(),
            probes: verdicts.iter().map(|&(target, up)| Probe { target, up, rtt_us: Some(1000) }).collect(),
            clients: vec![],
        }
    }

    #[test]
    fn one_observer_alone_cannot_take_a_node_down() {
        let mut board = HealthBoard::default();
        let t = Instant::now();
        board.record(report(3, "us", &[(1, false), (2, false)]), t);
        board.record(report(4, "ap", &[(1, true), (2, true)]), t);
        assert!(!board.evaluate(&nodes(), t));
        assert!(board.node_up(1) && board.node_up(2));
    }

    #[test]
    fn two_regions_agreeing_take_it_down_and_recovery_waits() {
        let mut board = HealthBoard::default();
        let t = Instant::now();
        board.record(report(3, "us", &[(1, false)]), t);
        board.record(report(4, "ap", &[(1, false)]), t);
        assert!(board.evaluate(&nodes(), t));
        assert!(!board.node_up(1));
        assert!(board.node_up(2), "a node nobody reports on stays as it was");
        // Back up: not before RECOVERY of agreement.
        let t1 = t + Duration::from_millis(500);
        board.record(report(3, "us", &[(1, true)]), t1);
        board.record(report(4, "ap", &[(1, true)]), t1);
        board.evaluate(&nodes(), t1);
        assert!(!board.node_up(1));
        // A flap resets the clock.
        let t2 = t1 + Duration::from_secs(2);
        board.record(report(4, "ap", &[(1, false)]), t2);
        board.evaluate(&nodes(), t2);
        let t3 = t2 + Duration::from_secs(2);
        board.record(report(3, "us", &[(1, true)]), t3);
        board.record(report(4, "ap", &[(1, true)]), t3);
        board.evaluate(&nodes(), t3);
        assert!(!board.node_up(1), "agreement restarted at t3");
        let t4 = t3 + RECOVERY;
        board.record(report(3, "us", &[(1, true)]), t4);
        board.record(report(4, "ap", &[(1, true)]), t4);
        assert!(board.evaluate(&nodes(), t4));
        assert!(board.node_up(1));
    }

    #[test]
    fn same_region_and_stale_observers_do_not_count() {
        let mut board = HealthBoard::default();
        let t = Instant::now();
        board.record(report(2, "eu", &[(1, false)]), t);
        board.record(report(3, "us", &[(1, false)]), t - Duration::from_secs(10));
        board.record(report(4, "ap", &[(1, false)]), t);
        board.evaluate(&nodes(), t);
        // Only "ap" is fresh and outside eu: one region, and it is every observing region.
        assert!(!board.node_up(1), "with one observing region its verdict stands");
        let mut board = HealthBoard::default();
        board.record(report(2, "eu", &[(1, false)]), t);
        board.evaluate(&nodes(), t);
        assert!(board.node_up(1), "a same-region observer has no say");
    }

    #[test]
    fn matrix_takes_the_smallest_fresh_rtt() {
        let mut board = HealthBoard::default();
        let t = Instant::now();
        let mut r = report(3, "us", &[(1, true), (2, true)]);
        r.probes[1].rtt_us = Some(400);
        board.record(r, t);
        let m = board.region_rtts(&nodes(), t);
        assert_eq!(m.get(&("us".to_string(), "eu".to_string())), Some(&400));
    }

    #[test]
    fn an_observer_that_stopped_reporting_loses_its_say() {
        let mut board = HealthBoard::default();
        let t = Instant::now();
        // Region us has two observers; 5 stalls after saying "up", 3 keeps reporting "down".
        let mut nodes = nodes();
        nodes.push((5, "us".into()));
        board.record(report(5, "us", &[(1, true)]), t);
        board.record(report(4, "ap", &[(1, false)]), t);
        let later = t + Duration::from_millis(900);
        board.record(report(3, "us", &[(1, false)]), later);
        board.record(report(4, "ap", &[(1, false)]), later);
        board.evaluate(&nodes, later);
        assert!(!board.node_up(1), "node 5's old report is outvoted by node 3's current one");
        // Both current: a tie within a region is "up".
        let mut board = HealthBoard::default();
        board.record(report(5, "us", &[(1, true)]), later);
        board.record(report(3, "us", &[(1, false)]), later);
        board.record(report(4, "ap", &[(1, false)]), later);
        board.evaluate(&nodes, later);
        assert!(board.node_up(1));
    }
}
