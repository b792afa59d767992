//! One WebSocket connection's life, from `$connect` to `$disconnect`.
//!
//! [`Connections::connect`] runs the `$connect` integration before the `101` is sent (a
//! non-2xx answer refuses the upgrade with that status). Then [`Connections::serve`] runs
//! the session: each message the client sends is routed by the stage's selection and
//! posted to its route's integration (at most [`IN_FLIGHT`] at once per connection; the
//! socket is not read while that many are waiting, so a fast client is slowed, not
//! buffered); a two-way route's answer and every pushed message are written back. The
//! session ends when the client closes, a limit is reached (message size 1009, idle time
//! and duration 1001), a backend closes it through the callback API (1000) or the node
//! drains (1001). `$disconnect` is then delivered once, best-effort, whatever the reason.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};

use super::envelope::{self, ConnectionContext, Event, EventType, Payload};
use super::observed::{self, EventLine};
use super::{Connections, Held, OUTBOX, Outbound, Refused, unix_millis};
use crate::integration::websocket::{CONNECT, ConnectionLimits, DISCONNECT, MessageRoute, WebSocketStage};
use crate::observe::completion::RouteObserver;
use crate::observe::trace::{Attributes, RequestTrace, SpanId, SpanKind};

/// Messages of one connection waiting for their integration at once.
pub const IN_FLIGHT: usize = 8;

/// The read buffer of a connection's socket: small, since most connections idle.
const READ_BUFFER: usize = 1024;

/// How long a write to a client may wait before the client is taken for gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A handshake the stage's chain let through.
pub struct Handshake<'a> {
    pub stage: Arc<WebSocketStage>,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub source: IpAddr,
    pub authorizer: Option<Arc<Map<String, Value>>>,
    pub request_id: &'a str,
    /// The handshake request's trace: `$connect`'s integration call is a span of it.
    pub trace: Option<&'a RequestTrace>,
    /// What observes the handshake's route: the connection's events are logged and traced
    /// as its stage says (its access-log format, its sampling, its deployment).
    pub observer: Arc<RouteObserver>,
}

/// Why a handshake is refused: the status and what the client is told.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

/// A connection `$connect` accepted, waiting for its socket.
pub struct Accepted {
    context: ConnectionContext,
    stage: Arc<WebSocketStage>,
    observer: Arc<RouteObserver>,
    /// `$request.header.*` selection: the route key the handshake chose.
    header_key: Option<String>,
    /// The subprotocol the `$connect` integration chose (`Sec-WebSocket-Protocol`).
    pub protocol: Option<HeaderValue>,
    /// The connection's place among the node's, until it ends.
    place: super::Place,
}

impl Accepted {
    pub fn id(&self) -> super::ConnectionId {
        self.context.id
    }
}

