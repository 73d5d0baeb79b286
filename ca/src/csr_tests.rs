//! Unit tests for [`ValidatedCsr`]: every refusal has its own test, named after the rule.
//!
//! CSRs are crafted with rcgen (EC and Ed25519 keys, odd extensions) and, for RSA and curves
//! rcgen cannot make with *ring*, with the `openssl` binary.

use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType, SignatureAlgorithm,
};

use super::*;
use crate::{SpiffeId, WorkloadKey};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn frontend() -> SpiffeId {
    id("spiffe://cluster.local/ns/shop/sa/frontend")
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// A DER CSR signed by a fresh key of `alg`, with `params` as the requested extensions.
fn rcgen_csr(alg: &'static SignatureAlgorithm, params: &CertificateParams) -> Vec<u8> {
    let key = KeyPair::generate_for(alg).unwrap();
    params.serialize_request(&key).unwrap().der().to_vec()
}

/// Request parameters with an empty subject and the given SANs, like a workload sends.
fn params_with_sans(sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params
}

/// A DER CSR made by `openssl req` for a new key given by `-newkey` (e.g. `rsa:2048`),
/// asking for `spiffe://cluster.local/ns/shop/sa/frontend`.
fn openssl_csr(newkey: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-nodes",
            "-keyout",
            "/dev/null",
            "-outform",
            "DER",
        ])
        .args(["-subj", "/O=Trellis test"])
        .args([
            "-addext",
            "subjectAltName=URI:spiffe://cluster.local/ns/shop/sa/frontend",
        ])
        .args(["-newkey"])
        .args(newkey)
        .output()
        .expect("the openssl binary must be installed to run these tests");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn workload_csr_parses_and_reports_its_requested_identity() {
    let key = WorkloadKey::generate().unwrap();
    let csr = ValidatedCsr::parse(&key.csr(&frontend()).unwrap()).unwrap();
    assert_eq!(csr.requested_identity(), Some(&frontend()));
    assert_eq!(csr.check_identity(&frontend()), Ok(()));
}

#[test]
fn validated_csr_carries_the_workload_public_key_for_signing() {
    let key = WorkloadKey::generate().unwrap();
    let csr = ValidatedCsr::parse(&key.csr(&frontend()).unwrap()).unwrap();
    assert_eq!(csr.public_key().algorithm(), &PKCS_ECDSA_P256_SHA256);
    // The SPKI that rcgen will write into the certificate is the workload's own.
    assert_eq!(
        csr.public_key().subject_public_key_info(),
        key.public_key_spki()
    );
}

#[test]
fn pem_encoded_csr_is_accepted() {
    let key = WorkloadKey::generate().unwrap();
    let der = key.csr(&frontend()).unwrap();
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der.as_ref()));
    let csr = ValidatedCsr::parse(pem.as_bytes()).unwrap();
    assert_eq!(csr.requested_identity(), Some(&frontend()));
}

#[test]
fn csr_for_another_identity_fails_check_identity_with_both_ids_named() {
    let key = WorkloadKey::generate().unwrap();
    let other = id("spiffe://cluster.local/ns/shop/sa/payments");
    let csr = ValidatedCsr::parse(&key.csr(&other).unwrap()).unwrap();
    let err = csr.check_identity(&frontend()).unwrap_err();
    assert_eq!(
        err,
        CsrError::IdentityMismatch {
            requested: other,
            authenticated: frontend(),
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("spiffe://cluster.local/ns/shop/sa/payments"),
        "{message}"
    );
    assert!(
        message.contains("spiffe://cluster.local/ns/shop/sa/frontend"),
        "{message}"
    );
}

#[test]
fn csr_for_another_trust_domain_fails_check_identity() {
    let key = WorkloadKey::generate().unwrap();
    let other = id("spiffe://evil.example/ns/shop/sa/frontend");
    let csr = ValidatedCsr::parse(&key.csr(&other).unwrap()).unwrap();
    assert!(matches!(
        csr.check_identity(&frontend()),
        Err(CsrError::IdentityMismatch { .. })
    ));
}

#[test]
fn flipped_bit_in_the_signature_is_a_bad_signature() {
    let key = WorkloadKey::generate().unwrap();
    let mut der = key.csr(&frontend()).unwrap().as_ref().to_vec();
    // The CSR ends with the signature BIT STRING; for ECDSA its last byte is the low byte of
    // `s`, so flipping it keeps the DER well-formed but breaks the signature.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    assert_eq!(
        ValidatedCsr::parse(&der).unwrap_err(),
        CsrError::BadSignature
    );
}

