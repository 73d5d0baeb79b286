//! Inbound authorization, as a pure function: may this caller reach this port of this
//! workload? It runs *after* the peer's certificate has been verified (an identity) or after the
//! inbound listener accepted plaintext in PERMISSIVE mode (no identity: an unauthenticated caller).
//!
//! Owns: [`Caller`], [`InboundPolicy`], [`Decision`] and [`InboundPolicy::authorize`]. The rules,
//! the same for callers with and without an identity:
//! - no policy selects the workload: any identity of our trust domain is admitted, and so is an
//!   unauthenticated caller (PERMISSIVE is the operator's choice to accept plaintext);
//! - otherwise (as Istio's ALLOW policies): a connection is admitted only if an `enforce` rule
//!   covering the port allows the caller — it lists the peer's identity, or, for a caller without
//!   one, it allows `unauthenticated`; ports no rule covers are refused;
//! - `audit` rules never refuse: when they would, the decision is `would-deny` and the
//!   connection proceeds.

use std::fmt;

use trellis_ca::{IdentityPattern, SpiffeId, TrustDomain};

/// Who is calling: a verified identity, or nobody we know (plaintext in PERMISSIVE mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// The SPIFFE ID the peer's certificate proved.
    Identity(&'a SpiffeId),
    /// A plaintext connection: no identity at all.
    Unauthenticated,
}

impl fmt::Display for Caller<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Identity(id) => id.fmt(f),
            Caller::Unauthenticated => f.write_str(UNAUTHENTICATED_CALLER),
        }
    }
}

/// How an unauthenticated caller is named in records, refusal lines and metrics.
pub const UNAUTHENTICATED_CALLER: &str = "unauthenticated (plaintext)";

/// Whether a rule refuses or only records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleMode {
    /// Refuse what the rule does not allow.
    Enforce,
    /// Record what the rule would refuse, but let it pass.
    Audit,
}

/// One policy's rule as the proxy holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `namespace/name` of the policy, for the record.
    pub name: String,
    /// Ports covered; empty means every port.
    pub ports: Vec<u16>,
    /// Who is allowed.
    pub allow: Vec<IdentityPattern>,
    /// Whether callers without an identity are allowed too (the `unauthenticated` entry).
    pub allow_unauthenticated: bool,
    /// Enforce or audit.
    pub mode: RuleMode,
}

impl Rule {
    fn covers(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    fn admits(&self, caller: Caller<'_>) -> bool {
        match caller {
            Caller::Identity(peer) => self.allow.iter().any(|p| p.matches(peer)),
            Caller::Unauthenticated => self.allow_unauthenticated,
        }
    }
}

/// Every rule selecting this workload (empty: no policy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundPolicy {
    /// The rules.
    pub rules: Vec<Rule>,
}

impl InboundPolicy {
    /// The rules as `/config_dump` shows them: policy name, ports (empty: all), who is allowed,
    /// and whether the rule enforces or only audits.
    pub fn dump(&self) -> serde_json::Value {
        let rules: Vec<serde_json::Value> = self
            .rules
            .iter()
            .map(|r| {
                let allow: Vec<String> = r.allow.iter().map(ToString::to_string).collect();
                serde_json::json!({
                    "policy": r.name,
                    "ports": r.ports,
                    "allow": allow,
                    "allow_unauthenticated": r.allow_unauthenticated,
                    "mode": match r.mode {
                        RuleMode::Enforce => "enforce",
                        RuleMode::Audit => "audit",
                    },
                })
            })
            .collect();
        serde_json::Value::Array(rules)
    }
}

/// The outcome of an authorization check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Allow,
    /// Refuse, with the reason recorded.
    Deny(String),
    /// An audit-mode policy would refuse: let it through, record the reason.
    WouldDeny(String),
}

impl Decision {
    /// The label used in records and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny(_) => "deny",
            Decision::WouldDeny(_) => "would-deny",
        }
    }

    /// Whether the connection proceeds.
    pub fn admits(&self) -> bool {
        !matches!(self, Decision::Deny(_))
    }

    /// The reason, if any.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Allow => "",
            Decision::Deny(r) | Decision::WouldDeny(r) => r,
        }
    }
}

