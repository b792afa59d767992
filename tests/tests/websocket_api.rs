//! End-to-end tests of `type: websocket` APIs: a real node holds real WebSocket clients'
//! connections (tokio-tungstenite), routes their messages to a real HTTP backend by the
//! selection expression, and backends reach connections through the callback API.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use meridian_tests::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const TOKEN: &str = "0123456789abcdef0123";

/// One request the backend received: its path, its `x-meridian-*` headers and envelope.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: http::HeaderMap,
    envelope: Value,
}

/// What the backend has received, in order.
#[derive(Clone, Default)]
struct Backend(Arc<Mutex<Vec<Received>>>);

impl Backend {
    /// Waits (up to 5 s) for a request to `path` that `matches`.
    async fn wait_for(&self, path: &str, matches: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self.0.lock().unwrap().iter().find(|r| r.path == path && matches(r)).cloned();
            if let Some(found) = found {
                return found;
            }
            assert!(Instant::now() < deadline, "nothing at {path}: {:?}", self.0.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn count(&self, path: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|r| r.path == path).count()
    }
}

/// The chat backend: `$connect` refuses handshakes with `x-deny`, `sendmessage` answers
/// with what it got, `$default` says it was the default, `/fail` fails.
async fn chat_backend() -> (SocketAddr, Backend) {
    let backend = Backend::default();
    let seen = backend.clone();
    let addr = http_service(move |request: hyper::Request<Bytes>| {
        let seen = seen.clone();
        async move {
            let envelope: Value = serde_json::from_slice(request.body()).unwrap_or(Value::Null);
            let path = request.uri().path().to_string();
            seen.0.lock().unwrap().push(Received {
                path: path.clone(),
                headers: request.headers().clone(),
                envelope: envelope.clone(),
            });
            let (status, body) = match path.as_str() {
                "/connect" if envelope["headers"]["x-deny"].is_string() => (403, String::new()),
                "/send" => {
                    let text: Value = serde_json::from_str(envelope["body"].as_str().unwrap_or("")).unwrap_or_default();
                    (200, format!("got {}", text["text"].as_str().unwrap_or("?")))
                }
                "/default" => (200, format!("default got {}", envelope["body"].as_str().unwrap_or(""))),
                "/fail" => (500, String::new()),
                // An answer's body on a route that does not reply is read and dropped.
                _ => (200, "noted".to_string()),
            };
            let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            response
        }
    })
    .await;
    (addr, backend)
}

fn chat_api(backend: SocketAddr, websocket: &str, connect: &str) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0", token_file: admin.token }}
access_log: {{ enabled: false }}
apis:
  - id: chat
    type: websocket
    route_selection: $request.body.action
    websocket: {{ {websocket} }}
    routes:
      - {{ route: $connect, {connect} integration: {{ type: http_proxy, uri: "http://{backend}/connect" }} }}
      - {{ route: $disconnect, integration: {{ type: http_proxy, uri: "http://{backend}/disconnect" }} }}
      - {{ route: sendmessage, reply: true, integration: {{ type: http_proxy, uri: "http://{backend}/send" }} }}
      - {{ route: broken, integration: {{ type: http_proxy, uri: "http://{backend}/fail" }} }}
      - {{ route: $default, reply: true, integration: {{ type: http_proxy, uri: "http://{backend}/default" }} }}
    stages: [{{ name: prod }}]
"#
    )
}

async fn start_chat(config: String) -> NodeProcess {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    start_node_in(dir, config).await
}

/// Connects to the stage with `headers`; answers the client and its connection id.
async fn connect(node: &NodeProcess, headers: &[(&str, &str)]) -> Result<(Client, String), WsError> {
    let mut request = format!("ws://{}/prod", node.http.unwrap()).into_client_request().unwrap();
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let (client, response) = tokio_tungstenite::connect_async(request).await?;
    assert_eq!(response.status(), 101);
    let id = response.headers()["x-meridian-connection-id"].to_str().unwrap().to_string();
    Ok((client, id))
}

