//! The cluster endpoints of the admin API: status, leave, deployments and stages.
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
use meridian_consensus::{
    ApiKeyRecord, ApiRecord, Canary, ClientCertificatesRecord, CommandOutcome, ConfigCommand, DomainRecord,
    MappingRecord, PlanRate, Proposal, QuotaPeriod, RegionRecord, Rejection, ZoneRecord,
};

use super::{json, message, views};
use crate::certificates::certified_key_from_pem;
use crate::cluster::member::{ClusterError, ClusterMember};
use crate::config::{base_path, valid_host, validate_definition};
use crate::digest::sha256_hex;

const MAX_DEFINITION: usize = 1024 * 1024;

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')).map(crate::query::percent_decode)
}

pub(super) fn with_etag(mut response: Response<Full<Bytes>>, revision: u64) -> Response<Full<Bytes>> {
    if let Ok(v) = http::HeaderValue::try_from(format!("\"{revision}\"")) {
        response.headers_mut().insert(http::header::ETAG, v);
    }
    response
}

/// A refused call: its status and message, made into a JSON response at the end.
#[derive(Debug)]
pub(super) struct Refusal(StatusCode, String);

impl Refusal {
    pub(super) fn new(status: StatusCode, text: impl Into<String>) -> Self {
        Refusal(status, text.into())
    }
}

