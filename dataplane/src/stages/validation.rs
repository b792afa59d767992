//! Request validation (`type: rest` APIs): required query parameters and headers, and the
//! body against the route's model (JSON Schema) for its content type, before the request
//! costs the upstream anything.
//!
//! An invalid request is answered 400 with every violation listed: where (`query`, `header`
//! or `body`), at what (the parameter's name, or a JSON pointer into the body) and what is
//! wrong. Models are compiled once per configuration revision (`config/compile/validation.rs`)
//! and shared by the routes that use them; a content type without a model is not validated.

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, StatusCode};

use super::content::MediaType;
use super::{BodyNeed, Exchange, Flow, Phases, Services, Stage, Step};
use crate::json_document::JsonDocument;
use crate::rejection::{Rejection, ResponseType, Violation};

/// The most violations one answer lists.
const MAX_VIOLATIONS: usize = 50;
/// A violation's message is cut at this many bytes (it may quote the client's value).
const MAX_MESSAGE: usize = 300;

/// A named JSON Schema, compiled to check a body read as a [`JsonDocument`].
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub validator: jsonschema::Validator<JsonDocument>,
}

/// The models a route validates bodies with, by media type.
#[derive(Debug)]
pub struct BodyModels {
    /// `application/json` → model (media types lower-cased, without parameters).
    pub by_type: Vec<(String, Arc<Model>)>,
    /// The model for any other content type (`$default`).
    pub default: Option<Arc<Model>>,
}

impl BodyModels {
    fn for_request(&self, head: &Parts) -> Option<&Arc<Model>> {
        MediaType::of(&head.headers)
            .and_then(|m| self.by_type.iter().find(|(t, _)| m.is(t)).map(|(_, model)| model))
            .or(self.default.as_ref())
    }
}

/// A request body that validation read, kept so that a mapping template reads it without
/// reading it again.
#[derive(Debug, Clone)]
pub struct ValidatedJson(Arc<JsonDocument>);

impl ValidatedJson {
    /// The document, if `body` is the very body that was validated (a stage between may
    /// have replaced it).
    pub fn of(&self, body: &Bytes) -> Option<Arc<JsonDocument>> {
        let text = self.0.text();
        (text.as_ptr() == body.as_ptr() && text.len() == body.len()).then(|| self.0.clone())
    }
}

/// One route's request validation.
#[derive(Debug)]
pub struct RequestValidation {
    pub required_query: Vec<String>,
    pub required_headers: Vec<HeaderName>,
    /// `None` when the validator does not check bodies.
    pub body: Option<BodyModels>,
}

fn invalid(message: &'static str, violations: Vec<Violation>, response_type: ResponseType) -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, message)
        .with_violations(violations)
        .with_reason("request validation")
        .of_type(response_type)
}

