//! The flags of `trellis-proxy init` ([`InitArgs`]), each also an environment variable, parsed
//! at the boundary into typed values ([`Port`], [`PortList`], [`Cidr`], [`CidrList`]) so that a
//! bad value is refused, naming the flag and the value, before any rule is built.
//!
//! The flags and variables the injector passes (`--proxy-uid`, `--proxy-gid`,
//! `--exclude-*`, `--dry-run`, `--cleanup`) are a contract: ARCHITECTURE.md, "Proxy command
//! line". What the rules do with these values is [`super::rules`]' business.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    num::NonZeroU16,
    path::PathBuf,
    str::FromStr,
};

use clap::{Args, ValueEnum};

use crate::ports;

/// UID the proxy runs as (docs/design.md "Ports and names"); its traffic is never redirected.
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// GID the proxy runs as; traffic of this group is never redirected either.
pub const DEFAULT_PROXY_GID: u32 = 1337;
/// The inbound plain listener, where inbound TCP is redirected.
pub const DEFAULT_INBOUND_PORT: Port = Port::known(ports::INBOUND);
/// The outbound listener, where outbound TCP is redirected.
pub const DEFAULT_OUTBOUND_PORT: Port = Port::known(ports::OUTBOUND);
/// The mTLS tunnel listener: mesh traffic arrives here and must reach it unredirected.
pub const DEFAULT_TUNNEL_PORT: Port = Port::known(ports::TUNNEL);

/// Every port the proxy listens on (admin, outbound, inbound, tunnel, health): never
/// redirected inbound.
fn default_proxy_ports() -> PortList {
    PortList(ports::PROXY_PORTS.into_iter().map(Port::known).collect())
}

/// `trellis-proxy init`: install the iptables rules that send the pod's TCP through the proxy.
///
/// Run once per pod, as root with NET_ADMIN and NET_RAW, in the pod's network namespace
/// (the `trellis-init` init container). Inbound TCP goes to the inbound port, outbound TCP to
/// the outbound port; the proxy's own traffic (its UID or GID), loopback, UDP and the excluded
/// ports and CIDRs are left alone. Running it again replaces the rules; `--cleanup` removes
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct InitArgs {
    /// UID of the proxy: connections it opens are never redirected (no loop back into itself).
    #[arg(long, env = "TRELLIS_PROXY_UID", default_value_t = DEFAULT_PROXY_UID)]
    pub proxy_uid: u32,

    /// GID of the proxy: connections opened by this group are never redirected.
    #[arg(long, env = "TRELLIS_PROXY_GID", default_value_t = DEFAULT_PROXY_GID)]
    pub proxy_gid: u32,

    /// Inbound ports that reach the application directly, without the proxy (comma list,
    /// e.g. `22,9100`).
    #[arg(
        long,
        env = "TRELLIS_EXCLUDE_INBOUND_PORTS",
        value_name = "PORTS",
        default_value = "",
        hide_default_value = true
    )]
    pub exclude_inbound_ports: PortList,

    /// Destination ports of outbound connections that bypass the proxy (comma list, e.g.
    /// `5432,6379`).
    #[arg(
        long,
        env = "TRELLIS_EXCLUDE_OUTBOUND_PORTS",
        value_name = "PORTS",
        default_value = "",
        hide_default_value = true
    )]
    pub exclude_outbound_ports: PortList,

    /// Destination networks of outbound connections that bypass the proxy (comma list of
    /// IPv4 or IPv6 CIDRs, e.g. `10.96.0.0/12,fd00::/8`; a bare address means that host).
    #[arg(
        long,
        env = "TRELLIS_EXCLUDE_OUTBOUND_CIDRS",
        value_name = "CIDRS",
        default_value = "",
        hide_default_value = true
    )]
    pub exclude_outbound_cidrs: CidrList,

    /// Port of the proxy's inbound plain listener: where inbound TCP is redirected.
    #[arg(long, env = "TRELLIS_INBOUND_PORT", value_name = "PORT", default_value_t = DEFAULT_INBOUND_PORT)]
    pub inbound_port: Port,

    /// Port of the proxy's outbound listener: where outbound TCP is redirected.
    #[arg(long, env = "TRELLIS_OUTBOUND_PORT", value_name = "PORT", default_value_t = DEFAULT_OUTBOUND_PORT)]
    pub outbound_port: Port,

    /// Port of the proxy's mTLS tunnel listener: never redirected inbound.
    #[arg(long, env = "TRELLIS_TUNNEL_PORT", value_name = "PORT", default_value_t = DEFAULT_TUNNEL_PORT)]
    pub tunnel_port: Port,

    /// Ports the proxy itself listens on: never redirected inbound (comma list). The inbound,
    /// outbound and tunnel ports are added to this list whatever it says.
    #[arg(long, env = "TRELLIS_PROXY_PORTS", value_name = "PORTS", default_value_t = default_proxy_ports())]
    pub proxy_ports: PortList,

    /// Print the `iptables-restore` input and change nothing. Without `--cleanup` no command
    /// is run at all; with it, the current rules are read (`iptables-save`) to show what
    /// would be removed.
    #[arg(long)]
    pub dry_run: bool,

    /// Remove Trellis's chains (`TRELLIS_*` in the `nat` table) and the jumps to them, and
    /// nothing else.
    #[arg(long)]
    pub cleanup: bool,

    /// The IPv4 `iptables` command (name or path); `-save` and `-restore` are appended to it
    /// to find its companions (`iptables-legacy` → `iptables-legacy-restore`).
    #[arg(
        long,
        env = "TRELLIS_IPTABLES",
        value_name = "COMMAND",
        default_value = "iptables"
    )]
    pub iptables: PathBuf,

    /// The IPv6 `ip6tables` command (name or path), used the same way.
    #[arg(
        long,
        env = "TRELLIS_IP6TABLES",
        value_name = "COMMAND",
        default_value = "ip6tables"
    )]
    pub ip6tables: PathBuf,

    /// IPv6 rules: `on` (a failure is an error), `off`, or `auto` (installed when the IPv6 nat
    /// table is usable, skipped with a warning otherwise).
    #[arg(long, env = "TRELLIS_IPV6", value_enum, default_value_t = Ipv6Mode::Auto)]
    pub ipv6: Ipv6Mode,

    /// Words put before every iptables command, e.g. `ip netns exec NAME` (space separated).
    /// For tests, which target a network namespace of their own.
    #[arg(long, hide = true, value_name = "WORDS", value_delimiter = ' ')]
    pub command_prefix: Vec<String>,
}

