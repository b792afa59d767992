//! The global-limits benchmark. Run it with `tests/bench/limits.sh` (release build).
//!
//! 1. Admission micro-benchmark: one `Limiter::admit` over the four scopes a keyed request
//!    carries (cluster, stage, plan throttle, plan quota), median per call (goal < 2 µs).
//! 2. Accuracy: three regions on loopback, a stage limit of 1,000 req/s, 3,000 req/s offered
//!    70/20/10 across the regions. Admitted rate per 10-s window in steady state (goal ±5 %),
//!    with the third region cut off from the others' RPC for 20 s (iptables on loopback; needs
//!    root), and per second after the partition heals (goal: converged within 1 s).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use meridian_chaos::launcher::NodeProcess;
use meridian_dataplane::limits::limiter::{Limiter, Period, Rate};
use tokio::sync::Mutex;

const TOKEN: &str = "bench-token-0123456789abcdef";

fn micro() {
    let limiter = Limiter::new(1, 100_000);
    let scopes: Vec<(Arc<str>, Rate)> = vec![
        (Arc::from("cluster"), Rate::per_second(u64::MAX / 4, u64::MAX / 4)),
        (Arc::from("stage pets/prod"), Rate::per_second(u64::MAX / 4, u64::MAX / 4)),
        (Arc::from("plan gold key k-1 throttle pets/prod"), Rate::per_second(u64::MAX / 4, u64::MAX / 4)),
        (Arc::from("plan gold key k-1 quota"), Rate::quota(u64::MAX / 4, Period::Month)),
    ];
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut per_call = Vec::new();
    let batches = if std::env::var("SMOKE").is_ok_and(|v| v == "1") { 20 } else { 2000 };
    for batch in 0..batches {
        let started = Instant::now();
        for _ in 0..500 {
            std::hint::black_box(limiter.admit(&scopes, now + batch));
        }
        per_call.push(started.elapsed().as_nanos() as f64 / 500.0);
        if batch % 50 == 0 {
            limiter.take_deltas();
        }
    }
    per_call.sort_by(|a, b| a.total_cmp(b));
    println!(
        "admission (4 scopes, one thread): median {:.0} ns, p99 {:.0} ns per request (goal median < 2000 ns)",
        per_call[per_call.len() / 2],
        per_call[per_call.len() * 99 / 100]
    );
}

fn dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("meridian-limits-bench-").tempdir().expect("temp dir");
    std::fs::write(d.path().join("admin.token"), TOKEN).expect("token");
    d
}

fn config(ip: &str) -> String {
    format!(
        "listen: {{ http: \"{ip}:8080\" }}\nadmin: {{ listen: \"{ip}:9901\", token_file: admin.token }}\naccess_log: {{ enabled: false }}\ncluster: {{ data_dir: data, rpc: \"{ip}:7001\" }}\n"
    )
}

fn iptables(action: &str, from: &str, to: &str) {
    for (src, dst) in [(from, to), (to, from)] {
        let status = std::process::Command::new("iptables")
            .args([action, "INPUT", "-s", src, "-d", dst, "-p", "tcp", "--dport", "7001", "-j", "DROP"])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("iptables {action} failed (needs root and iptables); the partition phase is not real");
        }
    }
}

