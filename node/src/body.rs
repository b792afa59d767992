//! Body types shared by the pipeline and the integrations.
//!
//! Bodies stream as [`Bytes`] without copies: a proxied response body is the upstream's
//! [`Incoming`] itself, a mock or error body is one preallocated buffer, and a request body
//! on its way upstream is the client's [`Incoming`] behind a byte counter that enforces the
//! body-size limit when the client did not declare a length.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Errors a body can yield while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body as the gateway sends it to a client.
pub enum ResponseBody {
    Empty,
    Full(Option<Bytes>),
    Upstream(crate::integration::endpoint::UpstreamBody),
    /// A body wrapped by whoever needs to see it stream (the response-body stages).
    Wrapped(Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Empty => f.write_str("Empty"),
            ResponseBody::Full(data) => f.debug_tuple("Full").field(data).finish(),
            ResponseBody::Upstream(incoming) => f.debug_tuple("Upstream").field(incoming).finish(),
            ResponseBody::Wrapped(_) => f.write_str("Wrapped"),
        }
    }
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            ResponseBody::Wrapped(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Full(data) => data.is_none(),
            ResponseBody::Upstream(incoming) => incoming.is_end_stream(),
            ResponseBody::Wrapped(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ResponseBody::Upstream(incoming) => incoming.size_hint(),
            ResponseBody::Wrapped(body) => body.size_hint(),
        }
    }
}

/// The error a [`RequestBody`] yields when the client sends more than the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// The error a [`RequestBody`] yields when the client's own body is broken (malformed
/// chunked encoding, a connection closed before the declared length): the client's fault,
/// answered with 400, never counted as an upstream failure.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body is malformed or incomplete: {0}")]
pub struct ClientBodyError(#[source] hyper::Error);

/// A client's request body on its way upstream. Its errors are [`BodyTooLarge`] or
/// [`ClientBodyError`], so whoever sees a failed upstream call can tell them apart by
/// walking the error's sources.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    remaining: u64,
    limit: u64,
    /// A body read whole by the stages that needed it.
    buffered: Option<Bytes>,
}

impl RequestBody {
    /// A body with nothing in it (a retried or body-less request).
    pub fn empty() -> Self {
        RequestBody { inner: None, remaining: 0, limit: 0, buffered: None }
    }

    /// A body already read whole.
    pub fn buffered(bytes: Bytes) -> Self {
        RequestBody { inner: None, remaining: 0, limit: 0, buffered: (!bytes.is_empty()).then_some(bytes) }
    }

    /// Streams `incoming`; more than `limit` bytes fails the stream with [`BodyTooLarge`].
    /// A declared `content-length` was checked against the limit already and hyper holds
    /// the body to it, so counting costs nothing there.
    pub fn limited(incoming: Incoming, limit: u64) -> Self {
        RequestBody { inner: Some(incoming), remaining: limit, limit, buffered: None }
    }
}

/// Whether `error` (or one of its sources) is `E`.
pub fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(bytes) = this.buffered.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.inner = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: this.limit }))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_none() && self.inner.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.buffered, &self.inner) {
            (Some(bytes), _) => SizeHint::with_exact(bytes.len() as u64),
            (None, Some(inner)) => inner.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}
