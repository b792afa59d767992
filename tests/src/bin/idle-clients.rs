//! Holds many idle keep-alive connections open against an HTTP server, for the memory
//! benchmark (`tests/bench/idle_memory.sh`): each connection sends one request, reads the
//! whole response, and then stays open and silent.
//!
//! ```text
//! idle-clients ADDRESS COUNT HOST PATH
//! ```
//!
//! Prints `ready N` (N connections answered 2xx) on standard output once every connection
//! has had its answer, then holds them until standard input closes or the process is killed.

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn usage() -> ! {
    eprintln!("usage: idle-clients ADDRESS COUNT HOST PATH");
    std::process::exit(2);
}

/// One request; the stream stays open. True when the answer was 2xx.
async fn one(address: SocketAddr, request: &[u8]) -> std::io::Result<(TcpStream, bool)> {
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(request).await?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    // Read until the head and a body of the declared length have arrived.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await??;
        if n == 0 {
            return Err(std::io::Error::other("closed before the answer"));
        }
        head.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&head);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if head.len() >= end + 4 + length {
                let ok = text.starts_with("HTTP/1.1 2");
                return Ok((stream, ok));
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, count, host, path] = args.as_slice() else { usage() };
    let (Ok(address), Ok(count)) = (address.parse::<SocketAddr>(), count.parse::<usize>()) else { usage() };
    let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n").into_bytes();
    let mut held = Vec::with_capacity(count);
    let mut answered = 0;
    // A few hundred at a time, so the listener's backlog never overflows.
    for chunk in (0..count).collect::<Vec<_>>().chunks(200) {
        let mut batch = tokio::task::JoinSet::new();
        for _ in chunk {
            let request = request.clone();
            batch.spawn(async move { one(address, &request).await });
        }
        while let Some(done) = batch.join_next().await {
            match done {
                Ok(Ok((stream, ok))) => {
                    answered += usize::from(ok);
                    held.push(stream);
                }
                Ok(Err(e)) => eprintln!("idle-clients: {e}"),
                Err(e) => eprintln!("idle-clients: {e}"),
            }
        }
    }
    println!("ready {answered}");
    // Hold until standard input closes.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    })
    .await;
    drop(held);
}
