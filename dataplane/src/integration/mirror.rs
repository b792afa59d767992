//! Traffic mirroring: a share of an `http_proxy` route's requests copied to a shadow target,
//! whose answers are read and thrown away.
//!
//! A mirrored request is the one the upstream gets (after transforms and rewrites: the same
//! method, path, query and headers), sent to the mirror's origin instead, with its body when
//! the client declared one of at most `max_body_bytes` (a request with a longer body, or one
//! of unknown length, is not mirrored). It is spawned on its own
//! task before the real call: it never delays the real request or changes its answer. At
//! most `max_concurrency` mirrored requests are in flight per route; one over that is
//! dropped rather than queued. Every outcome is counted in
//! `meridian_mirror_requests_total{outcome}`: `answered`, `failed` (no connection, a
//! timeout), `dropped` (concurrency), `skipped` (a body not mirrored).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::uri::{Authority, Scheme};
use http::{Request, Uri};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use super::proxy::ProxyIntegration;
use super::request_body::RequestBody;
use super::upstreams::Upstreams;

/// The outcomes counted, one counter each.
#[derive(Debug, Clone)]
struct MirrorMetrics {
    answered: metrics::Counter,
    failed: metrics::Counter,
    dropped: metrics::Counter,
    skipped: metrics::Counter,
}

/// A route's mirror on one stage.
#[derive(Debug)]
pub struct Mirror {
    /// The shadow target: its origin and its pool.
    pub target: ProxyIntegration,
    /// Requests mirrored per million.
    share_per_million: u32,
    pub max_body_bytes: u64,
    in_flight: Arc<Semaphore>,
    metrics: MirrorMetrics,
}

impl Mirror {
    /// A mirror of `percent` % of the route's requests (0 < percent ≤ 100); `labels` are the
    /// route's `(api, stage, route)` for its metrics.
    pub fn new(
        target: ProxyIntegration,
        percent: f64,
        max_body_bytes: u64,
        max_concurrency: usize,
        labels: (&str, &str, &str),
    ) -> Mirror {
        let (api, stage, route) = (labels.0.to_string(), labels.1.to_string(), labels.2.to_string());
        let counter = |outcome: &'static str| metrics::counter!("meridian_mirror_requests_total", "api" => api.clone(), "stage" => stage.clone(), "route" => route.clone(), "outcome" => outcome);
        Mirror {
            target,
            share_per_million: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
            max_body_bytes,
            in_flight: Arc::new(Semaphore::new(max_concurrency)),
            metrics: MirrorMetrics {
                answered: counter("answered"),
                failed: counter("failed"),
                dropped: counter("dropped"),
                skipped: counter("skipped"),
            },
        }
    }

    /// Whether this request is one of the share mirrored.
    pub fn sampled(&self) -> bool {
        self.share_per_million >= 1_000_000
            || ((crate::fast_random::next_u64() >> 32) % 1_000_000) < u64::from(self.share_per_million)
    }

    /// Counts a sampled request whose body cannot be mirrored.
    pub fn skip(&self) {
        self.metrics.skipped.increment(1);
    }

    /// Sends a copy of `head` (as it goes upstream) and `body` to the shadow target, on its
    /// own task; returns at once.
    pub fn send(self: &Arc<Self>, head: &Parts, body: Bytes, upstreams: &Arc<Upstreams>) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.metrics.dropped.increment(1);
            return;
        };
        let mut parts = head.uri.clone().into_parts();
        parts.scheme = Some(self.target.upstream.scheme.clone());
        parts.authority = Some(self.target.upstream.authority.clone());
        let Ok(uri) = Uri::from_parts(parts) else {
            self.metrics.skipped.increment(1);
            return;
        };
        let mut request = Request::new(RequestBody::buffered(body));
        *request.method_mut() = head.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = head.version;
        *request.headers_mut() = head.headers.clone();
        let (mirror, upstreams) = (self.clone(), upstreams.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let timeout = mirror.target.timeout;
            let outcome = tokio::time::timeout(timeout, async {
                let response = mirror.target.forward(&mut request, &upstreams).await.ok()?;
                // Read to the end, so the connection goes back to the pool.
                response.into_body().collect().await.ok().map(|_| ())
            })
            .await;
            match outcome {
                Ok(Some(())) => mirror.metrics.answered.increment(1),
                _ => mirror.metrics.failed.increment(1),
            }
        });
    }
}

/// The default bound on a mirrored request and its answer.
pub const DEFAULT_MIRROR_TIMEOUT: Duration = Duration::from_secs(5);

/// A mirror's origin, `http://host:port` or `https://host[:port]` (no path).
pub fn origin(text: &str) -> Result<(Scheme, Authority), String> {
    let bad =
        || format!("`{text}` is not an origin (`http://shadow.internal:8080`): a mirror gets the upstream's own path");
    let (scheme, rest) = match (text.strip_prefix("http://"), text.strip_prefix("https://")) {
        (Some(rest), _) => (Scheme::HTTP, rest),
        (_, Some(rest)) => (Scheme::HTTPS, rest),
        _ => return Err(bad()),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    Ok((scheme, authority.parse().map_err(|_| bad())?))
}
