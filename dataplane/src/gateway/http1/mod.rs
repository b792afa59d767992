//! The gateway's HTTP/1.1 server: a connection's loop of request heads, calls into the
//! request path and responses, in the connection's own task.
//!
//! Each piece is small and knows nothing of the others' state: `request` parses a head
//! from the bytes read (bounded, strict about framing), `response` writes a response head
//! and decides its framing, [`crate::framing`] delimits and writes bodies, and `wire`
//! shares the socket between this loop and the request body, which reads itself from the
//! socket when the request path polls it (no task or channel between them).
//!
//! A connection between requests holds its socket and nothing else: its read buffer is
//! freed as soon as a response is out and nothing more has arrived, like nginx, and the
//! task waits for the socket to turn readable, its idle timer to run out or its slot in the
//! connection table to ask it to close (`tests/bench/idle_memory.sh` measures the resident
//! set). A connection asked to close while it serves a request closes after the response.
//!
//! A WebSocket upgrade ends the loop: after the `101`, the socket (with any bytes read past
//! the handshake) goes to the request path, which splices it to the upstream.

mod request;
mod response;
mod wire;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::conns::ConnSlot;
use super::io::IdleTimeout;
use crate::config::Limits;
use crate::framing::{Framing, Outgoing, READ_SIZE};
use crate::incoming::Incoming;
use crate::observe::completion::ObservedBody;
use crate::pipeline::websocket::{ClientUpgrade, UpgradedClient};
use crate::prefixed::Prefixed;
pub use request::{HeadError, HeadLimits, ReadRequest, RequestHead, Stopped, parse as parse_head, read_requests};
use response::Asked;
use wire::{SharedWire, SharedWriter, Wire};

/// How long a closing connection waits for the client to read its last response and close
/// (reading and dropping what it still sends meanwhile).
const LINGER: Duration = Duration::from_secs(1);

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

/// What every request on a connection is served with: the request path.
pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = http::Response<ObservedBody>> + Send>> + Send + Sync>;

/// The HTTP/1.1 settings every connection of a listener uses.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub head: HeadLimits,
    /// How long a request head may take to arrive once its first byte has.
    pub header_read_timeout: Duration,
}

impl Settings {
    pub fn new(limits: &Limits) -> Self {
        Settings {
            head: HeadLimits { max_bytes: limits.max_header_bytes, max_fields: limits.max_headers },
            header_read_timeout: limits.header_read_timeout,
        }
    }
}

/// Serves HTTP/1.1 on `socket` (`already_read` read from it before) until the client
/// closes, the idle timeout runs out, the table sheds the connection or the node shuts down.
pub fn serve<'a, S: ClientSocket>(
    settings: &'a Settings,
    socket: S,
    already_read: Bytes,
    handler: Handler,
    slot: &'a ConnSlot,
) -> impl Future<Output = ()> + Send + 'a {
    let wire = Arc::new(Mutex::new(Wire::new(socket, already_read)));
    async move {
        loop {
            let head = match next_head(&wire, settings, slot).await {
                Next::Request(head) => head,
                Next::Refused(error) => {
                    tracing::debug!(status = error.status.as_u16(), error = %error, "request head refused");
                    Box::pin(refuse(&wire, error.status)).await;
                    break;
                }
                Next::Closed => return,
            };
            // Boxed, like the close below: an idle connection's future holds only the wait
            // for the next head.
            match crate::boxed_future::in_place(|| exchange(&wire, settings, &handler, head, slot)).await {
                After::Next => {}
                After::Close => break,
                After::Upgraded => return,
            }
        }
        Box::pin(close(&wire)).await;
    }
}

/// What waiting for a request head came to.
#[allow(clippy::large_enum_variant, reason = "made once per request and moved on at once; boxing would allocate")]
enum Next {
    Request(RequestHead),
    /// The head is malformed, too large or too slow: answered with its status, then closed.
    Refused(HeadError),
    /// The client closed, went quiet past the idle timeout, or the table asked the
    /// connection to close.
    Closed,
}

