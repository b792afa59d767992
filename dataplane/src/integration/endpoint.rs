//! One upstream target (`host:port`, plain or TLS, HTTP/1.1 or HTTP/2) and its
//! connections: HTTP/1.1 spoken in the request's own task ([`super::http1_client`]), HTTP/2
//! over hyper's connection API.
//!
//! An [`Endpoint`] keeps what a target needs across requests and reloads: idle HTTP/1.1
//! connections (the newest reused first, the oldest expired first), one shared HTTP/2
//! connection, the count of requests outstanding (for least-outstanding balancing), and its
//! passive health: a target that fails `failures` times in a row is ejected for a growing
//! interval. A request that could not be written (no connection, or an idle one the target
//! had closed) is handed back to the caller untouched, so it can go to another target.
//!
//! Metrics per target: `meridian_upstream_requests_total`, `..._failures_total`,
//! `..._ejections_total`, `meridian_upstream_connections_opened_total` and
//! `meridian_upstream_connections_open`, each labelled `target`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics::{Counter, Gauge};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::connection::{OpenConnection, UpstreamIo};
use super::http1_client::{self, ExchangeFailure, Http1Connection, ResponseStream, UpgradedUpstream};
use super::request_body::{BoxError, RequestBody, Resend, source_of};

use crate::coarse_time::CoarseInstant;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a target stays ejected, however often it failed.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// What identifies a target's connections: requests to equal keys share them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub scheme: Scheme,
    pub authority: Authority,
    /// For `https`: the name the certificate must carry (the integration URI's host, which
    /// is also the SNI), and the trust (`None`: the system roots, else the CA PEM's digest).
    pub server_name: Option<String>,
    pub trust: Option<String>,
    pub http2: bool,
}

/// How a target's connections are kept and its health judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointSettings {
    /// Connections open at once (HTTP/1.1); a request beyond them is refused with 503.
    pub max_connections: u32,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// Consecutive failures that eject the target.
    pub failures: u32,
    /// The first ejection's length; each further ejection in a row doubles it (up to 5 min).
    pub ejection: Duration,
}

impl Default for EndpointSettings {
    fn default() -> Self {
        EndpointSettings {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(90),
            failures: 5,
            ejection: Duration::from_secs(5),
        }
    }
}

/// Why a request did not get a response from this target.
#[derive(Debug)]
pub enum SendError {
    /// Nothing was sent: the request is as it was, for another target.
    NotSent(String),
    /// The target is at its connection limit; the request is as it was too.
    Busy,
    /// Sent, and the exchange failed (the error and its sources say why).
    Failed(BoxError),
}

/// One upstream target and its connections.
pub struct Endpoint {
    key: EndpointKey,
    settings: EndpointSettings,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Oldest first: checked out from the back, expired from the front.
    idle: Mutex<VecDeque<IdleConnection>>,
    shared: Mutex<Option<http2::SendRequest<RequestBody>>>,
    open: Arc<AtomicU32>,
    outstanding: AtomicU32,
    consecutive_failures: AtomicU32,
    ejections_in_a_row: AtomicU32,
    /// Milliseconds since `epoch` until which the target is ejected (0: not ejected).
    ejected_until: AtomicU64,
    epoch: Instant,
    metrics: EndpointMetrics,
    /// Whether an active health check runs against this target, and its failures in a row.
    checked: std::sync::atomic::AtomicBool,
    check_failures: AtomicU32,
}

/// An active health check: `GET path` every `interval`, answered 2xx or 3xx within `timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Whether a method may be sent twice with the effect of once (RFC 9110, 9.2.2).
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// What it takes to send a request again once hyper has consumed it: its head, and its body
/// when it has one that was kept ([`RequestBody::keep_for_resend`]).
struct ReplayHead {
    method: http::Method,
    uri: Uri,
    version: http::Version,
    headers: http::HeaderMap,
    body: Option<Resend>,
}

/// The most of a request body kept for sending it again to an HTTP/2 target that refused
/// its stream: a body that sent more is not sent again (the client gets the 502).
pub const MAX_RESENT_BODY: usize = 64 * 1024;

