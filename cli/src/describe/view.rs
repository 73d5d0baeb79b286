//! What `trellis describe` shows, from plain data: the pod as the API server has it,
//! what its proxy reports (identity, the policy in force with its mTLS mode, the verdict for
//! the caller asked about, recent refusals), and a one-line verdict.
//!
//! Owns: the report types and their text. No I/O.

use serde::{Deserialize, Serialize};

use crate::admin_api::{Handshake, Identity};

/// The proxy's `GET /policy` document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PolicyDoc {
    /// "STRICT" or "PERMISSIVE".
    pub mtls_mode: String,
    /// Every rule selecting the pod.
    pub rules: Vec<RuleDoc>,
    /// The verdict for `from` on `port`, when asked.
    #[serde(default)]
    pub verdict: Option<Verdict>,
}

/// One rule in force.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RuleDoc {
    /// `namespace/name` of its AuthorizationPolicy.
    pub name: String,
    /// Ports covered (empty: every port).
    pub ports: Vec<u16>,
    /// Allowed identities (patterns).
    pub allow: Vec<String>,
    /// Whether plaintext callers are allowed.
    pub allow_unauthenticated: bool,
    /// "enforce" or "audit".
    pub mode: String,
}

/// The proxy's answer to "may `from` reach `port`?".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Verdict {
    /// The caller asked about.
    pub from: String,
    /// The port.
    pub port: u16,
    /// "allow", "deny" or "would-deny".
    pub decision: String,
    /// Why, unless a plain allow.
    pub reason: String,
}

/// What the proxy said, when the pod has one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyView {
    /// Its certificate.
    pub identity: Option<Identity>,
    /// Its policy and mTLS mode.
    pub policy: PolicyDoc,
    /// Its most recent refused (or would-be refused) connections, newest last.
    pub refusals: Vec<Handshake>,
}

/// The whole description (`-o json|yaml` prints it as is).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Description {
    /// `namespace/name`; `None` without a cluster (`describe --admin`).
    pub pod: Option<String>,
    /// The admin endpoint described, in local mode (`describe --admin ADDR`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Whether the injector meshed it; `None` without a cluster.
    pub injected: Option<bool>,
    /// Why not, when not.
    pub not_injected_because: Option<String>,
    /// The SPIFFE ID its service account gives it.
    pub identity: String,
    /// What its proxy reports (none when not injected).
    pub proxy: Option<ProxyView>,
    /// The one-line answer.
    pub verdict: String,
}

/// The one-line verdict.
pub fn verdict_line(
    pod: &str,
    injected: bool,
    why_not: Option<&str>,
    proxy: Option<&ProxyView>,
) -> String {
    if !injected {
        return format!(
            "{pod} is not meshed ({}): anything that can reach it gets in, in plaintext",
            why_not.unwrap_or("not injected")
        );
    }
    let Some(proxy) = proxy else {
        return format!("{pod} is meshed but its proxy did not answer");
    };
    match &proxy.policy.verdict {
        Some(v) => match v.decision.as_str() {
            "allow" => format!("{} CAN reach {pod} on port {}", v.from, v.port),
            "would-deny" => format!(
                "{} can reach {pod} on port {} only because the policy is in audit mode: {}",
                v.from, v.port, v.reason
            ),
            _ => format!(
                "{} CANNOT reach {pod} on port {}: {}",
                v.from, v.port, v.reason
            ),
        },
        None if proxy.policy.rules.is_empty() => format!(
            "{pod} is meshed ({}); no policy selects it: every mesh identity may connect",
            proxy.policy.mtls_mode
        ),
        None => format!(
            "{pod} is meshed ({}); {} rule(s) decide who gets in (ask with --from and --port)",
            proxy.policy.mtls_mode,
            proxy.policy.rules.len()
        ),
    }
}

