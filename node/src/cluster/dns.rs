//! A member's DNS: feeds the `meridian-dns` responder from the cluster.
//!
//! Three loops run per member:
//! - **probe** (every 250 ms): an HTTP request to the gateway of every member in another
//!   region; three failures in a row make the target "down" in this observer's view;
//! - **report** (every 250 ms): this observer's verdicts and the client round trips its
//!   gateway measured since the last report go to every peer over node RPC
//!   (`ReportHealth`), and into its own board;
//! - **rebuild** (every 100 ms): re-decide health by agreement and, when anything changed
//!   (health, latency, members, zones, regions), build a new answer snapshot.
//!
//! Client round trips come from the gateway listeners through [`ClientRttSink`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_consensus::ClusterNode;
use meridian_dns::health::{HealthBoard, HealthReport, NodeId, Probe};
use meridian_dns::latency::ClientLatency;
use meridian_dns::responder::{Answers, Responder};
use meridian_dns::select::{MemberAddress, RegionConfig, RegionSelector};
use meridian_dns::server::{DnsServer, DnsSockets, ServerSettings};
use meridian_dns::zone::{Zone, ZoneSpec};
use meridian_proto::HealthPayload;
use meridian_proto::node_client::NodeClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::member::ClusterMember;
use super::network::{channel, decode, encode};
use meridian_dataplane::config::DnsSettings;
use meridian_dataplane::gateway::{ClientRttSink, PROBE_PATH};

const PROBE_EVERY: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Consecutive failed probes before an observer calls a node down.
const FAILURES_TO_DOWN: u32 = 3;
/// Largest report accepted.
const MAX_REPORT_PROBES: usize = 1_000;
const MAX_REPORT_CLIENTS: usize = 20_000;

#[derive(Debug, Clone, Copy, Default)]
struct ProbeState {
    failures: u32,
    rtt_us: Option<u32>,
    /// Probes sent and not finished.
    in_flight: u32,
}

/// A member's DNS responder and the health and latency it answers from.
pub struct DnsService {
    member: Arc<ClusterMember>,
    responder: Arc<Responder>,
    health: Mutex<HealthBoard>,
    latency: Mutex<ClientLatency>,
    probes: Mutex<HashMap<NodeId, ProbeState>>,
    /// Set when received reports or local samples may change answers.
    changed: std::sync::atomic::AtomicBool,
    server: DnsServer,
}

/// Decodes a peer's report, refusing malformed or oversized ones.
pub fn decode_report(bytes: &[u8]) -> Result<HealthReport, String> {
    let report: HealthReport = decode(bytes).map_err(|e| format!("malformed health report: {e}"))?;
    if report.probes.len() > MAX_REPORT_PROBES || report.clients.len() > MAX_REPORT_CLIENTS {
        return Err(format!(
            "health report with {} probes and {} client samples (at most {MAX_REPORT_PROBES} and {MAX_REPORT_CLIENTS})",
            report.probes.len(),
            report.clients.len()
        ));
    }
    Ok(report)
}

