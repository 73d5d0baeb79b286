//! `trellis-listener`: what every Trellis listener that faces the network shares.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`bind`] | listening sockets with an accept queue deep enough for a restart storm's burst of SYNs |
//! | [`accept`] | the accept loop's step: back off on accept errors (EMFILE, ENFILE, ENOBUFS, ENOMEM) instead of spinning, warn at a bounded rate |
//! | [`caps`] | per-source and total caps on connections in some phase (pending TLS handshakes, established tunnels): the pure decision and the counting [`caps::Gate`] |
//!
//! The control plane's gRPC and metrics listeners and every proxy listener (15000, 15001,
//! 15006, 15008, 15020) accept through [`accept::Acceptor`]; the control plane's pending
//! handshakes and the proxy's tunnel handshakes and connections are counted by [`caps::Gate`]s.

#![forbid(unsafe_code)]

pub mod accept;
pub mod bind;
pub mod caps;

pub use accept::Acceptor;
pub use bind::bind;
pub use caps::{Admission, CapRefusal, Caps, Entry, Gate, Ticket, Waiter};
