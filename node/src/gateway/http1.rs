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
//! socket is parked: the task waits for it to become readable, its idle timer to run out or
//! its slot in the connection table to ask it to close, holding only the socket, the timer
//! and the service (under 2 KiB of heap in all; `tests/bench/idle_memory.sh` measures the
//! resident set).
//! The next request starts a new period, which costs a new hyper connection (two buffer
//! allocations); a client that keeps the connection busy is never parked.
//!
//! A WebSocket upgrade ends the periods: after the `101`, the socket (with any bytes read
//! past the handshake) goes to the request path, which splices it to the upstream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use super::conns::ConnSlot;
use super::io::IdleTimeout;
use crate::config::Limits;
use crate::observe::completion::ObservedBody;
use crate::pipeline::websocket::{ClientUpgrade, UpgradedClient};
use crate::prefixed::Prefixed;

/// How long a connection may go without a request in progress or a byte arriving before its
/// buffers are freed. Short, like nginx (which frees them at once): a client with requests
/// further apart than this pays for a new hyper connection per request, a few microseconds.
pub const PARK_AFTER: Duration = Duration::from_millis(50);

/// A client socket the HTTP/1.1 server can wait on without reading from it.
pub trait ClientSocket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket underneath, to wait for readability on.
    fn tcp(&self) -> &TcpStream;
    /// Ready when the connection's idle timeout (or first-request deadline) has run out.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    /// Whether bytes the server has not seen are already decoded and waiting (TLS).
    fn has_buffered_input(&mut self) -> bool;
    /// Replaces the idle timeout (an upgraded connection has its own).
    fn set_idle_timeout(&mut self, timeout: Duration);
}

impl ClientSocket for IdleTimeout<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }

    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        IdleTimeout::poll_idle(self, cx).map(drop)
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

    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().0.poll_idle(cx).map(drop)
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
///
/// The connection is a loop of periods, each served by hyper, with the connection parked
/// between them. The loop is an async block, not an async fn, and everything a period hands
/// back is taken apart outside it (`begin_period`, `resume`): what it holds across its
/// awaits is then only the socket, the service and the current wait, with no second copy
/// of its arguments and no room kept for values already moved on (rustc keeps both in an
/// async fn's state), so an idle connection's future stays small.
pub fn serve<'a, S: ClientSocket>(
    builder: &'a http1::Builder,
    socket: S,
    already_read: Bytes,
    handler: Handler,
    slot: &'a ConnSlot,
    mut shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'a {
    let mut socket = Prefixed { prefix: already_read, inner: socket };
    let mut service = Http1Service { handler, upgrade: Arc::default() };
    async move {
        loop {
            let end;
            (socket, service, end) = match begin_period(builder, socket, service, slot, &mut shutdown).await {
                Ok((parts, end)) => {
                    let (socket, service) = resume(parts);
                    (socket, service, end)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "connection ended with an error");
                    return;
                }
            };
            if let Some(tx) = service.upgrade.lock().unwrap_or_else(|p| p.into_inner()).take() {
                // The 101 is out: the request path takes the socket from here.
                let _ = tx.send(Box::new(socket));
                return;
            }
            if end == PeriodEnd::Closing {
                let _ = tokio::time::timeout(Duration::from_secs(1), socket.shutdown()).await;
                return;
            }
            let nothing_to_read = socket.prefix.is_empty() && !socket.inner.has_buffered_input();
            if nothing_to_read && !park(&mut socket.inner, slot).await {
                return;
            }
        }
    }
}

/// What a period hands back, taken apart: the socket, with the bytes read past the last
/// request in front of it, and the service. The bytes are copied out, and hyper's read
/// buffer they sit in (its whole 8 KiB, even when empty) is freed now, not when the park ends.
fn resume<S: ClientSocket>(parts: Parts<S>) -> (Prefixed<S>, Http1Service) {
    let http1::Parts { io, read_buf, service, .. } = parts;
    let io = io.into_inner();
    let prefix = match (io.prefix.is_empty(), read_buf.is_empty()) {
        (true, true) => Bytes::new(),
        (false, true) => io.prefix,
        (true, false) => Bytes::copy_from_slice(&read_buf),
        (false, false) => [&io.prefix[..], &read_buf[..]].concat().into(),
    };
    (Prefixed { prefix, inner: io.inner }, service)
}

/// A period's future, boxed: the hyper connection's state (760 bytes) lives only as long as
/// the period.
fn begin_period<'a, S: ClientSocket>(
    builder: &http1::Builder,
    socket: Prefixed<S>,
    service: Http1Service,
    slot: &'a ConnSlot,
    shutdown: &'a mut watch::Receiver<bool>,
) -> Pin<Box<impl Future<Output = PeriodResult<S>> + Send + 'a>> {
    Box::pin(period(builder.serve_connection(TokioIo::new(socket), service), slot, shutdown))
}

