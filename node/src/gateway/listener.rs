//! Accepting client connections and serving HTTP/1.1 and HTTP/2 on them.
//!
//! One accept loop per listener. Each connection takes a permit from the node-wide
//! connection cap before it is accepted (at the cap, new connections wait in the kernel's
//! backlog), gets an idle timeout, an optional TLS handshake bounded by the header-read
//! timeout, and then hyper's automatic HTTP/1.1-or-HTTP/2 server with the configured
//! header limits. On shutdown the loop stops accepting and in-flight requests drain.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::io::IdleTimeout;
use crate::cluster::dns::ClientRttSink;
use crate::config::Limits;
use crate::pipeline::{ConnInfo, Pipeline};

/// The HTTP server settings every connection of a node uses.
pub fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    builder
}

/// What every listener of a node shares.
#[derive(Clone)]
pub struct ListenerShared {
    pub pipeline: Arc<Pipeline>,
    pub limits: Limits,
    /// The node-wide connection cap.
    pub connections: Arc<Semaphore>,
    /// Where measured client round trips go (set when the node serves DNS).
    pub client_rtt: Arc<OnceLock<ClientRttSink>>,
    /// Accepting starts when this turns true.
    pub serving: watch::Receiver<bool>,
    /// Accepting stops, and draining starts, when this turns true.
    pub shutdown: watch::Receiver<bool>,
}

/// Serves `listener` once `serving` turns true and until `shutdown` does, then drains for up
/// to the drain timeout.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: ListenerShared) {
    let ListenerShared { pipeline, limits, connections, client_rtt, mut serving, mut shutdown } = shared;
    // Until there is something to serve, connections wait in the kernel's backlog.
    tokio::select! {
        _ = serving.wait_for(|s| *s) => {}
        _ = stopped(&mut shutdown) => return,
    }
    let graceful = GracefulShutdown::new();
    let builder = http_builder(&limits);
    let open = metrics::gauge!("meridian_connections_open");
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
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
        let _ = stream.set_nodelay(true);
        let rtt_sink = client_rtt.get().cloned();
        if tls.is_none()
            && let Some(sink) = &rtt_sink
            && let Some(rtt) = kernel_rtt_us(&stream)
        {
            let _ = sink.try_send((peer.ip(), rtt));
        }
        let conn = Arc::new(ConnInfo::new(peer, tls.is_some()));
        let pipeline = pipeline.clone();
        let service = service_fn(move |request| {
            let pipeline = pipeline.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(pipeline.handle(request, &conn).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        let idle = limits.idle_timeout;
        let open = open.clone();
        tokio::spawn(async move {
            let _permit = permit;
            open.increment(1.0);
            let stream = IdleTimeout::new(stream, idle);
            let result = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned())
                        .await
                }
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, accept_tls(&acceptor, stream)).await {
                    Ok(Ok((tls_stream, round_trip))) => {
                        if let Some(sink) = &rtt_sink {
                            let rtt = round_trip.as_micros().min(u128::from(u32::MAX)) as u32;
                            let _ = sink.try_send((peer.ip(), rtt));
                        }
                        watcher
                            .watch(
                                builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service).into_owned(),
                            )
                            .await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::debug!(client = %peer, "TLS handshake timed out");
                        Ok(())
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
            open.decrement(1.0);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

/// A TLS handshake, and the time from the ClientHello to the client's Finished: the server's
/// flight and the client's answer, one round trip that (unlike the kernel's RTT) spans any
/// proxy between client and gateway.
async fn accept_tls<S>(
    acceptor: &TlsAcceptor,
    stream: S,
) -> std::io::Result<(tokio_rustls::server::TlsStream<S>, std::time::Duration)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let hello = std::time::Instant::now();
    let tls = start.into_stream(acceptor.config().clone()).await?;
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
