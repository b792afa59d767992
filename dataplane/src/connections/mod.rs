//! The WebSocket connections a node holds for `type: websocket` APIs, and the calls that
//! reach them.
//!
//! The gateway, not the backend, holds a WebSocket API's connections: each one is a
//! [`session`] task that routes the client's messages to HTTP integrations (see
//! [`crate::integration::websocket`] for the policy) and writes what backends push. A
//! connection's id names the node that holds it (its first eight bytes), so a call for it
//! that arrives anywhere in the cluster goes to that node in one hop: [`Connections::call`]
//! serves it here, or hands it to the [`ConnectionPeers`] the cluster member provides.
//!
//! - [`session`]: one connection's life (route selection, integration calls, limits, close).
//! - [`envelope`]: what an integration receives for each event, and the frames the gateway
//!   writes of its own.
//! - [`callback`]: the callback API over HTTP (`/@connections/{id}` on the gateway, and the
//!   admin API's twin).

pub mod callback;
pub mod envelope;
mod observed;
pub mod session;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::integration::upstreams::Upstreams;
use crate::observe::access_log::AccessLog;
use crate::observe::spans::SpanSink;

/// Messages waiting to be written to one client; a push beyond is refused (429).
const OUTBOX: usize = 256;

/// A connection's id: the node that holds it and 64 random bits, as 22 characters of
/// URL-safe base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    node: u64,
    nonce: u64,
}

impl ConnectionId {
    fn new(node: u64) -> Self {
        let mut nonce = [0u8; 8];
        // The system's randomness; if it fails, the id is still unique on this node.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).is_err() {
            nonce = crate::fast_random::next_u64().to_be_bytes();
        }
        ConnectionId { node, nonce: u64::from_be_bytes(nonce) }
    }

    /// Reads an id as [`Display`](std::fmt::Display) writes it; `None` for anything else.
    pub fn parse(text: &str) -> Option<ConnectionId> {
        if text.len() != 22 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let bytes: [u8; 16] = bytes.try_into().ok()?;
        let (node, nonce) = bytes.split_at(8);
        Some(ConnectionId {
            node: u64::from_be_bytes(node.try_into().ok()?),
            nonce: u64::from_be_bytes(nonce.try_into().ok()?),
        })
    }

    /// The node holding the connection.
    pub fn holder(&self) -> u64 {
        self.node
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.node.to_be_bytes());
        bytes[8..].copy_from_slice(&self.nonce.to_be_bytes());
        f.write_str(&URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// What a backend asks of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionCall {
    /// Send the bytes as one message: text when they are UTF-8, binary otherwise.
    Send(Bytes),
    Describe,
    Close,
}

/// What became of a [`ConnectionCall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAnswer {
    Sent,
    Described(ConnectionView),
    Closed,
    /// No such connection on its node (closed, or never there): 410.
    Gone,
    /// Its queue of messages to write is full (a slow client): 429.
    Busy,
    /// The node holding it did not answer: 502.
    Unreachable(String),
}

/// A connection as `GET /@connections/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    pub connected_at: String,
    pub last_active_at: String,
    pub source_ip: String,
    /// Who `$connect` let in: the authorizer's context, the API key's id.
    pub identity: serde_json::Value,
}

/// How a call reaches a connection another node holds (the cluster member, over RPC).
pub trait ConnectionPeers: Send + Sync {
    fn forward(
        &self,
        node: u64,
        target: Target,
        call: ConnectionCall,
    ) -> std::pin::Pin<Box<dyn Future<Output = CallAnswer> + Send + 'static>>;
}

/// The connection a call is for: its API and stage (a connection of another API is not
/// reachable through this one's callback URL), and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub api: String,
    pub stage: String,
    pub id: ConnectionId,
}

/// What a session is told from outside.
#[derive(Debug)]
pub(crate) enum Outbound {
    Message(Bytes),
    Close,
}

