//! The Meridian gateway node.
//!
//! A node reads a declarative gateway configuration, compiles it into an immutable
//! [`config::RoutingTable`], and serves API traffic through a pipeline of small stages
//! (see [`pipeline`]). The `meridian` binary in `main.rs` is a thin shell over this library.
//!
//! Where things live:
//! - [`config`]: the YAML model, validation with line-numbered errors, compilation.
//! - [`gateway`]: listeners, TLS/SNI, HTTP/1.1 + HTTP/2 serving, limits, reload, shutdown.
//! - [`pipeline`]: the request path, one module per stage, run in order.
//! - [`integration`]: calling upstreams (HTTP proxy, mock, WebSocket pass-through).
//! - [`connections`]: the WebSocket connections of `type: websocket` APIs.
//! - [`limits`]: global rate limits (G-counters, admission, gossip).
//! - [`observe`]: access log and metrics.
//! - [`admin`]: the admin listener (`/metrics`, `/healthz`, `/readyz`, reload).
//! - [`demo`]: the built-in echo backend and sample API behind `meridian demo`.
//! - [`cli`]: the clap commands.

pub mod admin;
pub mod authorizers;
pub mod body;
pub mod boxed_future;
pub mod certificates;
pub mod cli;
pub mod cluster;
pub mod coarse_time;
pub mod config;
pub mod connections;
pub mod content_coding;
pub mod demo;
pub mod digest;
pub mod fast_random;
pub mod files;
pub mod framing;
pub mod gateway;
pub mod gateway_responses;
pub mod grpc;
pub mod head_fields;
pub mod hop_by_hop;
pub mod idempotency;
pub mod incoming;
pub mod integration;
pub mod limits;
pub mod mapping;
pub mod node;
pub mod observe;
pub mod pipeline;
pub mod prefixed;
pub mod query;
pub mod rejection;
pub mod reload;
pub mod response_cache;
pub mod router;
pub mod sigv4;
pub mod stages;
pub mod table_hasher;
