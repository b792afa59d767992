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

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

use super::connection::{OpenConnection, UpstreamIo};
use super::request_body::{BoxError, RequestBody};

/// The longest response head (status line and header fields) read from a target.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
pub const MAX_FIELDS: usize = 128;
/// The longest chunk-size line (with its extensions).
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The most trailer fields after a chunked body.
const MAX_TRAILERS: usize = 32;
/// How much is read at once, at least.
const READ_SIZE: usize = 8 * 1024;
/// The most a single read asks for (a long body is read in pieces this large).
const MAX_READ_SIZE: usize = 64 * 1024;
/// The most body pieces queued before they are written.
const MAX_QUEUED: usize = 8;

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

/// An exchange that got no response.
#[derive(Debug)]
pub enum ExchangeFailure {
    /// Not a byte of a response arrived. `request` is the request again when it can be sent
    /// as it was (it had no body); `written` says whether any of it left.
    Unanswered { request: Option<Box<Request<RequestBody>>>, written: bool, error: Http1Error },
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

    /// Reads more into the buffer: at least `want` bytes of room (within
    /// [`READ_SIZE`]..=[`MAX_READ_SIZE`]). Ready with the count read, 0 at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let room = want.clamp(READ_SIZE, MAX_READ_SIZE);
        if self.read.capacity() - self.read.len() < room / 2 {
            self.read.reserve(room);
        }
        poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
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

/// What a body's framing made of the bytes read so far.
enum Decoded {
    /// A piece of the body, or its trailers.
    Frame(Frame<Bytes>),
    /// The body is over.
    End,
    /// More bytes are needed (about this many would help).
    More(usize),
}

impl Framing {
    /// Takes the next piece of the body out of `read`. Knows nothing of sockets: the
    /// connection reads more when told to, and the fuzz target feeds bytes in pieces.
    fn decode(&mut self, read: &mut BytesMut) -> Result<Decoded, Http1Error> {
        loop {
            match self {
                Framing::Empty => return Ok(Decoded::End),
                Framing::UntilClose if read.is_empty() => return Ok(Decoded::More(READ_SIZE)),
                Framing::UntilClose => return Ok(Decoded::Frame(Frame::data(read.split().freeze()))),
                Framing::Length(left) => {
                    if read.is_empty() {
                        return Ok(Decoded::More(clamp_len(*left)));
                    }
                    let data = take(read, left);
                    if *left == 0 {
                        *self = Framing::Empty;
                    }
                    return Ok(Decoded::Frame(Frame::data(data)));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(read) {
                    Ok(httparse::Status::Complete((used, size))) if read[0].is_ascii_hexdigit() => {
                        read.advance(used);
                        *self = Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                    }
                    Ok(httparse::Status::Partial) if read.len() <= MAX_CHUNK_LINE => {
                        return Ok(Decoded::More(READ_SIZE));
                    }
                    Ok(httparse::Status::Partial) => {
                        return Err(Http1Error::Malformed("a chunk-size line is over 4 KiB"));
                    }
                    Ok(httparse::Status::Complete(_)) | Err(_) => {
                        return Err(Http1Error::Malformed("a chunk size is invalid"));
                    }
                },
                Framing::Chunked(Chunk::Data(left)) => {
                    if read.is_empty() {
                        return Ok(Decoded::More(clamp_len(*left)));
                    }
                    let data = take(read, left);
                    if *left == 0 {
                        *self = Framing::Chunked(Chunk::DataEnd);
                    }
                    return Ok(Decoded::Frame(Frame::data(data)));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if read.len() < 2 {
                        return Ok(Decoded::More(READ_SIZE));
                    }
                    if &read[..2] != b"\r\n" {
                        return Err(Http1Error::Malformed("a chunk's data is not followed by CRLF"));
                    }
                    read.advance(2);
                    *self = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    if read.starts_with(b"\r\n") {
                        read.advance(2);
                        *self = Framing::Empty;
                        return Ok(Decoded::End);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
                    match httparse::parse_headers(read, &mut fields) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let trailers = trailer_map(fields)?;
                            read.advance(used);
                            *self = Framing::Empty;
                            return Ok(if trailers.is_empty() {
                                Decoded::End
                            } else {
                                Decoded::Frame(Frame::trailers(trailers))
                            });
                        }
                        Ok(httparse::Status::Partial) if read.len() <= MAX_HEAD => return Ok(Decoded::More(READ_SIZE)),
                        Ok(httparse::Status::Partial) | Err(_) => {
                            return Err(Http1Error::Malformed("the trailer fields are invalid"));
                        }
                    }
                }
            }
        }
    }

