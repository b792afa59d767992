//! The WebSocket workload (`websocket-failover`): clients in every region hold connections
//! to a `type: websocket` API, found through DNS like the other clients, and reconnect when
//! a connection drops; a backend pushes numbered messages to them through the callback API
//! of a random node (any region), one push at a time.
//!
//! Everything is recorded for the invariants: each connection (its id, the node it was on,
//! when it opened and closed, the numbers it received in order) and each push (to which id,
//! through which node, what it answered).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{ChaosCluster, admin};
use crate::seeded::Xorshift;

/// How long a client keeps its connection open after the run stops.
const LINGER: Duration = Duration::from_secs(1);

/// The WebSocket API's stage (its own name, so gateways reach it by address).
pub const STAGE: &str = "live";

/// The WebSocket API the cluster serves when the scenario has sockets; `backend` takes its
/// events.
pub fn api(backend: std::net::SocketAddr) -> String {
    format!(
        "apis:\n  - id: chat\n    type: websocket\n    routes:\n      - {{ route: $default, integration: {{ type: http_proxy, uri: \"http://{backend}/message\" }} }}\n"
    )
}

/// One connection a client held.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub id: String,
    pub client: String,
    /// The node that held it (its index).
    pub node: usize,
    pub opened_at_s: f64,
    pub closed_at_s: Option<f64>,
    /// The push numbers received, in the order received.
    pub received: Vec<u64>,
}

/// One push and its answer.
#[derive(Debug, Clone, Serialize)]
pub struct Push {
    pub id: String,
    pub number: u64,
    pub through: usize,
    pub at_s: f64,
    /// The status, or the call's error.
    pub answer: Result<u16, String>,
}

/// What the workload recorded.
#[derive(Default)]
pub struct Record {
    pub connections: Mutex<Vec<Connection>>,
    pub pushes: Mutex<Vec<Push>>,
}

