//! The end of a request: the response body that writes the access-log line and the
//! request metrics when it is finished or dropped.
//!
//! Logging at the end of the body (rather than when headers are ready) makes `bytes` and
//! the total latency true for streamed responses, and a client that disconnects mid-body
//! is still logged.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use metrics::Gauge;

use super::access_log::{AccessLog, LogEntry, LogTemplate};
use super::metrics::RouteMetrics;
use super::spans::SpanSink;
use super::trace::{FinishedRequest, RequestTrace, Sampling};
use crate::body::{BoxError, ResponseBody};

/// Names and handles of what served a request: a route of a stage, or nothing.
#[derive(Debug)]
pub struct RouteObserver {
    pub api: Arc<str>,
    pub stage: Arc<str>,
    pub route: Arc<str>,
    /// The deployment serving the route ("" for a standalone configuration file), so a
    /// canary's requests can be told from the stage's own.
    pub deployment: Arc<str>,
    pub metrics: RouteMetrics,
    pub log_template: Option<Arc<LogTemplate>>,
    /// How the stage samples its requests for tracing, when it traces them.
    pub sampling: Option<Sampling>,
}

impl RouteObserver {
    pub fn new(api: &str, stage: &str, route: &str, deployment: &str, log_template: Option<Arc<LogTemplate>>) -> Self {
        RouteObserver {
            api: api.into(),
            stage: stage.into(),
            route: route.into(),
            deployment: deployment.into(),
            metrics: RouteMetrics::new(api, stage, route, deployment),
            log_template,
            sampling: None,
        }
    }

    /// The same, tracing its requests by `sampling`.
    pub fn traced(self, sampling: Option<Sampling>) -> Self {
        RouteObserver { sampling, ..self }
    }
}

/// Everything needed to log and count a request once its response is done.
#[derive(Debug)]
pub struct Completion {
    pub request_id: HeaderValue,
    pub client: IpAddr,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub started: Instant,
    pub status: u16,
    pub integration_latency: Option<Duration>,
    /// The precise reason of a refusal, for the log only.
    pub reason: Option<std::borrow::Cow<'static, str>>,
    pub observer: Arc<RouteObserver>,
    /// The client's certificate (mutual TLS), for the log.
    pub client_cert: Option<Arc<crate::certificates::ClientCertificate>>,
    /// The request's trace, and where its spans go, when its stage traces requests.
    pub trace: Option<(RequestTrace, Option<Arc<SpanSink>>)>,
    pub log: AccessLog,
    pub in_flight: Gauge,
}

impl Completion {
    fn finish(self, bytes: u64) {
        let latency = self.started.elapsed();
        self.observer.metrics.record(self.status, latency, self.integration_latency);
        self.in_flight.decrement(1.0);
        let trace_id = self.trace.as_ref().map(|(trace, _)| trace.trace_id);
        if let Some((trace, Some(sink))) = &self.trace
            && trace.sampled
        {
            let request_id = self.request_id.to_str().unwrap_or("-");
            sink.submit(trace.finish(FinishedRequest {
                method: &self.method,
                path: self.uri.path(),
                version: self.version,
                client: self.client,
                status: self.status,
                route: &self.observer.route,
                api: &self.observer.api,
                stage: &self.observer.stage,
                deployment: &self.observer.deployment,
                request_id,
            }));
        }
        self.log.record(
            &LogEntry {
                time: SystemTime::now(),
                request_id: self.request_id.to_str().unwrap_or("-"),
                client: self.client,
                method: &self.method,
                path: self.uri.path(),
                protocol: self.version,
                route: &self.observer.route,
                api: &self.observer.api,
                stage: &self.observer.stage,
                deployment: &self.observer.deployment,
                status: self.status,
                bytes,
                latency,
                integration_latency: self.integration_latency,
                reason: self.reason.as_deref(),
                client_cert: self.client_cert.as_ref().map(|c| c.subject.as_str()),
                trace_id,
            },
            self.observer.log_template.as_deref(),
        );
    }
}

/// A response body that reports its request when it ends or is dropped.
///
/// The completion is boxed: a response is moved half a dozen times on its way to the
/// socket, and with the completion inline each move copied over half a KiB.
#[derive(Debug)]
pub struct ObservedBody {
    inner: ResponseBody,
    bytes: u64,
    completion: Option<Box<Completion>>,
}

impl ObservedBody {
    pub fn new(inner: ResponseBody, completion: Completion) -> Self {
        ObservedBody { inner, bytes: 0, completion: Some(Box::new(completion)) }
    }

    /// A body that records nothing when it completes (health probes).
    pub fn unobserved(inner: ResponseBody) -> Self {
        ObservedBody { inner, bytes: 0, completion: None }
    }

    fn finish(&mut self) {
        if let Some(c) = self.completion.take() {
            c.finish(self.bytes);
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
