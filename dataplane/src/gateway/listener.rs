//! Accepting client connections and serving HTTP/1.1 and HTTP/2 on them.
//!
//! One accept loop per listener. Each accepted connection takes a place in the node's
//! [`ConnectionTable`] (at the cap the longest-idle connection is shed for it; a client at
//! its per-client limit is refused), gets an idle timeout and a deadline for its first
//! request head, an optional TLS handshake within that deadline, and then HTTP/2 (hyper's
//! server: prior knowledge, or ALPN `h2`) or HTTP/1.1 (Meridian's own, [`super::http1`]),
//! with the configured header limits. On shutdown the loop stops
//! accepting, every connection is asked to close after its current exchange, and the node
//! waits for them up to the drain timeout.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use crate::certificates::SniResolver;
use bytes::Bytes;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::conns::{ConnSlot, ConnectionTable, Refused};
use super::http1;
use super::io::IdleTimeout;
use super::{ClientRttSink, PROBE_PATH};
use crate::config::Limits;
use crate::observe::completion::ObservedBody;
use crate::pipeline::{ConnInfo, Pipeline};
use crate::prefixed::Prefixed;

/// What every connection of a listener is served with, prepared once per listener.
struct Settings {
    limits: Limits,
    http1: http1::Settings,
    http2: http2::Builder<TokioExecutor>,
}

/// The HTTP/2 server settings every connection of a node uses.
fn http2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    builder
}

