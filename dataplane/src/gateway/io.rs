//! Idle timeouts on client connections.
//!
//! [`IdleTimeout`] wraps a socket and fails a read or write that has waited longer than
//! the idle timeout since the connection last moved a byte. A successful read or write only
//! notes that bytes moved; the clock is read and the timer consulted only when the socket
//! would block, and the timer is moved only to an earlier deadline (one that passed too
//! early re-arms itself when it fires), so a busy connection touches the timer wheel about
//! once per idle timeout rather than once per request.
//!
//! Until its first request head has arrived, a gateway connection also has a fixed
//! deadline ([`IdleTimeout::with_first_request_deadline`]): the servers' own header timers
//! only start once the protocol is known and a head has begun, so without it a client that
//! connects and sends nothing (or a byte every few seconds) would hold a connection for the
//! whole idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::conns::ConnSlot;

/// A socket that errors with `TimedOut` after `timeout` without traffic.
#[derive(Debug)]
pub struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    /// When the connection was last seen to move bytes (read when it would block).
    last_activity: Instant,
    /// Whether bytes moved since `last_activity` was read.
    moved: bool,
    timer: Pin<Box<Sleep>>,
    /// The deadline for the first request head, until the connection has served one.
    first_request: Option<(Instant, Arc<ConnSlot>)>,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        let now = Instant::now();
        IdleTimeout {
            inner,
            timeout,
            last_activity: now,
            moved: false,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            first_request: None,
        }
    }

    /// Also fails the connection if `slot` has not begun a request within `limit` of now.
    pub fn with_first_request_deadline(mut self, limit: Duration, slot: Arc<ConnSlot>) -> Self {
        self.first_request = Some((Instant::now() + limit, slot));
        self
    }

    /// [`IdleTimeout::expires`], forgetting the first-request deadline once it is met.
    fn deadline(&mut self) -> Instant {
        if self.first_request.as_ref().is_some_and(|(_, slot)| slot.served()) {
            self.first_request = None;
        }
        self.expires()
    }

    /// Replaces the idle timeout, counted from the last byte moved.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.first_request = None;
    }

    /// When the connection times out if nothing moves before.
    fn expires(&self) -> Instant {
        let idle = self.last_activity + self.timeout;
        match &self.first_request {
            Some((first, slot)) if !slot.served() => idle.min(*first),
            _ => idle,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Called when the socket would block: errors once the connection has idled too long,
    /// and otherwise makes sure the timer will wake this task at the deadline. A parked
    /// connection waits on this too, instead of a timer of its own.
    pub fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if std::mem::take(&mut self.moved) {
            self.last_activity = Instant::now();
        }
        loop {
            let deadline = self.deadline();
            // A later deadline waits for the timer to fire at the earlier one.
            if self.timer.is_elapsed() || deadline < self.timer.deadline() {
                self.timer.as_mut().reset(deadline);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= self.deadline() => {
                    let message = match self.first_request {
                        Some(_) => "no request head within the header read timeout",
                        None => "connection idle timeout",
                    };
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, message));
                }
                Poll::Ready(()) => continue,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.moved = true;
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.moved = true;
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.moved = true;
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn an_idle_reader_times_out_and_an_active_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = IdleTimeout::new(a, Duration::from_secs(10));
        let writer = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                b.write_all(b"x").await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(b);
        });
        let started = Instant::now();
        let mut buf = [0u8; 1];
        for _ in 0..3 {
            a.read_exact(&mut buf).await.unwrap();
        }
        let err = a.read_exact(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // The timeout counts from the last byte (at 18 s), however often the timer woke
        // early in between.
        assert_eq!(started.elapsed(), Duration::from_secs(28));
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_no_request_head_meets_the_first_deadline() {
        let table = super::super::conns::ConnectionTable::new(1, 0);
        let admitted = table.admit("192.0.2.1".parse().unwrap()).await.unwrap();
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = IdleTimeout::new(a, Duration::from_secs(60))
            .with_first_request_deadline(Duration::from_secs(10), admitted.slot.clone());
        // A byte every 5 s keeps the idle timer happy but not the first-request deadline.
        let writer = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = b.write_all(b"G").await;
            }
        });
        let started = Instant::now();
        let mut buf = [0u8; 1];
        let err = loop {
            if let Err(e) = a.read_exact(&mut buf).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        writer.abort();

        // Once a request has begun, only the idle timeout applies.
        let (a, _b) = tokio::io::duplex(64);
        let mut a = IdleTimeout::new(a, Duration::from_secs(60))
            .with_first_request_deadline(Duration::from_secs(10), admitted.slot.clone());
        drop(admitted.slot.begin());
        let started = Instant::now();
        let _ = a.read_exact(&mut buf).await;
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }
}
