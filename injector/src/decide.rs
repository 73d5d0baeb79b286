//! Whether a pod gets the mesh: a pure function of the pod, its namespace and which webhook
//! path the API server called. No I/O, no configuration beyond the control plane's namespace.
//!
//! The rules (docs/design.md, issue "injector"): a pod is injected when its namespace has the label
//! `trellis-injection=enabled` unless it says `trellis.dev/inject: "disabled"`, or when it says
//! `"enabled"` in any namespace but the control plane's; never when it is already injected or
//! uses the host's network.
//!
//! The request does not carry the namespace's labels. Instead of looking them up, the chart
//! registers two webhooks that differ only in their `namespaceSelector` and path, and the path
//! tells this module which one matched (see [`NamespaceScope`] and the crate's "# Layout").

use k8s_openapi::api::core::v1::Pod;

use crate::{
    annotations::{self, InjectRequest},
    containers,
};

/// Which webhook called: what the API server already knows about the namespace's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceScope {
    /// `POST /inject`: the webhook whose `namespaceSelector` is `trellis-injection=enabled`.
    /// Pods are injected unless they opt out.
    Labelled,
    /// `POST /inject-opt-in`: the webhook for every other namespace. Only pods annotated
    /// `trellis.dev/inject: "enabled"` are injected.
    OptInOnly,
}

/// The outcome of [`decide`], with the reason when the pod is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Add the init step and the proxy.
    Inject,
    /// The namespace is not labelled and the pod did not opt in.
    NamespaceNotLabelled,
    /// The pod says `trellis.dev/inject: "disabled"`.
    PodOptedOut,
    /// The pod already has `trellis.dev/injected` or a `trellis-proxy` container (a reinvoked
    /// webhook, or a pod copied from an injected one).
    AlreadyInjected,
    /// The pod asked for (or its namespace implies) injection but uses the host's network:
    /// its iptables rules would be the node's.
    HostNetwork,
    /// The pod asked for (or its namespace implies) injection but lives in the control plane's
    /// namespace, which is never meshed (the control plane issues the mesh's certificates).
    ControlPlaneNamespace,
}

impl Decision {
    /// A stable, lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inject => "inject",
            Self::NamespaceNotLabelled => "namespace-not-labelled",
            Self::PodOptedOut => "pod-opted-out",
            Self::AlreadyInjected => "already-injected",
            Self::HostNetwork => "host-network",
            Self::ControlPlaneNamespace => "control-plane-namespace",
        }
    }

    /// The admission warning for the user when the pod wanted the mesh but cannot have it.
    /// `None` for deliberate outcomes (opted out, not in scope, already injected).
    pub fn warning(self) -> Option<&'static str> {
        match self {
            Self::HostNetwork => Some(
                "trellis: pod not injected: hostNetwork pods cannot be meshed (their traffic rules would be the node's)",
            ),
            Self::ControlPlaneNamespace => Some(
                "trellis: pod not injected: the Trellis control plane's namespace is never meshed",
            ),
            Self::Inject
            | Self::NamespaceNotLabelled
            | Self::PodOptedOut
            | Self::AlreadyInjected => None,
        }
    }
}

/// Decides whether to inject `pod`, created in `namespace`, as seen by the webhook of
/// `scope`. Rules are checked in this order, so that a warning is only given for a pod that
/// was in scope: already injected, opted out, not in scope, control plane namespace, host
/// network.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    scope: NamespaceScope,
    control_plane_namespace: &str,
) -> Decision {
    if is_injected(pod) {
        return Decision::AlreadyInjected;
    }
    match (annotations::inject_request(pod), scope) {
        (InjectRequest::Disabled, _) => return Decision::PodOptedOut,
        (InjectRequest::Enabled, _) => {}
        (InjectRequest::Unset | InjectRequest::Unrecognised(_), NamespaceScope::Labelled) => {}
        (InjectRequest::Unset | InjectRequest::Unrecognised(_), NamespaceScope::OptInOnly) => {
            return Decision::NamespaceNotLabelled;
        }
    }
    if namespace == control_plane_namespace {
        return Decision::ControlPlaneNamespace;
    }
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
    {
        return Decision::HostNetwork;
    }
    Decision::Inject
}