impl DnsService {
    /// Starts the responder on `sockets` and the loops that feed it; returns the service
    /// and the sink gateways report client round trips to.
    pub fn start(
        member: Arc<ClusterMember>,
        settings: &DnsSettings,
        sockets: DnsSockets,
    ) -> std::io::Result<(Arc<DnsService>, ClientRttSink)> {
        let forwarder = match &settings.forward {
            Some((upstreams, allow)) => Some(
                meridian_dns::forward::Forwarder::new(upstreams, allow.clone())
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            ),
            None => None,
        };
        let region = member.me.region.clone();
        let empty = RegionSelector::new(
            &[],
            &[],
            &region,
            &HealthBoard::default(),
            &ClientLatency::new(&region),
            Instant::now(),
        );
        let responder = Arc::new(Responder::new(Answers::new(Vec::new(), 0, empty, &[]), forwarder));
        let server = DnsServer::start(
            responder.clone(),
            sockets,
            ServerSettings { udp_workers: settings.udp_workers, rate_limit: settings.rate_limit, slip: settings.slip },
        )?;
        tracing::info!(addr = %server.local_addr, "DNS responder listening (UDP and TCP)");
        let service = Arc::new(DnsService {
            member: member.clone(),
            responder,
            health: Mutex::new(HealthBoard::default()),
            latency: Mutex::new(ClientLatency::new(&region)),
            probes: Mutex::new(HashMap::new()),
            changed: std::sync::atomic::AtomicBool::new(true),
            server,
        });
        let (sink, mut samples) = tokio::sync::mpsc::channel::<(IpAddr, u32)>(4096);
        let collector = service.clone();
        tokio::spawn(async move {
            while let Some((client, rtt)) = samples.recv().await {
                collector.lock_latency().record(client, rtt);
                collector.changed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
        tokio::spawn(service.clone().probe_loop());
        tokio::spawn(service.clone().report_loop());
        tokio::spawn(service.clone().rebuild_loop());
        Ok((service, sink))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr
    }

    pub fn responder(&self) -> &Arc<Responder> {
        &self.responder
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, HealthBoard> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_latency(&self) -> std::sync::MutexGuard<'_, ClientLatency> {
        self.latency.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a peer's report.
    pub fn receive(&self, report: HealthReport) {
        if !report.clients.is_empty() {
            self.lock_latency().merge(&report.clients, Instant::now());
            self.changed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.lock_health().record(report, Instant::now());
    }

    fn members(&self) -> Vec<(NodeId, ClusterNode)> {
        let metrics = self.member.raft.metrics().borrow().clone();
        metrics.membership_config.membership().nodes().map(|(id, n)| (*id, n.clone())).collect()
    }

    /// Probes every peer in another region every 250 ms. Probes do not wait for each other:
    /// a stalled target (its probes time out after 500 ms) still collects a failure every
    /// round, and does not slow the probing of the others.
    async fn probe_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let source = self.member.me.rpc_addr.parse::<SocketAddr>().ok().map(|a| a.ip());
        let carried_us = super::member::carried_round_trip(self.member.heartbeat).as_micros() as u64;
        let warned_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        loop {
            tick.tick().await;
            let targets: Vec<(NodeId, SocketAddr)> = self
                .members()
                .into_iter()
                .filter(|(id, n)| *id != self.member.id && n.region != self.member.me.region)
                .filter_map(|(id, n)| n.gateway_addr.parse().ok().map(|a| (id, a)))
                .collect();
            {
                let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
                probes.retain(|id, _| targets.iter().any(|(t, _)| t == id));
            }
            for (id, addr) in targets {
                {
                    let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
                    let state = probes.entry(id).or_default();
                    if state.in_flight >= 2 {
                        continue;
                    }
                    state.in_flight += 1;
                }
                let (service, warned_at) = (self.clone(), warned_at.clone());
                tokio::spawn(async move {
                    let result = probe(addr, source).await;
                    if let Some(rtt) = result {
                        service.warn_if_slow(id, rtt, carried_us, &warned_at);
                    }
                    let mut probes = service.probes.lock().unwrap_or_else(|p| p.into_inner());
                    let state = probes.entry(id).or_default();
                    state.in_flight = state.in_flight.saturating_sub(1);
                    match result {
                        Some(rtt) => {
                            state.failures = 0;
                            state.rtt_us = Some(rtt);
                        }
                        None => state.failures = state.failures.saturating_add(1),
                    }
                });
            }
        }
    }

    /// A round trip longer than Raft's replication allows means writes to that node time
    /// out. Says so (naming the setting), once a minute.
    fn warn_if_slow(&self, node: NodeId, rtt_us: u32, carried_us: u64, warned_at: &Mutex<Option<Instant>>) {
        if u64::from(rtt_us) <= carried_us {
            return;
        }
        let mut warned = warned_at.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            *warned = Some(Instant::now());
            tracing::warn!(
                node,
                round_trip_ms = rtt_us / 1000,
                carried_ms = carried_us / 1000,
                heartbeat_ms = self.member.heartbeat.as_millis() as u64,
                "the round trip to a peer exceeds what Raft replication allows (3 x cluster.heartbeat, at least 500 ms, less a margin): writes to it will time out; raise cluster.heartbeat on every member"
            );
        }
    }

    /// This observer's verdicts (client samples are added per message).
    fn own_report(&self) -> HealthReport {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        HealthReport {
            observer: self.member.id,
            region: self.member.me.region.clone(),
            probes: probes
                .iter()
                .map(|(id, s)| Probe { target: *id, up: s.failures < FAILURES_TO_DOWN, rtt_us: s.rtt_us })
                .collect(),
            clients: Vec::new(),
        }
    }

    async fn report_loop(self: Arc<Self>) {
        let mut clients: HashMap<String, NodeClient<tonic::transport::Channel>> = HashMap::new();
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u64 = 0;
        loop {
            tick.tick().await;
            round += 1;
            // Every 5 s, all local estimates (a peer that restarted or missed a report
            // catches up); otherwise only what changed.
            let samples = {
                let mut latency = self.lock_latency();
                let changed = latency.take_changes();
                if round.is_multiple_of(20) { latency.local_samples() } else { changed }
            };
            let mut report = self.own_report();
            self.lock_health().record(report.clone(), Instant::now());
            if round.is_multiple_of(4) {
                // Fresh channels every second: a connection stalled by a partition is dropped.
                clients.clear();
            }
            let peers: Vec<String> =
                self.members().into_iter().filter(|(id, _)| *id != self.member.id).map(|(_, n)| n.rpc_addr).collect();
            // At least one message (the verdicts), more when the samples do not fit in one.
            let chunks: Vec<Vec<_>> = if samples.is_empty() {
                vec![Vec::new()]
            } else {
                samples.chunks(MAX_REPORT_CLIENTS).map(<[_]>::to_vec).collect()
            };
            for chunk in chunks {
                report.clients = chunk;
                let Ok(bytes) = encode(&report) else { continue };
                for addr in &peers {
                    let client = match clients.get(addr) {
                        Some(c) => c.clone(),
                        None => match channel(addr, self.member.connector()) {
                            Ok(c) => clients.entry(addr.clone()).or_insert(NodeClient::new(c)).clone(),
                            Err(_) => continue,
                        },
                    };
                    let payload = HealthPayload { report: bytes.clone() };
                    let mut client = client;
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(PROBE_TIMEOUT, client.report_health(payload)).await;
                    });
                }
            }
        }
    }

    async fn rebuild_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_revision = u64::MAX;
        let mut last_members: Vec<(NodeId, ClusterNode)> = Vec::new();
        // Zones and regions as of `last_revision`: parsed again only when it moves.
        let mut zones: Vec<Zone> = Vec::new();
        let mut regions: Vec<RegionConfig> = Vec::new();
        let mut rounds: u64 = 0;
        loop {
            tick.tick().await;
            rounds += 1;
            let members = self.members();
            let nodes: Vec<(NodeId, String)> = members.iter().map(|(id, n)| (*id, n.region.clone())).collect();
            let now = Instant::now();
            let health_changed = {
                let mut board = self.lock_health();
                board.retain_observers(|id| nodes.iter().any(|(n, _)| *n == id));
                board.evaluate(&nodes, now)
            };
            if rounds.is_multiple_of(600) {
                self.lock_latency().expire(now);
            }
            let inputs_changed = self.changed.swap(false, std::sync::atomic::Ordering::Relaxed);
            let revision = {
                let applied = self.member.applied.read().await;
                let config = &applied.config;
                if config.revision != last_revision {
                    zones = compile_zones(config);
                    regions = region_configs(config);
                } else if members == last_members && !health_changed && !inputs_changed {
                    continue;
                }
                config.revision
            };
            let addresses = member_addresses(&members);
            let selector = {
                let board = self.lock_health();
                let latency = self.lock_latency();
                RegionSelector::new(&regions, &addresses, &self.member.me.region, &board, &latency, now)
            };
            // Set on every rebuild, the first included: a region's count is there from the
            // start, not only once its health has changed.
            for region in &selector.regions {
                metrics::gauge!("meridian_dns_region_healthy_nodes", "region" => region.name.clone())
                    .set(region.healthy.len() as f64);
            }
            if health_changed {
                tracing::info!(
                    regions = ?selector.regions.iter().map(|r| (r.name.as_str(), r.healthy.len())).collect::<Vec<_>>(),
                    "DNS health changed"
                );
            }
            self.responder.update(Answers::new(zones.clone(), revision as u32, selector, &addresses));
            last_revision = revision;
            last_members = members;
        }
    }

