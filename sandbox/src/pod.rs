//! A pod ([`Pod`]): a network namespace whose `eth0` is one end of a veth pair, the other end a
//! port of the node's bridge, with one address from 198.18.0.1–198.18.0.253 (`/24`) and its
//! default route via the node (198.18.0.254) — pods reach each other directly on the bridge,
//! and Service ClusterIPs through the node. The node itself is [`crate::node`]'s; plugging the
//! veth pair in is [`crate::link`]'s.

use std::net::Ipv4Addr;
use std::process::Output;
use std::sync::Arc;

use crate::error::{Result, SandboxError};
use crate::netns::{Cmd, Netns};
use crate::process::Process;

/// The network every sandbox address comes from: 198.18.0.0/15, reserved for benchmarking
/// (RFC 2544) and never routed, so a sandbox cannot clash with a real network. Pods take
/// 198.18.0.1–198.18.0.253, the node 198.18.0.254, Services 198.19.0.0/16.
pub const SANDBOX_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);
/// The pods' subnet on the bridge: 198.18.0.0/24.
pub const POD_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), POD_PREFIX_LEN);
/// Prefix length of a pod's address: pods of one /24 reach each other over the bridge.
pub const POD_PREFIX_LEN: u8 = 24;
/// Longest pod name (it is part of the namespace's name).
pub const MAX_POD_NAME: usize = 20;
/// The name no pod may take: the node's namespace is `<sandbox id>-node`.
pub const RESERVED_NAME: &str = "node";

/// A pod; cheap to clone (clones are the same pod). Its namespace lives as long as the
/// [`crate::Sandbox`] that made it.
#[derive(Debug, Clone)]
pub struct Pod(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Short name, e.g. `frontend`.
    name: String,
    /// Its address on the bridge.
    ip: Ipv4Addr,
    /// Its namespace.
    netns: Netns,
}

impl Pod {
    /// Wraps a namespace already plugged into the bridge with `ip`.
    pub(crate) fn new(name: String, ip: Ipv4Addr, netns: Netns) -> Self {
        Pod(Arc::new(Inner { name, ip, netns }))
    }

    /// Its short name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Its address.
    pub fn ip(&self) -> Ipv4Addr {
        self.0.ip
    }

    /// Its namespace (its name, its processes).
    pub fn netns(&self) -> &Netns {
        &self.0.netns
    }

    /// Starts `cmd` inside, in the background (see [`Netns::spawn`]).
    pub fn spawn(&self, cmd: &Cmd) -> Result<Process> {
        self.0.netns.spawn(cmd)
    }

    /// Runs `cmd` inside to completion, whatever its exit status (see [`Netns::exec`]).
    pub fn exec(&self, cmd: &Cmd) -> Result<Output> {
        self.0.netns.exec(cmd)
    }

    /// Runs `cmd` inside; a non-zero exit is an error. Returns its standard output.
    pub fn exec_ok(&self, cmd: &Cmd) -> Result<String> {
        self.0.netns.exec_ok(cmd)
    }
}

/// Checks that `ip` is a usable pod address: 198.18.0.1 to 198.18.0.253 (the node has .254;
/// .0 and .255 are the network and broadcast addresses of the bridge's /24).
pub(crate) fn check_ip(ip: Ipv4Addr) -> Result<()> {
    let [a, b, c, last] = ip.octets();
    if (a, b, c) != (198, 18, 0) {
        return Err(SandboxError::Address {
            ip,
            reason: "pods take addresses from 198.18.0.1 to 198.18.0.253 only",
        });
    }
    let reason = match last {
        0 | 255 => "the network and broadcast addresses of the bridge's /24 are not pod addresses",
        254 => "198.18.0.254 is the node's address (the pods' gateway)",
        _ => return Ok(()),
    };
    Err(SandboxError::Address { ip, reason })
}

/// Checks that `name` can be part of a namespace name: 1 to [`MAX_POD_NAME`] characters of
/// `a-z`, `0-9` and `-`, and not [`RESERVED_NAME`].
pub(crate) fn check_name(name: &str) -> Result<()> {
    if name == RESERVED_NAME {
        return Err(SandboxError::PodName {
            name: name.to_owned(),
            reason: "reserved: the node's namespace has this name",
        });
    }
    let ok = !name.is_empty()
        && name.len() <= MAX_POD_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(SandboxError::PodName {
            name: name.to_owned(),
            reason: "use 1 to 20 characters of a-z, 0-9 and -",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_come_from_the_bridges_subnet_below_the_nodes_address() {
        for ok in ["198.18.0.1", "198.18.0.99", "198.18.0.253"] {
            assert!(check_ip(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        let cases = [
            ("10.0.0.1", "198.18.0.1 to 198.18.0.253 only"),
            ("172.16.0.1", "198.18.0.1 to 198.18.0.253 only"),
            ("192.168.1.1", "198.18.0.1 to 198.18.0.253 only"),
            ("198.20.0.1", "198.18.0.1 to 198.18.0.253 only"),
            ("198.19.7.3", "198.18.0.1 to 198.18.0.253 only"),
            ("198.18.1.3", "198.18.0.1 to 198.18.0.253 only"),
            ("198.18.0.0", "network and broadcast"),
            ("198.18.0.255", "network and broadcast"),
            ("198.18.0.254", "the node's address"),
        ];
        for (bad, expected) in cases {
            let error = check_ip(bad.parse().unwrap()).unwrap_err().to_string();
            assert!(error.contains(expected), "{bad}: {error}");
        }
    }

    #[test]
    fn pod_names_fit_in_a_namespace_name() {
        assert!(check_name("frontend").is_ok());
        assert!(check_name("cp-1").is_ok());
        for bad in ["", "Front", "a b", "a/b", "node", "x".repeat(21).as_str()] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
