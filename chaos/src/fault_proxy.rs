//! A TCP fault proxy: put it on a link (node↔node RPC, client→gateway) and change what the
//! link does while traffic flows.
//!
//! Faults apply per direction (`to_upstream`, `to_client`): a delay with jitter on every
//! chunk, a blackhole (bytes are read and dropped, so the peer sees a silent connection, as in
//! a partition), and a reset of every open connection. Runs without root: the kernel's own
//! tools (`tc netem`) are not available on the machines this project runs on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The faults of one direction of a link.
#[derive(Debug, Default)]
pub struct DirectionFaults {
    delay_ms: AtomicU64,
    jitter_ms: AtomicU64,
    blackhole: AtomicBool,
}

impl DirectionFaults {
    /// Every chunk waits `delay` ± `jitter`.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
        self.jitter_ms.store(jitter.as_millis() as u64, Ordering::Relaxed);
    }

    /// Drops every byte (a partition) until turned off.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::Relaxed);
    }

    fn pause(&self, draw: u64) -> Duration {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        let jitter = self.jitter_ms.load(Ordering::Relaxed);
        let spread = if jitter == 0 { 0 } else { draw % (2 * jitter + 1) };
        Duration::from_millis((delay + spread).saturating_sub(jitter))
    }
}

/// The faults of a link; shared with the running proxy.
#[derive(Debug, Default)]
pub struct Faults {
    pub to_upstream: DirectionFaults,
    pub to_client: DirectionFaults,
    resets: Mutex<Option<watch::Sender<u64>>>,
}

impl Faults {
    /// Blackholes both directions (or heals them).
    pub fn partition(&self, on: bool) {
        self.to_upstream.set_blackhole(on);
        self.to_client.set_blackhole(on);
    }

    /// Closes every open connection at once.
    pub fn reset_connections(&self) {
        if let Ok(guard) = self.resets.lock()
            && let Some(tx) = guard.as_ref()
        {
            tx.send_modify(|n| *n += 1);
        }
    }
}

/// A running proxy from `listen` to `upstream`.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<Faults>,
    upstream: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut draw: u64 = 0x9e37_79b9_7f4a_7c15;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let direction = if upstream { &faults.to_upstream } else { &faults.to_client };
        if direction.blackhole.load(Ordering::Relaxed) {
            continue;
        }
        draw ^= draw << 13;
        draw ^= draw >> 7;
        draw ^= draw << 17;
        let pause = direction.pause(draw);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn connect(upstream: SocketAddr, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if upstream.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(upstream).await
}

impl FaultProxy {
    /// Listens on `listen` (port 0 for any) and forwards every connection to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        FaultProxy::start_from(listen, upstream, None).await
    }

    /// Like [`FaultProxy::start`], connecting upstream from `source` (so the upstream sees
    /// the client network the proxy stands for, not the proxy's own address).
    pub async fn start_from(
        listen: SocketAddr,
        upstream: SocketAddr,
        source: Option<std::net::IpAddr>,
    ) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Faults::default());
        let (reset_tx, reset_rx) = watch::channel(0u64);
        if let Ok(mut guard) = faults.resets.lock() {
            *guard = Some(reset_tx);
        }
        let shared = faults.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let faults = shared.clone();
                let mut resets = reset_rx.clone();
                resets.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(server) = connect(upstream, source).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let mut up = tokio::spawn(pump(client_read, server_write, faults.clone(), true));
                    let mut down = tokio::spawn(pump(server_read, client_write, faults, false));
                    // A reset aborts both directions: the sockets close without a goodbye.
                    tokio::select! {
                        _ = resets.changed() => {}
                        _ = async { let _ = (&mut up).await; let _ = (&mut down).await; } => {}
                    }
                    up.abort();
                    down.abort();
                });
            }
        });
        Ok(FaultProxy { addr, faults, task })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(within, s.read_exact(&mut buf)).await.ok()?.ok()?;
        Some(started.elapsed())
    }

    #[tokio::test]
    async fn delays_blackholes_heals_and_resets() {
        let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(round_trip(&mut s, Duration::from_secs(2)).await.is_some(), "a clean link passes bytes");

        proxy.faults.to_upstream.set_delay(Duration::from_millis(150), Duration::ZERO);
        let took = round_trip(&mut s, Duration::from_secs(2)).await.unwrap();
        assert!(took >= Duration::from_millis(150), "delay not applied: {took:?}");
        proxy.faults.to_upstream.set_delay(Duration::ZERO, Duration::ZERO);

        proxy.faults.partition(true);
        assert!(round_trip(&mut s, Duration::from_millis(300)).await.is_none(), "a partition passes nothing");
        proxy.faults.partition(false);
        let mut fresh = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(round_trip(&mut fresh, Duration::from_secs(2)).await.is_some(), "a healed link passes bytes");

        proxy.faults.reset_connections();
        let mut buf = [0u8; 4];
        let closed = tokio::time::timeout(Duration::from_secs(2), fresh.read(&mut buf)).await.unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)), "the connection was not reset");
    }
}
