//! What a root rotation needs from the identity library: a bundle with two roots verifies leaves
//! of both, a CA knows which root it signs under, an intermediate made under a root signs
//! leaves that chain through it, a workload can tell whether its own leaf survives a change of
//! roots, and an operator can recognise each root by the fingerprint OpenSSL prints.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, SystemTime};

use trellis_ca::tls::ExpectedServer;
use trellis_ca::{
    CaMaterial, CertificateAuthority, IssuedSvid, RootSummary, SpiffeId, Svid, TrustBundle,
    TrustDomain, ValidatedCsr, VerifyError, WorkloadKey, certs_from_pem,
};

fn td() -> TrustDomain {
    TrustDomain::default()
}

fn id() -> SpiffeId {
    SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap()
}

fn load(material: &CaMaterial) -> CertificateAuthority {
    CertificateAuthority::load(td(), material, SystemTime::now()).unwrap()
}

fn issue(ca: &CertificateAuthority) -> (WorkloadKey, IssuedSvid) {
    let key = WorkloadKey::generate().unwrap();
    let csr = ValidatedCsr::parse(&key.csr(&id()).unwrap()).unwrap();
    let svid = ca
        .issue(&csr, &id(), Duration::from_secs(600), SystemTime::now())
        .unwrap();
    (key, svid)
}

fn svid(ca: &CertificateAuthority, bundle: &TrustBundle) -> Svid {
    let (key, issued) = issue(ca);
    Svid::new(
        &key,
        issued.leaf,
        issued.chain,
        bundle.clone(),
        Some(&id()),
        SystemTime::now(),
    )
    .unwrap()
}

/// `a` then `b`'s root certificates, as one `root-cert.pem`.
fn both_roots(a: &CaMaterial, b: &CaMaterial) -> String {
    format!("{}{}", a.root_cert_pem, b.root_cert_pem)
}

#[test]
fn a_bundle_of_old_and_new_root_verifies_leaves_of_both() {
    let now = SystemTime::now();
    let old = CaMaterial::generate_root(&td(), now).unwrap();
    let new = CaMaterial::generate_root(&td(), now).unwrap();
    let both = TrustBundle::from_pem(td(), both_roots(&old, &new).as_bytes()).unwrap();
    let only_new = TrustBundle::from_pem(td(), new.root_cert_pem.as_bytes()).unwrap();

    let from_old = svid(&load(&old), &both);
    let from_new = svid(&load(&new), &both);
    assert!(from_old.verifies_under(&both, now).is_ok());
    assert!(from_new.verifies_under(&both, now).is_ok());
    assert!(from_new.verifies_under(&only_new, now).is_ok());
    assert!(matches!(
        from_old.verifies_under(&only_new, now),
        Err(VerifyError::UnknownIssuer { .. })
    ));
}

#[test]
fn the_ca_names_the_root_it_signs_under_among_several() {
    let now = SystemTime::now();
    let old = CaMaterial::generate_root(&td(), now).unwrap();
    let new = CaMaterial::generate_root(&td(), now).unwrap();
    let old_root = certs_from_pem(old.root_cert_pem.as_bytes()).unwrap();
    let new_root = certs_from_pem(new.root_cert_pem.as_bytes()).unwrap();

    // Signing with the old root while the bundle already holds the new one (rotation, step 1).
    let adding = CaMaterial {
        root_cert_pem: both_roots(&old, &new),
        ..old.clone()
    };
    let ca = load(&adding);
    assert_eq!(ca.bundle().roots().len(), 2);
    assert_eq!(ca.signer_root(), &old_root[0]);

    // Signing with the new root, both still trusted (step 2).
    let switched = CaMaterial {
        root_cert_pem: both_roots(&old, &new),
        ..new.clone()
    };
    assert_eq!(load(&switched).signer_root(), &new_root[0]);
}

#[test]
fn an_intermediate_made_under_a_root_signs_leaves_that_chain_through_it() {
    let now = SystemTime::now();
    let root = CaMaterial::generate_root(&td(), now).unwrap();
    let intermediate = root
        .generate_intermediate(&td(), now, Duration::from_secs(3600))
        .unwrap();
    assert_eq!(intermediate.root_cert_pem, root.root_cert_pem);
    assert_ne!(intermediate.ca_cert_pem, root.ca_cert_pem);
    let ca = load(&intermediate);
    let root_der = certs_from_pem(root.root_cert_pem.as_bytes()).unwrap();
    assert_eq!(ca.signer_root(), &root_der[0]);
    assert_eq!(
        ca.chain().len(),
        1,
        "the intermediate is sent, the root is not"
    );
    assert!(ca.issuer_not_after() <= now + Duration::from_secs(3601));

    let (_, issued) = issue(&ca);
    assert_eq!(issued.chain.len(), 1);
    let bundle = TrustBundle::from_pem(td(), root.root_cert_pem.as_bytes()).unwrap();
    let leaf = svid(&ca, &bundle);
    assert!(leaf.verifies_under(&bundle, now).is_ok());
    // And it never outlives its issuer.
    let short = intermediate
        .generate_intermediate(&td(), now, Duration::from_secs(10 * 365 * 24 * 3600))
        .unwrap();
    assert!(load(&short).issuer_not_after() <= ca.issuer_not_after());
}

