//! `GET /policy[?from=CALLER&port=P]` on the admin endpoint: the inbound policy in force (each
//! rule's ports, allowed identities, unauthenticated, mode), the mTLS mode, and — with `from`
//! (a SPIFFE ID, or `unauthenticated` for plaintext) and `port` — the verdict the proxy would
//! reach for such a connection, by the same decisions it enforces ([`InboundPolicy::authorize`]
//! for mTLS callers, [`admit_plaintext`] for plaintext). `trellis describe pod` reads it.
//!
//! Owns: that document, built by a pure function ([`document`]).

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::{Value, json};
use trellis_ca::{SpiffeId, TrustDomain};

use crate::config::MtlsMode;
use crate::inbound::admit_plaintext;
use crate::policy::{Caller, InboundPolicy, RuleMode};

/// The `from` value that names a plaintext caller.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// The document for `policy` in `mode`, with the verdict for `from` on `port` when both are
/// given. `Err` says which parameter is wrong.
pub fn document(
    policy: &InboundPolicy,
    mode: MtlsMode,
    trust_domain: &TrustDomain,
    from: Option<&str>,
    port: Option<&str>,
) -> Result<Value, String> {
    let rules: Vec<Value> = policy
        .rules
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "ports": r.ports,
                "allow": r.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "allow_unauthenticated": r.allow_unauthenticated,
                "mode": match r.mode { RuleMode::Enforce => "enforce", RuleMode::Audit => "audit" },
            })
        })
        .collect();
    let mut doc = json!({
        "mtls_mode": match mode { MtlsMode::Strict => "STRICT", MtlsMode::Permissive => "PERMISSIVE" },
        "rules": rules,
    });
    let (Some(from), Some(port)) = (from, port) else {
        if from.is_some() || port.is_some() {
            return Err(
                "from and port go together: ?from=spiffe://...|unauthenticated&port=P".into(),
            );
        }
        return Ok(doc);
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {port:?}: expected a port number 1-65535"))?;
    let (decision, reason) = if from == UNAUTHENTICATED {
        // The destination as iptables would hand it over; proxy ports are refused anyway.
        let dst = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        match admit_plaintext(mode, dst, true, policy, trust_domain) {
            Ok(d) => (d.label(), d.reason().to_owned()),
            Err(refusal) => ("deny", refusal.reason),
        }
    } else {
        let id = SpiffeId::parse(from).map_err(|e| {
            format!("from {from:?}: expected a SPIFFE ID or {UNAUTHENTICATED}: {e}")
        })?;
        let d = policy.authorize(Caller::Identity(&id), port, trust_domain);
        (d.label(), d.reason().to_owned())
    };
    doc["verdict"] = json!({"from": from, "port": port, "decision": decision, "reason": reason});
    Ok(doc)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::policy::Rule;

    fn policy() -> InboundPolicy {
        InboundPolicy {
            rules: vec![Rule {
                name: "shop/backend-allow".into(),
                ports: vec![8080],
                allow: vec![
                    trellis_ca::IdentityPattern::parse(
                        "ns/shop/sa/frontend",
                        &TrustDomain::default(),
                    )
                    .unwrap(),
                ],
                allow_unauthenticated: false,
                mode: RuleMode::Enforce,
            }],
        }
    }

    #[test]
    fn the_verdict_is_the_one_the_proxy_enforces() {
        let td = TrustDomain::default();
        let front = "spiffe://cluster.local/ns/shop/sa/frontend";
        let intruder = "spiffe://cluster.local/ns/shop/sa/intruder";
        for (mode, from, port, want) in [
            (MtlsMode::Strict, front, "8080", "allow"),
            (MtlsMode::Strict, intruder, "8080", "deny"),
            (MtlsMode::Strict, front, "9090", "deny"),
            (MtlsMode::Strict, UNAUTHENTICATED, "8080", "deny"),
            (MtlsMode::Permissive, UNAUTHENTICATED, "8080", "deny"),
        ] {
            let doc = document(&policy(), mode, &td, Some(from), Some(port)).unwrap();
            assert_eq!(
                doc["verdict"]["decision"], want,
                "{mode:?} {from} {port}: {doc}"
            );
        }
        let doc = document(
            &policy(),
            MtlsMode::Strict,
            &td,
            Some(intruder),
            Some("8080"),
        )
        .unwrap();
        assert!(
            doc["verdict"]["reason"]
                .as_str()
                .unwrap()
                .contains("shop/backend-allow"),
            "{doc}"
        );
        let doc = document(
            &InboundPolicy::default(),
            MtlsMode::Permissive,
            &td,
            Some(UNAUTHENTICATED),
            Some("8080"),
        )
        .unwrap();
        assert_eq!(doc["verdict"]["decision"], "allow");
        assert_eq!(doc["mtls_mode"], "PERMISSIVE");
    }

    #[test]
    fn the_rules_are_listed_and_bad_parameters_named() {
        let td = TrustDomain::default();
        let doc = document(&policy(), MtlsMode::Strict, &td, None, None).unwrap();
        assert_eq!(doc["rules"][0]["ports"][0], 8080);
        assert_eq!(doc["rules"][0]["mode"], "enforce");
        assert!(doc.get("verdict").is_none());
        for (from, port, says) in [
            (Some("x"), None, "go together"),
            (Some("not an id"), Some("80"), "expected a SPIFFE ID"),
            (Some(UNAUTHENTICATED), Some("0"), "expected a port number"),
            (
                Some(UNAUTHENTICATED),
                Some("http"),
                "expected a port number",
            ),
        ] {
            let err = document(&policy(), MtlsMode::Strict, &td, from, port).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }
}
