//! HTTP/1.1 responses as bytes: heads, framing and body decoding, without a socket.
//!
//! The connection in [`super`] reads bytes and asks [`next_head`] for a head and
//! [`Framing::decode`] for the body's next piece; [`read_response`] does the same over a byte
//! slice cut in pieces, which is how the fuzz target and the tests drive it.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, StatusCode, Version};
use http_body::Frame;
use smallvec::SmallVec;

use super::Http1Error;

/// The longest response head (status line and header fields) read from a target.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
pub const MAX_FIELDS: usize = 128;
/// The longest chunk-size line (with its extensions).
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The most trailer fields after a chunked body.
const MAX_TRAILERS: usize = 32;
/// How much is read at once, at least.
pub const READ_SIZE: usize = 8 * 1024;

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
    /// Takes the next piece of the body out of `read`. Knows nothing of sockets: the
    /// connection reads more when told to, and the fuzz target feeds bytes in pieces.
    pub fn decode(&mut self, read: &mut BytesMut) -> Result<Decoded, Http1Error> {
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
    pub fn closed(&mut self) -> Result<(), Http1Error> {
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

pub fn clamp_len(left: u64) -> usize {
    usize::try_from(left).unwrap_or(usize::MAX)
}

/// A response's status, version and fields, and how its body is delimited.
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// How a response body is delimited.
pub enum Framing {
    /// No body, or the body is over.
    Empty,
    /// `Content-Length`: this many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the target closes the connection.
    UntilClose,
}

/// Where a chunked body is.
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// The next final response head at the start of `read`, taken out (informational heads
/// other than 101 are taken out and passed over); `None` while incomplete.
pub fn next_head(read: &mut BytesMut) -> Result<Option<ResponseHead>, Http1Error> {
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
pub fn framing(head: &mut ResponseHead, head_request: bool) -> Result<(Framing, bool), Http1Error> {
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

/// Reads a response from `wire` with the parsing and framing of [`super::exchange`], the bytes
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
