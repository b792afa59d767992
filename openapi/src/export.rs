//! OpenAPI export: one API definition (as the node keeps it) into an OpenAPI 3.0 document.
//!
//! - [`Extensions::None`]: plain OpenAPI (paths, parameters, request bodies, schemas,
//!   security schemes), for documentation and client generators.
//! - [`Extensions::Aws`]: plus the managed gateway's `x-amazon-apigateway-*` extensions for
//!   what it can express (integrations with templates and responses, validators, binary
//!   types, CORS, gateway responses), so that the gateway's own import reads it.
//! - [`Extensions::Meridian`]: plus the definition itself (`x-meridian-api` and one
//!   `x-meridian-route` per operation), so that [`import`](crate::import) gives back the very
//!   same definition.

use serde_json::{Map, Value, json};

/// Which extensions an exported document carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extensions {
    Meridian,
    Aws,
    None,
}

const ANY: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

/// Exports `api` (one entry of a definition's `apis`) as served on `stage`.
pub fn export(api: &Value, stage: &str, extensions: Extensions) -> Result<Value, String> {
    let Some(api) = api.as_object() else { return Err("an API definition is an object".into()) };
    let id = api.get("id").and_then(Value::as_str).ok_or("the API has no id")?;
    let title = api.get("name").and_then(Value::as_str).unwrap_or(id);
    let aws = extensions != Extensions::None;
    let mut doc = Map::new();
    doc.insert("openapi".into(), json!("3.0.3"));
    doc.insert("info".into(), json!({ "title": title, "version": stage }));
    doc.insert("servers".into(), json!([{ "url": format!("/{stage}") }]));

    let mut schemes = Map::new();
    let mut paths: Map<String, Value> = Map::new();
    for route in api.get("routes").and_then(Value::as_array).into_iter().flatten() {
        let key = route.get("route").and_then(Value::as_str).ok_or("a route has no `route`")?;
        // An operation is one method of one path: routes told apart by headers or query have
        // no place in the document, and exporting one of them alone would misdescribe the API.
        if route.get("match").is_some() {
            return Err(format!(
                "route `{key}` has `match` conditions, which an OpenAPI document cannot express (one operation per method and path)"
            ));
        }
        if route.pointer("/integration/type").and_then(Value::as_str) == Some("redirect") {
            return Err(format!(
                "route `{key}` is a redirect, which the managed gateway's integrations cannot express (its mocks cannot splice the path into `Location`)"
            ));
        }
        let (method, path) = key.split_once(' ').ok_or_else(|| format!("`{key}` is not `METHOD /path`"))?;
        let path = path.trim();
        let method = method.to_ascii_lowercase();
        // Under the managed gateway's any-method a greedy parameter is named without its
        // `+`, as its exports write it; elsewhere as the template writes it (validators check).
        let greedy_bare = aws && method == "any";
        let mut operation = operation(api, route, path, aws, greedy_bare, &mut schemes);
        if extensions == Extensions::Meridian {
            let mut own = route.as_object().cloned().unwrap_or_default();
            own.remove("route");
            operation.insert("x-meridian-route".into(), Value::Object(own));
        }
        let item = paths.entry(path.to_string()).or_insert_with(|| json!({})).as_object_mut().ok_or("paths")?;
        if method == "any" {
            if aws {
                item.insert("x-amazon-apigateway-any-method".into(), Value::Object(operation));
            } else {
                for m in ANY {
                    item.entry(m.to_string()).or_insert_with(|| Value::Object(operation.clone()));
                }
            }
        } else {
            item.insert(method, Value::Object(operation));
        }
    }
    doc.insert("paths".into(), Value::Object(paths));

    let mut components = Map::new();
    if let Some(models) = api.get("models").and_then(Value::as_object) {
        let schemas: Map<String, Value> =
            models.iter().map(|(name, schema)| (name.clone(), schema_of(schema))).collect();
        components.insert("schemas".into(), Value::Object(schemas));
    }
    if !schemes.is_empty() {
        components.insert("securitySchemes".into(), Value::Object(schemes));
    }
    if !components.is_empty() {
        doc.insert("components".into(), Value::Object(components));
    }
    if aws {
        api_extensions(api, &mut doc);
    }
    if extensions == Extensions::Meridian {
        let mut own = api.clone();
        own.remove("routes");
        doc.insert("x-meridian-api".into(), Value::Object(own));
    }
    Ok(Value::Object(doc))
}

