//! The client's request body on its way upstream: the client's [`Incoming`] behind a byte
//! counter that enforces the body-size limit when the client did not declare a length, or a
//! body the stages read whole.
//!
//! A body on its way to an HTTP/2 target may be kept for sending again
//! ([`RequestBody::keep_for_resend`]): a stream the target refused unprocessed is sent once
//! more on a new connection, the part already sent (up to a cap) followed by what the client
//! has still to send.
//!
//! Its errors say whose fault a failed upstream call was ([`BodyTooLarge`],
//! [`ClientBodyError`]: the client's), found by walking the error's sources with
//! [`caused_by`].

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use crate::incoming::Incoming;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

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
pub struct ClientBodyError(#[source] BoxError);

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
    /// Set on a body kept for sending again: it streams from there, recording what it sends.
    kept: Option<Arc<Mutex<Kept>>>,
}

/// A body kept for sending again, and what of it has been sent.
#[derive(Debug)]
struct Kept {
    body: RequestBody,
    /// The chunks sent so far (shared with the client's buffers, not copied).
    sent: Vec<Bytes>,
    sent_len: usize,
    /// The most that is kept; once more was sent, the body cannot be sent again.
    cap: usize,
}

impl Kept {
    fn lock(kept: &Mutex<Kept>) -> MutexGuard<'_, Kept> {
        kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The handle that sends a kept body again ([`RequestBody::keep_for_resend`]).
#[derive(Debug)]
pub struct Resend(Arc<Mutex<Kept>>);

impl Resend {
    /// The whole body again: the part already sent, then what the client has still to send;
    /// `None` when more than the cap was sent.
    pub fn body(self) -> Option<RequestBody> {
        let mut kept = Kept::lock(&self.0);
        if kept.sent_len > kept.cap {
            return None;
        }
        let mut body = std::mem::replace(&mut kept.body, RequestBody::empty());
        if !kept.sent.is_empty() {
            // The sent part came after any buffered prefix, which went first.
            body.buffered = Some(kept.sent.concat().into());
        }
        Some(body)
    }
}

impl RequestBody {
    /// A body with nothing in it (a retried or body-less request).
    pub fn empty() -> Self {
        RequestBody { inner: None, remaining: 0, limit: 0, buffered: None, kept: None }
    }

    /// A body already read whole.
    pub fn buffered(bytes: Bytes) -> Self {
        RequestBody { inner: None, remaining: 0, limit: 0, buffered: (!bytes.is_empty()).then_some(bytes), kept: None }
    }

    /// The `prefix` the stages read, then the rest of `incoming`; more than `limit` bytes in
    /// all fails the stream with [`BodyTooLarge`].
    pub fn prefixed(prefix: Bytes, incoming: Incoming, limit: u64) -> Self {
        let remaining = limit.saturating_sub(prefix.len() as u64);
        let buffered = (!prefix.is_empty()).then_some(prefix);
        RequestBody { inner: Some(incoming), remaining, limit, buffered, kept: None }
    }

    /// Streams `incoming`; more than `limit` bytes fails the stream with [`BodyTooLarge`].
    /// A declared `content-length` was checked against the limit already and the server
    /// holds the body to it, so counting costs nothing there.
    pub fn limited(incoming: Incoming, limit: u64) -> Self {
        RequestBody { inner: Some(incoming), remaining: limit, limit, buffered: None, kept: None }
    }

    /// This body, kept so that [`Resend::body`] can send it again while at most `cap` bytes
    /// of it have been sent.
    pub fn keep_for_resend(self, cap: usize) -> (RequestBody, Resend) {
        let kept = Arc::new(Mutex::new(Kept { body: self, sent: Vec::new(), sent_len: 0, cap }));
        (RequestBody { kept: Some(kept.clone()), ..RequestBody::empty() }, Resend(kept))
    }
}

/// The first of `error` and its sources (in that order) that is an `E`.
pub fn source_of<'e, E: std::error::Error + 'static>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e E> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Whether `error` (or one of its sources) is `E`.
pub fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    source_of::<E>(error).is_some()
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(shared) = &this.kept {
            // Once the `Resend` is gone (the answer's head came), nothing is kept any more.
            let resendable = Arc::strong_count(shared) > 1;
            let mut kept = Kept::lock(shared);
            let polled = Pin::new(&mut kept.body).poll_frame(cx);
            if let Poll::Ready(Some(Ok(frame))) = &polled
                && let Some(data) = frame.data_ref()
            {
                kept.sent_len = kept.sent_len.saturating_add(data.len());
                if resendable && kept.sent_len <= kept.cap {
                    kept.sent.push(data.clone());
                } else {
                    kept.sent = Vec::new();
                }
            }
            return polled;
        }
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
        if let Some(kept) = &self.kept {
            return Kept::lock(kept).body.is_end_stream();
        }
        self.buffered.is_none() && self.inner.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(kept) = &self.kept {
            return Kept::lock(kept).body.size_hint();
        }
        let prefix = self.buffered.as_ref().map_or(0, |b| b.len() as u64);
        let Some(inner) = &self.inner else { return SizeHint::with_exact(prefix) };
        // A prefix, then the rest of the client's body.
        let rest = inner.size_hint();
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(prefix));
        }
        hint.set_lower(rest.lower().saturating_add(prefix));
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn read(body: RequestBody) -> Bytes {
        body.collect().await.expect("the body reads").to_bytes()
    }

    #[tokio::test]
    async fn a_kept_body_is_sent_again_whole_unless_more_than_the_cap_was_sent() {
        let order = Bytes::from_static(b"{\"order\": 42}");
        // Sent, then sent again: the same bytes.
        let (body, resend) = RequestBody::buffered(order.clone()).keep_for_resend(64);
        assert_eq!(body.size_hint().exact(), Some(order.len() as u64));
        assert_eq!(read(body).await, order);
        assert_eq!(read(resend.body().expect("within the cap")).await, order);
        // Refused before anything was sent: the body as it was.
        let (_unsent, resend) = RequestBody::buffered(order.clone()).keep_for_resend(64);
        assert_eq!(read(resend.body().expect("nothing sent")).await, order);
        // More than the cap went: it cannot be sent again.
        let (body, resend) = RequestBody::buffered(order.clone()).keep_for_resend(4);
        assert_eq!(read(body).await, order);
        assert!(resend.body().is_none());
        // A body still streaming once its answer came (its `Resend` dropped) keeps nothing.
        let (mut body, resend) = RequestBody::buffered(order.clone()).keep_for_resend(64);
        drop(resend);
        assert!(body.frame().await.is_some());
        let kept = body.kept.as_ref().map(|k| Kept::lock(k).sent.len());
        assert_eq!(kept, Some(0));
        // No body: nothing to keep, nothing to send.
        let (body, resend) = RequestBody::empty().keep_for_resend(64);
        assert!(body.is_end_stream());
        assert!(read(resend.body().expect("empty")).await.is_empty());
    }
}
