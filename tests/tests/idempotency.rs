//! Idempotency keys on one node, end to end: a key is delivered once and its retries get the
//! first response; another payload with the key is 422; a retry while the first attempt is
//! in flight is 409 or waits for its response; a request that never left the gateway gives
//! its key back; records expire after their TTL; routes may require a key. The cluster-wide
//! guarantee (any node, any region, across a leader's failure) is in `cluster.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use meridian_tests::*;

type Deliveries = Arc<Mutex<HashMap<String, usize>>>;

/// An upstream that counts deliveries per path and body, and answers 201 with the count.
async fn payments(deliveries: Deliveries) -> std::net::SocketAddr {
    http_service(move |req: hyper::Request<Bytes>| {
        let path = req.uri().path().to_string();
        let body = req.into_body();
        let deliveries = deliveries.clone();
        async move {
            let n = {
                let mut deliveries = deliveries.lock().unwrap();
                let n = deliveries.entry(format!("{path} {}", String::from_utf8_lossy(&body))).or_default();
                *n += 1;
                deliveries.values().sum::<usize>()
            };
            if path.ends_with("/slow") {
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            let mut response = hyper::Response::new(Full::new(Bytes::from(format!("{{\"payment\":{n}}}"))));
            *response.status_mut() = hyper::StatusCode::CREATED;
            response.headers_mut().insert("location", format!("/payments/{n}").parse().unwrap());
            response.headers_mut().insert("content-type", "application/json".parse().unwrap());
            response
        }
    })
    .await
}

fn config(backend: std::net::SocketAddr, closed: std::net::SocketAddr) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: pay
    type: rest
    routes:
      - {{ route: POST /payments, idempotency: {{}}, integration: {{ type: http_proxy, uri: "http://{backend}/payments" }} }}
      - {{ route: POST /strict, idempotency: {{ required: true }}, integration: {{ type: http_proxy, uri: "http://{backend}/strict" }} }}
      - {{ route: POST /slow, idempotency: {{}}, integration: {{ type: http_proxy, uri: "http://{backend}/slow" }} }}
      - {{ route: POST /waits/slow, idempotency: {{ in_flight: wait }}, integration: {{ type: http_proxy, uri: "http://{backend}/waits/slow" }} }}
      - {{ route: POST /brief, idempotency: {{ ttl: 1s }}, integration: {{ type: http_proxy, uri: "http://{backend}/brief" }} }}
      - {{ route: POST /down, idempotency: {{}}, integration: {{ type: http_proxy, uri: "http://{closed}/down", timeout: 2s }} }}
    stages:
      - {{ name: prod }}
"#
    )
}

