//! Compression end to end: answers compressed by what curl's `Accept-Encoding` asks for
//! (gzip, brotli, zstd; q-values), decoded by curl itself (`--compressed`), and the answers
//! that must be left alone (small, binary, already encoded, `no-transform`, ranges, HEAD);
//! compressed request bodies decoded for the stages that read them (a firewall rule sees
//! through gzip, a model validates a gzip body, a decompression bomb is a 413) while the
//! upstream still gets the bytes the client sent.

use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use meridian_tests::*;

/// A JSON document of about 20 KiB.
fn document() -> String {
    let items: Vec<String> =
        (0..400).map(|i| format!("{{\"id\":{i},\"name\":\"pet {i}\",\"tags\":[\"a\",\"b\"]}}")).collect();
    format!("[{}]", items.join(","))
}

async fn backend() -> SocketAddr {
    http_service(|req| async move {
        let path = req.uri().path().to_string();
        let media = if path == "/png" { "image/png" } else { "application/json" };
        let mut response = hyper::Response::builder().header("content-type", media);
        let body = match path.as_str() {
            "/big" => {
                response = response.header("etag", "\"v1\"");
                document()
            }
            "/small" => "{\"ok\":true}".to_string(),
            "/png" => "P".repeat(20_000),
            "/encoded" => {
                response = response.header("content-encoding", "gzip");
                "already compressed, the gateway must not touch it".repeat(100)
            }
            "/no-transform" => {
                response = response.header("cache-control", "no-transform");
                document()
            }
            "/range" => {
                response = response.status(206).header("content-range", "bytes 0-19999/40000");
                document()
            }
            // The upstream of request bodies: what arrived, described.
            _ => {
                let encoding = req.headers().get("content-encoding").map(|v| v.to_str().unwrap_or("?").to_string());
                let described = serde_json::json!({ "encoding": encoding, "bytes": req.body().len() });
                described.to_string()
            }
        };
        response.body(Full::new(Bytes::from(body))).unwrap()
    })
    .await
}