impl ReplayHead {
    /// The head of `request`, and its body kept (up to [`MAX_RESENT_BODY`]) unless it has
    /// none.
    fn keeping_body(request: &mut Request<RequestBody>) -> ReplayHead {
        let mut head = ReplayHead {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            body: None,
        };
        if !request.body().is_end_stream() {
            let body = std::mem::replace(request.body_mut(), RequestBody::empty());
            let (body, resend) = body.keep_for_resend(MAX_RESENT_BODY);
            *request.body_mut() = body;
            head.body = Some(resend);
        }
        head
    }

    /// The request again; `None` when its body was too long to keep.
    fn request(self) -> Option<Request<RequestBody>> {
        let body = match self.body {
            Some(resend) => resend.body()?,
            None => RequestBody::empty(),
        };
        let mut again = Request::new(body);
        *again.method_mut() = self.method;
        *again.uri_mut() = self.uri;
        *again.version_mut() = self.version;
        *again.headers_mut() = self.headers;
        Some(again)
    }
}

/// Whether an HTTP/2 stream failed without the target processing it: refused
/// (`REFUSED_STREAM`), or above the last stream a graceful GOAWAY says the target will
/// process.
fn unprocessed(error: &hyper::Error) -> bool {
    source_of::<h2::Error>(error).is_some_and(|h2| {
        h2.is_remote()
            && (h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)))
    })
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("key", &self.key).finish_non_exhaustive()
    }
}

struct IdleConnection {
    connection: Box<Http1Connection>,
    /// When it was returned: whether it is still fresh is a matter of seconds.
    since: CoarseInstant,
}

struct EndpointMetrics {
    requests: Counter,
    failures: Counter,
    ejections: Counter,
    opened: Counter,
    open: Gauge,
}

impl Endpoint {
    /// A target for `key`; `tls` is the client configuration for an `https` target.
    pub fn new(key: EndpointKey, settings: EndpointSettings, tls: Option<Arc<rustls::ClientConfig>>) -> Endpoint {
        let target = key.authority.to_string();
        let label = |name: &'static str| metrics::counter!(name, "target" => target.clone());
        let metrics = EndpointMetrics {
            requests: label("meridian_upstream_requests_total"),
            failures: label("meridian_upstream_failures_total"),
            ejections: label("meridian_upstream_ejections_total"),
            opened: label("meridian_upstream_connections_opened_total"),
            open: metrics::gauge!("meridian_upstream_connections_open", "target" => target.clone()),
        };
        let tls = tls.and_then(|config| {
            let name = key.server_name.clone().unwrap_or_else(|| key.authority.host().to_string());
            let name = ServerName::try_from(name).ok()?;
            let mut config = (*config).clone();
            config.alpn_protocols =
                if key.http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
            Some((TlsConnector::from(Arc::new(config)), name))
        });
        Endpoint {
            key,
            settings,
            tls,
            idle: Mutex::new(VecDeque::new()),
            shared: Mutex::new(None),
            open: Arc::new(AtomicU32::new(0)),
            outstanding: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections_in_a_row: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
            checked: std::sync::atomic::AtomicBool::new(false),
            check_failures: AtomicU32::new(0),
        }
    }

