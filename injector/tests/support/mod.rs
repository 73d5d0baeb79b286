//! Shared test helpers: a throwaway PKI, the real webhook server on 127.0.0.1:0 over real
//! HTTPS, a client that trusts it the way the API server does (through the `caBundle`), and
//! the recorded AdmissionReview fixtures.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::{ClientConfig, RootCertStore, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::{net::TcpStream, sync::watch, task::JoinHandle};
use tokio_rustls::{TlsConnector, client::TlsStream};
use trellis_injector::{
    InjectConfig,
    server::{self, Limits, State},
    tls::{self, LatestCertificate},
};

/// The name the API server uses to reach the webhook's Service.
pub const SERVER_NAME: &str = "trellis-injector.trellis-system.svc";

/// A CA and the certificates it issues.
pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A serving certificate for `SERVER_NAME`, as (cert PEM, key PEM).
    pub fn serving(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![SERVER_NAME.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client configuration trusting only this CA, as the webhook's `caBundle` does.
    pub fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        Arc::new(
            ClientConfig::builder_with_provider(tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// The path of a shared fixture file.
pub fn fixture_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(relative)
}

/// A recorded AdmissionReview as JSON.
pub fn review_fixture(name: &str) -> Value {
    let path = fixture_path(&format!("admission/{name}"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// The three recorded reviews.
pub const FIXTURES: [&str; 3] = [
    "admissionreview-pod-create.json",
    "admissionreview-pod-create-from-deployment.json",
    "admissionreview-pod-create-dryrun.json",
];

/// The real webhook server, serving on 127.0.0.1 with a certificate from its own CA.
pub struct Webhook {
    pub addr: SocketAddr,
    pub pki: Pki,
    pub config: watch::Sender<Arc<InjectConfig>>,
    pub serving: watch::Sender<Arc<CertifiedKey>>,
    client: Arc<ClientConfig>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Webhook {
    pub async fn start(config: InjectConfig) -> Self {
        Self::start_with(config, Limits::default()).await
    }

    pub async fn start_with(config: InjectConfig, limits: Limits) -> Self {
        let pki = Pki::new("test webhook CA");
        let (cert, key) = pki.serving();
        let key = tls::certified_key(cert.as_bytes(), key.as_bytes()).unwrap();
        let (serving, serving_rx) = watch::channel(Arc::new(key));
        let tls_config = tls::server_config(Arc::new(LatestCertificate::new(serving_rx))).unwrap();
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let state = Arc::new(State {
            config: config_rx,
            config_dump: Bytes::from_static(br#"{"test":true}"#),
            limits,
        });
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(server::run(listener, tls_config, state, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        Self {
            addr,
            client: pki.client(),
            pki,
            config: config_tx,
            serving,
            stop,
            task: Some(task),
        }
    }

    /// Opens a TLS connection the way the API server would.
    pub async fn connect(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        TlsConnector::from(Arc::clone(&self.client))
            .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
            .await
            .unwrap()
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let stream = self.connect().await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let driver = tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", SERVER_NAME)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("webhook answers within 10 s")
            .unwrap();
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        drop(sender);
        driver.abort();
        (status, body)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let (status, body) = self
            .request(Method::POST, path, serde_json::to_vec(body).unwrap())
            .await;
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, json)
    }

    /// POSTs a review that must be answered 200 and returns its `response`.
    pub async fn review(&self, path: &str, review: &Value) -> Value {
        let (status, body) = self.post(path, review).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1", "{body}");
        assert_eq!(body["kind"], "AdmissionReview", "{body}");
        assert_eq!(body["response"]["uid"], review["request"]["uid"], "{body}");
        assert_eq!(body["response"]["allowed"], true, "{body}");
        body["response"].clone()
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server drains within 15 s")
                .unwrap();
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Decodes a response's base64 JSON Patch, if any.
pub fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let patch = response.get("patch")?;
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().expect("patch is a base64 string"))
        .expect("patch is valid base64");
    Some(serde_json::from_slice(&bytes).expect("patch is a JSON Patch"))
}

/// Applies `patch` to the review's pod and reads the result as a `v1` Pod (the schema check).
pub fn apply(review: &Value, patch: &json_patch::Patch) -> (Value, Pod) {
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, patch).expect("patch applies to the pod as sent");
    let typed: Pod = serde_json::from_value(pod.clone()).expect("patched pod is a valid v1 Pod");
    (pod, typed)
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
