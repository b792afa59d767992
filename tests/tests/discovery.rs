//! Upstream discovery end to end: a DNS server of the test's own on loopback answers A and
//! SRV records with a one-second TTL; the gateway's targets follow its answers while traffic
//! flows (a changed A record moves the traffic without a reload, SRV weights and ports split
//! it, a changed SRV set moves it again), and a name that stops resolving keeps its last good targets, counted in `/metrics`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use http_body_util::Full;
use meridian_tests::*;

/// Records by (name, type); `failing` answers SERVFAIL to everything.
#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    failing: bool,
}

async fn dns_server(zone: Arc<Mutex<Zone>>) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buffer).await {
            let Ok(query) = Message::from_vec(&buffer[..n]) else { continue };
            let mut response = Message::response(query.metadata.id, query.metadata.op_code);
            response.metadata.recursion_available = true;
            if let Some(q) = query.queries.first() {
                response.add_query(q.clone());
                let zone = zone.lock().unwrap();
                let key = (q.name().to_ascii().trim_end_matches('.').to_string(), q.query_type());
                if zone.failing {
                    response.metadata.response_code = ResponseCode::ServFail;
                } else if let Some(list) = zone.records.get(&key) {
                    for data in list {
                        response.add_answer(Record::from_rdata(q.name().clone(), 1, data.clone()));
                    }
                } else if !zone.records.keys().any(|(name, _)| *name == key.0) {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    addr
}

/// A backend on `ip:port` answering its own address.
async fn backend(ip: &str, port: u16) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(addr.to_string()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn a(ip: &str) -> RData {
    RData::A(A(Ipv4Addr::from_str(ip).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_follow_dns_while_traffic_flows() {
    // Two backends on one port, at two loopback addresses; two more for SRV.
    let first = backend("127.0.0.2", 0).await;
    let port = first.port();
    let second = backend("127.0.0.3", port).await;
    let heavy = backend("127.0.0.4", 0).await;
    let light = backend("127.0.0.5", 0).await;
    let zone = Arc::new(Mutex::new(Zone::default()));
    {
        let mut z = zone.lock().unwrap();
        z.records.insert(("pets.test".into(), RecordType::A), vec![a("127.0.0.2")]);
        z.records.insert(("pets.test".into(), RecordType::AAAA), vec![]);
        z.records.insert(("heavy.test".into(), RecordType::A), vec![a("127.0.0.4")]);
        z.records.insert(("heavy.test".into(), RecordType::AAAA), vec![]);
        z.records.insert(("light.test".into(), RecordType::A), vec![a("127.0.0.5")]);
        z.records.insert(("light.test".into(), RecordType::AAAA), vec![]);
        let srv = |weight, port, target: &str| RData::SRV(SRV::new(10, weight, port, Name::from_str(target).unwrap()));
        z.records.insert(
            ("_http._tcp.shop.test".into(), RecordType::SRV),
            vec![
                srv(3, heavy.port(), "heavy.test."),
                srv(1, light.port(), "light.test."),
                // A lower preference: never used while the first group has targets.
                RData::SRV(SRV::new(20, 1, 9, Name::from_str("pets.test.").unwrap())),
            ],
        );
    }
    let dns = dns_server(zone.clone()).await;
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
resolver: {{ nameservers: ["{dns}"] }}
apis:
  - id: pets
    routes:
      - route: GET /by-name
        integration: {{ type: http_proxy, uri: "http://pets.test:{port}/", discover: {{ dns: "pets.test:{port}" }} }}
      - route: GET /by-service
        integration: {{ type: http_proxy, uri: "http://shop.test/", discover: {{ srv: _http._tcp.shop.test }} }}
    stages: [{{ name: prod }}]
"#
    ))
    .await;
    let gw = node.http.expect("http listener");
    let answer = |path: &'static str| async move {
        let reply = get(gw, "pets.test", path).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        String::from_utf8_lossy(&reply.body).into_owned()
    };

    assert_eq!(answer("/prod/by-name").await, first.to_string());
    // The record changes; within its TTL (and the refresh), traffic moves with no reload.
    zone.lock().unwrap().records.insert(("pets.test".into(), RecordType::A), vec![a("127.0.0.3")]);
    let started = Instant::now();
    loop {
        if answer("/prod/by-name").await == second.to_string() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(8), "traffic never moved to the new address");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both addresses: both get traffic.
    zone.lock().unwrap().records.insert(("pets.test".into(), RecordType::A), vec![a("127.0.0.2"), a("127.0.0.3")]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(answer("/prod/by-name").await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // SRV: the lowest priority's targets, on their ports, by their weights (3:1).
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..80 {
        *counts.entry(answer("/prod/by-service").await).or_default() += 1;
    }
    let (h, l) =
        (counts.get(&heavy.to_string()).copied().unwrap_or(0), counts.get(&light.to_string()).copied().unwrap_or(0));
    assert_eq!(h + l, 80, "{counts:?}");
    assert!((50..=70).contains(&h), "weights 3:1 give {h}:{l}");

    // The SRV records change during traffic: the light target leaves, and only the heavy
    // one is used, without a reload.
    {
        let mut z = zone.lock().unwrap();
        let srv = RData::SRV(SRV::new(10, 3, heavy.port(), Name::from_str("heavy.test.").unwrap()));
        z.records.insert(("_http._tcp.shop.test".into(), RecordType::SRV), vec![srv]);
    }
    let started = Instant::now();
    loop {
        let answers: Vec<String> = {
            let mut list = Vec::new();
            for _ in 0..12 {
                list.push(answer("/prod/by-service").await);
            }
            list
        };
        if answers.iter().all(|a| *a == heavy.to_string()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(8), "the SRV change never reached the traffic: {answers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The resolver fails: the last good targets stay, and the failures are counted.
    zone.lock().unwrap().failing = true;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for _ in 0..10 {
        answer("/prod/by-name").await;
        answer("/prod/by-service").await;
    }
    let metrics = String::from_utf8_lossy(&get(node.admin, "admin", "/metrics").await.body).into_owned();
    let failures = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("meridian_discovery_failures_total{") && l.contains(&format!("name=\"{name}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(failures(&format!("pets.test:{port}")) >= 1, "{metrics}");
    assert!(failures("_http._tcp.shop.test") >= 1, "{metrics}");
    assert!(node.stderr().contains("upstream discovery failed; the last good targets stay in use"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_found_in_dns_are_health_checked_before_any_request() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let checks = Arc::new(AtomicUsize::new(0));
    let counted = checks.clone();
    let target = http_service(move |request| {
        if request.uri().path() == "/healthz" {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        async { hyper::Response::new(Full::new(Bytes::from_static(b"ok"))) }
    })
    .await;
    let zone = Arc::new(Mutex::new(Zone::default()));
    {
        let mut z = zone.lock().unwrap();
        z.records.insert(("checked.test".into(), RecordType::A), vec![a("127.0.0.1")]);
        z.records.insert(("checked.test".into(), RecordType::AAAA), vec![]);
    }
    let dns = dns_server(zone).await;
    let port = target.port();
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
resolver: {{ nameservers: ["{dns}"] }}
apis:
  - id: pets
    routes:
      - route: GET /checked
        integration:
          type: http_proxy
          uri: "http://checked.test:{port}/"
          discover: {{ dns: "checked.test:{port}" }}
          health: {{ check: {{ path: /healthz, interval: 1s, timeout: 1s }} }}
    stages: [{{ name: prod }}]
"#
    ))
    .await;
    // No request is sent: the checks start once the name has resolved.
    let deadline = Instant::now() + Duration::from_secs(10);
    while checks.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        checks.load(Ordering::SeqCst) >= 2,
        "the discovered target was checked {} times",
        checks.load(Ordering::SeqCst)
    );
    let metrics = String::from_utf8_lossy(&get(node.admin, "admin", "/metrics").await.body).into_owned();
    assert!(metrics.contains("meridian_upstream_health_checks_total"), "{metrics}");
}

#[test]
fn bad_discovery_settings_are_refused_with_their_line() {
    let definition = |integration: &str, extra: &str| {
        format!(
            "listen: {{ http: \"127.0.0.1:0\" }}\n{extra}apis:\n  - id: pets\n    routes:\n      - route: GET /x\n        integration: {integration}\n    stages: [{{ name: prod }}]\n"
        )
    };
    for (integration, extra, expected) in [
        ("{ type: http_proxy, uri: \"http://a.test/\", discover: { dns: a.test } }", "", "is not `name:port`"),
        ("{ type: http_proxy, uri: \"http://a.test/\", discover: { srv: a.test } }", "", "is not a service name"),
        (
            "{ type: http_proxy, uri: \"http://a.test/\", discover: { dns: \"a.test:80\", srv: _x._tcp.a.test } }",
            "",
            "exactly one of `dns` and `srv`",
        ),
        (
            "{ type: http_proxy, uri: \"http://a.test/\", discover: { dns: \"a.test:80\" }, targets: [{ address: \"127.0.0.1:80\" }] }",
            "",
            "`targets` or `discover`, not both",
        ),
        ("{ type: mock, discover: { dns: \"a.test:80\" } }", "", "`discover` does not apply to a `mock` integration"),
        ("{ type: mock }", "resolver: { nameservers: [nowhere] }\n", "resolver.nameservers[0]"),
    ] {
        let out = validate(&definition(integration, extra));
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && text.contains(expected), "{integration}: {text}");
    }
}
