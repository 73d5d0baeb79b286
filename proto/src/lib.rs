//! `trellis-proto`: the protobuf messages and gRPC stubs shared by the control plane and the
//! proxy, generated from `proto/**/*.proto` and committed under `src/gen/` (as linkerd2-proxy
//! does), so that building needs no `protoc`. The test `generated_code_is_current` regenerates
//! the code and fails if the committed files drift from the `.proto` sources; run it with
//! `TRELLIS_REGENERATE_PROTO=1` to rewrite them.
//!
//! Client stubs are behind the `client` feature and server traits behind `server`, so the proxy
//! links no server code. Protobuf types must not travel past the module that converts them.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// `trellis.identity.v1`: the `Identity` service (`Certify`).
pub mod identity {
    include!("gen/trellis.identity.v1.rs");
}

/// `istio.v1.auth`: Istio's `IstioCertificateService` (`CreateCertificate`), for compatibility.
pub mod istio {
    include!("gen/istio.v1.auth.rs");
}

/// `trellis.discovery.v1`: the `Discovery` service (`Watch`): endpoints and inbound policy.
pub mod discovery {
    include!("gen/trellis.discovery.v1.rs");
}
