//! The interception rule set, as a pure function of [`InitArgs`]: which TCP goes to the proxy
//! and which is left alone, for one address family. Rendering it into an `iptables-restore`
//! transaction is [`super::plan`]'s job; running iptables is [`super::apply`]'s.
//!
//! The rules mirror Istio's sidecar rules (`istio-iptables`), in the `nat` table, with chains
//! of our own so that they can be replaced and removed without touching anyone else's:
//!
//! ```text
//! PREROUTING  -p tcp → TRELLIS_INBOUND      (connections arriving at the pod)
//!   proxy ports, excluded inbound ports     → RETURN
//!   any other TCP                           → TRELLIS_IN_REDIRECT → REDIRECT to 15006
//! OUTPUT      -p tcp → TRELLIS_OUTPUT       (connections the pod opens)
//!   UID 1337, GID 1337 (the proxy)          → RETURN
//!   loopback destination (127/8, ::1)       → RETURN
//!   excluded outbound ports, CIDRs          → RETURN
//!   any other TCP                           → TRELLIS_OUT_REDIRECT → REDIRECT to 15001
//! ```
//!
//! Only TCP ever enters these chains: UDP (DNS included) and everything else are untouched.
//! Each rule is written the way `iptables-save` prints it (`-p tcp -m tcp --dport`, `-d … -o
//! lo`), so what is installed can be compared with what was built, line for line.

use super::config::{InitArgs, Port};

/// Every chain Trellis owns starts with this: anything so named in the `nat` table is ours to
/// flush and delete, and nothing else is.
pub const CHAIN_PREFIX: &str = "TRELLIS_";
/// Entered from `PREROUTING` for inbound TCP; decides what goes to the inbound listener.
pub const INBOUND: &str = "TRELLIS_INBOUND";
/// Redirects to the inbound listener.
pub const IN_REDIRECT: &str = "TRELLIS_IN_REDIRECT";
/// Entered from `OUTPUT` for TCP the pod opens; decides what goes to the outbound listener.
pub const OUTPUT: &str = "TRELLIS_OUTPUT";
/// Redirects to the outbound listener.
pub const OUT_REDIRECT: &str = "TRELLIS_OUT_REDIRECT";
/// Our chains, in the order they are declared (also `iptables-save`'s alphabetical order).
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, OUT_REDIRECT];

/// An address family: one rule set each, applied with `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4, `iptables`.
    V4,
    /// IPv6, `ip6tables`.
    V6,
}

impl Family {
    /// The loopback network, as `iptables-save` prints it.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// `IPv4` or `IPv6`, for logs and dry-run headings.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// One rule: appended (`-A`) to `chain` with the match and target `spec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The chain the rule goes in: one of ours, or `PREROUTING`/`OUTPUT` for the two jumps.
    pub chain: &'static str,
    /// Matches and target, as `iptables-save` prints them after `-A <chain> `.
    pub spec: String,
}

impl Rule {
    fn new(chain: &'static str, spec: impl Into<String>) -> Self {
        Rule {
            chain,
            spec: spec.into(),
        }
    }
}

/// The `nat` rules of one family: [`CHAINS`] filled in, then the two jumps into them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatRules {
    /// Which family these rules are for.
    pub family: Family,
    /// Every rule in order; the jumps from `PREROUTING` and `OUTPUT` come last, so that the
    /// chains are complete before traffic enters them.
    pub rules: Vec<Rule>,
}

/// Builds the rule set of `family` for `args`. Excluded CIDRs of the other family are left out.
pub fn build(args: &InitArgs, family: Family) -> NatRules {
    let mut rules = Vec::new();

    // Inbound. Locally opened connections never pass PREROUTING (their NAT was decided in
    // OUTPUT), so this sees only what arrives from outside the pod.
    for port in never_redirected_inbound(args) {
        rules.push(Rule::new(
            INBOUND,
            format!("-p tcp -m tcp --dport {port} -j RETURN"),
        ));
    }
    rules.push(Rule::new(INBOUND, format!("-p tcp -j {IN_REDIRECT}")));
    rules.push(Rule::new(
        IN_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", args.inbound_port),
    ));

    // Outbound. The proxy's own connections first: redirecting them would loop back into it.
    // Unlike Istio, we do not send the proxy's connections to its own pod IP (over `lo`) to
    // the inbound listener: Istio needs that because its sidecars send mTLS to application
    // ports, but our mesh traffic goes to the tunnel port, which is never redirected. And the
    // tunnel hands each connection to the application by connecting to it as UID 1337 (to
    // the pod IP or 127.0.0.1): that connection must reach the application, not loop back
    // into the inbound listener.
    rules.push(Rule::new(
        OUTPUT,
        format!("-m owner --uid-owner {} -j RETURN", args.proxy_uid),
    ));
    rules.push(Rule::new(
        OUTPUT,
        format!("-m owner --gid-owner {} -j RETURN", args.proxy_gid),
    ));
    // Loopback: `-o lo` alone would also skip a connection from the application to its own
    // pod IP, which the kernel routes over `lo` too. Only loopback *destinations* (127/8,
    // ::1; always routed over `lo`) are left alone; a connection to the pod's own IP is
    // redirected to the outbound listener like any other, so calling oneself through one's
    // pod IP does not bypass the mesh (Istio instead lets it bypass the proxy).
    rules.push(Rule::new(
        OUTPUT,
        format!("-d {} -o lo -j RETURN", family.loopback()),
    ));
    for port in dedup(args.exclude_outbound_ports.0.iter().copied()) {
        rules.push(Rule::new(
            OUTPUT,
            format!("-p tcp -m tcp --dport {port} -j RETURN"),
        ));
    }
    let family_cidrs = args
        .exclude_outbound_cidrs
        .0
        .iter()
        .filter(|cidr| cidr.is_ipv6() == (family == Family::V6));
    for cidr in dedup(family_cidrs.copied()) {
        rules.push(Rule::new(OUTPUT, format!("-d {cidr} -j RETURN")));
    }
    rules.push(Rule::new(OUTPUT, format!("-p tcp -j {OUT_REDIRECT}")));
    rules.push(Rule::new(
        OUT_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", args.outbound_port),
    ));

    // The switch: only TCP enters our chains.
    rules.push(Rule::new("PREROUTING", format!("-p tcp -j {INBOUND}")));
    rules.push(Rule::new("OUTPUT", format!("-p tcp -j {OUTPUT}")));

    NatRules { family, rules }
}

/// Inbound ports that are never redirected: the proxy's own (its listed ports plus the
/// inbound, outbound and tunnel ports, whatever `--proxy-ports` says, sorted), then the
/// excluded inbound ports in the order given; each once.
fn never_redirected_inbound(args: &InitArgs) -> Vec<Port> {
    let mut proxy: Vec<Port> = args.proxy_ports.0.clone();
    proxy.extend([args.inbound_port, args.outbound_port, args.tunnel_port]);
    proxy.sort_unstable();
    dedup(
        proxy
            .into_iter()
            .chain(args.exclude_inbound_ports.0.iter().copied()),
    )
}

/// Keeps the first occurrence of each item, in order.
fn dedup<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests;