    /// Starts `check` against this target, once: `failures` failed checks in a row eject it
    /// (whatever requests do meanwhile), and a passed check brings an ejected target back at
    /// once. The task ends when the target is no longer used.
    pub fn start_checks(self: &Arc<Self>, check: &HealthCheck) {
        if self.checked.swap(true, Ordering::Relaxed) {
            return;
        }
        let target = Arc::downgrade(self);
        let check = check.clone();
        let label = self.key.authority.to_string();
        let outcome = |o: &'static str| metrics::counter!("meridian_upstream_health_checks_total", "target" => label.clone(), "outcome" => o);
        let (passed, failed) = (outcome("passed"), outcome("failed"));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(check.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(endpoint) = target.upgrade() else { break };
                let uri = format!("{}://{}{}", endpoint.key.scheme, endpoint.key.authority, check.path);
                let Ok(uri) = uri.parse::<Uri>() else { break };
                let mut request = Request::new(RequestBody::empty());
                *request.uri_mut() = uri;
                let healthy = tokio::time::timeout(check.timeout, async {
                    let response = endpoint.send(&mut request).await.ok()?;
                    let ok = response.status().is_success() || response.status().is_redirection();
                    http_body_util::BodyExt::collect(response.into_body()).await.ok()?;
                    ok.then_some(())
                })
                .await
                .is_ok_and(|r| r.is_some());
                if healthy {
                    passed.increment(1);
                    endpoint.check_passed();
                } else {
                    failed.increment(1);
                    endpoint.check_failed();
                }
            }
        });
    }

    /// A failed health check; the `failures`-th in a row ejects the target (requests that
    /// succeed in between do not start the count over: the check is its own judge).
    fn check_failed(&self) {
        let failures = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.settings.failures {
            self.check_failures.store(0, Ordering::Relaxed);
            self.eject(failures, "health check");
        }
    }

    /// A passed health check: an ejected target is back, and its failures start over.
    fn check_passed(&self) {
        self.check_failures.store(0, Ordering::Relaxed);
        if self.ejected_for().is_some() {
            self.ejected_until.store(0, Ordering::Relaxed);
            tracing::info!(target = %self.key.authority, "upstream target passed its health check; back in service");
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections_in_a_row.store(0, Ordering::Relaxed);
    }

    pub fn key(&self) -> &EndpointKey {
        &self.key
    }

    pub fn settings(&self) -> EndpointSettings {
        self.settings
    }

    /// Requests sent and not finished (their response bodies still streaming).
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether the target is ejected now; the time left if so.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            // Never ejected, or back: no need to read the clock (every request asks).
            return None;
        }
        let now = self.now_ms();
        if until <= now {
            // The ejection is over: later checks skip the clock again.
            let _ = self.ejected_until.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
            return None;
        }
        Some(Duration::from_millis(until - now))
    }

    #[cfg(test)]
    pub fn ejected_until_for_test(&self, ms: u64) {
        self.ejected_until.store(ms, Ordering::Relaxed);
    }

    /// Records a failed exchange; the `failures`-th in a row ejects the target.
    pub fn failed(&self) {
        self.metrics.failures.increment(1);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.settings.failures {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.eject(failures, "requests");
        }
    }

    /// Ejects the target (unless it is ejected already), each ejection in a row twice as
    /// long as the one before.
    fn eject(&self, failures: u32, by: &'static str) {
        if self.ejected_for().is_some() {
            return;
        }
        let in_a_row = self.ejections_in_a_row.fetch_add(1, Ordering::Relaxed).min(16);
        let length = self.settings.ejection.saturating_mul(1 << in_a_row).min(MAX_EJECTION);
        self.ejected_until.store(self.now_ms() + length.as_millis() as u64, Ordering::Relaxed);
        self.metrics.ejections.increment(1);
        tracing::warn!(target = %self.key.authority, failures, by, ejected_for = ?length, "upstream target ejected");
    }

    /// Records a successful exchange: the failure count and the ejection backoff start over.
    pub fn succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections_in_a_row.load(Ordering::Relaxed) != 0 && self.ejected_for().is_none() {
            self.ejections_in_a_row.store(0, Ordering::Relaxed);
        }
    }

    /// Sends `request` (its URI absolute) on a pooled or new connection. The request stays
    /// with the caller (borrowed, not moved down through every future that sends it): its
    /// body is taken as it goes out, and after [`SendError::NotSent`] or [`SendError::Busy`]
    /// it is whole, for the next target.
    pub async fn send(
        self: &Arc<Self>,
        request: &mut Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        self.metrics.requests.increment(1);
        // What only some requests wait on is boxed (HTTP/2 targets, new connections): every
        // request's future carries, and moves, the room for whatever it holds inline.
        if self.key.http2 {
            return Box::pin(self.send_http2(request)).await;
        }
        // The URI's authority is the `Host` (the request line takes the origin form).
        if let Some(host) = request.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            request.headers_mut().insert(HOST, host);
        }
        loop {
            let (connection, reused) = match self.checkout() {
                Some(connection) => (connection, true),
                None => {
                    if self.open_connections() >= self.settings.max_connections {
                        return Err(SendError::Busy);
                    }
                    match Box::pin(self.connect_http1()).await {
                        Ok(connection) => (connection, false),
                        Err(e) => return Err(SendError::NotSent(e)),
                    }
                }
            };
            let guard = Outstanding::new(self.clone());
            match http1_client::exchange(connection, request).await {
                Ok(response) => return Ok(response.map(|stream| UpstreamBody::new(Stream::Http1(stream), guard))),
                // A reused connection the target had closed while the request was on its way:
                // a request that did not leave, or an idempotent one without a body, goes
                // again on a fresh connection (RFC 9110, 9.2.2).
                Err(ExchangeFailure::Unanswered { resendable: true, written, .. })
                    if reused && (!written || is_idempotent(request.method())) => {}
                Err(ExchangeFailure::Unanswered { resendable: true, written: false, error }) => {
                    return Err(SendError::NotSent(error.to_string()));
                }
                Err(ExchangeFailure::Unanswered { error, .. } | ExchangeFailure::Failed(error)) => {
                    return Err(SendError::Failed(Box::new(error)));
                }
            }
        }
    }

    /// [`Endpoint::send`] over HTTP/2, whose client takes the request: it is given back to
    /// `caller` whenever it was not sent.
    async fn send_http2(
        self: &Arc<Self>,
        caller: &mut Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let existing = self.shared.lock().unwrap_or_else(|p| p.into_inner()).clone().filter(|s| !s.is_closed());
        let mut sender = match existing {
            Some(sender) => sender,
            None => match self.connect_http2().await {
                Ok(sender) => self.share_http2(sender),
                Err(e) => return Err(SendError::NotSent(e)),
            },
        };
        let mut request = std::mem::replace(caller, Request::new(RequestBody::empty()));
        // A target that closes the connection (GOAWAY, at its request limit or shutting
        // down) or refuses a stream has not processed the streams it names (RFC 9113, 6.8
        // and 8.7): such a request, whatever its method, is sent again, once, on a new
        // connection; one that never left (the connection had closed) as it is, one that
        // left from what is kept here to rebuild it (its head, and its body as far as it
        // was sent, up to MAX_RESENT_BODY, then what the client has still to send).
        let mut replay = Some(ReplayHead::keeping_body(&mut request));
        let mut retried = false;
        loop {
            let guard = Outstanding::new(self.clone());
            let mut e = match sender.try_send_request(request).await {
                Ok(response) => {
                    if retried {
                        self.share_http2(sender);
                    }
                    return Ok(response.map(|body| UpstreamBody::new(Stream::Http2(body), guard)));
                }
                Err(e) => e,
            };
            let again = match (e.take_message(), replay.take()) {
                (Some(back), _) if !retried => back,
                (Some(back), _) => {
                    *caller = back;
                    return Err(SendError::NotSent(e.into_error().to_string()));
                }
                (None, Some(head)) if !retried && unprocessed(e.error()) => match head.request() {
                    Some(again) => again,
                    None => return Err(SendError::Failed(e.into_error().into())),
                },
                (None, _) => return Err(SendError::Failed(e.into_error().into())),
            };
            retried = true;
            // The new connection is the resent request's alone until it is answered: shared
            // at once, other requests could take the streams a target that refused this one
            // has room for, and the resent request be refused again.
            sender = match self.connect_http2().await {
                Ok(sender) => sender,
                Err(connect) => {
                    *caller = again;
                    return Err(SendError::NotSent(connect));
                }
            };
            request = again;
        }
    }

    /// The newest idle connection that is still open and fresh.
    fn checkout(&self) -> Option<Box<Http1Connection>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut idle) = idle.pop_back() {
            if idle.since.elapsed() < self.settings.idle_timeout && idle.connection.is_reusable() {
                return Some(idle.connection);
            }
        }
        None
    }

    /// Puts a connection whose exchange finished back for the next request.
    fn checkin(&self, connection: Box<Http1Connection>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest idle connections are the first to expire. Checkouts take the newest, so
        // one the target closed sits at the front: each checkin looks at the oldest, and so
        // the closed ones go (and stop counting as open) while traffic flows.
        let now = CoarseInstant::now();
        let timeout = self.settings.idle_timeout;
        while idle.front().is_some_and(|c| now.saturating_duration_since(c.since) >= timeout) {
            idle.pop_front();
        }
        if idle.front_mut().is_some_and(|c| !c.connection.is_reusable()) {
            idle.pop_front();
        }
        idle.push_back(IdleConnection { connection, since: now });
    }

    async fn open_stream(&self) -> Result<(UpstreamIo, bool), String> {
        let address = (self.key.authority.host(), self.key.authority.port_u16().unwrap_or(default_port(&self.key)));
        let connecting = async {
            let tcp = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok((UpstreamIo::Plain(tcp), self.key.http2)),
                Some((connector, name)) => {
                    let tls = connector.connect(name.clone(), tcp).await.map_err(|e| format!("TLS: {e}"))?;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok((UpstreamIo::Tls(Box::new(tls)), h2))
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(result) => result,
            Err(_) => Err(format!("no connection within {} s", CONNECT_TIMEOUT.as_secs())),
        }
    }

    async fn connect_http1(&self) -> Result<Box<Http1Connection>, String> {
        let (io, _) = self.open_stream().await?;
        Ok(Http1Connection::new(io, self.opened()))
    }

    async fn connect_http2(&self) -> Result<http2::SendRequest<RequestBody>, String> {
        let (io, h2) = self.open_stream().await?;
        if !h2 {
            return Err("the target did not agree to HTTP/2 (ALPN)".into());
        }
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        let open = self.opened();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
            drop(open);
        });
        Ok(sender)
    }

    /// Makes `sender` the connection the target's HTTP/2 requests share.
    fn share_http2(&self, sender: http2::SendRequest<RequestBody>) -> http2::SendRequest<RequestBody> {
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        sender
    }

    /// Counts a new connection; the returned guard uncounts it when the connection ends.
    fn opened(&self) -> OpenConnection {
        self.metrics.opened.increment(1);
        OpenConnection::count(self.open.clone(), self.metrics.open.clone())
    }
}

