//! Operations into routes: the integration (`http_proxy`, `http` with its templates and
//! responses, `mock`), the security a route needs, its request model, validator and required
//! parameters.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::Report;
use crate::document::{Document, Operation, model_name, pointer, response_of, status_of};
use crate::security::{Scheme, Schemes};

#[derive(Default)]
pub(crate) struct Routes {
    pub routes: Vec<Value>,
    /// Operations seen.
    pub seen: usize,
    /// Stage variables the integrations' URIs use.
    pub stage_variables: BTreeSet<String>,
}

/// Integration fields that are read below; any other is reported.
const INTEGRATION_FIELDS: &[&str] = &[
    "type",
    "uri",
    "httpMethod",
    "passthroughBehavior",
    "requestTemplates",
    "requestParameters",
    "responses",
    "timeoutInMillis",
    "contentHandling",
    "payloadFormatVersion",
];

impl Routes {
    pub fn add(&mut self, doc: &Document<'_>, op: &Operation<'_>, security: &Schemes, report: &mut Report) {
        self.seen += 1;
        if !self.route(doc, op, security, report) {
            // Reported once as not imported: its other extensions are not listed again.
            doc.read(&op.at);
        }
    }

    /// Adds the operation's route; false when it is not imported (and reported).
    fn route(&mut self, doc: &Document<'_>, op: &Operation<'_>, security: &Schemes, report: &mut Report) -> bool {
        let route_name = format!("{} {}", op.method, op.path);
        let mut route = Map::new();
        route.insert("route".into(), json!(route_name));

        let Some(integration) = doc.extension(op.body, &op.at, "x-amazon-apigateway-integration") else {
            report.add(
                op.at.clone(),
                format!(
                    "`{route_name}` is not imported: it has no x-amazon-apigateway-integration (add an integration)"
                ),
            );
            return false;
        };
        let iat = format!("{}/x-amazon-apigateway-integration", op.at);
        let integration = doc.resolve(integration);
        let Some(mapped) = self.integration(&route_name, integration, &iat, op, report) else { return false };
        route.insert("integration".into(), mapped);

        if !self.security(doc, op, security, &mut route, &route_name, report) {
            return false;
        }
        if let Some(validator) =
            doc.extension(op.body, &op.at, "x-amazon-apigateway-request-validator").and_then(Value::as_str)
        {
            route.insert("request_validator".into(), json!(validator));
        }
        if !doc.http_api {
            request_shape(doc, op, &mut route, report);
        }
        self.routes.push(Value::Object(route));
        true
    }

