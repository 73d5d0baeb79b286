//! Each probe kind against a real local server on 127.0.0.1 (the "pod IP" of these tests):
//! HTTP, HTTPS with a self-signed certificate, TCP, and a tonic grpc.health.v1 server.

use std::convert::Infallible;
use std::sync::Mutex;

use http::{HeaderMap, HeaderName, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::probe::spec::TcpSocket;

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn tls() -> Arc<ClientConfig> {
    crate::probe::dangerous_tls::dangerous_probe_client()
}

fn http_probe(port: u16, path: &str, scheme: Scheme, headers: &[(&str, &str)]) -> AppProbe {
    AppProbe {
        action: Action::Http(HttpGet {
            scheme,
            host: None,
            port,
            path: path.parse().unwrap(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
                .collect(),
        }),
        timeout: Duration::from_secs(5),
    }
}

/// The headers of the last request an [`http_app`] saw.
type Seen = Arc<Mutex<Option<HeaderMap>>>;

/// Answers `/status/<code>` with that code; records the request headers.
async fn answer(
    req: http::Request<Incoming>,
    seen: Seen,
) -> Result<Response<Full<Bytes>>, Infallible> {
    *seen.lock().unwrap() = Some(req.headers().clone());
    let code = req
        .uri()
        .path()
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(200);
    let mut r = Response::new(Full::new(Bytes::from_static(b"body")));
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    Ok(r)
}

/// An HTTP (or, with `tls`, HTTPS) app on 127.0.0.1:0.
async fn http_app(tls: Option<TlsAcceptor>) -> (u16, Seen) {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (seen, tls) = (seen2.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(req, seen.clone()));
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(tcp).await {
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            });
        }
    });
    (port, seen)
}

