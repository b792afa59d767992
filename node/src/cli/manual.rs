//! `meridian completions SHELL` and `meridian man`: shell completions and man pages generated
//! from the command-line definition itself, so they never drift from it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

/// Prints the completion script for `shell` (`source <(meridian completions bash)`).
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "meridian", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// Prints `meridian(1)`, or with `dir` writes a page per command there (`meridian-apply.1`,
/// `meridian-cluster-init.1`, ...).
pub fn man(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let command = Cli::command();
    match dir {
        None => {
            clap_mangen::Man::new(command).render(&mut std::io::stdout()).context("cannot write the page")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write pages in {}", dir.display()))?;
            let pages = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
            eprintln!("wrote {pages} pages in {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
