//! Fuzz targets for everything a Meridian node reads from outside: HTTP request heads (with
//! routing and upstream URI rendering), route patterns, DNS packets, node-to-node RPC
//! payloads (gossip, health reports, proposals), configuration files, zone documents and API
//! definitions (the bodies of the admin API's writes), and mapping templates with the bodies they render.
//!
//! Each target is a plain function, so that `cargo fuzz run <target>` (libFuzzer, coverage
//! guided) and the corpus replay in CI call the same code. A target fails by panicking:
//! either the code under test panicked (a bug in itself), or an oracle below found a
//! security property broken (a request path rendered outside its route).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

use meridian_dataplane::config::RoutingTable;
use meridian_dataplane::integration::Integration;
use meridian_dataplane::pipeline::path::as_a_lenient_upstream_reads_it;
use meridian_dataplane::pipeline::{request_id, routing, websocket};
use meridian_dns::responder::{Answers, Responder, Transport};

/// The gateway configuration request heads are routed against: greedy and single
/// parameters spliced into upstream paths, a custom domain, an API without its default
/// endpoint, a route that lets encoded slashes through.
const GATEWAY: &str = r#"
listen: { http: "127.0.0.1:0" }
apis:
  - id: pets
    routes:
      - route: ANY /files/{path+}
        integration: { type: http_proxy, uri: "http://127.0.0.1:9/static/{path}" }
      - route: GET /users/{id}/avatar
        integration: { type: http_proxy, uri: "http://127.0.0.1:9/avatars/{id}/image?size=s" }
      - route: GET /raw/{name}
        allow_encoded_slashes: true
        integration: { type: http_proxy, uri: "http://127.0.0.1:9/raw/{name}" }
      - route: GET /hello
        integration: { type: mock, body: hi }
    stages: [{ name: prod }, { name: dev }]
  - id: private
    default_endpoint: false
    routes:
      - route: ANY /{proxy+}
        integration: { type: http_proxy, uri: "http://127.0.0.1:9/inner/{proxy}" }
    stages: [{ name: prod }]
domains:
  - name: private.example.com
    mappings: [{ base_path: /, api: private, stage: prod }]
"#;

fn table() -> &'static RoutingTable {
    static TABLE: OnceLock<RoutingTable> = OnceLock::new();
    TABLE.get_or_init(|| match meridian_dataplane::config::parse_str(GATEWAY, "fuzz.yaml", Path::new(".")) {
        Ok(config) => config.table,
        Err(e) => panic!("the fuzzing configuration is invalid: {e}"),
    })
}

/// The path prefix each proxied route's upstream paths must stay under.
fn upstream_prefix(route: &str) -> Option<&'static str> {
    match route {
        "ANY /files/{path+}" => Some("/static/"),
        "GET /users/{id}/avatar" => Some("/avatars/"),
        "ANY /{proxy+}" => Some("/inner/"),
        // Encoded slashes are allowed there on purpose; no prefix is promised.
        _ => None,
    }
}

/// An HTTP/1.x request head as a client sends it, routed as over HTTP/1.1 and HTTP/2.
pub fn request_head(data: &[u8]) {
    let limits = meridian_dataplane::gateway::http1::HeadLimits { max_bytes: 64 * 1024, max_fields: 64 };
    let Ok(Some(head)) = meridian_dataplane::gateway::http1::parse_head(&mut bytes::BytesMut::from(data), limits)
    else {
        return;
    };
    let (method, target) = (head.request.method(), head.request.uri());
    for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
        let mut builder = http::Request::builder().method(method).uri(target).version(version);
        for (name, value) in head.request.headers() {
            builder = builder.header(name, value);
        }
        let Ok(request) = builder.body(()) else { return };
        let (parts, ()) = request.into_parts();
        let _ = websocket::validate_handshake(&parts);
        let _ = request_id::assign(&parts.headers);
        traced(&parts.headers);
        let draw = (data.len() * 7919 % 10_000) as u32;
        let Ok(routed) = routing::route(table(), &parts, draw) else { continue };
        let Integration::Proxy(proxy) = &routed.target.integration else { continue };
        let Ok(uri) = proxy.upstream.render(routed.route_path(), &routed.captures, parts.uri.query()) else {
            continue;
        };
        if let Some(prefix) = upstream_prefix(&routed.target.observer.route) {
            let seen = as_a_lenient_upstream_reads_it(uri.path());
            assert!(seen.starts_with(prefix), "{target} reached {} upstream ({seen})", uri.path());
        }
    }
}

