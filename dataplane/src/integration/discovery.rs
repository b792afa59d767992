//! Upstream discovery: an integration's targets named in DNS and re-resolved as their
//! records' TTLs run out, without a reload.
//!
//! A name (`pets.internal:8080`) resolves to its A and AAAA records, each address a target
//! on the given port; a service (`_http._tcp.pets.internal`) resolves to its SRV records of
//! the lowest priority, each target's addresses on the record's port with its weight. Each
//! name is watched by one task per node, shared by every integration that names it, for as
//! long as one does. When a resolution fails or finds nothing, the last good set stays in
//! use, the failure is counted (`meridian_discovery_failures_total{name}`) and logged once per
//! run of failures, and the name is asked again after a few seconds.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::rr::{RData, RecordType};
use hickory_resolver::Resolver;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::sync::watch;

use super::upstreams::TargetSpec;

/// The shortest and longest wait between two resolutions of a name.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// The wait after a failed resolution.
const RETRY: Duration = Duration::from_secs(2);
/// SRV weights become target weights, which go up to 100.
const MAX_WEIGHT: u16 = 100;

/// What is looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lookup {
    /// A and AAAA records of `name`, every address on `port`.
    Addresses { name: String, port: u16 },
    /// SRV records of `name`.
    Service { name: String },
}

impl std::fmt::Display for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookup::Addresses { name, port } => write!(f, "{name}:{port}"),
            Lookup::Service { name } => f.write_str(name),
        }
    }
}

/// The targets a name resolved to, numbered so that users notice a change.
#[derive(Debug, Default)]
pub struct Resolved {
    pub version: u64,
    pub targets: Vec<TargetSpec>,
}

/// One watched name: its current targets.
#[derive(Debug)]
pub struct Watched {
    current: ArcSwap<Resolved>,
    /// Becomes true once the first resolution is done (successful or not).
    first: watch::Sender<bool>,
}

impl Watched {
    pub fn current(&self) -> Arc<Resolved> {
        self.current.load_full()
    }

    /// Waits (at most `limit`) for the first resolution.
    pub async fn ready(&self, limit: Duration) {
        let mut first = self.first.subscribe();
        let _ = tokio::time::timeout(limit, first.wait_for(|done| *done)).await;
    }
}

/// The node's resolver and the names it watches.
pub struct Discovery {
    resolver: Resolver<TokioRuntimeProvider>,
    watched: Mutex<HashMap<Lookup, Arc<Watched>>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").finish_non_exhaustive()
    }
}

