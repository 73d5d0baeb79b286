//! `trellis describe pod NAME`: one pod — injected or why not, its identity, the policies
//! selecting it and what they allow per port, its mTLS mode, its recent refusals with reasons,
//! and a one-line verdict for "can X reach this pod on port P?" (`--from` / `--from-pod` with
//! `--port`).
//!
//! The pod and the injector's decision come from the API server (the injector's own
//! [`trellis_injector::decide::decide`]); the policy, mTLS mode and verdict from the pod's
//! proxy (`/policy` on its admin port, through a port-forward): the rules it enforces now,
//! judged by the code that enforces them.
//!
//! `trellis describe --admin ADDR` is the same without a cluster: the proxy on this machine
//! (its identity, policy, mTLS mode, refusals and verdict); the pod and injection sections say
//! they need a cluster.
//!
//! Owns: the flags and the I/O. What is shown is decided in [`view`].

mod view;

use anyhow::Context;
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use trellis_ca::SpiffeId;
use trellis_injector::NamespaceScope;

use self::view::{Description, PolicyDoc, ProxyView};
use crate::admin_api::Identity;
use crate::admin_client::{ADMIN_PORT, AdminClient};
use crate::check::rules::INJECTION_LABEL;
use crate::dial::Target;
use crate::kube_access::{self, Fetched, INJECTED_ANNOTATION, KubeError, KubeOpts, fetch};
use crate::output::{self, Format};
use crate::style::print;

/// How many recent refusals are shown.
const REFUSALS: usize = 10;
/// How many recent connections are searched for them.
const SEARCHED: u64 = 500;

/// `trellis describe`: a subcommand (`pod NAME`), or the local proxy (`--admin ADDR`).
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "\
Examples:
  # A pod in the cluster (see `trellis describe pod --help`)
  trellis describe pod -n shop backend-6c9f7d8b4-q2w3e --from-pod shop/frontend-7d9f8b7c5-x2x4q --port 8080

  # The proxy on this machine (no cluster: its identity, policy per port, mTLS, refusals)
  trellis describe --admin 127.0.0.1:15000

  # Would the frontend be let in on 8080? The proxy's own decision, as JSON
  trellis describe --admin 127.0.0.1:15000 --from spiffe://cluster.local/ns/shop/sa/frontend --port 8080 -o json"
)]
pub struct DescribeArgs {
    #[command(subcommand)]
    command: Option<DescribeCommand>,
    #[command(flatten)]
    local: LocalArgs,
}

/// `trellis describe --admin ADDR` flags.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Describe the proxy whose admin endpoint is ADDR (host:port) on this machine, without
    /// a cluster (--from-pod needs one: use `describe pod NAME`).
    #[arg(long, value_name = "ADDR", value_parser = crate::dial::host_port)]
    admin: Option<String>,
    /// The caller to judge: a SPIFFE ID, or `unauthenticated` for plaintext.
    #[arg(long, value_name = "SPIFFE_ID", requires = "port")]
    from: Option<String>,
    /// The port to judge the caller on.
    #[arg(long, value_name = "P", requires = "from", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

/// `trellis describe` subcommands.
#[derive(Debug, Subcommand)]
pub enum DescribeCommand {
    /// One pod: injected or why not, identity, policies per port, mTLS mode, refusals, verdict.
    Pod(PodArgs),
}

/// `trellis describe pod` flags.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  # Everything about one pod
  trellis describe pod -n shop backend-6c9f7d8b4-q2w3e

  # Can the frontend reach it on 8080? (the proxy's own decision, with the reason)
  trellis describe pod -n shop backend-6c9f7d8b4-q2w3e --from-pod shop/frontend-7d9f8b7c5-x2x4q --port 8080
  trellis describe pod -n shop backend-6c9f7d8b4-q2w3e --from spiffe://cluster.local/ns/shop/sa/intruder --port 8080

  # Plaintext callers (PERMISSIVE namespaces), as YAML
  trellis describe pod -n shop backend-6c9f7d8b4-q2w3e --from unauthenticated --port 8080 -o yaml")]
