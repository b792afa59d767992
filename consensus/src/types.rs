//! The openraft type configuration of Meridian's control plane.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::idempotency::{IdempotencyAnswer, IdempotencyCommand};
use crate::state::{CommandOutcome, Proposal};

/// A node's id in the cluster (the idempotency ledger's records name their node by it).
pub use meridian_idempotency::NodeId;

/// What the cluster knows about a member: where it is and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub region: String,
    /// Node-to-node RPC address (mutual TLS).
    pub rpc_addr: String,
    /// Gateway address for API traffic.
    pub gateway_addr: String,
    /// Admin API address.
    pub admin_addr: String,
    /// DNS responder address (UDP and TCP); empty when the node serves no DNS.
    pub dns_addr: String,
}

impl fmt::Display for ClusterNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.region, self.rpc_addr)
    }
}

/// What one log entry asks of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    /// A change to the configuration.
    Config(Proposal),
    /// A change to the idempotency records (traffic, not configuration).
    Idempotency(IdempotencyCommand),
}

/// What the state machine answered a [`Write`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    Config(CommandOutcome),
    Idempotency(IdempotencyAnswer),
}

openraft::declare_raft_types!(
    /// Meridian's Raft types: writes in, outcomes out, nodes with regions.
    pub TypeConfig:
        D = Write,
        R = WriteOutcome,
        NodeId = NodeId,
        Node = ClusterNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A log entry of the control plane.
pub type Entry = openraft::Entry<TypeConfig>;
