//! The hasher of the hash tables a request looks things up in: hosts, API ids and stage
//! names in the routing table, API key digests and plans' grants, limit scopes.
//!
//! The standard library's SipHash costs about 300 instructions to look up a short string,
//! foldhash's fast hasher a fraction of that. What these tables are keyed by comes from the
//! configuration, from peers, from SHA-256 digests or from the node itself (a firewall rate
//! rule's scope names a client address); each table draws a random seed
//! ([`foldhash::fast::RandomState`]), so keys that collide cannot be chosen without it.

/// The hasher of request-path lookup tables (see the module documentation).
pub type TableHasher = foldhash::fast::RandomState;
