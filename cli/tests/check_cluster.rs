//! `trellis check` and `trellis inspect -n NS POD` against a fake Kubernetes API server: a
//! plain-HTTP server on loopback that answers the reads the CLI makes with fixed objects (the
//! chart's CRD, Deployments, webhook and Secret; a labelled namespace with pods), and serves
//! port-forward (WebSocket, `v4.channel.k8s.io`) to real addresses: the in-process control
//! plane and proxies of `local_mesh`. Only the kubelet's end of port-forward is faked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod local_mesh;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use local_mesh::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The control plane pod of the fake cluster.
const CP_POD: &str = "trellis-control-plane-5c6d7-abcde";
/// A meshed pod of the fake cluster.
const MESHED_POD: &str = "api-5f6b7-k8s9d";

/// Which objects the fake cluster holds.
struct Cluster {
    /// The webhook's caBundle (PEM).
    ca_bundle: String,
    /// The injector Secret's ca.crt (PEM).
    ca_crt: String,
    /// Available replicas of the injector's Deployment (of 1).
    injector_available: i32,
    /// Where port-forwards to (namespace, pod, port) really go.
    forwards: HashMap<(&'static str, &'static str, u16), SocketAddr>,
    /// Whether the meshed pod's readiness probe still goes to the app (not rewritten).
    plaintext_probe: bool,
}

fn root_pem() -> String {
    let td = trellis_ca::TrustDomain::new("cluster.local").unwrap();
    trellis_ca::CaMaterial::generate_root(&td, std::time::SystemTime::now())
        .unwrap()
        .root_cert_pem
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

/// The answer to `GET path?query`.
fn answer(cluster: &Cluster, path: &str, query: &str) -> (u16, Value) {
    let deployment = |name: &str, available: i32| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
               "spec": {"replicas": 1, "selector": {}, "template": {"spec": {"containers": [
                   {"name": "control-plane", "args": ["--trust-domain=cluster.local"]}]}}},
               "status": {"availableReplicas": available}})
    };
    let pod = |name: &str, annotations: Value, owner: Value, labels: Value, phase: &str| {
        json!({"metadata": {"name": name, "namespace": "shop", "annotations": annotations,
                            "ownerReferences": owner, "labels": labels},
               "spec": {"containers": [{"name": "app"}]},
               "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True"}]}})
    };
    let rs = |name: &str| json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": "u", "controller": true}]);
    match path {
        "/version" => (
            200,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "0",
                   "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                   "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/authorizationpolicies.trellis.dev" => {
            (
                200,
                json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                   "metadata": {"name": "authorizationpolicies.trellis.dev"},
                   "spec": {"group": "trellis.dev", "scope": "Namespaced", "versions": [],
                            "names": {"kind": "AuthorizationPolicy", "plural": "authorizationpolicies"}},
                   "status": {"conditions": [{"type": "Established", "status": "True"}]}}),
            )
        }
        "/apis/apps/v1/namespaces/trellis-system/deployments/trellis-control-plane" => {
            (200, deployment("trellis-control-plane", 1))
        }
        "/apis/apps/v1/namespaces/trellis-system/deployments/trellis-injector" => (
            200,
            deployment("trellis-injector", cluster.injector_available),
        ),
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/trellis-injector" => (
            200,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                   "metadata": {"name": "trellis-injector"},
                   "webhooks": [{"name": "inject.trellis.dev", "admissionReviewVersions": ["v1"],
                                 "sideEffects": "None",
                                 "clientConfig": {"caBundle": STANDARD.encode(&cluster.ca_bundle)}}]}),
        ),
        "/api/v1/namespaces/trellis-system/secrets/trellis-injector-tls" => (
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "trellis-injector-tls"},
                   "data": {"ca.crt": STANDARD.encode(&cluster.ca_crt)}}),
        ),
        "/api/v1/namespaces/trellis-system/pods" => (
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                pod(CP_POD, json!({}), json!([]), json!({}), "Running")]}),
        ),
        "/api/v1/namespaces" if query.contains("labelSelector=trellis-injection") => (
            200,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {},
                   "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                              "metadata": {"name": "shop"}}]}),
        ),
        "/api/v1/namespaces/shop/pods" => (
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                pod("web-7d9f8b7c5-x2x4q", json!({}), rs("web-7d9f8b7c5"),
                    json!({"pod-template-hash": "7d9f8b7c5"}), "Running"),
                pod(MESHED_POD, json!({"trellis.dev/injected": "true"}), rs("api-5f6b7"),
                    json!({"pod-template-hash": "5f6b7"}), "Running"),
                pod("migrate-x7k2p", json!({}), json!([]), json!({}), "Succeeded"),
                pod("legacy", json!({"trellis.dev/inject": "disabled"}), json!([]), json!({}), "Running"),
            ]}),
        ),
        // Meshed pods of every namespace (label trellis.dev/mesh=true): the api pod, whose
        // readiness probe is rewritten to the proxy, or not.
        "/api/v1/pods" if query.contains("labelSelector=trellis.dev") => {
            let probe = if cluster.plaintext_probe {
                json!({"httpGet": {"path": "/ready", "port": 8080}})
            } else {
                json!({"httpGet": {"path": "/app-health/app/readyz", "port": 15020}})
            };
            let mut meshed = pod(
                MESHED_POD,
                json!({"trellis.dev/injected": "true"}),
                rs("api-5f6b7"),
                json!({"pod-template-hash": "5f6b7", "trellis.dev/mesh": "true"}),
                "Running",
            );
            meshed["spec"]["containers"][0]["readinessProbe"] = probe;
            (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [meshed]}),
            )
        }
        "/api/v1/namespaces/shop" => (
            200,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                   "metadata": {"name": "shop", "labels": {"trellis-injection": "enabled"}}}),
        ),
        "/api/v1/namespaces/shop/pods/web-7d9f8b7c5-x2x4q" => (
            200,
            pod(
                "web-7d9f8b7c5-x2x4q",
                json!({}),
                json!([]),
                json!({}),
                "Running",
            ),
        ),
        "/api/v1/namespaces/shop/pods/api-5f6b7-k8s9d" => (
            200,
            pod(
                MESHED_POD,
                json!({"trellis.dev/injected": "true"}),
                json!([]),
                json!({}),
                "Running",
            ),
        ),
        _ => not_found(),
    }
}