/// The name servers `/etc/resolv.conf` lists (port 53).
pub fn system_nameservers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Discovery {
    /// A resolver asking `nameservers` (UDP, then TCP for a truncated answer). Answers are
    /// not cached beyond one resolution: the watch task follows the TTLs itself.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Discovery, String> {
        let resolver = meridian_dns::forward::resolver(nameservers, 0)
            .map_err(|e| format!("the discovery resolver cannot start: {e}"))?;
        Ok(Discovery { resolver, watched: Mutex::new(HashMap::new()) })
    }

    /// The watched name for `lookup`, its task started on first use. The task ends once no
    /// integration holds the name any more.
    pub fn watch(self: &Arc<Self>, lookup: &Lookup) -> Arc<Watched> {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = watched.get(lookup) {
            return w.clone();
        }
        let w = Arc::new(Watched { current: ArcSwap::default(), first: watch::Sender::new(false) });
        watched.insert(lookup.clone(), w.clone());
        let (discovery, lookup, task_watched) = (self.clone(), lookup.clone(), Arc::downgrade(&w));
        tokio::spawn(async move {
            let label = lookup.to_string();
            let failures = metrics::counter!("meridian_discovery_failures_total", "name" => label.clone());
            let targets_gauge = metrics::gauge!("meridian_discovery_targets", "name" => label.clone());
            let mut failing = false;
            loop {
                // Held only while resolving: once every integration dropped the name, stop.
                let Some(w) = task_watched.upgrade() else { break };
                let wait = match discovery.resolve(&lookup).await {
                    Ok((targets, ttl)) if !targets.is_empty() => {
                        if failing {
                            tracing::info!(name = %label, targets = targets.len(), "the name resolves again");
                            failing = false;
                        }
                        targets_gauge.set(targets.len() as f64);
                        let current = w.current();
                        if current.targets != targets {
                            w.current.store(Arc::new(Resolved { version: current.version + 1, targets }));
                        }
                        ttl.clamp(MIN_REFRESH, MAX_REFRESH)
                    }
                    outcome => {
                        failures.increment(1);
                        if !failing {
                            let why = match outcome {
                                Err(e) => e,
                                Ok(_) => "no records".to_string(),
                            };
                            let kept = w.current().targets.len();
                            tracing::warn!(name = %label, error = %why, kept, "upstream discovery failed; the last good targets stay in use");
                            failing = true;
                        }
                        RETRY
                    }
                };
                w.first.send_replace(true);
                drop(w);
                tokio::time::sleep(wait).await;
            }
            discovery.watched.lock().unwrap_or_else(|p| p.into_inner()).remove(&lookup);
        });
        w
    }

    /// The targets `lookup` resolves to now, and how long they may be kept.
    async fn resolve(&self, lookup: &Lookup) -> Result<(Vec<TargetSpec>, Duration), String> {
        match lookup {
            Lookup::Addresses { name, port } => {
                let (addresses, ttl) = self.addresses(name).await?;
                let targets = addresses.into_iter().filter_map(|ip| target(SocketAddr::new(ip, *port), 1)).collect();
                Ok((targets, ttl))
            }
            Lookup::Service { name } => {
                let lookup = self.resolver.lookup(name.as_str(), RecordType::SRV).await.map_err(|e| e.to_string())?;
                let mut ttl = MAX_REFRESH;
                let mut records = Vec::new();
                for record in lookup.answers() {
                    if let RData::SRV(srv) = &record.data {
                        ttl = ttl.min(Duration::from_secs(u64::from(record.ttl)));
                        records.push(srv.clone());
                    }
                }
                let Some(lowest) = records.iter().map(|r| r.priority).min() else { return Ok((Vec::new(), ttl)) };
                let mut targets = Vec::new();
                for srv in records.iter().filter(|r| r.priority == lowest) {
                    let (addresses, address_ttl) = self.addresses(&srv.target.to_ascii()).await?;
                    ttl = ttl.min(address_ttl);
                    let weight = u32::from(srv.weight.clamp(1, MAX_WEIGHT));
                    targets
                        .extend(addresses.into_iter().filter_map(|ip| target(SocketAddr::new(ip, srv.port), weight)));
                }
                Ok((targets, ttl))
            }
        }
    }

    /// The A and AAAA addresses of `name`, sorted, and their shortest TTL.
    async fn addresses(&self, name: &str) -> Result<(Vec<IpAddr>, Duration), String> {
        let mut addresses = Vec::new();
        let mut ttl = MAX_REFRESH;
        let mut last_error = None;
        for kind in [RecordType::A, RecordType::AAAA] {
            match self.resolver.lookup(name, kind).await {
                Ok(lookup) => {
                    for record in lookup.answers() {
                        let ip = match &record.data {
                            RData::A(a) => IpAddr::V4(a.0),
                            RData::AAAA(a) => IpAddr::V6(a.0),
                            _ => continue,
                        };
                        ttl = ttl.min(Duration::from_secs(u64::from(record.ttl)));
                        addresses.push(ip);
                    }
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => last_error = Some(e.to_string()),
                Err(e) => return Err(e.to_string()),
            }
        }
        if addresses.is_empty()
            && let Some(e) = last_error
        {
            return Err(e);
        }
        addresses.sort();
        addresses.dedup();
        Ok((addresses, ttl))
    }
}

fn target(address: SocketAddr, weight: u32) -> Option<TargetSpec> {
    let authority = address.to_string().parse().ok()?;
    Some(TargetSpec { authority, weight, region: None })
}
