//! The workload a scenario drives through the cluster, and the timeline it records.
//!
//! - **Clients**, one per client region: resolve the API name through DNS (their own
//!   region's nodes first, then the others, as a stub resolver with several servers would),
//!   keep the answer for its TTL, and send `GET /prod/health` to the answered addresses in
//!   turn; a request fails only when no address answers it.
//! - **Writers**: stage-variable writes, each to its own key (`w<N>`), to any live node or
//!   to a given region; every acknowledgement is kept to check that none is lost.
//! - **Keyed clients**: requests with the plan's API key, more than the plan allows; what
//!   the gateways admit each second is compared with the limit.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::cluster::{API_KEY, ChaosCluster, admin};
use crate::dns::{self, Answer};
use crate::http;

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    pub second: u64,
    pub ok: u64,
    pub failed: u64,
    pub keyed_admitted: u64,
    pub keyed_limited: u64,
    pub writes_acked: u64,
    pub writes_failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    #[serde(skip)]
    latencies_us: Vec<u32>,
}

/// A failed client request.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub at_s: f64,
    pub client_region: usize,
    pub reason: String,
}

/// A configuration write and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Write {
    pub key: String,
    pub node: String,
    pub sent_at_s: f64,
    pub took_ms: u64,
    /// The revision it committed at, when acknowledged.
    pub revision: Option<u64>,
    /// Whether the answer said it changed the configuration. A write retried after its first
    /// attempt committed (its answer lost with a killed leader) is acknowledged as a no-op,
    /// with the revision current at that time rather than one of its own.
    pub changed: bool,
    pub error: Option<String>,
}

/// Everything the workload saw, by second.
pub struct Timeline {
    pub start: Instant,
    seconds: Mutex<Vec<Second>>,
    pub failures: Mutex<Vec<Failure>>,
    /// Successful client requests: (seconds since start, client region).
    pub successes: Mutex<Vec<(f64, usize)>>,
    pub writes: Mutex<Vec<Write>>,
    /// Writes sent and not answered yet.
    pub writes_in_flight: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
            seconds: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
            successes: Mutex::new(Vec::new()),
            writes: Mutex::new(Vec::new()),
            writes_in_flight: AtomicU64::new(0),
        }
    }

    pub fn now_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn with_second(&self, f: impl FnOnce(&mut Second)) {
        let second = self.start.elapsed().as_secs();
        let mut seconds = lock(&self.seconds);
        while seconds.len() as u64 <= second {
            let n = seconds.len() as u64;
            seconds.push(Second { second: n, ..Second::default() });
        }
        f(&mut seconds[second as usize]);
    }

    fn request_ok(&self, client_region: usize, latency: Duration) {
        let at = self.now_s();
        self.with_second(|s| {
            s.ok += 1;
            s.latencies_us.push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
        });
        lock(&self.successes).push((at, client_region));
    }

    fn request_failed(&self, client_region: usize, reason: String) {
        let at_s = self.now_s();
        self.with_second(|s| s.failed += 1);
        lock(&self.failures).push(Failure { at_s, client_region, reason });
    }

    fn keyed(&self, admitted: bool) {
        self.with_second(|s| if admitted { s.keyed_admitted += 1 } else { s.keyed_limited += 1 });
    }

    fn write(&self, write: Write) {
        self.with_second(|s| if write.revision.is_some() { s.writes_acked += 1 } else { s.writes_failed += 1 });
        lock(&self.writes).push(write);
    }

    /// The seconds so far, with latency percentiles filled in.
    pub fn seconds(&self) -> Vec<Second> {
        let mut seconds = lock(&self.seconds).clone();
        for s in &mut seconds {
            s.latencies_us.sort_unstable();
            let pick = |q: f64| {
                if s.latencies_us.is_empty() {
                    0.0
                } else {
                    let i = ((s.latencies_us.len() - 1) as f64 * q).round() as usize;
                    f64::from(s.latencies_us[i]) / 1000.0
                }
            };
            s.p50_ms = pick(0.5);
            s.p99_ms = pick(0.99);
        }
        seconds
    }
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::new()
    }
}

/// A client region's view: its DNS answer cache and its open connections.
struct ClientState {
    region: usize,
    cached: Option<(Answer, Instant)>,
    connections: HashMap<usize, http::Connection>,
    turn: usize,
}

