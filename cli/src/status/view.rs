//! What `trellis status` shows, decided from plain data: the control plane's `/status`
//! document ([`CpStatus`]) joined with the meshed pods the API server lists ([`MeshedPod`]),
//! one [`ProxyRow`] per pod or stream, each judged in sync, behind, unreachable or expiring.
//!
//! Owns: the JSON types of `/status` as the CLI reads them, the join, the judgement and the
//! table. No I/O.

use serde::{Deserialize, Serialize};

use crate::humanize::short_duration;
use crate::style::{Palette, Style};
use crate::table::{Cell, Table};

/// Without its start of validity, a certificate with less than this left is flagged.
pub const EXPIRING_SECS: u64 = 15 * 60;

/// How far the mesh CA back-dates a certificate's start of validity (`trellis_ca`'s
/// `CLOCK_SKEW`): its lifetime starts this much after `not_before`.
pub const BACKDATE_SECS: u64 = 5 * 60;

/// Whether a certificate is expiring: expired, or under a quarter of its lifetime left —
/// proxies renew at half-life, so a healthy one never gets there — or, lifetime unknown,
/// under [`EXPIRING_SECS`] left.
pub fn expiring(not_before: Option<u64>, not_after: u64, now: u64) -> bool {
    let left = not_after.saturating_sub(now);
    let issued = not_before.map(|nb| nb.saturating_add(BACKDATE_SECS));
    match issued {
        _ if left == 0 => true,
        Some(at) if at < not_after => left < (not_after - at) / 4,
        _ => left < EXPIRING_SECS,
    }
}

/// The control plane's `GET /status` document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CpStatus {
    /// Its build version.
    pub control_plane_version: String,
    /// The mesh epoch now.
    pub epoch: u64,
    /// The mesh version now.
    pub version: u64,
    /// Open discovery streams.
    pub proxies: Vec<CpProxy>,
}

/// One open discovery stream, as the control plane reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CpProxy {
    /// Verified SPIFFE ID.
    pub id: String,
    /// The pod name the proxy gave.
    pub node: String,
    /// Source address of the stream (`ip:port`).
    pub peer: String,
    /// The proxy's build version.
    pub proxy_version: String,
    /// Epoch and version acknowledged.
    pub acked: [u64; 2],
    /// Certificate serial.
    pub cert_serial: Option<String>,
    /// Certificate start of validity, Unix seconds.
    #[serde(default)]
    pub cert_not_before: Option<u64>,
    /// Certificate expiry, Unix seconds.
    pub cert_not_after: Option<u64>,
    /// mTLS mode sent.
    pub mtls: Option<String>,
}

/// A meshed pod, from the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshedPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its IP, once it has one.
    pub ip: Option<String>,
    /// The injector's `trellis.dev/app-probes` annotation ("rewritten", "kept").
    pub app_probes: Option<String>,
}

/// How a proxy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Holds the control plane's version; certificate not near expiry.
    Synced,
    /// Acknowledged an older version (or another epoch): it is applying, or stuck.
    Stale,
    /// A meshed pod with no discovery stream: its proxy is down or cannot reach the control
    /// plane.
    Unreachable,
    /// Its certificate is [`expiring`] (or has expired).
    Expiring,
}

/// One line of `trellis status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyRow {
    /// `namespace/name` of the pod, or the node name a stream gave when no pod matches.
    pub pod: String,
    /// SPIFFE ID (none for an unreachable pod).
    pub identity: Option<String>,
    /// Certificate serial.
    pub cert_serial: Option<String>,
    /// Seconds of validity left (negative: expired).
    pub cert_secs_left: Option<i64>,
    /// Acknowledged version (same epoch as the control plane's), or none.
    pub acked_version: Option<u64>,
    /// The control plane's version.
    pub control_plane_version: u64,
    /// mTLS mode.
    pub mtls: Option<String>,
    /// "rewritten", "kept", or none (not a pod, or an injector that did not say).
    pub app_probes: Option<String>,
    /// The proxy's build version.
    pub proxy_version: Option<String>,
    /// The verdict.
    pub state: State,
}

/// The whole report (`-o json|yaml` prints it as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The control plane's build version.
    pub control_plane_version: String,
    /// The mesh version proxies should hold.
    pub mesh_version: u64,
    /// One row per meshed pod or open stream.
    pub proxies: Vec<ProxyRow>,
}

impl Report {
    /// Whether every listed proxy is synced (`status --exit-code`); an empty list is.
    pub fn all_synced(&self) -> bool {
        self.proxies.iter().all(|p| p.state == State::Synced)
    }
}

