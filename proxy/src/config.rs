//! `trellis-proxy run` configuration: one clap struct (each flag also an env var, names as in
//! ARCHITECTURE.md), validated into [`Config`] before any port is bound.
//!
//! Owns: flag names, defaults (docs/design.md ports), and parsing of the explicit-mode and static
//! workload flags. Secrets (the token) are read later by `identity`, never printed here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;
use trellis_ca::{SpiffeId, TrustDomain};

/// How traffic reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// iptables redirects the pod's TCP to 15001/15006 (`trellis-proxy init`).
    Transparent,
    /// No iptables: each `--outbound LISTEN=DEST` listener forwards to one destination.
    Explicit,
}

/// What to do with plaintext arriving at an application port (not through the tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Refuse it.
    Strict,
    /// Pass it through and record it as plaintext.
    Permissive,
}

/// What to do with outbound connections to destinations that are not in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmeshed {
    /// Connect directly, in plain TCP.
    Allow,
    /// Refuse.
    Deny,
}

/// One explicit-mode outbound listener: connections to `listen` go to `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExplicitOutbound {
    /// Where the app connects.
    pub listen: SocketAddr,
    /// The destination it stands for (looked up in discovery like an original destination).
    pub dest: SocketAddr,
}

impl FromStr for ExplicitOutbound {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (l, d) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected LISTEN=DEST, e.g. 127.0.0.1:16000=127.0.0.1:8080")
        })?;
        Ok(Self {
            listen: l
                .parse()
                .map_err(|e| format!("{s:?}: listen address {l:?}: {e}"))?,
            dest: d
                .parse()
                .map_err(|e| format!("{s:?}: destination {d:?}: {e}"))?,
        })
    }
}

/// A meshed workload known statically (until the discovery stream supplies them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaticWorkload {
    /// Its address: an IP (every port) or IP:port (explicit mode on loopback).
    pub addr: WorkloadAddr,
    /// Its identity.
    #[serde(serialize_with = "ser_display")]
    pub id: SpiffeId,
    /// Its tunnel endpoint (default `<ip>:15008`).
    pub tunnel: SocketAddr,
}

/// The address part of a workload entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum WorkloadAddr {
    /// Every port of this IP.
    Ip(IpAddr),
    /// Only this IP and port.
    Socket(SocketAddr),
}

