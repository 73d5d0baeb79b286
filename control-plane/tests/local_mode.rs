//! The control plane in local (embedded) mode, through its real gRPC+TLS and metrics ports:
//! issuing (Trellis `Certify` and Istio `CreateCertificate`, checked by the real `openssl`),
//! health, join-token reloads and metrics.

mod common;

use common::openssl::Workdir;
use common::*;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use trellis_ca::{certs_from_pem, der_to_pem};

#[tokio::test]
async fn an_issued_svid_verifies_with_openssl_and_names_the_token_identity() {
    let plane = LocalPlane::start(&[]).await;
    let mut client = plane.client().await;
    let key = trellis_ca::WorkloadKey::generate().unwrap();

    // The CSR names no identity: the one issued comes from the join token.
    let svid = within("certify", client.certify(&key, None, FRONTEND_TOKEN, None))
        .await
        .expect("a known token gets a certificate");
    assert_eq!(svid.id(), &id(FRONTEND));
    let lifetime = svid.not_after().duration_since(svid.not_before()).unwrap();
    assert!(
        lifetime >= std::time::Duration::from_secs(24 * 3600),
        "default lifetime is 24 h (plus back-dating), got {lifetime:?}"
    );

    let w = Workdir::new();
    w.write("root.pem", plane.running.bundle.to_pem());
    w.write("leaf.pem", der_to_pem(&svid.chain()[0]));
    for purpose in ["sslclient", "sslserver"] {
        let out = w.openssl(&[
            "verify", "-purpose", purpose, "-CAfile", "root.pem", "leaf.pem",
        ]);
        assert_eq!(out.trim(), "leaf.pem: OK");
    }
    let text = w.x509_text("leaf.pem");
    assert!(text.contains(&format!("URI:{FRONTEND}")), "{text}");
    assert_eq!(
        text.matches("URI:").count(),
        1,
        "exactly one URI SAN:\n{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");

    // Same client, the other token: the other identity.
    let key = trellis_ca::WorkloadKey::generate().unwrap();
    let svid = within("certify", client.certify(&key, None, BACKEND_TOKEN, None))
        .await
        .unwrap();
    assert_eq!(svid.id(), &id(BACKEND));
    plane.stop().await;
}

#[tokio::test]
async fn the_identity_comes_from_the_token_not_from_the_csr_subject_or_dns_names() {
    let plane = LocalPlane::start(&[]).await;
    let channel = plane.channel().await;
    let w = Workdir::new();
    w.p256_key("key.pem");
    // A CSR that tries to look like someone else without a URI SAN.
    let csr = w.csr(
        "key.pem",
        "req.csr",
        "/O=system:masters/CN=system:serviceaccount:kube-system:admin",
        Some("DNS:admin.kube-system.svc,email:root@example.com"),
    );

    let answer = raw_certify(
        &channel,
        bearer(FRONTEND_TOKEN).as_deref(),
        csr.into_bytes(),
        0,
    )
    .await
    .expect("a CSR naming no SPIFFE ID is issued for the token's identity");
    assert_eq!(answer.spiffe_id, FRONTEND);

    w.write("leaf.pem", der_to_pem(&answer.certificate.clone().into()));
    let text = w.x509_text("leaf.pem");
    assert!(text.contains(&format!("URI:{FRONTEND}")), "{text}");
    for copied in ["admin", "DNS:", "email:", "system:masters"] {
        assert!(
            !text.contains(copied),
            "{copied:?} was copied from the CSR:\n{text}"
        );
    }
    // The leaf certifies the CSR's key.
    let leaf_key = w.openssl(&["x509", "-noout", "-pubkey", "-in", "leaf.pem"]);
    let csr_key = w.openssl(&["pkey", "-pubout", "-in", "key.pem"]);
    assert_eq!(leaf_key, csr_key);
    plane.stop().await;
}

