//! What the injection adds to a pod, as Kubernetes types: the `trellis-init` init container
//! (`trellis-proxy init`, the iptables step), the `trellis-proxy` container (`trellis-proxy
//! run`) in either layout, and the projected token volume. Flags and environment follow
//! ARCHITECTURE.md "Contracts between parts".
//!
//! Where these go in the pod, and the JSON Patch that puts them there, is [`crate::patch`].

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
        Lifecycle, LifecycleHandler, ObjectFieldSelector, Probe, ProjectedVolumeSource,
        ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection,
        Volume, VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use trellis_telemetry::LogFormat;

use crate::{
    annotations::PodOverrides,
    config::{InjectConfig, ProxyResources},
    quantity::Quantity,
};

/// Name of the init container that installs the traffic redirection.
pub const INIT_NAME: &str = "trellis-init";
/// Name of the proxy container.
pub const PROXY_NAME: &str = "trellis-proxy";
/// Name of the projected token volume.
pub const TOKEN_VOLUME: &str = "trellis-token";
/// Where the token volume is mounted in the proxy.
pub const TOKEN_DIR: &str = "/var/run/secrets/trellis/tokens";
/// File name of the token inside [`TOKEN_DIR`].
pub const TOKEN_PATH: &str = "trellis-token";
/// Audience of the projected ServiceAccount token: the CA checks it with a TokenReview.
pub const TOKEN_AUDIENCE: &str = "trellis-ca";
/// Lifetime the kubelet gives the token (it refreshes it at 80 %).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// UID and GID of the proxy; the init step leaves this UID's traffic alone.
pub const PROXY_UID: i64 = 1337;
/// The mTLS tunnel port.
pub const TUNNEL_PORT: i32 = 15008;
/// The proxy's health and metrics port on the pod IP.
pub const HEALTH_PORT: i32 = 15020;
/// The proxy's readiness path on [`HEALTH_PORT`].
pub const READY_PATH: &str = "/ready";

/// Where the proxy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyLayout {
    /// An init container with `restartPolicy: Always` (Kubernetes ≥ 1.29): started, and
    /// probed ready, before any application container; stopped after them.
    NativeSidecar,
    /// The first regular container, whose `postStart` hook (`trellis-proxy wait`) holds the
    /// kubelet from starting the next container until the proxy is ready.
    FirstContainer,
}

impl ProxyLayout {
    /// The layout the configuration asks for.
    pub fn of(config: &InjectConfig) -> Self {
        if config.native_sidecars {
            Self::NativeSidecar
        } else {
            Self::FirstContainer
        }
    }
}

/// The requests and limits of the injected containers: the configured ones, with the pod's
/// annotations replacing the requests; a configured limit below a pod's request is raised to it
/// (otherwise the API server would refuse the pod).
pub fn resources(config: &ProxyResources, overrides: &PodOverrides) -> ResourceRequirements {
    let cpu = overrides.proxy_cpu.as_ref().unwrap_or(&config.cpu_request);
    let memory = overrides
        .proxy_memory
        .as_ref()
        .unwrap_or(&config.memory_request);
    let limit = |limit: &Option<Quantity>, request: &Quantity| {
        limit
            .as_ref()
            .map(|l| if l < request { request } else { l }.to_k8s())
    };
    let mut limits = BTreeMap::new();
    if let Some(l) = limit(&config.cpu_limit, cpu) {
        limits.insert("cpu".to_owned(), l);
    }
    if let Some(l) = limit(&config.memory_limit, memory) {
        limits.insert("memory".to_owned(), l);
    }
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), cpu.to_k8s()),
            ("memory".to_owned(), memory.to_k8s()),
        ])),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    }
}

