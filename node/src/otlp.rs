//! Span export by OTLP: the task that takes finished spans from the data plane's
//! [`SpanQueue`] and sends them to the operator's collector in batches.
//!
//! The exporter sends a batch when it holds [`BATCH_SPANS`] spans or once a second, over
//! OTLP/gRPC (`TraceService/Export`) or OTLP/HTTP with protobuf (`POST {endpoint}/v1/traces`),
//! and counts what the collector took and what failed. Every batch names the node as its
//! resource: `service.name` is `meridian`, with the node's name and region once it has
//! joined a cluster. It lives in the node crate because it speaks gRPC (tonic), which the
//! data plane does not depend on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use meridian_dataplane::integration::callee::Callee;
use meridian_dataplane::integration::upstreams::Upstreams;
use meridian_dataplane::observe::spans::{ExportSettings, NodeIdentity, OtlpProtocol, Queued, SpanQueue, SpanSink};
use meridian_dataplane::observe::trace::{AttributeValue, SpanKind, SpanRecord};
use metrics::Counter;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use prost::Message;

/// Spans per export call.
pub const BATCH_SPANS: usize = 512;
/// How long spans wait for a batch to fill.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long one export call may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from an OTLP/HTTP collector.
const MAX_ANSWER: usize = 64 * 1024;

/// Starts the exporter task (on the current runtime) and returns the sink the request path
/// hands its spans to.
pub fn start(settings: &ExportSettings, upstreams: Arc<Upstreams>) -> Result<Arc<SpanSink>, String> {
    let transport = Transport::new(settings)?;
    let (sink, spans) = SpanSink::new(settings.queue);
    let exporter = Exporter {
        spans,
        transport,
        upstreams,
        exported: metrics::counter!("meridian_trace_spans_total", "outcome" => "exported"),
        failed: metrics::counter!("meridian_trace_spans_total", "outcome" => "failed"),
    };
    tokio::spawn(exporter.run());
    Ok(sink)
}

/// How a batch reaches the collector.
enum Transport {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http(Box<Callee>),
}

impl Transport {
    fn new(settings: &ExportSettings) -> Result<Transport, String> {
        let endpoint = settings.endpoint.trim_end_matches('/');
        match settings.protocol {
            OtlpProtocol::Grpc => {
                let mut channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
                    .map_err(|e| format!("`{endpoint}` is not a URL: {e}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(EXPORT_TIMEOUT);
                if endpoint.starts_with("https://") {
                    // The collector's certificate is checked against `ca_file`, or the
                    // system's roots; the name it must carry is the endpoint's host.
                    let tls = match &settings.ca_file {
                        Some(file) => {
                            let pem = meridian_dataplane::files::read_bounded(file)
                                .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
                            tonic::transport::ClientTlsConfig::new()
                                .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                        }
                        None => tonic::transport::ClientTlsConfig::new().with_native_roots(),
                    };
                    channel = channel.tls_config(tls).map_err(|e| format!("`{endpoint}`: {e}"))?;
                }
                Ok(Transport::Grpc(TraceServiceClient::new(channel.connect_lazy())))
            }
            OtlpProtocol::HttpProtobuf => {
                let tls = match &settings.ca_file {
                    Some(file) => meridian_dataplane::integration::trust::ca_file(file)?,
                    None => meridian_dataplane::integration::trust::system_roots()?,
                };
                let callee = Callee::new(&format!("{endpoint}/v1/traces"), EXPORT_TIMEOUT, tls)?;
                Ok(Transport::Http(Box::new(callee)))
            }
        }
    }

    async fn export(&mut self, request: ExportTraceServiceRequest, upstreams: &Upstreams) -> Result<(), String> {
        match self {
            Transport::Grpc(client) => client
                .export(request)
                .await
                .map(drop)
                .map_err(|status| format!("{}: {}", status.code(), status.message())),
            Transport::Http(callee) => {
                let mut headers = HeaderMap::new();
                headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
                let body = Bytes::from(request.encode_to_vec());
                let answer =
                    callee.call(Method::POST, headers, body, upstreams, MAX_ANSWER).await.map_err(|e| e.to_string())?;
                if answer.status.is_success() {
                    Ok(())
                } else {
                    Err(format!("the collector answered {}", answer.status))
                }
            }
        }
    }
}

/// The task that batches spans and sends them.
struct Exporter {
    spans: SpanQueue,
    transport: Transport,
    upstreams: Arc<Upstreams>,
    exported: Counter,
    failed: Counter,
}

impl Exporter {
    async fn run(mut self) {
        let mut batch: Vec<SpanRecord> = Vec::new();
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            let mut flushed = None;
            let full = tokio::select! {
                received = self.spans.next() => match received {
                    Some(Queued::Spans(spans)) => {
                        batch.extend(spans);
                        batch.len() >= BATCH_SPANS
                    }
                    Some(Queued::Flush(done)) => {
                        flushed = Some(done);
                        !batch.is_empty()
                    }
                    None => break,
                },
                _ = tick.tick() => !batch.is_empty(),
            };
            if !full {
                if let Some(done) = flushed {
                    let _ = done.send(());
                }
                continue;
            }
            let count = batch.len() as u64;
            let request = export_request(std::mem::take(&mut batch), self.spans.identity());
            match self.transport.export(request, &self.upstreams).await {
                Ok(()) => self.exported.increment(count),
                Err(e) => {
                    self.failed.increment(count);
                    // One warning a minute is enough to say the collector is unreachable.
                    if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(error = %e, spans = count, "span export failed");
                        last_warning = Some(tokio::time::Instant::now());
                    }
                }
            }
            if let Some(done) = flushed {
                let _ = done.send(());
            }
        }
    }
}

