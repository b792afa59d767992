//! Integration responses (`type: rest`): what the client gets for each kind of upstream
//! answer, chosen by the upstream's status.
//!
//! An integration lists responses, each with a `selection_pattern` (a regular expression
//! that must match the whole upstream status, such as `4\d\d`) or none (the default, used
//! when no pattern matches). The chosen response may set the client's status, set headers
//! (a literal `'value'`, `integration.response.header.NAME` from the upstream's answer, or
//! `integration.response.body.FIELD` from its JSON body: the head then waits for the whole
//! body, see [`super::AnswerBody`]), and reshape the body with a response template for the
//! media type the client accepts ([`crate::mapping`], with the same inputs as a request
//! template and the upstream's body as `$input.body`). An upstream answer no response
//! selects passes through unchanged.
//!
//! Only answers of the integration are mapped: the gateway's own refusals (a 401, a 429, a
//! cached or replayed answer) are not. A template renders once the whole upstream body has
//! arrived (up to [`MAX_MAPPED_BODY`]); a body that is larger, or a template that fails,
//! leaves the client a JSON error in place of the body, its reason in the log. An answer of
//! one of the API's binary media types passes through as bytes, or is converted as the
//! response's `content_handling` says ([`super::content`]).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode, response};
use regex::Regex;
use serde_json::Value;

use super::content::{ContentHandling, Conversion, MediaRanges, MediaType};
use super::mapping::TemplateScope;
use super::{AnswerBody, Exchange, Flow, Phases, Services, Stage, Step};
use crate::body::BoundedCopy;
use crate::mapping::{Bounds, Inputs, Template};
use crate::observe::trace::SpanKind;

/// The largest upstream body a response template reads.
pub const MAX_MAPPED_BODY: usize = 10 * 1024 * 1024;

/// Where a mapped response header's value comes from.
#[derive(Debug, Clone)]
pub enum HeaderSource {
    /// `'text'`: this value.
    Literal(HeaderValue),
    /// `integration.response.header.NAME`: the upstream's header (left out when absent).
    UpstreamHeader(HeaderName),
    /// `integration.response.body`: the upstream's whole body, as text.
    UpstreamBody,
    /// `integration.response.body.FIELD` (a JSON expression without its `$`): what it selects
    /// in the upstream's JSON body, a string as it is and anything else as JSON (left out
    /// when the body is not JSON or the expression selects nothing).
    UpstreamBodyValue(serde_json_path::JsonPath),
}

impl HeaderSource {
    fn reads_body(&self) -> bool {
        matches!(self, HeaderSource::UpstreamBody | HeaderSource::UpstreamBodyValue(_))
    }
}

/// The value a body source gives, from the upstream's whole `body` (`json` is the body
/// parsed, on first use).
fn body_header(source: &HeaderSource, body: &Bytes, json: &mut Option<Option<Value>>) -> Option<HeaderValue> {
    match source {
        HeaderSource::UpstreamBody => HeaderValue::from_bytes(body.trim_ascii()).ok(),
        HeaderSource::UpstreamBodyValue(path) => {
            let document =
                json.get_or_insert_with(|| crate::json_document::JsonDocument::parse_value(body).ok()).as_ref()?;
            let text = match path.query(document).all().as_slice() {
                [] => return None,
                [Value::String(s)] => s.clone(),
                [one] => one.to_string(),
                many => Value::Array(many.iter().map(|v| (*v).clone()).collect()).to_string(),
            };
            HeaderValue::from_str(&text).ok()
        }
        HeaderSource::Literal(_) | HeaderSource::UpstreamHeader(_) => None,
    }
}

/// One entry of an integration's `responses`.
#[derive(Debug)]
pub struct IntegrationResponse {
    /// Anchored at both ends; `None` for the default response.
    pub selection_pattern: Option<Regex>,
    /// The client's status; the upstream's when not set.
    pub status: Option<StatusCode>,
    pub headers: Vec<(HeaderName, HeaderSource)>,
    /// By media type (lower case, without parameters), in the order they were written.
    pub templates: Vec<(String, Arc<Template>)>,
    pub content_handling: Option<ContentHandling>,
}

