//! End-to-end tests of the DNS responder: real `meridian` processes in three regions on
//! loopback, queried with `dig` (Debian's dnsutils) and raw UDP.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use meridian_chaos::fault_proxy::FaultProxy;
use meridian_chaos::launcher::NodeProcess;
use meridian_tests::{TestCa, cli, curl};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// `127.<120 + test>.<third>.<from the pid>`: each test its own block (so tests run in
/// parallel), each region and client network its own /24 in it.
fn ip(test: u8, third: u8) -> String {
    format!("127.{}.{third}.{}", 120 + test, 1 + std::process::id() % 250)
}

fn node_config(ip: &str, dns_extra: &str) -> String {
    format!(
        r#"
listen: {{ http: "{ip}:8080", https: "{ip}:8443" }}
admin: {{ listen: "{ip}:9901", token_file: admin.token }}
access_log: {{ enabled: false }}
cluster:
  data_dir: data
  rpc: "{ip}:7001"
  dns: {{ listen: "{ip}:8053"{dns_extra} }}
"#
    )
}

fn new_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("meridian-dns-").tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    dir
}

/// Regions r1..r3, one node each at `127.<b>.R.1`, founded by r1.
fn cluster(test: u8, dns_extra: &str) -> Vec<NodeProcess> {
    let first_ip = ip(test, 1);
    let first =
        NodeProcess::launch(new_dir(), &node_config(&first_ip, dns_extra), &["cluster", "init", "--region", "r1"], &[])
            .unwrap_or_else(|e| panic!("init: {e}"));
    let token = std::fs::read_to_string(first.dir().join("ready.token")).expect("the join token is written");
    let mut nodes = vec![first];
    for r in 2..=3 {
        let region = format!("r{r}");
        let peer = format!("{first_ip}:7001");
        let node = NodeProcess::launch(
            new_dir(),
            &node_config(&ip(test, r), dns_extra),
            &["cluster", "join", "--region", &region, "--peer", &peer, "--token", &token],
            &[],
        )
        .unwrap_or_else(|e| panic!("join {region}: {e}"));
        nodes.push(node);
    }
    nodes
}

fn put_zone(node: &NodeProcess, text: &str) {
    let path = node.dir().join("zone.yaml");
    std::fs::write(&path, text).unwrap();
    let out = cli(&["dns", "zones", "put", path.to_str().unwrap()], node);
    assert!(out.status.success(), "{out:?}");
}

/// `dig @dns <args>` (two tries, one-second timeout), its stdout.
fn dig(dns: SocketAddr, args: &[&str]) -> String {
    let out = std::process::Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), "+time=1", "+tries=2"])
        .args(args)
        .output()
        .expect("dig is installed (dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(dns: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut all = vec!["+short"];
    all.extend_from_slice(args);
    let mut lines: Vec<String> = dig(dns, &all).lines().map(str::to_string).filter(|l| !l.starts_with(';')).collect();
    lines.sort();
    lines
}

