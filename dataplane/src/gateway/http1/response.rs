//! Response heads as bytes: the status line and fields a response goes out with, and how
//! its body is framed on the wire.
//!
//! A body whose length is known goes with `Content-Length`; any other body is chunked, or,
//! to an HTTP/1.0 client, delimited by closing the connection. Responses that have no body
//! (to `HEAD`, 1xx, 204, 304) keep the fields the handler gave them. The connection's own
//! fields are the server's to write: `Transfer-Encoding` and `Connection` from the handler
//! are replaced, and `Date` is added when the handler set none.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderValue, Response, StatusCode, Version};
use http_body::Body;

use crate::framing::{value_lists, write_field};

/// What the request said that shapes its response.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    pub head: bool,
    pub version: Version,
    /// Whether the connection may stay open after the response, as far as the request and
    /// the connection are concerned.
    pub keep_alive: bool,
}

/// A response head ready to write, and how its body follows it.
pub struct Head {
    pub bytes: Vec<u8>,
    /// Whether the body is written at all.
    pub has_body: bool,
    pub chunked: bool,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// Serializes the head of `response` to a request that `asked`, with the server's own
/// framing fields in place of the handler's: one pass over the fields, none of them changed
/// in the map.
pub fn head<B: Body>(response: &Response<B>, asked: Asked) -> Head {
    let status = response.status();
    let bodiless = asked.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = if response.body().is_end_stream() { Some(0) } else { response.body().size_hint().exact() };
    let headers = response.headers();
    let fields: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(fields + 128);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut close, mut dated) = (false, false);
    for (name, value) in headers {
        // The handler's framing gives way to the server's (a bodiless response keeps its length).
        let framing = *name == TRANSFER_ENCODING || *name == CONTENT_LENGTH && !bodiless;
        if *name == CONNECTION {
            close |= value_lists(value, "close");
        } else if !framing {
            dated |= *name == DATE;
            write_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let mut keep_alive = asked.keep_alive && !close;
    let mut chunked = false;
    if !bodiless {
        match length {
            Some(n) => write_field(&mut out, b"content-length", itoa::Buffer::new().format(n).as_bytes()),
            None if asked.version == Version::HTTP_11 => {
                write_field(&mut out, b"transfer-encoding", b"chunked");
                chunked = true;
            }
            None => keep_alive = false,
        }
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        write_field(&mut out, b"connection", b"upgrade");
    } else if !keep_alive {
        write_field(&mut out, b"connection", b"close");
    } else if asked.version == Version::HTTP_10 {
        write_field(&mut out, b"connection", b"keep-alive");
    }
    if !dated {
        write_field(&mut out, b"date", now().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Head { bytes: out, has_body: !bodiless && length != Some(0), chunked, keep_alive }
}

/// The answer to a request head that could not be read: `status`, no body, and the
/// connection closing.
pub fn refusal(status: StatusCode) -> Vec<u8> {
    let mut response = Response::new(http_body_util::Empty::<Bytes>::new());
    *response.status_mut() = status;
    head(&response, Asked { head: false, version: Version::HTTP_11, keep_alive: false }).bytes
}

/// The current time as an HTTP date, formatted once a second per thread.
fn now() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, value)| match value {
        Some(value) if *at == second => value.clone(),
        _ => {
            let fresh = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            *at = second;
            value.insert(fresh).clone()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::ResponseBody;

    const ASKED: Asked = Asked { head: false, version: Version::HTTP_11, keep_alive: true };

    fn written(head: &Head) -> String {
        String::from_utf8(head.bytes.clone()).unwrap()
    }

    #[test]
    fn a_known_length_goes_as_content_length_and_the_rest_chunked() {
        let mut full = Response::new(ResponseBody::full("hello"));
        full.headers_mut().insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        let head = head(&full, ASKED);
        let text = written(&head);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-length: 5\r\n") && !text.contains("transfer-encoding"), "{text}");
        assert!(text.contains("date: ") && text.ends_with("\r\n\r\n"), "{text}");
        assert!(head.has_body && !head.chunked && head.keep_alive);

        type Frames = Result<http_body::Frame<Bytes>, crate::framing::BoxError>;
        let stream = http_body_util::StreamBody::new(futures_util::stream::empty::<Frames>());
        let mut streamed = Response::new(ResponseBody::Wrapped(Box::pin(stream)));
        streamed.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("99"));
        let chunked = super::head(&streamed, ASKED);
        assert!(chunked.chunked && chunked.has_body);
        let text = written(&chunked);
        assert!(text.contains("transfer-encoding: chunked") && !text.contains("content-length"), "{text}");
        // To HTTP/1.0, the end of an unknown length is the connection's.
        let old = super::head(&streamed, Asked { version: Version::HTTP_10, ..ASKED });
        assert!(!old.chunked && !old.keep_alive);
        assert!(written(&old).contains("connection: close"));
    }

    #[test]
    fn bodiless_responses_keep_their_fields() {
        let mut to_head = Response::new(ResponseBody::Empty);
        to_head.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("42"));
        let head = head(&to_head, Asked { head: true, ..ASKED });
        assert!(written(&head).contains("content-length: 42") && !head.has_body);
        let mut not_modified = Response::new(ResponseBody::Empty);
        *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
        let head = super::head(&not_modified, ASKED);
        assert!(!written(&head).contains("content-length") && !head.has_body);
    }

    #[test]
    fn the_connection_fields_are_the_servers() {
        let mut closing = Response::new(ResponseBody::Empty);
        closing.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        let head = head(&closing, ASKED);
        assert!(!head.keep_alive && written(&head).contains("connection: close"));
        let kept = Response::new(ResponseBody::Empty);
        let head = super::head(&kept, Asked { version: Version::HTTP_10, ..ASKED });
        assert!(head.keep_alive && written(&head).contains("connection: keep-alive"));
        assert_eq!(&refusal(StatusCode::BAD_REQUEST)[..28], b"HTTP/1.1 400 Bad Request\r\nco");
    }
}