    /// Explains the answer for `name` to a client at `client` (for `meridian dns explain`):
    /// the answer comes from the responder's own path on the snapshot it answers from now,
    /// and the ranking from that snapshot's selector.
    pub async fn explain(&self, client: IpAddr, name: &str) -> Result<serde_json::Value, String> {
        let qname = hickory_proto::rr::Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
            .map_err(|e| format!("`{name}` is not a DNS name: {e}"))?;
        let answers = self.responder.current();
        let outcome = self.responder.outcome_for(&answers, &qname, client);
        let choice = answers.selector.choose(client, if client.is_ipv4() { 32 } else { 128 });
        let now = Instant::now();
        let board = self.lock_health().clone();
        let members = self.members();
        let health: Vec<serde_json::Value> = members
            .iter()
            .map(|(id, n)| {
                serde_json::json!({
                    "node": id,
                    "region": n.region,
                    "gateway": n.gateway_addr,
                    "up": board.node_up(*id),
                    "observers": board.opinions(*id, &n.region, now),
                })
            })
            .collect();
        Ok(serde_json::json!({
            "name": name,
            "client": client.to_string(),
            "routed": answers.is_routed(&qname),
            "answering_node": self.member.id,
            "answering_region": self.member.me.region,
            "ranking": choice.ranking,
            "chosen_region": choice.region.map(|r| answers.selector.regions[r].name.clone()),
            "rcode": outcome.rcode,
            "scope_prefix": outcome.scope,
            "answer": outcome.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "health": health,
        }))
    }
}

