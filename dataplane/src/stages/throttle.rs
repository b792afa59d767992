//! Throttles: every request counts against its route's scopes (cluster default, stage,
//! route) and is refused with 429 when the tightest one is spent.
//!
//! This stage comes before any authorization, so requests that fail a key check are counted
//! and throttled like any other (a flood of guessed keys meets the stage limit). The scopes
//! and their rates are compiled with the route; the request path only reads the clock and
//! asks the node's [`Limiter`](crate::limits::limiter::Limiter). [`admit`] is also how the API-key stage applies a usage
//! plan's throttles and quotas.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};

use super::{Exchange, Phases, Services, Stage, Step};
use crate::limits::limiter::{Period, Rate};
use crate::rejection::{Rejection, ResponseType};

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The scopes a request is counted against, each with its limit.
pub type Scopes = Vec<(Arc<str>, Rate)>;

/// The route's own rate limits (cluster default, stage, route).
#[derive(Debug)]
pub struct RouteThrottle {
    pub scopes: Scopes,
}

impl Stage for RouteThrottle {
    fn name(&self) -> &'static str {
        "throttle"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEAD
    }

    fn request_head<'a>(
        &'a self,
        _: &'a mut Parts,
        exchange: &'a mut Exchange,
        services: &'a Services<'a>,
    ) -> Step<'a> {
        admit(services, &self.scopes, exchange).into()
    }
}

/// Counts one request against `scopes` (or, for a request being explained, only looks);
/// a refusal says which limit and when to retry.
pub fn admit(services: &Services, scopes: &[(Arc<str>, Rate)], exchange: &mut Exchange) -> Result<(), Rejection> {
    if scopes.is_empty() {
        return Ok(());
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let decision =
        if services.dry_run { services.limiter.peek(scopes, now_ms) } else { services.limiter.admit(scopes, now_ms) };
    exchange.note(|| {
        let names: Vec<&str> = scopes.iter().map(|(s, _)| &**s).collect();
        format!(
            "limits {}: the tightest allows {}, {} left",
            names.join(", "),
            decision.limit,
            decision.remaining + u64::from(decision.allowed)
        )
    });
    let (scope, rate) = scopes.get(decision.scope).map_or(("", None), |(s, r)| (&**s, Some(*r)));
    let quota = rate.is_some_and(|r| r.period != Period::Second);
    if decision.allowed {
        // A client within a tenth of its quota: what the "quota nearly spent" alert watches.
        if quota && !services.dry_run && decision.remaining.saturating_mul(10) < decision.limit {
            metrics::counter!("meridian_quota_low_requests_total").increment(1);
        }
        return Ok(());
    }
    if !services.dry_run {
        metrics::counter!("meridian_rate_limited_total", "kind" => if quota { "quota" } else { "throttle" })
            .increment(1);
    }
    let number = |n: u64| HeaderValue::from(n);
    let (message, response_type) = match rate {
        Some(r) if quota => (
            format!("quota exhausted: {scope} allows {} requests per {}", decision.limit, r.period.name()),
            ResponseType::QuotaExceeded,
        ),
        _ => (
            format!("rate limit exceeded: {scope} allows {} requests per second", decision.limit),
            ResponseType::Throttled,
        ),
    };
    Err(Rejection::new(StatusCode::TOO_MANY_REQUESTS, message)
        .of_type(response_type)
        .with_header(http::header::RETRY_AFTER, number(decision.reset_secs))
        .with_header(RATELIMIT_LIMIT.clone(), number(decision.limit))
        .with_header(RATELIMIT_REMAINING.clone(), number(decision.remaining))
        .with_header(RATELIMIT_RESET.clone(), number(decision.reset_secs)))
}
