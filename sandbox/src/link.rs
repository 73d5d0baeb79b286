//! Veth pairs between namespaces: a pod's `eth0` plugged into a port of the node's bridge, with
//! its default route through the node ([`plug_into_bridge`], for [`crate::Sandbox::add_pod`]),
//! or two namespaces linked directly ([`Netns::veth_to`]) for tests that wire their own
//! topology. Which addresses pods may have is [`crate::pod`]'s business; the bridge and the
//! node's address are [`crate::node`]'s.

use std::net::Ipv4Addr;

use crate::error::{Result, SandboxError};
use crate::netns::Netns;
use crate::pod::{POD_PREFIX_LEN, SANDBOX_NET};

/// Longest interface name Linux accepts (`IFNAMSIZ` − 1).
pub const MAX_INTERFACE_NAME: usize = 15;

impl Netns {
    /// Links this namespace and `peer` with a veth pair: this end named `local.0` with address
    /// `local.1`/24, the other end `remote.0` with `remote.1`/24, both up. No bridge and no
    /// route besides the /24: the two reach each other and nothing else. Addresses come from
    /// 198.18.0.0/15; interface names are 1 to 15 characters of `a-z`, `0-9`, `-` and `.`.
    pub fn veth_to(
        &self,
        peer: &Netns,
        local: (&str, Ipv4Addr),
        remote: (&str, Ipv4Addr),
    ) -> Result<()> {
        for (name, ip) in [local, remote] {
            check_interface_name(name)?;
            check_link_address(ip)?;
        }
        self.ip(&[
            "link",
            "add",
            local.0,
            "type",
            "veth",
            "peer",
            "name",
            remote.0,
            "netns",
            peer.name(),
        ])?;
        for (ns, (name, ip)) in [(self, local), (peer, remote)] {
            ns.ip(&[
                "addr",
                "add",
                &format!("{ip}/{POD_PREFIX_LEN}"),
                "dev",
                name,
            ])?;
            ns.ip(&["link", "set", name, "up"])?;
        }
        Ok(())
    }
}

/// Plugs `pod` into `bridge` of `node`: a veth pair whose end in the node, `port`, is a port of
/// the bridge and whose end in the pod is `eth0` with `ip`/24, up, and a default route via
/// `gateway` (the node's address on the bridge).
pub(crate) fn plug_into_bridge(
    node: &Netns,
    bridge: &str,
    port: &str,
    pod: &Netns,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<()> {
    check_interface_name(port)?;
    node.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])?;
    node.ip(&["link", "set", port, "master", bridge])?;
    node.ip(&["link", "set", port, "up"])?;
    pod.ip(&[
        "addr",
        "add",
        &format!("{ip}/{POD_PREFIX_LEN}"),
        "dev",
        "eth0",
    ])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["route", "add", "default", "via", &gateway.to_string()])
}

/// Checks that `name` can name an interface: 1 to [`MAX_INTERFACE_NAME`] characters of `a-z`,
/// `0-9`, `-` and `.`.
fn check_interface_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    if ok {
        Ok(())
    } else {
        Err(SandboxError::Interface {
            name: name.to_owned(),
            reason: "use 1 to 15 characters of a-z, 0-9, - and .",
        })
    }
}

/// Checks that `ip` is a usable address of a directly linked namespace: inside
/// [`SANDBOX_NET`], not the network or broadcast address of its /24.
fn check_link_address(ip: Ipv4Addr) -> Result<()> {
    let (net, len) = SANDBOX_NET;
    let mask = u32::MAX << (32 - u32::from(len));
    if u32::from(ip) & mask != u32::from(net) {
        return Err(SandboxError::Address {
            ip,
            reason: "linked namespaces take addresses from 198.18.0.0/15 only",
        });
    }
    if matches!(ip.octets()[3], 0 | 255) {
        return Err(SandboxError::Address {
            ip,
            reason: "the network and broadcast addresses of a /24 are not usable",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernels_limit_and_need_no_quoting() {
        for ok in ["eth0", "vp12", "veth-a.1", "x", "abcdefghijklmno"] {
            assert!(check_interface_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "abcdefghijklmnop",
            "Eth0",
            "eth 0",
            "eth0/1",
            "a;b",
            "é",
        ] {
            assert!(check_interface_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn linked_namespaces_take_benchmarking_addresses_that_are_not_network_or_broadcast() {
        for ok in ["198.18.0.1", "198.18.0.99", "198.19.200.254"] {
            assert!(check_link_address(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "192.168.0.1",
            "198.17.0.1",
            "198.20.0.1",
            "198.18.0.0",
            "198.18.3.255",
        ] {
            assert!(check_link_address(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
