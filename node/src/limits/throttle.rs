//! The throttle policy: every request counts against its route's scopes (cluster default,
//! stage, route) and is refused with 429 when the tightest one is spent.
//!
//! The scopes and their rates are prepared when the routing table is compiled
//! ([`RouteTarget::limits`](crate::config::table::RouteTarget)); the request path only
//! reads the clock and asks the [`Limiter`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};

use super::limiter::{Limiter, Period};
use crate::config::table::RouteTarget;
use crate::pipeline::{Policy, PolicyContext, Rejection};

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Applies the route's rate limits.
#[derive(Debug)]
pub struct Throttle {
    pub limiter: Arc<Limiter>,
}

impl Policy for Throttle {
    fn check(&self, _parts: &Parts, route: &RouteTarget, ctx: &mut PolicyContext<'_>) -> Result<(), Rejection> {
        // The route's own scopes, then those a key's usage plan added (allocated only then).
        let limits = if ctx.limits.is_empty() {
            std::borrow::Cow::Borrowed(&route.limits[..])
        } else {
            let mut all = route.limits.clone();
            all.append(&mut ctx.limits);
            std::borrow::Cow::Owned(all)
        };
        if limits.is_empty() {
            return Ok(());
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let decision = self.limiter.admit(&limits, now_ms);
        if decision.allowed {
            return Ok(());
        }
        let (scope, rate) = limits.get(decision.scope).map_or(("", None), |(s, r)| (&**s, Some(*r)));
        let number = |n: u64| HeaderValue::from(n);
        let message = match rate {
            Some(r) if r.period != Period::Second => {
                format!("quota exhausted: {scope} allows {} requests per {}", decision.limit, r.period.name())
            }
            _ => format!("rate limit exceeded: {scope} allows {} requests per second", decision.limit),
        };
        Err(Rejection::new(StatusCode::TOO_MANY_REQUESTS, message)
            .with_header(http::header::RETRY_AFTER, number(decision.reset_secs))
            .with_header(RATELIMIT_LIMIT.clone(), number(decision.limit))
            .with_header(RATELIMIT_REMAINING.clone(), number(decision.remaining))
            .with_header(RATELIMIT_RESET.clone(), number(decision.reset_secs)))
    }
}
