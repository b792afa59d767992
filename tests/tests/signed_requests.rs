//! Signed requests end to end: a one-node cluster serves routes with `authorization:
//! signed`; credentials come from `meridian credentials create`; requests are signed by
//! botocore (an independent, widely used SigV4 implementation, from PyPI) and sent with
//! hyper exactly as signed. Every signed part altered is refused; presigned URLs work and
//! expire; the secret never reaches the data directory or the logs.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use meridian_chaos::launcher::NodeProcess;
use meridian_tests::*;
use serde_json::{Value, json};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_signed_by_botocore_pass_and_every_tampering_is_refused() {
    let Some(python) = tokio::task::spawn_blocking(|| python_with("botocore-venv", &["botocore"])).await.unwrap()
    else {
        return;
    };
    let ip = format!("127.{}.{}.1", 230, std::process::id() % 250);
    let dir = tempfile::Builder::new().prefix("meridian-signed-").tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let config = format!(
        r#"
listen: {{ http: "{ip}:0" }}
admin: {{ listen: "{ip}:0", token_file: admin.token }}
cluster: {{ data_dir: data, rpc: "{ip}:7001" }}
"#
    );
    let node = tokio::task::spawn_blocking(move || {
        NodeProcess::launch(dir, &config, &["cluster", "init", "--region", "r1"], &[]).expect("the node starts")
    })
    .await
    .unwrap();
    let backend = echo_backend().await;
    let definition = node.dir().join("api.yaml");
    std::fs::write(
        &definition,
        format!(
            r#"
apis:
  - id: pets
    signing: {{ region: eu-west-1, service: execute-api }}
    routes:
      - route: ANY /pets
        authorization: signed
        integration: {{ type: http_proxy, uri: "http://{backend}/pets" }}
      - route: GET /open
        integration: {{ type: mock, body: open }}
"#
        ),
    )
    .unwrap();
    let out = cli(&["apply", "-f", definition.to_str().unwrap(), "--stage", "prod"], &node);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&["credentials", "create", "--name", "partner", "--output", "json"], &node);
    assert!(out.status.success(), "{out:?}");
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (access_key, secret) = (
        created["access_key_id"].as_str().unwrap().to_string(),
        created["secret_access_key"].as_str().unwrap().to_string(),
    );
    let gw = node.http.unwrap();
    let host = format!("pets.example.test:{}", gw.port());
    let spec = |method: &str, path: &str, body: &str, extra: Value| {
        let mut s = json!({
            "method": method,
            "url": format!("http://{host}{path}"),
            "headers": {"x-custom": "one"},
            "body": body,
            "access_key": access_key,
            "secret_key": secret,
            "region": "eu-west-1",
            "service": "execute-api",
        });
        s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        s
    };
    let specs = json!([
        spec("GET", "/prod/pets?limit=2&b=x%20y", "", json!({})),
        spec("POST", "/prod/pets", "{\"name\": \"rex\"}", json!({})),
        spec("GET", "/prod/pets?limit=2", "", json!({"presign": true, "expires": 300})),
        spec("GET", "/prod/pets", "", json!({"skew_seconds": -600})),
        spec("GET", "/prod/pets", "", json!({"secret_key": "not-the-secret-not-the-secret-not-the-s"})),
        spec("GET", "/prod/pets", "", json!({"access_key": "MRDNUNKNOWNKEY000000"})),
        spec("GET", "/prod/pets", "", json!({"region": "us-east-1"})),
        spec("GET", "/prod/pets", "", json!({"presign": true, "expires": 1})),
    ]);
    let signed = tokio::task::spawn_blocking(move || botocore_sign(&python, &specs)).await.unwrap();
    let [get, post, presigned, stale, wrong_secret, unknown_key, wrong_region, short_lived] = signed.as_slice() else {
        panic!("eight signed requests");
    };

    // Signed requests pass, with the body hashed and checked.
    let r = send_signed(gw, "GET", get, "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = send_signed(gw, "POST", post, "{\"name\": \"rex\"}").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = send_signed(gw, "GET", presigned, "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // No signature at all: 401; a route without `authorization` stays open.
    let unsigned = hyper::Request::get("/prod/pets").header("host", &host).body(Full::new(Bytes::new())).unwrap();
    let r = send(gw, unsigned).await;
    assert_eq!((r.status, r.header("www-authenticate")), (401, "AWS4-HMAC-SHA256"));
    assert_eq!(get_open(gw, &host).await, 200);

    // Each signed part altered is refused.
    let altered = |f: &dyn Fn(&mut Value)| {
        let mut s = get.clone();
        f(&mut s);
        s
    };
    let with_url =
        |from: &str, to: &str| altered(&|s| s["url"] = s["url"].as_str().unwrap().replacen(from, to, 1).into());
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("method", "DELETE", get.clone(), ""),
        ("path", "GET", with_url("/prod/pets", "/prod/pets/"), ""),
        ("query value", "GET", with_url("limit=2", "limit=3"), ""),
        ("query added", "GET", with_url("limit=2", "limit=2&admin=1"), ""),
        ("signed header", "GET", altered(&|s| s["headers"]["x-custom"] = "two".into()), ""),
        (
            "date",
            "GET",
            altered(&|s| {
                let date = s["headers"]["X-Amz-Date"].as_str().unwrap().to_string();
                let seconds: u32 = date[13..15].parse().unwrap();
                s["headers"]["X-Amz-Date"] = format!("{}{:02}Z", &date[..13], (seconds + 1) % 60).into();
            }),
            "",
        ),
        ("body", "POST", post.clone(), "{\"name\": \"max\"}"),
        (
            "presigned query",
            "GET",
            {
                let mut p = presigned.clone();
                p["url"] = p["url"].as_str().unwrap().replacen("limit=2", "limit=9", 1).into();
                p
            },
            "",
        ),
    ];
    for (what, method, request, body) in cases {
        let r = send_signed(gw, method, &request, body).await;
        assert_eq!(r.status, 403, "{what} altered: {}", String::from_utf8_lossy(&r.body));
    }
    for (what, request, message) in [
        ("a stale date", stale, "more than 5 minutes"),
        ("another secret", wrong_secret, "does not match"),
        ("an unknown key", unknown_key, "access key is not valid"),
        ("another region", wrong_region, "region `eu-west-1`"),
    ] {
        let r = send_signed(gw, "GET", request, "").await;
        assert_eq!(r.status, 403, "{what}");
        assert!(r.json()["message"].as_str().unwrap().contains(message), "{what}: {:?}", r.json());
    }
    // A presigned URL stops working once it expires.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = send_signed(gw, "GET", short_lived, "").await;
    assert_eq!(r.status, 403);
    assert!(r.json()["message"].as_str().unwrap().contains("expired"));

    // Disabled credentials are refused, enabled ones pass again.
    assert!(cli(&["credentials", "disable", "partner"], &node).status.success());
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while send_signed(gw, "GET", get, "").await.status != 403 {
        assert!(std::time::Instant::now() < until, "disabling never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = cli(&["credentials", "list"], &node);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(&access_key) && listed.contains("partner"), "{listed}");

    // The secret is nowhere on disk or in the logs (the list above did not show it either).
    assert!(!listed.contains(&secret));
    let mut stack = vec![node.dir().to_path_buf()];
    let mut files = 0;
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().flatten().map(|e| e.path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            files += 1;
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the secret is in {}",
                path.display()
            );
        }
    }
    assert!(files > 5, "the data directory was searched ({files} files)");
}

async fn get_open(gw: SocketAddr, host: &str) -> u16 {
    let request = hyper::Request::get("/prod/open").header("host", host).body(Full::new(Bytes::new())).unwrap();
    send(gw, request).await.status
}
