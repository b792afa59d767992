//! Global rate limits: G-counters per node, sliding-window admission, gossip of deltas.
//!
//! - [`counter`]: the G-counter CRDT and its merge laws (property-tested).
//! - [`limiter`]: admission against every scope of a request, and the observations gossip
//!   carries between nodes.
//! - [`per_node`]: a value per node, the small sorted list the counters and the limiter's
//!   per-node records are kept in.
//! - [`persist`]: quota counters saved across restarts.

pub mod counter;
pub mod limiter;
pub mod per_node;
pub mod persist;
