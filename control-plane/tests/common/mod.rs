//! What the control plane's integration tests share: a real control plane started with
//! `server::start` on `127.0.0.1:0` (local mode here, Kubernetes mode with [`apiserver`]),
//! join-token files, TLS channels and raw gRPC requests, plain-HTTP GETs for the metrics port,
//! the log lines the server wrote, and polling with a deadline.
//!
//! Everything a test creates lives in a `TempDir` or in the test's own tokio runtime, so it is
//! removed or stopped when the test ends, even when it fails.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod apiserver;
pub mod collections;
pub mod openssl;
pub mod watcher;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use clap::Parser;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};
use trellis_ca::{SpiffeId, WorkloadKey};
use trellis_client::IdentityClient;
use trellis_control_plane::config::{Args, Config};
use trellis_control_plane::server::{self, Running, StartError};
use trellis_proto::identity::identity_client::IdentityClient as RawIdentityClient;
use trellis_proto::identity::{CertifyRequest, CertifyResponse};
use trellis_proto::istio::istio_certificate_service_client::IstioCertificateServiceClient;
use trellis_proto::istio::{IstioCertificateRequest, IstioCertificateResponse};

/// The identity of [`FRONTEND_TOKEN`].
pub const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
/// The identity of [`BACKEND_TOKEN`].
pub const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
/// A join token for `ns/shop/sa/frontend`.
pub const FRONTEND_TOKEN: &str = "frontend-0f1e2d3c4b5a69788796";
/// A join token for `ns/shop/sa/backend`.
pub const BACKEND_TOKEN: &str = "backend-a1b2c3d4e5f60718293a";
/// A well-formed token that is in no join-token file.
pub const UNKNOWN_TOKEN: &str = "unknown-00112233445566778899";

/// How long a single network step (start, call, GET) may take before the test fails.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`eventually`] keeps trying.
pub const EVENTUALLY: Duration = Duration::from_secs(10);
/// Pause between two attempts of [`eventually`].
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Parses a SPIFFE ID the test wrote.
pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("test IDs are valid")
}

// ---------------------------------------------------------------------------------------------
// Time limits and polling
// ---------------------------------------------------------------------------------------------

/// Awaits `fut`, failing the test if it takes longer than [`STEP_TIMEOUT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {STEP_TIMEOUT:?}"),
    }
}

/// Calls `attempt` until it returns `Ok`, at most for [`EVENTUALLY`]; fails the test with the
/// last error otherwise.
pub async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let last = match tokio::time::timeout(STEP_TIMEOUT, attempt()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => e,
            Err(_) => format!("one attempt took longer than {STEP_TIMEOUT:?}"),
        };
        assert!(
            Instant::now() < deadline,
            "{what}: still not the case after {EVENTUALLY:?}; last attempt: {last}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

/// Every log line written in this test process.
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Writes log lines to [`LOGS`] and to the test's captured output (shown when a test fails).
struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf).into_owned();
        eprint!("{line}");
        LOGS.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process's log subscriber (once): the server's `tracing` output is kept for
/// [`logged`] and shown with a failing test's output.
pub fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::new(
            "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,kube=warn,kube_client=warn,rustls=warn",
        );
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            .try_init();
    });
}

/// Whether some log line written so far contains every one of `needles`.
pub fn logged(needles: &[&str]) -> bool {
    LOGS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .any(|line| needles.iter().all(|n| line.contains(n)))
}

// ---------------------------------------------------------------------------------------------
// Join tokens and configuration
// ---------------------------------------------------------------------------------------------

/// Writes a join-token file (`<token> <identity>` lines) atomically, as an operator's tooling
/// (or a Kubernetes volume update) does: a temporary file renamed over the old one.
pub fn write_join_tokens(path: &Path, entries: &[(&str, &str)]) {
    let mut text = String::from("# token identity\n");
    for (token, identity) in entries {
        text.push_str(&format!("{token} {identity}\n"));
    }
    write_atomically(path, text.as_bytes());
}

/// Replaces `path` with `contents` through a rename, so a reader never sees half a file. The
/// file is private (0600), as a join-token file must be.
pub fn write_atomically(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .expect("create a temporary file");
    file.write_all(contents).expect("write the temporary file");
    file.sync_all().expect("sync the temporary file");
    std::fs::rename(&tmp, path).expect("rename over the old file");
}