/// Polls `check` every 100 ms until it holds or `within` passes; returns how long it took.
fn wait(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

const ZONE: &str = r#"
zone: example.test
routed: [api]
records:
  - { name: www, type: CNAME, value: api.example.test. }
  - { name: "@", type: MX, value: "10 mail.example.test." }
  - { name: mail, type: A, value: 192.0.2.25 }
  - { name: big, type: TXT, value: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" }
"#;

#[test]
fn authoritative_answers_ecs_failover_and_recovery() {
    if !meridian_tests::tools(&["dig"]) {
        return;
    }
    let mut nodes = cluster(1, "");
    let ip = |r: usize| ip(1, r as u8);
    let dns: Vec<SocketAddr> = nodes.iter().map(|n| n.dns.expect("the ready file names the DNS address")).collect();
    put_zone(&nodes[1], ZONE);
    let out = cli(&["regions", "put", "r2", "--cidr", "198.51.100.0/24"], &nodes[0]);
    assert!(out.status.success(), "{out:?}");
    wait(Duration::from_secs(15), "every node answers for the zone", || {
        dns.iter().all(|d| dig(*d, &["api.example.test"]).contains("status: NOERROR"))
    });

    // SOA, NS and the AA bit; the answering node's own region when nothing is known.
    let soa = dig(dns[0], &["example.test", "SOA"]);
    assert!(soa.contains("flags: qr aa"), "{soa}");
    assert!(soa.contains("hostmaster.example.test."), "{soa}");
    assert_eq!(short(dns[0], &["example.test", "NS"]).len(), 3);
    for (r, d) in dns.iter().enumerate() {
        assert_eq!(short(*d, &["api.example.test"]), vec![ip(r + 1)], "node {r} answers its own region");
    }
    // ECS: the configured network of r2 gets r2 from any node, with the scope prefix.
    let ecs = dig(dns[2], &["api.example.test", "+subnet=198.51.100.0/24"]);
    assert!(ecs.contains(&format!("IN\tA\t{}", ip(2))), "{ecs}");
    assert!(ecs.contains("CLIENT-SUBNET: 198.51.100.0/24/24"), "{ecs}");
    // NODATA, NXDOMAIN, REFUSED, CNAME chasing, MX, ANY (RFC 8482), TCP.
    let nodata = dig(dns[0], &["api.example.test", "AAAA"]);
    assert!(nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0") && nodata.contains("AUTHORITY: 1"));
    let nx = dig(dns[0], &["nope.example.test"]);
    assert!(nx.contains("status: NXDOMAIN") && nx.contains("AUTHORITY: 1"), "{nx}");
    assert!(dig(dns[0], &["example.org"]).contains("status: REFUSED"));
    assert_eq!(short(dns[0], &["www.example.test"]), vec![ip(1), "api.example.test.".to_string()]);
    assert_eq!(short(dns[0], &["example.test", "MX"]), vec!["10 mail.example.test."]);
    assert_eq!(short(dns[0], &["example.test", "ANY"]), vec!["\"RFC8482\" \"\""]);
    assert_eq!(short(dns[1], &["api.example.test", "+tcp"]), vec![ip(2)]);
    // A large answer: truncated over UDP, complete over TCP when dig retries.
    let big = dig(dns[0], &["big.example.test", "TXT"]);
    assert!(big.contains("Truncated, retrying in TCP mode"), "{big}");
    assert!(big.contains("ANSWER: 1"), "{big}");

    // r2 dies: answers for its clients move to another region within the budget.
    nodes[1].kill();
    let failover = wait(Duration::from_secs(6), "answers exclude the dead region", || {
        let answer = short(dns[0], &["api.example.test", "+subnet=198.51.100.0/24"]);
        !answer.is_empty() && !answer.contains(&ip(2))
    });
    eprintln!("failover after SIGKILL: {failover:?}");
    let explain = cli(&["dns", "explain", "api.example.test", "--client", "198.51.100.7"], &nodes[0]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(text.contains("r2") && text.contains("DOWN"), "{text}");

    // Back after a restart, not before observers agree for the recovery period.
    nodes[1].run(&["serve"], &[]).unwrap();
    let recovered = wait(Duration::from_secs(30), "the region comes back", || {
        short(dns[0], &["api.example.test", "+subnet=198.51.100.0/24"]) == vec![ip(2)]
    });
    assert!(recovered >= Duration::from_secs(3), "recovery waits for agreement: {recovered:?}");
}

#[test]
fn one_cut_off_observer_cannot_take_a_region_down() {
    if !meridian_tests::tools(&["dig"]) {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root for an iptables partition on loopback");
        return;
    }
    let nodes = cluster(2, "");
    let dns = nodes[0].dns.unwrap();
    put_zone(&nodes[0], "zone: example.test\nrouted: [api]\n");
    let r1 = nodes[0].http.unwrap();
    // r3's probes to r1's gateway vanish; r2 still reaches it.
    let rule =
        ["INPUT", "-s", &ip(2, 3), "-d", &ip(2, 1), "-p", "tcp", "--dport", &r1.port().to_string(), "-j", "DROP"]
            .map(str::to_string);
    let iptables = |action: &str| {
        std::process::Command::new("iptables").arg(action).args(&rule).status().is_ok_and(|s| s.success())
    };
    if !iptables("-A") {
        eprintln!("SKIPPED: iptables cannot add rules here (not installed, or no CAP_NET_ADMIN)");
        return;
    }
    let explain = || {
        let out = cli(&["dns", "explain", "api.example.test", "--client", "192.0.2.1", "-o", "json"], &nodes[0]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let seen_down = std::panic::catch_unwind(|| {
        wait(Duration::from_secs(10), "r3 reports r1 down", || {
            explain()["health"].as_array().into_iter().flatten().any(|h| {
                h["region"] == "r1"
                    && h["observers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|o| o["observer_region"] == "r3" && o["down"] == 1)
            })
        });
        // Two more seconds: r1 must stay in the answers the whole time.
        for _ in 0..20 {
            let health = explain();
            let r1 = health["health"].as_array().into_iter().flatten().find(|h| h["region"] == "r1").cloned();
            assert_eq!(r1.map(|h| h["up"].clone()), Some(serde_json::Value::Bool(true)), "{health}");
            assert_eq!(short(dns, &["api.example.test"]), vec![ip(2, 1)]);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(iptables("-D"), "the partition rule could not be removed");
    if let Err(panic) = seen_down {
        std::panic::resume_unwind(panic);
    }
}

/// Client networks reach the regions through delaying proxies that connect from the
/// network's own addresses; the gateways time the TLS handshakes, and DNS sends each
/// network to the region that answered it fastest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_go_to_the_region_they_measured_fastest() {
    if !meridian_tests::tools(&["curl", "dig"]) {
        return;
    }
    let nodes = tokio::task::spawn_blocking(|| cluster(3, "")).await.unwrap();
    let dns = nodes[2].dns.unwrap();
    let dir = new_dir();
    let ca = TestCa::new();
    ca.issue(dir.path(), "api.example.test");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let cert = dir.path().join("api.example.test.pem");
    let key = dir.path().join("api.example.test.key");
    let out = cli(
        &[
            "domains",
            "put",
            "api.example.test",
            "--certificate",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &nodes[0],
    );
    assert!(out.status.success(), "{out:?}");
    put_zone(&nodes[0], "zone: example.test\nrouted: [api]\n");

    // Network A (127.123.201.0/24) is near r1, network B (127.123.202.0/24) near r3.
    let delays = [(201u8, [5u64, 40, 40]), (202, [40, 40, 5])];
    let mut proxies = Vec::new();
    for (net, per_region) in delays {
        for (r, delay) in per_region.iter().enumerate() {
            let source: std::net::IpAddr = ip(3, net).parse().unwrap();
            let listen: SocketAddr = format!("{}:0", ip(3, net)).parse().unwrap();
            let proxy = FaultProxy::start_from(listen, nodes[r].https.unwrap(), Some(source)).await.unwrap();
            proxy.faults.to_upstream.set_delay(Duration::from_millis(*delay), Duration::ZERO);
            proxy.faults.to_client.set_delay(Duration::from_millis(*delay), Duration::ZERO);
            proxies.push((net, proxy));
        }
    }
    let ca_file = dir.path().join("ca.pem");
    // Wait until every node serves the certificate, then make a few connections per link.
    for (_, proxy) in &proxies {
        let resolve = format!("api.example.test:{}:{}", proxy.addr.port(), proxy.addr.ip());
        let url = format!("https://api.example.test:{}/", proxy.addr.port());
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut served = 0;
        while served < 4 {
            let out = curl(&[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                ca_file.to_str().unwrap(),
                "--resolve",
                &resolve,
                &url,
            ]);
            if out.stdout != b"000" {
                served += 1;
            } else {
                assert!(Instant::now() < deadline, "no TLS through {}: {out:?}", proxy.addr);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let answer = move |subnet: String| {
        let mut lines = short(dns, &["api.example.test", &format!("+subnet={subnet}")]);
        lines.retain(|l| !l.is_empty());
        lines
    };
    let network = |third: u8| format!("{}/24", ip(3, third));
    tokio::task::spawn_blocking(move || {
        wait(Duration::from_secs(10), "network A is sent to r1 and network B to r3", || {
            answer(network(201)) == vec![ip(3, 1)] && answer(network(202)) == vec![ip(3, 3)]
        });
    })
    .await
    .unwrap();
    // Without ECS, the query's source address is the client.
    let out = std::process::Command::new("dig")
        .args(["-b", &ip(3, 202), &format!("@{}", dns.ip()), "-p", &dns.port().to_string()])
        .args(["+short", "api.example.test"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ip(3, 3));
    let explain = cli(&["dns", "explain", "api.example.test", "--client", &ip(3, 201)], &nodes[1]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(text.contains("measured from this prefix"), "{text}");
    tokio::task::spawn_blocking(move || explain_agrees_with_the_answers(&nodes)).await.unwrap();
}

/// On every node, `dns explain` gives each client the answer a real query from that client
/// gets: clients in measured networks, in each region's own network, and elsewhere.
fn explain_agrees_with_the_answers(nodes: &[NodeProcess]) {
    let mut clients: Vec<String> = Vec::new();
    for third in [1u8, 2, 3, 201, 202, 203] {
        for last in [1u8, 77, 254] {
            clients.push(format!("127.{}.{third}.{last}", 120 + 3));
        }
    }
    clients.extend(["198.51.100.7", "10.1.2.3", "192.0.2.200"].map(String::from));
    let mut compared = 0;
    for node in nodes {
        let dns = node.dns.unwrap();
        for client in &clients {
            let out = cli(&["dns", "explain", "api.example.test", "--client", client, "-o", "json"], node);
            assert!(out.status.success(), "{out:?}");
            let explained: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let mut said: Vec<String> =
                explained["answer"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
            said.sort();
            let mut got = short(dns, &["api.example.test", &format!("+subnet={client}/32")]);
            got.retain(|l| !l.is_empty());
            assert_eq!(said, got, "node {:?}: explain and the answer to {client} differ: {explained}", node.dns);
            let region = explained["chosen_region"].as_str().unwrap();
            assert_eq!(explained["ranking"][0]["region"], region, "the answer is the top of the ranking");
            compared += 1;
        }
    }
    assert_eq!(compared, 3 * 21);
}

#[test]
fn forwarding_only_for_allowed_networks_and_garbage_is_harmless() {
    if !meridian_tests::tools(&["dig"]) {
        return;
    }
    // An upstream resolver: answers every query with 192.0.2.53.
    let upstream = UdpSocket::bind(format!("{}:0", ip(4, 9))).unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = upstream.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            // Header and question (dropping the query's OPT record), then one A record.
            let mut end = 12;
            while end < n && buf[end] != 0 {
                end += 1 + usize::from(buf[end]);
            }
            let mut reply = buf[..(end + 5).min(n)].to_vec();
            reply[2] |= 0x80;
            reply[3] = 0x80;
            reply[7] = 1;
            reply[10..12].copy_from_slice(&[0, 0]);
            reply.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 53]);
            let _ = upstream.send_to(&reply, from);
        }
    });
    let extra = format!(r#", forward: {{ upstreams: ["{upstream_addr}"], allow: ["{}/24"] }}"#, ip(4, 50));
    let mut nodes = cluster(4, &extra);
    let dns = nodes[0].dns.unwrap();
    put_zone(&nodes[0], "zone: example.test\nrouted: [api]\n");
    let from = |net: u8, name: &str| {
        let out = std::process::Command::new("dig")
            .args(["-b", &ip(4, net), &format!("@{}", dns.ip()), "-p", &dns.port().to_string()])
            .args(["+time=2", "+tries=1", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let allowed = from(50, "www.elsewhere.org");
    assert!(allowed.contains("192.0.2.53") && allowed.contains(" ra"), "{allowed}");
    let refused = from(51, "www.elsewhere.org");
    assert!(refused.contains("status: REFUSED"), "{refused}");
    wait(Duration::from_secs(10), "own zone still authoritative", || {
        from(50, "api.example.test").contains("flags: qr aa")
    });

    // Random datagrams: FORMERR or silence, never a crash.
    let socket = UdpSocket::bind(format!("{}:0", ip(4, 60))).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut state: u64 = 0x1234_5678_9abc_def0;
    let mut buf = [0u8; 2048];
    for i in 0..300 {
        let len = (i * 7) % 300;
        let packet: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        socket.send_to(&packet, dns).unwrap();
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            assert!(n >= 12 && buf[2] & 0x80 != 0, "a reply is a DNS response");
        }
    }
    assert!(nodes[0].is_running());
    assert!(dig(dns, &["api.example.test"]).contains("status: NOERROR"), "still answering");

    // 520 idle TCP connections from one address (more than the listener's 512) cannot lock
    // another client out of DNS over TCP.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let idle: Vec<tokio::net::TcpStream> = runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..520 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{}:0", ip(4, 70)).parse().unwrap()).unwrap();
            if let Ok(stream) = socket.connect(dns).await {
                held.push(stream);
            }
        }
        held
    });
    assert!(idle.len() >= 500, "{} connections made", idle.len());
    let tcp = std::process::Command::new("dig")
        .args(["-b", &ip(4, 50), &format!("@{}", dns.ip()), "-p", &dns.port().to_string()])
        .args(["+tcp", "+time=2", "+tries=1", "api.example.test"])
        .output()
        .unwrap();
    let tcp = String::from_utf8_lossy(&tcp.stdout);
    assert!(tcp.contains("status: NOERROR"), "another client over TCP: {tcp}");
    drop(idle);
}