/// One operation: parameters, request body, security, and (with `aws`) its integration.
fn operation(
    api: &Map<String, Value>,
    route: &Value,
    path: &str,
    aws: bool,
    greedy_bare: bool,
    schemes: &mut Map<String, Value>,
) -> Map<String, Value> {
    let mut op = Map::new();
    let mut parameters = Vec::new();
    for segment in path.split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let name = if greedy_bare { name.trim_end_matches('+') } else { name };
            parameters.push(json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }));
        }
    }
    for required in
        route.get("required_parameters").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
    {
        let (place, name) = match required.split_once('.') {
            Some(("querystring", name)) => ("query", name),
            Some(("header", name)) => ("header", name),
            _ => continue,
        };
        parameters.push(json!({ "name": name, "in": place, "required": true, "schema": { "type": "string" } }));
    }
    if !parameters.is_empty() {
        op.insert("parameters".into(), Value::Array(parameters));
    }
    if let Some(models) = route.get("request_models").and_then(Value::as_object) {
        let content: Map<String, Value> = models
            .iter()
            .filter(|(media, _)| media.as_str() != "$default")
            .filter_map(|(media, model)| {
                Some((
                    media.clone(),
                    json!({ "schema": { "$ref": format!("#/components/schemas/{}", model.as_str()?) } }),
                ))
            })
            .collect();
        if !content.is_empty() {
            op.insert("requestBody".into(), json!({ "content": content }));
        }
    }
    op.insert("responses".into(), json!({ "default": { "description": "the integration's answer" } }));

    let mut security = Map::new();
    if route.get("api_key_required").and_then(Value::as_bool) == Some(true) {
        schemes.insert("api_key".into(), json!({ "type": "apiKey", "name": "x-api-key", "in": "header" }));
        security.insert("api_key".into(), json!([]));
    }
    if let Some(name) = route.get("authorizer").and_then(Value::as_str) {
        let authorizer = api
            .get("authorizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|a| a.get("name").and_then(Value::as_str) == Some(name));
        if let Some(authorizer) = authorizer {
            schemes.insert(name.to_string(), scheme_of(authorizer, aws));
        }
        security.insert(name.to_string(), route.get("scopes").cloned().unwrap_or(json!([])));
    }
    if route.get("authorization").and_then(Value::as_str) == Some("signed") {
        let mut sigv4 = json!({ "type": "apiKey", "name": "Authorization", "in": "header" });
        if aws {
            sigv4["x-amazon-apigateway-authtype"] = json!("awsSigv4");
        }
        schemes.insert("sigv4".into(), sigv4);
        security.insert("sigv4".into(), json!([]));
    }
    if !security.is_empty() {
        op.insert("security".into(), json!([security]));
    }
    if aws {
        if let Some(integration) = route.get("integration") {
            op.insert("x-amazon-apigateway-integration".into(), integration_of(integration, path));
        }
        if let Some(validator) = route.get("request_validator") {
            op.insert("x-amazon-apigateway-request-validator".into(), validator.clone());
        }
    }
    op
}

