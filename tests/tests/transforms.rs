//! Redirects, rewrites and header and query transforms end to end: curl follows nothing and
//! reads the `Location`s; the echo backend shows what arrived upstream (path, Host, headers,
//! query) after a prefix rewrite, a pattern rewrite and a route's transforms, whose values
//! read the authorizer's context, the stage's variables, the request and its path; a value
//! that cannot be a header is left out at request time, and every invalid transform is
//! refused by `meridian validate` with its line.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use meridian_tests::*;

fn config(echo: SocketAddr, authorizer: SocketAddr) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: shop
    authorizers:
      - {{ name: gate, type: custom, uri: "http://{authorizer}/", identity_sources: [$request.header.x-token] }}
    routes:
      - route: GET /old/{{id}}
        integration: {{ type: redirect, uri: "https://new.example.test/items/{{id}}", status: 301 }}
      - route: GET /moved/{{rest+}}
        integration: {{ type: redirect, uri: "/v2/{{rest}}?from=moved", status: 308 }}
      - route: GET /drop
        integration: {{ type: redirect, uri: "/landing", keep_query: false }}
      - route: "ANY /api/{{proxy+}}"
        authorizer: gate
        integration:
          type: http_proxy
          uri: "http://{echo}/api/{{proxy}}"
          rewrite: {{ path: {{ prefix: /api, replacement: /v2 }}, host: internal.example.test }}
        transform:
          request:
            headers:
              set:
                x-tenant: $context.authorizer.tenant
                x-request: $context.requestId
                x-client: $context.identity.sourceIp
                x-env: ${{stageVariables.env}}
                x-item: item-$request.path.proxy
                x-q: $request.querystring.q
              append: {{ x-list: gw }}
              remove: [x-token]
            query:
              set: {{ version: "2" }}
              remove: [debug]
          response:
            headers:
              set: {{ x-served-by: "meridian ${{stageVariables.env}}", x-tenant: $context.authorizer.tenant }}
      - route: GET /users/{{user}}/repos/{{repo}}
        integration:
          type: http_proxy
          uri: "http://{echo}/users/{{user}}/repos/{{repo}}"
          rewrite: {{ path: {{ regex: "^/users/([^/]+)/repos/(.*)$", replacement: "/repos/$2/owner/$1" }} }}
    stages: [{{ name: prod, variables: {{ env: live }} }}]
"#
    )
}

/// curl's status and headers (lower-cased names) and body, following no redirect.
fn curl_get(gateway: SocketAddr, path: &str, headers: &[&str]) -> (u16, Vec<(String, String)>, String) {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let url = format!("http://{gateway}/prod{path}");
    let mut args = vec!["-s", "-D", head.to_str().unwrap(), "-H", "Host: shop.test"];
    for h in headers {
        args.push("-H");
        args.push(h);
    }
    args.push(&url);
    let out = curl(&args);
    let head = std::fs::read_to_string(head).unwrap_or_default();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_rewrites_and_transforms_as_the_upstream_and_curl_see_them() {
    if !tools(&["curl"]) {
        return;
    }
    let echo = echo_backend().await;
    let authorizer = http_service(|_| async {
        hyper::Response::new(Full::new(Bytes::from_static(
            b"{\"isAuthorized\": true, \"context\": {\"tenant\": \"acme\"}}",
        )))
    })
    .await;
    let node = start_node(config(echo, authorizer)).await;
    let gw = node.http.expect("http listener");

    // Redirects: another origin with a capture, the query kept or replaced or dropped.
    let (status, headers, _) = curl_get(gw, "/old/42?ref=mail", &[]);
    assert_eq!((status, header(&headers, "location")), (301, Some("https://new.example.test/items/42?ref=mail")));
    let (status, headers, _) = curl_get(gw, "/moved/a/b/c?x=1", &[]);
    assert_eq!((status, header(&headers, "location")), (308, Some("/v2/a/b/c?from=moved")));
    let (status, headers, _) = curl_get(gw, "/drop?x=1", &[]);
    assert_eq!((status, header(&headers, "location")), (302, Some("/landing")));
    // curl -L follows it to the new place on the gateway (which has no such route).
    let followed = curl(&[
        "-s",
        "-L",
        "-o",
        "/dev/null",
        "-w",
        "%{url_effective}",
        "-H",
        "Host: shop.test",
        &format!("http://{gw}/prod/drop"),
    ]);
    assert!(String::from_utf8_lossy(&followed.stdout).ends_with("/landing"));

    // A prefix rewrite and the route's transforms, as the upstream received them.
    let (status, headers, body) =
        curl_get(gw, "/api/pets/7?debug=1&page=3&q=hello", &["x-token: secret", "x-list: client", "x-tenant: forged"]);
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["path"], "/v2/pets/7");
    assert_eq!(seen["query"], "page=3&q=hello&version=2");
    let h = &seen["headers"];
    assert_eq!(h["host"], "internal.example.test");
    assert_eq!(h["x-tenant"], "acme", "the authorizer's context, not what the client sent");
    assert_eq!(h["x-env"], "live");
    assert_eq!(h["x-item"], "item-pets/7");
    assert_eq!(h["x-q"], "hello");
    assert_eq!(h["x-list"], "client, gw");
    assert_eq!(h["x-client"], "127.0.0.1");
    assert!(h.get("x-token").is_none(), "removed before the upstream");
    assert_eq!(h["x-request"].as_str(), header(&headers, "x-request-id"), "the gateway's request id");
    assert_eq!(header(&headers, "x-served-by"), Some("meridian live"));
    assert_eq!(header(&headers, "x-tenant"), Some("acme"));

    // A decoded query value with a line break cannot be a header: that edit is left out.
    let (status, _, body) = curl_get(gw, "/api/pets?q=a%0Ab", &["x-token: secret"]);
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(seen["headers"].get("x-q").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-tenant"], "acme", "the other edits still apply");

    // A pattern rewrite with captures.
    let (status, _, body) = curl_get(gw, "/users/ada/repos/engine", &[]);
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["path"], "/repos/engine/owner/ada");
}

