//! The firewall's cost per rule, by kind. Run it with `tests/bench/waf.sh` (release build).
//!
//! For each kind of rule, an API with 1 and with 21 rules of that kind, none matching, is
//! compiled from its definition like any other; the route's firewall stage then evaluates
//! the same request head (and, for body rules, a 2 KiB body) many times in one thread. The
//! cost of one rule is the difference between the two, divided by 20, so what every
//! evaluation pays anyway (the client address, the exchange) is left out. Median of
//! batches, in microseconds.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use meridian_dataplane::authorizers::Authorizers;
use meridian_dataplane::config::RoutingTable;
use meridian_dataplane::integration::upstreams::Upstreams;
use meridian_dataplane::limits::limiter::Limiter;
use meridian_dataplane::pipeline::routing;
use meridian_dataplane::response_cache::ResponseCaches;
use meridian_dataplane::stages::api_key::KeyRing;
use meridian_dataplane::stages::signed_request::Credentials;
use meridian_dataplane::stages::waf::Blocklist;
use meridian_dataplane::stages::{Exchange, Flow, Services, Stage, Step};

/// Each kind of rule, as it appears in a definition (`{}` is the rule's number).
const KINDS: &[(&str, &str)] = &[
    (
        "ip_in (10 CIDRs)",
        "ip_in: [10.{}.0.0/16, 10.{}.1.0/24, 10.{}.2.0/24, 10.{}.3.0/24, 10.{}.4.0/24, 192.168.{}.0/24, 172.16.{}.0/24, \"fd{}::/16\", \"fe{}::/16\", 100.64.{}.0/24]",
    ),
    ("size_over headers", "size_over: { part: headers, bytes: 1{}000 }"),
    ("pattern path regex", "pattern: { part: path, regex: \"^/prod/admin{}/(config|secrets)\" }"),
    ("pattern header contains", "pattern: { part: header, name: user-agent, contains: \"scanner-{}\" }"),
    ("pattern query regex", "pattern: { part: query, name: debug, regex: \"^(on|true|{})$\" }"),
    ("pattern cookie contains", "pattern: { part: cookie, name: session, contains: \"probe-{}\" }"),
    ("signatures sqli+xss", "signatures: [sqli, xss]"),
    ("rate_over (by ip)", "rate_over: { count: 1000000, window: 60s, block_for: 60s }"),
    ("pattern body contains (2 KiB)", "pattern: { part: body, contains: \"BEGIN KEY {}\" }"),
];

fn table(kind: &str, rules: usize) -> RoutingTable {
    let mut yaml = String::from(
        "listen: { http: \"127.0.0.1:0\" }\nadmin: { listen: \"127.0.0.1:0\" }\napis:\n  - id: pets\n    waf:\n      rules:\n",
    );
    for i in 0..rules {
        yaml.push_str(&format!("        - {{ name: r{i}, action: block, {} }}\n", kind.replace("{}", &i.to_string())));
    }
    yaml.push_str(
        "    routes:\n      - { route: POST /pets, integration: { type: mock } }\n    stages: [{ name: prod }]\n",
    );
    match meridian_dataplane::config::parse_str(&yaml, "bench.yaml", Path::new(".")) {
        Ok(config) => config.table,
        Err(e) => panic!("the benchmark's definition is invalid: {e}"),
    }
}

/// Median microseconds per evaluation of the firewall of `table` on one request.
fn measure(table: &RoutingTable, services: &Services, batches: usize) -> f64 {
    let body = Bytes::from(vec![b'a'; 2048]);
    let request = hyper::Request::post("/prod/pets?q=shoes&page=2&sort=price")
        .header("host", "pets.test")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0")
        .header("cookie", "theme=dark; session=0123456789abcdef")
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body(())
        .unwrap();
    let (mut head, ()) = request.into_parts();
    let routed = routing::route(table, &head, 0).expect("the request is routed");
    let chain = routed.target.chain.clone();
    drop(routed);
    let waf: Arc<dyn Stage> =
        chain.request_head_stages().iter().find(|s| s.name() == "waf").expect("a firewall").clone();
    let client: IpAddr = "203.0.113.9".parse().unwrap();
    let request_id = hyper::header::HeaderValue::from_static("bench");
    meridian_tests::median_micros_per_call(batches, || {
        let mut exchange = Exchange::new(request_id.clone(), client);
        let flow = match waf.request_head(&mut head, &mut exchange, services) {
            Step::Done(flow) => flow,
            Step::Waiting(_) => panic!("the firewall never waits"),
        };
        assert!(matches!(flow, Flow::Continue), "a rule matched the benchmark's request");
        if waf.body_need(&head).is_some() {
            let flow = match waf.request_body(&head, &body, &mut exchange, services) {
                Step::Done(flow) => flow,
                Step::Waiting(_) => panic!("the firewall never waits"),
            };
            assert!(matches!(flow, Flow::Continue), "a body rule matched the benchmark's request");
        }
        std::hint::black_box(&exchange);
    })
}

fn main() {
    let smoke = std::env::var("SMOKE").is_ok_and(|v| v == "1");
    let batches = if smoke { 5 } else { 400 };
    let limiter = Limiter::new(1, 1_000_000);
    let keys = KeyRing::default();
    let credentials = Credentials::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let _entered = runtime.enter();
    let authorizers = Authorizers::new(Arc::new(Upstreams::new()));
    let blocks = Blocklist::default();
    let caches = ResponseCaches::default();
    let records = Arc::default();
    let services = Services {
        limiter: &limiter,
        keys: &keys,
        credentials: &credentials,
        authorizers: &authorizers,
        blocks: &blocks,
        caches: &caches,
        records: &records,
        dry_run: false,
    };
    println!("firewall cost per rule, none matching (median of {batches} batches of 200 requests, one thread)");
    println!("{:<32} {:>12} {:>14} {:>12}", "rule kind", "1 rule µs", "21 rules µs", "per rule µs");
    for (name, kind) in KINDS {
        let one = measure(&table(kind, 1), &services, batches);
        let many = measure(&table(kind, 21), &services, batches);
        println!("{name:<32} {one:>12.2} {many:>14.2} {:>12.3}", (many - one) / 20.0);
    }
}
