//! Compiling an API's `gateway_responses` (`type: rest`): each type's name, status,
//! literal headers and body template, checked once for every stage.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::super::model::*;
use super::Compiler;
use super::mapping::literal;
use crate::gateway_responses::{GatewayResponse, GatewayResponses, HeaderSource};
use crate::mapping::Bounds;
use crate::rejection::ResponseType;

/// An API's gateway responses, by type.
pub(super) type GatewayResponseSpec = Arc<HashMap<ResponseType, GatewayResponse>>;

impl Compiler<'_> {
    /// The API's gateway responses; `Ok(None)` when it has none.
    pub(super) fn gateway_responses(&mut self, api: &ApiDef, field: &str) -> Result<Option<GatewayResponseSpec>, ()> {
        if api.gateway_responses.is_empty() {
            return Ok(None);
        }
        let mut ok = true;
        let mut by_type = HashMap::new();
        for (name, def) in &api.gateway_responses {
            let gfield = format!("{field}.gateway_responses.{name}");
            let Some(response_type) = ResponseType::parse(name) else {
                let names: Vec<&str> = ResponseType::ALL.iter().map(|(_, n)| *n).collect();
                self.sink.push(
                    def.referenced,
                    &gfield,
                    format!("not a gateway response type; one of {}", names.join(", ")),
                );
                ok = false;
                continue;
            };
            match self.gateway_response(&def.value, def.referenced, &gfield) {
                Some(response) => {
                    by_type.insert(response_type, response);
                }
                None => ok = false,
            }
        }
        if ok { Ok(Some(Arc::new(by_type))) } else { Err(()) }
    }

    fn gateway_response(
        &mut self,
        def: &GatewayResponseDef,
        at: serde_saphyr::Location,
        field: &str,
    ) -> Option<GatewayResponse> {
        let status = self.response_status(def.status, 400..=599, at, field);
        let mut ok = status.is_ok();
        let mut headers = Vec::new();
        for (name, value) in &def.headers {
            let hfield = format!("{field}.headers.{name}");
            let Some(header) = self.response_header_name(name, at, &hfield) else {
                ok = false;
                continue;
            };
            match header_source(value) {
                Some(source) => headers.push((header, source)),
                None => {
                    self.sink.push(
                        at,
                        &hfield,
                        "a value is `'literal text'` (in single quotes), `method.request.header.NAME`, `method.request.querystring.NAME`, `stageVariables.NAME` or `context.requestId`",
                    );
                    ok = false;
                }
            }
        }
        let templates = self.templates(&def.templates, at, &format!("{field}.templates")).ok()?;
        let status = status.ok()?;
        ok.then_some(GatewayResponse { status, headers, templates })
    }

    /// The gateway responses of an API on one stage.
    pub(super) fn gateway_responses_stage(spec: &GatewayResponseSpec, stage: &StageDef) -> Arc<GatewayResponses> {
        let variables = stage.variables.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        Arc::new(GatewayResponses {
            by_type: spec.clone(),
            stage: stage.name.value.clone(),
            stage_variables: Arc::new(Value::Object(variables)),
            bounds: Bounds::default(),
        })
    }
}

/// A gateway response header's value as written.
fn header_source(value: &str) -> Option<HeaderSource> {
    if let Some(text) = literal(value) {
        return HeaderValue::from_str(text).ok().map(HeaderSource::Literal);
    }
    let name = |rest: &str| {
        (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
            .then(|| rest.to_string())
    };
    if let Some(rest) = value.strip_prefix("method.request.header.") {
        return HeaderName::try_from(rest.to_ascii_lowercase()).ok().map(HeaderSource::RequestHeader);
    }
    if let Some(rest) = value.strip_prefix("method.request.querystring.") {
        return name(rest).map(HeaderSource::Query);
    }
    if let Some(rest) = value.strip_prefix("stageVariables.") {
        return name(rest).map(HeaderSource::StageVariable);
    }
    (value == "context.requestId").then_some(HeaderSource::RequestId)
}