/// A traced request's `traceparent` and `tracestate` read, passed on and its spans made:
/// what is passed on is always a valid `traceparent`.
fn traced(headers: &http::HeaderMap) {
    use meridian_dataplane::observe::trace::{RequestTrace, Sampling, SpanKind, TRACEPARENT, TraceParent};
    let trace = RequestTrace::begin(&Sampling::new(0.5), headers, false, std::time::Instant::now());
    let mut upstream = headers.clone();
    let span = trace.start_span();
    trace.propagate(&mut upstream, span.map_or_else(meridian_dataplane::observe::trace::SpanId::random, |s| s.id));
    let sent = upstream.get(&TRACEPARENT).map(|v| v.as_bytes().to_vec()).unwrap_or_default();
    assert!(TraceParent::parse(&sent).is_some(), "passed on an invalid traceparent: {sent:?}");
    if let Some(span) = span {
        trace.end_span(span, "fuzz", SpanKind::Internal, Vec::new(), None);
    }
}

/// A route key and a request path with its query (separated by a newline) against a router
/// that also holds a few fixed routes, some of them with conditions on the query.
pub fn route_patterns(data: &[u8]) {
    use meridian_dataplane::router::conditions::{Condition, Subject, Test};
    use meridian_dataplane::router::{RequestFacts, RouteConditions, Router, parse_route_key};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (key, target) = text.split_once('\n').unwrap_or((text, "/"));
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let on_query = |test| RouteConditions::new(vec![Condition { subject: Subject::Query("q".into()), test }]);
    let mut router = Router::default();
    let fixed = [
        ("GET /pets/{id}", RouteConditions::default()),
        ("GET /pets/{id}", on_query(Test::Present)),
        ("ANY /{proxy+}", RouteConditions::default()),
        ("GET /pets/mine", on_query(Test::Equals("a b".into()))),
        ("POST /a/{b}/c/{d+}", RouteConditions::default()),
    ];
    for (fixed, conditions) in fixed {
        if let Ok((method, pattern)) = parse_route_key(fixed) {
            let _ = router.insert(method, &pattern, conditions, ());
        }
    }
    if let Ok((method, pattern)) = parse_route_key(key) {
        let _ = pattern.to_string();
        let _ = router.insert(method, &pattern, RouteConditions::default(), ());
    }
    let headers = http::HeaderMap::new();
    let facts = RequestFacts::of(&headers, query);
    if let Ok(path) = meridian_dataplane::pipeline::path::normalize(path) {
        for method in [http::Method::GET, http::Method::POST, http::Method::DELETE] {
            if let Ok(found) = router.find(&method, &path, &facts) {
                for &(start, end) in &found.captures {
                    assert!(start <= end && end <= path.len(), "capture {start}..{end} outside {path:?}");
                }
            }
        }
    }
}

fn responder() -> &'static Responder {
    use meridian_dns::health::HealthBoard;
    use meridian_dns::latency::ClientLatency;
    use meridian_dns::select::{MemberAddress, RegionSelector};
    static RESPONDER: OnceLock<Responder> = OnceLock::new();
    RESPONDER.get_or_init(|| {
        let zone = meridian_node::cluster::dns::parse_zone(
            "zone: example.com\nrouted: [api]\nrecords:\n  - { name: www, type: CNAME, value: api.example.com. }\n  - { name: deep.sub, type: TXT, value: x }\n",
        )
        .unwrap_or_else(|e| panic!("the fuzzing zone is invalid: {e:?}"));
        let members = vec![
            MemberAddress {
                id: 1,
                region: "eu".into(),
                gateway_ip: IpAddr::from([127, 1, 0, 1]),
                dns_addr: Some("127.1.0.1:53".parse().unwrap_or_else(|_| unreachable!())),
            },
            MemberAddress { id: 2, region: "us".into(), gateway_ip: IpAddr::from([127, 2, 0, 1]), dns_addr: None },
        ];
        let now = std::time::Instant::now();
        let selector =
            RegionSelector::new(&[], &members, "eu", &HealthBoard::default(), &ClientLatency::new("eu"), now);
        Responder::new(Answers::new(vec![zone], 1, selector, &members), None)
    })
}

/// A DNS packet over UDP and over TCP.
pub fn dns_responder(data: &[u8]) {
    let client = IpAddr::from([203, 0, 113, data.first().copied().unwrap_or(1)]);
    let mut out = Vec::new();
    for transport in [Transport::Udp, Transport::Tcp] {
        out.clear();
        let _ = responder().respond(data, client, transport, &mut out);
    }
}