fn default_port(key: &EndpointKey) -> u16 {
    if key.scheme == Scheme::HTTPS { 443 } else { 80 }
}

/// A request counted as outstanding on its endpoint until its response body is done.
struct Outstanding(Arc<Endpoint>);

impl Outstanding {
    fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(endpoint)
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream response body. When it has been read to its end, its HTTP/1.1 connection
/// goes back to the endpoint's idle connections; dropped earlier, the connection closes.
/// With an idle timeout, a body that sends nothing for that long mid-body fails with
/// [`BodyStalled`] (the client's response is cut off, the connection closed).
pub struct UpstreamBody {
    inner: Stream,
    outstanding: Option<Outstanding>,
    /// In milliseconds, 0 for none (a route's timeout is at most 5 minutes; kept small because
    /// every response carries this body).
    idle_timeout_ms: u32,
    /// Runs while the body waits for its next frame (made only when it has to wait).
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Where a response body comes from.
enum Stream {
    /// Read from its HTTP/1.1 connection in the polling task.
    Http1(ResponseStream),
    /// A stream of a shared HTTP/2 connection.
    Http2(Incoming),
}

/// The error of an upstream body that sent nothing for longer than its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's body sent nothing for {} ms", .0.as_millis())]
pub struct BodyStalled(pub Duration);

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    fn new(inner: Stream, outstanding: Outstanding) -> Self {
        let mut body = UpstreamBody { inner, outstanding: Some(outstanding), idle_timeout_ms: 0, waiting: None };
        if body.is_end_stream() {
            body.release();
        }
        body
    }

