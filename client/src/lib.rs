//! `trellis-client`: how workloads and tools talk to the control plane.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`channel`] | a gRPC channel over TLS 1.3 that trusts only the given bundle and checks the control plane's SPIFFE ID |
//! | [`diagnose`] | why a connection failed, in words an operator can act on (never a debug structure) |
//! | [`certify`] | `Certify`: send a CSR with a bearer token, check what comes back, return a [`trellis_ca::Svid`] |
//!
//! Protobuf types stay inside this crate; callers see `trellis_ca` types.

#![forbid(unsafe_code)]

pub mod certify;
pub mod channel;
pub mod diagnose;

pub use certify::{CertifyError, IdentityClient};
pub use channel::{ChannelError, connect, connect_from, parse_address};
pub use diagnose::ConnectFailure;
