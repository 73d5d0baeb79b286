use super::*;
use proptest::prelude::*;

#[test]
fn parses_a_kubernetes_workload_id_and_exposes_namespace_and_service_account() {
    let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").unwrap();
    assert_eq!(id.trust_domain().as_str(), "cluster.local");
    assert_eq!(id.path(), "/ns/shop/sa/frontend");
    assert_eq!(id.namespace(), Some("shop"));
    assert_eq!(id.service_account(), Some("frontend"));
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/frontend");
}

#[test]
fn non_kubernetes_paths_have_no_namespace() {
    for s in [
        "spiffe://td",
        "spiffe://td/ns/a",
        "spiffe://td/ns/a/sa/b/extra",
        "spiffe://td/x/a/sa/b",
        "spiffe://td/ns/a/x/b",
    ] {
        let id = SpiffeId::parse(s).unwrap();
        assert_eq!(id.namespace(), None, "{s}");
        assert_eq!(id.service_account(), None, "{s}");
    }
}

#[test]
fn builds_from_namespace_and_service_account() {
    let td = TrustDomain::new("example.org").unwrap();
    let id = SpiffeId::for_service_account(&td, "default", "web").unwrap();
    assert_eq!(id.to_string(), "spiffe://example.org/ns/default/sa/web");
    assert_eq!(
        SpiffeId::for_service_account(&td, "a/b", "web"),
        Err(SpiffeIdError::PathChar('/'))
    );
    assert_eq!(
        SpiffeId::for_service_account(&td, "", "web"),
        Err(SpiffeIdError::EmptySegment)
    );
    assert_eq!(
        SpiffeId::for_service_account(&td, "..", "web"),
        Err(SpiffeIdError::DotSegment("..".into()))
    );
}

#[test]
fn every_rule_of_the_spec_has_its_own_rejection() {
    use SpiffeIdError::*;
    let cases: &[(&str, SpiffeIdError)] = &[
        ("", Empty),
        ("http://td/ns/a", WrongScheme("http://td/ns/a".into())),
        ("SPIFFE://td/a", WrongScheme("SPIFFE://td/a".into())),
        ("spiffe:/td/a", WrongScheme("spiffe:/td/a".into())),
        ("spiffe://", MissingTrustDomain),
        ("spiffe:///path", MissingTrustDomain),
        ("spiffe://Cluster.local/a", TrustDomainChar('C')),
        ("spiffe://td!/a", TrustDomainChar('!')),
        ("spiffe://td:8443/a", Port),
        ("spiffe://user@td/a", UserInfo),
        ("spiffe://td/a?x=1", Query),
        ("spiffe://td/a#frag", Fragment),
        ("spiffe://td/a//b", EmptySegment),
        ("spiffe://td/a/", EmptySegment),
        ("spiffe://td/", EmptySegment),
        ("spiffe://td/a/./b", DotSegment(".".into())),
        ("spiffe://td/a/../b", DotSegment("..".into())),
        ("spiffe://td/a%20b", PathChar('%')),
        ("spiffe://td/a b", PathChar(' ')),
        ("spiffe://td/é", PathChar('é')),
    ];
    for (input, want) in cases {
        assert_eq!(
            SpiffeId::parse(input).as_ref(),
            Err(want),
            "input {input:?}"
        );
    }
}

#[test]
fn length_limits_are_enforced() {
    let td = "a".repeat(256);
    assert_eq!(
        SpiffeId::parse(&format!("spiffe://{td}/x")),
        Err(SpiffeIdError::TrustDomainTooLong(256))
    );
    let ok_td = "a".repeat(255);
    assert!(SpiffeId::parse(&format!("spiffe://{ok_td}/x")).is_ok());
    let long = format!("spiffe://td/{}", "p".repeat(2100));
    assert_eq!(
        SpiffeId::parse(&long),
        Err(SpiffeIdError::TooLong(long.len()))
    );
}

#[test]
fn errors_say_what_is_wrong() {
    let err = SpiffeId::parse("spiffe://td:1/a").unwrap_err();
    assert_eq!(err.to_string(), "trust domain must not carry a port");
    let err = SpiffeId::parse("spiffe://td/a b").unwrap_err();
    assert!(err.to_string().contains("' '"), "{err}");
}

fn td_strategy() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,40}"
}

fn segment_strategy() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,20}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
}

proptest! {
    #[test]
    fn valid_ids_round_trip_through_display(
        td in td_strategy(),
        segments in proptest::collection::vec(segment_strategy(), 0..6),
    ) {
        let mut s = format!("spiffe://{td}");
        for seg in &segments {
            s.push('/');
            s.push_str(seg);
        }
        let id = SpiffeId::parse(&s).unwrap();
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn parsing_never_panics_and_accepts_only_the_spec_alphabet(input in "\\PC{0,80}") {
        if let Ok(id) = SpiffeId::parse(&input) {
            let s = id.to_string();
            prop_assert!(s.starts_with("spiffe://"));
            prop_assert!(s["spiffe://".len()..].chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)));
        }
    }

    #[test]
    fn inserting_a_forbidden_character_is_always_rejected(
        td in td_strategy(),
        seg in segment_strategy(),
        bad in prop::sample::select(vec!['?', '#', '%', ' ', '\\', '*', '\u{e9}']),
        at in 0usize..20,
    ) {
        let at = at.min(seg.len());
        let mut broken = seg.clone();
        broken.insert(at, bad);
        let input = format!("spiffe://{td}/{broken}");
        prop_assert!(SpiffeId::parse(&input).is_err());
    }

    #[test]
    fn namespace_accessors_agree_with_construction(
        ns in "[a-z0-9-]{1,30}", sa in "[a-z0-9-]{1,30}",
    ) {
        let td = TrustDomain::default();
        let id = SpiffeId::for_service_account(&td, &ns, &sa).unwrap();
        prop_assert_eq!(id.namespace(), Some(ns.as_str()));
        prop_assert_eq!(id.service_account(), Some(sa.as_str()));
        prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
    }
}
