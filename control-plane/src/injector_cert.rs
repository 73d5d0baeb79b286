//! The admission webhook's serving certificate, in Kubernetes mode: the control plane issues a
//! DNS-named server certificate for the injector's Service from the mesh CA, writes it to the
//! Secret the injector mounts (`tls.crt`, `tls.key`, `ca.crt`), and sets the `caBundle` of the
//! MutatingWebhookConfiguration to the mesh roots — so nothing is configured by hand (as istiod
//! does for its own webhook). Renewed at half its lifetime.
//!
//! Owns: that loop. The injector only reloads the files it is given.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trellis_ca::{CertificateAuthority, WorkloadKey};

/// Lifetime of the webhook's serving certificate.
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
/// Retry interval after a failure.
const RETRY: Duration = Duration::from_secs(30);

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
    ca: Arc<CertificateAuthority>,
    targets: InjectorCertTargets,
    shutdown: CancellationToken,
) {
    loop {
        let wait = match publish(&client, &ca, &targets).await {
            Ok(not_after) => {
                let life = not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or(RETRY * 2);
                life / 2
            }
            Err(e) => {
                warn!(error = %e, secret = %targets.secret, webhook = %targets.webhook, "cannot publish the injector's serving certificate; retrying");
                RETRY
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Issues and publishes once; returns the certificate's expiry.
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
        "tls.crt".to_owned(),
        ByteString(cert.chain_pem().into_bytes()),
    );
    data.insert(
        "tls.key".to_owned(),
        ByteString(key.private_key_pem().into_bytes()),
    );
    data.insert("ca.crt".to_owned(), ByteString(bundle.clone().into_bytes()));
    write_secret(client, targets, data).await?;
    set_ca_bundle(client, &targets.webhook, bundle.as_bytes()).await?;
    info!(
        secret = %targets.secret,
        webhook = %targets.webhook,
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

async fn set_ca_bundle(client: &kube::Client, name: &str, bundle: &[u8]) -> Result<(), String> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let err = |e: kube::Error| format!("MutatingWebhookConfiguration {name}: {e}");
    let Some(mut config) = api.get_opt(name).await.map_err(err)? else {
        return Err(format!(
            "MutatingWebhookConfiguration {name} does not exist (is the chart installed?)"
        ));
    };
    let mut changed = false;
    for webhook in config.webhooks.iter_mut().flatten() {
        let current = webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice());
        if current != Some(bundle) {
            webhook.client_config.ca_bundle = Some(ByteString(bundle.to_vec()));
            changed = true;
        }
    }
    if changed {
        api.replace(name, &PostParams::default(), &config)
            .await
            .map_err(err)?;
    }
    Ok(())
}
