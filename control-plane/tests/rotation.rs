//! The CA's lifecycle in local mode, on a real control plane: the state directory is watched
//! while it runs — a damaged or deleted CA is put back with the same root, each step of a root
//! rotation written into it is adopted without a restart (Certify, discovery and the serving
//! certificate follow), a shortcut that would break the mesh is undone — a plug-in `cacerts`
//! directory is reloaded the same way, and a restart that finds the CA gone but the bundle
//! published refuses to make a new root unless told to.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::SystemTime;

use common::watcher::{Mirror, Watcher, certified};
use common::*;
use rustls_pki_types::CertificateDer;
use trellis_ca::{CaMaterial, Svid, TrustBundle, TrustDomain, certs_from_pem};
use trellis_control_plane::ca_store::{DirStore, Origin, StoreError};
use trellis_control_plane::server::StartError;

fn td() -> TrustDomain {
    TrustDomain::default()
}

/// Writes `m` into the state directory the way an operator's tooling should: each file
/// replaced atomically, the key with mode 0600.
fn write_state(dir: &Path, m: &CaMaterial) {
    DirStore::new(dir).restore(m).expect("write the CA files");
}

fn read_state(dir: &Path) -> CaMaterial {
    DirStore::new(dir)
        .load()
        .expect("the CA files read")
        .expect("the CA files exist")
}

fn roots(pem: &str) -> Vec<CertificateDer<'static>> {
    certs_from_pem(pem.as_bytes()).expect("PEM roots")
}

fn bundle(pem: &str) -> TrustBundle {
    TrustBundle::from_pem(td(), pem.as_bytes()).expect("a bundle")
}

