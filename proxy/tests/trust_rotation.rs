//! Proxies follow the mesh's live trust bundle without a restart (loopback, explicit mode, an
//! in-process control plane in local mode): a root rotation written into the control plane's
//! state directory reaches both proxies' verifiers through discovery while traffic flows, and
//! not one connection fails; a proxy whose certificate's root leaves the bundle asks for a new
//! certificate at once instead of waiting for its renewal time.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_ca::{CaMaterial, TrustBundle, TrustDomain};
use trellis_control_plane::ca_store::DirStore;
use trellis_proxy::run::Running;

const WAIT: Duration = Duration::from_secs(30);

fn state_dir(cp: &ControlPlane) -> std::path::PathBuf {
    cp.dir.path().join("state")
}

fn bundle(pem: &str) -> TrustBundle {
    TrustBundle::from_pem(TrustDomain::default(), pem.as_bytes()).unwrap()
}

/// The roots a proxy's verifiers trust now.
fn trusted(p: &Running) -> Vec<Vec<u8>> {
    p.ctx
        .svid
        .borrow()
        .as_ref()
        .map(|c| c.trust.roots().iter().map(|r| r.to_vec()).collect())
        .unwrap_or_default()
}

/// Whether a proxy's own certificate verifies under `roots`.
fn holds_leaf_under(p: &Running, roots: &TrustBundle) -> bool {
    p.ctx
        .svid
        .borrow()
        .as_ref()
        .is_some_and(|c| c.svid.verifies_under(roots, SystemTime::now()).is_ok())
}

fn der(pem: &str) -> Vec<Vec<u8>> {
    trellis_ca::certs_from_pem(pem.as_bytes())
        .unwrap()
        .iter()
        .map(|c| c.to_vec())
        .collect()
}

