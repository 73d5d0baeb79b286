//! The data plane: which namespaces ask for the mesh, and which of their pods do not have it
//! yet.

use super::{INJECTION_LABEL, plural, unreadable};
use crate::check::facts::PodRef;
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
