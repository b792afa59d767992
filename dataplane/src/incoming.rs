//! A client's request body as it arrives: over HTTP/1.1, read from the connection by
//! whoever polls it (the gateway's own server, `gateway::http1`, lends it the socket); over
//! HTTP/2, hyper's stream.
//!
//! The HTTP/1.1 body holds its connection through [`BodySource`], so that it does not name
//! the socket's type and this module does not depend on the server.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::framing::{BoxError, FramingError};

/// Where an HTTP/1.1 request body's bytes come from: its connection. A connection carries
/// one request after another, so a body names its request by `number`: a body still held
/// after its request is over (by a task that outlived it) reads nothing of the next one.
pub trait BodySource: Send + Sync {
    /// The next piece of request `number`'s body, read from the connection as needed.
    fn poll_body(&self, number: u64, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, FramingError>>>;
    /// What is known of the length still to come of request `number`'s body.
    fn size_hint(&self, number: u64) -> SizeHint;
}

/// A client's request body.
pub enum Incoming {
    /// A request without a body.
    Empty,
    Http1 {
        source: Arc<dyn BodySource>,
        /// Which of the connection's requests this body is.
        number: u64,
        done: bool,
    },
    /// Read by hyper (HTTP/2).
    Hyper(hyper::body::Incoming),
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incoming::Empty => f.write_str("Empty"),
            Incoming::Http1 { done, .. } => f.debug_struct("Http1").field("done", done).finish_non_exhaustive(),
            Incoming::Hyper(body) => f.debug_tuple("Hyper").field(body).finish(),
        }
    }
}

impl Incoming {
    /// The body of the connection's request `number`, read from `source`.
    pub fn http1(source: Arc<dyn BodySource>, number: u64) -> Self {
        Incoming::Http1 { source, number, done: false }
    }
}

impl From<hyper::body::Incoming> for Incoming {
    fn from(body: hyper::body::Incoming) -> Self {
        Incoming::Hyper(body)
    }
}

impl Body for Incoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Incoming::Empty | Incoming::Http1 { done: true, .. } => Poll::Ready(None),
            Incoming::Http1 { source, number, done } => {
                let polled = source.poll_body(*number, cx);
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                    *done = true;
                }
                polled.map(|frame| frame.map(|f| f.map_err(BoxError::from)))
            }
            Incoming::Hyper(body) => Pin::new(body).poll_frame(cx).map(|f| f.map(|f| f.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Incoming::Empty | Incoming::Http1 { done: true, .. } => true,
            Incoming::Http1 { .. } => false,
            Incoming::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Incoming::Empty | Incoming::Http1 { done: true, .. } => SizeHint::with_exact(0),
            Incoming::Http1 { source, number, .. } => source.size_hint(*number),
            Incoming::Hyper(body) => body.size_hint(),
        }
    }
}
