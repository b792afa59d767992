//! The WebSocket benchmark's tools (`tests/bench/websocket.sh`): a plain WebSocket echo
//! server (the reference), an HTTP backend for a WebSocket API's two-way route, a
//! closed-loop load generator, a holder of idle connections, and a push timer.
//!
//! ```text
//! websocket-bench echo ADDRESS                     # echoes every message (one thread)
//! websocket-bench backend ADDRESS                  # answers each event with its message's body (one thread)
//! websocket-bench load URL CONNECTIONS SECONDS     # prints "msgs/s p50_ms p99_ms messages errors"
//! websocket-bench idle URL COUNT                   # prints "ready N", holds until stdin closes
//! websocket-bench push URL COUNT ADMIN TOKEN API STAGE [ADMIN...]
//!                                                  # per ADMIN: "ADMIN p50_ms p99_ms" of a push
//!                                                  # through it until the client has it
//! ```

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::Message;

const MESSAGE: &str = r#"{"action":"echo","data":"0123456789abcdef"}"#;

fn usage() -> ! {
    eprintln!(
        "usage: websocket-bench echo ADDRESS | backend ADDRESS | load URL CONNECTIONS SECONDS | idle URL COUNT | push URL COUNT ADMIN TOKEN API STAGE [ADMIN...]"
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["echo", address] => runtime.block_on(echo(parse(address))),
        ["backend", address] => runtime.block_on(backend(parse(address))),
        ["load", url, connections, seconds] => runtime.block_on(load(url, parse(connections), parse(seconds))),
        ["idle", url, count] => runtime.block_on(idle(url, parse(count))),
        ["push", url, count, rest @ ..] if rest.len() >= 4 => {
            let [admin, token, api, stage, more @ ..] = rest else { usage() };
            let admins: Vec<SocketAddr> = std::iter::once(admin).chain(more).map(|a| parse(a)).collect();
            runtime.block_on(push(url, parse(count), &admins, token, (api, stage)))
        }
        _ => usage(),
    }
}

fn parse<T: std::str::FromStr>(text: &str) -> T {
    text.parse().unwrap_or_else(|_| usage())
}

async fn echo(address: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(address).await.expect("bind");
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() || message.is_binary() {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                } else if message.is_close() {
                    return;
                }
            }
        });
    }
}

async fn backend(address: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(address).await.expect("bind");
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let message = envelope["body"].as_str().unwrap_or("").to_string();
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(message))))
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The value at quantile `q` of sorted `values`, in milliseconds.
fn quantile(values: &[Duration], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let at = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[at].as_secs_f64() * 1000.0
}

async fn load(url: &str, connections: usize, seconds: u64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let url = url.to_string();
        clients.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                return (latencies, 1);
            };
            while Instant::now() < until {
                let sent = Instant::now();
                if ws.send(Message::text(MESSAGE)).await.is_err() {
                    errors += 1;
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    Ok(Some(Ok(Message::Text(reply)))) if reply.as_str() == MESSAGE => latencies.push(sent.elapsed()),
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
            (latencies, errors)
        });
    }
    let started = Instant::now();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while let Some(done) = clients.join_next().await {
        let (l, e) = done.unwrap_or((Vec::new(), 1));
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(f64::EPSILON);
    latencies.sort();
    println!(
        "{:.0} {:.3} {:.3} {} {}",
        latencies.len() as f64 / elapsed,
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.len(),
        errors
    );
}

async fn idle(url: &str, count: usize) {
    let mut held = Vec::with_capacity(count);
    for chunk in 0..count.div_ceil(200) {
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..200.min(count - chunk * 200) {
            let url = url.to_string();
            opening.spawn(async move { tokio_tungstenite::connect_async(url).await.map(|(ws, _)| ws) });
        }
        while let Some(done) = opening.join_next().await {
            match done {
                Ok(Ok(ws)) => held.push(ws),
                Ok(Err(e)) => eprintln!("a connection failed: {e}"),
                Err(e) => eprintln!("a connection task failed: {e}"),
            }
        }
    }
    println!("ready {}", held.len());
    // Held until standard input closes.
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read(&mut [0u8; 1])).await;
    drop(held);
}

async fn push(url: &str, count: usize, admins: &[SocketAddr], token: &str, (api, stage): (&str, &str)) {
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await.expect("the client connects");
    let id = response.headers()["x-meridian-connection-id"].to_str().expect("an id").to_string();
    let path = format!("/v1/apis/{api}/stages/{stage}/connections/{id}");
    for admin in admins {
        let stream = tokio::net::TcpStream::connect(admin).await.expect("the admin API");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(connection);
        let mut latencies = Vec::with_capacity(count);
        for n in 0..count {
            let text = format!("push {n}");
            let request = hyper::Request::post(&path)
                .header("host", "admin")
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::from(text.clone())))
                .expect("a request");
            let sent = Instant::now();
            let answer = sender.send_request(request).await.expect("an answer");
            assert_eq!(answer.status(), 200, "a push through {admin} was refused");
            let _ = answer.into_body().collect().await;
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(got)))) if got.as_str() == text => latencies.push(sent.elapsed()),
                other => panic!("push {n} through {admin} did not arrive: {other:?}"),
            }
        }
        latencies.sort();
        println!("{admin} {:.3} {:.3}", quantile(&latencies, 0.5), quantile(&latencies, 0.99));
    }
}
