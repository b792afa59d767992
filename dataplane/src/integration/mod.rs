//! Calling what serves a route: an upstream over HTTP(S), a mock answer from config, or a
//! redirect.
//!
//! - [`uri`]: upstream URI templates with stage variables and path parameters.
//! - [`upstreams`]: the node's targets, shared by routes and kept across reloads.
//! - [`balance`]: choosing a target (weights, least requests, regions, ejections).
//! - [`discovery`]: targets named in DNS (A/AAAA, SRV), re-resolved by their TTLs.
//! - [`endpoint`]: one target's connections, pooled, and its health.
//! - [`http1_client`]: HTTP/1.1 to a target, spoken in the request's own task.
//! - [`connection`]: a connection to a target (TCP or TLS), counted while open.
//! - [`trust`]: the TLS roots an `https` upstream is checked against.
//! - [`request_body`]: the client's body on its way upstream, held to the body limit.
//! - [`proxy`]: streamed pass-through with timeout, retries and WebSocket upgrades.
//! - [`retry`]: the retry budget that keeps retries from amplifying an outage.
//! - [`mirror`]: a share of a route's requests copied to a shadow target.
//! - [`mock`]: static responses.
//! - [`redirect`]: `Location` answers made from a template.
//! - [`callee`]: URLs the node calls itself (JWKS documents, custom authorizers).
//! - [`websocket`]: a WebSocket API's stage as policy: route selection, routes, limits.

pub mod balance;
pub mod callee;
pub mod connection;
pub mod discovery;
pub mod endpoint;
pub mod http1_client;
pub mod mirror;
pub mod mock;
pub mod proxy;
pub mod redirect;
pub mod request_body;
pub mod retry;
pub mod trust;
pub mod upstreams;
pub mod uri;
pub mod websocket;

pub use mock::MockIntegration;
pub use proxy::{ProxyIntegration, UpstreamError};

/// How one route is served.
#[derive(Debug)]
pub enum Integration {
    Proxy(Box<ProxyIntegration>),
    Mock(MockIntegration),
    Redirect(redirect::RedirectIntegration),
    /// A `type: websocket` API: the gateway holds the connection, each message goes to a
    /// route's integration.
    WebSocket(websocket::WebSocketEndpoint),
}

impl Integration {
    /// The `http_proxy` integrations that serve this route.
    pub fn proxies(&self) -> Vec<&ProxyIntegration> {
        match self {
            Integration::Proxy(proxy) => vec![&**proxy],
            Integration::WebSocket(websocket::WebSocketEndpoint::Connect(stage)) => stage.proxies().collect(),
            Integration::Mock(_) | Integration::Redirect(_) | Integration::WebSocket(_) => Vec::new(),
        }
    }
}