/// What a member receives from its peers: gossip, health reports and forwarded proposals.
pub fn node_rpc_payloads(data: &[u8]) {
    let _ = meridian_node::cluster::gossip::decode_observations(data);
    let _ = meridian_node::cluster::dns::decode_report(data);
    let _ = meridian_node::cluster::network::decode::<meridian_consensus::Proposal>(data);
}

/// A node's configuration file.
pub fn config_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = meridian_dataplane::config::parse_str(text, "fuzz.yaml", Path::new("/nonexistent"));
    }
}

/// A DNS zone document (`meridian dns zones put`, `PUT /v1/dns/zones/{name}`).
pub fn zone_document(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = meridian_node::cluster::dns::parse_zone(text);
    }
}

/// An API definition (`meridian apply`, `PUT /v1/apis/{api}` on the admin API).
pub fn api_definition(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let variables = BTreeMap::from([("backend".to_string(), "127.0.0.1:9".to_string())]);
        let _ = meridian_dataplane::config::validate_definition(text, "fuzz.yaml", "prod", &variables);
    }
}

/// A mapping template and a request body (separated by the first NUL byte): parsed, and when
/// it parses, rendered within small bounds. Neither may panic, and the output stays within
/// its bound.
pub fn mapping_template(data: &[u8]) {
    use meridian_dataplane::mapping::{Bounds, Inputs, Template};
    let (template, body) = match data.iter().position(|b| *b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &b"{\"a\": [1, {\"b\": \"c\"}], \"d\": \"e\"}"[..]),
    };
    let Ok(template) = std::str::from_utf8(template) else { return };
    let Ok(parsed) = Template::parse(template) else { return };
    let inputs = Inputs {
        body: body.to_vec().into(),
        context: std::sync::Arc::new(
            serde_json::json!({ "requestId": "r", "identity": { "sourceIp": "203.0.113.1" } }),
        ),
        ..Inputs::default()
    };
    let bounds = Bounds {
        max_output: 64 * 1024,
        max_iterations: 1000,
        max_held: 1 << 20,
        max_time: std::time::Duration::from_millis(200),
    };
    if let Ok(out) = parsed.render(&inputs, bounds) {
        assert!(out.len() <= bounds.max_output, "the output went past its bound");
    }
}

/// A JSON request body, as validation and the mapping templates read it: the same value as
/// serde_json's, or the same error; written back, the same JSON as serde_json writes.
pub fn json_body(data: &[u8]) {
    use meridian_dataplane::json_document::JsonDocument;
    let document = JsonDocument::parse(bytes::Bytes::copy_from_slice(data));
    let ours = document.as_ref().map(|d| d.root().to_value()).map_err(|e| e.to_string());
    let theirs = serde_json::from_slice::<serde_json::Value>(data).map_err(|e| e.to_string());
    assert_eq!(ours, theirs, "the body reads as serde_json reads it");
    if let (Ok(document), Ok(value)) = (document, theirs) {
        let mut written = String::new();
        document.root().write_json(&mut written);
        let again: serde_json::Value = serde_json::from_str(&written).expect("what was written is JSON");
        assert_eq!(again, value, "what was written reads back the same");
    }
}

/// An XML document from an upstream (or a template): converted to JSON, and what converts
/// converts back to XML and again to the same JSON. Nothing may panic.
pub fn xml_document(data: &[u8]) {
    use meridian_dataplane::mapping::xml::{json_to_xml, xml_to_json};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(json) = xml_to_json(text) else { return };
    let Some((root, value)) = json.as_object().and_then(|m| m.iter().next()) else { return };
    if let Ok(xml) = json_to_xml(value, root) {
        let again = xml_to_json(&xml).expect("what was written reads back");
        assert_eq!(again, json, "a document converts back to the same JSON");
    }
}

/// An OpenAPI document (JSON), as `meridian import openapi` reads one: imported, and what it
/// imports to exported with each extension set. Neither may panic, and an export of an
/// import must import again.
pub fn openapi_document(data: &[u8]) {
    use meridian_openapi::{Extensions, Options, export, import};
    let Ok(document) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(imported) = import(&document, &Options::default()) else { return };
    let api = &imported.definition["apis"][0];
    let stage = api["stages"][0]["name"].as_str().unwrap_or("prod");
    for extensions in [Extensions::Meridian, Extensions::Aws, Extensions::None] {
        if let Ok(exported) = export(api, stage, extensions) {
            assert!(import(&exported, &Options::default()).is_ok(), "an export does not import");
        }
    }
}

