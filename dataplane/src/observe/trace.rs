//! Distributed tracing of requests: the W3C trace context a request comes with and passes
//! on, the sampling decision of its stage, and the spans a sampled request records.
//!
//! A stage with `tracing` compiles a [`Sampling`]. A request routed to it begins a
//! [`RequestTrace`]: the trace id comes from the client's `traceparent` (W3C Trace Context)
//! or is new, and whether the request is recorded follows the parent's `sampled` flag or,
//! without a parent, the stage's ratio applied to the trace id, so every node on a path
//! decides alike. An unsampled request still passes its trace on (its flag off) and logs
//! its trace id; it records nothing. A sampled one collects a span for each phase that did
//! work (an authorizer callout, a cache lookup, the integration call, a mapping) and, when
//! its response has ended, its own server span; they go to the node's
//! [`SpanSink`](super::spans::SpanSink) without waiting. A stage without `tracing` pays one
//! `None` check: its requests' `traceparent` headers pass through untouched.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::digest::hex_into;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest `tracestate` passed on (W3C: at least 512 characters must be kept).
const MAX_TRACESTATE: usize = 512;

/// A trace's 16-byte id, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's 8-byte id, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    fn random() -> TraceId {
        let (high, low) = (crate::fast_random::next_u64(), crate::fast_random::next_u64() | 1);
        let mut id = [0; 16];
        id[..8].copy_from_slice(&high.to_be_bytes());
        id[8..].copy_from_slice(&low.to_be_bytes());
        TraceId(id)
    }

    /// The 64 bits a ratio sampler compares (the id's last 8 bytes, which W3C level 2 asks
    /// to be random).
    fn sampling_value(self) -> u64 {
        let mut low = [0; 8];
        low.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(low)
    }
}

impl SpanId {
    pub fn random() -> SpanId {
        SpanId((crate::fast_random::next_u64() | 1).to_be_bytes())
    }
}

impl TraceId {
    /// The 32 hex digits of the id (how `traceparent` and the access log write it).
    pub fn hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        hex_into(&self.0, &mut out);
        out
    }
}

impl SpanId {
    pub fn hex(&self) -> [u8; 16] {
        let mut out = [0; 16];
        hex_into(&self.0, &mut out);
        out
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).unwrap_or_default())
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).unwrap_or_default())
    }
}

/// A `traceparent` header: the caller's trace, its span, and whether it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` value (W3C Trace Context); `None` for anything malformed, in
    /// which case the request starts a trace of its own.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        // version "-" trace-id "-" parent-id "-" flags, all lower-case hex.
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let version = hex_bytes::<1>(&value[..2])?[0];
        // Version ff is invalid; version 00 has nothing after the flags; a later version
        // may add fields after a dash, which are ignored.
        let tail_ok = match version {
            0xff => false,
            0 => value.len() == 55,
            _ => value.len() == 55 || value[55] == b'-',
        };
        let trace_id = TraceId(hex_bytes::<16>(&value[3..35])?);
        let parent_id = SpanId(hex_bytes::<8>(&value[36..52])?);
        let flags = hex_bytes::<1>(&value[53..55])?[0];
        let valid = tail_ok && trace_id.0 != [0; 16] && parent_id.0 != [0; 8];
        valid.then_some(TraceParent { trace_id, parent_id, sampled: flags & 1 == 1 })
    }

    /// The header value for a call made from span `span_id` of `trace_id`.
    pub fn header_value(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        text[3..35].copy_from_slice(&trace_id.hex());
        text[36..52].copy_from_slice(&span_id.hex());
        if sampled {
            text[54] = b'1';
        }
        // Hex digits and dashes only: always a valid header value.
        HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static(""))
    }
}

/// `N` bytes from `2 × N` lower-case hex digits (Trace Context allows no upper case).
fn hex_bytes<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    crate::digest::from_hex(text)
}

/// A stage's sampling policy: parent-based, else a share of new traces by trace id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    ratio: f64,
}

impl Sampling {
    /// `ratio` is the share of new traces recorded, 0.0 to 1.0.
    pub fn new(ratio: f64) -> Sampling {
        Sampling { ratio: ratio.clamp(0.0, 1.0) }
    }

    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Whether a trace that has no parent here is recorded.
    fn samples(&self, trace_id: TraceId) -> bool {
        // `as` saturates: a ratio of 1.0 gives u64::MAX, and the `>=` keeps even that value.
        self.ratio >= 1.0 || trace_id.sampling_value() < (self.ratio * u64::MAX as f64) as u64
    }
}

