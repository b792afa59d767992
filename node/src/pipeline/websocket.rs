//! The gateway's own check of a WebSocket opening handshake (RFC 6455 §4.2.1), made before
//! anything is sent upstream: a request that asks to switch protocols but is not a valid
//! handshake never reaches the backend, and never leaves a spliced half-open connection.
//!
//! A valid handshake is a `GET` over HTTP/1.1 without a body, with `Sec-WebSocket-Version:
//! 13` (otherwise 426 naming the version we speak) and a `Sec-WebSocket-Key` that is the
//! base64 form of 16 bytes.

use http::header::{CONTENT_LENGTH, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, Version};

use super::Rejection;

/// Whether `key` is 16 bytes in base64: 22 symbols, the last one with its low four bits
/// clear, then `==`.
fn is_valid_key(key: &[u8]) -> bool {
    let symbol = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/');
    key.len() == 24
        && key[..22].iter().all(symbol)
        && &key[22..] == b"=="
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
}

/// Refuses a WebSocket upgrade request that is not a valid opening handshake.
pub fn validate_handshake(parts: &Parts) -> Result<(), Rejection> {
    let bad = |message: &'static str| Err(Rejection::new(StatusCode::BAD_REQUEST, message));
    if parts.method != Method::GET || parts.version != Version::HTTP_11 {
        return bad("a WebSocket handshake is a GET request over HTTP/1.1");
    }
    let has_body = parts.headers.contains_key(TRANSFER_ENCODING)
        || parts.headers.get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return bad("a WebSocket handshake has no body");
    }
    if parts.headers.get(SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err(Rejection::new(StatusCode::UPGRADE_REQUIRED, "this gateway speaks WebSocket version 13")
            .with_header(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13")));
    }
    let mut keys = parts.headers.get_all(SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(key), None) if is_valid_key(key.as_bytes()) => Ok(()),
        _ => bad("a WebSocket handshake needs one Sec-WebSocket-Key of 16 bytes in base64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri("/ws").version(Version::HTTP_11);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const KEY: (&str, &str) = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    const VERSION: (&str, &str) = ("sec-websocket-version", "13");

    #[test]
    fn a_valid_handshake_passes() {
        assert!(validate_handshake(&handshake("GET", &[KEY, VERSION])).is_ok());
        assert!(validate_handshake(&handshake("GET", &[KEY, VERSION, ("content-length", "0")])).is_ok());
    }

    #[test]
    fn invalid_handshakes_are_refused() {
        let status = |p: Parts| validate_handshake(&p).unwrap_err().status;
        assert_eq!(status(handshake("POST", &[KEY, VERSION])), 400);
        assert_eq!(status(handshake("GET", &[KEY])), 426);
        assert_eq!(status(handshake("GET", &[KEY, ("sec-websocket-version", "8")])), 426);
        assert_eq!(status(handshake("GET", &[VERSION])), 400);
        assert_eq!(status(handshake("GET", &[VERSION, ("sec-websocket-key", "short==")])), 400);
        assert_eq!(status(handshake("GET", &[VERSION, ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZR==")])), 400);
        assert_eq!(status(handshake("GET", &[KEY, VERSION, ("content-length", "5")])), 400);
        assert_eq!(status(handshake("GET", &[KEY, KEY, VERSION])), 400);
    }
}
