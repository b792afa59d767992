//! Upstreams worth the name, end to end: weighted targets, ejection of a dead target and
//! its return, HTTP/2 and TLS to the upstream, and pools that outlive a reload.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_tests::{NodeProcess, TestCa, get, raw_target, send, start_node, start_node_in};
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A backend that answers `backend <name> <protocol>` and counts its requests. Dropping the
/// handle kills it: the listener and every connection close.
struct Backend {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    _tasks: JoinSet<()>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), name, None).await
    }

    async fn on(listener: TcpListener, name: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        let mut tasks = JoinSet::new();
        let connections = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let held = connections.clone();
        tasks.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                let tls = tls.clone();
                held.lock().await.spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let text = format!("backend {name} {:?}", request.version());
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)))) }
                    });
                    let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = server.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = server.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        // Killing the backend aborts its connections too.
        tasks.spawn(async move {
            let _keep = connections;
            std::future::pending::<()>().await
        });
        Backend { addr, count, _tasks: tasks }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

fn config(integration: &str, extra_routes: &str) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
throttle: {{ rate: 1000000, burst: 1000000 }}
apis:
  - id: svc
    routes:
      - route: GET /work
        integration: {integration}
{extra_routes}
    stages:
      - name: prod
"#
    )
}

async fn metrics(node: &NodeProcess) -> String {
    let request = Request::get("/metrics").header("host", "admin").body(Full::new(Bytes::new())).unwrap();
    String::from_utf8_lossy(&send(node.admin, request).await.body).into_owned()
}

