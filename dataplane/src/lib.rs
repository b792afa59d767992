//! Meridian's data plane: everything a node does with API traffic, and nothing of how the
//! cluster agrees on it.
//!
//! A configuration (a file, or the cluster's applied state turned into the same model by the
//! node) is compiled into an immutable [`config::RoutingTable`]; [`gateway`] listeners hand
//! each request to the [`pipeline`], which routes it and runs the route's chain of
//! [`stages`] around its [`integration`]. This crate depends on no Raft, RPC or storage
//! crate: the node (`meridian-node`) wires it to the cluster through the small interfaces it
//! exposes ([`idempotency::RecordLog`], [`connections::ConnectionPeers`], the limiter's gossip
//! changes, [`observe::spans::SpanSink`]'s queue).
//!
//! Where things live:
//! - [`config`]: the YAML model, validation with line-numbered errors, compilation.
//! - [`gateway`]: listeners, TLS/SNI, HTTP/1.1 (Meridian's own) and HTTP/2 serving.
//! - [`pipeline`]: the request path: routing, then the route's chain in phases.
//! - [`stages`]: one file per stage, each overriding only the phases it uses.
//! - [`integration`]: calling upstreams (pools, balancing, health, HTTP/1.1 and HTTP/2, TLS).
//! - [`connections`]: the WebSocket connections of `type: websocket` APIs.
//! - [`limits`]: global rate limits (G-counters, admission) and quotas.
//! - [`observe`]: access log, metrics, traces and the span queue.
//! - [`mapping`]: mapping templates; [`router`]: route patterns and matching.

pub mod authorizers;
pub mod body;
pub mod boxed_future;
pub mod byte_scan;
pub mod certificates;
pub mod coarse_time;
pub mod config;
pub mod connections;
pub mod content_coding;
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
pub mod json_document;
pub mod limits;
pub mod mapping;
pub mod observe;
pub mod pipeline;
pub mod prefixed;
pub mod query;
pub mod rejection;
pub mod response_cache;
pub mod router;
pub mod sigv4;
pub mod stages;
pub mod table_hasher;

/// A cluster member's id, as the limits' per-node counts and the idempotency records name it.
pub use meridian_idempotency::NodeId;
