//! Request mapping (`type: rest`): the route's integration reshapes the request body with a
//! mapping template ([`crate::mapping`]) chosen by the request's content type, before it goes
//! upstream.
//!
//! A request without `Content-Type` is taken as `application/json`. When no template
//! matches, the passthrough behaviour decides: `when_no_match` sends the body as it is,
//! `when_no_templates` does so only when the integration has no templates at all, and
//! `never` refuses with 415. A template that fails to render is a 500, its reason in the
//! log, never a panic; rendering is bounded. A body of one of the API's binary media types
//! passes through as bytes, or is converted as the integration's `content_handling` says
//! ([`super::content`]).

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http::header::USER_AGENT;
use http::request::Parts;
use serde_json::{Map, Value};

use super::content::{ContentHandling, Conversion, MediaRanges, MediaType};
use super::validation::ValidatedJson;
use super::{BodyNeed, Exchange, Flow, Phases, Services, Stage, Step};
use crate::authorizers::AuthorizerContext;
use crate::mapping::{BodyJson, Bounds, ContextReads, Inputs, Reads, Template};
use crate::observe::trace::SpanKind;
use crate::rejection::Rejection;

/// What happens to a request whose content type has no template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    WhenNoMatch,
    WhenNoTemplates,
    Never,
}

/// The values of a route's path parameters, in capture order (the pipeline keeps them for
/// routes that map their requests).
#[derive(Debug, Clone)]
pub struct PathParameters(pub Vec<String>);

/// Which template this request renders with.
#[derive(Debug, Clone)]
struct Chosen(Arc<Template>);

/// How this request's body is converted before it is mapped or sent.
#[derive(Debug, Clone, Copy)]
struct Converting(Conversion);

/// A request's `$context`, kept for its other templates once one has built it.
#[derive(Debug, Clone)]
struct SharedContext(Arc<Value>);

/// `$context` for a template that does not read it.
static NO_CONTEXT: std::sync::LazyLock<Arc<Value>> = std::sync::LazyLock::new(|| Arc::new(Value::Null));

/// What a template reads besides the body, for one route on one stage: the request's
/// parameters, `$context` and `$stageVariables`. Request and response templates share it.
#[derive(Debug, Default)]
pub struct TemplateScope {
    /// The route's path parameter names, in capture order.
    pub parameter_names: Vec<String>,
    /// `$context.stage`, `$context.resourcePath`.
    pub stage: String,
    pub resource_path: String,
    pub stage_variables: Arc<Value>,
    /// The members of `$context` the route's templates read: only those are built.
    pub context: ContextMembers,
}

/// Which members of `$context` are built for a route's templates (what any of them reads).
#[derive(Debug, Clone, Copy, Default)]
pub struct ContextMembers {
    request_id: bool,
    http_method: bool,
    resource_path: bool,
    path: bool,
    stage: bool,
    identity: bool,
    authorizer: bool,
}

impl ContextMembers {
    /// The members `reads` names (all of them when it reads `$context` whole).
    pub fn of(reads: &ContextReads) -> ContextMembers {
        ContextMembers {
            request_id: reads.member("requestId"),
            http_method: reads.member("httpMethod"),
            resource_path: reads.member("resourcePath"),
            path: reads.member("path"),
            stage: reads.member("stage"),
            identity: reads.member("identity"),
            authorizer: reads.member("authorizer"),
        }
    }
}

impl TemplateScope {
    /// The inputs a template reads for this request, with an empty body; the request's
    /// parameters and `$context` only when the template `reads` them (`$context` is built
    /// once per request, whichever template asks first).
    pub fn inputs(&self, head: &Parts, exchange: &mut Exchange, reads: &Reads) -> Inputs {
        let (mut path, mut querystring, mut header) = (Map::new(), Map::new(), Map::new());
        if reads.params {
            let values = exchange.state.get::<PathParameters>().map(|p| p.0.as_slice()).unwrap_or_default();
            path = self.parameter_names.iter().cloned().zip(values.iter().map(|v| Value::String(v.clone()))).collect();
            for (k, v) in crate::query::pairs(head.uri.query().unwrap_or("")) {
                querystring.entry(k).or_insert(Value::String(v));
            }
            for (name, value) in &head.headers {
                header
                    .entry(name.as_str().to_string())
                    .or_insert_with(|| Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()));
            }
        }
        let context = match (reads.context.any(), exchange.state.get::<SharedContext>()) {
            (false, _) => NO_CONTEXT.clone(),
            (true, Some(SharedContext(built))) => built.clone(),
            (true, None) => {
                let built = Arc::new(self.context(head, exchange));
                exchange.state.insert(SharedContext(built.clone()));
                built
            }
        };
        Inputs {
            body: Bytes::new(),
            body_json: Default::default(),
            path,
            querystring,
            header,
            context,
            stage_variables: self.stage_variables.clone(),
        }
    }

    /// `$context` for this request: the members the route's templates read.
    fn context(&self, head: &Parts, exchange: &Exchange) -> Value {
        let wanted = self.context;
        let text = |s: &str| Value::String(s.to_string());
        let mut members = Map::new();
        if wanted.request_id {
            members.insert("requestId".into(), text(exchange.request_id.to_str().unwrap_or("")));
        }
        if wanted.http_method {
            members.insert("httpMethod".into(), text(head.method.as_str()));
        }
        if wanted.resource_path {
            members.insert("resourcePath".into(), text(&self.resource_path));
        }
        if wanted.path {
            members.insert("path".into(), text(head.uri.path()));
        }
        if wanted.stage {
            members.insert("stage".into(), text(&self.stage));
        }
        if wanted.identity {
            let user_agent = head.headers.get(USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
            let identity = serde_json::json!({ "sourceIp": exchange.client.to_string(), "userAgent": user_agent });
            members.insert("identity".into(), identity);
        }
        if wanted.authorizer {
            let authorizer = exchange.state.get::<AuthorizerContext>().map_or(Value::Null, |c| {
                let mut values = (*c.values).clone();
                // JWT claims are under `claims`, as the managed gateway has them.
                values.insert("claims".into(), Value::Object((*c.values).clone()));
                Value::Object(values)
            });
            members.insert("authorizer".into(), authorizer);
        }
        Value::Object(members)
    }
}

