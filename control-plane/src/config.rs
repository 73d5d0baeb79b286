//! The control plane's configuration: one clap struct (every flag also an environment
//! variable), validated into a [`Config`] before any port is bound.
//!
//! Owns: flag names, defaults (matching docs/design.md) and the checks that name the bad flag.
//! It leaves reading the files it names to the modules that own them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use trellis_ca::{ServerNames, SpiffeId, TrustDomain};

use crate::serving_cert::{Reachable, server_names};

/// Where the control plane runs: decides the attestation kind and where CA state is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// In a cluster: TokenReview attestation, CA state in a Secret.
    Kubernetes,
    /// On one machine (`trellis demo`): join tokens from a file, CA state in a directory.
    Local,
}

/// Command-line flags of `trellis-control-plane`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "trellis-control-plane",
    version,
    about = "The Trellis control plane: a SPIFFE certificate authority over gRPC+TLS",
    after_help = "Example (embedded mode):\n  trellis-control-plane --mode local --state-dir /tmp/trellis-ca \\\n    --join-tokens /tmp/join-tokens.txt --listen 127.0.0.1:15012"
)]
pub struct Args {
    /// Kubernetes (TokenReview, Secret) or local (join tokens, directory).
    #[arg(long, env = "TRELLIS_MODE", value_enum, default_value = "kubernetes")]
    pub mode: Mode,
    /// Address of the gRPC server (CA, health).
    #[arg(long, env = "TRELLIS_LISTEN", default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
    /// Address of the Prometheus metrics endpoint (plain HTTP).
    #[arg(long, env = "TRELLIS_METRICS_LISTEN", default_value = "0.0.0.0:15014")]
    pub metrics_listen: SocketAddr,
    /// Address of the status endpoint (`GET /status`, JSON; read by `trellis status`). Loopback
    /// only: it is reached through the API server's port-forward, which authenticates the
    /// caller. Off unless set (the chart sets 127.0.0.1:15015).
    #[arg(long, env = "TRELLIS_STATUS_LISTEN", value_name = "ADDR",
          value_parser = crate::status::parse_listen)]
    pub status_listen: Option<SocketAddr>,
    /// The mesh's SPIFFE trust domain.
    #[arg(long, env = "TRELLIS_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Namespace the control plane runs in (its own identity and its Secret live there).
    #[arg(long, env = "TRELLIS_NAMESPACE", default_value = "trellis-system")]
    pub namespace: String,
    /// Service account of the control plane (its own SPIFFE ID).
    #[arg(
        long,
        env = "TRELLIS_SERVICE_ACCOUNT",
        default_value = "trellis-control-plane"
    )]
    pub service_account: String,
    /// Kubernetes mode: the control plane's Service; its DNS names (`<svc>`, `<svc>.<ns>`,
    /// `<svc>.<ns>.svc`, `<svc>.<ns>.svc.<cluster domain>`) go in the serving certificate, so
    /// clients that verify by host name (ztunnel, grpcurl, Go and Java gRPC) accept it.
    #[arg(long, env = "TRELLIS_SERVICE", default_value = "trellis-control-plane")]
    pub service: String,
    /// Kubernetes mode: the cluster's DNS domain (the last of the Service's names).
    #[arg(long, env = "TRELLIS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// More DNS names or IP addresses for the serving certificate (comma-separated), e.g. a
    /// load balancer's name. Local mode always names the listen address.
    #[arg(long, env = "TRELLIS_EXTRA_SERVER_NAMES", value_delimiter = ',')]
    pub extra_server_names: Vec<String>,
    /// Kubernetes mode: node agents (e.g. Istio's ztunnel) that may ask for the identity of a pod
    /// on their own node with `ImpersonatedIdentity`, as istiod's `CA_TRUSTED_NODE_ACCOUNTS`:
    /// `<namespace>/<service account>` or a SPIFFE ID, comma-separated. Empty: nobody may.
    #[arg(long, env = "TRELLIS_NODE_AGENTS", value_delimiter = ',')]
    pub node_agents: Vec<String>,
    /// Local mode: directory holding the CA (ca-cert.pem, ca-key.pem 0600, ...).
    #[arg(long, env = "TRELLIS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Kubernetes mode: name of the Secret holding the self-signed CA.
    #[arg(long, env = "TRELLIS_CA_SECRET", default_value = "trellis-ca")]
    pub ca_secret: String,
    /// A plug-in CA in Istio's `cacerts` layout (ca-cert.pem, ca-key.pem, cert-chain.pem,
    /// root-cert.pem); takes precedence over the self-signed root.
    #[arg(long, env = "TRELLIS_CACERTS_DIR")]
    pub cacerts_dir: Option<PathBuf>,
    /// Make a new root although the published trust bundle (ConfigMaps trellis-ca-root-cert,
    /// or trust-bundle.pem in the state directory) names another: the CA was lost and no
    /// backup exists. Every meshed pod must be re-created afterwards.
    #[arg(
        long,
        env = "TRELLIS_ACCEPT_NEW_ROOT",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub accept_new_root: bool,
    /// Extra root certificates (PEM files) to add to the trust bundle, for root rotation.
    #[arg(
        long = "extra-root",
        env = "TRELLIS_EXTRA_ROOTS",
        value_delimiter = ','
    )]
    pub extra_roots: Vec<PathBuf>,
    /// Local mode: the join-token file, reloaded on change: `<token> <identity>
    /// [expires=<RFC 3339 UTC time>] [single-use]` per line; other users must not be able to
    /// read or write it (mode 0600).
    #[arg(long, env = "TRELLIS_JOIN_TOKENS")]
    pub join_tokens: Option<PathBuf>,
    /// Local mode: the YAML mesh file (workloads, policies), reloaded on change.
    #[arg(long, env = "TRELLIS_MESH_FILE")]
    pub mesh_file: Option<PathBuf>,
    /// Mesh-wide mTLS mode (namespaces may override; a mesh file's `mtls` takes precedence).
    #[arg(long, env = "TRELLIS_MTLS_MODE", value_enum, default_value = "strict")]
    pub mtls_mode: crate::mesh::MtlsMode,
    /// Kubernetes mode: token audiences accepted (comma-separated), checked by TokenReview.
    /// Istio's clients (ztunnel, istio-agent) send tokens for `istio-ca`.
    #[arg(
        long,
        env = "TRELLIS_TOKEN_AUDIENCES",
        value_delimiter = ',',
        default_value = "trellis-ca"
    )]
    pub token_audiences: Vec<String>,
    /// Kubernetes mode: how long a positive TokenReview is cached.
    #[arg(long, env = "TRELLIS_TOKEN_CACHE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub token_cache_ttl: Duration,
    /// Lifetime of workload certificates when the caller asks for none.
    #[arg(long, env = "TRELLIS_DEFAULT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub default_ttl: Duration,
    /// Longest lifetime a caller may ask for.
    #[arg(long, env = "TRELLIS_MAX_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,
    /// Certify calls allowed per caller identity per second (sustained).
    #[arg(long, env = "TRELLIS_RATE_LIMIT", default_value_t = 5.0)]
    pub rate_limit_per_second: f64,
    /// Certify calls a caller may make in a burst.
    #[arg(long, env = "TRELLIS_RATE_BURST", default_value_t = 20)]
    pub rate_limit_burst: u32,
    /// Kubernetes mode: Secret to write the injector's serving certificate into (empty: don't).
    #[arg(
        long,
        env = "TRELLIS_INJECTOR_SECRET",
        default_value = "trellis-injector-tls"
    )]
    pub injector_secret: String,
    /// Kubernetes mode: the injector's Service (its DNS names go in the certificate).
    #[arg(
        long,
        env = "TRELLIS_INJECTOR_SERVICE",
        default_value = "trellis-injector"
    )]
    pub injector_service: String,
    /// Kubernetes mode: the MutatingWebhookConfiguration whose caBundle is kept current.
    #[arg(
        long,
        env = "TRELLIS_INJECTOR_WEBHOOK",
        default_value = "trellis-injector"
    )]
    pub injector_webhook: String,
    /// Logs: `--log <filter>`, `--log-format text|json` (shared by every Trellis binary).
    #[command(flatten)]
    pub log: trellis_telemetry::LogArgs,
    /// TLS handshakes in progress at once from one source address (an IPv6 /64); more are
    /// closed at once, so one host cannot hold the CA's handshake slots.
    #[arg(
        long,
        env = "TRELLIS_MAX_PENDING_HANDSHAKES_PER_SOURCE",
        default_value_t = 32
    )]
    pub max_pending_handshakes_per_source: usize,
    /// TLS handshakes in progress at once, from everyone.
    #[arg(long, env = "TRELLIS_MAX_PENDING_HANDSHAKES", default_value_t = 1024)]
    pub max_pending_handshakes: usize,
    /// How long a client has to finish its TLS handshake.
    #[arg(long, env = "TRELLIS_HANDSHAKE_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Kubernetes mode: cluster changes arriving within this window after the first one are
    /// published to proxies as one update (fewer, larger updates: less CPU per change, more
    /// latency). At most 10s.
    #[arg(long, env = "TRELLIS_DISCOVERY_DEBOUNCE", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub discovery_debounce: Duration,
    /// How long to let in-flight calls finish after SIGTERM.
    #[arg(long, env = "TRELLIS_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// The longest `--discovery-debounce`: past it, proxies would look stuck.
