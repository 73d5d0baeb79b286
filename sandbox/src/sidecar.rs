//! The Trellis sidecar in a pod ([`Sidecar`]): `trellis-proxy init` (iptables, as root — in a
//! namespace of our own root has NET_ADMIN) then `trellis-proxy run` as UID 1337 in transparent
//! mode, with the pod's identity, its join token and the control plane's root; and reading its
//! admin endpoint (`/identity`, `/handshakes`, `/metrics`) from inside the pod.

use std::net::Ipv4Addr;
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::Value;

use crate::binaries::{PROXY, binary};
use crate::control_plane::{ControlPlane, Identity};
use crate::error::{Result, SandboxError};
use crate::http::{GET_TIMEOUT, http_get, wait_http_ok};
use crate::netns::Cmd;
use crate::pod::Pod;
use crate::process::{Process, tail};

/// The proxy's UID and GID (docs/design.md): its own connections are never redirected.
pub const PROXY_UID: u32 = 1337;
/// The admin endpoint, inside the pod.
pub const ADMIN_URL: &str = "http://127.0.0.1:15000";
/// How long a sidecar may take to get its first certificate.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long it may drain when stopped.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to run: the pod's identity, the peers it knows, extra flags.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    /// The identity the proxy asks for (`--pod-namespace`, `--service-account`).
    identity: Identity,
    /// `--workload IP=SPIFFE_ID` values: static discovery until the discovery stream exists.
    workloads: Vec<String>,
    /// Extra `run` flags, as they are.
    args: Vec<String>,
}

impl SidecarSpec {
    /// A sidecar proving `identity`, knowing no peer.
    pub fn new(identity: Identity) -> Self {
        SidecarSpec {
            identity,
            workloads: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Declares that the workload at `ip` is `spiffe_id` (`--workload`).
    pub fn workload(mut self, ip: Ipv4Addr, spiffe_id: &str) -> Self {
        self.workloads.push(format!("{ip}={spiffe_id}"));
        self
    }

    /// Adds a flag of `trellis-proxy run`, e.g. `--mtls-mode=permissive`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// The identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// A running sidecar.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// Its pod.
    pod: Pod,
    /// What it was started with.
    spec: SidecarSpec,
    /// `trellis-proxy run`.
    process: Process,
}

impl Sidecar {
    /// Installs the interception rules in `pod`, starts the proxy as [`PROXY_UID`] with a
    /// certificate from `cp`, and waits until it is ready (holds a certificate).
    pub fn start(cp: &ControlPlane, pod: &Pod, spec: SidecarSpec) -> Result<Sidecar> {
        let proxy = binary(PROXY)?;
        pod.exec_ok(&Cmd::new(&proxy).arg("init"))?;
        let token = cp
            .token_file(&spec.identity)
            .ok_or_else(|| SandboxError::State {
                what: format!("start a sidecar for {}", spec.identity.spiffe_id()),
                reason: "the control plane has no join token for this identity",
            })?;
        let cmd = Cmd::new(&proxy)
            .arg("run")
            .args(["--pod-name", pod.name()])
            .args(["--pod-namespace", &spec.identity.namespace])
            .args(["--service-account", &spec.identity.service_account])
            .args(["--pod-ip", &pod.ip().to_string()])
            .args(["--control-plane", &cp.addr().to_string()])
            .arg("--token-file")
            .arg(token)
            .arg("--trust-bundle-file")
            .arg(cp.trust_bundle())
            .args(["--drain", "1s"])
            .args(spec.workloads.iter().map(|w| format!("--workload={w}")))
            .args(&spec.args)
            .uid(Some(PROXY_UID));
        let process = pod.spawn(&cmd)?;
        let sidecar = Sidecar {
            pod: pod.clone(),
            spec,
            process,
        };
        wait_http_ok(pod, &format!("{ADMIN_URL}/ready"), READY_TIMEOUT).map_err(|e| {
            SandboxError::Deadline {
                what: format!("sidecar in {} ready", pod.name()),
                after: READY_TIMEOUT,
                last: format!("{e}; stderr: {}", tail(&sidecar.process.stderr(), 3000)),
            }
        })?;
        Ok(sidecar)
    }

    /// Stops the proxy (SIGTERM: it drains for a second, then exits). The iptables rules
    /// stay: until another sidecar starts, the pod's TCP goes nowhere.
    pub fn stop(&self) -> Result<ExitStatus> {
        self.process.stop(STOP_GRACE)
    }

    /// Its pod.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// What it was started with.
    pub fn spec(&self) -> &SidecarSpec {
        &self.spec
    }

    /// `trellis-proxy run` (its stderr is the proxy's log).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// GETs `path` of the admin endpoint; anything but 200 is an error.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        let url = format!("{ADMIN_URL}{path}");
        let r = http_get(&self.pod, &url, None, GET_TIMEOUT)?;
        if r.status != 200 {
            return Err(SandboxError::Parse {
                what: format!("[{}] GET {url}", self.pod.name()),
                reason: format!("HTTP {}: {}", r.status, tail(&r.body, 300)),
            });
        }
        Ok(r.body)
    }

    /// `/metrics`, as text.
    pub fn metrics(&self) -> Result<String> {
        self.admin_get("/metrics")
    }

    /// The sum of the series of metric `name` (full name, e.g.
    /// `trellis_proxy_tunnel_connections_opened_total`) whose labels include `labels`; 0 if
    /// there is none.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(metric_value(&self.metrics()?, name, labels))
    }

