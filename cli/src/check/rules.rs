//! The checks of `trellis check`, as pure functions from gathered facts to ✔/‼/✘ outcomes
//! with hints. [`evaluate_cluster`] and [`evaluate_local`] run them in order; the I/O that
//! gathers the facts lives in [`super::cluster`] and [`super::local`].

use std::time::{Duration, SystemTime};

use super::facts::{
    ClusterFacts, CrdFacts, DeploymentFacts, LocalFacts, PodRef, ProbeFacts, RootSummary,
    SecretFacts, WebhookFacts,
};
use super::report::{Outcome, Section};
use crate::humanize::short_duration;
use crate::kube_access::Fetched;

/// The CRD's name.
pub const CRD: &str = "authorizationpolicies.trellis.dev";
/// The control plane's Deployment.
pub const CONTROL_PLANE: &str = "trellis-control-plane";
/// The injector's Deployment.
pub const INJECTOR: &str = "trellis-injector";
/// The MutatingWebhookConfiguration.
pub const WEBHOOK: &str = "trellis-injector";
/// The injector's serving Secret (`tls.crt`, `tls.key`, `ca.crt`).
pub const INJECTOR_SECRET: &str = "trellis-injector-tls";
/// The namespace label that turns injection on.
pub const INJECTION_LABEL: &str = "trellis-injection=enabled";
/// Warn when a root or intermediate expires within this.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);
/// Most pods listed by name.
const MAX_PODS_LISTED: usize = 10;

/// Hint for an expiring or expired root.
const ROOT_HINT: &str = "rotate the root: add the new root next to the old one (trellis-control-plane --extra-root, or root-cert.pem of the cacerts), wait for the proxies to renew, then sign with the new one";
/// Hint for an expiring or expired intermediate.
const INTERMEDIATE_HINT: &str = "replace the plug-in CA (ca-cert.pem, ca-key.pem, cert-chain.pem) with a fresh intermediate and restart the control plane";

/// Every check against a cluster, in order. If the API server cannot be reached, that is the
/// only check: everything else would fail the same way.
pub fn evaluate_cluster(f: &ClusterFacts, now: SystemTime) -> Vec<Section> {
    let api = Section {
        name: "kubernetes-api",
        outcomes: vec![api_server(&f.api)],
    };
    if f.api.is_err() {
        return vec![api];
    }
    let ns = &f.namespace;
    let install = Section {
        name: "trellis-install",
        outcomes: vec![
            crd(&f.crd),
            deployment(ns, CONTROL_PLANE, &f.control_plane),
            deployment(ns, INJECTOR, &f.injector),
        ],
    };
    let mut webhook_checks = vec![webhook(&f.webhook)];
    webhook_checks.extend(ca_bundle(ns, &f.webhook, &f.injector_secret));
    let mut identity = vec![match &f.roots {
        Some((source, roots)) => root_expiry(source, roots, now),
        None => Outcome::fail(
            "mesh root found",
            format!("the control plane writes it into the webhook's caBundle and into Secret {INJECTOR_SECRET}; check its logs: kubectl -n {ns} logs deploy/{CONTROL_PLANE}"),
        )
        .detail("the webhook has no caBundle and the Secret's ca.crt could not be read"),
    }];
    let cp_hint = format!(
        "kubectl -n {ns} logs deploy/{CONTROL_PLANE}; if the root was rotated, the caBundle may lag behind"
    );
    identity.push(control_plane_connection(
        &format!("deploy/{CONTROL_PLANE}"),
        &f.probe,
        &cp_hint,
        now,
    ));
    identity.extend(control_plane_health(&f.probe));
    identity.extend(intermediates(&f.probe, now));
    let mut data_plane = labelled_namespaces(ns, &f.namespaces);
    data_plane.extend(uninjected_pods(&f.uninjected));
    vec![
        api,
        install,
        Section {
            name: "trellis-webhook",
            outcomes: webhook_checks,
        },
        Section {
            name: "trellis-identity",
            outcomes: identity,
        },
        Section {
            name: "data-plane",
            outcomes: data_plane,
        },
    ]
}