/// One connection this node holds, as calls see it.
struct Held {
    api: Arc<str>,
    stage: Arc<str>,
    /// Milliseconds since the Unix epoch when `$connect` accepted it.
    connected_at_ms: u64,
    /// Milliseconds since the Unix epoch of the last message either way.
    last_active: AtomicU64,
    source: IpAddr,
    identity: Arc<serde_json::Value>,
    outbox: mpsc::Sender<Outbound>,
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(ms: u64) -> String {
    let mut out = String::new();
    crate::observe::time::write_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms), &mut out);
    out
}

/// Why a handshake could not become a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The node holds `limits.max_websocket_connections` already.
    Full,
    /// The node is draining.
    Draining,
}

/// The node's WebSocket connections.
pub struct Connections {
    /// The node's id in its cluster (0 until it is a member).
    node: AtomicU64,
    held: Mutex<HashMap<ConnectionId, Arc<Held>>>,
    /// Places taken: connections held, and handshakes admitted but not yet serving.
    places: Arc<AtomicUsize>,
    max: usize,
    peers: OnceLock<Arc<dyn ConnectionPeers>>,
    upstreams: Arc<Upstreams>,
    /// Set when the node stops: every session closes with 1001.
    draining: watch::Sender<bool>,
    /// `$disconnect` deliveries still running, which a stopping node waits for.
    disconnects: Deliveries,
    /// Where each message's and `$disconnect`'s line goes (the node's access log).
    log: AccessLog,
    /// Where the spans of traced events go, once the node exports traces.
    spans: OnceLock<Arc<SpanSink>>,
}

impl Connections {
    pub fn new(max: usize, upstreams: Arc<Upstreams>, log: AccessLog) -> Arc<Self> {
        Arc::new(Connections {
            node: AtomicU64::new(0),
            held: Mutex::default(),
            places: Arc::default(),
            max,
            peers: OnceLock::new(),
            upstreams,
            draining: watch::Sender::new(false),
            disconnects: Deliveries::default(),
            log,
            spans: OnceLock::new(),
        })
    }

    /// Exports the spans of traced events (messages, `$disconnect`) to `sink`.
    pub fn export_spans_to(&self, sink: Arc<SpanSink>) {
        let _ = self.spans.set(sink);
    }

    /// The node's id in its cluster, which new connections' ids carry from now on.
    pub fn set_node(&self, node: u64) {
        self.node.store(node, Ordering::Relaxed);
    }

    /// Where calls for other nodes' connections go.
    pub fn forward_through(&self, peers: Arc<dyn ConnectionPeers>) {
        let _ = self.peers.set(peers);
    }

