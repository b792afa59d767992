//! The control-plane benchmark: a 3-region cluster on loopback, measured from outside.
//!
//! Run it with `tests/bench/control_plane.sh` (it builds the release binary first). Prints:
//! - apply → served by every node: p50/p99 over the applies (goal p99 < 200 ms);
//! - SIGKILL of the leader → next committed write (goal < 2 s), over several kills;
//! - configuration writes per second, sustained by concurrent writers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use meridian_chaos::launcher::NodeProcess;
use meridian_tests::{Reply, get, send};

const TOKEN: &str = "bench-token-0123456789abcdef";

fn config(ip: &str) -> String {
    format!(
        "listen: {{ http: \"{ip}:0\" }}\nadmin: {{ listen: \"{ip}:0\", token_file: admin.token }}\naccess_log: {{ enabled: false }}\ncluster: {{ data_dir: data, rpc: \"{ip}:7001\" }}\n"
    )
}

fn dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("meridian-bench-").tempdir().expect("temp dir");
    std::fs::write(d.path().join("admin.token"), TOKEN).expect("token");
    d
}

async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    send(addr, request).await
}

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

async fn leader(nodes: &mut [NodeProcess]) -> usize {
    loop {
        for (i, n) in nodes.iter_mut().enumerate() {
            if !n.is_running() {
                continue;
            }
            let r = admin(n.admin, "GET", "/v1/cluster", "").await;
            if r.status == 200 && r.json()["state"] == "Leader" {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let applies: usize = std::env::var("APPLIES").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let kills: usize = std::env::var("KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    eprintln!("== starting a 3-region cluster (127.201.0.1, 127.202.0.1, 127.203.0.1)");
    let first = NodeProcess::launch(dir(), &config("127.201.0.1"), &["cluster", "init", "--region", "r1"], &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let token = std::fs::read_to_string(first.dir().join("ready.token")).expect("token");
    let mut nodes = vec![first];
    for r in 2..=3 {
        let args = ["cluster", "join", "--region", &format!("r{r}"), "--peer", "127.201.0.1:7001", "--token", &token];
        nodes.push(
            NodeProcess::launch(dir(), &config(&format!("127.20{r}.0.1")), &args, &[])
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    loop {
        let s = admin(nodes[0].admin, "GET", "/v1/cluster", "").await.json();
        if s["members"].as_array().is_some_and(|m| m.iter().filter(|m| m["role"] == "voter").count() == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    eprintln!("== {applies} applies, each until every node serves it");
    let mut visible = Vec::new();
    for v in 0..applies {
        let via = nodes[v % 3].admin;
        let r = admin(via, "POST", "/v1/apis/bench/deployments?stage=prod", &definition(v)).await;
        assert_eq!(r.status, 200, "apply failed: {:?}", r.body);
        let returned = Instant::now();
        let want = format!("v{v}");
        let gateways: Vec<SocketAddr> = nodes.iter().map(|n| n.http.expect("http")).collect();
        let waits = gateways.into_iter().map(|g| {
            let want = want.clone();
            tokio::spawn(async move {
                while get(g, "gw", "/prod/version").await.body != want.as_bytes() {}
                returned.elapsed()
            })
        });
        let mut slowest = Duration::ZERO;
        for w in waits {
            slowest = slowest.max(w.await.expect("poller"));
        }
        visible.push(slowest);
    }
    visible.sort();

    eprintln!("== writes per second: 8 concurrent writers for 5 s");
    let deadline = Instant::now() + Duration::from_secs(5);
    let writers = (0..8).map(|w| {
        let addr = nodes[w % 3].admin;
        tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let body = format!("{{\"set\": {{\"w{w}\": \"{done}\"}}}}");
                if admin(addr, "POST", "/v1/apis/bench/stages/prod/variables", &body).await.status == 200 {
                    done += 1;
                }
            }
            done
        })
    });
    let mut writes = 0;
    for w in writers {
        writes += w.await.expect("writer");
    }

    eprintln!("== {kills} leader kills, each until the next committed write");
    let mut failovers = Vec::new();
    for k in 0..kills {
        let l = leader(&mut nodes).await;
        nodes[l].kill();
        let killed = Instant::now();
        let via = nodes[(l + 1) % 3].admin;
        loop {
            let body = format!("{{\"set\": {{\"kill\": \"{k}\"}}}}");
            if admin(via, "POST", "/v1/apis/bench/stages/prod/variables", &body).await.status == 200 {
                break;
            }
        }
        failovers.push(killed.elapsed());
        nodes[l].run(&["serve"], &[]).expect("restart");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    failovers.sort();

    println!("control plane, 3 nodes in 3 regions on loopback (release build)");
    println!(
        "apply -> served by every node: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} applies (goal p99 < 200 ms)",
        ms(percentile(&visible, 0.5)),
        ms(percentile(&visible, 0.99)),
        ms(*visible.last().expect("applies")),
        visible.len()
    );
    println!(
        "leader SIGKILL -> next committed write: median {:.0} ms, worst {:.0} ms over {} kills (goal < 2000 ms)",
        ms(percentile(&failovers, 0.5)),
        ms(*failovers.last().expect("kills")),
        failovers.len()
    );
    println!("sustained configuration writes: {:.0}/s (8 concurrent writers, 5 s)", writes as f64 / 5.0);
}