/// The first bytes of an HTTP/2 connection with prior knowledge.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes say HTTP/2 (the whole preface) or not; returns what was read.
async fn sniff_preface<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(bool, Bytes)> {
    let mut read = [0u8; HTTP2_PREFACE.len()];
    let mut n = 0;
    while n < read.len() {
        let got = stream.read(&mut read[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
        if read[..n] != HTTP2_PREFACE[..n] {
            break;
        }
    }
    Ok((read[..n] == *HTTP2_PREFACE, Bytes::copy_from_slice(&read[..n])))
}

/// What every listener of a node shares.
#[derive(Clone)]
pub struct ListenerShared {
    pub pipeline: Arc<Pipeline>,
    pub limits: Limits,
    /// The node's connections: cap, per-client limit, shedding.
    pub connections: Arc<ConnectionTable>,
    /// Where measured client round trips go (set when the node serves DNS).
    pub client_rtt: Arc<OnceLock<ClientRttSink>>,
    /// Accepting starts when this turns true.
    pub serving: watch::Receiver<bool>,
    /// Accepting stops, and draining starts, when this turns true.
    pub shutdown: watch::Receiver<bool>,
}

/// Serves `listener` once `serving` turns true and until `shutdown` does, then drains for up
/// to the drain timeout.
/// What an HTTPS listener's handshakes use: the configuration of every domain, and the
/// resolver that picks a domain's own (mutual TLS) by SNI.
#[derive(Clone)]
pub struct TlsSetup {
    pub base: Arc<rustls::ServerConfig>,
    pub sni: Arc<SniResolver>,
}

pub async fn serve(listener: TcpListener, tls: Option<TlsSetup>, shared: ListenerShared) {
    let ListenerShared { pipeline, limits, connections, client_rtt, mut serving, mut shutdown } = shared;
    // Until there is something to serve, connections wait in the kernel's backlog.
    tokio::select! {
        _ = serving.wait_for(|s| *s) => {}
        _ = stopped(&mut shutdown) => return,
    }
    let open = metrics::gauge!("meridian_connections_open");
    let settings = Arc::new(Settings { http1: http1::Settings::new(&limits), http2: http2_builder(&limits), limits });
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let admitted = tokio::select! {
            admitted = connections.admit(peer.ip()) => match admitted {
                Ok(a) => a,
                Err(Refused::PerClient) => {
                    metrics::counter!("meridian_connections_refused_total", "reason" => "per_client").increment(1);
                    continue;
                }
                Err(Refused::Closed) => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let rtt = client_rtt.get().map(|sink| Arc::new(PendingRtt::new(sink.clone(), peer.ip())));
        if tls.is_none()
            && let Some(rtt) = &rtt
            && let Some(micros) = kernel_rtt_us(&stream)
        {
            rtt.measured(micros);
        }
        let conn = Arc::new(ConnInfo::new(peer, tls.is_some()));
        let this_conn = conn.clone();
        let pipeline = pipeline.clone();
        let slot = admitted.slot.clone();
        let first_request = rtt.clone();
        let mutual = tls.as_ref().map(|t| t.sni.clone());
        let handler: http1::Handler = Arc::new(move |request: http::Request<crate::incoming::Incoming>| {
            let busy = slot.begin();
            if let Some(rtt) = &first_request {
                rtt.first_request(request.uri().path());
            }
            let probe = request.uri().path() == PROBE_PATH;
            let misdirected = mutual.as_ref().is_some_and(|sni| {
                request_host(&request).is_some_and(|host| !sni.allows(conn.server_name.get().map(String::as_str), host))
            });
            let mut request = request;
            if misdirected {
                request.extensions_mut().insert(crate::pipeline::Misdirected);
            }
            if probe {
                return Box::pin(std::future::ready(probe_answer()));
            }
            pipeline.handle(request, &conn, busy)
        });
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let settings = settings.clone();
        let open = open.clone();
        tokio::spawn(async move {
            open.increment(1.0);
            let slot = admitted.slot.clone();
            let limits = &settings.limits;
            let stream = IdleTimeout::new(stream, limits.idle_timeout)
                .with_first_request_deadline(limits.header_read_timeout, slot.clone());
            let client = Client { peer, settings: &settings, handler, slot: &slot, shutdown, conn: this_conn };
            // Boxed: the task itself holds only what every state needs, so a parked
            // connection costs the state it is in and no more.
            match tls {
                None => Box::pin(client.serve_cleartext(stream)).await,
                Some(setup) => Box::pin(client.serve_tls(&setup, stream, rtt.as_deref())).await,
            }
            open.decrement(1.0);
            drop(admitted);
        });
    }
    drop(listener);
    // Connections serving a request see the stop themselves; parked ones hold no future for
    // it and are woken through their slots.
    connections.close_all();
    if !connections.drained(settings.limits.drain_timeout).await {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

/// One accepted client connection and what serving it needs.
struct Client<'a> {
    peer: std::net::SocketAddr,
    settings: &'a Settings,
    handler: http1::Handler,
    slot: &'a ConnSlot,
    shutdown: watch::Receiver<bool>,
    /// What requests on the connection know of it (its client certificate, once verified).
    conn: Arc<ConnInfo>,
}

impl<'a> Client<'a> {
    /// Cleartext: HTTP/2 with prior knowledge when the preface says so, else HTTP/1.1.
    ///
    /// This future lasts as long as the connection, so it holds only what every state needs:
    /// sniffing and then the protocol's state are boxed while they are the current one, and
    /// it is an async block, not an async fn, which would keep a second copy of its arguments
    /// (see `http1::serve`).
    #[allow(clippy::manual_async_fn, reason = "an async fn would keep a second copy of its arguments")]
    fn serve_cleartext(self, mut stream: IdleTimeout<tokio::net::TcpStream>) -> impl Future<Output = ()> + Send + 'a {
        async move {
            let served: std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> = {
                // A connection that has sent nothing yet is the first to be shed.
                let mut stop = self.shutdown.clone();
                let sniffed = Box::pin(async {
                    tokio::select! {
                        sniffed = sniff_preface(&mut stream) => sniffed,
                        _ = self.slot.shed_requested() => Err(std::io::Error::other("shed before its first request")),
                        _ = stopped(&mut stop) => Err(std::io::Error::other("the node is stopping")),
                    }
                })
                .await;
                let Settings { http1, http2, .. } = self.settings;
                match sniffed {
                    Ok((true, read)) => {
                        let stream = Prefixed::new(read, stream);
                        Box::pin(serve_http2(http2, stream, self.handler, self.slot, self.shutdown))
                    }
                    Ok((false, read)) => Box::pin(http1::serve(http1, stream, read, self.handler, self.slot)),
                    Err(e) => return tracing::debug!(client = %self.peer, error = %e, "no request"),
                }
            };
            served.await
        }
    }

    /// TLS: the handshake within the header read timeout, then the protocol ALPN chose.
    ///
    /// Shaped like [`Client::serve_cleartext`] for the same reason: the TLS stream carries
    /// rustls' state inline (1.3 KiB), and an async fn would keep it three times for the
    /// connection's whole life (as its argument, its local and the handshake's result).
    #[allow(clippy::manual_async_fn, reason = "an async fn would keep a second copy of its arguments")]
    fn serve_tls(
        self,
        setup: &'a TlsSetup,
        stream: IdleTimeout<tokio::net::TcpStream>,
        rtt: Option<&'a PendingRtt>,
    ) -> impl Future<Output = ()> + Send + 'a {
        async move {
            let served: std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> = {
                // The handshake's state is boxed, and freed once it is done.
                let handshake = Box::pin(accept_tls(setup, stream));
                let accepted = tokio::time::timeout(self.settings.limits.header_read_timeout, handshake).await;
                let tls_stream = match accepted {
                    Ok(Ok((tls_stream, round_trip))) => {
                        if let Some(rtt) = rtt {
                            rtt.measured(round_trip.as_micros().min(u128::from(u32::MAX)) as u32);
                        }
                        tls_stream
                    }
                    Ok(Err(e)) => return tracing::debug!(client = %self.peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(client = %self.peer, "TLS handshake timed out"),
                };
                let session = tls_stream.get_ref().1;
                if let Some(name) = session.server_name() {
                    let _ = self.conn.server_name.set(name.to_string());
                }
                // A certificate the domain's policy accepts (mutual TLS) is the client's
                // identity for every request on the connection.
                if let Some(chain) = session.peer_certificates()
                    && let Some(identity) = setup.sni.identity(session.server_name(), chain)
                {
                    let _ = self.conn.client_certificate.set(Arc::new(identity));
                }
                let Settings { http1, http2, .. } = self.settings;
                if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Box::pin(serve_http2(http2, tls_stream, self.handler, self.slot, self.shutdown))
                } else {
                    Box::pin(http1::serve(http1, tls_stream, Bytes::new(), self.handler, self.slot))
                }
            };
            served.await
        }
    }
}

/// The answer to a health probe from another region: 204, neither routed, logged nor counted.
fn probe_answer() -> http::Response<ObservedBody> {
    let mut response = http::Response::new(ObservedBody::unobserved(crate::body::ResponseBody::Empty));
    *response.status_mut() = http::StatusCode::NO_CONTENT;
    response
}

/// The host a request names (`:authority` or `Host`, without its port), for the mutual TLS
/// check before routing (which refuses ambiguous hosts itself).
fn request_host<B>(request: &http::Request<B>) -> Option<&str> {
    let host = match request.uri().host() {
        Some(h) => h,
        None => request.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    Some(host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h))
}

/// Serves HTTP/2 on one connection until it ends; asks it to close gracefully (GOAWAY,
/// after its open streams) when the table sheds it or the node shuts down.
async fn serve_http2<S>(
    builder: &http2::Builder<TokioExecutor>,
    stream: S,
    handler: http1::Handler,
    slot: &ConnSlot,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let handled = handler(request.map(crate::incoming::Incoming::from));
        async move { Ok::<_, Infallible>(handled.await) }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = slot.shed_requested(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = stopped(&mut shutdown), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A connection's measured round trip, held until its first request shows whose it is:
/// only client traffic is a client sample for DNS region selection. Gateways of other
/// regions probe this one on `PROBE_PATH`, and their round trips counted as clients of
/// this region used to send a region's own clients elsewhere (the demo answered us-east to
/// eu-west's clients once probes had accumulated).
struct PendingRtt {
    sink: ClientRttSink,
    client: std::net::IpAddr,
    micros: std::sync::atomic::AtomicU32,
}

impl PendingRtt {
    fn new(sink: ClientRttSink, client: std::net::IpAddr) -> Self {
        PendingRtt { sink, client, micros: std::sync::atomic::AtomicU32::new(0) }
    }

    fn measured(&self, micros: u32) {
        self.micros.store(micros, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reports the sample once, if the connection's first request is not a probe.
    fn first_request(&self, path: &str) {
        let micros = self.micros.swap(0, std::sync::atomic::Ordering::Relaxed);
        if micros != 0 && path != PROBE_PATH {
            let _ = self.sink.try_send((self.client, micros));
        }
    }
}

/// A TLS handshake, and the time from the ClientHello to the client's Finished: the server's
/// flight and the client's answer, one round trip that (unlike the kernel's RTT) spans any
/// proxy between client and gateway.
async fn accept_tls<S>(
    setup: &TlsSetup,
    stream: S,
) -> std::io::Result<(tokio_rustls::server::TlsStream<S>, std::time::Duration)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let hello = std::time::Instant::now();
    let config =
        setup.sni.config_for(start.client_hello().server_name(), &setup.base).map_err(std::io::Error::other)?;
    let tls = start.into_stream(config).await?;
    Ok((tls, hello.elapsed()))
}

/// The kernel's smoothed round-trip estimate for a connection, microseconds.
fn kernel_rtt_us(stream: &tokio::net::TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is a plain C struct; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the duration of the call; pointers are valid.
    let rc = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &raw mut len)
    };
    (rc == 0 && info.tcpi_rtt > 0).then_some(info.tcpi_rtt)
}

/// Resolves once `shutdown` has turned true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    fn returned4<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A connection's own future lives as long as the connection: it holds what every state
    /// needs and boxes the rest, so an idle connection stays small (the cleartext one was
    /// 2,544 bytes with the HTTP/1.1 state inline, the TLS one 3,032 with the TLS stream kept
    /// three times).
    #[test]
    fn a_connections_own_future_stays_small() {
        let cleartext = returned(Client::serve_cleartext);
        let tls = returned4(Client::serve_tls);
        assert!(cleartext <= 320, "the cleartext connection's future is {cleartext} bytes");
        assert!(tls <= 448, "the TLS connection's future is {tls} bytes");
    }
}
