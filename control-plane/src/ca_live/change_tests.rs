//! The rotation rule, case by case: every step of a rotation is adopted, anything that would
//! leave certificates in use unverifiable is restored.

use std::time::{Duration, SystemTime};

use trellis_ca::{CaMaterial, CertificateAuthority, TrustDomain};

use super::*;

fn td() -> TrustDomain {
    TrustDomain::default()
}

fn load(m: &CaMaterial) -> Result<CertificateAuthority, CaLoadError> {
    CertificateAuthority::load(td(), m, SystemTime::now())
}

/// Two roots and an intermediate under the first.
struct Fixture {
    r1: CaMaterial,
    r2: CaMaterial,
    i1: CaMaterial,
}

fn fixture() -> Fixture {
    let now = SystemTime::now();
    let r1 = CaMaterial::generate_root(&td(), now).unwrap();
    let r2 = CaMaterial::generate_root(&td(), now).unwrap();
    let i1 = r1
        .generate_intermediate(&td(), now, Duration::from_secs(3600))
        .unwrap();
    Fixture { r1, r2, i1 }
}

/// `signer` signing, trusting the roots of `roots` (in order).
fn with_roots(signer: &CaMaterial, roots: &[&CaMaterial]) -> CaMaterial {
    CaMaterial {
        root_cert_pem: roots.iter().map(|r| r.root_cert_pem.as_str()).collect(),
        ..signer.clone()
    }
}

/// What the judge says about `seen` while `held` is in use, as a short label.
fn verdict(held: &CaMaterial, seen: Result<Option<CaMaterial>, StoreError>) -> String {
    let ca = load(held).unwrap();
    match judge(&ca, held, seen, load) {
        Verdict::Unchanged => "unchanged".into(),
        Verdict::Adopt(a) => format!(
            "adopt +{} -{} signer:{}",
            a.added.len(),
            a.removed.len(),
            a.new_signer.is_some()
        ),
        Verdict::Restore(d) => format!("restore {}", d.label()),
    }
}

/// (name, the material held, what the store reads, the verdict's label).
type Case<'a> = (
    &'a str,
    &'a CaMaterial,
    Result<Option<CaMaterial>, StoreError>,
    &'a str,
);

#[test]
fn each_step_of_a_rotation_is_adopted_and_every_shortcut_is_restored() {
    let f = fixture();
    let (r1, r2) = (&f.r1, &f.r2);
    let only_r1 = with_roots(r1, &[r1]);
    let adding = with_roots(r1, &[r1, r2]);
    let switched = with_roots(r2, &[r1, r2]);
    let finished = with_roots(r2, &[r2]);
    let mut spaced = only_r1.clone();
    spaced.root_cert_pem.push_str("\n\n");
    let cases: Vec<Case<'_>> = vec![
        (
            "nothing changed",
            &only_r1,
            Ok(Some(only_r1.clone())),
            "unchanged",
        ),
        (
            "only whitespace changed",
            &only_r1,
            Ok(Some(spaced)),
            "unchanged",
        ),
        ("deleted or emptied", &only_r1, Ok(None), "restore missing"),
        (
            "a file is missing",
            &only_r1,
            Err(StoreError::Incomplete {
                location: "dir".into(),
                missing: "ca-key.pem",
            }),
            "restore unreadable",
        ),
        (
            "the key of another CA",
            &only_r1,
            Ok(Some(CaMaterial {
                ca_key_pem: r2.ca_key_pem.clone(),
                ..only_r1.clone()
            })),
            "restore unusable",
        ),
        (
            "1. the new root is added",
            &only_r1,
            Ok(Some(adding.clone())),
            "adopt +1 -0 signer:false",
        ),
        (
            "2. the CA switches to it",
            &adding,
            Ok(Some(switched.clone())),
            "adopt +0 -0 signer:true",
        ),
        (
            "3. the old root leaves",
            &switched,
            Ok(Some(finished.clone())),
            "adopt +0 -1 signer:false",
        ),
        (
            "a prepared rotation is abandoned",
            &adding,
            Ok(Some(only_r1.clone())),
            "adopt +0 -1 signer:false",
        ),
        (
            "switching before the new root is trusted",
            &only_r1,
            Ok(Some(switched.clone())),
            "restore untrusted_signer",
        ),
        (
            "a whole new CA in one go",
            &only_r1,
            Ok(Some(finished.clone())),
            "restore untrusted_signer",
        ),
        (
            "switching and removing the old root in one go",
            &adding,
            Ok(Some(finished.clone())),
            "restore removes_root_in_use",
        ),
        (
            "removing the root the CA signs under",
            &switched,
            Ok(Some(with_roots(r2, &[r1]))),
            "restore unusable",
        ),
        (
            "a new intermediate under the same root (plug-in CA)",
            &only_r1,
            Ok(Some(f.i1.clone())),
            "adopt +0 -0 signer:true",
        ),
    ];
    let mut failures = Vec::new();
    for (name, held, seen, want) in cases {
        let got = verdict(held, seen);
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn an_adoption_names_the_roots_and_the_signer_that_changed() {
    let f = fixture();
    let held = with_roots(&f.r1, &[&f.r1]);
    let ca = load(&held).unwrap();
    let Verdict::Adopt(a) = judge(
        &ca,
        &held,
        Ok(Some(with_roots(&f.r1, &[&f.r1, &f.r2]))),
        load,
    ) else {
        panic!("adding a root is adopted");
    };
    assert_eq!(a.added.len(), 1);
    assert!(a.added[0].subject.contains("Trellis root CA"), "{a:?}");
    assert!(a.new_signer.is_none());
    assert_eq!(a.ca.bundle().roots().len(), 2);

    let Verdict::Adopt(a) = judge(&ca, &held, Ok(Some(f.i1.clone())), load) else {
        panic!("a new intermediate under the same root is adopted");
    };
    let signer = a.new_signer.unwrap_or_default();
    assert!(signer.contains("Trellis intermediate CA"), "{signer}");
}

#[test]
fn a_refusal_says_what_to_do_instead() {
    let f = fixture();
    let held = with_roots(&f.r1, &[&f.r1]);
    let ca = load(&held).unwrap();
    let Verdict::Restore(d) = judge(&ca, &held, Ok(Some(with_roots(&f.r2, &[&f.r2]))), load) else {
        panic!("a new CA in one go is refused");
    };
    let text = d.to_string();
    assert!(
        text.contains("add that root to root-cert.pem first") && text.contains("sha256"),
        "{text}"
    );
}
