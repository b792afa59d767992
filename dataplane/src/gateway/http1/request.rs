//! Client request heads, parsed from the bytes read so far without a socket: the request
//! line and fields into an [`http::Request`], and what the connection needs to know of them
//! (how the body is delimited, whether the connection stays open, whether the client waits
//! for `100 Continue`).
//!
//! Strict where a lenient reading lets two parsers disagree about where a request ends
//! (request smuggling): `Transfer-Encoding` other than a final `chunked`, or beside a
//! `Content-Length`, or in HTTP/1.0, is refused, as are differing `Content-Length` values,
//! folded field lines and bytes a field value may not hold.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};

use crate::framing::{Framing, FramingError, content_length, lists, read_body};
use crate::head_fields::{FieldSpans, FramingFields};

/// How many fields a head is parsed into without a heap allocation; a limit above it
/// parses again into room for the limit.
const INLINE_FIELDS: usize = 128;

/// The bounds of a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// The most bytes of a head (request line and fields).
    pub max_bytes: usize,
    /// The most fields.
    pub max_fields: usize,
}

/// A request head and what it says of the connection.
#[derive(Debug)]
pub struct RequestHead {
    pub request: Request<()>,
    pub framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
}

/// Why a head is refused: the status to answer with, and what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what}")]
pub struct HeadError {
    pub status: StatusCode,
    pub what: &'static str,
}

impl HeadError {
    fn bad(what: &'static str) -> Self {
        HeadError { status: StatusCode::BAD_REQUEST, what }
    }

    fn too_large(what: &'static str) -> Self {
        HeadError { status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, what }
    }
}

/// The request head at the start of `read`, taken out of it; `None` while it is incomplete.
/// Empty lines before a request line are passed over (RFC 9112, 2.2).
pub fn parse(read: &mut BytesMut, limits: HeadLimits) -> Result<Option<RequestHead>, HeadError> {
    let blank = read.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    if blank > 0 {
        let _ = read.split_to(blank);
    }
    if read.is_empty() {
        return Ok(None);
    }
    let mut spans = FieldSpans::default();
    let line = if limits.max_fields <= INLINE_FIELDS {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; INLINE_FIELDS];
        parse_into(read, &mut fields[..limits.max_fields], limits, &mut spans)?
    } else {
        let mut fields: Vec<MaybeUninit<httparse::Header<'_>>> = Vec::with_capacity(limits.max_fields);
        fields.resize_with(limits.max_fields, MaybeUninit::uninit);
        parse_into(read, &mut fields, limits, &mut spans)?
    };
    let Some(line) = line else { return Ok(None) };
    build(read, line, &spans).map(Some)
}

