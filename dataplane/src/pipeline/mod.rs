//! The request path: from a request head to its response, through the route's stages.
//!
//! ```text
//! request id → host and path rules (400 on ambiguity) → resolve (host, base path → api,
//!   stage) → route match → body limit → the route's chain: request head → request body
//!   → upstream request → integration (http proxy | mock) → response head → response body
//!   → complete → access log + metrics
//! ```
//!
//! Routing produces the route; the route's [`Chain`] (see [`crate::stages`]) holds only the
//! stages that route configured, one list per phase. Whatever stops a request (routing, a
//! stage, the upstream) becomes a response like any other, and the chain's response phases
//! run on it, so every outcome carries the request id and the headers stages add. The
//! routing table is loaded once per request from an [`ArcSwap`], so a reload never tears a
//! request: it finishes on the table it started with.

pub mod body_limit;
pub mod connections;
pub mod explain;
pub mod headers;
pub mod host;
pub mod path;
pub mod request_id;
pub mod resolve;
pub mod routing;
pub mod websocket;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::incoming::Incoming;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use metrics::Gauge;

pub use crate::rejection::Rejection;

use crate::authorizers::Authorizers;
use crate::body::ResponseBody;
use crate::config::table::{RouteTarget, RoutingTable};
use crate::content_coding::Coding;
use crate::gateway_responses::{GatewayResponses, RequestEcho};
use crate::idempotency::IdempotencyRecords;
use crate::integration::proxy::{AnsweredBy, NameTheTarget};
use crate::integration::request_body::RequestBody;
use crate::integration::upstreams::Upstreams;
use crate::integration::websocket::WebSocketEndpoint;
use crate::integration::{Integration, ProxyIntegration, UpstreamError};
use crate::limits::limiter::Limiter;
use crate::observe::access_log::AccessLog;
use crate::observe::completion::{Completion, ObservedBody, RouteObserver};
use crate::observe::spans::SpanSink;
use crate::observe::trace::{Attributes, RequestTrace, SpanId, SpanKind, SpanStart};
use crate::response_cache::ResponseCaches;
use crate::stages::waf::Blocklist;
use crate::stages::{
    AnswerBody, BodyNeed, Chain, Exchange, Flow, MAX_ANSWER_BODY, MAX_ANSWER_BODY_TIME, Services, StagedBody, Stop,
};
use body_limit::BodyLimit;

/// What the pipeline knows about the client connection, prepared once per connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub tls: bool,
    pub forwarding: headers::ClientForwarding,
    /// The certificate the client presented and the handshake verified (mutual TLS).
    pub client_certificate: std::sync::OnceLock<Arc<crate::certificates::ClientCertificate>>,
    /// The server name the TLS handshake asked for (SNI), if any.
    pub server_name: std::sync::OnceLock<String>,
}

impl ConnInfo {
    pub fn new(client: SocketAddr, tls: bool) -> Self {
        ConnInfo {
            client,
            tls,
            forwarding: headers::ClientForwarding::new(client.ip(), tls),
            client_certificate: std::sync::OnceLock::new(),
            server_name: std::sync::OnceLock::new(),
        }
    }
}

/// Marks a request for a mutual TLS domain on a connection whose handshake was made for
/// another name (or none): the listener finds it, the pipeline refuses it with 421 (so the
/// client opens a connection for that domain), logged and counted like any refusal.
#[derive(Debug, Clone, Copy)]
pub struct Misdirected;

