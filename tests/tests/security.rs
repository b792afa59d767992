//! End-to-end regression tests for the holes a hostile client found (docs/SECURITY.md):
//! paths escaping their routes, host confusion, floods of bad API keys, silent connections,
//! and protocol details. Each test speaks to a real `meridian serve` process with real
//! clients (raw TCP where a library would refuse to send the hostile form, and curl).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use meridian_tests::*;

/// One API with a greedy file route, a keyed route with a small stage limit, and a custom
/// domain that is the only way to reach a second API.
fn config(backend: SocketAddr) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
throttle: {{ rate: 100000, burst: 100000 }}
apis:
  - id: pets
    routes:
      - route: ANY /files/{{path+}}
        integration: {{ type: http_proxy, uri: "http://{backend}/static/{{path}}" }}
      - route: GET /raw/{{name}}
        allow_encoded_slashes: true
        integration: {{ type: http_proxy, uri: "http://{backend}/raw/{{name}}" }}
      - route: GET /keyed
        api_key_required: true
        integration: {{ type: mock, body: secret }}
      - route: ANY /ws
        integration: {{ type: http_proxy, uri: "http://{backend}/ws" }}
    stages:
      - name: prod
        throttle: {{ rate: 20, burst: 20 }}
  - id: private
    default_endpoint: false
    routes:
      - route: GET /hello
        integration: {{ type: mock, body: private hello }}
    stages:
      - name: prod
domains:
  - name: private.example.com
    mappings:
      - {{ base_path: /, api: private, stage: prod }}
"#
    )
}

/// Sends raw bytes and returns the status line's code and the whole answer.
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the head and whatever body follows until the server closes or goes quiet.
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

