//! `trellis status`, `trellis version` and the kubectl-style flags against the fake API server
//! ([`fake_cluster`]): `status` reads the in-process control plane's `/status` through a
//! port-forward to its pod's port 15015 and joins it with the pods the API server lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_cluster;
mod local_mesh;

use std::process::Command;
use std::time::{Duration, Instant};

use fake_cluster::*;
use local_mesh::*;
use serde_json::Value;

async fn cluster_with(mesh: &Mesh) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = mesh.cp.bundle.to_pem();
    let server = fake_api_server(Cluster::healthy(
        root,
        [(
            ("trellis-system", CP_POD, 15015),
            mesh.cp.status_addr.unwrap(),
        )],
    ))
    .await;
    let config = kubeconfig(dir.path(), &server);
    (dir, config)
}

fn row<'a>(doc: &'a Value, pod: &str) -> &'a Value {
    doc["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pod"] == pod)
        .unwrap_or_else(|| panic!("no row for {pod}: {doc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_every_meshed_pod_as_the_control_plane_sees_it() {
    let mesh = Mesh::start().await;
    let (_dir, config) = cluster_with(&mesh).await;
    let serial = mesh
        .backend
        .ctx
        .svid
        .borrow()
        .as_ref()
        .unwrap()
        .svid
        .serial()
        .to_owned();

    // Every proxy acknowledges the current version soon after it connects.
    let deadline = Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let out = trellis(&config, &["status", "-o", "json"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let synced = |pod| row(&doc, pod)["state"] == "synced";
        if synced("shop/backend") && synced("shop/frontend") {
            break doc;
        }
        assert!(Instant::now() < deadline, "never in sync: {doc}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let backend = row(&doc, "shop/backend");
    assert_eq!(backend["identity"], BACKEND);
    assert_eq!(backend["cert_serial"], serial.as_str());
    assert!(
        backend["cert_secs_left"].as_i64().unwrap() > 60,
        "{backend}"
    );
    assert_eq!(backend["acked_version"], doc["mesh_version"]);
    assert_eq!(backend["app_probes"], "rewritten");
    assert!(backend["mtls"].is_string(), "{backend}");
    // A meshed pod whose proxy never connected.
    assert_eq!(row(&doc, "shop/api-5f6b7-k8s9d")["state"], "unreachable");
    // Pods that are not meshed are not listed; streams without a pod neither.
    assert_eq!(doc["proxies"].as_array().unwrap().len(), 3, "{doc}");

    let out = trellis(&config, &["status"]).await;
    let text = stdout(&out);
    println!("{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("shop/backend"))
        .unwrap();
    assert!(line.contains(BACKEND) && line.contains("SYNCED"), "{line}");
    assert!(line.contains(&serial[..16]), "{line}");
    let line = text.lines().find(|l| l.starts_with("shop/api-")).unwrap();
    assert!(line.contains("UNREACHABLE"), "{line}");
    assert!(text.contains("3 proxies, 1 need attention"), "{text}");

    // --exit-code fails the gate on the unreachable pod, and still prints the report.
    let out = trellis(&config, &["status", "--exit-code"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("UNREACHABLE"), "{}", stdout(&out));

    // One namespace, as YAML: the namespace's own pod list.
    let out = trellis(&config, &["status", "-n", "shop", "-o", "yaml"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_saphyr::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["proxies"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(row(&doc, "shop/api-5f6b7-k8s9d")["state"], "unreachable");

    // `version` reads the same document.
    let out = trellis(&config, &["version"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!("control plane: {v}\nproxies: {v} (3)\n")),
        "{text}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_what_to_check_when_the_control_plane_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_pem();
    let server = fake_api_server(Cluster::healthy(root, [])).await;
    let config = kubeconfig(dir.path(), &server);
    let out = trellis(&config, &["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot read the control plane's /status at pod trellis-system/trellis-control-plane-5c6d7-abcde port 15015"),
        "{err}"
    );
    assert!(err.contains("--status-listen 127.0.0.1:15015"), "{err}");
    // `version` still answers for itself.
    let out = trellis(&config, &["version"]).await;
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.starts_with("client: trellis "), "{text}");
    assert!(
        text.contains("control plane: unavailable (cannot read"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_and_context_flags_choose_the_cluster_as_kubectl_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_pem();
    let server = fake_api_server(Cluster::healthy(root, [])).await;
    let config = kubeconfig(dir.path(), &server);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(args)
            .env("KUBECONFIG", dir.path().join("missing"))
            .env("NO_COLOR", "1")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap()
    };
    // --kubeconfig wins over KUBECONFIG (which points nowhere); -l picks a pod by label, and
    // -n names its namespace.
    let out = run(&[
        "--kubeconfig",
        &config,
        "inspect",
        "-n",
        "shop",
        "-l",
        "app=web",
    ]);
    let err = stderr(&out);
    assert!(
        err.starts_with("error: pod shop/web-7d9f8b7c5-x2x4q is not meshed"),
        "{err}"
    );
    let out = run(&[
        "check",
        "--kubeconfig",
        &config,
        "-n",
        "trellis-system",
        "-o",
        "json",
    ]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["sections"][0]["outcomes"][0]["status"], "ok", "{doc}");
    // A context the kubeconfig does not have.
    let out = run(&["--kubeconfig", &config, "--context", "prod", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("prod"), "{err}");
    // deploy/NAME reads the Deployment (for its selector) first.
    let out = run(&["--kubeconfig", &config, "inspect", "deploy/api"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("deployment shop/api not found"), "{err}");
    // pod/NAME and deploy/NAME parse; other kinds are refused as usage errors.
    let out = run(&["inspect", "svc/web"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("expected NAME, pod/NAME or deploy/NAME"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_pod_shows_the_policy_in_force_its_refusals_and_a_verdict_for_a_caller() {
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

    let out = trellis(&config, &["describe", "pod", MESHED_POD, "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["injected"], true);
    assert_eq!(doc["identity"], BACKEND);
    let rule = &doc["proxy"]["policy"]["rules"][0];
    assert_eq!(rule["name"], "shop/backend-allow", "{doc}");
    assert_eq!(rule["allow"][0], FRONTEND, "{doc}");
    let port = rule["ports"][0].as_u64().unwrap().to_string();
    let refusals = doc["proxy"]["refusals"].as_array().unwrap();
    assert!(
        refusals
            .iter()
            .any(|r| r["peer_id"] == INTRUDER && r["decision"] == "deny"),
        "{doc}"
    );

    let out = trellis(
        &config,
        &[
            "describe", "pod", "-n", "shop", MESHED_POD, "--from", FRONTEND, "--port", &port,
        ],
    )
    .await;
    let text = stdout(&out);
    println!("{text}");
    assert!(
        text.contains(&format!(
            "Verdict:    {FRONTEND} CAN reach shop/{MESHED_POD} on port {port}\n"
        )),
        "{text}"
    );
    assert!(text.contains("mTLS mode:  STRICT\n"), "{text}");
    assert!(
        text.contains(&format!(
            "  shop/backend-allow: port {port} allows {FRONTEND}\n"
        )),
        "{text}"
    );
    let out = trellis(
        &config,
        &[
            "describe", "pod", MESHED_POD, "--from", INTRUDER, "--port", &port,
        ],
    )
    .await;
    let text = stdout(&out);
    let verdict = text.lines().find(|l| l.starts_with("Verdict:")).unwrap();
    assert!(
        verdict.contains(&format!(
            "{INTRUDER} CANNOT reach shop/{MESHED_POD} on port {port}: "
        )) && verdict.contains("shop/backend-allow"),
        "{verdict}"
    );

    // A pod the injector has not seen yet: why, and what that means.
    let out = trellis(&config, &["describe", "pod", "web-7d9f8b7c5-x2x4q"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        text.contains("Injected:   no (created before injection was enabled"),
        "{text}"
    );
    assert!(text.contains("is not meshed"), "{text}");
    mesh.stop().await;
}
