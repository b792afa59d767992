//! A TLS handshake load generator for tests/bench/grpc_tls.sh: full handshakes (no
//! resumption) with a client certificate and SNI, each followed by one HTTP/1.1 request
//! that must be answered 200, from `--connections` tasks for `--seconds`.
//!
//! ```text
//! tls-handshakes ADDR SERVER_NAME CA_PEM CERT_PEM KEY_PEM SECONDS CONNECTIONS
//! ```
//!
//! Prints `handshakes N failed F per_second R`; exits non-zero when nothing succeeded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn usage() -> ! {
    eprintln!("usage: tls-handshakes ADDR SERVER_NAME CA_PEM CERT_PEM KEY_PEM SECONDS CONNECTIONS");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, name, ca, cert, key, seconds, connections] = args.as_slice() else { usage() };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|_| usage());
    let seconds: u64 = seconds.parse().unwrap_or_else(|_| usage());
    let connections: usize = connections.parse().unwrap_or_else(|_| usage());
    let server_name = ServerName::try_from(name.clone()).unwrap_or_else(|_| usage());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap_or_else(|_| usage()) {
        roots.add(c.unwrap_or_else(|_| usage())).unwrap_or_else(|_| usage());
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap_or_else(|_| usage())
        .map(|c| c.unwrap_or_else(|_| usage()))
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|_| usage());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| usage())
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap_or_else(|e| {
            eprintln!("the client certificate and key do not fit: {e}");
            std::process::exit(2)
        });
    // Every connection a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (connector, server_name, request) = (connector.clone(), server_name.clone(), request.clone());
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let once = async {
                    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                    let mut tls = connector.connect(server_name.clone(), tcp).await.ok()?;
                    tls.write_all(request.as_bytes()).await.ok()?;
                    let mut answer = Vec::new();
                    let _ = tls.read_to_end(&mut answer).await;
                    answer.starts_with(b"HTTP/1.1 200").then_some(())
                };
                match once.await {
                    Some(()) => done.fetch_add(1, Ordering::Relaxed),
                    None => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("handshakes {done} failed {failed} per_second {:.1}", done as f64 / seconds as f64);
    if done == 0 {
        std::process::exit(1);
    }
}