/// A security scheme for an authorizer.
fn scheme_of(authorizer: &Value, aws: bool) -> Value {
    let kind = authorizer.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "jwt" {
        let mut scheme = json!({ "type": "http", "scheme": "bearer", "bearerFormat": "JWT" });
        if aws {
            scheme = json!({ "type": "oauth2", "flows": {} });
            let mut configuration = json!({ "issuer": authorizer.get("issuer").cloned().unwrap_or(json!("")) });
            if let Some(audience) = authorizer.get("audience") {
                configuration["audience"] = audience.clone();
            }
            scheme["x-amazon-apigateway-authorizer"] = json!({
                "type": "jwt",
                "jwtConfiguration": configuration,
                "identitySource": "$request.header.Authorization",
            });
        }
        return scheme;
    }
    // A custom authorizer reads its identity sources; a header names the scheme.
    let sources: Vec<&str> = authorizer
        .get("identity_sources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let header = sources.iter().find_map(|s| s.strip_prefix("$request.header.")).unwrap_or("Authorization");
    let mut scheme = json!({ "type": "apiKey", "name": header, "in": "header" });
    if aws {
        let mut function = json!({ "type": "request", "identitySource": sources.join(", ") });
        if let Some(ttl) = authorizer
            .get("ttl")
            .and_then(Value::as_str)
            .and_then(|t| t.strip_suffix('s'))
            .and_then(|t| t.parse::<u64>().ok())
        {
            function["authorizerResultTtlInSeconds"] = json!(ttl);
        }
        scheme["x-amazon-apigateway-authtype"] = json!("custom");
        scheme["x-amazon-apigateway-authorizer"] = function;
    }
    scheme
}

/// A route's integration as the managed gateway writes it.
fn integration_of(integration: &Value, path: &str) -> Value {
    let kind = integration.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "mock" {
        let status = integration.get("status").and_then(Value::as_u64).unwrap_or(200);
        let mut default = json!({ "statusCode": status.to_string() });
        if let Some(body) = integration.get("body").and_then(Value::as_str) {
            default["responseTemplates"] = json!({ "application/json": body });
        }
        return json!({
            "type": "mock",
            "requestTemplates": { "application/json": format!("{{\"statusCode\": {status}}}") },
            "passthroughBehavior": "when_no_match",
            "responses": { "default": default },
        });
    }
    let templated = integration.get("request_templates").is_some() || integration.get("responses").is_some();
    let mut out = json!({
        "type": if templated { "http" } else { "http_proxy" },
        "httpMethod": "ANY",
        "uri": integration.get("uri").cloned().unwrap_or(json!("")),
    });
    // Path parameters go to the upstream under their own names.
    let mut parameters = Map::new();
    for segment in path.split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let name = name.trim_end_matches('+');
            parameters.insert(format!("integration.request.path.{name}"), json!(format!("method.request.path.{name}")));
        }
    }
    if !parameters.is_empty() {
        out["requestParameters"] = Value::Object(parameters);
    }
    if let Some(timeout) = integration.get("timeout").and_then(Value::as_str).and_then(millis) {
        out["timeoutInMillis"] = json!(timeout);
    }
    for (from, to) in [
        ("request_templates", "requestTemplates"),
        ("passthrough_behavior", "passthroughBehavior"),
        ("content_handling", "contentHandling"),
    ] {
        if let Some(v) = integration.get(from) {
            out[to] = match v.as_str() {
                Some(s) if from != "request_templates" => json!(s.to_ascii_uppercase()),
                _ => v.clone(),
            };
        }
    }
    let mut responses = Map::new();
    for response in integration.get("responses").and_then(Value::as_array).into_iter().flatten() {
        let pattern = response.get("selection_pattern").and_then(Value::as_str).unwrap_or("default");
        let mut entry = Map::new();
        if let Some(status) = response.get("status").and_then(Value::as_u64) {
            entry.insert("statusCode".into(), json!(status.to_string()));
        }
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            let parameters: Map<String, Value> =
                headers.iter().map(|(name, value)| (format!("method.response.header.{name}"), value.clone())).collect();
            entry.insert("responseParameters".into(), Value::Object(parameters));
        }
        if let Some(templates) = response.get("templates") {
            entry.insert("responseTemplates".into(), templates.clone());
        }
        if let Some(handling) = response.get("content_handling").and_then(Value::as_str) {
            entry.insert("contentHandling".into(), json!(handling.to_ascii_uppercase()));
        }
        responses.insert(pattern.to_string(), Value::Object(entry));
    }
    if !responses.is_empty() {
        out["responses"] = Value::Object(responses);
    }
    out
}

