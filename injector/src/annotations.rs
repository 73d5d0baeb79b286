//! The pod annotations Trellis reads and writes (names from docs/design.md "Ports and names"),
//! parsed into types. Reading them is the only place the injector looks at free-form user
//! text on the pod, so every value is validated here and a bad one is reported with the
//! annotation's name and the value.
//!
//! Whether to inject is decided in [`crate::decide`]; what to add is built in
//! [`crate::containers`] and [`crate::patch`].

use std::{collections::BTreeMap, fmt};

use k8s_openapi::api::core::v1::Pod;

use crate::quantity::{Quantity, QuantityError};

/// Opt a pod in (`"enabled"`) or out (`"disabled"`) of injection.
pub const INJECT: &str = "trellis.dev/inject";
/// Set by the injector on every pod it injected; its presence means "already injected".
pub const INJECTED: &str = "trellis.dev/injected";
/// Comma-separated inbound ports the init step leaves alone.
pub const EXCLUDE_INBOUND_PORTS: &str = "trellis.dev/exclude-inbound-ports";
/// Comma-separated outbound ports the init step leaves alone.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "trellis.dev/exclude-outbound-ports";
/// Comma-separated outbound networks (`10.0.0.0/8`, `fd00::/8`, or single addresses) the init
/// step leaves alone: their traffic bypasses the proxy, in plain TCP.
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "trellis.dev/exclude-outbound-cidrs";
/// The proxy's CPU request for this pod, overriding the injector's configured default.
pub const PROXY_CPU: &str = "trellis.dev/proxy-cpu";
/// The proxy's memory request for this pod, overriding the injector's configured default.
pub const PROXY_MEMORY: &str = "trellis.dev/proxy-memory";
/// `"false"` keeps the pod's app probes as they are; `"true"` rewrites them to the proxy even
/// when the injector's default (`--rewrite-app-probes`) is off.
pub const REWRITE_APP_PROBES: &str = "trellis.dev/rewrite-app-probes";
/// Set by the injector: [`APP_PROBES_REWRITTEN`] or [`APP_PROBES_KEPT`], so `trellis check`
/// and a reinvoked webhook can tell what happened to the pod's probes.
pub const APP_PROBES: &str = "trellis.dev/app-probes";
/// [`APP_PROBES`]: the app's HTTP, TCP and gRPC probes go through the proxy's 15020.
pub const APP_PROBES_REWRITTEN: &str = "rewritten";
/// [`APP_PROBES`]: the app's probes were left as they are (opted out, or the default is off).
pub const APP_PROBES_KEPT: &str = "kept";
/// The proxy's log filter for this pod (`TRELLIS_LOG`), e.g. `debug` or
/// `info,trellis_proxy::tunnel=debug`, overriding the injector's `--proxy-log`.
pub const LOG_LEVEL: &str = "trellis.dev/log-level";
/// Label put on injected pods so that selectors (NetworkPolicies, `kubectl get -l`) find them.
pub const MESH_LABEL: &str = "trellis.dev/mesh";
/// `kubectl logs`/`exec` default container; set when the proxy becomes the first container.
pub const KUBECTL_DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// What the pod's `trellis.dev/inject` annotation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectRequest<'a> {
    /// No annotation: the namespace decides.
    Unset,
    /// `"enabled"`: inject, in any namespace except the control plane's.
    Enabled,
    /// `"disabled"`: never inject.
    Disabled,
    /// Any other value. Treated as [`InjectRequest::Unset`], and reported as a warning so
    /// that `"false"` or `"off"` does not silently mean "inject".
    Unrecognised(&'a str),
}

/// The annotations of `pod` (empty when it has none).
pub fn of(pod: &Pod) -> Option<&BTreeMap<String, String>> {
    pod.metadata.annotations.as_ref()
}

/// The value of one annotation, if present.
pub fn get<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    of(pod).and_then(|a| a.get(key)).map(String::as_str)
}

/// Reads `trellis.dev/inject`.
pub fn inject_request(pod: &Pod) -> InjectRequest<'_> {
    match get(pod, INJECT) {
        None => InjectRequest::Unset,
        Some("enabled") => InjectRequest::Enabled,
        Some("disabled") => InjectRequest::Disabled,
        Some(other) => InjectRequest::Unrecognised(other),
    }
}

/// Why a pod annotation cannot be used; the pod is then admitted without injection and the
/// message goes back to the user as an admission warning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnnotationError {
    /// A port list has an entry that is not a port number 1–65535.
    #[error(
        "annotation {annotation}={value:?}: {entry:?} is not a port (1-65535); expected a comma-separated list like \"8080,9090\""
    )]
    BadPort {
        /// Which annotation.
        annotation: &'static str,
        /// Its whole value.
        value: String,
        /// The entry that failed.
        entry: String,
    },
    /// A yes/no annotation has another value.
    #[error("annotation {annotation}={value:?}: expected \"true\" or \"false\"")]
    BadBool {
        /// Which annotation.
        annotation: &'static str,
        /// Its value.
        value: String,
    },
    /// A CIDR list has an entry that is not an address or `address/prefix`.
    #[error(
        "annotation {EXCLUDE_OUTBOUND_CIDRS}={value:?}: {entry:?} is not a network; expected a comma-separated list like \"10.0.0.0/8,fd00::/8,192.0.2.7\""
    )]
    BadCidr {
        /// Its whole value.
        value: String,
        /// The entry that failed.
        entry: String,
    },
    /// The log-level annotation is not a usable log filter.
    #[error("annotation {LOG_LEVEL}: {0}")]
    BadLogLevel(trellis_telemetry::FilterError),
    /// A resource annotation is not a quantity.
    #[error("annotation {annotation}: {source}")]
    BadQuantity {
        /// Which annotation.
        annotation: &'static str,
        /// What is wrong with the value.
        source: QuantityError,
    },
}

