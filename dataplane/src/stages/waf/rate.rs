//! Rate-based firewall rules: a client (its address, or the value of a header) that makes
//! more than a number of requests, or receives more than a number of 401 and 403 answers,
//! within a window is blocked for a while.
//!
//! The counts are the cluster's: each one is a scope of the node's [`Limiter`], gossiped
//! like the usage plans' counters, so requests spread over every node of every region add
//! up to one count. The block itself is local: each node that sees the count over the limit
//! (on the client's next request there, a gossip round after the others counted) blocks the
//! client for `block_for`, in its [`Blocklist`]. Counting goes on while a client is blocked
//! (its requests, and the 403s the block answers with), so a client that keeps going stays
//! over the limit everywhere and stays blocked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderName;
use http::request::Parts;

use crate::limits::limiter::{Limiter, Period};

/// The longest a rule may block a client.
pub const MAX_BLOCK: Duration = Duration::from_secs(24 * 3600);
/// How many blocked clients a node remembers (the least recently blocked go first).
const BLOCKLIST_CAPACITY: u64 = 100_000;

/// Who a rate-based rule counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client address (as the firewall sees it through trusted proxies).
    ClientIp,
    /// The value of a request header; requests without it are not counted.
    Header(HeaderName),
}

/// What a rate-based rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Requests,
    /// Answers with status 401 or 403, whoever gave them (an authorizer, an API key check,
    /// the backend, the firewall's own blocks).
    FailedAuthorizations,
}

/// One rate-based rule's policy.
#[derive(Debug, Clone)]
pub struct RateRule {
    pub key: RateKey,
    pub counted: Counted,
    /// More than this many in `window` blocks the client.
    pub limit: u64,
    pub window: Period,
    pub block_for: Duration,
    /// `waf:{api}:{stage}:{rule}:`; the client's key completes the counter's scope.
    pub scope_prefix: String,
}

impl RateRule {
    /// The counter scope of this request's client, or `None` when the rule does not count it.
    pub fn scope(&self, head: &Parts, client: std::net::IpAddr) -> Option<Arc<str>> {
        let key = match &self.key {
            RateKey::ClientIp => client.to_string(),
            RateKey::Header(name) => {
                let value = head.headers.get(name)?;
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            }
        };
        Some(Arc::from(format!("{}{key}", self.scope_prefix)))
    }

    /// Whether the client of `scope` is over the limit, this request included for a rule
    /// that counts requests (and counted, unless `dry_run`).
    pub fn over_limit(&self, limiter: &Limiter, scope: &Arc<str>, now_unix_ms: u64, dry_run: bool) -> bool {
        let count = match self.counted {
            Counted::Requests if dry_run => limiter.sliding_count(scope, self.window, now_unix_ms) + 1.0,
            Counted::Requests => limiter.record(scope, self.window, now_unix_ms),
            Counted::FailedAuthorizations => limiter.sliding_count(scope, self.window, now_unix_ms),
        };
        count > self.limit as f64
    }
}

/// The clients this node blocks, by counter scope, until when. Kept by the node across
/// configuration revisions.
#[derive(Debug)]
pub struct Blocklist {
    until: moka::sync::Cache<Arc<str>, Instant>,
}

impl Default for Blocklist {
    fn default() -> Self {
        Blocklist {
            until: moka::sync::Cache::builder().max_capacity(BLOCKLIST_CAPACITY).time_to_live(MAX_BLOCK).build(),
        }
    }
}

impl Blocklist {
    /// Whether `scope`'s client is blocked at `now`.
    pub fn blocks(&self, scope: &Arc<str>, now: Instant) -> bool {
        self.until.get(scope).is_some_and(|until| until > now)
    }

    /// Blocks `scope`'s client until `now + period` (a longer block already there stays).
    pub fn block(&self, scope: Arc<str>, now: Instant, period: Duration) {
        let until = now + period.min(MAX_BLOCK);
        if self.until.get(&scope).is_none_or(|current| current < until) {
            self.until.insert(scope, until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_lasts_its_period_and_a_shorter_one_never_shortens_it() {
        let list = Blocklist::default();
        let scope: Arc<str> = Arc::from("waf:a:s:r:10.0.0.1");
        let now = Instant::now();
        assert!(!list.blocks(&scope, now));
        list.block(scope.clone(), now, Duration::from_secs(60));
        list.block(scope.clone(), now, Duration::from_secs(1));
        assert!(list.blocks(&scope, now + Duration::from_secs(59)));
        assert!(!list.blocks(&scope, now + Duration::from_secs(61)));
        assert!(!list.blocks(&Arc::from("waf:a:s:r:10.0.0.2"), now));
    }

    #[test]
    fn the_key_is_the_client_or_a_header_and_a_missing_header_counts_nothing() {
        let rule = |key| RateRule {
            key,
            counted: Counted::Requests,
            limit: 2,
            window: Period::Seconds(60),
            block_for: Duration::from_secs(60),
            scope_prefix: "waf:a:s:r:".into(),
        };
        let head = http::Request::get("/").header("x-api-client", "mobile").body(()).unwrap().into_parts().0;
        let ip = "10.1.2.3".parse().unwrap();
        assert_eq!(rule(RateKey::ClientIp).scope(&head, ip).as_deref(), Some("waf:a:s:r:10.1.2.3"));
        let by_header = rule(RateKey::Header(HeaderName::from_static("x-api-client")));
        assert_eq!(by_header.scope(&head, ip).as_deref(), Some("waf:a:s:r:mobile"));
        let bare = http::Request::get("/").body(()).unwrap().into_parts().0;
        assert_eq!(by_header.scope(&bare, ip), None);
        // Over the limit on the third request in the window; a dry run counts nothing.
        let limiter = Limiter::new(1, 100);
        let r = rule(RateKey::ClientIp);
        let scope = r.scope(&head, ip).unwrap();
        let now = 1_000_000;
        assert!(!r.over_limit(&limiter, &scope, now, false));
        assert!(!r.over_limit(&limiter, &scope, now, false));
        // A dry run says what the third request would meet, and counts nothing.
        assert!(r.over_limit(&limiter, &scope, now, true));
        assert!(r.over_limit(&limiter, &scope, now, true));
        assert_eq!(limiter.sliding_count(&scope, Period::Seconds(60), now), 2.0);
        assert!(r.over_limit(&limiter, &scope, now, false));
    }
}