/// The request path of a node, shared by all its connections.
pub struct Pipeline {
    table: Arc<ArcSwap<RoutingTable>>,
    limiter: Arc<Limiter>,
    upstreams: Arc<Upstreams>,
    /// JWKS key sets and authorizer caches, kept across reloads.
    authorizers: Authorizers,
    /// Clients the firewall's rate-based rules block, kept across reloads.
    blocks: Blocklist,
    /// Response caches, by stage, kept across reloads.
    caches: Arc<ResponseCaches>,
    /// Idempotency records (the cluster's once the node has joined one).
    records: Arc<IdempotencyRecords>,
    /// The WebSocket connections of `type: websocket` APIs, kept across reloads.
    connections: Arc<crate::connections::Connections>,
    body_limit: BodyLimit,
    /// HTTP/1.1 heads are held to it by the server (`gateway::http1`); HTTP/2 heads here.
    max_headers: usize,
    log: AccessLog,
    in_flight: Gauge,
    /// Where traced requests' spans go (the node's `tracing` collector), if anywhere.
    spans: Option<Arc<SpanSink>>,
}

/// What serving produced, before the response phases and logging.
struct Served<'t> {
    /// A response, or a refusal still to be worded (by the API's gateway responses).
    response: Result<Response<ResponseBody>, Rejection>,
    gateway_responses: Option<&'t Arc<GatewayResponses>>,
    observer: Arc<RouteObserver>,
    /// The route's chain, once a route was found: its response phases run on the response.
    chain: Option<&'t Arc<Chain>>,
    integration_latency: Option<Duration>,
    /// The integration answered (the upstream, or a mock), not the gateway.
    integration_answered: bool,
    /// The request went to the integration (see [`Exchange::sent_upstream`]).
    sent_upstream: bool,
    reason: Option<std::borrow::Cow<'static, str>>,
}

impl<'t> Served<'t> {
    fn unrouted(unrouted: routing::Unrouted<'t>) -> Self {
        let routing::Unrouted { mut rejection, observer, gateway_responses } = unrouted;
        let reason = rejection.reason.take();
        Served {
            response: Err(rejection),
            gateway_responses,
            observer: observer.clone(),
            chain: None,
            integration_latency: None,
            integration_answered: false,
            sent_upstream: false,
            reason,
        }
    }

    fn stopped(stop: Stop, target: &'t RouteTarget) -> Self {
        let (response, reason) = match stop {
            Stop::Reject(mut rejection) => {
                let reason = rejection.reason.take();
                (Err(rejection), reason)
            }
            Stop::Answer(response) => (Ok(response), None),
        };
        Served {
            response,
            gateway_responses: target.gateway_responses.as_ref(),
            observer: target.observer.clone(),
            chain: Some(&target.chain),
            integration_latency: None,
            integration_answered: false,
            sent_upstream: false,
            reason,
        }
    }

    /// The gateway's own answer, given as the integration's: a mock, a redirect, a
    /// WebSocket API's handshake or callback.
    fn answered(answer: Response<Bytes>, target: &'t RouteTarget) -> Self {
        Served {
            response: Ok(answer.map(ResponseBody::full)),
            gateway_responses: target.gateway_responses.as_ref(),
            observer: target.observer.clone(),
            chain: Some(&target.chain),
            integration_latency: None,
            integration_answered: true,
            sent_upstream: true,
            reason: None,
        }
    }

    fn rejected(rejection: Rejection, target: &'t RouteTarget) -> Self {
        Self::stopped(Stop::Reject(rejection), target)
    }

    /// An unrouted refusal that never reached an API.
    fn refused(rejection: Rejection, observer: &'t Arc<RouteObserver>) -> Self {
        Self::unrouted(routing::Unrouted { rejection, observer, gateway_responses: None })
    }
}

