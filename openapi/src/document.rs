//! The document being imported: which format it is, its operations, `$ref`s, and the
//! API-wide parts (base path, models, the managed gateway's API-level extensions). Every
//! `x-amazon-apigateway-*` key that is read is marked, so that the ones nobody read can be
//! reported at the end.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::{NotOpenApi, Report};

/// A JSON pointer from path segments (`~` and `/` escaped).
pub fn pointer<'s>(segments: impl IntoIterator<Item = &'s str>) -> String {
    segments.into_iter().map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1"))).collect()
}

pub(crate) struct Document<'d> {
    pub root: &'d Value,
    /// Swagger 2.0 rather than OpenAPI 3.x.
    pub swagger: bool,
    /// An HTTP API's export rather than a REST API's.
    pub http_api: bool,
    /// Pointers of the extension keys that were read.
    read: RefCell<BTreeSet<String>>,
}

/// One operation: a method of a path.
pub(crate) struct Operation<'d> {
    /// `GET`, ..., or `ANY` for `x-amazon-apigateway-any-method`.
    pub method: String,
    pub path: String,
    pub at: String,
    pub body: &'d Value,
    /// Parameters of the path item, which every operation of it has.
    pub shared_parameters: &'d [Value],
}

const METHODS: &[&str] =
    &["get", "put", "post", "delete", "options", "head", "patch", "x-amazon-apigateway-any-method"];

impl<'d> Document<'d> {
    pub fn new(root: &'d Value) -> Result<Self, NotOpenApi> {
        let version = |key: &str| root.get(key).and_then(Value::as_str).map(str::to_string);
        let swagger = match (version("openapi"), version("swagger")) {
            (Some(v), _) if v.starts_with("3.") => false,
            (_, Some(v)) if v == "2.0" => true,
            (Some(v), _) | (_, Some(v)) => {
                return Err(NotOpenApi(format!("OpenAPI version {v} is not supported (3.0, 3.1 and Swagger 2.0 are)")));
            }
            (None, None) => {
                return Err(NotOpenApi("not an OpenAPI document: it has neither `openapi` nor `swagger`".into()));
            }
        };
        if !root.get("paths").is_none_or(Value::is_object) {
            return Err(NotOpenApi("`paths` is not an object".into()));
        }
        let mut doc = Document { root, swagger, http_api: false, read: RefCell::default() };
        doc.http_api = doc.is_http_api();
        Ok(doc)
    }

    /// Marks the extension at `at` as read.
    pub fn read(&self, at: &str) {
        self.read.borrow_mut().insert(at.to_string());
    }