/// Reads until a request head is whole. Holds no buffer while nothing has arrived; a head
/// begun must be whole within the header read timeout.
async fn next_head<S: ClientSocket>(wire: &SharedWire<S>, settings: &Settings, slot: &ConnSlot) -> Next {
    let mut deadline: Option<Pin<Box<Sleep>>> = None;
    let mut parked: Option<Parked> = None;
    std::future::poll_fn(|cx| {
        let mut wire = Wire::lock(wire);
        loop {
            if !wire.read.is_empty() {
                match request::parse(&mut wire.read, settings.head) {
                    Ok(Some(head)) => return Poll::Ready(Next::Request(head)),
                    Err(e) => return Poll::Ready(Next::Refused(e)),
                    Ok(None) => {}
                }
            }
            if slot.poll_shed(cx).is_ready() {
                return Poll::Ready(Next::Closed);
            }
            if wire.read.is_empty() {
                // Nothing of a request yet: wait without a buffer.
                if wire.read.capacity() > 0 {
                    wire.read = BytesMut::new();
                }
                let Some(io) = wire.io.as_mut() else { return Poll::Ready(Next::Closed) };
                if !io.has_buffered_input() {
                    match io.tcp().poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(_)) => return Poll::Ready(Next::Closed),
                        Poll::Pending => {
                            if io.poll_idle(cx).is_ready() {
                                return Poll::Ready(Next::Closed);
                            }
                            parked.get_or_insert_with(Parked::new);
                            return Poll::Pending;
                        }
                    }
                }
            } else {
                let timer = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(settings.header_read_timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    let what = "the request head did not arrive within the header read timeout";
                    return Poll::Ready(Next::Refused(HeadError { status: StatusCode::REQUEST_TIMEOUT, what }));
                }
            }
            match wire.poll_fill(cx, READ_SIZE) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Next::Closed),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// What a connection does after an exchange.
enum After {
    Next,
    Close,
    /// The socket went to a WebSocket.
    Upgraded,
}

/// Serves one request: calls the request path with it, writes the response, and says
/// whether the connection can carry another.
async fn exchange<S: ClientSocket>(
    wire: &Arc<SharedWire<S>>,
    settings: &Settings,
    handler: &Handler,
    head: RequestHead,
    slot: &ConnSlot,
) -> After {
    let RequestHead { request, framing, keep_alive, expect_continue } = head;
    let mut asked = Asked { head: request.method() == Method::HEAD, version: request.version(), keep_alive };
    let number = Wire::lock(wire).begin_request(framing, expect_continue);
    let body = if framing == Framing::Empty { Incoming::Empty } else { Incoming::http1(wire.clone(), number) };
    let mut request = request.map(|()| body);
    let upgrade = crate::pipeline::headers::is_websocket_upgrade(request.headers()).then(|| {
        let (tx, rx) = oneshot::channel();
        request.extensions_mut().insert(ClientUpgrade::new(rx));
        tx
    });
    // The request is served until its response is ready, or until the client closes the
    // connection: then what serving it was doing (an upstream call) is dropped.
    let mut handled = handler(request);
    let served = std::future::poll_fn(|cx| match handled.as_mut().poll(cx) {
        Poll::Ready(response) => Poll::Ready(Some(response)),
        Poll::Pending => poll_client_gone(wire, settings, cx).map(|()| None),
    })
    .await;
    let Some(response) = served else {
        tracing::debug!("the client closed the connection before its response");
        return After::Close;
    };
    {
        // Whether the connection can stay open, as far as is known before the response is
        // written (it is asked again once it is out).
        let body_abandoned = Arc::strong_count(wire) == 1;
        let mut wire = Wire::lock(wire);
        if !wire.continue_owed.is_empty() {
            // Answered before the body was asked for: the client may send it or not, so the
            // connection cannot tell where the next request starts.
            wire.continue_owed = &[];
            wire.body = Framing::Empty;
            wire.broken = true;
        }
        // A body nobody holds any more and not read to its end: the connection closes after
        // the response rather than reading it.
        let unread = body_abandoned && wire.body != Framing::Empty;
        asked.keep_alive &= !wire.broken && !unread && !slot.shedding();
    }
    let head = response::head(&response, asked);
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let upgraded = upgrade.filter(|_| switching);
    let body = head.has_body.then(|| response.into_body());
    let mut out = Outgoing::new(head.bytes, body, head.chunked);
    if let Err(e) = std::future::poll_fn(|cx| out.poll_send(&mut SharedWriter(wire), cx)).await {
        tracing::debug!(error = %e, "the response could not be written");
        return After::Close;
    }
    if let Some(tx) = upgraded {
        let mut wire = Wire::lock(wire);
        let Some(io) = wire.io.take() else { return After::Close };
        let read = std::mem::take(&mut wire.read).freeze();
        let _ = tx.send(Box::new(Prefixed::new(read, io)) as UpgradedClient);
        return After::Upgraded;
    }
    let wire = Wire::lock(wire);
    // A 101 to a request that asked for no upgrade leaves the connection in no known state.
    if head.keep_alive && !switching && !wire.broken && wire.body == Framing::Empty && !slot.shedding() {
        After::Next
    } else {
        After::Close
    }
}

/// Answers a head that could not be read with `status`.
async fn refuse<S: ClientSocket>(wire: &SharedWire<S>, status: StatusCode) {
    let mut refusal = Outgoing::<http_body_util::Empty<Bytes>>::new(response::refusal(status), None, false);
    let _ = std::future::poll_fn(|cx| refusal.poll_send(&mut SharedWriter(wire), cx)).await;
}

/// Ready once the client has closed the connection while its request is served: its body
/// read to the end (until then the body's reads are the socket's), the socket turned
/// readable and a read says end of stream or fails. What arrives meanwhile (the next
/// request, pipelined) is kept for later, up to a head's worth.
fn poll_client_gone<S: ClientSocket>(wire: &SharedWire<S>, settings: &Settings, cx: &mut Context<'_>) -> Poll<()> {
    let mut wire = Wire::lock(wire);
    loop {
        if wire.body != Framing::Empty || wire.read.len() > settings.head.max_bytes {
            return Poll::Pending;
        }
        let Some(io) = wire.io.as_mut() else { return Poll::Pending };
        if !io.has_buffered_input() && io.tcp().poll_read_ready(cx).is_pending() {
            return Poll::Pending;
        }
        match wire.poll_fill(cx, READ_SIZE) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Closes the connection: the write side first, then whatever the client still sends is
/// read and dropped for up to [`LINGER`], so that it reads the last response before the
/// connection goes.
async fn close<S: ClientSocket>(wire: &SharedWire<S>) {
    let Some(mut io) = Wire::lock(wire).io.take() else { return };
    let _ = tokio::time::timeout(LINGER, async {
        let _ = io.shutdown().await;
        std::future::poll_fn(|cx| wire::poll_discard(&mut io, cx)).await;
    })
    .await;
}

/// Counts a connection waiting for its next request without a buffer in
/// `meridian_connections_parked` while it waits.
struct Parked(metrics::Gauge);

impl Parked {
    fn new() -> Self {
        static GAUGE: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();
        let gauge = GAUGE.get_or_init(|| metrics::gauge!("meridian_connections_parked")).clone();
        gauge.increment(1.0);
        Parked(gauge)
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests;
