//! A fake Kubernetes API server for the CLI's tests: a plain-HTTP server on loopback that
//! answers the reads the CLI makes with fixed objects (the chart's CRD, Deployments, webhook
//! and Secret; a labelled namespace with pods), and serves port-forward (WebSocket,
//! `v4.channel.k8s.io`) to real addresses: the in-process control plane and proxies of
//! `local_mesh`. Only the kubelet's end of port-forward is faked.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The control plane pod of the fake cluster.
pub const CP_POD: &str = "trellis-control-plane-5c6d7-abcde";
/// A meshed pod of the fake cluster.
pub const MESHED_POD: &str = "api-5f6b7-k8s9d";

/// Which objects the fake cluster holds.
pub struct Cluster {
    /// The webhook's caBundle (PEM).
    pub ca_bundle: String,
    /// The injector Secret's ca.crt (PEM).
    pub ca_crt: String,
    /// Available replicas of the injector's Deployment (of 1).
    pub injector_available: i32,
    /// Where port-forwards to (namespace, pod, port) really go.
    pub forwards: HashMap<(&'static str, &'static str, u16), SocketAddr>,
    /// Whether the meshed pod's readiness probe still goes to the app (not rewritten).
    pub plaintext_probe: bool,
}

impl Cluster {
    /// A healthy cluster: webhook and injector Secret agree on `root`, the injector is
    /// available, probes are rewritten; port-forwards go where `forwards` says.
    pub fn healthy(
        root: String,
        forwards: impl IntoIterator<Item = ((&'static str, &'static str, u16), SocketAddr)>,
    ) -> Cluster {
        Cluster {
            ca_bundle: root.clone(),
            ca_crt: root,
            injector_available: 1,
            forwards: forwards.into_iter().collect(),
            plaintext_probe: false,
        }
    }
}

pub fn root_pem() -> String {
    let td = trellis_ca::TrustDomain::new("cluster.local").unwrap();
    trellis_ca::CaMaterial::generate_root(&td, std::time::SystemTime::now())
        .unwrap()
        .root_cert_pem
}

pub fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

/// The answer to `GET path?query`.
pub fn answer(cluster: &Cluster, path: &str, query: &str) -> (u16, Value) {
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
        // Every pod (trellis status): the local mesh's proxies by the pod names they give, and
        // the api pod, which has no proxy running.
        "/api/v1/pods" => {
            let probes =
                json!({"trellis.dev/injected": "true", "trellis.dev/app-probes": "rewritten"});
            (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                    pod("backend", probes.clone(), json!([]), json!({}), "Running"),
                    pod("frontend", probes, json!([]), json!({}), "Running"),
                    pod(MESHED_POD, json!({"trellis.dev/injected": "true"}), rs("api-5f6b7"),
                        json!({}), "Running"),
                    pod("web-7d9f8b7c5-x2x4q", json!({}), json!([]), json!({}), "Running"),
                ]}),
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
pub async fn fake_api_server(cluster: Cluster) -> String {
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
pub fn forward_target(cluster: &Cluster, path: &str, query: &str) -> Option<(u16, SocketAddr)> {
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
pub async fn port_forward(mut s: TcpStream, head: &str, port: u16, to: SocketAddr) {
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

pub fn kubeconfig(dir: &Path, server: &str) -> String {
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

pub async fn trellis(kubeconfig: &str, args: &[&str]) -> Output {
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

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