    /// The route's integration, or `None` (reported) when it cannot be served.
    fn integration(
        &mut self,
        route_name: &str,
        integration: &Value,
        at: &str,
        op: &Operation<'_>,
        report: &mut Report,
    ) -> Option<Value> {
        let kind = integration.get("type").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
        for field in integration.as_object().into_iter().flatten().map(|(k, _)| k) {
            if !INTEGRATION_FIELDS.contains(&field.as_str()) {
                let advice = match field.as_str() {
                    "cacheKeyParameters" | "cacheNamespace" => {
                        "configure the response cache with `cache:` on the stage and route"
                    }
                    "connectionType" | "connectionId" => {
                        "Meridian reaches upstreams directly: point `uri` at an address the nodes can reach"
                    }
                    "credentials" => "cloud credentials are not used: Meridian calls the upstream itself",
                    "tlsConfig" => "set `ca_file` on the integration for a private CA",
                    _ => "no Meridian counterpart",
                };
                report
                    .add(format!("{at}{}", pointer([field.as_str()])), format!("`{field}` is not imported: {advice}"));
            }
        }
        let mut out = Map::new();
        match kind.as_str() {
            "http_proxy" | "http" => {
                let Some(uri) = integration.get("uri").and_then(Value::as_str) else {
                    report.add(at, format!("`{route_name}` is not imported: its integration has no `uri`"));
                    return None;
                };
                if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                    report.add(
                        format!("{at}/uri"),
                        format!("`{route_name}` is not imported: `{uri}` is not an http or https URL"),
                    );
                    return None;
                }
                let uri = self.uri(uri, integration, at, report);
                out.insert("type".into(), json!("http_proxy"));
                out.insert("uri".into(), json!(uri));
                if let Some(method) = integration.get("httpMethod").and_then(Value::as_str)
                    && !method.eq_ignore_ascii_case("ANY")
                    && !method.eq_ignore_ascii_case(&op.method)
                {
                    report.add(
                        format!("{at}/httpMethod"),
                        format!("the upstream is called with the client's method, not `{method}` (Meridian does not change the method)"),
                    );
                }
                if let Some(ms) = integration.get("timeoutInMillis").and_then(Value::as_u64) {
                    out.insert("timeout".into(), json!(format!("{ms}ms")));
                }
                if kind == "http" {
                    mapping(integration, &mut out, at, report);
                } else if integration
                    .get("responses")
                    .and_then(Value::as_object)
                    .is_some_and(|r| r.values().any(says_something))
                {
                    report.add(format!("{at}/responses"), "responses of an http_proxy integration are not used (the upstream's answer passes through): make it `http` to map answers");
                }
            }
            "mock" => {
                out.insert("type".into(), json!("mock"));
                let default = integration.pointer("/responses/default");
                if let Some(status) = status_of(default.and_then(|d| d.get("statusCode"))) {
                    out.insert("status".into(), json!(status));
                }
                let template =
                    default.and_then(|d| d.pointer("/responseTemplates/application~1json")).and_then(Value::as_str);
                match template {
                    Some(body) if !body.contains('$') && !body.contains('#') => {
                        out.insert("body".into(), json!(body));
                        out.insert("headers".into(), json!({ "content-type": "application/json" }));
                    }
                    Some(_) => report.add(
                        format!("{at}/responses/default/responseTemplates"),
                        "a mock's templated answer is not imported: a mock answers a fixed body (write it as `body`)",
                    ),
                    None => {}
                }
                let others =
                    integration.get("responses").and_then(Value::as_object).map_or(0, |r| r.len().saturating_sub(1));
                if others > 0
                    || integration.get("requestTemplates").is_some_and(|t| t.as_object().is_some_and(|t| t.len() > 1))
                {
                    report.add(
                        format!("{at}/responses"),
                        "a mock answers one fixed status: only the default response is imported",
                    );
                }
            }
            "aws" | "aws_proxy" => {
                report.add(
                    at,
                    format!("`{route_name}` is not imported: its integration calls a cloud service (`{kind}`); serve that behind an HTTP endpoint and point an `http_proxy` integration at it"),
                );
                return None;
            }
            other => {
                report.add(
                    format!("{at}/type"),
                    format!("`{route_name}` is not imported: integration type `{other}` is not supported"),
                );
                return None;
            }
        }
        Some(Value::Object(out))
    }

    /// The upstream URI with the integration's path parameters renamed to the route's, and
    /// what of `requestParameters` cannot be carried reported.
    fn uri(&mut self, uri: &str, integration: &Value, at: &str, report: &mut Report) -> String {
        let mut uri = uri.to_string();
        for (target, source) in integration.get("requestParameters").and_then(Value::as_object).into_iter().flatten() {
            let source = source.as_str().unwrap_or("");
            match (target.strip_prefix("integration.request.path."), source.strip_prefix("method.request.path.")) {
                (Some(to), Some(from)) => {
                    if to != from {
                        uri = uri.replace(&format!("{{{to}}}"), &format!("{{{from}}}"));
                    }
                }
                _ => report.add(
                    format!("{at}/requestParameters{}", pointer([target.as_str()])),
                    format!("`{target}: {source}` is not imported: only path parameters are passed as written; headers and query parameters go upstream as the client sent them"),
                ),
            }
        }
        let mut rest = uri.as_str();
        while let Some(start) = rest.find("${stageVariables.") {
            let after = &rest[start + "${stageVariables.".len()..];
            let Some(end) = after.find('}') else { break };
            self.stage_variables.insert(after[..end].to_string());
            rest = &after[end..];
        }
        uri
    }

    /// The route's authorization from `security`; false (reported) when it needs something
    /// that was not mapped, so that it is not imported open.
    fn security(
        &self,
        doc: &Document<'_>,
        op: &Operation<'_>,
        schemes: &Schemes,
        route: &mut Map<String, Value>,
        route_name: &str,
        report: &mut Report,
    ) -> bool {
        // The older per-operation form: `{type: none}` or `{type: aws_iam}`.
        if let Some(auth) = doc.extension(op.body, &op.at, "x-amazon-apigateway-auth") {
            match auth.get("type").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
                Some("aws_iam") => {
                    route.insert("authorization".into(), json!("signed"));
                }
                Some("none") => {}
                other => {
                    report.add(
                        format!("{}/x-amazon-apigateway-auth", op.at),
                        format!("`{route_name}` is not imported: authorization type {other:?} is not supported"),
                    );
                    return false;
                }
            }
        }
        let Some(requirements) = op.body.get("security").or(schemes.default.as_ref()).and_then(Value::as_array) else {
            return true;
        };
        // The managed gateway requires every scheme listed (an API key and an authorizer).
        let mut authorizer: Option<(&str, Vec<Value>, bool)> = None;
        for (name, scopes) in requirements.iter().filter_map(Value::as_object).flatten() {
            match schemes.by_name.get(name) {
                Some(Scheme::ApiKey) => {
                    route.insert("api_key_required".into(), json!(true));
                }
                Some(Scheme::Signed) => {
                    route.insert("authorization".into(), json!("signed"));
                }
                Some(Scheme::Authorizer { jwt }) => {
                    let scopes = scopes.as_array().cloned().unwrap_or_default();
                    if let Some((first, _, _)) = &authorizer {
                        report.add(
                            format!("{}/security", op.at),
                            format!("`{route_name}` names two authorizers: it uses `{first}`, not `{name}`"),
                        );
                        continue;
                    }
                    authorizer = Some((name, scopes, *jwt));
                }
                Some(Scheme::Unmapped(at)) => {
                    report.add(
                        format!("{}/security", op.at),
                        format!("`{route_name}` is not imported: it needs `{name}` ({at}), which was not imported"),
                    );
                    return false;
                }
                // The managed gateway's exports name API keys `api_key` without always
                // declaring the scheme.
                None if name == "api_key" => {
                    report.add(
                        format!("{}/security", op.at),
                        "`api_key` is not declared: taken as the managed gateway's API key (`x-api-key`)",
                    );
                    route.insert("api_key_required".into(), json!(true));
                }
                None => {
                    report.add(
                        format!("{}/security", op.at),
                        format!(
                            "`{route_name}` is not imported: it needs `{name}`, which the document does not declare"
                        ),
                    );
                    return false;
                }
            }
        }
        if let Some((name, scopes, jwt)) = authorizer {
            route.insert("authorizer".into(), json!(name));
            if jwt && !scopes.is_empty() {
                route.insert("scopes".into(), Value::Array(scopes));
            } else if !scopes.is_empty() {
                report.add(
                    format!("{}/security", op.at),
                    format!("scopes of `{route_name}` are not imported: only JWT authorizers check scopes"),
                );
            }
        }
        true
    }
}

