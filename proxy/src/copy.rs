//! Moving bytes both ways between two streams: half-close passed on, backpressure from the
//! slower side (one buffer per direction while it holds bytes, lent by [`copy_buffers`]), an
//! idle timeout, and live byte counts for the connection record. A direction from or to a
//! tunnel stream ([`H2Stream`]) needs no copy buffer: it writes the received DATA frames
//! straight to the other side, or reads straight into the chunks the stream sends.
//!
//! Owns: [`bidirectional`] and [`Endpoint`]. Callers decide what the two ends are.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use bytes::Bytes;

use crate::copy_buffers;
use crate::records::ConnRecord;
use crate::tunnel::send_arena;
use crate::tunnel::stream::H2Stream;

/// One end of a copy: a byte stream, and whether it is a tunnel stream (whose own chunks the
/// copy then moves instead of copying them through a buffer).
pub trait Endpoint: AsyncRead + AsyncWrite + Unpin {
    /// The tunnel stream this end is, if it is one.
    fn as_tunnel(&mut self) -> Option<&mut H2Stream> {
        None
    }
}

impl Endpoint for tokio::net::TcpStream {}

impl Endpoint for H2Stream {
    fn as_tunnel(&mut self) -> Option<&mut H2Stream> {
        Some(self)
    }
}

impl<T: Endpoint + ?Sized> Endpoint for &mut T {
    fn as_tunnel(&mut self) -> Option<&mut H2Stream> {
        (**self).as_tunnel()
    }
}

/// Starting read size for each direction (the buffer itself is lent by [`copy_buffers`] only
/// while the direction holds bytes: an idle connection holds none).
const BUF_START: usize = copy_buffers::SMALLEST;
/// A direction whose reads keep filling the buffer (a bulk transfer) gets it doubled up to
/// this: 64 KiB reads and writes take an eighth of the system calls of 8 KiB ones.
const BUF_MAX: usize = copy_buffers::LARGEST;

/// One direction's state: bytes read and not yet written sit in `buf[pos..end]` (or, towards
/// a tunnel stream, in `chunk`).
struct OneWay {
    /// The buffer while the direction holds bytes or reads; empty (given back) while it waits.
    buf: Vec<u8>,
    /// Towards a tunnel stream: the bytes read and not yet sent.
    chunk: Bytes,
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
            chunk: Bytes::new(),
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

    /// Copies from `r` to `w` until `r` ends (then shuts `w` down) or an error occurs;
    /// `meter` counts the bytes.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        meter: &Meter<'_>,
    ) -> Poll<io::Result<()>>
    where
        R: Endpoint + ?Sized,
        W: Endpoint + ?Sized,
    {
        if let Some(tunnel) = r.as_tunnel() {
            return self.poll_from_tunnel(cx, tunnel, Pin::new(w), meter);
        }
        if let Some(tunnel) = w.as_tunnel() {
            return self.poll_to_tunnel(cx, Pin::new(r), tunnel, meter);
        }
        self.poll_buffered(cx, Pin::new(r), Pin::new(w), meter)
    }

    /// The next read size: one full read earns one doubling up to [`BUF_MAX`]. Cleared here,
    /// so that polls finding nothing to read (woken by the other direction) do not grow it again.
    fn next_size(&mut self) -> usize {
        if std::mem::take(&mut self.last_read_full) && self.size < BUF_MAX {
            self.size = (self.size * 2).min(BUF_MAX);
        }
        self.size
    }

    /// From a tunnel stream: its DATA frames are written to `w` as they came.
    fn poll_from_tunnel<W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut H2Stream,
        mut w: Pin<&mut W>,
        meter: &Meter<'_>,
    ) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + ?Sized,
    {
        while !self.read_done {
            let received = match r.poll_received(cx) {
                Poll::Pending => {
                    if self.need_flush {
                        ready!(w.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(res) => res?,
            };
            if received.is_empty() {
                self.read_done = true;
                break;
            }
            let n = ready!(w.as_mut().poll_write(cx, received))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            r.consume(n);
            meter.add(n);
            self.need_flush = true;
        }
        ready!(w.as_mut().poll_flush(cx))?;
        self.need_flush = false;
        w.poll_shutdown(cx)
    }

    /// To a tunnel stream: reads go straight into the chunks it sends.
    fn poll_to_tunnel<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        w: &mut H2Stream,
        meter: &Meter<'_>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
    {
        loop {
            if self.chunk.is_empty() && !self.read_done {
                let size = self.next_size();
                let chunk = ready!(send_arena::poll_read_chunk(r.as_mut(), cx, size))?;
                meter.add(chunk.len());
                self.read_done = chunk.is_empty();
                self.last_read_full = chunk.len() == size;
                self.chunk = chunk;
            }
            while !self.chunk.is_empty() {
                ready!(w.poll_send(cx, &mut self.chunk))?;
            }
            if self.read_done {
                return Pin::new(w).poll_shutdown(cx);
            }
        }
    }

    /// Between two plain streams, through a copy buffer.
    fn poll_buffered<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        meter: &Meter<'_>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.end && !self.read_done {
                let size = self.next_size();
                if self.buf.len() != size {
                    self.release();
                    self.buf = copy_buffers::take(size);
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
                        meter.add(n);
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

/// Copies both ways until both directions have ended: `meter_a` counts the bytes from `a`,
/// `meter_b` those from `b`.
async fn copy_both<A, B>(
    a: &mut A,
    b: &mut B,
    meter_a: &Meter<'_>,
    meter_b: &Meter<'_>,
) -> io::Result<()>
where
    A: Endpoint,
    B: Endpoint,
{
    let mut a_to_b = Some(OneWay::new());
    let mut b_to_a = Some(OneWay::new());
    std::future::poll_fn(|cx| {
        if let Some(d) = a_to_b.as_mut()
            && d.poll_copy(cx, &mut *a, &mut *b, meter_a)?.is_ready()
        {
            a_to_b = None; // frees the buffer of a finished direction
        }
        if let Some(d) = b_to_a.as_mut()
            && d.poll_copy(cx, &mut *b, &mut *a, meter_b)?.is_ready()
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

/// Counts the bytes one direction moves and stamps activity.
struct Meter<'a> {
    /// Where to add the bytes.
    counter: &'a AtomicU64,
    /// Milliseconds since `epoch` of the last byte either way.
    activity: &'a AtomicU64,
    /// Reference point for `activity`.
    epoch: Instant,
}

impl Meter<'_> {
    /// Counts `n` bytes moved now.
    fn add(&self, n: usize) {
        if n > 0 {
            self.counter.fetch_add(n as u64, Ordering::Relaxed);
            let ms = self.epoch.elapsed().as_millis() as u64;
            self.activity.store(ms, Ordering::Relaxed);
        }
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
    A: Endpoint,
    B: Endpoint,
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
    A: Endpoint,
    B: Endpoint,
{
    let activity = AtomicU64::new(0);
    let epoch = Instant::now();
    let meter_a = Meter {
        counter: &record.bytes_sent,
        activity: &activity,
        epoch,
    };
    let meter_b = Meter {
        counter: &record.bytes_received,
        activity: &activity,
        epoch,
    };
    let (mut a, mut b) = (client, server);
    let copy = copy_both(&mut a, &mut b, &meter_a, &meter_b);
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
