//! One CONNECT stream as a byte stream: `AsyncRead` over the HTTP/2 DATA frames received,
//! `AsyncWrite` into DATA frames sent, shutdown as END_STREAM (a TCP half-close carried over).
//!
//! The copy (`crate::copy`) skips the byte-stream traits on the bulk path: it writes the DATA
//! frames [`H2Stream::poll_received`] lends straight to the app, and reads the app's bytes
//! straight into [`send_arena`] chunks that [`H2Stream::poll_send`] queues.
//!
//! Owns: [`H2Stream`]. Written against `h2` directly rather than through hyper's upgrade: hyper
//! hands every write of an upgraded HTTP/2 stream to a task of its own through a channel (one
//! more task wake-up and one more copy per write); here the copy task writes straight into the
//! stream's send queue, and the connection task frames it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::send_arena;

/// The largest single write handed to HTTP/2 (split into frames of the peer's maximum size).
const MAX_WRITE: usize = 64 * 1024;

/// A CONNECT stream's two halves.
#[derive(Debug)]
pub struct H2Stream {
    /// Where our bytes go.
    send: SendStream<Bytes>,
    /// Where the peer's bytes come from.
    recv: RecvStream,
    /// The rest of the last DATA frame not yet read.
    pending: Bytes,
    /// END_STREAM has been sent: writes fail, another shutdown succeeds (h2 would only report
    /// an error, and waiting in `poll_reset` for its reason would wait for ever).
    ended: bool,
}

impl H2Stream {
    /// Joins the halves of an accepted or opened CONNECT stream.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            ended: false,
        }
    }

    /// The error for a stream the peer reset (or whose connection failed).
    fn reset_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        Poll::Ready(match ready!(self.send.poll_reset(cx)) {
            Ok(Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED) => {
                io::ErrorKind::BrokenPipe.into()
            }
            Ok(reason) => io::Error::new(io::ErrorKind::ConnectionReset, reason.to_string()),
            Err(e) => to_io(e),
        })
    }
}

/// An h2 error as an I/O error.
fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::other(e)
    }
}

impl H2Stream {
    /// The received bytes not yet consumed (the rest of the last DATA frame, or the next
    /// frame), lent without a copy; empty at the end of the stream. [`H2Stream::consume`]
    /// takes bytes off the front.
    pub fn poll_received(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(&[])),
                Some(Ok(data)) => {
                    // Reopen the window now: at most one frame waits here, the copy bounds the rest.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) => {
                    return Poll::Ready(match e.reason() {
                        // NO_ERROR: the peer has all it wants; what it sent is complete.
                        Some(Reason::NO_ERROR) => Ok(&[]),
                        // CANCEL: the peer's side was aborted (its app reset the connection).
                        // Not an end of stream: an aborted upload must not look complete.
                        Some(Reason::CANCEL) => Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            "the peer proxy reset the stream",
                        )),
                        Some(Reason::STREAM_CLOSED) => Err(io::ErrorKind::BrokenPipe.into()),
                        _ => Err(to_io(e)),
                    });
                }
            }
        }
        Poll::Ready(Ok(&self.pending))
    }

    /// Takes `n` bytes (at most those lent by [`H2Stream::poll_received`]) off the front of
    /// the received bytes; the frame is let go once all of it is consumed.
    pub fn consume(&mut self, n: usize) {
        if n >= self.pending.len() {
            self.pending = Bytes::new();
        } else {
            self.pending.advance(n);
        }
    }

    /// Sends the front of `chunk` as DATA, as much as the stream's window allows (at most
    /// [`MAX_WRITE`]), and takes it off `chunk`: the chunk is queued as it is, not copied.
    /// Returns the number of bytes sent (not 0 unless `chunk` is empty).
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        self.poll_send_with(cx, chunk.len(), |n| chunk.split_to(n))
    }

    /// Waits until the window takes some of `len` bytes (at most [`MAX_WRITE`]), then sends
    /// `take(n)` (`n` bytes) as DATA: `n`, or the error of a stream that cannot send.
    fn poll_send_with(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        take: impl FnOnce(usize) -> Bytes,
    ) -> Poll<io::Result<usize>> {
        if self.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let want = len.min(MAX_WRITE);
        self.send.reserve_capacity(want);
        let sent = match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(n)) if n > 0 => {
                let n = n.min(want);
                self.send.send_data(take(n), false).ok().map(|()| n)
            }
            // Capacity 0 or none: the stream cannot send any more.
            _ => None,
        };
        match sent {
            Some(n) => Poll::Ready(Ok(n)),
            None => self.reset_error(cx).map(Err),
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let received = ready!(self.poll_received(cx))?;
        let n = received.len().min(buf.remaining());
        buf.put_slice(&received[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // The copy hands over chunks of its own (`poll_send`); a plain write is copied into
        // the arena once, for what the window takes now.
        self.poll_send_with(cx, buf.len(), |n| send_arena::copy_of(&buf[..n]))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes queued frames as soon as it runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
        if self.send.send_data(Bytes::new(), true).is_ok() {
            self.ended = true;
            return Poll::Ready(Ok(()));
        }
        self.reset_error(cx).map(Err)
    }
}
