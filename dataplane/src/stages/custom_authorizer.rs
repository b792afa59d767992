//! Custom authorizers: the gateway asks an HTTP service of the operator's whether to let a
//! request in, and caches the answer per identity.
//!
//! The request's identity sources (headers, query parameters, stage variables, the client
//! address, the path) are read first; a missing one is 401 without a call. On a cache miss
//! the gateway POSTs a JSON document (docs/CONFIG.md, "Custom authorizers") to the
//! authorizer and expects `{"isAuthorized": bool, "context": {...}}` back: the simple
//! response format of a managed gateway's HTTP APIs. A denial is 403. The authorizer being
//! unreachable or slow is 503, and an answer that is not that document is 500: the request
//! never goes through on a failure. Context values reach the upstream as headers.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{Value, json};

use super::{Exchange, Flow, Phases, Services, Stage, Step};
use crate::authorizers::AuthorizerContext;
use crate::authorizers::decisions::{Decision, DecisionCache};
use crate::integration::callee::{CallError, Callee};
use crate::observe::trace::{Attributes, SpanKind};
use crate::rejection::{Rejection, ResponseType};

/// The largest answer read from an authorizer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Where an identity value comes from (`$request.header.NAME`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    Header(HeaderName),
    Query(String),
    /// A stage variable, with its value on this stage.
    StageVariable(String, String),
    SourceIp,
    Path,
    Method,
}

impl IdentitySource {
    /// Parses one source as a managed gateway writes it; stage variables resolve with
    /// `variables`.
    pub fn parse(text: &str, variables: &std::collections::BTreeMap<String, String>) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("$request.header.") {
            return HeaderName::try_from(name)
                .map(IdentitySource::Header)
                .map_err(|_| format!("`{name}` is not a header name"));
        }
        if let Some(name) = text.strip_prefix("$request.querystring.").filter(|n| !n.is_empty()) {
            return Ok(IdentitySource::Query(name.to_string()));
        }
        if let Some(name) = text.strip_prefix("$stageVariables.").filter(|n| !n.is_empty()) {
            return match variables.get(name) {
                Some(value) => Ok(IdentitySource::StageVariable(name.to_string(), value.clone())),
                None => Err(format!("stage variable `{name}` is not defined on this stage")),
            };
        }
        match text {
            "$context.identity.sourceIp" => Ok(IdentitySource::SourceIp),
            "$context.path" => Ok(IdentitySource::Path),
            "$context.httpMethod" => Ok(IdentitySource::Method),
            _ => Err(format!(
                "`{text}` is not an identity source: use `$request.header.NAME`, `$request.querystring.NAME`, \
                 `$stageVariables.NAME`, `$context.identity.sourceIp`, `$context.path` or `$context.httpMethod`"
            )),
        }
    }

    fn value(&self, head: &Parts, exchange: &Exchange) -> Option<String> {
        match self {
            IdentitySource::Header(name) => {
                let values: Vec<&str> = head.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
                (!values.is_empty()).then(|| values.join(","))
            }
            IdentitySource::Query(name) => crate::query::joined_values(head.uri.query().unwrap_or(""), name),
            IdentitySource::StageVariable(_, value) => Some(value.clone()),
            IdentitySource::SourceIp => Some(exchange.client.to_string()),
            IdentitySource::Path => Some(head.uri.path().to_string()),
            IdentitySource::Method => Some(head.method.to_string()),
        }
        .filter(|v| !v.is_empty())
    }
}

/// One custom authorizer on one stage.
#[derive(Debug)]
pub struct CustomAuthorizer {
    /// `api/name`, for metrics and logs.
    pub name: Arc<str>,
    pub callee: Arc<Callee>,
    pub sources: Vec<IdentitySource>,
    pub ttl: Duration,
    pub cache_size: u64,
    /// Context values passed upstream, each as a header.
    pub context_headers: Vec<(String, HeaderName)>,
    /// `(api, stage, route key)`, for the request document.
    pub route: (String, String, String),
    pub cache: OnceLock<Arc<DecisionCache>>,
}

fn unauthorized() -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, "Unauthorized").with_reason("identity source missing")
}

