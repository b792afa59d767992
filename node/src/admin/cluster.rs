//! The cluster endpoints of the admin API: status, leave, deployments and stages here;
//! domains, regions and zones in `domains.rs`, keys, plans and usage in `access.rs`,
//! credentials in `credentials.rs` (each gets its calls from [`handle`]).
//!
//! | call | does |
//! | --- | --- |
//! | `GET /v1/cluster` | this node's view: leader, term, members, roles, lag, revision |
//! | `POST /v1/cluster/leave` | removes this node from the cluster |
//! | `POST /v1/cluster/promote?node=ID` | makes a learner a voter |
//! | `POST /v1/cluster/remove?node=ID` | removes another node (a dead one, to replace it) |
//! | `GET /v1/apis`, `GET /v1/apis/{api}`, `GET /v1/apis/{api}/stages` | APIs with their stages |
//! | `GET /v1/apis/{api}/deployments` | the API's deployments: when, by whom, which stages use them |
//! | `POST /v1/apis/{api}/deployments?stage=S&description=D` | body: the definition (YAML); validates it, stores a deployment, points the stage at it (unless the stage already serves the same definition) |
//! | `GET /v1/apis/{api}/deployments/{id}` | one deployment, with its definition |
//! | `GET /v1/apis/{api}/stages/{stage}` | the stage: deployment, variables, canary |
//! | `POST /v1/apis/{api}/stages/{stage}/variables` | body: `{"set": {...}, "unset": [...]}` |
//! | `POST /v1/apis/{api}/stages/{stage}/rollback?to=ID` | points the stage at an earlier deployment (default: the one before) |
//! | `POST /v1/apis/{api}/stages/{stage}/canary` | body: `{"deployment": ID, "percent": 5, "variables": {...}}` |
//! | `POST /v1/apis/{api}/stages/{stage}/canary/promote` | the canary's deployment becomes the stage's |
//! | `DELETE /v1/apis/{api}/stages/{stage}/canary` | stops the canary |
//! | `GET /v1/domains`, `PUT /v1/domains/{name}`, `DELETE /v1/domains/{name}` | custom domains: `{"certificate_pem", "key_pem", "mappings": [{"base_path", "api", "stage"}]}` |
//! | `GET /v1/regions`, `PUT /v1/regions/{name}`, `DELETE /v1/regions/{name}` | regions: `{"weight", "client_cidrs": [...]}` |
//! | `GET /v1/keys`, `POST /v1/keys` (`{"name", "value"?}`) | API keys; the value is shown once, only its hash is stored |
//! | `POST /v1/keys/{key}/enable`, `.../disable`, `.../rotate`, `DELETE /v1/keys/{key}` | by id or name |
//! | `GET /v1/plans`, `PUT /v1/plans/{plan}` (`{"rate", "burst", "quota": "10000/month"}`), `DELETE /v1/plans/{plan}` | usage plans |
//! | `POST /v1/plans/{plan}/attach` (`{"api", "stage", "route"?, "rate"?, "burst"?}`), `POST /v1/plans/{plan}/keys` (`{"key"}`) | coverage and keys |
//!
//! Every kind also has a show endpoint (`GET /v1/keys/{key}`, `/v1/plans/{plan}`,
//! `/v1/domains/{name}`, `/v1/regions/{name}`, `/v1/dns/zones/{name}`) answering the same
//! shape as its list's items (`views.rs`).
//!
//! Writes accept `If-Match: <revision>` and fail with 412 when the configuration moved on;
//! every answer carries the revision in `ETag`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use meridian_consensus::{ApiRecord, Canary, CommandOutcome, ConfigCommand, Proposal, Rejection};

use super::{json, message, views};
use crate::cluster::member::{ClusterError, ClusterMember};
use meridian_dataplane::config::validate_definition;

const MAX_DEFINITION: usize = 1024 * 1024;

pub(super) fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .map(meridian_dataplane::query::percent_decode)
}

pub(super) fn with_etag(mut response: Response<Full<Bytes>>, revision: u64) -> Response<Full<Bytes>> {
    if let Ok(v) = http::HeaderValue::try_from(format!("\"{revision}\"")) {
        response.headers_mut().insert(http::header::ETAG, v);
    }
    response
}

/// A read's answer: `view` as JSON, tagged with the revision it was read at.
pub(super) fn viewed(view: &serde_json::Value, revision: u64) -> Response<Full<Bytes>> {
    with_etag(json(StatusCode::OK, view.to_string()), revision)
}

/// A refused call: its status and message, made into a JSON response at the end.
#[derive(Debug)]
pub(super) struct Refusal(StatusCode, String);

impl Refusal {
    pub(super) fn new(status: StatusCode, text: impl Into<String>) -> Self {
        Refusal(status, text.into())
    }
}

