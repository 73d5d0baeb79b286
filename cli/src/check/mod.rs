//! `trellis check`: pre-flight and health checks in the spirit of `linkerd check`. Against a
//! cluster (default): the API server, the chart's objects, the webhook's caBundle, the mesh
//! root's expiry, the control plane's gRPC health, labelled namespaces and pods not injected
//! yet. Locally (`--local ADDR --trust-bundle FILE`): a control plane on this machine.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`facts`] | what is gathered: plain data |
//! | [`cluster`], [`local`] | gathering it (all the I/O) |
//! | [`rules`] | judging it: pure functions to ✔/‼/✘ with hints |
//! | [`report`] | printing the outcomes |
//!
//! Exit status: 0 when no check failed (warnings allowed), 1 otherwise.

pub mod cluster;
pub mod facts;
pub mod local;
pub mod report;
pub mod rules;

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;
use clap::Args;
use rustls_pki_types::CertificateDer;
use trellis_ca::{SpiffeId, TrustDomain};

use self::facts::{Probe, ProbeFacts};
use self::report::{Outcome, Section};
use crate::health_probe::{HealthReport, ProbeError};
use crate::kube_access::{self, KubeOpts};
use crate::style::{self, Palette};
use crate::x509;

/// `trellis check` flags.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # The cluster of the current kubeconfig context
  trellis check

  # A control plane on this machine (trellis-control-plane --mode local)
  trellis check --local 127.0.0.1:15012 --trust-bundle state/root-cert.pem --metrics 127.0.0.1:15014

  # In a script: stop unless everything is in order
  trellis check --color never || exit 1

  # Another cluster, the control plane in another namespace, as JSON
  trellis --context staging check -n mesh-system -o json

Exit status: 0 when every check passed or only warned (‼), 1 when one failed (✘), 2 on bad usage.")]
pub struct CheckArgs {
    /// Check a control plane on this machine at ADDR (host:port of its gRPC port) instead of
    /// a cluster.
    #[arg(long, value_name = "ADDR", requires = "trust_bundle", value_parser = crate::dial::host_port)]
    local: Option<String>,
    /// With --local: PEM file of the mesh's root(s) (the control plane's root-cert.pem).
    #[arg(long, value_name = "FILE", requires = "local")]
    trust_bundle: Option<PathBuf>,
    /// With --local: the control plane's metrics address, to check its /ready.
    #[arg(long, value_name = "ADDR", requires = "local", value_parser = crate::dial::host_port)]
    metrics: Option<String>,
    /// The mesh's trust domain (default: the control plane's --trust-domain in a cluster,
    /// else cluster.local).
    #[arg(long, value_name = "TD", env = "TRELLIS_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// The control plane's namespace (its SPIFFE ID names it).
    #[arg(short = 'n', long, value_name = "NS", default_value = "trellis-system")]
    namespace: String,
    /// Output format: ✔/‼/✘ lines, or the sections as JSON or YAML.
    #[arg(short, long, value_enum, default_value_t)]
    output: crate::output::Format,
    /// With --local: the identity the control plane must prove (default:
    /// spiffe://<trust domain>/ns/<namespace>/sa/trellis-control-plane).
    #[arg(long, value_name = "SPIFFE_ID", requires = "local")]
    control_plane_id: Option<String>,
}

/// Runs the checks and prints the report; `Ok(false)` when a check failed.
pub async fn run(args: CheckArgs, kube: &KubeOpts, palette: Palette) -> anyhow::Result<bool> {
    let trust_domain = args
        .trust_domain
        .as_deref()
        .map(|td| TrustDomain::new(td).with_context(|| format!("--trust-domain {td:?}")))
        .transpose()?;
    let now = SystemTime::now();
    let sections = match (&args.local, &args.trust_bundle) {
        (Some(addr), Some(bundle_file)) => {
            let td = match trust_domain {
                Some(td) => td,
                None => TrustDomain::new("cluster.local")?,
            };
            let expected = match &args.control_plane_id {
                Some(id) => SpiffeId::parse(id).with_context(|| format!("--control-plane-id {id:?}"))?,
                None => SpiffeId::for_service_account(&td, &args.namespace, rules::CONTROL_PLANE)
                    .with_context(|| format!("--namespace {:?}", args.namespace))?,
            };
            let target = local::LocalTarget {
                addr: addr.clone(),
                bundle_file: bundle_file.clone(),
                metrics: args.metrics.clone(),
                trust_domain: td,
                expected,
            };
            rules::evaluate_local(&local::gather(&target).await, now)
        }
        _ => match kube_access::client(kube).await {
            Ok(client) => {
                let facts = cluster::gather(client, &args.namespace, trust_domain).await;
                rules::evaluate_cluster(&facts, now)
            }
            Err(e) => vec![Section {
                name: "kubernetes-api",
                outcomes: vec![
                    Outcome::fail(
                        "can initialize the Kubernetes client",
                        "pass --kubeconfig FILE or --context NAME (or set KUBECONFIG, kubectl config use-context); for a control plane on this machine use --local ADDR --trust-bundle FILE",
                    )
                    .detail(client_error(&e)),
                ],
            }],
        },
    };
    let text = match crate::output::structured(
        args.output,
        &CheckReport {
            passed: report::passed(&sections),
            sections: &sections,
        },
    )? {
        Some(text) => text,
        None => report::render(&sections, palette),
    };
    style::print(&text)?;
    Ok(report::passed(&sections))
}

/// `trellis check -o json|yaml`.
#[derive(serde::Serialize)]
struct CheckReport<'a> {
    /// Whether no check failed (the exit status).
    passed: bool,
    /// The checks.
    sections: &'a [Section],
}

/// The client error without its own hint (the check line has one).
fn client_error(e: &kube_access::KubeError) -> String {
    match e {
        kube_access::KubeError::Config(reason) => reason.clone(),
        other => other.to_string(),
    }
}

/// Turns a probe's result into facts: the presented identity, the status, and the
/// intermediates (presented certificates after the leaf that are not among `roots`).
pub fn probe_facts(
    result: Result<HealthReport, ProbeError>,
    roots: &[CertificateDer<'static>],
) -> ProbeFacts {
    let peer_id = |chain: &[CertificateDer<'static>]| {
        chain
            .first()
            .and_then(|leaf| trellis_ca::peer_spiffe_id(leaf).ok())
            .map_or_else(|| "an unreadable identity".to_owned(), |id| id.to_string())
    };
    match result {
        Ok(HealthReport { chain, status }) => ProbeFacts::Answered(Probe {
            peer_id: peer_id(&chain),
            status,
            leaf_not_after: chain
                .first()
                .and_then(|c| x509::dates(c))
                .map(|d| d.not_after),
            intermediates: chain
                .iter()
                .skip(1)
                .filter(|c| !roots.contains(c))
                .filter_map(|c| x509::dates(c))
                .collect(),
        }),
        Err(ProbeError::Health { chain, reason }) => ProbeFacts::HealthFailed {
            peer_id: peer_id(&chain),
            reason,
        },
        Err(e) => ProbeFacts::ConnectFailed(e.to_string()),
    }
}