/// `trellis-init`: `trellis-proxy init` as root with NET_ADMIN and NET_RAW only (iptables needs
/// both), everything else dropped, no privilege escalation, read-only root filesystem.
pub fn init_container(
    config: &InjectConfig,
    overrides: &PodOverrides,
    resources: ResourceRequirements,
) -> Container {
    let uid = PROXY_UID.to_string();
    let mut args = vec![
        "init".to_owned(),
        "--proxy-uid".to_owned(),
        uid.clone(),
        "--proxy-gid".to_owned(),
        uid,
    ];
    if !overrides.exclude_inbound_ports.is_empty() {
        args.push("--exclude-inbound-ports".to_owned());
        args.push(overrides.exclude_inbound_ports.to_string());
    }
    if !overrides.exclude_outbound_ports.is_empty() {
        args.push("--exclude-outbound-ports".to_owned());
        args.push(overrides.exclude_outbound_ports.to_string());
    }
    if !overrides.exclude_outbound_cidrs.is_empty() {
        args.push("--exclude-outbound-cidrs".to_owned());
        args.push(overrides.exclude_outbound_cidrs.join(","));
    }
    Container {
        name: INIT_NAME.to_owned(),
        image: Some(config.init_image.clone()),
        command: Some(vec![PROXY_NAME.to_owned()]),
        args: Some(args),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// `trellis-proxy`: `trellis-proxy run` as 1337, locked down, with its ports, probes, token and
/// the environment of ARCHITECTURE.md, in the given layout.
pub fn proxy_container(
    config: &InjectConfig,
    overrides: &PodOverrides,
    resources: ResourceRequirements,
    layout: ProxyLayout,
) -> Container {
    let mut container = Container {
        name: PROXY_NAME.to_owned(),
        image: Some(config.proxy_image.clone()),
        command: Some(vec![PROXY_NAME.to_owned()]),
        args: Some(vec!["run".to_owned()]),
        env: Some(proxy_env(config, overrides)),
        ports: Some(vec![
            port("trellis-tunnel", TUNNEL_PORT),
            port("trellis-health", HEALTH_PORT),
        ]),
        readiness_probe: Some(ready_probe(2, 3)),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".to_owned()]),
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.to_owned(),
            mount_path: TOKEN_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    match layout {
        ProxyLayout::NativeSidecar => {
            container.restart_policy = Some("Always".to_owned());
            // Polled every second for up to 10 minutes; the kubelet starts the next
            // container only once this passes.
            container.startup_probe = Some(ready_probe(1, 600));
        }
        ProxyLayout::FirstContainer => {
            container.lifecycle = Some(Lifecycle {
                post_start: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(vec![PROXY_NAME.to_owned(), "wait".to_owned()]),
                    }),
                    ..LifecycleHandler::default()
                }),
                ..Lifecycle::default()
            });
        }
    }
    container
}

/// The projected volume with the ServiceAccount token for the CA (audience `trellis-ca`).
pub fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.to_owned()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: TOKEN_PATH.to_owned(),
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// glibc's allocator settings for the sidecar (`GLIBC_TUNABLES`): the ones `trellis-proxy run`
/// would otherwise restart itself with (its `malloc_tuning` module says why). Set here so the
/// sidecar starts with them at once and the pod spec shows them.
pub const PROXY_GLIBC_TUNABLES: &str =
    "glibc.malloc.trim_threshold=4194304:glibc.malloc.mmap_threshold=1048576";