/// A compressed request body (the first byte picks the coding) and an `Accept-Encoding`
/// header: decoding stays within its limit whole or as a prefix, negotiation picks a coding
/// the client accepts, and what the encoder writes decodes back to the input. Nothing may
/// panic.
pub fn content_coding(data: &[u8]) {
    use meridian_dataplane::content_coding::{Coding, DecodeError, Encoder, decode, negotiate};
    let Some((&pick, body)) = data.split_first() else { return };
    let coding = [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd][usize::from(pick % 4)];
    const LIMIT: u64 = 64 * 1024;
    match decode(coding, body, LIMIT, false) {
        Ok(decoded) => assert!(decoded.len() as u64 <= LIMIT),
        Err(DecodeError::TooLarge | DecodeError::Malformed) => {}
    }
    if let Ok(prefix) = decode(coding, body, 100, true) {
        assert!(prefix.len() <= 100);
    }
    if let Ok(value) = http::HeaderValue::from_bytes(body) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::ACCEPT_ENCODING, value);
        if let Some(chosen) = negotiate(&headers) {
            let header = String::from_utf8_lossy(body).to_ascii_lowercase();
            assert!(header.contains(chosen.token()) || header.contains('*'), "{chosen:?} from {header:?}");
        }
    }
    let mut encoder = Encoder::new(coding).expect("an encoder");
    let mut compressed = encoder.write(body).expect("written").to_vec();
    compressed.extend_from_slice(&encoder.finish().expect("finished"));
    let back = decode(coding, &compressed, body.len() as u64, false).expect("what was encoded decodes");
    assert_eq!(&back[..], body);
}

/// What a WebSocket client and a backend send that the gateway reads itself: a route
/// selection expression and a message (separated by the first NUL byte), the message's
/// route key by that expression, and the message read as a connection id (the callback
/// API's path).
pub fn websocket_message(data: &[u8]) {
    use meridian_dataplane::connections::ConnectionId;
    use meridian_dataplane::integration::websocket::RouteSelection;
    let (expression, message) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"$request.body.action"[..], data),
    };
    let text = std::str::from_utf8(message).ok();
    if let Some(text) = text
        && let Some(id) = ConnectionId::parse(text)
    {
        assert_eq!(id.to_string(), text, "an id reads back as it was written");
    }
    if let Ok(expression) = std::str::from_utf8(expression)
        && let Ok(selection) = RouteSelection::parse(expression)
    {
        let _ = selection.route_key(text, text);
    }
}

/// What an upstream target answers the gateway's HTTP/1.1 client: a flags byte (bit 0: the
/// request was a `HEAD`), then the bytes the target sent. Read whole and cut in pieces of
/// several sizes, the outcome is the same (the client reads a socket however the kernel
/// cuts it); a body is never longer than what was sent.
pub fn upstream_response(data: &[u8]) {
    use meridian_dataplane::integration::http1_client::read_response;
    let Some((&flags, wire)) = data.split_first() else { return };
    let head_request = flags & 1 == 1;
    let whole = read_response(wire, wire.len(), head_request);
    for piece in [1, 2, 3, 7, 64] {
        let cut = read_response(wire, piece, head_request);
        assert_eq!(format!("{cut:?}"), format!("{whole:?}"), "read {piece} bytes at a time");
    }
    if let Ok(response) = whole {
        assert!(response.body.len() <= wire.len());
    }
}

/// What a client sends the gateway's HTTP/1.1 server: requests one after another, heads and
/// bodies. Read whole and cut in pieces of several sizes, the outcome is the same (the
/// server reads a socket however the kernel cuts it); no body is longer than what was sent,
/// and a head is never longer than the limit.
pub fn client_request(data: &[u8]) {
    use meridian_dataplane::gateway::http1::{HeadLimits, read_requests};
    let limits = HeadLimits { max_bytes: 4096, max_fields: 32 };
    let whole = read_requests(data, data.len(), limits);
    for piece in [1, 2, 3, 7, 64] {
        let cut = read_requests(data, piece, limits);
        assert_eq!(cut, whole, "read {piece} bytes at a time");
    }
    let (requests, _) = whole;
    let body: usize = requests.iter().map(|r| r.body.len()).sum();
    assert!(body <= data.len());
    for request in &requests {
        assert!(request.target.len() <= limits.max_bytes && request.headers.len() <= limits.max_fields);
    }
}
