//! HTTP/1.1 connections that give their buffers back while they idle.
//!
//! hyper keeps a connection's read buffer (8 KiB) and write buffer (8 KiB) for as long as
//! the connection lives, and with the task and the request future a keep-alive connection
//! that only waits costs about 40 KiB. A gateway that holds many idle keep-alive clients
//! (nginx frees the buffers of idle connections and keeps under 1 KiB each) cannot afford
//! that. So a connection here is served in periods: hyper serves requests until the
//! connection has had no request in progress and received no byte for [`PARK_AFTER`]; then
//! it is asked to stop after what it is doing (without closing the socket, and without
//! `Connection: close`, since no response is being started), its buffers are freed, and the
//! socket is parked: the task waits for it to become readable, holding only the socket, its
//! timers and the service (about 8 KiB in all, measured by `tests/bench/idle_memory.sh`).
//! The next request starts a new period, which costs a new hyper connection (two buffer
//! allocations); a client that keeps the connection busy is never parked.
//!
//! A WebSocket upgrade ends the periods: after the `101`, the socket (with any bytes read
//! past the handshake) goes to the request path, which splices it to the upstream.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use super::conns::ConnSlot;
use super::io::IdleTimeout;
use crate::config::Limits;
use crate::observe::completion::ObservedBody;
use crate::pipeline::websocket::{ClientUpgrade, UpgradedClient};

/// How long a connection may go without a request in progress or a byte arriving before its
/// buffers are freed. Short, like nginx (which frees them at once): a client with requests
/// further apart than this pays for a new hyper connection per request, a few microseconds.
pub const PARK_AFTER: Duration = Duration::from_millis(50);

/// A client socket the HTTP/1.1 server can wait on without reading from it.
pub trait ClientSocket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket underneath, to wait for readability on.
    fn tcp(&self) -> &TcpStream;
    /// When the connection's idle timeout (or first-request deadline) runs out.
    fn deadline(&self) -> tokio::time::Instant;
    /// Whether bytes the server has not seen are already decoded and waiting (TLS).
    fn has_buffered_input(&mut self) -> bool;
    /// Replaces the idle timeout (an upgraded connection has its own).
    fn set_idle_timeout(&mut self, timeout: Duration);
}

impl ClientSocket for IdleTimeout<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }

    fn deadline(&self) -> tokio::time::Instant {
        self.expires()
    }

    fn has_buffered_input(&mut self) -> bool {
        false
    }

    fn set_idle_timeout(&mut self, timeout: Duration) {
        self.set_timeout(timeout);
    }
}

impl ClientSocket for tokio_rustls::server::TlsStream<IdleTimeout<TcpStream>> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.get_ref()
    }

    fn deadline(&self) -> tokio::time::Instant {
        self.get_ref().0.expires()
    }

    fn has_buffered_input(&mut self) -> bool {
        // Records already received and decrypted that nobody has read yet.
        self.get_mut().1.process_new_packets().is_ok_and(|state| state.plaintext_bytes_to_read() > 0)
    }

    fn set_idle_timeout(&mut self, timeout: Duration) {
        self.get_mut().0.set_timeout(timeout);
    }
}

impl<S: ClientSocket> crate::pipeline::websocket::ClientIo for Prefixed<S> {
    fn set_idle_timeout(&mut self, timeout: Duration) {
        self.inner.set_idle_timeout(timeout);
    }
}

/// The service every period of a connection serves requests with.
pub type Handler = Arc<
    dyn Fn(http::Request<hyper::body::Incoming>) -> Pin<Box<dyn Future<Output = http::Response<ObservedBody>> + Send>>
        + Send
        + Sync,
>;

/// The HTTP/1.1 server settings every connection of a listener uses.
pub fn builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
}

