//! The admission decision for one CONNECT stream on the tunnel, as a pure function: the method,
//! the authority (`ip:port`), a target inside this pod, not on loopback, not one of the proxy's
//! own ports, and the policy's verdict for the authenticated peer.
//!
//! Owns: [`admit_connect`], [`PodAddrs`] (which addresses are "this pod") and
//! [`ConnectRefusal`]. It leaves the I/O to [`super::server`]: dialling the application,
//! counting, recording and answering.

use std::net::{IpAddr, SocketAddr};

use http::uri::Authority;
use http::{Method, StatusCode};
use trellis_ca::{SpiffeId, TrustDomain};

use super::parse_authority;
use crate::policy::{Caller, Decision, InboundPolicy};
use crate::ports::PROXY_PORTS;

/// The addresses a CONNECT may target: the pod's own IP, and the address the application is
/// dialled on. Loopback is private to the pod (as in Istio since 1.10: a listener bound to
/// 127.0.0.1 is not reachable from the mesh), unless the application host itself was configured
/// as a loopback address — explicit mode on one machine, where every workload lives on
/// 127.0.0.x and that address *is* the workload's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddrs {
    /// The pod's IP (`--pod-ip`), when known.
    pub pod_ip: Option<IpAddr>,
    /// Where the application is dialled (`--app-host`, by default the pod's IP).
    pub app_host: IpAddr,
}

/// Where a CONNECT target points, as [`PodAddrs::place`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// This pod's IP or its application host.
    Pod,
    /// A loopback (or unspecified) address that is not the application host: private to the pod.
    Loopback,
    /// Anywhere else.
    Outside,
}

impl PodAddrs {
    /// Where `ip` points.
    pub fn place(&self, ip: IpAddr) -> Place {
        if Some(ip) == self.pod_ip || ip == self.app_host {
            Place::Pod
        } else if ip.is_loopback() || ip.is_unspecified() || is_mapped_loopback(ip) {
            Place::Loopback
        } else {
            Place::Outside
        }
    }

    /// Whether `ip` is this pod: a CONNECT target must be.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        self.place(ip) == Place::Pod
    }
}

/// `::ffff:127.x.x.x` and `::ffff:0.0.0.0`: IPv4 loopback written as IPv6.
fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified()),
        IpAddr::V4(_) => false,
    }
}