/// What a span is to its trace, as OTLP names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The request as the gateway served it.
    Server,
    /// A call the gateway made (the integration, an authorizer).
    Client,
    /// Work inside the gateway (a cache lookup, a mapping).
    Internal,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    Text(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for AttributeValue {
    fn from(text: &'static str) -> Self {
        AttributeValue::Text(Cow::Borrowed(text))
    }
}

impl From<String> for AttributeValue {
    fn from(text: String) -> Self {
        AttributeValue::Text(Cow::Owned(text))
    }
}

impl From<i64> for AttributeValue {
    fn from(n: i64) -> Self {
        AttributeValue::Int(n)
    }
}

impl From<bool> for AttributeValue {
    fn from(b: bool) -> Self {
        AttributeValue::Bool(b)
    }
}

pub type Attributes = Vec<(&'static str, AttributeValue)>;

/// One finished span, ready for export.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_id: Option<SpanId>,
    pub trace_state: Option<String>,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    /// Nanoseconds since the Unix epoch.
    pub start: u64,
    pub end: u64,
    pub attributes: Attributes,
    /// Set when the span failed, with what went wrong.
    pub error: Option<String>,
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// When a child span began, for a sampled request.
#[derive(Debug, Clone, Copy)]
pub struct SpanStart {
    pub id: SpanId,
    at: u64,
}

/// What the request's own span describes, taken from its head when the trace begins.
#[derive(Debug)]
struct ServerSide {
    scheme: &'static str,
    host: Option<String>,
    user_agent: Option<String>,
}

/// One request's place in a trace, from routing to the end of its response. Cheap to
/// clone: what a recorded request collects is shared.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    pub trace_id: TraceId,
    /// The request's own (server) span.
    pub span_id: SpanId,
    /// The caller's span, when the request came with a `traceparent`.
    pub parent_id: Option<SpanId>,
    pub sampled: bool,
    trace_state: Option<HeaderValue>,
    /// What a recorded (sampled) request collects; an unsampled one allocates nothing.
    recording: Option<Arc<Recording>>,
}

/// The spans of a recorded request so far, and what its own span will say.
#[derive(Debug)]
struct Recording {
    start: u64,
    server: ServerSide,
    children: Mutex<Vec<SpanRecord>>,
}

impl RequestTrace {
    /// Begins the trace of a request that arrived at `started` with `headers`.
    pub fn begin(sampling: &Sampling, headers: &HeaderMap, tls: bool, started: Instant) -> RequestTrace {
        let parent = headers.get(&TRACEPARENT).and_then(|v| TraceParent::parse(v.as_bytes()));
        let (trace_id, parent_id, sampled) = match parent {
            Some(p) => (p.trace_id, Some(p.parent_id), p.sampled),
            None => {
                let id = TraceId::random();
                (id, None, sampling.samples(id))
            }
        };
        // A trace state belongs to the parent it came with; without one it is dropped.
        let trace_state =
            parent.and(headers.get(&TRACESTATE)).filter(|v| v.len() <= MAX_TRACESTATE && !v.is_empty()).cloned();
        let text = |name: http::header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let recording = sampled.then(|| {
            Arc::new(Recording {
                start: now_nanos().saturating_sub(started.elapsed().as_nanos() as u64),
                server: ServerSide {
                    scheme: if tls { "https" } else { "http" },
                    host: text(http::header::HOST),
                    user_agent: text(http::header::USER_AGENT),
                },
                children: Mutex::new(Vec::new()),
            })
        });
        RequestTrace { trace_id, span_id: SpanId::random(), parent_id, sampled, trace_state, recording }
    }

    /// The `traceparent` (and `tracestate`) of a call made from span `from` of this trace,
    /// replacing whatever the client sent.
    pub fn propagate(&self, headers: &mut HeaderMap, from: SpanId) {
        headers.insert(&TRACEPARENT, TraceParent::header_value(self.trace_id, from, self.sampled));
        match &self.trace_state {
            Some(state) => headers.insert(&TRACESTATE, state.clone()),
            None => headers.remove(&TRACESTATE),
        };
    }

    /// The start of a child span, when the request is recorded.
    pub fn start_span(&self) -> Option<SpanStart> {
        self.sampled.then(|| SpanStart { id: SpanId::random(), at: now_nanos() })
    }

    /// Records a child span of the request's span that began at `start` and ends now.
    pub fn end_span(
        &self,
        start: SpanStart,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: Attributes,
        error: Option<String>,
    ) {
        let span = SpanRecord {
            trace_id: self.trace_id,
            span_id: start.id,
            parent_id: Some(self.span_id),
            trace_state: None,
            name: name.into(),
            kind,
            start: start.at,
            end: now_nanos(),
            attributes,
            error,
        };
        if let Some(recording) = &self.recording {
            recording.children.lock().unwrap_or_else(|p| p.into_inner()).push(span);
        }
    }

    /// Ends the request's span: every span it recorded, its own last; nothing when it was
    /// not sampled.
    pub fn finish(&self, request: FinishedRequest<'_>) -> Vec<SpanRecord> {
        let Some(recording) = &self.recording else {
            return Vec::new();
        };
        let mut spans = std::mem::take(&mut *recording.children.lock().unwrap_or_else(|p| p.into_inner()));
        let server = &recording.server;
        // A route key is "METHOD /path"; the unrouted have none, and are named by method.
        let route = request.route.split_once(' ').map(|(_, path)| path).filter(|p| !p.is_empty());
        let name: Cow<'static, str> = match route {
            Some(_) => request.route.to_string().into(),
            None => request.method.to_string().into(),
        };
        let mut attributes: Attributes = vec![
            ("http.request.method", request.method.to_string().into()),
            ("url.path", request.path.to_string().into()),
            ("url.scheme", server.scheme.into()),
            ("network.protocol.version", protocol_version(request.version).into()),
            ("client.address", request.client.to_string().into()),
            ("http.response.status_code", i64::from(request.status).into()),
            ("meridian.api", request.api.to_string().into()),
            ("meridian.stage", request.stage.to_string().into()),
            ("meridian.request_id", request.request_id.to_string().into()),
        ];
        if let Some(route) = route {
            attributes.push(("http.route", route.to_string().into()));
        }
        if !request.deployment.is_empty() {
            attributes.push(("meridian.deployment", request.deployment.to_string().into()));
        }
        if let Some(host) = &server.host {
            let name = host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(&**host, |h| h.0);
            attributes.push(("server.address", name.to_string().into()));
        }
        if let Some(agent) = &server.user_agent {
            attributes.push(("user_agent.original", agent.clone().into()));
        }
        // OpenTelemetry's HTTP conventions: a server span fails on 5xx only.
        let error = (request.status >= 500).then(|| request.status.to_string());
        if let Some(code) = &error {
            attributes.push(("error.type", code.clone().into()));
        }
        spans.push(SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_id: self.parent_id,
            trace_state: self.trace_state.as_ref().and_then(|s| s.to_str().ok()).map(str::to_owned),
            name,
            kind: SpanKind::Server,
            start: recording.start,
            end: now_nanos(),
            attributes,
            error,
        });
        spans
    }
}

