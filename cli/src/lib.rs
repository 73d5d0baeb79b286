//! `trellis`: the library half of the `trellis` command-line tool.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`sandbox`] | pods on one machine (network namespaces on a bridge) running the Trellis binaries: the ground of `trellis demo` and of the end-to-end tests |
//!
//! The subcommands themselves (`svid fetch`, `version`) live in the binary, `src/main.rs`.

#![forbid(unsafe_code)]

pub mod sandbox;
