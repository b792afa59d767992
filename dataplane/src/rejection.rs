//! Rejections: the JSON error answer every stage gives when it stops a request, and the
//! kind of refusal each one is ([`ResponseType`]), which an API's gateway responses
//! customise (see `gateway_responses`).

use std::borrow::Cow;

use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;
use crate::observe::access_log::write_json_string;

/// A request stopped by a stage, with the status and message the client will see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub message: Cow<'static, str>,
    /// Extra response headers, such as `Allow` on a 405.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What the access log records when the client is told less than the whole story.
    pub reason: Option<Cow<'static, str>>,
    /// What exactly is wrong with the request, listed in the answer as `errors`.
    pub violations: Vec<Violation>,
    /// The kind of refusal, when the status alone does not say it.
    pub response_type: Option<ResponseType>,
}

/// The kinds of answer the gateway gives of its own, by the managed gateway's names (an
/// API's `gateway_responses` are keyed by them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseType {
    AccessDenied,
    AuthorizerFailure,
    BadRequestBody,
    BadRequestParameters,
    Default4xx,
    Default5xx,
    ExpiredToken,
    IntegrationFailure,
    IntegrationTimeout,
    InvalidApiKey,
    InvalidSignature,
    MissingAuthenticationToken,
    QuotaExceeded,
    RequestTooLarge,
    ResourceNotFound,
    Throttled,
    Unauthorized,
    UnsupportedMediaType,
    WafFiltered,
}

impl ResponseType {
    /// Every type, with its name in configuration.
    pub const ALL: [(ResponseType, &'static str); 19] = [
        (ResponseType::AccessDenied, "ACCESS_DENIED"),
        (ResponseType::AuthorizerFailure, "AUTHORIZER_FAILURE"),
        (ResponseType::BadRequestBody, "BAD_REQUEST_BODY"),
        (ResponseType::BadRequestParameters, "BAD_REQUEST_PARAMETERS"),
        (ResponseType::Default4xx, "DEFAULT_4XX"),
        (ResponseType::Default5xx, "DEFAULT_5XX"),
        (ResponseType::ExpiredToken, "EXPIRED_TOKEN"),
        (ResponseType::IntegrationFailure, "INTEGRATION_FAILURE"),
        (ResponseType::IntegrationTimeout, "INTEGRATION_TIMEOUT"),
        (ResponseType::InvalidApiKey, "INVALID_API_KEY"),
        (ResponseType::InvalidSignature, "INVALID_SIGNATURE"),
        (ResponseType::MissingAuthenticationToken, "MISSING_AUTHENTICATION_TOKEN"),
        (ResponseType::QuotaExceeded, "QUOTA_EXCEEDED"),
        (ResponseType::RequestTooLarge, "REQUEST_TOO_LARGE"),
        (ResponseType::ResourceNotFound, "RESOURCE_NOT_FOUND"),
        (ResponseType::Throttled, "THROTTLED"),
        (ResponseType::Unauthorized, "UNAUTHORIZED"),
        (ResponseType::UnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE"),
        (ResponseType::WafFiltered, "WAF_FILTERED"),
    ];

    pub fn parse(name: &str) -> Option<ResponseType> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(t, _)| *t)
    }

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(t, _)| *t == self).map_or("DEFAULT_4XX", |(_, n)| n)
    }

    /// The type a refusal of `status` is when its stage did not say.
    fn of_status(status: StatusCode) -> ResponseType {
        match status.as_u16() {
            401 => ResponseType::Unauthorized,
            403 => ResponseType::AccessDenied,
            404 => ResponseType::ResourceNotFound,
            413 => ResponseType::RequestTooLarge,
            415 => ResponseType::UnsupportedMediaType,
            429 => ResponseType::Throttled,
            502 => ResponseType::IntegrationFailure,
            504 => ResponseType::IntegrationTimeout,
            500..=599 => ResponseType::Default5xx,
            _ => ResponseType::Default4xx,
        }
    }

    /// `DEFAULT_4XX` or `DEFAULT_5XX`, by the class of `status`.
    pub fn default_for(status: StatusCode) -> ResponseType {
        if status.is_server_error() { ResponseType::Default5xx } else { ResponseType::Default4xx }
    }
}

/// One thing wrong with a request: where (`query`, `header`, `body`), at what (a
/// parameter's name, or a JSON pointer into the body) and what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    #[serde(rename = "in")]
    pub part: &'static str,
    pub at: String,
    pub message: String,
}

impl Violation {
    pub fn new(part: &'static str, at: String, message: impl Into<String>) -> Self {
        Violation { part, at, message: message.into() }
    }
}

impl Rejection {
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            status,
            message: message.into(),
            headers: Vec::new(),
            reason: None,
            violations: Vec::new(),
            response_type: None,
        }
    }

    /// Says what kind of refusal this is, where its status alone does not.
    pub fn of_type(mut self, response_type: ResponseType) -> Self {
        self.response_type = Some(response_type);
        self
    }

    /// The kind of refusal: as its stage said, or by its status.
    pub fn response_type(&self) -> ResponseType {
        self.response_type.unwrap_or_else(|| ResponseType::of_status(self.status))
    }

    /// Lists `violations` in the answer.
    pub fn with_violations(mut self, violations: Vec<Violation>) -> Self {
        self.violations = violations;
        self
    }

    /// Records `reason` in the access log (never in the response).
    pub fn with_reason(mut self, reason: impl Into<Cow<'static, str>>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// `{"message": ..., "request_id": ...}` (and `"errors": [...]` when there are
    /// violations) with the rejection's status and headers.
    pub fn into_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let body = self.json_body(request_id);
        let mut response = Response::new(ResponseBody::full(body));
        *response.status_mut() = self.status;
        response.headers_mut().extend(self.headers);
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// The refusal as a gRPC client reads it: a trailers-only answer (HTTP 200, no body) with
    /// `grpc-status` and `grpc-message`, and the request id.
    pub fn into_grpc_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::Empty);
        let headers = response.headers_mut();
        headers.extend(self.headers);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(u16::from(crate::grpc::status_code(self.status))));
        let message = format!("{} (request {})", self.message, request_id.to_str().unwrap_or("-"));
        if let Ok(value) = HeaderValue::try_from(crate::grpc::encode_message(&message)) {
            headers.insert("grpc-message", value);
        }
        response
    }

    /// The JSON body of [`Rejection::into_response`].
    pub fn json_body(&self, request_id: &HeaderValue) -> String {
        let mut body = String::with_capacity(64 + self.message.len());
        body.push_str("{\"message\":");
        write_json_string(&mut body, &self.message);
        if !self.violations.is_empty() {
            body.push_str(",\"errors\":");
            body.push_str(&serde_json::to_string(&self.violations).unwrap_or_else(|_| "[]".into()));
        }
        body.push_str(",\"request_id\":");
        write_json_string(&mut body, request_id.to_str().unwrap_or("-"));
        body.push('}');
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn body_is_json_with_the_request_id() {
        let r = Rejection::new(StatusCode::NOT_FOUND, "no \"route\"").into_response(&HeaderValue::from_static("id1"));
        assert_eq!(r.status(), 404);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["message"], "no \"route\"");
        assert_eq!(v["request_id"], "id1");
        assert!(v.get("errors").is_none());
        let listed = Rejection::new(StatusCode::BAD_REQUEST, "bad")
            .with_violations(vec![Violation::new("body", "/a".into(), "is \"wrong\"")])
            .into_response(&HeaderValue::from_static("id2"));
        let body = listed.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"], serde_json::json!([{ "in": "body", "at": "/a", "message": "is \"wrong\"" }]));
    }
}