/// `500ms`, `29s`, `2m` in milliseconds.
fn millis(duration: &str) -> Option<u64> {
    let digits = duration.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let value: u64 = digits.parse().ok()?;
    Some(match &duration[digits.len()..] {
        "ms" => value,
        "s" => value * 1000,
        "m" => value * 60_000,
        "h" => value * 3_600_000,
        _ => return None,
    })
}

/// A model as an OpenAPI schema: `$ref`s to `models/NAME` point into the document's schemas,
/// and `$schema` (not part of an OpenAPI schema object) is left out.
fn schema_of(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "$schema")
                .map(|(k, v)| {
                    let v = match (k.as_str(), v.as_str()) {
                        ("$ref", Some(target)) => match target.strip_prefix("models/") {
                            Some(name) => json!(format!("#/components/schemas/{name}")),
                            None => v.clone(),
                        },
                        _ => schema_of(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(schema_of).collect()),
        other => other.clone(),
    }
}

/// The API-level extensions the managed gateway reads.
fn api_extensions(api: &Map<String, Value>, doc: &mut Map<String, Value>) {
    if let Some(types) = api.get("binary_media_types") {
        doc.insert("x-amazon-apigateway-binary-media-types".into(), types.clone());
    }
    if let Some(compression) = api.get("compression") {
        let size = compression.get("minimum_size").and_then(Value::as_u64).unwrap_or(1024);
        doc.insert("x-amazon-apigateway-minimum-compression-size".into(), json!(size));
    }
    if let Some(validators) = api.get("request_validators").and_then(Value::as_object) {
        let written: Map<String, Value> = validators
            .iter()
            .map(|(name, v)| {
                let flag = |key: &str| v.get(key).and_then(Value::as_bool).unwrap_or(false);
                (
                    name.clone(),
                    json!({ "validateRequestBody": flag("body"), "validateRequestParameters": flag("parameters") }),
                )
            })
            .collect();
        doc.insert("x-amazon-apigateway-request-validators".into(), Value::Object(written));
    }
    if let Some(validator) = api.get("request_validator") {
        doc.insert("x-amazon-apigateway-request-validator".into(), validator.clone());
    }
    if let Some(cors) = api.get("cors") {
        let mut written = Map::new();
        for (from, to) in [
            ("allow_origins", "allowOrigins"),
            ("allow_methods", "allowMethods"),
            ("allow_headers", "allowHeaders"),
            ("expose_headers", "exposeHeaders"),
            ("allow_credentials", "allowCredentials"),
        ] {
            if let Some(v) = cors.get(from) {
                written.insert(to.into(), v.clone());
            }
        }
        if let Some(age) = cors.get("max_age").and_then(Value::as_str).and_then(millis) {
            written.insert("maxAge".into(), json!(age / 1000));
        }
        doc.insert("x-amazon-apigateway-cors".into(), Value::Object(written));
    }
    if let Some(responses) = api.get("gateway_responses").and_then(Value::as_object) {
        let written: Map<String, Value> = responses
            .iter()
            .map(|(kind, r)| {
                let mut entry = Map::new();
                if let Some(status) = r.get("status").and_then(Value::as_u64) {
                    entry.insert("statusCode".into(), json!(status));
                }
                if let Some(headers) = r.get("headers").and_then(Value::as_object) {
                    let parameters: Map<String, Value> = headers
                        .iter()
                        .map(|(name, value)| (format!("gatewayresponse.header.{name}"), value.clone()))
                        .collect();
                    entry.insert("responseParameters".into(), Value::Object(parameters));
                }
                if let Some(templates) = r.get("templates") {
                    entry.insert("responseTemplates".into(), templates.clone());
                }
                (kind.clone(), Value::Object(entry))
            })
            .collect();
        doc.insert("x-amazon-apigateway-gateway-responses".into(), Value::Object(written));
    }
}
