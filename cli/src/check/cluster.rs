//! Gathering the facts of `trellis check` from a cluster: the API server, the chart's objects
//! (CRD, Deployments, webhook, Secret), the control plane's gRPC health through a port-forward
//! to one of its pods, the labelled namespaces with their not-yet-injected pods, and meshed
//! pods of STRICT namespaces with app probes that are not rewritten.
//!
//! Owns: the API calls. Every read is sorted into found / missing / denied / failed and passed
//! on; what that means is decided in [`super::rules`].

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client};
use trellis_ca::{SpiffeId, TrustDomain};
use trellis_injector::annotations::{APP_PROBES, MESH_LABEL};
use trellis_injector::{Decision, NamespaceScope};

use super::facts::{
    ClusterFacts, CrdFacts, DeploymentFacts, Owner, PlaintextProbes, PodRef, ProbeFacts,
    SecretFacts, WebhookFacts,
};
use super::probe_facts;
use super::rules::{
    CONTROL_PLANE, CRD, INJECTION_LABEL, INJECTOR, INJECTOR_SECRET, MTLS_KEY, WEBHOOK, is_strict,
};
use crate::dial::Target;
use crate::kube_access::{self, Fetched, fetch, fetch_value};
use crate::{health_probe, x509};

/// The control plane's gRPC port.
const GRPC_PORT: u16 = 15012;
/// Selects the control plane's pods (chart: `trellis.selectorLabels`).
pub const CONTROL_PLANE_SELECTOR: &str = "app.kubernetes.io/name=trellis-control-plane";
/// The default trust domain (docs/design.md).
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Reads everything `trellis check` judges. `trust_domain` overrides the one read from the
/// control plane's `--trust-domain` argument.
pub async fn gather(
    client: Client,
    namespace: &str,
    trust_domain: Option<TrustDomain>,
) -> ClusterFacts {
    let api =
        match tokio::time::timeout(kube_access::CALL_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(info)) => Ok(info.git_version),
            Ok(Err(e)) => Err(kube_access::describe(&e)),
            Err(_) => Err(format!("no answer within {:?}", kube_access::CALL_TIMEOUT)),
        };
    if api.is_err() {
        fn skipped<T>() -> Fetched<T> {
            Fetched::Failed("not checked: the API server is unreachable".into())
        }
        return ClusterFacts {
            api,
            namespace: namespace.to_owned(),
            crd: skipped(),
            control_plane: skipped(),
            injector: skipped(),
            webhook: skipped(),
            injector_secret: skipped(),
            roots: None,
            probe: ProbeFacts::Skipped("the API server is unreachable".into()),
            namespaces: skipped(),
            uninjected: skipped(),
            plaintext_probes: skipped(),
        };
    }

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = fetch(crds.get_opt(CRD)).await.map(|c| CrdFacts {
        established: c
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"),
    });

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let control_plane = fetch(deployments.get_opt(CONTROL_PLANE)).await;
    let trust_domain = trust_domain
        .or_else(|| control_plane.found().and_then(trust_domain_arg))
        .or_else(|| TrustDomain::new(DEFAULT_TRUST_DOMAIN).ok());
    let mesh_strict = control_plane.found().is_none_or(mesh_default_strict);
    let control_plane = control_plane.map(|d| deployment_facts(&d));
    let injector = fetch(deployments.get_opt(INJECTOR))
        .await
        .map(|d| deployment_facts(&d));

    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let webhook = fetch(webhooks.get_opt(WEBHOOK))
        .await
        .map(|w| WebhookFacts {
            webhooks: w
                .webhooks
                .unwrap_or_default()
                .into_iter()
                .map(|h| {
                    (
                        h.name,
                        h.client_config.ca_bundle.map(|b| b.0).unwrap_or_default(),
                    )
                })
                .collect(),
        });
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let injector_secret = fetch(secrets.get_opt(INJECTOR_SECRET))
        .await
        .map(|s| SecretFacts {
            ca_crt: s.data.and_then(|mut d| d.remove("ca.crt")).map(|b| b.0),
        });

    // The mesh roots: the caBundle the control plane wrote, else the Secret's ca.crt.
    let from_webhook = webhook
        .found()
        .and_then(|w| w.webhooks.first())
        .filter(|(_, b)| !b.is_empty())
        .map(|(_, b)| ("the webhook's caBundle".to_owned(), b.clone()));
    let from_secret = injector_secret
        .found()
        .and_then(|s| s.ca_crt.clone())
        .map(|b| (format!("Secret {INJECTOR_SECRET} ca.crt"), b));
    let parsed = from_webhook.or(from_secret).map(|(source, pem)| {
        let parsed = match &trust_domain {
            Some(td) => x509::roots(td, &pem),
            None => Err("no usable trust domain".to_owned()),
        };
        (source, parsed)
    });

    let probe = match (&parsed, &trust_domain) {
        (Some((_, Ok((bundle, _)))), Some(td)) => {
            probe_control_plane(&client, namespace, td, bundle.clone()).await
        }
        _ => ProbeFacts::Skipped("no usable mesh root to verify the control plane with".into()),
    };
    let roots = parsed.map(|(source, r)| (source, r.map(|(_, summary)| summary)));

    let namespaces_api: Api<Namespace> = Api::all(client.clone());
    let namespaces =
        fetch_value(namespaces_api.list_metadata(&ListParams::default().labels(INJECTION_LABEL)))
            .await
            .map(|list| {
                let mut names: Vec<String> = list
                    .items
                    .into_iter()
                    .filter_map(|n| n.metadata.name)
                    .collect();
                names.sort();
                names
            });
    let uninjected = match namespaces.found() {
        Some(names) => uninjected_pods(&client, names, namespace).await,
        None => Fetched::Missing,
    };
    let plaintext_probes = plaintext_probes(&client, mesh_strict).await;

    ClusterFacts {
        api,
        namespace: namespace.to_owned(),
        crd,
        control_plane,
        injector,
        webhook,
        injector_secret,
        roots,
        probe,
        namespaces,
        uninjected,
        plaintext_probes,
    }
}

