//! The control-plane benchmark: a 3-region cluster on loopback, measured from outside, on
//! default settings, with the round trip between regions at 0, 80 and 200 ms (the chaos
//! crate's delaying proxies on every node-to-node link).
//!
//! Run it with `tests/bench/control_plane.sh` (it builds the release binary first). For each
//! round trip it prints:
//! - apply → served by every node: p50/p99 over the applies (goal p99 ≤ 2 × RTT + 50 ms);
//! - SIGKILL of the leader → next committed write, also as a multiple of the RTT;
//! - configuration writes per second, sustained by concurrent writers;
//! - what an idempotency key costs: a POST with a new `Idempotency-Key` (its claim is a Raft
//!   write before delivery) against the same POST without one, p50/p99, through every node
//!   in turn.
//!
//! `SMOKE=1` runs one short round (80 ms, 3 applies, 1 kill, 1 s of writes, 5 payments) for
//! CI: it fails unless every apply, write and payment it timed was acknowledged.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian_chaos::cluster::{ChaosCluster, ClusterApis, admin};
use meridian_chaos::scenario::ClusterShape;
use meridian_tests::get;

fn definition(version: usize) -> String {
    format!(
        "apis:\n  - id: bench\n    routes:\n      - {{ route: GET /version, integration: {{ type: mock, body: \"v{version}\" }} }}\n"
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What one round trip's run measured.
struct Figures {
    rtt: Duration,
    visible: Vec<Duration>,
    failovers: Vec<Duration>,
    writes_per_second: f64,
    /// POSTs with a new idempotency key, and the same POSTs without one.
    idempotent: Vec<Duration>,
    plain: Vec<Duration>,
}

async fn write_ok(addr: SocketAddr, method: &str, path: &str, body: &str) -> bool {
    admin(addr, method, path, body).await.is_ok_and(|r| r.status == 200)
}

/// One POST on a fresh connection, timed; it must be answered 201.
async fn timed_post(gateway: SocketAddr, path: &str, key: Option<&str>) -> Duration {
    // Two APIs are served (the benchmark's and the payments'): the host names the API.
    let mut headers = vec![("host", "pets.bench"), ("content-type", "application/json")];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    let started = Instant::now();
    let answer =
        meridian_chaos::http::call(gateway, "POST", path, &headers, "{\"amount\":10}", Duration::from_secs(10)).await;
    assert!(answer.as_ref().is_ok_and(|r| r.status == 201), "POST {path} via {gateway}: {answer:?}");
    started.elapsed()
}

async fn measure(
    rtt: Duration,
    subnet: u8,
    applies: usize,
    kills: usize,
    write_time: Duration,
    payments: usize,
) -> Figures {
    eprintln!("== {} ms between regions: starting a 3-region cluster on 127.{{1,2,3}}.{subnet}.1", rtt.as_millis());
    let shape = ClusterShape { regions: 3, nodes_per_region: 1, heartbeat: None };
    let (service, _) = meridian_chaos::payments::service(std::net::Ipv4Addr::LOCALHOST, 1, Duration::ZERO)
        .await
        .expect("the payment service starts");
    let cluster =
        ChaosCluster::start(&shape, subnet, &ClusterApis { payments: Some(service), ..ClusterApis::default() })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    cluster.degrade(&[(0, 1), (0, 2), (1, 2)], rtt / 2, Duration::ZERO, 0.0, 0);
    let admins: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.admin()).collect();
    let gateways: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.gateway()).collect();

    eprintln!("   {applies} applies, each until every node serves it");
    let mut visible = Vec::new();
    for v in 0..applies {
        let via = admins[v % 3];
        let response = admin(via, "POST", "/v1/apis/bench/deployments?stage=prod", &definition(v)).await;
        assert!(response.as_ref().is_ok_and(|r| r.status == 200), "apply {v} failed: {response:?}");
        let returned = Instant::now();
        let want = format!("v{v}");
        // Collected, so that the pollers run at once (a lazy map would start each only
        // after the one before it finished).
        let waits: Vec<_> = gateways
            .iter()
            .map(|&g| {
                let want = want.clone();
                tokio::spawn(async move {
                    while get(g, "bench.gw", "/prod/version").await.body != want.as_bytes() {}
                    returned.elapsed()
                })
            })
            .collect();
        let mut slowest = Duration::ZERO;
        for w in waits {
            slowest = slowest.max(w.await.expect("poller"));
        }
        visible.push(slowest);
    }
    visible.sort();

    eprintln!("   {payments} POSTs with a new idempotency key and {payments} without, alternating, each node in turn");
    let (mut idempotent, mut plain) = (Vec::new(), Vec::new());
    for i in 0..payments {
        let gateway = gateways[i % 3];
        idempotent.push(timed_post(gateway, "/prod/pay", Some(&format!("bench-{subnet}-{i}"))).await);
        plain.push(timed_post(gateway, "/prod/pay-plain", None).await);
    }
    idempotent.sort();
    plain.sort();

    eprintln!("   writes per second: 8 concurrent writers for {} s", write_time.as_secs());
    let deadline = Instant::now() + write_time;
    // Collected: spawned all at once (the first version of this benchmark mapped lazily
    // and so ran one writer at a time).
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let addr = admins[w % 3];
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let body = format!("{{\"set\": {{\"w{w}\": \"{done}\"}}}}");
                    if write_ok(addr, "POST", "/v1/apis/bench/stages/prod/variables", &body).await {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut writes = 0;
    for w in writers {
        writes += w.await.expect("writer");
    }
    assert!(writes > 0, "no configuration write was acknowledged in {write_time:?}");

    eprintln!("   {kills} leader kills, each until the next committed write");
    let mut failovers = Vec::new();
    for k in 0..kills {
        let leader = loop {
            if let Some(l) = cluster.leader().await {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        cluster.kill(leader).await;
        let killed = Instant::now();
        let via = admins[(leader + 1) % 3];
        let body = format!("{{\"set\": {{\"kill\": \"{k}\"}}}}");
        while !write_ok(via, "POST", "/v1/apis/bench/stages/prod/variables", &body).await {}
        failovers.push(killed.elapsed());
        cluster.restart(leader).await.expect("restart");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    failovers.sort();
    cluster.stop().await;
    Figures { rtt, visible, failovers, writes_per_second: writes as f64 / write_time.as_secs_f64(), idempotent, plain }
}

fn print(f: &Figures) {
    let rtt = ms(f.rtt);
    let goal = 2.0 * rtt + 50.0;
    let p99 = ms(percentile(&f.visible, 0.99));
    println!("round trip between regions: {rtt:.0} ms");
    println!(
        "  apply -> served by every node: p50 {:.1} ms, p99 {p99:.1} ms, max {:.1} ms over {} applies (goal p99 <= {goal:.0} ms: {})",
        ms(percentile(&f.visible, 0.5)),
        ms(*f.visible.last().expect("applies")),
        f.visible.len(),
        if p99 <= goal { "met" } else { "NOT met" }
    );
    let median = ms(percentile(&f.failovers, 0.5));
    let in_rtts = if rtt > 0.0 { format!(" = {:.1} x RTT", median / rtt) } else { String::new() };
    println!(
        "  leader SIGKILL -> next committed write: median {median:.0} ms{in_rtts}, worst {:.0} ms over {} kills",
        ms(*f.failovers.last().expect("kills")),
        f.failovers.len()
    );
    println!("  sustained configuration writes: {:.0}/s (8 concurrent writers)", f.writes_per_second);
    let (i50, i99) = (ms(percentile(&f.idempotent, 0.5)), ms(percentile(&f.idempotent, 0.99)));
    let (p50, p99) = (ms(percentile(&f.plain, 0.5)), ms(percentile(&f.plain, 0.99)));
    println!(
        "  POST with a new idempotency key: p50 {i50:.1} ms, p99 {i99:.1} ms; without: p50 {p50:.1} ms, p99 {p99:.1} ms; the key adds {:+.1} ms at p50, {:+.1} ms at p99 ({} each)",
        i50 - p50,
        i99 - p99,
        f.plain.len()
    );
}

#[tokio::main]
async fn main() {
    let smoke = std::env::var("SMOKE").is_ok_and(|v| v == "1");
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rtts, applies, kills, write_time, payments): (&[u64], usize, usize, Duration, usize) = if smoke {
        (&[80], 3, 1, Duration::from_secs(1), 5)
    } else {
        (&[0, 80, 200], env("APPLIES", 60), env("KILLS", 3), Duration::from_secs(5), env("PAYMENTS", 100))
    };
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("control plane, 3 nodes in 3 regions on loopback, default settings ({build} build)");
    for (i, rtt) in rtts.iter().enumerate() {
        let figures = measure(Duration::from_millis(*rtt), 200 + i as u8, applies, kills, write_time, payments).await;
        print(&figures);
    }
}
