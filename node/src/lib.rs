//! The Meridian gateway node: what wires the data plane to a cluster, an admin API and a
//! command line.
//!
//! The request path itself (configuration, listeners, the pipeline and its stages,
//! integrations, limits, observation) is `meridian-dataplane`, which knows nothing of Raft,
//! RPC or storage. This crate holds what does: the node's wiring and lifecycle, cluster
//! membership over mutual TLS with the replicated configuration (`meridian-consensus`), the
//! admin API, span export by OTLP, and the `meridian` binary's commands.
//!
//! Where things live:
//! - [`node`]: a running node: listeners, pipeline, upstreams, admin API, membership and DNS
//!   wired together; shutdown and signals.
//! - [`cluster`]: PKI, join, Raft over RPC, gossip of limit counters, DNS health and answers.
//! - [`admin`]: the admin listener (`/metrics`, `/healthz`, `/readyz`, the `/v1` API).
//! - [`reload`]: re-read, validate and swap the configuration.
//! - [`otlp`]: the exporter that sends the data plane's spans to a collector.
//! - [`log`]: the node's own log.
//! - [`demo`]: the built-in echo backend and sample API behind `meridian demo`.
//! - [`cli`]: the clap commands.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod demo;
pub mod log;
pub mod node;
pub mod otlp;
pub mod reload;
