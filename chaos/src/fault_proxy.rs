//! Fault proxies: put one on a link (node↔node RPC, client→gateway, client→DNS) and change
//! what the link does while traffic flows.
//!
//! Faults apply per direction (`to_upstream`, `to_client`): a delay with jitter, loss, a
//! bandwidth cap, a blackhole (bytes are read and dropped, so the peer sees a silent
//! connection, as in a partition), and a reset of every open connection. A TCP proxy may
//! choose the faults per connection from the connecting address ([`LinkClassifier`]), so one
//! proxy in front of a node can treat each region's peers differently. On TCP, loss cannot
//! drop bytes from a stream; a "lost" chunk waits a retransmission timeout (200 ms) instead,
//! which is what loss does to a TCP connection. [`UdpFaultProxy`] drops datagrams for real.
//! Runs without root: `tc netem` is not available on the machines this project runs on.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::seeded::Xorshift;

/// What a TCP retransmission costs a "lost" chunk.
const RETRANSMISSION: Duration = Duration::from_millis(200);

/// The faults of one direction of a link.
#[derive(Debug, Default)]
pub struct DirectionFaults {
    delay_ms: AtomicU64,
    jitter_ms: AtomicU64,
    /// Loss in parts per million.
    loss_ppm: AtomicU32,
    /// Bytes per second; 0 is unlimited.
    bandwidth: AtomicU64,
    blackhole: AtomicBool,
}

impl DirectionFaults {
    /// Every chunk waits `delay` ± `jitter`.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
        self.jitter_ms.store(jitter.as_millis() as u64, Ordering::Relaxed);
    }

    /// Loses this fraction (0.0–1.0) of chunks or datagrams.
    pub fn set_loss(&self, fraction: f64) {
        self.loss_ppm.store((fraction.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
    }

    /// Caps the direction at `bytes_per_second` (0: no cap).
    pub fn set_bandwidth(&self, bytes_per_second: u64) {
        self.bandwidth.store(bytes_per_second, Ordering::Relaxed);
    }

    /// Drops every byte (a partition) until turned off.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::Relaxed);
    }

    /// Clears every fault of the direction.
    pub fn clear(&self) {
        self.set_delay(Duration::ZERO, Duration::ZERO);
        self.set_loss(0.0);
        self.set_bandwidth(0);
        self.set_blackhole(false);
    }

    fn blackholed(&self) -> bool {
        self.blackhole.load(Ordering::Relaxed)
    }

    fn lost(&self, draw: u64) -> bool {
        let ppm = u64::from(self.loss_ppm.load(Ordering::Relaxed));
        ppm > 0 && (draw >> 11) % 1_000_000 < ppm
    }

    /// The delay (± jitter) a chunk or datagram gets.
    fn latency(&self, draw: u64) -> Duration {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        let jitter = self.jitter_ms.load(Ordering::Relaxed);
        let spread = if jitter == 0 { 0 } else { draw % (2 * jitter + 1) };
        Duration::from_millis((delay + spread).saturating_sub(jitter))
    }

    /// How long `bytes` take at the bandwidth cap.
    fn serialization(&self, bytes: usize) -> Duration {
        match self.bandwidth.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(bytes as f64 / rate as f64),
        }
    }
}

/// The faults of a link; shared with the running proxies.
#[derive(Debug)]
pub struct Faults {
    pub to_upstream: DirectionFaults,
    pub to_client: DirectionFaults,
    resets: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            to_upstream: DirectionFaults::default(),
            to_client: DirectionFaults::default(),
            resets: watch::Sender::new(0),
        }
    }
}

impl Faults {
    /// Blackholes both directions (or heals them).
    pub fn partition(&self, on: bool) {
        self.to_upstream.set_blackhole(on);
        self.to_client.set_blackhole(on);
    }

