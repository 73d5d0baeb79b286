//! The sidecar end to end, on a fake network: pods are network namespaces on one bridge, the
//! real `trellis-control-plane` and `trellis-proxy` binaries run in them (interception by
//! `trellis-proxy init`'s iptables rules, the proxy as UID 1337), and the applications are
//! ordinary processes (python3, UID 1000) that know nothing of the mesh. See `support/` for
//! the layout of the mesh.
//!
//! Needs root, python3, `dumpcap` and `tshark`, and the binaries built (`cargo build
//! --workspace --bins`; or `TRELLIS_BIN_DIR`). Without root each test fails, saying so;
//! `cargo nextest run --profile unprivileged` leaves them out on purpose (CONTRIBUTING.md).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use trellis_sandbox::app::{APP_UID, App};
use trellis_sandbox::capture::Capture;
use trellis_sandbox::control_plane::ControlPlane;
use trellis_sandbox::http::{GET_TIMEOUT, http_get};
use trellis_sandbox::require_root;
use trellis_sandbox::sidecar::{Sidecar, SidecarSpec};
use trellis_sandbox::{Cmd, Sandbox, netns};

const OPENED: &str = "trellis_proxy_tunnel_connections_opened_total";
const RENEWALS: &str = "trellis_proxy_certificate_renewals_total";
const UNREACHABLE: &str = "trellis_proxy_control_plane_unreachable";

fn backend_url(path: &str) -> String {
    format!("http://{BACKEND_IP}:8080/{path}")
}

#[test]
fn an_app_request_crosses_both_sidecars_and_the_wire_carries_only_tls_1_3() {
    require_root();
    let mesh = Mesh::start(MeshSpec::default());
    let marker = marker("secret");

    let capture = Capture::start(&mesh.sandbox, "tcp").expect("capture starts");
    let reply = http_get(
        &mesh.frontend,
        &backend_url(&marker),
        Some(APP_UID),
        GET_TIMEOUT,
    )
    .expect("the request is answered");
    let pcap = capture.stop().expect("capture stops");

    // The app's plain request reached the backend app, and the answer came back.
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply.body.starts_with("backend got /") && reply.body.contains(&marker),
        "{reply:?}"
    );
    // On the wire: no application byte in clear text...
    assert!(
        !pcap.contains(marker.as_bytes()).expect("read capture"),
        "the marker crossed the bridge in clear text: {}",
        pcap.path().display()
    );
    // ...no packet to the application port at all...
    let to_app = pcap
        .fields(&[], "tcp.port==8080", &["frame.number"])
        .unwrap();
    assert!(to_app.is_empty(), "packets to port 8080: {to_app:?}");
    // ...but TCP to the tunnel port (so the capture did see the traffic)...
    let to_tunnel = pcap
        .fields(&[], "tcp.dstport==15008", &["frame.number"])
        .unwrap();
    assert!(!to_tunnel.is_empty(), "no packet to the tunnel port 15008");
    // ...whose TLS handshake chose TLS 1.3.
    let server_hellos = pcap
        .fields(
            &["tcp.port==15008,tls"],
            "tls.handshake.type==2 && tcp.srcport==15008",
            &["tls.handshake.extensions.supported_version"],
        )
        .unwrap();
    assert!(
        !server_hellos.is_empty(),
        "no TLS ServerHello from port 15008 in the capture"
    );
    for hello in &server_hellos {
        assert_eq!(
            hello,
            &["0x0304"],
            "ServerHello versions: {server_hellos:?}"
        );
    }

    // The request went through the backend's sidecar: the app saw a connection from its own
    // pod's IP (the sidecar dials the app there, never on loopback)...
    let app_log = mesh.backend_app.process().stdout();
    assert!(
        app_log
            .lines()
            .any(|l| l.contains(&marker) && l.starts_with(&format!("{BACKEND_IP} "))),
        "backend app log: {app_log}"
    );
    // ...and through the frontend's sidecar, over the tunnel.
    let out = mesh
        .frontend_proxy
        .handshakes()
        .expect("frontend /handshakes");
    let out = records(&out, "outbound");
    assert!(
        out.iter().any(|r| r["peer_id"] == BACKEND_ID
            && r["decision"] == "allow"
            && r["dst"] == format!("{BACKEND_IP}:8080")
            && r["tls"]["version"] == "TLSv1_3"),
        "frontend outbound records: {out:#?}"
    );
}