/// Serves `cluster` over plain HTTP/1.1 on loopback; returns its address.
async fn fake_api_server(cluster: Cluster) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cluster = Arc::new(cluster);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                    if head.to_ascii_lowercase().contains("upgrade: websocket") {
                        // Refused upgrades say `connection: close`: this task closes the
                        // connection, and a client must not reuse it for its next request.
                        match forward_target(&cluster, path, query) {
                            Some((port, to)) => port_forward(s, &head, port, to).await,
                            None => {
                                let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Failure", "message": "no such pod port in the fake cluster",
                                    "reason": "BadRequest", "code": 400}).to_string();
                                let _ = s.write_all(format!(
                                    "HTTP/1.1 400 X\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                                    body.len()
                                ).as_bytes()).await;
                            }
                        }
                        return;
                    }
                    let (code, body) = answer(&cluster, path, query);
                    let body = body.to_string();
                    let response = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Where a port-forward request (`/api/v1/namespaces/NS/pods/NAME/portforward?&ports=P`)
/// goes, if the fake cluster knows that pod and port.
fn forward_target(cluster: &Cluster, path: &str, query: &str) -> Option<(u16, SocketAddr)> {
    let rest = path
        .strip_prefix("/api/v1/namespaces/")?
        .strip_suffix("/portforward")?;
    let (ns, pod) = rest.split_once("/pods/")?;
    let port: u16 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ports="))?
        .parse()
        .ok()?;
    cluster
        .forwards
        .iter()
        .find(|((n, p, q), _)| *n == ns && *p == pod && *q == port)
        .map(|(_, to)| (port, *to))
}

