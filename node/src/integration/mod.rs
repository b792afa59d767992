//! Calling what serves a route: an upstream over HTTP(S), or a mock answer from config.
//!
//! - [`uri`]: upstream URI templates with stage variables and path parameters.
//! - [`client`]: the pooled upstream client and its connection metrics.
//! - [`proxy`]: streamed pass-through with timeout, retries and WebSocket upgrades.
//! - [`retry`]: the retry budget that keeps retries from amplifying an outage.
//! - [`mock`]: static responses.

pub mod client;
pub mod mock;
pub mod proxy;
pub mod retry;
pub mod uri;

pub use mock::MockIntegration;
pub use proxy::{ProxyIntegration, UpstreamError};

/// How one route is served.
#[derive(Debug)]
pub enum Integration {
    Proxy(ProxyIntegration),
    Mock(MockIntegration),
}
