//! An XML upstream for JSON clients (`type: rest`, `integration.xml_upstream`): JSON request
//! bodies go upstream as XML, and the upstream's XML answers come back as JSON, with the
//! conversions of [`crate::mapping::xml`].
//!
//! A request whose body is JSON (`application/json` or `+json`, or no `Content-Type`) is
//! converted to an XML document whose root element is the configured `root`, and sent with
//! `Content-Type: application/xml`; a body that is not JSON, or that XML cannot carry (a key
//! that is not an XML name), is refused with 400. Other content types pass as they are. An
//! answer of the integration that is XML (`application/xml`, `text/xml` or `+xml`) reaches
//! the client as `application/json`, `{"root": ...}`; other answers, and the gateway's own,
//! pass as they are. The upstream body is read whole to convert it, up to
//! [`MAX_CONVERTED_BODY`]; a larger one, or one that is not well-formed XML, leaves the client
//! a JSON error in place of the body, the reason in the log.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderValue, StatusCode, response};

use super::content::MediaType;
use super::{BodyNeed, Exchange, Flow, Phases, Services, Stage, Step, may_have_body};
use crate::body::BoundedCopy;
use crate::mapping::xml;
use crate::rejection::{Rejection, ResponseType};

/// The largest upstream XML body converted to JSON.
pub const MAX_CONVERTED_BODY: usize = 10 * 1024 * 1024;

/// The integration's XML upstream option on one route.
#[derive(Debug)]
pub struct XmlUpstream {
    /// The root element of the XML requests.
    pub root: String,
}

/// The request body was converted: its content type changes on the way upstream.
#[derive(Debug, Clone, Copy)]
struct ConvertedRequest;

/// The upstream's XML answer, read so far.
#[derive(Debug, Clone)]
struct ConvertingResponse(BoundedCopy);

fn is_json(media: MediaType<'_>) -> bool {
    media.is("application/json") || media.has_suffix("+json")
}

fn is_xml(media: MediaType<'_>) -> bool {
    media.is("application/xml") || media.is("text/xml") || media.has_suffix("+xml")
}

impl Stage for XmlUpstream {
    fn name(&self) -> &'static str {
        "xml upstream"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_BODY | Phases::UPSTREAM_REQUEST | Phases::RESPONSE_HEAD | Phases::RESPONSE_BODY
    }

    fn rewrites_response_body(&self) -> bool {
        true
    }

    fn body_need(&self, head: &Parts) -> Option<BodyNeed> {
        let json = MediaType::of(&head.headers).is_none_or(is_json);
        (json && may_have_body(head)).then_some(BodyNeed::Whole(u64::MAX))
    }

    fn request_body<'a>(
        &'a self,
        _: &'a Parts,
        body: &'a Bytes,
        exchange: &'a mut Exchange,
        services: &'a Services<'a>,
    ) -> Step<'a> {
        if body.is_empty() {
            return Flow::Continue.into();
        }
        let refused = |message: String| {
            Rejection::new(StatusCode::BAD_REQUEST, message)
                .of_type(ResponseType::BadRequestBody)
                .with_reason("xml upstream: request body")
                .into()
        };
        let value = match crate::json_document::JsonDocument::parse_value(body) {
            Ok(value) => value,
            Err(e) => return refused(format!("the request body is not valid JSON: {e}")),
        };
        match xml::json_to_xml(&value, &self.root) {
            Ok(document) => {
                exchange.note(|| format!("the JSON body goes upstream as XML, root `{}`", self.root));
                if !services.dry_run {
                    exchange.replace_request_body(Bytes::from(document));
                    exchange.state.insert(ConvertedRequest);
                }
                Flow::Continue.into()
            }
            Err(e) => refused(format!("the request body cannot be sent as XML: {e}")),
        }
    }

    fn upstream_request(&self, head: &mut Parts, exchange: &mut Exchange) {
        if exchange.state.get::<ConvertedRequest>().is_some() {
            head.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml; charset=utf-8"));
        }
    }

    fn response_head(&self, head: &mut response::Parts, exchange: &mut Exchange, _: &Services<'_>) {
        let xml_answer = MediaType::of(&head.headers).is_some_and(is_xml);
        if !exchange.integration_answered || !xml_answer {
            return;
        }
        head.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        head.headers.remove(CONTENT_LENGTH);
        exchange.state.insert(ConvertingResponse(BoundedCopy::new(MAX_CONVERTED_BODY)));
    }

    fn response_body(&self, chunk: &mut Option<Bytes>, end_of_stream: bool, exchange: &mut Exchange) {
        let Some(ConvertingResponse(copy)) = exchange.state.get_mut::<ConvertingResponse>() else { return };
        if let Some(data) = chunk.take() {
            copy.push(&data);
        }
        if !end_of_stream {
            return;
        }
        let Some(ConvertingResponse(copy)) = exchange.state.remove::<ConvertingResponse>() else { return };
        let converted = match copy.finish() {
            None => Err(format!("the upstream's XML is over {MAX_CONVERTED_BODY} bytes")),
            Some(body) => match std::str::from_utf8(&body) {
                Ok(text) => xml::xml_to_json(text).map_err(|e| e.to_string()),
                Err(_) => Err("the upstream's XML is not UTF-8".to_string()),
            },
        };
        *chunk = Some(match converted {
            Ok(value) => Bytes::from(value.to_string()),
            Err(reason) => {
                tracing::warn!(reason, request_id = ?exchange.request_id, "the upstream's XML answer could not be converted");
                Bytes::from_static(b"{\"message\":\"the upstream's answer could not be converted to JSON\"}")
            }
        });
    }
}
