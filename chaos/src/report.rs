//! The run's report: JSON for tools, an SVG timeline for people, a summary for the terminal.

use std::fmt::Write as _;

use serde::Serialize;

use crate::workload::{Failure, Second, Write};

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    pub at_s: f64,
    /// When it was undone (healed, continued, restarted), if it was.
    pub until_s: Option<f64>,
    pub action: String,
    pub nodes: Vec<String>,
}

/// One invariant's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub invariant: String,
    pub passed: bool,
    pub detail: String,
}

/// The headline figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub requests: u64,
    pub failed_requests: u64,
    pub failed_outside_windows: u64,
    /// Seconds from each kill or pause until DNS answers excluded the dead nodes.
    pub dns_failover_s: Vec<f64>,
    /// Seconds from each kill or pause until the affected region's clients succeeded again.
    pub client_recovery_s: Vec<f64>,
    pub writes_acked: u64,
    pub writes_failed: u64,
    pub writes_lost: u64,
    /// Seconds after the end until every live node had the same revision.
    pub converged_after_s: Option<f64>,
    /// Keyed clients: admitted per second during the measured window, and the limit.
    pub keyed_admitted_per_s: Option<f64>,
    /// Keyed clients: the busiest second of the partition, its first seconds included.
    pub keyed_peak_per_s: Option<u64>,
    pub keyed_limit: Option<u32>,
    /// Payments started, succeeded, and attempts made (`retry-storm`).
    pub payments: u64,
    pub payments_succeeded: u64,
    pub payment_attempts: u64,
    /// Successful attempts answered with a recorded response.
    pub payment_replays: u64,
    /// Keys that reached the payment service more than once.
    pub payments_delivered_twice: u64,
    /// WebSocket connections the clients held (`websocket-failover`), and the longest a
    /// client whose connection dropped went without one.
    pub socket_connections: u64,
    pub socket_reconnect_max_s: Option<f64>,
    /// Pushes made through the callback API; accepted (200) and delivered; accepted just
    /// before their connection's node died and lost with it; answered 410 for dropped
    /// connections.
    pub pushes: u64,
    pub pushes_accepted: u64,
    pub pushes_lost_with_node: u64,
    pub pushes_gone: u64,
}

/// Everything about one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub seed: u64,
    pub duration_s: f64,
    pub nodes: Vec<String>,
    pub faults: Vec<FaultEvent>,
    pub verdicts: Vec<Verdict>,
    pub figures: Figures,
    pub passed: bool,
    pub timeline: Vec<Second>,
    pub failures: Vec<Failure>,
    pub writes: Vec<Write>,
    /// Node folders left on disk (`--keep`).
    pub kept: Vec<String>,
}

impl Report {
    /// The terminal summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let f = &self.figures;
        let _ = writeln!(
            out,
            "scenario {} (seed {}): {}",
            self.scenario,
            self.seed,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        for e in &self.faults {
            let until = e.until_s.map(|u| format!(" until {u:.1}s")).unwrap_or_default();
            let _ = writeln!(out, "  fault at {:5.1}s{until}: {} [{}]", e.at_s, e.action, e.nodes.join(", "));
        }
        let _ = writeln!(
            out,
            "  requests {} (failed {}, {} outside failover windows); writes acked {}, failed {}, lost {}",
            f.requests, f.failed_requests, f.failed_outside_windows, f.writes_acked, f.writes_failed, f.writes_lost
        );
        if !f.dns_failover_s.is_empty() {
            let list: Vec<String> = f.dns_failover_s.iter().map(|s| format!("{s:.2}s")).collect();
            let _ = writeln!(out, "  DNS failover: {}", list.join(", "));
        }
        if !f.client_recovery_s.is_empty() {
            let list: Vec<String> = f.client_recovery_s.iter().map(|s| format!("{s:.2}s")).collect();
            let _ = writeln!(out, "  client recovery: {}", list.join(", "));
        }
        if let (Some(a), Some(l)) = (f.keyed_admitted_per_s, f.keyed_limit) {
            let _ = writeln!(
                out,
                "  keyed: {a:.1} admitted/s against a limit of {l} ({:+.1} %), busiest second {}",
                (a / f64::from(l) - 1.0) * 100.0,
                f.keyed_peak_per_s.unwrap_or(0)
            );
        }
        if f.payments > 0 {
            let _ = writeln!(
                out,
                "  payments: {} started, {} succeeded in {} attempts ({} answered by a replay), {} delivered twice",
                f.payments, f.payments_succeeded, f.payment_attempts, f.payment_replays, f.payments_delivered_twice
            );
        }
        for v in &self.verdicts {
            let _ = writeln!(out, "  [{}] {}: {}", if v.passed { "ok" } else { "FAIL" }, v.invariant, v.detail);
        }
        out
    }