const MAX_DEBOUNCE: Duration = Duration::from_secs(10);

/// Why the configuration is unusable. Each message names the flag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `--trust-domain` is not a valid trust domain.
    #[error("--trust-domain {value:?}: {reason}")]
    TrustDomain {
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: trellis_ca::SpiffeIdError,
    },
    /// `--namespace`/`--service-account` do not form a valid SPIFFE ID.
    #[error("--namespace {namespace:?} / --service-account {service_account:?}: {reason}")]
    OwnIdentity {
        /// The namespace given.
        namespace: String,
        /// The service account given.
        service_account: String,
        /// Why the ID is invalid.
        reason: trellis_ca::SpiffeIdError,
    },
    /// A flag required by the mode is missing.
    #[error("--mode {mode}: {flag} is required")]
    Missing {
        /// The mode.
        mode: &'static str,
        /// The missing flag.
        flag: &'static str,
    },
    /// A TTL flag is out of range.
    #[error("{flag} {value:?}: {reason}")]
    Ttl {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: Duration,
        /// What is expected.
        reason: &'static str,
    },
    /// A count flag is zero.
    #[error("{flag} 0: must be at least 1")]
    Zero {
        /// The flag.
        flag: &'static str,
    },
    /// A name for the serving certificate is not a DNS name or an IP address.
    #[error("{flag}: {reason}")]
    ServerName {
        /// The flag (or flags) the name came from.
        flag: &'static str,
        /// What is wrong with it.
        reason: trellis_ca::ServerNameError,
    },
    /// A `--node-agents` entry is not `<namespace>/<service account>` or a SPIFFE ID.
    #[error(
        "--node-agents {value:?}: expected <namespace>/<service account> or spiffe://<trust domain>/ns/<ns>/sa/<sa> of this trust domain ({reason})"
    )]
    NodeAgent {
        /// The entry.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--token-audiences` is empty or has an empty entry.
    #[error(
        "--token-audiences {0:?}: expected one or more non-empty audiences, e.g. trellis-ca,istio-ca"
    )]
    TokenAudiences(Vec<String>),
    /// `--node-agents` needs the pods of a cluster.
    #[error(
        "--node-agents: only in --mode kubernetes (a node agent's node comes from the cluster's pods)"
    )]
    NodeAgentsNeedKubernetes,
    /// The rate limit is not a positive number.
    #[error("--rate-limit-per-second {0}: must be a positive number")]
    RateLimit(f64),
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The flags as given.
    pub args: Args,
    /// The parsed trust domain.
    pub trust_domain: TrustDomain,
    /// The control plane's own SPIFFE ID (its serving certificate).
    pub own_id: SpiffeId,
    /// The host names on its serving certificate, beside `own_id`.
    pub server_names: ServerNames,
    /// The node agents (`--node-agents`).
    pub node_agents: Vec<SpiffeId>,
}

