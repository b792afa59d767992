//! The request path: one pipeline of small stages, run in order.
//!
//! ```text
//! request id → host and path rules (400 on ambiguity) → resolve (host, base path → api,
//!   stage) → route match → policies (body limit, route throttle, API key, plan throttle)
//!   → integration (http proxy | mock) → response headers → access log + metrics
//! ```
//!
//! Routing stages produce what later stages need; each [`Policy`] sees the request head and
//! the matched route and either lets the request through or rejects it with a
//! [`Rejection`]. New policies are added to the list without touching the others. The
//! routing table is loaded once per request from an [`ArcSwap`], so a reload never tears a
//! request: it finishes on the table it started with.

pub mod api_key;
pub mod body_limit;
pub mod headers;
pub mod host;
pub mod path;
pub mod request_id;
pub mod resolve;
pub mod routing;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::HOST;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use metrics::Gauge;

pub use crate::rejection::Rejection;

use crate::body::{RequestBody, ResponseBody};
use crate::config::table::{RouteTarget, RoutingTable, StageRoutes};
use crate::integration::{Integration, ProxyIntegration, UpstreamError};
use crate::observe::access_log::AccessLog;
use crate::observe::completion::{Completion, ObservedBody, RouteObserver};

/// What the policies of one request learn and pass on to the ones after them.
pub struct PolicyContext<'t> {
    pub table: &'t RoutingTable,
    pub stage: &'t StageRoutes,
    /// Limits added by earlier policies (a key's usage plan), counted by the throttle.
    pub limits: Vec<(Arc<str>, crate::limits::limiter::Rate)>,
}

/// A check between route match and integration.
pub trait Policy: Send + Sync + 'static {
    fn check(&self, parts: &Parts, route: &RouteTarget, ctx: &mut PolicyContext<'_>) -> Result<(), Rejection>;
}

/// What the pipeline knows about the client connection, prepared once per connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub tls: bool,
    pub forwarding: headers::ClientForwarding,
}

impl ConnInfo {
    pub fn new(client: SocketAddr, tls: bool) -> Self {
        ConnInfo { client, tls, forwarding: headers::ClientForwarding::new(client.ip(), tls) }
    }
}

/// The request path of a node, shared by all its connections.
pub struct Pipeline {
    table: Arc<ArcSwap<RoutingTable>>,
    policies: Vec<Box<dyn Policy>>,
    max_body_bytes: u64,
    /// HTTP/1.1 heads are held to it by hyper; HTTP/2 heads here.
    max_headers: usize,
    log: AccessLog,
    in_flight: Gauge,
}

/// What serving produced, before the response is wrapped for logging.
struct Served {
    response: Response<ResponseBody>,
    observer: Arc<RouteObserver>,
    integration_latency: Option<Duration>,
    reason: Option<&'static str>,
}

impl Served {
    fn rejected(rejection: Rejection, request_id: &HeaderValue, observer: &Arc<RouteObserver>) -> Served {
        let reason = rejection.reason;
        Served {
            response: rejection.into_response(request_id),
            observer: observer.clone(),
            integration_latency: None,
            reason,
        }
    }
}

impl Pipeline {
    pub fn new(
        table: Arc<ArcSwap<RoutingTable>>,
        limits: &crate::config::Limits,
        log: AccessLog,
        limiter: Arc<crate::limits::limiter::Limiter>,
    ) -> Self {
        use crate::limits::throttle::{PlanThrottle, RouteThrottle};
        let policies: Vec<Box<dyn Policy>> = vec![
            Box::new(body_limit::BodyLimit { max_bytes: limits.max_body_bytes }),
            // Before the key check, so that refused keys count against the stage's limits.
            Box::new(RouteThrottle { limiter: limiter.clone() }),
            Box::new(api_key::ApiKeyAuth),
            Box::new(PlanThrottle { limiter }),
        ];
        Pipeline {
            table,
            policies,
            max_body_bytes: limits.max_body_bytes,
            max_headers: limits.max_headers,
            log,
            in_flight: metrics::gauge!("meridian_requests_in_flight"),
        }
    }

    /// Serves one request; never fails, every problem becomes a response.
    pub async fn handle(&self, request: Request<Incoming>, conn: &ConnInfo) -> Response<ObservedBody> {
        let started = Instant::now();
        self.in_flight.increment(1.0);
        let request_id = request_id::assign(request.headers());
        let method = request.method().clone();
        let uri = request.uri().clone();
        let version = request.version();
        let table = self.table.load_full();
        let served = self.serve(&table, request, conn, &request_id).await;
        let (mut parts, body) = served.response.into_parts();
        parts.headers.insert(&request_id::REQUEST_ID, request_id.clone());
        let completion = Completion {
            request_id,
            client: conn.client.ip(),
            method,
            uri,
            version,
            started,
            status: parts.status.as_u16(),
            integration_latency: served.integration_latency,
            reason: served.reason,
            observer: served.observer,
            log: self.log.clone(),
            in_flight: self.in_flight.clone(),
        };
        Response::from_parts(parts, ObservedBody::new(body, completion))
    }

