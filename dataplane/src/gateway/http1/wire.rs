//! A client connection's socket and read buffer, shared between the connection's loop
//! (which reads heads and writes responses) and the request body of the request in
//! progress (which reads itself from the socket when polled, in whatever task polls it).
//!
//! Each side holds the lock only for one read or write, never across a poll of something
//! else: writing a response polls its body, which may poll the request body (an upstream
//! answering while the upload streams), which takes the lock for its own read.

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncWrite, ReadBuf};

use crate::framing::{Decoded, Framing, FramingError, poll_read_more};
use crate::incoming::BodySource;

/// What the client is told when it waits before sending its body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The socket and what has been read from it.
pub struct Wire<S> {
    /// `None` once handed to a WebSocket.
    pub io: Option<S>,
    /// Read and not consumed yet. Empty, and without an allocation, between requests.
    pub read: BytesMut,
    /// Which of the connection's requests is current (counted from 1).
    pub request: u64,
    /// How what is left of the current request's body is delimited.
    pub body: Framing,
    /// What is still to write of a `100 Continue` the client waits for before its body.
    pub continue_owed: &'static [u8],
    /// The body was malformed or cut short: the connection cannot carry another request.
    pub broken: bool,
}

/// A connection's [`Wire`], locked for one operation at a time.
pub type SharedWire<S> = Mutex<Wire<S>>;

impl<S> Wire<S> {
    pub fn new(io: S, already_read: Bytes) -> Self {
        Wire {
            io: Some(io),
            read: BytesMut::from(already_read),
            request: 0,
            body: Framing::Empty,
            continue_owed: &[],
            broken: false,
        }
    }

    pub fn lock(wire: &SharedWire<S>) -> MutexGuard<'_, Wire<S>> {
        wire.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the next request, whose body is delimited by `framing`, the client waiting
    /// for `100 Continue` first or not; returns its number.
    pub fn begin_request(&mut self, framing: Framing, expect_continue: bool) -> u64 {
        self.request += 1;
        self.body = framing;
        self.continue_owed = if expect_continue { CONTINUE } else { &[] };
        self.request
    }
}

impl<S: tokio::io::AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// Reads more into the buffer ([`poll_read_more`]); 0 at end of stream, or once the
    /// socket went to a WebSocket.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else { return Poll::Ready(Ok(0)) };
        poll_read_more(io, cx, &mut self.read, want)
    }

    /// Writes what is owed of a `100 Continue`.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = self.io.as_mut() else { return Poll::Ready(Err(io::ErrorKind::NotConnected.into())) };
        while !self.continue_owed.is_empty() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, self.continue_owed))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_owed = &self.continue_owed[n..];
            if self.continue_owed.is_empty() {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The request body's next piece.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, FramingError>>> {
        if self.body == Framing::Empty {
            return Poll::Ready(None);
        }
        if ready!(self.poll_continue(cx)).is_err() {
            return Poll::Ready(Some(Err(self.fail(FramingError::Truncated))));
        }
        loop {
            match self.body.decode(&mut self.read) {
                Ok(Decoded::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More(want)) => match ready!(self.poll_fill(cx, want)) {
                    Ok(0) => {
                        let end = self.body.closed();
                        return Poll::Ready(end.err().map(|e| Err(self.fail(e))));
                    }
                    Ok(_) => {}
                    Err(_) => return Poll::Ready(Some(Err(self.fail(FramingError::Truncated)))),
                },
                Err(e) => return Poll::Ready(Some(Err(self.fail(e)))),
            }
        }
    }

    fn fail(&mut self, error: FramingError) -> FramingError {
        self.broken = true;
        self.body = Framing::Empty;
        error
    }
}

impl<S> BodySource for SharedWire<S>
where
    S: tokio::io::AsyncRead + AsyncWrite + Unpin + Send,
{
    fn poll_body(&self, number: u64, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, FramingError>>> {
        let mut wire = Wire::lock(self);
        if wire.request != number {
            // A body held past its request (by a task that outlived it): the connection went
            // on to the next request only because this body had ended.
            return Poll::Ready(None);
        }
        wire.poll_body(cx)
    }

    fn size_hint(&self, number: u64) -> SizeHint {
        let wire = Wire::lock(self);
        if wire.request != number {
            return SizeHint::with_exact(0);
        }
        match wire.body {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Chunked(_) | Framing::UntilClose => SizeHint::default(),
        }
    }
}

/// Writes to a shared wire's socket, taking the lock for each write.
pub struct SharedWriter<'a, S>(pub &'a SharedWire<S>);

impl<S: AsyncWrite + Unpin> SharedWriter<'_, S> {
    fn with_io<T>(&mut self, f: impl FnOnce(Pin<&mut S>) -> Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let mut wire = Wire::lock(self.0);
        match wire.io.as_mut() {
            Some(io) => f(Pin::new(io)),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SharedWriter<'_, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().with_io(|io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().with_io(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().with_io(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().with_io(|io| io.poll_shutdown(cx))
    }
}

/// Reads and drops what the client sends, to let a response be read before the
/// connection closes (closing with unread bytes would reset it, and the client could lose
/// the response). Used with a deadline.
pub fn poll_discard<S: tokio::io::AsyncRead + Unpin>(io: &mut S, cx: &mut Context<'_>) -> Poll<()> {
    let mut sink = [0u8; 4096];
    loop {
        let mut buf = ReadBuf::new(&mut sink);
        match ready!(Pin::new(&mut *io).poll_read(cx, &mut buf)) {
            Ok(()) if !buf.filled().is_empty() => {}
            _ => return Poll::Ready(()),
        }
    }
}