    /// The timeline as an SVG picture: requests/s (green), failed requests (red bars), p99
    /// latency (blue, right axis), keyed admissions (purple), faults as shaded spans.
    pub fn svg(&self) -> String {
        let (width, height, left, right, top, bottom) = (960.0, 380.0, 60.0, 60.0, 40.0, 50.0);
        let plot_w = width - left - right;
        let plot_h = height - top - bottom;
        let seconds = (self.duration_s.ceil() as usize).max(self.timeline.len()).max(1);
        let x = |t: f64| left + plot_w * t / seconds as f64;
        let max_rate = self
            .timeline
            .iter()
            .map(|s| (s.ok + s.failed).max(s.keyed_admitted + s.keyed_limited))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.15;
        let max_p99 = self.timeline.iter().map(|s| s.p99_ms).fold(1.0, f64::max) * 1.15;
        let y = |v: f64| top + plot_h * (1.0 - v / max_rate);
        let y_ms = |v: f64| top + plot_h * (1.0 - v / max_p99);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"20\" font-size=\"14\">{} (seed {}): {}</text>\n",
            escape(&self.scenario),
            self.seed,
            if self.passed { "passed" } else { "FAILED" }
        );
        for (i, e) in self.faults.iter().enumerate() {
            let until = e.until_s.unwrap_or(self.duration_s);
            let _ = writeln!(
                svg,
                "<rect x=\"{:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{plot_h}\" fill=\"#f4a261\" opacity=\"0.18\"/><line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{:.1}\" stroke=\"#e76f51\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#9a3412\">{}</text>",
                x(e.at_s),
                (x(until) - x(e.at_s)).max(1.0),
                top + plot_h,
                x(e.at_s) + 3.0,
                top + 12.0 + 12.0 * (i % 4) as f64,
                escape(&format!("{} {}", e.action, e.nodes.join(",")))
            );
        }
        let _ = writeln!(
            svg,
            "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#444\"/>"
        );
        for s in &self.timeline {
            if s.failed > 0 {
                let _ = writeln!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#d62828\"/>",
                    x(s.second as f64),
                    y(s.failed as f64),
                    (plot_w / seconds as f64 * 0.8).max(1.0),
                    top + plot_h - y(s.failed as f64)
                );
            }
        }
        let line = |pick: &dyn Fn(&Second) -> f64, scale: &dyn Fn(f64) -> f64| -> String {
            self.timeline
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.second as f64 + 0.5), scale(pick(s))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"#2a9d8f\" stroke-width=\"2\" points=\"{}\"/>",
            line(&|s| s.ok as f64, &y)
        );
        if self.timeline.iter().any(|s| s.keyed_admitted > 0) {
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"#7b2cbf\" stroke-width=\"2\" points=\"{}\"/>",
                line(&|s| s.keyed_admitted as f64, &y)
            );
        }
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"#1d4ed8\" stroke-width=\"1\" stroke-dasharray=\"3 2\" points=\"{}\"/>",
            line(&|s| s.p99_ms, &y_ms)
        );
        for k in 0..=4 {
            let v = max_rate * k as f64 / 4.0;
            let ms = max_p99 * k as f64 / 4.0;
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1d4ed8\">{ms:.1} ms</text>",
                left - 4.0,
                y(v) + 4.0,
                left + plot_w + 4.0,
                y(v) + 4.0
            );
        }
        for t in (0..=seconds).step_by(5.max(seconds / 10)) {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}s</text>",
                x(t as f64),
                top + plot_h + 14.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{left}\" y=\"{:.1}\"><tspan fill=\"#2a9d8f\">— requests/s ok</tspan>   <tspan fill=\"#d62828\">█ failed/s</tspan>   <tspan fill=\"#7b2cbf\">— keyed admitted/s</tspan>   <tspan fill=\"#1d4ed8\">- - p99 latency (right axis)</tspan>   <tspan fill=\"#e76f51\">▒ faults</tspan></text>",
            height - 12.0
        );
        svg.push_str("</svg>\n");
        svg
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
