//! Tracing end to end: two gateways on a path (the front's route, behind a custom
//! authorizer, proxies to a route of the second) export their spans to an independent OTLP
//! receiver (tests/otel/receiver.py: Python's `grpcio` and the `opentelemetry-proto`
//! package), the front over gRPC and the second over HTTP/protobuf. One client request makes
//! one trace with correct parent links and HTTP attributes; a request without a
//! `traceparent` starts a trace whose id is in the access log; an unsampled trace is passed
//! on and recorded nowhere; a stopping node exports the spans it still holds; and a
//! collector that cannot be reached never delays a request (its failures are counted).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_tests::*;
use serde_json::Value;

/// The receiver process and the spans it printed so far; stopped when dropped.
struct Receiver {
    child: Child,
    _stdin: ChildStdin,
    grpc: u16,
    http: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// The receiver; `tls` names its gRPC port's certificate and key files.
    fn start(python: &Path, tls: Option<(&Path, &Path)>) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otel/receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(tls.into_iter().flat_map(|(cert, key)| [cert.as_os_str(), key.as_os_str()]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python runs");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = lines.next().and_then(Result::ok).unwrap_or_default();
        let ports: Vec<u16> = ready.split_whitespace().skip(1).filter_map(|p| p.parse().ok()).collect();
        assert_eq!(ports.len(), 2, "the receiver said {ready:?}");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let span: Value = serde_json::from_str(&line).expect("a JSON line per span");
                sink.lock().unwrap().push(span);
            }
        });
        Receiver { child, _stdin: stdin, grpc: ports[0], http: ports[1], spans }
    }

    /// The spans of `trace_id`, once there are `count` of them (within 10 s).
    async fn trace(&self, trace_id: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Value> =
                self.spans.lock().unwrap().iter().filter(|s| s["trace_id"] == trace_id).cloned().collect();
            if spans.len() >= count || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn span<'a>(spans: &'a [Value], api: &str, kind: i64) -> &'a Value {
    spans
        .iter()
        .find(|s| s["kind"] == kind && (kind != 2 || s["attributes"]["meridian.api"] == api))
        .unwrap_or_else(|| panic!("no span of kind {kind} for {api} in {spans:#?}"))
}

fn access_log_trace_ids(node: &NodeProcess) -> Vec<String> {
    let text = std::fs::read_to_string(node.dir().join("access.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|l| l["trace_id"].as_str().map(str::to_string))
        .collect()
}

async fn metric(node: &NodeProcess, line_start: &str) -> f64 {
    let scraped = get(node.admin, "admin", "/metrics").await;
    let text = String::from_utf8_lossy(&scraped.body).into_owned();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The Python the OTLP receiver runs on (a virtualenv with `grpcio` and
/// `opentelemetry-proto`), made on first use.
async fn otel_python() -> Option<std::path::PathBuf> {
    let made =
        tokio::task::spawn_blocking(|| python_with("otel-venv", &["grpcio==1.85.3", "opentelemetry-proto==1.45.2"]));
    made.await.expect("the virtualenv task ends")
}

fn gateway(node: &NodeProcess) -> SocketAddr {
    node.http.expect("http listener")
}

/// A node whose one stage traces every request to `GET /prod/ping` (a mock), exporting as
/// `tracing` (the node's section, in flow style) says.
fn ping_node(tracing: &str) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ enabled: false }}
tracing: {tracing}
apis:
  - id: shop
    routes:
      - route: GET /ping
        integration: {{ type: mock, body: pong }}
    stages:
      - name: prod
        tracing: {{ sample_ratio: 1.0 }}
"#
    )
}

/// `GET /prod/ping` on `node` as part of trace `trace_id`, recorded by the caller.
async fn traced_ping(node: &NodeProcess, trace_id: &str) -> u16 {
    let traceparent = format!("00-{trace_id}-0102030405060708-01");
    let headers = [("host", "shop"), ("traceparent", traceparent.as_str())];
    request(gateway(node), "GET", "/prod/ping", &headers, "").await.status
}

/// The spans `node` failed to export, once there is one (within 10 s).
async fn failed_exports(node: &NodeProcess) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failed = metric(node, "meridian_trace_spans_total{outcome=\"failed\"}").await;
        if failed >= 1.0 || Instant::now() > deadline {
            return failed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_two_gateways_and_reaches_an_otlp_receiver() {
    let Some(python) = otel_python().await else { return };
    let receiver = Receiver::start(&python, None);

    // The second gateway: its stage records nothing of its own accord (ratio 0), so what it
    // records follows the caller's decision.
    let inventory = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ path: access.log }}