/// One keep-alive client sending `rate` requests per second to `gateway` until `until`,
/// recording each admitted request's second.
async fn client(
    gateway: SocketAddr,
    rate: f64,
    until: Instant,
    admitted: Arc<Mutex<BTreeMap<u64, [u64; 3]>>>,
    region: usize,
) {
    let Ok(stream) = tokio::net::TcpStream::connect(gateway).await else { return };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else { return };
    tokio::spawn(conn);
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    while Instant::now() < until {
        next += gap;
        let request = Request::get("/prod/x").header("host", "bench").body(Full::new(Bytes::new())).expect("request");
        let Ok(response) = sender.send_request(request).await else { return };
        let ok = response.status() == 200;
        let _ = response.into_body().collect().await;
        if ok {
            let second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
            admitted.lock().await.entry(second).or_default()[region] += 1;
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

#[tokio::main]
async fn main() {
    micro();
    let ips = ["127.211.0.1", "127.212.0.1", "127.213.0.1"];
    eprintln!("== starting three regions: {ips:?}");
    let first = NodeProcess::launch(dir(), &config(ips[0]), &["cluster", "init", "--region", "r1"], &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let token = std::fs::read_to_string(first.dir().join("ready.token")).expect("token");
    let mut nodes = vec![first];
    for (i, ip) in ips.iter().enumerate().skip(1) {
        let args =
            ["cluster", "join", "--region", &format!("r{}", i + 1), "--peer", "127.211.0.1:7001", "--token", &token];
        nodes.push(NodeProcess::launch(dir(), &config(ip), &args, &[]).unwrap_or_else(|e| panic!("{e}")));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let definition = "apis:\n  - id: bench\n    routes:\n      - { route: GET /x, integration: { type: mock, body: ok } }\n    stages:\n      - { name: prod, throttle: { rate: 1000, burst: 1000 } }\n";
    let request = Request::post("/v1/apis/bench/deployments?stage=prod")
        .header("host", "admin")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(definition)))
        .expect("request");
    let reply = meridian_tests::send(nodes[0].admin, request).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SMOKE=1 (CI): a few seconds of each phase, to show the benchmark measures admissions.
    let smoke = std::env::var("SMOKE").is_ok_and(|v| v == "1");
    let (steady, partition, after) = if smoke {
        (Duration::from_secs(3), Duration::from_secs(2), Duration::from_secs(1))
    } else {
        (Duration::from_secs(20), Duration::from_secs(20), Duration::from_secs(10))
    };
    let started = Instant::now();
    let until = started + steady + partition + after;
    let admitted = Arc::new(Mutex::new(BTreeMap::new()));
    let shares = [(0usize, 2100.0, 12usize), (1, 600.0, 4), (2, 300.0, 2)];
    let mut tasks = Vec::new();
    for (region, rate, connections) in shares {
        for _ in 0..connections {
            tasks.push(tokio::spawn(client(
                nodes[region].http.expect("http"),
                rate / connections as f64,
                until,
                admitted.clone(),
                region,
            )));
        }
    }
    eprintln!("== offering 3000 req/s (70/20/10) for {}s steady", steady.as_secs());
    tokio::time::sleep(steady).await;
    let cut = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    eprintln!("== partitioning region 3 for {}s", partition.as_secs());
    iptables("-A", ips[2], ips[0]);
    iptables("-A", ips[2], ips[1]);
    tokio::time::sleep(partition).await;
    iptables("-D", ips[2], ips[0]);
    iptables("-D", ips[2], ips[1]);
    let healed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    eprintln!("== healed; {}s more", after.as_secs());
    for t in tasks {
        let _ = t.await;
    }
    let admitted = admitted.lock().await.clone();
    let seconds: Vec<(u64, u64)> = admitted.iter().map(|(s, r)| (*s, r.iter().sum())).collect();
    let first_second = seconds.first().map_or(0, |s| s.0) + 2;
    let window = |from: u64, to: u64| -> f64 {
        let n: u64 = seconds.iter().filter(|(s, _)| *s >= from && *s < to).map(|(_, n)| n).sum();
        n as f64 / (to - from) as f64
    };
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("global limit 1000 req/s, 3000 req/s offered 70/20/10 over 3 regions ({build} build, loopback)");
    let mut from = first_second;
    while from + 10 <= cut {
        println!(
            "  steady      {from}..{}: {:.0} req/s admitted ({:+.1} %)",
            from + 10,
            window(from, from + 10),
            (window(from, from + 10) / 10.0) - 100.0
        );
        from += 10;
    }
    let during = window(cut + 1, healed);
    println!("  partitioned {}..{healed}: {:.0} req/s admitted ({:+.1} %)", cut + 1, during, during / 10.0 - 100.0);
    for s in healed..healed + 5 {
        println!("  after heal  {s}: {} req/s", seconds.iter().find(|(x, _)| *x == s).map_or(0, |x| x.1));
    }
    let total: u64 = seconds.iter().map(|(_, n)| n).sum();
    assert!(total > 0, "no request was admitted: the benchmark measured nothing");
}