/// Serves HTTP/1.1 on `socket` until the client closes, the idle timeout runs out, the table
/// sheds the connection or the node shuts down.
pub async fn serve<S: ClientSocket>(
    builder: &http1::Builder,
    socket: S,
    already_read: Bytes,
    handler: Handler,
    slot: &ConnSlot,
    mut shutdown: watch::Receiver<bool>,
) {
    let upgrade: Arc<Mutex<Option<oneshot::Sender<UpgradedClient>>>> = Arc::default();
    let service = {
        let upgrade = upgrade.clone();
        hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            if crate::pipeline::headers::is_websocket_upgrade(request.headers()) {
                let (tx, rx) = oneshot::channel();
                request.extensions_mut().insert(ClientUpgrade::new(rx));
                *upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
            }
            let handled = handler(request);
            let upgrade = upgrade.clone();
            Box::pin(async move {
                let response = handled.await;
                if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                    upgrade.lock().unwrap_or_else(|p| p.into_inner()).take();
                }
                Ok::<_, Infallible>(response)
            }) as Pin<Box<dyn Future<Output = Result<http::Response<ObservedBody>, Infallible>> + Send>>
        })
    };
    let mut socket = Prefixed { prefix: already_read, inner: socket };
    let mut service = service;
    loop {
        let connection = builder.serve_connection(TokioIo::new(socket), service);
        // Boxed: the hyper connection's state lives only as long as the period.
        let (parts, end) = match Box::pin(period(connection, slot, &mut shutdown)).await {
            Ok(done) => done,
            Err(e) => {
                tracing::debug!(error = %e, "connection ended with an error");
                return;
            }
        };
        let http1::Parts { io, read_buf, service: kept, .. } = parts;
        let io = io.into_inner();
        // Bytes read past the last request are copied out, and the read buffer they sit in
        // (hyper's whole 8 KiB, even when empty) is freed now, not when the park ends.
        let prefix = match (io.prefix.is_empty(), read_buf.is_empty()) {
            (true, true) => Bytes::new(),
            (false, true) => io.prefix,
            (true, false) => Bytes::copy_from_slice(&read_buf),
            (false, false) => [&io.prefix[..], &read_buf[..]].concat().into(),
        };
        drop(read_buf);
        socket = Prefixed { prefix, inner: io.inner };
        service = kept;
        if let Some(tx) = upgrade.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // The 101 is out: the request path takes the socket from here.
            let _ = tx.send(Box::new(socket));
            return;
        }
        if end == PeriodEnd::Closing {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.shutdown()).await;
            return;
        }
        if socket.prefix.is_empty() && !socket.inner.has_buffered_input() {
            // Parked: only the socket is held until the client speaks again.
            let parked = Parked::new();
            tokio::select! {
                readable = socket.inner.tcp().readable() => if readable.is_err() { return },
                _ = tokio::time::sleep_until(socket.inner.deadline()) => return,
                _ = slot.shed_requested() => return,
                _ = super::listener::stopped(&mut shutdown) => return,
            }
            drop(parked);
        }
    }
}

type Connection<S, F> = http1::Connection<TokioIo<Prefixed<S>>, F>;
type Parts<S, F> = hyper::server::conn::http1::Parts<TokioIo<Prefixed<S>>, F>;

/// Counts a parked connection in `meridian_connections_parked` while it lives.
struct Parked(metrics::Gauge);

impl Parked {
    fn new() -> Self {
        let gauge = metrics::gauge!("meridian_connections_parked");
        gauge.increment(1.0);
        Parked(gauge)
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// How a period of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeriodEnd {
    /// It was idle and let go of its buffers: wait for the client.
    Parked,
    /// The client closed, or the table or the node asked it to close.
    Closing,
}

/// One period of a connection: serves until hyper is done, then returns its parts and
/// why it ended.
async fn period<S, F>(
    mut connection: Connection<S, F>,
    slot: &ConnSlot,
    shutdown: &mut watch::Receiver<bool>,
) -> hyper::Result<(Parts<S, F>, PeriodEnd)>
where
    S: ClientSocket,
    F: hyper::service::HttpService<hyper::body::Incoming, ResBody = ObservedBody> + Unpin,
    F::Future: Unpin + Send,
{
    let mut shed = std::pin::pin!(slot.shed_requested());
    let mut stop = std::pin::pin!(super::listener::stopped(shutdown));
    let mut park = std::pin::pin!(tokio::time::sleep(PARK_AFTER));
    let mut closing = false;
    let mut parking = false;
    loop {
        tokio::select! {
            done = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => {
                done?;
                break;
            }
            _ = &mut shed, if !closing => {
                (closing, parking) = (true, false);
                Pin::new(&mut connection).graceful_shutdown();
            }
            _ = &mut stop, if !closing => {
                (closing, parking) = (true, false);
                Pin::new(&mut connection).graceful_shutdown();
            }
            _ = &mut park, if !closing => match slot.idle_for() {
                Some(idle) if idle >= PARK_AFTER => {
                    (closing, parking) = (true, true);
                    Pin::new(&mut connection).graceful_shutdown();
                }
                idle => {
                    let left = PARK_AFTER - idle.unwrap_or_default().min(PARK_AFTER);
                    park.as_mut().reset(tokio::time::Instant::now() + left.max(Duration::from_millis(10)));
                }
            },
        }
    }
    // A period that ended without being asked to park ended because the client closed.
    let end = if parking { PeriodEnd::Parked } else { PeriodEnd::Closing };
    Ok((connection.into_parts(), end))
}

/// A socket with bytes already read from it in front.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
