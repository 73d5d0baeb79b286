//! The node ([`Node`]): the namespace every pod is plugged into, standing in for one Kubernetes
//! node. It holds the bridge [`BRIDGE`] with the node's address [`NODE_IP`] (every pod's
//! default gateway), forwards IPv4, and does kube-proxy's job in iptables mode for the Services
//! it is given: [`Node::add_service`], [`Node::set_endpoints`], [`Node::dnat_counts`]. The
//! rules themselves are [`crate::kube_proxy`]'s pure functions; this module runs them.
//!
//! Nothing leaves the sandbox: the node has no uplink. Its routes are the bridge's /24 and
//! [`SERVICE_CIDR`], also on the bridge (where no pod has such an address): a connection to a
//! ClusterIP passes the route lookup and crosses the filter table's `FORWARD` chain, where
//! kube-proxy's REJECTs are, and one that no service takes is REJECTed there too (see
//! [`crate::kube_proxy`]). ICMP redirects are off: the node forwards DNAT'd connections out of
//! the interface they came in by, and must not tell a client to bypass it.
//!
//! Frames switched between pods never cross the node's iptables, on every host: where
//! br_netfilter is loaded, the node turns `net.bridge.bridge-nf-call-iptables` (and the ip6 and
//! arp ones) off in its namespace. So nothing depends on br_netfilter: replies to DNAT'd
//! connections come back through the node because they are masqueraded, not because bridged
//! frames are de-NATed. The rules live in the node's namespace and go with it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Result, SandboxError, io_error};
use crate::kube_proxy::{self, DnatCounts, EndpointChain, SERVICE_CIDR, Service};
use crate::netns::{Cmd, Netns};
use crate::pod::POD_PREFIX_LEN;

/// The bridge in the node's namespace; every pod's `eth0` is plugged into it.
pub const BRIDGE: &str = "br0";
/// The node's address on the bridge: every pod's default gateway.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

/// The node: its namespace, and the Services it does kube-proxy's job for.
#[derive(Debug)]
pub struct Node {
    /// Its namespace (bridge, routes, iptables rules).
    netns: Netns,
    /// Where the `iptables-restore` inputs are written (kept: they are the log of rule changes).
    rules_dir: PathBuf,
    /// Numbers the rule files.
    counter: AtomicU32,
    /// What is installed; locked for the whole of every change, so changes never interleave.
    state: Mutex<State>,
}

/// The Services the node knows and the chains installed for them.
#[derive(Debug, Default)]
struct State {
    /// Services by name.
    services: BTreeMap<String, Service>,
    /// Every `KUBE-SVC-…` and `KUBE-SEP-…` chain installed now.
    installed: BTreeSet<String>,
    /// Whose each `KUBE-SEP-…` chain ever installed is (chains are named by a hash).
    owners: BTreeMap<String, EndpointChain>,
    /// DNAT counts of `KUBE-SEP-…` chains since deleted: service → endpoint → connections.
    retired: BTreeMap<String, BTreeMap<SocketAddrV4, u64>>,
}

impl Node {
    /// Creates the node's namespace `name` with the bridge up at [`NODE_IP`]/24, forwarding on,
    /// ICMP redirects and br_netfilter off, [`SERVICE_CIDR`] routed on the bridge, and
    /// kube-proxy's base chains (no Service yet). Logs and rule files go under `log_dir`.
    pub(crate) fn create(name: String, log_dir: PathBuf) -> Result<Node> {
        let netns = Netns::create(name, log_dir.clone())?;
        netns.exec_ok(&Cmd::new("sysctl").args([
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
        ]))?;
        // Keys that exist only where br_netfilter is loaded: `-e` ignores them elsewhere.
        netns.exec_ok(&Cmd::new("sysctl").args([
            "-q",
            "-e",
            "-w",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ]))?;
        netns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        let node_cidr = format!("{NODE_IP}/{POD_PREFIX_LEN}");
        netns.ip(&["addr", "add", &node_cidr, "dev", BRIDGE])?;
        netns.ip(&["link", "set", BRIDGE, "up"])?;
        let (net, len) = SERVICE_CIDR;
        netns.ip(&["route", "add", &format!("{net}/{len}"), "dev", BRIDGE])?;
        let node = Node {
            netns,
            rules_dir: log_dir,
            counter: AtomicU32::new(0),
            state: Mutex::new(State::default()),
        };
        node.restore(&kube_proxy::base_rules(), false)?;
        node.restore(&kube_proxy::plan([], &BTreeSet::new()).rules, true)?;
        Ok(node)
    }

    /// Its namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Its address on the bridge, [`NODE_IP`].
    pub fn ip(&self) -> Ipv4Addr {
        NODE_IP
    }

    /// Installs `service` as kube-proxy would (see [`crate::kube_proxy`]). Errors if the
    /// service is malformed (name, ClusterIP outside [`SERVICE_CIDR`], ports, endpoints that are
    /// not pod addresses), if a service of this name exists, or if its ClusterIP is taken.
    pub fn add_service(&self, service: &Service) -> Result<()> {
        let mut state = self.state();
        if state.services.contains_key(service.name()) {
            return Err(SandboxError::Service {
                service: service.name().to_owned(),
                reason: "a service of this name exists; use update_service to change it".into(),
            });
        }
        self.sync(&mut state, service.clone())
    }

