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
use serde::Serialize;
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

/// What every event of one connection tells its integration, prepared once when it opens.
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
    /// `X-Meridian-Connection-Id` and `X-Meridian-Authorizer`, made once (the context's JSON
    /// is the costly one); the other headers are made per event, so an idle connection
    /// holds no header map.
    id_header: HeaderValue,
    authorizer_header: Option<HeaderValue>,
}

impl ConnectionContext {
    pub fn new(
        id: ConnectionId,
        (api, stage): (Arc<str>, Arc<str>),
        connected_at_ms: u64,
        source: IpAddr,
        authorizer: Option<Arc<Map<String, Value>>>,
    ) -> Self {
        let mut identity = json!({ "sourceIp": source.to_string() });
        let principal = authorizer.as_deref().and_then(|c| c.get("principalId").or_else(|| c.get("sub")));
        if let Some(principal) = principal.and_then(Value::as_str) {
            identity["principal"] = Value::from(principal);
        }
        let id_header = HeaderValue::try_from(id.to_string()).unwrap_or(HeaderValue::from_static(""));
        let authorizer_header = authorizer
            .as_deref()
            .map(|context| Value::Object(context.clone()).to_string())
            .filter(|text| text.len() <= MAX_CONTEXT_HEADER)
            .and_then(|text| HeaderValue::try_from(text).ok());
        let identity = Arc::new(identity);
        ConnectionContext {
            id,
            api,
            stage,
            connected_at_ms,
            source,
            identity,
            authorizer,
            id_header,
            authorizer_header,
        }
    }
}

/// A message's content, as the client's frames carried it (shared, not copied).
#[derive(Debug, Clone)]
pub enum Payload {
    Text(tokio_tungstenite::tungstenite::Utf8Bytes),
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
    let body = serde_json::to_vec(&Envelope::of(context, event)).map_err(|e| e.to_string())?;
    let mut request = Request::new(RequestBody::buffered(Bytes::from(body)));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(HeaderName::from_static("x-meridian-connection-id"), context.id_header.clone());
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("x-meridian-route-key", event.route_key);
    set("x-meridian-event-type", event.kind.as_str());
    set("x-meridian-api", &context.api);
    set("x-meridian-stage", &context.stage);
    set("x-request-id", event.request_id);
    set("x-meridian-source-ip", &context.source.to_string());
    if let Some(principal) = context.identity.get("principal").and_then(Value::as_str) {
        set("x-meridian-principal", principal);
    }
    if let Some(authorizer) = &context.authorizer_header {
        headers.insert(HeaderName::from_static("x-meridian-authorizer"), authorizer.clone());
    }
    Ok(request)
}

/// The JSON body of an event (module documentation), borrowed from the connection and the
/// event: nothing is copied into a JSON tree first.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    request_context: RequestContext<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_base64_encoded: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_string_parameters: Option<Map<String, Value>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    route_key: &'a str,
    event_type: &'static str,
    connection_id: Display<ConnectionId>,
    api: &'a str,
    stage: &'a str,
    request_id: &'a str,
    connected_at: u64,
    identity: &'a Value,
    authorizer: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disconnect_status_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disconnect_reason: Option<&'a str>,
}

/// A value serialized as the string its `Display` writes, without an allocation.
struct Display<T>(T);

impl<T: std::fmt::Display> Serialize for Display<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'a> Envelope<'a> {
    fn of(context: &'a ConnectionContext, event: &Event<'a>) -> Self {
        let (body, is_base64_encoded) = match event.payload {
            Some(Payload::Text(text)) => (Some(text.as_str().into()), Some(false)),
            Some(Payload::Binary(bytes)) => (Some(STANDARD.encode(bytes).into()), Some(true)),
            None => (None, None),
        };
        let (headers, query_string_parameters) = match event.handshake {
            Some((headers, query)) => (Some(handshake_headers(headers)), Some(query_parameters(query))),
            None => (None, None),
        };
        Envelope {
            request_context: RequestContext {
                route_key: event.route_key,
                event_type: event.kind.as_str(),
                connection_id: Display(context.id),
                api: &context.api,
                stage: &context.stage,
                request_id: event.request_id,
                connected_at: context.connected_at_ms,
                identity: &context.identity,
                authorizer: context.authorizer.as_deref(),
                disconnect_status_code: event.closed.map(|(code, _)| code),
                disconnect_reason: event.closed.map(|(_, reason)| reason),
            },
            body,
            is_base64_encoded,
            headers,
            query_string_parameters,
        }
    }
}

/// A handshake's headers by name, repeated ones joined with `, `.
fn handshake_headers(headers: &HeaderMap) -> Map<String, Value> {
    let mut named = Map::new();
    for (name, value) in headers {
        let Ok(value) = value.to_str() else { continue };
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
    named
}

/// A handshake's query parameters, percent-decoded (the last of a repeated name wins).
fn query_parameters(query: Option<&str>) -> Map<String, Value> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (crate::query::percent_decode(name), Value::from(crate::query::percent_decode(value)))
        })
        .collect()
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
        let id = ConnectionId { node: 1, nonce: 2 };
        ConnectionContext::new(
            id,
            ("chat".into(), "prod".into()),
            1_764_470_000_000,
            source,
            Some(Arc::new(authorizer)),
        )
    }

    fn envelope(context: &ConnectionContext, event: &Event<'_>) -> Value {
        serde_json::to_value(Envelope::of(context, event)).unwrap()
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
