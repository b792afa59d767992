//! `meridian apply`, `diff`, `apis`, `deployments`, `stage` and `canary`: APIs, their
//! immutable deployments, and the stages that serve them.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::output::{Table, cell, fields, refused};
use super::target::{AdminTarget, call, encode, get};

#[derive(Debug, Subcommand)]
pub enum ApisCommand {
    /// List the APIs with their stages.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show an API: its stages and deployments.
    Show {
        /// The API id, e.g. `pets`.
        api: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// List an API's deployments: when, by whom, which stages serve them.
    List {
        /// The API id, e.g. `pets`.
        api: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show one deployment with its definition.
    Show {
        /// The API id, e.g. `pets`.
        api: String,
        /// The deployment id (see `deployments list`).
        id: u64,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// List an API's stages.
    List {
        /// The API id, e.g. `pets`.
        api: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show a stage's deployment, variables and canary.
    Show {
        /// The API id, e.g. `pets`.
        api: String,
        /// The stage, e.g. `prod`.
        stage: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Set (`NAME=VALUE`) or remove (`--unset NAME`) stage variables.
    SetVar {
        /// The API id, e.g. `pets`.
        api: String,
        /// The stage, e.g. `prod`.
        stage: String,
        /// `NAME=VALUE` pairs to set.
        assignments: Vec<String>,
        /// A variable to remove; repeatable.
        #[arg(long)]
        unset: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Point the stage back at an earlier deployment (default: the one before).
    Rollback {
        /// The API id, e.g. `pets`.
        api: String,
        /// The stage, e.g. `prod`.
        stage: String,
        /// The deployment to serve.
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum CanaryCommand {
    /// Serve `--percent` of the stage's requests from `--deployment`.
    Set {
        /// The API id, e.g. `pets`.
        api: String,
        /// The stage, e.g. `prod`.
        stage: String,
        /// The deployment the canary serves.
        #[arg(long)]
        deployment: u64,
        /// The share of requests, 0.01 to 99.99.
        #[arg(long)]
        percent: f64,
        /// Stage-variable overrides for canary requests, `NAME=VALUE`.
        #[arg(long = "var")]
        variables: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make the canary's deployment (and overrides) the stage's own.
    Promote {
        /// The API id, e.g. `pets`.
        api: String,
        /// The stage, e.g. `prod`.
        stage: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Stop the canary; the stage's own deployment serves everything.
    Clear {
        /// The API id, e.g. `pets`.
        api: String,
        /// The stage, e.g. `prod`.
        stage: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

fn stage_line(s: &Value) -> Vec<String> {
    let canary = match s["canary"].as_object() {
        Some(c) => format!(
            "{}% to {}",
            c.get("percent").map_or("?".into(), cell),
            c.get("deployment").map_or("?".into(), cell)
        ),
        None => "-".into(),
    };
    vec![cell(&s["stage"]), cell(&s["deployment"]), cell(&s["variables"]), canary]
}

fn stages_table(stages: &Value) -> String {
    let mut table = Table::new(&["STAGE", "DEPLOYMENT", "VARIABLES", "CANARY"]);
    for s in stages.as_array().into_iter().flatten() {
        table.row(stage_line(s));
    }
    table.render("no stages")
}

fn deployments_table(deployments: &Value) -> String {
    let mut table = Table::new(&["ID", "CREATED", "BY", "STAGES", "DESCRIPTION"]);
    for d in deployments.as_array().into_iter().flatten() {
        table.row(["id", "created_at", "created_by", "stages", "description"].iter().map(|f| cell(&d[*f])).collect());
    }
    table.render("no deployments")
}

pub async fn apis(command: ApisCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApisCommand::List { target } => Ok(get(&target, "/v1/apis").await?.show(target.output, |v| {
            let mut table = Table::new(&["API", "STAGES", "DEPLOYMENTS", "LATEST"]);
            for api in v["apis"].as_array().into_iter().flatten() {
                let stages: Vec<String> = api["stages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| format!("{}={}", cell(&s["stage"]), cell(&s["deployment"])))
                    .collect();
                table.row(vec![
                    cell(&api["id"]),
                    cell(&Value::from(stages)),
                    cell(&api["deployments"]),
                    cell(&api["latest_deployment"]),
                ]);
            }
            table.render("no APIs yet: deploy one with `meridian apply`")
        })),
        ApisCommand::Show { api, target } => {
            let answer = get(&target, &format!("/v1/apis/{}", encode(&api))).await?;
            if !answer.ok() {
                return Ok(refused(answer.status, &answer.value));
            }
            let deployments = get(&target, &format!("/v1/apis/{}/deployments", encode(&api))).await?;
            let mut value = answer.value;
            value["deployment_list"] = deployments.value["deployments"].clone();
            Ok(target.output.print(&value, |v| {
                format!(
                    "API {}\n\n{}\n{}",
                    cell(&v["id"]),
                    stages_table(&v["stages"]),
                    deployments_table(&v["deployment_list"])
                )
            }))
        }
    }
}

pub async fn deployments(command: DeploymentsCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeploymentsCommand::List { api, target } => {
            let answer = get(&target, &format!("/v1/apis/{}/deployments", encode(&api))).await?;
            Ok(answer.show(target.output, |v| deployments_table(&v["deployments"])))
        }
        DeploymentsCommand::Show { api, id, target } => {
            let answer = get(&target, &format!("/v1/apis/{}/deployments/{id}", encode(&api))).await?;
            Ok(answer.show(target.output, |v| {
                let head = fields(
                    v,
                    &[
                        ("deployment", "id"),
                        ("api", "api"),
                        ("created", "created_at"),
                        ("by", "created_by"),
                        ("stages", "stages"),
                        ("description", "description"),
                    ],
                );
                format!("{head}\n{}", v["definition"].as_str().unwrap_or(""))
            }))
        }
    }
}

fn assignments(list: &[String]) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut map = serde_json::Map::new();
    for a in list {
        let Some((k, v)) = a.split_once('=') else {
            bail!("`{a}` is not NAME=VALUE");
        };
        map.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(map)
}

pub async fn stage(command: StageCommand) -> anyhow::Result<ExitCode> {
    match command {
        StageCommand::List { api, target } => {
            let answer = get(&target, &format!("/v1/apis/{}/stages", encode(&api))).await?;
            Ok(answer.show(target.output, |v| stages_table(&v["stages"])))
        }
        StageCommand::Show { api, stage, target } => {
            let answer = get(&target, &format!("/v1/apis/{}/stages/{}", encode(&api), encode(&stage))).await?;
            Ok(answer.show(target.output, |v| {
                fields(
                    v,
                    &[
                        ("api", "api"),
                        ("stage", "stage"),
                        ("deployment", "deployment"),
                        ("variables", "variables"),
                        ("canary", "canary"),
                    ],
                )
            }))
        }
        StageCommand::SetVar { api, stage, assignments: list, unset, target } => {
            if list.is_empty() && unset.is_empty() {
                bail!("name the variables to set (`NAME=VALUE`) or to remove (`--unset NAME`)");
            }
            let body = serde_json::json!({ "set": assignments(&list)?, "unset": unset }).to_string();
            let path = format!("/v1/apis/{}/stages/{}/variables", encode(&api), encode(&stage));
            let answer = call(&target, Method::POST, &path, Bytes::from(body), &[]).await?;
            Ok(answer.written(target.output, &format!("variables of {api}/{stage} set")))
        }
        StageCommand::Rollback { api, stage, to, target } => {
            let before = get(&target, &format!("/v1/apis/{}/stages/{}", encode(&api), encode(&stage))).await?;
            let mut path = format!("/v1/apis/{}/stages/{}/rollback", encode(&api), encode(&stage));
            if let Some(to) = to {
                path.push_str(&format!("?to={to}"));
            }
            let answer = call(&target, Method::POST, &path, Bytes::new(), &[]).await?;
            if !answer.ok() {
                return Ok(refused(answer.status, &answer.value));
            }
            let now = get(&target, &format!("/v1/apis/{}/stages/{}", encode(&api), encode(&stage))).await?;
            let said = format!(
                "stage {stage} of {api} now serves deployment {} (was {})",
                cell(&now.value["deployment"]),
                cell(&before.value["deployment"])
            );
            Ok(answer.written(target.output, &said))
        }
    }
}

pub async fn canary(command: CanaryCommand) -> anyhow::Result<ExitCode> {
    let (method, path, body, target, said) = match command {
        CanaryCommand::Set { api, stage, deployment, percent, variables, target } => {
            let body = serde_json::json!({ "deployment": deployment, "percent": percent, "variables": assignments(&variables)? });
            let path = format!("/v1/apis/{}/stages/{}/canary", encode(&api), encode(&stage));
            let said = format!("{percent}% of {api}/{stage} now goes to deployment {deployment}");
            (Method::POST, path, Bytes::from(body.to_string()), target, said)
        }
        CanaryCommand::Promote { api, stage, target } => {
            let path = format!("/v1/apis/{}/stages/{}/canary/promote", encode(&api), encode(&stage));
            (
                Method::POST,
                path,
                Bytes::new(),
                target,
                format!("the canary of {api}/{stage} is now the stage's deployment"),
            )
        }
        CanaryCommand::Clear { api, stage, target } => {
            let path = format!("/v1/apis/{}/stages/{}/canary", encode(&api), encode(&stage));
            (Method::DELETE, path, Bytes::new(), target, format!("the canary of {api}/{stage} is stopped"))
        }
    };
    Ok(call(&target, method, &path, body, &[]).await?.written(target.output, &said))
}

/// Placeholder values for every stage variable the text mentions.
fn all_variables_placeholder(text: &str) -> std::collections::BTreeMap<String, String> {
    meridian_dataplane::integration::uri::stage_variable_names(text)
        .into_iter()
        .map(|n| (n, "placeholder".to_string()))
        .collect()
}

/// Reads and checks a definition file the way the node will, so errors name its lines.
/// The stage's variables live in the cluster: each one the file uses gets a placeholder
/// here, and the node checks again with the real values before anything is written.
fn checked_definition(
    file: &Path,
    stage: &str,
) -> anyhow::Result<Result<meridian_dataplane::config::ApiDefinition, ExitCode>> {
    let text =
        meridian_dataplane::files::read_bounded(file).with_context(|| format!("cannot read {}", file.display()))?;
    let placeholders = all_variables_placeholder(&text);
    match meridian_dataplane::config::validate_definition(&text, &file.display().to_string(), stage, &placeholders) {
        Ok(d) => Ok(Ok(d)),
        Err(errors) => {
            eprint!("{errors}");
            Ok(Err(ExitCode::from(2)))
        }
    }
}

/// `meridian validate` on an API definition (a file with `apis:` and nothing else): the
/// checks `apply` makes, for every stage the file lists. `None` when the file is a node's
/// configuration instead.
pub fn validate_definition_file(file: &Path) -> anyhow::Result<Option<ExitCode>> {
    let text =
        meridian_dataplane::files::read_bounded(file).with_context(|| format!("cannot read {}", file.display()))?;
    let document: Value = serde_saphyr::from_str(&text).unwrap_or_default();
    let keys: Vec<&String> = document.as_object().into_iter().flat_map(|o| o.keys()).collect();
    if keys != ["apis"] {
        return Ok(None);
    }
    let stages: Vec<String> = document["apis"][0]["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    let stages = if stages.is_empty() { vec!["prod".to_string()] } else { stages };
    let mut api = String::new();
    for stage in &stages {
        match checked_definition(file, stage)? {
            Ok(d) => api = d.id,
            Err(code) => return Ok(Some(code)),
        }
    }
    println!("{}: a valid definition of API {api} (checked for stages {})", file.display(), stages.join(", "));
    Ok(Some(ExitCode::SUCCESS))
}

pub async fn apply(
    file: &Path,
    stage: &str,
    description: &str,
    if_revision: Option<u64>,
    target: &AdminTarget,
) -> anyhow::Result<ExitCode> {
    let definition = match checked_definition(file, stage)? {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let api = definition.id;
    let path = format!("/v1/apis/{api}/deployments?stage={}&description={}", encode(stage), encode(description));
    let headers: Vec<(&str, String)> = if_revision.map(|r| ("if-match", r.to_string())).into_iter().collect();
    let answer = call(target, Method::POST, &path, Bytes::from(definition.text), &headers).await?;
    if !answer.ok() {
        return Ok(refused(answer.status, &answer.value));
    }
    Ok(target.output.print(&answer.value, |v| {
        let revision = cell(&v["revision"]);
        match v["created"].as_u64() {
            Some(id) => format!("stage {stage} of {api} now serves deployment {id} (revision {revision})\n"),
            None => format!(
                "nothing to apply: stage {stage} of {api} already serves this definition (deployment {}, revision {revision})\n",
                cell(&v["deployment"])
            ),
        }
    }))
}

/// Lines of `old` and `new` as a diff: `(' ' | '-' | '+', line)`, from a longest common
/// subsequence (definitions are small).
pub fn line_diff<'a>(old: &'a str, new: &'a str) -> Vec<(char, &'a str)> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(('-', a[i]));
            i += 1;
        } else {
            out.push(('+', b[j]));
            j += 1;
        }
    }
    out
}

/// The changed lines of a diff with `context` unchanged lines around each change, and `...`
/// where unchanged lines are left out.
pub fn with_context(diff: &[(char, &str)], context: usize) -> Vec<String> {
    let near_change = |i: usize| {
        let lo = i.saturating_sub(context);
        let hi = (i + context).min(diff.len().saturating_sub(1));
        (lo..=hi).any(|k| diff[k].0 != ' ')
    };
    let mut out = Vec::new();
    let mut skipped = false;
    for (i, (mark, line)) in diff.iter().enumerate() {
        if near_change(i) {
            if skipped {
                out.push("...".to_string());
                skipped = false;
            }
            out.push(format!("{mark}{line}"));
        } else {
            skipped = true;
        }
    }
    out
}

/// A definition as compared and shown by `diff`: the parsed document printed again, so
/// comments, layout and key order never show up as changes.
fn canonical(text: &str) -> String {
    serde_saphyr::from_str::<Value>(text)
        .ok()
        .and_then(|v| serde_saphyr::to_string(&v).ok())
        .unwrap_or_else(|| text.to_string())
}

pub async fn diff(file: &Path, stage: &str, target: &AdminTarget) -> anyhow::Result<ExitCode> {
    let definition = match checked_definition(file, stage)? {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let api = definition.id.clone();
    let current = get(target, &format!("/v1/apis/{}/stages/{}", encode(&api), encode(stage))).await?;
    let (old_text, old_vars, header) = if current.status == 404 {
        (
            String::new(),
            serde_json::Map::new(),
            format!("stage `{stage}` of API `{api}` does not exist yet: apply would create it"),
        )
    } else if !current.ok() {
        return Ok(refused(current.status, &current.value));
    } else {
        let id = current.value["deployment"].as_u64().unwrap_or(0);
        let deployment = get(target, &format!("/v1/apis/{}/deployments/{id}", encode(&api))).await?;
        if !deployment.ok() {
            return Ok(refused(deployment.status, &deployment.value));
        }
        (
            deployment.value["definition"].as_str().unwrap_or("").to_string(),
            current.value["variables"].as_object().cloned().unwrap_or_default(),
            format!("--- {api}/{stage}: deployment {id} (in the cluster)\n+++ {}", file.display()),
        )
    };
    let (old, new) = (canonical(&old_text), canonical(&definition.text));
    let lines = line_diff(&old, &new);
    let mut changes = if meridian_dataplane::config::same_definition(&old_text, &definition.text) {
        Vec::new()
    } else {
        with_context(&lines, 3)
    };
    for (name, value) in definition.stage_variables.get(stage).into_iter().flatten() {
        if old_vars.get(name).and_then(|v| v.as_str()) != Some(value.as_str()) {
            let was = old_vars.get(name).map_or("(unset)".to_string(), cell);
            changes.push(format!("stage variable {name}: {was} -> {value}"));
        }
    }
    let report = serde_json::json!({ "api": api, "stage": stage, "changed": !changes.is_empty(), "diff": changes });
    target.output.print(&report, |_| {
        if changes.is_empty() { "no changes\n".to_string() } else { format!("{header}\n{}\n", changes.join("\n")) }
    });
    Ok(if changes.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_added_and_removed_lines() {
        let d = line_diff("a\nb\nc\n", "a\nc\nd\n");
        assert_eq!(d, vec![(' ', "a"), ('-', "b"), (' ', "c"), ('+', "d")]);
        assert!(line_diff("x\n", "x\n").iter().all(|(m, _)| *m == ' '));
    }

    #[test]
    fn context_keeps_lines_near_changes_only() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\n5\n6\n7\n8\nnine\n";
        let shown = with_context(&line_diff(old, new), 2);
        assert_eq!(shown, vec!["...", " 7", " 8", "-9", "+nine"]);
    }

    #[test]
    fn comments_layout_and_key_order_are_not_changes() {
        let a = "apis:\n  - id: pets # the pets API\n    routes: []\n";
        let b = "apis:\n- routes: []\n  id: \"pets\"\n";
        assert!(meridian_dataplane::config::same_definition(a, b));
        assert_eq!(canonical(a), canonical(b));
        assert!(!meridian_dataplane::config::same_definition(a, "apis:\n- routes: []\n  id: cats\n"));
    }
}
