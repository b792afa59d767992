//! The `meridian` command line: each command is a thin call into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

mod access;
mod apis;
mod cache;
mod chaos;
mod cluster;
mod connections;
mod credentials;
mod demo;
mod dns;
mod domains;
mod explain;
mod manual;
mod openapi;
mod output;
mod sync;
mod target;

use crate::admin::client;
use crate::node::Node;
use crate::reload::ConfigSource;
use meridian_dataplane::config::load_file;

pub use access::{KeyCommand, PlanCommand};
pub use apis::{ApisCommand, CanaryCommand, DeploymentsCommand, StageCommand};
pub use cluster::ClusterCommand;
pub use dns::{DnsCommand, RegionCommand, ZoneCommand};
pub use domains::DomainCommand;
pub use output::Output;
pub use target::AdminTarget;

/// Meridian: a multi-region API gateway.
#[derive(Debug, Parser)]
#[command(name = "meridian", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How many threads a serving command runs on (only the commands that serve take it).
#[derive(Debug, Clone, Copy, Args)]
pub struct Workers {
    /// Worker threads for serving (default: the number of cores; 1 runs a single-threaded
    /// runtime).
    #[arg(long = "workers", env = "MERIDIAN_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub count: Option<u16>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a gateway node from a configuration file.
    Serve {
        /// The node's configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// Write the bound addresses as JSON to this file once serving.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        #[command(flatten)]
        workers: Workers,
    },
    /// Check a configuration file, or an API definition (`apis:` only), and list every
    /// error in it: a definition gets the very checks `apply` makes.
    Validate {
        /// The file to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask a running node to reload its configuration (through its admin API).
    Reload {
        /// The node's configuration file; its `admin` section says where and with which token.
        #[arg(long, short)]
        config: PathBuf,
        /// The admin address to call, when it differs from the file's (e.g. port 0 there).
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Create, join, leave or inspect a cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Deploy an API definition to a stage of the cluster (validated first; an unchanged
    /// definition creates no deployment).
    Apply {
        /// A file holding one API definition (`apis:` with one entry).
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// The stage to deploy it to (created if it does not exist).
        #[arg(long)]
        stage: String,
        /// What this deployment is, shown in `deployments list`.
        #[arg(long, default_value = "")]
        description: String,
        /// Only apply if the cluster is still at this revision.
        #[arg(long)]
        if_revision: Option<u64>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show what `apply` would change on a stage (exit 1 if anything), without changing it.
    Diff {
        /// A file holding one API definition.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// The stage to compare with.
        #[arg(long)]
        stage: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make the cluster match a folder (APIs, zones, regions, domains, plans), like decK:
    /// every file checked first, the changes listed, then made.
    Sync {
        /// The folder (see docs/CLUSTER.md for its layout).
        #[arg(long, short = 'f')]
        dir: PathBuf,
        /// List the changes without making them.
        #[arg(long)]
        dry_run: bool,
        /// Also delete regions, zones, domains and plans the folder does not name.
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List and show the cluster's APIs.
    #[command(subcommand)]
    Apis(ApisCommand),
    /// List an API's deployments, or show one with its definition.
    #[command(subcommand)]
    Deployments(DeploymentsCommand),
    /// List and show stages, set their variables, roll them back.
    #[command(subcommand)]
    Stage(StageCommand),
    /// Send a share of a stage's requests to another deployment, promote it, or clear it.
    #[command(subcommand)]
    Canary(CanaryCommand),
    /// Manage the cluster's custom domains (certificates and base-path mappings).
    #[command(subcommand)]
    Domains(DomainCommand),
    /// Manage the cluster's regions (DNS weight, client networks).
    #[command(subcommand)]
    Regions(RegionCommand),
    /// Manage DNS zones and explain the answers.
    #[command(subcommand)]
    Dns(DnsCommand),
    /// Empty stages' response caches on every node.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Show, send to and close a WebSocket API's connections, on whichever node holds them.
    #[command(subcommand)]
    Connections(connections::ConnectionsCommand),
    /// Explain what a node would do with a request.
    #[command(subcommand)]
    Explain(explain::ExplainCommand),
    /// Import an API from another format (an OpenAPI document a managed gateway exported).
    #[command(subcommand)]
    Import(openapi::ImportCommand),
    /// Export an API in another format (OpenAPI 3.0).
    #[command(subcommand)]
    Export(openapi::ExportCommand),
    /// Print the shell completion script (`source <(meridian completions bash)`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one per command into a folder.
    Man {
        /// Write `meridian.1`, `meridian-apply.1`, ... here instead of printing `meridian(1)`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run chaos scenarios: real nodes, faults on their links, invariants checked.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// Manage API keys (values are shown once and stored hashed).
    #[command(subcommand)]
    Keys(KeyCommand),
    /// Manage credentials for signed requests (SigV4 access keys; secrets shown once, stored
    /// sealed).
    #[command(subcommand)]
    Credentials(credentials::CredentialCommand),
    /// Manage usage plans: throttles, quotas, the stages they cover, their keys.
    #[command(subcommand)]
    Plans(PlanCommand),
    /// Each key's daily usage and remaining quota under a plan, as the cluster counts them.
    Usage {
        /// The usage plan.
        #[arg(long)]
        plan: String,
        /// One key (id or name); all of the plan's keys by default.
        #[arg(long)]
        key: Option<String>,
        /// First day, `YYYY-MM-DD` (default: 29 days ago).
        #[arg(long)]
        from: Option<String>,
        /// Last day, `YYYY-MM-DD` (default: today).
        #[arg(long)]
        to: Option<String>,
        /// One line per key and day, as CSV.
        #[arg(long, conflicts_with = "output")]
        csv: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Start a local cluster, one node per region on loopback, serving a sample API.
    Demo {
        /// Region R's node listens on 127.R.SUBNET.1 (gateway :8080, admin :9901, RPC :7001).
        #[arg(long, default_value_t = 0)]
        subnet: u8,
        #[command(flatten)]
        workers: Workers,
    },
}

impl Cli {
    /// Whether this command serves traffic itself (a node, the demo, the chaos suite's
    /// proxies), rather than printing an answer and exiting.
    pub fn serves(&self) -> bool {
        matches!(
            self.command,
            Command::Serve { .. }
                | Command::Demo { .. }
                | Command::Cluster(cluster::ClusterCommand::Init { .. } | cluster::ClusterCommand::Join { .. })
                | Command::Chaos(chaos::ChaosCommand::Run { .. })
        )
    }

    /// The worker threads to run with: what a serving command was given, the number of
    /// cores for the chaos suite, and one for commands that only call the admin API.
    pub fn worker_count(&self) -> usize {
        let given = match &self.command {
            Command::Serve { workers, .. } | Command::Demo { workers, .. } => Some(workers),
            Command::Cluster(
                cluster::ClusterCommand::Init { workers, .. } | cluster::ClusterCommand::Join { workers, .. },
            ) => Some(workers),
            Command::Chaos(chaos::ChaosCommand::Run { .. }) => None,
            _ => return 1,
        };
        match given.and_then(|w| w.count) {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Runs a parsed command line to completion.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, ready_file, .. } => {
            let node = Node::start(ConfigSource::File(config)).await?;
            announce(&node);
            if let Some(settings) = node.cluster.clone() {
                if !crate::cluster::member::is_initialized(&settings.data_dir) {
                    bail!(
                        "{} holds no cluster member yet: run `meridian cluster init` or `meridian cluster join` first",
                        settings.data_dir.display()
                    );
                }
                let member = crate::cluster::member::ClusterMember::resume(
                    &settings,
                    node.advertised("", settings.advertise_address),
                    node.rpc_handlers(),
                )
                .await?;
                node.attach_cluster(member);
            }
            if let Some(path) = ready_file {
                write_ready_file(&node, &path)?;
            }
            node.run_until_signal().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { config } => match apis::validate_definition_file(&config)? {
            Some(code) => Ok(code),
            None => validate_node_file(&config),
        },
        Command::Reload { config, admin } => {
            let c = match load_file(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprint!("{errors}");
                    eprintln!("not reloading: the file has errors");
                    return Ok(ExitCode::from(2));
                }
            };
            let Some(token) = c.admin_token else {
                bail!("the configuration has no admin.token_file: reload this node with `kill -HUP <pid>`");
            };
            let (status, body) = client::call(
                admin.unwrap_or(c.admin_listen),
                http::Method::POST,
                "/v1/reload",
                Some(&token),
                bytes::Bytes::new(),
                &[],
            )
            .await?;
            if status == 200 {
                let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let revision = body["revision"].as_u64().unwrap_or(0);
                let waiting: Vec<&str> =
                    body["needs_restart"].as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect();
                if waiting.is_empty() {
                    println!("reloaded: serving configuration revision {revision}");
                } else {
                    println!(
                        "reloaded what can change while running (revision {revision}); restart the node to apply: {}",
                        waiting.join(", ")
                    );
                }
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("reload refused ({status}): {body}");
                Ok(ExitCode::from(1))
            }
        }
        Command::Cluster(command) => cluster::run(command).await,
        Command::Apply { file, stage, description, if_revision, target } => {
            apis::apply(&file, &stage, &description, if_revision, &target).await
        }
        Command::Diff { file, stage, target } => apis::diff(&file, &stage, &target).await,
        Command::Sync { dir, dry_run, prune, target } => sync::sync(&dir, dry_run, prune, &target).await,
        Command::Apis(command) => apis::apis(command).await,
        Command::Deployments(command) => apis::deployments(command).await,
        Command::Stage(command) => apis::stage(command).await,
        Command::Canary(command) => apis::canary(command).await,
        Command::Domains(command) => domains::domains(command).await,
        Command::Regions(command) => dns::regions(command).await,
        Command::Dns(command) => dns::dns(command).await,
        Command::Explain(command) => explain::run(command).await,
        Command::Import(command) => openapi::import(command),
        Command::Export(command) => openapi::export(command).await,
        Command::Completions { shell } => Ok(manual::completions(shell)),
        Command::Man { dir } => manual::man(dir.as_deref()),
        Command::Cache(command) => cache::run(command).await,
        Command::Connections(command) => connections::run(command).await,
        Command::Chaos(command) => chaos::run_command(command).await,
        Command::Keys(command) => access::keys(command).await,
        Command::Usage { plan, key, from, to, csv, target } => {
            access::usage(&plan, key.as_deref(), from.as_deref(), to.as_deref(), csv, &target).await
        }
        Command::Plans(command) => access::plans(command).await,
        Command::Credentials(command) => credentials::run(command).await,
        Command::Demo { subnet, .. } => demo::run(subnet).await,
    }
}

/// `meridian validate` on a node's configuration file.
fn validate_node_file(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    match load_file(config) {
        Ok(c) => {
            let stages: usize = c.table.apis.values().map(|s| s.len()).sum();
            println!(
                "{}: valid ({} APIs, {} stages, {} domains)",
                config.display(),
                c.table.apis.len(),
                stages,
                c.table.domains.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprint!("{errors}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Writes the node's bound addresses to `path`, whole, then renamed, so a reader never sees
/// half a file.
pub(crate) fn write_ready_file(node: &Node, path: &std::path::Path) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, node.addresses_json())
        .and_then(|_| std::fs::rename(&partial, path))
        .with_context(|| format!("cannot write the ready file {}", path.display()))
}

pub(crate) fn announce(node: &Node) {
    tracing::info!(
        http = ?node.http_addr,
        https = ?node.https_addr,
        admin = %node.admin_addr,
        "meridian node serving"
    );
}
