//! `meridian explain request` agrees with what real requests get: for a table of requests
//! (firewall rules of several kinds, a throttle, a JWT authorizer, CORS, mock and proxied
//! routes, no route at all), the explained outcome is the status a real request from the
//! same address receives; and explaining counts nothing.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meridian_tests::*;

type Headers = Vec<(String, String)>;

/// A request from `from` with `headers`: its status.
async fn status_from(gateway: SocketAddr, from: &str, method: &str, path: &str, headers: &[(String, String)]) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0)).unwrap();
    let stream = socket.connect(gateway).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::builder().method(method).uri(path).header("host", "pets.test");
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let response = sender.send_request(request.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

/// The explanation of the same request, through the CLI.
fn explain(
    node: &NodeProcess,
    from: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> serde_json::Value {
    let url = format!("http://pets.test{path}");
    let mut args = vec!["explain", "request", method, &url, "--client-ip", from, "-o", "json"];
    let lines: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    for line in &lines {
        args.extend(["-H", line]);
    }
    let out = cli(&args, node);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The status an explanation says the client gets (a forwarded request: what the echo
/// backend answers, 200).
fn explained_status(v: &serde_json::Value) -> u16 {
    let outcome = &v["outcome"];
    match outcome["result"].as_str() {
        Some("forwarded") => 200,
        _ => outcome["status"].as_u64().unwrap_or_else(|| panic!("no status in {v}")) as u16,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_real_requests_and_counts_nothing() {
    let echo = echo_backend().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "0123456789abcdef0123\n").unwrap();
    let node = start_node_in(
        dir,
        format!(
            r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0", token_file: admin.token }}
apis:
  - id: pets
    cors: {{ allow_origins: ["https://app.test"] }}
    authorizers:
      - {{ name: users, type: jwt, algorithms: [ES256], keys: [{{ jwk: {jwk} }}], audience: [pets] }}
    waf:
      rules:
        - {{ name: office, action: allow, ip_in: [127.0.0.3/32] }}
        - {{ name: banned, action: block, ip_in: [127.0.0.2/32] }}
        - {{ name: no-admin, action: block, pattern: {{ part: path, contains: /admin }} }}
        - {{ name: probe, action: count, pattern: {{ part: header, name: x-probe, contains: "1" }} }}
        - {{ name: attacks, action: block, signatures: [sqli, xss] }}
        - {{ name: flood, action: block, rate_over: {{ count: 2, window: 60s, block_for: 60s, key: "header:x-client" }} }}
    routes:
      - {{ route: GET /pets, integration: {{ type: http_proxy, uri: "http://{echo}/pets" }} }}
      - {{ route: GET /admin, integration: {{ type: mock, body: admin }} }}
      - {{ route: GET /me, authorizer: users, integration: {{ type: mock, status: 203, body: me }} }}
      - {{ route: POST /pets, integration: {{ type: mock, status: 201, body: created }} }}
    stages: [{{ name: prod }}]
"#,
            jwk = serde_json::to_string(&jwk).unwrap()
        ),
    )
    .await;
    let gw = node.http.expect("http listener");
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let token = |aud: &str| {
        let claims = serde_json::json!({ "sub": "ana", "aud": aud, "exp": exp });
        format!("Bearer {}", jsonwebtoken::encode(&header, &claims, &encoding).unwrap())
    };
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let good = token("pets");
    let wrong_audience = token("shop");
    // From, method, path, headers; the status a real request gets, and who decides it.
    let table: Vec<(&str, &str, &str, Headers, u16, &str)> = vec![
        ("127.0.0.1", "GET", "/prod/pets", h(&[]), 200, "forwarded"),
        ("127.0.0.1", "GET", "/prod/pets?q=%27%20OR%201%3D1--", h(&[]), 403, "waf"),
        ("127.0.0.1", "GET", "/prod/admin", h(&[]), 403, "waf"),
        ("127.0.0.3", "GET", "/prod/admin", h(&[]), 200, "mocked"),
        ("127.0.0.2", "GET", "/prod/pets", h(&[]), 403, "waf"),
        ("127.0.0.1", "GET", "/prod/pets", h(&[("x-probe", "1")]), 200, "forwarded"),
        ("127.0.0.1", "GET", "/prod/me", h(&[]), 401, "jwt_authorizer"),
        ("127.0.0.1", "GET", "/prod/me", h(&[("authorization", &wrong_audience)]), 401, "jwt_authorizer"),
        ("127.0.0.1", "GET", "/prod/me", h(&[("authorization", &good)]), 203, "mocked"),
        ("127.0.0.1", "POST", "/prod/pets", h(&[]), 201, "mocked"),
        ("127.0.0.1", "DELETE", "/prod/pets", h(&[]), 405, "routing"),
        ("127.0.0.1", "GET", "/prod/nothing", h(&[]), 404, "routing"),
        (
            "127.0.0.1",
            "OPTIONS",
            "/prod/pets",
            h(&[("origin", "https://app.test"), ("access-control-request-method", "POST")]),
            204,
            "cors",
        ),
        (
            "127.0.0.1",
            "OPTIONS",
            "/prod/pets",
            h(&[("origin", "https://evil.test"), ("access-control-request-method", "POST")]),
            403,
            "cors",
        ),
    ];
    for (from, method, path, headers, expected, by) in &table {
        let explained = explain(&node, from, method, path, headers);
        let real = status_from(gw, from, method, path, headers).await;
        assert_eq!(real, *expected, "{from} {method} {path} {headers:?}: the real request");
        assert_eq!(explained_status(&explained), real, "{from} {method} {path} {headers:?}: {explained:#}");
        let outcome = &explained["outcome"];
        let decided_by = outcome["by"].as_str().or(outcome["result"].as_str()).unwrap_or("");
        assert_eq!(decided_by, *by, "{method} {path}: {explained:#}");
    }

    // What each stage found: the rule that matched, the authorizer's identity.
    let probe = explain(&node, "127.0.0.1", "GET", "/prod/pets", &h(&[("x-probe", "1")]));
    let waf = probe["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "waf").expect("a waf step");
    assert_eq!(waf["notes"][0], "waf rule `probe` matched (count)", "{probe:#}");
    let me = explain(&node, "127.0.0.1", "GET", "/prod/me", &h(&[("authorization", &good)]));
    assert_eq!(me["outcome"]["authorizer"]["name"], "pets/users");
    assert_eq!(me["outcome"]["authorizer"]["context"]["sub"], "ana");
    assert_eq!(probe["route"]["chain"], serde_json::json!(["cors", "waf", "throttle"]));
    let throttle = probe["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "throttle").unwrap();
    assert!(throttle["notes"][0].as_str().unwrap().starts_with("limits "), "{probe:#}");

    // Explaining counts nothing: however often a client is explained, its first two real
    // requests are served, and only then does the explanation change.
    let client = h(&[("x-client", "c1")]);
    for _ in 0..5 {
        assert_eq!(explain(&node, "127.0.0.1", "GET", "/prod/pets", &client)["outcome"]["result"], "forwarded");
    }
    for _ in 0..2 {
        assert_eq!(status_from(gw, "127.0.0.1", "GET", "/prod/pets", &client).await, 200);
    }
    let flooded = explain(&node, "127.0.0.1", "GET", "/prod/pets", &client);
    assert_eq!(flooded["outcome"]["reason"], "waf rule flood", "{flooded:#}");
    assert_eq!(status_from(gw, "127.0.0.1", "GET", "/prod/pets", &client).await, 403);

    // Text for people; a bad description is a clear error.
    let url = "http://pets.test/prod/admin";
    let out = cli(&["explain", "request", "GET", url], &node);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("outcome    403 by waf"), "{text}");
    assert!(text.contains("[waf rule no-admin]"), "{text}");
    let out = cli(&["explain", "request", "GET", url, "-H", "no colon"], &node);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Name: value"), "{out:?}");
}
