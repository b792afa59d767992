//! API keys: a route or stage that requires one refuses requests without a valid, enabled
//! key granted on the stage by a usage plan (403), and hands the plan's limits to the
//! throttle.
//!
//! Keys arrive in `x-api-key`; only the SHA-256 of a key's value is stored, so the lookup
//! hashes the presented value.

use http::StatusCode;
use http::request::Parts;

use super::{Policy, PolicyContext, Rejection};
use crate::cluster::pki::sha256_hex;
use crate::config::table::RouteTarget;

static API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// Checks the API key of requests to routes that require one.
#[derive(Debug)]
pub struct ApiKeyAuth;

impl Policy for ApiKeyAuth {
    fn check(&self, parts: &Parts, route: &RouteTarget, ctx: &mut PolicyContext<'_>) -> Result<(), Rejection> {
        if !route.api_key_required {
            return Ok(());
        }
        let forbidden = |m: &'static str| Rejection::new(StatusCode::FORBIDDEN, m);
        let Some(value) = parts.headers.get(&API_KEY) else {
            return Err(forbidden("this route needs an API key in x-api-key"));
        };
        let Some(grant) = ctx.table.keys.get(&sha256_hex(value.as_bytes())) else {
            return Err(forbidden("invalid API key"));
        };
        if !grant.enabled {
            return Err(forbidden("this API key is disabled"));
        }
        let stage = (ctx.stage.api.to_string(), ctx.stage.stage.to_string());
        let Some(stage_grant) = grant.stages.get(&stage) else {
            return Err(forbidden("this API key has no usage plan for this stage"));
        };
        ctx.limits.extend(stage_grant.limits.iter().cloned());
        if let Some(route_limits) = stage_grant.routes.get(&*route.key) {
            ctx.limits.extend(route_limits.iter().cloned());
        }
        Ok(())
    }
}