#[test]
fn the_issuing_root_of_a_chain_is_found_by_signature() {
    let now = SystemTime::now();
    let r1 = CaMaterial::generate_root(&td(), now).unwrap();
    let r2 = CaMaterial::generate_root(&td(), now).unwrap();
    let both = TrustBundle::from_pem(td(), both_roots(&r1, &r2).as_bytes()).unwrap();
    let r2_root = certs_from_pem(r2.root_cert_pem.as_bytes()).unwrap();
    let (_, direct) = issue(&load(&r2));
    assert_eq!(
        both.issuing_root(&direct.leaf, &direct.chain),
        Some(&r2_root[0])
    );

    let under_r2 = r2
        .generate_intermediate(&td(), now, Duration::from_secs(3600))
        .unwrap();
    let (_, through) = issue(&load(&under_r2));
    assert_eq!(
        both.issuing_root(&through.leaf, &through.chain),
        Some(&r2_root[0])
    );
    assert_eq!(
        both.issuing_root(&through.leaf, &[]),
        None,
        "without its intermediate the leaf reaches no root"
    );
    let only_r1 = TrustBundle::from_pem(td(), r1.root_cert_pem.as_bytes()).unwrap();
    assert_eq!(only_r1.issuing_root(&direct.leaf, &direct.chain), None);
}

#[test]
fn tls_configs_can_trust_other_roots_than_the_svid_came_with() {
    let now = SystemTime::now();
    let old = CaMaterial::generate_root(&td(), now).unwrap();
    let new = CaMaterial::generate_root(&td(), now).unwrap();
    let only_old = TrustBundle::from_pem(td(), old.root_cert_pem.as_bytes()).unwrap();
    let both = TrustBundle::from_pem(td(), both_roots(&old, &new).as_bytes()).unwrap();
    let mine = svid(&load(&old), &only_old);
    assert!(
        mine.server_config_trusting(&both, &[b"h2"]).is_ok(),
        "a server config checking clients against both roots"
    );
    assert!(
        mine.client_config_trusting(&both, ExpectedServer::Exact(id()), &[b"h2"])
            .is_ok()
    );
    assert_eq!(
        mine.bundle().roots().len(),
        1,
        "the SVID itself is unchanged"
    );
}

#[test]
fn a_root_summary_shows_the_fingerprint_openssl_prints() {
    let now = SystemTime::now();
    let root = CaMaterial::generate_root(&td(), now).unwrap();
    let bundle = TrustBundle::from_pem(td(), root.root_cert_pem.as_bytes()).unwrap();
    let summary: Vec<RootSummary> = bundle.summaries();
    assert_eq!(summary.len(), 1);
    assert!(
        summary[0]
            .subject
            .contains("Trellis root CA for cluster.local"),
        "{summary:?}"
    );
    assert!(summary[0].not_after > now + Duration::from_secs(9 * 365 * 24 * 3600));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.pem");
    std::fs::write(&path, &root.root_cert_pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&path)
        .output()
        .expect("openssl runs (./scripts/setup installs it)");
    let printed = String::from_utf8_lossy(&out.stdout);
    let openssl = printed
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(summary[0].sha256, openssl, "openssl printed {printed}");
}

#[test]
fn same_roots_ignores_order_and_contains_finds_a_root() {
    let now = SystemTime::now();
    let a = CaMaterial::generate_root(&td(), now).unwrap();
    let b = CaMaterial::generate_root(&td(), now).unwrap();
    let ab = TrustBundle::from_pem(td(), both_roots(&a, &b).as_bytes()).unwrap();
    let ba = TrustBundle::from_pem(td(), both_roots(&b, &a).as_bytes()).unwrap();
    let only_a = TrustBundle::from_pem(td(), a.root_cert_pem.as_bytes()).unwrap();
    assert!(ab.same_roots(&ba));
    assert!(!ab.same_roots(&only_a));
    assert!(!only_a.same_roots(&ab));
    let b_root = certs_from_pem(b.root_cert_pem.as_bytes()).unwrap();
    assert!(ab.contains(&b_root[0]));
    assert!(!only_a.contains(&b_root[0]));
}
