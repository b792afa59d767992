//! Route conditions end to end with curl: routes of one path told apart by headers and query
//! parameters (more conditions first), a conditioned path falling through to a less specific
//! one, 404 (not 405) when only conditions failed, and `meridian validate` on bad conditions.

use std::net::SocketAddr;

use meridian_tests::*;

const CONFIG: &str = r#"
listen: { http: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
apis:
  - id: pets
    routes:
      - { route: GET /pets, integration: { type: mock, body: v1 } }
      - route: GET /pets
        match: { headers: [{ name: x-version, equals: "2" }] }
        integration: { type: mock, body: v2 }
      - route: GET /pets
        match: { query: [{ name: format, regex: "^(xml|XML)$" }] }
        integration: { type: mock, body: xml }
      - route: GET /pets
        match:
          headers: [{ name: x-version, equals: "2" }]
          query: [{ name: format, regex: "^(xml|XML)$" }]
        integration: { type: mock, body: v2 xml }
      - route: GET /pets/{id}
        match: { headers: [{ name: x-beta, present: true }] }
        integration: { type: mock, body: beta pet }
      - { route: "ANY /{proxy+}", integration: { type: mock, body: fallback } }
    stages: [{ name: prod }]
  - id: shop
    routes:
      - route: POST /orders
        match: { headers: [{ name: content-type, regex: "^application/json" }] }
        integration: { type: mock, body: json order }
    stages: [{ name: prod }]
"#;

fn get(gateway: SocketAddr, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let host = if path.starts_with("/orders") { "Host: shop.test" } else { "Host: pets.test" };
    let url = format!("http://{gateway}/prod{path}");
    let mut args = vec!["-s", "-w", "\n%{http_code}", "-X", method, "-H", host];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    args.push(&url);
    let out = curl(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_of_one_path_are_told_apart_by_headers_and_query() {
    if !tools(&["curl"]) {
        return;
    }
    let node = start_node(CONFIG.to_string()).await;
    let gw = node.http.expect("http listener");
    let body = |method, path, headers: &[&str]| get(gw, method, path, headers).1;

    assert_eq!(body("GET", "/pets", &[]), "v1");
    assert_eq!(body("GET", "/pets", &["x-version: 2"]), "v2");
    assert_eq!(body("GET", "/pets", &["x-version: 3"]), "v1");
    assert_eq!(body("GET", "/pets?format=xml", &[]), "xml");
    assert_eq!(body("GET", "/pets?format=XML&page=2", &["x-version: 1"]), "xml");
    assert_eq!(body("GET", "/pets?format=json", &[]), "v1");
    // Both conditions hold for two routes: the one with more conditions serves.
    assert_eq!(body("GET", "/pets?format=xml", &["x-version: 2"]), "v2 xml");
    // A conditioned path whose conditions fail lets a less specific one serve.
    assert_eq!(body("GET", "/pets/7", &["x-beta: yes"]), "beta pet");
    assert_eq!(body("GET", "/pets/7", &[]), "fallback");
    assert_eq!(body("DELETE", "/pets", &[]), "fallback");

    // Only conditions failed, and no other path takes it: 404, not 405.
    let (status, refused) = get(gw, "POST", "/orders", &["content-type: text/plain"]);
    assert_eq!(status, 404, "{refused}");
    assert!(refused.contains("no route matches this request"), "{refused}");
    assert_eq!(get(gw, "POST", "/orders", &["content-type: application/json"]).1, "json order");
    let (status, _) = get(gw, "GET", "/orders", &["content-type: application/json"]);
    assert_eq!(status, 405, "the path has routes, none for GET");
}

#[test]
fn bad_conditions_are_refused_with_their_line() {
    let route = |conditions: &str| {
        format!(
            "listen: {{ http: \"127.0.0.1:0\" }}\napis:\n  - id: pets\n    routes:\n      - route: GET /pets\n        match: {conditions}\n        integration: {{ type: mock }}\n      - route: GET /pets\n        match: {{ headers: [{{ name: x-a, equals: \"1\" }}] }}\n        integration: {{ type: mock }}\n    stages: [{{ name: prod }}]\n"
        )
    };
    for (conditions, expected) in [
        ("{ headers: [{ name: \"bad name\", equals: x }] }", "`bad name` is not a header name"),
        (
            "{ headers: [{ name: x-a, equals: x, present: true }] }",
            "exactly one of `equals`, `regex` or `present: true`",
        ),
        ("{ headers: [{ name: x-a }] }", "exactly one of"),
        ("{ query: [{ name: q, regex: \"(\" }] }", "match.query[0].regex: not a regular expression"),
        ("{ query: [{ name: \"\", present: true }] }", "name the query parameter"),
        ("{}", "name at least one header or query condition"),
        ("{ headers: [{ name: X-A, equals: \"1\" }] }", "is declared twice with the same `match`"),
        ("{ headers: [{ name: x-a, equals: \"1\" }], cookies: [] }", "unknown field `cookies`"),
    ] {
        let out = validate(&route(conditions));
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{conditions} was accepted");
        assert!(text.contains(expected), "{conditions}: {text}");
        assert!(text.contains("line"), "{conditions}: the error names its line: {text}");
    }
    let ok = validate(&route("{ headers: [{ name: x-b, present: true }], query: [{ name: q, regex: \"^1$\" }] }"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}
