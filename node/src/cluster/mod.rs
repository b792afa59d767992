//! Cluster membership: node-to-node RPC over mutual TLS, Raft, joins, and the replicated
//! configuration turned into the data plane's routing table.
//!
//! - [`pki`]: the cluster CA, node certificates, join tokens.
//! - [`tls`]: TLS configurations for RPC servers, members and joining nodes.
//! - [`network`]: openraft's network over the RPC service.
//! - [`rpc`]: the RPC server.
//! - [`member`]: a running member (init, join, resume, propose, leave, status).
//! - [`dataplane`]: compiling the applied configuration into routing tables.
//! - [`gossip`]: rate-limit counters exchanged between members.

pub mod dataplane;
pub mod dns;
pub mod gossip;
pub mod member;
pub mod network;
pub mod pki;
pub mod rpc;
pub mod tls;
