//! What a pod exposes to callers it did not expect, end to end on a fake network (issue 15,
//! items 1 and 2): plaintext in PERMISSIVE mode is an unauthenticated caller that the backend's
//! policy decides on, and a listener bound to the pod's loopback stays private to the pod while
//! one on all addresses is served, seeing the pod's IP as the caller.
//!
//! ```text
//!   control-plane 198.18.0.1   trellis-control-plane --mesh-file (mtls: PERMISSIVE)
//!   frontend      198.18.0.2   sidecar ns/shop/sa/frontend (+ the loopback prober, below)
//!   backend       198.18.0.3   sidecar ns/shop/sa/backend + app (HTTP 8080)
//!                              + a private app on 127.0.0.1:7777 and a public one on 0.0.0.0:7778
//!   intruder      198.18.0.4   sidecar ns/evil/sa/intruder
//! ```
//!
//! The backend's policy `shop/backend-allow` covers 8080, 7777 and 7778. Needs root, python3 and
//! the binaries built (`cargo build --workspace --bins`; or `TRELLIS_BIN_DIR`).

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use support::policy_mesh::*;
use support::*;
use trellis_sandbox::app::{APP_UID, App, Listen};
use trellis_sandbox::binaries::{PROXY, binary};
use trellis_sandbox::http::{HttpResponse, http_get, wait_http_ok};
use trellis_sandbox::require_root;
use trellis_sandbox::sidecar::PROXY_UID;
use trellis_sandbox::{Cmd, Process, Result};

/// The backend's listener bound to its loopback only.
const PRIVATE_PORT: u16 = 7777;
/// The backend's listener on every address.
const PUBLIC_PORT: u16 = 7778;
/// The prober's admin port in the frontend pod (its sidecar has 15000).
const PROBER_ADMIN: &str = "127.0.0.1:15100";
/// The prober's outbound listeners in the frontend pod: to the backend's 127.0.0.1:7777 and
/// 198.18.0.3:7778.
const TO_PRIVATE: &str = "127.0.0.1:17777";
const TO_PUBLIC: &str = "127.0.0.1:17778";
/// One request's time limit: refusals come back at once, so this only bounds a hang.
const GET: Duration = Duration::from_secs(3);

/// The policy mesh in PERMISSIVE mode, the backend's policy in `mode` allowing `allow` on
/// 8080, 7777 and 7778.
fn start(mode: &str, allow: &[&str]) -> Exposure {
    let yaml = mesh_yaml_with(
        "mtls: PERMISSIVE\n",
        &[8080, PRIVATE_PORT, PUBLIC_PORT],
        mode,
        allow,
    );
    Exposure(PolicyMesh::start_with(&yaml))
}

/// The running mesh; dropping it stops everything and deletes the namespaces.
struct Exposure(PolicyMesh);

impl std::ops::Deref for Exposure {
    type Target = PolicyMesh;
    fn deref(&self) -> &PolicyMesh {
        &self.0
    }
}

impl Exposure {
    /// `GET http://198.18.0.3:8080/<marker>` from the intruder's pod as UID 1337: its own
    /// sidecar leaves the connection alone, so it arrives at the backend in plaintext.
    fn plaintext_get(&self, marker: &str) -> Result<HttpResponse> {
        http_get(
            &self.intruder,
            &format!("http://{BACKEND_IP}:8080/{marker}"),
            Some(PROXY_UID),
            GET,
        )
    }

    /// Whether a plaintext request reaches the backend's app (and only then is answered 200).
    fn plaintext_reaches_backend(&self, marker: &str) -> bool {
        let reached = matches!(self.plaintext_get(marker), Ok(r) if r.status == 200);
        assert_eq!(
            reached,
            self.backend_app.process().stdout().contains(marker),
            "the answer and the backend app's log disagree about {marker}"
        );
        reached
    }

