//! HTTP/1.1 message bodies on the wire, both ways, without a socket: how a body is
//! delimited (RFC 9112, section 6), taking its pieces out of the bytes read so far
//! ([`Framing::decode`]), and writing a head and a body's frames in that framing
//! ([`Outgoing`]).
//!
//! The gateway's HTTP/1.1 server reads client request bodies and writes responses with
//! these; its upstream client writes requests and reads response bodies with the same.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

/// The longest chunk-size line (with its extensions).
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The most trailer fields after a chunked body.
const MAX_TRAILERS: usize = 32;
/// The most bytes of trailer fields after a chunked body.
const MAX_TRAILER_BYTES: usize = 64 * 1024;
/// How much is read at once, at least.
pub const READ_SIZE: usize = 8 * 1024;
/// The most a single read asks for (a long body is read in pieces this large).
const MAX_READ_SIZE: usize = 64 * 1024;
/// The most pieces queued before they are written (one vectored write takes them all, after
/// the head).
const MAX_QUEUED: usize = 8;
/// The most pieces one body frame queues: in chunked framing its size line, its data and
/// the CRLF after it.
const PIECES_PER_FRAME: usize = 3;

/// Errors a body's frames can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("{0}")]
    Malformed(&'static str),
    /// The connection closed before the body's end.
    #[error("the connection closed in the middle of the body")]
    Truncated,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body, or the body is over.
    Empty,
    /// `Content-Length`: this many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// What a body's framing made of the bytes read so far.
pub enum Decoded {
    /// A piece of the body, or its trailers.
    Frame(Frame<Bytes>),
    /// The body is over.
    End,
    /// More bytes are needed (about this many would help).
    More(usize),
}

impl Framing {
    /// A chunked body, from its first chunk-size line.
    pub const CHUNKED: Framing = Framing::Chunked(Chunk::Size);

    /// Takes the next piece of the body out of `read`. Knows nothing of sockets: the
    /// connection reads more when told to, and the fuzz targets feed bytes in pieces.
    pub fn decode(&mut self, read: &mut BytesMut) -> Result<Decoded, FramingError> {
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
                        return Err(FramingError::Malformed("a chunk-size line is over 4 KiB"));
                    }
                    Ok(httparse::Status::Complete(_)) | Err(_) => {
                        return Err(FramingError::Malformed("a chunk size is invalid"));
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
                        return Err(FramingError::Malformed("a chunk's data is not followed by CRLF"));
                    }
                    read.advance(2);
                    *self = Framing::CHUNKED;
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
                        Ok(httparse::Status::Partial) if read.len() <= MAX_TRAILER_BYTES => {
                            return Ok(Decoded::More(READ_SIZE));
                        }
                        Ok(httparse::Status::Partial) | Err(_) => {
                            return Err(FramingError::Malformed("the trailer fields are invalid"));
                        }
                    }
                }
            }
        }
    }

    /// The sender closed the connection: the end of a body read until then, an error for
    /// any other body not over yet.
    pub fn closed(&mut self) -> Result<(), FramingError> {
        match std::mem::replace(self, Framing::Empty) {
            Framing::Empty | Framing::UntilClose => Ok(()),
            Framing::Length(_) | Framing::Chunked(_) => Err(FramingError::Truncated),
        }
    }
}

/// Reads more from `io` into `read`, with room for at least `want` bytes (within
/// [`READ_SIZE`]..=64 KiB). Ready with the count read, 0 at end of stream.
pub fn poll_read_more<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    read: &mut BytesMut,
    want: usize,
) -> Poll<io::Result<usize>> {
    let room = want.clamp(READ_SIZE, MAX_READ_SIZE);
    if read.capacity() - read.len() < room / 2 {
        read.reserve(room);
    }
    poll_read_buf(Pin::new(io), cx, read)
}

