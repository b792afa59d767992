//! Compiling request validation (`type: rest`): the API's models (JSON Schema, compiled
//! once per revision and shared by the routes that name them), its request validators, and
//! each route's validation stage, every error with its line.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use jsonschema::Draft;

use super::super::model::*;
use super::Compiler;
use crate::json_document::JsonDocument;
use crate::stages::validation::{BodyModels, Model, RequestValidation};

/// The models of one API, by name.
pub(super) type Models = HashMap<String, Arc<Model>>;

/// The draft a schema is written in: its `$schema`, or draft 4 (what exported definitions
/// of a managed gateway use) when it names none.
fn draft_of(schema: &serde_json::Value) -> Result<Draft, String> {
    let Some(named) = schema.get("$schema") else { return Ok(Draft::Draft4) };
    let named = named.as_str().ok_or("`$schema` is not a string")?;
    let known = [
        ("draft-04", Draft::Draft4),
        ("draft-06", Draft::Draft6),
        ("draft-07", Draft::Draft7),
        ("2019-09", Draft::Draft201909),
        ("2020-12", Draft::Draft202012),
    ];
    known
        .iter()
        .find(|(marker, _)| named.contains(marker))
        .map(|(_, draft)| *draft)
        .ok_or_else(|| format!("`$schema` `{named}` is not draft 4, 6 or 7, 2019-09 or 2020-12"))
}

/// Resolves `$ref`s between an API's models: `models/NAME` (relative to the model), or the
/// managed gateway's `https://apigateway.amazonaws.com/restapis/ID/models/NAME` as exported
/// definitions have them. Nothing is ever fetched: a reference to anything else is refused
/// when the model compiles.
#[derive(Clone)]
struct ModelRefs(Arc<HashMap<String, serde_json::Value>>);

impl jsonschema::Retrieve for ModelRefs {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = uri.path().as_str();
        let name = path.rsplit_once("/models/").map(|(_, n)| n).or_else(|| path.strip_prefix("models/"));
        match name.and_then(|n| self.0.get(n)) {
            Some(schema) => Ok(schema.clone()),
            None => Err(format!(
                "`{uri}` is not one of this API's models (refer to one as `models/NAME`; nothing is fetched)"
            )
            .into()),
        }
    }
}

/// A media type as a route's `request_models` names it: `type/subtype`, or `$default`.
fn media_type(text: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty() && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&-^_.+".contains(&b))
    };
    text == "$default" || text.split_once('/').is_some_and(|(t, s)| token(t) && token(s))
}