    /// An extension of `value` (at `at`), marked as read.
    pub fn extension(&self, value: &'d Value, at: &str, name: &str) -> Option<&'d Value> {
        let found = value.get(name)?;
        self.read(&format!("{at}{}", pointer([name])));
        Some(found)
    }

    /// An HTTP API export (its integrations carry `payloadFormatVersion`, or the document an
    /// import/export version), rather than a REST API's.
    fn is_http_api(&self) -> bool {
        if self.root.get("x-amazon-apigateway-importexport-version").is_some() {
            self.read("/x-amazon-apigateway-importexport-version");
            return true;
        }
        self.operations().iter().any(|op| {
            let integration = op.body.get("x-amazon-apigateway-integration").map(|i| self.resolve(i));
            integration.is_some_and(|i| i.get("payloadFormatVersion").is_some())
        })
    }

    /// `value`, or what its local `$ref` points to (followed a few times at most).
    pub fn resolve(&self, mut value: &'d Value) -> &'d Value {
        for _ in 0..8 {
            let Some(target) = value.get("$ref").and_then(Value::as_str) else { break };
            let Some(local) = target.strip_prefix('#') else { break };
            match self.root.pointer(local) {
                Some(found) => {
                    if local.starts_with("/components/x-amazon-apigateway-integrations/") {
                        // Reusable integrations: the ones nobody uses are not worth a line.
                        self.read("/components/x-amazon-apigateway-integrations");
                    }
                    value = found
                }
                None => break,
            }
        }
        value
    }

    pub fn operations(&self) -> Vec<Operation<'d>> {
        let mut list = Vec::new();
        let Some(paths) = self.root.get("paths").and_then(Value::as_object) else { return list };
        for (path, item) in paths {
            let item = self.resolve(item);
            let shared = item.get("parameters").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            for method in METHODS {
                let Some(body) = item.get(*method) else { continue };
                let upper = if *method == "x-amazon-apigateway-any-method" {
                    self.read(&pointer(["paths", path, method]));
                    "ANY".to_string()
                } else {
                    method.to_ascii_uppercase()
                };
                list.push(Operation {
                    method: upper,
                    path: path.clone(),
                    at: pointer(["paths", path, method]),
                    body,
                    shared_parameters: shared,
                });
            }
        }
        list
    }

    /// The stage to declare: the caller's, else the base path when it is one segment (a
    /// managed gateway exports its stage there), else `prod`.
    pub fn stage(&self, chosen: Option<&str>, report: &mut Report) -> String {
        let (base, at) = if self.swagger {
            (self.root.get("basePath").and_then(Value::as_str).unwrap_or("/").to_string(), "/basePath".to_string())
        } else {
            let server = self.root.pointer("/servers/0");
            let url = server.and_then(|s| s.get("url")).and_then(Value::as_str).unwrap_or("/");
            // `{basePath}` and other variables take their defaults.
            let mut url = url.to_string();
            if let Some(variables) = server.and_then(|s| s.get("variables")).and_then(Value::as_object) {
                for (name, variable) in variables {
                    let default = variable.get("default").and_then(Value::as_str).unwrap_or("");
                    url = url.replace(&format!("{{{name}}}"), default);
                }
            }
            let path = match url.split_once("://") {
                Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]).to_string(),
                None => url,
            };
            (path, "/servers/0/url".to_string())
        };
        let segments: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
        if let Some(stage) = chosen {
            return stage.to_string();
        }
        match segments.as_slice() {
            [] => "prod".into(),
            [one] if one.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => one.to_string(),
            _ => {
                report.add(
                    at,
                    format!(
                        "the base path `{base}` is not a stage name: the API is served under /prod/...; give --stage, or map a custom domain's base path to it with `meridian domains put`"
                    ),
                );
                "prod".into()
            }
        }
    }

    /// The document's schemas as models, their `$ref`s pointing at each other as
    /// `models/NAME`.
    pub fn models(&self, report: &mut Report) -> Map<String, Value> {
        let (schemas, prefix) = if self.swagger {
            (self.root.get("definitions"), "/definitions")
        } else {
            (self.root.pointer("/components/schemas"), "/components/schemas")
        };
        let mut models = Map::new();
        for (name, schema) in schemas.and_then(Value::as_object).into_iter().flatten() {
            if !valid_model_name(name) {
                report.add(
                    format!("{prefix}{}", pointer([name.as_str()])),
                    format!("model `{name}` is not imported: its name is not letters, digits, `_` and `-`"),
                );
                continue;
            }
            models.insert(name.clone(), model_refs(schema, prefix));
        }
        models
    }

    /// The API-level extensions: binary media types, gateway responses, CORS, request
    /// validators, the key source, the minimum compression size.
    pub fn api_extensions(&self, api: &mut Map<String, Value>, report: &mut Report) {
        let root = self.root;
        if let Some(types) = self.extension(root, "", "x-amazon-apigateway-binary-media-types") {
            let types: Vec<Value> = types
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                // Exports escape the slash (`image~1png`).
                .map(|t| json!(t.replace("~1", "/")))
                .collect();
            if !types.is_empty() {
                api.insert("binary_media_types".into(), Value::Array(types));
            }
        }
        if let Some(validators) = self.extension(root, "", "x-amazon-apigateway-request-validators") {
            let mut map = Map::new();
            for (name, v) in validators.as_object().into_iter().flatten() {
                let flag = |key: &str| v.get(key).and_then(Value::as_bool).unwrap_or(false);
                map.insert(
                    name.clone(),
                    json!({ "body": flag("validateRequestBody"), "parameters": flag("validateRequestParameters") }),
                );
            }
            api.insert("request_validators".into(), Value::Object(map));
        }
        if let Some(name) = self.extension(root, "", "x-amazon-apigateway-request-validator").and_then(Value::as_str) {
            api.insert("request_validator".into(), json!(name));
        }
        // The managed gateway compresses with gzip and deflate; Meridian answers in whichever
        // of zstd, brotli and gzip the client prefers.
        if let Some(size) = self.extension(root, "", "x-amazon-apigateway-minimum-compression-size") {
            match size.as_u64() {
                Some(size) => {
                    api.insert("compression".into(), json!({ "minimum_size": size }));
                }
                None => report.add(
                    "/x-amazon-apigateway-minimum-compression-size",
                    "the minimum compression size is a whole number of bytes; compression was not imported",
                ),
            }
        }
        if let Some(source) = self.extension(root, "", "x-amazon-apigateway-api-key-source").and_then(Value::as_str)
            && !source.eq_ignore_ascii_case("HEADER")
        {
            report.add(
                "/x-amazon-apigateway-api-key-source",
                format!("API keys from `{source}` are not supported: clients send theirs in `x-api-key`"),
            );
        }
        if let Some(cors) = self.extension(root, "", "x-amazon-apigateway-cors") {
            api.insert("cors".into(), cors_of(cors));
        }
        if let Some(responses) = self.extension(root, "", "x-amazon-apigateway-gateway-responses") {
            let mut map = Map::new();
            for (kind, response) in responses.as_object().into_iter().flatten() {
                let at = format!("/x-amazon-apigateway-gateway-responses{}", pointer([kind.as_str()]));
                let entry = response_of(
                    response,
                    &at,
                    ("gatewayresponse.header.", gateway_header_value),
                    "gateway response headers are literals (`'text'`), request headers and query parameters, stage variables or context.requestId",
                    report,
                );
                map.insert(kind.clone(), Value::Object(entry));
            }
            api.insert("gateway_responses".into(), Value::Object(map));
        }
    }

    /// Reports every `x-amazon-apigateway-*` key that no part of the import read.
    pub fn unhandled_extensions(&self, report: &mut Report) {
        fn walk(value: &Value, at: &mut String, read: &BTreeSet<String>, report: &mut Report) {
            match value {
                Value::Object(map) => {
                    for (key, inner) in map {
                        let len = at.len();
                        at.push_str(&pointer([key.as_str()]));
                        if key.starts_with("x-amazon-apigateway-") {
                            if !read.contains(at.as_str()) && !read.iter().any(|r| at.starts_with(&format!("{r}/"))) {
                                report.add(
                                    at.clone(),
                                    format!("`{key}` is not supported by Meridian and was not imported"),
                                );
                            }
                        } else {
                            walk(inner, at, read, report);
                        }
                        at.truncate(len);
                    }
                }
                Value::Array(items) => {
                    for (i, inner) in items.iter().enumerate() {
                        let len = at.len();
                        at.push_str(&format!("/{i}"));
                        walk(inner, at, read, report);
                        at.truncate(len);
                    }
                }
                _ => {}
            }
        }
        let read = self.read.borrow();
        walk(self.root, &mut String::new(), &read, report);
    }
}