/// Whether the request line ends in an HTTP version (`HTTP/2.0`), one the parser does not
/// speak, rather than in something else.
fn names_a_version(read: &[u8]) -> bool {
    let line = read.split(|&b| b == b'\n').next().unwrap_or_default().trim_ascii_end();
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// Room in a request's header map for the fields the gateway adds before it goes upstream
/// (`Forwarded`, the `X-Forwarded-*` trio, the request id, a trace context), so that adding
/// them does not grow the map.
const ROOM_FOR_FORWARDING: usize = 8;

/// Where the request line's parts sit in the bytes read, and the head's length.
struct RequestLine {
    length: usize,
    method: (usize, usize),
    target: (usize, usize),
    version: Version,
}

fn parse_into<'b>(
    read: &'b BytesMut,
    fields: &mut [MaybeUninit<httparse::Header<'b>>],
    limits: HeadLimits,
    spans: &mut FieldSpans,
) -> Result<Option<RequestLine>, HeadError> {
    let mut request = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, read, fields);
    let length = match status {
        Ok(httparse::Status::Complete(length)) if length > limits.max_bytes => {
            return Err(HeadError::too_large("the request head is over the limit"));
        }
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if read.len() > limits.max_bytes => {
            return Err(HeadError::too_large("the request head is over the limit"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::too_large("the request has too many fields")),
        // What follows a bad version decides its status: wait for the whole request line.
        Err(httparse::Error::Version) if !read.contains(&b'\n') && read.len() <= limits.max_bytes => return Ok(None),
        Err(httparse::Error::Version) if names_a_version(read) => {
            return Err(HeadError { status: StatusCode::HTTP_VERSION_NOT_SUPPORTED, what: "the HTTP version" });
        }
        Err(_) => return Err(HeadError::bad("the request line or a header field is invalid")),
    };
    let start = read.as_ptr() as usize;
    let span = |s: &[u8]| {
        let at = s.as_ptr() as usize - start;
        (at, at + s.len())
    };
    let (Some(method), Some(target), Some(version)) = (request.method, request.path, request.version) else {
        return Err(HeadError::bad("the request line is incomplete"));
    };
    spans.record(read, request.headers);
    Ok(Some(RequestLine {
        length,
        method: span(method.as_bytes()),
        target: span(target.as_bytes()),
        version: if version == 1 { Version::HTTP_11 } else { Version::HTTP_10 },
    }))
}

/// Takes the head out of `read` and builds the request from it; field values and the
/// target share the head's bytes rather than being copied.
fn build(read: &mut BytesMut, line: RequestLine, fields: &FieldSpans) -> Result<RequestHead, HeadError> {
    let head: Bytes = read.split_to(line.length).freeze();
    let method = Method::from_bytes(&head[line.method.0..line.method.1])
        .map_err(|_| HeadError::bad("the request method is invalid"))?;
    let uri = Uri::from_maybe_shared(head.slice(line.target.0..line.target.1))
        .map_err(|_| HeadError::bad("the request target is invalid"))?;
    let headers =
        fields.header_map(&head, ROOM_FOR_FORWARDING, |_| false).map_err(|invalid| HeadError::bad(invalid.what()))?;
    let present = fields.framing();
    let version = line.version;
    let framing = body_framing(&headers, present, version)?;
    let keep_alive = match version {
        Version::HTTP_11 => !(present.connection && lists(&headers, &CONNECTION, "close")),
        _ => present.connection && lists(&headers, &CONNECTION, "keep-alive"),
    };
    let expect_continue = version == Version::HTTP_11
        && framing != Framing::Empty
        && headers.get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(RequestHead { request, framing, keep_alive, expect_continue })
}

/// How the body of a request with `headers` (of which `present` are there) is delimited
/// (RFC 9112, 6.3): chunked when `Transfer-Encoding` is `chunked`, by `Content-Length` when
/// that is given, empty otherwise.
fn body_framing(headers: &HeaderMap, present: FramingFields, version: Version) -> Result<Framing, HeadError> {
    if present.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(HeadError::bad("an HTTP/1.0 request has Transfer-Encoding"));
        }
        if present.content_length {
            return Err(HeadError::bad("the request has both Transfer-Encoding and Content-Length"));
        }
        let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
        let only_chunked = matches!((codings.next(), codings.next()),
            (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if !only_chunked {
            return Err(HeadError {
                status: StatusCode::NOT_IMPLEMENTED,
                what: "the only transfer coding accepted is chunked",
            });
        }
        return Ok(Framing::CHUNKED);
    }
    if !present.content_length {
        return Ok(Framing::Empty);
    }
    match content_length(headers) {
        Ok(None | Some(0)) => Ok(Framing::Empty),
        Ok(Some(n)) => Ok(Framing::Length(n)),
        Err(_) => Err(HeadError::bad("the request's Content-Length is invalid")),
    }
}

/// A request as [`read_requests`] read it, in a form that compares: its head's parts, its
/// body and trailers.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRequest {
    pub method: Method,
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

/// Why [`read_requests`] stopped before the end of its bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Stopped {
    Head(HeadError),
    Body(FramingError),
    /// The bytes ended inside a head.
    Incomplete,
}

/// Reads every request in `wire` with the server's parsing and framing, the bytes arriving
/// `piece` at a time, without a socket (for the fuzz target and the tests: however the
/// bytes are cut, the outcome must be the same). Stops at the first error, or where a
/// request closes the connection.
pub fn read_requests(wire: &[u8], piece: usize, limits: HeadLimits) -> (Vec<ReadRequest>, Option<Stopped>) {
    let mut pieces = wire.chunks(piece.max(1));
    let mut read = BytesMut::new();
    let mut requests = Vec::new();
    loop {
        let head = loop {
            match parse(&mut read, limits) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => return (requests, Some(Stopped::Head(e))),
            }
            match pieces.next() {
                Some(piece) => read.extend_from_slice(piece),
                None if read.is_empty() => return (requests, None),
                None => return (requests, Some(Stopped::Incomplete)),
            }
        };
        let RequestHead { request, mut framing, keep_alive, expect_continue } = head;
        let (body, trailers) = match read_body(&mut framing, &mut read, &mut pieces) {
            Ok(read) => read,
            Err(e) => return (requests, Some(Stopped::Body(e))),
        };
        let (parts, ()) = request.into_parts();
        requests.push(ReadRequest {
            method: parts.method,
            target: parts.uri.to_string(),
            version: parts.version,
            headers: parts.headers,
            keep_alive,
            expect_continue,
            body,
            trailers,
        });
        if !keep_alive {
            return (requests, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_bytes: 8192, max_fields: 20 };

    fn parse_all(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse(&mut BytesMut::from(text.as_bytes()), LIMITS)
    }

    fn status(text: &str) -> StatusCode {
        parse_all(text).expect_err(text).status
    }

    #[test]
    fn a_head_comes_out_whole_and_leaves_what_follows() {
        let mut read = BytesMut::from(&b"\r\nPOST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET"[..]);
        let head = parse(&mut read, LIMITS).unwrap().unwrap();
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri(), "/a?b=1");
        assert_eq!(head.request.headers()["host"], "x");
        assert_eq!(head.framing, Framing::Length(3));
        assert!(head.keep_alive && !head.expect_continue);
        assert_eq!(&read[..], b"abcGET");
        // Incomplete: nothing taken.
        let mut partial = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
        assert!(parse(&mut partial, LIMITS).unwrap().is_none());
        assert_eq!(partial.len(), 25);
    }

    #[test]
    fn keep_alive_and_expect_follow_the_version() {
        let close = parse_all("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").unwrap().unwrap();
        assert!(!close.keep_alive);
        let old = parse_all("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!old.keep_alive);
        let old_kept = parse_all("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().unwrap();
        assert!(old_kept.keep_alive);
        let expect =
            parse_all("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap().unwrap();
        assert!(expect.expect_continue);
        assert_eq!(expect.framing, Framing::CHUNKED);
        // Nothing to wait for without a body.
        let bodiless = parse_all("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").unwrap().unwrap();
        assert!(!bodiless.expect_continue);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let both = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(status(both), StatusCode::BAD_REQUEST);
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), StatusCode::BAD_REQUEST);
        for coding in ["gzip", "chunked, gzip", "gzip, chunked", "chunked, chunked"] {
            let text = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {coding}\r\n\r\n");
            assert_eq!(status(&text), StatusCode::NOT_IMPLEMENTED, "{coding}");
        }
        let twice = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(twice), StatusCode::NOT_IMPLEMENTED);
        // The same length said twice is one length.
        let same = parse_all("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
        assert_eq!(same.framing, Framing::Length(3));
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused() {
        assert_eq!(status("THIS IS NOT HTTP\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(status("GET / HTTP/1.1\r\nbad header line\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(status("GET / HTTP/1.1\r\nx: a\r\n folded\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(status("GET / HTTP/1.1\r\nx: a\x01b\r\n\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), StatusCode::HTTP_VERSION_NOT_SUPPORTED);
        let many: String = (0..21).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(status(&big), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // Over the limit before it is complete: refused without waiting for the rest.
        let endless = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(9000));
        assert_eq!(status(&endless), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // Room for more fields than fit inline.
        let wide = HeadLimits { max_bytes: 64 * 1024, max_fields: 300 };
        let fields: String = (0..250).map(|i| format!("x-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{fields}\r\n");
        let head = parse(&mut BytesMut::from(text.as_bytes()), wide).unwrap().unwrap();
        assert_eq!(head.request.headers().len(), 250);
    }

    #[test]
    fn absolute_and_asterisk_targets_parse() {
        let absolute = parse_all("GET http://a.test/x HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(absolute.request.uri().host(), Some("a.test"));
        let star = parse_all("OPTIONS * HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(star.request.uri(), "*");
    }

    #[test]
    fn how_the_bytes_are_cut_does_not_change_what_is_read() {
        let wire = b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc\
                     PUT /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2;x=y\r\nde\r\n1\r\nf\r\n0\r\nx-sum: 1\r\n\r\n\
                     GET /c HTTP/1.0\r\n\r\nGET /never HTTP/1.1\r\n\r\n";
        let (whole, stopped) = read_requests(wire, wire.len(), LIMITS);
        assert_eq!(stopped, None);
        let summary: Vec<(String, Vec<u8>)> = whole.iter().map(|r| (r.target.clone(), r.body.clone())).collect();
        assert_eq!(summary, [("/a".into(), b"abc".to_vec()), ("/b".into(), b"def".to_vec()), ("/c".into(), vec![])]);
        assert_eq!(whole[1].trailers.as_ref().unwrap()["x-sum"], "1");
        for piece in [1, 2, 5, 17] {
            assert_eq!(read_requests(wire, piece, LIMITS), (whole.clone(), None), "pieces of {piece}");
        }
        let (_, cut) = read_requests(b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nab", 3, LIMITS);
        assert_eq!(cut, Some(Stopped::Body(FramingError::Truncated)));
        // The status of an unknown version is the same however its line arrives.
        let newer = b"PUT / HTTP/2.1\r\ncontent-length: 1\r\n\r\nx";
        let version =
            Some(Stopped::Head(HeadError { status: StatusCode::HTTP_VERSION_NOT_SUPPORTED, what: "the HTTP version" }));
        assert_eq!(read_requests(newer, 1, LIMITS), (vec![], version.clone()));
        assert_eq!(read_requests(newer, newer.len(), LIMITS), (vec![], version));
        let (_, partial) = read_requests(b"GET / HTTP/1.1\r\nhost", 3, LIMITS);
        assert_eq!(partial, Some(Stopped::Incomplete));
    }
}
