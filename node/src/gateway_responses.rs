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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use serde_json::Value;

use crate::body::ResponseBody;
use crate::mapping::{Bounds, Inputs, Template};
use crate::rejection::{Rejection, ResponseType};

/// One configured gateway response.
#[derive(Debug)]
pub struct GatewayResponse {
    /// The client's status; the refusal's when not set.
    pub status: Option<StatusCode>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body's templates by media type; the client's `Accept` chooses
    /// ([`crate::mapping::for_accept`]).
    pub templates: Vec<(String, Arc<Template>)>,
}

/// An API's gateway responses on one stage.
#[derive(Debug)]
pub struct GatewayResponses {
    pub by_type: Arc<HashMap<ResponseType, GatewayResponse>>,
    pub stage: String,
    pub stage_variables: Value,
    pub bounds: Bounds,
}

impl GatewayResponses {
    /// The answer to `rejection`, as this API words it, for a client that sent `accept`.
    pub fn answer(
        &self,
        rejection: Rejection,
        request_id: &HeaderValue,
        client: IpAddr,
        accept: Option<&str>,
    ) -> Response<ResponseBody> {
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
        for (name, value) in &configured.headers {
            headers.insert(name, value.clone());
        }
        response
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
        Inputs { context, stage_variables: self.stage_variables.clone(), ..Inputs::default() }
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
            stage_variables: serde_json::json!({ "team": "pets" }),
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
                    headers: vec![(HeaderName::from_static("x-help"), HeaderValue::from_static("see docs"))],
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
        let plain = custom.answer(
            Rejection::new(StatusCode::UNAUTHORIZED, "no token"),
            &id,
            client,
            Some("text/html;q=0.9, text/plain"),
        );
        assert_eq!(plain.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(body(plain).await, "denied: no token");

        let failure = custom.answer(Rejection::new(StatusCode::BAD_GATEWAY, "down"), &id, client, None);
        assert_eq!(failure.status(), 503, "INTEGRATION_FAILURE falls to DEFAULT_5XX");
        assert!(body(failure).await.contains("\"message\":\"down\""), "no template: the built-in body");

        let throttled = custom.answer(Rejection::new(StatusCode::TOO_MANY_REQUESTS, "slow down"), &id, client, None);
        assert_eq!(throttled.status(), 429, "nothing configured for 4xx: the built-in answer");
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
