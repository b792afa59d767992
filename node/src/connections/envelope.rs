//! What a WebSocket API's integration receives for each event of a connection, and the
//! frames the gateway writes to a client of its own accord.
//!
//! Every event (`CONNECT`, `MESSAGE`, `DISCONNECT`) is a `POST` to the route's integration
//! with a JSON envelope (docs/CONFIG.md, "WebSocket APIs"):
//!
//! ```json
//! {
//!   "requestContext": {
//!     "routeKey": "sendmessage", "eventType": "MESSAGE", "connectionId": "AAAAAAAAAAEq1vPj3Yk0cg",
//!     "api": "chat", "stage": "prod", "requestId": "…", "connectedAt": 1764470000000,
//!     "identity": {"sourceIp": "127.0.0.1", "principal": "alice"}, "authorizer": {"sub": "alice"}
//!   },
//!   "body": "{\"action\":\"sendmessage\",\"text\":\"hi\"}",
//!   "isBase64Encoded": false
//! }
//! ```
//!
//! and the same facts in `X-Meridian-*` headers, so a backend can route on them without
//! parsing. `CONNECT` adds the handshake's `headers` and `queryStringParameters`;
//! `DISCONNECT` adds `disconnectStatusCode` and `disconnectReason`.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};

use super::ConnectionId;
use crate::integration::endpoint::UpstreamBody;
use crate::integration::request_body::RequestBody;
use crate::integration::websocket::MessageRoute;

/// The largest header value the authorizer's context is sent in; a larger context is
/// only in the envelope.
const MAX_CONTEXT_HEADER: usize = 4096;

/// What happened on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Connect,
    Message,
    Disconnect,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Connect => "CONNECT",
            EventType::Message => "MESSAGE",
            EventType::Disconnect => "DISCONNECT",
        }
    }
}

/// What every event of one connection tells its integration.
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    pub id: ConnectionId,
    pub api: Arc<str>,
    pub stage: Arc<str>,
    pub connected_at_ms: u64,
    pub source: IpAddr,
    /// Who `$connect` let in: `sourceIp`, and `principal` when an authorizer named one.
    pub identity: Arc<Value>,
    /// The authorizer's context (a JWT's claims, a custom authorizer's context).
    pub authorizer: Option<Arc<Map<String, Value>>>,
}

impl ConnectionContext {
    /// The identity of a connection from `source` that an authorizer let in with `context`.
    pub fn identity_of(source: IpAddr, authorizer: Option<&Map<String, Value>>) -> Value {
        let mut identity = json!({ "sourceIp": source.to_string() });
        let principal = authorizer.and_then(|c| c.get("principalId").or_else(|| c.get("sub")));
        if let Some(principal) = principal.and_then(Value::as_str) {
            identity["principal"] = Value::from(principal);
        }
        identity
    }
}

/// A message's content.
#[derive(Debug, Clone)]
pub enum Payload {
    Text(String),
    Binary(Bytes),
}

/// One event for an integration.
pub struct Event<'a> {
    pub kind: EventType,
    pub route_key: &'a str,
    pub request_id: &'a str,
    pub payload: Option<&'a Payload>,
    /// `CONNECT`: the handshake's headers and query.
    pub handshake: Option<(&'a HeaderMap, Option<&'a str>)>,
    /// `DISCONNECT`: the close code and reason.
    pub closed: Option<(u16, &'a str)>,
}

/// The `POST` an integration receives for `event`.
pub fn request(
    route: &MessageRoute,
    context: &ConnectionContext,
    event: &Event<'_>,
) -> Result<Request<RequestBody>, String> {
    let uri = route.integration.upstream.render("/", &[], None).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&envelope(context, event)).map_err(|e| e.to_string())?;
    let mut request = Request::new(RequestBody::buffered(Bytes::from(body)));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-meridian-connection-id", &context.id.to_string());
    set("x-meridian-route-key", event.route_key);
    set("x-meridian-event-type", event.kind.as_str());
    set("x-meridian-api", &context.api);
    set("x-meridian-stage", &context.stage);
    set("x-request-id", event.request_id);
    set("x-meridian-source-ip", &context.source.to_string());
    if let Some(principal) = context.identity.get("principal").and_then(Value::as_str) {
        set("x-meridian-principal", principal);
    }
    if let Some(authorizer) = &context.authorizer {
        let text = Value::Object((**authorizer).clone()).to_string();
        if text.len() <= MAX_CONTEXT_HEADER {
            set("x-meridian-authorizer", &text);
        }
    }
    Ok(request)
}

