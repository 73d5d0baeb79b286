//! The CA's lifecycle in Kubernetes mode, against the fake API server: what `helm upgrade
//! --force` did to a real cluster (the CA Secret, the injector's Secret and the webhook's
//! caBundle emptied or deleted) is put back within seconds with the same root; the trust
//! bundle is published in ConfigMaps that outlive the CA Secret, and a restart that finds the
//! Secret gone while they name a root refuses to make a new one unless told to; a rotation
//! edited into the CA Secret reaches Certify, the injector's certificate, the webhook and the
//! published bundle; the injector's certificate is renewed at half its life.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use common::apiserver::{CONFIGMAPS, FakeApiServer, NAMESPACE, NAMESPACES, SECRETS, WEBHOOKS};
use common::*;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use trellis_ca::authority::CLOCK_SKEW;
use trellis_ca::{CaMaterial, TrustBundle, TrustDomain, WorkloadKey, certs_from_pem};
use trellis_control_plane::ca_store::{Origin, StoreError};
use trellis_control_plane::config::Config;
use trellis_control_plane::server::{Running, StartError};

const CA_SECRET: &str = "trellis-ca";
const INJECTOR_SECRET: &str = "trellis-injector-tls";
const WEBHOOK: &str = "trellis-injector";
const PUBLISHED: &str = "trellis-ca-root-cert";

fn kube_config(extra: &[&str]) -> Config {
    let mut flags = vec!["--mode", "kubernetes"];
    flags.extend_from_slice(extra);
    config(&flags)
}

async fn start(api: &FakeApiServer, extra: &[&str]) -> (Running, Config) {
    let config = kube_config(extra);
    let running = try_start(&config, Some(api.client()))
        .await
        .unwrap_or_else(|e| panic!("control plane does not start: {e}"));
    (running, config)
}

/// What the chart installs: the webhook configuration with no caBundle, a meshed namespace.
fn install_chart_objects(api: &FakeApiServer) {
    api.collections().put(WEBHOOKS, webhook_config(None));
    api.collections().put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "labels": {"trellis-injection": "enabled"}}}),
    );
}

fn webhook_config(ca_bundle: Option<&str>) -> Value {
    let mut client_config =
        json!({"service": {"name": "trellis-injector", "namespace": NAMESPACE, "path": "/inject"}});
    if let Some(b) = ca_bundle {
        client_config["caBundle"] = json!(b);
    }
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": [
            {"name": "inject.trellis.dev", "clientConfig": client_config.clone(),
             "admissionReviewVersions": ["v1"], "sideEffects": "None"},
            {"name": "reinvoke.trellis.dev", "clientConfig": client_config,
             "admissionReviewVersions": ["v1"], "sideEffects": "None"}
        ]
    })
}

fn b64(value: &Value) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str()?)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// A key of a Secret, decoded; `None` if the Secret or key is missing.
fn secret_value(api: &FakeApiServer, name: &str, key: &str) -> Option<String> {
    b64(&api.secret(name)?["data"][key])
}

/// Every webhook's caBundle, decoded.
fn ca_bundles(api: &FakeApiServer) -> Vec<Option<String>> {
    let config = api
        .collections()
        .get(WEBHOOKS, "", WEBHOOK)
        .unwrap_or_default();
    config["webhooks"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|h| b64(&h["clientConfig"]["caBundle"]))
                .collect()
        })
        .unwrap_or_default()
}

/// The PEM of the published ConfigMap in `namespace`.
fn published(api: &FakeApiServer, namespace: &str) -> Option<String> {
    let cm = api.collections().get(CONFIGMAPS, namespace, PUBLISHED)?;
    cm["data"]["root-cert.pem"].as_str().map(str::to_owned)
}

fn roots(pem: &str) -> Vec<CertificateDer<'static>> {
    certs_from_pem(pem.as_bytes()).unwrap_or_default()
}

/// Waits until `check` holds, saying `what` if it never does.
async fn until(what: &str, check: impl Fn() -> bool) {
    eventually(what, || async {
        check().then_some(()).ok_or_else(|| "not yet".to_owned())
    })
    .await;
}

