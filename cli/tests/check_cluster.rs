//! `trellis check` and `trellis inspect -n NS POD` against a fake Kubernetes API server
//! ([`fake_cluster`]) whose port-forwards reach the in-process control plane and proxies of
//! `local_mesh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_cluster;
mod local_mesh;

use std::collections::HashMap;

use fake_cluster::*;
use local_mesh::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_healthy_cluster_and_reaches_the_control_plane_through_port_forward() {
    let mesh = Mesh::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = mesh.cp.bundle.to_pem();
    let server = fake_api_server(Cluster::healthy(
        root,
        [(("trellis-system", CP_POD, 15012), mesh.cp.grpc_addr)],
    ))
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
    let server = fake_api_server(Cluster::healthy(
        root,
        [(
            ("shop", MESHED_POD, 15000),
            mesh.backend.addrs.admin.unwrap(),
        )],
    ))
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
    let server = fake_api_server(Cluster::healthy(root, [])).await;
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