/// The flags every test control plane gets: both listeners on an ephemeral loopback port.
const LISTEN: [&str; 4] = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];

/// Parses and validates flags as `main` does.
pub fn config(flags: &[&str]) -> Config {
    let mut argv = vec!["trellis-control-plane"];
    argv.extend_from_slice(&LISTEN);
    argv.extend_from_slice(flags);
    Args::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("flags {argv:?} parse: {e}"))
        .validate()
        .unwrap_or_else(|e| panic!("flags {argv:?} validate: {e}"))
}

/// Local-mode flags: the state directory, the join-token file, and `extra`. Unless `extra`
/// sets a rate limit, the limit is generous so that tests can call as often as they need.
pub fn local_config(state_dir: &Path, join_tokens: &Path, extra: &[&str]) -> Config {
    let state_dir = state_dir.to_str().expect("temporary paths are UTF-8");
    let join_tokens = join_tokens.to_str().expect("temporary paths are UTF-8");
    let mut flags = vec![
        "--mode",
        "local",
        "--state-dir",
        state_dir,
        "--join-tokens",
        join_tokens,
    ];
    if !extra.iter().any(|f| f.starts_with("--rate-limit")) {
        flags.extend_from_slice(&[
            "--rate-limit-per-second",
            "1000",
            "--rate-limit-burst",
            "1000",
        ]);
    }
    flags.extend_from_slice(extra);
    config(&flags)
}

/// Starts the control plane, failing the test if the start takes too long (not if it fails).
pub async fn try_start(config: &Config, kube: Option<kube::Client>) -> Result<Running, StartError> {
    capture_logs();
    within("control plane start", server::start(config, kube)).await
}

/// A control plane in Kubernetes mode talking to the fake `api`, and a TLS channel to it.
pub async fn start_kubernetes(
    api: &apiserver::FakeApiServer,
    extra: &[&str],
) -> (Running, Channel) {
    let mut flags = vec!["--mode", "kubernetes"];
    flags.extend_from_slice(extra);
    let config = config(&flags);
    let running = try_start(&config, Some(api.client()))
        .await
        .unwrap_or_else(|e| panic!("control plane does not start: {e}"));
    let channel = channel(&running, &config).await;
    (running, channel)
}

// ---------------------------------------------------------------------------------------------
// A control plane in local mode
// ---------------------------------------------------------------------------------------------

/// A control plane in local mode with its own state directory and join-token file.
pub struct LocalPlane {
    /// The running server.
    pub running: Running,
    /// Its configuration.
    pub config: Config,
    /// The join-token file (rewrite it with [`write_join_tokens`]).
    pub tokens: PathBuf,
    /// The CA state directory (`<dir>/state`, created by the server).
    pub state: PathBuf,
    /// Holds both; removed when the test ends.
    pub dir: TempDir,
}

impl LocalPlane {
    /// Starts with join tokens for [`FRONTEND`] and [`BACKEND`].
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with_tokens(
            &[
                (FRONTEND_TOKEN, "ns/shop/sa/frontend"),
                (BACKEND_TOKEN, BACKEND),
            ],
            extra,
        )
        .await
    }

    /// Starts with the given join tokens.
    pub async fn start_with_tokens(tokens: &[(&str, &str)], extra: &[&str]) -> Self {
        let dir = TempDir::new().expect("create a temporary directory");
        let tokens_path = dir.path().join("join-tokens");
        write_join_tokens(&tokens_path, tokens);
        let state = dir.path().join("state");
        let config = local_config(&state, &tokens_path, extra);
        let running = try_start(&config, None)
            .await
            .unwrap_or_else(|e| panic!("control plane does not start: {e}"));
        Self {
            running,
            config,
            tokens: tokens_path,
            state,
            dir,
        }
    }

    /// A new TLS channel (one HTTP/2 connection) to the gRPC port.
    pub async fn channel(&self) -> Channel {
        channel(&self.running, &self.config).await
    }

    /// A Trellis client on a new channel.
    pub async fn client(&self) -> IdentityClient {
        IdentityClient::new(self.channel().await)
    }

    /// Stops the server, letting in-flight calls finish.
    pub async fn stop(self) {
        stop(self.running).await;
    }
}

