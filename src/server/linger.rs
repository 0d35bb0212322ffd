//! Lingering close, as nginx does it: a connection answered before its request body was read
//! (413, 401, 405, 429, 503, ...) is not closed while the client may still be sending, since
//! closing a socket with unread data makes the kernel send a reset, and a reset makes the
//! client's kernel discard the answer it had not read yet. A client that writes its whole
//! body before reading (Python's urllib, many SDKs) would then see a broken pipe instead of
//! its 413.
//!
//! So [`Linger`] wraps the socket under hyper, and when hyper shuts the connection down after
//! such an answer, it half-closes (the answer and a FIN go out), then reads and discards what
//! the client still sends until the client closes, `linger_bytes` were discarded or
//! `linger_time` passed, and only then lets the socket close.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Bytes read and thrown away at a time while lingering.
const SCRATCH: usize = 8 * 1024;

/// A socket that lingers on shutdown once [`armed`](Self::armer).
pub(crate) struct Linger<S> {
    inner: S,
    armed: Arc<AtomicBool>,
    bytes_left: usize,
    time: Duration,
    state: State,
}

enum State {
    Open,
    /// Half-closed: discarding what arrives until EOF, the byte bound or the deadline.
    Draining(Pin<Box<Sleep>>),
    Done,
}

impl<S> Linger<S> {
    /// Wraps `inner`; lingering discards at most `bytes` for at most `time`.
    pub(crate) fn new(inner: S, bytes: usize, time: Duration) -> Self {
        Self {
            inner,
            armed: Arc::default(),
            bytes_left: bytes,
            time,
            state: State::Open,
        }
    }

    /// The switch that makes the next shutdown linger: set it when answering a request
    /// whose body may not have been read to its end.
    pub(crate) fn armer(&self) -> Arc<AtomicBool> {
        self.armed.clone()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Linger<S> {
    /// Discards what the client sends until it closes or a bound is reached.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let State::Draining(deadline) = &mut self.state else {
            return Poll::Ready(());
        };
        let mut scratch = [0u8; SCRATCH];
        loop {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let want = self.bytes_left.min(SCRATCH);
            let mut buf = ReadBuf::new(&mut scratch[..want]);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.bytes_left -= buf.filled().len();
                    if self.bytes_left == 0 {
                        return Poll::Ready(());
                    }
                }
                // End of stream, or an error: nothing more will come.
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Linger<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.armed.load(Ordering::Relaxed) {
            return Pin::new(&mut this.inner).poll_shutdown(cx);
        }
        loop {
            match this.state {
                State::Open => {
                    // Sends what is buffered, then the FIN: the client can read its answer
                    // to the end while we keep reading.
                    let shut = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
                    if shut.is_err() || this.bytes_left == 0 {
                        this.state = State::Done;
                        return Poll::Ready(shut);
                    }
                    this.state = State::Draining(Box::pin(tokio::time::sleep(this.time)));
                }
                State::Draining(_) => {
                    ready!(this.poll_drain(cx));
                    this.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_armed_shutdown_reads_what_the_peer_sends_until_it_closes() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut ours = Linger::new(ours, 1 << 20, Duration::from_secs(60));
        ours.armer().store(true, Ordering::Relaxed);
        let peer = tokio::spawn(async move {
            // More than the pipe holds: this only finishes if the other side reads.
            theirs
                .write_all(&[7u8; 4096])
                .await
                .expect("the body goes out");
            let mut answer = Vec::new();
            theirs
                .read_to_end(&mut answer)
                .await
                .expect("reads to the FIN");
            answer
        });
        ours.write_all(b"413").await.expect("answers");
        ours.shutdown().await.expect("lingers, then closes");
        assert_eq!(peer.await.expect("the peer ends"), b"413");
    }

    #[tokio::test]
    async fn lingering_stops_at_the_byte_bound() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut ours = Linger::new(ours, 100, Duration::from_secs(60));
        ours.armer().store(true, Ordering::Relaxed);
        let peer = tokio::spawn(async move {
            let mut sent = 0;
            while theirs.write_all(&[7u8; 10]).await.is_ok() {
                sent += 10;
            }
            sent
        });
        ours.shutdown().await.expect("gives up after 100 bytes");
        drop(ours);
        let sent = peer.await.expect("the peer sees the close");
        assert!((100..100 + 64 + 10).contains(&sent), "{sent}");
    }
}
