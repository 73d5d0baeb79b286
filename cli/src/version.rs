//! `trellis version`: this tool's version and, when the control plane can be read (its
//! `/status`, as `trellis status` reads it), the control plane's and the proxies' versions
//! with how many proxies run each.
//!
//! Owns: the command and its report; reaching the control plane is [`crate::status`]'s.

use std::collections::BTreeMap;

use clap::Args;
use serde::Serialize;

use crate::dial::Target;
use crate::kube_access::{self, KubeOpts};
use crate::output::{self, Format};
use crate::status;

/// `trellis version` flags.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  trellis version                              # this tool, the control plane, the proxies
  trellis version --client                     # this tool only, no cluster needed
  trellis version --local 127.0.0.1:15015 -o json")]
pub struct VersionArgs {
    /// Only this tool's version.
    #[arg(long)]
    client: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
    /// The control plane's namespace.
    #[arg(long, value_name = "NS", default_value = "trellis-system")]
    control_plane_namespace: String,
    /// A control plane on this machine at ADDR (its --status-listen) instead of a cluster.
    #[arg(long, value_name = "ADDR", value_parser = crate::dial::host_port, conflicts_with = "client")]
    local: Option<String>,
}

/// What `trellis version` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Versions {
    /// This tool.
    pub client: String,
    /// The control plane, when it could be read.
    pub control_plane: Option<String>,
    /// Proxy versions with discovery streams open, and how many run each.
    pub proxies: BTreeMap<String, usize>,
    /// Why the control plane could not be read.
    pub unavailable: Option<String>,
}

/// Runs `trellis version`; always `Ok(true)` unless printing fails (an unreachable control
/// plane is reported, not an error).
pub async fn run(args: VersionArgs, kube: &KubeOpts) -> anyhow::Result<bool> {
    let mut versions = Versions {
        client: env!("CARGO_PKG_VERSION").to_owned(),
        control_plane: None,
        proxies: BTreeMap::new(),
        unavailable: None,
    };
    if !args.client {
        match server_versions(&args, kube).await {
            Ok(cp) => {
                versions.control_plane = Some(cp.control_plane_version);
                for p in cp.proxies {
                    *versions.proxies.entry(p.proxy_version).or_default() += 1;
                }
            }
            Err(e) => versions.unavailable = Some(e.to_string()),
        }
    }
    let text = match output::structured(args.output, &versions)? {
        Some(text) => text,
        None => text(&versions),
    };
    crate::style::print(&text)?;
    Ok(true)
}

async fn server_versions(args: &VersionArgs, kube: &KubeOpts) -> anyhow::Result<status::CpStatus> {
    let target = match &args.local {
        Some(addr) => Target::tcp(addr),
        None => {
            let client = kube_access::client(kube).await?;
            status::control_plane_target(client, &args.control_plane_namespace).await?
        }
    };
    Ok(status::read_status(target).await?)
}

/// The report as text.
fn text(v: &Versions) -> String {
    let mut out = format!("client: trellis {}\n", v.client);
    if let Some(cp) = &v.control_plane {
        out.push_str(&format!("control plane: {cp}\n"));
        if v.proxies.is_empty() {
            out.push_str("proxies: none connected\n");
        }
        for (version, count) in &v.proxies {
            out.push_str(&format!("proxies: {version} ({count})\n"));
        }
    }
    if let Some(why) = &v.unavailable {
        let first = why.lines().next().unwrap_or_default();
        out.push_str(&format!("control plane: unavailable ({first})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lists_each_proxy_version_with_its_count_or_why_the_server_is_unknown() {
        let mut v = Versions {
            client: "0.1.0".into(),
            control_plane: Some("0.1.0".into()),
            proxies: BTreeMap::from([("0.1.0".into(), 3), ("0.0.9".into(), 1)]),
            unavailable: None,
        };
        assert_eq!(
            text(&v),
            "client: trellis 0.1.0\ncontrol plane: 0.1.0\nproxies: 0.0.9 (1)\nproxies: 0.1.0 (3)\n"
        );
        v.control_plane = None;
        v.proxies.clear();
        v.unavailable = Some("no ready control plane pod\n  hint: …".into());
        assert_eq!(
            text(&v),
            "client: trellis 0.1.0\ncontrol plane: unavailable (no ready control plane pod)\n"
        );
    }
}