fn expected_revision(request: &Request<Incoming>) -> Result<Option<u64>, Refusal> {
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
    if let ["v1", "credentials", ..] = segments.as_slice() {
        return super::credentials::route(&member, &method, &segments, request).await;
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
            with_etag(json(StatusCode::OK, serde_json::json!({ "apis": list }).to_string()), applied.config.revision)
        }
        (&Method::GET, ["v1", "apis", api]) => {
            let applied = member.applied.read().await;
            let record = api_record(&applied.config, api)?;
            with_etag(json(StatusCode::OK, views::api(api, record).to_string()), applied.config.revision)
        }
        (&Method::GET, ["v1", "apis", api, "stages"]) => {
            let applied = member.applied.read().await;
            let record = api_record(&applied.config, api)?;
            let list: Vec<_> = record.stages.iter().map(|(name, s)| views::stage(api, name, s)).collect();
            with_etag(
                json(StatusCode::OK, serde_json::json!({ "api": api, "stages": list }).to_string()),
                applied.config.revision,
            )
        }
        (&Method::GET, ["v1", "apis", api, "deployments"]) => {
            let applied = member.applied.read().await;
            let record = api_record(&applied.config, api)?;
            let list: Vec<_> = record.deployments.values().map(|d| views::deployment(api, record, d, false)).collect();
            with_etag(
                json(StatusCode::OK, serde_json::json!({ "api": api, "deployments": list }).to_string()),
                applied.config.revision,
            )
        }
        (&Method::GET, ["v1", "apis", api, "deployments", id]) => {
            let applied = member.applied.read().await;
            let record = api_record(&applied.config, api)?;
            let deployment =
                id.parse::<u64>().ok().and_then(|id| record.deployments.get(&id)).ok_or_else(|| {
                    Refusal::new(StatusCode::NOT_FOUND, format!("API `{api}` has no deployment {id}"))
                })?;
            with_etag(
                json(StatusCode::OK, views::deployment(api, record, deployment, true).to_string()),
                applied.config.revision,
            )
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
                created_at_ms: crate::observe::time::unix_ms(),
                created_by: actor,
                stage_variables: file_variables,
                stage: Some(stage),
            };
            outcome_response(member.propose(Proposal { expected_revision: expected, command }).await)
        }
        (&Method::GET, ["v1", "apis", api, "stages", stage]) => {
            let applied = member.applied.read().await;
            match applied.config.apis.get(*api).and_then(|a| a.stages.get(*stage)) {
                Some(s) => {
                    with_etag(json(StatusCode::OK, views::stage(api, stage, s).to_string()), applied.config.revision)
                }
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
        (&Method::GET, ["v1", "domains"]) => {
            let applied = member.applied.read().await;
            let config = &applied.config;
            let list: Vec<_> = config
                .domains
                .iter()
                .map(|(name, d)| views::domain(name, d, config.client_certificates.get(name)))
                .collect();
            with_etag(json(StatusCode::OK, serde_json::json!({ "domains": list }).to_string()), applied.config.revision)
        }
        (&Method::GET, ["v1", "domains", name]) => {
            let applied = member.applied.read().await;
            let name = name.to_ascii_lowercase();
            let d = applied
                .config
                .domains
                .get(&name)
                .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no domain `{name}`")))?;
            let view = views::domain(&name, d, applied.config.client_certificates.get(&name));
            with_etag(json(StatusCode::OK, view.to_string()), applied.config.revision)
        }
        (&Method::PUT, ["v1", "domains", name]) => {
            let name = name.to_ascii_lowercase();
            let expected = expected_revision(&request)?;
            let text = body_text(request).await?;
            let (domain, client_certificates) = domain_record(&member, &name, &text).await?;
            let command = ConfigCommand::PutDomainWithClientCertificates { name, domain, client_certificates };
            outcome_response(member.propose(Proposal { expected_revision: expected, command }).await)
        }
        (&Method::DELETE, ["v1", "domains", name]) => {
            let command = ConfigCommand::DeleteDomain { name: name.to_ascii_lowercase() };
            outcome_response(
                member.propose(Proposal { expected_revision: expected_revision(&request)?, command }).await,
            )
        }
        (&Method::GET, ["v1", "regions"]) => {
            let applied = member.applied.read().await;
            let list: Vec<_> = applied.config.regions.iter().map(|(name, r)| views::region(name, r)).collect();
            with_etag(json(StatusCode::OK, serde_json::json!({ "regions": list }).to_string()), applied.config.revision)
        }
        (&Method::GET, ["v1", "regions", name]) => {
            let applied = member.applied.read().await;
            let r = applied
                .config
                .regions
                .get(*name)
                .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no region `{name}`")))?;
            with_etag(json(StatusCode::OK, views::region(name, r).to_string()), applied.config.revision)
        }
        (&Method::PUT, ["v1", "regions", name]) => {
            let name = name.to_string();
            let expected = expected_revision(&request)?;
            let text = body_text(request).await?;
            let region = region_record(&name, &text)?;
            let command = ConfigCommand::PutRegion { name, region };
            outcome_response(member.propose(Proposal { expected_revision: expected, command }).await)
        }
        (&Method::DELETE, ["v1", "regions", name]) => {
            let command = ConfigCommand::DeleteRegion { name: name.to_string() };
            outcome_response(
                member.propose(Proposal { expected_revision: expected_revision(&request)?, command }).await,
            )
        }
        (&Method::GET, ["v1", "dns", "zones"]) => {
            let applied = member.applied.read().await;
            let list: Vec<_> = applied.config.zones.iter().map(|(name, z)| views::zone(name, z)).collect();
            with_etag(json(StatusCode::OK, serde_json::json!({ "zones": list }).to_string()), applied.config.revision)
        }
        (&Method::GET, ["v1", "dns", "zones", name]) => {
            let applied = member.applied.read().await;
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let z = applied
                .config
                .zones
                .get(&name)
                .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no DNS zone `{name}`")))?;
            with_etag(json(StatusCode::OK, views::zone(&name, z).to_string()), applied.config.revision)
        }
        (&Method::PUT, ["v1", "dns", "zones", name]) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let expected = expected_revision(&request)?;
            let text = body_text(request).await?;
            let zone = crate::cluster::dns::parse_zone(&text).map_err(|errors| invalid(errors.join("; ")))?;
            if zone.origin.to_string().trim_end_matches('.') != name {
                return Err(invalid(format!("the document is for zone `{}`, not `{name}`", zone.origin)));
            }
            let command = ConfigCommand::PutZone { name, zone: ZoneRecord { definition: text } };
            outcome_response(member.propose(Proposal { expected_revision: expected, command }).await)
        }
        (&Method::DELETE, ["v1", "dns", "zones", name]) => {
            let command = ConfigCommand::DeleteZone { name: name.trim_end_matches('.').to_ascii_lowercase() };
            outcome_response(
                member.propose(Proposal { expected_revision: expected_revision(&request)?, command }).await,
            )
        }
        (&Method::GET, ["v1", "dns", "explain"]) => {
            let Some(dns) = member.dns() else {
                return Err(Refusal::new(StatusCode::CONFLICT, "this node serves no DNS (set `cluster.dns`)"));
            };
            let client = query_value(query.as_deref(), "client")
                .and_then(|c| c.parse::<std::net::IpAddr>().ok())
                .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "name the client address: ?client=IP"))?;
            let name = query_value(query.as_deref(), "name")
                .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "name the queried name: ?name=NAME"))?;
            let explained = dns.explain(client, &name).await.map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e))?;
            json(StatusCode::OK, explained.to_string())
        }
        (&Method::GET, ["v1", "keys"]) => {
            let applied = member.applied.read().await;
            let config = &applied.config;
            let list: Vec<_> = config.keys.iter().map(|(id, k)| views::key(config, id, k)).collect();
            with_etag(json(StatusCode::OK, serde_json::json!({ "keys": list }).to_string()), config.revision)
        }
        (&Method::GET, ["v1", "keys", key]) => {
            let id = key_id(&member, key).await?;
            let applied = member.applied.read().await;
            let config = &applied.config;
            let k =
                config.keys.get(&id).ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no key `{key}`")))?;
            with_etag(json(StatusCode::OK, views::key(config, &id, k).to_string()), config.revision)
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
                created_at_ms: crate::observe::time::unix_ms(),
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
            let id = key_id(&member, key).await?;
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
            let id = key_id(&member, key).await?;
            outcome_response(
                member.propose(Proposal { expected_revision: None, command: ConfigCommand::DeleteKey { id } }).await,
            )
        }
        (&Method::GET, ["v1", "plans"]) => {
            let applied = member.applied.read().await;
            let list: Vec<_> = applied.config.plans.iter().map(|(name, p)| views::plan(name, p)).collect();
            with_etag(json(StatusCode::OK, serde_json::json!({ "plans": list }).to_string()), applied.config.revision)
        }
        (&Method::GET, ["v1", "plans", plan]) => {
            let applied = member.applied.read().await;
            let p = applied
                .config
                .plans
                .get(*plan)
                .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no usage plan `{plan}`")))?;
            with_etag(json(StatusCode::OK, views::plan(plan, p).to_string()), applied.config.revision)
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
            let key = key_id(&member, &body.key).await?;
            outcome_response(
                member
                    .propose(Proposal { expected_revision: None, command: ConfigCommand::AddPlanKey { plan, key } })
                    .await,
            )
        }
        (&Method::GET, ["v1", "usage"]) => usage(&member, query.as_deref()).await?,
        _ => message(StatusCode::NOT_FOUND, "no such cluster endpoint"),
    })
}