/// Stops a control plane, failing the test if it does not stop in time.
pub async fn stop(running: Running) {
    within(
        "graceful shutdown",
        running.shutdown(Duration::from_secs(5)),
    )
    .await;
}

/// A TLS channel to `running`, trusting its bundle and expecting its own SPIFFE ID.
pub async fn channel(running: &Running, config: &Config) -> Channel {
    within(
        "connecting to the control plane",
        trellis_client::connect(
            &running.grpc_addr.to_string(),
            running.bundle.clone(),
            Some(config.own_id.clone()),
            None,
        ),
    )
    .await
    .expect("the control plane accepts a TLS connection")
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A fresh key and a DER CSR for it naming `id` (or no identity).
pub fn key_and_csr(id: Option<&SpiffeId>) -> (WorkloadKey, Vec<u8>) {
    let key = WorkloadKey::generate().expect("generate a P-256 key");
    let csr = match id {
        Some(id) => key.csr(id),
        None => key.anonymous_csr(),
    }
    .expect("build a CSR");
    (key, csr.as_ref().to_vec())
}

/// `authorization: Bearer <token>`.
pub fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

/// Sets the `authorization` metadata to exactly `value`, if given.
fn authorize<T>(request: &mut tonic::Request<T>, authorization: Option<&str>) {
    if let Some(value) = authorization {
        let value: MetadataValue<_> = value.parse().expect("ASCII metadata");
        request.metadata_mut().insert("authorization", value);
    }
}

/// A raw `Certify` call: any CSR bytes, any `authorization` value (or none).
pub async fn raw_certify(
    channel: &Channel,
    authorization: Option<&str>,
    csr: Vec<u8>,
    ttl_seconds: u64,
) -> Result<CertifyResponse, Status> {
    let mut request = tonic::Request::new(CertifyRequest { csr, ttl_seconds });
    authorize(&mut request, authorization);
    within(
        "Certify",
        RawIdentityClient::new(channel.clone()).certify(request),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// A raw Istio `CreateCertificate` call.
pub async fn istio_create_certificate(
    channel: &Channel,
    authorization: Option<&str>,
    csr_pem: String,
    validity_duration: i64,
) -> Result<IstioCertificateResponse, Status> {
    istio_create_certificate_with(channel, authorization, csr_pem, validity_duration, None).await
}

/// The request metadata ztunnel sends when it asks for a pod's identity: the struct
/// `{"ImpersonatedIdentity": "<SPIFFE ID>"}`.
pub fn impersonating(id: &str) -> prost_types::Struct {
    let value = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(id.to_owned())),
    };
    prost_types::Struct {
        fields: [("ImpersonatedIdentity".to_owned(), value)].into(),
    }
}

/// A raw Istio `CreateCertificate` call with request `metadata` (e.g. [`impersonating`]).
pub async fn istio_create_certificate_with(
    channel: &Channel,
    authorization: Option<&str>,
    csr_pem: String,
    validity_duration: i64,
    metadata: Option<prost_types::Struct>,
) -> Result<IstioCertificateResponse, Status> {
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr_pem,
        validity_duration,
        metadata,
    });
    authorize(&mut request, authorization);
    within(
        "CreateCertificate",
        IstioCertificateServiceClient::new(channel.clone()).create_certificate(request),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Asserts that `result` is a refusal with `code` whose message contains every one of
/// `needles`; returns the message.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    needles: &[&str],
) -> String {
    let status = match result {
        Ok(answer) => panic!("expected {code:?}, but the call succeeded: {answer:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "wrong status code; message: {:?}",
        status.message()
    );
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{code:?} message {:?} does not mention {needle:?}",
            status.message()
        );
    }
    status.message().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP (metrics port)
// ---------------------------------------------------------------------------------------------

/// An HTTP response: status code, body.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, one `name: value` line each, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

/// `GET path` over HTTP/1.1 with `Connection: close`.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    within(&format!("GET {path}"), async {
        let mut stream = TcpStream::connect(addr)
            .await
            .expect("connect to the metrics port");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .expect("read the response");
        parse_http_response(&String::from_utf8(raw).expect("a UTF-8 response"))
    })
    .await
}

fn parse_http_response(raw: &str) -> HttpResponse {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}
