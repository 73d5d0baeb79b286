//! What kube-proxy, in iptables mode, installs on a node for Services — as pure functions from
//! [`Service`]s to `iptables-restore` input, and from `iptables-save -c` output back to
//! [`DnatCounts`]. Running the commands in the node's namespace is [`crate::node`]'s business.
//!
//! The chains are kube-proxy's: `PREROUTING`/`OUTPUT` → `KUBE-SERVICES` → one `KUBE-SVC-…`
//! per service port, which picks one `KUBE-SEP-…` per endpoint with `-m statistic --mode
//! random --probability 1/n, 1/(n-1), …`, which DNATs to `podIP:targetPort`; `POSTROUTING` →
//! `KUBE-POSTROUTING` masquerades DNAT'd connections (`--ctstate DNAT`), so that replies come
//! back through the node although client and backend share the bridge's subnet. A port without
//! endpoints is REJECTed in the filter table, as kube-proxy does. One addition of the sandbox:
//! a connection to an address of [`SERVICE_CIDR`] that no service port takes is REJECTed too
//! (the node has no uplink to send it to, and the client would wait for its timeout).
//!
//! Chain names are `KUBE-SVC-`/`KUBE-SEP-` and 16 hex digits of a hash of the service port
//! (and endpoint), so an endpoint that stays keeps its chain — and its packet counters — while
//! the others change. Only TCP ports.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::error::{Result, SandboxError};
use crate::pod;

/// Where Service ClusterIPs come from: 198.19.0.0/16, routed by pods via the node.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);
/// Longest Service name (it goes into rule comments).
pub const MAX_SERVICE_NAME: usize = 100;
/// The nat chain `PREROUTING` and `OUTPUT` jump to.
pub const SERVICES_CHAIN: &str = "KUBE-SERVICES";
/// The nat chain `POSTROUTING` jumps to.
const POSTROUTING_CHAIN: &str = "KUBE-POSTROUTING";

/// A Service of type ClusterIP: a name, a ClusterIP from [`SERVICE_CIDR`], and TCP ports, each
/// with its endpoints (pod IP and target port). Built freely; checked when the node installs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its name, e.g. `shop/backend`: the key the node knows it by.
    name: String,
    /// Its ClusterIP.
    cluster_ip: Ipv4Addr,
    /// Its ports, in the order given.
    ports: Vec<ServicePort>,
}

/// One port of a [`Service`] and where connections to it go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port on the ClusterIP.
    pub port: u16,
    /// The endpoints, `podIP:targetPort`; empty means REJECT.
    pub endpoints: Vec<SocketAddrV4>,
}

impl Service {
    /// A Service named `name` (1 to 100 characters of `a-z`, `0-9`, `-`, `.` and `/`, e.g.
    /// `shop/backend`) at `cluster_ip`, with no port yet.
    pub fn new(name: impl Into<String>, cluster_ip: Ipv4Addr) -> Service {
        Service {
            name: name.into(),
            cluster_ip,
            ports: Vec::new(),
        }
    }

    /// Adds TCP port `port`, whose connections go to one of `endpoints` (`podIP:targetPort`).
    pub fn port(mut self, port: u16, endpoints: impl IntoIterator<Item = SocketAddrV4>) -> Self {
        self.ports.push(ServicePort {
            port,
            endpoints: endpoints.into_iter().collect(),
        });
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its ClusterIP.
    pub fn cluster_ip(&self) -> Ipv4Addr {
        self.cluster_ip
    }

    /// Its ports.
    pub fn ports(&self) -> &[ServicePort] {
        &self.ports
    }

    /// Replaces the endpoints of port `port`.
    pub(crate) fn set_endpoints(&mut self, port: u16, endpoints: &[SocketAddrV4]) -> Result<()> {
        let name = self.name.clone();
        let p = self
            .ports
            .iter_mut()
            .find(|p| p.port == port)
            .ok_or_else(|| SandboxError::Service {
                service: name,
                reason: format!("it has no port {port}"),
            })?;
        p.endpoints = endpoints.to_vec();
        Ok(())
    }

    /// Checks the service on its own and against `others` (the node's other services).
    pub(crate) fn check<'a>(&self, others: impl IntoIterator<Item = &'a Service>) -> Result<()> {
        let error = |reason: String| SandboxError::Service {
            service: self.name.clone(),
            reason,
        };
        check_name(&self.name).map_err(|r| error(r.to_owned()))?;
        check_cluster_ip(self.cluster_ip).map_err(error)?;
        if self.ports.is_empty() {
            return Err(error("give it at least one port".into()));
        }
        let mut ports = BTreeSet::new();
        for p in &self.ports {
            if p.port == 0 || !ports.insert(p.port) {
                return Err(error(format!(
                    "port {} is 0 or listed twice; ports are 1 to 65535, each once",
                    p.port
                )));
            }
            let mut endpoints = BTreeSet::new();
            for e in &p.endpoints {
                if e.port() == 0 || !endpoints.insert(e) {
                    return Err(error(format!(
                        "port {}: endpoint {e} has target port 0 or is listed twice",
                        p.port
                    )));
                }
                pod::check_ip(*e.ip()).map_err(|err| error(format!("port {}: {err}", p.port)))?;
            }
        }
        if let Some(other) = others
            .into_iter()
            .find(|o| o.name != self.name && o.cluster_ip == self.cluster_ip)
        {
            return Err(error(format!(
                "ClusterIP {} is taken by service {:?}",
                self.cluster_ip, other.name
            )));
        }
        Ok(())
    }
}