    /// Closes every open connection at once.
    pub fn reset_connections(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Clears every fault in both directions.
    pub fn clear(&self) {
        self.to_upstream.clear();
        self.to_client.clear();
    }
}

/// Chooses a connection's faults from the address it comes from.
pub type LinkClassifier = Arc<dyn Fn(IpAddr) -> Arc<Faults> + Send + Sync>;

/// Seeds for connections: a scenario's seed makes jitter and loss repeatable.
static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

/// Sets the seed fault proxies draw jitter and loss from (per process).
pub fn seed(seed: u64) {
    SEED.store(seed | 1, Ordering::Relaxed);
}

/// A generator for one connection or session: jitter and loss draws.
fn new_draws() -> Xorshift {
    Xorshift::new(SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
}

/// A running TCP proxy from `addr` to its upstream.
pub struct FaultProxy {
    pub addr: SocketAddr,
    /// The faults of connections the classifier does not place (all of them without one).
    pub faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy").field("addr", &self.addr).finish()
    }
}

impl FaultProxy {
    /// Stops listening and closes every connection through the proxy.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        self.task.abort();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Moves bytes one way. Each chunk is due at its arrival plus the direction's delay (and a
/// retransmission timeout when "lost"), never before the chunk ahead of it: latency without
/// limiting throughput, and in order, as on a real TCP path. A bandwidth cap spaces chunks
/// by their size.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<Faults>,
    upstream: bool,
) {
    let (queue, mut due) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut draws = new_draws();
    let mut last_due = tokio::time::Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let direction = if upstream { &faults.to_upstream } else { &faults.to_client };
        if direction.blackholed() {
            continue;
        }
        let mut latency = direction.latency(draws.draw());
        if direction.lost(draws.draw()) {
            latency += RETRANSMISSION;
        }
        let at = (tokio::time::Instant::now() + latency).max(last_due + direction.serialization(n));
        last_due = at;
        if queue.send((at, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(queue);
    let _ = writer.await;
}

async fn connect(upstream: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if upstream.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(upstream).await
}

impl FaultProxy {
    /// Listens on `listen` (port 0 for any) and forwards every connection to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        FaultProxy::start_with(listen, upstream, None, Arc::new(Faults::default()), None).await
    }

    /// Like [`FaultProxy::start`], connecting upstream from `source` (so the upstream sees
    /// the client network the proxy stands for, not the proxy's own address).
    pub async fn start_from(
        listen: SocketAddr,
        upstream: SocketAddr,
        source: Option<IpAddr>,
    ) -> std::io::Result<FaultProxy> {
        FaultProxy::start_with(listen, upstream, source, Arc::new(Faults::default()), None).await
    }

    /// The general form: an optional source address upstream, the link's `faults` (which
    /// the caller may share with other proxies), and an optional classifier that picks each
    /// connection's faults from the address it comes from instead.
    pub async fn start_with(
        listen: SocketAddr,
        upstream: SocketAddr,
        source: Option<IpAddr>,
        faults: Arc<Faults>,
        classify: Option<LinkClassifier>,
    ) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = faults.clone();
        let stop = watch::Sender::new(false);
        let stopped = stop.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((client, peer)) = listener.accept().await {
                let faults = match &classify {
                    Some(classify) => classify(peer.ip()),
                    None => shared.clone(),
                };
                let mut resets = faults.resets.subscribe();
                let mut stopped = stopped.clone();
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
                        _ = stopped.wait_for(|s| *s) => {}
                        _ = async { let _ = (&mut up).await; let _ = (&mut down).await; } => {}
                    }
                    up.abort();
                    down.abort();
                });
            }
        });
        Ok(FaultProxy { addr, faults, task, stop })
    }
}

