//! Node agents (Istio's ambient ztunnel) asking for the identities of pods on their own node with
//! `ImpersonatedIdentity`, in Kubernetes mode against the fake API server: the caller's token is
//! the recorded pod-bound one (pod `shop/web`, service account `shop/frontend`, which these tests
//! configure as the node agent), its node comes from the pods the control plane reflects.

mod common;

use base64::Engine as _;
use common::apiserver::{FakeApiServer, exchange};
use common::*;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use trellis_ca::{certs_from_pem, peer_spiffe_id};

const PODS: &str = "/api/v1/pods";
/// The pod the recorded pod-bound token is bound to, and its UID (from the recording).
const AGENT_POD: (&str, &str) = ("web", "4ba4a3dc-6bef-4439-9508-0710852a9de5");
const ON_ITS_NODE: &str = "spiffe://cluster.local/ns/shop/sa/backend";
const ON_ANOTHER_NODE: &str = "spiffe://cluster.local/ns/pay/sa/ledger";

fn pod(namespace: &str, name: &str, uid: &str, service_account: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {"serviceAccountName": service_account, "nodeName": node, "containers": []},
        "status": {"phase": "Running"},
    })
}

/// The node agent's pod and a backend on node-a; a ledger on node-b.
async fn cluster() -> FakeApiServer {
    let api = FakeApiServer::start().await;
    let (name, uid) = AGENT_POD;
    let pods = api.collections();
    pods.put(PODS, pod("shop", name, uid, "frontend", "node-a"));
    pods.put(PODS, pod("shop", "db-1", "uid-db-1", "backend", "node-a"));
    pods.put(
        PODS,
        pod("pay", "ledger-1", "uid-ledger-1", "ledger", "node-b"),
    );
    api
}

/// A PEM CSR naming `id`, as ztunnel makes it.
fn csr_pem(id: &str) -> String {
    let (_, der) = key_and_csr(Some(&common::id(id)));
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    )
}

/// `CreateCertificate` with `token`, asking for `requested` by `ImpersonatedIdentity`; the
/// identity of the leaf issued.
async fn ask_for(channel: &Channel, token: &str, requested: &str) -> Result<String, tonic::Status> {
    let answer = istio_create_certificate_with(
        channel,
        bearer(token).as_deref(),
        csr_pem(requested),
        3600,
        Some(impersonating(requested)),
    )
    .await?;
    let leaf = answer.cert_chain.first().expect("a leaf");
    let leaf = certs_from_pem(leaf.as_bytes()).expect("PEM");
    Ok(peer_spiffe_id(&leaf[0]).expect("an SVID").to_string())
}

#[tokio::test]
async fn a_node_agent_gets_the_identity_of_a_pod_on_its_node_and_nothing_else() {
    let api = cluster().await;
    let (running, channel) = start_kubernetes(&api, &["--node-agents", "shop/frontend"]).await;
    let agent = exchange("pod-bound").token().to_owned();
    // The reflector lists the pods shortly after start.
    let issued = eventually("the node agent's pod is known", || async {
        ask_for(&channel, &agent, ON_ITS_NODE)
            .await
            .map_err(|s| s.message().to_owned())
    })
    .await;
    assert_eq!(issued, ON_ITS_NODE);
    assert_refused(
        ask_for(&channel, &agent, ON_ANOTHER_NODE).await,
        Code::PermissionDenied,
        &["no pod on node \"node-a\"", ON_ANOTHER_NODE],
    );
    // The same service account with a token bound to no pod: its node is unknown.
    let unbound = exchange("valid").token().to_owned();
    assert_refused(
        ask_for(&channel, &unbound, ON_ITS_NODE).await,
        Code::PermissionDenied,
        &["not bound to a pod"],
    );
    // Without the metadata, the caller gets its own identity, as before.
    let own =
        istio_create_certificate(&channel, bearer(&agent).as_deref(), csr_pem(FRONTEND), 3600)
            .await
            .expect("its own identity");
    assert!(!own.cert_chain.is_empty());
    // The pod re-created under the same name (new UID) is not the token's pod.
    let (name, _) = AGENT_POD;
    api.collections().put(
        PODS,
        pod("shop", name, "uid-recreated", "frontend", "node-a"),
    );
    eventually("the re-created pod is seen", || async {
        match ask_for(&channel, &agent, ON_ITS_NODE).await {
            Err(s) if s.message().contains("is not known with") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    stop(running).await;
}

#[tokio::test]
async fn without_node_agents_configured_impersonation_is_refused_naming_the_flag() {
    let api = cluster().await;
    let (running, channel) = start_kubernetes(&api, &[]).await;
    let agent = exchange("pod-bound").token().to_owned();
    assert_refused(
        ask_for(&channel, &agent, ON_ITS_NODE).await,
        Code::PermissionDenied,
        &[
            "spiffe://cluster.local/ns/shop/sa/frontend may not ask for other identities",
            "--node-agents",
        ],
    );
    stop(running).await;
}