fn curl_status(args: &[&str]) -> (u16, String) {
    let mut all = vec!["-s", "-o", "/dev/stderr", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    let out = curl(&all);
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_escapes_its_route() {
    if !meridian_tests::tools(&["curl"]) {
        return;
    }
    let backend = echo_backend().await;
    let node = start_node(config(backend)).await;
    let gw = node.http.unwrap();
    let base = format!("http://{gw}");

    // The legitimate path reaches the upstream under the route's prefix.
    let (code, body) = curl_status(&["-H", "host: pets.test", &format!("{base}/prod/files/a/b.txt")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""path":"/static/a/b.txt""#), "{body}");
    // Percent-encoded unreserved characters are decoded before routing and forwarding.
    let (code, body) = curl_status(&["-H", "host: pets.test", &format!("{base}/prod/files/%7euser/%41.txt")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""path":"/static/~user/A.txt""#), "{body}");

    for hostile in [
        "/prod/files/../secret.txt",
        "/prod/files/%2e%2e/secret.txt",
        "/prod/files/%2E%2e/%2e%2e/secret.txt",
        "/prod/files/x/../../secret.txt",
        "/prod/files/..;/secret.txt",
        "/prod/files/..%2fsecret.txt",
        "/prod/files/..%5csecret.txt",
        "/prod/files/a%00.txt",
    ] {
        for http2 in [false, true] {
            let url = format!("{base}{hostile}");
            let mut args = vec!["--path-as-is", "-H", "host: pets.test", url.as_str()];
            if http2 {
                args.insert(0, "--http2-prior-knowledge");
            }
            let (code, body) = curl_status(&args);
            assert_eq!(code, 400, "{hostile} (h2: {http2}) answered {code}: {body}");
            assert!(!body.contains("/secret"), "{hostile} reached the upstream: {body}");
        }
    }
    // The absolute form and a custom domain follow the same rule.
    let (code, _) = raw(gw, b"GET http://pets.test/prod/files/../secret.txt HTTP/1.1\r\nHost: pets.test\r\n\r\n");
    assert_eq!(code, 400);
    let (code, _) = raw(gw, b"GET /../hello HTTP/1.1\r\nHost: private.example.com\r\n\r\n");
    assert_eq!(code, 400);
    // A route may let encoded slashes through, explicitly.
    let (code, body) = curl_status(&["-H", "host: pets.test", &format!("{base}/prod/raw/a%2fb")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""path":"/raw/a%2Fb""#), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_is_a_routing_boundary() {
    if !meridian_tests::tools(&["curl"]) {
        return;
    }
    let backend = echo_backend().await;
    let node = start_node(config(backend)).await;
    let gw = node.http.unwrap();

    // The custom domain serves its API, also with a trailing dot, upper case and a port.
    for host in ["private.example.com", "PRIVATE.example.com.", "private.example.com.:80"] {
        let r = get(gw, host, "/hello").await;
        assert_eq!((r.status, &r.body[..]), (200, &b"private hello"[..]), "{host}");
    }
    // The API turned its default endpoint off: its id as a host label finds nothing.
    assert_eq!(get(gw, "private.anything.test", "/prod/hello").await.status, 404);
    // The other API keeps its default endpoint.
    assert_eq!(get(gw, "pets.test", "/prod/files/x").await.status, 200);

    let (code, text) = raw(gw, b"GET /prod/files/x HTTP/1.1\r\nHost: pets.test\r\nHost: private.example.com\r\n\r\n");
    assert_eq!(code, 400, "duplicate Host: {text}");
    assert!(text.contains("more than one Host"), "{text}");
    let (code, text) = raw(gw, b"GET http://private.example.com/hello HTTP/1.1\r\nHost: pets.test\r\n\r\n");
    assert_eq!(code, 400, "absolute form and Host disagree: {text}");
    let (code, _) = raw(
        gw,
        b"GET http://private.example.com/hello HTTP/1.1\r\nHost: private.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200);
    let (code, text) = raw(gw, b"GET /prod/files/x HTTP/1.1\r\n\r\n");
    assert_eq!(code, 400, "HTTP/1.1 without Host: {text}");
    assert!(text.contains("needs a Host"), "{text}");
    // HTTP/2's :authority and Host must agree as well.
    let url = format!("http://{gw}/hello");
    let (code, _) = curl_status(&["--http2-prior-knowledge", "-H", "host: private.example.com", &url]);
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_api_keys_is_throttled() {
    let backend = echo_backend().await;
    let node = start_node(config(backend)).await;
    let gw = node.http.unwrap();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..120 {
        let request = hyper::Request::get("/prod/keyed")
            .header("host", "pets.test")
            .header("x-api-key", "guess-0123456789")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = send(gw, request).await;
        if r.status == 403 {
            assert_eq!(r.json()["message"], "invalid API key");
        }
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    // The stage allows 20 a second: most of a fast flood is refused before the key check.
    assert!(statuses.get(&429).copied().unwrap_or(0) >= 60, "{statuses:?}");
    assert!(statuses.get(&403).copied().unwrap_or(0) >= 1, "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(node.stdout().contains(r#""reason":"api key unknown""#), "the log keeps the precise reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_heads_are_held_to_max_headers() {
    if !meridian_tests::tools(&["curl"]) {
        return;
    }
    let backend = echo_backend().await;
    let node = start_node(config(backend)).await;
    let url = format!("http://{}/prod/files/x", node.http.unwrap());
    let headers: Vec<String> = (0..150).map(|i| format!("x-h{i}: {i}")).collect();
    let mut args = vec!["--http2-prior-knowledge", "-H", "host: pets.test"];
    for h in &headers {
        args.extend(["-H", h.as_str()]);
    }
    args.push(&url);
    let (code, body) = curl_status(&args);
    assert_eq!(code, 431, "{body}");
    let (code, _) = curl_status(&["--http2-prior-knowledge", "-H", "host: pets.test", &url]);
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_fault() {
    let backend = echo_backend().await;
    let node = start_node(config(backend)).await;
    let gw = node.http.unwrap();
    for _ in 0..5 {
        let (code, text) = raw(
            gw,
            b"POST /prod/files/upload HTTP/1.1\r\nHost: pets.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n\r\n",
        );
        assert_eq!(code, 400, "{text}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = node.stderr();
    assert!(!log.contains("upstream call failed"), "client errors were logged as upstream failures:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_handshakes_are_checked_before_the_upstream_sees_them() {
    let (backend, hits) = counting_backend(0, Duration::ZERO).await;
    let node = start_node(config(backend)).await;
    let gw = node.http.unwrap();
    let head = |extra: &str| {
        format!("GET /prod/ws HTTP/1.1\r\nHost: pets.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{extra}\r\n")
    };
    let cases = [
        ("Sec-WebSocket-Version: 13\r\n", 400),
        ("Sec-WebSocket-Key: bm90LTE2LWJ5dGVz\r\nSec-WebSocket-Version: 13\r\n", 400),
        ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n", 426),
        ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", 426),
    ];
    for (extra, expected) in cases {
        let (code, text) = raw(gw, head(extra).as_bytes());
        assert_eq!(code, expected, "{extra}: {text}");
    }
    let post = "POST /prod/ws HTTP/1.1\r\nHost: pets.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 2\r\n\r\nhi";
    assert_eq!(raw(gw, post.as_bytes()).0, 400);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "an invalid handshake reached the upstream");
}

#[test]
fn an_oversized_configuration_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let file = std::fs::File::create(&path).unwrap();
    // A sparse 1 GiB file: reading it would take 1 GiB of memory.
    file.set_len(1 << 30).unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("larger than"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    // The same for a domain's certificate and key files.
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        "listen: { http: 127.0.0.1:0 }\napis:\n  - id: pets\n    routes:\n      - { route: GET /, integration: { type: mock } }\n    stages: [{ name: prod }]\ndomains:\n  - { name: a.test, certificate: huge.yaml, key: huge.yaml, mappings: [{ api: pets, stage: prod }] }\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("larger than"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

/// Opens `n` TCP connections from `source` that never send a byte.
async fn silent_connections(to: SocketAddr, source: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        held.push(socket.connect(to).await.unwrap());
    }
    held
}

/// How many of `streams` the server has closed (a read sees the end within `wait`).
async fn closed_by_server(streams: &mut [tokio::net::TcpStream], wait: Duration) -> usize {
    use tokio::io::AsyncReadExt;
    let mut closed = 0;
    for s in streams.iter_mut() {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(wait, s.read(&mut buf)).await {
            closed += 1;
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_starve_the_listener() {
    let backend = echo_backend().await;
    let limits = "limits: { max_connections: 20, header_read_timeout: 2s }";
    let node = start_node(config(backend).replacen("throttle:", &format!("{limits}\nthrottle:"), 1)).await;
    let gw = node.http.unwrap();

    // A connection that never sends a request head is closed after the header timeout,
    // also before its first request.
    let started = Instant::now();
    let mut one = silent_connections(gw, "127.0.0.1", 1).await;
    assert_eq!(closed_by_server(&mut one, Duration::from_secs(6)).await, 1);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4), "closed after {waited:?}");

    // Twice the cap in silent connections: a real client is still served at once, because
    // the longest-idle connections are shed for it.
    let _silent = silent_connections(gw, "127.0.0.1", 40).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(2), get(gw, "pets.test", "/prod/files/x")).await;
    assert_eq!(r.expect("the client waited behind silent connections").status, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "served after {:?}", started.elapsed());
    let metrics = String::from_utf8_lossy(&get(node.admin, "admin", "/metrics").await.body).into_owned();
    assert!(metrics.contains("meridian_connections_shed_total"), "shedding is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_holds_at_most_its_share() {
    let backend = echo_backend().await;
    let limits = "limits: { max_connections_per_client: 5 }";
    let node = start_node(config(backend).replacen("throttle:", &format!("{limits}\nthrottle:"), 1)).await;
    let gw = node.http.unwrap();
    let mut held = silent_connections(gw, "127.0.0.2", 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(closed_by_server(&mut held, Duration::from_millis(100)).await, 0);
    // More connections from the same address: its own oldest idle ones make room, so it
    // never holds more than five.
    let mut more = silent_connections(gw, "127.0.0.2", 5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(closed_by_server(&mut held, Duration::from_millis(200)).await, 5, "the older five were shed");
    assert_eq!(closed_by_server(&mut more, Duration::from_millis(100)).await, 0);
    // Another address is not affected.
    assert_eq!(get(gw, "pets.test", "/prod/files/x").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_survives_a_flood_of_silent_connections() {
    let backend = echo_backend().await;
    let node = start_node(config(backend)).await;
    let mut flood = silent_connections(node.admin, "127.0.0.1", 150).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = tokio::time::timeout(Duration::from_secs(2), get(node.admin, "admin", "/healthz")).await;
    assert_eq!(r.expect("the admin API waited behind silent connections").status, 200);
    // The admin listener holds few connections per address: the flood was shed, not kept.
    let closed = closed_by_server(&mut flood, Duration::from_millis(50)).await;
    assert!(closed >= 130, "only {closed} of 150 silent admin connections were closed");
}
