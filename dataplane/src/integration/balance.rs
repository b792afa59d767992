//! Choosing a target for each request among an integration's weighted targets.
//!
//! Two ways, named in the integration's `balance`:
//! - `round_robin`: the targets in a smooth weighted order (a target of weight 3 next to one
//!   of weight 1 serves requests 1, 2 and 4 of every four, not three in a row);
//! - `least_requests`: the power of two choices: two targets drawn by weight, the one with
//!   fewer requests outstanding per unit of weight wins.
//!
//! Ejected targets are skipped. A node prefers targets in its own region and falls back to
//! the others when none there is healthy. When every target is ejected, the one whose
//! ejection ends first is tried alone, so an upstream that recovered is found again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::endpoint::Endpoint;

/// How an integration spreads requests over its targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastRequests,
}

/// One target of an integration.
#[derive(Debug)]
pub struct Target {
    pub endpoint: Arc<Endpoint>,
    pub weight: u32,
    pub region: Option<String>,
}

/// The targets of one integration and the state that spreads requests over them.
#[derive(Debug)]
pub struct Balancer {
    targets: Vec<Target>,
    balance: Balance,
    /// Target indexes in smooth weighted round-robin order.
    schedule: Vec<usize>,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(targets: Vec<Target>, balance: Balance) -> Balancer {
        let schedule = smooth_weighted_order(&targets.iter().map(|t| t.weight.max(1)).collect::<Vec<_>>());
        Balancer { targets, balance, schedule, next: AtomicUsize::new(0) }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The target for the next request: healthy, not in `tried`, in `region` when one there
    /// is healthy. `None` only when every target was tried.
    pub fn pick(&self, region: Option<&str>, tried: &[usize]) -> Option<usize> {
        let healthy = |i: usize| !tried.contains(&i) && self.targets[i].endpoint.ejected_for().is_none();
        let local = |i: usize| region.is_some() && self.targets[i].region.as_deref() == region;
        let prefer_local = region.is_some() && (0..self.targets.len()).any(|i| healthy(i) && local(i));
        let eligible = |i: usize| healthy(i) && (!prefer_local || local(i));
        let chosen = match self.balance {
            Balance::RoundRobin => self.round_robin(eligible),
            Balance::LeastRequests => self.two_choices(eligible),
        };
        chosen.or_else(|| {
            // Every target left is ejected: try the one that comes back first, alone.
            (0..self.targets.len())
                .filter(|i| !tried.contains(i))
                .min_by_key(|&i| self.targets[i].endpoint.ejected_for().unwrap_or_default())
        })
    }

    fn round_robin(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..self.schedule.len()).map(|k| self.schedule[(start + k) % self.schedule.len()]).find(|&i| eligible(i))
    }

    fn two_choices(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let draw = || {
            let at = crate::fast_random::next_u64() as usize % self.schedule.len();
            (0..self.schedule.len()).map(|k| self.schedule[(at + k) % self.schedule.len()]).find(|&i| eligible(i))
        };
        let (a, b) = (draw()?, draw()?);
        // Fewer outstanding requests per unit of weight wins: compare a/wa with b/wb.
        let load = |i: usize| {
            u64::from(self.targets[i].endpoint.outstanding()) * 1000 / u64::from(self.targets[i].weight.max(1))
        };
        Some(if load(b) < load(a) { b } else { a })
    }
}

/// The smooth weighted round-robin order (as nginx spreads weighted upstreams): each step
/// every target gains its weight, the richest is chosen and pays the total.
fn smooth_weighted_order(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let Some((best, _)) = current.iter().enumerate().max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i))) else {
            break;
        };
        current[best] -= total;
        order.push(best);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integration::endpoint::{EndpointKey, EndpointSettings};

    fn target(port: u16, weight: u32, region: Option<&str>, failures: u32) -> Target {
        let key = EndpointKey {
            scheme: http::uri::Scheme::HTTP,
            authority: format!("127.0.0.1:{port}").parse().unwrap(),
            server_name: None,
            trust: None,
            http2: false,
        };
        let endpoint = Arc::new(Endpoint::new(key, EndpointSettings { failures, ..Default::default() }, None));
        Target { endpoint, weight, region: region.map(str::to_string) }
    }

    #[test]
    fn the_weighted_order_is_smooth_and_exact() {
        assert_eq!(smooth_weighted_order(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_order(&[3, 1]), [0, 0, 1, 0]);
        let order = smooth_weighted_order(&[2, 3, 5]);
        for (i, w) in [2, 3, 5].into_iter().enumerate() {
            assert_eq!(order.iter().filter(|&&x| x == i).count(), w);
        }
    }

    #[test]
    fn round_robin_follows_the_weights_and_skips_ejected_targets() {
        let balancer = Balancer::new(vec![target(1, 3, None, 1), target(2, 1, None, 1)], Balance::RoundRobin);
        let picks: Vec<_> = (0..8).map(|_| balancer.pick(None, &[]).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        balancer.targets()[0].endpoint.failed();
        assert!(balancer.targets()[0].endpoint.ejected_for().is_some());
        assert!((0..8).all(|_| balancer.pick(None, &[]) == Some(1)));
        // A request that failed on target 1 tries the ejected one rather than nothing.
        assert_eq!(balancer.pick(None, &[1]), Some(0));
        assert_eq!(balancer.pick(None, &[0, 1]), None);
    }

    #[test]
    fn the_own_region_is_preferred_while_it_has_a_healthy_target() {
        let balancer = Balancer::new(
            vec![target(1, 1, Some("eu"), 1), target(2, 1, Some("us"), 1), target(3, 1, Some("us"), 1)],
            Balance::LeastRequests,
        );
        assert!((0..20).all(|_| balancer.pick(Some("eu"), &[]) == Some(0)));
        assert!((0..20).all(|_| balancer.pick(Some("us"), &[]) != Some(0)));
        balancer.targets()[0].endpoint.failed();
        assert!((0..20).all(|_| balancer.pick(Some("eu"), &[]) != Some(0)));
        // A region with no targets of its own uses all of them.
        let seen: std::collections::BTreeSet<_> = (0..50).filter_map(|_| balancer.pick(Some("ap"), &[])).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn ejection_grows_while_failures_repeat_and_resets_on_success() {
        let t = target(1, 1, None, 2);
        let e = &t.endpoint;
        e.failed();
        assert!(e.ejected_for().is_none(), "one failure of two");
        e.failed();
        let first = e.ejected_for().unwrap();
        assert!(first <= Duration::from_secs(5) && first > Duration::from_secs(4), "{first:?}");
        // Pretend the ejection is over, then fail again: twice as long.
        e.ejected_until_for_test(0);
        e.failed();
        e.failed();
        let second = e.ejected_for().unwrap();
        assert!(second > Duration::from_secs(9), "{second:?}");
        e.ejected_until_for_test(0);
        e.succeeded();
        e.failed();
        e.failed();
        assert!(e.ejected_for().unwrap() <= Duration::from_secs(5));
    }

    use std::time::Duration;
}