fn deployment_facts(d: &Deployment) -> DeploymentFacts {
    DeploymentFacts {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        available: d
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
    }
}

/// The control plane container's `--trust-domain=...` argument, as the chart sets it.
fn trust_domain_arg(d: &Deployment) -> Option<TrustDomain> {
    let spec = d.spec.as_ref()?.template.spec.as_ref()?;
    spec.containers
        .iter()
        .flat_map(|c| c.args.iter().flatten())
        .find_map(|a| a.strip_prefix("--trust-domain="))
        .and_then(|td| TrustDomain::new(td).ok())
}

/// Whether the mesh's default mode is STRICT: the control plane's `--mtls-mode=` argument as
/// the chart sets it; STRICT (its default) when absent.
fn mesh_default_strict(d: &Deployment) -> bool {
    let Some(spec) = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return true;
    };
    spec.containers
        .iter()
        .flat_map(|c| c.args.iter().flatten())
        .find_map(|a| a.strip_prefix("--mtls-mode="))
        .is_none_or(|mode| !mode.eq_ignore_ascii_case("permissive"))
}

/// Port-forwards to a ready control plane pod's 15012 and asks for its health.
async fn probe_control_plane(
    client: &Client,
    namespace: &str,
    td: &TrustDomain,
    bundle: trellis_ca::TrustBundle,
) -> ProbeFacts {
    let expected = match SpiffeId::for_service_account(td, namespace, CONTROL_PLANE) {
        Ok(id) => id,
        Err(e) => return ProbeFacts::Skipped(format!("no control plane identity: {e}")),
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let name = match kube_access::ready_pod(&pods, CONTROL_PLANE_SELECTOR).await {
        Fetched::Found(Some(name)) => name,
        Fetched::Found(None) | Fetched::Missing => {
            return ProbeFacts::Skipped(format!(
                "no ready control plane pod ({CONTROL_PLANE_SELECTOR}) in namespace {namespace}"
            ));
        }
        Fetched::Denied(reason) | Fetched::Failed(reason) => {
            return ProbeFacts::Skipped(format!("cannot list the control plane's pods: {reason}"));
        }
    };
    let target = Target::PodPort {
        pods: Box::new(pods),
        namespace: namespace.to_owned(),
        name,
        port: GRPC_PORT,
    };
    let roots = bundle.roots().to_vec();
    probe_facts(health_probe::probe(target, bundle, expected).await, &roots)
}

/// Pods of `namespaces` that the injector would mesh but that carry no proxy; finished pods
/// (Succeeded, Failed) are left out.
async fn uninjected_pods(
    client: &Client,
    namespaces: &[String],
    control_plane_namespace: &str,
) -> Fetched<Vec<PodRef>> {
    let mut out = Vec::new();
    for ns in namespaces {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let list = match fetch_value(pods.list(&ListParams::default())).await {
            Fetched::Found(list) => list,
            Fetched::Missing => continue,
            Fetched::Denied(m) => return Fetched::Denied(m),
            Fetched::Failed(m) => return Fetched::Failed(m),
        };
        for pod in &list.items {
            let decision = trellis_injector::decide::decide(
                pod,
                ns,
                NamespaceScope::Labelled,
                control_plane_namespace,
            );
            if !finished(pod) && decision == Decision::Inject {
                out.push(pod_ref(ns, pod));
            }
        }
    }
    Fetched::Found(out)
}

/// Meshed pods (label `trellis.dev/mesh=true`, every namespace) in STRICT namespaces whose app
/// probes kubelet sends in plaintext; finished pods are left out.
async fn plaintext_probes(client: &Client, mesh_strict: bool) -> Fetched<Vec<PlaintextProbes>> {
    let pods: Api<Pod> = Api::all(client.clone());
    let selector = format!("{MESH_LABEL}=true");
    let list = match fetch_value(pods.list(&ListParams::default().labels(&selector))).await {
        Fetched::Found(list) => list,
        Fetched::Missing => return Fetched::Missing,
        Fetched::Denied(m) => return Fetched::Denied(m),
        Fetched::Failed(m) => return Fetched::Failed(m),
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut strict: BTreeMap<String, bool> = BTreeMap::new();
    let mut out = Vec::new();
    for pod in &list.items {
        let Some(spec) = pod.spec.as_ref().filter(|_| !finished(pod)) else {
            continue;
        };
        let probes = trellis_injector::probes::plaintext_probes(spec);
        if probes.is_empty() {
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        if !strict.contains_key(&ns) {
            // Unreadable namespace: the mesh's default.
            let meta = fetch(namespaces.get_metadata_opt(&ns)).await;
            let meta = meta.found().map(|n| &n.metadata);
            let is = is_strict(
                mtls_value(meta.and_then(|m| m.annotations.as_ref())),
                mtls_value(meta.and_then(|m| m.labels.as_ref())),
                mesh_strict,
            );
            strict.insert(ns.clone(), is);
        }
        if strict.get(&ns).copied().unwrap_or(mesh_strict) {
            out.push(PlaintextProbes {
                pod: pod_ref(&ns, pod),
                probes,
                marker: trellis_injector::annotations::get(pod, APP_PROBES).map(str::to_owned),
            });
        }
    }
    Fetched::Found(out)
}

/// The `trellis.dev/mtls` entry of a label or annotation map.
fn mtls_value(map: Option<&BTreeMap<String, String>>) -> Option<&str> {
    map.and_then(|m| m.get(MTLS_KEY)).map(String::as_str)
}

/// A pod that has run to its end (Succeeded, Failed): nothing to fix there.
fn finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
}

fn pod_ref(ns: &str, pod: &Pod) -> PodRef {
    let meta = &pod.metadata;
    PodRef {
        namespace: ns.to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        owner: meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| Owner {
                kind: o.kind.clone(),
                name: o.name.clone(),
            }),
        template_hash: meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash").cloned()),
    }
}
