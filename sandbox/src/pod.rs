//! A pod ([`Pod`]): a network namespace whose `eth0` is one end of a veth pair, the other end a
//! port of the switch's bridge, with one address from 198.18.0.0/15 (`/24`) and no default
//! route — pods reach each other and nothing else. The switch itself is [`crate::Sandbox`]'s.

use std::net::Ipv4Addr;
use std::process::Output;
use std::sync::Arc;

use crate::error::{Result, SandboxError};
use crate::netns::{Cmd, Netns};
use crate::process::Process;

/// The network pods get addresses from: 198.18.0.0/15, reserved for benchmarking (RFC 2544)
/// and never routed, so a sandbox cannot clash with a real network.
pub const SANDBOX_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);
/// Prefix length of a pod's address: pods of one /24 reach each other over the bridge.
pub const POD_PREFIX_LEN: u8 = 24;
/// Longest pod name (it is part of the namespace's name).
pub const MAX_POD_NAME: usize = 20;

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

/// Checks that `ip` is a usable pod address: inside [`SANDBOX_NET`], not the network or
/// broadcast address of its /24.
pub(crate) fn check_ip(ip: Ipv4Addr) -> Result<()> {
    let [a, b, _, last] = ip.octets();
    if a != 198 || !(b == 18 || b == 19) {
        return Err(SandboxError::Address {
            ip,
            reason: "pods take addresses from 198.18.0.0/15 only",
        });
    }
    if last == 0 || last == 255 {
        return Err(SandboxError::Address {
            ip,
            reason: "the network and broadcast addresses of a /24 are not pod addresses",
        });
    }
    Ok(())
}

/// Checks that `name` can be part of a namespace name: 1 to [`MAX_POD_NAME`] characters of
/// `a-z`, `0-9` and `-`.
pub(crate) fn check_name(name: &str) -> Result<()> {
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
    use crate::*;

    #[test]
    fn pod_addresses_come_from_the_benchmarking_range_only() {
        for ok in ["198.18.0.1", "198.18.0.254", "198.19.7.3"] {
            assert!(check_ip(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "198.20.0.1",
            "198.18.0.0",
            "198.18.0.255",
        ] {
            assert!(check_ip(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_names_fit_in_a_namespace_name() {
        assert!(check_name("frontend").is_ok());
        assert!(check_name("cp-1").is_ok());
        for bad in ["", "Front", "a b", "a/b", "x".repeat(21).as_str()] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
