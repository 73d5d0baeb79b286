//! `trellis-proxy init`: the iptables rules, in the pod's network namespace, that send its TCP
//! through the proxy (inbound → 15006, outbound → 15001) and leave the proxy's own traffic,
//! loopback, UDP and the excluded ports and networks alone — Trellis's `istio-iptables` /
//! `linkerd2-proxy-init`. Only this step touches iptables; the listeners that receive the
//! redirected connections, and reading their original destination, live elsewhere.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the flags ([`InitArgs`]) and their typed values |
//! | [`rules`] | the rule set: a pure function of the flags, per address family |
//! | `saved` | parsing `iptables-save`: what of ours is installed |
//! | `plan` | the `iptables-restore` transactions: install (idempotent) and cleanup |
//! | `apply` | running iptables, or printing for `--dry-run` |

pub mod config;
pub mod rules;

mod apply;
mod error;
mod plan;
mod saved;

pub use config::InitArgs;
pub use error::RedirectError;

/// Runs `trellis-proxy init` with `args`: installs the rules (replacing any installed before,
/// so running it twice leaves one set), or removes them with `--cleanup`, or prints the
/// `iptables-restore` input with `--dry-run`. Needs root (NET_ADMIN and NET_RAW) except for
/// a plain `--dry-run`, which runs no command.
pub fn run(args: &InitArgs) -> Result<(), RedirectError> {
    apply::run(args, &mut std::io::stdout().lock())
}
