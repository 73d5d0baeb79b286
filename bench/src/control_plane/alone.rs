//! One simulated proxy in a process of its own (`trellis-bench control-plane-proxy`, hidden;
//! started by the bench): how much its resident memory grows from holding a certificate to
//! holding the whole mesh state, applied with the proxy's own `discovery::apply`. A process of
//! its own because the bench's heap, reused between phases and mesh sizes, hides such growth.
//!
//! Owns: the probe's flags, its run, and reading its one line of output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use trellis_ca::{SpiffeId, TrustBundle, TrustDomain};

use super::proxies::{self, Identity, Progress, Shared};
use super::tracker::{Stats, Tracker};
use crate::procs::{self, Supervisor};

/// Flags of the probe.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The control plane's gRPC address.
    #[arg(long)]
    control_plane: String,
    /// Its identity.
    #[arg(long)]
    control_plane_id: String,
    /// The roots, PEM.
    #[arg(long)]
    root_file: PathBuf,
    /// The pod's name.
    #[arg(long)]
    pod: String,
    /// The pod's token.
    #[arg(long)]
    token: String,
    /// Workloads the mesh has: the state counts once it holds them all (a control plane still
    /// listing the cluster serves part of it).
    #[arg(long)]
    workloads: usize,
}

/// Runs the probe: prints `<KiB before> <KiB after>`.
pub fn main(args: &ProbeArgs) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (before, after) = rt.block_on(probe(args))?;
    println!("rss-kib {before} {after}");
    Ok(true)
}

async fn probe(args: &ProbeArgs) -> anyhow::Result<(u64, u64)> {
    let td = TrustDomain::default();
    let root = std::fs::read(&args.root_file)
        .with_context(|| format!("--root-file {}", args.root_file.display()))?;
    let shared = Arc::new(Shared {
        control_plane: args.control_plane.clone(),
        control_plane_id: SpiffeId::parse(&args.control_plane_id)?,
        bundle: TrustBundle::from_pem(td.clone(), &root)?,
        trust_domain: td,
        tracker: Arc::new(Tracker::default()),
        stats: Arc::new(Stats::default()),
        start: Instant::now(),
    });
    let me = Identity {
        pod: args.pod.clone(),
        token: args.token.clone(),
        real_state: true,
        local: None,
    };
    // A first Certify warms what every proxy has before it holds any state (TLS, gRPC).
    proxies::certify(&me, &shared, &Default::default()).await?;
    let me_pid = [std::process::id()];
    let before = procs::rss_kib(&me_pid);
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let here = proxies::Then::Watch(tokio::runtime::Handle::current());
    let task = tokio::spawn(proxies::run(
        me,
        shared,
        progress.clone(),
        stop.clone(),
        here,
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let holds_all = || progress.workloads_held.load(Ordering::Relaxed) >= args.workloads;
    while !(holds_all() || progress.counts().2 > 0) {
        if Instant::now() > deadline {
            bail!(
                "no state with {} workloads within 60 s (holding {})",
                args.workloads,
                progress.workloads_held.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(e) = progress
        .failures
        .lock()
        .ok()
        .and_then(|f| f.first().cloned())
    {
        bail!("{e}");
    }
    let after = procs::rss_kib(&me_pid);
    stop.cancel();
    let _ = task.await;
    Ok((before, after))
}

/// Runs the probe as `name` for `me` until it holds `workloads` workloads and returns the
/// growth of its RSS (KiB). The fleet starts after it: so also after the control plane has
/// the whole mesh.
pub async fn measure(
    sup: &mut Supervisor,
    dir: &Path,
    shared: &Shared,
    root_pem: &str,
    me: &Identity,
    workloads: usize,
    name: &str,
) -> anyhow::Result<u64> {
    let root = dir.join(format!("{name}.root.pem"));
    std::fs::write(&root, root_pem)?;
    let exe = std::env::current_exe()?;
    sup.run(
        name,
        Command::new(exe)
            .arg("control-plane-proxy")
            .arg(format!("--control-plane={}", shared.control_plane))
            .arg(format!("--control-plane-id={}", shared.control_plane_id))
            .arg(format!("--root-file={}", root.display()))
            .arg(format!("--pod={}", me.pod))
            .arg(format!("--token={}", me.token))
            .arg(format!("--workloads={workloads}")),
        Duration::from_secs(90),
    )
    .await?;
    let log = std::fs::read_to_string(dir.join(format!("{name}.log")))?;
    parse(&log).with_context(|| format!("{name} printed no figures:\n{log}"))
}

/// The growth from the probe's output line `rss-kib <before> <after>`.
fn parse(output: &str) -> Option<u64> {
    let line = output.lines().find_map(|l| l.strip_prefix("rss-kib "))?;
    let mut it = line.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(before)), Some(Ok(after))) = (it.next(), it.next()) else {
        return None;
    };
    Some(after.saturating_sub(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_growth_is_read_from_the_probe_line_and_anything_else_is_none() {
        assert_eq!(parse("noise\nrss-kib 9000 11500\n"), Some(2500));
        assert_eq!(parse("rss-kib 9000 8000"), Some(0));
        assert_eq!(parse("rss-kib 9000"), None);
        assert_eq!(parse("rss-kib x 1"), None);
        assert_eq!(parse(""), None);
    }
}
