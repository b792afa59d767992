//! The deployment artefacts in `deploy/`, each checked by the tool that knows its format:
//! the systemd unit by `systemd-analyze` (verify, and its exposure score), the Prometheus
//! alert rules by `promtool` (check and the rules' unit tests), and the Grafana dashboard
//! against a running one-node cluster: every metric its queries name is one the node exports;
//! the container image definition by Docker's parser, and the Kubernetes manifests against
//! the API schemas.
//! A missing tool skips its test with a SKIPPED line (CI installs them all).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meridian_chaos::launcher::{NodeProcess, meridian_binary};
use meridian_tests::{TestCa, cli, get, tools};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    if !tools(&["systemd-analyze"]) {
        return;
    }
    // The unit as shipped, with the binary under test where it expects /usr/local/bin.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(deploy().join("systemd/meridian.service")).unwrap();
    let unit = unit.replace("/usr/local/bin/meridian", meridian_binary().to_str().unwrap());
    std::fs::write(dir.path().join("meridian.service"), unit).unwrap();
    std::fs::create_dir(dir.path().join("meridian.service.d")).unwrap();
    std::fs::copy(
        deploy().join("systemd/meridian.service.d/dns-port-53.conf"),
        dir.path().join("meridian.service.d/dns-port-53.conf"),
    )
    .unwrap();
    let unit_path = format!("{}:", dir.path().display());
    let verify = Command::new("systemd-analyze")
        .args(["verify", "meridian.service"])
        .env("SYSTEMD_UNIT_PATH", &unit_path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    // systemd-analyze only warns about unknown keys and bad values: any line is a failure.
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    // Exposure 0.0 (locked down) to 10.0; the unit is held at 2.0 or less.
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "./meridian.service"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&security.stdout);
    let level = out.lines().find(|l| l.contains("Overall exposure level")).unwrap_or("").to_string();
    eprintln!("{level}");
    assert!(security.status.success(), "exposure above 2.0: {level}\n{}", String::from_utf8_lossy(&security.stderr));
}

