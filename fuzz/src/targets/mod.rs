//! The fuzz targets, one module per parser family. Each takes arbitrary bytes, feeds them to
//! the real parser the way its caller does (same size caps, same text decoding), and asserts
//! the properties that must hold for whatever the parser accepts.

pub mod admission;
pub mod connect;
pub mod control_plane;
pub mod csr;
pub mod spiffe;
pub mod svid_chain;

/// The input as UTF-8 text, as the callers read it (`read_to_string`, `&str` metadata), or
/// `None` for bytes the caller would have refused before parsing.
pub(crate) fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A target whose set-up (keys, bundles, policies) is made once, before the fuzzer's loop.
pub trait Stateful {
    /// Runs one input; panics only on a bug.
    fn run(&self, data: &[u8]);
}

/// The fuzzer's entry point for a [`Stateful`] target.
pub(crate) fn harness<T: Stateful + 'static>(target: T) -> crate::Harness {
    // `run` takes `&self` and the targets hold no interior mutability that a panic could leave
    // half-changed, so nothing inconsistent is observed after one.
    let target = std::panic::AssertUnwindSafe(target);
    Box::new(move |data| {
        // `&target` captures the wrapper whole (a field access would capture only `.0`).
        let target = &target;
        target.0.run(data)
    })
}