fn envelope(context: &ConnectionContext, event: &Event<'_>) -> Value {
    let mut request_context = json!({
        "routeKey": event.route_key,
        "eventType": event.kind.as_str(),
        "connectionId": context.id.to_string(),
        "api": &*context.api,
        "stage": &*context.stage,
        "requestId": event.request_id,
        "connectedAt": context.connected_at_ms,
        "identity": &*context.identity,
        "authorizer": context.authorizer.as_deref().map(|m| Value::Object(m.clone())),
    });
    if let Some((code, reason)) = event.closed {
        request_context["disconnectStatusCode"] = Value::from(code);
        request_context["disconnectReason"] = Value::from(reason);
    }
    let mut envelope = json!({ "requestContext": request_context });
    match event.payload {
        Some(Payload::Text(text)) => {
            envelope["body"] = Value::from(text.as_str());
            envelope["isBase64Encoded"] = Value::from(false);
        }
        Some(Payload::Binary(bytes)) => {
            envelope["body"] = Value::from(STANDARD.encode(bytes));
            envelope["isBase64Encoded"] = Value::from(true);
        }
        None => {}
    }
    if let Some((headers, query)) = event.handshake {
        let mut named = Map::new();
        for (name, value) in headers {
            if let Ok(value) = value.to_str() {
                match named.get_mut(name.as_str()) {
                    Some(Value::String(joined)) => {
                        joined.push_str(", ");
                        joined.push_str(value);
                    }
                    _ => {
                        named.insert(name.as_str().to_string(), Value::from(value));
                    }
                }
            }
        }
        envelope["headers"] = Value::Object(named);
        let query: Map<String, Value> = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (crate::query::percent_decode(name), Value::from(crate::query::percent_decode(value)))
            })
            .collect();
        envelope["queryStringParameters"] = Value::Object(query);
    }
    envelope
}

/// How much of an answer nobody wants is read (so that its connection is reused);
/// a longer one is dropped with its connection.
const DISCARDED: usize = 64 * 1024;

/// An integration's answer: its status, headers and body when `wanted` (read up to
/// `limit` bytes; a longer body is an error). An answer not wanted is read and dropped.
pub async fn answer(
    response: Response<UpstreamBody>,
    wanted: bool,
    limit: usize,
) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let (parts, body) = response.into_parts();
    let body = if wanted {
        http_body_util::Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| format!("the integration's answer could not be read: {e}"))?
            .to_bytes()
    } else {
        let _ = http_body_util::Limited::new(body, DISCARDED).collect().await;
        Bytes::new()
    };
    Ok((parts.status, parts.headers, body))
}

/// A new request id for an event, 32 hex digits like the request path's.
pub fn request_id() -> String {
    use rand::RngExt;
    let bits: u128 = rand::rng().random();
    format!("{bits:032x}")
}

/// A message the gateway sends of its own (a refused or failed message), as JSON.
pub fn gateway_message(status: u16, message: &str, context: &ConnectionContext, request_id: &str) -> String {
    json!({
        "message": message,
        "status": status,
        "connectionId": context.id.to_string(),
        "requestId": request_id,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> ConnectionContext {
        let authorizer: Map<String, Value> = serde_json::from_str(r#"{"sub":"alice","scope":"chat"}"#).unwrap();
        let source: IpAddr = "127.0.0.1".parse().unwrap();
        ConnectionContext {
            id: ConnectionId { node: 1, nonce: 2 },
            api: "chat".into(),
            stage: "prod".into(),
            connected_at_ms: 1_764_470_000_000,
            source,
            identity: Arc::new(ConnectionContext::identity_of(source, Some(&authorizer))),
            authorizer: Some(Arc::new(authorizer)),
        }
    }

    #[test]
    fn a_message_s_envelope_carries_its_connection_and_body() {
        let payload = Payload::Text(r#"{"action":"sendmessage"}"#.into());
        let event = Event {
            kind: EventType::Message,
            route_key: "sendmessage",
            request_id: "r1",
            payload: Some(&payload),
            handshake: None,
            closed: None,
        };
        let v = envelope(&context(), &event);
        assert_eq!(v["requestContext"]["eventType"], "MESSAGE");
        assert_eq!(v["requestContext"]["routeKey"], "sendmessage");
        assert_eq!(v["requestContext"]["connectionId"], context().id.to_string());
        assert_eq!(v["requestContext"]["identity"]["principal"], "alice");
        assert_eq!(v["requestContext"]["authorizer"]["scope"], "chat");
        assert_eq!(v["body"], r#"{"action":"sendmessage"}"#);
        assert_eq!(v["isBase64Encoded"], false);
        assert!(v.get("headers").is_none());
    }

    #[test]
    fn binary_bodies_are_base64_and_connect_carries_the_handshake() {
        let payload = Payload::Binary(Bytes::from_static(&[0, 159, 146, 150]));
        let mut headers = HeaderMap::new();
        headers.append("x-room", HeaderValue::from_static("a"));
        headers.append("x-room", HeaderValue::from_static("b"));
        let event = Event {
            kind: EventType::Connect,
            route_key: "$connect",
            request_id: "r2",
            payload: Some(&payload),
            handshake: Some((&headers, Some("name=al%20ice&flag"))),
            closed: None,
        };
        let v = envelope(&context(), &event);
        assert_eq!(v["body"], "AJ+Slg==");
        assert_eq!(v["isBase64Encoded"], true);
        assert_eq!(v["headers"]["x-room"], "a, b");
        assert_eq!(v["queryStringParameters"]["name"], "al ice");
        assert_eq!(v["queryStringParameters"]["flag"], "");
        let closed = Event {
            kind: EventType::Disconnect,
            payload: None,
            handshake: None,
            closed: Some((1001, "idle")),
            ..event
        };
        let v = envelope(&context(), &closed);
        assert_eq!(v["requestContext"]["disconnectStatusCode"], 1001);
        assert_eq!(v["requestContext"]["disconnectReason"], "idle");
        assert!(v.get("body").is_none());
    }
}