#[test]
fn the_alert_rules_check_and_pass_their_unit_tests() {
    if !tools(&["promtool"]) {
        return;
    }
    let dir = deploy().join("prometheus");
    for args in [["check", "rules", "alerts.yaml"], ["test", "rules", "alerts.test.yaml"]] {
        let out = Command::new("promtool").args(args).current_dir(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The metric names an expression mentions (`meridian_...`, histogram buckets as their
/// series names).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("meridian_") {
        let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

const TOKEN: &str = "deploy-test-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_metric_is_one_a_node_exports() {
    if !tools(&["dig"]) {
        return;
    }
    // 127.141.x: apart from the cluster tests (127.101-120.x) and the docs (127.5-7.x).
    let ip = format!("127.141.{}.1", std::process::id() % 250);
    let dir = tempfile::Builder::new().prefix("meridian-deploy-").tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let ca = TestCa::new();
    ca.issue(dir.path(), "api.example.com");
    let config = format!(
        r#"
listen: {{ http: "{ip}:0", https: "{ip}:0" }}
admin: {{ listen: "{ip}:0", token_file: admin.token }}
cluster: {{ data_dir: data, rpc: "{ip}:7001", dns: {{ listen: "{ip}:0" }} }}
"#
    );
    let node = NodeProcess::launch(dir, &config, &["cluster", "init", "--region", "r1"], &[]).unwrap();
    let work = node.dir().to_path_buf();
    // An API whose routes produce each kind of metric: an upstream that is down (5xx and
    // upstream failures), a throttle of 1 request per second (429s), a firewall rule and a
    // response cache.
    std::fs::write(
        work.join("api.yaml"),
        r#"
apis:
  - id: shop
    type: rest
    waf: { rules: [ { name: no-admin, action: block, pattern: { part: path, contains: /admin } } ] }
    routes:
      - { route: GET /down, integration: { type: http_proxy, uri: "http://127.0.0.1:9/down", timeout: 1s } }
      - { route: GET /tight, throttle: { rate: 1, burst: 1 }, integration: { type: mock, body: tight } }
      - { route: GET /cached, cache: { ttl: 60s }, integration: { type: mock, body: cached } }
      - { route: GET /admin, integration: { type: mock, body: never } }
      - { route: GET /keyed, api_key_required: true, integration: { type: mock, body: keyed } }
    stages:
      - { name: prod, cache: { ttl: 60s } }
"#,
    )
    .unwrap();
    let out = cli(&["apply", "-f", work.join("api.yaml").to_str().unwrap(), "--stage", "prod"], &node);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pem = work.join("api.example.com.pem");
    let key = work.join("api.example.com.key");
    let out = cli(
        &[
            "domains",
            "put",
            "api.example.com",
            "--certificate",
            pem.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--map",
            "/=shop:prod",
        ],
        &node,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A usage plan with a quota of 10 a day: its last request is within a tenth of it.
    for args in [
        &["keys", "create", "--name", "k", "--value", "deploy-test-key-0123456789abcdef"][..],
        &["plans", "create", "--name", "small", "--rate", "100", "--burst", "100", "--quota", "10/day"],
        &["plans", "attach", "small", "--api", "shop", "--stage", "prod"],
        &["plans", "add-key", "small", "k"],
    ] {
        let out = cli(args, &node);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(work.join("zone.yaml"), "zone: example.com\nrouted: [api]\n").unwrap();
    let out = cli(&["dns", "zones", "put", work.join("zone.yaml").to_str().unwrap()], &node);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let http = node.http.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(http, "shop.test", "/prod/cached").await.status != 200 {
        assert!(Instant::now() < deadline, "the API is not served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for path in ["/prod/cached", "/prod/down", "/prod/tight", "/prod/tight", "/prod/tight", "/prod/admin"] {
        get(http, "shop.test", path).await;
    }
    let keyed = |http| {
        let request = hyper::Request::get("/prod/keyed")
            .header("host", "shop.test")
            .header("x-api-key", "deploy-test-key-0123456789abcdef")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        meridian_tests::send(http, request)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while keyed(http).await.status != 200 {
        assert!(Instant::now() < deadline, "the key is not granted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..12 {
        keyed(http).await;
    }
    // A WebSocket API: a connection, a message (no route takes it) and a callback call.
    std::fs::write(
        work.join("chat.yaml"),
        "apis:\n  - id: chat\n    type: websocket\n    routes:\n      - { route: sendmessage, integration: { type: http_proxy, uri: \"http://127.0.0.1:9/send\" } }\n",
    )
    .unwrap();
    let out = cli(&["apply", "-f", work.join("chat.yaml").to_str().unwrap(), "--stage", "live"], &node);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut socket, id) = loop {
        match tokio_tungstenite::connect_async(format!("ws://{http}/live")).await {
            Ok((socket, response)) => break (socket, response.headers()["x-meridian-connection-id"].clone()),
            Err(e) => assert!(Instant::now() < deadline, "the WebSocket API is not served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    {
        use futures_util::{SinkExt, StreamExt};
        socket.send(tokio_tungstenite::tungstenite::Message::text("hello")).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
    }
    let path = format!("/v1/apis/chat/stages/live/connections/{}", id.to_str().unwrap());
    let auth = format!("Bearer {TOKEN}");
    let pushed =
        meridian_tests::request(node.admin, "GET", &path, &[("host", "admin"), ("authorization", &auth)], "").await;
    assert_eq!(pushed.status, 200, "{:?}", pushed.body);

    let dns = node.dns.unwrap();
    let dig = Command::new("dig")
        .args([
            &format!("@{}", dns.ip()),
            "-p",
            &dns.port().to_string(),
            "+short",
            "+tries=2",
            "+time=1",
            "api.example.com",
        ])
        .output()
        .unwrap();
    assert!(dig.status.success());

    let admin = node.admin;
    let mut wanted = BTreeSet::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("grafana/meridian.json")).unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            wanted.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    let alerts = std::fs::read_to_string(deploy().join("prometheus/alerts.yaml")).unwrap();
    // `meridian_limit_peer_silence_seconds` needs a peer: the cluster tests export it.
    wanted.extend(metric_names(&alerts).into_iter().filter(|m| m != "meridian_limit_peer_silence_seconds"));
    assert!(wanted.len() >= 15, "{wanted:?}");
    // The metrics a node exports, once the requests above have been counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scraped = get(admin, "admin", "/metrics").await;
        let text = String::from_utf8_lossy(&scraped.body).into_owned();
        let exported: BTreeSet<String> = text.lines().filter(|l| !l.starts_with('#')).flat_map(metric_names).collect();
        let missing: Vec<&String> = wanted.difference(&exported).collect();
        let count = |name: &str| -> f64 {
            text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
        };
        if missing.is_empty() {
            // The counters behind the limit alerts count what they say.
            assert!(count("meridian_quota_low_requests_total") >= 1.0, "{text}");
            assert!(count("meridian_rate_limited_total{kind=\"throttle\"}") >= 1.0, "{text}");
            assert!(count("meridian_rate_limited_total{kind=\"quota\"}") >= 1.0, "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard or the alerts name metrics the node does not export: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn the_kubernetes_manifests_validate_against_the_api_schemas() {
    let Some(python) = meridian_tests::python_with("kubernetes-venv", &["kubernetes-validate==1.31.0"]) else { return };
    let out = Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", "1.31.0"])
        .arg(deploy().join("kubernetes/meridian.yaml"))
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    // Every object of the file was checked (kubernetes-validate prints one line each).
    let objects =
        std::fs::read_to_string(deploy().join("kubernetes/meridian.yaml")).unwrap().matches("\nkind: ").count();
    assert!(said.matches(" passed for resource ").count() >= objects, "{objects} objects: {said}");
}

/// The pods' start script writes the node's file from the pod's identity and runs the right
/// command: `serve` once the node has data, `cluster init` on the founder, `cluster join`
/// elsewhere (a stand-in `meridian` prints what it was asked).
#[test]
fn the_pod_start_script_serves_founds_or_joins() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("meridian"), "#!/bin/sh\necho \"meridian $*\"\n").unwrap();
    std::fs::set_permissions(bin.join("meridian"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = std::fs::read_to_string(deploy().join("kubernetes/start.sh")).unwrap();
    // The script's fixed paths, moved into the test's folder.
    let data = dir.path().join("data");
    let config = dir.path().join("node.yaml");
    let script = script
        .replace("/var/lib/meridian/data", data.to_str().unwrap())
        .replace("/tmp/node.yaml", config.to_str().unwrap());
    let run = |pod: &str| {
        let out = Command::new("sh")
            .args(["-c", &script])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .envs([
                ("POD_NAME", pod),
                ("POD_IP", "10.1.2.3"),
                ("NAMESPACE", "meridian"),
                ("REGION", "r1"),
                ("SERVICE", "meridian-r1"),
                ("FOUNDER", "meridian-r1-0"),
                ("FOUNDER_RPC", "meridian-r1-0.meridian-r1.meridian.svc.cluster.local:7001"),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let cfg = config.to_str().unwrap();
    assert_eq!(
        run("meridian-r1-0"),
        format!("meridian cluster init --config {cfg} --region r1 --ready-file /var/lib/meridian/ready")
    );
    assert_eq!(
        run("meridian-r1-1"),
        format!(
            "meridian cluster join --config {cfg} --region r1 --peer meridian-r1-0.meridian-r1.meridian.svc.cluster.local:7001"
        )
    );
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("advertise_rpc: \"meridian-r1-1.meridian-r1.meridian.svc.cluster.local:7001\""),
        "{written}"
    );
    assert!(written.contains("advertise_address: \"10.1.2.3\""), "{written}");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("node.json"), "{}").unwrap();
    assert_eq!(run("meridian-r1-1"), format!("meridian serve --config {cfg}"));
    // The file it writes is one the node takes (its admin token file aside).
    let checked = written.replace("/etc/meridian/secret/admin.token", dir.path().join("admin.token").to_str().unwrap());
    std::fs::write(dir.path().join("admin.token"), "a-token-of-twenty-four-chars").unwrap();
    std::fs::write(&config, checked).unwrap();
    let out = Command::new(meridian_binary()).args(["validate", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The container image definition, read by Docker's own parser (the `dockerfile` package
/// wraps BuildKit's): it builds the binary with the lockfile, runs as the unprivileged user
/// the Kubernetes pods name, copies only files that exist, and exposes the ports the pods
/// declare. (Building the image needs a registry for its base images, which this machine
/// cannot reach.)
#[test]
fn the_container_image_definition_parses_and_matches_the_pods() {
    let Some(python) = meridian_tests::python_with("dockerfile-venv", &["dockerfile==3.4.0"]) else { return };
    let out = Command::new(python)
        .args([
            "-c",
            "import dockerfile, json, sys\n\
             print(json.dumps([[c.cmd, list(c.value), list(c.flags)] for c in dockerfile.parse_file(sys.argv[1])]))",
        ])
        .arg(deploy().join("container/Containerfile"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let instructions: Vec<(String, Vec<String>, Vec<String>)> = serde_json::from_slice(&out.stdout).unwrap();
    let of = |cmd: &'static str| instructions.iter().filter(move |(c, _, _)| c.eq_ignore_ascii_case(cmd));
    let stages: Vec<&Vec<String>> = of("FROM").map(|(_, v, _)| v).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage: {stages:?}");
    for image in stages.iter().map(|v| &v[0]) {
        assert!(image.contains(':') && !image.ends_with(":latest"), "base images are pinned by tag: {image}");
    }
    assert!(of("RUN").any(|(_, v, _)| v[0].contains("cargo build --release --locked")));
    // Everything after the runtime stage's FROM runs as the pods' user.
    let last_from = instructions.iter().rposition(|(c, _, _)| c == "FROM").unwrap();
    let users: Vec<&String> =
        instructions[last_from..].iter().filter(|(c, _, _)| c == "USER").map(|(_, v, _)| &v[0]).collect();
    assert_eq!(users, ["10001:10001"], "the image runs as uid 10001");
    let manifests = std::fs::read_to_string(deploy().join("kubernetes/meridian.yaml")).unwrap();
    assert!(manifests.contains("runAsUser: 10001") && manifests.contains("readOnlyRootFilesystem: true"));
    // Files copied from the checkout exist; the binary comes from the build stage.
    for (_, value, flags) in of("COPY") {
        if flags.iter().any(|f| f.starts_with("--from=")) {
            continue;
        }
        let source = &value[0];
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(source);
        assert!(path.exists(), "COPY {source}: not in the repository");
    }
    // The pods' container ports are the ones the image exposes.
    let exposed: BTreeSet<String> = of("EXPOSE").flat_map(|(_, v, _)| v.iter().cloned()).collect();
    for port in ["8080", "8443", "9901", "7001", "5353/udp", "5353/tcp"] {
        assert!(exposed.contains(port), "EXPOSE lacks {port}: {exposed:?}");
        let number = port.split('/').next().unwrap();
        assert!(manifests.contains(&format!("containerPort: {number}")), "the pods do not declare {port}");
    }
    let entrypoint: Vec<&Vec<String>> = of("ENTRYPOINT").map(|(_, v, _)| v).collect();
    assert_eq!(entrypoint, [&vec!["/usr/local/bin/meridian".to_string()]]);
}
