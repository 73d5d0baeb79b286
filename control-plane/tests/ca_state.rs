//! CA state across restarts in local mode (a directory), refusal to start on damaged state
//! (leaving it as it was), and a plug-in intermediate in Istio's `cacerts` layout.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

use common::openssl::Workdir;
use common::*;
use tempfile::TempDir;
use trellis_ca::{CaLoadError, CaMaterial, TrustDomain, certs_from_pem, der_to_pem};
use trellis_control_plane::ca_store::{Origin, StoreError};
use trellis_control_plane::server::StartError;

/// Every file of a directory: name → (contents, permission bits).
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    std::fs::read_dir(dir)
        .expect("list the directory")
        .map(|entry| {
            let entry = entry.expect("a directory entry");
            let meta = entry.metadata().expect("its metadata");
            (
                entry.file_name().to_string_lossy().into_owned(),
                (
                    std::fs::read(entry.path()).expect("read it"),
                    meta.permissions().mode() & 0o777,
                ),
            )
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn a_restart_with_the_same_state_dir_keeps_the_same_root() {
    let first = LocalPlane::start(&[]).await;
    assert_eq!(first.running.origin, Origin::Generated);
    let root = first.running.bundle.roots().to_vec();
    assert_eq!(root.len(), 1);
    let bundle = first.running.bundle.clone();

    // Written with the right permissions, the key last and private.
    assert_eq!(mode(&first.state), 0o700, "the state directory is private");
    assert_eq!(
        mode(&first.state.join("ca-key.pem")),
        0o600,
        "the key is private"
    );
    let files = snapshot(&first.state);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem"
        ],
        "no temporary files left"
    );
    assert_eq!(certs_from_pem(&files["root-cert.pem"].0).unwrap(), root);

    let LocalPlane {
        running,
        config,
        dir,
        state,
        ..
    } = first;
    stop(running).await;

    let second = try_start(&config, None).await.expect("restarts");
    assert_eq!(second.origin, Origin::Loaded);
    assert_eq!(second.bundle.roots(), &root[..], "same root, same DER");
    assert_eq!(snapshot(&state), files, "nothing was rewritten");

    // A workload that only knows the first start's bundle is served and issued by the second.
    let channel = within(
        "connect with the old bundle",
        trellis_client::connect(
            &second.grpc_addr.to_string(),
            bundle,
            Some(config.own_id.clone()),
            None,
        ),
    )
    .await
    .expect("the old bundle verifies the restarted server");
    let key = trellis_ca::WorkloadKey::generate().unwrap();
    let svid = within(
        "certify",
        trellis_client::IdentityClient::new(channel).certify(&key, None, FRONTEND_TOKEN, None),
    )
    .await
    .expect("issued after the restart");
    assert_eq!(svid.bundle().roots(), &root[..]);
    stop(second).await;
    drop(dir);
}

/// Makes a good state directory (by starting and stopping a control plane), damages it with
/// `damage`, then checks that a start fails with an error `expected` accepts whose message
/// has every one of `needles`, and that the directory is exactly as the damage left it.
async fn assert_damaged_state_stops_the_start(
    damage: impl FnOnce(&Path),
    expected: impl Fn(&StartError) -> bool,
    needles: &[&str],
) {
    let plane = LocalPlane::start(&[]).await;
    let (config, state, dir) = (plane.config.clone(), plane.state.clone(), plane.dir);
    stop(plane.running).await;

    damage(&state);
    let before = snapshot(&state);
    let err = try_start(&config, None)
        .await
        .expect_err("a control plane with damaged CA state must not start");
    assert!(expected(&err), "unexpected error: {err:?}");
    let message = err.to_string();
    for needle in needles {
        assert!(
            message.contains(needle),
            "{message:?} does not mention {needle:?}"
        );
    }
    assert_eq!(snapshot(&state), before, "the state was changed: {message}");
    drop(dir);
}

#[tokio::test]
async fn a_garbage_ca_key_stops_the_start() {
    assert_damaged_state_stops_the_start(
        |state| {
            std::fs::write(
                state.join("ca-key.pem"),
                "-----BEGIN PRIVATE KEY-----\ngarbage\n",
            )
            .unwrap();
        },
        |e| matches!(e, StartError::Ca(CaLoadError::BadKey(_))),
        &["ca-key.pem is not a usable private key"],
    )
    .await;
}

