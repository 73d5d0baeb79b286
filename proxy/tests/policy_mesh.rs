//! Allow-lists end to end on loopback: a control plane with a mesh file, proxies subscribed to
//! discovery, policies enforced at the tunnel, changed at run time.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::*;
use trellis_proxy::records::Direction;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const INTRUDER: &str = "spiffe://cluster.local/ns/evil/sa/intruder";

fn mesh_file(path: &Path, app: SocketAddr, mode: &str, allow: &str) {
    mesh_file_allowing(path, app, mode, &[allow]);
}

fn mesh_file_allowing(path: &Path, app: SocketAddr, mode: &str, allow: &[&str]) {
    let allow = allow.join("\", \"");
    let text = format!(
        "workloads:\n  - {{namespace: shop, serviceAccount: backend, ip: 127.0.0.1, port: {port}, labels: {{app: backend}}}}\n\
         policies:\n  - apiVersion: trellis.dev/v1alpha1\n    kind: AuthorizationPolicy\n    metadata: {{name: backend-allow, namespace: shop}}\n    spec: {{selector: {{matchLabels: {{app: backend}}}}, ports: [{port}], allow: [\"{allow}\"], mode: {mode}}}\n",
        port = app.port()
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

struct Mesh {
    cp: ControlPlane,
    mesh: std::path::PathBuf,
    app: SocketAddr,
    backend: trellis_proxy::run::Running,
    frontend: trellis_proxy::run::Running,
    intruder: trellis_proxy::run::Running,
}

async fn mesh(mode: &str) -> Mesh {
    let app = echo_app().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let mesh = dir.join("mesh.yaml");
    mesh_file(&mesh, app, mode, "ns/shop/sa/frontend");
    let cp = ControlPlane::start(&[&format!("--mesh-file={}", mesh.display())]).await;
    let backend = proxy(&cp, TOKENS[1].0, &[]).await;
    let tunnel = backend.addrs.tunnel.unwrap();
    let client = |token: &'static str| {
        let cp = &cp;
        async move {
            proxy(
                cp,
                token,
                &[
                    format!("--outbound=127.0.0.1:0={app}"),
                    format!("--workload={app}=spiffe://cluster.local/ns/shop/sa/backend@{tunnel}"),
                ],
            )
            .await
        }
    };
    let frontend = client(TOKENS[0].0).await;
    let intruder = client(TOKENS[2].0).await;
    // The backend applies its policy once its discovery stream delivered it.
    assert!(
        eventually(Duration::from_secs(10), || !backend
            .ctx
            .state
            .borrow()
            .policy
            .rules
            .is_empty())
        .await,
        "backend never received its policy"
    );
    Mesh {
        cp,
        mesh,
        app,
        backend,
        frontend,
        intruder,
    }
}

fn last_inbound(p: &trellis_proxy::run::Running, peer: &str) -> Option<(String, String)> {
    p.ctx
        .log
        .recent(100)
        .iter()
        .rev()
        .find(|r| r.direction == Direction::Inbound && r.peer_id.as_deref() == Some(peer))
        .map(|r| (r.decision.to_string(), r.reason.clone()))
}

#[tokio::test]
async fn the_allowed_identity_passes_and_an_intruder_is_denied_with_its_identity_recorded() {
    let m = mesh("enforce").await;
    let via = |p: &trellis_proxy::run::Running| p.addrs.explicit_outbound[0];
    assert_eq!(roundtrip(via(&m.frontend), b"hi").await.unwrap(), b"hi");
    let denied = roundtrip(via(&m.intruder), b"hi").await.unwrap_or_default();
    assert!(denied.is_empty(), "the intruder got bytes back");
    assert!(
        eventually(Duration::from_secs(5), || last_inbound(
            &m.backend, INTRUDER
        )
        .is_some())
        .await
    );
    let (decision, reason) = last_inbound(&m.backend, INTRUDER).unwrap();
    assert_eq!(decision, "deny");
    assert!(
        reason.contains(INTRUDER) && reason.contains("shop/backend-allow"),
        "{reason}"
    );
    assert_eq!(last_inbound(&m.backend, FRONTEND).unwrap().0, "allow");
    let metrics = m.backend.ctx.metrics.render();
    assert!(
        metrics.contains(&format!(
            "decision=\"deny\",port=\"{}\",peer_id=\"{INTRUDER}\"",
            m.app.port()
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_policy_changed_at_run_time_applies_to_new_connections_within_two_seconds() {
    let m = mesh("enforce").await;
    let via = m.intruder.addrs.explicit_outbound[0];
    assert!(roundtrip(via, b"x").await.unwrap_or_default().is_empty());
    mesh_file(&m.mesh, m.app, "enforce", "ns/evil/sa/intruder");
    let started = std::time::Instant::now();
    let mut allowed = false;
    while started.elapsed() < Duration::from_secs(2) {
        if roundtrip(via, b"x").await.unwrap_or_default() == b"x" {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(allowed, "new policy not applied within 2s");
    let frontend_now = roundtrip(m.frontend.addrs.explicit_outbound[0], b"x")
        .await
        .unwrap_or_default();
    assert!(
        frontend_now.is_empty(),
        "the frontend is no longer on the allow-list"
    );
}

#[tokio::test]
async fn audit_mode_lets_the_intruder_through_and_records_would_deny() {
    let m = mesh("audit").await;
    assert_eq!(
        roundtrip(m.intruder.addrs.explicit_outbound[0], b"a")
            .await
            .unwrap(),
        b"a"
    );
    assert!(
        eventually(Duration::from_secs(5), || last_inbound(
            &m.backend, INTRUDER
        )
        .is_some())
        .await
    );
    let (decision, reason) = last_inbound(&m.backend, INTRUDER).unwrap();
    assert_eq!(decision, "would-deny");
    assert!(reason.contains("shop/backend-allow"), "{reason}");
}

#[tokio::test]
async fn with_the_control_plane_down_the_last_policy_stays_enforced() {
    let m = mesh("enforce").await;
    m.cp.running.shutdown(Duration::from_secs(1)).await;
    assert!(
        eventually(Duration::from_secs(10), || m
            .backend
            .ctx
            .metrics
            .render()
            .contains("trellis_proxy_discovery_connected 0"))
        .await,
        "the backend should notice the control plane is gone"
    );
    assert!(
        roundtrip(m.intruder.addrs.explicit_outbound[0], b"x")
            .await
            .unwrap_or_default()
            .is_empty()
    );
    assert_eq!(
        roundtrip(m.frontend.addrs.explicit_outbound[0], b"y")
            .await
            .unwrap(),
        b"y"
    );
}

/// Plaintext arriving at the backend in PERMISSIVE mode (its explicit inbound listener standing
/// for the app port) meets the policy as a caller without identity.
#[tokio::test]
async fn permissive_plaintext_is_checked_against_the_policy_as_an_unauthenticated_caller() {
    let m = mesh("enforce").await;
    let plain = proxy(
        &m.cp,
        TOKENS[1].0,
        &[
            "--mtls-mode=permissive".into(),
            "--inbound-listen=127.0.0.1:0".into(),
            format!("--inbound-target={}", m.app),
        ],
    )
    .await;
    let inbound = plain.addrs.inbound.unwrap();
    let last_plain = || {
        plain
            .ctx
            .log
            .recent(100)
            .iter()
            .rev()
            .find(|r| r.direction == Direction::InboundPlain)
            .map(|r| (r.decision.to_string(), r.reason.clone()))
    };
    let policy_applied = |allow_unauthenticated: bool, audit: bool| {
        let rules = plain.ctx.state.borrow().policy.rules.clone();
        rules.iter().any(|r| {
            r.allow_unauthenticated == allow_unauthenticated
                && (r.mode == trellis_proxy::policy::RuleMode::Audit) == audit
        })
    };
    assert!(eventually(Duration::from_secs(10), || policy_applied(false, false)).await);

    // A policy naming identities only: plaintext is refused, naming the caller and the policy.
    let reply = roundtrip(inbound, b"plain").await.unwrap_or_default();
    assert!(reply.is_empty(), "plaintext reached the app");
    let (decision, reason) = last_plain().unwrap();
    assert_eq!(decision, "deny");
    assert!(
        reason.contains("unauthenticated (plaintext)") && reason.contains("shop/backend-allow"),
        "{reason}"
    );

    // `unauthenticated` in the allow list lets it in.
    mesh_file_allowing(
        &m.mesh,
        m.app,
        "enforce",
        &["ns/shop/sa/frontend", "unauthenticated"],
    );
    assert!(eventually(Duration::from_secs(10), || policy_applied(true, false)).await);
    assert_eq!(roundtrip(inbound, b"plain").await.unwrap(), b"plain");
    assert_eq!(last_plain().unwrap().0, "allow");

    // In audit mode, what would be refused passes and is recorded `would-deny`.
    mesh_file(&m.mesh, m.app, "audit", "ns/shop/sa/frontend");
    assert!(eventually(Duration::from_secs(10), || policy_applied(false, true)).await);
    assert_eq!(roundtrip(inbound, b"audit").await.unwrap(), b"audit");
    let (decision, reason) = last_plain().unwrap();
    assert_eq!(decision, "would-deny");
    assert!(reason.contains("unauthenticated (plaintext)"), "{reason}");
    plain.shutdown().await;
}

#[tokio::test]
async fn the_workload_gauge_counts_the_workloads_of_the_state_applied() {
    let m = mesh("enforce").await;
    let known = m.backend.ctx.state.borrow().len();
    assert!(known > 0, "the mesh file names workloads");
    let expected = format!("trellis_proxy_discovery_workloads {known}\n");
    assert!(
        m.backend.ctx.metrics.render().contains(&expected),
        "{expected:?} not in the metrics"
    );
}
