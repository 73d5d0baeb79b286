//! The admission decision for one CONNECT stream on the tunnel, as a pure function: the method,
//! the authority (`ip:port`), a target inside this pod, not one of the proxy's own ports, and
//! the policy's verdict for the authenticated peer.
//!
//! Owns: [`admit_connect`] and [`ConnectRefusal`]. It leaves the I/O to [`super::server`]:
//! dialling the application, counting, recording and answering.

use std::net::{IpAddr, SocketAddr};

use http::uri::Authority;
use http::{Method, StatusCode};
use trellis_ca::{SpiffeId, TrustDomain};

use super::parse_authority;
use crate::policy::{Decision, InboundPolicy};
use crate::ports::PROXY_PORTS;

/// Why a CONNECT is refused, and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRefusal {
    /// The HTTP status of the answer.
    pub status: StatusCode,
    /// A stable label for metrics (`not_connect`, `bad_authority`, `target_outside_pod`,
    /// `proxy_port`, `policy`).
    pub code: &'static str,
    /// What is wrong, for the record and the `x-trellis-reason` header.
    pub reason: String,
    /// The target, once the authority has parsed.
    pub target: Option<SocketAddr>,
    /// The policy's decision, when the policy refused (it is counted per decision).
    pub decision: Option<Decision>,
}

impl ConnectRefusal {
    fn new(
        status: StatusCode,
        code: &'static str,
        target: Option<SocketAddr>,
        reason: String,
    ) -> Self {
        Self {
            status,
            code,
            reason,
            target,
            decision: None,
        }
    }
}

/// Decides whether `peer` may open a stream to `authority` with `method`: the target and the
/// policy's decision (`allow` or `would-deny`), or the refusal to answer with.
/// `is_local` says whether an address belongs to this pod.
pub fn admit_connect(
    method: &Method,
    authority: Option<&Authority>,
    is_local: impl Fn(IpAddr) -> bool,
    policy: &InboundPolicy,
    peer: &SpiffeId,
    trust_domain: &TrustDomain,
) -> Result<(SocketAddr, Decision), ConnectRefusal> {
    if method != Method::CONNECT {
        return Err(ConnectRefusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not_connect",
            None,
            "only CONNECT is served on the tunnel".into(),
        ));
    }
    let target = parse_authority(authority).map_err(|reason| {
        ConnectRefusal::new(StatusCode::BAD_REQUEST, "bad_authority", None, reason)
    })?;
    if !is_local(target.ip()) {
        return Err(ConnectRefusal::new(
            StatusCode::FORBIDDEN,
            "target_outside_pod",
            Some(target),
            format!("target {target} is outside this pod"),
        ));
    }
    if PROXY_PORTS.contains(&target.port()) {
        return Err(ConnectRefusal::new(
            StatusCode::FORBIDDEN,
            "proxy_port",
            Some(target),
            format!("port {} belongs to the proxy", target.port()),
        ));
    }
    let decision = policy.authorize(peer, target.port(), trust_domain);
    if !decision.admits() {
        return Err(ConnectRefusal {
            status: StatusCode::FORBIDDEN,
            code: "policy",
            reason: decision.reason().to_owned(),
            target: Some(target),
            decision: Some(decision),
        });
    }
    Ok((target, decision))
}

#[cfg(test)]
mod tests {
    use trellis_ca::IdentityPattern;

    use super::*;
    use crate::policy::{Rule, RuleMode};

    const POD: &str = "198.18.0.3";

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn only_frontend_on_8080() -> InboundPolicy {
        let td = TrustDomain::default();
        InboundPolicy {
            rules: vec![Rule {
                name: "shop/allow-frontend".into(),
                ports: vec![8080],
                allow: vec![IdentityPattern::parse("ns/shop/sa/frontend", &td).unwrap()],
                mode: RuleMode::Enforce,
            }],
        }
    }

    #[test]
    fn each_check_refuses_with_its_own_status_and_label() {
        let frontend = id("spiffe://cluster.local/ns/shop/sa/frontend");
        let intruder = id("spiffe://cluster.local/ns/lab/sa/intruder");
        let policy = only_frontend_on_8080();
        let td = TrustDomain::default();
        let is_local = |ip: IpAddr| ip == POD.parse::<IpAddr>().unwrap();
        // (method, authority, peer, expected Ok target or Err (status, code))
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            &'a SpiffeId,
            Result<&'a str, (u16, &'a str)>,
        );
        let cases: [Case<'_>; 8] = [
            (
                "CONNECT",
                Some("198.18.0.3:8080"),
                &frontend,
                Ok("198.18.0.3:8080"),
            ),
            (
                "GET",
                Some("198.18.0.3:8080"),
                &frontend,
                Err((405, "not_connect")),
            ),
            ("CONNECT", None, &frontend, Err((400, "bad_authority"))),
            (
                "CONNECT",
                Some("backend:8080"),
                &frontend,
                Err((400, "bad_authority")),
            ),
            (
                "CONNECT",
                Some("198.18.0.3:0"),
                &frontend,
                Err((400, "bad_authority")),
            ),
            (
                "CONNECT",
                Some("198.18.0.4:8080"),
                &frontend,
                Err((403, "target_outside_pod")),
            ),
            (
                "CONNECT",
                Some("198.18.0.3:15000"),
                &frontend,
                Err((403, "proxy_port")),
            ),
            (
                "CONNECT",
                Some("198.18.0.3:8080"),
                &intruder,
                Err((403, "policy")),
            ),
        ];
        for (method, authority, peer, want) in cases {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let authority = authority.map(|a| a.parse::<Authority>().unwrap());
            let got = admit_connect(&method, authority.as_ref(), is_local, &policy, peer, &td);
            match (got, want) {
                (Ok((target, decision)), Ok(want)) => {
                    assert_eq!(target, want.parse().unwrap());
                    assert_eq!(decision, Decision::Allow);
                }
                (Err(refusal), Err((status, code))) => {
                    assert_eq!(
                        (refusal.status.as_u16(), refusal.code),
                        (status, code),
                        "{method} {authority:?} by {peer}: {}",
                        refusal.reason
                    );
                    assert_eq!(refusal.decision.is_some(), code == "policy");
                }
                (got, want) => {
                    panic!("{method} {authority:?} by {peer}: got {got:?}, want {want:?}")
                }
            }
        }
    }

    #[test]
    fn an_audit_policy_admits_and_says_it_would_deny() {
        let mut policy = only_frontend_on_8080();
        policy.rules[0].mode = RuleMode::Audit;
        let authority: Authority = "198.18.0.3:8080".parse().unwrap();
        let (_, decision) = admit_connect(
            &Method::CONNECT,
            Some(&authority),
            |_| true,
            &policy,
            &id("spiffe://cluster.local/ns/lab/sa/intruder"),
            &TrustDomain::default(),
        )
        .unwrap();
        assert_eq!(decision.label(), "would-deny");
    }
}
