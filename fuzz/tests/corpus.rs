//! Every committed corpus input (seeds, and inputs that once crashed a target) runs through its
//! target without a panic: the fuzzers' findings stay fixed even where no fuzzer runs.

use trellis_fuzz::{Target, corpus_dir};

#[test]
fn every_committed_input_runs_through_its_target_without_a_panic() {
    for target in Target::ALL {
        let dir = corpus_dir(target);
        let harness = target.harness().expect("the target sets up");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(
                outcome.is_ok(),
                "{} panics on {}",
                target.name(),
                path.display()
            );
            count += 1;
        }
        assert!(
            count > 0,
            "{} has no corpus in {}",
            target.name(),
            dir.display()
        );
    }
}

#[test]
fn every_target_has_a_name_that_finds_it() {
    for target in Target::ALL {
        assert_eq!(Target::from_name(target.name()), Some(target));
    }
    assert_eq!(Target::from_name("nope"), None);
}

#[test]
fn the_chain_seeds_reach_both_a_verified_svid_and_a_refusal() {
    use std::time::Duration;

    use rustls_pki_types::{CertificateDer, UnixTime};
    use trellis_ca::{PeerRole, TrustBundle, TrustDomain, verify_svid};
    use trellis_fuzz::targets::svid_chain::split_chain;

    let fixtures = trellis_fuzz::fixtures_dir();
    let bundle = TrustBundle::from_pem(
        TrustDomain::default(),
        &std::fs::read(fixtures.join("svid-root.pem")).unwrap(),
    )
    .unwrap();
    let secs: u64 = std::fs::read_to_string(fixtures.join("svid-now"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let now = UnixTime::since_unix_epoch(Duration::from_secs(secs));
    let verify = |name: &str| {
        let data = std::fs::read(corpus_dir(Target::SvidChain).join(name)).unwrap();
        let certs: Vec<CertificateDer<'_>> = split_chain(&data)
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        verify_svid(&bundle, &certs[0], &certs[1..], now, PeerRole::Client)
    };
    for good in [
        "leaf-of-root.bin",
        "leaf-of-intermediate.bin",
        "leaf-intermediate-root.bin",
    ] {
        let id = verify(good).unwrap_or_else(|e| panic!("{good}: {e}")).id;
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/frontend");
    }
    for bad in [
        "leaf-without-its-intermediate.bin",
        "leaf-of-another-root.bin",
        "root-as-leaf.bin",
    ] {
        assert!(verify(bad).is_err(), "{bad} verified");
    }
}
