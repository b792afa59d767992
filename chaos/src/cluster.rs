//! The cluster a scenario runs on: real `meridian` processes, one address range per
//! region, and a fault proxy on every link the scenario controls.
//!
//! Addresses (S is the run's subnet, 60 by default):
//! - node `rR-I`: `127.R.S.I` (gateway :8080, admin :9901, RPC :7001, DNS :8053); it
//!   advertises its RPC as `127.R.S.(100+I):7001`, a proxy that tells its peers apart by
//!   their source address, so every node-to-node link has its own faults;
//! - the clients of region R: `127.R.(S+1).1`, the region's configured client network
//!   (`127.R.(S+1).0/24`); they reach every node's gateway and DNS through their own TCP
//!   and UDP proxies.
//!
//! Health probes between gateways are not proxied: a partition cuts node-to-node RPC (Raft,
//! gossip, health reports) and client links, not the probes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fault_proxy::{FaultProxy, Faults, LinkClassifier, UdpFaultProxy};
use crate::http;
use crate::launcher::NodeProcess;
use crate::scenario::ClusterShape;

pub const ADMIN_TOKEN: &str = "chaos-admin-token-0123456789abcdef";
/// The API every scenario deploys (stage `prod`); with a payment service, a `type: rest`
/// API whose `POST /pay` honours `Idempotency-Key` (and `POST /pay-plain`, the same call
/// without it, for the benchmark's comparison).
pub fn api(payments: Option<SocketAddr>) -> String {
    let common = r#"
    routes:
      - route: GET /health
        integration: { type: mock, status: 200, body: ok }
      - route: GET /keyed
        api_key_required: true
        integration: { type: mock, status: 200, body: ok }
"#;
    match payments {
        None => format!("apis:\n  - id: pets{common}"),
        Some(service) => format!(
            "apis:\n  - id: pets\n    type: rest{common}      - route: POST /pay\n        idempotency: {{ commit_timeout: 2s }}\n        integration: {{ type: http_proxy, uri: \"http://{service}/pay\", timeout: 5s }}\n      - route: POST /pay-plain\n        integration: {{ type: http_proxy, uri: \"http://{service}/pay\", timeout: 5s }}\n"
        ),
    }
}
/// What a scenario's cluster serves besides the sample API, and the services behind it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterApis {
    /// A usage plan with this rate and the chaos key (keyed clients).
    pub plan_rate: Option<u32>,
    /// The payment service behind `POST /pay` (payments).
    pub payments: Option<SocketAddr>,
    /// The backend of the WebSocket API `chat` (sockets).
    pub sockets: Option<SocketAddr>,
}

pub const ZONE_NAME: &str = "chaos.test";
pub const API_NAME: &str = "api.chaos.test";
/// The value of the keyed clients' API key.
pub const API_KEY: &str = "chaos-key-5f2a9c1e7b3d4f6a8c0e2b4d6f8a1c3e";

/// Why the cluster could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

fn setup<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> SetupError + '_ {
    move |e| SetupError(format!("{context}: {e}"))
}

/// One node of the cluster.
pub struct ChaosNode {
    pub name: String,
    /// 0-based region index.
    pub region: usize,
    pub ip: Ipv4Addr,
    pub id: u64,
    pub process: Arc<Mutex<NodeProcess>>,
    rpc_proxy: FaultProxy,
}

impl ChaosNode {
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), 9901)
    }
    pub fn gateway(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), 8080)
    }
    pub fn dns(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), 8053)
    }
}

/// The links from one client region to one node: gateway (TCP) and DNS (UDP).
pub struct ClientLink {
    pub gateway: SocketAddr,
    pub dns: SocketAddr,
    tcp: FaultProxy,
    udp: UdpFaultProxy,
}

/// A running scenario cluster.
pub struct ChaosCluster {
    pub nodes: Vec<ChaosNode>,
    pub regions: usize,
    pub subnet: u8,
    /// Faults of node-to-node RPC, by (from node, to node).
    rpc: HashMap<(usize, usize), Arc<Faults>>,
    /// Faults of client links, by (client region, node).
    client: HashMap<(usize, usize), Arc<Faults>>,
    /// Proxies a client region uses, by node.
    pub links: Vec<Vec<ClientLink>>,
}

/// The address of the clients of region `region` (0-based).
pub fn client_ip(region: usize, subnet: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, region as u8 + 1, subnet + 1, 1)
}

