//! The checks of `trellis check`, as pure functions from gathered facts to ✔/‼/✘ outcomes
//! with hints. [`evaluate_cluster`] and [`evaluate_local`] run them in order; the I/O that
//! gathers the facts lives in [`super::cluster`] and [`super::local`].
//!
//! | module | checks |
//! |---|---|
//! | [`install`] | API server, CRD, Deployments, webhook and its caBundle |
//! | [`identity`] | root and intermediate expiry, the control plane's TLS identity and health |
//! | [`data_plane`] | labelled namespaces, pods not injected yet, app probes STRICT refuses |

mod data_plane;
mod identity;
mod install;

pub use data_plane::*;
pub use identity::*;
pub use install::*;

use std::time::{Duration, SystemTime};

use super::facts::{ClusterFacts, LocalFacts};
use super::report::{Outcome, Section};
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
    data_plane.extend(plaintext_probes(&f.plaintext_probes));
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

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests;
