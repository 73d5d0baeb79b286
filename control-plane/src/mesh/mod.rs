//! The mesh model behind discovery: what workloads exist, which policies select them, which
//! namespaces are PERMISSIVE — from the cluster or from a file — and the per-proxy snapshot.
//!
//! Owns: [`crd`] (the AuthorizationPolicy resource), [`model`] (the model and the pure
//! snapshot cut), [`file`] and [`kubernetes`] (the two sources behind one `watch` channel).

pub mod crd;
pub mod file;
pub mod kubernetes;
pub mod model;

pub use model::{MeshModel, MtlsMode, Snapshot};