pub struct PodArgs {
    /// The pod.
    #[arg(value_name = "NAME")]
    name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Option<String>,
    /// The caller to judge: a SPIFFE ID, or `unauthenticated` for plaintext.
    #[arg(
        long,
        value_name = "SPIFFE_ID",
        requires = "port",
        conflicts_with = "from_pod"
    )]
    from: Option<String>,
    /// The caller to judge: the identity of pod NS/NAME (its service account).
    #[arg(long, value_name = "NS/NAME", requires = "port")]
    from_pod: Option<String>,
    /// The port to judge the caller on.
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
    /// The control plane's namespace (never meshed).
    #[arg(long, value_name = "NS", default_value = "trellis-system")]
    control_plane_namespace: String,
}

/// Runs `trellis describe`.
pub async fn run(args: DescribeArgs, kube: &KubeOpts) -> anyhow::Result<bool> {
    match (args.command, args.local.admin.clone()) {
        (Some(DescribeCommand::Pod(pod)), _) => run_pod(pod, kube).await,
        (None, Some(admin)) => run_local(args.local, admin).await,
        (None, None) => anyhow::bail!(
            "describe what? expected `trellis describe pod NAME` (a cluster) or \
             `trellis describe --admin ADDR` (the proxy on this machine)"
        ),
    }
}

/// Runs `trellis describe pod NAME`.
async fn run_pod(args: PodArgs, kube: &KubeOpts) -> anyhow::Result<bool> {
    if args.port.is_some() && args.from.is_none() && args.from_pod.is_none() {
        anyhow::bail!(
            "--port P needs the caller: --from SPIFFE_ID|unauthenticated or --from-pod NS/NAME"
        );
    }
    let client = kube_access::client(kube).await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod = get_pod(&pods, &namespace, &args.name).await?;
    let injected = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
    let why_not = if injected {
        None
    } else {
        let labelled = namespace_labelled(client.clone(), &namespace).await?;
        let scope = if labelled {
            NamespaceScope::Labelled
        } else {
            NamespaceScope::OptInOnly
        };
        let decision = trellis_injector::decide::decide(
            &pod,
            &namespace,
            scope,
            &args.control_plane_namespace,
        );
        Some(match decision.warning() {
            Some(w) => w
                .trim_start_matches("trellis: pod not injected: ")
                .to_owned(),
            None if decision == trellis_injector::Decision::Inject => {
                "created before injection was enabled: re-create it (kubectl rollout restart)"
                    .to_owned()
            }
            None => decision.as_str().to_owned(),
        })
    };
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    let pod_name = format!("{namespace}/{}", args.name);

    let proxy = if injected {
        let target =
            kube_access::admin_target(client.clone(), Some(&namespace), &args.name, ADMIN_PORT)
                .await?;
        let mut admin = AdminClient::new(target);
        let identity = admin.identity().await?;
        let from = match (&args.from, &args.from_pod) {
            (Some(f), _) => Some(caller(f)?),
            (None, Some(p)) => {
                let td = trust_domain(identity.as_ref());
                Some(pod_identity(client.clone(), p, &td).await?)
            }
            (None, None) => None,
        };
        Some(proxy_view(&mut admin, identity, from.as_deref(), args.port).await?)
    } else {
        None
    };
    let identity = proxy
        .as_ref()
        .and_then(|p| p.identity.as_ref().map(|i| i.spiffe_id.clone()))
        .unwrap_or_else(|| {
            format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account} (if meshed)")
        });
    let verdict = view::verdict_line(&pod_name, injected, why_not.as_deref(), proxy.as_ref());
    let description = Description {
        pod: Some(pod_name),
        admin: None,
        injected: Some(injected),
        not_injected_because: why_not,
        identity,
        proxy,
        verdict,
    };
    let text = match output::structured(args.output, &description)? {
        Some(text) => text,
        None => view::text(&description),
    };
    print(&text)?;
    Ok(true)
}