fn cut(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl RequestValidation {
    fn missing_parameters(&self, head: &Parts) -> Vec<Violation> {
        let query = head.uri.query().unwrap_or("");
        let present = |name: &str| crate::query::pairs(query).any(|(k, v)| k == name && !v.trim().is_empty());
        let missing_query = self.required_query.iter().filter(|n| !present(n));
        let missing_headers = self
            .required_headers
            .iter()
            .filter(|h| head.headers.get(*h).is_none_or(|v| v.as_bytes().iter().all(u8::is_ascii_whitespace)));
        missing_query
            .map(|n| Violation::new("query", n.clone(), "is required"))
            .chain(missing_headers.map(|h| Violation::new("header", h.as_str().to_string(), "is required")))
            .collect()
    }

    /// The body, read, when it matches `model`; else the refusal listing every violation.
    fn check_body(model: &Model, body: &Bytes) -> Result<JsonDocument, Rejection> {
        let document = match JsonDocument::parse(body.clone()) {
            Ok(v) => v,
            Err(_) if body.is_empty() => {
                let v = Violation::new(
                    "body",
                    String::new(),
                    format!("a body matching the model `{}` is required", model.name),
                );
                return Err(invalid("the request body is missing", vec![v], ResponseType::BadRequestBody));
            }
            Err(e) => {
                let v = Violation::new("body", String::new(), format!("not JSON: {e}"));
                return Err(invalid("the request body is not valid JSON", vec![v], ResponseType::BadRequestBody));
            }
        };
        if model.validator.is_valid(document.root()) {
            return Ok(document);
        }
        let violations: Vec<Violation> = model
            .validator
            .iter_errors(document.root())
            .take(MAX_VIOLATIONS)
            .map(|e| Violation::new("body", e.instance_path().as_str().to_string(), cut(e.to_string())))
            .collect();
        if violations.is_empty() {
            Ok(document)
        } else {
            Err(invalid("the request body does not match its model", violations, ResponseType::BadRequestBody))
        }
    }
}

impl Stage for RequestValidation {
    fn name(&self) -> &'static str {
        "validation"
    }

    fn phases(&self) -> Phases {
        match self.body {
            Some(_) => Phases::REQUEST_HEAD | Phases::REQUEST_BODY,
            None => Phases::REQUEST_HEAD,
        }
    }

    fn request_head<'a>(&'a self, head: &'a mut Parts, exchange: &'a mut Exchange, _: &'a Services<'a>) -> Step<'a> {
        let missing = self.missing_parameters(head);
        if missing.is_empty() {
            exchange.note(|| "required parameters present".to_string());
            return Flow::Continue.into();
        }
        invalid("the request is missing required parameters", missing, ResponseType::BadRequestParameters).into()
    }

    fn body_need(&self, head: &Parts) -> Option<BodyNeed> {
        self.body.as_ref()?.for_request(head)?;
        // The whole body, up to the node's body limit.
        Some(BodyNeed::Whole(u64::MAX))
    }

    fn request_body<'a>(
        &'a self,
        head: &'a Parts,
        body: &'a Bytes,
        exchange: &'a mut Exchange,
        _: &'a Services<'a>,
    ) -> Step<'a> {
        let Some(model) = self.body.as_ref().and_then(|b| b.for_request(head)) else { return Flow::Continue.into() };
        match Self::check_body(model, body) {
            Ok(document) => {
                exchange.note(|| format!("the body matches the model `{}`", model.name));
                exchange.state.insert(ValidatedJson(Arc::new(document)));
                Flow::Continue.into()
            }
            Err(rejection) => rejection.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(schema: serde_json::Value) -> Arc<Model> {
        let validator =
            jsonschema::options_for::<JsonDocument>().with_draft(jsonschema::Draft::Draft4).build(&schema).unwrap();
        Arc::new(Model { name: "Pet".into(), validator })
    }

    #[test]
    fn every_violation_is_listed_with_its_pointer() {
        let pet = model(serde_json::json!({
            "type": "object",
            "required": ["name", "price"],
            "properties": {
                "name": { "type": "string", "minLength": 1 },
                "price": { "type": "number", "minimum": 0, "exclusiveMinimum": true },
                "tags": { "type": "array", "items": { "type": "string" }, "maxItems": 2 }
            }
        }));
        let bad = Bytes::from_static(br#"{"name": "", "price": 0, "tags": ["a", 1, "c"]}"#);
        let rejection = RequestValidation::check_body(&pet, &bad).unwrap_err();
        let at: Vec<&str> = rejection.violations.iter().map(|v| v.at.as_str()).collect();
        for pointer in ["/name", "/price", "/tags", "/tags/1"] {
            assert!(at.contains(&pointer), "{pointer} not in {at:?}");
        }
        let valid = RequestValidation::check_body(&pet, &Bytes::from_static(br#"{"name":"rex","price":3}"#));
        assert_eq!(valid.unwrap().root().get("name").and_then(|n| n.as_str()), Some("rex"));
        let not_json = RequestValidation::check_body(&pet, &Bytes::from_static(b"{nope")).unwrap_err();
        assert!(not_json.violations[0].message.starts_with("not JSON"));
        let empty = RequestValidation::check_body(&pet, &Bytes::new()).unwrap_err();
        assert_eq!(empty.message, "the request body is missing");
    }

    #[test]
    fn a_validated_body_is_handed_on_only_for_the_same_bytes() {
        let body = Bytes::from_static(br#"{"name":"rex"}"#);
        let kept = ValidatedJson(Arc::new(JsonDocument::parse(body.clone()).unwrap()));
        assert_eq!(kept.of(&body.clone()).unwrap().root().get("name").and_then(|n| n.as_str()), Some("rex"));
        // The same text in another buffer is a body a stage put in its place.
        assert!(kept.of(&Bytes::copy_from_slice(&body)).is_none());
        assert!(kept.of(&body.slice(0..5)).is_none());
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let text = "é".repeat(400);
        let cut = cut(text);
        assert!(cut.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
