//! The sockets: batched UDP workers and a TCP listener, both answering through one
//! [`Responder`].
//!
//! UDP workers are plain threads that read up to [`BATCH`] queries per `recvmmsg` and send
//! the answers back with one `sendmmsg`, which is where most of a DNS server's CPU goes
//! (two system calls per query otherwise). TCP (RFC 7766) runs on the tokio runtime with
//! a connection cap and an idle timeout. Queries to forward are handed to the runtime.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::responder::{Reply, Responder, Transport};
use crate::rrl::{ResponseRateLimit, Verdict};

/// Queries read per system call.
pub const BATCH: usize = 32;
/// Largest UDP query accepted; bigger datagrams are dropped.
const MAX_QUERY: usize = 4096;
/// Longest a TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most TCP connections served at once.
const MAX_TCP_CONNECTIONS: usize = 512;
/// Open TCP connections one client address may hold (so that idle sockets from one address
/// cannot lock every other TCP client out).
pub const MAX_TCP_CONNECTIONS_PER_CLIENT: usize = 16;

/// How a node serves DNS.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub udp_workers: usize,
    /// Responses per second per client prefix over UDP; 0 turns limiting off.
    pub rate_limit: u32,
    /// Over the limit, every `slip`-th response is sent truncated instead of dropped.
    pub slip: u32,
}

/// The UDP socket and TCP listener of a DNS server, bound before it starts (so a node can
/// advertise the address, port 0 resolved, before it has anything to answer).
pub struct DnsSockets {
    udp: UdpSocket,
    tcp: std::net::TcpListener,
}

impl DnsSockets {
    /// Binds UDP and TCP on `listen` (with port 0, the same free port for both).
    pub fn bind(listen: SocketAddr) -> io::Result<DnsSockets> {
        let udp = UdpSocket::bind(listen)?;
        let tcp = std::net::TcpListener::bind(udp.local_addr()?)?;
        tcp.set_nonblocking(true)?;
        Ok(DnsSockets { udp, tcp })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// A running DNS server; dropping it does not stop it, [`DnsServer::stop`] does.
pub struct DnsServer {
    stop: Arc<AtomicBool>,
    tcp: tokio::task::JoinHandle<()>,
    pub local_addr: SocketAddr,
}

impl DnsServer {
    /// Starts answering on `sockets` (from within a tokio runtime).
    pub fn start(responder: Arc<Responder>, sockets: DnsSockets, settings: ServerSettings) -> io::Result<DnsServer> {
        let DnsSockets { udp, tcp } = sockets;
        let local_addr = udp.local_addr()?;
        let tcp = TcpListener::from_std(tcp)?;
        udp.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();
        for worker in 0..settings.udp_workers.max(1) {
            let socket = udp.try_clone()?;
            let (responder, stop, runtime) = (responder.clone(), stop.clone(), runtime.clone());
            let settings = settings.clone();
            std::thread::Builder::new()
                .name(format!("dns-udp-{worker}"))
                .spawn(move || udp_worker(socket, responder, settings, stop, runtime))?;
        }
        let tcp = tokio::spawn(tcp_listener(tcp, responder));
        Ok(DnsServer { stop, tcp, local_addr })
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tcp.abort();
    }
}

/// Receive buffers and headers for one `recvmmsg`/`sendmmsg` batch.
struct Batch {
    queries: Vec<[u8; MAX_QUERY]>,
    replies: Vec<Vec<u8>>,
    addresses: Vec<libc::sockaddr_storage>,
    address_lens: Vec<libc::socklen_t>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Batch {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero
        // bytes are a valid value.
        let zeroed = || unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        Batch {
            queries: vec![[0u8; MAX_QUERY]; BATCH],
            replies: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            addresses: (0..BATCH).map(|_| zeroed()).collect(),
            address_lens: vec![0; BATCH],
            iovecs: (0..BATCH).map(|_| libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }).collect(),
            // SAFETY: as above.
            headers: (0..BATCH).map(|_| unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() }).collect(),
        }
    }