/// A loopback address nothing listens on.
async fn closed_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn post(
    gw: std::net::SocketAddr,
    path: &str,
    key: Option<&str>,
    body: &'static str,
) -> impl std::future::Future<Output = Reply> + use<> {
    let mut headers = vec![("host", "pay.test"), ("content-type", "application/json")];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    request(gw, "POST", path, &headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_delivered_once_and_its_retries_get_the_first_response() {
    let deliveries: Deliveries = Arc::default();
    let node = start_node(config(payments(deliveries.clone()).await, closed_port().await)).await;
    let gw = node.http.expect("http listener");
    let delivered = |what: &str| deliveries.lock().unwrap().get(what).copied().unwrap_or(0);

    let first = post(gw, "/prod/payments", Some("order-1"), r#"{"amount":5}"#).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(first.header("idempotent-replayed"), "");
    for _ in 0..3 {
        let retry = post(gw, "/prod/payments", Some("order-1"), r#"{"amount":5}"#).await;
        assert_eq!((retry.status, retry.header("idempotent-replayed")), (201, "true"));
        assert_eq!((retry.body.clone(), retry.header("location")), (first.body.clone(), first.header("location")));
        assert_eq!(retry.header("content-type"), "application/json");
        assert_ne!(retry.header("x-request-id"), first.header("x-request-id"), "a replay is a request of its own");
    }
    assert_eq!(delivered(r#"/payments {"amount":5}"#), 1, "retries never reach the upstream");

    // The key with another payload is refused; the quoted form of the key is the same key.
    let other = post(gw, "/prod/payments", Some("order-1"), r#"{"amount":6}"#).await;
    assert_eq!(other.status, 422, "{:?}", other.body);
    let quoted = post(gw, "/prod/payments", Some("\"order-1\""), r#"{"amount":5}"#).await;
    assert_eq!(quoted.header("idempotent-replayed"), "true");
    assert_eq!(delivered(r#"/payments {"amount":6}"#), 0);

    // Without a key a request is delivered as usual, every time; a malformed key is 400.
    post(gw, "/prod/payments", None, r#"{"amount":7}"#).await;
    post(gw, "/prod/payments", None, r#"{"amount":7}"#).await;
    assert_eq!(delivered(r#"/payments {"amount":7}"#), 2);
    let malformed = post(gw, "/prod/payments", Some("two words"), "{}").await;
    assert_eq!(malformed.status, 400, "{:?}", malformed.body);
    let missing = post(gw, "/prod/strict", None, "{}").await;
    assert_eq!(missing.status, 400);
    assert!(String::from_utf8_lossy(&missing.body).contains("requires an Idempotency-Key"), "{:?}", missing.body);
    assert_eq!(post(gw, "/prod/strict", Some("s-1"), "{}").await.status, 201);
    assert_eq!(delivered("/strict {}"), 1);

    let metrics = get(node.admin, "admin", "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let count = |outcome: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("meridian_idempotency_requests_total") && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!((count("delivered"), count("replayed"), count("mismatch")), (2, 4, 1), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_first_attempt_is_in_flight_is_refused_or_waits() {
    let deliveries: Deliveries = Arc::default();
    let node = start_node(config(payments(deliveries.clone()).await, closed_port().await)).await;
    let gw = node.http.expect("http listener");

    let first = tokio::spawn(post(gw, "/prod/slow", Some("k"), "{}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let retry = post(gw, "/prod/slow", Some("k"), "{}").await;
    assert_eq!((retry.status, retry.header("retry-after")), (409, "1"), "{:?}", retry.body);
    assert_eq!(first.await.unwrap().status, 201);

    let first = tokio::spawn(post(gw, "/prod/waits/slow", Some("k"), "{}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waited = post(gw, "/prod/waits/slow", Some("k"), "{}").await;
    let first = first.await.unwrap();
    assert_eq!((waited.status, waited.header("idempotent-replayed")), (201, "true"), "{:?}", waited.body);
    assert_eq!(waited.body, first.body, "the waiting retry got the first attempt's answer");
    let deliveries = deliveries.lock().unwrap();
    assert_eq!((deliveries["/slow {}"], deliveries["/waits/slow {}"]), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_left_gives_its_key_back_and_records_expire() {
    let deliveries: Deliveries = Arc::default();
    let node = start_node(config(payments(deliveries.clone()).await, closed_port().await)).await;
    let gw = node.http.expect("http listener");

    // No upstream took it: the retry is tried again rather than refused or replayed.
    for _ in 0..2 {
        let attempt = post(gw, "/prod/down", Some("d-1"), "{}").await;
        assert_eq!((attempt.status, attempt.header("idempotent-replayed")), (502, ""), "{:?}", attempt.body);
    }

    // Past its TTL a key is free again: the other payload is delivered, not refused.
    assert_eq!(post(gw, "/prod/brief", Some("b-1"), r#"{"n":1}"#).await.status, 201);
    assert_eq!(post(gw, "/prod/brief", Some("b-1"), r#"{"n":2}"#).await.status, 422);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let later = post(gw, "/prod/brief", Some("b-1"), r#"{"n":2}"#).await;
    assert_eq!((later.status, later.header("idempotent-replayed")), (201, ""));
    assert_eq!(deliveries.lock().unwrap()[r#"/brief {"n":2}"#], 1);
}

/// A client that goes away before the answer does not leave its key in flight forever: the
/// gateway carries the request to its end, records the answer, and the retry gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_still_gets_the_answer_on_its_retry() {
    use tokio::io::AsyncWriteExt;
    let deliveries: Deliveries = Arc::default();
    let node = start_node(config(payments(deliveries.clone()).await, closed_port().await)).await;
    let gw = node.http.expect("http listener");

    let mut abandoned = tokio::net::TcpStream::connect(gw).await.unwrap();
    abandoned
        .write_all(b"POST /prod/slow HTTP/1.1\r\nhost: pay.test\r\ncontent-type: application/json\r\nidempotency-key: gone-1\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(abandoned);
    // The upstream answers 600 ms after it got the request; then the answer is recorded.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let retry = post(gw, "/prod/slow", Some("gone-1"), "{}").await;
    assert_eq!((retry.status, retry.header("idempotent-replayed")), (201, "true"), "{:?}", retry.body);
    assert_eq!(deliveries.lock().unwrap()["/slow {}"], 1);
}
