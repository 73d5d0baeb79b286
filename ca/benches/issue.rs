//! The CA's hot path: parse a CSR and issue an SVID; and a peer's: verify a presented SVID.
//!
//! Run with `cargo bench -p trellis-ca --bench issue`. Inputs are made once, outside the
//! measured loops, so only the library's work is timed.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use rustls_pki_types::UnixTime;
use trellis_ca::{
    CaMaterial, CertificateAuthority, PeerRole, SpiffeId, TrustDomain, ValidatedCsr, WorkloadKey,
    verify_svid,
};

const TTL: Duration = Duration::from_secs(24 * 3600);

fn benches(c: &mut Criterion) {
    let now = SystemTime::now();
    let td = TrustDomain::default();
    let material = CaMaterial::generate_root(&td, now).expect("generate a root");
    let ca = CertificateAuthority::load(td, &material, now).expect("load the root");
    let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").expect("valid ID");
    let key = WorkloadKey::generate().expect("generate a workload key");
    let csr_der = key.csr(&id).expect("build a CSR");

    c.bench_function("csr_parse_p256", |b| {
        b.iter(|| ValidatedCsr::parse(black_box(&csr_der)).expect("valid CSR"))
    });

    c.bench_function("parse_and_issue_p256_svid", |b| {
        b.iter(|| {
            let csr = ValidatedCsr::parse(black_box(&csr_der)).expect("valid CSR");
            ca.issue(&csr, black_box(&id), TTL, now).expect("issue")
        })
    });

    let csr = ValidatedCsr::parse(&csr_der).expect("valid CSR");
    let svid = ca.issue(&csr, &id, TTL, now).expect("issue");
    let verify_at = UnixTime::now();
    c.bench_function("verify_svid_p256", |b| {
        b.iter(|| {
            verify_svid(
                black_box(ca.bundle()),
                black_box(&svid.leaf),
                &svid.chain,
                verify_at,
                PeerRole::Client,
            )
            .expect("verifies")
        })
    });
}

criterion_group!(issue, benches);
criterion_main!(issue);
