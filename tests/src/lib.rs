//! Shared helpers for the end-to-end tests: starting nodes and backends, making
//! certificates, and small HTTP clients. The tests themselves live in `tests/tests/`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
pub use meridian_chaos::launcher::NodeProcess;

/// Starts a node without blocking the async test's runtime.
pub async fn start_node(config: String) -> NodeProcess {
    tokio::task::spawn_blocking(move || NodeProcess::start(&config))
        .await
        .expect("launcher thread")
        .unwrap_or_else(|e| panic!("node did not start: {e}"))
}

/// Starts a node in `dir`, which already holds the files its configuration names.
pub async fn start_node_in(dir: tempfile::TempDir, config: String) -> NodeProcess {
    tokio::task::spawn_blocking(move || NodeProcess::start_in(dir, &config, &[]))
        .await
        .expect("launcher thread")
        .unwrap_or_else(|e| panic!("node did not start: {e}"))
}

/// Starts the built-in echo backend on a free loopback port.
pub async fn echo_backend() -> SocketAddr {
    meridian_node::demo::echo::spawn("127.0.0.1:0".parse().unwrap()).await.expect("echo backend")
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// Sends one HTTP/1.1 request over a fresh connection.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    Reply { status, headers, body }
}

/// `method path` with `headers` (`host` among them) and `body`, over a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> impl std::future::Future<Output = Reply> + use<> {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(addr, request.body(Full::new(Bytes::from_static(body.as_bytes()))).expect("a valid request"))
}

/// `GET path` with `Host: host`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    send(addr, Request::get(path).header("host", host).body(Full::new(Bytes::new())).unwrap()).await
}

/// Runs curl with `args` (it must be installed; `.ci/run` installs it).
/// Runs `meridian <args> --config <node's file> --admin <node's admin address>`, as an
/// operator drives a node.
pub fn cli(args: &[&str], node: &meridian_chaos::launcher::NodeProcess) -> Output {
    std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(args)
        .arg("--config")
        .arg(node.config_path())
        .arg("--admin")
        .arg(node.admin.to_string())
        .output()
        .expect("the meridian binary runs")
}

/// Runs `meridian validate` on `text`, written to a file of its own.
pub fn validate(text: &str) -> Output {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("checked.yaml");
    std::fs::write(&path, text).expect("the file is written");
    std::process::Command::new(meridian_chaos::launcher::meridian_binary())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("the meridian binary runs")
}

/// Whether every tool in `tools` is installed; when one is not, says that the test is
/// skipped and why (README: the tests need only the Rust toolchain, and a test that drives
/// a missing outside tool skips; CI installs them all). Call it first: `if !tools(&["dig"])
/// { return; }`.
pub fn tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !std::process::Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED: this test drives {}, which is not installed here", missing.join(", "));
    }
    missing.is_empty()
}

pub fn curl(args: &[&str]) -> Output {
    std::process::Command::new("curl").args(args).output().expect("curl is installed")
}

/// A test certificate authority and the PEM files of leaf certificates it signs.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Meridian test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// Writes `<name>.pem` and `<name>.key` for `name` into `dir`; returns the cert's DER.
    pub fn issue(&self, dir: &Path, name: &str) -> Vec<u8> {
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }
}

impl TestCa {
    /// Like [`TestCa::issue`], with a serial number of the caller's choosing (to revoke it).
    pub fn issue_with_serial(&self, dir: &Path, name: &str, serial: u64) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    /// A PEM certificate revocation list, signed by this CA, revoking `serials`.
    pub fn revocation_list(&self, serials: &[u64]) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2026, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A backend that counts requests and holds the first `slow` of them for `delay` before
/// answering 200 (for retry and timeout tests).
pub async fn counting_backend(
    slow: usize,
    delay: std::time::Duration,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n < slow {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                            "answer {n}"
                        )))))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, count)
}

/// A target on raw sockets, for answers no HTTP server library would give: each connection
/// (counted) is handed to `answer` once a request head has arrived on it.
pub async fn raw_target<F, Fut>(answer: F) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                answer(tcp).await;
            });
        }
    });
    (addr, connections)
}

/// A loopback HTTP/1.1 server answering each request (its body read whole) with what
/// `handler` returns: for the identity providers, authorizers and other services a test
/// plays.
pub async fn http_service<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(hyper::Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handler = std::sync::Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(handler(hyper::Request::from_parts(parts, body)).await)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// The in-process benchmarks' measure: `call` run in `batches` batches of 200; the median
/// batch, in microseconds per call (a median resists this VM's bursts of noise).
pub fn median_micros_per_call(batches: usize, mut call: impl FnMut()) -> f64 {
    let mut per_call = Vec::with_capacity(batches);
    for _ in 0..batches {
        let started = std::time::Instant::now();
        for _ in 0..200 {
            call();
        }
        per_call.push(started.elapsed().as_secs_f64() * 1e6 / 200.0);
    }
    per_call.sort_by(|a, b| a.total_cmp(b));
    per_call[per_call.len() / 2]
}

/// A Python with `packages` from PyPI, in a virtualenv kept under `target/` (made on first
/// use); `None`, with the test's SKIPPED line, when Python or PyPI is not available. CI
/// installs `python3-venv`, so there it is always there.
pub fn python_with(venv: &str, packages: &[&str]) -> Option<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target").join(venv);
    let python = dir.join("bin/python");
    let ready = dir.join(".installed");
    // One test at a time makes the virtualenv; the others wait for it.
    let lock = std::fs::File::options().create(true).append(true).open(dir.with_extension("lock"));
    let _guard = lock.ok().filter(|f| f.lock().is_ok());
    if !ready.exists() {
        let made =
            std::process::Command::new("python3").args(["-m", "venv"]).arg(&dir).status().is_ok_and(|s| s.success())
                && std::process::Command::new(&python)
                    .args(["-m", "pip", "install", "-q"])
                    .args(packages)
                    .status()
                    .is_ok_and(|s| s.success());
        if !made {
            eprintln!(
                "SKIPPED: cannot make a Python virtualenv with {} (python3-venv and PyPI needed)",
                packages.join(", ")
            );
            return None;
        }
        std::fs::write(&ready, packages.join("\n")).ok()?;
    }
    Some(python)
}

/// Signs `specs` with botocore (see tests/python/sigv4_sign.py).
pub fn botocore_sign(python: &Path, specs: &serde_json::Value) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/sigv4_sign.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(specs.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the signer failed");
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("the signer's JSON")
}

/// Sends a signed request as it was signed (URL, headers), with `method` and `body`.
pub async fn send_signed(gateway: SocketAddr, method: &str, signed: &serde_json::Value, body: &str) -> Reply {
    let url: hyper::Uri = signed["url"].as_str().unwrap().parse().unwrap();
    let mut request = hyper::Request::builder().method(method).uri(url.path_and_query().unwrap().as_str());
    for (name, value) in signed["headers"].as_object().unwrap() {
        request = request.header(name.as_str(), value.as_str().unwrap());
    }
    if !signed["headers"].as_object().unwrap().keys().any(|k| k.eq_ignore_ascii_case("host")) {
        request = request.header("host", url.authority().unwrap().as_str());
    }
    send(gateway, request.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}
