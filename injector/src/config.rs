//! The injector's configuration: command-line flags (each also an environment variable),
//! validated into typed values before any port is bound, and the [`InjectConfig`] the patch
//! builder reads. Defaults live here, once, and match docs/design.md.
//!
//! Loading the files the flags name (serving certificate, trust bundle) is [`crate::reload`]'s
//! job; asking the API server for its version is [`crate::apiserver`]'s.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use serde_json::json;
use trellis_ca::{SpiffeId, TrustDomain};
use trellis_telemetry::{LogArgs, LogFormat, check_filter};

use crate::quantity::Quantity;

/// Default listen address: the webhook port of docs/design.md.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:15017";
/// Default control plane address, as the proxy's own default (ARCHITECTURE.md).
pub const DEFAULT_CONTROL_PLANE: &str = "trellis-control-plane.trellis-system.svc:15012";
/// Default control plane namespace: never injected.
pub const DEFAULT_CONTROL_PLANE_NAMESPACE: &str = "trellis-system";
/// The control plane's service account: with its namespace, the identity proxies check.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "trellis-control-plane";
/// Default log filter of the proxies (`TRELLIS_LOG`); a pod overrides it with
/// `trellis.dev/log-level`.
pub const DEFAULT_PROXY_LOG: &str = "info";
/// Default trust domain (docs/design.md "Identity").
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Default CPU request of the proxy (and of the init step).
pub const DEFAULT_PROXY_CPU_REQUEST: &str = "100m";
/// Default memory request of the proxy (and of the init step).
pub const DEFAULT_PROXY_MEMORY_REQUEST: &str = "128Mi";

/// Where the proxy goes in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecars {
    /// Ask the API server's `/version` at start: native sidecars from 1.29 on.
    Auto,
    /// Always a native sidecar (every node must run kubelet ≥ 1.29).
    On,
    /// Always the first regular container, holding the application until the proxy is ready.
    Off,
}

/// `trellis-injector`: the Trellis mutating admission webhook.
///
/// Serves `POST /inject` (namespaces labelled `trellis-injection=enabled`),
/// `POST /inject-opt-in` (every other namespace: only pods annotated
/// `trellis.dev/inject: "enabled"`), `GET /healthz` and `GET /config_dump` over HTTPS.
#[derive(Debug, Clone, Parser)]
#[command(name = "trellis-injector", version)]
pub struct Config {
    /// Address to listen on for the API server's HTTPS calls.
    #[arg(long, env = "TRELLIS_INJECTOR_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// PEM file with the serving certificate chain (leaf first). Written by the control plane
    /// (or mounted from a Secret); re-read when it changes.
    #[arg(long, env = "TRELLIS_INJECTOR_TLS_CERT_FILE")]
    pub tls_cert_file: PathBuf,

    /// PEM file with the serving certificate's private key (PKCS#8, SEC1 or PKCS#1).
    #[arg(long, env = "TRELLIS_INJECTOR_TLS_KEY_FILE")]
    pub tls_key_file: PathBuf,

    /// PEM file with the mesh's root certificate(s), handed to every proxy as
    /// `TRELLIS_TRUST_BUNDLE`. Re-read when it changes.
    #[arg(long, env = "TRELLIS_INJECTOR_TRUST_BUNDLE_FILE")]
    pub trust_bundle_file: PathBuf,

    /// How often to check the certificate, key and trust bundle files for changes, in seconds.
    #[arg(long, env = "TRELLIS_INJECTOR_RELOAD_INTERVAL_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reload_interval_seconds: u64,

    /// Image of the proxy sidecar (runs `trellis-proxy run`; `trellis-proxy` must be on PATH).
    #[arg(long, env = "TRELLIS_INJECTOR_PROXY_IMAGE")]
    pub proxy_image: String,

    /// Image of the init step (runs `trellis-proxy init`); the proxy image when not given.
    #[arg(long, env = "TRELLIS_INJECTOR_INIT_IMAGE")]
    pub init_image: Option<String>,

    /// CPU request of the proxy; a pod overrides it with `trellis.dev/proxy-cpu`.
    #[arg(long, env = "TRELLIS_INJECTOR_PROXY_CPU_REQUEST", default_value = DEFAULT_PROXY_CPU_REQUEST)]
    pub proxy_cpu_request: Quantity,