/// Every check of `--local`, in order.
pub fn evaluate_local(f: &LocalFacts, now: SystemTime) -> Vec<Section> {
    let mut control_plane = Vec::new();
    let mut identity = vec![root_expiry(&f.bundle_file, &f.roots, now)];
    let hint = format!(
        "is trellis-control-plane running with --listen {}, and is {} its root-cert.pem (or a bundle.pem it issued)?",
        f.addr, f.bundle_file
    );
    control_plane.push(control_plane_connection(&f.addr, &f.probe, &hint, now));
    control_plane.extend(control_plane_health(&f.probe));
    if let Some((addr, ready)) = &f.ready {
        control_plane.push(ready_endpoint(addr, ready));
    }
    identity.extend(intermediates(&f.probe, now));
    vec![
        Section {
            name: "control-plane",
            outcomes: control_plane,
        },
        Section {
            name: "trellis-identity",
            outcomes: identity,
        },
    ]
}

/// The API server answered its version.
pub fn api_server(api: &Result<String, String>) -> Outcome {
    match api {
        Ok(version) => Outcome::ok(format!("can reach the Kubernetes API server ({version})")),
        Err(reason) => Outcome::fail(
            "can reach the Kubernetes API server",
            "check the kubeconfig context (kubectl config current-context; kubectl version); without a cluster, use trellis check --local",
        )
        .detail(reason.clone()),
    }
}

/// The object could not be read: forbidden is a warning (we cannot tell), anything else a
/// failure.
fn unreadable<T>(what: &str, fetched: &Fetched<T>) -> Option<Outcome> {
    match fetched {
        Fetched::Denied(reason) => Some(
            Outcome::warn(
                format!("{what}: not checked, access denied"),
                "check with a kubeconfig user that may read it (kubectl auth can-i get ...)",
            )
            .detail(reason.clone()),
        ),
        Fetched::Failed(reason) => Some(
            Outcome::fail(
                format!("{what}: cannot be read"),
                "check the API server's health and retry",
            )
            .detail(reason.clone()),
        ),
        Fetched::Found(_) | Fetched::Missing => None,
    }
}

/// The AuthorizationPolicy CRD is installed and served.
pub fn crd(f: &Fetched<CrdFacts>) -> Outcome {
    let title = format!("CRD {CRD} is installed");
    match f {
        Fetched::Found(CrdFacts { established: true }) => Outcome::ok(title),
        Fetched::Found(CrdFacts { established: false }) => Outcome::fail(
            title,
            format!("kubectl describe crd {CRD}"),
        )
        .detail("the CRD exists but the API server does not serve it yet (not Established)"),
        Fetched::Missing => Outcome::fail(
            title,
            "install the chart: helm upgrade --install trellis charts/trellis -n trellis-system --create-namespace",
        )
        .detail("not found"),
        other => unreadable(&format!("CRD {CRD}"), other).unwrap_or_else(|| Outcome::ok(title)),
    }
}

/// A Deployment has all its replicas available.
pub fn deployment(ns: &str, name: &str, f: &Fetched<DeploymentFacts>) -> Outcome {
    let title = format!("Deployment {name} is available");
    let look =
        format!("kubectl -n {ns} describe deployment {name}; kubectl -n {ns} logs deploy/{name}");
    match f {
        Fetched::Found(DeploymentFacts { desired, available }) => {
            let counts = format!("{available}/{desired} replicas available");
            if *desired == 0 {
                Outcome::fail(title, format!("kubectl -n {ns} scale deployment {name} --replicas=1"))
                    .detail("scaled to 0 replicas")
            } else if *available == 0 {
                Outcome::fail(title, look).detail(counts)
            } else if available < desired {
                Outcome::warn(format!("{title} ({counts})"), look)
            } else {
                Outcome::ok(format!("{title} ({counts})"))
            }
        }
        Fetched::Missing => Outcome::fail(
            title,
            "install the chart: helm upgrade --install trellis charts/trellis -n trellis-system --create-namespace",
        )
        .detail(format!("no Deployment {name} in namespace {ns}")),
        other => unreadable(&format!("Deployment {name}"), other).unwrap_or_else(|| Outcome::ok(title)),
    }
}