/// A validated list of TCP ports, in the order given, without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(Vec<u16>);

impl PortList {
    /// Parses `"80, 443,8080"`; an empty or whitespace-only text is the empty list.
    /// Returns the offending entry on failure.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ports = Vec::new();
        if text.trim().is_empty() {
            return Ok(Self(ports));
        }
        for entry in text.split(',') {
            let entry = entry.trim();
            match entry.parse::<u16>() {
                Ok(port) if port != 0 => {
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
                _ => return Err(entry.to_owned()),
            }
        }
        Ok(Self(ports))
    }

    /// Whether the list has no port.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ports.
    pub fn ports(&self) -> &[u16] {
        &self.0
    }
}

impl fmt::Display for PortList {
    /// The canonical comma list `trellis-proxy init` takes (`80,443`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, port) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{port}")?;
        }
        Ok(())
    }
}

/// The per-pod settings a pod's annotations give the injection, all validated.
#[derive(Debug, Clone, Default)]
pub struct PodOverrides {
    /// From `trellis.dev/exclude-inbound-ports`.
    pub exclude_inbound_ports: PortList,
    /// From `trellis.dev/exclude-outbound-ports`.
    pub exclude_outbound_ports: PortList,
    /// From `trellis.dev/exclude-outbound-cidrs`: checked entries, in the order given.
    pub exclude_outbound_cidrs: Vec<String>,
    /// From `trellis.dev/proxy-cpu`: the proxy's CPU request.
    pub proxy_cpu: Option<Quantity>,
    /// From `trellis.dev/proxy-memory`: the proxy's memory request.
    pub proxy_memory: Option<Quantity>,
    /// From `trellis.dev/rewrite-app-probes`; `None`: the injector's default.
    pub rewrite_app_probes: Option<bool>,
    /// From `trellis.dev/log-level`: the proxy's log filter, checked.
    pub log_level: Option<String>,
}

impl PodOverrides {
    /// Reads and validates every override annotation of `pod`.
    pub fn from_pod(pod: &Pod) -> Result<Self, AnnotationError> {
        Ok(Self {
            exclude_inbound_ports: ports(pod, EXCLUDE_INBOUND_PORTS)?,
            exclude_outbound_ports: ports(pod, EXCLUDE_OUTBOUND_PORTS)?,
            exclude_outbound_cidrs: cidrs(pod)?,
            proxy_cpu: quantity(pod, PROXY_CPU)?,
            proxy_memory: quantity(pod, PROXY_MEMORY)?,
            rewrite_app_probes: boolean(pod, REWRITE_APP_PROBES)?,
            log_level: log_level(pod)?,
        })
    }
}

fn boolean(pod: &Pod, annotation: &'static str) -> Result<Option<bool>, AnnotationError> {
    match get(pod, annotation) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(AnnotationError::BadBool {
            annotation,
            value: other.to_owned(),
        }),
    }
}

fn ports(pod: &Pod, annotation: &'static str) -> Result<PortList, AnnotationError> {
    let Some(value) = get(pod, annotation) else {
        return Ok(PortList::default());
    };
    PortList::parse(value).map_err(|entry| AnnotationError::BadPort {
        annotation,
        value: value.to_owned(),
        entry,
    })
}

fn cidrs(pod: &Pod) -> Result<Vec<String>, AnnotationError> {
    let Some(value) = get(pod, EXCLUDE_OUTBOUND_CIDRS) else {
        return Ok(Vec::new());
    };
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(str::trim)
        .map(|entry| {
            is_network(entry)
                .then(|| entry.to_owned())
                .ok_or_else(|| AnnotationError::BadCidr {
                    value: value.to_owned(),
                    entry: entry.to_owned(),
                })
        })
        .collect()
}

/// `address` or `address/prefix` with a prefix no longer than the address family's. The init
/// step parses the list again (and clears host bits); this check turns a typo into an admission
/// warning instead of a pod whose init container fails.
fn is_network(entry: &str) -> bool {
    let (address, prefix) = entry.split_once('/').unwrap_or((entry, "0"));
    match address.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            prefix.parse::<u8>().is_ok_and(|p| p <= max)
        }
        Err(_) => false,
    }
}

fn log_level(pod: &Pod) -> Result<Option<String>, AnnotationError> {
    let Some(value) = get(pod, LOG_LEVEL) else {
        return Ok(None);
    };
    trellis_telemetry::check_filter(value).map_err(AnnotationError::BadLogLevel)?;
    Ok(Some(value.trim().to_owned()))
}