/// The zones in the configuration, compiled (a zone that no longer compiles is skipped).
pub fn compile_zones(config: &meridian_consensus::ConfigState) -> Vec<Zone> {
    config
        .zones
        .iter()
        .filter_map(|(name, record)| match parse_zone(&record.definition) {
            Ok(zone) => Some(zone),
            Err(errors) => {
                tracing::warn!(zone = %name, ?errors, "zone skipped");
                None
            }
        })
        .collect()
}

/// Parses and checks a zone document (YAML), listing every problem.
pub fn parse_zone(text: &str) -> Result<Zone, Vec<String>> {
    let spec: ZoneSpec = serde_saphyr::from_str(text)
        .map_err(|e| vec![e.to_string().lines().next().unwrap_or("the zone is not valid YAML").to_string()])?;
    spec.compile()
}

fn region_configs(config: &meridian_consensus::ConfigState) -> Vec<RegionConfig> {
    config
        .regions
        .iter()
        .map(|(name, r)| RegionConfig {
            name: name.clone(),
            weight: r.weight.unwrap_or(1),
            hints: r.client_cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
        })
        .collect()
}

fn member_addresses(members: &[(NodeId, ClusterNode)]) -> Vec<MemberAddress> {
    members
        .iter()
        .filter_map(|(id, n)| {
            let gateway: SocketAddr = n.gateway_addr.parse().ok()?;
            Some(MemberAddress {
                id: *id,
                region: n.region.clone(),
                gateway_ip: gateway.ip(),
                dns_addr: n.dns_addr.parse().ok(),
            })
        })
        .collect()
}

/// One probe: an HTTP request to the gateway; any response within the timeout is "up".
/// Returns the round trip in microseconds.
async fn probe(target: SocketAddr, source: Option<IpAddr>) -> Option<u32> {
    let attempt = async {
        let socket =
            if target.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.ok()?;
        if let Some(ip) = source {
            // From the node's own address, so partitions by source address apply to probes too.
            socket.bind(SocketAddr::new(ip, 0)).ok()?;
        }
        let mut stream = socket.connect(target).await.ok()?;
        let _ = stream.set_nodelay(true);
        let started = Instant::now();
        let request = format!("GET {PROBE_PATH} HTTP/1.1\r\nHost: meridian-probe\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut first = [0u8; 16];
        let n = stream.read(&mut first).await.ok()?;
        (n > 0).then(|| started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32)
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt).await.ok().flatten()
}
