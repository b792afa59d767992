//! API keys: a route or stage that requires one refuses requests without a valid, enabled
//! key granted on the stage by a usage plan (403), and hands the plan's limits to the
//! throttle.
//!
//! Keys arrive in `x-api-key`; only the SHA-256 of a key's value is stored, so the lookup
//! hashes the presented value. A refused key gets one answer whether it is unknown, disabled
//! or without a plan for the stage, so a guesser learns nothing; the access log (`reason`)
//! and `meridian_api_key_refusals_total{reason}` keep the precise cause. The route's own
//! throttles run before this check, so a flood of bad keys is throttled like any other.

use http::StatusCode;
use http::request::Parts;

use super::{Policy, PolicyContext, Rejection};
use crate::config::table::RouteTarget;
use crate::digest::sha256_hex;

static API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// What a client with a wrong key is told, whatever was wrong with it.
const INVALID: &str = "invalid API key";

fn refused(message: &'static str, reason: &'static str) -> Rejection {
    metrics::counter!("meridian_api_key_refusals_total", "reason" => reason).increment(1);
    Rejection::new(StatusCode::FORBIDDEN, message).with_reason(reason)
}

/// Checks the API key of requests to routes that require one.
#[derive(Debug)]
pub struct ApiKeyAuth;

impl Policy for ApiKeyAuth {
    fn check(&self, parts: &Parts, route: &RouteTarget, ctx: &mut PolicyContext<'_>) -> Result<(), Rejection> {
        if !route.api_key_required {
            return Ok(());
        }
        let Some(value) = parts.headers.get(&API_KEY) else {
            return Err(refused("this route needs an API key in x-api-key", "api key missing"));
        };
        let Some(grant) = ctx.table.keys.get(&sha256_hex(value.as_bytes())) else {
            return Err(refused(INVALID, "api key unknown"));
        };
        if !grant.enabled {
            return Err(refused(INVALID, "api key disabled"));
        }
        let stage = (ctx.stage.api.to_string(), ctx.stage.stage.to_string());
        let Some(stage_grant) = grant.stages.get(&stage) else {
            return Err(refused(INVALID, "api key has no usage plan for this stage"));
        };
        ctx.limits.extend(stage_grant.limits.iter().cloned());
        if let Some(route_limits) = stage_grant.routes.get(&*route.key) {
            ctx.limits.extend(route_limits.iter().cloned());
        }
        Ok(())
    }
}