impl Compiler<'_> {
    /// Refuses what only `type: rest` APIs may use on an API of another type.
    pub(super) fn rest_only(&mut self, api: &ApiDef, field: &str) {
        if api.kind.as_ref().is_some_and(|k| k.value == ApiKind::Rest) {
            return;
        }
        let mut refuse = |at, what: &str| {
            self.sink.push(at, format!("{field}.{what}"), format!("`{what}` is for `type: rest` APIs"));
        };
        if let Some((_, m)) = api.models.iter().next() {
            refuse(m.referenced, "models");
        }
        if let Some((_, v)) = api.request_validators.iter().next() {
            refuse(v.referenced, "request_validators");
        }
        if let Some(v) = &api.request_validator {
            refuse(v.referenced, "request_validator");
        }
        if let Some((_, g)) = api.gateway_responses.iter().next() {
            refuse(g.referenced, "gateway_responses");
        }
        if let Some(b) = &api.binary_media_types {
            refuse(b.referenced, "binary_media_types");
        }
        for (i, stage) in api.stages.iter().enumerate() {
            if let Some(cache) = &stage.cache {
                refuse(cache.referenced, &format!("stages[{i}].cache"));
            }
        }
        for (i, route) in api.routes.iter().enumerate() {
            let used = [
                route.request_validator.as_ref().map(|v| (v.referenced, "request_validator")),
                route.request_models.as_ref().map(|v| (v.referenced, "request_models")),
                route.required_parameters.as_ref().map(|v| (v.referenced, "required_parameters")),
                route.cache.as_ref().map(|v| (v.referenced, "cache")),
                route.idempotency.as_ref().map(|v| (v.referenced, "idempotency")),
                route.integration.request_templates.as_ref().map(|v| (v.referenced, "integration.request_templates")),
                route
                    .integration
                    .passthrough_behavior
                    .as_ref()
                    .map(|v| (v.referenced, "integration.passthrough_behavior")),
                route.integration.responses.as_ref().map(|v| (v.referenced, "integration.responses")),
                route.integration.xml_upstream.as_ref().map(|v| (v.referenced, "integration.xml_upstream")),
                route.integration.content_handling.as_ref().map(|v| (v.referenced, "integration.content_handling")),
            ];
            for (at, what) in used.into_iter().flatten() {
                refuse(at, &format!("routes[{i}].{what}"));
            }
        }
    }

    /// The API's models, each compiled once (and its default validator checked).
    pub(super) fn models(&mut self, api: &ApiDef, field: &str) -> Models {
        if let Some(named) = &api.request_validator
            && !api.request_validators.contains_key(&named.value)
        {
            let message = format!("no request validator `{}` among `request_validators`", named.value);
            self.sink.push(named.referenced, format!("{field}.request_validator"), message);
        }
        let mut models = HashMap::new();
        let refs = ModelRefs(Arc::new(api.models.iter().map(|(n, s)| (n.clone(), s.value.clone())).collect()));
        for (name, schema) in &api.models {
            let mfield = format!("{field}.models.{name}");
            let named = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !named {
                self.sink.push(
                    schema.referenced,
                    &mfield,
                    "a model name is 1-64 characters of A-Z, a-z, 0-9, `-` and `_`",
                );
                continue;
            }
            let draft = match draft_of(&schema.value) {
                Ok(d) => d,
                Err(e) => {
                    self.sink.push(schema.referenced, &mfield, e);
                    continue;
                }
            };
            match jsonschema::options_for::<JsonDocument>()
                .with_draft(draft)
                .with_retriever(refs.clone())
                .build(&schema.value)
            {
                Ok(validator) => {
                    models.insert(name.clone(), Arc::new(Model { name: name.clone(), validator }));
                }
                Err(e) => self.sink.push(schema.referenced, &mfield, format!("not a valid JSON Schema: {e}")),
            }
        }
        models
    }

    /// The validation stage of `route`, when its validator checks something the route has.
    pub(super) fn request_validation(
        &mut self,
        api: &ApiDef,
        route: &RouteDef,
        models: &Models,
        field: &str,
    ) -> Result<Option<Arc<RequestValidation>>, ()> {
        let mut ok = true;
        let mut body = None;
        if let Some(by_type) = &route.request_models {
            let mut compiled = BodyModels { by_type: Vec::new(), default: None };
            for (content_type, name) in &by_type.value {
                let at = format!("{field}.request_models.{content_type}");
                if !media_type(content_type) {
                    self.sink.push(by_type.referenced, &at, "name a media type (`application/json`) or `$default`");
                    ok = false;
                    continue;
                }
                let Some(model) = models.get(name) else {
                    let known = api.models.keys().cloned().collect::<Vec<_>>().join(", ");
                    self.sink.push(by_type.referenced, &at, format!("no model `{name}` (the API's models: {known})"));
                    ok = false;
                    continue;
                };
                if content_type == "$default" {
                    compiled.default = Some(model.clone());
                } else {
                    compiled.by_type.push((content_type.clone(), model.clone()));
                }
            }
            body = Some(compiled);
        }
        let (mut required_query, mut required_headers) = (Vec::new(), Vec::new());
        if let Some(list) = &route.required_parameters {
            for (i, parameter) in list.value.iter().enumerate() {
                let at = format!("{field}.required_parameters[{i}]");
                match parameter.split_once('.') {
                    Some(("querystring", name)) if !name.is_empty() => required_query.push(name.to_string()),
                    Some(("header", name)) => match HeaderName::try_from(name) {
                        Ok(h) => required_headers.push(h),
                        Err(_) => {
                            self.sink.push(list.referenced, &at, format!("`{name}` is not a header name"));
                            ok = false;
                        }
                    },
                    // Path parameters are always there once the route matched.
                    Some(("path", name)) if !name.is_empty() => {}
                    _ => {
                        self.sink.push(list.referenced, &at, "write `querystring.NAME`, `header.NAME` or `path.NAME`");
                        ok = false;
                    }
                }
            }
        }
        let named = route.request_validator.as_ref().or(api.request_validator.as_ref());
        let Some(named) = named else { return if ok { Ok(None) } else { Err(()) } };
        let Some(validator) = api.request_validators.get(&named.value) else {
            // The API's own default is checked once, in `models`.
            if route.request_validator.is_some() {
                let known = api.request_validators.keys().cloned().collect::<Vec<_>>().join(", ");
                let message = format!("no request validator `{}` (the API's: {known})", named.value);
                self.sink.push(named.referenced, format!("{field}.request_validator"), message);
            }
            return Err(());
        };
        if !ok {
            return Err(());
        }
        let body = body.filter(|_| validator.value.body);
        if !validator.value.parameters {
            required_query.clear();
            required_headers.clear();
        }
        if body.is_none() && required_query.is_empty() && required_headers.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(RequestValidation { required_query, required_headers, body })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_are_read_from_schema_and_default_to_4() {
        assert_eq!(draft_of(&serde_json::json!({})).unwrap(), Draft::Draft4);
        let named = |s: &str| draft_of(&serde_json::json!({ "$schema": s }));
        assert_eq!(named("http://json-schema.org/draft-04/schema#").unwrap(), Draft::Draft4);
        assert_eq!(named("https://json-schema.org/draft/2020-12/schema").unwrap(), Draft::Draft202012);
        assert!(named("http://example.com/my-schema").is_err());
    }

    #[test]
    fn media_types() {
        for good in ["application/json", "application/vnd.api+json", "text/xml", "$default"] {
            assert!(media_type(good), "{good}");
        }
        for bad in ["json", "application/", "Application/JSON", "a/b c", ""] {
            assert!(!media_type(bad), "{bad}");
        }
    }
}
