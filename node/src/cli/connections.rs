//! `meridian connections show|send|close`: a `type: websocket` API's callback API from the
//! command line, through the admin API of the node it calls (which forwards to the node that
//! holds the connection).

use std::process::ExitCode;

use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::target::{AdminTarget, call, encode};

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Show a connection: when it connected, when it was last active, its client and identity.
    Show {
        #[command(flatten)]
        connection: ConnectionArgs,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Send a message to a connection's client (text when it is UTF-8).
    Send {
        #[command(flatten)]
        connection: ConnectionArgs,
        /// The message.
        #[arg(long)]
        message: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Close a connection (close code 1000); its `$disconnect` route is told.
    Close {
        #[command(flatten)]
        connection: ConnectionArgs,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// Which connection.
#[derive(Debug, clap::Args)]
pub struct ConnectionArgs {
    /// The WebSocket API's id.
    #[arg(long)]
    api: String,
    /// The stage the client connected to.
    #[arg(long)]
    stage: String,
    /// The connection's id (`X-Meridian-Connection-Id` of its handshake, `connectionId` of
    /// its events).
    id: String,
}

impl ConnectionArgs {
    fn path(&self) -> String {
        format!("/v1/apis/{}/stages/{}/connections/{}", encode(&self.api), encode(&self.stage), encode(&self.id))
    }
}

pub async fn run(command: ConnectionsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConnectionsCommand::Show { connection, target } => {
            let answer = call(&target, Method::GET, &connection.path(), Bytes::new(), &[]).await?;
            Ok(answer.show(target.output, shown))
        }
        ConnectionsCommand::Send { connection, message, target } => {
            let headers = [("content-type", "text/plain; charset=utf-8".to_string())];
            let answer = call(&target, Method::POST, &connection.path(), Bytes::from(message), &headers).await?;
            let said = format!("sent to {}\n", connection.id);
            Ok(answer.show(target.output, |_| said))
        }
        ConnectionsCommand::Close { connection, target } => {
            let answer = call(&target, Method::DELETE, &connection.path(), Bytes::new(), &[]).await?;
            let said = format!("closed {}\n", connection.id);
            Ok(answer.show(target.output, |_| said))
        }
    }
}

fn shown(v: &Value) -> String {
    let field = |name: &str| v[name].as_str().unwrap_or("-").to_string();
    let principal = v["identity"]["principal"].as_str().unwrap_or("-");
    format!(
        "connected at     {}\nlast active at   {}\nsource           {}\nprincipal        {principal}\n",
        field("connectedAt"),
        field("lastActiveAt"),
        field("sourceIp"),
    )
}
