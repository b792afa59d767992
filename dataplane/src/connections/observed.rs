//! What a WebSocket connection's events leave for operators after its handshake (which is an
//! HTTP request, logged and traced as one): an access-log line for each message the client
//! sends and for the `$disconnect` event, and on a stage that traces, a trace for each.
//!
//! A line has the fields of a request's line, read for an event: the event type as the method
//! (`MESSAGE`, `DISCONNECT`), the connection as the path (`/@connections/{id}`, the callback
//! API's address for it), the route key as the route, and the status of the event: the
//! integration's (2xx), or the gateway's when it answered the client itself (404 no route,
//! 429 too many messages, 502 the integration failed or could not be reached). The stage's
//! `access_log_format` applies, as it does to its requests.
//!
//! An event is the root of its own trace (a message carries no `traceparent`), sampled by the
//! stage's `tracing.sample_ratio`: a server span named after the event and its route key,
//! and a client span for the integration call, which carries the trace on in its
//! `traceparent`.

use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, Method, Version};

use super::Connections;
use super::envelope::ConnectionContext;
use crate::observe::access_log::LogEntry;
use crate::observe::completion::RouteObserver;
use crate::observe::trace::{FinishedRequest, RequestTrace};

/// A client's message, as a line's method.
pub static MESSAGE: LazyLock<Method> = LazyLock::new(|| Method::from_bytes(b"MESSAGE").unwrap_or(Method::POST));
/// The connection's end, delivered to `$disconnect`, as a line's method.
pub static DISCONNECT: LazyLock<Method> = LazyLock::new(|| Method::from_bytes(b"DISCONNECT").unwrap_or(Method::DELETE));

/// One event of a connection, as its access-log line tells it.
pub struct EventLine<'a> {
    pub event: &'a Method,
    pub route: &'a str,
    pub request_id: &'a str,
    pub status: u16,
    /// Bytes sent back to the client for it (a two-way route's answer, a gateway's word).
    pub bytes: u64,
    pub started: Instant,
    /// The time its integration took, when it was called.
    pub integration: Option<Duration>,
    /// Why the gateway answered for the integration.
    pub reason: Option<&'a str>,
}

impl Connections {
    /// The trace of an event that begins at `started`, when the connection's stage (its
    /// handshake route's `observer`) traces and samples it and the node exports traces.
    pub(super) fn trace_event(&self, observer: &RouteObserver, started: Instant) -> Option<RequestTrace> {
        let sampling = observer.sampling.as_ref()?;
        self.spans.get()?;
        let trace = RequestTrace::begin(sampling, &HeaderMap::new(), false, started);
        trace.sampled.then_some(trace)
    }

    /// Writes `line` for a connection whose handshake route `observer` observed to the node's
    /// access log, and ends the event's `trace`.
    pub(super) fn observe_event(
        &self,
        observer: &RouteObserver,
        context: &ConnectionContext,
        line: EventLine<'_>,
        trace: Option<&RequestTrace>,
    ) {
        let path = format!("/@connections/{}", context.id);
        if let (Some(trace), Some(sink)) = (trace, self.spans.get()) {
            // Named like a route key ("MESSAGE sendmessage"), so the span's name says both.
            let route = format!("{} {}", line.event, line.route);
            sink.submit(trace.finish(FinishedRequest {
                method: line.event,
                path: &path,
                version: Version::HTTP_11,
                client: context.source,
                status: line.status,
                route: &route,
                api: &observer.api,
                stage: &observer.stage,
                deployment: &observer.deployment,
                request_id: line.request_id,
            }));
        }
        let entry = LogEntry {
            time: SystemTime::now(),
            request_id: line.request_id,
            client: context.source,
            method: line.event,
            path: &path,
            protocol: Version::HTTP_11,
            route: line.route,
            api: &observer.api,
            stage: &observer.stage,
            deployment: &observer.deployment,
            status: line.status,
            bytes: line.bytes,
            latency: line.started.elapsed(),
            integration_latency: line.integration,
            reason: line.reason,
            client_cert: None,
            trace_id: None,
        };
        self.log.record(&entry, observer.log_template.as_deref());
    }
}