/// Whether `pod` already carries the mesh: the annotation, or the proxy by name in either
/// container list (the annotation may have been stripped by a copy).
pub fn is_injected(pod: &Pod) -> bool {
    if annotations::get(pod, annotations::INJECTED).is_some() {
        return true;
    }
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == containers::PROXY_NAME)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    use super::*;
    use crate::annotations::{INJECT, INJECTED};

    const CP: &str = "trellis-system";

    struct Case {
        name: &'static str,
        namespace: &'static str,
        scope: NamespaceScope,
        annotations: &'static [(&'static str, &'static str)],
        host_network: bool,
        proxy_init_container: bool,
        expected: Decision,
    }

    const fn case(
        name: &'static str,
        namespace: &'static str,
        scope: NamespaceScope,
        annotations: &'static [(&'static str, &'static str)],
        expected: Decision,
    ) -> Case {
        Case {
            name,
            namespace,
            scope,
            annotations,
            host_network: false,
            proxy_init_container: false,
            expected,
        }
    }

    fn pod(case: &Case) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(
            case.annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        let mut spec = PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ..Container::default()
            }],
            host_network: Some(case.host_network),
            ..PodSpec::default()
        };
        if case.proxy_init_container {
            spec.init_containers = Some(vec![Container {
                name: containers::PROXY_NAME.into(),
                ..Container::default()
            }]);
        }
        pod.spec = Some(spec);
        pod
    }

    #[test]
    fn decisions_follow_the_injection_rules() {
        use Decision::*;
        use NamespaceScope::*;
        let cases = [
            case(
                "labelled namespace, no annotation",
                "shop",
                Labelled,
                &[],
                Inject,
            ),
            case(
                "labelled namespace, opted in",
                "shop",
                Labelled,
                &[(INJECT, "enabled")],
                Inject,
            ),
            case(
                "labelled namespace, opted out",
                "shop",
                Labelled,
                &[(INJECT, "disabled")],
                PodOptedOut,
            ),
            case(
                "labelled namespace, unknown value",
                "shop",
                Labelled,
                &[(INJECT, "false")],
                Inject,
            ),
            case(
                "unlabelled namespace, no annotation",
                "shop",
                OptInOnly,
                &[],
                NamespaceNotLabelled,
            ),
            case(
                "unlabelled namespace, opted in",
                "shop",
                OptInOnly,
                &[(INJECT, "enabled")],
                Inject,
            ),
            case(
                "unlabelled namespace, opted out",
                "shop",
                OptInOnly,
                &[(INJECT, "disabled")],
                PodOptedOut,
            ),
            case(
                "unlabelled namespace, unknown value",
                "shop",
                OptInOnly,
                &[(INJECT, "yes")],
                NamespaceNotLabelled,
            ),
            case(
                "control plane namespace, labelled",
                CP,
                Labelled,
                &[],
                ControlPlaneNamespace,
            ),
            case(
                "control plane namespace, opted in",
                CP,
                OptInOnly,
                &[(INJECT, "enabled")],
                ControlPlaneNamespace,
            ),
            case(
                "control plane namespace, not in scope",
                CP,
                OptInOnly,
                &[],
                NamespaceNotLabelled,
            ),
            case(
                "already injected",
                "shop",
                Labelled,
                &[(INJECTED, "true")],
                AlreadyInjected,
            ),
            case(
                "already injected, opted in",
                "shop",
                OptInOnly,
                &[(INJECT, "enabled"), (INJECTED, "true")],
                AlreadyInjected,
            ),
            Case {
                host_network: true,
                ..case("host network, labelled", "shop", Labelled, &[], HostNetwork)
            },
            Case {
                host_network: true,
                ..case(
                    "host network, opted in",
                    "shop",
                    OptInOnly,
                    &[(INJECT, "enabled")],
                    HostNetwork,
                )
            },
            Case {
                host_network: true,
                ..case(
                    "host network, opted out",
                    "shop",
                    Labelled,
                    &[(INJECT, "disabled")],
                    PodOptedOut,
                )
            },
            Case {
                proxy_init_container: true,
                ..case(
                    "proxy present without annotation",
                    "shop",
                    Labelled,
                    &[],
                    AlreadyInjected,
                )
            },
        ];
        for c in &cases {
            assert_eq!(
                decide(&pod(c), c.namespace, c.scope, CP),
                c.expected,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn only_blocked_wishes_carry_a_warning() {
        assert!(Decision::HostNetwork.warning().is_some());
        assert!(Decision::ControlPlaneNamespace.warning().is_some());
        for d in [
            Decision::Inject,
            Decision::NamespaceNotLabelled,
            Decision::PodOptedOut,
            Decision::AlreadyInjected,
        ] {
            assert!(d.warning().is_none(), "{d:?}");
        }
    }

    #[test]
    fn a_pod_without_spec_is_not_injected_already() {
        assert!(!is_injected(&Pod::default()));
    }
}
