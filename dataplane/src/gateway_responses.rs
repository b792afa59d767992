//! Gateway responses (`type: rest`): an API's own wording for the answers the gateway gives
//! itself, by kind of refusal ([`ResponseType`]: `UNAUTHORIZED`, `THROTTLED`, `WAF_FILTERED`,
//! `DEFAULT_4XX`, ...), like a managed gateway's gateway responses.
//!
//! A refusal looks up its own type, then `DEFAULT_4XX` or `DEFAULT_5XX` by its status; the
//! first configured one may set the status, add headers (over the refusal's own, such as
//! `Retry-After`) and render the body with a template ([`crate::mapping`]) that reads
//! `$context.error.message`, `$context.error.messageString` (the message as a JSON string),
//! `$context.error.responseType`, `$context.error.validationErrorString`,
//! `$context.requestId`, `$context.stage`, `$context.identity.sourceIp` and
//! `$stageVariables`. Without a template the body is the usual JSON error; a template that
//! fails falls back to it too, its reason in the log. A refusal with no configured type
//! keeps the built-in answer.
//!
//! A header's value is a literal (`'text'`), or taken from the request
//! (`method.request.header.NAME`, `method.request.querystring.NAME`, left out when the request
//! has none), the stage (`stageVariables.NAME`) or `context.requestId`. The pipeline keeps
//! what a refused request said ([`RequestEcho`]) only for APIs that have gateway responses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use serde_json::Value;

use crate::body::ResponseBody;
use crate::mapping::{Bounds, Inputs, Template};
use crate::rejection::{Rejection, ResponseType};

/// Where a gateway response header's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderSource {
    /// `'text'`.
    Literal(HeaderValue),
    /// `method.request.header.NAME`.
    RequestHeader(HeaderName),
    /// `method.request.querystring.NAME`.
    Query(String),
    /// `stageVariables.NAME`.
    StageVariable(String),
    /// `context.requestId`.
    RequestId,
}

/// What a refused request said, kept for the API's gateway responses: its headers (the
/// `Accept` that chooses the template among them) and its query.
#[derive(Debug, Clone)]
pub struct RequestEcho {
    pub headers: HeaderMap,
    pub query: Option<String>,
}

/// One configured gateway response.
#[derive(Debug)]
pub struct GatewayResponse {
    /// The client's status; the refusal's when not set.
    pub status: Option<StatusCode>,
    pub headers: Vec<(HeaderName, HeaderSource)>,
    /// The body's templates by media type; the client's `Accept` chooses
    /// ([`crate::mapping::for_accept`]).
    pub templates: Vec<(String, Arc<Template>)>,
}

/// An API's gateway responses on one stage.
#[derive(Debug)]
pub struct GatewayResponses {
    pub by_type: Arc<HashMap<ResponseType, GatewayResponse>>,
    pub stage: String,
    pub stage_variables: Arc<Value>,
    pub bounds: Bounds,
}

impl GatewayResponses {
    /// The answer to `rejection`, as this API words it, to the request `echo` says.
    pub fn answer(
        &self,
        rejection: Rejection,
        request_id: &HeaderValue,
        client: IpAddr,
        echo: Option<&RequestEcho>,
    ) -> Response<ResponseBody> {
        let accept = echo.and_then(|e| e.headers.get(ACCEPT)).and_then(|a| a.to_str().ok());
        let response_type = rejection.response_type();
        let configured =
            self.by_type.get(&response_type).or_else(|| self.by_type.get(&ResponseType::default_for(rejection.status)));
        let Some(configured) = configured else { return rejection.into_response(request_id) };
        let chosen = crate::mapping::for_accept(&configured.templates, accept);
        let rendered = chosen.and_then(|(media, template)| {
            let media = HeaderValue::from_str(media).ok()?;
            let inputs = self.inputs(&rejection, response_type, request_id, client);
            match template.render(&inputs, self.bounds) {
                Ok(body) => Some((media, body)),
                Err(e) => {
                    tracing::warn!(error = %e, request_id = ?request_id, response_type = response_type.name(), "the gateway response template failed");
                    None
                }
            }
        });
        let (media, body) =
            rendered.unwrap_or_else(|| (HeaderValue::from_static("application/json"), rejection.json_body(request_id)));
        let mut response = Response::new(ResponseBody::full(body));
        *response.status_mut() = configured.status.unwrap_or(rejection.status);
        let headers = response.headers_mut();
        headers.extend(rejection.headers);
        headers.insert(CONTENT_TYPE, media);
        for (name, source) in &configured.headers {
            if let Some(value) = self.header_value(source, request_id, echo) {
                headers.insert(name, value);
            }
        }
        response
    }

