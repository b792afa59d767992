//! OpenAPI import: reads an OpenAPI 3.x or Swagger 2.0 document, as a managed API gateway
//! exports it (with its `x-amazon-apigateway-*` extensions), into one Meridian API
//! definition (the `apis:` document `meridian apply` takes), and reports every element it
//! could not carry over with its JSON pointer and what to do instead.
//!
//! Nothing is dropped silently: an element is either in the definition or in the
//! [`Imported::report`]. A route that would lose its authorization (an authorizer that cannot
//! be mapped) is left out and reported rather than imported open.
//!
//! This crate knows the document formats and the managed gateway's extensions, not the node:
//! it produces a JSON value that the node's configuration compiler checks like any other
//! definition.
//!
//! ```
//! let document = serde_json::json!({
//!     "openapi": "3.0.1",
//!     "info": { "title": "pets", "version": "1" },
//!     "paths": { "/pets": { "get": { "x-amazon-apigateway-integration": {
//!         "type": "http_proxy", "httpMethod": "GET", "uri": "http://pets.internal/pets"
//!     } } } }
//! });
//! let imported = meridian_openapi::import(&document, &meridian_openapi::Options::default()).unwrap();
//! let route = &imported.definition["apis"][0]["routes"][0];
//! assert_eq!(route["route"], "GET /pets");
//! assert_eq!(route["integration"]["uri"], "http://pets.internal/pets");
//! assert!(imported.report.is_empty());
//! ```

mod document;
mod export;
mod operations;
mod security;

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use document::Document;
pub use document::pointer;
pub use export::{Extensions, export};

/// What the caller knows that the document does not say.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The API's id (default: from the document's title).
    pub api_id: Option<String>,
    /// The stage to declare (default: the document's base path, else `prod`).
    pub stage: Option<String>,
    /// URLs of request and token authorizers, by their name in the document: the managed
    /// gateway's are functions, Meridian calls them over HTTP.
    pub authorizer_uris: BTreeMap<String, String>,
}

/// One element that was not carried over (or was carried over differently), where it is in
/// the document, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// A JSON pointer into the document.
    pub pointer: String,
    pub message: String,
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// `{"apis": [API]}`, the shape `meridian apply -f` takes.
    pub definition: Value,
    pub report: Vec<Finding>,
    /// Operations in the document, and how many became routes.
    pub operations: usize,
    pub routes: usize,
}

/// Why a document cannot be imported at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotOpenApi(pub String);

impl std::fmt::Display for NotOpenApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotOpenApi {}

/// Imports `document` (parsed from JSON or YAML).
pub fn import(document: &Value, options: &Options) -> Result<Imported, NotOpenApi> {
    let doc = Document::new(document)?;
    if let Some(exported) = document.get("x-meridian-api").and_then(Value::as_object) {
        return Ok(reimport(&doc, exported));
    }
    let mut api = Map::new();
    let mut report = Report::default();

    let title = document.pointer("/info/title").and_then(Value::as_str).unwrap_or("api");
    let id = options.api_id.clone().unwrap_or_else(|| api_id_from(title));
    api.insert("id".into(), json!(id));
    api.insert("name".into(), json!(title));
    let rest = !doc.http_api;
    api.insert("type".into(), json!(if rest { "rest" } else { "http" }));

    let stage = doc.stage(options.stage.as_deref(), &mut report);
    let security = security::Schemes::read(&doc, options, &mut report);
    if !security.authorizers.is_empty() {
        api.insert("authorizers".into(), Value::Array(security.authorizers.clone()));
    }

    let mut imported = operations::Routes::default();
    for op in doc.operations() {
        imported.add(&doc, &op, &security, &mut report);
    }
    let operations = imported.seen;
    let routes = imported.routes.len();
    api.insert("routes".into(), Value::Array(imported.routes));

    let models = doc.models(&mut report);
    if !models.is_empty() && rest {
        api.insert("models".into(), Value::Object(models));
    } else if !models.is_empty() {
        let at = if doc.swagger { "/definitions" } else { "/components/schemas" };
        report.add(at, "an HTTP API does not validate requests: its schemas are not imported as models");
    }
    doc.api_extensions(&mut api, &mut report);
    let mut stage_entry = Map::new();
    stage_entry.insert("name".into(), json!(stage));
    if !imported.stage_variables.is_empty() {
        let variables: Map<String, Value> =
            imported.stage_variables.iter().map(|name| (name.clone(), json!("SET-ME"))).collect();
        report.add(
            "/paths",
            format!(
                "the integrations use stage variables ({}): set their values under `stages[0].variables` (the import writes SET-ME)",
                imported.stage_variables.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
        stage_entry.insert("variables".into(), Value::Object(variables));
    }
    api.insert("stages".into(), json!([stage_entry]));

    doc.unhandled_extensions(&mut report);
    Ok(Imported { definition: json!({ "apis": [Value::Object(api)] }), report: report.0, operations, routes })
}

/// A document Meridian exported with its own extensions: the definition it carries, routes
/// from each operation's `x-meridian-route`.
fn reimport(doc: &Document<'_>, exported: &Map<String, Value>) -> Imported {
    let mut api = exported.clone();
    let mut routes = Vec::new();
    let mut report = Report::default();
    let operations = doc.operations();
    for op in &operations {
        match op.body.get("x-meridian-route").and_then(Value::as_object) {
            Some(own) => {
                let mut route = Map::new();
                route.insert("route".into(), json!(format!("{} {}", op.method, op.path)));
                route.extend(own.clone());
                routes.push(Value::Object(route));
            }
            None => report.add(
                op.at.clone(),
                "this operation has no x-meridian-route (the document was edited after its export): it is not imported",
            ),
        }
    }
    api.insert("routes".into(), Value::Array(routes.clone()));
    Imported {
        definition: json!({ "apis": [Value::Object(api)] }),
        report: report.0,
        operations: operations.len(),
        routes: routes.len(),
    }
}

/// An API id from a title: lower-case letters, digits and dashes.
fn api_id_from(title: &str) -> String {
    let mut id = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            id.push(c.to_ascii_lowercase());
        } else if !id.ends_with('-') && !id.is_empty() {
            id.push('-');
        }
    }
    let id = id.trim_end_matches('-').to_string();
    if id.is_empty() { "api".into() } else { id }
}

/// The findings so far.
#[derive(Debug, Default)]
pub(crate) struct Report(Vec<Finding>);

impl Report {
    pub(crate) fn add(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        self.0.push(Finding { pointer: pointer.into(), message: message.into() });
    }
}

#[cfg(test)]
mod tests;
