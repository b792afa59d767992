//! `meridian credentials`: access keys for signed (SigV4) requests. The secret is printed
//! once, when created; the cluster keeps it sealed and never lists it.

use std::process::ExitCode;

use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::output::{Table, cell, fields};
use super::target::{AdminTarget, call, encode, get};

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Create an access key id and secret; the secret is printed once.
    Create {
        /// A unique name, e.g. the partner's.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List credentials (access key ids and names; never secrets).
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show one set of credentials (by access key id or name).
    Show {
        /// The access key id or name.
        credential: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Disable credentials: their signatures are refused until enabled again.
    Disable {
        /// The access key id or name.
        credential: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Enable credentials again.
    Enable {
        /// The access key id or name.
        credential: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete credentials.
    Delete {
        /// The access key id or name.
        credential: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

fn table(v: &Value) -> String {
    let mut table = Table::new(&["ACCESS KEY ID", "NAME", "ENABLED", "CREATED"]);
    for c in v["credentials"].as_array().into_iter().flatten() {
        table.row(["id", "name", "enabled", "created_at"].iter().map(|f| cell(&c[*f])).collect());
    }
    table.render("no credentials yet: create some with `meridian credentials create --name NAME`")
}

fn shown_once(v: &Value) -> String {
    format!(
        "credentials {}\naccess key id:     {}\nsecret access key: {}\nthe secret is shown only now; the cluster keeps it sealed (revision {})\n",
        cell(&v["name"]),
        cell(&v["access_key_id"]),
        cell(&v["secret_access_key"]),
        cell(&v["revision"])
    )
}

pub async fn run(command: CredentialCommand) -> anyhow::Result<ExitCode> {
    let action = |credential: &str, action: &str| format!("/v1/credentials/{}/{action}", encode(credential));
    Ok(match command {
        CredentialCommand::Create { name, target } => {
            let body = serde_json::json!({ "name": name });
            let answer = call(&target, Method::POST, "/v1/credentials", Bytes::from(body.to_string()), &[]).await?;
            answer.show(target.output, shown_once)
        }
        CredentialCommand::List { target } => get(&target, "/v1/credentials").await?.show(target.output, table),
        CredentialCommand::Show { credential, target } => {
            get(&target, &format!("/v1/credentials/{}", encode(&credential))).await?.show(target.output, |v| {
                fields(
                    v,
                    &[("access key id", "id"), ("name", "name"), ("enabled", "enabled"), ("created", "created_at")],
                )
            })
        }
        CredentialCommand::Disable { credential, target } => {
            let path = action(&credential, "disable");
            call(&target, Method::POST, &path, Bytes::new(), &[])
                .await?
                .written(target.output, &format!("credentials {credential} disabled"))
        }
        CredentialCommand::Enable { credential, target } => {
            let path = action(&credential, "enable");
            call(&target, Method::POST, &path, Bytes::new(), &[])
                .await?
                .written(target.output, &format!("credentials {credential} enabled"))
        }
        CredentialCommand::Delete { credential, target } => {
            let path = format!("/v1/credentials/{}", encode(&credential));
            call(&target, Method::DELETE, &path, Bytes::new(), &[])
                .await?
                .written(target.output, &format!("credentials {credential} deleted"))
        }
    })
}