tracing: {{ endpoint: "http://127.0.0.1:{}", protocol: http }}
apis:
  - id: inventory
    routes:
      - route: GET /items/{{id}}
        integration: {{ type: mock, body: item }}
    stages:
      - name: prod
        tracing: {{ sample_ratio: 0.0 }}
"#,
        receiver.http
    ))
    .await;
    let authorizer = http_service(|_| async {
        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"{\"isAuthorized\": true}")))
    })
    .await;
    let front = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ path: access.log }}
tracing: {{ endpoint: "http://127.0.0.1:{}" }}
apis:
  - id: shop
    authorizers:
      - {{ name: gate, type: custom, uri: "http://{}/", identity_sources: [$request.header.x-token], ttl: 0s }}
    routes:
      - route: GET /items/{{id}}
        authorizer: gate
        integration: {{ type: http_proxy, uri: "http://{}/prod/items/{{id}}" }}
    stages:
      - name: prod
        tracing: {{ sample_ratio: 1.0 }}
"#,
        receiver.grpc,
        authorizer,
        gateway(&inventory)
    ))
    .await;

    // A client that traces: its span is the parent of the front's.
    let (trace_id, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let headers =
        [("host", "shop"), ("x-token", "t"), ("traceparent", traceparent.as_str()), ("tracestate", "vendor=7")];
    let reply = request(gateway(&front), "GET", "/prod/items/7", &headers, "").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);

    let spans = receiver.trace(trace_id, 4).await;
    assert_eq!(spans.len(), 4, "front server, its authorizer and upstream calls, inventory server: {spans:#?}");
    let front_server = span(&spans, "shop", 2);
    let calls: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 3).collect();
    let front_call = *calls.iter().find(|s| s["name"] == "GET").expect("the integration's span");
    let authorizer_call = *calls
        .iter()
        .find(|s| s["name"] == "authorizer shop/gate")
        .unwrap_or_else(|| panic!("no authorizer span: {spans:#?}"));
    assert_eq!(authorizer_call["parent_span_id"], front_server["span_id"]);
    assert_eq!(authorizer_call["attributes"]["meridian.authorizer.allowed"], true);
    assert!(authorizer_call["end"].as_u64() <= front_call["start"].as_u64(), "the callout ends before the call");
    let inventory_server = span(&spans, "inventory", 2);
    assert_eq!(front_server["parent_span_id"], client_span, "the client's span is the parent");
    assert_eq!(front_server["trace_state"], "vendor=7");
    assert_eq!(front_call["parent_span_id"], front_server["span_id"]);
    assert_eq!(inventory_server["parent_span_id"], front_call["span_id"], "the upstream joined the trace");
    assert_eq!(
        (front_server["protocol"].as_str(), inventory_server["protocol"].as_str()),
        (Some("grpc"), Some("http"))
    );

    assert_eq!(front_server["name"], "GET /items/{id}");
    let attributes = &front_server["attributes"];
    assert_eq!(attributes["http.request.method"], "GET");
    assert_eq!(attributes["http.route"], "/items/{id}");
    assert_eq!(attributes["url.path"], "/prod/items/7");
    assert_eq!(attributes["http.response.status_code"], 200);
    assert_eq!(attributes["meridian.stage"], "prod");
    assert_eq!(attributes["server.address"], "shop");
    assert_eq!(attributes["client.address"], "127.0.0.1");
    assert_eq!(front_server["resource"]["service.name"], "meridian");
    let call = &front_call["attributes"];
    assert_eq!(call["server.address"], "127.0.0.1");
    assert_eq!(call["server.port"], i64::from(gateway(&inventory).port()));
    assert_eq!(call["http.response.status_code"], 200);
    assert_eq!(call["url.full"], format!("http://{}/prod/items/7", gateway(&inventory)));
    let within = |inner: &Value, outer: &Value| {
        outer["start"].as_u64() <= inner["start"].as_u64() && inner["end"].as_u64() <= outer["end"].as_u64()
    };
    assert!(within(front_call, front_server) && within(inventory_server, front_call), "{spans:#?}");
    assert_eq!(inventory_server["status_code"], 0, "unset: no error");

    // Without a traceparent the front starts the trace; its id is in the access log.
    let reply = request(gateway(&front), "GET", "/prod/items/8", &[("host", "shop"), ("x-token", "t")], "").await;
    assert_eq!(reply.status, 200);
    let started = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let found = receiver
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| s["attributes"]["url.path"] == "/prod/items/8" && s["attributes"]["meridian.api"] == "shop")
                .cloned();
            match found {
                Some(s) => return s,
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the new trace is exported");
    assert_eq!(started["parent_span_id"], "", "a new trace has no parent");
    let new_trace = started["trace_id"].as_str().unwrap().to_string();
    assert_eq!(receiver.trace(&new_trace, 4).await.len(), 4);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !access_log_trace_ids(&front).contains(&new_trace) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(access_log_trace_ids(&front).contains(&new_trace), "the access log names the trace");

    // A caller that does not record: the trace is passed on (the second gateway logs its
    // id) and no span of it is exported anywhere.
    let quiet = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{quiet}-b7ad6b7169203331-00");
    let headers = [("host", "shop"), ("x-token", "t"), ("traceparent", traceparent.as_str())];
    let reply = request(gateway(&front), "GET", "/prod/items/9", &headers, "").await;
    assert_eq!(reply.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !access_log_trace_ids(&inventory).iter().any(|t| t == quiet) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(access_log_trace_ids(&inventory).iter().any(|t| t == quiet), "the unsampled trace reached the upstream");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(receiver.trace(quiet, 1).await.is_empty(), "an unsampled trace is recorded nowhere");

    assert!(metric(&front, "meridian_trace_spans_total{outcome=\"exported\"}").await >= 6.0);
    assert!(metric(&inventory, "meridian_trace_spans_total{outcome=\"exported\"}").await >= 2.0);

    // A stopping node exports what it still holds before it exits (the batch it was filling
    // would otherwise wait for the next second's tick).
    let (last, last_span) = ("5e1f8c0a2b3d4e5f60718293a4b5c6d7", "1122334455667788");
    let traceparent = format!("00-{last}-{last_span}-01");
    let headers = [("host", "shop"), ("x-token", "t"), ("traceparent", traceparent.as_str())];
    assert_eq!(request(gateway(&front), "GET", "/prod/items/10", &headers, "").await.status, 200);
    let mut front = front;
    front.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while front.is_running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!front.is_running(), "the node stops on SIGTERM");
    let exported = receiver.spans.lock().unwrap().clone();
    let flushed = exported.iter().filter(|s| s["trace_id"] == last && s["resource"]["service.name"] == "meridian");
    assert!(
        flushed.clone().any(|s| s["kind"] == 2 && s["attributes"]["meridian.api"] == "shop"),
        "the front's last spans were exported as it stopped"
    );
    drop(receiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_over_grpc_with_tls_and_only_a_trusted_one() {
    let Some(python) = otel_python().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    ca.issue(dir.path(), "127.0.0.1");
    std::fs::write(dir.path().join("other-ca.pem"), &TestCa::new().pem).unwrap();
    let (cert, key) = (dir.path().join("127.0.0.1.pem"), dir.path().join("127.0.0.1.key"));
    let receiver = Receiver::start(&python, Some((&cert, &key)));
    let node_with = |ca_file: &str| {
        let ca_file = dir.path().join(ca_file);
        ping_node(&format!(
            "{{ endpoint: \"https://127.0.0.1:{}\", ca_file: \"{}\" }}",
            receiver.grpc,
            ca_file.display()
        ))
    };
    // Trusting the collector's CA: the span arrives over TLS.
    let trusted = start_node(node_with("ca.pem")).await;
    let trace_id = "7a1b2c3d4e5f60718293a4b5c6d7e8f9";
    assert_eq!(traced_ping(&trusted, trace_id).await, 200);
    let spans = receiver.trace(trace_id, 1).await;
    assert_eq!(spans.len(), 1, "the span reached the TLS collector");
    assert_eq!(spans[0]["protocol"], "grpc");
    // Trusting another CA: the export fails, is counted, and no span arrives.
    let untrusting = start_node(node_with("other-ca.pem")).await;
    let other = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    assert_eq!(traced_ping(&untrusting, other).await, 200);
    assert!(failed_exports(&untrusting).await >= 1.0);
    assert!(receiver.trace(other, 1).await.is_empty(), "a collector the node does not trust gets nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_cannot_be_reached_never_delays_a_request() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let node = start_node(ping_node(&format!("{{ endpoint: \"http://{closed}\" }}"))).await;
    let started = Instant::now();
    for _ in 0..50 {
        let reply = request(gateway(&node), "GET", "/prod/ping", &[("host", "shop")], "").await;
        assert_eq!(reply.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "50 requests took {:?}", started.elapsed());
    assert!(failed_exports(&node).await >= 1.0, "failed exports are counted");
    // The node still serves.
    assert_eq!(request(gateway(&node), "GET", "/prod/ping", &[("host", "shop")], "").await.status, 200);
}

#[test]
fn tracing_settings_are_checked_with_their_lines() {
    let out = validate(
        r#"
listen: { http: "127.0.0.1:0" }
tracing: { endpoint: "ftp://collector:4317", queue: 0 }
apis:
  - id: shop
    routes:
      - route: GET /ping
        integration: { type: mock, body: ok }
    stages:
      - name: prod
        tracing: { sample_ratio: 1.5 }
"#,
    );
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("tracing.endpoint") && said.contains("is not an `http://` or `https://` URL"), "{said}");
    assert!(said.contains("tracing.queue"), "{said}");
    assert!(said.contains("stages[0].tracing.sample_ratio") && said.contains("1.5"), "{said}");
    let _ = std::io::stdout().flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connects_and_messages_are_traced_and_their_integration_calls_carry_the_trace() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Some(python) = otel_python().await else { return };
    let receiver = Receiver::start(&python, None);
    // The routes' backend keeps the `traceparent` each call came with, by path.
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let kept = seen.clone();
    let backend = http_service(move |request: hyper::Request<bytes::Bytes>| {
        let traceparent = request.headers().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("");
        kept.lock().unwrap().push((request.uri().path().to_string(), traceparent.to_string()));
        async { hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"noted"))) }
    })
    .await;
    let traceparent_of = |path: &str| {
        let seen = seen.lock().unwrap();
        let found = seen.iter().find(|(p, _)| p == path).map(|(_, t)| t.clone());
        found.unwrap_or_else(|| panic!("no call to {path} in {seen:?}"))
    };
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ enabled: false }}
tracing: {{ endpoint: "http://127.0.0.1:{}", protocol: http }}
apis:
  - id: chat
    type: websocket
    routes:
      - {{ route: $connect, integration: {{ type: http_proxy, uri: "http://{backend}/connect" }} }}
      - {{ route: sendmessage, reply: true, integration: {{ type: http_proxy, uri: "http://{backend}/send" }} }}
    stages:
      - name: prod
        tracing: {{ sample_ratio: 1.0 }}
