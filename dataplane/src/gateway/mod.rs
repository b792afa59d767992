//! Listeners and the life of a node: TLS/SNI, HTTP/1.1 + HTTP/2 serving, connection
//! limits and idle timeouts, reload and graceful shutdown.
//!
//! - [`listener`]: the accept loop and per-connection HTTP serving.
//! - [`http1`]: the HTTP/1.1 server.
//! - [`conns`]: the connection table (cap, per-client limit, shedding).
//! - [`io`]: idle timeouts on client sockets.

pub mod conns;
pub mod http1;
pub mod io;
pub mod listener;

/// The path gateways of other regions probe this one on. The listener answers it (204)
/// before the request path sees it, so probes are neither routed, logged nor counted.
pub const PROBE_PATH: &str = "/.well-known/meridian/probe";

/// Where listeners send the round trips they measure (client address, µs), for DNS region
/// selection.
pub type ClientRttSink = tokio::sync::mpsc::Sender<(std::net::IpAddr, u32)>;
