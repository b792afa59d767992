//! `meridian explain request`: what this node would do with a request, stage by stage,
//! without sending anything upstream.
//!
//! The request runs through the same routing and the same stages as a real one, on the
//! routing table the node serves now, with [`Services::dry_run`](crate::stages::Services::dry_run) set: the firewall's rules,
//! the throttles, the API key and the authorizers decide exactly as they would, but nothing
//! is counted, recorded or blocked, and the integration is only named (the upstream URI the
//! request would be sent to, or the mock's status). A custom authorizer is called as it
//! would be (its answer is cached as usual): its decision is part of the outcome.

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::Bytes;
use http::request::Parts;
use serde::Serialize;

use super::{Pipeline, canary_draw, routing};
use crate::authorizers::AuthorizerContext;
use crate::integration::Integration;
use crate::integration::websocket::WebSocketEndpoint;
use crate::rejection::Rejection;
use crate::stages::{Exchange, Flow, Step, Stop, may_have_body};

/// What the node would do with a request.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// `None` when the request matches no route.
    pub route: Option<RouteView>,
    /// The request-side stages the request met, in order.
    pub stages: Vec<StageStep>,
    pub outcome: Outcome,
}

/// The route a request matched.
#[derive(Debug, Serialize)]
pub struct RouteView {
    pub api: String,
    pub stage: String,
    pub route: String,
    /// The deployment serving it ("" for a standalone configuration file).
    pub deployment: String,
    /// The route's whole chain, every phase.
    pub chain: Vec<&'static str>,
}

/// One stage's decision.
#[derive(Debug, Serialize)]
pub struct StageStep {
    pub stage: &'static str,
    pub phase: &'static str,
    /// `continue`, `reject` or `answer`.
    pub decision: &'static str,
    /// What the stage found (rules that matched, the limits, the key, ...).
    pub notes: Vec<String>,
}

/// How the request would end.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Refused by the gateway, with the status and message the client would get, and the
    /// precise reason the access log would record.
    Refused { status: u16, message: String, reason: Option<String>, by: &'static str },
    /// Answered by a stage (a CORS preflight, later a cached response).
    Answered { status: u16, by: &'static str },
    /// Sent to the upstream: this URI, with the authorizer's context if one admitted it.
    Forwarded { upstream: String, authorizer: Option<AuthorizerView> },
    /// Answered by the route's mock integration.
    Mocked { status: u16, authorizer: Option<AuthorizerView> },
    /// Answered by the route's redirect integration, to this location.
    Redirected { status: u16, location: String, authorizer: Option<AuthorizerView> },
    /// A WebSocket API's route: the handshake (`$connect`) or the callback API.
    WebSocket { endpoint: &'static str, authorizer: Option<AuthorizerView> },
}

/// The authorizer that admitted the request, and what it passes on.
#[derive(Debug, Serialize)]
pub struct AuthorizerView {
    pub name: String,
    pub context: serde_json::Map<String, serde_json::Value>,
}

/// Where a request that passes its stages goes.
enum Destination {
    Upstream(String),
    Mock(u16),
    Redirect(u16, String),
    WebSocket(&'static str),
}

fn refused(rejection: Rejection, by: &'static str) -> Outcome {
    Outcome::Refused {
        status: rejection.status.as_u16(),
        message: rejection.message.into_owned(),
        reason: rejection.reason.map(Cow::into_owned),
        by,
    }
}

impl Pipeline {
    /// Explains the request `head` with `body` from `client`.
    pub async fn explain(&self, mut head: Parts, body: Bytes, client: IpAddr) -> Explanation {
        let table = self.table.load_full();
        let services = self.services(&table, true);
        let routed = match routing::route(&table, &head, canary_draw()) {
            Ok(routed) => routed,
            Err(refusal) => {
                return Explanation { route: None, stages: Vec::new(), outcome: refused(refusal.rejection, "routing") };
            }
        };
        let target = routed.target;
        let observer = &target.observer;
        let route = RouteView {
            api: observer.api.to_string(),
            stage: observer.stage.to_string(),
            route: observer.route.to_string(),
            deployment: observer.deployment.to_string(),
            chain: target.chain.names(),
        };
        let destination = match &target.integration {
            Integration::Proxy(proxy) => {
                match proxy.upstream.render(routed.route_path(), &routed.captures, head.uri.query()) {
                    Ok(uri) => Destination::Upstream(uri.to_string()),
                    Err(_) => {
                        let r = Rejection::new(http::StatusCode::BAD_REQUEST, "the request path cannot be forwarded");
                        return Explanation { route: Some(route), stages: Vec::new(), outcome: refused(r, "routing") };
                    }
                }
            }
            Integration::Mock(mock) => Destination::Mock(mock.status.as_u16()),
            Integration::Redirect(redirect) => Destination::Redirect(
                redirect.status.as_u16(),
                redirect.location.render(routed.route_path(), &routed.captures, head.uri.query()),
            ),
            Integration::WebSocket(WebSocketEndpoint::Connect(_)) => Destination::WebSocket("$connect"),
            Integration::WebSocket(WebSocketEndpoint::Callback { .. }) => Destination::WebSocket("callback API"),
        };
        drop(routed);
        let mut exchange = Exchange::explained(crate::pipeline::request_id::generate(), client);
        let mut stages = Vec::new();
        let mut stop = None;
        for stage in target.chain.request_head_stages() {
            let flow = match stage.request_head(&mut head, &mut exchange, &services) {
                Step::Done(flow) => flow,
                Step::Waiting(waiting) => waiting.await,
            };
            let (decision, stopped) = decide(flow);
            stages.push(StageStep {
                stage: stage.name(),
                phase: "request head",
                decision,
                notes: exchange.take_notes(),
            });
            if let Some(s) = stopped {
                stop = Some((s, stage.name()));
                break;
            }
        }
        if stop.is_none() && target.chain.body_need(&head).is_some() {
            let body = if may_have_body(&head) { body } else { Bytes::new() };
            let (decision, stopped) = decide(target.chain.request_body(&head, &body, &mut exchange, &services).await);
            stages.push(StageStep {
                stage: "(body stages)",
                phase: "request body",
                decision,
                notes: exchange.take_notes(),
            });
            stop = stopped.map(|s| (s, "request body"));
        }
        let authorizer = exchange
            .state
            .get::<AuthorizerContext>()
            .map(|c| AuthorizerView { name: c.authorizer.to_string(), context: (*c.values).clone() });
        let outcome = match (stop, destination) {
            (Some((Stop::Reject(rejection), by)), _) => refused(rejection, by),
            (Some((Stop::Answer(response), by)), _) => Outcome::Answered { status: response.status().as_u16(), by },
            (None, Destination::Upstream(upstream)) => Outcome::Forwarded { upstream, authorizer },
            (None, Destination::Mock(status)) => Outcome::Mocked { status, authorizer },
            (None, Destination::Redirect(status, location)) => Outcome::Redirected { status, location, authorizer },
            (None, Destination::WebSocket(endpoint)) => Outcome::WebSocket { endpoint, authorizer },
        };
        Explanation { route: Some(route), stages, outcome }
    }
}

fn decide(flow: Flow) -> (&'static str, Option<Stop>) {
    match flow {
        Flow::Continue => ("continue", None),
        Flow::Stop(stop @ Stop::Reject(_)) => ("reject", Some(stop)),
        Flow::Stop(stop @ Stop::Answer(_)) => ("answer", Some(stop)),
    }
}