/// A running UDP proxy: each client address gets its own upstream socket (bound to
/// `source` when given), so answers find their way back; idle sessions end after 30 s.
pub struct UdpFaultProxy {
    pub addr: SocketAddr,
    pub faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Drop for UdpFaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

impl UdpFaultProxy {
    /// Stops the proxy and every session.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        self.task.abort();
    }

    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        source: Option<IpAddr>,
        faults: Arc<Faults>,
    ) -> std::io::Result<UdpFaultProxy> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let addr = socket.local_addr()?;
        let shared = faults.clone();
        let stop = watch::Sender::new(false);
        let stopped = stop.subscribe();
        let task = tokio::spawn(async move {
            let mut sessions: HashMap<SocketAddr, (Arc<UdpSocket>, Arc<Mutex<Instant>>)> = HashMap::new();
            let mut draws = new_draws();
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, client)) = socket.recv_from(&mut buf).await {
                sessions
                    .retain(|_, (_, seen)| seen.lock().map(|t| t.elapsed() < Duration::from_secs(30)).unwrap_or(false));
                let session = match sessions.get(&client) {
                    Some((s, seen)) => {
                        if let Ok(mut t) = seen.lock() {
                            *t = Instant::now();
                        }
                        s.clone()
                    }
                    None => {
                        let bind = SocketAddr::new(
                            source.unwrap_or(if upstream.is_ipv4() { [0, 0, 0, 0].into() } else { [0u16; 8].into() }),
                            0,
                        );
                        let Ok(up) = UdpSocket::bind(bind).await else { continue };
                        if up.connect(upstream).await.is_err() {
                            continue;
                        }
                        let up = Arc::new(up);
                        let seen = Arc::new(Mutex::new(Instant::now()));
                        sessions.insert(client, (up.clone(), seen));
                        // Answers back to the client, with the to_client faults.
                        let (up_rx, back, faults) = (up.clone(), socket.clone(), shared.clone());
                        let mut stopped = stopped.clone();
                        tokio::spawn(async move {
                            let mut draws = new_draws();
                            let mut buf = vec![0u8; 65_535];
                            loop {
                                let n = tokio::select! {
                                    received = tokio::time::timeout(Duration::from_secs(30), up_rx.recv(&mut buf)) => match received {
                                        Ok(Ok(n)) => n,
                                        _ => break,
                                    },
                                    _ = stopped.wait_for(|s| *s) => break,
                                };
                                let d = &faults.to_client;
                                if d.blackholed() || d.lost(draws.draw()) {
                                    continue;
                                }
                                let pause = d.latency(draws.draw()) + d.serialization(n);
                                let datagram = buf[..n].to_vec();
                                let back = back.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(pause).await;
                                    let _ = back.send_to(&datagram, client).await;
                                });
                            }
                        });
                        up
                    }
                };
                let d = &shared.to_upstream;
                if d.blackholed() || d.lost(draws.draw()) {
                    continue;
                }
                let pause = d.latency(draws.draw()) + d.serialization(n);
                let datagram = buf[..n].to_vec();
                tokio::spawn(async move {
                    tokio::time::sleep(pause).await;
                    let _ = session.send(&datagram).await;
                });
            }
        });
        Ok(UdpFaultProxy { addr, faults, task, stop })
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

    #[tokio::test]
    async fn udp_loss_and_partition() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        let proxy =
            UdpFaultProxy::start("127.0.0.1:0".parse().unwrap(), echo_addr, None, Arc::default()).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut answered = 0;
        let ask = async |count: usize| {
            let mut got = 0;
            let mut buf = [0u8; 16];
            for _ in 0..count {
                client.send_to(b"ping", proxy.addr).await.unwrap();
                if tokio::time::timeout(Duration::from_millis(30), client.recv_from(&mut buf)).await.is_ok() {
                    got += 1;
                }
            }
            got
        };
        answered += ask(20).await;
        assert_eq!(answered, 20, "a clean link passes every datagram");
        proxy.faults.to_upstream.set_loss(0.5);
        let half = ask(100).await;
        assert!((25..=75).contains(&half), "about half lost: {half} of 100 answered");
        proxy.faults.clear();
        proxy.faults.partition(true);
        assert_eq!(ask(5).await, 0, "a partition passes nothing");
    }
}
