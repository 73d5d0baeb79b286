//! Moving bytes both ways between two streams: half-close passed on, backpressure from the
//! slower side (one buffer per direction while it holds bytes, lent by [`copy_buffers`]), an
//! idle timeout, and live byte counts for the connection record.
//!
//! Owns: [`bidirectional`]. Callers decide what the two ends are.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::copy_buffers;
use crate::records::ConnRecord;

/// Starting read size for each direction (the buffer itself is lent by [`copy_buffers`] only
/// while the direction holds bytes: an idle connection holds none).
const BUF_START: usize = copy_buffers::SMALLEST;
/// A direction whose reads keep filling the buffer (a bulk transfer) gets it doubled up to
/// this: 64 KiB reads and writes take an eighth of the system calls of 8 KiB ones.
const BUF_MAX: usize = copy_buffers::LARGEST;

/// One direction's state: bytes read and not yet written sit in `buf[pos..end]`.
struct OneWay {
    /// The buffer while the direction holds bytes or reads; empty (given back) while it waits.
    buf: Vec<u8>,
    /// The read size: the length of the buffer it takes.
    size: usize,
    /// First byte not yet written.
    pos: usize,
    /// End of the bytes read.
    end: usize,
    /// The last read filled the whole buffer.
    last_read_full: bool,
    /// The reader reached its end.
    read_done: bool,
    /// Bytes were written since the last flush.
    need_flush: bool,
}

impl Drop for OneWay {
    fn drop(&mut self) {
        self.release();
    }
}

impl OneWay {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            size: BUF_START,
            pos: 0,
            end: 0,
            last_read_full: false,
            read_done: false,
            need_flush: false,
        }
    }

    /// Gives the buffer back to the pool (it must hold no unwritten bytes).
    fn release(&mut self) {
        if !self.buf.is_empty() {
            copy_buffers::give(std::mem::take(&mut self.buf));
        }
    }

    /// Copies from `r` to `w` until `r` ends (then shuts `w` down) or an error occurs.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.end && !self.read_done {
                // One full read earns one doubling: cleared here, so that polls finding
                // nothing to read (woken by the other direction) do not grow it again.
                if std::mem::take(&mut self.last_read_full) && self.size < BUF_MAX {
                    self.size = (self.size * 2).min(BUF_MAX);
                }
                if self.buf.len() != self.size {
                    self.release();
                    self.buf = copy_buffers::take(self.size);
                }
                self.pos = 0;
                self.end = 0;
                let mut rb = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        // Nothing read: the buffer goes back until the reader is ready.
                        self.release();
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        self.end = n;
                        self.read_done = n == 0;
                        self.last_read_full = n == self.buf.len();
                        if self.read_done {
                            self.release();
                        }
                    }
                }
            }
            while self.pos < self.end {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if self.read_done {
                ready!(w.as_mut().poll_flush(cx))?;
                self.need_flush = false;
                return w.as_mut().poll_shutdown(cx);
            }
        }
    }

    /// Whether the direction holds a buffer (for tests).
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Copies both ways until both directions have ended.
async fn copy_both<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Some(OneWay::new());
    let mut b_to_a = Some(OneWay::new());
    std::future::poll_fn(|cx| {
        if let Some(d) = a_to_b.as_mut()
            && d.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?
                .is_ready()
        {
            a_to_b = None; // frees the buffer of a finished direction
        }
        if let Some(d) = b_to_a.as_mut()
            && d.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?
                .is_ready()
        {
            b_to_a = None;
        }
        if a_to_b.is_none() && b_to_a.is_none() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Counts bytes read from the wrapped stream and stamps activity.
struct Metered<'a, T> {
    /// The stream.
    inner: T,
    /// Where to add bytes read from `inner`.
    read_counter: &'a AtomicU64,
    /// Milliseconds since `epoch` of the last byte either way.
    activity: &'a AtomicU64,
    /// Reference point for `activity`.
    epoch: Instant,
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read_counter.fetch_add(n as u64, Ordering::Relaxed);
            let ms = self.epoch.elapsed().as_millis() as u64;
            self.activity.store(ms, Ordering::Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why copying stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// An I/O error on either side.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// No byte moved for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
}

/// Closes `stream` abortively (RST) when copying failed, so its application sees a reset rather
/// than a clean end of stream: a transfer cut short on the other side must not look complete.
pub fn reset_on_error(result: &Result<(), CopyError>, stream: &tokio::net::TcpStream) {
    if let Err(CopyError::Io(_)) = result {
        let _ = stream.set_zero_linger();
    }
}

/// Copies between `client` (the side that connected to us) and `server` until both directions
/// have closed, an error occurs, or nothing moves for `idle`. Bytes from client to server count
/// as `record.bytes_sent`, the other way as `bytes_received`.
pub async fn bidirectional<A, B>(
    client: A,
    server: B,
    idle: Duration,
    record: &Arc<ConnRecord>,
) -> Result<(), CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    bidirectional_reporting(client, server, idle, record, &|| {}).await
}

/// [`bidirectional`], calling `report` at every idle check (every quarter of `idle`, between
/// 100 ms and 30 s) so that the byte counts of a long connection reach the metrics while it
/// lasts, not only when it closes.
pub async fn bidirectional_reporting<A, B>(
    client: A,
    server: B,
    idle: Duration,
    record: &Arc<ConnRecord>,
    report: &(dyn Fn() + Sync),
) -> Result<(), CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = AtomicU64::new(0);
    let epoch = Instant::now();
    let mut a = Metered {
        inner: client,
        read_counter: &record.bytes_sent,
        activity: &activity,
        epoch,
    };
    let mut b = Metered {
        inner: server,
        read_counter: &record.bytes_received,
        activity: &activity,
        epoch,
    };
    let copy = copy_both(&mut a, &mut b);
    tokio::pin!(copy);
    let check = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        tokio::select! {
            res = &mut copy => return res.map_err(CopyError::from),
            () = tokio::time::sleep(check) => {
                report();
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                if epoch.elapsed().saturating_sub(last) >= idle {
                    return Err(CopyError::Idle(idle));
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