fn quantity(pod: &Pod, annotation: &'static str) -> Result<Option<Quantity>, AnnotationError> {
    get(pod, annotation)
        .map(|value| value.parse::<Quantity>())
        .transpose()
        .map_err(|source| AnnotationError::BadQuantity { annotation, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with(annotations: &[(&str, &str)]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        pod
    }

    #[test]
    fn port_lists_parse_trim_and_deduplicate() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("", Ok("")),
            ("  ", Ok("")),
            ("80", Ok("80")),
            ("80, 443 ,8080", Ok("80,443,8080")),
            ("80,80", Ok("80")),
            ("0", Err("0")),
            ("65536", Err("65536")),
            ("80,,443", Err("")),
            ("80,http", Err("http")),
            ("-1", Err("-1")),
            ("1-100", Err("1-100")),
        ];
        for (text, expected) in cases {
            let got = PortList::parse(text).map(|l| l.to_string());
            assert_eq!(
                got.as_deref().map_err(String::as_str),
                *expected,
                "{text:?}"
            );
        }
    }

    #[test]
    fn cidr_lists_accept_networks_and_single_addresses() {
        let cases: &[(&str, Result<&[&str], &str>)] = &[
            ("", Ok(&[])),
            ("10.0.0.0/8", Ok(&["10.0.0.0/8"])),
            (
                " 10.0.0.0/8 , fd00::/8,192.0.2.7 ",
                Ok(&["10.0.0.0/8", "fd00::/8", "192.0.2.7"]),
            ),
            ("10.0.0.0/33", Err("10.0.0.0/33")),
            ("fd00::/129", Err("fd00::/129")),
            ("10.0.0.0/", Err("10.0.0.0/")),
            ("db.internal", Err("db.internal")),
            ("10.0.0.0/8,,fd00::/8", Err("")),
        ];
        for (text, expected) in cases {
            let got = cidrs(&pod_with(&[(EXCLUDE_OUTBOUND_CIDRS, text)]));
            match (expected, got) {
                (Ok(want), Ok(got)) => assert_eq!(got, *want, "{text:?}"),
                (Err(entry), Err(AnnotationError::BadCidr { entry: got, .. })) => {
                    assert_eq!(got, *entry, "{text:?}")
                }
                (want, got) => panic!("{text:?}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn inject_annotation_values_are_read_exactly() {
        assert_eq!(inject_request(&Pod::default()), InjectRequest::Unset);
        assert_eq!(
            inject_request(&pod_with(&[(INJECT, "enabled")])),
            InjectRequest::Enabled
        );
        assert_eq!(
            inject_request(&pod_with(&[(INJECT, "disabled")])),
            InjectRequest::Disabled
        );
        assert_eq!(
            inject_request(&pod_with(&[(INJECT, "false")])),
            InjectRequest::Unrecognised("false")
        );
    }

    #[test]
    fn overrides_name_the_bad_annotation() {
        let err =
            PodOverrides::from_pod(&pod_with(&[(EXCLUDE_OUTBOUND_PORTS, "53,dns")])).unwrap_err();
        assert!(err.to_string().contains(EXCLUDE_OUTBOUND_PORTS), "{err}");
        assert!(err.to_string().contains("\"dns\""), "{err}");

        let err = PodOverrides::from_pod(&pod_with(&[(PROXY_MEMORY, "lots")])).unwrap_err();
        assert!(err.to_string().contains(PROXY_MEMORY), "{err}");

        let err = PodOverrides::from_pod(&pod_with(&[(REWRITE_APP_PROBES, "no")])).unwrap_err();
        assert!(err.to_string().contains(REWRITE_APP_PROBES), "{err}");
        for (value, expected) in [("true", Some(true)), ("false", Some(false))] {
            let o = PodOverrides::from_pod(&pod_with(&[(REWRITE_APP_PROBES, value)])).unwrap();
            assert_eq!(o.rewrite_app_probes, expected);
        }
        let err = PodOverrides::from_pod(&pod_with(&[(LOG_LEVEL, "verbose")])).unwrap_err();
        assert!(err.to_string().contains(LOG_LEVEL), "{err}");
        assert!(err.to_string().contains("expected a level"), "{err}");

        let ok = PodOverrides::from_pod(&pod_with(&[
            (EXCLUDE_INBOUND_PORTS, "9090"),
            (PROXY_CPU, "250m"),
        ]))
        .unwrap();
        assert_eq!(ok.exclude_inbound_ports.ports(), &[9090]);
        assert_eq!(ok.proxy_cpu.map(|q| q.to_string()).as_deref(), Some("250m"));
        assert!(ok.proxy_memory.is_none());
        assert!(ok.log_level.is_none());
        let ok = PodOverrides::from_pod(&pod_with(&[(LOG_LEVEL, " info,trellis_proxy=debug ")]))
            .unwrap();
        assert_eq!(ok.log_level.as_deref(), Some("info,trellis_proxy=debug"));
    }
}