fn node_config(ip: Ipv4Addr, proxy: Ipv4Addr, heartbeat: Option<Duration>) -> String {
    let heartbeat = heartbeat.map(|h| format!("  heartbeat: {}ms\n", h.as_millis())).unwrap_or_default();
    format!(
        r#"listen: {{ http: "{ip}:8080" }}
admin: {{ listen: "{ip}:9901", token_file: admin.token }}
access_log: {{ enabled: false }}
throttle: {{ rate: 1000000, burst: 1000000 }}
cluster:
  data_dir: data
  rpc: "{ip}:7001"
  advertise_rpc: "{proxy}:7001"
  dns: {{ listen: "{ip}:8053" }}
{heartbeat}"#
    )
}

/// An admin call with the run's token.
pub async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<http::Response, http::HttpError> {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    http::call(addr, method, path, &[("authorization", &auth)], body, Duration::from_secs(12)).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl ChaosCluster {
    /// Starts `shape` on subnet `subnet`, configures the API (with the `payments` service
    /// when given), the zone, the regions and (with `plan_rate`) a usage plan with the run's
    /// key; returns once every node serves.
    pub async fn start(shape: &ClusterShape, subnet: u8, apis: &ClusterApis) -> Result<ChaosCluster, SetupError> {
        let total = shape.regions * shape.nodes_per_region;
        let mut layout = Vec::new();
        for r in 0..shape.regions {
            for i in 0..shape.nodes_per_region {
                let ip = Ipv4Addr::new(127, r as u8 + 1, subnet, i as u8 + 1);
                let proxy = Ipv4Addr::new(127, r as u8 + 1, subnet, 101 + i as u8);
                layout.push((format!("r{}-{}", r + 1, i + 1), r, ip, proxy));
            }
        }
        // Every (from, to) pair of nodes gets its own faults; each node's RPC proxy picks them
        // by the connecting address.
        let mut rpc = HashMap::new();
        for from in 0..total {
            for to in 0..total {
                rpc.insert((from, to), Arc::new(Faults::default()));
            }
        }
        let by_ip: Arc<HashMap<IpAddr, usize>> =
            Arc::new(layout.iter().enumerate().map(|(i, (_, _, ip, _))| (IpAddr::V4(*ip), i)).collect());
        let mut proxies = Vec::new();
        for (to, (_, _, ip, proxy)) in layout.iter().enumerate() {
            let table: HashMap<usize, Arc<Faults>> = (0..total).map(|from| (from, rpc[&(from, to)].clone())).collect();
            let by_ip = by_ip.clone();
            let clean = Arc::new(Faults::default());
            let classify: LinkClassifier = Arc::new(move |source: IpAddr| {
                by_ip.get(&source).and_then(|from| table.get(from)).cloned().unwrap_or_else(|| clean.clone())
            });
            let listen = SocketAddr::new(IpAddr::V4(*proxy), 7001);
            let upstream = SocketAddr::new(IpAddr::V4(*ip), 7001);
            let p = FaultProxy::start_with(listen, upstream, None, Arc::new(Faults::default()), Some(classify))
                .await
                .map_err(setup(&format!("RPC proxy on {listen}")))?;
            proxies.push(p);
        }

        let mut nodes = Vec::new();
        let mut token = String::new();
        for ((name, region, ip, proxy), rpc_proxy) in layout.into_iter().zip(proxies) {
            let dir = tempfile::Builder::new()
                .prefix(&format!("meridian-chaos-{name}-"))
                .tempdir()
                .map_err(setup("temp dir"))?;
            std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).map_err(setup("token file"))?;
            let config = node_config(ip, proxy, shape.heartbeat);
            let region_name = format!("r{}", region + 1);
            let first = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 1, subnet, 1)), 7001).to_string();
            let join_token = token.clone();
            let founding = nodes.is_empty();
            let process = blocking(move || {
                if founding {
                    NodeProcess::launch(dir, &config, &["cluster", "init", "--region", &region_name], &[])
                } else {
                    NodeProcess::launch(
                        dir,
                        &config,
                        &["cluster", "join", "--region", &region_name, "--peer", &first, "--token", &join_token],
                        &[],
                    )
                }
            })
            .await
            .map_err(setup(&format!("starting {name}")))?;
            if founding {
                token = std::fs::read_to_string(process.dir().join("ready.token")).map_err(setup("join token"))?;
            }
            nodes.push(ChaosNode { name, region, ip, id: 0, process: Arc::new(Mutex::new(process)), rpc_proxy });
        }

        // Every member known, and their ids.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = admin(nodes[0].admin(), "GET", "/v1/cluster", "").await;
            let members = status
                .ok()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
                .and_then(|v| v["members"].as_array().map(|m| m.len()))
                .unwrap_or(0);
            if members == total {
                break;
            }
            if Instant::now() > deadline {
                return Err(SetupError(format!("only {members} of {total} members joined within 30 s")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for node in &mut nodes {
            let status = admin(node.admin(), "GET", "/v1/cluster", "").await.map_err(setup(&node.name))?;
            let v: serde_json::Value = serde_json::from_str(&status.body).map_err(setup(&node.name))?;
            node.id = v["node_id"].as_u64().ok_or_else(|| SetupError(format!("{}: no node id", node.name)))?;
        }

        let mut client = HashMap::new();
        let mut links = Vec::new();
        for c in 0..shape.regions {
            let source = IpAddr::V4(client_ip(c, subnet));
            let mut row = Vec::new();
            for (n, node) in nodes.iter().enumerate() {
                let faults = Arc::new(Faults::default());
                client.insert((c, n), faults.clone());
                let listen = SocketAddr::new(source, 0);
                let tcp = FaultProxy::start_with(listen, node.gateway(), Some(source), faults.clone(), None)
                    .await
                    .map_err(setup("client proxy"))?;
                let udp = UdpFaultProxy::start(listen, node.dns(), Some(source), faults)
                    .await
                    .map_err(setup("client DNS proxy"))?;
                row.push(ClientLink { gateway: tcp.addr, dns: udp.addr, tcp, udp });
            }
            links.push(row);
        }
        let cluster = ChaosCluster { nodes, regions: shape.regions, subnet, rpc, client, links };
        cluster.configure(apis).await?;
        Ok(cluster)
    }

    async fn configure(&self, apis: &ClusterApis) -> Result<(), SetupError> {
        let ClusterApis { plan_rate, payments, sockets } = *apis;
        let first = self.nodes[0].admin();
        let write = |method: &'static str, path: String, body: String| async move {
            let response = admin(first, method, &path, &body).await.map_err(setup(&path))?;
            if response.status >= 300 {
                return Err(SetupError(format!("{method} {path}: {} {}", response.status, response.body)));
            }
            Ok(())
        };
        write("POST", "/v1/apis/pets/deployments?stage=prod".into(), api(payments)).await?;
        if let Some(backend) = sockets {
            let path = format!("/v1/apis/chat/deployments?stage={}", crate::sockets::STAGE);
            write("POST", path, crate::sockets::api(backend)).await?;
        }
        write("PUT", format!("/v1/dns/zones/{ZONE_NAME}"), format!("zone: {ZONE_NAME}\nrouted: [api]\nttl: 5\n"))
            .await?;
        for r in 0..self.regions {
            let network = format!("{}/24", client_ip(r, self.subnet));
            write(
                "PUT",
                format!("/v1/regions/r{}", r + 1),
                serde_json::json!({ "client_cidrs": [network] }).to_string(),
            )
            .await?;
        }
        if let Some(rate) = plan_rate {
            write("PUT", "/v1/plans/gold".into(), serde_json::json!({"rate": rate, "burst": rate}).to_string()).await?;
            write("POST", "/v1/plans/gold/attach".into(), r#"{"api": "pets", "stage": "prod"}"#.into()).await?;
            write("POST", "/v1/keys".into(), serde_json::json!({"name": "chaos", "value": API_KEY}).to_string())
                .await?;
            write("POST", "/v1/plans/gold/keys".into(), r#"{"key": "chaos"}"#.into()).await?;
        }
        // Every node serves the API and answers DNS.
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            loop {
                let served = http::call(node.gateway(), "GET", "/prod/health", &[], "", Duration::from_secs(2))
                    .await
                    .is_ok_and(|r| r.status == 200);
                let answers = crate::dns::resolve(node.dns(), None, Duration::from_millis(300)).await.is_ok();
                if served && answers {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(SetupError(format!("{} does not serve the API and its DNS within 30 s", node.name)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Node indexes of a region (0-based).
    pub fn region_nodes(&self, region: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&n| self.nodes[n].region == region).collect()
    }

    /// Cuts (or heals) every link between `inside` nodes and the rest; `one_way` cuts only
    /// what the inside sends. Client links from `inside_clients` regions count as inside.
    pub fn partition(&self, inside: &[usize], inside_clients: &[usize], on: bool, one_way: bool) {
        // `caller_inside`: whether the side that opens the link's connections is inside.
        let cut = |faults: &Faults, caller_inside: bool| {
            if !one_way {
                faults.partition(on);
            } else if caller_inside {
                // From the inside out: requests it sends are lost.
                faults.to_upstream.set_blackhole(on);
            } else {
                // Into the inside: its answers are lost.
                faults.to_client.set_blackhole(on);
            }
        };
        for (&(from, to), faults) in &self.rpc {
            let (a, b) = (inside.contains(&from), inside.contains(&to));
            if a != b {
                cut(faults, a);
                if on {
                    faults.reset_connections();
                }
            }
        }
        for (&(client_region, node), faults) in &self.client {
            let (a, b) = (inside_clients.contains(&client_region), inside.contains(&node));
            if a != b {
                cut(faults, a);
            }
        }
    }

    /// Resets every open connection to or from `nodes` (node-to-node and client links).
    pub fn reset(&self, nodes: &[usize]) {
        for (&(from, to), faults) in &self.rpc {
            if nodes.contains(&from) || nodes.contains(&to) {
                faults.reset_connections();
            }
        }
        for (&(_, node), faults) in &self.client {
            if nodes.contains(&node) {
                faults.reset_connections();
            }
        }
    }

    /// Degrades (or, with `None`, clears) every link between regions in `pairs`.
    pub fn degrade(&self, pairs: &[(usize, usize)], delay: Duration, jitter: Duration, loss: f64, bandwidth: u64) {
        let hit = |a: usize, b: usize| pairs.iter().any(|&(x, y)| (x, y) == (a, b) || (y, x) == (a, b));
        let apply = |faults: &Faults| {
            for d in [&faults.to_upstream, &faults.to_client] {
                d.set_delay(delay, jitter);
                d.set_loss(loss);
                d.set_bandwidth(bandwidth);
            }
        };
        for (&(from, to), faults) in &self.rpc {
            if hit(self.nodes[from].region, self.nodes[to].region) {
                apply(faults);
            }
        }
        for (&(client_region, node), faults) in &self.client {
            if hit(client_region, self.nodes[node].region) {
                apply(faults);
            }
        }
    }

    /// Clears every link fault.
    pub fn heal_links(&self) {
        for faults in self.rpc.values().chain(self.client.values()) {
            faults.clear();
        }
    }

    pub fn is_running(&self, node: usize) -> bool {
        self.nodes[node].process.lock().is_ok_and(|mut p| p.is_running())
    }

    pub async fn kill(&self, node: usize) {
        let process = self.nodes[node].process.clone();
        blocking(move || {
            if let Ok(mut p) = process.lock() {
                p.kill();
            }
        })
        .await;
    }

    pub fn signal(&self, node: usize, signal: i32) {
        if let Ok(p) = self.nodes[node].process.lock() {
            p.signal(signal);
        }
    }

    /// SIGTERM, then wait for the node to drain and exit.
    pub async fn terminate(&self, node: usize) {
        let process = self.nodes[node].process.clone();
        blocking(move || {
            if let Ok(mut p) = process.lock() {
                p.signal(libc::SIGTERM);
                if p.wait_exit(Duration::from_secs(20)).is_none() {
                    p.kill();
                }
                p.kill();
            }
        })
        .await;
    }

    /// Starts a stopped node again from its data.
    pub async fn restart(&self, node: usize) -> Result<(), String> {
        let process = self.nodes[node].process.clone();
        blocking(move || {
            let mut p = process.lock().map_err(|_| "process lock poisoned".to_string())?;
            if p.is_running() { Ok(()) } else { p.run(&["serve"], &[]).map_err(|e| e.to_string()) }
        })
        .await
    }

    /// The index of the current leader, as a live node sees it.
    pub async fn leader(&self) -> Option<usize> {
        for node in &self.nodes {
            let Ok(r) = admin(node.admin(), "GET", "/v1/cluster", "").await else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.body) else { continue };
            if let Some(id) = v["leader"].as_u64() {
                return self.nodes.iter().position(|n| n.id == id);
            }
        }
        None
    }

    /// Each live node's configuration revision (`None` for nodes that do not answer).
    pub async fn revisions(&self) -> Vec<Option<u64>> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let revision = match admin(node.admin(), "GET", "/v1/cluster", "").await {
                Ok(r) => serde_json::from_str::<serde_json::Value>(&r.body).ok().and_then(|v| v["revision"].as_u64()),
                Err(_) => None,
            };
            out.push(revision);
        }
        out
    }

    /// Stops every node and proxy (so the next scenario can use the addresses).
    pub async fn stop(&self) {
        for n in 0..self.nodes.len() {
            self.kill(n).await;
            self.nodes[n].rpc_proxy.stop();
        }
        for link in self.links.iter().flatten() {
            link.tcp.stop();
            link.udp.stop();
        }
    }

    /// Keeps the nodes' folders (data and logs) after the run; returns where they are.
    pub fn keep(&self) -> Vec<std::path::PathBuf> {
        self.nodes.iter().filter_map(|n| n.process.lock().ok().map(|mut p| p.keep())).collect()
    }
}
