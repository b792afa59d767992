//! The backend of the demo's chat API (`type: websocket`): it keeps the ids of the
//! connections `$connect` and `$disconnect` tell it of, and broadcasts each `sendmessage`
//! to all of them through the callback API, from wherever the clients are connected.
//!
//! Like any WebSocket API backend it holds no socket: every event is a `POST` with the
//! gateway's envelope, and a broadcast is one callback call per connection (here through one
//! node's admin API with the demo's token; the node forwards each call to the node that
//! holds the connection).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::admin::client;

/// Where the backend reaches the callback API.
#[derive(Clone)]
pub struct CallbackApi {
    pub admin: SocketAddr,
    pub token: String,
}

/// The connections in the chat.
#[derive(Default)]
struct Room {
    connections: Mutex<BTreeSet<String>>,
}

impl Room {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Binds `addr` and serves the chat backend in the background; returns the bound address.
/// Calls for the callback API are made once `callback` is given a value.
pub async fn spawn(addr: SocketAddr, callback: Arc<std::sync::OnceLock<CallbackApi>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let room = Arc::new(Room::default());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (room, callback) = (room.clone(), callback.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let (room, callback) = (room.clone(), callback.clone());
                    async move { Ok::<_, Infallible>(event(request, &room, callback.get()).await) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(local)
}

fn answer(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

async fn event(request: Request<Incoming>, room: &Room, callback: Option<&CallbackApi>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "events are POSTs");
    }
    let path = request.uri().path().to_string();
    let Ok(body) = Limited::new(request.into_body(), 256 * 1024).collect().await else {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "too big");
    };
    let envelope: Value = serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
    let Some(id) = envelope["requestContext"]["connectionId"].as_str().map(str::to_string) else {
        return answer(StatusCode::BAD_REQUEST, "not a gateway event");
    };
    match path.as_str() {
        "/connect" => {
            room.lock().insert(id);
            answer(StatusCode::OK, "")
        }
        "/disconnect" => {
            room.lock().remove(&id);
            answer(StatusCode::OK, "")
        }
        "/sendmessage" => {
            let sent: Value = serde_json::from_str(envelope["body"].as_str().unwrap_or("")).unwrap_or_default();
            let text = sent["text"].as_str().unwrap_or("").to_string();
            let message = json!({ "from": &id[id.len().saturating_sub(6)..], "text": text }).to_string();
            let everyone: Vec<String> = room.lock().iter().cloned().collect();
            let Some(callback) = callback else {
                return answer(StatusCode::SERVICE_UNAVAILABLE, "the chat is not ready");
            };
            let mut gone = Vec::new();
            for to in everyone {
                let path = format!("/v1/apis/chat/stages/live/connections/{to}");
                let sent = client::call(
                    callback.admin,
                    Method::POST,
                    &path,
                    Some(&callback.token),
                    Bytes::from(message.clone()),
                    &[],
                )
                .await;
                if matches!(sent, Ok((410, _))) {
                    gone.push(to);
                }
            }
            let mut connections = room.lock();
            for to in gone {
                connections.remove(&to);
            }
            answer(StatusCode::OK, "")
        }
        _ => answer(StatusCode::OK, r#"send {"action":"sendmessage","text":"..."} to everyone"#),
    }
}
