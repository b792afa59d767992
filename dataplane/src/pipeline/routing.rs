//! From a request head to the route that serves it: the host rule, the path rule, the
//! API and stage, the route, and the captured parameters' check, in one synchronous step
//! that neither the network nor the policies take part in.
//!
//! The pipeline runs it on every request; the fuzzing harness (`fuzz/`) runs it on
//! arbitrary heads, so everything a client controls before a policy sees the request is
//! exercised in one place.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::ALLOW;
use http::request::Parts;
use http::{HeaderValue, StatusCode};

use super::{host, path, resolve};
use crate::config::table::{RouteTarget, RoutingTable, StageRoutes};
use crate::gateway_responses::GatewayResponses;
use crate::observe::completion::RouteObserver;
use crate::rejection::Rejection;
use crate::router::{RequestFacts, RouteMiss};

/// A request head matched to its route.
#[derive(Debug)]
pub struct Routed<'t, 'p> {
    pub stage: &'t Arc<StageRoutes>,
    pub target: &'t RouteTarget,
    /// The normalised request path, and where the route's own part of it starts.
    pub path: Cow<'p, str>,
    pub offset: usize,
    /// Captured parameters, as byte ranges of the route's part of the path.
    pub captures: crate::router::Captures,
}

impl Routed<'_, '_> {
    /// The part of the path the route matched (after the stage or base path).
    pub fn route_path(&self) -> &str {
        &self.path[self.offset..]
    }
}

/// A request head refused before any policy ran, and what counts and logs it.
#[derive(Debug)]
pub struct Unrouted<'t> {
    pub rejection: Rejection,
    pub observer: &'t Arc<RouteObserver>,
    /// How the API words the refusal, once the request reached one of its stages.
    pub gateway_responses: Option<&'t Arc<GatewayResponses>>,
}

/// Routes a request head. `draw` (0..10,000) picks a stage's canary.
pub fn route<'t, 'p>(table: &'t RoutingTable, parts: &'p Parts, draw: u32) -> Result<Routed<'t, 'p>, Unrouted<'t>> {
    let refuse = |status, message: Cow<'static, str>, observer| Unrouted {
        rejection: Rejection::new(status, message),
        observer,
        gateway_responses: None,
    };
    let host =
        host::request_host(parts).map_err(|r| refuse(StatusCode::BAD_REQUEST, r.message().into(), &table.unrouted))?;
    let path = path::normalize(parts.uri.path())
        .map_err(|r| refuse(StatusCode::BAD_REQUEST, r.message().into(), &table.unrouted))?;
    let resolved = resolve::resolve(table, host.as_deref(), &path, draw)
        .map_err(|u| refuse(StatusCode::NOT_FOUND, u.message().into(), &table.unrouted))?;
    let stage = resolved.stage;
    let route_path = &path[resolved.path_offset..];
    let facts = RequestFacts::of(&parts.headers, parts.uri.query());
    let matched = match stage.router.find(&parts.method, route_path, &facts) {
        Ok(m) => m,
        // A browser's preflight for a route with CORS is that route's to answer.
        Err(RouteMiss::MethodNotAllowed(_)) if let Some(m) = preflight_route(stage, parts, route_path) => m,
        Err(RouteMiss::NotFound) => {
            let refused = refuse(StatusCode::NOT_FOUND, "no route matches this request".into(), &stage.unrouted);
            return Err(Unrouted { gateway_responses: stage.gateway_responses.as_ref(), ..refused });
        }
        Err(RouteMiss::MethodNotAllowed(allowed)) => {
            let list: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            let mut refused = refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not allowed on this path".into(),
                &stage.unrouted,
            );
            if let Ok(v) = HeaderValue::try_from(list.join(", ")) {
                refused.rejection = refused.rejection.with_header(ALLOW, v);
            }
            return Err(Unrouted { gateway_responses: stage.gateway_responses.as_ref(), ..refused });
        }
    };
    let target = matched.value;
    if let Some(refusal) = matched
        .captures
        .iter()
        .find_map(|&(s, e)| path::check_capture(&route_path[s..e], target.allow_encoded_slashes).err())
    {
        let refused = refuse(StatusCode::BAD_REQUEST, refusal.message().into(), &target.observer);
        return Err(Unrouted { gateway_responses: target.gateway_responses.as_ref(), ..refused });
    }
    let captures = matched.captures;
    Ok(Routed { stage, target, offset: resolved.path_offset, path, captures })
}

/// The route a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) asks about,
/// when that route has CORS.
fn preflight_route<'t>(
    stage: &'t StageRoutes,
    parts: &Parts,
    route_path: &str,
) -> Option<crate::router::RouteMatch<'t, RouteTarget>> {
    if parts.method != http::Method::OPTIONS {
        return None;
    }
    let requested = parts.headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?;
    let method = http::Method::from_bytes(requested.as_bytes()).ok()?;
    // A preflight does not carry the request's headers, so routes' conditions cannot tell
    // which of them it asks about: the most conditioned route of the path answers it.
    let facts = RequestFacts { preflight: true, ..RequestFacts::of(&parts.headers, parts.uri.query()) };
    stage.router.find(&method, route_path, &facts).ok().filter(|m| m.value.answers_preflight)
}
