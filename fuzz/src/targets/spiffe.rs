//! `spiffe_id` and `identity_pattern`: the text forms of identities, as they arrive in
//! certificates' URI SANs, CSRs, join-token files and AuthorizationPolicies.

use trellis_ca::{IdentityPattern, SpiffeId, TrustDomain};

use super::text;

/// `SpiffeId::parse` and `TrustDomain::new`: what parses prints back as the same text, and the
/// Kubernetes accessors agree with `for_service_account`.
pub fn spiffe_id(data: &[u8]) {
    let Some(input) = text(data) else { return };
    if let Ok(id) = SpiffeId::parse(input) {
        assert_eq!(id.to_string(), input, "a SPIFFE ID prints as it was given");
        assert!(
            input.len() <= 2048,
            "an ID of {} bytes was accepted",
            input.len()
        );
        assert_eq!(SpiffeId::parse(&id.to_string()).as_ref(), Ok(&id));
        assert_eq!(
            TrustDomain::new(id.trust_domain().as_str()).as_ref(),
            Ok(id.trust_domain())
        );
        if let (Some(ns), Some(sa)) = (id.namespace(), id.service_account()) {
            assert_eq!(
                SpiffeId::for_service_account(id.trust_domain(), ns, sa).as_ref(),
                Ok(&id)
            );
        }
    }
    if let Ok(td) = TrustDomain::new(input) {
        assert_eq!(td.as_str(), input);
        let own = SpiffeId::parse(&td.id_string()).expect("a trust domain's own ID parses");
        assert_eq!(own.trust_domain(), &td);
    }
}

/// `IdentityPattern::parse` in the default trust domain: a pattern prints as text that parses
/// back to the same pattern, an exact pattern matches its own ID, and matching never panics.
pub fn identity_pattern(data: &[u8]) {
    let Some(input) = text(data) else { return };
    let td = TrustDomain::default();
    let Ok(pattern) = IdentityPattern::parse(input, &td) else {
        return;
    };
    let printed = pattern.to_string();
    assert_eq!(
        IdentityPattern::parse(&printed, &td).as_ref(),
        Ok(&pattern),
        "{input:?} printed as {printed:?}"
    );
    if let IdentityPattern::Exact(id) = &pattern {
        assert!(pattern.matches(id));
    }
    for probe in PROBES {
        let id = SpiffeId::parse(probe).expect("probe IDs are valid");
        let matched = pattern.matches(&id);
        if matched {
            assert_eq!(
                id.trust_domain(),
                pattern_trust_domain(&pattern),
                "{pattern} matched {id} of another trust domain"
            );
        }
    }
}

/// IDs every accepted pattern is matched against.
const PROBES: [&str; 6] = [
    "spiffe://cluster.local/ns/shop/sa/frontend",
    "spiffe://cluster.local/ns/shop/sa/backend",
    "spiffe://cluster.local/ns/shop",
    "spiffe://cluster.local/ns/shopping/sa/frontend",
    "spiffe://cluster.local",
    "spiffe://other.td/ns/shop/sa/frontend",
];

fn pattern_trust_domain(pattern: &IdentityPattern) -> &TrustDomain {
    match pattern {
        IdentityPattern::Exact(id) => id.trust_domain(),
        IdentityPattern::AnyServiceAccount { trust_domain, .. }
        | IdentityPattern::AnyInNamespace { trust_domain, .. } => trust_domain,
    }
}
