//! A read-ahead buffer under TLS: rustls asks its transport for at most 4 KiB per read, so a
//! bulk transfer over a bare socket costs one `recv` per 4 KiB. Under an established tunnel
//! connection this buffer reads up to [`READ_AHEAD`] per `recv` and serves rustls from memory.
//!
//! Owns: [`ReadAhead`]. Off until [`ReadAhead::enable`] (after the handshake), so a connection
//! that never completes a handshake costs no buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once when enabled.
pub const READ_AHEAD: usize = 64 * 1024;

/// A transport with an optional read-ahead buffer; writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<T> {
    /// The transport.
    inner: T,
    /// The buffer (empty while disabled); unread bytes are `buf[pos..end]`.
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
            buf: Vec::new(),
            pos: 0,
            end: 0,
        }
    }

    /// Turns read-ahead on.
    pub fn enable(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0; READ_AHEAD];
        }
    }

    /// The transport.
    pub fn get_ref(&self) -> &T {
        &self.inner
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
            if this.buf.is_empty() || out.remaining() >= this.buf.len() {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.pos = 0;
            this.end = rb.filled().len();
            if this.end == 0 {
                return Poll::Ready(Ok(())); // end of stream
            }
        }
        let n = (this.end - this.pos).min(out.remaining());
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
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