#[tokio::test]
async fn a_deleted_or_emptied_ca_secret_is_restored_within_seconds_with_the_same_root() {
    let api = FakeApiServer::start().await;
    install_chart_objects(&api);
    let (running, _) = start(&api, &[]).await;
    let root_pem = secret_value(&api, CA_SECRET, "root-cert.pem").expect("the CA Secret");
    let key_pem = secret_value(&api, CA_SECRET, "ca-key.pem").expect("its key");
    let same = || {
        secret_value(&api, CA_SECRET, "root-cert.pem").as_deref() == Some(&root_pem)
            && secret_value(&api, CA_SECRET, "ca-key.pem").as_deref() == Some(&key_pem)
    };

    api.collections().delete(SECRETS, NAMESPACE, CA_SECRET);
    until("the deleted CA Secret is back", same).await;
    // What `helm upgrade --force` did: the Secret replaced by the chart's empty one.
    api.put_secret(CA_SECRET, None);
    until("the emptied CA Secret is filled again", same).await;
    assert!(logged(&["restored the CA in use", "missing"]));
    assert_eq!(
        running.live.current().bundle().roots(),
        &roots(&root_pem)[..]
    );
    stop(running).await;
}

#[tokio::test]
async fn a_restart_with_the_secret_gone_but_the_bundle_published_refuses_unless_told_to_accept_a_new_root()
 {
    let api = FakeApiServer::start().await;
    install_chart_objects(&api);
    let (running, _) = start(&api, &[]).await;
    let root_pem = secret_value(&api, CA_SECRET, "root-cert.pem").unwrap();
    until("the bundle is published in both namespaces", || {
        published(&api, NAMESPACE).as_deref() == Some(&root_pem)
            && published(&api, "shop").as_deref() == Some(&root_pem)
    })
    .await;
    stop(running).await;

    // The control plane's namespace is deleted: its Secret and ConfigMap go; the meshed
    // namespace's copy stays.
    api.collections().delete(SECRETS, NAMESPACE, CA_SECRET);
    api.collections().delete(CONFIGMAPS, NAMESPACE, PUBLISHED);
    let err = try_start(&kube_config(&[]), Some(api.client()))
        .await
        .expect_err("no new root while a published bundle names one");
    assert!(
        matches!(err, StartError::Store(StoreError::WouldReplaceRoot { .. })),
        "{err:?}"
    );
    let message = err.to_string();
    let fingerprint = trellis_ca::fingerprint(&roots(&root_pem)[0]);
    for needle in [
        "Secret trellis-system/trellis-ca",
        "ConfigMap shop/trellis-ca-root-cert",
        fingerprint.as_str(),
        "--accept-new-root",
        "ca.acceptNewRoot",
    ] {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    assert!(api.secret(CA_SECRET).is_none(), "no root was stored");

    let (running, _) = start(&api, &["--accept-new-root"]).await;
    assert_eq!(running.origin, Origin::Generated);
    let new_pem = secret_value(&api, CA_SECRET, "root-cert.pem").unwrap();
    assert_ne!(new_pem, root_pem);
    until("the new root is published everywhere", || {
        published(&api, NAMESPACE).as_deref() == Some(&new_pem)
            && published(&api, "shop").as_deref() == Some(&new_pem)
    })
    .await;
    stop(running).await;
}

#[tokio::test]
async fn the_published_bundle_is_put_back_when_deleted_or_edited_and_reaches_new_meshed_namespaces()
{
    let api = FakeApiServer::start().await;
    install_chart_objects(&api);
    let (running, _) = start(&api, &[]).await;
    let root_pem = secret_value(&api, CA_SECRET, "root-cert.pem").unwrap();
    let current = |ns: &str| published(&api, ns).as_deref() == Some(root_pem.as_str());
    until("published in shop", || current("shop")).await;

    api.collections().delete(CONFIGMAPS, "shop", PUBLISHED);
    until("the deleted copy is back", || current("shop")).await;
    let mut edited = api
        .collections()
        .get(CONFIGMAPS, "shop", PUBLISHED)
        .unwrap();
    edited["data"]["root-cert.pem"] = json!("not a root");
    api.collections().put(CONFIGMAPS, edited);
    until("the edited copy is back", || current("shop")).await;
    assert!(logged(&[
        "published trust bundle changed under the control plane; restored"
    ]));

    api.collections().put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "billing", "labels": {"trellis-injection": "enabled"}}}),
    );
    api.collections().put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "unmeshed"}}),
    );
    until("a namespace labelled later gets a copy", || {
        current("billing")
    })
    .await;
    assert!(published(&api, "unmeshed").is_none());
    stop(running).await;
}

