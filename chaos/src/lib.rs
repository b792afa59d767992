//! Meridian's process launcher and, later, its fault injection and chaos scenarios.
//!
//! The end-to-end tests and the chaos suite drive Meridian from outside, as a user would:
//! they start real `meridian` processes on loopback and talk to them over real sockets.
//! [`launcher`] is the one place that knows how to do that; [`fault_proxy`] sits on a link
//! and delays, blackholes or resets it.

pub mod fault_proxy;
pub mod launcher;