/// The next data message (pings and pongs skipped), within 5 s.
async fn next_text(client: &mut Client) -> String {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .expect("a message within 5 s")
            .expect("the connection is open")
            .expect("a frame");
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Binary(bytes) => return String::from_utf8_lossy(&bytes).into_owned(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// The close frame the gateway ends the connection with, within `limit`.
async fn close_frame(client: &mut Client, limit: Duration) -> (CloseCode, String) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, client.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(Some(frame)))) => return (frame.code, frame.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (CloseCode::Status, String::new()),
            Some(Ok(_)) => {}
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

fn admin_call(node: &NodeProcess, method: &str, id: &str, body: &'static str) -> impl Future<Output = Reply> + use<> {
    let path = format!("/v1/apis/chat/stages/prod/connections/{id}");
    let auth = format!("Bearer {TOKEN}");
    let mut builder = hyper::Request::builder().method(method).uri(path).header("authorization", auth);
    builder = builder.header("host", "admin");
    send(node.admin, builder.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_to_the_route_their_action_selects_and_two_way_routes_reply() {
    let (backend, seen) = chat_backend().await;
    let node = start_chat(chat_api(backend, "", "")).await;
    let (mut client, id) = connect(&node, &[("x-room", "lobby")]).await.unwrap();
    let connect = seen.wait_for("/connect", |_| true).await;
    assert_eq!(connect.envelope["requestContext"]["eventType"], "CONNECT");
    assert_eq!(connect.envelope["requestContext"]["connectionId"], id.as_str());
    assert_eq!(connect.envelope["headers"]["x-room"], "lobby");

    client.send(Message::text(r#"{"action":"sendmessage","text":"hi"}"#)).await.unwrap();
    assert_eq!(next_text(&mut client).await, "got hi");
    let sent = seen.wait_for("/send", |_| true).await;
    assert_eq!(sent.envelope["requestContext"]["routeKey"], "sendmessage");
    assert_eq!(sent.envelope["requestContext"]["eventType"], "MESSAGE");
    assert_eq!(sent.envelope["requestContext"]["connectionId"], id.as_str());
    assert_eq!(sent.envelope["requestContext"]["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(sent.headers["x-meridian-route-key"], "sendmessage");
    assert_eq!(sent.headers["x-meridian-connection-id"], id.as_str());
    assert_eq!(sent.headers["x-meridian-stage"], "prod");

    // No route for the action, no action, not JSON: `$default`.
    for text in [r#"{"action":"nope"}"#, r#"{"text":"x"}"#, "plain words"] {
        client.send(Message::text(text)).await.unwrap();
        assert_eq!(next_text(&mut client).await, format!("default got {text}"));
    }
    // Binary messages go to `$default`, base64 in the envelope.
    client.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(next_text(&mut client).await, "default got AAEC");
    let binary = seen.wait_for("/default", |r| r.envelope["isBase64Encoded"] == true).await;
    assert_eq!(binary.envelope["body"], "AAEC");

    // A failing integration: the client is told, with the message's request id.
    client.send(Message::text(r#"{"action":"broken"}"#)).await.unwrap();
    let failed: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    assert_eq!(failed["status"], 502, "{failed}");
    assert_eq!(failed["connectionId"], id.as_str());
    assert_eq!(seen.count("/fail"), 1);

    // The client closes: `$disconnect` is delivered with its code.
    client.close(None).await.unwrap();
    let gone = seen.wait_for("/disconnect", |_| true).await;
    assert_eq!(gone.envelope["requestContext"]["eventType"], "DISCONNECT");
    assert_eq!(gone.envelope["requestContext"]["connectionId"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_with_the_integration_s_status_and_the_stage_s_checks_run() {
    let (backend, seen) = chat_backend().await;
    let node = start_chat(chat_api(backend, "", "")).await;
    match connect(&node, &[("x-deny", "yes")]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("the upgrade should be refused with 403: {:?}", other.map(|(_, id)| id)),
    }
    // A plain GET is told to use a WebSocket client.
    let plain = get(node.http.unwrap(), "gw", "/prod").await;
    assert_eq!(plain.status, 426, "{:?}", plain.body);
    // The route's throttle counts handshakes: beyond it they are refused with 429, before
    // `$connect` is asked.
    let throttled = "throttle: { rate: 1, burst: 1 },";
    let node = start_chat(chat_api(backend, "", throttled)).await;
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        let asked = seen.count("/connect");
        match connect(&node, &[]).await {
            Ok(_) => outcomes.push(200),
            Err(WsError::Http(response)) => {
                outcomes.push(response.status().as_u16());
                assert_eq!(seen.count("/connect"), asked, "a throttled handshake never reaches $connect");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(outcomes.contains(&429) && outcomes.iter().filter(|s| **s == 200).count() <= 2, "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_api_sends_describes_and_closes_a_connection() {
    let (backend, seen) = chat_backend().await;
    let node = start_chat(chat_api(backend, "", "")).await;
    let (mut client, id) = connect(&node, &[]).await.unwrap();

    let sent = admin_call(&node, "POST", &id, "pushed to you").await;
    assert_eq!(sent.status, 200, "{:?}", sent.body);
    assert_eq!(next_text(&mut client).await, "pushed to you");
    // Pushes arrive in order.
    for n in 0..20 {
        let body: &'static str = Box::leak(format!("push {n}").into_boxed_str());
        assert_eq!(admin_call(&node, "POST", &id, body).await.status, 200);
    }
    for n in 0..20 {
        assert_eq!(next_text(&mut client).await, format!("push {n}"));
    }

    let described = admin_call(&node, "GET", &id, "").await;
    assert_eq!(described.status, 200);
    let view = described.json();
    assert_eq!(view["sourceIp"], "127.0.0.1");
    assert!(view["connectedAt"].as_str().unwrap().ends_with('Z'), "{view}");
    assert!(view["lastActiveAt"].is_string());

    // Backends on the gateway's own callback URL must sign their requests.
    let unsigned =
        request(node.http.unwrap(), "POST", &format!("/prod/@connections/{id}"), &[("host", "gw")], "x").await;
    assert_eq!(unsigned.status, 401, "{:?}", unsigned.body);

    let closed = admin_call(&node, "DELETE", &id, "").await;
    assert_eq!(closed.status, 204);
    assert_eq!(close_frame(&mut client, Duration::from_secs(5)).await.0, CloseCode::Normal);
    let gone = seen.wait_for("/disconnect", |_| true).await;
    assert_eq!(gone.envelope["requestContext"]["disconnectStatusCode"], 1000);
    assert_eq!(admin_call(&node, "GET", &id, "").await.status, 410);
    assert_eq!(admin_call(&node, "POST", &id, "late").await.status, 410);
    assert_eq!(admin_call(&node, "GET", "not-an-id", "").await.status, 410);
    assert_eq!(admin_call(&node, "GET", "AAAAAAAAAAAAAAAAAAAAAA", "").await.status, 410);
    // Without the token, nothing.
    let path = format!("/v1/apis/chat/stages/prod/connections/{id}");
    assert_eq!(request(node.admin, "GET", &path, &[("host", "admin")], "").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_fast_clients_close_big_messages_and_idle_connections() {
    let (backend, seen) = chat_backend().await;
    let limits = "max_message_kib: 1, messages_per_second: 2, idle_timeout: 2s";
    let node = start_chat(chat_api(backend, limits, "")).await;

    // Messages beyond the rate are refused with a 429 message, not delivered.
    let (mut client, _) = connect(&node, &[]).await.unwrap();
    for n in 0..4 {
        client.send(Message::text(format!(r#"{{"action":"sendmessage","text":"m{n}"}}"#))).await.unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(next_text(&mut client).await);
    }
    let refused = answers.iter().filter(|a| a.contains("\"status\":429")).count();
    assert_eq!(refused, 2, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| a.starts_with("got m")).count(), 2, "{answers:?}");

    // A message over the size limit closes the connection with 1009.
    let (mut big, _) = connect(&node, &[]).await.unwrap();
    big.send(Message::text("x".repeat(2048))).await.unwrap();
    assert_eq!(close_frame(&mut big, Duration::from_secs(5)).await.0, CloseCode::Size);

    // An idle connection is closed with 1001 after its timeout, and `$disconnect` told.
    let (mut idle, id) = connect(&node, &[]).await.unwrap();
    let started = Instant::now();
    let (code, reason) = close_frame(&mut idle, Duration::from_secs(6)).await;
    assert_eq!((code, reason.as_str()), (CloseCode::Away, "idle timeout"));
    assert!(started.elapsed() >= Duration::from_millis(1500), "{:?}", started.elapsed());
    let told = seen.wait_for("/disconnect", |r| r.envelope["requestContext"]["connectionId"] == id.as_str()).await;
    assert_eq!(told.envelope["requestContext"]["disconnectReason"], "idle timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_connections_and_sigterm_closes_them_going_away() {
    let (backend, seen) = chat_backend().await;
    let config = chat_api(backend, "", "");
    let mut node = start_chat(config.clone()).await;
    let (mut client, id) = connect(&node, &[]).await.unwrap();

    // A new revision (one more route) does not drop the connection.
    let added = config.replace(
        "      - { route: $default",
        &format!("      - {{ route: later, integration: {{ type: http_proxy, uri: \"http://{backend}/later\" }} }}\n      - {{ route: $default"),
    );
    std::fs::write(node.config_path(), added).unwrap();
    let reloaded = send(
        node.admin,
        hyper::Request::post("/v1/reload")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reloaded.status, 200, "{:?}", reloaded.body);
    client.send(Message::text(r#"{"action":"sendmessage","text":"after"}"#)).await.unwrap();
    assert_eq!(next_text(&mut client).await, "got after");

    // SIGTERM: the client is told to go away, and `$disconnect` is delivered before exit.
    node.signal(libc::SIGTERM);
    let (code, _) = close_frame(&mut client, Duration::from_secs(5)).await;
    assert_eq!(code, CloseCode::Away);
    let told = seen.wait_for("/disconnect", |r| r.envelope["requestContext"]["connectionId"] == id.as_str()).await;
    assert_eq!(told.envelope["requestContext"]["disconnectStatusCode"], 1001);
    assert!(node.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_its_connection_cap_refuses_and_connections_end_at_their_maximum_duration() {
    let (backend, seen) = chat_backend().await;
    let config = chat_api(backend, "max_duration: 2s", "").replace(
        "access_log: { enabled: false }",
        "access_log: { enabled: false }\nlimits: { max_websocket_connections: 1 }",
    );
    let node = start_chat(config).await;
    let (mut first, id) = connect(&node, &[]).await.unwrap();
    match connect(&node, &[]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("the second connection should be refused: {:?}", other.map(|(_, id)| id)),
    }
    // However busy, a connection ends at its maximum duration, with 1001.
    let started = Instant::now();
    let ping = async {
        loop {
            if first.send(Message::text(r#"{"action":"sendmessage","text":"busy"}"#)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(2500), ping).await;
    let (code, reason) = close_frame(&mut first, Duration::from_secs(5)).await;
    assert_eq!((code, reason.as_str()), (CloseCode::Away, "maximum connection duration"));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    seen.wait_for("/disconnect", |r| r.envelope["requestContext"]["connectionId"] == id.as_str()).await;
    // Its place is free again.
    let (_again, _) = connect(&node, &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_runs_the_authorizer_and_every_event_carries_its_identity() {
    let (backend, seen) = chat_backend().await;
    // A custom authorizer: `allow-NAME` passes as principal NAME, anything else does not.
    let authorizer = http_service(|request: hyper::Request<Bytes>| async move {
        let document: Value = serde_json::from_slice(request.body()).unwrap_or(Value::Null);
        let token = document["identitySource"][0].as_str().unwrap_or("").to_string();
        let body = match token.strip_prefix("allow-") {
            Some(name) => serde_json::json!({"isAuthorized": true, "context": {"principalId": name, "room": "lobby"}}),
            None => serde_json::json!({"isAuthorized": false}),
        };
        hyper::Response::new(Full::new(Bytes::from(body.to_string())))
    })
    .await;
    let config = chat_api(backend, "", "authorizer: users,").replace(
        "    route_selection: $request.body.action\n",
        &format!(
            "    route_selection: $request.body.action\n    authorizers:\n      - {{ name: users, type: custom, uri: \"http://{authorizer}/authorize\", identity_sources: [$request.header.x-token] }}\n"
        ),
    );
    let node = start_chat(config).await;
    for token in [None, Some("nope")] {
        let headers: Vec<(&str, &str)> = token.map(|t| ("x-token", t)).into_iter().collect();
        match connect(&node, &headers).await {
            Err(WsError::Http(response)) => assert!([401, 403].contains(&response.status().as_u16()), "{response:?}"),
            other => panic!("{token:?} should be refused: {:?}", other.map(|(_, id)| id)),
        }
    }
    assert_eq!(seen.count("/connect"), 0, "refused handshakes never reach $connect");

    let (mut client, id) = connect(&node, &[("x-token", "allow-alice")]).await.unwrap();
    let connect = seen.wait_for("/connect", |_| true).await;
    assert_eq!(connect.envelope["requestContext"]["identity"]["principal"], "alice");
    assert_eq!(connect.envelope["requestContext"]["authorizer"]["room"], "lobby");
    client.send(Message::text(r#"{"action":"sendmessage","text":"hi"}"#)).await.unwrap();
    assert_eq!(next_text(&mut client).await, "got hi");
    let sent = seen.wait_for("/send", |_| true).await;
    assert_eq!(sent.headers["x-meridian-principal"], "alice");
    let context: Value = serde_json::from_str(sent.headers["x-meridian-authorizer"].to_str().unwrap()).unwrap();
    assert_eq!(context["room"], "lobby");
    let described = admin_call(&node, "GET", &id, "").await.json();
    assert_eq!(described["identity"]["principal"], "alice", "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_api_is_served_over_tls_on_a_custom_domain_s_base_path() {
    use rustls::pki_types::pem::PemObject;
    let (backend, seen) = chat_backend().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let ca = TestCa::new();
    ca.issue(dir.path(), "chat.example.test");
    let config = chat_api(backend, "", "")
        .replace(r#"listen: { http: "127.0.0.1:0" }"#, r#"listen: { https: "127.0.0.1:0" }"#)
        .replace("    stages: [{ name: prod }]\n", "    default_endpoint: false\n    stages: [{ name: prod }]\n")
        + "domains:\n  - name: chat.example.test\n    certificate: chat.example.test.pem\n    key: chat.example.test.key\n    mappings: [{ base_path: /rooms, api: chat, stage: prod }]\n";
    let node = start_node_in(dir, config).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(node.https.unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("chat.example.test").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.unwrap();
    let (mut client, response) = tokio_tungstenite::client_async("wss://chat.example.test/rooms", stream)
        .await
        .expect("a WebSocket handshake over TLS, on the domain's base path");
    assert_eq!(response.status(), 101);
    client.send(Message::text(r#"{"action":"sendmessage","text":"secure"}"#)).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), client.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(reply, Message::text("got secure"));
    let sent = seen.wait_for("/send", |_| true).await;
    assert_eq!(sent.envelope["requestContext"]["stage"], "prod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_shows_sends_to_and_closes_a_connection_with_the_cli() {
    let (backend, _seen) = chat_backend().await;
    let node = start_chat(chat_api(backend, "", "")).await;
    let (mut client, id) = connect(&node, &[]).await.unwrap();
    let run = |args: Vec<String>| {
        let node_args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&node_args, &node)
    };
    let connection = |verb: &str| {
        vec![
            "connections".into(),
            verb.into(),
            "--api".into(),
            "chat".into(),
            "--stage".into(),
            "prod".into(),
            id.clone(),
        ]
    };

    let mut send = connection("send");
    send.extend(["--message".to_string(), "from the operator".to_string()]);
    let out = run(send);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(next_text(&mut client).await, "from the operator");

    let out = run(connection("show"));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && shown.contains("source           127.0.0.1"), "{shown}");
    let mut as_json = connection("show");
    as_json.extend(["--output".to_string(), "json".to_string()]);
    let view: Value = serde_json::from_slice(&run(as_json).stdout).unwrap();
    assert_eq!(view["sourceIp"], "127.0.0.1");

    let out = run(connection("close"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(close_frame(&mut client, Duration::from_secs(5)).await.0, CloseCode::Normal);
    let out = run(connection("show"));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("gone"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_and_the_disconnect_write_an_access_log_line() {
    let (backend, seen) = chat_backend().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let log = dir.path().join("access.log");
    let config = chat_api(backend, "messages_per_second: 1", "")
        .replace("access_log: { enabled: false }", &format!("access_log: {{ path: \"{}\" }}", log.display()));
    let node = start_node_in(dir, config).await;
    let (mut client, id) = connect(&node, &[]).await.unwrap();
    client.send(Message::text(r#"{"action":"sendmessage","text":"hi"}"#)).await.unwrap();
    assert_eq!(next_text(&mut client).await, "got hi");
    // One message a second: the next token comes after a second, and a message sent right
    // after that one finds none.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.send(Message::text(r#"{"action":"broken"}"#)).await.unwrap();
    client.send(Message::text(r#"{"action":"sendmessage","text":"too soon"}"#)).await.unwrap();
    next_text(&mut client).await;
    next_text(&mut client).await;
    client.close(None).await.unwrap();
    seen.wait_for("/disconnect", |_| true).await;

    // The lines are written within a moment; the last is the disconnect's.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        if lines.iter().any(|l| l["method"] == "DISCONNECT") {
            break lines;
        }
        assert!(Instant::now() < deadline, "no disconnect line in:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let connection = format!("/@connections/{id}");
    let find = |method: &str, route: &str| {
        lines
            .iter()
            .find(|l| l["method"] == method && l["route"] == route)
            .unwrap_or_else(|| panic!("no {method} line for {route} in {lines:#?}"))
    };
    // The handshake is an HTTP request like any other.
    assert_eq!(lines.iter().find(|l| l["method"] == "GET").map(|l| l["status"].clone()), Some(101.into()));
    let sent = find("MESSAGE", "sendmessage");
    assert_eq!((sent["status"].as_u64(), sent["bytes"].as_u64()), (Some(200), Some("got hi".len() as u64)));
    assert_eq!(
        (&sent["path"], &sent["api"], &sent["stage"]),
        (&Value::from(connection.as_str()), &"chat".into(), &"prod".into())
    );
    assert!(sent["integration_latency_ms"].is_number() && sent["request_id"].is_string());
    let broken = find("MESSAGE", "broken");
    assert_eq!(broken["status"], 502);
    assert_eq!(broken["reason"], "the integration answered 500 Internal Server Error");
    let refused = find("MESSAGE", "");
    assert_eq!(
        (&refused["status"], &refused["reason"]),
        (&Value::from(429), &"over the connection's messages_per_second".into())
    );
    assert!(refused.get("integration_latency_ms").is_none(), "no integration was called");
    let gone = find("DISCONNECT", "$disconnect");
    assert_eq!((&gone["status"], &gone["path"]), (&Value::from(200), &Value::from(connection.as_str())));
}