    /// Memory request of the proxy; a pod overrides it with `trellis.dev/proxy-memory`.
    #[arg(long, env = "TRELLIS_INJECTOR_PROXY_MEMORY_REQUEST", default_value = DEFAULT_PROXY_MEMORY_REQUEST)]
    pub proxy_memory_request: Quantity,

    /// CPU limit of the proxy (none when not given).
    #[arg(long, env = "TRELLIS_INJECTOR_PROXY_CPU_LIMIT")]
    pub proxy_cpu_limit: Option<Quantity>,

    /// Memory limit of the proxy (none when not given).
    #[arg(long, env = "TRELLIS_INJECTOR_PROXY_MEMORY_LIMIT")]
    pub proxy_memory_limit: Option<Quantity>,

    /// Control plane address (host:port) the proxies connect to (`TRELLIS_CONTROL_PLANE`).
    #[arg(long, env = "TRELLIS_INJECTOR_CONTROL_PLANE", default_value = DEFAULT_CONTROL_PLANE)]
    pub control_plane: String,

    /// SPIFFE ID the proxies require of the control plane (`TRELLIS_CONTROL_PLANE_ID`).
    /// Default: spiffe://<trust domain>/ns/<--control-plane-namespace>/sa/trellis-control-plane.
    #[arg(long, env = "TRELLIS_INJECTOR_CONTROL_PLANE_ID")]
    pub control_plane_id: Option<String>,

    /// Log filter of the proxies (`TRELLIS_LOG`); a pod overrides it with
    /// `trellis.dev/log-level`.
    #[arg(long, env = "TRELLIS_INJECTOR_PROXY_LOG", default_value = DEFAULT_PROXY_LOG)]
    pub proxy_log: String,

    /// Log format of the proxies (`TRELLIS_LOG_FORMAT`).
    #[arg(long, env = "TRELLIS_INJECTOR_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub proxy_log_format: LogFormat,

    /// Trust domain of the mesh's SPIFFE IDs.
    #[arg(long, env = "TRELLIS_INJECTOR_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: TrustDomain,

    /// Namespace of the control plane; its pods are never injected.
    #[arg(long, env = "TRELLIS_INJECTOR_CONTROL_PLANE_NAMESPACE", default_value = DEFAULT_CONTROL_PLANE_NAMESPACE)]
    pub control_plane_namespace: String,

    /// Put the proxy in a native sidecar (init container with restartPolicy Always):
    /// `auto` asks the API server's version at start (≥ 1.29).
    #[arg(long, env = "TRELLIS_INJECTOR_NATIVE_SIDECARS", value_enum, default_value_t = NativeSidecars::Auto)]
    pub native_sidecars: NativeSidecars,

    /// Rewrite app containers' HTTP, TCP and gRPC probes to the proxy's 15020 (so STRICT mTLS
    /// does not refuse kubelet); a pod overrides it with `trellis.dev/rewrite-app-probes`.
    #[arg(long, env = "TRELLIS_INJECTOR_REWRITE_APP_PROBES", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub rewrite_app_probes: bool,

    /// Most connections served at once; more wait to be accepted.
    #[arg(long, env = "TRELLIS_INJECTOR_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,

    /// The injector's own logs: `--log <filter>`, `--log-format text|json`.
    #[command(flatten)]
    pub log: LogArgs,
}

/// A flag whose value is well-formed for clap but unusable for the injector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An image flag is empty.
    #[error(
        "--{flag} is empty; expected an image reference like ghcr.io/trellis-mesh/trellis-proxy:0.1.0"
    )]
    EmptyImage {
        /// The flag.
        flag: &'static str,
    },
    /// `--control-plane` is not `host:port`.
    #[error("--control-plane {0:?} is not host:port (e.g. {DEFAULT_CONTROL_PLANE})")]
    ControlPlane(String),
    /// `--control-plane-id` is not a SPIFFE ID (or the default one cannot be formed).
    #[error(
        "--control-plane-id {value:?}: {reason}; expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
    )]
    ControlPlaneId {
        /// The value (or the default it would have).
        value: String,
        /// What is wrong with it.
        reason: trellis_ca::SpiffeIdError,
    },
    /// `--proxy-log` is not a usable log filter.
    #[error("--proxy-log: {0}")]
    ProxyLog(trellis_telemetry::FilterError),
    /// `--control-plane-namespace` is not a Kubernetes namespace name.
    #[error(
        "--control-plane-namespace {0:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
    )]
    Namespace(String),
    /// A limit is below its request: the API server would refuse every injected pod.
    #[error("--{limit_flag} {limit} is below --{request_flag} {request}")]
    LimitBelowRequest {
        /// The limit flag.
        limit_flag: &'static str,
        /// Its value.
        limit: String,
        /// The request flag.
        request_flag: &'static str,
        /// Its value.
        request: String,
    },
}

