//! The inbound plaintext listener (15006): whatever iptables sends here arrived at an
//! application port directly, not through the tunnel. STRICT refuses it; PERMISSIVE treats it
//! as a caller without an identity: the workload's policies decide (as Istio's ALLOW policies
//! decide for an unauthenticated peer), and what passes is recorded as plaintext.
//!
//! Owns: the listener, [`admit_plaintext`] (the pure decision) and [`PlainRefusal`]. The policy
//! rules themselves are [`crate::policy`]'s.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info_span};

use crate::config::{Mode, MtlsMode};
use crate::context::ProxyContext;
use crate::copy;
use crate::orig_dst::original_dst;
use crate::policy::{Caller, Decision, InboundPolicy};
use crate::ports::PROXY_PORTS;
use crate::records::Direction;

/// The `peer_id` label of an unauthenticated caller in the decision metric.
pub const UNAUTHENTICATED_LABEL: &str = "unauthenticated";

/// Why plaintext arriving at an application port is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainRefusal {
    /// A stable label for metrics (`plaintext`, `proxy_port`, `policy`).
    pub code: &'static str,
    /// What is wrong, for the record and the log line.
    pub reason: String,
    /// The policy's decision, when the policy refused.
    pub decision: Option<Decision>,
}

/// Decides whether plaintext to `dst` may reach the application: the policy's decision
/// (`allow` or `would-deny`), or why not. `transparent`: `dst` is the original destination
/// iptables redirected (in explicit mode it is the configured `--inbound-target`).
pub fn admit_plaintext(
    mode: MtlsMode,
    dst: SocketAddr,
    transparent: bool,
    policy: &InboundPolicy,
    trust_domain: &trellis_ca::TrustDomain,
) -> Result<Decision, PlainRefusal> {
    if mode == MtlsMode::Strict {
        return Err(PlainRefusal {
            code: "plaintext",
            reason: "plaintext refused: mTLS mode is STRICT".into(),
            decision: None,
        });
    }
    if transparent && PROXY_PORTS.contains(&dst.port()) {
        return Err(PlainRefusal {
            code: "proxy_port",
            reason: "destination is a proxy port".into(),
            decision: None,
        });
    }
    let decision = policy.authorize(Caller::Unauthenticated, dst.port(), trust_domain);
    if !decision.admits() {
        return Err(PlainRefusal {
            code: "policy",
            reason: format!(
                "plaintext refused (mTLS mode is PERMISSIVE): {}",
                decision.reason()
            ),
            decision: Some(decision),
        });
    }
    Ok(decision)
}

/// Counts an admitted plaintext connection's decision (after the app accepted it, so the ports
/// counted are the app's; labels bounded as for mTLS callers).
fn count_decision(ctx: &ProxyContext, decision: &Decision, port: u16) {
    ctx.labels.served(port);
    ctx.count_decision(decision, UNAUTHENTICATED_LABEL, port);
}

/// Accepts plaintext inbound connections until shutdown.
pub async fn serve(listener: TcpListener, ctx: Arc<ProxyContext>) {
    let mut acceptor = trellis_listener::Acceptor::new(listener, "inbound");
    while let Some((tcp, remote)) = acceptor.accept(&ctx.shutdown).await {
        // Explicit mode has no redirect: the listener stands for one application address.
        let dst = match (ctx.config.mode, ctx.config.inbound_target) {
            (Mode::Transparent, _) => original_dst(&tcp),
            (Mode::Explicit, Some(target)) => Ok(target),
            (Mode::Explicit, None) => Err(std::io::Error::other(
                "no --inbound-target in explicit mode",
            )),
        };
        let dst = match dst {
            Ok(d) => d,
            Err(e) => {
                ctx.deny(
                    Direction::InboundPlain,
                    "no_original_dst",
                    remote,
                    None,
                    None,
                    None,
                    format!("original destination unknown: {e}"),
                );
                continue;
            }
        };
        let mode = ctx
            .config
            .mtls_mode
            .or(ctx.state.borrow().mtls_mode)
            .unwrap_or(MtlsMode::Strict);
        let admitted = admit_plaintext(
            mode,
            dst,
            ctx.config.mode == Mode::Transparent,
            &ctx.state.borrow().policy,
            &ctx.config.trust_domain,
        );
        let decision = match admitted {
            Ok(decision) => decision,
            Err(refused) => {
                // Counted by reason code only: a label per port would let anyone who can reach
                // the pod grow the decision metric by scanning ports (issue 15, item 6).
                ctx.deny(
                    Direction::InboundPlain,
                    refused.code,
                    remote,
                    None,
                    Some(dst),
                    None,
                    refused.reason,
                );
                continue; // dropping `tcp` closes it
            }
        };
        let Ok(permit) = ctx.conn_limit.clone().try_acquire_owned() else {
            ctx.deny(
                Direction::InboundPlain,
                "overloaded",
                remote,
                None,
                Some(dst),
                None,
                "too many connections",
            );
            continue;
        };
        let ctx2 = ctx.clone();
        ctx.tracker.spawn(
            async move {
                let _permit = permit;
                pass_through(tcp, remote, dst, decision, &ctx2).await;
            }
            .instrument(info_span!("inbound-plain", peer.addr = %remote, dst = %dst)),
        );
    }
}

