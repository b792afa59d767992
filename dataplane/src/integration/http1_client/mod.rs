//! HTTP/1.1 to an upstream target, spoken in the task of the request it serves.
//!
//! hyper's client runs every connection in a task of its own and reaches it through
//! channels, so a proxied request crosses tasks on its way out, with the response head and
//! with every body frame. Here the request's task does it all: [`exchange`] writes the
//! request and reads the response head, and the [`ResponseStream`] it returns reads the body
//! straight from the socket as the client's connection asks for it, sending what is left of
//! the request body meanwhile (a target may answer before it has read the whole upload).
//! Once a response has ended cleanly its connection comes back
//! ([`ResponseStream::reusable_connection`]) for the next exchange.
//!
//! An idle connection is its socket and nothing else: the read buffer goes with the last
//! response's bytes, and [`Http1Connection::is_reusable`] learns from the runtime, without a
//! system call unless the socket turned readable, whether the target closed it meanwhile.
//!
//! Framing follows RFC 9112: the request carries `Content-Length` when its body's length is
//! known and is chunked otherwise; a response is empty for `HEAD`, 1xx, 204 and 304, chunked
//! when `chunked` is its last transfer coding, as long as its `Content-Length` says when it
//! has one (conflicting values are refused), and read until the target closes otherwise.
//! Response heads are bounded ([`MAX_HEAD`], [`MAX_FIELDS`]), as are chunk-size lines and
//! trailers; anything malformed fails the exchange and closes the connection.

mod wire;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

pub use wire::{MAX_FIELDS, MAX_HEAD, ReadResponse, read_response};
use wire::{ResponseHead, framing, next_head};

use super::connection::{OpenConnection, UpstreamIo};
use super::request_body::{BoxError, RequestBody};
use crate::framing::{Decoded, Framing, FramingError, Outgoing, READ_SIZE, SendError, poll_read_more, write_field};
use crate::prefixed::Prefixed;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("connection error")]
    Io(#[from] io::Error),
    #[error("the target closed the connection before it answered")]
    ClosedBeforeAnswer,
    #[error("the target closed the connection in the middle of its response")]
    ClosedMidResponse,
    #[error("the target's response is malformed: {0}")]
    Malformed(&'static str),
    #[error("the request body failed")]
    RequestBody(#[source] BoxError),
}

impl From<FramingError> for Http1Error {
    fn from(e: FramingError) -> Self {
        match e {
            FramingError::Malformed(what) => Http1Error::Malformed(what),
            FramingError::Truncated => Http1Error::ClosedMidResponse,
        }
    }
}

impl From<SendError> for Http1Error {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Io(e) => Http1Error::Io(e),
            SendError::Body(e) => Http1Error::RequestBody(e),
        }
    }
}

/// An exchange that got no response.
#[derive(Debug)]
pub enum ExchangeFailure {
    /// Not a byte of a response arrived. `resendable` says whether the request is still
    /// whole, so that it can be sent as it was (it had no body to take); `written` whether
    /// any of it left.
    Unanswered { resendable: bool, written: bool, error: Http1Error },
    /// The request, its body or the response failed.
    Failed(Http1Error),
}

/// An open HTTP/1.1 connection to a target.
pub struct Http1Connection {
    io: UpstreamIo,
    /// Bytes read and not consumed yet; nothing (and no allocation) between exchanges.
    read: BytesMut,
    _open: OpenConnection,
}

impl Http1Connection {
    /// A connection over `io`, boxed: it moves between the pool and the responses it
    /// carries, and stays small in both.
    pub fn new(io: UpstreamIo, open: OpenConnection) -> Box<Self> {
        Box::new(Http1Connection { io, read: BytesMut::new(), _open: open })
    }