/// curl's answer: status, lower-cased headers, and the body as curl decoded it.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn fetch(gateway: SocketAddr, args: &[&str], path: &str) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let body = dir.path().join("body");
    let url = format!("http://{gateway}/v1{path}");
    let mut all = vec!["-s", "-H", "Host: docs.test", "-D", head.to_str().unwrap(), "-o", body.to_str().unwrap()];
    all.extend_from_slice(args);
    all.push(&url);
    let out = curl(&all);
    assert!(out.status.success(), "curl {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    let head = std::fs::read_to_string(head).unwrap();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer { status, headers, body: std::fs::read(body).unwrap_or_default() }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
limits: {{ max_body_bytes: 1048576 }}
apis:
  - id: docs
    compression: {{ minimum_size: 1024 }}
    waf:
      rules:
        - {{ name: no-drop, action: block, pattern: {{ part: body, contains: "DROP TABLE" }} }}
    routes:
      - {{ route: "GET /{{item}}", integration: {{ type: http_proxy, uri: "http://{upstream}/{{item}}" }} }}
      - {{ route: POST /notes, integration: {{ type: http_proxy, uri: "http://{upstream}/notes" }} }}
    stages: [{{ name: v1 }}]
  - id: orders
    type: rest
    models:
      Order: {{ type: object, required: [items], properties: {{ items: {{ type: array, minItems: 1 }} }} }}
    request_validators: {{ all: {{ body: true, parameters: true }} }}
    request_validator: all
    routes:
      - route: POST /orders
        request_models: {{ $default: Order }}
        integration: {{ type: http_proxy, uri: "http://{upstream}/orders" }}
    stages: [{{ name: v1 }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_compressed_as_the_client_asks_and_left_alone_when_they_must() {
    if !tools(&["curl"]) {
        return;
    }
    let node = start_node(config(backend().await)).await;
    let gw = node.http.expect("http listener");
    let expected = document();

    // curl --compressed offers what it can decode; the gateway picks by its preference.
    let plain = fetch(gw, &[], "/big");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"), "an uncompressed answer still varies");
    assert_eq!(plain.header("etag"), Some("\"v1\""));
    assert_eq!(plain.body, expected.as_bytes());
    for (accept, coding) in [("gzip", "gzip"), ("br", "br"), ("zstd", "zstd"), ("gzip;q=0.5, br;q=0.8", "br")] {
        let answer = fetch(gw, &["--compressed", "-H", &format!("Accept-Encoding: {accept}")], "/big");
        assert_eq!(answer.status, 200, "{accept}");
        assert_eq!(answer.header("content-encoding"), Some(coding), "{accept}");
        assert_eq!(answer.header("content-length"), None, "{accept}");
        assert_eq!(answer.header("etag"), Some("W/\"v1\""), "a compressed answer's tag is weak");
        assert_eq!(answer.body, expected.as_bytes(), "curl decodes {coding} to the upstream's document");
    }
    // What curl offers by itself (`--compressed` alone) is answered in one of them.
    let default = fetch(gw, &["--compressed"], "/big");
    assert!(default.header("content-encoding").is_some());
    assert_eq!(default.body, expected.as_bytes());
    // How much smaller: the raw bytes, without curl decoding them.
    let raw = fetch(gw, &["-H", "Accept-Encoding: gzip"], "/big");
    assert!(raw.body.len() * 4 < expected.len(), "{} of {} bytes", raw.body.len(), expected.len());

    for path in ["/small", "/png", "/encoded", "/no-transform", "/range"] {
        let answer = fetch(gw, &["-H", "Accept-Encoding: gzip, br, zstd"], path);
        let encoding = answer.header("content-encoding");
        assert!(encoding.is_none() || path == "/encoded" && encoding == Some("gzip"), "{path}: {encoding:?}");
        assert!(answer.header("vary").is_none(), "{path} cannot be compressed, so it does not vary");
    }
    let head = fetch(gw, &["-I", "-H", "Accept-Encoding: gzip"], "/big");
    assert_eq!(head.header("content-encoding"), None, "HEAD is answered as it is");
    // Nothing acceptable: identity.
    let refused = fetch(gw, &["-H", "Accept-Encoding: gzip;q=0, compress"], "/big");
    assert_eq!((refused.header("content-encoding"), refused.body.len()), (None, expected.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_request_bodies_are_read_decoded_and_forwarded_as_sent() {
    let node = start_node(config(backend().await)).await;
    let gw = node.http.expect("http listener");
    let post = |host: &'static str, path: &'static str, encoding: Option<&'static str>, body: Vec<u8>| async move {
        let mut builder = hyper::Request::post(path).header("host", host).header("content-type", "application/json");
        if let Some(encoding) = encoding {
            builder = builder.header("content-encoding", encoding);
        }
        send(gw, builder.body(Full::new(Bytes::from(body))).unwrap()).await
    };

    // The firewall inspects the body decoded: gzip is no way around a body rule.
    let attack = gzip(b"{\"q\":\"1; DROP TABLE pets\"}");
    assert_eq!(post("docs.test", "/v1/notes", None, b"{\"q\":\"1; DROP TABLE pets\"}".to_vec()).await.status, 403);
    assert_eq!(post("docs.test", "/v1/notes", Some("gzip"), attack).await.status, 403);
    // An innocent compressed body goes upstream as the client sent it.
    let note = gzip(b"{\"q\":\"hello\"}");
    let sent = note.len();
    let reply = post("docs.test", "/v1/notes", Some("gzip"), note).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json(), serde_json::json!({ "encoding": "gzip", "bytes": sent }));

    // A model validates the decoded document.
    let order = gzip(b"{\"items\":[\"fish\"]}");
    let reply = post("orders.test", "/v1/orders", Some("gzip"), order).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["encoding"], "gzip");
    let invalid = post("orders.test", "/v1/orders", Some("gzip"), gzip(b"{\"items\":[]}")).await;
    assert_eq!(invalid.status, 400, "{}", String::from_utf8_lossy(&invalid.body));

    // A bomb: 16 KiB that decompress to 16 MiB, against a 1 MiB body limit.
    let bomb = gzip(&vec![b' '; 16 << 20]);
    assert!(bomb.len() < 32 * 1024, "{} bytes", bomb.len());
    let started = std::time::Instant::now();
    let refused = post("orders.test", "/v1/orders", Some("gzip"), bomb).await;
    assert_eq!(refused.status, 413, "{}", String::from_utf8_lossy(&refused.body));
    assert!(String::from_utf8_lossy(&refused.body).contains("decompresses to more than"));
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "refused after {:?}", started.elapsed());

    // Codings the gateway cannot read, and bytes that are not what they claim.
    let unknown = post("orders.test", "/v1/orders", Some("compress"), b"{}".to_vec()).await;
    assert_eq!(unknown.status, 415, "{}", String::from_utf8_lossy(&unknown.body));
    let stacked = post("orders.test", "/v1/orders", Some("gzip, br"), b"{}".to_vec()).await;
    assert_eq!(stacked.status, 415);
    let broken = post("orders.test", "/v1/orders", Some("gzip"), b"{\"items\":[1]}".to_vec()).await;
    assert_eq!(broken.status, 400, "{}", String::from_utf8_lossy(&broken.body));
    // The firewall cannot look inside a coding it cannot read, so it does not let it by.
    let opaque = post("docs.test", "/v1/notes", Some("compress"), b"opaque".to_vec()).await;
    assert_eq!(opaque.status, 415);
}