#[tokio::test]
async fn istio_create_certificate_returns_the_chain_leaf_first_and_root_last() {
    let plane = LocalPlane::start(&[]).await;
    let channel = plane.channel().await;
    let w = Workdir::new();
    w.p256_key("key.pem");
    // As istio-agent makes it: PEM, the SPIFFE ID as URI SAN.
    let csr = w.csr(
        "key.pem",
        "req.csr",
        "/O=cluster.local",
        Some(&format!("URI:{FRONTEND}")),
    );

    let answer = istio_create_certificate(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr, 3600)
        .await
        .expect("CreateCertificate issues");
    let chain = &answer.cert_chain;
    assert_eq!(
        chain.len(),
        2,
        "leaf and root (the CA is the root): {chain:?}"
    );
    let root = certs_from_pem(chain[1].as_bytes()).unwrap();
    assert_eq!(root, plane.running.bundle.roots(), "the root comes last");

    w.write("leaf.pem", &chain[0]);
    w.write("root.pem", &chain[1]);
    let out = w.openssl(&["verify", "-CAfile", "root.pem", "leaf.pem"]);
    assert_eq!(out.trim(), "leaf.pem: OK");
    let text = w.x509_text("leaf.pem");
    assert!(text.contains(&format!("URI:{FRONTEND}")), "{text}");
    let leaf_key = w.openssl(&["x509", "-noout", "-pubkey", "-in", "leaf.pem"]);
    assert_eq!(leaf_key, w.openssl(&["pkey", "-pubout", "-in", "key.pem"]));
    // validity_duration is honoured: valid for the next 50 minutes, not for the next 70.
    w.openssl(&["x509", "-noout", "-checkend", "3000", "-in", "leaf.pem"]);
    w.openssl_fails(&["x509", "-noout", "-checkend", "4200", "-in", "leaf.pem"]);

    // The same authentication applies as for Certify.
    let csr = w.read("req.csr");
    assert_refused(
        istio_create_certificate(&channel, None, csr.clone(), 0).await,
        Code::Unauthenticated,
        &["no bearer token"],
    );
    assert_refused(
        istio_create_certificate(&channel, bearer(BACKEND_TOKEN).as_deref(), csr, 0).await,
        Code::PermissionDenied,
        &[FRONTEND, BACKEND],
    );
    plane.stop().await;
}