impl IntegrationResponse {
    /// Whether a header of this response comes from the upstream's body.
    fn reads_body_in_head(&self) -> bool {
        self.headers.iter().any(|(_, source)| source.reads_body())
    }

    /// The template for a client that sent `accept` ([`crate::mapping::for_accept`]).
    fn template(&self, accept: Option<&str>) -> Option<&(String, Arc<Template>)> {
        crate::mapping::for_accept(&self.templates, accept)
    }
}

/// The integration responses of one route on one stage.
#[derive(Debug)]
pub struct IntegrationResponses {
    /// The patterned responses in order, then the default (at most one).
    pub responses: Arc<[IntegrationResponse]>,
    pub scope: Arc<TemplateScope>,
    pub bounds: Bounds,
    /// The API's binary media types.
    pub binary: Arc<MediaRanges>,
    /// What the response templates read of the request (its parameters, `$context`), kept
    /// from its head only when one does; worked out once when the stage is built.
    pub reads: crate::mapping::Reads,
}

/// What the templates read of the request, kept from its head for the response.
#[derive(Debug, Clone)]
struct RequestInputs {
    inputs: Inputs,
    accept: Option<String>,
}

/// The response template chosen for this answer (if any), how its body is converted, and
/// the upstream body read so far.
#[derive(Debug, Clone)]
struct Rendering {
    template: Option<Arc<Template>>,
    conversion: Conversion,
    body: BoundedCopy,
}

impl IntegrationResponses {
    /// Whether an answer's body may be reshaped (by a template or a conversion).
    fn reads_bodies(&self) -> bool {
        self.responses.iter().any(|r| !r.templates.is_empty() || r.content_handling.is_some())
    }

    /// The response that maps an upstream answer of `status`.
    fn select(&self, status: StatusCode) -> Option<&IntegrationResponse> {
        let code = status.as_str();
        let patterned = self.responses.iter().filter(|r| r.selection_pattern.is_some());
        let mut matching = patterned.filter(|r| r.selection_pattern.as_ref().is_some_and(|p| p.is_match(code)));
        matching.next().or_else(|| self.responses.iter().find(|r| r.selection_pattern.is_none()))
    }

    fn render(&self, rendering: Rendering, exchange: &mut Exchange) -> Bytes {
        let request_id = exchange.request_id.clone();
        let failed = |reason: String| {
            tracing::warn!(reason, request_id = ?request_id, "the response mapping template failed");
            Bytes::from_static(b"{\"message\":\"the upstream's response could not be mapped\"}")
        };
        let Some(body) = rendering.body.finish() else {
            return failed(format!("the upstream body is over {MAX_MAPPED_BODY} bytes"));
        };
        let body = match rendering.conversion.apply(&body) {
            Ok(body) => body,
            Err(e) => return failed(format!("content handling: {e}")),
        };
        let Some(template) = rendering.template else { return body };
        let Some(RequestInputs { mut inputs, .. }) = exchange.state.remove::<RequestInputs>() else {
            return failed("the request's inputs were not kept".into());
        };
        inputs.body = body.clone();
        let span = exchange.start_span();
        let rendered = template.render(&inputs, self.bounds);
        let error = rendered.as_ref().err().map(|e| e.to_string());
        exchange.end_span(span, "response mapping", SpanKind::Internal, Vec::new, error);
        match rendered {
            Ok(rendered) => Bytes::from(rendered),
            Err(e) => failed(e.to_string()),
        }
    }
}