/// Why a CONNECT is refused, and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRefusal {
    /// The HTTP status of the answer.
    pub status: StatusCode,
    /// A stable label for metrics (`not_connect`, `bad_authority`, `loopback_target`,
    /// `target_outside_pod`, `proxy_port`, `policy`).
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
/// `pod` says which addresses belong to this pod.
pub fn admit_connect(
    method: &Method,
    authority: Option<&Authority>,
    pod: &PodAddrs,
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
    match pod.place(target.ip()) {
        Place::Pod => {}
        Place::Loopback => {
            return Err(ConnectRefusal::new(
                StatusCode::FORBIDDEN,
                "loopback_target",
                Some(target),
                format!(
                    "target {target} is a loopback address: listeners bound to loopback are \
                     private to the pod; the application is reached on {}",
                    pod.app_host
                ),
            ));
        }
        Place::Outside => {
            return Err(ConnectRefusal::new(
                StatusCode::FORBIDDEN,
                "target_outside_pod",
                Some(target),
                format!("target {target} is outside this pod"),
            ));
        }
    }
    if PROXY_PORTS.contains(&target.port()) {
        return Err(ConnectRefusal::new(
            StatusCode::FORBIDDEN,
            "proxy_port",
            Some(target),
            format!("port {} belongs to the proxy", target.port()),
        ));
    }
    let decision = policy.authorize(Caller::Identity(peer), target.port(), trust_domain);
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
                allow_unauthenticated: false,
                mode: RuleMode::Enforce,
            }],
        }
    }

    /// A pod: the app is dialled on the pod's IP (the default).
    fn in_a_pod() -> PodAddrs {
        PodAddrs {
            pod_ip: Some(POD.parse().unwrap()),
            app_host: POD.parse().unwrap(),
        }
    }

    #[test]
    fn each_check_refuses_with_its_own_status_and_label() {
        let frontend = id("spiffe://cluster.local/ns/shop/sa/frontend");
        let intruder = id("spiffe://cluster.local/ns/lab/sa/intruder");
        let policy = only_frontend_on_8080();
        let td = TrustDomain::default();
        let pod = in_a_pod();
        // (method, authority, peer, expected Ok target or Err (status, code))
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            &'a SpiffeId,
            Result<&'a str, (u16, &'a str)>,
        );
        let cases: [Case<'_>; 12] = [
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
                Some("127.0.0.1:7777"),
                &frontend,
                Err((403, "loopback_target")),
            ),
            (
                "CONNECT",
                Some("0.0.0.0:7777"),
                &frontend,
                Err((403, "loopback_target")),
            ),
            (
                "CONNECT",
                Some("[::1]:7777"),
                &frontend,
                Err((403, "loopback_target")),
            ),
            (
                "CONNECT",
                Some("[::ffff:127.0.0.1]:7777"),
                &frontend,
                Err((403, "loopback_target")),
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
            let got = admit_connect(&method, authority.as_ref(), &pod, &policy, peer, &td);
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
            &in_a_pod(),
            &policy,
            &id("spiffe://cluster.local/ns/lab/sa/intruder"),
            &TrustDomain::default(),
        )
        .unwrap();
        assert_eq!(decision.label(), "would-deny");
    }

    #[test]
    fn loopback_is_the_pod_only_where_the_app_host_is_configured_on_loopback() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let loopback_mode = PodAddrs {
            pod_ip: None,
            app_host: ip("127.0.0.1"),
        };
        let lifecycle = PodAddrs {
            pod_ip: Some(ip("127.0.0.1")),
            app_host: ip("127.0.0.1"),
        };
        let app_on_loopback_in_a_pod = PodAddrs {
            pod_ip: Some(ip(POD)),
            app_host: ip("127.0.0.1"),
        };
        let cases = [
            (in_a_pod(), POD, Place::Pod),
            (in_a_pod(), "127.0.0.1", Place::Loopback),
            (in_a_pod(), "127.0.0.2", Place::Loopback),
            (in_a_pod(), "198.18.0.4", Place::Outside),
            (loopback_mode, "127.0.0.1", Place::Pod),
            (loopback_mode, "127.0.0.2", Place::Loopback),
            (loopback_mode, "::1", Place::Loopback),
            (loopback_mode, POD, Place::Outside),
            (lifecycle, "127.0.0.1", Place::Pod),
            (app_on_loopback_in_a_pod, POD, Place::Pod),
            (app_on_loopback_in_a_pod, "127.0.0.1", Place::Pod),
            (app_on_loopback_in_a_pod, "127.0.0.53", Place::Loopback),
        ];
        for (pod, target, want) in cases {
            assert_eq!(pod.place(ip(target)), want, "{target} for {pod:?}");
        }
    }

    #[test]
    fn a_loopback_target_is_refused_with_a_reason_naming_where_the_app_is() {
        let authority: Authority = "127.0.0.1:7777".parse().unwrap();
        let refused = admit_connect(
            &Method::CONNECT,
            Some(&authority),
            &in_a_pod(),
            &InboundPolicy::default(),
            &id("spiffe://cluster.local/ns/shop/sa/frontend"),
            &TrustDomain::default(),
        )
        .unwrap_err();
        assert_eq!(refused.code, "loopback_target");
        assert_eq!(
            refused.reason,
            "target 127.0.0.1:7777 is a loopback address: listeners bound to loopback are \
             private to the pod; the application is reached on 198.18.0.3"
        );
    }
}
