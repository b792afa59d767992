//! What custom authorizers answered, cached per identity for their TTL.
//!
//! A custom authorizer is an HTTP call to the operator's service; calling it on every
//! request would put that service on the hot path. Its decisions (allow with a context, or
//! deny) are kept per identity-source values for the authorizer's TTL, in a cache bounded in
//! entries, and counted per authorizer: hits, misses, denials and errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Counter;

/// One answer of a custom authorizer.
#[derive(Debug)]
pub struct Decision {
    pub authorized: bool,
    pub context: Arc<serde_json::Map<String, serde_json::Value>>,
}

/// The cache and counters of one authorizer.
#[derive(Debug)]
pub struct DecisionCache {
    /// `None` when the TTL is 0 (every request calls the authorizer).
    cache: Option<moka::sync::Cache<String, Arc<Decision>>>,
    pub hits: Counter,
    pub misses: Counter,
    pub denials: Counter,
    pub errors: Counter,
}

impl DecisionCache {
    fn new(authorizer: &str, ttl: Duration, capacity: u64) -> DecisionCache {
        let counter = |result: &'static str| metrics::counter!("meridian_authorizer_decisions_total", "authorizer" => authorizer.to_string(), "result" => result);
        DecisionCache {
            cache: (!ttl.is_zero())
                .then(|| moka::sync::Cache::builder().max_capacity(capacity).time_to_live(ttl).build()),
            hits: counter("hit"),
            misses: counter("miss"),
            denials: counter("deny"),
            errors: counter("error"),
        }
    }

    pub fn get(&self, identity: &str) -> Option<Arc<Decision>> {
        self.cache.as_ref()?.get(identity)
    }

    pub fn insert(&self, identity: String, decision: Arc<Decision>) {
        if let Some(cache) = &self.cache {
            cache.insert(identity, decision);
        }
    }
}

/// The node's decision caches, by authorizer and settings; kept across reloads while some
/// revision's stage uses them.
#[derive(Debug, Default)]
pub struct DecisionCaches {
    caches: Mutex<HashMap<String, Arc<DecisionCache>>>,
}

impl DecisionCaches {
    /// The cache of the authorizer named `authorizer` (`api/name`) calling `uri`.
    pub fn bind(&self, authorizer: &str, uri: &str, ttl: Duration, capacity: u64) -> Arc<DecisionCache> {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.retain(|_, c| Arc::strong_count(c) > 1);
        let key = format!("{authorizer} {uri} {ttl:?} {capacity}");
        caches.entry(key).or_insert_with(|| Arc::new(DecisionCache::new(authorizer, ttl, capacity))).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_of_zero_caches_nothing_and_equal_settings_share_a_cache() {
        let caches = DecisionCaches::default();
        let off = caches.bind("a/x", "http://h/", Duration::ZERO, 10);
        let decision = Arc::new(Decision { authorized: true, context: Default::default() });
        off.insert("k".into(), decision.clone());
        assert!(off.get("k").is_none());
        let on = caches.bind("a/x", "http://h/", Duration::from_secs(60), 10);
        on.insert("k".into(), decision);
        assert!(caches.bind("a/x", "http://h/", Duration::from_secs(60), 10).get("k").is_some());
        assert!(caches.bind("a/y", "http://h/", Duration::from_secs(60), 10).get("k").is_none());
    }
}
