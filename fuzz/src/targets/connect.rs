//! `connect`: a CONNECT stream's request head on the tunnel (port 15008), as the server proxy
//! sees it after h2 has decoded the headers: the method, the `:authority`, and the peer's
//! verified SPIFFE ID, fed to `trellis_proxy::tunnel::admit::admit_connect` with a fixed policy.
//!
//! Input: `METHOD \n AUTHORITY \n PEER-ID` (missing parts: no authority, the frontend's ID).

use std::net::{IpAddr, Ipv4Addr};

use http::Method;
use http::uri::Authority;
use trellis_ca::{IdentityPattern, SpiffeId, TrustDomain};
use trellis_proxy::policy::{InboundPolicy, Rule, RuleMode};
use trellis_proxy::ports::PROXY_PORTS;
use trellis_proxy::tunnel::admit::admit_connect;

/// The pod the server proxy runs in.
const POD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));

/// The policy and identities, made once.
#[derive(Debug)]
pub struct Connect {
    /// An enforce rule on one port and an audit rule on every port.
    policy: InboundPolicy,
    /// The mesh's trust domain.
    trust_domain: TrustDomain,
    /// The peer when the input names none (or an invalid one).
    default_peer: SpiffeId,
}

impl Connect {
    /// Builds the fixed policy.
    pub fn new() -> Self {
        let td = TrustDomain::default();
        let pattern = |s: &str| IdentityPattern::parse(s, &td).expect("fixed patterns parse");
        let policy = InboundPolicy {
            rules: vec![
                Rule {
                    name: "shop/allow-frontend".into(),
                    ports: vec![8080, 9090],
                    allow: vec![pattern("ns/shop/sa/frontend"), pattern("ns/ops/*")],
                    mode: RuleMode::Enforce,
                },
                Rule {
                    name: "shop/audit".into(),
                    ports: vec![],
                    allow: vec![pattern("ns/shop/sa/*")],
                    mode: RuleMode::Audit,
                },
            ],
        };
        Self {
            policy,
            default_peer: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend")
                .expect("a fixed ID parses"),
            trust_domain: td,
        }
    }
}

impl super::Stateful for Connect {
    fn run(&self, data: &[u8]) {
        let mut parts = data.splitn(3, |b| *b == b'\n');
        let Ok(method) = Method::from_bytes(parts.next().unwrap_or_default()) else {
            return;
        };
        // h2 refuses a stream whose `:authority` does not parse, before the proxy sees it.
        let authority = match parts.next() {
            None => None,
            Some(bytes) => match Authority::try_from(bytes) {
                Ok(a) => Some(a),
                Err(_) => return,
            },
        };
        let peer = parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| SpiffeId::parse(p).ok())
            .unwrap_or_else(|| self.default_peer.clone());
        let is_local = |ip: IpAddr| ip.is_loopback() || ip == POD_IP;
        match admit_connect(
            &method,
            authority.as_ref(),
            is_local,
            &self.policy,
            &peer,
            &self.trust_domain,
        ) {
            Ok((target, decision)) => {
                assert_eq!(method, Method::CONNECT);
                assert_ne!(target.port(), 0);
                assert!(
                    !PROXY_PORTS.contains(&target.port()),
                    "{target} is the proxy's"
                );
                assert!(is_local(target.ip()), "{target} is outside the pod");
                assert!(decision.admits());
                assert_eq!(peer.trust_domain(), &self.trust_domain);
            }
            Err(refusal) => {
                assert!(refusal.status.is_client_error(), "{refusal:?}");
                assert!(!refusal.reason.is_empty());
                assert_eq!(refusal.decision.is_some(), refusal.code == "policy");
            }
        }
    }
}

impl Default for Connect {
    fn default() -> Self {
        Self::new()
    }
}