/// One route's request mapping on one stage.
#[derive(Debug)]
pub struct RequestMapping {
    /// By media type (lower case, without parameters).
    pub templates: Vec<(String, Arc<Template>)>,
    pub passthrough: Passthrough,
    pub scope: Arc<TemplateScope>,
    pub bounds: Bounds,
    /// The API's binary media types.
    pub binary: Arc<MediaRanges>,
    pub content_handling: Option<ContentHandling>,
}

impl Stage for RequestMapping {
    fn name(&self) -> &'static str {
        "mapping"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEAD | Phases::REQUEST_BODY
    }

    fn request_head<'a>(&'a self, head: &'a mut Parts, exchange: &'a mut Exchange, _: &'a Services<'a>) -> Step<'a> {
        let media = MediaType::of(&head.headers).unwrap_or(MediaType::JSON);
        let conversion = Conversion::of(self.binary.contains(media), self.content_handling);
        if conversion != Conversion::Text {
            exchange.state.insert(Converting(conversion));
        }
        if !conversion.templated() {
            exchange.note(|| match conversion {
                Conversion::Decode => format!("the {media} body is base64-decoded and sent as bytes"),
                _ => format!("{media} is a binary media type: the body passes through"),
            });
            return Flow::Continue.into();
        }
        match self.templates.iter().find(|(m, _)| media.is(m)) {
            Some((_, template)) => {
                exchange.note(|| format!("the {media} request template"));
                exchange.state.insert(Chosen(template.clone()));
                Flow::Continue.into()
            }
            None => {
                let passes = match self.passthrough {
                    Passthrough::WhenNoMatch => true,
                    Passthrough::WhenNoTemplates => self.templates.is_empty(),
                    Passthrough::Never => false,
                };
                if passes {
                    exchange.note(|| format!("no template for {media}: the body passes through"));
                    return Flow::Continue.into();
                }
                Rejection::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("this route does not take `{media}` bodies"))
                    .with_reason("no mapping template for the content type")
                    .into()
            }
        }
    }

    fn body_need(&self, _: &Parts) -> Option<BodyNeed> {
        // Rendered whenever a template was chosen, with or without a body (the pipeline
        // calls the body phase only for stages that ask, so ask always and skip below).
        Some(BodyNeed::Whole(u64::MAX))
    }

    fn request_body<'a>(
        &'a self,
        head: &'a Parts,
        body: &'a Bytes,
        exchange: &'a mut Exchange,
        services: &'a Services<'a>,
    ) -> Step<'a> {
        let converting = exchange.state.remove::<Converting>();
        let chosen = exchange.state.remove::<Chosen>();
        let body = match converting {
            Some(Converting(conversion)) => match conversion.apply(body) {
                Ok(converted) => converted,
                Err(e) => {
                    return Rejection::new(
                        StatusCode::BAD_REQUEST,
                        format!("the request body cannot be converted: {e}"),
                    )
                    .of_type(crate::rejection::ResponseType::BadRequestBody)
                    .with_reason("content handling: request body")
                    .into();
                }
            },
            None => body.clone(),
        };
        let Some(Chosen(template)) = chosen else {
            if converting.is_some_and(|Converting(c)| c != Conversion::Bytes) && !services.dry_run {
                exchange.replace_request_body(body);
            }
            return Flow::Continue.into();
        };
        let mut inputs = self.scope.inputs(head, exchange, template.reads());
        if let Some(parsed) = exchange.state.get::<ValidatedJson>().and_then(|v| v.of(&body)) {
            inputs.body_json = BodyJson::parsed(parsed);
        }
        inputs.body = body;
        let span = exchange.start_span();
        let rendered = template.render(&inputs, self.bounds);
        let error = rendered.as_ref().err().map(|e| e.to_string());
        exchange.end_span(span, "request mapping", SpanKind::Internal, Vec::new, error);
        match rendered {
            Ok(rendered) => {
                if !services.dry_run {
                    exchange.replace_request_body(Bytes::from(rendered));
                }
                Flow::Continue.into()
            }
            Err(e) => {
                tracing::warn!(error = %e, request_id = ?exchange.request_id, "the request mapping template failed");
                Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, "the request could not be mapped for the upstream")
                    .with_reason(format!("request template: {e}"))
                    .into()
            }
        }
    }
}
