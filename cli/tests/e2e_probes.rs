//! A pod's life as kubelet sees it, on a fake network: app probes under STRICT mTLS, the
//! classic layout's `postStart: trellis-proxy wait`, and a Job's `POST /quitquitquit`. The
//! injector's own code says what the pod gets (rewritten probes, `TRELLIS_APP_PROBES`, the
//! hook's command and environment); the sidecar is the real binary in transparent mode.
//!
//! ```text
//!   control-plane 198.18.0.1   trellis-control-plane (local mode, join tokens)
//!   web           198.18.0.2   sidecar ns/shop/sa/backend (STRICT, iptables) + app (HTTP 8080, echo 9090)
//!   kubelet       198.18.0.3   no sidecar: probes podIP:15020 as the node's kubelet would
//! ```
//!
//! Needs root, python3 and the binaries built (`cargo build --workspace --bins`; or
//! `TRELLIS_BIN_DIR`). Without root each test says it is skipped.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use serde_json::json;
use support::*;
use trellis_injector::InjectConfig;
use trellis_injector::containers::{self, ProxyLayout};
use trellis_injector::probes;
use trellis_sandbox::app::{APP_UID, App};
use trellis_sandbox::binaries::{PROXY, binary};
use trellis_sandbox::control_plane::ControlPlane;
use trellis_sandbox::http::{HttpResponse, http_get, python};
use trellis_sandbox::require_root;
use trellis_sandbox::sidecar::{PROXY_UID, Sidecar, SidecarSpec};
use trellis_sandbox::{Cmd, Pod, Sandbox};

const WEB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const KUBELET_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// One probe's time limit (the probes' own `timeoutSeconds` is 2).
const PROBE: Duration = Duration::from_secs(5);

/// The pod spec a user would write: one container with named ports and three kinds of probes
/// (the gRPC one has no server behind it).
fn web_spec() -> PodSpec {
    serde_json::from_value(json!({"containers": [{
        "name": "web", "image": "web:1",
        "ports": [{"name": "http", "containerPort": 8080}, {"name": "echo", "containerPort": 9090}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "timeoutSeconds": 2, "periodSeconds": 2},
        "livenessProbe": {"tcpSocket": {"port": "echo"}, "timeoutSeconds": 2},
        "startupProbe": {"grpc": {"port": 9091}, "timeoutSeconds": 2}
    }]}))
    .expect("pod spec")
}

/// What kubelet GETs for one rewritten probe: `http://<pod IP>:<port><path>`.
fn kubelet_url(plan: &probes::Plan, kind: probes::ProbeKind) -> String {
    let rewrite = plan
        .rewrites
        .iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("{kind:?} not rewritten: {plan:?}"));
    let get = rewrite.replacement.http_get.as_ref().expect("an httpGet");
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
        other => panic!("named port {other:?}"),
    };
    format!(
        "http://{WEB_IP}:{port}{}",
        get.path.as_deref().unwrap_or("/")
    )
}

fn probe(kubelet: &Pod, url: &str) -> HttpResponse {
    http_get(kubelet, url, None, PROBE).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Waits until kubelet's GET of `url` answers `status`; the last answer.
fn probe_until(kubelet: &Pod, url: &str, status: u16) -> HttpResponse {
    let mut last = None;
    let seen = eventually(Duration::from_secs(15), || {
        let r = probe(kubelet, url);
        let done = r.status == status;
        last = Some(r.clone());
        done.then_some(r)
    });
    seen.unwrap_or_else(|| panic!("GET {url} never answered {status}; last {last:?}"))
}

/// The three pods, the control plane running; everything stops when dropped.
struct Pods {
    cp: ControlPlane,
    web: Pod,
    kubelet: Pod,
    /// Last: dropped after the handles above.
    sandbox: Sandbox,
}

impl Pods {
    fn start() -> Pods {
        let sandbox = Sandbox::new().expect("sandbox");
        let cp_pod = sandbox
            .add_pod("control-plane", CONTROL_PLANE_IP)
            .expect("pod");
        let web = sandbox.add_pod("web", WEB_IP).expect("pod");
        let kubelet = sandbox.add_pod("kubelet", KUBELET_IP).expect("pod");
        let cp = ControlPlane::start(&sandbox, &cp_pod, &[backend_identity()], &[]).expect("cp");
        Pods {
            cp,
            web,
            kubelet,
            sandbox,
        }
    }
}

#[test]
fn a_kubelet_outside_the_pod_sees_the_apps_health_through_a_strict_sidecar() {
    require_root();
    let pods = Pods::start();
    let Pods {
        cp, web, kubelet, ..
    } = &pods;

    // What the injector makes of the pod: three probes moved to 15020, their originals in the
    // proxy's variable (named ports resolved).
    let plan = probes::plan(&web_spec(), ProxyLayout::NativeSidecar);
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    assert_eq!(plan.rewrites.len(), 3, "{plan:?}");
    let env = serde_json::to_string(&plan.originals()).expect("json");
    let _sidecar = Sidecar::start(
        cp,
        web,
        SidecarSpec::new(backend_identity())
            .arg("--mtls-mode=strict")
            .arg(format!("--app-probes={env}")),
    )
    .expect("sidecar");
    let ready = kubelet_url(&plan, probes::ProbeKind::Readiness);
    let live = kubelet_url(&plan, probes::ProbeKind::Liveness);
    let startup = kubelet_url(&plan, probes::ProbeKind::Startup);
    assert_eq!(
        ready,
        format!("http://{WEB_IP}:15020/app-health/web/readyz")
    );

    // App down: the probes fail, saying why.
    let r = probe(kubelet, &ready);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains(&format!("connect to {WEB_IP}:8080")),
        "{r:?}"
    );
    assert_eq!(probe(kubelet, &live).status, 503);

    // App up: they pass (the sidecar dials the app on the pod IP, as UID 1337: not redirected).
    let app = App::start(&pods.sandbox, web, "web").expect("app");
    let r = probe_until(kubelet, &ready, 200);
    assert_eq!(r.body, "ok: HTTP 200\n");
    assert!(
        app.process()
            .stdout()
            .contains(&format!("{WEB_IP} \"GET /healthz HTTP/1.1\" 200")),
        "the app saw the original probe from the pod IP: {}",
        app.process().stdout()
    );
    assert_eq!(probe(kubelet, &live).body, "ok: TCP connected\n");
    let r = probe(kubelet, &startup);
    assert_eq!(r.status, 503, "no gRPC server on 9091: {r:?}");
    assert!(
        r.body
            .contains(&format!("gRPC health check at {WEB_IP}:9091")),
        "{r:?}"
    );
    assert_eq!(
        probe(
            kubelet,
            &format!("http://{WEB_IP}:15020/app-health/other/readyz")
        )
        .status,
        404
    );

    // The same probe, straight to the app in plaintext, is refused by STRICT.
    let direct = http_get(
        kubelet,
        &format!("http://{WEB_IP}:8080/healthz"),
        None,
        PROBE,
    );
    assert!(direct.is_err(), "STRICT let plaintext through: {direct:?}");

    // App down again: the probe fails again.
    app.process()
        .stop(Duration::from_secs(3))
        .expect("app stops");
    probe_until(kubelet, &ready, 503);
}

