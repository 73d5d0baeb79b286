//! `trellis describe --admin` on the policy mesh (`support/policy_mesh.rs`): run inside the
//! backend's pod against its proxy's loopback admin endpoint, its verdicts agree with real
//! traffic — the frontend CAN reach port 8080 and gets through; the intruder CANNOT (the
//! policy named) and is refused; afterwards the refusal shows among describe's recent ones.
//!
//! Needs root, python3 and the binaries built, as `e2e_policy.rs`.

mod support;

use serde_json::Value;
use support::policy_mesh::*;
use support::*;
use trellis_sandbox::{Cmd, require_root};

/// `trellis describe --admin 127.0.0.1:15000 ARGS -o json`, run in the backend's pod.
fn describe(mesh: &PolicyMesh, args: &[&str]) -> Value {
    let out = mesh
        .backend
        .exec_ok(
            &Cmd::new(env!("CARGO_BIN_EXE_trellis"))
                .args(["describe", "--admin", "127.0.0.1:15000", "-o", "json"])
                .args(args),
        )
        .expect("trellis describe runs");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("trellis describe answer {out:?}: {e}"))
}

fn verdict_for(mesh: &PolicyMesh, from: &str) -> Value {
    describe(mesh, &["--from", from, "--port", "8080"])
}

#[test]
fn describe_in_the_backend_pod_gives_verdicts_that_real_traffic_bears_out() {
    require_root();
    let mesh = PolicyMesh::start("enforce", &["ns/shop/sa/frontend"]);

    // The frontend: CAN, and it gets through.
    let d = verdict_for(&mesh, FRONTEND_ID);
    assert_eq!(
        d["proxy"]["policy"]["verdict"]["decision"], "allow",
        "{d:#}"
    );
    let line = d["verdict"].as_str().unwrap_or_default();
    assert!(
        line.starts_with(&format!("{FRONTEND_ID} CAN reach")),
        "{d:#}"
    );
    assert!(line.contains("port 8080"), "{d:#}");
    assert_eq!(d["identity"], BACKEND_ID, "{d:#}");
    assert_eq!(d["proxy"]["policy"]["mtls_mode"], "STRICT", "{d:#}");
    assert_eq!(d["pod"], Value::Null, "{d:#}");
    assert_eq!(d["injected"], Value::Null, "{d:#}");
    let rules = d["proxy"]["policy"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        rules
            .iter()
            .any(|r| r["name"] == POLICY && r["ports"] == serde_json::json!([8080])),
        "{d:#}"
    );
    assert!(mesh.reaches_backend(&mesh.frontend, &marker("describe-frontend")));

    // The intruder: CANNOT, the policy named; before it tries, no refusal is shown.
    let d = verdict_for(&mesh, INTRUDER_ID);
    assert_eq!(d["proxy"]["policy"]["verdict"]["decision"], "deny", "{d:#}");
    let line = d["verdict"].as_str().unwrap_or_default();
    assert!(
        line.starts_with(&format!("{INTRUDER_ID} CANNOT reach")) && line.contains(POLICY),
        "{d:#}"
    );
    assert_eq!(d["proxy"]["refusals"], serde_json::json!([]), "{d:#}");
    assert!(
        !mesh.reaches_backend(&mesh.intruder, &marker("describe-intruder")),
        "the intruder reached the backend's app although describe said CANNOT"
    );

    // Plaintext callers in STRICT: CANNOT.
    let d = verdict_for(&mesh, "unauthenticated");
    assert_eq!(d["proxy"]["policy"]["verdict"]["decision"], "deny", "{d:#}");
    assert!(
        d["verdict"].as_str().unwrap_or_default().contains("CANNOT"),
        "{d:#}"
    );

    // Afterwards describe shows the intruder's refusal, with the policy as the reason.
    let refused = eventually(std::time::Duration::from_secs(5), || {
        let d = describe(&mesh, &[]);
        d["proxy"]["refusals"]
            .as_array()?
            .iter()
            .find(|r| r["peer_id"] == INTRUDER_ID)
            .cloned()
    })
    .expect("describe never showed the intruder's refusal");
    assert_eq!(refused["decision"], "deny", "{refused:#}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(POLICY),
        "{refused:#}"
    );
}
