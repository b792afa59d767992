//! gRPC end to end: Python's `grpcio` client and server (tests/grpc/echo.py, raw-bytes
//! messages) through the gateway over HTTP/2 in cleartext: unary, client-streaming,
//! server-streaming and bidirectional calls pass through with their trailers; the gateway's
//! own refusals (no route, unauthenticated, throttled, upstream down, timeout) reach the
//! client as gRPC statuses; and a call's `grpc-timeout` bounds the gateway's wait.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_tests::*;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grpc/echo.py")
}

/// The echo server on a free port; killed when dropped.
struct EchoServer(Child, u16);

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo_server(python: &Path) -> EchoServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(python)
        .arg(script())
        .args(["serve", &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    EchoServer(child, port)
}

/// Runs the client's calls against `target` with `authority`; one JSON value per call.
fn calls(python: &Path, target: SocketAddr, authority: &str, each: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(python)
        .arg(script())
        .args(["call", &target.to_string(), authority])
        .args(each)
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_and_the_gateways_refusals_are_grpc_statuses() {
    let Some(python) = tokio::task::spawn_blocking(|| python_with("grpc-venv", &["grpcio==1.85.3"])).await.unwrap()
    else {
        return;
    };
    let server = echo_server(&python);
    let upstream = format!("127.0.0.1:{}", server.1);
    let authorizer =
        http_service(|_| async { hyper::Response::new(Full::new(Bytes::from_static(b"{\"isAuthorized\": true}"))) })
            .await;
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: grpc
    authorizers:
      - {{ name: gate, type: custom, uri: "http://{authorizer}/", identity_sources: [$request.header.x-token] }}
    routes:
      - route: POST /echo.Echo/{{method}}
        integration: {{ type: http_proxy, uri: "http://{upstream}/echo.Echo/{{method}}", http2: true }}
      - route: POST /echo.Echo/Slow
        integration: {{ type: http_proxy, uri: "http://{upstream}/echo.Echo/Slow", http2: true, timeout: 1s }}
      - route: POST /guarded.Svc/{{method}}
        authorizer: gate
        integration: {{ type: http_proxy, uri: "http://{upstream}/echo.Echo/{{method}}", http2: true }}
      - route: POST /limited.Svc/{{method}}
        throttle: {{ rate: 1, burst: 1 }}
        integration: {{ type: http_proxy, uri: "http://{upstream}/echo.Echo/{{method}}", http2: true }}
      - route: POST /down.Svc/{{method}}
        integration: {{ type: http_proxy, uri: "http://127.0.0.1:1/echo.Echo/{{method}}", http2: true }}
    stages: [{{ name: prod }}]
domains:
  - {{ name: grpc.test, mappings: [{{ api: grpc, stage: prod }}] }}
"#
    ))
    .await;
    let gw = node.http.expect("http listener");

    let results =
        calls(&python, gw, "grpc.test", &["unary:hi", "collect:a,b,c", "expand:3", "chat:x,y", "raw:/echo.Echo/Nope"]);
    let reply = |i: usize| (&results[i]["code"], &results[i]["reply"]);
    assert_eq!(reply(0), (&serde_json::json!("OK"), &serde_json::json!("echo:hi")));
    assert_eq!(reply(1), (&serde_json::json!("OK"), &serde_json::json!("a+b+c")));
    assert_eq!(reply(2), (&serde_json::json!("OK"), &serde_json::json!(["part 0", "part 1", "part 2"])));
    assert_eq!(reply(3), (&serde_json::json!("OK"), &serde_json::json!(["re:x", "re:y"])));
    // The upstream's own status, with its message, passes through in its trailers.
    assert_eq!(results[4]["code"], "UNIMPLEMENTED");
    assert_eq!(results[4]["details"], "Method not found!");

    // What the gateway refuses, as gRPC statuses with its message.
    let refused = calls(
        &python,
        gw,
        "grpc.test",
        &[
            "raw:/other.Svc/Method",
            "raw:/guarded.Svc/Unary",
            "raw:/limited.Svc/Unary",
            "raw:/limited.Svc/Unary",
            "raw:/down.Svc/Unary",
            "slow:10",
        ],
    );
    let code = |i: usize| refused[i]["code"].as_str().unwrap_or("").to_string();
    let details = |i: usize| refused[i]["details"].as_str().unwrap_or("").to_string();
    assert_eq!(code(0), "UNIMPLEMENTED", "{:?}", refused[0]);
    assert!(details(0).contains("no route matches this request"), "{}", details(0));
    assert_eq!(code(1), "UNAUTHENTICATED", "{:?}", refused[1]);
    assert_eq!(code(2), "OK", "the first call is within the limit: {:?}", refused[2]);
    assert_eq!(code(3), "RESOURCE_EXHAUSTED", "{:?}", refused[3]);
    assert_eq!(code(4), "UNAVAILABLE", "{:?}", refused[4]);
    assert_eq!(code(5), "DEADLINE_EXCEEDED", "{:?}", refused[5]);
    assert!(details(5).contains("did not answer within 1000 ms"), "the gateway's timeout: {}", details(5));
    drop(server);
}

/// A call's `grpc-timeout` shorter than the route's timeout ends the gateway's wait: the
/// answer is `grpc-status: 4` at the deadline, not when the upstream gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_grpc_timeout_bounds_the_gateways_wait() {
    // An upstream that never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: grpc
    routes:
      - route: POST /echo.Echo/{{method}}
        integration: {{ type: http_proxy, uri: "http://{upstream}/echo.Echo/{{method}}", http2: true }}
    stages: [{{ name: prod }}]
domains:
  - {{ name: grpc.test, mappings: [{{ api: grpc, stage: prod }}] }}
"#
    ))
    .await;
    let stream = tokio::net::TcpStream::connect(node.http.unwrap()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    // One length-prefixed message: not compressed, 1 byte.
    let frame = Bytes::from_static(&[0, 0, 0, 0, 1, b'x']);
    let request = hyper::Request::post("http://grpc.test/echo.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(Full::new(frame))
        .unwrap();
    let started = Instant::now();
    let response = sender.send_request(request).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    assert_eq!(response.headers()["grpc-status"], "4");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty());
}