    /// `/handshakes` (the connection log, oldest first; the summary of failed handshakes is
    /// [`Self::failed_handshakes`]).
    pub fn handshakes(&self) -> Result<Vec<Value>> {
        match self.handshakes_page()? {
            Value::Object(mut page) => match page.remove("connections") {
                Some(Value::Array(rows)) => Ok(rows),
                _ => Err(self.bad_handshakes("no \"connections\" list")),
            },
            Value::Array(rows) => Ok(rows),
            _ => Err(self.bad_handshakes("neither an object nor a list")),
        }
    }

    /// `/handshakes`' `failed_handshakes`: failed handshakes from outside, summed per source.
    pub fn failed_handshakes(&self) -> Result<Value> {
        match self.handshakes_page()? {
            Value::Object(mut page) => Ok(page.remove("failed_handshakes").unwrap_or(Value::Null)),
            _ => Ok(Value::Null),
        }
    }

    fn handshakes_page(&self) -> Result<Value> {
        let body = self.admin_get("/handshakes?limit=1000")?;
        serde_json::from_str(&body).map_err(|e| self.bad_handshakes(&e.to_string()))
    }

    fn bad_handshakes(&self, reason: &str) -> SandboxError {
        SandboxError::Parse {
            what: format!("[{}] /handshakes", self.pod.name()),
            reason: reason.to_owned(),
        }
    }

    /// `/identity` (SPIFFE ID, serial, validity of the current certificate).
    pub fn identity(&self) -> Result<Value> {
        let body = self.admin_get("/identity")?;
        serde_json::from_str(&body).map_err(|e| SandboxError::Parse {
            what: format!("[{}] /identity", self.pod.name()),
            reason: e.to_string(),
        })
    }
}

/// The sum of the samples of `name` in Prometheus/OpenMetrics `text` whose labels include
/// every pair of `labels`; 0 when none matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (series_labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let matches = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
            });
            let value: f64 = value.split_whitespace().next()?.parse().ok()?;
            matches.then_some(value)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_summed_over_matching_series() {
        let text = "# HELP x y\n\
            trellis_proxy_certificate_renewals_total{result=\"ok\"} 3\n\
            trellis_proxy_certificate_renewals_total{result=\"error\"} 2\n\
            trellis_proxy_tunnel_connections_opened_total 1\n\
            trellis_proxy_tunnel_connections_opened_created 1.7e9\n";
        let renewals = "trellis_proxy_certificate_renewals_total";
        assert_eq!(metric_value(text, renewals, &[("result", "ok")]), 3.0);
        assert_eq!(metric_value(text, renewals, &[]), 5.0);
        assert_eq!(metric_value(text, renewals, &[("result", "x")]), 0.0);
        let opened = "trellis_proxy_tunnel_connections_opened_total";
        assert_eq!(metric_value(text, opened, &[]), 1.0);
        assert_eq!(metric_value(text, "trellis_proxy_tunnel", &[]), 0.0);
    }
}
