//! The admission webhook's serving certificate, in Kubernetes mode: the control plane issues a
//! DNS-named server certificate for the injector's Service from the mesh CA, writes it to the
//! Secret the injector mounts (`tls.crt`, `tls.key`, `ca.crt`), and sets the `caBundle` of the
//! MutatingWebhookConfiguration to the mesh roots — so nothing is configured by hand (as istiod
//! does for its own webhook).
//!
//! Owns: the loop that keeps both right. It watches the Secret and the webhook configuration
//! and follows the CA: a deleted or edited Secret, an emptied `caBundle` (what `helm upgrade
//! --force` does) is put back within seconds and logged at `warn`; a certificate is renewed at
//! half its lifetime, re-issued when the CA switches roots, and `ca.crt` and `caBundle` follow
//! the roots. What the Secret needs is decided by [`plan`] (pure). The injector only reloads
//! the files it is given.

pub mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::watcher;
use plan::{CA_CRT, Plan, TLS_CRT, TLS_KEY};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trellis_ca::{CertificateAuthority, WorkloadKey};

use crate::ca_live::LiveCa;
use crate::metrics::Metrics;

/// Lifetime of the webhook's serving certificate.
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
/// Retry interval after a failure.
const RETRY: Duration = Duration::from_secs(5);
/// How often everything is read anyway (a watch can miss its end).
const RESYNC: Duration = Duration::from_secs(30);
/// How long one pass may wait for the API server.
const PASS_TIMEOUT: Duration = Duration::from_secs(10);

/// Names of the objects to maintain.
#[derive(Debug, Clone)]
pub struct InjectorCertTargets {
    /// Namespace of the injector's Service and Secret.
    pub namespace: String,
    /// The injector's Service name (the DNS names are derived from it).
    pub service: String,
    /// The Secret the injector mounts.
    pub secret: String,
    /// The MutatingWebhookConfiguration whose caBundle to set.
    pub webhook: String,
}

impl InjectorCertTargets {
    /// The DNS names the API server may use for the Service.
    pub fn dns_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service, &self.namespace);
        vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ]
    }
}

