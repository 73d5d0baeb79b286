//! `trellis inspect` and `trellis check --local` as a user runs them: the built binary against
//! a real control plane (local mode) and real proxies (explicit mode) running in this process
//! on loopback, with one allowed and one refused connection between them.
//!
//! No root, no cluster: everything binds 127.0.0.1 port 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod local_mesh;

use std::process::{Command, Output};

use local_mesh::*;
use serde_json::Value;

/// Runs the built `trellis` with `args`, without colour and without inherited Trellis
/// settings, off the runtime's threads.
async fn trellis(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(&args)
            .env("NO_COLOR", "1")
            .env_remove("TRELLIS_ADMIN")
            .env_remove("TRELLIS_TRUST_DOMAIN")
            .env("KUBECONFIG", "/nonexistent")
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
async fn inspect_and_check_show_a_real_mesh() {
    let mesh = Mesh::start().await;
    mesh.one_allowed_one_refused().await;
    let frontend_admin = mesh.frontend.addrs.admin.unwrap().to_string();
    let backend_admin = mesh.backend.addrs.admin.unwrap().to_string();

    // -o json: the frontend's identity and its outbound handshake to the backend.
    let out = trellis(&["inspect", "--admin", &frontend_admin, "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["identity"]["spiffe_id"], FRONTEND);
    assert!(doc["identity"]["seconds_left"].as_u64().unwrap() > 3600);
    let outbound = doc["handshakes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["direction"] == "outbound")
        .expect("an outbound handshake");
    assert_eq!(outbound["peer_id"], BACKEND);
    assert_eq!(outbound["tls"]["version"], "TLSv1_3");
    assert_eq!(outbound["tls"]["alpn"], "h2");
    assert_eq!(outbound["decision"], "allow");

    // The table: identity block, header, and the handshake's row.
    let out = trellis(&["inspect", "--admin", &frontend_admin]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    println!("{text}");
    assert!(
        text.starts_with(&format!("Identity   {FRONTEND}\n")),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "NO_COLOR: no escape codes\n{text}");
    let header = text
        .lines()
        .find(|l| l.starts_with("TIME"))
        .expect("header");
    for column in [
        "DIRECTION",
        "PEER ID",
        "TLS",
        "CIPHER",
        "ALPN",
        "HANDSHAKE",
        "DECISION",
    ] {
        assert!(header.contains(column), "{column}: {header}");
    }
    let row = text
        .lines()
        .find(|l| l.contains(BACKEND))
        .expect("a row with the backend's identity");
    for cell in ["outbound", "TLSv1_3", "TLS13_", " h2 ", " ms ", "allow"] {
        assert!(row.contains(cell), "{cell:?} in {row}");
    }

    // The backend's table: the frontend allowed, the intruder denied with the reason.
    let out = trellis(&["inspect", "--admin", &backend_admin, "--limit", "10"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    println!("{text}");
    let allowed = text
        .lines()
        .find(|l| l.contains(FRONTEND))
        .expect("frontend row");
    assert!(
        allowed.contains("inbound") && allowed.ends_with("allow"),
        "{allowed}"
    );
    let denied = text
        .lines()
        .find(|l| l.contains(INTRUDER))
        .expect("intruder row");
    assert!(denied.contains("deny: "), "{denied}");
    assert!(denied.contains("shop/backend-allow"), "{denied}");

    // check --local: every line ✔, exit 0.
    let root = mesh.root_pem().display().to_string();
    let grpc = mesh.cp.grpc_addr.to_string();
    let metrics = mesh.cp.metrics_addr.to_string();
    let out = trellis(&[
        "check",
        "--local",
        &grpc,
        "--trust-bundle",
        &root,
        "--metrics",
        &metrics,
    ])
    .await;
    let text = stdout(&out);
    println!("{text}");
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!("✔ control plane at {grpc} proves {CONTROL_PLANE}")),
        "{text}"
    );
    assert!(text.contains("✔ control plane reports SERVING"), "{text}");
    assert!(text.contains("✔ root certificate"), "{text}");
    assert!(text.contains("/ready: 200"), "{text}");
    assert!(!text.contains('✘'), "{text}");
    assert!(text.ends_with("Status check results are ✔\n"), "{text}");

    // The wrong identity expected: the TLS check fails, exit 1.
    let out = trellis(&[
        "check",
        "--local",
        &grpc,
        "--trust-bundle",
        &root,
        "--control-plane-id",
        "spiffe://cluster.local/ns/other/sa/impostor",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("✘ control plane at"),
        "{}",
        stdout(&out)
    );

    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_with_exit_1_against_a_closed_port() {
    let dir = tempfile::tempdir().unwrap();
    let td = trellis_ca::TrustDomain::new("cluster.local").unwrap();
    let root = trellis_ca::CaMaterial::generate_root(&td, std::time::SystemTime::now()).unwrap();
    let bundle = dir.path().join("root-cert.pem");
    std::fs::write(&bundle, root.root_cert_pem).unwrap();
    let addr = format!("127.0.0.1:{}", closed_port().await);
    let out = trellis(&[
        "check",
        "--local",
        &addr,
        "--trust-bundle",
        bundle.to_str().unwrap(),
    ])
    .await;
    let text = stdout(&out);
    println!("{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("✘ control plane at {addr}")),
        "{text}"
    );
    assert!(
        text.contains("hint: is trellis-control-plane running"),
        "{text}"
    );
    assert!(
        text.contains("✔ root certificate"),
        "the bundle itself is fine\n{text}"
    );
    assert!(text.contains("Status check results are ✘"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_says_clearly_when_no_proxy_is_there() {
    let addr = format!("127.0.0.1:{}", closed_port().await);
    let out = trellis(&["inspect", "--admin", &addr]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "error: cannot read the proxy's admin endpoint: cannot connect to {addr}"
        )),
        "{err}"
    );
    assert!(err.contains("; is trellis-proxy running"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(stdout(&out).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_and_help_and_completions_exit_0() {
    let out = trellis(&["inspect", "--admin", "127.0.0.1:1", "some-pod"]).await;
    assert_eq!(out.status.code(), Some(2), "--admin and POD conflict");
    let out = trellis(&["check", "--trust-bundle", "x.pem"]).await;
    assert_eq!(out.status.code(), Some(2), "--trust-bundle needs --local");
    let out = trellis(&["inspect", "--limit", "0"]).await;
    assert_eq!(out.status.code(), Some(2));

    for command in [
        &["inspect"][..],
        &["check"],
        &["status"],
        &["describe", "pod"],
        &["version"],
        &["completion"],
        &["completions"],
    ] {
        let out = trellis(&[command, &["--help"]].concat()).await;
        assert_eq!(out.status.code(), Some(0));
        assert!(stdout(&out).contains("Examples:"), "{command:?} --help");
    }
    for (command, shell) in [
        ("completion", "bash"),
        ("completions", "zsh"),
        ("completion", "fish"),
    ] {
        let out = trellis(&[command, shell]).await;
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = stdout(&out);
        assert!(
            script.contains("inspect") && script.contains("status") && script.contains("describe"),
            "{shell}"
        );
    }
    let out = trellis(&["version", "--client"]).await;
    assert_eq!(
        stdout(&out),
        format!("client: trellis {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colour_is_only_used_when_asked_for_or_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("root-cert.pem");
    let td = trellis_ca::TrustDomain::new("cluster.local").unwrap();
    let root = trellis_ca::CaMaterial::generate_root(&td, std::time::SystemTime::now()).unwrap();
    std::fs::write(&bundle, root.root_cert_pem).unwrap();
    let addr = format!("127.0.0.1:{}", closed_port().await);
    let args = [
        "check",
        "--local",
        &addr,
        "--trust-bundle",
        bundle.to_str().unwrap(),
    ];
    // Not a terminal (a pipe): no colour, even without NO_COLOR.
    let piped = trellis(&args).await;
    assert!(!stdout(&piped).contains('\x1b'));
    let mut forced = args.to_vec();
    forced.extend(["--color", "always"]);
    let coloured = trellis(&forced).await;
    assert!(
        stdout(&coloured).contains("\x1b[31m✘\x1b[0m"),
        "{}",
        stdout(&coloured)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_only_new_connections_and_stops_on_ctrl_c() {
    use std::io::BufRead;

    let mesh = Mesh::start().await;
    let via = mesh.frontend.addrs.explicit_outbound[0];
    assert_eq!(roundtrip(via, b"first").await, b"first");
    let admin = mesh.frontend.addrs.admin.unwrap().to_string();
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(["inspect", "--admin", &admin, "--watch", "-o", "json"])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = || rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();

    // The first screen: everything so far (one outbound connection).
    let first: Value = serde_json::from_str(&tokio::task::block_in_place(next_line)).unwrap();
    assert_eq!(first["identity"]["spiffe_id"], FRONTEND);
    assert_eq!(first["handshakes"].as_array().unwrap().len(), 1);

    // A new connection shows up on a later line, once, and the first is not listed again. (A
    // line may come first with no row when the proxy's certificate is replaced meanwhile — on a
    // busy machine the live trust bundle can arrive after the first screen, and then the second
    // connection may open a new tunnel rather than reuse the pooled one; which rows count as new
    // is the pure `new_since`, tested in the crate.)
    let first_row = first["handshakes"][0].clone();
    assert_eq!(roundtrip(via, b"second").await, b"second");
    let mut lines = Vec::new();
    let rows: Vec<Value> = loop {
        let next: Value = serde_json::from_str(&tokio::task::block_in_place(next_line)).unwrap();
        let rows = next["handshakes"].as_array().unwrap().clone();
        lines.push(next);
        if !rows.is_empty() {
            break rows;
        }
        assert!(lines.len() < 5, "first screen {first}, then {lines:?}");
    };
    assert_eq!(
        rows.len(),
        1,
        "only the new connection is printed: first screen {first}, then {lines:?}"
    );
    assert_eq!(rows[0]["peer_id"], BACKEND);
    // Records carry no ID; the second connection is the one accepted later (its tunnel stream
    // opened after the first round trip, TLS handshake included, had ended).
    assert!(
        rows[0]["time"].as_str() > first_row["time"].as_str(),
        "the first connection was listed again: {rows:?} after {first_row}"
    );

    // Ctrl-C (SIGINT to the process we started) ends it cleanly.
    let killed = Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::block_in_place(|| child.0.wait()).unwrap();
    assert_eq!(status.code(), Some(0));
    mesh.stop().await;
}

/// Kills the child (by its id) if the test ends before it exited, also when the test fails.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