    /// Replaces the existing service of `service`'s name (ClusterIP, ports, endpoints) in one
    /// step: a new connection is DNAT'd by the old rules or by the new ones, never by neither.
    /// Endpoints that stay keep their chains and counters; connections already DNAT'd keep
    /// their endpoint (conntrack), as with kube-proxy.
    pub fn update_service(&self, service: &Service) -> Result<()> {
        let mut state = self.state();
        if !state.services.contains_key(service.name()) {
            return Err(unknown(service.name()));
        }
        self.sync(&mut state, service.clone())
    }

    /// Replaces the endpoints of port `port` of service `name` (see [`Node::update_service`]);
    /// an empty list makes the port REJECT new connections.
    pub fn set_endpoints(&self, name: &str, port: u16, endpoints: &[SocketAddrV4]) -> Result<()> {
        let mut state = self.state();
        let mut service = state
            .services
            .get(name)
            .cloned()
            .ok_or_else(|| unknown(name))?;
        service.set_endpoints(port, endpoints)?;
        self.sync(&mut state, service)
    }

    /// Removes service `name` and its chains; its counts stay readable.
    pub fn remove_service(&self, name: &str) -> Result<()> {
        let mut state = self.state();
        let mut services = state.services.clone();
        services.remove(name).ok_or_else(|| unknown(name))?;
        self.apply(&mut state, services)
    }

    /// Service `name` as installed now.
    pub fn service(&self, name: &str) -> Option<Service> {
        self.state().services.get(name).cloned()
    }

    /// How many connections the node has DNAT'd for service `name` since it was first added,
    /// in total and per endpoint (endpoints removed since included), from the packet counters
    /// of its DNAT rules (`iptables-save -c`). Errors for a name never added.
    pub fn dnat_counts(&self, name: &str) -> Result<DnatCounts> {
        let state = self.state();
        let retired = state.retired.get(name);
        if !state.services.contains_key(name) && retired.is_none() {
            return Err(unknown(name));
        }
        let live = kube_proxy::dnat_packets(&self.save_nat()?);
        let mut counts = DnatCounts {
            total: 0,
            by_endpoint: retired.cloned().unwrap_or_default(),
        };
        for chain in &state.installed {
            if let (Some(owner), Some(n)) = (state.owners.get(chain), live.get(chain))
                && owner.service == name
            {
                *counts.by_endpoint.entry(owner.endpoint).or_insert(0) += n;
            }
        }
        counts.total = counts.by_endpoint.values().sum();
        Ok(counts)
    }

    /// The node's nat and filter tables with counters (`iptables-save -c`), for messages.
    pub fn iptables_save(&self) -> Result<String> {
        self.netns.exec_ok(&Cmd::new("iptables-save").arg("-c"))
    }

    /// Installs `services` with `changed` put in, once it passes its checks.
    fn sync(&self, state: &mut State, changed: Service) -> Result<()> {
        changed.check(
            state
                .services
                .values()
                .filter(|s| s.name() != changed.name()),
        )?;
        let mut services = state.services.clone();
        services.insert(changed.name().to_owned(), changed);
        self.apply(state, services)
    }

    /// Makes the installed rules match `services`: one restore switches every service's rules
    /// at once; then the chains no longer used (nothing jumps to them any more, so their
    /// counts are final) are counted into `retired` and deleted.
    fn apply(&self, state: &mut State, services: BTreeMap<String, Service>) -> Result<()> {
        let plan = kube_proxy::plan(services.values(), &state.installed);
        self.restore(&plan.rules, true)?;
        state.services = services;
        state.installed.extend(plan.chains.iter().cloned());
        state.owners.extend(plan.endpoints);
        let stale: Vec<String> = state.installed.difference(&plan.chains).cloned().collect();
        if stale.is_empty() {
            return Ok(());
        }
        let counts = kube_proxy::dnat_packets(&self.save_nat()?);
        self.restore(&kube_proxy::delete_chains(&stale), true)?;
        for chain in &stale {
            state.installed.remove(chain);
            if let (Some(owner), Some(n)) = (state.owners.get(chain), counts.get(chain)) {
                *state
                    .retired
                    .entry(owner.service.clone())
                    .or_default()
                    .entry(owner.endpoint)
                    .or_insert(0) += n;
            }
        }
        Ok(())
    }

    /// Runs `iptables-restore` (with `--noflush` when `noflush`) on `rules`, from a file kept
    /// in the node's log directory.
    fn restore(&self, rules: &str, noflush: bool) -> Result<()> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.rules_dir.join(format!("iptables-restore-{n}.rules"));
        std::fs::write(&path, rules).map_err(io_error(&path))?;
        let mut cmd = Cmd::new("iptables-restore");
        if noflush {
            cmd = cmd.arg("--noflush");
        }
        self.netns.exec_ok(&cmd.arg(&path)).map(drop)
    }

    /// The nat table with counters.
    fn save_nat(&self) -> Result<String> {
        self.netns
            .exec_ok(&Cmd::new("iptables-save").args(["-c", "-t", "nat"]))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The error for a service name the node does not know.
fn unknown(name: &str) -> SandboxError {
    SandboxError::Service {
        service: name.to_owned(),
        reason: "the node has no service of this name (add_service first)".into(),
    }
}