/// Whether IPv6 traffic is intercepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ipv6Mode {
    /// Install IPv6 rules; fail if `ip6tables` cannot.
    On,
    /// IPv4 only.
    Off,
    /// Install IPv6 rules when the IPv6 `nat` table is usable (most pods), else warn and skip.
    Auto,
}

/// A value given to a flag that is not what the flag takes. Clap adds the flag's name and
/// the whole value around this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// A port that is not a whole number from 1 to 65535.
    #[error("port {0:?} is not a number in 1..=65535")]
    Port(String),
    /// A comma list with an empty entry (`80,,443`, `80,`).
    #[error("empty entry in the comma list {0:?}")]
    EmptyEntry(String),
    /// A CIDR whose address part is neither IPv4 nor IPv6.
    #[error("{0:?} is not an IPv4 or IPv6 CIDR (expected e.g. 10.96.0.0/12 or fd00::/8)")]
    CidrAddress(String),
    /// A CIDR whose prefix length is not a number or too long for its address family.
    #[error("{value:?} has prefix length {prefix:?}, expected a number in 0..={max}")]
    CidrPrefix {
        /// The whole CIDR as given.
        value: String,
        /// The prefix part as given.
        prefix: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
}

/// A TCP port, 1..=65535 (port 0 cannot be matched or redirected to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(NonZeroU16);

impl Port {
    /// A port known at compile time (a constant of [`crate::ports`]); 0 fails the build when
    /// used in a constant, and panics otherwise.
    pub const fn known(port: u16) -> Port {
        match NonZeroU16::new(port) {
            Some(port) => Port(port),
            None => panic!("port 0 is not a port"),
        }
    }

    /// The port number, never 0.
    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl TryFrom<u16> for Port {
    type Error = ValueError;

    fn try_from(port: u16) -> Result<Self, ValueError> {
        NonZeroU16::new(port)
            .map(Port)
            .ok_or_else(|| ValueError::Port(port.to_string()))
    }
}

impl FromStr for Port {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        s.trim()
            .parse::<NonZeroU16>()
            .map(Port)
            .map_err(|_| ValueError::Port(s.to_owned()))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A comma list of ports, in the order given; empty when the flag is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<Port>);

impl FromStr for PortList {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        comma_list(s).map(PortList)
    }
}

impl fmt::Display for PortList {
    /// The canonical comma list (`80,443`), as the flag takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_comma_list(f, &self.0)
    }
}

/// An IPv4 or IPv6 network: an address with its host bits cleared, and a prefix length no
/// longer than the family's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv6 network.
    pub fn is_ipv6(&self) -> bool {
        self.network.is_ipv6()
    }
}

impl FromStr for Cidr {
    type Err = ValueError;

    /// `10.96.0.0/12`, `fd00::/8`, or a bare address (a /32 or /128 host). Host bits are
    /// cleared, as iptables does (`10.1.2.3/8` is `10.0.0.0/8`).
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let value = s.trim();
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| ValueError::CidrAddress(value.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| ValueError::CidrPrefix {
                    value: value.to_owned(),
                    prefix: prefix.to_owned(),
                    max,
                })?,
        };
        let network = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    /// `network/prefix`, the form `iptables-save` prints (`10.96.0.0/12`, `fd00::/8`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A comma list of CIDRs, in the order given; empty when the flag is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

impl FromStr for CidrList {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, ValueError> {
        comma_list(s).map(CidrList)
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_comma_list(f, &self.0)
    }
}

/// Parses `a,b,c` (spaces around entries allowed); an empty or all-blank string is the empty
/// list, an empty entry inside a list is an error.
fn comma_list<T: FromStr<Err = ValueError>>(s: &str) -> Result<Vec<T>, ValueError> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    if s.split(',').any(|entry| entry.trim().is_empty()) {
        return Err(ValueError::EmptyEntry(s.to_owned()));
    }
    s.split(',').map(str::parse).collect()
}

fn write_comma_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        item.fmt(f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
