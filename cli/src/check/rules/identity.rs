//! The mesh's identity: the roots and intermediates are not expired or about to, and the
//! control plane proves its SPIFFE ID over TLS and reports itself healthy.

use std::time::{Duration, SystemTime};

use super::EXPIRY_WARNING;
use crate::check::facts::{ProbeFacts, RootSummary};
use crate::check::report::Outcome;
use crate::humanize::short_duration;

/// Hint for an expiring or expired root.
const ROOT_HINT: &str = "rotate the root (README \"Rotating the root\"): add the new root to root-cert.pem next to the old one, switch the CA to it, and remove the old root after the longest certificate lifetime";
/// Hint for an expiring or expired intermediate.
const INTERMEDIATE_HINT: &str = "replace the plug-in CA (ca-cert.pem, ca-key.pem, cert-chain.pem) with a fresh intermediate and restart the control plane";

/// The roots read from `source` are valid and not about to expire.
pub fn root_expiry(source: &str, roots: &Result<RootSummary, String>, now: SystemTime) -> Outcome {
    match roots {
        Ok(r) => {
            let what = if r.roots == 1 {
                format!("root certificate (from {source})")
            } else {
                format!("earliest of {} root certificates (from {source})", r.roots)
            };
            expiry(&what, r.earliest_expiry, now, EXPIRY_WARNING, ROOT_HINT)
        }
        Err(reason) => Outcome::fail(
            format!("trust bundle {source} is usable"),
            "give the mesh's root-cert.pem (PEM CERTIFICATE blocks of CA certificates)",
        )
        .detail(reason.clone()),
    }
}

/// A certificate is valid for longer than `warn_within`: ✔; expires within it: ‼; expired: ✘.
pub fn expiry(
    what: &str,
    not_after: SystemTime,
    now: SystemTime,
    warn_within: Duration,
    hint: &str,
) -> Outcome {
    let date = humantime::format_rfc3339_seconds(not_after);
    match not_after.duration_since(now) {
        Err(ago) => Outcome::fail(format!("{what} is valid"), hint).detail(format!(
            "expired {} ago ({date}): every handshake that relies on it fails",
            in_words(ago.duration())
        )),
        Ok(left) if left < warn_within => Outcome::warn(
            format!("{what} expires in {} ({date})", in_words(left)),
            hint,
        ),
        Ok(left) => Outcome::ok(format!(
            "{what} is valid until {date} ({} left)",
            in_words(left)
        )),
    }
}

/// `3649 days`, or the two largest units below a day.
fn in_words(d: Duration) -> String {
    let days = d.as_secs() / 86_400;
    match days {
        0 => short_duration(d.as_secs()),
        1 => "1 day".to_owned(),
        n => format!("{n} days"),
    }
}

/// TCP and TLS to the control plane worked, and it proved the expected identity.
pub fn control_plane_connection(
    target: &str,
    probe: &ProbeFacts,
    hint: &str,
    now: SystemTime,
) -> Outcome {
    let title = format!("control plane at {target} accepts TLS and proves its identity");
    match probe {
        ProbeFacts::Skipped(reason) => Outcome::warn(
            format!("control plane at {target}: health not checked"),
            hint,
        )
        .detail(reason.clone()),
        ProbeFacts::ConnectFailed(reason) => Outcome::fail(title, hint).detail(reason.clone()),
        ProbeFacts::HealthFailed { peer_id, .. } => {
            Outcome::ok(format!("control plane at {target} proves {peer_id}"))
        }
        ProbeFacts::Answered(p) => {
            let left = p
                .leaf_not_after
                .and_then(|t| t.duration_since(now).ok())
                .map(|d| {
                    format!(
                        ", serving certificate valid for {}",
                        short_duration(d.as_secs())
                    )
                })
                .unwrap_or_default();
            Outcome::ok(format!(
                "control plane at {target} proves {}{left}",
                p.peer_id
            ))
        }
    }
}

/// The control plane answered `grpc.health.v1.Health/Check` with `SERVING`. `None` when no
/// connection was made (reported by [`control_plane_connection`]).
pub fn control_plane_health(probe: &ProbeFacts) -> Option<Outcome> {
    let title = "control plane is healthy (grpc.health.v1)";
    match probe {
        ProbeFacts::Answered(p) if p.status == "SERVING" => Some(Outcome::ok(
            "control plane reports SERVING (grpc.health.v1)",
        )),
        ProbeFacts::Answered(p) => Some(
            Outcome::fail(title, "check the control plane's logs")
                .detail(format!("it reports {}", p.status)),
        ),
        ProbeFacts::HealthFailed { reason, .. } => {
            Some(Outcome::fail(title, "check the control plane's logs").detail(reason.clone()))
        }
        ProbeFacts::Skipped(_) | ProbeFacts::ConnectFailed(_) => None,
    }
}

/// The intermediates the control plane presented are not about to expire; with none, the
/// root signs directly, which is said once.
pub fn intermediates(probe: &ProbeFacts, now: SystemTime) -> Vec<Outcome> {
    let ProbeFacts::Answered(p) = probe else {
        return Vec::new();
    };
    if p.intermediates.is_empty() {
        return vec![Outcome::ok(
            "no intermediate: the root signs workload certificates",
        )];
    }
    p.intermediates
        .iter()
        .map(|c| {
            expiry(
                &format!("intermediate {}", c.subject),
                c.not_after,
                now,
                EXPIRY_WARNING,
                INTERMEDIATE_HINT,
            )
        })
        .collect()
}

/// `GET /ready` on the metrics port answered 200.
pub fn ready_endpoint(addr: &str, ready: &Result<u16, String>) -> Outcome {
    let title = format!("control plane metrics endpoint {addr} reports ready");
    match ready {
        Ok(200) => Outcome::ok(format!("{title} (GET /ready: 200)")),
        Ok(code) => Outcome::fail(title, "check the control plane's logs")
            .detail(format!("GET /ready answered {code}")),
        Err(reason) => Outcome::fail(
            title,
            "is --metrics the control plane's --metrics-listen address (default port 15014)?",
        )
        .detail(reason.clone()),
    }
}
