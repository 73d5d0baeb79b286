//! The mesh model behind discovery: what workloads and Services exist, which policies select
//! which workloads, which namespaces are PERMISSIVE — from the cluster or from a file — and
//! what changed from one version to the next.
//!
//! Owns: [`crd`] (the AuthorizationPolicy resource), [`model`] (the model and the pure
//! per-proxy inbound cut), [`publish`] (versions, changes, "what changed since v"), [`file`]
//! and [`kubernetes`] (the two sources, each handing whole models to the [`Publisher`]).

pub mod crd;
pub mod file;
pub mod kubernetes;
pub mod model;
pub mod publish;

pub use model::{MeshModel, MtlsMode};
pub use publish::{Change, MeshView, Publisher, Since};
