//! `meridian chaos`: list the shipped scenarios, run one or more of them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use meridian_chaos::SCENARIOS;
use meridian_chaos::runner::{RunOptions, run};
use meridian_chaos::scenario::Scenario;

#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// List the shipped scenarios and what each proves.
    List,
    /// Run scenarios (shipped names, files, or `all`); exits 1 if any invariant fails.
    Run {
        /// Scenario names (`meridian chaos list`) or YAML files.
        #[arg(required = true)]
        scenarios: Vec<String>,
        /// Seed for random fault schedules, jitter and loss (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Leave the nodes' data and logs on disk.
        #[arg(long)]
        keep: bool,
        /// Where reports (JSON and SVG) go.
        #[arg(long, default_value = "chaos-reports")]
        report_dir: PathBuf,
        /// Third octet of the cluster's addresses (127.R.SUBNET.N); clients use the next one.
        #[arg(long, default_value_t = 60)]
        subnet: u8,
    },
}

pub async fn run_command(command: ChaosCommand) -> anyhow::Result<ExitCode> {
    match command {
        ChaosCommand::List => {
            for (name, text) in SCENARIOS {
                let scenario = Scenario::parse(text).map_err(|e| anyhow::anyhow!("{name}: {}", e.join("; ")))?;
                println!("{name:<22} {:>4}s  {}", scenario.duration.as_secs(), scenario.description);
            }
            Ok(ExitCode::SUCCESS)
        }
        ChaosCommand::Run { scenarios, seed, keep, report_dir, subnet } => {
            if subnet > 253 {
                anyhow::bail!("--subnet must be at most 253 (clients use the next octet)");
            }
            meridian_chaos::launcher::use_binary(std::env::current_exe().context("cannot find the meridian binary")?);
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
            });
            let names: Vec<String> = if scenarios.iter().any(|s| s == "all") {
                SCENARIOS.iter().map(|(n, _)| n.to_string()).collect()
            } else {
                scenarios
            };
            let mut loaded = Vec::new();
            for name in &names {
                let text = match SCENARIOS.iter().find(|(n, _)| n == name) {
                    Some((_, text)) => text.to_string(),
                    None => meridian_dataplane::files::read_bounded(std::path::Path::new(name)).with_context(|| {
                        format!(
                            "`{name}` is neither a shipped scenario (see `meridian chaos list`) nor a readable file"
                        )
                    })?,
                };
                let scenario = Scenario::parse(&text)
                    .map_err(|e| anyhow::anyhow!("{name} is not a valid scenario:\n  {}", e.join("\n  ")))?;
                loaded.push(scenario);
            }
            let options = RunOptions { seed, keep, report_dir: report_dir.clone(), subnet, progress: true };
            let mut failed = Vec::new();
            for scenario in &loaded {
                let report = run(scenario, &options).await.with_context(|| format!("scenario {}", scenario.name))?;
                println!("{}", report.summary());
                if !report.kept.is_empty() {
                    println!("  kept: {}", report.kept.join(" "));
                }
                if !report.passed {
                    failed.push(scenario.name.clone());
                }
            }
            println!("reports in {} (JSON and SVG per scenario, seed {seed})", report_dir.display());
            if failed.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("failed: {}", failed.join(", "));
                Ok(ExitCode::from(1))
            }
        }
    }
}
