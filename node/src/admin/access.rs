//! The admin API's API keys (values shown once, stored hashed), usage plans and usage
//! reports; the calls are listed in `cluster.rs`.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use meridian_consensus::{ApiKeyRecord, CommandOutcome, ConfigCommand, PlanRate, Proposal, QuotaPeriod};

use super::cluster::*;
use super::{message, views};
use crate::cluster::member::{ClusterError, ClusterMember};
use meridian_dataplane::digest::sha256_hex;

pub(super) async fn route(
    member: &ClusterMember,
    method: &Method,
    segments: &[&str],
    query: Option<&str>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Refusal> {
    Ok(match (method, segments) {
        (&Method::GET, ["v1", "keys"]) => {
            let applied = member.applied.read().await;
            let config = &applied.config;
            let list: Vec<_> = config.keys.iter().map(|(id, k)| views::key(config, id, k)).collect();
            viewed(&serde_json::json!({ "keys": list }), config.revision)
        }
        (&Method::GET, ["v1", "keys", key]) => {
            let id = key_id(member, key).await?;
            let applied = member.applied.read().await;
            let config = &applied.config;
            let k =
                config.keys.get(&id).ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no key `{key}`")))?;
            viewed(&views::key(config, &id, k), config.revision)
        }
        (&Method::POST, ["v1", "keys"]) => {
            let text = body_text(request).await?;
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                name: String,
                value: Option<String>,
            }
            let body: Body = json_body(&text, "{\"name\", \"value\"?}")?;
            let value = match body.value {
                Some(v) if (20..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()) => v,
                Some(_) => return Err(invalid("a key value is 20 to 128 printable characters")),
                None => random_token()?,
            };
            if body.name.is_empty() || body.name.len() > 64 {
                return Err(invalid("a key needs a name of 1 to 64 characters"));
            }
            let id = format!("k-{}", &random_token()?[..12]);
            let key = ApiKeyRecord {
                name: body.name.clone(),
                value_sha256: sha256_hex(value.as_bytes()),
                enabled: true,
                created_at_ms: meridian_dataplane::observe::time::unix_ms(),
            };
            let outcome = member
                .propose(Proposal {
                    expected_revision: None,
                    command: ConfigCommand::CreateKey { id: id.clone(), key },
                })
                .await;
            shown_once(outcome, serde_json::json!({"id": id, "name": body.name, "value": value}))
        }
        (&Method::POST, ["v1", "keys", key, action]) => {
            let id = key_id(member, key).await?;
            let command = match *action {
                "enable" => ConfigCommand::SetKeyEnabled { id, enabled: true },
                "disable" => ConfigCommand::SetKeyEnabled { id, enabled: false },
                "rotate" => {
                    let value = random_token()?;
                    let command =
                        ConfigCommand::RotateKey { id: id.clone(), value_sha256: sha256_hex(value.as_bytes()) };
                    let outcome = member.propose(Proposal { expected_revision: None, command }).await;
                    return Ok(shown_once(outcome, serde_json::json!({"id": id, "value": value})));
                }
                _ => return Err(Refusal::new(StatusCode::NOT_FOUND, "keys support enable, disable and rotate")),
            };
            outcome_response(member.propose(Proposal { expected_revision: None, command }).await)
        }
        (&Method::DELETE, ["v1", "keys", key]) => {
            let id = key_id(member, key).await?;
            outcome_response(
                member.propose(Proposal { expected_revision: None, command: ConfigCommand::DeleteKey { id } }).await,
            )
        }
        (&Method::GET, ["v1", "plans"]) => {
            let applied = member.applied.read().await;
            let list: Vec<_> = applied.config.plans.iter().map(|(name, p)| views::plan(name, p)).collect();
            viewed(&serde_json::json!({ "plans": list }), applied.config.revision)
        }
        (&Method::GET, ["v1", "plans", plan]) => {
            let applied = member.applied.read().await;
            let p = applied
                .config
                .plans
                .get(*plan)
                .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no usage plan `{plan}`")))?;
            viewed(&views::plan(plan, p), applied.config.revision)
        }
        (&Method::PUT, ["v1", "plans", plan]) => {
            let plan = plan.to_string();
            let text = body_text(request).await?;
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                rate: Option<u64>,
                burst: Option<u64>,
                quota: Option<String>,
            }
            let body: Body = json_body(&text, "{\"rate\", \"burst\", \"quota\"}")?;
            let rate = match (body.rate, body.burst) {
                (Some(r), b) => Some(PlanRate { per_second: r, burst: b.unwrap_or(r) }),
                (None, None) => None,
                (None, Some(_)) => return Err(invalid("`burst` needs `rate`")),
            };
            let quota = body.quota.as_deref().map(parse_quota).transpose().map_err(invalid)?;
            let command = ConfigCommand::PutPlan { name: plan, rate, quota };
            outcome_response(member.propose(Proposal { expected_revision: None, command }).await)
        }
        (&Method::DELETE, ["v1", "plans", plan]) => {
            let command = ConfigCommand::DeletePlan { name: plan.to_string() };
            outcome_response(member.propose(Proposal { expected_revision: None, command }).await)
        }
        (&Method::POST, ["v1", "plans", plan, "attach"]) => {
            let plan = plan.to_string();
            let text = body_text(request).await?;
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                api: String,
                stage: String,
                route: Option<String>,
                rate: Option<u64>,
                burst: Option<u64>,
            }
            let body: Body = json_body(&text, "{\"api\", \"stage\", \"route\"?, \"rate\"?, \"burst\"?}")?;
            let route = match (body.route, body.rate) {
                (Some(route), Some(rate)) if rate > 0 => {
                    Some((route, PlanRate { per_second: rate, burst: body.burst.unwrap_or(rate).max(1) }))
                }
                (None, None) => None,
                _ => return Err(invalid("a route override needs both `route` and a `rate` of at least 1")),
            };
            let command = ConfigCommand::AttachPlan { plan, api: body.api, stage: body.stage, route };
            outcome_response(member.propose(Proposal { expected_revision: None, command }).await)
        }
        (&Method::POST, ["v1", "plans", plan, "keys"]) => {
            let plan = plan.to_string();
            let text = body_text(request).await?;
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Body {
                key: String,
            }
            let body: Body = json_body(&text, "{\"key\"}")?;
            let key = key_id(member, &body.key).await?;
            outcome_response(
                member
                    .propose(Proposal { expected_revision: None, command: ConfigCommand::AddPlanKey { plan, key } })
                    .await,
            )
        }
        (&Method::GET, ["v1", "usage"]) => usage(member, query).await?,
        _ => message(StatusCode::NOT_FOUND, "no such cluster endpoint"),
    })
}