/// What the request's own span says of it once its response has ended.
#[derive(Debug)]
pub struct FinishedRequest<'a> {
    pub method: &'a http::Method,
    pub path: &'a str,
    pub version: http::Version,
    pub client: IpAddr,
    pub status: u16,
    pub route: &'a str,
    pub api: &'a str,
    pub stage: &'a str,
    pub deployment: &'a str,
    pub request_id: &'a str,
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_valid_traceparent() {
        let parent = TraceParent::parse(VALID.as_bytes()).expect("valid");
        assert_eq!(parent.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(parent.sampled);
        let unsampled = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
        assert!(!unsampled.sampled);
        // A later version may carry more fields after a dash.
        assert!(TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        assert_eq!(
            TraceParent::header_value(parent.trace_id, parent.parent_id, true).to_str().ok(),
            Some(VALID),
            "a parsed value is written back as it was"
        );
    }

    #[test]
    fn refuses_malformed_traceparents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking_and_valid_ids_round_trip(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            trace in proptest::prelude::any::<[u8; 16]>(),
            span in proptest::prelude::any::<[u8; 8]>(),
            sampled in proptest::prelude::any::<bool>(),
        ) {
            let _ = TraceParent::parse(&noise);
            let value = TraceParent::header_value(TraceId(trace), SpanId(span), sampled);
            let parsed = TraceParent::parse(value.as_bytes());
            let valid = trace != [0; 16] && span != [0; 8];
            proptest::prop_assert_eq!(
                parsed,
                valid.then_some(TraceParent { trace_id: TraceId(trace), parent_id: SpanId(span), sampled })
            );
        }
    }

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| ((*n).clone(), HeaderValue::from_str(v).expect("value"))).collect()
    }

    #[test]
    fn a_parent_decides_sampling_and_keeps_its_trace() {
        let never = Sampling::new(0.0);
        let incoming = headers(&[(&TRACEPARENT, VALID), (&TRACESTATE, "vendor=abc")]);
        let trace = RequestTrace::begin(&never, &incoming, false, Instant::now());
        assert!(trace.sampled, "the parent's flag wins over the stage's ratio");
        assert_eq!(trace.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_id.map(|p| p.to_string()).as_deref(), Some("00f067aa0ba902b7"));
        let mut upstream = incoming.clone();
        let span = trace.start_span().expect("sampled");
        trace.propagate(&mut upstream, span.id);
        let sent = upstream.get(&TRACEPARENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(sent, format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", span.id));
        assert_eq!(upstream.get(&TRACESTATE).map(|v| v.as_bytes()), Some(&b"vendor=abc"[..]));

        let always = Sampling::new(1.0);
        let unsampled = headers(&[(&TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")]);
        let trace = RequestTrace::begin(&always, &unsampled, false, Instant::now());
        assert!(!trace.sampled, "a parent that does not record is followed");
        assert!(trace.start_span().is_none());
    }

    #[test]
    fn a_new_trace_is_sampled_by_ratio_and_drops_a_stray_tracestate() {
        let half = Sampling::new(0.5);
        let stray = headers(&[(&TRACEPARENT, "garbage"), (&TRACESTATE, "vendor=abc")]);
        let traces: Vec<RequestTrace> =
            (0..4000).map(|_| RequestTrace::begin(&half, &stray, false, Instant::now())).collect();
        let sampled = traces.iter().filter(|t| t.sampled).count();
        assert!((1700..=2300).contains(&sampled), "{sampled} of 4000 at 0.5");
        assert!(traces.iter().all(|t| t.parent_id.is_none()));
        let mut upstream = stray.clone();
        traces[0].propagate(&mut upstream, SpanId::random());
        assert!(upstream.get(&TRACESTATE).is_none(), "a trace state without its parent is not passed on");
        assert!(TraceParent::parse(upstream[&TRACEPARENT].as_bytes()).is_some());
        // The same trace id gets the same decision on every node.
        let id = traces[0].trace_id;
        assert!((0..100).all(|_| half.samples(id) == traces[0].sampled));
        assert!(Sampling::new(1.0).samples(TraceId([0xff; 16])));
        assert!(!Sampling::new(0.0).samples(TraceId([0; 16])));
    }

    #[test]
    fn a_sampled_request_ends_with_its_children_and_its_own_span() {
        let incoming = headers(&[(&http::header::HOST, "api.example.com:8443"), (&http::header::USER_AGENT, "curl/8")]);
        let trace = RequestTrace::begin(&Sampling::new(1.0), &incoming, true, Instant::now());
        let child = trace.start_span().expect("sampled");
        trace.end_span(child, "cache lookup", SpanKind::Internal, vec![("meridian.cache.hit", false.into())], None);
        let method = http::Method::GET;
        let spans = trace.finish(FinishedRequest {
            method: &method,
            path: "/prod/items/7",
            version: http::Version::HTTP_11,
            client: "127.0.0.1".parse().expect("ip"),
            status: 502,
            route: "GET /items/{id}",
            api: "shop",
            stage: "prod",
            deployment: "",
            request_id: "r1",
        });
        assert_eq!(spans.len(), 2);
        let (cache, server) = (&spans[0], &spans[1]);
        assert_eq!(cache.parent_id, Some(server.span_id));
        assert_eq!(server.parent_id, None);
        assert_eq!(server.name, "GET /items/{id}");
        assert_eq!(server.kind, SpanKind::Server);
        assert_eq!(server.error.as_deref(), Some("502"));
        let attribute = |name: &str| server.attributes.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        assert_eq!(attribute("http.route"), Some("/items/{id}".into()));
        assert_eq!(attribute("server.address"), Some("api.example.com".into()));
        assert_eq!(attribute("url.scheme"), Some("https".into()));
        assert_eq!(attribute("http.response.status_code"), Some(502.into()));
        assert!(server.start <= cache.start && cache.end <= server.end);
        assert!(trace.finish(FinishedRequest { status: 200, ..dummy(&method) }).len() == 1, "children are sent once");
    }

    fn dummy(method: &http::Method) -> FinishedRequest<'_> {
        FinishedRequest {
            method,
            path: "/",
            version: http::Version::HTTP_2,
            client: "::1".parse().expect("ip"),
            status: 200,
            route: "",
            api: "",
            stage: "",
            deployment: "",
            request_id: "",
        }
    }
}
