//! Mutual TLS on custom domains with curl's `--cert`/`--key`: a domain that requires a client
//! certificate refuses the handshake without one (or with one from another CA, or revoked), a
//! domain that requests one lets a client without it (or with a bad one) in anonymously, and the verified certificate's
//! subject, names and fingerprint reach a transform (so the upstream sees them), the
//! firewall and the access log.

use std::path::Path;
use std::process::Output;

use meridian_tests::*;

/// curl over TLS to `domain` (on the gateway's loopback `port`), trusting the test CA, with
/// `identity`'s certificate and key when given, and `extra` arguments.
fn curl_tls(port: u16, domain: &str, path: &str, dir: &Path, identity: Option<&str>, extra: &[&str]) -> Output {
    let resolve = format!("{domain}:{port}:127.0.0.1");
    let url = format!("https://{domain}:{port}{path}");
    let ca = dir.join("ca.pem").display().to_string();
    let mut args = vec!["-s", "--cacert", &ca, "--resolve", &resolve];
    let (cert, key);
    if let Some(name) = identity {
        cert = dir.join(format!("{name}.pem")).display().to_string();
        key = dir.join(format!("{name}.key")).display().to_string();
        args.extend_from_slice(&["--cert", &cert, "--key", &key]);
    }
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// The status code of a curl run with `-w %{http_code}`.
const STATUS: [&str; 4] = ["-o", "/dev/null", "-w", "%{http_code}"];

/// What the echo backend saw of `GET /who`, or why there was no answer.
fn curl_https(port: u16, domain: &str, dir: &Path, identity: Option<&str>) -> Result<serde_json::Value, String> {
    let out = curl_tls(port, domain, "/who", dir, identity, &["--fail"]);
    if !out.status.success() {
        return Err(format!("curl exited with {}", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_ask_for_client_certificates_and_pass_the_identity_on() {
    if !tools(&["curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new();
    std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
    for name in ["mtls.test", "open.test", "plain.test", "alice.client", "carol.client"] {
        ca.issue(d, name);
    }
    // Dave's certificate is revoked by the truststore's revocation list.
    ca.issue_with_serial(d, "dave.client", 4242);
    std::fs::write(d.join("revoked.crl"), ca.revocation_list(&[4242])).unwrap();
    // A certificate from a CA the domains do not trust.
    let stranger = TestCa::new();
    stranger.issue(d, "mallory.client");
    let echo = echo_backend().await;
    // An authorizer that lets in alice's certificate only, whatever the token.
    let authorizer = http_service(|req| async move {
        let asked: serde_json::Value = serde_json::from_slice(req.body()).unwrap_or_default();
        let names = &asked["requestContext"]["authentication"]["clientCert"]["subjectAlternativeNames"];
        let alice = names.as_array().is_some_and(|n| n.iter().any(|v| v == "alice.client"));
        let decision = serde_json::json!({ "isAuthorized": alice });
        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(decision.to_string())))
    })
    .await;
    let files = d.display();
    let node = start_node(format!(
        r#"
listen: {{ https: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ path: {files}/access.log }}
apis:
  - id: shop
    authorizers:
      - {{ name: gate, type: custom, uri: "http://{authorizer}/", identity_sources: [$request.header.x-token] }}
    waf:
      rules:
        - {{ name: no-carol, action: block, pattern: {{ part: client_cert, contains: carol.client }} }}
    routes:
      - route: GET /who
        transform:
          request:
            headers:
              set:
                x-client-subject: $context.identity.clientCert.subjectDN
                x-client-names: $context.identity.clientCert.sans
                x-client-fingerprint: $context.identity.clientCert.fingerprint
        integration: {{ type: http_proxy, uri: "http://{echo}/who" }}
      - route: GET /vip
        authorizer: gate
        integration: {{ type: http_proxy, uri: "http://{echo}/vip" }}
    stages: [{{ name: prod }}]
domains:
  - name: mtls.test
    certificate: {files}/mtls.test.pem
    key: {files}/mtls.test.key
    client_certificates: {{ ca_file: {files}/ca.pem, crl_file: {files}/revoked.crl }}
    mappings: [{{ api: shop, stage: prod }}]
  - name: open.test
    certificate: {files}/open.test.pem
    key: {files}/open.test.key
    client_certificates: {{ ca_file: {files}/ca.pem, required: false }}
    mappings: [{{ api: shop, stage: prod }}]
  - name: plain.test
    certificate: {files}/plain.test.pem
    key: {files}/plain.test.key
    mappings: [{{ api: shop, stage: prod }}]
"#
    ))
    .await;
    let port = node.https.expect("https listener").port();

    // Required: with the client's certificate, the upstream sees who it is.
    let seen = curl_https(port, "mtls.test", d, Some("alice.client")).expect("a trusted client gets in");
    let headers = &seen["headers"];
    assert!(headers["x-client-subject"].as_str().unwrap_or("").contains("CN="), "{seen}");
    assert_eq!(headers["x-client-names"], "alice.client");
    assert_eq!(headers["x-client-fingerprint"].as_str().map(str::len), Some(64));
    // The firewall reads the certificate too: carol's is trusted, and blocked by a rule.
    assert!(curl_https(port, "mtls.test", d, Some("carol.client")).is_err(), "blocked by the firewall (403)");
    // Without one, or with a stranger's, the handshake fails.
    assert!(curl_https(port, "mtls.test", d, None).is_err(), "no certificate, no handshake");
    assert!(curl_https(port, "mtls.test", d, Some("mallory.client")).is_err(), "an untrusted CA");
    assert!(curl_https(port, "mtls.test", d, Some("dave.client")).is_err(), "a revoked certificate");
    // The same certificate where no revocation list applies: the list made the difference.
    assert!(curl_https(port, "open.test", d, Some("dave.client")).is_ok(), "dave's certificate is otherwise good");

    // Requested: a client without a certificate, or with one the truststore does not accept,
    // gets in with no identity.
    let anonymous = curl_https(port, "open.test", d, None).expect("requested, not required");
    assert_eq!(anonymous["headers"]["x-client-names"], "");
    let known = curl_https(port, "open.test", d, Some("alice.client")).expect("with a certificate");
    assert_eq!(known["headers"]["x-client-names"], "alice.client");
    let stranger = curl_https(port, "open.test", d, Some("mallory.client")).expect("a bad certificate, requested");
    assert_eq!(stranger["headers"]["x-client-names"], "", "served without identity");

    // The authorizer decides on the certificate: its cached decision for alice (same token)
    // is not dave's.
    let vip = |domain: &str, who: &str| {
        let out = curl_tls(port, domain, "/vip", d, Some(who), &[&STATUS[..], &["-H", "x-token: shared"]].concat());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(vip("mtls.test", "alice.client"), "200");
    assert_eq!(vip("open.test", "dave.client"), "403", "the same token with another certificate asks again");
    assert_eq!(vip("open.test", "alice.client"), "200");

    // A domain without mutual TLS asks for nothing.
    let plain = curl_https(port, "plain.test", d, Some("alice.client")).expect("plain TLS");
    assert_eq!(plain["headers"]["x-client-names"], "");

    // A connection made for another domain cannot reach the mutual TLS one through its
    // Host header: 421, so the client connects to that domain (and shows its certificate).
    for sni in ["plain.test", "open.test"] {
        let out = curl_tls(port, sni, "/who", d, None, &[&STATUS[..], &["-H", "Host: mtls.test"]].concat());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "421", "SNI {sni}, Host mtls.test");
    }

    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(d.join("access.log")).unwrap_or_default();
    let who = log.lines().filter(|l| l.contains("\"path\":\"/who\""));
    let with_identity = who.filter(|l| l.contains("\"client_cert\":\"CN=")).count();
    assert_eq!(with_identity, 4, "the four requests for /who with a verified certificate: {log}");
    assert!(log.contains("\"status\":403") && log.contains("\"reason\":\"waf rule no-carol\""), "{log}");
    // The misdirected requests are logged (and counted) like any refusal.
    let misdirected = log.lines().filter(|l| l.contains("\"status\":421") && l.contains("misdirected")).count();
    assert_eq!(misdirected, 2, "{log}");
}

#[test]
fn client_certificates_need_https_and_a_readable_truststore() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let files = dir.path().display();
    let definition = |listen: &str, ca_file: &str| {
        format!(
            "listen: {{ {listen} }}\ndomains:\n  - name: a.test\n    client_certificates: {{ ca_file: {ca_file} }}\n    mappings: []\n"
        )
    };
    let no_https = validate(&definition("http: \"127.0.0.1:0\"", &format!("{files}/ca.pem")));
    assert!(String::from_utf8_lossy(&no_https.stderr).contains("turn on the `https` listener"));
    let missing = validate(&definition("http: \"127.0.0.1:0\"", &format!("{files}/nothing.pem")));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"), "{missing:?}");
}