#[test]
fn csr_signed_by_another_key_is_a_bad_signature() {
    // Take the signed body of one CSR and the signature of another: same structure, wrong key.
    let key = WorkloadKey::generate().unwrap();
    let a = key.csr(&frontend()).unwrap().as_ref().to_vec();
    let b = WorkloadKey::generate()
        .unwrap()
        .csr(&frontend())
        .unwrap()
        .as_ref()
        .to_vec();
    let (_, csr_a) = X509CertificationRequest::from_der(&a).unwrap();
    let (_, csr_b) = X509CertificationRequest::from_der(&b).unwrap();
    let body_a = csr_a.certification_request_info.raw;
    let body_b = csr_b.certification_request_info.raw;
    // The bodies differ only in the public key; splice a's body with b's signature.
    let mut spliced = b.clone();
    let start = b.windows(body_b.len()).position(|w| w == body_b).unwrap();
    assert_eq!(
        body_a.len(),
        body_b.len(),
        "P-256 CSR bodies have a fixed size"
    );
    spliced[start..start + body_a.len()].copy_from_slice(body_a);
    assert_eq!(
        ValidatedCsr::parse(&spliced).unwrap_err(),
        CsrError::BadSignature
    );
}

#[test]
fn truncated_csr_is_malformed() {
    let key = WorkloadKey::generate().unwrap();
    let der = key.csr(&frontend()).unwrap().as_ref().to_vec();
    for cut in [1, 10, der.len() / 2, der.len() - 1] {
        let err = ValidatedCsr::parse(&der[..der.len() - cut]).unwrap_err();
        assert!(matches!(err, CsrError::Malformed(_)), "cut {cut}: {err:?}");
    }
}

#[test]
fn garbage_and_empty_input_are_malformed() {
    for input in [
        &b""[..],
        b"not a csr",
        &[0x30, 0x03, 0x02, 0x01, 0x00],
        &[0xff; 64],
    ] {
        let err = ValidatedCsr::parse(input).unwrap_err();
        assert!(matches!(err, CsrError::Malformed(_)), "{input:?}: {err:?}");
    }
}

#[test]
fn broken_pem_is_malformed() {
    let input = b"-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n";
    let err = ValidatedCsr::parse(input).unwrap_err();
    assert!(matches!(err, CsrError::Malformed(_)), "{err:?}");
}

#[test]
fn pem_of_something_other_than_a_csr_is_malformed() {
    let input = pem::encode(&pem::Pem::new("CERTIFICATE", vec![0x30, 0x00]));
    let err = ValidatedCsr::parse(input.as_bytes()).unwrap_err();
    assert!(matches!(err, CsrError::Malformed(_)), "{err:?}");
}

#[test]
fn bytes_after_the_request_are_trailing_data() {
    let key = WorkloadKey::generate().unwrap();
    let mut der = key.csr(&frontend()).unwrap().as_ref().to_vec();
    der.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        ValidatedCsr::parse(&der).unwrap_err(),
        CsrError::TrailingData(3)
    );
}

#[test]
fn input_over_16_kib_is_too_large_before_any_parsing() {
    let input = vec![0x30; MAX_CSR_BYTES + 1];
    assert_eq!(
        ValidatedCsr::parse(&input).unwrap_err(),
        CsrError::TooLarge(MAX_CSR_BYTES + 1)
    );
    // Exactly at the limit is not refused for its size (it is refused as garbage instead).
    let at_limit = vec![0x30; MAX_CSR_BYTES];
    assert!(matches!(
        ValidatedCsr::parse(&at_limit),
        Err(CsrError::Malformed(_))
    ));
}

