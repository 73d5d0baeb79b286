//! `trellis-telemetry`: how every Trellis binary logs, so that an operator reads the proxy, the
//! control plane and the injector the same way.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`args`] | the flags `--log <filter>` and `--log-format text\|json` (env `TRELLIS_LOG`, `TRELLIS_LOG_FORMAT`) and their old names |
//! | [`filter`] | checking a filter text before it is used (pure): a typo is an error, not a silent `trace` |
//! | [`json`] | the JSON line format: `timestamp`, `level`, `target`, `span`, `message`, then span and event fields, flat |
//! | [`install`] | building the subscriber (stderr, text or JSON) and [`LogHandle`], which reads and replaces the filter at run time |
//! | [`capture`] | [`LogBuffer`]: lines kept in memory, for tests |
//! | [`process_metrics`] | `trellis_build_info` and the standard `process_*` metrics every binary exposes alike |
//!
//! Metrics stay with the part that counts them; this crate owns logs and the few metrics every
//! process exposes alike (build, CPU, memory, file descriptors). It is a crate of its
//! own because every binary needs it and none of the shared crates fits: `trellis-ca` does no
//! I/O, and `trellis-client` would pull gRPC into the injector.

#![forbid(unsafe_code)]

pub mod args;
pub mod capture;
pub mod filter;
pub mod install;
pub mod json;
pub mod process_metrics;

pub use args::{LogArgs, LogFormat, LogSettings};
pub use capture::{LogBuffer, thread_default};
pub use filter::{FilterError, check_filter};
pub use install::{LogError, LogHandle, init, subscriber};