/// The MutatingWebhookConfiguration exists and has webhooks.
pub fn webhook(f: &Fetched<WebhookFacts>) -> Outcome {
    let title = format!("MutatingWebhookConfiguration {WEBHOOK} is present");
    match f {
        Fetched::Found(w) if !w.webhooks.is_empty() => {
            let names: Vec<&str> = w.webhooks.iter().map(|(n, _)| n.as_str()).collect();
            Outcome::ok(format!("{title} ({})", names.join(", ")))
        }
        Fetched::Found(_) => Outcome::fail(title, "reinstall the chart (helm upgrade --install)")
            .detail("it has no webhooks"),
        Fetched::Missing => Outcome::fail(
            title,
            "install the chart: helm upgrade --install trellis charts/trellis -n trellis-system --create-namespace",
        )
        .detail("not found: no pod is injected"),
        other => unreadable(&format!("MutatingWebhookConfiguration {WEBHOOK}"), other)
            .unwrap_or_else(|| Outcome::ok(title)),
    }
}

/// Every webhook's `caBundle` is set and holds the same certificates as the injector
/// Secret's `ca.crt` (the API server verifies the injector's certificate with it). `None` when
/// there is no webhook to compare (reported by [`webhook`]).
pub fn ca_bundle(
    ns: &str,
    webhook: &Fetched<WebhookFacts>,
    secret: &Fetched<SecretFacts>,
) -> Option<Outcome> {
    let Fetched::Found(w) = webhook else {
        return None;
    };
    let (first_name, first) = w.webhooks.first()?;
    let title = format!("webhook caBundle matches ca.crt of Secret {INJECTOR_SECRET}");
    let restart = format!(
        "the control plane writes both at start and on renewal: kubectl -n {ns} rollout restart deployment/{CONTROL_PLANE}"
    );
    if let Some((name, _)) = w.webhooks.iter().find(|(_, b)| b.is_empty()) {
        return Some(
            Outcome::fail(title, restart)
                .detail(format!("webhook {name} has no caBundle: the API server cannot call the injector, so pods of labelled namespaces are not created")),
        );
    }
    let bundle = cert_set(first);
    if let Some((name, _)) = w.webhooks.iter().find(|(_, b)| cert_set(b) != bundle) {
        return Some(Outcome::fail(title, restart).detail(format!(
            "webhook {name} has a different caBundle than {first_name}"
        )));
    }
    let Some(bundle) = bundle else {
        return Some(Outcome::fail(title, restart).detail("the caBundle is not PEM certificates"));
    };
    match secret {
        Fetched::Found(SecretFacts { ca_crt: Some(ca) }) => {
            if cert_set(ca).as_ref() == Some(&bundle) {
                Some(Outcome::ok(title))
            } else {
                Some(Outcome::fail(title, restart).detail(
                    "they differ: the API server will not trust the injector's serving certificate",
                ))
            }
        }
        Fetched::Found(SecretFacts { ca_crt: None }) => Some(
            Outcome::fail(title, restart).detail(format!("Secret {INJECTOR_SECRET} has no ca.crt")),
        ),
        Fetched::Missing => Some(Outcome::fail(title, restart).detail(format!(
            "Secret {INJECTOR_SECRET} not found in namespace {ns}"
        ))),
        other => unreadable(&format!("Secret {INJECTOR_SECRET}"), other),
    }
}

