//! `meridian import openapi`: an OpenAPI document (JSON or YAML, as a managed gateway exports
//! it) into a Meridian API definition ([`meridian_openapi`]), checked by the same compiler as
//! `apply`, with a report of what was not carried over.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::Value;

/// Documents larger than this are refused before they are parsed.
const MAX_DOCUMENT: u64 = 16 << 20;

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Read an OpenAPI 3.0/3.1 or Swagger 2.0 document (with the managed gateway's
    /// `x-amazon-apigateway-*` extensions) into an API definition for `meridian apply`.
    /// The report (stderr) lists every element that was not carried over, with its JSON
    /// pointer and what to do instead.
    Openapi {
        /// The document (JSON or YAML).
        file: PathBuf,
        /// The API's id (default: from the document's title).
        #[arg(long)]
        api: Option<String>,
        /// The stage the definition declares (default: the document's base path, else prod).
        #[arg(long)]
        stage: Option<String>,
        /// The HTTP endpoint of a request or token authorizer, by its name in the document
        /// (repeatable).
        #[arg(long = "authorizer-uri", value_name = "NAME=URL")]
        authorizer_uris: Vec<String>,
        /// Write the definition to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Only check and report; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Fail (exit 1) when anything was not carried over.
        #[arg(long)]
        strict: bool,
    },
}

pub fn run(command: ImportCommand) -> anyhow::Result<ExitCode> {
    let ImportCommand::Openapi { file, api, stage, authorizer_uris, output, dry_run, strict } = command;
    let mut uris = BTreeMap::new();
    for pair in &authorizer_uris {
        let Some((name, url)) = pair.split_once('=') else {
            bail!("--authorizer-uri takes NAME=URL, not `{pair}`");
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--authorizer-uri {name}: `{url}` is not an http or https URL");
        }
        uris.insert(name.to_string(), url.to_string());
    }
    let size = std::fs::metadata(&file).with_context(|| format!("cannot read {}", file.display()))?.len();
    if size > MAX_DOCUMENT {
        bail!("{} is {size} bytes; documents up to {MAX_DOCUMENT} bytes are imported", file.display());
    }
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let document: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => serde_saphyr::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is neither JSON nor YAML: {e}", file.display()))?,
    };
    let options = meridian_openapi::Options { api_id: api, stage, authorizer_uris: uris };
    let imported =
        meridian_openapi::import(&document, &options).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;

    let yaml = serde_saphyr::to_string(&imported.definition).context("the definition cannot be written as YAML")?;
    let definition = format!("# Imported from {} by `meridian import openapi`.\n{yaml}", file.display());
    let stage_name = imported.definition["apis"][0]["stages"][0]["name"].as_str().unwrap_or("prod").to_string();
    let checked =
        crate::config::validate_definition(&definition, "the imported definition", &stage_name, &BTreeMap::new());

    eprintln!(
        "imported {} of {} operations from {} ({} finding{})",
        imported.routes,
        imported.operations,
        file.display(),
        imported.report.len(),
        if imported.report.len() == 1 { "" } else { "s" }
    );
    for finding in &imported.report {
        eprintln!("  {}: {}", finding.pointer, finding.message);
    }
    if let Err(errors) = &checked {
        eprint!("{errors}");
        eprintln!("the imported definition does not validate: edit it before `meridian apply`");
    }
    if !dry_run {
        match &output {
            Some(path) => {
                std::fs::write(path, &definition).with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!(
                    "wrote {}; deploy it with `meridian apply -f {} --stage {stage_name}`",
                    path.display(),
                    path.display()
                );
            }
            None => print!("{definition}"),
        }
    }
    let failed = checked.is_err() || (strict && !imported.report.is_empty());
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
