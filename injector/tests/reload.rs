//! The files the control plane writes are picked up without a restart: a new serving
//! certificate is used by the next handshake, a new trust bundle by the next injected pod.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a panic is the failure report"
)]

mod support;

use std::{path::Path, sync::Arc, time::Duration};

use rustls_pki_types::{CertificateDer, pem::PemObject};
use support::{FIXTURES, Pki, Webhook, apply, eventually, patch_of, review_fixture};
use tokio::sync::watch;
use trellis_injector::{InjectConfig, reload};

const POLL: Duration = Duration::from_millis(50);
const LIMIT: Duration = Duration::from_secs(10);

fn write(path: &Path, text: &str) {
    // Write-then-rename, as kubelet and careful writers do, so a poll never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Files {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    bundle: std::path::PathBuf,
}

fn files(webhook: &Webhook, root: &Pki) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = webhook.pki.serving();
    let files = Files {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        bundle: dir.path().join("root-cert.pem"),
        _dir: dir,
    };
    write(&files.cert, &cert_pem);
    write(&files.key, &key_pem);
    write(&files.bundle, &root.ca_pem());
    files
}

async fn start_reloader(
    webhook: &Webhook,
    files: &Files,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (loaded, watcher) = reload::Files {
        cert: files.cert.clone(),
        key: files.key.clone(),
        trust_bundle: files.bundle.clone(),
        trust_domain: Default::default(),
    }
    .load()
    .await
    .unwrap();
    webhook.serving.send_replace(Arc::new(loaded.serving));
    let (stop, mut stop_rx) = watch::channel(false);
    let task = tokio::spawn(watcher.run(
        webhook.serving.clone(),
        webhook.config.clone(),
        POLL,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    (stop, task)
}

#[tokio::test]
async fn a_renewed_serving_certificate_is_used_by_the_next_handshake() {
    let root = Pki::new("mesh root");
    let webhook = Webhook::start(InjectConfig::with_defaults("p:1", root.ca_pem(), true)).await;
    let files = files(&webhook, &root);
    let (stop, task) = start_reloader(&webhook, &files).await;

    let (renewed_pem, renewed_key) = webhook.pki.serving();
    let renewed = CertificateDer::from_pem_slice(renewed_pem.as_bytes()).unwrap();
    write(&files.key, &renewed_key);
    write(&files.cert, &renewed_pem);

    eventually(LIMIT, "the renewed certificate to be served", || async {
        let stream = webhook.connect().await;
        let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        presented == renewed
    })
    .await;
    // And it still serves reviews.
    let response = webhook
        .review("/inject", &review_fixture(FIXTURES[0]))
        .await;
    assert!(patch_of(&response).is_some());

    let _ = stop.send(true);
    task.await.unwrap();
}

#[tokio::test]
async fn a_rotated_trust_bundle_reaches_the_next_injected_pod() {
    let old_root = Pki::new("old root");
    let webhook = Webhook::start(InjectConfig::with_defaults("p:1", old_root.ca_pem(), true)).await;
    let files = files(&webhook, &old_root);
    let (stop, task) = start_reloader(&webhook, &files).await;

    // Rotation: old and new root side by side.
    let new_root = Pki::new("new root");
    write(
        &files.bundle,
        &format!("{}{}", old_root.ca_pem(), new_root.ca_pem()),
    );
    let expected = vec![old_root.ca_der(), new_root.ca_der()];

    let review = review_fixture(FIXTURES[0]);
    eventually(LIMIT, "the new bundle in injected pods", || async {
        let response = webhook.review("/inject", &review).await;
        let (_, pod) = apply(&review, &patch_of(&response).unwrap());
        let inits = pod.spec.unwrap().init_containers.unwrap();
        let proxy = inits.iter().find(|c| c.name == "trellis-proxy").unwrap();
        let bundle = proxy
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "TRELLIS_TRUST_BUNDLE")
            .unwrap()
            .value
            .clone()
            .unwrap();
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bundle.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        roots == expected
    })
    .await;

    let _ = stop.send(true);
    task.await.unwrap();
}

#[tokio::test]
async fn files_that_do_not_load_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = Pki::new("root");
    let (cert, key) = root.serving();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("tls.crt"), cert).unwrap();
    std::fs::write(path("tls.key"), key).unwrap();
    std::fs::write(path("root-cert.pem"), root.ca_pem()).unwrap();
    std::fs::write(path("junk.pem"), "not a certificate").unwrap();
    let files = reload::Files {
        cert: path("tls.crt"),
        key: path("tls.key"),
        trust_bundle: path("root-cert.pem"),
        trust_domain: Default::default(),
    };
    files.clone().load().await.unwrap();

    let junk_bundle = reload::Files {
        trust_bundle: path("junk.pem"),
        ..files.clone()
    };
    let err = junk_bundle.load_trust_bundle().await.unwrap_err();
    assert!(err.to_string().contains("junk.pem"), "{err}");

    // A leaf is not a root.
    let leaf_bundle = reload::Files {
        trust_bundle: path("tls.crt"),
        ..files.clone()
    };
    let err = leaf_bundle.load_trust_bundle().await.unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");

    let missing = reload::Files {
        key: path("missing.key"),
        ..files.clone()
    };
    let err = missing.load().await.unwrap_err();
    assert!(err.to_string().contains("missing.key"), "{err}");

    let swapped = reload::Files {
        cert: path("tls.key"),
        key: path("tls.crt"),
        ..files
    };
    assert!(swapped.load_serving().await.is_err());
}