#[tokio::test]
async fn the_injector_secret_and_the_webhook_ca_bundle_are_restored_after_a_forced_helm_upgrade() {
    let api = FakeApiServer::start().await;
    install_chart_objects(&api);
    let (running, _) = start(&api, &[]).await;
    let root_pem = secret_value(&api, CA_SECRET, "root-cert.pem").unwrap();
    let bundle = TrustBundle::from_pem(TrustDomain::default(), root_pem.as_bytes()).unwrap();
    let serving_ok = || {
        let (Some(crt), Some(key), Some(ca)) = (
            secret_value(&api, INJECTOR_SECRET, "tls.crt"),
            secret_value(&api, INJECTOR_SECRET, "tls.key"),
            secret_value(&api, INJECTOR_SECRET, "ca.crt"),
        ) else {
            return false;
        };
        let chain = roots(&crt);
        !key.is_empty()
            && ca == root_pem
            && chain
                .split_first()
                .is_some_and(|(leaf, rest)| bundle.issuing_root(leaf, rest).is_some())
            && ca_bundles(&api)
                .iter()
                .all(|b| b.as_deref() == Some(root_pem.as_str()))
    };
    until(
        "the injector's certificate and the caBundle are published",
        serving_ok,
    )
    .await;
    let first_crt = secret_value(&api, INJECTOR_SECRET, "tls.crt").unwrap();
    let writes = api.writes(SECRETS, INJECTOR_SECRET);

    // Nothing changes while nothing is damaged.
    api.collections().put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}),
    );
    assert_eq!(
        secret_value(&api, INJECTOR_SECRET, "tls.crt"),
        Some(first_crt)
    );
    assert_eq!(api.writes(SECRETS, INJECTOR_SECRET), writes);

    // `helm upgrade --force`: both Secrets emptied, both caBundles gone.
    api.put_secret(INJECTOR_SECRET, None);
    api.collections().put(WEBHOOKS, webhook_config(None));
    until(
        "the injector's certificate and the caBundle are back",
        serving_ok,
    )
    .await;
    assert!(logged(&["injector Secret changed under the control plane"]));
    assert!(logged(&[
        "webhook caBundle changed under the control plane",
        "empty"
    ]));

    // Someone edits the caBundle of one webhook.
    let other = CaMaterial::generate_root(&TrustDomain::default(), SystemTime::now()).unwrap();
    let foreign = base64::engine::general_purpose::STANDARD.encode(&other.root_cert_pem);
    api.collections()
        .put(WEBHOOKS, webhook_config(Some(&foreign)));
    until("the edited caBundle is set back", serving_ok).await;
    stop(running).await;
}

