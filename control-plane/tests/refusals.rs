//! Every way a Certify request is refused, through the real gRPC+TLS server in local mode:
//! the gRPC status code and a message that says what was wrong.

mod common;

use common::*;
use tonic::Code;

/// A server with a small lifetime ceiling, so that the lifetime check can be hit.
async fn plane() -> LocalPlane {
    LocalPlane::start(&["--max-ttl", "2h", "--default-ttl", "1h"]).await
}

#[tokio::test]
async fn a_request_without_a_token_is_unauthenticated() {
    let plane = plane().await;
    let (_, csr) = key_and_csr(None);
    assert_refused(
        raw_certify(&plane.channel().await, None, csr, 0).await,
        Code::Unauthenticated,
        &["no bearer token", "authorization: Bearer"],
    );
}

#[tokio::test]
async fn an_unknown_token_is_unauthenticated() {
    let plane = plane().await;
    let (_, csr) = key_and_csr(None);
    assert_refused(
        raw_certify(
            &plane.channel().await,
            bearer(UNKNOWN_TOKEN).as_deref(),
            csr,
            0,
        )
        .await,
        Code::Unauthenticated,
        &["token refused", "unknown join token"],
    );
}

#[tokio::test]
async fn a_malformed_authorization_header_is_unauthenticated() {
    let plane = plane().await;
    let channel = plane.channel().await;
    for value in [
        "Basic ZnJvbnRlbmQ6c2VjcmV0",
        FRONTEND_TOKEN,
        "Bearer",
        &format!("Token {FRONTEND_TOKEN}"),
    ] {
        let (_, csr) = key_and_csr(None);
        let message = assert_refused(
            raw_certify(&channel, Some(value), csr, 0).await,
            Code::Unauthenticated,
            &["authorization metadata must be `Bearer <token>`"],
        );
        assert!(
            !message.contains(FRONTEND_TOKEN),
            "the token is not echoed: {message}"
        );
    }
    // An empty token after the scheme is the same as none.
    let (_, csr) = key_and_csr(None);
    assert_refused(
        raw_certify(&channel, Some("Bearer    "), csr, 0).await,
        Code::Unauthenticated,
        &["no bearer token"],
    );
}

#[tokio::test]
async fn a_csr_for_another_identity_is_permission_denied_naming_both() {
    let plane = plane().await;
    let (_, csr) = key_and_csr(Some(&id(BACKEND)));
    assert_refused(
        raw_certify(
            &plane.channel().await,
            bearer(FRONTEND_TOKEN).as_deref(),
            csr,
            0,
        )
        .await,
        Code::PermissionDenied,
        &[
            &format!("CSR asks for {BACKEND}"),
            &format!("authenticated as {FRONTEND}"),
        ],
    );
}

#[tokio::test]
async fn a_csr_for_another_trust_domain_is_permission_denied() {
    let plane = plane().await;
    let (_, csr) = key_and_csr(Some(&id("spiffe://other.example/ns/shop/sa/frontend")));
    assert_refused(
        raw_certify(
            &plane.channel().await,
            bearer(FRONTEND_TOKEN).as_deref(),
            csr,
            0,
        )
        .await,
        Code::PermissionDenied,
        &["spiffe://other.example/ns/shop/sa/frontend", FRONTEND],
    );
}

#[tokio::test]
async fn a_garbage_csr_is_an_invalid_argument() {
    let plane = plane().await;
    let channel = plane.channel().await;
    for (csr, needle) in [
        (b"this is not a CSR".to_vec(), "CSR is not a valid PKCS#10 request"),
        (Vec::new(), "CSR is not a valid PKCS#10 request"),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n"
                .to_vec(),
            "CSR is not a valid PKCS#10 request: PEM",
        ),
    ] {
        assert_refused(
            raw_certify(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr, 0).await,
            Code::InvalidArgument,
            &[needle],
        );
    }
    // A real CSR whose signature was altered.
    let (_, mut csr) = key_and_csr(Some(&id(FRONTEND)));
    let last = csr.len() - 1;
    csr[last] ^= 0x01;
    assert_refused(
        raw_certify(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr, 0).await,
        Code::InvalidArgument,
        &["CSR signature does not verify"],
    );
}

#[tokio::test]
async fn an_oversized_csr_is_an_invalid_argument() {
    let plane = plane().await;
    let csr = vec![0x30; 20 * 1024];
    assert_refused(
        raw_certify(
            &plane.channel().await,
            bearer(FRONTEND_TOKEN).as_deref(),
            csr,
            0,
        )
        .await,
        Code::InvalidArgument,
        &["CSR is 20480 bytes; at most 16384 are accepted"],
    );
}