/// Whether an integration response says more than "pass the answer on".
fn says_something(response: &Value) -> bool {
    response.get("responseTemplates").and_then(Value::as_object).is_some_and(|t| !t.is_empty())
        || response.get("responseParameters").and_then(Value::as_object).is_some_and(|p| !p.is_empty())
        || status_of(response.get("statusCode")).is_some_and(|s| s != 200)
}

/// Request templates, passthrough, content handling and responses of an `http` integration.
fn mapping(integration: &Value, out: &mut Map<String, Value>, at: &str, report: &mut Report) {
    if let Some(templates) = integration.get("requestTemplates").and_then(Value::as_object)
        && !templates.is_empty()
    {
        out.insert("request_templates".into(), Value::Object(templates.clone()));
    }
    if let Some(passthrough) = integration.get("passthroughBehavior").and_then(Value::as_str) {
        out.insert("passthrough_behavior".into(), json!(passthrough.to_ascii_lowercase()));
    }
    if let Some(handling) = integration.get("contentHandling").and_then(Value::as_str) {
        out.insert("content_handling".into(), json!(handling.to_ascii_lowercase()));
    }
    let mut responses = Vec::new();
    let mut default = None;
    for (pattern, response) in integration.get("responses").and_then(Value::as_object).into_iter().flatten() {
        let rat = format!("{at}/responses{}", pointer([pattern.as_str()]));
        let mut entry = response_of(
            response,
            &rat,
            ("method.response.header.", |v| {
                (v.len() >= 2 && v.starts_with('\'') && v.ends_with('\''))
                    || v.starts_with("integration.response.header.")
                    || v == "integration.response.body"
                    || v.starts_with("integration.response.body.")
            }),
            "response headers are literals, upstream headers or values of the upstream's body",
            report,
        );
        if pattern != "default" {
            entry.insert("selection_pattern".into(), json!(pattern));
        }
        if let Some(handling) = response.get("contentHandling").and_then(Value::as_str) {
            entry.insert("content_handling".into(), json!(handling.to_ascii_lowercase()));
        }
        if pattern == "default" {
            default = Some(Value::Object(entry));
        } else {
            responses.push(Value::Object(entry));
        }
    }
    // The default is tried last.
    responses.extend(default);
    if !responses.is_empty() {
        out.insert("responses".into(), Value::Array(responses));
    }
}

