//! Cluster membership: node-to-node RPC over mutual TLS, Raft, joins, and the replicated
//! configuration turned into the data plane's routing table.
//!
//! - [`pki`]: the cluster CA, node certificates, join tokens.
//! - [`sealed`]: the cluster data key, which seals secrets before they enter the log.
//! - [`data_dir`]: a member's data directory, private to its user.
//! - [`tls`]: TLS configurations for RPC servers, members and joining nodes.
//! - [`network`]: openraft's network over the RPC service.
//! - [`rpc`]: the RPC server.
//! - [`member`]: a running member (init, join, resume, propose, leave, status).
//! - [`dataplane`]: compiling the applied configuration into routing tables.
//! - [`gossip`]: rate-limit counters exchanged between members.

pub mod data_dir;
pub mod dataplane;
pub mod dns;
pub mod gossip;
pub mod member;
pub mod network;
pub mod pki;
pub mod rpc;
pub mod sealed;
pub mod tls;