    /// Whether this idle connection can carry an exchange: the target has neither closed it
    /// nor sent anything unasked. Asks the runtime whether the socket turned readable, and
    /// reads only if it did.
    pub fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.io.tcp().poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        // Readable: the target closed the connection or sent bytes, or the readiness is stale
        // (or, over TLS, it is a record such as a session ticket). A read tells which.
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io).poll_read(&mut cx, &mut buf).is_pending()
    }

    /// Reads more into the buffer ([`poll_read_more`]).
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        poll_read_more(&mut self.io, cx, &mut self.read, want)
    }

    /// Reads until a final response head. `answered` is set once a byte of a response has
    /// arrived.
    fn poll_head(&mut self, cx: &mut Context<'_>, answered: &mut bool) -> Poll<Result<ResponseHead, Http1Error>> {
        loop {
            if let Some(head) = next_head(&mut self.read)? {
                return Poll::Ready(Ok(head));
            }
            if ready!(self.poll_fill(cx, READ_SIZE))? == 0 {
                let error = if *answered { Http1Error::ClosedMidResponse } else { Http1Error::ClosedBeforeAnswer };
                return Poll::Ready(Err(error));
            }
            *answered = true;
        }
    }

    /// The next piece of the response body, as `framing` delimits it.
    fn poll_body(
        &mut self,
        framing: &mut Framing,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        loop {
            match framing.decode(&mut self.read)? {
                Decoded::Frame(frame) => return Poll::Ready(Some(Ok(frame))),
                Decoded::End => return Poll::Ready(None),
                Decoded::More(want) => {
                    if ready!(self.poll_fill(cx, want))? == 0 {
                        framing.closed()?;
                        return Poll::Ready(None);
                    }
                }
            }
        }
    }
}

/// The request on its way out: its head, then its body as the body yields it.
type Upload = Outgoing<RequestBody>;

