//! What `trellis svid fetch`, `trellis check --local` and `trellis inspect --admin` say when
//! given something wrong: the built binary against a real control plane (local mode, in this
//! process, on loopback) and against addresses where nothing or the wrong thing listens. Each
//! error is one line that says what is wrong and what to do — no Rust debug structures, no
//! repeated causes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::SystemTime;

use tempfile::TempDir;
use trellis_ca::{CaMaterial, TrustDomain};

const TOKEN: &str = "frontend-token-0123456789";

/// A control plane in local mode and the files a user would point the CLI at.
struct Plane {
    running: trellis_control_plane::server::Running,
    dir: TempDir,
}

impl Plane {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("join-tokens");
        std::fs::write(&tokens, format!("{TOKEN} ns/shop/sa/frontend\n")).unwrap();
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        std::fs::write(dir.path().join("empty-token"), "\n").unwrap();
        std::fs::write(dir.path().join("unknown-token"), "not-a-known-token-at-all").unwrap();
        let other = CaMaterial::generate_root(&TrustDomain::default(), SystemTime::now()).unwrap();
        std::fs::write(dir.path().join("other-root.pem"), other.root_cert_pem).unwrap();
        let argv = [
            "trellis-control-plane".to_owned(),
            "--mode=local".into(),
            format!("--state-dir={}", dir.path().join("state").display()),
            format!("--join-tokens={}", tokens.display()),
            "--listen=127.0.0.1:0".into(),
            "--metrics-listen=127.0.0.1:0".into(),
        ];
        let config = <trellis_control_plane::config::Args as clap::Parser>::try_parse_from(argv)
            .unwrap()
            .validate()
            .unwrap();
        let running = trellis_control_plane::server::start(&config, None)
            .await
            .unwrap();
        std::fs::write(dir.path().join("root-cert.pem"), running.bundle.to_pem()).unwrap();
        Self { running, dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn grpc(&self) -> String {
        self.running.grpc_addr.to_string()
    }

    fn metrics(&self) -> String {
        self.running.metrics_addr.to_string()
    }
}

/// An address on loopback where nothing listens (bound, then closed).
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

/// Runs the built `trellis` with `args`, without colour or inherited settings, off the
/// runtime's threads.
async fn trellis(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args(&args)
            .env("NO_COLOR", "1")
            .env("KUBECONFIG", "/nonexistent")
            .env_remove("TRELLIS_ADMIN")
            .env_remove("TRELLIS_CONTROL_PLANE")
            .env_remove("TRELLIS_TOKEN_FILE")
            .env_remove("TRELLIS_TRUST_BUNDLE_FILE")
            .env_remove("TRELLIS_TRUST_DOMAIN")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Checks that `text` reads as plain sentences: no debug structures, no cause said twice.
fn assert_readable(text: &str) {
    for debug in ["Other(", "OtherError", " { ", "Some(", "TrustDomain("] {
        assert!(
            !text.contains(debug),
            "debug structure {debug:?} in {text:?}"
        );
    }
    let parts: Vec<&str> = text.split(": ").map(str::trim).collect();
    for pair in parts.windows(2) {
        assert_ne!(pair[0], pair[1], "repeated cause in {text:?}");
    }
}

/// The command failed with exit status 1 and one readable line on stderr containing every
/// needle.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert_readable(lines[0]);
    for needle in needles {
        assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    }
}

/// `svid fetch` with the plane's files, to `addr`, with `token` and `bundle` file names.
async fn fetch(plane: &Plane, addr: &str, token: &str, bundle: &str) -> Output {
    let out: PathBuf = plane.dir.path().join("out");
    trellis(&[
        "svid",
        "fetch",
        "--control-plane",
        addr,
        "--token-file",
        &plane.file(token),
        "--trust-bundle",
        &plane.file(bundle),
        "--out",
        out.to_str().unwrap(),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_fetch_says_what_is_wrong_and_what_to_do_in_one_line() {
    let plane = Plane::start().await;
    let ok = fetch(&plane, &plane.grpc(), "token", "root-cert.pem").await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let cases: [(&str, String, &str, &str, &[&str]); 6] = [
        (
            "no server",
            closed_port(),
            "token",
            "root-cert.pem",
            &["connection refused: nothing listens there", "gRPC port"],
        ),
        (
            "wrong root",
            plane.grpc(),
            "token",
            "other-root.pem",
            &[
                "certificate is not trusted: peer certificate is not issued by any root of the trust bundle for cluster.local",
                "is the trust bundle the mesh's root-cert.pem?",
            ],
        ),
        (
            "metrics port instead of the gRPC port",
            plane.metrics(),
            "token",
            "root-cert.pem",
            &["does not speak TLS", "rather than its metrics port"],
        ),
        (
            "empty token file",
            plane.grpc(),
            "empty-token",
            "root-cert.pem",
            &["empty-token is empty; it must hold the bearer token"],
        ),
        (
            "missing token file",
            plane.grpc(),
            "no-such-token",
            "root-cert.pem",
            &["--token-file", "no-such-token: No such file or directory"],
        ),
        (
            "unknown token",
            plane.grpc(),
            "unknown-token",
            "root-cert.pem",
            &[
                "unknown join token",
                "check that --token-file",
                "holds a token this control plane accepts",
            ],
        ),
    ];
    for (case, addr, token, bundle, needles) in cases {
        println!("case: {case}");
        assert_one_line_error(&fetch(&plane, &addr, token, bundle).await, needles);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_port_is_flagged_as_bad_usage_before_anything_is_dialled() {
    for args in [
        &[
            "svid",
            "fetch",
            "--control-plane",
            "127.0.0.1",
            "--token-file",
            "t",
            "--trust-bundle",
            "b",
        ][..],
        &["check", "--local", "127.0.0.1", "--trust-bundle", "b"],
        &["inspect", "--admin", "localhost"],
    ] {
        let out = trellis(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains("has no port; give host:port"),
            "{args:?}: {stderr}"
        );
        assert_readable(first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_local_explains_an_untrusted_or_silent_control_plane() {
    let plane = Plane::start().await;
    let check = |addr: String, bundle: &str| {
        let bundle = plane.file(bundle);
        async move { trellis(&["check", "--local", &addr, "--trust-bundle", &bundle]).await }
    };
    let good = check(plane.grpc(), "root-cert.pem").await;
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );

    for (addr, bundle, needle) in [
        (
            plane.grpc(),
            "other-root.pem",
            "not issued by any root of the trust bundle",
        ),
        (plane.metrics(), "root-cert.pem", "does not speak TLS"),
        (closed_port(), "root-cert.pem", "Connection refused"),
    ] {
        let out = check(addr, bundle).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        let failed: Vec<&str> = stdout
            .lines()
            .skip_while(|l| !l.starts_with('✘'))
            .take(2)
            .collect();
        let reason = failed.get(1).copied().unwrap_or_default();
        assert!(reason.contains(needle), "{needle:?} not in {stdout}");
        assert_readable(reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_says_once_why_the_admin_endpoint_does_not_answer() {
    let plane = Plane::start().await;
    let closed = closed_port();
    let out = trellis(&["inspect", "--admin", &closed]).await;
    assert_one_line_error(
        &out,
        &["Connection refused", "is trellis-proxy running here"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");

    // Something answers HTTP there, but it is not a proxy's admin endpoint.
    let out = trellis(&["inspect", "--admin", &plane.metrics()]).await;
    assert_one_line_error(
        &out,
        &[
            "answered /identity with 404",
            "a Trellis proxy's admin address",
        ],
    );
}