    /// The target closed the connection: the end of a body read until then, an error for
    /// any other body not over yet.
    fn closed(&mut self) -> Result<(), Http1Error> {
        match std::mem::replace(self, Framing::Empty) {
            Framing::Empty | Framing::UntilClose => Ok(()),
            Framing::Length(_) | Framing::Chunked(_) => Err(Http1Error::ClosedMidResponse),
        }
    }
}

/// Up to `left` bytes of `read`, counted off `left`.
fn take(read: &mut BytesMut, left: &mut u64) -> Bytes {
    let n = read.len().min(clamp_len(*left));
    *left -= n as u64;
    read.split_to(n).freeze()
}

fn clamp_len(left: u64) -> usize {
    usize::try_from(left).unwrap_or(usize::MAX)
}

/// A response's status, version and fields, and how its body is delimited.
struct ResponseHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// How a response body is delimited.
enum Framing {
    /// No body, or the body is over.
    Empty,
    /// `Content-Length`: this many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the target closes the connection.
    UntilClose,
}

/// Where a chunked body is.
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// The next final response head at the start of `read`, taken out (informational heads
/// other than 101 are taken out and passed over); `None` while incomplete.
fn next_head(read: &mut BytesMut) -> Result<Option<ResponseHead>, Http1Error> {
    while !read.is_empty() {
        match parse_head(read)? {
            Some(head) if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS => {}
            Some(head) => return Ok(Some(head)),
            None if read.len() > MAX_HEAD => return Err(Http1Error::Malformed("its head is over 64 KiB")),
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// Parses a response head at the start of `read`, taking it out; `None` while incomplete.
/// Field values share the head's bytes rather than being copied.
fn parse_head(read: &mut BytesMut) -> Result<Option<ResponseHead>, Http1Error> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let length =
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, read, &mut fields) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Http1Error::Malformed("it has over 128 header fields")),
            Err(_) => return Err(Http1Error::Malformed("its status line or a header field is invalid")),
        };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(Http1Error::Malformed("its status code is invalid"))?;
    let version = if response.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    // Where each field's name and value sit in the head, to slice them out once it is frozen.
    let start = read.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - start;
    let spans: SmallVec<[(usize, usize, usize, usize); 32]> = response
        .headers
        .iter()
        .map(|field| {
            let (name, value) = (offset(field.name.as_bytes()), offset(field.value));
            (name, name + field.name.len(), value, value + field.value.len())
        })
        .collect();
    let head = read.split_to(length).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for &(name_start, name_end, value_start, value_end) in &spans {
        let name = HeaderName::from_bytes(&head[name_start..name_end])
            .map_err(|_| Http1Error::Malformed("a header field name is invalid"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| Http1Error::Malformed("a header field value is invalid"))?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead { status, version, headers }))
}