/// An SVID for the frontend, over a channel that trusts `trust`.
async fn certify_trusting(plane: &LocalPlane, trust: &TrustBundle) -> Result<Svid, String> {
    let channel = trellis_client::connect(
        &plane.running.grpc_addr.to_string(),
        trust.clone(),
        Some(plane.config.own_id.clone()),
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    let key = trellis_ca::WorkloadKey::generate().unwrap();
    trellis_client::IdentityClient::new(channel)
        .certify(&key, Some(&id(FRONTEND)), FRONTEND_TOKEN, None)
        .await
        .map_err(|e| e.to_string())
}

/// Reads discovery updates until one carries a bundle of `n` roots.
async fn until_roots(watcher: &mut Watcher, n: usize) {
    within("a discovery update with the new bundle", async {
        loop {
            watcher.next().await;
            if watcher.mirror.roots == Some(n) {
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_root_rotation_written_into_the_state_directory_is_adopted_step_by_step() {
    let plane = LocalPlane::start(&[]).await;
    let old = read_state(&plane.state);
    let next = CaMaterial::generate_root(&td(), SystemTime::now()).unwrap();
    let both = format!("{}{}", old.root_cert_pem, next.root_cert_pem);
    let (old_root, new_root) = (roots(&old.root_cert_pem), roots(&next.root_cert_pem));
    let svid = certified(&plane.running, &plane.config, FRONTEND_TOKEN, FRONTEND).await;
    let mut watcher = Watcher::open(&plane.running, &plane.config, &svid, Mirror::default()).await;
    watcher.next().await;
    assert_eq!(watcher.mirror.roots, Some(1));

    // 1. The new root joins the bundle; the CA still signs under the old one.
    write_state(
        &plane.state,
        &CaMaterial {
            root_cert_pem: both.clone(),
            ..old.clone()
        },
    );
    until_roots(&mut watcher, 2).await;
    let issued = certify_trusting(&plane, &bundle(&old.root_cert_pem))
        .await
        .expect("certified");
    assert_eq!(issued.bundle().roots().len(), 2, "Certify sends both roots");
    assert_eq!(
        issued.bundle().roots()[0],
        old_root[0],
        "the leaf's root first"
    );
    assert!(
        issued
            .verifies_under(&bundle(&old.root_cert_pem), SystemTime::now())
            .is_ok()
    );

    // 2. The CA switches to the new root: new leaves, and the control plane's own serving
    //    certificate, chain to it.
    write_state(
        &plane.state,
        &CaMaterial {
            root_cert_pem: both.clone(),
            ..next.clone()
        },
    );
    let only_new = bundle(&next.root_cert_pem);
    let issued = eventually("a leaf under the new root, from a server under it", || {
        certify_trusting(&plane, &only_new)
    })
    .await;
    assert!(issued.verifies_under(&only_new, SystemTime::now()).is_ok());
    assert_eq!(issued.bundle().roots()[0], new_root[0]);

    // 3. The old root leaves: proxies get a bundle of one root; a client trusting only the
    //    old root no longer reaches the control plane.
    write_state(&plane.state, &next);
    until_roots(&mut watcher, 1).await;
    let issued = certify_trusting(&plane, &only_new)
        .await
        .expect("certified");
    assert_eq!(issued.bundle().roots(), &new_root[..]);
    let refused = certify_trusting(&plane, &bundle(&old.root_cert_pem)).await;
    assert!(refused.is_err(), "the old root still verifies the server");
    let published = plane.state.join("trust-bundle.pem");
    eventually("the published bundle names only the new root", || async {
        let pem = std::fs::read_to_string(&published).map_err(|e| e.to_string())?;
        (roots(&pem) == new_root).then_some(()).ok_or(pem)
    })
    .await;
    assert!(logged(&["CA store changed; adopting it"]));
    plane.stop().await;
}

#[tokio::test]
async fn a_whole_new_ca_written_in_one_go_is_undone_and_the_mesh_keeps_its_root() {
    let plane = LocalPlane::start(&[]).await;
    let old = read_state(&plane.state);
    let other = CaMaterial::generate_root(&td(), SystemTime::now()).unwrap();
    write_state(&plane.state, &other);
    eventually("the CA in use is written back", || async {
        read_state(&plane.state)
            .same_as(&old)
            .then_some(())
            .ok_or_else(|| "still the other CA".to_owned())
    })
    .await;
    let issued = certify_trusting(&plane, &plane.running.bundle)
        .await
        .expect("still certified under the old root");
    assert_eq!(issued.bundle().roots(), plane.running.bundle.roots());
    assert!(logged(&[
        "restored the CA in use",
        "untrusted_signer",
        "add that root to root-cert.pem first"
    ]));
    plane.stop().await;
}

#[tokio::test]
async fn ca_files_deleted_while_running_are_restored_with_the_same_root() {
    let plane = LocalPlane::start(&[]).await;
    let old = read_state(&plane.state);
    for file in ["ca-key.pem", "root-cert.pem"] {
        std::fs::remove_file(plane.state.join(file)).unwrap();
    }
    eventually("the CA files are back", || async {
        DirStore::new(&plane.state)
            .load()
            .ok()
            .flatten()
            .filter(|m| m.same_as(&old))
            .map(|_| ())
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    assert!(logged(&["restored the CA in use", "unreadable"]));
    certify_trusting(&plane, &plane.running.bundle)
        .await
        .expect("still certified");
    plane.stop().await;
}

#[tokio::test]
async fn a_restart_with_the_ca_gone_but_the_bundle_published_refuses_unless_told_to_accept_a_new_root()
 {
    let plane = LocalPlane::start(&[]).await;
    let published = plane.state.join("trust-bundle.pem");
    eventually("the trust bundle is published", || async {
        std::fs::read(&published).map_err(|e| e.to_string())
    })
    .await;
    let old_root = plane.running.bundle.roots().to_vec();
    let (config, state, dir) = (plane.config.clone(), plane.state.clone(), plane.dir);
    stop(plane.running).await;
    for file in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ] {
        std::fs::remove_file(state.join(file)).unwrap();
    }

    let err = try_start(&config, None)
        .await
        .expect_err("no new root while the published bundle names one");
    assert!(
        matches!(err, StartError::Store(StoreError::WouldReplaceRoot { .. })),
        "{err:?}"
    );
    let message = err.to_string();
    let fingerprint = trellis_ca::fingerprint(&old_root[0]);
    for needle in [
        "trust-bundle.pem",
        fingerprint.as_str(),
        "trusted by no running proxy",
        "--accept-new-root",
        "TRELLIS_ACCEPT_NEW_ROOT",
    ] {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    assert!(!state.join("ca-key.pem").exists(), "no root was made");

    let accepting = local_config(
        &state,
        &dir.path().join("join-tokens"),
        &["--accept-new-root"],
    );
    let running = try_start(&accepting, None)
        .await
        .expect("starts with a new root when told to");
    assert_eq!(running.origin, Origin::Generated);
    assert_ne!(running.bundle.roots(), &old_root[..]);
    let new_root = running.bundle.roots().to_vec();
    eventually("the published bundle names the new root", || async {
        let pem = std::fs::read_to_string(&published).map_err(|e| e.to_string())?;
        (roots(&pem) == new_root).then_some(()).ok_or(pem)
    })
    .await;
    stop(running).await;
    drop(dir);
}

#[tokio::test]
async fn plug_in_files_are_reloaded_a_new_intermediate_is_adopted_and_a_foreign_ca_is_not() {
    let now = SystemTime::now();
    let root = CaMaterial::generate_root(&td(), now).unwrap();
    let first = root
        .generate_intermediate(&td(), now, std::time::Duration::from_secs(3600))
        .unwrap();
    let cacerts = tempfile::TempDir::new().unwrap();
    write_state(cacerts.path(), &first);
    let tokens = tempfile::TempDir::new().unwrap();
    let tokens_path = tokens.path().join("join-tokens");
    write_join_tokens(&tokens_path, &[(FRONTEND_TOKEN, FRONTEND)]);
    let config = config(&[
        "--mode",
        "local",
        "--cacerts-dir",
        cacerts.path().to_str().unwrap(),
        "--join-tokens",
        tokens_path.to_str().unwrap(),
    ]);
    let running = try_start(&config, None).await.expect("starts");
    assert_eq!(running.origin, Origin::PlugIn);
    let plane_bundle = running.bundle.clone();
    let certify = || async {
        let channel = channel(&running, &config).await;
        let key = trellis_ca::WorkloadKey::generate().unwrap();
        trellis_client::IdentityClient::new(channel)
            .certify(&key, Some(&id(FRONTEND)), FRONTEND_TOKEN, None)
            .await
            .map_err(|e| e.to_string())
    };
    let issued = certify().await.unwrap();
    assert_eq!(issued.chain()[1], roots(&first.ca_cert_pem)[0]);

    // The operator (or kubelet, for a mounted Secret) replaces the files with a new
    // intermediate under the same root: adopted without a restart.
    let second = root
        .generate_intermediate(&td(), now, std::time::Duration::from_secs(3600))
        .unwrap();
    write_state(cacerts.path(), &second);
    let second_cert = roots(&second.ca_cert_pem);
    eventually("leaves chain through the new intermediate", || async {
        let svid = certify().await?;
        (svid.chain()[1] == second_cert[0])
            .then_some(())
            .ok_or_else(|| "the old intermediate still signs".to_owned())
    })
    .await;

    // A CA under a root the mesh does not trust is not adopted; the files are left alone.
    let foreign = CaMaterial::generate_root(&td(), now).unwrap();
    write_state(cacerts.path(), &foreign);
    eventually("the refusal is logged", || async {
        logged(&["plug-in CA files changed; not adopted", "untrusted_signer"])
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    let svid = certify().await.expect("still certified");
    assert_eq!(svid.chain()[1], second_cert[0]);
    assert_eq!(svid.bundle().roots(), plane_bundle.roots());
    assert!(
        read_state(cacerts.path()).same_as(&foreign),
        "plug-in files are only read"
    );
    stop(running).await;
}

#[tokio::test]
async fn create_certificate_returns_the_chain_then_every_trusted_root_in_the_last_element() {
    // Mid-rotation: an intermediate under the old root signs; the new root is trusted too.
    let now = SystemTime::now();
    let old = CaMaterial::generate_root(&td(), now).unwrap();
    let next = CaMaterial::generate_root(&td(), now).unwrap();
    let intermediate = old
        .generate_intermediate(&td(), now, std::time::Duration::from_secs(3600))
        .unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let state = dir.path().join("state");
    write_state(
        &state,
        &CaMaterial {
            root_cert_pem: format!("{}{}", old.root_cert_pem, next.root_cert_pem),
            ..intermediate.clone()
        },
    );
    let tokens = dir.path().join("join-tokens");
    write_join_tokens(&tokens, &[(FRONTEND_TOKEN, FRONTEND)]);
    let config = local_config(&state, &tokens, &[]);
    let running = try_start(&config, None).await.expect("starts");
    assert_eq!(running.origin, Origin::Loaded);

    let w = common::openssl::Workdir::new();
    w.p256_key("key.pem");
    let csr = w.csr(
        "key.pem",
        "req.csr",
        "/O=x",
        Some(&format!("URI:{FRONTEND}")),
    );
    let channel = channel(&running, &config).await;
    let answer = istio_create_certificate(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr, 0)
        .await
        .expect("CreateCertificate issues");
    let chain = &answer.cert_chain;
    assert_eq!(chain.len(), 3, "leaf, intermediate, roots: {chain:?}");
    assert_eq!(roots(&chain[0]).len(), 1, "the leaf alone");
    assert_eq!(roots(&chain[1]), roots(&intermediate.ca_cert_pem));
    // As ztunnel reads it: every certificate of the last element is a root.
    let last = roots(&chain[2]);
    assert_eq!(
        last,
        [roots(&old.root_cert_pem), roots(&next.root_cert_pem)].concat(),
        "both roots, the leaf's first"
    );
    w.write("leaf.pem", &chain[0]);
    w.write("chain.pem", &chain[1]);
    w.write("roots.pem", &chain[2]);
    let out = w.openssl(&[
        "verify",
        "-CAfile",
        "roots.pem",
        "-untrusted",
        "chain.pem",
        "leaf.pem",
    ]);
    assert_eq!(out.trim(), "leaf.pem: OK");
    stop(running).await;
}