impl InboundPolicy {
    /// Decides whether `caller` may reach `port`.
    pub fn authorize(&self, caller: Caller<'_>, port: u16, trust_domain: &TrustDomain) -> Decision {
        if let Caller::Identity(peer) = caller
            && peer.trust_domain() != trust_domain
        {
            return Decision::Deny(format!("{peer} is not in trust domain {trust_domain}"));
        }
        if self.rules.is_empty() {
            return Decision::Allow;
        }
        let (mut enforce, mut audit) = (Vec::new(), Vec::new());
        for rule in self.rules.iter().filter(|r| r.covers(port)) {
            match rule.mode {
                RuleMode::Enforce => enforce.push(rule),
                RuleMode::Audit => audit.push(rule),
            }
        }
        let has_enforce = self.rules.iter().any(|r| r.mode == RuleMode::Enforce);
        if has_enforce && !enforce.iter().any(|r| r.admits(caller)) {
            return Decision::Deny(refusal(caller, port, &enforce));
        }
        let has_audit = self.rules.iter().any(|r| r.mode == RuleMode::Audit);
        if has_audit && !audit.iter().any(|r| r.admits(caller)) {
            return Decision::WouldDeny(refusal(caller, port, &audit));
        }
        Decision::Allow
    }
}

fn refusal(caller: Caller<'_>, port: u16, covering: &[&Rule]) -> String {
    if covering.is_empty() {
        format!("{caller}: no policy allows port {port}")
    } else {
        let names: Vec<&str> = covering.iter().map(|r| r.name.as_str()).collect();
        format!(
            "{caller} is not allowed on port {port} by {}",
            names.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::default()
    }

    /// A rule; the entry `unauthenticated` allows callers without an identity, as in a policy.
    fn rule(name: &str, ports: &[u16], allow: &[&str], mode: RuleMode) -> Rule {
        Rule {
            name: name.into(),
            ports: ports.to_vec(),
            allow: allow
                .iter()
                .filter(|a| **a != "unauthenticated")
                .map(|a| IdentityPattern::parse(a, &td()).unwrap())
                .collect(),
            allow_unauthenticated: allow.contains(&"unauthenticated"),
            mode,
        }
    }

    /// The decision for `peer` (`ns/...`, a full SPIFFE ID, or `plaintext` for no identity).
    fn decide(policy: &InboundPolicy, peer: &str, port: u16) -> &'static str {
        if peer == "plaintext" {
            return policy
                .authorize(Caller::Unauthenticated, port, &td())
                .label();
        }
        let peer = SpiffeId::parse(&format!("spiffe://cluster.local/{peer}"))
            .or_else(|_| SpiffeId::parse(peer))
            .unwrap();
        policy
            .authorize(Caller::Identity(&peer), port, &td())
            .label()
    }

    #[test]
    fn no_policy_admits_any_identity_of_the_trust_domain_only() {
        let none = InboundPolicy::default();
        assert_eq!(decide(&none, "ns/a/sa/b", 80), "allow");
        assert_eq!(decide(&none, "spiffe://evil.example/ns/a/sa/b", 80), "deny");
    }

    #[test]
    fn plaintext_is_checked_as_a_caller_without_identity() {
        use RuleMode::*;
        let none = InboundPolicy::default();
        let identities = InboundPolicy {
            rules: vec![rule("shop/fe", &[8080], &["ns/shop/sa/frontend"], Enforce)],
        };
        let open_8080 = InboundPolicy {
            rules: vec![rule(
                "shop/open",
                &[8080],
                &["ns/shop/sa/frontend", "unauthenticated"],
                Enforce,
            )],
        };
        let only_plaintext = InboundPolicy {
            rules: vec![rule("shop/legacy", &[], &["unauthenticated"], Enforce)],
        };
        let audit = InboundPolicy {
            rules: vec![rule("shop/audit", &[8080], &["ns/shop/sa/frontend"], Audit)],
        };
        let audit_open = InboundPolicy {
            rules: vec![rule("shop/audit", &[8080], &["unauthenticated"], Audit)],
        };
        let cases: &[(&InboundPolicy, &str, u16, &str)] = &[
            // No policy selects the workload: PERMISSIVE passes plaintext, as mTLS is.
            (&none, "plaintext", 8080, "allow"),
            // A policy naming identities refuses plaintext, on its port and on others.
            (&identities, "plaintext", 8080, "deny"),
            (&identities, "plaintext", 9090, "deny"),
            (&identities, "ns/shop/sa/frontend", 8080, "allow"),
            // `unauthenticated` opens the rule's port to plaintext, not other ports.
            (&open_8080, "plaintext", 8080, "allow"),
            (&open_8080, "plaintext", 9090, "deny"),
            (&open_8080, "ns/shop/sa/frontend", 8080, "allow"),
            // It admits callers without identity only: an unlisted identity stays out.
            (&open_8080, "ns/shop/sa/intruder", 8080, "deny"),
            (&only_plaintext, "plaintext", 1234, "allow"),
            (&only_plaintext, "ns/shop/sa/frontend", 1234, "deny"),
            // Audit: what would be refused passes and says so.
            (&audit, "plaintext", 8080, "would-deny"),
            (&audit, "plaintext", 9090, "would-deny"),
            (&audit_open, "plaintext", 8080, "allow"),
        ];
        for (policy, peer, port, want) in cases {
            assert_eq!(
                decide(policy, peer, *port),
                *want,
                "{peer} -> {port} under {policy:?}"
            );
        }
    }

    #[test]
    fn a_plaintext_refusal_names_the_caller_unauthenticated() {
        let p = InboundPolicy {
            rules: vec![rule(
                "shop/allow-fe",
                &[8080],
                &["ns/shop/sa/frontend"],
                RuleMode::Enforce,
            )],
        };
        let on = |port| p.authorize(Caller::Unauthenticated, port, &td());
        assert_eq!(
            on(8080).reason(),
            "unauthenticated (plaintext) is not allowed on port 8080 by shop/allow-fe"
        );
        assert_eq!(
            on(9090).reason(),
            "unauthenticated (plaintext): no policy allows port 9090"
        );
    }

    #[test]
    fn policy_table() {
        use RuleMode::*;
        let exact = InboundPolicy {
            rules: vec![rule(
                "shop/allow-fe",
                &[8080],
                &["ns/shop/sa/frontend"],
                Enforce,
            )],
        };
        let wildcard = InboundPolicy {
            rules: vec![rule("shop/ns", &[], &["ns/shop/sa/*"], Enforce)],
        };
        let audit = InboundPolicy {
            rules: vec![rule("shop/audit", &[8080], &["ns/shop/sa/frontend"], Audit)],
        };
        let two = InboundPolicy {
            rules: vec![
                rule("shop/fe", &[8080], &["ns/shop/sa/frontend"], Enforce),
                rule("shop/ops", &[8080, 9090], &["ns/ops/*"], Enforce),
            ],
        };
        let mixed = InboundPolicy {
            rules: vec![
                rule(
                    "shop/fe",
                    &[8080],
                    &["ns/shop/sa/frontend", "ns/shop/sa/canary"],
                    Enforce,
                ),
                rule("shop/tighten", &[8080], &["ns/shop/sa/frontend"], Audit),
            ],
        };
        let cases: &[(&InboundPolicy, &str, u16, &str)] = &[
            (&exact, "ns/shop/sa/frontend", 8080, "allow"),
            (&exact, "ns/shop/sa/intruder", 8080, "deny"),
            (&exact, "ns/shop/sa/frontend", 9090, "deny"), // port no rule covers
            (
                &exact,
                "spiffe://evil.example/ns/shop/sa/frontend",
                8080,
                "deny",
            ),
            (&wildcard, "ns/shop/sa/anyone", 1234, "allow"),
            (&wildcard, "ns/shopping/sa/anyone", 1234, "deny"),
            (&audit, "ns/shop/sa/frontend", 8080, "allow"),
            (&audit, "ns/shop/sa/intruder", 8080, "would-deny"),
            (&audit, "ns/shop/sa/intruder", 9090, "would-deny"),
            (&two, "ns/shop/sa/frontend", 8080, "allow"),
            (&two, "ns/ops/sa/debug", 8080, "allow"),
            (&two, "ns/ops/sa/debug", 9090, "allow"),
            (&two, "ns/shop/sa/frontend", 9090, "deny"),
            (&mixed, "ns/shop/sa/frontend", 8080, "allow"),
            (&mixed, "ns/shop/sa/canary", 8080, "would-deny"),
            (&mixed, "ns/shop/sa/intruder", 8080, "deny"),
        ];
        for (policy, peer, port, want) in cases {
            assert_eq!(
                decide(policy, peer, *port),
                *want,
                "{peer} -> {port} under {policy:?}"
            );
        }
    }

    #[test]
    fn a_refusal_names_the_peer_port_and_policy() {
        let p = InboundPolicy {
            rules: vec![rule(
                "shop/allow-fe",
                &[8080],
                &["ns/shop/sa/frontend"],
                RuleMode::Enforce,
            )],
        };
        let peer = SpiffeId::parse("spiffe://cluster.local/ns/evil/sa/intruder").unwrap();
        let d = p.authorize(Caller::Identity(&peer), 8080, &td());
        assert_eq!(
            d.reason(),
            "spiffe://cluster.local/ns/evil/sa/intruder is not allowed on port 8080 by shop/allow-fe"
        );
    }
}