    /// How many connections the node holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, Arc<Held>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection's id and its place, if the node may take one more: the place is
    /// taken from the handshake on, so handshakes at once cannot pass the cap together.
    fn admit(&self) -> Result<(ConnectionId, Place), Refused> {
        if *self.draining.borrow() {
            return Err(Refused::Draining);
        }
        let taken = self.places.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1));
        if taken.is_err() {
            return Err(Refused::Full);
        }
        Ok((ConnectionId::new(self.node.load(Ordering::Relaxed)), Place(self.places.clone())))
    }

    /// Serves a call for a connection: here when this node holds it, else on its node.
    pub async fn call(&self, target: Target, call: ConnectionCall) -> CallAnswer {
        let holder = target.id.holder();
        let here = self.node.load(Ordering::Relaxed);
        if holder == here {
            let answer = self.call_here(&target, call);
            metrics::counter!("meridian_websocket_calls_total", "via" => "local", "outcome" => outcome(&answer))
                .increment(1);
            return answer;
        }
        let answer = match self.peers.get() {
            Some(peers) => peers.forward(holder, target, call).await,
            // A standalone node knows no other node: nobody else holds connections.
            None => CallAnswer::Gone,
        };
        metrics::counter!("meridian_websocket_calls_total", "via" => "forwarded", "outcome" => outcome(&answer))
            .increment(1);
        answer
    }

    /// Serves a call for a connection this node holds (a peer's forwarded call too).
    pub fn call_here(&self, target: &Target, call: ConnectionCall) -> CallAnswer {
        let held = self.lock().get(&target.id).cloned();
        let Some(held) = held.filter(|h| *h.api == *target.api && *h.stage == *target.stage) else {
            return CallAnswer::Gone;
        };
        match call {
            ConnectionCall::Send(bytes) => match held.outbox.try_send(Outbound::Message(bytes)) {
                Ok(()) => CallAnswer::Sent,
                Err(mpsc::error::TrySendError::Full(_)) => CallAnswer::Busy,
                Err(mpsc::error::TrySendError::Closed(_)) => CallAnswer::Gone,
            },
            ConnectionCall::Describe => CallAnswer::Described(ConnectionView {
                connected_at: rfc3339(held.connected_at_ms),
                last_active_at: rfc3339(held.last_active.load(Ordering::Relaxed)),
                source_ip: held.source.to_string(),
                identity: (*held.identity).clone(),
            }),
            ConnectionCall::Close => match held.outbox.try_send(Outbound::Close) {
                Err(mpsc::error::TrySendError::Closed(_)) => CallAnswer::Gone,
                // A full queue still closes: the session ends after what it is writing.
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {
                    self.lock().remove(&target.id);
                    CallAnswer::Closed
                }
            },
        }
    }

    /// Closes every connection with 1001 (going away), so their clients reconnect to
    /// another node, and waits (up to `grace`) for their `$disconnect` deliveries.
    pub async fn drain(&self, grace: Duration) {
        // `send_replace`: the flag must turn even when no session listens (`send` would not).
        self.draining.send_replace(true);
        let open = self.len();
        if open > 0 {
            tracing::info!(open, "closing WebSocket connections (1001, going away)");
        }
        let deadline = tokio::time::Instant::now() + grace;
        while (!self.is_empty() || self.disconnects.running() > 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn register(&self, id: ConnectionId, held: Arc<Held>) {
        self.lock().insert(id, held);
    }

    fn unregister(&self, id: &ConnectionId) {
        self.lock().remove(id);
    }
}

fn outcome(answer: &CallAnswer) -> &'static str {
    match answer {
        CallAnswer::Sent => "sent",
        CallAnswer::Described(_) => "described",
        CallAnswer::Closed => "closed",
        CallAnswer::Gone => "gone",
        CallAnswer::Busy => "busy",
        CallAnswer::Unreachable(_) => "unreachable",
    }
}

/// One of the node's places for a connection, given back when dropped (the session ended,
/// or the handshake never completed).
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many `$disconnect` deliveries are still running.
#[derive(Default)]
struct Deliveries(Arc<AtomicUsize>);

/// Held by a running delivery; the count drops with it.
struct Delivery(Arc<AtomicUsize>);

impl Deliveries {
    fn start(&self) -> Delivery {
        self.0.fetch_add(1, Ordering::Relaxed);
        Delivery(self.0.clone())
    }

    fn running(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_place_is_taken_at_admission_and_given_back_when_dropped() {
        let connections = Connections::new(1, Arc::new(Upstreams::new()), AccessLog::off());
        let (_, place) = connections.admit().unwrap();
        assert!(matches!(connections.admit(), Err(Refused::Full)), "two handshakes at once cannot pass a cap of one");
        drop(place);
        assert!(connections.admit().is_ok());
        // A draining node admits nobody, even with no connection open to be told.
        connections.drain(Duration::ZERO).await;
        assert!(matches!(connections.admit(), Err(Refused::Draining)));
    }

    #[test]
    fn an_id_names_its_node_and_reads_back() {
        let id = ConnectionId::new(7);
        let text = id.to_string();
        assert_eq!(text.len(), 22);
        assert_eq!(ConnectionId::parse(&text), Some(id));
        assert_eq!(id.holder(), 7);
        assert_ne!(ConnectionId::new(7), id, "ids are random");
        for bad in ["", "short", "AAAAAAAAAAAAAAAAAAAAA*", "AAAAAAAAAAAAAAAAAAAAAAA", "ÄAAAAAAAAAAAAAAAAAAAA"] {
            assert_eq!(ConnectionId::parse(bad), None, "{bad}");
        }
    }
}