/// Serializes the head of `request` (origin form, its body framed by its length when known,
/// chunked otherwise) and takes its body; a request without a body is left whole.
fn upload(request: &mut Request<RequestBody>) -> Upload {
    let body = request.body();
    let length = if body.is_end_stream() { Some(0) } else { body.size_hint().exact() };
    let method = request.method();
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let headers = request.headers();
    let fields: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    let mut head = Vec::with_capacity(method.as_str().len() + target.len() + fields + 48);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    // The framing fields are the client's to write, from the body it sends.
    let mut declared = false;
    for (name, value) in headers {
        if *name == CONTENT_LENGTH {
            declared = true;
        } else if *name != TRANSFER_ENCODING {
            write_field(&mut head, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let chunked = match length {
        // A method whose requests have no defined body semantics gets no framing.
        Some(0) if matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT) && !declared => {
            false
        }
        Some(n) => {
            write_field(&mut head, b"content-length", itoa::Buffer::new().format(n).as_bytes());
            false
        }
        None => {
            write_field(&mut head, b"transfer-encoding", b"chunked");
            true
        }
    };
    head.extend_from_slice(b"\r\n");
    let body = (length != Some(0)).then(|| std::mem::replace(request.body_mut(), RequestBody::empty()));
    Outgoing::new(head, body, chunked)
}

/// Sends `request` (its URI in origin form or absolute; its `Host` set) on `connection` and
/// reads the response head. The body of the response reads from the connection. The request
/// stays with the caller: its body is taken, and one without a body stays whole, to be sent
/// again if the connection turns out closed.
pub async fn exchange(
    mut connection: Box<Http1Connection>,
    request: &mut Request<RequestBody>,
) -> Result<Response<ResponseStream>, ExchangeFailure> {
    let head_request = request.method() == Method::HEAD;
    let mut upload = upload(request);
    let resendable = !upload.has_body();
    let mut sending = true;
    let mut write_error = None;
    let mut answered = false;
    let head = std::future::poll_fn(|cx| {
        if sending {
            match upload.poll_send(&mut connection.io, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => sending = false,
                // The client's body failed: no answer can come to a request cut short.
                Poll::Ready(Err(SendError::Body(e))) => return Poll::Ready(Err(Http1Error::RequestBody(e))),
                // The target may have answered and stopped reading: look for its answer.
                Poll::Ready(Err(SendError::Io(e))) => {
                    sending = false;
                    write_error = Some(Http1Error::Io(e));
                }
            }
        }
        connection.poll_head(cx, &mut answered)
    })
    .await;
    let mut head = match head {
        Ok(head) => head,
        Err(e @ Http1Error::RequestBody(_)) => return Err(ExchangeFailure::Failed(e)),
        Err(e) if !answered => {
            let error = write_error.unwrap_or(e);
            return Err(ExchangeFailure::Unanswered { resendable, written: upload.written, error });
        }
        Err(e) => return Err(ExchangeFailure::Failed(e)),
    };
    let (framing, keep_alive) = framing(&mut head, head_request).map_err(ExchangeFailure::Failed)?;
    let stream = ResponseStream {
        connection: Some(connection),
        framing,
        upload: (sending && write_error.is_none()).then(|| Box::new(upload)),
        keep_alive: keep_alive && write_error.is_none(),
        upgrade: head.status == StatusCode::SWITCHING_PROTOCOLS,
    };
    let mut response = Response::new(stream);
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// A response body read from its connection as it is polled. Polling it also sends what is
/// left of the request body.
pub struct ResponseStream {
    /// `None` once the connection failed (it closes).
    connection: Option<Box<Http1Connection>>,
    framing: Framing,
    /// What is left of the request body, while the target answers (boxed: rare).
    upload: Option<Box<Upload>>,
    keep_alive: bool,
    upgrade: bool,
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream").finish_non_exhaustive()
    }
}

impl ResponseStream {
    /// The connection, when the response has ended cleanly and the connection can carry
    /// another exchange: the target keeps it open, the whole request was sent and nothing
    /// was read past the response.
    pub fn reusable_connection(&mut self) -> Option<Box<Http1Connection>> {
        let clean = matches!(self.framing, Framing::Empty) && self.keep_alive && self.upload.is_none() && !self.upgrade;
        let mut connection = self.connection.take_if(|c| clean && c.read.is_empty())?;
        // Lets go of the last response's buffer (its bytes may live on in the response).
        connection.read = BytesMut::new();
        Some(connection)
    }

    /// The connection of a `101 Switching Protocols` response, with whatever the target sent
    /// past the head.
    pub fn upgraded(&mut self) -> Option<UpgradedUpstream> {
        if !self.upgrade {
            return None;
        }
        let Http1Connection { io, read, _open } = *self.connection.take()?;
        Some(UpgradedUpstream { socket: Prefixed::new(read.freeze(), io), open: _open })
    }

    /// Closes the connection (a body abandoned mid-way).
    pub fn close(&mut self) {
        self.connection = None;
    }
}

impl Body for ResponseStream {
    type Data = Bytes;
    type Error = Http1Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        let this = self.get_mut();
        let Some(connection) = this.connection.as_mut() else { return Poll::Ready(None) };
        if let Some(upload) = &mut this.upload {
            match upload.poll_send(&mut connection.io, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => this.upload = None,
                // The target answered and stopped reading; the answer still counts.
                Poll::Ready(Err(_)) => {
                    this.upload = None;
                    this.keep_alive = false;
                }
            }
        }
        let polled = connection.poll_body(&mut this.framing, cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            this.connection = None;
            this.framing = Framing::Empty;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Empty)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Chunked(_) | Framing::UntilClose => SizeHint::default(),
        }
    }
}

/// An upstream connection after `101 Switching Protocols`: the socket, with the bytes the
/// target sent past the head in front, and its place in the open count (kept while it lives).
pub struct UpgradedUpstream {
    pub socket: Prefixed<UpstreamIo>,
    pub open: OpenConnection,
}

#[cfg(test)]
mod tests;
