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

/// A page on `origin` whose script calls the gateway with `fetch` (simple, preflighted,
/// with credentials, and a route that answers 401) and writes what each call saw.
fn page(gateway: SocketAddr) -> String {
    format!(
        r#"<!doctype html><html><body><pre id="out">pending</pre><script>
const gw = "http://{gateway}/prod";
async function attempt(url, init) {{
  try {{ const r = await fetch(url, init); return r.status + " " + (await r.text()).slice(0, 20); }}
  catch (e) {{ return "blocked"; }}
}}
(async () => {{
  const results = {{}};
  results.simple = await attempt(gw + "/pets");
  results.preflighted = await attempt(gw + "/pets", {{method: "POST", headers: {{"content-type": "application/json", "x-trace": "1"}}, body: "{{}}"}});
  results.credentials = await attempt(gw + "/pets", {{credentials: "include"}});
  results.unauthorized = await attempt(gw + "/private");
  document.getElementById("out").textContent = JSON.stringify(results);
}})();
</script></body></html>"#
    )
}

/// Loads `url` in headless Chromium and returns the page's results.
fn browse(url: &str) -> serde_json::Value {
    let out = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom", url])
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.find("<pre id=\"out\">").map(|i| i + "<pre id=\"out\">".len()).unwrap_or(0);
    let text = &dom[start..dom[start..].find("</pre>").map_or(dom.len(), |e| start + e)];
    serde_json::from_str(&text.replace("&quot;", "\"")).unwrap_or_else(|_| panic!("no results in the page: {dom}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_calls_the_api_from_an_allowed_origin_and_is_blocked_from_another() {
    if !tools(&["chromium"]) {
        return;
    }
    // Two page servers: two origins. The gateway's address is known once it runs, so the
    // pages are served from a slot filled after it starts.
    let html = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let serve = |html: std::sync::Arc<std::sync::Mutex<String>>| {
        http_service(move |_| {
            let body = html.lock().unwrap().clone();
            async move {
                hyper::Response::builder()
                    .header("content-type", "text/html")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .unwrap()
            }
        })
    };
    let allowed_site = serve(html.clone()).await;
    let other_site = serve(html.clone()).await;
    let config = format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: pets
    cors:
      allow_origins: ["http://{allowed_site}"]
      allow_headers: [content-type, x-trace]
      allow_credentials: true
    authorizers:
      - {{ name: partners, type: custom, uri: "http://127.0.0.1:9/", identity_sources: [$request.header.x-token] }}
    routes:
      - {{ route: GET /pets, integration: {{ type: mock, body: pets }} }}
      - {{ route: POST /pets, integration: {{ type: mock, status: 201, body: created }} }}
      - {{ route: GET /private, authorizer: partners, integration: {{ type: mock, body: private }} }}
    stages: [{{ name: prod }}]
"#
    );
    let node = start_node(config).await;
    *html.lock().unwrap() = page(node.http.expect("http listener"));

    let seen = tokio::task::spawn_blocking(move || browse(&format!("http://{allowed_site}/"))).await.unwrap();
    assert_eq!(seen["simple"], "200 pets", "{seen}");
    assert_eq!(seen["preflighted"], "201 created", "{seen}");
    assert_eq!(seen["credentials"], "200 pets", "{seen}");
    assert!(seen["unauthorized"].as_str().unwrap().starts_with("401"), "the page reads the 401: {seen}");

    let seen = tokio::task::spawn_blocking(move || browse(&format!("http://{other_site}/"))).await.unwrap();
    for call in ["simple", "preflighted", "credentials", "unauthorized"] {
        assert_eq!(seen[call], "blocked", "{call} from a disallowed origin: {seen}");
    }
}
