//! Compiling tracing: the node's `tracing` section (the OTLP collector, its protocol, the
//! export queue's bound) and a stage's `tracing.sample_ratio`, each checked with its line.

use super::super::model::*;
use super::Compiler;
use crate::observe::spans::{ExportSettings, OtlpProtocol};
use crate::observe::trace::Sampling;

const DEFAULT_QUEUE: u64 = 8192;
const MAX_QUEUE: u64 = 1_000_000;

impl Compiler<'_> {
    /// The node's span export, if the file sets one.
    pub(super) fn tracing(&mut self, section: &TracingSection) -> Option<ExportSettings> {
        let protocol = match section.protocol.as_ref().map(|p| (p, p.value.as_str())) {
            None | Some((_, "grpc")) => Some(OtlpProtocol::Grpc),
            Some((_, "http")) => Some(OtlpProtocol::HttpProtobuf),
            Some((p, other)) => {
                self.sink.push(p.referenced, "tracing.protocol", format!("`{other}` is not `grpc` or `http`"));
                None
            }
        };
        let endpoint = &section.endpoint;
        // Both protocols take `http://` and `https://` (TLS) endpoints.
        let url: Option<http::Uri> = endpoint.value.parse().ok();
        let endpoint_ok = url.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
        });
        if !endpoint_ok {
            let wanted = "an `http://` or `https://` URL with a host";
            self.sink.push(endpoint.referenced, "tracing.endpoint", format!("`{}` is not {wanted}", endpoint.value));
        }
        let queue = match &section.queue {
            None => Some(DEFAULT_QUEUE),
            Some(q) if (1..=MAX_QUEUE).contains(&q.value) => Some(q.value),
            Some(q) => {
                self.sink.push(q.referenced, "tracing.queue", format!("must be 1 to {MAX_QUEUE} spans"));
                None
            }
        };
        let ca_file = section.ca_file.as_ref().and_then(|f| {
            let path = self.path(&f.value);
            match crate::integration::trust::read_roots(&path) {
                Ok(_) => Some(path),
                Err(e) => {
                    self.sink.push(f.referenced, "tracing.ca_file", e);
                    None
                }
            }
        });
        Some(ExportSettings {
            endpoint: endpoint.value.trim_end_matches('/').to_string(),
            protocol: protocol?,
            queue: queue? as usize,
            ca_file,
        })
        .filter(|_| endpoint_ok)
    }

    /// A stage's sampling policy, if it traces its requests.
    pub(super) fn sampling(&mut self, stage: &StageDef, field: &str) -> Option<Sampling> {
        let tracing = stage.tracing.as_ref()?;
        let ratio = tracing.value.sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            self.sink.push(
                tracing.referenced,
                format!("{field}.tracing.sample_ratio"),
                format!("{ratio} is not a share between 0.0 and 1.0"),
            );
            return None;
        }
        Some(Sampling::new(ratio))
    }
}
