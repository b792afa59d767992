//! The firewall end to end: a real `meridian serve` with ordered rules of every kind
//! (addresses, sizes, patterns, signatures, the body, rates and failed authorizations),
//! `allow`, `block` and `count`, clients connecting from different loopback addresses, and
//! trusted proxies' `X-Forwarded-For`. Rate rules across a cluster are in `cluster.rs`.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meridian_tests::*;

const CONFIG: &str = r#"
listen: { http: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
apis:
  - id: pets
    waf:
      trusted_proxies: [127.0.0.4/32]
      rules:
        - { name: office, action: allow, ip_in: [127.0.0.3/32] }
        - { name: blocked-net, action: block, ip_in: [127.0.0.2/32, "fd00::/8"] }
        - { name: no-admin, action: block, pattern: { part: path, contains: /admin } }
        - { name: big-query, action: block, size_over: { part: query, bytes: 100 } }
        - { name: scanner, action: block, pattern: { part: header, name: user-agent, regex: "(?i)sqlmap|nikto" } }
        - { name: probe-cookie, action: count, pattern: { part: cookie, name: session, contains: probe } }
        - { name: debug-param, action: block, pattern: { part: query, name: debug, regex: "^(1|true)$" } }
        - { name: attacks, action: block, signatures: [sqli, xss] }
    routes:
      - { route: GET /pets, integration: { type: mock, body: pets } }
      - { route: GET /admin, integration: { type: mock, body: admin } }
    stages:
      - name: prod
        waf:
          rules:
            - { name: stage-only, action: block, pattern: { part: header, name: x-test, contains: forbidden } }
  - id: plain
    routes:
      - { route: GET /admin, integration: { type: mock, body: plain admin } }
    stages: [{ name: prod }]
"#;

/// A GET from the client address `from`, with extra headers.
async fn get_from(gateway: SocketAddr, from: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0)).unwrap();
    let stream = socket.connect(gateway).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::get(path).header("host", host);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender.send_request(request.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firewall_rules_block_allow_and_count_in_order() {
    let node = start_node(CONFIG.to_string()).await;
    let gw = node.http.expect("http listener");
    let pets = |from: &'static str, path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        get_from(gw, from, "pets.test", path, headers)
    };
    let blocked_by = |r: &Reply| r.json()["message"].as_str().unwrap_or("").to_string();

    assert_eq!(pets("127.0.0.1", "/prod/pets", &[]).await.status, 200);
    for (path, headers, rule) in [
        ("/prod/admin", &[][..], "no-admin"),
        (
            "/prod/pets?q=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            &[][..],
            "big-query",
        ),
        ("/prod/pets", &[("user-agent", "sqlmap/1.7")][..], "scanner"),
        ("/prod/pets?debug=true", &[][..], "debug-param"),
        ("/prod/pets", &[("x-test", "forbidden")][..], "stage-only"),
        ("/prod/pets?q=%27%20OR%20%271%27%3D%271", &[][..], "attacks"),
        ("/prod/pets", &[("cookie", "pref=%3Cscript%3Ealert(1)%3C%2Fscript%3E")][..], "attacks"),
    ] {
        let r = get_from(gw, "127.0.0.1", "pets.test", path, headers).await;
        assert_eq!(r.status, 403, "{path}");
        assert!(blocked_by(&r).contains(&format!("`{rule}`")), "{path}: {}", blocked_by(&r));
    }
    // `debug=0` is not the pattern; the same path on an API without rules is served.
    assert_eq!(pets("127.0.0.1", "/prod/pets?debug=0", &[]).await.status, 200);
    assert_eq!(pets("127.0.0.1", "/prod/pets?name=O%27Brien&sort=price%3C100", &[]).await.status, 200);
    assert_eq!(get_from(gw, "127.0.0.1", "plain.test", "/prod/admin", &[]).await.status, 200);

    // Count mode changes nothing but the count.
    let before = waf_count(&node, "probe-cookie").await;
    let r = pets("127.0.0.1", "/prod/pets", &[("cookie", "theme=dark; session=probe-42")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(waf_count(&node, "probe-cookie").await, before + 1.0);

    // Addresses: a blocked network, and an allowed one whose `allow` ends the evaluation.
    assert!(blocked_by(&pets("127.0.0.2", "/prod/pets", &[]).await).contains("`blocked-net`"));
    assert_eq!(pets("127.0.0.3", "/prod/admin", &[]).await.status, 200);

    // An untrusted client cannot choose its address with X-Forwarded-For...
    let r = pets("127.0.0.1", "/prod/admin", &[("x-forwarded-for", "127.0.0.3")]).await;
    assert_eq!(r.status, 403);
    let r = pets("127.0.0.2", "/prod/pets", &[("x-forwarded-for", "127.0.0.3")]).await;
    assert!(blocked_by(&r).contains("`blocked-net`"));
    // ... a trusted proxy's header says who the client is.
    assert_eq!(pets("127.0.0.4", "/prod/admin", &[("x-forwarded-for", "127.0.0.3")]).await.status, 200);
    let r = pets("127.0.0.4", "/prod/pets", &[("x-forwarded-for", "127.0.0.3, 127.0.0.2")]).await;
    assert!(blocked_by(&r).contains("`blocked-net`"), "the last untrusted hop is the client");

    // The access log names the rule that blocked a request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !node.stdout().contains("\"reason\":\"waf rule no-admin\"") {
        assert!(std::time::Instant::now() < deadline, "no access-log line names the rule:\n{}", node.stdout());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn waf_count(node: &NodeProcess, rule: &str) -> f64 {
    let metrics = get(node.admin, "admin", "/metrics").await;
    String::from_utf8_lossy(&metrics.body)
        .lines()
        .find(|l| l.starts_with("meridian_waf_matches_total") && l.contains(&format!("rule=\"{rule}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A POST of `body` through curl (chunked when `chunked`, so no length is declared), with
/// the echo backend sending the body back: the status and what came back.
fn post(gateway: SocketAddr, body: &[u8], chunked: bool) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let url = format!("http://{gateway}/prod/orders");
    let data = format!("@{}", file.display());
    let mut args = vec!["-s", "-o", "-", "-w", "\n%{http_code}", "-H", "host: shop.test", "-H", "x-echo-body: stream"];
    if chunked {
        args.extend(["-H", "transfer-encoding: chunked"]);
    }
    args.extend(["--data-binary", &data, &url]);
    let out = curl(&args);
    let text = out.stdout;
    let split = text.iter().rposition(|b| *b == b'\n').expect("curl printed a status");
    let status = String::from_utf8_lossy(&text[split + 1..]).trim().parse().expect("a status");
    (status, text[..split].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_rules_inspect_the_first_bytes_and_rate_rules_block_clients() {
    if !tools(&["curl"]) {
        return;
    }
    let echo = echo_backend().await;
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: shop
    waf:
      inspect_body_bytes: 64
      rules:
        - {{ name: body-size, action: block, size_over: {{ part: body, bytes: 1000 }} }}
        - {{ name: no-keys, action: block, pattern: {{ part: body, contains: "BEGIN PRIVATE KEY" }} }}
        - {{ name: flood, action: block, rate_over: {{ count: 5, window: 10s, block_for: 10s, key: "header:x-client" }} }}
        - {{ name: guessing, action: block, failed_auth_over: {{ count: 3, window: 10s, block_for: 10s }} }}
    routes:
      - {{ route: POST /orders, integration: {{ type: http_proxy, uri: "http://{echo}/orders" }} }}
      - {{ route: GET /login, integration: {{ type: mock, status: 401, body: who are you }} }}
      - {{ route: GET /ok, integration: {{ type: mock, body: ok }} }}
    stages: [{{ name: prod }}]
"#
    ))
    .await;
    let gw = node.http.expect("http listener");
    let blocked_by = |r: &Reply| r.json()["message"].as_str().unwrap_or("").to_string();

    // Sizes: declared (decided on the head) and undeclared (counted as the body arrives).
    let big = vec![b'x'; 2000];
    assert_eq!(post(gw, &big, false).0, 403);
    let (status, answer) = post(gw, &big, true);
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&answer).contains("`body-size`"));
    // A pattern within the first 64 bytes blocks; beyond them it is not looked at, and the
    // whole body, inspected prefix and the rest, reaches the backend intact.
    let mut early = b"{\"note\": \"-----BEGIN PRIVATE KEY-----\"}".to_vec();
    early.resize(900, b' ');
    for chunked in [false, true] {
        assert_eq!(post(gw, &early, chunked).0, 403, "chunked: {chunked}");
    }
    let mut late = vec![b' '; 100];
    late.extend_from_slice(b"BEGIN PRIVATE KEY");
    late.resize(900, b'z');
    for chunked in [false, true] {
        let (status, echoed) = post(gw, &late, chunked);
        assert_eq!(status, 200, "chunked: {chunked}");
        assert_eq!(echoed, late, "the backend got the body intact (chunked: {chunked})");
    }

    // A client (by header) over 5 requests in 10 s is blocked; others, and requests
    // without the header, are not counted against it.
    let ok =
        |headers: &'static [(&'static str, &'static str)]| get_from(gw, "127.0.0.1", "shop.test", "/prod/ok", headers);
    for _ in 0..5 {
        assert_eq!(ok(&[("x-client", "a")]).await.status, 200);
    }
    let r = ok(&[("x-client", "a")]).await;
    assert_eq!(r.status, 403);
    assert!(blocked_by(&r).contains("`flood`"), "{}", blocked_by(&r));
    assert_eq!(ok(&[("x-client", "b")]).await.status, 200);
    for _ in 0..10 {
        assert_eq!(ok(&[]).await.status, 200);
    }

    // Three failed authorizations from one address in 10 s are allowed, the fourth makes
    // it a guesser: blocked everywhere on the API, while other addresses are not.
    for _ in 0..4 {
        assert_eq!(get_from(gw, "127.0.0.5", "shop.test", "/prod/login", &[]).await.status, 401);
    }
    let r = get_from(gw, "127.0.0.5", "shop.test", "/prod/ok", &[]).await;
    assert_eq!(r.status, 403);
    assert!(blocked_by(&r).contains("`guessing`"), "{}", blocked_by(&r));
    assert_eq!(get_from(gw, "127.0.0.6", "shop.test", "/prod/ok", &[]).await.status, 200);
    assert_eq!(waf_count(&node, "guessing").await, 1.0);
}
