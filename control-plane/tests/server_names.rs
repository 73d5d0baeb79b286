//! The control plane's serving certificate names the host names clients dial: TLS clients that
//! verify the server by host name (ztunnel, grpcurl, Go and Java gRPC, `openssl s_client
//! -verify_hostname`) accept it for the right name and refuse it for a wrong one, while Trellis
//! clients keep verifying its SPIFFE ID.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::openssl::Workdir;
use common::{FRONTEND, FRONTEND_TOKEN, LocalPlane, id, within};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use trellis_ca::TrustBundle;

/// A TLS handshake by a client that checks the server's certificate against `name` the way
/// webpki (rustls, ztunnel) does, trusting the mesh's roots.
async fn handshake_by_name(
    addr: SocketAddr,
    bundle: &TrustBundle,
    name: &str,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for root in bundle.roots() {
        roots
            .add(root.clone())
            .expect("a mesh root is a valid trust anchor");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(trellis_ca::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS 1.3 is supported")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(name.to_owned()).expect("a valid server name");
    let tcp = within("TCP connect", TcpStream::connect(addr))
        .await
        .expect("the control plane accepts TCP");
    within("TLS handshake", connector.connect(name, tcp))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_hostname_verifying_rustls_client_accepts_the_right_names_and_refuses_a_wrong_one() {
    let plane = LocalPlane::start(&["--extra-server-names", "cp.example.test,198.18.0.10"]).await;
    let (addr, bundle) = (plane.running.grpc_addr, &plane.running.bundle);
    for name in ["cp.example.test", "127.0.0.1", "198.18.0.10"] {
        handshake_by_name(addr, bundle, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for wrong in ["wrong.example.test", "198.18.0.11"] {
        let err = handshake_by_name(addr, bundle, wrong)
            .await
            .expect_err("a name the certificate does not carry must be refused");
        assert!(err.contains("not valid for name"), "{wrong}: {err}");
    }
    // Trellis clients verify the SPIFFE ID as before and still get certificates.
    let key = trellis_ca::WorkloadKey::generate().expect("a key");
    let mut client = plane.client().await;
    let svid = within(
        "certify",
        client.certify(&key, Some(&id(FRONTEND)), FRONTEND_TOKEN, None),
    )
    .await
    .expect("a Trellis client that checks the SPIFFE ID is served");
    assert_eq!(svid.id().to_string(), FRONTEND);
    plane.stop().await;
}

#[tokio::test]
async fn openssl_s_client_verifies_the_host_name_and_refuses_a_wrong_one() {
    let plane = LocalPlane::start(&["--extra-server-names", "cp.example.test"]).await;
    let work = Workdir::new();
    work.write_certs("root.pem", plane.running.bundle.roots());
    let connect = plane.running.grpc_addr.to_string();
    let s_client = move |check: &'static [&'static str], work: Workdir, connect: String| {
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "s_client",
                "-connect",
                &connect,
                "-CAfile",
                "root.pem",
                "-verify_return_error",
                "-alpn",
                "h2",
            ];
            args.extend_from_slice(check);
            let out = work.try_openssl(&args);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text, work)
        })
    };
    let (ok, text, work) = within(
        "openssl s_client",
        s_client(
            &["-verify_hostname", "cp.example.test"],
            work,
            connect.clone(),
        ),
    )
    .await
    .expect("openssl ran");
    assert!(ok && text.contains("Verify return code: 0 (ok)"), "{text}");
    let (ok, text, work) = within(
        "openssl s_client",
        s_client(&["-verify_ip", "127.0.0.1"], work, connect.clone()),
    )
    .await
    .expect("openssl ran");
    assert!(ok && text.contains("Verify return code: 0 (ok)"), "{text}");
    let (ok, text, _work) = within(
        "openssl s_client",
        s_client(&["-verify_hostname", "wrong.example.test"], work, connect),
    )
    .await
    .expect("openssl ran");
    assert!(!ok && text.contains("hostname mismatch"), "{text}");
    plane.stop().await;
}