impl Config {
    /// Checks what clap cannot: images, addresses, names, limits against requests.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.proxy_image.trim().is_empty() {
            return Err(ConfigError::EmptyImage {
                flag: "proxy-image",
            });
        }
        if self
            .init_image
            .as_deref()
            .is_some_and(|i| i.trim().is_empty())
        {
            return Err(ConfigError::EmptyImage { flag: "init-image" });
        }
        if !is_host_port(&self.control_plane) {
            return Err(ConfigError::ControlPlane(self.control_plane.clone()));
        }
        if !is_dns_label(&self.control_plane_namespace) {
            return Err(ConfigError::Namespace(self.control_plane_namespace.clone()));
        }
        self.control_plane_id()?;
        check_filter(&self.proxy_log).map_err(ConfigError::ProxyLog)?;
        check_limit(
            "proxy-cpu-limit",
            self.proxy_cpu_limit.as_ref(),
            "proxy-cpu-request",
            &self.proxy_cpu_request,
        )?;
        check_limit(
            "proxy-memory-limit",
            self.proxy_memory_limit.as_ref(),
            "proxy-memory-request",
            &self.proxy_memory_request,
        )?;
        Ok(())
    }

    /// The identity proxies require of the control plane: `--control-plane-id`, or the
    /// control plane's service account in `--control-plane-namespace`.
    pub fn control_plane_id(&self) -> Result<SpiffeId, ConfigError> {
        let err = |value: String| {
            move |reason| ConfigError::ControlPlaneId {
                value: value.clone(),
                reason,
            }
        };
        match &self.control_plane_id {
            Some(text) => SpiffeId::parse(text).map_err(err(text.clone())),
            None => SpiffeId::for_service_account(
                &self.trust_domain,
                &self.control_plane_namespace,
                CONTROL_PLANE_SERVICE_ACCOUNT,
            )
            .map_err(err(format!(
                "(default for namespace {})",
                self.control_plane_namespace
            ))),
        }
    }

    /// How often the watched files are checked.
    pub fn reload_interval(&self) -> Duration {
        Duration::from_secs(self.reload_interval_seconds)
    }

    /// The settings for [`crate::patch`], given the trust bundle's PEM and the sidecar layout.
    pub fn inject_config(
        &self,
        trust_bundle_pem: String,
        native_sidecars: bool,
    ) -> Result<InjectConfig, ConfigError> {
        Ok(InjectConfig {
            init_image: self
                .init_image
                .clone()
                .unwrap_or_else(|| self.proxy_image.clone()),
            proxy_image: self.proxy_image.clone(),
            resources: ProxyResources {
                cpu_request: self.proxy_cpu_request.clone(),
                memory_request: self.proxy_memory_request.clone(),
                cpu_limit: self.proxy_cpu_limit.clone(),
                memory_limit: self.proxy_memory_limit.clone(),
            },
            control_plane: self.control_plane.clone(),
            control_plane_id: self.control_plane_id()?,
            trust_domain: self.trust_domain.clone(),
            trust_bundle_pem,
            control_plane_namespace: self.control_plane_namespace.clone(),
            native_sidecars,
            rewrite_app_probes: self.rewrite_app_probes,
            proxy_log: self.proxy_log.clone(),
            proxy_log_format: self.proxy_log_format,
        })
    }

    /// The configuration as JSON for the start-up log line and `/config_dump`. Nothing here
    /// is secret: the key is named by its path only.
    pub fn dump(&self) -> serde_json::Value {
        json!({
            "listen": self.listen.to_string(),
            "tlsCertFile": self.tls_cert_file,
            "tlsKeyFile": self.tls_key_file,
            "trustBundleFile": self.trust_bundle_file,
            "reloadIntervalSeconds": self.reload_interval_seconds,
            "proxyImage": self.proxy_image,
            "initImage": self.init_image.as_deref().unwrap_or(&self.proxy_image),
            "proxyCpuRequest": self.proxy_cpu_request.as_str(),
            "proxyMemoryRequest": self.proxy_memory_request.as_str(),
            "proxyCpuLimit": self.proxy_cpu_limit.as_ref().map(Quantity::as_str),
            "proxyMemoryLimit": self.proxy_memory_limit.as_ref().map(Quantity::as_str),
            "controlPlane": self.control_plane,
            "controlPlaneId": self.control_plane_id().map(|id| id.to_string()).ok(),
            "proxyLog": self.proxy_log,
            "proxyLogFormat": format!("{:?}", self.proxy_log_format).to_lowercase(),
            "trustDomain": self.trust_domain.as_str(),
            "controlPlaneNamespace": self.control_plane_namespace,
            "nativeSidecars": format!("{:?}", self.native_sidecars).to_lowercase(),
            "maxConnections": self.max_connections,
            "rewriteAppProbes": self.rewrite_app_probes,
        })
    }
}

