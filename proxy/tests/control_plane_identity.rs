//! The control plane may run in any namespace: a proxy checks the control plane's SPIFFE ID,
//! which names that namespace, and is told it (`--control-plane-id`, set by the injector from
//! the chart's release namespace). One told the wrong namespace refuses the control plane.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;
use trellis_telemetry::{LogBuffer, LogFormat, LogSettings};

const IN_MESH_SYSTEM: &str = "spiffe://cluster.local/ns/mesh-system/sa/trellis-control-plane";

#[tokio::test]
async fn a_proxy_told_a_control_plane_in_another_namespace_gets_its_certificate_there() {
    let cp = ControlPlane::start(&["--namespace=mesh-system"]).await;
    let p = proxy(
        &cp,
        TOKENS[1].0,
        &[format!("--control-plane-id={IN_MESH_SYSTEM}")],
    )
    .await;
    assert_eq!(
        p.ctx.config.control_plane_id.to_string(),
        IN_MESH_SYSTEM,
        "the flag is what the proxy checks"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_proxy_expecting_another_namespace_refuses_the_control_plane_and_says_why() {
    let buffer = LogBuffer::default();
    let settings = LogSettings {
        filter: "warn".into(),
        format: LogFormat::Json,
        ansi: false,
    };
    let (dispatch, _) = trellis_telemetry::subscriber(&settings, buffer.clone()).unwrap();
    let _logs = trellis_telemetry::thread_default(&dispatch);
    let cp = ControlPlane::start(&["--namespace=mesh-system"]).await;
    // No --control-plane-id: the default, in trellis-system.
    let p = proxy_started(&cp, TOKENS[1].0, &[], None).await;
    let failed = |line: &String| line.contains("certificate request failed");
    assert!(
        eventually(Duration::from_secs(10), || buffer
            .lines()
            .iter()
            .any(failed))
        .await,
        "no failed request logged: {:#?}",
        buffer.lines()
    );
    let lines = buffer.lines();
    let line = lines.iter().find(|l| failed(l)).unwrap();
    assert!(
        line.contains(&format!(
            "server presented {IN_MESH_SYSTEM} but spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane was expected"
        )),
        "the error names the identity presented and the one expected: {line}"
    );
    assert!(p.ctx.svid.borrow().is_none(), "no certificate was taken");
    p.shutdown().await;
}