fn proxy_env(config: &InjectConfig, overrides: &PodOverrides) -> Vec<EnvVar> {
    let log = overrides.log_level.as_deref().unwrap_or(&config.proxy_log);
    let log_format = match config.proxy_log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    vec![
        value("TRELLIS_CONTROL_PLANE", &config.control_plane),
        value(
            "TRELLIS_CONTROL_PLANE_ID",
            &config.control_plane_id.to_string(),
        ),
        value("TRELLIS_LOG", log),
        value("TRELLIS_LOG_FORMAT", log_format),
        value("TRELLIS_TRUST_DOMAIN", config.trust_domain.as_str()),
        value("TRELLIS_TRUST_BUNDLE", &config.trust_bundle_pem),
        value("TRELLIS_TOKEN_FILE", &format!("{TOKEN_DIR}/{TOKEN_PATH}")),
        value("TRELLIS_MODE", "transparent"),
        value("GLIBC_TUNABLES", PROXY_GLIBC_TUNABLES),
        field("TRELLIS_POD_NAME", "metadata.name"),
        field("TRELLIS_POD_NAMESPACE", "metadata.namespace"),
        field("TRELLIS_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field("TRELLIS_POD_IP", "status.podIP"),
    ]
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn ready_probe(period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(READY_PATH.to_owned()),
            port: IntOrString::Int(HEALTH_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InjectConfig {
        let mut c = InjectConfig::with_defaults("proxy:1", "PEM", true);
        c.resources.memory_limit = Some("256Mi".parse().unwrap());
        c
    }

    #[test]
    fn pod_requests_replace_defaults_and_raise_a_lower_limit() {
        let overrides = PodOverrides {
            proxy_cpu: Some("250m".parse().unwrap()),
            proxy_memory: Some("512Mi".parse().unwrap()),
            ..PodOverrides::default()
        };
        let r = resources(&config().resources, &overrides);
        let requests = r.requests.unwrap();
        assert_eq!(requests["cpu"].0, "250m");
        assert_eq!(requests["memory"].0, "512Mi");
        let limits = r.limits.unwrap();
        assert_eq!(limits["memory"].0, "512Mi");
        assert!(!limits.contains_key("cpu"));
    }

    #[test]
    fn defaults_apply_without_annotations() {
        let r = resources(&config().resources, &PodOverrides::default());
        assert_eq!(r.requests.unwrap()["cpu"].0, "100m");
        assert_eq!(r.limits.unwrap()["memory"].0, "256Mi");
    }

    fn env_of(c: &Container) -> BTreeMap<String, String> {
        c.env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    }

    #[test]
    fn the_proxy_is_told_the_control_plane_identity_and_its_log_settings() {
        let mut c = config();
        c.control_plane = "trellis-control-plane.mesh-system.svc:15012".into();
        c.control_plane_id = trellis_ca::SpiffeId::parse(
            "spiffe://cluster.local/ns/mesh-system/sa/trellis-control-plane",
        )
        .unwrap();
        c.proxy_log = "warn".into();
        c.proxy_log_format = LogFormat::Json;
        let resources = ResourceRequirements::default();
        let plain = proxy_container(
            &c,
            &PodOverrides::default(),
            resources.clone(),
            ProxyLayout::NativeSidecar,
        );
        let env = env_of(&plain);
        assert_eq!(
            env["TRELLIS_CONTROL_PLANE"],
            "trellis-control-plane.mesh-system.svc:15012"
        );
        assert_eq!(
            env["TRELLIS_CONTROL_PLANE_ID"],
            "spiffe://cluster.local/ns/mesh-system/sa/trellis-control-plane"
        );
        assert_eq!(env["TRELLIS_LOG"], "warn");
        assert_eq!(env["TRELLIS_LOG_FORMAT"], "json");
        assert_eq!(env["GLIBC_TUNABLES"], PROXY_GLIBC_TUNABLES);

        let debug = PodOverrides {
            log_level: Some("info,trellis_proxy=debug".into()),
            ..PodOverrides::default()
        };
        let annotated = proxy_container(&c, &debug, resources, ProxyLayout::FirstContainer);
        assert_eq!(
            env_of(&annotated)["TRELLIS_LOG"],
            "info,trellis_proxy=debug"
        );
    }

    #[test]
    fn init_flags_only_name_given_exclusions() {
        let c = config();
        let mut overrides = PodOverrides::default();
        let plain = init_container(&c, &overrides, ResourceRequirements::default());
        assert_eq!(
            plain.args.unwrap(),
            ["init", "--proxy-uid", "1337", "--proxy-gid", "1337"]
        );
        overrides.exclude_outbound_ports =
            crate::annotations::PortList::parse("5432, 6379").unwrap();
        let args = init_container(&c, &overrides, ResourceRequirements::default())
            .args
            .unwrap();
        assert_eq!(args[5..], ["--exclude-outbound-ports", "5432,6379"]);
        overrides.exclude_outbound_cidrs = vec!["10.0.0.0/8".into(), "fd00::/8".into()];
        let args = init_container(&c, &overrides, ResourceRequirements::default())
            .args
            .unwrap();
        assert_eq!(
            args[7..],
            ["--exclude-outbound-cidrs", "10.0.0.0/8,fd00::/8"]
        );
    }
}