/// `name`: 1 to [`MAX_SERVICE_NAME`] characters of `a-z`, `0-9`, `-`, `.` and `/`, starting
/// with a letter or digit (safe in a rule comment without quoting).
fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    let ok = name.len() <= MAX_SERVICE_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.' || c == b'/'
        });
    if ok {
        Ok(())
    } else {
        Err("use 1 to 100 characters of a-z, 0-9, -, . and /, starting with a letter or digit")
    }
}

/// A ClusterIP is in [`SERVICE_CIDR`] and is neither its network nor its broadcast address.
fn check_cluster_ip(ip: Ipv4Addr) -> std::result::Result<(), String> {
    let (net, len) = SERVICE_CIDR;
    let host_bits = u32::MAX >> u32::from(len);
    let host = u32::from(ip) & host_bits;
    if u32::from(ip) & !host_bits != u32::from(net) || host == 0 || host == host_bits {
        return Err(format!(
            "ClusterIP {ip} is not a host address of {net}/{len} (SERVICE_CIDR)"
        ));
    }
    Ok(())
}

/// How many connections the node DNAT'd for one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnatCounts {
    /// Connections DNAT'd to any endpoint of the service since it was first added.
    pub total: u64,
    /// The same per endpoint (`podIP:targetPort`), endpoints removed since included.
    pub by_endpoint: BTreeMap<SocketAddrV4, u64>,
}

/// One `KUBE-SEP-…` chain: whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointChain {
    /// The service's name.
    pub service: String,
    /// The endpoint it DNATs to.
    pub endpoint: SocketAddrV4,
}

/// What to install for a set of services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// `iptables-restore --noflush` input: rewrites `KUBE-SERVICES` (nat and filter) and every
    /// `KUBE-SVC-…` chain, and creates the `KUBE-SEP-…` chains not installed yet. One
    /// transaction per table: a connection sees the old rules or the new ones.
    pub rules: String,
    /// Every `KUBE-SVC-…` and `KUBE-SEP-…` chain the rules leave in use.
    pub chains: BTreeSet<String>,
    /// Who each `KUBE-SEP-…` chain of [`Plan::chains`] belongs to.
    pub endpoints: BTreeMap<String, EndpointChain>,
}

/// The rules a fresh node starts with (`iptables-restore` input, tables flushed): the jumps
/// from the built-in chains, the masquerade of DNAT'd connections, and empty `KUBE-SERVICES`
/// chains, which [`plan`] fills.
pub(crate) fn base_rules() -> String {
    format!(
        "*nat\n\
         :{SERVICES_CHAIN} - [0:0]\n\
         :{POSTROUTING_CHAIN} - [0:0]\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j {SERVICES_CHAIN}\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j {SERVICES_CHAIN}\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j {POSTROUTING_CHAIN}\n\
         -A {POSTROUTING_CHAIN} -m conntrack --ctstate DNAT -m comment --comment \"replies to DNAT'd connections come back through the node\" -j MASQUERADE\n\
         COMMIT\n\
         *filter\n\
         :{SERVICES_CHAIN} - [0:0]\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j {SERVICES_CHAIN}\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j {SERVICES_CHAIN}\n\
         COMMIT\n"
    )
}