/// `GET /v1/usage?plan=P[&key=K]&from=YYYY-MM-DD&to=YYYY-MM-DD`: each key's requests per day
/// and its quota, as this node sees the cluster's counters.
async fn usage(member: &ClusterMember, query: Option<&str>) -> Result<Response<Full<Bytes>>, Refusal> {
    use crate::cluster::dataplane::{period, quota_scope, usage_scope};
    use crate::observe::time::{format_date, parse_date};
    let plan_name =
        query_value(query, "plan").ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "name the plan: ?plan=NAME"))?;
    let today = (crate::observe::time::unix_ms() / 86_400_000) as i64;
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
            let (window, _) = period(p).window(crate::observe::time::unix_ms());
            let used = limiter.count(&quota_scope(&plan_name, id), window).unwrap_or(0);
            serde_json::json!({ "limit": limit, "period": period(p).name(), "used": used, "remaining": limit.saturating_sub(used) })
        });
        keys.push(serde_json::json!({ "id": id, "name": name, "days": days, "total": total, "quota": quota }));
    }
    Ok(with_etag(
        json(
            StatusCode::OK,
            serde_json::json!({ "plan": plan_name, "from": format_date(from), "to": format_date(to), "keys": keys })
                .to_string(),
        ),
        applied.config.revision,
    ))
}

fn api_record<'c>(config: &'c meridian_consensus::ConfigState, api: &str) -> Result<&'c ApiRecord, Refusal> {
    config.apis.get(api).ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("no API `{api}`")))
}