/// Traffic through `listen` until told to stop: new connections one after another, and one
/// long-lived connection exchanging a line every 50 ms. Counts successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(listen: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let fresh = tokio::spawn(async move {
            let mut i = 0u32;
            while !s.load(Ordering::SeqCst) {
                let msg = format!("new {i}");
                match roundtrip(listen, msg.as_bytes()).await {
                    Ok(back) if back == msg.as_bytes() => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    other => f.lock().unwrap().push(format!("{msg}: {other:?}")),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let long = tokio::spawn(async move {
            let mut conn = match TcpStream::connect(listen).await {
                Ok(c) => c,
                Err(e) => return f.lock().unwrap().push(format!("long connect: {e}")),
            };
            let mut i = 0u32;
            while !s.load(Ordering::SeqCst) {
                let msg = format!("line {i:06}\n");
                let mut back = vec![0u8; msg.len()];
                let exchange = async {
                    conn.write_all(msg.as_bytes()).await?;
                    conn.read_exact(&mut back).await
                };
                match tokio::time::timeout(Duration::from_secs(5), exchange).await {
                    Ok(Ok(_)) if back == msg.as_bytes() => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        f.lock().unwrap().push(format!("long {i}: {other:?}"));
                        return;
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self {
            stop,
            ok,
            failures,
            tasks: vec![fresh, long],
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_reaches_both_proxies_under_traffic_without_a_failed_connection() {
    let cp = ControlPlane::start(&[]).await;
    let app = echo_app().await;
    let backend_id = "spiffe://cluster.local/ns/shop/sa/backend";
    let ttl = ["--cert-ttl=8s".to_owned()];
    let backend = proxy(&cp, TOKENS[1].0, &ttl).await;
    let tunnel = backend.addrs.tunnel.unwrap();
    let frontend = proxy(
        &cp,
        TOKENS[0].0,
        &[
            ttl[0].clone(),
            format!("--outbound=127.0.0.1:0={app}"),
            format!("--workload={app}={backend_id}@{tunnel}"),
        ],
    )
    .await;
    let listen = frontend.addrs.explicit_outbound[0];
    let proxies = [&frontend, &backend];
    let store = DirStore::new(&state_dir(&cp));
    let old = store.load().unwrap().unwrap();
    let next = CaMaterial::generate_root(&TrustDomain::default(), SystemTime::now()).unwrap();
    let both = format!("{}{}", old.root_cert_pem, next.root_cert_pem);
    let load = Load::start(listen);

    // 1. Add the new root: both proxies trust both.
    store
        .restore(&CaMaterial {
            root_cert_pem: both.clone(),
            ..old.clone()
        })
        .unwrap();
    let want = der(&both);
    assert!(
        eventually(WAIT, || proxies.iter().all(|p| trusted(p) == want)).await,
        "the proxies did not receive the second root"
    );

    // 2. Switch the CA: at their next renewal both proxies hold leaves under the new root.
    store
        .restore(&CaMaterial {
            root_cert_pem: both.clone(),
            ..next.clone()
        })
        .unwrap();
    let only_new = bundle(&next.root_cert_pem);
    assert!(
        eventually(WAIT, || proxies
            .iter()
            .all(|p| holds_leaf_under(p, &only_new)))
        .await,
        "the proxies did not renew under the new root"
    );

    // 3. Remove the old root: both proxies trust only the new one.
    store.restore(&next).unwrap();
    let want = der(&next.root_cert_pem);
    assert!(
        eventually(WAIT, || proxies.iter().all(|p| trusted(p) == want)).await,
        "the proxies still trust the old root"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    assert!(ok >= 50, "too little traffic to tell: {ok} exchanges");
    for p in proxies {
        let current = p.ctx.svid.borrow().clone().unwrap();
        assert_eq!(current.trust_source.label(), "discovery");
        assert!(
            current
                .svid
                .verifies_under(&only_new, SystemTime::now())
                .is_ok()
        );
        let old_der = der(&old.root_cert_pem);
        assert!(
            current
                .svid
                .chain()
                .iter()
                .all(|c| c.to_vec() != old_der[0]),
            "a certificate still names the old root"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_whose_root_leaves_the_bundle_renews_at_once() {
    let cp = ControlPlane::start(&[]).await;
    // An hour-long certificate: without the bundle change it would not renew for 30 minutes.
    let p = proxy(&cp, TOKENS[0].0, &["--cert-ttl=1h".to_owned()]).await;
    let store = DirStore::new(&state_dir(&cp));
    let old = store.load().unwrap().unwrap();
    let next = CaMaterial::generate_root(&TrustDomain::default(), SystemTime::now()).unwrap();
    let both = format!("{}{}", old.root_cert_pem, next.root_cert_pem);
    store
        .restore(&CaMaterial {
            root_cert_pem: both.clone(),
            ..old.clone()
        })
        .unwrap();
    assert!(eventually(WAIT, || trusted(&p) == der(&both)).await);
    store
        .restore(&CaMaterial {
            root_cert_pem: both,
            ..next.clone()
        })
        .unwrap();
    // Give the control plane time to adopt the switch, then remove the old root at once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let serial_before = p
        .ctx
        .svid
        .borrow()
        .as_ref()
        .unwrap()
        .svid
        .serial()
        .to_owned();
    store.restore(&next).unwrap();
    let only_new = bundle(&next.root_cert_pem);
    assert!(
        eventually(WAIT, || holds_leaf_under(&p, &only_new)).await,
        "the proxy kept a certificate no peer trusts any more"
    );
    let current = p.ctx.svid.borrow().clone().unwrap();
    assert_ne!(current.svid.serial(), serial_before);
    assert_eq!(trusted(&p), der(&next.root_cert_pem));
}

/// A TLS client presenting a certificate for `id` issued by `ca` and trusting `trust`; whether
/// the tunnel at `addr` accepted it (it speaks HTTP/2 first: SETTINGS arrive).
async fn tunnel_accepts(
    addr: std::net::SocketAddr,
    ca: &trellis_ca::CertificateAuthority,
    trust: &TrustBundle,
) -> bool {
    let id = trellis_ca::SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").unwrap();
    let key = trellis_ca::WorkloadKey::generate().unwrap();
    let csr = trellis_ca::ValidatedCsr::parse(&key.csr(&id).unwrap()).unwrap();
    let issued = ca
        .issue(&csr, &id, Duration::from_secs(600), SystemTime::now())
        .unwrap();
    let mut chain = vec![issued.leaf];
    chain.extend(issued.chain);
    let verifier = Arc::new(trellis_ca::tls::SpiffeServerVerifier::new(
        trust.clone(),
        trellis_ca::tls::ExpectedServer::AnyInTrustDomain,
    ));
    let config =
        trellis_ca::tls::client_config(verifier, Some((chain, key.private_key_der())), &[b"h2"])
            .unwrap();
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let name = rustls_pki_types::ServerName::try_from("tunnel").ok()?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .ok()?;
        let mut first = [0u8; 9];
        tls.read_exact(&mut first).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_accepts_a_new_roots_certificates_once_the_bundle_has_it_and_refuses_a_removed_roots()
 {
    let cp = ControlPlane::start(&[]).await;
    // No renewal during the test: only the bundle changes.
    let p = proxy(&cp, TOKENS[1].0, &["--cert-ttl=1h".to_owned()]).await;
    let tunnel = p.addrs.tunnel.unwrap();
    let store = DirStore::new(&state_dir(&cp));
    let old = store.load().unwrap().unwrap();
    let next = CaMaterial::generate_root(&TrustDomain::default(), SystemTime::now()).unwrap();
    let both = format!("{}{}", old.root_cert_pem, next.root_cert_pem);
    let td = TrustDomain::default();
    let old_ca =
        trellis_ca::CertificateAuthority::load(td.clone(), &old, SystemTime::now()).unwrap();
    let new_ca = trellis_ca::CertificateAuthority::load(td, &next, SystemTime::now()).unwrap();
    let trust_both = bundle(&both);

    assert!(tunnel_accepts(tunnel, &old_ca, &trust_both).await);
    assert!(
        !tunnel_accepts(tunnel, &new_ca, &trust_both).await,
        "a root the mesh does not trust yet is accepted"
    );
    store
        .restore(&CaMaterial {
            root_cert_pem: both,
            ..old.clone()
        })
        .unwrap();
    assert!(eventually(WAIT, || trusted(&p).len() == 2).await);
    assert!(
        tunnel_accepts(tunnel, &new_ca, &trust_both).await,
        "the new root's certificates are refused although the bundle has it"
    );

    // The old root leaves (after a switch): its certificates are refused from now on.
    store
        .restore(&CaMaterial {
            root_cert_pem: format!("{}{}", old.root_cert_pem, next.root_cert_pem),
            ..next.clone()
        })
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    store.restore(&next).unwrap();
    assert!(eventually(WAIT, || trusted(&p) == der(&next.root_cert_pem)).await);
    assert!(
        !tunnel_accepts(tunnel, &old_ca, &trust_both).await,
        "a removed root's certificates are still accepted"
    );
    assert!(tunnel_accepts(tunnel, &new_ca, &trust_both).await);
}