/// The plan that makes the node's Service rules match `services` exactly, given the chains of
/// ours `installed` now: those `KUBE-SEP-…` chains are kept as they are (with their counters).
pub(crate) fn plan<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    installed: &BTreeSet<String>,
) -> Plan {
    let (net, len) = SERVICE_CIDR;
    let mut nat_chains = format!(":{SERVICES_CHAIN} - [0:0]\n");
    let mut nat_rules = String::new();
    let mut filter = format!("*filter\n:{SERVICES_CHAIN} - [0:0]\n");
    let mut chains = BTreeSet::new();
    let mut endpoints = BTreeMap::new();
    for service in services {
        let ip = service.cluster_ip;
        for p in &service.ports {
            let label = format!("{}:{}", service.name, p.port);
            if p.endpoints.is_empty() {
                let _ = writeln!(
                    filter,
                    "-A {SERVICES_CHAIN} -d {ip}/32 -p tcp -m comment --comment \"{label} has no endpoints\" -m tcp --dport {} -j REJECT --reject-with icmp-port-unreachable",
                    p.port
                );
                continue;
            }
            let svc = service_chain(&service.name, p.port);
            let _ = writeln!(nat_chains, ":{svc} - [0:0]");
            let _ = writeln!(
                nat_rules,
                "-A {SERVICES_CHAIN} -d {ip}/32 -p tcp -m comment --comment \"{label} cluster IP\" -m tcp --dport {} -j {svc}",
                p.port
            );
            let n = p.endpoints.len();
            for (i, endpoint) in p.endpoints.iter().enumerate() {
                let sep = endpoint_chain(&service.name, p.port, *endpoint);
                let pick = probability(i, n)
                    .map(|q| format!(" -m statistic --mode random --probability {q}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    nat_rules,
                    "-A {svc} -m comment --comment \"{label} -> {endpoint}\"{pick} -j {sep}"
                );
                if !installed.contains(&sep) {
                    let _ = writeln!(nat_chains, ":{sep} - [0:0]");
                    let _ = writeln!(
                        nat_rules,
                        "-A {sep} -p tcp -m comment --comment \"{label}\" -m tcp -j DNAT --to-destination {endpoint}"
                    );
                }
                endpoints.insert(
                    sep.clone(),
                    EndpointChain {
                        service: service.name.clone(),
                        endpoint: *endpoint,
                    },
                );
                chains.insert(sep);
            }
            chains.insert(svc);
        }
    }
    let _ = writeln!(
        filter,
        "-A {SERVICES_CHAIN} -d {net}/{len} -m comment --comment \"no service at this ClusterIP and port\" -j REJECT --reject-with icmp-port-unreachable\nCOMMIT"
    );
    Plan {
        rules: format!("*nat\n{nat_chains}{nat_rules}COMMIT\n{filter}"),
        chains,
        endpoints,
    }
}

/// `iptables-restore --noflush` input that deletes `chains` (flushed first; nothing may jump
/// to them any more).
pub(crate) fn delete_chains(chains: &[String]) -> String {
    let mut text = String::from("*nat\n");
    for chain in chains {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    for chain in chains {
        let _ = writeln!(text, "-X {chain}");
    }
    text.push_str("COMMIT\n");
    text
}

/// The `--probability` of the `i`-th of `n` endpoint rules, as kube-proxy writes it: each rule
/// takes an equal share of what the rules before it left, so the last takes the rest (`None`:
/// no statistic match).
pub(crate) fn probability(i: usize, n: usize) -> Option<String> {
    let left = n.checked_sub(i)?;
    (left > 1).then(|| format!("{:.10}", 1.0 / left as f64))
}

/// Packets matched by the DNAT rules of each chain, from `iptables-save -c -t nat` output
/// (`[packets:bytes] -A CHAIN … -j DNAT …`). In the nat table only the first packet of a
/// connection is seen, so packets are connections.
pub(crate) fn dnat_packets(save: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in save.lines() {
        let Some((counters, rule)) = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once("] -A "))
        else {
            continue;
        };
        if !rule.contains(" -j DNAT") {
            continue;
        }
        let packets = counters
            .split_once(':')
            .and_then(|(p, _)| p.parse::<u64>().ok());
        if let (Some(chain), Some(packets)) = (rule.split_whitespace().next(), packets) {
            *counts.entry(chain.to_owned()).or_insert(0) += packets;
        }
    }
    counts
}

/// `KUBE-SVC-…` of port `port` of service `name`.
pub(crate) fn service_chain(name: &str, port: u16) -> String {
    format!("KUBE-SVC-{}", hash16(&format!("{name}:{port}/tcp")))
}

/// `KUBE-SEP-…` of `endpoint` behind port `port` of service `name`.
pub(crate) fn endpoint_chain(name: &str, port: u16, endpoint: SocketAddrV4) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!("{name}:{port}/tcp:{endpoint}"))
    )
}

/// 16 hex digits of the FNV-1a hash of `text` (chain names are at most 28 characters).
fn hash16(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016X}")
}

#[cfg(test)]
#[path = "kube_proxy_tests.rs"]
mod tests;