/// Requests and limits of the injected containers.
#[derive(Debug, Clone)]
pub struct ProxyResources {
    /// CPU request, unless the pod says `trellis.dev/proxy-cpu`.
    pub cpu_request: Quantity,
    /// Memory request, unless the pod says `trellis.dev/proxy-memory`.
    pub memory_request: Quantity,
    /// CPU limit; raised to the request when a pod asks for more.
    pub cpu_limit: Option<Quantity>,
    /// Memory limit; raised to the request when a pod asks for more.
    pub memory_limit: Option<Quantity>,
}

/// Everything the patch builder needs, validated. Shared behind a `watch<Arc<_>>` so a new
/// trust bundle reaches the next review without a restart.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// Image of the `trellis-proxy` container.
    pub proxy_image: String,
    /// Image of the `trellis-init` container.
    pub init_image: String,
    /// Requests and limits of both containers.
    pub resources: ProxyResources,
    /// `TRELLIS_CONTROL_PLANE` of the proxy.
    pub control_plane: String,
    /// `TRELLIS_CONTROL_PLANE_ID` of the proxy: the identity the control plane must prove.
    pub control_plane_id: SpiffeId,
    /// `TRELLIS_TRUST_DOMAIN` of the proxy.
    pub trust_domain: TrustDomain,
    /// `TRELLIS_TRUST_BUNDLE` of the proxy: the PEM of the root(s) it trusts first.
    pub trust_bundle_pem: String,
    /// Pods of this namespace are never injected.
    pub control_plane_namespace: String,
    /// Proxy as a native sidecar (true) or as the first regular container (false).
    pub native_sidecars: bool,
    /// Rewrite app probes to the proxy unless the pod says otherwise.
    pub rewrite_app_probes: bool,
    /// `TRELLIS_LOG` of the proxy, unless the pod says `trellis.dev/log-level`.
    pub proxy_log: String,
    /// `TRELLIS_LOG_FORMAT` of the proxy.
    pub proxy_log_format: LogFormat,
}

impl InjectConfig {
    /// The configuration the binary has with only `--proxy-image` given, and the trust bundle's
    /// PEM: the defaults above, and the layout given.
    pub fn with_defaults(
        proxy_image: impl Into<String>,
        trust_bundle_pem: impl Into<String>,
        native_sidecars: bool,
    ) -> Self {
        let proxy_image = proxy_image.into();
        Self {
            init_image: proxy_image.clone(),
            proxy_image,
            resources: ProxyResources {
                cpu_request: default_quantity(DEFAULT_PROXY_CPU_REQUEST),
                memory_request: default_quantity(DEFAULT_PROXY_MEMORY_REQUEST),
                cpu_limit: None,
                memory_limit: None,
            },
            control_plane: DEFAULT_CONTROL_PLANE.to_owned(),
            control_plane_id: SpiffeId::for_service_account(
                &TrustDomain::default(),
                DEFAULT_CONTROL_PLANE_NAMESPACE,
                CONTROL_PLANE_SERVICE_ACCOUNT,
            )
            .expect("the default namespace and service account are valid SPIFFE path segments (config::tests)"),
            trust_domain: TrustDomain::default(),
            trust_bundle_pem: trust_bundle_pem.into(),
            control_plane_namespace: DEFAULT_CONTROL_PLANE_NAMESPACE.to_owned(),
            native_sidecars,
            rewrite_app_probes: true,
            proxy_log: DEFAULT_PROXY_LOG.to_owned(),
            proxy_log_format: LogFormat::Text,
        }
    }
}

