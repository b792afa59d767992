//! Traffic mirroring end to end: a shadow backend receives the request the upstream gets
//! (method, path after the rewrite, query, headers after the transforms, body), a share of
//! the requests when the route mirrors a share, nothing it may not (a body over the limit);
//! a dead or slow shadow neither fails nor delays the real requests, its concurrency stays
//! bounded, and every outcome is counted in `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use meridian_tests::*;

/// What the shadow received: method, path, query, the x-tenant header, body length.
type Seen = Arc<Mutex<Vec<(String, String, Option<String>, Option<String>, usize)>>>;

fn metric(text: &str, route: &str, outcome: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("meridian_mirror_requests_total{"))
        .filter(|l| l.contains(&format!("route=\"{route}\"")) && l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_of_requests_reaches_the_shadow_and_never_hurts_the_real_ones() {
    let main = http_service(|_| async { hyper::Response::new(Full::new(Bytes::from_static(b"main"))) }).await;
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let shadow = http_service(move |req| {
        let record = record.clone();
        async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            let tenant = req.headers().get("x-tenant").map(|v| v.to_str().unwrap_or("?").to_string());
            record.lock().unwrap().push((
                req.method().to_string(),
                req.uri().path().to_string(),
                req.uri().query().map(str::to_string),
                tenant,
                req.body().len(),
            ));
            hyper::Response::new(Full::new(Bytes::from_static(b"shadow answers are thrown away")))
        }
    })
    .await;
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: shop
    routes:
      - route: "ANY /all/{{proxy+}}"
        transform: {{ request: {{ headers: {{ set: {{ x-tenant: from-gateway }} }} }} }}
        integration:
          type: http_proxy
          uri: "http://{main}/api/{{proxy}}"
          rewrite: {{ path: {{ prefix: /api, replacement: /v2 }} }}
          mirror: {{ uri: "http://{shadow}", max_body_bytes: 1024 }}
      - route: GET /half
        integration: {{ type: http_proxy, uri: "http://{main}/half", mirror: {{ uri: "http://{shadow}", percent: 50 }} }}
      - route: GET /dead
        integration: {{ type: http_proxy, uri: "http://{main}/dead", mirror: {{ uri: "http://127.0.0.1:1", timeout: 1s }} }}
      - route: GET /slow
        integration: {{ type: http_proxy, uri: "http://{main}/slow", mirror: {{ uri: "http://{shadow}", max_concurrency: 2 }} }}
    stages: [{{ name: prod }}]
"#
    ))
    .await;
    let gw = node.http.expect("http listener");
    let send = |method: &'static str, path: &'static str, body: Vec<u8>| async move {
        let request = hyper::Request::builder().method(method).uri(path).header("host", "shop.test");
        send(gw, request.body(Full::new(Bytes::from(body))).unwrap()).await
    };
    let wait_for = |count: usize| {
        let seen = seen.clone();
        async move {
            let started = Instant::now();
            while seen.lock().unwrap().len() < count && started.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen.lock().unwrap().clone()
        }
    };

    // Every request of /all, as the upstream got it, body and all.
    let reply = send("POST", "/prod/all/pets?page=2", b"{\"name\":\"rex\"}".to_vec()).await;
    assert_eq!((reply.status, &reply.body[..]), (200, &b"main"[..]));
    let got = wait_for(1).await;
    assert_eq!(
        got[0],
        ("POST".into(), "/v2/pets".into(), Some("page=2".into()), Some("from-gateway".into()), 14),
        "the shadow sees the upstream's request"
    );
    assert_eq!(send("GET", "/prod/all/owners", Vec::new()).await.status, 200);
    assert_eq!(wait_for(2).await[1].1, "/v2/owners");
    // A body over the limit: the real request goes through, the copy is skipped.
    let reply = send("POST", "/prod/all/big", vec![b'x'; 4096]).await;
    assert_eq!(reply.status, 200);

    // Half of /half.
    seen.lock().unwrap().clear();
    for _ in 0..200 {
        assert_eq!(send("GET", "/prod/half", Vec::new()).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let halves = seen.lock().unwrap().iter().filter(|s| s.1 == "/half").count();
    assert!((60..=140).contains(&halves), "{halves} of 200 mirrored at 50 %");

    // A dead shadow: every real request answered, promptly.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(send("GET", "/prod/dead", Vec::new()).await.status, 200);
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    }
    // A slow shadow with room for two copies at once: ten requests together, none delayed.
    seen.lock().unwrap().clear();
    let started = Instant::now();
    let all: Vec<_> = (0..10).map(|_| tokio::spawn(send("GET", "/prod/slow", Vec::new()))).collect();
    for reply in all {
        assert_eq!(reply.await.unwrap().status, 200);
    }
    assert!(started.elapsed() < Duration::from_millis(1000), "the real requests waited: {:?}", started.elapsed());
    let slow = wait_for(2).await.iter().filter(|s| s.1 == "/slow").count();
    assert_eq!(slow, 2, "two copies in flight at most; the others dropped");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = String::from_utf8_lossy(&get(node.admin, "admin", "/metrics").await.body).into_owned();
    assert_eq!(metric(&text, "ANY /all/{proxy+}", "answered"), 2, "{text}");
    assert_eq!(metric(&text, "ANY /all/{proxy+}", "skipped"), 1);
    assert_eq!(metric(&text, "GET /dead", "failed"), 5);
    assert_eq!(metric(&text, "GET /slow", "dropped"), 8);
    assert_eq!(metric(&text, "GET /slow", "answered"), 2);
}

#[test]
fn bad_mirrors_are_refused_with_their_line() {
    let route = |mirror: &str| {
        format!(
            "listen: {{ http: \"127.0.0.1:0\" }}\napis:\n  - id: shop\n    routes:\n      - route: GET /x\n        integration: {{ type: http_proxy, uri: \"http://127.0.0.1:9/x\", mirror: {mirror} }}\n    stages: [{{ name: prod }}]\n"
        )
    };
    for (mirror, expected) in [
        ("{ uri: \"http://127.0.0.1:9/shadow\" }", "a mirror gets the upstream's own path"),
        ("{ uri: shadow.internal }", "is not an origin"),
        ("{ uri: \"http://127.0.0.1:9\", percent: 0 }", "more than 0 and at most 100"),
        ("{ uri: \"http://127.0.0.1:9\", percent: 150 }", "more than 0 and at most 100"),
        ("{ uri: \"http://127.0.0.1:9\", max_concurrency: 0 }", "from 1 to 10000"),
        ("{ uri: \"http://127.0.0.1:9\", max_body_bytes: 99999999 }", "at most 10485760"),
        ("{ uri: \"http://127.0.0.1:9\", timeout: 2h }", "at most 1m"),
    ] {
        let out = validate(&route(mirror));
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{mirror} was accepted");
        assert!(text.contains(expected), "{mirror}: {text}");
    }
    let out = validate(
        "listen: { http: \"127.0.0.1:0\" }\napis:\n  - id: shop\n    routes:\n      - route: GET /x\n        integration: { type: mock, mirror: { uri: \"http://127.0.0.1:9\" } }\n    stages: [{ name: prod }]\n",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("`mirror` does not apply to a `mock` integration"));
}
