//! Meridian's DNS: a latency-aware authoritative responder.
//!
//! Every node answers for the zones in the cluster configuration. Routed names get the
//! addresses of the healthy nodes in the region that answers the asking client fastest;
//! everything else is a plain authoritative zone. The crate knows nothing about Raft or RPC:
//! the node hands it zones ([`zone`]), members and regions ([`select`]), health reports
//! ([`health`]) and client round trips ([`latency`]), and it answers ([`responder`]) on the
//! sockets of [`server`].
//!
//! Where things live:
//! - [`zone`]: the zone document operators write, compiled and checked;
//! - [`health`]: node health decided by agreement of observers in other regions;
//! - [`latency`]: client-prefix round trips measured by gateways and merged from peers;
//! - [`select`]: the region-selection policy (pure, explainable);
//! - [`wire`]: the prepared hot path for routed names;
//! - [`responder`]: one snapshot of answers, the hot path and the general (hickory) path;
//! - [`server`]: batched UDP workers and TCP; [`rrl`]: response-rate limiting;
//! - [`forward`]: optional forwarding of other names to upstream resolvers.

pub mod forward;
pub mod health;
pub mod latency;
pub mod net;
pub mod responder;
pub mod rrl;
pub mod select;
pub mod server;
pub mod wire;
pub mod zone;