impl FromStr for StaticWorkload {
    type Err = String;
    /// `ADDR=SPIFFE_ID[@TUNNEL]`, e.g. `198.18.0.3=spiffe://cluster.local/ns/shop/sa/backend`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected ADDR=SPIFFE_ID[@TUNNEL]"))?;
        let addr = if let Ok(sock) = addr.parse::<SocketAddr>() {
            WorkloadAddr::Socket(sock)
        } else {
            WorkloadAddr::Ip(
                addr.parse()
                    .map_err(|e| format!("{s:?}: address {addr:?}: {e}"))?,
            )
        };
        let (id, tunnel) = match rest.split_once('@') {
            Some((id, t)) => (
                id,
                Some(
                    t.parse::<SocketAddr>()
                        .map_err(|e| format!("{s:?}: tunnel {t:?}: {e}"))?,
                ),
            ),
            None => (rest, None),
        };
        let id = SpiffeId::parse(id).map_err(|e| format!("{s:?}: {e}"))?;
        let ip = match addr {
            WorkloadAddr::Ip(ip) => ip,
            WorkloadAddr::Socket(s) => s.ip(),
        };
        Ok(Self {
            addr,
            id,
            tunnel: tunnel.unwrap_or(SocketAddr::new(ip, crate::ports::TUNNEL)),
        })
    }
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Flags of `trellis-proxy run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Transparent (iptables) or explicit (fixed listeners) interception.
    #[arg(long, env = "TRELLIS_MODE", value_enum, default_value = "transparent")]
    pub mode: Mode,
    /// Control plane address (host:port).
    #[arg(
        long,
        env = "TRELLIS_CONTROL_PLANE",
        default_value = "trellis-control-plane.trellis-system.svc:15012"
    )]
    pub control_plane: String,
    /// SPIFFE ID the control plane must present (default: its ID in our trust domain).
    #[arg(long, env = "TRELLIS_CONTROL_PLANE_ID")]
    pub control_plane_id: Option<String>,
    /// File holding the token (projected ServiceAccount token or join token); re-read at every renewal.
    #[arg(
        long,
        env = "TRELLIS_TOKEN_FILE",
        default_value = "/var/run/secrets/trellis/tokens/trellis-token"
    )]
    pub token_file: PathBuf,
    /// PEM text of the root(s) to trust for the control plane (bootstrap).
    #[arg(long, env = "TRELLIS_TRUST_BUNDLE", hide_env_values = true)]
    pub trust_bundle: Option<String>,
    /// A file with the PEM root(s), instead of --trust-bundle.
    #[arg(long, env = "TRELLIS_TRUST_BUNDLE_FILE")]
    pub trust_bundle_file: Option<PathBuf>,
    /// The mesh's trust domain.
    #[arg(long, env = "TRELLIS_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Pod name (downward API), for logs.
    #[arg(long, env = "TRELLIS_POD_NAME")]
    pub pod_name: Option<String>,
    /// Pod namespace (downward API); with --service-account it fixes the identity we ask for.
    #[arg(long, env = "TRELLIS_POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Service account (downward API).
    #[arg(long, env = "TRELLIS_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// The pod's IP (downward API): where 15020 listens and which CONNECT targets are "this pod".
    #[arg(long, env = "TRELLIS_POD_IP")]
    pub pod_ip: Option<IpAddr>,
    /// STRICT refuses plaintext to application ports; PERMISSIVE passes it through.
    /// Pins the mode locally; without it the control plane decides (STRICT until it has).
    #[arg(long, env = "TRELLIS_MTLS_MODE", value_enum)]
    pub mtls_mode: Option<MtlsMode>,
    /// Outbound connections to destinations outside the mesh.
    #[arg(long, env = "TRELLIS_UNMESHED", value_enum, default_value = "allow")]
    pub unmeshed: Unmeshed,
    /// Subscribe to the control plane's discovery stream (endpoints, policy, mTLS mode).
    #[arg(long, env = "TRELLIS_DISCOVERY", default_value_t = true, action = clap::ArgAction::Set)]
    pub discovery: bool,
    /// Outbound listener (transparent mode).
    #[arg(long, env = "TRELLIS_OUTBOUND_LISTEN", default_value = "0.0.0.0:15001")]
    pub outbound_listen: SocketAddr,
    /// Inbound plaintext listener (transparent mode).
    #[arg(long, env = "TRELLIS_INBOUND_LISTEN", default_value = "0.0.0.0:15006")]
    pub inbound_listen: SocketAddr,
    /// Tunnel (mTLS, HTTP/2 CONNECT) listener.
    #[arg(long, env = "TRELLIS_TUNNEL_LISTEN", default_value = "0.0.0.0:15008")]
    pub tunnel_listen: SocketAddr,
    /// Admin listener; must be a loopback address.
    #[arg(long, env = "TRELLIS_ADMIN_LISTEN", default_value = "127.0.0.1:15000")]
    pub admin_listen: SocketAddr,
    /// Health and metrics listener for kubelet and Prometheus (default: pod IP:15020).
    #[arg(long, env = "TRELLIS_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Explicit mode: `LISTEN=DEST` outbound listeners (repeatable).
    #[arg(long = "outbound", env = "TRELLIS_OUTBOUND", value_delimiter = ',')]
    pub explicit_outbound: Vec<ExplicitOutbound>,
    /// Explicit mode: the application address that plaintext arriving at --inbound-listen stands
    /// for (the inbound listener is started in explicit mode only when this is given).
    #[arg(long, env = "TRELLIS_INBOUND_TARGET")]
    pub inbound_target: Option<SocketAddr>,
    /// Where tunnelled and permissive inbound connections are delivered: the app's host. By
    /// default the pod's IP (--pod-ip; 127.0.0.1 in explicit mode without one), so that a
    /// listener bound to loopback stays private to the pod. Given as a loopback address, the
    /// mesh reaches the app's listeners on that one address: meant for explicit mode on one
    /// machine.
    #[arg(long, env = "TRELLIS_APP_HOST")]
    pub app_host: Option<IpAddr>,
    /// Meshed workloads known statically: `ADDR=SPIFFE_ID[@TUNNEL]` (repeatable).
    #[arg(long = "workload", env = "TRELLIS_WORKLOADS", value_delimiter = ',')]
    pub workloads: Vec<StaticWorkload>,
    /// Most concurrent streams on one pooled tunnel connection before another is opened.
    #[arg(long, env = "TRELLIS_POOL_MAX_STREAMS", default_value_t = 100)]
    pub pool_max_streams: usize,
    /// How long an unused pooled tunnel connection is kept.
    #[arg(long, env = "TRELLIS_POOL_IDLE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub pool_idle: Duration,
    /// Close a proxied connection after this long without a byte either way.
    #[arg(long, env = "TRELLIS_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Most proxied connections at once (each direction).
    #[arg(long, env = "TRELLIS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Requested certificate lifetime (default: the control plane's).
    #[arg(long, env = "TRELLIS_CERT_TTL", value_parser = humantime::parse_duration)]
    pub cert_ttl: Option<Duration>,
    /// How long open connections may drain after SIGTERM.
    #[arg(long, env = "TRELLIS_DRAIN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// How many recent connections /handshakes keeps.
    #[arg(long, env = "TRELLIS_HANDSHAKE_LOG", default_value_t = 1000)]
    pub handshake_log: usize,
    /// Runtime worker threads. One (the default) runs every task on the proxy's main thread: no
    /// hand-offs between threads for the copy, HTTP/2 and connection tasks (bench/: CPU per
    /// request at 5,000 req/s −31 % against a pool of one worker, which used ~25 % less than two).
    #[arg(long, env = "TRELLIS_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
    /// The app's original probes, rewritten by the injector to 15020 /app-health/...: JSON
    /// keyed by path (see the `probe::spec` module).
    #[arg(long, env = "TRELLIS_APP_PROBES")]
    pub app_probes: Option<String>,
    /// Caps on the tunnel port: handshakes and connections per source and in total, the
    /// handshake deadline, refused streams in a row before a connection is closed.
    #[command(flatten)]
    pub tunnel_limits: crate::tunnel::limits::TunnelLimits,
    /// Logs: `--log <filter>`, `--log-format text|json` (shared by every Trellis binary).
    #[command(flatten)]
    pub log: trellis_telemetry::LogArgs,
}

/// Why the configuration is unusable; each message names the flag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A flag has a bad value.
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
        /// What is expected.
        reason: String,
    },
}

fn invalid(
    flag: &'static str,
    value: impl std::fmt::Display,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Interception mode.
    pub mode: Mode,
    /// Control plane address.
    pub control_plane: String,
    /// Identity the control plane must present.
    #[serde(serialize_with = "ser_display")]
    pub control_plane_id: SpiffeId,
    /// Token file.
    pub token_file: PathBuf,
    /// Bootstrap roots, PEM (not secret, but long: shown as a count in /config_dump).
    #[serde(skip)]
    pub trust_bundle_pem: Vec<u8>,
    /// Trust domain.
    #[serde(serialize_with = "ser_display")]
    pub trust_domain: TrustDomain,
    /// The identity we ask for, when namespace and service account are known.
    #[serde(serialize_with = "ser_opt_display")]
    pub expected_id: Option<SpiffeId>,
    /// Pod name, for logs.
    pub pod_name: Option<String>,
    /// The pod's IP.
    pub pod_ip: Option<IpAddr>,
    /// STRICT or PERMISSIVE pinned locally (`None`: the control plane's choice).
    pub mtls_mode: Option<MtlsMode>,
    /// Unmeshed destinations.
    pub unmeshed: Unmeshed,
    /// Whether to subscribe to discovery.
    pub discovery: bool,
    /// Listeners.
    pub outbound_listen: SocketAddr,
    /// See `outbound_listen`.
    pub inbound_listen: SocketAddr,
    /// See `outbound_listen`.
    pub tunnel_listen: SocketAddr,
    /// See `outbound_listen`.
    pub admin_listen: SocketAddr,
    /// See `outbound_listen`.
    pub health_listen: Option<SocketAddr>,
    /// Explicit-mode listeners.
    pub explicit_outbound: Vec<ExplicitOutbound>,
    /// Explicit mode: what the inbound listener stands for.
    pub inbound_target: Option<SocketAddr>,
    /// The app's host: `--app-host`, else the pod's IP, else 127.0.0.1 (explicit mode only).
    pub app_host: IpAddr,
    /// Static workloads.
    pub workloads: Vec<StaticWorkload>,
    /// Pool limits.
    pub pool_max_streams: usize,
    /// See `pool_max_streams`.
    #[serde(with = "humantime_serde_compat")]
    pub pool_idle: Duration,
    /// Idle timeout of proxied connections.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Concurrency cap.
    pub max_connections: usize,
    /// Requested certificate lifetime.
    pub cert_ttl: Option<u64>,
    /// Drain period.
    #[serde(with = "humantime_serde_compat")]
    pub drain: Duration,
    /// Handshake log size.
    pub handshake_log: usize,
    /// Caps on the tunnel port.
    pub tunnel_limits: crate::tunnel::limits::TunnelLimits,
    /// The app's original probes, served at 15020 /app-health/... (header values not shown).
    pub app_probes: crate::probe::AppProbes,
    /// The process's log filter, read and changed at run time on the admin port's `/logging`.
    /// Set by `main` once the subscriber is installed; `None` where nothing installed one.
    #[serde(skip)]
    pub log_control: Option<trellis_telemetry::LogHandle>,
}

mod humantime_serde_compat {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

fn ser_opt_display<S: serde::Serializer, T: std::fmt::Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

impl RunArgs {
    /// Checks the flags and reads the bootstrap bundle; binds nothing.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let trust_domain = TrustDomain::new(&self.trust_domain)
            .map_err(|e| invalid("--trust-domain", &self.trust_domain, e.to_string()))?;
        trellis_client::parse_address(&self.control_plane)
            .map_err(|e| invalid("--control-plane", &self.control_plane, e.to_string()))?;
        let control_plane_id = match &self.control_plane_id {
            Some(s) => {
                SpiffeId::parse(s).map_err(|e| invalid("--control-plane-id", s, e.to_string()))?
            }
            None => SpiffeId::for_service_account(
                &trust_domain,
                "trellis-system",
                "trellis-control-plane",
            )
            .map_err(|e| invalid("--trust-domain", &self.trust_domain, e.to_string()))?,
        };
        let expected_id = match (&self.pod_namespace, &self.service_account) {
            (Some(ns), Some(sa)) => Some(
                SpiffeId::for_service_account(&trust_domain, ns, sa).map_err(|e| {
                    invalid(
                        "--pod-namespace/--service-account",
                        format!("{ns}/{sa}"),
                        e.to_string(),
                    )
                })?,
            ),
            (None, None) => None,
            (Some(ns), None) => {
                return Err(invalid(
                    "--service-account",
                    "",
                    format!("required with --pod-namespace {ns}"),
                ));
            }
            (None, Some(sa)) => {
                return Err(invalid(
                    "--pod-namespace",
                    "",
                    format!("required with --service-account {sa}"),
                ));
            }
        };
        let trust_bundle_pem = match (&self.trust_bundle, &self.trust_bundle_file) {
            (Some(pem), None) => pem.clone().into_bytes(),
            (None, Some(path)) => std::fs::read(path)
                .map_err(|e| invalid("--trust-bundle-file", path.display(), e.to_string()))?,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "--trust-bundle",
                    "",
                    "give --trust-bundle or --trust-bundle-file, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "--trust-bundle",
                    "",
                    "the control plane's root is required (TRELLIS_TRUST_BUNDLE)",
                ));
            }
        };
        trellis_ca::TrustBundle::from_pem(trust_domain.clone(), &trust_bundle_pem)
            .map_err(|e| invalid("--trust-bundle", "(PEM)", e.to_string()))?;
        if !self.admin_listen.ip().is_loopback() {
            return Err(invalid(
                "--admin-listen",
                self.admin_listen,
                "the admin endpoint must listen on a loopback address",
            ));
        }
        if self.mode == Mode::Explicit
            && self.explicit_outbound.is_empty()
            && self.workloads.is_empty()
        {
            // Allowed (a server-only proxy), nothing to check.
        }
        if self.mode == Mode::Transparent && !self.explicit_outbound.is_empty() {
            return Err(invalid("--outbound", "", "only with --mode explicit"));
        }
        if self.pool_max_streams == 0 {
            return Err(invalid("--pool-max-streams", 0, "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(invalid("--max-connections", 0, "must be at least 1"));
        }
        if let Some(flag) = self.tunnel_limits.zero_flag() {
            return Err(invalid(
                flag,
                0,
                "must be at least 1 (a duration: positive)",
            ));
        }
        let app_probes = crate::probe::spec::parse(self.app_probes.as_deref().unwrap_or(""))
            .map_err(|e| invalid("--app-probes", "(JSON)", e.to_string()))?;
        let app_host = match (self.app_host, self.pod_ip, self.mode) {
            (Some(host), _, _) => host,
            (None, Some(pod_ip), _) => pod_ip,
            (None, None, Mode::Explicit) => LOCALHOST,
            (None, None, Mode::Transparent) => {
                return Err(invalid(
                    "--pod-ip",
                    "",
                    "required in transparent mode: the application is reached on the pod's IP \
                     (TRELLIS_POD_IP from the downward API, as the injector sets it), or give \
                     --app-host",
                ));
            }
        };
        let health_listen = self.health_listen.or_else(|| {
            self.pod_ip
                .map(|ip| SocketAddr::new(ip, crate::ports::HEALTH))
        });
        Ok(Config {
            mode: self.mode,
            control_plane: self.control_plane,
            control_plane_id,
            token_file: self.token_file,
            trust_bundle_pem,
            trust_domain,
            expected_id,
            pod_name: self.pod_name,
            pod_ip: self.pod_ip,
            mtls_mode: self.mtls_mode,
            unmeshed: self.unmeshed,
            discovery: self.discovery,
            outbound_listen: self.outbound_listen,
            inbound_listen: self.inbound_listen,
            tunnel_listen: self.tunnel_listen,
            admin_listen: self.admin_listen,
            health_listen,
            explicit_outbound: self.explicit_outbound,
            inbound_target: self.inbound_target,
            app_host,
            workloads: self.workloads,
            pool_max_streams: self.pool_max_streams,
            pool_idle: self.pool_idle,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            cert_ttl: self.cert_ttl.map(|d| d.as_secs()),
            drain: self.drain,
            handshake_log: self.handshake_log.max(1),
            tunnel_limits: self.tunnel_limits,
            app_probes,
            log_control: None,
        })
    }
}

/// A loopback-only address used when nothing else is given.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn root() -> String {
        let td = TrustDomain::default();
        trellis_ca::CaMaterial::generate_root(&td, std::time::SystemTime::now())
            .unwrap()
            .root_cert_pem
    }

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["trellis-proxy"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
            .map_err(|e| invalid("argv", "", e.to_string()))?
            .run
            .validate()
    }

    #[test]
    fn workload_flags_parse_ip_socket_and_tunnel_forms() {
        let w: StaticWorkload = "198.18.0.3=spiffe://cluster.local/ns/shop/sa/backend"
            .parse()
            .unwrap();
        assert_eq!(w.addr, WorkloadAddr::Ip("198.18.0.3".parse().unwrap()));
        assert_eq!(w.tunnel, "198.18.0.3:15008".parse().unwrap());
        let w: StaticWorkload = "127.0.0.1:8081=spiffe://td/ns/a/sa/b@127.0.0.1:25008"
            .parse()
            .unwrap();
        assert_eq!(
            w.addr,
            WorkloadAddr::Socket("127.0.0.1:8081".parse().unwrap())
        );
        assert_eq!(w.tunnel, "127.0.0.1:25008".parse().unwrap());
        for bad in [
            "198.18.0.3",
            "x=spiffe://td/a",
            "1.2.3.4=http://x",
            "1.2.3.4=spiffe://td/a@nope",
        ] {
            assert!(bad.parse::<StaticWorkload>().is_err(), "{bad}");
        }
    }

    #[test]
    fn explicit_outbound_needs_listen_and_destination() {
        let e: ExplicitOutbound = "127.0.0.1:16000=127.0.0.1:8080".parse().unwrap();
        assert_eq!(e.listen.port(), 16000);
        assert!("127.0.0.1:16000".parse::<ExplicitOutbound>().is_err());
        assert!(
            "127.0.0.1:16000=x"
                .parse::<ExplicitOutbound>()
                .unwrap_err()
                .contains("destination")
        );
    }

    #[test]
    fn the_admin_endpoint_must_stay_on_loopback() {
        let err = parse(&[
            &format!("--trust-bundle={}", root()),
            "--admin-listen",
            "0.0.0.0:15000",
        ])
        .unwrap_err();
        assert!(err.to_string().starts_with("--admin-listen"), "{err}");
    }

    #[test]
    fn a_control_plane_address_without_a_port_is_refused_naming_the_flag() {
        let err = parse(&[
            &format!("--trust-bundle={}", root()),
            "--control-plane",
            "trellis-control-plane.trellis-system.svc",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("--control-plane"), "{err}");
        assert!(err.contains("has no port; give host:port"), "{err}");
    }

    #[test]
    fn a_trust_bundle_is_required_and_must_be_pem() {
        let err = parse(&[]).unwrap_err();
        assert!(err.to_string().starts_with("--trust-bundle"), "{err}");
        let err = parse(&["--trust-bundle", "not pem"]).unwrap_err();
        assert!(err.to_string().starts_with("--trust-bundle"), "{err}");
    }

    #[test]
    fn app_probes_are_checked_before_the_start_and_name_the_probe() {
        let bundle = format!("--trust-bundle={}", root());
        let err = parse(&[
            &bundle,
            "--app-probes",
            r#"{"/app-health/web/livez": {"tcpSocket": {"port": "http"}}}"#,
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("--app-probes"), "{err}");
        assert!(err.contains("livenessProbe of container \"web\""), "{err}");
        let ok = parse(&[
            &bundle,
            "--pod-ip=198.18.0.3",
            "--app-probes",
            r#"{"/app-health/web/livez": {"tcpSocket": {"port": 8080}}}"#,
        ])
        .unwrap();
        assert_eq!(ok.app_probes.len(), 1);
        assert!(
            parse(&[&bundle, "--pod-ip=198.18.0.3"])
                .unwrap()
                .app_probes
                .is_empty()
        );
    }

    #[test]
    fn namespace_and_service_account_go_together() {
        let err = parse(&[
            &format!("--trust-bundle={}", root()),
            "--pod-namespace",
            "shop",
        ])
        .unwrap_err();
        assert!(err.to_string().starts_with("--service-account"), "{err}");
    }

    #[test]
    fn the_app_is_dialled_on_the_pod_ip_unless_an_app_host_is_given() {
        let bundle = format!("--trust-bundle={}", root());
        let host = |extra: &[&str]| {
            let mut args = vec![bundle.as_str()];
            args.extend_from_slice(extra);
            parse(&args).map(|c| c.app_host.to_string())
        };
        assert_eq!(host(&["--pod-ip=198.18.0.3"]).unwrap(), "198.18.0.3");
        assert_eq!(
            host(&["--pod-ip=198.18.0.3", "--app-host=127.0.0.1"]).unwrap(),
            "127.0.0.1"
        );
        assert_eq!(host(&["--mode=explicit"]).unwrap(), "127.0.0.1");
        assert_eq!(
            host(&["--mode=explicit", "--app-host=127.0.0.7"]).unwrap(),
            "127.0.0.7"
        );
        let err = host(&[]).unwrap_err().to_string();
        assert!(err.starts_with("--pod-ip"), "{err}");
        assert!(err.contains("required in transparent mode"), "{err}");
    }
}
