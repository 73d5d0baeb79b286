//! The copy buffers: lent to a direction of a proxied connection only while it holds bytes
//! (read and not yet written), and kept in a small pool per thread in between. An idle
//! connection then holds no buffer at all (two 8 KiB buffers per connection were 16 of the
//! ~20 KiB each open connection cost, issue 17), and a bulk transfer reuses the same 64 KiB
//! buffers instead of allocating and freeing them (glibc trims the heap top after a free, and
//! the next allocation faults the pages in again).
//!
//! Owns: [`take`], [`give`] and the pool's bounds ([`class`], [`kept`]).

use std::cell::RefCell;

/// The smallest buffer: 8 KiB.
pub const SMALLEST: usize = 8 * 1024;
/// The largest buffer: 64 KiB.
pub const LARGEST: usize = 64 * 1024;
/// Size classes: 8, 16, 32 and 64 KiB.
const CLASSES: usize = 4;

thread_local! {
    /// Free buffers per size class.
    static POOL: RefCell<[Vec<Vec<u8>>; CLASSES]> = const { RefCell::new([const { Vec::new() }; CLASSES]) };
}

/// The size class of a buffer of `len` bytes: `None` unless `len` is 8, 16, 32 or 64 KiB.
pub fn class(len: usize) -> Option<usize> {
    if !len.is_power_of_two() || !(SMALLEST..=LARGEST).contains(&len) {
        return None;
    }
    Some((len / SMALLEST).trailing_zeros() as usize)
}

/// How many free buffers of a class the pool keeps: enough 8 KiB ones for the requests of a
/// burst in flight at once, a few bulk ones (at most 416 KiB in all per thread).
pub const fn kept(class: usize) -> usize {
    match class {
        0 => 16,
        1 | 2 => 2,
        _ => 4,
    }
}

/// A buffer of `len` bytes (8, 16, 32 or 64 KiB; other lengths are rounded up into that
/// range), from the pool when it has one. Its contents are whatever the last user left.
pub fn take(len: usize) -> Vec<u8> {
    let len = len.clamp(SMALLEST, LARGEST).next_power_of_two();
    let reused = class(len).and_then(|c| POOL.with(|p| p.borrow_mut()[c].pop()));
    reused.unwrap_or_else(|| vec![0; len])
}

/// Returns `buf` to the pool (or frees it when its class is full or it is of no class).
pub fn give(buf: Vec<u8>) {
    let Some(c) = class(buf.len()) else { return };
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool[c].len() < kept(c) {
            pool[c].push(buf);
        }
    });
}

/// Free buffers held by this thread's pool, per class (for tests).
#[cfg(test)]
pub fn pooled() -> [usize; CLASSES] {
    POOL.with(|p| p.borrow().each_ref().map(Vec::len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_powers_of_two_from_8_to_64_kib_have_a_class() {
        let cases = [
            (8 * 1024, Some(0)),
            (16 * 1024, Some(1)),
            (32 * 1024, Some(2)),
            (64 * 1024, Some(3)),
            (4 * 1024, None),
            (128 * 1024, None),
            (12 * 1024, None),
            (0, None),
        ];
        for (len, want) in cases {
            assert_eq!(class(len), want, "len {len}");
        }
    }

    #[test]
    fn a_given_buffer_is_taken_again_and_a_full_class_frees_the_rest() {
        // Each test runs on a thread of its own: the pool starts empty.
        let first = take(SMALLEST);
        let ptr = first.as_ptr();
        give(first);
        assert_eq!(pooled(), [1, 0, 0, 0]);
        let again = take(SMALLEST);
        assert_eq!(again.as_ptr(), ptr, "the pooled buffer is reused");
        assert_eq!(pooled(), [0, 0, 0, 0]);
        give(again);
        for _ in 0..10 {
            give(vec![0; LARGEST]);
        }
        assert_eq!(pooled(), [1, 0, 0, kept(3)]);
        give(vec![0; 100]);
        assert_eq!(pooled(), [1, 0, 0, kept(3)], "odd sizes are not kept");
        assert_eq!(take(20_000).len(), 32 * 1024, "rounded up to a class");
        assert_eq!(take(1).len(), SMALLEST);
        assert_eq!(take(1 << 20).len(), LARGEST);
    }
}
