//! One CONNECT stream as a byte stream: `AsyncRead` over the HTTP/2 DATA frames received,
//! `AsyncWrite` into DATA frames sent, shutdown as END_STREAM (a TCP half-close carried over).
//!
//! Owns: [`H2Stream`]. Written against `h2` directly rather than through hyper's upgrade: hyper
//! hands every write of an upgraded HTTP/2 stream to a task of its own through a channel (one
//! more task wake-up and one more copy per write); here the copy task writes straight into the
//! stream's send queue, and the connection task frames it.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest single write handed to HTTP/2 (split into frames of the peer's maximum size).
const MAX_WRITE: usize = 64 * 1024;

/// Size of one allocation of a thread's send arena: four of the largest writes.
const ARENA: usize = 4 * MAX_WRITE;

thread_local! {
    /// The send arena: every stream's writes on this thread are copied into it and split off
    /// as the `Bytes` h2 queues. Once h2 has written (dropped) all the chunks of an
    /// allocation, the arena takes it back, instead of one allocation and free per write. It
    /// is per thread, not per stream, so an idle stream holds nothing.
    static SEND_ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// `data` as `Bytes` cut from this thread's send arena.
fn arena_bytes(data: &[u8]) -> Bytes {
    SEND_ARENA.with(|arena| {
        let mut arena = arena.borrow_mut();
        if arena.capacity() < data.len() {
            // Takes the allocation back when no chunk of it is left, else starts a new one
            // (the old is freed when h2 drops its last chunk).
            arena.reserve(ARENA.max(data.len()));
        }
        arena.extend_from_slice(data);
        arena.split().freeze()
    })
}

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

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // Reopen the window now: at most one frame waits here, the copy bounds the rest.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) => {
                    return Poll::Ready(match e.reason() {
                        // NO_ERROR: the peer has all it wants; what it sent is complete.
                        Some(Reason::NO_ERROR) => Ok(()),
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
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let want = buf.len().min(MAX_WRITE);
        self.send.reserve_capacity(want);
        let sent = match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(n)) if n > 0 => {
                let n = n.min(want);
                self.send
                    .send_data(arena_bytes(&buf[..n]), false)
                    .ok()
                    .map(|()| n)
            }
            // Capacity 0 or none: the stream cannot send any more.
            _ => None,
        };
        match sent {
            Some(n) => Poll::Ready(Ok(n)),
            None => self.reset_error(cx).map(Err),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_chunks_hold_their_bytes_and_a_released_allocation_is_reused() {
        // Each test runs on a thread of its own: the arena starts empty.
        let first = arena_bytes(b"hello");
        assert_eq!(&first[..], b"hello");
        let start = first.as_ptr();
        let held = arena_bytes(b", world");
        assert_eq!(&held[..], b", world");
        assert_eq!(
            held.as_ptr(),
            start.wrapping_add(5),
            "cut from the same allocation"
        );
        drop(first);
        // Filling the arena while a chunk is held starts a new allocation...
        let big = arena_bytes(&vec![7u8; ARENA]);
        assert!(big.iter().all(|&b| b == 7));
        assert_ne!(big.as_ptr(), start);
        assert_eq!(&held[..], b", world", "a held chunk is never overwritten");
        // ...and once all of an allocation's chunks are gone, it is taken back.
        let second_start = big.as_ptr();
        drop(big);
        drop(held);
        let again = arena_bytes(&vec![9u8; ARENA]);
        assert_eq!(
            again.as_ptr(),
            second_start,
            "the released allocation is reused"
        );
        assert!(again.iter().all(|&b| b == 9));
    }
}