/// What serves a routed request.
enum Call<'t> {
    Proxy(&'t ProxyIntegration, http::Uri),
    /// Answered from the configuration once the stages let the request through.
    Mock(&'t crate::integration::MockIntegration),
    /// A redirect, its `Location` made while the route's captures are at hand.
    Redirect(Response<bytes::Bytes>),
}

/// A request for a WebSocket API's route, as routing found it.
struct WebSocketCall<'t, 'r> {
    endpoint: &'t WebSocketEndpoint,
    /// The callback API's connection id, as the path has it.
    id: Option<String>,
    client_upgrade: Option<websocket::ClientUpgrade>,
    request_id: &'r HeaderValue,
}

/// A request body on its way to the integration.
enum ClientBody {
    Streaming(Incoming),
    Read(Bytes),
    /// The first bytes were read for the stages; the rest streams after them.
    Prefixed(Bytes, Incoming),
}

impl ClientBody {
    /// What was read of the body for the stages.
    fn read(&self) -> Option<&Bytes> {
        match self {
            ClientBody::Streaming(_) => None,
            ClientBody::Read(bytes) | ClientBody::Prefixed(bytes, _) => Some(bytes),
        }
    }
}

impl Pipeline {
    pub fn new(
        table: Arc<ArcSwap<RoutingTable>>,
        limits: &crate::config::Limits,
        log: AccessLog,
        limiter: Arc<Limiter>,
        upstreams: Arc<Upstreams>,
    ) -> Self {
        Pipeline {
            table,
            limiter,
            authorizers: Authorizers::new(upstreams.clone()),
            blocks: Blocklist::default(),
            caches: Arc::default(),
            records: Arc::default(),
            connections: crate::connections::Connections::new(
                limits.max_websocket_connections,
                upstreams.clone(),
                log.clone(),
            ),
            upstreams,
            body_limit: BodyLimit { max_bytes: limits.max_body_bytes },
            max_headers: limits.max_headers,
            log,
            in_flight: metrics::gauge!("meridian_requests_in_flight"),
            spans: None,
        }
    }

    /// The same pipeline, exporting traced requests' spans to `spans`.
    pub fn with_spans(self, spans: Option<Arc<SpanSink>>) -> Self {
        if let Some(sink) = &spans {
            self.connections.export_spans_to(sink.clone());
        }
        Pipeline { spans, ..self }
    }

    /// Serves one request; never fails, every problem becomes a response. `held` (for the
    /// listener, the connection's mark that it is serving a request) is kept until the
    /// response is ready. When a route of the table records responses, the request runs on a
    /// task of its own, so that it is carried to its end (the upstream's answer read and
    /// recorded) even if its client goes away and the connection drops this future.
    ///
    /// The future is boxed here, once, with the request's whole state in it: each future
    /// around it would copy that state (several KiB) as it is made and moved.
    pub fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        conn: &Arc<ConnInfo>,
        held: impl Send + 'static,
    ) -> Pin<Box<dyn Future<Output = Response<ObservedBody>> + Send>> {
        // The table is loaded once: the request finishes on it, whatever a reload swaps in.
        let table = self.table.load_full();
        if !table.keeps_responses {
            return crate::boxed_future::in_place(|| self.clone().serve_here(table, request, conn.clone(), held));
        }
        let task = tokio::spawn(self.clone().serve_here(table, request, conn.clone(), ()));
        Box::pin(async move {
            let answered = task.await;
            drop(held);
            match answered {
                Ok(response) => response,
                Err(e) => {
                    tracing::error!(error = %e, "a request's task ended without a response");
                    let rejection =
                        Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, "the request could not be served");
                    let response = rejection.into_response(&request_id::assign(&http::HeaderMap::new()));
                    let (parts, body) = response.into_parts();
                    Response::from_parts(parts, ObservedBody::unobserved(body))
                }
            }
        })
    }

    async fn serve_here(
        self: Arc<Self>,
        table: Arc<RoutingTable>,
        request: Request<Incoming>,
        conn: Arc<ConnInfo>,
        held: impl Send,
    ) -> Response<ObservedBody> {
        let started = Instant::now();
        self.in_flight.increment(1.0);
        let request_id = request_id::assign(request.headers());
        let method = request.method().clone();
        let uri = request.uri().clone();
        let version = request.version();
        let services = self.services(&table, false);
        let grpc_call = crate::grpc::is_call(request.headers());
        let mut exchange = Exchange::new(request_id.clone(), conn.client.ip());
        let served = self.serve(&table, &services, request, &conn, &mut exchange, started).await;
        let response = match served.response {
            Ok(response) => response,
            // A gRPC client reads the gateway's refusals as gRPC statuses.
            Err(rejection) if grpc_call => rejection.into_grpc_response(&request_id),
            Err(rejection) => match served.gateway_responses {
                Some(worded) => {
                    let echo = exchange.state.get::<RequestEcho>();
                    worded.answer(rejection, &request_id, conn.client.ip(), echo)
                }
                None => rejection.into_response(&request_id),
            },
        };
        let (mut parts, mut body) = response.into_parts();
        parts.headers.insert(&request_id::REQUEST_ID, request_id.clone());
        let trace = exchange.trace.clone();
        let mut reason = served.reason;
        if let Some(chain) = served.chain {
            exchange.status = Some(parts.status);
            exchange.integration_answered = served.integration_answered;
            exchange.sent_upstream = served.sent_upstream;
            if exchange.integration_answered && chain.head_reads_answer_body(parts.status) {
                (parts, body) = read_answer_for_head(parts, body, &mut exchange, &mut reason).await;
            }
            chain.response_head(&mut parts, &mut exchange, &services);
            if chain.follows_response_body() {
                body = ResponseBody::Wrapped(Box::pin(StagedBody::new(body, chain.clone(), exchange)));
            }
        }
        let completion = Completion {
            request_id,
            client: conn.client.ip(),
            method,
            uri,
            version,
            started,
            status: parts.status.as_u16(),
            integration_latency: served.integration_latency,
            reason,
            observer: served.observer,
            client_cert: conn.client_certificate.get().cloned(),
            trace: trace.map(|trace| (trace, self.spans.clone())),
            log: self.log.clone(),
            in_flight: self.in_flight.clone(),
        };
        drop(held);
        Response::from_parts(parts, ObservedBody::new(body, completion))
    }

    /// The node's response caches (`meridian cache flush` empties them).
    pub fn caches(&self) -> &Arc<ResponseCaches> {
        &self.caches
    }

    /// The node's idempotency records (a cluster member replicates them).
    pub fn records(&self) -> &Arc<IdempotencyRecords> {
        &self.records
    }

    /// The node's WebSocket connections (calls for them arrive over RPC and the admin API).
    pub fn connections(&self) -> &Arc<crate::connections::Connections> {
        &self.connections
    }

    /// What the stages of a request on `table` enforce their policy with.
    fn services<'a>(&'a self, table: &'a RoutingTable, dry_run: bool) -> Services<'a> {
        Services {
            limiter: &self.limiter,
            keys: &table.keys,
            credentials: &table.credentials,
            authorizers: &self.authorizers,
            blocks: &self.blocks,
            caches: &self.caches,
            records: &self.records,
            dry_run,
        }
    }

    async fn serve<'t>(
        &self,
        table: &'t RoutingTable,
        services: &Services<'_>,
        request: Request<Incoming>,
        conn: &ConnInfo,
        exchange: &mut Exchange,
        started: Instant,
    ) -> Served<'t> {
        let request_id = exchange.request_id.clone();
        if let Some(certificate) = conn.client_certificate.get() {
            exchange.state.insert(certificate.clone());
        }
        let (mut parts, body) = request.into_parts();
        if parts.extensions.remove::<Misdirected>().is_some() {
            let r = Rejection::new(
                StatusCode::MISDIRECTED_REQUEST,
                "this host needs a TLS connection of its own (with its client certificate)",
            )
            .with_reason("misdirected: the TLS handshake named another host");
            return Served::refused(r, &table.unrouted);
        }
        if parts.version == Version::HTTP_2 && parts.headers.len() > self.max_headers {
            let r = Rejection::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "the request has too many headers");
            return Served::refused(r, &table.unrouted);
        }
        let upgrade = headers::is_websocket_upgrade(&parts.headers);
        if upgrade && let Err(r) = websocket::validate_handshake(&parts) {
            return Served::refused(r, &table.unrouted);
        }
        let client_upgrade = if upgrade { parts.extensions.remove::<websocket::ClientUpgrade>() } else { None };
        // What the API's gateway responses may read of a refused request, kept only for
        // APIs that have them.
        let echo = |parts: &http::request::Parts| RequestEcho {
            headers: parts.headers.clone(),
            query: parts.uri.query().map(str::to_string),
        };
        let routed = match routing::route(table, &parts, canary_draw()) {
            Ok(routed) => routed,
            Err(refused) => {
                if refused.gateway_responses.is_some() {
                    exchange.state.insert(echo(&parts));
                }
                if let Some(sampling) = &refused.observer.sampling {
                    exchange.trace = Some(RequestTrace::begin(sampling, &parts.headers, conn.tls, started));
                }
                return Served::unrouted(refused);
            }
        };
        let target = routed.target;
        if let Some(sampling) = &target.observer.sampling {
            exchange.trace = Some(RequestTrace::begin(sampling, &parts.headers, conn.tls, started));
        }
        if target.gateway_responses.is_some() {
            exchange.state.insert(echo(&parts));
        }
        if target.keeps_path_parameters {
            let path = routed.route_path();
            let values = routed.captures.iter().map(|(s, e)| crate::query::percent_decode(&path[*s..*e])).collect();
            exchange.state.insert(crate::stages::mapping::PathParameters(values));
        }
        // The upstream URI is rendered from the path as routed, before any stage runs.
        let call = match &target.integration {
            Integration::Proxy(proxy) => {
                match proxy.upstream.render(routed.route_path(), &routed.captures, parts.uri.query()) {
                    Ok(uri) => Call::Proxy(proxy, uri),
                    Err(_) => {
                        let r = Rejection::new(StatusCode::BAD_REQUEST, "the request path cannot be forwarded");
                        return Served::rejected(r, target);
                    }
                }
            }
            Integration::Mock(mock) => Call::Mock(mock),
            Integration::Redirect(redirect) => {
                match redirect.respond(routed.route_path(), &routed.captures, parts.uri.query()) {
                    Some(answer) => Call::Redirect(answer),
                    None => {
                        let r = Rejection::new(StatusCode::BAD_REQUEST, "the request cannot be redirected");
                        return Served::rejected(r, target);
                    }
                }
            }
            Integration::WebSocket(endpoint) => {
                // The callback API's one capture is the connection id.
                let path = routed.route_path();
                let id = routed.captures.first().map(|(s, e)| path[*s..*e].to_string());
                drop(routed);
                let websocket = WebSocketCall { endpoint, id, client_upgrade, request_id: &request_id };
                // Boxed: a WebSocket's future is large, and every request's would carry it.
                return Box::pin(self.serve_websocket(websocket, parts, body, target, exchange, services, conn)).await;
            }
        };
        drop(routed);
        if let Err(r) = self.body_limit.check_declared(&parts) {
            return Served::rejected(r, target);
        }
        if let Flow::Stop(stop) = target.chain.request_head(&mut parts, exchange, services).await {
            return Served::stopped(stop, target);
        }
        // A mirrored request's body is read (when its declared length allows) to be sent twice.
        let mut mirror = match &call {
            Call::Proxy(proxy, _) => proxy.mirror.as_ref().filter(|m| m.sampled()),
            Call::Mock(_) | Call::Redirect(_) => None,
        };
        let body = match target.chain.body_need(&parts) {
            None => match mirror {
                Some(m) if crate::stages::may_have_body(&parts) => match crate::stages::declared_length(&parts) {
                    Some(length) if length <= m.max_body_bytes => match self.body_limit.buffer(body, length).await {
                        Ok(bytes) => ClientBody::Read(bytes),
                        Err(r) => return Served::rejected(r, target),
                    },
                    _ => {
                        m.skip();
                        mirror = None;
                        ClientBody::Streaming(body)
                    }
                },
                _ => ClientBody::Streaming(body),
            },
            Some(need) => {
                let coding = match Coding::of_message(&parts.headers) {
                    Ok(coding) => coding,
                    Err(what) => {
                        let r = Rejection::new(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            format!("the request's Content-Encoding {what} cannot be read (gzip, deflate, br or zstd)"),
                        );
                        return Served::rejected(r, target);
                    }
                };
                let read = match (need, coding) {
                    (BodyNeed::Whole(limit), None) => self.body_limit.buffer(body, limit).await.map(ClientBody::Read),
                    (BodyNeed::Prefix(bytes), None) => {
                        self.body_limit.read_prefix(body, bytes).await.map(|read| match read {
                            (prefix, Some(rest)) => ClientBody::Prefixed(prefix, rest),
                            (whole, None) => ClientBody::Read(whole),
                        })
                    }
                    // A compressed body is read whole: its prefix says nothing of what it holds.
                    (_, Some(_)) => self.body_limit.buffer(body, self.body_limit.max_bytes).await.map(ClientBody::Read),
                };
                let read = match read {
                    Ok(read) => read,
                    Err(r) => return Served::rejected(r, target),
                };
                let decoded = match (coding, read.read()) {
                    (Some(coding), Some(sent)) => match self.body_limit.decode(coding, sent, need) {
                        Ok(decoded) => {
                            exchange.set_encoded_body(sent.clone());
                            Some(decoded)
                        }
                        Err(r) => return Served::rejected(r, target),
                    },
                    _ => None,
                };
                if let Some(bytes) = decoded.as_ref().or(read.read())
                    && let Flow::Stop(stop) = target.chain.request_body(&parts, bytes, exchange, services).await
                {
                    return Served::stopped(stop, target);
                }
                match exchange.take_replaced_body() {
                    Some(mapped) => {
                        // The stages' body is sent as it is, never encoded.
                        parts.headers.remove(http::header::CONTENT_ENCODING);
                        parts.headers.remove(http::header::TRANSFER_ENCODING);
                        parts.headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(mapped.len()));
                        ClientBody::Read(mapped)
                    }
                    None => read,
                }
            }
        };
        let (proxy, uri) = match call {
            Call::Proxy(proxy, uri) => (proxy, uri),
            Call::Mock(mock) => return Served::answered(mock.respond(), target),
            Call::Redirect(answer) => return Served::answered(answer, target),
        };
        let host = headers::take_client_host(&mut parts);
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        conn.forwarding.apply(&mut parts.headers, host.as_ref());
        parts.headers.insert(&request_id::REQUEST_ID, request_id.clone());
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        target.chain.upstream_request(&mut parts, exchange);
        // The upstream joins the request's trace, as a child of the integration's span.
        let span = exchange.trace.as_ref().map(|trace| {
            let start = trace.start_span();
            trace.propagate(&mut parts.headers, start.map_or_else(SpanId::random, |s| s.id));
            if start.is_some() {
                parts.extensions.insert(NameTheTarget);
            }
            start
        });
        let span = span.flatten().map(|start| IntegrationSpan {
            start,
            method: parts.method.clone(),
            url: parts.uri.to_string(),
        });
        if let Some(m) = mirror {
            match &body {
                ClientBody::Read(bytes) if bytes.len() as u64 <= m.max_body_bytes => {
                    m.send(&parts, bytes.clone(), &self.upstreams)
                }
                ClientBody::Streaming(_) => m.send(&parts, bytes::Bytes::new(), &self.upstreams),
                ClientBody::Read(_) | ClientBody::Prefixed(..) => m.skip(),
            }
        }
        let body = match body {
            ClientBody::Streaming(incoming) => self.body_limit.stream(incoming),
            ClientBody::Read(bytes) => RequestBody::buffered(bytes),
            ClientBody::Prefixed(prefix, rest) => RequestBody::prefixed(prefix, rest, self.body_limit.max_bytes),
        };
        let mut request = Request::from_parts(parts, body);
        let served = self.call_upstream(proxy, &mut request, client_upgrade, target, &request_id);
        let served = served.await;
        if let Some(span) = span {
            span.end(exchange, &served);
        }
        served
    }

    /// Serves a route of a WebSocket API once its chain's request head lets it through:
    /// the handshake becomes a connection; a callback API request reaches one.
    #[allow(clippy::too_many_arguments)]
    async fn serve_websocket<'t>(
        &self,
        call: WebSocketCall<'t, '_>,
        mut parts: Parts,
        body: Incoming,
        target: &'t RouteTarget,
        exchange: &mut Exchange,
        services: &Services<'_>,
        conn: &ConnInfo,
    ) -> Served<'t> {
        if let Err(r) = self.body_limit.check_declared(&parts) {
            return Served::rejected(r, target);
        }
        if let Flow::Stop(stop) = target.chain.request_head(&mut parts, exchange, services).await {
            return Served::stopped(stop, target);
        }
        let answer = match call.endpoint {
            WebSocketEndpoint::Connect(stage) => {
                let authorizer = exchange.state.get::<crate::authorizers::AuthorizerContext>();
                let source = conn.client.ip();
                let client = call.client_upgrade;
                let observed = (authorizer, exchange.trace.as_ref());
                let named = (call.request_id, &target.observer);
                connections::open(&self.connections, stage, &parts, client, source, observed, named).await
            }
            WebSocketEndpoint::Callback { api, stage, max_message_bytes } => {
                let id = call.id.unwrap_or_default();
                let endpoint = (&**api, &**stage, *max_message_bytes);
                connections::call(&self.connections, endpoint, &id, &parts, body, &self.body_limit).await
            }
        };
        match answer {
            Ok(answer) => Served::answered(answer, target),
            Err(rejection) => Served::rejected(rejection, target),
        }
    }

    async fn call_upstream<'t>(
        &self,
        proxy: &ProxyIntegration,
        request: &mut Request<RequestBody>,
        client_upgrade: Option<websocket::ClientUpgrade>,
        target: &'t RouteTarget,
        request_id: &HeaderValue,
    ) -> Served<'t> {
        let sent = Instant::now();
        // A gRPC call's own deadline, when it is shorter than the route's timeout (other
        // requests are not looked at for one).
        let deadline = Some(request.headers())
            .filter(|headers| crate::grpc::is_call(headers))
            .and_then(crate::grpc::timeout)
            .filter(|d| *d < proxy.timeout);
        let result = match deadline {
            Some(d) => tokio::time::timeout(d, proxy.forward(request, &self.upstreams))
                .await
                .unwrap_or(Err(UpstreamError::Timeout(d))),
            None => proxy.forward(request, &self.upstreams).await,
        };
        let integration_latency = Some(sent.elapsed());
        // Whether the upstream may have seen the request: not when no connection took it.
        let sent_upstream = !matches!(result, Err(UpstreamError::Connect(_) | UpstreamError::Busy));
        let rejection = match result {
            Ok(mut response) => {
                let answered_by = response.extensions_mut().remove::<AnsweredBy>();
                let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                if let (true, Some(client), Some(upstream)) =
                    (switching, client_upgrade, response.body_mut().upgraded())
                {
                    websocket::splice(client, upstream);
                }
                let (mut parts, body) = response.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers, switching);
                if let Some(answered_by) = answered_by {
                    parts.extensions.insert(answered_by);
                }
                let response = Response::from_parts(parts, ResponseBody::Upstream(body));
                return Served {
                    response: Ok(response),
                    gateway_responses: target.gateway_responses.as_ref(),
                    observer: target.observer.clone(),
                    chain: Some(&target.chain),
                    integration_latency,
                    integration_answered: true,
                    sent_upstream: true,
                    reason: None,
                };
            }
            Err(UpstreamError::Timeout(d)) => Rejection::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the upstream did not answer within {} ms", d.as_millis()),
            ),
            Err(UpstreamError::BodyTooLarge) => BodyLimit::exceeded(self.body_limit.max_bytes),
            Err(UpstreamError::ClientBody) => {
                Rejection::new(StatusCode::BAD_REQUEST, "the request body is malformed or incomplete")
                    .with_reason("client body error")
            }
            Err(UpstreamError::Busy) => {
                Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "the upstream is at its connection limit")
                    .with_reason("upstream connection limit")
            }
            Err(e @ (UpstreamError::Connect(_) | UpstreamError::Failed(_))) => {
                tracing::warn!(upstream = proxy.upstream.host(), error = %e, request_id = ?request_id, "upstream call failed");
                Rejection::new(StatusCode::BAD_GATEWAY, "the upstream could not be reached")
            }
        };
        Served { integration_latency, sent_upstream, ..Served::rejected(rejection, target) }
    }
}