/// The status, headers and templates of an integration or gateway response (`at` is its
/// pointer): headers named `prefix` + NAME whose value `takes` accepts; the others reported
/// with `refused`.
pub(crate) fn response_of(
    response: &Value,
    at: &str,
    (prefix, takes): (&str, fn(&str) -> bool),
    refused: &str,
    report: &mut Report,
) -> Map<String, Value> {
    let mut entry = Map::new();
    if let Some(status) = status_of(response.get("statusCode")) {
        entry.insert("status".into(), json!(status));
    }
    let mut headers = Map::new();
    for (name, value) in response.get("responseParameters").and_then(Value::as_object).into_iter().flatten() {
        match (name.strip_prefix(prefix), value.as_str()) {
            (Some(header), Some(v)) if takes(v) => {
                headers.insert(header.to_string(), json!(v));
            }
            _ => report.add(
                format!("{at}/responseParameters{}", pointer([name.as_str()])),
                format!("`{name}: {value}` is not imported: {refused}"),
            ),
        }
    }
    if !headers.is_empty() {
        entry.insert("headers".into(), Value::Object(headers));
    }
    if let Some(templates) = response.get("responseTemplates").and_then(Value::as_object)
        && !templates.is_empty()
    {
        entry.insert("templates".into(), Value::Object(templates.clone()));
    }
    entry
}

/// A gateway response header value Meridian takes: a literal, a request header or query
/// parameter, a stage variable or the request id.
fn gateway_header_value(v: &str) -> bool {
    (v.len() >= 2 && v.starts_with('\'') && v.ends_with('\''))
        || ["method.request.header.", "method.request.querystring.", "stageVariables."]
            .iter()
            .any(|p| v.strip_prefix(p).is_some_and(|rest| !rest.is_empty()))
        || v == "context.requestId"
}

fn valid_model_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `schema` with `$ref`s to the document's schemas rewritten to `models/NAME`.
pub(crate) fn model_refs(schema: &Value, prefix: &str) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v.as_str()) {
                        ("$ref", Some(target)) => match target.strip_prefix('#').and_then(|t| t.strip_prefix(prefix)) {
                            Some(name) => json!(format!("models{name}")),
                            None => v.clone(),
                        },
                        _ => model_refs(v, prefix),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| model_refs(v, prefix)).collect()),
        other => other.clone(),
    }
}

/// A model name from a `$ref` to one of the document's schemas.
pub(crate) fn model_name(schema: &Value) -> Option<&str> {
    let target = schema.get("$ref")?.as_str()?;
    let name = target.strip_prefix("#/components/schemas/").or_else(|| target.strip_prefix("#/definitions/"))?;
    valid_model_name(name).then_some(name)
}

/// A status code written as a string or a number.
pub(crate) fn status_of(value: Option<&Value>) -> Option<u16> {
    match value? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        _ => None,
    }
}

/// `x-amazon-apigateway-cors` as Meridian's `cors`.
fn cors_of(cors: &Value) -> Value {
    let list = |key: &str| -> Vec<Value> { cors.get(key).and_then(Value::as_array).cloned().unwrap_or_default() };
    let mut out = Map::new();
    out.insert("allow_origins".into(), Value::Array(list("allowOrigins")));
    let methods = list("allowMethods");
    if !methods.is_empty() && !methods.iter().any(|m| m == "*") {
        out.insert("allow_methods".into(), Value::Array(methods));
    }
    for (from, to) in [("allowHeaders", "allow_headers"), ("exposeHeaders", "expose_headers")] {
        let values = list(from);
        if !values.is_empty() {
            out.insert(to.into(), Value::Array(values));
        }
    }
    if let Some(age) = cors.get("maxAge").and_then(Value::as_u64) {
        out.insert("max_age".into(), json!(format!("{}s", age.min(7200))));
    }
    if cors.get("allowCredentials").and_then(Value::as_bool) == Some(true) {
        out.insert("allow_credentials".into(), json!(true));
    }
    Value::Object(out)
}
