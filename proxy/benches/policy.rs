//! Cost of one inbound authorization decision (`InboundPolicy::authorize`), the check every
//! tunnelled connection pays: no policy, an exact allow-list, wildcards, several policies, and
//! the worst case where the peer matches nothing in a long list; and a plaintext caller refused.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use trellis_ca::{IdentityPattern, SpiffeId, TrustDomain};
use trellis_proxy::policy::{Caller, InboundPolicy, Rule, RuleMode};

fn rule(name: &str, ports: &[u16], allow: &[String], mode: RuleMode) -> Rule {
    let td = TrustDomain::default();
    Rule {
        name: name.into(),
        ports: ports.to_vec(),
        allow: allow
            .iter()
            .map(|a| IdentityPattern::parse(a, &td).expect("valid pattern"))
            .collect(),
        allow_unauthenticated: false,
        mode,
    }
}

fn bench(c: &mut Criterion) {
    let td = TrustDomain::default();
    let frontend = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").expect("valid id");
    let intruder = SpiffeId::parse("spiffe://cluster.local/ns/evil/sa/intruder").expect("valid id");
    let none = InboundPolicy::default();
    let exact = InboundPolicy {
        rules: vec![rule(
            "shop/fe",
            &[8080],
            &["ns/shop/sa/frontend".into()],
            RuleMode::Enforce,
        )],
    };
    let many: Vec<String> = (0..50).map(|i| format!("ns/team{i}/sa/svc{i}")).collect();
    let long = InboundPolicy {
        rules: vec![
            rule("shop/many", &[8080, 9090], &many, RuleMode::Enforce),
            rule(
                "shop/ns",
                &[8080],
                &["ns/ops/*".into(), "ns/shop/sa/*".into()],
                RuleMode::Enforce,
            ),
            rule(
                "shop/audit",
                &[],
                &["ns/shop/sa/frontend".into()],
                RuleMode::Audit,
            ),
        ],
    };
    let mut g = c.benchmark_group("authorize");
    g.bench_function("no_policy", |b| {
        b.iter(|| none.authorize(Caller::Identity(black_box(&frontend)), 8080, &td))
    });
    g.bench_function("exact_allow", |b| {
        b.iter(|| exact.authorize(Caller::Identity(black_box(&frontend)), 8080, &td))
    });
    g.bench_function("exact_deny", |b| {
        b.iter(|| exact.authorize(Caller::Identity(black_box(&intruder)), 8080, &td))
    });
    g.bench_function("three_policies_wildcard_allow", |b| {
        b.iter(|| long.authorize(Caller::Identity(black_box(&frontend)), 8080, &td))
    });
    g.bench_function("three_policies_52_entries_deny", |b| {
        b.iter(|| long.authorize(Caller::Identity(black_box(&intruder)), 8080, &td))
    });
    g.bench_function("plaintext_deny", |b| {
        b.iter(|| exact.authorize(black_box(Caller::Unauthenticated), 8080, &td))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
