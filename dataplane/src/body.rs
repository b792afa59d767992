//! The response body the gateway sends a client.
//!
//! Bodies stream as [`Bytes`] without copies: a proxied response body is the upstream's
//! own (its connection goes back to the pool when it ends), a mock or error body is one
//! preallocated buffer, and a body the response-body stages follow is wrapped once. The
//! request body on its way upstream is [`crate::integration::request_body::RequestBody`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub use crate::integration::request_body::BoxError;

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

    /// The whole body, if it ends within `limit` bytes and `time`; otherwise why not (too
    /// long, too slow, or the upstream failed mid-body).
    pub async fn read_whole(self, limit: usize, time: std::time::Duration) -> Result<Bytes, String> {
        use http_body_util::BodyExt;
        let read = http_body_util::Limited::new(self, limit).collect();
        match tokio::time::timeout(time, read).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(format!("the body is over {limit} bytes")),
            Ok(Err(e)) => Err(format!("the body could not be read: {e}")),
            Err(_) => Err(format!("the body did not end within {} s", time.as_secs())),
        }
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

/// A copy of a body as it streams, up to a limit: what a stage keeps of a response (a cache
/// entry, later a replayable answer) without ever holding more than it may. Past the limit
/// the copy is given up and nothing more is held.
#[derive(Debug, Clone)]
pub struct BoundedCopy {
    copied: Option<bytes::BytesMut>,
    limit: usize,
}

impl BoundedCopy {
    pub fn new(limit: usize) -> Self {
        BoundedCopy { copied: Some(bytes::BytesMut::new()), limit }
    }

    /// Copies `chunk`; `false` once the body has gone past the limit.
    pub fn push(&mut self, chunk: &[u8]) -> bool {
        let Some(copied) = &mut self.copied else { return false };
        if copied.len() + chunk.len() > self.limit {
            self.copied = None;
            return false;
        }
        copied.extend_from_slice(chunk);
        true
    }

    /// The whole body, unless it went past the limit.
    pub fn finish(self) -> Option<Bytes> {
        self.copied.map(bytes::BytesMut::freeze)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_holds_up_to_its_limit_and_nothing_past_it() {
        let mut copy = BoundedCopy::new(10);
        assert!(copy.push(b"hello"));
        assert!(copy.push(b"world"));
        assert_eq!(copy.finish().as_deref(), Some(&b"helloworld"[..]));
        let mut over = BoundedCopy::new(10);
        assert!(over.push(b"hello"));
        assert!(!over.push(b"world!"));
        assert!(!over.push(b""));
        assert_eq!(over.finish(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_body_is_read_within_its_length_and_time() {
        let second = std::time::Duration::from_secs(1);
        assert_eq!(ResponseBody::full("abc").read_whole(3, second).await.unwrap(), "abc");
        let e = ResponseBody::full("abcd").read_whole(3, second).await.unwrap_err();
        assert!(e.contains("over 3 bytes"), "{e}");
        // An upstream that sends its head and then nothing more.
        let stalled = futures_util::stream::pending::<Result<http_body::Frame<Bytes>, BoxError>>();
        let stalled = ResponseBody::Wrapped(Box::pin(http_body_util::StreamBody::new(stalled)));
        let e = stalled.read_whole(100, 30 * second).await.unwrap_err();
        assert!(e.contains("did not end within 30 s"), "{e}");
    }
}