/// Reads a body delimited by `framing` from `read`, adding `pieces` as it needs them (the
/// end of `pieces` is the connection closing): its bytes and its trailers. The sans-IO
/// readers of whole messages (fuzz targets, tests) use it.
pub fn read_body<'p>(
    framing: &mut Framing,
    read: &mut BytesMut,
    pieces: &mut impl Iterator<Item = &'p [u8]>,
) -> Result<(Vec<u8>, Option<HeaderMap>), FramingError> {
    let (mut body, mut trailers) = (Vec::new(), None);
    loop {
        match framing.decode(read)? {
            Decoded::Frame(frame) => match frame.into_data() {
                Ok(data) => body.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Decoded::End => return Ok((body, trailers)),
            Decoded::More(_) => match pieces.next() {
                Some(piece) => read.extend_from_slice(piece),
                None => {
                    framing.closed()?;
                    return Ok((body, trailers));
                }
            },
        }
    }
}

/// Up to `left` bytes of `read`, counted off `left`.
fn take(read: &mut BytesMut, left: &mut u64) -> Bytes {
    let n = read.len().min(clamp_len(*left));
    *left -= n as u64;
    read.split_to(n).freeze()
}

pub fn clamp_len(left: u64) -> usize {
    usize::try_from(left).unwrap_or(usize::MAX)
}

fn trailer_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, FramingError> {
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| FramingError::Malformed("a trailer field name is invalid"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| FramingError::Malformed("a trailer field value is invalid"))?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

/// Whether a comma-separated field (all its lines) lists `token`, in any case.
pub fn lists(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| value_lists(v, token))
}

/// Whether `value`, a comma-separated list, has `token` (ASCII case-insensitive).
pub fn value_lists(value: &HeaderValue, token: &str) -> bool {
    list_items(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The items of a comma-separated field value, trimmed, the empty ones left out.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|item| !item.is_empty())
}

/// The one length all `Content-Length` values (lines and comma-separated items) state;
/// `Ok(None)` without any, an error when one is not a number or two differ.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, FramingError> {
    stated_length(headers.get_all(http::header::CONTENT_LENGTH).iter().map(HeaderValue::as_bytes))
}