fn trailer_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, Http1Error> {
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Http1Error::Malformed("a trailer field name is invalid"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| Http1Error::Malformed("a trailer field value is invalid"))?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

/// Whether a comma-separated field (all its lines) lists `token`, in any case.
fn lists(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// How the body of a response with `head` (to a `HEAD` request or not) is delimited, and
/// whether the connection can carry another exchange after it. Takes `Content-Length` out
/// of a response that also has `Transfer-Encoding` (RFC 9112, 6.3), so that it cannot
/// mislead whoever forwards the response.
fn framing(head: &mut ResponseHead, head_request: bool) -> Result<(Framing, bool), Http1Error> {
    let mut keep_alive = head.version == Version::HTTP_11 && !lists(&head.headers, &CONNECTION, "close");
    let status = head.status;
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, keep_alive));
    }
    let last_coding = head.headers.get_all(TRANSFER_ENCODING).iter().next_back().map(|codings| {
        codings
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    });
    if let Some(chunked) = last_coding {
        if head.version == Version::HTTP_10 {
            return Err(Http1Error::Malformed("an HTTP/1.0 response has Transfer-Encoding"));
        }
        if head.headers.remove(CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        return Ok(if chunked { (Framing::Chunked(Chunk::Size), keep_alive) } else { (Framing::UntilClose, false) });
    }
    let mut length = None;
    for value in head.headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            let parsed = (!item.is_empty() && item.len() <= 19 && item.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(item).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or(Http1Error::Malformed("its Content-Length is invalid"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(Http1Error::Malformed("its Content-Length values differ"));
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Empty, keep_alive),
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::UntilClose, false),
    })
}

/// A response as [`read_response`] read it.
#[derive(Debug, PartialEq)]
pub struct ReadResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    /// Whether the connection could carry another exchange after it.
    pub reusable: bool,
    /// Bytes past the response.
    pub unread: usize,
}