#[test]
fn many_app_connections_to_one_peer_share_one_tunnel_connection() {
    require_root();
    let mesh = Mesh::start(MeshSpec::default());
    let base = format!("http://{BACKEND_IP}:8080");
    let answer = mesh.client(&mesh.frontend, &["many", &base, "20"]);
    assert_eq!(answer["ok"], 20, "{answer:#}");

    let opened = mesh.frontend_proxy.metric(OPENED, &[]).unwrap();
    assert_eq!(
        opened, 1.0,
        "tunnel connections the frontend opened for 20 requests"
    );
    let inbound = mesh.backend_proxy.handshakes().unwrap();
    let from_frontend: Vec<&Value> = records(&inbound, "inbound")
        .into_iter()
        .filter(|r| r["peer_id"] == FRONTEND_ID && r["decision"] == "allow")
        .collect();
    assert_eq!(from_frontend.len(), 20, "{from_frontend:#?}");
    let tunnels: BTreeSet<&str> = from_frontend
        .iter()
        .filter_map(|r| r["peer_addr"].as_str())
        .collect();
    assert_eq!(
        tunnels.len(),
        1,
        "TCP connections the 20 streams came on: {tunnels:?}"
    );
    let reused = records(&mesh.frontend_proxy.handshakes().unwrap(), "outbound")
        .iter()
        .filter(|r| r["tls"]["reused"] == true)
        .count();
    assert_eq!(reused, 19, "outbound connections that paid no handshake");
}

#[test]
fn the_server_records_the_client_identity_and_the_client_refuses_a_server_with_another() {
    require_root();
    let mut mesh = Mesh::start(MeshSpec::default());
    let reply = http_get(
        &mesh.frontend,
        &backend_url("who"),
        Some(APP_UID),
        GET_TIMEOUT,
    )
    .unwrap();
    assert_eq!(reply.status, 200);
    let inbound = mesh.backend_proxy.handshakes().unwrap();
    let inbound = records(&inbound, "inbound");
    assert!(
        inbound.iter().any(|r| r["peer_id"] == FRONTEND_ID
            && r["decision"] == "allow"
            && r["tls"]["version"] == "TLSv1_3"),
        "backend inbound records: {inbound:#?}"
    );

    // Discovery now claims "payments" lives at the backend's address; its certificate says
    // "backend". The frontend's sidecar must not talk to it.
    let impostor = MeshSpec {
        backend_id_seen_by_frontend: Some(PAYMENTS_ID),
        ..MeshSpec::default()
    };
    mesh.restart_frontend_proxy(&impostor);
    let answer = http_get(
        &mesh.frontend,
        &backend_url("secret"),
        Some(APP_UID),
        GET_TIMEOUT,
    );
    assert!(
        answer.is_err(),
        "a request reached a server with the wrong identity: {answer:?}"
    );
    let out = mesh.frontend_proxy.handshakes().unwrap();
    let out = records(&out, "outbound");
    let deny = out
        .iter()
        .find(|r| r["decision"] == "deny")
        .unwrap_or_else(|| panic!("no outbound deny: {out:#?}"));
    let reason = deny["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("ns/shop/sa/backend") && reason.contains("ns/shop/sa/payments"),
        "the refusal names both identities: {deny:#}"
    );
    let app_log = mesh.backend_app.process().stdout();
    assert!(!app_log.contains("/secret"), "{app_log}");
}

