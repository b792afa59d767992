//! The client's request body on its way upstream: the client's [`Incoming`] behind a byte
//! counter that enforces the body-size limit when the client did not declare a length, or a
//! body the stages read whole.
//!
//! Its errors say whose fault a failed upstream call was ([`BodyTooLarge`],
//! [`ClientBodyError`]: the client's), found by walking the error's sources with
//! [`caused_by`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Errors a request body can yield while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

    /// The `prefix` the stages read, then the rest of `incoming`; more than `limit` bytes in
    /// all fails the stream with [`BodyTooLarge`].
    pub fn prefixed(prefix: Bytes, incoming: Incoming, limit: u64) -> Self {
        let remaining = limit.saturating_sub(prefix.len() as u64);
        RequestBody { inner: Some(incoming), remaining, limit, buffered: (!prefix.is_empty()).then_some(prefix) }
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