    async fn serve(
        &self,
        table: &RoutingTable,
        request: Request<Incoming>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
    ) -> Served {
        let (mut parts, body) = request.into_parts();
        if parts.version == Version::HTTP_2 && parts.headers.len() > self.max_headers {
            let r = Rejection::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "the request has too many headers");
            return Served::rejected(r, request_id, &table.unrouted);
        }
        let upgrade = headers::is_websocket_upgrade(&parts.headers);
        if upgrade && let Err(r) = websocket::validate_handshake(&parts) {
            return Served::rejected(r, request_id, &table.unrouted);
        }
        let client_upgrade = if upgrade { parts.extensions.remove::<hyper::upgrade::OnUpgrade>() } else { None };
        let routed = match routing::route(table, &parts, canary_draw()) {
            Ok(routed) => routed,
            Err(refused) => return Served::rejected(refused.rejection, request_id, refused.observer),
        };
        let stage = routed.stage;
        let target = routed.target;
        let mut ctx = PolicyContext { table, stage, limits: Vec::new() };
        for policy in &self.policies {
            if let Err(rejection) = policy.check(&parts, target, &mut ctx) {
                return Served::rejected(rejection, request_id, &target.observer);
            }
        }
        match &target.integration {
            Integration::Mock(mock) => Served {
                response: mock.respond(),
                observer: target.observer.clone(),
                integration_latency: None,
                reason: None,
            },
            Integration::Proxy(proxy) => {
                let uri = match proxy.upstream.render(routed.route_path(), &routed.captures, parts.uri.query()) {
                    Ok(uri) => uri,
                    Err(_) => {
                        let r = Rejection::new(StatusCode::BAD_REQUEST, "the request path cannot be forwarded");
                        return Served::rejected(r, request_id, &target.observer);
                    }
                };
                let host = host_of(&parts);
                headers::strip_hop_by_hop(&mut parts.headers, upgrade);
                conn.forwarding.apply(&mut parts.headers, host.as_ref());
                parts.headers.insert(&request_id::REQUEST_ID, request_id.clone());
                parts.uri = uri;
                parts.version = Version::HTTP_11;
                let body = RequestBody::limited(body, self.max_body_bytes);
                self.call_upstream(proxy, Request::from_parts(parts, body), client_upgrade, target, request_id).await
            }
        }
    }

    async fn call_upstream(
        &self,
        proxy: &ProxyIntegration,
        request: Request<RequestBody>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        target: &RouteTarget,
        request_id: &HeaderValue,
    ) -> Served {
        let sent = Instant::now();
        let result = proxy.forward(request).await;
        let integration_latency = Some(sent.elapsed());
        let rejection = match result {
            Ok(mut response) => {
                let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                if let (true, Some(client)) = (switching, client_upgrade) {
                    let upstream = hyper::upgrade::on(&mut response);
                    crate::integration::proxy::splice_upgrades(client, upstream);
                }
                let (mut parts, body) = response.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers, switching);
                let response = Response::from_parts(parts, ResponseBody::Upstream(body));
                return Served { response, observer: target.observer.clone(), integration_latency, reason: None };
            }
            Err(UpstreamError::Timeout(d)) => Rejection::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the upstream did not answer within {} ms", d.as_millis()),
            ),
            Err(UpstreamError::BodyTooLarge) => Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds the limit of {} bytes", self.max_body_bytes),
            ),
            Err(UpstreamError::ClientBody) => {
                Rejection::new(StatusCode::BAD_REQUEST, "the request body is malformed or incomplete")
                    .with_reason("client body error")
            }
            Err(e @ (UpstreamError::Connect(_) | UpstreamError::Failed(_))) => {
                tracing::warn!(upstream = proxy.upstream.host(), error = %e, request_id = ?request_id, "upstream call failed");
                Rejection::new(StatusCode::BAD_GATEWAY, "the upstream could not be reached")
            }
        };
        Served { integration_latency, ..Served::rejected(rejection, request_id, &target.observer) }
    }
}

/// A uniform draw in 0..10,000 for the canary split.
fn canary_draw() -> u32 {
    ((crate::fast_random::next_u64() >> 32) % 10_000) as u32
}

/// The host the client addressed: `:authority` (HTTP/2) or `Host`.
fn host_of(parts: &Parts) -> Option<HeaderValue> {
    match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(HOST).cloned(),
    }
}
