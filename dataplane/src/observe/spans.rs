//! Where a request's finished spans go: a bounded queue the request path hands them to, and
//! the settings of the exporter that drains it.
//!
//! The request path never waits on export: [`SpanSink::submit`] counts the spans against
//! the queue's bound and drops them (counted in `meridian_trace_spans_total{outcome="dropped"}`)
//! when the exporter falls behind. The exporter (OTLP/gRPC or OTLP/HTTP, in the node crate)
//! takes them from the other end, the [`SpanQueue`], in batches of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::Counter;
use tokio::sync::{mpsc, oneshot};

use super::trace::SpanRecord;

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    HttpProtobuf,
}

/// The node's span export, as its configuration file sets it (`tracing`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// `http(s)://host:port` (gRPC), or an `http(s)` URL whose `/v1/traces` is posted to.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// The most spans waiting for export; more are dropped.
    pub queue: usize,
    /// The CA file an `https` collector's certificate must chain to (system roots without).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Who exports: the node's name and region, known once it is a cluster member.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node: String,
    pub region: String,
}

/// What the exporter is handed.
#[derive(Debug)]
pub enum Queued {
    Spans(Vec<SpanRecord>),
    /// Export everything handed over before this, then answer (the node is stopping).
    Flush(oneshot::Sender<()>),
}

/// Where the request path leaves finished spans.
#[derive(Debug)]
pub struct SpanSink {
    queue: mpsc::UnboundedSender<Queued>,
    /// Spans sent to the queue and not yet taken by the exporter.
    waiting: Arc<AtomicUsize>,
    limit: usize,
    identity: Arc<OnceLock<NodeIdentity>>,
    dropped: Counter,
}

/// The exporter's end of a [`SpanSink`].
#[derive(Debug)]
pub struct SpanQueue {
    spans: mpsc::UnboundedReceiver<Queued>,
    waiting: Arc<AtomicUsize>,
    identity: Arc<OnceLock<NodeIdentity>>,
}

impl SpanSink {
    /// A sink holding at most `limit` spans that its [`SpanQueue`] has not taken yet.
    pub fn new(limit: usize) -> (Arc<SpanSink>, SpanQueue) {
        let (queue, spans) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let identity = Arc::new(OnceLock::new());
        let sink = SpanSink {
            queue,
            waiting: waiting.clone(),
            limit,
            identity: identity.clone(),
            dropped: metrics::counter!("meridian_trace_spans_total", "outcome" => "dropped"),
        };
        (Arc::new(sink), SpanQueue { spans, waiting, identity })
    }

    /// Names the node in every later batch.
    pub fn identify(&self, node: &str, region: &str) {
        let _ = self.identity.set(NodeIdentity { node: node.to_string(), region: region.to_string() });
    }

    /// Hands a request's spans to the exporter, or drops them (counted) when the queue is full.
    pub fn submit(&self, spans: Vec<SpanRecord>) {
        let count = spans.len();
        if count == 0 {
            return;
        }
        let admitted = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n + count <= self.limit).then_some(n + count))
            .is_ok();
        if !admitted || self.queue.send(Queued::Spans(spans)).is_err() {
            if admitted {
                self.waiting.fetch_sub(count, Ordering::AcqRel);
            }
            self.dropped.increment(count as u64);
        }
    }

    /// Exports what is queued, waiting at most `limit` (a stopping node's last spans).
    pub async fn flush(&self, limit: Duration) {
        let (done, exported) = oneshot::channel();
        if self.queue.send(Queued::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(limit, exported).await;
        }
    }
}

impl SpanQueue {
    /// What the request path handed over next (its spans no longer count against the
    /// bound); `None` once every sink is gone.
    pub async fn next(&mut self) -> Option<Queued> {
        let queued = self.spans.recv().await;
        if let Some(Queued::Spans(spans)) = &queued {
            self.waiting.fetch_sub(spans.len(), Ordering::AcqRel);
        }
        queued
    }

    /// The node's name and region, once [`SpanSink::identify`] named them.
    pub fn identity(&self) -> Option<&NodeIdentity> {
        self.identity.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::trace::{SpanId, SpanKind, TraceId};

    fn record() -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([9; 8]),
            parent_id: None,
            trace_state: None,
            name: "GET /items/{id}".into(),
            kind: SpanKind::Server,
            start: 10,
            end: 25,
            attributes: Vec::new(),
            error: None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let (sink, mut queue) = SpanSink::new(3);
        sink.submit(vec![record(); 2]);
        sink.submit(vec![record(); 2]);
        sink.submit(vec![record()]);
        assert_eq!(sink.waiting.load(Ordering::Acquire), 3, "the second request's two spans did not fit");
        let count = |queued: Option<Queued>| match queued {
            Some(Queued::Spans(spans)) => spans.len(),
            _ => 0,
        };
        assert_eq!(count(queue.next().await), 2);
        assert_eq!(sink.waiting.load(Ordering::Acquire), 1, "what the exporter took no longer counts");
        assert_eq!(count(queue.next().await), 1);
        assert!(queue.spans.try_recv().is_err());
        sink.submit(vec![record(); 3]);
        assert_eq!(count(queue.next().await), 3, "room again once the exporter took its spans");
    }
}
