//! Real mutual-TLS handshakes over TCP on 127.0.0.1:0 with the `trellis_ca::tls` verifiers and
//! config builders: both peers learn each other's SPIFFE ID, and every kind of wrong peer is
//! refused on the side that checks it, with an error that says why.
//!
//! Every network wait is bounded by [`WAIT`]; nothing sleeps.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::{AlertDescription, CertificateError, OtherError, ProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use trellis_ca::tls::{
    ExpectedServer, SpiffeClientVerifier, SpiffeServerVerifier, UnexpectedIdentity, client_config,
    server_config,
};
use trellis_ca::{
    CaMaterial, CertificateAuthority, SpiffeId, TrustDomain, ValidatedCsr, VerifyError,
    WorkloadKey, peer_spiffe_id,
};

/// The longest any single network step may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);
const H2: &[u8] = b"h2";

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("test IDs are valid")
}

fn ca_at(now: SystemTime) -> CertificateAuthority {
    let td = TrustDomain::default();
    let material = CaMaterial::generate_root(&td, now).expect("generate a root");
    CertificateAuthority::load(td, &material, now).expect("load the root")
}

/// A workload's TLS identity: its certificate chain (leaf first) and key.
struct Svid {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Svid {
    fn issue(ca: &CertificateAuthority, identity: &str, ttl: Duration, now: SystemTime) -> Self {
        let key = WorkloadKey::generate().expect("generate a workload key");
        let identity = id(identity);
        let csr = ValidatedCsr::parse(&key.csr(&identity).expect("build a CSR"))
            .expect("parse our own CSR");
        let issued = ca.issue(&csr, &identity, ttl, now).expect("issue an SVID");
        let mut chain = vec![issued.leaf];
        chain.extend(issued.chain);
        Self {
            chain,
            key: key.private_key_der(),
        }
    }

    fn identity(&self) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        Some((self.chain.clone(), self.key.clone_key()))
    }
}

fn mandatory_server(ca: &CertificateAuthority, svid: &Svid) -> rustls::ServerConfig {
    let verifier = Arc::new(SpiffeClientVerifier::mandatory(ca.bundle().clone()));
    server_config(svid.chain.clone(), svid.key.clone_key(), verifier, &[H2]).expect("server config")
}

fn client(
    ca: &CertificateAuthority,
    expected: ExpectedServer,
    identity: Option<&Svid>,
) -> rustls::ClientConfig {
    let verifier = Arc::new(SpiffeServerVerifier::new(ca.bundle().clone(), expected));
    client_config(verifier, identity.and_then(Svid::identity), &[H2]).expect("client config")
}

/// Awaits `fut` for at most [`WAIT`], failing the test with `what` if it takes longer.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {WAIT:?}"))
}

/// Both ends of one handshake.
struct Handshake {
    server: io::Result<server::TlsStream<TcpStream>>,
    client: io::Result<client::TlsStream<TcpStream>>,
}

/// Listens on 127.0.0.1:0, connects once, and runs both sides of the TLS handshake.
async fn handshake(server: rustls::ServerConfig, client: rustls::ClientConfig) -> Handshake {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("local address");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        acceptor.accept(tcp).await
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await?;
        // Our verifiers check SPIFFE IDs, not names; the name only has to be well-formed.
        let name = ServerName::try_from("payments.shop.svc.cluster.local").expect("a DNS name");
        TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
    };
    let client = within("client handshake", client_side).await;
    let server = within("server handshake", server_side)
        .await
        .expect("server task did not panic");
    Handshake { server, client }
}

/// The rustls error inside an I/O error from tokio-rustls.
fn rustls_error(err: &io::Error) -> &rustls::Error {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {err:?}"))
}

/// Our error type `T` carried in `InvalidCertificate(Other(..))`.
fn other_error<T: std::error::Error + 'static>(err: &rustls::Error) -> &T {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => inner
            .downcast_ref::<T>()
            .unwrap_or_else(|| panic!("{err:?} does not carry a {}", std::any::type_name::<T>())),
        other => panic!("expected InvalidCertificate(Other(..)), got {other:?}"),
    }
}

/// The client finished its half of the TLS 1.3 handshake before the server checked its
/// certificate; its first read must then fail with the server's `alert`.
async fn assert_client_reads_alert(
    client: io::Result<client::TlsStream<TcpStream>>,
    alert: AlertDescription,
) {
    let mut client = match client {
        Ok(stream) => stream,
        // It may also see the alert during the handshake already.
        Err(err) => {
            assert_eq!(rustls_error(&err), &rustls::Error::AlertReceived(alert));
            return;
        }
    };
    let mut buf = [0u8; 16];
    let read = within("client read after refusal", client.read(&mut buf)).await;
    let err = read.expect_err("the refused client must not read application data");
    assert_eq!(rustls_error(&err), &rustls::Error::AlertReceived(alert));
}