#[tokio::test]
async fn a_message_over_the_64_kib_grpc_limit_is_refused_before_the_pipeline() {
    let plane = plane().await;
    let channel = plane.channel().await;
    let csr = vec![0x30; 80 * 1024];
    // tonic's decoder refuses the message from its length prefix, with OUT_OF_RANGE.
    assert_refused(
        raw_certify(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr, 0).await,
        Code::OutOfRange,
        &[
            "decoded message length too large",
            "the limit is: 65536 bytes",
        ],
    );
    // The connection survives it.
    let (_, csr) = key_and_csr(None);
    raw_certify(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr, 0)
        .await
        .expect("the same channel still works");
}

#[tokio::test]
async fn a_lifetime_beyond_max_ttl_is_an_invalid_argument() {
    let plane = plane().await;
    let channel = plane.channel().await;
    let (_, csr) = key_and_csr(None);
    assert_refused(
        raw_certify(
            &channel,
            bearer(FRONTEND_TOKEN).as_deref(),
            csr.clone(),
            3 * 3600,
        )
        .await,
        Code::InvalidArgument,
        &["requested lifetime of 10800s is outside 1s..=7200s"],
    );
    // At the ceiling it is issued.
    let answer = raw_certify(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr, 2 * 3600)
        .await
        .expect("a lifetime of exactly --max-ttl is issued");
    assert_eq!(answer.not_after - answer.not_before, 2 * 3600 + 5 * 60);
}

#[tokio::test]
async fn a_caller_over_its_rate_limit_is_told_to_slow_down() {
    let plane =
        LocalPlane::start(&["--rate-limit-burst", "2", "--rate-limit-per-second", "0.01"]).await;
    let channel = plane.channel().await;
    for _ in 0..2 {
        let (_, csr) = key_and_csr(None);
        raw_certify(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr, 0)
            .await
            .expect("within the burst");
    }
    let (_, csr) = key_and_csr(None);
    assert_refused(
        raw_certify(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr.clone(), 0).await,
        Code::ResourceExhausted,
        &[FRONTEND, "is rate limited; retry in"],
    );
    // Buckets are per identity: another caller is not affected.
    raw_certify(&channel, bearer(BACKEND_TOKEN).as_deref(), csr, 0)
        .await
        .expect("another identity has its own bucket");
}

#[tokio::test]
async fn a_single_use_join_token_gets_one_certificate_even_across_a_restart() {
    const ONCE: &str = "single-use-token-0123456789";
    let plane = LocalPlane::start_with_tokens(
        &[
            (ONCE, "ns/shop/sa/batch single-use"),
            (FRONTEND_TOKEN, FRONTEND),
        ],
        &[],
    )
    .await;
    let certify = |channel| async move {
        let (_, csr) = key_and_csr(None);
        raw_certify(&channel, bearer(ONCE).as_deref(), csr, 0).await
    };
    certify(plane.channel().await)
        .await
        .expect("the first use gets a certificate");
    let used = ["token refused", "single-use join token was already used"];
    assert_refused(
        certify(plane.channel().await).await,
        Code::Unauthenticated,
        &used,
    );

    let LocalPlane {
        running,
        config,
        dir,
        ..
    } = plane;
    stop(running).await;
    let restarted = try_start(&config, None).await.expect("restarts");
    assert_refused(
        certify(channel(&restarted, &config).await).await,
        Code::Unauthenticated,
        &used,
    );
    stop(restarted).await;
    drop(dir);
}

#[tokio::test]
async fn an_expired_join_token_is_unauthenticated_saying_when_it_expired() {
    const OLD: &str = "expired-token-0123456789ab";
    let plane =
        LocalPlane::start_with_tokens(&[(OLD, "ns/shop/sa/old expires=2020-01-01T00:00:00Z")], &[])
            .await;
    let (_, csr) = key_and_csr(None);
    assert_refused(
        raw_certify(&plane.channel().await, bearer(OLD).as_deref(), csr, 0).await,
        Code::Unauthenticated,
        &["join token expired at 2020-01-01T00:00:00Z"],
    );
}

#[tokio::test]
async fn a_flood_of_bad_join_tokens_does_not_lock_out_a_good_caller_of_the_same_address() {
    let plane = LocalPlane::start(&[]).await;
    let channel = plane.channel().await;
    // More failures than the per-source budget (100) allows for costly attempts.
    for i in 0..150 {
        let (_, csr) = key_and_csr(None);
        let bad = format!("not-a-join-token-{i:08}");
        assert_refused(
            raw_certify(&channel, bearer(&bad).as_deref(), csr, 0).await,
            Code::Unauthenticated,
            &["token refused"],
        );
    }
    // Checking a join token costs nothing: the good caller is checked, and issued.
    let (_, csr) = key_and_csr(None);
    raw_certify(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr, 0)
        .await
        .expect("a valid join token from the flooding address is still issued");
}
