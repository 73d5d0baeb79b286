//! The app probes the injector moved out of the pod spec: `TRELLIS_APP_PROBES` (or
//! `--app-probes`), a JSON object from `/app-health/<container>/<livez|readyz|startupz>` to the
//! original probe in Kubernetes' own field names, parsed once at start into [`AppProbes`].
//!
//! ```json
//! {"/app-health/web/readyz": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTPS",
//!                                         "httpHeaders": [{"name": "Host", "value": "web"}]},
//!                             "timeoutSeconds": 2},
//!  "/app-health/web/livez":  {"tcpSocket": {"port": 8080}},
//!  "/app-health/db/startupz": {"grpc": {"port": 9090, "service": "db"}}}
//! ```
//!
//! Owns: that format, its validation (every error names the container and the probe) and the
//! path ↔ probe mapping. Pure; running a probe is [`super::check`]. Unknown fields are ignored,
//! so a newer injector's additions do not stop an older proxy.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;

/// Every app-health path starts with this.
pub const PATH_PREFIX: &str = "/app-health/";
/// Kubernetes' default `timeoutSeconds`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// `livenessProbe`, path segment `livez`.
    Liveness,
    /// `readinessProbe`, path segment `readyz`.
    Readiness,
    /// `startupProbe`, path segment `startupz`.
    Startup,
}

impl ProbeKind {
    /// All three, in path order.
    pub const ALL: [ProbeKind; 3] = [Self::Liveness, Self::Readiness, Self::Startup];

    /// The last segment of its path.
    pub fn segment(self) -> &'static str {
        match self {
            Self::Liveness => "livez",
            Self::Readiness => "readyz",
            Self::Startup => "startupz",
        }
    }

    /// Its field name in a container spec, for messages.
    pub fn field(self) -> &'static str {
        match self {
            Self::Liveness => "livenessProbe",
            Self::Readiness => "readinessProbe",
            Self::Startup => "startupProbe",
        }
    }
}

/// One probe's address: its container and kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeKey {
    /// The app container's name (a DNS label).
    pub container: String,
    /// Which probe.
    pub kind: ProbeKind,
}

impl ProbeKey {
    /// Reads `/app-health/<container>/<segment>`; `None` for anything else.
    pub fn from_path(path: &str) -> Option<ProbeKey> {
        let (container, segment) = path.strip_prefix(PATH_PREFIX)?.split_once('/')?;
        let kind = ProbeKind::ALL
            .into_iter()
            .find(|k| k.segment() == segment)?;
        is_dns_label(container).then(|| ProbeKey {
            container: container.to_owned(),
            kind,
        })
    }
}

impl fmt::Display for ProbeKey {
    /// The path kubelet asks for.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PATH_PREFIX}{}/{}", self.container, self.kind.segment())
    }
}

/// HTTP or HTTPS, as `httpGet.scheme` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (the default).
    Http,
    /// TLS without certificate verification, as kubelet does.
    Https,
}

/// An `httpGet` probe, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    /// HTTP or HTTPS.
    pub scheme: Scheme,
    /// `host`: where to connect instead of the pod IP.
    pub host: Option<String>,
    /// The app's port (named ports were resolved by the injector).
    pub port: u16,
    /// `path`, with a leading `/` (kubelet adds one too).
    pub path: PathAndQuery,
    /// `httpHeaders`, in order; a `Host` among them replaces the default host header.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A `tcpSocket` probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    /// `host`: where to connect instead of the pod IP.
    pub host: Option<String>,
    /// The app's port.
    pub port: u16,
}

/// A `grpc` probe: `grpc.health.v1.Health/Check` in plaintext HTTP/2 (kubelet has no TLS
/// option either).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grpc {
    /// The app's port.
    pub port: u16,
    /// The service name asked about (`""`: the server as a whole).
    pub service: String,
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `httpGet`.
    Http(HttpGet),
    /// `tcpSocket`.
    Tcp(TcpSocket),
    /// `grpc`.
    Grpc(Grpc),
}

/// One original probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProbe {
    /// What to do.
    pub action: Action,
    /// `timeoutSeconds`: the whole check (connect, TLS, answer) must fit in it.
    pub timeout: Duration,
}

impl fmt::Display for AppProbe {
    /// One line for logs and `/config_dump`; header values are left out (they may be secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = |h: &Option<String>| h.clone().unwrap_or_else(|| "<pod IP>".to_owned());
        match &self.action {
            Action::Http(h) => {
                let scheme = match h.scheme {
                    Scheme::Http => "HTTP",
                    Scheme::Https => "HTTPS",
                };
                write!(f, "{scheme} GET {}:{}{}", host(&h.host), h.port, h.path)?;
                if !h.headers.is_empty() {
                    let names: Vec<&str> = h.headers.iter().map(|(n, _)| n.as_str()).collect();
                    write!(f, " (headers {})", names.join(", "))?;
                }
            }
            Action::Tcp(t) => write!(f, "TCP {}:{}", host(&t.host), t.port)?,
            Action::Grpc(g) => {
                write!(f, "gRPC health <pod IP>:{} service {:?}", g.port, g.service)?
            }
        }
        write!(f, ", timeout {}s", self.timeout.as_secs_f64())
    }
}

/// Every app probe of the pod, by path. Empty when the injector rewrote none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProbes(BTreeMap<ProbeKey, AppProbe>);

impl AppProbes {
    /// The probe behind `key`.
    pub fn get(&self, key: &ProbeKey) -> Option<&AppProbe> {
        self.0.get(key)
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Path and probe, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&ProbeKey, &AppProbe)> {
        self.0.iter()
    }
}