    /// The backend's last record going `direction` from `peer_ip`.
    fn last_record(&self, direction: &str, peer_ip: Ipv4Addr) -> Value {
        let log = self
            .backend_proxy
            .handshakes()
            .expect("backend /handshakes");
        records(&log, direction)
            .into_iter()
            .rev()
            .find(|r| {
                r["peer_addr"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&format!("{peer_ip}:")))
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {direction} record from {peer_ip} in {log:#?}"))
    }
}

#[test]
fn a_caller_skipping_its_sidecar_is_refused_in_permissive_and_recorded_as_unauthenticated() {
    require_root();
    let mesh = start("enforce", &["ns/shop/sa/frontend"]);
    assert!(
        !mesh.plaintext_reaches_backend(&marker("plaintext")),
        "plaintext skipped the backend's policy"
    );
    let r = mesh.last_record("inbound-plain", INTRUDER_IP);
    assert_eq!(r["decision"], "deny", "{r:#}");
    assert!(r["tls"].is_null() && r["peer_id"].is_null(), "{r:#}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("unauthenticated (plaintext)")
            && reason.contains(POLICY)
            && reason.contains("8080"),
        "{r:#}"
    );
    // Through its sidecar the frontend is still let in.
    let through_mesh = http_get(
        &mesh.frontend,
        &format!("http://{BACKEND_IP}:8080/{}", marker("meshed")),
        Some(APP_UID),
        GET,
    )
    .expect("GET through the mesh");
    assert_eq!(through_mesh.status, 200, "{through_mesh:?}");
}

#[test]
fn a_policy_allowing_unauthenticated_callers_lets_plaintext_in() {
    require_root();
    let mesh = start("enforce", &["ns/shop/sa/frontend", "unauthenticated"]);
    assert!(mesh.plaintext_reaches_backend(&marker("allowed-plaintext")));
    let r = mesh.last_record("inbound-plain", INTRUDER_IP);
    assert_eq!(r["decision"], "allow", "{r:#}");
    // The keyword opens the policy's ports only.
    let other = http_get(
        &mesh.intruder,
        &format!("http://{BACKEND_IP}:9090/"),
        Some(PROXY_UID),
        GET,
    );
    assert!(other.is_err(), "plaintext reached port 9090: {other:?}");
    let r = mesh.last_record("inbound-plain", INTRUDER_IP);
    assert_eq!(r["decision"], "deny", "{r:#}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no policy allows port 9090"),
        "{r:#}"
    );
}

#[test]
fn audit_mode_lets_plaintext_through_and_records_would_deny() {
    require_root();
    let mesh = start("audit", &["ns/shop/sa/frontend"]);
    assert!(mesh.plaintext_reaches_backend(&marker("audited-plaintext")));
    let r = mesh.last_record("inbound-plain", INTRUDER_IP);
    assert_eq!(r["decision"], "would-deny", "{r:#}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("unauthenticated (plaintext)") && reason.contains(POLICY),
        "{r:#}"
    );
    let counted = mesh
        .backend_proxy
        .metric(
            "trellis_proxy_authorization_decisions_total",
            &[("decision", "would-deny"), ("peer_id", "unauthenticated")],
        )
        .unwrap();
    assert_eq!(counted, 1.0);
}

/// A second proxy in the frontend's pod, in explicit mode with the frontend's identity, whose
/// outbound listeners send CONNECT `127.0.0.1:7777` and `198.18.0.3:7778` to the backend's
/// tunnel: a meshed caller asking for the backend's loopback, as a hand-made client would.
fn start_prober(mesh: &Exposure) -> Process {
    let token = mesh
        .cp
        .token_file(&frontend_identity())
        .expect("the frontend's token");
    let tunnel = format!("{BACKEND_IP}:15008");
    let cmd = Cmd::new(binary(PROXY).expect("trellis-proxy built"))
        .args(["run", "--mode", "explicit", "--discovery=false"])
        .args(["--pod-namespace", "shop", "--service-account", "frontend"])
        .args(["--control-plane", &mesh.cp.addr().to_string()])
        .arg("--token-file")
        .arg(token)
        .arg("--trust-bundle-file")
        .arg(mesh.cp.trust_bundle())
        .args(["--admin-listen", PROBER_ADMIN])
        .args(["--tunnel-listen", "127.0.0.1:0"])
        .arg(format!("--outbound={TO_PRIVATE}=127.0.0.1:{PRIVATE_PORT}"))
        .arg(format!("--outbound={TO_PUBLIC}={BACKEND_IP}:{PUBLIC_PORT}"))
        .arg(format!(
            "--workload=127.0.0.1:{PRIVATE_PORT}={BACKEND_ID}@{tunnel}"
        ))
        .arg(format!("--workload={BACKEND_IP}={BACKEND_ID}@{tunnel}"))
        .uid(Some(PROXY_UID));
    let process = mesh.frontend.spawn(&cmd).expect("prober starts");
    wait_http_ok(
        &mesh.frontend,
        &format!("http://{PROBER_ADMIN}/ready"),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| panic!("prober not ready: {e}; {}", process.stderr()));
    process
}

#[test]
fn a_listener_bound_to_loopback_is_unreachable_from_the_mesh_while_one_on_all_addresses_works() {
    require_root();
    let mesh = start("enforce", &["ns/shop/sa/frontend"]);
    let listen = |host, http_port, echo_port| Listen {
        host,
        http_port,
        echo_port,
    };
    let private = App::start_on(
        &mesh.sandbox,
        &mesh.backend,
        "private",
        listen(Ipv4Addr::LOCALHOST, PRIVATE_PORT, PRIVATE_PORT + 10),
    )
    .expect("private app");
    let _public = App::start_on(
        &mesh.sandbox,
        &mesh.backend,
        "public",
        listen(Ipv4Addr::UNSPECIFIED, PUBLIC_PORT, PUBLIC_PORT + 10),
    )
    .expect("public app");
    let _prober = start_prober(&mesh);

    // CONNECT 127.0.0.1:7777 is refused by the backend's proxy, which says why.
    let secret = marker("private");
    let got = http_get(
        &mesh.frontend,
        &format!("http://{TO_PRIVATE}/{secret}"),
        Some(APP_UID),
        GET,
    );
    assert!(
        !matches!(&got, Ok(r) if r.status == 200),
        "the backend's loopback listener answered through the mesh: {got:?}"
    );
    assert!(
        !private.process().stdout().contains(&secret),
        "the private app saw the request"
    );
    let r = mesh.last_record("inbound", FRONTEND_IP);
    assert_eq!(r["decision"], "deny", "{r:#}");
    assert_eq!(r["dst"], format!("127.0.0.1:{PRIVATE_PORT}"), "{r:#}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("is a loopback address"),
        "{r:#}"
    );

    // The listener on every address is served, through the prober and through the sidecar,
    // and sees the pod's own IP as the caller, not 127.0.0.1.
    for (via, url) in [
        ("the prober", format!("http://{TO_PUBLIC}/probe")),
        (
            "the sidecar",
            format!("http://{BACKEND_IP}:{PUBLIC_PORT}/sidecar"),
        ),
    ] {
        let r = http_get(&mesh.frontend, &url, Some(APP_UID), GET)
            .unwrap_or_else(|e| panic!("GET {url} via {via}: {e}"));
        assert_eq!(r.status, 200, "via {via}: {r:?}");
        assert!(
            r.body.trim_end().ends_with(&format!("from {BACKEND_IP}")),
            "via {via}, the app saw: {}",
            r.body
        );
    }
    let r = mesh.last_record("inbound", FRONTEND_IP);
    assert_eq!(r["decision"], "allow", "{r:#}");
}
