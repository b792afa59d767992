//! The `meridian` command line: each command is a thin call into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::admin::client;
use crate::config::load_file;
use crate::demo;
use crate::gateway::node::{ConfigSource, Node};

/// Meridian: a multi-region API gateway.
#[derive(Debug, Parser)]
#[command(name = "meridian", version, about)]
pub struct Cli {
    /// Worker threads for serving (default: the number of cores; 1 runs a single-threaded runtime).
    #[arg(long, global = true, env = "MERIDIAN_WORKERS")]
    pub workers: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a gateway node from a configuration file.
    Serve {
        /// The gateway configuration (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// Write the bound addresses as JSON to this file once serving.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Check a configuration file and list every error in it.
    Validate {
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
    /// Start a gateway with a sample API on loopback and print what to try.
    Demo {
        /// Address for API traffic.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Address for the admin API (metrics, health).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

impl Cli {
    /// The worker count to run with.
    pub fn worker_count(&self) -> anyhow::Result<usize> {
        match self.workers {
            Some(0) => bail!("--workers must be at least 1"),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }
}

/// Runs a parsed command line to completion.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, ready_file } => {
            let node = Node::start(ConfigSource::File(config)).await?;
            announce(&node);
            if let Some(path) = ready_file {
                // Written whole, then renamed, so a reader never sees half a file.
                let partial = path.with_extension("partial");
                std::fs::write(&partial, node.addresses_json())
                    .and_then(|_| std::fs::rename(&partial, &path))
                    .with_context(|| format!("cannot write the ready file {}", path.display()))?;
            }
            node.run_until_signal().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { config } => match load_file(&config) {
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
            let (status, body) =
                client::call(admin.unwrap_or(c.admin_listen), http::Method::POST, "/v1/reload", Some(&token)).await?;
            if status == 200 {
                println!("reloaded: {body}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("reload refused ({status}): {body}");
                Ok(ExitCode::from(1))
            }
        }
        Command::Demo { http, admin } => {
            let backend = demo::echo::spawn("127.0.0.1:0".parse()?).await.context("cannot start the echo backend")?;
            let text = demo::sample_config(http, admin, backend);
            let node = Node::start(ConfigSource::Text { name: "demo".into(), text }).await.context(
                "cannot start the demo gateway (is another demo running? pick other ports with --http/--admin)",
            )?;
            let (Some(http), admin) = (node.http_addr, node.admin_addr) else {
                bail!("the demo gateway has no http listener");
            };
            eprintln!("{}", demo::banner(http, admin));
            node.run_until_signal().await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn announce(node: &Node) {
    tracing::info!(
        http = ?node.http_addr,
        https = ?node.https_addr,
        admin = %node.admin_addr,
        "meridian node serving"
    );
}