    /// Receives up to BATCH datagrams (blocking until one arrives or the read timeout).
    fn receive(&mut self, fd: i32) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec { iov_base: self.queries[i].as_mut_ptr().cast(), iov_len: MAX_QUERY };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = (&raw mut self.addresses[i]).cast();
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = &raw mut self.iovecs[i];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by `self` that outlive the call, with
        // their true lengths.
        let n = unsafe {
            libc::recvmmsg(fd, self.headers.as_mut_ptr(), BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for i in 0..n as usize {
            self.address_lens[i] = self.headers[i].msg_hdr.msg_namelen;
        }
        Ok(n as usize)
    }

    /// Sends the replies in slots `ready` back to their senders.
    fn send(&mut self, fd: i32, ready: &[usize]) {
        for (k, &i) in ready.iter().enumerate() {
            self.iovecs[k] =
                libc::iovec { iov_base: self.replies[i].as_mut_ptr().cast(), iov_len: self.replies[i].len() };
            let header = &mut self.headers[k].msg_hdr;
            header.msg_name = (&raw mut self.addresses[i]).cast();
            header.msg_namelen = self.address_lens[i];
            header.msg_iov = &raw mut self.iovecs[k];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
        }
        let mut sent = 0;
        while sent < ready.len() {
            // SAFETY: headers [sent, ready.len()) point at live reply buffers and addresses.
            let n = unsafe { libc::sendmmsg(fd, self.headers[sent..].as_mut_ptr(), (ready.len() - sent) as u32, 0) };
            if n <= 0 {
                // A full socket buffer or an unreachable client: UDP answers may be lost.
                metrics::counter!("meridian_dns_send_errors_total").increment(1);
                sent += 1;
            } else {
                sent += n as usize;
            }
        }
    }
}

fn socket_address(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
            let a = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), 0, a.sin6_scope_id)))
        }
        _ => None,
    }
}

fn udp_worker(
    socket: UdpSocket,
    responder: Arc<Responder>,
    settings: ServerSettings,
    stop: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
) {
    let socket = Arc::new(socket);
    let fd = socket.as_raw_fd();
    let mut batch = Batch::new();
    let mut rrl = ResponseRateLimit::new(settings.rate_limit, settings.slip);
    let mut ready = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        let received = match batch.receive(fd) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "DNS UDP receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let now = Instant::now();
        ready.clear();
        for i in 0..received {
            let len = batch.headers[i].msg_len as usize;
            if batch.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                continue;
            }
            let Some(client) = socket_address(&batch.addresses[i]) else { continue };
            let mut reply = std::mem::take(&mut batch.replies[i]);
            let outcome = responder.respond(&batch.queries[i][..len], client.ip(), Transport::Udp, &mut reply);
            match outcome {
                Reply::Send => match rrl.check(client.ip(), now) {
                    Verdict::Send => ready.push(i),
                    Verdict::Slip => {
                        truncate_to_header(&mut reply);
                        ready.push(i);
                    }
                    Verdict::Drop => {}
                },
                Reply::Forward(request) => {
                    let (responder, socket) = (responder.clone(), socket.clone());
                    runtime.spawn(async move {
                        let Some(forwarder) = responder.forwarder() else { return };
                        let response = forwarder.resolve(&request).await;
                        if let Ok(mut bytes) = response.to_vec() {
                            if bytes.len() > 512 {
                                truncate_to_header(&mut bytes);
                            }
                            let _ = socket.send_to(&bytes, client);
                        }
                    });
                }
                Reply::Drop => {}
            }
            batch.replies[i] = reply;
        }
        if !ready.is_empty() {
            batch.send(fd, &ready);
        }
    }
}

/// Keeps only the header, with TC set and no records: "ask again over TCP".
fn truncate_to_header(reply: &mut Vec<u8>) {
    reply.truncate(12);
    if reply.len() == 12 {
        reply[2] |= 0x02;
        reply[4..12].fill(0);
    }
}

async fn tcp_listener(listener: TcpListener, responder: Arc<Responder>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    let per_client = crate::net::ConnectionsPerClient::new(MAX_TCP_CONNECTIONS_PER_CLIENT);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Some(counted) = per_client.open(peer.ip()) else {
            metrics::counter!("meridian_dns_tcp_refused_total", "reason" => "per_client").increment(1);
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("meridian_dns_tcp_refused_total", "reason" => "capacity").increment(1);
            continue;
        };
        let responder = responder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _counted = counted;
            let _ = tcp_connection(stream, peer.ip(), responder).await;
        });
    }
}

async fn tcp_connection(
    mut stream: tokio::net::TcpStream,
    client: IpAddr,
    responder: Arc<Responder>,
) -> io::Result<()> {
    let mut query = vec![0u8; u16::MAX as usize];
    let mut reply = Vec::with_capacity(512);
    loop {
        let mut length = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut length)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let length = usize::from(u16::from_be_bytes(length));
        let body = &mut query[..length];
        if tokio::time::timeout(TCP_IDLE, stream.read_exact(body)).await.is_err() {
            return Ok(());
        }
        let bytes = match responder.respond(body, client, Transport::Tcp, &mut reply) {
            Reply::Send => std::mem::take(&mut reply),
            Reply::Forward(request) => match responder.forwarder() {
                Some(f) => f.resolve(&request).await.to_vec().unwrap_or_default(),
                None => continue,
            },
            Reply::Drop => return Ok(()),
        };
        if bytes.is_empty() || bytes.len() > usize::from(u16::MAX) {
            return Ok(());
        }
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await.map_err(|_| io::ErrorKind::TimedOut)??;
        reply = bytes;
    }
}
