//! Observability: the access log, the metrics and the trace spans each request feeds.
//!
//! Both are written when a response finishes (see [`completion`]), never on the way in,
//! and neither blocks a request: metric handles are bound to their labels when the
//! routing table is compiled, and log lines go to a buffer drained by a writer thread.

pub mod access_log;
pub mod completion;
pub mod metrics;
pub mod spans;
pub mod time;
pub mod trace;