/// The kubelet's end of a port-forward: accepts the WebSocket upgrade with subprotocol
/// `v4.channel.k8s.io`, announces the port on the data and error channels, then relays
/// channel 0 to and from a TCP connection to `to`.
async fn port_forward(mut s: TcpStream, head: &str, port: u16, to: SocketAddr) {
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .unwrap();
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {}\r\nsec-websocket-protocol: v4.channel.k8s.io\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    s.write_all(response.as_bytes()).await.unwrap();
    let ws = WebSocketStream::from_raw_socket(s, Role::Server, None).await;
    let (mut sink, mut stream) = ws.split();
    let [lo, hi] = port.to_le_bytes();
    sink.send(Message::binary(vec![0, lo, hi])).await.unwrap();
    sink.send(Message::binary(vec![1, lo, hi])).await.unwrap();
    let (mut from_pod, mut to_pod) = TcpStream::connect(to).await.unwrap().into_split();
    let up = async move {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_close() {
                break;
            }
            // Channel 0 is the port's data; the first byte of each frame names the channel.
            let Message::Binary(b) = msg else { continue };
            if let Some((0, data)) = b.split_first()
                && !data.is_empty()
                && to_pod.write_all(data).await.is_err()
            {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = from_pod.read(&mut buf).await {
            let mut frame = Vec::with_capacity(n + 1);
            frame.push(0);
            frame.extend_from_slice(&buf[..n]);
            if sink.send(Message::binary(frame)).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    };
    tokio::join!(up, down);
}

fn kubeconfig(dir: &Path, server: &str) -> String {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{server}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: shop\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

async fn trellis(kubeconfig: &str, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let kubeconfig = kubeconfig.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(&args)
            .env("KUBECONFIG", kubeconfig)
            .env("NO_COLOR", "1")
            .env_remove("TRELLIS_TRUST_DOMAIN")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_healthy_cluster_and_reaches_the_control_plane_through_port_forward() {
    let mesh = Mesh::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = mesh.cp.bundle.to_pem();
    let server = fake_api_server(Cluster {
        ca_bundle: root.clone(),
        ca_crt: root,
        injector_available: 1,
        forwards: HashMap::from([(("trellis-system", CP_POD, 15012), mesh.cp.grpc_addr)]),
        plaintext_probe: false,
    })
    .await;
    let config = kubeconfig(dir.path(), &server);
    let out = trellis(&config, &["check"]).await;
    let text = stdout(&out);
    println!("{text}");
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for line in [
        "✔ can reach the Kubernetes API server (v1.33.1)",
        "✔ CRD authorizationpolicies.trellis.dev is installed",
        "✔ Deployment trellis-control-plane is available (1/1 replicas available)",
        "✔ Deployment trellis-injector is available (1/1 replicas available)",
        "✔ MutatingWebhookConfiguration trellis-injector is present (inject.trellis.dev)",
        "✔ webhook caBundle matches ca.crt of Secret trellis-injector-tls",
        "✔ root certificate (from the webhook's caBundle) is valid until",
        &format!("✔ control plane at deploy/trellis-control-plane proves {CONTROL_PLANE}"),
        "✔ control plane reports SERVING (grpc.health.v1)",
        "✔ no intermediate: the root signs workload certificates",
        "✔ 1 namespace labelled trellis-injection=enabled: shop",
        "‼ 1 pod in labelled namespaces not injected yet\n    shop/web-7d9f8b7c5-x2x4q\n    hint: re-create them so the injector sees them: kubectl -n shop rollout restart deployment/web\n",
        "✔ app probes of meshed pods in STRICT namespaces go through their proxies",
        "Status check results are ‼ (1 warning)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains('✘'), "{text}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_what_is_broken_in_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let server = fake_api_server(Cluster {
        ca_bundle: root_pem(),
        ca_crt: root_pem(), // another root: the caBundle is stale
        injector_available: 0,
        forwards: HashMap::new(),
        plaintext_probe: true,
    })
    .await;
    let config = kubeconfig(dir.path(), &server);
    let out = trellis(&config, &["check"]).await;
    let text = stdout(&out);
    println!("{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    for line in [
        "✔ can reach the Kubernetes API server (v1.33.1)",
        "✘ Deployment trellis-injector is available\n    0/1 replicas available",
        "✘ webhook caBundle matches ca.crt of Secret trellis-injector-tls\n    they differ",
        "✔ root certificate (from the webhook's caBundle) is valid until",
        "✘ control plane at deploy/trellis-control-plane accepts TLS and proves its identity\n    cannot port-forward to pod trellis-system/trellis-control-plane-5c6d7-abcde port 15012 through the API server: 400 BadRequest",
        "‼ 1 meshed pod in STRICT namespaces has app probes the proxy refuses (plaintext from kubelet)\n    shop/api-5f6b7-k8s9d: app/readinessProbe (injected before probes were rewritten)\n    hint: re-create them so the injector rewrites the probes to the proxy's 15020",
        "Status check results are ✘ (3 failed checks, 2 warnings)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_without_a_reachable_cluster_fails_at_the_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &format!("127.0.0.1:{}", closed_port().await));
    let out = trellis(&config, &["check"]).await;
    let text = stdout(&out);
    println!("{text}");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.starts_with("kubernetes-api\n--------------\n✘ can reach the Kubernetes API server\n"),
        "{text}"
    );
    assert_eq!(
        text.matches('✘').count(),
        2,
        "one check, one status line\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reaches_a_pods_proxy_through_port_forward() {
    let mesh = Mesh::start().await;
    mesh.one_allowed_one_refused().await;
    let dir = tempfile::tempdir().unwrap();
    let root = mesh.cp.bundle.to_pem();
    let server = fake_api_server(Cluster {
        ca_bundle: root.clone(),
        ca_crt: root,
        injector_available: 1,
        forwards: HashMap::from([(
            ("shop", MESHED_POD, 15000),
            mesh.backend.addrs.admin.unwrap(),
        )]),
        plaintext_probe: false,
    })
    .await;
    let config = kubeconfig(dir.path(), &server);

    let out = trellis(
        &config,
        &["inspect", "-n", "shop", MESHED_POD, "-o", "json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["identity"]["spiffe_id"], BACKEND);
    let by_peer = |id: &str| {
        doc["handshakes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["peer_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no handshake from {id}: {doc}"))
    };
    assert_eq!(by_peer(FRONTEND)["decision"], "allow");
    assert_eq!(by_peer(FRONTEND)["tls"]["version"], "TLSv1_3");
    assert_eq!(by_peer(INTRUDER)["decision"], "deny");

    // The table, through a new port-forward; the context's namespace is the default.
    let out = trellis(&config, &["inspect", MESHED_POD]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    println!("{text}");
    assert!(
        text.starts_with(&format!("Identity   {BACKEND}\n")),
        "{text}"
    );
    let denied = text
        .lines()
        .find(|l| l.contains(INTRUDER))
        .expect("intruder row");
    assert!(denied.contains("deny: "), "{denied}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_of_a_pod_checks_it_exists_and_is_meshed() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_pem();
    let server = fake_api_server(Cluster {
        ca_bundle: root.clone(),
        ca_crt: root,
        injector_available: 1,
        forwards: HashMap::new(),
        plaintext_probe: false,
    })
    .await;
    let config = kubeconfig(dir.path(), &server);

    let out = trellis(&config, &["inspect", "-n", "shop", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: pod shop/nope not found"), "{err}");

    let out = trellis(&config, &["inspect", "-n", "shop", "web-7d9f8b7c5-x2x4q"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: pod shop/web-7d9f8b7c5-x2x4q is not meshed"),
        "{err}"
    );
    assert!(err.contains("rollout restart"), "{err}");

    let out = trellis(&config, &["inspect", "-n", "shop", MESHED_POD]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(
            "cannot port-forward to pod shop/api-5f6b7-k8s9d port 15000 through the API server"
        ),
        "{err}"
    );
}