/// `trellis describe --admin ADDR`: the proxy on this machine, without an API server (the pod
/// and injection sections need one and say so).
async fn run_local(args: LocalArgs, admin_addr: String) -> anyhow::Result<bool> {
    let from = args.from.as_deref().map(caller).transpose()?;
    let mut admin = AdminClient::new(Target::tcp(admin_addr.clone()));
    let identity = admin.identity().await?;
    let proxy = proxy_view(&mut admin, identity, from.as_deref(), args.port).await?;
    let identity = proxy.identity.as_ref().map_or_else(
        || "unknown: the proxy has no certificate yet".to_owned(),
        |i| i.spiffe_id.clone(),
    );
    let subject = format!("the pod of the proxy at {admin_addr}");
    let verdict = view::verdict_line(&subject, true, None, Some(&proxy));
    let description = Description {
        pod: None,
        admin: Some(admin_addr),
        injected: None,
        not_injected_because: None,
        identity,
        proxy: Some(proxy),
        verdict,
    };
    let text = match output::structured(args.output, &description)? {
        Some(text) => text,
        None => view::text(&description),
    };
    print(&text)?;
    Ok(true)
}

/// What the proxy behind `admin` reports: its policy (with the verdict for `from` on `port`,
/// when both are given) and its most recent inbound refusals.
async fn proxy_view(
    admin: &mut AdminClient,
    identity: Option<Identity>,
    from: Option<&str>,
    port: Option<u16>,
) -> anyhow::Result<ProxyView> {
    let path = match (from, port) {
        (Some(f), Some(p)) => format!("/policy?from={f}&port={p}"),
        _ => "/policy".to_owned(),
    };
    let policy: PolicyDoc = admin.get_json(&path).await.with_context(|| {
        "the proxy has no /policy page (a proxy older than this tool?)".to_owned()
    })?;
    let refusals: Vec<_> = admin
        .handshakes(SEARCHED)
        .await?
        .into_iter()
        .filter(|h| h.decision != "allow" && h.direction != "outbound")
        .collect();
    let skip = refusals.len().saturating_sub(REFUSALS);
    Ok(ProxyView {
        identity,
        policy,
        refusals: refusals.into_iter().skip(skip).collect(),
    })
}

/// The trust domain of the proxy's certificate (`cluster.local` until it has one).
fn trust_domain(identity: Option<&Identity>) -> String {
    identity
        .and_then(|i| SpiffeId::parse(&i.spiffe_id).ok())
        .map_or_else(
            || "cluster.local".to_owned(),
            |id| id.trust_domain().to_string(),
        )
}

/// `--from`: a SPIFFE ID or `unauthenticated`.
fn caller(from: &str) -> anyhow::Result<String> {
    if from == "unauthenticated" {
        return Ok(from.to_owned());
    }
    SpiffeId::parse(from)
        .map(|id| id.to_string())
        .with_context(|| {
            format!(
                "--from {from:?}: expected a SPIFFE ID (spiffe://TD/ns/NS/sa/SA) or unauthenticated"
            )
        })
}

async fn get_pod(pods: &Api<Pod>, namespace: &str, name: &str) -> Result<Pod, KubeError> {
    match fetch(pods.get_opt(name)).await {
        Fetched::Found(pod) => Ok(pod),
        Fetched::Missing => Err(KubeError::PodNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }),
        Fetched::Denied(m) | Fetched::Failed(m) => Err(KubeError::Api(m)),
    }
}

/// `--from-pod NS/NAME`: the SPIFFE ID of that pod's service account.
async fn pod_identity(client: kube::Client, from_pod: &str, td: &str) -> anyhow::Result<String> {
    let (ns, name) = from_pod
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .with_context(|| format!("--from-pod {from_pod:?}: expected NAMESPACE/NAME"))?;
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let pod = get_pod(&pods, ns, name).await?;
    let sa = pod
        .spec
        .and_then(|s| s.service_account_name)
        .unwrap_or_else(|| "default".to_owned());
    Ok(format!("spiffe://{td}/ns/{ns}/sa/{sa}"))
}

async fn namespace_labelled(client: kube::Client, namespace: &str) -> Result<bool, KubeError> {
    let (key, value) = INJECTION_LABEL
        .split_once('=')
        .unwrap_or((INJECTION_LABEL, ""));
    let namespaces: Api<Namespace> = Api::all(client);
    match fetch(namespaces.get_metadata_opt(namespace)).await {
        Fetched::Found(ns) => Ok(ns
            .metadata
            .labels
            .is_some_and(|l| l.get(key).map(String::as_str) == Some(value))),
        Fetched::Missing => Ok(false),
        Fetched::Denied(m) | Fetched::Failed(m) => Err(KubeError::Api(m)),
    }
}