impl ClientState {
    /// The nodes to ask, own region first.
    async fn resolve(&mut self, cluster: &ChaosCluster) -> Result<Vec<Ipv4Addr>, String> {
        if let Some((answer, expires)) = &self.cached
            && Instant::now() < *expires
        {
            return Ok(answer.addresses.clone());
        }
        let mut order: Vec<usize> = cluster.region_nodes(self.region);
        order.extend((0..cluster.nodes.len()).filter(|n| cluster.nodes[*n].region != self.region));
        let mut last = String::from("no DNS server");
        for n in order {
            match dns::resolve(cluster.links[self.region][n].dns, None, Duration::from_millis(400)).await {
                Ok(answer) => {
                    let expires = Instant::now() + Duration::from_secs(u64::from(answer.ttl));
                    let addresses = answer.addresses.clone();
                    self.cached = Some((answer, expires));
                    return Ok(addresses);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// One request to `path` with `headers`: every answered address in turn; a reused
    /// connection that broke is retried once on a fresh one (the request is idempotent).
    async fn request(
        &mut self,
        cluster: &ChaosCluster,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Response, String> {
        let addresses = self.resolve(cluster).await?;
        self.turn = self.turn.wrapping_add(1);
        let mut last = String::new();
        for k in 0..addresses.len() {
            let ip = addresses[(self.turn + k) % addresses.len()];
            let Some(node) = cluster.nodes.iter().position(|n| n.ip == ip) else {
                last = format!("DNS answered an unknown address {ip}");
                continue;
            };
            let link = cluster.links[self.region][node].gateway;
            for attempt in 0..2 {
                let reused = attempt == 0 && self.connections.contains_key(&node);
                let mut connection = match self.connections.remove(&node) {
                    Some(c) if attempt == 0 => c,
                    _ => match http::Connection::open(link, Duration::from_secs(1)).await {
                        Ok(c) => c,
                        Err(e) => {
                            last = e.to_string();
                            break;
                        }
                    },
                };
                match connection.request("GET", path, headers, "", Duration::from_secs(2)).await {
                    Ok(response) if response.status < 500 => {
                        self.connections.insert(node, connection);
                        return Ok(response);
                    }
                    Ok(response) => {
                        last = format!("{} from {}", response.status, cluster.nodes[node].name);
                        break;
                    }
                    Err(e) => {
                        last = format!("{}: {e}", cluster.nodes[node].name);
                        if !reused {
                            break;
                        }
                    }
                }
            }
        }
        self.cached = None;
        Err(if last.is_empty() { "no address answered".into() } else { last })
    }
}

/// What a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// `GET /prod/health`: every failure counts.
    Plain,
    /// `GET /prod/keyed` with the plan's key: admissions and 429s are counted; the offered
    /// rate is kept (late ticks are skipped, not bunched).
    Keyed,
}

/// Sends `rate` requests per second from client region `region` until `stop`.
pub async fn client(
    cluster: Arc<ChaosCluster>,
    region: usize,
    rate: u32,
    kind: ClientKind,
    timeline: Arc<Timeline>,
    mut stop: watch::Receiver<bool>,
) {
    let mut state = ClientState { region, cached: None, connections: HashMap::new(), turn: region };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(match kind {
        ClientKind::Plain => tokio::time::MissedTickBehavior::Delay,
        ClientKind::Keyed => tokio::time::MissedTickBehavior::Skip,
    });
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let started = Instant::now();
        match kind {
            ClientKind::Plain => match state.request(&cluster, "/prod/health", &[]).await {
                Ok(r) if r.status == 200 => timeline.request_ok(region, started.elapsed()),
                Ok(r) => timeline.request_failed(region, format!("status {}", r.status)),
                Err(e) => timeline.request_failed(region, e),
            },
            ClientKind::Keyed => {
                match state.request(&cluster, "/prod/keyed", &[("x-api-key", API_KEY)]).await.map(|r| r.status) {
                    Ok(200) => timeline.keyed(true),
                    Ok(429) => timeline.keyed(false),
                    _ => {}
                }
            }
        }
    }
}

/// Which nodes a writer may send to.
#[derive(Debug, Clone)]
pub enum WriteTarget {
    Any,
    Nodes(Vec<usize>),
}

/// Writes `rate` times per second until `stop`; each write in its own task.
pub async fn writer(
    cluster: Arc<ChaosCluster>,
    rate: f64,
    target: WriteTarget,
    timeline: Arc<Timeline>,
    mut stop: watch::Receiver<bool>,
) {
    let counter = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turn = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let candidates: Vec<usize> = match &target {
            WriteTarget::Any => (0..cluster.nodes.len()).filter(|&n| cluster.is_running(n)).collect(),
            WriteTarget::Nodes(nodes) => nodes.clone(),
        };
        if candidates.is_empty() {
            continue;
        }
        turn = turn.wrapping_add(1);
        let node = candidates[turn % candidates.len()];
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        let (cluster, timeline) = (cluster.clone(), timeline.clone());
        timeline.writes_in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let key = format!("w{n}");
            let body = serde_json::json!({ "set": { &key: n.to_string() } }).to_string();
            let sent_at_s = timeline.now_s();
            let started = Instant::now();
            let result = admin(cluster.nodes[node].admin(), "POST", "/v1/apis/pets/stages/prod/variables", &body).await;
            let (revision, changed, error) = match result {
                Ok(r) if r.status == 200 => {
                    let answer = serde_json::from_str::<serde_json::Value>(&r.body).ok();
                    let revision = answer.as_ref().and_then(|v| v["revision"].as_u64());
                    let changed = answer.as_ref().and_then(|v| v["changed"].as_bool()).unwrap_or(true);
                    (revision, changed, revision.is_none().then(|| format!("200 without a revision: {}", r.body)))
                }
                Ok(r) => (None, false, Some(format!("{} {}", r.status, r.body.trim()))),
                Err(e) => (None, false, Some(e.to_string())),
            };
            timeline.write(Write {
                key,
                node: cluster.nodes[node].name.clone(),
                sent_at_s,
                took_ms: started.elapsed().as_millis() as u64,
                revision,
                changed,
                error,
            });
            timeline.writes_in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
