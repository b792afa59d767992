//! The throttle policies: every request counts against its route's scopes (cluster default,
//! stage, route) and is refused with 429 when the tightest one is spent; a request with a
//! valid API key then counts against its usage plan's scopes.
//!
//! The route's scopes run before any authorization, so requests that fail a key check are
//! counted and throttled like any other (a flood of guessed keys meets the stage limit).
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

/// Applies the route's own rate limits (cluster default, stage, route).
#[derive(Debug)]
pub struct RouteThrottle {
    pub limiter: Arc<Limiter>,
}

impl Policy for RouteThrottle {
    fn check(&self, _parts: &Parts, route: &RouteTarget, _ctx: &mut PolicyContext<'_>) -> Result<(), Rejection> {
        admit(&self.limiter, &route.limits)
    }
}

/// Applies the limits an API key's usage plan added (throttles and quotas).
#[derive(Debug)]
pub struct PlanThrottle {
    pub limiter: Arc<Limiter>,
}

impl Policy for PlanThrottle {
    fn check(&self, _parts: &Parts, _route: &RouteTarget, ctx: &mut PolicyContext<'_>) -> Result<(), Rejection> {
        admit(&self.limiter, &ctx.limits)
    }
}

fn admit(limiter: &Limiter, limits: &[(Arc<str>, super::limiter::Rate)]) -> Result<(), Rejection> {
    if limits.is_empty() {
        return Ok(());
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let decision = limiter.admit(limits, now_ms);
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
