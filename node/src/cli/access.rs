//! `meridian keys`, `plans` and `usage`: who may call an API, how much, and how much they
//! did.

use std::process::ExitCode;

use bytes::Bytes;
use clap::Subcommand;
use http::Method;
use serde_json::Value;

use super::output::{Output, Table, cell, fields, refused};
use super::target::{AdminTarget, call, encode, get};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; its value is printed once.
    Create {
        /// A unique name for the key, e.g. the client's.
        #[arg(long)]
        name: String,
        /// Use this value instead of a generated one (20 to 128 characters).
        #[arg(long, env = "MERIDIAN_KEY_VALUE", hide_env_values = true)]
        value: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List keys (ids, names, plans; never values).
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show one key (by id or name).
    Show {
        /// The key's id or name.
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Disable a key (by id or name).
    Disable {
        /// The key's id or name.
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Enable a key (by id or name).
    Enable {
        /// The key's id or name.
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Give a key a new value (printed once); the old one stops working.
    Rotate {
        /// The key's id or name.
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete a key (by id or name).
    Delete {
        /// The key's id or name.
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Create a plan or set its throttle and quota.
    Create {
        #[arg(long)]
        name: String,
        /// Requests per second per key.
        #[arg(long)]
        rate: Option<u64>,
        /// Requests one node may admit at once per key (default: the rate).
        #[arg(long)]
        burst: Option<u64>,
        /// `LIMIT/day`, `LIMIT/week` or `LIMIT/month` per key (UTC periods).
        #[arg(long)]
        quota: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List the plans.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show a plan: limits, stages, route throttles, keys.
    Show {
        /// The usage plan's name.
        plan: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make the plan cover a stage, optionally with a per-route throttle.
    Attach {
        /// The usage plan's name.
        plan: String,
        #[arg(long)]
        api: String,
        #[arg(long)]
        stage: String,
        /// A route key such as `GET /pets` for a per-route throttle.
        #[arg(long, requires = "rate")]
        route: Option<String>,
        /// The route's requests per second per key.
        #[arg(long, requires = "route")]
        rate: Option<u64>,
        /// The route's burst (default: its rate).
        #[arg(long)]
        burst: Option<u64>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Add a key (id or name) to the plan.
    AddKey {
        /// The usage plan's name.
        plan: String,
        /// The key's id or name.
        key: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

fn keys_table(v: &Value) -> String {
    let mut table = Table::new(&["ID", "NAME", "ENABLED", "CREATED", "PLANS"]);
    for k in v["keys"].as_array().into_iter().flatten() {
        table.row(["id", "name", "enabled", "created_at", "plans"].iter().map(|f| cell(&k[*f])).collect());
    }
    table.render("no keys yet: create one with `meridian keys create --name NAME`")
}

fn shown_once(v: &Value) -> String {
    format!(
        "key {} ({}): {}\nthe value is shown only now; the cluster stores its hash (revision {})\n",
        cell(&v["name"]),
        cell(&v["id"]),
        cell(&v["value"]),
        cell(&v["revision"])
    )
}

pub async fn keys(command: KeyCommand) -> anyhow::Result<ExitCode> {
    Ok(match command {
        KeyCommand::Create { name, value, target } => {
            let body = serde_json::json!({ "name": name, "value": value });
            let answer = call(&target, Method::POST, "/v1/keys", Bytes::from(body.to_string()), &[]).await?;
            answer.show(target.output, shown_once)
        }
        KeyCommand::List { target } => get(&target, "/v1/keys").await?.show(target.output, keys_table),
        KeyCommand::Show { key, target } => {
            get(&target, &format!("/v1/keys/{}", encode(&key))).await?.show(target.output, |v| {
                fields(
                    v,
                    &[
                        ("id", "id"),
                        ("name", "name"),
                        ("enabled", "enabled"),
                        ("created", "created_at"),
                        ("plans", "plans"),
                    ],
                )
            })
        }
        KeyCommand::Disable { key, target } => {
            let path = format!("/v1/keys/{}/disable", encode(&key));
            call(&target, Method::POST, &path, Bytes::new(), &[])
                .await?
                .written(target.output, &format!("key {key} disabled"))
        }
        KeyCommand::Enable { key, target } => {
            let path = format!("/v1/keys/{}/enable", encode(&key));
            call(&target, Method::POST, &path, Bytes::new(), &[])
                .await?
                .written(target.output, &format!("key {key} enabled"))
        }
        KeyCommand::Rotate { key, target } => {
            let path = format!("/v1/keys/{}/rotate", encode(&key));
            let answer = call(&target, Method::POST, &path, Bytes::new(), &[]).await?;
            answer.show(target.output, |v| {
                let mut shown = v.clone();
                shown["name"] = Value::String(key.clone());
                shown_once(&shown)
            })
        }
        KeyCommand::Delete { key, target } => {
            let path = format!("/v1/keys/{}", encode(&key));
            call(&target, Method::DELETE, &path, Bytes::new(), &[])
                .await?
                .written(target.output, &format!("key {key} deleted"))
        }
    })
}

fn plan_text(p: &Value) -> String {
    let mut out =
        fields(p, &[("plan", "name"), ("rate", "rate"), ("burst", "burst"), ("quota", "quota"), ("keys", "keys")]);
    let mut table = Table::new(&["API", "STAGE", "ROUTE THROTTLES"]);
    for s in p["stages"].as_array().into_iter().flatten() {
        let routes: Vec<String> = s["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("{} {}/s (burst {})", cell(&r["route"]), cell(&r["rate"]), cell(&r["burst"])))
            .collect();
        table.row(vec![
            cell(&s["api"]),
            cell(&s["stage"]),
            if routes.is_empty() { "-".into() } else { routes.join("; ") },
        ]);
    }
    out.push('\n');
    out.push_str(&table.render("covers no stage yet: `meridian plans attach`"));
    out
}

pub async fn plans(command: PlanCommand) -> anyhow::Result<ExitCode> {
    Ok(match command {
        PlanCommand::Create { name, rate, burst, quota, target } => {
            let body = serde_json::json!({ "rate": rate, "burst": burst, "quota": quota });
            let path = format!("/v1/plans/{}", encode(&name));
            call(&target, Method::PUT, &path, Bytes::from(body.to_string()), &[])
                .await?
                .written(target.output, &format!("plan {name} saved"))
        }
        PlanCommand::List { target } => get(&target, "/v1/plans").await?.show(target.output, |v| {
            let mut table = Table::new(&["PLAN", "RATE", "BURST", "QUOTA", "STAGES", "KEYS"]);
            for p in v["plans"].as_array().into_iter().flatten() {
                let stages: Vec<String> = p["stages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| format!("{}/{}", cell(&s["api"]), cell(&s["stage"])))
                    .collect();
                let keys = p["keys"].as_array().map_or(0, Vec::len);
                table.row(vec![
                    cell(&p["name"]),
                    cell(&p["rate"]),
                    cell(&p["burst"]),
                    cell(&p["quota"]),
                    cell(&Value::from(stages)),
                    keys.to_string(),
                ]);
            }
            table.render("no usage plans yet: `meridian plans create --name NAME --rate N`")
        }),
        PlanCommand::Show { plan, target } => {
            get(&target, &format!("/v1/plans/{}", encode(&plan))).await?.show(target.output, plan_text)
        }
        PlanCommand::Attach { plan, api, stage, route, rate, burst, target } => {
            let said = match &route {
                Some(r) => format!("plan {plan} covers {api}/{stage}, with {r} at {}/s", rate.unwrap_or(0)),
                None => format!("plan {plan} covers {api}/{stage}"),
            };
            let body = serde_json::json!({ "api": api, "stage": stage, "route": route, "rate": rate, "burst": burst });
            let path = format!("/v1/plans/{}/attach", encode(&plan));
            call(&target, Method::POST, &path, Bytes::from(body.to_string()), &[]).await?.written(target.output, &said)
        }
        PlanCommand::AddKey { plan, key, target } => {
            let body = serde_json::json!({ "key": key });
            let path = format!("/v1/plans/{}/keys", encode(&plan));
            call(&target, Method::POST, &path, Bytes::from(body.to_string()), &[])
                .await?
                .written(target.output, &format!("key {key} is on plan {plan}"))
        }
    })
}

/// `meridian usage`: each key's daily requests and remaining quota under a plan.
pub async fn usage(
    plan: &str,
    key: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    csv: bool,
    target: &AdminTarget,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/usage?plan={}", encode(plan));
    for (name, value) in [("key", key), ("from", from), ("to", to)] {
        if let Some(v) = value {
            path.push_str(&format!("&{name}={}", encode(v)));
        }
    }
    let answer = get(target, &path).await?;
    if !answer.ok() {
        return Ok(refused(answer.status, &answer.value));
    }
    let keys = answer.value["keys"].as_array().cloned().unwrap_or_default();
    if csv && target.output == Output::Text {
        println!("key_id,key_name,date,requests");
        for k in &keys {
            for d in k["days"].as_array().into_iter().flatten() {
                println!(
                    "{},{},{},{}",
                    cell(&k["id"]),
                    cell(&k["name"]).replace(',', " "),
                    cell(&d["date"]),
                    d["requests"]
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    Ok(target.output.print(&answer.value, |v| {
        let mut out = format!("usage plan {plan}, {} to {}\n", cell(&v["from"]), cell(&v["to"]));
        for k in &keys {
            let quota = match k["quota"].as_object() {
                Some(q) => format!(
                    "quota {}/{}: {} used, {} left",
                    q.get("limit").map_or("?".into(), cell),
                    q.get("period").map_or("?".into(), cell),
                    q.get("used").map_or("?".into(), cell),
                    q.get("remaining").map_or("?".into(), cell)
                ),
                None => "no quota".to_string(),
            };
            out.push_str(&format!(
                "\n{} ({}): {} requests; {quota}\n",
                cell(&k["name"]),
                cell(&k["id"]),
                cell(&k["total"])
            ));
            for d in k["days"].as_array().into_iter().flatten().filter(|d| d["requests"].as_u64() != Some(0)) {
                out.push_str(&format!("  {}  {:>10}\n", cell(&d["date"]), cell(&d["requests"])));
            }
        }
        out
    }))
}