impl Stage for IntegrationResponses {
    fn name(&self) -> &'static str {
        "integration responses"
    }

    fn phases(&self) -> Phases {
        if self.reads_bodies() {
            Phases::REQUEST_HEAD | Phases::RESPONSE_HEAD | Phases::RESPONSE_BODY
        } else {
            Phases::RESPONSE_HEAD
        }
    }

    fn rewrites_response_body(&self) -> bool {
        true
    }

    fn head_reads_answer_body(&self, status: StatusCode) -> bool {
        self.select(status).is_some_and(IntegrationResponse::reads_body_in_head)
    }

    fn request_head<'a>(&'a self, head: &'a mut Parts, exchange: &'a mut Exchange, _: &'a Services<'a>) -> Step<'a> {
        let accept = head.headers.get(ACCEPT).and_then(|v| v.to_str().ok()).map(str::to_string);
        let inputs = self.scope.inputs(head, exchange, &self.reads);
        exchange.state.insert(RequestInputs { inputs, accept });
        Flow::Continue.into()
    }

    fn response_head(&self, head: &mut response::Parts, exchange: &mut Exchange, _: &Services<'_>) {
        if !exchange.integration_answered {
            return;
        }
        let Some(response) = self.select(head.status) else { return };
        exchange.note(|| match &response.selection_pattern {
            Some(p) => format!("the integration response for `{}`", p.as_str()),
            None => "the default integration response".to_string(),
        });
        if let Some(status) = response.status {
            head.status = status;
        }
        let binary = MediaType::of(&head.headers).is_some_and(|media| self.binary.contains(media));
        let conversion = Conversion::of(binary, response.content_handling);
        // Every value is read from the upstream's headers (and body) before any is set.
        let body = exchange.state.get::<AnswerBody>().map(|b| &b.0);
        let mut json = None;
        let values: Vec<_> = response
            .headers
            .iter()
            .map(|(name, source)| match source {
                HeaderSource::Literal(value) => (name, Some(value.clone())),
                HeaderSource::UpstreamHeader(from) => (name, head.headers.get(from).cloned()),
                body_source => (name, body.and_then(|body| body_header(body_source, body, &mut json))),
            })
            .collect();
        for (name, value) in values {
            match value {
                Some(value) => head.headers.insert(name, value),
                None => head.headers.remove(name),
            };
        }
        let accept = exchange.state.get::<RequestInputs>().and_then(|r| r.accept.as_deref());
        let template = if conversion.templated() { response.template(accept) } else { None };
        if let Some((media, _)) = template
            && let Ok(content_type) = HeaderValue::from_str(media)
        {
            head.headers.insert(CONTENT_TYPE, content_type);
        }
        if template.is_some() || matches!(conversion, Conversion::Encode | Conversion::Decode) {
            head.headers.remove(CONTENT_LENGTH);
            let template = template.map(|(_, t)| t.clone());
            exchange.state.insert(Rendering { template, conversion, body: BoundedCopy::new(MAX_MAPPED_BODY) });
        }
    }

    fn response_body(&self, chunk: &mut Option<Bytes>, end_of_stream: bool, exchange: &mut Exchange) {
        let Some(rendering) = exchange.state.get_mut::<Rendering>() else { return };
        if let Some(data) = chunk.take() {
            rendering.body.push(&data);
        }
        if end_of_stream && let Some(rendering) = exchange.state.remove::<Rendering>() {
            *chunk = Some(self.render(rendering, exchange));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(pattern: Option<&str>, templates: &[&str]) -> IntegrationResponse {
        IntegrationResponse {
            selection_pattern: pattern.map(|p| Regex::new(&format!("^(?:{p})$")).unwrap()),
            status: None,
            headers: Vec::new(),
            templates: templates.iter().map(|m| (m.to_string(), Arc::new(Template::parse("x").unwrap()))).collect(),
            content_handling: None,
        }
    }

    #[test]
    fn the_first_matching_pattern_wins_and_the_default_takes_the_rest() {
        let responses = IntegrationResponses {
            responses: vec![response(Some(r"4\d\d"), &[]), response(Some("404"), &[]), response(None, &[])].into(),
            scope: Arc::new(TemplateScope::default()),
            bounds: Bounds::default(),
            binary: Arc::default(),
            reads: Default::default(),
        };
        let pattern_of = |s: u16| {
            responses
                .select(StatusCode::from_u16(s).unwrap())
                .and_then(|r| r.selection_pattern.as_ref())
                .map(|p| p.as_str().to_string())
        };
        assert_eq!(pattern_of(404).as_deref(), Some(r"^(?:4\d\d)$"));
        assert_eq!(pattern_of(200), None, "the default");
        let without_default =
            IntegrationResponses { responses: vec![response(Some("5\\d\\d"), &[])].into(), ..responses };
        assert!(without_default.select(StatusCode::OK).is_none(), "passes through");
        assert!(without_default.select(StatusCode::from_u16(502).unwrap()).is_some());
    }

    #[test]
    fn a_header_from_the_body_is_its_value_as_text_or_left_out() {
        let at = |expression: &str| {
            HeaderSource::UpstreamBodyValue(serde_json_path::JsonPath::parse(&format!("${expression}")).unwrap())
        };
        let body = Bytes::from_static(
            br#"{"id": 7, "name": "Rex", "tags": ["a", "b"], "owner": {"name": "Ann"}, "bad": "x\ny"}"#,
        );
        let header = |source: &HeaderSource| {
            body_header(source, &body, &mut None).map(|v| v.to_str().unwrap_or("?").to_string())
        };
        assert_eq!(header(&at(".name")).as_deref(), Some("Rex"), "a string as it is");
        assert_eq!(header(&at(".id")).as_deref(), Some("7"), "anything else as JSON");
        assert_eq!(header(&at(".owner")).as_deref(), Some(r#"{"name":"Ann"}"#));
        assert_eq!(header(&at(".tags[1]")).as_deref(), Some("b"));
        assert_eq!(header(&at(".tags[*]")).as_deref(), Some(r#"["a","b"]"#), "several as a list");
        assert_eq!(header(&at(".missing")), None);
        assert_eq!(header(&at(".bad")), None, "not a header value");
        assert!(header(&HeaderSource::UpstreamBody).is_some_and(|b| b.starts_with("{\"id\"")));
        let not_json = Bytes::from_static(b"plain text");
        assert_eq!(body_header(&at(".id"), &not_json, &mut None), None);
        assert_eq!(body_header(&HeaderSource::UpstreamBody, &not_json, &mut None).unwrap(), "plain text");
        // Only a response with a header from the body makes the head wait for the body.
        let mut from_body = response(Some("2\\d\\d"), &[]);
        from_body.headers.push((HeaderName::from_static("x-id"), at(".id")));
        let responses = IntegrationResponses {
            responses: vec![from_body, response(None, &[])].into(),
            scope: Arc::new(TemplateScope::default()),
            bounds: Bounds::default(),
            binary: Arc::default(),
            reads: Default::default(),
        };
        assert!(responses.head_reads_answer_body(StatusCode::OK));
        assert!(!responses.head_reads_answer_body(StatusCode::NOT_FOUND));
    }

    #[test]
    fn the_template_follows_what_the_client_accepts() {
        let r = response(None, &["application/xml", "application/json", "text/plain"]);
        let media = |accept: Option<&str>| r.template(accept).map(|(m, _)| m.as_str());
        assert_eq!(media(Some("text/plain;q=0.9, application/xml")), Some("text/plain"));
        assert_eq!(media(Some(" Application/XML ;q=1")), Some("application/xml"), "media types ignore case");
        assert_eq!(media(Some("image/png")), Some("application/json"));
        assert_eq!(media(None), Some("application/json"));
        let only_xml = response(None, &["application/xml"]);
        assert_eq!(only_xml.template(Some("*/*")).map(|(m, _)| m.as_str()), Some("application/xml"));
    }
}