#[test]
fn csr_asking_for_ca_true_is_refused() {
    let mut params = params_with_sans(vec![uri("spiffe://cluster.local/ns/shop/sa/frontend")]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let der = rcgen_csr(&PKCS_ECDSA_P256_SHA256, &params);
    assert_eq!(
        ValidatedCsr::parse(&der).unwrap_err(),
        CsrError::AsksForCaPowers("basicConstraints cA=true")
    );
}

#[test]
fn csr_asking_for_key_cert_sign_is_refused() {
    let mut params = params_with_sans(vec![uri("spiffe://cluster.local/ns/shop/sa/frontend")]);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let der = rcgen_csr(&PKCS_ECDSA_P256_SHA256, &params);
    assert_eq!(
        ValidatedCsr::parse(&der).unwrap_err(),
        CsrError::AsksForCaPowers("keyUsage keyCertSign")
    );
}

#[test]
fn csr_asking_for_crl_sign_is_refused() {
    let mut params = params_with_sans(vec![uri("spiffe://cluster.local/ns/shop/sa/frontend")]);
    params.key_usages = vec![KeyUsagePurpose::CrlSign];
    let der = rcgen_csr(&PKCS_ECDSA_P256_SHA256, &params);
    assert_eq!(
        ValidatedCsr::parse(&der).unwrap_err(),
        CsrError::AsksForCaPowers("keyUsage cRLSign")
    );
}

#[test]
fn csr_with_explicit_ca_false_and_digital_signature_is_accepted() {
    let mut params = params_with_sans(vec![uri("spiffe://cluster.local/ns/shop/sa/frontend")]);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let der = rcgen_csr(&PKCS_ECDSA_P256_SHA256, &params);
    let csr = ValidatedCsr::parse(&der).unwrap();
    assert_eq!(csr.requested_identity(), Some(&frontend()));
}

#[test]
fn csr_with_two_uri_sans_is_refused() {
    let params = params_with_sans(vec![
        uri("spiffe://cluster.local/ns/shop/sa/frontend"),
        uri("spiffe://cluster.local/ns/shop/sa/payments"),
    ]);
    let der = rcgen_csr(&PKCS_ECDSA_P256_SHA256, &params);
    assert_eq!(
        ValidatedCsr::parse(&der).unwrap_err(),
        CsrError::SeveralUris(2)
    );
}

#[test]
fn csr_with_a_non_spiffe_uri_is_refused() {
    let params = params_with_sans(vec![uri("https://frontend.shop.svc")]);
    let der = rcgen_csr(&PKCS_ECDSA_P256_SHA256, &params);
    assert_eq!(
        ValidatedCsr::parse(&der).unwrap_err(),
        CsrError::NotSpiffe(SpiffeIdError::WrongScheme(
            "https://frontend.shop.svc".into()
        ))
    );
}

#[test]
fn csr_with_an_invalid_spiffe_uri_is_refused() {
    let params = params_with_sans(vec![uri("spiffe://cluster.local/ns/shop/sa/frontend/")]);
    let der = rcgen_csr(&PKCS_ECDSA_P256_SHA256, &params);
    assert_eq!(
        ValidatedCsr::parse(&der).unwrap_err(),
        CsrError::NotSpiffe(SpiffeIdError::EmptySegment)
    );
}

#[test]
fn csr_without_uri_san_is_accepted_and_names_no_identity() {
    for sans in [
        vec![],
        vec![SanType::DnsName("frontend.shop.svc".try_into().unwrap())],
    ] {
        let der = rcgen_csr(&PKCS_ECDSA_P256_SHA256, &params_with_sans(sans));
        let csr = ValidatedCsr::parse(&der).unwrap();
        assert_eq!(csr.requested_identity(), None);
        // The identity then comes from authentication alone: any is fine.
        assert_eq!(csr.check_identity(&frontend()), Ok(()));
        assert_eq!(
            csr.check_identity(&id("spiffe://cluster.local/ns/a/sa/b")),
            Ok(())
        );
    }
}

#[test]
fn ed25519_key_is_unsupported() {
    let params = params_with_sans(vec![uri("spiffe://cluster.local/ns/shop/sa/frontend")]);
    let der = rcgen_csr(&PKCS_ED25519, &params);
    assert_eq!(
        ValidatedCsr::parse(&der).unwrap_err(),
        CsrError::UnsupportedKey("1.3.101.112".into())
    );
}

#[test]
fn p384_key_is_accepted() {
    let params = params_with_sans(vec![uri("spiffe://cluster.local/ns/shop/sa/frontend")]);
    let der = rcgen_csr(&PKCS_ECDSA_P384_SHA384, &params);
    let csr = ValidatedCsr::parse(&der).unwrap();
    assert_eq!(csr.requested_identity(), Some(&frontend()));
    assert_eq!(csr.public_key().algorithm(), &PKCS_ECDSA_P384_SHA384);
}

#[test]
fn p521_key_is_unsupported() {
    let der = openssl_csr(&["ec", "-pkeyopt", "ec_paramgen_curve:P-521"]);
    assert_eq!(
        ValidatedCsr::parse(&der).unwrap_err(),
        CsrError::UnsupportedKey("EC curve 1.3.132.0.35".into())
    );
}

#[test]
fn rsa_1024_key_is_a_weak_key() {
    let der = openssl_csr(&["rsa:1024"]);
    assert_eq!(
        ValidatedCsr::parse(&der).unwrap_err(),
        CsrError::WeakKey(1024)
    );
}

#[test]
fn rsa_2048_key_is_accepted() {
    let der = openssl_csr(&["rsa:2048"]);
    let csr = ValidatedCsr::parse(&der).unwrap();
    assert_eq!(csr.requested_identity(), Some(&frontend()));
    assert_eq!(csr.public_key().algorithm(), &rcgen::PKCS_RSA_SHA256);
}

#[test]
fn openssl_p256_csr_is_accepted() {
    let der = openssl_csr(&["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let csr = ValidatedCsr::parse(&der).unwrap();
    assert_eq!(csr.requested_identity(), Some(&frontend()));
    assert_eq!(csr.public_key().algorithm(), &PKCS_ECDSA_P256_SHA256);
}