/// The span of a traced request's integration call, from its start to its answer's head.
struct IntegrationSpan {
    start: SpanStart,
    method: http::Method,
    url: String,
}

impl IntegrationSpan {
    fn end(self, exchange: &Exchange, served: &Served<'_>) {
        let IntegrationSpan { start, method, url } = self;
        let (status, target) = match &served.response {
            Ok(response) => (Some(response.status().as_u16()), response.extensions().get::<AnsweredBy>()),
            Err(_) => (None, None),
        };
        let error = match (&served.response, status) {
            (Err(rejection), _) => Some(served.reason.as_deref().unwrap_or(&rejection.message).to_string()),
            (Ok(_), Some(code)) if code >= 500 => Some(code.to_string()),
            _ => None,
        };
        let name = method.to_string();
        exchange.end_span(
            Some(start),
            name,
            SpanKind::Client,
            || {
                let mut attributes: Attributes =
                    vec![("http.request.method", method.to_string().into()), ("url.full", url.into())];
                if let Some(AnsweredBy(authority)) = target {
                    attributes.push(("server.address", authority.host().to_string().into()));
                    if let Some(port) = authority.port_u16() {
                        attributes.push(("server.port", i64::from(port).into()));
                    }
                }
                match status {
                    Some(code) => attributes.push(("http.response.status_code", i64::from(code).into())),
                    None => attributes.push(("error.type", "no answer".into())),
                }
                attributes
            },
            error,
        );
    }
}

