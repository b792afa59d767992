//! `meridian cluster ...`, `meridian apply`, `meridian deployments`, `meridian stage ...`.
//!
//! `cluster init` and `cluster join` run the node in the foreground (like `serve`); the
//! other commands talk to a node's admin API, found through the node's configuration file
//! (its `admin` section gives the address and the token file) or `--admin`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::Method;

use super::{announce, write_ready_file};
use crate::admin::client;
use crate::cluster::member::ClusterMember;
use crate::config::load_file;
use crate::gateway::node::{ConfigSource, Node};

/// Which node's admin API to call.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// The node's configuration file (its `admin` section: address and token file).
    #[arg(long, short)]
    pub config: PathBuf,
    /// The admin address, when it differs from the file's (e.g. port 0 there).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Found a new cluster with this node as its first member; prints the join token.
    Init {
        #[arg(long, short)]
        config: PathBuf,
        /// The region this node is in, e.g. `eu-west`.
        #[arg(long)]
        region: String,
        /// Write the bound addresses (and the join token) as JSON here once serving.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        #[command(flatten)]
        workers: super::Workers,
    },
    /// Join an existing cluster through any member.
    Join {
        #[arg(long, short)]
        config: PathBuf,
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
        workers: super::Workers,
    },
    /// Show members, regions, voters and learners, the leader, the term and each node's lag.
    Status {
        #[command(flatten)]
        target: AdminTarget,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove this node from the cluster.
    Leave {
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

#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// Show a stage's deployment, variables and canary.
    Show {
        api: String,
        stage: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Set (`NAME=VALUE`) or remove (`--unset NAME`) stage variables.
    SetVar {
        api: String,
        stage: String,
        assignments: Vec<String>,
        #[arg(long)]
        unset: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Point the stage back at an earlier deployment (default: the one before).
    Rollback {
        api: String,
        stage: String,
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum CanaryCommand {
    /// Serve `--percent` of the stage's requests from `--deployment`.
    Set {
        api: String,
        stage: String,
        #[arg(long)]
        deployment: u64,
        #[arg(long)]
        percent: f64,
        /// Stage-variable overrides for canary requests, `NAME=VALUE`.
        #[arg(long = "var")]
        variables: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make the canary's deployment (and overrides) the stage's own.
    Promote {
        api: String,
        stage: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Stop the canary; the stage's own deployment serves everything.
    Clear {
        api: String,
        stage: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Create or replace a domain.
    Put {
        /// The host name, e.g. `api.example.com` or `*.example.com`.
        name: String,
        /// PEM certificate chain file (for HTTPS).
        #[arg(long, requires = "key")]
        certificate: Option<PathBuf>,
        /// PEM private key file.
        #[arg(long, requires = "certificate")]
        key: Option<PathBuf>,
        /// `BASE_PATH=API:STAGE`, e.g. `/=pets:prod` or `/v2=pets:beta`; repeatable.
        #[arg(long = "map")]
        mappings: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List the domains.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete a domain.
    Delete {
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// Create or replace a region's settings.
    Put {
        name: String,
        /// Relative DNS weight.
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
    /// Delete a region's settings.
    Delete {
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum DnsCommand {
    /// Manage the zones every DNS-serving node answers for.
    #[command(subcommand)]
    Zones(ZoneCommand),
    /// Explain how a node answers NAME for a client: ranking, latency sources, health.
    Explain {
        /// The queried name, e.g. api.example.com.
        name: String,
        /// The client (or its resolver, or the ECS subnet) address.
        #[arg(long)]
        client: std::net::IpAddr,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum ZoneCommand {
    /// Create or replace a zone from its YAML document (see docs/DNS.md).
    Put {
        file: PathBuf,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List the zones.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete a zone.
    Delete {
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

pub async fn dns(command: DnsCommand) -> anyhow::Result<ExitCode> {
    let (method, path, body, target) = match command {
        DnsCommand::Zones(ZoneCommand::Put { file, target }) => {
            let text = crate::config::read_bounded(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let zone = crate::cluster::dns::parse_zone(&text).map_err(|errors| {
                anyhow::anyhow!("{} is not a valid zone:\n  {}", file.display(), errors.join("\n  "))
            })?;
            let name = zone.origin.to_string().trim_end_matches('.').to_string();
            (Method::PUT, format!("/v1/dns/zones/{}", encode(&name)), Bytes::from(text), target)
        }
        DnsCommand::Zones(ZoneCommand::List { target }) => {
            (Method::GET, "/v1/dns/zones".to_string(), Bytes::new(), target)
        }
        DnsCommand::Zones(ZoneCommand::Delete { name, target }) => {
            (Method::DELETE, format!("/v1/dns/zones/{}", encode(&name)), Bytes::new(), target)
        }
        DnsCommand::Explain { name, client, json, target } => {
            let path = format!("/v1/dns/explain?client={client}&name={}", encode(&name));
            let (status, value) = admin_call(&target, Method::GET, &path, Bytes::new(), &[]).await?;
            if json || !(200..300).contains(&status) {
                return report(status, &value);
            }
            print!("{}", explain_text(&value));
            return Ok(ExitCode::SUCCESS);
        }
    };
    let (status, value) = admin_call(&target, method, &path, body, &[]).await?;
    report(status, &value)
}

/// `meridian dns explain` as a person reads it.
fn explain_text(v: &serde_json::Value) -> String {
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

pub async fn domains(command: DomainCommand) -> anyhow::Result<ExitCode> {
    let (method, path, body, target) = match command {
        DomainCommand::Put { name, certificate, key, mappings, target } => {
            let read = |p: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
                p.as_ref()
                    .map(|p| crate::config::read_bounded(p).with_context(|| format!("cannot read {}", p.display())))
                    .transpose()
            };
            let mut list = Vec::new();
            for m in &mappings {
                let parsed = m.split_once('=').and_then(|(base, target)| Some((base, target.split_once(':')?)));
                let Some((base, (api, stage))) = parsed else {
                    bail!("`{m}` is not BASE_PATH=API:STAGE (e.g. /=pets:prod)");
                };
                list.push(serde_json::json!({"base_path": base, "api": api, "stage": stage}));
            }
            let body =
                serde_json::json!({"certificate_pem": read(&certificate)?, "key_pem": read(&key)?, "mappings": list});
            (Method::PUT, format!("/v1/domains/{}", encode(&name)), Bytes::from(body.to_string()), target)
        }
        DomainCommand::List { target } => (Method::GET, "/v1/domains".to_string(), Bytes::new(), target),
        DomainCommand::Delete { name, target } => {
            (Method::DELETE, format!("/v1/domains/{}", encode(&name)), Bytes::new(), target)
        }
    };
    let (status, value) = admin_call(&target, method, &path, body, &[]).await?;
    report(status, &value)
}

pub async fn regions(command: RegionCommand) -> anyhow::Result<ExitCode> {
    let (method, path, body, target) = match command {
        RegionCommand::Put { name, weight, client_cidrs, target } => {
            let body = serde_json::json!({"weight": weight, "client_cidrs": client_cidrs});
            (Method::PUT, format!("/v1/regions/{}", encode(&name)), Bytes::from(body.to_string()), target)
        }
        RegionCommand::List { target } => (Method::GET, "/v1/regions".to_string(), Bytes::new(), target),
        RegionCommand::Delete { name, target } => {
            (Method::DELETE, format!("/v1/regions/{}", encode(&name)), Bytes::new(), target)
        }
    };
    let (status, value) = admin_call(&target, method, &path, body, &[]).await?;
    report(status, &value)
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; its value is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// Use this value instead of a generated one (20 to 128 characters).
        #[arg(long, env = "MERIDIAN_KEY_VALUE", hide_env_values = true)]
        value: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List keys (ids, names, plans; never values).
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Disable a key (by id or name).
    Disable {
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Enable a key.
    Enable {
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Give a key a new value (printed once); the old one stops working.
    Rotate {
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete a key.
    Delete {
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Create a plan or set its throttle and quota.
    Create {
        #[arg(long)]
        name: String,
        /// Requests per second per key.
        #[arg(long)]
        rate: Option<u64>,
        #[arg(long)]
        burst: Option<u64>,
        /// `LIMIT/day`, `LIMIT/week` or `LIMIT/month` per key (UTC periods).
        #[arg(long)]
        quota: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make the plan cover a stage, optionally with a per-route throttle.
    Attach {
        plan: String,
        #[arg(long)]
        api: String,
        #[arg(long)]
        stage: String,
        /// A route key such as `GET /pets` for a per-route throttle.
        #[arg(long, requires = "rate")]
        route: Option<String>,
        #[arg(long, requires = "route")]
        rate: Option<u64>,
        #[arg(long)]
        burst: Option<u64>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Add a key (id or name) to the plan.
    AddKey {
        plan: String,
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List the plans.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
}

pub async fn keys(command: KeyCommand) -> anyhow::Result<ExitCode> {
    let (method, path, body, target) = match command {
        KeyCommand::Create { name, value, target } => {
            let body = serde_json::json!({ "name": name, "value": value });
            (Method::POST, "/v1/keys".to_string(), Bytes::from(body.to_string()), target)
        }
        KeyCommand::List { target } => (Method::GET, "/v1/keys".to_string(), Bytes::new(), target),
        KeyCommand::Disable { key, target } => {
            (Method::POST, format!("/v1/keys/{}/disable", encode(&key)), Bytes::new(), target)
        }
        KeyCommand::Enable { key, target } => {
            (Method::POST, format!("/v1/keys/{}/enable", encode(&key)), Bytes::new(), target)
        }
        KeyCommand::Rotate { key, target } => {
            (Method::POST, format!("/v1/keys/{}/rotate", encode(&key)), Bytes::new(), target)
        }
        KeyCommand::Delete { key, target } => {
            (Method::DELETE, format!("/v1/keys/{}", encode(&key)), Bytes::new(), target)
        }
    };
    let (status, value) = admin_call(&target, method, &path, body, &[]).await?;
    report(status, &value)
}

pub async fn plans(command: PlanCommand) -> anyhow::Result<ExitCode> {
    let (method, path, body, target) = match command {
        PlanCommand::Create { name, rate, burst, quota, target } => {
            let body = serde_json::json!({ "rate": rate, "burst": burst, "quota": quota });
            (Method::PUT, format!("/v1/plans/{}", encode(&name)), Bytes::from(body.to_string()), target)
        }
        PlanCommand::Attach { plan, api, stage, route, rate, burst, target } => {
            let body = serde_json::json!({ "api": api, "stage": stage, "route": route, "rate": rate, "burst": burst });
            (Method::POST, format!("/v1/plans/{}/attach", encode(&plan)), Bytes::from(body.to_string()), target)
        }
        PlanCommand::AddKey { plan, key, target } => {
            let body = serde_json::json!({ "key": key });
            (Method::POST, format!("/v1/plans/{}/keys", encode(&plan)), Bytes::from(body.to_string()), target)
        }
        PlanCommand::List { target } => (Method::GET, "/v1/plans".to_string(), Bytes::new(), target),
    };
    let (status, value) = admin_call(&target, method, &path, body, &[]).await?;
    report(status, &value)
}

pub async fn usage(
    plan: &str,
    key: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    format: &str,
    target: &AdminTarget,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/usage?plan={}", encode(plan));
    for (name, value) in [("key", key), ("from", from), ("to", to)] {
        if let Some(v) = value {
            path.push_str(&format!("&{name}={}", encode(v)));
        }
    }
    let (status, value) = admin_call(target, Method::GET, &path, Bytes::new(), &[]).await?;
    if status != 200 || format == "json" {
        return report(status, &value);
    }
    let keys = value["keys"].as_array().cloned().unwrap_or_default();
    if format == "csv" {
        println!("key_id,key_name,date,requests");
        for k in &keys {
            for d in k["days"].as_array().into_iter().flatten() {
                println!(
                    "{},{},{},{}",
                    k["id"].as_str().unwrap_or(""),
                    k["name"].as_str().unwrap_or("").replace(',', " "),
                    d["date"].as_str().unwrap_or(""),
                    d["requests"]
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("usage plan {plan}, {} to {}", value["from"].as_str().unwrap_or(""), value["to"].as_str().unwrap_or(""));
    for k in &keys {
        let quota = match k["quota"].as_object() {
            Some(q) => format!(
                "quota {}/{}: {} used, {} left",
                q["limit"],
                q["period"].as_str().unwrap_or(""),
                q["used"],
                q["remaining"]
            ),
            None => "no quota".to_string(),
        };
        println!(
            "\n{} ({}): {} requests; {quota}",
            k["name"].as_str().unwrap_or(""),
            k["id"].as_str().unwrap_or(""),
            k["total"]
        );
        for d in k["days"].as_array().into_iter().flatten().filter(|d| d["requests"].as_u64() != Some(0)) {
            println!("  {}  {:>10}", d["date"].as_str().unwrap_or(""), d["requests"]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn assignments(list: &[String]) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut map = serde_json::Map::new();
    for a in list {
        let Some((k, v)) = a.split_once('=') else {
            bail!("`{a}` is not NAME=VALUE");
        };
        map.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    Ok(map)
}

pub async fn canary(command: CanaryCommand) -> anyhow::Result<ExitCode> {
    let (method, path, body, target) = match command {
        CanaryCommand::Set { api, stage, deployment, percent, variables, target } => {
            let body = serde_json::json!({ "deployment": deployment, "percent": percent, "variables": assignments(&variables)? });
            let path = format!("/v1/apis/{}/stages/{}/canary", encode(&api), encode(&stage));
            (Method::POST, path, Bytes::from(body.to_string()), target)
        }
        CanaryCommand::Promote { api, stage, target } => {
            let path = format!("/v1/apis/{}/stages/{}/canary/promote", encode(&api), encode(&stage));
            (Method::POST, path, Bytes::new(), target)
        }
        CanaryCommand::Clear { api, stage, target } => {
            let path = format!("/v1/apis/{}/stages/{}/canary", encode(&api), encode(&stage));
            (Method::DELETE, path, Bytes::new(), target)
        }
    };
    let (status, value) = admin_call(&target, method, &path, body, &[]).await?;
    report(status, &value)
}

/// The admin address and token of the node described by `config`.
fn admin_of(target: &AdminTarget) -> anyhow::Result<(SocketAddr, String)> {
    let config = load_file(&target.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = config.admin_token.with_context(|| {
        format!("{} has no admin.token_file: cluster commands need the admin token", target.config.display())
    })?;
    Ok((target.admin.unwrap_or(config.admin_listen), token))
}

async fn admin_call(
    target: &AdminTarget,
    method: Method,
    path: &str,
    body: Bytes,
    headers: &[(&str, String)],
) -> anyhow::Result<(u16, serde_json::Value)> {
    let (addr, token) = admin_of(target)?;
    let (status, text) = client::call(addr, method, path, Some(&token), body, headers).await?;
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok((status, value))
}

fn report(status: u16, value: &serde_json::Value) -> anyhow::Result<ExitCode> {
    if (200..300).contains(&status) {
        println!("{}", serde_json::to_string_pretty(value)?);
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("refused ({status}): {}", value["message"].as_str().unwrap_or(&value.to_string()));
    if let Some(errors) = value["errors"].as_array() {
        for e in errors {
            eprintln!(
                "  line {}:{}: {}: {}",
                e["line"],
                e["column"],
                e["field"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::from(1))
}

async fn start_node(config: &Path) -> anyhow::Result<(Node, crate::config::ClusterSettings)> {
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

pub async fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Init { config, region, ready_file, .. } => {
            check_region(&region)?;
            let (node, settings) = start_node(&config).await?;
            let (member, token) = ClusterMember::init(&settings, node.advertised(&region)).await?;
            node.attach_cluster(member);
            println!("cluster founded in region {region}; join other nodes with:");
            println!(
                "  meridian cluster join --peer {} --token {token} --region REGION --config node.yaml",
                settings.advertise_rpc
            );
            if let Some(path) = ready_file {
                write_ready_file(&node, &path)?;
                std::fs::write(path.with_extension("token"), &token)?;
            }
            node.run_until_signal().await?;
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Join { config, region, peer, token, ready_file, .. } => {
            check_region(&region)?;
            let (node, settings) = start_node(&config).await?;
            let member = ClusterMember::join(&settings, node.advertised(&region), &peer, &token).await?;
            println!("joined the cluster as node {} in region {region}", member.id);
            node.attach_cluster(member);
            if let Some(path) = ready_file {
                write_ready_file(&node, &path)?;
            }
            node.run_until_signal().await?;
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Status { target, json } => {
            let (status, value) = admin_call(&target, Method::GET, "/v1/cluster", Bytes::new(), &[]).await?;
            if json || status != 200 {
                return report(status, &value);
            }
            println!(
                "node {} ({}) sees leader {}, term {}, revision {}",
                value["node_id"],
                value["state"].as_str().unwrap_or("?"),
                value["leader"],
                value["term"],
                value["revision"]
            );
            println!(
                "{:<4} {:<12} {:<8} {:<12} {:>8} {:>6}  {:<22} {:<22}",
                "ID", "REGION", "ROLE", "STATE", "REVISION", "LAG", "RPC", "GATEWAY"
            );
            for m in value["members"].as_array().into_iter().flatten() {
                let number = |v: &serde_json::Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
                println!(
                    "{:<4} {:<12} {:<8} {:<12} {:>8} {:>6}  {:<22} {:<22}",
                    m["id"].to_string(),
                    m["region"].as_str().unwrap_or(""),
                    m["role"].as_str().unwrap_or(""),
                    m["state"].as_str().unwrap_or(""),
                    number(&m["revision"]),
                    number(&m["lag"]),
                    m["rpc"].as_str().unwrap_or(""),
                    m["gateway"].as_str().unwrap_or(""),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Promote { node, target } => {
            let path = format!("/v1/cluster/promote?node={node}");
            let (status, value) = admin_call(&target, Method::POST, &path, Bytes::new(), &[]).await?;
            report(status, &value)
        }
        ClusterCommand::Leave { target } => {
            let (status, value) = admin_call(&target, Method::POST, "/v1/cluster/leave", Bytes::new(), &[]).await?;
            if status == 200 {
                println!(
                    "node {} left the cluster: its process stops now, and its data directory is cleared so it can join again",
                    value["node"]
                );
                return Ok(ExitCode::SUCCESS);
            }
            report(status, &value)
        }
    }
}

pub async fn apply(
    file: &Path,
    stage: &str,
    description: &str,
    if_revision: Option<u64>,
    target: &AdminTarget,
) -> anyhow::Result<ExitCode> {
    let text = crate::config::read_bounded(file).with_context(|| format!("cannot read {}", file.display()))?;
    // Validate locally first so errors name this file's lines. The stage's variables live in
    // the cluster: here each one the file uses gets a placeholder, and the node checks again
    // with the real values before anything is written.
    let placeholders = all_variables_placeholder(&text);
    let api = match crate::config::validate_definition(&text, &file.display().to_string(), stage, &placeholders) {
        Ok(d) => d.id,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let path = format!("/v1/apis/{api}/deployments?stage={}&description={}", encode(stage), encode(description));
    let headers: Vec<(&str, String)> = if_revision.map(|r| ("if-match", r.to_string())).into_iter().collect();
    let (status, value) = admin_call(target, Method::POST, &path, Bytes::from(text), &headers).await?;
    report(status, &value)
}

/// Placeholder values for every stage variable the text mentions.
fn all_variables_placeholder(text: &str) -> std::collections::BTreeMap<String, String> {
    crate::integration::uri::stage_variable_names(text).into_iter().map(|n| (n, "placeholder".to_string())).collect()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn deployments(api: &str, target: &AdminTarget) -> anyhow::Result<ExitCode> {
    let (status, value) =
        admin_call(target, Method::GET, &format!("/v1/apis/{}/deployments", encode(api)), Bytes::new(), &[]).await?;
    report(status, &value)
}

pub async fn stage(command: StageCommand) -> anyhow::Result<ExitCode> {
    match command {
        StageCommand::Show { api, stage, target } => {
            let path = format!("/v1/apis/{}/stages/{}", encode(&api), encode(&stage));
            let (status, value) = admin_call(&target, Method::GET, &path, Bytes::new(), &[]).await?;
            report(status, &value)
        }
        StageCommand::SetVar { api, stage, assignments: list, unset, target } => {
            let body = serde_json::json!({ "set": assignments(&list)?, "unset": unset }).to_string();
            let path = format!("/v1/apis/{}/stages/{}/variables", encode(&api), encode(&stage));
            let (status, value) = admin_call(&target, Method::POST, &path, Bytes::from(body), &[]).await?;
            report(status, &value)
        }
        StageCommand::Rollback { api, stage, to, target } => {
            let mut path = format!("/v1/apis/{}/stages/{}/rollback", encode(&api), encode(&stage));
            if let Some(to) = to {
                path.push_str(&format!("?to={to}"));
            }
            let (status, value) = admin_call(&target, Method::POST, &path, Bytes::new(), &[]).await?;
            report(status, &value)
        }
    }
}

/// Lines of `old` and `new` as a diff: `(' ' | '-' | '+', line)`, from a longest common
/// subsequence (definitions are small).
pub fn line_diff<'a>(old: &'a str, new: &'a str) -> Vec<(char, &'a str)> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(('+', b[j]));
            j += 1;
        } else {
            out.push(('-', a[i]));
            i += 1;
        }
    }
    out
}

pub async fn diff(file: &Path, stage: &str, target: &AdminTarget) -> anyhow::Result<ExitCode> {
    let text = crate::config::read_bounded(file).with_context(|| format!("cannot read {}", file.display()))?;
    let placeholders = all_variables_placeholder(&text);
    let definition = match crate::config::validate_definition(&text, &file.display().to_string(), stage, &placeholders)
    {
        Ok(d) => d,
        Err(errors) => {
            eprint!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let api = definition.id.clone();
    let (status, current) = admin_call(
        target,
        Method::GET,
        &format!("/v1/apis/{}/stages/{}", encode(&api), encode(stage)),
        Bytes::new(),
        &[],
    )
    .await?;
    let (old_text, old_vars) = if status == 404 {
        println!("stage `{stage}` of API `{api}` does not exist yet: apply would create it");
        (String::new(), serde_json::Map::new())
    } else if status != 200 {
        return report(status, &current);
    } else {
        let id = current["deployment"].as_u64().unwrap_or(0);
        let (status, deployment) =
            admin_call(target, Method::GET, &format!("/v1/apis/{}/deployments/{id}", encode(&api)), Bytes::new(), &[])
                .await?;
        if status != 200 {
            return report(status, &deployment);
        }
        println!("--- {api}/{stage}: deployment {id} (in the cluster)");
        println!("+++ {}", file.display());
        (
            deployment["definition"].as_str().unwrap_or("").to_string(),
            current["variables"].as_object().cloned().unwrap_or_default(),
        )
    };
    let mut changed = false;
    for (mark, line) in line_diff(&old_text, &definition.text) {
        if mark != ' ' {
            changed = true;
            println!("{mark}{line}");
        }
    }
    for (name, value) in definition.stage_variables.get(stage).into_iter().flatten() {
        if old_vars.get(name).and_then(|v| v.as_str()) != Some(value.as_str()) {
            changed = true;
            println!(
                "stage variable {name}: {} -> {value}",
                old_vars.get(name).map_or("(unset)".to_string(), |v| v.to_string())
            );
        }
    }
    if !changed {
        println!("no changes");
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::from(1))
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn diff_marks_added_and_removed_lines() {
        let d = line_diff("a\nb\nc\n", "a\nc\nd\n");
        assert_eq!(d, vec![(' ', "a"), ('-', "b"), (' ', "c"), ('+', "d")]);
        assert!(line_diff("x\n", "x\n").iter().all(|(m, _)| *m == ' '));
    }
}
