//! Metric handles bound to their labels when the routing table is compiled.
//!
//! Every metric is under the `meridian_` prefix. A request only touches atomics through
//! handles it already holds; no label is hashed on the request path.

use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};

/// Latency buckets in seconds, shared by the total and integration histograms.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The per-route handles: requests by status class, total and integration latency.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    by_class: [Counter; 5],
    latency: Histogram,
    integration_latency: Histogram,
}

impl RouteMetrics {
    /// Registers the handles for one (api, stage, route, deployment).
    pub fn new(api: &str, stage: &str, route: &str, deployment: &str) -> Self {
        let labels = [
            ("api", api.to_string()),
            ("stage", stage.to_string()),
            ("route", route.to_string()),
            ("deployment", deployment.to_string()),
        ];
        let class = |c: &'static str| {
            let mut l = labels.to_vec();
            l.push(("status", c.to_string()));
            counter!("meridian_requests_total", &l)
        };
        RouteMetrics {
            by_class: [class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx")],
            latency: histogram!("meridian_request_duration_seconds", &labels),
            integration_latency: histogram!("meridian_integration_duration_seconds", &labels),
        }
    }

    /// Counts one finished request.
    pub fn record(&self, status: u16, latency: Duration, integration: Option<Duration>) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].increment(1);
        self.latency.record(latency.as_secs_f64());
        if let Some(d) = integration {
            self.integration_latency.record(d.as_secs_f64());
        }
    }
}

/// Describes the metrics once so `/metrics` carries HELP lines.
pub fn describe() {
    metrics::describe_counter!("meridian_requests_total", "Requests answered, by api, stage, route and status class");
    metrics::describe_histogram!(
        "meridian_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from request to the end of the response body"
    );
    metrics::describe_histogram!(
        "meridian_integration_duration_seconds",
        metrics::Unit::Seconds,
        "Time the upstream took to answer with headers"
    );
    metrics::describe_gauge!("meridian_requests_in_flight", "Requests being served");
    metrics::describe_gauge!("meridian_connections_open", "Client connections open");
    metrics::describe_counter!("meridian_connections_rejected_total", "Connections refused at the connection cap");
    metrics::describe_counter!("meridian_rate_limited_total", "Requests refused by a throttle or quota (429), by kind");
    metrics::describe_counter!(
        "meridian_quota_low_requests_total",
        "Requests admitted while their tightest quota had less than a tenth left"
    );
    metrics::describe_gauge!(
        "meridian_certificate_expiry_timestamp_seconds",
        "When each served certificate expires (Unix seconds; NaN once it is no longer served)"
    );
    metrics::describe_counter!("meridian_upstream_connections_opened_total", "Upstream connections opened");
    metrics::describe_gauge!("meridian_upstream_connections_open", "Upstream connections open (pooled or busy)");
    metrics::describe_counter!(
        "meridian_access_log_dropped_total",
        "Access-log lines dropped because the disk fell behind"
    );
    metrics::describe_counter!("meridian_config_reloads_total", "Configuration reloads, by result");
    metrics::describe_gauge!("meridian_config_revision", "Local configuration revision being served");
    metrics::describe_counter!(
        "meridian_limit_gossip_rejected_total",
        "Malformed or oversized gossip messages refused"
    );
    metrics::describe_counter!("meridian_limit_scopes_evicted_total", "Rate-limit scopes evicted at the scope cap");
}
