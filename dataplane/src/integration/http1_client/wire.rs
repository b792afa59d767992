//! HTTP/1.1 responses as bytes: heads, framing and body decoding, without a socket.
//!
//! The connection in [`super`] reads bytes and asks [`next_head`] for a head and
//! [`Framing::decode`] (shared with the server, in [`crate::framing`]) for the body's next piece; [`read_response`] does the same over a byte
//! slice cut in pieces, which is how the fuzz target and the tests drive it.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, StatusCode, Version};
use smallvec::SmallVec;

use crate::framing::{Framing, FramingError, list_items, read_body, stated_length};
use crate::head_fields::FieldSpans;
use crate::hop_by_hop::is_hop_by_hop_name;

use super::Http1Error;

/// The longest response head (status line and header fields) read from a target.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
pub const MAX_FIELDS: usize = 128;

/// A response's status, version and fields, and how its body is delimited.
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// The message's fields. The hop-by-hop ones (and those `Connection` names) describe
    /// the connection to the target, which ends here: they are read into `framing` and left
    /// out, except in a `101`, whose upgrade the gateway carries on.
    pub headers: HeaderMap,
    pub framing: HeadFraming,
}

/// What a response head says about its body's delimiting and its connection, read from
/// the head's fields before the hop-by-hop ones are left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadFraming {
    /// `Connection` lists `close`.
    pub close: bool,
    /// With `Transfer-Encoding`: whether the last coding it names is `chunked`.
    pub chunked: Option<bool>,
    /// What `Content-Length` states, if the head has it.
    pub length: Option<Result<Option<u64>, FramingError>>,
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
    let mut spans = FieldSpans::default();
    spans.record(read, response.headers);
    let present = spans.framing();
    let head = read.split_to(length).freeze();
    let listed: SmallVec<[&[u8]; 4]> = match present.connection {
        true => spans.values(&head, b"connection").flat_map(list_items).collect(),
        false => SmallVec::new(),
    };
    let last_coding = present.transfer_encoding.then(|| spans.values(&head, b"transfer-encoding").last()).flatten();
    let framing = HeadFraming {
        close: listed.iter().any(|item| item.eq_ignore_ascii_case(b"close")),
        // The last item as written: a list ending in an empty item names no coding last.
        chunked: last_coding.map(|codings| {
            codings.rsplit(|&b| b == b',').next().is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        }),
        length: present.content_length.then(|| stated_length(spans.values(&head, b"content-length"))),
    };
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let hop_by_hop = |name: &[u8]| {
        !switching && (is_hop_by_hop_name(name) || listed.iter().any(|item| item.eq_ignore_ascii_case(name)))
    };
    // With room for what the gateway adds on the way back (the request id, CORS or rate
    // limit fields), so that adding them does not grow the map.
    let headers = spans.header_map(&head, 4, hop_by_hop).map_err(|invalid| Http1Error::Malformed(invalid.what()))?;
    Ok(Some(ResponseHead { status, version, headers, framing }))
}

/// How the body of a response with `head` (to a `HEAD` request or not) is delimited, and
/// whether the connection can carry another exchange after it. Takes `Content-Length` out
/// of a response that also has `Transfer-Encoding` (RFC 9112, 6.3), so that it cannot
/// mislead whoever forwards the response.
pub fn framing(head: &mut ResponseHead, head_request: bool) -> Result<(Framing, bool), Http1Error> {
    let stated = head.framing;
    let mut keep_alive = head.version == Version::HTTP_11 && !stated.close;
    let status = head.status;
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, keep_alive));
    }
    if let Some(chunked) = stated.chunked {
        if head.version == Version::HTTP_10 {
            return Err(Http1Error::Malformed("an HTTP/1.0 response has Transfer-Encoding"));
        }
        if stated.length.is_some() {
            head.headers.remove(CONTENT_LENGTH);
            keep_alive = false;
        }
        return Ok(if chunked { (Framing::CHUNKED, keep_alive) } else { (Framing::UntilClose, false) });
    }
    Ok(match stated.length.transpose()?.flatten() {
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
    let (body, trailers) = read_body(&mut framing, &mut read, &mut pieces)?;
    let unread = read.len() + pieces.map(<[u8]>::len).sum::<usize>();
    let reusable = keep_alive && unread == 0 && head.status != StatusCode::SWITCHING_PROTOCOLS;
    let ResponseHead { status, version, headers, .. } = head;
    Ok(ReadResponse { status, version, headers, body, trailers, reusable, unread })
}