"#,
        receiver.http
    ))
    .await;
    // The handshake comes in a trace of the client's: `$connect`'s call is a span of it.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let handshake_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let mut request = format!("ws://{}/prod", gateway(&node)).into_client_request().unwrap();
    let parent = format!("00-{handshake_trace}-00f067aa0ba902b7-01");
    request.headers_mut().insert("traceparent", parent.parse().unwrap());
    let (mut client, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let connect = traceparent_of("/connect");
    assert!(connect.starts_with(&format!("00-{handshake_trace}-")), "{connect}");
    let handshake_spans = receiver.trace(handshake_trace, 2).await;
    let connect_call = handshake_spans.iter().find(|s| s["kind"] == 3).expect("the $connect call's span");
    let handshake_server = handshake_spans.iter().find(|s| s["kind"] == 2).expect("the handshake's span");
    assert_eq!(connect_call["parent_span_id"], handshake_server["span_id"]);
    assert_eq!(connect_call["span_id"], connect.split('-').nth(2).unwrap_or(""));

    // A message is a trace of its own.
    client.send(Message::text(r#"{"action":"sendmessage"}"#)).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), client.next()).await.expect("a reply in time");
    assert_eq!(reply.and_then(Result::ok).and_then(|m| m.into_text().ok()).as_deref(), Some("noted"));

    let traceparent = traceparent_of("/send");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts.get(3).copied()), (4, "00", Some("01")), "{traceparent}");
    let spans = receiver.trace(parts[1], 2).await;
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap_or_else(|| panic!("no server span in {spans:#?}"));
    let call = spans.iter().find(|s| s["kind"] == 3).unwrap_or_else(|| panic!("no client span in {spans:#?}"));
    assert_eq!(server["name"], "MESSAGE sendmessage");
    assert_eq!(server["attributes"]["meridian.api"], "chat");
    assert_eq!(server["attributes"]["http.route"], "sendmessage");
    assert_eq!(server["attributes"]["http.response.status_code"], 200);
    assert!(server["parent_span_id"].as_str().unwrap_or("").is_empty(), "a message begins its own trace");
    assert_eq!(call["parent_span_id"], server["span_id"]);
    assert_eq!(call["span_id"], parts[2], "the backend was called from the integration's span");
}