fn default_quantity(text: &str) -> Quantity {
    text.parse()
        .expect("the DEFAULT_* quantities are constants checked by config::tests")
}

fn check_limit(
    limit_flag: &'static str,
    limit: Option<&Quantity>,
    request_flag: &'static str,
    request: &Quantity,
) -> Result<(), ConfigError> {
    match limit {
        Some(limit) if limit < request => Err(ConfigError::LimitBelowRequest {
            limit_flag,
            limit: limit.to_string(),
            request_flag,
            request: request.to_string(),
        }),
        _ => Ok(()),
    }
}

/// `host:port` with a non-empty host and a port 1–65535.
fn is_host_port(address: &str) -> bool {
    match address.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

/// An RFC 1123 label, as Kubernetes namespace names are.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let base = [
            "trellis-injector",
            "--tls-cert-file=/c.pem",
            "--tls-key-file=/k.pem",
            "--trust-bundle-file=/b.pem",
        ];
        let image = if args.iter().any(|a| a.starts_with("--proxy-image")) {
            None
        } else {
            Some("--proxy-image=trellis-proxy:dev")
        };
        Config::try_parse_from(base.iter().chain(image.iter()).chain(args))
    }

    #[test]
    fn defaults_match_the_design() {
        let config = parse(&[]).unwrap();
        config.validate().unwrap();
        assert_eq!(config.listen.port(), 15017);
        assert_eq!(config.control_plane_namespace, "trellis-system");
        assert_eq!(config.trust_domain.as_str(), "cluster.local");
        assert_eq!(config.native_sidecars, NativeSidecars::Auto);
        assert!(config.rewrite_app_probes);
        assert!(
            !parse(&["--rewrite-app-probes=false"])
                .unwrap()
                .rewrite_app_probes
        );
        let inject = config.inject_config("pem".into(), false).unwrap();
        let defaults = InjectConfig::with_defaults("trellis-proxy:dev", "pem", false);
        assert_eq!(inject.init_image, "trellis-proxy:dev");
        assert_eq!(inject.control_plane, defaults.control_plane);
        assert_eq!(inject.control_plane_id, defaults.control_plane_id);
        assert_eq!(
            inject.control_plane_id.to_string(),
            "spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane"
        );
        assert_eq!(inject.proxy_log, "info");
        assert_eq!(
            inject.resources.memory_request.as_str(),
            defaults.resources.memory_request.as_str()
        );
    }

    #[test]
    fn bad_flags_are_refused_with_their_name() {
        for (args, flag) in [
            (&["--proxy-cpu-request=lots"][..], "--proxy-cpu-request"),
            (&["--trust-domain=Not A Domain"][..], "--trust-domain"),
            (&["--native-sidecars=maybe"][..], "--native-sidecars"),
            (&["--listen=15017"][..], "--listen"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
        for (args, flag) in [
            (&["--control-plane=nowhere"][..], "--control-plane"),
            (
                &["--control-plane-namespace=Trellis"][..],
                "--control-plane-namespace",
            ),
            (&["--proxy-image= "][..], "--proxy-image"),
            (&["--control-plane-id=trellis"][..], "--control-plane-id"),
            (&["--proxy-log=loud"][..], "--proxy-log"),
            (
                &["--proxy-memory-request=1Gi", "--proxy-memory-limit=512Mi"][..],
                "--proxy-memory-limit",
            ),
        ] {
            let err = parse(args).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_control_plane_identity_follows_its_namespace_unless_given() {
        let config = parse(&[
            "--control-plane-namespace=mesh-system",
            "--trust-domain=example.org",
        ])
        .unwrap();
        config.validate().unwrap();
        let inject = config.inject_config("pem".into(), true).unwrap();
        assert_eq!(
            inject.control_plane_id.to_string(),
            "spiffe://example.org/ns/mesh-system/sa/trellis-control-plane"
        );
        let given = "spiffe://example.org/ns/ops/sa/ca";
        let config = parse(&[&format!("--control-plane-id={given}")]).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config
                .inject_config("pem".into(), true)
                .unwrap()
                .control_plane_id
                .to_string(),
            given
        );
    }

    #[test]
    fn default_quantities_parse() {
        for q in [DEFAULT_PROXY_CPU_REQUEST, DEFAULT_PROXY_MEMORY_REQUEST] {
            q.parse::<Quantity>().unwrap();
        }
    }
}