impl Args {
    /// Checks the flags and derives typed values; nothing is bound or read yet.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let trust_domain =
            TrustDomain::new(&self.trust_domain).map_err(|reason| ConfigError::TrustDomain {
                value: self.trust_domain.clone(),
                reason,
            })?;
        let own_id =
            SpiffeId::for_service_account(&trust_domain, &self.namespace, &self.service_account)
                .map_err(|reason| ConfigError::OwnIdentity {
                    namespace: self.namespace.clone(),
                    service_account: self.service_account.clone(),
                    reason,
                })?;
        if self.mode == Mode::Local {
            if self.state_dir.is_none() && self.cacerts_dir.is_none() {
                return Err(ConfigError::Missing {
                    mode: "local",
                    flag: "--state-dir (or --cacerts-dir)",
                });
            }
            if self.join_tokens.is_none() {
                return Err(ConfigError::Missing {
                    mode: "local",
                    flag: "--join-tokens",
                });
            }
        }
        if self.max_ttl < Duration::from_secs(60) {
            return Err(ConfigError::Ttl {
                flag: "--max-ttl",
                value: self.max_ttl,
                reason: "must be at least 1m",
            });
        }
        if self.default_ttl.is_zero() || self.default_ttl > self.max_ttl {
            return Err(ConfigError::Ttl {
                flag: "--default-ttl",
                value: self.default_ttl,
                reason: "must be positive and at most --max-ttl",
            });
        }
        for (flag, value) in [
            (
                "--max-pending-handshakes-per-source",
                self.max_pending_handshakes_per_source,
            ),
            ("--max-pending-handshakes", self.max_pending_handshakes),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { flag });
            }
        }
        if self.discovery_debounce.is_zero() || self.discovery_debounce > MAX_DEBOUNCE {
            return Err(ConfigError::Ttl {
                flag: "--discovery-debounce",
                value: self.discovery_debounce,
                reason: "must be positive and at most 10s",
            });
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::Ttl {
                flag: "--handshake-timeout",
                value: self.handshake_timeout,
                reason: "must be positive",
            });
        }
        if !(self.rate_limit_per_second.is_finite() && self.rate_limit_per_second > 0.0) {
            return Err(ConfigError::RateLimit(self.rate_limit_per_second));
        }
        let reachable = Reachable {
            mode: self.mode,
            listen: self.listen,
            service: &self.service,
            namespace: &self.namespace,
            cluster_domain: &self.cluster_domain,
        };
        let server_names = server_names(reachable, &self.extra_server_names).map_err(|reason| {
            let extra_names = self.extra_server_names.iter();
            let flag = if extra_names.clone().any(|n| n.contains(&reason.value)) {
                "--extra-server-names"
            } else {
                "--service / --namespace / --cluster-domain"
            };
            ConfigError::ServerName { flag, reason }
        })?;
        if self.token_audiences.is_empty()
            || self.token_audiences.iter().any(|a| a.trim().is_empty())
        {
            return Err(ConfigError::TokenAudiences(self.token_audiences.clone()));
        }
        let node_agents = self
            .node_agents
            .iter()
            .map(|v| node_agent(v.trim(), &trust_domain))
            .collect::<Result<Vec<_>, _>>()?;
        if !node_agents.is_empty() && self.mode != Mode::Kubernetes {
            return Err(ConfigError::NodeAgentsNeedKubernetes);
        }
        Ok(Config {
            trust_domain,
            own_id,
            server_names,
            node_agents,
            args: self,
        })
    }
}

