//! Listeners and the life of a node: TLS/SNI, HTTP/1.1 + HTTP/2 serving, connection
//! limits and idle timeouts, reload and graceful shutdown.
//!
//! - [`node`]: starting a node from its configuration, reload, shutdown, signals.
//! - [`listener`]: the accept loop and per-connection HTTP serving.
//! - [`tls`]: certificates per custom domain, chosen by SNI.
//! - [`io`]: idle timeouts on client sockets.

pub mod conns;
pub mod io;
pub mod listener;
pub mod node;
pub mod tls;
