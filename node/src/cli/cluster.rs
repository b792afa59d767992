//! `meridian cluster ...`: found, join, inspect and leave a cluster.
//!
//! `cluster init` and `cluster join` run the node in the foreground (like `serve`; run them
//! under a service manager, see docs/OPERATIONS.md); the other commands call a node's
//! admin API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::output::{Table, cell};
use super::target::{AdminTarget, call, get};
use super::{Workers, announce, write_ready_file};
use crate::cluster::member::ClusterMember;
use crate::node::Node;
use crate::reload::ConfigSource;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Found a new cluster with this node as its first member; prints the join token and
    /// keeps serving in the foreground.
    Init {
        /// The node's configuration file (with a `cluster` section).
        #[arg(long, short)]
        config: PathBuf,
        /// The region this node is in, e.g. `eu-west`.
        #[arg(long)]
        region: String,
        /// Write the bound addresses as JSON here once serving (and the join token next to
        /// it, in a `.token` file).
        #[arg(long)]
        ready_file: Option<PathBuf>,
        #[command(flatten)]
        workers: Workers,
    },
    /// Join an existing cluster through any member, then keep serving in the foreground.
    Join {
        /// The node's configuration file (with a `cluster` section).
        #[arg(long, short)]
        config: PathBuf,
        /// The region this node is in, e.g. `us-east`.
        #[arg(long)]
        region: String,
        /// A member's node-RPC address.
        #[arg(long)]
        peer: String,
        /// The join token `cluster init` printed.
        #[arg(long, env = "MERIDIAN_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Write the bound addresses as JSON here once serving.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        #[command(flatten)]
        workers: Workers,
    },
    /// Show members, regions, voters and learners, the leader, the term and each node's lag.
    Status {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Remove this node from the cluster; it stops once that has committed.
    Leave {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Remove another node from the cluster (one that is dead or whose data is lost; a
    /// live node leaves with `cluster leave`).
    Remove {
        /// The node id (see `cluster status`).
        node: u64,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make a learner a voter.
    Promote {
        /// The node id (see `cluster status`).
        node: u64,
        #[command(flatten)]
        target: AdminTarget,
    },
}

async fn start_node(config: &Path) -> anyhow::Result<(Node, meridian_dataplane::config::ClusterSettings)> {
    let node = Node::start(ConfigSource::File(config.to_path_buf())).await?;
    let settings = node
        .cluster
        .clone()
        .with_context(|| format!("{} has no `cluster` section (data_dir, rpc)", config.display()))?;
    announce(&node);
    Ok((node, settings))
}

fn check_region(region: &str) -> anyhow::Result<()> {
    if region.is_empty() || !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        bail!("a region is a name of a-z, 0-9 and `-`, e.g. `eu-west`");
    }
    Ok(())
}

fn status_text(v: &Value) -> String {
    let mut out = format!(
        "node {} ({}) sees leader {}, term {}, revision {}\n",
        v["node_id"],
        cell(&v["state"]),
        cell(&v["leader"]),
        v["term"],
        v["revision"]
    );
    let mut table = Table::new(&["ID", "REGION", "ROLE", "STATE", "REVISION", "LAG", "RPC", "GATEWAY"]);
    for m in v["members"].as_array().into_iter().flatten() {
        table.row(
            ["id", "region", "role", "state", "revision", "lag", "rpc", "gateway"]
                .iter()
                .map(|f| cell(&m[*f]))
                .collect(),
        );
    }
    out.push_str(&table.render("no members"));
    out
}

pub async fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Init { config, region, ready_file, .. } => {
            check_region(&region)?;
            let (node, settings) = start_node(&config).await?;
            let (member, token) = ClusterMember::init(
                &settings,
                node.advertised(&region, settings.advertise_address),
                node.rpc_handlers(),
            )
            .await?;
            node.attach_cluster(member);
            // The join token is a secret: on a terminal it is shown; otherwise (a log file, a
            // service manager's journal) it goes only to a file readable by this user.
            println!("cluster founded in region {region}; join other nodes with:");
            let peer = &settings.advertise_rpc;
            let token_file = match &ready_file {
                Some(path) => path.with_extension("token"),
                None => settings.data_dir.join("join.token"),
            };
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                println!("  meridian cluster join --peer {peer} --token {token} --region REGION --config node.yaml");
            }
            // The token first: whoever waits for the ready file reads the token next.
            meridian_dataplane::files::write_private(&token_file, token.as_bytes())?;
            println!(
                "  meridian cluster join --peer {peer} --token \"$(cat {})\" --region REGION --config node.yaml",
                token_file.display()
            );
            if let Some(path) = ready_file {
                write_ready_file(&node, &path)?;
            }
            node.run_until_signal().await?;
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Join { config, region, peer, token, ready_file, .. } => {
            check_region(&region)?;
            let (node, settings) = start_node(&config).await?;
            let member = ClusterMember::join(
                &settings,
                node.advertised(&region, settings.advertise_address),
                &peer,
                &token,
                node.rpc_handlers(),
            )
            .await?;
            println!("joined the cluster as node {} in region {region}", member.id);
            node.attach_cluster(member);
            if let Some(path) = ready_file {
                write_ready_file(&node, &path)?;
            }
            node.run_until_signal().await?;
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Status { target } => Ok(get(&target, "/v1/cluster").await?.show(target.output, status_text)),
        ClusterCommand::Leave { target } => {
            let answer = call(&target, Method::POST, "/v1/cluster/leave", Bytes::new(), &[]).await?;
            Ok(answer.show(target.output, |v| {
                format!(
                    "node {} left the cluster: its process stops now, and its data directory is cleared so it can join again\n",
                    v["node"]
                )
            }))
        }
        ClusterCommand::Remove { node, target } => {
            let path = format!("/v1/cluster/remove?node={node}");
            let answer = call(&target, Method::POST, &path, Bytes::new(), &[]).await?;
            Ok(answer.show(target.output, |_| format!("node {node} is no longer a member\n")))
        }
        ClusterCommand::Promote { node, target } => {
            let path = format!("/v1/cluster/promote?node={node}");
            let answer = call(&target, Method::POST, &path, Bytes::new(), &[]).await?;
            Ok(answer.show(target.output, |_| format!("node {node} is a voter now\n")))
        }
    }
}
