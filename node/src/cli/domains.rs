//! `meridian domains`: custom domains, their certificates, their clients' certificates
//! (mutual TLS) and base-path mappings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::output::{Table, cell};
use super::target::{AdminTarget, call, encode, get};

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
        /// Mutual TLS: PEM CA certificates the clients' certificates must chain to.
        #[arg(long, requires = "certificate")]
        client_ca: Option<PathBuf>,
        /// PEM certificate revocation lists that withdraw client certificates.
        #[arg(long, requires = "client_ca")]
        client_crl: Option<PathBuf>,
        /// Serve clients without a valid certificate too (without an identity), instead of
        /// refusing their handshake.
        #[arg(long, requires = "client_ca")]
        client_certificate_optional: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List the domains.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show a domain's TLS and mappings.
    Show {
        /// The domain, e.g. `api.example.com`.
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete a domain.
    Delete {
        /// The domain, e.g. `api.example.com`.
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

pub async fn domains(command: DomainCommand) -> anyhow::Result<ExitCode> {
    let (method, path, body, target, said) = match command {
        DomainCommand::Put {
            name,
            certificate,
            key,
            mappings,
            client_ca,
            client_crl,
            client_certificate_optional,
            target,
        } => {
            let read = |p: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
                p.as_ref()
                    .map(|p| {
                        meridian_dataplane::files::read_bounded(p)
                            .with_context(|| format!("cannot read {}", p.display()))
                    })
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
            let mut body =
                serde_json::json!({"certificate_pem": read(&certificate)?, "key_pem": read(&key)?, "mappings": list});
            if let Some(ca_pem) = read(&client_ca)? {
                body["client_certificates"] = serde_json::json!({
                    "ca_pem": ca_pem,
                    "crl_pem": read(&client_crl)?,
                    "required": !client_certificate_optional,
                });
            }
            let said = format!("domain {name} saved");
            (Method::PUT, format!("/v1/domains/{}", encode(&name)), Bytes::from(body.to_string()), target, said)
        }
        DomainCommand::List { target } => {
            return Ok(get(&target, "/v1/domains").await?.show(target.output, |v| {
                let mut table = Table::new(&["DOMAIN", "TLS", "CLIENT CERTIFICATES", "MAPPINGS"]);
                for d in v["domains"].as_array().into_iter().flatten() {
                    table.row(vec![
                        cell(&d["name"]),
                        cell(&d["tls"]),
                        client_certificates(&d["client_certificates"]),
                        mappings(&d["mappings"]),
                    ]);
                }
                table.render("no custom domains yet: `meridian domains put NAME --map /=API:STAGE`")
            }));
        }
        DomainCommand::Show { name, target } => {
            return Ok(get(&target, &format!("/v1/domains/{}", encode(&name))).await?.show(target.output, |v| {
                let mut shown = v.clone();
                shown["mappings"] = Value::String(mappings(&v["mappings"]));
                shown["client_certificates"] = Value::String(client_certificates(&v["client_certificates"]));
                super::output::fields(
                    &shown,
                    &[
                        ("domain", "name"),
                        ("tls", "tls"),
                        ("client certificates", "client_certificates"),
                        ("mappings", "mappings"),
                    ],
                )
            }));
        }
        DomainCommand::Delete { name, target } => {
            let path = format!("/v1/domains/{}", encode(&name));
            let answer = call(&target, Method::DELETE, &path, Bytes::new(), &[]).await?;
            return Ok(answer.written(target.output, &format!("domain {name} deleted")));
        }
    };
    Ok(call(&target, method, &path, body, &[]).await?.written(target.output, &said))
}

/// A domain's mutual TLS in a word: `required`, `optional` (each with `+ CRL` when a
/// revocation list is set), or `-`.
fn client_certificates(policy: &Value) -> String {
    if policy.is_null() {
        return "-".into();
    }
    let mode = if policy["required"].as_bool().unwrap_or(true) { "required" } else { "optional" };
    if policy["crl_sha256"].is_string() { format!("{mode} + CRL") } else { mode.to_string() }
}

/// `BASE_PATH -> API:STAGE` for each mapping of a domain.
fn mappings(list: &Value) -> String {
    let shown: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| format!("{} -> {}:{}", cell(&m["base_path"]), cell(&m["api"]), cell(&m["stage"])))
        .collect();
    if shown.is_empty() { "-".into() } else { shown.join(", ") }
}