/// A TLS acceptor with a fresh self-signed certificate (no client could verify it).
fn self_signed() -> TlsAcceptor {
    let td = trellis_ca::TrustDomain::default();
    let ca = trellis_ca::CaMaterial::generate_root(&td, std::time::SystemTime::now()).unwrap();
    let cert = CertificateDer::from_pem_slice(ca.ca_cert_pem.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(ca.ca_key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = TcpListener::bind((LOCAL, 0)).await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn http_probes_pass_on_2xx_and_3xx_and_fail_otherwise() {
    let (port, _) = http_app(None).await;
    for (code, passes) in [
        (200, true),
        (204, true),
        (302, true),
        (399, true),
        (400, false),
        (404, false),
        (500, false),
        (503, false),
    ] {
        let probe = http_probe(port, &format!("/status/{code}"), Scheme::Http, &[]);
        let got = run(&probe, LOCAL, &tls()).await;
        assert_eq!(got.is_ok(), passes, "{code}: {got:?}");
        if !passes {
            assert_eq!(
                got.unwrap_err(),
                CheckError::Status {
                    addr: SocketAddr::new(LOCAL, port),
                    status: code
                }
            );
        }
    }
}

#[tokio::test]
async fn http_probes_send_the_probes_headers_and_kubelets_defaults() {
    let (port, seen) = http_app(None).await;
    let probe = http_probe(
        port,
        "/status/200?x=1",
        Scheme::Http,
        &[("X-Custom", "a"), ("Host", "web.example")],
    );
    assert_eq!(run(&probe, LOCAL, &tls()).await.unwrap(), "HTTP 200");
    let headers = seen.lock().unwrap().clone().unwrap();
    assert_eq!(headers["x-custom"], "a");
    assert_eq!(headers["host"], "web.example");
    assert_eq!(headers["user-agent"], USER_AGENT);
    assert_eq!(headers["accept"], "*/*");
}

#[tokio::test]
async fn https_probes_do_not_verify_the_certificate() {
    let (port, _) = http_app(Some(self_signed())).await;
    let probe = http_probe(port, "/status/200", Scheme::Https, &[]);
    assert_eq!(run(&probe, LOCAL, &tls()).await.unwrap(), "HTTP 200");
    let probe = http_probe(port, "/status/500", Scheme::Https, &[]);
    assert!(matches!(
        run(&probe, LOCAL, &tls()).await,
        Err(CheckError::Status { status: 500, .. })
    ));
    // Plain HTTP to a TLS port gets no HTTP answer.
    let probe = http_probe(port, "/status/200", Scheme::Http, &[]);
    assert!(run(&probe, LOCAL, &tls()).await.is_err());
}

#[tokio::test]
async fn tcp_probes_pass_when_the_port_accepts() {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let open = listener.local_addr().unwrap().port();
    let tcp = |port| AppProbe {
        action: Action::Tcp(TcpSocket { host: None, port }),
        timeout: Duration::from_secs(5),
    };
    assert_eq!(
        run(&tcp(open), LOCAL, &tls()).await.unwrap(),
        "TCP connected"
    );
    let closed = closed_port().await;
    let err = run(&tcp(closed), LOCAL, &tls()).await.unwrap_err();
    assert!(matches!(err, CheckError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{closed}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_probe_that_gets_no_answer_fails_after_its_timeout() {
    // Accepts and never answers.
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut probe = http_probe(port, "/", Scheme::Http, &[]);
    probe.timeout = Duration::from_millis(300);
    assert_eq!(
        run(&probe, LOCAL, &tls()).await,
        Err(CheckError::Timeout(Duration::from_millis(300)))
    );
}

#[tokio::test]
async fn grpc_probes_ask_the_health_service_for_the_probes_service() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("db", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("cache", tonic_health::ServingStatus::NotServing)
        .await;
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream_of(listener)),
    );
    let grpc = |service: &str, port| AppProbe {
        action: Action::Grpc(Grpc {
            port,
            service: service.to_owned(),
        }),
        timeout: Duration::from_secs(5),
    };
    assert_eq!(
        run(&grpc("db", port), LOCAL, &tls()).await.unwrap(),
        "SERVING"
    );
    assert_eq!(
        run(&grpc("", port), LOCAL, &tls()).await.unwrap(),
        "SERVING"
    );
    let err = run(&grpc("cache", port), LOCAL, &tls()).await.unwrap_err();
    assert!(
        matches!(&err, CheckError::NotServing { status, .. } if status == "NOT_SERVING"),
        "{err:?}"
    );
    let err = run(&grpc("nope", port), LOCAL, &tls()).await.unwrap_err();
    assert!(err.to_string().contains("NotFound"), "{err}");
    let err = run(&grpc("db", closed_port().await), LOCAL, &tls())
        .await
        .unwrap_err();
    assert!(matches!(err, CheckError::Grpc { .. }), "{err:?}");
}

/// The accepted connections of `listener`, as tonic's `serve_with_incoming` takes them.
fn tokio_stream_of(
    listener: TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}

#[test]
fn requests_follow_kubelets_header_rules() {
    struct Case {
        name: &'static str,
        headers: &'static [(&'static str, &'static str)],
        host: &'static str,
        expected: &'static [(&'static str, Option<&'static str>)],
    }
    let cases = [
        Case {
            name: "defaults",
            headers: &[],
            host: "198.18.0.2",
            expected: &[
                ("host", Some("198.18.0.2:8080")),
                ("user-agent", Some(USER_AGENT)),
                ("accept", Some("*/*")),
                ("connection", Some("close")),
            ],
        },
        Case {
            name: "IPv6 pod",
            headers: &[],
            host: "fd00::2",
            expected: &[("host", Some("[fd00::2]:8080"))],
        },
        Case {
            name: "overrides",
            headers: &[
                ("Host", "api.local"),
                ("User-Agent", "me"),
                ("Accept", "text/plain"),
            ],
            host: "198.18.0.2",
            expected: &[
                ("host", Some("api.local")),
                ("user-agent", Some("me")),
                ("accept", Some("text/plain")),
            ],
        },
        Case {
            name: "an empty Accept removes it",
            headers: &[("Accept", "")],
            host: "198.18.0.2",
            expected: &[("accept", None)],
        },
    ];
    for c in &cases {
        let AppProbe {
            action: Action::Http(h),
            ..
        } = http_probe(8080, "/healthz", Scheme::Http, c.headers)
        else {
            unreachable!()
        };
        let req = request(&h, c.host);
        assert_eq!(req.uri(), "/healthz", "{}", c.name);
        for (name, value) in c.expected {
            let got = req.headers().get(HeaderName::from_static(name));
            assert_eq!(
                got.map(|v| v.to_str().unwrap()),
                *value,
                "{}: {name}",
                c.name
            );
        }
    }
}
