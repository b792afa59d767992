//! The response cache end to end: hits and misses (`X-Cache`), the key (path, query, chosen
//! query parameters, the principal), TTLs, answers never kept (`no-store`, `Set-Cookie`),
//! invalidation rights, and stampede protection (concurrent misses make one upstream call).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use meridian_tests::*;

type Calls = Arc<Mutex<HashMap<String, usize>>>;

/// An upstream that counts calls per path and answers with the count.
async fn upstream(calls: Calls) -> std::net::SocketAddr {
    http_service(move |req| {
        let path = req.uri().path().to_string();
        let n = {
            let mut calls = calls.lock().unwrap();
            let n = calls.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        async move {
            if path == "/slow" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let mut response = hyper::Response::new(Full::new(Bytes::from(format!("{path} #{n}"))));
            match path.as_str() {
                "/nostore" => {
                    response.headers_mut().insert("cache-control", "no-store".parse().unwrap());
                }
                "/cookie" => {
                    response.headers_mut().insert("set-cookie", "session=1".parse().unwrap());
                }
                "/private-me" => {
                    response.headers_mut().insert("set-cookie", "session=2".parse().unwrap());
                    response.headers_mut().insert("cache-control", "private".parse().unwrap());
                }
                _ => {}
            }
            response
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_by_key_for_their_ttl_and_never_across_principals() {
    let calls: Calls = Arc::default();
    let backend = upstream(calls.clone()).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: shop
    type: rest
    authorizers:
      - {{ name: users, type: jwt, algorithms: [ES256], keys: [{{ jwk: {jwk} }}] }}
    routes:
      - {{ route: "GET /items/{{id}}", integration: {{ type: http_proxy, uri: "http://{backend}/items/{{id}}" }} }}
      - route: GET /search
        cache: {{ key_query: [q] }}
        integration: {{ type: http_proxy, uri: "http://{backend}/search" }}
      - route: GET /me
        authorizer: users
        cache: {{ per_principal: true, invalidation: {{ scope: "cache:invalidate", unauthorized: forbid }} }}
        integration: {{ type: http_proxy, uri: "http://{backend}/me" }}
      - route: GET /private-me
        authorizer: users
        cache: {{ per_principal: true, keep_private: true }}
        integration: {{ type: http_proxy, uri: "http://{backend}/private-me" }}
      - {{ route: GET /fresh, cache: {{ ttl: 0s }}, integration: {{ type: http_proxy, uri: "http://{backend}/fresh" }} }}
      - {{ route: GET /nostore, integration: {{ type: http_proxy, uri: "http://{backend}/nostore" }} }}
      - {{ route: GET /cookie, integration: {{ type: http_proxy, uri: "http://{backend}/cookie" }} }}
      - {{ route: GET /slow, integration: {{ type: http_proxy, uri: "http://{backend}/slow" }} }}
    stages:
      - {{ name: prod, cache: {{ capacity_mib: 1, ttl: 2s }} }}
"#,
        jwk = serde_json::to_string(&jwk).unwrap()
    ))
    .await;
    let gw = node.http.expect("http listener");
    let calls_to = |path: &str| calls.lock().unwrap().get(path).copied().unwrap_or(0);
    let fetch = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let mut request = hyper::Request::get(path).header("host", "shop.test");
        for (k, v) in headers {
            request = request.header(k, v);
        }
        send(gw, request.body(Full::new(Bytes::new())).unwrap())
    };

    // Miss, then hit, with the first answer.
    let first = fetch("/prod/items/1", vec![]).await;
    assert_eq!((first.status, first.header("x-cache")), (200, "Miss"));
    let second = fetch("/prod/items/1", vec![]).await;
    assert_eq!((second.header("x-cache"), second.body.clone()), ("Hit", first.body.clone()));
    assert_eq!(second.header("content-length"), first.body.len().to_string(), "a hit keeps its length");
    assert_eq!(calls_to("/items/1"), 1);
    // Another path parameter, or another query, is another entry.
    fetch("/prod/items/2", vec![]).await;
    fetch("/prod/items/1?color=red", vec![]).await;
    assert_eq!((calls_to("/items/2"), calls_to("/items/1")), (1, 2));
    // Only the chosen query parameter is in the key.
    fetch("/prod/search?q=shoes&page=1", vec![]).await;
    assert_eq!(fetch("/prod/search?page=2&q=shoes", vec![]).await.header("x-cache"), "Hit");
    fetch("/prod/search?q=hats", vec![]).await;
    assert_eq!(calls_to("/search"), 2);

    // Answers that must not be shared are never kept; a route can turn caching off.
    for path in ["/prod/nostore", "/prod/cookie", "/prod/fresh"] {
        for _ in 0..2 {
            assert_eq!(fetch(path, vec![]).await.status, 200);
        }
    }
    assert_eq!((calls_to("/nostore"), calls_to("/cookie"), calls_to("/fresh")), (2, 2, 2));
    assert_eq!(fetch("/prod/fresh", vec![]).await.header("x-cache"), "", "an uncached route says nothing");

    // One entry per principal; invalidation only with the granted scope.
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let token = |sub: &str, scope: &str| {
        let claims = serde_json::json!({ "sub": sub, "exp": exp, "scope": scope });
        format!("Bearer {}", jsonwebtoken::encode(&header, &claims, &encoding).unwrap())
    };
    let ana = fetch("/prod/me", vec![("authorization", token("ana", "read"))]).await;
    let bob = fetch("/prod/me", vec![("authorization", token("bob", "read"))]).await;
    assert_eq!((ana.header("x-cache"), bob.header("x-cache")), ("Miss", "Miss"), "bob never gets ana's answer");
    let again = fetch("/prod/me", vec![("authorization", token("ana", "read write"))]).await;
    assert_eq!((again.header("x-cache"), again.body.clone()), ("Hit", ana.body.clone()));
    let refused =
        fetch("/prod/me", vec![("authorization", token("ana", "read")), ("cache-control", "max-age=0".into())]).await;
    assert_eq!(refused.status, 403);
    let refreshed = fetch(
        "/prod/me",
        vec![("authorization", token("ana", "read cache:invalidate")), ("cache-control", "max-age=0".into())],
    )
    .await;
    assert_eq!((refreshed.status, refreshed.header("x-cache")), (200, "Miss"));
    assert_eq!(calls_to("/me"), 3);
    assert_eq!(fetch("/prod/me", vec![("authorization", token("ana", "read"))]).await.body, refreshed.body);
    // A route that keeps private answers keeps each principal's own, cookie and all.
    let ana = fetch("/prod/private-me", vec![("authorization", token("ana", "read"))]).await;
    let again = fetch("/prod/private-me", vec![("authorization", token("ana", "read"))]).await;
    assert_eq!((ana.header("x-cache"), again.header("x-cache")), ("Miss", "Hit"));
    assert_eq!((again.body.clone(), again.header("set-cookie")), (ana.body.clone(), "session=2"));
    let bob = fetch("/prod/private-me", vec![("authorization", token("bob", "read"))]).await;
    assert_eq!(bob.header("x-cache"), "Miss", "bob never gets ana's private answer");
    assert_eq!(calls_to("/private-me"), 2);

    // Twenty concurrent misses for one key make one upstream call, and all get its answer.
    let all: Vec<_> = (0..20).map(|_| tokio::spawn(fetch("/prod/slow", vec![]))).collect();
    let mut bodies = Vec::new();
    for r in all {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert_eq!(calls_to("/slow"), 1, "a stampede reached the upstream");
    assert!(bodies.iter().all(|b| b == &bodies[0]));

    // Entries end with their TTL.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(fetch("/prod/items/1", vec![]).await.header("x-cache"), "Miss");
    assert_eq!(calls_to("/items/1"), 3);
}

#[test]
fn caching_is_for_rest_apis() {
    let out = validate(
        "apis:\n  - id: lean\n    routes:\n      - { route: GET /a, integration: { type: mock } }\n    stages:\n      - { name: prod, cache: { ttl: 10s } }\n",
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("line 6") && said.contains("`stages[0].cache` is for `type: rest` APIs"), "{said}");
    let out = validate(
        "apis:\n  - id: lean\n    type: rest\n    routes:\n      - { route: GET /a, integration: { type: mock }, cache: { keep_private: true } }\n    stages:\n      - { name: prod, cache: { ttl: 10s } }\n",
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && said.contains("routes[0].cache.keep_private: private answers are kept only per principal"),
        "{said}"
    );
}
