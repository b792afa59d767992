//! End-to-end tests of one gateway node: a real `meridian serve` process on loopback,
//! real backends, real clients (hyper, curl, tokio-tungstenite, raw TCP).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use meridian_tests::*;

/// A configuration with one API `pets` on stage `prod`, proxying to `backend`.
fn pets_config(backend: SocketAddr, extra: &str) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
{extra}
apis:
  - id: pets
    routes:
      - route: GET /pets/{{id}}
        integration: {{ type: http_proxy, uri: "http://${{stageVariables.backend}}/v2/pets/{{id}}", timeout: 2s }}
      - route: POST /pets
        integration: {{ type: http_proxy, uri: "http://${{stageVariables.backend}}/pets" }}
      - route: GET /slow
        integration: {{ type: http_proxy, uri: "http://${{stageVariables.backend}}/slow", timeout: 300ms }}
      - route: GET /down
        integration: {{ type: http_proxy, uri: "http://127.0.0.1:1/down" }}
      - route: ANY /files/{{path+}}
        integration: {{ type: http_proxy, uri: "http://${{stageVariables.backend}}/static/{{path}}" }}
      - route: GET /hello
        integration:
          type: mock
          status: 201
          headers: {{ content-type: text/plain, x-mock: "yes" }}
          body: hello from a mock
    stages:
      - name: prod
        variables: {{ backend: "{backend}" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_with_path_parameters_stage_variables_and_forwarding_headers() {
    let backend = echo_backend().await;
    let node = start_node(pets_config(backend, "")).await;
    let http = node.http.unwrap();
    let r = get(http, "gw.test", "/prod/pets/42?color=red").await;
    assert_eq!(r.status, 200, "{:?}", r);
    let echoed = r.json();
    assert_eq!(echoed["path"], "/v2/pets/42");
    assert_eq!(echoed["query"], "color=red");
    assert_eq!(echoed["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "http");
    assert_eq!(echoed["headers"]["x-forwarded-host"], "gw.test");
    assert_eq!(echoed["headers"]["host"], backend.to_string());
    let id = r.header("x-request-id");
    assert_eq!(id.len(), 32);
    assert_eq!(echoed["headers"]["x-request-id"], id);

    // A well-formed client request id is kept end to end.
    let req = Request::get("/prod/files/a/b/c.txt")
        .header("host", "gw.test")
        .header("x-request-id", "trace-me-123")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(http, req).await;
    assert_eq!(r.json()["path"], "/static/a/b/c.txt");
    assert_eq!(r.header("x-request-id"), "trace-me-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_routes_answer_from_config() {
    let node = start_node(pets_config("127.0.0.1:9".parse().unwrap(), "")).await;
    let r = get(node.http.unwrap(), "gw.test", "/prod/hello").await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("content-type"), "text/plain");
    assert_eq!(r.header("x-mock"), "yes");
    assert_eq!(&r.body[..], b"hello from a mock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_stages_and_methods_get_json_errors() {
    let node = start_node(pets_config("127.0.0.1:9".parse().unwrap(), "")).await;
    let http = node.http.unwrap();
    let r = get(http, "gw.test", "/prod/owners").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["request_id"], r.header("x-request-id"));
    assert!(r.json()["message"].as_str().unwrap().contains("no route"));
    let r = get(http, "gw.test", "/staging/pets/1").await;
    assert_eq!(r.status, 404);
    let req = Request::delete("/prod/pets/1").header("host", "gw.test").body(Full::new(Bytes::new())).unwrap();
    let r = send(http, req).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_become_502_and_504() {
    let backend = echo_backend().await;
    let node = start_node(pets_config(backend, "")).await;
    let http = node.http.unwrap();
    let r = get(http, "gw.test", "/prod/down").await;
    assert_eq!(r.status, 502);
    assert!(r.json()["message"].is_string());
    let started = Instant::now();
    let r = get(http, "gw.test", "/prod/slow?delay_ms=3000").await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_millis(2500), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let backend = echo_backend().await;
    let node = start_node(pets_config(backend, "limits: { max_body_bytes: 33554432 }")).await;
    let body: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = Request::post("/prod/pets")
        .header("host", "gw.test")
        .header("x-echo-body", "stream")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let r = send(node.http.unwrap(), req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body[..] == body[..], "the body came back changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_declared_or_chunked() {
    let backend = echo_backend().await;
    let node = start_node(pets_config(backend, "limits: { max_body_bytes: 1000 }")).await;
    let http = node.http.unwrap();
    let req =
        Request::post("/prod/pets").header("host", "gw.test").body(Full::new(Bytes::from(vec![b'x'; 1001]))).unwrap();
    assert_eq!(send(http, req).await.status, 413);
    // Chunked, no declared length: counted while streaming.
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = "x".repeat(600);
    write!(
        s,
        "POST /prod/pets HTTP/1.1\r\nhost: gw.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Within the limit, the same request passes.
    let req =
        Request::post("/prod/pets").header("host", "gw.test").body(Full::new(Bytes::from(vec![b'x'; 999]))).unwrap();
    assert_eq!(send(http, req).await.status, 200);
}

fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_heads_are_refused() {
    let node =
        start_node(pets_config("127.0.0.1:9".parse().unwrap(), "limits: { max_header_bytes: 8192, max_headers: 20 }"))
            .await;
    let http = node.http.unwrap();
    let big = format!("GET /prod/hello HTTP/1.1\r\nhost: gw.test\r\nx-big: {}\r\n\r\n", "a".repeat(20_000));
    assert!(raw_exchange(http, big.as_bytes()).starts_with("HTTP/1.1 431"));
    let mut many = String::from("GET /prod/hello HTTP/1.1\r\nhost: gw.test\r\n");
    for i in 0..40 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert!(raw_exchange(http, many.as_bytes()).starts_with("HTTP/1.1 431"));
    assert!(raw_exchange(http, b"THIS IS NOT HTTP\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(raw_exchange(http, b"GET /prod/hello HTTP/1.1\r\nbad header line\r\n\r\n").starts_with("HTTP/1.1 400"));
    // The node is still healthy after all that.
    assert_eq!(get(http, "gw.test", "/prod/hello").await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off() {
    let node = start_node(pets_config(
        "127.0.0.1:9".parse().unwrap(),
        "limits: { header_read_timeout: 1s, idle_timeout: 2s }",
    ))
    .await;
    let mut s = TcpStream::connect(node.http.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.write_all(b"GET /prod/hello HTTP/1.1\r\nhost: gw").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "closed after {waited:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    // An idle keep-alive connection is closed by the idle timeout too.
    let mut s = TcpStream::connect(node.http.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// `count` letters, `a` to `z` and over again.
fn letters(count: usize) -> String {
    (0..count).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

/// `text` as a chunked body of one-byte chunks (an ASCII text), with its last chunk.
fn one_byte_chunks(text: &str) -> String {
    text.chars().map(|c| format!("1\r\n{c}\r\n")).collect::<String>() + "0\r\n\r\n"
}

/// The data of a chunked body: its size lines and CRLFs removed.
fn dechunk(body: &str) -> String {
    let mut data = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        data.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_of_many_small_chunks_reaches_the_client_whole() {
    if !meridian_tests::tools(&["curl"]) {
        return;
    }
    // Many chunks read at once used to queue more pieces than one write to the client had
    // room for, and the connection's task panicked. The backend writes 40 one-letter chunks
    // at once, the way a stream of small events arrives.
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{}",
        one_byte_chunks(&letters(40))
    );
    let (backend, _) = raw_target(move |mut tcp| {
        let answer = answer.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let _ = tcp.write_all(answer.as_bytes()).await;
            let _ = tcp.shutdown().await;
        }
    })
    .await;
    let node = start_node(pets_config(backend, "")).await;
    let url = format!("http://{}/prod/files/events", node.http.unwrap());
    let out = curl(&["-s", "-o", "-", "-w", "\n%{http_code}", "-H", "host: gw.test", &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{}\n200", letters(40)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_of_many_small_chunks_reaches_the_backend_whole() {
    // The same writer sends a chunked request body upstream.
    let backend = echo_backend().await;
    let node = start_node(pets_config(backend, "")).await;
    let request = format!(
        "POST /prod/pets HTTP/1.1\r\nhost: gw.test\r\nx-echo-body: stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{}",
        one_byte_chunks(&letters(40))
    );
    let answer = raw_exchange(node.http.unwrap(), request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let echoed =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    assert!(echoed.contains(&letters(40)), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge() {
    if !meridian_tests::tools(&["curl"]) {
        return;
    }
    let backend = echo_backend().await;
    let node = start_node(pets_config(backend, "")).await;
    let url = format!("http://{}/prod/pets/7", node.http.unwrap());
    let out = curl(&["-s", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_version} %{http_code}", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n2 200"), "{text}");
    assert!(text.contains("\"path\":\"/v2/pets/7\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_two_domains_on_one_port_by_sni() {
    if !meridian_tests::tools(&["curl"]) {
        return;
    }
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let der_a = ca.issue(dir.path(), "a.example.test");
    let der_b = ca.issue(dir.path(), "b.example.test");
    let config = format!(
        r#"
listen: {{ https: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: alpha
    routes: [{{ route: "GET /who", integration: {{ type: mock, body: alpha }} }}]
    stages: [{{ name: live }}]
  - id: beta
    routes: [{{ route: "ANY /{{p+}}", integration: {{ type: http_proxy, uri: "http://{backend}/{{p}}" }} }}]
    stages: [{{ name: live }}]
domains:
  - name: a.example.test
    certificate: a.example.test.pem
    key: a.example.test.key
    mappings: [{{ base_path: /, api: alpha, stage: live }}]
  - name: b.example.test
    certificate: b.example.test.pem
    key: b.example.test.key
    mappings: [{{ base_path: /beta, api: beta, stage: live }}]
"#
    );
    let ca_path = dir.path().join("ca.pem");
    let node = start_node_in(dir, config).await;
    let port = node.https.unwrap().port();
    let ca_arg = ca_path.to_str().unwrap();
    let fetch = |host: &str, path: &str, extra: &[&str]| {
        let resolve = format!("{host}:{port}:127.0.0.1");
        let url = format!("https://{host}:{port}{path}");
        let mut args = vec!["-s", "--cacert", ca_arg, "--resolve", &resolve, "-w", "\n%{http_version} %{http_code}"];
        args.extend_from_slice(extra);
        args.push(&url);
        let out = curl(&args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let a = fetch("a.example.test", "/who", &[]);
    assert!(a.starts_with("alpha\n2 200"), "{a}");
    let b = fetch("b.example.test", "/beta/items/3", &["--http1.1"]);
    assert!(b.contains("\"path\":\"/items/3\"") && b.ends_with("1.1 200"), "{b}");
    assert!(b.contains("\"x-forwarded-proto\":\"https\""), "{b}");

    // Each name gets its own certificate.
    for (name, der) in [("a.example.test", der_a), ("b.example.test", der_b)] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(ca_der(&ca.pem))).unwrap();
        let config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(node.https.unwrap()).await.unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let tls = connector.connect(server_name, tcp).await.unwrap();
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        assert_eq!(presented, der, "wrong certificate for {name}");
    }
    // An unknown name is refused at the handshake.
    let out = curl(&[
        "-s",
        "-k",
        "--resolve",
        &format!("c.example.test:{port}:127.0.0.1"),
        &format!("https://c.example.test:{port}/"),
    ]);
    assert!(!out.status.success());
}

/// The certificate a TLS server at `addr` presents to a client that sends no SNI (as clients
/// that connect by address do), as `openssl x509 -ext subjectAltName` prints it; empty when
/// the handshake is refused.
fn presented_without_sni(addr: SocketAddr) -> String {
    let script = format!(
        "openssl s_client -connect {addr} -noservername < /dev/null 2> /dev/null | openssl x509 -noout -ext subjectAltName 2> /dev/null"
    );
    let out = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_sni_gets_the_default_certificate_and_is_refused_without_one() {
    if !meridian_tests::tools(&["openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.issue(dir.path(), "a.example.test");
    ca.issue(dir.path(), "b.example.test");
    let config = |default: &str| {
        format!(
            r#"
listen: {{ https: "127.0.0.1:0"{default} }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: alpha
    routes: [{{ route: "GET /who", integration: {{ type: mock, body: alpha }} }}]
    stages: [{{ name: live }}]
domains:
  - {{ name: a.example.test, certificate: a.example.test.pem, key: a.example.test.key, mappings: [{{ api: alpha, stage: live }}] }}
  - {{ name: b.example.test, certificate: b.example.test.pem, key: b.example.test.key, mappings: [{{ api: alpha, stage: live }}] }}
"#
        )
    };
    // A default that names no domain of the file is an error with its line.
    let out = meridian_tests::validate(&config(", default_certificate: c.example.test"));
    assert!(!out.status.success());
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("listen.default_certificate"), "{said}");

    let node = start_node_in(dir, config(", default_certificate: b.example.test")).await;
    let addr = node.https.unwrap();
    let presented = tokio::task::spawn_blocking(move || presented_without_sni(addr)).await.unwrap();
    assert!(presented.contains("DNS:b.example.test"), "{presented:?}");

    let dir = tempfile::tempdir().unwrap();
    ca.issue(dir.path(), "a.example.test");
    ca.issue(dir.path(), "b.example.test");
    let node = start_node_in(dir, config("")).await;
    let addr = node.https.unwrap();
    let presented = tokio::task::spawn_blocking(move || presented_without_sni(addr)).await.unwrap();
    assert!(presented.is_empty(), "without a default a client without SNI is refused: {presented:?}");
}

fn ca_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// A WebSocket backend that answers a text message with `echo: ` and the text, and a binary
/// message with itself.
async fn websocket_echo_backend() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) => ws.send(Message::text(format!("echo: {t}"))).await.unwrap(),
                        Message::Binary(b) => ws.send(Message::Binary(b)).await.unwrap(),
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_pass_through_both_ways() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let node = start_node(pets_config(websocket_echo_backend().await, "")).await;
    let url = format!("ws://{}/prod/files/chat", node.http.unwrap());
    let (mut ws, response) =
        tokio_tungstenite::connect_async(url).await.expect("websocket handshake through the gateway");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("echo: hi"));
    let blob = vec![7u8; 100_000];
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));
    ws.close(None).await.unwrap();
}

/// Reads one HTTP/1.1 response with a `content-length` from `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the connection closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// An idle keep-alive connection gives its buffers back (it is parked after 500 ms without a
/// request) and is served again when the client speaks: plain requests, a request sent in
/// pieces across the park, and a WebSocket upgrade all work on the same socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_keep_alive_connection_is_served_again() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Message;

    let node = start_node(pets_config(websocket_echo_backend().await, "")).await;
    let mut stream = tokio::net::TcpStream::connect(node.http.unwrap()).await.unwrap();
    let hello = b"GET /prod/hello HTTP/1.1\r\nhost: gw.test\r\n\r\n";
    for round in 0..3 {
        stream.write_all(hello).await.unwrap();
        let answer = read_response(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 201"), "round {round}: {answer}");
        assert!(!answer.to_ascii_lowercase().contains("connection: close"), "round {round}: {answer}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Half a request, a park's worth of silence, the other half.
    stream.write_all(&hello[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stream.write_all(&hello[10..]).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 201"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The same socket upgrades to a WebSocket after being parked.
    let url = format!("ws://{}/prod/files/chat", node.http.unwrap());
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream).await.expect("upgrade after parking");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("echo: still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_good_file_and_rejects_a_bad_one() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "0123456789abcdef0123\n").unwrap();
    let admin = r#"admin: { listen: "127.0.0.1:0", token_file: admin.token }"#;
    let config = pets_config(backend, "").replace(r#"admin: { listen: "127.0.0.1:0" }"#, admin);
    let node = start_node_in(dir, config.clone()).await;
    let http = node.http.unwrap();
    assert_eq!(get(http, "gw.test", "/prod/new").await.status, 404);

    // A good file, applied with SIGHUP.
    let added = config
        .replace("    stages:", "      - { route: GET /new, integration: { type: mock, body: fresh } }\n    stages:");
    std::fs::write(node.config_path(), &added).unwrap();
    node.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(http, "gw.test", "/prod/new").await.status != 200 {
        assert!(Instant::now() < deadline, "reload did not apply: {}", node.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A bad file, through `meridian reload`: refused with its errors, the old config serves.
    let broken = added.replace("GET /new", "GET new");
    std::fs::write(node.config_path(), &broken).unwrap();
    let out = std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(["reload", "--config"])
        .arg(node.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with `/`"));
    node.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(http, "gw.test", "/prod/new").await.status, 200);
    assert!(node.stderr().contains("reload rejected"));

    // A good file again, through the authenticated admin API.
    std::fs::write(node.config_path(), &config).unwrap();
    let out = std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(["reload", "--config"])
        .arg(node.config_path())
        .args(["--admin", &node.admin.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(get(http, "gw.test", "/prod/new").await.status, 404);
    // One revision, the same everywhere: start 1, the SIGHUP 2, the refused file nothing.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "reloaded: serving configuration revision 3");
    let ready =
        send(node.admin, Request::get("/readyz").header("host", "admin").body(Full::new(Bytes::new())).unwrap());
    assert_eq!(ready.await.json()["revision"], 3);
    let metrics =
        send(node.admin, Request::get("/metrics").header("host", "admin").body(Full::new(Bytes::new())).unwrap());
    let metrics = String::from_utf8_lossy(&metrics.await.body).into_owned();
    assert!(metrics.contains("meridian_config_revision 3"), "{metrics}");
    // A change that waits for a restart is named, not reported as applied.
    let limited = config.replace("apis:", "limits: { max_connections: 77 }\napis:");
    std::fs::write(node.config_path(), &limited).unwrap();
    let out = std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(["reload", "--config"])
        .arg(node.config_path())
        .args(["--admin", &node.admin.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("restart the node to apply: limits"), "{said}");
    // Without the token, the admin API refuses.
    let req = Request::post("/v1/reload").header("host", "admin").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send(node.admin, req).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_and_metrics_record_every_request() {
    let backend = echo_backend().await;
    let node = start_node(pets_config(backend, "")).await;
    let http = node.http.unwrap();
    let ok = get(http, "gw.test", "/prod/pets/1").await;
    let missing = get(http, "gw.test", "/prod/nothing").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let log = node.stdout();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let line = lines.iter().find(|l| l["request_id"] == ok.header("x-request-id")).expect("logged");
    assert_eq!(line["route"], "GET /pets/{id}");
    assert_eq!(line["api"], "pets");
    assert_eq!(line["stage"], "prod");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"].as_u64().unwrap() as usize, ok.body.len());
    assert!(line["integration_latency_ms"].as_f64().unwrap() > 0.0);
    assert!(lines.iter().any(|l| l["request_id"] == missing.header("x-request-id") && l["status"] == 404));

    let metrics = String::from_utf8_lossy(&get(node.admin, "admin", "/metrics").await.body).into_owned();
    let ok_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("meridian_requests_total")
                && l.contains("route=\"GET /pets/{id}\"")
                && l.contains("status=\"2xx\"")
        })
        .unwrap_or_else(|| panic!("no request counter in:\n{metrics}"));
    assert!(ok_line.ends_with(" 1"), "{ok_line}");
    assert!(metrics.contains("meridian_request_duration_seconds_bucket"));
    assert!(metrics.contains("meridian_upstream_connections_opened_total"));
    assert_eq!(get(node.admin, "admin", "/healthz").await.status, 200);
    assert_eq!(get(node.admin, "admin", "/readyz").await.json()["revision"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let backend = echo_backend().await;
    let mut node = start_node(pets_config(backend, "")).await;
    let http = node.http.unwrap();
    let in_flight = tokio::spawn(async move { get(http, "gw.test", "/prod/pets/1?delay_ms=1000").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.signal(libc::SIGTERM);
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    let status = tokio::task::spawn_blocking(move || node.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_while_every_one_is_busy() {
    // The backend holds the first two requests for 1.5 s.
    let (backend, _) = counting_backend(2, Duration::from_millis(1500)).await;
    let node = start_node(pets_config(backend, "limits: { max_connections: 2 }")).await;
    let http = node.http.unwrap();
    let busy = |n: u8| {
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(http).unwrap();
            s.write_all(format!("GET /prod/pets/{n} HTTP/1.1\r\nHost: gw.test\r\n\r\n").as_bytes()).unwrap();
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).unwrap();
            (String::from_utf8_lossy(&buf).into_owned(), s)
        })
    };
    let (first, second) = (busy(1), busy(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = tokio::spawn(async move { get(http, "gw.test", "/prod/hello").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection was served beyond the cap while both were busy");
    // Once the two exchanges end, their idle connections make room.
    let reply = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("served once a slot freed").unwrap();
    assert_eq!(reply.status, 201);
    for held in [first, second] {
        assert_eq!(held.join().unwrap().0, "HTTP/1.1 200");
    }
}

#[test]
fn validate_lists_every_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listen: { http: nowhere }\napis:\n  - id: Pets\n    routes:\n      - { route: GET pets, integration: { type: mock } }\n",
    )
    .unwrap();
    let out = std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("3 errors"), "{text}");
    for needle in ["line 1:", "listen.http", "line 3:", "apis[0].id", "line 5:", "apis[0].routes[0].route"] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    std::fs::write(&path, "listen: { http: 127.0.0.1:0 }\n").unwrap();
    let out = std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_after_a_timeout_and_others_are_not() {
    use std::sync::atomic::Ordering;
    let (backend, count) = counting_backend(1, Duration::from_secs(3)).await;
    let config = format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: flaky
    routes:
      - route: ANY /try
        integration:
          type: http_proxy
          uri: "http://{backend}/try"
          timeout: 300ms
          retry: {{ attempts: 2 }}
    stages: [{{ name: prod }}]
"#
    );
    let node = start_node(config).await;
    let http = node.http.unwrap();
    let started = Instant::now();
    let r = get(http, "gw.test", "/prod/try").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(&r.body[..], b"answer 1");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(count.load(Ordering::SeqCst), 2);

    // A POST is not retried: the slow first attempt is its only one.
    count.store(0, Ordering::SeqCst);
    let req = Request::post("/prod/try").header("host", "gw.test").body(Full::new(Bytes::from_static(b"x"))).unwrap();
    assert_eq!(send(http, req).await.status, 504);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_limit_answers_429_with_rate_limit_headers() {
    let config = r#"
listen: { http: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
apis:
  - id: pets
    routes:
      - { route: GET /hello, integration: { type: mock, body: hi } }
      - { route: GET /tight, integration: { type: mock, body: hi }, throttle: { rate: 2, burst: 2 } }
    stages:
      - { name: prod, throttle: { rate: 5, burst: 5 } }
"#;
    let node = start_node(config.to_string()).await;
    let http = node.http.unwrap();
    let mut admitted = 0;
    let mut refusal = None;
    for _ in 0..30 {
        let r = get(http, "gw.test", "/prod/hello").await;
        match r.status {
            201 | 200 => admitted += 1,
            429 => refusal = Some(r),
            other => panic!("unexpected {other}"),
        }
    }
    // 5 per second; a second boundary during the burst may let a few more through.
    assert!((5..=10).contains(&admitted), "admitted {admitted}");
    let r = refusal.expect("some requests were refused");
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(r.header("ratelimit-limit"), "5");
    assert_eq!(r.header("ratelimit-remaining"), "0");
    assert_eq!(r.header("ratelimit-reset"), "1");
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("stage pets/prod"), "{message}");

    // A route limit tighter than the stage's wins (after two seconds, so the stage's sliding
    // window has forgotten the burst above).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let tight: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(get(http, "gw.test", "/prod/tight").await.status);
        }
        v
    };
    assert!(tight.iter().filter(|s| **s == 200).count() <= 4, "{tight:?}");
    let last = get(http, "gw.test", "/prod/tight").await;
    assert_eq!(last.status, 429);
    assert!(last.json()["message"].as_str().unwrap().contains("route pets/prod GET /tight"));
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    // The reader is gone before the command writes a byte (`meridian … | true`).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(["chaos", "list"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}: {stderr}", out.status);
}

#[test]
fn workers_is_a_flag_of_the_serving_commands_only() {
    let meridian = meridian_chaos::launcher::meridian_binary();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/gateway.example.yaml");
    // A bad MERIDIAN_WORKERS does not concern a command that does not serve.
    let out = std::process::Command::new(&meridian)
        .args(["validate", "--config", example])
        .env("MERIDIAN_WORKERS", "abc")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // A serving command names the flag and the value, and starts nothing.
    let out = std::process::Command::new(&meridian)
        .args(["serve", "--config", example])
        .env("MERIDIAN_WORKERS", "abc")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid value 'abc' for '--workers <N>'"), "{stderr}");
    let out = std::process::Command::new(&meridian).args(["keys", "list", "--workers", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "`keys list` takes no --workers: {out:?}");
}

#[test]
fn validate_and_apply_report_the_same_errors_for_a_definition() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pets.yaml");
    std::fs::write(
        &file,
        "apis:\n  - id: pets\n    routes:\n      - route: GET pets\n        integration: { type: mock, timeout: soon }\n    stages: [{ name: prod }]\n",
    )
    .unwrap();
    let meridian = meridian_chaos::launcher::meridian_binary();
    let validate = std::process::Command::new(&meridian).args(["validate", "--config"]).arg(&file).output().unwrap();
    let apply = std::process::Command::new(&meridian)
        .args(["apply", "--stage", "prod", "--config", "node-not-needed.yaml", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&validate.stderr);
    assert_eq!(validate.status.code(), Some(2), "{said}");
    assert!(said.contains("must start with `/`"), "{said}");
    assert_eq!(apply.status.code(), Some(2));
    assert_eq!(said, String::from_utf8_lossy(&apply.stderr), "validate and apply disagree");
    // A valid definition is checked as one, not as a node's file (which would want `listen`).
    std::fs::write(&file, "apis:\n  - id: pets\n    routes:\n      - { route: GET /, integration: { type: mock } }\n")
        .unwrap();
    let ok = std::process::Command::new(&meridian).args(["validate", "--config"]).arg(&file).output().unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("a valid definition of API pets"), "{ok:?}");
}