#[tokio::test]
async fn health_check_reports_serving_for_the_server_and_its_services() {
    let plane = LocalPlane::start(&[]).await;
    let mut health = HealthClient::new(plane.channel().await);
    for service in [
        "",
        "trellis.identity.v1.Identity",
        "istio.v1.auth.IstioCertificateService",
    ] {
        let answer = within(
            "health check",
            health.check(HealthCheckRequest {
                service: service.into(),
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("health check of {service:?}: {e}"))
        .into_inner();
        assert_eq!(
            answer.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let unknown = within(
        "health check",
        health.check(HealthCheckRequest {
            service: "no.such.Service".into(),
        }),
    )
    .await;
    assert_refused(unknown, Code::NotFound, &[]);
    plane.stop().await;
}

#[tokio::test]
async fn join_token_file_changes_apply_while_running_and_a_broken_file_keeps_the_last_good_tokens()
{
    let plane =
        LocalPlane::start_with_tokens(&[(FRONTEND_TOKEN, "ns/shop/sa/frontend")], &[]).await;
    let channel = plane.channel().await;
    let works = |token: &'static str, expected: &'static str| {
        let channel = channel.clone();
        async move {
            let (_, csr) = key_and_csr(None);
            match raw_certify(&channel, bearer(token).as_deref(), csr, 0).await {
                Ok(answer) if answer.spiffe_id == expected => Ok(()),
                Ok(answer) => Err(format!("issued for {}", answer.spiffe_id)),
                Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
            }
        }
    };
    let refused = |token: &'static str| {
        let channel = channel.clone();
        async move {
            let (_, csr) = key_and_csr(None);
            match raw_certify(&channel, bearer(token).as_deref(), csr, 0).await {
                Err(s) if s.code() == Code::Unauthenticated => {
                    assert!(
                        s.message().contains("unknown join token"),
                        "{}",
                        s.message()
                    );
                    Ok(())
                }
                Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                Ok(answer) => Err(format!("still issued for {}", answer.spiffe_id)),
            }
        }
    };
    works(FRONTEND_TOKEN, FRONTEND).await.unwrap();
    refused(BACKEND_TOKEN).await.unwrap();

    // Added while running: works within the deadline.
    write_join_tokens(
        &plane.tokens,
        &[
            (FRONTEND_TOKEN, "ns/shop/sa/frontend"),
            (BACKEND_TOKEN, BACKEND),
        ],
    );
    eventually("an added token works", || works(BACKEND_TOKEN, BACKEND)).await;
    works(FRONTEND_TOKEN, FRONTEND).await.unwrap();

    // Removed while running: refused within the deadline; the others keep working.
    write_join_tokens(&plane.tokens, &[(BACKEND_TOKEN, BACKEND)]);
    eventually("a removed token is refused", || refused(FRONTEND_TOKEN)).await;
    works(BACKEND_TOKEN, BACKEND).await.unwrap();

    // Broken (line 3 is bad): once the reloader has seen it, the last good table is in force,
    // and nothing of the broken file (not even its good line) is.
    const NEW_TOKEN: &str = "new-token-5566778899aabbcc";
    write_atomically(
        &plane.tokens,
        format!("{NEW_TOKEN} ns/shop/sa/new\n\nthis-line-is-broken\n").as_bytes(),
    );
    let path = plane.tokens.display().to_string();
    eventually("the reloader reports the broken file", || {
        let seen = logged(&["join-token file not reloaded", &format!("{path}:3:")]);
        async move {
            if seen {
                Ok(())
            } else {
                Err("not logged yet".to_owned())
            }
        }
    })
    .await;
    works(BACKEND_TOKEN, BACKEND).await.unwrap();
    refused(FRONTEND_TOKEN).await.unwrap();
    refused(NEW_TOKEN).await.unwrap();

    // Repaired: the new table applies.
    write_join_tokens(&plane.tokens, &[(NEW_TOKEN, "ns/shop/sa/new")]);
    eventually("the repaired file applies", || {
        works(NEW_TOKEN, "spiffe://cluster.local/ns/shop/sa/new")
    })
    .await;
    eventually("tokens no longer listed are refused", || {
        refused(BACKEND_TOKEN)
    })
    .await;
    plane.stop().await;
}

/// The value of the sample `name` (the whole series text before the value) in a Prometheus
/// text exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[tokio::test]
async fn metrics_count_issued_and_refused_certificates_and_report_ca_expiry() {
    let plane = LocalPlane::start(&[]).await;
    let addr = plane.running.metrics_addr;
    let channel = plane.channel().await;

    let before = http_get(addr, "/metrics").await;
    assert_eq!(before.status, 200);
    assert_eq!(
        sample(
            &before.body,
            "trellis_control_plane_certificates_issued_total"
        ),
        Some(0.0),
        "{}",
        before.body
    );

    let (_, csr) = key_and_csr(None);
    raw_certify(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr.clone(), 0)
        .await
        .expect("issued");
    assert_refused(
        raw_certify(&channel, bearer(UNKNOWN_TOKEN).as_deref(), csr, 0).await,
        Code::Unauthenticated,
        &["unknown join token"],
    );

    let metrics = http_get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let content_type = metrics
        .headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.as_str());
    assert!(
        content_type.is_some_and(|v| v.starts_with("application/openmetrics-text")),
        "{content_type:?}"
    );
    let body = &metrics.body;
    assert_eq!(
        sample(body, "trellis_control_plane_certificates_issued_total"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            body,
            "trellis_control_plane_certificates_refused_total{reason=\"token_rejected\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            body,
            "trellis_control_plane_attestation_duration_seconds_count{kind=\"join-token\"}"
        ),
        Some(2.0),
        "{body}"
    );
    const NINE_YEARS: f64 = 9.0 * 365.0 * 24.0 * 3600.0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let root =
        sample(body, "trellis_control_plane_root_expiry_timestamp_seconds").expect(body) - now;
    let issuer = sample(
        body,
        "trellis_control_plane_issuer_expiry_timestamp_seconds",
    )
    .expect(body)
        - now;
    assert!(root > NINE_YEARS, "a new root lives ten years: {root}");
    assert!(issuer > NINE_YEARS, "the root is the issuer: {issuer}");

    for (path, status) in [("/ready", 200), ("/live", 200), ("/nope", 404)] {
        assert_eq!(http_get(addr, path).await.status, status, "{path}");
    }
    plane.stop().await;
}

#[tokio::test]
async fn issuances_and_refusals_are_audit_logged_with_the_caller_and_never_the_token() {
    const AUDIT_TOKEN: &str = "audit-token-9a8b7c6d5e4f3a2b";
    const AUDITED: &str = "spiffe://cluster.local/ns/audit/sa/logged";
    let plane = LocalPlane::start_with_tokens(&[(AUDIT_TOKEN, AUDITED)], &[]).await;
    let channel = plane.channel().await;
    let (_, csr) = key_and_csr(None);
    let answer = raw_certify(&channel, bearer(AUDIT_TOKEN).as_deref(), csr, 0)
        .await
        .expect("issued");

    // The issuance names the caller's address, identity and the serial.
    let serial = answer.serial.clone();
    eventually("the issuance is audit-logged", || {
        let seen = logged(&[
            "trellis::audit",
            "certificate issued",
            "peer.addr=Some(127.0.0.1:",
            &format!("peer.id={AUDITED}"),
            &serial,
        ]);
        async move {
            if seen {
                Ok(())
            } else {
                Err("no audit line yet".to_owned())
            }
        }
    })
    .await;

    // A CSR for another identity: refused and logged with its reason.
    let (_, csr) = key_and_csr(Some(&id(FRONTEND)));
    assert_refused(
        raw_certify(&channel, bearer(AUDIT_TOKEN).as_deref(), csr, 0).await,
        Code::PermissionDenied,
        &[AUDITED, FRONTEND],
    );
    eventually("the refusal is audit-logged", || {
        let seen = logged(&[
            "certificate refused",
            "identity_mismatch",
            &format!("authenticated as {AUDITED}"),
        ]);
        async move {
            if seen {
                Ok(())
            } else {
                Err("no audit line yet".to_owned())
            }
        }
    })
    .await;

    // No log line of this process carries a token.
    for token in [AUDIT_TOKEN, FRONTEND_TOKEN, BACKEND_TOKEN, UNKNOWN_TOKEN] {
        assert!(!logged(&[token]), "a log line contains the token {token}");
    }
    plane.stop().await;
}