async fn pass_through(
    client: TcpStream,
    remote: SocketAddr,
    dst: SocketAddr,
    decision: Decision,
    ctx: &Arc<ProxyContext>,
) {
    let app_addr = SocketAddr::new(ctx.config.app_host, dst.port());
    let app = match TcpStream::connect(app_addr).await {
        Ok(s) => s,
        Err(e) => {
            ctx.deny(
                Direction::InboundPlain,
                "app_unreachable",
                remote,
                None,
                Some(dst),
                None,
                format!("application not reachable on {app_addr}: {e}"),
            );
            return;
        }
    };
    count_decision(ctx, &decision, dst.port());
    let reason = match &decision {
        Decision::WouldDeny(reason) => {
            format!("plaintext passed (mTLS mode is PERMISSIVE), audit: {reason}")
        }
        _ => "plaintext passed: mTLS mode is PERMISSIVE".to_owned(),
    };
    let record = ctx.record(
        Direction::InboundPlain,
        remote,
        None,
        Some(dst),
        None,
        decision.label(),
        reason,
    );
    ctx.metrics.open_connections.inc();
    let (mut client, mut app) = (client, app);
    let res = ctx.copy(&mut client, &mut app, &record).await;
    copy::reset_on_error(&res, &client);
    copy::reset_on_error(&res, &app);
    if let Err(e) = res {
        debug!(error = %e, "plaintext connection ended");
    }
    ctx.close(&record);
    ctx.metrics.open_connections.dec();
}

#[cfg(test)]
mod tests {
    use trellis_ca::{IdentityPattern, TrustDomain};

    use super::*;
    use crate::policy::{Rule, RuleMode};

    fn policy(allow: &[&str], allow_unauthenticated: bool, mode: RuleMode) -> InboundPolicy {
        let td = TrustDomain::default();
        InboundPolicy {
            rules: vec![Rule {
                name: "shop/backend-allow".into(),
                ports: vec![8080],
                allow: allow
                    .iter()
                    .map(|a| IdentityPattern::parse(a, &td).unwrap())
                    .collect(),
                allow_unauthenticated,
                mode,
            }],
        }
    }

    #[test]
    fn plaintext_is_refused_in_strict_and_checked_against_the_policy_in_permissive() {
        use MtlsMode::*;
        use RuleMode::*;
        let none = InboundPolicy::default();
        let identities = policy(&["ns/shop/sa/frontend"], false, Enforce);
        let open = policy(&["ns/shop/sa/frontend"], true, Enforce);
        let audit = policy(&["ns/shop/sa/frontend"], false, Audit);
        // (mode, port, transparent, policy, Ok(decision) or Err(code))
        type Case<'a> = (
            MtlsMode,
            u16,
            bool,
            &'a InboundPolicy,
            Result<&'a str, &'a str>,
        );
        let cases: &[Case<'_>] = &[
            (Strict, 8080, true, &none, Err("plaintext")),
            (Strict, 8080, true, &open, Err("plaintext")),
            (Permissive, 8080, true, &none, Ok("allow")),
            (Permissive, 15000, true, &none, Err("proxy_port")),
            (Permissive, 15000, false, &none, Ok("allow")),
            (Permissive, 8080, true, &identities, Err("policy")),
            (Permissive, 9090, true, &identities, Err("policy")),
            (Permissive, 8080, true, &open, Ok("allow")),
            (Permissive, 9090, true, &open, Err("policy")),
            (Permissive, 8080, true, &audit, Ok("would-deny")),
        ];
        let td = TrustDomain::default();
        for (mode, port, transparent, policy, want) in cases {
            let dst = SocketAddr::from(([198, 18, 0, 3], *port));
            let got = admit_plaintext(*mode, dst, *transparent, policy, &td);
            let got = got.as_ref().map(Decision::label).map_err(|r| r.code);
            assert_eq!(
                got, *want,
                "{mode:?} {dst} transparent={transparent} {policy:?}"
            );
        }
    }

    #[test]
    fn a_plaintext_policy_refusal_says_permissive_and_names_the_caller_and_policy() {
        let refused = admit_plaintext(
            MtlsMode::Permissive,
            SocketAddr::from(([198, 18, 0, 3], 8080)),
            true,
            &policy(&["ns/shop/sa/frontend"], false, RuleMode::Enforce),
            &TrustDomain::default(),
        )
        .unwrap_err();
        assert_eq!(
            refused.reason,
            "plaintext refused (mTLS mode is PERMISSIVE): unauthenticated (plaintext) is not \
             allowed on port 8080 by shop/backend-allow"
        );
        assert_eq!(refused.decision.map(|d| d.label()), Some("deny"));
    }
}
