//! The data plane: which namespaces ask for the mesh, which of their pods do not have it yet,
//! and which meshed pods in STRICT namespaces still have app probes kubelet sends in plaintext.

use super::{INJECTION_LABEL, plural, unreadable};
use crate::check::facts::{PlaintextProbes, PodRef};
use crate::check::report::Outcome;
use crate::kube_access::Fetched;

/// Most pods listed by name.
const MAX_PODS_LISTED: usize = 10;

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
            let listed = listing(pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)));
            let commands = restart_commands(pods.iter());
            Some(
                Outcome::warn(
                    format!(
                        "{} in labelled namespaces not injected yet",
                        plural(pods.len(), "pod")
                    ),
                    format!("re-create them so the injector sees them: {commands}"),
                )
                .detail(listed),
            )
        }
        Fetched::Missing => None,
        other => unreadable("pods of labelled namespaces", other),
    }
}

/// One line per pod, at most [`MAX_PODS_LISTED`], then how many more.
fn listing(lines: impl ExactSizeIterator<Item = String>) -> String {
    let total = lines.len();
    let mut listed: Vec<String> = lines.take(MAX_PODS_LISTED).collect();
    if total > MAX_PODS_LISTED {
        listed.push(format!("and {} more", total - MAX_PODS_LISTED));
    }
    listed.join("\n")
}

/// The commands that re-create `pods`, one per workload.
fn restart_commands<'a>(pods: impl Iterator<Item = &'a PodRef>) -> String {
    let mut commands: Vec<String> = pods.map(restart_command).collect();
    commands.sort();
    commands.dedup();
    commands.join("; ")
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

/// The namespace label or annotation that sets a namespace's mTLS mode (the annotation wins).
pub const MTLS_KEY: &str = "trellis.dev/mtls";

/// Whether a namespace is STRICT: its `trellis.dev/mtls` annotation, else its label, else the
/// mesh's default (the control plane's `--mtls-mode`). Unknown values are ignored, as the
/// control plane ignores them.
pub fn is_strict(annotation: Option<&str>, label: Option<&str>, mesh_strict: bool) -> bool {
    let known = |v: &&str| v.eq_ignore_ascii_case("strict") || v.eq_ignore_ascii_case("permissive");
    match annotation.filter(known).or(label.filter(known)) {
        Some(v) => v.eq_ignore_ascii_case("strict"),
        None => mesh_strict,
    }
}

/// Meshed pods in STRICT namespaces whose app probes go to the app in plaintext: ‼, since the
/// proxy refuses them (the pod is never ready, or its liveness probe restarts it), with why
/// and what to do.
pub fn plaintext_probes(f: &Fetched<Vec<PlaintextProbes>>) -> Option<Outcome> {
    match f {
        Fetched::Found(pods) if pods.is_empty() => Some(Outcome::ok(
            "app probes of meshed pods in STRICT namespaces go through their proxies",
        )),
        Fetched::Found(pods) => {
            let listed = listing(pods.iter().map(|p| {
                let why = match p.marker.as_deref() {
                    Some("kept") => "probe rewriting off for this pod",
                    Some(_) => "the injector could not rewrite them (see its warnings)",
                    None => "injected before probes were rewritten",
                };
                format!(
                    "{}/{}: {} ({why})",
                    p.pod.namespace,
                    p.pod.name,
                    p.probes.join(", ")
                )
            }));
            let commands = restart_commands(pods.iter().map(|p| &p.pod));
            Some(
                Outcome::warn(
                    format!(
                        "{} in STRICT namespaces {} app probes the proxy refuses (plaintext from kubelet)",
                        plural(pods.len(), "meshed pod"),
                        if pods.len() == 1 { "has" } else { "have" }
                    ),
                    format!(
                        "re-create them so the injector rewrites the probes to the proxy's 15020 (remove trellis.dev/rewrite-app-probes: \"false\" first): {commands}; or use exec probes, or set the namespace PERMISSIVE ({MTLS_KEY})"
                    ),
                )
                .detail(listed),
            )
        }
        Fetched::Missing => None,
        other => unreadable("meshed pods", other),
    }
}