#[tokio::test]
async fn a_rotation_edited_into_the_ca_secret_reaches_certify_the_injector_and_the_published_bundle()
 {
    let api = FakeApiServer::start().await;
    install_chart_objects(&api);
    let (running, config) = start(&api, &[]).await;
    let old_root = secret_value(&api, CA_SECRET, "root-cert.pem").unwrap();
    until("the injector's certificate is published", || {
        secret_value(&api, INJECTOR_SECRET, "tls.crt").is_some()
    })
    .await;
    let old_crt = secret_value(&api, INJECTOR_SECRET, "tls.crt").unwrap();
    let next = CaMaterial::generate_root(&TrustDomain::default(), SystemTime::now()).unwrap();
    let both = format!("{old_root}{}", next.root_cert_pem);
    let edit = |fields: &[(&str, &str)]| {
        let mut secret = api.secret(CA_SECRET).unwrap();
        for (k, v) in fields {
            secret["data"][*k] = json!(base64::engine::general_purpose::STANDARD.encode(v));
        }
        api.collections().put(SECRETS, secret);
    };

    // 1. Add the new root (kubectl patch of root-cert.pem).
    edit(&[("root-cert.pem", &both)]);
    until(
        "both roots in ca.crt, caBundle and the published bundle",
        || {
            secret_value(&api, INJECTOR_SECRET, "ca.crt").as_deref() == Some(both.as_str())
                && ca_bundles(&api)
                    .iter()
                    .all(|b| b.as_deref() == Some(both.as_str()))
                && published(&api, "shop").as_deref() == Some(both.as_str())
        },
    )
    .await;
    assert_eq!(
        secret_value(&api, INJECTOR_SECRET, "tls.crt").as_deref(),
        Some(old_crt.as_str()),
        "adding a root alone does not re-issue the webhook's certificate"
    );

    // 2. Switch the CA: the webhook's certificate is re-issued under the new root at once.
    edit(&[
        ("ca-cert.pem", &next.ca_cert_pem),
        ("ca-key.pem", &next.ca_key_pem),
        ("cert-chain.pem", &next.cert_chain_pem),
    ]);
    let only_new =
        TrustBundle::from_pem(TrustDomain::default(), next.root_cert_pem.as_bytes()).unwrap();
    until("the injector's certificate chains to the new root", || {
        secret_value(&api, INJECTOR_SECRET, "tls.crt").is_some_and(|crt| {
            let chain = roots(&crt);
            chain
                .split_first()
                .is_some_and(|(leaf, rest)| only_new.issuing_root(leaf, rest).is_some())
        })
    })
    .await;
    // A proxy that received both roots reaches the control plane (now serving under the new
    // root) and gets a leaf under the new root.
    let trusting_both = TrustBundle::from_pem(TrustDomain::default(), both.as_bytes()).unwrap();
    let svid = eventually("a leaf under the new root", || async {
        let channel = trellis_client::connect(
            &running.grpc_addr.to_string(),
            trusting_both.clone(),
            Some(config.own_id.clone()),
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
        let key = trellis_ca::WorkloadKey::generate().unwrap();
        let svid = trellis_client::IdentityClient::new(channel)
            .certify(&key, Some(&id(FRONTEND)), &exchange_token("valid"), None)
            .await
            .map_err(|e| e.to_string())?;
        svid.verifies_under(&only_new, SystemTime::now())
            .map(|()| svid)
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(svid.bundle().roots().len(), 2);

    // 3. Remove the old root.
    edit(&[("root-cert.pem", &next.root_cert_pem)]);
    until("only the new root everywhere", || {
        secret_value(&api, INJECTOR_SECRET, "ca.crt").as_deref()
            == Some(next.root_cert_pem.as_str())
            && ca_bundles(&api)
                .iter()
                .all(|b| b.as_deref() == Some(next.root_cert_pem.as_str()))
            && published(&api, NAMESPACE).as_deref() == Some(next.root_cert_pem.as_str())
    })
    .await;
    assert_eq!(
        running.live.current().bundle().roots(),
        &roots(&next.root_cert_pem)[..]
    );
    stop(running).await;
}

/// The token of a recorded TokenReview case.
fn exchange_token(case: &str) -> String {
    common::apiserver::exchange(case).token().to_owned()
}

#[tokio::test]
async fn the_injector_certificate_is_renewed_at_half_its_life_by_the_running_control_plane() {
    let api = FakeApiServer::start().await;
    install_chart_objects(&api);
    let (running, _) = start(&api, &[]).await;
    until("the injector's certificate is published", || {
        secret_value(&api, INJECTOR_SECRET, "tls.crt").is_some()
    })
    .await;
    let ca_crt = secret_value(&api, INJECTOR_SECRET, "ca.crt").expect("ca.crt");
    let bundles = ca_bundles(&api);

    // A certificate from the mesh's CA whose half-life ends 3 s from now (issuance is
    // back-dated by CLOCK_SKEW): right, so kept at first, then due with nothing else happening.
    let ca = running.live.current();
    let key = WorkloadKey::generate().expect("a key");
    let names = [
        "trellis-injector",
        "trellis-injector.trellis-system",
        "trellis-injector.trellis-system.svc",
        "trellis-injector.trellis-system.svc.cluster.local",
    ]
    .map(str::to_owned);
    let now = SystemTime::now();
    let ttl = CLOCK_SKEW + Duration::from_secs(6);
    let short = ca
        .issue_dns_server(&key, &names, ttl, now)
        .expect("a short certificate");
    let planted = short.chain_pem();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    api.put_secret(
        INJECTOR_SECRET,
        Some(json!({
            "tls.crt": b64(&planted),
            "tls.key": b64(&key.private_key_pem()),
            "ca.crt": b64(&ca_crt),
        })),
    );

    let renewed = eventually("a new certificate before the old one expires", || async {
        match secret_value(&api, INJECTOR_SECRET, "tls.crt") {
            Some(crt) if crt != planted && !crt.is_empty() => Ok(crt),
            _ => Err("the planted certificate is still there".to_owned()),
        }
    })
    .await;
    assert!(
        SystemTime::now() < short.not_after,
        "renewed only after the certificate expired"
    );
    let leaf = roots(&renewed).into_iter().next().expect("a leaf");
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("DER");
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(lifetime > 3600, "a full serving lifetime, got {lifetime} s");
    assert_ne!(
        secret_value(&api, INJECTOR_SECRET, "tls.key").as_deref(),
        Some(key.private_key_pem().as_str()),
        "a new key with the new certificate"
    );
    assert_eq!(secret_value(&api, INJECTOR_SECRET, "ca.crt"), Some(ca_crt));
    assert_eq!(ca_bundles(&api), bundles, "the caBundle does not change");
    stop(running).await;
}
