//! What the injector's Secret needs, case by case.

use std::time::{Duration, SystemTime};

use trellis_ca::{CaMaterial, CertificateAuthority, TrustDomain, WorkloadKey};

use super::*;

fn names() -> Vec<String> {
    ["trellis-injector", "trellis-injector.trellis-system.svc"]
        .map(String::from)
        .to_vec()
}

fn ca_of(m: &CaMaterial) -> CertificateAuthority {
    CertificateAuthority::load(TrustDomain::default(), m, SystemTime::now()).unwrap()
}

/// What the control plane writes: a certificate from `ca` for `names`, its key, `ca`'s roots.
fn secret(
    ca: &CertificateAuthority,
    names: &[String],
    ttl: Duration,
) -> BTreeMap<String, ByteString> {
    let key = WorkloadKey::generate().unwrap();
    let cert = ca
        .issue_dns_server(&key, names, ttl, SystemTime::now())
        .unwrap();
    BTreeMap::from([
        (TLS_CRT.into(), ByteString(cert.chain_pem().into_bytes())),
        (
            TLS_KEY.into(),
            ByteString(key.private_key_pem().into_bytes()),
        ),
        (CA_CRT.into(), ByteString(ca.bundle().to_pem().into_bytes())),
    ])
}

fn with(
    mut data: BTreeMap<String, ByteString>,
    key: &str,
    value: &str,
) -> BTreeMap<String, ByteString> {
    data.insert(key.into(), ByteString(value.as_bytes().to_vec()));
    data
}

fn without(mut data: BTreeMap<String, ByteString>, key: &str) -> BTreeMap<String, ByteString> {
    data.remove(key);
    data
}

/// The plan as a short label.
fn label(p: &Plan) -> String {
    match p {
        Plan::Keep { .. } => "keep".into(),
        Plan::Rebundle => "rebundle".into(),
        Plan::Reissue(w) => format!("reissue: {w}"),
    }
}

/// (name, the Secret's data, the CA in use, now, the plan's label).
type Case<'a> = (
    &'a str,
    Option<BTreeMap<String, ByteString>>,
    &'a CertificateAuthority,
    SystemTime,
    &'a str,
);

#[test]
fn the_secret_is_kept_rebundled_or_reissued_for_the_right_reason() {
    let now = SystemTime::now();
    let td = TrustDomain::default();
    let r1 = CaMaterial::generate_root(&td, now).unwrap();
    let r2 = CaMaterial::generate_root(&td, now).unwrap();
    let both_roots = format!("{}{}", r1.root_cert_pem, r2.root_cert_pem);
    let ca1 = ca_of(&r1);
    let ca1_adding = ca_of(&CaMaterial {
        root_cert_pem: both_roots.clone(),
        ..r1.clone()
    });
    let ca2_switched = ca_of(&CaMaterial {
        root_cert_pem: both_roots,
        ..r2.clone()
    });
    let good = secret(&ca1, &names(), Duration::from_secs(3600));
    let other_key = WorkloadKey::generate().unwrap().private_key_pem();
    let day = Duration::from_secs(24 * 3600);
    let cases: Vec<Case<'_>> = vec![
        ("as written", Some(good.clone()), &ca1, now, "keep"),
        (
            "no Secret",
            None,
            &ca1,
            now,
            "reissue: the Secret is missing or lacks tls.crt",
        ),
        (
            "emptied",
            Some(BTreeMap::new()),
            &ca1,
            now,
            "reissue: the Secret is missing or lacks tls.crt",
        ),
        (
            "no key",
            Some(without(good.clone(), TLS_KEY)),
            &ca1,
            now,
            "reissue: the Secret is missing or lacks tls.key",
        ),
        (
            "garbage certificate",
            Some(with(good.clone(), TLS_CRT, "junk")),
            &ca1,
            now,
            "reissue: tls.crt does not parse",
        ),
        (
            "another key",
            Some(with(good.clone(), TLS_KEY, &other_key)),
            &ca1,
            now,
            "reissue: tls.key does not belong to tls.crt",
        ),
        (
            "a name missing",
            Some(secret(&ca1, &names()[..1], Duration::from_secs(3600))),
            &ca1,
            now,
            "reissue: tls.crt does not name trellis-injector.trellis-system.svc",
        ),
        (
            "another CA's certificate",
            Some(secret(&ca_of(&r2), &names(), Duration::from_secs(3600))),
            &ca1,
            now,
            "reissue: tls.crt chains to no root of the trust bundle",
        ),
        (
            "a root was added",
            Some(good.clone()),
            &ca1_adding,
            now,
            "rebundle",
        ),
        (
            "ca.crt edited",
            Some(with(good.clone(), CA_CRT, "")),
            &ca1,
            now,
            "rebundle",
        ),
        (
            "the CA switched roots",
            Some(good.clone()),
            &ca2_switched,
            now,
            "reissue: the CA signs under another root now",
        ),
        (
            "past half its life",
            Some(good.clone()),
            &ca1,
            now + day,
            "reissue: half of its lifetime is over",
        ),
    ];
    let mut failures = Vec::new();
    for (name, data, ca, at, want) in cases {
        let got = label(&plan(data.as_ref(), ca, &names(), at));
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_kept_certificate_is_looked_at_again_at_half_its_life() {
    let now = SystemTime::now();
    let ca = ca_of(&CaMaterial::generate_root(&TrustDomain::default(), now).unwrap());
    let data = secret(&ca, &names(), Duration::from_secs(3600));
    let Plan::Keep { renew_at } = plan(Some(&data), &ca, &names(), now) else {
        panic!("a fresh certificate is kept");
    };
    // Issued now, back-dated five minutes for clock skew: half of 65 minutes after that.
    let expected = now - trellis_ca::authority::CLOCK_SKEW + Duration::from_secs(3900) / 2;
    let off = renew_at
        .duration_since(expected)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    assert!(
        off < Duration::from_secs(2),
        "renew at {renew_at:?}, expected {expected:?}"
    );
    assert!(!Why::Renewal.is_damage() && Why::KeyMismatch.is_damage());
}
