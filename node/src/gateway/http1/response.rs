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

use crate::framing::{lists, write_fields};

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

/// Serializes the head of `response` to a request that `asked`, fixing its framing fields.
pub fn head<B: Body>(response: &mut Response<B>, asked: Asked) -> Head {
    let status = response.status();
    let bodiless = asked.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = if response.body().is_end_stream() { Some(0) } else { response.body().size_hint().exact() };
    let mut keep_alive = asked.keep_alive && !lists(response.headers(), &CONNECTION, "close");
    let headers = response.headers_mut();
    headers.remove(TRANSFER_ENCODING);
    headers.remove(CONNECTION);
    let mut chunked = false;
    if !bodiless {
        match length {
            Some(n) => {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
            }
            None if asked.version == Version::HTTP_11 => {
                headers.remove(CONTENT_LENGTH);
                headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
                chunked = true;
            }
            None => {
                headers.remove(CONTENT_LENGTH);
                keep_alive = false;
            }
        }
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else if !keep_alive {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    } else if asked.version == Version::HTTP_10 {
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    if !headers.contains_key(DATE) {
        headers.insert(DATE, now());
    }
    let fields: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(fields + 40);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_fields(&mut out, headers);
    Head { bytes: out, has_body: !bodiless && length != Some(0), chunked, keep_alive }
}

/// The answer to a request head that could not be read: `status`, no body, and the
/// connection closing.
pub fn refusal(status: StatusCode) -> Vec<u8> {
    let mut response = Response::new(http_body_util::Empty::<Bytes>::new());
    *response.status_mut() = status;
    head(&mut response, Asked { head: false, version: Version::HTTP_11, keep_alive: false }).bytes
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
        let head = head(&mut full, ASKED);
        let text = written(&head);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-length: 5\r\n") && !text.contains("transfer-encoding"), "{text}");
        assert!(text.contains("date: ") && text.ends_with("\r\n\r\n"), "{text}");
        assert!(head.has_body && !head.chunked && head.keep_alive);

        type Frames = Result<http_body::Frame<Bytes>, crate::framing::BoxError>;
        let stream = http_body_util::StreamBody::new(futures_util::stream::empty::<Frames>());
        let mut streamed = Response::new(ResponseBody::Wrapped(Box::pin(stream)));
        streamed.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("99"));
        let chunked = super::head(&mut streamed, ASKED);
        assert!(chunked.chunked && chunked.has_body);
        let text = written(&chunked);
        assert!(text.contains("transfer-encoding: chunked") && !text.contains("content-length"), "{text}");
        // To HTTP/1.0, the end of an unknown length is the connection's.
        let old = super::head(&mut streamed, Asked { version: Version::HTTP_10, ..ASKED });
        assert!(!old.chunked && !old.keep_alive);
        assert!(written(&old).contains("connection: close"));
    }

    #[test]
    fn bodiless_responses_keep_their_fields() {
        let mut to_head = Response::new(ResponseBody::Empty);
        to_head.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("42"));
        let head = head(&mut to_head, Asked { head: true, ..ASKED });
        assert!(written(&head).contains("content-length: 42") && !head.has_body);
        let mut not_modified = Response::new(ResponseBody::Empty);
        *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
        let head = super::head(&mut not_modified, ASKED);
        assert!(!written(&head).contains("content-length") && !head.has_body);
    }

    #[test]
    fn the_connection_fields_are_the_servers() {
        let mut closing = Response::new(ResponseBody::Empty);
        closing.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        let head = head(&mut closing, ASKED);
        assert!(!head.keep_alive && written(&head).contains("connection: close"));
        let mut kept = Response::new(ResponseBody::Empty);
        let head = super::head(&mut kept, Asked { version: Version::HTTP_10, ..ASKED });
        assert!(head.keep_alive && written(&head).contains("connection: keep-alive"));
        assert_eq!(&refusal(StatusCode::BAD_REQUEST)[..28], b"HTTP/1.1 400 Bad Request\r\nco");
    }
}