/// Reads a response from `wire` with the parsing and framing of [`exchange`], the bytes
/// arriving `piece` at a time, without a socket (for the fuzz target and tests: however the
/// bytes are cut, the outcome must be the same).
pub fn read_response(wire: &[u8], piece: usize, head_request: bool) -> Result<ReadResponse, Http1Error> {
    let mut pieces = wire.chunks(piece.max(1));
    let mut read = BytesMut::new();
    let mut head = loop {
        if let Some(head) = next_head(&mut read)? {
            break head;
        }
        match pieces.next() {
            Some(piece) => read.extend_from_slice(piece),
            None if wire.is_empty() => return Err(Http1Error::ClosedBeforeAnswer),
            None => return Err(Http1Error::ClosedMidResponse),
        }
    };
    let (mut framing, keep_alive) = framing(&mut head, head_request)?;
    let (mut body, mut trailers) = (Vec::new(), None);
    loop {
        match framing.decode(&mut read)? {
            Decoded::Frame(frame) => match frame.into_data() {
                Ok(data) => body.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Decoded::End => break,
            Decoded::More(_) => match pieces.next() {
                Some(piece) => read.extend_from_slice(piece),
                None => {
                    framing.closed()?;
                    break;
                }
            },
        }
    }
    let unread = read.len() + pieces.map(<[u8]>::len).sum::<usize>();
    let reusable = keep_alive && unread == 0 && head.status != StatusCode::SWITCHING_PROTOCOLS;
    let ResponseHead { status, version, headers } = head;
    Ok(ReadResponse { status, version, headers, body, trailers, reusable, unread })
}

/// The request on its way out: its head, then its body as the body yields it.
struct Upload {
    /// Bytes to write, in order: the head; each piece of the body (in chunked framing with
    /// its size line and CRLF); the last chunk.
    queued: VecDeque<Bytes>,
    body: Option<RequestBody>,
    chunked: bool,
    /// Whether any byte has been written.
    written: bool,
}

impl Upload {
    /// Serializes the head of `request` (origin form, its body framed by its length when
    /// known, chunked otherwise) and takes its body; a request without a body is left whole.
    fn new(request: &mut Request<RequestBody>) -> Upload {
        let body = request.body();
        let length = if body.is_end_stream() { Some(0) } else { body.size_hint().exact() };
        let method = request.method().clone();
        let headers = request.headers_mut();
        headers.remove(TRANSFER_ENCODING);
        let chunked = match length {
            // A method whose requests have no defined body semantics gets no framing.
            Some(0)
                if matches!(method, Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT)
                    && !headers.contains_key(CONTENT_LENGTH) =>
            {
                false
            }
            Some(n) => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
                false
            }
            None => {
                headers.remove(CONTENT_LENGTH);
                headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
                true
            }
        };
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let fields: usize = request.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        let mut head = Vec::with_capacity(method.as_str().len() + target.len() + fields + 16);
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in request.headers() {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let body = (length != Some(0)).then(|| std::mem::replace(request.body_mut(), RequestBody::empty()));
        Upload { queued: VecDeque::from([Bytes::from(head)]), body, chunked, written: false }
    }

    /// Writes what is queued and what the body yields, until the body has ended and all of
    /// it is written and flushed.
    fn poll_send(&mut self, io: &mut UpstreamIo, cx: &mut Context<'_>) -> Poll<Result<(), Http1Error>> {
        loop {
            let mut body_waits = false;
            while self.queued.len() < MAX_QUEUED {
                let Some(body) = self.body.as_mut() else { break };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => {
                        body_waits = true;
                        break;
                    }
                    Poll::Ready(frame) => self.queue(frame)?,
                }
            }
            if self.queued.is_empty() {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                return if body_waits { Poll::Pending } else { Poll::Ready(Ok(())) };
            }
            let mut slices = [io::IoSlice::new(&[]); MAX_QUEUED];
            let count = self.queued.len().min(MAX_QUEUED);
            for (slice, bytes) in slices.iter_mut().zip(self.queued.iter()) {
                *slice = io::IoSlice::new(bytes);
            }
            let mut written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(Http1Error::Io(io::ErrorKind::WriteZero.into())));
            }
            self.written = true;
            while written > 0 {
                let Some(front) = self.queued.front_mut() else { break };
                if written >= front.len() {
                    written -= front.len();
                    self.queued.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
    }

    /// Queues what the body yielded, framed.
    fn queue(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>) -> Result<(), Http1Error> {
        match frame {
            None => {
                self.body = None;
                if self.chunked {
                    self.queued.push_back(Bytes::from_static(b"0\r\n\r\n"));
                }
            }
            Some(Err(e)) => {
                self.body = None;
                return Err(Http1Error::RequestBody(e));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) if self.chunked => {
                    self.queued.push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                    self.queued.push_back(data);
                    self.queued.push_back(Bytes::from_static(b"\r\n"));
                }
                Ok(data) => self.queued.push_back(data),
                Err(frame) => {
                    // Trailers end the body; only chunked framing can carry them.
                    if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                        let mut last = b"0\r\n".to_vec();
                        for (name, value) in &trailers {
                            last.extend_from_slice(name.as_str().as_bytes());
                            last.extend_from_slice(b": ");
                            last.extend_from_slice(value.as_bytes());
                            last.extend_from_slice(b"\r\n");
                        }
                        last.extend_from_slice(b"\r\n");
                        self.queued.push_back(Bytes::from(last));
                        self.body = None;
                    }
                }
            },
        }
        Ok(())
    }
}