/// The integration's whole answer, read before its head for a stage whose head reads the
/// body ([`crate::stages::Stage::head_reads_answer_body`]) and kept in the exchange as
/// [`AnswerBody`]; an answer too long or too slow to read becomes a 502 (its `reason` noted).
async fn read_answer_for_head(
    parts: http::response::Parts,
    body: ResponseBody,
    exchange: &mut Exchange,
    reason: &mut Option<std::borrow::Cow<'static, str>>,
) -> (http::response::Parts, ResponseBody) {
    match body.read_whole(MAX_ANSWER_BODY, MAX_ANSWER_BODY_TIME).await {
        Ok(whole) => {
            exchange.state.insert(AnswerBody(whole.clone()));
            (parts, ResponseBody::full(whole))
        }
        Err(why) => {
            let refusal = Rejection::new(StatusCode::BAD_GATEWAY, "the upstream's response could not be mapped");
            let (mut parts, body) = refusal.into_response(&exchange.request_id).into_parts();
            parts.headers.insert(&request_id::REQUEST_ID, exchange.request_id.clone());
            exchange.status = Some(parts.status);
            exchange.integration_answered = false;
            *reason = Some(format!("the upstream's answer for the response head: {why}").into());
            (parts, body)
        }
    }
}

/// A uniform draw in 0..10,000 for the canary split.
fn canary_draw() -> u32 {
    ((crate::fast_random::next_u64() >> 32) % 10_000) as u32
}

#[cfg(test)]
mod tests;