#[test]
fn strict_refuses_a_plaintext_client_and_permissive_passes_it_as_plaintext() {
    require_root();
    let mut mesh = Mesh::start(MeshSpec {
        outsider: true,
        ..MeshSpec::default()
    });
    let outsider = mesh.outsider.clone().expect("outsider pod");
    let host = BACKEND_IP.to_string();

    // STRICT (the default): connection closed, no HTTP answer.
    let strict = mesh.client(&outsider, &["plain", &host, "8080", "strict"]);
    assert_eq!(strict["received"], "", "{strict:#}");
    let log = mesh.backend_proxy.handshakes().unwrap();
    let plain = records(&log, "inbound-plain");
    assert!(
        plain.iter().any(|r| r["decision"] == "deny"
            && r["tls"].is_null()
            && r["peer_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{OUTSIDER_IP}:")))),
        "backend inbound-plain records: {plain:#?}"
    );
    assert!(!mesh.backend_app.process().stdout().contains("/strict"));

    // PERMISSIVE: passed to the app, recorded as plaintext.
    mesh.restart_backend_proxy(&["--mtls-mode=permissive"]);
    let permissive = mesh.client(&outsider, &["plain", &host, "8080", "permissive"]);
    let received = permissive["received"].as_str().unwrap_or_default();
    assert!(
        received.starts_with("HTTP/1.") && received.contains("backend got /permissive"),
        "{permissive:#}"
    );
    let log = mesh.backend_proxy.handshakes().unwrap();
    let plain = records(&log, "inbound-plain");
    assert!(
        plain
            .iter()
            .any(|r| r["decision"] == "allow" && r["tls"].is_null()),
        "backend inbound-plain records: {plain:#?}"
    );
}