pub(super) fn expected_revision(request: &Request<Incoming>) -> Result<Option<u64>, Refusal> {
    match request.headers().get(http::header::IF_MATCH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"'))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "If-Match must be a revision number")),
    }
}

pub(super) async fn body_text(request: Request<Incoming>) -> Result<String, Refusal> {
    let collected = Limited::new(request.into_body(), MAX_DEFINITION)
        .collect()
        .await
        .map_err(|_| Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 1 MiB or could not be read"))?;
    String::from_utf8(collected.to_bytes().to_vec())
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "the body is not UTF-8"))
}

pub(super) fn outcome_response(result: Result<CommandOutcome, ClusterError>) -> Response<Full<Bytes>> {
    match result {
        Ok(CommandOutcome { revision, changed, created, rejected: None }) => with_etag(
            json(
                StatusCode::OK,
                serde_json::json!({ "revision": revision, "changed": changed, "created": created }).to_string(),
            ),
            revision,
        ),
        Ok(CommandOutcome { revision, rejected: Some(r), .. }) => {
            let status = match r {
                Rejection::RevisionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
                Rejection::NoApi(_)
                | Rejection::NoStage { .. }
                | Rejection::NoDeployment { .. }
                | Rejection::NoCanary { .. }
                | Rejection::NoKey(_)
                | Rejection::NoCredential(_)
                | Rejection::NoPlan(_)
                | Rejection::NoDomain(_)
                | Rejection::NoRegion(_)
                | Rejection::NoZone(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            with_etag(message(status, &r.to_string()), revision)
        }
        Err(e @ (ClusterError::NoQuorum(_) | ClusterError::NoLeader(_))) => {
            message(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e) => message(StatusCode::BAD_GATEWAY, &e.to_string()),
    }
}

/// Serves one cluster call (the caller has checked the admin token).
pub async fn handle(member: Arc<ClusterMember>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match route(member, request).await {
        Ok(response) => response,
        Err(Refusal(status, text)) => message(status, &text),
    }
}

async fn route(member: Arc<ClusterMember>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Refusal> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    match segments.as_slice() {
        ["v1", "credentials", ..] => return super::credentials::route(&member, &method, &segments, request).await,
        ["v1", "domains" | "regions" | "dns", ..] => {
            return super::domains::route(&member, &method, &segments, query.as_deref(), request).await;
        }
        ["v1", "keys" | "plans" | "usage", ..] => {
            return super::access::route(&member, &method, &segments, query.as_deref(), request).await;
        }
        _ => {}
    }
    Ok(match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "cluster"]) => json(StatusCode::OK, member.status_with_peers().await.to_string()),
        (&Method::POST, ["v1", "cluster", "leave"]) => match member.leave().await {
            Ok(()) => json(StatusCode::OK, serde_json::json!({ "left": true, "node": member.id }).to_string()),
            Err(e) => message(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        },
        (&Method::POST, ["v1", "cluster", "remove"]) => {
            let node = query_value(query.as_deref(), "node")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "name the node: ?node=ID"))?;
            if node == member.id {
                return Err(Refusal::new(StatusCode::CONFLICT, "this is the node you are asking: use `cluster leave`"));
            }
            let known = member.raft.metrics().borrow().membership_config.membership().get_node(&node).is_some();
            if !known {
                return Err(Refusal::new(StatusCode::NOT_FOUND, format!("node {node} is not a member")));
            }
            match member.change_membership(node, meridian_proto::membership_request::Action::Remove).await {
                Ok(()) => json(StatusCode::OK, serde_json::json!({ "removed": node }).to_string()),
                Err(e) => message(StatusCode::CONFLICT, &e.to_string()),
            }
        }
        (&Method::POST, ["v1", "cluster", "promote"]) => {
            let node = query_value(query.as_deref(), "node")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "name the node: ?node=ID"))?;
            match member.change_membership(node, meridian_proto::membership_request::Action::Promote).await {
                Ok(()) => json(StatusCode::OK, serde_json::json!({ "promoted": node }).to_string()),
                Err(e) => message(StatusCode::CONFLICT, &e.to_string()),
            }
        }
        (&Method::GET, ["v1", "apis"]) => {
            let applied = member.applied.read().await;
            let list: Vec<_> = applied.config.apis.iter().map(|(id, record)| views::api(id, record)).collect();
            viewed(&serde_json::json!({ "apis": list }), applied.config.revision)
        }
        (&Method::GET, ["v1", "apis", api]) => {
            let applied = member.applied.read().await;
            let record = api_record(&applied.config, api)?;
            viewed(&views::api(api, record), applied.config.revision)
        }
        (&Method::GET, ["v1", "apis", api, "stages"]) => {
            let applied = member.applied.read().await;
            let record = api_record(&applied.config, api)?;
            let list: Vec<_> = record.stages.iter().map(|(name, s)| views::stage(api, name, s)).collect();
            viewed(&serde_json::json!({ "api": api, "stages": list }), applied.config.revision)
        }
        (&Method::GET, ["v1", "apis", api, "deployments"]) => {
            let applied = member.applied.read().await;
            let record = api_record(&applied.config, api)?;
            let list: Vec<_> = record.deployments.values().map(|d| views::deployment(api, record, d, false)).collect();
            viewed(&serde_json::json!({ "api": api, "deployments": list }), applied.config.revision)
        }
        (&Method::GET, ["v1", "apis", api, "deployments", id]) => {
            let applied = member.applied.read().await;
            let record = api_record(&applied.config, api)?;
            let deployment =
                id.parse::<u64>().ok().and_then(|id| record.deployments.get(&id)).ok_or_else(|| {
                    Refusal::new(StatusCode::NOT_FOUND, format!("API `{api}` has no deployment {id}"))
                })?;
            viewed(&views::deployment(api, record, deployment, true), applied.config.revision)
        }
        (&Method::POST, ["v1", "apis", api, "deployments"]) => {
            let api = api.to_string();
            let Some(stage) = query_value(query.as_deref(), "stage") else {
                return Err(Refusal::new(StatusCode::BAD_REQUEST, "name the stage: ?stage=NAME"));
            };
            let description = query_value(query.as_deref(), "description").unwrap_or_default();
            let expected = expected_revision(&request)?;
            let actor = actor(&request);
            let text = body_text(request).await?;
            let current_vars = member
                .applied
                .read()
                .await
                .config
                .apis
                .get(&api)
                .and_then(|a| a.stages.get(&stage))
                .map(|s| s.variables.clone())
                .unwrap_or_default();
            let definition = match validate_definition(&text, "definition", &stage, &current_vars) {
                Ok(d) => d,
                Err(errors) => {
                    let list: Vec<_> = errors
                        .errors
                        .iter()
                        .map(|e| serde_json::json!({"line": e.line, "column": e.column, "field": e.field, "message": e.message}))
                        .collect();
                    return Ok(json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        serde_json::json!({"message": "the definition is invalid; nothing was changed", "errors": list}).to_string(),
                    ));
                }
            };
            if definition.id != api {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("the definition is for API `{}`, not `{api}`", definition.id),
                ));
            }
            let file_variables = definition.stage_variables.get(&stage).cloned().unwrap_or_default();
            if let Some(current) = already_served(&member, &api, &stage, &definition.text, &file_variables).await {
                return Ok(current);
            }
            let command = ConfigCommand::Deploy {
                api,
                definition: definition.text,
                description,
                created_at_ms: meridian_dataplane::observe::time::unix_ms(),
                created_by: actor,
                stage_variables: file_variables,
                stage: Some(stage),
            };
            outcome_response(member.propose(Proposal { expected_revision: expected, command }).await)
        }
        (&Method::GET, ["v1", "apis", api, "stages", stage]) => {
            let applied = member.applied.read().await;
            match applied.config.apis.get(*api).and_then(|a| a.stages.get(*stage)) {
                Some(s) => viewed(&views::stage(api, stage, s), applied.config.revision),
                None => message(StatusCode::NOT_FOUND, &format!("API `{api}` has no stage `{stage}`")),
            }
        }
        (&Method::POST, ["v1", "apis", api, "stages", stage, "variables"]) => {
            let (api, stage) = (api.to_string(), stage.to_string());
            let expected = expected_revision(&request)?;
            let text = body_text(request).await?;
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Change {
                #[serde(default)]
                set: BTreeMap<String, String>,
                #[serde(default)]
                unset: Vec<String>,
            }
            let change: Change = json_body(&text, "{\"set\": {...}, \"unset\": [...]}")?;
            let command = ConfigCommand::SetStageVariables { api, stage, set: change.set, unset: change.unset };
            outcome_response(member.propose(Proposal { expected_revision: expected, command }).await)
        }
        (&Method::POST, ["v1", "apis", api, "stages", stage, "rollback"]) => {
            let (api, stage) = (api.to_string(), stage.to_string());
            let expected = expected_revision(&request)?;
            let to = match query_value(query.as_deref(), "to") {
                Some(t) => match t.parse::<u64>() {
                    Ok(id) if id >= 1 => id,
                    _ => return Err(Refusal::new(StatusCode::BAD_REQUEST, "`to` must be a deployment id")),
                },
                None => {
                    let applied = member.applied.read().await;
                    let current =
                        applied.config.apis.get(&api).and_then(|a| a.stages.get(&stage)).map(|s| s.deployment);
                    let previous = current.and_then(|c| {
                        applied
                            .config
                            .apis
                            .get(&api)
                            .and_then(|a| a.deployments.range(..c).next_back().map(|(id, _)| *id))
                    });
                    match previous {
                        Some(p) => p,
                        None => {
                            return Err(Refusal::new(
                                StatusCode::NOT_FOUND,
                                "there is no earlier deployment to roll back to",
                            ));
                        }
                    }
                }
            };
            let command = ConfigCommand::SetStageDeployment { api, stage, deployment: to };
            outcome_response(member.propose(Proposal { expected_revision: expected, command }).await)
        }
        (&Method::POST, ["v1", "apis", api, "stages", stage, "canary"]) => {
            let (api, stage) = (api.to_string(), stage.to_string());
            let expected = expected_revision(&request)?;
            let text = body_text(request).await?;
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct CanaryBody {
                deployment: u64,
                percent: f64,
                #[serde(default)]
                variables: BTreeMap<String, String>,
            }
            let body: CanaryBody = json_body(&text, "{\"deployment\": ID, \"percent\": P}")?;
            if !(body.percent > 0.0 && body.percent < 100.0) {
                return Err(Refusal::new(StatusCode::BAD_REQUEST, "percent must be above 0 and below 100"));
            }
            if body.deployment == 0 {
                return Err(Refusal::new(StatusCode::BAD_REQUEST, "`deployment` is a deployment id (from 1)"));
            }
            let canary = Canary {
                deployment: body.deployment,
                basis_points: (body.percent * 100.0).round().clamp(1.0, 9999.0) as u32,
                variables: body.variables,
            };
            let command = ConfigCommand::SetCanary { api, stage, canary };
            outcome_response(member.propose(Proposal { expected_revision: expected, command }).await)
        }
        (&Method::POST, ["v1", "apis", api, "stages", stage, "canary", "promote"]) => {
            let command = ConfigCommand::PromoteCanary { api: api.to_string(), stage: stage.to_string() };
            outcome_response(
                member.propose(Proposal { expected_revision: expected_revision(&request)?, command }).await,
            )
        }
        (&Method::DELETE, ["v1", "apis", api, "stages", stage, "canary"]) => {
            let command = ConfigCommand::ClearCanary { api: api.to_string(), stage: stage.to_string() };
            outcome_response(
                member.propose(Proposal { expected_revision: expected_revision(&request)?, command }).await,
            )
        }
        _ => message(StatusCode::NOT_FOUND, "no such cluster endpoint"),
    })
}