/// Sends `request` (its URI in origin form or absolute; its `Host` set) on `connection` and
/// reads the response head. The body of the response reads from the connection.
pub async fn exchange(
    mut connection: Box<Http1Connection>,
    mut request: Request<RequestBody>,
) -> Result<Response<ResponseStream>, ExchangeFailure> {
    let head_request = request.method() == Method::HEAD;
    let mut upload = Upload::new(&mut request);
    // A request without a body stays whole, to be sent again if the connection turns out
    // closed; one with a body is not needed any more.
    let mut kept = upload.body.is_none().then_some(request);
    let mut sending = true;
    let mut write_error = None;
    let mut answered = false;
    let head = std::future::poll_fn(|cx| {
        if sending {
            match upload.poll_send(&mut connection.io, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => sending = false,
                // The client's body failed: no answer can come to a request cut short.
                Poll::Ready(Err(e @ Http1Error::RequestBody(_))) => return Poll::Ready(Err(e)),
                // The target may have answered and stopped reading: look for its answer.
                Poll::Ready(Err(e)) => {
                    sending = false;
                    write_error = Some(e);
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
            let request = kept.take().map(Box::new);
            return Err(ExchangeFailure::Unanswered { request, written: upload.written, error });
        }
        Err(e) => return Err(ExchangeFailure::Failed(e)),
    };
    drop(kept);
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
        Some(UpgradedUpstream { io, read: read.freeze(), _open })
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

/// An upstream connection after `101 Switching Protocols`: the bytes the target sent past
/// the head come first, then the socket's.
pub struct UpgradedUpstream {
    io: UpstreamIo,
    read: Bytes,
    _open: OpenConnection,
}

impl AsyncRead for UpgradedUpstream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpgradedUpstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A target on loopback that serves one connection with `serve`; and a connection to it.
    async fn connect<F, Fut>(serve: F) -> Box<Http1Connection>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(stream).await;
        });
        let tcp = TcpStream::connect(address).await.unwrap();
        let open = OpenConnection::count(Arc::new(AtomicU32::new(0)), metrics::gauge!("test_open"));
        Http1Connection::new(UpstreamIo::Plain(tcp), open)
    }

    /// Reads one request head (and a `Content-Length` body) off `stream`; the text of both.
    async fn read_request(stream: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            seen.push(byte[0]);
        }
        let text = String::from_utf8(seen).unwrap();
        let length = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        text + std::str::from_utf8(&body).unwrap()
    }

    fn get(path: &str) -> Request<RequestBody> {
        let mut request = Request::new(RequestBody::empty());
        *request.uri_mut() = format!("http://target.test{path}").parse().unwrap();
        request.headers_mut().insert(http::header::HOST, HeaderValue::from_static("target.test"));
        request
    }

    fn answered(result: Result<Response<ResponseStream>, ExchangeFailure>) -> Response<ResponseStream> {
        match result {
            Ok(response) => response,
            Err(ExchangeFailure::Failed(e)) => panic!("failed: {e}"),
            Err(ExchangeFailure::Unanswered { error, .. }) => panic!("unanswered: {error}"),
        }
    }

    fn failure(result: Result<Response<ResponseStream>, ExchangeFailure>) -> String {
        match result {
            Ok(response) => panic!("answered {}", response.status()),
            Err(ExchangeFailure::Failed(e) | ExchangeFailure::Unanswered { error: e, .. }) => e.to_string(),
        }
    }

    async fn body_of(response: &mut Response<ResponseStream>) -> Result<(Bytes, Option<HeaderMap>), Http1Error> {
        let collected = response.body_mut().collect().await?;
        let trailers = collected.trailers().cloned();
        Ok((collected.to_bytes(), trailers))
    }

    #[test]
    fn however_the_bytes_are_cut_a_response_reads_the_same() {
        let wires: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n1\r\n!\r\n0\r\nT: v\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
            b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncut",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcd\r\n",
        ];
        for wire in wires {
            let whole = format!("{:?}", read_response(wire, wire.len(), false));
            for piece in 1..wire.len() {
                assert_eq!(format!("{:?}", read_response(wire, piece, false)), whole, "{piece} at a time");
            }
        }
        let chunked = read_response(wires[1], 3, false).unwrap();
        assert_eq!((chunked.body.as_slice(), chunked.reusable), (&b"hello!"[..], true));
        assert_eq!(chunked.trailers.unwrap()["t"], "v");
        let extra = read_response(wires[2], 1, false).unwrap();
        assert_eq!((extra.status, extra.unread, extra.reusable), (StatusCode::OK, 5, false));
        assert!(!read_response(wires[3], 4, false).unwrap().reusable);
        assert!(matches!(read_response(wires[4], 4, false), Err(Http1Error::ClosedMidResponse)));
        assert!(matches!(read_response(wires[5], 4, false), Err(Http1Error::Malformed(_))));
    }

    #[tokio::test]
    async fn a_length_delimited_response_arrives_in_pieces_and_the_connection_serves_again() {
        let connection = connect(|mut s| async move {
            let first = read_request(&mut s).await;
            assert!(first.starts_with("GET /one?x=1 HTTP/1.1\r\n"), "{first}");
            assert!(first.contains("host: target.test\r\n"), "{first}");
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Thing: a\r\nx-thing: b\r\n\r\nhello")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(b" world").await.unwrap();
            let second = read_request(&mut s).await;
            assert!(second.starts_with("GET /two HTTP/1.1\r\n"), "{second}");
            s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let mut response = answered(exchange(connection, get("/one?x=1")).await);
        assert_eq!(response.status(), StatusCode::OK);
        let things: Vec<_> = response.headers().get_all("x-thing").iter().collect();
        assert_eq!(things, ["a", "b"]);
        assert_eq!(response.body().size_hint().exact(), Some(11));
        assert_eq!(body_of(&mut response).await.unwrap().0, "hello world");
        let mut connection = response.body_mut().reusable_connection().expect("the connection is reusable");
        // An idle connection holds no buffer: the bytes it read live on in the response only.
        assert_eq!(connection.read.capacity(), 0);
        assert!(connection.is_reusable());
        let mut response = answered(exchange(connection, get("/two")).await);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.body().is_end_stream());
        assert!(response.body_mut().reusable_connection().is_some());
    }

    #[tokio::test]
    async fn a_chunked_response_sent_byte_by_byte_is_decoded_with_its_trailers() {
        let connection = connect(|mut s| async move {
            read_request(&mut s).await;
            let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nChecksum: abc\r\n\r\n";
            for byte in wire {
                s.write_all(&[*byte]).await.unwrap();
                s.flush().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let mut response = answered(exchange(connection, get("/")).await);
        let (body, trailers) = body_of(&mut response).await.unwrap();
        assert_eq!(body, "hello world");
        assert_eq!(trailers.unwrap()["checksum"], "abc");
        assert!(response.body_mut().reusable_connection().is_some());
    }

    #[tokio::test]
    async fn informational_answers_are_passed_over() {
        let connection = connect(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let mut response = answered(exchange(connection, get("/")).await);
        assert_eq!(response.status(), StatusCode::CREATED);
        assert!(!response.headers().contains_key("link"));
        assert_eq!(body_of(&mut response).await.unwrap().0, "ok");
    }

    #[tokio::test]
    async fn a_head_answer_has_no_body_whatever_its_length_says() {
        let connection = connect(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let mut request = get("/");
        *request.method_mut() = Method::HEAD;
        let mut response = answered(exchange(connection, request).await);
        assert_eq!(response.headers()["content-length"], "1000");
        assert!(response.body().is_end_stream());
        assert!(response.body_mut().reusable_connection().is_some());
    }

    #[tokio::test]
    async fn a_body_is_framed_by_its_length_and_the_length_of_a_bodyless_post_is_zero() {
        let connection = connect(|mut s| async move {
            let first = read_request(&mut s).await;
            assert!(first.starts_with("POST /a HTTP/1.1\r\n"), "{first}");
            assert!(first.contains("content-length: 7\r\n"), "{first}");
            assert!(!first.contains("transfer-encoding"), "{first}");
            assert!(first.ends_with("\r\n\r\npayload"), "{first}");
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            let second = read_request(&mut s).await;
            assert!(second.contains("content-length: 0\r\n"), "{second}");
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            let third = read_request(&mut s).await;
            assert!(!third.contains("content-length"), "a GET without a body has no framing: {third}");
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let post = |body: RequestBody| {
            let mut request = get("/a");
            *request.method_mut() = Method::POST;
            request.headers_mut().insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            *request.body_mut() = body;
            request
        };
        let mut response = answered(exchange(connection, post(RequestBody::buffered(Bytes::from("payload")))).await);
        let connection = response.body_mut().reusable_connection().unwrap();
        let mut response = answered(exchange(connection, post(RequestBody::empty())).await);
        let connection = response.body_mut().reusable_connection().unwrap();
        let response = answered(exchange(connection, get("/")).await);
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn conflicting_lengths_are_refused() {
        let connection = connect(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!").await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        assert!(failure(exchange(connection, get("/")).await).contains("Content-Length values differ"));
    }

    #[tokio::test]
    async fn transfer_encoding_wins_over_a_length_which_is_taken_out_and_the_connection_closes() {
        let connection = connect(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        let mut response = answered(exchange(connection, get("/")).await);
        assert!(!response.headers().contains_key("content-length"));
        assert_eq!(body_of(&mut response).await.unwrap().0, "ok");
        assert!(response.body_mut().reusable_connection().is_none());
    }

    #[tokio::test]
    async fn a_body_until_close_is_read_to_the_end_and_the_connection_is_not_kept() {
        let connection = connect(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\nall of it").await.unwrap();
        })
        .await;
        let mut response = answered(exchange(connection, get("/")).await);
        assert_eq!(response.version(), Version::HTTP_10);
        assert_eq!(body_of(&mut response).await.unwrap().0, "all of it");
        assert!(response.body_mut().reusable_connection().is_none());
    }

    #[tokio::test]
    async fn a_response_cut_short_fails_its_body() {
        let connection = connect(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort").await.unwrap();
        })
        .await;
        let mut response = answered(exchange(connection, get("/")).await);
        let error = body_of(&mut response).await.unwrap_err();
        assert!(matches!(error, Http1Error::ClosedMidResponse), "{error}");
        assert!(response.body_mut().reusable_connection().is_none());
    }

    #[tokio::test]
    async fn malformed_chunks_fail_the_body() {
        for wire in [
            &b"2\r\nokX\r\n0\r\n\r\n"[..],
            b"zz\r\nok\r\n0\r\n\r\n",
            b";ext\r\nok\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            let connection = connect(move |mut s| async move {
                read_request(&mut s).await;
                s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
                s.write_all(wire).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            })
            .await;
            let mut response = answered(exchange(connection, get("/")).await);
            let error = body_of(&mut response).await.unwrap_err();
            assert!(matches!(error, Http1Error::Malformed(_)), "{}: {error}", String::from_utf8_lossy(wire));
        }
    }

    #[tokio::test]
    async fn an_endless_head_is_refused_at_its_limit() {
        let connection = connect(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
            let field = format!("x-filler: {}\r\n", "a".repeat(1000));
            for _ in 0..80 {
                if s.write_all(field.as_bytes()).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        assert!(failure(exchange(connection, get("/")).await).contains("over 64 KiB"));
    }

    #[tokio::test]
    async fn a_connection_closed_before_an_answer_gives_a_bodyless_request_back() {
        let connection = connect(|mut s| async move {
            read_request(&mut s).await;
        })
        .await;
        match exchange(connection, get("/again")).await {
            Err(ExchangeFailure::Unanswered { request: Some(request), written: true, error }) => {
                assert_eq!(request.uri().path(), "/again");
                assert!(matches!(error, Http1Error::ClosedBeforeAnswer), "{error}");
            }
            other => panic!("expected the request back, got {:?}", other.map(|r| r.status())),
        }
    }

    #[tokio::test]
    async fn an_idle_connection_the_target_closed_is_not_reused() {
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let connection = connect(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            drop(s);
            let _ = closed_tx.send(());
        })
        .await;
        let mut response = answered(exchange(connection, get("/")).await);
        let mut connection = response.body_mut().reusable_connection().unwrap();
        closed_rx.await.unwrap();
        // The runtime learns of the close once its driver has run.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!connection.is_reusable());
    }

    #[tokio::test]
    async fn an_upgrade_hands_over_the_socket_with_the_bytes_past_the_head() {
        let connection = connect(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nfirst")
                .await
                .unwrap();
            let mut echo = [0u8; 4];
            s.read_exact(&mut echo).await.unwrap();
            s.write_all(&echo).await.unwrap();
        })
        .await;
        let mut response = answered(exchange(connection, get("/socket")).await);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert!(response.body_mut().reusable_connection().is_none());
        let mut upstream = response.body_mut().upgraded().expect("an upgraded connection");
        let mut first = [0u8; 5];
        upstream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"first");
        upstream.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        upstream.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
    }
}