fn key_value(key: &str, value: &AttributeValue) -> KeyValue {
    let value = match value {
        AttributeValue::Text(text) => any_value::Value::StringValue(text.to_string()),
        AttributeValue::Int(n) => any_value::Value::IntValue(*n),
        AttributeValue::Bool(b) => any_value::Value::BoolValue(*b),
    };
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn text(key: &str, value: &str) -> KeyValue {
    key_value(key, &AttributeValue::from(value.to_string()))
}

/// The OTLP request for `spans`, under the node's resource.
fn export_request(spans: Vec<SpanRecord>, identity: Option<&NodeIdentity>) -> ExportTraceServiceRequest {
    let mut resource = vec![text("service.name", "meridian"), text("service.version", env!("CARGO_PKG_VERSION"))];
    if let Some(id) = identity {
        resource.push(text("service.instance.id", &id.node));
        resource.push(text("meridian.node", &id.node));
        resource.push(text("meridian.region", &id.region));
    }
    let spans = spans.into_iter().map(|record| otlp_span(record, identity)).collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: resource, ..Default::default() }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "meridian".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Span flags: sampled, and whether the parent is known to be remote (OTLP's bits 8 and 9).
const SAMPLED: u32 = 0x1;
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

fn otlp_span(record: SpanRecord, identity: Option<&NodeIdentity>) -> Span {
    let kind = match record.kind {
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Internal => span::SpanKind::Internal,
    };
    let mut attributes: Vec<KeyValue> = record.attributes.iter().map(|(k, v)| key_value(k, v)).collect();
    // The request's own span names where it was served.
    if record.kind == SpanKind::Server
        && let Some(id) = identity
    {
        attributes.push(text("meridian.node", &id.node));
        attributes.push(text("meridian.region", &id.region));
    }
    let remote = if record.kind == SpanKind::Server && record.parent_id.is_some() { IS_REMOTE } else { 0 };
    Span {
        trace_id: record.trace_id.0.to_vec(),
        span_id: record.span_id.0.to_vec(),
        trace_state: record.trace_state.unwrap_or_default(),
        parent_span_id: record.parent_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: SAMPLED | HAS_IS_REMOTE | remote,
        name: record.name.into_owned(),
        kind: kind as i32,
        start_time_unix_nano: record.start,
        end_time_unix_nano: record.end.max(record.start),
        attributes,
        status: Some(match record.error {
            Some(message) => Status { message, code: status::StatusCode::Error as i32 },
            None => Status { message: String::new(), code: status::StatusCode::Unset as i32 },
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_dataplane::observe::trace::{SpanId, TraceId};

    fn record(kind: SpanKind, parent: Option<SpanId>, error: Option<&str>) -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([9; 8]),
            parent_id: parent,
            trace_state: Some("vendor=1".into()),
            name: "GET /items/{id}".into(),
            kind,
            start: 10,
            end: 25,
            attributes: vec![("http.response.status_code", 503.into()), ("meridian.api", "shop".into())],
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn a_request_carries_the_resource_and_every_field() {
        let identity = NodeIdentity { node: "eu-1".into(), region: "eu".into() };
        let spans =
            vec![record(SpanKind::Server, Some(SpanId([3; 8])), Some("503")), record(SpanKind::Client, None, None)];
        let request = export_request(spans, Some(&identity));
        let decoded = ExportTraceServiceRequest::decode(request.encode_to_vec().as_slice()).expect("decodes");
        let resource = decoded.resource_spans[0].resource.as_ref().expect("resource");
        let keys: Vec<&str> = resource.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert!(keys.contains(&"service.name") && keys.contains(&"meridian.region"), "{keys:?}");
        let spans = &decoded.resource_spans[0].scope_spans[0].spans;
        let server = &spans[0];
        assert_eq!(server.trace_id, vec![7; 16]);
        assert_eq!(server.parent_span_id, vec![3; 8]);
        assert_eq!(server.kind, span::SpanKind::Server as i32);
        assert_eq!(server.flags, SAMPLED | HAS_IS_REMOTE | IS_REMOTE);
        assert_eq!(server.trace_state, "vendor=1");
        assert_eq!((server.start_time_unix_nano, server.end_time_unix_nano), (10, 25));
        let status = server.status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (status::StatusCode::Error as i32, "503"));
        let int = |span: &Span, key: &str| {
            span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value)
        };
        assert_eq!(int(server, "http.response.status_code"), Some(any_value::Value::IntValue(503)));
        assert_eq!(int(server, "meridian.node"), Some(any_value::Value::StringValue("eu-1".into())));
        let client = &spans[1];
        assert!(client.parent_span_id.is_empty());
        assert_eq!(client.flags, SAMPLED | HAS_IS_REMOTE);
        assert_eq!(int(client, "meridian.node"), None, "only the server span names the node");
    }
}
