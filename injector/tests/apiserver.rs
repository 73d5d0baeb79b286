//! `--native-sidecars=auto` asks the API server's `/version` over HTTPS: against a stand-in
//! API server on 127.0.0.1 serving the recorded 1.28 document, and a 1.29 one.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use trellis_injector::{
    apiserver::{ApiServer, ApiServerError},
    tls,
    version::KubeVersion,
};

struct FakeApiServer {
    port: u16,
    ca_pem: String,
    authorization: mpsc::UnboundedReceiver<Option<String>>,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `body` with `status` at any path, over HTTPS for 127.0.0.1 with a self-signed cert.
async fn fake_api_server(status: StatusCode, body: Vec<u8>) -> FakeApiServer {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let certified =
        tls::certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    let (_keep, rx) = tokio::sync::watch::channel(Arc::new(certified));
    let config = tls::server_config(Arc::new(tls::LatestCertificate::new(rx))).unwrap();
    let acceptor = TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, authorization) = mpsc::unbounded_channel();
    let body = Bytes::from(body);
    let task = tokio::spawn(async move {
        let _keep = _keep;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(stream) = acceptor.accept(tcp).await else {
                continue;
            };
            let (seen, body) = (seen.clone(), body.clone());
            let service = service_fn(move |req: Request<Incoming>| {
                let auth = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                let _ = seen.send(auth);
                let mut response = Response::new(Full::new(body.clone()));
                *response.status_mut() = status;
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
    FakeApiServer {
        port,
        ca_pem: cert.pem(),
        authorization,
        task,
    }
}

fn recorded_version() -> Vec<u8> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/apiserver-version.json");
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn the_recorded_1_28_api_server_means_no_native_sidecars() {
    let mut fake = fake_api_server(StatusCode::OK, recorded_version()).await;
    let api = ApiServer::new(
        "127.0.0.1".into(),
        fake.port,
        fake.ca_pem.as_bytes(),
        Some("t0ken".into()),
    )
    .unwrap();
    let version = api.version(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        version,
        KubeVersion {
            major: 1,
            minor: 28
        }
    );
    assert!(!version.supports_native_sidecars());
    assert_eq!(
        fake.authorization.recv().await.unwrap().as_deref(),
        Some("Bearer t0ken")
    );
}

#[tokio::test]
async fn a_1_29_api_server_means_native_sidecars() {
    let body = br#"{"major":"1","minor":"29+","gitVersion":"v1.29.4-eks-1"}"#.to_vec();
    let fake = fake_api_server(StatusCode::OK, body).await;
    let api = ApiServer::new("127.0.0.1".into(), fake.port, fake.ca_pem.as_bytes(), None).unwrap();
    assert!(
        api.version(Duration::from_secs(5))
            .await
            .unwrap()
            .supports_native_sidecars()
    );
}

#[tokio::test]
async fn errors_say_what_went_wrong() {
    let fake = fake_api_server(StatusCode::FORBIDDEN, b"{}".to_vec()).await;
    let api = ApiServer::new("127.0.0.1".into(), fake.port, fake.ca_pem.as_bytes(), None).unwrap();
    let err = api.version(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(err, ApiServerError::Status(StatusCode::FORBIDDEN)),
        "{err}"
    );

    let garbage = fake_api_server(StatusCode::OK, b"<html>".to_vec()).await;
    let api = ApiServer::new(
        "127.0.0.1".into(),
        garbage.port,
        garbage.ca_pem.as_bytes(),
        None,
    )
    .unwrap();
    let err = api.version(Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, ApiServerError::Version(_)), "{err}");

    // A server whose certificate does not chain to the given CA is not believed.
    let other = fake_api_server(StatusCode::OK, recorded_version()).await;
    let api = ApiServer::new("127.0.0.1".into(), other.port, fake.ca_pem.as_bytes(), None).unwrap();
    let err = api.version(Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, ApiServerError::Connect { .. }), "{err}");

    assert!(matches!(
        ApiServer::new("127.0.0.1".into(), 443, b"no pem here", None),
        Err(ApiServerError::Ca(_))
    ));
}
