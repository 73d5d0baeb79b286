//! The send arena: the memory of the bytes the tunnel streams of a thread hand to HTTP/2. Every
//! write is cut from a block of [`BLOCK`] bytes and queued as a `Bytes` chunk of it; once h2
//! has written (dropped) every chunk of a block, the block is reused — the current one and up
//! to [`KEPT`] earlier ones, so a bulk transfer cycles through the same few blocks instead of
//! allocating and freeing (glibc then trims the heap and the next block faults its pages in
//! again, issue 17). It is per thread, not per stream: an idle stream holds nothing.
//!
//! Owns: [`copy_of`], [`poll_read_chunk`] and the blocks kept.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncRead;

/// Size of one block: four of the largest writes (64 KiB).
pub const BLOCK: usize = 256 * 1024;
/// Earlier blocks kept for reuse: at most 1 MiB besides the current block.
pub const KEPT: usize = 4;

/// A thread's blocks.
#[derive(Default)]
struct Arena {
    /// The block being cut (none before the first write).
    current: Option<BytesMut>,
    /// Earlier blocks, oldest first: some of their chunks may still be queued.
    retired: VecDeque<BytesMut>,
}

impl Arena {
    /// The current block, with room for `len` more bytes: the block itself when it has the
    /// room or all its chunks are back, else the first earlier block whose chunks are all back,
    /// else a new one. The block given up is kept (the oldest kept one is let go if there are
    /// [`KEPT`]).
    fn room(&mut self, len: usize) -> &mut BytesMut {
        let fits = self
            .current
            .as_mut()
            .is_some_and(|block| block.try_reclaim(len));
        if !fits {
            let reused = self
                .retired
                .iter_mut()
                .position(|block| block.try_reclaim(len))
                .and_then(|i| self.retired.remove(i));
            let next = reused.unwrap_or_else(|| BytesMut::with_capacity(BLOCK.max(len)));
            if let Some(old) = self.current.replace(next) {
                if self.retired.len() == KEPT {
                    self.retired.pop_front();
                }
                self.retired.push_back(old);
            }
        }
        self.current.get_or_insert_with(BytesMut::new)
    }
}

thread_local! {
    /// This thread's arena.
    static ARENA: RefCell<Arena> = RefCell::new(Arena::default());
}

/// `data` copied into this thread's arena, as a chunk h2 can queue.
pub fn copy_of(data: &[u8]) -> Bytes {
    ARENA.with(|arena| {
        let mut arena = arena.borrow_mut();
        let block = arena.room(data.len());
        block.extend_from_slice(data);
        block.split().freeze()
    })
}

/// Reads at most `max` bytes from `r` straight into this thread's arena: the bytes read, as a
/// chunk h2 can queue without a copy (empty at the end of `r`). A read that is not ready holds
/// no memory.
pub fn poll_read_chunk<R: AsyncRead + ?Sized>(
    r: Pin<&mut R>,
    cx: &mut Context<'_>,
    max: usize,
) -> Poll<io::Result<Bytes>> {
    ARENA.with(|arena| {
        let mut arena = arena.borrow_mut();
        let block = arena.room(max);
        ready!(tokio_util::io::poll_read_buf(r, cx, &mut block.limit(max)))?;
        Poll::Ready(Ok(block.split().freeze()))
    })
}

/// The number of blocks this thread holds (current and kept), for tests.
#[cfg(test)]
fn blocks() -> usize {
    ARENA.with(|arena| {
        let arena = arena.borrow();
        usize::from(arena.current.is_some()) + arena.retired.len()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test runs on a thread of its own: the arena starts empty.

    #[test]
    fn chunks_hold_their_bytes_and_are_cut_from_one_block() {
        let first = copy_of(b"hello");
        let held = copy_of(b", world");
        assert_eq!(&first[..], b"hello");
        assert_eq!(&held[..], b", world");
        assert_eq!(
            held.as_ptr(),
            first.as_ptr().wrapping_add(5),
            "cut from the same block"
        );
        // Filling the block while a chunk is held starts a new one; the held chunk is intact.
        let big = copy_of(&vec![7u8; BLOCK]);
        assert!(big.iter().all(|&b| b == 7));
        assert_eq!(&held[..], b", world", "a held chunk is never overwritten");
        assert_eq!(blocks(), 2);
    }

    #[test]
    fn a_block_whose_chunks_are_all_back_is_reused_and_at_most_kept_blocks_stay() {
        let first = copy_of(&vec![1u8; BLOCK]);
        let first_ptr = first.as_ptr();
        // The first block is full and its chunk held: the next write starts a second block.
        let second = copy_of(&vec![2u8; BLOCK]);
        assert_ne!(second.as_ptr(), first_ptr);
        drop(first);
        // The second is full and held, the first is back: it is reused, not a new one.
        let third = copy_of(&vec![3u8; BLOCK]);
        assert_eq!(third.as_ptr(), first_ptr, "the block given back is reused");
        assert!(second.iter().all(|&b| b == 2) && third.iter().all(|&b| b == 3));
        // Blocks whose chunks stay queued: new blocks, of which KEPT earlier ones are kept.
        let held: Vec<Bytes> = (0..2 * KEPT).map(|_| copy_of(&vec![4u8; BLOCK])).collect();
        assert_eq!(blocks(), 1 + KEPT);
        drop((second, third, held));
    }
}