/// Where the `101` of a WebSocket handshake hands the socket over, once it is out.
type Upgrade = Arc<Mutex<Option<oneshot::Sender<UpgradedClient>>>>;

/// What a period's hyper connection serves requests with: the handler, and the WebSocket
/// upgrade a request may start.
struct Http1Service {
    handler: Handler,
    upgrade: Upgrade,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Http1Service {
    type Response = http::Response<ObservedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut request: http::Request<hyper::body::Incoming>) -> Self::Future {
        if crate::pipeline::headers::is_websocket_upgrade(request.headers()) {
            let (tx, rx) = oneshot::channel();
            request.extensions_mut().insert(ClientUpgrade::new(rx));
            *self.upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        }
        let handled = (self.handler)(request);
        let upgrade = self.upgrade.clone();
        Box::pin(async move {
            let response = handled.await;
            if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                upgrade.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
            Ok(response)
        })
    }
}

/// Parks a connection with nothing to read: only the socket is held until the client speaks
/// again (true), or the idle timeout runs out or the table asks it to close (shedding it, or
/// because the node stops) (false). Everything is polled on the socket and the slot, with no
/// futures to hold.
async fn park<S: ClientSocket>(socket: &mut S, slot: &ConnSlot) -> bool {
    let _parked = Parked::new();
    std::future::poll_fn(|cx| {
        if slot.poll_shed(cx).is_ready() {
            return Poll::Ready(false);
        }
        match socket.tcp().poll_read_ready(cx) {
            Poll::Ready(ready) => Poll::Ready(ready.is_ok()),
            Poll::Pending => socket.poll_idle(cx).map(|()| false),
        }
    })
    .await
}

type Connection<S> = http1::Connection<TokioIo<Prefixed<S>>, Http1Service>;
type Parts<S> = hyper::server::conn::http1::Parts<TokioIo<Prefixed<S>>, Http1Service>;
/// What a period ends with: hyper's parts of the connection and why it ended.
type PeriodResult<S> = hyper::Result<(Parts<S>, PeriodEnd)>;

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
async fn period<S: ClientSocket>(
    mut connection: Connection<S>,
    slot: &ConnSlot,
    shutdown: &mut watch::Receiver<bool>,
) -> PeriodResult<S> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::conns::ConnectionTable;

    /// What an idle HTTP/1.1 connection holds is mostly this future, for as long as the
    /// client keeps the connection: it must stay small. (It was 1,072 bytes while it kept a
    /// second copy of its arguments and the last period's parts; 512 now.)
    #[tokio::test]
    async fn an_idle_connections_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let table = ConnectionTable::new(10, 10);
        let admitted = table.admit(client.local_addr().unwrap().ip()).await.unwrap();
        let handler: Handler = Arc::new(|_| {
            Box::pin(async { http::Response::new(ObservedBody::unobserved(crate::body::ResponseBody::Empty)) })
        });
        let builder = http1::Builder::new();
        let socket = IdleTimeout::new(client, Duration::from_secs(5));
        let served = serve(&builder, socket, Bytes::new(), handler, &admitted.slot, watch::channel(false).1);
        let size = std::mem::size_of_val(&served);
        assert!(size <= 400, "an HTTP/1.1 connection's future is {size} bytes");
    }

    #[tokio::test]
    async fn a_parked_connection_closes_when_the_table_asks() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let table = ConnectionTable::new(10, 10);
        let admitted = table.admit(client.local_addr().unwrap().ip()).await.unwrap();
        let slot = admitted.slot.clone();
        let served = tokio::spawn(async move {
            let handler: Handler = Arc::new(|_| {
                Box::pin(async { http::Response::new(ObservedBody::unobserved(crate::body::ResponseBody::Empty)) })
            });
            let builder = http1::Builder::new();
            let socket = IdleTimeout::new(server, Duration::from_secs(30));
            let (_stop, shutdown) = watch::channel(false);
            serve(&builder, socket, Bytes::new(), handler, &slot, shutdown).await;
        });
        client.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n").await.unwrap();
        let mut answer = [0u8; 512];
        let n = client.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
        // Idle past PARK_AFTER: parked, holding the socket and nothing else.
        tokio::time::sleep(PARK_AFTER + Duration::from_millis(100)).await;
        assert!(!served.is_finished());
        table.close_all();
        tokio::time::timeout(Duration::from_secs(2), served).await.expect("the parked connection closed").unwrap();
        assert_eq!(client.read(&mut answer).await.unwrap(), 0, "the client sees the close");
        drop(admitted);
    }
}