/// The request model by content type and the required query parameters and headers.
fn request_shape(doc: &Document<'_>, op: &Operation<'_>, route: &mut Map<String, Value>, report: &mut Report) {
    let mut models = Map::new();
    let mut required = Vec::new();
    let own = op.body.get("parameters").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for parameter in op.shared_parameters.iter().chain(own) {
        let parameter = doc.resolve(parameter);
        let name = parameter.get("name").and_then(Value::as_str).unwrap_or("");
        let is_required = parameter.get("required").and_then(Value::as_bool).unwrap_or(false);
        match parameter.get("in").and_then(Value::as_str) {
            Some("query") if is_required => required.push(json!(format!("querystring.{name}"))),
            Some("header") if is_required => required.push(json!(format!("header.{name}"))),
            // Swagger 2.0: the body is a parameter; its media types are the operation's.
            Some("body") => {
                if let Some(schema) = parameter.get("schema") {
                    let consumes = op.body.get("consumes").or(doc.root.get("consumes")).and_then(Value::as_array);
                    let types: Vec<&str> = consumes.into_iter().flatten().filter_map(Value::as_str).collect();
                    let types = if types.is_empty() { vec!["application/json"] } else { types };
                    for media in types {
                        model_for(op, schema, media, &mut models, report);
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(content) =
        op.body.get("requestBody").map(|b| doc.resolve(b)).and_then(|b| b.get("content")).and_then(Value::as_object)
    {
        for (media, body) in content {
            if let Some(schema) = body.get("schema") {
                model_for(op, schema, media, &mut models, report);
            }
        }
    }
    if !models.is_empty() {
        route.insert("request_models".into(), Value::Object(models));
    }
    if !required.is_empty() {
        route.insert("required_parameters".into(), Value::Array(required));
    }
}

/// The model of a request body: a named schema, or an inline one (reported: declare it as a
/// model to validate it).
fn model_for(op: &Operation<'_>, schema: &Value, media: &str, models: &mut Map<String, Value>, report: &mut Report) {
    match model_name(schema) {
        Some(name) => {
            models.insert(media.to_string(), json!(name));
        }
        None => {
            report.add(
                format!("{}/requestBody", op.at),
                format!("the inline request schema of `{} {}` ({media}) is not a model: move it to the document's schemas to validate it", op.method, op.path),
            );
        }
    }
}