    /// A configured header's value for this request; `None` when the request has none.
    fn header_value(
        &self,
        source: &HeaderSource,
        request_id: &HeaderValue,
        echo: Option<&RequestEcho>,
    ) -> Option<HeaderValue> {
        match source {
            HeaderSource::Literal(value) => Some(value.clone()),
            HeaderSource::RequestHeader(name) => echo?.headers.get(name).cloned(),
            HeaderSource::Query(name) => {
                let query = echo?.query.as_deref()?;
                let (_, value) = crate::query::pairs(query).find(|(k, _)| k == name)?;
                HeaderValue::from_str(&value).ok()
            }
            HeaderSource::StageVariable(name) => {
                self.stage_variables.get(name).and_then(Value::as_str).and_then(|v| HeaderValue::from_str(v).ok())
            }
            HeaderSource::RequestId => Some(request_id.clone()),
        }
    }

    fn inputs(
        &self,
        rejection: &Rejection,
        response_type: ResponseType,
        request_id: &HeaderValue,
        client: IpAddr,
    ) -> Inputs {
        let message_string = Value::String(rejection.message.to_string()).to_string();
        let validation = rejection.violations.iter().map(|v| match v.at.as_str() {
            "" => format!("{}: {}", v.part, v.message),
            at => format!("{} {at}: {}", v.part, v.message),
        });
        let context = serde_json::json!({
            "requestId": request_id.to_str().unwrap_or(""),
            "stage": self.stage,
            "identity": { "sourceIp": client.to_string() },
            "error": {
                "message": rejection.message,
                "messageString": message_string,
                "responseType": response_type.name(),
                "validationErrorString": validation.collect::<Vec<_>>().join("; "),
            },
        });
        Inputs { context: Arc::new(context), stage_variables: self.stage_variables.clone(), ..Inputs::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn responses(entries: Vec<(ResponseType, GatewayResponse)>) -> GatewayResponses {
        GatewayResponses {
            by_type: Arc::new(entries.into_iter().collect()),
            stage: "prod".into(),
            stage_variables: Arc::new(serde_json::json!({ "team": "pets" })),
            bounds: Bounds::default(),
        }
    }

    async fn body(response: Response<ResponseBody>) -> String {
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_refusal_takes_its_type_then_its_class_default_then_the_built_in_answer() {
        let template = Template::parse(
            r#"{"error": $context.error.messageString, "type": "$context.error.responseType", "team": "$stageVariables.team"}"#,
        )
        .unwrap();
        let custom = responses(vec![
            (
                ResponseType::Unauthorized,
                GatewayResponse {
                    status: None,
                    headers: vec![(
                        HeaderName::from_static("x-help"),
                        HeaderSource::Literal(HeaderValue::from_static("see docs")),
                    )],
                    templates: vec![
                        ("application/json".into(), Arc::new(template)),
                        ("text/plain".into(), Arc::new(Template::parse("denied: $context.error.message").unwrap())),
                    ],
                },
            ),
            (
                ResponseType::Default5xx,
                GatewayResponse { status: Some(StatusCode::SERVICE_UNAVAILABLE), headers: vec![], templates: vec![] },
            ),
        ]);
        let id = HeaderValue::from_static("req-1");
        let client: IpAddr = "192.0.2.1".parse().unwrap();

        let unauthorized = Rejection::new(StatusCode::UNAUTHORIZED, "no \"token\"")
            .with_header(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        let r = custom.answer(unauthorized, &id, client, None);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["x-help"], "see docs");
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "the refusal's own headers stay");
        let v: Value = serde_json::from_str(&body(r).await).unwrap();
        assert_eq!(v, serde_json::json!({ "error": "no \"token\"", "type": "UNAUTHORIZED", "team": "pets" }));
        // A client that prefers text gets the text template.
        let mut asked = HeaderMap::new();
        asked.insert(ACCEPT, HeaderValue::from_static("text/html;q=0.9, text/plain"));
        let echo = RequestEcho { headers: asked, query: None };
        let plain = custom.answer(Rejection::new(StatusCode::UNAUTHORIZED, "no token"), &id, client, Some(&echo));
        assert_eq!(plain.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(body(plain).await, "denied: no token");

        let failure = custom.answer(Rejection::new(StatusCode::BAD_GATEWAY, "down"), &id, client, None);
        assert_eq!(failure.status(), 503, "INTEGRATION_FAILURE falls to DEFAULT_5XX");
        assert!(body(failure).await.contains("\"message\":\"down\""), "no template: the built-in body");

        let throttled = custom.answer(Rejection::new(StatusCode::TOO_MANY_REQUESTS, "slow down"), &id, client, None);
        assert_eq!(throttled.status(), 429, "nothing configured for 4xx: the built-in answer");
    }

    #[tokio::test]
    async fn headers_come_from_the_request_the_stage_and_the_context() {
        let headers = vec![
            (HeaderName::from_static("x-tenant"), HeaderSource::RequestHeader(HeaderName::from_static("x-tenant"))),
            (HeaderName::from_static("x-page"), HeaderSource::Query("page".into())),
            (HeaderName::from_static("x-team"), HeaderSource::StageVariable("team".into())),
            (HeaderName::from_static("x-id"), HeaderSource::RequestId),
            (HeaderName::from_static("x-missing"), HeaderSource::RequestHeader(HeaderName::from_static("x-none"))),
        ];
        let worded =
            responses(vec![(ResponseType::Default4xx, GatewayResponse { status: None, headers, templates: vec![] })]);
        let mut asked = HeaderMap::new();
        asked.insert("x-tenant", HeaderValue::from_static("acme"));
        let echo = RequestEcho { headers: asked, query: Some("a=1&page=3".into()) };
        let id = HeaderValue::from_static("req-9");
        let r =
            worded.answer(Rejection::new(StatusCode::NOT_FOUND, "no"), &id, "192.0.2.1".parse().unwrap(), Some(&echo));
        let h = r.headers();
        let values: Vec<&str> =
            ["x-tenant", "x-page", "x-team", "x-id"].iter().map(|n| h[*n].to_str().unwrap()).collect();
        assert_eq!(values, ["acme", "3", "pets", "req-9"]);
        assert!(h.get("x-missing").is_none(), "a header the request did not send is left out");
        // Without the request (a refusal before it was read), only what needs none.
        let r = worded.answer(Rejection::new(StatusCode::NOT_FOUND, "no"), &id, "192.0.2.1".parse().unwrap(), None);
        assert!(r.headers().get("x-tenant").is_none() && r.headers()["x-team"] == "pets");
    }

    #[test]
    fn every_type_has_a_name_that_parses_back() {
        for (t, name) in ResponseType::ALL {
            assert_eq!(ResponseType::parse(name), Some(t));
            assert_eq!(t.name(), name);
        }
        assert_eq!(ResponseType::parse("unauthorized"), None, "names are upper case, as exported");
        assert_eq!(Rejection::new(StatusCode::GATEWAY_TIMEOUT, "").response_type(), ResponseType::IntegrationTimeout);
        assert_eq!(Rejection::new(StatusCode::CONFLICT, "").response_type(), ResponseType::Default4xx);
        let waf = Rejection::new(StatusCode::FORBIDDEN, "").of_type(ResponseType::WafFiltered);
        assert_eq!(waf.response_type(), ResponseType::WafFiltered);
    }
}
