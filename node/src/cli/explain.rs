//! `meridian explain request`: asks a node what it would do with a request (its admin
//! API's `POST /v1/explain`) and prints the route, each stage's decision and the outcome.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::output::cell;
use super::target::{AdminTarget, call};

#[derive(Debug, Subcommand)]
pub enum ExplainCommand {
    /// What the node would do with a request: the route, the firewall rules that match,
    /// the limits, the API key and authorizer, and the outcome. Nothing is sent upstream and
    /// nothing is counted.
    Request {
        /// The method (GET, POST, ...).
        method: String,
        /// `http://HOST/PATH?QUERY` (the host is the `Host` header).
        url: String,
        /// A request header, `Name: value` (repeatable).
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The client's address (default 127.0.0.1).
        #[arg(long)]
        client_ip: Option<IpAddr>,
        /// The request body.
        #[arg(long, short = 'd', conflicts_with = "data_file")]
        data: Option<String>,
        /// The request body, read from a file.
        #[arg(long)]
        data_file: Option<PathBuf>,
        #[command(flatten)]
        target: AdminTarget,
    },
}

pub async fn run(command: ExplainCommand) -> anyhow::Result<ExitCode> {
    let ExplainCommand::Request { method, url, headers, client_ip, data, data_file, target } = command;
    let body = match (data, data_file) {
        (Some(text), _) => text,
        (None, Some(file)) => {
            meridian_dataplane::files::read_bounded(&file).with_context(|| format!("cannot read {}", file.display()))?
        }
        (None, None) => String::new(),
    };
    let description = serde_json::json!({
        "method": method,
        "url": url,
        "headers": headers,
        "client_ip": client_ip,
        "body": body,
    });
    let answer = call(&target, Method::POST, "/v1/explain", Bytes::from(description.to_string()), &[]).await?;
    Ok(answer.show(target.output, text))
}

/// An explanation as a person reads it.
fn text(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let route = &v["route"];
    if route.is_object() {
        let _ = writeln!(
            out,
            "route      {} {} (stage {})",
            cell(&route["api"]),
            cell(&route["route"]),
            cell(&route["stage"])
        );
        if let Some(d) = route["deployment"].as_str().filter(|d| !d.is_empty()) {
            let _ = writeln!(out, "deployment {d}");
        }
        let chain: Vec<&str> = route["chain"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let _ = writeln!(out, "chain      {}", if chain.is_empty() { "(no stages)".into() } else { chain.join(" → ") });
    } else {
        let _ = writeln!(out, "route      (none)");
    }
    for step in v["stages"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  {:<16} {}", cell(&step["stage"]), cell(&step["decision"]));
        for note in step["notes"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  {:<16}   {}", "", note.as_str().unwrap_or(""));
        }
    }
    let outcome = &v["outcome"];
    let _ = match outcome["result"].as_str() {
        Some("refused") => {
            let reason = outcome["reason"].as_str().map(|r| format!(" [{r}]")).unwrap_or_default();
            writeln!(
                out,
                "outcome    {} by {}: {}{reason}",
                cell(&outcome["status"]),
                cell(&outcome["by"]),
                cell(&outcome["message"])
            )
        }
        Some("answered") => {
            writeln!(out, "outcome    {} answered by {}", cell(&outcome["status"]), cell(&outcome["by"]))
        }
        Some("forwarded") => writeln!(out, "outcome    forwarded to {}", cell(&outcome["upstream"])),
        Some("mocked") => writeln!(out, "outcome    {} from the route's mock integration", cell(&outcome["status"])),
        Some("redirected") => {
            writeln!(out, "outcome    {} redirect to {}", cell(&outcome["status"]), cell(&outcome["location"]))
        }
        _ => writeln!(out, "outcome    {outcome}"),
    };
    if let Some(name) = outcome["authorizer"]["name"].as_str() {
        let _ = writeln!(out, "authorizer {name}: {}", outcome["authorizer"]["context"]);
    }
    out
}