/// Joins streams to pods (by pod IP, then by the node name the proxy gave) and judges each.
/// `pods` is `None` without a cluster (`--local`): every stream is listed by its node name.
pub fn report(cp: &CpStatus, pods: Option<&[MeshedPod]>, now_unix: u64) -> Report {
    let mut used = vec![false; cp.proxies.len()];
    let mut rows = Vec::new();
    for pod in pods.unwrap_or_default() {
        let ip_match = |p: &CpProxy| {
            pod.ip
                .as_deref()
                .is_some_and(|ip| peer_ip(&p.peer) == Some(ip))
        };
        let found = (0..cp.proxies.len())
            .find(|&i| !used[i] && ip_match(&cp.proxies[i]))
            .or_else(|| {
                (0..cp.proxies.len()).find(|&i| !used[i] && cp.proxies[i].node == pod.name)
            });
        let pod_name = format!("{}/{}", pod.namespace, pod.name);
        rows.push(match found {
            Some(i) => {
                used[i] = true;
                row(
                    pod_name,
                    Some(&cp.proxies[i]),
                    cp,
                    pod.app_probes.clone(),
                    now_unix,
                )
            }
            None => row(pod_name, None, cp, pod.app_probes.clone(), now_unix),
        });
    }
    for (i, p) in cp.proxies.iter().enumerate() {
        if !used[i] && pods.is_none() {
            rows.push(row(p.node.clone(), Some(p), cp, None, now_unix));
        }
    }
    Report {
        control_plane_version: cp.control_plane_version.clone(),
        mesh_version: cp.version,
        proxies: rows,
    }
}

/// The IP of an `ip:port` or `[ip]:port`.
fn peer_ip(peer: &str) -> Option<&str> {
    let (host, _) = peer.rsplit_once(':')?;
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

fn row(
    pod: String,
    stream: Option<&CpProxy>,
    cp: &CpStatus,
    app_probes: Option<String>,
    now_unix: u64,
) -> ProxyRow {
    let Some(s) = stream else {
        return ProxyRow {
            pod,
            identity: None,
            cert_serial: None,
            cert_secs_left: None,
            acked_version: None,
            control_plane_version: cp.version,
            mtls: None,
            app_probes,
            proxy_version: None,
            state: State::Unreachable,
        };
    };
    let secs_left = s
        .cert_not_after
        .map(|t| i64::try_from(t).unwrap_or(i64::MAX) - i64::try_from(now_unix).unwrap_or(0));
    let acked_version = (s.acked[0] == cp.epoch).then_some(s.acked[1]);
    let state = if s
        .cert_not_after
        .is_some_and(|na| expiring(s.cert_not_before, na, now_unix))
    {
        State::Expiring
    } else if acked_version == Some(cp.version) {
        State::Synced
    } else {
        State::Stale
    };
    ProxyRow {
        pod,
        identity: Some(s.id.clone()),
        cert_serial: s.cert_serial.clone(),
        cert_secs_left: secs_left,
        acked_version,
        control_plane_version: cp.version,
        mtls: s.mtls.clone(),
        app_probes,
        proxy_version: Some(s.proxy_version.clone()),
        state,
    }
}

/// The table's columns.
pub const COLUMNS: [&str; 8] = [
    "POD",
    "IDENTITY",
    "CERT",
    "EXPIRES IN",
    "DISCOVERY",
    "MTLS",
    "PROBES",
    "STATE",
];

/// The report as a table, with a summary line.
pub fn table(report: &Report, palette: Palette) -> String {
    let dash = || Cell::plain("-");
    let rows: Vec<Vec<Cell>> = report
        .proxies
        .iter()
        .map(|r| {
            vec![
                Cell::plain(&r.pod),
                r.identity.as_deref().map_or_else(dash, Cell::plain),
                r.cert_serial
                    .as_deref()
                    .map_or_else(dash, |s| Cell::plain(short_serial(s))),
                r.cert_secs_left.map_or_else(dash, |l| {
                    if l <= 0 {
                        Cell::styled("expired", Style::Bad)
                    } else {
                        Cell::plain(short_duration(l.unsigned_abs()))
                    }
                }),
                match r.acked_version {
                    _ if r.state == State::Unreachable => dash(),
                    Some(v) if v == r.control_plane_version => {
                        Cell::plain(format!("v{v} (current)"))
                    }
                    Some(v) => {
                        Cell::styled(format!("v{v} of v{}", r.control_plane_version), Style::Warn)
                    }
                    None => Cell::styled("other epoch", Style::Warn),
                },
                r.mtls.as_deref().map_or_else(dash, Cell::plain),
                r.app_probes.as_deref().map_or_else(dash, Cell::plain),
                match r.state {
                    State::Synced => Cell::styled("SYNCED", Style::Good),
                    State::Stale => Cell::styled("STALE", Style::Warn),
                    State::Unreachable => Cell::styled("UNREACHABLE", Style::Bad),
                    State::Expiring => Cell::styled("CERT EXPIRING", Style::Bad),
                },
            ]
        })
        .collect();
    let mut out = format!(
        "control plane {} at mesh version v{}\n",
        report.control_plane_version, report.mesh_version
    );
    if rows.is_empty() {
        out.push_str("no meshed pods\n");
        return out;
    }
    out.push_str(&Table::render(&COLUMNS, &rows, palette));
    let flagged = report
        .proxies
        .iter()
        .filter(|r| r.state != State::Synced)
        .count();
    out.push_str(&format!(
        "{} proxies, {} need attention\n",
        report.proxies.len(),
        flagged
    ));
    out
}

/// The first 16 hex digits of a serial (enough to tell certificates apart).
fn short_serial(serial: &str) -> String {
    serial.chars().take(16).collect()
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