/// A `--node-agents` entry: `<namespace>/<service account>` (istiod's form) or a SPIFFE ID.
fn node_agent(value: &str, td: &TrustDomain) -> Result<SpiffeId, ConfigError> {
    let bad = |reason: String| ConfigError::NodeAgent {
        value: value.to_owned(),
        reason,
    };
    let id = match value.split_once('/') {
        Some((ns, sa)) if !value.starts_with("spiffe:") => {
            SpiffeId::for_service_account(td, ns, sa).map_err(|e| bad(e.to_string()))?
        }
        _ => SpiffeId::parse(value).map_err(|e| bad(e.to_string()))?,
    };
    if id.trust_domain() != td || id.service_account().is_none() {
        return Err(bad(format!("{id} is not a service account of {td}")));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["trellis-control-plane"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap().validate()
    }

    #[test]
    fn defaults_match_the_design() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.args.listen.port(), 15012);
        assert_eq!(c.trust_domain.as_str(), "cluster.local");
        assert_eq!(
            c.own_id.to_string(),
            "spiffe://cluster.local/ns/trellis-system/sa/trellis-control-plane"
        );
        assert_eq!(c.args.default_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.args.max_pending_handshakes_per_source, 32);
        assert_eq!(c.args.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.args.discovery_debounce, Duration::from_millis(250));
        assert_eq!(c.args.token_audiences, ["trellis-ca"]);
    }

    #[test]
    fn node_agents_are_namespace_and_service_account_or_spiffe_ids_in_kubernetes_mode() {
        let c = parse(&[
            "--node-agents",
            "istio-system/ztunnel, spiffe://cluster.local/ns/kube-system/sa/ztunnel",
        ])
        .unwrap();
        let agents: Vec<String> = c.node_agents.iter().map(ToString::to_string).collect();
        assert_eq!(
            agents,
            [
                "spiffe://cluster.local/ns/istio-system/sa/ztunnel",
                "spiffe://cluster.local/ns/kube-system/sa/ztunnel"
            ]
        );
        assert!(parse(&[]).unwrap().node_agents.is_empty());
        let err = parse(&[
            "--mode",
            "local",
            "--state-dir",
            "/s",
            "--join-tokens",
            "/t",
            "--node-agents",
            "istio-system/ztunnel",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--mode kubernetes"), "{err}");
    }

    #[test]
    fn local_mode_needs_a_state_dir_and_join_tokens() {
        let err = parse(&["--mode", "local", "--join-tokens", "/t"]).unwrap_err();
        assert!(err.to_string().contains("--state-dir"), "{err}");
        let err = parse(&["--mode", "local", "--state-dir", "/s"]).unwrap_err();
        assert!(err.to_string().contains("--join-tokens"), "{err}");
        assert!(
            parse(&[
                "--mode",
                "local",
                "--state-dir",
                "/s",
                "--join-tokens",
                "/t"
            ])
            .is_ok()
        );
    }

    #[test]
    fn bad_values_name_their_flag() {
        let err = parse(&["--trust-domain", "Bad.Domain"]).unwrap_err();
        assert!(err.to_string().starts_with("--trust-domain"), "{err}");
        let err = parse(&["--default-ttl", "30d"]).unwrap_err();
        assert!(err.to_string().starts_with("--default-ttl"), "{err}");
        let err = parse(&["--extra-server-names", "ok.example,bad name"]).unwrap_err();
        assert!(err.to_string().starts_with("--extra-server-names"), "{err}");
        let err = parse(&["--cluster-domain", "bad_domain."]).unwrap_err();
        assert!(err.to_string().starts_with("--service"), "{err}");
        let err = parse(&["--node-agents", "istio-system/ztunnel,ztunnel"]).unwrap_err();
        assert!(
            err.to_string().starts_with("--node-agents \"ztunnel\""),
            "{err}"
        );
        let err = parse(&["--node-agents", "spiffe://other.example/ns/a/sa/b"]).unwrap_err();
        assert!(err.to_string().starts_with("--node-agents"), "{err}");
        let err = parse(&["--token-audiences", "trellis-ca,,istio-ca"]).unwrap_err();
        assert!(err.to_string().starts_with("--token-audiences"), "{err}");
        let err = parse(&["--rate-limit-per-second", "0"]).unwrap_err();
        assert!(
            err.to_string().starts_with("--rate-limit-per-second"),
            "{err}"
        );
        let err = parse(&["--max-pending-handshakes-per-source", "0"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--max-pending-handshakes-per-source"),
            "{err}"
        );
        let err = parse(&["--handshake-timeout", "0s"]).unwrap_err();
        assert!(err.to_string().starts_with("--handshake-timeout"), "{err}");
        for debounce in ["0s", "11s"] {
            let err = parse(&["--discovery-debounce", debounce]).unwrap_err();
            assert!(err.to_string().starts_with("--discovery-debounce"), "{err}");
        }
        assert!(parse(&["--discovery-debounce", "10s"]).is_ok());
        let err = parse(&["--namespace", "a/b"]).unwrap_err();
        assert!(err.to_string().starts_with("--namespace"), "{err}");
    }
}
