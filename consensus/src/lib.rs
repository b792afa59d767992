//! Meridian's replicated configuration.
//!
//! Everything an operator configures is one typed, versioned [`ConfigState`], changed only
//! by [`Proposal`]s that go through Raft. This crate holds:
//!
//! - [`state`]: the configuration model and its deterministic `apply`;
//! - [`idempotency`]: the idempotency records routes keep for `Idempotency-Key`, replicated
//!   through the same log but kept apart from the configuration (a pure crate of its own,
//!   `meridian-idempotency`, which the data plane uses without depending on Raft);
//! - [`types`]: the openraft type configuration ([`TypeConfig`], [`ClusterNode`]);
//! - [`store`]: the sled-backed Raft log and state machine.
//!
//! It knows nothing about networking or HTTP: the node crate moves Raft messages between
//! processes and compiles the applied state into its routing table.

// openraft's `StorageError` is large and its storage traits return it; boxing ours would
// only add a conversion at every call.
#![allow(clippy::result_large_err)]

pub mod format;
pub use meridian_idempotency as idempotency;
pub mod state;
pub mod store;
pub mod types;

pub use state::{
    ApiKeyRecord, ApiRecord, Canary, ClientCertificatesRecord, ClusterSecrets, CommandOutcome, ConfigCommand,
    ConfigState, CredentialRecord, Deployment, DomainRecord, MappingRecord, PlanRate, Proposal, QuotaPeriod,
    RegionRecord, Rejection, StageRecord, UsagePlanRecord, ZoneRecord,
};
pub use types::{ClusterNode, NodeId, TypeConfig, Write, WriteOutcome};
