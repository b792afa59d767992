//! Which node's admin API a command calls, and the call itself: the node is found through
//! its configuration file (the `admin` section gives the address and the token file) or
//! `--admin`; every call says who makes it (`x-meridian-actor: user@host`, recorded with
//! deployments).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http::Method;
use serde_json::Value;

use super::output::{Output, refused};
use crate::admin::client;
use meridian_dataplane::config::load_file;

/// The node to call and how to print its answer.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// The node's configuration file (its `admin` section: address and token file).
    #[arg(long, short)]
    pub config: PathBuf,
    /// The admin address, when it differs from the file's (e.g. port 0 there).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// How to print the answer: `text` for people, `json` or `yaml` for scripts.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// What the node answered: the status and the JSON document (or the text, as a string).
pub struct Answer {
    pub status: u16,
    pub value: Value,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Prints a successful answer with `text`, or the refusal.
    pub fn show(&self, output: Output, text: impl FnOnce(&Value) -> String) -> ExitCode {
        if self.ok() { output.print(&self.value, text) } else { refused(self.status, &self.value) }
    }

    /// Prints a write's answer (`done` says what happened), or the refusal.
    pub fn written(&self, output: Output, done: &str) -> ExitCode {
        if self.ok() { output.written(&self.value, done) } else { refused(self.status, &self.value) }
    }
}

/// The admin address and token of the node described by `target.config`.
fn admin_of(target: &AdminTarget) -> anyhow::Result<(SocketAddr, String)> {
    let config = load_file(&target.config).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
    let token = config.admin_token.with_context(|| {
        format!("{} has no admin.token_file: cluster commands need the admin token", target.config.display())
    })?;
    Ok((target.admin.unwrap_or(config.admin_listen), token))
}

/// `user@host`, for the record of who changed what.
fn actor() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let who = if host.is_empty() { user } else { format!("{user}@{host}") };
    who.chars().filter(|c| c.is_ascii_graphic()).take(128).collect()
}

/// Calls the admin API of the node `target` names.
pub async fn call(
    target: &AdminTarget,
    method: Method,
    path: &str,
    body: Bytes,
    headers: &[(&str, String)],
) -> anyhow::Result<Answer> {
    let (addr, token) = admin_of(target)?;
    let mut all: Vec<(&str, String)> = headers.to_vec();
    all.push(("x-meridian-actor", actor()));
    let (status, text) = client::call(addr, method, path, Some(&token), body, &all).await?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer { status, value })
}

/// A GET.
pub async fn get(target: &AdminTarget, path: &str) -> anyhow::Result<Answer> {
    call(target, Method::GET, path, Bytes::new(), &[]).await
}

/// Percent-encodes a path segment or query value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