/// The value of `name{target="addr"}` in the metrics text (0 when absent).
fn metric(text: &str, name: &str, target: SocketAddr) -> f64 {
    let prefix = format!("{name}{{target=\"{target}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_targets_split_traffic_by_weight() {
    let (a, b, c) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let integration = format!(
        "{{ type: http_proxy, uri: \"http://svc.internal/work\", targets: [{{ address: \"{}\", weight: 1 }}, {{ address: \"{}\", weight: 2 }}, {{ address: \"{}\", weight: 3 }}] }}",
        a.addr, b.addr, c.addr
    );
    let node = start_node(config(&integration, "")).await;
    let http = node.http.unwrap();
    for _ in 0..600 {
        let reply = get(http, "svc.test", "/prod/work").await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    // Round robin by weight is exact over whole cycles of six.
    assert_eq!((a.count(), b.count(), c.count()), (100, 200, 300));

    // least_requests draws by weight too: the split is close, not exact.
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let integration = format!(
        "{{ type: http_proxy, uri: \"http://svc.internal/work\", balance: least_requests, targets: [{{ address: \"{}\", weight: 1 }}, {{ address: \"{}\", weight: 3 }}] }}",
        a.addr, b.addr
    );
    let node = start_node(config(&integration, "")).await;
    let http = node.http.unwrap();
    for _ in 0..400 {
        assert_eq!(get(http, "svc.test", "/prod/work").await.status, 200);
    }
    let share = a.count() as f64 / 400.0;
    assert!((0.1..=0.4).contains(&share), "weight 1 of 4 got {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_target_is_ejected_without_failed_requests_and_comes_back() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let integration = format!(
        "{{ type: http_proxy, uri: \"http://svc.internal/work\", health: {{ failures: 2, ejection: 1s }}, targets: [{{ address: \"{}\" }}, {{ address: \"{}\" }}] }}",
        a.addr, b.addr
    );
    let node = start_node(config(&integration, "")).await;
    let http = node.http.unwrap();
    for _ in 0..20 {
        assert_eq!(get(http, "svc.test", "/prod/work").await.status, 200);
    }
    assert!(a.count() > 0 && b.count() > 0);

    // Kill `a`: its connections close and new ones are refused. Every request still
    // succeeds (a request no connection took goes to the next target), and `a` is ejected.
    let dead = a.addr;
    drop(a);
    let before_b = b.count();
    let mut failed = 0;
    for _ in 0..100 {
        if get(http, "svc.test", "/prod/work").await.status != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "requests failed after the target died");
    assert_eq!(b.count() - before_b, 100);
    let text = metrics(&node).await;
    assert!(metric(&text, "meridian_upstream_ejections_total", dead) >= 1.0, "{text}");

    // It comes back on the same port: after the ejection it gets traffic again.
    let listener = TcpListener::bind(dead).await.unwrap();
    let back = Backend::on(listener, "a", None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while back.count() == 0 {
        assert!(Instant::now() < deadline, "the target never came back");
        assert_eq!(get(http, "svc.test", "/prod/work").await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_over_tls_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.issue(dir.path(), "backend.test");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("backend.test.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.path().join("backend.test.key")).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let tls = Backend::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), "tls", Some(acceptor)).await;
    let cleartext = Backend::start("h2c").await;
    let port = tls.addr.port();
    let integration = format!(
        "{{ type: http_proxy, uri: \"https://backend.test:{port}/work\", ca_file: ca.pem, http2: true, targets: [{{ address: \"127.0.0.1:{port}\" }}] }}"
    );
    let routes = format!(
        "      - route: GET /h1tls\n        integration: {{ type: http_proxy, uri: \"https://backend.test:{port}/work\", ca_file: ca.pem, targets: [{{ address: \"127.0.0.1:{port}\" }}] }}\n      - route: GET /h2c\n        integration: {{ type: http_proxy, uri: \"http://{}/work\", http2: true }}",
        cleartext.addr
    );
    let node = start_node_in(dir, config(&integration, &routes)).await;
    let http = node.http.unwrap();
    let reply = get(http, "svc.test", "/prod/work").await;
    assert_eq!((reply.status, &reply.body[..]), (200, &b"backend tls HTTP/2.0"[..]));
    let reply = get(http, "svc.test", "/prod/h1tls").await;
    assert_eq!((reply.status, &reply.body[..]), (200, &b"backend tls HTTP/1.1"[..]));
    let reply = get(http, "svc.test", "/prod/h2c").await;
    assert_eq!((reply.status, &reply.body[..]), (200, &b"backend h2c HTTP/2.0"[..]));
    // Many requests share one HTTP/2 connection.
    for _ in 0..20 {
        assert_eq!(get(http, "svc.test", "/prod/work").await.status, 200);
    }
    let text = metrics(&node).await;
    assert_eq!(metric(&text, "meridian_upstream_connections_opened_total", "127.0.0.1:0".parse().unwrap()), 0.0);
    let opened = text
        .lines()
        .find(|l| l.starts_with(&format!("meridian_upstream_connections_opened_total{{target=\"127.0.0.1:{port}\"}}")))
        .unwrap_or_default()
        .to_string();
    // One for HTTP/2, one (or a few) for the HTTP/1.1 route to the same target.
    assert!(!opened.is_empty(), "{text}");

    // A certificate for another name is refused: 502, never a silent downgrade.
    let wrong = format!(
        "{{ type: http_proxy, uri: \"https://other.test:{port}/work\", ca_file: ca.pem, targets: [{{ address: \"127.0.0.1:{port}\" }}] }}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let node = start_node_in(dir, config(&wrong, "")).await;
    assert_eq!(get(node.http.unwrap(), "svc.test", "/prod/work").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_one_route_keeps_the_connections_of_the_others() {
    let kept = Backend::start("kept").await;
    let changed = Backend::start("changed").await;
    let integration = format!("{{ type: http_proxy, uri: \"http://{}/work\" }}", kept.addr);
    let other = |body: &str| {
        format!(
            "      - route: GET /other\n        integration: {{ type: http_proxy, uri: \"http://{}/{body}\" }}",
            changed.addr
        )
    };
    let node = start_node(config(&integration, &other("one"))).await;
    let http = node.http.unwrap();
    for _ in 0..5 {
        assert_eq!(get(http, "svc.test", "/prod/work").await.status, 200);
        assert_eq!(get(http, "svc.test", "/prod/other").await.status, 200);
    }
    let opened = |text: &str| metric(text, "meridian_upstream_connections_opened_total", kept.addr);
    let before = opened(&metrics(&node).await);
    assert!(before >= 1.0);

    std::fs::write(node.config_path(), config(&integration, &other("two"))).unwrap();
    node.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node.stderr().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "no reload: {}", node.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..5 {
        assert_eq!(get(http, "svc.test", "/prod/work").await.status, 200);
    }
    assert_eq!(opened(&metrics(&node).await), before, "the reload threw the kept route's connections away");
}

#[test]
fn bad_targets_are_refused_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    let text = config(
        "{ type: http_proxy, uri: \"http://svc/work\", balance: fastest, targets: [] }",
        "      - route: GET /b\n        integration: { type: http_proxy, uri: \"http://svc/b\", targets: [{ address: \"no-port\", weight: 0 }], health: { failures: 0, ejection: 1ms } }\n      - route: GET /m\n        integration: { type: mock, targets: [{ address: \"127.0.0.1:1\" }] }",
    );
    std::fs::write(&file, text.replace("balance: fastest, ", "")).unwrap();
    let out = std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "apis[0].routes[0].integration.targets: name at least one target",
        "apis[0].routes[1].integration.targets[0].weight: must be from 1 to 100",
        "`no-port` is not a host:port",
        "health.failures: must be from 1 to 100",
        "health.ejection: a duration from 1s to 5m",
        "apis[0].routes[2].integration.targets: `targets` does not apply to a `mock` integration",
    ] {
        assert!(said.contains(expected), "missing `{expected}` in:\n{said}");
    }
    // An unknown balance is a structural error, named with its line.
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fastest"), "{out:?}");
}

/// Active health checks: a target that answers requests but fails its health check is taken
/// out of service (passive health alone would keep sending it traffic), and one passed check
/// brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_eject_a_sick_target_and_bring_it_back() {
    use std::sync::atomic::AtomicBool;
    let sick = Arc::new(AtomicBool::new(true));
    let target = |name: &'static str, sick: Option<Arc<AtomicBool>>| async move {
        meridian_tests::http_service(move |req| {
            let sick = sick.clone();
            async move {
                let unhealthy = sick.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
                let mut response = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                if req.uri().path() == "/healthz" && unhealthy {
                    *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                }
                response
            }
        })
        .await
    };
    let good = target("good", None).await;
    let flaky = target("flaky", Some(sick.clone())).await;
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: pets
    routes:
      - route: GET /pets
        integration:
          type: http_proxy
          uri: "http://pets.internal/pets"
          targets: [{{ address: "{good}" }}, {{ address: "{flaky}" }}]
          health: {{ failures: 2, ejection: 60s, check: {{ path: /healthz, interval: 1s, timeout: 500ms }} }}
    stages: [{{ name: prod }}]
"#
    ))
    .await;
    let gw = node.http.unwrap();
    let answers = |n: usize| async move {
        let mut seen = Vec::new();
        for _ in 0..n {
            seen.push(String::from_utf8_lossy(&get(gw, "pets.test", "/prod/pets").await.body).into_owned());
        }
        seen
    };
    // The checks run from the moment the table is in use, before any request: two failed
    // checks later the flaky target gets nothing, though it answers requests.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let first = answers(10).await;
    assert!(first.iter().all(|a| a == "good"), "ejected before the first request: {first:?}");
    // Healthy again: the next passed check brings it back long before its 60 s ejection ends.
    sick.store(false, Ordering::SeqCst);
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if answers(10).await.contains(&"flaky".to_string()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "a passed health check did not bring it back");
    }
    let metrics = String::from_utf8_lossy(&get(node.admin, "admin", "/metrics").await.body).into_owned();
    assert!(metrics.contains("meridian_upstream_health_checks_total"), "{metrics}");
}

/// An HTTP/2 (prior knowledge) backend that answers the first stream of each connection and
/// refuses every later one unprocessed (`REFUSED_STREAM`), as a server at its stream limit
/// or draining does. Counts the connections.
async fn one_stream_per_connection_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else { return };
                let mut answered = false;
                while let Some(Ok((request, mut respond))) = connection.accept().await {
                    if answered {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    answered = true;
                    // The answer names what it received: "answered", then the request's body.
                    tokio::spawn(async move {
                        let mut received = b"answered".to_vec();
                        let mut body = request.into_body();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            received.extend_from_slice(&chunk);
                        }
                        let response = http::Response::builder().status(200).body(()).unwrap();
                        if let Ok(mut body) = respond.send_response(response, false) {
                            let _ = body.send_data(Bytes::from(received), true);
                        }
                    });
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_an_http2_target_did_not_process_are_sent_again_on_a_new_connection() {
    let (backend, connections) = one_stream_per_connection_backend().await;
    let node =
        start_node(config(&format!("{{ type: http_proxy, uri: \"http://{backend}/work\", http2: true }}"), "")).await;
    let gateway = node.http.unwrap();
    // The first request opens the gateway's connection to the target; eight at once then
    // share it, and the target refuses their streams.
    assert_eq!(get(gateway, "svc", "/prod/work").await.status, 200);
    let mut calls = JoinSet::new();
    for _ in 0..8 {
        calls.spawn(async move { get(gateway, "svc", "/prod/work").await });
    }
    let mut statuses = Vec::new();
    while let Some(reply) = calls.join_next().await {
        let reply = reply.unwrap();
        statuses.push(reply.status);
        if reply.status == 200 {
            assert_eq!(&reply.body[..], b"answered");
        }
    }
    let log = std::fs::read_to_string(node.dir().join("stderr.log")).unwrap_or_default();
    assert_eq!(statuses, vec![200; 8], "every refused stream was sent again on a new connection: {log}");
    assert_eq!(connections.load(Ordering::SeqCst), 9, "each refused stream went to a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_an_http2_target_refused_are_sent_again_with_their_bodies() {
    let (backend, connections) = one_stream_per_connection_backend().await;
    let integration = format!("{{ type: http_proxy, uri: \"http://{backend}/work\", http2: true }}");
    let post_route = format!("      - route: POST /work\n        integration: {integration}\n");
    let node = start_node(config(&integration, &post_route)).await;
    let gateway = node.http.unwrap();
    assert_eq!(get(gateway, "svc", "/prod/work").await.status, 200);
    // Eight POSTs at once share the gateway's connection, whose target refuses their streams
    // unprocessed: each is sent again on a new connection, its whole body with it (a POST
    // too, since the target did not process it), and each client gets its own echo.
    let mut calls = JoinSet::new();
    for i in 0..8 {
        calls.spawn(async move {
            let body = format!("order {i}: {}", "x".repeat(10_000 + i));
            let request = Request::post("/prod/work").header("host", "svc").body(Full::new(Bytes::from(body.clone())));
            (body, send(gateway, request.unwrap()).await)
        });
    }
    while let Some(call) = calls.join_next().await {
        let (body, reply) = call.unwrap();
        let log = std::fs::read_to_string(node.dir().join("stderr.log")).unwrap_or_default();
        assert_eq!(reply.status, 200, "{log}");
        assert_eq!(reply.body, Bytes::from(format!("answered{body}")), "the target received the whole body");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 9, "each refused stream went to a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_that_stalls_is_cut_off_after_the_route_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A target that answers its head and 10 of the 100 bytes it announces, then nothing.
    let (backend, _) = raw_target(|mut tcp| async move {
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let node =
        start_node(config(&format!("{{ type: http_proxy, uri: \"http://{backend}/work\", timeout: 1s }}"), "")).await;
    let gateway = node.http.unwrap();
    let mut client = tokio::net::TcpStream::connect(gateway).await.unwrap();
    client.write_all(b"GET /prod/work HTTP/1.1\r\nhost: svc\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(read.is_ok(), "the gateway held the stalled response open: {text}");
    assert!(started.elapsed() < Duration::from_secs(10), "cut off after about the route's timeout");
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("0123456789"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_kept_connection_the_target_resets_is_sent_again() {
    use tokio::io::AsyncWriteExt;
    // A target that answers one request per connection, keeps the connection, and resets it
    // when the next request arrives (closing with that request unread): the keep-alive race a
    // target's idle timeout causes.
    let (backend, connections) = raw_target(|mut tcp| async move {
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nanswered").await;
        // The next request is left unread: closing with it unread resets the connection (the
        // kernel answers RST, not FIN).
        let _ = tcp.readable().await;
    })
    .await;
    let node = start_node(config(&format!("{{ type: http_proxy, uri: \"http://{backend}/work\" }}"), "")).await;
    let gateway = node.http.unwrap();
    for i in 0..5 {
        let reply = get(gateway, "svc", "/prod/work").await;
        let log = std::fs::read_to_string(node.dir().join("stderr.log")).unwrap_or_default();
        assert_eq!((reply.status, &reply.body[..]), (200, &b"answered"[..]), "request {i}: {log}");
    }
    // Each request after the first found its kept connection reset and took a new one.
    assert_eq!(connections.load(Ordering::SeqCst), 5);
}