    /// This body, failing with [`BodyStalled`] when the upstream sends nothing for `idle`.
    pub fn with_idle_timeout(self, idle: Duration) -> Self {
        let idle_timeout_ms = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX).max(1);
        UpstreamBody { idle_timeout_ms, ..self }
    }

    /// The upstream's connection after it answered `101 Switching Protocols`.
    pub fn upgraded(&mut self) -> Option<UpgradedUpstream> {
        match &mut self.inner {
            Stream::Http1(stream) => stream.upgraded(),
            Stream::Http2(_) => None,
        }
    }

    /// The exchange is over: the request stops counting as outstanding, and a connection
    /// that can carry another exchange goes back to the endpoint.
    fn release(&mut self) {
        if let Some(outstanding) = self.outstanding.take() {
            if let Stream::Http1(stream) = &mut self.inner
                && let Some(connection) = stream.reusable_connection()
            {
                outstanding.0.checkin(connection);
            }
            drop(outstanding);
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            Stream::Http1(stream) => Pin::new(stream).poll_frame(cx).map_err(Into::into),
            Stream::Http2(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = this.poll_inner(cx);
        match &polled {
            Poll::Pending => {
                if this.idle_timeout_ms == 0 {
                    return Poll::Pending;
                }
                let idle = Duration::from_millis(this.idle_timeout_ms.into());
                let waiting = this.waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if waiting.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if let Stream::Http1(stream) = &mut this.inner {
                    stream.close();
                }
                return Poll::Ready(Some(Err(Box::new(BodyStalled(idle)))));
            }
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.is_end_stream() => this.release(),
            Poll::Ready(Some(_)) => {}
        }
        this.waiting = None;
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Stream::Http1(stream) => stream.is_end_stream(),
            Stream::Http2(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Stream::Http1(stream) => stream.size_hint(),
            Stream::Http2(incoming) => incoming.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A target that answers each request after the delay its path names (`/wait/MS`), and
    /// closes the connection after answering `/close/MS`; with the count of connections it
    /// accepted.
    async fn target() -> (Authority, Arc<AtomicU32>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicU32::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&seen).into_owned();
                        seen.clear();
                        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                        let ms: u64 = path.rsplit('/').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                        if path.starts_with("/close/") {
                            return;
                        }
                    }
                });
            }
        });
        (authority, accepted)
    }

    /// An endpoint for `authority` over plain HTTP/1.1.
    fn plain_endpoint(authority: &Authority, settings: EndpointSettings) -> Arc<Endpoint> {
        let key = EndpointKey {
            scheme: Scheme::HTTP,
            authority: authority.clone(),
            server_name: None,
            trust: None,
            http2: false,
        };
        Arc::new(Endpoint::new(key, settings, None))
    }

    async fn get(endpoint: &Arc<Endpoint>, authority: &Authority, path: &str) {
        let mut request = Request::new(RequestBody::empty());
        *request.uri_mut() = format!("http://{authority}{path}").parse().unwrap();
        let response = endpoint.send(&mut request).await.unwrap_or_else(|e| panic!("{path}: {e:?}"));
        http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
    }

    #[tokio::test]
    async fn an_idle_connection_the_target_closed_goes_while_traffic_flows() {
        let (authority, _) = target().await;
        let endpoint = plain_endpoint(&authority, EndpointSettings::default());
        // Two connections at once. The one the target closes after answering is checked in
        // first (the oldest); by the time the other is checked in, 70 ms later, the runtime
        // has seen the close, and that checkin lets the closed one go.
        tokio::join!(get(&endpoint, &authority, "/close/10"), get(&endpoint, &authority, "/wait/80"));
        assert_eq!(endpoint.open_connections(), 1, "the closed idle connection still counts as open");
    }

    #[tokio::test]
    async fn a_connection_idle_past_its_timeout_is_not_taken_again() {
        let (authority, accepted) = target().await;
        let settings = EndpointSettings { idle_timeout: Duration::from_millis(200), ..EndpointSettings::default() };
        let endpoint = plain_endpoint(&authority, settings);
        get(&endpoint, &authority, "/wait/0").await;
        // Idle for less than the timeout (its stamp is on the coarse clock, a few ms behind at
        // most): taken again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        get(&endpoint, &authority, "/wait/0").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "the fresh idle connection was not reused");
        // Idle for longer: left, and a new connection opened.
        tokio::time::sleep(Duration::from_millis(300)).await;
        get(&endpoint, &authority, "/wait/0").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a connection idle past its timeout was reused");
        assert_eq!(endpoint.open_connections(), 1, "the expired connection still counts as open");
    }
}