/// The certificates of a PEM text as a sorted set of DER, to compare bundles whatever their
/// order and line breaks; `None` if it holds none.
fn cert_set(pem: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut ders: Vec<Vec<u8>> = trellis_ca::certs_from_pem(pem)
        .ok()?
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    ders.sort();
    ders.dedup();
    Some(ders)
}

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

/// Which namespaces are labelled for injection (‼ if none; ‼ if the control plane's own is,
/// since it is never meshed).
pub fn labelled_namespaces(cp_ns: &str, f: &Fetched<Vec<String>>) -> Vec<Outcome> {
    match f {
        Fetched::Found(names) if names.is_empty() => vec![Outcome::warn(
            format!("no namespace is labelled {INJECTION_LABEL}: no pod gets the mesh"),
            format!("kubectl label namespace NAME {INJECTION_LABEL}"),
        )],
        Fetched::Found(names) => {
            let mut out = vec![Outcome::ok(format!(
                "{} labelled {INJECTION_LABEL}: {}",
                plural(names.len(), "namespace"),
                names.join(", ")
            ))];
            if names.iter().any(|n| n == cp_ns) {
                out.push(Outcome::warn(
                    format!("namespace {cp_ns} is labelled, but the control plane's namespace is never meshed"),
                    format!("kubectl label namespace {cp_ns} trellis-injection-"),
                ));
            }
            out
        }
        other => unreadable("namespaces", other).into_iter().collect(),
    }
}

/// Pods of labelled namespaces that are not injected yet (created before the label, or while
/// the injector was down): ‼ with the command that re-creates them.
pub fn uninjected_pods(f: &Fetched<Vec<PodRef>>) -> Option<Outcome> {
    match f {
        Fetched::Found(pods) if pods.is_empty() => Some(Outcome::ok(
            "every pod of the labelled namespaces is injected",
        )),
        Fetched::Found(pods) => {
            let mut listed: Vec<String> = pods
                .iter()
                .take(MAX_PODS_LISTED)
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            if pods.len() > MAX_PODS_LISTED {
                listed.push(format!("and {} more", pods.len() - MAX_PODS_LISTED));
            }
            let mut commands: Vec<String> = pods.iter().map(restart_command).collect();
            commands.sort();
            commands.dedup();
            Some(
                Outcome::warn(
                    format!(
                        "{} in labelled namespaces not injected yet",
                        plural(pods.len(), "pod")
                    ),
                    format!(
                        "re-create them so the injector sees them: {}",
                        commands.join("; ")
                    ),
                )
                .detail(listed.join("\n")),
            )
        }
        Fetched::Missing => None,
        other => unreadable("pods of labelled namespaces", other),
    }
}

/// The command that re-creates `pod` through its controller: a Deployment's (its ReplicaSet
/// is named `<deployment>-<pod-template-hash>`), StatefulSet's or DaemonSet's rollout restart;
/// for anything else, deleting it (a bare pod must be re-applied by hand).
pub fn restart_command(pod: &PodRef) -> String {
    let ns = &pod.namespace;
    let Some(owner) = &pod.owner else {
        return format!(
            "kubectl -n {ns} delete pod {} (then re-create it)",
            pod.name
        );
    };
    let deployment = match (owner.kind.as_str(), &pod.template_hash) {
        ("ReplicaSet", Some(hash)) => owner.name.strip_suffix(&format!("-{hash}")),
        _ => None,
    };
    match (owner.kind.as_str(), deployment) {
        (_, Some(d)) => format!("kubectl -n {ns} rollout restart deployment/{d}"),
        ("StatefulSet" | "DaemonSet", _) => format!(
            "kubectl -n {ns} rollout restart {}/{}",
            owner.kind.to_lowercase(),
            owner.name
        ),
        _ => format!("kubectl -n {ns} delete pod {}", pod.name),
    }
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

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