pub(super) fn api_record<'c>(config: &'c meridian_consensus::ConfigState, api: &str) -> Result<&'c ApiRecord, Refusal> {
    config.apis.get(api).ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no API `{api}`")))
}

/// Who is making a change, as the client says (`x-meridian-actor`, which the CLI sets to
/// `user@host`); printable ASCII, at most 128 characters.
pub(super) fn actor(request: &Request<Incoming>) -> String {
    request
        .headers()
        .get("x-meridian-actor")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .unwrap_or("admin API")
        .to_string()
}

/// When `stage` of `api` already serves `definition` (the same API, compared as parsed
/// documents: comments, layout and key order do not count) and has every variable of
/// `file_variables`, the answer that says so; `apply` then creates no deployment.
pub(super) async fn already_served(
    member: &ClusterMember,
    api: &str,
    stage: &str,
    definition: &str,
    file_variables: &BTreeMap<String, String>,
) -> Option<Response<Full<Bytes>>> {
    let applied = member.applied.read().await;
    let record = applied.config.apis.get(api)?;
    let current = record.stages.get(stage)?;
    let served = record.deployments.get(&current.deployment)?;
    let same_variables = file_variables.iter().all(|(k, v)| current.variables.get(k) == Some(v));
    if !same_variables || !meridian_dataplane::config::same_definition(&served.definition, definition) {
        return None;
    }
    let revision = applied.config.revision;
    let body = serde_json::json!({
        "revision": revision,
        "changed": false,
        "created": null,
        "deployment": current.deployment,
    });
    Some(viewed(&body, revision))
}

/// Parses a JSON request body; a malformed one is a 400 that says what was expected.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(text: &str, expected: &str) -> Result<T, Refusal> {
    let bad = |e: String| Refusal::new(StatusCode::BAD_REQUEST, format!("expected {expected}: {e}"));
    // serde also reads a struct from an array of its fields in order; the API takes objects.
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad("the body must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

pub(super) fn invalid(text: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_value(Some("stage=prod&description=first%20cut"), "description").as_deref(),
            Some("first cut")
        );
        assert_eq!(query_value(Some("a=1"), "stage"), None);
    }
}
