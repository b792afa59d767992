//! `meridian dns` and `meridian regions`: the zones every DNS-serving node answers for, why
//! a client gets the answer it gets, and the regions' DNS settings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::output::{Table, cell, fields};
use super::target::{AdminTarget, call, encode, get};

#[derive(Debug, Subcommand)]
pub enum DnsCommand {
    /// Manage the zones every DNS-serving node answers for.
    #[command(subcommand)]
    Zones(ZoneCommand),
    /// Explain how a node answers NAME for a client: ranking, latency sources, health, and
    /// the answer itself (computed the way a real query is).
    Explain {
        /// The queried name, e.g. api.example.com.
        name: String,
        /// The client (or its resolver, or the ECS subnet) address.
        #[arg(long)]
        client: std::net::IpAddr,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum ZoneCommand {
    /// Create or replace a zone from its YAML document (see docs/DNS.md).
    Put {
        /// The zone document.
        file: PathBuf,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List the zones.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show a zone's document.
    Show {
        /// The zone, e.g. `example.com`.
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete a zone.
    Delete {
        /// The zone, e.g. `example.com`.
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// Create or replace a region's settings.
    Put {
        /// The region, e.g. `eu-west`.
        name: String,
        /// Relative DNS weight (0 drains the region).
        #[arg(long)]
        weight: Option<u32>,
        /// A client network known to sit near this region (CIDR); repeatable.
        #[arg(long = "cidr")]
        client_cidrs: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List the regions' settings.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show one region's settings.
    Show {
        /// The region, e.g. `eu-west`.
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete a region's settings.
    Delete {
        /// The region, e.g. `eu-west`.
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

pub async fn dns(command: DnsCommand) -> anyhow::Result<ExitCode> {
    Ok(match command {
        DnsCommand::Zones(ZoneCommand::Put { file, target }) => {
            let text = meridian_dataplane::files::read_bounded(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let zone = crate::cluster::dns::parse_zone(&text).map_err(|errors| {
                anyhow::anyhow!("{} is not a valid zone:\n  {}", file.display(), errors.join("\n  "))
            })?;
            let name = zone.origin.to_string().trim_end_matches('.').to_string();
            let path = format!("/v1/dns/zones/{}", encode(&name));
            call(&target, Method::PUT, &path, Bytes::from(text), &[])
                .await?
                .written(target.output, &format!("zone {name} saved"))
        }
        DnsCommand::Zones(ZoneCommand::List { target }) => {
            get(&target, "/v1/dns/zones").await?.show(target.output, |v| {
                let mut table = Table::new(&["ZONE", "LINES"]);
                for z in v["zones"].as_array().into_iter().flatten() {
                    table.row(vec![
                        cell(&z["name"]),
                        z["definition"].as_str().map_or(0, |d| d.lines().count()).to_string(),
                    ]);
                }
                table.render("no zones yet: `meridian dns zones put ZONE.yaml`")
            })
        }
        DnsCommand::Zones(ZoneCommand::Show { name, target }) => {
            get(&target, &format!("/v1/dns/zones/{}", encode(&name))).await?.show(target.output, |v| {
                format!("# zone {}\n{}", cell(&v["name"]), v["definition"].as_str().unwrap_or(""))
            })
        }
        DnsCommand::Zones(ZoneCommand::Delete { name, target }) => {
            let path = format!("/v1/dns/zones/{}", encode(&name));
            call(&target, Method::DELETE, &path, Bytes::new(), &[])
                .await?
                .written(target.output, &format!("zone {name} deleted"))
        }
        DnsCommand::Explain { name, client, target } => {
            let path = format!("/v1/dns/explain?client={client}&name={}", encode(&name));
            get(&target, &path).await?.show(target.output, explain_text)
        }
    })
}

pub async fn regions(command: RegionCommand) -> anyhow::Result<ExitCode> {
    Ok(match command {
        RegionCommand::Put { name, weight, client_cidrs, target } => {
            let body = serde_json::json!({"weight": weight, "client_cidrs": client_cidrs});
            let path = format!("/v1/regions/{}", encode(&name));
            call(&target, Method::PUT, &path, Bytes::from(body.to_string()), &[])
                .await?
                .written(target.output, &format!("region {name} saved"))
        }
        RegionCommand::List { target } => get(&target, "/v1/regions").await?.show(target.output, |v| {
            let mut table = Table::new(&["REGION", "WEIGHT", "CLIENT NETWORKS"]);
            for r in v["regions"].as_array().into_iter().flatten() {
                table.row(["name", "weight", "client_cidrs"].iter().map(|f| cell(&r[*f])).collect());
            }
            table.render("no region settings: every region has weight 1 and no client networks")
        }),
        RegionCommand::Show { name, target } => {
            get(&target, &format!("/v1/regions/{}", encode(&name))).await?.show(target.output, |v| {
                fields(v, &[("region", "name"), ("weight", "weight"), ("client networks", "client_cidrs")])
            })
        }
        RegionCommand::Delete { name, target } => {
            let path = format!("/v1/regions/{}", encode(&name));
            call(&target, Method::DELETE, &path, Bytes::new(), &[])
                .await?
                .written(target.output, &format!("region {name} deleted"))
        }
    })
}

/// `meridian dns explain` as a person reads it.
fn explain_text(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} for client {} (answered by node {} in {}){}",
        v["name"].as_str().unwrap_or("?"),
        v["client"].as_str().unwrap_or("?"),
        v["answering_node"],
        v["answering_region"].as_str().unwrap_or("?"),
        if v["routed"].as_bool() == Some(true) { "" } else { "\n  note: not a routed name in any zone" }
    );
    let _ = writeln!(out, "\ncandidate regions, best first:");
    for c in v["ranking"].as_array().into_iter().flatten() {
        let estimate =
            c["estimate_us"].as_u64().map_or("unknown".to_string(), |us| format!("{:.1} ms", us as f64 / 1000.0));
        let source = match c["source"]["kind"].as_str() {
            Some("measured") => format!("measured from this prefix ({} samples)", c["source"]["samples"]),
            Some("via_region") => format!("via {} + inter-region RTT", c["source"]["region"].as_str().unwrap_or("?")),
            Some("hint") => format!("configured client network {}", c["source"]["network"].as_str().unwrap_or("?")),
            Some("local") => "the answering node's region (nothing measured)".to_string(),
            _ => "no estimate".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<12} {:<5} weight {:<3} {:>10}  {}",
            c["region"].as_str().unwrap_or("?"),
            if c["up"].as_bool() == Some(true) { "up" } else { "DOWN" },
            c["weight"],
            estimate,
            source
        );
    }
    let _ = writeln!(out, "\nhealth of each node as its observers in other regions see it:");
    for h in v["health"].as_array().into_iter().flatten() {
        let opinions: Vec<String> = h["observers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| format!("{}: {} up/{} down", o["observer_region"].as_str().unwrap_or("?"), o["up"], o["down"]))
            .collect();
        let _ = writeln!(
            out,
            "  node {} ({}, {}): {}  [{}]",
            h["node"],
            h["region"].as_str().unwrap_or("?"),
            h["gateway"].as_str().unwrap_or("?"),
            if h["up"].as_bool() == Some(true) { "up" } else { "DOWN" },
            if opinions.is_empty() { "no observers".to_string() } else { opinions.join(", ") }
        );
    }
    let answer: Vec<&str> = v["answer"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
    let scope = v["scope_prefix"].as_u64().map_or(String::new(), |s| format!(" (ECS scope /{s})"));
    match v["rcode"].as_str() {
        Some("NOERROR") if !answer.is_empty() => {
            let _ = writeln!(out, "\nanswer: {}{scope}", answer.join(" "));
        }
        rcode => {
            let _ = writeln!(out, "\nanswer: no addresses ({}){scope}", rcode.unwrap_or("?"));
        }
    }
    out
}