/// `GET /v1/usage?plan=P[&key=K]&from=YYYY-MM-DD&to=YYYY-MM-DD`: each key's requests per day
/// and its quota, as this node sees the cluster's counters.
async fn usage(member: &ClusterMember, query: Option<&str>) -> Result<Response<Full<Bytes>>, Refusal> {
    use crate::cluster::dataplane::{period, quota_scope, usage_scope};
    use meridian_dataplane::observe::time::{format_date, parse_date};
    let plan_name =
        query_value(query, "plan").ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "name the plan: ?plan=NAME"))?;
    let today = (meridian_dataplane::observe::time::unix_ms() / 86_400_000) as i64;
    let from = match query_value(query, "from") {
        Some(d) => parse_date(&d).map_err(invalid)?,
        None => today - 29,
    };
    let to = match query_value(query, "to") {
        Some(d) => parse_date(&d).map_err(invalid)?,
        None => today,
    };
    if to < from || to - from > 400 {
        return Err(invalid("`from` must not be after `to`, and the range is at most 400 days"));
    }
    let key_filter = match query_value(query, "key") {
        Some(k) => Some(key_id(member, &k).await?),
        None => None,
    };
    let applied = member.applied.read().await;
    let plan = applied
        .config
        .plans
        .get(&plan_name)
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no usage plan `{plan_name}`")))?;
    let limiter = member.limiter();
    let mut keys = Vec::new();
    for id in plan.keys.iter().filter(|id| key_filter.as_ref().is_none_or(|k| k == *id)) {
        let name = applied.config.keys.get(id).map_or("", |k| k.name.as_str());
        let scope = usage_scope(&plan_name, id);
        let days: Vec<serde_json::Value> = (from..=to)
            .map(|day| {
                let requests = limiter.count(&scope, day as u64).unwrap_or(0);
                serde_json::json!({ "date": format_date(day), "requests": requests })
            })
            .collect();
        let total: u64 = days.iter().filter_map(|d| d["requests"].as_u64()).sum();
        let quota = plan.quota.map(|(limit, p)| {
            let (window, _) = period(p).window(meridian_dataplane::observe::time::unix_ms());
            let used = limiter.count(&quota_scope(&plan_name, id), window).unwrap_or(0);
            serde_json::json!({ "limit": limit, "period": period(p).name(), "used": used, "remaining": limit.saturating_sub(used) })
        });
        keys.push(serde_json::json!({ "id": id, "name": name, "days": days, "total": total, "quota": quota }));
    }
    let usage =
        serde_json::json!({ "plan": plan_name, "from": format_date(from), "to": format_date(to), "keys": keys });
    Ok(viewed(&usage, applied.config.revision))
}

fn random_token() -> Result<String, Refusal> {
    crate::cluster::pki::random_secret().map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A key's id from its id or its (unique) name.
async fn key_id(member: &ClusterMember, key: &str) -> Result<String, Refusal> {
    let applied = member.applied.read().await;
    if applied.config.keys.contains_key(key) {
        return Ok(key.to_string());
    }
    let named: Vec<&String> = applied.config.keys.iter().filter(|(_, k)| k.name == key).map(|(id, _)| id).collect();
    match named.as_slice() {
        [id] => Ok((*id).clone()),
        [] => Err(Refusal::new(StatusCode::NOT_FOUND, format!("no key with id or name `{key}`"))),
        _ => Err(invalid(format!("several keys are named `{key}`: use the id"))),
    }
}

/// A write's answer that also shows a secret once (a new or rotated key value).
fn shown_once(outcome: Result<CommandOutcome, ClusterError>, shown: serde_json::Value) -> Response<Full<Bytes>> {
    match outcome {
        Ok(CommandOutcome { revision, rejected: None, .. }) => {
            let mut body = shown;
            body["revision"] = serde_json::json!(revision);
            body["note"] = serde_json::json!("the value is shown only now; the cluster stores its hash");
            viewed(&body, revision)
        }
        other => outcome_response(other),
    }
}

/// `10000/month` → (10000, Month).
fn parse_quota(text: &str) -> Result<(u64, QuotaPeriod), String> {
    let (limit, period) = text.split_once('/').ok_or_else(|| format!("quota `{text}` is not LIMIT/day|week|month"))?;
    let limit: u64 = limit.trim().parse().map_err(|_| format!("quota limit `{limit}` is not a number"))?;
    if limit == 0 {
        return Err("a quota is at least 1".into());
    }
    let period = match period.trim() {
        "day" => QuotaPeriod::Day,
        "week" => QuotaPeriod::Week,
        "month" => QuotaPeriod::Month,
        other => return Err(format!("quota period `{other}` is not day, week or month")),
    };
    Ok((limit, period))
}