/// Who is making a change, as the client says (`x-meridian-actor`, which the CLI sets to
/// `user@host`); printable ASCII, at most 128 characters.
fn actor(request: &Request<Incoming>) -> String {
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
async fn already_served(
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
    if !same_variables || !crate::config::same_definition(&served.definition, definition) {
        return None;
    }
    let revision = applied.config.revision;
    let body = serde_json::json!({
        "revision": revision,
        "changed": false,
        "created": null,
        "deployment": current.deployment,
    });
    Some(with_etag(json(StatusCode::OK, body.to_string()), revision))
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
            with_etag(json(StatusCode::OK, body.to_string()), revision)
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

/// Checks a domain body: a host name, a certificate that fits its key (or neither),
/// mappings to stages that exist, and a mutual TLS policy whose CA certificates and
/// revocation lists make a verifier.
async fn domain_record(
    member: &ClusterMember,
    name: &str,
    text: &str,
) -> Result<(DomainRecord, Option<ClientCertificatesRecord>), Refusal> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Mapping {
        #[serde(default = "root")]
        base_path: String,
        api: String,
        stage: String,
    }
    fn root() -> String {
        "/".into()
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ClientCertificates {
        ca_pem: String,
        crl_pem: Option<String>,
        #[serde(default = "yes")]
        required: bool,
    }
    fn yes() -> bool {
        true
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        certificate_pem: Option<String>,
        key_pem: Option<String>,
        #[serde(default)]
        mappings: Vec<Mapping>,
        client_certificates: Option<ClientCertificates>,
    }
    let body: Body = json_body(text, "{\"certificate_pem\", \"key_pem\", \"mappings\", \"client_certificates\"}")?;
    if !valid_host(name) {
        return Err(invalid(format!("`{name}` is not a host name")));
    }
    match (&body.certificate_pem, &body.key_pem) {
        (Some(cert), Some(key)) => {
            certified_key_from_pem(cert, key).map_err(|e| invalid(format!("certificate: {e}")))?;
        }
        (None, None) => {}
        _ => return Err(invalid("give both `certificate_pem` and `key_pem`, or neither")),
    }
    let client_certificates = match body.client_certificates {
        None => None,
        Some(_) if body.certificate_pem.is_none() => {
            return Err(invalid("`client_certificates` needs the domain's own `certificate_pem` and `key_pem`"));
        }
        Some(c) => {
            crate::certificates::client_verifier_from_pem(&c.ca_pem, c.crl_pem.as_deref(), c.required)
                .map_err(|e| invalid(format!("client_certificates: {e}")))?;
            Some(ClientCertificatesRecord { ca_pem: c.ca_pem, crl_pem: c.crl_pem, required: c.required })
        }
    };
    let applied = member.applied.read().await;
    let mut seen = std::collections::BTreeSet::new();
    let mut mappings = Vec::new();
    for m in body.mappings {
        let normalized = base_path(&m.base_path).map_err(invalid)?;
        if !seen.insert(normalized.clone()) {
            return Err(invalid(format!("base path `{}` is mapped twice", m.base_path)));
        }
        if applied.config.apis.get(&m.api).and_then(|a| a.stages.get(&m.stage)).is_none() {
            return Err(invalid(format!("API `{}` has no stage `{}`", m.api, m.stage)));
        }
        mappings.push(MappingRecord { base_path: m.base_path, api: m.api, stage: m.stage });
    }
    // The key enters the replicated state sealed (docs/SECURITY.md).
    let key_sealed = match &body.key_pem {
        Some(key) => Some(
            member
                .data_key()
                .seal(&crate::cluster::sealed::domain_key(name), key.as_bytes())
                .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        ),
        None => None,
    };
    Ok((DomainRecord { certificate_pem: body.certificate_pem, key_sealed, mappings }, client_certificates))
}

/// Checks a region body: a name, an optional weight, and client networks in CIDR form.
fn region_record(name: &str, text: &str) -> Result<RegionRecord, Refusal> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        weight: Option<u32>,
        #[serde(default)]
        client_cidrs: Vec<String>,
    }
    let body: Body = json_body(text, "{\"weight\", \"client_cidrs\"}")?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(invalid("a region is a name of a-z, 0-9 and `-`"));
    }
    for cidr in &body.client_cidrs {
        cidr.parse::<meridian_dns::net::Cidr>().map_err(|e| invalid(e.to_string()))?;
    }
    Ok(RegionRecord { weight: body.weight, client_cidrs: body.client_cidrs })
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