/// Keeps the injector's certificate and the webhook's caBundle current until `shutdown`.
pub async fn run(
    client: kube::Client,
    live: Arc<LiveCa>,
    targets: InjectorCertTargets,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &targets.namespace);
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    crate::owned_watch::spawn(
        secrets,
        by_name(&targets.secret),
        "injector Secret",
        wake.clone(),
        shutdown.clone(),
    );
    crate::owned_watch::spawn(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        by_name(&targets.webhook),
        "webhook configuration",
        wake.clone(),
        shutdown.clone(),
    );
    let mut cas = live.subscribe();
    let mut last_roots = String::new();
    loop {
        let ca = cas.borrow_and_update().ca.clone();
        let roots = ca.bundle().to_pem();
        // The first pass (the Secret the chart declared empty) and a change of roots are ours.
        let expected = roots != last_roots;
        let wait = match tokio::time::timeout(
            PASS_TIMEOUT,
            reconcile(&client, &ca, &targets, &metrics, expected),
        )
        .await
        {
            Ok(Ok(renew_at)) => {
                last_roots = roots;
                renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(RESYNC)
            }
            Ok(Err(e)) => {
                warn!(error = %e, secret = %targets.secret, webhook = %targets.webhook, "cannot keep the injector's serving certificate; retrying");
                RETRY
            }
            Err(_) => {
                warn!(secret = %targets.secret, webhook = %targets.webhook, "the API server did not answer within {PASS_TIMEOUT:?}; retrying");
                RETRY
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            _ = cas.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One pass: the Secret, then the webhook; returns when to look again at the latest.
/// `expected`: this is the first pass or the CA's roots changed since the last one, so a
/// missing certificate or other roots in `ca.crt` and `caBundle` are no damage (logged at
/// `info`).
pub async fn reconcile(
    client: &kube::Client,
    ca: &CertificateAuthority,
    targets: &InjectorCertTargets,
    metrics: &Metrics,
    expected: bool,
) -> Result<SystemTime, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &targets.namespace);
    let err = |e: kube::Error| format!("Secret {}/{}: {e}", targets.namespace, targets.secret);
    let existing = api.get_opt(&targets.secret).await.map_err(err)?;
    let data = existing.as_ref().and_then(|s| s.data.as_ref());
    let now = SystemTime::now();
    let renew_at = match plan::plan(data, ca, &targets.dns_names(), now) {
        Plan::Keep { renew_at } => renew_at,
        Plan::Rebundle => {
            let mut data = data.cloned().unwrap_or_default();
            data.insert(
                CA_CRT.to_owned(),
                ByteString(ca.bundle().to_pem().into_bytes()),
            );
            write_secret(client, targets, data).await?;
            if expected {
                info!(secret = %targets.secret, "injector Secret: ca.crt now holds the current roots");
            } else {
                warn!(secret = %targets.secret, what = "ca.crt", "injector Secret changed under the control plane; wrote the mesh's roots back");
                metrics.reconciled("injector-secret", "restored");
            }
            now + RESYNC
        }
        Plan::Reissue(why) => {
            let not_after = publish(client, ca, targets).await?;
            if why.is_damage() && !expected {
                warn!(secret = %targets.secret, what = %why, "injector Secret changed under the control plane; issued and wrote a new serving certificate");
                metrics.reconciled("injector-secret", "restored");
            } else {
                info!(secret = %targets.secret, why = %why, "injector serving certificate renewed");
                metrics.reconciled("injector-secret", "renewed");
            }
            let life = not_after.duration_since(now).unwrap_or_default();
            now + life / 2
        }
    };
    let bundle = ca.bundle().to_pem();
    match set_ca_bundle(client, &targets.webhook, bundle.as_bytes()).await? {
        None => {}
        Some(_) if expected => {
            info!(webhook = %targets.webhook, "webhook caBundle now holds the current roots")
        }
        Some(was) => {
            warn!(webhook = %targets.webhook, was = %was, "webhook caBundle changed under the control plane; set it back to the mesh's roots");
            metrics.reconciled("webhook", "restored");
        }
    }
    Ok(renew_at)
}

/// Issues and writes a new certificate, `ca.crt` and the webhook's caBundle; returns the
/// certificate's expiry.
pub async fn publish(
    client: &kube::Client,
    ca: &CertificateAuthority,
    targets: &InjectorCertTargets,
) -> Result<SystemTime, String> {
    let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
    let ttl = SERVING_TTL.min(ca.max_ttl());
    let cert = ca
        .issue_dns_server(&key, &targets.dns_names(), ttl, SystemTime::now())
        .map_err(|e| e.to_string())?;
    let bundle = ca.bundle().to_pem();
    let mut data = BTreeMap::new();
    data.insert(
        TLS_CRT.to_owned(),
        ByteString(cert.chain_pem().into_bytes()),
    );
    data.insert(
        TLS_KEY.to_owned(),
        ByteString(key.private_key_pem().into_bytes()),
    );
    data.insert(CA_CRT.to_owned(), ByteString(bundle.into_bytes()));
    write_secret(client, targets, data).await?;
    info!(
        secret = %targets.secret,
        serial = %cert.serial,
        not_after = %humantime::format_rfc3339_seconds(cert.not_after),
        "injector serving certificate published"
    );
    Ok(cert.not_after)
}

async fn write_secret(
    client: &kube::Client,
    targets: &InjectorCertTargets,
    data: BTreeMap<String, ByteString>,
) -> Result<(), String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &targets.namespace);
    let err = |e: kube::Error| format!("Secret {}/{}: {e}", targets.namespace, targets.secret);
    match api.get_opt(&targets.secret).await.map_err(err)? {
        Some(mut secret) => {
            secret.data = Some(data);
            secret.string_data = None;
            api.replace(&targets.secret, &PostParams::default(), &secret)
                .await
                .map_err(err)?;
        }
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(targets.secret.clone()),
                    namespace: Some(targets.namespace.clone()),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data),
                ..Secret::default()
            };
            api.create(&PostParams::default(), &secret)
                .await
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Sets every webhook's caBundle of `name` to `bundle`; returns what the first differing one
/// held (for the log), or `None` when all were right.
async fn set_ca_bundle(
    client: &kube::Client,
    name: &str,
    bundle: &[u8],
) -> Result<Option<String>, String> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let err = |e: kube::Error| format!("MutatingWebhookConfiguration {name}: {e}");
    let Some(mut config) = api.get_opt(name).await.map_err(err)? else {
        return Err(format!(
            "MutatingWebhookConfiguration {name} does not exist (is the chart installed?)"
        ));
    };
    let mut was = None;
    for webhook in config.webhooks.iter_mut().flatten() {
        let current = webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice());
        if current != Some(bundle) {
            was.get_or_insert_with(|| match current {
                None | Some([]) => "empty".to_owned(),
                Some(_) => "other roots".to_owned(),
            });
            webhook.client_config.ca_bundle = Some(ByteString(bundle.to_vec()));
        }
    }
    if was.is_some() {
        api.replace(name, &PostParams::default(), &config)
            .await
            .map_err(err)?;
    }
    Ok(was)
}
