//! Meridian's chaos suite: real `meridian` processes, faults on real links, invariants
//! checked at the end.
//!
//! - [`launcher`] starts, kills, pauses and restarts `meridian` processes (the end-to-end
//!   tests use it too);
//! - [`fault_proxy`] sits on a TCP or UDP link and delays, loses, throttles, blackholes or
//!   resets it;
//! - [`scenario`] is the data format of a scenario; [`SCENARIOS`] are the shipped ones;
//! - [`cluster`] builds a scenario's cluster with a proxy on every controlled link;
//! - [`workload`] drives clients (through DNS), writers and keyed clients and records the
//!   timeline; [`payments`] drives payments with idempotency keys and plays their service;
//!   [`sockets`] holds WebSocket clients and pushes to them through the callback API;
//!   [`runner`] applies the faults and checks the invariants; [`report`] writes
//!   the JSON report and the SVG timeline.

pub mod cluster;
pub mod dns;
pub mod fault_proxy;
pub mod http;
pub mod launcher;
pub mod payments;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod seeded;
pub mod sockets;
pub mod workload;

/// The scenarios shipped with Meridian: `(name, YAML)`.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("leader-kill", include_str!("../scenarios/leader-kill.yaml")),
    ("region-loss", include_str!("../scenarios/region-loss.yaml")),
    ("region-partition", include_str!("../scenarios/region-partition.yaml")),
    ("minority-write", include_str!("../scenarios/minority-write.yaml")),
    ("leader-pause", include_str!("../scenarios/leader-pause.yaml")),
    ("flaky-wan", include_str!("../scenarios/flaky-wan.yaml")),
    ("rolling-restart", include_str!("../scenarios/rolling-restart.yaml")),
    ("quota-under-partition", include_str!("../scenarios/quota-under-partition.yaml")),
    ("random-faults", include_str!("../scenarios/random-faults.yaml")),
    ("retry-storm", include_str!("../scenarios/retry-storm.yaml")),
    ("websocket-failover", include_str!("../scenarios/websocket-failover.yaml")),
];