impl Connections {
    /// Admits a connection and asks `$connect`'s integration (when the stage has one)
    /// whether to accept it.
    pub async fn connect(&self, handshake: Handshake<'_>) -> Result<Accepted, Refusal> {
        let (id, place) = self.admit().map_err(|refused| Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: match refused {
                Refused::Full => "this node holds as many WebSocket connections as it may; try again".into(),
                Refused::Draining => "this node is stopping; connect again".into(),
            },
        })?;
        let stage = handshake.stage;
        let context = ConnectionContext::new(
            id,
            (stage.api.clone(), stage.stage.clone()),
            unix_millis(SystemTime::now()),
            handshake.source,
            handshake.authorizer,
        );
        let header_key = match &stage.selection {
            crate::integration::websocket::RouteSelection::Header(name) => {
                handshake.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
            }
            _ => None,
        };
        let mut protocol = None;
        if let Some(route) = &stage.connect {
            let event = Event {
                kind: EventType::Connect,
                route_key: CONNECT,
                request_id: handshake.request_id,
                payload: None,
                handshake: Some((handshake.headers, handshake.query)),
                closed: None,
            };
            let (status, headers, _) = self.deliver((route, &stage.limits), &context, &event, (false, handshake.trace)).await.map_err(|e| {
                tracing::warn!(api = %context.api, stage = %context.stage, error = %e, "$connect integration failed");
                Refusal {
                    status: StatusCode::BAD_GATEWAY,
                    message: "the $connect integration could not be reached".into(),
                }
            })?;
            if !status.is_success() {
                return Err(Refusal { status, message: format!("$connect refused the connection ({status})") });
            }
            protocol = headers.get(http::header::SEC_WEBSOCKET_PROTOCOL).cloned();
        }
        Ok(Accepted { context, stage, observer: handshake.observer, header_key, protocol, place })
    }

    /// Serves an accepted connection on its upgraded socket until it closes.
    pub async fn serve<S>(self: Arc<Self>, socket: S, accepted: Accepted)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Accepted { context, stage, observer, header_key, place, .. } = accepted;
        let limits = stage.limits;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_write_buffer_size(limits.max_message_bytes * 4)
            .max_message_size(Some(limits.max_message_bytes))
            .max_frame_size(Some(limits.max_frame_bytes));
        let ws = WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await;
        let (outbox, inbox) = mpsc::channel(OUTBOX);
        let held = Arc::new(Held {
            api: context.api.clone(),
            stage: context.stage.clone(),
            connected_at_ms: context.connected_at_ms,
            last_active: AtomicU64::new(unix_millis(SystemTime::now())),
            source: context.source,
            identity: context.identity.clone(),
            outbox,
        });
        self.register(context.id, held.clone());
        let labels = [("api", context.api.to_string()), ("stage", context.stage.to_string())];
        let open = metrics::gauge!("meridian_websocket_connections", &labels);
        open.increment(1.0);
        let session = Session {
            connections: self.clone(),
            context,
            stage,
            observer,
            header_key,
            held,
            messages_in: metrics::counter!(
                "meridian_websocket_messages_total",
                &[&labels[..], &[("direction", "in".to_string())]].concat()
            ),
            messages_out: metrics::counter!(
                "meridian_websocket_messages_total",
                &[&labels[..], &[("direction", "out".to_string())]].concat()
            ),
        };
        let (code, reason) = session.run(ws, inbox).await;
        open.decrement(1.0);
        self.unregister(&session.context.id);
        session.disconnected(code, reason);
        drop(place);
    }

    /// Posts `event` to `route`'s integration and reads its answer's body when `reply`
    /// (up to the stage's message size).
    async fn deliver(
        &self,
        (route, limits): (&MessageRoute, &ConnectionLimits),
        context: &ConnectionContext,
        event: &Event<'_>,
        (reply, trace): (bool, Option<&RequestTrace>),
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let mut request = envelope::request(route, context, event)?;
        // A traced event's integration call is its child span, and carries the trace on.
        let call = trace.and_then(|trace| {
            let start = trace.start_span();
            trace.propagate(request.headers_mut(), start.map_or_else(SpanId::random, |s| s.id));
            start.map(|start| (trace, start, request.uri().to_string()))
        });
        let answered = match route.integration.forward(&mut request, &self.upstreams).await {
            Ok(response) => envelope::answer(response, reply, limits.max_message_bytes).await,
            Err(e) => Err(e.to_string()),
        };
        if let Some((trace, start, url)) = call {
            let mut attributes: Attributes = vec![("http.request.method", "POST".into()), ("url.full", url.into())];
            let error = match &answered {
                Ok((status, _, _)) => {
                    attributes.push(("http.response.status_code", i64::from(status.as_u16()).into()));
                    status.is_server_error().then(|| status.as_str().to_string())
                }
                Err(e) => Some(e.clone()),
            };
            trace.end_span(start, "POST", SpanKind::Client, attributes, error);
        }
        answered
    }
}

/// A running connection.
struct Session {
    connections: Arc<Connections>,
    context: ConnectionContext,
    stage: Arc<WebSocketStage>,
    observer: Arc<RouteObserver>,
    header_key: Option<String>,
    held: Arc<Held>,
    messages_in: metrics::Counter,
    messages_out: metrics::Counter,
}