/// [`content_length`] of the `Content-Length` lines `values`, read from a head.
pub fn stated_length<'v>(values: impl Iterator<Item = &'v [u8]>) -> Result<Option<u64>, FramingError> {
    let mut length = None;
    for value in values {
        for item in value.split(|&b| b == b',') {
            let item = item.trim_ascii();
            let parsed = (!item.is_empty() && item.len() <= 19 && item.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(item).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or(FramingError::Malformed("its Content-Length is invalid"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(FramingError::Malformed("its Content-Length values differ"));
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// Writes `fields` as a head's (or trailers') lines, and the empty line that ends them.
pub fn write_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes one field line.
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Why writing a message failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connection error")]
    Io(#[from] io::Error),
    #[error("the body failed")]
    Body(#[source] BoxError),
}

/// A message on its way out: its head, then its body's frames as the body yields them,
/// in `Content-Length` framing (the body's exact length was written in the head) or chunked.
pub struct Outgoing<B> {
    /// The head, written first; kept as it was made rather than turned into `Bytes`, which
    /// would cost an allocation per message.
    head: Vec<u8>,
    /// How much of the head is written.
    head_written: usize,
    /// Bytes to write after the head, in order: each piece of the body (in chunked framing
    /// with its size line and CRLF); the last chunk.
    queued: VecDeque<Bytes>,
    body: Option<B>,
    chunked: bool,
    /// What is left of the length the head announced (`Content-Length`): a body that
    /// yields more or less fails, rather than leaving the peer to read the next message
    /// from the wrong place.
    remaining: Option<u64>,
    /// Why the body failed, once it has: what was queued before is written first.
    failed: Option<BoxError>,
    /// Whether any byte has been written.
    pub written: bool,
}

impl<B> Outgoing<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// `head` (ending with its empty line), then `body` (none: the head alone), chunked or
    /// not; not chunked, a body whose length is known must yield exactly that many bytes.
    pub fn new(head: Vec<u8>, body: Option<B>, chunked: bool) -> Self {
        let remaining = if chunked { None } else { body.as_ref().and_then(|b| b.size_hint().exact()) };
        Outgoing {
            head,
            head_written: 0,
            queued: VecDeque::new(),
            body,
            chunked,
            remaining,
            failed: None,
            written: false,
        }
    }

    /// Whether the body has yet to yield frames.
    pub fn has_body(&self) -> bool {
        self.body.is_some()
    }

    /// Takes the body back, unsent.
    pub fn take_body(&mut self) -> Option<B> {
        self.body.take()
    }

    /// Writes what is queued and what the body yields, until the body has ended and all of
    /// it is written and flushed.
    pub fn poll_send<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        loop {
            let mut body_waits = false;
            // A frame may queue several pieces: the fill goes on only while all of one more
            // frame's pieces fit in the write below.
            while self.queued.len() + PIECES_PER_FRAME <= MAX_QUEUED {
                let Some(body) = self.body.as_mut() else { break };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => {
                        body_waits = true;
                        break;
                    }
                    Poll::Ready(frame) => self.queue(frame),
                }
            }
            let head = &self.head[self.head_written..];
            if head.is_empty() && self.queued.is_empty() {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                if let Some(e) = self.failed.take() {
                    return Poll::Ready(Err(SendError::Body(e)));
                }
                return if body_waits { Poll::Pending } else { Poll::Ready(Ok(())) };
            }
            let mut slices = [io::IoSlice::new(&[]); MAX_QUEUED + 1];
            let pieces = std::iter::once(head).filter(|h| !h.is_empty()).chain(self.queued.iter().map(|b| &b[..]));
            let mut count = 0;
            for (slice, piece) in slices.iter_mut().zip(pieces) {
                *slice = io::IoSlice::new(piece);
                count += 1;
            }
            let mut written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(SendError::Io(io::ErrorKind::WriteZero.into())));
            }
            self.written = true;
            let of_head = written.min(head.len());
            self.head_written += of_head;
            written -= of_head;
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

    /// Fails the body: what is queued is still written, and then the failure returned.
    fn fail(&mut self, error: BoxError) {
        self.body = None;
        self.failed = Some(error);
    }

    /// Queues what the body yielded, framed.
    fn queue(&mut self, frame: Option<Result<Frame<Bytes>, B::Error>>) {
        match frame {
            None if self.remaining.is_some_and(|left| left > 0) => {
                self.fail("the body is shorter than its announced length".into());
            }
            None => {
                self.body = None;
                if self.chunked {
                    self.queued.push_back(Bytes::from_static(b"0\r\n\r\n"));
                }
            }
            Some(Err(e)) => self.fail(e.into()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) if self.remaining.is_some_and(|left| data.len() as u64 > left) => {
                    self.fail("the body is longer than its announced length".into());
                }
                Ok(data) if self.chunked => {
                    self.queued.push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                    self.queued.push_back(data);
                    self.queued.push_back(Bytes::from_static(b"\r\n"));
                }
                Ok(data) => {
                    if let Some(left) = &mut self.remaining {
                        *left -= data.len() as u64;
                    }
                    self.queued.push_back(data);
                }
                Err(frame) => {
                    // Trailers end the body; only chunked framing can carry them.
                    if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                        let mut last = b"0\r\n".to_vec();
                        write_fields(&mut last, &trailers);
                        self.queued.push_back(Bytes::from(last));
                        self.body = None;
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that announces `announced` bytes and yields `chunks`.
    struct Announced {
        announced: u64,
        chunks: VecDeque<Bytes>,
    }

    impl Body for Announced {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.announced)
        }
    }

    /// A peer that takes at most `per_write` bytes per write, whatever it is offered.
    struct Trickle {
        written: Vec<u8>,
        per_write: usize,
    }

    impl Trickle {
        fn new(per_write: usize) -> Trickle {
            Trickle { written: Vec::new(), per_write }
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let taken = buf.len().min(self.per_write);
            self.written.extend_from_slice(&buf[..taken]);
            Poll::Ready(Ok(taken))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn send_to<W: AsyncWrite + Unpin>(
        written: &mut W,
        announced: u64,
        chunks: &[&'static [u8]],
        chunked: bool,
    ) -> Result<(), SendError> {
        send_pieces(written, announced, chunks.iter().map(|c| Bytes::from_static(c)).collect(), chunked)
    }

    fn send_pieces<W: AsyncWrite + Unpin>(
        written: &mut W,
        announced: u64,
        chunks: VecDeque<Bytes>,
        chunked: bool,
    ) -> Result<(), SendError> {
        let body = Announced { announced, chunks };
        let mut out = Outgoing::new(b"HEAD\r\n\r\n".to_vec(), Some(body), chunked);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match out.poll_send(written, &mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("these writers never wait"),
        }
    }

    fn send(announced: u64, chunks: &[&'static [u8]], chunked: bool) -> (Result<(), SendError>, Vec<u8>) {
        let mut written = Vec::new();
        let result = send_to(&mut written, announced, chunks, chunked);
        (result, written)
    }

    #[test]
    fn short_writes_resume_where_they_stopped() {
        let mut trickle = Trickle::new(3);
        assert!(send_to(&mut trickle, 5, &[b"he", b"llo"], false).is_ok());
        assert_eq!(trickle.written, b"HEAD\r\n\r\nhello");
        let mut trickle = Trickle::new(3);
        assert!(send_to(&mut trickle, 0, &[b"abcd", b"e"], true).is_ok());
        assert_eq!(trickle.written, b"HEAD\r\n\r\n4\r\nabcd\r\n1\r\ne\r\n0\r\n\r\n");
    }

    #[test]
    fn a_chunked_body_with_many_pieces_ready_at_once_is_written_whole() {
        // Each chunk queues three pieces (size line, data, CRLF): a body with many chunks
        // ready at once queued more pieces than one vectored write had room for.
        let pieces: Vec<&'static [u8]> = vec![b"a", b"b", b"c", b"d", b"e", b"f", b"g"];
        let (sent, written) = send(0, &pieces, true);
        assert!(sent.is_ok());
        let expected: String = "HEAD\r\n\r\n".to_string()
            + &["a", "b", "c", "d", "e", "f", "g"].map(|p| format!("1\r\n{p}\r\n")).concat()
            + "0\r\n\r\n";
        assert_eq!(String::from_utf8_lossy(&written), expected);
        // And through a peer that takes three bytes at a time.
        let mut trickle = Trickle::new(3);
        assert!(send_to(&mut trickle, 0, &pieces, true).is_ok());
        assert_eq!(String::from_utf8_lossy(&trickle.written), expected);
    }

    proptest::proptest! {
        /// Whatever pieces a body yields and however little the peer takes per write, what
        /// is written is the head and the body in its framing, or the body is refused for
        /// a length other than the one announced.
        #[test]
        fn what_is_written_is_the_body_in_its_framing(
            pieces in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..30),
            chunked in proptest::prelude::any::<bool>(),
            per_write in 1usize..64,
            off_by in -3i64..3,
        ) {
            let total: u64 = pieces.iter().map(|p| p.len() as u64).sum();
            let announced = total.saturating_add_signed(off_by);
            let mut peer = Trickle::new(per_write);
            let body = pieces.iter().map(|p| Bytes::from(p.clone())).collect();
            let result = send_pieces(&mut peer, announced, body, chunked);
            let mut expected = b"HEAD\r\n\r\n".to_vec();
            if chunked {
                for piece in pieces.iter().filter(|p| !p.is_empty()) {
                    expected.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    expected.extend_from_slice(piece);
                    expected.extend_from_slice(b"\r\n");
                }
                expected.extend_from_slice(b"0\r\n\r\n");
            } else if announced == total {
                pieces.iter().for_each(|piece| expected.extend_from_slice(piece));
            } else {
                proptest::prop_assert!(matches!(result, Err(SendError::Body(_))));
                return Ok(());
            }
            proptest::prop_assert!(result.is_ok());
            proptest::prop_assert_eq!(peer.written, expected);
        }
    }

    #[test]
    fn a_body_must_be_as_long_as_it_announced() {
        let (whole, written) = send(5, &[b"he", b"llo"], false);
        assert!(whole.is_ok());
        assert_eq!(written, b"HEAD\r\n\r\nhello");
        let (short, _) = send(5, &[b"he"], false);
        assert!(matches!(short, Err(SendError::Body(_))));
        let (long, _) = send(5, &[b"hello", b"!"], false);
        assert!(matches!(long, Err(SendError::Body(_))));
        // Chunked, the length is the chunks'.
        let (chunked, written) = send(99, &[b"ab"], true);
        assert!(chunked.is_ok());
        assert_eq!(written, b"HEAD\r\n\r\n2\r\nab\r\n0\r\n\r\n");
    }
}
