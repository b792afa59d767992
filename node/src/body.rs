//! Body types shared by the pipeline and the integrations.
//!
//! Bodies stream as [`Bytes`] without copies: a proxied response body is the upstream's
//! [`Incoming`] itself, a mock or error body is one preallocated buffer, and a request body
//! on its way upstream is the client's [`Incoming`] behind a byte counter that enforces the
//! body-size limit when the client did not declare a length.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Errors a body can yield while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body as the gateway sends it to a client.
#[derive(Debug)]
pub enum ResponseBody {
    Empty,
    Full(Option<Bytes>),
    Upstream(Incoming),
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Full(data) => data.is_none(),
            ResponseBody::Upstream(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ResponseBody::Upstream(incoming) => incoming.size_hint(),
        }
    }
}

/// The error a [`RequestBody`] yields when the client sends more than the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// A client's request body on its way upstream.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    remaining: u64,
    limit: u64,
    overflowed: Option<Arc<AtomicBool>>,
}

impl RequestBody {
    /// A body with nothing in it (a retried or body-less request).
    pub fn empty() -> Self {
        RequestBody { inner: None, remaining: 0, limit: 0, overflowed: None }
    }

    /// Streams `incoming`; more than `limit` bytes fails the stream and sets the returned flag.
    pub fn limited(incoming: Incoming, limit: u64) -> (Self, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        let body = RequestBody { inner: Some(incoming), remaining: limit, limit, overflowed: Some(flag.clone()) };
        (body, flag)
    }

    /// Streams `incoming` whose declared length was already checked against the limit
    /// (hyper enforces that the body matches its `content-length`).
    pub fn declared(incoming: Incoming) -> Self {
        RequestBody { inner: Some(incoming), remaining: u64::MAX, limit: u64::MAX, overflowed: None }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        if let Some(flag) = &this.overflowed {
                            flag.store(true, Ordering::Relaxed);
                        }
                        this.inner = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: this.limit }))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or(SizeHint::with_exact(0), |i| i.size_hint())
    }
}