/// A close frame's reason holds at most 123 bytes (RFC 6455 §5.5): longer text is cut at a
/// character boundary.
fn close_reason(text: &str) -> String {
    let mut end = text.len().min(120);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Tokens for the messages a client may send: `rate` a second, at most `rate` saved up.
struct MessageRate {
    rate: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl MessageRate {
    fn new(rate: u32) -> Self {
        MessageRate { rate: f64::from(rate), tokens: f64::from(rate), at: tokio::time::Instant::now() }
    }

    fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type Socket<S> = WebSocketStream<S>;

impl Session {
    /// Runs the connection; answers the close code and reason it ended with.
    async fn run<S>(&self, mut ws: Socket<S>, mut inbox: mpsc::Receiver<Outbound>) -> (u16, String)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.stage.limits;
        let ends = tokio::time::sleep(limits.max_duration);
        tokio::pin!(ends);
        // The idle timer is moved only when it fires (a message does not touch it): it then
        // closes the connection, or waits again from the last message.
        let mut last_active = tokio::time::Instant::now();
        let idle = tokio::time::sleep(limits.idle_timeout);
        tokio::pin!(idle);
        let mut draining = self.connections.draining.subscribe();
        let drained = async move {
            let _ = draining.wait_for(|d| *d).await;
        };
        tokio::pin!(drained);
        let mut rate = MessageRate::new(limits.messages_per_second);
        let mut calls: JoinSet<Option<Message>> = JoinSet::new();
        let going_away = |reason: &str| (CloseCode::Away, reason.to_string());
        let (code, reason) = loop {
            tokio::select! {
                incoming = ws.next(), if calls.len() < IN_FLIGHT => {
                    let message = match incoming {
                        None => break (CloseCode::Abnormal, "the client went away".to_string()),
                        Some(Ok(message)) => message,
                        Some(Err(WsError::Capacity(e))) => {
                            let reason = match e {
                                CapacityError::MessageTooLong { .. } => "message too big",
                                _ => "frame too big",
                            };
                            break (CloseCode::Size, reason.to_string());
                        }
                        Some(Err(WsError::Protocol(e))) => break (CloseCode::Protocol, close_reason(&e.to_string())),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "WebSocket connection failed");
                            break (CloseCode::Abnormal, "the connection failed".to_string());
                        }
                    };
                    last_active = tokio::time::Instant::now();
                    self.touch();
                    let payload = match message {
                        Message::Text(text) => Payload::Text(text),
                        Message::Binary(bytes) => Payload::Binary(bytes),
                        Message::Close(frame) => {
                            let (code, reason) =
                                frame.map_or((CloseCode::Status, String::new()), |f| (f.code, close_reason(&f.reason)));
                            // tungstenite answers the client's close frame itself.
                            let _ = ws.flush().await;
                            return (code.into(), reason);
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    };
                    self.messages_in.increment(1);
                    if !rate.take() {
                        let (started, request_id) = (Instant::now(), envelope::request_id());
                        let refused = envelope::gateway_message(429, "Too many messages", &self.context, &request_id);
                        let line = EventLine {
                            event: &observed::MESSAGE,
                            route: "",
                            request_id: &request_id,
                            status: 429,
                            bytes: refused.len() as u64,
                            started,
                            integration: None,
                            reason: Some("over the connection's messages_per_second"),
                        };
                        self.connections.observe_event(&self.observer, &self.context, line, None);
                        if self.write(&mut ws, Message::text(refused)).await.is_err() {
                            break (CloseCode::Abnormal, "the client stopped reading".to_string());
                        }
                        continue;
                    }
                    calls.spawn(self.message(payload));
                }
                Some(done) = calls.join_next(), if !calls.is_empty() => {
                    if let Ok(Some(reply)) = done && self.write(&mut ws, reply).await.is_err() {
                        break (CloseCode::Abnormal, "the client stopped reading".to_string());
                    }
                }
                outbound = inbox.recv() => match outbound {
                    Some(Outbound::Message(bytes)) => {
                        last_active = tokio::time::Instant::now();
                        self.touch();
                        let message = match String::from_utf8(bytes.to_vec()) {
                            Ok(text) => Message::text(text),
                            Err(_) => Message::binary(bytes),
                        };
                        if self.write(&mut ws, message).await.is_err() {
                            break (CloseCode::Abnormal, "the client stopped reading".to_string());
                        }
                    }
                    Some(Outbound::Close) | None => break (CloseCode::Normal, "closed by the backend".to_string()),
                },
                _ = &mut idle => {
                    let quiet_until = last_active + limits.idle_timeout;
                    if tokio::time::Instant::now() >= quiet_until {
                        break going_away("idle timeout");
                    }
                    idle.as_mut().reset(quiet_until);
                }
                _ = &mut ends => break going_away("maximum connection duration"),
                _ = &mut drained => break going_away("the gateway is going away"),
            }
        };
        if code != CloseCode::Abnormal {
            let frame = CloseFrame { code, reason: reason.clone().into() };
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
        }
        (code.into(), reason)
    }

    /// Writes one message, counted, within [`WRITE_TIMEOUT`].
    async fn write<S>(&self, ws: &mut Socket<S>, message: Message) -> Result<(), ()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match tokio::time::timeout(WRITE_TIMEOUT, ws.send(message)).await {
            Ok(Ok(())) => {
                self.messages_out.increment(1);
                Ok(())
            }
            _ => Err(()),
        }
    }

    fn touch(&self) {
        self.held.last_active.store(unix_millis(SystemTime::now()), Ordering::Relaxed);
    }

    /// A message's trip to its route's integration; answers what the client is sent
    /// back (a two-way route's answer, or the gateway's word that it failed).
    fn message(&self, payload: Payload) -> impl Future<Output = Option<Message>> + Send + 'static {
        let (connections, context, stage) = (self.connections.clone(), self.context.clone(), self.stage.clone());
        let observer = self.observer.clone();
        let text_key = match &payload {
            Payload::Text(text) => Some(text.as_str()),
            Payload::Binary(_) => None,
        };
        let key = stage.selection.route_key(text_key, self.header_key.as_deref());
        async move {
            let started = Instant::now();
            let request_id = envelope::request_id();
            let failed = |status: u16, message: &str| {
                Some(Message::text(envelope::gateway_message(status, message, &context, &request_id)))
            };
            let Some(route) = stage.route(key.as_deref()) else {
                let answer = failed(404, "No route for this message and no $default route");
                let line = EventLine {
                    event: &observed::MESSAGE,
                    route: key.as_deref().unwrap_or(""),
                    request_id: &request_id,
                    status: 404,
                    bytes: answer.as_ref().map_or(0, |m| m.len() as u64),
                    started,
                    integration: None,
                    reason: Some("no route for the message's key and no $default route"),
                };
                connections.observe_event(&observer, &context, line, None);
                return answer;
            };
            let event = Event {
                kind: EventType::Message,
                route_key: &route.key,
                request_id: &request_id,
                payload: Some(&payload),
                handshake: None,
                closed: None,
            };
            let trace = connections.trace_event(&observer, started);
            let called = Instant::now();
            let delivered =
                connections.deliver((route, &stage.limits), &context, &event, (route.reply, trace.as_ref())).await;
            let integration = Some(called.elapsed());
            let (status, answer, reason) = match delivered {
                Ok((status, _, body)) if status.is_success() => {
                    let answer = match (route.reply, body.is_empty()) {
                        (true, false) => Some(match String::from_utf8(body.to_vec()) {
                            Ok(text) => Message::text(text),
                            Err(_) => Message::binary(body),
                        }),
                        _ => None,
                    };
                    (status.as_u16(), answer, None)
                }
                Ok((status, _, _)) => {
                    tracing::debug!(route = %route.key, %status, "a WebSocket route's integration refused a message");
                    (502, failed(502, "The integration failed"), Some(format!("the integration answered {status}")))
                }
                Err(e) => {
                    tracing::warn!(route = %route.key, error = %e, "a WebSocket route's integration could not be reached");
                    (502, failed(502, "The integration failed"), Some(e))
                }
            };
            let line = EventLine {
                event: &observed::MESSAGE,
                route: &route.key,
                request_id: &request_id,
                status,
                bytes: answer.as_ref().map_or(0, |m| m.len() as u64),
                started,
                integration,
                reason: reason.as_deref(),
            };
            connections.observe_event(&observer, &context, line, trace.as_ref());
            answer
        }
    }

    /// Delivers `$disconnect` on its own task, counted so that a draining node waits.
    fn disconnected(&self, code: u16, reason: String) {
        if self.stage.disconnect.is_none() {
            return;
        }
        let (connections, context, stage) = (self.connections.clone(), self.context.clone(), self.stage.clone());
        let observer = self.observer.clone();
        let delivery = self.connections.disconnects.start();
        tokio::spawn(async move {
            let _delivery = delivery;
            let Some(route) = &stage.disconnect else {
                return;
            };
            let (started, request_id) = (Instant::now(), envelope::request_id());
            let event = Event {
                kind: EventType::Disconnect,
                route_key: DISCONNECT,
                request_id: &request_id,
                payload: None,
                handshake: None,
                closed: Some((code, &reason)),
            };
            let trace = connections.trace_event(&observer, started);
            let delivered =
                connections.deliver((route, &stage.limits), &context, &event, (false, trace.as_ref())).await;
            let (status, failure) = match delivered {
                Ok((status, _, _)) if status.is_success() => (status.as_u16(), None),
                Ok((status, _, _)) => (502, Some(format!("the integration answered {status}"))),
                Err(e) => {
                    tracing::debug!(connection = %context.id, error = %e, "$disconnect could not be delivered");
                    (502, Some(e))
                }
            };
            let line = EventLine {
                event: &observed::DISCONNECT,
                route: DISCONNECT,
                request_id: &request_id,
                status,
                bytes: 0,
                started,
                integration: Some(started.elapsed()),
                reason: failure.as_deref(),
            };
            connections.observe_event(&observer, &context, line, trace.as_ref());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        assert_eq!(close_reason("idle timeout"), "idle timeout");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123 && cut.chars().all(|c| c == 'é'), "{}", cut.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_may_send_its_rate_and_no_more() {
        let mut rate = MessageRate::new(2);
        assert!(rate.take() && rate.take() && !rate.take());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(rate.take() && !rate.take(), "half a second gives one more");
    }
}