#[tokio::test]
async fn a_missing_root_cert_stops_the_start_instead_of_making_a_new_root() {
    assert_damaged_state_stops_the_start(
        |state| std::fs::remove_file(state.join("root-cert.pem")).unwrap(),
        |e| {
            matches!(
                e,
                StartError::Store(StoreError::Incomplete {
                    missing: "root-cert.pem",
                    ..
                })
            )
        },
        &[
            "is incomplete: root-cert.pem is missing",
            "refusing to start rather than make a new root",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_ca_key_readable_by_others_stops_the_start() {
    assert_damaged_state_stops_the_start(
        |state| chmod(&state.join("ca-key.pem"), 0o644),
        |e| {
            matches!(
                e,
                StartError::Store(StoreError::KeyPermissions { mode: 0o644, .. })
            )
        },
        &["ca-key.pem has mode 644", "chmod 600"],
    )
    .await;
}

#[tokio::test]
async fn a_ca_cert_of_another_key_stops_the_start() {
    assert_damaged_state_stops_the_start(
        |state| {
            let other = CaMaterial::generate_root(&TrustDomain::default(), SystemTime::now())
                .expect("another root");
            std::fs::write(state.join("ca-cert.pem"), other.ca_cert_pem).unwrap();
        },
        |e| matches!(e, StartError::Ca(CaLoadError::KeyMismatch)),
        &["ca-key.pem does not match the public key of ca-cert.pem"],
    )
    .await;
}

#[tokio::test]
async fn a_plug_in_intermediate_signs_leaves_that_chain_through_it() {
    let cacerts = Workdir::new();
    cacerts.make_cacerts();
    let before = snapshot(cacerts.dir());
    let tokens = TempDir::new().unwrap();
    let tokens_path = tokens.path().join("join-tokens");
    write_join_tokens(&tokens_path, &[(FRONTEND_TOKEN, FRONTEND)]);
    let config = config(&[
        "--mode",
        "local",
        "--cacerts-dir",
        cacerts.dir().to_str().unwrap(),
        "--join-tokens",
        tokens_path.to_str().unwrap(),
    ]);
    let running = try_start(&config, None)
        .await
        .expect("starts with the plug-in CA");
    assert_eq!(running.origin, Origin::PlugIn);
    let root = certs_from_pem(cacerts.read("root-cert.pem").as_bytes()).unwrap();
    let intermediate = certs_from_pem(cacerts.read("ca-cert.pem").as_bytes()).unwrap();
    assert_eq!(running.bundle.roots(), &root[..]);

    let channel = channel(&running, &config).await;
    let key = trellis_ca::WorkloadKey::generate().unwrap();
    let svid = within(
        "certify",
        trellis_client::IdentityClient::new(channel.clone()).certify(
            &key,
            Some(&id(FRONTEND)),
            FRONTEND_TOKEN,
            None,
        ),
    )
    .await
    .expect("issued by the intermediate");
    assert_eq!(
        svid.chain()[1..],
        intermediate[..],
        "the intermediate follows the leaf"
    );

    let w = Workdir::new();
    w.write("root-cert.pem", cacerts.read("root-cert.pem"));
    w.write_certs("leaf.pem", &svid.chain()[..1]);
    w.write_certs("chain.pem", &svid.chain()[1..]);
    let out = w.openssl(&[
        "verify",
        "-CAfile",
        "root-cert.pem",
        "-untrusted",
        "chain.pem",
        "leaf.pem",
    ]);
    assert_eq!(out.trim(), "leaf.pem: OK");
    let refusal = w.openssl_fails(&["verify", "-CAfile", "root-cert.pem", "leaf.pem"]);
    assert!(
        refusal.contains("unable to get local issuer certificate"),
        "the leaf is signed by the intermediate, not the root: {refusal}"
    );
    let text = w.x509_text("leaf.pem");
    assert!(
        text.contains("Issuer: O = Plug-in, CN = Plug-in Intermediate CA"),
        "{text}"
    );

    // Istio's API sends leaf, intermediate, root.
    w.p256_key("key.pem");
    let csr = w.csr(
        "key.pem",
        "req.csr",
        "/O=x",
        Some(&format!("URI:{FRONTEND}")),
    );
    let answer = istio_create_certificate(&channel, bearer(FRONTEND_TOKEN).as_deref(), csr, 0)
        .await
        .expect("CreateCertificate issues");
    assert_eq!(answer.cert_chain.len(), 3, "{:?}", answer.cert_chain);
    assert_eq!(answer.cert_chain[1], der_to_pem(&intermediate[0]));
    assert_eq!(answer.cert_chain[2], der_to_pem(&root[0]));

    stop(running).await;
    assert_eq!(snapshot(cacerts.dir()), before, "a plug-in CA is only read");
}

#[tokio::test]
async fn a_state_dir_every_user_can_write_stops_the_start_naming_the_fix() {
    assert_damaged_state_stops_the_start(
        |state| chmod(state, 0o777),
        |e| {
            matches!(
                e,
                StartError::Store(StoreError::DirPermissions { mode: 0o777, .. })
            )
        },
        &[
            "has mode 0777",
            "can replace or remove the CA's files",
            "chmod 700",
        ],
    )
    .await;
}