/// The description as text.
pub fn text(d: &Description) -> String {
    let mut out = match (&d.pod, &d.admin) {
        (Some(pod), _) => format!("Pod:        {pod}\n"),
        (None, admin) => format!(
            "Proxy:      {} (admin endpoint on this machine)\n\
             Pod:        unknown: needs a cluster (trellis describe pod NAME)\n",
            admin.as_deref().unwrap_or("unknown")
        ),
    };
    match (&d.injected, &d.not_injected_because) {
        (Some(true), _) => out.push_str("Injected:   yes\n"),
        (Some(false), why) => out.push_str(&format!(
            "Injected:   no ({})\n",
            why.as_deref().unwrap_or("unknown")
        )),
        (None, _) => {
            out.push_str("Injected:   unknown: needs a cluster (trellis describe pod NAME)\n")
        }
    }
    out.push_str(&format!("Identity:   {}\n", d.identity));
    if let Some(p) = &d.proxy {
        if let Some(id) = &p.identity {
            out.push_str(&format!(
                "Cert:       serial {}, valid until {} ({}s left)\n",
                id.serial, id.not_after, id.seconds_left
            ));
        }
        out.push_str(&format!("mTLS mode:  {}\n", p.policy.mtls_mode));
        if p.policy.rules.is_empty() {
            out.push_str("Policies:   none select this pod (every mesh identity is allowed)\n");
        } else {
            out.push_str("Policies:\n");
            for r in &p.policy.rules {
                let ports = if r.ports.is_empty() {
                    "every port".to_owned()
                } else {
                    let list: Vec<String> = r.ports.iter().map(u16::to_string).collect();
                    format!("port {}", list.join(","))
                };
                let mut who = r.allow.clone();
                if r.allow_unauthenticated {
                    who.push("unauthenticated".into());
                }
                let audit = if r.mode == "audit" {
                    " (audit only)"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "  {}: {ports} allows {}{audit}\n",
                    r.name,
                    if who.is_empty() {
                        "nobody".to_owned()
                    } else {
                        who.join(", ")
                    }
                ));
            }
        }
        if p.refusals.is_empty() {
            out.push_str("Refusals:   none recently\n");
        } else {
            out.push_str("Refusals (most recent last):\n");
            for h in &p.refusals {
                out.push_str(&format!(
                    "  {} {} from {}: {}\n",
                    h.time,
                    h.decision,
                    h.peer_id.as_deref().unwrap_or(&h.peer_addr),
                    h.reason
                ));
            }
        }
    }
    out.push_str(&format!("Verdict:    {}\n", d.verdict));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(verdict: Option<(&str, &str)>, rules: usize) -> ProxyView {
        ProxyView {
            identity: None,
            policy: PolicyDoc {
                mtls_mode: "STRICT".into(),
                rules: (0..rules)
                    .map(|_| RuleDoc {
                        name: "shop/backend-allow".into(),
                        ports: vec![8080],
                        allow: vec!["spiffe://cluster.local/ns/shop/sa/frontend".into()],
                        allow_unauthenticated: false,
                        mode: "enforce".into(),
                    })
                    .collect(),
                verdict: verdict.map(|(decision, reason)| Verdict {
                    from: "spiffe://cluster.local/ns/shop/sa/intruder".into(),
                    port: 8080,
                    decision: decision.into(),
                    reason: reason.into(),
                }),
            },
            refusals: Vec::new(),
        }
    }

    #[test]
    fn the_verdict_line_answers_the_question_asked() {
        let pod = "shop/backend-1";
        for (injected, p, want) in [
            (
                false,
                None,
                "shop/backend-1 is not meshed (namespace-not-labelled)",
            ),
            (true, None, "is meshed but its proxy did not answer"),
            (
                true,
                Some(proxy(Some(("allow", "")), 1)),
                "intruder CAN reach shop/backend-1 on port 8080",
            ),
            (
                true,
                Some(proxy(
                    Some(("deny", "not allowed by shop/backend-allow")),
                    1,
                )),
                "CANNOT reach shop/backend-1 on port 8080: not allowed by shop/backend-allow",
            ),
            (
                true,
                Some(proxy(Some(("would-deny", "x")), 1)),
                "only because the policy is in audit mode",
            ),
            (true, Some(proxy(None, 0)), "no policy selects it"),
            (true, Some(proxy(None, 1)), "1 rule(s) decide who gets in"),
        ] {
            let line = verdict_line(pod, injected, Some("namespace-not-labelled"), p.as_ref());
            assert!(line.contains(want), "{line}");
        }
    }

    #[test]
    fn the_text_lists_each_rule_with_its_ports_and_who_it_allows() {
        let d = Description {
            pod: Some("shop/backend-1".into()),
            admin: None,
            injected: Some(true),
            not_injected_because: None,
            identity: "spiffe://cluster.local/ns/shop/sa/backend".into(),
            proxy: Some(proxy(None, 1)),
            verdict: "v".into(),
        };
        let t = text(&d);
        assert!(
            t.contains("  shop/backend-allow: port 8080 allows spiffe://cluster.local/ns/shop/sa/frontend\n"),
            "{t}"
        );
        assert!(t.contains("mTLS mode:  STRICT\n"), "{t}");
        assert!(t.ends_with("Verdict:    v\n"), "{t}");
    }

    #[test]
    fn without_a_cluster_the_pod_and_injection_sections_say_they_need_one() {
        let d = Description {
            pod: None,
            admin: Some("127.0.0.1:15000".into()),
            injected: None,
            not_injected_because: None,
            identity: "spiffe://cluster.local/ns/shop/sa/backend".into(),
            proxy: Some(proxy(None, 1)),
            verdict: "v".into(),
        };
        let t = text(&d);
        assert!(
            t.starts_with("Proxy:      127.0.0.1:15000 (admin endpoint on this machine)\n"),
            "{t}"
        );
        assert!(t.contains("Pod:        unknown: needs a cluster"), "{t}");
        assert!(t.contains("Injected:   unknown: needs a cluster"), "{t}");
        assert!(t.contains("  shop/backend-allow: port 8080 allows"), "{t}");
    }
}