/// The injector's proxy container in the classic layout, and its `postStart` command run the
/// way the kubelet runs it: inside the container, with the container's environment (downward
/// API fields resolved for this pod) and user.
fn post_start_hook(pod: &Pod) -> Cmd {
    let config = InjectConfig::with_defaults("proxy:test", "PEM", false);
    let proxy: Container = containers::proxy_container(
        &config,
        &trellis_injector::annotations::PodOverrides::default(),
        ResourceRequirements::default(),
        ProxyLayout::FirstContainer,
    );
    let command = proxy
        .lifecycle
        .and_then(|l| l.post_start)
        .and_then(|h| h.exec)
        .and_then(|e| e.command)
        .expect("a postStart exec hook");
    assert_eq!(
        command.first().map(String::as_str),
        Some(containers::PROXY_NAME)
    );
    let mut cmd = Cmd::new(binary(PROXY).expect("trellis-proxy built"))
        .args(command.iter().skip(1))
        .uid(Some(PROXY_UID))
        .timeout(Duration::from_secs(60));
    for var in proxy.env.iter().flatten() {
        let value = match (
            &var.value,
            var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()),
        ) {
            (Some(v), _) => v.clone(),
            (None, Some(field)) => match field.field_path.as_str() {
                "metadata.name" => pod.name().to_owned(),
                "metadata.namespace" => "shop".to_owned(),
                "spec.serviceAccountName" => "backend".to_owned(),
                "status.podIP" => pod.ip().to_string(),
                other => panic!("downward API field {other} not resolved by the test"),
            },
            (None, None) => continue,
        };
        cmd = cmd.env(&var.name, value);
    }
    cmd
}

/// POSTs to `url` from inside `pod` as the app's user; the status.
fn post(pod: &Pod, url: &str) -> u16 {
    const POST_PY: &str = r#"
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(urllib.request.Request(sys.argv[1], data=b"", method="POST"), timeout=5) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
"#;
    let out = pod
        .exec_ok(
            &Cmd::new(python())
                .args(["-c", POST_PY, url])
                .uid(Some(APP_UID)),
        )
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("POST {url}: {out:?}"))
}

#[test]
fn the_classic_layout_starts_and_a_job_stops_its_sidecar_with_quitquitquit() {
    require_root();
    let pods = Pods::start();
    let Pods {
        cp, web, kubelet, ..
    } = &pods;

    // The kubelet runs the hook as soon as the proxy container starts: before it is ready.
    let hook = web.spawn(&post_start_hook(web)).expect("hook starts");
    let sidecar = Sidecar::start(cp, web, SidecarSpec::new(backend_identity())).expect("sidecar");
    let status = hook.wait(Duration::from_secs(30)).expect("the hook ends");
    assert!(
        status.success(),
        "postStart `trellis-proxy wait` failed ({status}): {}",
        hook.stderr()
    );

    // Not from outside the pod (the health port), not with GET: the sidecar keeps running.
    assert_eq!(
        post(kubelet, &format!("http://{WEB_IP}:15020/quitquitquit")),
        405
    );
    let get = http_get(
        web,
        "http://127.0.0.1:15000/quitquitquit",
        Some(APP_UID),
        PROBE,
    )
    .expect("GET answered");
    assert_eq!(get.status, 405);
    assert!(sidecar.process().is_running());

    // The Job's app is done: it stops the sidecar, which drains and exits 0.
    assert_eq!(post(web, "http://127.0.0.1:15000/quitquitquit"), 200);
    let exit = sidecar
        .process()
        .wait(Duration::from_secs(15))
        .expect("the sidecar exits");
    assert!(
        exit.success(),
        "sidecar exit {exit}: {}",
        sidecar.process().stderr()
    );
    // Logs go to stderr (trellis-telemetry), as for every Trellis binary.
    let log = sidecar.process().stderr();
    assert!(log.contains("POST /quitquitquit: draining"), "{log}");
}