impl CustomAuthorizer {
    /// The identity as a cache key: every source's value, each after its length (so that
    /// no two identities make one key), and the client certificate's fingerprint when there
    /// is one; `None` when a source is missing.
    fn cache_key(&self, head: &Parts, exchange: &Exchange) -> Option<String> {
        let mut key = String::with_capacity(64);
        for source in &self.sources {
            let start = key.len();
            match source {
                IdentitySource::Header(name) => {
                    for (i, value) in head.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).enumerate() {
                        if i > 0 {
                            key.push(',');
                        }
                        key.push_str(value);
                    }
                }
                other => key.push_str(&other.value(head, exchange)?),
            }
            let length = key.len() - start;
            if length == 0 {
                return None;
            }
            let _ = write!(key, ":{length};");
        }
        // The authorizer sees the client certificate too (mutual TLS): two clients with the
        // same identity and different certificates never share a decision.
        if let Some(cert) = exchange.state.get::<std::sync::Arc<crate::certificates::ClientCertificate>>() {
            let _ = write!(key, "cert:{};", cert.fingerprint);
        }
        Some(key)
    }

    /// The identity: every source's value, or `None` when one is missing.
    fn identity(&self, head: &Parts, exchange: &Exchange) -> Option<Vec<String>> {
        self.sources.iter().map(|s| s.value(head, exchange)).collect()
    }

    /// The document the authorizer receives.
    fn request_document(&self, head: &Parts, exchange: &Exchange, identity: &[String]) -> Bytes {
        let mut headers = serde_json::Map::new();
        for name in head.headers.keys() {
            let values: Vec<&str> = head.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            headers.insert(name.as_str().to_string(), Value::String(values.join(",")));
        }
        let mut query = serde_json::Map::new();
        for (k, v) in crate::query::pairs(head.uri.query().unwrap_or("")) {
            match query.get_mut(&k) {
                Some(Value::String(existing)) => {
                    existing.push(',');
                    existing.push_str(&v);
                }
                _ => {
                    query.insert(k, Value::String(v));
                }
            }
        }
        let stage_variables: serde_json::Map<String, Value> = self
            .sources
            .iter()
            .filter_map(|s| match s {
                IdentitySource::StageVariable(n, v) => Some((n.clone(), Value::String(v.clone()))),
                _ => None,
            })
            .collect();
        let (api, stage, route) = &self.route;
        let document = json!({
            "version": "2.0",
            "type": "REQUEST",
            "routeKey": route,
            "rawPath": head.uri.path(),
            "rawQueryString": head.uri.query().unwrap_or(""),
            "identitySource": identity,
            "headers": headers,
            "queryStringParameters": query,
            "stageVariables": stage_variables,
            "requestContext": {
                "apiId": api,
                "stage": stage,
                "routeKey": route,
                "requestId": exchange.request_id.to_str().unwrap_or(""),
                "http": {
                    "method": head.method.as_str(),
                    "path": head.uri.path(),
                    "sourceIp": exchange.client.to_string(),
                },
            },
        });
        let mut document = document;
        // Mutual TLS: the verified client certificate, as the managed gateway passes it.
        if let Some(cert) = exchange.state.get::<std::sync::Arc<crate::certificates::ClientCertificate>>() {
            document["requestContext"]["authentication"] = json!({ "clientCert": {
                "subjectDN": cert.subject,
                "issuerDN": cert.issuer,
                "serialNumber": cert.serial,
                "fingerprint": cert.fingerprint,
                "subjectAlternativeNames": cert.sans,
            }});
        }
        Bytes::from(document.to_string())
    }

    /// Calls the authorizer; the decision, or the rejection its failure becomes.
    async fn ask(&self, services: &Services<'_>, document: Bytes) -> Result<Decision, Rejection> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let answer =
            self.callee.call(Method::POST, headers, document, &services.authorizers.upstreams, MAX_ANSWER_BYTES).await;
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(authorizer = %self.name, error = %e, "custom authorizer call failed");
            Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "the authorizer is unavailable")
                .with_reason("authorizer unavailable")
                .of_type(ResponseType::AuthorizerFailure)
        };
        let invalid = |why: String| {
            tracing::warn!(authorizer = %self.name, "custom authorizer answered wrongly: {why}");
            Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, "the authorizer's answer is not valid")
                .with_reason("authorizer answer invalid")
                .of_type(ResponseType::AuthorizerFailure)
        };
        let answer = match answer {
            Ok(a) => a,
            Err(e @ CallError::Upstream(_)) => return Err(unavailable(&e)),
            Err(e) => return Err(invalid(e.to_string())),
        };
        if !answer.status.is_success() {
            return Err(invalid(format!("status {}", answer.status)));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Simple {
            is_authorized: bool,
            #[serde(default)]
            context: Option<serde_json::Map<String, Value>>,
        }
        let simple: Simple = serde_json::from_slice(&answer.body)
            .map_err(|e| invalid(format!("not `{{\"isAuthorized\": bool, \"context\": {{...}}}}`: {e}")))?;
        Ok(Decision { authorized: simple.is_authorized, context: Arc::new(simple.context.unwrap_or_default()) })
    }

    /// Lets the request in or refuses it by `decision`.
    fn apply(&self, decision: &Decision, cache: &DecisionCache, head: &mut Parts, exchange: &mut Exchange) -> Flow {
        if !decision.authorized {
            cache.denials.increment(1);
            return Rejection::new(StatusCode::FORBIDDEN, "Forbidden").with_reason("authorizer denied").into();
        }
        exchange.state.insert(AuthorizerContext::admit(
            &self.name,
            decision.context.clone(),
            &self.context_headers,
            head,
        ));
        Flow::Continue
    }
}

