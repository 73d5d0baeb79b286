//! `trellis status` on the network-namespace mesh (see `support/`): run in the control plane's
//! namespace against its loopback `/status`, it lists both sidecars in sync, and the serial it
//! shows follows each certificate renewal (the proxy reopens its discovery stream with every
//! new SVID).
//!
//! Needs root and the binaries built, as `e2e_mesh.rs`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;
use trellis_sandbox::control_plane::STATUS_PORT;
use trellis_sandbox::{Cmd, require_root};

fn status(mesh: &Mesh) -> Option<Value> {
    let out = mesh
        .cp
        .pod()
        .exec_ok(&Cmd::new(env!("CARGO_BIN_EXE_trellis")).args([
            "status",
            "--local",
            &format!("127.0.0.1:{STATUS_PORT}"),
            "-o",
            "json",
        ]))
        .map_err(|e| eprintln!("trellis status: {e}"))
        .ok()?;
    serde_json::from_str(&out)
        .map_err(|e| eprintln!("trellis status: {e}: {out}"))
        .ok()
}

fn row(doc: &Value, id: &str) -> Option<Value> {
    doc["proxies"]
        .as_array()?
        .iter()
        .find(|r| r["identity"] == id)
        .cloned()
}

#[test]
fn status_in_the_mesh_shows_both_sidecars_in_sync_and_follows_certificate_renewals() {
    require_root();
    let mesh = Mesh::start(MeshSpec::default().both(&["--cert-ttl=6s"]));
    let backend = backend_identity().spiffe_id();
    let frontend = frontend_identity().spiffe_id();
    let synced = eventually(Duration::from_secs(15), || {
        let doc = status(&mesh)?;
        let (b, f) = (row(&doc, &backend)?, row(&doc, &frontend)?);
        (b["state"] == "synced" && f["state"] == "synced").then_some(b)
    })
    .expect("both sidecars never showed in sync");
    let first = synced["cert_serial"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!first.is_empty(), "{synced}");
    assert_eq!(synced["mtls"], "STRICT", "{synced}");

    // After a renewal the control plane shows the serial the proxy now holds.
    let renewed = eventually(Duration::from_secs(20), || {
        let held = mesh.backend_proxy.identity().ok()?["serial"]
            .as_str()?
            .to_owned();
        let shown = row(&status(&mesh)?, &backend)?["cert_serial"]
            .as_str()?
            .to_owned();
        (held != first && shown == held).then_some(shown)
    });
    assert!(
        renewed.is_some(),
        "status kept showing {first} after the backend renewed its certificate"
    );
}