impl serde::Serialize for AppProbes {
    /// Path → one-line description (see [`AppProbe`]'s `Display`): no header values.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, p)| (k.to_string(), p.to_string())))
    }
}

/// Why `TRELLIS_APP_PROBES` cannot be used; the proxy does not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeSpecError {
    /// Not a JSON object.
    #[error("expected a JSON object of app probes keyed by /app-health/<container>/<probe>: {0}")]
    NotAnObject(String),
    /// A key is not an app-health path.
    #[error("key {0:?}: expected /app-health/<container>/livez, readyz or startupz")]
    BadPath(String),
    /// One probe is unusable.
    #[error("{field} of container {container:?} ({path}): {reason}")]
    BadProbe {
        /// The container.
        container: String,
        /// `livenessProbe`, `readinessProbe` or `startupProbe`.
        field: &'static str,
        /// Its path.
        path: String,
        /// What is wrong and what was expected.
        reason: String,
    },
}

/// Parses the JSON the injector wrote. The empty text is no probe at all.
pub fn parse(json: &str) -> Result<AppProbes, ProbeSpecError> {
    if json.trim().is_empty() {
        return Ok(AppProbes::default());
    }
    let raw: BTreeMap<String, Value> =
        serde_json::from_str(json).map_err(|e| ProbeSpecError::NotAnObject(e.to_string()))?;
    let mut probes = BTreeMap::new();
    for (path, value) in raw {
        let key =
            ProbeKey::from_path(&path).ok_or_else(|| ProbeSpecError::BadPath(path.clone()))?;
        let probe = parse_probe(value).map_err(|reason| ProbeSpecError::BadProbe {
            container: key.container.clone(),
            field: key.kind.field(),
            path,
            reason,
        })?;
        probes.insert(key, probe);
    }
    Ok(AppProbes(probes))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProbe {
    http_get: Option<RawHttpGet>,
    tcp_socket: Option<RawTcp>,
    grpc: Option<RawGrpc>,
    timeout_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpGet {
    path: Option<String>,
    port: Value,
    host: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<RawHeader>,
}

#[derive(Deserialize)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct RawTcp {
    port: Value,
    host: Option<String>,
}

#[derive(Deserialize)]
struct RawGrpc {
    port: Value,
    service: Option<String>,
}

fn parse_probe(value: Value) -> Result<AppProbe, String> {
    let raw: RawProbe = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let timeout = match raw.timeout_seconds {
        None => DEFAULT_TIMEOUT,
        Some(s) if (1..=3600).contains(&s) => Duration::from_secs(s.unsigned_abs()),
        Some(s) => return Err(format!("timeoutSeconds {s}: expected 1 to 3600")),
    };
    let action = match (raw.http_get, raw.tcp_socket, raw.grpc) {
        (Some(h), None, None) => Action::Http(http_get(h)?),
        (None, Some(t), None) => Action::Tcp(TcpSocket {
            host: host(t.host)?,
            port: port(&t.port)?,
        }),
        (None, None, Some(g)) => Action::Grpc(Grpc {
            port: port(&g.port)?,
            service: g.service.unwrap_or_default(),
        }),
        _ => return Err("expected exactly one of httpGet, tcpSocket, grpc".to_owned()),
    };
    Ok(AppProbe { action, timeout })
}

fn http_get(h: RawHttpGet) -> Result<HttpGet, String> {
    let scheme = match h.scheme.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("HTTP") => Scheme::Http,
        Some("HTTPS") => Scheme::Https,
        Some(other) => return Err(format!("scheme {other:?}: expected HTTP or HTTPS")),
    };
    let path = h.path.unwrap_or_default();
    let with_slash = if path.starts_with('/') {
        path.clone()
    } else {
        format!("/{path}")
    };
    let path = PathAndQuery::try_from(with_slash)
        .map_err(|e| format!("path {path:?}: {e}; expected a URL path like /healthz"))?;
    let headers = h
        .http_headers
        .into_iter()
        .map(|RawHeader { name, value }| {
            let n = HeaderName::try_from(&name)
                .map_err(|_| format!("httpHeaders: {name:?} is not a header name"))?;
            let v = HeaderValue::try_from(&value)
                .map_err(|_| format!("httpHeaders: the value of {name:?} is not a header value"))?;
            Ok((n, v))
        })
        .collect::<Result<_, String>>()?;
    Ok(HttpGet {
        scheme,
        host: host(h.host)?,
        port: port(&h.port)?,
        path,
        headers,
    })
}

/// A port number 1–65535; a name means the injector could not resolve it.
fn port(value: &Value) -> Result<u16, String> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {n}: expected 1 to 65535")),
        Value::String(name) => Err(format!(
            "port {name:?} is a name the injector did not resolve; expected a number"
        )),
        other => Err(format!("port {other}: expected a number 1 to 65535")),
    }
}

/// An optional host: empty means the pod IP; otherwise it must be a usable host name or IP.
fn host(host: Option<String>) -> Result<Option<String>, String> {
    match host {
        None => Ok(None),
        Some(h) if h.is_empty() => Ok(None),
        Some(h) => {
            let ok = h.parse::<std::net::IpAddr>().is_ok()
                || (h.len() <= 253
                    && h.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    }));
            if ok {
                Ok(Some(h))
            } else {
                Err(format!("host {h:?}: expected an IP address or a DNS name"))
            }
        }
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests;
