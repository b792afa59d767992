//! CORS end to end with curl: a real `meridian serve`, requests from allowed and disallowed
//! origins, preflights (answered before authorization), a 401 that still carries the
//! headers, subdomain patterns, a route's own settings, and `Vary: Origin` on every answer.

use std::net::SocketAddr;

use meridian_tests::*;

const CONFIG: &str = r#"
listen: { http: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
apis:
  - id: pets
    cors:
      allow_origins: [https://app.example.test, https://*.partner.test]
      allow_methods: [GET, POST]
      allow_headers: [content-type, authorization]
      expose_headers: [x-request-id]
      max_age: 5m
      allow_credentials: true
    authorizers:
      - { name: partners, type: custom, uri: "http://127.0.0.1:9/", identity_sources: [$request.header.x-token] }
    routes:
      - { route: GET /pets, integration: { type: mock, body: pets } }
      - { route: POST /pets, integration: { type: mock, status: 201, body: created } }
      - { route: GET /private, authorizer: partners, integration: { type: mock, body: private } }
      - route: GET /public
        cors: { allow_origins: ["*"] }
        integration: { type: mock, body: public }
    stages: [{ name: prod }]
  - id: plain
    routes:
      - { route: GET /thing, integration: { type: mock, body: thing } }
    stages: [{ name: prod }]
"#;

/// The status and lower-cased headers of a curl request.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Answer {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> String {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>().join(", ")
    }
}

fn request(gateway: SocketAddr, host: &str, method: &str, path: &str, headers: &[&str]) -> Answer {
    let url = format!("http://{gateway}{path}");
    let host = format!("Host: {host}");
    let mut args = vec!["-s", "-o", "/dev/null", "-D", "-", "-X", method, "-H", &host];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    args.push(&url);
    let out = curl(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer { status, headers }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_preflights_and_rejections_as_curl_sees_them() {
    if !tools(&["curl"]) {
        return;
    }
    let node = start_node(CONFIG.to_string()).await;
    let gw = node.http.expect("http listener");
    let pets = |method: &str, path: &str, headers: &[&str]| request(gw, "pets.test", method, path, headers);
    let app = "Origin: https://app.example.test";

    // An allowed origin gets the headers; credentials and exposed headers too.
    let a = pets("GET", "/prod/pets", &[app]);
    assert_eq!(a.status, 200);
    assert_eq!(a.get("access-control-allow-origin"), Some("https://app.example.test"));
    assert_eq!(a.get("access-control-allow-credentials"), Some("true"));
    assert_eq!(a.get("access-control-expose-headers"), Some("x-request-id"));
    assert!(a.all("vary").contains("Origin"));

    // Another origin is answered (CORS is the browser's to enforce) without them.
    let a = pets("GET", "/prod/pets", &["Origin: https://evil.test"]);
    assert_eq!(a.status, 200);
    assert_eq!(a.get("access-control-allow-origin"), None);
    assert!(a.all("vary").contains("Origin"), "Vary: Origin on every answer");
    // So is a request without an origin.
    assert!(pets("GET", "/prod/pets", &[]).all("vary").contains("Origin"));

    // Subdomain patterns: any subdomain, never the apex or a look-alike.
    for (origin, allowed) in [
        ("https://a.partner.test", true),
        ("https://a.b.partner.test", true),
        ("https://partner.test", false),
        ("https://evilpartner.test", false),
        ("http://a.partner.test", false),
    ] {
        let a = pets("GET", "/prod/pets", &[&format!("Origin: {origin}")]);
        assert_eq!(a.get("access-control-allow-origin").is_some(), allowed, "{origin}");
    }

    // A preflight is answered by the gateway: 204 with methods, headers and max age.
    let preflight = ["Access-Control-Request-Method: POST", "Access-Control-Request-Headers: content-type"];
    let a = pets("OPTIONS", "/prod/pets", &[app, preflight[0], preflight[1]]);
    assert_eq!(a.status, 204);
    assert_eq!(a.get("access-control-allow-origin"), Some("https://app.example.test"));
    assert_eq!(a.get("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(a.get("access-control-allow-headers"), Some("content-type, authorization"));
    assert_eq!(a.get("access-control-max-age"), Some("300"));
    assert_eq!(a.get("access-control-allow-credentials"), Some("true"));
    // ... and refused for another origin.
    let a = pets("OPTIONS", "/prod/pets", &["Origin: https://evil.test", preflight[0]]);
    assert_eq!(a.status, 403);
    assert_eq!(a.get("access-control-allow-origin"), None);

    // Before authorization: the preflight of a route behind an authorizer passes, and the
    // 401 of its real request still carries the headers.
    let a = pets("OPTIONS", "/prod/private", &[app, "Access-Control-Request-Method: GET"]);
    assert_eq!(a.status, 204);
    let a = pets("GET", "/prod/private", &[app]);
    assert_eq!(a.status, 401);
    assert_eq!(a.get("access-control-allow-origin"), Some("https://app.example.test"));

    // A route's own settings replace the API's: any origin, `*`, no credentials.
    let a = pets("GET", "/prod/public", &["Origin: https://anyone.test"]);
    assert_eq!(a.get("access-control-allow-origin"), Some("*"));
    assert_eq!(a.get("access-control-allow-credentials"), None);

    // An API without CORS: no headers, and a preflight is an ordinary OPTIONS (405 here).
    let plain = |method: &str, headers: &[&str]| request(gw, "plain.test", method, "/prod/thing", headers);
    let a = plain("GET", &[app]);
    assert_eq!((a.status, a.get("access-control-allow-origin")), (200, None));
    assert_eq!(plain("OPTIONS", &[app, "Access-Control-Request-Method: GET"]).status, 405);
}
