//! Is Trellis installed: the API server answers, the CRD is served, the Deployments are
//! available, the webhook is registered with the caBundle the injector's certificate chains to.

use super::{CONTROL_PLANE, CRD, INJECTOR_SECRET, WEBHOOK, unreadable};
use crate::check::facts::{CrdFacts, DeploymentFacts, SecretFacts, WebhookFacts};
use crate::check::report::Outcome;
use crate::kube_access::Fetched;

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
