//! `meridian cache flush`: empties a stage's response cache (or one route's entries) on
//! every node of the cluster, through the admin API of the node it calls.

use std::process::ExitCode;

use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::output::refused;
use super::target::{AdminTarget, call, encode};

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Empty a stage's response cache on every node (all of it, or one route's entries);
    /// returns once every node has confirmed.
    Flush {
        #[arg(long)]
        api: String,
        #[arg(long)]
        stage: String,
        /// One route's entries only, by its key: `GET /pets/{id}`.
        #[arg(long)]
        route: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
}

pub async fn run(command: CacheCommand) -> anyhow::Result<ExitCode> {
    let CacheCommand::Flush { api, stage, route, target } = command;
    let path = format!("/v1/apis/{}/stages/{}/cache/flush", encode(&api), encode(&stage));
    let body = serde_json::json!({ "route": route }).to_string();
    let answer =
        call(&target, Method::POST, &path, Bytes::from(body), &[("content-type", "application/json".into())]).await?;
    if answer.status == 503 {
        // Some nodes did not confirm: say which, and fail.
        let _ = target.output.print(&answer.value, text);
        return Ok(refused(answer.status, &answer.value));
    }
    Ok(answer.show(target.output, text))
}

fn text(v: &Value) -> String {
    let nodes: Vec<String> = v["flushed"].as_array().into_iter().flatten().map(|n| n.to_string()).collect();
    let mut out = format!(
        "flushed on {} node(s) [{}] in {:.1} ms\n",
        nodes.len(),
        nodes.join(", "),
        v["took_ms"].as_f64().unwrap_or(0.0)
    );
    for failed in v["failed"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "not confirmed by node {}: {}\n",
            failed["node"],
            failed["error"].as_str().unwrap_or("")
        ));
    }
    out
}
