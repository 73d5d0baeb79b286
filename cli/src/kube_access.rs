//! Talking to the Kubernetes API server: the client (kubeconfig or in-cluster), reading
//! objects with errors sorted into "missing", "forbidden" and "failed", and finding the pods
//! `inspect` and `check` reach through port-forward.
//!
//! Owns: those calls and their timeouts. Deciding what the answers mean is left to
//! [`crate::check::rules`] and [`crate::inspect`].

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::dial::Target;

/// How long one API call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The annotation the injector puts on the pods it meshed.
pub const INJECTED_ANNOTATION: &str = "trellis.dev/injected";

/// One object read from the API server, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched<T> {
    /// It is there.
    Found(T),
    /// It does not exist (404).
    Missing,
    /// We may not read it (401/403); the message says who we are and what was refused.
    Denied(String),
    /// Anything else: network, timeout, server error.
    Failed(String),
}

impl<T> Fetched<T> {
    /// Applies `f` to a found value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Fetched<U> {
        match self {
            Fetched::Found(t) => Fetched::Found(f(t)),
            Fetched::Missing => Fetched::Missing,
            Fetched::Denied(m) => Fetched::Denied(m),
            Fetched::Failed(m) => Fetched::Failed(m),
        }
    }

    /// The value, if found.
    pub fn found(&self) -> Option<&T> {
        match self {
            Fetched::Found(t) => Some(t),
            _ => None,
        }
    }
}

/// Why `inspect` could not reach a pod.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// No kubeconfig and not in a cluster, or a broken kubeconfig.
    #[error(
        "cannot set up a Kubernetes client: {0}\n  hint: pass --kubeconfig FILE or --context NAME (or set KUBECONFIG, `kubectl config use-context`); to talk to a local proxy use --admin ADDR"
    )]
    Config(String),
    /// The pod does not exist.
    #[error("pod {namespace}/{name} not found\n  hint: kubectl -n {namespace} get pods")]
    PodNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The pod has no Trellis proxy.
    #[error(
        "pod {namespace}/{name} is not meshed (no {INJECTED_ANNOTATION} annotation), so it has no proxy to inspect\n  hint: kubectl label namespace {namespace} trellis-injection=enabled, then restart the pod's workload (kubectl -n {namespace} rollout restart deployment/<name>)"
    )]
    PodNotMeshed {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The API server refused or failed a call.
    #[error("Kubernetes API: {0}")]
    Api(String),
}

/// `--kubeconfig` and `--context`, as kubectl has them (global flags of `trellis`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubeOpts {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the
    /// in-cluster configuration).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
}

/// A client from the kubeconfig (or the in-cluster configuration), as `opts` choose.
pub async fn client(opts: &KubeOpts) -> Result<Client, KubeError> {
    match tokio::time::timeout(CALL_TIMEOUT, config(opts)).await {
        Ok(Ok(config)) => Client::try_from(config).map_err(|e| KubeError::Config(describe(&e))),
        Ok(Err(e)) => Err(KubeError::Config(e)),
        Err(_) => Err(KubeError::Config(format!(
            "no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

async fn config(opts: &KubeOpts) -> Result<kube::Config, String> {
    let options = KubeConfigOptions {
        context: opts.context.clone(),
        ..KubeConfigOptions::default()
    };
    // kube's config errors already say their causes in their own message.
    let chain = |e: &dyn std::error::Error| e.to_string();
    match (&opts.kubeconfig, &opts.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| format!("--kubeconfig {}: {}", path.display(), chain(&e)))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("--kubeconfig {}: {}", path.display(), chain(&e)))
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("--context {context}: {}", chain(&e))),
        (None, None) => kube::Config::infer().await.map_err(|e| chain(&e)),
    }
}

/// A kube error in one line: the API server's status for API errors, else the error chain.
pub fn describe(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => {
            format!("{} {} ({})", status.code, status.reason, status.message)
        }
        other => {
            let mut out = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                out.push_str(": ");
                out.push_str(&s.to_string());
                source = s.source();
            }
            out
        }
    }
}

/// Awaits one read (`Api::get_opt` and the like) within [`CALL_TIMEOUT`], sorting the result.
pub async fn fetch<T>(call: impl Future<Output = kube::Result<Option<T>>>) -> Fetched<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(Some(t))) => Fetched::Found(t),
        Ok(Ok(None)) => Fetched::Missing,
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => Fetched::Missing,
        Ok(Err(e @ kube::Error::Api(_))) if is_denied(&e) => Fetched::Denied(describe(&e)),
        Ok(Err(e)) => Fetched::Failed(describe(&e)),
        Err(_) => Fetched::Failed(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// [`fetch`] for calls that return the value itself (lists).
pub async fn fetch_value<T>(call: impl Future<Output = kube::Result<T>>) -> Fetched<T> {
    fetch(async { call.await.map(Some) }).await
}

fn is_denied(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 401 || status.code == 403)
}

/// The target for `inspect -n NS POD`: the pod's admin port, after checking the pod exists
/// and is meshed. `namespace` defaults to the kubeconfig's.
pub async fn admin_target(
    client: Client,
    namespace: Option<&str>,
    name: &str,
    port: u16,
) -> Result<Target, KubeError> {
    let namespace = namespace.unwrap_or(client.default_namespace()).to_owned();
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let pod = match fetch(pods.get_opt(name)).await {
        Fetched::Found(pod) => pod,
        Fetched::Missing => {
            return Err(KubeError::PodNotFound {
                namespace,
                name: name.to_owned(),
            });
        }
        Fetched::Denied(m) | Fetched::Failed(m) => return Err(KubeError::Api(m)),
    };
    let meshed = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
    if !meshed {
        return Err(KubeError::PodNotMeshed {
            namespace,
            name: name.to_owned(),
        });
    }
    Ok(Target::PodPort {
        pods: Box::new(pods),
        namespace,
        name: name.to_owned(),
        port,
    })
}

/// The name of a running, ready pod matching `selector`, if there is one.
pub async fn ready_pod(pods: &Api<Pod>, selector: &str) -> Fetched<Option<String>> {
    fetch_value(pods.list(&ListParams::default().labels(selector)))
        .await
        .map(|list| {
            list.items
                .iter()
                .find(|p| is_ready(p))
                .and_then(|p| p.metadata.name.clone())
        })
}

/// Whether a pod is running and its Ready condition is true.
pub fn is_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}
