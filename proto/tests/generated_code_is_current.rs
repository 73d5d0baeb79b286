//! Regenerates the gRPC code from `proto/` with `protoc` and compares it with the committed
//! `src/gen/`. Set `TRELLIS_REGENERATE_PROTO=1` to overwrite the committed files instead.

use std::path::{Path, PathBuf};

const PROTOS: &[&str] = &[
    "proto/trellis/identity/v1/identity.proto",
    "proto/istio/v1/auth/ca.proto",
    "proto/trellis/discovery/v1/discovery.proto",
];

fn generate(out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .emit_rerun_if_changed(false)
        .out_dir(out);
    for package in [
        "trellis.identity.v1",
        "istio.v1.auth",
        "trellis.discovery.v1",
    ] {
        builder = builder
            .client_mod_attribute(package, "#[cfg(feature = \"client\")]")
            .server_mod_attribute(package, "#[cfg(feature = \"server\")]");
    }
    builder
        .compile_protos(&protos, &[root.join("proto")])
        .expect(
            "protoc must be installed (Debian: protobuf-compiler; ./scripts/setup installs it)",
        );
}

#[test]
fn generated_code_is_current() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gen");
    if std::env::var_os("TRELLIS_REGENERATE_PROTO").is_some() {
        generate(&committed);
        return;
    }
    let fresh = tempfile::tempdir().unwrap();
    generate(fresh.path());
    let mut names: Vec<_> = std::fs::read_dir(fresh.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "protoc generated nothing");
    for name in names {
        let want = std::fs::read_to_string(fresh.path().join(&name)).unwrap();
        let have = std::fs::read_to_string(committed.join(&name)).unwrap_or_default();
        assert!(
            want == have,
            "src/gen/{} is out of date with proto/: run TRELLIS_REGENERATE_PROTO=1 cargo test -p trellis-proto",
            name.to_string_lossy()
        );
    }
}
