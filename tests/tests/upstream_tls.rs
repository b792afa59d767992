//! Upstream TLS end to end: a backend on loopback that requires a client certificate from
//! the test CA and serves a certificate for `backend.internal`; the gateway reaches it with
//! its CA, the name it sends in SNI or the one the certificate must carry, and its client
//! certificate. Without the certificate, or with a name the certificate does not carry, the
//! answer is a 502; a client key others may read is refused at validation.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use meridian_tests::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A backend requiring client certificates from `ca`, answering with the SNI it was sent
/// and the number of certificates the client presented.
async fn mutual_tls_backend(ca: &TestCa, dir: &std::path::Path) -> SocketAddr {
    ca.issue(dir, "backend.internal");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("backend.internal.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("backend.internal.key")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let (_, session) = tls.get_ref();
                let sni = session.server_name().unwrap_or("none").to_string();
                let presented = session.peer_certificates().map_or(0, |c| c.len());
                let service = hyper::service::service_fn(move |_req| {
                    let text = format!("sni={sni} client-certificates={presented}");
                    async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(text)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    addr
}

fn private(path: &std::path::Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_presents_its_certificate_and_checks_the_backends_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    ca.issue(dir.path(), "gateway.client");
    private(&dir.path().join("gateway.client.key"));
    let backend = mutual_tls_backend(&ca, dir.path()).await;
    let port = backend.port();
    let files = dir.path().display();
    let node = start_node(format!(
        r#"
listen: {{ http: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
apis:
  - id: shop
    routes:
      - route: GET /mtls
        integration:
          type: http_proxy
          uri: "https://backend.internal:{port}/"
          targets: [{{ address: "127.0.0.1:{port}" }}]
          ca_file: {files}/ca.pem
          tls: {{ client_certificate: {files}/gateway.client.pem, client_key: {files}/gateway.client.key }}
      - route: GET /by-address
        integration:
          type: http_proxy
          uri: "https://127.0.0.1:{port}/"
          ca_file: {files}/ca.pem
          tls:
            server_name: api.partner.test
            expected_name: backend.internal
            client_certificate: {files}/gateway.client.pem
            client_key: {files}/gateway.client.key
      - route: GET /anonymous
        integration:
          type: http_proxy
          uri: "https://backend.internal:{port}/"
          targets: [{{ address: "127.0.0.1:{port}" }}]
          ca_file: {files}/ca.pem
      - route: GET /wrong-name
        integration:
          type: http_proxy
          uri: "https://backend.internal:{port}/"
          targets: [{{ address: "127.0.0.1:{port}" }}]
          ca_file: {files}/ca.pem
          tls: {{ expected_name: other.internal, client_certificate: {files}/gateway.client.pem, client_key: {files}/gateway.client.key }}
    stages: [{{ name: prod }}]
"#
    ))
    .await;
    let gw = node.http.expect("http listener");
    let ask = |path: &'static str| async move { get(gw, "shop.test", path).await };

    let reply = ask("/prod/mtls").await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(&reply.body[..], b"sni=backend.internal client-certificates=1");
    // By address: SNI says one name, the certificate is checked for another.
    let reply = ask("/prod/by-address").await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(&reply.body[..], b"sni=api.partner.test client-certificates=1");
    // Without a client certificate the backend refuses the handshake; a name the
    // certificate does not carry is refused by the gateway.
    assert_eq!(ask("/prod/anonymous").await.status, 502);
    assert_eq!(ask("/prod/wrong-name").await.status, 502);
    let log = node.stderr();
    assert!(log.contains("upstream call failed") && log.contains("certificate"), "{log}");
}

#[test]
fn client_keys_others_can_read_and_half_identities_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.issue(dir.path(), "gateway.client");
    let files = dir.path().display();
    let definition = |tls: &str| {
        format!(
            "listen: {{ http: \"127.0.0.1:0\" }}\napis:\n  - id: shop\n    routes:\n      - route: GET /x\n        integration: {{ type: http_proxy, uri: \"https://backend.internal:8443/\", tls: {tls} }}\n    stages: [{{ name: prod }}]\n"
        )
    };
    for (tls, expected) in [
        (
            format!("{{ client_certificate: {files}/gateway.client.pem, client_key: {files}/gateway.client.key }}"),
            "chmod 600",
        ),
        (
            format!("{{ client_certificate: {files}/gateway.client.pem }}"),
            "`client_certificate` and `client_key` together",
        ),
        ("{ server_name: \"bad name\" }".to_string(), "is not a DNS name"),
    ] {
        let out = validate(&definition(&tls));
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && text.contains(expected), "{tls}: {text}");
    }
    let plain = "listen: { http: \"127.0.0.1:0\" }\napis:\n  - id: shop\n    routes:\n      - route: GET /x\n        integration: { type: http_proxy, uri: \"http://backend.internal:8080/\", tls: { server_name: a.test } }\n    stages: [{ name: prod }]\n";
    assert!(String::from_utf8_lossy(&validate(plain).stderr).contains("`tls` is for an `https` upstream"));
}
