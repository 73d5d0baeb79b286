//! A read-ahead buffer under TLS: rustls asks its transport for at most 4 KiB per read, so a
//! bulk transfer over a bare socket costs one `recv` per 4 KiB. Under an established tunnel
//! connection this buffer reads up to [`READ_AHEAD`] per `recv` and serves rustls from memory.
//! The buffer is borrowed from the thread's copy-buffer pool (`copy_buffers`) only while it
//! holds unread bytes: rustls drains it at once, so an idle tunnel connection holds none (it
//! held 64 KiB for its whole life, issue 17: 6.4 MiB for the 100 tunnel connections of 10,000
//! application connections).
//!
//! Owns: [`ReadAhead`]. Off until [`ReadAhead::enable`] (after the handshake).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::copy_buffers;

/// Bytes read from the socket at once when enabled.
pub const READ_AHEAD: usize = copy_buffers::LARGEST;

/// A transport with an optional read-ahead buffer; writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<T> {
    /// The transport.
    inner: T,
    /// Whether reads go through the buffer.
    enabled: bool,
    /// The buffer, borrowed while it holds unread bytes (`buf[pos..end]`), else empty.
    buf: Vec<u8>,
    /// First unread byte.
    pos: usize,
    /// End of the bytes read.
    end: usize,
}

impl<T> ReadAhead<T> {
    /// Wraps `inner`, read-ahead off.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            enabled: false,
            buf: Vec::new(),
            pos: 0,
            end: 0,
        }
    }

    /// Turns read-ahead on.
    pub fn enable(&mut self) {
        self.enabled = true;
    }

    /// The transport.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Gives the buffer back to the pool (it holds no unread bytes).
    fn give_back(&mut self) {
        (self.pos, self.end) = (0, 0);
        if !self.buf.is_empty() {
            copy_buffers::give(std::mem::take(&mut self.buf));
        }
    }
}

impl<T> Drop for ReadAhead<T> {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.end {
            if !this.enabled || out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = copy_buffers::take(READ_AHEAD);
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            let read = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let filled = rb.filled().len();
            match read {
                Poll::Ready(Ok(())) if filled > 0 => (this.pos, this.end) = (0, filled),
                other => {
                    // Nothing read (waiting, end of stream or an error): hold no buffer.
                    this.give_back();
                    return other;
                }
            }
        }
        let n = (this.end - this.pos).min(out.remaining());
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        if this.pos == this.end {
            this.give_back();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_in_order() {
        let (mut far, near) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        far.write_all(&data).await.unwrap();
        drop(far);
        let mut ra = ReadAhead::new(near);
        ra.enable();
        let mut chunk = [0u8; 4096];
        assert_eq!(ra.read(&mut chunk).await.unwrap(), 4096);
        // One read from the transport took a whole buffer's worth; 4 KiB of it went out.
        assert_eq!((ra.pos, ra.end), (4096, READ_AHEAD));
        let mut got = chunk.to_vec();
        ra.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn enabled_it_holds_a_buffer_only_while_bytes_are_unread() {
        let (mut far, near) = tokio::io::duplex(64 * 1024);
        let mut ra = ReadAhead::new(near);
        ra.enable();
        far.write_all(&[7u8; 10_000]).await.unwrap();
        let mut chunk = [0u8; 4096];
        assert_eq!(ra.read(&mut chunk).await.unwrap(), 4096);
        assert_eq!(ra.buf.len(), READ_AHEAD, "bytes unread: the buffer is held");
        let mut left = 10_000 - 4096;
        while left > 0 {
            left -= ra.read(&mut chunk).await.unwrap();
        }
        assert!(
            ra.buf.is_empty(),
            "drained: the buffer went back to the pool"
        );
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), ra.read(&mut chunk)).await;
        assert!(waiting.is_err(), "nothing to read yet");
        assert!(ra.buf.is_empty(), "a waiting read holds no buffer");
        far.write_all(b"more").await.unwrap();
        assert_eq!(ra.read(&mut chunk).await.unwrap(), 4);
        assert_eq!(&chunk[..4], b"more");
        assert!(ra.buf.is_empty());
    }

    #[tokio::test]
    async fn disabled_it_reads_straight_through_and_holds_no_buffer() {
        let (mut far, near) = tokio::io::duplex(1024);
        far.write_all(b"hello").await.unwrap();
        let mut ra = ReadAhead::new(near);
        let mut chunk = [0u8; 2];
        assert_eq!(ra.read(&mut chunk).await.unwrap(), 2);
        assert!(ra.buf.is_empty());
        let mut rest = Vec::new();
        drop(far);
        ra.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"llo");
    }
}