impl Stage for CustomAuthorizer {
    fn name(&self) -> &'static str {
        "custom_authorizer"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEAD
    }

    fn request_head<'a>(
        &'a self,
        head: &'a mut Parts,
        exchange: &'a mut Exchange,
        services: &'a Services<'a>,
    ) -> Step<'a> {
        let Some(key) = self.cache_key(head, exchange) else {
            return unauthorized().into();
        };
        let cache = self.cache.get_or_init(|| {
            services.authorizers.decisions.bind(&self.name, &self.callee.uri().to_string(), self.ttl, self.cache_size)
        });
        if let Some(decision) = cache.get(&key) {
            cache.hits.increment(1);
            return self.apply(&decision, cache, head, exchange).into();
        }
        cache.misses.increment(1);
        let Some(identity) = self.identity(head, exchange) else {
            return unauthorized().into();
        };
        let document = self.request_document(head, exchange, &identity);
        let span = exchange.start_span();
        Step::Waiting(Box::pin(async move {
            let asked = self.ask(services, document).await;
            exchange.end_span(
                span,
                format!("authorizer {}", self.name),
                SpanKind::Client,
                || {
                    let mut attributes: Attributes = vec![
                        ("meridian.authorizer", self.name.to_string().into()),
                        ("url.full", self.callee.uri().to_string().into()),
                    ];
                    if let Ok(decision) = &asked {
                        attributes.push(("meridian.authorizer.allowed", decision.authorized.into()));
                    }
                    attributes
                },
                asked.as_ref().err().map(|r| r.reason.as_deref().unwrap_or(&r.message).to_string()),
            );
            match asked {
                Ok(decision) => {
                    let decision = Arc::new(decision);
                    cache.insert(key, decision.clone());
                    self.apply(&decision, cache, head, exchange)
                }
                Err(rejection) => {
                    cache.errors.increment(1);
                    rejection.into()
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_sources_parse_as_a_managed_gateway_writes_them() {
        let vars = [("tier".to_string(), "gold".to_string())].into();
        assert_eq!(
            IdentitySource::parse("$request.header.Authorization", &vars).unwrap(),
            IdentitySource::Header(HeaderName::from_static("authorization"))
        );
        assert_eq!(
            IdentitySource::parse("$request.querystring.token", &vars).unwrap(),
            IdentitySource::Query("token".into())
        );
        assert_eq!(
            IdentitySource::parse("$stageVariables.tier", &vars).unwrap(),
            IdentitySource::StageVariable("tier".into(), "gold".into())
        );
        assert!(IdentitySource::parse("$stageVariables.nope", &vars).is_err());
        assert!(IdentitySource::parse("$request.body.x", &vars).is_err());
    }
}
