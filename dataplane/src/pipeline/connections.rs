//! A WebSocket API's two HTTP routes, once the stage's chain has let the request through:
//! the opening handshake becomes a connection the node holds (after `$connect` agreed),
//! and the callback API reaches a connection on whichever node holds it.

use std::sync::Arc;
use std::time::Duration;

use crate::incoming::Incoming;
use bytes::Bytes;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::websocket::ClientUpgrade;
use super::{BodyLimit, Rejection};
use crate::authorizers::AuthorizerContext;
use crate::connections::session::Handshake;
use crate::connections::{Connections, Target, callback};
use crate::integration::websocket::WebSocketStage;
use crate::observe::completion::RouteObserver;
use crate::observe::trace::RequestTrace;

/// How much longer than the API's idle timeout the socket itself waits without a byte:
/// the session closes an idle connection with a close frame first.
const SOCKET_IDLE_MARGIN: Duration = Duration::from_secs(30);

/// The connection's id, on the `101` (for clients that want to name themselves to their
/// backend, and for tests).
pub const CONNECTION_ID: &str = "x-meridian-connection-id";

/// Accepts a handshake as a connection of `stage`: `$connect` first, then the `101`; the
/// session starts once the listener hands over the socket.
pub async fn open(
    connections: &Arc<Connections>,
    stage: &Arc<WebSocketStage>,
    parts: &Parts,
    client: Option<ClientUpgrade>,
    source: std::net::IpAddr,
    (authorizer, trace): (Option<&AuthorizerContext>, Option<&RequestTrace>),
    (request_id, observer): (&HeaderValue, &Arc<RouteObserver>),
) -> Result<Response<Bytes>, Rejection> {
    let (Some(client), Some(key)) = (client, parts.headers.get(SEC_WEBSOCKET_KEY)) else {
        return Err(Rejection::new(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket API: connect with a WebSocket client",
        )
        .with_header(UPGRADE, HeaderValue::from_static("websocket")));
    };
    let handshake = Handshake {
        stage: stage.clone(),
        headers: &parts.headers,
        query: parts.uri.query(),
        source,
        authorizer: authorizer.map(|a| a.values.clone()),
        request_id: request_id.to_str().unwrap_or_default(),
        trace,
        observer: observer.clone(),
    };
    let accepted = connections.connect(handshake).await.map_err(|refusal| {
        Rejection::new(refusal.status, refusal.message).with_reason("websocket connection refused")
    })?;
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = &accepted.protocol {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, protocol.clone());
    }
    if let Ok(id) = HeaderValue::from_str(&accepted.id().to_string()) {
        headers.insert(http::HeaderName::from_static(CONNECTION_ID), id);
    }
    let idle = stage.limits.idle_timeout + SOCKET_IDLE_MARGIN;
    let connections = connections.clone();
    tokio::spawn(async move {
        match client.socket().await {
            Ok(mut socket) => {
                socket.set_idle_timeout(idle);
                connections.serve(socket, accepted).await;
            }
            Err(e) => tracing::debug!(error = e, "the WebSocket handshake did not complete"),
        }
    });
    Ok(response)
}

/// Serves a callback API request for the connection `id` of `api`'s `stage`.
pub async fn call(
    connections: &Connections,
    (api, stage, max_message_bytes): (&str, &str, usize),
    id: &str,
    parts: &Parts,
    body: Incoming,
    limit: &BodyLimit,
) -> Result<Response<Bytes>, Rejection> {
    let body = match parts.method {
        Method::POST => Some(limit.buffer(body, max_message_bytes as u64).await?),
        _ => None,
    };
    // What is asked is checked before whom it is for: a bad request is 400 whatever the id.
    let call = callback::call(&parts.method, body)?;
    let id = callback::connection_id(id)?;
    let target = Target { api: api.to_string(), stage: stage.to_string(), id };
    callback::respond(connections.call(target, call).await)
}
