//! The seeds that cannot be written by hand: CSRs and certificate chains, and the fixed bundle
//! the `svid_chain` target verifies against. `trellis-fuzz seed` writes them into `corpus/` and
//! `fixtures/`; they are committed, so this runs only when they must change.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType,
};
use trellis_ca::{
    CaMaterial, CertificateAuthority, SpiffeId, TrustDomain, ValidatedCsr, WorkloadKey,
};

use crate::targets::svid_chain::join_chain;
use crate::{Target, corpus_dir, fixtures_dir};

/// Writes the CSR and chain seeds and the SVID fixtures.
pub fn write_all() -> anyhow::Result<()> {
    write_csr_seeds(&corpus_dir(Target::Csr))?;
    write_chain_seeds(&corpus_dir(Target::SvidChain), &fixtures_dir())
}

fn frontend() -> anyhow::Result<SpiffeId> {
    Ok(SpiffeId::parse(
        "spiffe://cluster.local/ns/shop/sa/frontend",
    )?)
}

fn uri(s: &str) -> anyhow::Result<SanType> {
    Ok(SanType::URI(s.try_into()?))
}

fn write_csr_seeds(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let key = WorkloadKey::generate()?;
    let with_id = key.csr(&frontend()?)?;
    fs::write(dir.join("p256-frontend.der"), with_id.as_ref())?;
    fs::write(
        dir.join("p256-anonymous.der"),
        key.anonymous_csr()?.as_ref(),
    )?;
    let pem = pem::encode(&pem::Pem::new(
        "CERTIFICATE REQUEST",
        with_id.as_ref().to_vec(),
    ));
    fs::write(dir.join("p256-frontend.pem"), pem)?;

    let request = |alg, sans: Vec<SanType>, ca: bool| -> anyhow::Result<Vec<u8>> {
        let key = KeyPair::generate_for(alg)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        }
        Ok(params.serialize_request(&key)?.der().to_vec())
    };
    let front = || uri("spiffe://cluster.local/ns/shop/sa/frontend");
    let seeds = [
        (
            "p384-frontend.der",
            request(&PKCS_ECDSA_P384_SHA384, vec![front()?], false)?,
        ),
        (
            "ed25519-frontend.der",
            request(&PKCS_ED25519, vec![front()?], false)?,
        ),
        (
            "p256-ca-true.der",
            request(&PKCS_ECDSA_P256_SHA256, vec![front()?], true)?,
        ),
        (
            "p256-two-uris.der",
            request(
                &PKCS_ECDSA_P256_SHA256,
                vec![front()?, uri("spiffe://cluster.local/ns/shop/sa/backend")?],
                false,
            )?,
        ),
        (
            "p256-dns-and-other-td.der",
            request(
                &PKCS_ECDSA_P256_SHA256,
                vec![
                    SanType::DnsName("backend.shop.svc".try_into()?),
                    uri("spiffe://other.td/ns/shop/sa/frontend")?,
                ],
                false,
            )?,
        ),
    ];
    for (name, der) in seeds {
        fs::write(dir.join(name), der)?;
    }
    Ok(())
}

fn write_chain_seeds(dir: &Path, fixtures: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    fs::create_dir_all(fixtures)?;
    let td = TrustDomain::default();
    let now = SystemTime::now();
    let root = CaMaterial::generate_root(&td, now)?;
    let root_ca = CertificateAuthority::load(td.clone(), &root, now)?;
    let intermediate = intermediate_of(&root)?;
    let inter_ca = CertificateAuthority::load(td.clone(), &intermediate, now)
        .context("the intermediate CA loads")?;
    let foreign = CaMaterial::generate_root(&td, now)?;
    let foreign_ca = CertificateAuthority::load(td.clone(), &foreign, now)?;

    let issue = |ca: &CertificateAuthority, id: &SpiffeId| -> anyhow::Result<_> {
        let key = WorkloadKey::generate()?;
        let csr = ValidatedCsr::parse(key.csr(id)?.as_ref())?;
        Ok(ca.issue(&csr, id, Duration::from_secs(24 * 3600), now)?)
    };
    let id = frontend()?;
    let other_td = SpiffeId::parse("spiffe://other.td/ns/shop/sa/frontend")?;
    let from_root = issue(&root_ca, &id)?;
    let from_inter = issue(&inter_ca, &id)?;
    let from_foreign = issue(&foreign_ca, &id)?;
    let root_der = root_ca.bundle().roots().first().context("a root")?.clone();
    let inter_der = from_inter.chain.first().context("an intermediate")?.clone();
    let seeds: [(&str, Vec<&[u8]>); 6] = [
        ("leaf-of-root.bin", vec![&from_root.leaf]),
        (
            "leaf-of-intermediate.bin",
            vec![&from_inter.leaf, &inter_der],
        ),
        (
            "leaf-intermediate-root.bin",
            vec![&from_inter.leaf, &inter_der, &root_der],
        ),
        ("leaf-without-its-intermediate.bin", vec![&from_inter.leaf]),
        ("leaf-of-another-root.bin", vec![&from_foreign.leaf]),
        ("root-as-leaf.bin", vec![&root_der]),
    ];
    for (name, certs) in seeds {
        fs::write(dir.join(name), join_chain(&certs))?;
    }
    // A leaf of another trust domain cannot be issued by our CA: refused before signing.
    assert!(issue(&root_ca, &other_td).is_err());

    fs::write(fixtures.join("svid-root.pem"), root.root_cert_pem)?;
    let at = now + Duration::from_secs(3600);
    let secs = at.duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
    fs::write(fixtures.join("svid-now"), format!("{secs}\n"))?;
    Ok(())
}

/// A P-256 intermediate signed by `root`, as a plug-in CA in Istio's `cacerts` layout.
fn intermediate_of(root: &CaMaterial) -> anyhow::Result<CaMaterial> {
    let root_key = KeyPair::from_pem(&root.ca_key_pem)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&root.ca_cert_pem, root_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Trellis fuzz intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![uri("spiffe://cluster.local")?];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CaMaterial {
        ca_cert_pem: cert.pem(),
        ca_key_pem: key.serialize_pem(),
        cert_chain_pem: format!("{}{}", cert.pem(), root.root_cert_pem),
        root_cert_pem: root.root_cert_pem.clone(),
    })
}
