//! The gateway's own check of a WebSocket opening handshake (RFC 6455 §4.2.1), made before
//! anything is sent upstream: a request that asks to switch protocols but is not a valid
//! handshake never reaches the backend, and never leaves a spliced half-open connection.
//!
//! A valid handshake is a `GET` over HTTP/1.1 without a body, with `Sec-WebSocket-Version:
//! 13` (otherwise 426 naming the version we speak) and a `Sec-WebSocket-Key` that is the
//! base64 form of 16 bytes.
//!
//! Once both sides have switched protocols, [`splice`] copies bytes between the client's
//! socket (handed over by the listener as a [`ClientUpgrade`]) and the upstream's.

use http::header::{CONTENT_LENGTH, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, Version};

use crate::integration::http1_client::UpgradedUpstream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::Rejection;

/// A client socket after `101 Switching Protocols`, with any bytes read past the handshake
/// in front.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// Fails the socket after `timeout` without a byte either way (instead of the
    /// listener's idle timeout, which is for HTTP requests).
    fn set_idle_timeout(&mut self, timeout: std::time::Duration);
}

/// An upgraded client connection.
pub type UpgradedClient = Box<dyn ClientIo>;

/// Put on an upgrade request by the listener: gives the client's socket once the `101` has
/// been sent (an error, if the answer was another status).
#[derive(Clone)]
pub struct ClientUpgrade(std::sync::Arc<std::sync::Mutex<Option<oneshot::Receiver<UpgradedClient>>>>);

impl ClientUpgrade {
    pub fn new(socket: oneshot::Receiver<UpgradedClient>) -> Self {
        ClientUpgrade(std::sync::Arc::new(std::sync::Mutex::new(Some(socket))))
    }

    /// The client's socket, once the `101` is out.
    pub async fn socket(self) -> Result<UpgradedClient, &'static str> {
        let receiver = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        match receiver {
            Some(receiver) => receiver.await.map_err(|_| "the listener kept the connection"),
            None => Err("the connection was taken already"),
        }
    }
}

/// Joins a client's upgraded connection to the upstream's once both sides have switched
/// protocols, copying bytes both ways until either side closes.
pub fn splice(client: ClientUpgrade, mut upstream: UpgradedUpstream) {
    tokio::spawn(async move {
        let mut client = match client.socket().await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(client = e, "upgrade did not complete");
                return;
            }
        };
        // The upstream connection counts as open (`upstream.open`) until the splice ends.
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream.socket).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}

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