impl Record {
    /// Notes a push's number that connection `at` received (other messages are not pushes).
    fn received(&self, at: usize, message: &Message) {
        if let Message::Text(text) = message
            && let Ok(n) = text.as_str().parse::<u64>()
        {
            lock(&self.connections)[at].received.push(n);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A backend for the API: it accepts every event (`$connect` included) with 200.
pub async fn backend(ip: std::net::Ipv4Addr) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut connection = crate::http::ServerConnection::new(stream);
                while let Ok(Some(_)) = connection.next_request().await {
                    if connection.respond(200, "OK", "").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Client `index` of region `region`: holds a connection until `stop`, reconnecting (through
/// DNS, its own region's servers first) whenever it drops.
pub async fn client(
    cluster: Arc<ChaosCluster>,
    region: usize,
    index: usize,
    start: Instant,
    record: Arc<Record>,
    mut stop: watch::Receiver<bool>,
) {
    let name = format!("r{}-client{}", region + 1, index + 1);
    while !*stop.borrow() {
        let Some((mut ws, id, node)) = connect(&cluster, region).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Its place in the record, taken under the one lock that adds it.
        let at = {
            let mut connections = lock(&record.connections);
            connections.push(Connection {
                id,
                client: name.clone(),
                node,
                opened_at_s: start.elapsed().as_secs_f64(),
                closed_at_s: None,
                received: Vec::new(),
            });
            connections.len() - 1
        };
        loop {
            tokio::select! {
                message = ws.next() => match message {
                    Some(Ok(message)) => record.received(at, &message),
                    Some(Err(_)) | None => break,
                },
                _ = stop.changed() => {
                    // The pusher stops at the same signal: a push it is making still finds
                    // the connection open.
                    let _ = tokio::time::timeout(LINGER, async {
                        while let Some(Ok(message)) = ws.next().await {
                            record.received(at, &message);
                        }
                    })
                    .await;
                    let _ = ws.close(None).await;
                    return;
                }
            }
        }
        lock(&record.connections)[at].closed_at_s = Some(start.elapsed().as_secs_f64());
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A new connection through region `region`'s client links to the first node DNS answers
/// that takes it.
async fn connect(cluster: &ChaosCluster, region: usize) -> Option<(Socket, String, usize)> {
    let mut order: Vec<usize> = cluster.region_nodes(region);
    order.extend((0..cluster.nodes.len()).filter(|n| cluster.nodes[*n].region != region));
    let mut addresses = Vec::new();
    for n in order {
        if let Ok(answer) = crate::dns::resolve(cluster.links[region][n].dns, None, Duration::from_millis(400)).await {
            addresses = answer.addresses;
            break;
        }
    }
    for ip in addresses {
        let Some(node) = cluster.nodes.iter().position(|n| n.ip == ip) else { continue };
        let url = format!("ws://{}/{STAGE}", cluster.links[region][node].gateway);
        let connected = tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(url)).await;
        if let Ok(Ok((ws, response))) = connected
            && let Some(id) = response.headers().get("x-meridian-connection-id").and_then(|v| v.to_str().ok())
        {
            return Some((ws, id.to_string(), node));
        }
    }
    None
}

/// The backend's pushes: `rate` a second, each to a connection drawn from those recorded
/// (most often an open one, sometimes one that closed), through a random node's admin API;
/// a node that does not answer at all is skipped for the next.
pub async fn pusher(
    cluster: Arc<ChaosCluster>,
    rate: f64,
    seed: u64,
    start: Instant,
    record: Arc<Record>,
    stop: watch::Receiver<bool>,
) {
    let mut random = Xorshift::new(seed ^ 0x5eed_50c4_e75a_11ed);
    let mut numbers: HashMap<String, u64> = HashMap::new();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut next = Instant::now();
    while !*stop.borrow() {
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let (open, closed): (Vec<String>, Vec<String>) = {
            let connections = lock(&record.connections);
            let open = connections.iter().filter(|c| c.closed_at_s.is_none()).map(|c| c.id.clone()).collect();
            let closed = connections.iter().filter(|c| c.closed_at_s.is_some()).map(|c| c.id.clone()).collect();
            (open, closed)
        };
        // One push in five goes to a closed connection, when there is one.
        let pool = if !closed.is_empty() && random.draw().is_multiple_of(5) { &closed } else { &open };
        if pool.is_empty() {
            continue;
        }
        let id = pool[(random.draw() % pool.len() as u64) as usize].clone();
        let number = {
            let n = numbers.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        let first = (random.draw() % cluster.nodes.len() as u64) as usize;
        let path = format!("/v1/apis/chat/stages/{STAGE}/connections/{id}");
        for k in 0..cluster.nodes.len() {
            let through = (first + k) % cluster.nodes.len();
            let at_s = start.elapsed().as_secs_f64();
            let answer = match admin(cluster.nodes[through].admin(), "POST", &path, &number.to_string()).await {
                Ok(response) => Ok(response.status),
                // A node that cannot be called (it is down) is not the connection's fault.
                Err(crate::http::HttpError::Connect(..)) => continue,
                Err(e) => Err(e.to_string()),
            };
            lock(&record.pushes).push(Push { id: id.clone(), number, through, at_s, answer });
            break;
        }
    }
}

/// How long after a connection drops its id may still be answered as if open (the node
/// holding it may take this long to be seen as gone).
const GONE_AFTER_S: f64 = 3.0;
/// Pushes accepted this long before their connection dropped may be lost with its node.
const LOST_WITH_NODE_S: f64 = 1.0;

/// Checks the sockets' invariants; `windows` are the failover windows (from, until) in
/// seconds of the run, where pushes to open connections may fail.
pub fn check(
    invariants: &crate::scenario::Invariants,
    record: &Record,
    windows: &[(f64, f64)],
    figures: &mut crate::report::Figures,
    verdicts: &mut Vec<crate::report::Verdict>,
) {
    use crate::report::Verdict;
    let connections = lock(&record.connections).clone();
    let pushes = lock(&record.pushes).clone();
    figures.socket_connections = connections.len() as u64;
    figures.pushes = pushes.len() as u64;

    if let Some(budget) = invariants.socket_reconnect_within {
        let mut dropped = 0;
        let mut worst: f64 = 0.0;
        let mut stranded = Vec::new();
        for c in &connections {
            let Some(closed) = c.closed_at_s else { continue };
            dropped += 1;
            let next = connections
                .iter()
                .filter(|n| n.client == c.client && n.opened_at_s >= closed)
                .map(|n| n.opened_at_s)
                .min_by(f64::total_cmp);
            match next {
                Some(at) => worst = worst.max(at - closed),
                None => stranded.push(c.client.clone()),
            }
        }
        figures.socket_reconnect_max_s = Some(worst);
        verdicts.push(Verdict {
            invariant: "sockets reconnect".into(),
            passed: dropped > 0 && stranded.is_empty() && worst <= budget.as_secs_f64(),
            detail: format!(
                "{dropped} connections dropped; the slowest client held a new one after {worst:.2} s (budget {:.1} s){}",
                budget.as_secs_f64(),
                if stranded.is_empty() { String::new() } else { format!("; never reconnected: {}", stranded.join(", ")) }
            ),
        });
    }

    if invariants.pushes_delivered {
        let by_id: HashMap<&str, &Connection> = connections.iter().map(|c| (c.id.as_str(), c)).collect();
        let in_window = |t: f64| windows.iter().any(|(from, until)| t >= *from && t <= *until);
        let mut problems = Vec::new();
        let (mut accepted, mut lost_with_node, mut gone) = (0u64, 0u64, 0u64);
        for push in &pushes {
            let Some(connection) = by_id.get(push.id.as_str()) else { continue };
            // How long the connection had been gone when the push was made (negative: before).
            let gone_for = connection.closed_at_s.map(|closed| push.at_s - closed);
            let was_accepted = push.answer == Ok(200);
            if was_accepted {
                accepted += 1;
                if !connection.received.contains(&push.number) {
                    match gone_for {
                        Some(g) if g >= -LOST_WITH_NODE_S => lost_with_node += 1,
                        _ => problems.push(format!(
                            "push {} to {} accepted at {:.2} s never arrived",
                            push.number, push.id, push.at_s
                        )),
                    }
                }
            }
            match gone_for {
                // Long gone: only 410 is right.
                Some(g) if g > GONE_AFTER_S => match push.answer {
                    Ok(410) => gone += 1,
                    ref answer => problems.push(format!("push to {}, gone for {g:.2} s, answered {answer:?}", push.id)),
                },
                // Dropping: its node may or may not have been seen as gone yet.
                Some(g) if g >= -LOST_WITH_NODE_S => gone += u64::from(push.answer == Ok(410)),
                // Open: accepted, unless a node was failing over.
                _ if !was_accepted && !in_window(push.at_s) => {
                    problems.push(format!("push to open {} at {:.2} s answered {:?}", push.id, push.at_s, push.answer))
                }
                _ => {}
            }
        }
        for c in &connections {
            if c.received.windows(2).any(|w| w[0] >= w[1]) {
                problems.push(format!("{} received its pushes out of order: {:?}", c.id, c.received));
            }
        }
        figures.pushes_accepted = accepted;
        figures.pushes_lost_with_node = lost_with_node;
        figures.pushes_gone = gone;
        verdicts.push(Verdict {
            invariant: "pushes delivered".into(),
            passed: problems.is_empty() && accepted > 0 && gone > 0,
            detail: format!(
                "{} pushes: {accepted} accepted and delivered in order ({lost_with_node} lost with their node), {gone} to dropped connections answered 410{}",
                pushes.len(),
                problems.first().map(|p| format!("; {} problems, first: {p}", problems.len())).unwrap_or_default()
            ),
        });
    }
}