// ---------------------------------------------------------------------------------------------
// Success
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn mutual_handshake_is_tls13_with_h2_and_each_side_learns_the_others_spiffe_id() {
    let now = SystemTime::now();
    let ca = ca_at(now);
    let server_svid = Svid::issue(&ca, PAYMENTS, HOUR, now);
    let client_svid = Svid::issue(&ca, FRONTEND, HOUR, now);
    let Handshake { server, client } = handshake(
        mandatory_server(&ca, &server_svid),
        self::client(&ca, ExpectedServer::Exact(id(PAYMENTS)), Some(&client_svid)),
    )
    .await;
    let mut server = server.expect("server handshake");
    let mut client = client.expect("client handshake");

    let (_, server_conn) = server.get_ref();
    assert_eq!(
        server_conn.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(server_conn.alpn_protocol(), Some(H2));
    let client_certs = server_conn
        .peer_certificates()
        .expect("client presented a chain");
    assert_eq!(peer_spiffe_id(&client_certs[0]), Ok(id(FRONTEND)));

    let (_, client_conn) = client.get_ref();
    assert_eq!(
        client_conn.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(client_conn.alpn_protocol(), Some(H2));
    let server_certs = client_conn
        .peer_certificates()
        .expect("server presented a chain");
    assert_eq!(peer_spiffe_id(&server_certs[0]), Ok(id(PAYMENTS)));

    // Bytes flow both ways.
    within("client write", client.write_all(b"GET /cart"))
        .await
        .unwrap();
    within("client flush", client.flush()).await.unwrap();
    let mut request = [0u8; 9];
    within("server read", server.read_exact(&mut request))
        .await
        .unwrap();
    assert_eq!(&request, b"GET /cart");
    within("server write", server.write_all(b"200 OK, 3 items"))
        .await
        .unwrap();
    within("server flush", server.flush()).await.unwrap();
    let mut response = [0u8; 15];
    within("client read", client.read_exact(&mut response))
        .await
        .unwrap();
    assert_eq!(&response, b"200 OK, 3 items");

    // A clean close is seen as end of stream by the other side.
    within("client shutdown", client.shutdown()).await.unwrap();
    let mut rest = Vec::new();
    within("server read to end", server.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn any_identity_of_the_trust_domain_is_accepted_when_the_client_expects_any() {
    let now = SystemTime::now();
    let ca = ca_at(now);
    let server_svid = Svid::issue(&ca, PAYMENTS, HOUR, now);
    let client_svid = Svid::issue(&ca, FRONTEND, HOUR, now);
    let outcome = handshake(
        mandatory_server(&ca, &server_svid),
        client(&ca, ExpectedServer::AnyInTrustDomain, Some(&client_svid)),
    )
    .await;
    let client = outcome.client.expect("client handshake");
    outcome.server.expect("server handshake");
    let certs = client.get_ref().1.peer_certificates().unwrap();
    assert_eq!(peer_spiffe_id(&certs[0]), Ok(id(PAYMENTS)));
}

#[tokio::test]
async fn peers_under_a_plug_in_intermediate_send_and_accept_the_intermediate() {
    // Root and intermediate made with rcgen; the leaf chain carries the intermediate.
    let now = SystemTime::now();
    let td = TrustDomain::default();
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "Plug-in root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Plug-in intermediate");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.use_authority_key_identifier_extension = true;
    let intermediate = ca_params.signed_by(&ca_key, &root_issuer).unwrap();
    let material = CaMaterial {
        ca_cert_pem: intermediate.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        cert_chain_pem: intermediate.pem() + &root.pem(),
        root_cert_pem: root.pem(),
    };
    let ca = CertificateAuthority::load(td, &material, now).unwrap();

    let server_svid = Svid::issue(&ca, PAYMENTS, HOUR, now);
    let client_svid = Svid::issue(&ca, FRONTEND, HOUR, now);
    assert_eq!(server_svid.chain.len(), 2, "leaf and intermediate");
    let outcome = handshake(
        mandatory_server(&ca, &server_svid),
        client(&ca, ExpectedServer::Exact(id(PAYMENTS)), Some(&client_svid)),
    )
    .await;
    let server = outcome.server.expect("server handshake");
    let client = outcome.client.expect("client handshake");
    let seen_by_server = server.get_ref().1.peer_certificates().unwrap();
    assert_eq!(seen_by_server, &client_svid.chain[..]);
    let seen_by_client = client.get_ref().1.peer_certificates().unwrap();
    assert_eq!(seen_by_client[1].as_ref(), intermediate.der().as_ref());
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_expecting_another_server_identity_refuses_the_server() {
    let now = SystemTime::now();
    let ca = ca_at(now);
    let server_svid = Svid::issue(&ca, PAYMENTS, HOUR, now);
    let client_svid = Svid::issue(&ca, FRONTEND, HOUR, now);
    let wanted = id("spiffe://cluster.local/ns/shop/sa/inventory");
    let outcome = handshake(
        mandatory_server(&ca, &server_svid),
        client(
            &ca,
            ExpectedServer::Exact(wanted.clone()),
            Some(&client_svid),
        ),
    )
    .await;
    let err = outcome
        .client
        .expect_err("the client must refuse the server");
    let unexpected: &UnexpectedIdentity = other_error(rustls_error(&err));
    assert_eq!(
        unexpected,
        &UnexpectedIdentity {
            expected: wanted,
            got: id(PAYMENTS),
        }
    );
    // The server is told with an alert, and sees no connection.
    let err = outcome
        .server
        .expect_err("the server handshake must fail too");
    assert_eq!(
        rustls_error(&err),
        &rustls::Error::AlertReceived(AlertDescription::CertificateUnknown)
    );
}

#[tokio::test]
async fn client_refuses_a_server_from_another_ca() {
    let now = SystemTime::now();
    let ours = ca_at(now);
    let theirs = ca_at(now);
    let server_svid = Svid::issue(&theirs, PAYMENTS, HOUR, now);
    let client_svid = Svid::issue(&ours, FRONTEND, HOUR, now);
    let outcome = handshake(
        mandatory_server(&theirs, &server_svid),
        client(
            &ours,
            ExpectedServer::Exact(id(PAYMENTS)),
            Some(&client_svid),
        ),
    )
    .await;
    let err = outcome
        .client
        .expect_err("the client must refuse the server");
    // Each root has its own subject, so no path leads to a trusted root.
    assert!(
        matches!(
            other_error::<trellis_ca::VerifyError>(rustls_error(&err)),
            trellis_ca::VerifyError::UnknownIssuer { .. }
        ),
        "{err:?}"
    );
    assert!(outcome.server.is_err());
}

#[tokio::test]
async fn server_refuses_a_client_from_another_ca() {
    let now = SystemTime::now();
    let ours = ca_at(now);
    let theirs = ca_at_other_name(now);
    let server_svid = Svid::issue(&ours, PAYMENTS, HOUR, now);
    let intruder = Svid::issue(&theirs, FRONTEND, HOUR, now);
    let outcome = handshake(
        mandatory_server(&ours, &server_svid),
        client(&ours, ExpectedServer::Exact(id(PAYMENTS)), Some(&intruder)),
    )
    .await;
    let err = outcome
        .server
        .expect_err("the server must refuse the client");
    let reason: &VerifyError = other_error(rustls_error(&err));
    assert!(
        matches!(reason, VerifyError::UnknownIssuer { .. }),
        "{reason:?}"
    );
    assert_client_reads_alert(outcome.client, AlertDescription::CertificateUnknown).await;
}

/// A CA whose root has a subject name different from [`ca_at`]'s, so that a chain from it
/// finds no candidate issuer at all in the other's bundle (`UnknownIssuer`).
fn ca_at_other_name(now: SystemTime) -> CertificateAuthority {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a root key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Somebody else's root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = params.self_signed(&key).expect("self-sign the root");
    let material = CaMaterial {
        ca_cert_pem: root.pem(),
        ca_key_pem: key.serialize_pem(),
        cert_chain_pem: root.pem(),
        root_cert_pem: root.pem(),
    };
    CertificateAuthority::load(TrustDomain::default(), &material, now).expect("load the root")
}

#[tokio::test]
async fn mandatory_verifier_refuses_a_client_without_a_certificate() {
    let now = SystemTime::now();
    let ca = ca_at(now);
    let server_svid = Svid::issue(&ca, PAYMENTS, HOUR, now);
    let outcome = handshake(
        mandatory_server(&ca, &server_svid),
        client(&ca, ExpectedServer::Exact(id(PAYMENTS)), None),
    )
    .await;
    let err = outcome
        .server
        .expect_err("the server must refuse the client");
    assert_eq!(rustls_error(&err), &rustls::Error::NoCertificatesPresented);
    assert_client_reads_alert(outcome.client, AlertDescription::CertificateRequired).await;
}

#[tokio::test]
async fn optional_verifier_accepts_a_client_without_a_certificate() {
    let now = SystemTime::now();
    let ca = ca_at(now);
    let server_svid = Svid::issue(&ca, PAYMENTS, HOUR, now);
    let verifier = Arc::new(SpiffeClientVerifier::optional(ca.bundle().clone()));
    let server_cfg = server_config(
        server_svid.chain.clone(),
        server_svid.key.clone_key(),
        verifier,
        &[H2],
    )
    .unwrap();
    let outcome = handshake(
        server_cfg,
        client(&ca, ExpectedServer::Exact(id(PAYMENTS)), None),
    )
    .await;
    let mut server = outcome.server.expect("server handshake");
    let mut client = outcome.client.expect("client handshake");
    assert!(server.get_ref().1.peer_certificates().is_none());
    within("client write", client.write_all(b"certify me"))
        .await
        .unwrap();
    within("client flush", client.flush()).await.unwrap();
    let mut buf = [0u8; 10];
    within("server read", server.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"certify me");
}

#[tokio::test]
async fn optional_verifier_still_refuses_an_invalid_client_certificate() {
    let now = SystemTime::now();
    let ours = ca_at(now);
    let theirs = ca_at_other_name(now);
    let server_svid = Svid::issue(&ours, PAYMENTS, HOUR, now);
    let intruder = Svid::issue(&theirs, FRONTEND, HOUR, now);
    let verifier = Arc::new(SpiffeClientVerifier::optional(ours.bundle().clone()));
    let server_cfg = server_config(
        server_svid.chain.clone(),
        server_svid.key.clone_key(),
        verifier,
        &[H2],
    )
    .unwrap();
    let outcome = handshake(
        server_cfg,
        client(&ours, ExpectedServer::Exact(id(PAYMENTS)), Some(&intruder)),
    )
    .await;
    let err = outcome
        .server
        .expect_err("the server must refuse the client");
    let reason: &VerifyError = other_error(rustls_error(&err));
    assert!(
        matches!(reason, VerifyError::UnknownIssuer { .. }),
        "{reason:?}"
    );
    assert_client_reads_alert(outcome.client, AlertDescription::CertificateUnknown).await;
}

#[tokio::test]
async fn server_refuses_an_expired_client_certificate() {
    let now = SystemTime::now();
    let ca = ca_at(now);
    let server_svid = Svid::issue(&ca, PAYMENTS, HOUR, now);
    // A CA that ran two hours ago (same root, loaded then) issued a one-second SVID.
    let then = now - 2 * HOUR;
    let old_ca = ca_at(then);
    let expired = Svid::issue(&old_ca, FRONTEND, Duration::from_secs(1), then);
    let server_cfg = {
        let verifier = Arc::new(SpiffeClientVerifier::mandatory(old_ca.bundle().clone()));
        server_config(
            server_svid.chain.clone(),
            server_svid.key.clone_key(),
            verifier,
            &[H2],
        )
        .unwrap()
    };
    let outcome = handshake(
        server_cfg,
        client(&ca, ExpectedServer::Exact(id(PAYMENTS)), Some(&expired)),
    )
    .await;
    let err = outcome
        .server
        .expect_err("the server must refuse the client");
    assert_eq!(
        rustls_error(&err),
        &rustls::Error::InvalidCertificate(CertificateError::Expired)
    );
    assert_client_reads_alert(outcome.client, AlertDescription::CertificateExpired).await;
}

#[tokio::test]
async fn client_refuses_an_expired_server_certificate() {
    let now = SystemTime::now();
    let then = now - 2 * HOUR;
    let old_ca = ca_at(then);
    let expired = Svid::issue(&old_ca, PAYMENTS, Duration::from_secs(1), then);
    let client_svid = Svid::issue(&old_ca, FRONTEND, HOUR * 24, then);
    let outcome = handshake(
        mandatory_server(&old_ca, &expired),
        client(
            &old_ca,
            ExpectedServer::Exact(id(PAYMENTS)),
            Some(&client_svid),
        ),
    )
    .await;
    let err = outcome
        .client
        .expect_err("the client must refuse the server");
    assert_eq!(
        rustls_error(&err),
        &rustls::Error::InvalidCertificate(CertificateError::Expired)
    );
    let err = outcome.server.expect_err("the server is told");
    assert_eq!(
        rustls_error(&err),
        &rustls::Error::AlertReceived(AlertDescription::CertificateExpired)
    );
}