#[test]
fn invalid_transforms_rewrites_and_redirects_are_refused_with_their_line() {
    let route = |body: &str| {
        format!(
            "listen: {{ http: \"127.0.0.1:0\" }}\napis:\n  - id: shop\n    routes:\n      - route: GET /x/{{id}}\n{body}\n    stages: [{{ name: prod }}]\n"
        )
    };
    let proxy = "        integration: { type: http_proxy, uri: \"http://127.0.0.1:9/x\" }";
    for (body, expected) in [
        (format!("{proxy}\n        transform: {{ request: {{ headers: {{ set: {{ host: a }} }} }} }}"), "a transform cannot change it"),
        (format!("{proxy}\n        transform: {{ request: {{ headers: {{ remove: [content-length] }} }} }}"), "a transform cannot change it"),
        (format!("{proxy}\n        transform: {{ request: {{ headers: {{ set: {{ x-a: \"a\\nb\" }} }} }} }}"), "cannot be part of a header value"),
        (format!("{proxy}\n        transform: {{ request: {{ headers: {{ set: {{ x-a: $context.nothing }} }} }} }}"), "is not a value a transform can read"),
        (format!("{proxy}\n        transform: {{ response: {{ headers: {{ set: {{ x-a: $request.path.nope }} }} }} }}"), "the route captures no `nope`"),
        (format!("{proxy}\n        transform: {{ request: {{ headers: {{ set: {{ x-a: $stageVariables.nope }} }} }} }}"), "stage variable `nope` is not defined"),
        (format!("{proxy}\n        transform: {{ request: {{ query: {{ set: {{ \"\": a }} }} }} }}"), "name the query parameter"),
        (format!("{proxy}\n        transform: {{}}"), "name at least one edit"),
        ("        integration: { type: mock, rewrite: { host: a.test } }".to_string(), "`rewrite` does not apply to a `mock` integration"),
        ("        integration: { type: http_proxy, uri: \"http://127.0.0.1:9/\", rewrite: { path: { prefix: api, replacement: /v2 } } }".to_string(), "a path prefix starts with `/`"),
        ("        integration: { type: http_proxy, uri: \"http://127.0.0.1:9/\", rewrite: { path: { regex: \"(\", replacement: /v2 } } }".to_string(), "not a regular expression"),
        ("        integration: { type: http_proxy, uri: \"http://127.0.0.1:9/\", rewrite: { path: { prefix: /a, replacement: \"/b?admin=1\" } } }".to_string(), "no `?` or `#`"),
        ("        integration: { type: redirect, uri: /new, status: 200 }".to_string(), "a redirect is 301, 302, 303, 307 or 308"),
        ("        integration: { type: redirect, uri: new }".to_string(), "must be an absolute URI (https://...) or a path (/...)"),
        ("        integration: { type: redirect, uri: \"/new/{nope}\" }".to_string(), "which the route does not capture"),
        ("        integration: { type: redirect }".to_string(), "a `redirect` needs `uri`"),
        ("        integration: { type: mock, keep_query: true }".to_string(), "`keep_query` does not apply"),
    ] {
        let out = validate(&route(&body));
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{body} was accepted");
        assert!(text.contains(expected), "{body}: {text}");
        assert!(text.contains("line"), "{body}: the error names its line: {text}");
    }
}