#[test]
fn certificates_rotate_under_continuous_traffic_without_dropping_a_connection() {
    require_root();
    let mesh = Mesh::start(MeshSpec::default().both(&["--cert-ttl=6s"]));
    let load_for = Duration::from_secs(15);
    let load = mesh.spawn_load(15);
    let (mut front_serials, mut back_serials) = (BTreeSet::new(), BTreeSet::new());
    let until = Instant::now() + load_for;
    // Bounded: one look every ~250 ms while the load runs.
    while Instant::now() < until && load.is_running() {
        if let Ok(id) = mesh.frontend_proxy.identity() {
            front_serials.insert(id["serial"].as_str().unwrap_or_default().to_owned());
        }
        if let Ok(id) = mesh.backend_proxy.identity() {
            back_serials.insert(id["serial"].as_str().unwrap_or_default().to_owned());
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let result = client_result(&load, Duration::from_secs(30));
    eprintln!("load: {result}");
    eprintln!("serials: frontend {front_serials:?}, backend {back_serials:?}");

    let long = &result["long"];
    assert_eq!(
        long["failures"], 0,
        "the long-lived connection broke: {result:#}"
    );
    assert!(
        long["exchanges"].as_u64().unwrap_or(0) >= 40,
        "too few exchanges on the long-lived connection: {result:#}"
    );
    let new = &result["new"];
    assert_eq!(new["failures"], 0, "new connections failed: {result:#}");
    assert!(new["ok"].as_u64().unwrap_or(0) >= 20, "{result:#}");
    assert!(
        front_serials.len() >= 3,
        "the frontend's certificate changed fewer than twice: {front_serials:?}"
    );
    assert!(
        back_serials.len() >= 3,
        "the backend's certificate changed fewer than twice: {back_serials:?}"
    );
}

#[test]
fn traffic_flows_while_the_control_plane_is_down_and_renewals_resume_after_its_restart() {
    require_root();
    // Renewal is due 8–10 s after issue; the control plane goes down right after the
    // sidecars got their certificates and stays down 12 s: past the renewal, within the
    // lifetime.
    let ttl = Duration::from_secs(20);
    let outage = Duration::from_secs(12);
    let mesh = Mesh::start(MeshSpec::default().both(&[&format!("--cert-ttl={}s", ttl.as_secs())]));
    let serial = |s: &Sidecar| s.identity().unwrap()["serial"].as_str().unwrap().to_owned();
    let ok_renewals = |s: &Sidecar| s.metric(RENEWALS, &[("result", "ok")]).unwrap();
    let failed_renewals = |s: &Sidecar| s.metric(RENEWALS, &[("result", "error")]).unwrap();
    let before = [&mesh.frontend_proxy, &mesh.backend_proxy].map(|s| (serial(s), ok_renewals(s)));

    mesh.cp.stop().expect("control plane stops");
    let down_at = Instant::now();
    let load = mesh.spawn_load(u32::try_from(outage.as_secs()).unwrap());
    for proxy in [&mesh.frontend_proxy, &mesh.backend_proxy] {
        let failed = eventually(outage, || (failed_renewals(proxy) >= 1.0).then_some(()));
        assert!(
            failed.is_some(),
            "{}: no renewal attempt failed during the outage",
            proxy.pod().name()
        );
        let unreachable = proxy.metric(UNREACHABLE, &[]).unwrap();
        assert_eq!(unreachable, 1.0, "{}: {UNREACHABLE}", proxy.pod().name());
    }
    let result = client_result(&load, outage + Duration::from_secs(20));
    eprintln!("load during the outage: {result}");
    assert_eq!(result["long"]["failures"], 0, "{result:#}");
    assert_eq!(result["new"]["failures"], 0, "{result:#}");
    assert!(
        result["new"]["ok"].as_u64().unwrap_or(0) >= 20,
        "{result:#}"
    );
    assert!(down_at.elapsed() >= outage);

    mesh.cp
        .run()
        .expect("control plane restarts with the same state");
    let deadline = Duration::from_secs(20);
    for (proxy, (old_serial, old_ok)) in [&mesh.frontend_proxy, &mesh.backend_proxy]
        .into_iter()
        .zip(&before)
    {
        let renewed = eventually(deadline, || {
            (ok_renewals(proxy) > *old_ok && serial(proxy) != *old_serial).then_some(())
        });
        assert!(
            renewed.is_some(),
            "{}: no renewal within {deadline:?} of the restart",
            proxy.pod().name()
        );
    }
    let reply = http_get(
        &mesh.frontend,
        &backend_url("after"),
        Some(APP_UID),
        GET_TIMEOUT,
    );
    assert_eq!(reply.unwrap().status, 200);
}

#[test]
fn a_dropped_sandbox_leaves_no_namespace_and_no_process_even_after_a_panic() {
    require_root();
    // Running, or exiting: anything but gone or a zombie (which init reaps when it can).
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .next()?
                    .to_owned();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    };
    let build = || {
        let sandbox = Sandbox::new().unwrap();
        let cp_pod = sandbox.add_pod("control-plane", CONTROL_PLANE_IP).unwrap();
        let pod = sandbox.add_pod("backend", BACKEND_IP).unwrap();
        let cp = ControlPlane::start(&sandbox, &cp_pod, &[backend_identity()], &[]).unwrap();
        App::start(&sandbox, &pod, "backend").unwrap();
        Sidecar::start(&cp, &pod, SidecarSpec::new(backend_identity())).unwrap();
        // A grandchild, which the sandbox did not start directly: it must go too.
        let sh = Cmd::new("sh").args(["-c", "sleep 300 & echo started; wait"]);
        let sh = pod.spawn(&sh).unwrap();
        sh.wait_for_output("started", Duration::from_secs(5))
            .unwrap();
        // Every process inside any namespace of the sandbox.
        let pids: Vec<u32> = sandbox
            .namespaces()
            .iter()
            .flat_map(|n| netns::pids(n))
            .collect();
        (sandbox, pids)
    };

    // Dropped normally.
    let (sandbox, pids) = build();
    let id = sandbox.id().to_owned();
    let dir = sandbox.dir().to_owned();
    assert!(
        pids.len() >= 5,
        "control plane, app, proxy, sh, sleep: {pids:?}"
    );
    assert!(pids.iter().all(alive), "{pids:?}");
    drop(sandbox);
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&id))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let running: Vec<&u32> = pids.iter().filter(|p| alive(p)).collect();
    assert!(running.is_empty(), "processes left running: {running:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());

    // Dropped while its thread panics.
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let (sandbox, pids) = build();
        sandbox.keep_dir_on_panic(false);
        tx.send((sandbox.id().to_owned(), pids)).unwrap();
        panic!("on purpose, with a sandbox alive");
    })
    .join();
    assert!(panicked.is_err());
    let (id, pids) = rx.recv().unwrap();
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&id))
        .collect();
    assert!(left.is_empty(), "namespaces left after a panic: {left:?}");
    let running: Vec<&u32> = pids.iter().filter(|p| alive(p)).collect();
    assert!(
        running.is_empty(),
        "processes left after a panic: {running:?}"
    );
}
