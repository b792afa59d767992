//! `meridian import openapi` and `meridian export openapi`: an OpenAPI document (JSON or
//! YAML, as a managed gateway exports it) into a Meridian API definition, checked by the same
//! compiler as `apply`, with a report of what was not carried over; and a deployed (or
//! local) definition out as an OpenAPI 3.0 document ([`meridian_openapi`] does both).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::Value;

use super::output::{Output, refused};
use super::target::{AdminTarget, encode, get};

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Read an OpenAPI 3.0/3.1 or Swagger 2.0 document (with the managed gateway's
    /// `x-amazon-apigateway-*` extensions; at most 16 MiB) into an API definition for
    /// `meridian apply`.
    /// The report (stderr) lists every element that was not carried over, with its JSON
    /// pointer and what to do instead.
    Openapi {
        /// The document (JSON or YAML).
        document: PathBuf,
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
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        /// Only check and report; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Fail (exit 1) when anything was not carried over.
        #[arg(long)]
        strict: bool,
    },
}

pub fn import(command: ImportCommand) -> anyhow::Result<ExitCode> {
    let ImportCommand::Openapi { document: file, api, stage, authorizer_uris, file: output, dry_run, strict } = command;
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
    let text =
        meridian_dataplane::files::read_bounded(&file).with_context(|| format!("cannot read {}", file.display()))?;
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
    let checked = meridian_dataplane::config::validate_definition(
        &definition,
        "the imported definition",
        &stage_name,
        &BTreeMap::new(),
    );

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

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Write an API as an OpenAPI 3.0 document (JSON): the definition a stage serves, from
    /// the cluster (`--config`), or a definition file (`--definition`).
    Openapi {
        /// The API's id.
        api: String,
        /// The stage whose deployment is exported.
        #[arg(long)]
        stage: String,
        /// `meridian`: every detail, so that `import openapi` gives the same definition back;
        /// `aws`: the managed gateway's extensions; `none`: plain OpenAPI.
        #[arg(long, value_enum, default_value_t = ExtensionSet::Meridian)]
        extensions: ExtensionSet,
        /// Export this definition file instead of asking the cluster.
        #[arg(long, conflicts_with_all = ["config", "admin"])]
        definition: Option<PathBuf>,
        /// A node's configuration file (its admin address and token).
        #[arg(long, short, required_unless_present = "definition")]
        config: Option<PathBuf>,
        /// The admin address, when it differs from the file's.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Write the document to this file instead of standard output.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExtensionSet {
    Meridian,
    Aws,
    None,
}

pub async fn export(command: ExportCommand) -> anyhow::Result<ExitCode> {
    let ExportCommand::Openapi { api, stage, extensions, definition, config, admin, file } = command;
    let text = match (definition, config) {
        (Some(path), _) => std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?,
        (None, Some(config)) => {
            let target = AdminTarget { config, admin, output: Output::default() };
            let current = get(&target, &format!("/v1/apis/{}/stages/{}", encode(&api), encode(&stage))).await?;
            if !current.ok() {
                return Ok(refused(current.status, &current.value));
            }
            let id = current.value["deployment"].as_u64().unwrap_or(0);
            let deployment = get(&target, &format!("/v1/apis/{}/deployments/{id}", encode(&api))).await?;
            if !deployment.ok() {
                return Ok(refused(deployment.status, &deployment.value));
            }
            deployment.value["definition"].as_str().unwrap_or("").to_string()
        }
        (None, None) => bail!("give --config (a node of the cluster) or --definition FILE"),
    };
    let document: Value =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("the definition does not parse: {e}"))?;
    let Some(found) =
        document["apis"].as_array().into_iter().flatten().find(|a| a["id"].as_str() == Some(api.as_str()))
    else {
        bail!("the definition has no API `{api}`");
    };
    let extensions = match extensions {
        ExtensionSet::Meridian => meridian_openapi::Extensions::Meridian,
        ExtensionSet::Aws => meridian_openapi::Extensions::Aws,
        ExtensionSet::None => meridian_openapi::Extensions::None,
    };
    let exported = meridian_openapi::export(found, &stage, extensions).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut json = serde_json::to_string_pretty(&exported)?;
    json.push('\n');
    match file {
        Some(path) => {
            std::fs::write(&path, &json).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}
